//! The API handlers: `task_run`, `task_status` and `webhook_run`, and the request
//! checks they share in their fixed order: authentication, rate limit, body size, the
//! credential again (a reload may have revoked it meanwhile), concurrency slot.

use std::sync::Arc;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::http::header::CONTENT_LENGTH;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::AppState;
use super::error::ApiError;
use crate::auth;
use crate::keys::KeyEntry;
use crate::metrics::RejectionReason;
use crate::results::RunResult;
use crate::runner::{Outcome, RunRequest};
use crate::tasks::Task;

/// `POST /tasks/{name}`: runs a task for a client with an API key.
pub async fn task_run(
    State(state): State<Arc<AppState>>,
    name: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Path(name) = name.map_err(|rejection| invalid_path(&rejection))?;
    let table = state.table.load_full();
    let task = table.task(&name).ok_or(ApiError::TaskNotFound)?.clone();
    let entry = auth::authenticate(&task, &table.keys, &headers, &state.verifier)
        .await
        .map_err(|reason| state.reject(&task, reason))?;
    execute(state, task, Caller::Key(entry), headers, body).await
}

/// `POST /wh/{secret}`: runs the task that the webhook secret selects.
pub async fn webhook_run(
    State(state): State<Arc<AppState>>,
    secret: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Path(secret) = secret.map_err(|rejection| invalid_path(&rejection))?;
    let table = state.table.load_full();
    let webhook = table.webhook(&secret).ok_or(ApiError::NotFound)?.clone();
    let caller = Caller::Webhook {
        name: webhook.name,
        secret,
    };
    execute(state, webhook.task, caller, headers, body).await
}

/// The caller of a run: the key or the webhook secret that authenticated the request.
enum Caller {
    Key(Arc<KeyEntry>),
    Webhook { name: String, secret: String },
}

impl Caller {
    /// Returns the caller's name for logs, metrics and `RTASK_KEY_NAME`.
    fn name(&self) -> &str {
        match self {
            Caller::Key(entry) => &entry.name,
            Caller::Webhook { name, .. } => name,
        }
    }

    /// Checks that the credential is still in force in the current task table. Returns
    /// the error response for one that a reload revoked.
    fn check_in_force(&self, state: &AppState, task: &Task) -> Result<(), ApiError> {
        let table = state.table.load();
        let in_force = match self {
            Caller::Key(entry) => auth::key_in_force(&table, &task.name, entry),
            Caller::Webhook { secret, .. } => table
                .webhook(secret)
                .is_some_and(|webhook| webhook.task.name == task.name),
        };
        if in_force {
            return Ok(());
        }
        tracing::info!(
            task = %task.name,
            caller = self.name(),
            "request rejected: a reload revoked its credential while the body arrived"
        );
        match self {
            Caller::Key(_) => Err(state.reject(task, RejectionReason::InvalidKey)),
            Caller::Webhook { .. } => Err(ApiError::NotFound),
        }
    }
}

/// `GET /tasks/{name}/{id}`: the result of an asynchronous run. Polls follow the key
/// rules of the task as configured now; for a task removed since, those of the
/// definition the run started with.
pub async fn task_status(
    State(state): State<Arc<AppState>>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path((name, task_id)) = path.map_err(|rejection| invalid_path(&rejection))?;
    let table = state.table.load_full();
    let stored = state
        .results
        .get(&task_id)
        .filter(|(task, _)| task.name == name);
    let task = match (table.task(&name), &stored) {
        (Some(task), _) => task.clone(),
        (None, Some((task, _))) => task.clone(),
        (None, None) => return Err(ApiError::TaskNotFound),
    };
    let entry = auth::authenticate(&task, &table.keys, &headers, &state.verifier)
        .await
        .map_err(|reason| state.reject(&task, reason))?;
    // A removed task's runs keep its old key rules, which may still list a key that the
    // keys file no longer contains.
    if !auth::key_in_force(&table, &name, &entry) {
        return Err(state.reject(&task, RejectionReason::InvalidKey));
    }
    match stored {
        Some((_, result)) => Ok(Json(result).into_response()),
        None => Err(ApiError::TaskNotFound),
    }
}

fn invalid_path(rejection: &PathRejection) -> ApiError {
    ApiError::BadRequest(rejection.body_text())
}

async fn execute(
    state: Arc<AppState>,
    task: Arc<Task>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    if let Some(limiter) = &task.limiter
        && limiter.check().is_err()
    {
        return Err(state.reject(&task, RejectionReason::LimitExceeded));
    }
    let input = read_body(&state, &task, &headers, body).await?;
    caller.check_in_force(&state, &task)?;
    let Some(admission) = state.supervisor.admit(task.config.kill_grace()) else {
        tracing::info!(
            task = %task.name,
            caller = caller.name(),
            "request rejected: the shutdown grace period is over"
        );
        return Err(ApiError::ShuttingDown);
    };
    let permit = match &task.slots {
        Some(slots) => match slots.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => return Err(state.reject(&task, RejectionReason::MaxConcurrent)),
        },
        None => None,
    };

    let task_id = new_task_id();
    let request = RunRequest {
        header_env: header_env(&task, &headers),
        task: task.clone(),
        task_id: task_id.clone(),
        key_name: caller.name().to_owned(),
        input,
        admission,
    };

    if task.config.is_async {
        state.results.register(&task_id, task.clone());
        let running = state.clone();
        let response = Json(json!({ "task_id": task_id })).into_response();
        tokio::spawn(async move {
            let outcome = running.run(request, CancellationToken::new()).await;
            let retention = task.config.result_retention();
            running
                .results
                .complete(&task_id, RunResult::from_outcome(&outcome), retention);
            drop(permit);
        });
        return Ok(response);
    }

    // The run goes on in its own tokio task, so a client that disconnects, which drops
    // this future, does not stop it unless `cancelOnDisconnect` is set.
    let cancel = CancellationToken::new();
    let cancel_on_drop = task
        .config
        .cancel_on_disconnect
        .then(|| cancel.clone().drop_guard());
    let running = state.clone();
    let run = tokio::spawn(async move {
        let outcome = running.run(request, cancel).await;
        drop(permit);
        outcome
    });
    let outcome: Outcome = run.await.map_err(|error| {
        tracing::error!(task = %task.name, %error, "task supervision failed");
        ApiError::Internal
    })?;
    if let Some(guard) = cancel_on_drop {
        guard.disarm();
    }
    Ok(Json(RunResult::from_outcome(&outcome)).into_response())
}

/// Maximum pause between two parts of a request body.
const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Maximum time a whole request body may take, so that a trickle of bytes cannot hold
/// a connection for hours.
const BODY_READ_LIMIT: std::time::Duration = std::time::Duration::from_secs(300);

/// Reads the body, rejecting it as soon as it exceeds `maxInputBytes`.
async fn read_body(
    state: &AppState,
    task: &Task,
    headers: &HeaderMap,
    mut body: Body,
) -> Result<Bytes, ApiError> {
    let limit = task.config.max_input_bytes();
    let too_large = || state.reject(task, RejectionReason::InputTooLarge);
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(too_large());
    }

    let mut input = Vec::new();
    let deadline = tokio::time::Instant::now() + BODY_READ_LIMIT;
    loop {
        let next_frame = tokio::time::timeout(BODY_READ_TIMEOUT, body.frame());
        let Ok(Ok(frame)) = tokio::time::timeout_at(deadline, next_frame).await else {
            tracing::debug!(task = %task.name, "timed out reading a request body");
            return Err(ApiError::BodyTimeout);
        };
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|error| {
            ApiError::BadRequest(format!("failed to read the request body: {error}"))
        })?;
        if let Some(data) = frame.data_ref() {
            if input.len() + data.len() > limit {
                return Err(too_large());
            }
            input.extend_from_slice(data);
        }
    }
    Ok(Bytes::from(input))
}

/// Builds `REQUEST_HEADER_*` variables: the header name upper-cased with every character
/// outside `[A-Za-z0-9_]` replaced by `_`, several values joined with `,`. A header the
/// request lacks gives an empty variable, as in the original.
fn header_env(task: &Task, headers: &HeaderMap) -> Vec<(String, String)> {
    task.config
        .pass_request_headers
        .iter()
        .map(|header| {
            let values: Vec<String> = headers
                .get_all(header.as_str())
                .iter()
                .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
                .collect();
            (
                format!("REQUEST_HEADER_{}", env_name(header)),
                values.join(","),
            )
        })
        .collect()
}

fn env_name(header: &str) -> String {
    header
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// Returns 16 lowercase base32 characters: 80 random bits.
fn new_task_id() -> String {
    let mut bytes = [0u8; 10];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    data_encoding::BASE32_NOPAD
        .encode(&bytes)
        .to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_name_replaces_and_uppercases() {
        assert_eq!(env_name("X-Custom-Header"), "X_CUSTOM_HEADER");
        assert_eq!(env_name("x.y z"), "X_Y_Z");
    }

    #[test]
    fn task_id_is_16_base32() {
        let id = new_task_id();
        assert_eq!(id.len(), 16);
        assert!(
            id.chars()
                .all(|c| c.is_ascii_lowercase() || ('2'..='7').contains(&c))
        );
    }
}
