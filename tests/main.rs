//! Integration tests that run the real `rtask` binary against loopback sockets,
//! child processes and files in temporary directories.
//!
//! All modules live in this one test binary, so CI links it once.

mod api;
mod cli;
mod harness;
mod journald;
mod metrics;
mod process;
mod reload;
mod systemd;
