//! Agent-type plugin for ZeroClaw, an agent runtime written in Rust.
//!
//! `zeroclaw daemon --host HOST --port PORT` runs the gateway with its
//! supervisors and serves `GET /health`. ZeroClaw reads its configuration from
//! `ZEROCLAW_CONFIG_DIR` and its data from `ZEROCLAW_DATA_DIR`. From 0.8 it
//! reads provider keys only as `ZEROCLAW_providers__models__<provider>__api_key`
//! and aborts at startup on any `ZEROCLAW_*` variable it does not know, so the
//! plan maps the usual provider variables and never invents others.

wit_bindgen::generate!({ path: "../../wit", world: "agent" });

use agentstead::plugin::types::{EnvVar, PluginError, PluginInfo, PluginKind, StopSignal};
use exports::agentstead::plugin::agent_driver::{
    AgentInfo, ConfigFile, DeployContext, Guest as AgentDriver, HealthProbe, LaunchPlan, SecretMapping, Target,
};
use exports::agentstead::plugin::plugin::Guest as Plugin;

struct ZeroClaw;

/// Provider key variables that other tools use, and the ZeroClaw provider
/// each one configures.
const PROVIDER_KEYS: &[(&str, &str)] = &[
    ("ANTHROPIC_API_KEY", "anthropic"),
    ("OPENAI_API_KEY", "openai"),
    ("OPENROUTER_API_KEY", "openrouter"),
    ("GEMINI_API_KEY", "gemini"),
    ("GROQ_API_KEY", "groq"),
    ("MISTRAL_API_KEY", "mistral"),
    ("DEEPSEEK_API_KEY", "deepseek"),
    ("XAI_API_KEY", "xai"),
];

impl Plugin for ZeroClaw {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "agent-zeroclaw".into(),
            kind: PluginKind::Agent,
            version: env!("CARGO_PKG_VERSION").into(),
            abi: "0.1.0".into(),
            description: "ZeroClaw daemon (`zeroclaw daemon`, 0.8 or newer)".into(),
        }
    }
}

impl AgentDriver for ZeroClaw {
    fn info() -> AgentInfo {
        AgentInfo {
            agent_type: "zeroclaw".into(),
            id_prefix: "zc".into(),
            program: "zeroclaw".into(),
            install_hint: "install the `zeroclaw` binary (0.8 or newer) from a ZeroClaw release and put it on the PATH"
                .into(),
            image: "ghcr.io/zeroclaw-labs/zeroclaw:latest".into(),
            workspace_mount: "/zeroclaw-data".into(),
        }
    }

    fn plan(context: DeployContext) -> Result<LaunchPlan, PluginError> {
        if let Some(name) = context.secret_names.iter().find(|name| name.starts_with("ZEROCLAW_")) {
            return Err(PluginError::InvalidInput(format!(
                "secret `{name}` would reach ZeroClaw as an unknown ZEROCLAW_* variable, which aborts its startup; \
                 store provider keys under their usual names, such as ANTHROPIC_API_KEY"
            )));
        }

        let host = match context.target {
            Target::Process => "127.0.0.1",
            Target::Container => "0.0.0.0",
        };
        let port = context.port.to_string();
        let args = |first: &str| {
            vec![first.to_string(), "daemon".into(), "--host".into(), host.into(), "--port".into(), port.clone()]
        };
        let workspace = context.workspace.trim_end_matches('/');

        let mut files = Vec::new();
        if context.target == Target::Container {
            // ZeroClaw refuses a non-loopback bind unless the config allows it.
            let config = "[gateway]\nallow_public_bind = true\n".to_string();
            files.push(ConfigFile { path: "config/config.toml".into(), contents: config, mode: 0o600, overwrite: false });
        }

        let secret_env = context
            .secret_names
            .iter()
            .filter_map(|secret| {
                let (_, provider) = PROVIDER_KEYS.iter().find(|(name, _)| name == secret)?;
                Some(SecretMapping {
                    secret: secret.clone(),
                    env: format!("ZEROCLAW_providers__models__{provider}__api_key"),
                })
            })
            .collect();

        Ok(LaunchPlan {
            command: args("zeroclaw"),
            container_args: args("zeroclaw"),
            image: Self::info().image,
            env: vec![
                EnvVar { name: "ZEROCLAW_CONFIG_DIR".into(), value: format!("{workspace}/config") },
                EnvVar { name: "ZEROCLAW_DATA_DIR".into(), value: format!("{workspace}/data") },
                EnvVar { name: "HOME".into(), value: workspace.to_string() },
            ],
            generated_env: Vec::new(),
            secret_env,
            reserved_env: Vec::new(),
            run_as_uid: Some(65534),
            files,
            health: HealthProbe { path: "/health".into(), startup_timeout_ms: 30_000 },
            stop_signal: StopSignal::Term,
            stop_grace_ms: 5_000,
        })
    }
}

export!(ZeroClaw);
