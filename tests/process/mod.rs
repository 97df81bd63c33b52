//! Task processes and what they leave behind, checked in the `/proc` process table as
//! well as in the HTTP result: process groups, `setsid` escapes, resource limits,
//! bounded output, unread input, client disconnects, zombies and start failures.
//!
//! Each task carries a unique `RTASK_TEST_MARKER` in its `environment` table, which
//! every process it starts inherits, so [`procfs::with_marker`] finds them.

mod disconnect;
mod io;
mod leftovers;
mod reaping;
mod rlimits;

use std::time::Duration;

use crate::harness::procfs::{self, MarkerGuard, marker_environment, unique_marker};
use crate::harness::{Daemon, DaemonBuilder, wait_until};

/// Name of the key the tests create.
pub const KEY_NAME: &str = "ci";

/// Time a task process may take to appear after the request was sent.
pub const SPAWN_TIMEOUT: Duration = Duration::from_secs(10);

/// A daemon with the key `ci`, and the marker its tasks carry. Dropping it stops the
/// daemon and then kills whatever still carries the marker.
pub struct Fixture {
    pub daemon: Daemon,
    pub key: String,
    pub marker: String,
    _cleanup: MarkerGuard,
}

impl Fixture {
    /// Starts a daemon on `config`, in which every `{env}` becomes the inline table
    /// that sets the marker.
    pub async fn start(config: &str) -> Self {
        let marker = unique_marker();
        let cleanup = MarkerGuard::new(&marker);
        let config = config.replace("{env}", &marker_environment(&marker));
        let builder = DaemonBuilder::new();
        let key = builder.add_key(KEY_NAME);
        let daemon = builder.start(&config).await;
        Self {
            daemon,
            key,
            marker,
            _cleanup: cleanup,
        }
    }

    /// Returns the live processes that carry this fixture's marker.
    pub fn processes(&self) -> Vec<procfs::ProcessStat> {
        procfs::with_marker(&self.marker)
    }

    /// Waits until at least `count` processes carry the marker.
    pub async fn wait_for_processes(&self, count: usize) {
        wait_until(
            &format!("{count} task processes running"),
            SPAWN_TIMEOUT,
            async || self.processes().len() >= count,
        )
        .await;
    }
}
