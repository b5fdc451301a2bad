//! Agent-type plugin for OpenClaw, a Node.js agent gateway.
//!
//! The gateway is `openclaw gateway` (OpenClaw 2026.9 needs Node.js 24 or
//! newer). It keeps its state in `OPENCLAW_STATE_DIR` and serves `GET /healthz`
//! with `{"ok":true,"status":"live"}` once ready. It rejects a non-loopback
//! bind unless a gateway token is set, so the plan always requests a
//! generated `OPENCLAW_GATEWAY_TOKEN`.

wit_bindgen::generate!({ path: "../../wit", world: "agent" });

use agentstead::plugin::types::{EnvVar, PluginError, PluginInfo, PluginKind, StopSignal};
use exports::agentstead::plugin::agent_driver::{
    AgentInfo, DeployContext, Guest as AgentDriver, HealthProbe, LaunchPlan, Target,
};
use exports::agentstead::plugin::plugin::Guest as Plugin;

struct OpenClaw;

const TOKEN_VAR: &str = "OPENCLAW_GATEWAY_TOKEN";

impl Plugin for OpenClaw {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "agent-openclaw".into(),
            kind: PluginKind::Agent,
            version: env!("CARGO_PKG_VERSION").into(),
            abi: "0.1.0".into(),
            description: "OpenClaw gateway (Node.js 24+, `openclaw gateway`)".into(),
        }
    }
}

impl AgentDriver for OpenClaw {
    fn info() -> AgentInfo {
        AgentInfo {
            agent_type: "openclaw".into(),
            id_prefix: "oc".into(),
            program: "openclaw".into(),
            install_hint: "install Node.js 24 or newer, then run `npm install -g openclaw`".into(),
            image: "ghcr.io/openclaw/openclaw:latest".into(),
            workspace_mount: "/home/node/.openclaw".into(),
        }
    }

    fn plan(context: DeployContext) -> Result<LaunchPlan, PluginError> {
        let bind = match context.target {
            Target::Process => "loopback",
            // Inside a container the gateway must listen beyond loopback to
            // be reachable through the published port.
            Target::Container => "lan",
        };
        let port = context.port.to_string();
        let gateway_args = |program: Option<&str>| {
            let mut args: Vec<String> = program.into_iter().map(String::from).collect();
            for arg in ["gateway", "--port", &port, "--allow-unconfigured", "--auth", "token", "--bind", bind] {
                args.push(arg.to_string());
            }
            args
        };

        let workspace = context.workspace.trim_end_matches('/');
        let env = vec![
            var("OPENCLAW_STATE_DIR", workspace.to_string()),
            var("OPENCLAW_CONFIG_PATH", format!("{workspace}/openclaw.json")),
            var("HOME", workspace.to_string()),
            // The gateway colours its output for terminals; the log file is
            // read as plain text.
            var("NO_COLOR", "1".into()),
            var("FORCE_COLOR", "0".into()),
        ];

        Ok(LaunchPlan {
            command: gateway_args(Some("openclaw")),
            container_args: gateway_args(Some("openclaw")),
            image: Self::info().image,
            env,
            generated_env: vec![TOKEN_VAR.into()],
            secret_env: Vec::new(),
            reserved_env: vec![TOKEN_VAR.into()],
            run_as_uid: Some(1000),
            files: Vec::new(),
            health: HealthProbe { path: "/healthz".into(), startup_timeout_ms: 120_000 },
            stop_signal: StopSignal::Term,
            stop_grace_ms: 10_000,
        })
    }
}

fn var(name: &str, value: String) -> EnvVar {
    EnvVar { name: name.into(), value }
}

export!(OpenClaw);
