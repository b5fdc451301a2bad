use std::sync::Arc;

use poem::Request;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::agents::{Agent, agent_to_api};
use super::sensitive::Sensitive;
use super::{ApiError, ApiState, ApiTags, Credentials, Timestamp};
use crate::auth::Scope;

pub struct SecretsApi {
    pub state: Arc<ApiState>,
}

/// A secret's key. Values are never returned.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct SecretKey {
    key: String,
    /// **Extension.** When the value was last set. Always sent.
    #[oai(default = "Timestamp::unset")]
    updated_at: Timestamp,
}

#[derive(Object)]
pub struct SecretList {
    secrets: Vec<SecretKey>,
}

#[derive(Object)]
#[oai(deny_unknown_fields)]
pub struct SetSecretRequest {
    /// An environment variable name: a letter or `_`, then letters, digits
    /// and `_`, at most 256 characters. `PATH`, `HOME`, `LD_*` and names the
    /// agent type sets are reserved.
    #[oai(validator(min_length = 1, max_length = 256))]
    key: String,
    /// The value, at most 65536 characters, without NUL. Write-only: it is
    /// encrypted at rest and never returned.
    #[oai(write_only, validator(max_length = 65536))]
    value: Sensitive,
}

/// The stored secret, without its value, and the agent it belongs to.
#[derive(Object)]
pub struct SecretSaved {
    secret: SecretKey,
    /// The agent; `restartPending` is true when a restart is needed to apply the change.
    agent: Agent,
}

/// A value the host generated for the agent.
#[derive(Object)]
pub struct GeneratedValue {
    /// The environment variable the agent reads it from, such as `OPENCLAW_GATEWAY_TOKEN`.
    name: String,
    value: String,
}

#[derive(Object)]
pub struct GeneratedValues {
    values: Vec<GeneratedValue>,
}

#[derive(ApiResponse)]
enum SetSecretResponse {
    /// A new secret was stored.
    #[oai(status = 201)]
    Created(Json<SecretSaved>),
    /// An existing secret was replaced.
    #[oai(status = 200)]
    Replaced(Json<SecretSaved>),
}

#[derive(ApiResponse)]
enum DeleteSecretResponse {
    /// The secret is gone; the agent keeps it until its next start or restart.
    #[oai(status = 204)]
    Deleted,
}

#[OpenApi(tag = "ApiTags::Secrets")]
impl SecretsApi {
    /// List secret keys
    ///
    /// Scope required: full. Returns key names only; values are never exposed
    /// through the API.
    #[oai(path = "/api/agents/:id/secrets", method = "get", operation_id = "listSecrets")]
    async fn list(&self, credentials: Credentials, request: &Request, id: Path<String>) -> Result<Json<SecretList>, ApiError> {
        let caller = self.state.authorize(&credentials, request, Scope::Full).await?;
        let rows = self.state.agents.list_secrets(&caller.user_id, &id).await?;
        let secrets = rows.into_iter().map(|row| SecretKey { key: row.key, updated_at: Timestamp::from_ms(row.updated_at) }).collect();
        Ok(Json(SecretList { secrets }))
    }

    /// Set secret
    ///
    /// Scope required: full. Creates or replaces a secret. The value is
    /// encrypted before it is stored and reaches the agent's environment at
    /// its next start, restart or redeploy.
    #[oai(path = "/api/agents/:id/secrets", method = "post", operation_id = "setSecret")]
    async fn set(
        &self,
        credentials: Credentials,
        request: &Request,
        id: Path<String>,
        body: Json<SetSecretRequest>,
    ) -> Result<SetSecretResponse, ApiError> {
        let caller = self.state.authorize(&credentials, request, Scope::Full).await?;
        let (created, agent, updated_at) =
            self.state.agents.set_secret(&caller.user_id, &id, &body.key, body.value.expose()).await?;
        let secret = SecretKey { key: body.0.key, updated_at: Timestamp::from_ms(updated_at) };
        let saved = Json(SecretSaved { secret, agent: agent_to_api(&self.state, agent) });
        Ok(if created { SetSecretResponse::Created(saved) } else { SetSecretResponse::Replaced(saved) })
    }

    /// Get generated credentials (extension)
    ///
    /// **Extension.** Scope required: full. Returns the values the host
    /// generates for the agent type, such as OpenClaw's gateway token, which
    /// clients of the agent itself need to authenticate. They are derived
    /// from the host key, stable across restarts, and distinct from the
    /// write-only secrets users set.
    #[oai(path = "/api/agents/:id/credentials", method = "get", operation_id = "getAgentCredentials")]
    async fn credentials(&self, credentials: Credentials, request: &Request, id: Path<String>) -> Result<Json<GeneratedValues>, ApiError> {
        let caller = self.state.authorize(&credentials, request, Scope::Full).await?;
        let values = self.state.agents.generated_values(&caller.user_id, &id).await?;
        Ok(Json(GeneratedValues { values: values.into_iter().map(|(name, value)| GeneratedValue { name, value }).collect() }))
    }

    /// Delete secret
    ///
    /// Scope required: full. Permanently removes a secret. The agent must be
    /// restarted for the change to take effect.
    #[oai(path = "/api/agents/:id/secrets/:key", method = "delete", operation_id = "deleteSecret")]
    async fn delete(
        &self,
        credentials: Credentials,
        request: &Request,
        id: Path<String>,
        key: Path<String>,
    ) -> Result<DeleteSecretResponse, ApiError> {
        let caller = self.state.authorize(&credentials, request, Scope::Full).await?;
        self.state.agents.delete_secret(&caller.user_id, &id, &key).await?;
        Ok(DeleteSecretResponse::Deleted)
    }
}
