//! The admin API: one router per module, merged here with the layers every
//! route shares (request ids, tracing, metrics, panics caught, body limit).

pub mod auth;
pub mod error;
pub mod idempotency;

mod backups;
mod cost;
mod events;
mod health;
mod jobs;
mod plans;
mod reconciler;
pub mod routing;
mod storefront;
mod tenants;
mod tokens;
mod usage;
pub mod webhooks;
mod workflows;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use indigo_core::plan::PlanCatalog;
use indigo_tenantdb::TenantDatabases;
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::reconciler::ReconcilerControl;
pub use error::ApiError;
use indigo_core::openapi::{self, BearerAuth, Refusals};
use indigo_core::tenant::Role;
use utoipa::openapi::path::ParameterIn;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub db: PgPool,
    pub plans: Arc<PlanCatalog>,
    /// SHA-256 of the configured bootstrap admin token, if any.
    pub bootstrap_admin_hash: Option<Arc<[u8]>>,
    pub metrics: PrometheusHandle,
    pub tenant_dbs: Arc<TenantDatabases>,
    /// This replica's reconciler, when it runs one.
    pub reconciler: Option<Arc<dyn ReconcilerControl>>,
    /// This replica's scheduled jobs, when it runs them.
    pub jobs: Option<Arc<crate::jobs::Jobs>>,
    /// Stripe webhook verification, when a webhook secret is configured.
    pub webhooks: Option<Arc<webhooks::WebhookConfig>>,
    /// The cost model of `policies/costs.toml`, once loaded.
    pub costs: Option<Arc<indigo_core::cost::CostModel>>,
    /// Per-tenant metrics, from the configured provider.
    pub tenant_metrics: Arc<dyn crate::providers::MetricsProvider>,
    /// The time zones a tenant's settings may name: the database's, read at start.
    pub time_zones: Arc<[String]>,
    /// Each token's request rate.
    pub token_rates: Arc<auth::TokenRates>,
    /// The longest a read may take as a whole (its statements have their own timeout).
    pub read_timeout: Duration,
    /// Wakes the data planes' requests waiting for a new routing table.
    pub routing_changes: routing::RoutingChanges,
    /// The data planes' Redis, where they count catalogue cache hits, when one is configured.
    pub data_plane_redis: Option<redis::Client>,
    /// Stripe, when billing is on: plan-change previews ask it for the proration.
    pub stripe: Option<Arc<crate::billing::Stripe>>,
    /// Where tenants' backups are kept.
    pub backups: crate::backups::BackupStore,
    /// How a tenant's database is reached (previews, backups, the recommender's standing).
    pub databases: Arc<dyn crate::providers::ReachDatabases>,
    /// The most silos the installation may run (`max_silos`); `None`: no limit.
    pub max_silos: Option<u32>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Indigo admin API",
        description = "Tenant registry, plans, events and audit trail of the Indigo control plane. \
                       Every mutating call needs an `Idempotency-Key` header.",
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "tenants", description = "The tenant registry: spec and status"),
        (name = "plans", description = "The plan catalogue from policies/plans.toml"),
        (name = "events", description = "Event stream and audit trail"),
        (name = "tokens", description = "API tokens (admin)"),
        (name = "usage", description = "The usage store's intake"),
        (name = "storefront", description = "The storefront's catalogue cache and recommender, per tenant"),
        (name = "reconciler", description = "Desired against actual state"),
        (name = "workflows", description = "Durable onboarding and offboarding workflows"),
        (name = "jobs", description = "Scheduled jobs: usage roll-up, billing sync, storage, limits, recommender"),
        (name = "cost", description = "Cost and margin per tenant"),
        (name = "backups", description = "Each tenant's own backups against its plan's RPO"),
        (name = "webhooks", description = "Stripe's webhook deliveries"),
        (name = "health", description = "Probes and metrics"),
    )
)]
struct ApiDoc;

/// The whole admin API, ready to serve.
pub fn router(state: AppState) -> Router {
    let (routes, mut openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(tenants::router())
        .merge(plans::router())
        .merge(events::router())
        .merge(tokens::router())
        .merge(routing::router())
        .merge(usage::router())
        .merge(storefront::router())
        .merge(reconciler::router())
        .merge(workflows::router())
        .merge(jobs::router())
        .merge(cost::router())
        .merge(backups::router())
        .merge(webhooks::router())
        .merge(health::router())
        .split_for_parts();
    Refusals { rate_limited: true }.document(&mut openapi);
    let plans: Vec<String> = state.plans.names().map(str::to_owned).collect();
    for schema in ["CreateTenantRequest", "ChangePlanRequest"] {
        openapi::enumerate_property(&mut openapi, schema, "plan", &plans);
    }
    for place in [ParameterIn::Path, ParameterIn::Query] {
        openapi::enumerate_parameter(&mut openapi, place, "plan", &plans);
    }
    // The plan a change is previewed to (`/v1/tenants/{tenant}/plan-change?to=`).
    openapi::enumerate_parameter(&mut openapi, ParameterIn::Query, "to", &plans);
    openapi::enumerate_property(&mut openapi, "TenantSettings", "timezone", &state.time_zones);
    // Data-plane identities are the control plane's to make, not the API's.
    let person_roles: Vec<&str> = Role::ALL.iter().filter(|r| **r != Role::DataPlane).map(|r| r.as_str()).collect();
    openapi::enumerate_property(&mut openapi, "CreateTokenRequest", "role", &person_roles);
    routes
        .merge(health::openapi_route(openapi))
        .fallback(|| async { ApiError::NotFound("route".into()) })
        .method_not_allowed_fallback(|| async {
            indigo_core::http::error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this path",
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), bound_reads))
        .layer(middleware::from_fn_with_state(state.clone(), record_metrics))
        .layer(DefaultBodyLimit::max(indigo_core::http::MAX_BODY_BYTES))
        .layer(CatchPanicLayer::custom(|_| {
            indigo_core::http::error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error; see the server log",
            )
        }))
        .layer(middleware::from_fn(indigo_core::traces::request_span))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}

/// A read past the read timeout is given up (its queries with it) and answered
/// `503 request_timeout`: a viewer's heavy read cannot hold connections and a
/// core for as long as it likes, however many statements it runs. Changes are
/// not cut short midway; each of their statements is bounded by the query
/// timeout instead.
async fn bound_reads(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return next.run(req).await;
    }
    match tokio::time::timeout(state.read_timeout, next.run(req)).await {
        Ok(response) => response,
        Err(_) => {
            let limit = state.read_timeout.as_millis();
            tracing::warn!(limit_ms = limit, "a read took too long and was given up");
            indigo_core::http::retry_later("request_timeout", &format!("the read took longer than {limit} ms"))
        }
    }
}

async fn record_metrics(State(_): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().to_string();
    let route =
        req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "unmatched".into());
    let response = next.run(req).await;
    let labels = [("method", method), ("route", route), ("status", response.status().as_u16().to_string())];
    metrics::counter!("indigo_admin_requests_total", &labels).increment(1);
    metrics::histogram!("indigo_admin_request_duration_seconds", &labels).record(started.elapsed().as_secs_f64());
    response
}
