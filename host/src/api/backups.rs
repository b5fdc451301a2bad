use std::sync::Arc;

use futures::TryStreamExt;
use poem::Request;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::{Binary, Json};
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::agents::{Agent, agent_to_api};
use super::{ApiError, ApiState, ApiTags, Credentials, Timestamp};
use crate::auth::Scope;
use crate::store::BackupRow;

pub struct BackupsApi {
    pub state: Arc<ApiState>,
}

#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct Backup {
    /// Backup id, such as `bkp_…`.
    id: String,
    /// Size of the archive, in bytes.
    size: u64,
    /// A pinned backup is never deleted by automatic cleanup.
    pinned: bool,
    created_at: Timestamp,
}

#[derive(Object)]
pub struct BackupList {
    /// Complete backups, newest first.
    backups: Vec<Backup>,
}

#[derive(Object)]
#[oai(deny_unknown_fields)]
pub struct PinRequest {
    pinned: bool,
}

#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct DownloadLinkBody {
    /// A URL that downloads the gzip-compressed tar archive without credentials.
    url: String,
    /// When the URL stops working.
    expires_at: Timestamp,
}

#[derive(Object)]
pub struct RestoredAgent {
    /// The agent after the restore: running again if it was running before.
    agent: Agent,
}

#[derive(ApiResponse)]
enum CreateBackupResponse {
    /// The backup is complete and stored.
    #[oai(status = 201)]
    Created(Json<Backup>),
}

#[derive(ApiResponse)]
enum DeleteBackupResponse {
    /// The backup and its archive are gone; its size no longer counts against the quota.
    #[oai(status = 204)]
    Deleted,
}

#[derive(ApiResponse)]
enum ArchiveResponse {
    /// The archive, streamed.
    #[oai(status = 200, content_type = "application/gzip")]
    Archive(Binary<poem::Body>, #[oai(header = "Content-Disposition")] String),
}

fn to_api(backup: BackupRow) -> Backup {
    Backup { id: backup.id, size: backup.size.max(0) as u64, pinned: backup.pinned, created_at: Timestamp::from_ms(backup.created_at) }
}

/// Returns the origin of download links: the configured one, else the
/// request's own `Host`.
fn base_url(state: &ApiState, request: &Request) -> String {
    if let Some(base) = &state.download_base_url {
        return base.clone();
    }
    let host = request.headers().get("host").and_then(|value| value.to_str().ok()).unwrap_or("127.0.0.1");
    format!("http://{host}")
}

#[OpenApi(tag = "ApiTags::Backups")]
impl BackupsApi {
    /// List backups
    ///
    /// Scope required: read. Returns all complete backups of the agent, newest first.
    #[oai(path = "/api/agents/:id/workspace/backups", method = "get", operation_id = "listBackups")]
    async fn list(&self, credentials: Credentials, request: &Request, id: Path<String>) -> Result<Json<BackupList>, ApiError> {
        let caller = self.state.authorize(&credentials, request, Scope::Read).await?;
        let backups = self.state.agents.list_backups(&caller.user_id, &id).await?;
        Ok(Json(BackupList { backups: backups.into_iter().map(to_api).collect() }))
    }

    /// Create backup
    ///
    /// Scope required: deploy. Takes an immediate full backup of the
    /// workspace and returns when the backup is complete. By default the
    /// agent keeps running and files it writes meanwhile may be caught
    /// halfway; `pause=true` freezes its processes for the snapshot.
    #[oai(path = "/api/agents/:id/workspace/backup", method = "post", operation_id = "createBackup")]
    async fn create(
        &self,
        credentials: Credentials,
        request: &Request,
        id: Path<String>,
        /// **Extension.** Freeze the agent's processes (SIGSTOP) while the
        /// workspace is read, so a live SQLite database is captured
        /// consistently; they continue (SIGCONT) afterwards.
        #[oai(default)]
        pause: Query<bool>,
    ) -> Result<CreateBackupResponse, ApiError> {
        let caller = self.state.authorize(&credentials, request, Scope::Deploy).await?;
        let backup = self.state.agents.create_backup(&caller.user_id, &id, pause.0).await?;
        Ok(CreateBackupResponse::Created(Json(to_api(backup))))
    }

    /// Download backup
    ///
    /// Scope required: full. Returns a signed download URL for the backup
    /// archive, valid for `backups.download_ttl_secs` (15 minutes by default).
    #[oai(path = "/api/agents/:id/workspace/backups/:backupId/download", method = "get", operation_id = "downloadBackup")]
    async fn download(
        &self,
        credentials: Credentials,
        request: &Request,
        id: Path<String>,
        #[oai(name = "backupId")] backup_id: Path<String>,
    ) -> Result<Json<DownloadLinkBody>, ApiError> {
        let caller = self.state.authorize(&credentials, request, Scope::Full).await?;
        let link = self.state.agents.download_link(&caller.user_id, &id, &backup_id, &base_url(&self.state, request)).await?;
        Ok(Json(DownloadLinkBody { url: link.url, expires_at: Timestamp::from_ms(link.expires_at) }))
    }

    /// Pin backup
    ///
    /// Scope required: deploy. Pins or unpins a backup; a pinned backup is
    /// never deleted by automatic cleanup.
    #[oai(path = "/api/agents/:id/workspace/backups/:backupId/pin", method = "patch", operation_id = "pinBackup")]
    async fn pin(
        &self,
        credentials: Credentials,
        request: &Request,
        id: Path<String>,
        #[oai(name = "backupId")] backup_id: Path<String>,
        body: Json<PinRequest>,
    ) -> Result<Json<Backup>, ApiError> {
        let caller = self.state.authorize(&credentials, request, Scope::Deploy).await?;
        let backup = self.state.agents.pin_backup(&caller.user_id, &id, &backup_id, body.pinned).await?;
        Ok(Json(to_api(backup)))
    }

    /// Delete backup
    ///
    /// Scope required: deploy. Permanently deletes a backup and frees its quota.
    #[oai(path = "/api/agents/:id/workspace/backups/:backupId", method = "delete", operation_id = "deleteBackup")]
    async fn delete(
        &self,
        credentials: Credentials,
        request: &Request,
        id: Path<String>,
        #[oai(name = "backupId")] backup_id: Path<String>,
    ) -> Result<DeleteBackupResponse, ApiError> {
        let caller = self.state.authorize(&credentials, request, Scope::Deploy).await?;
        self.state.agents.delete_backup(&caller.user_id, &id, &backup_id).await?;
        Ok(DeleteBackupResponse::Deleted)
    }

    /// Restore backup (extension)
    ///
    /// **Extension.** Scope required: deploy. Extracts the backup beside the
    /// workspace, then stops the agent, swaps the directories and starts it
    /// again if it was running. An archive with absolute paths, `..`, links
    /// leaving the workspace, device files or more than
    /// `backups.max_restore_bytes` of content is rejected and changes nothing.
    #[oai(path = "/api/agents/:id/workspace/backups/:backupId/restore", method = "post", operation_id = "restoreBackup")]
    async fn restore(
        &self,
        credentials: Credentials,
        request: &Request,
        id: Path<String>,
        #[oai(name = "backupId")] backup_id: Path<String>,
    ) -> Result<Json<RestoredAgent>, ApiError> {
        let caller = self.state.authorize(&credentials, request, Scope::Deploy).await?;
        let agent = self.state.agents.restore_backup(&caller.user_id, &id, &backup_id).await?;
        Ok(Json(RestoredAgent { agent: agent_to_api(&self.state, agent) }))
    }

    /// Fetch a backup archive by signed link (extension)
    ///
    /// **Extension.** Needs no credentials: the token in the path is the
    /// signed, expiring grant that `download` returns. A tampered or expired
    /// token gets 403.
    #[oai(path = "/api/backup-downloads/:token", method = "get", operation_id = "fetchBackupArchive")]
    async fn fetch(&self, token: Path<String>) -> Result<ArchiveResponse, ApiError> {
        let backup = self.state.agents.verify_download(&token).await?;
        let archive = self.state.agents.open_archive(&backup).await?;
        let stream = archive.into_stream().map_err(std::io::Error::other);
        let file_name = backup.file_name.unwrap_or_else(|| format!("{}.tar.gz", backup.id));
        Ok(ArchiveResponse::Archive(
            Binary(poem::Body::from_bytes_stream(stream)),
            format!("attachment; filename=\"{file_name}\""),
        ))
    }
}
