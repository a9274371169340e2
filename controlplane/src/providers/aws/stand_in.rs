//! The stand-in for Aurora's side of creating a cluster (`aws_cluster_stand_in`):
//! where AWS would start a server with the master user and the cluster's
//! database, the stand-in makes that user and database on a local server. From
//! there on the control plane treats it as the cluster: it logs in as the
//! master user, who is no superuser (Aurora's is not either), and provisions
//! the tenant schema as it would on AWS.

use indigo_tenantdb::schema::TenantServer;
use sqlx::{ConnectOptions, Connection};

use super::secrets::MasterLogin;
use crate::providers::ProviderError;

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
        let password = login.password.expose().replace('\'', "''");
        let sql = format!("CREATE ROLE {user} LOGIN NOSUPERUSER CREATEDB CREATEROLE PASSWORD '{password}'");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut admin).await.map_err(failed)?;
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
