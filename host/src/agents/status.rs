use std::fmt;

/// Status of an agent as the API reports it.
///
/// `ONLINE`, `OFFLINE` and `ERROR` are settled; the others last while an
/// operation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentStatus {
    Deploying,
    Starting,
    Stopping,
    Restarting,
    Redeploying,
    Online,
    Offline,
    Error,
}

impl AgentStatus {
    pub const ALL: [AgentStatus; 8] = [
        AgentStatus::Deploying,
        AgentStatus::Starting,
        AgentStatus::Stopping,
        AgentStatus::Restarting,
        AgentStatus::Redeploying,
        AgentStatus::Online,
        AgentStatus::Offline,
        AgentStatus::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AgentStatus::Deploying => "DEPLOYING",
            AgentStatus::Starting => "STARTING",
            AgentStatus::Stopping => "STOPPING",
            AgentStatus::Restarting => "RESTARTING",
            AgentStatus::Redeploying => "REDEPLOYING",
            AgentStatus::Online => "ONLINE",
            AgentStatus::Offline => "OFFLINE",
            AgentStatus::Error => "ERROR",
        }
    }

    pub fn parse(value: &str) -> Option<AgentStatus> {
        AgentStatus::ALL.into_iter().find(|status| status.as_str() == value)
    }

    pub fn is_settled(self) -> bool {
        matches!(self, AgentStatus::Online | AgentStatus::Offline | AgentStatus::Error)
    }
}

impl fmt::Display for AgentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
