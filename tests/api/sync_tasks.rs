//! Synchronous runs: `POST /tasks/{name}` returns the finished result.

use std::time::Instant;

use serde_json::Value;

use super::start_with_key;
use crate::harness::DaemonBuilder;

#[tokio::test]
async fn sync_success_echoes_stdin() {
    let (daemon, key) = start_with_key(
        r#"
[tasks.echo]
command = ["cat"]
apiKeyNames = ["ci"]
"#,
    )
    .await;

    let reply = daemon.post_task("echo", &key, "hello\nworld").await;

    assert_eq!(reply.status, 200, "{}", reply.text());
    let result = reply.json();
    assert_eq!(result["status"], "success");
    assert_eq!(result["exit_code"], 0);
    assert_eq!(result["stdout"], "hello\nworld");
    assert_eq!(result["stderr"], "");
    assert_eq!(result.get("stdout_truncated"), None);
    assert_eq!(result.get("stderr_truncated"), None);
    assert_eq!(result.get("signal"), None);
}

#[tokio::test]
async fn sync_failure_reports_exit_code() {
    let (daemon, key) = start_with_key(
        r#"
[tasks.fail]
command = ["sh", "-c", 'echo oops >&2; exit 42']
apiKeyNames = ["ci"]
"#,
    )
    .await;

    let reply = daemon.post_task("fail", &key, "").await;

    assert_eq!(reply.status, 200, "{}", reply.text());
    let result = reply.json();
    assert_eq!(result["status"], "failure");
    assert_eq!(result["exit_code"], 42);
    assert_eq!(result["stderr"], "oops\n");
    assert_eq!(result["stdout"], "");
    assert_eq!(result.get("signal"), None);
}

#[tokio::test]
async fn sync_timeout_answers_early() {
    let (daemon, key) = start_with_key(
        r#"
[tasks.slow]
command = ["sleep", "10"]
apiKeyNames = ["ci"]
executionTimeoutSeconds = 2
"#,
    )
    .await;

    let started = Instant::now();
    let reply = daemon.post_task("slow", &key, "").await;
    let elapsed = started.elapsed();

    assert!(elapsed.as_secs_f64() < 4.0, "answered after {elapsed:?}");
    assert!(elapsed.as_secs_f64() >= 2.0, "answered after {elapsed:?}");
    assert_eq!(reply.status, 200, "{}", reply.text());
    let result = reply.json();
    assert_eq!(result["status"], "timeout");
    assert_eq!(result["exit_code"], -1);
}

#[tokio::test]
async fn sync_signal_reports_number() {
    let (daemon, key) = start_with_key(
        r#"
[tasks.killed]
command = ["sh", "-c", 'kill -9 $$']
apiKeyNames = ["ci"]
"#,
    )
    .await;

    let reply = daemon.post_task("killed", &key, "").await;

    assert_eq!(reply.status, 200, "{}", reply.text());
    let result = reply.json();
    assert_eq!(result["status"], "failure");
    assert_eq!(result["exit_code"], -1);
    assert_eq!(result["signal"], 9);
}

#[tokio::test]
async fn sync_missing_program_fails() {
    let (daemon, key) = start_with_key(
        r#"
[tasks.missing]
command = ["/nonexistent/rtask-test-program"]
apiKeyNames = ["ci"]
"#,
    )
    .await;

    let reply = daemon.post_task("missing", &key, "").await;

    assert_eq!(reply.status, 200, "{}", reply.text());
    let result = reply.json();
    assert_eq!(result["status"], "failure");
    assert_eq!(result["exit_code"], -2);
    let stderr = result["stderr"].as_str().expect("stderr is a string");
    assert!(!stderr.is_empty(), "stderr explains the failure");
}

#[tokio::test]
async fn sync_workdir_sets_directory() {
    let builder = DaemonBuilder::new();
    let key = builder.add_key("ci");
    let workdir = builder.path("work");
    std::fs::create_dir(&workdir).expect("create workdir");
    let workdir = workdir.to_str().expect("UTF-8 path").to_owned();
    let daemon = builder
        .start(&format!(
            r#"
[tasks.pwd]
command = ["pwd"]
workdir = "{workdir}"
apiKeyNames = ["ci"]
"#
        ))
        .await;

    let reply = daemon.post_task("pwd", &key, "").await;

    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["stdout"], format!("{workdir}\n"));
}

#[tokio::test]
async fn sync_output_truncated_per_stream() {
    let (daemon, key) = start_with_key(
        r#"
[tasks.noisy]
command = ["sh", "-c", 'printf "%0100d" 0; printf "%0100d" 0 >&2']
apiKeyNames = ["ci"]
maxOutputBytes = 10
"#,
    )
    .await;

    let reply = daemon.post_task("noisy", &key, "").await;

    assert_eq!(reply.status, 200, "{}", reply.text());
    let result = reply.json();
    assert_eq!(result["status"], "success");
    assert_eq!(result["stdout"], "0000000000");
    assert_eq!(result["stderr"], "0000000000");
    assert_eq!(result["stdout_truncated"], true);
    assert_eq!(result["stderr_truncated"], true);
}

#[tokio::test]
async fn sync_output_default_limit_16k() {
    let (daemon, key) = start_with_key(
        r#"
[tasks.noisy]
command = ["sh", "-c", 'printf "%020000d" 0']
apiKeyNames = ["ci"]
"#,
    )
    .await;

    let reply = daemon.post_task("noisy", &key, "").await;

    assert_eq!(reply.status, 200, "{}", reply.text());
    let result = reply.json();
    let stdout = result["stdout"].as_str().expect("stdout is a string");
    assert_eq!(stdout.len(), 16384);
    assert_eq!(result["stdout_truncated"], true);
}

#[tokio::test]
async fn sync_output_at_limit_kept() {
    let (daemon, key) = start_with_key(
        r#"
[tasks.exact]
command = ["sh", "-c", 'printf "%010d" 0']
apiKeyNames = ["ci"]
maxOutputBytes = 10
"#,
    )
    .await;

    let reply = daemon.post_task("exact", &key, "").await;

    assert_eq!(reply.status, 200, "{}", reply.text());
    let result = reply.json();
    assert_eq!(result["stdout"], "0000000000");
    assert_eq!(result.get("stdout_truncated"), None);
    assert_eq!(result.get("stderr_truncated"), None);
}

#[tokio::test]
async fn sync_merge_stderr_combines() {
    let (daemon, key) = start_with_key(
        r#"
[tasks.merged]
command = ["sh", "-c", 'echo out; echo err >&2']
apiKeyNames = ["ci"]
mergeStderr = true
"#,
    )
    .await;

    let reply = daemon.post_task("merged", &key, "").await;

    assert_eq!(reply.status, 200, "{}", reply.text());
    let result = reply.json();
    assert_eq!(result["stdout"], "out\nerr\n");
    assert_eq!(result["stderr"], "");
}

#[tokio::test]
async fn sync_stderr_separate_by_default() {
    let (daemon, key) = start_with_key(
        r#"
[tasks.split]
command = ["sh", "-c", 'echo out; echo err >&2']
apiKeyNames = ["ci"]
"#,
    )
    .await;

    let reply = daemon.post_task("split", &key, "").await;

    assert_eq!(reply.status, 200, "{}", reply.text());
    let result = reply.json();
    assert_eq!(result["stdout"], "out\n");
    assert_eq!(result["stderr"], "err\n");
}

#[tokio::test]
async fn sync_non_utf8_output_valid_json() {
    let (daemon, key) = start_with_key(
        r#"
[tasks.binary]
command = ["sh", "-c", 'printf "\377\376abc"; printf "\377def" >&2']
apiKeyNames = ["ci"]
"#,
    )
    .await;

    let reply = daemon.post_task("binary", &key, "").await;

    assert_eq!(reply.status, 200, "{}", reply.text());
    let result: Value = serde_json::from_slice(&reply.body).expect("body is valid JSON");
    let stdout = result["stdout"].as_str().expect("stdout is a string");
    let stderr = result["stderr"].as_str().expect("stderr is a string");
    assert!(stdout.ends_with("abc"), "stdout: {stdout:?}");
    assert!(stderr.ends_with("def"), "stderr: {stderr:?}");
}
