//! The database: connection, migrations and every SQL statement.
//!
//! Statements use `$1`-style placeholders, integer milliseconds for times and
//! text ids, which SQLite and PostgreSQL both accept, so the same queries can
//! serve a PostgreSQL backend. Every query that reads or changes a user's
//! resource filters by `user_id`, so another account's row is never found.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{FromRow, SqlitePool};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{what} already exists")]
    Duplicate { what: String },
    #[error("{what}")]
    Limit { what: String },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[derive(Debug, Clone, FromRow)]
pub struct UserRow {
    pub id: String,
    pub email: String,
    pub password_hash: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, FromRow)]
pub struct TokenRow {
    pub id: String,
    pub user_id: String,
    pub name: String,
    pub prefix: String,
    pub scopes: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

#[derive(Debug, Clone, FromRow)]
pub struct AgentRow {
    pub id: String,
    pub user_id: String,
    pub name: String,
    pub agent_type: String,
    pub region: String,
    pub runtime: String,
    pub port: i64,
    pub status: String,
    pub status_message: Option<String>,
    pub desired: String,
    pub handle: Option<Vec<u8>>,
    pub launch: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub started_at: Option<i64>,
    pub secrets_changed_at: Option<i64>,
}

impl AgentRow {
    /// True when the agent's secrets changed after its task last started.
    pub fn restart_pending(&self) -> bool {
        matches!((self.started_at, self.secrets_changed_at), (Some(started), Some(changed)) if changed > started)
    }
}

#[derive(Debug, Clone, FromRow)]
pub struct SecretRow {
    pub agent_id: String,
    pub key: String,
    pub ciphertext: Vec<u8>,
    pub updated_at: i64,
}

#[derive(Debug, Clone, FromRow)]
pub struct BackupRow {
    pub id: String,
    pub agent_id: String,
    pub user_id: String,
    pub status: String,
    pub object: Option<String>,
    pub file_name: Option<String>,
    pub size: i64,
    pub pinned: bool,
    pub created_at: i64,
}

const BACKUP_COLUMNS: &str = "id, agent_id, user_id, status, object, file_name, size, pinned, created_at";

#[derive(Debug, Clone, FromRow)]
pub struct ScheduleRow {
    pub id: String,
    pub agent_id: String,
    pub user_id: String,
    pub name: String,
    pub cron: String,
    pub action: String,
    pub enabled: bool,
    pub created_at: i64,
    pub last_run_at: Option<i64>,
    pub last_status: Option<String>,
    pub last_error: Option<String>,
}

const SCHEDULE_COLUMNS: &str =
    "id, agent_id, user_id, name, cron, action, enabled, created_at, last_run_at, last_status, last_error";

#[derive(Debug, Clone, FromRow)]
pub struct EventRow {
    pub id: i64,
    pub at: i64,
    pub kind: String,
    pub message: String,
}

/// A new agent row.
pub struct NewAgent<'a> {
    pub id: &'a str,
    pub user_id: &'a str,
    pub name: &'a str,
    pub agent_type: &'a str,
    pub region: &'a str,
    pub runtime: &'a str,
    pub port: u16,
    pub status: &'a str,
}

#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.is_unique_violation())
}

const AGENT_COLUMNS: &str = "id, user_id, name, agent_type, region, runtime, port, status, status_message, desired, \
                             handle, launch, created_at, updated_at, started_at, secrets_changed_at";

impl Store {
    /// Opens (or creates) the SQLite database in WAL mode and migrates it.
    pub async fn open_sqlite(path: &Path) -> Result<Store> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // In WAL mode NORMAL loses no committed data on a process crash,
            // only possibly the last transactions on a power loss.
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new().max_connections(8).connect_with(options).await?;
        MIGRATOR.run(&pool).await?;
        Ok(Store { pool })
    }

    /// Opens an in-memory database, for unit tests.
    pub async fn open_in_memory() -> Result<Store> {
        let options = SqliteConnectOptions::from_str("sqlite::memory:")?.foreign_keys(true);
        let pool = SqlitePoolOptions::new().max_connections(1).connect_with(options).await?;
        MIGRATOR.run(&pool).await?;
        Ok(Store { pool })
    }

    // Users and sessions.

    pub async fn insert_user(&self, id: &str, email: &str, password_hash: &str) -> Result<()> {
        let result = sqlx::query("INSERT INTO users (id, email, password_hash, created_at) VALUES ($1, $2, $3, $4)")
            .bind(id)
            .bind(email)
            .bind(password_hash)
            .bind(now_ms())
            .execute(&self.pool)
            .await;
        match result {
            Err(error) if is_unique_violation(&error) => Err(StoreError::Duplicate { what: format!("user {email}") }),
            other => other.map(|_| ()).map_err(Into::into),
        }
    }

    pub async fn user_by_email(&self, email: &str) -> Result<Option<UserRow>> {
        Ok(sqlx::query_as("SELECT id, email, password_hash, created_at FROM users WHERE email = $1")
            .bind(email)
            .fetch_optional(&self.pool)
            .await?)
    }

    pub async fn insert_session(&self, token_hash: &str, user_id: &str, expires_at: i64) -> Result<()> {
        sqlx::query("INSERT INTO sessions (token_hash, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4)")
            .bind(token_hash)
            .bind(user_id)
            .bind(now_ms())
            .bind(expires_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Returns the user of a live session.
    pub async fn session_user(&self, token_hash: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar("SELECT user_id FROM sessions WHERE token_hash = $1 AND expires_at > $2")
            .bind(token_hash)
            .bind(now_ms())
            .fetch_optional(&self.pool)
            .await?)
    }

    pub async fn delete_session(&self, token_hash: &str) -> Result<()> {
        sqlx::query("DELETE FROM sessions WHERE token_hash = $1").bind(token_hash).execute(&self.pool).await?;
        Ok(())
    }

    pub async fn delete_expired_sessions(&self) -> Result<u64> {
        let result = sqlx::query("DELETE FROM sessions WHERE expires_at <= $1").bind(now_ms()).execute(&self.pool).await?;
        Ok(result.rows_affected())
    }

    // Personal access tokens.

    #[allow(clippy::too_many_arguments)]
    pub async fn insert_token(
        &self,
        id: &str,
        user_id: &str,
        name: &str,
        prefix: &str,
        token_hash: &str,
        scopes: &str,
        expires_at: Option<i64>,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO tokens (id, user_id, name, prefix, token_hash, scopes, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(id)
        .bind(user_id)
        .bind(name)
        .bind(prefix)
        .bind(token_hash)
        .bind(scopes)
        .bind(now_ms())
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn token_by_hash(&self, token_hash: &str) -> Result<Option<TokenRow>> {
        Ok(sqlx::query_as(
            "SELECT id, user_id, name, prefix, scopes, created_at, expires_at, last_used_at FROM tokens \
             WHERE token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn tokens_of(&self, user_id: &str) -> Result<Vec<TokenRow>> {
        Ok(sqlx::query_as(
            "SELECT id, user_id, name, prefix, scopes, created_at, expires_at, last_used_at FROM tokens \
             WHERE user_id = $1 ORDER BY created_at, id",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Deletes a token of `user_id`; false when there is none with that id.
    pub async fn delete_token(&self, user_id: &str, id: &str) -> Result<bool> {
        let result = sqlx::query("DELETE FROM tokens WHERE id = $1 AND user_id = $2")
            .bind(id)
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() > 0)
    }

    /// Writes remembered use times in one transaction; a time never moves back.
    pub async fn record_token_use(&self, uses: &[(String, i64)]) -> Result<()> {
        let mut transaction = self.pool.begin().await?;
        for (id, at) in uses {
            sqlx::query("UPDATE tokens SET last_used_at = $1 WHERE id = $2 AND (last_used_at IS NULL OR last_used_at < $1)")
                .bind(at)
                .bind(id)
                .execute(&mut *transaction)
                .await?;
        }
        transaction.commit().await?;
        Ok(())
    }

    // Agents.

    pub async fn insert_agent(&self, agent: &NewAgent<'_>) -> Result<()> {
        let now = now_ms();
        let result = sqlx::query(
            "INSERT INTO agents (id, user_id, name, agent_type, region, runtime, port, status, desired, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'running', $9, $9)",
        )
        .bind(agent.id)
        .bind(agent.user_id)
        .bind(agent.name)
        .bind(agent.agent_type)
        .bind(agent.region)
        .bind(agent.runtime)
        .bind(i64::from(agent.port))
        .bind(agent.status)
        .bind(now)
        .execute(&self.pool)
        .await;
        match result {
            Err(error) if is_unique_violation(&error) => {
                Err(StoreError::Duplicate { what: format!("agent {} or port {}", agent.id, agent.port) })
            }
            other => other.map(|_| ()).map_err(Into::into),
        }
    }

    pub async fn agent_of(&self, user_id: &str, id: &str) -> Result<Option<AgentRow>> {
        let sql = format!("SELECT {AGENT_COLUMNS} FROM agents WHERE id = $1 AND user_id = $2");
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).bind(user_id).fetch_optional(&self.pool).await?)
    }

    /// Returns an agent by id alone, for the host's own background work.
    pub async fn agent(&self, id: &str) -> Result<Option<AgentRow>> {
        let sql = format!("SELECT {AGENT_COLUMNS} FROM agents WHERE id = $1");
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(&self.pool).await?)
    }

    pub async fn agents_of(&self, user_id: &str) -> Result<Vec<AgentRow>> {
        let sql = format!("SELECT {AGENT_COLUMNS} FROM agents WHERE user_id = $1 ORDER BY created_at, id");
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(user_id).fetch_all(&self.pool).await?)
    }

    pub async fn all_agents(&self) -> Result<Vec<AgentRow>> {
        let sql = format!("SELECT {AGENT_COLUMNS} FROM agents ORDER BY created_at, id");
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(&self.pool).await?)
    }

    pub async fn agent_exists(&self, id: &str) -> Result<bool> {
        let found: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM agents WHERE id = $1").bind(id).fetch_optional(&self.pool).await?;
        Ok(found.is_some())
    }

    pub async fn used_ports(&self) -> Result<Vec<i64>> {
        Ok(sqlx::query_scalar("SELECT port FROM agents").fetch_all(&self.pool).await?)
    }

    pub async fn set_status(&self, id: &str, status: &str, message: Option<&str>) -> Result<()> {
        sqlx::query("UPDATE agents SET status = $1, status_message = $2, updated_at = $3 WHERE id = $4")
            .bind(status)
            .bind(message)
            .bind(now_ms())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn set_desired(&self, id: &str, desired: &str) -> Result<()> {
        sqlx::query("UPDATE agents SET desired = $1, updated_at = $2 WHERE id = $3")
            .bind(desired)
            .bind(now_ms())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn set_handle(&self, id: &str, handle: Option<&[u8]>) -> Result<()> {
        sqlx::query("UPDATE agents SET handle = $1, updated_at = $2 WHERE id = $3")
            .bind(handle)
            .bind(now_ms())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn set_launch(&self, id: &str, launch: &str) -> Result<()> {
        sqlx::query("UPDATE agents SET launch = $1, updated_at = $2 WHERE id = $3")
            .bind(launch)
            .bind(now_ms())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn set_started(&self, id: &str) -> Result<()> {
        sqlx::query("UPDATE agents SET started_at = $1 WHERE id = $2").bind(now_ms()).bind(id).execute(&self.pool).await?;
        Ok(())
    }

    pub async fn delete_agent(&self, id: &str) -> Result<()> {
        sqlx::query("DELETE FROM agents WHERE id = $1").bind(id).execute(&self.pool).await?;
        Ok(())
    }

    pub async fn insert_event(&self, agent_id: &str, kind: &str, message: &str) -> Result<()> {
        sqlx::query("INSERT INTO agent_events (agent_id, at, kind, message) VALUES ($1, $2, $3, $4)")
            .bind(agent_id)
            .bind(now_ms())
            .bind(kind)
            .bind(message)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Returns the newest `limit` events of an agent, oldest first.
    pub async fn events(&self, agent_id: &str, limit: i64) -> Result<Vec<EventRow>> {
        let mut rows: Vec<EventRow> = sqlx::query_as(
            "SELECT id, at, kind, message FROM agent_events WHERE agent_id = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(agent_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.reverse();
        Ok(rows)
    }

    // Secrets. Values arrive and leave encrypted, so this module never handles plaintext.

    /// Secrets of an agent, ordered by key.
    pub async fn secrets(&self, agent_id: &str) -> Result<Vec<SecretRow>> {
        Ok(sqlx::query_as("SELECT agent_id, key, ciphertext, updated_at FROM secrets WHERE agent_id = $1 ORDER BY key")
            .bind(agent_id)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Creates or replaces a secret and records the change on the agent, in
    /// one transaction. Returns true when the key is new. A new key is refused
    /// with [`StoreError::Limit`] when the agent already has `max_per_agent`.
    pub async fn put_secret(&self, agent_id: &str, key: &str, ciphertext: &[u8], max_per_agent: i64) -> Result<bool> {
        let now = now_ms();
        // IMMEDIATE takes the write lock up front, so two writers wait for
        // each other instead of failing to upgrade a read lock.
        let mut transaction = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM secrets WHERE agent_id = $1 AND key = $2")
            .bind(agent_id)
            .bind(key)
            .fetch_optional(&mut *transaction)
            .await?;
        if exists.is_none() {
            let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM secrets WHERE agent_id = $1")
                .bind(agent_id)
                .fetch_one(&mut *transaction)
                .await?;
            if count >= max_per_agent {
                return Err(StoreError::Limit { what: format!("agent {agent_id} already has {count} secrets, the maximum") });
            }
        }
        sqlx::query(
            "INSERT INTO secrets (agent_id, key, ciphertext, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (agent_id, key) DO UPDATE SET ciphertext = excluded.ciphertext, updated_at = excluded.updated_at",
        )
        .bind(agent_id)
        .bind(key)
        .bind(ciphertext)
        .bind(now)
        .execute(&mut *transaction)
        .await?;
        sqlx::query("UPDATE agents SET secrets_changed_at = $1 WHERE id = $2")
            .bind(now)
            .bind(agent_id)
            .execute(&mut *transaction)
            .await?;
        transaction.commit().await?;
        Ok(exists.is_none())
    }

    /// Deletes a secret; false when the agent has no such key.
    pub async fn delete_secret(&self, agent_id: &str, key: &str) -> Result<bool> {
        let mut transaction = self.pool.begin().await?;
        let deleted = sqlx::query("DELETE FROM secrets WHERE agent_id = $1 AND key = $2")
            .bind(agent_id)
            .bind(key)
            .execute(&mut *transaction)
            .await?
            .rows_affected();
        if deleted > 0 {
            sqlx::query("UPDATE agents SET secrets_changed_at = $1 WHERE id = $2")
                .bind(now_ms())
                .bind(agent_id)
                .execute(&mut *transaction)
                .await?;
        }
        transaction.commit().await?;
        Ok(deleted > 0)
    }

    /// Replaces every secret's ciphertext in one transaction: `reencrypt`
    /// receives the old ciphertext and returns the new one. Any error rolls
    /// the whole change back. Returns the number of secrets.
    pub async fn reencrypt_secrets<F, E>(&self, mut reencrypt: F) -> Result<Result<usize, E>>
    where
        F: FnMut(&SecretRow) -> Result<Vec<u8>, E>,
    {
        let mut transaction = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let rows: Vec<SecretRow> = sqlx::query_as("SELECT agent_id, key, ciphertext, updated_at FROM secrets")
            .fetch_all(&mut *transaction)
            .await?;
        for row in &rows {
            let ciphertext = match reencrypt(row) {
                Ok(ciphertext) => ciphertext,
                Err(error) => return Ok(Err(error)),
            };
            sqlx::query("UPDATE secrets SET ciphertext = $1 WHERE agent_id = $2 AND key = $3")
                .bind(ciphertext)
                .bind(&row.agent_id)
                .bind(&row.key)
                .execute(&mut *transaction)
                .await?;
        }
        transaction.commit().await?;
        Ok(Ok(rows.len()))
    }

    // Backups.

    pub async fn insert_backup(&self, id: &str, agent_id: &str, user_id: &str) -> Result<()> {
        sqlx::query("INSERT INTO backups (id, agent_id, user_id, status, created_at) VALUES ($1, $2, $3, 'pending', $4)")
            .bind(id)
            .bind(agent_id)
            .bind(user_id)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Marks a backup complete once its object is durable.
    pub async fn complete_backup(&self, id: &str, object: &str, file_name: &str, size: u64) -> Result<()> {
        sqlx::query("UPDATE backups SET status = 'complete', object = $1, file_name = $2, size = $3 WHERE id = $4")
            .bind(object)
            .bind(file_name)
            .bind(size as i64)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn delete_backup(&self, id: &str) -> Result<()> {
        sqlx::query("DELETE FROM backups WHERE id = $1").bind(id).execute(&self.pool).await?;
        Ok(())
    }

    /// Complete backups of an agent, newest first.
    pub async fn backups_of(&self, agent_id: &str) -> Result<Vec<BackupRow>> {
        let sql = format!("SELECT {BACKUP_COLUMNS} FROM backups WHERE agent_id = $1 AND status = 'complete' ORDER BY created_at DESC, id DESC");
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(agent_id).fetch_all(&self.pool).await?)
    }

    /// Returns a complete backup of `agent_id` owned by `user_id`.
    pub async fn backup_of(&self, user_id: &str, agent_id: &str, id: &str) -> Result<Option<BackupRow>> {
        let sql = format!(
            "SELECT {BACKUP_COLUMNS} FROM backups WHERE id = $1 AND agent_id = $2 AND user_id = $3 AND status = 'complete'"
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).bind(agent_id).bind(user_id).fetch_optional(&self.pool).await?)
    }

    /// Returns a complete backup by id alone, for signed downloads.
    pub async fn backup(&self, id: &str) -> Result<Option<BackupRow>> {
        let sql = format!("SELECT {BACKUP_COLUMNS} FROM backups WHERE id = $1 AND status = 'complete'");
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(&self.pool).await?)
    }

    pub async fn set_pinned(&self, id: &str, pinned: bool) -> Result<()> {
        sqlx::query("UPDATE backups SET pinned = $1 WHERE id = $2").bind(pinned).bind(id).execute(&self.pool).await?;
        Ok(())
    }

    /// Bytes of complete backups an account holds.
    pub async fn backup_bytes(&self, user_id: &str) -> Result<u64> {
        let used: Option<i64> =
            sqlx::query_scalar("SELECT SUM(size) FROM backups WHERE user_id = $1 AND status = 'complete'")
                .bind(user_id)
                .fetch_one(&self.pool)
                .await?;
        Ok(used.unwrap_or(0).max(0) as u64)
    }

    /// Returns every backup that never completed, as a crash leaves them.
    pub async fn pending_backups(&self) -> Result<Vec<BackupRow>> {
        let sql = format!("SELECT {BACKUP_COLUMNS} FROM backups WHERE status = 'pending'");
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(&self.pool).await?)
    }

    /// Objects of every complete backup.
    pub async fn backup_objects(&self) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar("SELECT object FROM backups WHERE status = 'complete' AND object IS NOT NULL")
            .fetch_all(&self.pool)
            .await?)
    }

    // Schedules.

    pub async fn insert_schedule(&self, row: &ScheduleRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO schedules (id, agent_id, user_id, name, cron, action, enabled, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&row.id)
        .bind(&row.agent_id)
        .bind(&row.user_id)
        .bind(&row.name)
        .bind(&row.cron)
        .bind(&row.action)
        .bind(row.enabled)
        .bind(row.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Writes the editable fields of a schedule.
    pub async fn update_schedule(&self, row: &ScheduleRow) -> Result<()> {
        sqlx::query("UPDATE schedules SET name = $1, cron = $2, action = $3, enabled = $4 WHERE id = $5")
            .bind(&row.name)
            .bind(&row.cron)
            .bind(&row.action)
            .bind(row.enabled)
            .bind(&row.id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn delete_schedule(&self, id: &str) -> Result<()> {
        sqlx::query("DELETE FROM schedules WHERE id = $1").bind(id).execute(&self.pool).await?;
        Ok(())
    }

    pub async fn schedules_of(&self, agent_id: &str) -> Result<Vec<ScheduleRow>> {
        let sql = format!("SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE agent_id = $1 ORDER BY created_at, id");
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(agent_id).fetch_all(&self.pool).await?)
    }

    pub async fn schedule_of(&self, user_id: &str, agent_id: &str, id: &str) -> Result<Option<ScheduleRow>> {
        let sql = format!("SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE id = $1 AND agent_id = $2 AND user_id = $3");
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).bind(agent_id).bind(user_id).fetch_optional(&self.pool).await?)
    }

    pub async fn schedule(&self, id: &str) -> Result<Option<ScheduleRow>> {
        let sql = format!("SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE id = $1");
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(&self.pool).await?)
    }

    pub async fn enabled_schedules(&self) -> Result<Vec<ScheduleRow>> {
        let sql = format!("SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE enabled = $1");
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(true).fetch_all(&self.pool).await?)
    }

    /// Claims one firing of a schedule for `host`; false when another host
    /// (or an earlier call) already claimed it.
    pub async fn claim_schedule_run(&self, schedule_id: &str, fire_at: i64, host: &str) -> Result<bool> {
        let result = sqlx::query("INSERT INTO schedule_runs (schedule_id, fire_at, host, claimed_at) VALUES ($1, $2, $3, $4)")
            .bind(schedule_id)
            .bind(fire_at)
            .bind(host)
            .bind(now_ms())
            .execute(&self.pool)
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(error) if is_unique_violation(&error) => Ok(false),
            Err(error) => Err(error.into()),
        }
    }

    pub async fn schedule_run_count(&self, schedule_id: &str) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM schedule_runs WHERE schedule_id = $1")
            .bind(schedule_id)
            .fetch_one(&self.pool)
            .await?)
    }

    pub async fn record_schedule_result(&self, id: &str, at: i64, status: &str, error: Option<&str>) -> Result<()> {
        sqlx::query("UPDATE schedules SET last_run_at = $1, last_status = $2, last_error = $3 WHERE id = $4")
            .bind(at)
            .bind(status)
            .bind(error)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
