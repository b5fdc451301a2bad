//! Outgoing HTTP for runtime plugins.
//!
//! A plugin addresses an engine by a fixed authority, such as
//! `http://docker/v1.41/containers/json`. The host looks the authority up in
//! the routes the operator granted to that plugin and connects the request to
//! the configured endpoint, a unix socket or a TCP address. A request to any
//! other authority fails with `HTTP-request-denied` before a connection is
//! made, so a plugin reaches nothing it was not given.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

/// Time allowed to connect to an endpoint when the plugin sets no limit.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Destination of a granted authority's requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    /// `host:port`, spoken to in plain HTTP.
    Tcp(String),
}

impl Endpoint {
    /// Parses `unix:///PATH` or `tcp://HOST:PORT`.
    pub fn parse(text: &str) -> Result<Endpoint, String> {
        if let Some(path) = text.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(format!("`{text}` needs an absolute socket path, such as unix:///var/run/docker.sock"));
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        if let Some(address) = text.strip_prefix("tcp://") {
            let address = address.trim_end_matches('/');
            let valid = address
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok_and(|p| p != 0));
            if !valid {
                return Err(format!("`{text}` needs a host and port, such as tcp://127.0.0.1:2375"));
            }
            return Ok(Endpoint::Tcp(address.to_string()));
        }
        Err(format!("`{text}` is neither unix:///PATH nor tcp://HOST:PORT"))
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "unix://{}", path.display()),
            Endpoint::Tcp(address) => write!(f, "tcp://{address}"),
        }
    }
}

/// The authorities one plugin may address, each with its endpoint.
#[derive(Debug, Clone, Default)]
pub struct EgressGrant {
    routes: Arc<BTreeMap<String, Endpoint>>,
}

impl EgressGrant {
    pub fn new(routes: BTreeMap<String, Endpoint>) -> EgressGrant {
        EgressGrant { routes: Arc::new(routes) }
    }

    fn route(&self, authority: &str) -> Option<&Endpoint> {
        self.routes.get(authority)
    }
}

/// The `wasi:http` hooks of one plugin call.
pub struct EgressHooks {
    plugin: Arc<str>,
    grant: EgressGrant,
}

impl EgressHooks {
    pub fn new(plugin: Arc<str>, grant: EgressGrant) -> EgressHooks {
        EgressHooks { plugin, grant }
    }
}

type ResponseFuture = Box<
    dyn Future<Output = Result<(http::Response<WasiBody>, Box<dyn Future<Output = Result<(), Error>> + Send>), Error>>
        + Send,
>;

impl WasiHttpHooks for EgressHooks {
    fn default_scheme(&mut self) -> Option<http::uri::Scheme> {
        Some(http::uri::Scheme::HTTP)
    }

    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _response_errors: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> ResponseFuture {
        let host = request.uri().host().unwrap_or_default().to_string();
        let endpoint = self.grant.route(&host).cloned();
        let plugin = Arc::clone(&self.plugin);
        Box::new(async move {
            let Some(endpoint) = endpoint else {
                tracing::warn!(plugin = %plugin, destination = %host, uri = %request.uri(), "plugin request rejected: destination not granted to the plugin");
                return Err(Error::HttpRequestDenied);
            };
            tracing::debug!(plugin = %plugin, method = %request.method(), path = request.uri().path(), %endpoint, "plugin request");
            let result = send(&endpoint, request, options).await;
            if let Err(error) = &result {
                tracing::warn!(plugin = %plugin, destination = %host, %endpoint, %error, "plugin request to a granted endpoint failed");
            }
            result
        })
    }
}

async fn send(
    endpoint: &Endpoint,
    mut request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
) -> Result<(http::Response<WasiBody>, Box<dyn Future<Output = Result<(), Error>> + Send>), Error> {
    let connect_timeout = options.and_then(|o| o.connect_timeout).unwrap_or(CONNECT_TIMEOUT);
    let connect = async {
        match endpoint {
            Endpoint::Unix(path) => handshake(tokio::net::UnixStream::connect(path).await?).await,
            Endpoint::Tcp(address) => handshake(tokio::net::TcpStream::connect(address.as_str()).await?).await,
        }
    };
    let mut sender = match tokio::time::timeout(connect_timeout, connect).await {
        Err(_) => return Err(Error::ConnectionTimeout),
        Ok(Err(ConnectError::Io(error))) if error.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Err(Error::ConnectionRefused);
        }
        Ok(Err(ConnectError::Io(error))) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::DestinationNotFound);
        }
        Ok(Err(ConnectError::Io(error))) => return Err(Error::Connect(error)),
        Ok(Err(ConnectError::Hyper(error))) => return Err(Error::Hyper(error)),
        Ok(Ok(sender)) => sender,
    };

    // The request line carries only the path; the authority stays in `Host`.
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str()).to_string();
    *request.uri_mut() = http::Uri::builder().path_and_query(path).build().map_err(|_| Error::HttpRequestUriInvalid)?;

    let response = match options.and_then(|o| o.first_byte_timeout) {
        Some(limit) => tokio::time::timeout(limit, sender.send_request(request))
            .await
            .map_err(|_| Error::ConnectionReadTimeout)??,
        None => sender.send_request(request).await?,
    };
    let response = response.map(|body| body.map_err(Error::from).boxed_unsync());
    Ok((response, Box::new(async { Ok(()) })))
}

enum ConnectError {
    Io(std::io::Error),
    Hyper(hyper::Error),
}

impl From<std::io::Error> for ConnectError {
    fn from(error: std::io::Error) -> Self {
        ConnectError::Io(error)
    }
}

/// Opens an HTTP/1.1 connection on `stream` and drives it on its own task,
/// which ends when the response body is read or dropped.
async fn handshake<S>(stream: S) -> Result<hyper::client::conn::http1::SendRequest<WasiBody>, ConnectError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(ConnectError::Hyper)?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "plugin HTTP connection ended with an error");
        }
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(Endpoint::parse("unix:///var/run/docker.sock"), Ok(Endpoint::Unix("/var/run/docker.sock".into())));
        assert_eq!(Endpoint::parse("tcp://127.0.0.1:2375"), Ok(Endpoint::Tcp("127.0.0.1:2375".into())));
        for bad in ["unix://relative.sock", "tcp://127.0.0.1", "tcp://:80", "https://x:1", "http://x:1", "/var/run/docker.sock"] {
            assert!(Endpoint::parse(bad).is_err(), "{bad} parsed");
        }
    }
}
