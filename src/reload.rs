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

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use sd_notify::NotifyState;
use tokio::sync::mpsc;

use crate::load::{self, Attempt, Loaded, Paths, format_count};
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
        // A newline would end the STATUS= line and start another assignment.
        let status: String = self
            .apply(attempt, trigger, &current)
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        self.lock().status = status.clone();
        if notify_systemd {
            systemd::notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
        }
    }

    fn apply(&self, attempt: Attempt, trigger: &str, current: &TaskTable) -> String {
        match attempt.result {
            Ok(loaded) => {
                log_warnings(&loaded);
                let table = Arc::new(TaskTable::build(&loaded, Some(current)));
                self.metrics.sync_tasks(&table.histogram_specs());
                self.metrics.set_keys_loaded(table.keys.len());
                // Stored first, so a client that sees the log line or the metric meets
                // the new table.
                self.table.store(table.clone());
                self.metrics.record_reload(true);
                tracing::info!(
                    trigger,
                    tasks = table.len(),
                    api_keys = table.keys.len(),
                    webhooks = table.webhook_count(),
                    "configuration reloaded"
                );
                format!("{}; last reload ok", summary(&table))
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

    /// Returns what to watch for the files of the last attempt.
    fn watch_targets(&self) -> WatchTargets {
        let files = self.lock().files.clone();
        let mut targets = WatchTargets::default();
        for file in &files {
            targets.add(file);
        }
        targets
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReloadState> {
        self.state.lock().expect("reload state lock poisoned")
    }
}

fn summary(table: &TaskTable) -> String {
    format!(
        "{}, {}",
        format_count(table.len(), "task"),
        format_count(table.keys.len(), "key")
    )
}

fn log_warnings(loaded: &Loaded) {
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
}

/// The directories to watch and the names an event must carry to matter.
#[derive(Debug, Default)]
struct WatchTargets {
    directories: BTreeSet<PathBuf>,
    /// Every name that can lead to an input. An event on any other name, such as an
    /// editor's swap file or a log file in the same directory, changes nothing.
    names: BTreeSet<OsString>,
}

impl WatchTargets {
    /// Adds the directories whose changes can change what `file` reads as, and the names
    /// on every path that leads to it.
    fn add(&mut self, file: &Path) {
        let absolute = std::path::absolute(file).unwrap_or_else(|_| file.to_owned());
        self.add_names(&absolute);
        // The grandparent reports the parent deleted and created anew, which the
        // parent's own watch cannot.
        if let Some(parent) = absolute.parent() {
            self.add_directory(parent);
            if let Some(grandparent) = parent.parent() {
                self.add_directory(grandparent);
            }
        }

        // Every symlink on the path is a name in its parent directory that a swap
        // replaces, and where it leads now may hold further links (`..data/config.toml`).
        let mut prefix = PathBuf::new();
        for component in absolute.components() {
            prefix.push(component);
            let Ok(target) = std::fs::read_link(&prefix) else {
                continue;
            };
            self.add_names(&target);
            if let Some(parent) = prefix.parent() {
                self.add_directory(parent);
            }
            if let Ok(resolved) = prefix.canonicalize() {
                self.add_names(&resolved);
                if resolved.is_dir() {
                    self.add_directory(&resolved);
                } else if let Some(parent) = resolved.parent() {
                    self.add_directory(parent);
                }
            }
        }

        if let Ok(resolved) = absolute.canonicalize() {
            self.add_names(&resolved);
            if let Some(parent) = resolved.parent() {
                self.add_directory(parent);
            }
        }
    }

    fn add_names(&mut self, path: &Path) {
        for component in path.components() {
            if let Component::Normal(name) = component {
                self.names.insert(name.to_owned());
            }
        }
    }

    /// Adds `directory`, or while it does not exist its nearest ancestor that does, so
    /// that its creation is reported.
    fn add_directory(&mut self, directory: &Path) {
        if let Some(existing) = directory.ancestors().find(|ancestor| ancestor.is_dir()) {
            self.directories.insert(existing.to_owned());
        }
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
    watched: BTreeSet<PathBuf>,
    /// Names that make an event relevant; the watcher's callback reads them.
    names: Arc<Mutex<BTreeSet<OsString>>>,
    events: mpsc::UnboundedReceiver<()>,
}

impl FileWatch {
    /// Makes the watches and the name filter match the files of the last attempt.
    fn refresh(&mut self, reloader: &Reloader) {
        let targets = reloader.watch_targets();
        *self.names.lock().expect("watch names lock poisoned") = targets.names;
        update_watches(&mut self.watcher, &mut self.watched, targets.directories);
    }
}

/// Sets up the watches for the files of the last load. Call [`Reloader::catch_up`] next:
/// a file that changed between the load and now raised no event.
pub fn start_watching(reloader: &Reloader) -> Option<FileWatch> {
    let (sender, events) = mpsc::unbounded_channel();
    let names = Arc::new(Mutex::new(BTreeSet::new()));
    let filter = names.clone();
    let watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(event) if is_change(&event.kind) && is_relevant(&event, &filter) => {
                let _ = sender.send(());
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "file watcher error"),
        });
    let watcher = match watcher {
        Ok(watcher) => watcher,
        Err(error) => {
            tracing::error!(%error, "failed to start the file watcher; reload with SIGHUP");
            return None;
        }
    };
    let mut file_watch = FileWatch {
        watcher,
        watched: BTreeSet::new(),
        names,
        events,
    };
    file_watch.refresh(reloader);
    Some(file_watch)
}

fn is_relevant(event: &notify::Event, names: &Mutex<BTreeSet<OsString>>) -> bool {
    let names = names.lock().expect("watch names lock poisoned");
    event.paths.is_empty()
        || event
            .paths
            .iter()
            .any(|path| path.file_name().is_some_and(|name| names.contains(name)))
}

/// Reloads after each burst of file changes and on every SIGHUP, for as long as the
/// daemon runs. Both refresh the watches, so a SIGHUP also repairs them after a
/// directory was replaced in a way no watch could see.
pub async fn watch(
    reloader: Arc<Reloader>,
    mut file_watch: Option<FileWatch>,
    mut hangups: tokio::signal::unix::Signal,
) {
    loop {
        let file_events = async {
            match &mut file_watch {
                Some(watch) => watch.events.recv().await,
                None => std::future::pending().await,
            }
        };
        let (trigger, forced) = tokio::select! {
            event = file_events => {
                if event.is_none() {
                    file_watch = None;
                    continue;
                }
                if let Some(watch) = &mut file_watch {
                    debounce(&mut watch.events).await;
                }
                ("file change", false)
            }
            _ = hangups.recv() => {
                tracing::info!("SIGHUP received, reloading");
                ("SIGHUP", true)
            }
        };
        let reloading = reloader.clone();
        let _ = tokio::task::spawn_blocking(move || reloading.reload(trigger, forced)).await;
        if let Some(watch) = &mut file_watch {
            watch.refresh(&reloader);
        }
    }
}

/// Waits until a burst of events goes quiet, or for at most [`MAX_DEBOUNCE`].
async fn debounce(events: &mut mpsc::UnboundedReceiver<()>) {
    let burst_end = tokio::time::Instant::now() + MAX_DEBOUNCE;
    loop {
        let quiet = tokio::time::timeout(DEBOUNCE, events.recv());
        match tokio::time::timeout_at(burst_end, quiet).await {
            Ok(Ok(Some(()))) => continue,
            Ok(Ok(None)) | Ok(Err(_)) | Err(_) => return,
        }
    }
}

fn update_watches(
    watcher: &mut RecommendedWatcher,
    watched: &mut BTreeSet<PathBuf>,
    wanted: BTreeSet<PathBuf>,
) {
    for directory in watched.difference(&wanted) {
        let _ = watcher.unwatch(directory);
    }
    // Watching again is cheap, and it repairs the watch of a directory that was deleted
    // and created anew (which may even have the same inode number).
    watched.clear();
    for directory in wanted {
        match watcher.watch(&directory, RecursiveMode::NonRecursive) {
            Ok(()) => {
                watched.insert(directory);
            }
            Err(error) => {
                tracing::warn!(directory = %directory.display(), %error, "failed to watch a directory");
            }
        }
    }
}
