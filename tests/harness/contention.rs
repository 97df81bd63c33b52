//! CPU contention for tests of startup races. The daemon runs pinned to CPU 0 next to a
//! busy loop pinned to the same CPU, so a task it spawns runs late while the test, on the
//! other CPUs, reacts at once. A race that needs a late task then shows up in most runs
//! instead of a few.

#![expect(
    clippy::disallowed_methods,
    reason = "the busy loop is a helper process of the test"
)]

use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Path of `taskset` (util-linux).
const TASKSET: &str = "/usr/bin/taskset";

/// Returns the wrapper that pins a command to CPU 0, or `None` without `taskset`.
pub fn pin_to_cpu0() -> Option<[&'static str; 3]> {
    Path::new(TASKSET).is_file().then_some([TASKSET, "-c", "0"])
}

/// A busy loop pinned to CPU 0, killed when dropped. It ends by itself after three
/// million iterations (a few seconds), in case the test process dies first.
#[derive(Debug)]
pub struct CpuHog {
    child: Child,
}

impl CpuHog {
    /// Starts the loop. Returns `None` without `taskset`.
    pub fn start() -> Option<Self> {
        pin_to_cpu0()?;
        // taskset execs sh, so the child's pid is the loop's.
        let child = Command::new(TASKSET)
            .args(["-c", "0", "sh", "-c"])
            .arg("i=0; while [ $i -lt 3000000 ]; do i=$((i+1)); done")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start taskset");
        Some(Self { child })
    }
}

impl Drop for CpuHog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
