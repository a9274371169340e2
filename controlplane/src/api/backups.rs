//! A tenant's own backups (the `backups` job's) and where they stand against
//! its plan's recovery targets.

use axum::Json;
use axum::extract::State;
use indigo_core::api::{ErrorBody, TenantBackups};
use indigo_core::http::ApiPath;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::auth::Actor;
use super::error::ApiError;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(tenant_backups))
}

/// The tenant's backups, newest first, its plan's RPO and RTO, and whether its
/// newest backup is older than the RPO.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/backups", tag = "backups",
    params(("tenant" = String, Path, description = "Slug or id")),
    responses((status = 200, body = TenantBackups), (status = 404, description = "Unknown tenant", body = ErrorBody)))]
async fn tenant_backups(
    State(state): State<AppState>,
    _actor: Actor,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<TenantBackups>, ApiError> {
    let reference = super::tenants::tenant_ref(&raw)?;
    let tenant = crate::registry::get(&mut *state.db.acquire().await?, &reference).await?;
    let plan = state.plans.get(&tenant.spec.plan.to_string()).map_err(|e| ApiError::Internal(e.into()))?;
    let backups = crate::backups::list(&state.db, tenant.id).await?;
    let now = chrono::Utc::now();
    let newest = backups.first().map(|b| b.taken_at);
    let behind = crate::backups::behind(newest, tenant.created_at, plan.recovery.rpo_minutes, now);
    let newest_age_seconds = newest.map(|taken| (now - taken).num_seconds());
    Ok(Json(TenantBackups {
        tenant_id: tenant.id,
        slug: tenant.slug.to_string(),
        rpo_minutes: plan.recovery.rpo_minutes,
        rto_minutes: plan.recovery.rto_minutes,
        newest_age_seconds,
        behind,
        backups,
    }))
}
