//! Hot reload of the configuration, the keys file and webhook secret files: every way
//! tools replace a file, SIGHUP, invalid files, requests in flight, and the state that
//! must survive a reload.
//!
//! Tests wait for a change with requests that succeed only once the change is in force.
//! Such a request asks for a task that only the new configuration has (404 before), or
//! uses a key or secret that only the new file has, or reads the reload counters in the
//! metrics. The harness keeps the daemon's log outside the watched directory, so no log
//! line makes the daemon read its inputs again and hide a change the watcher missed.

mod failures;
mod files;
mod keys;
mod race;
mod state;

use std::fs;
use std::path::Path;
use std::time::Duration;

use crate::harness::{Daemon, Reply, poll_until, procfs};

/// Name of the key the tests create.
pub const KEY_NAME: &str = "ci";

/// Time a change may take to be in force.
pub const RELOAD_TIMEOUT: Duration = Duration::from_secs(2);

/// Returns a `[tasks.NAME]` table whose command prints `output`.
pub fn echo_task(name: &str, output: &str) -> String {
    format!(
        r#"
[tasks.{name}]
command = ["echo", "{output}"]
apiKeyNames = ["ci"]
"#
    )
}

/// Returns a configuration whose only task, `task-VERSION`, prints `VERSION`.
pub fn version_config(version: &str) -> String {
    echo_task(&format!("task-{version}"), version)
}

/// Replaces `path` the way editors and configuration tools do: writes a temporary file
/// in the same directory and renames it over `path`.
pub fn replace_file(path: &Path, contents: &str) {
    let name = path.file_name().expect("file name").to_string_lossy();
    let temporary = path.with_file_name(format!(".{name}.tmp"));
    fs::write(&temporary, contents)
        .unwrap_or_else(|err| panic!("write {}: {err}", temporary.display()));
    fs::rename(&temporary, path)
        .unwrap_or_else(|err| panic!("rename over {}: {err}", path.display()));
}

/// Waits until `POST /tasks/{task}` runs and prints `output`. Panics with the last reply
/// and the daemon's log after [`RELOAD_TIMEOUT`].
pub async fn wait_for_output(daemon: &Daemon, key: &str, task: &str, output: &str) {
    let expected = format!("{output}\n");
    let mut last: Option<Reply> = None;
    let reached = poll_until(RELOAD_TIMEOUT, async || {
        let reply = daemon.post_task(task, key, "").await;
        let done = reply.status == 200 && reply.json()["stdout"] == expected.as_str();
        last = Some(reply);
        done
    })
    .await;
    let last = last.map(|reply| format!("HTTP {} {}", reply.status, reply.text()));
    assert!(
        reached,
        "task {task} did not print {output:?} within {RELOAD_TIMEOUT:?}; last reply {last:?}; \
         log:\n{}",
        daemon.stderr()
    );
}

/// Waits until the new version's task, `task-VERSION`, prints `VERSION`.
pub async fn wait_for_version(daemon: &Daemon, key: &str, version: &str) {
    wait_for_output(daemon, key, &format!("task-{version}"), version).await;
}

/// Returns `rtask_config_reloads_total{result}`, 0 when absent.
pub async fn reload_count(daemon: &Daemon, result: &str) -> f64 {
    let metrics = daemon.parsed_metrics().await;
    metrics
        .value("rtask_config_reloads_total", &[("result", result)])
        .unwrap_or(0.0)
}

/// Waits until `rtask_config_reloads_total{result}` exceeds `before`.
pub async fn wait_for_reload(daemon: &Daemon, result: &str, before: f64) {
    let mut now = before;
    let reached = poll_until(RELOAD_TIMEOUT, async || {
        now = reload_count(daemon, result).await;
        now > before
    })
    .await;
    assert!(
        reached,
        "no {result} reload within {RELOAD_TIMEOUT:?} (count {now}); log:\n{}",
        daemon.stderr()
    );
}

/// Waits until the daemon watches its directory and `subdirectories` of it. The
/// daemon sends `READY=1` before its watches are in place, and a change made before
/// then is never seen (`reload_change_right_after_ready` covers that case).
pub async fn wait_watching(daemon: &Daemon, subdirectories: &[&str]) {
    let mut directories = vec![daemon.dir().to_owned()];
    directories.extend(subdirectories.iter().map(|name| daemon.path(name)));
    let directories: Vec<&Path> = directories.iter().map(|path| path.as_path()).collect();
    procfs::wait_watching(daemon.pid().as_raw(), &directories).await;
}
