//! `/v1/events` and `/v1/audit`: what happened, and who changed what.

use axum::Json;
use axum::extract::State;
use indigo_core::api::{AuditEntry, ErrorBody, Event, Page};
use indigo_core::http::{ApiPath, ApiQuery};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::auth::Actor;
use super::error::ApiError;
use crate::journal::{self, Window};
use crate::registry;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_events))
        .routes(routes!(tenant_events))
        .routes(routes!(list_audit))
        .routes(routes!(tenant_audit))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct StreamParams {
    /// Only entries after this id (the previous page's `next_cursor`).
    after: Option<i64>,
    /// Only this kind (events) or action (audit).
    kind: Option<String>,
    /// Only this tenant (slug or id); on the fleet-wide endpoints.
    tenant: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

async fn window(state: &AppState, params: StreamParams, tenant: Option<&str>) -> Result<Window, ApiError> {
    let limit = params.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("invalid_query", "limit must be between 1 and 1000"));
    }
    let tenant_id = match tenant.or(params.tenant.as_deref()) {
        Some(raw) => {
            let tenant = super::tenants::tenant_ref(raw)?;
            let mut conn = state.db.acquire().await?;
            Some(registry::get(&mut conn, &tenant).await?.id)
        }
        None => None,
    };
    Ok(Window { tenant_id, after: params.after.unwrap_or(0), limit, kind: params.kind })
}

fn page<T>(items: Vec<T>, id: impl Fn(&T) -> i64, limit: i64) -> Page<T> {
    // A full page may have more behind it; an empty or short one is the end for now.
    let next_cursor = (items.len() as i64 == limit).then(|| items.last().map(|i| id(i).to_string())).flatten();
    Page { items, next_cursor }
}

/// The fleet's event stream, oldest first. Follow it by passing the last id as `after`.
#[utoipa::path(get, path = "/v1/events", tag = "events", params(StreamParams),
    responses((status = 200, body = Page<Event>), (status = 400, body = ErrorBody),
              (status = 404, description = "The tenant named in `tenant` is unknown", body = ErrorBody)))]
async fn list_events(
    State(state): State<AppState>,
    _actor: Actor,
    ApiQuery(params): ApiQuery<StreamParams>,
) -> Result<Json<Page<Event>>, ApiError> {
    let window = window(&state, params, None).await?;
    let mut conn = state.db.acquire().await?;
    Ok(Json(page(journal::events(&mut conn, &window).await?, |e| e.id, window.limit)))
}

/// One tenant's events.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/events", tag = "events",
    params(("tenant" = String, Path, description = "Slug or id"), StreamParams),
    responses((status = 200, body = Page<Event>), (status = 404, body = ErrorBody)))]
async fn tenant_events(
    State(state): State<AppState>,
    _actor: Actor,
    ApiPath(tenant): ApiPath<String>,
    ApiQuery(params): ApiQuery<StreamParams>,
) -> Result<Json<Page<Event>>, ApiError> {
    let window = window(&state, params, Some(&tenant)).await?;
    let mut conn = state.db.acquire().await?;
    Ok(Json(page(journal::events(&mut conn, &window).await?, |e| e.id, window.limit)))
}

/// The audit log, oldest first.
#[utoipa::path(get, path = "/v1/audit", tag = "events", params(StreamParams),
    responses((status = 200, body = Page<AuditEntry>), (status = 400, body = ErrorBody),
              (status = 404, description = "The tenant named in `tenant` is unknown", body = ErrorBody)))]
async fn list_audit(
    State(state): State<AppState>,
    _actor: Actor,
    ApiQuery(params): ApiQuery<StreamParams>,
) -> Result<Json<Page<AuditEntry>>, ApiError> {
    let window = window(&state, params, None).await?;
    let mut conn = state.db.acquire().await?;
    Ok(Json(page(journal::audit_entries(&mut conn, &window).await?, |e| e.id, window.limit)))
}

/// One tenant's audit trail.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/audit", tag = "events",
    params(("tenant" = String, Path, description = "Slug or id"), StreamParams),
    responses((status = 200, body = Page<AuditEntry>), (status = 404, body = ErrorBody)))]
async fn tenant_audit(
    State(state): State<AppState>,
    _actor: Actor,
    ApiPath(tenant): ApiPath<String>,
    ApiQuery(params): ApiQuery<StreamParams>,
) -> Result<Json<Page<AuditEntry>>, ApiError> {
    let window = window(&state, params, Some(&tenant)).await?;
    let mut conn = state.db.acquire().await?;
    Ok(Json(page(journal::audit_entries(&mut conn, &window).await?, |e| e.id, window.limit)))
}
