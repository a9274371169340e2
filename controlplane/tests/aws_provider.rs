//! The AWS provider against moto. Databases: a silo tenant gets its Aurora
//! Serverless v2 cluster and `db.serverless` writer, encrypted, protected,
//! sized and backed up as its plan says, tagged; a plan change resizes and
//! retags; deleting removes the writer, then the cluster, and keeps a final
//! snapshot when the plan asks. Compute: the pool's data-plane service and a
//! silo tenant's own, with their desired counts, tagged; resized; deleted.
//! (How AWS errors are sorted is unit-tested beside the provider: moto
//! refuses too little to show it.)

mod support;

use indigo_controlplane::policy;
use indigo_controlplane::providers::SiloTenant;
use indigo_controlplane::providers::aws::ecs::{EcsServices, POOL_SERVICE, silo_service_name};
use indigo_controlplane::providers::aws::rds::{AuroraClusters, cluster_identifier};
use indigo_core::plan::SiloSize;
use indigo_core::tenant::{Slug, TenantId};

#[tokio::test]
async fn a_silo_tenant_gets_its_cluster_sized_by_plan_resized_and_deleted_in_order() {
    let config = support::moto().await;
    let clusters = AuroraClusters::new(&config);
    let rds = aws_sdk_rds::Client::new(&config);
    let plans = policy::load_plans(concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/plans.toml").as_ref()).unwrap();
    let enterprise = plans.get("enterprise").unwrap();
    let size = enterprise.silo.clone().expect("enterprise is a silo plan");
    let slug = Slug::parse("big-corp").unwrap();
    let tenant = SiloTenant { id: TenantId::new(), slug: &slug };
    let identifier = cluster_identifier(&tenant);
    assert!(clusters.observe(&tenant).await.unwrap().is_none());

    let state = clusters.ensure(&tenant, &enterprise.name, &size).await.unwrap();
    assert_eq!(state.identifier, identifier);
    assert_eq!(state.status, "available");
    assert!(state.encrypted && state.deletion_protection, "{state:?}");
    assert!(state.sized_as(&size), "sized from policies/plans.toml: {state:?}");
    assert_eq!(state.backup_retention_days, Some(14));
    assert_eq!(state.tags.get("tenant_id"), Some(&tenant.id.to_string()));
    assert_eq!(state.tags.get("plan").map(String::as_str), Some("enterprise"));
    let writer = state.writer.clone().expect("a writer instance");
    let instance = rds.describe_db_instances().db_instance_identifier(&writer).send().await.unwrap();
    let instance = &instance.db_instances()[0];
    assert_eq!(instance.db_instance_class(), Some("db.serverless"));
    assert_eq!(instance.db_cluster_identifier(), Some(identifier.as_str()));

    // Again: nothing new.
    assert_eq!(clusters.ensure(&tenant, &enterprise.name, &size).await.unwrap(), state);
    let all = rds.describe_db_clusters().send().await.unwrap();
    assert_eq!(all.db_clusters().iter().filter(|c| c.db_cluster_identifier() == Some(identifier.as_str())).count(), 1);

    // A bigger plan: resized and retagged in place.
    let bigger = SiloSize { backup_retention_days: 30, ..toml_size("acu_min = 2, acu_max = 64") };
    let plan = plan_name("enterprise_plus");
    let resized = clusters.ensure(&tenant, &plan, &bigger).await.unwrap();
    assert!(resized.sized_as(&bigger), "{resized:?}");
    assert_eq!(resized.tags.get("plan").map(String::as_str), Some("enterprise_plus"));
    assert_eq!(resized.writer, state.writer);

    // Deletion: writer first, then the cluster, with its final snapshot.
    clusters.delete(&tenant, true).await.unwrap();
    assert!(clusters.observe(&tenant).await.unwrap().is_none());
    let gone = rds.describe_db_instances().db_instance_identifier(&writer).send().await;
    assert!(gone.is_err(), "the writer is deleted");
    let snapshots = rds.describe_db_cluster_snapshots().db_cluster_identifier(&identifier).send().await.unwrap();
    let names: Vec<&str> =
        snapshots.db_cluster_snapshots().iter().filter_map(|s| s.db_cluster_snapshot_identifier()).collect();
    assert!(names.contains(&format!("{identifier}-final").as_str()), "{names:?}");
    // Gone already is done.
    clusters.delete(&tenant, true).await.unwrap();
}

#[tokio::test]
async fn the_data_plane_runs_as_a_pool_service_and_one_service_per_silo_tenant() {
    let config = support::moto().await;
    let cluster = format!("indigo-test-{}", uuid::Uuid::new_v4().simple());
    let services = EcsServices::new(&config, &cluster, "ghcr.io/indigo/dataplane:1.0", None);
    services.ensure_cluster().await.unwrap();
    services.ensure_cluster().await.unwrap();
    let plans = policy::load_plans(concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/plans.toml").as_ref()).unwrap();
    let replicas = plans.get("enterprise").unwrap().silo.as_ref().unwrap().dataplane_replicas;

    let pool = services.ensure(POOL_SERVICE, 3, &[("isolation", "pool")]).await.unwrap();
    assert_eq!((pool.status.as_str(), pool.desired), ("ACTIVE", 3));
    let slug = Slug::parse("big-corp").unwrap();
    let tenant = SiloTenant { id: TenantId::new(), slug: &slug };
    let name = silo_service_name(&tenant);
    let tenant_id = tenant.id.to_string();
    let tags = [("tenant_id", tenant_id.as_str()), ("plan", "enterprise")];
    let silo = services.ensure(&name, replicas, &tags).await.unwrap();
    assert_eq!(silo.desired, i32::try_from(replicas).unwrap(), "sized by the plan: {silo:?}");
    assert_eq!(silo.tags.get("tenant_id"), Some(&tenant_id));
    assert_eq!(silo.task_definition, pool.task_definition, "one task definition for every service");
    assert!(silo.task_definition.as_deref().unwrap().contains("indigo-dataplane"));

    // Again: nothing changes; a bigger plan scales in place.
    assert_eq!(services.ensure(&name, replicas, &tags).await.unwrap(), silo);
    let scaled = services.ensure(&name, replicas + 2, &tags).await.unwrap();
    assert_eq!(scaled.desired, i32::try_from(replicas + 2).unwrap());

    // A new image: a new revision, rolled out to the service on its next ensure.
    let upgraded = EcsServices::new(&config, &cluster, "ghcr.io/indigo/dataplane:1.1", None);
    let rolled = upgraded.ensure(&name, replicas, &tags).await.unwrap();
    assert_ne!(rolled.task_definition, silo.task_definition);

    services.delete(&name).await.unwrap();
    assert!(services.observe(&name).await.unwrap().is_none());
    services.delete(&name).await.unwrap();
    assert!(services.observe(POOL_SERVICE).await.unwrap().is_some(), "the pool's service is untouched");
    services.delete(POOL_SERVICE).await.unwrap();
}

/// A silo size from plan-file syntax, validated as the policy file is.
fn toml_size(acus: &str) -> SiloSize {
    let text = format!(
        r#"[plans.probe]
display_name = "Probe"
tier = 9
isolation = "silo"
price_per_month = 1
currency = "usd"
features = []
limits = {{ products = -1, ai_credits = -1, storage_gb = -1, team_members = -1, api_calls_per_day = -1 }}
rate_limit = {{ requests_per_second = 1, burst = 1 }}
silo = {{ {acus}, backup_retention_days = 7, dataplane_replicas = 1, final_snapshot = false }}
"#
    );
    indigo_core::plan::PlanCatalog::parse("probe.toml", &text).unwrap().get("probe").unwrap().silo.clone().unwrap()
}

fn plan_name(raw: &str) -> indigo_core::plan::PlanName {
    serde_json::from_value(serde_json::json!(raw)).unwrap()
}
