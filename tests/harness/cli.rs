//! Runs one-shot `rtask` subcommands (`add-key`, `check-config`, an invalid
//! `run`, ...) with a clean environment and a time limit.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

/// Time a one-shot command may take before it is killed and the test fails.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Variables that would change which files or sockets `rtask` uses, removed from
/// every command so the test process's own environment cannot leak in.
const SCRUBBED_VARIABLES: &[&str] = &[
    "RTASK_CONFIG",
    "RTASK_API_KEYS_FILE",
    "LOG_FORMAT",
    "RUST_LOG",
    "RUST_BACKTRACE",
    "JOURNAL_STREAM",
    "NOTIFY_SOCKET",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
];

/// Builds a `Command` for the `rtask` binary that runs in `dir`, with a clean environment
/// and text logs on stderr.
#[expect(
    clippy::disallowed_methods,
    reason = "the harness starts the binary under test, not a task process"
)]
pub fn rtask_command(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rtask"));
    command.current_dir(dir);
    scrub_env(&mut command);
    command
}

/// Removes the variables that would redirect `rtask` and sets text logs at `info`.
pub fn scrub_env(command: &mut Command) {
    for name in SCRUBBED_VARIABLES {
        command.env_remove(name);
    }
    command.env("LOG_FORMAT", "text").env("RUST_LOG", "info");
}

/// Runs `command` to completion with stdin from /dev/null and returns its output.
/// Kills it and panics if it takes longer than 30 s.
pub fn run_command(mut command: Command) -> Output {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = command
        .spawn()
        .unwrap_or_else(|err| panic!("spawn {command:?}: {err}"));
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits in i32"));

    // wait_with_output reads both pipes to the end, so it needs its own thread to
    // allow a time limit.
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || sender.send(child.wait_with_output()));
    match receiver.recv_timeout(COMMAND_TIMEOUT) {
        Ok(output) => output.expect("wait for rtask command"),
        Err(_) => {
            let _ = signal::kill(pid, Signal::SIGKILL);
            let output = receiver.recv().expect("waiter thread").expect("wait");
            panic!(
                "{command:?} did not exit within {COMMAND_TIMEOUT:?}; stderr:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}

/// Runs `rtask ARGS` in `dir`.
pub fn run_rtask(dir: &Path, args: &[&str]) -> Output {
    let mut command = rtask_command(dir);
    command.args(args);
    run_command(command)
}

/// Standard output as text (lossy).
pub fn stdout_text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Standard error as text (lossy).
pub fn stderr_text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs `rtask --api-keys-file KEYS add-key NAME` and returns the new API key.
/// Panics with stderr when the command fails or prints no key.
pub fn add_key(dir: &Path, keys_file: &Path, name: &str) -> String {
    let keys_file = keys_file.to_str().expect("UTF-8 path");
    let output = run_rtask(dir, &["--api-keys-file", keys_file, "add-key", name]);
    assert!(
        output.status.success(),
        "add-key {name} failed with {}: {}",
        output.status,
        stderr_text(&output)
    );
    parse_api_key(&stdout_text(&output))
        .unwrap_or_else(|| panic!("add-key printed no `API-KEY: ` line: {output:?}"))
}

/// Extracts the key from the `API-KEY: <key>` line that `add-key` prints.
pub fn parse_api_key(stdout: &str) -> Option<String> {
    stdout
        .lines()
        .find_map(|line| line.strip_prefix("API-KEY: "))
        .map(|key| key.trim().to_owned())
}
