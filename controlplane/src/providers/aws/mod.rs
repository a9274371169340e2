//! The AWS provider: silo databases on Aurora ([`rds`]) and the data plane on
//! ECS ([`ecs`]), through the standard AWS configuration chain
//! (`AWS_ENDPOINT_URL` included, which is how the tests reach moto).
//!
//! AWS errors are sorted for the reconciler: throttling, 5xx and transport
//! failures are transient (retried with backoff); anything else is permanent
//! and carries AWS's code and message into the tenant's conditions.

pub mod ecs;
pub mod rds;

use std::sync::Arc;

use aws_sdk_rds::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use indigo_core::tenant::TenantId;

use self::ecs::EcsServices;
use self::rds::{AuroraClusters, TENANT_DATABASE};
use super::local::LocalDatabases;
use super::{
    ComputeProvider, DatabaseProvider, ProviderError, ProviderFuture, ServiceSpec, ServiceState, SiloState, SiloTenant,
};
use indigo_tenantdb::TenantDatabases;

/// Silo databases on Aurora; the pool is the configured tenant server, which
/// the control plane reaches as it does locally.
pub struct AwsDatabases {
    clusters: AuroraClusters,
    pool: LocalDatabases,
}

impl AwsDatabases {
    pub fn new(config: &aws_config::SdkConfig, tenant_dbs: Arc<TenantDatabases>) -> Self {
        Self { clusters: AuroraClusters::new(config), pool: LocalDatabases::new(tenant_dbs) }
    }
}

impl DatabaseProvider for AwsDatabases {
    /// Ready once the cluster has its writer; its size is compared with the plan's.
    async fn observe_silo(&self, tenant: &SiloTenant<'_>) -> Result<Option<SiloState>, ProviderError> {
        let Some(cluster) = self.clusters.observe(tenant).await? else { return Ok(None) };
        if cluster.writer.is_none() {
            return Ok(None);
        }
        Ok(Some(silo_state(tenant, cluster)?))
    }

    async fn ensure_silo(&self, tenant: &SiloTenant<'_>) -> Result<SiloState, ProviderError> {
        silo_state(tenant, self.clusters.ensure(tenant).await?)
    }

    async fn delete_silo(&self, tenant: &SiloTenant<'_>) -> Result<(), ProviderError> {
        self.clusters.delete(tenant).await
    }

    async fn delete_pool_rows(&self, tenant: TenantId) -> Result<u64, ProviderError> {
        self.pool.delete_pool_rows(tenant).await
    }
}

/// Aurora statuses in which the cluster answers queries.
const SERVING: [&str; 6] = ["available", "backing-up", "modifying", "maintenance", "upgrading", "renaming"];

fn silo_state(tenant: &SiloTenant<'_>, cluster: rds::ClusterState) -> Result<SiloState, ProviderError> {
    Ok(SiloState {
        database: TENANT_DATABASE.into(),
        sized: cluster.sized_as(&tenant.plan.name, tenant.size()?),
        unavailable: (!SERVING.contains(&cluster.status.as_str()))
            .then(|| format!("its Aurora cluster is {}", cluster.status)),
        cluster: cluster.endpoint,
    })
}

impl ComputeProvider for EcsServices {
    fn observe_service<'a>(&'a self, name: &'a str) -> ProviderFuture<'a, Option<ServiceState>> {
        Box::pin(async move { Ok(self.observe(name).await?.map(service_state)) })
    }

    fn ensure_service<'a>(&'a self, spec: &'a ServiceSpec) -> ProviderFuture<'a, ServiceState> {
        Box::pin(async move {
            let tags: Vec<(&str, &str)> = spec.tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            Ok(service_state(self.ensure(&spec.name, spec.tenant, spec.replicas, &tags).await?))
        })
    }

    fn delete_service<'a>(&'a self, name: &'a str) -> ProviderFuture<'a, ()> {
        Box::pin(self.delete(name))
    }

    fn list_services(&self) -> ProviderFuture<'_, Vec<String>> {
        Box::pin(self.list())
    }
}

/// ECS starts and replaces tasks itself: what it is set to run is what counts.
fn service_state(service: ecs::ServiceState) -> ServiceState {
    ServiceState { replicas: u32::try_from(service.desired).unwrap_or(0), address: None }
}

/// Throttling, AWS-side failures and transport trouble pass; the rest is permanent.
fn classify<E, R>(error: SdkError<E, R>) -> ProviderError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let service = match &error {
        SdkError::ServiceError(service) => service.err(),
        other => return ProviderError::Transient(format!("AWS RDS unreachable: {}", DisplayErrorContext(other))),
    };
    let code = service.code().unwrap_or("Unknown").to_owned();
    let message = service.message().map(str::to_owned).unwrap_or_else(|| service.to_string());
    let transient = matches!(
        code.as_str(),
        "Throttling"
            | "ThrottlingException"
            | "RequestLimitExceeded"
            | "TooManyRequestsException"
            | "InternalFailure"
            | "ServiceUnavailable"
            | "InvalidDBClusterStateFault"
            | "InvalidDBInstanceState"
    );
    if transient {
        ProviderError::Transient(format!("AWS RDS {code}: {message}"))
    } else {
        ProviderError::Permanent { reason: code, message }
    }
}

/// A call's outcome where some refusals mean it is already so (created by
/// someone else, or gone already): those count as done.
fn done_unless_refused<T, E, R>(result: Result<T, SdkError<E, R>>, already: &[&str]) -> Result<(), ProviderError>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match result {
        Err(e) if !is_code(&e, already) => Err(classify(e)),
        _ => Ok(()),
    }
}

fn is_code<E: ProvideErrorMetadata, R>(error: &SdkError<E, R>, codes: &[&str]) -> bool {
    matches!(error, SdkError::ServiceError(service) if service.err().code().is_some_and(|c| codes.contains(&c)))
}

#[cfg(test)]
mod tests {
    use aws_sdk_rds::error::ErrorMetadata;
    use aws_sdk_rds::operation::create_db_cluster::CreateDBClusterError;

    use super::*;

    fn refused(code: &str) -> SdkError<CreateDBClusterError, ()> {
        let metadata = ErrorMetadata::builder().code(code).message("what AWS said").build();
        SdkError::service_error(CreateDBClusterError::generic(metadata), ())
    }

    #[test]
    fn throttling_and_outages_pass_the_rest_is_the_operators_with_aws_reason() {
        for code in ["Throttling", "RequestLimitExceeded", "InternalFailure", "InvalidDBClusterStateFault"] {
            assert!(matches!(classify(refused(code)), ProviderError::Transient(_)), "{code}");
        }
        assert_eq!(
            classify(refused("InsufficientDBClusterCapacityFault")),
            ProviderError::Permanent {
                reason: "InsufficientDBClusterCapacityFault".into(),
                message: "what AWS said".into()
            }
        );
        assert!(matches!(classify(refused("DBClusterQuotaExceededFault")), ProviderError::Permanent { .. }));
        let timeout: SdkError<CreateDBClusterError, ()> = SdkError::timeout_error("no answer in 30 s");
        assert!(matches!(classify(timeout), ProviderError::Transient(m) if m.contains("no answer")));
    }
}
