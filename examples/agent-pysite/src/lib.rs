//! Agent type `pysite`: a small web site served by Python's `http.server`.
//!
//! This crate is an example of a third-party agent-type plugin. It depends
//! on nothing from AgentStead but the released WIT contract, builds with
//! `cargo build --release --target wasm32-wasip2`, and is loaded from the
//! host's plugin directory. It shows the parts of a launch plan:
//! - a command for the process runtime and arguments for container runtimes;
//! - a config file written into the workspace once, so later edits survive;
//! - a secret renamed on its way into the environment;
//! - a health path, a stop signal and a grace period.

wit_bindgen::generate!({ path: "../../wit/released/0.1.0", world: "agent" });

use agentstead::plugin::logging::{Level, log};
use agentstead::plugin::types::{EnvVar, PluginError, PluginInfo, PluginKind, StopSignal};
use exports::agentstead::plugin::agent_driver::{
    AgentInfo, ConfigFile, DeployContext, Guest as AgentDriver, HealthProbe, LaunchPlan, SecretMapping, Target,
};
use exports::agentstead::plugin::plugin::Guest as Plugin;

struct PySite;

impl Plugin for PySite {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "agent-pysite".into(),
            kind: PluginKind::Agent,
            version: env!("CARGO_PKG_VERSION").into(),
            abi: "0.1.0".into(),
            description: "a static web site served by python3 -m http.server".into(),
        }
    }
}

impl AgentDriver for PySite {
    fn info() -> AgentInfo {
        AgentInfo {
            agent_type: "pysite".into(),
            id_prefix: "ps".into(),
            program: "python3".into(),
            install_hint: "install Python 3 and add python3 to runtime.process.allowed_programs".into(),
            image: "python:3-slim".into(),
            workspace_mount: "/srv/site".into(),
        }
    }

    fn plan(context: DeployContext) -> Result<LaunchPlan, PluginError> {
        if context.port < 1024 {
            return Err(PluginError::InvalidInput(format!("port {} needs privileges; use a port range above 1023", context.port)));
        }
        // A process shares the host's network and stays on loopback; a
        // container must listen beyond it to be reachable.
        let bind = match context.target {
            Target::Process => "127.0.0.1",
            Target::Container => "0.0.0.0",
        };
        let site = format!("{}/public", context.workspace.trim_end_matches('/'));
        let args = ["-m", "http.server", &context.port.to_string(), "--bind", bind, "--directory", &site].map(String::from);
        log(Level::Debug, &format!("planning {} on port {}", context.agent_id, context.port));

        Ok(LaunchPlan {
            command: std::iter::once("python3".to_string()).chain(args.iter().cloned()).collect(),
            container_args: std::iter::once("python3".to_string()).chain(args.iter().cloned()).collect(),
            image: Self::info().image,
            env: vec![EnvVar { name: "PYTHONUNBUFFERED".into(), value: "1".into() }],
            generated_env: Vec::new(),
            // A user stores `SITE_TOKEN`; the site reads it as `PYSITE_TOKEN`.
            secret_env: vec![SecretMapping { secret: "SITE_TOKEN".into(), env: "PYSITE_TOKEN".into() }],
            reserved_env: Vec::new(),
            run_as_uid: Some(65534),
            files: vec![ConfigFile {
                path: "public/index.html".into(),
                contents: format!("<!doctype html>\n<title>{name}</title>\n<h1>{name}</h1>\n", name = escape_html(&context.name)),
                mode: 0o644,
                overwrite: false,
            }],
            health: HealthProbe { path: "/index.html".into(), startup_timeout_ms: 10_000 },
            stop_signal: StopSignal::Int,
            stop_grace_ms: 3_000,
        })
    }
}

/// Escapes the characters HTML gives a meaning to, since an agent's name is user input.
fn escape_html(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '&' => escaped.push_str("&amp;"),
            '"' => escaped.push_str("&quot;"),
            other => escaped.push(other),
        }
    }
    escaped
}

export!(PySite);
