//! What the control plane acts on, behind one interface per concern, so that
//! the reconciler reads the same whether the world is a local PostgreSQL or AWS.

pub mod aws;
pub mod local;

use std::future::Future;

use indigo_core::tenant::{Slug, TenantId};

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

/// The tenant a dedicated database is for.
#[derive(Debug, Clone)]
pub struct SiloTenant<'a> {
    pub id: TenantId,
    pub slug: &'a Slug,
}

/// Dedicated (silo) tenant databases, and the tenant's rows in the pool.
pub trait DatabaseProvider: Send + Sync + 'static {
    /// The silo database's name if it exists and carries the tenant schema.
    fn observe_silo(
        &self,
        tenant: &SiloTenant<'_>,
    ) -> impl Future<Output = Result<Option<String>, ProviderError>> + Send;

    /// Creates (or completes) the silo database; returns its name.
    fn create_silo(&self, tenant: &SiloTenant<'_>) -> impl Future<Output = Result<String, ProviderError>> + Send;

    fn delete_silo(&self, tenant: &SiloTenant<'_>) -> impl Future<Output = Result<(), ProviderError>> + Send;

    /// Deletes the tenant's rows from the pool database; returns how many.
    fn delete_pool_rows(&self, tenant: TenantId) -> impl Future<Output = Result<u64, ProviderError>> + Send;
}

/// A shared provider is a provider (tests and replicas hold one behind an `Arc`).
impl<P: DatabaseProvider> DatabaseProvider for std::sync::Arc<P> {
    fn observe_silo(
        &self,
        tenant: &SiloTenant<'_>,
    ) -> impl Future<Output = Result<Option<String>, ProviderError>> + Send {
        (**self).observe_silo(tenant)
    }

    fn create_silo(&self, tenant: &SiloTenant<'_>) -> impl Future<Output = Result<String, ProviderError>> + Send {
        (**self).create_silo(tenant)
    }

    fn delete_silo(&self, tenant: &SiloTenant<'_>) -> impl Future<Output = Result<(), ProviderError>> + Send {
        (**self).delete_silo(tenant)
    }

    fn delete_pool_rows(&self, tenant: TenantId) -> impl Future<Output = Result<u64, ProviderError>> + Send {
        (**self).delete_pool_rows(tenant)
    }
}
