use std::sync::Arc;

use poem::Request;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};

use super::{ApiError, ApiState, ApiTags, Credentials, Timestamp};
use crate::auth::{Scope, TokenInfo};
use crate::ids;
use crate::store::now_ms;

pub struct TokensApi {
    pub state: Arc<ApiState>,
}

/// A token scope. `full` implies `deploy` and `read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum ScopeName {
    Read,
    Deploy,
    Full,
}

impl From<ScopeName> for Scope {
    fn from(scope: ScopeName) -> Scope {
        match scope {
            ScopeName::Read => Scope::Read,
            ScopeName::Deploy => Scope::Deploy,
            ScopeName::Full => Scope::Full,
        }
    }
}

impl From<Scope> for ScopeName {
    fn from(scope: Scope) -> ScopeName {
        match scope {
            Scope::Read => ScopeName::Read,
            Scope::Deploy => ScopeName::Deploy,
            Scope::Full => ScopeName::Full,
        }
    }
}

/// A personal access token, without its value.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct Token {
    /// Token id, such as `tok_…`.
    id: String,
    name: String,
    /// The first 8 characters of the token, to recognise it.
    prefix: String,
    scopes: Vec<ScopeName>,
    /// Last successful authentication; null if never used. Updated within
    /// `auth.last_used_flush_secs` of a use.
    #[oai(nullable)]
    last_used_at: Option<Timestamp>,
    /// Null for a token that does not expire.
    #[oai(nullable)]
    expires_at: Option<Timestamp>,
    created_at: Timestamp,
}

#[derive(Object)]
pub struct TokenList {
    tokens: Vec<Token>,
}

#[derive(Object)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateTokenRequest {
    /// A label, 1 to 100 characters; the document states the length and pattern.
    name: String,
    /// At least one scope.
    #[oai(validator(min_items = 1, max_items = 3))]
    scopes: Vec<ScopeName>,
    /// Optional expiry; omit for a token that does not expire. Must be in the future.
    #[oai(nullable)]
    expires_at: Option<Timestamp>,
}

/// The new token. `token` is shown only in this response.
#[derive(Object)]
pub struct CreatedToken {
    id: String,
    token: String,
}

#[derive(ApiResponse)]
enum CreateTokenResponse {
    /// The token was created; store its value now, it is not shown again.
    #[oai(status = 201)]
    Created(Json<CreatedToken>),
}

#[derive(ApiResponse)]
enum RevokeResponse {
    /// The token no longer authenticates.
    #[oai(status = 204)]
    Revoked,
}

fn to_api(info: TokenInfo) -> Token {
    Token {
        id: info.row.id,
        name: info.row.name,
        prefix: info.row.prefix,
        scopes: info.scopes.into_iter().map(ScopeName::from).collect(),
        last_used_at: info.row.last_used_at.map(Timestamp::from_ms),
        expires_at: info.row.expires_at.map(Timestamp::from_ms),
        created_at: Timestamp::from_ms(info.row.created_at),
    }
}

#[OpenApi(tag = "ApiTags::Tokens")]
impl TokensApi {
    /// List tokens
    ///
    /// Scope required: any valid token (or session). Returns metadata for
    /// all your tokens; token values are never returned.
    #[oai(path = "/api/user/tokens", method = "get", operation_id = "listTokens")]
    async fn list(&self, credentials: Credentials, request: &Request) -> Result<Json<TokenList>, ApiError> {
        let caller = self.state.authenticate_any(&credentials, request).await?;
        let tokens = self.state.auth.list_tokens(&caller.user_id).await?;
        Ok(Json(TokenList { tokens: tokens.into_iter().map(to_api).collect() }))
    }

    /// Create token
    ///
    /// Scope required: session auth only (a token cannot create tokens; log
    /// in with `POST /api/auth/login`). The value is returned once only.
    #[oai(path = "/api/user/tokens", method = "post", operation_id = "createToken")]
    async fn create(
        &self,
        credentials: Credentials,
        request: &Request,
        body: Json<CreateTokenRequest>,
    ) -> Result<CreateTokenResponse, ApiError> {
        let caller = self.state.authenticate_any(&credentials, request).await?;
        caller.require_session()?;
        let name = body.name.as_str();
        ids::check_label(name, ids::LABEL_MAX_CHARS).map_err(|reason| ApiError::bad_request("invalid_name", format!("invalid token name: {reason}")))?;
        if let Some(expires_at) = body.expires_at {
            if expires_at.as_ms() <= now_ms() {
                return Err(ApiError::bad_request(
                    "invalid_expires_at",
                    format!("expiresAt {} is in the past; give a future time or omit it", expires_at.0.to_rfc3339()),
                ));
            }
        }

        let scopes: Vec<Scope> = body.scopes.iter().copied().map(Scope::from).collect();
        let token = self.state.auth.create_token(&caller.user_id, name, &scopes, body.expires_at.map(Timestamp::as_ms)).await?;
        tracing::info!(user_id = %caller.user_id, token_id = %token.id, "token created");
        Ok(CreateTokenResponse::Created(Json(CreatedToken { id: token.id, token: token.value })))
    }

    /// Revoke token
    ///
    /// Scope required: session auth only. Immediately invalidates the token.
    #[oai(path = "/api/user/tokens/:id", method = "delete", operation_id = "revokeToken")]
    async fn revoke(&self, credentials: Credentials, request: &Request, id: Path<String>) -> Result<RevokeResponse, ApiError> {
        let caller = self.state.authenticate_any(&credentials, request).await?;
        caller.require_session()?;
        let not_found = || ApiError::not_found(format!("token `{}` not found", id.0));
        if !ids::is_prefixed_id(&id, "tok_", 12) {
            return Err(not_found());
        }
        if !self.state.auth.revoke_token(&caller.user_id, &id).await? {
            return Err(not_found());
        }
        tracing::info!(user_id = %caller.user_id, token_id = %id.0, "token revoked");
        Ok(RevokeResponse::Revoked)
    }
}
