//! The roll-up: usage events → per tenant × event type × hour and day.
//!
//! Each bucket is recomputed from its raw events (never incremented), so it
//! always equals the sum of the distinct events it holds, whatever was
//! delivered twice, late, or interrupted. Every insert of events logs the
//! buckets it touched (`usage_touched`, filled by a trigger in the inserting
//! transaction); a run takes the committed log rows and recomputes those
//! buckets, in one transaction with the new watermark: a run that dies changes
//! nothing, the next one does its work. An insert that commits during a run
//! leaves its log rows for the next one.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use crate::failpoints::{Failpoints, Point};

pub const JOB: &str = "rollup";

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rollup {
    /// Recomputed from every event (first run), or only the touched buckets.
    pub full: bool,
    pub hours_changed: u64,
    pub days_changed: u64,
    pub watermark: DateTime<Utc>,
}

/// Takes the buckets touched since the last run out of the log into the
/// temporary table `touched`, each once. The log rows of inserts not yet
/// committed are not seen, so they stay for the next run; the recomputation,
/// a later statement, sees every event whose log row was taken.
async fn take_touched(tx: &mut sqlx::PgConnection) -> Result<u64, sqlx::Error> {
    sqlx::query(
        "CREATE TEMP TABLE touched (tenant_id uuid, event_type text, hour timestamptz, PRIMARY KEY (tenant_id, event_type, hour))
         ON COMMIT DROP",
    )
    .execute(&mut *tx)
    .await?;
    let buckets = sqlx::query(
        "WITH taken AS (DELETE FROM usage_touched RETURNING tenant_ids, event_types, hours)
         INSERT INTO touched
         SELECT DISTINCT bucket.* FROM taken, unnest(tenant_ids, event_types, hours) AS bucket",
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    Ok(buckets)
}

/// Up to this many touched buckets, each is summed from its own events through
/// the events' index; beyond, one pass over the events costs less.
const PROBED_BUCKETS: u64 = 50_000;

/// The first run: every bucket from every event. Aggregated into a temporary
/// table first, which PostgreSQL may compute with parallel workers (an
/// `INSERT ... SELECT` may not).
async fn recompute_all(tx: &mut sqlx::PgConnection) -> Result<(u64, u64), sqlx::Error> {
    sqlx::query(
        "CREATE TEMP TABLE fresh_hourly ON COMMIT DROP AS
         SELECT tenant_id, event_type, date_trunc('hour', occurred_at, 'UTC') AS hour,
                sum(quantity) AS quantity, count(*) AS events
         FROM usage_events GROUP BY 1, 2, 3",
    )
    .execute(&mut *tx)
    .await?;
    let hours =
        upsert(tx, "usage_hourly", "hour", "SELECT tenant_id, event_type, hour, quantity, events FROM fresh_hourly")
            .await?;
    let days = upsert(
        tx,
        "usage_daily",
        "day",
        "SELECT tenant_id, event_type, (hour AT TIME ZONE 'UTC')::date, sum(quantity), sum(events)
         FROM usage_hourly GROUP BY 1, 2, 3",
    )
    .await?;
    Ok((hours, days))
}

/// Later runs: only the `buckets` buckets in `touched`.
async fn recompute_touched(tx: &mut sqlx::PgConnection, buckets: u64) -> Result<(u64, u64), sqlx::Error> {
    let (hourly, daily) = if buckets <= PROBED_BUCKETS {
        // One index range scan per bucket, whatever the planner would estimate.
        (
            "SELECT t.tenant_id, t.event_type, t.hour, s.quantity, s.events
             FROM touched t CROSS JOIN LATERAL (
                 SELECT sum(e.quantity) AS quantity, count(*) AS events FROM usage_events e
                 WHERE e.tenant_id = t.tenant_id AND e.event_type = t.event_type
                   AND e.occurred_at >= t.hour AND e.occurred_at < t.hour + interval '1 hour') s
             WHERE s.events > 0",
            "SELECT d.tenant_id, d.event_type, d.day, s.quantity, s.events
             FROM (SELECT DISTINCT tenant_id, event_type, (hour AT TIME ZONE 'UTC')::date AS day FROM touched) d
             CROSS JOIN LATERAL (
                 SELECT sum(h.quantity) AS quantity, sum(h.events) AS events FROM usage_hourly h
                 WHERE h.tenant_id = d.tenant_id AND h.event_type = d.event_type
                   AND h.hour >= d.day::timestamp AT TIME ZONE 'UTC'
                   AND h.hour < (d.day + 1)::timestamp AT TIME ZONE 'UTC') s
             WHERE s.events > 0",
        )
    } else {
        sqlx::query("ANALYZE touched").execute(&mut *tx).await?;
        (
            "SELECT t.tenant_id, t.event_type, t.hour, sum(e.quantity), count(*)
             FROM touched t JOIN usage_events e
               ON e.tenant_id = t.tenant_id AND e.event_type = t.event_type
              AND date_trunc('hour', e.occurred_at, 'UTC') = t.hour
              AND e.occurred_at >= t.hour AND e.occurred_at < t.hour + interval '1 hour'
             GROUP BY 1, 2, 3",
            "SELECT h.tenant_id, h.event_type, d.day, sum(h.quantity), sum(h.events)
             FROM (SELECT DISTINCT tenant_id, event_type, (hour AT TIME ZONE 'UTC')::date AS day FROM touched) d
             JOIN usage_hourly h
               ON h.tenant_id = d.tenant_id AND h.event_type = d.event_type
              AND h.hour >= d.day::timestamp AT TIME ZONE 'UTC' AND h.hour < (d.day + 1)::timestamp AT TIME ZONE 'UTC'
             GROUP BY 1, 2, 3",
        )
    };
    let hours = upsert(tx, "usage_hourly", "hour", hourly).await?;
    let days = upsert(tx, "usage_daily", "day", daily).await?;
    Ok((hours, days))
}

/// Sets the buckets of `table` (keyed by tenant, event type and `period`) to
/// the totals `select` computes; unchanged ones are not rewritten.
async fn upsert(tx: &mut sqlx::PgConnection, table: &str, period: &str, select: &str) -> Result<u64, sqlx::Error> {
    let statement = format!(
        "INSERT INTO {table} (tenant_id, event_type, {period}, quantity, events) {select}
         ON CONFLICT (tenant_id, event_type, {period}) DO UPDATE
             SET quantity = EXCLUDED.quantity, events = EXCLUDED.events, updated_at = now()
             WHERE ({table}.quantity, {table}.events) IS DISTINCT FROM (EXCLUDED.quantity, EXCLUDED.events)"
    );
    Ok(sqlx::query(sqlx::AssertSqlSafe(statement)).execute(tx).await?.rows_affected())
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
    // A month of a large fleet is a million buckets or more: aggregate in memory.
    sqlx::query("SET LOCAL work_mem = '512MB'").execute(&mut *tx).await?;
    let (hours_changed, days_changed) = if full {
        // The log is emptied first: the recomputation, a later statement,
        // sees every event whose log rows went.
        sqlx::query("DELETE FROM usage_touched").execute(&mut *tx).await?;
        recompute_all(&mut tx).await?
    } else {
        let buckets = take_touched(&mut tx).await?;
        recompute_touched(&mut tx, buckets).await?
    };
    failpoints.crash_at("job", JOB, Point::AfterRun);
    sqlx::query("UPDATE jobs SET watermark = $2 WHERE name = $1").bind(JOB).bind(started).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(Some(Rollup { full, hours_changed, days_changed, watermark: started }))
}
