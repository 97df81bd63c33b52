//! What a reload must not reset or drop: a task's rate limiter when only another task
//! changed, a request in flight, and async results of a task that was removed.

use std::time::Instant;

use super::{
    KEY_NAME, echo_task, reload_count, replace_file, wait_for_output, wait_for_reload,
    wait_watching,
};
use crate::harness::procfs::{self, MarkerGuard, marker_environment, unique_marker};
use crate::harness::{DaemonBuilder, secs, wait_until};

#[tokio::test]
async fn reload_keeps_rate_limit_state() {
    let builder = DaemonBuilder::new();
    let key = builder.add_key(KEY_NAME);
    let limited = r#"
[tasks.limited]
command = ["echo", "limited"]
apiKeyNames = ["ci"]
rateLimit = 0.2
"#;
    let daemon = builder
        .start(&format!("{limited}{}", echo_task("other", "v1")))
        .await;
    wait_watching(&daemon, &[]).await;
    let first_request = Instant::now();
    assert_eq!(daemon.post_task("limited", &key, "").await.status, 200);
    assert_eq!(daemon.post_task("limited", &key, "").await.status, 429);

    let reloads = reload_count(&daemon, "success").await;
    replace_file(
        &daemon.config_path(),
        &format!("{limited}{}", echo_task("other", "v2")),
    );
    wait_for_reload(&daemon, "success", reloads).await;
    wait_for_output(&daemon, &key, "other", "v2").await;
    let reply = daemon.post_task("limited", &key, "").await;

    // At 0.2 requests per second the next token comes 5 s after the first request.
    let elapsed = first_request.elapsed();
    assert!(elapsed < secs(5.0), "too slow to tell: {elapsed:?}");
    assert_eq!(reply.status, 429, "{}", reply.text());
}

#[tokio::test]
async fn reload_in_flight_request_completes() {
    let marker = unique_marker();
    let _cleanup = MarkerGuard::new(&marker);
    let builder = DaemonBuilder::new();
    let key = builder.add_key(KEY_NAME);
    let daemon = builder
        .start(&format!(
            r#"
[tasks.slow]
command = ["sh", "-c", "sleep 1; echo done"]
apiKeyNames = ["ci"]
environment = {}
"#,
            marker_environment(&marker)
        ))
        .await;
    wait_watching(&daemon, &[]).await;

    let (reply, ()) = tokio::join!(daemon.post_task("slow", &key, ""), async {
        wait_until("the task runs", secs(10.0), async || {
            !procfs::with_marker(&marker).is_empty()
        })
        .await;
        // The new configuration drops the running task altogether.
        replace_file(&daemon.config_path(), &echo_task("other", "v2"));
        wait_for_output(&daemon, &key, "other", "v2").await;
    });

    assert_eq!(reply.status, 200, "{}", reply.text());
    let result = reply.json();
    assert_eq!(result["status"], "success");
    assert_eq!(result["stdout"], "done\n");
}

const ASYNC_CONFIG: &str = r#"
[tasks.job]
command = ["sh", "-c", "sleep 0.5; echo result"]
apiKeyNames = ["ci"]
async = true
"#;

#[tokio::test]
async fn reload_keeps_finished_async_result() {
    let builder = DaemonBuilder::new();
    let key = builder.add_key(KEY_NAME);
    let daemon = builder
        .start(&format!("{ASYNC_CONFIG}{}", echo_task("other", "v1")))
        .await;
    wait_watching(&daemon, &[]).await;
    let id = daemon.start_async("job", &key, "").await;
    let finished = daemon.wait_for_result("job", &id, &key).await;
    assert_eq!(finished["status"], "success");

    let reloads = reload_count(&daemon, "success").await;
    replace_file(&daemon.config_path(), &echo_task("other", "v2"));
    wait_for_reload(&daemon, "success", reloads).await;
    assert_eq!(daemon.post_task("job", &key, "").await.status, 404);
    let reply = daemon.get_result("job", &id, &key).await;

    assert_eq!(reply.status, 200, "{}", reply.text());
    let result = reply.json();
    assert_eq!(result["status"], "success");
    assert_eq!(result["stdout"], "result\n");
}

#[tokio::test]
async fn reload_keeps_running_async_result() {
    let builder = DaemonBuilder::new();
    let key = builder.add_key(KEY_NAME);
    let slow_job = ASYNC_CONFIG.replace("sleep 0.5", "sleep 1.5");
    let daemon = builder
        .start(&format!("{slow_job}{}", echo_task("other", "v1")))
        .await;
    wait_watching(&daemon, &[]).await;
    let id = daemon.start_async("job", &key, "").await;

    let reloads = reload_count(&daemon, "success").await;
    replace_file(&daemon.config_path(), &echo_task("other", "v2"));
    wait_for_reload(&daemon, "success", reloads).await;
    assert_eq!(daemon.post_task("job", &key, "").await.status, 404);
    let running = daemon.get_result("job", &id, &key).await;
    let result = daemon.wait_for_result("job", &id, &key).await;

    assert_eq!(running.status, 200, "{}", running.text());
    assert_eq!(running.json()["status"], "running");
    assert_eq!(result["status"], "success");
    assert_eq!(result["stdout"], "result\n");
}

#[tokio::test]
async fn reload_removed_task_poll_revoked_key() {
    let builder = DaemonBuilder::new();
    let valid = builder.add_key(KEY_NAME);
    let revoked = builder.add_key("revoked");
    let job = ASYNC_CONFIG.replace(r#"["ci"]"#, r#"["ci", "revoked"]"#);
    let daemon = builder
        .start(&format!("{job}{}", echo_task("other", "v1")))
        .await;
    wait_watching(&daemon, &[]).await;
    let id = daemon.start_async("job", &revoked, "").await;
    daemon.wait_for_result("job", &id, &revoked).await;

    // The key leaves the keys file, then the task leaves the config: the result stays
    // pollable under the removed task's rules, but only with a key still in force.
    let reloads = reload_count(&daemon, "success").await;
    let keys = std::fs::read_to_string(daemon.keys_path()).expect("read keys.toml");
    let keys: String = keys
        .lines()
        .filter(|line| !line.starts_with("revoked"))
        .map(|line| format!("{line}\n"))
        .collect();
    replace_file(&daemon.keys_path(), &keys);
    wait_for_reload(&daemon, "success", reloads).await;
    let reloads = reload_count(&daemon, "success").await;
    replace_file(&daemon.config_path(), &echo_task("other", "v2"));
    wait_for_reload(&daemon, "success", reloads).await;

    assert_eq!(daemon.get_result("job", &id, &revoked).await.status, 401);
    let reply = daemon.get_result("job", &id, &valid).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["stdout"], "result\n");
}
