//! The configuration file: serde structs in the original rtask's camelCase format, the
//! parser that turns TOML errors into file, line and task, and the semantic checks that
//! startup, reload and `rtask check-config` share.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::limits::Rlimits;

/// Prometheus' default histogram buckets, in seconds.
pub const DEFAULT_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    /// How long a stopping daemon lets requests and tasks in flight finish, in seconds.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace_seconds: u64,
    /// Values that apply to every task that does not set its own.
    #[serde(default)]
    pub defaults: Defaults,
    /// Task definitions by name; the name is the last segment of `/tasks/NAME`.
    #[serde(default)]
    pub tasks: BTreeMap<String, TaskConfig>,
}

/// The `[defaults]` table.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Defaults {
    #[serde(default)]
    pub rlimits: Rlimits,
}

/// One `[tasks.NAME]` table, with the original's key names and defaults.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TaskConfig {
    /// Program and arguments; no shell is involved.
    pub command: Vec<String>,
    pub workdir: Option<PathBuf>,
    /// Names of the keys in the keys file that may call `/tasks/NAME`.
    #[serde(default)]
    pub api_key_names: Vec<String>,
    /// Webhook secret by name; the name stands for the caller in logs and metrics.
    #[serde(default)]
    pub webhook_secrets: BTreeMap<String, Secret>,
    /// Path of a file that contains a webhook secret, by name.
    #[serde(default)]
    pub webhook_secret_files: BTreeMap<String, PathBuf>,
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    #[serde(default)]
    pub pass_request_headers: Vec<String>,
    #[serde(default, rename = "async")]
    pub is_async: bool,
    #[serde(default = "default_retention")]
    pub async_result_retention_seconds: u64,
    /// Requests per second, 0 for no limit.
    #[serde(default)]
    pub rate_limit: f64,
    /// 0 for no limit.
    #[serde(default)]
    pub max_concurrent_tasks: u32,
    /// 0 selects the default, as in the original.
    #[serde(default = "default_io_bytes")]
    pub max_input_bytes: u64,
    /// Per stream; 0 selects the default, as in the original.
    #[serde(default = "default_io_bytes")]
    pub max_output_bytes: u64,
    /// 0 selects the default, as in the original.
    #[serde(default = "default_timeout")]
    pub execution_timeout_seconds: u64,
    /// Time between SIGTERM and SIGKILL when a task is stopped.
    #[serde(default = "default_kill_grace")]
    pub kill_grace_seconds: u64,
    #[serde(default)]
    pub merge_stderr: bool,
    /// Kill the task when the client of a synchronous request disconnects.
    #[serde(default)]
    pub cancel_on_disconnect: bool,
    #[serde(default)]
    pub duration_histogram_buckets: Option<Vec<f64>>,
    #[serde(default)]
    pub rlimits: Rlimits,
}

/// A webhook secret. Its `Debug` output is redacted, so that logging a task
/// definition cannot leak it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

fn default_shutdown_grace() -> u64 {
    10
}

fn default_retention() -> u64 {
    60
}

fn default_io_bytes() -> u64 {
    16 * 1024
}

fn default_timeout() -> u64 {
    30
}

fn default_kill_grace() -> u64 {
    5
}

impl TaskConfig {
    pub fn max_input_bytes(&self) -> usize {
        nonzero_or(self.max_input_bytes, default_io_bytes()) as usize
    }

    pub fn max_output_bytes(&self) -> usize {
        nonzero_or(self.max_output_bytes, default_io_bytes()) as usize
    }

    pub fn execution_timeout(&self) -> std::time::Duration {
        let seconds = nonzero_or(self.execution_timeout_seconds, default_timeout());
        std::time::Duration::from_secs(seconds)
    }

    pub fn kill_grace(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.kill_grace_seconds)
    }

    pub fn result_retention(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.async_result_retention_seconds)
    }

    pub fn histogram_buckets(&self) -> Vec<f64> {
        match &self.duration_histogram_buckets {
            Some(buckets) => buckets.clone(),
            None => DEFAULT_BUCKETS.to_vec(),
        }
    }
}

fn nonzero_or(value: u64, default: u64) -> u64 {
    if value == 0 { default } else { value }
}

/// A place in the configuration file, 1-based as editors show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

impl Location {
    fn from_offset(text: &str, offset: usize) -> Location {
        let before = &text[..offset.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |index| index + 1);
        let column = before[line_start..].chars().count() + 1;
        Location { line, column }
    }
}

/// An invalid configuration file, with the place and the task where that is known.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub path: PathBuf,
    pub location: Option<Location>,
    pub task: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(location) = self.location {
            write!(f, ", line {}, column {}", location.line, location.column)?;
        }
        if let Some(task) = &self.task {
            write!(f, ", task \"{task}\"")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// A configuration that parsed, with the place of each task for later error messages.
#[derive(Debug, Clone)]
pub struct ParsedConfig {
    pub config: Config,
    task_locations: BTreeMap<String, Location>,
    pub path: PathBuf,
}

impl ParsedConfig {
    /// Builds an error about `task`, pointing at the task's table header.
    pub fn task_error(&self, task: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            path: self.path.clone(),
            location: self.task_locations.get(task).copied(),
            task: Some(task.to_owned()),
            message: message.into(),
        }
    }

    /// Builds an error about the file as a whole.
    pub fn file_error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError {
            path: self.path.clone(),
            location: None,
            task: None,
            message: message.into(),
        }
    }
}

/// Task names and their spans, parsed separately so that an error inside a task can be
/// attributed to it even when the task itself does not deserialize.
#[derive(Deserialize)]
struct TaskSpans {
    #[serde(default)]
    tasks: BTreeMap<Spanned<String>, serde::de::IgnoredAny>,
}

/// Parses `text`, read from `path`, and checks what serde cannot: task names, commands,
/// numbers, header and variable names, and resource limits.
pub fn parse(path: &Path, text: &str) -> Result<ParsedConfig, ConfigError> {
    // An empty file is what an editor or a tool leaves between truncating and writing;
    // loading it would drop every task until the next save.
    if text.trim().is_empty() {
        return Err(ConfigError {
            path: path.to_owned(),
            location: None,
            task: None,
            message: "the file is empty".into(),
        });
    }
    let spans: Option<TaskSpans> = toml::from_str(text).ok();
    let mut task_starts: Vec<(usize, String)> = spans
        .map(|spans| {
            spans
                .tasks
                .into_keys()
                .map(|name| (name.span().start, name.into_inner()))
                .collect()
        })
        .unwrap_or_default();
    task_starts.extend(task_headers(text));

    let config: Config = toml::from_str(text).map_err(|error| {
        let span = error.span().unwrap_or(0..0);
        ConfigError {
            path: path.to_owned(),
            location: Some(Location::from_offset(text, span.start)),
            task: task_at(&task_starts, &span),
            message: without_value(error.message().trim()),
        }
    })?;

    let task_locations = task_starts
        .iter()
        .map(|(offset, name)| (name.clone(), Location::from_offset(text, *offset)))
        .collect();
    let parsed = ParsedConfig {
        config,
        task_locations,
        path: path.to_owned(),
    };
    check(&parsed)?;
    Ok(parsed)
}

/// Finds the task an error span belongs to. An error about a whole table (a missing
/// field) spans the table, header included, so a task named inside the span, if it is
/// the only one, wins. Otherwise the task whose name starts last before the span contains it, which
/// is true for every layout TOML allows except a task split over several tables.
fn task_at(task_starts: &[(usize, String)], span: &Range<usize>) -> Option<String> {
    let mut names_inside: Vec<&String> = task_starts
        .iter()
        .filter(|(offset, _)| span.contains(offset))
        .map(|(_, name)| name)
        .collect();
    names_inside.sort();
    names_inside.dedup();
    let inside = match names_inside.as_slice() {
        [only] => Some((*only).clone()),
        _ => None,
    };
    let before = || {
        task_starts
            .iter()
            .filter(|(offset, _)| *offset <= span.start)
            .max_by_key(|(offset, _)| *offset)
    };
    inside.or_else(|| before().map(|(_, name)| name.clone()))
}

/// Removes the offending value from a serde message such as ``invalid type: integer
/// `1234`, expected a string`` or `invalid type: string "abc", expected a map`: it may
/// be a secret or a token typed in the wrong place, and the message goes to the log and
/// to systemd's status line. What remains names the kind of value and what was expected.
fn without_value(message: &str) -> String {
    let prefixes = ["invalid type: ", "invalid value: "];
    let Some((prefix, rest)) = prefixes
        .iter()
        .find_map(|prefix| message.strip_prefix(prefix).map(|rest| (*prefix, rest)))
    else {
        return message.to_owned();
    };
    let (unexpected, expected) = match rest.rfind(", expected") {
        Some(index) => rest.split_at(index),
        None => (rest, ""),
    };
    let kind = unexpected
        .split(['`', '"'])
        .next()
        .unwrap_or_default()
        .trim_end();
    format!("{prefix}{kind}{expected}")
}

/// Finds every table header that belongs to a task, such as `[tasks.a.environment]`,
/// with its offset. A task's sub-tables may come after other tasks, and an error inside
/// one belongs to the task the header names.
fn task_headers(text: &str) -> Vec<(usize, String)> {
    let mut headers = Vec::new();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        let line_offset = offset;
        offset += line.len();
        let Some(rest) = trimmed.strip_prefix('[') else {
            continue;
        };
        let Some((key, _)) = rest.split_once(']') else {
            continue;
        };
        if key.starts_with('[') {
            continue;
        }
        // Parsing `KEY = 0` lets the TOML parser handle quoting and dots in the key.
        let Ok(table) = toml::from_str::<toml::Table>(&format!("{key} = 0")) else {
            continue;
        };
        if let Some(toml::Value::Table(tasks)) = table.get("tasks")
            && let Some(name) = tasks.keys().next()
        {
            headers.push((line_offset, name.clone()));
        }
    }
    headers
}

/// Reports whether `name` can be used unescaped as a URL path segment and a metric label.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= 128
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"-._~".contains(&byte))
}

/// Maximum duration any setting accepts: a year. Larger values are typos, and would
/// overflow the clock arithmetic.
const MAX_SECONDS: u64 = 366 * 24 * 3600;

fn check_seconds(key: &str, seconds: u64) -> Result<(), String> {
    if seconds > MAX_SECONDS {
        return Err(format!("{key} = {seconds} is longer than a year"));
    }
    Ok(())
}

fn check(parsed: &ParsedConfig) -> Result<(), ConfigError> {
    let config = &parsed.config;
    check_seconds("shutdownGraceSeconds", config.shutdown_grace_seconds)
        .map_err(|message| parsed.file_error(message))?;
    crate::limits::check(&config.defaults.rlimits)
        .map_err(|message| parsed.file_error(format!("[defaults.rlimits]: {message}")))?;

    for (name, task) in &config.tasks {
        check_task(name, task).map_err(|message| parsed.task_error(name, message))?;
    }
    Ok(())
}

fn check_task(name: &str, task: &TaskConfig) -> Result<(), String> {
    if !is_valid_name(name) {
        return Err(format!(
            "invalid task name \"{name}\": use letters, digits, '-', '.', '_' or '~' \
             (it is a URL path segment)"
        ));
    }
    check_command(task)?;
    check_names(task)?;
    check_numbers(task)?;
    crate::limits::check(&task.rlimits).map_err(|message| format!("rlimits: {message}"))
}

fn check_command(task: &TaskConfig) -> Result<(), String> {
    match task.command.first() {
        None => return Err("command is empty: give at least the program to run".into()),
        Some(program) if program.is_empty() => {
            return Err("command has an empty program name".into());
        }
        Some(_) => {}
    }
    if task.command.iter().any(|argument| argument.contains('\0')) {
        return Err("command contains a NUL byte".into());
    }
    Ok(())
}

/// Checks environment variables, header names, key names and webhook secrets.
fn check_names(task: &TaskConfig) -> Result<(), String> {
    for variable in task.environment.keys() {
        if variable.is_empty() || variable.contains('=') || variable.contains('\0') {
            return Err(format!("invalid environment variable name \"{variable}\""));
        }
    }
    if task.environment.values().any(|value| value.contains('\0')) {
        return Err("an environment value contains a NUL byte".into());
    }

    for header in &task.pass_request_headers {
        if axum::http::HeaderName::from_bytes(header.as_bytes()).is_err() {
            return Err(format!(
                "invalid header name \"{header}\" in passRequestHeaders"
            ));
        }
    }

    for key_name in &task.api_key_names {
        if !is_valid_reference_name(key_name) {
            return Err(format!("invalid key name {key_name:?} in apiKeyNames"));
        }
    }
    for (secret_name, secret) in &task.webhook_secrets {
        check_webhook_secret(secret_name, secret.expose())?;
    }
    Ok(())
}

/// Checks the rate limit, the histogram buckets and the durations.
fn check_numbers(task: &TaskConfig) -> Result<(), String> {
    if !task.rate_limit.is_finite() || task.rate_limit < 0.0 {
        return Err(format!(
            "rateLimit must be 0 (no limit) or a positive number of requests per second, got {}",
            task.rate_limit
        ));
    }
    if task.rate_limit > 0.0 && !(1e-6..=1e6).contains(&task.rate_limit) {
        return Err(format!(
            "rateLimit {} is outside 0.000001 to 1000000 requests per second \
             (0 means no limit)",
            task.rate_limit
        ));
    }

    if let Some(buckets) = &task.duration_histogram_buckets {
        let increasing = buckets.windows(2).all(|pair| pair[0] < pair[1]);
        if buckets.is_empty() || !increasing || buckets.iter().any(|b| !b.is_finite()) {
            return Err("durationHistogramBuckets must be finite and strictly increasing".into());
        }
    }

    let durations = [
        ("executionTimeoutSeconds", task.execution_timeout_seconds),
        ("killGraceSeconds", task.kill_grace_seconds),
        (
            "asyncResultRetentionSeconds",
            task.async_result_retention_seconds,
        ),
    ];
    for (key, seconds) in durations {
        check_seconds(key, seconds)?;
    }
    Ok(())
}

/// Reports whether `name` is usable as the name of a key or a webhook secret that a
/// configuration refers to: the original accepted any name, so only what would break a
/// log line or systemd's status line is rejected.
pub fn is_valid_reference_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 128 && !name.chars().any(char::is_control)
}

/// Checks a webhook secret, whether it came from the config or from a secret file. It
/// is matched against the decoded rest of `/wh/...`, so any text without control
/// characters works; a client percent-encodes what a URL cannot carry.
pub fn check_webhook_secret(name: &str, secret: &str) -> Result<(), String> {
    if !is_valid_reference_name(name) {
        return Err(format!("invalid webhook secret name {name:?}"));
    }
    if secret.is_empty() {
        return Err(format!("webhook secret \"{name}\" is empty"));
    }
    if secret.chars().any(char::is_control) {
        return Err(format!(
            "webhook secret \"{name}\" contains a control character"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> Result<ParsedConfig, ConfigError> {
        parse(Path::new("/etc/rtask/config.toml"), text)
    }

    #[test]
    fn defaults_match_original() {
        let parsed = parse_text("[tasks.a]\ncommand = [\"true\"]\n").unwrap();
        let task = &parsed.config.tasks["a"];
        assert_eq!(task.max_input_bytes(), 16384);
        assert_eq!(task.max_output_bytes(), 16384);
        assert_eq!(task.execution_timeout().as_secs(), 30);
        assert_eq!(task.async_result_retention_seconds, 60);
        assert!(!task.is_async);
        assert!(!task.merge_stderr);
        assert_eq!(parsed.config.shutdown_grace_seconds, 10);
    }

    #[test]
    fn unknown_key_names_line_and_task() {
        let text =
            "[tasks.a]\ncommand = [\"true\"]\n\n[tasks.b]\ncommand = [\"true\"]\nbogus = 1\n";
        let error = parse_text(text).unwrap_err();
        assert_eq!(error.task.as_deref(), Some("b"));
        assert_eq!(error.location.map(|l| l.line), Some(6));
        assert!(error.message.contains("bogus"), "{error}");
    }

    #[test]
    fn missing_command_names_its_task() {
        let text = "[tasks.a]\ncommand = [\"true\"]\n\n[tasks.b]\nworkdir = \"/\"\n";
        let error = parse_text(text).unwrap_err();
        assert_eq!(error.task.as_deref(), Some("b"), "{error}");

        let text = "[tasks.b]\nworkdir = \"/\"\n\n[tasks.a]\ncommand = [\"true\"]\n";
        let error = parse_text(text).unwrap_err();
        assert_eq!(error.task.as_deref(), Some("b"), "{error}");
    }

    #[test]
    fn subtable_error_names_its_task() {
        let text = "[tasks.alpha]\ncommand = [\"true\"]\n\n[tasks.beta]\ncommand = [\"true\"]\n\n[tasks.alpha.environment]\nFOO = 1\n";
        let error = parse_text(text).unwrap_err();
        assert_eq!(error.task.as_deref(), Some("alpha"), "{error}");
        assert_eq!(error.location.map(|l| l.line), Some(8));
    }

    #[test]
    fn empty_command_is_rejected() {
        let error = parse_text("[tasks.a]\ncommand = []\n").unwrap_err();
        assert_eq!(error.task.as_deref(), Some("a"));
        assert_eq!(error.location.map(|l| l.line), Some(1));
    }

    #[test]
    fn task_name_must_fit_url_segment() {
        let error = parse_text("[tasks.\"a/b\"]\ncommand = [\"true\"]\n").unwrap_err();
        assert!(error.message.contains("invalid task name"), "{error}");
    }

    #[test]
    fn syntax_error_has_location() {
        let error = parse_text("[tasks.a]\ncommand = [\"true\"\n").unwrap_err();
        assert!(error.location.is_some());
    }

    #[test]
    fn secret_debug_is_redacted() {
        let text = "[tasks.a]\ncommand = [\"true\"]\nwebhookSecrets = { gh = \"hunter2\" }\n";
        let parsed = parse_text(text).unwrap();
        let debug = format!("{:?}", parsed.config);
        assert!(!debug.contains("hunter2"), "{debug}");
    }

    #[test]
    fn empty_file_is_rejected() {
        let error = parse_text("  \n").unwrap_err();
        assert_eq!(error.message, "the file is empty");
    }

    #[test]
    fn type_error_hides_value() {
        let cases = [
            (
                "environment = { TOKEN = 1234567890123 }",
                "1234567890123",
                "integer",
            ),
            (
                "webhookSecrets = \"hook-secret-123\"",
                "hook-secret-123",
                "string",
            ),
            (
                "asyncResultRetentionSeconds = \"token-42\"",
                "token-42",
                "string",
            ),
        ];
        for (line, value, kind) in cases {
            let text = format!("[tasks.a]\ncommand = [\"true\"]\n{line}\n");
            let error = parse_text(&text).unwrap_err();
            assert!(!error.to_string().contains(value), "{error}");
            assert!(
                error.message.contains(&format!("invalid type: {kind}")),
                "{error}"
            );
            assert!(error.message.contains("expected"), "{error}");
        }
    }

    #[test]
    fn display_names_everything() {
        let error = parse_text("[tasks.a]\ncommand = 5\n").unwrap_err();
        let text = error.to_string();
        assert!(text.starts_with("/etc/rtask/config.toml, line 2"), "{text}");
        assert!(text.contains("task \"a\""), "{text}");
    }
}
