//! API keys, byte-compatible with the files of the original Go rtask.
//!
//! The keys file is a TOML table from key name to a stored key. A stored key is base64url
//! (no padding) of a CBOR map `{1: id, 2: salt, 3: time cost, 4: memory in MiB,
//! 5: parallelism, 6: hash}`. The hash is argon2id (version 0x13) of the raw key bytes,
//! with an output as long as the key. The key a client presents is base64url of CBOR `{1: id, 2: key bytes}`. As
//! the Go encoder writes them, fields equal to zero are absent.

use std::collections::{BTreeMap, HashMap};

use std::io;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ciborium::Value;
use subtle::ConstantTimeEq;

mod file;

pub use file::{add_key, remove_key};

/// Parameters of new keys: those of the original, so both programs verify each other's keys.
const NEW_KEY_BYTES: usize = 40;
const NEW_SALT_BYTES: usize = 16;
const NEW_TIME_COST: u32 = 1;
const NEW_MEMORY_MIB: u32 = 64;
const NEW_PARALLELISM: u32 = 4;

/// A presented key longer than this is rejected before decoding; real keys are ~70 chars.
const MAX_PRESENTED_KEY_CHARS: usize = 1024;

/// Largest argon2 parameters a keys file may use. A verification costs this much
/// memory and time for any request that names the key's id, with or without the
/// right key, so a typo such as 65536 MiB would let anyone abort the daemon.
const MAX_MEMORY_MIB: u32 = 1024;
const MAX_TIME_COST: u32 = 16;
const MAX_PARALLELISM: u32 = 64;

/// Reports whether `name` is usable as the name of a new key. Names in existing files
/// (the original accepted any) are only checked by `config::is_valid_reference_name`.
pub fn is_valid_key_name(name: &str) -> bool {
    crate::config::is_valid_name(name) && name.len() <= 64
}

/// The argon2id parameters and hash of one key, as stored in the keys file.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub id: u32,
    salt: Vec<u8>,
    time_cost: u32,
    memory_mib: u32,
    parallelism: u32,
    hash: Vec<u8>,
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The salt and hash stay out of every log line.
        f.debug_struct("StoredKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl StoredKey {
    fn argon2(&self) -> Result<Argon2<'static>, argon2::Error> {
        let memory_kib = self.memory_mib.saturating_mul(1024);
        let params = Params::new(
            memory_kib,
            self.time_cost,
            self.parallelism,
            Some(self.hash.len()),
        )?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }

    /// Hashes `key` with this key's parameters and compares in constant time. This costs
    /// `memory_mib` of memory and tens of milliseconds: call it off the async runtime.
    pub fn matches(&self, key: &[u8]) -> bool {
        if key.len() != self.hash.len() {
            return false;
        }
        let Ok(argon2) = self.argon2() else {
            return false;
        };
        let mut computed = vec![0u8; self.hash.len()];
        if argon2
            .hash_password_into(key, &self.salt, &mut computed)
            .is_err()
        {
            return false;
        }
        computed.ct_eq(&self.hash).into()
    }

    fn hash_new(id: u32, key: &[u8]) -> Result<StoredKey, KeysError> {
        let mut salt = vec![0u8; NEW_SALT_BYTES];
        getrandom::fill(&mut salt).map_err(|error| KeysError::Random(error.to_string()))?;
        let mut stored = StoredKey {
            id,
            salt,
            time_cost: NEW_TIME_COST,
            memory_mib: NEW_MEMORY_MIB,
            parallelism: NEW_PARALLELISM,
            hash: vec![0u8; key.len()],
        };
        let argon2 = stored
            .argon2()
            .map_err(|error| KeysError::Hash(error.to_string()))?;
        let mut hash = vec![0u8; key.len()];
        argon2
            .hash_password_into(key, &stored.salt, &mut hash)
            .map_err(|error| KeysError::Hash(error.to_string()))?;
        stored.hash = hash;
        Ok(stored)
    }

    fn decode(text: &str) -> Result<StoredKey, String> {
        let fields = decode_cbor_map(text)?;
        let number = |field: u64| -> Result<u32, String> {
            match fields.get(&field) {
                None => Ok(0),
                Some(Value::Integer(value)) => u32::try_from(i128::from(*value))
                    .map_err(|_| format!("field {field} is out of range")),
                Some(_) => Err(format!("field {field} is not an integer")),
            }
        };
        let bytes = |field: u64| -> Result<Vec<u8>, String> {
            match fields.get(&field) {
                None => Ok(Vec::new()),
                Some(Value::Bytes(value)) => Ok(value.clone()),
                Some(_) => Err(format!("field {field} is not a byte string")),
            }
        };
        let stored = StoredKey {
            id: number(1)?,
            salt: bytes(2)?,
            time_cost: number(3)?,
            memory_mib: number(4)?,
            parallelism: number(5)?,
            hash: bytes(6)?,
        };
        if stored.hash.len() < 4 {
            return Err("the hash is missing or shorter than 4 bytes".into());
        }
        if stored.memory_mib > MAX_MEMORY_MIB
            || stored.time_cost > MAX_TIME_COST
            || stored.parallelism > MAX_PARALLELISM
        {
            return Err(format!(
                "argon2 parameters (memory {} MiB, time cost {}, parallelism {}) are above \
                 the maximum ({MAX_MEMORY_MIB} MiB, {MAX_TIME_COST}, {MAX_PARALLELISM})",
                stored.memory_mib, stored.time_cost, stored.parallelism
            ));
        }
        stored
            .argon2()
            .map_err(|error| format!("invalid argon2 parameters: {error}"))?;
        Ok(stored)
    }

    fn encode(&self) -> String {
        let mut fields = Vec::new();
        push_number(&mut fields, 1, self.id);
        push_bytes(&mut fields, 2, &self.salt);
        push_number(&mut fields, 3, self.time_cost);
        push_number(&mut fields, 4, self.memory_mib);
        push_number(&mut fields, 5, self.parallelism);
        push_bytes(&mut fields, 6, &self.hash);
        encode_cbor_map(fields)
    }
}

// Fields equal to zero are left out, as the original's encoder does.
fn push_number(fields: &mut Vec<(Value, Value)>, field: u8, value: u32) {
    if value != 0 {
        fields.push((Value::from(field), Value::from(value)));
    }
}

fn push_bytes(fields: &mut Vec<(Value, Value)>, field: u8, value: &[u8]) {
    if !value.is_empty() {
        fields.push((Value::from(field), Value::Bytes(value.to_vec())));
    }
}

fn encode_cbor_map(fields: Vec<(Value, Value)>) -> String {
    let mut buffer = Vec::new();
    ciborium::into_writer(&Value::Map(fields), &mut buffer)
        .expect("writing CBOR to a Vec cannot fail");
    URL_SAFE_NO_PAD.encode(buffer)
}

fn decode_cbor_map(text: &str) -> Result<HashMap<u64, Value>, String> {
    let bytes = URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|error| format!("invalid base64url: {error}"))?;
    let value: Value = ciborium::from_reader(bytes.as_slice())
        .map_err(|error| format!("invalid CBOR: {error}"))?;
    let Value::Map(entries) = value else {
        return Err("the CBOR value is not a map".into());
    };
    let mut fields = HashMap::new();
    for (key, value) in entries {
        let Value::Integer(key) = key else {
            return Err("a CBOR map key is not an integer".into());
        };
        let key = u64::try_from(i128::from(key)).map_err(|_| "a CBOR map key is negative")?;
        fields.insert(key, value);
    }
    Ok(fields)
}

/// A key as a client presents it: the id that selects the stored key, and the secret bytes.
pub struct PresentedKey {
    pub id: u32,
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for PresentedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresentedKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl PresentedKey {
    /// Decodes the text of a `Bearer` credential.
    pub fn decode(text: &str) -> Result<PresentedKey, String> {
        if text.len() > MAX_PRESENTED_KEY_CHARS {
            return Err("the key is too long".into());
        }
        let fields = decode_cbor_map(text)?;
        let id = match fields.get(&1) {
            None => 0,
            Some(Value::Integer(value)) => {
                u32::try_from(i128::from(*value)).map_err(|_| "the key id is out of range")?
            }
            Some(_) => return Err("the key id is not an integer".into()),
        };
        let secret = match fields.get(&2) {
            Some(Value::Bytes(bytes)) if !bytes.is_empty() => bytes.clone(),
            _ => return Err("the key bytes are missing".into()),
        };
        Ok(PresentedKey { id, secret })
    }

    fn encode(&self) -> String {
        let mut fields = Vec::new();
        push_number(&mut fields, 1, self.id);
        push_bytes(&mut fields, 2, &self.secret);
        encode_cbor_map(fields)
    }
}

/// One named key of a loaded keys file, with its verification cache.
#[derive(Debug)]
pub struct KeyEntry {
    pub name: String,
    pub stored: StoredKey,
    /// Keyed hash of the presented key that last passed argon2, so that the same key is
    /// accepted again without paying for argon2. It lives as long as this loaded keys
    /// file: a change to the file builds new entries with empty caches.
    verified: OnceLock<[u8; 32]>,
}

impl KeyEntry {
    /// Reports whether `digest` is the cached digest of a key that passed verification.
    pub fn is_cached(&self, digest: &[u8; 32]) -> bool {
        self.verified
            .get()
            .is_some_and(|cached| bool::from(cached.ct_eq(digest)))
    }

    pub fn cache(&self, digest: [u8; 32]) {
        let _ = self.verified.set(digest);
    }
}

/// The keys of one keys file, looked up by name and by id.
pub struct KeyStore {
    by_name: BTreeMap<String, Arc<KeyEntry>>,
    /// Random key of the cache's keyed hash, so that a memory dump of the cache does not
    /// give away a cheaper test than argon2 for guessed keys.
    cache_key: [u8; 32],
    /// The file's bytes, to tell whether a reload changed it.
    source: Vec<u8>,
    /// False when the file did not exist.
    pub file_exists: bool,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore")
            .field("names", &self.by_name.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl KeyStore {
    /// Parses the contents of a keys file.
    pub fn parse(path: &Path, text: &str) -> Result<KeyStore, KeysError> {
        KeyStore::parse_after(path, text, None)
    }

    /// Parses the contents of a keys file that replaces `previous`. A key whose stored
    /// hash did not change keeps its verification cache; a removed or replaced key
    /// loses it.
    pub fn parse_after(
        path: &Path,
        text: &str,
        previous: Option<&KeyStore>,
    ) -> Result<KeyStore, KeysError> {
        let encoded = parse_table(path, text)?;
        let mut by_name = BTreeMap::new();
        let mut names_by_id: HashMap<u32, &str> = HashMap::new();
        for (name, value) in &encoded {
            if !crate::config::is_valid_reference_name(name) {
                return Err(KeysError::InvalidKey {
                    path: path.to_owned(),
                    name: name.escape_debug().to_string(),
                    message: "the name is empty, longer than 128 characters or has a \
                              control character"
                        .into(),
                });
            }
            let stored = StoredKey::decode(value).map_err(|message| KeysError::InvalidKey {
                path: path.to_owned(),
                name: name.clone(),
                message,
            })?;
            if let Some(other) = names_by_id.insert(stored.id, name) {
                return Err(KeysError::InvalidKey {
                    path: path.to_owned(),
                    name: name.clone(),
                    message: format!("id {} is also used by key \"{other}\"", stored.id),
                });
            }
            let unchanged = previous
                .and_then(|previous| previous.by_name.get(name))
                .filter(|entry| entry.stored == stored);
            let entry = match unchanged {
                Some(entry) => entry.clone(),
                None => Arc::new(KeyEntry {
                    name: name.clone(),
                    stored,
                    verified: OnceLock::new(),
                }),
            };
            by_name.insert(name.clone(), entry);
        }
        // The cached digests are keyed with the cache key, so kept entries need it.
        let cache_key = match previous {
            Some(previous) => previous.cache_key,
            None => {
                let mut cache_key = [0u8; 32];
                getrandom::fill(&mut cache_key)
                    .map_err(|error| KeysError::Random(error.to_string()))?;
                cache_key
            }
        };
        Ok(KeyStore {
            by_name,
            cache_key,
            source: text.as_bytes().to_vec(),
            file_exists: true,
        })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<KeyEntry>> {
        self.by_name.get(name)
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Reports whether this store was parsed from exactly `text`.
    pub fn has_source(&self, text: &[u8], file_exists: bool) -> bool {
        self.file_exists == file_exists && self.source == text
    }

    /// Returns the keyed hash under which a verified presented key is cached.
    pub fn digest(&self, key: &PresentedKey) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new_keyed(&self.cache_key);
        hasher.update(&key.id.to_le_bytes());
        hasher.update(&key.secret);
        *hasher.finalize().as_bytes()
    }
}

fn parse_table(path: &Path, text: &str) -> Result<BTreeMap<String, String>, KeysError> {
    toml::from_str(text).map_err(|error| {
        let offset = error.span().map_or(0, |span| span.start);
        let before = &text[..offset.min(text.len())];
        KeysError::Syntax {
            path: path.to_owned(),
            line: before.matches('\n').count() + 1,
            message: error.message().trim().to_owned(),
        }
    })
}

/// A failure to read, parse or change the keys file.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("failed to read keys file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("invalid keys file {path}, line {line}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("invalid keys file {path}: key \"{name}\": {message}")]
    InvalidKey {
        path: PathBuf,
        name: String,
        message: String,
    },
    #[error("a key named \"{0}\" exists already; remove it first to replace it")]
    Exists(String),
    #[error("no key named \"{name}\" in {path}")]
    NotFound { name: String, path: PathBuf },
    #[error("invalid key name \"{0}\": use letters, digits, '-', '.', '_' or '~' (at most 64)")]
    InvalidName(String),
    #[error("failed to write keys file {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("failed to get random bytes: {0}")]
    Random(String),
    #[error("failed to hash the new key: {0}")]
    Hash(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    const GO_KEYS: &str = include_str!("../../tests/fixtures/go-compat/keys.toml");
    const GO_API_KEYS: &str = include_str!("../../tests/fixtures/go-compat/api-keys.txt");

    #[test]
    fn go_key_verifies() {
        let store = KeyStore::parse(Path::new("keys.toml"), GO_KEYS).unwrap();
        let (name, key) = GO_API_KEYS.trim().split_once(' ').unwrap();
        let presented = PresentedKey::decode(key).unwrap();
        let entry = store.get(name).unwrap();
        assert_eq!(entry.stored.id, presented.id);
        assert!(entry.stored.matches(&presented.secret));
    }

    #[test]
    fn encode_round_trips_go_bytes() {
        let (_, value) = GO_KEYS.trim().split_once(" = ").unwrap();
        let value = value.trim_matches('"');
        let stored = StoredKey::decode(value).unwrap();
        assert_eq!(stored.encode(), value);
        let (_, key) = GO_API_KEYS.trim().split_once(' ').unwrap();
        assert_eq!(PresentedKey::decode(key).unwrap().encode(), key);
    }

    #[test]
    fn id_zero_has_no_field() {
        let key = PresentedKey {
            id: 0,
            secret: vec![7; 40],
        };
        let decoded = PresentedKey::decode(&key.encode()).unwrap();
        assert_eq!(decoded.id, 0);
        let fields = decode_cbor_map(&key.encode()).unwrap();
        assert!(!fields.contains_key(&1));
    }

    #[test]
    fn wrong_secret_fails() {
        let store = KeyStore::parse(Path::new("keys.toml"), GO_KEYS).unwrap();
        let (name, key) = GO_API_KEYS.trim().split_once(' ').unwrap();
        let mut presented = PresentedKey::decode(key).unwrap();
        presented.secret[0] ^= 1;
        assert!(!store.get(name).unwrap().stored.matches(&presented.secret));
    }

    #[test]
    fn add_key_keeps_symlink() {
        let directory = tempfile::tempdir().unwrap();
        std::fs::create_dir(directory.path().join("real")).unwrap();
        std::fs::write(directory.path().join("real/keys.toml"), "").unwrap();
        let link = directory.path().join("keys.toml");
        std::os::unix::fs::symlink("real/keys.toml", &link).unwrap();

        add_key(&link, "via-link").unwrap();

        assert!(link.is_symlink());
        let stored = std::fs::read_to_string(directory.path().join("real/keys.toml")).unwrap();
        assert!(stored.contains("via-link"), "{stored}");
    }

    #[test]
    fn duplicate_id_is_rejected() {
        let (_, value) = GO_KEYS.trim().split_once(" = ").unwrap();
        let text = format!("a = {value}\nb = {value}\n");
        let error = KeyStore::parse(Path::new("keys.toml"), &text).unwrap_err();
        assert!(error.to_string().contains("also used"), "{error}");
    }
}
