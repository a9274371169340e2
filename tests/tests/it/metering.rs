//! The data plane and the control plane together, over real TCP: usage flows
//! from storefront requests into the usage store exactly once (retries and
//! outages included), and the storefront keeps serving from its last routing
//! table when the control plane is gone.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use indigo_controlplane::api::{self as admin, AppState as AdminState};
use indigo_controlplane::config::Config;
use indigo_controlplane::control_plane::ControlPlane;
use indigo_controlplane::db;
use indigo_controlplane::registry::{self, NewTenant};
use indigo_core::tenant::{Email, Slug, TenantName};
use indigo_dataplane::api::{self as store, AppState as StoreState};
use indigo_dataplane::auth::{CallerRole, Claims, Verifier, sign_hs256};
use indigo_dataplane::metering::{Meter, UsageSink};
use indigo_dataplane::routing::{self, ControlPlaneSource, Routes};
use indigo_e2e::TestDatabase;
use indigo_tenantdb::schema::TenantServer;
use tokio::task::JoinHandle;

const ADMIN_TOKEN: &str = "e2e-admin-token-0123456789";
const JWT_SECRET: &[u8] = b"e2e-jwt-secret-of-at-least-32-bytes";

/// The admin API of a control plane, serving.
struct AdminApi {
    state: AdminState,
    address: SocketAddr,
    task: JoinHandle<()>,
}

async fn start_control_plane(state: AdminState, address: &str) -> AdminApi {
    let listener = tokio::net::TcpListener::bind(address).await.unwrap();
    let address = listener.local_addr().unwrap();
    let router = admin::router(state.clone());
    let task = tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    AdminApi { state, address, task }
}

struct Platform {
    control: AdminApi,
    control_db: TestDatabase,
    pool_database: String,
    tenant_server: TenantServer,
    tenant: indigo_core::tenant::TenantId,
    store_url: String,
    meter: Meter,
    routes: Arc<Routes>,
    limiter: Arc<indigo_dataplane::limits::Limiter>,
    http: reqwest::Client,
    token: String,
    refresher: JoinHandle<()>,
}

impl Platform {
    async fn start() -> Self {
        let control_db = TestDatabase::unique("indigo_e2e_control");
        db::ensure_database(&control_db.url).await.unwrap();
        let pool_database = format!("indigo_e2e_pool_{}", uuid::Uuid::new_v4().simple());
        let data_dir = std::env::temp_dir().join(format!("indigo-e2e-{}", control_db.name));
        let settings = indigo_e2e::control_plane_settings(&control_db.url, &pool_database, ADMIN_TOKEN, data_dir);
        let config = Config::load(None, settings).unwrap();
        let state = ControlPlane::build(&config, None).await.unwrap().state;
        let (pool, tenant_server) = (state.db.clone(), state.tenant_dbs.server.clone());
        let tenant = {
            let mut tx = pool.begin().await.unwrap();
            let new = NewTenant {
                slug: Slug::parse("metered-shop").unwrap(),
                name: TenantName::parse("Metered Shop").unwrap(),
                owner_email: Email::parse("o@metered.example").unwrap(),
                plan: state.plans.get("pro").unwrap(),
                lifecycle: indigo_core::tenant::Lifecycle::Active,
            };
            let actor = admin::auth::Actor::system("e2e");
            let tenant = registry::create(&mut tx, &actor, None, new).await.unwrap();
            tx.commit().await.unwrap();
            tenant.id
        };
        let control = start_control_plane(state, "127.0.0.1:0").await;
        let control_url = format!("http://{}", control.address);

        let routes = Arc::new(Routes::new(4));
        let refresher = tokio::spawn(routing::refresh_forever(
            routes.clone(),
            ControlPlaneSource::new(&control_url, ADMIN_TOKEN),
            Duration::from_millis(100),
        ));
        let spool = std::env::temp_dir().join(format!("indigo-e2e-spool-{}", uuid::Uuid::new_v4().simple()));
        let meter = Meter::new(Some(UsageSink::new(&control_url, ADMIN_TOKEN)), spool);
        let store_state = StoreState::new(routes.clone(), Verifier::hs256(JWT_SECRET).unwrap(), meter.clone());
        let limiter = store_state.limiter.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let store_url = format!("http://{}", listener.local_addr().unwrap());
        let router = store::router(store_state);
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        let token = sign_hs256(
            JWT_SECRET,
            &Claims {
                tenant_id: tenant,
                sub: "owner".into(),
                role: CallerRole::Owner,
                exp: chrono::Utc::now().timestamp() + 3600,
            },
        );
        let platform = Self {
            control,
            control_db,
            pool_database,
            tenant_server,
            tenant,
            store_url,
            meter,
            routes,
            limiter,
            http: reqwest::Client::new(),
            token,
            refresher,
        };
        platform.wait_for_route().await;
        platform
    }

    async fn wait_for_route(&self) {
        for _ in 0..100 {
            if self.routes.route(self.tenant).is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the data plane never received a route for the tenant");
    }

    async fn storefront_get(&self, path: &str) -> reqwest::StatusCode {
        self.http.get(format!("{}{path}", self.store_url)).bearer_auth(&self.token).send().await.unwrap().status()
    }

    async fn stored_events(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM usage_events WHERE tenant_id = $1")
            .bind(self.tenant.0)
            .fetch_one(&self.control.state.db)
            .await
            .unwrap()
    }

    async fn ingest(&self, events: Vec<indigo_core::api::UsageEvent>) -> indigo_core::api::UsageBatchResult {
        self.http
            .post(format!("http://{}/v1/usage/events", self.control.address))
            .bearer_auth(ADMIN_TOKEN)
            .json(&indigo_core::api::UsageBatch { events })
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn stop(self) {
        self.refresher.abort();
        self.control.task.abort();
        self.control.state.db.close().await;
        self.tenant_server.drop_database(&self.pool_database).await.unwrap();
        self.control_db.drop_now().await.unwrap();
    }
}

#[tokio::test]
async fn every_request_is_metered_exactly_once() {
    let platform = Platform::start().await;
    for _ in 0..20 {
        assert_eq!(platform.storefront_get("/v1/products").await, 200);
    }
    for _ in 0..5 {
        assert_eq!(platform.storefront_get("/v1/search?q=boot").await, 200);
    }
    assert_eq!(platform.meter.pending(), 25);
    platform.meter.flush().await.unwrap();
    assert_eq!(platform.meter.pending(), 0);
    assert_eq!(platform.stored_events().await, 25);
    let by_type: Vec<(String, i64)> =
        sqlx::query_as("SELECT event_type, count(*) FROM usage_events WHERE tenant_id = $1 GROUP BY 1 ORDER BY 1")
            .bind(platform.tenant.0)
            .fetch_all(&platform.control.state.db)
            .await
            .unwrap();
    assert_eq!(by_type, [("api_call".to_owned(), 20), ("search_query".to_owned(), 5)]);
    let summary: Vec<indigo_core::api::TenantUsage> = platform
        .http
        .get(format!("http://{}/v1/usage/summary", platform.control.address))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(summary.len(), 1);
    assert_eq!(summary[0].api_calls_today, 25);
    assert!((summary[0].requests_per_second - 25.0 / 60.0).abs() < 1e-9);

    // The same batch delivered again (a retry after a lost answer) counts once.
    let events: Vec<indigo_core::api::UsageEvent> =
        sqlx::query_as::<_, (uuid::Uuid, String, chrono::DateTime<chrono::Utc>)>(
            "SELECT id, event_type, occurred_at FROM usage_events WHERE tenant_id = $1",
        )
        .bind(platform.tenant.0)
        .fetch_all(&platform.control.state.db)
        .await
        .unwrap()
        .into_iter()
        .map(|(id, event_type, occurred_at)| indigo_core::api::UsageEvent {
            id,
            tenant_id: platform.tenant,
            event_type,
            quantity: 1.0,
            route: None,
            status: None,
            latency_ms: None,
            occurred_at,
            ai: None,
        })
        .collect();
    let reply = platform.ingest(events).await;
    assert_eq!((reply.accepted, reply.duplicates), (0, 25));
    assert_eq!(platform.stored_events().await, 25);
    platform.stop().await;
}

#[tokio::test]
async fn bad_events_are_refused_one_by_one_and_the_rest_kept() {
    let platform = Platform::start().await;
    let good = |n: u8| indigo_core::api::UsageEvent {
        id: uuid::Uuid::now_v7(),
        tenant_id: platform.tenant,
        event_type: "ai_request".into(),
        quantity: f64::from(n) * 0.5,
        route: None,
        status: None,
        latency_ms: None,
        occurred_at: chrono::Utc::now() - chrono::Duration::days(3),
        ai: None,
    };
    let mut unknown_type = good(1);
    unknown_type.event_type = "coffee".into();
    let mut negative = good(1);
    negative.quantity = -1.0;
    let mut stranger = good(1);
    stranger.tenant_id = indigo_core::tenant::TenantId::new();
    let mut ancient = good(1);
    ancient.occurred_at = chrono::Utc::now() - chrono::Duration::days(40);
    let repeated = good(4);
    let batch = vec![good(2), unknown_type, negative, stranger, ancient, repeated.clone(), repeated];
    let reply = platform.ingest(batch).await;
    assert_eq!((reply.accepted, reply.duplicates), (2, 1));
    let codes: Vec<(usize, &str)> = reply.rejected.iter().map(|r| (r.index, r.code.as_str())).collect();
    assert_eq!(
        codes,
        [(1, "unknown_event_type"), (2, "invalid_quantity"), (3, "unknown_tenant"), (4, "invalid_timestamp")]
    );
    platform.stop().await;
}

#[tokio::test]
async fn an_outage_of_the_control_plane_loses_nothing_and_stops_no_request() {
    let mut platform = Platform::start().await;
    assert_eq!(platform.storefront_get("/v1/products").await, 200);
    platform.meter.flush().await.unwrap();
    assert_eq!(platform.stored_events().await, 1);

    // The control plane goes away: the storefront keeps serving from its last table.
    platform.control.task.abort();
    let address = platform.control.address;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..10 {
        assert_eq!(platform.storefront_get("/v1/products").await, 200);
    }
    platform.meter.flush().await.unwrap();
    assert_eq!(platform.meter.pending(), 0, "undeliverable usage is spooled, not kept in memory");
    assert_eq!(platform.stored_events().await, 1);

    // It comes back on the same address: the spooled batch is delivered once.
    platform.control = start_control_plane(platform.control.state.clone(), &address.to_string()).await;
    platform.meter.flush().await.unwrap();
    assert_eq!(platform.stored_events().await, 11);
    platform.meter.flush().await.unwrap();
    assert_eq!(platform.stored_events().await, 11);
    platform.stop().await;
}

#[tokio::test]
async fn routing_changes_reach_the_data_plane_within_a_second() {
    let platform = Platform::start().await;
    assert_eq!(platform.storefront_get("/v1/products").await, 200);
    let mut tx = platform.control.state.db.begin().await.unwrap();
    let actor = admin::auth::Actor::system("e2e");
    registry::set_lifecycle(
        &mut tx,
        &actor,
        None,
        &registry::TenantRef::Id(platform.tenant),
        indigo_core::tenant::Lifecycle::Suspended,
        Some("test"),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let started = std::time::Instant::now();
    while platform.storefront_get("/v1/products").await != 403 {
        assert!(started.elapsed() < Duration::from_secs(1), "suspension not applied within a second");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    platform.stop().await;
}

#[tokio::test]
async fn the_daily_call_limit_holds_across_replicas() {
    let platform = Platform::start().await;
    // A plan with a small daily limit: starter allows 1,000 calls.
    sqlx::query("UPDATE tenants SET plan = 'starter' WHERE id = $1")
        .bind(platform.tenant.0)
        .execute(&platform.control.state.db)
        .await
        .unwrap();
    for _ in 0..100 {
        if platform.routes.route(platform.tenant).is_some_and(|r| r.plan.name.as_str() == "starter") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Other replicas served 998 calls today, metered into the usage store.
    let served: Vec<indigo_core::api::UsageEvent> = (0..998)
        .map(|_| indigo_core::api::UsageEvent {
            id: uuid::Uuid::now_v7(),
            tenant_id: platform.tenant,
            event_type: "api_call".into(),
            quantity: 1.0,
            route: Some("/v1/products".into()),
            status: Some(200),
            latency_ms: Some(3),
            occurred_at: chrono::Utc::now(),
            ai: None,
        })
        .collect();
    assert_eq!(platform.ingest(served).await.accepted, 998);
    // This replica served none itself; it takes in the shared count.
    let source = ControlPlaneSource::new(&format!("http://{}", platform.control.address), ADMIN_TOKEN);
    let shared = source.daily_calls().await.unwrap();
    let ours = shared.iter().find(|d| d.tenant_id == platform.tenant).expect("the tenant's count");
    assert_eq!(ours.calls, 998);
    assert!(ours.resets_at > chrono::Utc::now(), "the count runs until the tenant's next midnight");
    platform.limiter.share_daily(&shared);
    assert_eq!(platform.storefront_get("/v1/products").await, 200);
    assert_eq!(platform.storefront_get("/v1/products").await, 200);
    let refused = platform
        .http
        .get(format!("{}/v1/products", platform.store_url))
        .bearer_auth(&platform.token)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 429);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "daily_limit", "{body}");
    platform.stop().await;
}
