//! The storefront API. Every `/v1` request passes the tenant gate first: the
//! bearer token is verified, the tenant is found in the routing table, its
//! lifecycle and limits are checked, and the request is metered. Handlers then
//! reach the tenant's rows only through [`TenantCtx`]: a transaction, or a
//! one-message read, whose first act is to set `app.current_tenant`, which
//! row-level security binds; or a catalogue read on a connection bound to the
//! tenant, which checks that binding in the same statement.

mod customers;
mod descriptions;
pub mod error;
mod orders;
mod products;
mod recommendations;
mod search;
mod tenant;

use indigo_core::openapi::{BearerAuth, Refusals};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use indigo_core::api::{AiUsage, UsageEvent};
use indigo_core::http::{MAX_BODY_BYTES, Rejection, error_response};
use indigo_core::tenant::Lifecycle;
use indigo_tenantdb::retry::RetryLater;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tower_http::catch_panic::CatchPanicLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::auth::{AuthError, Verifier};
use crate::catalogue_cache::CatalogueCache;
use crate::descriptions::DescriptionWriter;
use crate::limits::{Limiter, Refusal};
use crate::metering::Meter;
use crate::personalize::Personalize;
use crate::routing::{Database, Routes};
pub use error::StoreError;
pub use tenant::TenantCtx;
use tenant::{CatalogueRead, JsonBody, Literal, OneTripRead};

#[derive(Clone)]
pub struct AppState {
    pub routes: Arc<Routes>,
    pub verifier: Verifier,
    pub limiter: Arc<Limiter>,
    pub meter: Meter,
    /// Who writes product descriptions: Bedrock, or the built-in writer.
    pub descriptions: Arc<DescriptionWriter>,
    /// Amazon Personalize, for tenants whose settings name a campaign; else the built-in recommender.
    pub personalize: Option<Arc<Personalize>>,
    /// The catalogue's reads cached in Redis, when one is configured.
    pub catalogue_cache: Option<Arc<CatalogueCache>>,
    pub metrics: PrometheusHandle,
    /// Whether to meter (on in production; the benchmark compares both).
    pub metering: bool,
    /// Take the client address from the last `X-Forwarded-For` hop (set by our
    /// load balancer) instead of the socket peer. Only behind a proxy that sets it.
    pub trust_forwarded_for: bool,
}

impl AppState {
    pub fn new(routes: Arc<Routes>, verifier: Verifier, meter: Meter) -> Self {
        Self {
            routes,
            verifier,
            limiter: Arc::default(),
            meter,
            descriptions: Arc::new(DescriptionWriter::Embedded),
            personalize: None,
            catalogue_cache: None,
            metrics: indigo_core::http::prometheus(),
            metering: true,
            trust_forwarded_for: false,
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Indigo storefront API",
        description = "Products, customers, orders and search of one tenant, named by the bearer JWT's `tenant_id`."
    ),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
struct ApiDoc;

pub fn router(state: AppState) -> Router {
    // Shared, not cloned: every request's extractors take the state.
    let state = Arc::new(state);
    let (storefront, mut openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(products::router())
        .merge(descriptions::router())
        .merge(search::router())
        .merge(recommendations::router())
        .merge(customers::router())
        .merge(orders::router())
        .split_for_parts();
    Refusals { rate_limited: true }.document(&mut openapi);
    let openapi = Json(openapi);
    storefront
        .route_layer(middleware::from_fn_with_state(state.clone(), tenant_gate))
        .route("/healthz", get(|| async { Json(json!({ "status": "ok" })) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(move || async move { openapi.clone() }))
        .fallback(|| async { error_response(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            error_response(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this path")
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(CatchPanicLayer::custom(|_| {
            error_response(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; see the server log")
        }))
        .layer(middleware::from_fn(indigo_core::traces::request_span))
        .with_state(state)
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.routes.loaded() {
        Json(json!({ "status": "ready", "routing_version": state.routes.version() })).into_response()
    } else {
        error_response(StatusCode::SERVICE_UNAVAILABLE, "not_ready", "no routing table loaded yet")
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}

/// How long a write that met a moved tenant waits for the routing table to
/// name its new database, and how often it is replayed.
const MOVE_WAIT: Duration = Duration::from_secs(10);
const MOVE_REPLAYS: u32 = 2;
/// Replays of a request whose transaction the database aborted; the other
/// party of a deadlock has usually finished by the first.
const ABORT_REPLAYS: u32 = 2;

async fn tenant_gate(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Result<Response, StoreError> {
    let started = Instant::now();
    let token = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| StoreError::Unauthorized(AuthError::Missing.to_string()))?;
    let claims = state.verifier.verify(token.trim()).await.map_err(|e| StoreError::Unauthorized(e.to_string()))?;
    indigo_core::traces::record_tenant(claims.tenant_id);
    if !state.routes.loaded() {
        return Err(StoreError::NotReady);
    }
    let route = state
        .routes
        .route(claims.tenant_id)
        .filter(|r| r.lifecycle != Lifecycle::Deleted)
        .ok_or_else(|| StoreError::Unauthorized("unknown tenant".into()))?;
    if route.lifecycle == Lifecycle::Suspended {
        return Err(StoreError::Suspended);
    }
    let mut database_url = route.database_url.clone().ok_or(StoreError::Unavailable)?;
    let client = client_address(&req, state.trust_forwarded_for);
    state.limiter.admit(claims.tenant_id, &route.plan, client).await.map_err(|refusal| match refusal {
        Refusal::ClientRate { retry_after } => StoreError::TooMany {
            code: "rate_limited",
            message: "too many requests from this client".into(),
            retry_after,
        },
        Refusal::TenantRate { retry_after } => StoreError::TooMany {
            code: "rate_limited",
            message: format!(
                "the {} plan allows {} requests per second",
                route.plan.name, route.plan.rate_limit.requests_per_second
            ),
            retry_after,
        },
        Refusal::DailyCalls { limit, retry_after } => StoreError::TooMany {
            code: "daily_limit",
            message: format!("the {} plan allows {limit} API calls per day", route.plan.name),
            retry_after,
        },
    })?;
    let tenant_id = claims.tenant_id;
    let path = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_default();
    let tenant_ctx = |route: Arc<indigo_core::api::Route>, database: Database| TenantCtx {
        claims: claims.clone(),
        route,
        pool: database.pool,
        sessions: database.sessions,
        cache: state.catalogue_cache.clone(),
    };
    let response = if req.method().is_safe() {
        // A read meets no move fence and no transaction worth running again
        // (reads run at read committed and lock nothing): it runs once, uncopied.
        let database = state.routes.database(&database_url)?;
        req.extensions_mut().insert(tenant_ctx(route, database));
        next.run(req).await
    } else {
        // Kept whole, so that a write held through a move can be replayed on the
        // tenant's new database: the client sees a slow answer, not a failure.
        let (parts, body) = req.into_parts();
        let body = axum::body::to_bytes(body, MAX_BODY_BYTES).await.map_err(|_| Rejection::too_large())?;
        let mut route = route;
        let (mut moves, mut aborts) = (0, 0);
        loop {
            let database = state.routes.database(&database_url)?;
            let mut attempt = Request::from_parts(parts.clone(), Body::from(body.clone()));
            attempt.extensions_mut().insert(tenant_ctx(route.clone(), database));
            let response = next.clone().run(attempt).await;
            match response.extensions().get::<RetryLater>() {
                Some(RetryLater::Moved) if moves < MOVE_REPLAYS => {
                    moves += 1;
                    let Some(moved) = state.routes.await_new_database(tenant_id, &database_url, MOVE_WAIT).await else {
                        break response;
                    };
                    database_url = moved.database_url.clone().ok_or(StoreError::Unavailable)?;
                    route = moved;
                }
                Some(RetryLater::Aborted) if aborts < ABORT_REPLAYS => aborts += 1,
                _ => break response,
            }
        }
    };
    if state.metering {
        let event_type = if path == "/v1/search" { "search_query" } else { "api_call" };
        state.meter.record(UsageEvent {
            id: uuid::Uuid::now_v7(),
            tenant_id,
            event_type: event_type.into(),
            quantity: 1.0,
            route: Some(path),
            status: Some(response.status().as_u16()),
            latency_ms: Some(u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX)),
            occurred_at: chrono::Utc::now(),
            ai: None,
        });
    }
    Ok(response)
}

/// Who is calling, for the per-client limit: the socket peer, or behind a
/// trusted load balancer the hop it appended last to `X-Forwarded-For` (the
/// leftmost entries are whatever the client sent, so they are not trusted).
fn client_address(req: &Request, trust_forwarded_for: bool) -> Option<std::net::IpAddr> {
    if trust_forwarded_for
        && let Some(last_hop) = req
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            // Only the very last hop: when it does not parse, an earlier (client-written) one must not stand in.
            .next_back()
            .and_then(|hop| hop.trim().parse().ok())
    {
        return Some(last_hop);
    }
    req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip())
}

/// Whether the caller's tenant may make an AI call now: 403 `plan_limit` once
/// its plan's monthly AI credits are used, so a refused call costs nothing.
fn ai_call_allowed(state: &AppState, tenant: &TenantCtx) -> Result<(), StoreError> {
    state
        .limiter
        .admit_ai(tenant.claims.tenant_id, &tenant.route.plan)
        .map_err(|limit| StoreError::PlanLimit { what: "ai_credits", limit })
}

/// An AI call a handler made for `tenant` (a model, Personalize): its units
/// count against the plan's monthly credits at once, at the routing table's
/// rates, and go to the usage store as one `ai_request` event, which prices
/// them (quantity 0).
fn ai_call_made(state: &AppState, tenant: indigo_core::tenant::TenantId, route: &str, usage: AiUsage) {
    let units = u64::from(usage.input_tokens) + u64::from(usage.output_tokens);
    match state.routes.ai_credits(&usage.service, units) {
        Some(credits) => state.limiter.spend_ai(tenant, credits),
        None => tracing::warn!(service = usage.service, "no AI credit rate for this service in the routing table"),
    }
    if state.metering {
        state.meter.record(UsageEvent {
            id: uuid::Uuid::now_v7(),
            tenant_id: tenant,
            event_type: "ai_request".into(),
            quantity: 0.0,
            route: Some(route.into()),
            status: Some(200),
            latency_ms: None,
            occurred_at: chrono::Utc::now(),
            ai: Some(usage),
        });
    }
}

/// A UUID from a path, or 400 `invalid_id`.
fn parse_id(raw: &str) -> Result<uuid::Uuid, StoreError> {
    raw.parse()
        .map_err(|_| StoreError::Rejected(Rejection::bad_request("invalid_id", format!("`{raw}` is not a valid id"))))
}

/// Page size from a query: 1 to 100, default 20.
fn page_limit(raw: Option<i64>) -> Result<i64, StoreError> {
    match raw.unwrap_or(20) {
        n @ 1..=100 => Ok(n),
        _ => Err(StoreError::Rejected(Rejection::bad_request("invalid_query", "limit must be between 1 and 100"))),
    }
}
