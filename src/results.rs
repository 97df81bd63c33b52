//! Results of asynchronous runs, kept for polling until their retention ends. The store
//! lives outside the task table, so results survive reloads, also of a removed task.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::runner::Outcome;
use crate::tasks::Task;

/// The JSON body of a finished run, as the original returns it, plus the optional
/// `stdout_truncated`, `stderr_truncated` and `signal` fields.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    #[serde(skip_serializing_if = "is_false")]
    pub stdout_truncated: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub stderr_truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
}

fn is_false(value: &bool) -> bool {
    !*value
}

impl RunResult {
    pub fn running() -> RunResult {
        RunResult {
            status: "running",
            exit_code: None,
            stdout: None,
            stderr: None,
            stdout_truncated: false,
            stderr_truncated: false,
            signal: None,
        }
    }

    pub fn from_outcome(outcome: &Outcome) -> RunResult {
        RunResult {
            status: outcome.status.label(),
            exit_code: Some(outcome.exit_code),
            stdout: Some(outcome.stdout.text()),
            stderr: Some(outcome.stderr.text()),
            stdout_truncated: outcome.stdout.truncated(),
            stderr_truncated: outcome.stderr.truncated(),
            signal: outcome.signal,
        }
    }
}

#[derive(Debug)]
struct Entry {
    /// The definition the run started with; polls are authorized against its keys.
    task: Arc<Task>,
    result: RunResult,
    /// None while the run is going.
    expires: Option<Instant>,
}

/// Results of asynchronous runs by task id.
#[derive(Debug, Default)]
pub struct ResultStore {
    entries: Mutex<HashMap<String, Entry>>,
}

impl ResultStore {
    /// Registers a run before its id is returned, so that an immediate poll finds it.
    pub fn register(&self, task_id: &str, task: Arc<Task>) {
        let entry = Entry {
            task,
            result: RunResult::running(),
            expires: None,
        };
        self.lock().insert(task_id.to_owned(), entry);
    }

    /// Stores a run's result, to be kept for `retention`.
    pub fn complete(&self, task_id: &str, result: RunResult, retention: Duration) {
        if let Some(entry) = self.lock().get_mut(task_id) {
            entry.result = result;
            entry.expires = Some(Instant::now() + retention);
        }
    }

    /// Returns the definition a run started with and its result, unless the id is
    /// unknown or the result expired.
    pub fn get(&self, task_id: &str) -> Option<(Arc<Task>, RunResult)> {
        let entries = self.lock();
        let entry = entries.get(task_id)?;
        if entry
            .expires
            .is_some_and(|expires| expires <= Instant::now())
        {
            return None;
        }
        Some((entry.task.clone(), entry.result.clone()))
    }

    /// Drops expired results.
    pub fn sweep(&self) {
        let now = Instant::now();
        self.lock()
            .retain(|_, entry| entry.expires.is_none_or(|expires| expires > now));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().expect("result store lock poisoned")
    }
}
