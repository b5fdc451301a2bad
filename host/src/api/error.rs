//! The one error shape of the API, and the mapping from service errors to it.

use poem::http::StatusCode;
use poem_openapi::payload::Json;
use poem_openapi::types::ToJSON;
use poem_openapi::{ApiResponse, Object};

use crate::agents::{AgentError, BackupError};
use crate::auth::AuthError;
use crate::plugins::{GuestErrorMessage, PluginError};
use crate::schedules::ScheduleError;
use crate::secrets::SecretError;

/// Body of every error response.
#[derive(Debug, Clone, Object)]
#[oai(example)]
pub struct ErrorBody {
    /// Machine-readable error code, such as `not_found` or `insufficient_scope`.
    pub code: String,
    /// Description of the failure, naming the value at fault and how to fix it.
    pub message: String,
}

impl poem_openapi::types::Example for ErrorBody {
    fn example() -> ErrorBody {
        ErrorBody {
            code: "invalid_agent_type".into(),
            message: "unknown agentType `openclow`; accepted values: nullclaw, openclaw, openfang, zeroclaw".into(),
        }
    }
}

#[derive(Debug, ApiResponse)]
pub enum ApiError {
    /// The request is invalid; the message names the field or value.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// Credentials are missing, invalid, revoked or expired.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// The credentials lack the scope, or the operation needs a session.
    #[oai(status = 403)]
    Forbidden(Json<ErrorBody>),
    /// No such resource in the caller's account.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// The resource is busy with another operation, or a quota (backup
    /// bytes, secrets per agent) is used up; the message names what to free.
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>),
    /// The request body is larger than the server accepts.
    #[oai(status = 413)]
    PayloadTooLarge(Json<ErrorBody>),
    /// An unexpected server error; the server log has the details.
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
    /// A plugin failed: it trapped, ran out of memory or returned an error.
    #[oai(status = 502)]
    BadGateway(Json<ErrorBody>),
    /// A resource the operation needs is missing or exhausted.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
    /// A plugin did not finish in time.
    #[oai(status = 504)]
    GatewayTimeout(Json<ErrorBody>),
}

fn body(code: &str, message: impl Into<String>) -> Json<ErrorBody> {
    Json(ErrorBody { code: code.into(), message: message.into() })
}

impl ApiError {
    pub fn bad_request(code: &str, message: impl Into<String>) -> ApiError {
        ApiError::BadRequest(body(code, message))
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::NotFound(body("not_found", message))
    }

    pub fn conflict(code: &str, message: impl Into<String>) -> ApiError {
        ApiError::Conflict(body(code, message))
    }

    pub fn internal(error: &dyn std::fmt::Display) -> ApiError {
        tracing::error!(%error, "internal error");
        ApiError::Internal(body("internal", "internal server error; the server log has the details"))
    }

    /// Builds an error for a status the framework produced, with a generic code.
    pub fn from_status(status: StatusCode, message: &str) -> ApiError {
        match status {
            StatusCode::BAD_REQUEST => ApiError::BadRequest(body("invalid_request", message)),
            StatusCode::UNAUTHORIZED => ApiError::Unauthorized(body(
                "unauthorized",
                "authentication required: send `Authorization: Bearer <token>` or log in with POST /api/auth/login",
            )),
            StatusCode::FORBIDDEN => ApiError::Forbidden(body("forbidden", message)),
            StatusCode::NOT_FOUND => ApiError::NotFound(body("not_found", message)),
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(body("payload_too_large", message)),
            // 405 and 415 have no variant of their own; 400 keeps the shape
            // and the message names the problem.
            status if status.is_client_error() => {
                ApiError::BadRequest(body("invalid_request", format!("{message} (HTTP {})", status.as_u16())))
            }
            _ => ApiError::internal(&message),
        }
    }
}

/// An error response for a status the API's operations never return, such
/// as 405, in the same JSON shape.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> poem::Response {
    let body = serde_json::to_string(&ErrorBody { code: code.into(), message: message.into() }.to_json())
        .unwrap_or_default();
    poem::Response::builder().status(status).content_type("application/json; charset=utf-8").body(body)
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        let message = error.to_string();
        match error {
            AuthError::Missing | AuthError::InvalidSession => ApiError::Unauthorized(body("unauthorized", message)),
            AuthError::InvalidToken => ApiError::Unauthorized(body("invalid_token", message)),
            AuthError::InvalidCredentials => ApiError::Unauthorized(body("invalid_credentials", message)),
            AuthError::InsufficientScope { .. } => ApiError::Forbidden(body("insufficient_scope", message)),
            AuthError::SessionRequired => ApiError::Forbidden(body("session_required", message)),
            AuthError::CrossSite => ApiError::Forbidden(body("cross_site_request", message)),
            AuthError::Store(_) | AuthError::Hash(_) => ApiError::internal(&error),
        }
    }
}

impl From<AgentError> for ApiError {
    fn from(error: AgentError) -> Self {
        let message = error.to_string();
        match error {
            AgentError::NotFound(_) => ApiError::not_found(message),
            AgentError::InvalidAgentType { .. } => ApiError::bad_request("invalid_agent_type", message),
            AgentError::InvalidRegion { .. } => ApiError::bad_request("invalid_region", message),
            AgentError::InvalidName(_) => ApiError::bad_request("invalid_name", message),
            AgentError::Busy { .. } => ApiError::conflict("agent_busy", message),
            AgentError::NoPortsLeft { .. } => ApiError::Unavailable(body("no_ports_left", message)),
            AgentError::InvalidPlan(_) | AgentError::Startup(_) => ApiError::BadGateway(body("plugin_failed", message)),
            AgentError::Plugin(plugin) => plugin.into(),
            AgentError::ReservedSecret { .. } => ApiError::bad_request("reserved_secret_key", message),
            AgentError::TooManySecrets { .. } => ApiError::conflict("too_many_secrets", message),
            AgentError::SecretNotFound { .. } => ApiError::not_found(message),
            AgentError::Secret(SecretError::InvalidKey { .. }) => ApiError::bad_request("invalid_secret_key", message),
            AgentError::Secret(SecretError::InvalidValue { .. }) => ApiError::bad_request("invalid_secret_value", message),
            AgentError::Secret(SecretError::Decrypt { .. }) => {
                tracing::error!(%message, "secret cannot be decrypted");
                ApiError::Internal(body("secret_undecryptable", message))
            }
            AgentError::Secret(_) => ApiError::internal(&error),
            AgentError::Backup(BackupError::NotFound(_)) => ApiError::not_found(message),
            AgentError::Backup(BackupError::Quota { .. }) => ApiError::conflict("quota_exceeded", message),
            AgentError::Backup(BackupError::Rejected(_)) => ApiError::bad_request("archive_rejected", message),
            AgentError::Backup(BackupError::BadLink) => ApiError::Forbidden(body("invalid_download_link", message)),
            AgentError::Backup(BackupError::Storage(_)) => {
                tracing::error!(%message, "backup store failed");
                ApiError::BadGateway(body("backup_storage_failed", message))
            }
            AgentError::Workspace(_) => ApiError::Internal(body("workspace_unavailable", message)),
            AgentError::Store(_) | AgentError::Io { .. } => ApiError::internal(&error),
        }
    }
}

impl From<ScheduleError> for ApiError {
    fn from(error: ScheduleError) -> Self {
        let message = error.to_string();
        match error {
            ScheduleError::InvalidCron(_) => ApiError::bad_request("invalid_cron", message),
            ScheduleError::InvalidName(_) => ApiError::bad_request("invalid_name", message),
            ScheduleError::NotFound(_) => ApiError::not_found(message),
            ScheduleError::Agent(agent) => agent.into(),
            ScheduleError::Scheduler(_) | ScheduleError::Store(_) => ApiError::internal(&error),
        }
    }
}

impl From<PluginError> for ApiError {
    fn from(error: PluginError) -> Self {
        let message = error.to_string();
        match &error {
            PluginError::TimedOut { .. } => ApiError::GatewayTimeout(body("plugin_timeout", message)),
            PluginError::MemoryExhausted { .. } => ApiError::BadGateway(body("plugin_out_of_memory", message)),
            PluginError::Trapped { .. } => ApiError::BadGateway(body("plugin_trapped", message)),
            PluginError::Returned { error: GuestErrorMessage::InvalidInput(_), .. } => {
                ApiError::bad_request("invalid_request", message)
            }
            PluginError::Returned { error: GuestErrorMessage::Unavailable(_), .. } => {
                ApiError::Unavailable(body("plugin_unavailable", message))
            }
            PluginError::Returned { error: GuestErrorMessage::Conflict(_), .. } => ApiError::conflict("plugin_conflict", message),
            PluginError::Returned { .. } => ApiError::BadGateway(body("plugin_failed", message)),
            PluginError::NotLoaded(_) | PluginError::Load { .. } => ApiError::Unavailable(body("plugin_missing", message)),
        }
    }
}
