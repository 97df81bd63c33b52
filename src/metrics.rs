//! Every Prometheus metric of rtask, and the router that serves them.
//!
//! `task_duration_seconds` and `task_rejection_total` keep the names and labels of the
//! original Go rtask so that existing dashboards keep working; the `rtask_` metrics are
//! new.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// The registry and the handles of every metric.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    rejections: IntCounterVec,
    running: IntGaugeVec,
    reloads: IntCounterVec,
    last_reload_success: IntGauge,
    last_reload_success_time: Gauge,
    tasks_configured: IntGauge,
    keys_loaded: IntGauge,
    /// Per-task histograms, each registered with its own buckets and a `handler` const
    /// label, as the original does; kept with the buckets they were built with.
    durations: Mutex<HashMap<String, (Vec<f64>, HistogramVec)>>,
}

/// Why a request was rejected: the `reason` label of `task_rejection_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectionReason {
    MissingKey,
    InvalidHeader,
    InvalidKeyEncoding,
    KeyNotAllowed,
    InvalidKey,
    LimitExceeded,
    MaxConcurrent,
    InputTooLarge,
    /// Too many requests were waiting for an argon2 verification.
    VerificationBusy,
}

impl RejectionReason {
    pub fn label(self) -> &'static str {
        match self {
            RejectionReason::MissingKey => "missing_key",
            RejectionReason::InvalidHeader => "invalid_header",
            RejectionReason::InvalidKeyEncoding => "invalid_key_encoding",
            RejectionReason::KeyNotAllowed => "key_not_allowed",
            RejectionReason::InvalidKey => "invalid_key",
            RejectionReason::LimitExceeded => "limit_exceeded",
            RejectionReason::MaxConcurrent => "max_concurrent",
            RejectionReason::InputTooLarge => "input_too_large",
            RejectionReason::VerificationBusy => "verification_busy",
        }
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let rejections = IntCounterVec::new(
            Opts::new("task_rejection_total", "Total number of rejected requests"),
            &["handler", "reason"],
        )
        .expect("valid metric");
        let running = IntGaugeVec::new(
            Opts::new("rtask_tasks_running", "Runs of the task going on now"),
            &["handler"],
        )
        .expect("valid metric");
        let reloads = IntCounterVec::new(
            Opts::new(
                "rtask_config_reloads_total",
                "Reloads of the configuration and keys, by result",
            ),
            &["result"],
        )
        .expect("valid metric");
        let last_reload_success = IntGauge::new(
            "rtask_config_last_reload_success",
            "1 if the last reload succeeded, 0 if the old configuration is still in force",
        )
        .expect("valid metric");
        let last_reload_success_time = Gauge::new(
            "rtask_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful load of the configuration",
        )
        .expect("valid metric");
        let tasks_configured =
            IntGauge::new("rtask_tasks_configured", "Tasks in the configuration")
                .expect("valid metric");
        let keys_loaded =
            IntGauge::new("rtask_api_keys_loaded", "Keys in the keys file").expect("valid metric");

        for collector in [
            Box::new(rejections.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(running.clone()),
            Box::new(reloads.clone()),
            Box::new(last_reload_success.clone()),
            Box::new(last_reload_success_time.clone()),
            Box::new(tasks_configured.clone()),
            Box::new(keys_loaded.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        for result in ["success", "failure"] {
            reloads.with_label_values(&[result]);
        }

        Metrics {
            registry,
            rejections,
            running,
            reloads,
            last_reload_success,
            last_reload_success_time,
            tasks_configured,
            keys_loaded,
            durations: Mutex::new(HashMap::new()),
        }
    }

    pub fn reject(&self, task: &str, reason: RejectionReason) {
        self.rejections
            .with_label_values(&[task, reason.label()])
            .inc();
    }

    /// Returns the gauge of running task processes of `task`.
    pub fn running(&self, task: &str) -> IntGauge {
        self.running.with_label_values(&[task])
    }

    pub fn observe_duration(&self, task: &str, key_name: &str, status: &str, seconds: f64) {
        let durations = self.durations.lock().expect("metrics lock poisoned");
        if let Some((_, histogram)) = durations.get(task) {
            histogram
                .with_label_values(&[key_name, status])
                .observe(seconds);
        }
    }

    /// Makes the per-task metrics match `tasks` (name and buckets): registers new tasks
    /// and re-registers a task whose buckets changed. A removed task keeps its histogram,
    /// so its runs still going are counted and its series do not reset if it returns.
    pub fn sync_tasks(&self, tasks: &[(String, Vec<f64>)]) {
        let mut durations = self.durations.lock().expect("metrics lock poisoned");
        durations.retain(|name, (buckets, histogram)| {
            let changed = tasks.iter().any(|(n, b)| n == name && b != buckets);
            let keep = !changed;
            if !keep {
                let _ = self.registry.unregister(Box::new(histogram.clone()));
            }
            keep
        });
        for (name, buckets) in tasks {
            if durations.contains_key(name) {
                continue;
            }
            let options = HistogramOpts::new("task_duration_seconds", "Duration of task execution")
                .const_label("handler", name)
                .buckets(buckets.clone());
            let histogram =
                HistogramVec::new(options, &["api_key_used", "status"]).expect("valid metric");
            match self.registry.register(Box::new(histogram.clone())) {
                Ok(()) => {
                    durations.insert(name.clone(), (buckets.clone(), histogram));
                }
                Err(error) => tracing::error!(task = %name, %error, "failed to register metrics"),
            }
        }
        self.tasks_configured.set(tasks.len() as i64);
    }

    pub fn set_keys_loaded(&self, count: usize) {
        self.keys_loaded.set(count as i64);
    }

    pub fn record_reload(&self, success: bool) {
        let result = if success { "success" } else { "failure" };
        self.reloads.with_label_values(&[result]).inc();
        self.last_reload_success.set(i64::from(success));
        if success {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            self.last_reload_success_time.set(now.as_secs_f64());
        }
    }

    fn render(&self) -> Vec<u8> {
        let mut buffer = Vec::new();
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(%error, "failed to encode metrics");
        }
        buffer
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Builds the router of the metrics socket: `GET /metrics` in the text format.
pub fn metrics_app(metrics: std::sync::Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_get))
        .with_state(metrics)
}

async fn metrics_get(State(metrics): State<std::sync::Arc<Metrics>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        metrics.render(),
    )
}
