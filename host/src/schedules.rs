//! Cron schedules that back up or restart an agent.
//!
//! Expressions are classic 5-field cron in UTC: minute, hour, day of month,
//! month, day of week. Names (`JAN`, `MON`) and the shorthands `@yearly`,
//! `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight` and `@hourly`
//! are accepted. tokio-cron-scheduler fires a job only when both the day of
//! month and the day of week match, while classic cron fires when either
//! does, so an expression that restricts both is rejected with that reason.
//!
//! Every firing is claimed in the database before it runs (one row per
//! schedule and minute), so hosts that share the database run it once. A
//! firing missed while no host ran is not replayed: the next one is the
//! first after the start.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use chrono::Utc;
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use tokio_cron_scheduler::{Job, JobScheduler};
use uuid::Uuid;

use crate::agents::{AgentError, AgentService, AgentStatus, Operation};
use crate::ids;
use crate::store::{ScheduleRow, Store, StoreError, now_ms};

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("invalid cron expression: {0}")]
    InvalidCron(String),
    #[error("invalid name: {0}")]
    InvalidName(String),
    #[error("schedule `{0}` not found")]
    NotFound(String),
    #[error("the scheduler failed: {0}")]
    Scheduler(String),
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Action a schedule runs when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Backup,
    Restart,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Backup => "backup",
            Action::Restart => "restart",
        }
    }

    pub fn parse(value: &str) -> Option<Action> {
        [Action::Backup, Action::Restart].into_iter().find(|action| action.as_str() == value)
    }
}

/// Expands a shorthand into its 5-field form.
fn expand_shorthand(expression: &str) -> Option<&'static str> {
    Some(match expression.to_ascii_lowercase().as_str() {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        _ => return None,
    })
}

/// Parses a 5-field expression; returns it parsed and in the 6-field form
/// (with seconds) that tokio-cron-scheduler reads.
pub fn parse_cron(expression: &str) -> Result<(Cron, String), ScheduleError> {
    let trimmed = expression.trim();
    let five = if trimmed.starts_with('@') {
        expand_shorthand(trimmed).ok_or_else(|| {
            ScheduleError::InvalidCron(format!(
                "unknown shorthand `{trimmed}`; use @yearly, @annually, @monthly, @weekly, @daily, @midnight or @hourly"
            ))
        })?
    } else {
        trimmed
    };
    let fields: Vec<&str> = five.split_whitespace().collect();
    if fields.len() != 5 {
        let count = match fields.len() {
            1 => "1 field".to_string(),
            n => format!("{n} fields"),
        };
        return Err(ScheduleError::InvalidCron(format!(
            "`{trimmed}` has {count}; write 5: minute hour day-of-month month day-of-week, such as `0 2 * * *`"
        )));
    }
    if let Some(field) = fields.iter().find(|field| field.contains(['L', 'W', '#', 'l', 'w'])) {
        return Err(ScheduleError::InvalidCron(format!(
            "`{trimmed}` uses `{field}`; the L, W and # extensions are not standard cron"
        )));
    }
    let unrestricted = |field: &str| field == "*" || field == "?";
    if !unrestricted(fields[2]) && !unrestricted(fields[4]) {
        return Err(ScheduleError::InvalidCron(format!(
            "`{trimmed}` restricts both the day of month (`{}`) and the day of week (`{}`). Classic cron runs when \
             either matches, but this scheduler would run only when both do; use two schedules, one per field",
            fields[2], fields[4]
        )));
    }
    let parser = CronParser::builder().seconds(Seconds::Disallowed).dom_and_dow(false).build();
    let cron = parser.parse(&fields.join(" ")).map_err(|error| {
        ScheduleError::InvalidCron(format!(
            "`{trimmed}`: {error}; the fields take minute 0-59, hour 0-23, day of month 1-31, month 1-12 or JAN-DEC, \
             day of week 0-7 or SUN-SAT"
        ))
    })?;
    if cron.find_next_occurrence(&Utc::now(), false).is_err() {
        return Err(ScheduleError::InvalidCron(format!("`{trimmed}` never fires, such as on a day a month does not have")));
    }
    Ok((cron, format!("0 {}", fields.join(" "))))
}

/// Computes the next firing of `expression` after now, in milliseconds.
pub fn next_run(expression: &str) -> Option<i64> {
    let (cron, _) = parse_cron(expression).ok()?;
    // Firings are whole seconds; croner keeps the sub-second part of the start.
    cron.find_next_occurrence(&Utc::now(), false).ok().map(|time| time.timestamp() * 1000)
}

fn validate_name(name: &str) -> Result<(), ScheduleError> {
    ids::check_label(name, ids::LABEL_MAX_CHARS).map_err(ScheduleError::InvalidName)?;
    Ok(())
}

/// Fields of a schedule to change; `None` leaves one as it is.
#[derive(Default)]
pub struct SchedulePatch {
    pub name: Option<String>,
    pub cron: Option<String>,
    pub action: Option<Action>,
    pub enabled: Option<bool>,
}

pub struct ScheduleService {
    store: Store,
    agents: Arc<AgentService>,
    scheduler: JobScheduler,
    /// Registered jobs by schedule id.
    jobs: Mutex<HashMap<String, Uuid>>,
    /// This host's name in claimed runs.
    host: String,
    this: Weak<ScheduleService>,
}

impl ScheduleService {
    /// Starts the scheduler and registers every enabled schedule.
    pub async fn start(store: Store, agents: Arc<AgentService>) -> Result<Arc<ScheduleService>, ScheduleError> {
        let scheduler = JobScheduler::new().await.map_err(|error| ScheduleError::Scheduler(error.to_string()))?;
        scheduler.start().await.map_err(|error| ScheduleError::Scheduler(error.to_string()))?;
        let host = format!("{}-{}", hostname(), std::process::id());
        let service = Arc::new_cyclic(|this| ScheduleService {
            store,
            agents,
            scheduler,
            jobs: Mutex::new(HashMap::new()),
            host,
            this: this.clone(),
        });
        for row in service.store.enabled_schedules().await? {
            if let Err(error) = service.register(&row).await {
                tracing::error!(schedule_id = %row.id, %error, "cannot register a stored schedule");
            }
        }
        Ok(service)
    }

    /// Registers a schedule's job, replacing any earlier one; a disabled
    /// schedule gets no job.
    async fn register(&self, row: &ScheduleRow) -> Result<(), ScheduleError> {
        self.unregister(&row.id).await;
        if !row.enabled {
            return Ok(());
        }
        let (_, six) = parse_cron(&row.cron)?;
        let this = self.this.clone();
        let schedule_id = row.id.clone();
        let job = Job::new_async(six.as_str(), move |_uuid, _scheduler| {
            let this = this.clone();
            let schedule_id = schedule_id.clone();
            Box::pin(async move {
                if let Some(service) = this.upgrade() {
                    service.fire(&schedule_id).await;
                }
            })
        })
        .map_err(|error| ScheduleError::Scheduler(error.to_string()))?;
        let uuid = self.scheduler.add(job).await.map_err(|error| ScheduleError::Scheduler(error.to_string()))?;
        self.jobs.lock().unwrap_or_else(|poison| poison.into_inner()).insert(row.id.clone(), uuid);
        Ok(())
    }

    async fn unregister(&self, schedule_id: &str) {
        let uuid = self.jobs.lock().unwrap_or_else(|poison| poison.into_inner()).remove(schedule_id);
        if let Some(uuid) = uuid {
            if let Err(error) = self.scheduler.remove(&uuid).await {
                tracing::warn!(schedule_id, %error, "cannot remove a schedule's job");
            }
        }
    }

    /// Runs one firing, once across every host on this database.
    async fn fire(&self, schedule_id: &str) {
        // Firings are whole minutes; every host computes the same key.
        let minute = now_ms() / 60_000 * 60_000;
        match self.store.claim_schedule_run(schedule_id, minute, &self.host).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!(schedule_id, "another host runs this firing");
                return;
            }
            Err(error) => {
                tracing::error!(schedule_id, %error, "cannot claim a schedule firing; skipping it");
                return;
            }
        }
        match self.store.schedule(schedule_id).await {
            Ok(Some(row)) if row.enabled => {
                self.execute(&row, "cron").await;
            }
            Ok(_) => self.unregister(schedule_id).await,
            Err(error) => tracing::error!(schedule_id, %error, "cannot read a schedule that fired"),
        }
    }

    /// Runs a schedule's action through the same service calls as the API,
    /// and records the outcome on the schedule and in the agent's events.
    async fn execute(&self, row: &ScheduleRow, trigger: &str) {
        let started = now_ms();
        tracing::info!(schedule_id = %row.id, agent_id = %row.agent_id, action = %row.action, trigger, "schedule firing");
        let result = self.run_action(row).await;
        let (status, error) = match &result {
            Ok(()) => ("ok", None),
            Err(error) => ("error", Some(error.to_string())),
        };
        if let Err(store_error) = self.store.record_schedule_result(&row.id, started, status, error.as_deref()).await {
            tracing::error!(schedule_id = %row.id, error = %store_error, "cannot record a schedule's result");
        }
        let message = match &error {
            None => format!("schedule {} ({}) ran {}", row.id, row.name, row.action),
            Some(error) => format!("schedule {} ({}) failed to {}: {error}", row.id, row.name, row.action),
        };
        if let Some(error) = &error {
            tracing::warn!(schedule_id = %row.id, agent_id = %row.agent_id, error, "scheduled action failed");
        }
        self.agents.record_event(&row.agent_id, "schedule", &message).await;
    }

    async fn run_action(&self, row: &ScheduleRow) -> Result<(), ScheduleError> {
        match Action::parse(&row.action) {
            Some(Action::Backup) => {
                self.agents.create_backup(&row.user_id, &row.agent_id, false).await?;
                Ok(())
            }
            Some(Action::Restart) => {
                let (_, task) = self.agents.begin(&row.user_id, &row.agent_id, Operation::Restart).await?;
                let _ = task.await;
                let agent = self.agents.get(&row.user_id, &row.agent_id).await?;
                if AgentStatus::parse(&agent.status) == Some(AgentStatus::Error) {
                    let reason = agent.status_message.unwrap_or_else(|| "the agent is in ERROR".into());
                    return Err(ScheduleError::Scheduler(format!("the restart left the agent in ERROR: {reason}")));
                }
                Ok(())
            }
            None => Err(ScheduleError::Scheduler(format!("unknown action `{}`", row.action))),
        }
    }

    pub async fn list(&self, user_id: &str, agent_id: &str) -> Result<Vec<ScheduleRow>, ScheduleError> {
        self.agents.get(user_id, agent_id).await?;
        Ok(self.store.schedules_of(agent_id).await?)
    }

    async fn owned(&self, user_id: &str, agent_id: &str, schedule_id: &str) -> Result<ScheduleRow, ScheduleError> {
        // Both ids are checked for shape before any query.
        if !ids::is_prefixed_id(schedule_id, "sch_", 12) {
            return Err(ScheduleError::NotFound(schedule_id.to_string()));
        }
        self.agents.get(user_id, agent_id).await?;
        self.store
            .schedule_of(user_id, agent_id, schedule_id)
            .await?
            .ok_or_else(|| ScheduleError::NotFound(schedule_id.to_string()))
    }

    pub async fn create(
        &self,
        user_id: &str,
        agent_id: &str,
        name: &str,
        cron: &str,
        action: Action,
        enabled: bool,
    ) -> Result<ScheduleRow, ScheduleError> {
        self.agents.get(user_id, agent_id).await?;
        validate_name(name)?;
        parse_cron(cron)?;
        let row = ScheduleRow {
            id: ids::random_id("sch_", 12),
            agent_id: agent_id.to_string(),
            user_id: user_id.to_string(),
            name: name.to_string(),
            cron: cron.trim().to_string(),
            action: action.as_str().to_string(),
            enabled,
            created_at: now_ms(),
            last_run_at: None,
            last_status: None,
            last_error: None,
        };
        self.store.insert_schedule(&row).await?;
        self.register(&row).await?;
        tracing::info!(schedule_id = %row.id, agent_id, cron = %row.cron, action = %row.action, enabled, "schedule created");
        Ok(row)
    }

    /// Changes only the fields `patch` sets; takes effect at once.
    pub async fn update(&self, user_id: &str, agent_id: &str, schedule_id: &str, patch: SchedulePatch) -> Result<ScheduleRow, ScheduleError> {
        let mut row = self.owned(user_id, agent_id, schedule_id).await?;
        if let Some(name) = patch.name {
            validate_name(&name)?;
            row.name = name;
        }
        if let Some(cron) = patch.cron {
            parse_cron(&cron)?;
            row.cron = cron.trim().to_string();
        }
        if let Some(action) = patch.action {
            row.action = action.as_str().to_string();
        }
        if let Some(enabled) = patch.enabled {
            row.enabled = enabled;
        }
        self.store.update_schedule(&row).await?;
        self.register(&row).await?;
        tracing::info!(schedule_id, agent_id, enabled = row.enabled, "schedule updated");
        self.owned(user_id, agent_id, schedule_id).await
    }

    pub async fn delete(&self, user_id: &str, agent_id: &str, schedule_id: &str) -> Result<(), ScheduleError> {
        self.owned(user_id, agent_id, schedule_id).await?;
        self.unregister(schedule_id).await;
        self.store.delete_schedule(schedule_id).await?;
        tracing::info!(schedule_id, agent_id, "schedule deleted");
        Ok(())
    }

    /// Runs a schedule's action now, outside its cron times.
    pub async fn run_now(&self, user_id: &str, agent_id: &str, schedule_id: &str) -> Result<ScheduleRow, ScheduleError> {
        let row = self.owned(user_id, agent_id, schedule_id).await?;
        self.execute(&row, "manual").await;
        self.owned(user_id, agent_id, schedule_id).await
    }

    /// Unregisters the jobs of an agent's schedules; the rows go with the
    /// agent's row.
    pub async fn forget_agent(&self, schedule_ids: &[String]) {
        for id in schedule_ids {
            self.unregister(id).await;
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|name| name.trim().to_string()).unwrap_or_else(|_| "host".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_expressions_parse() {
        for good in ["* * * * *", "0 2 * * *", "*/15 9-17 * * MON-FRI", "0 0 1 JAN *", "@daily", "@HOURLY", " 5 4 * * 0 "] {
            assert!(parse_cron(good).is_ok(), "{good}: {:?}", parse_cron(good).err());
        }
        assert_eq!(parse_cron("0 2 * * *").unwrap().1, "0 0 2 * * *");
        assert_eq!(parse_cron("@daily").unwrap().1, "0 0 0 * * *");
    }

    #[test]
    fn invalid_expressions_say_why() {
        let cases = [
            ("* * * *", "4 fields"),
            ("0 0 * * * *", "6 fields"),
            ("61 * * * *", "61"),
            ("hello world a b c", "hello"),
            ("0 0 1 * MON", "both"),
            ("@fortnightly", "shorthand"),
            ("", "0 fields"),
            ("bogus", "1 field;"),
            ("0 0 L * *", "not standard"),
            ("0 0 31 2 *", "never fires"),
        ];
        for (expression, reason) in cases {
            let error = parse_cron(expression).err().unwrap_or_else(|| panic!("{expression:?} was accepted")).to_string();
            assert!(error.to_lowercase().contains(&reason.to_lowercase()), "{expression:?}: {error}");
        }
    }

    #[test]
    fn next_run_is_in_the_future() {
        let next = next_run("* * * * *").unwrap();
        assert!(next > now_ms());
        assert!(next - now_ms() <= 60_000);
    }
}
