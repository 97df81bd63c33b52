//! The daemon's lifecycle: load the configuration, open the listeners, serve, reload
//! and watch, and stop in order on SIGTERM or SIGINT.

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
use crate::{auth, load, metrics, reload, server, systemd};

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
    let (api, metrics_listener) = open_listeners(plan).await?;
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

    start_reloading(&reloader, hangups);
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
    let grace = reloader.table().load().shutdown_grace;
    tracing::info!(
        signal = signal_name,
        grace_seconds = grace.as_secs(),
        "stopping"
    );
    stop.cancel();
    // A second SIGTERM or SIGINT ends the grace period at once.
    let second_signal = async {
        tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        }
    };
    shut_down(
        &supervisor,
        api_server,
        metrics_server,
        grace,
        second_signal,
    )
    .await;
    tracing::info!("stopped");
    Ok(())
}

/// Starts reloading on file changes and on SIGHUP. The watches exist when this returns,
/// before READY=1, so a change made right after it is seen.
fn start_reloading(reloader: &Arc<Reloader>, hangups: tokio::signal::unix::Signal) {
    let file_watch = reload::start_watching(reloader);
    if file_watch.is_some() {
        reloader.catch_up();
    }
    tokio::spawn(reload::watch(reloader.clone(), file_watch, hangups));
}

/// How long the responses of the runs stopped at the end of the shutdown grace period
/// may take to go out before their connections are closed.
const SEND_RESPONSES_LIMIT: Duration = Duration::from_secs(1);

/// Lets requests and runs in flight finish for up to the shutdown grace, or until
/// `second_signal`. A request that arrives in that time on a connection accepted before
/// the stop still runs, so a restart rejects no request. After that no new run is
/// admitted, the remaining runs are stopped (SIGTERM, their kill grace, SIGKILL), and
/// their responses are sent.
async fn shut_down(
    supervisor: &Supervisor,
    mut api_server: tokio::task::JoinHandle<()>,
    metrics_server: Option<tokio::task::JoinHandle<()>>,
    grace: Duration,
    second_signal: impl Future<Output = &'static str>,
) {
    let deadline = tokio::time::Instant::now() + grace;
    let mut connections_closed = false;
    // Once the API server has closed its last connection no request can admit a run,
    // so waiting for the runs after that waits for the last of them.
    let drain = async {
        let _ = (&mut api_server).await;
        connections_closed = true;
        supervisor.idle().await;
    };
    let drained = tokio::select! {
        () = drain => true,
        () = tokio::time::sleep_until(deadline) => false,
        signal = second_signal => {
            tracing::info!(signal, "second signal received, ending the shutdown grace period");
            false
        }
    };
    supervisor.close();
    if !drained {
        tracing::info!("shutdown grace period over, admitting no new run");
        if supervisor.running_count() > 0 {
            tracing::warn!(
                running = supervisor.running_count(),
                "stopping the runs still going"
            );
        }
        if !supervisor.stop_all().await {
            tracing::error!(
                running = supervisor.running_count(),
                "runs still going after SIGKILL, exiting anyway"
            );
        }
    }
    // The runs are over; what remains is sending their responses.
    if !connections_closed
        && tokio::time::timeout(SEND_RESPONSES_LIMIT, api_server)
            .await
            .is_err()
    {
        tracing::warn!("connections still open after the shutdown grace period, closing them");
    }
    if let Some(metrics_server) = metrics_server {
        metrics_server.abort();
    }
}

/// Returns the API listener and the metrics listener, if any: the inherited ones, and
/// for what was not inherited the given addresses. Without socket activation the
/// original's default addresses apply; socket-activated without a metrics socket and
/// without `--metrics-address`, no metrics are served.
async fn open_listeners(
    plan: ListenPlan,
) -> Result<(StdListener, Option<StdListener>), DaemonError> {
    let activated = plan.inherited.activated;
    if let Some(reason) = &plan.inherited.ignored_because {
        tracing::warn!(reason = %reason, "ignoring the socket activation variables");
    }
    let InheritedSockets {
        api,
        metrics: metrics_socket,
        ..
    } = plan.inherited;
    let api = match api {
        Some(listener) => listener,
        None => bind(plan.api_address.as_deref().unwrap_or("localhost:8800")).await?,
    };
    if let Some(listener) = metrics_socket {
        return Ok((api, Some(listener)));
    }
    let metrics_address = match (plan.metrics_address, activated) {
        (Some(address), _) => address,
        (None, false) => "localhost:9090".to_owned(),
        (None, true) => {
            tracing::info!(
                "no metrics socket was passed and no --metrics-address given: serving no metrics"
            );
            return Ok((api, None));
        }
    };
    Ok((api, Some(bind(&metrics_address).await?)))
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
