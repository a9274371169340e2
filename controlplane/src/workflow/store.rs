//! Workflows and their steps in the control database.

use super::StepName;
use indigo_core::api::{Workflow, WorkflowState, WorkflowStep};
use indigo_core::tenant::TenantId;
use serde_json::{Value, json};
use sqlx::PgConnection;
use uuid::Uuid;

use super::Kind;
use crate::journal;

#[derive(Debug, thiserror::Error)]
pub enum WorkflowError {
    #[error("workflow {0} not found")]
    NotFound(String),
    #[error("tenant {tenant} already has a {kind} workflow in progress ({id})")]
    Busy { tenant: TenantId, kind: String, id: Uuid },
    #[error("workflow {id} is {state}; {action} applies only to {applies_to}")]
    WrongState { id: Uuid, state: WorkflowState, action: &'static str, applies_to: &'static str },
    #[error("workflow {id} is past its point of no return (`{step}` has started); it can only go forward")]
    PastPointOfNoReturn { id: Uuid, step: &'static str },
    #[error("workflow {id} is unreadable: {problem}")]
    Corrupt { id: Uuid, problem: String },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

#[derive(sqlx::FromRow)]
pub(crate) struct WorkflowRow {
    pub id: Uuid,
    pub kind: String,
    pub tenant_id: Uuid,
    pub state: String,
    pub input: Value,
    pub attempt: i32,
    pub error: Option<String>,
    pub cancel_requested: bool,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct StepRow {
    pub name: String,
    pub state: String,
    pub attempts: i32,
    pub output: Option<Value>,
    pub error: Option<String>,
    pub next_attempt_at: Option<chrono::DateTime<chrono::Utc>>,
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

macro_rules! workflow_columns {
    () => {
        "id, kind, tenant_id, state, input, attempt, error, cancel_requested, created_at, updated_at, finished_at"
    };
}

impl WorkflowRow {
    pub fn kind(&self) -> Result<Kind, WorkflowError> {
        self.kind.parse().map_err(|e| WorkflowError::Corrupt { id: self.id, problem: format!("{e}") })
    }

    pub fn state(&self) -> Result<WorkflowState, WorkflowError> {
        self.state.parse().map_err(|e| WorkflowError::Corrupt { id: self.id, problem: format!("{e}") })
    }

    fn into_api(self, steps: Vec<StepRow>, order: &[&str]) -> Result<Workflow, WorkflowError> {
        let mut steps: Vec<WorkflowStep> = steps
            .into_iter()
            .map(|s| WorkflowStep {
                name: s.name,
                state: s.state,
                attempts: s.attempts,
                output: s.output,
                error: s.error,
                next_attempt_at: s.next_attempt_at,
                started_at: s.started_at,
                finished_at: s.finished_at,
            })
            .collect();
        steps.sort_by_key(|s| order.iter().position(|name| *name == s.name).unwrap_or(usize::MAX));
        Ok(Workflow {
            state: self.state()?,
            id: self.id,
            kind: self.kind,
            tenant_id: TenantId(self.tenant_id),
            attempt: self.attempt,
            error: self.error,
            cancel_requested: self.cancel_requested,
            steps,
            total_steps: order.len(),
            created_at: self.created_at,
            updated_at: self.updated_at,
            finished_at: self.finished_at,
        })
    }
}

pub(crate) async fn load(conn: &mut PgConnection, id: Uuid) -> Result<WorkflowRow, WorkflowError> {
    sqlx::query_as(concat!("SELECT ", workflow_columns!(), " FROM workflows WHERE id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await?
        .ok_or_else(|| WorkflowError::NotFound(id.to_string()))
}

async fn load_for_update(conn: &mut PgConnection, id: Uuid) -> Result<WorkflowRow, WorkflowError> {
    sqlx::query_as(concat!("SELECT ", workflow_columns!(), " FROM workflows WHERE id = $1 FOR UPDATE"))
        .bind(id)
        .fetch_optional(conn)
        .await?
        .ok_or_else(|| WorkflowError::NotFound(id.to_string()))
}

pub(crate) async fn load_steps(conn: &mut PgConnection, id: Uuid) -> Result<Vec<StepRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT name, state, attempts, output, error, next_attempt_at, started_at, finished_at
         FROM workflow_steps WHERE workflow_id = $1",
    )
    .bind(id)
    .fetch_all(conn)
    .await
}

fn order_of(kind: Kind) -> Vec<&'static str> {
    match kind {
        Kind::Onboarding => super::step_order::<super::onboarding::Onboarding>().map(StepName::name).collect(),
        Kind::Offboarding => super::step_order::<super::offboarding::Offboarding>().map(StepName::name).collect(),
        Kind::TierChange => super::step_order::<super::tier_change::TierChange>().map(StepName::name).collect(),
        Kind::Restore => super::step_order::<super::restore::Restore>().map(StepName::name).collect(),
    }
}

/// The workflow acting on `tenant` now, if any: its id and kind.
pub async fn active_for(conn: &mut PgConnection, tenant: TenantId) -> Result<Option<(Uuid, String)>, sqlx::Error> {
    sqlx::query_as("SELECT id, kind FROM workflows WHERE tenant_id = $1 AND state IN ('running', 'compensating')")
        .bind(tenant.0)
        .fetch_optional(conn)
        .await
}

/// Records a new workflow, in the caller's transaction: it starts when that commits.
pub async fn start(conn: &mut PgConnection, kind: Kind, tenant: TenantId, input: Value) -> Result<Uuid, WorkflowError> {
    if let Some((id, kind)) = active_for(conn, tenant).await? {
        return Err(WorkflowError::Busy { tenant, kind, id });
    }
    let id = Uuid::now_v7();
    sqlx::query("INSERT INTO workflows (id, kind, tenant_id, input) VALUES ($1, $2, $3, $4)")
        .bind(id)
        .bind(kind.as_str())
        .bind(tenant.0)
        .bind(&input)
        .execute(&mut *conn)
        .await?;
    journal::publish(
        conn,
        Some(tenant),
        "WorkflowStarted",
        &format!("{kind} workflow {id} started"),
        json!({ "workflow_id": id, "kind": kind.as_str() }),
    )
    .await?;
    Ok(id)
}

pub async fn get(conn: &mut PgConnection, id: Uuid) -> Result<Workflow, WorkflowError> {
    let row = load(conn, id).await?;
    let steps = load_steps(conn, id).await?;
    let order = order_of(row.kind()?);
    row.into_api(steps, &order)
}

/// Which workflows to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub tenant: Option<TenantId>,
    pub kind: Option<Kind>,
    pub state: Option<WorkflowState>,
    /// Only workflows created before this one (the previous page's last id).
    pub before: Option<Uuid>,
    pub limit: i64,
}

pub async fn list(conn: &mut PgConnection, filter: &ListFilter) -> Result<Vec<Workflow>, WorkflowError> {
    let rows: Vec<WorkflowRow> = sqlx::query_as(concat!(
        "SELECT ",
        workflow_columns!(),
        " FROM workflows
         WHERE ($1::uuid IS NULL OR tenant_id = $1) AND ($2::text IS NULL OR kind = $2)
           AND ($3::text IS NULL OR state = $3) AND ($4::uuid IS NULL OR id < $4)
         ORDER BY id DESC LIMIT $5"
    ))
    .bind(filter.tenant.map(|t| t.0))
    .bind(filter.kind.map(Kind::as_str))
    .bind(filter.state.map(WorkflowState::as_str))
    .bind(filter.before)
    .bind(filter.limit)
    .fetch_all(&mut *conn)
    .await?;
    let mut workflows = Vec::with_capacity(rows.len());
    for row in rows {
        let steps = load_steps(conn, row.id).await?;
        let order = order_of(row.kind()?);
        workflows.push(row.into_api(steps, &order)?);
    }
    Ok(workflows)
}

/// Starts a failed or cancelled workflow again as a new attempt: steps that
/// were undone run afresh (with new idempotency keys); steps that still stand
/// (past the point of no return) are kept, so it resumes where it stopped.
pub async fn retry(conn: &mut PgConnection, id: Uuid) -> Result<Workflow, WorkflowError> {
    let row = load_for_update(conn, id).await?;
    let state = row.state()?;
    if !matches!(state, WorkflowState::Failed | WorkflowState::Cancelled) {
        return Err(WorkflowError::WrongState {
            id,
            state,
            action: "retry",
            applies_to: "failed or cancelled workflows",
        });
    }
    let tenant = TenantId(row.tenant_id);
    if let Some((other, kind)) = active_for(conn, tenant).await? {
        return Err(WorkflowError::Busy { tenant, kind, id: other });
    }
    sqlx::query("DELETE FROM workflow_steps WHERE workflow_id = $1 AND state <> 'succeeded'")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "UPDATE workflows SET state = 'running', attempt = attempt + 1, error = NULL, cancel_requested = false,
                next_run_at = now(), finished_at = NULL, updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .execute(&mut *conn)
    .await?;
    journal::publish(
        conn,
        Some(tenant),
        "WorkflowRetried",
        &format!("{} workflow {id} retried (attempt {})", row.kind, row.attempt + 1),
        json!({ "workflow_id": id, "kind": row.kind, "attempt": row.attempt + 1 }),
    )
    .await?;
    get(conn, id).await
}

/// Asks a running workflow to stop: it undoes its completed steps at the next
/// stage boundary and ends `cancelled`. Cancelling twice changes nothing.
pub async fn cancel(conn: &mut PgConnection, id: Uuid) -> Result<Workflow, WorkflowError> {
    let row = load_for_update(conn, id).await?;
    let state = row.state()?;
    if state == WorkflowState::Cancelled || row.cancel_requested {
        return get(conn, id).await;
    }
    if state != WorkflowState::Running {
        return Err(WorkflowError::WrongState { id, state, action: "cancel", applies_to: "running workflows" });
    }
    if let Some(pivot) = pivot_of(row.kind()?) {
        let started: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM workflow_steps WHERE workflow_id = $1 AND name = $2)")
                .bind(id)
                .bind(pivot)
                .fetch_one(&mut *conn)
                .await?;
        if started {
            return Err(WorkflowError::PastPointOfNoReturn { id, step: pivot });
        }
    }
    sqlx::query("UPDATE workflows SET cancel_requested = true, next_run_at = now(), updated_at = now() WHERE id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    journal::publish(
        conn,
        Some(TenantId(row.tenant_id)),
        "WorkflowCancelRequested",
        &format!("{} workflow {id}: cancellation requested", row.kind),
        json!({ "workflow_id": id, "kind": row.kind }),
    )
    .await?;
    get(conn, id).await
}

fn pivot_of(kind: Kind) -> Option<&'static str> {
    use super::Definition;
    match kind {
        Kind::Onboarding => super::onboarding::Onboarding::POINT_OF_NO_RETURN.map(StepName::name),
        Kind::Offboarding => super::offboarding::Offboarding::POINT_OF_NO_RETURN.map(StepName::name),
        Kind::TierChange => super::tier_change::TierChange::POINT_OF_NO_RETURN.map(StepName::name),
        Kind::Restore => super::restore::Restore::POINT_OF_NO_RETURN.map(StepName::name),
    }
}
