//! A tier change, started by `PUT /v1/tenants/{slug}/plan`:
//!
//! entitlements → provision → copy → catch_up → cutover → billing → cleanup
//!
//! The new plan's limits take effect with the spec change that starts the
//! workflow (the routing table carries them). When the plan changes the
//! isolation model, the middle steps move the tenant's rows online between the
//! pool and its silo (see [`indigo_tenantdb::moves`]); otherwise they record that nothing
//! moves. Until billing, everything is undone on failure: the target released,
//! capture stopped, the old plan restored, the tenant serving where it was.
//! From billing on (the data is then served from the target) there is no way
//! back: a failure stops the workflow for an operator to retry, and it resumes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indigo_core::api::Placement;
use indigo_core::tenant::{Condition, Isolation};
use indigo_tenantdb::moves::{self, BATCH, CUTOVER_LAG, MoveError, Mover};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Definition, Kind, StepContext, StepError, workflow_steps};
use crate::journal::Actor;
use crate::providers::{DatabaseProvider, SiloTenant};
use crate::registry::{self, TenantRef};
use crate::status::StatusWrite;

pub struct TierChange;

/// What starts a tier change.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Input {
    pub from_plan: String,
    pub to_plan: String,
}

/// The condition a tier change owns on its tenant (the reconciler keeps it).
pub const CONDITION: &str = "TierChange";

workflow_steps! {
    pub enum Step {
        Entitlements => "entitlements",
        Provision => "provision",
        Copy => "copy",
        CatchUp => "catch_up",
        Cutover => "cutover",
        Billing => "billing",
        Cleanup => "cleanup",
    }
}

impl Definition for TierChange {
    const KIND: Kind = Kind::TierChange;
    type Step = Step;
    const STAGES: &'static [&'static [Step]] = &[
        &[Step::Entitlements],
        &[Step::Provision],
        &[Step::Copy],
        &[Step::CatchUp],
        &[Step::Cutover],
        &[Step::Billing],
        &[Step::Cleanup],
    ];
    const POINT_OF_NO_RETURN: Option<Step> = Some(Step::Billing);

    async fn run<P: DatabaseProvider>(step: Step, cx: &StepContext<'_, P>) -> Result<Value, StepError> {
        match step {
            Step::Entitlements => entitlements(cx).await,
            Step::Provision => provision(cx).await,
            Step::Copy => copy(cx).await,
            Step::CatchUp => catch_up(cx).await,
            Step::Cutover => cutover(cx).await,
            Step::Billing => billing(cx).await,
            Step::Cleanup => cleanup(cx).await,
        }
    }

    async fn compensate<P: DatabaseProvider>(step: Step, cx: &StepContext<'_, P>) -> Result<(), StepError> {
        match step {
            Step::Entitlements => restore_plan(cx).await,
            Step::Provision => release_target(cx).await,
            Step::Copy => match planned_move(cx)? {
                Some(planned) => Ok(planned.mover(cx).await?.stop_capture().await?),
                None => Ok(()),
            },
            Step::Cutover => reopen_source(cx).await,
            // Nothing of its own to undo (the copy and the target are undone above);
            // billing on is past the point of no return.
            Step::CatchUp | Step::Billing | Step::Cleanup => Ok(()),
        }
    }

    async fn on_failure<P: DatabaseProvider>(cx: &StepContext<'_, P>) -> Result<(), StepError> {
        let reason = cx.error.unwrap_or("the tier change was undone");
        sqlx::query(
            "UPDATE tenant_moves SET phase = 'rolled_back', error = $2, updated_at = now(), finished_at = now()
             WHERE workflow_id = $1 AND phase NOT IN ('switched', 'cleaning_up', 'done')",
        )
        .bind(cx.workflow_id)
        .bind(reason)
        .execute(&cx.services.db)
        .await?;
        let input = input(cx)?;
        let message = format!(
            "the change from {} to {} failed and was undone; the tenant serves as before: {reason}",
            input.from_plan, input.to_plan
        );
        set_condition(cx, false, "Failed", &message).await?;
        super::publish(cx, "TierChangeFailed", &message, json!({ "reason": reason })).await
    }
}

fn input<P>(cx: &StepContext<'_, P>) -> Result<Input, StepError> {
    serde_json::from_value(cx.input.clone()).map_err(|e| StepError::Permanent(format!("workflow input: {e}")))
}

impl From<MoveError> for StepError {
    fn from(error: MoveError) -> Self {
        if error.is_transient() { Self::Transient(error.to_string()) } else { Self::Permanent(error.to_string()) }
    }
}

/// A move between two databases, as `provision` recorded it. Either may be on
/// a cluster of its own (AWS), reached at the cluster's endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PlannedMove {
    from: Isolation,
    to: Isolation,
    source: String,
    target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    source_cluster: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target_cluster: Option<String>,
}

impl PlannedMove {
    async fn mover<P: DatabaseProvider>(&self, cx: &StepContext<'_, P>) -> Result<Mover, StepError> {
        let provider = &cx.services.provider;
        let source = provider.reach(self.source_cluster.as_deref(), &self.source).await?;
        let target = provider.reach(self.target_cluster.as_deref(), &self.target).await?;
        Ok(Mover::connect(cx.tenant_id, &source, &target).await?)
    }

    /// Whether the tenant is served from the move's target already.
    fn switched(&self, placement: Option<&Placement>) -> bool {
        placement.is_some_and(|p| p.database == self.target && p.cluster == self.target_cluster)
    }
}

/// The move `provision` set up, or `None` when the plan change moves nothing.
fn planned_move<P>(cx: &StepContext<'_, P>) -> Result<Option<PlannedMove>, StepError> {
    let Some(recorded) = cx.outputs.get("provision").and_then(|o| o.get("move")) else { return Ok(None) };
    if recorded.is_null() {
        return Ok(None);
    }
    serde_json::from_value(recorded.clone()).map(Some).map_err(|e| StepError::Permanent(format!("recorded move: {e}")))
}

/// Sets the tier-change condition, leaving the others as they are.
async fn set_condition<P>(cx: &StepContext<'_, P>, status: bool, reason: &str, message: &str) -> Result<(), StepError> {
    let mut conn = cx.services.db.acquire().await?;
    StatusWrite::new()
        .condition(Condition::new(CONDITION, status, reason, message))
        .apply(&mut conn, cx.tenant_id)
        .await?;
    Ok(())
}

/// Records the move's phase (and whatever else `set` assigns) for the API and the console.
async fn progress<P>(cx: &StepContext<'_, P>, phase: &str, set: &str, values: &[i64]) -> Result<(), StepError> {
    let assignments = if set.is_empty() { String::new() } else { format!(", {set}") };
    let sql = format!("UPDATE tenant_moves SET phase = $2, updated_at = now(){assignments} WHERE workflow_id = $1");
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(cx.workflow_id).bind(phase);
    for value in values {
        query = query.bind(*value);
    }
    query.execute(&cx.services.db).await?;
    Ok(())
}

async fn entitlements<P>(cx: &StepContext<'_, P>) -> Result<Value, StepError> {
    let input = input(cx)?;
    let tenant = super::tenant(cx).await?;
    if tenant.spec.plan.as_str() != input.to_plan {
        return Err(StepError::Permanent(format!(
            "the tenant's spec asks for plan {}, not {}",
            tenant.spec.plan, input.to_plan
        )));
    }
    let placement = tenant
        .status
        .placement
        .ok_or_else(|| StepError::Permanent("the tenant is not placed yet; nothing to change".into()))?;
    let moving = placement.isolation != tenant.spec.isolation;
    let message = format!("changing plan from {} to {}", input.from_plan, input.to_plan);
    set_condition(cx, false, if moving { "Moving" } else { "Changing" }, &message).await?;
    Ok(json!({ "from": placement, "to_isolation": tenant.spec.isolation, "moving": moving }))
}

async fn restore_plan<P>(cx: &StepContext<'_, P>) -> Result<(), StepError> {
    let input = input(cx)?;
    let plan = cx
        .services
        .plans
        .get(&input.from_plan)
        .map_err(|e| StepError::Permanent(format!("the previous plan is gone from the catalogue: {e}")))?;
    let mut conn = cx.services.db.acquire().await?;
    let current = registry::get(&mut conn, &TenantRef::Id(cx.tenant_id)).await?;
    // Only our own change is undone; a newer spec is someone else's decision.
    if current.spec.plan.as_str() == input.to_plan {
        let actor = Actor::system("tier-change");
        registry::change_plan(&mut conn, &actor, None, &TenantRef::Id(cx.tenant_id), plan).await?;
    }
    Ok(())
}

async fn provision<P: DatabaseProvider>(cx: &StepContext<'_, P>) -> Result<Value, StepError> {
    let recorded = cx.outputs.get("entitlements").cloned().unwrap_or_default();
    if recorded["moving"] != json!(true) {
        return Ok(json!({ "move": null }));
    }
    let from: Placement = serde_json::from_value(recorded["from"].clone())
        .map_err(|e| StepError::Permanent(format!("recorded placement: {e}")))?;
    let to = match from.isolation {
        Isolation::Pool => Isolation::Silo,
        Isolation::Silo => Isolation::Pool,
    };
    // Recorded before the provider is asked, so that its failure shows on the move too; with what
    // a preview would have said, to be seen beside what happens.
    let estimate = super::preview::measured(&cx.services.db).await?;
    sqlx::query(
        "INSERT INTO tenant_moves (workflow_id, tenant_id, from_isolation, to_isolation, source_database, phase,
                                   estimated_rows_per_second, estimated_pause_ms)
         VALUES ($1, $2, $3, $4, $5, 'provisioning', $6, $7) ON CONFLICT (workflow_id) DO NOTHING",
    )
    .bind(cx.workflow_id)
    .bind(cx.tenant_id.0)
    .bind(from.isolation.as_str())
    .bind(to.as_str())
    .bind(&from.database)
    .bind(estimate.rows_per_second)
    .bind(estimate.longest_pause_ms)
    .execute(&cx.services.db)
    .await?;
    let tenant = super::tenant(cx).await?;
    let (target, target_cluster) = match to {
        Isolation::Silo => {
            let silo = cx.services.provider.ensure_silo(&SiloTenant::of(&tenant, &cx.services.plans)?).await?;
            if let Some(why) = silo.unavailable {
                // An Aurora cluster takes minutes to come up; the step is retried until it serves.
                return Err(StepError::Transient(format!("waiting for the tenant's silo: {why}")));
            }
            (silo.database, silo.cluster)
        }
        Isolation::Pool => (cx.services.tenant_dbs.pool_database.clone(), None),
    };
    let planned = PlannedMove {
        from: from.isolation,
        to,
        source: from.database.clone(),
        target,
        source_cluster: from.cluster.clone(),
        target_cluster,
    };
    sqlx::query(
        "UPDATE tenant_moves SET target_database = $2, target_cluster = $3, updated_at = now() WHERE workflow_id = $1",
    )
    .bind(cx.workflow_id)
    .bind(&planned.target)
    .bind(&planned.target_cluster)
    .execute(&cx.services.db)
    .await?;
    planned.mover(cx).await?.prepare_target().await?;
    let target = planned.target_cluster.as_deref().unwrap_or(&planned.target);
    super::publish(
        cx,
        "MoveStarted",
        &format!("moving {} from the {} to the {} ({target})", tenant.slug, planned.from, planned.to),
        json!({ "from": planned.from, "to": planned.to, "target": planned.target, "cluster": planned.target_cluster }),
    )
    .await?;
    Ok(json!({ "move": planned }))
}

/// Undoes `provision`: the target is released unless the tenant is served from it.
async fn release_target<P: DatabaseProvider>(cx: &StepContext<'_, P>) -> Result<(), StepError> {
    let tenant = super::tenant(cx).await?;
    let Some(planned) = planned_move(cx)? else {
        // `provision` failed before it recorded the move, perhaps after asking
        // for a silo (an Aurora cluster that never served): it goes too, while
        // the tenant is still served from the pool.
        let recorded = cx.outputs.get("entitlements").cloned().unwrap_or_default();
        let in_pool = tenant.status.placement.as_ref().is_some_and(|p| p.isolation == Isolation::Pool);
        if recorded["moving"] == json!(true) && recorded["from"]["isolation"] == json!(Isolation::Pool) && in_pool {
            cx.services.provider.delete_silo(&SiloTenant::of(&tenant, &cx.services.plans)?).await?;
        }
        return Ok(());
    };
    if planned.switched(tenant.status.placement.as_ref()) {
        return Err(StepError::Permanent(format!("the tenant is served from {}; not releasing it", planned.target)));
    }
    match planned.to {
        Isolation::Silo => {
            cx.services.provider.delete_silo(&SiloTenant::of(&tenant, &cx.services.plans)?).await?;
            super::forget_database(cx, planned.target_cluster.as_deref(), &planned.target);
        }
        Isolation::Pool => {
            planned.mover(cx).await?.clear_target().await?;
        }
    }
    Ok(())
}

async fn copy<P: DatabaseProvider>(cx: &StepContext<'_, P>) -> Result<Value, StepError> {
    let Some(planned) = planned_move(cx)? else { return Ok(json!({ "skipped": "nothing moves" })) };
    let mover = planned.mover(cx).await?;
    mover.start_capture().await?;
    let total = mover.count_source().await?;
    progress(cx, "copying", "rows_total = $3, rows_copied = 0", &[total]).await?;
    // The copy reports rows as it streams; a reporter writes them down twice a second.
    let copied = Arc::new(AtomicU64::new(0));
    let reporter = {
        let (db, workflow, copied) = (cx.services.db.clone(), cx.workflow_id, copied.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let rows = i64::try_from(copied.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
                let _ =
                    sqlx::query("UPDATE tenant_moves SET rows_copied = $2, updated_at = now() WHERE workflow_id = $1")
                        .bind(workflow)
                        .bind(rows)
                        .execute(&db)
                        .await;
            }
        })
    };
    let result = mover.copy(|rows| copied.store(rows, Ordering::Relaxed)).await;
    reporter.abort();
    let checks = result?;
    let rows: i64 = checks.iter().map(|c| c.rows).sum();
    let lag = mover.lag().await?;
    progress(cx, "catching_up", "rows_copied = $3, lag = $4", &[rows, lag]).await?;
    // The routing table now names the target as the tenant's next database.
    super::bump_routing_version(cx).await?;
    Ok(json!({ "rows": rows, "checks": checks }))
}

/// Applies the log until little is left: the cut-over then applies the rest
/// with the tenant's writes held, so the pause stays short.
async fn catch_up<P: DatabaseProvider>(cx: &StepContext<'_, P>) -> Result<Value, StepError> {
    let Some(planned) = planned_move(cx)? else { return Ok(json!({ "skipped": "nothing moves" })) };
    let mover = planned.mover(cx).await?;
    let (mut applied, mut verified) = (0, 0);
    loop {
        applied += mover.apply_batch(BATCH).await?;
        verified += mover.verify_settled().await?;
        let lag = mover.lag().await?;
        progress(cx, "catching_up", "lag = $3", &[lag]).await?;
        if lag < CUTOVER_LAG {
            return Ok(json!({ "applied": applied, "verified": verified, "lag": lag }));
        }
    }
}

async fn cutover<P: DatabaseProvider>(cx: &StepContext<'_, P>) -> Result<Value, StepError> {
    let Some(planned) = planned_move(cx)? else { return Ok(json!({ "skipped": "nothing moves" })) };
    let tenant = super::tenant(cx).await?;
    let mover = planned.mover(cx).await?;
    if planned.switched(tenant.status.placement.as_ref()) {
        // Switched before a crash: the target has taken writes since, so there is nothing to compare.
        mover.close_fence().await?;
        progress(cx, "switched", "", &[]).await?;
        return Ok(json!({ "resumed_after_switch": true }));
    }
    progress(cx, "cutting_over", "", &[]).await?;
    // Each part of the pause is timed: it is the one number the tenant feels.
    let pause = mover.pause_writes().await?;
    let (waited, locked) = (pause.waited(), pause.held());
    let drained = mover.drain().await?;
    let drain = pause.held() - locked;
    cx.services.failpoints.hold(Kind::TierChange, "cutover").await;
    let checks = mover.verify_changed().await?;
    let verify = pause.held() - locked - drain;
    mover.close_fence().await?;
    let placement = Placement {
        isolation: planned.to,
        database: planned.target.clone(),
        cluster: planned.target_cluster.clone(),
        service: None,
    };
    // The routing version grows with the placement: data planes pick the new database up.
    let mut conn = cx.services.db.acquire().await?;
    StatusWrite::new().placement(Some(placement)).apply(&mut conn, cx.tenant_id).await?;
    drop(conn);
    let held = pause.release().await;
    let pause_ms = i64::try_from(held.as_millis()).unwrap_or(i64::MAX);
    progress(cx, "switched", "pause_ms = $3, lag = 0, switched_at = now()", &[pause_ms]).await?;
    let rows: i64 = checks.iter().map(|c| c.rows).sum();
    super::publish(
        cx,
        "MoveSwitched",
        &format!("{} now served from the {} ({}); writes held {pause_ms} ms", tenant.slug, planned.to, planned.target),
        json!({ "target": planned.target, "pause_ms": pause_ms, "rows": rows }),
    )
    .await?;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Ok(json!({
        "pause_ms": pause_ms, "drained": drained, "checks": checks,
        "lock_ms": ms(locked), "drain_ms": ms(drain), "verify_ms": ms(verify),
        // Before the pause: looking for a gap between the tenant's writes.
        "gap_wait_ms": ms(waited),
    }))
}

/// Undoes a cut-over that did not switch: the source takes writes again.
async fn reopen_source<P: DatabaseProvider>(cx: &StepContext<'_, P>) -> Result<(), StepError> {
    let Some(planned) = planned_move(cx)? else { return Ok(()) };
    let tenant = super::tenant(cx).await?;
    if planned.switched(tenant.status.placement.as_ref()) {
        return Err(StepError::Permanent(
            "routing already switched to the target; a move back is a new tier change".into(),
        ));
    }
    planned.mover(cx).await?.open_fence().await?;
    Ok(())
}

async fn billing<P>(cx: &StepContext<'_, P>) -> Result<Value, StepError> {
    let Some(stripe) = &cx.services.stripe else { return Ok(json!({ "billing": "off" })) };
    let input = input(cx)?;
    let plan = cx
        .services
        .plans
        .get(&input.to_plan)
        .map_err(|e| StepError::Permanent(format!("plan {}: {e}", input.to_plan)))?;
    let subscription: Option<String> =
        sqlx::query_scalar("SELECT subscription_id FROM tenant_billing WHERE tenant_id = $1 AND status = 'active'")
            .bind(cx.tenant_id.0)
            .fetch_optional(&cx.services.db)
            .await?
            .flatten();
    let Some(subscription) = subscription else { return Ok(json!({ "billing": "no subscription" })) };
    let price = stripe.ensure_price(plan).await?;
    stripe.change_price(&subscription, &price, &cx.key("price")).await?;
    sqlx::query("UPDATE tenant_billing SET price_id = $2, updated_at = now() WHERE tenant_id = $1")
        .bind(cx.tenant_id.0)
        .bind(&price)
        .execute(&cx.services.db)
        .await?;
    Ok(json!({ "subscription_id": subscription, "price_id": price }))
}

/// After the grace period (during which the source still holds the rows, so
/// an operator could go back), releases the source.
async fn cleanup<P: DatabaseProvider>(cx: &StepContext<'_, P>) -> Result<Value, StepError> {
    let input = input(cx)?;
    let released = match planned_move(cx)? {
        None => json!(null),
        Some(planned) => {
            let switched_at: Option<chrono::DateTime<chrono::Utc>> =
                sqlx::query_scalar("SELECT switched_at FROM tenant_moves WHERE workflow_id = $1")
                    .bind(cx.workflow_id)
                    .fetch_one(&cx.services.db)
                    .await?;
            let grace = chrono::Duration::from_std(cx.services.settings.move_grace).unwrap_or_default();
            let due = switched_at.unwrap_or_else(chrono::Utc::now) + grace;
            if let Ok(wait) = (due - chrono::Utc::now()).to_std() {
                tokio::time::sleep(wait).await;
            }
            progress(cx, "cleaning_up", "", &[]).await?;
            // The source is not reached unless it is released here: a silo
            // source may be gone already (a cleanup that ran before a crash).
            let target = cx.services.provider.reach(planned.target_cluster.as_deref(), &planned.target).await?;
            moves::forget_touched(&target, cx.tenant_id).await?;
            let released = match planned.from {
                Isolation::Pool => json!({ "rows_deleted": planned.mover(cx).await?.release_source().await? }),
                Isolation::Silo => {
                    let tenant = super::tenant(cx).await?;
                    cx.services.provider.delete_silo(&SiloTenant::of(&tenant, &cx.services.plans)?).await?;
                    super::forget_database(cx, planned.source_cluster.as_deref(), &planned.source);
                    json!({ "database_dropped": planned.source })
                }
            };
            progress(cx, "done", "finished_at = now()", &[]).await?;
            released
        }
    };
    let message = format!("plan changed from {} to {}", input.from_plan, input.to_plan);
    set_condition(cx, true, "Changed", &message).await?;
    super::publish(cx, "TierChanged", &message, json!({ "from_plan": input.from_plan, "to_plan": input.to_plan }))
        .await?;
    Ok(json!({ "released": released }))
}
