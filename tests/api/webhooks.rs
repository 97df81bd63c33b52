//! `POST /wh/{secret}`: runs the task that contains the secret, without an API key.

use crate::harness::DaemonBuilder;

#[tokio::test]
async fn webhook_secret_runs_task() {
    let daemon = DaemonBuilder::new()
        .start(
            r#"
[tasks.deploy]
command = ["cat"]
webhookSecrets = { github = "gh-secret-value" }
"#,
        )
        .await;

    let reply = daemon.post_webhook("gh-secret-value", "push event").await;

    assert_eq!(reply.status, 200, "{}", reply.text());
    let result = reply.json();
    assert_eq!(result["status"], "success");
    assert_eq!(result["stdout"], "push event");
}

#[tokio::test]
async fn webhook_secret_file_trimmed() {
    let builder = DaemonBuilder::new();
    let secret_file = builder.write_file("hook.secret", "  file-secret-value \n");
    let secret_file = secret_file.to_str().expect("UTF-8 path").to_owned();
    let daemon = builder
        .start(&format!(
            r#"
[tasks.deploy]
command = ["cat"]
webhookSecretFiles = {{ gitlab = "{secret_file}" }}
"#
        ))
        .await;

    let reply = daemon.post_webhook("file-secret-value", "tag event").await;

    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["stdout"], "tag event");
}

#[tokio::test]
async fn webhook_unknown_secret_404() {
    let daemon = DaemonBuilder::new()
        .start(
            r#"
[tasks.deploy]
command = ["cat"]
webhookSecrets = { github = "gh-secret-value" }
"#,
        )
        .await;

    let reply = daemon.post_webhook("not-the-secret", "").await;

    assert_eq!(reply.status, 404, "{}", reply.text());
    assert!(!reply.error().is_empty());
}

#[tokio::test]
async fn webhook_served_without_keys_file() {
    let builder = DaemonBuilder::new();
    let keys_path = builder.keys_path();
    let daemon = builder
        .start(
            r#"
[tasks.deploy]
command = ["cat"]
apiKeyNames = ["ci"]
webhookSecrets = { github = "gh-secret-value" }
"#,
        )
        .await;

    let reply = daemon.post_webhook("gh-secret-value", "ping").await;

    assert!(!keys_path.exists(), "the keys file was never created");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["stdout"], "ping");
    let stderr = daemon.stderr();
    let keys_path = keys_path.to_str().expect("UTF-8 path");
    let warned = stderr
        .lines()
        .any(|line| line.contains("WARN") && line.contains(keys_path));
    assert!(warned, "no warning naming {keys_path} in stderr:\n{stderr}");
}

#[tokio::test]
async fn webhook_base64_secret_matches() {
    // A base64 secret with '+', '/' and '=', and a secret name with a space, as the
    // original accepted them.
    let daemon = DaemonBuilder::new()
        .start(
            r#"
[tasks.deploy]
command = ["cat"]
webhookSecrets = { "build server" = "ab+cd/ef==" }
"#,
        )
        .await;

    let raw = daemon.post_webhook("ab+cd/ef==", "raw").await;
    let encoded = daemon.post_webhook("ab%2Bcd%2Fef%3D%3D", "encoded").await;
    let prefix = daemon.post_webhook("ab+cd", "prefix").await;

    assert_eq!(raw.status, 200, "{}", raw.text());
    assert_eq!(raw.json()["stdout"], "raw");
    assert_eq!(encoded.status, 200, "{}", encoded.text());
    assert_eq!(encoded.json()["stdout"], "encoded");
    assert_eq!(prefix.status, 404, "{}", prefix.text());
    assert!(!daemon.stderr().contains("ab+cd"));
}
