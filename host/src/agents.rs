//! Agents: deploy, lifecycle, observation and reconciliation.
//!
//! The agent-type plugin decides how an agent runs (its launch plan), and
//! the runtime plugin of the agent's region runs it. This service owns the
//! rules in between. A lifecycle operation takes the agent's lock, records a
//! transitional status and runs in a background task, so a second operation
//! on the same agent gets [`AgentError::Busy`] until the first one settles.
//! `ONLINE` is recorded only after the plan's health probe passes.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::OwnedMutexGuard;
use tokio::task::JoinHandle;

use crate::blobs::BlobStore;
use crate::config::Config;
use crate::hostkey::HostKey;
use crate::ids;
use crate::plugins::bindings::{ConfigFile, Setting, Target, TaskState};
use crate::plugins::{
    DeployContext, EnvVar, GuestErrorMessage, LaunchPlan, LoadedPlugin, PluginError, PluginHost,
    StopSignal, TaskSpec, TaskStatus,
};
use crate::secrets::{Keyring, SecretError};
use crate::store::{AgentRow, NewAgent, Store, StoreError};

mod backups;
mod secrets;
mod status;
pub use backups::{BackupError, DownloadLink};
pub use status::AgentStatus;

/// Time between health probes while an agent starts.
const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// Time limit of one health probe request.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Extra time a stop call gets beyond the grace period, for the SIGKILL wait.
const STOP_SLACK: Duration = Duration::from_secs(6);
/// A log file larger than this is moved to `agent.log.1` when the agent starts.
const LOG_ROTATE_BYTES: u64 = 16 * 1024 * 1024;
/// Log bytes quoted in an error when an agent dies during startup.
const STARTUP_LOG_TAIL: u32 = 2048;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("agent `{0}` not found")]
    NotFound(String),
    #[error("unknown agentType `{given}`; accepted values: {}", accepted.join(", "))]
    InvalidAgentType { given: String, accepted: Vec<String> },
    #[error("unknown region `{given}`; accepted values: {}", accepted.join(", "))]
    InvalidRegion { given: String, accepted: Vec<String> },
    #[error("invalid name: {0}")]
    InvalidName(String),
    #[error("agent {agent_id} is busy ({status}); retry when it has settled")]
    Busy { agent_id: String, status: String },
    #[error("no free port left in agents.port_range {first}-{last}; widen the range or delete unused agents")]
    NoPortsLeft { first: u16, last: u16 },
    #[error("the agent type plugin returned an invalid launch plan: {0}")]
    InvalidPlan(String),
    /// The agent started but did not become healthy.
    #[error("{0}")]
    Startup(String),
    /// The workspace cannot be prepared for the agent.
    #[error("{0}")]
    Workspace(String),
    #[error("{0}")]
    Plugin(#[from] PluginError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Secret(#[from] SecretError),
    #[error("{0}")]
    Backup(#[from] BackupError),
    #[error("secret key `{key}` is reserved: {reason}")]
    ReservedSecret { key: String, reason: String },
    #[error("agent {agent_id} already has {max} secrets, the maximum; delete one before adding `{key}`")]
    TooManySecrets { agent_id: String, key: String, max: i64 },
    #[error("agent {agent_id} has no secret `{key}`")]
    SecretNotFound { agent_id: String, key: String },
    #[error("{action} {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
}

fn io_error<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> AgentError + 'a {
    move |source| AgentError::Io { action, path: path.to_path_buf(), source }
}

/// A lifecycle operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Deploy,
    Start,
    Stop,
    Restart,
    Redeploy,
}

impl Operation {
    fn transitional_status(self) -> AgentStatus {
        match self {
            Operation::Deploy => AgentStatus::Deploying,
            Operation::Start => AgentStatus::Starting,
            Operation::Stop => AgentStatus::Stopping,
            Operation::Restart => AgentStatus::Restarting,
            Operation::Redeploy => AgentStatus::Redeploying,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Operation::Deploy => "deploy",
            Operation::Start => "start",
            Operation::Stop => "stop",
            Operation::Restart => "restart",
            Operation::Redeploy => "redeploy",
        }
    }
}

/// Parts of a launch plan the host keeps between calls.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Launch {
    health_path: String,
    startup_timeout_ms: u32,
    stop_signal: String,
    stop_grace_ms: u32,
}

impl Launch {
    fn from_plan(plan: &LaunchPlan) -> Launch {
        Launch {
            health_path: plan.health.path.clone(),
            startup_timeout_ms: plan.health.startup_timeout_ms,
            stop_signal: signal_name(plan.stop_signal).into(),
            stop_grace_ms: plan.stop_grace_ms,
        }
    }

    fn of(agent: &AgentRow) -> Launch {
        agent.launch.as_deref().and_then(|text| serde_json::from_str(text).ok()).unwrap_or(Launch {
            health_path: "/".into(),
            startup_timeout_ms: 60_000,
            stop_signal: "term".into(),
            stop_grace_ms: 10_000,
        })
    }

    fn stop_signal(&self) -> StopSignal {
        match self.stop_signal.as_str() {
            "int" => StopSignal::Int,
            "quit" => StopSignal::Quit,
            "hup" => StopSignal::Hup,
            "kill" => StopSignal::Kill,
            _ => StopSignal::Term,
        }
    }
}

fn signal_name(signal: StopSignal) -> &'static str {
    match signal {
        StopSignal::Term => "term",
        StopSignal::Int => "int",
        StopSignal::Quit => "quit",
        StopSignal::Hup => "hup",
        StopSignal::Kill => "kill",
    }
}

/// Request to deploy a new agent.
pub struct DeployRequest {
    pub agent_type: String,
    pub region: String,
    pub name: Option<String>,
}

/// Result of a live health check.
pub struct HealthReport {
    pub agent: AgentRow,
    pub healthy: bool,
    pub probe_url: String,
    pub http_status: Option<u16>,
    pub latency_ms: Option<u64>,
    pub probe_error: Option<String>,
    pub task: TaskStatus,
}

pub struct MetricsReport {
    pub cpu_percent: f64,
    pub cpu_time_ms: u64,
    pub memory_bytes: u64,
    pub processes: u32,
}

/// Paths of one agent's directory.
struct AgentDirs {
    root: PathBuf,
    workspace: PathBuf,
    log: PathBuf,
}

impl AgentDirs {
    fn new(config: &Config, agent_id: &str) -> AgentDirs {
        let root = config.agent_dir(agent_id);
        AgentDirs { workspace: root.join("workspace"), log: root.join("agent.log"), root }
    }
}

struct CpuSample {
    at: Instant,
    cpu_time_ms: u64,
}

pub struct AgentService {
    store: Store,
    config: Arc<Config>,
    plugins: Arc<PluginHost>,
    host_key: Arc<HostKey>,
    keyring: Arc<Keyring>,
    blobs: Arc<BlobStore>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Serializes port allocation, so two deploys never pick the same port.
    port_allocation: tokio::sync::Mutex<()>,
    http: reqwest::Client,
    cpu_samples: Mutex<HashMap<String, CpuSample>>,
}

impl AgentService {
    pub fn new(
        store: Store,
        config: Arc<Config>,
        plugins: Arc<PluginHost>,
        host_key: Arc<HostKey>,
        keyring: Arc<Keyring>,
        blobs: Arc<BlobStore>,
    ) -> Self {
        let http = reqwest::Client::builder()
            .timeout(PROBE_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .expect("build the health probe client");
        AgentService {
            store,
            config,
            plugins,
            host_key,
            keyring,
            blobs,
            locks: Mutex::new(HashMap::new()),
            port_allocation: tokio::sync::Mutex::new(()),
            http,
            cpu_samples: Mutex::new(HashMap::new()),
        }
    }

    pub async fn list(&self, user_id: &str) -> Result<Vec<AgentRow>, AgentError> {
        Ok(self.store.agents_of(user_id).await?)
    }

    /// Returns an agent of `user_id`; any other account's agent is not found.
    pub async fn get(&self, user_id: &str, agent_id: &str) -> Result<AgentRow, AgentError> {
        if !ids::is_agent_id(agent_id) {
            return Err(AgentError::NotFound(agent_id.to_string()));
        }
        self.store.agent_of(user_id, agent_id).await?.ok_or_else(|| AgentError::NotFound(agent_id.to_string()))
    }

    /// Public URL of an agent from its region's template.
    pub fn public_url(&self, agent: &AgentRow) -> String {
        let template = self.config.regions.get(&agent.region).map_or("http://127.0.0.1:{port}", |r| r.public_url.as_str());
        template.replace("{id}", &agent.id).replace("{region}", &agent.region).replace("{port}", &agent.port.to_string())
    }

    fn try_lock(&self, agent_id: &str) -> Option<OwnedMutexGuard<()>> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|poison| poison.into_inner());
            Arc::clone(locks.entry(agent_id.to_string()).or_default())
        };
        lock.try_lock_owned().ok()
    }

    /// Validates the request, checks that the driver produces a plan, records
    /// the agent as `DEPLOYING` and starts it in the background.
    pub async fn deploy(
        self: &Arc<Self>,
        user_id: &str,
        request: DeployRequest,
    ) -> Result<(AgentRow, JoinHandle<()>), AgentError> {
        let driver = self.plugins.agent_type(&request.agent_type).ok_or_else(|| AgentError::InvalidAgentType {
            given: request.agent_type.clone(),
            accepted: self.plugins.agent_types(),
        })?;
        let region = self.config.regions.get(&request.region).ok_or_else(|| AgentError::InvalidRegion {
            given: request.region.clone(),
            accepted: self.config.regions.keys().cloned().collect(),
        })?;
        if let Some(name) = &request.name {
            validate_name(name)?;
        }
        let runtime = self.plugins.get(&region.runtime)?;
        let agent_info = driver.agent.clone().expect("agent-type plugins carry agent info");

        let _ports = self.port_allocation.lock().await;
        let agent_id = self.unused_agent_id(&agent_info.id_prefix).await?;
        let port = self.allocate_port().await?;
        let name = request.name.clone().unwrap_or_else(|| agent_id.clone());

        // A plan now surfaces a broken or misbehaving driver in the response
        // instead of in a background task.
        let dirs = AgentDirs::new(&self.config, &agent_id);
        let context = deploy_context(&agent_id, &name, &request.region, port, &runtime, &driver, &dirs, Vec::new());
        self.plugins.plan(&driver, &context).await?;

        let guard = self.try_lock(&agent_id).expect("a new agent id is not locked");
        self.store
            .insert_agent(&NewAgent {
                id: &agent_id,
                user_id,
                name: &name,
                agent_type: &request.agent_type,
                region: &request.region,
                runtime: &region.runtime,
                port,
                status: AgentStatus::Deploying.as_str(),
            })
            .await?;
        self.event(&agent_id, "deploy", &format!("deploying {} in region {} on port {port}", request.agent_type, request.region))
            .await;
        tracing::info!(agent_id, agent_type = %request.agent_type, region = %request.region, port, "agent deploying");

        let task = tokio::spawn(Arc::clone(self).run(guard, agent_id.clone(), Operation::Deploy));
        let agent = self.store.agent(&agent_id).await?.ok_or_else(|| AgentError::NotFound(agent_id.clone()))?;
        Ok((agent, task))
    }

    /// Starts, stops, restarts or redeploys an agent in the background.
    pub async fn begin(
        self: &Arc<Self>,
        user_id: &str,
        agent_id: &str,
        operation: Operation,
    ) -> Result<(AgentRow, JoinHandle<()>), AgentError> {
        let agent = self.get(user_id, agent_id).await?;
        let Some(guard) = self.try_lock(agent_id) else {
            return Err(AgentError::Busy { agent_id: agent_id.to_string(), status: agent.status });
        };
        let desired = if operation == Operation::Stop { "stopped" } else { "running" };
        self.store.set_desired(agent_id, desired).await?;
        self.store.set_status(agent_id, operation.transitional_status().as_str(), None).await?;
        self.event(agent_id, operation.name(), &format!("{} requested", operation.name())).await;
        tracing::info!(agent_id, operation = operation.name(), "agent operation started");

        let task = tokio::spawn(Arc::clone(self).run(guard, agent_id.to_string(), operation));
        let agent = self.store.agent(agent_id).await?.ok_or_else(|| AgentError::NotFound(agent_id.to_string()))?;
        Ok((agent, task))
    }

    /// Stops an agent, releases its runtime resources and deletes it with its
    /// workspace.
    pub async fn delete(&self, user_id: &str, agent_id: &str) -> Result<(), AgentError> {
        let agent = self.get(user_id, agent_id).await?;
        let Some(_guard) = self.try_lock(agent_id) else {
            return Err(AgentError::Busy { agent_id: agent_id.to_string(), status: agent.status });
        };
        self.take_down(&agent).await?;
        if let Some(handle) = agent.handle.clone() {
            self.runtime_destroy(&agent, handle).await?;
        }
        for backup in self.store.backups_of(agent_id).await? {
            self.remove_backup(&backup).await?;
        }
        self.store.delete_agent(agent_id).await?;
        let dirs = AgentDirs::new(&self.config, agent_id);
        if let Err(error) = std::fs::remove_dir_all(&dirs.root) {
            if error.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(agent_id, path = %dirs.root.display(), %error, "failed to remove the agent directory");
            }
        }
        self.locks.lock().unwrap_or_else(|poison| poison.into_inner()).remove(agent_id);
        tracing::info!(agent_id, "agent deleted");
        Ok(())
    }

    /// Runs an operation to its end and records the settled status.
    async fn run(self: Arc<Self>, _guard: OwnedMutexGuard<()>, agent_id: String, operation: Operation) {
        let started = Instant::now();
        let result = self.execute(&agent_id, operation).await;
        let (status, message) = match &result {
            Ok(status) => (*status, None),
            Err(error) => (AgentStatus::Error, Some(error.to_string())),
        };
        if let Err(error) = self.store.set_status(&agent_id, status.as_str(), message.as_deref()).await {
            tracing::error!(agent_id, %error, "failed to record the agent's status");
        }
        match &result {
            Ok(status) => {
                tracing::info!(agent_id, operation = operation.name(), %status, elapsed_ms = started.elapsed().as_millis() as u64, "agent operation finished");
                self.event(&agent_id, operation.name(), &format!("{} finished: {status}", operation.name())).await;
            }
            Err(error) => {
                tracing::warn!(agent_id, operation = operation.name(), %error, "agent operation failed");
                self.event(&agent_id, "error", &format!("{} failed: {error}", operation.name())).await;
            }
        }
    }

    async fn execute(&self, agent_id: &str, operation: Operation) -> Result<AgentStatus, AgentError> {
        let agent = self.store.agent(agent_id).await?.ok_or_else(|| AgentError::NotFound(agent_id.to_string()))?;
        match operation {
            Operation::Deploy | Operation::Start => self.bring_up(&agent, false).await,
            Operation::Stop => {
                self.take_down(&agent).await?;
                Ok(AgentStatus::Offline)
            }
            // A plan first, so an agent whose plugin cannot plan any more
            // keeps running instead of being stopped for nothing.
            Operation::Restart => {
                self.current_plan(&agent, None).await?;
                self.take_down(&agent).await?;
                self.bring_up(&agent, false).await
            }
            Operation::Redeploy => {
                self.current_plan(&agent, None).await?;
                self.take_down(&agent).await?;
                if let Some(handle) = agent.handle.clone() {
                    self.runtime_destroy(&agent, handle).await?;
                }
                self.store.set_handle(agent_id, None).await?;
                self.bring_up(&agent, true).await
            }
        }
    }

    /// Plans, prepares the workspace, starts the task and waits for the
    /// health probe. Returns `ONLINE`, or the error that kept the agent from it.
    async fn bring_up(&self, agent: &AgentRow, fresh: bool) -> Result<AgentStatus, AgentError> {
        let driver = self.plugins.agent_type(&agent.agent_type).ok_or_else(|| AgentError::InvalidAgentType {
            given: agent.agent_type.clone(),
            accepted: self.plugins.agent_types(),
        })?;
        let runtime = self.plugins.get(&agent.runtime)?;
        let dirs = AgentDirs::new(&self.config, &agent.id);
        std::fs::create_dir_all(&dirs.workspace).map_err(io_error("create", &dirs.workspace))?;
        rotate_log(&dirs.log);

        let secrets = self.secret_values(&agent.id).await?;
        let secret_names = secrets.iter().map(|(name, _)| name.clone()).collect();
        let port = u16::try_from(agent.port).map_err(|_| AgentError::InvalidPlan(format!("stored port {} is invalid", agent.port)))?;
        let context = deploy_context(&agent.id, &agent.name, &agent.region, port, &runtime, &driver, &dirs, secret_names);
        let mut plan = self.plugins.plan(&driver, &context).await?;
        validate_plan(&plan, context.target)?;
        if let Some(settings) = self.config.agent_types.get(&agent.agent_type) {
            plan.image = settings.image_for(&plan.image);
        }
        write_config_files(&dirs.workspace, &plan.files)?;
        if let (Target::Container, Some(uid)) = (context.target, plan.run_as_uid) {
            give_workspace_to(&dirs.workspace, uid)?;
        }
        let launch = Launch::from_plan(&plan);
        self.store.set_launch(&agent.id, &serde_json::to_string(&launch).expect("launch serializes")).await?;

        let generated: Vec<(String, String)> = plan
            .generated_env
            .iter()
            .map(|name| (name.clone(), self.host_key.derive("generated-env", &[&agent.id, name])))
            .collect();
        let (env, skipped) = secrets::agent_env(&plan, generated, secrets);
        for (key, reason) in skipped {
            tracing::warn!(agent_id = %agent.id, key, reason, "secret not passed to the agent");
            self.event(&agent.id, "secret", &format!("secret `{key}` was not passed to the agent: {reason}")).await;
        }
        let spec = self.task_spec(agent, port, &plan, &dirs, &driver, env);
        let stored = if fresh { None } else { self.store.agent(&agent.id).await?.and_then(|row| row.handle) };
        let handle = match stored {
            Some(handle) => handle,
            None => {
                let spec = spec.clone();
                let budget = Duration::from_secs(self.config.agents.create_timeout_secs);
                let handle = self
                    .runtime_call(agent, &runtime, budget, move |r, s| {
                        Box::pin(async move { r.agentstead_plugin_runtime_driver().call_create(s, &spec).await })
                    })
                    .await?;
                self.store.set_handle(&agent.id, Some(&handle)).await?;
                handle
            }
        };
        let start_spec = spec.clone();
        let handle = self
            .runtime_call(agent, &runtime, Duration::ZERO, move |r, s| {
                Box::pin(async move { r.agentstead_plugin_runtime_driver().call_start(s, &handle, &start_spec).await })
            })
            .await
            .map_err(|error| with_install_hint(error, &driver))?;
        self.store.set_handle(&agent.id, Some(&handle)).await?;
        self.store.set_started(&agent.id).await?;

        self.wait_until_healthy(agent, &runtime, &handle, &launch).await?;
        Ok(AgentStatus::Online)
    }

    fn task_spec(
        &self,
        agent: &AgentRow,
        port: u16,
        plan: &LaunchPlan,
        dirs: &AgentDirs,
        driver: &LoadedPlugin,
        env: Vec<EnvVar>,
    ) -> TaskSpec {
        let info = driver.agent.as_ref().expect("agent-type plugins carry agent info");
        TaskSpec {
            agent_id: agent.id.clone(),
            command: plan.command.clone(),
            image: plan.image.clone(),
            container_args: plan.container_args.clone(),
            env,
            workspace: dirs.workspace.display().to_string(),
            workspace_mount: info.workspace_mount.clone(),
            run_as_uid: plan.run_as_uid,
            log_path: dirs.log.display().to_string(),
            port,
            stop_signal: plan.stop_signal,
            stop_grace_ms: plan.stop_grace_ms,
            settings: runtime_settings(&self.config, &agent.runtime),
        }
    }

    /// Probes the health path until it returns 2xx, the task exits or the
    /// plan's startup timeout passes.
    async fn wait_until_healthy(
        &self,
        agent: &AgentRow,
        runtime: &LoadedPlugin,
        handle: &[u8],
        launch: &Launch,
    ) -> Result<(), AgentError> {
        let url = probe_url(&self.config, agent, launch);
        let deadline = Instant::now() + Duration::from_millis(launch.startup_timeout_ms.into());
        loop {
            let probe = self.probe(&url).await;
            if probe.healthy {
                return Ok(());
            }
            let status = self.runtime_inspect(agent, runtime, handle.to_vec()).await?;
            if status.state != TaskState::Running {
                let tail = self.runtime_logs(agent, runtime, handle.to_vec(), STARTUP_LOG_TAIL).await.unwrap_or_default();
                let tail = tail.trim();
                let mut message = format!("the agent stopped during startup: {}", status.message);
                if !tail.is_empty() {
                    message.push_str(&format!("; last output: {tail}"));
                }
                return Err(AgentError::Startup(message));
            }
            if Instant::now() >= deadline {
                let detail = probe.error.unwrap_or_else(|| format!("HTTP {}", probe.http_status.unwrap_or(0)));
                return Err(AgentError::Startup(format!(
                    "health probe {url} did not pass within {} s (last result: {detail}); the agent keeps running, see its logs",
                    launch.startup_timeout_ms / 1000
                )));
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }

    /// Stops the agent's task if it has one. Idempotent.
    async fn take_down(&self, agent: &AgentRow) -> Result<(), AgentError> {
        let Some(handle) = self.store.agent(&agent.id).await?.and_then(|row| row.handle) else {
            return Ok(());
        };
        let runtime = self.plugins.get(&agent.runtime)?;
        let launch = Launch::of(agent);
        let signal = launch.stop_signal();
        let grace = launch.stop_grace_ms;
        let extra = Duration::from_millis(grace.into()) + STOP_SLACK;
        self.runtime_call(agent, &runtime, extra, move |r, s| {
            Box::pin(async move { r.agentstead_plugin_runtime_driver().call_stop(s, &handle, signal, grace).await })
        })
        .await?;
        self.cpu_samples.lock().unwrap_or_else(|poison| poison.into_inner()).remove(&agent.id);
        Ok(())
    }

    async fn runtime_destroy(&self, agent: &AgentRow, handle: Vec<u8>) -> Result<(), AgentError> {
        let runtime = self.plugins.get(&agent.runtime)?;
        self.runtime_call(agent, &runtime, STOP_SLACK, move |r, s| {
            Box::pin(async move { r.agentstead_plugin_runtime_driver().call_destroy(s, &handle).await })
        })
        .await
    }

    async fn runtime_inspect(&self, agent: &AgentRow, runtime: &LoadedPlugin, handle: Vec<u8>) -> Result<TaskStatus, AgentError> {
        self.runtime_call(agent, runtime, Duration::ZERO, move |r, s| {
            Box::pin(async move { r.agentstead_plugin_runtime_driver().call_inspect(s, &handle).await })
        })
        .await
    }

    async fn runtime_logs(&self, agent: &AgentRow, runtime: &LoadedPlugin, handle: Vec<u8>, max_bytes: u32) -> Result<String, AgentError> {
        self.runtime_call(agent, runtime, Duration::ZERO, move |r, s| {
            Box::pin(async move { r.agentstead_plugin_runtime_driver().call_logs(s, &handle, max_bytes).await })
        })
        .await
    }

    async fn runtime_call<T, F>(&self, agent: &AgentRow, runtime: &LoadedPlugin, extra: Duration, call: F) -> Result<T, AgentError>
    where
        F: for<'a> FnOnce(
            &'a crate::plugins::bindings::runtime::Runtime,
            &'a mut wasmtime::Store<crate::plugins::PluginState>,
        ) -> crate::plugins::GuestCall<'a, T>,
        T: Send,
    {
        let root = AgentDirs::new(&self.config, &agent.id).root;
        Ok(self.plugins.runtime_call(runtime, &agent.id, root, extra, call).await?)
    }

    /// Appends to the agent's event log; a failure is logged, not returned.
    pub async fn record_event(&self, agent_id: &str, kind: &str, message: &str) {
        self.event(agent_id, kind, message).await;
    }

    async fn event(&self, agent_id: &str, kind: &str, message: &str) {
        if let Err(error) = self.store.insert_event(agent_id, kind, message).await {
            tracing::warn!(agent_id, kind, %error, "failed to record an agent event");
        }
    }

    async fn unused_agent_id(&self, prefix: &str) -> Result<String, AgentError> {
        loop {
            let id = ids::agent_id(prefix);
            if !self.store.agent_exists(&id).await? {
                return Ok(id);
            }
        }
    }

    /// Returns the lowest port of the range that no agent uses and that is
    /// free on loopback right now. The caller must lock `port_allocation`.
    async fn allocate_port(&self) -> Result<u16, AgentError> {
        let [first, last] = self.config.agents.port_range;
        let used: std::collections::HashSet<i64> = self.store.used_ports().await?.into_iter().collect();
        (first..=last)
            .find(|port| !used.contains(&i64::from(*port)) && std::net::TcpListener::bind(("127.0.0.1", *port)).is_ok())
            .ok_or(AgentError::NoPortsLeft { first, last })
    }
}

mod observe;
mod reconcile;


/// Returns the URL of the agent's health probe: its port on loopback, or on
/// the address a container runtime publishes it on, where a user reaches it.
fn probe_url(config: &Config, agent: &AgentRow, launch: &Launch) -> String {
    let docker = &config.runtime.docker;
    let published_elsewhere = agent.runtime == crate::app::DOCKER_PLUGIN
        && docker.network == crate::config::DockerNetwork::Bridge
        && !docker.publish_address.is_unspecified()
        && !docker.publish_address.is_loopback();
    let host = match docker.publish_address {
        std::net::IpAddr::V6(address) if published_elsewhere => format!("[{address}]"),
        address if published_elsewhere => address.to_string(),
        _ => "127.0.0.1".to_string(),
    };
    format!("http://{host}:{}{}", agent.port, launch.health_path)
}


fn not_started() -> TaskStatus {
    TaskStatus { state: TaskState::Missing, pid: None, exit_code: None, oom_killed: false, message: "not started".into() }
}

#[allow(clippy::too_many_arguments)]
fn deploy_context(
    agent_id: &str,
    name: &str,
    region: &str,
    port: u16,
    runtime: &LoadedPlugin,
    driver: &LoadedPlugin,
    dirs: &AgentDirs,
    secret_names: Vec<String>,
) -> DeployContext {
    let host_processes = runtime.runtime.as_ref().is_some_and(|capabilities| capabilities.host_processes);
    let (target, workspace) = if host_processes {
        (Target::Process, dirs.workspace.display().to_string())
    } else {
        let mount = driver.agent.as_ref().map(|info| info.workspace_mount.clone()).unwrap_or_default();
        (Target::Container, mount)
    };
    DeployContext {
        agent_id: agent_id.to_string(),
        name: name.to_string(),
        region: region.to_string(),
        target,
        port,
        workspace,
        secret_names,
    }
}

/// Returns the operator's settings for a runtime plugin, from its configuration table.
fn runtime_settings(config: &Config, runtime: &str) -> Vec<Setting> {
    if runtime != crate::app::DOCKER_PLUGIN {
        return Vec::new();
    }
    let docker = &config.runtime.docker;
    [
        ("network", docker.network.as_str().to_string()),
        ("publish-address", docker.publish_address.to_string()),
        ("pull", docker.pull.as_str().to_string()),
    ]
    .into_iter()
    .map(|(name, value)| Setting { name: name.into(), value })
    .collect()
}

/// Makes `uid` the owner of the workspace and everything in it, so an image
/// that runs as that user can write its state. Entries already owned by
/// `uid` are left alone; symlinks are changed, never followed.
fn give_workspace_to(workspace: &Path, uid: u32) -> Result<(), AgentError> {
    use std::os::unix::fs::MetadataExt;
    for entry in walkdir::WalkDir::new(workspace).follow_links(false) {
        let entry = entry.map_err(|error| AgentError::Io {
            action: "walk",
            path: workspace.to_path_buf(),
            source: error.into(),
        })?;
        let metadata = entry.path().symlink_metadata().map_err(io_error("inspect", entry.path()))?;
        if metadata.uid() == uid && metadata.gid() == uid {
            continue;
        }
        std::os::unix::fs::lchown(entry.path(), Some(uid), Some(uid)).map_err(|error| {
            if error.kind() == std::io::ErrorKind::PermissionDenied {
                AgentError::Workspace(format!(
                    "cannot give {} to user id {uid}, which the agent's image runs as: {error}; \
                     run the server as root, or chown the directory to {uid} yourself",
                    entry.path().display()
                ))
            } else {
                io_error("chown", entry.path())(error)
            }
        })?;
    }
    Ok(())
}

/// Adds the driver's install hint to a runtime's "program missing" error.
fn with_install_hint(error: AgentError, driver: &LoadedPlugin) -> AgentError {
    let AgentError::Plugin(PluginError::Returned { plugin, error: GuestErrorMessage::Unavailable(message) }) = error else {
        return error;
    };
    let hint = driver.agent.as_ref().map(|info| info.install_hint.as_str()).unwrap_or_default();
    AgentError::Plugin(PluginError::Returned {
        plugin,
        error: GuestErrorMessage::Unavailable(format!("{message}; to fix it, {hint}")),
    })
}

fn validate_name(name: &str) -> Result<(), AgentError> {
    ids::check_label(name, ids::AGENT_NAME_MAX_CHARS).map_err(AgentError::InvalidName)
}

fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Checks what the host relies on in a plan from a plugin it does not trust.
fn validate_plan(plan: &LaunchPlan, target: Target) -> Result<(), AgentError> {
    match target {
        Target::Process if plan.command.first().is_none_or(String::is_empty) => {
            return Err(AgentError::InvalidPlan("the command is empty".into()));
        }
        Target::Container if plan.image.is_empty() => {
            return Err(AgentError::InvalidPlan("the image is empty".into()));
        }
        _ => {}
    }
    if let Some(var) = plan.env.iter().find(|var| !is_env_name(&var.name) || var.value.contains('\0')) {
        return Err(AgentError::InvalidPlan(format!("environment variable `{}` has an invalid name or value", var.name)));
    }
    if let Some(name) = plan.generated_env.iter().find(|name| !is_env_name(name)) {
        return Err(AgentError::InvalidPlan(format!("generated variable `{name}` has an invalid name")));
    }
    if !plan.health.path.starts_with('/') {
        return Err(AgentError::InvalidPlan(format!("health path `{}` must start with /", plan.health.path)));
    }
    for file in &plan.files {
        relative_file_path(&file.path)?;
    }
    Ok(())
}

/// Checks that a plan file path stays inside the workspace.
fn relative_file_path(path: &str) -> Result<&Path, AgentError> {
    let relative = Path::new(path);
    let safe = !path.is_empty() && relative.components().all(|component| matches!(component, Component::Normal(_)));
    if safe { Ok(relative) } else { Err(AgentError::InvalidPlan(format!("file path `{path}` must be relative without `..`"))) }
}

/// Writes the plan's files into the workspace, each through a temporary
/// file and a rename.
fn write_config_files(workspace: &Path, files: &[ConfigFile]) -> Result<(), AgentError> {
    use std::os::unix::fs::PermissionsExt;
    for file in files {
        let target = workspace.join(relative_file_path(&file.path)?);
        if !file.overwrite && target.exists() {
            continue;
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io_error("create", parent))?;
        }
        let staging = target.with_extension("agentstead-tmp");
        std::fs::write(&staging, &file.contents).map_err(io_error("write", &staging))?;
        std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(file.mode & 0o777))
            .map_err(io_error("set permissions of", &staging))?;
        std::fs::rename(&staging, &target).map_err(io_error("install", &target))?;
    }
    Ok(())
}

fn rotate_log(log: &Path) {
    let too_big = std::fs::metadata(log).is_ok_and(|meta| meta.len() > LOG_ROTATE_BYTES);
    if too_big {
        if let Err(error) = std::fs::rename(log, log.with_extension("log.1")) {
            tracing::warn!(path = %log.display(), %error, "failed to rotate the agent log");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_file_paths_stay_inside_the_workspace() {
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "./x"] {
            assert!(relative_file_path(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(relative_file_path("config/config.toml").is_ok());
    }

    #[test]
    fn names_are_validated() {
        assert!(validate_name("my agent").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name(" padded").is_err());
        assert!(validate_name("line\nbreak").is_err());
        assert!(validate_name(&"x".repeat(65)).is_err());
    }

    #[test]
    fn env_names_are_validated() {
        assert!(is_env_name("OPENCLAW_STATE_DIR"));
        assert!(is_env_name("_x1"));
        assert!(!is_env_name("1X"));
        assert!(!is_env_name("A-B"));
        assert!(!is_env_name(""));
    }

    #[test]
    fn probe_follows_the_published_address() {
        let agent = |runtime: &str| AgentRow {
            id: "tk-abcdef".into(),
            user_id: "usr_x".into(),
            name: "n".into(),
            agent_type: "testkit".into(),
            region: "eu".into(),
            runtime: runtime.into(),
            port: 20001,
            status: "ONLINE".into(),
            status_message: None,
            desired: "running".into(),
            handle: None,
            launch: None,
            created_at: 0,
            updated_at: 0,
            started_at: None,
            secrets_changed_at: None,
        };
        let launch = Launch::of(&agent("runtime-docker"));
        let mut config = Config::default();
        assert_eq!(probe_url(&config, &agent("runtime-docker"), &launch), "http://127.0.0.1:20001/");

        config.runtime.docker.publish_address = "10.1.2.3".parse().unwrap();
        assert_eq!(probe_url(&config, &agent("runtime-docker"), &launch), "http://10.1.2.3:20001/");
        assert_eq!(probe_url(&config, &agent("runtime-process"), &launch), "http://127.0.0.1:20001/");

        config.runtime.docker.publish_address = "0.0.0.0".parse().unwrap();
        assert_eq!(probe_url(&config, &agent("runtime-docker"), &launch), "http://127.0.0.1:20001/");

        config.runtime.docker.publish_address = "10.1.2.3".parse().unwrap();
        config.runtime.docker.network = crate::config::DockerNetwork::Host;
        assert_eq!(probe_url(&config, &agent("runtime-docker"), &launch), "http://127.0.0.1:20001/");
    }
}
