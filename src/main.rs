//! The `rtask` binary: parses the command line and dispatches to the library.

use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use rtask::cli::{Cli, Command};
use rtask::{DaemonError, ListenPlan, load, systemd};

/// Exit status for an invalid configuration (EX_CONFIG from sysexits.h).
const EXIT_CONFIG: u8 = 78;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let paths = cli.paths();
    match cli.command {
        Command::Run(args) => {
            // SAFETY: no other thread exists yet; the runtime starts below.
            #[expect(unsafe_code, reason = "the environment changes before threads start")]
            let inherited = match unsafe { systemd::take_inherited_sockets() } {
                Ok(inherited) => inherited,
                Err(error) => return fail(&error, 1),
            };
            systemd::close_inherited_fds_on_exec();
            rtask::logging::init(cli.log_format);
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(runtime) => runtime,
                Err(error) => return fail(&format!("failed to start the runtime: {error}"), 1),
            };
            let plan = ListenPlan {
                inherited,
                api_address: args.api_address,
                metrics_address: args.metrics_address,
            };
            match runtime.block_on(rtask::run(paths, plan)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(DaemonError::Config(error)) => fail_logged(&error, EXIT_CONFIG),
                Err(error) => fail_logged(&error, 1),
            }
        }
        Command::AddKey { name } => match rtask::keys::add_key(&paths.keys, &name) {
            Ok(key) => {
                println!("API-KEY: {key}");
                eprintln!("added key \"{name}\" to {}", paths.keys.display());
                warn_if_not_loadable(&paths);
                ExitCode::SUCCESS
            }
            Err(error) => fail(&error, 1),
        },
        Command::RemoveKey { name } => match rtask::keys::remove_key(&paths.keys, &name) {
            Ok(()) => {
                eprintln!("removed key \"{name}\" from {}", paths.keys.display());
                warn_if_not_loadable(&paths);
                ExitCode::SUCCESS
            }
            Err(error) => fail(&error, 1),
        },
        Command::CheckConfig => check_config(&paths),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "rtask", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Man => {
            match clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => fail(&error, 1),
            }
        }
    }
}

/// Warns after a keys file change that a running daemon cannot apply it: a reload
/// applies the config and the keys together, and keeps both as they were when either is
/// invalid. Says nothing when the config file does not exist.
fn warn_if_not_loadable(paths: &load::Paths) {
    if !paths.config.exists() {
        return;
    }
    if let Err(error) = load::load(paths, None).result {
        eprintln!(
            "warning: {error}\nA running daemon keeps its previous keys until the \
             configuration loads again."
        );
    }
}

fn check_config(paths: &load::Paths) -> ExitCode {
    let attempt = load::load(paths, None);
    match attempt.result {
        Ok(loaded) => {
            for warning in &loaded.warnings {
                println!("warning: {warning}");
            }
            let config = &loaded.config.config;
            println!("config {}: ok", paths.config.display());
            let keys = load::format_count(loaded.keys.len(), "key");
            println!("keys {}: {keys}", paths.keys.display());
            println!("tasks: {}", config.tasks.len());
            for (name, task) in &config.tasks {
                let mode = if task.is_async { "async" } else { "sync" };
                let keys = load::format_count(task.api_key_names.len(), "key");
                let secrets = task.webhook_secrets.len() + task.webhook_secret_files.len();
                let secrets = load::format_count(secrets, "webhook secret");
                println!(
                    "  {name}: {mode}, {keys}, {secrets}, command {:?}",
                    task.command
                );
            }
            ExitCode::SUCCESS
        }
        Err(error) => fail(&error, 1),
    }
}

fn fail(error: &dyn std::fmt::Display, code: u8) -> ExitCode {
    eprintln!("rtask: {error}");
    ExitCode::from(code)
}

/// Reports an error of the daemon through the log, so that under systemd it reaches the
/// journal with the daemon's other messages.
fn fail_logged(error: &dyn std::fmt::Display, code: u8) -> ExitCode {
    tracing::error!("{error}");
    ExitCode::from(code)
}
