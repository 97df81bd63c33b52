//! Unknown tasks and wrong methods.

use reqwest::Method;

use super::start_with_key;
use crate::harness::send;

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
