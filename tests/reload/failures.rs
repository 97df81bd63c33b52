//! An invalid configuration saved over a valid one: the old tasks keep serving, and the
//! failure shows in the log, the metrics and `STATUS=`, until a fixed file loads.

use super::{
    KEY_NAME, echo_task, reload_count, replace_file, wait_for_output, wait_for_reload,
    wait_watching,
};
use crate::harness::{Daemon, DaemonBuilder, secs};

/// A configuration whose line 7 has a key that does not exist.
const INVALID: &str = r#"
[tasks.first]
command = ["echo", "v1"]
apiKeyNames = ["ci"]

[tasks.second]
bogusKey = 1
command = ["echo", "v2"]
apiKeyNames = ["ci"]
"#;

async fn last_reload_success(daemon: &Daemon) -> Option<f64> {
    let metrics = daemon.parsed_metrics().await;
    metrics.value("rtask_config_last_reload_success", &[])
}

/// Returns the `STATUS=` value of the next `READY=1` datagram after a `RELOADING=1`.
async fn next_reload_status(daemon: &mut Daemon) -> String {
    daemon.wait_for_notify("RELOADING=1", secs(5.0)).await;
    let ready = daemon.wait_for_notify("READY=1", secs(5.0)).await;
    ready
        .lines()
        .find_map(|line| line.strip_prefix("STATUS="))
        .unwrap_or_else(|| panic!("no STATUS= in {ready:?}"))
        .to_owned()
}

#[tokio::test]
async fn reload_invalid_keeps_old_table() {
    let builder = DaemonBuilder::new();
    let key = builder.add_key(KEY_NAME);
    let mut daemon = builder.start(&echo_task("first", "v1")).await;
    wait_watching(&daemon, &[]).await;
    let failures_before = reload_count(&daemon, "failure").await;

    replace_file(&daemon.config_path(), INVALID);
    wait_for_reload(&daemon, "failure", failures_before).await;
    let status = next_reload_status(&mut daemon).await;

    assert_eq!(
        reload_count(&daemon, "failure").await,
        failures_before + 1.0
    );
    assert_eq!(last_reload_success(&daemon).await, Some(0.0));
    assert!(status.contains("last reload failed"), "STATUS={status}");
    let first = daemon.post_task("first", &key, "").await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.json()["stdout"], "v1\n");
    assert_eq!(daemon.post_task("second", &key, "").await.status, 404);
    let log = daemon.stderr();
    let failure_line = log
        .lines()
        .find(|line| line.contains("reload failed"))
        .unwrap_or_else(|| panic!("no `reload failed` line in:\n{log}"));
    assert!(failure_line.contains("line 7"), "{failure_line}");
    assert!(failure_line.contains("bogusKey"), "{failure_line}");
}

#[tokio::test]
async fn reload_fixed_file_loads() {
    let builder = DaemonBuilder::new();
    let key = builder.add_key(KEY_NAME);
    let mut daemon = builder.start(&echo_task("first", "v1")).await;
    wait_watching(&daemon, &[]).await;
    replace_file(&daemon.config_path(), INVALID);
    let failed_status = next_reload_status(&mut daemon).await;
    assert!(
        failed_status.contains("last reload failed"),
        "STATUS={failed_status}"
    );

    let fixed = INVALID.replace("bogusKey = 1\n", "");
    replace_file(&daemon.config_path(), &fixed);

    wait_for_output(&daemon, &key, "second", "v2").await;
    assert_eq!(last_reload_success(&daemon).await, Some(1.0));
    let status = next_reload_status(&mut daemon).await;
    assert_eq!(status, "2 tasks, 1 key; last reload ok");
}
