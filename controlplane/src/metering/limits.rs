//! The limits job: each active tenant's use against its plan's limits, in the
//! tenant's own terms. API calls count per *local* day (the `timezone` of its
//! settings, UTC by default); AI credits per billing month. Reaching 80 % and
//! 100 % of a limit publishes `LimitApproaching` and `LimitReached`, once per
//! tenant, limit, period and threshold, however often the job runs.

use chrono::{DateTime, Utc};
use indigo_core::api::DailyCalls;
use indigo_core::plan::{Limit, PlanCatalog};
use indigo_core::tenant::TenantId;
use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::journal;

pub const JOB: &str = "limits";
const THRESHOLDS: [i16; 2] = [80, 100];

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LimitsReport {
    pub tenants_checked: u64,
    pub notices: u64,
}

#[derive(sqlx::FromRow)]
struct Usage {
    tenant: Uuid,
    slug: String,
    plan: String,
    timezone: String,
    /// The tenant's local day, as `YYYY-MM-DD`.
    local_day: String,
    api_calls_today: i64,
    ai_credits_this_month: f64,
    month: String,
}

/// Each active tenant's local day (`b.day_start`, `b.day_end`) and time zone
/// (`b.tz`). The day starts at midnight in the tenant's zone; an unknown zone
/// cannot be stored (the settings API checks it), UTC stands in otherwise.
macro_rules! local_days {
    () => {
        "WITH t AS (
             SELECT id, slug, plan,
                    COALESCE((SELECT name FROM pg_timezone_names WHERE name = settings->>'timezone'), 'UTC') AS tz
             FROM tenants WHERE lifecycle = 'active'),
         d AS (SELECT *, date_trunc('day', now() AT TIME ZONE tz) AS local_midnight FROM t),
         b AS (SELECT *, local_midnight AT TIME ZONE tz AS day_start,
                         (local_midnight + interval '1 day') AT TIME ZONE tz AS day_end,
                         date_trunc('month', now(), 'UTC') AS month_start FROM d)"
    };
}

/// A tenant's storefront calls since its local midnight, mostly from the
/// roll-ups (`storefront_calls`, in the control migrations).
macro_rules! calls_today {
    () => {
        "storefront_calls(b.id, b.day_start)"
    };
}

/// A tenant's AI credits since the start of its billing month (UTC), mostly
/// from the roll-ups (`ai_credits_used`, in the control migrations).
macro_rules! ai_credits_this_month {
    () => {
        "ai_credits_used(b.id, b.month_start)"
    };
}

/// Every active tenant's calls so far in its local day and AI credits this
/// month, for the data plane's daily limit and AI credit limit.
pub async fn daily_calls(db: &PgPool) -> Result<Vec<DailyCalls>, sqlx::Error> {
    let rows: Vec<(Uuid, i64, DateTime<Utc>, f64)> = sqlx::query_as(concat!(
        local_days!(),
        " SELECT b.id, ",
        calls_today!(),
        ", b.day_end, ",
        ai_credits_this_month!(),
        " FROM b"
    ))
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(tenant, calls, resets_at, ai_credits)| DailyCalls {
            tenant_id: TenantId(tenant),
            calls: u64::try_from(calls).unwrap_or(0),
            resets_at,
            ai_credits_this_month: ai_credits,
        })
        .collect())
}

pub async fn check_all(db: &PgPool, plans: &PlanCatalog) -> Result<LimitsReport, sqlx::Error> {
    let rows: Vec<Usage> = sqlx::query_as(concat!(
        local_days!(),
        " SELECT b.id AS tenant, b.slug, b.plan, b.tz AS timezone,
                 to_char(now() AT TIME ZONE b.tz, 'YYYY-MM-DD') AS local_day, ",
        calls_today!(),
        " AS api_calls_today,
                 ",
        ai_credits_this_month!(),
        " AS ai_credits_this_month,
                 to_char(b.month_start, 'YYYY-MM') AS month
          FROM b"
    ))
    .fetch_all(db)
    .await?;
    let mut report = LimitsReport::default();
    for usage in rows {
        let Ok(plan) = plans.get(&usage.plan) else { continue };
        report.tenants_checked += 1;
        let checks = [
            (
                "api_calls_per_day",
                plan.limits.api_calls_per_day,
                usage.api_calls_today as f64,
                usage.local_day.as_str(),
            ),
            ("ai_credits", plan.limits.ai_credits, usage.ai_credits_this_month, usage.month.as_str()),
        ];
        for (name, limit, used, period) in checks {
            let Limit::AtMost(allowed) = limit else { continue };
            for threshold in THRESHOLDS {
                if allowed > 0 && used * 100.0 >= allowed as f64 * f64::from(threshold) {
                    report.notices += notify(db, &usage, name, period, threshold, used, allowed as f64).await?;
                }
            }
        }
    }
    Ok(report)
}

/// Records and publishes one notice, unless it went out before.
async fn notify(
    db: &PgPool,
    usage: &Usage,
    name: &str,
    period: &str,
    threshold: i16,
    used: f64,
    allowed: f64,
) -> Result<u64, sqlx::Error> {
    let mut tx = db.begin().await?;
    let fresh: Option<DateTime<Utc>> = sqlx::query_scalar(
        "INSERT INTO limit_notices (tenant_id, limit_name, period, threshold, used, allowed)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING RETURNING noticed_at",
    )
    .bind(usage.tenant)
    .bind(name)
    .bind(period)
    .bind(threshold)
    .bind(used)
    .bind(allowed)
    .fetch_optional(&mut *tx)
    .await?;
    if fresh.is_none() {
        return Ok(0);
    }
    let (kind, verb) =
        if threshold >= 100 { ("LimitReached", "reached") } else { ("LimitApproaching", "is at 80% of") };
    journal::publish(
        &mut tx,
        Some(TenantId(usage.tenant)),
        kind,
        &format!("{} {verb} its {name} limit for {period}: {used} of {allowed}", usage.slug),
        json!({ "limit": name, "period": period, "threshold": threshold, "used": used, "allowed": allowed,
                "timezone": usage.timezone }),
    )
    .await?;
    tx.commit().await?;
    Ok(1)
}
