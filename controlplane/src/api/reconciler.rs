//! The reconciler through the admin API: its state, and per tenant a reconcile
//! now, a pause switch and a dry run.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use indigo_core::api::{ErrorBody, ReconcilePlan, ReconcilerStatus, Tenant};
use indigo_core::http::{ApiPath, RequestId};
use indigo_core::tenant::{Role, Slug};
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::auth::Actor;
use super::error::ApiError;
use super::idempotency::{self, IdempotencyKey};
use crate::journal::{self, Audit};
use crate::reconciler::ReconcilerControl;
use crate::registry;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(status))
        .routes(routes!(reconcile_now))
        .routes(routes!(dry_run))
        .routes(routes!(pause))
        .routes(routes!(unpause))
}

fn reconciler(state: &AppState) -> Result<&dyn ReconcilerControl, ApiError> {
    state.reconciler.as_deref().ok_or_else(|| ApiError::NotReady("this replica runs no reconciler".into()))
}

async fn tenant(state: &AppState, raw: &str) -> Result<Tenant, ApiError> {
    let reference = super::tenants::tenant_ref(raw)?;
    let mut conn = state.db.acquire().await?;
    Ok(registry::get(&mut conn, &reference).await?)
}

/// The reconciler's queue, throughput, errors, paused tenants and isolation audit.
#[utoipa::path(get, path = "/v1/reconciler", tag = "reconciler", responses((status = 200, body = ReconcilerStatus)))]
async fn status(State(state): State<AppState>, _actor: Actor) -> Result<Json<ReconcilerStatus>, ApiError> {
    let mut status = state.reconciler.as_ref().map(|r| r.status()).unwrap_or_default();
    let paused: Vec<String> = sqlx::query_scalar("SELECT slug FROM tenants WHERE reconcile_paused ORDER BY slug")
        .fetch_all(&state.db)
        .await?;
    status.paused_tenants = paused.iter().filter_map(|s| Slug::parse(s).ok()).collect();
    Ok(Json(status))
}

/// Reconcile a tenant now (operator).
#[utoipa::path(post, path = "/v1/tenants/{tenant}/reconcile", tag = "reconciler",
    params(("tenant" = String, Path, description = "Slug or id")),
    responses((status = 202), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn reconcile_now(
    State(state): State<AppState>,
    actor: Actor,
    ApiPath(raw): ApiPath<String>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    // Asking twice does no harm: the queue holds a tenant once. No idempotency key needed.
    actor.require(Role::Operator)?;
    let tenant = tenant(&state, &raw).await?;
    reconciler(&state)?.reconcile_now(tenant.id);
    Ok((StatusCode::ACCEPTED, Json(json!({ "queued": tenant.slug }))))
}

/// What a reconcile would change now, without changing anything.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/reconcile/plan", tag = "reconciler",
    params(("tenant" = String, Path, description = "Slug or id")),
    responses((status = 200, body = ReconcilePlan), (status = 404, body = ErrorBody)))]
async fn dry_run(
    State(state): State<AppState>,
    _actor: Actor,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<ReconcilePlan>, ApiError> {
    let tenant = tenant(&state, &raw).await?;
    let plan = reconciler(&state)?
        .dry_run(tenant.id)
        .await
        .map_err(|e| ApiError::NotReady(format!("cannot observe the tenant's resources: {e}")))?;
    Ok(Json(plan))
}

async fn set_paused(
    state: AppState,
    actor: Actor,
    key: IdempotencyKey,
    request_id: Option<String>,
    raw: String,
    paused: bool,
) -> Result<Response, ApiError> {
    actor.require(Role::Operator)?;
    let reference = super::tenants::tenant_ref(&raw)?;
    idempotency::run_once(&state, &key, &actor, &json!({ "paused": paused }), StatusCode::OK, async |tx| {
        let before = registry::get(tx, &reference).await?;
        sqlx::query("UPDATE tenants SET reconcile_paused = $2 WHERE id = $1")
            .bind(before.id.0)
            .bind(paused)
            .execute(&mut *tx)
            .await?;
        let action = if paused { "tenant.reconcile.pause" } else { "tenant.reconcile.resume" };
        Audit {
            actor: &actor,
            action,
            tenant_id: Some(before.id),
            request_id: request_id.as_deref(),
            before: None,
            after: Some(json!({ "reconcile_paused": paused })),
        }
        .append(tx)
        .await?;
        let (kind, verb) = if paused { ("ReconcilePaused", "paused") } else { ("ReconcileResumed", "resumed") };
        journal::publish(
            tx,
            Some(before.id),
            kind,
            &format!("reconciliation of {} {verb} by {}", before.slug, actor.name),
            json!({}),
        )
        .await?;
        Ok(json!({ "tenant": before.slug, "reconcile_paused": paused }))
    })
    .await
}

/// Stop reconciling a tenant (operator): observed, never acted on, until resumed.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/reconcile/pause", tag = "reconciler",
    params(("tenant" = String, Path, description = "Slug or id"), ("Idempotency-Key" = String, Header)),
    responses((status = 200), (status = 404, body = ErrorBody)))]
async fn pause(
    State(state): State<AppState>,
    actor: Actor,
    key: IdempotencyKey,
    RequestId(request_id): RequestId,
    ApiPath(raw): ApiPath<String>,
) -> Result<Response, ApiError> {
    set_paused(state, actor, key, request_id, raw, true).await
}

/// Reconcile a paused tenant again (operator).
#[utoipa::path(post, path = "/v1/tenants/{tenant}/reconcile/resume", tag = "reconciler",
    params(("tenant" = String, Path, description = "Slug or id"), ("Idempotency-Key" = String, Header)),
    responses((status = 200), (status = 404, body = ErrorBody)))]
async fn unpause(
    State(state): State<AppState>,
    actor: Actor,
    key: IdempotencyKey,
    RequestId(request_id): RequestId,
    ApiPath(raw): ApiPath<String>,
) -> Result<Response, ApiError> {
    set_paused(state, actor, key, request_id, raw, false).await
}
