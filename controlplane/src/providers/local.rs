//! The local provider: a silo is a real PostgreSQL database on the tenant
//! server, created with the tenant schema and its RLS, and dropped.

use std::sync::Arc;

use indigo_core::tenant::{Slug, TenantId};
use indigo_tenantdb::schema::{SchemaError, TenantServer};
use indigo_tenantdb::{Database, TenantDatabases};

use super::{DatabaseProvider, MetricsProvider, ProviderError, ProviderFuture, SiloState, SiloTenant, empty_series};

#[derive(Clone)]
pub struct LocalDatabases {
    dbs: Arc<TenantDatabases>,
}

impl LocalDatabases {
    pub fn new(dbs: Arc<TenantDatabases>) -> Self {
        Self { dbs }
    }

    fn server(&self) -> &TenantServer {
        &self.dbs.server
    }
}

/// The silo database of a tenant: `silo_`, its slug (readable in `psql \l`) and
/// the end of its id (unique even when two registries share one server).
pub fn silo_database(id: TenantId, slug: &Slug) -> String {
    super::resource_name("silo", '_', id, slug)
}

/// A local database has no capacity of its own: it is always as sized as its plan.
fn local(database: String) -> SiloState {
    SiloState { database, cluster: None, sized: true, unavailable: None }
}

pub(crate) fn classify(error: SchemaError) -> ProviderError {
    match &error {
        // Connection trouble and the like may pass; a broken migration will not.
        SchemaError::Migrate { .. } | SchemaError::Url(_) => {
            ProviderError::Permanent { reason: "SchemaFailed".into(), message: error.to_string() }
        }
        SchemaError::Database { .. } => ProviderError::Transient(error.to_string()),
    }
}

impl DatabaseProvider for LocalDatabases {
    async fn observe_silo(&self, tenant: &SiloTenant<'_>) -> Result<Option<SiloState>, ProviderError> {
        let database = silo_database(tenant.id, tenant.slug);
        let ready = self.server().schema_ready(&database).await.map_err(classify)?;
        Ok(ready.then(|| local(database)))
    }

    async fn ensure_silo(&self, tenant: &SiloTenant<'_>) -> Result<SiloState, ProviderError> {
        let database = silo_database(tenant.id, tenant.slug);
        self.server().provision(&database).await.map_err(classify)?;
        Ok(local(database))
    }

    async fn delete_silo(&self, tenant: &SiloTenant<'_>) -> Result<(), ProviderError> {
        self.server().drop_database(&silo_database(tenant.id, tenant.slug)).await.map_err(classify)
    }

    async fn delete_pool_rows(&self, tenant: TenantId) -> Result<u64, ProviderError> {
        self.server().delete_tenant_rows(&self.dbs.pool_database, tenant).await.map_err(classify)
    }

    async fn reach(&self, cluster: Option<&str>, database: &str) -> Result<Database, ProviderError> {
        Ok(self.dbs.locate(cluster, database))
    }
}

/// Per-tenant metrics kept in PostgreSQL: the usage roll-up's hourly table.
pub struct PostgresMetrics {
    db: sqlx::PgPool,
}

impl PostgresMetrics {
    pub fn new(db: sqlx::PgPool) -> Self {
        Self { db }
    }
}

impl MetricsProvider for PostgresMetrics {
    fn hourly<'a>(
        &'a self,
        tenant: TenantId,
        metrics: &'a [&'a str],
        hours: &'a [chrono::DateTime<chrono::Utc>],
    ) -> ProviderFuture<'a, std::collections::BTreeMap<String, Vec<f64>>> {
        Box::pin(async move {
            let mut series = empty_series(metrics, hours.len());
            let Some(first) = hours.first() else { return Ok(series) };
            let rows: Vec<(String, chrono::DateTime<chrono::Utc>, f64)> = sqlx::query_as(
                "SELECT event_type, hour, quantity FROM usage_hourly
                 WHERE tenant_id = $1 AND hour >= $2 AND event_type = ANY($3)",
            )
            .bind(tenant.0)
            .bind(first)
            .bind(metrics)
            .fetch_all(&self.db)
            .await
            .map_err(|e| ProviderError::Transient(format!("reading usage_hourly: {e}")))?;
            for (metric, hour, quantity) in rows {
                if let (Some(values), Ok(index)) = (series.get_mut(&metric), hours.binary_search(&hour)) {
                    values[index] = quantity;
                }
            }
            Ok(series)
        })
    }
}
