//! Users, login sessions and personal access tokens.
//!
//! Passwords are hashed with Argon2id. Session cookies and tokens are 256-bit
//! random values that are stored only as SHA-256 digests: they carry enough
//! entropy that a fast hash is safe, and a lookup by digest compares nothing
//! secret in user space. A token's `lastUsedAt` is remembered in memory and
//! written in batches, so authenticating a request costs one read.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::distr::{Alphanumeric, SampleString};
use sha2::{Digest, Sha256};

use crate::ids;
use crate::store::{Store, StoreError, TokenRow, now_ms};

/// Visible start of every token; it lets secret scanners recognise a leaked one.
pub const TOKEN_PREFIX: &str = "ast_";
/// Random characters after the prefix: 43 alphanumerics are about 256 bits.
const TOKEN_RANDOM_LEN: usize = 43;
/// Characters of a token stored for display, as the API's `prefix` field.
const DISPLAY_PREFIX_LEN: usize = 8;
/// Maximum password length, in bytes.
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "agentstead_session";

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("authentication required: send `Authorization: Bearer <token>` or log in with POST /api/auth/login")]
    Missing,
    #[error("the token is invalid, revoked or expired; create a new one with POST /api/user/tokens")]
    InvalidToken,
    #[error("the session is invalid or expired; log in again with POST /api/auth/login")]
    InvalidSession,
    #[error("invalid email or password")]
    InvalidCredentials,
    #[error("this operation needs the `{required}` scope, and the token has {granted}")]
    InsufficientScope { required: Scope, granted: String },
    #[error("this operation needs a logged-in session; personal access tokens cannot create or revoke tokens")]
    SessionRequired,
    #[error("cross-site request rejected: a cookie-authenticated request must come from the same origin; scripts use a token")]
    CrossSite,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("password hashing failed: {0}")]
    Hash(String),
}

/// Token scopes. `full` implies `deploy` and `read`; `deploy` does not imply `read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    Read,
    Deploy,
    Full,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Read, Scope::Deploy, Scope::Full];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Deploy => "deploy",
            Scope::Full => "full",
        }
    }

    pub fn parse(value: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|scope| scope.as_str() == value)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Credential the caller authenticated with.
#[derive(Debug, Clone)]
pub enum Credential {
    Token { id: String, scopes: Vec<Scope> },
    Session { token_hash: String },
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user_id: String,
    pub credential: Credential,
}

impl Caller {
    /// Checks that the caller may use an operation that needs `required`.
    /// A session has every scope.
    pub fn require(&self, required: Scope) -> Result<(), AuthError> {
        let Credential::Token { scopes, .. } = &self.credential else {
            return Ok(());
        };
        if scopes.contains(&Scope::Full) || scopes.contains(&required) {
            return Ok(());
        }
        let granted = scopes.iter().map(|scope| format!("`{scope}`")).collect::<Vec<_>>().join(", ");
        Err(AuthError::InsufficientScope { required, granted })
    }

    pub fn require_session(&self) -> Result<(), AuthError> {
        match self.credential {
            Credential::Session { .. } => Ok(()),
            Credential::Token { .. } => Err(AuthError::SessionRequired),
        }
    }
}

/// A token as the API shows it: everything except the value.
pub struct TokenInfo {
    pub row: TokenRow,
    pub scopes: Vec<Scope>,
}

pub struct NewToken {
    pub id: String,
    pub value: String,
}

pub fn sha256_hex(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

fn random_secret() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), TOKEN_RANDOM_LEN)
}

pub fn parse_scopes(stored: &str) -> Vec<Scope> {
    stored.split(',').filter_map(Scope::parse).collect()
}

/// Hashes a password with Argon2id and a random salt. Slow on purpose: run
/// it on a blocking thread.
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|error| AuthError::Hash(error.to_string()))
}

fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
}

pub struct AuthService {
    store: Store,
    session_ttl_ms: i64,
    /// Token id to the time of its last use, not yet written.
    pending_uses: Mutex<HashMap<String, i64>>,
    /// A valid hash of an unguessable password, verified when the email is
    /// unknown so that a login takes as long whether or not the user exists.
    decoy_hash: String,
}

impl AuthService {
    pub fn new(store: Store, session_ttl_hours: u32) -> Result<Self, AuthError> {
        let decoy_hash = hash_password(&random_secret())?;
        Ok(AuthService {
            store,
            session_ttl_ms: i64::from(session_ttl_hours) * 3_600_000,
            pending_uses: Mutex::new(HashMap::new()),
            decoy_hash,
        })
    }

    /// Creates a user; emails are compared case-insensitively.
    pub async fn create_user(&self, email: &str, password: &str) -> Result<String, AuthError> {
        let id = ids::random_id("usr_", 12);
        let password = password.to_string();
        let hash = tokio::task::spawn_blocking(move || hash_password(&password))
            .await
            .map_err(|error| AuthError::Hash(error.to_string()))??;
        self.store.insert_user(&id, &email.to_lowercase(), &hash).await?;
        Ok(id)
    }

    pub async fn user_id_by_email(&self, email: &str) -> Result<Option<String>, AuthError> {
        Ok(self.store.user_by_email(&email.to_lowercase()).await?.map(|user| user.id))
    }

    /// Checks the password and opens a session; returns the cookie value
    /// and the user id.
    pub async fn login(&self, email: &str, password: &str) -> Result<(String, String), AuthError> {
        // No stored password is this long, and hashing megabytes costs time.
        if password.len() > MAX_PASSWORD_BYTES {
            return Err(AuthError::InvalidCredentials);
        }
        let user = self.store.user_by_email(&email.to_lowercase()).await?;
        let hash = user.as_ref().map_or_else(|| self.decoy_hash.clone(), |user| user.password_hash.clone());
        let password = password.to_string();
        let matches = tokio::task::spawn_blocking(move || verify_password(&password, &hash))
            .await
            .map_err(|error| AuthError::Hash(error.to_string()))?;
        let Some(user) = user.filter(|_| matches) else {
            return Err(AuthError::InvalidCredentials);
        };

        let cookie = random_secret();
        self.store.insert_session(&sha256_hex(&cookie), &user.id, now_ms() + self.session_ttl_ms).await?;
        Ok((cookie, user.id))
    }

    pub async fn logout(&self, caller: &Caller) -> Result<(), AuthError> {
        if let Credential::Session { token_hash } = &caller.credential {
            self.store.delete_session(token_hash).await?;
        }
        Ok(())
    }

    pub fn session_ttl_secs(&self) -> i64 {
        self.session_ttl_ms / 1000
    }

    pub async fn authenticate_token(&self, token: &str) -> Result<Caller, AuthError> {
        if !token.starts_with(TOKEN_PREFIX) || token.len() != TOKEN_PREFIX.len() + TOKEN_RANDOM_LEN {
            return Err(AuthError::InvalidToken);
        }
        let row = self.store.token_by_hash(&sha256_hex(token)).await?.ok_or(AuthError::InvalidToken)?;
        let now = now_ms();
        if row.expires_at.is_some_and(|expires_at| expires_at <= now) {
            return Err(AuthError::InvalidToken);
        }
        self.pending_uses.lock().unwrap_or_else(|poison| poison.into_inner()).insert(row.id.clone(), now);
        Ok(Caller { user_id: row.user_id, credential: Credential::Token { id: row.id, scopes: parse_scopes(&row.scopes) } })
    }

    pub async fn authenticate_session(&self, cookie: &str) -> Result<Caller, AuthError> {
        let token_hash = sha256_hex(cookie);
        let user_id = self.store.session_user(&token_hash).await?.ok_or(AuthError::InvalidSession)?;
        Ok(Caller { user_id, credential: Credential::Session { token_hash } })
    }

    /// Creates a token for `user_id`. `expires_at` in the past is rejected by the caller.
    pub async fn create_token(
        &self,
        user_id: &str,
        name: &str,
        scopes: &[Scope],
        expires_at: Option<i64>,
    ) -> Result<NewToken, AuthError> {
        let id = ids::random_id("tok_", 12);
        let value = format!("{TOKEN_PREFIX}{}", random_secret());
        let mut sorted: Vec<Scope> = scopes.to_vec();
        sorted.sort();
        sorted.dedup();
        let stored_scopes = sorted.iter().map(|scope| scope.as_str()).collect::<Vec<_>>().join(",");
        self.store
            .insert_token(&id, user_id, name, &value[..DISPLAY_PREFIX_LEN], &sha256_hex(&value), &stored_scopes, expires_at)
            .await?;
        Ok(NewToken { id, value })
    }

    /// Lists the user's tokens, with use times not yet written merged in.
    pub async fn list_tokens(&self, user_id: &str) -> Result<Vec<TokenInfo>, AuthError> {
        let rows = self.store.tokens_of(user_id).await?;
        let pending = self.pending_uses.lock().unwrap_or_else(|poison| poison.into_inner()).clone();
        Ok(rows
            .into_iter()
            .map(|mut row| {
                if let Some(&at) = pending.get(&row.id) {
                    row.last_used_at = Some(row.last_used_at.map_or(at, |stored| stored.max(at)));
                }
                let scopes = parse_scopes(&row.scopes);
                TokenInfo { row, scopes }
            })
            .collect())
    }

    pub async fn revoke_token(&self, user_id: &str, token_id: &str) -> Result<bool, AuthError> {
        let deleted = self.store.delete_token(user_id, token_id).await?;
        if deleted {
            self.pending_uses.lock().unwrap_or_else(|poison| poison.into_inner()).remove(token_id);
        }
        Ok(deleted)
    }

    /// Writes remembered token use times; called periodically and at shutdown.
    pub async fn flush_token_uses(&self) -> Result<usize, AuthError> {
        let uses: Vec<(String, i64)> =
            self.pending_uses.lock().unwrap_or_else(|poison| poison.into_inner()).drain().collect();
        if uses.is_empty() {
            return Ok(0);
        }
        if let Err(error) = self.store.record_token_use(&uses).await {
            // Keep the times for the next attempt, unless a newer use arrived.
            let mut pending = self.pending_uses.lock().unwrap_or_else(|poison| poison.into_inner());
            for (id, at) in uses {
                pending.entry(id).or_insert(at);
            }
            return Err(error.into());
        }
        Ok(uses.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_scope_implies_the_others() {
        let caller = Caller {
            user_id: "usr_1".into(),
            credential: Credential::Token { id: "tok_1".into(), scopes: vec![Scope::Full] },
        };
        for scope in Scope::ALL {
            assert!(caller.require(scope).is_ok(), "full should grant {scope}");
        }
    }

    #[test]
    fn deploy_scope_does_not_imply_read() {
        let caller = Caller {
            user_id: "usr_1".into(),
            credential: Credential::Token { id: "tok_1".into(), scopes: vec![Scope::Deploy] },
        };
        assert!(caller.require(Scope::Deploy).is_ok());
        let error = caller.require(Scope::Read).unwrap_err().to_string();
        assert!(error.contains("`read`"), "{error}");
    }

    #[tokio::test]
    async fn token_round_trip_and_revocation() {
        let store = Store::open_in_memory().await.unwrap();
        let auth = AuthService::new(store, 1).unwrap();
        let user = auth.create_user("Ops@Example.com", "correct horse").await.unwrap();
        let token = auth.create_token(&user, "ci", &[Scope::Read], None).await.unwrap();
        assert!(token.value.starts_with(TOKEN_PREFIX));

        let caller = auth.authenticate_token(&token.value).await.unwrap();
        assert_eq!(caller.user_id, user);
        let listed = auth.list_tokens(&user).await.unwrap();
        assert_eq!(listed[0].row.prefix, &token.value[..8]);
        assert!(listed[0].row.last_used_at.is_some(), "use time is visible before the flush");

        assert_eq!(auth.flush_token_uses().await.unwrap(), 1);
        assert!(auth.revoke_token(&user, &token.id).await.unwrap());
        assert!(matches!(auth.authenticate_token(&token.value).await, Err(AuthError::InvalidToken)));
    }

    #[tokio::test]
    async fn expired_token_is_rejected() {
        let store = Store::open_in_memory().await.unwrap();
        let auth = AuthService::new(store, 1).unwrap();
        let user = auth.create_user("a@example.com", "pw-123456").await.unwrap();
        let token = auth.create_token(&user, "old", &[Scope::Full], Some(now_ms() - 1)).await.unwrap();
        assert!(matches!(auth.authenticate_token(&token.value).await, Err(AuthError::InvalidToken)));
    }

    #[tokio::test]
    async fn login_checks_password_case_insensitive_email() {
        let store = Store::open_in_memory().await.unwrap();
        let auth = AuthService::new(store, 1).unwrap();
        auth.create_user("a@example.com", "pw-123456").await.unwrap();
        assert!(auth.login("A@Example.com", "pw-123456").await.is_ok());
        assert!(matches!(auth.login("a@example.com", "wrong").await, Err(AuthError::InvalidCredentials)));
        assert!(matches!(auth.login("nobody@example.com", "pw-123456").await, Err(AuthError::InvalidCredentials)));
    }
}
