//! Async runs: `POST /tasks/{name}` returns a task id at once, and
//! `GET /tasks/{name}/{id}` returns `running`, then the result until it expires.

use std::fs;

use reqwest::Method;

use super::start_gated;
use crate::harness::{DaemonBuilder, secs, send, wait_until};

/// Checks that `id` has the documented form: 16 characters of lowercase base32.
fn is_task_id(id: &str) -> bool {
    id.len() == 16
        && id
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || (b'2'..=b'7').contains(&byte))
}

#[tokio::test]
async fn async_poll_running_then_result() {
    let (daemon, key, release) = start_gated("job", "async = true").await;

    let id = daemon.start_async("job", &key, "payload").await;
    assert!(is_task_id(&id), "task id {id:?}");

    let running = daemon.get_result("job", &id, &key).await;
    assert_eq!(running.status, 200, "{}", running.text());
    assert_eq!(running.json(), serde_json::json!({"status": "running"}));

    fs::write(&release, "").expect("create release file");
    let result = daemon.wait_for_result("job", &id, &key).await;
    assert_eq!(result["status"], "success");
    assert_eq!(result["exit_code"], 0);
    assert_eq!(result["stdout"], "payload");
    assert_eq!(result["stderr"], "");
}

#[tokio::test]
async fn async_timeout_in_result() {
    let builder = DaemonBuilder::new();
    let key = builder.add_key("ci");
    let daemon = builder
        .start(
            r#"
[tasks.slow]
command = ["sleep", "10"]
apiKeyNames = ["ci"]
async = true
executionTimeoutSeconds = 1
"#,
        )
        .await;

    let id = daemon.start_async("slow", &key, "").await;
    let result = daemon.wait_for_result("slow", &id, &key).await;

    assert_eq!(result["status"], "timeout");
    assert_eq!(result["exit_code"], -1);
}

#[tokio::test]
async fn async_result_expires() {
    let builder = DaemonBuilder::new();
    let key = builder.add_key("ci");
    let daemon = builder
        .start(
            r#"
[tasks.quick]
command = ["true"]
apiKeyNames = ["ci"]
async = true
asyncResultRetentionSeconds = 1
"#,
        )
        .await;

    let id = daemon.start_async("quick", &key, "").await;
    let result = daemon.wait_for_result("quick", &id, &key).await;
    assert_eq!(result["status"], "success");

    wait_until("the result expired", secs(10.0), async || {
        daemon.get_result("quick", &id, &key).await.status == 404
    })
    .await;
    let expired = daemon.get_result("quick", &id, &key).await;
    assert_eq!(expired.error(), "task not found");
}

#[tokio::test]
async fn async_unknown_id_404() {
    let builder = DaemonBuilder::new();
    let key = builder.add_key("ci");
    let daemon = builder
        .start(
            r#"
[tasks.job]
command = ["true"]
apiKeyNames = ["ci"]
async = true
"#,
        )
        .await;

    let reply = daemon.get_result("job", "aaaaaaaaaaaaaaaa", &key).await;

    assert_eq!(reply.status, 404, "{}", reply.text());
    assert_eq!(reply.error(), "task not found");
}

#[tokio::test]
async fn async_poll_requires_key() {
    let builder = DaemonBuilder::new();
    let key = builder.add_key("ci");
    let daemon = builder
        .start(
            r#"
[tasks.job]
command = ["true"]
apiKeyNames = ["ci"]
async = true
"#,
        )
        .await;
    let id = daemon.start_async("job", &key, "").await;

    let reply = send(daemon.request(Method::GET, &format!("/tasks/job/{id}"))).await;

    assert_eq!(reply.status, 401, "{}", reply.text());
    assert!(!reply.error().is_empty());
}
