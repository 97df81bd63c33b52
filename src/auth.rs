//! Checking the `Authorization: Bearer` key of a request against a task's allowed keys.
//!
//! One request costs at most one argon2 verification: the id inside the presented key
//! selects the one stored hash to try. A key that passed is cached as a keyed hash and
//! accepted again with a constant-time compare until the keys file changes. Requests
//! that present the same key at the same time share one verification, so a burst with
//! one key (a restarted daemon's backlog) costs one argon2 run. Verifications run on
//! the blocking pool, a few at a time, so a flood of wrong keys cannot take more than a
//! bounded amount of memory (64 MiB each with the default parameters). Keys beyond a
//! short queue are rejected at once instead of waiting behind the flood.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use tokio::sync::{Semaphore, watch};

use crate::keys::{KeyEntry, KeyStore, PresentedKey};
use crate::metrics::RejectionReason;
use crate::tasks::{Task, TaskTable};

/// How many argon2 verifications may run at once.
pub const PARALLEL_VERIFICATIONS: usize = 2;

/// How many different keys may wait for a verification; more get 503 at once. At about
/// 55 ms a verification (see BENCHMARKS.md), the last of them waits about a second.
pub const QUEUED_VERIFICATIONS: usize = 32;

/// Keyed hash of a presented key, as [`KeyStore::digest`] computes it.
type Digest = [u8; 32];

/// Identity of a verification under way: the address of the stored key's entry, which
/// the verification keeps alive, and the digest of the presented key. The digest alone
/// is not enough, because it stays the same across a keys file change that gives the
/// key's id to another key.
type Attempt = (usize, Digest);

/// The outcome of a verification once it is known: whether the key matched.
type Verdict = watch::Receiver<Option<bool>>;

/// The argon2 verifications running and waiting.
#[derive(Debug)]
pub struct Verifier {
    running: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    /// The verifications under way.
    in_flight: Arc<Mutex<HashMap<Attempt, Verdict>>>,
}

impl Default for Verifier {
    fn default() -> Self {
        Verifier {
            running: Arc::new(Semaphore::new(PARALLEL_VERIFICATIONS)),
            waiting: Arc::new(AtomicUsize::new(0)),
            in_flight: Arc::default(),
        }
    }
}

impl Verifier {
    /// Returns the outcome of the verification of `presented` against `entry`: the one
    /// under way for the same key, or a new one. A new verification runs in its own
    /// tokio task, so it ends and fills the cache even if every request waiting for it
    /// is gone.
    fn verify(
        &self,
        entry: Arc<KeyEntry>,
        presented: PresentedKey,
        digest: Digest,
    ) -> Result<Verdict, RejectionReason> {
        let attempt = (Arc::as_ptr(&entry) as usize, digest);
        let mut in_flight = self.in_flight.lock().expect("the lock is never poisoned");
        if let Some(verdict) = in_flight.get(&attempt) {
            return Ok(verdict.clone());
        }
        if self.waiting.fetch_add(1, Ordering::Relaxed) >= QUEUED_VERIFICATIONS {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(RejectionReason::VerificationBusy);
        }
        let (sender, verdict) = watch::channel(None);
        in_flight.insert(attempt, verdict.clone());
        drop(in_flight);

        let listed = Listed {
            in_flight: self.in_flight.clone(),
            attempt,
        };
        let waiting = Waiting(self.waiting.clone());
        let running = self.running.clone();
        tokio::spawn(async move {
            let permit = running
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            drop(waiting);
            let verifying = entry.clone();
            let matches = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                verifying.stored.matches(&presented.secret)
            })
            .await
            .unwrap_or(false);
            if matches {
                entry.cache(digest);
            }
            let _ = sender.send(Some(matches));
            drop(listed);
        });
        Ok(verdict)
    }
}

/// Counts a verification in the queue while it lives.
struct Waiting(Arc<AtomicUsize>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Keeps a verification in the list of those under way while it lives.
struct Listed {
    in_flight: Arc<Mutex<HashMap<Attempt, Verdict>>>,
    attempt: Attempt,
}

impl Drop for Listed {
    fn drop(&mut self) {
        if let Ok(mut in_flight) = self.in_flight.lock() {
            in_flight.remove(&self.attempt);
        }
    }
}

/// Returns the entry of the key that authenticates the request for `task`.
pub async fn authenticate(
    task: &Task,
    keys: &KeyStore,
    headers: &HeaderMap,
    verifier: &Verifier,
) -> Result<Arc<KeyEntry>, RejectionReason> {
    let value = headers
        .get(AUTHORIZATION)
        .ok_or(RejectionReason::MissingKey)?;
    let value = value.to_str().map_err(|_| RejectionReason::InvalidHeader)?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or(RejectionReason::InvalidHeader)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(RejectionReason::InvalidHeader);
    }
    let presented =
        PresentedKey::decode(token.trim()).map_err(|_| RejectionReason::InvalidKeyEncoding)?;
    let entry = task
        .allowed_keys
        .get(&presented.id)
        .ok_or(RejectionReason::KeyNotAllowed)?
        .clone();

    let digest = keys.digest(&presented);
    if entry.is_cached(&digest) {
        return Ok(entry);
    }
    let mut verdict = verifier.verify(entry.clone(), presented, digest)?;
    // A verification that ended without a verdict (a panic) counts as a failure.
    let matches = verdict
        .wait_for(Option::is_some)
        .await
        .is_ok_and(|verdict| *verdict == Some(true));
    if !matches {
        return Err(RejectionReason::InvalidKey);
    }
    Ok(entry)
}

/// Reports whether a key that authenticated a request for the task `task_name` is still
/// in force in `table`: the keys file still contains the same entry, and the task still
/// allows it unless the task was removed. A reload may have revoked the key while the
/// request waited for its verification or sent its body.
pub fn key_in_force(table: &TaskTable, task_name: &str, entry: &Arc<KeyEntry>) -> bool {
    let same = |current: &Arc<KeyEntry>| Arc::ptr_eq(current, entry);
    let in_keys_file = table.keys.get(&entry.name).is_some_and(same);
    let allowed = table
        .task(task_name)
        .is_none_or(|task| task.allowed_keys.get(&entry.stored.id).is_some_and(same));
    in_keys_file && allowed
}
