//! Agent type built against `agentstead:plugin@0.2.0`, used by the test
//! suite only: the host must reject it with both versions in the message.

wit_bindgen::generate!({ path: "wit", world: "agent" });

use agentstead::plugin::types::{PluginInfo, PluginKind};

struct Future;

impl exports::agentstead::plugin::plugin::Guest for Future {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "agent-future".into(),
            kind: PluginKind::Agent,
            version: env!("CARGO_PKG_VERSION").into(),
            abi: "0.2.0".into(),
            description: "test agent type built against a future contract".into(),
        }
    }
}

impl exports::agentstead::plugin::agent_driver::Guest for Future {
    fn agent_type() -> String {
        "future".into()
    }
}

export!(Future);
