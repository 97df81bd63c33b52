//! The task table: an immutable value built from a loaded configuration and keys file,
//! shared behind one `ArcSwap` handle and replaced whole on reload.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::Semaphore;

use crate::config::TaskConfig;
use crate::keys::{KeyEntry, KeyStore};
use crate::limits::Rlimits;
use crate::load::Loaded;

/// One configured task, with what its requests share at run time.
#[derive(Debug)]
pub struct Task {
    pub name: String,
    pub config: TaskConfig,
    /// The task's resource limits with `[defaults.rlimits]` applied.
    pub rlimits: Rlimits,
    /// The keys that may call this task, by the id a presented key carries.
    pub allowed_keys: HashMap<u32, Arc<KeyEntry>>,
    pub limiter: Option<Arc<DefaultDirectRateLimiter>>,
    /// One permit per running task when `maxConcurrentTasks` is set.
    pub slots: Option<Arc<Semaphore>>,
}

/// The target of a webhook secret.
#[derive(Debug, Clone)]
pub struct Webhook {
    pub task: Arc<Task>,
    /// The secret's name, which stands for the caller in logs and metrics.
    pub name: String,
}

/// All tasks of one configuration. A request loads the table once and uses that snapshot
/// to its end, so it never reads a mix of two configurations.
#[derive(Debug)]
pub struct TaskTable {
    tasks: HashMap<String, Arc<Task>>,
    /// Webhooks by keyed hash of their secret, so that looking one up does not compare
    /// secrets byte by byte.
    webhooks: HashMap<[u8; 32], Webhook>,
    webhook_key: [u8; 32],
    pub keys: Arc<KeyStore>,
    pub shutdown_grace: Duration,
}

impl TaskTable {
    /// Builds a table from `loaded`. A task of `previous` keeps its rate limiter when its
    /// `rateLimit` did not change and its concurrency slots when its `maxConcurrentTasks`
    /// did not change, so that a reload neither refills a bucket nor frees busy slots.
    pub fn build(loaded: &Loaded, previous: Option<&TaskTable>) -> TaskTable {
        let config = &loaded.config.config;
        let mut tasks = HashMap::new();
        for (name, task_config) in &config.tasks {
            let old = previous.and_then(|table| table.tasks.get(name));
            let task = Task {
                name: name.clone(),
                config: task_config.clone(),
                rlimits: task_config.rlimits.or(&config.defaults.rlimits),
                allowed_keys: allowed_keys(task_config, &loaded.keys),
                limiter: carry_limiter(task_config, old),
                slots: carry_slots(task_config, old),
            };
            tasks.insert(name.clone(), Arc::new(task));
        }

        let mut webhook_key = [0u8; 32];
        getrandom::fill(&mut webhook_key).expect("the OS random source works");
        let mut webhooks = HashMap::new();
        for webhook in &loaded.webhooks {
            let digest = blake3::keyed_hash(&webhook_key, webhook.secret.as_bytes());
            let entry = Webhook {
                task: tasks[&webhook.task].clone(),
                name: webhook.name.clone(),
            };
            webhooks.insert(*digest.as_bytes(), entry);
        }

        TaskTable {
            tasks,
            webhooks,
            webhook_key,
            keys: loaded.keys.clone(),
            shutdown_grace: Duration::from_secs(config.shutdown_grace_seconds),
        }
    }

    pub fn task(&self, name: &str) -> Option<&Arc<Task>> {
        self.tasks.get(name)
    }

    pub fn webhook(&self, secret: &str) -> Option<&Webhook> {
        let digest = blake3::keyed_hash(&self.webhook_key, secret.as_bytes());
        self.webhooks.get(digest.as_bytes())
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    pub fn webhook_count(&self) -> usize {
        self.webhooks.len()
    }

    /// Returns each task's name and histogram buckets, for the metrics registry.
    pub fn histogram_specs(&self) -> Vec<(String, Vec<f64>)> {
        self.tasks
            .values()
            .map(|task| (task.name.clone(), task.config.histogram_buckets()))
            .collect()
    }
}

fn allowed_keys(task: &TaskConfig, keys: &KeyStore) -> HashMap<u32, Arc<KeyEntry>> {
    task.api_key_names
        .iter()
        .filter_map(|name| keys.get(name))
        .map(|entry| (entry.stored.id, entry.clone()))
        .collect()
}

fn carry_limiter(
    task: &TaskConfig,
    old: Option<&Arc<Task>>,
) -> Option<Arc<DefaultDirectRateLimiter>> {
    if let Some(old) = old.filter(|old| old.config.rate_limit == task.rate_limit) {
        return old.limiter.clone();
    }
    if task.rate_limit <= 0.0 {
        return None;
    }
    // One request per period with a burst of one, as the original's limiter.
    let period = Duration::from_secs_f64(1.0 / task.rate_limit);
    let quota = Quota::with_period(period)?.allow_burst(NonZeroU32::MIN);
    Some(Arc::new(RateLimiter::direct(quota)))
}

fn carry_slots(task: &TaskConfig, old: Option<&Arc<Task>>) -> Option<Arc<Semaphore>> {
    if let Some(old) =
        old.filter(|old| old.config.max_concurrent_tasks == task.max_concurrent_tasks)
    {
        return old.slots.clone();
    }
    match task.max_concurrent_tasks {
        0 => None,
        max => Some(Arc::new(Semaphore::new(max as usize))),
    }
}
