//! The storage job: each serving tenant's stored bytes → one `storage_gb`
//! usage event per tenant and UTC day. A pool tenant is measured from its own
//! rows (read under its row-level security); a silo tenant is its database's
//! size. The event id is derived from the tenant and the day, so running the
//! job again the same day (or on two daemons) stores nothing twice.

use chrono::{NaiveDate, Utc};
use indigo_core::tenant::Isolation;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{ConnectOptions, PgPool};
use uuid::Uuid;

use indigo_tenantdb::Database;
use indigo_tenantdb::schema::TENANT_TABLES;

use crate::providers::ReachDatabases;

pub const JOB: &str = "storage";

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StorageReport {
    pub tenants_measured: u64,
    pub events_stored: u64,
    pub bytes: i64,
}

/// The id of a tenant's storage event for `day`: the same every time.
pub fn event_id(tenant: Uuid, day: NaiveDate) -> Uuid {
    let digest = Sha256::digest(format!("indigo-storage:{tenant}:{day}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

async fn measure(database: &Database, tenant: Uuid, isolation: Isolation) -> Result<i64, sqlx::Error> {
    let mut conn = database.server.owner_options(&database.name).connect().await?;
    if isolation == Isolation::Silo {
        return sqlx::query_scalar("SELECT pg_database_size(current_database())").fetch_one(&mut conn).await;
    }
    let sums: Vec<String> = TENANT_TABLES
        .iter()
        .map(|table| format!("(SELECT COALESCE(sum(pg_column_size(t.*)), 0) FROM {table} t)"))
        .collect();
    let statement = format!(
        "BEGIN; SELECT set_config('app.current_tenant', '{tenant}', true); SELECT ({})::bigint; COMMIT;",
        sums.join(" + ")
    );
    // The last statement's row is the one we want; the tenant id is a UUID.
    let rows = sqlx::raw_sql(sqlx::AssertSqlSafe(statement)).fetch_all(&mut conn).await?;
    use sqlx::Row;
    rows.last().map(|r| r.try_get::<i64, _>(0)).transpose().map(Option::unwrap_or_default)
}

/// Measures every serving tenant and stores today's `storage_gb` event for each.
pub async fn measure_all(db: &PgPool, databases: &dyn ReachDatabases) -> Result<StorageReport, sqlx::Error> {
    let tenants: Vec<(Uuid, String, Option<String>, String)> = sqlx::query_as(
        "SELECT id, placement->>'database', placement->>'cluster', placement->>'isolation' FROM tenants
         WHERE lifecycle IN ('active', 'suspended') AND placement IS NOT NULL",
    )
    .fetch_all(db)
    .await?;
    let today = Utc::now().date_naive();
    let mut report = StorageReport::default();
    for (tenant, database, cluster, isolation) in tenants {
        let isolation = if isolation == "silo" { Isolation::Silo } else { Isolation::Pool };
        let measured = match databases.reach(cluster.as_deref(), &database).await {
            Ok(reached) => measure(&reached, tenant, isolation).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let bytes = match measured {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::warn!(%tenant, %database, %error, "cannot measure the tenant's storage");
                continue;
            }
        };
        let stored = sqlx::query(
            "INSERT INTO usage_events (id, tenant_id, event_type, quantity, occurred_at)
             VALUES ($1, $2, 'storage_gb', $3, now()) ON CONFLICT (id) DO NOTHING",
        )
        .bind(event_id(tenant, today))
        .bind(tenant)
        .bind(bytes as f64 / 1e9)
        .execute(db)
        .await?
        .rows_affected();
        report.tenants_measured += 1;
        report.events_stored += stored;
        report.bytes += bytes;
    }
    Ok(report)
}
