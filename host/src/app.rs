//! Assembles the services, builds the HTTP router and serves it.
//!
//! [`App::open`] does every check that can fail before the port is bound:
//! the data directory, the database, the host key, the plugins and the
//! regions' runtimes. [`App::router`] is separate from [`App::serve`], so
//! tests drive the real router in process.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use poem::http::StatusCode;
use poem::listener::{Acceptor, Listener, TcpListener};
use poem::middleware::CatchPanic;
use poem::{Body, Endpoint, EndpointExt, Request, Route, Server};

use crate::agents::AgentService;
use crate::api::{self, ApiError, ApiState};
use crate::auth::AuthService;
use crate::config::Config;
use crate::hostkey::HostKey;
use crate::plugins::egress::Endpoint as PluginEndpoint;
use crate::plugins::{EgressGrant, HostOptions, Limits, LoadedPlugin, PluginHost, PluginKind, Policy, ProcessSupervisor};
use crate::blobs::BlobStore;
use crate::schedules::ScheduleService;
use crate::secrets::Keyring;
use crate::store::Store;

/// Largest oversized body read and discarded before the 413 is sent, beyond
/// the configured limit.
const DRAIN_EXTRA_BYTES: usize = 16 * 1024 * 1024;
/// Time in-flight requests get to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

pub struct App {
    pub config: Arc<Config>,
    pub store: Store,
    pub auth: Arc<AuthService>,
    pub agents: Arc<AgentService>,
    pub plugins: Arc<PluginHost>,
    pub schedules: Arc<ScheduleService>,
}

/// Creates the data directory with mode 0700 and opens the database in it.
pub async fn open_store(config: &Config) -> anyhow::Result<Store> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&config.data_dir)
        .with_context(|| format!("cannot create the data directory {}; set --data-dir or AGENTSTEAD_DATA_DIR", config.data_dir.display()))?;
    let path = config.database_path();
    Store::open_sqlite(&path).await.with_context(|| format!("cannot open the database {}", path.display()))
}

/// Returns the policy of every plugin the configuration names. The built-in
/// runtimes get their defaults: `runtime-process` may start
/// `runtime.process.allowed_programs`, and `runtime-docker` may reach the
/// configured engine as `docker`. `[plugins.policy.NAME]` overrides both.
pub fn plugin_policies(config: &Config) -> anyhow::Result<BTreeMap<String, Policy>> {
    let defaults = default_limits(config);
    let engine = PluginEndpoint::parse(&config.runtime.docker.endpoint)
        .map_err(|reason| anyhow::anyhow!("runtime.docker.endpoint: {reason}"))?;
    let mut policies = BTreeMap::from([
        (
            PROCESS_PLUGIN.to_string(),
            Policy { programs: Arc::from(config.runtime.process.allowed_programs.clone()), ..Policy::confined(defaults) },
        ),
        (
            DOCKER_PLUGIN.to_string(),
            Policy {
                egress: EgressGrant::new(BTreeMap::from([("docker".to_string(), engine)])),
                ..Policy::confined(defaults)
            },
        ),
    ]);
    for (name, settings) in &config.plugins.policy {
        let policy = policies.entry(name.clone()).or_insert_with(|| Policy::confined(defaults));
        if let Some(mib) = settings.memory_limit_mib {
            policy.limits.memory_limit_mib = mib;
        }
        if let Some(ms) = settings.call_timeout_ms {
            policy.limits.call_timeout = Duration::from_millis(ms);
        }
        if let Some(programs) = &settings.programs {
            policy.programs = Arc::from(programs.clone());
        }
        if let Some(endpoints) = &settings.endpoints {
            let mut routes = BTreeMap::new();
            for (authority, endpoint) in endpoints {
                let endpoint = PluginEndpoint::parse(endpoint)
                    .map_err(|reason| anyhow::anyhow!("plugins.policy.{name}.endpoints.{authority}: {reason}"))?;
                routes.insert(authority.clone(), endpoint);
            }
            policy.egress = EgressGrant::new(routes);
        }
    }
    Ok(policies)
}

/// Returns the limits of `[plugins]`, which apply to every plugin without a policy of its own.
fn default_limits(config: &Config) -> Limits {
    Limits {
        memory_limit_mib: config.plugins.memory_limit_mib,
        call_timeout: Duration::from_millis(config.plugins.call_timeout_ms),
    }
}

/// Loads the built-in plugins and those of `plugins.dir` with the
/// configured limits and grants. With `cache`, compiled code is kept in the
/// data directory and reused; without it nothing is written.
pub async fn load_plugins(config: &Config, cache: bool) -> anyhow::Result<PluginHost> {
    let options = HostOptions {
        limits: default_limits(config),
        policies: plugin_policies(config)?,
        plugin_dir: config.plugins.dir.clone(),
        cache_dir: cache.then(|| config.plugin_cache_dir()),
    };
    let supervisor = Arc::new(ProcessSupervisor::new(&config.runtime.process));
    Ok(PluginHost::new(options, supervisor).await?)
}

/// Reloads the plugins on every SIGHUP until shutdown. A reload that fails,
/// or that would lose a plugin the configuration names, keeps the old set.
async fn reload_on_hangup(plugins: Arc<PluginHost>, config: Arc<Config>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP; plugins reload only with a restart");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = hangups.recv() => {}
            _ = shutdown.changed() => return,
        }
        tracing::info!("SIGHUP: reloading plugins");
        match plugins.reload(|loaded| check_plugin_references(&config, loaded)).await {
            Ok(()) => tracing::info!("plugins reloaded"),
            Err(error) => tracing::error!(%error, "plugin reload failed; the loaded plugins stay in use"),
        }
    }
}

/// Checks that every plugin the configuration names is loaded and of the
/// right kind: each region's runtime and the backup plugin.
pub fn check_plugin_references(config: &Config, plugins: &BTreeMap<String, Arc<LoadedPlugin>>) -> Result<(), String> {
    for (name, region) in &config.regions {
        match plugins.get(&region.runtime) {
            None => return Err(format!("region `{name}` names runtime `{}`, which is not loaded", region.runtime)),
            Some(plugin) if plugin.info.kind != PluginKind::Runtime => {
                return Err(format!("region `{name}` names `{}`, which is not a runtime plugin", region.runtime));
            }
            Some(_) => {}
        }
    }
    match plugins.get(&config.backups.plugin) {
        None => Err(format!("backups.plugin names `{}`, which is not loaded", config.backups.plugin)),
        Some(plugin) if plugin.info.kind != PluginKind::Storage => {
            Err(format!("backups.plugin names `{}`, which is not a storage plugin", config.backups.plugin))
        }
        Some(_) => Ok(()),
    }
}

/// Name of the process runtime plugin, which `[runtime.process]` configures.
pub const PROCESS_PLUGIN: &str = "runtime-process";
/// Name of the Docker runtime plugin, which the `[runtime.docker]` settings configure.
pub const DOCKER_PLUGIN: &str = "runtime-docker";

impl App {
    pub async fn open(config: Config) -> anyhow::Result<App> {
        config.validate()?;
        let config = Arc::new(config);
        let store = open_store(&config).await?;

        // Plugins load before any key is created, so that a server that
        // cannot start leaves no new secret behind.
        let plugins = Arc::new(load_plugins(&config, true).await?);
        let loaded = plugins.by_name();
        check_plugin_references(&config, &loaded).map_err(anyhow::Error::msg)?;
        for (name, policy) in &config.plugins.policy {
            let grants = policy.programs.is_some() || policy.endpoints.is_some();
            match loaded.get(name) {
                None => tracing::warn!(plugin = %name, "plugins.policy names a plugin that is not loaded; check the name with `agentstead plugin list`"),
                Some(plugin) if grants && plugin.info.kind != PluginKind::Runtime => tracing::warn!(
                    plugin = %name,
                    "plugins.policy grants programs or endpoints to a plugin that is not a runtime; only runtime plugins can use them"
                ),
                Some(_) => {}
            }
        }

        let host_key = Arc::new(HostKey::load_or_create(&config.data_dir.join("host.key"))?);
        let keyring = Arc::new(Keyring::open(config.key_source())?);
        let blobs = Arc::new(BlobStore::open(
            config.backups.store_url.as_deref(),
            &config.backups.store_options,
            &config.data_dir.join("blobs"),
        )?);

        let auth = Arc::new(AuthService::new(store.clone(), config.auth.session_ttl_hours)?);
        let agents =
            Arc::new(AgentService::new(store.clone(), Arc::clone(&config), Arc::clone(&plugins), host_key, keyring, blobs));
        agents.clean_up_backups().await.context("cannot clean up unfinished backups")?;
        let schedules = ScheduleService::start(store.clone(), Arc::clone(&agents)).await?;
        Ok(App { config, store, auth, agents, plugins, schedules })
    }

    /// Builds the complete HTTP application: the API, its OpenAPI documents and Swagger UI.
    pub fn router(&self) -> impl Endpoint + 'static {
        let state = Arc::new(ApiState {
            auth: Arc::clone(&self.auth),
            agents: Arc::clone(&self.agents),
            schedules: Arc::clone(&self.schedules),
            secure_cookie: self.config.auth.secure_cookie,
            download_base_url: self.config.backups.download_base_url.clone(),
        });
        let max_body = self.config.max_body_kib as usize * 1024;
        let service = api::service(state);
        let generated = service.spec();
        let document = Arc::new(api::ApiDocument::new(&generated));
        let published: Arc<dyn Fn() -> serde_json::Value + Send + Sync> = {
            let document = Arc::clone(&document);
            let plugins = Arc::clone(&self.plugins);
            let regions: Vec<String> = self.config.regions.keys().cloned().collect();
            Arc::new(move || document.published(&plugins.agent_types(), &regions))
        };
        let page = service.swagger_ui_html();
        Route::new()
            .at("/openapi.json", poem::get(api::document_endpoint(Arc::clone(&published), api::DocumentFormat::Json)))
            .at("/openapi.yaml", poem::get(api::document_endpoint(Arc::clone(&published), api::DocumentFormat::Yaml)))
            .at("/docs", poem::get(api::swagger_ui(&page, &generated, Arc::clone(&published))))
            .at("/docs/", poem::get(api::swagger_ui(&page, &generated, published)))
            .nest("/", service)
            .around(move |next, request| api::check_request(next, request, Arc::clone(&document)))
            .around(move |next, request| limit_body(next, request, max_body))
            .with(CatchPanic::new().with_handler(|_panic| {
                // The panic itself is already on stderr through the panic hook.
                ApiError::internal(&"a request handler panicked")
            }))
            .around(api::json_errors)
            .around(log_request)
    }

    /// Starts the background loops and serves until SIGINT or SIGTERM.
    pub async fn serve(self, listen: SocketAddr) -> anyhow::Result<()> {
        let acceptor = TcpListener::bind(listen)
            .into_acceptor()
            .await
            .with_context(|| format!("cannot listen on {listen}; choose another address with --listen or AGENTSTEAD_LISTEN"))?;
        let local = acceptor.local_addr().first().and_then(|addr| addr.as_socket_addr().copied()).unwrap_or(listen);
        let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
        self.spawn_background(shutdown_rx);

        tracing::info!(address = %local, data_dir = %self.config.data_dir.display(), "AgentStead listening; API docs at http://{local}/docs");
        let router = self.router();
        let result = Server::new_with_acceptor(acceptor)
            .run_with_graceful_shutdown(router, shutdown_signal(), Some(SHUTDOWN_GRACE))
            .await;
        let _ = shutdown_tx.send(true);

        if let Err(error) = self.auth.flush_token_uses().await {
            tracing::warn!(%error, "failed to write token use times at shutdown");
        }
        tracing::info!("AgentStead stopped; agents keep running and are adopted at the next start");
        result.context("the HTTP server failed")
    }

    fn spawn_background(&self, shutdown: tokio::sync::watch::Receiver<bool>) {
        tokio::spawn(Arc::clone(&self.agents).reconcile_loop(shutdown.clone()));
        tokio::spawn(reload_on_hangup(Arc::clone(&self.plugins), Arc::clone(&self.config), shutdown.clone()));

        let auth = Arc::clone(&self.auth);
        let store = self.store.clone();
        let flush_every = Duration::from_secs(self.config.auth.last_used_flush_secs.max(1));
        let mut shutdown = shutdown;
        tokio::spawn(async move {
            let mut ticks: u64 = 0;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(flush_every) => {}
                    _ = shutdown.changed() => return,
                }
                if let Err(error) = auth.flush_token_uses().await {
                    tracing::warn!(%error, "failed to write token use times; retrying later");
                }
                ticks += 1;
                if ticks % 120 == 0 {
                    match store.delete_expired_sessions().await {
                        Ok(0) => {}
                        Ok(count) => tracing::info!(count, "deleted expired sessions"),
                        Err(error) => tracing::warn!(%error, "failed to delete expired sessions"),
                    }
                }
            }
        });
    }
}

/// Rejects bodies over `limit` bytes with 413, whether or not the client
/// declared their length.
async fn limit_body<E: Endpoint>(next: E, mut request: Request, limit: usize) -> poem::Result<poem::Response> {
    use poem::IntoResponse;
    let too_large = || {
        let message = format!(
            "the request body exceeds {} KiB; send less, or raise max_body_kib in the server configuration",
            limit / 1024
        );
        Ok(ApiError::from_status(StatusCode::PAYLOAD_TOO_LARGE, &message).into_response())
    };
    let declared = request
        .headers()
        .get(poem::http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<usize>().ok());
    match declared {
        Some(length) if length > limit => {
            // Reading a moderately oversized body before the response lets
            // the client finish sending and see the 413 instead of a reset
            // connection. A huge body is cut off at once.
            if length <= limit + DRAIN_EXTRA_BYTES {
                let _ = request.take_body().into_bytes_limit(limit + DRAIN_EXTRA_BYTES).await;
            }
            return too_large();
        }
        Some(_) => {}
        None if request.headers().contains_key(poem::http::header::TRANSFER_ENCODING) => {
            use futures::StreamExt;
            // A chunked body is read up to the limit. Beyond it, up to
            // DRAIN_EXTRA_BYTES more are read and dropped, as above.
            let mut stream = request.take_body().into_bytes_stream();
            let mut body = Vec::new();
            let mut seen = 0;
            while let Some(chunk) = stream.next().await {
                let Ok(chunk) = chunk else {
                    let message = "the request body ended early or was malformed; send it again";
                    return Ok(ApiError::bad_request("invalid_request", message).into_response());
                };
                seen += chunk.len();
                if seen > limit + DRAIN_EXTRA_BYTES {
                    break;
                }
                if seen <= limit {
                    body.extend_from_slice(&chunk);
                }
            }
            if seen > limit {
                return too_large();
            }
            request.set_body(Body::from_bytes(body.into()));
        }
        None => {}
    }
    Ok(next.call(request).await?.into_response())
}

/// Logs one line per request: method, path, status and duration. The token
/// of a signed download path is replaced, because it grants access.
async fn log_request<E: Endpoint>(next: E, request: Request) -> poem::Result<poem::Response> {
    use poem::IntoResponse;
    let started = std::time::Instant::now();
    let method = request.method().clone();
    let path = request.uri().path();
    let path = match path.strip_prefix("/api/backup-downloads/") {
        Some(_) => "/api/backup-downloads/<token>".to_string(),
        None => path.to_string(),
    };
    let remote = request.remote_addr().to_string();
    let response = next.call(request).await?.into_response();
    tracing::info!(
        %method,
        path,
        remote,
        status = response.status().as_u16(),
        duration_ms = started.elapsed().as_millis() as u64,
        "request"
    );
    Ok(response)
}

async fn shutdown_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match terminate.as_mut() { Some(signal) => { signal.recv().await; } None => std::future::pending().await } } => {}
    }
    tracing::info!("shutdown requested; finishing in-flight requests");
}
