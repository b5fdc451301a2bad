//! The host key: 32 random bytes in `host.key` in the data directory.
//!
//! The host derives per-agent values from it with HMAC-SHA256, such as the
//! gateway token an agent's plan requests, so those values are stable across
//! restarts without being stored anywhere.

#[cfg(test)]
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

const KEY_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum HostKeyError {
    #[error("cannot {action} the host key {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    #[error("the host key {path} has {found} bytes instead of {KEY_LEN}; restore it from a backup, or delete it to make a new one (agents then get new generated tokens)")]
    WrongLength { path: PathBuf, found: usize },
}

pub struct HostKey {
    key: [u8; KEY_LEN],
}

impl HostKey {
    /// Reads the key file, creating it with mode 0600 on first start. A new
    /// key is written atomically, so a crash never leaves a partial key.
    pub fn load_or_create(path: &Path) -> Result<HostKey, HostKeyError> {
        let io_error = |action, source| HostKeyError::Io { action, path: path.to_path_buf(), source };
        match std::fs::read(path) {
            Ok(bytes) => {
                let key: [u8; KEY_LEN] = bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| HostKeyError::WrongLength { path: path.to_path_buf(), found: bytes.len() })?;
                return Ok(HostKey { key });
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(io_error("read", error)),
        }

        let mut key = [0u8; KEY_LEN];
        rand::rng().fill_bytes(&mut key);
        crate::fsutil::write_private_file(path, &key).map_err(|error| io_error("write", error))?;
        tracing::info!(path = %path.display(), "created a new host key");
        Ok(HostKey { key })
    }

    /// Derives a 64-character hex value from the key, `purpose` and `parts`.
    pub fn derive(&self, purpose: &str, parts: &[&str]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC accepts any key length");
        mac.update(purpose.as_bytes());
        for part in parts {
            mac.update(&[0]);
            mac.update(part.as_bytes());
        }
        hex::encode(mac.finalize().into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_created_once_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("host.key");
        let first = HostKey::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let second = HostKey::load_or_create(&path).unwrap();
        assert_eq!(first.derive("t", &["a"]), second.derive("t", &["a"]));
        assert_ne!(first.derive("t", &["a"]), first.derive("t", &["b"]));
    }

    #[test]
    fn truncated_key_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("host.key");
        std::fs::write(&path, b"short").unwrap();
        let error = HostKey::load_or_create(&path).err().unwrap().to_string();
        assert!(error.contains("5 bytes"), "{error}");
    }
}
