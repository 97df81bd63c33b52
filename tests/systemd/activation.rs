//! Sockets passed with `LISTEN_FDS`, `LISTEN_PID` and `LISTEN_FDNAMES`: TCP and unix
//! stream sockets, names, a single unnamed socket, sockets rtask must reject, and what
//! children inherit.

use std::net::UdpSocket;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::time::Duration;

use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, bind, socket};

use super::{ECHO_CONFIG, KEY_NAME, get_metrics, local_addr, post_echo, tcp_listener};
use crate::harness::activation::{ActivatedBuilder, has_field};
use crate::harness::raw_http::{self, unix_request};
use crate::harness::{procfs, secs};

/// Time a daemon that rejects its sockets may take to exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts a daemon with a TCP API socket and a TCP metrics socket, passed in that
/// order or, with `metrics_first`, the other way round, and checks that each serves
/// what its name says and nothing else.
async fn check_tcp_sockets_by_name(metrics_first: bool) {
    let api = tcp_listener();
    let metrics = tcp_listener();
    let (api_addr, metrics_addr) = (local_addr(&api), local_addr(&metrics));
    let builder = ActivatedBuilder::new();
    let key = builder.add_key(KEY_NAME);
    let builder = if metrics_first {
        builder.socket(metrics).socket(api).fd_names("metrics:api")
    } else {
        builder.socket(api).socket(metrics).fd_names("api:metrics")
    };
    let _daemon = builder.start(ECHO_CONFIG).await;

    let reply = post_echo(api_addr, &key, "over tcp").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["stdout"], "over tcp");
    let scrape = get_metrics(metrics_addr).await;
    assert_eq!(scrape.status, 200, "{}", scrape.text());
    assert!(scrape.text().contains("rtask_config_reloads_total"));
    assert_eq!(get_metrics(api_addr).await.status, 404);
    assert_eq!(post_echo(metrics_addr, &key, "").await.status, 404);
}

#[tokio::test]
async fn activation_tcp_api_and_metrics() {
    check_tcp_sockets_by_name(false).await;
}

#[tokio::test]
async fn activation_names_not_positions() {
    // fd 3 is the metrics socket and fd 4 the API socket.
    check_tcp_sockets_by_name(true).await;
}

#[tokio::test]
async fn activation_unix_stream_sockets() {
    let builder = ActivatedBuilder::new();
    let key = builder.add_key(KEY_NAME);
    let api_path = builder.path("api.sock");
    let metrics_path = builder.path("metrics.sock");
    let api = UnixListener::bind(&api_path).expect("bind api.sock");
    let metrics = UnixListener::bind(&metrics_path).expect("bind metrics.sock");
    let mut daemon = builder
        .socket(api)
        .socket(metrics)
        .fd_names("api:metrics")
        .start(ECHO_CONFIG)
        .await;

    let request = raw_http::request_bytes("POST", "/tasks/echo", Some(&key), b"over unix");
    let reply = unix_request(&api_path, request).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["stdout"], "over unix");
    let scrape = unix_request(
        &metrics_path,
        raw_http::request_bytes("GET", "/metrics", None, b""),
    )
    .await;
    assert_eq!(scrape.status, 200, "{}", scrape.text());
    assert!(scrape.text().contains("rtask_config_reloads_total"));
    let listening = daemon
        .wait_for_log(&["listening", &api_path.display().to_string()], secs(5.0))
        .await;
    assert!(has_field(&listening, "socket", "api"), "{listening}");
}

/// Starts a daemon with one TCP socket and `LISTEN_FDNAMES` set to `names` (unset for
/// `None`), and checks that the socket serves the API and that no metrics are served.
async fn check_single_socket_is_api(names: Option<&str>) {
    let api = tcp_listener();
    let api_addr = local_addr(&api);
    let mut builder = ActivatedBuilder::new();
    let key = builder.add_key(KEY_NAME);
    builder = builder.socket(api);
    if let Some(names) = names {
        builder = builder.fd_names(names);
    }
    let daemon = builder.start(ECHO_CONFIG).await;

    let reply = post_echo(api_addr, &key, "single").await;
    assert_eq!(reply.status, 200, "names {names:?}: {}", reply.text());
    assert_eq!(reply.json()["stdout"], "single", "names {names:?}");
    assert_eq!(
        procfs::listening_socket_count(daemon.pid()),
        1,
        "names {names:?}: the daemon listens on more than the passed socket"
    );
}

#[tokio::test]
async fn activation_single_without_names_is_api() {
    check_single_socket_is_api(None).await;
}

#[tokio::test]
async fn activation_single_unknown_name_is_api() {
    check_single_socket_is_api(Some("unknown")).await;
}

/// Starts a daemon with `socket` passed as `api` and checks that it exits with status
/// 1, without `READY=1`, and that its error names the socket and contains `expected`.
async fn check_socket_rejected(socket: OwnedFd, expected: &str) {
    let builder = ActivatedBuilder::new();
    builder.add_key(KEY_NAME);
    let mut daemon = builder
        .socket(socket)
        .fd_names("api")
        .run_arg("--metrics-address")
        .run_arg("127.0.0.1:0")
        .spawn(ECHO_CONFIG);

    let status = daemon.wait_for_exit(EXIT_TIMEOUT).await;

    let stderr = daemon.stderr();
    assert_eq!(status.code(), Some(1), "stderr:\n{stderr}");
    assert!(stderr.contains("inherited socket"), "stderr:\n{stderr}");
    assert!(
        stderr.contains(expected),
        "expected {expected:?} in:\n{stderr}"
    );
    // The daemon has exited, so whatever it sent is already queued.
    daemon
        .collect_notifications(Duration::from_millis(100))
        .await;
    let ready = daemon
        .notify()
        .messages()
        .iter()
        .any(|message| message.lines().any(|line| line == "READY=1"));
    assert!(!ready, "sent READY=1: {:?}", daemon.notify().messages());
}

#[tokio::test]
async fn activation_udp_socket_rejected() {
    let udp = UdpSocket::bind("127.0.0.1:0").expect("bind UDP socket");
    check_socket_rejected(udp.into(), "stream socket").await;
}

#[tokio::test]
async fn activation_unix_datagram_rejected() {
    let dir = tempfile::tempdir().expect("create temporary directory");
    let datagram = UnixDatagram::bind(dir.path().join("dgram.sock")).expect("bind datagram");
    check_socket_rejected(datagram.into(), "stream socket").await;
}

#[tokio::test]
async fn activation_unlistened_socket_rejected() {
    let dir = tempfile::tempdir().expect("create temporary directory");
    let unlistened = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("create unix stream socket");
    let address = UnixAddr::new(&dir.path().join("unlistened.sock")).expect("socket path");
    bind(unlistened.as_raw_fd(), &address).expect("bind unix stream socket");
    check_socket_rejected(unlistened, "not listening").await;
}

#[tokio::test]
async fn activation_connected_socket_rejected() {
    let listener = tcp_listener();
    let connected =
        std::net::TcpStream::connect(local_addr(&listener)).expect("connect to listener");
    check_socket_rejected(connected.into(), "not listening").await;
}

#[tokio::test]
async fn activation_other_listen_pid_ignored() {
    let passed = tcp_listener();
    let passed_addr = local_addr(&passed);
    let builder = ActivatedBuilder::new();
    let key = builder.add_key(KEY_NAME);
    // The test process is alive and is not the daemon.
    let mut daemon = builder
        .socket(passed)
        .fd_names("api")
        .listen_pid_of(std::process::id())
        .run_arg("--api-address")
        .run_arg("127.0.0.1:0")
        .run_arg("--metrics-address")
        .run_arg("127.0.0.1:0")
        .start(ECHO_CONFIG)
        .await;

    let api_addr = daemon.logged_address("api").await;
    let metrics_addr = daemon.logged_address("metrics").await;
    assert_ne!(api_addr, passed_addr);
    let reply = post_echo(api_addr, &key, "bound").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(get_metrics(metrics_addr).await.status, 200);
}

#[tokio::test]
async fn activation_api_only_serves_no_metrics() {
    let api = tcp_listener();
    let api_addr = local_addr(&api);
    let builder = ActivatedBuilder::new();
    let key = builder.add_key(KEY_NAME);
    let mut daemon = builder.socket(api).fd_names("api").start(ECHO_CONFIG).await;

    daemon
        .wait_for_log(&["no metrics socket", "serving no metrics"], secs(5.0))
        .await;
    assert_eq!(procfs::listening_socket_count(daemon.pid()), 1);
    assert_eq!(get_metrics(api_addr).await.status, 404);
    assert_eq!(post_echo(api_addr, &key, "").await.status, 200);
}

#[tokio::test]
async fn activation_api_only_binds_metrics_address() {
    let api = tcp_listener();
    let api_addr = local_addr(&api);
    let builder = ActivatedBuilder::new();
    builder.add_key(KEY_NAME);
    let mut daemon = builder
        .socket(api)
        .fd_names("api")
        .run_arg("--metrics-address")
        .run_arg("127.0.0.1:0")
        .start(ECHO_CONFIG)
        .await;

    let metrics_addr = daemon.logged_address("metrics").await;
    assert_ne!(metrics_addr, api_addr);
    assert_eq!(get_metrics(metrics_addr).await.status, 200);
    assert_eq!(procfs::listening_socket_count(daemon.pid()), 2);
}

#[tokio::test]
async fn activation_inherited_api_wins() {
    let api = tcp_listener();
    let api_addr = local_addr(&api);
    let metrics = tcp_listener();
    let builder = ActivatedBuilder::new();
    let key = builder.add_key(KEY_NAME);
    let mut daemon = builder
        .socket(api)
        .socket(metrics)
        .fd_names("api:metrics")
        .run_arg("--api-address")
        .run_arg("127.0.0.1:0")
        .start(ECHO_CONFIG)
        .await;

    assert_eq!(daemon.logged_address("api").await, api_addr);
    assert_eq!(procfs::listening_socket_count(daemon.pid()), 2);
    assert_eq!(post_echo(api_addr, &key, "").await.status, 200);
}

#[tokio::test]
async fn activation_child_env_scrubbed() {
    let api = tcp_listener();
    let api_addr = local_addr(&api);
    let builder = ActivatedBuilder::new();
    let key = builder.add_key(KEY_NAME);
    let _daemon = builder
        .socket(api)
        .socket(tcp_listener())
        .fd_names("api:metrics")
        // A watchdog ping every 30 s: enabled, but quiet during the test.
        .env("WATCHDOG_USEC", "60000000")
        .env_daemon_pid("WATCHDOG_PID")
        .env("RTASK_TEST_INHERITED", "yes")
        .start(
            r#"
[tasks.env]
command = ["env"]
apiKeyNames = ["ci"]
"#,
        )
        .await;

    let request = raw_http::request_bytes("POST", "/tasks/env", Some(&key), b"");
    let reply = raw_http::tcp_request(api_addr, request).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let result = reply.json();
    let stdout = result["stdout"].as_str().expect("stdout is a string");
    assert!(
        stdout
            .lines()
            .any(|line| line == "RTASK_TEST_INHERITED=yes")
    );
    for prefix in ["LISTEN_", "NOTIFY_SOCKET=", "WATCHDOG_"] {
        let leaked: Vec<&str> = stdout
            .lines()
            .filter(|line| line.starts_with(prefix))
            .collect();
        assert!(leaked.is_empty(), "child environment has {leaked:?}");
    }
}
