//! The one place that calls `waitpid`. Because rtask is a child subreaper, every orphan
//! of a task ends up as its child, besides the task processes it starts. This module
//! reaps them all and sends the exit status of each started process to its waiter.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};

use nix::errno::Errno;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;

/// Exit statuses by pid, for the processes rtask started itself.
#[derive(Debug, Default)]
pub struct Reaper {
    waiting: Mutex<HashMap<i32, oneshot::Sender<WaitStatus>>>,
}

impl Reaper {
    /// Makes rtask a child subreaper and starts reaping on SIGCHLD. Needs a tokio runtime.
    pub fn start() -> io::Result<Arc<Reaper>> {
        nix::sys::prctl::set_child_subreaper(true).map_err(io::Error::from)?;
        let mut child_signals = signal(SignalKind::child())?;
        let reaper = Arc::new(Reaper::default());
        let reaping = reaper.clone();
        tokio::spawn(async move {
            // A signal that arrives while the loop is reaping is coalesced into the next
            // `recv`, and `reap_all` takes every waiting status, so none is missed.
            while child_signals.recv().await.is_some() {
                reaping.reap_all();
            }
        });
        Ok(reaper)
    }

    /// Runs `spawn` and registers the new process's pid, both under the lock that
    /// `reap_all` holds while it waits, so a process that exits at once is not reaped
    /// before its waiter is registered.
    pub fn spawn<F>(
        &self,
        spawn: F,
    ) -> io::Result<(std::process::Child, oneshot::Receiver<WaitStatus>)>
    where
        F: FnOnce() -> io::Result<std::process::Child>,
    {
        let mut waiting = self.waiting.lock().expect("reaper lock poisoned");
        let child = spawn()?;
        let (sender, receiver) = oneshot::channel();
        waiting.insert(child.id() as i32, sender);
        Ok((child, receiver))
    }

    fn reap_all(&self) {
        let mut waiting = self.waiting.lock().expect("reaper lock poisoned");
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Ok(status) => {
                    let Some(pid) = status.pid() else { continue };
                    match waiting.remove(&pid.as_raw()) {
                        Some(sender) => {
                            let _ = sender.send(status);
                        }
                        None => tracing::debug!(pid = pid.as_raw(), ?status, "reaped an orphan"),
                    }
                }
                Err(Errno::EINTR) => continue,
                Err(error) => {
                    tracing::error!(%error, "waitpid failed");
                    break;
                }
            }
        }
    }
}
