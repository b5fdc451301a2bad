//! Host bindings generated from `wit/` for each world.
//!
//! The worlds share `types` and `logging`, so the runtime bindings reuse the
//! agent bindings' modules for them and one Rust type serves both.

pub mod agent {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "agent",
        exports: { default: async },
    });
}

pub mod runtime {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "runtime",
        imports: { default: async },
        exports: { default: async },
        with: {
            "agentstead:plugin/types": super::agent::agentstead::plugin::types,
            "agentstead:plugin/logging": super::agent::agentstead::plugin::logging,
        },
    });
}

pub mod storage {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "storage",
        imports: { default: async },
        exports: { default: async },
        with: {
            "agentstead:plugin/types": super::agent::agentstead::plugin::types,
            "agentstead:plugin/logging": super::agent::agentstead::plugin::logging,
            "agentstead:plugin/blobs.upload": crate::plugins::storage::UploadState,
        },
    });
}

pub use agent::agentstead::plugin::types::{EnvVar, PluginError as GuestError, PluginInfo, PluginKind, StopSignal};
pub use agent::exports::agentstead::plugin::agent_driver::{
    AgentInfo, ConfigFile, DeployContext, HealthProbe, LaunchPlan, SecretMapping, Target,
};
pub use runtime::exports::agentstead::plugin::runtime_driver::{
    RuntimeCapabilities, Setting, TaskMetrics, TaskSpec, TaskState, TaskStatus,
};
