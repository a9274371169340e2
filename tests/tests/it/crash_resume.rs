//! Crash-resume with real processes. For every step of onboarding and
//! offboarding, `indigo serve` is made to die right after the step acted
//! (before its result is recorded) and right after its result is recorded; a
//! fresh daemon then finishes the workflow, and every effect happened exactly
//! once: one Stripe customer, one subscription, one welcome email, one
//! `TenantCreated`, one deletion certificate. Likewise the usage roll-up and
//! the billing sync, killed mid-way: no usage lost, none billed twice.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use indigo_controlplane::failpoints::CRASH_EXIT_CODE;
use indigo_controlplane::workflow::StepName;
use indigo_controlplane::workflow::export;
use indigo_controlplane::workflow::{Definition, offboarding::Offboarding, onboarding::Onboarding};
use indigo_core::tenant::TenantId;
use indigo_e2e::{Process, TestDatabase, free_port, wait_until_ok, workspace_binary};
use indigo_stripe_emulator::StripeEmulator;
use serde_json::{Value, json};

const ADMIN: &str = "crash-test-admin-token-0123456789";
const POINTS: [&str; 2] = ["crash-after-run", "crash-after-record"];

struct Platform {
    control: TestDatabase,
    pool: TestDatabase,
    stripe: StripeEmulator,
    data_dir: tempdir::Dir,
    http: reqwest::Client,
    /// On AWS (moto, clusters standing in on the test server): the test's own ECS cluster.
    aws: Option<String>,
}

mod tempdir {
    /// A directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);

    impl Dir {
        pub fn new() -> Self {
            let path = std::env::temp_dir().join(format!("indigo-crash-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir_all(&path).unwrap();
            Self(path)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A daemon and the URL of its admin API.
struct Daemon {
    process: Process,
    url: String,
}

impl Platform {
    async fn new() -> Self {
        let control = TestDatabase::unique("indigo_wf_control");
        let pool = TestDatabase::unique("indigo_wf_pool");
        indigo_controlplane::db::ensure_database(&control.url).await.unwrap();
        Self {
            control,
            pool,
            stripe: StripeEmulator::start().await.unwrap(),
            data_dir: tempdir::Dir::new(),
            http: reqwest::Client::new(),
            aws: None,
        }
    }

    async fn on_aws() -> Self {
        indigo_e2e::moto().await;
        let ecs_cluster = format!("indigo-crash-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        Self { aws: Some(ecs_cluster), ..Self::new().await }
    }

    async fn daemon(&self, failpoints: &str) -> Daemon {
        let port = free_port().unwrap();
        let mut command = Command::new(workspace_binary("indigo").unwrap());
        command
            .arg("serve")
            .env("INDIGO_DATABASE_URL", &self.control.url)
            .env("INDIGO_POOL_DATABASE", &self.pool.name)
            .env("INDIGO_LISTEN", format!("127.0.0.1:{port}"))
            .env("INDIGO_ADMIN_TOKEN", ADMIN)
            .env("INDIGO_DATA_DIR", &self.data_dir.0)
            .env("INDIGO_PLANS_FILE", concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/plans.toml"))
            .env("INDIGO_STRIPE_API_BASE", &self.stripe.url)
            .env("INDIGO_STRIPE_SECRET_KEY", "sk_test_double")
            .env("INDIGO_FAILPOINTS", failpoints)
            .env("RUST_LOG", "warn");
        let url = format!("http://127.0.0.1:{port}");
        if let Some(ecs_cluster) = &self.aws {
            indigo_e2e::on_aws_stand_in(&mut command, ecs_cluster, &url);
        }
        let process = Process::spawn(command).unwrap();
        wait_until_ok(&format!("{url}/healthz"), Duration::from_secs(30)).await.unwrap();
        Daemon { process, url }
    }

    async fn call(
        &self,
        daemon: &Daemon,
        method: reqwest::Method,
        path: &str,
        key: &str,
        body: Option<Value>,
    ) -> reqwest::Result<reqwest::Response> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", daemon.url))
            .bearer_auth(ADMIN)
            .header("idempotency-key", key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await
    }

    async fn get(&self, daemon: &Daemon, path: &str) -> Value {
        let response = self.http.get(format!("{}{path}", daemon.url)).bearer_auth(ADMIN).send().await.unwrap();
        response.json().await.unwrap()
    }

    /// Waits until the tenant's latest workflow of `kind` has succeeded.
    async fn wait_succeeded(&self, daemon: &Daemon, slug: &str, kind: &str) -> Value {
        for _ in 0..600 {
            let workflows = self.get(daemon, &format!("/v1/workflows?tenant={slug}&kind={kind}")).await;
            if let Some(workflow) = workflows.as_array().and_then(|w| w.first()) {
                match workflow["state"].as_str() {
                    Some("succeeded") => return workflow.clone(),
                    Some("failed" | "cancelled") => panic!("{kind} of {slug} ended {workflow}"),
                    _ => {}
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{kind} of {slug} did not finish");
    }

    async fn count(&self, sql: &str, tenant: &str) -> i64 {
        let pool = sqlx::PgPool::connect(&self.control.url).await.unwrap();
        let id: uuid::Uuid = tenant.parse().unwrap();
        let n = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned())).bind(id).fetch_one(&pool).await.unwrap();
        pool.close().await;
        n
    }

    /// Starts a daemon armed with `failpoint`, makes the request, and waits for the crash.
    async fn crash_during(&self, failpoint: &str, method: reqwest::Method, path: &str, key: &str, body: Option<Value>) {
        let mut daemon = self.daemon(failpoint).await;
        // The daemon may die before it answers; the request is committed either way.
        let _ = self.call(&daemon, method, path, key, body).await;
        let status = daemon.process.wait_exit(Duration::from_secs(60)).unwrap();
        assert_eq!(status.code(), Some(CRASH_EXIT_CODE), "{failpoint}: the daemon should have crashed there");
    }

    async fn cleanup(self) {
        let server = indigo_tenantdb::schema::TenantServer::new(&indigo_e2e::server_url()).unwrap();
        server.drop_database(&self.pool.name).await.unwrap();
        self.control.drop_now().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onboarding_resumes_after_a_crash_at_every_step_and_acts_once() {
    let platform = Platform::new().await;
    onboard_through_a_crash_at_every_step(&platform, "growth").await;
    platform.cleanup().await;
}

/// The same on AWS for enterprise tenants, each on its own Aurora cluster:
/// every crash still ends with one cluster, the one the tenant is placed on,
/// with its writer and its seeded schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_aws_onboarding_resumes_after_a_crash_at_every_step_onto_one_cluster() {
    let platform = Platform::on_aws().await;
    let rds = aws_sdk_rds::Client::new(&indigo_e2e::moto().await);
    let server = indigo_tenantdb::schema::TenantServer::new(&indigo_e2e::server_url()).unwrap();
    for (failpoint, tenant) in onboard_through_a_crash_at_every_step(&platform, "enterprise").await {
        let endpoint = tenant["status"]["placement"]["cluster"].as_str().expect("on its own cluster");
        let identifier = endpoint.split('.').next().unwrap();
        let clusters = rds.describe_db_clusters().db_cluster_identifier(identifier).send().await.unwrap();
        let [cluster] = clusters.db_clusters() else { panic!("{failpoint}: one cluster, not {clusters:?}") };
        assert_eq!(cluster.endpoint(), Some(endpoint), "{failpoint}");
        assert_eq!(cluster.db_cluster_members().len(), 1, "{failpoint}: one writer");
        let database = indigo_tenantdb::stand_in_database(endpoint);
        let id: uuid::Uuid = tenant["id"].as_str().unwrap().parse().unwrap();
        let products = indigo_e2e::stack::ids_in(&server, &database, "products", TenantId(id)).await.unwrap();
        assert_eq!(products.len(), 1, "{failpoint}: the sample product, once");
        server.drop_database(&database).await.unwrap();
    }
    platform.cleanup().await;
}

/// Onboards one tenant on `plan` per step and crash point, the daemon dying
/// there; checks that a fresh daemon finished it with every effect once.
/// Returns each failpoint with its tenant as finished.
async fn onboard_through_a_crash_at_every_step(platform: &Platform, plan: &str) -> Vec<(String, Value)> {
    let steps: Vec<&str> = Onboarding::STAGES.iter().flat_map(|s| s.iter().map(|step| step.name())).collect();
    let mut onboarded = Vec::new();
    for (n, step) in steps.iter().enumerate() {
        for (i, point) in POINTS.iter().enumerate() {
            let slug = format!("on-{n}-{i}");
            let body = json!({ "name": slug, "slug": slug, "owner_email": format!("o@{slug}.example"), "plan": plan });
            let failpoint = format!("onboarding.{step}={point}");
            platform.crash_during(&failpoint, reqwest::Method::POST, "/v1/tenants", &slug, Some(body)).await;

            let mut daemon = platform.daemon("").await;
            let workflow = platform.wait_succeeded(&daemon, &slug, "onboarding").await;
            let tenant = platform.get(&daemon, &format!("/v1/tenants/{slug}")).await;
            assert_eq!(tenant["spec"]["lifecycle"], "active", "{failpoint}");
            let id = tenant["id"].as_str().unwrap();

            assert_eq!(platform.stripe.customers_created(id), 1, "{failpoint}: one customer created");
            let customers = platform.stripe.live_customers(Some(id));
            assert_eq!(customers.len(), 1, "{failpoint}");
            let subscriptions = platform.stripe.subscriptions_of(customers[0]["id"].as_str().unwrap());
            assert_eq!(subscriptions.len(), 1, "{failpoint}: one subscription");
            assert_eq!(
                platform.count("SELECT count(*) FROM outbox_emails WHERE tenant_id = $1", id).await,
                1,
                "{failpoint}"
            );
            assert_eq!(
                platform.count("SELECT count(*) FROM events WHERE tenant_id = $1 AND kind = 'TenantCreated'", id).await,
                1,
                "{failpoint}"
            );
            let steps = workflow["steps"].as_array().unwrap();
            assert!(steps.iter().all(|s| s["state"] == "succeeded"), "{failpoint}: {workflow}");
            let crashed = steps.iter().find(|s| s["name"] == *step).unwrap();
            let expected_runs = if *point == "crash-after-run" { 2 } else { 1 };
            assert_eq!(crashed["attempts"], expected_runs, "{failpoint}: {crashed}");
            daemon.process.signal_and_wait("TERM", Duration::from_secs(10)).unwrap();
            onboarded.push((failpoint, tenant));
        }
    }
    onboarded
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offboarding_resumes_after_a_crash_at_every_step_and_acts_once() {
    let platform = Platform::new().await;
    let steps: Vec<&str> = Offboarding::STAGES.iter().flat_map(|s| s.iter().map(|step| step.name())).collect();
    let cases: Vec<(String, &str, &str)> = steps
        .iter()
        .enumerate()
        .flat_map(|(n, step)| POINTS.iter().enumerate().map(move |(i, point)| (format!("off-{n}-{i}"), *step, *point)))
        .collect();
    let mut daemon = platform.daemon("").await;
    for (slug, _, _) in &cases {
        let body = json!({ "name": slug, "slug": slug, "owner_email": format!("o@{slug}.example"), "plan": "starter" });
        let response = platform.call(&daemon, reqwest::Method::POST, "/v1/tenants", slug, Some(body)).await.unwrap();
        assert_eq!(response.status(), 201);
    }
    for (slug, _, _) in &cases {
        platform.wait_succeeded(&daemon, slug, "onboarding").await;
    }
    daemon.process.signal_and_wait("TERM", Duration::from_secs(10)).unwrap();

    for (slug, step, point) in &cases {
        let failpoint = format!("offboarding.{step}={point}");
        let key = format!("delete-{slug}");
        platform.crash_during(&failpoint, reqwest::Method::DELETE, &format!("/v1/tenants/{slug}"), &key, None).await;
        let mut daemon = platform.daemon("").await;
        let workflow = platform.wait_succeeded(&daemon, slug, "offboarding").await;
        let tenant = platform.get(&daemon, &format!("/v1/tenants/{slug}")).await;
        assert_eq!(tenant["status"]["phase"], "deleted", "{failpoint}");
        let id = tenant["id"].as_str().unwrap();
        assert!(platform.stripe.live_customers(Some(id)).is_empty(), "{failpoint}: the customer is deleted");
        let certificates = platform
            .count("SELECT count(*) FROM audit_log WHERE tenant_id = $1 AND action = 'tenant.deletion_certificate'", id)
            .await;
        assert_eq!(certificates, 1, "{failpoint}");
        assert_eq!(
            platform.count("SELECT count(*) FROM events WHERE tenant_id = $1 AND kind = 'TenantDeleted'", id).await,
            1,
            "{failpoint}"
        );
        let export_step = workflow["steps"].as_array().unwrap().iter().find(|s| s["name"] == "export").unwrap();
        let bundle = Path::new(export_step["output"]["path"].as_str().unwrap());
        let manifest = export::verify(bundle).unwrap_or_else(|e| panic!("{failpoint}: {e}"));
        assert_eq!(manifest.tables.iter().find(|t| t.table == "products").unwrap().rows, 1, "{failpoint}: the sample");
        daemon.process.signal_and_wait("TERM", Duration::from_secs(10)).unwrap();
    }
    // Billing was cancelled once per tenant, even where the daemon died mid-way.
    assert_eq!(platform.stripe.deleted_customers().len(), cases.len());
    platform.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_on_one_database_run_each_workflow_once() {
    let platform = Platform::new().await;
    let mut first = platform.daemon("").await;
    let mut second = platform.daemon("").await;
    let slugs: Vec<String> = (0..8).map(|n| format!("pair-{n}")).collect();
    for (n, slug) in slugs.iter().enumerate() {
        // Requests alternate between the daemons; either may run any workflow.
        let daemon = if n % 2 == 0 { &first } else { &second };
        let body = json!({ "name": slug, "slug": slug, "owner_email": format!("o@{slug}.example"), "plan": "starter" });
        let response = platform.call(daemon, reqwest::Method::POST, "/v1/tenants", slug, Some(body)).await.unwrap();
        assert_eq!(response.status(), 201);
    }
    for slug in &slugs {
        let workflow = platform.wait_succeeded(&first, slug, "onboarding").await;
        assert!(workflow["steps"].as_array().unwrap().iter().all(|s| s["attempts"] == 1), "{workflow}");
        let tenant = platform.get(&second, &format!("/v1/tenants/{slug}")).await;
        let id = tenant["id"].as_str().unwrap();
        assert_eq!(platform.stripe.customers_created(id), 1, "{slug}");
        assert_eq!(platform.count("SELECT count(*) FROM outbox_emails WHERE tenant_id = $1", id).await, 1);
        assert_eq!(
            platform.count("SELECT count(*) FROM events WHERE tenant_id = $1 AND kind = 'TenantCreated'", id).await,
            1
        );
    }
    first.process.signal_and_wait("TERM", Duration::from_secs(10)).unwrap();
    second.process.signal_and_wait("TERM", Duration::from_secs(10)).unwrap();
    platform.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollup_and_billing_sync_killed_midway_count_every_event_once() {
    let platform = Platform::new().await;
    let mut daemon = platform.daemon("").await;
    let mut tenants = Vec::new();
    for slug in ["usage-a", "usage-b"] {
        let body = json!({ "name": slug, "slug": slug, "owner_email": format!("o@{slug}.example"), "plan": "growth" });
        let response = platform.call(&daemon, reqwest::Method::POST, "/v1/tenants", slug, Some(body)).await.unwrap();
        assert_eq!(response.status(), 201);
        platform.wait_succeeded(&daemon, slug, "onboarding").await;
        tenants.push(platform.get(&daemon, &format!("/v1/tenants/{slug}")).await["id"].as_str().unwrap().to_owned());
    }
    let now = chrono::Utc::now();
    let events: Vec<Value> = (0..300)
        .map(|n| {
            let at = now - chrono::Duration::minutes(61 + 60 * (n % 3) as i64);
            json!({ "id": uuid::Uuid::now_v7(), "tenant_id": tenants[n % 2], "event_type": "api_call", "quantity": 1.0, "occurred_at": at })
        })
        .collect();
    for _ in 0..2 {
        let response = platform
            .call(&daemon, reqwest::Method::POST, "/v1/usage/events", "-", Some(json!({ "events": events })))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    daemon.process.signal_and_wait("TERM", Duration::from_secs(10)).unwrap();

    for job in ["rollup", "billing_sync"] {
        let path = format!("/v1/jobs/{job}/run");
        platform
            .crash_during(
                &format!("job.{job}=crash-after-run"),
                reqwest::Method::POST,
                &path,
                &format!("{job}-1"),
                None,
            )
            .await;
        let mut daemon = platform.daemon("").await;
        // The scheduled run may hold the job this very second: then ask again.
        for attempt in 0.. {
            let response = platform
                .call(&daemon, reqwest::Method::POST, &path, &format!("{job}-2-{attempt}"), None)
                .await
                .unwrap();
            match response.status().as_u16() {
                200 => break,
                409 if attempt < 50 => tokio::time::sleep(Duration::from_millis(100)).await,
                status => panic!("{job}: {status} {}", response.text().await.unwrap_or_default()),
            }
        }
        daemon.process.signal_and_wait("TERM", Duration::from_secs(10)).unwrap();
    }

    let db = sqlx::PgPool::connect(&platform.control.url).await.unwrap();
    let (rolled, raw): (f64, f64) = sqlx::query_as(
        "SELECT (SELECT sum(quantity) FROM usage_hourly WHERE event_type = 'api_call'),
                (SELECT sum(quantity) FROM usage_events WHERE event_type = 'api_call')",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!((rolled, raw), (300.0, 300.0), "every distinct event rolled up once");
    let billable: Vec<(String, f64)> = sqlx::query_as(
        "SELECT b.customer_id, sum(h.quantity) FROM usage_hourly h JOIN tenant_billing b USING (tenant_id)
         WHERE h.event_type = 'api_call' GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    let mut reported = std::collections::BTreeMap::<String, f64>::new();
    for event in platform.stripe.meter_events() {
        let customer = event["payload"]["stripe_customer_id"].as_str().unwrap().to_owned();
        *reported.entry(customer).or_default() += event["payload"]["value"].as_str().unwrap().parse::<f64>().unwrap();
    }
    assert_eq!(reported.into_iter().collect::<Vec<_>>(), billable, "Stripe got each hour once, nothing twice");
    db.close().await;
    platform.cleanup().await;
}
