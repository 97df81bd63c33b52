//! The command line.

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Run admin-defined commands as authenticated HTTP endpoints.
#[derive(Debug, Parser)]
#[command(name = "rtask", version, about, long_about = None)]
pub struct Cli {
    /// Configuration file [default: ./config.toml if it exists, else /etc/rtask/config.toml]
    #[arg(long, global = true, env = "RTASK_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// API keys file [default: ./keys.toml, or /etc/rtask/keys.toml when the configuration defaults to /etc/rtask/config.toml]
    #[arg(long, global = true, env = "RTASK_API_KEYS_FILE", value_name = "PATH")]
    pub api_keys_file: Option<PathBuf>,

    /// Log output: `auto` writes to the journal when stderr is connected to it, else text
    #[arg(long, global = true, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Auto)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the API and the metrics
    Run(RunArgs),
    /// Generate an API key, store its hash in the keys file and print the key
    AddKey {
        /// Name of the key, as listed in `apiKeyNames`
        name: String,
    },
    /// Remove a key from the keys file; a running daemon rejects it at once
    RemoveKey {
        /// Name of the key to remove
        name: String,
    },
    /// Check the configuration, keys and webhook secret files as a reload would
    CheckConfig,
    /// Print a shell completion script
    Completions {
        /// Shell to complete for
        shell: clap_complete::Shell,
    },
    /// Print the manual page in roff format
    #[command(hide = true)]
    Man,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Address of the API when no `api` socket is inherited from systemd [default: localhost:8800]
    #[arg(long, value_name = "HOST:PORT")]
    pub api_address: Option<String>,

    /// Address of the metrics when no `metrics` socket is inherited from systemd [default: localhost:9090]
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_address: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Auto,
    Text,
    Json,
    Journald,
}

impl Cli {
    /// Returns the configuration and keys paths. Without options or environment, the
    /// original's defaults `./config.toml` and `./keys.toml` apply when `./config.toml`
    /// exists, and the packaged `/etc/rtask/config.toml` and `/etc/rtask/keys.toml`
    /// otherwise. A configuration given explicitly keeps the keys in `./keys.toml`, as
    /// in the original.
    pub fn paths(&self) -> crate::load::Paths {
        // symlink_metadata: a dangling ./config.toml link still means "use ./config.toml",
        // so the error names it instead of a file in /etc the user never mentioned.
        let local = std::fs::symlink_metadata("config.toml").is_ok();
        let packaged = self.config.is_none() && !local;
        let directory = if packaged {
            Path::new("/etc/rtask")
        } else {
            Path::new(".")
        };
        crate::load::Paths {
            config: self
                .config
                .clone()
                .unwrap_or_else(|| directory.join("config.toml")),
            keys: self
                .api_keys_file
                .clone()
                .unwrap_or_else(|| directory.join("keys.toml")),
        }
    }
}
