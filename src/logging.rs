//! Log output: text or JSON on stderr, or native journald entries whose fields
//! (`TASK`, `TASK_ID`, `KEY_NAME`, `STATUS`, `EXIT_CODE`, `DURATION_SECONDS`, ...)
//! `journalctl` can filter on.

use std::io::IsTerminal;
use std::os::fd::AsFd;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::cli::LogFormat;

/// Installs the global subscriber. The level comes from `RUST_LOG`, default `info`.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let use_journal = match format {
        LogFormat::Journald => true,
        LogFormat::Auto => stderr_is_journal(),
        LogFormat::Text | LogFormat::Json => false,
    };

    if use_journal {
        match tracing_journald::layer() {
            Ok(layer) => {
                let layer = layer
                    .with_field_prefix(None)
                    .with_syslog_identifier("rtask".to_owned());
                registry.with(layer).init();
                return;
            }
            Err(error) => {
                // Fall through to stderr, which systemd also sends to the journal.
                eprintln!("rtask: failed to connect to the journal, logging to stderr: {error}");
            }
        }
    }
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if format == LogFormat::Json {
        registry.with(stderr.json()).init();
    } else {
        registry.with(stderr).init();
    }
}

/// Reports whether stderr is the journal stream systemd set up for this service:
/// `JOURNAL_STREAM` contains the device and inode of that stream, and stderr may since have
/// been redirected elsewhere.
fn stderr_is_journal() -> bool {
    let Ok(value) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((device, inode)) = value.split_once(':') else {
        return false;
    };
    let Ok(stat) = nix::sys::stat::fstat(std::io::stderr().as_fd()) else {
        return false;
    };
    device.parse() == Ok(stat.st_dev) && inode.parse() == Ok(stat.st_ino)
}
