//! A tier change worked out before it runs: what would move and how long the
//! copy should take at the rate this installation's moves have reached, the
//! write pause they had, what the tenant would run on, the price, and what
//! would stop the change. Nothing is changed.

use indigo_core::api::{PlanChangePreview, PlanChangeRefusal, TableFootprint, Tenant};
use indigo_core::plan::{Limit, Plan};
use indigo_core::tenant::Isolation;
use sqlx::PgPool;

use super::store::active_for;
use crate::billing::Stripe;
use crate::providers::ReachDatabases;

/// The copy rate assumed until a move has been measured here: a cautious
/// figure below what the moves benchmark reaches (benchmarks/moves.md).
pub const DEFAULT_COPY_ROWS_PER_SECOND: f64 = 5_000.0;

/// How many recent moves the measured rate and pause come from.
const RECENT_MOVES: i64 = 20;

#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    #[error(transparent)]
    Control(#[from] sqlx::Error),
    /// The tenant's database could not be read.
    #[error("the tenant's database did not answer: {0}")]
    TenantDatabase(sqlx::Error),
    /// The tenant's database could not be reached (its cluster gone, say).
    #[error("the tenant's database is out of reach: {0}")]
    Unreached(#[from] crate::providers::ProviderError),
    /// Where the backups are kept could not be read.
    #[error("the backup store did not answer: {0}")]
    BackupStore(String),
}

/// What changing `tenant` from its plan (`from`) to `to` would do, on an
/// installation that may run `max_silos` silos.
pub async fn preview(
    db: &PgPool,
    databases: &dyn ReachDatabases,
    tenant: &Tenant,
    (from, to): (&Plan, &Plan),
    max_silos: Option<u32>,
) -> Result<PlanChangePreview, PreviewError> {
    let from_isolation = tenant.status.placement.as_ref().map_or(from.isolation, |p| p.isolation);
    let moves = from_isolation != to.isolation;
    let tables = footprint(databases, tenant).await?;
    let rows_total = tables.iter().map(|t| t.rows).sum();
    let bytes_total = tables.iter().map(|t| t.bytes).sum();

    let measured = measured(db).await?;
    let writes_last_5_minutes = match (&tenant.status.placement, moves) {
        (Some(placement), true) => {
            let database = databases.reach(placement.cluster.as_deref(), &placement.database).await?;
            let written = indigo_tenantdb::moves::recent_writes(&database, tenant.id, 5).await;
            Some(written.map_err(PreviewError::TenantDatabase)?)
        }
        _ => None,
    };
    let usage = Usage::of_tables(&tables, ai_credits_this_month(db, tenant.id).await?);

    let mut refusals = Vec::new();
    if from.name == to.name {
        refusals.push(refusal("same_plan", format!("the tenant is on {} already", to.name)));
    }
    let mut conn = db.acquire().await?;
    if let Some((id, kind)) = active_for(&mut conn, tenant.id).await? {
        refusals.push(refusal("workflow_in_progress", format!("its {kind} workflow {id} is still running")));
    }
    refusals.extend(over_limits(&usage, to));
    if moves && to.isolation == Isolation::Silo {
        refusals.extend(silo_quota(db, max_silos).await?);
    }

    Ok(PlanChangePreview {
        tenant_id: tenant.id,
        from_plan: from.name.to_string(),
        to_plan: to.name.to_string(),
        moves,
        from_isolation,
        to_isolation: to.isolation,
        estimated_copy_seconds: if moves { rows_total as f64 / measured.rows_per_second } else { 0.0 },
        tables,
        rows_total,
        bytes_total,
        copy_rows_per_second: measured.rows_per_second,
        moves_measured: measured.moves,
        expected_pause_ms: if moves { measured.longest_pause_ms } else { None },
        writes_last_5_minutes,
        target_silo: to.silo.clone(),
        price_per_month_from: from.price_per_month,
        price_per_month_to: to.price_per_month,
        currency: to.currency.clone(),
        proration: None,
        refusals,
    })
}

/// What changing `tenant` to `to` would invoice in prorations, as Stripe's
/// invoice preview says; `None` when it is not billed, or Stripe did not
/// answer within a few seconds (the preview goes on without it).
pub async fn proration(db: &PgPool, stripe: &Stripe, tenant: &Tenant, to: &Plan) -> Option<i64> {
    let subscription: Option<String> =
        sqlx::query_scalar("SELECT subscription_id FROM tenant_billing WHERE tenant_id = $1 AND status = 'active'")
            .bind(tenant.id.0)
            .fetch_optional(db)
            .await
            .ok()
            .flatten();
    let subscription = subscription?;
    let asked = async {
        let price = stripe.ensure_price(to).await?;
        stripe.preview_price_change(&subscription, &price).await
    };
    match tokio::time::timeout(std::time::Duration::from_secs(5), asked).await {
        Ok(Ok(amount)) => Some(amount),
        Ok(Err(error)) => {
            tracing::warn!(%error, tenant = %tenant.id, "no proration for the plan-change preview");
            None
        }
        Err(_) => {
            tracing::warn!(tenant = %tenant.id, "Stripe did not answer the plan-change preview in time");
            None
        }
    }
}

/// What this installation's recent moves reached.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measured {
    /// How many finished moves the figures come from; 0: none, the rate is the default.
    pub moves: i64,
    /// Their median copy rate: rows over the time from start to switch.
    pub rows_per_second: f64,
    /// The longest write pause they had.
    pub longest_pause_ms: Option<i64>,
}

/// The copy rate and pause of the recent moves that finished.
pub async fn measured(db: &PgPool) -> Result<Measured, sqlx::Error> {
    let (moves, median_rate, longest_pause_ms): (i64, Option<f64>, Option<i64>) = sqlx::query_as(
        "SELECT count(*), percentile_cont(0.5) WITHIN GROUP (ORDER BY rate), max(pause_ms)
         FROM (SELECT rows_total / GREATEST(EXTRACT(EPOCH FROM switched_at - started_at)::float8, 0.001) AS rate,
                      pause_ms
               FROM tenant_moves
               WHERE phase = 'done' AND switched_at IS NOT NULL AND rows_total > 0
               ORDER BY finished_at DESC LIMIT $1) recent",
    )
    .bind(RECENT_MOVES)
    .fetch_one(db)
    .await?;
    Ok(Measured { moves, rows_per_second: median_rate.unwrap_or(DEFAULT_COPY_ROWS_PER_SECOND), longest_pause_ms })
}

/// The tenant's rows per table where they are now; none before it is placed.
pub async fn footprint(databases: &dyn ReachDatabases, tenant: &Tenant) -> Result<Vec<TableFootprint>, PreviewError> {
    let Some(placement) = &tenant.status.placement else { return Ok(Vec::new()) };
    let database = databases.reach(placement.cluster.as_deref(), &placement.database).await?;
    let tables = indigo_tenantdb::schema::TENANT_TABLES;
    indigo_tenantdb::moves::footprint_of(&database, tenant.id, tables).await.map_err(PreviewError::TenantDatabase)
}

/// What a tenant uses of the limits a plan change is checked against.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    pub products: u64,
    /// Its rows' stored size (as the storage job measures a pool tenant).
    pub storage_bytes: u64,
    pub ai_credits_this_month: f64,
}

impl Usage {
    /// Measured now: its rows where they are, and its AI credits this month.
    pub async fn of(db: &PgPool, databases: &dyn ReachDatabases, tenant: &Tenant) -> Result<Self, PreviewError> {
        let tables = footprint(databases, tenant).await?;
        Ok(Self::of_tables(&tables, ai_credits_this_month(db, tenant.id).await?))
    }

    fn of_tables(tables: &[TableFootprint], ai_credits_this_month: f64) -> Self {
        let products = tables.iter().find(|t| t.table == "products").map_or(0, |t| t.rows);
        Self {
            products: u64::try_from(products).unwrap_or(0),
            storage_bytes: tables.iter().map(|t| u64::try_from(t.bytes).unwrap_or(0)).sum(),
            ai_credits_this_month,
        }
    }
}

/// The AI credits `tenant` has used since the start of this month (UTC), as its limit counts them.
async fn ai_credits_this_month(db: &PgPool, tenant: indigo_core::tenant::TenantId) -> Result<f64, sqlx::Error> {
    sqlx::query_scalar("SELECT ai_credits_used($1, date_trunc('month', now(), 'UTC'))")
        .bind(tenant.0)
        .fetch_one(db)
        .await
}

/// A refusal when the installation already runs `max_silos` silos: one more
/// (a tenant moving into one) would be past what the provider allows it — on
/// AWS, the account's RDS DB cluster quota. Silos being moved into count.
pub async fn silo_quota(db: &PgPool, max_silos: Option<u32>) -> Result<Option<PlanChangeRefusal>, sqlx::Error> {
    let Some(max) = max_silos else { return Ok(None) };
    let running: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM tenants t
         WHERE t.placement->>'isolation' = 'silo'
            OR EXISTS (SELECT 1 FROM tenant_moves m WHERE m.tenant_id = t.id AND m.to_isolation = 'silo'
                         AND m.phase NOT IN ('done', 'rolled_back'))",
    )
    .fetch_one(db)
    .await?;
    Ok((running >= i64::from(max)).then(|| {
        refusal("provider_quota", format!("the installation runs {running} silos and may run {max} (max_silos)"))
    }))
}

const BYTES_PER_GB: u64 = 1_000_000_000;

/// The limits of `to` that a tenant using `usage` already exceeds: a change
/// to it would leave the tenant over them, so it is refused (`over_limit`).
pub fn over_limits(usage: &Usage, to: &Plan) -> Vec<PlanChangeRefusal> {
    let mut refusals = Vec::new();
    if let Limit::AtMost(max) = to.limits.products
        && usage.products > max
    {
        refusals
            .push(refusal("over_limit", format!("it has {} products and {} allows {max}", usage.products, to.name)));
    }
    if let Limit::AtMost(max) = to.limits.ai_credits
        && usage.ai_credits_this_month > max as f64
    {
        let used = usage.ai_credits_this_month;
        let message = format!("it has used {used:.0} AI credits this month and {} allows {max} a month", to.name);
        refusals.push(refusal("over_limit", message));
    }
    if let Limit::AtMost(max) = to.limits.storage_gb
        && usage.storage_bytes > max.saturating_mul(BYTES_PER_GB)
    {
        let gb = usage.storage_bytes as f64 / BYTES_PER_GB as f64;
        refusals.push(refusal("over_limit", format!("it stores {gb:.1} GB and {} allows {max} GB", to.name)));
    }
    refusals
}

fn refusal(code: &str, message: String) -> PlanChangeRefusal {
    PlanChangeRefusal { code: code.to_owned(), message }
}

#[cfg(test)]
mod tests {
    use super::*;
    use indigo_core::plan::PlanCatalog;

    #[test]
    fn a_plan_is_refused_for_each_limit_the_tenant_already_exceeds() {
        let plans = PlanCatalog::parse("plans.toml", include_str!("../../../policies/plans.toml")).unwrap();
        let growth = plans.get("growth").unwrap();
        let within = Usage { products: 1_000, storage_bytes: 10 * BYTES_PER_GB, ai_credits_this_month: 500.0 };
        assert_eq!(over_limits(&within, growth), [], "at the limits is within them");
        let over = Usage { products: 1_001, storage_bytes: 10 * BYTES_PER_GB + 1, ai_credits_this_month: 512.0 };
        let messages: Vec<String> = over_limits(&over, growth).into_iter().map(|r| r.message).collect();
        assert_eq!(
            messages,
            [
                "it has 1001 products and growth allows 1000",
                "it has used 512 AI credits this month and growth allows 500 a month",
                "it stores 10.0 GB and growth allows 10 GB",
            ]
        );
        assert_eq!(over_limits(&over, plans.get("enterprise").unwrap()), [], "unlimited");
    }
}
