//! The AWS provider against moto, on its own and driven by the reconciler.
//! Databases: a silo tenant gets its Aurora Serverless v2 cluster and
//! `db.serverless` writer, encrypted, protected, sized and backed up as its
//! plan says, tagged; a plan change resizes and retags; deleting removes the
//! writer, then the cluster, and keeps a final snapshot when the plan asks.
//! The cluster's database is reached on a stand-in server (as tests and demos
//! do): the tenant schema is provisioned there as the master user whose login
//! the cluster's managed secret holds.
//! Compute: the pool's data-plane service and a silo tenant's own, with their
//! desired counts, tagged; resized; deleted. (How AWS errors are sorted is
//! unit-tested beside the provider: moto refuses too little to show it.)

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use indigo_controlplane::api::auth::Actor;

use aws_sdk_applicationautoscaling::types::{ScalableDimension, ServiceNamespace as ScalingNamespace};
use indigo_controlplane::config::Overrides;
use indigo_controlplane::identity;
use indigo_controlplane::providers::aws::AwsDatabases;
use indigo_controlplane::providers::aws::ecs::{EcsServices, POOL_SERVICE, TaskRoles, TaskSettings};
use indigo_controlplane::providers::aws::rds::{AuroraClusters, TENANT_DATABASE, cluster_identifier};
use indigo_controlplane::providers::{Autoscaling, ComputeProvider, ServiceSpec, SiloTenant, silo_service_name};
use indigo_controlplane::reconciler::plan::Action;
use indigo_controlplane::reconciler::{self, Controller, Outcome, Settings};
use indigo_controlplane::registry::{self, NewTenant, TenantRef};
use indigo_controlplane::{db, policy};
use indigo_core::plan::{PlanCatalog, PoolSize};
use indigo_core::tenant::{Email, Lifecycle, Phase, Slug, TenantId, TenantName};
use indigo_tenantdb::schema::{TenantServer, audit_isolation};
use indigo_tenantdb::{TenantDatabases, stand_in_database};
use sqlx::{ConnectOptions, Connection, PgPool};

/// The product's plans plus a bigger silo plan to upgrade to.
fn plans() -> PlanCatalog {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/plans.toml");
    let text = std::fs::read_to_string(path).unwrap()
        + r#"
[plans.enterprise_plus]
display_name = "Enterprise Plus"
tier = 5
isolation = "silo"
price_per_month = 199900
currency = "usd"
features = ["basic_store", "sla"]
limits = { products = -1, ai_credits = -1, storage_gb = -1, team_members = -1, api_calls_per_day = -1 }
rate_limit = { requests_per_second = 2000, burst = 4000 }
recovery = { rpo_minutes = 1, rto_minutes = 15, backups_kept = 60 }
silo = { acu_min = 2, acu_max = 64, backup_retention_days = 30, dataplane_replicas = 3, final_snapshot = true }
"#;
    PlanCatalog::parse(path, &text).unwrap()
}

#[tokio::test]
async fn a_silo_tenant_gets_its_cluster_sized_by_plan_resized_and_deleted_in_order() {
    let config = indigo_e2e::moto().await;
    let clusters = AuroraClusters::new(&config);
    let rds = aws_sdk_rds::Client::new(&config);
    let plans = plans();
    let enterprise = plans.get("enterprise").unwrap();
    let size = enterprise.silo.clone().expect("enterprise is a silo plan");
    let slug = Slug::parse("big-corp").unwrap();
    let tenant = SiloTenant { id: TenantId::new(), slug: &slug, plan: enterprise };
    let identifier = cluster_identifier(&tenant);
    assert!(clusters.observe(&tenant).await.unwrap().is_none());

    let state = clusters.ensure(&tenant).await.unwrap();
    assert_eq!(state.identifier, identifier);
    assert_eq!(state.status, "available");
    assert!(state.encrypted && state.deletion_protection, "{state:?}");
    assert!(state.sized_as(&enterprise.name, &size), "sized from policies/plans.toml: {state:?}");
    assert_eq!(state.backup_retention_days, Some(14));
    assert_eq!(state.tags.get("tenant_id"), Some(&tenant.id.to_string()));
    assert_eq!(state.tags.get("plan").map(String::as_str), Some("enterprise"));
    let writer = state.writer.clone().expect("a writer instance");
    let instance = rds.describe_db_instances().db_instance_identifier(&writer).send().await.unwrap();
    let instance = &instance.db_instances()[0];
    assert_eq!(instance.db_instance_class(), Some("db.serverless"));
    assert_eq!(instance.db_cluster_identifier(), Some(identifier.as_str()));

    // Again: nothing new.
    assert_eq!(clusters.ensure(&tenant).await.unwrap(), state);
    let all = rds.describe_db_clusters().send().await.unwrap();
    assert_eq!(all.db_clusters().iter().filter(|c| c.db_cluster_identifier() == Some(identifier.as_str())).count(), 1);

    // A bigger plan: resized and retagged in place.
    let plus = plans.get("enterprise_plus").unwrap();
    let tenant = SiloTenant { plan: plus, ..tenant };
    let resized = clusters.ensure(&tenant).await.unwrap();
    assert!(resized.sized_as(&plus.name, plus.silo.as_ref().unwrap()), "{resized:?}");
    assert_eq!((resized.acu_min, resized.acu_max, resized.backup_retention_days), (Some(2.0), Some(64.0), Some(30)));
    assert_eq!(resized.tags.get("plan").map(String::as_str), Some("enterprise_plus"));
    assert_eq!(resized.writer, state.writer);

    // Deletion: writer first, then the cluster, with its final snapshot.
    clusters.delete(&tenant).await.unwrap();
    assert!(clusters.observe(&tenant).await.unwrap().is_none());
    let gone = rds.describe_db_instances().db_instance_identifier(&writer).send().await;
    assert!(gone.is_err(), "the writer is deleted");
    let snapshots = rds.describe_db_cluster_snapshots().db_cluster_identifier(&identifier).send().await.unwrap();
    let names: Vec<&str> =
        snapshots.db_cluster_snapshots().iter().filter_map(|s| s.db_cluster_snapshot_identifier()).collect();
    let final_snapshot = format!("{identifier}-final-");
    assert!(names.iter().any(|name| name.starts_with(&final_snapshot)), "{names:?}");
    // Gone already is done.
    clusters.delete(&tenant).await.unwrap();
}

/// What the tests' data-plane tasks are given: `image`, Redis with a password,
/// and the app role's database password.
fn task_settings(image: &str) -> TaskSettings {
    TaskSettings {
        image: image.into(),
        control_plane_url: "http://indigo.internal:8080".into(),
        redis_url: Some("redis://:redis-password-of-the-test@cache.internal:6379".into()),
        jwt_secret: None,
        database_password: Some(indigo_controlplane::config::Secret::new("app-database-password-of-the-test")),
        bedrock_model_id: Some("amazon.nova-micro-v1:0".into()),
        log_level: "info".into(),
        traces: indigo_core::traces::TraceExport {
            otlp_endpoint: Some("http://127.0.0.1:4318".into()),
            propagation: indigo_core::traces::Propagation::Xray,
        },
        log_group: "/indigo/dataplane".into(),
        region: "us-east-1".into(),
        roles: TaskRoles {
            execution: Some("arn:aws:iam::123456789012:role/indigo-dataplane-execution".into()),
            task: Some("arn:aws:iam::123456789012:role/indigo-dataplane".into()),
        },
    }
}

#[sqlx::test(migrator = "db::MIGRATOR")]
async fn the_data_plane_runs_as_a_pool_service_and_one_service_per_silo_tenant(db: PgPool) {
    let config = indigo_e2e::moto().await;
    let cluster = format!("indigo-test-{}", uuid::Uuid::new_v4().simple());
    let services = EcsServices::new(&config, &cluster, task_settings("ghcr.io/indigo/dataplane:1.0"), None, db.clone());
    services.ensure_cluster().await.unwrap();
    services.ensure_cluster().await.unwrap();
    let plans = policy::load_plans(concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/plans.toml").as_ref()).unwrap();
    let enterprise = plans.get("enterprise").unwrap();
    let size = enterprise.silo.clone().unwrap();

    let pool = services
        .ensure(&ServiceSpec::pool(&PoolSize { dataplane_replicas: 3, dataplane_max_replicas: 3 }))
        .await
        .unwrap();
    assert_eq!((pool.status.as_str(), pool.desired), ("ACTIVE", 3));
    // A silo service's identity is bound to its tenant, who is in the registry.
    let mut tx = db.begin().await.unwrap();
    let new = NewTenant {
        slug: Slug::parse("big-corp").unwrap(),
        name: TenantName::parse("Big Corp").unwrap(),
        owner_email: Email::parse("o@big.example").unwrap(),
        plan: enterprise,
        lifecycle: Lifecycle::Active,
    };
    let registered = registry::create(&mut tx, &Actor::system("test"), None, new).await.unwrap();
    tx.commit().await.unwrap();
    let tenant = SiloTenant { id: registered.id, slug: &registered.slug, plan: enterprise };
    let spec = ServiceSpec::silo(&tenant).unwrap();
    let name = spec.name.clone();
    let tenant_id = tenant.id.to_string();
    let silo = services.ensure(&spec).await.unwrap();
    assert_eq!(silo.desired, i32::try_from(size.dataplane_replicas).unwrap(), "sized by the plan: {silo:?}");
    assert_eq!(silo.tags.get("tenant_id"), Some(&tenant_id));

    // Each task definition has all a task needs to serve: settings, secrets by
    // ARN, logs, a health check, the plan's CPU and memory.
    let ecs = aws_sdk_ecs::Client::new(&config);
    let secrets = aws_sdk_secretsmanager::Client::new(&config);
    let described = |arn: Option<String>| {
        let ecs = ecs.clone();
        async move {
            let described = ecs.describe_task_definition().task_definition(arn.unwrap()).send().await.unwrap();
            described.task_definition().unwrap().clone()
        }
    };
    let environment = |definition: &aws_sdk_ecs::types::TaskDefinition| -> BTreeMap<String, String> {
        let container = &definition.container_definitions()[0];
        container.environment().iter().map(|p| (p.name().unwrap().to_owned(), p.value().unwrap().to_owned())).collect()
    };
    let secret_values = async |definition: &aws_sdk_ecs::types::TaskDefinition| -> BTreeMap<String, String> {
        let mut values = BTreeMap::new();
        for secret in definition.container_definitions()[0].secrets() {
            let value = secrets.get_secret_value().secret_id(secret.value_from()).send().await.unwrap();
            values.insert(secret.name().to_owned(), value.secret_string().unwrap().to_owned());
        }
        values
    };
    let pool_definition = described(pool.task_definition.clone()).await;
    assert_eq!(pool_definition.family(), Some("indigo-dataplane"));
    let pool_env = environment(&pool_definition);
    assert_eq!(pool_env["INDIGO_CONTROL_PLANE_URL"], "http://indigo.internal:8080");
    assert_eq!(pool_env["INDIGO_DATAPLANE_LISTEN"], "0.0.0.0:8081");
    assert!(!pool_env.contains_key("INDIGO_DATAPLANE_TENANT"), "the pool's serves every pool tenant");
    // Traces go where the control plane's go, their context in the configured headers.
    assert_eq!(
        (pool_env["INDIGO_OTLP_ENDPOINT"].as_str(), pool_env["INDIGO_TRACE_PROPAGATION"].as_str()),
        ("http://127.0.0.1:4318", "xray"),
    );
    assert_eq!(
        (pool_env["INDIGO_DESCRIPTIONS"].as_str(), pool_env["INDIGO_BEDROCK_MODEL_ID"].as_str()),
        ("bedrock", "amazon.nova-micro-v1:0"),
        "descriptions written by Bedrock"
    );
    let silo_definition = described(silo.task_definition.clone()).await;
    assert_eq!(silo_definition.family(), Some(name.as_str()), "a family of its own");
    assert_eq!(environment(&silo_definition)["INDIGO_DATAPLANE_TENANT"], tenant_id);
    assert_eq!(
        (silo_definition.cpu(), silo_definition.memory()),
        (Some(size.dataplane_cpu.to_string().as_str()), Some(size.dataplane_memory.to_string().as_str()))
    );
    let container = &silo_definition.container_definitions()[0];
    let logs = container.log_configuration().unwrap();
    assert_eq!(logs.log_driver().as_str(), "awslogs");
    assert_eq!(logs.options().unwrap()["awslogs-group"], "/indigo/dataplane");
    assert_eq!(
        container.health_check().unwrap().command(),
        ["CMD", "/usr/local/bin/indigo-dataplane", "--check-ready"]
    );
    assert_eq!(container.port_mappings()[0].container_port(), Some(8081));
    // ECS reads the secrets and writes the logs as one role; the tasks act as
    // another (their tenants' cluster logins, Bedrock).
    assert_eq!(
        (silo_definition.execution_role_arn(), silo_definition.task_role_arn()),
        (
            Some("arn:aws:iam::123456789012:role/indigo-dataplane-execution"),
            Some("arn:aws:iam::123456789012:role/indigo-dataplane")
        )
    );
    let values = secret_values(&silo_definition).await;
    assert_eq!(
        values.keys().map(String::as_str).collect::<Vec<_>>(),
        ["INDIGO_CONTROL_PLANE_TOKEN", "INDIGO_DATABASE_PASSWORD", "INDIGO_JWT_SECRET", "INDIGO_REDIS_URL"]
    );
    assert_eq!(values["INDIGO_REDIS_URL"], "redis://:redis-password-of-the-test@cache.internal:6379");
    assert_eq!(values["INDIGO_DATABASE_PASSWORD"], "app-database-password-of-the-test");
    // The token is the silo service's own identity, bound to its tenant.
    let bound: Option<uuid::Uuid> = sqlx::query_scalar(
        "SELECT tenant_id FROM api_tokens WHERE name = $1 AND role = 'dataplane' AND revoked_at IS NULL",
    )
    .bind(&name)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(bound, Some(tenant.id.0));
    assert!(identity::dataplane_token_current(&db, &name, &values["INDIGO_CONTROL_PLANE_TOKEN"]).await.unwrap());
    // No secret's value is in the task definitions themselves.
    for definition in [&pool_definition, &silo_definition] {
        let text = format!("{definition:?}");
        for value in values.values().chain(secret_values(&pool_definition).await.values()) {
            assert!(!text.contains(value.as_str()), "a secret in the task definition {:?}", definition.family());
        }
    }

    // Again: nothing changes; a bigger plan scales in place.
    assert_eq!(services.ensure(&spec).await.unwrap(), silo);
    let bigger = ServiceSpec { replicas: spec.replicas + 2, ..spec.clone() };
    let scaled = services.ensure(&bigger).await.unwrap();
    assert_eq!(scaled.desired, i32::try_from(spec.replicas + 2).unwrap());

    // A revoked token is minted again, in the same secret.
    identity::revoke_dataplane_token(&db, &name).await.unwrap();
    let renewed = services.ensure(&spec).await.unwrap();
    assert_eq!(renewed.task_definition, silo.task_definition, "the ARN stays; the value is new");
    let token = secret_values(&silo_definition).await.remove("INDIGO_CONTROL_PLANE_TOKEN").unwrap();
    assert_ne!(token, values["INDIGO_CONTROL_PLANE_TOKEN"]);
    assert!(identity::dataplane_token_current(&db, &name, &token).await.unwrap());

    // A new image: a new revision, rolled out to the service on its next ensure.
    let upgraded = EcsServices::new(&config, &cluster, task_settings("ghcr.io/indigo/dataplane:1.1"), None, db.clone());
    let rolled = upgraded.ensure(&spec).await.unwrap();
    assert_ne!(rolled.task_definition, silo.task_definition);
    assert_eq!(services.revisions(&name).await.unwrap().len(), 2);

    // Deleting the service releases its task definitions, identity and token too; the pool's stay.
    services.delete(&name).await.unwrap();
    assert!(services.observe(&name).await.unwrap().is_none());
    assert!(services.revisions(&name).await.unwrap().is_empty(), "the silo's task definitions are deregistered");
    assert!(!identity::dataplane_token_current(&db, &name, &token).await.unwrap(), "its identity is revoked");
    let token_secret = container.secrets().iter().find(|s| s.name() == "INDIGO_CONTROL_PLANE_TOKEN").unwrap();
    assert!(secrets.get_secret_value().secret_id(token_secret.value_from()).send().await.is_err(), "token deleted");
    services.delete(&name).await.unwrap();
    assert!(!services.revisions("indigo-dataplane").await.unwrap().is_empty());
    assert!(services.observe(POOL_SERVICE).await.unwrap().is_some(), "the pool's service is untouched");
    services.delete(POOL_SERVICE).await.unwrap();
}

/// The reconciler with `provider = aws`: the same loop as locally, acting on moto.
#[sqlx::test(migrator = "db::MIGRATOR")]
async fn the_reconciler_builds_resizes_repairs_and_deletes_a_silo_tenant_on_aws(pool: PgPool) {
    let config = indigo_e2e::moto().await;
    let plans = Arc::new(plans());
    // Silo tenants never touch the pool; its database is only named.
    let server = TenantServer::new(&indigo_e2e::server_url()).unwrap();
    let cluster = format!("indigo-test-{}", uuid::Uuid::new_v4().simple());
    let mut dbs = TenantDatabases::new(server.clone(), "indigo_aws_pool_unused");
    dbs.cluster_stand_in = Some(server.clone());
    dbs.cluster_logins = Some(cluster.clone());
    let dbs = Arc::new(dbs);
    let ecs = Arc::new(EcsServices::new(
        &config,
        &cluster,
        task_settings("ghcr.io/indigo/dataplane:1.0"),
        None,
        pool.clone(),
    ));
    let settings = Settings { resync: Duration::from_secs(3600), workers: 1, rls_audit: Duration::from_secs(3600) };
    let controller =
        Controller::new(pool.clone(), Arc::new(AwsDatabases::new(&config, dbs.clone())), dbs, plans.clone(), settings)
            .with_compute(ecs.clone());
    let ctx = controller.context();
    let reconcile = async |id: TenantId| {
        let Outcome::Applied(decision) = reconciler::apply(&ctx, &mut pool.acquire().await.unwrap(), id).await.unwrap()
        else {
            panic!("the tenant was not reconciled")
        };
        decision
    };
    let get = async |id: TenantId| registry::get(&mut pool.acquire().await.unwrap(), &TenantRef::Id(id)).await.unwrap();

    let mut tx = pool.begin().await.unwrap();
    let new = NewTenant {
        slug: Slug::parse("big-corp").unwrap(),
        name: TenantName::parse("Big Corp").unwrap(),
        owner_email: Email::parse("o@big.example").unwrap(),
        plan: plans.get("enterprise").unwrap(),
        lifecycle: Lifecycle::Active,
    };
    let tenant = registry::create(&mut tx, &Actor::system("test"), None, new).await.unwrap();
    tx.commit().await.unwrap();
    let service = silo_service_name(tenant.id, &tenant.slug);
    let clusters = AuroraClusters::new(&config);
    let on = |plan: &str| SiloTenant { id: tenant.id, slug: &tenant.slug, plan: plans.get(plan).unwrap() };

    // Created: cluster and writer sized and tagged by the plan, the tenant's own service.
    let decision = reconcile(tenant.id).await;
    assert_eq!(decision.actions, [Action::CreateSilo, Action::CreateService { service: service.clone(), replicas: 2 }]);
    let state = clusters.observe(&on("enterprise")).await.unwrap().expect("the tenant's cluster");
    assert!(state.writer.is_some() && state.encrypted && state.deletion_protection, "{state:?}");
    assert_eq!((state.acu_min, state.acu_max, state.backup_retention_days), (Some(0.5), Some(16.0), Some(14)));
    assert_eq!(state.tags.get("tenant_id"), Some(&tenant.id.to_string()));
    assert_eq!(state.tags.get("plan").map(String::as_str), Some("enterprise"));
    let running = ecs.observe(&service).await.unwrap().expect("the tenant's service");
    assert_eq!(running.desired, 2);
    assert_eq!(scaling_of(&config, &cluster, &service).await, Some((2, 6)), "autoscaling in the plan's range");
    assert_eq!(running.tags.get("tenant_id"), Some(&tenant.id.to_string()));
    let placed = get(tenant.id).await;
    let placement = placed.status.placement.clone().unwrap();
    assert_eq!(placed.status.phase, Phase::Ready);
    assert_eq!(placement.database, TENANT_DATABASE);
    assert_eq!(placement.cluster, state.endpoint, "the data plane is routed to the cluster's endpoint");
    assert_eq!(placement.service.as_deref(), Some(service.as_str()));
    assert!(reconcile(tenant.id).await.actions.is_empty(), "converged: a second pass changes nothing");
    // The cluster's database (on the stand-in) holds the tenant schema, RLS
    // forced on every tenant table, provisioned by a master user who is no superuser.
    let endpoint = state.endpoint.clone().unwrap();
    let on_cluster = stand_in_database(&endpoint);
    assert!(server.schema_ready(&on_cluster).await.unwrap(), "the tenant schema is on the cluster");
    let mut conn = server.admin_options(&on_cluster).connect().await.unwrap();
    assert_eq!(audit_isolation(&mut conn).await.unwrap(), []);
    let owner: String =
        sqlx::query_scalar("SELECT pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = current_database()")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(owner, "indigo_owner");
    let secret = rds_secret(&config, &state.identifier).await;
    let master: (bool, bool) = sqlx::query_as("SELECT rolsuper, rolcreaterole FROM pg_roles WHERE rolname = $1")
        .bind(secret["username"].as_str().unwrap())
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(master, (false, true), "the master user from the cluster's secret, as Aurora makes it");
    conn.close().await.unwrap();
    let routes = routing_table(&pool, &cluster).await;
    let route = routes["routes"].as_array().unwrap().iter().find(|r| r["slug"] == "big-corp").unwrap().clone();
    // The data planes log in there as the tenant's own login, whose password
    // the route names a secret for and does not carry.
    let login = indigo_e2e::cluster_logins::assert_serving(&config, &cluster, tenant.id, &on_cluster).await;
    assert_eq!(route["database_url"], format!("postgres://{}@127.0.0.1:5432/{on_cluster}", login.role));
    assert_eq!(route["database_login_secret"], login.secret.as_str());
    // Its role dropped by hand: made again.
    let mut admin = server.admin_options("postgres").connect().await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP OWNED BY {0}; DROP ROLE {0}", login.role)))
        .execute(&mut admin)
        .await
        .unwrap();
    admin.close().await.unwrap();
    assert_eq!(reconcile(tenant.id).await.actions, [Action::RecreateSilo], "a silo without its login is not ready");
    indigo_e2e::cluster_logins::assert_serving(&config, &cluster, tenant.id, &on_cluster).await;

    // A plan change resizes the cluster and scales the service, in place.
    let mut tx = pool.begin().await.unwrap();
    let actor = Actor::system("test");
    registry::change_plan(&mut tx, &actor, None, &TenantRef::Id(tenant.id), plans.get("enterprise_plus").unwrap())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let decision = reconcile(tenant.id).await;
    assert_eq!(
        decision.actions,
        [Action::ResizeSilo, Action::ScaleService { service: service.clone(), running: 2, replicas: 3 }]
    );
    assert!(!decision.drift, "a plan change is not drift");
    let resized = clusters.observe(&on("enterprise_plus")).await.unwrap().unwrap();
    assert_eq!((resized.acu_min, resized.acu_max, resized.backup_retention_days), (Some(2.0), Some(64.0), Some(30)));
    assert_eq!(resized.tags.get("plan").map(String::as_str), Some("enterprise_plus"));
    assert_eq!(ecs.observe(&service).await.unwrap().unwrap().desired, 3);
    assert_eq!(scaling_of(&config, &cluster, &service).await, Some((3, 3)), "the new plan's range");

    // Its CPU policy deleted by hand: put back, and reported as drift.
    let autoscaling = aws_sdk_applicationautoscaling::Client::new(&config);
    autoscaling
        .delete_scaling_policy()
        .policy_name("indigo-cpu")
        .service_namespace(ScalingNamespace::Ecs)
        .scalable_dimension(ScalableDimension::EcsServiceDesiredCount)
        .resource_id(format!("service/{cluster}/{service}"))
        .send()
        .await
        .unwrap();
    let decision = reconcile(tenant.id).await;
    assert_eq!(decision.actions, [Action::SetAutoscaling { service: service.clone(), min: 3, max: 3 }]);
    assert!(decision.drift);
    assert_eq!(policies_of(&config, &cluster, &service).await, ["indigo-cpu: ECSServiceAverageCPUUtilization 70"]);
    assert!(reconcile(tenant.id).await.actions.is_empty(), "repaired");

    // Scaled to zero by hand: repaired, and reported as drift with the diff.
    let client = aws_sdk_ecs::Client::new(&config);
    client.update_service().cluster(&cluster).service(&service).desired_count(0).send().await.unwrap();
    let decision = reconcile(tenant.id).await;
    assert_eq!(decision.actions, [Action::ScaleService { service: service.clone(), running: 0, replicas: 3 }]);
    assert!(decision.drift);
    assert_eq!(ecs.observe(&service).await.unwrap().unwrap().desired, 3);
    let diff: serde_json::Value = sqlx::query_scalar(
        "SELECT data FROM events WHERE tenant_id = $1 AND kind = 'DriftRepaired'
             AND data->'actions'->0->>'action' = 'scale_service'",
    )
    .bind(tenant.id.0)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(diff["actions"][0]["running"], 0);

    // Deleted: the service first, then the writer and the cluster, with a final snapshot.
    let mut tx = pool.begin().await.unwrap();
    registry::set_lifecycle(&mut tx, &actor, None, &TenantRef::Id(tenant.id), Lifecycle::Deleted, None).await.unwrap();
    tx.commit().await.unwrap();
    let decision = reconcile(tenant.id).await;
    assert_eq!(decision.actions, [Action::DeleteService { service: service.clone() }, Action::DeleteSilo]);
    assert!(ecs.observe(&service).await.unwrap().is_none());
    assert_eq!(scaling_of(&config, &cluster, &service).await, None, "its scalable target is deregistered");
    assert!(policies_of(&config, &cluster, &service).await.is_empty());
    assert!(clusters.observe(&on("enterprise_plus")).await.unwrap().is_none());
    let identifier = cluster_identifier(&on("enterprise_plus"));
    let rds = aws_sdk_rds::Client::new(&config);
    let writer = state.writer.unwrap();
    assert!(rds.describe_db_instances().db_instance_identifier(&writer).send().await.is_err(), "writer deleted");
    let snapshots = rds.describe_db_cluster_snapshots().db_cluster_identifier(&identifier).send().await.unwrap();
    assert!(
        snapshots
            .db_cluster_snapshots()
            .iter()
            .filter_map(|s| s.db_cluster_snapshot_identifier())
            .any(|name| name.starts_with(&format!("{identifier}-final-"))),
        "a final snapshot, as the plan asks"
    );
    let gone = get(tenant.id).await;
    assert_eq!((gone.status.phase, gone.status.placement), (Phase::Deleted, None));
    assert!(!server.schema_ready(&on_cluster).await.unwrap(), "the cluster's data went with it");
    indigo_e2e::cluster_logins::assert_gone(&config, &login).await;
}

/// The master login RDS keeps for `cluster`, read back as any AWS client would.
/// The range `service` is registered with in Application Auto Scaling, if it is.
async fn scaling_of(config: &aws_config::SdkConfig, cluster: &str, service: &str) -> Option<(i32, i32)> {
    let described = aws_sdk_applicationautoscaling::Client::new(config)
        .describe_scalable_targets()
        .service_namespace(ScalingNamespace::Ecs)
        .resource_ids(format!("service/{cluster}/{service}"))
        .send()
        .await
        .unwrap();
    described.scalable_targets().first().map(|t| (t.min_capacity(), t.max_capacity()))
}

/// `name: metric target [label]` of each scaling policy of `service`, sorted.
async fn policies_of(config: &aws_config::SdkConfig, cluster: &str, service: &str) -> Vec<String> {
    let described = aws_sdk_applicationautoscaling::Client::new(config)
        .describe_scaling_policies()
        .service_namespace(ScalingNamespace::Ecs)
        .resource_id(format!("service/{cluster}/{service}"))
        .send()
        .await
        .unwrap();
    let mut policies: Vec<String> = described
        .scaling_policies()
        .iter()
        .map(|p| {
            let tracking = p.target_tracking_scaling_policy_configuration().unwrap();
            let metric = tracking.predefined_metric_specification().unwrap();
            let label = metric.resource_label().map(|l| format!(" {l}")).unwrap_or_default();
            format!(
                "{}: {} {}{label}",
                p.policy_name(),
                metric.predefined_metric_type().as_str(),
                tracking.target_value()
            )
        })
        .collect();
    policies.sort();
    policies
}

/// Autoscaling (reference design §1): the pool's service is a scalable target
/// with its policy's range, tracked on CPU and, behind its target group, on
/// requests per task. Autoscaling moving the count inside the range is no
/// drift; a policy removed or the range changed by hand is; a bigger pool
/// moves the range; deleting the service deregisters it.
#[sqlx::test(migrator = "db::MIGRATOR")]
async fn the_data_plane_autoscales_in_its_range_and_hand_changes_are_repaired(db: PgPool) {
    let config = indigo_e2e::moto().await;
    let cluster = format!("indigo-test-{}", uuid::Uuid::new_v4().simple());
    let label = "app/indigo-lb/50dc6c495c0c9188/targetgroup/indigo-pool/73e2d6bc24d8a067";
    let services = EcsServices::new(&config, &cluster, task_settings("ghcr.io/indigo/dataplane:1.0"), None, db)
        .with_pool_target_group(Some(label.into()));
    let spec = ServiceSpec::pool(&PoolSize { dataplane_replicas: 2, dataplane_max_replicas: 8 });
    let observe = async || services.observe_service(POOL_SERVICE).await.unwrap().unwrap();

    services.ensure(&spec).await.unwrap();
    assert_eq!(scaling_of(&config, &cluster, POOL_SERVICE).await, Some((2, 8)));
    let wanted_policies = [
        "indigo-cpu: ECSServiceAverageCPUUtilization 70".to_owned(),
        format!("indigo-requests: ALBRequestCountPerTarget 1000 {label}"),
    ];
    assert_eq!(policies_of(&config, &cluster, POOL_SERVICE).await, wanted_policies);
    assert_eq!(observe().await.autoscaling, Autoscaling::Range { min: 2, max: 8 });
    assert!(spec.satisfied_by(&observe().await));

    // Autoscaling took it to 5 tasks: inside the range, as wanted.
    let ecs = aws_sdk_ecs::Client::new(&config);
    ecs.update_service().cluster(&cluster).service(POOL_SERVICE).desired_count(5).send().await.unwrap();
    assert!(spec.satisfied_by(&observe().await));

    // By hand: a policy deleted, then the range narrowed. Each is drift; ensure puts it back.
    let autoscaling = aws_sdk_applicationautoscaling::Client::new(&config);
    let resource = format!("service/{cluster}/{POOL_SERVICE}");
    autoscaling
        .delete_scaling_policy()
        .policy_name("indigo-requests")
        .service_namespace(ScalingNamespace::Ecs)
        .scalable_dimension(ScalableDimension::EcsServiceDesiredCount)
        .resource_id(&resource)
        .send()
        .await
        .unwrap();
    assert_eq!(observe().await.autoscaling, Autoscaling::Broken);
    assert!(!spec.satisfied_by(&observe().await));
    services.ensure(&spec).await.unwrap();
    assert_eq!(policies_of(&config, &cluster, POOL_SERVICE).await, wanted_policies);
    autoscaling
        .register_scalable_target()
        .service_namespace(ScalingNamespace::Ecs)
        .scalable_dimension(ScalableDimension::EcsServiceDesiredCount)
        .resource_id(&resource)
        .min_capacity(1)
        .max_capacity(2)
        .send()
        .await
        .unwrap();
    assert!(!spec.satisfied_by(&observe().await));
    services.ensure(&spec).await.unwrap();
    assert_eq!(scaling_of(&config, &cluster, POOL_SERVICE).await, Some((2, 8)));
    assert_eq!(observe().await.replicas, 5, "what autoscaling chose stays");

    // A bigger pool: the range moves, and the count with its floor.
    let bigger = ServiceSpec::pool(&PoolSize { dataplane_replicas: 6, dataplane_max_replicas: 10 });
    services.ensure(&bigger).await.unwrap();
    assert_eq!(scaling_of(&config, &cluster, POOL_SERVICE).await, Some((6, 10)));
    assert_eq!(observe().await.replicas, 6);

    // Deleted: deregistered, its policies with it.
    services.delete(POOL_SERVICE).await.unwrap();
    assert_eq!(scaling_of(&config, &cluster, POOL_SERVICE).await, None);
    assert!(policies_of(&config, &cluster, POOL_SERVICE).await.is_empty());
}

async fn rds_secret(config: &aws_config::SdkConfig, cluster: &str) -> serde_json::Value {
    let described =
        aws_sdk_rds::Client::new(config).describe_db_clusters().db_cluster_identifier(cluster).send().await.unwrap();
    let arn = described.db_clusters()[0].master_user_secret().unwrap().secret_arn().unwrap().to_owned();
    let value = aws_sdk_secretsmanager::Client::new(config).get_secret_value().secret_id(arn).send().await.unwrap();
    serde_json::from_str(value.secret_string().unwrap()).unwrap()
}

/// `GET /v1/routing` as the data plane asks for it.
async fn routing_table(pool: &PgPool, ecs_cluster: &str) -> serde_json::Value {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let overrides = Overrides {
        admin_token: Some("routing-test-token".into()),
        pool_database: Some("indigo_aws_routing_pool".into()),
        aws_cluster_stand_in: Some(indigo_e2e::server_url()),
        aws_ecs_cluster: Some(ecs_cluster.into()),
        ..Overrides::default()
    };
    let router = crate::support::control_plane(pool.clone(), overrides).await.router();
    let request = axum::http::Request::get("/v1/routing")
        .header("authorization", "Bearer routing-test-token")
        .body(axum::body::Body::empty())
        .unwrap();
    let response = router.oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap()
}

/// Two subnets of moto's default VPC, asked of its EC2 API directly (the
/// product has no EC2 client: its load balancer and subnets are the deployment's).
async fn default_subnets() -> Vec<String> {
    let answer = reqwest::Client::new()
        .post(indigo_e2e::moto_url())
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=test/20261204/us-east-1/ec2/aws4_request, SignedHeaders=host, Signature=0",
        )
        .header("content-type", "application/x-www-form-urlencoded")
        .body("Action=DescribeSubnets&Version=2016-11-15")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let subnets: Vec<String> = answer
        .split("<subnetId>")
        .skip(1)
        .filter_map(|rest| rest.split("</subnetId>").next().map(str::to_owned))
        .take(2)
        .collect();
    assert_eq!(subnets.len(), 2, "moto's default VPC has a subnet per zone: {answer}");
    subnets
}

/// With the storefront's load balancer configured, a silo tenant's service
/// gets a target group of its own (port 8081, health check `/readyz`), a rule
/// sending `<slug>.<domain>` to it, its tasks registered there, and
/// autoscaling on requests per task besides CPU (the policy naming that
/// target group). A rule or policy removed by hand is put back; deleting the
/// service removes its rule and target group.
#[sqlx::test(migrator = "db::MIGRATOR")]
async fn silo_services_sit_behind_the_storefront_load_balancer_and_scale_on_requests(db: PgPool) {
    use aws_sdk_elasticloadbalancingv2::types::{Action, ActionTypeEnum, FixedResponseActionConfig, ProtocolEnum};
    use indigo_controlplane::providers::aws::balancer::StorefrontBalancer;

    let config = indigo_e2e::moto().await;
    let elb = aws_sdk_elasticloadbalancingv2::Client::new(&config);
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..12];
    let balancer = elb
        .create_load_balancer()
        .name(format!("storefront-{suffix}"))
        .set_subnets(Some(default_subnets().await))
        .send()
        .await
        .unwrap();
    let balancer_arn = balancer.load_balancers()[0].load_balancer_arn().unwrap().to_owned();
    let not_found = FixedResponseActionConfig::builder().status_code("404").build();
    let listener = elb
        .create_listener()
        .load_balancer_arn(&balancer_arn)
        .protocol(ProtocolEnum::Http)
        .port(80)
        .default_actions(
            Action::builder().r#type(ActionTypeEnum::FixedResponse).fixed_response_config(not_found).build(),
        )
        .send()
        .await
        .unwrap();
    let listener_arn = listener.listeners()[0].listener_arn().unwrap().to_owned();

    let cluster = format!("indigo-test-{suffix}");
    let services = EcsServices::new(&config, &cluster, task_settings("ghcr.io/indigo/dataplane:1.0"), None, db.clone())
        .with_storefront_balancer(Some(StorefrontBalancer::new(&config, &listener_arn, "shop.example.com")));
    let plans = plans();
    let enterprise = plans.get("enterprise").unwrap();
    let mut tx = db.begin().await.unwrap();
    let new = NewTenant {
        slug: Slug::parse("far-corp").unwrap(),
        name: TenantName::parse("Far Corp").unwrap(),
        owner_email: Email::parse("o@far.example").unwrap(),
        plan: enterprise,
        lifecycle: Lifecycle::Active,
    };
    let registered = registry::create(&mut tx, &Actor::system("test"), None, new).await.unwrap();
    tx.commit().await.unwrap();
    let spec = ServiceSpec::silo(&SiloTenant { id: registered.id, slug: &registered.slug, plan: enterprise }).unwrap();
    let name = spec.name.clone();
    services.ensure(&spec).await.unwrap();

    // Its target group, and the rule that sends its host there.
    let groups = elb.describe_target_groups().load_balancer_arn(&balancer_arn).send().await.unwrap();
    let ours: Vec<_> =
        groups.target_groups().iter().filter(|g| g.target_group_name().unwrap().starts_with("indigo-")).collect();
    assert_eq!(ours.len(), 1, "{groups:?}");
    let group = ours[0];
    let group_arn = group.target_group_arn().unwrap().to_owned();
    assert_eq!((group.port(), group.health_check_path()), (Some(8081), Some("/readyz")));
    let rule_to_us = async || {
        let rules = elb.describe_rules().listener_arn(&listener_arn).send().await.unwrap();
        rules
            .rules()
            .iter()
            .find(|r| r.actions().iter().any(|a| a.target_group_arn() == Some(&group_arn)))
            .map(|r| (r.rule_arn().unwrap().to_owned(), r.conditions()[0].values().to_vec()))
    };
    let (rule, hosts) = rule_to_us().await.expect("a rule forwards to the tenant's target group");
    assert_eq!(hosts, ["far-corp.shop.example.com"]);
    // Its tasks are registered there, and scale on requests per task too.
    let ecs = aws_sdk_ecs::Client::new(&config);
    let described = ecs.describe_services().cluster(&cluster).services(&name).send().await.unwrap();
    let registered_in: Vec<_> =
        described.services()[0].load_balancers().iter().filter_map(|b| b.target_group_arn()).collect();
    assert_eq!(registered_in, [group_arn.as_str()]);
    let balancer_label = balancer_arn.split_once(":loadbalancer/").unwrap().1;
    let group_label = group_arn.split_once(":targetgroup/").unwrap().1;
    let wanted_policies = [
        "indigo-cpu: ECSServiceAverageCPUUtilization 70".to_owned(),
        format!("indigo-requests: ALBRequestCountPerTarget 1000 {balancer_label}/targetgroup/{group_label}"),
    ];
    assert_eq!(policies_of(&config, &cluster, &name).await, wanted_policies);
    let observe = async || services.observe_service(&name).await.unwrap().unwrap();
    assert!(spec.satisfied_by(&observe().await));

    // By hand: the rule deleted, the requests policy deleted. Both put back.
    elb.delete_rule().rule_arn(&rule).send().await.unwrap();
    aws_sdk_applicationautoscaling::Client::new(&config)
        .delete_scaling_policy()
        .policy_name("indigo-requests")
        .service_namespace(ScalingNamespace::Ecs)
        .scalable_dimension(ScalableDimension::EcsServiceDesiredCount)
        .resource_id(format!("service/{cluster}/{name}"))
        .send()
        .await
        .unwrap();
    assert_eq!(observe().await.autoscaling, Autoscaling::Broken);
    services.ensure(&spec).await.unwrap();
    assert_eq!(rule_to_us().await.map(|(_, hosts)| hosts), Some(vec!["far-corp.shop.example.com".to_owned()]));
    assert_eq!(policies_of(&config, &cluster, &name).await, wanted_policies);
    services.ensure(&spec).await.unwrap();
    let rules = elb.describe_rules().listener_arn(&listener_arn).send().await.unwrap();
    assert_eq!(rules.rules().iter().filter(|r| !r.is_default().unwrap_or(false)).count(), 1, "ensure is idempotent");

    // Deleted: its rule and target group go with it.
    services.delete(&name).await.unwrap();
    assert_eq!(rule_to_us().await, None);
    let left = elb.describe_target_groups().target_group_arns(&group_arn).send().await;
    assert!(left.map(|l| l.target_groups().is_empty()).unwrap_or(true), "the target group is deleted");
    elb.delete_listener().listener_arn(&listener_arn).send().await.unwrap();
    elb.delete_load_balancer().load_balancer_arn(&balancer_arn).send().await.unwrap();
}
