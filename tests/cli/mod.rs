//! Subcommands other than the HTTP API: key management, config checks,
//! listening addresses, completions and the man page.

mod config;
mod keys;
mod listen;
mod output;
