//! The platform in one process, over real TCP and a real PostgreSQL: the admin
//! API (which also serves the routing table), the workflow engine, the Stripe
//! test double and a storefront (the data plane's HTTP API). For the tests and
//! the benchmark of tier changes, which drive storefront load while tenants move.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use indigo_controlplane::api::AppState as AdminState;
use indigo_controlplane::config::{Config, Overrides};
use indigo_controlplane::control_plane::ControlPlane;
use indigo_controlplane::db;
use indigo_controlplane::providers::DatabaseProvider;
use indigo_controlplane::providers::local::LocalDatabases;
use indigo_controlplane::workflow::{Engine, Failpoints, Services};
use indigo_core::tenant::TenantId;
use indigo_dataplane::api::{self as store, AppState as StoreState};
use indigo_dataplane::auth::{CallerRole, Claims, Verifier, sign_hs256};
use indigo_dataplane::logins::LoginSecrets;
use indigo_dataplane::metering::Meter;
use indigo_dataplane::routing::{self, ControlPlaneSource, Routes};
use indigo_tenantdb::schema::TenantServer;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::TestDatabase;
use indigo_stripe_emulator::StripeEmulator;

pub const ADMIN_TOKEN: &str = "stack-admin-token-0123456789";
pub const JWT_SECRET: &[u8] = b"stack-jwt-secret-of-at-least-32-bytes";

/// A storefront (data plane) routed by a control plane at some URL.
pub struct Storefront {
    pub url: String,
    pub routes: Arc<Routes>,
    tasks: Vec<JoinHandle<()>>,
}

impl Storefront {
    pub async fn start(control_plane_url: &str) -> anyhow::Result<Self> {
        Self::start_with(control_plane_url, LoginSecrets::default()).await
    }

    /// A storefront that reads its tenants' cluster logins from moto's Secrets Manager.
    pub async fn start_on_aws(control_plane_url: &str) -> anyhow::Result<Self> {
        let secrets = aws_sdk_secretsmanager::Client::new(&crate::moto().await);
        Self::start_with(control_plane_url, LoginSecrets::with_client(secrets)).await
    }

    async fn start_with(control_plane_url: &str, logins: LoginSecrets) -> anyhow::Result<Self> {
        let routes = Arc::new(Routes::new(16).with_login_secrets(logins));
        let refresher = tokio::spawn(routing::refresh_forever(
            routes.clone(),
            ControlPlaneSource::new(control_plane_url, ADMIN_TOKEN),
            Duration::from_millis(200),
        ));
        let spool = std::env::temp_dir().join(format!("indigo-stack-spool-{}", Uuid::new_v4().simple()));
        let mut state = StoreState::new(routes.clone(), Verifier::hs256(JWT_SECRET).unwrap(), Meter::new(None, spool));
        state.metering = false;
        // Load comes from one address; each request names its own client instead.
        state.trust_forwarded_for = true;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let router = store::router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(Self { url, routes, tasks: vec![refresher, server] })
    }

    /// Waits until the routing table sends `tenant` to a database.
    pub async fn wait_routed(&self, tenant: TenantId) -> anyhow::Result<()> {
        for _ in 0..200 {
            if self.routes.route(tenant).is_some_and(|r| r.database_url.is_some()) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("the storefront never got a route for {tenant}")
    }
}

impl Drop for Storefront {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

/// The admin API, as an operator's script calls it.
#[derive(Clone)]
pub struct AdminClient {
    pub url: String,
    pub http: reqwest::Client,
}

impl AdminClient {
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(ADMIN_TOKEN)
            .header("idempotency-key", Uuid::new_v4().to_string());
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status();
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    }

    /// Onboards a tenant and waits until `storefront` routes it.
    pub async fn onboard(&self, storefront: &Storefront, slug: &str, plan: &str) -> anyhow::Result<Shop> {
        let body = json!({ "name": format!("Shop {slug}"), "slug": slug, "owner_email": format!("o@{slug}.example"), "plan": plan });
        let (status, tenant) = self.request(Method::POST, "/v1/tenants", Some(body)).await?;
        if status != StatusCode::CREATED {
            bail!("onboarding {slug}: {status} {tenant}");
        }
        self.wait_workflow(slug, "onboarding").await?;
        let id = TenantId(tenant["id"].as_str().context("tenant id")?.parse()?);
        storefront.wait_routed(id).await?;
        Ok(Shop::new(id, slug))
    }

    /// Asks for a plan change; returns the tenant as the API answered.
    pub async fn change_plan(&self, slug: &str, plan: &str) -> anyhow::Result<Value> {
        let (status, tenant) =
            self.request(Method::PUT, &format!("/v1/tenants/{slug}/plan"), Some(json!({ "plan": plan }))).await?;
        if status != StatusCode::ACCEPTED {
            bail!("plan change of {slug}: {status} {tenant}");
        }
        Ok(tenant)
    }

    /// Waits until the tenant's latest workflow of `kind` has ended; returns it.
    pub async fn wait_workflow(&self, slug: &str, kind: &str) -> anyhow::Result<Value> {
        let deadline = Instant::now() + Duration::from_secs(600);
        while Instant::now() < deadline {
            let (_, workflows) =
                self.request(Method::GET, &format!("/v1/workflows?tenant={slug}&kind={kind}"), None).await?;
            if let Some(workflow) = workflows.as_array().and_then(|w| w.first())
                && matches!(workflow["state"].as_str(), Some("succeeded" | "failed" | "cancelled"))
            {
                return Ok(workflow.clone());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("the {kind} workflow of {slug} did not end")
    }

    pub async fn tenant(&self, slug: &str) -> anyhow::Result<Value> {
        Ok(self.request(Method::GET, &format!("/v1/tenants/{slug}"), None).await?.1)
    }
}

/// The whole platform in this process.
pub struct Stack {
    pub control_db: TestDatabase,
    pub control_plane: ControlPlane,
    pub state: AdminState,
    pub admin: AdminClient,
    pub storefront: Storefront,
    pub stripe: StripeEmulator,
    pub http: reqwest::Client,
    data_dir: std::path::PathBuf,
    tasks: Vec<JoinHandle<()>>,
}

impl Stack {
    /// Starts everything but the workflow engine (see [`Stack::start_engine`]),
    /// built as `indigo serve` builds it: billing on the Stripe double, no
    /// grace before a moved tenant's source is released.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(None).await
    }

    /// The stack for AWS mode's tests: every Aurora cluster stands in as a
    /// database on the test server (the engine's provider is the test's to give).
    pub async fn with_cluster_stand_in() -> anyhow::Result<Self> {
        Self::start_with(Some(crate::server_url())).await
    }

    async fn start_with(cluster_stand_in: Option<String>) -> anyhow::Result<Self> {
        let on_aws = cluster_stand_in.is_some();
        let control_db = TestDatabase::unique("indigo_move_control");
        db::ensure_database(&control_db.url).await?;
        let stripe = StripeEmulator::start().await?;
        let data_dir = std::env::temp_dir().join(format!("indigo-stack-{}", Uuid::new_v4().simple()));
        let pool_database = format!("indigo_move_pool_{}", Uuid::new_v4().simple());
        let config = Config::load(
            None,
            Overrides {
                stripe_api_base: Some(stripe.url.clone()),
                stripe_secret_key: Some("sk_test_double".into()),
                move_grace_seconds: Some(0),
                aws_cluster_stand_in: cluster_stand_in,
                ..crate::control_plane_settings(&control_db.url, &pool_database, ADMIN_TOKEN, data_dir.clone())
            },
        )?;
        let control_plane = ControlPlane::build(&config, None).await?;
        let state = control_plane.state.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let admin_url = format!("http://{}", listener.local_addr()?);
        let router = control_plane.router();
        let api = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        let storefront =
            if on_aws { Storefront::start_on_aws(&admin_url).await? } else { Storefront::start(&admin_url).await? };
        Ok(Self {
            control_db,
            control_plane,
            state,
            admin: AdminClient { url: admin_url, http: reqwest::Client::new() },
            storefront,
            stripe,
            http: reqwest::Client::new(),
            data_dir,
            tasks: vec![api],
        })
    }

    /// The workflow services of the stack's control plane on the local
    /// provider, with `failpoints` and quick retries.
    pub fn services(&self, failpoints: &str) -> anyhow::Result<Services<LocalDatabases>> {
        let mut services = self.control_plane.workflow_services(LocalDatabases::new(self.state.tenant_dbs.clone()))?;
        services.failpoints = Failpoints::parse(failpoints).map_err(anyhow::Error::msg)?;
        services.settings.backoff_base = Duration::from_millis(20);
        Ok(services)
    }

    pub fn start_engine<P: DatabaseProvider>(&mut self, services: Services<P>) {
        self.tasks.push(Engine::new(services).spawn());
    }

    pub async fn onboard(&self, slug: &str, plan: &str) -> anyhow::Result<Shop> {
        self.admin.onboard(&self.storefront, slug, plan).await
    }

    /// Ids of the tenant's rows of `table` in `database` (see [`ids_in`]).
    pub async fn ids_in(&self, database: &str, table: &str, tenant: TenantId) -> anyhow::Result<Vec<Uuid>> {
        ids_in(&self.state.tenant_dbs.server, database, table, tenant).await
    }

    pub fn pool_database(&self) -> &str {
        &self.state.tenant_dbs.pool_database
    }

    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.tasks.drain(..).for_each(|t| t.abort());
        let dbs = self.state.tenant_dbs.clone();
        let silos: Vec<(String, Option<String>)> = sqlx::query_as(
            "SELECT placement->>'database', placement->>'cluster' FROM tenants WHERE placement->>'isolation' = 'silo'",
        )
        .fetch_all(&self.state.db)
        .await?;
        self.state.db.close().await;
        for (database, cluster) in silos {
            let silo = dbs.locate(cluster.as_deref(), &database);
            silo.server.drop_database(&silo.name).await?;
        }
        dbs.server.drop_database(&dbs.pool_database).await?;
        self.control_db.drop_now().await?;
        let _ = std::fs::remove_dir_all(&self.data_dir);
        Ok(())
    }
}

/// A tenant as its storefront clients see it.
#[derive(Clone)]
pub struct Shop {
    pub id: TenantId,
    pub slug: String,
    pub token: String,
}

static CLIENTS: AtomicU32 = AtomicU32::new(1);

impl Shop {
    pub fn new(id: TenantId, slug: &str) -> Self {
        let claims = Claims {
            tenant_id: id,
            sub: "owner".into(),
            role: CallerRole::Owner,
            exp: Utc::now().timestamp() + 24 * 3600,
        };
        Self { id, slug: slug.into(), token: sign_hs256(JWT_SECRET, &claims) }
    }

    /// One storefront request, from a client address of its own (the per-IP
    /// limit is not what these tests are about).
    pub async fn call(
        &self,
        http: &reqwest::Client,
        storefront: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let n = CLIENTS.fetch_add(1, Ordering::Relaxed);
        let client = format!("10.{}.{}.{}", (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff);
        let mut request = http
            .request(method, format!("{storefront}{path}"))
            .bearer_auth(&self.token)
            .header("x-forwarded-for", client);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status();
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    }

    /// Creates `n` products with `stock` each, and `m` customers; returns their ids.
    pub async fn seed(
        &self,
        http: &reqwest::Client,
        storefront: &str,
        products: usize,
        customers: usize,
        stock: i32,
    ) -> anyhow::Result<(Vec<Uuid>, Vec<Uuid>)> {
        let mut product_ids = Vec::with_capacity(products);
        for i in 0..products {
            let body =
                json!({ "name": format!("Product {i}"), "price_minor": 100 + i, "currency": "usd", "stock": stock });
            product_ids.push(self.created(http, storefront, "/v1/products", body).await?);
        }
        let mut customer_ids = Vec::with_capacity(customers);
        let round = Uuid::new_v4().simple().to_string();
        for i in 0..customers {
            let email = format!("c{i}-{}@{}.example", &round[..8], self.slug);
            let body = json!({ "email": email, "name": format!("Customer {i}") });
            customer_ids.push(self.created(http, storefront, "/v1/customers", body).await?);
        }
        Ok((product_ids, customer_ids))
    }

    async fn created(&self, http: &reqwest::Client, storefront: &str, path: &str, body: Value) -> anyhow::Result<Uuid> {
        let (status, created) = self.call(http, storefront, Method::POST, path, Some(body)).await?;
        if status != StatusCode::CREATED {
            bail!("POST {path} for {}: {status} {created}", self.slug);
        }
        Ok(created["id"].as_str().context("created id")?.parse()?)
    }
}

/// One storefront request of a load run.
#[derive(Debug, Clone)]
pub struct Sample {
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    pub write: bool,
}

impl Sample {
    pub fn latency(&self) -> Duration {
        (self.finished - self.started).to_std().unwrap_or_default()
    }
}

/// What a load run did: every acknowledged write, every failure.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub samples: Vec<Sample>,
    pub failures: Vec<String>,
    pub orders: Vec<Uuid>,
    /// Units ordered per product.
    pub ordered: std::collections::HashMap<Uuid, i64>,
    pub customers: Vec<Uuid>,
}

/// Storefront traffic on one shop until `stop` turns true: customers created,
/// orders placed (each taking one unit of stock), catalogue pages read.
pub fn start_load(
    http: reqwest::Client,
    storefront: String,
    shop: Shop,
    products: Vec<Uuid>,
    mut customers: Vec<Uuid>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<LoadReport> {
    tokio::spawn(async move {
        let mut report = LoadReport::default();
        let mut i = 0usize;
        while !*stop.borrow_and_update() {
            i += 1;
            let (method, path, body) = match i % 4 {
                0 => (
                    Method::POST,
                    "/v1/customers",
                    Some(
                        json!({ "email": format!("load{i}-{}@{}.example", Uuid::new_v4().simple(), shop.slug), "name": "Load" }),
                    ),
                ),
                1 | 2 => {
                    let product = products[i % products.len()];
                    let customer = customers[i % customers.len()];
                    let items = json!([{ "product_id": product, "quantity": 1 }]);
                    (Method::POST, "/v1/orders", Some(json!({ "customer_id": customer, "items": items })))
                }
                _ => (Method::GET, "/v1/products?limit=20", None),
            };
            let write = method == Method::POST;
            let started = Utc::now();
            let outcome = shop.call(&http, &storefront, method, path, body.clone()).await;
            let finished = Utc::now();
            report.samples.push(Sample { started, finished, write });
            match outcome {
                Ok((status, created)) if status.is_success() => {
                    if let Some(id) = created["id"].as_str().and_then(|id| id.parse().ok()) {
                        match path {
                            "/v1/customers" => {
                                customers.push(id);
                                report.customers.push(id);
                            }
                            "/v1/orders" => {
                                report.orders.push(id);
                                let product = body.as_ref().and_then(|b| b["items"][0]["product_id"].as_str());
                                if let Some(product) = product.and_then(|p| p.parse().ok()) {
                                    *report.ordered.entry(product).or_default() += 1;
                                }
                            }
                            _ => {}
                        }
                    }
                }
                Ok((status, answer)) => report.failures.push(format!("{} {path}: {status} {answer}", shop.slug)),
                Err(error) => report.failures.push(format!("{} {path}: {error}", shop.slug)),
            }
            tokio::select! {
                _ = stop.changed() => {}
                () = tokio::time::sleep(Duration::from_millis(8)) => {}
            }
        }
        report
    })
}

/// Ids of the tenant's rows of `table` in `database`, read as the superuser;
/// none when the database does not exist.
pub async fn ids_in(server: &TenantServer, database: &str, table: &str, tenant: TenantId) -> anyhow::Result<Vec<Uuid>> {
    let connect = |database: &str| {
        sqlx::postgres::PgPoolOptions::new().max_connections(1).connect_with(server.admin_options(database))
    };
    let admin = connect("postgres").await?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(database)
        .fetch_one(&admin)
        .await?;
    admin.close().await;
    if !exists {
        return Ok(Vec::new());
    }
    let pool = connect(database).await?;
    let ids =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT id FROM {table} WHERE tenant_id = $1 ORDER BY id")))
            .bind(tenant.0)
            .fetch_all(&pool)
            .await?;
    pool.close().await;
    Ok(ids)
}
