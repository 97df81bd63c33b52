//! Harness that starts the real `rtask` daemon the way systemd would: listening
//! sockets passed as fds 3 and 4, a fake `NOTIFY_SOCKET`, and its config, keys and
//! logs in a fresh temporary directory.
//!
//! Each test starts its own daemon on port-0 loopback sockets, so tests may run in
//! any order and in parallel. Waits poll for a condition instead of sleeping.

#![allow(dead_code, reason = "not every test module uses every helper")]

pub mod activation;
mod cli;
pub mod contention;
mod fds;
mod metrics;
mod notify;
pub mod procfs;
pub mod raw_http;

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use reqwest::{Client, Method, RequestBuilder};
use serde_json::Value;
use tempfile::TempDir;

pub use cli::{add_key, parse_api_key, rtask_command, run_command, run_rtask, scrub_env};
pub use cli::{stderr_text, stdout_text};
pub use metrics::Metrics;
pub use notify::NotifyRecorder;

/// Time the daemon may take from spawn to `READY=1`.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Time the daemon may take to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Interval between checks in [`wait_until`] and while waiting for an exit.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Time limit of one HTTP request, so a hung daemon fails the test.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Converts seconds to a `Duration`.
pub fn secs(seconds: f64) -> Duration {
    Duration::from_secs_f64(seconds)
}

/// Polls `condition` every 20 ms until it returns true. Panics with `what` when it
/// is still false after `timeout`.
pub async fn wait_until(what: &str, timeout: Duration, condition: impl AsyncFnMut() -> bool) {
    let reached = poll_until(timeout, condition).await;
    assert!(reached, "timed out after {timeout:?} waiting until {what}");
}

/// Polls `condition` every 20 ms until it returns true, for at most `timeout`.
/// Returns whether it became true, for callers that add their own context to
/// the failure.
pub async fn poll_until(timeout: Duration, mut condition: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// How the daemon gets its listening sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listen {
    /// The harness binds both sockets and passes them as fds 3 (`api`) and 4
    /// (`metrics`).
    Inherited,
    /// The daemon binds `--api-address 127.0.0.1:0 --metrics-address 127.0.0.1:0`
    /// itself and the harness reads the chosen ports from its log.
    Addresses,
}

/// Prepares a daemon's temporary directory, then starts it.
#[derive(Debug)]
pub struct DaemonBuilder {
    dir: TempDir,
    listen: Listen,
    log_level: String,
    env: Vec<(OsString, OsString)>,
}

impl Default for DaemonBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl DaemonBuilder {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("create temporary directory"),
            listen: Listen::Inherited,
            log_level: "info".to_owned(),
            env: Vec::new(),
        }
    }

    /// Returns the temporary directory that contains config, keys, logs and the
    /// notify socket.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Absolute path of `name` inside the temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Path of the keys file passed with `--api-keys-file`. The file does not
    /// exist until a key is added or [`Self::write_file`] creates it.
    pub fn keys_path(&self) -> PathBuf {
        self.path("keys.toml")
    }

    /// Writes `contents` to `name` in the temporary directory and returns its path.
    pub fn write_file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.path(name);
        fs::write(&path, contents).unwrap_or_else(|err| panic!("write {}: {err}", path.display()));
        path
    }

    /// Runs `rtask add-key NAME` against the keys file and returns the API key.
    pub fn add_key(&self, name: &str) -> String {
        add_key(self.dir(), &self.keys_path(), name)
    }

    /// Sets an environment variable for the daemon.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    /// Sets `RUST_LOG` (default `info`).
    pub fn log_level(mut self, level: &str) -> Self {
        level.clone_into(&mut self.log_level);
        self
    }

    /// Lets the daemon bind `127.0.0.1:0` itself instead of inheriting sockets.
    pub fn bind_addresses(mut self) -> Self {
        self.listen = Listen::Addresses;
        self
    }

    /// Writes `config` to `config.toml`, starts the daemon and returns once it has
    /// sent `READY=1`. Panics with its stderr if it exits or is not ready within
    /// 30 s.
    pub async fn start(self, config: &str) -> Daemon {
        fs::write(self.path("config.toml"), config).expect("write config.toml");
        let notify = NotifyRecorder::bind(&self.path("notify.sock"));

        let listeners = match self.listen {
            Listen::Inherited => Some(Listeners {
                api: bind_loopback(),
                metrics: bind_loopback(),
            }),
            Listen::Addresses => None,
        };
        let (api_addr, metrics_addr) = match &listeners {
            Some(listeners) => (local_addr(&listeners.api), local_addr(&listeners.metrics)),
            // Read from the log once the daemon is ready.
            None => (unspecified_addr(), unspecified_addr()),
        };

        let client = Client::builder()
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            // A fresh connection per request, so nothing stale is reused after a
            // restart.
            .pool_max_idle_per_host(0)
            .build()
            .expect("build HTTP client");

        let mut daemon = Daemon {
            dir: self.dir,
            listen: self.listen,
            log_level: self.log_level,
            env: self.env,
            listeners,
            api_addr,
            metrics_addr,
            notify,
            child: None,
            client,
        };
        daemon.spawn();
        daemon.wait_for_notify("READY=1", START_TIMEOUT).await;
        if daemon.listen == Listen::Addresses {
            daemon.api_addr = daemon.logged_address("api");
            daemon.metrics_addr = daemon.logged_address("metrics");
        }
        daemon
    }
}

/// The sockets the harness binds and keeps, so a restarted daemon serves the same
/// ports.
#[derive(Debug)]
struct Listeners {
    api: TcpListener,
    metrics: TcpListener,
}

fn bind_loopback() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")
}

fn local_addr(listener: &TcpListener) -> SocketAddr {
    listener.local_addr().expect("listener address")
}

fn unspecified_addr() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 0))
}

/// A complete HTTP response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Reply {
    /// Parses the body as JSON. Panics with the raw body when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|err| {
            panic!(
                "body of HTTP {} is not JSON ({err}): {}",
                self.status,
                self.text()
            )
        })
    }

    /// Returns the body as text, replacing invalid UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Returns the `error` field of a JSON error body. Panics when there is none.
    pub fn error(&self) -> String {
        match self.json().get("error") {
            Some(Value::String(message)) => message.clone(),
            _ => panic!(
                "HTTP {} body has no string `error`: {}",
                self.status,
                self.text()
            ),
        }
    }
}

/// Sends `request` and reads the whole response.
pub async fn send(request: RequestBuilder) -> Reply {
    let response = request.send().await.expect("HTTP request");
    let status = response.status().as_u16();
    let body = response.bytes().await.expect("HTTP body").to_vec();
    Reply { status, body }
}

/// A running `rtask run` process with its temporary directory. Dropping it stops
/// the daemon (SIGTERM, then SIGKILL after 15 s) and removes the directory.
#[derive(Debug)]
pub struct Daemon {
    dir: TempDir,
    listen: Listen,
    log_level: String,
    env: Vec<(OsString, OsString)>,
    listeners: Option<Listeners>,
    api_addr: SocketAddr,
    metrics_addr: SocketAddr,
    notify: NotifyRecorder,
    child: Option<Child>,
    client: Client,
}

impl Daemon {
    /// Starts a daemon with `config` and no keys file.
    pub async fn start(config: &str) -> Self {
        DaemonBuilder::new().start(config).await
    }

    pub fn builder() -> DaemonBuilder {
        DaemonBuilder::new()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn config_path(&self) -> PathBuf {
        self.path("config.toml")
    }

    pub fn keys_path(&self) -> PathBuf {
        self.path("keys.toml")
    }

    /// Returns the path of the daemon's log, in a subdirectory. The daemon watches its
    /// config's directory, and log writes there would make it re-read its inputs all the
    /// time, which would hide a change the watcher missed.
    fn stderr_path(&self) -> PathBuf {
        let logs = self.path("logs");
        fs::create_dir_all(&logs).expect("create the logs directory");
        logs.join("daemon.stderr")
    }

    /// Address of the API socket.
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// Address of the metrics socket.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// PID of the daemon process.
    pub fn pid(&self) -> Pid {
        let child = self.child.as_ref().expect("daemon is running");
        Pid::from_raw(i32::try_from(child.id()).expect("pid fits in i32"))
    }

    /// Everything the daemon wrote to stderr, across restarts.
    pub fn stderr(&self) -> String {
        fs::read_to_string(self.stderr_path()).unwrap_or_default()
    }

    /// Returns the recorder of sd_notify datagrams.
    pub fn notify(&self) -> &NotifyRecorder {
        &self.notify
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// `http://API_ADDR{path}`.
    pub fn api_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api_addr)
    }

    /// Builds a request to the API socket.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, self.api_url(path))
    }

    /// `POST /tasks/{task}` with `Authorization: Bearer {key}` and `body` as stdin.
    pub async fn post_task(&self, task: &str, key: &str, body: &str) -> Reply {
        send(
            self.request(Method::POST, &format!("/tasks/{task}"))
                .bearer_auth(key)
                .body(body.to_owned()),
        )
        .await
    }

    /// Starts an async task and returns its `task_id`. Panics unless the daemon
    /// accepts it with 200.
    pub async fn start_async(&self, task: &str, key: &str, body: &str) -> String {
        let reply = self.post_task(task, key, body).await;
        assert_eq!(reply.status, 200, "async start: {}", reply.text());
        match reply.json().get("task_id") {
            Some(Value::String(id)) => id.clone(),
            _ => panic!("async start returned no task_id: {}", reply.text()),
        }
    }

    /// `GET /tasks/{task}/{id}` with `Authorization: Bearer {key}`.
    pub async fn get_result(&self, task: &str, id: &str, key: &str) -> Reply {
        send(
            self.request(Method::GET, &format!("/tasks/{task}/{id}"))
                .bearer_auth(key),
        )
        .await
    }

    /// Polls an async task until its status is no longer `running` and returns
    /// the result object.
    pub async fn wait_for_result(&self, task: &str, id: &str, key: &str) -> Value {
        let mut result = Value::Null;
        wait_until("async task finished", secs(20.0), async || {
            let reply = self.get_result(task, id, key).await;
            assert_eq!(reply.status, 200, "poll {task}/{id}: {}", reply.text());
            result = reply.json();
            result["status"] != "running"
        })
        .await;
        result
    }

    /// `POST /wh/{secret}` with `body` as stdin and no Authorization header.
    pub async fn post_webhook(&self, secret: &str, body: &str) -> Reply {
        send(
            self.request(Method::POST, &format!("/wh/{secret}"))
                .body(body.to_owned()),
        )
        .await
    }

    /// Fetches `GET /metrics` from the metrics socket and returns the body. Panics
    /// unless the status is 200.
    pub async fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.metrics_addr);
        let reply = send(self.client.get(url)).await;
        assert_eq!(reply.status, 200, "GET /metrics: {}", reply.text());
        reply.text()
    }

    /// Fetches `GET /metrics` and parses the body.
    pub async fn parsed_metrics(&self) -> Metrics {
        Metrics::parse(&self.metrics().await)
    }

    /// Runs `rtask add-key NAME` against this daemon's keys file.
    pub fn add_key(&self, name: &str) -> String {
        add_key(self.dir(), &self.keys_path(), name)
    }

    /// Waits for an sd_notify datagram with a line matching `expected` (a whole
    /// line, or a prefix when it ends with `=`) that arrived after the previous
    /// match, and returns the whole datagram. Panics with the daemon's stderr on
    /// timeout or when the daemon exits first.
    pub async fn wait_for_notify(&mut self, expected: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(message) = self.notify.take_match(expected) {
                return message;
            }
            if let Some(status) = self.try_exit_status() {
                panic!(
                    "daemon exited with {status} before sending {expected:?}; stderr:\n{}",
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

    /// Sends `signal` to the daemon.
    pub fn signal(&self, signal: Signal) {
        signal::kill(self.pid(), signal).expect("signal daemon");
    }

    /// Returns the exit status if the daemon has exited (reaping it), else `None`.
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        child.try_wait().expect("check daemon status")
    }

    /// Sends SIGTERM and waits up to 15 s for the daemon to exit.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(Signal::SIGTERM);
        let status = self.wait_for_exit(STOP_TIMEOUT).unwrap_or_else(|| {
            panic!(
                "daemon did not exit within {STOP_TIMEOUT:?} of SIGTERM; stderr:\n{}",
                self.stderr()
            )
        });
        self.child = None;
        status
    }

    /// Stops the daemon and starts it again with the same directory and sockets,
    /// then waits for `READY=1`.
    pub async fn restart(&mut self) {
        assert_eq!(
            self.listen,
            Listen::Inherited,
            "restart keeps the ports only with inherited sockets"
        );
        let status = self.stop();
        assert!(status.success(), "daemon exited with {status} on SIGTERM");
        self.spawn();
        self.wait_for_notify("READY=1", START_TIMEOUT).await;
    }

    fn wait_for_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Spawns `rtask --config ... --api-keys-file ... run`, appending its stderr
    /// to `daemon.stderr`.
    fn spawn(&mut self) {
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.stderr_path())
            .expect("open daemon.stderr");
        let stdout = File::create(self.path("logs/daemon.stdout")).expect("create daemon.stdout");

        let mut command = self.daemon_command();
        command
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .env("NOTIFY_SOCKET", self.notify.path())
            .env("RUST_LOG", &self.log_level)
            .envs(self.env.iter().map(|(name, value)| (name, value)));
        let child = command
            .spawn()
            .unwrap_or_else(|err| panic!("spawn {command:?}: {err}"));
        self.child = Some(child);
    }

    /// Builds the command line for `run`. With inherited sockets it is wrapped in
    /// `sh`, so that `LISTEN_PID` can be set to the PID that `exec` keeps.
    #[expect(
        clippy::disallowed_methods,
        reason = "the harness starts the binary under test, not a task process"
    )]
    fn daemon_command(&self) -> Command {
        let config = self.config_path();
        let keys = self.keys_path();
        let mut rtask_args: Vec<OsString> = vec![
            "--config".into(),
            config.into(),
            "--api-keys-file".into(),
            keys.into(),
            "run".into(),
        ];

        let Some(listeners) = &self.listeners else {
            rtask_args.extend(
                [
                    "--api-address",
                    "127.0.0.1:0",
                    "--metrics-address",
                    "127.0.0.1:0",
                ]
                .map(OsString::from),
            );
            let mut command = rtask_command(self.dir());
            command.args(rtask_args);
            return command;
        };

        // `sh` exports its own PID and then execs rtask, which keeps that PID.
        let mut command = Command::new("sh");
        scrub_env(&mut command);
        command
            .current_dir(self.dir())
            .arg("-c")
            .arg(r#"export LISTEN_PID=$$; exec "$@""#)
            .arg("sh")
            .arg(env!("CARGO_BIN_EXE_rtask"))
            .args(rtask_args);
        command
            .env("LISTEN_FDS", "2")
            .env("LISTEN_FDNAMES", "api:metrics");
        fds::pass_listen_fds(
            &mut command,
            vec![listeners.api.as_raw_fd(), listeners.metrics.as_raw_fd()],
        );
        command
    }

    /// Finds `address=IP:PORT` on the log line with `listening` and
    /// `socket={socket}`. Accepts a quoted socket name too, so that only the test
    /// of the log format fails on quoting.
    fn logged_address(&self, socket: &str) -> SocketAddr {
        let stderr = self.stderr();
        let plain = format!("socket={socket}");
        let quoted = format!("socket=\"{socket}\"");
        let line = stderr
            .lines()
            .find(|line| {
                line.contains("listening") && (line.contains(&plain) || line.contains(&quoted))
            })
            .unwrap_or_else(|| panic!("no `listening ... {plain}` line in stderr:\n{stderr}"));
        parse_logged_address(line)
            .unwrap_or_else(|| panic!("no `address=IP:PORT` in log line: {line}"))
    }
}

/// Parses the value of the `address=` field of a text log line.
pub fn parse_logged_address(line: &str) -> Option<SocketAddr> {
    let (_, rest) = line.split_once("address=")?;
    let value = rest.split_whitespace().next()?.trim_matches('"');
    value.parse().ok()
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- daemon stderr ---\n{}--- end ---", self.stderr());
        }
        if let Some(child) = self.child.take() {
            stop_child(child);
        }
    }
}

/// Stops a daemon left running at the end of a test: SIGTERM, up to 15 s to exit,
/// then SIGKILL.
pub fn stop_child(mut child: Child) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits in i32"));
    let _ = signal::kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn parse_logged_address_reads_field() {
    let line = "2026-01-01T00:00:00Z  INFO rtask: listening address=127.0.0.1:4321 socket=api";
    let quoted = "INFO listening socket=\"metrics\" address=\"[::1]:9090\"";

    assert_eq!(
        parse_logged_address(line),
        Some(SocketAddr::from(([127, 0, 0, 1], 4321)))
    );
    assert_eq!(
        parse_logged_address(quoted),
        Some("[::1]:9090".parse().unwrap())
    );
    assert_eq!(parse_logged_address("INFO listening socket=api"), None);
}
