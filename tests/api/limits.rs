//! Per-task limits: `rateLimit`, `maxConcurrentTasks` and `maxInputBytes`.

use std::fs;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::timeout;

use super::start_gated;
use crate::harness::{Daemon, DaemonBuilder, Metrics, Reply};

/// Number of simultaneous requests in the `maxConcurrentTasks` tests.
const CONCURRENT_REQUESTS: usize = 10;

/// Value of `maxConcurrentTasks` in those tests.
const MAX_CONCURRENT: usize = 2;

fn rejections(metrics: &Metrics, task: &str, reason: &str) -> Option<f64> {
    metrics.value(
        "task_rejection_total",
        &[("handler", task), ("reason", reason)],
    )
}

#[tokio::test]
async fn rate_limit_rejects_then_refills() {
    let builder = DaemonBuilder::new();
    let key = builder.add_key("ci");
    let daemon = builder
        .start(
            r#"
[tasks.limited]
command = ["true"]
apiKeyNames = ["ci"]
rateLimit = 1
"#,
        )
        .await;

    let first = daemon.post_task("limited", &key, "").await;
    let second = daemon.post_task("limited", &key, "").await;
    // The contract is about elapsed time: one token per second, so after 1.1 s a
    // request passes again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let third = daemon.post_task("limited", &key, "").await;

    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(second.status, 429, "{}", second.text());
    assert!(!second.error().is_empty());
    assert_eq!(third.status, 200, "{}", third.text());
    let metrics = daemon.parsed_metrics().await;
    assert_eq!(rejections(&metrics, "limited", "limit_exceeded"), Some(1.0));
}

/// Sends [`CONCURRENT_REQUESTS`] requests at once to a task that blocks until
/// `release` exists. Collects the replies that come back while the admitted runs
/// block, then creates `release` and collects the rest. Returns all replies in
/// arrival order.
async fn post_concurrently(
    daemon: &Daemon,
    task: &str,
    key: &str,
    release: &std::path::Path,
) -> Vec<Reply> {
    let (sender, mut receiver) = mpsc::channel(CONCURRENT_REQUESTS);
    for _ in 0..CONCURRENT_REQUESTS {
        let sender = sender.clone();
        let request = daemon
            .request(reqwest::Method::POST, &format!("/tasks/{task}"))
            .bearer_auth(key);
        tokio::spawn(async move {
            let reply = crate::harness::send(request).await;
            sender.send(reply).await.expect("collector alive");
        });
    }
    drop(sender);

    // Every request beyond the limit is rejected at once. Waiting for exactly
    // those replies (bounded in time, in case more were admitted) keeps the
    // admitted runs blocked until all requests have arrived.
    let mut replies = Vec::new();
    let expected_rejections = CONCURRENT_REQUESTS - MAX_CONCURRENT;
    while replies.len() < expected_rejections {
        match timeout(Duration::from_secs(10), receiver.recv()).await {
            Ok(Some(reply)) => replies.push(reply),
            Ok(None) | Err(_) => break,
        }
    }
    fs::write(release, "").expect("create release file");
    while let Some(reply) = receiver.recv().await {
        replies.push(reply);
    }
    replies
}

fn count_status(replies: &[Reply], status: u16) -> usize {
    replies
        .iter()
        .filter(|reply| reply.status == status)
        .count()
}

#[tokio::test]
async fn max_concurrent_sync_admits_two() {
    let (daemon, key, release) =
        start_gated("gate", &format!("maxConcurrentTasks = {MAX_CONCURRENT}")).await;

    let replies = post_concurrently(&daemon, "gate", &key, &release).await;

    assert_eq!(replies.len(), CONCURRENT_REQUESTS);
    assert_eq!(count_status(&replies, 200), MAX_CONCURRENT, "{replies:?}");
    assert_eq!(
        count_status(&replies, 429),
        CONCURRENT_REQUESTS - MAX_CONCURRENT,
        "{replies:?}"
    );
    for reply in replies.iter().filter(|reply| reply.status == 200) {
        assert_eq!(reply.json()["status"], "success");
    }
    let metrics = daemon.parsed_metrics().await;
    let expected = (CONCURRENT_REQUESTS - MAX_CONCURRENT) as f64;
    assert_eq!(
        rejections(&metrics, "gate", "max_concurrent"),
        Some(expected)
    );
}

#[tokio::test]
async fn max_concurrent_async_admits_two() {
    let (daemon, key, release) = start_gated(
        "gate",
        &format!("async = true\nmaxConcurrentTasks = {MAX_CONCURRENT}"),
    )
    .await;

    // Async starts return at once, so all requests arrive while the admitted runs
    // still wait for the release file.
    let (sender, mut receiver) = mpsc::channel(CONCURRENT_REQUESTS);
    for _ in 0..CONCURRENT_REQUESTS {
        let sender = sender.clone();
        let request = daemon
            .request(reqwest::Method::POST, "/tasks/gate")
            .bearer_auth(&key);
        tokio::spawn(async move {
            let reply = crate::harness::send(request).await;
            sender.send(reply).await.expect("collector alive");
        });
    }
    drop(sender);
    let mut replies = Vec::new();
    while let Some(reply) = receiver.recv().await {
        replies.push(reply);
    }

    assert_eq!(count_status(&replies, 200), MAX_CONCURRENT, "{replies:?}");
    assert_eq!(
        count_status(&replies, 429),
        CONCURRENT_REQUESTS - MAX_CONCURRENT,
        "{replies:?}"
    );
    fs::write(&release, "").expect("create release file");
    for reply in replies.iter().filter(|reply| reply.status == 200) {
        let id = reply.json()["task_id"]
            .as_str()
            .expect("task_id is a string")
            .to_owned();
        let result = daemon.wait_for_result("gate", &id, &key).await;
        assert_eq!(result["status"], "success");
    }
    let metrics = daemon.parsed_metrics().await;
    let expected = (CONCURRENT_REQUESTS - MAX_CONCURRENT) as f64;
    assert_eq!(
        rejections(&metrics, "gate", "max_concurrent"),
        Some(expected)
    );
}

#[tokio::test]
async fn input_over_limit_413() {
    let builder = DaemonBuilder::new();
    let key = builder.add_key("ci");
    let daemon = builder
        .start(
            r#"
[tasks.small]
command = ["cat"]
apiKeyNames = ["ci"]
maxInputBytes = 16
"#,
        )
        .await;

    let at_limit = daemon.post_task("small", &key, &"a".repeat(16)).await;
    let over_limit = daemon.post_task("small", &key, &"a".repeat(17)).await;

    assert_eq!(at_limit.status, 200, "{}", at_limit.text());
    assert_eq!(at_limit.json()["stdout"], "a".repeat(16));
    assert_eq!(over_limit.status, 413, "{}", over_limit.text());
    assert!(!over_limit.error().is_empty());
    let metrics = daemon.parsed_metrics().await;
    assert_eq!(rejections(&metrics, "small", "input_too_large"), Some(1.0));
}

#[tokio::test]
async fn input_default_limit_16k() {
    let builder = DaemonBuilder::new();
    let key = builder.add_key("ci");
    let daemon = builder
        .start(
            r#"
[tasks.echo]
command = ["cat"]
apiKeyNames = ["ci"]
"#,
        )
        .await;

    let at_limit = daemon.post_task("echo", &key, &"a".repeat(16384)).await;
    let over_limit = daemon.post_task("echo", &key, &"a".repeat(16385)).await;

    assert_eq!(at_limit.status, 200, "{}", at_limit.text());
    assert_eq!(over_limit.status, 413, "{}", over_limit.text());
}
