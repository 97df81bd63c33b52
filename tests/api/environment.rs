//! The environment variables of a task's child process.

use std::collections::BTreeMap;

use reqwest::Method;

use super::start_with_key;
use crate::harness::{DaemonBuilder, send};

/// Parses `env` output (`NAME=value` lines) into a map.
fn parse_env(stdout: &str) -> BTreeMap<String, String> {
    stdout
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect()
}

#[tokio::test]
async fn env_has_config_and_headers() {
    let (daemon, key) = start_with_key(
        r#"
[tasks.env]
command = ["env"]
apiKeyNames = ["ci"]
passRequestHeaders = ["X-Custom-Header", "X-Single"]

[tasks.env.environment]
GREETING = "hello world"
"#,
    )
    .await;

    let request = daemon
        .request(Method::POST, "/tasks/env")
        .bearer_auth(&key)
        .header("X-Custom-Header", "first")
        .header("X-Custom-Header", "second")
        .header("X-Single", "only")
        .header("X-Not-Passed", "hidden");
    let reply = send(request).await;

    assert_eq!(reply.status, 200, "{}", reply.text());
    let env = parse_env(reply.json()["stdout"].as_str().expect("stdout"));
    assert_eq!(env.get("GREETING").map(String::as_str), Some("hello world"));
    assert_eq!(
        env.get("REQUEST_HEADER_X_CUSTOM_HEADER")
            .map(String::as_str),
        Some("first,second")
    );
    assert_eq!(
        env.get("REQUEST_HEADER_X_SINGLE").map(String::as_str),
        Some("only")
    );
    assert_eq!(env.get("REQUEST_HEADER_X_NOT_PASSED"), None);
    assert_eq!(env.get("RTASK_TASK_NAME").map(String::as_str), Some("env"));
    assert_eq!(env.get("RTASK_KEY_NAME").map(String::as_str), Some("ci"));
    let task_id = env
        .get("RTASK_TASK_ID")
        .map(String::as_str)
        .unwrap_or_default();
    assert!(!task_id.is_empty(), "RTASK_TASK_ID is set: {env:?}");
}

#[tokio::test]
async fn env_drops_systemd_variables() {
    let builder = DaemonBuilder::new()
        .env("WATCHDOG_USEC", "600000000")
        .env("RTASK_TEST_MARKER", "inherited");
    let key = builder.add_key("ci");
    let daemon = builder
        .start(
            r#"
[tasks.env]
command = ["env"]
apiKeyNames = ["ci"]
"#,
        )
        .await;

    let reply = daemon.post_task("env", &key, "").await;

    assert_eq!(reply.status, 200, "{}", reply.text());
    let env = parse_env(reply.json()["stdout"].as_str().expect("stdout"));
    assert_eq!(
        env.get("RTASK_TEST_MARKER").map(String::as_str),
        Some("inherited")
    );
    for name in [
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
    ] {
        assert_eq!(env.get(name), None, "{name} leaked into the child");
    }
}
