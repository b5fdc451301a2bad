//! Runtime `runtime-egress-probe`, used by the test suite only.
//!
//! `create` sends `GET /` to the authority given as the task's image and
//! reports the outcome as its error, so a test can see whether the host let
//! the request through. Every other call fails.

wit_bindgen::generate!({ path: "../../../wit", world: "runtime" });

use agentstead::plugin::types::{PluginError, PluginInfo, PluginKind, StopSignal};
use exports::agentstead::plugin::plugin::Guest as Plugin;
use exports::agentstead::plugin::runtime_driver::{
    Guest as RuntimeDriver, RuntimeCapabilities, TaskMetrics, TaskSpec, TaskStatus,
};
use wasip2::http::outgoing_handler;
use wasip2::http::types::{Fields, Method, OutgoingBody, OutgoingRequest, Scheme};

struct EgressProbe;

impl Plugin for EgressProbe {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "runtime-egress-probe".into(),
            kind: PluginKind::Runtime,
            version: env!("CARGO_PKG_VERSION").into(),
            abi: "0.1.0".into(),
            description: "test runtime: sends one HTTP request and reports what happened".into(),
        }
    }
}

fn unsupported() -> PluginError {
    PluginError::Unavailable("runtime-egress-probe only probes the network in create".into())
}

impl RuntimeDriver for EgressProbe {
    fn capabilities() -> RuntimeCapabilities {
        RuntimeCapabilities { restart_in_place: false, metrics: false, host_processes: false }
    }

    fn create(spec: TaskSpec) -> Result<Vec<u8>, PluginError> {
        Err(probe(&spec.image))
    }

    fn start(_handle: Vec<u8>, _spec: TaskSpec) -> Result<Vec<u8>, PluginError> {
        Err(unsupported())
    }

    fn stop(_handle: Vec<u8>, _signal: StopSignal, _grace_ms: u32) -> Result<(), PluginError> {
        Ok(())
    }

    fn destroy(_handle: Vec<u8>) -> Result<(), PluginError> {
        Ok(())
    }

    fn inspect(_handle: Vec<u8>) -> Result<TaskStatus, PluginError> {
        Err(unsupported())
    }

    fn logs(_handle: Vec<u8>, _max_bytes: u32) -> Result<String, PluginError> {
        Err(unsupported())
    }

    fn metrics(_handle: Vec<u8>) -> Result<TaskMetrics, PluginError> {
        Err(unsupported())
    }

    fn pause(_handle: Vec<u8>, _paused: bool) -> Result<(), PluginError> {
        Err(unsupported())
    }
}

/// Sends `GET http://AUTHORITY/` and describes the outcome.
fn probe(authority: &str) -> PluginError {
    let request = OutgoingRequest::new(Fields::new());
    let built = request.set_method(&Method::Get).is_ok()
        && request.set_scheme(Some(&Scheme::Http)).is_ok()
        && request.set_authority(Some(authority)).is_ok()
        && request.set_path_with_query(Some("/")).is_ok();
    if !built {
        return PluginError::InvalidInput(format!("`{authority}` is not an HTTP authority"));
    }
    let Ok(body) = request.body() else {
        return PluginError::Other("no request body".into());
    };
    let pending = match outgoing_handler::handle(request, None) {
        Ok(pending) => pending,
        Err(error) => return PluginError::Unavailable(format!("request to {authority} failed: {error:?}")),
    };
    if let Err(error) = OutgoingBody::finish(body, None) {
        return PluginError::Unavailable(format!("request to {authority} failed: {error:?}"));
    }
    pending.subscribe().block();
    match pending.get() {
        Some(Ok(Ok(response))) => PluginError::Other(format!("request to {authority} answered HTTP {}", response.status())),
        Some(Ok(Err(error))) => PluginError::Unavailable(format!("request to {authority} failed: {error:?}")),
        _ => PluginError::Other(format!("request to {authority} lost its response")),
    }
}

export!(EgressProbe);
