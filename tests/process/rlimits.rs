//! Resource limits from `[tasks.NAME.rlimits]` and `[defaults.rlimits]`, applied in the
//! child and checked against the daemon's own hard limits at start.

use std::path::PathBuf;

use nix::sys::resource::{Resource, getrlimit};

use super::Fixture;
use crate::harness::{run_rtask, stderr_text};

/// Finds an executable named `name` in `PATH`.
fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

#[tokio::test]
async fn rlimits_nofile_applied() {
    let fixture = Fixture::start(
        r#"
[tasks.limits]
command = ["sh", "-c", "ulimit -n"]
apiKeyNames = ["ci"]

[tasks.limits.rlimits]
nofile = 64
"#,
    )
    .await;

    let reply = fixture.daemon.post_task("limits", &fixture.key, "").await;

    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["stdout"], "64\n");
}

#[tokio::test]
async fn rlimits_defaults_fill_unset() {
    let fixture = Fixture::start(
        r#"
[defaults.rlimits]
nofile = 80

[tasks.inherits]
command = ["sh", "-c", "ulimit -n"]
apiKeyNames = ["ci"]

[tasks.overrides]
command = ["sh", "-c", "ulimit -n"]
apiKeyNames = ["ci"]

[tasks.overrides.rlimits]
nofile = 64
"#,
    )
    .await;

    let inherits = fixture.daemon.post_task("inherits", &fixture.key, "").await;
    let overrides = fixture
        .daemon
        .post_task("overrides", &fixture.key, "")
        .await;

    assert_eq!(inherits.status, 200, "{}", inherits.text());
    assert_eq!(inherits.json()["stdout"], "80\n");
    assert_eq!(overrides.status, 200, "{}", overrides.text());
    assert_eq!(overrides.json()["stdout"], "64\n");
}

#[tokio::test]
async fn rlimits_address_space_blocks_allocation() {
    // 500 MiB against a 100 MiB address space. The small allocation shows that the
    // interpreter itself runs under the limit.
    let python = find_in_path("python3");
    let (large, small) = match &python {
        Some(python) => {
            let python = python.display().to_string();
            (
                format!(r#"["{python}", "-c", "bytearray(500 * 1024 * 1024)"]"#),
                format!(r#"["{python}", "-c", "bytearray(1024 * 1024)"]"#),
            )
        }
        None => {
            let grow = |bytes: u64| {
                format!(
                    r#"["awk", "BEGIN {{ s = \"x\"; while (length(s) < {bytes}) s = s s; print length(s) }}"]"#
                )
            };
            (grow(500 * 1024 * 1024), grow(1024 * 1024))
        }
    };
    let fixture = Fixture::start(&format!(
        r#"
[tasks.large]
command = {large}
apiKeyNames = ["ci"]

[tasks.large.rlimits]
as = 104857600

[tasks.small]
command = {small}
apiKeyNames = ["ci"]

[tasks.small.rlimits]
as = 104857600

[tasks.echo]
command = ["cat"]
apiKeyNames = ["ci"]
"#
    ))
    .await;

    let large = fixture.daemon.post_task("large", &fixture.key, "").await;
    let small = fixture.daemon.post_task("small", &fixture.key, "").await;
    let echo = fixture
        .daemon
        .post_task("echo", &fixture.key, "alive")
        .await;

    assert_eq!(large.status, 200, "{}", large.text());
    let result = large.json();
    assert_eq!(result["status"], "failure", "{result}");
    assert_ne!(result["exit_code"], 0, "{result}");
    if python.is_some() {
        let stderr = result["stderr"].as_str().expect("stderr is a string");
        assert!(stderr.contains("MemoryError"), "stderr {stderr:?}");
    }
    assert_eq!(small.status, 200, "{}", small.text());
    assert_eq!(small.json()["status"], "success", "{}", small.text());
    assert_eq!(echo.status, 200, "{}", echo.text());
    assert_eq!(echo.json()["stdout"], "alive");
}

#[test]
fn rlimits_above_hard_limit_exit_78() {
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("read RLIMIT_NOFILE");
    let dir = tempfile::tempdir().expect("create temporary directory");
    let config = dir.path().join("config.toml");
    let keys = dir.path().join("keys.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[tasks.greedy]
command = ["true"]
apiKeyNames = ["ci"]

[tasks.greedy.rlimits]
nofile = {}
"#,
            hard + 1
        ),
    )
    .expect("write config");

    let output = run_rtask(
        dir.path(),
        &[
            "--config",
            config.to_str().expect("UTF-8 path"),
            "--api-keys-file",
            keys.to_str().expect("UTF-8 path"),
            "run",
            "--api-address",
            "127.0.0.1:0",
            "--metrics-address",
            "127.0.0.1:0",
        ],
    );

    let stderr = stderr_text(&output);
    assert_eq!(output.status.code(), Some(78), "stderr:\n{stderr}");
    assert!(stderr.contains("nofile"), "stderr:\n{stderr}");
    assert!(stderr.contains("greedy"), "stderr:\n{stderr}");
    assert!(stderr.contains("hard limit"), "stderr:\n{stderr}");
    assert!(stderr.contains("LimitNOFILE="), "stderr:\n{stderr}");
}
