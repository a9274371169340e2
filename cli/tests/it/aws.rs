//! `indigo up --demo` in the AWS mode, on moto and the stand-in: the enterprise
//! demo tenant lives on its own Aurora cluster (a database on the local server)
//! and is served by the tasks of its own ECS service, started here from the
//! task definition registered in moto, with its secrets read from moto's
//! Secrets Manager; the storefront a newcomer is shown answers.

use std::time::Duration;

use crate::up::{DataPlanes, Platform, eventually, storefront_token};

#[tokio::test]
async fn on_aws_the_enterprise_tenant_is_served_from_its_own_cluster_by_its_own_tasks() {
    let moto = std::env::var("MOTO_URL").unwrap_or_else(|_| "http://127.0.0.1:5000".into());
    reqwest::get(format!("{moto}/moto-api/"))
        .await
        .unwrap_or_else(|e| panic!("moto is not reachable at {moto} ({e}); scripts/test installs and starts it"));
    let platform = Platform::new();
    let data_dir = &platform.data_dir;
    let ecs_cluster = format!("indigo-up-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let aws = [
        ("INDIGO_PROVIDER", "aws"),
        ("AWS_ENDPOINT_URL", moto.as_str()),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
        ("INDIGO_AWS_ECS_CLUSTER", ecs_cluster.as_str()),
        // The tasks log at `info` only if their task definition says so.
        ("RUST_LOG", "warn"),
    ];
    let (mut daemon, api_url, storefront) = platform.start_demo(&aws).await;
    daemon.wait_for_line("AWS: ", Duration::from_secs(5)).unwrap();
    let control = sqlx::PgPool::connect(&platform.database.url).await.unwrap();

    let (tenant, endpoint, service) = eventually("fjord-fashion is placed on its cluster and served", async || {
        sqlx::query_as::<_, (uuid::Uuid, String, String)>(
            "SELECT id, placement->>'cluster', placement->>'service' FROM tenants
             WHERE slug = 'fjord-fashion' AND phase = 'ready' AND placement->>'service' IS NOT NULL",
        )
        .fetch_optional(&control)
        .await
        .unwrap()
    })
    .await;
    assert!(endpoint.contains(".cluster-"), "an Aurora endpoint: {endpoint}");
    indigo_e2e::wait_until_ok(&format!("{service}/readyz"), Duration::from_secs(30)).await.unwrap();

    // Its tasks run with what the task definition says, secrets resolved.
    let ours = DataPlanes { control_plane: api_url.clone() };
    let tasks = ours.serving(Some(tenant));
    assert_eq!(tasks.len(), 2, "the plan's dataplane_replicas");
    let environment = DataPlanes::environment(tasks[0]);
    assert_eq!(environment.get("RUST_LOG").map(String::as_str), Some("info"), "set by the task definition alone");
    assert!(environment["INDIGO_CONTROL_PLANE_TOKEN"].starts_with("indigo_"), "read from Secrets Manager");
    assert!(!environment.contains_key("AWS_ENDPOINT_URL"), "nothing from the control plane's own environment");

    // It serves its own rows, from its cluster; another tenant is refused there.
    let http = reqwest::Client::new();
    let token = |slug: &str| storefront_token(data_dir, &api_url, slug);
    let own = http.get(format!("{service}/v1/products")).bearer_auth(token("fjord-fashion")).send().await.unwrap();
    assert_eq!(own.status(), 200);
    assert!(own.text().await.unwrap().contains("Sample product"), "the product seeded on its cluster");
    let other = http.get(format!("{service}/v1/products")).bearer_auth(token("blue-bakery")).send().await.unwrap();
    assert_eq!(other.status(), 401, "a dedicated data plane serves its tenant only");
    // The storefront `indigo up` printed is the pool's, and answers.
    let pool = http.get(format!("{storefront}/v1/products")).bearer_auth(token("blue-bakery")).send().await.unwrap();
    assert_eq!(pool.status(), 200);

    let status = daemon.signal_and_wait("TERM", Duration::from_secs(30)).unwrap();
    assert!(status.success(), "indigo up exited with {status} after SIGTERM");
    assert!(ours.running().is_empty(), "its tasks stopped with it");
    control.close().await;
    let on_cluster = indigo_tenantdb::stand_in_database(&endpoint);
    indigo_e2e::TestDatabase { url: String::new(), name: on_cluster }.drop_now().await.unwrap();
    platform.remove().await;
}
