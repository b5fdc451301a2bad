//! The object store behind backups, and the scoped view plugins get of it.
//!
//! Local files under `blobs/` in the data directory by default; any store
//! object_store can open by URL otherwise (`s3://`, `gs://`, `az://`, …).
//! Each storage plugin reaches only `plugins/NAME/` inside the store, and
//! never the store's credentials.

use std::collections::BTreeMap;
use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::signer::{Method, Signer};
use object_store::ObjectStore;

#[derive(Debug, thiserror::Error)]
pub enum BlobStoreError {
    #[error("cannot open the backup store {url}: {reason}")]
    Open { url: String, reason: String },
    #[error("invalid object key `{key}`: {reason}")]
    InvalidKey { key: String, reason: String },
}

/// The backup store, with the URL signer of cloud stores that have one.
pub struct BlobStore {
    store: Arc<dyn ObjectStore>,
    signer: Option<Arc<dyn Signer>>,
    /// Prefix of every object inside the store, from the URL's path.
    root: Path,
    /// The store's URL without credentials, for logs.
    pub description: String,
}

impl BlobStore {
    /// Opens the store named by `url`, or local files under `local_dir`.
    pub fn open(url: Option<&str>, options: &BTreeMap<String, String>, local_dir: &FsPath) -> Result<BlobStore, BlobStoreError> {
        let Some(url) = url else {
            std::fs::create_dir_all(local_dir).map_err(|error| BlobStoreError::Open {
                url: local_dir.display().to_string(),
                reason: error.to_string(),
            })?;
            let store = LocalFileSystem::new_with_prefix(local_dir).map_err(|error| BlobStoreError::Open {
                url: local_dir.display().to_string(),
                reason: error.to_string(),
            })?;
            return Ok(BlobStore {
                store: Arc::new(store),
                signer: None,
                root: Path::default(),
                description: format!("local files in {}", local_dir.display()),
            });
        };

        let open_error = |reason: String| BlobStoreError::Open { url: url.to_string(), reason };
        let parsed = url::Url::parse(url).map_err(|error| open_error(format!("{error}; use a URL such as s3://bucket/prefix")))?;
        let root = Path::from(parsed.path().trim_matches('/'));
        if parsed.scheme() == "s3" {
            let mut builder = AmazonS3Builder::from_env().with_url(url);
            for (key, value) in options {
                let key: AmazonS3ConfigKey = key.parse().map_err(|_| open_error(format!("unknown S3 option `{key}`")))?;
                builder = builder.with_config(key, value);
            }
            let s3: Arc<AmazonS3> = Arc::new(builder.build().map_err(|error| open_error(error.to_string()))?);
            return Ok(BlobStore { store: s3.clone(), signer: Some(s3), root, description: url.to_string() });
        }
        let (store, _) = object_store::parse_url_opts(&parsed, options).map_err(|error| open_error(error.to_string()))?;
        Ok(BlobStore { store: Arc::from(store), signer: None, root, description: url.to_string() })
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Returns the prefix of one plugin's objects.
    pub fn plugin_prefix(&self, plugin: &str) -> Path {
        self.root.clone().join("plugins").join(plugin)
    }

    /// Returns the full path of a plugin's object `key`. Keys are relative, with
    /// segments of letters, digits, `.`, `_` and `-`, and no `.` or `..`
    /// segment, so a plugin cannot leave its prefix.
    pub fn plugin_path(&self, plugin: &str, key: &str) -> Result<Path, BlobStoreError> {
        let invalid = |reason: &str| BlobStoreError::InvalidKey { key: key.to_string(), reason: reason.to_string() };
        if key.is_empty() || key.len() > 512 {
            return Err(invalid("a key has 1 to 512 characters"));
        }
        let mut path = self.plugin_prefix(plugin);
        for segment in key.split('/') {
            let allowed = segment.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
            if segment.is_empty() || segment == "." || segment == ".." || !allowed {
                return Err(invalid("segments are letters, digits, `.`, `_` and `-`, and not `.` or `..`"));
            }
            path = path.join(segment);
        }
        Ok(path)
    }

    /// Signs a URL that downloads `path` without credentials for `ttl`.
    /// Returns `None` for stores that cannot sign, such as local files,
    /// whose archives the host serves itself.
    pub async fn signed_url(&self, path: &Path, ttl: Duration) -> Option<Result<url::Url, object_store::Error>> {
        let signer = self.signer.as_ref()?;
        Some(signer.signed_url(Method::GET, path, ttl).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_keys_stay_inside_the_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(None, &BTreeMap::new(), dir.path()).unwrap();
        let path = store.plugin_path("storage-tar", "backups/bkp_1.tar.gz").unwrap();
        assert_eq!(path.as_ref(), "plugins/storage-tar/backups/bkp_1.tar.gz");
        for bad in ["", "../x", "a/../../b", "/abs", "a//b", "a/./b", "sp ace", "a\\b"] {
            assert!(store.plugin_path("storage-tar", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn s3_url_with_options_opens_and_signs() {
        let options = BTreeMap::from([
            ("aws_endpoint".to_string(), "http://127.0.0.1:9".to_string()),
            ("aws_access_key_id".to_string(), "test".to_string()),
            ("aws_secret_access_key".to_string(), "test".to_string()),
            ("aws_region".to_string(), "us-east-1".to_string()),
            ("aws_allow_http".to_string(), "true".to_string()),
        ]);
        let store = BlobStore::open(Some("s3://bucket/prefix"), &options, FsPath::new("/nonexistent")).unwrap();
        assert_eq!(store.plugin_prefix("p").as_ref(), "prefix/plugins/p");
        let error = BlobStore::open(Some("s3://bucket"), &BTreeMap::from([("no_such".into(), "x".into())]), FsPath::new("/x"));
        assert!(error.is_err());
    }
}
