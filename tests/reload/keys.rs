//! The keys file changed by `rtask add-key` and `rtask remove-key` in another process
//! while the daemon runs.

use std::time::Duration;

use super::{
    KEY_NAME, RELOAD_TIMEOUT, reload_count, replace_file, wait_for_output, wait_for_reload,
    wait_watching,
};
use crate::harness::raw_http::AwaitingBody;
use crate::harness::{Daemon, DaemonBuilder, poll_until, run_rtask, stderr_text};

const CONFIG: &str = r#"
[tasks.echo]
command = ["echo", "authenticated"]
apiKeyNames = ["ci", "second"]
"#;

/// Status of `GET /tasks/echo/{id}` for an id that does not exist: 404 for a valid
/// key, 401 for a rejected one. Unlike a run, it logs nothing.
async fn poll_status(daemon: &Daemon, key: &str) -> u16 {
    daemon
        .get_result("echo", "aaaaaaaaaaaaaaaa", key)
        .await
        .status
}

#[tokio::test]
async fn reload_add_key_authenticates() {
    let builder = DaemonBuilder::new();
    builder.add_key(KEY_NAME);
    let daemon = builder.start(CONFIG).await;
    wait_watching(&daemon, &[]).await;

    let second = daemon.add_key("second");

    wait_for_output(&daemon, &second, "echo", "authenticated").await;
}

#[tokio::test]
async fn reload_remove_key_rejects() {
    let builder = DaemonBuilder::new();
    let remaining = builder.add_key(KEY_NAME);
    let removed = builder.add_key("second");
    let daemon = builder.start(CONFIG).await;
    wait_watching(&daemon, &[]).await;
    assert_eq!(poll_status(&daemon, &removed).await, 404);

    remove_key(&daemon, "second");
    wait_rejected(&daemon, &removed).await;
    assert_eq!(daemon.post_task("echo", &removed, "").await.status, 401);
    assert_eq!(daemon.post_task("echo", &remaining, "").await.status, 200);
}

/// `rtask add-key` while the daemon runs is in force within a second, as the
/// contract promises for keys.
#[tokio::test]
async fn reload_add_key_within_second() {
    let builder = DaemonBuilder::new();
    builder.add_key(KEY_NAME);
    let daemon = builder.start(CONFIG).await;
    wait_watching(&daemon, &[]).await;

    let second = daemon.add_key("second");
    let mut last = 0;
    let accepted = poll_until(Duration::from_secs(1), async || {
        last = poll_status(&daemon, &second).await;
        last == 404
    })
    .await;

    assert!(
        accepted,
        "new key got {last} after 1 s; log:\n{}",
        daemon.stderr()
    );
}

/// Runs `rtask remove-key NAME` on the daemon's keys file.
fn remove_key(daemon: &Daemon, name: &str) {
    let keys = daemon.keys_path();
    let output = run_rtask(
        daemon.dir(),
        &[
            "--api-keys-file",
            keys.to_str().expect("UTF-8 path"),
            "remove-key",
            name,
        ],
    );
    assert!(output.status.success(), "{}", stderr_text(&output));
}

/// Waits until `key` is rejected after a change to the keys file.
async fn wait_rejected(daemon: &Daemon, key: &str) {
    let mut last = 0;
    let rejected = poll_until(RELOAD_TIMEOUT, async || {
        last = poll_status(daemon, key).await;
        last == 401
    })
    .await;
    assert!(
        rejected,
        "removed key got {last} within {RELOAD_TIMEOUT:?}; log:\n{}",
        daemon.stderr()
    );
}

#[tokio::test]
async fn reload_remove_key_rejects_body_in_flight() {
    let builder = DaemonBuilder::new();
    builder.add_key(KEY_NAME);
    let removed = builder.add_key("second");
    let daemon = builder.start(CONFIG).await;
    wait_watching(&daemon, &[]).await;
    let pending = AwaitingBody::send_head(daemon.api_addr(), "/tasks/echo", Some(&removed)).await;

    remove_key(&daemon, "second");
    wait_rejected(&daemon, &removed).await;
    let response = pending.finish().await;

    assert_eq!(response.status, 401, "{}", response.text());
    let log = daemon.stderr();
    assert!(!log.contains("task finished"), "{log}");
}

#[tokio::test]
async fn reload_removed_webhook_rejects_body_in_flight() {
    let builder = DaemonBuilder::new();
    builder.add_key(KEY_NAME);
    let daemon = builder
        .start(&format!(
            "{CONFIG}webhookSecrets = {{ github = \"hook-secret\" }}\n"
        ))
        .await;
    wait_watching(&daemon, &[]).await;
    let pending = AwaitingBody::send_head(daemon.api_addr(), "/wh/hook-secret", None).await;

    let reloads = reload_count(&daemon, "success").await;
    replace_file(&daemon.config_path(), CONFIG);
    wait_for_reload(&daemon, "success", reloads).await;
    let response = pending.finish().await;

    assert_eq!(response.status, 404, "{}", response.text());
}
