//! API key checks on `POST /tasks/{name}`, including keys made by the Go program.

use std::fs;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ciborium::Value;
use reqwest::Method;
use reqwest::header::AUTHORIZATION;

use super::start_with_key;
use crate::harness::{Daemon, DaemonBuilder, add_key, send};

/// Directory of the keys made by the Go program.
fn go_compat_dir() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/go-compat"
    ))
}

#[tokio::test]
async fn auth_rejections_counted_by_reason() {
    let builder = DaemonBuilder::new();
    builder.add_key("ci");
    let other_key = builder.add_key("other");
    // A well-formed key that this daemon's keys file does not contain.
    let foreign_dir = tempfile::tempdir().expect("create temporary directory");
    let foreign_key = add_key(
        foreign_dir.path(),
        &foreign_dir.path().join("keys.toml"),
        "ci",
    );
    let daemon = builder
        .start(
            r#"
[tasks.echo]
command = ["cat"]
apiKeyNames = ["ci"]
"#,
        )
        .await;

    let cases = [
        (None, "missing_key"),
        (Some("Basic dXNlcjpwYXNz".to_owned()), "invalid_header"),
        (
            Some("Bearer !!not*base64url!!".to_owned()),
            "invalid_key_encoding",
        ),
        (Some(format!("Bearer {foreign_key}")), "invalid_key"),
        (Some(format!("Bearer {other_key}")), "key_not_allowed"),
    ];
    for (authorization, reason) in &cases {
        let mut request = daemon.request(Method::POST, "/tasks/echo").body("x");
        if let Some(value) = authorization {
            request = request.header(AUTHORIZATION, value);
        }
        let reply = send(request).await;
        assert_eq!(reply.status, 401, "case {reason}: {}", reply.text());
        assert!(!reply.error().is_empty(), "case {reason}");
    }

    let metrics = daemon.parsed_metrics().await;
    for (_, reason) in &cases {
        let count = metrics.value(
            "task_rejection_total",
            &[("handler", "echo"), ("reason", reason)],
        );
        assert_eq!(count, Some(1.0), "task_rejection_total reason={reason}");
    }
}

#[tokio::test]
async fn auth_go_made_key_accepted() {
    let builder = DaemonBuilder::new();
    fs::copy(go_compat_dir().join("keys.toml"), builder.keys_path()).expect("copy Go keys file");
    let key_line = fs::read_to_string(go_compat_dir().join("api-keys.txt")).expect("read key");
    let key = key_line
        .trim()
        .strip_prefix("go-made ")
        .expect("line starts with the key name")
        .to_owned();
    let daemon = builder
        .start(
            r#"
[tasks.echo]
command = ["cat"]
apiKeyNames = ["go-made"]
"#,
        )
        .await;

    let reply = daemon.post_task("echo", &key, "from go").await;

    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["stdout"], "from go");
}

#[tokio::test]
async fn auth_key_name_in_env() {
    let builder = DaemonBuilder::new();
    let key = builder.add_key("deploy-bot");
    let daemon = builder
        .start(
            r#"
[tasks.whoami]
command = ["sh", "-c", 'printf %s "$RTASK_KEY_NAME"']
apiKeyNames = ["deploy-bot"]
"#,
        )
        .await;

    let reply = daemon.post_task("whoami", &key, "").await;

    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["stdout"], "deploy-bot");
}

#[tokio::test]
async fn auth_secrets_not_logged() {
    let builder = DaemonBuilder::new().log_level("debug");
    let key = builder.add_key("ci");
    let foreign_dir = tempfile::tempdir().expect("create temporary directory");
    let foreign_key = add_key(
        foreign_dir.path(),
        &foreign_dir.path().join("keys.toml"),
        "ci",
    );
    let daemon = builder
        .start(
            r#"
[tasks.echo]
command = ["cat"]
apiKeyNames = ["ci"]
webhookSecrets = { github = "logged-secret-canary" }
"#,
        )
        .await;

    let accepted = daemon.post_task("echo", &key, "").await;
    let rejected = daemon.post_task("echo", &foreign_key, "").await;
    let webhook = daemon.post_webhook("logged-secret-canary", "").await;
    let unknown_webhook = daemon.post_webhook("unknown-secret-canary", "").await;

    assert_eq!(accepted.status, 200, "{}", accepted.text());
    assert_eq!(rejected.status, 401, "{}", rejected.text());
    assert_eq!(webhook.status, 200, "{}", webhook.text());
    assert_eq!(unknown_webhook.status, 404, "{}", unknown_webhook.text());
    let stderr = daemon.stderr();
    assert!(stderr.contains("DEBUG"), "debug logging is on:\n{stderr}");
    assert!(!stderr.contains(&key), "the API key was logged:\n{stderr}");
    assert!(
        !stderr.contains(&foreign_key),
        "a rejected key was logged:\n{stderr}"
    );
    assert!(
        !stderr.contains("secret-canary"),
        "a webhook secret was logged:\n{stderr}"
    );
}

/// Returns `key` with its secret replaced by 40 bytes derived from `seed`: the same
/// key id, a wrong key.
fn wrong_key_like(key: &str, seed: u32) -> String {
    let bytes = URL_SAFE_NO_PAD.decode(key).expect("a base64url key");
    let mut value: Value = ciborium::from_reader(bytes.as_slice()).expect("a CBOR key");
    let fields = value.as_map_mut().expect("a CBOR map");
    let secret = fields
        .iter_mut()
        .find(|(field, _)| *field == Value::from(2))
        .expect("field 2, the secret");
    secret.1 = Value::Bytes(seed.to_le_bytes().repeat(10));
    let mut encoded = Vec::new();
    ciborium::into_writer(&value, &mut encoded).expect("encode the key");
    URL_SAFE_NO_PAD.encode(encoded)
}

/// Sends `POST /tasks/echo` once with each of `keys`, all at once, and returns the
/// response statuses.
async fn post_all_at_once(daemon: &Daemon, keys: &[String]) -> Vec<u16> {
    let url = daemon.api_url("/tasks/echo");
    let requests: Vec<_> = keys
        .iter()
        .map(|key| {
            let request = daemon.client().post(&url).bearer_auth(key);
            tokio::spawn(async move { send(request).await.status })
        })
        .collect();
    let mut statuses = Vec::new();
    for request in requests {
        statuses.push(request.await.expect("request task"));
    }
    statuses
}

/// A task `echo` that the key `ci` may run.
const ECHO_FOR_CI: &str = r#"
[tasks.echo]
command = ["cat"]
apiKeyNames = ["ci"]
"#;

#[tokio::test]
async fn auth_burst_with_one_key_shares_verification() {
    const REQUESTS: usize = 100;
    let (daemon, key) = start_with_key(ECHO_FOR_CI).await;

    // A daemon that has not verified the key yet, as after a restart with a backlog.
    let statuses = post_all_at_once(&daemon, &vec![key; REQUESTS]).await;

    assert!(statuses.iter().all(|status| *status == 200), "{statuses:?}");
}

#[tokio::test]
async fn auth_wrong_keys_beyond_queue_get_503() {
    const REQUESTS: u32 = 200;
    let (daemon, key) = start_with_key(ECHO_FOR_CI).await;
    let wrong_keys: Vec<String> = (0..REQUESTS)
        .map(|seed| wrong_key_like(&key, seed))
        .collect();

    let statuses = post_all_at_once(&daemon, &wrong_keys).await;

    let busy = statuses.iter().filter(|status| **status == 503).count();
    let denied = statuses.iter().filter(|status| **status == 401).count();
    assert_eq!(busy + denied, statuses.len(), "{statuses:?}");
    assert!(busy > 0, "no request was turned away: {statuses:?}");
    // The queue and the running verifications, at least, were served.
    assert!(denied >= 34, "{statuses:?}");
    let metrics = daemon.parsed_metrics().await;
    let counted = metrics.value(
        "task_rejection_total",
        &[("handler", "echo"), ("reason", "verification_busy")],
    );
    assert_eq!(counted, Some(busy as f64));
    // The daemon still accepts the right key once the flood is over.
    assert_eq!(daemon.post_task("echo", &key, "").await.status, 200);
}
