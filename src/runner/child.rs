//! Starting a task process and killing everything it started. This is the only module
//! that creates processes (clippy's `disallowed-methods` enforces that) and one of two
//! that need `unsafe`, for the code that runs between fork and exec.
#![allow(unsafe_code)]

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::resource::{Resource, setrlimit};
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use tokio::net::unix::pipe;
use tokio::sync::oneshot;

use super::reaper::Reaper;

/// Everything needed to start one task process.
pub struct CommandPlan {
    pub argv: Vec<String>,
    pub workdir: Option<PathBuf>,
    /// The complete environment; nothing of the daemon's is inherited besides this.
    pub env: Vec<(OsString, OsString)>,
    /// Resource limits as (resource, soft, hard).
    pub rlimits: Vec<(Resource, u64, u64)>,
    pub merge_stderr: bool,
}

impl std::fmt::Debug for CommandPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Environment values may hold secrets, so only the command is shown.
        f.debug_struct("CommandPlan")
            .field("argv", &self.argv)
            .field("workdir", &self.workdir)
            .finish_non_exhaustive()
    }
}

/// A started task process: the leader of its own process group.
#[derive(Debug)]
pub struct Spawned {
    pub pid: Pid,
    pub stdin: pipe::Sender,
    pub stdout: pipe::Receiver,
    /// None when stderr goes into the stdout pipe.
    pub stderr: Option<pipe::Receiver>,
    pub exit: oneshot::Receiver<WaitStatus>,
}

/// Starts `plan` in a new process group with its resource limits applied.
pub fn spawn(reaper: &Reaper, plan: &CommandPlan) -> io::Result<Spawned> {
    if let Some(workdir) = &plan.workdir
        && !workdir.is_dir()
    {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("workdir {} is not a directory", workdir.display()),
        ));
    }
    let (mut command, merged_reader) = build_command(plan)?;
    let (mut child, exit) = reaper.spawn(|| command.spawn())?;
    // The command owns the parent's copies of the pipes' write ends. Dropping it lets
    // the readers reach end-of-file once the children close theirs.
    drop(command);
    let pid = Pid::from_raw(child.id() as i32);
    let pipes = async_pipes(&mut child, merged_reader);
    let (stdin, stdout, stderr) = match pipes {
        Ok(pipes) => pipes,
        Err(error) => {
            // Nothing would supervise the process; the reaper collects it.
            let _ = killpg(pid, Signal::SIGKILL);
            return Err(error);
        }
    };
    Ok(Spawned {
        pid,
        stdin,
        stdout,
        stderr,
        exit,
    })
}

type AsyncPipes = (pipe::Sender, pipe::Receiver, Option<pipe::Receiver>);

/// Hands the child's pipes to the runtime.
fn async_pipes(
    child: &mut std::process::Child,
    merged_reader: Option<io::PipeReader>,
) -> io::Result<AsyncPipes> {
    let stdin = pipe::Sender::from_owned_fd(child.stdin.take().expect("stdin is piped").into())?;
    let (stdout, stderr) = match merged_reader {
        Some(reader) => (pipe::Receiver::from_owned_fd(reader.into())?, None),
        None => {
            let stdout = child.stdout.take().expect("stdout is piped");
            let stderr = child.stderr.take().expect("stderr is piped");
            (
                pipe::Receiver::from_owned_fd(stdout.into())?,
                Some(pipe::Receiver::from_owned_fd(stderr.into())?),
            )
        }
    };
    Ok((stdin, stdout, stderr))
}

/// Builds the command: a new process group, the exact environment, piped standard
/// streams and the resource limits. With `mergeStderr` both output streams share one
/// pipe, whose read end is returned.
fn build_command(
    plan: &CommandPlan,
) -> io::Result<(std::process::Command, Option<io::PipeReader>)> {
    #[expect(clippy::disallowed_methods, reason = "this is the module that spawns")]
    let mut command = std::process::Command::new(&plan.argv[0]);
    command
        .args(&plan.argv[1..])
        .env_clear()
        .envs(plan.env.iter().map(|(name, value)| (name, value)))
        .stdin(Stdio::piped())
        .process_group(0);
    if let Some(workdir) = &plan.workdir {
        command.current_dir(workdir);
    }

    let merged_reader = if plan.merge_stderr {
        let (reader, writer) = io::pipe()?;
        command.stdout(writer.try_clone()?).stderr(writer);
        Some(reader)
    } else {
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        None
    };

    let rlimits = plan.rlimits.clone();
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed. It calls setrlimit(2), a plain system call,
    // and builds an io::Error from an errno without allocating.
    unsafe {
        command.pre_exec(move || {
            for (resource, soft, hard) in &rlimits {
                setrlimit(*resource, *soft, *hard).map_err(io::Error::from)?;
            }
            Ok(())
        });
    }
    Ok((command, merged_reader))
}

/// The processes of one task: its process group, and the processes that left the group
/// (`setsid`, double fork) but still carry the task's id in their environment.
#[derive(Debug, Clone)]
pub struct ProcessTree {
    pub group: Pid,
    marker: Arc<[u8]>,
}

impl ProcessTree {
    pub fn new(group: Pid, task_id: &str) -> ProcessTree {
        ProcessTree {
            group,
            marker: format!("RTASK_TASK_ID={task_id}").into_bytes().into(),
        }
    }

    /// Sends `signal` to every process of the task; returns false when none is left.
    async fn signal(&self, signal: Signal) -> bool {
        let group_alive = match killpg(self.group, signal) {
            Ok(()) => true,
            Err(Errno::ESRCH) => false,
            Err(error) => {
                tracing::warn!(%error, group = self.group.as_raw(), "failed to signal a task's process group");
                false
            }
        };
        let mut escaped_alive = false;
        for pid in self.escaped().await {
            if kill(pid, signal).is_ok() {
                escaped_alive = true;
            }
        }
        group_alive || escaped_alive
    }

    /// Finds the processes of this task outside its group. Because rtask is a
    /// subreaper, they become its children once their parents are gone, so only
    /// rtask's children are searched. A process whose parent is alive is found after
    /// that parent is killed.
    ///
    /// The /proc scan takes longer the more processes the host runs, so it runs on the
    /// blocking pool rather than on a runtime worker.
    async fn escaped(&self) -> Vec<Pid> {
        let marker = self.marker.clone();
        tokio::task::spawn_blocking(move || find_escaped(&marker))
            .await
            .unwrap_or_default()
    }

    /// Kills every process of the task with SIGKILL and waits until they are gone,
    /// for at most `limit`. Returns false if some survived that long.
    pub async fn kill_all(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        let mut pause = Duration::from_millis(1);
        while self.signal(Signal::SIGKILL).await {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
        true
    }

    /// Sends SIGTERM to every process of the task and waits up to `grace` for them to
    /// exit. Processes that leave the group are signalled as they are found: one whose
    /// parent dies during the wait becomes rtask's child only then. Returns false if
    /// some are still alive at the end.
    pub async fn terminate(&self, grace: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + grace;
        let _ = killpg(self.group, Signal::SIGTERM);
        let mut signalled = Vec::new();
        let mut pause = Duration::from_millis(5);
        loop {
            for pid in self.escaped().await {
                if !signalled.contains(&pid) {
                    let _ = kill(pid, Signal::SIGTERM);
                    signalled.push(pid);
                }
            }
            if !self.is_alive().await {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    async fn is_alive(&self) -> bool {
        killpg(self.group, None).is_ok() || !self.escaped().await.is_empty()
    }
}

/// Returns rtask's children, other than zombies, whose environment contains `marker`.
fn find_escaped(marker: &[u8]) -> Vec<Pid> {
    let own_pid = std::process::id().to_string();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|name| name.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // The fields after the command name, which is in parentheses and may
        // itself contain spaces: state, ppid, pgrp, ...
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next();
        let parent = fields.next();
        if state == Some("Z") || parent != Some(own_pid.as_str()) {
            continue;
        }
        let Ok(environ) = fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ
            .split(|byte| *byte == 0)
            .any(|entry| entry == marker)
        {
            found.push(Pid::from_raw(pid));
        }
    }
    found
}
