use std::sync::Arc;

use poem::Request;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};

use super::{ApiError, ApiState, ApiTags, Credentials, Timestamp};
use crate::auth::Scope;
use crate::schedules::{Action, SchedulePatch, next_run};
use crate::store::ScheduleRow;

pub struct SchedulesApi {
    pub state: Arc<ApiState>,
}

/// Action a schedule runs when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum ScheduleAction {
    /// An ordinary backup: it obeys the quota and the cleanup of old backups.
    Backup,
    /// An ordinary restart of the agent.
    Restart,
}

impl From<ScheduleAction> for Action {
    fn from(action: ScheduleAction) -> Action {
        match action {
            ScheduleAction::Backup => Action::Backup,
            ScheduleAction::Restart => Action::Restart,
        }
    }
}

/// Outcome of a schedule's last run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum RunStatus {
    Ok,
    Error,
}

#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct Schedule {
    /// Schedule id, such as `sch_…`.
    id: String,
    name: String,
    /// Standard 5-field cron expression, in UTC.
    cron: String,
    action: ScheduleAction,
    enabled: bool,
    /// **Extension.** The next firing; null while the schedule is disabled.
    #[oai(nullable)]
    next_run_at: Option<Timestamp>,
    /// **Extension.** Start of the last run; null if it never ran.
    #[oai(nullable)]
    last_run_at: Option<Timestamp>,
    /// **Extension.** Outcome of the last run.
    #[oai(nullable)]
    last_status: Option<RunStatus>,
    /// **Extension.** Why the last run failed; null after a success.
    #[oai(nullable)]
    last_error: Option<String>,
    /// **Extension.**
    created_at: Timestamp,
}

#[derive(Object)]
pub struct ScheduleList {
    schedules: Vec<Schedule>,
}

#[derive(Object)]
#[oai(deny_unknown_fields)]
pub struct CreateScheduleRequest {
    /// Human-readable label, 1 to 100 characters.
    name: String,
    /// Standard 5-field cron expression (UTC), such as `0 2 * * *`. Names
    /// (`MON`, `JAN`) and `@yearly`, `@monthly`, `@weekly`, `@daily`,
    /// `@hourly` are accepted. An expression that restricts both the day of
    /// month and the day of week is rejected: split it into two schedules.
    cron: String,
    action: ScheduleAction,
    /// Whether the schedule is active; default true.
    #[oai(nullable)]
    enabled: Option<bool>,
}

#[derive(Object)]
#[oai(deny_unknown_fields)]
pub struct UpdateScheduleRequest {
    #[oai(nullable)]
    name: Option<String>,
    #[oai(nullable)]
    cron: Option<String>,
    #[oai(nullable)]
    action: Option<ScheduleAction>,
    #[oai(nullable)]
    enabled: Option<bool>,
}

#[derive(ApiResponse)]
enum CreateScheduleResponse {
    /// The schedule is stored and, if enabled, registered.
    #[oai(status = 201)]
    Created(Json<Schedule>),
}

#[derive(ApiResponse)]
enum DeleteScheduleResponse {
    /// The schedule is gone and will not fire again.
    #[oai(status = 204)]
    Deleted,
}

fn to_api(row: ScheduleRow) -> Schedule {
    let next_run_at = if row.enabled { next_run(&row.cron).map(Timestamp::from_ms) } else { None };
    Schedule {
        action: if row.action == "backup" { ScheduleAction::Backup } else { ScheduleAction::Restart },
        next_run_at,
        last_run_at: row.last_run_at.map(Timestamp::from_ms),
        last_status: row.last_status.as_deref().map(|status| if status == "ok" { RunStatus::Ok } else { RunStatus::Error }),
        last_error: row.last_error,
        created_at: Timestamp::from_ms(row.created_at),
        id: row.id,
        name: row.name,
        cron: row.cron,
        enabled: row.enabled,
    }
}

#[OpenApi(tag = "ApiTags::Schedules")]
impl SchedulesApi {
    /// List schedules
    ///
    /// Scope required: read. The agent's schedules, oldest first.
    #[oai(path = "/api/agents/:id/schedules", method = "get", operation_id = "listSchedules")]
    async fn list(&self, credentials: Credentials, request: &Request, id: Path<String>) -> Result<Json<ScheduleList>, ApiError> {
        let caller = self.state.authorize(&credentials, request, Scope::Read).await?;
        let rows = self.state.schedules.list(&caller.user_id, &id).await?;
        Ok(Json(ScheduleList { schedules: rows.into_iter().map(to_api).collect() }))
    }

    /// Create schedule
    ///
    /// Scope required: deploy. Takes effect at once; no restart is needed.
    #[oai(path = "/api/agents/:id/schedules", method = "post", operation_id = "createSchedule")]
    async fn create(
        &self,
        credentials: Credentials,
        request: &Request,
        id: Path<String>,
        body: Json<CreateScheduleRequest>,
    ) -> Result<CreateScheduleResponse, ApiError> {
        let caller = self.state.authorize(&credentials, request, Scope::Deploy).await?;
        let body = body.0;
        let row = self
            .state
            .schedules
            .create(&caller.user_id, &id, &body.name, &body.cron, body.action.into(), body.enabled.unwrap_or(true))
            .await?;
        Ok(CreateScheduleResponse::Created(Json(to_api(row))))
    }

    /// Update schedule
    ///
    /// Scope required: deploy. Partial update: send only the fields you want
    /// to change. `enabled: false` stops the schedule from firing at once.
    #[oai(path = "/api/agents/:id/schedules/:scheduleId", method = "patch", operation_id = "updateSchedule")]
    async fn update(
        &self,
        credentials: Credentials,
        request: &Request,
        id: Path<String>,
        #[oai(name = "scheduleId")] schedule_id: Path<String>,
        body: Json<UpdateScheduleRequest>,
    ) -> Result<Json<Schedule>, ApiError> {
        let caller = self.state.authorize(&credentials, request, Scope::Deploy).await?;
        let body = body.0;
        let patch = SchedulePatch { name: body.name, cron: body.cron, action: body.action.map(Into::into), enabled: body.enabled };
        let row = self.state.schedules.update(&caller.user_id, &id, &schedule_id, patch).await?;
        Ok(Json(to_api(row)))
    }

    /// Delete schedule
    ///
    /// Scope required: deploy.
    #[oai(path = "/api/agents/:id/schedules/:scheduleId", method = "delete", operation_id = "deleteSchedule")]
    async fn delete(
        &self,
        credentials: Credentials,
        request: &Request,
        id: Path<String>,
        #[oai(name = "scheduleId")] schedule_id: Path<String>,
    ) -> Result<DeleteScheduleResponse, ApiError> {
        let caller = self.state.authorize(&credentials, request, Scope::Deploy).await?;
        self.state.schedules.delete(&caller.user_id, &id, &schedule_id).await?;
        Ok(DeleteScheduleResponse::Deleted)
    }

    /// Run schedule now (extension)
    ///
    /// **Extension.** Scope required: deploy. Runs the schedule's action at
    /// once, as a firing would, and returns the schedule with the result.
    #[oai(path = "/api/agents/:id/schedules/:scheduleId/run", method = "post", operation_id = "runSchedule")]
    async fn run(
        &self,
        credentials: Credentials,
        request: &Request,
        id: Path<String>,
        #[oai(name = "scheduleId")] schedule_id: Path<String>,
    ) -> Result<Json<Schedule>, ApiError> {
        let caller = self.state.authorize(&credentials, request, Scope::Deploy).await?;
        let row = self.state.schedules.run_now(&caller.user_id, &id, &schedule_id).await?;
        Ok(Json(to_api(row)))
    }
}
