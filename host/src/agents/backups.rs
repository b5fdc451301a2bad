//! Workspace backups: create, list, pin, delete, download links and restore.
//!
//! A backup row is `pending` from before the first byte is written. It
//! turns `complete` only after the storage plugin has finished its upload,
//! which makes the object visible whole, and the size is known.
//! A crash in between leaves a pending row and perhaps an unfinished
//! upload, which [`AgentService::clean_up_backups`] removes at the next
//! start.

use std::collections::HashSet;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::ObjectStoreExt;

use super::{AgentDirs, AgentError, AgentService, AgentStatus, io_error};
use crate::ids;
use crate::plugins::bindings::TaskState;
use crate::plugins::{BackupWalk, RestoreSink, Snapshot, StorageSession, WorkspaceSession};
use crate::store::{AgentRow, BackupRow, now_ms};

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("backup `{0}` not found")]
    NotFound(String),
    #[error(
        "the backup quota is exceeded: backups use {used} of {quota} bytes{needed}. Delete backups to free \
         space ({deletable}), or raise backups.quota_bytes"
    )]
    Quota { quota: u64, used: u64, needed: String, deletable: String },
    #[error("the archive was rejected, and the workspace is unchanged: {0}")]
    Rejected(String),
    #[error("the download link is invalid or expired; request a new one")]
    BadLink,
    #[error("the backup store failed: {0}")]
    Storage(String),
}

/// A signed link to a backup archive.
pub struct DownloadLink {
    pub url: String,
    pub expires_at: i64,
}

impl AgentService {
    fn storage_plugin(&self) -> Result<std::sync::Arc<crate::plugins::LoadedPlugin>, AgentError> {
        Ok(self.plugins.get(&self.config.backups.plugin)?)
    }

    fn backup_budget(&self) -> Duration {
        Duration::from_secs(self.config.backups.timeout_secs)
    }

    pub async fn list_backups(&self, user_id: &str, agent_id: &str) -> Result<Vec<BackupRow>, AgentError> {
        self.get(user_id, agent_id).await?;
        Ok(self.store.backups_of(agent_id).await?)
    }

    async fn owned_backup(&self, user_id: &str, agent_id: &str, backup_id: &str) -> Result<BackupRow, AgentError> {
        let not_found = || AgentError::Backup(BackupError::NotFound(backup_id.to_string()));
        // Both ids are checked for shape before any query.
        if !ids::is_prefixed_id(backup_id, "bkp_", 12) {
            return Err(not_found());
        }
        self.get(user_id, agent_id).await?;
        self.store.backup_of(user_id, agent_id, backup_id).await?.ok_or_else(not_found)
    }

    /// Lists the oldest unpinned backups of an account, for quota messages.
    async fn deletable_hint(&self, user_id: &str) -> String {
        let agents = self.store.agents_of(user_id).await.unwrap_or_default();
        let mut unpinned = Vec::new();
        for agent in agents {
            let backups = self.store.backups_of(&agent.id).await.unwrap_or_default();
            unpinned.extend(backups.into_iter().filter(|backup| !backup.pinned));
        }
        unpinned.sort_by_key(|backup| backup.created_at);
        let listed: Vec<String> = unpinned.iter().take(3).map(|b| format!("{} of {}, {} bytes", b.id, b.agent_id, b.size)).collect();
        if listed.is_empty() {
            "every backup is pinned: unpin one, then delete it".into()
        } else {
            format!("oldest unpinned: {}", listed.join("; "))
        }
    }

    async fn quota_error(&self, user_id: &str, used: u64, needed: Option<u64>) -> AgentError {
        let needed = needed.map(|size| format!(", and this backup needs {size} more")).unwrap_or_default();
        AgentError::Backup(BackupError::Quota {
            quota: self.config.backups.quota_bytes,
            used,
            needed,
            deletable: self.deletable_hint(user_id).await,
        })
    }

    /// Takes a backup of the agent's workspace and returns when it is
    /// complete. With `pause`, the agent's processes are frozen for the
    /// snapshot, so files such as a live SQLite database are consistent.
    pub async fn create_backup(&self, user_id: &str, agent_id: &str, pause: bool) -> Result<BackupRow, AgentError> {
        let agent = self.get(user_id, agent_id).await?;
        let Some(_guard) = self.try_lock(agent_id) else {
            return Err(AgentError::Busy { agent_id: agent_id.to_string(), status: agent.status });
        };
        let used = self.store.backup_bytes(user_id).await?;
        if used >= self.config.backups.quota_bytes {
            return Err(self.quota_error(user_id, used, None).await);
        }
        let plugin = self.storage_plugin()?;
        let dirs = AgentDirs::new(&self.config, agent_id);
        std::fs::create_dir_all(&dirs.workspace).map_err(io_error("create", &dirs.workspace))?;

        let backup_id = ids::random_id("bkp_", 12);
        self.store.insert_backup(&backup_id, agent_id, user_id).await?;
        let paused = pause && self.set_paused(&agent, true).await?;
        let session = StorageSession {
            blobs: std::sync::Arc::clone(&self.blobs),
            plugin: plugin.info.name.clone(),
            workspace: WorkspaceSession::Backup(BackupWalk::new(&dirs.workspace)),
        };
        let name = backup_id.clone();
        let (result, _) = self
            .plugins
            .storage_call(&plugin, agent_id, session, self.backup_budget(), move |s, store| {
                Box::pin(async move { s.agentstead_plugin_storage_driver().call_backup(store, &name).await })
            })
            .await;
        if paused {
            if let Err(error) = self.set_paused(&agent, false).await {
                tracing::error!(agent_id, %error, "failed to resume the agent after a backup");
            }
        }

        let snapshot: Snapshot = match result {
            Ok(snapshot) => snapshot,
            Err(error) => {
                self.store.delete_backup(&backup_id).await?;
                return Err(error.into());
            }
        };
        let used = self.store.backup_bytes(user_id).await?;
        if used + snapshot.size > self.config.backups.quota_bytes {
            self.delete_object(&plugin.info.name, &snapshot.object).await;
            self.store.delete_backup(&backup_id).await?;
            return Err(self.quota_error(user_id, used, Some(snapshot.size)).await);
        }
        self.store.complete_backup(&backup_id, &snapshot.object, &snapshot.file_name, snapshot.size).await?;
        tracing::info!(agent_id, backup_id, size = snapshot.size, paused, "backup complete");
        self.event(agent_id, "backup", &format!("backup {backup_id} complete: {} bytes", snapshot.size)).await;
        self.prune_backups(agent_id).await;

        self.store.backup(&backup_id).await?.ok_or_else(|| AgentError::Backup(BackupError::NotFound(backup_id)))
    }

    /// Freezes or thaws a running agent; false when it does not run.
    async fn set_paused(&self, agent: &AgentRow, paused: bool) -> Result<bool, AgentError> {
        let Some(handle) = self.store.agent(&agent.id).await?.and_then(|row| row.handle) else {
            return Ok(false);
        };
        let runtime = self.plugins.get(&agent.runtime)?;
        if paused && self.runtime_inspect(agent, &runtime, handle.clone()).await?.state != TaskState::Running {
            return Ok(false);
        }
        self.runtime_call(agent, &runtime, Duration::ZERO, move |r, s| {
            Box::pin(async move { r.agentstead_plugin_runtime_driver().call_pause(s, &handle, paused).await })
        })
        .await?;
        Ok(true)
    }

    /// Deletes the oldest unpinned backups beyond `backups.keep_unpinned`.
    async fn prune_backups(&self, agent_id: &str) {
        let Ok(backups) = self.store.backups_of(agent_id).await else {
            return;
        };
        let keep = self.config.backups.keep_unpinned as usize;
        for old in backups.into_iter().filter(|backup| !backup.pinned).skip(keep) {
            match self.remove_backup(&old).await {
                Ok(()) => tracing::info!(agent_id, backup_id = %old.id, "deleted an old unpinned backup"),
                Err(error) => tracing::warn!(agent_id, backup_id = %old.id, %error, "failed to delete an old backup"),
            }
        }
    }

    async fn delete_object(&self, plugin: &str, object: &str) {
        match self.blobs.plugin_path(plugin, object) {
            Ok(path) => {
                if let Err(error) = self.blobs.store().delete(&path).await {
                    if !matches!(error, object_store::Error::NotFound { .. }) {
                        tracing::warn!(%path, %error, "failed to delete a backup object");
                    }
                }
            }
            Err(error) => tracing::warn!(object, %error, "a stored backup object key is invalid"),
        }
    }

    pub(super) async fn remove_backup(&self, backup: &BackupRow) -> Result<(), AgentError> {
        if let Some(object) = &backup.object {
            self.delete_object(&self.config.backups.plugin, object).await;
        }
        self.store.delete_backup(&backup.id).await?;
        Ok(())
    }

    pub async fn pin_backup(&self, user_id: &str, agent_id: &str, backup_id: &str, pinned: bool) -> Result<BackupRow, AgentError> {
        self.owned_backup(user_id, agent_id, backup_id).await?;
        self.store.set_pinned(backup_id, pinned).await?;
        Ok(self.owned_backup(user_id, agent_id, backup_id).await?)
    }

    /// Deletes a backup and its archive; the quota is free at once.
    pub async fn delete_backup(&self, user_id: &str, agent_id: &str, backup_id: &str) -> Result<(), AgentError> {
        let backup = self.owned_backup(user_id, agent_id, backup_id).await?;
        self.remove_backup(&backup).await?;
        tracing::info!(agent_id, backup_id, "backup deleted");
        Ok(())
    }

    /// Returns a link that downloads the archive without credentials until
    /// it expires. Cloud stores sign their own URL; for local files the link
    /// is a host route with an HMAC-signed token.
    pub async fn download_link(&self, user_id: &str, agent_id: &str, backup_id: &str, base_url: &str) -> Result<DownloadLink, AgentError> {
        let backup = self.owned_backup(user_id, agent_id, backup_id).await?;
        let ttl = Duration::from_secs(self.config.backups.download_ttl_secs);
        let expires_at = now_ms() + ttl.as_millis() as i64;
        let path = self.archive_path(&backup)?;
        if let Some(signed) = self.blobs.signed_url(&path, ttl).await {
            let url = signed.map_err(|error| BackupError::Storage(format!("signing the download URL failed: {error}")))?;
            return Ok(DownloadLink { url: url.to_string(), expires_at });
        }
        let signature = self.host_key.derive("backup-download", &[&backup.id, &expires_at.to_string()]);
        let token = format!("{}.{expires_at}.{signature}", backup.id);
        Ok(DownloadLink { url: format!("{}/api/backup-downloads/{token}", base_url.trim_end_matches('/')), expires_at })
    }

    /// Checks a download token and returns the backup it grants.
    pub async fn verify_download(&self, token: &str) -> Result<BackupRow, AgentError> {
        let bad = || AgentError::Backup(BackupError::BadLink);
        let mut parts = token.splitn(3, '.');
        let (Some(backup_id), Some(expires), Some(signature)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad());
        };
        let expected = self.host_key.derive("backup-download", &[backup_id, expires]);
        let signature_ok: bool = subtle::ConstantTimeEq::ct_eq(expected.as_bytes(), signature.as_bytes()).into();
        let expires_at: i64 = expires.parse().map_err(|_| bad())?;
        if !signature_ok || expires_at <= now_ms() {
            return Err(bad());
        }
        self.store.backup(backup_id).await?.ok_or_else(bad)
    }

    /// Opens the archive of a backup as a byte stream.
    pub async fn open_archive(&self, backup: &BackupRow) -> Result<object_store::GetResult, AgentError> {
        let path = self.archive_path(backup)?;
        let archive = self.blobs.store().get(&path).await;
        Ok(archive.map_err(|error| BackupError::Storage(format!("cannot read the archive {path}: {error}")))?)
    }

    fn archive_path(&self, backup: &BackupRow) -> Result<object_store::path::Path, AgentError> {
        let object = backup.object.as_deref().unwrap_or_default();
        let path = self.blobs.plugin_path(&self.config.backups.plugin, object);
        Ok(path.map_err(|error| BackupError::Storage(error.to_string()))?)
    }

    /// Replaces the agent's workspace with a backup. The archive is
    /// extracted beside the workspace first. Only when every entry passed
    /// is the agent stopped and the directories swapped, and then the agent
    /// starts again if it was running.
    pub async fn restore_backup(&self, user_id: &str, agent_id: &str, backup_id: &str) -> Result<AgentRow, AgentError> {
        let backup = self.owned_backup(user_id, agent_id, backup_id).await?;
        let agent = self.get(user_id, agent_id).await?;
        let Some(_guard) = self.try_lock(agent_id) else {
            return Err(AgentError::Busy { agent_id: agent_id.to_string(), status: agent.status });
        };
        let plugin = self.storage_plugin()?;
        let dirs = AgentDirs::new(&self.config, agent_id);
        let staging = dirs.root.join(format!("workspace.restore-{backup_id}"));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).map_err(io_error("create", &staging))?;

        let session = StorageSession {
            blobs: std::sync::Arc::clone(&self.blobs),
            plugin: plugin.info.name.clone(),
            workspace: WorkspaceSession::Restore(RestoreSink::new(&staging, self.config.backups.max_restore_bytes)),
        };
        let object = backup.object.clone().unwrap_or_default();
        let (result, _) = self
            .plugins
            .storage_call(&plugin, agent_id, session, self.backup_budget(), move |s, store| {
                Box::pin(async move { s.agentstead_plugin_storage_driver().call_restore(store, &object).await })
            })
            .await;
        if let Err(error) = result {
            let _ = std::fs::remove_dir_all(&staging);
            tracing::warn!(agent_id, backup_id, %error, "restore rejected");
            return Err(AgentError::Backup(BackupError::Rejected(error.to_string())));
        }

        let was_running = agent.desired == "running" && AgentStatus::parse(&agent.status) != Some(AgentStatus::Offline);
        self.store.set_status(agent_id, AgentStatus::Stopping.as_str(), None).await?;
        self.take_down(&agent).await?;
        let previous = dirs.root.join(format!("workspace.previous-{backup_id}"));
        if dirs.workspace.exists() {
            std::fs::rename(&dirs.workspace, &previous).map_err(io_error("move aside", &dirs.workspace))?;
        }
        std::fs::rename(&staging, &dirs.workspace).map_err(io_error("install", &dirs.workspace))?;
        let _ = std::fs::remove_dir_all(&previous);
        self.event(agent_id, "restore", &format!("workspace restored from {backup_id}")).await;
        tracing::info!(agent_id, backup_id, "workspace restored");

        let status = if was_running {
            self.store.set_status(agent_id, AgentStatus::Starting.as_str(), None).await?;
            match self.bring_up(&agent, false).await {
                Ok(status) => (status, None),
                Err(error) => (AgentStatus::Error, Some(error.to_string())),
            }
        } else {
            (AgentStatus::Offline, None)
        };
        self.store.set_status(agent_id, status.0.as_str(), status.1.as_deref()).await?;
        self.get(user_id, agent_id).await
    }

    /// Removes what a crash left: pending backup rows with any partial
    /// object, and objects under the storage plugin's `backups/` that no
    /// complete backup refers to.
    pub async fn clean_up_backups(&self) -> Result<(), AgentError> {
        let plugin = self.config.backups.plugin.clone();
        for pending in self.store.pending_backups().await? {
            tracing::warn!(backup_id = %pending.id, agent_id = %pending.agent_id, "removing a backup a crash left unfinished");
            self.delete_object(&plugin, &format!("backups/{}.tar.gz", pending.id)).await;
            self.store.delete_backup(&pending.id).await?;
        }

        let referenced: HashSet<String> = self.store.backup_objects().await?.into_iter().collect();
        let prefix = self.blobs.plugin_prefix(&plugin).join("backups");
        let objects: Vec<object_store::ObjectMeta> =
            self.blobs.store().list(Some(&prefix)).try_collect().await.unwrap_or_default();
        let plugin_prefix = self.blobs.plugin_prefix(&plugin);
        for object in objects {
            let relative: Vec<String> = object
                .location
                .prefix_match(&plugin_prefix)
                .map(|parts| parts.map(|part| part.as_ref().to_string()).collect())
                .unwrap_or_default();
            let key = relative.join("/");
            if !referenced.contains(&key) {
                tracing::warn!(object = %object.location, "removing an orphaned backup object");
                if let Err(error) = self.blobs.store().delete(&object.location).await {
                    tracing::warn!(object = %object.location, %error, "failed to remove an orphaned backup object");
                }
            }
        }
        Ok(())
    }
}
