//! The REST API: translates HTTP to calls on the services and back.
//!
//! Every error leaves as `{"code": "...", "message": "..."}` with a
//! machine-readable code; [`json_errors`] converts the framework's own errors
//! (unknown route, malformed body, missing credentials) into the same shape.

mod agents;
mod backups;
mod document;
mod error;
mod schedules;
mod secrets;
mod sensitive;
mod session;
mod system;
mod timestamp;
mod tokens;

use std::sync::Arc;

use poem::http::StatusCode;
use poem::{Endpoint, IntoResponse, Request, Response};
use poem_openapi::auth::{ApiKey, Bearer};
use poem_openapi::{OpenApiService, SecurityScheme, Tags};

pub use document::{
    ApiDocument, BodyError, DocumentFormat, Published, check_request, document_endpoint, json_media, json_schema, swagger_ui,
};
pub use error::{ApiError, ErrorBody};
pub use timestamp::Timestamp;

use crate::agents::AgentService;
use crate::auth::{AuthError, AuthService, Caller, Scope};
use crate::schedules::ScheduleService;

/// Services the API calls into.
pub struct ApiState {
    pub auth: Arc<AuthService>,
    pub agents: Arc<AgentService>,
    pub schedules: Arc<ScheduleService>,
    pub secure_cookie: bool,
    /// Origin of backup download links; `None` uses the request's `Host`.
    pub download_base_url: Option<String>,
}

#[derive(Tags)]
pub enum ApiTags {
    /// Deploy agents and control their lifecycle.
    Agents,
    /// Values injected into an agent's environment; write-only.
    Secrets,
    /// Workspace backups, downloads and restores.
    Backups,
    /// Cron schedules that back up or restart an agent.
    Schedules,
    /// Personal access tokens for scripts and CI.
    Tokens,
    /// Log in and out with a session cookie (extension).
    Session,
    /// The control plane itself.
    System,
}

/// A personal access token: `Authorization: Bearer ast_…`.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", bearer_format = "ast_<43 alphanumerics>")]
pub struct TokenAuth(Bearer);

/// The session cookie set by `POST /api/auth/login`.
#[derive(SecurityScheme)]
#[oai(ty = "api_key", key_name = "agentstead_session", key_in = "cookie")]
pub struct SessionAuth(ApiKey);

/// A token or a session; the first one present is used.
#[derive(SecurityScheme)]
pub enum Credentials {
    Token(TokenAuth),
    Session(SessionAuth),
}

impl ApiState {
    /// Authenticates the caller with any scope. Cookie-authenticated writes
    /// must also come from the same origin.
    pub async fn authenticate_any(&self, credentials: &Credentials, request: &Request) -> Result<Caller, ApiError> {
        match credentials {
            Credentials::Token(TokenAuth(bearer)) => Ok(self.auth.authenticate_token(&bearer.token).await?),
            Credentials::Session(SessionAuth(cookie)) => {
                let caller = self.auth.authenticate_session(&cookie.key).await?;
                check_same_origin(request)?;
                Ok(caller)
            }
        }
    }

    /// Authenticates the caller and checks `scope`.
    pub async fn authorize(&self, credentials: &Credentials, request: &Request, scope: Scope) -> Result<Caller, ApiError> {
        let caller = self.authenticate_any(credentials, request).await?;
        caller.require(scope)?;
        Ok(caller)
    }
}

/// Rejects a cookie-authenticated request that a browser sent from another
/// site, whatever its method. Requests without `Origin` and `Sec-Fetch-Site`,
/// such as curl's, pass: the SameSite=Strict cookie is what keeps browsers
/// out in that case.
fn check_same_origin(request: &Request) -> Result<(), AuthError> {
    let header = |name: &str| request.headers().get(name).and_then(|value| value.to_str().ok());
    if let Some(site) = header("sec-fetch-site") {
        if site != "same-origin" && site != "none" {
            return Err(AuthError::CrossSite);
        }
    }
    if let Some(origin) = header("origin") {
        let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
        if header("host") != Some(origin_host) {
            return Err(AuthError::CrossSite);
        }
    }
    Ok(())
}

/// Builds the OpenAPI service with every operation of the API.
pub fn service(state: Arc<ApiState>) -> OpenApiService<impl poem_openapi::OpenApi, ()> {
    let apis = (
        agents::AgentsApi { state: Arc::clone(&state) },
        secrets::SecretsApi { state: Arc::clone(&state) },
        backups::BackupsApi { state: Arc::clone(&state) },
        schedules::SchedulesApi { state: Arc::clone(&state) },
        tokens::TokensApi { state: Arc::clone(&state) },
        session::SessionApi { state: Arc::clone(&state) },
        system::SystemApi,
    );
    OpenApiService::new(apis, "AgentStead API", env!("CARGO_PKG_VERSION"))
        .description(
            "Self-hosted control plane for AI agents. Authenticate with a personal access token \
             (`Authorization: Bearer ast_…`) or the session cookie from `POST /api/auth/login`. \
             Scopes: `read`, `deploy`, `full`; `full` implies the others. Errors are JSON objects \
             with a machine-readable `code` and a human-readable `message`. Operations, fields and \
             parameters marked **Extension** go beyond the public AgentStead API reference.",
        )
        // Relative, so that the document is right behind a proxy and on any
        // listen address: clients resolve it against where they fetched it.
        .server("/")
}

/// Middleware that gives every error response the JSON error shape.
pub async fn json_errors<E: Endpoint>(next: E, request: Request) -> poem::Result<Response> {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    match next.call(request).await {
        Ok(response) => Ok(response.into_response()),
        Err(error) if error.is_from_response() => Ok(error.into_response()),
        Err(error) => {
            let status = error.status();
            let message = match status {
                StatusCode::NOT_FOUND => format!("no route matches {method} {path}"),
                StatusCode::METHOD_NOT_ALLOWED => format!("{method} is not allowed on {path}"),
                StatusCode::PAYLOAD_TOO_LARGE => "the request body is too large".to_string(),
                StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                    format!("{method} {path} takes a JSON body; send it with `Content-Type: application/json`")
                }
                _ => error.to_string(),
            };
            if status.is_server_error() {
                tracing::error!(%method, %path, %status, error = %error, "request failed");
            }
            Ok(ApiError::from_status(status, &message).into_response())
        }
    }
}
