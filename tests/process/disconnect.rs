//! A client that closes its connection while its synchronous task runs. By default the
//! task runs to its end, and with `cancelOnDisconnect = true` it is stopped and counted
//! as `canceled`.

use std::io::Write;
use std::net::TcpStream;

use super::Fixture;
use crate::harness::activation::has_field;
use crate::harness::raw_http::request_bytes;
use crate::harness::{secs, wait_until};

fn config(cancel_on_disconnect: bool) -> String {
    format!(
        r#"
[tasks.slow]
command = ["sh", "-c", "sleep 2; echo done"]
apiKeyNames = ["ci"]
cancelOnDisconnect = {cancel_on_disconnect}
environment = {{env}}
"#
    )
}

/// Sends `POST /tasks/slow` on a raw connection and closes it once the task runs.
async fn post_and_disconnect(fixture: &Fixture) {
    let request = request_bytes("POST", "/tasks/slow", Some(&fixture.key), b"");
    let mut stream = TcpStream::connect(fixture.daemon.api_addr()).expect("connect");
    stream.write_all(&request).expect("send request");
    fixture.wait_for_processes(1).await;
    drop(stream);
}

/// Returns `task_duration_seconds_count` of task `slow` with `status`.
async fn runs_with_status(fixture: &Fixture, status: &str) -> Option<f64> {
    let metrics = fixture.daemon.parsed_metrics().await;
    metrics.value(
        "task_duration_seconds_count",
        &[("handler", "slow"), ("status", status)],
    )
}

/// Returns whether the log has a `task finished` line of task `slow` with `status`.
fn logged_finish(fixture: &Fixture, status: &str) -> bool {
    fixture.daemon.stderr().lines().any(|line| {
        line.contains("task finished")
            && has_field(line, "task", "slow")
            && has_field(line, "status", status)
    })
}

#[tokio::test]
async fn disconnect_task_runs_to_end() {
    let fixture = Fixture::start(&config(false)).await;

    post_and_disconnect(&fixture).await;
    wait_until("the run is counted as success", secs(10.0), async || {
        runs_with_status(&fixture, "success").await == Some(1.0)
    })
    .await;

    assert!(
        logged_finish(&fixture, "success"),
        "{}",
        fixture.daemon.stderr()
    );
    assert_eq!(runs_with_status(&fixture, "canceled").await, None);
    assert_eq!(fixture.processes(), []);
}

#[tokio::test]
async fn disconnect_cancels_when_configured() {
    let fixture = Fixture::start(&config(true)).await;

    post_and_disconnect(&fixture).await;
    // The task would end by itself after 2 s, so it must be gone well before.
    wait_until("the task processes are gone", secs(1.5), async || {
        fixture.processes().is_empty()
    })
    .await;
    wait_until("the run is counted as canceled", secs(5.0), async || {
        runs_with_status(&fixture, "canceled").await == Some(1.0)
    })
    .await;

    assert!(
        logged_finish(&fixture, "canceled"),
        "{}",
        fixture.daemon.stderr()
    );
    assert_eq!(runs_with_status(&fixture, "success").await, None);
}
