//! Probes, metrics and the OpenAPI document.

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::ApiError;
use crate::db;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(healthz)).routes(routes!(readyz)).routes(routes!(metrics))
}

/// The OpenAPI document generated from the handlers' annotations.
pub fn openapi_route(openapi: utoipa::openapi::OpenApi) -> Router<AppState> {
    let document = Json(openapi);
    Router::new().route("/openapi.json", get(move || async move { document.clone() }))
}

/// Liveness: the process is up.
#[utoipa::path(get, path = "/healthz", tag = "health", security(()), responses((status = 200)))]
async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Readiness: the control database answers and carries every migration this build knows.
#[utoipa::path(get, path = "/readyz", tag = "health", security(()),
    responses((status = 200), (status = 503, body = indigo_core::api::ErrorBody)))]
async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&state.db)
        .await
        .map_err(|e| ApiError::NotReady(format!("control database unavailable: {e}")))?;
    let expected = db::MIGRATOR.iter().count() as i64;
    if applied < expected {
        return Err(ApiError::NotReady(format!("{applied} of {expected} migrations applied")));
    }
    Ok(Json(json!({ "status": "ready", "migrations": applied })))
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "health", security(()), responses((status = 200, content_type = "text/plain")))]
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}
