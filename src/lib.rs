//! rtask runs admin-defined commands as authenticated HTTP endpoints.
//!
//! Module map:
//! - [`cli`]: the command line.
//! - [`config`]: the configuration file's structs, parser and checks.
//! - [`keys`]: API keys, byte-compatible with the original Go rtask's keys file.
//! - `daemon`: the `run` entry point: listeners, background jobs, shutdown.
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
mod daemon;
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

pub use daemon::{DaemonError, ListenPlan, run};
