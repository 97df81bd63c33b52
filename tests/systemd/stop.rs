//! Graceful stop on SIGTERM: runs in flight finish within `shutdownGraceSeconds`, the
//! rest are stopped and get the result `canceled`, and the daemon exits 0 with nothing of
//! its tasks left running.

use std::process::ExitStatus;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use reqwest::Method;

use super::KEY_NAME;
use crate::harness::procfs::{self, MarkerGuard, marker_environment, unique_marker};
use crate::harness::raw_http::AwaitingBody;
use crate::harness::{Daemon, DaemonBuilder, Reply, secs, send, wait_until};

/// Time a task process may take to appear after the request was sent.
const SPAWN_TIMEOUT: Duration = Duration::from_secs(10);

async fn start(config: &str) -> (Daemon, String) {
    let builder = DaemonBuilder::new();
    let key = builder.add_key(KEY_NAME);
    (builder.start(config).await, key)
}

/// Sends `POST /tasks/{task}` and, once a process with `marker` runs, SIGTERM to the
/// daemon. Returns the reply, or the error when no response came, and the time from
/// SIGTERM to the end of the request.
async fn post_then_sigterm(
    daemon: &Daemon,
    task: &str,
    key: &str,
    marker: &str,
) -> (Result<Reply, String>, Duration) {
    let mut signaled = None;
    let reply = {
        let request = async {
            let response = daemon
                .request(Method::POST, &format!("/tasks/{task}"))
                .bearer_auth(key)
                .send()
                .await
                .map_err(|err| format!("no response: {err:?}"))?;
            let status = response.status().as_u16();
            let body = response.bytes().await.map_err(|err| err.to_string())?;
            Ok(Reply {
                status,
                body: body.to_vec(),
            })
        };
        let stop = async {
            wait_until("task process started", SPAWN_TIMEOUT, async || {
                !procfs::with_marker(marker).is_empty()
            })
            .await;
            daemon.signal(Signal::SIGTERM);
            signaled = Some(Instant::now());
        };
        tokio::join!(request, stop).0
    };
    let elapsed = signaled.expect("SIGTERM sent").elapsed();
    (reply, elapsed)
}

/// Waits up to `timeout` for the daemon to exit and returns its exit status.
async fn wait_for_exit(daemon: &mut Daemon, timeout: Duration) -> ExitStatus {
    let mut exit = None;
    wait_until("daemon exited", timeout, async || {
        exit = daemon.try_exit_status();
        exit.is_some()
    })
    .await;
    exit.expect("exit status")
}

#[tokio::test]
async fn stop_lets_sync_task_finish() {
    let marker = unique_marker();
    let _cleanup = MarkerGuard::new(&marker);
    let (mut daemon, key) = start(&format!(
        r#"
[tasks.slow]
command = ["sh", "-c", "sleep 2; echo finished"]
apiKeyNames = ["ci"]
environment = {}
"#,
        marker_environment(&marker)
    ))
    .await;

    let (reply, _) = post_then_sigterm(&daemon, "slow", &key, &marker).await;
    let status = wait_for_exit(&mut daemon, secs(15.0)).await;
    let reply = reply.expect("response to the request in flight");

    assert_eq!(reply.status, 200, "{}", reply.text());
    let result = reply.json();
    assert_eq!(result["status"], "success");
    assert_eq!(result["stdout"], "finished\n");
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn stop_cancels_after_grace() {
    let marker = unique_marker();
    let _cleanup = MarkerGuard::new(&marker);
    let (mut daemon, key) = start(&format!(
        r#"
shutdownGraceSeconds = 1

[tasks.long]
command = ["sleep", "30"]
apiKeyNames = ["ci"]
killGraceSeconds = 2
environment = {}
"#,
        marker_environment(&marker)
    ))
    .await;

    let (reply, elapsed) = post_then_sigterm(&daemon, "long", &key, &marker).await;
    let status = wait_for_exit(&mut daemon, secs(15.0)).await;
    let reply = reply.expect("response to the request in flight");

    assert_eq!(reply.status, 200, "{}", reply.text());
    let result = reply.json();
    assert_eq!(result["status"], "canceled");
    assert_eq!(result["exit_code"], -1);
    // Shutdown grace 1 s, then SIGTERM, which `sleep` obeys at once, within the 2 s
    // kill grace.
    assert!(elapsed >= secs(0.9), "answered {elapsed:?} after SIGTERM");
    assert!(
        elapsed < secs(1.0 + 2.0 + 2.0),
        "answered {elapsed:?} after SIGTERM"
    );
    assert_eq!(status.code(), Some(0));
    assert_eq!(procfs::with_marker(&marker), []);
}

#[tokio::test]
async fn stop_kills_term_ignoring_task() {
    let marker = unique_marker();
    let _cleanup = MarkerGuard::new(&marker);
    let (mut daemon, key) = start(&format!(
        r#"
shutdownGraceSeconds = 1

[tasks.stubborn]
command = ["sh", "-c", "trap '' TERM; sleep 30"]
apiKeyNames = ["ci"]
killGraceSeconds = 2
environment = {}
"#,
        marker_environment(&marker)
    ))
    .await;

    let (reply, elapsed) = post_then_sigterm(&daemon, "stubborn", &key, &marker).await;
    let status = wait_for_exit(&mut daemon, secs(15.0)).await;

    assert_eq!(status.code(), Some(0));
    assert_eq!(procfs::with_marker(&marker), []);
    let reply = reply.expect("response to the request in flight");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["status"], "canceled");
    // SIGKILL comes only after the shutdown grace plus the kill grace.
    assert!(elapsed >= secs(2.9), "answered {elapsed:?} after SIGTERM");
    assert!(
        elapsed < secs(1.0 + 2.0 + 3.0),
        "answered {elapsed:?} after SIGTERM"
    );
}

/// Sends the headers of `POST /tasks/upload` and returns once the handler waits for
/// the body.
async fn send_head(daemon: &Daemon, key: &str) -> AwaitingBody {
    AwaitingBody::send_head(daemon.api_addr(), "/tasks/upload", Some(key)).await
}

/// Starts a daemon with the task `upload`, which reads its input and then sleeps for
/// 25 s in a process marked with `marker`.
async fn start_slow_upload(marker: &str, grace_seconds: u32) -> (Daemon, String) {
    start(&format!(
        r#"
shutdownGraceSeconds = {grace_seconds}

[tasks.upload]
command = ["sh", "-c", "cat >/dev/null; sleep 25"]
apiKeyNames = ["{KEY_NAME}"]
environment = {environment}
"#,
        environment = marker_environment(marker),
    ))
    .await
}

#[tokio::test]
async fn stop_serves_request_completed_during_grace() {
    let (mut daemon, key) = start(&format!(
        r#"
shutdownGraceSeconds = 10

[tasks.upload]
command = ["cat"]
apiKeyNames = ["{KEY_NAME}"]
"#
    ))
    .await;

    // The headers arrive before SIGTERM and the body after the daemon began stopping:
    // what a restart under load looks like to a client.
    let request = send_head(&daemon, &key).await;
    daemon.signal(Signal::SIGTERM);
    daemon.wait_for_notify("STOPPING=1", secs(5.0)).await;
    let response = request.finish().await;

    assert_eq!(response.status, 200, "{}", response.text());
    let result = response.json();
    assert_eq!(result["status"], "success");
    assert_eq!(result["stdout"], "x");
    let status = wait_for_exit(&mut daemon, secs(15.0)).await;
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn stop_cancels_run_started_during_grace() {
    let marker = unique_marker();
    let _guard = MarkerGuard::new(&marker);
    let (mut daemon, key) = start_slow_upload(&marker, 2).await;

    let request = send_head(&daemon, &key).await;
    daemon.signal(Signal::SIGTERM);
    daemon.wait_for_notify("STOPPING=1", secs(5.0)).await;
    let response = tokio::spawn(request.finish());
    wait_until("task process started", SPAWN_TIMEOUT, async || {
        !procfs::with_marker(&marker).is_empty()
    })
    .await;
    let response = response.await.expect("request task");

    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["status"], "canceled");
    let status = wait_for_exit(&mut daemon, secs(15.0)).await;
    assert_eq!(status.code(), Some(0));
    assert_eq!(procfs::with_marker(&marker), []);
}

#[tokio::test]
async fn stop_rejects_run_after_grace() {
    let marker = unique_marker();
    let _guard = MarkerGuard::new(&marker);
    let (mut daemon, key) = start_slow_upload(&marker, 1).await;

    // The open request keeps the daemon in its grace period until it ends.
    let request = send_head(&daemon, &key).await;
    daemon.signal(Signal::SIGTERM);
    wait_until("end of the grace period", secs(10.0), async || {
        daemon.stderr().contains("admitting no new run")
    })
    .await;
    let response = request.finish().await;

    assert_eq!(response.status, 503, "{}", response.text());
    let status = wait_for_exit(&mut daemon, secs(15.0)).await;
    assert_eq!(status.code(), Some(0));
    assert_eq!(procfs::with_marker(&marker), []);
}

#[tokio::test]
async fn stop_kills_run_of_removed_task() {
    const KILL_GRACE: f64 = 17.0;
    let marker = unique_marker();
    let _guard = MarkerGuard::new(&marker);
    let (mut daemon, key) = start(&format!(
        r#"
shutdownGraceSeconds = 0

[tasks.stubborn]
command = ["sh", "-c", "trap '' TERM; sleep 60"]
apiKeyNames = ["{KEY_NAME}"]
killGraceSeconds = {KILL_GRACE}
executionTimeoutSeconds = 120
environment = {environment}
"#,
        environment = marker_environment(&marker),
    ))
    .await;
    let request = daemon
        .request(Method::POST, "/tasks/stubborn")
        .bearer_auth(&key);
    let reply = tokio::spawn(async move { send(request).await });
    wait_until("task process started", SPAWN_TIMEOUT, async || {
        !procfs::with_marker(&marker).is_empty()
    })
    .await;

    // The new definitions contain neither the task nor its long kill grace, but the
    // run keeps the definition it started with.
    std::fs::write(
        daemon.config_path(),
        format!(
            "shutdownGraceSeconds = 0\n[tasks.added]\ncommand = [\"true\"]\napiKeyNames = [\"{KEY_NAME}\"]\n\
             killGraceSeconds = 0\n"
        ),
    )
    .expect("rewrite config.toml");
    daemon.signal(Signal::SIGHUP);
    wait_until("the new config in force", secs(10.0), async || {
        daemon.post_task("added", &key, "").await.status == 200
    })
    .await;
    let signaled = Instant::now();
    daemon.signal(Signal::SIGTERM);
    let status = wait_for_exit(&mut daemon, secs(KILL_GRACE + 20.0)).await;

    assert_eq!(status.code(), Some(0));
    assert_eq!(procfs::with_marker(&marker), []);
    let reply = reply.await.expect("request task");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["status"], "canceled");
    assert!(
        signaled.elapsed() >= secs(KILL_GRACE),
        "{:?}",
        signaled.elapsed()
    );
}

#[tokio::test]
async fn stop_second_signal_ends_grace() {
    let marker = unique_marker();
    let _guard = MarkerGuard::new(&marker);
    let (mut daemon, key) = start(&format!(
        r#"
shutdownGraceSeconds = 30

[tasks.upload]
command = ["sh", "-c", "cat >/dev/null; sleep 60"]
apiKeyNames = ["{KEY_NAME}"]
killGraceSeconds = 1
environment = {environment}
"#,
        environment = marker_environment(&marker),
    ))
    .await;
    // A run going and a request whose body never completes: either would hold the
    // daemon for the whole grace period.
    let running = daemon
        .request(Method::POST, "/tasks/upload")
        .bearer_auth(&key)
        .body("x");
    let running = tokio::spawn(async move { send(running).await });
    wait_until("task process started", SPAWN_TIMEOUT, async || {
        !procfs::with_marker(&marker).is_empty()
    })
    .await;
    let _stalled = send_head(&daemon, &key).await;

    daemon.signal(Signal::SIGTERM);
    daemon.wait_for_notify("STOPPING=1", secs(5.0)).await;
    daemon.signal(Signal::SIGTERM);
    // Well under the 30 s grace: the run's stop takes about its 1 s kill grace.
    let status = wait_for_exit(&mut daemon, secs(8.0)).await;

    assert_eq!(status.code(), Some(0));
    assert_eq!(procfs::with_marker(&marker), []);
    let reply = running.await.expect("request task");
    assert_eq!(reply.json()["status"], "canceled", "{}", reply.text());
}
