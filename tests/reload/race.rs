//! A change made as soon as the daemon sent `READY=1`, as a script that starts the
//! service and then runs `rtask add-key` makes it.
//!
//! The daemon sets up its inotify watches in a task of its own. To make that task late
//! on purpose, the daemon runs under CPU contention (see `harness::contention`) while
//! the test writes right after `READY=1`, five times over.

use std::net::TcpListener;

use super::{KEY_NAME, RELOAD_TIMEOUT, replace_file, version_config};
use crate::harness::activation::ActivatedBuilder;
use crate::harness::contention::{CpuHog, pin_to_cpu0};
use crate::harness::raw_http::{request_bytes, tcp_request};
use crate::harness::{poll_until, procfs};

/// Daemons started, each of which must load its change.
const ATTEMPTS: usize = 5;

/// Starts a daemon, replaces its configuration right after `READY=1` and checks that
/// the change is loaded.
async fn check_change_after_ready(attempt: usize) {
    let api = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let api_addr = api.local_addr().expect("listener address");
    let metrics = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let mut builder = ActivatedBuilder::new();
    let key = builder.add_key(KEY_NAME);
    if let Some(pin) = pin_to_cpu0() {
        builder = builder.wrapper(&pin);
    }
    let hog = CpuHog::start();
    let daemon = builder
        .socket(api)
        .socket(metrics)
        .fd_names("api:metrics")
        .start(&version_config("v1"))
        .await;

    let watched_at_write = procfs::inotify_watched_inodes(daemon.pid());
    replace_file(&daemon.path("config.toml"), &version_config("v2"));
    drop(hog);

    let mut last = String::new();
    let reloaded = poll_until(RELOAD_TIMEOUT, async || {
        // 404 until the change is in force, and a 404 logs nothing.
        let request = request_bytes("POST", "/tasks/task-v2", Some(&key), b"");
        let reply = tcp_request(api_addr, request).await;
        last = format!("HTTP {} {}", reply.status, reply.text());
        reply.status == 200 && reply.json()["stdout"] == "v2\n"
    })
    .await;
    assert!(
        reloaded,
        "attempt {attempt}: change not loaded within {RELOAD_TIMEOUT:?} (inotify watches \
         at the write: {watched_at_write:?}); last reply {last}; log:\n{}",
        daemon.stderr()
    );
}

#[tokio::test]
async fn reload_change_right_after_ready() {
    if pin_to_cpu0().is_none() {
        eprintln!("taskset is missing: checking without CPU contention, which rarely races");
    }
    for attempt in 1..=ATTEMPTS {
        check_change_after_ready(attempt).await;
    }
}
