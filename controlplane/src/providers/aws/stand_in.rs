//! The stand-in for what AWS runs, for tests and demos on an emulator (moto):
//!
//! - Aurora's side of creating a cluster (`aws_cluster_stand_in`): where AWS
//!   would start a server with the master user and the cluster's database, the
//!   stand-in makes that user and database on a local server. From there on the
//!   control plane treats it as the cluster: it logs in as the master user, who
//!   is no superuser (Aurora's is not either), and provisions the tenant schema
//!   as it would on AWS.
//! - ECS's side of running a service ([`StandInTasks`]): the tasks run as local
//!   processes started from the task definition registered for the service —
//!   its environment, and its secrets read from Secrets Manager, nothing added
//!   but a local port and spool directory (a container's port and volume
//!   mappings) and what ECS gives every task (region, task role credentials)
//!   — so a task definition that lacks a setting fails here as it would on AWS.

use std::sync::Arc;

use indigo_core::tenant::TenantId;
use indigo_tenantdb::schema::TenantServer;
use sqlx::{ConnectOptions, Connection};

use super::ecs::EcsServices;
use super::secrets::MasterLogin;
use crate::providers::processes::LocalProcesses;
use crate::providers::{ComputeProvider, ProviderError, ProviderFuture, ServiceSpec, ServiceState};

/// Creates (once) the master user of `login` and its database `database` on the
/// stand-in, as RDS's `CreateDBCluster` does with `MasterUsername` and
/// `DatabaseName`.
pub(super) async fn create_cluster_database(
    stand_in: &TenantServer,
    database: &str,
    login: &MasterLogin,
) -> Result<(), ProviderError> {
    let failed = |e: sqlx::Error| ProviderError::Transient(format!("the cluster stand-in {}: {e}", stand_in.address()));
    let mut admin = stand_in.admin_options("postgres").connect().await.map_err(failed)?;
    // Concurrent reconciles of one tenant take turns.
    sqlx::query("SELECT pg_advisory_lock(hashtext('indigo:stand-in'))").execute(&mut admin).await.map_err(failed)?;
    let role_exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
        .bind(&login.username)
        .fetch_one(&mut admin)
        .await
        .map_err(failed)?;
    let user = quote(&login.username);
    if !role_exists {
        // Aurora's master user: may create roles and databases, is no superuser.
        // The password travels as a parameter: statement text is logged, values are not.
        sqlx::query(
            "SELECT set_config('indigo.stand_in_user', $1, false), set_config('indigo.stand_in_password', $2, false)",
        )
        .bind(&login.username)
        .bind(login.password.expose())
        .execute(&mut admin)
        .await
        .map_err(failed)?;
        let sql = "DO $$ BEGIN EXECUTE format('CREATE ROLE %I LOGIN NOSUPERUSER CREATEDB CREATEROLE PASSWORD %L', \
                   current_setting('indigo.stand_in_user'), current_setting('indigo.stand_in_password')); END $$";
        sqlx::raw_sql(sql).execute(&mut admin).await.map_err(failed)?;
    }
    let database_exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(database)
        .fetch_one(&mut admin)
        .await
        .map_err(failed)?;
    if !database_exists {
        let sql = format!("CREATE DATABASE {} OWNER {user}", quote(database));
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut admin).await.map_err(failed)?;
    }
    let _ = admin.close().await;
    Ok(())
}

fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

/// Data-plane services on ECS (moto) whose tasks run here, as local processes
/// of their task definitions.
pub struct StandInTasks {
    ecs: EcsServices,
    processes: Arc<LocalProcesses>,
}

impl StandInTasks {
    pub fn new(ecs: EcsServices, processes: Arc<LocalProcesses>) -> Self {
        Self { ecs, processes }
    }

    async fn ensure(&self, spec: &ServiceSpec) -> Result<ServiceState, ProviderError> {
        let service = self.ecs.ensure(spec).await?;
        let task_definition = service
            .task_definition
            .ok_or_else(|| ProviderError::Transient(format!("ECS reports no task definition for {} yet", spec.name)))?;
        let mut environment = self.ecs.container_environment(&task_definition).await?;
        environment.extend(task_role_environment());
        let running = self.processes.ensure_with(spec, Some(environment)).await?;
        Ok(ServiceState { autoscaling: self.ecs.autoscaling(&spec.name).await?, ..running })
    }

    async fn observe(&self, name: &str) -> Result<Option<ServiceState>, ProviderError> {
        if self.ecs.observe(name).await?.is_none() {
            return Ok(None);
        }
        // On ECS, but its tasks not running here (yet, or any more): none run.
        let running = self.processes.observe_service(name).await?;
        let autoscaling = self.ecs.autoscaling(name).await?;
        Ok(Some(match running {
            Some(state) => ServiceState { autoscaling, ..state },
            None => ServiceState { replicas: 0, address: None, autoscaling },
        }))
    }

    async fn delete(&self, name: &str) -> Result<(), ProviderError> {
        self.processes.delete_service(name).await?;
        self.ecs.delete(name).await
    }
}

/// What ECS gives every task besides its definition: its region and its task
/// role's credentials (with which a task reads its tenants' login secrets).
/// Here those are the control plane's own AWS settings, the emulator's
/// endpoint among them.
fn task_role_environment() -> Vec<(String, String)> {
    [
        "AWS_ENDPOINT_URL",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
    ]
    .into_iter()
    .filter_map(|name| Some((name.to_owned(), std::env::var(name).ok()?)))
    .collect()
}

impl ComputeProvider for StandInTasks {
    fn observe_service<'a>(&'a self, name: &'a str) -> ProviderFuture<'a, Option<ServiceState>> {
        Box::pin(self.observe(name))
    }

    fn ensure_service<'a>(&'a self, spec: &'a ServiceSpec) -> ProviderFuture<'a, ServiceState> {
        Box::pin(self.ensure(spec))
    }

    fn delete_service<'a>(&'a self, name: &'a str) -> ProviderFuture<'a, ()> {
        Box::pin(self.delete(name))
    }

    fn list_services(&self) -> ProviderFuture<'_, Vec<String>> {
        Box::pin(self.ecs.list())
    }

    fn drift(&self) -> Option<tokio::sync::broadcast::Receiver<Option<TenantId>>> {
        self.processes.drift()
    }
}
