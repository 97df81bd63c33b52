//! `sd_notify` datagrams on a test-owned `NOTIFY_SOCKET`: `READY=1` with `STATUS=`,
//! `RELOADING=1` with `MONOTONIC_USEC=` on SIGHUP, `STOPPING=1`, and `WATCHDOG=1`.

use std::time::Duration;

use nix::sys::signal::Signal;
use sd_notify::NotifyState;

use super::{ECHO_CONFIG, KEY_NAME, tcp_listener};
use crate::harness::activation::ActivatedBuilder;
use crate::harness::{DaemonBuilder, procfs, secs};

/// Time allowed for a reload or a stop to be announced.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(10);

/// Returns the value of the `NAME=` line of a datagram.
fn field<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    let prefix = format!("{name}=");
    message
        .lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
}

/// Returns the current `CLOCK_MONOTONIC` time in microseconds, the clock of
/// `MONOTONIC_USEC=`.
fn monotonic_usec() -> i128 {
    let now = NotifyState::monotonic_usec_now().expect("read CLOCK_MONOTONIC");
    let text = now.to_string();
    let value = text
        .strip_prefix("MONOTONIC_USEC=")
        .unwrap_or_else(|| panic!("unexpected state {text}"));
    value.parse().expect("MONOTONIC_USEC is a number")
}

/// Names the state a datagram announces, ignoring `WATCHDOG=1` pings.
fn state_of(message: &str) -> Option<&'static str> {
    ["READY=1", "RELOADING=1", "STOPPING=1"]
        .into_iter()
        .find(|state| message.lines().any(|line| line == *state))
}

fn count_watchdog(messages: &[String]) -> usize {
    messages
        .iter()
        .filter(|message| message.lines().any(|line| line == "WATCHDOG=1"))
        .count()
}

#[tokio::test]
async fn notify_ready_first_with_status() {
    let builder = DaemonBuilder::new();
    builder.add_key(KEY_NAME);
    let daemon = builder.start(ECHO_CONFIG).await;

    let first = daemon.notify().messages()[0].clone();
    assert!(first.lines().any(|line| line == "READY=1"), "{first:?}");
    let status = field(&first, "STATUS").unwrap_or_else(|| panic!("no STATUS= in {first:?}"));
    assert!(status.starts_with("1 task, 1 key"), "STATUS={status}");
}

#[tokio::test]
async fn notify_sighup_reloading_then_ready() {
    let builder = DaemonBuilder::new();
    builder.add_key(KEY_NAME);
    let mut daemon = builder.start(ECHO_CONFIG).await;
    procfs::wait_catches_signal(daemon.pid().as_raw(), Signal::SIGHUP).await;

    let before = monotonic_usec();
    daemon.signal(Signal::SIGHUP);
    let reloading = daemon.wait_for_notify("RELOADING=1", NOTIFY_TIMEOUT).await;
    let after = monotonic_usec();
    let ready = daemon.wait_for_notify("READY=1", NOTIFY_TIMEOUT).await;

    let stamp: i128 = field(&reloading, "MONOTONIC_USEC")
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC= with RELOADING=1: {reloading:?}"))
        .parse()
        .expect("MONOTONIC_USEC is a number");
    assert!(
        stamp >= before,
        "MONOTONIC_USEC {stamp} before SIGHUP at {before}"
    );
    assert!(
        stamp <= after,
        "MONOTONIC_USEC {stamp} after receipt at {after}"
    );
    let status = field(&ready, "STATUS").unwrap_or_else(|| panic!("no STATUS= in {ready:?}"));
    assert_eq!(status, "1 task, 1 key; last reload ok");
}

/// A service manager may send SIGHUP as soon as `READY=1` arrives, so the handler must
/// be in place by then. Five daemons in a row make a handler installed late show.
#[tokio::test]
async fn notify_sighup_right_after_ready() {
    for attempt in 1..=5 {
        let mut daemon = DaemonBuilder::new().start(ECHO_CONFIG).await;

        daemon.signal(Signal::SIGHUP);

        daemon.wait_for_notify("RELOADING=1", NOTIFY_TIMEOUT).await;
        daemon.wait_for_notify("READY=1", NOTIFY_TIMEOUT).await;
        assert_eq!(daemon.try_exit_status(), None, "attempt {attempt}");
    }
}

#[tokio::test]
async fn notify_stopping_on_sigterm() {
    let mut daemon = DaemonBuilder::new().start(ECHO_CONFIG).await;

    let status = daemon.stop();

    assert_eq!(status.code(), Some(0));
    daemon.wait_for_notify("STOPPING=1", NOTIFY_TIMEOUT).await;
}

#[tokio::test]
async fn notify_stopping_on_sigint() {
    let mut daemon = ActivatedBuilder::new()
        .socket(tcp_listener())
        .socket(tcp_listener())
        .fd_names("api:metrics")
        .start(ECHO_CONFIG)
        .await;

    daemon.signal(Signal::SIGINT);
    let status = daemon.wait_for_exit(secs(15.0)).await;

    assert_eq!(status.code(), Some(0));
    daemon.wait_for_notify("STOPPING=1", NOTIFY_TIMEOUT).await;
}

#[tokio::test]
async fn notify_order_start_reload_stop() {
    let mut daemon = DaemonBuilder::new().start(ECHO_CONFIG).await;
    procfs::wait_catches_signal(daemon.pid().as_raw(), Signal::SIGHUP).await;
    daemon.signal(Signal::SIGHUP);
    daemon.wait_for_notify("RELOADING=1", NOTIFY_TIMEOUT).await;
    daemon.wait_for_notify("READY=1", NOTIFY_TIMEOUT).await;

    let status = daemon.stop();
    daemon.wait_for_notify("STOPPING=1", NOTIFY_TIMEOUT).await;

    assert_eq!(status.code(), Some(0));
    let states: Vec<Option<&str>> = daemon
        .notify()
        .messages()
        .iter()
        .map(|message| state_of(message))
        .collect();
    assert_eq!(
        states,
        [
            Some("READY=1"),
            Some("RELOADING=1"),
            Some("READY=1"),
            Some("STOPPING=1")
        ]
    );
}

#[tokio::test]
async fn notify_watchdog_without_pid() {
    let mut daemon = DaemonBuilder::new()
        .env("WATCHDOG_USEC", "200000")
        .start(ECHO_CONFIG)
        .await;

    // Pings come every 100 ms, so three of them prove a repeating timer.
    for _ in 0..3 {
        daemon.wait_for_notify("WATCHDOG=1", secs(2.0)).await;
    }
}

#[tokio::test]
async fn notify_watchdog_with_own_pid() {
    let mut daemon = ActivatedBuilder::new()
        .env("WATCHDOG_USEC", "200000")
        .env_daemon_pid("WATCHDOG_PID")
        .run_arg("--api-address")
        .run_arg("127.0.0.1:0")
        .run_arg("--metrics-address")
        .run_arg("127.0.0.1:0")
        .start(ECHO_CONFIG)
        .await;

    for _ in 0..3 {
        daemon.wait_for_notify("WATCHDOG=1", secs(2.0)).await;
    }
}

#[tokio::test]
async fn notify_watchdog_other_pid_silent() {
    let mut daemon = ActivatedBuilder::new()
        .env("WATCHDOG_USEC", "200000")
        .env("WATCHDOG_PID", std::process::id().to_string())
        .run_arg("--api-address")
        .run_arg("127.0.0.1:0")
        .run_arg("--metrics-address")
        .run_arg("127.0.0.1:0")
        .start(ECHO_CONFIG)
        .await;

    // Absence cannot be awaited: watch for five ping intervals.
    daemon
        .collect_notifications(Duration::from_millis(500))
        .await;

    assert_eq!(count_watchdog(daemon.notify().messages()), 0);
    assert!(!daemon.stderr().contains("sending watchdog pings"));
}
