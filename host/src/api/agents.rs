use std::sync::Arc;
use std::time::Duration;

use poem::Request;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};
use tokio::task::JoinHandle;

use super::{ApiError, ApiState, ApiTags, Credentials, Timestamp};
use crate::agents::{AgentStatus, DeployRequest as ServiceDeployRequest, HealthReport, Operation};
use crate::auth::Scope;
use crate::plugins::bindings::TaskState;
use crate::store::AgentRow;

/// Maximum time `wait=true` keeps a request open.
const MAX_WAIT: Duration = Duration::from_secs(300);
const DEFAULT_LOG_LINES: u32 = 200;
const MAX_LOG_LINES: u32 = 10_000;

pub struct AgentsApi {
    pub state: Arc<ApiState>,
}

/// Agent status. `ONLINE` means the agent's health probe passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "UPPERCASE")]
pub enum AgentStatusName {
    Deploying,
    Starting,
    Stopping,
    Restarting,
    Redeploying,
    Online,
    Offline,
    Error,
}

impl From<AgentStatus> for AgentStatusName {
    fn from(status: AgentStatus) -> Self {
        match status {
            AgentStatus::Deploying => AgentStatusName::Deploying,
            AgentStatus::Starting => AgentStatusName::Starting,
            AgentStatus::Stopping => AgentStatusName::Stopping,
            AgentStatus::Restarting => AgentStatusName::Restarting,
            AgentStatus::Redeploying => AgentStatusName::Redeploying,
            AgentStatus::Online => AgentStatusName::Online,
            AgentStatus::Offline => AgentStatusName::Offline,
            AgentStatus::Error => AgentStatusName::Error,
        }
    }
}

#[derive(Object)]
#[oai(rename_all = "camelCase", example)]
pub struct Agent {
    /// Agent id: the type's prefix and six lowercase alphanumerics, such as `oc-a1b2c3`.
    id: String,
    /// Defaults to the id.
    name: String,
    status: AgentStatusName,
    agent_type: String,
    region: String,
    /// URL of the agent, from the region's URL template.
    public_url: String,
    created_at: Timestamp,
    /// **Extension.** Why the agent is in `ERROR`; null otherwise.
    #[oai(nullable)]
    status_message: Option<String>,
    /// **Extension.** Last change of status or configuration. Always sent;
    /// optional in the schema only because the reference omits it.
    #[oai(default = "Timestamp::unset")]
    updated_at: Timestamp,
    /// **Extension.** True when the agent's secrets changed after its
    /// process last started; a restart applies them. Always sent.
    #[oai(default)]
    restart_pending: bool,
}

impl poem_openapi::types::Example for Agent {
    fn example() -> Agent {
        Agent {
            id: "oc-a1b2c3".into(),
            name: "oc-a1b2c3".into(),
            status: AgentStatusName::Online,
            agent_type: "openclaw".into(),
            region: "eu".into(),
            public_url: "http://127.0.0.1:20000".into(),
            created_at: Timestamp::from_ms(1_772_366_400_000),
            status_message: None,
            updated_at: Timestamp::from_ms(1_772_366_412_000),
            restart_pending: false,
        }
    }
}

#[derive(Object)]
pub struct AgentList {
    agents: Vec<Agent>,
}

#[derive(Object)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeployRequest {
    /// An agent type: `openclaw`, `openfang`, `nullclaw`, `zeroclaw`, or one
    /// added by a plugin.
    #[oai(validator(max_length = 64))]
    agent_type: String,
    /// A configured region; `eu` and `us` by default.
    #[oai(validator(max_length = 64))]
    region: String,
    /// **Extension.** A label of 1 to 64 characters; defaults to the id.
    #[oai(nullable)]
    name: Option<String>,
}

#[derive(ApiResponse)]
enum DeployResponse {
    /// The agent was recorded and is starting; its status is `DEPLOYING`
    /// (or settled, with `wait=true`).
    #[oai(status = 201)]
    Created(Json<Agent>),
}

#[derive(ApiResponse)]
enum DeleteResponse {
    /// The agent, its task and its workspace are gone.
    #[oai(status = 204)]
    Deleted,
}

#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct AgentLogs {
    agent_id: String,
    /// The newest lines of the agent's stdout and stderr, oldest first.
    lines: Vec<String>,
}

/// State of the agent's task as its runtime reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum TaskStateName {
    Running,
    Exited,
    Missing,
}

#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct ProbeResult {
    /// The URL the host requested.
    url: String,
    /// HTTP status of the response; null when none arrived.
    #[oai(nullable)]
    http_status: Option<u16>,
    #[oai(nullable)]
    latency_ms: Option<u64>,
    /// Reason the probe failed; null when it passed.
    #[oai(nullable)]
    error: Option<String>,
}

#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct TaskDiagnostics {
    state: TaskStateName,
    /// Process id or process group id, when the runtime has one.
    #[oai(nullable)]
    pid: Option<u32>,
    #[oai(nullable)]
    exit_code: Option<i32>,
    oom_killed: bool,
    message: String,
}

#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct AgentHealth {
    agent_id: String,
    /// True when the health probe passed just now.
    healthy: bool,
    status: AgentStatusName,
    /// Reason the agent is in `ERROR`; null otherwise.
    #[oai(nullable)]
    status_message: Option<String>,
    checked_at: Timestamp,
    probe: ProbeResult,
    runtime: TaskDiagnostics,
}

#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct AgentMetrics {
    agent_id: String,
    /// CPU use of every process of the agent, in percent of one core; can
    /// exceed 100 on several cores. Measured since the previous metrics
    /// request when that was 0.2 to 60 s ago, else over 250 ms. The kernel
    /// counts CPU time in 10 ms ticks, so a short window shows an idle or
    /// nearly idle agent as 0.
    cpu_percent: f64,
    /// Cumulative CPU time, in milliseconds.
    cpu_time_ms: u64,
    /// Resident memory of every process of the agent, in bytes.
    memory_bytes: u64,
    /// Number of processes.
    processes: u32,
    sampled_at: Timestamp,
}

#[derive(Object)]
pub struct AgentEvent {
    at: Timestamp,
    /// `deploy`, `start`, `stop`, `restart`, `redeploy`, `reconcile` or `error`.
    kind: String,
    message: String,
}

#[derive(Object)]
pub struct AgentEvents {
    events: Vec<AgentEvent>,
}

/// Converts an agent row to its API object.
pub fn agent_to_api(state: &ApiState, agent: AgentRow) -> Agent {
    let public_url = state.agents.public_url(&agent);
    let restart_pending = agent.restart_pending();
    Agent {
        restart_pending,
        status: AgentStatus::parse(&agent.status).unwrap_or(AgentStatus::Error).into(),
        public_url,
        created_at: Timestamp::from_ms(agent.created_at),
        updated_at: Timestamp::from_ms(agent.updated_at),
        status_message: agent.status_message,
        id: agent.id,
        name: agent.name,
        agent_type: agent.agent_type,
        region: agent.region,
    }
}

impl AgentsApi {
    fn to_api(&self, agent: AgentRow) -> Agent {
        agent_to_api(&self.state, agent)
    }

    /// Waits for a background operation when asked to, then reads the agent again.
    async fn settle(&self, user_id: &str, agent: AgentRow, task: JoinHandle<()>, wait: bool) -> Result<Agent, ApiError> {
        if !wait {
            return Ok(self.to_api(agent));
        }
        if tokio::time::timeout(MAX_WAIT, task).await.is_err() {
            tracing::warn!(agent_id = %agent.id, "wait=true gave up after {} s; the operation continues", MAX_WAIT.as_secs());
        }
        Ok(self.to_api(self.state.agents.get(user_id, &agent.id).await?))
    }

    async fn lifecycle(
        &self,
        credentials: Credentials,
        request: &Request,
        id: &str,
        operation: Operation,
        wait: bool,
    ) -> Result<Json<Agent>, ApiError> {
        let caller = self.state.authorize(&credentials, request, Scope::Deploy).await?;
        let (agent, task) = self.state.agents.begin(&caller.user_id, id, operation).await?;
        Ok(Json(self.settle(&caller.user_id, agent, task, wait).await?))
    }
}

#[OpenApi(tag = "ApiTags::Agents")]
impl AgentsApi {
    /// List agents
    ///
    /// Scope required: read. Returns all agents belonging to your account.
    #[oai(path = "/api/agents", method = "get", operation_id = "listAgents")]
    async fn list(&self, credentials: Credentials, request: &Request) -> Result<Json<AgentList>, ApiError> {
        let caller = self.state.authorize(&credentials, request, Scope::Read).await?;
        let agents = self.state.agents.list(&caller.user_id).await?;
        Ok(Json(AgentList { agents: agents.into_iter().map(|agent| self.to_api(agent)).collect() }))
    }

    /// Get agent
    ///
    /// Scope required: read. Returns a single agent by id.
    #[oai(path = "/api/agents/:id", method = "get", operation_id = "getAgent")]
    async fn get(&self, credentials: Credentials, request: &Request, id: Path<String>) -> Result<Json<Agent>, ApiError> {
        let caller = self.state.authorize(&credentials, request, Scope::Read).await?;
        Ok(Json(self.to_api(self.state.agents.get(&caller.user_id, &id).await?)))
    }

    /// Deploy agent
    ///
    /// Scope required: deploy. Creates an agent and starts it in the
    /// background; it becomes `ONLINE` once its health probe passes.
    #[oai(path = "/api/agents/deploy", method = "post", operation_id = "deployAgent")]
    async fn deploy(
        &self,
        credentials: Credentials,
        request: &Request,
        body: Json<DeployRequest>,
        /// **Extension.** Wait until the agent has settled (`ONLINE` or
        /// `ERROR`), at most 300 s, before responding.
        #[oai(default)]
        wait: Query<bool>,
    ) -> Result<DeployResponse, ApiError> {
        let caller = self.state.authorize(&credentials, request, Scope::Deploy).await?;
        let body = body.0;
        let deploy = ServiceDeployRequest { agent_type: body.agent_type, region: body.region, name: body.name };
        let (agent, task) = self.state.agents.deploy(&caller.user_id, deploy).await?;
        Ok(DeployResponse::Created(Json(self.settle(&caller.user_id, agent, task, wait.0).await?)))
    }

    /// Start agent
    ///
    /// Scope required: deploy. Starts a stopped agent. No request body required.
    #[oai(path = "/api/agents/:id/start", method = "post", operation_id = "startAgent")]
    async fn start(
        &self,
        credentials: Credentials,
        request: &Request,
        id: Path<String>,
        /// **Extension.** Wait until the agent has settled, at most 300 s.
        #[oai(default)]
        wait: Query<bool>,
    ) -> Result<Json<Agent>, ApiError> {
        self.lifecycle(credentials, request, &id, Operation::Start, wait.0).await
    }

    /// Stop agent
    ///
    /// Scope required: deploy. Stops a running agent: the stop signal goes to
    /// every process of the agent, then SIGKILL after the grace period.
    /// Workspace is preserved.
    #[oai(path = "/api/agents/:id/stop", method = "post", operation_id = "stopAgent")]
    async fn stop(
        &self,
        credentials: Credentials,
        request: &Request,
        id: Path<String>,
        /// **Extension.** Wait until the agent has settled, at most 300 s.
        #[oai(default)]
        wait: Query<bool>,
    ) -> Result<Json<Agent>, ApiError> {
        self.lifecycle(credentials, request, &id, Operation::Stop, wait.0).await
    }

    /// Restart agent
    ///
    /// Scope required: deploy. Soft restart: same workspace and task, processes restarted.
    #[oai(path = "/api/agents/:id/restart", method = "post", operation_id = "restartAgent")]
    async fn restart(
        &self,
        credentials: Credentials,
        request: &Request,
        id: Path<String>,
        /// **Extension.** Wait until the agent has settled, at most 300 s.
        #[oai(default)]
        wait: Query<bool>,
    ) -> Result<Json<Agent>, ApiError> {
        self.lifecycle(credentials, request, &id, Operation::Restart, wait.0).await
    }

    /// Redeploy agent
    ///
    /// Scope required: deploy. Recreates the agent's task from a fresh launch
    /// plan (container runtimes pull the image again). Use after updates or to
    /// recover from a broken state. Workspace is preserved.
    #[oai(path = "/api/agents/:id/redeploy", method = "post", operation_id = "redeployAgent")]
    async fn redeploy(
        &self,
        credentials: Credentials,
        request: &Request,
        id: Path<String>,
        /// **Extension.** Wait until the agent has settled, at most 300 s.
        #[oai(default)]
        wait: Query<bool>,
    ) -> Result<Json<Agent>, ApiError> {
        self.lifecycle(credentials, request, &id, Operation::Redeploy, wait.0).await
    }

    /// Delete agent (extension)
    ///
    /// **Extension.** Scope required: deploy. Stops the agent and deletes it
    /// with its workspace, logs, secrets, backups and schedules. This cannot
    /// be undone.
    #[oai(path = "/api/agents/:id", method = "delete", operation_id = "deleteAgent")]
    async fn delete(&self, credentials: Credentials, request: &Request, id: Path<String>) -> Result<DeleteResponse, ApiError> {
        let caller = self.state.authorize(&credentials, request, Scope::Deploy).await?;
        let schedules = self.state.schedules.list(&caller.user_id, &id).await?;
        self.state.agents.delete(&caller.user_id, &id).await?;
        let schedule_ids: Vec<String> = schedules.into_iter().map(|schedule| schedule.id).collect();
        self.state.schedules.forget_agent(&schedule_ids).await;
        Ok(DeleteResponse::Deleted)
    }

    /// Get agent logs
    ///
    /// Scope required: read. Returns recent log output for the agent: what
    /// its processes wrote to stdout and stderr.
    #[oai(path = "/api/agents/:id/logs", method = "get", operation_id = "getAgentLogs")]
    async fn logs(
        &self,
        credentials: Credentials,
        request: &Request,
        id: Path<String>,
        /// **Extension.** Number of newest lines, 1 to 10000; default 200.
        #[oai(validator(minimum(value = "1"), maximum(value = "10000")))]
        tail: Query<Option<u32>>,
    ) -> Result<Json<AgentLogs>, ApiError> {
        let caller = self.state.authorize(&credentials, request, Scope::Read).await?;
        let lines = tail.0.unwrap_or(DEFAULT_LOG_LINES).min(MAX_LOG_LINES) as usize;
        let lines = self.state.agents.logs(&caller.user_id, &id, lines).await?;
        Ok(Json(AgentLogs { agent_id: id.0, lines }))
    }

    /// Get agent health
    ///
    /// Scope required: read. Probes the agent's health path now and returns
    /// the result with runtime diagnostics.
    #[oai(path = "/api/agents/:id/health", method = "get", operation_id = "getAgentHealth")]
    async fn health(&self, credentials: Credentials, request: &Request, id: Path<String>) -> Result<Json<AgentHealth>, ApiError> {
        let caller = self.state.authorize(&credentials, request, Scope::Read).await?;
        let report = self.state.agents.health(&caller.user_id, &id).await?;
        Ok(Json(health_to_api(report)))
    }

    /// Get agent metrics
    ///
    /// Scope required: read. Returns resource usage of every process of the
    /// agent (CPU, memory), read from the operating system or the engine.
    #[oai(path = "/api/agents/:id/metrics", method = "get", operation_id = "getAgentMetrics")]
    async fn metrics(&self, credentials: Credentials, request: &Request, id: Path<String>) -> Result<Json<AgentMetrics>, ApiError> {
        let caller = self.state.authorize(&credentials, request, Scope::Read).await?;
        let report = self.state.agents.metrics(&caller.user_id, &id).await?;
        Ok(Json(AgentMetrics {
            agent_id: id.0,
            cpu_percent: report.cpu_percent,
            cpu_time_ms: report.cpu_time_ms,
            memory_bytes: report.memory_bytes,
            processes: report.processes,
            sampled_at: Timestamp(chrono::Utc::now()),
        }))
    }

    /// List agent events (extension)
    ///
    /// **Extension.** Scope required: read. The newest 100 lifecycle events of
    /// the agent, oldest first.
    #[oai(path = "/api/agents/:id/events", method = "get", operation_id = "listAgentEvents")]
    async fn events(&self, credentials: Credentials, request: &Request, id: Path<String>) -> Result<Json<AgentEvents>, ApiError> {
        let caller = self.state.authorize(&credentials, request, Scope::Read).await?;
        let rows = self.state.agents.events(&caller.user_id, &id, 100).await?;
        let events = rows
            .into_iter()
            .map(|row| AgentEvent { at: Timestamp::from_ms(row.at), kind: row.kind, message: row.message })
            .collect();
        Ok(Json(AgentEvents { events }))
    }
}

fn health_to_api(report: HealthReport) -> AgentHealth {
    let state = match report.task.state {
        TaskState::Running => TaskStateName::Running,
        TaskState::Exited => TaskStateName::Exited,
        TaskState::Missing => TaskStateName::Missing,
    };
    AgentHealth {
        agent_id: report.agent.id,
        healthy: report.healthy,
        status: AgentStatus::parse(&report.agent.status).unwrap_or(AgentStatus::Error).into(),
        status_message: report.agent.status_message,
        checked_at: Timestamp(chrono::Utc::now()),
        probe: ProbeResult {
            url: report.probe_url,
            http_status: report.http_status,
            latency_ms: report.latency_ms,
            error: report.probe_error,
        },
        runtime: TaskDiagnostics {
            state,
            pid: report.task.pid,
            exit_code: report.task.exit_code,
            oom_killed: report.task.oom_killed,
            message: report.task.message,
        },
    }
}
