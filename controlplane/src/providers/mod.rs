//! What the control plane acts on, behind one interface per concern, so that
//! the reconciler reads the same whether the world is a local PostgreSQL with
//! local processes or AWS (Aurora and ECS).
//!
//! - [`DatabaseProvider`]: silo databases, and the tenant's rows in the pool.
//! - [`ComputeProvider`]: the data-plane services (the pool's and each silo tenant's).
//! - [`MetricsProvider`]: per-tenant metrics, read back hourly.

pub mod aws;
pub mod local;
pub mod processes;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use chrono::{DateTime, Utc};
use indigo_core::api::Tenant;
use indigo_core::plan::{Plan, PlanCatalog, PoolSize, SiloSize};
use indigo_core::tenant::{Slug, TenantId};
use indigo_tenantdb::Database;

/// A provider's failure, sorted by what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// Worth retrying with backoff: throttling, timeouts, 5xx.
    #[error("{0}")]
    Transient(String),
    /// Retrying will not help until someone acts: validation, quota, permissions.
    #[error("{reason}: {message}")]
    Permanent { reason: String, message: String },
}

/// The tenant a dedicated database or service is for, with the plan that sizes it.
#[derive(Debug, Clone)]
pub struct SiloTenant<'a> {
    pub id: TenantId,
    pub slug: &'a Slug,
    pub plan: &'a Plan,
}

impl<'a> SiloTenant<'a> {
    /// `tenant` on its current plan; a plan the catalogue no longer sells is
    /// the operator's to fix.
    pub fn of(tenant: &'a Tenant, plans: &'a PlanCatalog) -> Result<Self, ProviderError> {
        let plan = plans
            .get(tenant.spec.plan.as_str())
            .map_err(|e| ProviderError::Permanent { reason: "UnknownPlan".into(), message: e.to_string() })?;
        Ok(Self { id: tenant.id, slug: &tenant.slug, plan })
    }

    /// The dedicated resources of the plan; a pool plan has none.
    pub fn size(&self) -> Result<&'a SiloSize, ProviderError> {
        self.plan.silo.as_ref().ok_or_else(|| ProviderError::Permanent {
            reason: "PlanHasNoSilo".into(),
            message: format!("plan `{}` sizes no dedicated resources (no `silo` in the plans file)", self.plan.name),
        })
    }

    /// Whether deleting its database keeps a final snapshot: when in doubt, yes.
    pub fn final_snapshot(&self) -> bool {
        self.plan.silo.as_ref().is_none_or(|s| s.final_snapshot)
    }
}

/// `<prefix>-<slug>-<end of id>`: readable, and unique even when two
/// registries share one account or server.
pub fn resource_name(prefix: &str, separator: char, id: TenantId, slug: &Slug) -> String {
    let id = id.0.simple().to_string();
    let slug = slug.as_str().replace(['-', '_'], &separator.to_string());
    format!("{prefix}{separator}{slug}{separator}{}", &id[id.len() - 12..])
}

/// The dedicated data-plane service of a silo tenant.
pub fn silo_service_name(id: TenantId, slug: &Slug) -> String {
    resource_name(SERVICE_PREFIX, '-', id, slug)
}

/// A silo database as its provider reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiloState {
    /// The database that holds the tenant's rows.
    pub database: String,
    /// The host (cluster endpoint) serving it, when it is not the tenant server.
    pub cluster: Option<String>,
    /// Whether its capacity is what the tenant's plan asks.
    pub sized: bool,
    /// `None` when it serves; otherwise what it is doing instead (an Aurora
    /// cluster still `creating`, say).
    pub unavailable: Option<String>,
}

/// Dedicated (silo) tenant databases, and the tenant's rows in the pool.
pub trait DatabaseProvider: Send + Sync + 'static {
    /// The silo database if it exists and is ready to serve the tenant.
    fn observe_silo(
        &self,
        tenant: &SiloTenant<'_>,
    ) -> impl Future<Output = Result<Option<SiloState>, ProviderError>> + Send;

    /// Creates, completes or resizes the silo database to what the plan says.
    fn ensure_silo(&self, tenant: &SiloTenant<'_>) -> impl Future<Output = Result<SiloState, ProviderError>> + Send;

    /// Releases the silo database (with a final snapshot when the plan asks); gone is done.
    fn delete_silo(&self, tenant: &SiloTenant<'_>) -> impl Future<Output = Result<(), ProviderError>> + Send;

    /// Deletes the tenant's rows from the pool database; returns how many.
    fn delete_pool_rows(&self, tenant: TenantId) -> impl Future<Output = Result<u64, ProviderError>> + Send;

    /// The tenant database `database`, on the tenant server or on the cluster
    /// at `cluster`, with the login the control plane reaches it by (a
    /// cluster's is its master user's).
    fn reach(
        &self,
        cluster: Option<&str>,
        database: &str,
    ) -> impl Future<Output = Result<Database, ProviderError>> + Send;
}

/// A shared provider is a provider (tests and replicas hold one behind an `Arc`).
impl<P: DatabaseProvider> DatabaseProvider for std::sync::Arc<P> {
    fn observe_silo(
        &self,
        tenant: &SiloTenant<'_>,
    ) -> impl Future<Output = Result<Option<SiloState>, ProviderError>> + Send {
        (**self).observe_silo(tenant)
    }

    fn ensure_silo(&self, tenant: &SiloTenant<'_>) -> impl Future<Output = Result<SiloState, ProviderError>> + Send {
        (**self).ensure_silo(tenant)
    }

    fn delete_silo(&self, tenant: &SiloTenant<'_>) -> impl Future<Output = Result<(), ProviderError>> + Send {
        (**self).delete_silo(tenant)
    }

    fn delete_pool_rows(&self, tenant: TenantId) -> impl Future<Output = Result<u64, ProviderError>> + Send {
        (**self).delete_pool_rows(tenant)
    }

    fn reach(
        &self,
        cluster: Option<&str>,
        database: &str,
    ) -> impl Future<Output = Result<Database, ProviderError>> + Send {
        (**self).reach(cluster, database)
    }
}

/// How the parts that are not generic over the provider (the admin API, the
/// scheduled jobs) reach a tenant's database: as the provider does, so that a
/// cluster on AWS is reached with its master login, not the pool's.
pub trait ReachDatabases: Send + Sync {
    fn reach<'a>(&'a self, cluster: Option<&'a str>, database: &'a str) -> ProviderFuture<'a, Database>;
}

impl<P: DatabaseProvider> ReachDatabases for P {
    fn reach<'a>(&'a self, cluster: Option<&'a str>, database: &'a str) -> ProviderFuture<'a, Database> {
        Box::pin(DatabaseProvider::reach(self, cluster, database))
    }
}

/// The data-plane service every pool tenant is served by.
pub const POOL_SERVICE: &str = "indigo-dp-pool";
/// Every data-plane service's name starts so; others are not ours to touch.
pub const SERVICE_PREFIX: &str = "indigo-dp";

/// A data-plane service as the reconciler wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    pub name: String,
    /// The one tenant a dedicated service serves; `None` for the pool's.
    pub tenant: Option<TenantId>,
    pub replicas: u32,
    /// The most replicas autoscaling may run, where the provider scales (ECS).
    pub max_replicas: u32,
    /// Each replica's CPU units (1024 = one vCPU) and memory (MiB), where the
    /// provider reserves them (ECS).
    pub cpu: u32,
    pub memory: u32,
    /// `tenant_id` and `plan` for a silo tenant's service.
    pub tags: Vec<(String, String)>,
    /// A silo tenant's slug: its storefront's host on the load balancer
    /// (`<slug>.<aws_storefront_domain>`), where the provider puts it behind one.
    pub slug: Option<String>,
}

/// The pool's data-plane tasks: one vCPU and 2 GiB each, for every pool tenant at once.
const POOL_TASK_CPU: u32 = 1024;
const POOL_TASK_MEMORY: u32 = 2048;

impl ServiceSpec {
    pub fn pool(size: &PoolSize) -> Self {
        Self {
            name: POOL_SERVICE.into(),
            tenant: None,
            replicas: size.dataplane_replicas,
            max_replicas: size.dataplane_max_replicas,
            cpu: POOL_TASK_CPU,
            memory: POOL_TASK_MEMORY,
            tags: vec![("tier".into(), "pool".into())],
            slug: None,
        }
    }

    /// A service that should run no replicas (its tenant is deleted).
    pub fn stopped(name: String, tenant: Option<TenantId>) -> Self {
        Self { name, tenant, replicas: 0, max_replicas: 0, cpu: 0, memory: 0, tags: vec![], slug: None }
    }

    /// The most replicas the service may run.
    pub fn max(&self) -> u32 {
        self.max_replicas.max(self.replicas)
    }

    /// Whether `actual` runs as this spec wants: its replicas inside the
    /// range autoscaling may move them in, and autoscaling (where the
    /// provider does it) set to that range. A stopped service runs none.
    pub fn satisfied_by(&self, actual: &ServiceState) -> bool {
        if self.max() == 0 {
            return actual.replicas == 0;
        }
        (self.replicas..=self.max()).contains(&actual.replicas)
            && match actual.autoscaling {
                Autoscaling::NotScaled => true,
                Autoscaling::Range { min, max } => (min, max) == (self.replicas, self.max()),
                Autoscaling::Broken => false,
            }
    }

    /// The dedicated service of a silo tenant, sized by its plan.
    pub fn silo(tenant: &SiloTenant<'_>) -> Result<Self, ProviderError> {
        let size = tenant.size()?;
        Ok(Self {
            name: silo_service_name(tenant.id, tenant.slug),
            tenant: Some(tenant.id),
            replicas: size.dataplane_replicas,
            max_replicas: size.dataplane_max_replicas,
            cpu: size.dataplane_cpu,
            memory: size.dataplane_memory,
            tags: vec![("tenant_id".into(), tenant.id.to_string()), ("plan".into(), tenant.plan.name.to_string())],
            slug: Some(tenant.slug.to_string()),
        })
    }
}

/// A data-plane service as its provider reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceState {
    /// Replicas the service is set to run (ECS's desired count; locally, the
    /// processes alive: the control plane is the scheduler there).
    pub replicas: u32,
    /// Where it serves, when the provider knows (locally, `http://host:port`).
    pub address: Option<String>,
    pub autoscaling: Autoscaling,
}

/// How the service is set up to scale, where the provider scales services
/// itself (Application Auto Scaling on ECS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Autoscaling {
    /// The provider runs what it is told (local processes).
    NotScaled,
    /// Registered with this range of replicas, every policy as wanted.
    Range { min: u32, max: u32 },
    /// Not registered, or a policy missing or changed by hand: drift.
    Broken,
}

pub type ProviderFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, ProviderError>> + Send + 'a>>;

/// Data-plane services. Object-safe: the reconciler holds one of either kind.
pub trait ComputeProvider: Send + Sync + 'static {
    fn observe_service<'a>(&'a self, name: &'a str) -> ProviderFuture<'a, Option<ServiceState>>;

    /// Creates the service or brings it to the spec's replicas. Safe to repeat.
    fn ensure_service<'a>(&'a self, spec: &'a ServiceSpec) -> ProviderFuture<'a, ServiceState>;

    /// Stops and removes the service; gone is done.
    fn delete_service<'a>(&'a self, name: &'a str) -> ProviderFuture<'a, ()>;

    /// The names of the data-plane services that exist.
    fn list_services(&self) -> ProviderFuture<'_, Vec<String>>;

    /// Drift the provider notices by itself (a process that died), as the
    /// tenant whose service it was (`None` for the pool's). Providers that only
    /// learn of drift by observing return `None`.
    fn drift(&self) -> Option<tokio::sync::broadcast::Receiver<Option<TenantId>>> {
        None
    }
}

/// Per-tenant metrics: each event type's hourly sum. Written by the usage
/// roll-up (PostgreSQL) and, on AWS, mirrored to CloudWatch by `usage_mirror`.
pub trait MetricsProvider: Send + Sync + 'static {
    /// `tenant`'s sum of each of `metrics` in each of `hours` (hour starts,
    /// ascending); 0 where nothing was recorded.
    fn hourly<'a>(
        &'a self,
        tenant: TenantId,
        metrics: &'a [&'a str],
        hours: &'a [DateTime<Utc>],
    ) -> ProviderFuture<'a, BTreeMap<String, Vec<f64>>>;
}

/// Series of zeros for every metric, to fill in from what was recorded.
pub fn empty_series(metrics: &[&str], hours: usize) -> BTreeMap<String, Vec<f64>> {
    metrics.iter().map(|m| ((*m).to_owned(), vec![0.0; hours])).collect()
}
