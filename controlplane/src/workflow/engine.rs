//! Drives workflows: finds the due ones, takes the tenant's advisory lock (so
//! one daemon, and no reconcile, acts on a tenant at a time), runs their steps
//! recording each before the next, and compensates on permanent failure.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use indigo_core::api::WorkflowState;
use indigo_core::tenant::TenantId;
use serde_json::{Value, json};
use tokio::sync::{Notify, Semaphore};
use uuid::Uuid;

use super::offboarding::Offboarding;
use super::onboarding::Onboarding;
use super::restore::Restore;
use super::store::{self, StepRow, WorkflowError, WorkflowRow};
use super::tier_change::TierChange;
use super::{Definition, Kind, NO_STEP, Services, StepContext, StepError, StepName, compensable, step_order};
use crate::db::{self, AdvisoryLock};
use crate::failpoints::Point;
use crate::journal;
use crate::providers::DatabaseProvider;
use crate::runtime::Notifications;

/// The channel new and resumed workflows are announced on.
pub const WORKFLOWS_CHANNEL: &str = "indigo_workflows";
/// The reconciler's channel: a finished workflow hands the tenant back.
const TENANT_CHANNEL: &str = crate::reconciler::CHANGES_CHANNEL;

/// This daemon's workflow runner.
pub struct Engine<P> {
    services: Arc<Services<P>>,
    driving: Arc<Mutex<HashSet<Uuid>>>,
    slots: Arc<Semaphore>,
    wake: Arc<Notify>,
}

impl<P> Clone for Engine<P> {
    fn clone(&self) -> Self {
        Self {
            services: self.services.clone(),
            driving: self.driving.clone(),
            slots: self.slots.clone(),
            wake: self.wake.clone(),
        }
    }
}

/// How one pass of [`drive`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Driven {
    /// Succeeded, failed or cancelled.
    Finished(WorkflowState),
    /// Waiting for a step's retry.
    WaitUntil(DateTime<Utc>),
    /// Another daemon (or a reconcile) holds the tenant; try again soon.
    Busy,
}

impl<P: DatabaseProvider> Engine<P> {
    pub fn new(services: Services<P>) -> Self {
        let slots = Arc::new(Semaphore::new(services.settings.concurrency.max(1)));
        Self { services: Arc::new(services), driving: Arc::default(), slots, wake: Arc::default() }
    }

    pub fn services(&self) -> &Services<P> {
        &self.services
    }

    /// Runs the dispatcher until the handle is aborted.
    pub fn spawn(&self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.clone().dispatch_forever())
    }

    async fn dispatch_forever(self) {
        let mut workflows = Notifications::new(self.services.db.clone(), WORKFLOWS_CHANNEL);
        loop {
            let wait = match self.dispatch_due().await {
                Ok(wait) => wait,
                Err(error) => {
                    tracing::warn!(%error, "cannot look for due workflows");
                    Duration::from_secs(1)
                }
            };
            // A new or changed workflow (NOTIFY), a local wake-up, or the next one due.
            tokio::select! {
                _ = workflows.recv() => {},
                _ = self.wake.notified() => {},
                _ = tokio::time::sleep(wait) => {},
            }
        }
    }

    /// Starts a driver for every due workflow not driven here yet; returns how
    /// long to wait before looking again (sooner while others hold some).
    async fn dispatch_due(&self) -> Result<Duration, sqlx::Error> {
        let rows: Vec<(Uuid, Uuid, DateTime<Utc>)> = sqlx::query_as(
            "SELECT id, tenant_id, next_run_at FROM workflows
             WHERE state IN ('running', 'compensating') ORDER BY next_run_at LIMIT 256",
        )
        .fetch_all(&self.services.db)
        .await?;
        let now = Utc::now();
        let mut wait = Duration::from_secs(5);
        for (id, tenant, next_run_at) in rows {
            if next_run_at > now {
                wait = wait.min((next_run_at - now).to_std().unwrap_or_default());
                continue;
            }
            // Due but perhaps held by another daemon: look again soon.
            wait = wait.min(Duration::from_millis(250));
            let Ok(permit) = self.slots.clone().try_acquire_owned() else { break };
            if !self.driving.lock().expect("driving set").insert(id) {
                continue;
            }
            let engine = self.clone();
            tokio::spawn(async move {
                let result = drive(&engine.services, id, TenantId(tenant)).await;
                if let Err(error) = &result {
                    tracing::warn!(workflow = %id, %error, "workflow pass failed; it will be resumed");
                }
                engine.driving.lock().expect("driving set").remove(&id);
                drop(permit);
                engine.wake.notify_one();
            });
        }
        Ok(wait.max(Duration::from_millis(20)))
    }
}

/// One pass over workflow `id` under its tenant's lock: runs steps until the
/// workflow ends or must wait. Safe to call from any daemon at any time.
pub async fn drive<P: DatabaseProvider>(
    services: &Services<P>,
    id: Uuid,
    tenant: TenantId,
) -> Result<Driven, WorkflowError> {
    // A connection of its own, not the pool's: a driver holds it for the whole
    // pass while its steps take pool connections, and must not starve them.
    let Some(lock) = AdvisoryLock::try_acquire_dedicated(&services.db, db::tenant_lock_key(tenant)).await? else {
        return Ok(Driven::Busy);
    };
    let result = drive_locked(services, id).await;
    lock.release().await;
    result
}

async fn drive_locked<P: DatabaseProvider>(services: &Services<P>, id: Uuid) -> Result<Driven, WorkflowError> {
    let row = store::load(&mut *services.db.acquire().await?, id).await?;
    match row.kind()? {
        Kind::Onboarding => drive_definition::<P, Onboarding>(services, row).await,
        Kind::Offboarding => drive_definition::<P, Offboarding>(services, row).await,
        Kind::TierChange => drive_definition::<P, TierChange>(services, row).await,
        Kind::Restore => drive_definition::<P, Restore>(services, row).await,
    }
}

async fn drive_definition<P: DatabaseProvider, D: Definition>(
    services: &Services<P>,
    mut row: WorkflowRow,
) -> Result<Driven, WorkflowError> {
    loop {
        match row.state()? {
            WorkflowState::Running => match advance::<P, D>(services, &row).await? {
                Progress::Done => return finish(services, &row, WorkflowState::Succeeded, None).await,
                Progress::WaitUntil(at) => {
                    sqlx::query("UPDATE workflows SET next_run_at = $2, updated_at = now() WHERE id = $1")
                        .bind(row.id)
                        .bind(at)
                        .execute(&services.db)
                        .await?;
                    return Ok(Driven::WaitUntil(at));
                }
                Progress::Failed { step, message } if D::Step::named(step).is_some_and(compensable::<D>) => {
                    begin_compensation(services, &row, &message).await?;
                }
                Progress::Failed { message, .. } => {
                    // Past the point of no return: nothing is undone; a retry goes on from here.
                    return finish(services, &row, WorkflowState::Failed, Some(&message)).await;
                }
            },
            WorkflowState::Compensating => {
                let mut failures = compensate::<P, D>(services, &row).await?;
                let outputs = HashMap::new();
                let cx = StepContext { error: row.error.as_deref(), ..context(services, &row, NO_STEP, &outputs) };
                if let Err(error) = D::on_failure(&cx).await {
                    failures.push(format!("marking the failure: {error}"));
                }
                let mut message = row.error.clone().unwrap_or_else(|| "failed".into());
                if !failures.is_empty() {
                    message = format!("{message}; could not undo: {}", failures.join("; "));
                }
                let end = if row.cancel_requested && failures.is_empty() {
                    WorkflowState::Cancelled
                } else {
                    WorkflowState::Failed
                };
                return finish(services, &row, end, Some(&message)).await;
            }
            state => return Ok(Driven::Finished(state)),
        }
        row = store::load(&mut *services.db.acquire().await?, row.id).await?;
    }
}

/// What a step of `row` sees; `output` and `error` are filled in when undoing.
fn context<'a, P>(
    services: &'a Services<P>,
    row: &'a WorkflowRow,
    step: &'static str,
    outputs: &'a HashMap<String, Value>,
) -> StepContext<'a, P> {
    StepContext {
        services,
        workflow_id: row.id,
        tenant_id: TenantId(row.tenant_id),
        attempt: row.attempt,
        step,
        input: &row.input,
        outputs,
        output: None,
        error: None,
    }
}

enum Progress {
    Done,
    WaitUntil(DateTime<Utc>),
    Failed { step: &'static str, message: String },
}

enum StepOutcome {
    Succeeded,
    Retry(DateTime<Utc>),
    Failed(String),
}

async fn advance<P: DatabaseProvider, D: Definition>(
    services: &Services<P>,
    row: &WorkflowRow,
) -> Result<Progress, WorkflowError> {
    for stage in D::STAGES {
        let steps: HashMap<String, StepRow> = store::load_steps(&mut *services.db.acquire().await?, row.id)
            .await?
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect();
        let todo: Vec<D::Step> =
            stage.iter().copied().filter(|s| steps.get(s.name()).is_none_or(|r| r.state != "succeeded")).collect();
        if todo.is_empty() {
            continue;
        }
        if row.cancel_requested {
            return Ok(Progress::Failed { step: todo[0].name(), message: "cancelled by an operator".into() });
        }
        let now = Utc::now();
        if let Some(at) = todo
            .iter()
            .filter_map(|s| steps.get(s.name()).filter(|r| r.state == "retrying").and_then(|r| r.next_attempt_at))
            .filter(|at| *at > now)
            .min()
        {
            return Ok(Progress::WaitUntil(at));
        }
        let outputs: HashMap<String, Value> = steps
            .values()
            .filter(|s| s.state == "succeeded")
            .filter_map(|s| Some((s.name.clone(), s.output.clone()?)))
            .collect();
        let outcomes =
            futures_util::future::join_all(todo.iter().map(|step| run_step::<P, D>(services, row, *step, &outputs)))
                .await;
        let mut retry_at: Option<DateTime<Utc>> = None;
        for (step, outcome) in todo.iter().zip(outcomes) {
            match outcome? {
                StepOutcome::Succeeded => {}
                StepOutcome::Retry(at) => retry_at = Some(retry_at.map_or(at, |r| r.min(at))),
                StepOutcome::Failed(message) => {
                    let step = step.name();
                    return Ok(Progress::Failed { step, message: format!("step `{step}` failed: {message}") });
                }
            }
        }
        if let Some(at) = retry_at {
            return Ok(Progress::WaitUntil(at));
        }
    }
    Ok(Progress::Done)
}

/// One span per step run (an attempt), named after the step, in the tenant's name.
#[tracing::instrument(name = "workflow.step", skip_all,
    fields(otel.name = typed.name(), workflow = %row.id, kind = %row.kind, tenant_id = %row.tenant_id))]
async fn run_step<P: DatabaseProvider, D: Definition>(
    services: &Services<P>,
    row: &WorkflowRow,
    typed: D::Step,
    outputs: &HashMap<String, Value>,
) -> Result<StepOutcome, WorkflowError> {
    let step = typed.name();
    let attempts: i32 = sqlx::query_scalar(
        "INSERT INTO workflow_steps (workflow_id, name, state, attempts, started_at)
         VALUES ($1, $2, 'running', 1, now())
         ON CONFLICT (workflow_id, name) DO UPDATE
             SET state = 'running', attempts = workflow_steps.attempts + 1, error = NULL,
                 next_attempt_at = NULL, started_at = now(), finished_at = NULL
         RETURNING attempts",
    )
    .bind(row.id)
    .bind(step)
    .fetch_one(&services.db)
    .await?;
    let failpoints = &services.failpoints;
    failpoints.crash_at(D::KIND, step, Point::BeforeRun);
    let cx = context(services, row, step, outputs);
    let result = match failpoints.failure(D::KIND, step, attempts) {
        Some(injected) => Err(injected),
        None => D::run(typed, &cx).await,
    };
    failpoints.crash_at(D::KIND, step, Point::AfterRun);
    let settings = &services.settings;
    let outcome = match result {
        Ok(output) => {
            let update = StepUpdate { state: "succeeded", output: Some(&output), ..StepUpdate::default() };
            update.apply(&services.db, row.id, step).await?;
            StepOutcome::Succeeded
        }
        Err(StepError::Transient(message)) if attempts < settings.max_attempts => {
            let at = Utc::now() + settings.backoff(attempts);
            let mut tx = services.db.begin().await?;
            let update = StepUpdate {
                state: "retrying",
                error: Some(&message),
                next_attempt_at: Some(at),
                ..StepUpdate::default()
            };
            update.apply(&mut *tx, row.id, step).await?;
            journal::publish(
                &mut tx,
                Some(TenantId(row.tenant_id)),
                "WorkflowStepRetrying",
                &format!("{} step `{step}` failed (attempt {attempts}), retrying: {message}", row.kind),
                json!({ "workflow_id": row.id, "step": step, "attempt": attempts, "error": message }),
            )
            .await?;
            tx.commit().await?;
            StepOutcome::Retry(at)
        }
        Err(error) => {
            let message = match error {
                StepError::Transient(m) => format!("gave up after {attempts} attempts: {m}"),
                StepError::Permanent(m) => m,
            };
            StepUpdate { state: "failed", error: Some(&message), ..StepUpdate::default() }
                .apply(&services.db, row.id, step)
                .await?;
            StepOutcome::Failed(message)
        }
    };
    failpoints.crash_at(D::KIND, step, Point::AfterRecord);
    Ok(outcome)
}

async fn begin_compensation<P>(services: &Services<P>, row: &WorkflowRow, message: &str) -> Result<(), WorkflowError> {
    let mut tx = services.db.begin().await?;
    sqlx::query("UPDATE workflows SET state = 'compensating', error = $2, updated_at = now() WHERE id = $1")
        .bind(row.id)
        .bind(message)
        .execute(&mut *tx)
        .await?;
    journal::publish(
        &mut tx,
        Some(TenantId(row.tenant_id)),
        "WorkflowCompensating",
        &format!("{} workflow {}: {message}; undoing the completed steps", row.kind, row.id),
        json!({ "workflow_id": row.id, "kind": row.kind, "error": message }),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Undoes, in reverse order, every step that started (a step that failed may
/// have done part of its work; compensations tolerate "nothing to undo").
/// Returns the compensations that failed for good.
async fn compensate<P: DatabaseProvider, D: Definition>(
    services: &Services<P>,
    row: &WorkflowRow,
) -> Result<Vec<String>, WorkflowError> {
    let steps: HashMap<String, StepRow> = store::load_steps(&mut *services.db.acquire().await?, row.id)
        .await?
        .into_iter()
        .map(|s| (s.name.clone(), s))
        .collect();
    let outputs: HashMap<String, Value> =
        steps.values().filter_map(|s| Some((s.name.clone(), s.output.clone()?))).collect();
    let mut failures = Vec::new();
    for typed in step_order::<D>().rev().filter(|s| compensable::<D>(*s)) {
        let step = typed.name();
        let Some(recorded) = steps.get(step) else { continue };
        if matches!(recorded.state.as_str(), "compensated" | "compensation_failed") {
            continue;
        }
        StepUpdate { state: "compensating", ..StepUpdate::default() }.apply(&services.db, row.id, step).await?;
        let cx = StepContext {
            output: recorded.output.as_ref(),
            error: row.error.as_deref(),
            ..context(services, row, step, &outputs)
        };
        let mut attempt = 1;
        let result = loop {
            match D::compensate(typed, &cx).await {
                Err(StepError::Transient(message)) if attempt < services.settings.max_attempts => {
                    tracing::warn!(workflow = %row.id, step, %message, "compensation failed; retrying");
                    tokio::time::sleep(services.settings.backoff(attempt)).await;
                    attempt += 1;
                }
                other => break other,
            }
        };
        match result {
            Ok(()) => {
                StepUpdate { state: "compensated", ..StepUpdate::default() }.apply(&services.db, row.id, step).await?
            }
            Err(error) => {
                let message = format!("`{step}`: {error}");
                StepUpdate { state: "compensation_failed", error: Some(&message), ..StepUpdate::default() }
                    .apply(&services.db, row.id, step)
                    .await?;
                failures.push(message);
            }
        }
    }
    Ok(failures)
}

/// A step's recorded state after an attempt or a compensation; the output
/// and error, when not given, stay as they were.
#[derive(Default)]
struct StepUpdate<'a> {
    state: &'a str,
    output: Option<&'a Value>,
    error: Option<&'a str>,
    next_attempt_at: Option<DateTime<Utc>>,
}

impl StepUpdate<'_> {
    async fn apply<'e>(
        self,
        executor: impl sqlx::PgExecutor<'e>,
        workflow: Uuid,
        step: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE workflow_steps SET state = $3, output = COALESCE($4, output), error = COALESCE($5, error),
                    next_attempt_at = $6, finished_at = now()
             WHERE workflow_id = $1 AND name = $2",
        )
        .bind(workflow)
        .bind(step)
        .bind(self.state)
        .bind(self.output)
        .bind(self.error)
        .bind(self.next_attempt_at)
        .execute(executor)
        .await?;
        Ok(())
    }
}

/// Ends the workflow and hands the tenant back to the reconciler.
async fn finish<P>(
    services: &Services<P>,
    row: &WorkflowRow,
    state: WorkflowState,
    error: Option<&str>,
) -> Result<Driven, WorkflowError> {
    let mut tx = services.db.begin().await?;
    sqlx::query("UPDATE workflows SET state = $2, error = $3, finished_at = now(), updated_at = now() WHERE id = $1")
        .bind(row.id)
        .bind(state.as_str())
        .bind(error)
        .execute(&mut *tx)
        .await?;
    let (kind, message) = match state {
        WorkflowState::Succeeded => ("WorkflowSucceeded", format!("{} workflow {} succeeded", row.kind, row.id)),
        WorkflowState::Cancelled => {
            ("WorkflowCancelled", format!("{} workflow {} cancelled and undone", row.kind, row.id))
        }
        _ => ("WorkflowFailed", format!("{} workflow {} failed: {}", row.kind, row.id, error.unwrap_or("unknown"))),
    };
    let tenant = TenantId(row.tenant_id);
    journal::publish(
        &mut tx,
        Some(tenant),
        kind,
        &message,
        json!({ "workflow_id": row.id, "kind": row.kind, "error": error }),
    )
    .await?;
    sqlx::query("SELECT pg_notify($1, $2)").bind(TENANT_CHANNEL).bind(tenant.to_string()).execute(&mut *tx).await?;
    tx.commit().await?;
    metrics::counter!("indigo_workflows_finished_total", "kind" => row.kind.clone(), "state" => state.as_str())
        .increment(1);
    Ok(Driven::Finished(state))
}

/// Drives every unfinished workflow until none is left (tests, one-shot tools):
/// waits out retries and other holders of a tenant.
pub async fn run_until_idle<P: DatabaseProvider>(services: &Services<P>) -> Result<(), WorkflowError> {
    loop {
        let pending: Vec<(Uuid, Uuid)> = sqlx::query_as(
            "SELECT id, tenant_id FROM workflows WHERE state IN ('running', 'compensating') ORDER BY id",
        )
        .fetch_all(&services.db)
        .await?;
        if pending.is_empty() {
            return Ok(());
        }
        for (id, tenant) in pending {
            match drive(services, id, TenantId(tenant)).await? {
                Driven::Finished(_) => {}
                Driven::WaitUntil(at) => {
                    tokio::time::sleep((at - Utc::now()).to_std().unwrap_or_default()).await;
                }
                Driven::Busy => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}
