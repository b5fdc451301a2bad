//! The WebAssembly plugin host.
//!
//! One [`wasmtime::Engine`] with the pooling allocator and epoch interruption
//! serves every plugin. Each plugin is compiled once into an `InstancePre`.
//! Each call gets a fresh `Store` with a memory cap and an epoch deadline,
//! and a `tokio` timeout wraps the whole call, because epochs do not
//! interrupt a guest that waits inside a host call. A trap, timeout or exhausted memory
//! becomes a [`PluginError`] that names the plugin, and the store is dropped.

pub mod bindings;
pub mod egress;
pub mod process;
mod sandbox;
pub mod storage;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::Semaphore;
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};

use bindings::agent::{Agent, AgentPre};
use bindings::runtime::{Runtime, RuntimePre};
use bindings::storage::{Storage, StoragePre};
pub use bindings::storage::exports::agentstead::plugin::storage_driver::Snapshot;
pub use storage::{BackupWalk, RestoreSink, StorageSession, WorkspaceSession};
pub use bindings::{
    AgentInfo, DeployContext, EnvVar, GuestError, LaunchPlan, PluginInfo, PluginKind, RuntimeCapabilities,
    StopSignal, TaskMetrics, TaskSpec, TaskStatus,
};
pub use egress::{EgressGrant, Endpoint};
pub use process::{ProcessGrant, ProcessSupervisor};
pub use sandbox::PluginState;

include!(concat!(env!("OUT_DIR"), "/builtin_plugins.rs"));

/// The WIT package the plugins are linked against, and the versions accepted.
const WIT_PACKAGE: &str = "agentstead:plugin";
const ABI_VERSION: &str = "0.1.0";
const ABI_ACCEPTED: &str = "0.1.x";

/// Interval of the epoch ticker; call deadlines are counted in these ticks.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Plugin calls in flight at once; the pooling allocator reserves slots for
/// this many instances.
const MAX_CONCURRENT_CALLS: u32 = 48;
/// Bytes of a plugin's stderr quoted in a trap report.
const STDERR_IN_ERRORS: usize = 1024;

/// The future of one guest call made by a closure passed to the host.
pub type GuestCall<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = wasmtime::Result<Result<T, GuestError>>> + Send + 'a>>;

/// Failure of a plugin call. The host-side cases (trap, timeout, memory) are
/// kept apart from an error the plugin returned on purpose.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("no plugin named `{0}` is loaded")]
    NotLoaded(String),
    #[error("plugin {plugin} trapped: {detail}")]
    Trapped { plugin: String, detail: String },
    #[error("plugin {plugin} exceeded its memory limit of {limit_mib} MiB{stderr}")]
    MemoryExhausted { plugin: String, limit_mib: u32, stderr: StderrTail },
    #[error("plugin {plugin} did not finish within {timeout_ms} ms and was stopped{stderr}")]
    TimedOut { plugin: String, timeout_ms: u64, stderr: StderrTail },
    #[error("plugin {plugin}: {error}")]
    Returned { plugin: String, error: GuestErrorMessage },
    #[error("cannot load plugin from {source_name}: {detail}")]
    Load { source_name: String, detail: String },
}

/// The end of a plugin's stderr, shown after an error message when not empty.
#[derive(Debug, Clone, Default)]
pub struct StderrTail(pub String);

impl std::fmt::Display for StderrTail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() { Ok(()) } else { write!(f, "; plugin stderr: {}", self.0) }
    }
}

/// An error a plugin returned, with its case.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GuestErrorMessage {
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("{0}")]
    Other(String),
}

impl From<GuestError> for GuestErrorMessage {
    fn from(error: GuestError) -> Self {
        match error {
            GuestError::InvalidInput(m) => GuestErrorMessage::InvalidInput(m),
            GuestError::NotFound(m) => GuestErrorMessage::NotFound(m),
            GuestError::Unavailable(m) => GuestErrorMessage::Unavailable(m),
            GuestError::Conflict(m) => GuestErrorMessage::Conflict(m),
            GuestError::Other(m) => GuestErrorMessage::Other(m),
        }
    }
}

/// Findings of `PluginHost::inspect` about one component.
pub struct Inspection {
    pub imports: Vec<String>,
    pub exports: Vec<String>,
    /// The plugin as this host would load it, or why it cannot.
    pub outcome: Result<LoadedPlugin, String>,
}

/// Origin of a loaded plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginSource {
    Builtin,
    File(PathBuf),
}

enum Prepared {
    Agent(AgentPre<PluginState>),
    Runtime(RuntimePre<PluginState>),
    Storage(StoragePre<PluginState>),
}

/// A compiled plugin, ready to instantiate.
pub struct LoadedPlugin {
    pub info: PluginInfo,
    pub source: PluginSource,
    /// Set for agent-type plugins.
    pub agent: Option<AgentInfo>,
    /// Set for runtime plugins.
    pub runtime: Option<RuntimeCapabilities>,
    prepared: Prepared,
}

impl LoadedPlugin {
    /// `name version`, as error messages and logs show it.
    pub fn label(&self) -> String {
        format!("{} {}", self.info.name, self.info.version)
    }
}

/// Limits of one plugin call.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub memory_limit_mib: u32,
    pub call_timeout: Duration,
}

/// Limits of one plugin and the capabilities granted to it.
#[derive(Debug, Clone)]
pub struct Policy {
    pub limits: Limits,
    /// Programs the `process` capability may start for the plugin.
    pub programs: Arc<[String]>,
    /// HTTP destinations the plugin may reach.
    pub egress: EgressGrant,
}

impl Policy {
    /// Returns a policy with `limits` that grants nothing.
    pub fn confined(limits: Limits) -> Policy {
        Policy { limits, programs: Arc::from(Vec::new()), egress: EgressGrant::default() }
    }
}

/// Settings of a [`PluginHost`].
#[derive(Debug, Clone)]
pub struct HostOptions {
    /// Limits of a plugin that `policies` does not name; such a plugin gets
    /// no capability beyond logging.
    pub limits: Limits,
    /// Policies by plugin name.
    pub policies: BTreeMap<String, Policy>,
    /// Directory of extra `.wasm` components.
    pub plugin_dir: Option<PathBuf>,
    /// Directory of compiled components, reused while the engine's
    /// compatibility hash and the component bytes stay the same.
    pub cache_dir: Option<PathBuf>,
}

impl HostOptions {
    /// Returns options with `limits` for every plugin, no grants, no plugin
    /// directory and no cache.
    pub fn confined(limits: Limits) -> HostOptions {
        HostOptions { limits, policies: BTreeMap::new(), plugin_dir: None, cache_dir: None }
    }
}

/// The plugin registry and the engine that runs it.
pub struct PluginHost {
    engine: Engine,
    agent_linker: Linker<PluginState>,
    runtime_linker: Linker<PluginState>,
    storage_linker: Linker<PluginState>,
    plugins: RwLock<BTreeMap<String, Arc<LoadedPlugin>>>,
    options: HostOptions,
    calls: Semaphore,
    supervisor: Arc<ProcessSupervisor>,
}

impl PluginHost {
    /// Creates the engine, starts its epoch ticker and loads the built-in
    /// plugins, then the `.wasm` files of the plugin directory.
    pub async fn new(options: HostOptions, supervisor: Arc<ProcessSupervisor>) -> Result<Self, PluginError> {
        let largest_memory = options.policies.values().map(|policy| policy.limits.memory_limit_mib).max().unwrap_or(0);
        let engine = build_engine(options.limits.memory_limit_mib.max(largest_memory)).map_err(|error| PluginError::Load {
            source_name: "the wasmtime engine".into(),
            detail: error.to_string(),
        })?;
        start_epoch_ticker(&engine);

        let link_error = |error: wasmtime::Error| PluginError::Load {
            source_name: "the host linker".into(),
            detail: format!("{error:#}"),
        };
        let mut agent_linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut agent_linker).map_err(link_error)?;
        Agent::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut agent_linker, |state| state).map_err(link_error)?;
        let mut runtime_linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut runtime_linker).map_err(link_error)?;
        Runtime::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut runtime_linker, |state| state)
            .map_err(link_error)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut runtime_linker).map_err(link_error)?;

        let mut storage_linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut storage_linker).map_err(link_error)?;
        Storage::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut storage_linker, |state| state)
            .map_err(link_error)?;

        let host = PluginHost {
            engine,
            agent_linker,
            runtime_linker,
            storage_linker,
            plugins: RwLock::new(BTreeMap::new()),
            options,
            calls: Semaphore::new(MAX_CONCURRENT_CALLS as usize),
            supervisor,
        };
        let plugins = host.load_all().await?;
        *host.plugins.write().unwrap_or_else(|poison| poison.into_inner()) = plugins;
        Ok(host)
    }

    /// Loads the built-in plugins and the plugin directory again, then
    /// swaps the registry if `check` accepts it. Calls in flight keep the
    /// plugins they started with. On an error the registry stays as it was.
    pub async fn reload<F>(&self, check: F) -> Result<(), PluginError>
    where
        F: FnOnce(&BTreeMap<String, Arc<LoadedPlugin>>) -> Result<(), String>,
    {
        let plugins = self.load_all().await?;
        check(&plugins).map_err(|detail| PluginError::Load { source_name: "the reloaded plugins".into(), detail })?;
        *self.plugins.write().unwrap_or_else(|poison| poison.into_inner()) = plugins;
        Ok(())
    }

    /// Compiles, or takes from the cache, every built-in plugin and every
    /// file of the plugin directory, and returns them by name.
    async fn load_all(&self) -> Result<BTreeMap<String, Arc<LoadedPlugin>>, PluginError> {
        let started = std::time::Instant::now();
        let mut plugins = BTreeMap::new();
        let mut cached = 0;
        let mut cache_files = std::collections::HashSet::new();
        let builtins = BUILTIN_PLUGINS
            .iter()
            .map(|(name, bytes)| (PluginSource::Builtin, name.to_string(), std::borrow::Cow::Borrowed(*bytes)));
        let files = match &self.options.plugin_dir {
            Some(dir) => read_plugin_dir(dir)?,
            None => Vec::new(),
        };
        let files = files
            .into_iter()
            .map(|(path, bytes)| (PluginSource::File(path.clone()), path.display().to_string(), std::borrow::Cow::Owned(bytes)));
        for (source, source_name, bytes) in builtins.chain(files) {
            let cache_file = self.cache_file_name(&bytes);
            let load_error = |detail: String| PluginError::Load { source_name: source_name.clone(), detail };
            let (component, from_cache) = self.compile(&bytes, &cache_file, &source_name).map_err(load_error)?;
            let plugin = self.load(component, source, &source_name).await?;
            cached += usize::from(from_cache);
            cache_files.insert(cache_file);
            register(&mut plugins, plugin);
        }
        check_agent_types(&plugins)?;
        self.prune_cache(&cache_files);
        tracing::info!(
            plugins = plugins.len(),
            from_cache = cached,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "plugins loaded"
        );
        Ok(plugins)
    }

    /// Lists what a component file imports and exports, and tries to load
    /// it as this host would, without adding it to the registry.
    pub async fn inspect(&self, bytes: &[u8], source_name: &str) -> Inspection {
        let component = match Component::new(&self.engine, bytes) {
            Ok(component) => component,
            Err(error) => {
                return Inspection { imports: Vec::new(), exports: Vec::new(), outcome: Err(compile_error(bytes, &error)) };
            }
        };
        let component_type = component.component_type();
        let imports = component_type.imports(&self.engine).map(|(name, _)| name.to_string()).collect();
        let exports = component_type.exports(&self.engine).map(|(name, _)| name.to_string()).collect();
        let outcome = match self.load(component, PluginSource::File(PathBuf::from(source_name)), source_name).await {
            Ok(plugin) => Ok(plugin),
            Err(PluginError::Load { detail, .. }) => Err(detail),
            Err(error) => Err(error.to_string()),
        };
        Inspection { imports, exports, outcome }
    }

    /// Returns the policy of the plugin named `name`.
    pub fn policy(&self, name: &str) -> Policy {
        self.options.policies.get(name).cloned().unwrap_or_else(|| Policy::confined(self.options.limits))
    }

    /// Compiles a component, or deserializes it from `cache_file` in the
    /// cache when a compiled copy for these bytes and this engine exists.
    /// Returns the component and whether it came from the cache.
    fn compile(&self, bytes: &[u8], cache_file: &str, source_name: &str) -> Result<(Component, bool), String> {
        let Some(cache_dir) = &self.options.cache_dir else {
            return Component::new(&self.engine, bytes).map(|c| (c, false)).map_err(|error| compile_error(bytes, &error));
        };
        let path = cache_dir.join(cache_file);
        if path.is_file() {
            // SAFETY: the file was written by `Component::serialize` of this
            // host into its own data directory, and its name carries the
            // engine's compatibility hash, so it matches this engine.
            match unsafe { Component::deserialize_file(&self.engine, &path) } {
                Ok(component) => return Ok((component, true)),
                Err(error) => tracing::warn!(path = %path.display(), %error, "compiled plugin in the cache is unusable; compiling again"),
            }
        }
        let component = Component::new(&self.engine, bytes).map_err(|error| compile_error(bytes, &error))?;
        let stored = component.serialize().map_err(std::io::Error::other).and_then(|compiled| {
            std::fs::create_dir_all(cache_dir)?;
            crate::fsutil::write_private_file(&path, &compiled)
        });
        if let Err(error) = stored {
            tracing::warn!(plugin = source_name, path = %path.display(), %error, "failed to cache a compiled plugin");
        }
        Ok((component, false))
    }

    /// Deletes compiled files of components that are no longer loaded.
    fn prune_cache(&self, in_use: &std::collections::HashSet<String>) {
        let Some(Ok(entries)) = self.options.cache_dir.as_ref().map(std::fs::read_dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".cwasm") || in_use.contains(&name) {
                continue;
            }
            if let Err(error) = std::fs::remove_file(entry.path()) {
                tracing::warn!(path = %entry.path().display(), %error, "failed to delete a stale compiled plugin");
            }
        }
    }

    /// Returns the cache file name of a component: digests of its bytes and
    /// of the engine's compatibility hash.
    fn cache_file_name(&self, bytes: &[u8]) -> String {
        use sha2::Digest;
        use std::hash::{Hash, Hasher};
        let mut engine_hash = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut engine_hash);
        let digest = sha2::Sha256::digest(bytes);
        format!("{}-{:016x}.cwasm", hex::encode(&digest[..16]), engine_hash.finish())
    }
}

/// Explains why bytes did not compile as a component: not WebAssembly at
/// all, a core module instead of a component, or wasmtime's own reason.
fn compile_error(bytes: &[u8], error: &wasmtime::Error) -> String {
    const MAGIC: &[u8] = b"\0asm";
    // The version field of the header: 1 for a core module; a component sets the layer byte.
    const CORE_MODULE_VERSION: [u8; 4] = [1, 0, 0, 0];
    if !bytes.starts_with(MAGIC) {
        return "not a WebAssembly component: the file does not start with the WebAssembly header".into();
    }
    if bytes.get(4..8) == Some(&CORE_MODULE_VERSION[..]) {
        return "not a WebAssembly component but a core module; build the plugin for the wasm32-wasip2 target \
                (cargo build --target wasm32-wasip2), which emits a component"
            .into();
    }
    format!("not a WebAssembly component this host can compile: {error:#}")
}

/// Adds `plugin` to `plugins`, replacing one of the same name with a warning.
fn register(plugins: &mut BTreeMap<String, Arc<LoadedPlugin>>, plugin: LoadedPlugin) {
    let name = plugin.info.name.clone();
    if let Some(previous) = plugins.get(&name) {
        tracing::warn!(plugin = %name, previous = ?previous.source, replacement = ?plugin.source, "plugin replaces one with the same name");
    } else {
        tracing::info!(plugin = %name, version = %plugin.info.version, source = ?plugin.source, "plugin loaded");
    }
    plugins.insert(name, Arc::new(plugin));
}

/// Rejects two agent-type plugins that claim the same `agentType` or the
/// same id prefix, since deploys and ids would go to either one.
fn check_agent_types(plugins: &BTreeMap<String, Arc<LoadedPlugin>>) -> Result<(), PluginError> {
    let mut types: BTreeMap<&str, &LoadedPlugin> = BTreeMap::new();
    let mut prefixes: BTreeMap<&str, &LoadedPlugin> = BTreeMap::new();
    for plugin in plugins.values() {
        let Some(agent) = &plugin.agent else { continue };
        for (what, value, seen) in [("agentType", agent.agent_type.as_str(), &mut types), ("id prefix", agent.id_prefix.as_str(), &mut prefixes)] {
            if let Some(other) = seen.insert(value, plugin) {
                return Err(PluginError::Load {
                    source_name: source_label(&plugin.source),
                    detail: format!(
                        "plugin `{}` claims {what} `{value}`, which plugin `{}` ({}) already has; give one of them another {what}",
                        plugin.info.name,
                        other.info.name,
                        source_label(&other.source)
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Returns `built-in` or the file a plugin came from.
pub fn source_label(source: &PluginSource) -> String {
    match source {
        PluginSource::Builtin => "built-in".to_string(),
        PluginSource::File(path) => path.display().to_string(),
    }
}

/// Reads every `*.wasm` file of `dir`, in name order.
pub fn read_plugin_dir(dir: &Path) -> Result<Vec<(PathBuf, Vec<u8>)>, PluginError> {
    let load_error = |detail: String| PluginError::Load { source_name: dir.display().to_string(), detail };
    let entries = std::fs::read_dir(dir)
        .map_err(|error| load_error(format!("cannot read the plugin directory (plugins.dir): {error}")))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "wasm"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let bytes = std::fs::read(&path)
                .map_err(|error| PluginError::Load { source_name: path.display().to_string(), detail: error.to_string() })?;
            Ok((path, bytes))
        })
        .collect()
}

impl PluginHost {
    /// Checks which world and version a compiled component targets, links
    /// it and calls its `describe`.
    async fn load(&self, component: Component, source: PluginSource, source_name: &str) -> Result<LoadedPlugin, PluginError> {
        let load_error = |detail: String| PluginError::Load { source_name: source_name.to_string(), detail };
        let (kind, abi) = self.world_of(&component).map_err(load_error)?;
        // A linker error names the missing import, so add what it means for the plugin.
        let link_error = |error: wasmtime::Error| {
            let detail = format!("{error:#}");
            let hint = if detail.contains("matching implementation was not found") {
                format!("; the plugin imports something this host (ABI {ABI_VERSION}) does not provide: it needs a newer host, or an import its world does not grant")
            } else {
                String::new()
            };
            load_error(format!("{detail}{hint}"))
        };

        let label: Arc<str> = Arc::from(source_name);
        match kind {
            PluginKind::Agent => {
                let pre = self.agent_linker.instantiate_pre(&component).map_err(link_error)?;
                let pre = AgentPre::new(pre).map_err(link_error)?;
                let (info, agent) = self.describe_agent(&pre, label).await?;
                check_kind(&info, PluginKind::Agent, &abi, source_name)?;
                Ok(LoadedPlugin { info, source, agent: Some(agent), runtime: None, prepared: Prepared::Agent(pre) })
            }
            PluginKind::Runtime => {
                let pre = self.runtime_linker.instantiate_pre(&component).map_err(link_error)?;
                let pre = RuntimePre::new(pre).map_err(link_error)?;
                let (info, capabilities) = self.describe_runtime(&pre, label).await?;
                check_kind(&info, PluginKind::Runtime, &abi, source_name)?;
                Ok(LoadedPlugin { info, source, agent: None, runtime: Some(capabilities), prepared: Prepared::Runtime(pre) })
            }
            PluginKind::Storage => {
                let pre = self.storage_linker.instantiate_pre(&component).map_err(link_error)?;
                let pre = StoragePre::new(pre).map_err(link_error)?;
                let info = self.describe_storage(&pre, label).await?;
                check_kind(&info, PluginKind::Storage, &abi, source_name)?;
                Ok(LoadedPlugin { info, source, agent: None, runtime: None, prepared: Prepared::Storage(pre) })
            }
        }
    }

    /// Finds the world a component targets and the package version it was
    /// built against from the driver interface it exports, and rejects
    /// versions outside `0.1.x`.
    fn world_of(&self, component: &Component) -> Result<(PluginKind, String), String> {
        let component_type = component.component_type();
        let exports: Vec<String> = component_type.exports(&self.engine).map(|(name, _)| name.to_string()).collect();
        for name in &exports {
            let Some(rest) = name.strip_prefix(WIT_PACKAGE).and_then(|rest| rest.strip_prefix('/')) else {
                continue;
            };
            let (interface, version) = rest.split_once('@').unwrap_or((rest, "none"));
            let kind = match interface {
                "agent-driver" => PluginKind::Agent,
                "runtime-driver" => PluginKind::Runtime,
                "storage-driver" => PluginKind::Storage,
                _ => continue,
            };
            if !version.starts_with("0.1.") {
                return Err(format!(
                    "its interface {WIT_PACKAGE}/{interface} was built for version {version}, but this host accepts \
                     {ABI_ACCEPTED} (it was built with {ABI_VERSION}); rebuild the plugin against a {ABI_ACCEPTED} \
                     package from wit/released/"
                ));
            }
            return Ok((kind, version.to_string()));
        }
        Err(format!(
            "it exports no {WIT_PACKAGE} driver interface (exports: {}); build it for the agent, runtime or storage world",
            if exports.is_empty() { "none".to_string() } else { exports.join(", ") }
        ))
    }

    async fn describe_agent(&self, pre: &AgentPre<PluginState>, label: Arc<str>) -> Result<(PluginInfo, AgentInfo), PluginError> {
        let name = label.to_string();
        let mut store = self.new_store(label, None, self.options.limits, None, EgressGrant::default());
        let outcome = tokio::time::timeout(self.options.limits.call_timeout, async {
            let bindings = pre.instantiate_async(&mut store).await?;
            let info = bindings.agentstead_plugin_plugin().call_describe(&mut store).await?;
            let agent = bindings.agentstead_plugin_agent_driver().call_info(&mut store).await?;
            Ok((info, agent))
        })
        .await;
        settle(&name, &store, self.options.limits, Duration::ZERO, outcome.map(|r| r.map(Ok)))
    }

    async fn describe_runtime(
        &self,
        pre: &RuntimePre<PluginState>,
        label: Arc<str>,
    ) -> Result<(PluginInfo, RuntimeCapabilities), PluginError> {
        let name = label.to_string();
        let mut store = self.new_store(label, None, self.options.limits, None, EgressGrant::default());
        let outcome = tokio::time::timeout(self.options.limits.call_timeout, async {
            let bindings = pre.instantiate_async(&mut store).await?;
            let info = bindings.agentstead_plugin_plugin().call_describe(&mut store).await?;
            let capabilities = bindings.agentstead_plugin_runtime_driver().call_capabilities(&mut store).await?;
            Ok((info, capabilities))
        })
        .await;
        settle(&name, &store, self.options.limits, Duration::ZERO, outcome.map(|r| r.map(Ok)))
    }

    async fn describe_storage(&self, pre: &StoragePre<PluginState>, label: Arc<str>) -> Result<PluginInfo, PluginError> {
        let name = label.to_string();
        let mut store = self.new_store(label, None, self.options.limits, None, EgressGrant::default());
        let outcome = tokio::time::timeout(self.options.limits.call_timeout, async {
            let bindings = pre.instantiate_async(&mut store).await?;
            bindings.agentstead_plugin_plugin().call_describe(&mut store).await
        })
        .await;
        settle(&name, &store, self.options.limits, Duration::ZERO, outcome.map(|r| r.map(Ok)))
    }

    /// Runs a storage plugin's `backup` or `restore` with a workspace
    /// session, for up to `budget`. Returns the result and the session as
    /// the call left it.
    pub async fn storage_call<T, F>(
        &self,
        plugin: &LoadedPlugin,
        agent_id: &str,
        session: StorageSession,
        budget: Duration,
        call: F,
    ) -> (Result<T, PluginError>, Option<StorageSession>)
    where
        F: for<'a> FnOnce(&'a Storage, &'a mut Store<PluginState>) -> GuestCall<'a, T>,
        T: Send,
    {
        let Prepared::Storage(pre) = &plugin.prepared else {
            return (Err(PluginError::NotLoaded(format!("{} (not a storage plugin)", plugin.info.name))), Some(session));
        };
        let _permit = self.calls.acquire().await.expect("the call semaphore is never closed");
        let limits = self.policy(&plugin.info.name).limits;
        let mut store = self.new_store(plugin.info.name.as_str().into(), Some(agent_id), limits, None, EgressGrant::default());
        store.data_mut().storage = Some(session);
        store.set_epoch_deadline(deadline_ticks(budget));
        let outcome = tokio::time::timeout(budget, async {
            let bindings = pre.instantiate_async(&mut store).await?;
            call(&bindings, &mut store).await
        })
        .await;
        let extra = budget.saturating_sub(limits.call_timeout);
        let result = settle(&plugin.label(), &store, limits, extra, outcome);
        (result, store.data_mut().storage.take())
    }

    fn new_store(
        &self,
        plugin: Arc<str>,
        agent_id: Option<&str>,
        limits: Limits,
        process: Option<ProcessGrant>,
        egress: EgressGrant,
    ) -> Store<PluginState> {
        let memory_limit = limits.memory_limit_mib as usize * 1024 * 1024;
        let state = PluginState::new(plugin, memory_limit, agent_id.map(String::from), process, egress);
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.memory);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(deadline_ticks(limits.call_timeout));
        store
    }

    /// Returns the loaded plugins by name.
    pub fn by_name(&self) -> BTreeMap<String, Arc<LoadedPlugin>> {
        self.plugins.read().unwrap_or_else(|poison| poison.into_inner()).clone()
    }

    /// Returns all loaded plugins, by name.
    pub fn list(&self) -> Vec<Arc<LoadedPlugin>> {
        self.plugins.read().unwrap_or_else(|poison| poison.into_inner()).values().cloned().collect()
    }

    pub fn get(&self, name: &str) -> Result<Arc<LoadedPlugin>, PluginError> {
        self.plugins
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| PluginError::NotLoaded(name.to_string()))
    }

    /// Returns the agent-type plugin for `agent_type`, if one is loaded.
    pub fn agent_type(&self, agent_type: &str) -> Option<Arc<LoadedPlugin>> {
        self.list().into_iter().find(|plugin| plugin.agent.as_ref().is_some_and(|agent| agent.agent_type == agent_type))
    }

    /// Returns the `agentType` values of every loaded agent-type plugin, sorted.
    pub fn agent_types(&self) -> Vec<String> {
        let mut types: Vec<String> =
            self.list().iter().filter_map(|plugin| plugin.agent.as_ref().map(|agent| agent.agent_type.clone())).collect();
        types.sort();
        types
    }

    /// Calls `plan` on an agent-type plugin.
    pub async fn plan(&self, plugin: &LoadedPlugin, context: &DeployContext) -> Result<LaunchPlan, PluginError> {
        let Prepared::Agent(pre) = &plugin.prepared else {
            return Err(PluginError::NotLoaded(format!("{} (not an agent-type plugin)", plugin.info.name)));
        };
        let _permit = self.calls.acquire().await.expect("the call semaphore is never closed");
        let limits = self.policy(&plugin.info.name).limits;
        let mut store = self.new_store(plugin.info.name.as_str().into(), Some(&context.agent_id), limits, None, EgressGrant::default());
        let outcome = tokio::time::timeout(limits.call_timeout, async {
            let bindings = pre.instantiate_async(&mut store).await?;
            bindings.agentstead_plugin_agent_driver().call_plan(&mut store, context).await
        })
        .await;
        settle(&plugin.label(), &store, limits, Duration::ZERO, outcome)
    }

    /// Runs one runtime-driver call for the agent whose directory is `root`,
    /// with the programs and HTTP destinations the plugin's policy grants.
    /// `extra` extends the time limit for calls that wait on purpose, such as
    /// a stop with a grace period.
    pub async fn runtime_call<T, F>(
        &self,
        plugin: &LoadedPlugin,
        agent_id: &str,
        root: PathBuf,
        extra: Duration,
        call: F,
    ) -> Result<T, PluginError>
    where
        F: for<'a> FnOnce(&'a Runtime, &'a mut Store<PluginState>) -> GuestCall<'a, T>,
        T: Send,
    {
        let Prepared::Runtime(pre) = &plugin.prepared else {
            return Err(PluginError::NotLoaded(format!("{} (not a runtime plugin)", plugin.info.name)));
        };
        let _permit = self.calls.acquire().await.expect("the call semaphore is never closed");
        let policy = self.policy(&plugin.info.name);
        let budget = policy.limits.call_timeout + extra;
        let grant = ProcessGrant { supervisor: Arc::clone(&self.supervisor), root, programs: policy.programs };
        let mut store =
            self.new_store(plugin.info.name.as_str().into(), Some(agent_id), policy.limits, Some(grant), policy.egress);
        store.set_epoch_deadline(deadline_ticks(budget));
        let outcome = tokio::time::timeout(budget, async {
            let bindings = pre.instantiate_async(&mut store).await?;
            call(&bindings, &mut store).await
        })
        .await;
        settle(&plugin.label(), &store, policy.limits, extra, outcome)
    }
}

/// Checks what `describe` reported against what the component is: its
/// world, the ABI version of its interfaces, and a valid name.
fn check_kind(info: &PluginInfo, expected: PluginKind, abi: &str, source_name: &str) -> Result<(), PluginError> {
    if info.abi != abi {
        return Err(PluginError::Load {
            source_name: source_name.to_string(),
            detail: format!(
                "plugin `{}` reports ABI `{}` from describe, but its interfaces were built against {abi}; return \"{abi}\"",
                info.name, info.abi
            ),
        });
    }
    if info.kind != expected {
        return Err(PluginError::Load {
            source_name: source_name.to_string(),
            detail: format!(
                "plugin `{}` describes itself as kind {} but exports the {} world",
                info.name,
                kind_name(info.kind),
                kind_name(expected)
            ),
        });
    }
    if info.name.is_empty() || !info.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        return Err(PluginError::Load {
            source_name: source_name.to_string(),
            detail: format!("plugin name `{}` must be lowercase letters, digits and dashes", info.name),
        });
    }
    Ok(())
}

/// Returns the WIT name of a plugin kind.
pub fn kind_name(kind: PluginKind) -> &'static str {
    match kind {
        PluginKind::Agent => "agent",
        PluginKind::Runtime => "runtime",
        PluginKind::Storage => "storage",
    }
}

/// Builds the engine; `memory_limit_mib` is the largest cap of any plugin.
fn build_engine(memory_limit_mib: u32) -> wasmtime::Result<Engine> {
    let mut pool = PoolingAllocationConfig::default();
    // A Rust component built for wasm32-wasip2 contains a few core instances
    // (the program and the WASI adapter glue) with one memory each, so eight
    // core instances and memories per component leave room for larger plugins.
    pool.total_component_instances(MAX_CONCURRENT_CALLS + 16)
        .total_core_instances((MAX_CONCURRENT_CALLS + 16) * 8)
        .total_memories((MAX_CONCURRENT_CALLS + 16) * 4)
        .total_tables((MAX_CONCURRENT_CALLS + 16) * 8)
        .total_stacks(MAX_CONCURRENT_CALLS + 16)
        .max_memory_size(memory_limit_mib as usize * 1024 * 1024);

    let mut config = wasmtime::Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config)
}

/// Ticks the engine's epoch from a dedicated OS thread, so a guest that
/// never yields is interrupted even when every runtime worker is busy. The
/// thread ends when the engine is dropped.
fn start_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("wasm-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("spawn the epoch ticker thread");
}

fn deadline_ticks(budget: Duration) -> u64 {
    (budget.as_millis() / EPOCH_TICK.as_millis()) as u64 + 1
}

/// Returns the end of a plugin's stderr without the Rust runtime's hint
/// about `RUST_BACKTRACE`, which a plugin cannot act on: it has no environment.
fn plugin_stderr(store: &Store<PluginState>) -> String {
    let tail = store.data().stderr_tail(STDERR_IN_ERRORS);
    tail.lines().filter(|line| !line.starts_with("note: run with `RUST_BACKTRACE=1`")).collect::<Vec<_>>().join("\n")
}

/// Turns the outcome of a guest call into the call's result or a [`PluginError`].
fn settle<T>(
    label: &str,
    store: &Store<PluginState>,
    limits: Limits,
    extra: Duration,
    outcome: Result<wasmtime::Result<Result<T, GuestError>>, tokio::time::error::Elapsed>,
) -> Result<T, PluginError> {
    let plugin = label.to_string();
    let stderr = || StderrTail(plugin_stderr(store));
    let timed_out =
        || PluginError::TimedOut { plugin: plugin.clone(), timeout_ms: (limits.call_timeout + extra).as_millis() as u64, stderr: stderr() };
    let result = match outcome {
        Err(_elapsed) => Err(timed_out()),
        Ok(Ok(Ok(value))) => Ok(value),
        Ok(Ok(Err(error))) => Err(PluginError::Returned { plugin: plugin.clone(), error: error.into() }),
        Ok(Err(trap)) if store.data().memory.exceeded => {
            tracing::debug!(plugin = %plugin, error = %format!("{trap:#}"), "plugin trapped after hitting its memory limit");
            Err(PluginError::MemoryExhausted { plugin: plugin.clone(), limit_mib: limits.memory_limit_mib, stderr: stderr() })
        }
        Ok(Err(trap)) if matches!(trap.downcast_ref::<wasmtime::Trap>(), Some(wasmtime::Trap::Interrupt)) => Err(timed_out()),
        Ok(Err(trap)) => {
            // The wasm backtrace goes to the server log; the client gets the
            // trap itself and what the plugin printed, such as a panic message.
            tracing::debug!(plugin = %plugin, error = %format!("{trap:#}"), "plugin trapped");
            let reason = match trap.downcast_ref::<wasmtime::Trap>() {
                Some(code) => code.to_string(),
                None => trap.root_cause().to_string(),
            };
            Err(PluginError::Trapped { plugin: plugin.clone(), detail: format!("{reason}{}", stderr()) })
        }
    };
    if let Err(error) = &result {
        if !matches!(error, PluginError::Returned { .. }) {
            tracing::error!(plugin = %plugin, agent_id = store.data().agent_id().unwrap_or("-"), %error, "plugin call failed");
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads the `package` line's version of a WIT file.
    fn package_version(text: &str) -> String {
        let line = text.lines().find(|line| line.starts_with("package ")).expect("a package line");
        line.trim_end_matches(';').rsplit('@').next().unwrap().to_string()
    }

    #[test]
    fn released_wit_versions_stay_frozen() {
        let wit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit");
        let current = std::fs::read_to_string(wit.join("agentstead.wit")).unwrap();
        let current_version = package_version(&current);
        assert_eq!(current_version, ABI_VERSION, "the host and wit/agentstead.wit disagree on the version");

        let mut released = Vec::new();
        for entry in std::fs::read_dir(wit.join("released")).unwrap() {
            let dir = entry.unwrap().path();
            let text = std::fs::read_to_string(dir.join("agentstead.wit")).unwrap();
            let version = dir.file_name().unwrap().to_string_lossy().into_owned();
            assert_eq!(package_version(&text), version, "{}", dir.display());
            if version == current_version {
                assert_eq!(text, current, "wit/agentstead.wit changed, but {version} is released; raise the version");
            }
            released.push(version);
        }
        assert!(released.contains(&current_version), "copy wit/agentstead.wit to wit/released/{current_version}/");
    }
}
