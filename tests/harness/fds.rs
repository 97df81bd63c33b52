//! Places inherited listening sockets at fds 3, 4, ... in a child process, the
//! way systemd passes sockets to a socket-activated service.
#![allow(
    unsafe_code,
    reason = "pre_exec is the only way to move sockets to fixed fd numbers in the child"
)]

use std::io;
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::libc;

/// First fd number of passed sockets (`SD_LISTEN_FDS_START`).
const FIRST_LISTEN_FD: RawFd = 3;

/// Lowest fd number used for the temporary copies made before moving sockets into
/// place. Well above 3 + the socket count, so a temporary copy never lands on a target.
const SCRATCH_FD_MIN: RawFd = 100;

/// Maximum number of sockets, so the child can use a stack array after fork.
const MAX_LISTEN_FDS: usize = 8;

/// Arranges for `sources` to appear at fds 3, 4, ... in the process `command` starts,
/// without the close-on-exec flag, so they survive `exec`.
pub fn pass_listen_fds(command: &mut Command, sources: Vec<RawFd>) {
    assert!(
        sources.len() <= MAX_LISTEN_FDS,
        "at most {MAX_LISTEN_FDS} listening fds are supported"
    );

    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe calls are allowed. It calls only fcntl(F_DUPFD_CLOEXEC),
    // dup2 and close_range, uses a stack array and reads a Vec allocated before
    // the fork. It neither allocates nor takes locks. Every source is first copied to a close-on-exec fd
    // >= SCRATCH_FD_MIN, so a source that already sits at 3 or 4 is not overwritten
    // before it is copied. dup2 clears close-on-exec on each target, and the scratch
    // copies disappear at exec.
    unsafe {
        command.pre_exec(move || {
            let mut scratch = [-1; MAX_LISTEN_FDS];
            for (slot, &source) in scratch.iter_mut().zip(&sources) {
                let copy = libc::fcntl(source, libc::F_DUPFD_CLOEXEC, SCRATCH_FD_MIN);
                if copy < 0 {
                    return Err(io::Error::last_os_error());
                }
                *slot = copy;
            }
            let mut next_fd = FIRST_LISTEN_FD;
            for &copy in &scratch[..sources.len()] {
                if libc::dup2(copy, next_fd) < 0 {
                    return Err(io::Error::last_os_error());
                }
                next_fd += 1;
            }
            // Like systemd, pass nothing else: fds the test process inherited
            // without close-on-exec get the flag too. Kernels before 5.11 lack
            // CLOSE_RANGE_CLOEXEC, and such fds then stay open in the daemon.
            let flags = libc::CLOSE_RANGE_CLOEXEC as libc::c_int;
            libc::close_range(next_fd as libc::c_uint, libc::c_uint::MAX, flags);
            Ok(())
        });
    }
}
