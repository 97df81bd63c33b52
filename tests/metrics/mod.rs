//! `GET /metrics` on the metrics socket: names, labels and values after API calls.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::time::Duration;

use nix::sys::signal;
use nix::unistd::Pid;
use reqwest::Method;

use crate::api::start_gated;
use crate::harness::{Daemon, DaemonBuilder, Metrics, poll_until, secs, send, wait_until};

#[tokio::test]
async fn metrics_duration_by_status() {
    let builder = DaemonBuilder::new();
    let key = builder.add_key("ci");
    let daemon = builder
        .start(
            r#"
[tasks.echo]
command = ["cat"]
apiKeyNames = ["ci"]

[tasks.fail]
command = ["false"]
apiKeyNames = ["ci"]

[tasks.slow]
command = ["sleep", "10"]
apiKeyNames = ["ci"]
executionTimeoutSeconds = 1
"#,
        )
        .await;

    for _ in 0..2 {
        daemon.post_task("echo", &key, "").await;
    }
    daemon.post_task("fail", &key, "").await;
    daemon.post_task("slow", &key, "").await;
    let metrics = daemon.parsed_metrics().await;

    let count = |handler, status| {
        metrics.value(
            "task_duration_seconds_count",
            &[
                ("handler", handler),
                ("api_key_used", "ci"),
                ("status", status),
            ],
        )
    };
    assert_eq!(count("echo", "success"), Some(2.0));
    assert_eq!(count("fail", "failure"), Some(1.0));
    assert_eq!(count("slow", "timeout"), Some(1.0));
    assert_eq!(count("echo", "failure"), None);
    let slow_sum = metrics
        .value(
            "task_duration_seconds_sum",
            &[("handler", "slow"), ("status", "timeout")],
        )
        .expect("sum for the timed-out task");
    assert!(slow_sum >= 1.0, "duration sum {slow_sum}");
    let inf_bucket = metrics.value(
        "task_duration_seconds_bucket",
        &[("handler", "echo"), ("status", "success"), ("le", "+Inf")],
    );
    assert_eq!(inf_bucket, Some(2.0));
}

#[tokio::test]
async fn metrics_rejection_labels() {
    let builder = DaemonBuilder::new();
    builder.add_key("ci");
    let daemon = builder
        .start(
            r#"
[tasks.echo]
command = ["cat"]
apiKeyNames = ["ci"]
"#,
        )
        .await;

    for _ in 0..3 {
        send(daemon.request(Method::POST, "/tasks/echo")).await;
    }
    let metrics = daemon.parsed_metrics().await;

    let missing = metrics.value(
        "task_rejection_total",
        &[("handler", "echo"), ("reason", "missing_key")],
    );
    assert_eq!(missing, Some(3.0));
    let samples = metrics.matching("task_rejection_total", &[]);
    for sample in samples {
        let labels: BTreeSet<&str> = sample.labels.keys().map(String::as_str).collect();
        assert_eq!(labels, BTreeSet::from(["handler", "reason"]), "{sample:?}");
    }
}

#[tokio::test]
async fn metrics_custom_buckets() {
    let builder = DaemonBuilder::new();
    let key = builder.add_key("ci");
    let daemon = builder
        .start(
            r#"
[tasks.echo]
command = ["cat"]
apiKeyNames = ["ci"]
durationHistogramBuckets = [0.5, 5.0]
"#,
        )
        .await;

    daemon.post_task("echo", &key, "").await;
    let metrics = daemon.parsed_metrics().await;

    let bounds: BTreeSet<String> = metrics
        .matching("task_duration_seconds_bucket", &[("handler", "echo")])
        .iter()
        .map(|sample| sample.labels["le"].clone())
        .collect();
    let expected: BTreeSet<String> = ["0.5", "5", "+Inf"].map(String::from).into();
    assert_eq!(bounds, expected);
}

#[tokio::test]
async fn metrics_running_gauge() {
    let (daemon, key, release) = start_gated("job", "async = true").await;

    let id = daemon.start_async("job", &key, "").await;
    wait_until("the running gauge rose to 1", secs(5.0), async || {
        let metrics = daemon.parsed_metrics().await;
        metrics.value("rtask_tasks_running", &[("handler", "job")]) == Some(1.0)
    })
    .await;
    fs::write(&release, "").expect("create release file");
    let result = daemon.wait_for_result("job", &id, &key).await;

    assert_eq!(result["status"], "success");
    wait_until("the running gauge dropped to 0", secs(5.0), async || {
        let metrics = daemon.parsed_metrics().await;
        metrics.value("rtask_tasks_running", &[("handler", "job")]) == Some(0.0)
    })
    .await;
}

/// Sends `POST /tasks/{task}` and closes the connection after 500 ms, before the
/// run finishes.
async fn post_and_disconnect(daemon: &Daemon, task: &str, key: &str) {
    let outcome = daemon
        .request(Method::POST, &format!("/tasks/{task}"))
        .bearer_auth(key)
        .timeout(Duration::from_millis(500))
        .send()
        .await;
    assert!(outcome.is_err(), "the request should time out: {outcome:?}");
}

/// Returns the PID that a task wrote to `path`, waiting until the file is complete.
async fn read_pid_file(path: &Path) -> Pid {
    let mut pid = None;
    wait_until("the task wrote its PID", secs(10.0), async || {
        let text = fs::read_to_string(path).unwrap_or_default();
        pid = text.strip_suffix('\n').and_then(|line| line.parse().ok());
        pid.is_some()
    })
    .await;
    Pid::from_raw(pid.expect("PID parsed"))
}

#[tokio::test]
async fn metrics_canceled_on_disconnect() {
    let builder = DaemonBuilder::new();
    let key = builder.add_key("ci");
    let pid_file = builder.path("task.pid");
    let daemon = builder
        .start(&format!(
            r#"
shutdownGraceSeconds = 1

[tasks.cancelable]
command = ["sh", "-c", 'echo $$ > "{}"; exec sleep 30']
apiKeyNames = ["ci"]
cancelOnDisconnect = true
"#,
            pid_file.display()
        ))
        .await;

    post_and_disconnect(&daemon, "cancelable", &key).await;
    let task_pid = read_pid_file(&pid_file).await;

    wait_until(
        "the canceled task's process is gone",
        secs(10.0),
        async || signal::kill(task_pid, None).is_err(),
    )
    .await;
    let counted = poll_until(secs(5.0), async || {
        let metrics = daemon.parsed_metrics().await;
        let canceled = metrics.value(
            "task_duration_seconds_count",
            &[("handler", "cancelable"), ("status", "canceled")],
        );
        canceled == Some(1.0)
    })
    .await;
    let text = daemon.metrics().await;
    assert!(counted, "no status=\"canceled\" sample:\n{text}");
    let metrics = Metrics::parse(&text);
    assert_eq!(
        metrics.value("rtask_tasks_running", &[("handler", "cancelable")]),
        Some(0.0)
    );
}

#[tokio::test]
async fn metrics_disconnect_keeps_running() {
    let (daemon, key, release) = start_gated("steady", "").await;

    post_and_disconnect(&daemon, "steady", &key).await;
    fs::write(&release, "").expect("create release file");

    let counted = poll_until(secs(10.0), async || {
        let metrics = daemon.parsed_metrics().await;
        let successes = metrics.value(
            "task_duration_seconds_count",
            &[("handler", "steady"), ("status", "success")],
        );
        successes == Some(1.0)
    })
    .await;
    let text = daemon.metrics().await;
    assert!(counted, "no status=\"success\" sample:\n{text}");
    let metrics = Metrics::parse(&text);
    let canceled = metrics.value(
        "task_duration_seconds_count",
        &[("handler", "steady"), ("status", "canceled")],
    );
    assert_eq!(canceled, None);
}

#[tokio::test]
async fn metrics_config_load_success() {
    let daemon = DaemonBuilder::new()
        .start(
            r#"
[tasks.echo]
command = ["cat"]
"#,
        )
        .await;

    let metrics = daemon.parsed_metrics().await;

    assert_eq!(
        metrics.value("rtask_config_last_reload_success", &[]),
        Some(1.0)
    );
}
