//! Storage plugin that writes each backup as one gzip-compressed tar archive,
//! `backups/NAME.tar.gz`, which `tar -xzf` restores by hand.
//!
//! The workspace streams through in 1 MiB chunks in both directions, so the
//! plugin's memory stays small whatever the workspace's size. The host
//! checks every entry of a restore; this plugin only decodes.

wit_bindgen::generate!({ path: "../../wit", world: "storage" });

use std::io::{self, Read, Write};

use agentstead::plugin::blobs::{self, BlobError, Upload};
use agentstead::plugin::types::{PluginError, PluginInfo, PluginKind};
use agentstead::plugin::workspace::{self, Entry, EntryKind};
use exports::agentstead::plugin::plugin::Guest as Plugin;
use exports::agentstead::plugin::storage_driver::{Guest as StorageDriver, Snapshot};
use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;

struct TarStorage;

/// Bytes moved per host call.
const CHUNK: usize = 1024 * 1024;
/// gzip level 3 compresses mixed workspaces nearly as well as the default
/// level 6 at about twice the speed.
const GZIP_LEVEL: u32 = 3;

fn blob_error(error: BlobError) -> io::Error {
    let message = match error {
        BlobError::NotFound(m) => format!("not found: {m}"),
        BlobError::Denied(m) => format!("denied: {m}"),
        BlobError::Io(m) => m,
    };
    io::Error::other(message)
}

fn plugin_error(error: io::Error) -> PluginError {
    PluginError::Other(error.to_string())
}

/// Collects compressed bytes and sends them to the upload in chunks.
struct UploadWriter {
    upload: Upload,
    buffer: Vec<u8>,
}

impl UploadWriter {
    fn send(&mut self) -> io::Result<()> {
        if !self.buffer.is_empty() {
            self.upload.write(&self.buffer).map_err(blob_error)?;
            self.buffer.clear();
        }
        Ok(())
    }
}

impl Write for UploadWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= CHUNK {
            self.send()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// Reads the current workspace file from the host.
struct WorkspaceFile;

impl Read for WorkspaceFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let chunk = workspace::read(buf.len().min(CHUNK) as u32).map_err(io::Error::other)?;
        buf[..chunk.len()].copy_from_slice(&chunk);
        Ok(chunk.len())
    }
}

/// Reads a stored object from the host.
struct BlobReader {
    object: String,
    offset: u64,
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let chunk = blobs::read(&self.object, self.offset, buf.len().min(CHUNK) as u32).map_err(blob_error)?;
        buf[..chunk.len()].copy_from_slice(&chunk);
        self.offset += chunk.len() as u64;
        Ok(chunk.len())
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn append(builder: &mut tar::Builder<GzEncoder<UploadWriter>>, entry: &Entry) -> io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_mode(entry.mode);
    header.set_mtime(entry.mtime);
    match entry.kind {
        EntryKind::Directory => {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            builder.append_data(&mut header, &entry.path, io::empty())
        }
        EntryKind::File => {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(entry.size);
            builder.append_data(&mut header, &entry.path, WorkspaceFile.take(entry.size))
        }
        EntryKind::Symlink | EntryKind::Hardlink => {
            let kind = if entry.kind == EntryKind::Symlink { tar::EntryType::Symlink } else { tar::EntryType::Link };
            header.set_entry_type(kind);
            header.set_size(0);
            let target = entry.link_target.clone().unwrap_or_default();
            builder.append_link(&mut header, &entry.path, target)
        }
        EntryKind::Other => Ok(()),
    }
}

fn restore_entry(entry: &mut tar::Entry<'_, GzDecoder<io::BufReader<BlobReader>>>) -> Result<(), PluginError> {
    let header = entry.header();
    let kind = match header.entry_type() {
        tar::EntryType::Regular | tar::EntryType::Continuous => EntryKind::File,
        tar::EntryType::Directory => EntryKind::Directory,
        tar::EntryType::Symlink => EntryKind::Symlink,
        tar::EntryType::Link => EntryKind::Hardlink,
        _ => EntryKind::Other,
    };
    let mode = header.mode().unwrap_or(0o644);
    let mtime = header.mtime().unwrap_or(0);
    let size = if kind == EntryKind::File { header.size().map_err(plugin_error)? } else { 0 };
    let path = entry.path_bytes();
    let path = String::from_utf8(path.into_owned())
        .map_err(|_| PluginError::InvalidInput("the archive has a path that is not UTF-8".into()))?;
    let link_target = entry
        .link_name_bytes()
        .map(|target| String::from_utf8_lossy(&target).into_owned());

    let description = Entry { path, kind, mode, size, mtime, link_target };
    workspace::begin_entry(&description).map_err(PluginError::InvalidInput)?;
    if kind != EntryKind::File {
        return Ok(());
    }
    let mut buffer = vec![0u8; CHUNK];
    loop {
        let read = entry.read(&mut buffer).map_err(plugin_error)?;
        if read == 0 {
            return Ok(());
        }
        workspace::write(&buffer[..read]).map_err(PluginError::InvalidInput)?;
    }
}

impl Plugin for TarStorage {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "storage-tar".into(),
            kind: PluginKind::Storage,
            version: env!("CARGO_PKG_VERSION").into(),
            abi: "0.1.0".into(),
            description: "one gzip-compressed tar archive per backup".into(),
        }
    }
}

impl StorageDriver for TarStorage {
    fn backup(name: String) -> Result<Snapshot, PluginError> {
        if !valid_name(&name) {
            return Err(PluginError::InvalidInput(format!("backup name `{name}` must be letters, digits, `_` and `-`")));
        }
        let object = format!("backups/{name}.tar.gz");
        let upload = Upload::new(&object);
        let writer = UploadWriter { upload, buffer: Vec::with_capacity(CHUNK * 2) };
        let mut builder = tar::Builder::new(GzEncoder::new(writer, Compression::new(GZIP_LEVEL)));
        builder.follow_symlinks(false);

        let written = (|| -> io::Result<UploadWriter> {
            while let Some(entry) = workspace::next_entry().map_err(io::Error::other)? {
                append(&mut builder, &entry)?;
            }
            let mut writer = builder.into_inner()?.finish()?;
            writer.flush()?;
            Ok(writer)
        })();
        let writer = written.map_err(plugin_error)?;
        let size = writer.upload.finish().map_err(|error| plugin_error(blob_error(error)))?;
        Ok(Snapshot { object, size, file_name: format!("{name}.tar.gz") })
    }

    fn restore(object: String) -> Result<(), PluginError> {
        let reader = io::BufReader::with_capacity(CHUNK, BlobReader { object, offset: 0 });
        let mut archive = tar::Archive::new(GzDecoder::new(reader));
        for entry in archive.entries().map_err(plugin_error)? {
            let mut entry = entry.map_err(plugin_error)?;
            restore_entry(&mut entry)?;
        }
        Ok(())
    }
}

export!(TarStorage);
