//! Runtime plugin that runs agents as local processes through the host's
//! `process` capability.
//!
//! Each agent is the leader of its own process group, so stopping it reaches
//! every child it started. The task handle is a few lines of text:
//! `v1`, the process group id, the leader's start time in clock ticks and the
//! log file path. The start time guards against a recycled pid after a host
//! restart.

wit_bindgen::generate!({ path: "../../wit", world: "runtime" });

use agentstead::plugin::logging::{Level, log};
use agentstead::plugin::process::{self, ProcessError, SpawnRequest, Spawned};
use agentstead::plugin::types::{PluginError, PluginInfo, PluginKind, StopSignal};
use exports::agentstead::plugin::plugin::Guest as Plugin;
use exports::agentstead::plugin::runtime_driver::{
    Guest as RuntimeDriver, RuntimeCapabilities, TaskMetrics, TaskSpec, TaskState, TaskStatus,
};

struct ProcessRuntime;

/// Time allowed for the group to vanish after SIGKILL.
const KILL_WAIT_MS: u32 = 5_000;

struct Handle {
    group: Option<Spawned>,
    log_path: String,
}

impl Handle {
    fn encode(&self) -> Vec<u8> {
        let (pgid, ticks) = self.group.map(|g| (g.pgid, g.start_ticks)).unwrap_or((0, 0));
        format!("v1\n{pgid}\n{ticks}\n{}", self.log_path).into_bytes()
    }

    fn decode(bytes: &[u8]) -> Result<Handle, PluginError> {
        let invalid = || PluginError::InvalidInput("task handle is not a runtime-process v1 handle".into());
        let text = std::str::from_utf8(bytes).map_err(|_| invalid())?;
        let mut lines = text.splitn(4, '\n');
        if lines.next() != Some("v1") {
            return Err(invalid());
        }
        let pgid: u32 = lines.next().and_then(|v| v.parse().ok()).ok_or_else(invalid)?;
        let start_ticks: u64 = lines.next().and_then(|v| v.parse().ok()).ok_or_else(invalid)?;
        let log_path = lines.next().ok_or_else(invalid)?.to_string();
        let group = (pgid != 0).then_some(Spawned { pgid, start_ticks });
        Ok(Handle { group, log_path })
    }
}

fn to_plugin_error(error: ProcessError) -> PluginError {
    match error {
        ProcessError::ProgramNotFound(program) => {
            PluginError::Unavailable(format!(
            "program `{program}` is not installed on the host's PATH or in runtime.process.search_path"
        ))
        }
        ProcessError::Denied(reason) => PluginError::InvalidInput(reason),
        ProcessError::NoSuchGroup(pgid) => PluginError::NotFound(format!("process group {pgid} does not exist")),
        ProcessError::Os(message) => PluginError::Other(message),
    }
}

impl Plugin for ProcessRuntime {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "runtime-process".into(),
            kind: PluginKind::Runtime,
            version: env!("CARGO_PKG_VERSION").into(),
            abi: "0.1.0".into(),
            description: "local processes, one process group per agent".into(),
        }
    }
}

impl RuntimeDriver for ProcessRuntime {
    fn capabilities() -> RuntimeCapabilities {
        RuntimeCapabilities { restart_in_place: false, metrics: true, host_processes: true }
    }

    fn create(spec: TaskSpec) -> Result<Vec<u8>, PluginError> {
        if spec.command.is_empty() {
            return Err(PluginError::InvalidInput(format!("agent {} has an empty command", spec.agent_id)));
        }
        Ok(Handle { group: None, log_path: spec.log_path }.encode())
    }

    fn start(handle: Vec<u8>, spec: TaskSpec) -> Result<Vec<u8>, PluginError> {
        let handle = Handle::decode(&handle)?;
        if let Some(group) = handle.group {
            match process::status(group) {
                Ok(status) if status.leader_alive => {
                    log(Level::Info, &format!("agent {} already runs as group {}", spec.agent_id, group.pgid));
                    return Ok(handle.encode());
                }
                Ok(_) | Err(ProcessError::NoSuchGroup(_)) => {}
                Err(error) => return Err(to_plugin_error(error)),
            }
        }

        let Some((program, args)) = spec.command.split_first() else {
            return Err(PluginError::InvalidInput(format!("agent {} has an empty command", spec.agent_id)));
        };
        let request = SpawnRequest {
            program: program.clone(),
            args: args.to_vec(),
            env: spec.env,
            cwd: spec.workspace,
            log_path: spec.log_path.clone(),
        };
        let group = process::spawn(&request).map_err(to_plugin_error)?;
        log(Level::Info, &format!("started agent {} as process group {}", spec.agent_id, group.pgid));
        Ok(Handle { group: Some(group), log_path: spec.log_path }.encode())
    }

    fn stop(handle: Vec<u8>, signal: StopSignal, grace_ms: u32) -> Result<(), PluginError> {
        let Some(group) = Handle::decode(&handle)?.group else {
            return Ok(());
        };
        match process::signal_group(group, signal) {
            Ok(()) => {}
            Err(ProcessError::NoSuchGroup(_)) => return Ok(()),
            Err(error) => return Err(to_plugin_error(error)),
        }
        if process::wait_group(group, grace_ms).map_err(to_plugin_error)? {
            return Ok(());
        }

        log(Level::Warn, &format!("process group {} outlived its {grace_ms} ms grace period; killing it", group.pgid));
        match process::signal_group(group, StopSignal::Kill) {
            Ok(()) | Err(ProcessError::NoSuchGroup(_)) => {}
            Err(error) => return Err(to_plugin_error(error)),
        }
        if process::wait_group(group, KILL_WAIT_MS).map_err(to_plugin_error)? {
            Ok(())
        } else {
            Err(PluginError::Other(format!("process group {} survived SIGKILL for {KILL_WAIT_MS} ms", group.pgid)))
        }
    }

    fn destroy(handle: Vec<u8>) -> Result<(), PluginError> {
        Self::stop(handle, StopSignal::Kill, 0)
    }

    fn inspect(handle: Vec<u8>) -> Result<TaskStatus, PluginError> {
        let Some(group) = Handle::decode(&handle)?.group else {
            return Ok(TaskStatus { state: TaskState::Missing, pid: None, exit_code: None, oom_killed: false, message: "not started".into() });
        };
        let status = match process::status(group) {
            Ok(status) => status,
            Err(ProcessError::NoSuchGroup(_)) => {
                return Ok(TaskStatus {
                    state: TaskState::Missing,
                    pid: None,
                    exit_code: None,
                    oom_killed: false,
                    message: format!("process group {} is gone", group.pgid),
                });
            }
            Err(error) => return Err(to_plugin_error(error)),
        };

        if status.leader_alive {
            let message = format!("running as process group {} with {} processes", group.pgid, status.members);
            return Ok(TaskStatus { state: TaskState::Running, pid: Some(group.pgid), exit_code: None, oom_killed: false, message });
        }
        let message = match (status.exit_code, status.exit_signal) {
            (Some(code), _) => format!("exited with code {code}"),
            (None, Some(signal)) => format!("killed by signal {signal}"),
            (None, None) => "exited while the host was not watching".to_string(),
        };
        Ok(TaskStatus { state: TaskState::Exited, pid: None, exit_code: status.exit_code, oom_killed: false, message })
    }

    fn logs(handle: Vec<u8>, max_bytes: u32) -> Result<String, PluginError> {
        let handle = Handle::decode(&handle)?;
        match process::read_log_tail(&handle.log_path, max_bytes) {
            Ok(text) => Ok(text),
            Err(ProcessError::NoSuchGroup(_)) => Ok(String::new()),
            Err(error) => Err(to_plugin_error(error)),
        }
    }

    fn pause(handle: Vec<u8>, paused: bool) -> Result<(), PluginError> {
        let Some(group) = Handle::decode(&handle)?.group else {
            return Ok(());
        };
        match process::suspend_group(group, paused) {
            Ok(()) | Err(ProcessError::NoSuchGroup(_)) => Ok(()),
            Err(error) => Err(to_plugin_error(error)),
        }
    }

    fn metrics(handle: Vec<u8>) -> Result<TaskMetrics, PluginError> {
        let Some(group) = Handle::decode(&handle)?.group else {
            return Ok(TaskMetrics { cpu_time_ms: 0, memory_bytes: 0, processes: 0 });
        };
        match process::usage(group) {
            Ok(usage) => Ok(TaskMetrics { cpu_time_ms: usage.cpu_time_ms, memory_bytes: usage.rss_bytes, processes: usage.processes }),
            Err(ProcessError::NoSuchGroup(_)) => Ok(TaskMetrics { cpu_time_ms: 0, memory_bytes: 0, processes: 0 }),
            Err(error) => Err(to_plugin_error(error)),
        }
    }
}

export!(ProcessRuntime);
