//! A small HTTP/1.1 client for the Docker Engine API over `wasi:http`.
//!
//! Every request goes to the authority `docker`; the host connects it to the
//! engine endpoint the operator configured and rejects any other authority.

use wasip2::http::outgoing_handler;
use wasip2::http::types::{ErrorCode, Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, Scheme};
use wasip2::io::streams::StreamError;

use crate::PluginError;

/// The Engine API version the plugin speaks: Docker 20.10 and every later
/// engine serve it.
pub const API_VERSION: &str = "v1.41";
/// Bytes of a response body kept in memory; larger bodies are cut off.
const MAX_BODY: usize = 16 << 20;
/// Bytes written to an output stream per call.
const WRITE_CHUNK: usize = 4096;

pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json<T: serde::de::DeserializeOwned>(&self, request: &str) -> Result<T, PluginError> {
        serde_json::from_slice(&self.body).map_err(|error| {
            PluginError::Other(format!("the Docker Engine responded to {request} with a body this plugin cannot read: {error}"))
        })
    }

    /// Returns the engine's own error text, from `{"message": "..."}`.
    pub fn message(&self) -> String {
        #[derive(serde::Deserialize)]
        struct EngineError {
            message: String,
        }
        match serde_json::from_slice::<EngineError>(&self.body) {
            Ok(error) => error.message,
            Err(_) => String::from_utf8_lossy(&self.body).trim().chars().take(500).collect(),
        }
    }

    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

pub fn get(path: &str) -> Result<Response, PluginError> {
    send(Method::Get, path, None, &mut |_| {})
}

pub fn post(path: &str, body: Option<&serde_json::Value>) -> Result<Response, PluginError> {
    let bytes = body.map(|value| serde_json::to_vec(value).expect("JSON values serialize"));
    send(Method::Post, path, bytes.as_deref(), &mut |_| {})
}

pub fn delete(path: &str) -> Result<Response, PluginError> {
    send(Method::Delete, path, None, &mut |_| {})
}

/// Sends a POST whose response is a long stream, such as pull progress.
/// `on_chunk` receives the body as it arrives, and none of it is kept.
pub fn post_streaming(path: &str, on_chunk: &mut dyn FnMut(&[u8])) -> Result<u16, PluginError> {
    send_inner(Method::Post, path, None, on_chunk, false).map(|response| response.status)
}

fn send(method: Method, path: &str, body: Option<&[u8]>, on_chunk: &mut dyn FnMut(&[u8])) -> Result<Response, PluginError> {
    send_inner(method, path, body, on_chunk, true)
}

fn send_inner(
    method: Method,
    path: &str,
    body: Option<&[u8]>,
    on_chunk: &mut dyn FnMut(&[u8]),
    keep_body: bool,
) -> Result<Response, PluginError> {
    let path = format!("/{API_VERSION}{path}");
    let headers = Fields::new();
    let header_error = |error| PluginError::Other(format!("cannot set a request header: {error:?}"));
    if body.is_some() {
        headers.set("content-type", &[b"application/json".to_vec()]).map_err(header_error)?;
    }
    // An explicit length, also 0: the engine rejects a chunked empty body
    // on endpoints that take none, such as container start.
    let length = body.map_or(0, <[u8]>::len).to_string();
    headers.set("content-length", &[length.into_bytes()]).map_err(header_error)?;
    let request = OutgoingRequest::new(headers);
    let invalid = |part: &str| PluginError::Other(format!("cannot build the request to {path}: invalid {part}"));
    request.set_method(&method).map_err(|()| invalid("method"))?;
    request.set_scheme(Some(&Scheme::Http)).map_err(|()| invalid("scheme"))?;
    request.set_authority(Some("docker")).map_err(|()| invalid("authority"))?;
    request.set_path_with_query(Some(&path)).map_err(|()| invalid("path"))?;
    let outgoing_body = request.body().map_err(|()| invalid("body"))?;

    let pending = outgoing_handler::handle(request, None).map_err(|error| transport_error(&path, error))?;
    {
        let stream = outgoing_body.write().map_err(|()| invalid("body stream"))?;
        for chunk in body.unwrap_or_default().chunks(WRITE_CHUNK) {
            stream
                .blocking_write_and_flush(chunk)
                .map_err(|error| PluginError::Other(format!("cannot send the request body to {path}: {error:?}")))?;
        }
    }
    OutgoingBody::finish(outgoing_body, None).map_err(|error| transport_error(&path, error))?;

    pending.subscribe().block();
    let response = match pending.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(error))) => return Err(transport_error(&path, error)),
        Some(Err(())) | None => return Err(PluginError::Other(format!("the response to {path} was lost"))),
    };
    let status = response.status();
    let incoming = response.consume().map_err(|()| invalid("response body"))?;
    let mut body = Vec::new();
    {
        let stream = incoming.stream().map_err(|()| invalid("response stream"))?;
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => {
                    on_chunk(&chunk);
                    if keep_body && body.len() < MAX_BODY {
                        body.extend_from_slice(&chunk[..chunk.len().min(MAX_BODY - body.len())]);
                    }
                }
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(error)) => {
                    return Err(PluginError::Other(format!(
                        "the Docker Engine's response to {path} broke off: {}",
                        error.to_debug_string()
                    )));
                }
            }
        }
    }
    drop(IncomingBody::finish(incoming));
    Ok(Response { status, body })
}

/// Turns a transport failure into an error that names the fix.
fn transport_error(path: &str, error: ErrorCode) -> PluginError {
    match error {
        ErrorCode::HttpRequestDenied => PluginError::Unavailable(
            "the host rejected this plugin's request to the Docker Engine; the engine is granted as `docker` \
             through runtime.docker.endpoint"
                .into(),
        ),
        ErrorCode::ConnectionRefused | ErrorCode::DestinationNotFound | ErrorCode::DestinationUnavailable => {
            let reason = match error {
                ErrorCode::ConnectionRefused => "connection refused",
                ErrorCode::DestinationNotFound => "no such socket or host",
                _ => "destination unavailable",
            };
            PluginError::Unavailable(format!(
                "cannot reach the Docker Engine at runtime.docker.endpoint ({reason}; the server log names the \
                 endpoint); start dockerd, or set runtime.docker.endpoint to where it listens"
            ))
        }
        ErrorCode::ConnectionTimeout => PluginError::Unavailable(
            "connecting to the Docker Engine timed out; check that dockerd is running and runtime.docker.endpoint".into(),
        ),
        other => PluginError::Unavailable(format!("the request {path} to the Docker Engine failed: {other:?}")),
    }
}

/// Percent-encodes a query value.
pub fn encode(value: &str) -> String {
    let mut encoded = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// Splits the engine's multiplexed log stream (an 8-byte header per frame:
/// stream, three zero bytes, big-endian length) into plain text.
pub fn demultiplex(mut raw: &[u8]) -> Vec<u8> {
    let mut text = Vec::with_capacity(raw.len());
    while raw.len() >= 8 && raw[0] <= 2 && raw[1..4] == [0, 0, 0] {
        let length = u32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]) as usize;
        let end = (8 + length).min(raw.len());
        text.extend_from_slice(&raw[8..end]);
        raw = &raw[end..];
    }
    // A container with a terminal sends raw bytes without frame headers.
    text.extend_from_slice(raw);
    text
}
