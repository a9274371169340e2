//! Usage proven against Stripe: for every billed tenant and meter, what Indigo
//! reported for each closed hour (`billing_reports`) compared with what Stripe
//! says its meter received for that customer and hour (meter event summaries);
//! and each metered line of the tenant's finalized invoices compared with
//! Indigo's total for the line's period. A window that differs is a mismatch,
//! kept with both numbers; a tenant that leaves or regains parity is an event
//! (`BillingParityLost`, `BillingParityRestored`). `GET /v1/billing/parity`
//! lists the last check.

use chrono::{DateTime, Duration, Utc};
use indigo_core::api::ParityMismatch;
use indigo_core::tenant::TenantId;
use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::billing::{BillingError, METERS, Stripe};
use crate::journal;

pub const JOB: &str = "billing_parity";

/// How far back windows are compared: Stripe takes meter events up to 35 days old.
const LOOKBACK_DAYS: i64 = 35;

/// Reported and received amounts closer than this are equal (they are sums of decimals).
const TOLERANCE: f64 = 1e-6;

#[derive(Debug, thiserror::Error)]
pub enum ParityError {
    #[error(transparent)]
    Billing(#[from] BillingError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ParityReport {
    pub tenants_checked: u64,
    pub tenants_out_of_parity: u64,
    pub mismatches: u64,
}

/// Compares every billed tenant's reported windows with Stripe's.
pub async fn check(db: &PgPool, stripe: &Stripe) -> Result<ParityReport, ParityError> {
    let billed: Vec<(Uuid, String, String)> = sqlx::query_as(
        "SELECT b.tenant_id, b.customer_id, t.slug FROM tenant_billing b JOIN tenants t ON t.id = b.tenant_id
         WHERE b.status = 'active' ORDER BY b.tenant_id",
    )
    .fetch_all(db)
    .await?;
    let mut report = ParityReport::default();
    // Whole hours (Stripe's summaries are aligned to them), closed ones the sync has had its
    // turn at: the last closed hour may still be on its way.
    let now = Utc::now();
    let this_hour = now - Duration::seconds(now.timestamp().rem_euclid(3600));
    let until = this_hour - Duration::hours(1);
    let since = until - Duration::days(LOOKBACK_DAYS) + Duration::hours(1);
    for (tenant, customer, slug) in billed {
        let mut mismatches = Vec::new();
        for meter in METERS {
            let reported: Vec<(DateTime<Utc>, f64)> = sqlx::query_as(
                "SELECT window_start, reported_quantity FROM billing_reports
                 WHERE tenant_id = $1 AND meter = $2 AND window_start >= $3 AND window_start < $4
                 ORDER BY window_start",
            )
            .bind(tenant)
            .bind(meter.event_name)
            .bind(since)
            .bind(until)
            .fetch_all(db)
            .await?;
            let received =
                stripe.received_hourly(meter.event_name, &customer, since.timestamp(), until.timestamp()).await?;
            mismatches.extend(compare(meter.event_name, &reported, &received));
        }
        for line in stripe.invoiced_usage(&customer, since.timestamp()).await? {
            let (start, end) = (timestamp(line.period.0), timestamp(line.period.1));
            // Dated as the sync dates them at Stripe.
            let reported: f64 = sqlx::query_scalar(
                "SELECT COALESCE(sum(r.reported_quantity), 0)::float8
                 FROM billing_reports r JOIN tenant_billing b USING (tenant_id)
                 WHERE r.tenant_id = $1 AND r.meter = $2
                   AND billed_at(r.window_start, b.subscribed_at) >= $3
                   AND billed_at(r.window_start, b.subscribed_at) < $4",
            )
            .bind(tenant)
            .bind(line.meter)
            .bind(start)
            .bind(end)
            .fetch_one(db)
            .await?;
            if (reported - line.quantity).abs() > TOLERANCE {
                mismatches.push(ParityMismatch {
                    meter: line.meter.to_owned(),
                    window_start: start,
                    window_end: end,
                    reported,
                    received: line.quantity,
                    invoice: Some(line.invoice),
                });
            }
        }
        report.tenants_checked += 1;
        report.mismatches += mismatches.len() as u64;
        if !mismatches.is_empty() {
            report.tenants_out_of_parity += 1;
        }
        record(db, TenantId(tenant), &slug, mismatches).await?;
    }
    Ok(report)
}

/// The windows of `meter` where what was reported and what was received differ.
fn compare(meter: &str, reported: &[(DateTime<Utc>, f64)], received: &[(i64, f64)]) -> Vec<ParityMismatch> {
    let mut windows: std::collections::BTreeMap<i64, (f64, f64)> = std::collections::BTreeMap::new();
    for (window, quantity) in reported {
        windows.entry(window.timestamp()).or_default().0 += quantity;
    }
    for (window, value) in received {
        windows.entry(*window).or_default().1 += value;
    }
    windows
        .into_iter()
        .filter(|(_, (reported, received))| (reported - received).abs() > TOLERANCE)
        .map(|(window, (reported, received))| ParityMismatch {
            meter: meter.to_owned(),
            window_start: timestamp(window),
            window_end: timestamp(window + 3600),
            reported,
            received,
            invoice: None,
        })
        .collect()
}

fn timestamp(unix: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(unix, 0).unwrap_or_default()
}

/// Keeps the tenant's check; an event when its parity changed (or is first found lost).
async fn record(db: &PgPool, tenant: TenantId, slug: &str, mismatches: Vec<ParityMismatch>) -> Result<(), sqlx::Error> {
    let mut tx = db.begin().await?;
    let was: Option<bool> = sqlx::query_scalar("SELECT in_parity FROM billing_parity WHERE tenant_id = $1 FOR UPDATE")
        .bind(tenant.0)
        .fetch_optional(&mut *tx)
        .await?;
    let in_parity = mismatches.is_empty();
    sqlx::query(
        "INSERT INTO billing_parity (tenant_id, checked_at, in_parity, mismatches) VALUES ($1, now(), $2, $3)
         ON CONFLICT (tenant_id) DO UPDATE SET checked_at = now(), in_parity = $2, mismatches = $3",
    )
    .bind(tenant.0)
    .bind(in_parity)
    .bind(json!(mismatches))
    .execute(&mut *tx)
    .await?;
    match (was, in_parity) {
        (Some(true) | None, false) => {
            let first = &mismatches[0];
            journal::publish(
                &mut tx,
                Some(tenant),
                "BillingParityLost",
                &format!(
                    "{slug}'s usage at Stripe differs from what Indigo reported in {} window(s), first {first}",
                    mismatches.len(),
                ),
                json!({ "mismatches": mismatches }),
            )
            .await?;
        }
        (Some(false), true) => {
            journal::publish(
                &mut tx,
                Some(tenant),
                "BillingParityRestored",
                &format!("{slug}'s usage at Stripe matches what Indigo reported again"),
                json!({}),
            )
            .await?;
        }
        _ => {}
    }
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_differing_window_is_one_mismatch_with_both_numbers() {
        let hour = |h: i64| DateTime::from_timestamp(1_800_000_000 + h * 3600, 0).unwrap();
        let reported = [(hour(0), 10.0), (hour(1), 5.0), (hour(2), 7.0)];
        let received = [(hour(0).timestamp(), 10.0), (hour(1).timestamp(), 10.0), (hour(3).timestamp(), 2.0)];
        let found = compare("indigo_api_calls", &reported, &received);
        let found: Vec<(i64, f64, f64)> =
            found.iter().map(|m| ((m.window_start - hour(0)).num_hours(), m.reported, m.received)).collect();
        assert_eq!(found, [(1, 5.0, 10.0), (2, 7.0, 0.0), (3, 0.0, 2.0)]);
    }
}
