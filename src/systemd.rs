//! The systemd glue: sockets inherited through socket activation, and `sd_notify`
//! messages (readiness, reload, stop, status, watchdog). Without `LISTEN_FDS` or
//! `NOTIFY_SOCKET` every function here does nothing, so the daemon runs the same
//! outside systemd.
#![allow(unsafe_code)]

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use nix::sys::socket::{AddressFamily, SockType, SockaddrLike, SockaddrStorage, sockopt};
use sd_notify::NotifyState;

/// A listening socket before it is handed to the runtime.
#[derive(Debug)]
pub enum StdListener {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

/// The sockets systemd passed, by the name given in `FileDescriptorName=`.
#[derive(Debug, Default)]
pub struct InheritedSockets {
    pub api: Option<StdListener>,
    pub metrics: Option<StdListener>,
    /// True when the daemon was socket-activated at all.
    pub activated: bool,
    /// The reason socket activation variables were present but ignored, for the log,
    /// which does not exist yet when the sockets are taken.
    pub ignored_because: Option<String>,
}

/// Takes the sockets passed with `LISTEN_FDS`, `LISTEN_PID` and `LISTEN_FDNAMES`, and
/// removes those variables from the environment.
///
/// The socket named `api` serves the API and the one named `metrics` serves metrics. A
/// single socket without a name (systemd calls it `unknown`) serves the API.
///
/// # Safety
///
/// Must be called before any other thread exists, because it changes the environment.
pub unsafe fn take_inherited_sockets() -> Result<InheritedSockets, String> {
    // Sockets meant for another process (LISTEN_PID differs) are not ours, whatever
    // LISTEN_FDNAMES contains; sd-notify would reject the names for the count mismatch.
    let for_this_process = sd_notify::listen_fds();
    let variables_set = std::env::var_os("LISTEN_FDS").is_some();
    // SAFETY: the caller guarantees that no other thread runs.
    let passed = unsafe { sd_notify::listen_fds_with_names_and_unset_env() };
    match for_this_process {
        Ok(fds) if fds.len() > 0 => {}
        Ok(_) if !variables_set => return Ok(InheritedSockets::default()),
        Ok(_) => {
            return Ok(InheritedSockets {
                ignored_because: Some("LISTEN_PID is another process or LISTEN_FDS is 0".into()),
                ..InheritedSockets::default()
            });
        }
        Err(error) => {
            return Ok(InheritedSockets {
                ignored_because: Some(error.to_string()),
                ..InheritedSockets::default()
            });
        }
    }
    let passed = passed.map_err(|error| format!("invalid socket activation variables: {error}"))?;
    let passed: Vec<(RawFd, String)> = passed.collect();
    let mut sockets = InheritedSockets {
        activated: !passed.is_empty(),
        ..InheritedSockets::default()
    };
    let unnamed_alone = passed.len() == 1 && is_unnamed(&passed[0].1);

    for (fd, name) in passed {
        // SAFETY: systemd passes these descriptors to this process for it to own, and
        // nothing else in the process has taken them.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let slot = match name.as_str() {
            "api" => &mut sockets.api,
            "metrics" => &mut sockets.metrics,
            other if unnamed_alone && is_unnamed(other) => &mut sockets.api,
            other => {
                return Err(format!(
                    "inherited socket {fd} has the name \"{other}\": name the sockets \
                     \"api\" and \"metrics\" with FileDescriptorName="
                ));
            }
        };
        if slot.is_some() {
            return Err(format!(
                "more than one inherited socket is named \"{name}\""
            ));
        }
        *slot = Some(listener_from_fd(owned, &name)?);
    }
    Ok(sockets)
}

/// Marks every descriptor above stderr close-on-exec, so that descriptors the daemon's
/// launcher left open (a shell's, a CI runner's) do not reach task processes. systemd
/// passes none besides the sockets, which are close-on-exec already.
pub fn close_inherited_fds_on_exec() {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<RawFd> = entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: the descriptor is only borrowed for one fcntl(2) call. If it was the
        // directory handle of the listing above, already closed, the call fails with
        // EBADF, which is ignored.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let _ = nix::fcntl::fcntl(
            borrowed,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
    }
}

fn is_unnamed(name: &str) -> bool {
    name.is_empty() || name == "unknown"
}

/// Checks that `fd` is a listening stream socket and wraps it.
fn listener_from_fd(fd: OwnedFd, name: &str) -> Result<StdListener, String> {
    let describe = |problem: String| format!("inherited socket \"{name}\": {problem}");
    let kind = nix::sys::socket::getsockopt(&fd, sockopt::SockType)
        .map_err(|error| describe(format!("not a socket ({error})")))?;
    if kind != SockType::Stream {
        return Err(describe(format!(
            "is a {kind:?} socket, but rtask needs a stream socket (ListenStream=)"
        )));
    }
    let listening = nix::sys::socket::getsockopt(&fd, sockopt::AcceptConn)
        .map_err(|error| describe(error.to_string()))?;
    if !listening {
        return Err(describe(
            "is not listening (Accept=yes is not supported)".into(),
        ));
    }
    let address: SockaddrStorage =
        nix::sys::socket::getsockname(std::os::fd::AsRawFd::as_raw_fd(&fd))
            .map_err(|error| describe(error.to_string()))?;
    let listener = match address.family() {
        Some(AddressFamily::Inet | AddressFamily::Inet6) => {
            StdListener::Tcp(std::net::TcpListener::from(fd))
        }
        Some(AddressFamily::Unix) => StdListener::Unix(std::os::unix::net::UnixListener::from(fd)),
        other => {
            return Err(describe(format!(
                "has the unsupported address family {other:?}"
            )));
        }
    };
    Ok(listener)
}

/// Sends `states` to the service manager, if there is one. Only the first failure is
/// logged as a warning, since the watchdog would repeat it every few seconds.
pub fn notify(states: &[NotifyState]) {
    static FAILED_BEFORE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if let Err(error) = sd_notify::notify(states) {
        if FAILED_BEFORE.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::debug!(%error, "failed to notify systemd");
        } else {
            tracing::warn!(%error, "failed to notify systemd; later failures are logged at debug level");
        }
    }
}

/// Tells systemd that a reload starts; `READY=1` must follow when it is done.
pub fn notify_reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[NotifyState::Reloading, now]),
        Err(error) => tracing::warn!(%error, "failed to read the monotonic clock"),
    }
}

/// Returns the interval for `WATCHDOG=1` pings, half of `WATCHDOG_USEC`, when systemd
/// has enabled the watchdog for this process.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|timeout| timeout / 2)
}

/// Sends `WATCHDOG=1` every `interval`. It runs on the runtime that serves requests, so
/// when that runtime is wedged the pings stop and systemd restarts the daemon.
pub async fn keep_watchdog_fed(interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    loop {
        ticks.tick().await;
        notify(&[NotifyState::Watchdog]);
    }
}
