//! Changing the keys file: adding and removing keys with atomic, owner-preserving
//! writes under a directory lock.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{
    KeyStore, KeysError, NEW_KEY_BYTES, PresentedKey, StoredKey, is_valid_key_name, parse_table,
};

/// Generates a key named `name`, stores its hash in the keys file (creating the file
/// if needed) and returns the key in the form clients present it.
pub fn add_key(path: &Path, name: &str) -> Result<String, KeysError> {
    if !is_valid_key_name(name) {
        return Err(KeysError::InvalidName(name.to_owned()));
    }
    let path = &follow_links(path);
    let _lock = lock_directory(path)?;
    let (mut encoded, existing) = read_for_update(path)?;
    if encoded.contains_key(name) {
        return Err(KeysError::Exists(name.to_owned()));
    }
    let store = KeyStore::parse(path, &existing.text)?;
    let used: Vec<u32> = store
        .by_name
        .values()
        .map(|entry| entry.stored.id)
        .collect();
    let id = (0..=u32::MAX)
        .find(|candidate| !used.contains(candidate))
        .expect("a keys file cannot use every id");

    let mut secret = vec![0u8; NEW_KEY_BYTES];
    getrandom::fill(&mut secret).map_err(|error| KeysError::Random(error.to_string()))?;
    let stored = StoredKey::hash_new(id, &secret)?;
    encoded.insert(name.to_owned(), stored.encode());
    write_atomically(path, &encoded, existing.metadata.as_ref())?;
    Ok(PresentedKey { id, secret }.encode())
}

/// Removes the key named `name` from the keys file.
pub fn remove_key(path: &Path, name: &str) -> Result<(), KeysError> {
    let path = &follow_links(path);
    let _lock = lock_directory(path)?;
    let (mut encoded, existing) = read_for_update(path)?;
    if encoded.remove(name).is_none() {
        return Err(KeysError::NotFound {
            name: name.to_owned(),
            path: path.clone(),
        });
    }
    write_atomically(path, &encoded, existing.metadata.as_ref())
}

/// Returns the file a chain of symlinks leads to, which may not exist yet. Writing
/// there, instead of renaming over the link, keeps a linked keys file linked.
fn follow_links(path: &Path) -> PathBuf {
    let mut current = path.to_owned();
    // The kernel's own limit on links followed in one lookup.
    for _ in 0..40 {
        let Ok(target) = fs::read_link(&current) else {
            return current;
        };
        current = parent_directory(&current).join(target);
    }
    current
}

struct ExistingFile {
    text: String,
    metadata: Option<fs::Metadata>,
}

fn read_for_update(path: &Path) -> Result<(BTreeMap<String, String>, ExistingFile), KeysError> {
    let existing = match crate::load::read_text(path) {
        Ok(text) => {
            let metadata = fs::metadata(path).map_err(|source| KeysError::Read {
                path: path.to_owned(),
                source,
            })?;
            ExistingFile {
                text,
                metadata: Some(metadata),
            }
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => ExistingFile {
            text: String::new(),
            metadata: None,
        },
        Err(source) => {
            return Err(KeysError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    let encoded = parse_table(path, &existing.text)?;
    Ok((encoded, existing))
}

/// Takes an exclusive lock on the keys file's directory, so that two `add-key` runs do
/// not both read the old file and lose one of the keys. The lock ends with the process
/// or when the returned value is dropped.
fn lock_directory(path: &Path) -> Result<nix::fcntl::Flock<File>, KeysError> {
    let directory = parent_directory(path);
    let write_error = |source| KeysError::Write {
        path: path.to_owned(),
        source,
    };
    let handle = File::open(directory).map_err(write_error)?;
    nix::fcntl::Flock::lock(handle, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, errno)| write_error(io::Error::from(errno)))
}

fn parent_directory(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// Replaces the keys file so that a crash leaves the old file or the new one: write a
/// temporary file in the same directory, flush it to disk, rename it over the old one.
/// An existing file's owner, group and mode carry over, so root running `add-key` does
/// not lock out the service user. A new file gets mode 0600.
fn write_atomically(
    path: &Path,
    encoded: &BTreeMap<String, String>,
    existing: Option<&fs::Metadata>,
) -> Result<(), KeysError> {
    let write_error = |source| KeysError::Write {
        path: path.to_owned(),
        source,
    };
    let text = toml::to_string(encoded).map_err(|error| write_error(io::Error::other(error)))?;
    let directory = parent_directory(path);
    let file_name = path.file_name().unwrap_or_default().to_string_lossy();
    let mut suffix = [0u8; 6];
    getrandom::fill(&mut suffix).map_err(|error| KeysError::Random(error.to_string()))?;
    let temporary = directory.join(format!(
        ".{file_name}.{}.tmp",
        data_encoding::HEXLOWER.encode(&suffix)
    ));

    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temporary)?;
        if let Some(metadata) = existing {
            std::os::unix::fs::fchown(&file, Some(metadata.uid()), Some(metadata.gid()))?;
            file.set_permissions(fs::Permissions::from_mode(metadata.mode() & 0o7777))?;
        }
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        fs::rename(&temporary, path)?;
        File::open(directory)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    result.map_err(write_error)
}
