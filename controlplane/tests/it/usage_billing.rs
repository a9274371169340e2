//! Metering to billing against real PostgreSQL and the Stripe test double:
//! roll-ups equal the distinct events (duplicates, late events, reruns), the
//! quantities reported to Stripe equal the roll-ups and are never reported
//! twice (two daemons at once included), and Stripe's webhooks move a tenant
//! through grace, suspension and resumption once each.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use chrono::{DateTime, DurationRound, Utc};
use http_body_util::BodyExt;
use indigo_controlplane::api::webhooks::{self, WebhookConfig};
use indigo_controlplane::api::{self, AppState};
use indigo_controlplane::billing::Stripe;
use indigo_controlplane::config::{Overrides, Secret, StripeConfig};
use indigo_controlplane::control_plane::ControlPlane;
use indigo_controlplane::db;
use indigo_controlplane::jobs::{JobError, Jobs};
use indigo_controlplane::providers::MetricsProvider;
use indigo_controlplane::providers::local::{LocalDatabases, PostgresMetrics};
use indigo_controlplane::reconciler::{self, Controller, Settings};
use indigo_controlplane::workflow::{Failpoints, engine};
use indigo_core::tenant::TenantId;
use indigo_stripe_emulator::StripeEmulator;
use serde_json::{Value, json};
use sqlx::PgPool;
use tower::ServiceExt;
use uuid::Uuid;

use crate::support;

const ADMIN: &str = "test-bootstrap-admin-token";
const WEBHOOK_SECRET: &str = "whsec_test_secret";

struct World {
    router: Router,
    control_plane: ControlPlane,
    state: AppState,
    db: PgPool,
    stripe: StripeEmulator,
}

impl World {
    async fn new(db: PgPool, grace: chrono::Duration) -> Self {
        let stripe = StripeEmulator::start().await.unwrap();
        let overrides = Overrides {
            admin_token: Some(ADMIN.into()),
            pool_database: Some(format!("indigo_wf_pool_{}", Uuid::new_v4().simple())),
            stripe_api_base: Some(stripe.url.clone()),
            stripe_secret_key: Some("sk_test_double".into()),
            stripe_webhook_secret: Some(WEBHOOK_SECRET.into()),
            data_dir: Some(std::env::temp_dir().join("indigo-usage-test")),
            ..Overrides::default()
        };
        let control_plane = support::control_plane(db.clone(), overrides).await;
        let mut state = control_plane.state.clone();
        // A grace of seconds, which the configuration (in hours) cannot express.
        state.webhooks = Some(Arc::new(WebhookConfig {
            secret: Secret::new(WEBHOOK_SECRET),
            tolerance: chrono::Duration::minutes(5),
            grace,
        }));
        Self { router: api::router(state.clone()), control_plane, state, db, stripe }
    }

    fn stripe(&self) -> Stripe {
        Stripe::new(&StripeConfig { api_base: self.stripe.url.clone(), secret_key: Secret::new("sk_test_double") })
            .unwrap()
    }

    fn jobs(&self) -> Jobs {
        Jobs {
            db: self.db.clone(),
            stripe: Some(self.stripe()),
            aws: None,
            tenant_dbs: self.state.tenant_dbs.clone(),
            databases: self.state.databases.clone(),
            plans: self.state.plans.clone(),
            failpoints: Failpoints::default(),
            backups: indigo_controlplane::backups::BackupStore::directory(
                &std::env::temp_dir().join("indigo-usage-test"),
            ),
        }
    }

    async fn call(&self, method: Method, path: &str, headers: &[(&str, String)], body: Vec<u8>) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(path).header(header::CONTENT_TYPE, "application/json");
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let response = self.router.clone().oneshot(request.body(Body::from(body)).unwrap()).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    fn admin() -> Vec<(&'static str, String)> {
        vec![("authorization", format!("Bearer {ADMIN}"))]
    }

    /// Onboards tenants (with Stripe customers) through the API and the engine.
    async fn tenants(&self, slugs: &[&str]) -> Vec<Uuid> {
        let mut ids = Vec::new();
        for slug in slugs {
            let body =
                json!({ "name": slug, "slug": slug, "owner_email": format!("o@{slug}.example"), "plan": "growth" });
            let mut headers = Self::admin();
            headers.push(("idempotency-key", format!("create-{slug}")));
            let (status, tenant) =
                self.call(Method::POST, "/v1/tenants", &headers, body.to_string().into_bytes()).await;
            assert_eq!(status, StatusCode::CREATED, "{tenant}");
            ids.push(tenant["id"].as_str().unwrap().parse().unwrap());
        }
        let services =
            self.control_plane.workflow_services(LocalDatabases::new(self.state.tenant_dbs.clone())).unwrap();
        engine::run_until_idle(&services).await.unwrap();
        ids
    }

    async fn ingest(&self, events: &[Value]) -> Value {
        let body = json!({ "events": events }).to_string().into_bytes();
        let (status, result) = self.call(Method::POST, "/v1/usage/events", &Self::admin(), body).await;
        assert_eq!(status, StatusCode::OK, "{result}");
        result
    }

    /// Per tenant and hour, the rolled-up api calls, and what the distinct raw events say.
    async fn hourly_vs_raw(&self) -> (Vec<(Uuid, DateTime<Utc>, f64)>, Vec<(Uuid, DateTime<Utc>, f64)>) {
        let rolled = sqlx::query_as(
            "SELECT tenant_id, hour, quantity FROM usage_hourly WHERE event_type = 'api_call' ORDER BY 1, 2",
        )
        .fetch_all(&self.db)
        .await
        .unwrap();
        let raw = sqlx::query_as(
            "SELECT tenant_id, date_trunc('hour', occurred_at, 'UTC'), sum(quantity) FROM usage_events
             WHERE event_type = 'api_call' GROUP BY 1, 2 ORDER BY 1, 2",
        )
        .fetch_all(&self.db)
        .await
        .unwrap();
        (rolled, raw)
    }

    /// What the Stripe double received as meter events, per meter and customer.
    fn reported(&self) -> std::collections::BTreeMap<(String, String), f64> {
        let mut totals = std::collections::BTreeMap::new();
        for event in self.stripe.meter_events() {
            let meter = event["event_name"].as_str().unwrap().to_owned();
            let customer = event["payload"]["stripe_customer_id"].as_str().unwrap().to_owned();
            *totals.entry((meter, customer)).or_insert(0.0) +=
                event["payload"]["value"].as_str().unwrap().parse::<f64>().unwrap();
        }
        totals
    }

    /// Per meter and Stripe customer, the billed usage of closed hours, from the raw events.
    async fn billable(&self) -> std::collections::BTreeMap<(String, String), f64> {
        let mut totals = std::collections::BTreeMap::new();
        for meter in indigo_controlplane::billing::METERS {
            let rows: Vec<(String, f64)> = sqlx::query_as(
                "SELECT b.customer_id, sum(e.quantity) FROM usage_events e JOIN tenant_billing b USING (tenant_id)
                 WHERE e.event_type = $1 AND e.occurred_at < date_trunc('hour', now(), 'UTC') GROUP BY 1",
            )
            .bind(meter.usage)
            .fetch_all(&self.db)
            .await
            .unwrap();
            totals.extend(rows.into_iter().map(|(customer, sum)| ((meter.event_name.to_owned(), customer), sum)));
        }
        totals
    }

    /// The pool database as the schema owner, to write a tenant's rows directly.
    async fn pool_owner(&self) -> sqlx::PgConnection {
        use sqlx::ConnectOptions;
        let dbs = &self.state.tenant_dbs;
        dbs.server.owner_options(&dbs.pool_database).connect().await.unwrap()
    }

    async fn cleanup(self) {
        self.state.tenant_dbs.server.drop_database(&self.state.tenant_dbs.pool_database).await.unwrap();
    }
}

fn event(id: Uuid, tenant: Uuid, hours_ago: i64, kind: &str) -> Value {
    // A minute into the past hour, or now (the open hour) for 0.
    let back = if hours_ago == 0 { chrono::Duration::zero() } else { chrono::Duration::minutes(1) };
    let at = Utc::now() - chrono::Duration::hours(hours_ago) - back;
    json!({ "id": id, "tenant_id": tenant, "event_type": kind, "quantity": 1.0, "occurred_at": at })
}

#[sqlx::test(migrator = "db::MIGRATOR")]
async fn rollups_and_stripe_reports_equal_the_distinct_events_once(pool: PgPool) {
    let world = World::new(pool, chrono::Duration::hours(72)).await;
    let tenants = world.tenants(&["metered-a", "metered-b"]).await;
    let jobs = world.jobs();

    // A known stream: 3 hours of calls for two tenants, searches, and every batch sent twice.
    let mut stream = Vec::new();
    for (n, tenant) in tenants.iter().enumerate() {
        for hour in 1..=3 {
            for _ in 0..(5 * hour + n as i64) {
                stream.push(event(Uuid::now_v7(), *tenant, hour, "api_call"));
            }
        }
        stream.push(event(Uuid::now_v7(), *tenant, 1, "search_query"));
        // AI requests, billed in credits through their own meter: 1,500 tokens on bedrock = 1.5 credits.
        for hour in 1..=2 {
            let mut ai = event(Uuid::now_v7(), *tenant, hour, "ai_request");
            ai["quantity"] = json!(0);
            ai["ai"] = json!({ "service": "bedrock", "input_tokens": 1000, "output_tokens": 500 });
            stream.push(ai);
        }
    }
    let first = world.ingest(&stream).await;
    let again = world.ingest(&stream).await;
    assert_eq!(again["accepted"], 0, "a resent batch is stored once: {again}");
    assert_eq!(first["accepted"].as_u64().unwrap() as usize, stream.len());

    jobs.run("rollup").await.unwrap();
    let (rolled, raw) = world.hourly_vs_raw().await;
    assert_eq!(rolled, raw);
    assert_eq!(rolled.len(), 6, "api calls: 2 tenants × 3 hours");

    jobs.run("billing_sync").await.unwrap();
    let reported = world.reported();
    assert_eq!(reported, world.billable().await, "Stripe got exactly the aggregates");
    let credits: f64 = reported.iter().filter(|((meter, _), _)| meter == "indigo_ai_credits").map(|(_, v)| v).sum();
    assert_eq!(credits, 6.0, "two tenants × two hours × 1.5 credits, on the AI credits meter");
    assert_eq!(world.stripe.meters().len(), 2, "one meter for API calls, one for AI credits");
    let sent = world.stripe.meter_events().len();
    jobs.run("billing_sync").await.unwrap();
    assert_eq!(world.stripe.meter_events().len(), sent, "a second sync sends nothing new");

    // Late events (10 days and 2 hours back) and the current hour's: reported by the difference only.
    let late = vec![
        event(Uuid::now_v7(), tenants[0], 240, "api_call"),
        event(Uuid::now_v7(), tenants[0], 2, "api_call"),
        event(Uuid::now_v7(), tenants[1], 0, "api_call"),
    ];
    world.ingest(&late).await;
    jobs.run("rollup").await.unwrap();
    let (rolled, raw) = world.hourly_vs_raw().await;
    assert_eq!(rolled, raw);
    jobs.run("billing_sync").await.unwrap();
    assert_eq!(world.reported(), world.billable().await);
    assert_eq!(world.stripe.meter_events().len(), sent + 2, "two windows changed; the open hour waits");

    // Daily totals follow the hours; the jobs' runs are visible.
    let daily: f64 = sqlx::query_scalar("SELECT sum(quantity) FROM usage_daily WHERE event_type = 'api_call'")
        .fetch_one(&world.db)
        .await
        .unwrap();
    let total: f64 = sqlx::query_scalar("SELECT sum(quantity) FROM usage_events WHERE event_type = 'api_call'")
        .fetch_one(&world.db)
        .await
        .unwrap();
    assert_eq!(daily, total);
    // The account and how far its usage is reported, for the console's detail.
    let (status, billing) = world.call(Method::GET, "/v1/tenants/metered-a/billing", &World::admin(), vec![]).await;
    assert_eq!(status, StatusCode::OK, "{billing}");
    assert!(billing["customer_id"].as_str().unwrap().starts_with("cus_"));
    assert_eq!(billing["payment_state"], "ok");
    assert!(billing["usage_reported_through"].is_string(), "{billing}");

    // The hourly series the console draws: the roll-ups, hour by hour.
    let (status, series) =
        world.call(Method::GET, "/v1/tenants/metered-a/usage?hours=6", &World::admin(), vec![]).await;
    assert_eq!(status, StatusCode::OK, "{series}");
    let calls: f64 = series["series"]["api_call"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).sum();
    let expected: f64 = sqlx::query_scalar(
        "SELECT sum(quantity) FROM usage_hourly WHERE tenant_id = $1 AND event_type = 'api_call'
           AND hour >= date_trunc('hour', now(), 'UTC') - interval '5 hours'",
    )
    .bind(tenants[0])
    .fetch_one(&world.db)
    .await
    .unwrap();
    assert_eq!((series["hours"].as_array().unwrap().len(), calls), (6, expected));
    let (status, _) = world.call(Method::GET, "/v1/tenants/metered-a/usage?hours=0", &World::admin(), vec![]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, list) = world.call(Method::GET, "/v1/jobs", &World::admin(), vec![]).await;
    assert_eq!(status, StatusCode::OK);
    let rollup = list.as_array().unwrap().iter().find(|j| j["name"] == "rollup").unwrap();
    assert_eq!((rollup["runs"].as_i64(), rollup["last_outcome"].as_str()), (Some(2), Some("ok")), "{rollup}");
    world.cleanup().await;
}

#[sqlx::test(migrator = "db::MIGRATOR")]
async fn two_daemons_running_the_jobs_at_once_count_once(pool: PgPool) {
    let world = World::new(pool, chrono::Duration::hours(72)).await;
    let tenants = world.tenants(&["busy-a", "busy-b"]).await;
    let stream: Vec<Value> =
        (0..400).map(|n| event(Uuid::now_v7(), tenants[n % 2], 1 + (n % 4) as i64, "api_call")).collect();
    world.ingest(&stream).await;
    let (a, b) = (world.jobs(), world.jobs());
    for job in ["rollup", "billing_sync"] {
        let (first, second) = tokio::join!(a.run(job), b.run(job));
        for result in [&first, &second] {
            assert!(matches!(result, Ok(_) | Err(JobError::Busy(_))), "{job}: {result:?}");
        }
        // Whichever ran, or both one after the other: the work is done once.
        if first.is_err() || second.is_err() {
            a.run(job).await.unwrap();
        }
    }
    let (rolled, raw) = world.hourly_vs_raw().await;
    assert_eq!(rolled, raw);
    assert_eq!(world.reported(), world.billable().await);
    world.cleanup().await;
}

/// A roll-up recomputes the buckets that new events touched and no other,
/// however many events arrived lately; an insert still uncommitted while it
/// runs is rolled up by the next run, not lost.
#[sqlx::test(migrator = "db::MIGRATOR")]
async fn a_rollup_recomputes_only_touched_buckets_and_misses_no_insert_committing_during_it(pool: PgPool) {
    let world = World::new(pool, chrono::Duration::hours(72)).await;
    let tenant = world.tenants(&["touched"]).await[0];
    let jobs = world.jobs();
    let stream: Vec<Value> =
        (1..=3).flat_map(|hour| (0..4).map(move |_| event(Uuid::now_v7(), tenant, hour, "api_call"))).collect();
    world.ingest(&stream).await;
    jobs.run("rollup").await.unwrap();
    let log: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_touched").fetch_one(&world.db).await.unwrap();
    assert_eq!(log, 0, "the run took the log");

    // A bucket nobody touched since is left as it is, even one that is wrong.
    let three_hours_ago: DateTime<Utc> =
        sqlx::query_scalar("SELECT date_trunc('hour', now() - interval '3 hours 1 minute', 'UTC')")
            .fetch_one(&world.db)
            .await
            .unwrap();
    sqlx::query("UPDATE usage_hourly SET quantity = 1000 WHERE tenant_id = $1 AND hour = $2")
        .bind(tenant)
        .bind(three_hours_ago)
        .execute(&world.db)
        .await
        .unwrap();
    // An intake transaction that has stored its events but not committed when the roll-up runs.
    let mut open = world.db.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO usage_events (id, tenant_id, event_type, quantity, occurred_at)
         SELECT gen_random_uuid(), $1, 'api_call', 1, now() - interval '61 minutes' FROM generate_series(1, 5)",
    )
    .bind(tenant)
    .execute(&mut *open)
    .await
    .unwrap();
    world.ingest(&[event(Uuid::now_v7(), tenant, 2, "api_call")]).await;
    jobs.run("rollup").await.unwrap();
    open.commit().await.unwrap();
    let hourly = |hours_back: i64| {
        let db = world.db.clone();
        async move {
            sqlx::query_scalar::<_, f64>(
                "SELECT quantity FROM usage_hourly WHERE tenant_id = $1 AND event_type = 'api_call'
                   AND hour = date_trunc('hour', now() - make_interval(hours => $2::int, mins => 1), 'UTC')",
            )
            .bind(tenant)
            .bind(hours_back)
            .fetch_one(&db)
            .await
            .unwrap()
        }
    };
    assert_eq!(hourly(2).await, 5.0, "the touched bucket is recomputed");
    assert_eq!(hourly(3).await, 1000.0, "an untouched bucket is not");
    assert_eq!(hourly(1).await, 4.0, "the insert that committed after the run waits for the next");
    jobs.run("rollup").await.unwrap();
    assert_eq!(hourly(1).await, 9.0, "and the next run has it");
    world.cleanup().await;
}

fn signed(payload: &Value, secret: &str, at: i64) -> (Vec<(&'static str, String)>, Vec<u8>) {
    let body = payload.to_string().into_bytes();
    (vec![("stripe-signature", webhooks::sign(secret, at, &body))], body)
}

fn stripe_event(id: &str, kind: &str, customer: &str) -> Value {
    json!({ "id": id, "object": "event", "type": kind, "data": { "object": { "object": "invoice", "customer": customer } } })
}

#[sqlx::test(migrator = "db::MIGRATOR")]
async fn webhooks_drive_grace_suspension_and_resumption_once(pool: PgPool) {
    let world = World::new(pool, chrono::Duration::seconds(1)).await;
    let tenant = world.tenants(&["late-payer"]).await[0];
    let customer: String = sqlx::query_scalar("SELECT customer_id FROM tenant_billing WHERE tenant_id = $1")
        .bind(tenant)
        .fetch_one(&world.db)
        .await
        .unwrap();
    let now = Utc::now().timestamp();
    let failed = stripe_event("evt_1", "invoice.payment_failed", &customer);

    // Forged, altered, replayed, unsigned: refused, nothing recorded.
    let (headers, body) = signed(&failed, "whsec_wrong", now);
    let (status, reply) = world.call(Method::POST, "/v1/webhooks/stripe", &headers, body).await;
    assert_eq!((status, reply["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_signature")));
    let (headers, _) = signed(&failed, WEBHOOK_SECRET, now);
    let altered = stripe_event("evt_1", "invoice.paid", &customer).to_string().into_bytes();
    let (status, _) = world.call(Method::POST, "/v1/webhooks/stripe", &headers, altered).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (headers, body) = signed(&failed, WEBHOOK_SECRET, now - 3600);
    let (status, reply) = world.call(Method::POST, "/v1/webhooks/stripe", &headers, body).await;
    assert_eq!((status, reply["code"].as_str()), (StatusCode::BAD_REQUEST, Some("signature_expired")));
    let (status, _) = world.call(Method::POST, "/v1/webhooks/stripe", &[], failed.to_string().into_bytes()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM stripe_events").fetch_one(&world.db).await.unwrap();
    assert_eq!(recorded, 0);

    // Payment failed (delivered twice): one grace period, one event.
    for _ in 0..2 {
        let (headers, body) = signed(&failed, WEBHOOK_SECRET, now);
        let (status, reply) = world.call(Method::POST, "/v1/webhooks/stripe", &headers, body).await;
        assert_eq!(status, StatusCode::OK, "{reply}");
    }
    let failures: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE kind = 'PaymentFailed'")
        .fetch_one(&world.db)
        .await
        .unwrap();
    assert_eq!(failures, 1);

    // Grace over, still unpaid: the reconciler suspends.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let controller = Controller::new(
        world.db.clone(),
        LocalDatabases::new(world.state.tenant_dbs.clone()),
        world.state.tenant_dbs.clone(),
        world.state.plans.clone(),
        Settings::default(),
    );
    let mut conn = world.db.acquire().await.unwrap();
    reconciler::reconcile(&controller.context(), &mut conn, indigo_core::tenant::TenantId(tenant)).await.unwrap();
    let lifecycle: String = sqlx::query_scalar("SELECT lifecycle FROM tenants WHERE id = $1")
        .bind(tenant)
        .fetch_one(&world.db)
        .await
        .unwrap();
    assert_eq!(lifecycle, "suspended");

    // Paid (delivered twice): resumed once.
    let paid = stripe_event("evt_2", "invoice.paid", &customer);
    for _ in 0..2 {
        let (headers, body) = signed(&paid, WEBHOOK_SECRET, Utc::now().timestamp());
        let (status, _) = world.call(Method::POST, "/v1/webhooks/stripe", &headers, body).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (lifecycle, resumes): (String, i64) = sqlx::query_as(
        "SELECT lifecycle, (SELECT count(*) FROM audit_log WHERE action = 'tenant.resume') FROM tenants WHERE id = $1",
    )
    .bind(tenant)
    .fetch_one(&world.db)
    .await
    .unwrap();
    assert_eq!((lifecycle.as_str(), resumes), ("active", 1));

    // The subscription cancelled at Stripe: suspended.
    let deleted = stripe_event("evt_3", "customer.subscription.deleted", &customer);
    let (headers, body) = signed(&deleted, WEBHOOK_SECRET, Utc::now().timestamp());
    let (status, reply) = world.call(Method::POST, "/v1/webhooks/stripe", &headers, body).await;
    assert_eq!((status, reply["outcome"].as_str()), (StatusCode::OK, Some("suspended")), "{reply}");
    world.cleanup().await;
}

#[sqlx::test(migrator = "db::MIGRATOR")]
async fn cost_report_flags_tenants_whose_plan_does_not_pay(pool: PgPool) {
    let mut world = World::new(pool, chrono::Duration::hours(72)).await;
    // A model of our own, steep enough that a busy starter tenant costs more than it pays.
    let model = indigo_core::cost::CostModel::parse(
        "test-costs.toml",
        r#"
        currency = "usd"
        scale = [1, 10]
        [services.compute]
        monthly = [100, 500]
        driver = "api_calls"
        [services.other]
        monthly = [10, 50]
        driver = "tenants"
        [silo]
        database_monthly = 90.0
        "#,
    )
    .unwrap();
    world.state.costs = Some(Arc::new(model));
    world.router = api::router(world.state.clone());
    let tenants = world.tenants(&["busy-shop", "quiet-shop"]).await;
    sqlx::query("UPDATE tenants SET plan = 'starter' WHERE id = $1").bind(tenants[0]).execute(&world.db).await.unwrap();
    let stream: Vec<Value> =
        (0..100).map(|n| event(Uuid::now_v7(), if n < 99 { tenants[0] } else { tenants[1] }, 2, "api_call")).collect();
    world.ingest(&stream).await;
    world.jobs().run("rollup").await.unwrap();

    let (status, report) = world.call(Method::GET, "/v1/cost", &World::admin(), vec![]).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    let rows = report.as_array().unwrap();
    assert_eq!(rows[0]["slug"], "busy-shop", "lowest margin first: {report}");
    assert_eq!((rows[0]["unprofitable"].as_bool(), rows[1]["unprofitable"].as_bool()), (Some(true), Some(false)));
    let compute = rows[0]["cost"]["compute"].as_f64().unwrap();
    let fleet_compute = 100.0 + 400.0 / 9.0;
    assert!((compute - fleet_compute * 0.99).abs() < 1e-6, "99% of the calls, 99% of compute: {compute}");
    assert_eq!(rows[0]["revenue"], 29.0);
    assert_eq!(rows[0]["usage_30d"]["api_call"], 99.0);

    let (_, flagged) = world.call(Method::GET, "/v1/cost?unprofitable=true", &World::admin(), vec![]).await;
    assert_eq!(flagged.as_array().unwrap().len(), 1);
    let (status, one) = world.call(Method::GET, "/v1/tenants/quiet-shop/cost", &World::admin(), vec![]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(one["margin"].as_f64().unwrap() > 0.0, "{one}");
    let (status, missing) = world.call(Method::GET, "/v1/tenants/nobody/cost", &World::admin(), vec![]).await;
    assert_eq!((status, missing["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
    let (status, bad) = world.call(Method::GET, "/v1/cost?unprofitable=maybe", &World::admin(), vec![]).await;
    assert_eq!((status, bad["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_query")), "{bad}");
    world.cleanup().await;
}

#[sqlx::test(migrator = "db::MIGRATOR")]
async fn on_the_aws_provider_usage_lands_in_dynamodb_and_cloudwatch_with_the_same_totals(pool: PgPool) {
    use indigo_controlplane::metering::aws::AwsUsage;
    let config = indigo_e2e::moto().await;
    let world = World::new(pool, chrono::Duration::hours(72)).await;
    let tenants = world.tenants(&["cloud-a", "cloud-b"]).await;
    let suffix = Uuid::new_v4().simple().to_string();
    let table = format!("indigo-usage-{suffix}");
    let namespace = format!("Indigo/Test/{suffix}");
    let mirror = AwsUsage::new(&config, &table, &namespace).with_features_table(&format!("indigo-features-{suffix}"));
    let jobs = Jobs {
        db: world.db.clone(),
        stripe: None,
        aws: Some(Arc::new(mirror)),
        tenant_dbs: world.state.tenant_dbs.clone(),
        databases: world.state.databases.clone(),
        plans: world.state.plans.clone(),
        failpoints: Failpoints::default(),
        backups: world.jobs().backups,
    };

    let stream: Vec<Value> =
        (0..60).map(|n| event(Uuid::now_v7(), tenants[n % 2], 1 + (n % 3) as i64, "api_call")).collect();
    world.ingest(&stream).await;
    jobs.run("rollup").await.unwrap();
    jobs.run("usage_mirror").await.unwrap();
    // Late events change a mirrored hour: the difference is sent, the day's total set again.
    world.ingest(&[event(Uuid::now_v7(), tenants[0], 1, "api_call")]).await;
    jobs.run("rollup").await.unwrap();
    jobs.run("usage_mirror").await.unwrap();
    jobs.run("usage_mirror").await.unwrap();

    let mirror = jobs.aws.as_ref().unwrap();
    let daily: Vec<(Uuid, chrono::NaiveDate, f64)> =
        sqlx::query_as("SELECT tenant_id, day, quantity FROM usage_daily WHERE event_type = 'api_call'")
            .fetch_all(&world.db)
            .await
            .unwrap();
    for (tenant, day, quantity) in &daily {
        assert_eq!(mirror.day_total(*tenant, *day, "api_call").await.unwrap(), Some(*quantity), "{tenant} {day}");
    }
    // Read back through the metrics interface: CloudWatch's GetMetricData on AWS, the
    // roll-up table locally; the closed hours agree.
    let current = Utc::now().duration_trunc(chrono::Duration::hours(1)).unwrap();
    let hours: Vec<_> = (1..=24).rev().map(|n| current - chrono::Duration::hours(n)).collect();
    let local = PostgresMetrics::new(world.db.clone());
    for tenant in &tenants {
        let expected: f64 = sqlx::query_scalar(
            "SELECT sum(quantity) FROM usage_hourly WHERE tenant_id = $1 AND event_type = 'api_call'
               AND hour < date_trunc('hour', now(), 'UTC')",
        )
        .bind(tenant)
        .fetch_one(&world.db)
        .await
        .unwrap();
        assert!(expected > 0.0, "the stream has closed hours for {tenant}");
        let from_cloudwatch = mirror.hourly(TenantId(*tenant), &["api_call"], &hours).await.unwrap();
        let from_postgres = local.hourly(TenantId(*tenant), &["api_call"], &hours).await.unwrap();
        assert_eq!(from_cloudwatch["api_call"].iter().sum::<f64>(), expected, "{tenant}");
        assert_eq!(from_cloudwatch, from_postgres, "{tenant}");
    }

    // The feature flags table: each tenant's plan and which features it has, kept in step.
    let (plan, features) = mirror.tenant_features(tenants[0]).await.unwrap().expect("an item per tenant");
    assert_eq!(plan, "growth");
    assert_eq!((features.get("ai_search"), features.get("sso")), (Some(&true), Some(&false)), "{features:?}");
    sqlx::query("UPDATE tenants SET plan = 'pro' WHERE id = $1").bind(tenants[0]).execute(&world.db).await.unwrap();
    sqlx::query("UPDATE tenants SET lifecycle = 'deleted' WHERE id = $1")
        .bind(tenants[1])
        .execute(&world.db)
        .await
        .unwrap();
    jobs.run("usage_mirror").await.unwrap();
    let (plan, features) = mirror.tenant_features(tenants[0]).await.unwrap().unwrap();
    assert_eq!((plan.as_str(), features.get("custom_reports")), ("pro", Some(&true)));
    assert!(mirror.tenant_features(tenants[1]).await.unwrap().is_none(), "an offboarded tenant's item is removed");
    let (status, list) = world.call(Method::GET, "/v1/jobs", &World::admin(), vec![]).await;
    assert_eq!(status, StatusCode::OK);
    let last = list.as_array().unwrap().iter().find(|j| j["name"] == "usage_mirror").unwrap();
    assert_eq!(last["last_detail"]["features_written"], 2, "only what changed is written: {last}");
    world.cleanup().await;
}

#[sqlx::test(migrator = "db::MIGRATOR")]
async fn ai_calls_are_priced_in_credits_and_bad_events_refused_one_by_one(pool: PgPool) {
    let world = World::new(pool, chrono::Duration::hours(72)).await;
    let tenant = world.tenants(&["ai-shop"]).await[0];
    let ai = |service: &str, quantity: Option<f64>| {
        let mut event = json!({
            "id": Uuid::now_v7(), "tenant_id": tenant, "event_type": "ai_request", "occurred_at": Utc::now(),
            "ai": { "service": service, "input_tokens": 1000, "output_tokens": 500 },
        });
        if let Some(quantity) = quantity {
            event["quantity"] = json!(quantity);
        }
        event
    };
    let mut api_call_with_ai = ai("bedrock", None);
    api_call_with_ai["event_type"] = json!("api_call");
    let mut stranger = event(Uuid::now_v7(), Uuid::new_v4(), 1, "api_call");
    stranger["quantity"] = json!(1);
    let mut negative = event(Uuid::now_v7(), tenant, 1, "api_call");
    negative["quantity"] = json!(-1);
    let mut ancient = event(Uuid::now_v7(), tenant, 1, "api_call");
    ancient["occurred_at"] = json!(Utc::now() - chrono::Duration::days(40));
    let batch = vec![
        ai("bedrock", None),                        // 0: 1,500 tokens × 0.001 = 1.5 credits
        ai("comprehend", Some(0.15)),               // 1: the caller's figure agrees
        ai("bedrock", Some(2.0)),                   // 2: disagrees
        ai("skynet", None),                         // 3: no such service
        api_call_with_ai,                           // 4
        stranger,                                   // 5
        negative,                                   // 6
        ancient,                                    // 7
        event(Uuid::now_v7(), tenant, 1, "coffee"), // 8
    ];
    let result = world.ingest(&batch).await;
    assert_eq!(result["accepted"], 2, "{result}");
    let refused: Vec<(u64, &str)> = result["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["index"].as_u64().unwrap(), r["code"].as_str().unwrap()))
        .collect();
    assert_eq!(
        refused,
        [
            (2, "quantity_mismatch"),
            (3, "unknown_service"),
            (4, "invalid_ai_usage"),
            (5, "unknown_tenant"),
            (6, "invalid_quantity"),
            (7, "invalid_timestamp"),
            (8, "unknown_event_type")
        ]
    );
    let stored: Vec<(String, f64, i64, i64)> = sqlx::query_as(
        "SELECT service, quantity, input_tokens, output_tokens FROM usage_events WHERE event_type = 'ai_request' ORDER BY service",
    )
    .fetch_all(&world.db)
    .await
    .unwrap();
    assert_eq!(stored, [("bedrock".into(), 1.5, 1000, 500), ("comprehend".into(), 0.15, 1000, 500)]);

    let too_many: Vec<Value> = (0..10_001).map(|_| event(Uuid::now_v7(), tenant, 1, "api_call")).collect();
    let body = json!({ "events": too_many }).to_string().into_bytes();
    let (status, reply) = world.call(Method::POST, "/v1/usage/events", &World::admin(), body).await;
    assert_eq!((status, reply["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("batch_too_large")));
    world.cleanup().await;
}

#[sqlx::test(migrator = "db::MIGRATOR")]
async fn storage_is_measured_once_a_day_from_the_tenants_own_rows(pool: PgPool) {
    let world = World::new(pool, chrono::Duration::hours(72)).await;
    let tenants = world.tenants(&["small-shop", "big-shop"]).await;
    // The big shop gets a large catalogue; the small one keeps its sample product.
    let mut conn = world.pool_owner().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "BEGIN; SELECT set_config('app.current_tenant', '{}', true);
         INSERT INTO products (tenant_id, id, name, description, price_minor, currency)
         SELECT '{}', gen_random_uuid(), 'Product ' || n, repeat('x', 2000), 100, 'usd' FROM generate_series(1, 200) n;
         COMMIT;",
        tenants[1], tenants[1]
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    let jobs = world.jobs();
    let first = jobs.run("storage").await.unwrap();
    assert_eq!((first["tenants_measured"].as_u64(), first["events_stored"].as_u64()), (Some(2), Some(2)), "{first}");
    let again = jobs.run("storage").await.unwrap();
    assert_eq!(again["events_stored"], 0, "once a day: {again}");
    let sizes: Vec<(Uuid, f64)> =
        sqlx::query_as("SELECT tenant_id, quantity FROM usage_events WHERE event_type = 'storage_gb'")
            .fetch_all(&world.db)
            .await
            .unwrap();
    let size = |id: Uuid| sizes.iter().find(|(t, _)| *t == id).unwrap().1;
    assert!(size(tenants[0]) > 0.0);
    assert!(size(tenants[1]) > 20.0 * size(tenants[0]), "measured from each tenant's own rows: {sizes:?}");
    world.cleanup().await;
}

#[sqlx::test(migrator = "db::MIGRATOR")]
async fn the_recommender_job_recomputes_each_tenants_pairs_from_its_own_orders(pool: PgPool) {
    let world = World::new(pool, chrono::Duration::hours(72)).await;
    let tenants = world.tenants(&["pairs-one", "pairs-two"]).await;
    let mut conn = world.pool_owner().await;
    // The first tenant: two orders, each of its sample product and a second one.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "BEGIN; SELECT set_config('app.current_tenant', '{t}', true);
         INSERT INTO products (tenant_id, id, name, price_minor, currency) VALUES ('{t}', gen_random_uuid(), 'Second', 100, 'usd');
         INSERT INTO customers (tenant_id, id, email, name) VALUES ('{t}', gen_random_uuid(), 'c@one.example', 'C');
         INSERT INTO orders (tenant_id, id, customer_id, total_minor, currency)
             SELECT '{t}', gen_random_uuid(), (SELECT id FROM customers), 200, 'usd' FROM generate_series(1, 2);
         INSERT INTO order_items (tenant_id, order_id, line, product_id, quantity, unit_price_minor)
             SELECT '{t}', o.id, row_number() OVER (PARTITION BY o.id ORDER BY p.id), p.id, 1, 100 FROM orders o, products p;
         COMMIT;",
        t = tenants[0]
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    let report = world.jobs().run("recommender").await.unwrap();
    assert_eq!(
        (report["tenants_refreshed"].as_u64(), report["orders_counted"].as_i64(), report["tenants_failed"].as_u64()),
        (Some(2), Some(2), Some(0)),
        "{report}"
    );
    let pairs: Vec<(Uuid, i64, i64)> = sqlx::query_as(
        "SELECT tenant_id, count(*), max(orders) FROM product_pairs GROUP BY tenant_id ORDER BY tenant_id",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    // Owner connections see no rows without a tenant set (forced RLS): read each under its own.
    assert!(pairs.is_empty(), "row-level security binds the owner too: {pairs:?}");
    sqlx::query("SELECT set_config('app.current_tenant', $1, false)")
        .bind(tenants[0].to_string())
        .execute(&mut conn)
        .await
        .unwrap();
    let (count, most): (i64, Option<i64>) =
        sqlx::query_as("SELECT count(*), max(orders) FROM product_pairs").fetch_one(&mut conn).await.unwrap();
    assert_eq!((count, most), (4, Some(2)), "two products: two self pairs and two pairs, each in both orders");
    // The admin API reads where each tenant's recommender stands.
    let (status, standing) =
        world.call(Method::GET, "/v1/tenants/pairs-one/recommender", &World::admin(), vec![]).await;
    assert_eq!(status, StatusCode::OK, "{standing}");
    assert_eq!(
        (&standing["enabled"], &standing["orders_counted"], &standing["pairs"]),
        (&json!(true), &json!(2), &json!(4))
    );
    assert!(standing["refreshed_at"].is_string(), "{standing}");
    world.cleanup().await;
}

#[sqlx::test(migrator = "db::MIGRATOR")]
async fn limits_count_the_tenants_own_day_and_notify_once_per_threshold(pool: PgPool) {
    let world = World::new(pool, chrono::Duration::hours(72)).await;
    let tenant = world.tenants(&["far-east"]).await[0];
    let sqlx_tenant = tenant;
    // Starter: 1,000 calls a day, 50 AI credits a month.
    sqlx::query("UPDATE tenants SET plan = 'starter' WHERE id = $1").bind(tenant).execute(&world.db).await.unwrap();
    let mut headers = World::admin();
    headers.push(("idempotency-key", "tz-1".into()));
    let bad = json!({ "timezone": "Mars/Olympus_Mons" }).to_string().into_bytes();
    let (status, reply) = world.call(Method::PUT, "/v1/tenants/far-east/settings", &headers, bad).await;
    assert_eq!((status, reply["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_timezone")));
    headers[1].1 = "tz-2".into();
    let zone = "Pacific/Kiritimati"; // UTC+14: its day rarely starts when UTC's does
    let body = json!({ "timezone": zone }).to_string().into_bytes();
    let (status, reply) = world.call(Method::PUT, "/v1/tenants/far-east/settings", &headers, body).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    let (_, settings) = world.call(Method::GET, "/v1/tenants/far-east/settings", &World::admin(), vec![]).await;
    assert_eq!(settings["timezone"], zone);

    // 850 calls since the tenant's midnight, 300 just before it (its yesterday).
    let midnight: DateTime<Utc> = sqlx::query_scalar("SELECT date_trunc('day', now() AT TIME ZONE $1) AT TIME ZONE $1")
        .bind(zone)
        .fetch_one(&world.db)
        .await
        .unwrap();
    let since = (Utc::now() - midnight).num_seconds().max(2);
    let at = |offset: i64| json!(midnight + chrono::Duration::seconds(offset));
    let call = |offset: i64| json!({ "id": Uuid::now_v7(), "tenant_id": sqlx_tenant, "event_type": "api_call", "quantity": 1, "occurred_at": at(offset) });
    let today: Vec<Value> = (0..850).map(|n| call(n % (since - 1) + 1)).collect();
    let yesterday: Vec<Value> = (0..300).map(|n| call(-1 - n)).collect();
    world.ingest(&today).await;
    world.ingest(&yesterday).await;
    let credits = json!({ "id": Uuid::now_v7(), "tenant_id": tenant, "event_type": "ai_request", "quantity": 45, "occurred_at": Utc::now() });
    world.ingest(&[credits]).await;

    let jobs = world.jobs();
    for _ in 0..2 {
        let checked = jobs.run("limits").await.unwrap();
        assert_eq!(checked["tenants_checked"], 1, "{checked}");
    }
    let notices = |kind: &'static str| {
        let db = world.db.clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT data->>'limit' FROM events WHERE kind = $1 ORDER BY id")
                .bind(kind)
                .fetch_all(&db)
                .await
                .unwrap()
        }
    };
    assert_eq!(notices("LimitApproaching").await, ["api_calls_per_day", "ai_credits"], "85% of calls, 90% of credits");
    assert!(notices("LimitReached").await.is_empty(), "yesterday's calls do not count today");

    let more: Vec<Value> = (0..150).map(|n| call(n % (since - 1) + 1)).collect();
    world.ingest(&more).await;
    jobs.run("limits").await.unwrap();
    jobs.run("limits").await.unwrap();
    assert_eq!(notices("LimitReached").await, ["api_calls_per_day"]);
    assert_eq!(notices("LimitApproaching").await.len(), 2, "each notice once");
    world.cleanup().await;
}

/// A tenant's calls since a time (its local midnight for the daily limit,
/// UTC's for the fleet summary) are read from the hourly roll-ups for the hours
/// the roll-up has closed and counted from the events for the rest: each call
/// once, before and after a roll-up; a late call for a closed hour from the
/// next roll-up on.
#[sqlx::test(migrator = "db::MIGRATOR")]
async fn calls_since_a_time_come_from_the_closed_rollups_and_the_events_since_each_once(pool: PgPool) {
    let world = World::new(pool, chrono::Duration::hours(72)).await;
    let tenant = world.tenants(&["counted"]).await[0];
    let jobs = world.jobs();
    // Half past an hour, 20 hours back: half an hour before the first whole one.
    let hour = chrono::Duration::hours(1);
    let since = Utc::now().duration_trunc(hour).unwrap() - hour * 20 + chrono::Duration::minutes(30);
    let call = |at: DateTime<Utc>, kind: &str| json!({ "id": Uuid::now_v7(), "tenant_id": tenant, "event_type": kind, "quantity": 1, "occurred_at": at });
    let minutes = chrono::Duration::minutes;
    let mut stream: Vec<Value> = (1..=3).map(|n| call(since - minutes(n), "api_call")).collect();
    stream.extend((5..12).map(|n| call(since + minutes(n), "api_call")));
    stream.extend((1..=18).flat_map(|h| [call(since + hour * h, "api_call"), call(since + hour * h, "search_query")]));
    stream.extend((0..5).map(|_| call(Utc::now(), "api_call")));
    stream.push(call(since + hour * 2, "ai_request"));
    world.ingest(&stream).await;
    let expected = 7 + 36 + 5;
    let counted = |db: &PgPool| {
        let db = db.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT storefront_calls($1, $2)")
                .bind(tenant)
                .bind(since)
                .fetch_one(&db)
                .await
                .unwrap()
        }
    };
    assert_eq!(counted(&world.db).await, expected, "before any roll-up, from the events");
    jobs.run("rollup").await.unwrap();
    assert_eq!(counted(&world.db).await, expected, "after it, each call still once");

    // The closed hours are read from the roll-ups: without their events the count stays.
    let mut tx = world.db.begin().await.unwrap();
    let removed = sqlx::query(
        "DELETE FROM usage_events WHERE tenant_id = $1 AND occurred_at >= $2 + interval '30 minutes'
           AND occurred_at < (SELECT date_trunc('hour', watermark - interval '5 minutes', 'UTC') FROM jobs WHERE name = 'rollup')",
    )
    .bind(tenant)
    .bind(since)
    .execute(&mut *tx)
    .await
    .unwrap()
    .rows_affected();
    assert!(removed >= 30, "most of the hours are closed: {removed}");
    let from_rollups: i64 = sqlx::query_scalar("SELECT storefront_calls($1, $2)")
        .bind(tenant)
        .bind(since)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(from_rollups, expected);
    tx.rollback().await.unwrap();

    // A late call for a closed hour and four fresh ones.
    let mut more = vec![call(since + hour * 3, "api_call")];
    more.extend((0..4).map(|_| call(Utc::now(), "search_query")));
    world.ingest(&more).await;
    assert_eq!(counted(&world.db).await, expected + 4, "the late call waits for the roll-up");
    jobs.run("rollup").await.unwrap();
    assert_eq!(counted(&world.db).await, expected + 5);
    world.cleanup().await;
}

/// Usage proven against Stripe: after the sync, every billed tenant's reported
/// hours equal what Stripe's meters received. A meter event Stripe lost and
/// one it counted twice are each found, in their tenant, hour and meter, with
/// both numbers, and announced once however often the check runs; when
/// Stripe's count is right again, so is the tenant's parity.
#[sqlx::test(migrator = "db::MIGRATOR")]
async fn usage_is_proven_against_stripe_and_each_discrepancy_is_found_once(pool: PgPool) {
    let world = World::new(pool, chrono::Duration::hours(72)).await;
    let tenants = world.tenants(&["parity-a", "parity-b"]).await;
    let jobs = world.jobs();
    let mut stream = Vec::new();
    for (n, tenant) in tenants.iter().enumerate() {
        for hour in 2..=4 {
            for _ in 0..(hour + n as i64) {
                stream.push(event(Uuid::now_v7(), *tenant, hour, "api_call"));
            }
        }
    }
    world.ingest(&stream).await;
    jobs.run("rollup").await.unwrap();
    jobs.run("billing_sync").await.unwrap();
    let parity = async || {
        jobs.run("billing_parity").await.unwrap();
        let (status, parity) = world.call(Method::GET, "/v1/billing/parity", &World::admin(), vec![]).await;
        assert_eq!(status, StatusCode::OK, "{parity}");
        parity
    };
    let clean = parity().await;
    assert_eq!(clean.as_array().unwrap().len(), 2, "{clean}");
    assert!(
        clean.as_array().unwrap().iter().all(|t| t["in_parity"] == true && t["mismatches"] == json!([])),
        "{clean}"
    );

    // Stripe loses parity-a's report of one hour, and counts one of parity-b's twice.
    let report = async |tenant: Uuid| {
        let (window, quantity, identifier): (DateTime<Utc>, f64, String) = sqlx::query_as(
            "SELECT window_start, reported_quantity, last_identifier FROM billing_reports
             WHERE tenant_id = $1 AND meter = 'indigo_api_calls' ORDER BY window_start LIMIT 1",
        )
        .bind(tenant)
        .fetch_one(&world.db)
        .await
        .unwrap();
        (window, quantity, identifier)
    };
    let (lost_window, lost_quantity, lost) = report(tenants[0]).await;
    let (twice_window, twice_quantity, twice) = report(tenants[1]).await;
    world.stripe.drop_meter_event(&lost);
    world.stripe.duplicate_meter_event(&twice);
    for _ in 0..2 {
        let found = parity().await;
        let of = |slug: &str| found.as_array().unwrap().iter().find(|t| t["slug"] == slug).unwrap().clone();
        let (a, b) = (of("parity-a"), of("parity-b"));
        assert_eq!(a["in_parity"], false);
        let mismatch = |meter: &str, window: DateTime<Utc>, reported: f64, received: f64| {
            json!([{ "meter": meter, "window_start": window, "window_end": window + chrono::Duration::hours(1),
                     "reported": reported, "received": received }])
        };
        assert_eq!(a["mismatches"], mismatch("indigo_api_calls", lost_window, lost_quantity, 0.0), "{a}");
        assert_eq!(b["mismatches"], mismatch("indigo_api_calls", twice_window, twice_quantity, 2.0 * twice_quantity));
    }
    let announced = async |kind: &str, tenant: Uuid| -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events WHERE kind = $1 AND tenant_id = $2")
            .bind(kind)
            .bind(tenant)
            .fetch_one(&world.db)
            .await
            .unwrap()
    };
    assert_eq!(announced("BillingParityLost", tenants[0]).await, 1, "announced once, though checked twice");
    assert_eq!(announced("BillingParityLost", tenants[1]).await, 1);
    // The tenant's condition says so too, with the numbers.
    let controller = Controller::new(
        world.db.clone(),
        LocalDatabases::new(world.state.tenant_dbs.clone()),
        world.state.tenant_dbs.clone(),
        world.state.plans.clone(),
        Settings::default(),
    );
    let mut conn = world.db.acquire().await.unwrap();
    reconciler::reconcile(&controller.context(), &mut conn, TenantId(tenants[0])).await.unwrap();
    drop(conn);
    let (_, tenant) = world.call(Method::GET, "/v1/tenants/parity-a", &World::admin(), vec![]).await;
    let condition =
        tenant["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "BillingParity").cloned();
    let condition = condition.unwrap_or_else(|| panic!("no BillingParity condition: {tenant}"));
    assert_eq!((&condition["status"], &condition["reason"]), (&json!("false"), &json!("UsageMismatch")), "{condition}");
    let numbers = format!("reported {lost_quantity}, Stripe received 0");
    assert!(condition["message"].as_str().unwrap().contains(&numbers), "{condition}");

    // Stripe's count put right: parity-b is in parity again, and says so.
    world.stripe.drop_meter_event(&format!("{twice}-again"));
    let restored = parity().await;
    let b = restored.as_array().unwrap().iter().find(|t| t["slug"] == "parity-b").unwrap();
    assert_eq!((b["in_parity"].as_bool(), &b["mismatches"]), (Some(true), &json!([])), "{b}");
    assert_eq!(announced("BillingParityRestored", tenants[1]).await, 1);
    assert_eq!(restored[0]["slug"], "parity-a", "tenants out of parity first: {restored}");

    // A report still on its way: missing until it arrives, found once, then in parity again.
    let b_of = |found: &Value| found.as_array().unwrap().iter().find(|t| t["slug"] == "parity-b").unwrap().clone();
    world.stripe.delay_meter_event(&twice);
    for _ in 0..2 {
        let b = b_of(&parity().await);
        let expected = json!([{ "meter": "indigo_api_calls", "window_start": twice_window,
                                "window_end": twice_window + chrono::Duration::hours(1),
                                "reported": twice_quantity, "received": 0.0 }]);
        assert_eq!(b["mismatches"], expected, "{b}");
    }
    assert_eq!(announced("BillingParityLost", tenants[1]).await, 2, "the delay announced once");
    world.stripe.deliver_delayed_meter_events();
    assert_eq!(b_of(&parity().await)["in_parity"], true);
    assert_eq!(announced("BillingParityRestored", tenants[1]).await, 2);

    // The period ends (the subscriptions began six hours ago): each invoice has a line per meter
    // with what it counted, equal to Indigo's totals for the period — but for parity-a's lost hour.
    world.stripe.backdate_subscriptions(6 * 3600);
    let invoices = world.stripe.close_periods();
    assert_eq!(invoices.len(), 2);
    let b = b_of(&parity().await);
    assert_eq!((b["in_parity"].as_bool(), &b["mismatches"]), (Some(true), &json!([])), "{b}");
    let a = parity().await.as_array().unwrap().iter().find(|t| t["slug"] == "parity-a").unwrap().clone();
    let on_invoice: Vec<&Value> =
        a["mismatches"].as_array().unwrap().iter().filter(|m| m["invoice"].is_string()).collect();
    assert_eq!(on_invoice.len(), 1, "{a}");
    let reported_a: f64 = sqlx::query_scalar(
        "SELECT sum(reported_quantity)::float8 FROM billing_reports WHERE tenant_id = $1 AND meter = 'indigo_api_calls'",
    )
    .bind(tenants[0])
    .fetch_one(&world.db)
    .await
    .unwrap();
    assert_eq!(
        (on_invoice[0]["reported"].as_f64(), on_invoice[0]["received"].as_f64()),
        (Some(reported_a), Some(reported_a - lost_quantity))
    );

    // An invoice edited by hand: its line no longer says what was counted; found once, with the invoice.
    let customer_b = world.stripe.live_customers(Some(&tenants[1].to_string()))[0]["id"].clone();
    let invoice_b = invoices.iter().find(|i| i["customer"] == customer_b).unwrap();
    let lines = invoice_b["lines"]["data"].as_array().unwrap();
    let prices = world.stripe.prices();
    let api_calls = &prices.iter().find(|p| p["lookup_key"] == "indigo_usage_indigo_api_calls_0_usd").unwrap()["id"];
    let line = lines.iter().position(|l| l["pricing"]["price_details"]["price"] == *api_calls).unwrap();
    let invoiced: f64 = lines[line]["quantity_decimal"].as_str().unwrap().parse().unwrap();
    assert!(invoiced > 0.0, "the period's calls are on the invoice: {invoice_b}");
    world.stripe.edit_invoice_line(invoice_b["id"].as_str().unwrap(), line, invoiced + 7.0);
    for _ in 0..2 {
        let b = b_of(&parity().await);
        let mismatches = b["mismatches"].as_array().unwrap();
        assert_eq!(mismatches.len(), 1, "{b}");
        assert_eq!(mismatches[0]["invoice"], invoice_b["id"], "{b}");
        assert_eq!(
            (mismatches[0]["reported"].as_f64(), mismatches[0]["received"].as_f64()),
            (Some(invoiced), Some(invoiced + 7.0))
        );
    }
    assert_eq!(announced("BillingParityLost", tenants[1]).await, 3, "the edit announced once");
    world.cleanup().await;
}

/// Each tenant is backed up on its own at its plan's RPO: a bundle whose
/// manifest verifies and counts that tenant's rows alone; none again within
/// the RPO; one cut short is never listed and is removed; the plan's
/// `backups_kept` newest are kept; a tenant left behind its RPO is an event,
/// once, and so is its catching up.
#[sqlx::test(migrator = "db::MIGRATOR")]
async fn each_tenant_is_backed_up_on_its_own_at_its_plans_rpo(pool: PgPool) {
    let world = World::new(pool, chrono::Duration::hours(72)).await;
    let tenants = world.tenants(&["kept-one", "kept-two"]).await;
    let mut conn = world.pool_owner().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "BEGIN; SELECT set_config('app.current_tenant', '{t}', true);
         INSERT INTO products (tenant_id, id, name, price_minor, currency)
             SELECT '{t}', gen_random_uuid(), 'Extra ' || n, 100, 'usd' FROM generate_series(1, 3) n;
         COMMIT;",
        t = tenants[1]
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    let backups = async |slug: &str| {
        let (status, backups) =
            world.call(Method::GET, &format!("/v1/tenants/{slug}/backups"), &World::admin(), vec![]).await;
        assert_eq!(status, StatusCode::OK, "{backups}");
        backups
    };
    let run = async || world.jobs().run("backups").await.unwrap();

    let report = run().await;
    assert_eq!((&report["taken"], &report["failed"], &report["behind"]), (&json!(2), &json!(0), &json!(0)), "{report}");
    let two = backups("kept-two").await;
    assert_eq!((&two["rpo_minutes"], &two["rto_minutes"], &two["behind"]), (&json!(60), &json!(240), &json!(false)));
    assert_eq!(two["backups"].as_array().unwrap().len(), 1, "{two}");
    let newest = &two["backups"][0];
    let manifest =
        indigo_controlplane::workflow::export::verify(std::path::Path::new(newest["path"].as_str().unwrap()))
            .expect("the bundle verifies against its checksums");
    let products = manifest.tables.iter().find(|t| t.table == "products").unwrap().rows;
    assert_eq!(products, 4, "its sample product and its three, none of kept-one's");
    assert_eq!(newest["rows"], manifest.tables.iter().map(|t| t.rows).sum::<u64>());
    assert_eq!(run().await["taken"], 0, "within the RPO, no second backup");

    // The drill restores each newest backup into a scratch database and reads it back intact.
    let drill = async || world.jobs().run("backup_drill").await.unwrap();
    let report = drill().await;
    assert_eq!((&report["drilled"], &report["failed"]), (&json!(2), &json!(0)), "{report}");
    let drilled = &backups("kept-two").await["backups"][0];
    assert!(drilled["drilled_at"].is_string() && drilled["drill_problem"].is_null(), "{drilled}");
    // A bundle changed after it was written: found, and said where.
    let products = std::path::Path::new(newest["path"].as_str().unwrap()).join("products.jsonl");
    let written = std::fs::read_to_string(&products).unwrap();
    assert!(written.contains("Extra 1"), "{written}");
    std::fs::write(&products, written.replacen("Extra 1", "Extra X", 1)).unwrap();
    let report = drill().await;
    assert_eq!((&report["drilled"], &report["failed"]), (&json!(2), &json!(1)), "{report}");
    let drilled = &backups("kept-two").await["backups"][0];
    assert!(drilled["drill_problem"].as_str().unwrap().starts_with("products.jsonl: checksum"), "{drilled}");
    let failures: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE tenant_id = $1 AND kind = 'BackupDrillFailed'")
            .bind(tenants[1])
            .fetch_one(&world.db)
            .await
            .unwrap();
    assert_eq!(failures, 1);
    std::fs::write(&products, written).unwrap();
    assert_eq!(drill().await["failed"], 0, "put back, it restores intact again");

    // A backup cut short (a crash mid-write): never listed, removed by the next run.
    let partial = std::env::temp_dir().join(format!("indigo-cut-short-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(partial.with_extension("partial")).unwrap();
    std::fs::write(partial.with_extension("partial").join("products.jsonl"), "{}\n").unwrap();
    sqlx::query("INSERT INTO tenant_backups (id, tenant_id, path) VALUES ($1, $2, $3)")
        .bind(Uuid::now_v7())
        .bind(tenants[1])
        .bind(partial.to_string_lossy().as_ref())
        .execute(&world.db)
        .await
        .unwrap();
    assert_eq!(backups("kept-two").await["backups"].as_array().unwrap().len(), 1, "not a backup");
    assert_eq!(run().await["abandoned"], 1);
    assert!(!partial.with_extension("partial").exists(), "what it left is removed");

    // Its newest older than the RPO: behind, then backed up again.
    let age = |slug: &'static str, by: &'static str| {
        let db = world.db.clone();
        async move {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE tenant_backups SET taken_at = taken_at - interval '{by}'
                 WHERE tenant_id = (SELECT id FROM tenants WHERE slug = '{slug}')"
            )))
            .execute(&db)
            .await
            .unwrap();
        }
    };
    age("kept-one", "61 minutes").await;
    assert_eq!(backups("kept-one").await["behind"], true);
    let report = run().await;
    assert_eq!((&report["taken"], &report["behind"]), (&json!(1), &json!(0)), "{report}");
    assert_eq!(backups("kept-one").await["backups"].as_array().unwrap().len(), 2);

    // It cannot be backed up (its database gone from under it): behind, one
    // event however many runs, then one when it catches up.
    let placement = |database: &str| {
        sqlx::query(
            "UPDATE tenants SET placement = jsonb_set(placement, '{database}', to_jsonb($2::text)) WHERE id = $1",
        )
        .bind(tenants[0])
        .bind(database.to_owned())
    };
    let pool_database = world.state.tenant_dbs.pool_database.clone();
    placement("indigo_no_such_database").execute(&world.db).await.unwrap();
    age("kept-one", "2 hours").await;
    for _ in 0..2 {
        let report = run().await;
        assert_eq!((&report["failed"], &report["behind"]), (&json!(1), &json!(1)), "{report}");
    }
    let events = |kind: &'static str| {
        sqlx::query_scalar::<_, String>("SELECT message FROM events WHERE tenant_id = $1 AND kind = $2")
            .bind(tenants[0])
            .bind(kind)
            .fetch_all(&world.db)
    };
    let behind = events("BackupBehind").await.unwrap();
    assert_eq!(behind.len(), 1, "{behind:?}");
    assert!(behind[0].contains("RPO of 60 min"), "{behind:?}");
    placement(&pool_database).execute(&world.db).await.unwrap();
    assert_eq!(run().await["behind"], 0);
    assert_eq!(events("BackupCaughtUp").await.unwrap().len(), 1);

    // The plan keeps 24: older ones go, with their bundles.
    let mut old = Vec::new();
    for minutes in 10..35 {
        let path = std::env::temp_dir().join(format!("indigo-old-backup-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&path).unwrap();
        sqlx::query(
            "INSERT INTO tenant_backups (id, tenant_id, path, taken_at, manifest_sha256, rows)
             VALUES ($1, $2, $3, now() - make_interval(mins => $4), 'x', 0)",
        )
        .bind(Uuid::now_v7())
        .bind(tenants[1])
        .bind(path.to_string_lossy().as_ref())
        .bind(minutes)
        .execute(&world.db)
        .await
        .unwrap();
        old.push(path);
    }
    assert_eq!(run().await["pruned"], 2, "26 backups, 24 kept");
    assert_eq!(backups("kept-two").await["backups"].as_array().unwrap().len(), 24);
    assert!(!old[24].exists() && !old[23].exists() && old[22].exists(), "the two oldest bundles removed");
    for path in old {
        let _ = std::fs::remove_dir_all(path);
    }
    world.cleanup().await;
}

/// An hour's usage is dated at Stripe at the hour's start, but the hour its
/// subscription began in at that instant: Stripe invoices metered usage from
/// the subscription's start, and would leave that hour's usage out otherwise.
#[sqlx::test(migrator = "db::MIGRATOR")]
async fn the_hour_a_subscription_began_in_is_dated_at_its_start(pool: PgPool) {
    let billed_at = async |window: &str, subscribed: Option<&str>| -> DateTime<Utc> {
        sqlx::query_scalar("SELECT billed_at($1::timestamptz, $2::timestamptz)")
            .bind(window)
            .bind(subscribed)
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let at = |t: &str| t.parse::<DateTime<Utc>>().unwrap();
    let began = "2026-12-01T10:20:00Z";
    assert_eq!(billed_at("2026-12-01T10:00:00Z", Some(began)).await, at(began), "the hour it began in");
    assert_eq!(billed_at("2026-12-01T11:00:00Z", Some(began)).await, at("2026-12-01T11:00:00Z"), "a later hour");
    assert_eq!(billed_at("2026-12-01T09:00:00Z", Some(began)).await, at("2026-12-01T09:00:00Z"), "an earlier one");
    assert_eq!(billed_at("2026-12-01T10:00:00Z", None).await, at("2026-12-01T10:00:00Z"), "a start not known");
}
