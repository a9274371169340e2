//! The recommender job: every hour, each serving tenant whose plan has
//! `recommendations` gets its co-purchase counts recomputed from its orders
//! (`refresh_product_pairs()` in the tenant schema), where its rows live, as
//! the schema owner under the tenant's row-level security. The data plane
//! refreshes on demand too (`POST /v1/recommendations/refresh`).

use indigo_core::plan::PlanCatalog;
use serde::Serialize;
use sqlx::{ConnectOptions, PgPool};
use uuid::Uuid;

use indigo_tenantdb::Database;

use crate::providers::ReachDatabases;

pub const JOB: &str = "recommender";
const FEATURE: &str = "recommendations";

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RecommenderReport {
    pub tenants_refreshed: u64,
    pub orders_counted: i64,
    pub tenants_failed: u64,
}

/// Where a tenant's built-in recommender stands, read where its rows live.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Standing {
    pub refreshed_at: Option<chrono::DateTime<chrono::Utc>>,
    pub orders_counted: Option<i64>,
    pub pairs: i64,
}

pub async fn standing(database: &Database, tenant: Uuid) -> Result<Standing, sqlx::Error> {
    let mut conn = database.server.owner_options(&database.name).connect().await?;
    let mut tx = sqlx::Connection::begin(&mut conn).await?;
    sqlx::query("SELECT set_config('app.current_tenant', $1, true)").bind(tenant.to_string()).execute(&mut *tx).await?;
    let state: Option<(chrono::DateTime<chrono::Utc>, i64)> =
        sqlx::query_as("SELECT refreshed_at, orders_counted FROM recommender_state").fetch_optional(&mut *tx).await?;
    let pairs: i64 = sqlx::query_scalar("SELECT count(*) FROM product_pairs").fetch_one(&mut *tx).await?;
    tx.commit().await?;
    Ok(Standing { refreshed_at: state.map(|s| s.0), orders_counted: state.map(|s| s.1), pairs })
}

pub async fn refresh_all(
    db: &PgPool,
    databases: &dyn ReachDatabases,
    plans: &PlanCatalog,
) -> Result<RecommenderReport, sqlx::Error> {
    let tenants: Vec<(Uuid, String, String, Option<String>)> = sqlx::query_as(
        "SELECT id, plan, placement->>'database', placement->>'cluster' FROM tenants
         WHERE lifecycle = 'active' AND placement IS NOT NULL ORDER BY id",
    )
    .fetch_all(db)
    .await?;
    let mut report = RecommenderReport::default();
    for (tenant, plan, database, cluster) in tenants {
        if !plans.get(&plan).is_ok_and(|plan| plan.has_feature(FEATURE)) {
            continue;
        }
        let refreshed = match databases.reach(cluster.as_deref(), &database).await {
            Ok(database) => {
                refresh(&database.server.owner_options(&database.name), tenant).await.map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        match refreshed {
            Ok(orders) => {
                report.tenants_refreshed += 1;
                report.orders_counted += orders;
            }
            Err(error) => {
                tracing::warn!(%tenant, %error, "cannot refresh the tenant's recommendations");
                report.tenants_failed += 1;
            }
        }
    }
    Ok(report)
}

async fn refresh(options: &sqlx::postgres::PgConnectOptions, tenant: Uuid) -> Result<i64, sqlx::Error> {
    let mut conn = options.connect().await?;
    let mut tx = sqlx::Connection::begin(&mut conn).await?;
    sqlx::query("SELECT set_config('app.current_tenant', $1, true)").bind(tenant.to_string()).execute(&mut *tx).await?;
    let orders: i64 = sqlx::query_scalar("SELECT refresh_product_pairs()").fetch_one(&mut *tx).await?;
    tx.commit().await?;
    Ok(orders)
}
