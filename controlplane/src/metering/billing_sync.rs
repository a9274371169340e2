//! Billing sync: rolled-up usage not yet reported → Stripe meter events.
//!
//! Only closed hour windows are reported. Per tenant, meter and window,
//! `billing_reports` holds what Stripe acknowledged; a window whose total grew
//! (late events) is reported again by the difference only. Each report's
//! identifier is derived from the window and what had been reported before, so
//! a sync that dies between Stripe's answer and our record sends the same
//! identifier again and Stripe keeps one event: nothing is billed twice.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::billing::{BillingError, METERS, Stripe};
use crate::db::AdvisoryLock;
use crate::failpoints::{Failpoints, Point};

pub const JOB: &str = "billing_sync";

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Billing(#[from] BillingError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SyncReport {
    pub windows_reported: u64,
    pub quantity_reported: f64,
    pub tenants: u64,
}

/// A closed window with usage not reported yet.
#[derive(sqlx::FromRow)]
struct Due {
    tenant_id: Uuid,
    customer_id: String,
    window_start: DateTime<Utc>,
    /// When Stripe is told it happened (`billed_at` in SQL).
    billed_at: DateTime<Utc>,
    quantity: f64,
    /// What Stripe was told before.
    reported: f64,
}

/// The identifier of the report that brings a window from `reported` to more.
pub fn identifier(tenant: Uuid, meter: &str, window: DateTime<Utc>, reported: f64) -> String {
    format!("{}-{meter}-{}-{}", tenant.simple(), window.timestamp(), crate::billing::meter_value(reported))
}

/// Reports every closed window with unreported usage; `None` when another
/// daemon is syncing right now.
pub async fn sync(db: &PgPool, stripe: &Stripe, failpoints: &Failpoints) -> Result<Option<SyncReport>, SyncError> {
    // Held across Stripe calls: on a connection of its own, released if we die.
    let Some(lock) = AdvisoryLock::try_acquire_dedicated(db, "indigo:job:billing_sync".into()).await? else {
        return Ok(None);
    };
    let mut report = SyncReport::default();
    let mut tenants = std::collections::HashSet::new();
    stripe.ensure_meters().await?;
    for meter in METERS {
        let (event_type, meter) = (meter.usage, meter.event_name);
        let due: Vec<Due> = sqlx::query_as(
            "SELECT h.tenant_id, b.customer_id, h.hour AS window_start, billed_at(h.hour, b.subscribed_at),
                    h.quantity, COALESCE(r.reported_quantity, 0) AS reported
             FROM usage_hourly h
             JOIN tenant_billing b ON b.tenant_id = h.tenant_id AND b.status = 'active'
             LEFT JOIN billing_reports r ON r.tenant_id = h.tenant_id AND r.meter = $2 AND r.window_start = h.hour
             WHERE h.event_type = $1
               AND h.hour < date_trunc('hour', now(), 'UTC')
               AND h.hour >= now() - interval '35 days'
               AND h.quantity > COALESCE(r.reported_quantity, 0)
             ORDER BY h.tenant_id, h.hour",
        )
        .bind(event_type)
        .bind(meter)
        .fetch_all(db)
        .await?;
        for Due { tenant_id: tenant, customer_id: customer, window_start: window, billed_at, quantity, reported } in due
        {
            let id = identifier(tenant, meter, window, reported);
            stripe.report_usage(meter, &customer, quantity - reported, billed_at.timestamp(), &id).await?;
            failpoints.crash_at("job", JOB, Point::AfterRun);
            sqlx::query(
                "INSERT INTO billing_reports (tenant_id, meter, window_start, reported_quantity, last_identifier)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (tenant_id, meter, window_start) DO UPDATE
                     SET reported_quantity = $4, last_identifier = $5, reported_at = now()",
            )
            .bind(tenant)
            .bind(meter)
            .bind(window)
            .bind(quantity)
            .bind(&id)
            .execute(db)
            .await?;
            report.windows_reported += 1;
            report.quantity_reported += quantity - reported;
            tenants.insert(tenant);
        }
    }
    lock.release().await;
    report.tenants = tenants.len() as u64;
    Ok(Some(report))
}
