//! The configuration file replaced in every way tools do it: rewritten in place,
//! renamed over, a symlink swapped, a Kubernetes-style `..data` directory link swapped,
//! and a change no watcher reports followed by SIGHUP.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use nix::sys::signal::Signal;

use super::{
    KEY_NAME, RELOAD_TIMEOUT, replace_file, version_config, wait_for_version, wait_watching,
};
use crate::harness::{DaemonBuilder, poll_until, procfs};

/// Points the symlink `link` at `target` atomically, as `ln -sfn` does: a new link
/// under a temporary name, renamed over the old one.
fn swap_symlink(link: &Path, target: &Path) {
    let name = link.file_name().expect("link name").to_string_lossy();
    let temporary = link.with_file_name(format!("{name}.swap"));
    symlink(target, &temporary)
        .unwrap_or_else(|err| panic!("symlink {}: {err}", temporary.display()));
    fs::rename(&temporary, link)
        .unwrap_or_else(|err| panic!("rename over {}: {err}", link.display()));
}

#[tokio::test]
async fn reload_in_place_rewrite() {
    let builder = DaemonBuilder::new();
    let key = builder.add_key(KEY_NAME);
    let daemon = builder.start(&version_config("v1")).await;
    wait_watching(&daemon, &[]).await;

    // fs::write truncates the file it opens and then writes, keeping the inode.
    fs::write(daemon.config_path(), version_config("v2")).expect("rewrite config.toml");

    wait_for_version(&daemon, &key, "v2").await;
}

#[tokio::test]
async fn reload_rename_over_twice() {
    let builder = DaemonBuilder::new();
    let key = builder.add_key(KEY_NAME);
    let daemon = builder.start(&version_config("v1")).await;
    wait_watching(&daemon, &[]).await;

    replace_file(&daemon.config_path(), &version_config("v2"));
    wait_for_version(&daemon, &key, "v2").await;
    // The first rename replaced the inode, and the watch must still see the second.
    replace_file(&daemon.config_path(), &version_config("v3"));
    wait_for_version(&daemon, &key, "v3").await;
}

#[tokio::test]
async fn reload_symlink_swap() {
    let builder = DaemonBuilder::new();
    let key = builder.add_key(KEY_NAME);
    // config.toml -> conf-v1.toml, and start() writes through the link.
    symlink("conf-v1.toml", builder.path("config.toml")).expect("create config link");
    let daemon = builder.start(&version_config("v1")).await;
    assert!(daemon.path("conf-v1.toml").is_file());
    wait_watching(&daemon, &[]).await;

    for version in ["v2", "v3"] {
        let target = format!("conf-{version}.toml");
        fs::write(daemon.path(&target), version_config(version)).expect("write target");
        swap_symlink(&daemon.config_path(), Path::new(&target));
        wait_for_version(&daemon, &key, version).await;
    }
}

#[tokio::test]
async fn reload_data_dir_swap() {
    let builder = DaemonBuilder::new();
    let key = builder.add_key(KEY_NAME);
    // The layout of a Kubernetes ConfigMap volume: config.toml -> ..data/config.toml,
    // ..data -> ..v1, and an update swaps ..data to a new directory.
    fs::create_dir(builder.path("..v1")).expect("create ..v1");
    symlink("..v1", builder.path("..data")).expect("create ..data");
    symlink("..data/config.toml", builder.path("config.toml")).expect("create config link");
    let daemon = builder.start(&version_config("v1")).await;
    assert!(daemon.path("..v1/config.toml").is_file());
    wait_watching(&daemon, &["..v1"]).await;

    for (version, old) in [("v2", "..v1"), ("v3", "..v2")] {
        let directory = format!("..{version}");
        fs::create_dir(daemon.path(&directory)).expect("create version directory");
        fs::write(
            daemon.path(&format!("{directory}/config.toml")),
            version_config(version),
        )
        .expect("write config.toml");
        swap_symlink(&daemon.path("..data"), Path::new(&directory));
        fs::remove_dir_all(daemon.path(old)).expect("remove old version");
        wait_for_version(&daemon, &key, version).await;
    }
}

#[tokio::test]
async fn reload_sighup_rereads_config() {
    let builder = DaemonBuilder::new();
    let key = builder.add_key(KEY_NAME);
    let daemon = builder.start(&version_config("v1")).await;
    // A write through a hard link in a subdirectory changes config.toml's contents but
    // raises no inotify event in the watched directory, so only SIGHUP can load it.
    fs::create_dir(daemon.path("elsewhere")).expect("create subdirectory");
    let link = daemon.path("elsewhere/config.toml");
    fs::hard_link(daemon.config_path(), &link).expect("hard link config.toml");
    fs::write(&link, version_config("v2")).expect("write through the link");
    procfs::wait_catches_signal(daemon.pid().as_raw(), Signal::SIGHUP).await;

    daemon.signal(Signal::SIGHUP);

    wait_for_version(&daemon, &key, "v2").await;
}

#[tokio::test]
async fn reload_webhook_secret_file() {
    let builder = DaemonBuilder::new();
    let secret_path = builder.write_file("secret.txt", "first-secret\n");
    let daemon = builder
        .start(&format!(
            r#"
[tasks.hook]
command = ["echo", "hooked"]

[tasks.hook.webhookSecretFiles]
deploy = "{}"
"#,
            secret_path.display()
        ))
        .await;
    wait_watching(&daemon, &[]).await;

    replace_file(&secret_path, "second-secret\n");

    // An unknown secret gets 404 without a log line, so polling does not itself
    // cause a reload.
    let mut last = 0;
    let reached = poll_until(RELOAD_TIMEOUT, async || {
        last = daemon.post_webhook("second-secret", "").await.status;
        last == 200
    })
    .await;
    assert!(
        reached,
        "new secret got {last} within {RELOAD_TIMEOUT:?}; log:\n{}",
        daemon.stderr()
    );
    assert_eq!(daemon.post_webhook("first-secret", "").await.status, 404);
}

#[tokio::test]
async fn reload_directory_recreated() {
    let builder = DaemonBuilder::new();
    let key = builder.add_key(KEY_NAME);
    // config.toml -> conf/config.toml, so the file lives in a directory of its own.
    fs::create_dir(builder.path("conf")).expect("create conf");
    symlink("conf/config.toml", builder.path("config.toml")).expect("create config link");
    let daemon = builder.start(&version_config("v1")).await;
    wait_watching(&daemon, &["conf"]).await;

    // Deleted and created anew, more than once: each time the old watch is gone and the
    // new directory may reuse the old inode number.
    for version in ["v2", "v3", "v4"] {
        fs::remove_dir_all(daemon.path("conf")).expect("remove conf");
        fs::create_dir(daemon.path("conf")).expect("create conf again");
        replace_file(&daemon.path("conf/config.toml"), &version_config(version));
        wait_for_version(&daemon, &key, version).await;
    }
    // A plain save after all that is still seen.
    replace_file(&daemon.path("conf/config.toml"), &version_config("v5"));
    wait_for_version(&daemon, &key, "v5").await;
}
