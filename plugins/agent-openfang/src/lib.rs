//! Agent-type plugin for OpenFang, an agent operating system written in Rust.
//!
//! `openfang start` runs the daemon. It reads `$OPENFANG_HOME/config.toml`,
//! listens on the `api_listen` address from that file (127.0.0.1:4200 when
//! unset) and serves `GET /api/health`. The plan writes `config.toml` with the
//! port the host allocated, so the driver owns that file.

wit_bindgen::generate!({ path: "../../wit", world: "agent" });

use agentstead::plugin::types::{EnvVar, PluginError, PluginInfo, PluginKind, StopSignal};
use exports::agentstead::plugin::agent_driver::{
    AgentInfo, ConfigFile, DeployContext, Guest as AgentDriver, HealthProbe, LaunchPlan, Target,
};
use exports::agentstead::plugin::plugin::Guest as Plugin;

struct OpenFang;

impl Plugin for OpenFang {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "agent-openfang".into(),
            kind: PluginKind::Agent,
            version: env!("CARGO_PKG_VERSION").into(),
            abi: "0.1.0".into(),
            description: "OpenFang daemon (`openfang start`)".into(),
        }
    }
}

impl AgentDriver for OpenFang {
    fn info() -> AgentInfo {
        AgentInfo {
            agent_type: "openfang".into(),
            id_prefix: "of".into(),
            program: "openfang".into(),
            install_hint: "install the `openfang` binary from an OpenFang release and put it on the PATH".into(),
            image: "ghcr.io/rightnow-ai/openfang:latest".into(),
            workspace_mount: "/root/.openfang".into(),
        }
    }

    fn plan(context: DeployContext) -> Result<LaunchPlan, PluginError> {
        let host = match context.target {
            Target::Process => "127.0.0.1",
            Target::Container => "0.0.0.0",
        };
        let workspace = context.workspace.trim_end_matches('/');
        let config = format!(
            "# Written by AgentStead at every start: the listen address must match\n\
             # the port the control plane allocated.\n\
             api_listen = \"{host}:{port}\"\n",
            port = context.port
        );

        Ok(LaunchPlan {
            command: vec!["openfang".into(), "start".into()],
            container_args: vec!["openfang".into(), "start".into()],
            image: Self::info().image,
            env: vec![
                EnvVar { name: "OPENFANG_HOME".into(), value: workspace.to_string() },
                EnvVar { name: "HOME".into(), value: workspace.to_string() },
            ],
            generated_env: Vec::new(),
            secret_env: Vec::new(),
            reserved_env: Vec::new(),
            // The published image runs as root.
            run_as_uid: Some(0),
            files: vec![ConfigFile { path: "config.toml".into(), contents: config, mode: 0o600, overwrite: true }],
            health: HealthProbe { path: "/api/health".into(), startup_timeout_ms: 60_000 },
            stop_signal: StopSignal::Term,
            stop_grace_ms: 10_000,
        })
    }
}

export!(OpenFang);
