//! Onboarding and offboarding as durable workflows, through the admin API's
//! real router, against real PostgreSQL and the Stripe test double: every step
//! once, every permanent failure undone, retries, cancel, and two engines
//! sharing one database.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use indigo_controlplane::api::AppState;
use indigo_controlplane::billing::METERS;
use indigo_controlplane::config::Overrides;
use indigo_controlplane::control_plane::ControlPlane;
use indigo_controlplane::db;
use indigo_controlplane::providers::aws::AwsDatabases;
use indigo_controlplane::providers::local::{LocalDatabases, silo_database};
use indigo_controlplane::workflow::StepName;
use indigo_controlplane::workflow::export;
use indigo_controlplane::workflow::{Definition, Engine, Failpoints, Services, engine, onboarding::Onboarding};
use indigo_core::tenant::{Slug, TenantId};
use indigo_stripe_emulator::StripeEmulator;
use indigo_tenantdb::stand_in_database;
use serde_json::{Value, json};
use sqlx::{ConnectOptions, PgPool};
use tower::ServiceExt;

use crate::support;

const ADMIN: &str = "test-bootstrap-admin-token";

struct World {
    router: Router,
    control_plane: ControlPlane,
    state: AppState,
    db: PgPool,
    stripe: StripeEmulator,
    data_dir: std::path::PathBuf,
    exports: std::path::PathBuf,
}

impl World {
    async fn new(db: PgPool) -> Self {
        Self::with(db, Overrides::default()).await
    }

    /// A world whose configuration also has what `extra` sets.
    async fn with(db: PgPool, extra: Overrides) -> Self {
        let stripe = StripeEmulator::start().await.unwrap();
        let data_dir = std::env::temp_dir().join(format!("indigo-wf-{}", uuid::Uuid::new_v4().simple()));
        let overrides = Overrides {
            admin_token: Some(ADMIN.into()),
            pool_database: Some(format!("indigo_wf_pool_{}", uuid::Uuid::new_v4().simple())),
            stripe_api_base: Some(stripe.url.clone()),
            stripe_secret_key: Some("sk_test_double".into()),
            data_dir: Some(data_dir.clone()),
            ..extra
        };
        let control_plane = support::control_plane(db.clone(), overrides).await;
        Self {
            router: control_plane.router(),
            state: control_plane.state.clone(),
            control_plane,
            db,
            stripe,
            exports: data_dir.join("exports"),
            data_dir,
        }
    }

    /// The engine's services, with `failpoints` and quick retries.
    fn services(&self, failpoints: &str) -> Services<LocalDatabases> {
        let databases = LocalDatabases::new(self.state.tenant_dbs.clone());
        let mut services = self.control_plane.workflow_services(databases).unwrap();
        services.failpoints = Failpoints::parse(failpoints).unwrap();
        services.settings.backoff_base = Duration::from_millis(10);
        services
    }

    async fn call(&self, method: Method, path: &str, key: Option<&str>, body: Option<Value>) -> (StatusCode, Value) {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        let body = body.map(|b| Body::from(b.to_string())).unwrap_or_else(Body::empty);
        let response = self.router.clone().oneshot(request.body(body).unwrap()).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    async fn create(&self, slug: &str, plan: &str) -> Value {
        let body = json!({ "name": format!("Shop {slug}"), "slug": slug, "owner_email": format!("o@{slug}.example"), "plan": plan });
        let (status, tenant) =
            self.call(Method::POST, "/v1/tenants", Some(&format!("create-{slug}")), Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{tenant}");
        tenant
    }

    async fn delete(&self, slug: &str) -> Value {
        let (status, tenant) =
            self.call(Method::DELETE, &format!("/v1/tenants/{slug}"), Some(&format!("delete-{slug}")), None).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{tenant}");
        tenant
    }

    async fn tenant(&self, slug: &str) -> Value {
        self.call(Method::GET, &format!("/v1/tenants/{slug}"), None, None).await.1
    }

    async fn workflows(&self, slug: &str) -> Vec<Value> {
        let (status, list) = self.call(Method::GET, &format!("/v1/workflows?tenant={slug}"), None, None).await;
        assert_eq!(status, StatusCode::OK, "{list}");
        list.as_array().unwrap().clone()
    }

    async fn count(&self, sql: &str, tenant: &Value) -> i64 {
        let id: uuid::Uuid = tenant["id"].as_str().unwrap().parse().unwrap();
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned())).bind(id).fetch_one(&self.db).await.unwrap()
    }

    /// Counts rows of `table` in `database` that `tenant` can see under RLS.
    async fn rows_in(&self, database: &str, table: &str, tenant: &Value) -> i64 {
        let server = &self.state.tenant_dbs.server;
        let mut conn = server.owner_options(database).connect().await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "BEGIN; SELECT set_config('app.current_tenant', '{}', true)",
            tenant["id"].as_str().unwrap()
        )))
        .execute(&mut conn)
        .await
        .unwrap();
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
            .fetch_one(&mut conn)
            .await
            .unwrap()
    }

    async fn database_exists(&self, name: &str) -> bool {
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&self.db)
            .await
            .unwrap()
    }

    fn silo_of(tenant: &Value) -> String {
        let slug = Slug::parse(tenant["slug"].as_str().unwrap()).unwrap();
        let id = TenantId(tenant["id"].as_str().unwrap().parse().unwrap());
        silo_database(id, &slug)
    }

    async fn cleanup(self) {
        let tenants: Vec<Value> = sqlx::query_scalar("SELECT jsonb_build_object('id', id, 'slug', slug) FROM tenants")
            .fetch_all(&self.db)
            .await
            .unwrap();
        let server = &self.state.tenant_dbs.server;
        for tenant in tenants {
            server.drop_database(&Self::silo_of(&tenant)).await.unwrap();
        }
        server.drop_database(&self.state.tenant_dbs.pool_database).await.unwrap();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

fn step_states(workflow: &Value) -> Vec<(String, String)> {
    workflow["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap().to_owned(), s["state"].as_str().unwrap().to_owned()))
        .collect()
}

#[sqlx::test(migrator = "db::MIGRATOR")]
async fn onboarding_sets_up_every_part_once(pool: PgPool) {
    let world = World::new(pool).await;
    let created = world.create("acme-shoes", "growth").await;
    assert_eq!(created["spec"]["lifecycle"], "pending", "recorded pending, not serving yet");

    let started = std::time::Instant::now();
    engine::run_until_idle(&world.services("")).await.unwrap();
    eprintln!("onboarding took {:?}", started.elapsed());

    let tenant = world.tenant("acme-shoes").await;
    assert_eq!(tenant["spec"]["lifecycle"], "active");
    assert_eq!(tenant["status"]["phase"], "ready");
    let pool_database = world.state.tenant_dbs.pool_database.clone();
    assert_eq!(tenant["status"]["placement"]["database"], pool_database.as_str());

    let workflows = world.workflows("acme-shoes").await;
    assert_eq!(workflows.len(), 1);
    assert_eq!(workflows[0]["state"], "succeeded");
    let expected: Vec<(String, String)> =
        Onboarding::STAGES.iter().flat_map(|s| s.iter()).map(|s| (s.to_string(), "succeeded".to_owned())).collect();
    assert_eq!(step_states(&workflows[0]), expected);

    // Billing: one customer tagged with the tenant, one active subscription on the plan's price.
    let id = tenant["id"].as_str().unwrap();
    let customers = world.stripe.live_customers(Some(id));
    assert_eq!(customers.len(), 1);
    assert_eq!(customers[0]["email"], "o@acme-shoes.example");
    let subscriptions = world.stripe.subscriptions_of(customers[0]["id"].as_str().unwrap());
    assert_eq!(subscriptions.len(), 1);
    assert_eq!(subscriptions[0]["status"], "active");
    let price = &subscriptions[0]["items"]["data"][0]["price"];
    assert_eq!(
        (price["lookup_key"].as_str(), price["unit_amount"].as_i64()),
        (Some("indigo_growth_9900_usd"), Some(9900))
    );
    let mut meters: Vec<String> =
        world.stripe.meters().iter().map(|m| m["event_name"].as_str().unwrap().to_owned()).collect();
    meters.sort();
    assert_eq!(meters, ["indigo_ai_credits", "indigo_api_calls"], "the usage meters exist, once each");
    for request in world.stripe.received().iter().filter(|r| r.method != "GET") {
        assert!(request.idempotency_key.is_some(), "{} {} without an idempotency key", request.method, request.path);
    }

    // Search settings and the sample product, in the pool under the tenant's RLS.
    assert_eq!(world.rows_in(&pool_database, "search_settings", &tenant).await, 1);
    assert_eq!(world.rows_in(&pool_database, "products", &tenant).await, 1);
    assert_eq!(world.count("SELECT count(*) FROM outbox_emails WHERE tenant_id = $1", &tenant).await, 1);
    assert_eq!(
        world.count("SELECT count(*) FROM events WHERE tenant_id = $1 AND kind = 'TenantCreated'", &tenant).await,
        1
    );

    // A second tenant on the same plan reuses the product and the prices: the plan's, and a usage
    // price per meter (metered, at zero), each subscription holding all of them.
    world.create("blue-bakery", "growth").await;
    engine::run_until_idle(&world.services("")).await.unwrap();
    assert_eq!(world.stripe.prices().len(), 1 + METERS.len());
    for subscription in world.stripe.all_subscriptions() {
        let items = subscription["items"]["data"].as_array().unwrap();
        let metered = items.iter().filter(|i| i["price"]["recurring"]["usage_type"] == "metered").count();
        assert_eq!((items.len(), metered), (1 + METERS.len(), METERS.len()), "{subscription}");
        let unit_prices: Vec<&Value> = items
            .iter()
            .filter(|i| i["price"]["recurring"]["usage_type"] == "metered")
            .map(|i| &i["price"]["unit_amount_decimal"])
            .collect();
        assert!(unit_prices.iter().all(|p| **p == "0"), "as plans.toml prices usage: {unit_prices:?}");
    }
    assert_eq!(world.stripe.live_customers(None).len(), 2);
    world.cleanup().await;
}

#[sqlx::test(migrator = "db::MIGRATOR")]
async fn a_silo_tenant_gets_its_own_database_and_offboarding_drops_it(pool: PgPool) {
    let world = World::new(pool).await;
    let tenant = world.create("big-corp", "enterprise").await;
    engine::run_until_idle(&world.services("")).await.unwrap();
    let silo = World::silo_of(&tenant);
    assert_eq!(world.tenant("big-corp").await["status"]["placement"]["database"], silo.as_str());
    assert_eq!(world.rows_in(&silo, "products", &tenant).await, 1, "the sample product is in the silo");
    assert_eq!(world.rows_in(&world.state.tenant_dbs.pool_database, "products", &tenant).await, 0);

    world.delete("big-corp").await;
    engine::run_until_idle(&world.services("")).await.unwrap();
    assert!(!world.database_exists(&silo).await, "the silo is dropped");
    let gone = world.tenant("big-corp").await;
    assert_eq!(
        (gone["spec"]["lifecycle"].as_str(), gone["status"]["phase"].as_str()),
        (Some("deleted"), Some("deleted"))
    );
    world.cleanup().await;
}

#[sqlx::test(migrator = "db::MIGRATOR")]
async fn a_permanent_failure_at_any_step_undoes_everything_before_it(pool: PgPool) {
    let world = World::new(pool).await;
    let pool_database = world.state.tenant_dbs.pool_database.clone();
    for (n, step) in Onboarding::STAGES.iter().flat_map(|s| s.iter()).enumerate() {
        let slug = format!("fail-{n}-{}", step.name().replace('_', "-"));
        let tenant = world.create(&slug, "enterprise").await;
        engine::run_until_idle(&world.services(&format!("onboarding.{step}=fail"))).await.unwrap();

        let workflow = &world.workflows(&slug).await[0];
        assert_eq!(workflow["state"], "failed", "{step}: {workflow}");
        assert!(workflow["error"].as_str().unwrap().contains(&format!("step `{step}` failed")), "{workflow}");
        for (name, state) in step_states(workflow) {
            assert_eq!(state, "compensated", "{step}: every started step is undone, {name} too");
        }
        let after = world.tenant(&slug).await;
        assert_eq!(after["spec"]["lifecycle"], "pending", "{step}");
        assert_eq!(after["status"]["phase"], "failed", "{step}");
        assert!(after["status"]["conditions"][0]["message"].as_str().unwrap().contains(step.name()), "{after}");
        assert!(after["status"]["placement"].is_null(), "{step}");

        // Nothing left behind: no customer, no database, no rows, no unsent mail.
        let id = tenant["id"].as_str().unwrap();
        assert!(world.stripe.live_customers(Some(id)).is_empty(), "{step}: a Stripe customer is left");
        assert_eq!(world.count("SELECT count(*) FROM tenant_billing WHERE tenant_id = $1", &tenant).await, 0);
        assert!(!world.database_exists(&World::silo_of(&tenant)).await, "{step}: the silo is left");
        assert_eq!(world.rows_in(&pool_database, "products", &tenant).await, 0);
        assert_eq!(
            world.count("SELECT count(*) FROM outbox_emails WHERE tenant_id = $1 AND sent_at IS NULL", &tenant).await,
            0,
            "{step}: the welcome email is still queued"
        );
    }
    world.cleanup().await;
}

#[sqlx::test(migrator = "db::MIGRATOR")]
async fn transient_failures_are_retried_with_backoff(pool: PgPool) {
    let world = World::new(pool).await;
    let tenant = world.create("flaky", "starter").await;
    engine::run_until_idle(&world.services("onboarding.billing=transient:2")).await.unwrap();
    let workflow = &world.workflows("flaky").await[0];
    assert_eq!(workflow["state"], "succeeded");
    let billing = workflow["steps"].as_array().unwrap().iter().find(|s| s["name"] == "billing").unwrap();
    assert_eq!(billing["attempts"], 3);
    assert_eq!(
        world
            .count("SELECT count(*) FROM events WHERE tenant_id = $1 AND kind = 'WorkflowStepRetrying'", &tenant)
            .await,
        2
    );
    assert_eq!(world.stripe.live_customers(Some(tenant["id"].as_str().unwrap())).len(), 1);

    // Stripe down for good: the step gives up after the attempt limit and everything is undone.
    world.stripe.fail("/v1/customers", 503);
    let other = world.create("unlucky", "starter").await;
    let mut services = world.services("");
    services.settings.max_attempts = 3;
    engine::run_until_idle(&services).await.unwrap();
    let workflow = &world.workflows("unlucky").await[0];
    assert_eq!(workflow["state"], "failed");
    assert!(workflow["error"].as_str().unwrap().contains("gave up after 3 attempts"), "{workflow}");
    assert_eq!(world.tenant("unlucky").await["status"]["phase"], "failed");
    assert_eq!(world.rows_in(&world.state.tenant_dbs.pool_database, "products", &other).await, 0);
    world.cleanup().await;
}

#[sqlx::test(migrator = "db::MIGRATOR")]
async fn cancel_undoes_and_retry_runs_again(pool: PgPool) {
    let world = World::new(pool).await;
    let tenant = world.create("changed-mind", "starter").await;
    let id = world.workflows("changed-mind").await[0]["id"].as_str().unwrap().to_owned();

    let (status, cancelled) = world.call(Method::POST, &format!("/v1/workflows/{id}/cancel"), Some("c1"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{cancelled}");
    assert_eq!(cancelled["cancel_requested"], true);
    engine::run_until_idle(&world.services("")).await.unwrap();
    let workflow = world.call(Method::GET, &format!("/v1/workflows/{id}"), None, None).await.1;
    assert_eq!(workflow["state"], "cancelled");
    assert_eq!(world.tenant("changed-mind").await["status"]["phase"], "failed");

    let (status, wrong) = world.call(Method::POST, &format!("/v1/workflows/{id}/cancel"), Some("c2"), None).await;
    assert_eq!((status, wrong["code"].as_str()), (StatusCode::ACCEPTED, None), "cancelling twice changes nothing");

    let (status, retried) = world.call(Method::POST, &format!("/v1/workflows/{id}/retry"), Some("r1"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{retried}");
    assert_eq!((retried["state"].as_str(), retried["attempt"].as_i64()), (Some("running"), Some(2)));
    engine::run_until_idle(&world.services("")).await.unwrap();
    assert_eq!(world.tenant("changed-mind").await["spec"]["lifecycle"], "active");
    assert_eq!(world.stripe.live_customers(Some(tenant["id"].as_str().unwrap())).len(), 1);

    let (status, again) = world.call(Method::POST, &format!("/v1/workflows/{id}/retry"), Some("r2"), None).await;
    assert_eq!((status, again["code"].as_str()), (StatusCode::CONFLICT, Some("workflow_state")));
    let (status, missing) = world.call(Method::GET, "/v1/workflows/not-a-uuid", None, None).await;
    assert_eq!((status, missing["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
    let (status, bad) = world.call(Method::GET, "/v1/workflows?state=sleeping", None, None).await;
    assert_eq!((status, bad["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_query")));
    world.cleanup().await;
}

/// Writes a small catalogue and an order for `tenant` in `database`.
async fn shop_data(world: &World, database: &str, tenant: &Value, products: usize) {
    let server = &world.state.tenant_dbs.server;
    let mut conn = server.owner_options(database).connect().await.unwrap();
    let id = tenant["id"].as_str().unwrap();
    let mut script = format!("BEGIN; SELECT set_config('app.current_tenant', '{id}', true);");
    for n in 0..products {
        script.push_str(&format!(
            "INSERT INTO products (tenant_id, id, name, price_minor, currency, stock) VALUES ('{id}', gen_random_uuid(), 'Product {n}', {}, 'usd', 5);",
            100 + n
        ));
    }
    let customer = uuid::Uuid::new_v4();
    script.push_str(&format!(
        "INSERT INTO customers (tenant_id, id, email, name) VALUES ('{id}', '{customer}', 'c@x.example', 'C');
         INSERT INTO orders (tenant_id, id, customer_id, total_minor, currency) VALUES ('{id}', gen_random_uuid(), '{customer}', 100, 'usd');
         COMMIT;"
    ));
    sqlx::raw_sql(sqlx::AssertSqlSafe(script)).execute(&mut conn).await.unwrap();
}

#[sqlx::test(migrator = "db::MIGRATOR")]
async fn offboarding_exports_cancels_billing_deletes_and_certifies(pool: PgPool) {
    let world = World::new(pool).await;
    let pool_database = world.state.tenant_dbs.pool_database.clone();
    let leaving = world.create("leaving", "pro").await;
    let staying = world.create("staying", "pro").await;
    engine::run_until_idle(&world.services("")).await.unwrap();
    shop_data(&world, &pool_database, &leaving, 3).await;
    shop_data(&world, &pool_database, &staying, 2).await;

    world.delete("leaving").await;
    engine::run_until_idle(&world.services("")).await.unwrap();
    let workflow = world.workflows("leaving").await.into_iter().find(|w| w["kind"] == "offboarding").unwrap();
    assert_eq!(workflow["state"], "succeeded", "{workflow}");

    // The bundle: what the tenant had, checksums that verify.
    let export_step = workflow["steps"].as_array().unwrap().iter().find(|s| s["name"] == "export").unwrap();
    let path = std::path::PathBuf::from(export_step["output"]["path"].as_str().unwrap());
    let manifest = export::verify(&path).unwrap();
    let rows: std::collections::HashMap<String, u64> =
        manifest.tables.iter().map(|t| (t.table.clone(), t.rows)).collect();
    assert_eq!(rows["products"], 4, "three products and the sample");
    assert_eq!((rows["customers"], rows["orders"], rows["search_settings"]), (1, 1, 1));
    // Customers' data: the bundle is its owner's alone.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o700);
    for file in std::fs::read_dir(&path).unwrap() {
        let file = file.unwrap().path();
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
    let products = std::fs::read_to_string(path.join("products.jsonl")).unwrap();
    assert!(products.contains("\"Product 2\"") && !products.contains(staying["id"].as_str().unwrap()));
    std::fs::write(path.join("orders.jsonl"), "tampered\n").unwrap();
    assert!(export::verify(&path).unwrap_err().contains("checksum"), "a changed file no longer verifies");

    // Gone from the pool; the other tenant untouched.
    for table in ["products", "customers", "orders", "search_settings"] {
        assert_eq!(world.rows_in(&pool_database, table, &leaving).await, 0, "{table}");
    }
    assert_eq!(world.rows_in(&pool_database, "products", &staying).await, 3);

    // Billing cancelled: the subscription and the customer.
    let id = leaving["id"].as_str().unwrap();
    assert!(world.stripe.live_customers(Some(id)).is_empty());
    assert!(
        world
            .stripe
            .all_subscriptions()
            .iter()
            .filter(|s| s["metadata"]["tenant_id"] == id)
            .all(|s| s["status"] == "canceled")
    );
    assert_eq!(world.stripe.live_customers(None).len(), 1);

    // The certificate names the export's checksums.
    let certificate: Value = sqlx::query_scalar(
        "SELECT after FROM audit_log WHERE tenant_id = $1 AND action = 'tenant.deletion_certificate'",
    )
    .bind(uuid::Uuid::parse_str(id).unwrap())
    .fetch_one(&world.db)
    .await
    .unwrap();
    let manifest_bytes = std::fs::read(path.join(export::MANIFEST)).unwrap();
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&manifest_bytes))
    };
    assert_eq!(certificate["export"]["manifest_sha256"], sha.as_str());
    assert_eq!(certificate["deleted"]["rows_deleted"], 7, "4 products, 1 customer, 1 order, 1 search setting");

    // Kept for hand-over until the time the certificate names, then removed, and that audited.
    let remove_after: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(certificate["export"]["remove_after"].clone()).unwrap();
    assert!(remove_after > chrono::Utc::now() + chrono::Duration::days(6), "a week by default: {remove_after}");
    assert_eq!(export::remove_expired(&world.db).await.unwrap(), 0, "not before its time");
    assert!(path.exists());
    let workflow_id = uuid::Uuid::parse_str(workflow["id"].as_str().unwrap()).unwrap();
    sqlx::query("UPDATE export_bundles SET remove_after = now() WHERE workflow_id = $1")
        .bind(workflow_id)
        .execute(&world.db)
        .await
        .unwrap();
    assert_eq!(export::remove_expired(&world.db).await.unwrap(), 1);
    assert!(!path.exists(), "the bundle is gone from disk");
    let removal: Value =
        sqlx::query_scalar("SELECT after FROM audit_log WHERE tenant_id = $1 AND action = 'tenant.export_removed'")
            .bind(uuid::Uuid::parse_str(id).unwrap())
            .fetch_one(&world.db)
            .await
            .unwrap();
    assert_eq!((&removal["manifest_sha256"], &removal["found"]), (&json!(sha), &json!(true)), "{removal}");
    assert_eq!(export::remove_expired(&world.db).await.unwrap(), 0, "removed once");

    // A second DELETE is a no-op.
    world.delete("leaving").await;
    assert_eq!(world.workflows("leaving").await.len(), 2, "onboarding and one offboarding");
    world.cleanup().await;
}

#[sqlx::test(migrator = "db::MIGRATOR")]
async fn offboarding_fails_safe_on_both_sides_of_its_point_of_no_return(pool: PgPool) {
    let world = World::new(pool).await;
    world.create("keeper", "starter").await;
    world.create("goner", "starter").await;
    engine::run_until_idle(&world.services("")).await.unwrap();

    // Before: undone, the tenant serves again, no bundle is left.
    world.delete("keeper").await;
    engine::run_until_idle(&world.services("offboarding.cancel_billing=fail,offboarding.export=fail")).await.unwrap();
    let workflow = world.workflows("keeper").await.into_iter().find(|w| w["kind"] == "offboarding").unwrap();
    assert_eq!(workflow["state"], "failed");
    assert_eq!(world.tenant("keeper").await["spec"]["lifecycle"], "active");
    assert!(!world.exports.exists() || std::fs::read_dir(&world.exports).unwrap().next().is_none());
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM export_bundles").fetch_one(&world.db).await.unwrap();
    assert_eq!(kept, 0, "an undone export is not on record either");

    // After: stopped where it stood, nothing undone; a retry finishes it.
    world.delete("goner").await;
    engine::run_until_idle(&world.services("offboarding.delete_data=fail")).await.unwrap();
    let workflow = world.workflows("goner").await.into_iter().find(|w| w["kind"] == "offboarding").unwrap();
    assert_eq!(workflow["state"], "failed");
    let states = step_states(&workflow);
    assert!(states.contains(&("cancel_billing".into(), "succeeded".into())), "{states:?}");
    let id = workflow["id"].as_str().unwrap();
    let (status, cancel) = world.call(Method::POST, &format!("/v1/workflows/{id}/cancel"), Some("c"), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{cancel}");
    let (status, _) = world.call(Method::POST, &format!("/v1/workflows/{id}/retry"), Some("r"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    engine::run_until_idle(&world.services("")).await.unwrap();
    assert_eq!(world.tenant("goner").await["status"]["phase"], "deleted");
    let customers_deleted = world.stripe.deleted_customers().len();
    assert_eq!(customers_deleted, 1, "billing was cancelled once, not again on retry");
    world.cleanup().await;
}

#[sqlx::test(migrator = "db::MIGRATOR")]
async fn two_engines_on_one_database_run_each_workflow_once(pool: PgPool) {
    let world = World::new(pool).await;
    let slugs: Vec<String> = (0..6).map(|n| format!("shared-{n}")).collect();
    let engines: Vec<Engine<LocalDatabases>> = (0..2).map(|_| Engine::new(world.services(""))).collect();
    let tasks: Vec<_> = engines.iter().map(Engine::spawn).collect();
    for slug in &slugs {
        world.create(slug, "starter").await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let done: i64 = sqlx::query_scalar("SELECT count(*) FROM workflows WHERE state = 'succeeded'")
            .fetch_one(&world.db)
            .await
            .unwrap();
        if done == 6 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "only {done} of 6 onboardings finished");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for task in tasks {
        task.abort();
    }
    let runs: Option<i32> =
        sqlx::query_scalar("SELECT max(attempts) FROM workflow_steps").fetch_one(&world.db).await.unwrap();
    assert_eq!(runs, Some(1), "no step ran twice");
    assert_eq!(world.stripe.live_customers(None).len(), 6);
    let created: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE kind = 'TenantCreated'")
        .fetch_one(&world.db)
        .await
        .unwrap();
    assert_eq!(created, 6);
    let emails: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox_emails").fetch_one(&world.db).await.unwrap();
    assert_eq!(emails, 6);
    world.cleanup().await;
}

#[sqlx::test(migrator = "db::MIGRATOR")]
async fn each_offboarding_step_failing_is_undone_or_resumable(pool: PgPool) {
    use indigo_controlplane::workflow::offboarding::Offboarding;
    let world = World::new(pool).await;
    let steps: Vec<&str> = Offboarding::STAGES.iter().flat_map(|s| s.iter().map(|step| step.name())).collect();
    let pivot = steps.iter().position(|s| Some(*s) == Offboarding::POINT_OF_NO_RETURN.map(|p| p.name())).unwrap();
    for (n, step) in steps.iter().enumerate() {
        let slug = format!("off-fail-{n}");
        world.create(&slug, "starter").await;
        engine::run_until_idle(&world.services("")).await.unwrap();
        world.delete(&slug).await;
        engine::run_until_idle(&world.services(&format!("offboarding.{step}=fail"))).await.unwrap();
        let workflow = world.workflows(&slug).await.into_iter().find(|w| w["kind"] == "offboarding").unwrap();
        assert_eq!(workflow["state"], "failed", "{step}: {workflow}");
        let tenant = world.tenant(&slug).await;
        if n < pivot {
            assert_eq!(tenant["spec"]["lifecycle"], "active", "{step}: undone, the tenant serves again");
            assert_eq!(world.stripe.live_customers(Some(tenant["id"].as_str().unwrap())).len(), 1, "{step}");
        } else {
            assert_ne!(tenant["status"]["phase"], "deleted", "{step}: stopped before the end");
            let id = workflow["id"].as_str().unwrap();
            let (status, _) = world.call(Method::POST, &format!("/v1/workflows/{id}/retry"), Some(&slug), None).await;
            assert_eq!(status, StatusCode::ACCEPTED, "{step}");
            engine::run_until_idle(&world.services("")).await.unwrap();
            assert_eq!(world.tenant(&slug).await["status"]["phase"], "deleted", "{step}: the retry finished it");
        }
    }
    world.cleanup().await;
}

/// A minimal SMTP server that accepts one message and hands back its DATA.
async fn smtp_sink() -> (String, tokio::task::JoinHandle<String>) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        write.write_all(b"220 sink ready\r\n").await.unwrap();
        let mut data = String::new();
        let mut in_data = false;
        while let Some(line) = lines.next_line().await.unwrap() {
            if in_data {
                if line == "." {
                    in_data = false;
                    write.write_all(b"250 queued\r\n").await.unwrap();
                } else {
                    data.push_str(&line);
                    data.push('\n');
                }
                continue;
            }
            let reply: &[u8] = match line.split(' ').next().unwrap_or("") {
                "EHLO" => b"250-sink\r\n250 8BITMIME\r\n",
                "DATA" => {
                    in_data = true;
                    b"354 go ahead\r\n"
                }
                "QUIT" => {
                    write.write_all(b"221 bye\r\n").await.unwrap();
                    break;
                }
                _ => b"250 ok\r\n",
            };
            write.write_all(reply).await.unwrap();
        }
        data
    });
    (address, task)
}

#[sqlx::test(migrator = "db::MIGRATOR")]
async fn the_welcome_email_is_delivered_once_through_smtp(pool: PgPool) {
    use indigo_controlplane::outbox::{Mailer, send_batch};
    let world = World::new(pool).await;
    world.create("mailed", "starter").await;
    engine::run_until_idle(&world.services("")).await.unwrap();
    let (relay, sink) = smtp_sink().await;
    let mailer = Mailer::with_relay(Some(relay), "noreply@indigo.test".into());
    assert_eq!(send_batch(&world.db, &mailer).await.unwrap(), 1);
    let message = sink.await.unwrap();
    assert!(message.contains("To: <o@mailed.example>"), "{message}");
    assert!(message.contains("Subject: Welcome to Indigo, Shop mailed"), "{message}");
    assert_eq!(send_batch(&world.db, &mailer).await.unwrap(), 0, "sent once");
    let sent: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox_emails WHERE sent_at IS NOT NULL")
        .fetch_one(&world.db)
        .await
        .unwrap();
    assert_eq!(sent, 1);
    world.cleanup().await;
}

/// On AWS an enterprise tenant's data lives on its own Aurora cluster (here on
/// the stand-in server, the cluster's AWS side on moto): onboarding provisions
/// the schema there and seeds it; the routing table sends the data plane
/// there; offboarding exports from it, then deletes the cluster with its data.
/// (Moves onto a cluster and back: tests/tests/it/moves.rs.)
#[sqlx::test(migrator = "db::MIGRATOR")]
async fn an_enterprise_tenant_on_aws_lives_on_its_own_cluster_from_onboarding_to_offboarding(pool: PgPool) {
    let moto = indigo_e2e::moto().await;
    let stand_in = Overrides { aws_cluster_stand_in: Some(indigo_e2e::server_url()), ..Overrides::default() };
    let world = World::with(pool, stand_in).await;
    let services = world.services("").with_provider(AwsDatabases::new(&moto, world.state.tenant_dbs.clone()));
    let tenant = world.create("far-corp", "enterprise").await;
    engine::run_until_idle(&services).await.unwrap();
    let workflow = &world.workflows("far-corp").await[0];
    assert_eq!(workflow["state"], "succeeded", "{workflow}");
    let placement = world.tenant("far-corp").await["status"]["placement"].clone();
    let endpoint = placement["cluster"].as_str().expect("placed on its own cluster").to_owned();
    assert!(endpoint.contains(".cluster-"), "an Aurora endpoint: {endpoint}");
    let on_cluster = stand_in_database(&endpoint);
    assert_eq!(world.rows_in(&on_cluster, "products", &tenant).await, 1, "the sample product is on the cluster");
    assert_eq!(world.rows_in(&on_cluster, "search_settings", &tenant).await, 1);
    assert!(!world.database_exists(&World::silo_of(&tenant)).await, "no local silo database");
    let (_, routing) = world.call(Method::GET, "/v1/routing", None, None).await;
    let route = routing["routes"].as_array().unwrap().iter().find(|r| r["slug"] == "far-corp").unwrap().clone();
    let tenant_id = TenantId(tenant["id"].as_str().unwrap().parse().unwrap());
    let prefix = world.state.tenant_dbs.cluster_logins.clone().unwrap();
    let login = indigo_e2e::cluster_logins::assert_serving(&moto, &prefix, tenant_id, &on_cluster).await;
    assert_eq!(route["database_url"], format!("postgres://{}@127.0.0.1:5432/{on_cluster}", login.role));

    world.delete("far-corp").await;
    engine::run_until_idle(&services).await.unwrap();
    let offboarding = world.workflows("far-corp").await.into_iter().find(|w| w["kind"] == "offboarding").unwrap();
    assert_eq!(offboarding["state"], "succeeded", "{offboarding}");
    let export_step = offboarding["steps"].as_array().unwrap().iter().find(|s| s["name"] == "export").unwrap();
    let manifest = export::verify(std::path::Path::new(export_step["output"]["path"].as_str().unwrap())).unwrap();
    let exported: u64 = manifest.tables.iter().find(|t| t.table == "products").unwrap().rows;
    assert_eq!(exported, 1, "the export read the cluster");
    assert!(!world.database_exists(&on_cluster).await, "the cluster's data went with it");
    let clusters = aws_sdk_rds::Client::new(&moto);
    let identifier = endpoint.split('.').next().unwrap();
    assert!(clusters.describe_db_clusters().db_cluster_identifier(identifier).send().await.is_err(), "cluster deleted");
    indigo_e2e::cluster_logins::assert_gone(&moto, &login).await;
    world.cleanup().await;
}
