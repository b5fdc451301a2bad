//! Agent type `testkit`, used by the test suite only.
//!
//! The agent's name selects the behaviour, so tests drive every path through
//! the public API:
//! - `trap`, `loop`, `oom`: `plan` panics, never returns, or allocates until
//!   the sandbox's memory cap stops it;
//! - `crash`: the agent exits with code 3 right after it starts;
//! - `unhealthy`: the agent runs but its health path returns 404;
//! - `forking`: the agent leaves a child process in its process group;
//! - `slow-stop`: the agent ignores SIGTERM, so stop must escalate to SIGKILL;
//! - anything else: `python3 -m http.server` on the allocated port, healthy at `/`.
//!
//! In a container the agent is busybox `httpd` serving `www/` of the
//! workspace, healthy at `/healthz`, and `/version` shows the image's
//! `/version` file. The image runs as user 65534, so a start proves the
//! workspace is writable by that user.

wit_bindgen::generate!({ path: "../../../wit", world: "agent" });

use agentstead::plugin::types::{EnvVar, PluginError, PluginInfo, PluginKind, StopSignal};
use exports::agentstead::plugin::agent_driver::{
    AgentInfo, ConfigFile, DeployContext, Guest as AgentDriver, HealthProbe, LaunchPlan, Target,
};
use exports::agentstead::plugin::plugin::Guest as Plugin;

struct Testkit;

impl Plugin for Testkit {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "agent-testkit".into(),
            kind: PluginKind::Agent,
            version: env!("CARGO_PKG_VERSION").into(),
            abi: "0.1.0".into(),
            description: "test agent: python3 http.server, or a deliberately broken plugin".into(),
        }
    }
}

impl AgentDriver for Testkit {
    fn info() -> AgentInfo {
        AgentInfo {
            agent_type: "testkit".into(),
            id_prefix: "tk".into(),
            program: "python3".into(),
            install_hint: "install Python 3".into(),
            image: "agentstead/testkit:latest".into(),
            workspace_mount: "/data".into(),
        }
    }

    fn plan(context: DeployContext) -> Result<LaunchPlan, PluginError> {
        match context.name.as_str() {
            "trap" => panic!("testkit was asked to trap"),
            "loop" => spin_forever(),
            "oom" => exhaust_memory(),
            _ => Ok(launch_plan(&context)),
        }
    }
}

fn launch_plan(context: &DeployContext) -> LaunchPlan {
    if context.target == Target::Container {
        return container_plan(context);
    }
    let port = context.port.to_string();
    let serve = format!("exec python3 -u -m http.server {port} --bind 127.0.0.1");
    let (script, health_path, grace) = match context.name.as_str() {
        "crash" => ("echo testkit crashing; exit 3".to_string(), "/", 2_000),
        "unhealthy" => (serve, "/no-such-page", 2_000),
        "forking" => (format!("sleep 600 & {serve}"), "/", 2_000),
        "slow-stop" => (format!("trap '' TERM; python3 -u -m http.server {port} --bind 127.0.0.1"), "/", 1_000),
        _ => (serve, "/", 2_000),
    };

    LaunchPlan {
        command: vec!["sh".into(), "-c".into(), script],
        container_args: Vec::new(),
        image: "agentstead/testkit:latest".into(),
        env: vec![EnvVar { name: "TESTKIT_AGENT".into(), value: context.agent_id.clone() }],
        generated_env: vec!["TESTKIT_TOKEN".into()],
        secret_env: Vec::new(),
        reserved_env: Vec::new(),
        run_as_uid: None,
        files: vec![ConfigFile {
            path: "testkit.txt".into(),
            contents: format!("agent {}\n", context.agent_id),
            mode: 0o644,
            overwrite: false,
        }],
        health: HealthProbe { path: health_path.into(), startup_timeout_ms: 5_000 },
        stop_signal: StopSignal::Term,
        stop_grace_ms: grace,
    }
}

fn container_plan(context: &DeployContext) -> LaunchPlan {
    let www = format!("{}/www", context.workspace.trim_end_matches('/'));
    let serve = format!(
        "echo testkit container $TESTKIT_AGENT starting; mkdir -p {www} && echo ok > {www}/healthz && \
         cat /version > {www}/version && exec httpd -f -v -p 0.0.0.0:{port} -h {www}",
        port = context.port
    );
    let script = match context.name.as_str() {
        "crash" => "echo testkit crashing; exit 3".to_string(),
        _ => serve,
    };
    LaunchPlan {
        command: Vec::new(),
        container_args: vec!["/bin/sh".into(), "-c".into(), script],
        image: "agentstead/testkit:latest".into(),
        env: vec![EnvVar { name: "TESTKIT_AGENT".into(), value: context.agent_id.clone() }],
        generated_env: vec!["TESTKIT_TOKEN".into()],
        secret_env: Vec::new(),
        reserved_env: Vec::new(),
        run_as_uid: Some(65534),
        files: vec![ConfigFile {
            path: "testkit.txt".into(),
            contents: format!("agent {}\n", context.agent_id),
            mode: 0o644,
            overwrite: false,
        }],
        health: HealthProbe { path: "/healthz".into(), startup_timeout_ms: 10_000 },
        stop_signal: StopSignal::Term,
        stop_grace_ms: 2_000,
    }
}

fn spin_forever() -> ! {
    let mut counter: u64 = 0;
    loop {
        counter = std::hint::black_box(counter.wrapping_add(1));
    }
}

fn exhaust_memory() -> ! {
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut block = vec![0u8; 16 << 20];
        block[0] = 1;
        blocks.push(std::hint::black_box(block));
    }
}

export!(Testkit);
