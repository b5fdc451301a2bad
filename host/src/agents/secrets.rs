//! An agent's secrets: the rules for their names, and how they reach the
//! agent's environment.
//!
//! Values are decrypted only here, right before a start, and go to the
//! runtime plugin in the task's environment. The agent-type plugin gets the
//! names alone. A change takes effect at the next start, restart or redeploy.

use super::{AgentDirs, AgentError, AgentService, deploy_context};
use crate::plugins::{EnvVar, GuestErrorMessage, LaunchPlan, PluginError};
use crate::secrets::{self, MAX_SECRETS_PER_AGENT};
use crate::store::{AgentRow, SecretRow, StoreError};

/// Names the runtime sets for every agent.
const RUNTIME_NAMES: &[&str] = &["PATH", "HOME"];

/// Returns why `key` cannot be a secret of an agent with this plan, if it cannot.
fn reserved_reason(key: &str, plan: &LaunchPlan) -> Option<String> {
    if RUNTIME_NAMES.contains(&key) {
        return Some("the runtime sets it for every agent".into());
    }
    if key.starts_with("LD_") {
        return Some("LD_* variables change how programs are loaded".into());
    }
    if plan.env.iter().any(|var| var.name == key) {
        return Some("the agent type's driver sets it".into());
    }
    if plan.generated_env.iter().any(|name| name == key) {
        return Some("the host generates it for this agent type".into());
    }
    if plan.reserved_env.iter().any(|name| name == key) {
        return Some("the agent type's driver reserves it".into());
    }
    None
}

/// Builds the environment of an agent: the plan's variables, the generated
/// ones, then the secrets under the name the driver maps them to. A secret
/// whose name the plan reserves is left out and reported with the reason.
pub(super) fn agent_env(
    plan: &LaunchPlan,
    generated: Vec<(String, String)>,
    secrets: Vec<(String, String)>,
) -> (Vec<EnvVar>, Vec<(String, String)>) {
    let mut env: Vec<EnvVar> = plan.env.clone();
    env.extend(generated.into_iter().map(|(name, value)| EnvVar { name, value }));

    let mut skipped = Vec::new();
    for (key, value) in secrets {
        if let Some(reason) = reserved_reason(&key, plan) {
            skipped.push((key, reason));
            continue;
        }
        let name = plan.secret_env.iter().find(|mapping| mapping.secret == key).map_or(key, |mapping| mapping.env.clone());
        if env.iter().any(|var| var.name == name) {
            skipped.push((name, "another variable already has this name".into()));
            continue;
        }
        env.push(EnvVar { name, value });
    }
    (env, skipped)
}

impl AgentService {
    /// Decrypts the agent's secrets, ordered by key.
    pub(super) async fn secret_values(&self, agent_id: &str) -> Result<Vec<(String, String)>, AgentError> {
        let rows = self.store.secrets(agent_id).await?;
        rows.iter().map(|row| Ok((row.key.clone(), self.keyring.decrypt(row)?))).collect()
    }

    /// Key names and change times of an agent's secrets; never values.
    pub async fn list_secrets(&self, user_id: &str, agent_id: &str) -> Result<Vec<SecretRow>, AgentError> {
        self.get(user_id, agent_id).await?;
        let mut rows = self.store.secrets(agent_id).await?;
        for row in &mut rows {
            row.ciphertext.clear();
        }
        Ok(rows)
    }

    /// Creates or replaces a secret. Returns true when the key is new, the
    /// agent as it is now, and the stored change time.
    pub async fn set_secret(
        &self,
        user_id: &str,
        agent_id: &str,
        key: &str,
        value: &str,
    ) -> Result<(bool, AgentRow, i64), AgentError> {
        let agent = self.get(user_id, agent_id).await?;
        secrets::validate_key(key)?;
        secrets::validate_value(key, value)?;
        self.check_secret_name(&agent, key).await?;

        let ciphertext = self.keyring.encrypt(value)?;
        let created = match self.store.put_secret(agent_id, key, &ciphertext, MAX_SECRETS_PER_AGENT).await {
            Ok(created) => created,
            Err(StoreError::Limit { .. }) => {
                return Err(AgentError::TooManySecrets {
                    agent_id: agent_id.to_string(),
                    key: key.to_string(),
                    max: MAX_SECRETS_PER_AGENT,
                });
            }
            Err(error) => return Err(error.into()),
        };
        tracing::info!(agent_id, key, created, "secret stored");
        let agent = self.get(user_id, agent_id).await?;
        let updated_at = agent.secrets_changed_at.unwrap_or_default();
        Ok((created, agent, updated_at))
    }

    pub async fn delete_secret(&self, user_id: &str, agent_id: &str, key: &str) -> Result<(), AgentError> {
        // A key that could never have been stored is not found, without a query.
        if crate::secrets::validate_key(key).is_err() {
            return Err(AgentError::SecretNotFound { agent_id: agent_id.to_string(), key: key.chars().take(80).collect() });
        }
        self.get(user_id, agent_id).await?;
        if !self.store.delete_secret(agent_id, key).await? {
            return Err(AgentError::SecretNotFound { agent_id: agent_id.to_string(), key: key.to_string() });
        }
        tracing::info!(agent_id, key, "secret deleted");
        Ok(())
    }

    /// Returns the values the host generates for the agent's plan, such as
    /// OpenClaw's gateway token, which clients of the agent itself need.
    pub async fn generated_values(&self, user_id: &str, agent_id: &str) -> Result<Vec<(String, String)>, AgentError> {
        let agent = self.get(user_id, agent_id).await?;
        let plan = self.current_plan(&agent, None).await?;
        Ok(plan
            .generated_env
            .iter()
            .map(|name| (name.clone(), self.host_key.derive("generated-env", &[&agent.id, name])))
            .collect())
    }

    /// Asks the driver for the agent's current plan, with `extra_secret`
    /// added to the secret names if given.
    pub(super) async fn current_plan(&self, agent: &AgentRow, extra_secret: Option<&str>) -> Result<LaunchPlan, AgentError> {
        let driver = self.plugins.agent_type(&agent.agent_type).ok_or_else(|| AgentError::InvalidAgentType {
            given: agent.agent_type.clone(),
            accepted: self.plugins.agent_types(),
        })?;
        let runtime = self.plugins.get(&agent.runtime)?;
        let mut names: Vec<String> = self.store.secrets(&agent.id).await?.into_iter().map(|row| row.key).collect();
        if let Some(key) = extra_secret {
            if !names.iter().any(|name| name == key) {
                names.push(key.to_string());
            }
        }
        let port = u16::try_from(agent.port).unwrap_or_default();
        let dirs = AgentDirs::new(&self.config, &agent.id);
        let context = deploy_context(&agent.id, &agent.name, &agent.region, port, &runtime, &driver, &dirs, names);
        Ok(self.plugins.plan(&driver, &context).await?)
    }

    /// Asks the agent's driver for a plan that includes `key` among the
    /// secret names, and rejects names the runtime, the plan or the driver
    /// claim. The driver may also reject the name itself, as ZeroClaw's does
    /// for `ZEROCLAW_*`.
    async fn check_secret_name(&self, agent: &AgentRow, key: &str) -> Result<(), AgentError> {
        let plan = match self.current_plan(agent, Some(key)).await {
            Ok(plan) => plan,
            // The driver rejects the name itself, as ZeroClaw's does for `ZEROCLAW_*`.
            Err(AgentError::Plugin(PluginError::Returned { error: GuestErrorMessage::InvalidInput(reason), .. })) => {
                return Err(AgentError::ReservedSecret { key: key.to_string(), reason });
            }
            Err(error) => return Err(error),
        };
        match reserved_reason(key, &plan) {
            Some(reason) => Err(AgentError::ReservedSecret { key: key.to_string(), reason }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::bindings::{HealthProbe, SecretMapping};
    use crate::plugins::StopSignal;

    fn plan() -> LaunchPlan {
        LaunchPlan {
            command: vec!["zeroclaw".into()],
            container_args: Vec::new(),
            image: String::new(),
            env: vec![EnvVar { name: "ZEROCLAW_CONFIG_DIR".into(), value: "/w/config".into() }],
            generated_env: vec!["GATEWAY_TOKEN".into()],
            secret_env: vec![SecretMapping {
                secret: "ANTHROPIC_API_KEY".into(),
                env: "ZEROCLAW_providers__models__anthropic__api_key".into(),
            }],
            reserved_env: vec!["DRIVER_ONLY".into()],
            run_as_uid: None,
            files: Vec::new(),
            health: HealthProbe { path: "/health".into(), startup_timeout_ms: 1000 },
            stop_signal: StopSignal::Term,
            stop_grace_ms: 1000,
        }
    }

    fn pair(name: &str, value: &str) -> (String, String) {
        (name.to_string(), value.to_string())
    }

    #[test]
    fn mapped_secret_appears_only_under_its_mapped_name() {
        let (env, skipped) = agent_env(&plan(), vec![pair("GATEWAY_TOKEN", "g")], vec![pair("ANTHROPIC_API_KEY", "sk"), pair("OTHER", "o")]);
        let names: Vec<&str> = env.iter().map(|var| var.name.as_str()).collect();
        assert_eq!(names, ["ZEROCLAW_CONFIG_DIR", "GATEWAY_TOKEN", "ZEROCLAW_providers__models__anthropic__api_key", "OTHER"]);
        assert!(skipped.is_empty(), "{skipped:?}");
    }

    #[test]
    fn reserved_secrets_are_left_out_with_a_reason() {
        let secrets = ["PATH", "HOME", "LD_PRELOAD", "ZEROCLAW_CONFIG_DIR", "GATEWAY_TOKEN", "DRIVER_ONLY"];
        let (env, skipped) = agent_env(&plan(), vec![pair("GATEWAY_TOKEN", "g")], secrets.iter().map(|name| pair(name, "x")).collect());
        assert_eq!(env.len(), 2, "{env:?}");
        assert_eq!(skipped.len(), secrets.len(), "{skipped:?}");
        assert!(env.iter().all(|var| var.value != "x"), "a reserved secret overrode a variable: {env:?}");
    }
}
