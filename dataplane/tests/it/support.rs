//! A storefront in-process against a real, freshly provisioned tenant database,
//! reached as the real app role.

#![allow(dead_code)]

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use indigo_core::api::{Route, RoutingTable};
use indigo_core::plan::{Plan, PlanCatalog};
use indigo_core::tenant::{Isolation, Lifecycle, Slug, TenantId};
use indigo_dataplane::api::{self, AppState};
use indigo_dataplane::auth::{CallerRole, Claims, Verifier, sign_hs256};
use indigo_dataplane::metering::Meter;
use indigo_dataplane::routing::Routes;
use indigo_tenantdb::schema::TenantServer;
use serde_json::{Value, json};
use tower::ServiceExt;

pub const SECRET: &[u8] = b"storefront-test-secret-of-32-bytes-or-more";

pub fn catalog() -> PlanCatalog {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/plans.toml")).unwrap();
    PlanCatalog::parse("plans.toml", &text).unwrap()
}

/// The AI credit rates of `policies/costs.toml`, as the control plane routes them.
pub fn credit_rates() -> std::collections::BTreeMap<String, f64> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/costs.toml")).unwrap();
    indigo_core::cost::CostModel::parse("costs.toml", &text).unwrap().credit_rates
}

pub fn plan(name: &str) -> Plan {
    catalog().get(name).unwrap().clone()
}

pub struct Store {
    pub router: Router,
    pub state: AppState,
    pub server: TenantServer,
    pub database: String,
    pub app_url: String,
    pub routes: Vec<Route>,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub body: Value,
}

impl Reply {
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or_else(|| panic!("no error code in {} ({})", self.body, self.status))
    }
}

pub fn route(tenant: TenantId, slug: &str, plan: Plan, database_url: Option<String>) -> Route {
    Route {
        tenant_id: tenant,
        slug: Slug::parse(slug).unwrap(),
        lifecycle: Lifecycle::Active,
        isolation: plan.isolation,
        database_url,
        next_database_url: None,
        database_login_secret: None,
        next_database_login_secret: None,
        plan,
        routing_version: 1,
        personalize_campaign_arn: None,
    }
}

impl Store {
    /// A provisioned database and a storefront routing `tenants` (slug, plan) to it.
    pub async fn start(tenants: &[(&str, Plan)]) -> (Self, Vec<TenantId>) {
        Self::start_with_connections(tenants, 8).await
    }

    /// As [`Store::start`], the database reached through at most `connections` at once.
    pub async fn start_with_connections(tenants: &[(&str, Plan)], connections: u32) -> (Self, Vec<TenantId>) {
        let server = TenantServer::new(&indigo_e2e::server_url()).unwrap();
        let database = format!("indigo_store_test_{}", uuid::Uuid::new_v4().simple());
        server.provision(&database).await.expect("tenant database provisioned");
        let app_url = server.app_url(&database);
        let ids: Vec<TenantId> = tenants.iter().map(|_| TenantId::new()).collect();
        let routes: Vec<Route> = tenants
            .iter()
            .zip(&ids)
            .map(|((slug, plan), id)| route(*id, slug, plan.clone(), Some(app_url.clone())))
            .collect();
        let store = Self::with_pool(server, database, app_url, routes, connections);
        (store, ids)
    }

    pub fn with_routes(server: TenantServer, database: String, app_url: String, routes: Vec<Route>) -> Self {
        Self::with_pool(server, database, app_url, routes, 8)
    }

    fn with_pool(
        server: TenantServer,
        database: String,
        app_url: String,
        routes: Vec<Route>,
        connections: u32,
    ) -> Self {
        let table = RoutingTable { version: 1, routes: routes.clone(), ai_credit_rates: credit_rates() };
        let spool = std::env::temp_dir().join(format!("indigo-spool-{database}"));
        let routes_table = Arc::new(Routes::fixed(table, connections));
        let state = AppState::new(routes_table, Verifier::hs256(SECRET).unwrap(), Meter::new(None, spool));
        Self { router: api::router(state.clone()), state, server, database, app_url, routes }
    }

    /// Another replica of this storefront (the same routes and database),
    /// its state changed by `configure`.
    pub fn replica(&self, configure: impl FnOnce(&mut AppState)) -> Self {
        let mut state = self.state.clone();
        configure(&mut state);
        Self {
            router: api::router(state.clone()),
            state,
            server: self.server.clone(),
            database: self.database.clone(),
            app_url: self.app_url.clone(),
            routes: self.routes.clone(),
        }
    }

    /// Replaces the routing table (e.g. to suspend a tenant).
    pub fn reroute(&self, routes: Vec<Route>) {
        self.state.routes.replace(RoutingTable { version: 2, routes, ai_credit_rates: credit_rates() });
    }

    pub async fn cleanup(self) {
        self.state.routes.pool(&self.app_url).unwrap().close().await;
        self.server.drop_database(&self.database).await.unwrap();
    }

    pub async fn call(&self, token: Option<&str>, method: Method, path: &str, body: Option<Value>) -> Reply {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = match body {
            Some(body) => request.header(header::CONTENT_TYPE, "application/json").body(Body::from(body.to_string())),
            None => request.body(Body::empty()),
        }
        .unwrap();
        self.send(request).await
    }

    pub async fn send(&self, request: Request<Body>) -> Reply {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply { status, headers, body }
    }

    pub async fn get(&self, token: &str, path: &str) -> Reply {
        self.call(Some(token), Method::GET, path, None).await
    }

    pub async fn post(&self, token: &str, path: &str, body: Value) -> Reply {
        self.call(Some(token), Method::POST, path, Some(body)).await
    }

    pub async fn product(&self, token: &str, name: &str, price: i64, stock: i32) -> Value {
        let reply = self
            .post(
                token,
                "/v1/products",
                json!({ "name": name, "price_minor": price, "currency": "usd", "stock": stock, "tags": ["demo"] }),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        reply.body
    }

    pub async fn customer(&self, token: &str, email: &str) -> Value {
        let reply = self.post(token, "/v1/customers", json!({ "email": email, "name": "Pat" })).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        reply.body
    }

    /// A connection as the data plane's own role, for checks at the SQL level.
    pub async fn app_connection(&self) -> sqlx::PgConnection {
        use sqlx::ConnectOptions;
        self.server.app_options(&self.database).connect().await.unwrap()
    }
}

pub fn token(tenant: TenantId, role: CallerRole) -> String {
    token_expiring(tenant, role, chrono::Utc::now().timestamp() + 3600)
}

pub fn token_expiring(tenant: TenantId, role: CallerRole, exp: i64) -> String {
    sign_hs256(SECRET, &Claims { tenant_id: tenant, sub: "user-1".into(), role, exp })
}

/// A token for `subject` (a shopper, with role `customer`).
pub fn token_for(tenant: TenantId, role: CallerRole, subject: &str) -> String {
    let exp = chrono::Utc::now().timestamp() + 3600;
    sign_hs256(SECRET, &Claims { tenant_id: tenant, sub: subject.into(), role, exp })
}

pub fn silo_route(tenant: TenantId) -> Route {
    let mut route = route(tenant, "silo-shop", plan("enterprise"), None);
    route.isolation = Isolation::Silo;
    route
}
