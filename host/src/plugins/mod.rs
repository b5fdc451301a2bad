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
    #[error("plugin {plugin} exceeded its memory limit of {limit_mib} MiB")]
    MemoryExhausted { plugin: String, limit_mib: u32 },
    #[error("plugin {plugin} did not finish within {timeout_ms} ms and was stopped")]
    TimedOut { plugin: String, timeout_ms: u64 },
    #[error("plugin {plugin}: {error}")]
    Returned { plugin: String, error: GuestErrorMessage },
    #[error("cannot load plugin from {source_name}: {detail}")]
    Load { source_name: String, detail: String },
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

/// Limits applied to every plugin call.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub memory_limit_mib: u32,
    pub call_timeout: Duration,
}

/// The plugin registry and the engine that runs it.
pub struct PluginHost {
    engine: Engine,
    agent_linker: Linker<PluginState>,
    runtime_linker: Linker<PluginState>,
    storage_linker: Linker<PluginState>,
    plugins: RwLock<BTreeMap<String, Arc<LoadedPlugin>>>,
    limits: Limits,
    calls: Semaphore,
    supervisor: Arc<ProcessSupervisor>,
    egress: BTreeMap<String, EgressGrant>,
}

impl PluginHost {
    /// Creates the engine, starts its epoch ticker and loads the built-in
    /// plugins, then the `.wasm` files of `plugin_dir`.
    /// `egress` maps plugin names to the HTTP destinations they may reach.
    pub async fn new(
        limits: Limits,
        supervisor: Arc<ProcessSupervisor>,
        plugin_dir: Option<&Path>,
        egress: BTreeMap<String, EgressGrant>,
    ) -> Result<Self, PluginError> {
        let engine = build_engine(limits).map_err(|error| PluginError::Load {
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
            limits,
            calls: Semaphore::new(MAX_CONCURRENT_CALLS as usize),
            supervisor,
            egress,
        };
        for (name, bytes) in BUILTIN_PLUGINS {
            let plugin = host.load(bytes, PluginSource::Builtin, name).await?;
            host.register(plugin);
        }
        if let Some(dir) = plugin_dir {
            host.load_dir(dir).await?;
        }
        Ok(host)
    }

    /// Loads every `*.wasm` file of `dir`, in name order.
    async fn load_dir(&self, dir: &Path) -> Result<(), PluginError> {
        let load_error = |detail: String| PluginError::Load { source_name: dir.display().to_string(), detail };
        let entries = std::fs::read_dir(dir).map_err(|error| load_error(format!("cannot read the directory: {error}")))?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "wasm"))
            .collect();
        files.sort();
        for path in files {
            let bytes = std::fs::read(&path).map_err(|error| PluginError::Load {
                source_name: path.display().to_string(),
                detail: error.to_string(),
            })?;
            let plugin = self.load(&bytes, PluginSource::File(path.clone()), &path.display().to_string()).await?;
            self.register(plugin);
        }
        Ok(())
    }

    fn register(&self, plugin: LoadedPlugin) {
        let name = plugin.info.name.clone();
        let mut plugins = self.plugins.write().unwrap_or_else(|poison| poison.into_inner());
        if let Some(previous) = plugins.get(&name) {
            tracing::warn!(plugin = %name, previous = ?previous.source, replacement = ?plugin.source, "plugin replaces one with the same name");
        } else {
            tracing::info!(plugin = %name, version = %plugin.info.version, source = ?plugin.source, "plugin loaded");
        }
        plugins.insert(name, Arc::new(plugin));
    }

    /// Compiles a component, checks which world and version it targets, and
    /// calls its `describe`.
    async fn load(&self, bytes: &[u8], source: PluginSource, source_name: &str) -> Result<LoadedPlugin, PluginError> {
        let load_error = |detail: String| PluginError::Load { source_name: source_name.to_string(), detail };
        let component = Component::new(&self.engine, bytes).map_err(|error| load_error(format!("{error:#}")))?;
        let kind = self.world_of(&component).map_err(load_error)?;

        let label: Arc<str> = Arc::from(source_name);
        match kind {
            PluginKind::Agent => {
                let pre = self.agent_linker.instantiate_pre(&component).map_err(|e| load_error(format!("{e:#}")))?;
                let pre = AgentPre::new(pre).map_err(|e| load_error(format!("{e:#}")))?;
                let (info, agent) = self.describe_agent(&pre, label).await?;
                check_kind(&info, PluginKind::Agent, source_name)?;
                Ok(LoadedPlugin { info, source, agent: Some(agent), runtime: None, prepared: Prepared::Agent(pre) })
            }
            PluginKind::Runtime => {
                let pre = self.runtime_linker.instantiate_pre(&component).map_err(|e| load_error(format!("{e:#}")))?;
                let pre = RuntimePre::new(pre).map_err(|e| load_error(format!("{e:#}")))?;
                let (info, capabilities) = self.describe_runtime(&pre, label).await?;
                check_kind(&info, PluginKind::Runtime, source_name)?;
                Ok(LoadedPlugin { info, source, agent: None, runtime: Some(capabilities), prepared: Prepared::Runtime(pre) })
            }
            PluginKind::Storage => {
                let pre = self.storage_linker.instantiate_pre(&component).map_err(|e| load_error(format!("{e:#}")))?;
                let pre = StoragePre::new(pre).map_err(|e| load_error(format!("{e:#}")))?;
                let info = self.describe_storage(&pre, label).await?;
                check_kind(&info, PluginKind::Storage, source_name)?;
                Ok(LoadedPlugin { info, source, agent: None, runtime: None, prepared: Prepared::Storage(pre) })
            }
        }
    }

    /// Finds the world a component targets from the driver interface it
    /// exports, and rejects versions outside `0.1.x`.
    fn world_of(&self, component: &Component) -> Result<PluginKind, String> {
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
                    "it exports {WIT_PACKAGE}/{interface}@{version}, but this host accepts {WIT_PACKAGE} {ABI_ACCEPTED} \
                     (built against {ABI_VERSION}); rebuild the plugin against a matching wit/ package"
                ));
            }
            return Ok(kind);
        }
        Err(format!(
            "it exports no {WIT_PACKAGE} driver interface (exports: {}); build it for the agent, runtime or storage world",
            if exports.is_empty() { "none".to_string() } else { exports.join(", ") }
        ))
    }

    async fn describe_agent(&self, pre: &AgentPre<PluginState>, label: Arc<str>) -> Result<(PluginInfo, AgentInfo), PluginError> {
        let name = label.to_string();
        let mut store = self.new_store(label, None, None);
        let outcome = tokio::time::timeout(self.limits.call_timeout, async {
            let bindings = pre.instantiate_async(&mut store).await?;
            let info = bindings.agentstead_plugin_plugin().call_describe(&mut store).await?;
            let agent = bindings.agentstead_plugin_agent_driver().call_info(&mut store).await?;
            Ok((info, agent))
        })
        .await;
        settle(&name, &store, self.limits, Duration::ZERO, outcome.map(|r| r.map(Ok)))
    }

    async fn describe_runtime(
        &self,
        pre: &RuntimePre<PluginState>,
        label: Arc<str>,
    ) -> Result<(PluginInfo, RuntimeCapabilities), PluginError> {
        let name = label.to_string();
        let mut store = self.new_store(label, None, None);
        let outcome = tokio::time::timeout(self.limits.call_timeout, async {
            let bindings = pre.instantiate_async(&mut store).await?;
            let info = bindings.agentstead_plugin_plugin().call_describe(&mut store).await?;
            let capabilities = bindings.agentstead_plugin_runtime_driver().call_capabilities(&mut store).await?;
            Ok((info, capabilities))
        })
        .await;
        settle(&name, &store, self.limits, Duration::ZERO, outcome.map(|r| r.map(Ok)))
    }

    async fn describe_storage(&self, pre: &StoragePre<PluginState>, label: Arc<str>) -> Result<PluginInfo, PluginError> {
        let name = label.to_string();
        let mut store = self.new_store(label, None, None);
        let outcome = tokio::time::timeout(self.limits.call_timeout, async {
            let bindings = pre.instantiate_async(&mut store).await?;
            bindings.agentstead_plugin_plugin().call_describe(&mut store).await
        })
        .await;
        settle(&name, &store, self.limits, Duration::ZERO, outcome.map(|r| r.map(Ok)))
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
        let mut store = self.new_store(plugin.info.name.as_str().into(), Some(agent_id), None);
        store.data_mut().storage = Some(session);
        store.set_epoch_deadline(deadline_ticks(budget));
        let outcome = tokio::time::timeout(budget, async {
            let bindings = pre.instantiate_async(&mut store).await?;
            call(&bindings, &mut store).await
        })
        .await;
        let extra = budget.saturating_sub(self.limits.call_timeout);
        let result = settle(&plugin.label(), &store, self.limits, extra, outcome);
        (result, store.data_mut().storage.take())
    }

    fn new_store(&self, plugin: Arc<str>, agent_id: Option<&str>, grant: Option<ProcessGrant>) -> Store<PluginState> {
        let memory_limit = self.limits.memory_limit_mib as usize * 1024 * 1024;
        // Only runtime calls, which carry a process grant, may reach the
        // network; the other worlds do not link `wasi:http` at all.
        let egress = match grant {
            Some(_) => self.egress.get(&*plugin).cloned().unwrap_or_default(),
            None => EgressGrant::default(),
        };
        let state = PluginState::new(plugin, memory_limit, agent_id.map(String::from), grant, egress);
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.memory);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(deadline_ticks(self.limits.call_timeout));
        store
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

    pub fn supervisor(&self) -> &Arc<ProcessSupervisor> {
        &self.supervisor
    }

    /// Calls `plan` on an agent-type plugin.
    pub async fn plan(&self, plugin: &LoadedPlugin, context: &DeployContext) -> Result<LaunchPlan, PluginError> {
        let Prepared::Agent(pre) = &plugin.prepared else {
            return Err(PluginError::NotLoaded(format!("{} (not an agent-type plugin)", plugin.info.name)));
        };
        let _permit = self.calls.acquire().await.expect("the call semaphore is never closed");
        let mut store = self.new_store(plugin.info.name.as_str().into(), Some(&context.agent_id), None);
        let outcome = tokio::time::timeout(self.limits.call_timeout, async {
            let bindings = pre.instantiate_async(&mut store).await?;
            bindings.agentstead_plugin_agent_driver().call_plan(&mut store, context).await
        })
        .await;
        settle(&plugin.label(), &store, self.limits, Duration::ZERO, outcome)
    }

    /// Runs one runtime-driver call. `extra` extends the time limit for calls
    /// that wait on purpose, such as a stop with a grace period.
    pub async fn runtime_call<T, F>(
        &self,
        plugin: &LoadedPlugin,
        agent_id: &str,
        grant: ProcessGrant,
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
        let budget = self.limits.call_timeout + extra;
        let mut store = self.new_store(plugin.info.name.as_str().into(), Some(agent_id), Some(grant));
        store.set_epoch_deadline(deadline_ticks(budget));
        let outcome = tokio::time::timeout(budget, async {
            let bindings = pre.instantiate_async(&mut store).await?;
            call(&bindings, &mut store).await
        })
        .await;
        settle(&plugin.label(), &store, self.limits, extra, outcome)
    }
}

fn check_kind(info: &PluginInfo, expected: PluginKind, source_name: &str) -> Result<(), PluginError> {
    if info.kind != expected {
        return Err(PluginError::Load {
            source_name: source_name.to_string(),
            detail: format!("plugin `{}` describes itself as {:?} but exports the {:?} world", info.name, info.kind, expected),
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

fn build_engine(limits: Limits) -> wasmtime::Result<Engine> {
    let mut pool = PoolingAllocationConfig::default();
    // A Rust component built for wasm32-wasip2 contains a few core instances
    // (the program and the WASI adapter glue) with one memory each, so eight
    // core instances and memories per component leave room for larger plugins.
    pool.total_component_instances(MAX_CONCURRENT_CALLS + 16)
        .total_core_instances((MAX_CONCURRENT_CALLS + 16) * 8)
        .total_memories((MAX_CONCURRENT_CALLS + 16) * 4)
        .total_tables((MAX_CONCURRENT_CALLS + 16) * 8)
        .total_stacks(MAX_CONCURRENT_CALLS + 16)
        .max_memory_size(limits.memory_limit_mib as usize * 1024 * 1024);

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

/// Turns the outcome of a guest call into the call's result or a [`PluginError`].
fn settle<T>(
    label: &str,
    store: &Store<PluginState>,
    limits: Limits,
    extra: Duration,
    outcome: Result<wasmtime::Result<Result<T, GuestError>>, tokio::time::error::Elapsed>,
) -> Result<T, PluginError> {
    let plugin = label.to_string();
    let timed_out = || PluginError::TimedOut { plugin: plugin.clone(), timeout_ms: (limits.call_timeout + extra).as_millis() as u64 };
    let result = match outcome {
        Err(_elapsed) => Err(timed_out()),
        Ok(Ok(Ok(value))) => Ok(value),
        Ok(Ok(Err(error))) => Err(PluginError::Returned { plugin: plugin.clone(), error: error.into() }),
        Ok(Err(trap)) if store.data().memory.exceeded => {
            tracing::debug!(plugin = %plugin, error = %format!("{trap:#}"), "plugin trapped after hitting its memory limit");
            Err(PluginError::MemoryExhausted { plugin: plugin.clone(), limit_mib: limits.memory_limit_mib })
        }
        Ok(Err(trap)) if matches!(trap.downcast_ref::<wasmtime::Trap>(), Some(wasmtime::Trap::Interrupt)) => Err(timed_out()),
        Ok(Err(trap)) => {
            let stderr = store.data().stderr_tail(STDERR_IN_ERRORS);
            let detail = if stderr.is_empty() { format!("{trap:#}") } else { format!("{trap:#}; plugin stderr: {stderr}") };
            Err(PluginError::Trapped { plugin: plugin.clone(), detail })
        }
    };
    if let Err(error) = &result {
        if !matches!(error, PluginError::Returned { .. }) {
            tracing::error!(plugin = %plugin, agent_id = store.data().agent_id().unwrap_or("-"), %error, "plugin call failed");
        }
    }
    result
}
