use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

use super::ApiTags;

/// Unauthenticated endpoints of the control plane itself.
pub struct SystemApi;

#[derive(Object)]
pub struct Liveness {
    /// Always `ok` while the server serves requests.
    status: String,
    version: String,
}

#[OpenApi(tag = "ApiTags::System")]
impl SystemApi {
    /// Liveness of the control plane (extension)
    ///
    /// **Extension.** Needs no credentials. Returns 200 while the server
    /// accepts requests.
    #[oai(path = "/healthz", method = "get", operation_id = "getHealthz")]
    async fn healthz(&self) -> Json<Liveness> {
        Json(Liveness { status: "ok".into(), version: env!("CARGO_PKG_VERSION").into() })
    }
}
