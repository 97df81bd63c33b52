//! `--log-format journald` against a real `systemd-journald`: a private journald in a
//! private mount namespace (`sandbox.sh`), rtask logging to it, and `journalctl -D`
//! reading the fields of the finished runs afterwards.
//!
//! Needs root (for the mount namespace), `unshare`, `journalctl` and
//! `/usr/lib/systemd/systemd-journald`. Without them the test prints why and passes.

#![expect(
    clippy::disallowed_methods,
    reason = "the test starts unshare and journalctl"
)]

use std::fs::{self, File};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::{Pid, geteuid};
use serde_json::Value;

use crate::harness::activation::pass_listen_fds;
use crate::harness::raw_http::{request_bytes, tcp_request};
use crate::harness::{NotifyRecorder, START_TIMEOUT, add_key, scrub_env, secs};

const JOURNALD: &str = "/usr/lib/systemd/systemd-journald";

const CONFIG: &str = r#"
[tasks.good]
command = ["echo", "fine"]
apiKeyNames = ["ci"]

[tasks.bad]
command = ["sh", "-c", "exit 3"]
apiKeyNames = ["ci"]
"#;

/// Returns why the test cannot run here, or `None` when it can.
fn missing_requirement() -> Option<String> {
    if !geteuid().is_root() {
        return Some("it needs root for a private mount namespace".to_owned());
    }
    for tool in [JOURNALD, "/usr/bin/unshare", "/usr/bin/journalctl"] {
        if !Path::new(tool).is_file() {
            return Some(format!("{tool} is missing"));
        }
    }
    None
}

/// The sandbox process, and the journald and rtask it started. Dropping it stops all
/// three, by the pids the sandbox wrote.
struct Sandbox {
    child: Child,
    dir: PathBuf,
}

impl Sandbox {
    fn pid_from_file(&self, name: &str) -> Option<Pid> {
        let text = fs::read_to_string(self.dir.join(name)).ok()?;
        text.trim().parse().ok().map(Pid::from_raw)
    }

    fn stderr(&self) -> String {
        let sandbox = fs::read_to_string(self.dir.join("sandbox.stderr")).unwrap_or_default();
        let journald = fs::read_to_string(self.dir.join("journald.out")).unwrap_or_default();
        format!("sandbox.sh:\n{sandbox}\nsystemd-journald:\n{journald}")
    }

    async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("check sandbox") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "sandbox did not exit within {timeout:?}; {}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        for name in ["rtask.pid", "journald.pid"] {
            if let Some(pid) = self.pid_from_file(name) {
                let _ = signal::kill(pid, Signal::SIGKILL);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `sandbox.sh` in a private mount namespace with the sockets at fds 3 and 4.
fn start_sandbox(dir: &Path, journal_dir: &Path, sockets: &[&TcpListener]) -> Sandbox {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/journald/sandbox.sh");
    let stderr = File::create(journal_dir.join("sandbox.stderr")).expect("create stderr file");
    let mut command = Command::new("unshare");
    scrub_env(&mut command);
    command
        .args(["-m", "--propagation", "private", "sh"])
        .arg(script)
        .arg(journal_dir)
        .arg(env!("CARGO_BIN_EXE_rtask"))
        .args(["--log-format", "journald", "--config"])
        .arg(dir.join("config.toml"))
        .arg("--api-keys-file")
        .arg(dir.join("keys.toml"))
        .arg("run")
        .env("NOTIFY_SOCKET", dir.join("notify.sock"))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    pass_listen_fds(
        &mut command,
        sockets.iter().map(|socket| socket.as_raw_fd()).collect(),
    );
    let child = command
        .spawn()
        .unwrap_or_else(|err| panic!("spawn {command:?}: {err}"));
    Sandbox {
        child,
        dir: journal_dir.to_owned(),
    }
}

async fn wait_ready(notify: &mut NotifyRecorder, sandbox: &mut Sandbox) {
    let deadline = Instant::now() + START_TIMEOUT;
    while notify.take_match("READY=1").is_none() {
        if let Some(status) = sandbox.child.try_wait().expect("check sandbox") {
            panic!(
                "sandbox exited with {status} before READY=1; {}",
                sandbox.stderr()
            );
        }
        assert!(
            Instant::now() < deadline,
            "no READY=1 within {START_TIMEOUT:?}; {}",
            sandbox.stderr()
        );
        notify.receive(Duration::from_millis(50)).await;
    }
}

/// Reads every entry of the journal in `journal_dir` as JSON, and the raw output.
fn read_journal(journal_dir: &Path) -> (Vec<Value>, String) {
    let output = Command::new("journalctl")
        .arg("-D")
        .arg(journal_dir.join("journal"))
        .args(["-o", "json", "--no-pager"])
        .stdin(Stdio::null())
        .output()
        .expect("run journalctl");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "journalctl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let entries = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}")))
        .collect();
    (entries, text)
}

/// Returns every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).expect("read directory").flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

fn field<'a>(entry: &'a Value, name: &str) -> Option<&'a str> {
    entry.get(name).and_then(Value::as_str)
}

/// Returns the one rtask entry for the run of `task`.
fn run_entry<'a>(entries: &'a [Value], task: &str) -> &'a Value {
    let runs: Vec<&Value> = entries
        .iter()
        .filter(|entry| field(entry, "TASK") == Some(task) && entry.get("STATUS").is_some())
        .collect();
    assert_eq!(runs.len(), 1, "entries for task {task}: {runs:?}");
    runs[0]
}

#[tokio::test]
async fn journald_run_fields() {
    if let Some(reason) = missing_requirement() {
        eprintln!("skipped journald_run_fields: {reason}");
        return;
    }
    let temporary = tempfile::tempdir().expect("create temporary directory");
    let dir = temporary.path();
    let journal_dir = dir.join("journal-root");
    fs::create_dir(&journal_dir).expect("create journal directory");
    let key = add_key(dir, &dir.join("keys.toml"), "ci");
    fs::write(dir.join("config.toml"), CONFIG).expect("write config");
    let mut notify = NotifyRecorder::bind(&dir.join("notify.sock"));
    let api = TcpListener::bind("127.0.0.1:0").expect("bind api");
    let metrics = TcpListener::bind("127.0.0.1:0").expect("bind metrics");
    let api_addr = api.local_addr().expect("api address");

    let mut sandbox = start_sandbox(dir, &journal_dir, &[&api, &metrics]);
    wait_ready(&mut notify, &mut sandbox).await;
    let good = tcp_request(
        api_addr,
        request_bytes("POST", "/tasks/good", Some(&key), b""),
    )
    .await;
    let bad = tcp_request(
        api_addr,
        request_bytes("POST", "/tasks/bad", Some(&key), b""),
    )
    .await;
    let daemon = sandbox.pid_from_file("rtask.pid").expect("rtask.pid");
    signal::kill(daemon, Signal::SIGTERM).expect("signal rtask");
    let status = sandbox.wait_exit(secs(20.0)).await;
    let (entries, text) = read_journal(&journal_dir);

    assert_eq!(good.status, 200, "{}", good.text());
    assert_eq!(bad.status, 200, "{}", bad.text());
    assert_eq!(status.code(), Some(0), "{}", sandbox.stderr());
    let rtask: Vec<Value> = entries
        .into_iter()
        .filter(|entry| field(entry, "SYSLOG_IDENTIFIER") == Some("rtask"))
        .collect();
    assert!(
        !rtask.is_empty(),
        "no SYSLOG_IDENTIFIER=rtask entry in:\n{text}"
    );
    let good_run = run_entry(&rtask, "good");
    assert_eq!(field(good_run, "STATUS"), Some("success"));
    assert_eq!(field(good_run, "EXIT_CODE"), Some("0"));
    assert_eq!(field(good_run, "KEY_NAME"), Some("ci"));
    let task_id = field(good_run, "TASK_ID").unwrap_or_default();
    assert_eq!(task_id.len(), 16, "TASK_ID {task_id:?}");
    let duration = field(good_run, "DURATION_SECONDS").unwrap_or_default();
    assert!(
        duration.parse::<f64>().is_ok(),
        "DURATION_SECONDS {duration:?}"
    );
    let bad_run = run_entry(&rtask, "bad");
    assert_eq!(field(bad_run, "STATUS"), Some("failure"));
    assert_eq!(field(bad_run, "EXIT_CODE"), Some("3"));
    assert!(!text.contains(&key), "the API key is in the journal");
    for file in files_under(&journal_dir.join("journal")) {
        let bytes = fs::read(&file).expect("read journal file");
        let found = bytes
            .windows(key.len())
            .any(|window| window == key.as_bytes());
        assert!(!found, "the API key is in {}", file.display());
    }
}
