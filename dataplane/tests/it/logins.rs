//! A tenant on a cluster of its own is reached as its own login, with the
//! password kept in the secret its route names (read from moto's Secrets
//! Manager through the real SDK client), never with the app role's password.

use indigo_core::api::RoutingTable;
use indigo_core::tenant::TenantId;
use indigo_dataplane::logins::LoginSecrets;
use indigo_dataplane::routing::Routes;
use indigo_tenantdb::retry::RetryLater;

use crate::support;

#[tokio::test]
async fn a_tenant_on_its_own_cluster_is_reached_with_its_logins_password_or_not_at_all() {
    let secrets = aws_sdk_secretsmanager::Client::new(&indigo_e2e::moto().await);
    let tenant = TenantId::new();
    let secret = format!("indigo-test-{}/tenants/{tenant}/database-login", uuid::Uuid::new_v4().simple());
    let url = format!("postgres://indigo_app_{}@127.0.0.1:5432/indigo_cluster_db", tenant.0.simple());
    let mut silo = support::silo_route(tenant);
    silo.database_url = Some(url.clone());
    silo.database_login_secret = Some(secret.clone());
    let routes = Routes::new(2)
        .with_database_password(Some("the-pool-password".into()))
        .with_login_secrets(LoginSecrets::with_client(secrets.clone()));
    let table = |version, routes| RoutingTable { version, routes, ai_credit_rates: support::credit_rates() };
    let install = async |table: RoutingTable| {
        routes.read_logins(&table).await;
        routes.replace(table);
    };
    let password_of = |url: &str| format!("{:?}", routes.pool(url).unwrap().connect_options());

    // Its secret unreadable: no connection at all, and the pool's password is not tried.
    install(table(1, vec![silo.clone()])).await;
    let refused = routes.pool(&url).unwrap_err();
    assert!(matches!(&refused, sqlx::Error::Io(e) if e.kind() == std::io::ErrorKind::PermissionDenied), "{refused}");
    assert_eq!(RetryLater::of(&refused), Some(RetryLater::Unreachable), "answered 503: retry");

    // Once it can be read: its password, not the pool's.
    secrets.create_secret().name(&secret).secret_string("the-tenant-login-password").send().await.unwrap();
    install(table(2, vec![silo.clone()])).await;
    let options = password_of(&url);
    assert!(options.contains("the-tenant-login-password") && !options.contains("the-pool-password"), "{options}");

    // No route names the cluster any more: its password goes with its
    // connections, and a later route there reads the secret again (a cluster
    // made anew has a new login).
    install(table(3, vec![])).await;
    secrets.put_secret_value().secret_id(&secret).secret_string("the-new-cluster-password").send().await.unwrap();
    install(table(4, vec![silo.clone()])).await;
    assert!(password_of(&url).contains("the-new-cluster-password"));

    // The pool's tenants keep the app role's password.
    let pool_url = "postgres://indigo_app@127.0.0.1:5432/indigo_pool_db".to_owned();
    let pool_tenant = support::route(TenantId::new(), "pool-shop", support::plan("starter"), Some(pool_url.clone()));
    install(table(5, vec![silo, pool_tenant])).await;
    assert!(password_of(&pool_url).contains("the-pool-password"));
    secrets.delete_secret().secret_id(&secret).force_delete_without_recovery(true).send().await.unwrap();
}
