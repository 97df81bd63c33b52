//! Running one task: start the process, feed it the request body, capture bounded
//! output, stop it on timeout, cancellation or shutdown, and make sure nothing it
//! started outlives it.
//!
//! The stop sequence is the same for every reason: SIGTERM to the task's process group
//! and to its processes that left the group, up to `killGraceSeconds` for them to exit,
//! then SIGKILL. When the main process exits by itself, whatever it left running is
//! killed after a short drain of its output.

mod child;
mod output;
mod reaper;

use std::ffi::OsString;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::wait::WaitStatus;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::{TaskTracker, task_tracker::TaskTrackerToken};

use crate::metrics::Metrics;
use crate::tasks::Task;
use child::{CommandPlan, ProcessTree};
pub use output::Captured;
use reaper::Reaper;

/// How long the output pipes may stay open after the main process exited before the
/// processes left holding them are killed.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(200);

/// How long rtask waits for killed processes to disappear, and then for their output
/// pipes to close, before it gives up on them and logs it.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Returns the maximum time stopping a run takes once the stop begins: its
/// kill grace, two waits for SIGKILL to take effect, the drain, and the wait for its
/// pipes.
fn stop_duration(kill_grace: Duration) -> Duration {
    kill_grace + KILL_WAIT * 3 + DRAIN_AFTER_EXIT
}

/// Environment variables the daemon consumes itself, which children must not see.
const CONSUMED_VARIABLES: [&str; 7] = [
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "JOURNAL_STREAM",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
];

/// The end state of a run: the `status` of the result and its metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Success,
    Failure,
    Timeout,
    Canceled,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::Success => "success",
            Status::Failure => "failure",
            Status::Timeout => "timeout",
            Status::Canceled => "canceled",
        }
    }
}

/// The result of one run.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: Status,
    /// The process's exit code; -1 on timeout, cancellation or death by a signal, -2
    /// when the command could not be started.
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub stdout: Captured,
    pub stderr: Captured,
    pub duration: Duration,
}

/// The inputs of one run besides the task definition.
#[derive(Debug)]
pub struct RunRequest {
    pub task: Arc<Task>,
    pub task_id: String,
    pub key_name: String,
    pub input: bytes::Bytes,
    /// `REQUEST_HEADER_*` variables from `passRequestHeaders`.
    pub header_env: Vec<(String, String)>,
    /// The supervisor's consent to this run, taken in the request handler before the
    /// run moves to another tokio task.
    pub admission: Admission,
}

/// A run the supervisor agreed to start: shutdown waits for it, or stops it, until it
/// is dropped.
#[derive(Debug)]
pub struct Admission {
    _tracked: TaskTrackerToken,
}

/// Starts and supervises every task process of the daemon.
#[derive(Debug)]
pub struct Supervisor {
    reaper: Arc<Reaper>,
    metrics: Arc<Metrics>,
    base_env: Vec<(OsString, OsString)>,
    /// The descriptor limit the daemon started with, before it raised its own.
    inherited_nofile: (u64, u64),
    /// Set once the shutdown grace period is over, so that no new run is admitted.
    closed: AtomicBool,
    /// Cancelled at shutdown, after the grace period: every run still going is stopped.
    stop_all: CancellationToken,
    /// The longest `killGraceSeconds` of any run admitted, in milliseconds. A run keeps
    /// the definition it started with, so the current task table may have a shorter one.
    longest_kill_grace_ms: AtomicU64,
    runs: TaskTracker,
}

impl Supervisor {
    /// Becomes a child subreaper and takes a copy of the daemon's environment, less the
    /// variables the daemon consumes. Needs a tokio runtime.
    pub fn start(metrics: Arc<Metrics>) -> io::Result<Arc<Supervisor>> {
        let base_env = std::env::vars_os()
            .filter(|(name, _)| {
                let name = name.to_string_lossy();
                !CONSUMED_VARIABLES.contains(&name.as_ref())
            })
            .collect();
        Ok(Arc::new(Supervisor {
            reaper: Reaper::start()?,
            metrics,
            inherited_nofile: crate::limits::raise_nofile(),
            base_env,
            closed: AtomicBool::new(false),
            stop_all: CancellationToken::new(),
            longest_kill_grace_ms: AtomicU64::new(0),
            runs: TaskTracker::new(),
        }))
    }

    /// Admits a new run of a task with `kill_grace`, unless the daemon is past its
    /// shutdown grace period.
    pub fn admit(&self, kill_grace: Duration) -> Option<Admission> {
        // The run is tracked and its kill grace recorded before the flag is read. So
        // either shutdown waits for the run, long enough to stop it, or the flag
        // rejects the run.
        let kill_grace_ms = u64::try_from(kill_grace.as_millis()).unwrap_or(u64::MAX);
        self.longest_kill_grace_ms
            .fetch_max(kill_grace_ms, Ordering::SeqCst);
        let token = self.runs.token();
        if self.closed.load(Ordering::SeqCst) {
            return None;
        }
        Some(Admission { _tracked: token })
    }

    /// Runs a task to its end. `cancel` stops it early with the status `canceled`.
    pub async fn run(&self, request: RunRequest, cancel: CancellationToken) -> Outcome {
        let started = Instant::now();
        let task = &request.task;
        // A run admitted just before the runs were stopped starts no process.
        if self.stop_all.is_cancelled() {
            return Outcome {
                status: Status::Canceled,
                exit_code: -1,
                signal: None,
                stdout: Captured::default(),
                stderr: Captured::from_message("rtask is shutting down".into()),
                duration: started.elapsed(),
            };
        }
        let plan = self.plan(&request);

        let spawned = match child::spawn(&self.reaper, &plan) {
            Ok(spawned) => spawned,
            Err(error) => {
                let message = format!(
                    "failed to start command {:?}: {error}",
                    task.config.command[0]
                );
                tracing::warn!(task = %task.name, task_id = %request.task_id, %error, "failed to start command");
                return Outcome {
                    status: Status::Failure,
                    exit_code: -2,
                    signal: None,
                    stdout: Captured::default(),
                    stderr: Captured::from_message(message),
                    duration: started.elapsed(),
                };
            }
        };
        let tree = ProcessTree::new(spawned.pid, &request.task_id);
        tracing::debug!(task = %task.name, task_id = %request.task_id, pid = spawned.pid.as_raw(), "started");

        let running = self.metrics.running(&task.name);
        running.inc();
        let outcome = self
            .supervise(&request, spawned, &tree, cancel, started)
            .await;
        running.dec();
        outcome
    }

    async fn supervise(
        &self,
        request: &RunRequest,
        spawned: child::Spawned,
        tree: &ProcessTree,
        cancel: CancellationToken,
        started: Instant,
    ) -> Outcome {
        let config = &request.task.config;
        let mut stdin = spawned.stdin;
        let input = request.input.clone();
        // The body is written while the output is read. A child that never reads stdin
        // or exits early makes the write fail with EPIPE, and the run goes on.
        let writer = tokio::spawn(async move {
            let _ = stdin.write_all(&input).await;
        });
        let stdout = output::Reader::start(spawned.stdout, config.max_output_bytes());
        let stderr = spawned
            .stderr
            .map(|pipe| output::Reader::start(pipe, config.max_output_bytes()));

        let mut exit = spawned.exit;
        let timeout = tokio::time::sleep(config.execution_timeout());
        let stop_reason = tokio::select! {
            status = &mut exit => {
                let status = status.ok();
                return self.finish(request, tree, status, None, stdout, stderr, writer, started).await;
            }
            () = timeout => Status::Timeout,
            () = cancel.cancelled() => Status::Canceled,
            () = self.stop_all.cancelled() => Status::Canceled,
        };

        tracing::info!(
            task = %request.task.name,
            task_id = %request.task_id,
            reason = stop_reason.label(),
            "stopping task processes"
        );
        if !tree.terminate(config.kill_grace()).await {
            tracing::warn!(
                task = %request.task.name,
                task_id = %request.task_id,
                grace_seconds = config.kill_grace_seconds,
                "task processes outlived the kill grace period, sending SIGKILL"
            );
        }
        let status = tokio::time::timeout(KILL_WAIT, async {
            tree.kill_all(KILL_WAIT).await;
            exit.await.ok()
        })
        .await
        .unwrap_or_default();
        self.finish(
            request,
            tree,
            status,
            Some(stop_reason),
            stdout,
            stderr,
            writer,
            started,
        )
        .await
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "the pieces of one run, taken apart once"
    )]
    async fn finish(
        &self,
        request: &RunRequest,
        tree: &ProcessTree,
        status: Option<WaitStatus>,
        stop_reason: Option<Status>,
        stdout: output::Reader,
        stderr: Option<output::Reader>,
        writer: tokio::task::JoinHandle<()>,
        started: Instant,
    ) -> Outcome {
        // Give the pipes a moment to reach end-of-file, then kill whatever the task
        // left running (background jobs holding the pipes, daemons it forked).
        let drained = tokio::time::timeout(DRAIN_AFTER_EXIT, async {
            stdout.closed().await;
            if let Some(stderr) = &stderr {
                stderr.closed().await;
            }
        })
        .await
        .is_ok();
        let all_gone = tree.kill_all(KILL_WAIT).await;
        if !drained {
            tracing::debug!(task = %request.task.name, task_id = %request.task_id, "killed processes left holding the output pipes");
        }
        if !all_gone {
            tracing::error!(
                task = %request.task.name,
                task_id = %request.task_id,
                "task processes survived SIGKILL; releasing the task's slot anyway"
            );
        }
        writer.abort();
        let stderr_finished = async {
            match stderr {
                Some(stderr) => stderr.finish(KILL_WAIT).await,
                None => (Captured::default(), false),
            }
        };
        let ((stdout, stdout_open), (stderr, stderr_open)) =
            tokio::join!(stdout.finish(KILL_WAIT), stderr_finished);
        if stdout_open || stderr_open {
            tracing::warn!(
                task = %request.task.name,
                task_id = %request.task_id,
                "an output pipe stayed open after the task's processes were killed: \
                 a process outside the task's group still holds it"
            );
        }

        let (mut result_status, exit_code, signal) = match status {
            Some(WaitStatus::Exited(_, 0)) => (Status::Success, 0, None),
            Some(WaitStatus::Exited(_, code)) => (Status::Failure, code, None),
            Some(WaitStatus::Signaled(_, signal, _)) => (Status::Failure, -1, Some(signal as i32)),
            _ => (Status::Failure, -1, None),
        };
        let exit_code = if stop_reason.is_some() { -1 } else { exit_code };
        if let Some(reason) = stop_reason {
            result_status = reason;
        }
        Outcome {
            status: result_status,
            exit_code,
            signal,
            stdout,
            stderr,
            duration: started.elapsed(),
        }
    }

    fn plan(&self, request: &RunRequest) -> CommandPlan {
        let task = &request.task;
        let mut env = self.base_env.clone();
        let mut set = |name: &str, value: &str| {
            env.retain(|(existing, _)| existing != name);
            env.push((OsString::from(name), OsString::from(value)));
        };
        for (name, value) in &task.config.environment {
            set(name, value);
        }
        for (name, value) in &request.header_env {
            set(name, value);
        }
        set("RTASK_TASK_NAME", &task.name);
        set("RTASK_TASK_ID", &request.task_id);
        set("RTASK_KEY_NAME", &request.key_name);
        CommandPlan {
            argv: task.config.command.clone(),
            workdir: task.config.workdir.clone(),
            env,
            rlimits: task.rlimits.to_apply(self.inherited_nofile),
            merge_stderr: task.config.merge_stderr,
        }
    }

    /// Rejects every later run: [`Supervisor::admit`] returns `None` from now on.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    /// Stops every run still going with the usual SIGTERM, grace, SIGKILL sequence, and
    /// waits for them for as long as that sequence can take. Returns whether all are
    /// gone.
    pub async fn stop_all(&self) -> bool {
        self.stop_all.cancel();
        let kill_grace = Duration::from_millis(self.longest_kill_grace_ms.load(Ordering::SeqCst));
        self.wait_idle(stop_duration(kill_grace)).await
    }

    /// Waits until no run is going. Runs admitted later are waited for as well.
    pub async fn idle(&self) {
        self.runs.close();
        self.runs.wait().await;
    }

    /// Waits until no run is going, for at most `limit`; returns whether none is.
    pub async fn wait_idle(&self, limit: Duration) -> bool {
        tokio::time::timeout(limit, self.idle()).await.is_ok()
    }

    pub fn running_count(&self) -> usize {
        self.runs.len()
    }
}
