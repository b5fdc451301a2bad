//! Secret values: validation, and encryption at rest with age.
//!
//! Every value is encrypted to the host's X25519 identity before it reaches
//! the database. The identity comes from `AGENTSTEAD_AGE_IDENTITY`, from the
//! file named by `secrets.identity_file`, or from `age.key` in the data
//! directory, which is created with mode 0600 on first start.
//!
//! # Rotation
//!
//! `agentstead secrets rotate-key` writes a new identity to `age.key.next`,
//! re-encrypts every value to it in one transaction, then renames
//! `age.key.next` over `age.key`. The keyring reads both files and encrypts
//! to every identity it holds, so whatever step a rotation is interrupted at,
//! every value decrypts with one of the two keys. A running server notices
//! the files change and reloads them before its next encryption or
//! decryption.

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use age::secrecy::ExposeSecret;
use age::x25519;

use crate::store::{SecretRow, Store, StoreError};

/// Environment variable that carries the identity itself, such as
/// `AGE-SECRET-KEY-1…`, instead of a key file.
pub const IDENTITY_ENV: &str = "AGENTSTEAD_AGE_IDENTITY";
/// Maximum length of a secret key, in bytes.
pub const MAX_KEY_LEN: usize = 256;
/// Largest secret value, in characters.
pub const MAX_VALUE_CHARS: usize = 64 * 1024;
/// The JSON Schema pattern of a secret key, as [`validate_key`] checks it.
pub const KEY_PATTERN: &str = "^[A-Za-z_][A-Za-z0-9_]*$";
/// The JSON Schema pattern of a secret value: no NUL, as [`validate_value`] checks.
pub const VALUE_PATTERN: &str = "^[^\\x00]*$";
/// Most secrets one agent may have.
pub const MAX_SECRETS_PER_AGENT: i64 = 100;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read the age identity from {looked_at}: {reason}")]
    Identity { looked_at: String, reason: String },
    #[error("cannot write the age identity {path}: {source}")]
    WriteIdentity { path: PathBuf, source: std::io::Error },
    #[error("secret key `{key}` is invalid: {reason}")]
    InvalidKey { key: String, reason: String },
    #[error("the value of secret `{key}` is invalid: {reason}")]
    InvalidValue { key: String, reason: String },
    #[error("encrypting a secret failed: {0}")]
    Encrypt(String),
    #[error("secret `{key}` of agent {agent_id} cannot be decrypted with the host's age identity; restore the key file that encrypted it, or set the secret again")]
    Decrypt { agent_id: String, key: String },
    #[error("cannot rotate: {0}")]
    Rotate(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Checks a secret key: an environment variable name of at most 256 bytes.
/// Names the runtime or the driver sets are checked elsewhere, with the plan.
pub fn validate_key(key: &str) -> Result<(), SecretError> {
    let invalid = |reason: &str| SecretError::InvalidKey { key: truncate(key, 80), reason: reason.to_string() };
    if key.is_empty() {
        return Err(invalid("it is empty"));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(invalid(&format!("it has {} bytes; the maximum is {MAX_KEY_LEN}", key.len())));
    }
    let mut bytes = key.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
    if !first_ok || !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(invalid("use an environment variable name: a letter or `_`, then letters, digits and `_`"));
    }
    Ok(())
}

/// Checks a value without ever quoting it: UTF-8 (guaranteed by the JSON
/// layer), no NUL byte, at most 64 KiB.
pub fn validate_value(key: &str, value: &str) -> Result<(), SecretError> {
    let length = value.chars().count();
    if length > MAX_VALUE_CHARS {
        return Err(SecretError::InvalidValue {
            key: key.to_string(),
            reason: format!("it has {length} characters; the maximum is {MAX_VALUE_CHARS}"),
        });
    }
    if value.contains('\0') {
        return Err(SecretError::InvalidValue {
            key: key.to_string(),
            reason: "it contains a NUL character, which an environment variable cannot hold".into(),
        });
    }
    Ok(())
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// Source of the age identity.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// The identity itself, from `AGENTSTEAD_AGE_IDENTITY`. Not logged, not shown.
    Env,
    /// A key file, and whether a missing file may be created.
    File { path: PathBuf, create: bool },
}

/// Modification stamp of the key files, to notice a rotation.
type Stamp = Vec<Option<(SystemTime, u64, u64)>>;

struct Loaded {
    identities: Vec<x25519::Identity>,
    stamp: Stamp,
}

/// The host's age identities: the current one, and during a rotation the next.
pub struct Keyring {
    source: KeySource,
    loaded: Mutex<Loaded>,
}

fn next_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".next");
    path.with_file_name(name)
}

fn stamp_of(paths: &[PathBuf]) -> Stamp {
    paths
        .iter()
        .map(|path| std::fs::metadata(path).ok().map(|meta| (meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), meta.len(), meta.ino())))
        .collect()
}

/// Parses the first identity line of an age identity file.
fn parse_identity(text: &str, looked_at: &str) -> Result<x25519::Identity, SecretError> {
    let line = text.lines().map(str::trim).find(|line| !line.is_empty() && !line.starts_with('#'));
    let identity_error = |reason: &str| SecretError::Identity { looked_at: looked_at.to_string(), reason: reason.to_string() };
    let line = line.ok_or_else(|| identity_error("no identity line; expected AGE-SECRET-KEY-1…"))?;
    line.parse::<x25519::Identity>().map_err(|_| identity_error("not an age X25519 identity; expected AGE-SECRET-KEY-1…"))
}

fn read_identity_file(path: &Path) -> Result<x25519::Identity, SecretError> {
    let looked_at = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|error| SecretError::Identity { looked_at: looked_at.clone(), reason: error.to_string() })?;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %looked_at, mode = format!("{:o}", meta.permissions().mode() & 0o777), "the age identity is readable by other users; run chmod 600 on it");
        }
    }
    parse_identity(&text, &looked_at)
}

/// Writes an identity file with mode 0600, atomically.
fn write_identity_file(path: &Path, identity: &x25519::Identity) -> Result<(), SecretError> {
    let write_error = |source| SecretError::WriteIdentity { path: path.to_path_buf(), source };
    let contents = format!(
        "# AgentStead age identity, created {}\n# public key: {}\n{}\n",
        chrono::Utc::now().to_rfc3339(),
        identity.to_public(),
        identity.to_string().expose_secret()
    );
    crate::fsutil::write_private_file(path, contents.as_bytes()).map_err(write_error)
}

impl Keyring {
    /// Loads the identity, creating the key file if `source` allows it. An
    /// unreadable or invalid identity is an error that names where it looked.
    pub fn open(source: KeySource) -> Result<Keyring, SecretError> {
        if let KeySource::File { path, create: true } = &source {
            if !path.exists() && !next_path(path).exists() {
                write_identity_file(path, &x25519::Identity::generate())?;
                tracing::info!(path = %path.display(), "created the age identity for secrets; back it up with the database");
            }
        }
        let loaded = Self::load(&source)?;
        Ok(Keyring { source, loaded: Mutex::new(loaded) })
    }

    fn load(source: &KeySource) -> Result<Loaded, SecretError> {
        match source {
            KeySource::Env => {
                let value = std::env::var(IDENTITY_ENV)
                    .map_err(|_| SecretError::Identity { looked_at: IDENTITY_ENV.into(), reason: "the variable is not set".into() })?;
                Ok(Loaded { identities: vec![parse_identity(&value, IDENTITY_ENV)?], stamp: Vec::new() })
            }
            KeySource::File { path, .. } => {
                let next = next_path(path);
                let mut identities = Vec::new();
                if path.exists() || !next.exists() {
                    identities.push(read_identity_file(path)?);
                }
                if next.exists() {
                    identities.push(read_identity_file(&next)?);
                }
                Ok(Loaded { identities, stamp: stamp_of(&[path.clone(), next]) })
            }
        }
    }

    /// Reloads the key files when they changed since the last load.
    fn current(&self) -> Result<std::sync::MutexGuard<'_, Loaded>, SecretError> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|poison| poison.into_inner());
        if let KeySource::File { path, .. } = &self.source {
            if stamp_of(&[path.clone(), next_path(path)]) != loaded.stamp {
                *loaded = Self::load(&self.source)?;
                tracing::info!(path = %path.display(), identities = loaded.identities.len(), "reloaded the age identity after a change");
            }
        }
        Ok(loaded)
    }

    /// Encrypts to every identity the keyring holds.
    pub fn encrypt(&self, plaintext: &str) -> Result<Vec<u8>, SecretError> {
        let loaded = self.current()?;
        let recipients: Vec<x25519::Recipient> = loaded.identities.iter().map(x25519::Identity::to_public).collect();
        encrypt_to(&recipients, plaintext)
    }

    /// Decrypts a value stored for `agent_id` under `key`.
    pub fn decrypt(&self, row: &SecretRow) -> Result<String, SecretError> {
        let loaded = self.current()?;
        decrypt_with(&loaded.identities, &row.ciphertext).ok_or_else(|| SecretError::Decrypt {
            agent_id: row.agent_id.clone(),
            key: row.key.clone(),
        })
    }

    /// Generates a new identity and re-encrypts every stored value to it.
    /// Returns the number of values re-encrypted.
    pub async fn rotate(&self, store: &Store) -> Result<usize, SecretError> {
        let KeySource::File { path, .. } = &self.source else {
            return Err(SecretError::Rotate(format!(
                "rotation needs key files, and {IDENTITY_ENV} is set; unset it and keep the identity in \
                 secrets.identity_file or age.key in the data directory"
            )));
        };
        let old = self.current()?.identities.clone();
        let new = x25519::Identity::generate();
        let next = next_path(path);
        write_identity_file(&next, &new)?;

        // Every value goes to the new key alone, decrypted with any old one.
        let recipients = [new.to_public()];
        let count = store
            .reencrypt_secrets(|row| {
                let plaintext = decrypt_with(&old, &row.ciphertext).ok_or_else(|| SecretError::Decrypt {
                    agent_id: row.agent_id.clone(),
                    key: row.key.clone(),
                })?;
                encrypt_to(&recipients, &plaintext)
            })
            .await??;
        std::fs::rename(&next, path).map_err(|source| SecretError::WriteIdentity { path: path.clone(), source })?;

        // A server that wrote a value between its last look at the key files
        // and the rename may have encrypted it to the old key alone. This pass
        // moves such values to the new key while the old one is still known.
        let mut all = old;
        all.push(new.clone());
        let swept = store
            .reencrypt_secrets(|row| match decrypt_with(std::slice::from_ref(&new), &row.ciphertext) {
                Some(_) => Ok(row.ciphertext.clone()),
                None => {
                    let plaintext = decrypt_with(&all, &row.ciphertext)
                        .ok_or_else(|| SecretError::Decrypt { agent_id: row.agent_id.clone(), key: row.key.clone() })?;
                    encrypt_to(&recipients, &plaintext)
                }
            })
            .await??;
        tracing::info!(path = %path.display(), values = count, checked = swept, "rotated the age identity");
        *self.loaded.lock().unwrap_or_else(|poison| poison.into_inner()) = Self::load(&self.source)?;
        Ok(count)
    }
}

fn encrypt_to(recipients: &[x25519::Recipient], plaintext: &str) -> Result<Vec<u8>, SecretError> {
    let encryptor = age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
        .map_err(|error| SecretError::Encrypt(error.to_string()))?;
    let mut ciphertext = Vec::with_capacity(plaintext.len() + 256);
    let mut writer = encryptor.wrap_output(&mut ciphertext).map_err(|error| SecretError::Encrypt(error.to_string()))?;
    writer.write_all(plaintext.as_bytes()).map_err(|error| SecretError::Encrypt(error.to_string()))?;
    writer.finish().map_err(|error| SecretError::Encrypt(error.to_string()))?;
    Ok(ciphertext)
}

fn decrypt_with(identities: &[x25519::Identity], ciphertext: &[u8]) -> Option<String> {
    let decryptor = age::Decryptor::new_buffered(ciphertext).ok()?;
    let mut reader = decryptor.decrypt(identities.iter().map(|i| i as &dyn age::Identity)).ok()?;
    let mut plaintext = Vec::new();
    reader.read_to_end(&mut plaintext).ok()?;
    String::from_utf8(plaintext).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(ciphertext: Vec<u8>) -> SecretRow {
        SecretRow { agent_id: "tk-abcdef".into(), key: "K".into(), ciphertext, updated_at: 0 }
    }

    #[test]
    fn key_rules() {
        for good in ["ANTHROPIC_API_KEY", "_X", "a1"] {
            assert!(validate_key(good).is_ok(), "{good}");
        }
        for bad in ["", "1ABC", "A-B", "A B", "É", &"K".repeat(257)] {
            assert!(validate_key(bad).is_err(), "{bad:?}");
        }
        assert!(validate_key(&"K".repeat(256)).is_ok());
    }

    #[test]
    fn value_errors_never_quote_the_value() {
        let error = validate_value("K", "sk-secret\0tail").unwrap_err().to_string();
        assert!(!error.contains("sk-secret"), "{error}");
        assert!(error.contains("`K`"), "{error}");
        let long = "x".repeat(MAX_VALUE_CHARS + 1);
        assert!(validate_value("K", &long).is_err());
        assert!(validate_value("K", &"é".repeat(MAX_VALUE_CHARS)).is_ok());
    }

    #[test]
    fn file_identity_is_created_private_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("age.key");
        let keyring = Keyring::open(KeySource::File { path: path.clone(), create: true }).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);

        let ciphertext = keyring.encrypt("sk-ant-value").unwrap();
        assert!(!ciphertext.windows(12).any(|w| w == b"sk-ant-value"), "plaintext in ciphertext");
        assert_eq!(keyring.decrypt(&row(ciphertext.clone())).unwrap(), "sk-ant-value");

        let reopened = Keyring::open(KeySource::File { path, create: true }).unwrap();
        assert_eq!(reopened.decrypt(&row(ciphertext)).unwrap(), "sk-ant-value");
    }

    #[test]
    fn unreadable_identity_names_where_it_looked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.key");
        let error = Keyring::open(KeySource::File { path: path.clone(), create: false }).err().unwrap().to_string();
        assert!(error.contains(&path.display().to_string()), "{error}");

        std::fs::write(&path, "not a key\n").unwrap();
        let error = Keyring::open(KeySource::File { path: path.clone(), create: true }).err().unwrap().to_string();
        assert!(error.contains("AGE-SECRET-KEY-1"), "{error}");
    }

    /// Each intermediate state of a rotation leaves every value readable.
    #[test]
    fn interrupted_rotation_keeps_values_readable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("age.key");
        let keyring = Keyring::open(KeySource::File { path: path.clone(), create: true }).unwrap();
        let old_value = keyring.encrypt("old").unwrap();

        // Crash after writing the next key, before or during re-encryption.
        let new = x25519::Identity::generate();
        write_identity_file(&next_path(&path), &new).unwrap();
        let fresh = Keyring::open(KeySource::File { path: path.clone(), create: true }).unwrap();
        assert_eq!(fresh.decrypt(&row(old_value.clone())).unwrap(), "old");
        let new_value = encrypt_to(&[new.to_public()], "new").unwrap();
        assert_eq!(fresh.decrypt(&row(new_value.clone())).unwrap(), "new");
        let during = fresh.encrypt("during").unwrap();

        // Crash after the rename: only the new key remains.
        std::fs::rename(next_path(&path), &path).unwrap();
        let after = Keyring::open(KeySource::File { path, create: true }).unwrap();
        assert_eq!(after.decrypt(&row(new_value)).unwrap(), "new");
        assert_eq!(after.decrypt(&row(during)).unwrap(), "during", "values written mid-rotation go to both keys");
    }
}
