//! Processes a task starts besides its main process: background jobs, processes that
//! ignore SIGTERM, processes that left the task's session, and background jobs that
//! keep the output pipe open after the main process exited.

use std::collections::BTreeSet;
use std::time::Instant;

use super::Fixture;
use crate::harness::secs;

#[tokio::test]
async fn leftovers_background_jobs_killed_on_timeout() {
    let fixture = Fixture::start(
        r#"
[tasks.spawner]
command = ["sh", "-c", "sleep 300 & sleep 300 & sleep 300"]
apiKeyNames = ["ci"]
executionTimeoutSeconds = 1
killGraceSeconds = 1
environment = {env}
"#,
    )
    .await;

    let (reply, ()) = tokio::join!(
        fixture.daemon.post_task("spawner", &fixture.key, ""),
        // sh and its three sleeps.
        fixture.wait_for_processes(4),
    );

    assert_eq!(reply.status, 200, "{}", reply.text());
    let result = reply.json();
    assert_eq!(result["status"], "timeout");
    assert_eq!(result["exit_code"], -1);
    assert_eq!(fixture.processes(), []);
}

#[tokio::test]
async fn leftovers_term_ignored_killed_after_grace() {
    let fixture = Fixture::start(
        r#"
[tasks.stubborn]
command = ["sh", "-c", "trap '' TERM; sleep 300"]
apiKeyNames = ["ci"]
executionTimeoutSeconds = 1
killGraceSeconds = 2
environment = {env}
"#,
    )
    .await;

    let started = Instant::now();
    let reply = fixture.daemon.post_task("stubborn", &fixture.key, "").await;
    let elapsed = started.elapsed();

    assert_eq!(reply.status, 200, "{}", reply.text());
    let result = reply.json();
    assert_eq!(result["status"], "timeout");
    assert_eq!(result["exit_code"], -1);
    // SIGTERM at 1 s is ignored, so SIGKILL follows 2 s later.
    assert!(elapsed >= secs(2.9), "answered after {elapsed:?}");
    assert!(elapsed < secs(6.0), "answered after {elapsed:?}");
    assert_eq!(fixture.processes(), []);
}

#[tokio::test]
async fn leftovers_setsid_escapee_killed() {
    let fixture = Fixture::start(
        r#"
[tasks.escaper]
command = ["sh", "-c", "( setsid sh -c 'sleep 300' & ); sleep 300"]
apiKeyNames = ["ci"]
executionTimeoutSeconds = 2
killGraceSeconds = 1
environment = {env}
"#,
    )
    .await;

    let mut sessions = BTreeSet::new();
    let (reply, ()) = tokio::join!(
        fixture.daemon.post_task("escaper", &fixture.key, ""),
        crate::harness::wait_until(
            "a task process in a session of its own",
            super::SPAWN_TIMEOUT,
            async || {
                sessions = fixture
                    .processes()
                    .iter()
                    .map(|process| process.session)
                    .collect();
                sessions.len() >= 2
            }
        ),
    );

    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["status"], "timeout");
    assert!(sessions.len() >= 2, "sessions {sessions:?}");
    assert_eq!(fixture.processes(), []);
}

#[tokio::test]
async fn leftovers_early_exit_pipe_holder_killed() {
    let fixture = Fixture::start(
        r#"
[tasks.quitter]
command = ["sh", "-c", "sleep 300 & echo started; exit 0"]
apiKeyNames = ["ci"]
environment = {env}
"#,
    )
    .await;

    let started = Instant::now();
    let reply = fixture.daemon.post_task("quitter", &fixture.key, "").await;
    let elapsed = started.elapsed();

    assert_eq!(reply.status, 200, "{}", reply.text());
    let result = reply.json();
    assert_eq!(result["status"], "success");
    assert_eq!(result["exit_code"], 0);
    assert_eq!(result["stdout"], "started\n");
    assert!(elapsed < secs(2.0), "answered after {elapsed:?}");
    assert_eq!(fixture.processes(), []);
}
