//! Checks of a tenant's own login to its cluster, as an operator would make
//! them on the stand-in: in Secrets Manager (moto) and on the server.

use std::str::FromStr;

use indigo_core::tenant::TenantId;
use indigo_tenantdb::ClusterLogin;
use indigo_tenantdb::schema::{APP_ROLE, audit_isolation};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};

/// `tenant`'s login to its cluster's database `on_cluster`, its password
/// kept under `secrets_prefix`: the secret is tagged with the tenant and its
/// value is the role's password (PostgreSQL holds its verifier); the role is a
/// member of the app role, neither superuser nor `BYPASSRLS`; the database
/// lets it in, bound by RLS, and keeps the pool's app role out. Returns it.
pub async fn assert_serving(
    moto: &aws_config::SdkConfig,
    secrets_prefix: &str,
    tenant: TenantId,
    on_cluster: &str,
) -> ClusterLogin {
    let login = ClusterLogin::of(tenant, secrets_prefix);
    let secrets = aws_sdk_secretsmanager::Client::new(moto);
    let value = secrets.get_secret_value().secret_id(&login.secret).send().await.expect("the login's secret");
    let password = value.secret_string().expect("a password").to_owned();
    let described = secrets.describe_secret().secret_id(&login.secret).send().await.unwrap();
    let tenant_tag = described.tags().iter().find(|t| t.key() == Some("tenant_id")).and_then(|t| t.value());
    assert_eq!(tenant_tag, Some(tenant.to_string().as_str()), "the login's secret is tagged with its tenant");

    let server = PgConnectOptions::from_str(&crate::server_url()).unwrap();
    let mut admin = server.clone().database("postgres").connect().await.unwrap();
    let role: (Option<String>, bool, bool, bool) = sqlx::query_as(
        "SELECT rolpassword, rolsuper, rolbypassrls, pg_has_role(oid, $2, 'MEMBER') FROM pg_authid WHERE rolname = $1",
    )
    .bind(&login.role)
    .bind(APP_ROLE)
    .fetch_one(&mut admin)
    .await
    .expect("the tenant's login role");
    admin.close().await.unwrap();
    assert_eq!(role.0, Some(indigo_tenantdb::scram::verifier(&password)), "its password is its secret's");
    assert_eq!((role.1, role.2, role.3), (false, false, true), "an app-role member, bound by RLS");

    let as_role = |role: &str| server.clone().username(role).database(on_cluster);
    match as_role(APP_ROLE).connect().await {
        Err(sqlx::Error::Database(e)) => assert_eq!(e.code().as_deref(), Some("42501"), "{e}"),
        other => panic!("the pool's app role reached the cluster's database: {:?}", other.map(|_| ())),
    }
    let mut conn = as_role(&login.role).connect().await.expect("the tenant's login opens its cluster");
    assert_eq!(audit_isolation(&mut conn).await.unwrap(), []);
    conn.close().await.unwrap();
    login
}

/// `login` and its secret are gone with its tenant's cluster.
pub async fn assert_gone(moto: &aws_config::SdkConfig, login: &ClusterLogin) {
    let secrets = aws_sdk_secretsmanager::Client::new(moto);
    let read = secrets.get_secret_value().secret_id(&login.secret).send().await;
    assert!(read.is_err(), "the login's secret {} outlived its cluster", login.secret);
    let server = PgConnectOptions::from_str(&crate::server_url()).unwrap();
    let mut admin = server.database("postgres").connect().await.unwrap();
    let left: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
        .bind(&login.role)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    admin.close().await.unwrap();
    assert!(!left, "the login {} outlived its cluster", login.role);
}
