//! A replacement for the built-in `agent-openclaw`, used by the test suite
//! only. It keeps the plugin name and the `openclaw` agent type but serves
//! the workspace with `python3 -m http.server`, so a test can tell after a
//! reload which of the two plugins planned an agent.

wit_bindgen::generate!({ path: "../../../wit", world: "agent" });

use agentstead::plugin::types::{EnvVar, PluginError, PluginInfo, PluginKind, StopSignal};
use exports::agentstead::plugin::agent_driver::{
    AgentInfo, DeployContext, Guest as AgentDriver, HealthProbe, LaunchPlan,
};
use exports::agentstead::plugin::plugin::Guest as Plugin;

struct Replacement;

impl Plugin for Replacement {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "agent-openclaw".into(),
            kind: PluginKind::Agent,
            version: "9.9.9-python".into(),
            abi: "0.1.0".into(),
            description: "test replacement: python3 http.server as openclaw".into(),
        }
    }
}

impl AgentDriver for Replacement {
    fn info() -> AgentInfo {
        AgentInfo {
            agent_type: "openclaw".into(),
            id_prefix: "oc".into(),
            program: "python3".into(),
            install_hint: "install Python 3".into(),
            image: "agentstead/none:latest".into(),
            workspace_mount: "/data".into(),
        }
    }

    fn plan(context: DeployContext) -> Result<LaunchPlan, PluginError> {
        let port = context.port.to_string();
        Ok(LaunchPlan {
            command: vec!["python3".into(), "-m".into(), "http.server".into(), port, "--bind".into(), "127.0.0.1".into()],
            container_args: Vec::new(),
            image: Self::info().image,
            env: vec![EnvVar { name: "PLANNED_BY".into(), value: "agent-openclaw-python".into() }],
            generated_env: Vec::new(),
            secret_env: Vec::new(),
            reserved_env: Vec::new(),
            run_as_uid: None,
            files: Vec::new(),
            health: HealthProbe { path: "/".into(), startup_timeout_ms: 5_000 },
            stop_signal: StopSignal::Term,
            stop_grace_ms: 2_000,
        })
    }
}

export!(Replacement);
