//! The roll-up: usage events → per tenant × event type × hour and day.
//!
//! Each bucket is recomputed from its raw events (never incremented), so it
//! always equals the sum of the distinct events it holds, whatever was
//! delivered twice, late, or interrupted. A run recomputes the buckets touched
//! by events received since the previous run, in one transaction with the new
//! watermark: a run that dies changes nothing, the next one does its work.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use crate::failpoints::{Failpoints, Point};

pub const JOB: &str = "rollup";

/// Events are inserted by short transactions stamped at their start; looking
/// this far back past the watermark catches those that committed after it.
const IN_FLIGHT_MARGIN: &str = "5 minutes";

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rollup {
    /// Recomputed from every event (first run), or only the touched buckets.
    pub full: bool,
    pub hours_changed: u64,
    pub days_changed: u64,
    pub watermark: DateTime<Utc>,
}

/// Runs one roll-up; `None` when another daemon is running one right now.
pub async fn roll_up(db: &PgPool, failpoints: &Failpoints) -> Result<Option<Rollup>, sqlx::Error> {
    let mut tx = db.begin().await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtextextended('indigo:job:rollup', 0))")
        .fetch_one(&mut *tx)
        .await?;
    if !locked {
        return Ok(None);
    }
    sqlx::query("INSERT INTO jobs (name, schedule) VALUES ($1, '') ON CONFLICT (name) DO NOTHING")
        .bind(JOB)
        .execute(&mut *tx)
        .await?;
    let (watermark, started): (Option<DateTime<Utc>>, DateTime<Utc>) =
        sqlx::query_as("SELECT watermark, now() FROM jobs WHERE name = $1").bind(JOB).fetch_one(&mut *tx).await?;
    let full = watermark.is_none();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TEMP TABLE touched ON COMMIT DROP AS
         SELECT DISTINCT tenant_id, event_type, date_trunc('hour', occurred_at, 'UTC') AS hour
         FROM usage_events WHERE $1::timestamptz IS NULL OR received_at >= $1 - interval '{IN_FLIGHT_MARGIN}'"
    )))
    .bind(watermark)
    .execute(&mut *tx)
    .await?;
    let hourly = if full {
        "SELECT tenant_id, event_type, date_trunc('hour', occurred_at, 'UTC'), sum(quantity), count(*)
         FROM usage_events GROUP BY 1, 2, 3"
    } else {
        "SELECT t.tenant_id, t.event_type, t.hour, sum(e.quantity), count(*)
         FROM touched t JOIN usage_events e
           ON e.tenant_id = t.tenant_id AND e.event_type = t.event_type
          AND e.occurred_at >= t.hour AND e.occurred_at < t.hour + interval '1 hour'
         GROUP BY 1, 2, 3"
    };
    let hours_changed = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO usage_hourly (tenant_id, event_type, hour, quantity, events) {hourly}
         ON CONFLICT (tenant_id, event_type, hour) DO UPDATE
             SET quantity = EXCLUDED.quantity, events = EXCLUDED.events, updated_at = now()
             WHERE (usage_hourly.quantity, usage_hourly.events) IS DISTINCT FROM (EXCLUDED.quantity, EXCLUDED.events)"
    )))
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let days_changed = sqlx::query(
        "INSERT INTO usage_daily (tenant_id, event_type, day, quantity, events)
         SELECT h.tenant_id, h.event_type, d.day, sum(h.quantity), sum(h.events)
         FROM (SELECT DISTINCT tenant_id, event_type, (hour AT TIME ZONE 'UTC')::date AS day FROM touched) d
         JOIN usage_hourly h
           ON h.tenant_id = d.tenant_id AND h.event_type = d.event_type
          AND h.hour >= d.day::timestamp AT TIME ZONE 'UTC' AND h.hour < (d.day + 1)::timestamp AT TIME ZONE 'UTC'
         GROUP BY 1, 2, 3
         ON CONFLICT (tenant_id, event_type, day) DO UPDATE
             SET quantity = EXCLUDED.quantity, events = EXCLUDED.events, updated_at = now()
             WHERE (usage_daily.quantity, usage_daily.events) IS DISTINCT FROM (EXCLUDED.quantity, EXCLUDED.events)",
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    failpoints.crash_at("job", JOB, Point::AfterRun);
    sqlx::query("UPDATE jobs SET watermark = $2 WHERE name = $1").bind(JOB).bind(started).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(Some(Rollup { full, hours_changed, days_changed, watermark: started }))
}
