//! Unknown tasks and wrong methods.

use reqwest::Method;

use super::start_with_key;
use crate::harness::raw_http::{request_bytes, tcp_request};
use crate::harness::{Daemon, send};

const ECHO_CONFIG: &str = r#"
[tasks.echo]
command = ["cat"]
apiKeyNames = ["ci"]
webhookSecrets = { hook = "route-test-secret" }
"#;

#[tokio::test]
async fn unknown_task_404() {
    let (daemon, key) = start_with_key(ECHO_CONFIG).await;

    let reply = daemon.post_task("no-such-task", &key, "").await;

    assert_eq!(reply.status, 404, "{}", reply.text());
    assert!(!reply.error().is_empty());
}

#[tokio::test]
async fn get_on_post_route_405() {
    let (daemon, key) = start_with_key(ECHO_CONFIG).await;

    let task = send(daemon.request(Method::GET, "/tasks/echo").bearer_auth(&key)).await;
    let webhook = send(daemon.request(Method::GET, "/wh/route-test-secret")).await;

    assert_eq!(task.status, 405, "{}", task.text());
    assert!(!task.error().is_empty());
    assert_eq!(webhook.status, 405, "{}", webhook.text());
    assert!(!webhook.error().is_empty());
}

/// Sends `POST /tasks/echo` with an `X-Padding` header of `size` bytes and returns the
/// response status.
async fn status_with_header_of(daemon: &Daemon, key: &str, size: usize) -> u16 {
    let request = request_bytes("POST", "/tasks/echo", Some(key), b"");
    let padding = format!("X-Padding: {}\r\n", "p".repeat(size));
    // After the request line, before the other headers.
    let line_end = request
        .windows(2)
        .position(|window| window == b"\r\n")
        .expect("a request line")
        + 2;
    let mut padded = request[..line_end].to_vec();
    padded.extend_from_slice(padding.as_bytes());
    padded.extend_from_slice(&request[line_end..]);
    tcp_request(daemon.api_addr(), padded).await.status
}

#[tokio::test]
async fn request_head_over_limit_431() {
    let (daemon, key) = start_with_key(ECHO_CONFIG).await;

    // Below 16 KiB a head always passes. Above, hyper rejects it once its buffer is
    // full, which a head sent in large reads may pass by up to another 16 KiB.
    assert_eq!(status_with_header_of(&daemon, &key, 15 * 1024).await, 200);
    assert_eq!(status_with_header_of(&daemon, &key, 40 * 1024).await, 431);
}
