//! Config errors at `run` start, `check-config`, config path defaults and rlimits.

use std::fs;
use std::path::Path;
use std::process::Output;

use crate::harness::{
    DaemonBuilder, add_key, rtask_command, run_command, stderr_text, stdout_text,
};

/// Exit code for an invalid config at `run` start (`EX_CONFIG`).
const EX_CONFIG: i32 = 78;

/// Writes `config` to `config.toml` in `dir` and runs `rtask run` on port-0
/// loopback addresses, so a daemon that wrongly starts binds nothing fixed.
fn run_with_config(dir: &Path, config: &str) -> Output {
    let config_path = dir.join("config.toml");
    fs::write(&config_path, config).expect("write config.toml");
    let mut command = rtask_command(dir);
    command.args([
        "--config",
        config_path.to_str().expect("UTF-8 path"),
        "--api-keys-file",
        dir.join("keys.toml").to_str().expect("UTF-8 path"),
        "run",
        "--api-address",
        "127.0.0.1:0",
        "--metrics-address",
        "127.0.0.1:0",
    ]);
    run_command(command)
}

/// Runs `rtask run` on `config` in a new directory and checks that it is refused as a
/// clean config error: exit 78, one message naming the config file, a line and
/// column, and each of `fragments`, and no panic. In `config` and `fragments`, `{dir}`
/// stands for the directory. Returns the daemon's stderr.
#[track_caller]
fn assert_config_error(config: &str, fragments: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("create temporary directory");
    let dir_text = dir.path().to_str().expect("UTF-8 path");
    let output = run_with_config(dir.path(), &config.replace("{dir}", dir_text));
    let stderr = stderr_text(&output);
    assert_eq!(output.status.code(), Some(EX_CONFIG), "stderr:\n{stderr}");
    let config_path = dir.path().join("config.toml");
    let config_path = config_path.to_str().expect("UTF-8 path");
    let expected = [config_path, "line ", "column "]
        .into_iter()
        .map(str::to_owned)
        .chain(fragments.iter().map(|text| text.replace("{dir}", dir_text)));
    for fragment in expected {
        assert!(
            stderr.contains(&fragment),
            "stderr mentions {fragment:?}:\n{stderr}"
        );
    }
    assert!(!stderr.contains("panicked"), "stderr:\n{stderr}");
    assert!(!stderr.contains("backtrace"), "stderr:\n{stderr}");
    stderr
}

#[test]
fn config_unknown_key_exit_78() {
    let config = "[tasks.echo]\ncommand = [\"cat\"]\ncomand = [\"typo\"]\n";
    assert_config_error(config, &["echo", "comand"]);
}

#[test]
fn config_unknown_top_level_key_exit_78() {
    let config = "shutdownGrace = 5\n\n[tasks.echo]\ncommand = [\"cat\"]\n";
    assert_config_error(config, &["shutdownGrace"]);
}

#[test]
fn config_syntax_error_exit_78() {
    assert_config_error("[tasks.echo]\ncommand = [\"cat\"\n", &[]);
}

#[test]
fn config_empty_command_exit_78() {
    assert_config_error("[tasks.hollow]\ncommand = []\n", &["hollow", "command"]);
}

#[test]
fn config_bad_task_name_exit_78() {
    let config = "[tasks.\"bad/name\"]\ncommand = [\"true\"]\n";
    assert_config_error(config, &["bad/name"]);
}

#[test]
fn config_missing_secret_file_exit_78() {
    let config = r#"
[tasks.deploy]
command = ["true"]
webhookSecretFiles = { github = "{dir}/absent.secret" }
"#;
    assert_config_error(config, &["deploy", "{dir}/absent.secret"]);
}

#[test]
fn config_wrong_type_exit_78() {
    let config = r#"
[tasks.echo]
command = ["cat"]
maxConcurrentTasks = "seventeen-runs"
"#;

    let stderr = assert_config_error(config, &["echo", "invalid type: string"]);

    // The kind of value is named, the value itself is not: it could be a secret typed
    // in the wrong place.
    assert!(!stderr.contains("seventeen-runs"), "{stderr}");
}

/// Writes a valid config and keys file into `dir` and returns the config path.
fn write_valid_config(dir: &Path) -> std::path::PathBuf {
    let config_path = dir.join("config.toml");
    fs::write(
        &config_path,
        r#"
[tasks.echo]
command = ["cat"]
apiKeyNames = ["ci"]

[tasks.other]
command = ["true"]
"#,
    )
    .expect("write config.toml");
    add_key(dir, &dir.join("keys.toml"), "ci");
    config_path
}

#[test]
fn check_config_valid_exit_0() {
    let dir = tempfile::tempdir().expect("create temporary directory");
    let config_path = write_valid_config(dir.path());
    let mut command = rtask_command(dir.path());
    command.args([
        "--config",
        config_path.to_str().expect("UTF-8 path"),
        "--api-keys-file",
        dir.path().join("keys.toml").to_str().expect("UTF-8 path"),
        "check-config",
    ]);

    let output = run_command(command);

    assert_eq!(output.status.code(), Some(0), "{}", stderr_text(&output));
    let summary = stdout_text(&output);
    assert!(
        summary.contains("echo"),
        "summary names task echo: {summary}"
    );
    assert!(
        summary.contains("other"),
        "summary names task other: {summary}"
    );
}

#[test]
fn check_config_invalid_exit_1() {
    let dir = tempfile::tempdir().expect("create temporary directory");
    let config_path = dir.path().join("config.toml");
    fs::write(&config_path, "[tasks.broken]\ncommand = []\n").expect("write config.toml");
    let mut command = rtask_command(dir.path());
    command.args([
        "--config",
        config_path.to_str().expect("UTF-8 path"),
        "check-config",
    ]);

    let output = run_command(command);

    let stderr = stderr_text(&output);
    assert_eq!(output.status.code(), Some(1), "stderr:\n{stderr}");
    assert!(stderr.contains("broken"), "stderr:\n{stderr}");
    assert!(!stderr.contains("panicked"), "stderr:\n{stderr}");
}

#[test]
fn check_config_paths_from_env() {
    let dir = tempfile::tempdir().expect("create temporary directory");
    let config_path = write_valid_config(dir.path());
    // Run elsewhere, so only the environment can point at the files.
    let elsewhere = tempfile::tempdir().expect("create temporary directory");
    let mut command = rtask_command(elsewhere.path());
    command
        .env("RTASK_CONFIG", &config_path)
        .env("RTASK_API_KEYS_FILE", dir.path().join("keys.toml"))
        .arg("check-config");

    let output = run_command(command);

    assert_eq!(output.status.code(), Some(0), "{}", stderr_text(&output));
}

#[test]
fn check_config_default_paths_in_cwd() {
    let dir = tempfile::tempdir().expect("create temporary directory");
    write_valid_config(dir.path());
    let mut command = rtask_command(dir.path());
    command.arg("check-config");

    let output = run_command(command);

    assert_eq!(output.status.code(), Some(0), "{}", stderr_text(&output));
}

#[tokio::test]
async fn config_rlimits_applied() {
    let builder = DaemonBuilder::new();
    let key = builder.add_key("ci");
    let daemon = builder
        .start(
            r#"
[defaults.rlimits]
nofile = 64

[tasks.default-limits]
command = ["sh", "-c", 'ulimit -n']
apiKeyNames = ["ci"]

[tasks.own-limits]
command = ["sh", "-c", 'ulimit -n']
apiKeyNames = ["ci"]

[tasks.own-limits.rlimits]
nofile = 32
"#,
        )
        .await;

    let defaults = daemon.post_task("default-limits", &key, "").await;
    let own = daemon.post_task("own-limits", &key, "").await;

    assert_eq!(defaults.status, 200, "{}", defaults.text());
    assert_eq!(defaults.json()["stdout"], "64\n");
    assert_eq!(own.status, 200, "{}", own.text());
    assert_eq!(own.json()["stdout"], "32\n");
}
