//! The HTTP side: the API router, its shared state, and the accept loop that serves a
//! router on a TCP or unix listener until shutdown.

mod error;
mod routes;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::MatchedPath;
use axum::http::Request;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::serve::Listener;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

pub use error::ApiError;

use crate::auth;
use crate::metrics::{Metrics, RejectionReason};
use crate::results::ResultStore;
use crate::runner::{Outcome, RunRequest, Supervisor};
use crate::tasks::{Task, TaskTable};

/// The state shared by every request handler.
#[derive(Debug)]
pub struct AppState {
    /// The task table in force; only the reloader stores into it.
    pub table: Arc<ArcSwap<TaskTable>>,
    pub results: Arc<ResultStore>,
    pub metrics: Arc<Metrics>,
    pub supervisor: Arc<Supervisor>,
    /// Bounds the argon2 verifications that run and wait at once.
    pub verifier: auth::Verifier,
}

impl AppState {
    /// Counts a rejection and returns the error response for it.
    pub fn reject(&self, task: &Task, reason: RejectionReason) -> ApiError {
        self.metrics.reject(&task.name, reason);
        tracing::debug!(task = %task.name, reason = reason.label(), "request rejected");
        ApiError::rejected(reason)
    }

    /// Runs a task to its end and records the outcome in the log and the metrics.
    pub async fn run(&self, request: RunRequest, cancel: CancellationToken) -> Outcome {
        let task = request.task.clone();
        let task_id = request.task_id.clone();
        let key_name = request.key_name.clone();
        let outcome = self.supervisor.run(request, cancel).await;

        let seconds = outcome.duration.as_secs_f64();
        let status = outcome.status.label();
        self.metrics
            .observe_duration(&task.name, &key_name, status, seconds);
        tracing::info!(
            task = %task.name,
            task_id = %task_id,
            key_name = %key_name,
            status,
            exit_code = outcome.exit_code,
            duration_seconds = seconds,
            stdout_bytes = outcome.stdout.bytes.len() as u64 + outcome.stdout.dropped,
            stderr_bytes = outcome.stderr.bytes.len() as u64 + outcome.stderr.dropped,
            "task finished"
        );
        outcome
    }
}

/// Builds the API router.
pub fn app(state: Arc<AppState>) -> Router {
    // The span carries the route template, never the raw path: `/wh/{*secret}` would
    // otherwise write webhook secrets to the log.
    let trace = TraceLayer::new_for_http()
        .make_span_with(|request: &Request<_>| {
            let route = request
                .extensions()
                .get::<MatchedPath>()
                .map_or("unmatched", |path| path.as_str());
            tracing::debug_span!("request", method = %request.method(), route)
        })
        .on_failure(());
    Router::new()
        .route("/tasks/{name}", post(routes::task_run))
        .route("/tasks/{name}/{id}", get(routes::task_status))
        // A wildcard, so that a secret containing '/' still matches.
        .route("/wh/{*secret}", post(routes::webhook_run))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(trace)
        .layer(CatchPanicLayer::custom(|_| {
            tracing::error!("a request handler panicked");
            ApiError::Internal.into_response()
        }))
        .with_state(state)
}

/// How long a stopping server keeps connections it accepted but has no request on yet,
/// so that a request a client already sent is served rather than cut off.
const LINGER_BEFORE_CLOSE: Duration = Duration::from_millis(250);

/// How long a client may take to send a request's headers, and how long an idle
/// keep-alive connection stays open.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(15);

/// Read buffer limit of a connection, which bounds the request head. hyper returns 431
/// once the buffer is full without a complete head. One read may overshoot the limit,
/// so a somewhat larger head can pass: up to about twice this size, an estimate.
/// hyper's own default lets a pending head grow to about 400 KiB. Bodies stream through
/// the buffer and are not limited by it.
const MAX_READ_BUFFER: usize = 16 * 1024;

/// Connections served at once. Past this, new connections wait in the listen backlog,
/// so that idle or slow clients cannot use up the daemon's file descriptors.
// NOTE: a fixed number. With MAX_READ_BUFFER it bounds the memory of pending request
// heads to about 128 MiB; the daemon raises its own descriptor limit at startup.
pub const MAX_CONNECTIONS: usize = 4096;

/// Serves `router` on `listener` until `stop` is cancelled, then stops accepting and
/// waits for the requests in flight to end.
pub async fn serve<L>(mut listener: L, router: Router, stop: CancellationToken)
where
    L: Listener,
{
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_READ_BUFFER);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = stop.cancelled() => break,
        };
        let (io, _) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => break,
        };
        let service = TowerToHyperService::new(router.clone());
        let connection = builder.serve_connection(TokioIo::new(io), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended with an error");
            }
            drop(slot);
        });
    }
    // The listening socket closes here; with socket activation systemd keeps its own
    // copy, so new connections wait in its backlog for the next instance.
    drop(listener);
    tokio::time::sleep(LINGER_BEFORE_CLOSE).await;
    graceful.shutdown().await;
}
