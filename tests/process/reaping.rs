//! Reaping and start failures: many short runs whose background children become the
//! daemon's orphans leave no zombies, and a command or workdir that does not exist
//! gives `failure` with exit code -2.

use super::Fixture;
use crate::harness::{poll_until, procfs, secs, wait_until};

/// Runs of the short task, four at a time.
const RUNS: usize = 200;

#[tokio::test]
async fn reaping_no_zombies_after_200_runs() {
    let fixture = Fixture::start(
        r#"
[tasks.short]
command = ["sh", "-c", "sleep 0.01 & echo ok"]
apiKeyNames = ["ci"]
environment = {env}
"#,
    )
    .await;
    let daemon = &fixture.daemon;
    let post = || daemon.post_task("short", &fixture.key, "");

    let mut failures = Vec::new();
    for _ in 0..RUNS / 4 {
        let (a, b, c, d) = tokio::join!(post(), post(), post(), post());
        for reply in [a, b, c, d] {
            let ok = reply.status == 200 && reply.json()["status"] == "success";
            if !ok {
                failures.push(reply.text());
            }
        }
    }
    let pid = daemon.pid().as_raw();
    let mut zombies = Vec::new();
    let reaped = poll_until(secs(2.0), async || {
        zombies = procfs::zombie_children(pid);
        zombies.is_empty()
    })
    .await;

    assert_eq!(failures, Vec::<String>::new());
    assert!(reaped, "zombie children of the daemon: {zombies:?}");
    wait_until("no task process left", secs(2.0), async || {
        fixture.processes().is_empty()
    })
    .await;
}

#[tokio::test]
async fn spawn_missing_command_fails() {
    let fixture = Fixture::start(
        r#"
[tasks.missing]
command = ["/nonexistent/rtask-no-such-program", "arg"]
apiKeyNames = ["ci"]
"#,
    )
    .await;

    let reply = fixture.daemon.post_task("missing", &fixture.key, "").await;

    assert_eq!(reply.status, 200, "{}", reply.text());
    let result = reply.json();
    assert_eq!(result["status"], "failure");
    assert_eq!(result["exit_code"], -2);
    let stderr = result["stderr"].as_str().expect("stderr is a string");
    assert!(
        stderr.contains("rtask-no-such-program"),
        "stderr {stderr:?}"
    );
}

#[tokio::test]
async fn spawn_missing_workdir_fails() {
    let fixture = Fixture::start(
        r#"
[tasks.nowhere]
command = ["pwd"]
workdir = "/nonexistent/rtask-no-such-dir"
apiKeyNames = ["ci"]
"#,
    )
    .await;

    let reply = fixture.daemon.post_task("nowhere", &fixture.key, "").await;

    assert_eq!(reply.status, 200, "{}", reply.text());
    let result = reply.json();
    assert_eq!(result["status"], "failure");
    assert_eq!(result["exit_code"], -2);
    let stderr = result["stderr"].as_str().expect("stderr is a string");
    assert!(stderr.contains("rtask-no-such-dir"), "stderr {stderr:?}");
}
