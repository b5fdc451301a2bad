use std::sync::Arc;

use poem::Request;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::sensitive::Sensitive;
use super::{ApiError, ApiState, ApiTags, Credentials};
use crate::auth::SESSION_COOKIE;

/// Login sessions (extension): the session cookie is what creating and
/// revoking tokens requires.
pub struct SessionApi {
    pub state: Arc<ApiState>,
}

#[derive(Object)]
#[oai(deny_unknown_fields)]
pub struct LoginRequest {
    #[oai(validator(max_length = 320))]
    email: String,
    #[oai(write_only)]
    password: Sensitive,
}

#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct SessionUser {
    /// The user's id, such as `usr_…`.
    user_id: String,
    email: String,
}

#[derive(ApiResponse)]
enum LoginResponse {
    /// Logged in; `Set-Cookie` carries the HttpOnly, SameSite=Strict session cookie.
    #[oai(status = 200)]
    Ok(Json<SessionUser>, #[oai(header = "Set-Cookie")] String),
}

#[derive(ApiResponse)]
enum LogoutResponse {
    /// Logged out; the session is deleted and the cookie cleared.
    #[oai(status = 204)]
    Done(#[oai(header = "Set-Cookie")] String),
}

impl SessionApi {
    fn cookie(&self, value: &str, max_age_secs: i64) -> String {
        let secure = if self.state.secure_cookie { "; Secure" } else { "" };
        format!("{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_secs}{secure}")
    }
}

#[OpenApi(tag = "ApiTags::Session")]
impl SessionApi {
    /// Log in (extension)
    ///
    /// **Extension.** Checks the email and password and sets the session
    /// cookie. A wrong email and a wrong password get the same 401.
    #[oai(path = "/api/auth/login", method = "post", operation_id = "login")]
    async fn login(&self, body: Json<LoginRequest>) -> Result<LoginResponse, ApiError> {
        let (cookie, user_id) = self.state.auth.login(&body.email, body.password.expose()).await?;
        tracing::info!(user_id, "user logged in");
        let cookie = self.cookie(&cookie, self.state.auth.session_ttl_secs());
        Ok(LoginResponse::Ok(Json(SessionUser { user_id, email: body.0.email.to_lowercase() }), cookie))
    }

    /// Log out (extension)
    ///
    /// **Extension.** Ends the current session. Needs the session cookie.
    #[oai(path = "/api/auth/logout", method = "post", operation_id = "logout")]
    async fn logout(&self, credentials: Credentials, request: &Request) -> Result<LogoutResponse, ApiError> {
        let caller = self.state.authenticate_any(&credentials, request).await?;
        caller.require_session()?;
        self.state.auth.logout(&caller).await?;
        Ok(LogoutResponse::Done(self.cookie("", 0)))
    }
}
