//! rtask runs admin-defined commands as authenticated HTTP endpoints.
//!
//! Module map:
//! - [`cli`]: the command line.
//! - [`config`]: the configuration file's structs, parser and checks.
//! - [`keys`]: API keys, byte-compatible with the original Go rtask's keys file.
//! - [`load`]: reads configuration, keys and secret files for startup, reload and checks.
//! - [`tasks`]: the immutable task table built from what was loaded.
//! - [`auth`]: Bearer key verification with a cache and bounded argon2 work.
//! - [`server`]: the API router, its handlers and the accept loop.
//! - [`runner`]: starting and supervising task processes.
//! - [`results`]: results of asynchronous runs.
//! - [`reload`]: file watching, SIGHUP, and the atomic table swap.
//! - [`systemd`]: socket activation and `sd_notify`.
//! - [`metrics`]: every Prometheus metric and the metrics router.
//! - [`logging`]: text, JSON or journald output.
//!
//! Architecture invariants:
//! - The HTTP layer only reads the task table; only [`reload`] stores a new one.
//! - A request loads the table once and uses that snapshot to its end.
//! - Only [`runner`] creates processes (clippy's `disallowed-methods` enforces it), and
//!   only it calls `waitpid`.
//! - No module logs a key, a webhook secret, a hash or a request body.

pub mod auth;
pub mod cli;
pub mod config;
pub mod keys;
pub mod limits;
pub mod load;
pub mod logging;
pub mod metrics;
pub mod reload;
pub mod results;
pub mod runner;
pub mod server;
pub mod systemd;
pub mod tasks;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::load::Paths;
use crate::metrics::Metrics;
use crate::reload::Reloader;
use crate::results::ResultStore;
use crate::runner::Supervisor;
use crate::server::AppState;
use crate::systemd::{InheritedSockets, StdListener};

/// The daemon's listeners: inherited sockets, and addresses for what was not inherited.
#[derive(Debug)]
pub struct ListenPlan {
    pub inherited: InheritedSockets,
    pub api_address: Option<String>,
    pub metrics_address: Option<String>,
}

/// An error that kept the daemon from starting or stopped it.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Config(load::LoadError),
    #[error("{0}")]
    Listen(String),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(paths: Paths, plan: ListenPlan) -> Result<(), DaemonError> {
    // Handlers go in first: SIGHUP's default action ends the process, and a reload
    // requested during startup is served once the reloader runs.
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let hangups = signal(SignalKind::hangup())?;
    let metrics = Arc::new(Metrics::new());
    let reloader = Reloader::start(paths, metrics.clone()).map_err(DaemonError::Config)?;
    let supervisor = Supervisor::start(metrics.clone())?;
    let results = Arc::new(ResultStore::default());
    let state = Arc::new(AppState {
        table: reloader.table(),
        results: results.clone(),
        metrics: metrics.clone(),
        supervisor: supervisor.clone(),
        verifier: auth::Verifier::default(),
    });

    let stop = CancellationToken::new();
    let activated = plan.inherited.activated;
    let InheritedSockets {
        api,
        metrics: metrics_socket,
        ..
    } = plan.inherited;
    let api = match api {
        Some(listener) => listener,
        None => bind(plan.api_address.as_deref().unwrap_or("localhost:8800")).await?,
    };
    let metrics_address = match (&metrics_socket, plan.metrics_address, activated) {
        (Some(_), _, _) => None,
        (None, Some(address), _) => Some(address),
        (None, None, false) => Some("localhost:9090".to_owned()),
        (None, None, true) => None,
    };
    let metrics_listener = match (metrics_socket, metrics_address) {
        (Some(listener), _) => Some(listener),
        (None, Some(address)) => Some(bind(&address).await?),
        (None, None) => {
            tracing::info!(
                "no metrics socket was passed and no --metrics-address given: serving no metrics"
            );
            None
        }
    };

    let api_server = tokio::spawn(serve_on(api, "api", server::app(state), stop.clone())?);
    let metrics_server = match metrics_listener {
        Some(listener) => Some(tokio::spawn(serve_on(
            listener,
            "metrics",
            metrics::metrics_app(metrics.clone()),
            stop.clone(),
        )?)),
        None => None,
    };

    // The watches exist before READY=1, so a change made right after it is seen.
    if let Some(file_watch) = reload::start_watching(&reloader) {
        reloader.catch_up();
        tokio::spawn(reload::watch(reloader.clone(), file_watch));
    }
    tokio::spawn(reload::reload_on_sighup(reloader.clone(), hangups));
    tokio::spawn(sweep_results(results));
    systemd::notify(&[NotifyState::Ready, NotifyState::Status(&reloader.status())]);
    if let Some(interval) = systemd::watchdog_interval() {
        tracing::info!(
            interval_ms = interval.as_millis() as u64,
            "sending watchdog pings"
        );
        tokio::spawn(systemd::keep_watchdog_fed(interval));
    }

    let signal_name = tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    };
    systemd::notify(&[NotifyState::Stopping]);
    let table = reloader.table().load_full();
    let grace = table.shutdown_grace;
    tracing::info!(
        signal = signal_name,
        grace_seconds = grace.as_secs(),
        "stopping"
    );
    stop.cancel();
    let longest_kill_grace = table.longest_kill_grace();
    shut_down(
        &supervisor,
        api_server,
        metrics_server,
        grace,
        longest_kill_grace,
    )
    .await;
    tracing::info!("stopped");
    Ok(())
}

/// Lets requests and runs in flight finish for up to `grace`, then stops the runs that
/// remain (SIGTERM, their kill grace, SIGKILL) and waits for their responses to go out.
async fn shut_down(
    supervisor: &Supervisor,
    api_server: tokio::task::JoinHandle<()>,
    metrics_server: Option<tokio::task::JoinHandle<()>>,
    grace: Duration,
    longest_kill_grace: Duration,
) {
    let deadline = tokio::time::Instant::now() + grace;
    if !supervisor.wait_idle(grace).await {
        tracing::warn!(
            running = supervisor.running_count(),
            "runs still going after the shutdown grace period, stopping them"
        );
        supervisor.stop_all();
        if !supervisor
            .wait_idle(runner::stop_duration(longest_kill_grace))
            .await
        {
            tracing::error!(
                running = supervisor.running_count(),
                "runs still going after SIGKILL, exiting anyway"
            );
        }
    }
    // The runs are over; what remains is sending their responses.
    let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
    let limit = remaining.max(Duration::from_secs(1));
    if tokio::time::timeout(limit, api_server).await.is_err() {
        tracing::warn!("connections still open after the shutdown grace period, closing them");
    }
    if let Some(metrics_server) = metrics_server {
        metrics_server.abort();
    }
}

async fn bind(address: &str) -> Result<StdListener, DaemonError> {
    let listener = TcpListener::bind(address)
        .await
        .map_err(|error| DaemonError::Listen(format!("failed to listen on {address}: {error}")))?;
    Ok(StdListener::Tcp(listener.into_std()?))
}

/// Returns the future that serves `router` on `listener`, after logging the address.
fn serve_on(
    listener: StdListener,
    socket: &'static str,
    router: axum::Router,
    stop: CancellationToken,
) -> io::Result<impl Future<Output = ()> + Send + 'static> {
    let serving: std::pin::Pin<Box<dyn Future<Output = ()> + Send>> = match listener {
        StdListener::Tcp(listener) => {
            listener.set_nonblocking(true)?;
            let listener = TcpListener::from_std(listener)?;
            tracing::info!(socket = %socket, address = %listener.local_addr()?, "listening");
            Box::pin(server::serve(listener, router, stop))
        }
        StdListener::Unix(listener) => {
            listener.set_nonblocking(true)?;
            let listener = UnixListener::from_std(listener)?;
            let address = listener.local_addr()?;
            let path = address
                .as_pathname()
                .map_or_else(|| "(unnamed)".to_owned(), |path| path.display().to_string());
            tracing::info!(socket = %socket, address = %path, "listening");
            Box::pin(server::serve(listener, router, stop))
        }
    };
    Ok(serving)
}

async fn sweep_results(results: Arc<ResultStore>) {
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    loop {
        ticks.tick().await;
        results.sweep();
    }
}
