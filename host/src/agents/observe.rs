//! Observing agents: health probes, metrics, logs and events.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{AgentError, AgentService, CpuSample, HealthReport, Launch, MetricsReport, PROBE_TIMEOUT, not_started, probe_url};
use crate::plugins::bindings::TaskState;

/// Outcome of one HTTP request to an agent's health path.
pub(super) struct ProbeResult {
    pub(super) healthy: bool,
    pub(super) http_status: Option<u16>,
    pub(super) latency_ms: Option<u64>,
    pub(super) error: Option<String>,
}

impl AgentService {
    pub(super) async fn probe(&self, url: &str) -> ProbeResult {
        let started = Instant::now();
        match self.http.get(url).send().await {
            Ok(response) => {
                let status = response.status();
                ProbeResult {
                    healthy: status.is_success(),
                    http_status: Some(status.as_u16()),
                    latency_ms: Some(started.elapsed().as_millis() as u64),
                    error: (!status.is_success()).then(|| format!("HTTP {}", status.as_u16())),
                }
            }
            Err(error) => ProbeResult {
                healthy: false,
                http_status: None,
                latency_ms: None,
                error: Some(describe_probe_error(&error)),
            },
        }
    }

    /// Probes the agent now and reports its task's state.
    pub async fn health(&self, user_id: &str, agent_id: &str) -> Result<HealthReport, AgentError> {
        let agent = self.get(user_id, agent_id).await?;
        let launch = Launch::of(&agent);
        let probe_url = probe_url(&self.config, &agent, &launch);
        let task = match agent.handle.clone() {
            Some(handle) => {
                let runtime = self.plugins.get(&agent.runtime)?;
                self.runtime_inspect(&agent, &runtime, handle).await?
            }
            None => not_started(),
        };
        let probe = if task.state == TaskState::Running {
            self.probe(&probe_url).await
        } else {
            ProbeResult { healthy: false, http_status: None, latency_ms: None, error: Some("the agent is not running".into()) }
        };
        Ok(HealthReport {
            agent,
            healthy: probe.healthy,
            probe_url,
            http_status: probe.http_status,
            latency_ms: probe.latency_ms,
            probe_error: probe.error,
            task,
        })
    }

    /// CPU and memory of the agent's task. The CPU rate is measured between
    /// this call and the previous one when that was 200 ms to 60 s ago, and
    /// over a 250 ms window otherwise.
    pub async fn metrics(&self, user_id: &str, agent_id: &str) -> Result<MetricsReport, AgentError> {
        let agent = self.get(user_id, agent_id).await?;
        let Some(handle) = agent.handle.clone() else {
            return Ok(MetricsReport { cpu_percent: 0.0, cpu_time_ms: 0, memory_bytes: 0, processes: 0 });
        };
        let runtime = self.plugins.get(&agent.runtime)?;
        let sample = |handle: Vec<u8>| {
            let runtime = Arc::clone(&runtime);
            let agent = agent.clone();
            async move {
                self.runtime_call(&agent, &runtime, Duration::ZERO, move |r, s| {
                    Box::pin(async move { r.agentstead_plugin_runtime_driver().call_metrics(s, &handle).await })
                })
                .await
            }
        };

        let previous = self.cpu_samples.lock().unwrap_or_else(|poison| poison.into_inner()).remove(agent_id);
        let usable = previous.filter(|p| (Duration::from_millis(200)..Duration::from_secs(60)).contains(&p.at.elapsed()));
        let baseline = match usable {
            Some(previous) => previous,
            None => {
                let first = sample(handle.clone()).await?;
                let at = Instant::now();
                tokio::time::sleep(Duration::from_millis(250)).await;
                CpuSample { at, cpu_time_ms: first.cpu_time_ms }
            }
        };
        let current = sample(handle).await?;
        let now = Instant::now();
        let elapsed_ms = now.duration_since(baseline.at).as_secs_f64() * 1000.0;
        let used_ms = current.cpu_time_ms.saturating_sub(baseline.cpu_time_ms) as f64;
        let cpu_percent = if elapsed_ms > 0.0 { (used_ms / elapsed_ms * 1000.0).round() / 10.0 } else { 0.0 };
        self.cpu_samples
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .insert(agent_id.to_string(), CpuSample { at: now, cpu_time_ms: current.cpu_time_ms });

        Ok(MetricsReport {
            cpu_percent,
            cpu_time_ms: current.cpu_time_ms,
            memory_bytes: current.memory_bytes,
            processes: current.processes,
        })
    }

    /// Returns the last `lines` lines of the agent's output.
    pub async fn logs(&self, user_id: &str, agent_id: &str, lines: usize) -> Result<Vec<String>, AgentError> {
        let agent = self.get(user_id, agent_id).await?;
        let Some(handle) = agent.handle.clone() else {
            return Ok(Vec::new());
        };
        let runtime = self.plugins.get(&agent.runtime)?;
        let text = self.runtime_logs(&agent, &runtime, handle, self.config.agents.max_log_bytes).await?;
        let all: Vec<&str> = text.lines().collect();
        Ok(all[all.len().saturating_sub(lines)..].iter().map(|line| line.to_string()).collect())
    }

    pub async fn events(&self, user_id: &str, agent_id: &str, limit: i64) -> Result<Vec<crate::store::EventRow>, AgentError> {
        self.get(user_id, agent_id).await?;
        Ok(self.store.events(agent_id, limit).await?)
    }

}

fn describe_probe_error(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        format!("no answer within {} s", PROBE_TIMEOUT.as_secs())
    } else if error.is_connect() {
        "connection refused".into()
    } else {
        error.to_string()
    }
}
