//! Checking the `Authorization: Bearer` key of a request against a task's allowed keys.
//!
//! One request costs at most one argon2 verification: the id inside the presented key
//! selects the one stored hash to try. A key that passed is cached as a keyed hash and
//! accepted again with a constant-time compare until the keys file changes. Verifications
//! run on the blocking pool, a few at a time, so a flood of wrong keys cannot take more
//! than a bounded amount of memory (64 MiB each with the default parameters). Requests
//! beyond a short queue are rejected at once instead of waiting behind the flood.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use tokio::sync::Semaphore;

use crate::keys::{KeyStore, PresentedKey};
use crate::metrics::RejectionReason;
use crate::tasks::Task;

/// How many argon2 verifications may run at once.
pub const PARALLEL_VERIFICATIONS: usize = 2;

/// How many requests may wait for a verification; more get 503 at once. At about 55 ms
/// a verification (see BENCHMARKS.md), the last of them waits about a second.
pub const QUEUED_VERIFICATIONS: usize = 32;

/// The argon2 verifications running and waiting.
#[derive(Debug)]
pub struct Verifier {
    running: Arc<Semaphore>,
    waiting: AtomicUsize,
}

impl Default for Verifier {
    fn default() -> Self {
        Verifier {
            running: Arc::new(Semaphore::new(PARALLEL_VERIFICATIONS)),
            waiting: AtomicUsize::new(0),
        }
    }
}

/// Counts a request in the verification queue while it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Returns the name of the key that authenticates the request for `task`.
pub async fn authenticate(
    task: &Task,
    keys: &KeyStore,
    headers: &HeaderMap,
    verifier: &Verifier,
) -> Result<String, RejectionReason> {
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
        return Ok(entry.name.clone());
    }
    if verifier.waiting.fetch_add(1, Ordering::Relaxed) >= QUEUED_VERIFICATIONS {
        verifier.waiting.fetch_sub(1, Ordering::Relaxed);
        return Err(RejectionReason::VerificationBusy);
    }
    let waiting = Waiting(&verifier.waiting);
    let permit = verifier
        .running
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| RejectionReason::InvalidKey)?;
    drop(waiting);
    // Another request may have verified the same key while this one waited.
    if entry.is_cached(&digest) {
        return Ok(entry.name.clone());
    }
    let verifying = entry.clone();
    // The permit moves into the blocking task: a client that disconnects drops this
    // future, but the verification goes on and must keep its slot until it ends.
    let matches = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        verifying.stored.matches(&presented.secret)
    })
    .await
    .unwrap_or(false);
    if !matches {
        return Err(RejectionReason::InvalidKey);
    }
    entry.cache(digest);
    Ok(entry.name.clone())
}
