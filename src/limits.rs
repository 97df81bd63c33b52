//! Resource limits for task processes: the `rlimits` tables of the configuration, their
//! check against the daemon's own hard limits, and the values applied in the child.

use nix::sys::resource::{Resource, getrlimit};
use serde::Deserialize;

/// A `rlimits` table. Each value is set as both the soft and the hard limit of the child.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rlimits {
    /// CPU time, in seconds.
    pub cpu: Option<u64>,
    /// Address space, in bytes.
    #[serde(rename = "as")]
    pub address_space: Option<u64>,
    /// Data segment, in bytes.
    pub data: Option<u64>,
    /// Largest file the process may write, in bytes.
    pub fsize: Option<u64>,
    /// Open file descriptors.
    pub nofile: Option<u64>,
    /// Processes of the user that runs rtask; the kernel does not apply it to root.
    pub nproc: Option<u64>,
    /// Core dump size, in bytes.
    pub core: Option<u64>,
    /// Stack size, in bytes.
    pub stack: Option<u64>,
    /// Locked memory, in bytes.
    pub memlock: Option<u64>,
}

impl Rlimits {
    fn entries(&self) -> [(&'static str, Resource, Option<u64>); 9] {
        [
            ("cpu", Resource::RLIMIT_CPU, self.cpu),
            ("as", Resource::RLIMIT_AS, self.address_space),
            ("data", Resource::RLIMIT_DATA, self.data),
            ("fsize", Resource::RLIMIT_FSIZE, self.fsize),
            ("nofile", Resource::RLIMIT_NOFILE, self.nofile),
            ("nproc", Resource::RLIMIT_NPROC, self.nproc),
            ("core", Resource::RLIMIT_CORE, self.core),
            ("stack", Resource::RLIMIT_STACK, self.stack),
            ("memlock", Resource::RLIMIT_MEMLOCK, self.memlock),
        ]
    }

    /// Returns the task's limits, with `defaults` filling what the task leaves unset.
    pub fn or(&self, defaults: &Rlimits) -> Rlimits {
        Rlimits {
            cpu: self.cpu.or(defaults.cpu),
            address_space: self.address_space.or(defaults.address_space),
            data: self.data.or(defaults.data),
            fsize: self.fsize.or(defaults.fsize),
            nofile: self.nofile.or(defaults.nofile),
            nproc: self.nproc.or(defaults.nproc),
            core: self.core.or(defaults.core),
            stack: self.stack.or(defaults.stack),
            memlock: self.memlock.or(defaults.memlock),
        }
    }

    /// Returns the limits to apply between fork and exec, as (resource, soft, hard).
    /// `inherited_nofile` is the descriptor limit the daemon started with; a task
    /// that sets no `nofile` gets it back, since the daemon raised its own.
    pub fn to_apply(&self, inherited_nofile: (u64, u64)) -> Vec<(Resource, u64, u64)> {
        let mut limits: Vec<(Resource, u64, u64)> = self
            .entries()
            .into_iter()
            .filter_map(|(_, resource, value)| value.map(|value| (resource, value, value)))
            .collect();
        if self.nofile.is_none() {
            let (soft, hard) = inherited_nofile;
            limits.push((Resource::RLIMIT_NOFILE, soft, hard));
        }
        limits
    }
}

/// Rejects a limit above the daemon's own hard limit: a child could not raise it, so
/// applying it would fail at run time on every request.
pub fn check(rlimits: &Rlimits) -> Result<(), String> {
    for (name, resource, value) in rlimits.entries() {
        let Some(value) = value else { continue };
        let (_, hard) = getrlimit(resource)
            .map_err(|error| format!("failed to read the daemon's {name} limit: {error}"))?;
        if value > hard {
            let directive = format!("Limit{}=", name.to_ascii_uppercase());
            return Err(format!(
                "{name} = {value} is above rtask's own hard limit {hard}: lower it, \
                 or raise the service's limit ({directive} in the systemd unit)"
            ));
        }
    }
    Ok(())
}

/// Raises the daemon's soft limit of open files to its hard limit, as the original does,
/// so that many connections and task pipes do not run out of descriptors. Returns the
/// limit it started with, for the task processes.
pub fn raise_nofile() -> (u64, u64) {
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return (1024, 1024);
    };
    if soft < hard
        && let Err(error) = nix::sys::resource::setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::warn!(%error, soft, hard, "failed to raise the open files limit");
    }
    (soft, hard)
}
