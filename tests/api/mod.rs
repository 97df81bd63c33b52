//! The HTTP API on the api socket: task runs, async results, limits, keys,
//! webhooks and the child environment.

mod async_tasks;
mod auth;
mod environment;
mod limits;
mod routes;
mod sync_tasks;
mod webhooks;

use std::path::PathBuf;

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

/// Starts a daemon with the key `ci` and one task `task` that blocks until the file
/// `release` exists, then copies stdin to stdout. Tests create the file to let the
/// task finish, so they control how long it runs without sleeping. `options` are more
/// lines of the task's table. Returns the daemon, the key and the release path.
pub async fn start_gated(task: &str, options: &str) -> (Daemon, String, PathBuf) {
    let builder = DaemonBuilder::new();
    let key = builder.add_key(KEY_NAME);
    let release = builder.path("release");
    let release_text = release.to_str().expect("UTF-8 path");
    let daemon = builder
        .start(&format!(
            r#"
[tasks.{task}]
command = ["sh", "-c", 'while [ ! -e "{release_text}" ]; do sleep 0.02; done; cat']
apiKeyNames = ["{KEY_NAME}"]
{options}
"#
        ))
        .await;
    (daemon, key, release)
}
