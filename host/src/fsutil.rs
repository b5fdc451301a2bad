//! Private files written atomically.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Writes `contents` to `path` with mode 0600: into a temporary file beside
/// it, synced, then renamed over `path`, and the directory synced, so a
/// crash leaves either the old file or the whole new one.
pub fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut staging_name = path.file_name().unwrap_or_default().to_os_string();
    staging_name.push(".tmp");
    let staging = path.with_file_name(staging_name);
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&staging)?;
    // An existing staging file keeps its mode through `open`; set it again.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::rename(&staging, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
