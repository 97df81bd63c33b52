//! Reloading: rebuilds the task table when the configuration, the keys file or a webhook
//! secret file changes, or on SIGHUP, and swaps it in whole. This is the only module that
//! stores into the table handle.
//!
//! The watcher watches directories, not files, because editors and tools replace files
//! rather than write them: a rename over the file, a symlink swapped by `ln -sfn`, a
//! Kubernetes-style `..data` link to a new directory, or truncate-and-rewrite. For each
//! file it watches the file's directory, the directory of every symlink on its path, and
//! the directory the path resolves to now. A swap changes where the path leads, so the
//! set is computed again after every batch of events.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use sd_notify::NotifyState;
use tokio::sync::mpsc;

use crate::load::{self, Attempt, Loaded, Paths};
use crate::metrics::Metrics;
use crate::systemd;
use crate::tasks::TaskTable;

/// Quiet time that ends a burst of file events; a burst is reloaded once.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// A burst that never goes quiet is reloaded after this long anyway.
const MAX_DEBOUNCE: Duration = Duration::from_secs(1);

/// Loads, swaps and reports; shared by the watcher, the SIGHUP handler and startup.
#[derive(Debug)]
pub struct Reloader {
    paths: Paths,
    table: Arc<ArcSwap<TaskTable>>,
    metrics: Arc<Metrics>,
    state: Mutex<ReloadState>,
}

#[derive(Debug, Default)]
struct ReloadState {
    /// Fingerprint of the inputs of the last attempt, successful or not, so that an
    /// event that changed nothing does not reload, and a file that stays invalid is
    /// reported once.
    fingerprint: Option<[u8; 32]>,
    /// Files of the last attempt.
    files: Vec<PathBuf>,
    status: String,
}

impl Reloader {
    /// Performs the first load. An invalid configuration is returned as an error, so
    /// that the daemon refuses to start on it.
    pub fn start(paths: Paths, metrics: Arc<Metrics>) -> Result<Arc<Reloader>, load::LoadError> {
        let attempt = load::load(&paths, None);
        let loaded = attempt.result?;
        log_warnings(&loaded);
        let table = TaskTable::build(&loaded, None);
        metrics.sync_tasks(&table.histogram_specs());
        metrics.set_keys_loaded(table.keys.len());
        metrics.record_reload(true);
        let status = format!("{}; configuration loaded", summary(&table));
        tracing::info!(
            config = %paths.config.display(),
            keys = %paths.keys.display(),
            tasks = table.len(),
            api_keys = table.keys.len(),
            webhooks = table.webhook_count(),
            "configuration loaded"
        );
        let state = ReloadState {
            fingerprint: Some(attempt.fingerprint),
            files: attempt.files,
            status,
        };
        Ok(Arc::new(Reloader {
            paths,
            table: Arc::new(ArcSwap::from_pointee(table)),
            metrics,
            state: Mutex::new(state),
        }))
    }

    pub fn table(&self) -> Arc<ArcSwap<TaskTable>> {
        self.table.clone()
    }

    /// Returns the `STATUS=` text: what is loaded and how the last reload went.
    pub fn status(&self) -> String {
        self.lock().status.clone()
    }

    /// Reloads. Unless `forced`, nothing happens when the inputs did not change since
    /// the last attempt.
    pub fn reload(&self, trigger: &str, forced: bool) {
        self.reload_and_notify(trigger, forced, true);
    }

    /// Reloads if the inputs changed since the first load, without telling systemd,
    /// which is still waiting for the first `READY=1`.
    pub fn catch_up(&self) {
        self.reload_and_notify("file change during startup", false, false);
    }

    fn reload_and_notify(&self, trigger: &str, forced: bool, notify_systemd: bool) {
        let current = self.table.load_full();
        let attempt = load::load(&self.paths, Some(&current.keys));
        {
            let mut state = self.lock();
            let unchanged = state.fingerprint == Some(attempt.fingerprint);
            state.files = attempt.files.clone();
            if unchanged && !forced {
                return;
            }
            state.fingerprint = Some(attempt.fingerprint);
        }

        if notify_systemd {
            systemd::notify_reloading();
        }
        let status = self.apply(attempt, trigger, &current);
        self.lock().status = status.clone();
        if notify_systemd {
            systemd::notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
        }
    }

    fn apply(&self, attempt: Attempt, trigger: &str, current: &TaskTable) -> String {
        match attempt.result {
            Ok(loaded) => {
                log_warnings(&loaded);
                let table = TaskTable::build(&loaded, Some(current));
                self.metrics.sync_tasks(&table.histogram_specs());
                self.metrics.set_keys_loaded(table.keys.len());
                self.metrics.record_reload(true);
                tracing::info!(
                    trigger,
                    tasks = table.len(),
                    api_keys = table.keys.len(),
                    webhooks = table.webhook_count(),
                    "configuration reloaded"
                );
                let status = format!("{}; last reload ok", summary(&table));
                self.table.store(Arc::new(table));
                status
            }
            Err(error) => {
                self.metrics.record_reload(false);
                tracing::error!(
                    trigger,
                    %error,
                    "reload failed, the previous configuration stays in force"
                );
                let mut message = error.to_string();
                if message.len() > 200 {
                    let mut end = 200;
                    while !message.is_char_boundary(end) {
                        end -= 1;
                    }
                    message.truncate(end);
                    message.push_str("...");
                }
                format!("{}; last reload failed: {message}", summary(current))
            }
        }
    }

    /// Returns the directories to watch for the files of the last attempt.
    fn watched_directories(&self) -> BTreeSet<PathBuf> {
        let files = self.lock().files.clone();
        files
            .iter()
            .flat_map(|file| directories_for(file))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReloadState> {
        self.state.lock().expect("reload state lock poisoned")
    }
}

fn summary(table: &TaskTable) -> String {
    format!("{} tasks, {} keys", table.len(), table.keys.len())
}

fn log_warnings(loaded: &Loaded) {
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
}

/// Returns the directories whose changes can change what `file` reads as.
fn directories_for(file: &Path) -> Vec<PathBuf> {
    let absolute = if file.is_absolute() {
        file.to_owned()
    } else {
        std::env::current_dir().unwrap_or_default().join(file)
    };
    let mut directories = Vec::new();
    if let Some(parent) = absolute.parent() {
        directories.push(parent.to_owned());
    }
    // Every symlink on the path is a name in its parent directory that a swap replaces.
    let mut prefix = PathBuf::new();
    for component in absolute.components() {
        prefix.push(component);
        if matches!(component, Component::Normal(_)) && prefix.is_symlink() {
            if let Some(parent) = prefix.parent() {
                directories.push(parent.to_owned());
            }
            // Where the link leads now, for the links inside it (`..data/config.toml`).
            if let Ok(target) = prefix.canonicalize() {
                directories.extend(directories_for_target(&target));
            }
        }
    }
    if let Ok(resolved) = absolute.canonicalize()
        && let Some(parent) = resolved.parent()
    {
        directories.push(parent.to_owned());
    }
    directories.retain(|directory| directory.is_dir());
    directories
}

fn directories_for_target(target: &Path) -> Vec<PathBuf> {
    if target.is_dir() {
        vec![target.to_owned()]
    } else {
        target.parent().map(Path::to_owned).into_iter().collect()
    }
}

/// Reports whether an inotify event can change a file's contents or where its path
/// leads. Reads, including rtask's own reads during a reload, cannot.
fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// The inotify watches on the directories of the inputs, and their events.
#[derive(Debug)]
pub struct FileWatch {
    watcher: RecommendedWatcher,
    watched: BTreeMap<PathBuf, u64>,
    events: mpsc::UnboundedReceiver<()>,
}

/// Sets up the watches for the files of the last load. Call [`Reloader::catch_up`] next:
/// a file that changed between the load and now raised no event.
pub fn start_watching(reloader: &Reloader) -> Option<FileWatch> {
    let (sender, events) = mpsc::unbounded_channel();
    let watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(event) if is_change(&event.kind) => {
                let _ = sender.send(());
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "file watcher error"),
        });
    let mut watcher = match watcher {
        Ok(watcher) => watcher,
        Err(error) => {
            tracing::error!(%error, "failed to start the file watcher; reload with SIGHUP");
            return None;
        }
    };
    let mut watched = BTreeMap::new();
    update_watches(&mut watcher, &mut watched, reloader.watched_directories());
    Some(FileWatch {
        watcher,
        watched,
        events,
    })
}

/// Reloads after each burst of changes, for as long as the daemon runs.
pub async fn watch(reloader: Arc<Reloader>, file_watch: FileWatch) {
    let FileWatch {
        mut watcher,
        mut watched,
        mut events,
    } = file_watch;
    while events.recv().await.is_some() {
        let burst_end = tokio::time::Instant::now() + MAX_DEBOUNCE;
        loop {
            let quiet = tokio::time::timeout(DEBOUNCE, events.recv());
            match tokio::time::timeout_at(burst_end, quiet).await {
                Ok(Ok(Some(()))) => continue,
                Ok(Ok(None)) => return,
                Ok(Err(_)) | Err(_) => break,
            }
        }
        let reloading = reloader.clone();
        let _ = tokio::task::spawn_blocking(move || reloading.reload("file change", false)).await;
        update_watches(&mut watcher, &mut watched, reloader.watched_directories());
    }
}

fn update_watches(
    watcher: &mut RecommendedWatcher,
    watched: &mut BTreeMap<PathBuf, u64>,
    wanted: BTreeSet<PathBuf>,
) {
    let mut now_watched = BTreeMap::new();
    for directory in wanted {
        let Ok(inode) = std::fs::metadata(&directory).map(|metadata| metadata.ino()) else {
            continue;
        };
        // The same path with another inode is a directory deleted and created anew,
        // whose old watch the kernel dropped.
        if watched.remove(&directory) == Some(inode) {
            now_watched.insert(directory, inode);
            continue;
        }
        match watcher.watch(&directory, RecursiveMode::NonRecursive) {
            Ok(()) => {
                tracing::debug!(directory = %directory.display(), "watching");
                now_watched.insert(directory, inode);
            }
            Err(error) => {
                tracing::warn!(directory = %directory.display(), %error, "failed to watch a directory");
            }
        }
    }
    for directory in watched.keys() {
        let _ = watcher.unwatch(directory);
    }
    *watched = now_watched;
}

/// Reloads on every SIGHUP, even when no file changed.
pub async fn reload_on_sighup(reloader: Arc<Reloader>, mut hangups: tokio::signal::unix::Signal) {
    while hangups.recv().await.is_some() {
        tracing::info!("SIGHUP received, reloading");
        let reloading = reloader.clone();
        let _ = tokio::task::spawn_blocking(move || reloading.reload("SIGHUP", true)).await;
    }
}
