//! The reconcile loop: compares each agent's desired state with what its
//! runtime reports, and closes the gap.
//!
//! At host start every agent is inspected through its stored task handle. A
//! task that still runs is adopted, never started a second time, and probed.
//! An agent that should run but whose task is gone is started again. An
//! agent caught in a transitional state by a host crash is settled. While the host
//! runs, an agent whose task dies is marked `ERROR` with the exit status and
//! an agent in `ERROR` whose probe passes again returns to `ONLINE`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OwnedMutexGuard;

use super::{AgentService, AgentStatus, Launch, Operation, not_started, probe_url};
use crate::plugins::bindings::TaskState;
use crate::store::AgentRow;

impl AgentService {
    /// Runs the startup pass, then a pass every `agents.reconcile_interval_secs`
    /// until `shutdown` fires.
    pub async fn reconcile_loop(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        self.reconcile(true).await;
        let interval = Duration::from_secs(self.config.agents.reconcile_interval_secs);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => self.reconcile(false).await,
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Checks every agent once. Agents with an operation in flight are skipped.
    pub async fn reconcile(self: &Arc<Self>, startup: bool) {
        let agents = match self.store.all_agents().await {
            Ok(agents) => agents,
            Err(error) => {
                tracing::error!(%error, "reconcile: cannot list agents");
                return;
            }
        };
        for agent in agents {
            let Some(guard) = self.try_lock(&agent.id) else {
                continue;
            };
            if let Err(error) = self.reconcile_agent(agent.clone(), guard, startup).await {
                tracing::warn!(agent_id = %agent.id, %error, "reconcile: failed to check agent");
            }
        }
    }

    async fn reconcile_agent(
        self: &Arc<Self>,
        agent: AgentRow,
        guard: OwnedMutexGuard<()>,
        startup: bool,
    ) -> Result<(), super::AgentError> {
        let status = AgentStatus::parse(&agent.status).unwrap_or(AgentStatus::Error);
        let task = match agent.handle.clone() {
            Some(handle) => {
                let runtime = self.plugins.get(&agent.runtime)?;
                self.runtime_inspect(&agent, &runtime, handle).await?
            }
            None => not_started(),
        };
        let running = task.state == TaskState::Running;

        match (agent.desired.as_str(), running) {
            ("running", true) if status == AgentStatus::Online => {}
            ("running", true) => {
                // Adopt the task: a host restart during startup, or an agent in
                // ERROR whose probe passes again.
                let launch = Launch::of(&agent);
                if self.probe(&probe_url(&self.config, &agent, &launch)).await.healthy {
                    self.settle(&agent, AgentStatus::Online, None, "recovered: the task runs and its health probe passes").await;
                } else if startup || !status.is_settled() {
                    tracing::info!(agent_id = %agent.id, "reconcile: task runs; waiting for its health probe");
                    self.spawn_resume(guard, agent, Operation::Start, true);
                }
            }
            ("running", false) if startup || !status.is_settled() => {
                tracing::info!(agent_id = %agent.id, task = %task.message, "reconcile: starting an agent whose task is gone");
                self.event(&agent.id, "reconcile", &format!("starting again after a host restart: {}", task.message)).await;
                self.spawn_resume(guard, agent, Operation::Start, false);
            }
            ("running", false) if status == AgentStatus::Online => {
                let message = format!("the agent's task ended: {}", task.message);
                self.settle(&agent, AgentStatus::Error, Some(&message), &message).await;
            }
            ("running", false) => {}
            (_, true) => {
                tracing::info!(agent_id = %agent.id, "reconcile: stopping an agent that should be stopped");
                self.spawn_resume(guard, agent, Operation::Stop, false);
            }
            (_, false) if status != AgentStatus::Offline => {
                self.settle(&agent, AgentStatus::Offline, None, "settled as stopped").await;
            }
            (_, false) => {}
        }
        Ok(())
    }

    async fn settle(&self, agent: &AgentRow, status: AgentStatus, message: Option<&str>, event: &str) {
        tracing::info!(agent_id = %agent.id, %status, "reconcile: {event}");
        if let Err(error) = self.store.set_status(&agent.id, status.as_str(), message).await {
            tracing::error!(agent_id = %agent.id, %error, "reconcile: failed to record status");
        }
        self.event(&agent.id, "reconcile", event).await;
    }

    /// Finishes an operation in the background while holding the agent's lock.
    /// With `adopt`, the running task is only waited on, not started.
    fn spawn_resume(self: &Arc<Self>, guard: OwnedMutexGuard<()>, agent: AgentRow, operation: Operation, adopt: bool) {
        let service = Arc::clone(self);
        tokio::spawn(async move {
            let transitional = if operation == Operation::Stop { AgentStatus::Stopping } else { AgentStatus::Starting };
            if let Err(error) = service.store.set_status(&agent.id, transitional.as_str(), None).await {
                tracing::error!(agent_id = %agent.id, %error, "reconcile: failed to record status");
            }
            if adopt {
                service.adopt(guard, agent).await;
            } else {
                service.run(guard, agent.id.clone(), operation).await;
            }
        });
    }

    async fn adopt(&self, _guard: OwnedMutexGuard<()>, agent: AgentRow) {
        let result = match (self.plugins.get(&agent.runtime), agent.handle.clone()) {
            (Ok(runtime), Some(handle)) => self.wait_until_healthy(&agent, &runtime, &handle, &Launch::of(&agent)).await,
            (Err(error), _) => Err(error.into()),
            (_, None) => Ok(()),
        };
        let (status, message) = match result {
            Ok(()) => (AgentStatus::Online, None),
            Err(error) => (AgentStatus::Error, Some(error.to_string())),
        };
        self.settle(&agent, status, message.as_deref(), &format!("adopted the running task: {status}")).await;
    }
}
