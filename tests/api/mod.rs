//! The HTTP API on the api socket: task runs, async results, limits, keys,
//! webhooks and the child environment.

mod async_tasks;
mod auth;
mod environment;
mod limits;
mod routes;
mod sync_tasks;
mod webhooks;

use crate::harness::{Daemon, DaemonBuilder};

/// Name of the key that [`start_with_key`] creates.
pub const KEY_NAME: &str = "ci";

/// Starts a daemon with `config` after adding the key `ci` to its keys file, and
/// returns the daemon with that key.
pub async fn start_with_key(config: &str) -> (Daemon, String) {
    let builder = DaemonBuilder::new();
    let key = builder.add_key(KEY_NAME);
    (builder.start(config).await, key)
}

/// Returns a TOML `command` array for a task that blocks until the file `release` exists,
/// then copies stdin to stdout. Tests create the file to let the task finish, so
/// they control how long it runs without sleeping.
pub fn gated_command(release: &std::path::Path) -> String {
    let release = release.to_str().expect("UTF-8 path");
    format!(r#"["sh", "-c", 'while [ ! -e "{release}" ]; do sleep 0.02; done; cat']"#)
}
