//! Host side of the storage world: the scoped `blobs` capability and the
//! `workspace` a storage plugin reads during a backup and writes during a
//! restore.
//!
//! # Restore checks
//!
//! Every entry a plugin restores is checked before anything is written, and
//! everything is written into a staging directory that replaces the
//! workspace only when the whole archive passed. Rejected: absolute paths,
//! `..` components, paths through a symlink, symlinks or hard links whose
//! target leaves the workspace, devices, FIFOs and sockets, and content
//! beyond the configured total size.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use object_store::{ObjectStoreExt, WriteMultipart};
use wasmtime::component::Resource;

use super::bindings::storage::agentstead::plugin::blobs::{self, BlobError};
use super::bindings::storage::agentstead::plugin::workspace::{self, Entry, EntryKind};
use super::sandbox::PluginState;
use crate::blobs::BlobStore;

/// Parts in flight per upload; with 5 MiB parts this bounds an upload's
/// buffered memory to about 20 MiB.
const UPLOAD_CONCURRENCY: usize = 4;
/// Largest chunk a plugin may request or send per call.
const MAX_CHUNK: u32 = 8 * 1024 * 1024;

/// Access granted to one storage call.
pub struct StorageSession {
    pub blobs: Arc<BlobStore>,
    pub plugin: String,
    pub workspace: WorkspaceSession,
}

pub enum WorkspaceSession {
    Backup(BackupWalk),
    Restore(RestoreSink),
}

/// An upload a plugin started, as stored in the resource table.
pub struct UploadState {
    upload: Option<WriteMultipart>,
    path: object_store::path::Path,
    size: u64,
}

/// Walks a workspace for a backup, one entry and one chunk at a time.
pub struct BackupWalk {
    root: PathBuf,
    entries: walkdir::IntoIter,
    /// The file being read and the bytes still promised for it.
    current: Option<(File, u64)>,
}

impl BackupWalk {
    pub fn new(root: &Path) -> BackupWalk {
        let entries = walkdir::WalkDir::new(root).follow_links(false).sort_by_file_name().min_depth(1).into_iter();
        BackupWalk { root: root.to_path_buf(), entries, current: None }
    }

    fn next_entry(&mut self) -> Result<Option<Entry>, String> {
        self.current = None;
        let Some(next) = self.entries.next() else {
            return Ok(None);
        };
        let entry = next.map_err(|error| format!("cannot walk the workspace: {error}"))?;
        let relative = entry.path().strip_prefix(&self.root).map_err(|error| error.to_string())?;
        let path = relative
            .to_str()
            .ok_or_else(|| format!("workspace path {} is not UTF-8", relative.display()))?
            .to_string();
        let metadata = entry.metadata().map_err(|error| format!("cannot read {path}: {error}"))?;
        let mode = metadata.permissions().mode() & 0o7777;
        let mtime = metadata.modified().ok().and_then(|time| time.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_secs());
        let file_type = entry.file_type();
        let (kind, size, link_target) = if file_type.is_dir() {
            (EntryKind::Directory, 0, None)
        } else if file_type.is_symlink() {
            let target = std::fs::read_link(entry.path()).map_err(|error| format!("cannot read link {path}: {error}"))?;
            (EntryKind::Symlink, 0, Some(target.to_string_lossy().into_owned()))
        } else if file_type.is_file() {
            let file = File::open(entry.path()).map_err(|error| format!("cannot open {path}: {error}"))?;
            self.current = Some((file, metadata.len()));
            (EntryKind::File, metadata.len(), None)
        } else {
            (EntryKind::Other, 0, None)
        };
        Ok(Some(Entry { path, kind, mode, size, mtime, link_target }))
    }

    /// Reads the current file. A file that shrank since it was listed is
    /// padded with zeros and one that grew is cut, so the archive contains
    /// exactly the size it announced.
    fn read(&mut self, max_bytes: u32) -> Result<Vec<u8>, String> {
        let Some((file, remaining)) = self.current.as_mut() else {
            return Ok(Vec::new());
        };
        let want = (*remaining).min(u64::from(max_bytes.min(MAX_CHUNK))) as usize;
        let mut chunk = vec![0u8; want];
        let mut filled = 0;
        while filled < want {
            match file.read(&mut chunk[filled..]) {
                Ok(0) => break,
                Ok(read) => filled += read,
                Err(error) => return Err(format!("cannot read a workspace file: {error}")),
            }
        }
        *remaining -= want as u64;
        Ok(chunk)
    }
}

/// Receives a restored workspace into a staging directory, checking each entry.
pub struct RestoreSink {
    staging: PathBuf,
    max_bytes: u64,
    written: u64,
    current: Option<(File, u64)>,
    pub entries: u64,
}

impl RestoreSink {
    pub fn new(staging: &Path, max_bytes: u64) -> RestoreSink {
        RestoreSink { staging: staging.to_path_buf(), max_bytes, written: 0, current: None, entries: 0 }
    }

    fn begin_entry(&mut self, entry: Entry) -> Result<(), String> {
        self.current = None;
        let relative = checked_relative(&entry.path)?;
        self.reject_symlink_parents(relative)?;
        let target = self.staging.join(relative);
        self.entries += 1;
        match entry.kind {
            EntryKind::Directory => {
                std::fs::create_dir_all(&target).map_err(|error| format!("cannot create {}: {error}", entry.path))?;
                let _ = std::fs::set_permissions(&target, std::fs::Permissions::from_mode((entry.mode & 0o777) | 0o700));
                Ok(())
            }
            EntryKind::File => {
                if self.written.saturating_add(entry.size) > self.max_bytes {
                    return Err(format!(
                        "the archive holds more than backups.max_restore_bytes ({} bytes) at {}",
                        self.max_bytes, entry.path
                    ));
                }
                self.written += entry.size;
                self.create_parent(&target, &entry.path)?;
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(entry.mode & 0o777)
                    .open(&target)
                    .map_err(|error| format!("cannot create {}: {error}", entry.path))?;
                self.current = Some((file, entry.size));
                Ok(())
            }
            EntryKind::Symlink => {
                let link = entry.link_target.as_deref().ok_or_else(|| format!("symlink {} has no target", entry.path))?;
                if Path::new(link).is_absolute() || !stays_inside(relative.parent().unwrap_or(Path::new("")), link) {
                    return Err(format!("symlink {} points to {link}, outside the workspace", entry.path));
                }
                self.create_parent(&target, &entry.path)?;
                std::os::unix::fs::symlink(link, &target).map_err(|error| format!("cannot create symlink {}: {error}", entry.path))
            }
            EntryKind::Hardlink => {
                let link = entry.link_target.as_deref().ok_or_else(|| format!("hard link {} has no target", entry.path))?;
                let source = checked_relative(link).map_err(|reason| format!("hard link {} points outside the workspace: {reason}", entry.path))?;
                self.reject_symlink_parents(source)?;
                let source = self.staging.join(source);
                let is_file = std::fs::symlink_metadata(&source).is_ok_and(|meta| meta.is_file());
                if !is_file {
                    return Err(format!("hard link {} must point to a file restored before it", entry.path));
                }
                self.create_parent(&target, &entry.path)?;
                std::fs::hard_link(&source, &target).map_err(|error| format!("cannot create hard link {}: {error}", entry.path))
            }
            EntryKind::Other => Err(format!("{} is a device, FIFO or socket, which a workspace may not contain", entry.path)),
        }
    }

    fn write(&mut self, chunk: &[u8]) -> Result<(), String> {
        let Some((file, remaining)) = self.current.as_mut() else {
            return Err("content arrived without a file entry".into());
        };
        if chunk.len() as u64 > *remaining {
            return Err("a file's content is longer than its entry announced".into());
        }
        *remaining -= chunk.len() as u64;
        file.write_all(chunk).map_err(|error| format!("cannot write a restored file: {error}"))
    }

    /// Rejects a path whose existing parent inside the staging directory is
    /// a symlink, which would carry the write elsewhere.
    fn reject_symlink_parents(&self, relative: &Path) -> Result<(), String> {
        let mut current = self.staging.clone();
        for component in relative.parent().into_iter().flat_map(Path::components) {
            current.push(component);
            if std::fs::symlink_metadata(&current).is_ok_and(|meta| meta.file_type().is_symlink()) {
                return Err(format!("{} lies under a symlink", relative.display()));
            }
        }
        Ok(())
    }

    fn create_parent(&self, target: &Path, shown: &str) -> Result<(), String> {
        match target.parent() {
            Some(parent) => std::fs::create_dir_all(parent).map_err(|error| format!("cannot create the directory of {shown}: {error}")),
            None => Ok(()),
        }
    }
}

/// Checks that `path` is relative, with normal components only.
fn checked_relative(path: &str) -> Result<&Path, String> {
    let relative = Path::new(path);
    if path.is_empty() || path.contains('\0') {
        return Err(format!("invalid path {path:?}"));
    }
    if relative.is_absolute() {
        return Err(format!("absolute path {path}"));
    }
    let trimmed = path.trim_start_matches("./");
    let relative = Path::new(trimmed);
    for component in relative.components() {
        match component {
            Component::Normal(_) | Component::CurDir => {}
            _ => return Err(format!("path {path} leaves the workspace")),
        }
    }
    Ok(relative)
}

/// True when `link`, resolved from directory `from` (relative to the
/// workspace root), stays inside the workspace.
fn stays_inside(from: &Path, link: &str) -> bool {
    let mut depth: i64 = from.components().filter(|c| matches!(c, Component::Normal(_))).count() as i64;
    for component in Path::new(link).components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::ParentDir => depth -= 1,
            Component::CurDir => {}
            _ => return false,
        }
        if depth < 0 {
            return false;
        }
    }
    true
}

impl PluginState {
    fn storage(&mut self) -> Result<&mut StorageSession, String> {
        self.storage.as_mut().ok_or_else(|| "this plugin has no storage session".to_string())
    }

    fn blob_path(&mut self, key: &str) -> Result<(Arc<BlobStore>, object_store::path::Path), BlobError> {
        let session = self.storage().map_err(BlobError::Denied)?;
        let path = session.blobs.plugin_path(&session.plugin, key).map_err(|error| BlobError::Denied(error.to_string()))?;
        Ok((Arc::clone(&session.blobs), path))
    }
}

fn io_error(error: object_store::Error) -> BlobError {
    match error {
        object_store::Error::NotFound { path, .. } => BlobError::NotFound(path),
        other => BlobError::Io(other.to_string()),
    }
}

impl blobs::HostUpload for PluginState {
    async fn new(&mut self, key: String) -> Resource<UploadState> {
        // A key the host refuses yields an upload that fails on first use,
        // because a constructor cannot return an error.
        let state = match self.blob_path(&key) {
            Ok((blobs, path)) => match blobs.store().put_multipart(&path).await {
                Ok(upload) => UploadState { upload: Some(WriteMultipart::new(upload)), path, size: 0 },
                Err(error) => {
                    tracing::warn!(plugin = self.plugin(), %error, "cannot start an upload");
                    UploadState { upload: None, path, size: 0 }
                }
            },
            Err(_) => UploadState { upload: None, path: object_store::path::Path::default(), size: 0 },
        };
        self.table().push(state).expect("the resource table has room")
    }

    async fn write(&mut self, upload: Resource<UploadState>, chunk: Vec<u8>) -> Result<(), BlobError> {
        let state = self.table().get_mut(&upload).map_err(|error| BlobError::Io(error.to_string()))?;
        let writer = state.upload.as_mut().ok_or_else(|| BlobError::Denied("the upload could not be started".into()))?;
        writer.wait_for_capacity(UPLOAD_CONCURRENCY).await.map_err(io_error)?;
        writer.write(&chunk);
        state.size += chunk.len() as u64;
        Ok(())
    }

    async fn finish(&mut self, upload: Resource<UploadState>) -> Result<u64, BlobError> {
        let state = self.table().get_mut(&upload).map_err(|error| BlobError::Io(error.to_string()))?;
        let writer = state.upload.take().ok_or_else(|| BlobError::Denied("the upload is not open".into()))?;
        writer.finish().await.map_err(io_error)?;
        tracing::debug!(path = %state.path, size = state.size, "upload finished");
        Ok(state.size)
    }

    async fn abort(&mut self, upload: Resource<UploadState>) {
        if let Ok(state) = self.table().get_mut(&upload) {
            if let Some(writer) = state.upload.take() {
                if let Err(error) = writer.abort().await {
                    tracing::warn!(path = %state.path, %error, "failed to abort an upload");
                }
            }
        }
    }

    async fn drop(&mut self, upload: Resource<UploadState>) -> wasmtime::Result<()> {
        let state = self.table().delete(upload)?;
        if let Some(writer) = state.upload {
            // An upload dropped unfinished leaves no object behind.
            if let Err(error) = writer.abort().await {
                tracing::warn!(path = %state.path, %error, "failed to abort an unfinished upload");
            }
        }
        Ok(())
    }
}

impl blobs::Host for PluginState {
    async fn read(&mut self, key: String, offset: u64, max_bytes: u32) -> Result<Vec<u8>, BlobError> {
        let (blobs, path) = self.blob_path(&key)?;
        let size = blobs.store().head(&path).await.map_err(io_error)?.size;
        if offset >= size {
            return Ok(Vec::new());
        }
        let end = size.min(offset + u64::from(max_bytes.min(MAX_CHUNK)));
        Ok(blobs.store().get_range(&path, offset..end).await.map_err(io_error)?.to_vec())
    }

    async fn size(&mut self, key: String) -> Result<u64, BlobError> {
        let (blobs, path) = self.blob_path(&key)?;
        Ok(blobs.store().head(&path).await.map_err(io_error)?.size)
    }

    async fn delete(&mut self, key: String) -> Result<(), BlobError> {
        let (blobs, path) = self.blob_path(&key)?;
        blobs.store().delete(&path).await.map_err(io_error)
    }
}

impl workspace::Host for PluginState {
    async fn next_entry(&mut self) -> Result<Option<Entry>, String> {
        match &mut self.storage()?.workspace {
            WorkspaceSession::Backup(walk) => walk.next_entry(),
            WorkspaceSession::Restore(_) => Err("next-entry is for backups; this call is a restore".into()),
        }
    }

    async fn read(&mut self, max_bytes: u32) -> Result<Vec<u8>, String> {
        match &mut self.storage()?.workspace {
            WorkspaceSession::Backup(walk) => walk.read(max_bytes),
            WorkspaceSession::Restore(_) => Err("read is for backups; this call is a restore".into()),
        }
    }

    async fn begin_entry(&mut self, entry: Entry) -> Result<(), String> {
        match &mut self.storage()?.workspace {
            WorkspaceSession::Restore(sink) => sink.begin_entry(entry),
            WorkspaceSession::Backup(_) => Err("begin-entry is for restores; this call is a backup".into()),
        }
    }

    async fn write(&mut self, chunk: Vec<u8>) -> Result<(), String> {
        if chunk.len() > MAX_CHUNK as usize {
            return Err(format!("a chunk has more than {MAX_CHUNK} bytes"));
        }
        match &mut self.storage()?.workspace {
            WorkspaceSession::Restore(sink) => sink.write(&chunk),
            WorkspaceSession::Backup(_) => Err("write is for restores; this call is a backup".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_checked() {
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "a/../b"] {
            assert!(checked_relative(bad).is_err(), "{bad:?}");
        }
        assert!(checked_relative("./a/b").is_ok());
        assert!(checked_relative("a/b.txt").is_ok());
    }

    #[test]
    fn symlink_targets_must_stay_inside() {
        assert!(stays_inside(Path::new("a/b"), "../c"));
        assert!(stays_inside(Path::new("a"), "../c"));
        assert!(!stays_inside(Path::new("a"), "../../c"));
        assert!(!stays_inside(Path::new(""), "../x"));
        assert!(!stays_inside(Path::new(""), "/etc"));
    }

    fn entry(path: &str, kind: EntryKind, size: u64, link: Option<&str>) -> Entry {
        Entry { path: path.into(), kind, mode: 0o644, size, mtime: 0, link_target: link.map(String::from) }
    }

    #[test]
    fn restore_sink_rejects_hostile_entries() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = RestoreSink::new(dir.path(), 100);
        sink.begin_entry(entry("link", EntryKind::Symlink, 0, Some("sub"))).unwrap();
        assert!(sink.begin_entry(entry("link/x", EntryKind::File, 1, None)).is_err(), "a write through a symlink");
        assert!(sink.begin_entry(entry("out", EntryKind::Symlink, 0, Some("../../etc"))).is_err());
        assert!(sink.begin_entry(entry("abs", EntryKind::Symlink, 0, Some("/etc/passwd"))).is_err());
        assert!(sink.begin_entry(entry("hard", EntryKind::Hardlink, 0, Some("../x"))).is_err());
        assert!(sink.begin_entry(entry("dev", EntryKind::Other, 0, None)).is_err());
        assert!(sink.begin_entry(entry("big", EntryKind::File, 101, None)).is_err(), "over the size limit");

        sink.begin_entry(entry("ok.txt", EntryKind::File, 2, None)).unwrap();
        sink.write(b"hi").unwrap();
        assert!(sink.write(b"!").is_err(), "content beyond the announced size");
        assert_eq!(std::fs::read(dir.path().join("ok.txt")).unwrap(), b"hi");
    }
}
