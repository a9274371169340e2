//! The AWS provider: silo databases on Aurora ([`rds`]) and the data plane on
//! ECS ([`ecs`]), through the standard AWS configuration chain
//! (`AWS_ENDPOINT_URL` included, which is how the tests reach moto).
//!
//! AWS errors are sorted for the reconciler: throttling, 5xx and transport
//! failures are transient (retried with backoff); anything else is permanent
//! and carries AWS's code and message into the tenant's conditions.

pub mod balancer;
pub mod ecs;
pub mod rds;
pub mod scaling;
pub mod secrets;
pub mod stand_in;

use std::sync::Arc;

use aws_sdk_rds::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use indigo_core::tenant::TenantId;

use self::ecs::EcsServices;
use self::rds::{AuroraClusters, TENANT_DATABASE};
use self::secrets::{MasterLogin, MasterSecrets, TenantLogins};
use super::local::LocalDatabases;
use super::{
    Autoscaling, ComputeProvider, DatabaseProvider, ProviderError, ProviderFuture, ServiceSpec, ServiceState,
    SiloState, SiloTenant,
};
use indigo_tenantdb::schema::SchemaError;
use indigo_tenantdb::{ClusterLogin, Database, TenantDatabases};

/// Silo databases on Aurora; the pool is the configured tenant server, which
/// the control plane reaches as it does locally. The control plane runs in the
/// tenants' VPC and reaches each cluster's endpoint: it provisions the tenant
/// schema there as the cluster's master user, whose login RDS keeps in
/// Secrets Manager. The data planes log in to a cluster as its tenant's own
/// login, whose password is kept there too.
pub struct AwsDatabases {
    clusters: AuroraClusters,
    secrets: MasterSecrets,
    logins: TenantLogins,
    pool: LocalDatabases,
    dbs: Arc<TenantDatabases>,
}

impl AwsDatabases {
    pub fn new(config: &aws_config::SdkConfig, tenant_dbs: Arc<TenantDatabases>) -> Self {
        Self {
            clusters: AuroraClusters::new(config),
            secrets: MasterSecrets::new(config),
            logins: TenantLogins::new(config),
            pool: LocalDatabases::new(tenant_dbs.clone()),
            dbs: tenant_dbs,
        }
    }

    /// The cluster's database, reached as its master user; on the stand-in,
    /// first made as creating the cluster makes it on AWS.
    async fn master_server(&self, cluster: &rds::ClusterState, endpoint: &str) -> Result<Database, ProviderError> {
        let login = self.master_login(cluster).await?;
        let database = self.dbs.locate(Some(endpoint), TENANT_DATABASE);
        if let Some(stand_in) = &self.dbs.cluster_stand_in {
            stand_in::create_cluster_database(stand_in, &database.name, &login).await?;
        }
        Ok(logged_in(database, &login))
    }

    /// The cluster's master login, read from the secret RDS keeps it in.
    async fn master_login(&self, cluster: &rds::ClusterState) -> Result<MasterLogin, ProviderError> {
        let arn = cluster.master_secret_arn.as_deref().ok_or_else(|| ProviderError::Permanent {
            reason: "NoMasterSecret".into(),
            message: format!("cluster {} has no managed master secret", cluster.identifier),
        })?;
        self.secrets.login(arn).await
    }

    /// The login the data planes serve `tenant`'s cluster at `endpoint` through.
    fn tenant_login(&self, tenant: TenantId, endpoint: &str) -> Result<ClusterLogin, ProviderError> {
        self.dbs.cluster_login(tenant, Some(endpoint)).ok_or_else(|| ProviderError::Permanent {
            reason: "NoClusterLogins".into(),
            message: "the tenant databases keep no cluster logins: the control plane is not set up for AWS".into(),
        })
    }
}

fn logged_in(database: Database, login: &MasterLogin) -> Database {
    Database { server: database.server.logged_in_as(&login.username, login.password.expose()), ..database }
}

impl DatabaseProvider for AwsDatabases {
    /// Ready once the cluster has its writer and its tenant schema; its size
    /// is compared with the plan's.
    async fn observe_silo(&self, tenant: &SiloTenant<'_>) -> Result<Option<SiloState>, ProviderError> {
        let Some(cluster) = self.clusters.observe(tenant).await? else { return Ok(None) };
        let state = silo_state(tenant, &cluster)?;
        let Some(endpoint) = cluster.endpoint.as_deref().filter(|_| cluster.writer.is_some()) else { return Ok(None) };
        if state.unavailable.is_none() {
            let database = self.master_server(&cluster, endpoint).await?;
            let login = self.tenant_login(tenant.id, endpoint)?;
            if !database.server.schema_ready(&database.name).await.map_err(schema_failed)?
                || !database.server.login_ready(&login.role).await.map_err(schema_failed)?
            {
                return Ok(None);
            }
        }
        Ok(Some(state))
    }

    /// The cluster and its writer as the plan says, then (once it serves)
    /// the tenant schema in its database and the tenant's login to it.
    async fn ensure_silo(&self, tenant: &SiloTenant<'_>) -> Result<SiloState, ProviderError> {
        let cluster = self.clusters.ensure(tenant).await?;
        let state = silo_state(tenant, &cluster)?;
        if let (None, Some(endpoint)) = (&state.unavailable, cluster.endpoint.as_deref()) {
            let database = self.master_server(&cluster, endpoint).await?;
            database.server.provision(&database.name).await.map_err(schema_failed)?;
            let login = self.tenant_login(tenant.id, endpoint)?;
            let password = self.logins.password(tenant.id, &login).await?;
            database
                .server
                .provision_login(&database.name, &login.role, password.expose())
                .await
                .map_err(schema_failed)?;
        }
        Ok(state)
    }

    /// The cluster, then its login's secret (a cluster still deleting is
    /// out of reach already); on the stand-in also its database and login.
    async fn delete_silo(&self, tenant: &SiloTenant<'_>) -> Result<(), ProviderError> {
        let endpoint = self.clusters.observe(tenant).await?.and_then(|c| c.endpoint);
        self.clusters.delete(tenant).await?;
        let login = self.dbs.cluster_logins.as_deref().map(|prefix| ClusterLogin::of(tenant.id, prefix));
        if let Some(login) = &login {
            self.logins.forget(login).await?;
        }
        // On AWS the data and the login go with the cluster; on the stand-in, with its database.
        if let Some(stand_in) = &self.dbs.cluster_stand_in {
            if let Some(endpoint) = endpoint {
                stand_in.drop_database(&indigo_tenantdb::stand_in_database(&endpoint)).await.map_err(schema_failed)?;
            }
            if let Some(login) = &login {
                stand_in.drop_login(&login.role).await.map_err(schema_failed)?;
            }
        }
        Ok(())
    }

    async fn delete_pool_rows(&self, tenant: TenantId) -> Result<u64, ProviderError> {
        self.pool.delete_pool_rows(tenant).await
    }

    /// A cluster's endpoint starts with its identifier, which finds its master secret.
    async fn reach(&self, cluster: Option<&str>, database: &str) -> Result<Database, ProviderError> {
        let Some(endpoint) = cluster else { return self.pool.reach(None, database).await };
        let identifier = endpoint.split('.').next().unwrap_or(endpoint);
        let state = self.clusters.describe(identifier).await?.ok_or_else(|| ProviderError::Permanent {
            reason: "DBClusterNotFoundFault".into(),
            message: format!("the tenant's cluster {identifier} is gone"),
        })?;
        let login = self.master_login(&state).await?;
        Ok(logged_in(self.dbs.locate(Some(endpoint), database), &login))
    }
}

/// Aurora statuses in which the cluster answers queries.
const SERVING: [&str; 6] = ["available", "backing-up", "modifying", "maintenance", "upgrading", "renaming"];

fn silo_state(tenant: &SiloTenant<'_>, cluster: &rds::ClusterState) -> Result<SiloState, ProviderError> {
    let unavailable = if !SERVING.contains(&cluster.status.as_str()) {
        Some(format!("its Aurora cluster is {}", cluster.status))
    } else if cluster.writer.is_none() || cluster.endpoint.is_none() {
        Some("its Aurora cluster has no writer yet".to_owned())
    } else {
        None
    };
    Ok(SiloState {
        database: TENANT_DATABASE.into(),
        sized: cluster.sized_as(&tenant.plan.name, tenant.size()?),
        unavailable,
        cluster: cluster.endpoint.clone(),
    })
}

/// The schema could not be brought up on a cluster: a connection or a
/// statement failed (worth retrying), or a migration is broken (not).
fn schema_failed(error: SchemaError) -> ProviderError {
    crate::providers::local::classify(error)
}

impl ComputeProvider for EcsServices {
    fn observe_service<'a>(&'a self, name: &'a str) -> ProviderFuture<'a, Option<ServiceState>> {
        Box::pin(async move {
            let Some(service) = self.observe(name).await? else { return Ok(None) };
            Ok(Some(service_state(service, self.autoscaling(name).await?)))
        })
    }

    fn ensure_service<'a>(&'a self, spec: &'a ServiceSpec) -> ProviderFuture<'a, ServiceState> {
        Box::pin(async move {
            let service = self.ensure(spec).await?;
            Ok(service_state(service, self.autoscaling(&spec.name).await?))
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
fn service_state(service: ecs::ServiceState, autoscaling: Autoscaling) -> ServiceState {
    ServiceState { replicas: u32::try_from(service.desired).unwrap_or(0), address: None, autoscaling }
}

/// Throttling, AWS-side failures and transport trouble pass; the rest is permanent.
fn classify<E, R>(error: SdkError<E, R>) -> ProviderError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let service = match &error {
        SdkError::ServiceError(service) => service.err(),
        other => return ProviderError::Transient(format!("AWS unreachable: {}", DisplayErrorContext(other))),
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
        ProviderError::Transient(format!("AWS {code}: {message}"))
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
