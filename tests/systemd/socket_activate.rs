//! Socket activation by systemd's own `systemd-socket-activate`, which binds the
//! sockets, waits for the first connection and then execs rtask in its place.
//!
//! It takes a fixed port, so the test picks a free one just before and tries again with
//! another port when that one was taken in between.

#![expect(
    clippy::disallowed_methods,
    reason = "the test starts systemd-socket-activate, which execs the daemon"
)]

use std::fs::{self, File};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use super::KEY_NAME;
use crate::harness::raw_http::{self, unix_request};
use crate::harness::{NotifyRecorder, add_key, secs};

/// Attempts with a fresh port when the chosen one was taken before the tool bound it.
const BIND_ATTEMPTS: usize = 5;

/// Finds `systemd-socket-activate` in `PATH` or `/usr/bin`.
fn find_socket_activate() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("systemd-socket-activate"))
        .find(|candidate| candidate.is_file())
}

/// Returns a loopback port that was free a moment ago.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("listener address").port()
}

/// `systemd-socket-activate` and, after the first connection, the daemon in its place.
struct Activator {
    child: Child,
    stderr_path: PathBuf,
}

impl Activator {
    fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Waits until the tool reports that it listens on both sockets, or exits.
    /// Returns false when it exited.
    async fn wait_listening(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.stderr().matches("Listening on").count() >= 2 {
                return true;
            }
            if self.child.try_wait().expect("check status").is_some() {
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "systemd-socket-activate did not listen within 10 s:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("check status") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not exit within {timeout:?}:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Activator {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- stderr ---\n{}--- end ---", self.stderr());
        }
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the tool on `127.0.0.1:port` (`api`) and `metrics_path` (`metrics`).
fn spawn_activator(
    tool: &Path,
    dir: &Path,
    port: u16,
    metrics_path: &Path,
    notify: &Path,
) -> Activator {
    let stderr_path = dir.join(format!("activate-{port}.stderr"));
    let stderr = File::create(&stderr_path).expect("create stderr file");
    let mut command = Command::new(tool);
    command
        .current_dir(dir)
        .arg("-l")
        .arg(format!("127.0.0.1:{port}"))
        .arg("-l")
        .arg(metrics_path)
        .arg("--fdname=api:metrics")
        // The tool passes only the variables named with -E.
        .arg("-E")
        .arg(format!("NOTIFY_SOCKET={}", notify.display()))
        .arg("-E")
        .arg("RUST_LOG=info")
        .arg("-E")
        .arg("LOG_FORMAT=text")
        .arg(env!("CARGO_BIN_EXE_rtask"))
        .arg("--config")
        .arg(dir.join("config.toml"))
        .arg("--api-keys-file")
        .arg(dir.join("keys.toml"))
        .arg("run")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    let child = command
        .spawn()
        .unwrap_or_else(|err| panic!("spawn {command:?}: {err}"));
    Activator { child, stderr_path }
}

async fn wait_for_notify(notify: &mut NotifyRecorder, expected: &str, activator: &Activator) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while notify.take_match(expected).is_none() {
        assert!(
            Instant::now() < deadline,
            "no {expected:?}; notifications {:?}; stderr:\n{}",
            notify.messages(),
            activator.stderr()
        );
        notify.receive(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn socket_activate_tool_serves() {
    let Some(tool) = find_socket_activate() else {
        eprintln!("skipped socket_activate_tool_serves: systemd-socket-activate is not installed");
        return;
    };
    let dir = tempfile::tempdir().expect("create temporary directory");
    let key = add_key(dir.path(), &dir.path().join("keys.toml"), KEY_NAME);
    fs::write(dir.path().join("config.toml"), super::ECHO_CONFIG).expect("write config");
    let notify_path = dir.path().join("notify.sock");
    let mut notify = NotifyRecorder::bind(&notify_path);
    let metrics_path = dir.path().join("metrics.sock");

    let mut bound = None;
    for _ in 0..BIND_ATTEMPTS {
        let _ = fs::remove_file(&metrics_path);
        let port = free_port();
        let mut activator = spawn_activator(&tool, dir.path(), port, &metrics_path, &notify_path);
        if activator.wait_listening().await {
            bound = Some((activator, port));
            break;
        }
        let stderr = activator.stderr();
        assert!(
            stderr.contains("Address already in use"),
            "systemd-socket-activate exited:\n{stderr}"
        );
    }
    let (mut activator, port) = bound.expect("a free port within 5 attempts");
    let api_addr = SocketAddr::from(([127, 0, 0, 1], port));

    // The first connection makes the tool exec rtask, which then serves it.
    let request = raw_http::request_bytes("POST", "/tasks/echo", Some(&key), b"activated");
    let reply = raw_http::tcp_request(api_addr, request).await;
    wait_for_notify(&mut notify, "READY=1", &activator).await;
    let scrape = unix_request(
        &metrics_path,
        raw_http::request_bytes("GET", "/metrics", None, b""),
    )
    .await;
    let pid = Pid::from_raw(i32::try_from(activator.child.id()).expect("pid fits in i32"));
    signal::kill(pid, Signal::SIGTERM).expect("signal daemon");
    let status = activator.wait_exit(secs(15.0)).await;

    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["stdout"], "activated");
    assert_eq!(scrape.status, 200, "{}", scrape.text());
    assert!(scrape.text().contains("rtask_config_reloads_total"));
    assert_eq!(status.code(), Some(0), "stderr:\n{}", activator.stderr());
    wait_for_notify(&mut notify, "STOPPING=1", &activator).await;
}
