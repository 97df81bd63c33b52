//! Reading everything a task table is built from: the configuration file, the keys file
//! and the webhook secret files. Startup, reload and `rtask check-config` all go through
//! [`load`], so they accept and reject exactly the same inputs.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{self, ConfigError, ParsedConfig};
use crate::keys::{KeyStore, KeysError};

/// The paths of the configuration and keys files.
#[derive(Debug, Clone)]
pub struct Paths {
    pub config: PathBuf,
    pub keys: PathBuf,
}

/// A webhook secret with the task it runs and the name it has in logs and metrics.
#[derive(Clone)]
pub struct WebhookSecret {
    pub task: String,
    pub name: String,
    pub secret: String,
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSecret")
            .field("task", &self.task)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Everything a task table is built from, read and checked.
#[derive(Debug)]
pub struct Loaded {
    pub config: ParsedConfig,
    pub keys: Arc<KeyStore>,
    pub webhooks: Vec<WebhookSecret>,
    /// Problems that leave the daemon working, such as a key name the keys file lacks.
    pub warnings: Vec<String>,
}

/// A failed load. The old task table stays in force.
#[derive(Debug)]
pub enum LoadError {
    Config(ConfigError),
    Keys(KeysError),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Config(error) => write!(f, "invalid config {error}"),
            LoadError::Keys(error) => error.fmt(f),
        }
    }
}

impl std::error::Error for LoadError {}

/// The result of one read of all inputs, with a fingerprint of the bytes read so that a
/// watcher can tell a real change from an event that changed nothing.
#[derive(Debug)]
pub struct Attempt {
    pub fingerprint: [u8; 32],
    pub result: Result<Loaded, LoadError>,
    /// Files to watch even when the load failed.
    pub files: Vec<PathBuf>,
}

/// Reads and checks the configuration, keys and secret files. `previous_keys` is reused
/// when the keys file did not change, which keeps its verification cache.
pub fn load(paths: &Paths, previous_keys: Option<&Arc<KeyStore>>) -> Attempt {
    let mut fingerprint = blake3::Hasher::new();
    let mut files = vec![paths.config.clone(), paths.keys.clone()];
    let result = load_into(paths, previous_keys, &mut fingerprint, &mut files);
    Attempt {
        fingerprint: *fingerprint.finalize().as_bytes(),
        result,
        files,
    }
}

fn load_into(
    paths: &Paths,
    previous_keys: Option<&Arc<KeyStore>>,
    fingerprint: &mut blake3::Hasher,
    files: &mut Vec<PathBuf>,
) -> Result<Loaded, LoadError> {
    let config_text = read_text(&paths.config).map_err(|error| {
        fingerprint.update(error.to_string().as_bytes());
        LoadError::Config(ConfigError {
            path: paths.config.clone(),
            location: None,
            task: None,
            message: format!("failed to read the file: {error}"),
        })
    })?;
    add_to_fingerprint(fingerprint, config_text.as_bytes());

    let keys_read = read_regular_file(&paths.keys);
    match &keys_read {
        Ok(bytes) => add_to_fingerprint(fingerprint, bytes),
        Err(error) => add_to_fingerprint(fingerprint, error.to_string().as_bytes()),
    }

    let config = config::parse(&paths.config, &config_text).map_err(LoadError::Config)?;
    let keys = keys_from(paths, keys_read, previous_keys).map_err(LoadError::Keys)?;
    let webhooks = read_webhooks(&config, fingerprint, files).map_err(LoadError::Config)?;
    let warnings = collect_warnings(&config, &keys, paths);
    Ok(Loaded {
        config,
        keys,
        webhooks,
        warnings,
    })
}

/// Largest configuration, keys or secret file rtask reads.
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Reads a configuration, keys or secret file. Anything but a regular file is an error:
/// opening a FIFO would block the reload, and a device could be read forever.
pub fn read_regular_file(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;

    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)?;
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    if metadata.len() > MAX_FILE_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("larger than {MAX_FILE_BYTES} bytes"),
        ));
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Reads a file as with [`read_regular_file`], as UTF-8 text.
pub fn read_text(path: &Path) -> io::Result<String> {
    String::from_utf8(read_regular_file(path)?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8"))
}

fn add_to_fingerprint(fingerprint: &mut blake3::Hasher, bytes: &[u8]) {
    fingerprint.update(&(bytes.len() as u64).to_le_bytes());
    fingerprint.update(bytes);
}

fn keys_from(
    paths: &Paths,
    read: io::Result<Vec<u8>>,
    previous: Option<&Arc<KeyStore>>,
) -> Result<Arc<KeyStore>, KeysError> {
    let (bytes, exists) = match read {
        Ok(bytes) => (bytes, true),
        Err(error) if error.kind() == io::ErrorKind::NotFound => (Vec::new(), false),
        Err(source) => {
            return Err(KeysError::Read {
                path: paths.keys.clone(),
                source,
            });
        }
    };
    if let Some(previous) = previous.filter(|keys| keys.has_source(&bytes, exists)) {
        return Ok(previous.clone());
    }
    let text = String::from_utf8(bytes).map_err(|_| KeysError::Syntax {
        path: paths.keys.clone(),
        line: 1,
        message: "the file is not UTF-8".into(),
    })?;
    let mut store = KeyStore::parse_after(&paths.keys, &text, previous.map(|keys| &**keys))?;
    store.file_exists = exists;
    Ok(Arc::new(store))
}

fn read_webhooks(
    config: &ParsedConfig,
    fingerprint: &mut blake3::Hasher,
    files: &mut Vec<PathBuf>,
) -> Result<Vec<WebhookSecret>, ConfigError> {
    let mut webhooks = Vec::new();
    for (task_name, task) in &config.config.tasks {
        for (name, secret) in &task.webhook_secrets {
            webhooks.push(WebhookSecret {
                task: task_name.clone(),
                name: name.clone(),
                secret: secret.expose().to_owned(),
            });
        }
        for (name, path) in &task.webhook_secret_files {
            files.push(path.clone());
            let text = read_text(path).map_err(|error| {
                config.task_error(
                    task_name,
                    format!(
                        "failed to read webhookSecretFiles entry \"{name}\" at {}: {error}",
                        path.display()
                    ),
                )
            })?;
            add_to_fingerprint(fingerprint, text.as_bytes());
            let secret = text.trim().to_owned();
            config::check_webhook_secret(name, &secret).map_err(|message| {
                config.task_error(task_name, format!("{message} (in {})", path.display()))
            })?;
            webhooks.push(WebhookSecret {
                task: task_name.clone(),
                name: name.clone(),
                secret,
            });
        }
    }

    let mut owners: HashMap<&str, &WebhookSecret> = HashMap::new();
    for webhook in &webhooks {
        if let Some(other) = owners.insert(&webhook.secret, webhook) {
            return Err(config.task_error(
                &webhook.task,
                format!(
                    "webhook secret \"{}\" is the same as secret \"{}\" of task \"{}\"; \
                     each secret must select one task",
                    webhook.name, other.name, other.task
                ),
            ));
        }
    }
    Ok(webhooks)
}

fn collect_warnings(config: &ParsedConfig, keys: &KeyStore, paths: &Paths) -> Vec<String> {
    let mut warnings = Vec::new();
    if !keys.file_exists {
        warnings.push(format!(
            "keys file {} does not exist: no API key can authenticate until \
             `rtask add-key NAME` creates it",
            paths.keys.display()
        ));
    }
    let mut missing: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (task_name, task) in &config.config.tasks {
        for key_name in &task.api_key_names {
            if keys.get(key_name).is_none() {
                missing.entry(key_name).or_default().push(task_name);
            }
        }
        let has_webhooks =
            !task.webhook_secrets.is_empty() || !task.webhook_secret_files.is_empty();
        if task.api_key_names.is_empty() && !has_webhooks {
            warnings.push(format!(
                "task \"{task_name}\" has neither apiKeyNames nor webhook secrets: \
                 nothing can run it"
            ));
        }
        if task.is_async && task.max_concurrent_tasks == 0 && task.rate_limit == 0.0 {
            warnings.push(format!(
                "task \"{task_name}\" is async with neither maxConcurrentTasks nor \
                 rateLimit: every request starts another process"
            ));
        }
        if task
            .pass_request_headers
            .iter()
            .any(|header| header.eq_ignore_ascii_case("authorization"))
        {
            warnings.push(format!(
                "task \"{task_name}\" passes the Authorization header: the task's \
                 environment gets the caller's API key"
            ));
        }
        if let Some(workdir) = &task.workdir
            && !Path::new(workdir).is_dir()
        {
            warnings.push(format!(
                "task \"{task_name}\": workdir {} is not a directory now",
                workdir.display()
            ));
        }
    }
    for (key_name, tasks) in missing {
        warnings.push(format!(
            "key \"{key_name}\" (allowed for {}) is not in the keys file: it cannot \
             authenticate",
            tasks.join(", ")
        ));
    }
    warnings
}

/// Formats `count` with `noun`, adding an "s" unless the count is one: "1 key", "2 keys".
pub fn format_count(count: usize, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}
