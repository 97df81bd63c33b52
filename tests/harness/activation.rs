//! Starts `rtask run` with any set of inherited sockets, the way systemd's socket
//! activation passes them: any socket type at fds 3, 4, ..., any `LISTEN_FDNAMES`,
//! and a `LISTEN_PID` that is the daemon's own or another process's. Tests that need
//! the usual TCP `api` + `metrics` pair use [`super::Daemon`] instead.
//!
//! The daemon is started through `sh -c 'export VAR=$$ ...; exec rtask ...'`, because
//! `exec` keeps the pid that `$$` names, and that pid is unknown before the fork.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

pub use super::fds::pass_listen_fds;
use super::{NotifyRecorder, START_TIMEOUT, add_key, parse_logged_address, scrub_env, stop_child};

/// Interval between checks while waiting for an exit or a log line.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// What `LISTEN_PID` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListenPid {
    /// The daemon's own pid, as systemd sets it.
    Daemon,
    /// Another process, so the sockets are not meant for the daemon.
    Other(u32),
}

/// Prepares the temporary directory, sockets and environment of an activated daemon.
#[derive(Debug)]
pub struct ActivatedBuilder {
    dir: TempDir,
    sockets: Vec<OwnedFd>,
    fd_names: Option<String>,
    listen_pid: ListenPid,
    run_args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    /// Variables the shell sets to the daemon's pid, such as `WATCHDOG_PID`.
    own_pid_variables: Vec<String>,
    /// A command that execs the daemon, such as `taskset -c 0`.
    wrapper: Vec<OsString>,
}

impl Default for ActivatedBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ActivatedBuilder {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("create temporary directory"),
            sockets: Vec::new(),
            fd_names: None,
            listen_pid: ListenPid::Daemon,
            run_args: Vec::new(),
            env: Vec::new(),
            own_pid_variables: Vec::new(),
            wrapper: Vec::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Absolute path of `name` inside the temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs `rtask add-key NAME` against the keys file and returns the API key.
    pub fn add_key(&self, name: &str) -> String {
        add_key(self.dir(), &self.path("keys.toml"), name)
    }

    /// Passes `socket` as the next fd (3, 4, ...).
    pub fn socket(mut self, socket: impl Into<OwnedFd>) -> Self {
        self.sockets.push(socket.into());
        self
    }

    /// Sets `LISTEN_FDNAMES`. Without this call the variable is not set at all.
    pub fn fd_names(mut self, names: &str) -> Self {
        self.fd_names = Some(names.to_owned());
        self
    }

    /// Sets `LISTEN_PID` to `pid` instead of the daemon's pid.
    pub fn listen_pid_of(mut self, pid: u32) -> Self {
        self.listen_pid = ListenPid::Other(pid);
        self
    }

    /// Appends an argument after `run`.
    pub fn run_arg(mut self, arg: impl Into<OsString>) -> Self {
        self.run_args.push(arg.into());
        self
    }

    /// Sets an environment variable for the daemon.
    pub fn env(mut self, name: &str, value: impl Into<OsString>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    /// Sets `name` to the daemon's own pid.
    pub fn env_daemon_pid(mut self, name: &str) -> Self {
        self.own_pid_variables.push(name.to_owned());
        self
    }

    /// Runs the daemon through `wrapper`, a command that must exec its arguments in the
    /// same process (as `taskset` and `nice` do), so the pid stays the daemon's.
    pub fn wrapper(mut self, wrapper: &[&str]) -> Self {
        self.wrapper = wrapper.iter().map(OsString::from).collect();
        self
    }

    /// Starts the daemon as [`ActivatedBuilder::spawn`] does and waits for `READY=1`.
    pub async fn start(self, config: &str) -> Activated {
        let mut daemon = self.spawn(config);
        daemon.wait_for_notify("READY=1", START_TIMEOUT).await;
        daemon
    }

    /// Writes `config` to `config.toml`, binds the notify socket and starts the
    /// daemon. Does not wait for it: the test decides what to wait for.
    #[expect(
        clippy::disallowed_methods,
        reason = "the test starts the daemon under test through sh"
    )]
    pub fn spawn(self, config: &str) -> Activated {
        let config_path = self.path("config.toml");
        fs::write(&config_path, config).expect("write config.toml");
        let notify = NotifyRecorder::bind(&self.path("notify.sock"));
        // Outside the watched config directory, as in the plain harness.
        fs::create_dir_all(self.path("logs")).expect("create the logs directory");
        let stderr_path = self.path("logs/daemon.stderr");
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_path)
            .expect("open daemon.stderr");
        let stdout = File::create(self.path("logs/daemon.stdout")).expect("create daemon.stdout");

        let mut exports: Vec<String> = self
            .own_pid_variables
            .iter()
            .map(|name| format!("{name}=$$"))
            .collect();
        if !self.sockets.is_empty() && self.listen_pid == ListenPid::Daemon {
            exports.push("LISTEN_PID=$$".to_owned());
        }
        let script = if exports.is_empty() {
            r#"exec "$@""#.to_owned()
        } else {
            format!(r#"export {}; exec "$@""#, exports.join(" "))
        };

        let mut command = Command::new("sh");
        scrub_env(&mut command);
        command
            .current_dir(self.dir())
            .arg("-c")
            .arg(script)
            .arg("sh")
            .args(&self.wrapper)
            .arg(env!("CARGO_BIN_EXE_rtask"))
            .arg("--config")
            .arg(&config_path)
            .arg("--api-keys-file")
            .arg(self.path("keys.toml"))
            .arg("run")
            .args(&self.run_args)
            .env("NOTIFY_SOCKET", notify.path())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        if !self.sockets.is_empty() {
            command.env("LISTEN_FDS", self.sockets.len().to_string());
            if let ListenPid::Other(pid) = self.listen_pid {
                command.env("LISTEN_PID", pid.to_string());
            }
        }
        if let Some(names) = &self.fd_names {
            command.env("LISTEN_FDNAMES", names);
        }
        command.envs(self.env.iter().map(|(name, value)| (name, value)));
        pass_listen_fds(
            &mut command,
            self.sockets.iter().map(AsRawFd::as_raw_fd).collect(),
        );
        let child = command
            .spawn()
            .unwrap_or_else(|err| panic!("spawn {command:?}: {err}"));

        Activated {
            dir: self.dir,
            _sockets: self.sockets,
            child: Some(child),
            exit_status: None,
            notify,
            stderr_path,
        }
    }
}

/// A daemon started by [`ActivatedBuilder`]. Dropping it stops the daemon (SIGTERM,
/// then SIGKILL after 15 s) and removes the directory.
#[derive(Debug)]
pub struct Activated {
    dir: TempDir,
    /// The test's copies of the passed sockets, kept open as systemd keeps its own.
    _sockets: Vec<OwnedFd>,
    child: Option<Child>,
    exit_status: Option<ExitStatus>,
    notify: NotifyRecorder,
    stderr_path: PathBuf,
}

impl Activated {
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// PID of the daemon (the `sh` that exec'd it keeps its pid).
    pub fn pid(&self) -> i32 {
        let child = self.child.as_ref().expect("daemon was started");
        i32::try_from(child.id()).expect("pid fits in i32")
    }

    /// Everything the daemon wrote to stderr.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn notify(&self) -> &NotifyRecorder {
        &self.notify
    }

    pub fn signal(&self, signal: Signal) {
        signal::kill(Pid::from_raw(self.pid()), signal).expect("signal daemon");
    }

    /// Returns the exit status if the daemon has exited (reaping it), else `None`.
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        if self.exit_status.is_none() {
            let child = self.child.as_mut()?;
            self.exit_status = child.try_wait().expect("check daemon status");
        }
        self.exit_status
    }

    /// Waits for the daemon to exit. Panics with its stderr after `timeout`.
    pub async fn wait_for_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit_status() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not exit within {timeout:?}; stderr:\n{}",
                self.stderr()
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Waits for an sd_notify datagram with a line matching `expected` (see
    /// [`NotifyRecorder::take_match`]) and returns the datagram. Panics with the
    /// daemon's stderr on timeout, or when the daemon exited without sending it.
    pub async fn wait_for_notify(&mut self, expected: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(message) = self.notify.take_match(expected) {
                return message;
            }
            if let Some(status) = self.try_exit_status() {
                // What the daemon sent before it exited is queued on the socket.
                while self.notify.receive(Duration::from_millis(100)).await {}
                if let Some(message) = self.notify.take_match(expected) {
                    return message;
                }
                panic!(
                    "daemon exited with {status} before sending {expected:?}; \
                     notifications {:?}; stderr:\n{}",
                    self.notify.messages(),
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {expected:?} within {timeout:?}; notifications {:?}; stderr:\n{}",
                self.notify.messages(),
                self.stderr()
            );
            self.notify.receive(Duration::from_millis(50)).await;
        }
    }

    /// Collects every sd_notify datagram that arrives within `window`.
    pub async fn collect_notifications(&mut self, window: Duration) {
        let deadline = Instant::now() + window;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            self.notify.receive(left).await;
        }
    }

    /// Returns the first stderr line that contains every one of `fragments`, waiting up
    /// to `timeout` for it. Panics with the whole stderr on timeout.
    pub async fn wait_for_log(&mut self, fragments: &[&str], timeout: Duration) -> String {
        let description = format!("{fragments:?}");
        self.wait_for_log_line(&description, timeout, |line| {
            fragments.iter().all(|fragment| line.contains(fragment))
        })
        .await
    }

    /// Returns the first stderr line for which `matches` is true, waiting up to
    /// `timeout` for it. Panics with `description` and the whole stderr on timeout.
    pub async fn wait_for_log_line(
        &mut self,
        description: &str,
        timeout: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let stderr = self.stderr();
            if let Some(line) = stderr.lines().find(|line| matches(line)) {
                return line.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {description} within {timeout:?}; stderr:\n{stderr}"
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Returns the address on the `listening` line of `socket` (`api` or `metrics`).
    pub async fn logged_address(&mut self, socket: &str) -> SocketAddr {
        let line = self
            .wait_for_log_line(
                &format!("`listening` for socket {socket}"),
                Duration::from_secs(10),
                |line| line.contains("listening") && has_field(line, "socket", socket),
            )
            .await;
        parse_logged_address(&line)
            .unwrap_or_else(|| panic!("no `address=IP:PORT` in log line: {line}"))
    }
}

/// Reports whether a text log line has the field `name=value`, with or without the
/// quotes the text format puts around string values.
pub fn has_field(line: &str, name: &str, value: &str) -> bool {
    let bare = format!("{name}={value}");
    let quoted = format!("{name}=\"{value}\"");
    line.split_whitespace()
        .any(|word| word == bare || word == quoted)
}

impl Drop for Activated {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- daemon stderr ---\n{}--- end ---", self.stderr());
        }
        if let Some(child) = self.child.take()
            && self.exit_status.is_none()
        {
            stop_child(child);
        }
    }
}
