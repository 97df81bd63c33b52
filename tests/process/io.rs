//! Bounded output and unread input: a task that writes far more than
//! `maxOutputBytes` must neither block nor grow the daemon's memory, and a task that
//! never reads its stdin must not hang the request.

use std::time::{Duration, Instant};

use super::Fixture;
use crate::harness::{Daemon, procfs, secs};

/// Headroom over the baseline resident size that 50 MiB of discarded output may cost.
const RSS_HEADROOM: u64 = 64 * 1024 * 1024;

#[tokio::test]
async fn output_flood_truncated_memory_bounded() {
    let fixture = Fixture::start(
        r#"
[tasks.flood]
command = ["sh", "-c", "yes | head -c 52428800"]
apiKeyNames = ["ci"]
maxOutputBytes = 1024

[tasks.echo]
command = ["cat"]
apiKeyNames = ["ci"]
"#,
    )
    .await;
    let daemon = &fixture.daemon;
    let pid = daemon.pid().as_raw();
    // One run first, so the baseline includes what every run allocates once.
    daemon.post_task("echo", &fixture.key, "warm-up").await;
    let baseline = procfs::vm_rss_bytes(pid);

    let mut peak = baseline;
    let reply = {
        let request = daemon.post_task("flood", &fixture.key, "");
        tokio::pin!(request);
        loop {
            tokio::select! {
                reply = &mut request => break reply,
                () = tokio::time::sleep(Duration::from_millis(20)) => {
                    peak = peak.max(procfs::vm_rss_bytes(pid));
                }
            }
        }
    };
    peak = peak.max(procfs::vm_rss_bytes(pid));

    assert_eq!(reply.status, 200, "{}", reply.text());
    let result = reply.json();
    assert_eq!(result["status"], "success", "the writer was not drained");
    let stdout = result["stdout"].as_str().expect("stdout is a string");
    assert_eq!(stdout.len(), 1024);
    assert_eq!(result["stdout_truncated"], true);
    assert!(
        peak < baseline + RSS_HEADROOM,
        "VmRSS grew from {baseline} to {peak} bytes"
    );
}

/// Posts 1 MiB to `task`, whose command never reads stdin, and checks that the run
/// ends with `success` within `limit`.
async fn check_unread_input(daemon: &Daemon, key: &str, task: &str, limit: Duration) {
    let body = "x".repeat(1024 * 1024);

    let started = Instant::now();
    let reply = daemon.post_task(task, key, &body).await;
    let elapsed = started.elapsed();

    assert_eq!(reply.status, 200, "{task}: {}", reply.text());
    assert_eq!(
        reply.json()["status"],
        "success",
        "{task}: {}",
        reply.text()
    );
    assert!(elapsed < limit, "{task} answered after {elapsed:?}");
}

#[tokio::test]
async fn input_unread_by_sleeper_no_hang() {
    let fixture = Fixture::start(
        r#"
[tasks.sleeper]
command = ["sleep", "1"]
apiKeyNames = ["ci"]
maxInputBytes = 2097152
"#,
    )
    .await;

    check_unread_input(&fixture.daemon, &fixture.key, "sleeper", secs(5.0)).await;
}

#[tokio::test]
async fn input_unread_by_quitter_no_hang() {
    let fixture = Fixture::start(
        r#"
[tasks.quitter]
command = ["true"]
apiKeyNames = ["ci"]
maxInputBytes = 2097152
"#,
    )
    .await;

    check_unread_input(&fixture.daemon, &fixture.key, "quitter", secs(3.0)).await;
}
