//! `add-key` and `remove-key`, and keys surviving a daemon restart.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use nix::unistd::{Uid, chown};

use crate::harness::{DaemonBuilder, add_key, parse_api_key, run_rtask, stderr_text, stdout_text};

fn file_mode(path: &std::path::Path) -> u32 {
    fs::metadata(path)
        .expect("stat keys file")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn add_key_prints_key() {
    let dir = tempfile::tempdir().expect("create temporary directory");
    let keys = dir.path().join("keys.toml");

    let output = run_rtask(
        dir.path(),
        &[
            "--api-keys-file",
            keys.to_str().expect("UTF-8"),
            "add-key",
            "ci",
        ],
    );

    assert!(output.status.success(), "{}", stderr_text(&output));
    let stdout = stdout_text(&output);
    assert!(stdout.starts_with("API-KEY: "), "stdout: {stdout:?}");
    assert_eq!(stdout.lines().count(), 1, "stdout: {stdout:?}");
    let stderr = stderr_text(&output);
    assert!(stderr.contains(keys.to_str().expect("UTF-8")), "{stderr}");
    let key = parse_api_key(&stdout).expect("key on the API-KEY line");
    assert!(!key.is_empty());
    assert!(
        key.bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_'),
        "key is base64url: {key:?}"
    );
    let contents = fs::read_to_string(&keys).expect("read keys file");
    assert!(contents.contains("ci = "), "keys file: {contents}");
    assert!(
        !contents.contains(&key),
        "the keys file stores a hash, not the key"
    );
}

#[test]
fn add_key_creates_mode_0600() {
    let dir = tempfile::tempdir().expect("create temporary directory");
    let keys = dir.path().join("keys.toml");

    add_key(dir.path(), &keys, "ci");

    assert_eq!(file_mode(&keys), 0o600);
}

#[test]
fn add_key_keeps_mode_and_owner() {
    let dir = tempfile::tempdir().expect("create temporary directory");
    let keys = dir.path().join("keys.toml");
    add_key(dir.path(), &keys, "first");
    fs::set_permissions(&keys, fs::Permissions::from_mode(0o640)).expect("chmod keys file");
    // Only root can give the file to another user. Other users check the mode and
    // the rename alone.
    let is_root = Uid::effective().is_root();
    let other_user = Uid::from_raw(65534);
    if is_root {
        chown(&keys, Some(other_user), None).expect("chown keys file");
    }
    let inode_before = fs::metadata(&keys).expect("stat keys file").ino();

    add_key(dir.path(), &keys, "second");

    let metadata = fs::metadata(&keys).expect("stat keys file");
    assert_eq!(metadata.permissions().mode() & 0o777, 0o640);
    assert_ne!(
        metadata.ino(),
        inode_before,
        "the file was replaced by a rename"
    );
    if is_root {
        assert_eq!(metadata.uid(), other_user.as_raw());
    }
    let contents = fs::read_to_string(&keys).expect("read keys file");
    assert!(contents.contains("first = "), "keys file: {contents}");
    assert!(contents.contains("second = "), "keys file: {contents}");
}

#[test]
fn add_key_duplicate_rejected() {
    let dir = tempfile::tempdir().expect("create temporary directory");
    let keys = dir.path().join("keys.toml");
    add_key(dir.path(), &keys, "ci");
    let before = fs::read(&keys).expect("read keys file");

    let output = run_rtask(
        dir.path(),
        &[
            "--api-keys-file",
            keys.to_str().expect("UTF-8"),
            "add-key",
            "ci",
        ],
    );

    assert_eq!(output.status.code(), Some(1), "{}", stderr_text(&output));
    assert!(
        stderr_text(&output).contains("ci"),
        "stderr names the key: {}",
        stderr_text(&output)
    );
    assert_eq!(parse_api_key(&stdout_text(&output)), None);
    assert_eq!(fs::read(&keys).expect("read keys file"), before);
}

#[test]
fn add_key_option_after_subcommand() {
    let dir = tempfile::tempdir().expect("create temporary directory");
    let keys = dir.path().join("keys.toml");

    let output = run_rtask(
        dir.path(),
        &[
            "add-key",
            "ci",
            "--api-keys-file",
            keys.to_str().expect("UTF-8"),
        ],
    );

    assert!(output.status.success(), "{}", stderr_text(&output));
    assert!(keys.exists(), "keys file created at the given path");
}

#[test]
fn remove_key_deletes_entry() {
    let dir = tempfile::tempdir().expect("create temporary directory");
    let keys = dir.path().join("keys.toml");
    add_key(dir.path(), &keys, "keep");
    add_key(dir.path(), &keys, "drop");

    let output = run_rtask(
        dir.path(),
        &[
            "--api-keys-file",
            keys.to_str().expect("UTF-8"),
            "remove-key",
            "drop",
        ],
    );

    assert!(output.status.success(), "{}", stderr_text(&output));
    let contents = fs::read_to_string(&keys).expect("read keys file");
    assert!(!contents.contains("drop = "), "keys file: {contents}");
    assert!(contents.contains("keep = "), "keys file: {contents}");
    assert_eq!(file_mode(&keys), 0o600);
}

#[test]
fn remove_key_unknown_fails() {
    let dir = tempfile::tempdir().expect("create temporary directory");
    let keys = dir.path().join("keys.toml");
    add_key(dir.path(), &keys, "ci");
    let before = fs::read(&keys).expect("read keys file");

    let output = run_rtask(
        dir.path(),
        &[
            "--api-keys-file",
            keys.to_str().expect("UTF-8"),
            "remove-key",
            "nobody",
        ],
    );

    assert!(
        !output.status.success(),
        "remove-key of an unknown name succeeded"
    );
    let stderr = stderr_text(&output);
    assert!(stderr.contains("nobody"), "stderr names the key: {stderr}");
    assert!(
        stderr.contains(keys.to_str().expect("UTF-8")),
        "stderr names the file: {stderr}"
    );
    assert_eq!(fs::read(&keys).expect("read keys file"), before);
}

#[tokio::test]
async fn key_persists_across_restart() {
    let builder = DaemonBuilder::new();
    let key = builder.add_key("ci");
    let mut daemon = builder
        .start(
            r#"
[tasks.echo]
command = ["cat"]
apiKeyNames = ["ci"]
"#,
        )
        .await;
    let before = daemon.post_task("echo", &key, "one").await;

    daemon.restart().await;
    let after = daemon.post_task("echo", &key, "two").await;

    assert_eq!(before.status, 200, "{}", before.text());
    assert_eq!(after.status, 200, "{}", after.text());
    assert_eq!(after.json()["stdout"], "two");
}

#[test]
fn key_change_warns_when_config_invalid() {
    let dir = tempfile::tempdir().expect("create temporary directory");
    let keys = dir.path().join("keys.toml");
    let keys = keys.to_str().expect("UTF-8");
    let config = dir.path().join("config.toml");
    fs::write(
        &config,
        "[tasks.echo]\ncommand = [\"cat\"]\napiKeyNames = [\"ci\"]\n",
    )
    .expect("write config.toml");
    let config = config.to_str().expect("UTF-8");
    let change = |command: &str, name: &str| {
        run_rtask(
            dir.path(),
            &["--config", config, "--api-keys-file", keys, command, name],
        )
    };

    let valid = change("add-key", "ci");
    fs::write(config, "typo = 1\n[tasks.echo]\ncommand = [\"cat\"]\n").expect("break config");
    let invalid = change("remove-key", "ci");

    assert!(valid.status.success(), "{}", stderr_text(&valid));
    assert!(
        !stderr_text(&valid).contains("warning"),
        "{}",
        stderr_text(&valid)
    );
    assert!(invalid.status.success(), "{}", stderr_text(&invalid));
    let warning = stderr_text(&invalid);
    assert!(warning.contains("warning: invalid config"), "{warning}");
    assert!(warning.contains("typo"), "{warning}");
    assert!(warning.contains("keeps its previous keys"), "{warning}");
}
