//! Runtime plugin that runs agents as containers through the Docker Engine API.
//!
//! The plugin speaks HTTP through `wasi:http` to the authority `docker`,
//! which the host connects to the engine endpoint the operator configured.
//! Each agent is one container named `agentstead-<agent id>` and labelled
//! with the agent id. The workspace is a bind mount, so it outlives the
//! container: a start after a stop creates the container again from the
//! current spec, which is how changed secrets reach the agent. The task
//! handle is `v1`, the container id and the container name, one per line.

wit_bindgen::generate!({ path: "../../wit", world: "runtime" });

mod engine;

use serde::Deserialize;
use serde_json::{Value, json};

use agentstead::plugin::logging::{Level, log};
use agentstead::plugin::types::{PluginError, PluginInfo, PluginKind, StopSignal};
use exports::agentstead::plugin::plugin::Guest as Plugin;
use exports::agentstead::plugin::runtime_driver::{
    Guest as RuntimeDriver, RuntimeCapabilities, TaskMetrics, TaskSpec, TaskState, TaskStatus,
};

struct DockerRuntime;

/// Label that ties a container to its agent.
const AGENT_LABEL: &str = "agentstead.agent-id";
/// Log lines asked of the engine per requested kilobyte of logs.
const LOG_LINES_PER_KIB: u32 = 16;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Network {
    Bridge,
    Host,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Pull {
    Always,
    Missing,
    Never,
}

struct Settings {
    network: Network,
    publish_address: String,
    pull: Pull,
}

impl Settings {
    fn of(spec: &TaskSpec) -> Result<Settings, PluginError> {
        let mut settings = Settings { network: Network::Bridge, publish_address: "127.0.0.1".into(), pull: Pull::Always };
        for setting in &spec.settings {
            let value = setting.value.as_str();
            let bad = |accepted: &str| {
                PluginError::InvalidInput(format!(
                    "runtime.docker setting `{}` = `{value}` is not valid; use {accepted}",
                    setting.name
                ))
            };
            match setting.name.as_str() {
                "network" => {
                    settings.network = match value {
                        "bridge" => Network::Bridge,
                        "host" => Network::Host,
                        _ => return Err(bad("`bridge` or `host`")),
                    }
                }
                "pull" => {
                    settings.pull = match value {
                        "always" => Pull::Always,
                        "missing" => Pull::Missing,
                        "never" => Pull::Never,
                        _ => return Err(bad("`always`, `missing` or `never`")),
                    }
                }
                "publish-address" => settings.publish_address = value.to_string(),
                _ => return Err(bad("only network, pull and publish-address")),
            }
        }
        Ok(settings)
    }
}

struct Handle {
    container: String,
    name: String,
}

impl Handle {
    fn encode(&self) -> Vec<u8> {
        format!("v1\n{}\n{}", self.container, self.name).into_bytes()
    }

    fn decode(bytes: &[u8]) -> Result<Handle, PluginError> {
        let invalid = || PluginError::InvalidInput("task handle is not a runtime-docker v1 handle".into());
        let text = std::str::from_utf8(bytes).map_err(|_| invalid())?;
        let mut lines = text.split('\n');
        if lines.next() != Some("v1") {
            return Err(invalid());
        }
        let container = lines.next().filter(|id| is_container_ref(id)).ok_or_else(invalid)?.to_string();
        let name = lines.next().filter(|name| is_container_ref(name)).ok_or_else(invalid)?.to_string();
        Ok(Handle { container, name })
    }
}

/// Container ids and the names this plugin gives are plain ASCII words, so
/// they go into request paths as they are.
fn is_container_ref(text: &str) -> bool {
    !text.is_empty() && text.len() <= 128 && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn container_name(agent_id: &str) -> Result<String, PluginError> {
    let name = format!("agentstead-{agent_id}");
    if !is_container_ref(&name) {
        return Err(PluginError::InvalidInput(format!("agent id `{agent_id}` cannot name a container")));
    }
    Ok(name)
}

impl Plugin for DockerRuntime {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "runtime-docker".into(),
            kind: PluginKind::Runtime,
            version: env!("CARGO_PKG_VERSION").into(),
            abi: "0.1.0".into(),
            description: "containers on a Docker Engine, one per agent".into(),
        }
    }
}

impl RuntimeDriver for DockerRuntime {
    fn capabilities() -> RuntimeCapabilities {
        RuntimeCapabilities { restart_in_place: false, metrics: true, host_processes: false }
    }

    fn create(spec: TaskSpec) -> Result<Vec<u8>, PluginError> {
        let settings = Settings::of(&spec)?;
        ensure_image(&spec.image, settings.pull)?;
        let name = container_name(&spec.agent_id)?;
        let container = create_container(&spec, &settings, &name)?;
        Ok(Handle { container, name }.encode())
    }

    fn start(handle: Vec<u8>, spec: TaskSpec) -> Result<Vec<u8>, PluginError> {
        let handle = Handle::decode(&handle)?;
        let settings = Settings::of(&spec)?;
        let state = inspect_container(&handle.container)?.map(|container| container.state);
        let container = match state {
            Some(state) if state.running => return Ok(handle.encode()),
            // Fresh from `create`: it already has the current spec.
            Some(state) if state.status == "created" => handle.container,
            // Stopped or gone: create it again, so the current environment applies.
            _ => {
                remove_container(&handle.container)?;
                let policy = if settings.pull == Pull::Never { Pull::Never } else { Pull::Missing };
                ensure_image(&spec.image, policy)?;
                create_container(&spec, &settings, &handle.name)?
            }
        };
        let response = engine::post(&format!("/containers/{container}/start"), None)?;
        match response.status {
            204 | 304 => Ok(Handle { container, name: handle.name }.encode()),
            404 => Err(PluginError::NotFound(format!("container {} is gone: {}", handle.name, response.message()))),
            _ => {
                let message = response.message();
                if message.contains("port is already allocated") || message.contains("address already in use") {
                    // The engine keeps the container; remove it so a later start is clean.
                    let _ = remove_container(&container);
                    return Err(PluginError::Conflict(format!(
                        "host port {} is already in use ({message}); stop what listens on it and start the agent again, or delete the agent and deploy a new one to get another port",
                        spec.port
                    )));
                }
                Err(PluginError::Other(format!("the Docker Engine did not start container {}: {message}", handle.name)))
            }
        }
    }

    fn stop(handle: Vec<u8>, signal: StopSignal, grace_ms: u32) -> Result<(), PluginError> {
        let handle = Handle::decode(&handle)?;
        let response = if signal == StopSignal::Kill {
            engine::post(&format!("/containers/{}/kill", handle.container), None)?
        } else {
            // The engine sends the stop signal given at create, waits `t`
            // seconds, then kills the container.
            let seconds = grace_ms.div_ceil(1000);
            engine::post(&format!("/containers/{}/stop?t={seconds}", handle.container), None)?
        };
        match response.status {
            // 304: already stopped; 404: already gone; 409: kill of a stopped container.
            204 | 304 | 404 | 409 => Ok(()),
            _ => Err(PluginError::Other(format!("the Docker Engine did not stop container {}: {}", handle.name, response.message()))),
        }
    }

    fn destroy(handle: Vec<u8>) -> Result<(), PluginError> {
        let handle = Handle::decode(&handle)?;
        remove_container(&handle.container)
    }

    fn inspect(handle: Vec<u8>) -> Result<TaskStatus, PluginError> {
        let handle = Handle::decode(&handle)?;
        let Some(Container { state, .. }) = inspect_container(&handle.container)? else {
            return Ok(TaskStatus {
                state: TaskState::Missing,
                pid: None,
                exit_code: None,
                oom_killed: false,
                message: format!("container {} does not exist", handle.name),
            });
        };
        if state.running {
            let pid = u32::try_from(state.pid).ok().filter(|pid| *pid != 0);
            let message = if state.paused { "paused" } else { "running" };
            return Ok(TaskStatus { state: TaskState::Running, pid, exit_code: None, oom_killed: false, message: message.into() });
        }
        let mut message = match state.status.as_str() {
            "created" => "container created but not started".to_string(),
            _ => format!("container exited with code {}", state.exit_code),
        };
        if state.oom_killed {
            message.push_str(", killed for running out of memory");
        }
        if !state.error.is_empty() {
            message.push_str(&format!(": {}", state.error));
        }
        let exit_code = (state.status != "created").then_some(state.exit_code);
        Ok(TaskStatus { state: TaskState::Exited, pid: None, exit_code, oom_killed: state.oom_killed, message })
    }

    fn logs(handle: Vec<u8>, max_bytes: u32) -> Result<String, PluginError> {
        let handle = Handle::decode(&handle)?;
        let lines = (max_bytes / 1024).saturating_mul(LOG_LINES_PER_KIB).clamp(100, 50_000);
        let response =
            engine::get(&format!("/containers/{}/logs?stdout=1&stderr=1&tail={lines}", handle.container))?;
        match response.status {
            200 => {}
            404 => return Err(PluginError::NotFound(format!("container {} does not exist", handle.name))),
            _ => return Err(PluginError::Other(format!("cannot read the logs of {}: {}", handle.name, response.message()))),
        }
        let text = engine::demultiplex(&response.body);
        let mut start = text.len().saturating_sub(max_bytes as usize);
        if start > 0 {
            // Begin at a line boundary, as a tail does.
            start = text[start..].iter().position(|b| *b == b'\n').map_or(text.len(), |newline| start + newline + 1);
        }
        Ok(String::from_utf8_lossy(&text[start..]).into_owned())
    }

    fn metrics(handle: Vec<u8>) -> Result<TaskMetrics, PluginError> {
        let handle = Handle::decode(&handle)?;
        let response = engine::get(&format!("/containers/{}/stats?stream=false&one-shot=true", handle.container))?;
        match response.status {
            200 => {}
            404 => return Err(PluginError::NotFound(format!("container {} does not exist", handle.name))),
            _ => return Err(PluginError::Other(format!("cannot read the stats of {}: {}", handle.name, response.message()))),
        }
        let stats: Stats = response.json("the stats request")?;
        // Like `docker stats`, count memory without the inactive page cache.
        let inactive = stats.memory_stats.stats.total_inactive_file.or(stats.memory_stats.stats.inactive_file).unwrap_or(0);
        Ok(TaskMetrics {
            cpu_time_ms: stats.cpu_stats.cpu_usage.total_usage / 1_000_000,
            memory_bytes: stats.memory_stats.usage.saturating_sub(inactive),
            processes: stats.pids_stats.current.min(u64::from(u32::MAX)) as u32,
        })
    }

    fn pause(handle: Vec<u8>, paused: bool) -> Result<(), PluginError> {
        let handle = Handle::decode(&handle)?;
        let action = if paused { "pause" } else { "unpause" };
        let response = engine::post(&format!("/containers/{}/{action}", handle.container), None)?;
        match response.status {
            204 => Ok(()),
            404 => Err(PluginError::NotFound(format!("container {} does not exist", handle.name))),
            409 => Err(PluginError::Conflict(format!("cannot {action} {}: {}", handle.name, response.message()))),
            _ => Err(PluginError::Other(format!("cannot {action} {}: {}", handle.name, response.message()))),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Stats {
    cpu_stats: CpuStats,
    memory_stats: MemoryStats,
    pids_stats: PidsStats,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct CpuStats {
    cpu_usage: CpuUsage,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct CpuUsage {
    /// Nanoseconds of CPU time.
    total_usage: u64,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct MemoryStats {
    usage: u64,
    stats: MemoryDetail,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct MemoryDetail {
    /// cgroup v1.
    total_inactive_file: Option<u64>,
    /// cgroup v2.
    inactive_file: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct PidsStats {
    current: u64,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "PascalCase")]
struct ContainerState {
    status: String,
    running: bool,
    paused: bool,
    #[serde(rename = "OOMKilled")]
    oom_killed: bool,
    pid: i64,
    exit_code: i32,
    error: String,
}

/// A container as the engine reports it: its state and the agent it belongs to.
struct Container {
    state: ContainerState,
    agent_label: Option<String>,
}

/// Inspects a container by id or name, or returns `None` when it does not exist.
fn inspect_container(container: &str) -> Result<Option<Container>, PluginError> {
    #[derive(Deserialize)]
    struct Inspect {
        #[serde(rename = "State", default)]
        state: ContainerState,
        #[serde(rename = "Config", default)]
        config: InspectConfig,
    }
    #[derive(Deserialize, Default)]
    struct InspectConfig {
        #[serde(rename = "Labels", default)]
        labels: Option<std::collections::BTreeMap<String, String>>,
    }
    let response = engine::get(&format!("/containers/{container}/json"))?;
    match response.status {
        200 => {
            let inspect: Inspect = response.json("the container inspection")?;
            let agent_label = inspect.config.labels.and_then(|mut labels| labels.remove(AGENT_LABEL));
            Ok(Some(Container { state: inspect.state, agent_label }))
        }
        404 => Ok(None),
        _ => Err(PluginError::Other(format!("cannot inspect container {container}: {}", response.message()))),
    }
}

/// Removes a container and its anonymous volumes. Removing one that does
/// not exist succeeds.
fn remove_container(container: &str) -> Result<(), PluginError> {
    let response = engine::delete(&format!("/containers/{container}?force=true&v=true"))?;
    match response.status {
        204 | 404 => Ok(()),
        // 409: the engine is already removing it.
        409 if response.message().contains("in progress") => Ok(()),
        _ => Err(PluginError::Other(format!("cannot remove container {container}: {}", response.message()))),
    }
}

fn create_container(spec: &TaskSpec, settings: &Settings, name: &str) -> Result<String, PluginError> {
    if spec.workspace_mount.is_empty() || !spec.workspace_mount.starts_with('/') {
        return Err(PluginError::InvalidInput(format!(
            "the agent type gives no absolute workspace mount (`{}`); a container needs one",
            spec.workspace_mount
        )));
    }
    let body = container_config(spec, settings);
    let path = format!("/containers/create?name={name}");
    let mut response = engine::post(&path, Some(&body))?;
    if response.status == 409 {
        // A container of this name is left from an earlier attempt, such as
        // a host that stopped between creating it and recording its handle.
        let owner = inspect_container(name)?.and_then(|container| container.agent_label);
        match owner {
            Some(owner) if owner == spec.agent_id => {
                log(Level::Info, &format!("removing the leftover container {name} before creating it again"));
                remove_container(name)?;
                response = engine::post(&path, Some(&body))?;
            }
            _ => {
                return Err(PluginError::Conflict(format!(
                    "a container named {name} exists and does not belong to agent {}; remove or rename it",
                    spec.agent_id
                )));
            }
        }
    }
    match response.status {
        201 => {
            #[derive(Deserialize)]
            struct Created {
                #[serde(rename = "Id")]
                id: String,
            }
            let created: Created = response.json("the create request")?;
            if !is_container_ref(&created.id) {
                return Err(PluginError::Other(format!("the Docker Engine returned an odd container id `{}`", created.id)));
            }
            log(Level::Info, &format!("created container {name} from {}", spec.image));
            Ok(created.id)
        }
        404 => Err(missing_image(&spec.image, settings.pull)),
        400 => Err(PluginError::InvalidInput(format!("the Docker Engine rejected the container: {}", response.message()))),
        _ => Err(PluginError::Other(format!("the Docker Engine did not create the container: {}", response.message()))),
    }
}

fn container_config(spec: &TaskSpec, settings: &Settings) -> Value {
    let env: Vec<String> = spec.env.iter().map(|var| format!("{}={}", var.name, var.value)).collect();
    let mut host_config = json!({
        "Mounts": [{ "Type": "bind", "Source": spec.workspace, "Target": spec.workspace_mount }],
        "RestartPolicy": { "Name": "no" },
        // The logs endpoint reads the engine's log; json-file with rotation
        // keeps it readable and bounded whatever the engine's default driver.
        "LogConfig": { "Type": "json-file", "Config": { "max-size": "10m", "max-file": "3" } },
        "SecurityOpt": ["no-new-privileges"],
    });
    let port = format!("{}/tcp", spec.port);
    let mut config = json!({
        "Image": spec.image,
        "Env": env,
        "Labels": { AGENT_LABEL: spec.agent_id, "agentstead.managed-by": "agentstead" },
        "StopSignal": signal_name(spec.stop_signal),
        "StopTimeout": spec.stop_grace_ms.div_ceil(1000),
    });
    match settings.network {
        Network::Host => host_config["NetworkMode"] = json!("host"),
        Network::Bridge => {
            host_config["NetworkMode"] = json!("bridge");
            host_config["PortBindings"] =
                json!({ port.clone(): [{ "HostIp": settings.publish_address, "HostPort": spec.port.to_string() }] });
            config["ExposedPorts"] = json!({ port: {} });
        }
    }
    if !spec.container_args.is_empty() {
        config["Cmd"] = json!(spec.container_args);
    }
    if let Some(uid) = spec.run_as_uid {
        config["User"] = json!(format!("{uid}:{uid}"));
    }
    config["HostConfig"] = host_config;
    config
}

fn signal_name(signal: StopSignal) -> &'static str {
    match signal {
        StopSignal::Term => "SIGTERM",
        StopSignal::Int => "SIGINT",
        StopSignal::Quit => "SIGQUIT",
        StopSignal::Hup => "SIGHUP",
        StopSignal::Kill => "SIGKILL",
    }
}

/// Ensures the engine has `image`, pulling it as `policy` requires.
fn ensure_image(image: &str, policy: Pull) -> Result<(), PluginError> {
    if !is_image_ref(image) {
        return Err(PluginError::InvalidInput(format!("`{image}` is not an image reference")));
    }
    let present = || -> Result<bool, PluginError> {
        let response = engine::get(&format!("/images/{image}/json"))?;
        Ok(response.ok())
    };
    match policy {
        Pull::Always => pull(image, policy),
        Pull::Missing if present()? => Ok(()),
        Pull::Missing => pull(image, policy),
        Pull::Never if present()? => Ok(()),
        Pull::Never => Err(missing_image(image, policy)),
    }
}

fn missing_image(image: &str, policy: Pull) -> PluginError {
    let fix = match policy {
        Pull::Never => "load or build it on the engine (docker load, docker build), or set runtime.docker.pull to `missing`",
        _ => "check the image name and tag (agent_types.TYPE.image and tag in the configuration)",
    };
    PluginError::Unavailable(format!("image `{image}` is not on the Docker Engine; {fix}"))
}

/// Pulls `image`, reading the engine's progress stream for an error.
fn pull(image: &str, policy: Pull) -> Result<(), PluginError> {
    let reference = with_default_tag(image);
    log(Level::Info, &format!("pulling {reference}"));
    let mut pending_line = Vec::new();
    let mut last_error: Option<String> = None;
    let status = engine::post_streaming(&format!("/images/create?fromImage={}", engine::encode(&reference)), &mut |chunk| {
        pending_line.extend_from_slice(chunk);
        while let Some(newline) = pending_line.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending_line.drain(..=newline).collect();
            if let Some(error) = pull_error(&line) {
                last_error = Some(error);
            }
        }
        // A line without an end is kept only up to a sane size.
        if pending_line.len() > 64 * 1024 {
            pending_line.clear();
        }
    })?;
    if let Some(error) = pull_error(&pending_line) {
        last_error = Some(error);
    }
    let reason = match (status, last_error) {
        (200, None) => return Ok(()),
        (_, Some(error)) => error,
        (status, None) => format!("HTTP {status}"),
    };
    let local = match policy {
        Pull::Always => ", or set runtime.docker.pull = \"missing\" to run an image already on the engine",
        _ => "",
    };
    Err(PluginError::Unavailable(format!(
        "pulling image `{reference}` failed: {reason}; check the image name and tag (agent_types.TYPE.image and tag), \
         that the registry is reachable from the engine and that the engine is logged in to it{local}"
    )))
}

/// Returns the error in one line of the engine's pull output: `error` in a
/// progress line, or `message` in an error response.
fn pull_error(line: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(line).ok()?;
    let error = value.get("error").or_else(|| value.get("message"))?.as_str()?;
    Some(error.to_string())
}

/// Adds `:latest` to a reference without a tag or digest, because a pull
/// without a tag fetches every tag of the repository.
fn with_default_tag(image: &str) -> String {
    let name_start = image.rfind('/').map_or(0, |slash| slash + 1);
    if image.contains('@') || image[name_start..].contains(':') { image.to_string() } else { format!("{image}:latest") }
}

fn is_image_ref(image: &str) -> bool {
    !image.is_empty()
        && image.len() <= 512
        && !image.starts_with(['-', '/', ':', '@'])
        && image.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-/:@+".contains(&b))
}

export!(DockerRuntime);
