//! Reads the process table from `/proc`: which processes a task left behind, zombie
//! children of the daemon, the daemon's resident memory and its listening sockets.
//!
//! Tests find a task's processes by a marker variable in their environment: the task's
//! `environment` table sets it, and every process the task starts inherits it, also
//! after `setsid` or a double fork.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

/// Name of the environment variable that tests set to a [`unique_marker`] in a task's
/// `environment` table.
pub const MARKER_VARIABLE: &str = "RTASK_TEST_MARKER";

/// One line of `/proc/PID/stat`, the fields tests need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessStat {
    pub pid: i32,
    /// Single-letter state: `R`, `S`, `D`, `Z`, `T`, ...
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    pub session: i32,
}

/// Returns a string no other test in any process uses at the same time.
pub fn unique_marker() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.subsec_nanos());
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("m{}x{count}x{nanos}", std::process::id())
}

/// Returns the TOML inline table `{ RTASK_TEST_MARKER = "MARKER" }` for a task's
/// `environment` key.
pub fn marker_environment(marker: &str) -> String {
    format!(r#"{{ {MARKER_VARIABLE} = "{marker}" }}"#)
}

/// Lists the pids in `/proc`.
pub fn pids() -> Vec<i32> {
    let entries = fs::read_dir("/proc").expect("read /proc");
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect()
}

/// Reads `/proc/PID/stat`. Returns `None` when the process is gone.
pub fn stat(pid: i32) -> Option<ProcessStat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Parses a `/proc/PID/stat` line. The command name is in parentheses and may contain
/// spaces and parentheses itself, so the fields after it start at the last `)`.
fn parse_stat(text: &str) -> Option<ProcessStat> {
    let (head, rest) = text.rsplit_once(')')?;
    let pid = head.split_whitespace().next()?.parse().ok()?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    let session = fields.next()?.parse().ok()?;
    Some(ProcessStat {
        pid,
        state,
        ppid,
        pgrp,
        session,
    })
}

/// Reports whether the environment of `pid` contains `NAME=VALUE`. A zombie or a
/// process that is gone has no readable environment.
pub fn has_env(pid: i32, name: &str, value: &str) -> bool {
    let Ok(environ) = fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let expected = format!("{name}={value}").into_bytes();
    environ
        .split(|byte| *byte == 0)
        .any(|entry| entry == expected)
}

/// Returns the live (non-zombie) processes whose environment contains `NAME=VALUE`.
pub fn with_env(name: &str, value: &str) -> Vec<ProcessStat> {
    pids()
        .into_iter()
        .filter(|pid| has_env(*pid, name, value))
        .filter_map(stat)
        .filter(|process| process.state != 'Z')
        .collect()
}

/// Returns the live processes that carry `RTASK_TEST_MARKER=marker`.
pub fn with_marker(marker: &str) -> Vec<ProcessStat> {
    with_env(MARKER_VARIABLE, marker)
}

/// Kills with SIGKILL, when dropped, every process that still carries a marker, so
/// that a test that fails because the daemon left processes behind does not leave
/// them running after the test.
#[derive(Debug)]
pub struct MarkerGuard {
    marker: String,
}

impl MarkerGuard {
    pub fn new(marker: &str) -> Self {
        Self {
            marker: marker.to_owned(),
        }
    }
}

impl Drop for MarkerGuard {
    fn drop(&mut self) {
        for process in with_marker(&self.marker) {
            let _ = signal::kill(Pid::from_raw(process.pid), Signal::SIGKILL);
        }
    }
}

/// Returns the zombie children of `parent`.
pub fn zombie_children(parent: i32) -> Vec<ProcessStat> {
    pids()
        .into_iter()
        .filter_map(stat)
        .filter(|process| process.ppid == parent && process.state == 'Z')
        .collect()
}

/// Returns `VmRSS` of `pid` in bytes. Panics when the process is gone.
pub fn vm_rss_bytes(pid: i32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|err| panic!("read /proc/{pid}/status: {err}"));
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .unwrap_or_else(|| panic!("no VmRSS line in /proc/{pid}/status:\n{status}"));
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("malformed VmRSS line: {line}"));
    kib * 1024
}

/// Reports whether `pid` has installed a handler for `signal`, from the `SigCgt` mask
/// in `/proc/PID/status`. Panics when the process is gone.
pub fn catches_signal(pid: i32, signal: Signal) -> bool {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|err| panic!("read /proc/{pid}/status: {err}"));
    let mask = status
        .lines()
        .find_map(|line| line.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .unwrap_or_else(|| panic!("no SigCgt line in /proc/{pid}/status:\n{status}"));
    // Bit N-1 is signal number N.
    mask & (1 << (signal as i32 - 1)) != 0
}

/// Waits up to 10 s until `pid` catches `signal`, for a test that must not race the
/// daemon's handler setup.
pub async fn wait_catches_signal(pid: i32, signal: Signal) {
    super::wait_until(
        &format!("process {pid} catches {signal}"),
        std::time::Duration::from_secs(10),
        async || catches_signal(pid, signal),
    )
    .await;
}

/// Returns the inodes that the inotify instances of `pid` watch, from the
/// `inotify wd:N ino:HEX ...` lines in `/proc/PID/fdinfo`.
pub fn inotify_watched_inodes(pid: i32) -> BTreeSet<u64> {
    let Ok(entries) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return BTreeSet::new();
    };
    let mut inodes = BTreeSet::new();
    for entry in entries.flatten() {
        let is_inotify = fs::read_link(entry.path())
            .is_ok_and(|target| target.to_str() == Some("anon_inode:inotify"));
        if !is_inotify {
            continue;
        }
        let info_path = format!("/proc/{pid}/fdinfo/{}", entry.file_name().to_string_lossy());
        let Ok(info) = fs::read_to_string(info_path) else {
            continue;
        };
        for line in info.lines().filter(|line| line.starts_with("inotify ")) {
            let inode = line
                .split_whitespace()
                .find_map(|field| field.strip_prefix("ino:"))
                .and_then(|hex| u64::from_str_radix(hex, 16).ok());
            inodes.extend(inode);
        }
    }
    inodes
}

/// Waits up to 10 s until `pid` has an inotify watch on each of `directories`, so that
/// a test changes files only once the daemon can see the change.
pub async fn wait_watching(pid: i32, directories: &[&Path]) {
    let inodes: Vec<u64> = directories
        .iter()
        .map(|directory| {
            fs::metadata(directory)
                .unwrap_or_else(|err| panic!("stat {}: {err}", directory.display()))
                .ino()
        })
        .collect();
    super::wait_until(
        &format!("process {pid} watches {directories:?}"),
        std::time::Duration::from_secs(10),
        async || {
            let watched = inotify_watched_inodes(pid);
            inodes.iter().all(|inode| watched.contains(inode))
        },
    )
    .await;
}

/// Returns the inodes of the sockets that `pid` has open, from the `socket:[INODE]`
/// links in `/proc/PID/fd`.
pub fn socket_inodes(pid: i32) -> BTreeSet<u64> {
    let entries = fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|err| panic!("read /proc/{pid}/fd: {err}"));
    entries
        .flatten()
        .filter_map(|entry| fs::read_link(entry.path()).ok())
        .filter_map(|target| {
            let target = target.to_str()?;
            target
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// Returns the inodes of all listening TCP (IPv4 and IPv6) and unix stream sockets in
/// the network namespace of `pid`.
pub fn listening_socket_inodes(pid: i32) -> BTreeSet<u64> {
    let mut inodes = BTreeSet::new();
    for table in ["tcp", "tcp6"] {
        let path = format!("/proc/{pid}/net/{table}");
        let text = fs::read_to_string(&path).unwrap_or_else(|err| panic!("read {path}: {err}"));
        // Columns: sl local_address rem_address st ... uid timeout inode. State 0A is LISTEN.
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(3) == Some(&"0A")
                && let Some(inode) = fields.get(9).and_then(|inode| inode.parse().ok())
            {
                inodes.insert(inode);
            }
        }
    }
    let path = format!("/proc/{pid}/net/unix");
    let text = fs::read_to_string(&path).unwrap_or_else(|err| panic!("read {path}: {err}"));
    // Columns: Num RefCount Protocol Flags Type St Inode [Path]. Flag 00010000 is
    // __SO_ACCEPTCON (listening), type 0001 is SOCK_STREAM.
    for line in text.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let listening = fields.get(3) == Some(&"00010000");
        let stream = fields.get(4) == Some(&"0001");
        if listening
            && stream
            && let Some(inode) = fields.get(6).and_then(|inode| inode.parse().ok())
        {
            inodes.insert(inode);
        }
    }
    inodes
}

/// Returns how many listening stream sockets `pid` has open.
pub fn listening_socket_count(pid: i32) -> usize {
    let listening = listening_socket_inodes(pid);
    socket_inodes(pid).intersection(&listening).count()
}

#[test]
fn parse_stat_handles_parentheses_in_name() {
    let line = "4242 (a (b) c) S 17 4242 4240 0 -1 4194560 0 0";

    let parsed = parse_stat(line);

    assert_eq!(
        parsed,
        Some(ProcessStat {
            pid: 4242,
            state: 'S',
            ppid: 17,
            pgrp: 4242,
            session: 4240,
        })
    );
}

#[test]
fn marker_unique_per_call() {
    assert_ne!(unique_marker(), unique_marker());
}
