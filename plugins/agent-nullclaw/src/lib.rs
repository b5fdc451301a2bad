//! Agent-type plugin for NullClaw, a small agent runtime written in Zig.
//!
//! `nullclaw gateway --port PORT` serves `GET /health`. NullClaw keeps its
//! state and `config.json` under `NULLCLAW_HOME` and binds to 127.0.0.1 unless
//! the config sets `gateway.host` and `gateway.allow_public_bind`, which the
//! plan does for containers only, and only when no config exists yet.

wit_bindgen::generate!({ path: "../../wit", world: "agent" });

use agentstead::plugin::types::{EnvVar, PluginError, PluginInfo, PluginKind, StopSignal};
use exports::agentstead::plugin::agent_driver::{
    AgentInfo, ConfigFile, DeployContext, Guest as AgentDriver, HealthProbe, LaunchPlan, Target,
};
use exports::agentstead::plugin::plugin::Guest as Plugin;

struct NullClaw;

impl Plugin for NullClaw {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "agent-nullclaw".into(),
            kind: PluginKind::Agent,
            version: env!("CARGO_PKG_VERSION").into(),
            abi: "0.1.0".into(),
            description: "NullClaw gateway (`nullclaw gateway`)".into(),
        }
    }
}

impl AgentDriver for NullClaw {
    fn info() -> AgentInfo {
        AgentInfo {
            agent_type: "nullclaw".into(),
            id_prefix: "nc".into(),
            program: "nullclaw".into(),
            install_hint: "install the `nullclaw` binary from a NullClaw release and put it on the PATH".into(),
            image: "ghcr.io/nullclaw/nullclaw:latest".into(),
            workspace_mount: "/nullclaw-data".into(),
        }
    }

    fn plan(context: DeployContext) -> Result<LaunchPlan, PluginError> {
        let port = context.port.to_string();
        let args = |first: &str| vec![first.to_string(), "gateway".into(), "--port".into(), port.clone()];
        let workspace = context.workspace.trim_end_matches('/');

        let mut files = Vec::new();
        if context.target == Target::Container {
            let config = format!(
                "{{\"gateway\": {{\"host\": \"0.0.0.0\", \"port\": {port}, \"allow_public_bind\": true, \"require_pairing\": true}}}}\n"
            );
            files.push(ConfigFile { path: "config.json".into(), contents: config, mode: 0o600, overwrite: false });
        }

        Ok(LaunchPlan {
            command: args("nullclaw"),
            container_args: args("nullclaw"),
            image: Self::info().image,
            env: vec![
                EnvVar { name: "NULLCLAW_HOME".into(), value: workspace.to_string() },
                EnvVar { name: "HOME".into(), value: workspace.to_string() },
            ],
            generated_env: Vec::new(),
            secret_env: Vec::new(),
            reserved_env: Vec::new(),
            run_as_uid: Some(65534),
            files,
            health: HealthProbe { path: "/health".into(), startup_timeout_ms: 30_000 },
            stop_signal: StopSignal::Term,
            stop_grace_ms: 5_000,
        })
    }
}

export!(NullClaw);
