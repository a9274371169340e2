//! A tenant's own backups (the `backups` job's, and those asked for here),
//! where they stand against its plan's recovery targets, and restores from them.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use indigo_core::api::{
    ErrorBody, Placement, RestoreInto, RestorePreview, RestoreRequest, RestoreStarted, Tenant, TenantBackup,
    TenantBackups,
};
use indigo_core::http::{ApiJson, ApiPath, ApiQuery, RequestId};
use indigo_core::tenant::Role;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::auth::Actor;
use super::error::ApiError;
use super::idempotency::{self, IdempotencyKey};
use crate::backups;
use crate::registry;
use crate::workflow::restore as restoring;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(tenant_backups, take_backup))
        .routes(routes!(restore))
        .routes(routes!(restore_preview))
}

/// The tenant's backups, newest first, its plan's RPO and RTO, and whether its
/// newest backup is older than the RPO.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/backups", tag = "backups",
    params(("tenant" = String, Path, description = "Slug or id")),
    responses((status = 200, body = TenantBackups), (status = 404, description = "Unknown tenant", body = ErrorBody),
              (status = 409, description = "The tenant's plan is no longer sold", body = ErrorBody)))]
async fn tenant_backups(
    State(state): State<AppState>,
    _actor: Actor,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<TenantBackups>, ApiError> {
    let reference = super::tenants::tenant_ref(&raw)?;
    let tenant = registry::get(&mut *state.db.acquire().await?, &reference).await?;
    let plan = state.plans.get(tenant.spec.plan.as_str()).map_err(|e| ApiError::Conflict {
        code: "plan_retired",
        message: format!("the tenant's plan is no longer in the catalogue: {e}"),
    })?;
    let backups = backups::list(&state.db, tenant.id).await?;
    let now = chrono::Utc::now();
    let newest = backups.first().map(|b| b.taken_at);
    let behind = backups::behind(newest, tenant.created_at, plan.recovery.rpo_minutes, now);
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

/// Back the tenant up now, whatever the age of its newest backup (before a
/// risky change, say); answers once the backup is taken. It is kept and
/// pruned like the scheduled ones.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/backups", tag = "backups",
    params(("tenant" = String, Path, description = "Slug or id"), ("Idempotency-Key" = String, Header)),
    responses((status = 201, body = TenantBackup), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, description = "Unknown tenant", body = ErrorBody),
              (status = 409, description = "The tenant has no rows anywhere yet (not placed)", body = ErrorBody),
              (status = 422, body = ErrorBody),
              (status = 502, description = "The tenant's database did not answer", body = ErrorBody)))]
async fn take_backup(
    State(state): State<AppState>,
    actor: Actor,
    key: IdempotencyKey,
    ApiPath(raw): ApiPath<String>,
) -> Result<Response, ApiError> {
    actor.require(Role::Operator)?;
    let reference = super::tenants::tenant_ref(&raw)?;
    idempotency::run_once(&state, &key, &actor, &(), StatusCode::CREATED, async |tx| {
        let tenant = registry::get(tx, &reference).await?;
        let placement = placed(&tenant, "back up")?;
        // The daemon's failpoints, which its jobs carry (the crash tests arm them).
        let none = crate::failpoints::Failpoints::default();
        let failpoints = state.jobs.as_ref().map_or(&none, |jobs| &jobs.failpoints);
        let located = state
            .databases
            .reach(placement.cluster.as_deref(), &placement.database)
            .await
            .map_err(|e| ApiError::Upstream(format!("the tenant's database is out of reach: {e}")))?;
        backups::take(&state.db, &located, &state.backups, tenant.id.0, failpoints).await.map_err(|e| match e {
            backups::BackupError::Database(e) => ApiError::Database(e),
            tenant @ backups::BackupError::Tenant { .. } => ApiError::Upstream(tenant.to_string()),
        })
    })
    .await
}

/// Restore the tenant's rows from one of its backups (admin role: the rows
/// written since that backup are lost). A workflow of kind `restore` checks the
/// backup, backs the tenant's present rows up first, then holds the tenant's
/// writes (held, not refused; no other tenant waits) while one transaction
/// replaces its rows with the backup's and checks them against its checksums.
/// `into: new_silo` (a silo tenant only) first deletes the tenant's silo and
/// makes it again: the tenant answers 503 until the rows are in.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/restores", tag = "backups", request_body = RestoreRequest,
    params(("tenant" = String, Path, description = "Slug or id"), ("Idempotency-Key" = String, Header)),
    responses((status = 202, description = "Restore started; follow its workflow", body = RestoreStarted),
              (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, description = "Unknown tenant, or no such backup of it", body = ErrorBody),
              (status = 409, description = "Another workflow acts on the tenant, it is not placed, or (into a new silo) it is not in a silo", body = ErrorBody),
              (status = 422, body = ErrorBody)))]
async fn restore(
    State(state): State<AppState>,
    actor: Actor,
    key: IdempotencyKey,
    RequestId(request_id): RequestId,
    ApiPath(raw): ApiPath<String>,
    ApiJson(request): ApiJson<RestoreRequest>,
) -> Result<Response, ApiError> {
    actor.require(Role::Admin)?;
    let reference = super::tenants::tenant_ref(&raw)?;
    idempotency::run_once(&state, &key, &actor, &request, StatusCode::ACCEPTED, async |tx| {
        let tenant = registry::get(tx, &reference).await?;
        placed(&tenant, "restore")?;
        if request.into == RestoreInto::NewSilo && !restoring::in_silo(&tenant) {
            return Err(ApiError::Conflict { code: "not_in_silo", message: restoring::NOT_IN_SILO.into() });
        }
        if backups::find(&state.db, tenant.id, request.backup_id).await?.is_none() {
            return Err(ApiError::NotFound(format!("backup {} of tenant {}", request.backup_id, tenant.slug)));
        }
        let input = restoring::Input { backup_id: request.backup_id, into: request.into };
        let (tenant, workflow_id) =
            crate::workflow::restore(tx, &actor, request_id.as_deref(), &reference, input).await?;
        Ok(RestoreStarted { tenant_id: tenant.id, backup_id: request.backup_id, workflow_id })
    })
    .await
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct PreviewParams {
    /// One of the tenant's backups
    backup_id: uuid::Uuid,
    /// Where the backup's rows would go: `in_place` (the default) or `new_silo`
    #[param(inline)]
    into: Option<RestoreInto>,
}

/// What restoring the tenant from one of its backups would do, changing nothing: each table's
/// rows now and in the backup, whether the backup is intact, and what would stop the restore.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/restores/preview", tag = "backups",
    params(("tenant" = String, Path, description = "Slug or id"), PreviewParams),
    responses((status = 200, body = RestorePreview), (status = 400, body = ErrorBody),
              (status = 404, description = "Unknown tenant, or no such backup of it", body = ErrorBody),
              (status = 409, description = "The tenant has no rows anywhere yet (not placed)", body = ErrorBody),
              (status = 502, description = "The tenant's database did not answer", body = ErrorBody)))]
async fn restore_preview(
    State(state): State<AppState>,
    _actor: Actor,
    ApiPath(raw): ApiPath<String>,
    ApiQuery(params): ApiQuery<PreviewParams>,
) -> Result<Json<RestorePreview>, ApiError> {
    let reference = super::tenants::tenant_ref(&raw)?;
    let tenant = registry::get(&mut *state.db.acquire().await?, &reference).await?;
    placed(&tenant, "restore")?;
    let backup = backups::find(&state.db, tenant.id, params.backup_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("backup {} of tenant {}", params.backup_id, tenant.slug)))?;
    let into = params.into.unwrap_or_default();
    let preview = restoring::preview(&state.db, state.databases.as_ref(), &state.backups, &tenant, &backup, into)
        .await
        .map_err(super::tenants::preview_failed)?;
    Ok(Json(preview))
}

/// Where the tenant's rows are; `409 not_placed` before they are anywhere
/// (there is nothing to `act` on: back up, restore).
fn placed(tenant: &Tenant, act: &str) -> Result<Placement, ApiError> {
    tenant.status.placement.clone().ok_or_else(|| ApiError::Conflict {
        code: "not_placed",
        message: format!("the tenant has no rows anywhere yet; nothing to {act}"),
    })
}
