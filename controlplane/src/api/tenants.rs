//! `/v1/tenants`: the registry's spec changes and reads.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use indigo_core::api::{
    ChangePlanRequest, CreateTenantRequest, ErrorBody, LifecycleRequest, Page, PlanChangePreview, Tenant,
    TenantSettings,
};
use indigo_core::http::{ApiJson, ApiPath, ApiQuery, OptionalJson, RequestId};
use indigo_core::tenant::{Email, Isolation, Lifecycle, Phase, Role, Slug, TenantName};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::auth::Actor;
use super::error::ApiError;
use super::idempotency::{self, IdempotencyKey};
use crate::registry::{self, ListFilter, NewTenant, RegistryError, TenantRef};
use crate::workflow;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_tenants, create_tenant))
        .routes(routes!(get_tenant, delete_tenant))
        .routes(routes!(change_plan))
        .routes(routes!(plan_change_preview))
        .routes(routes!(suspend_tenant))
        .routes(routes!(resume_tenant))
        .routes(routes!(get_settings, put_settings))
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::NotFound(tenant) => ApiError::NotFound(format!("tenant `{tenant}`")),
            RegistryError::SlugTaken(_) => ApiError::conflict("slug_taken", e.to_string()),
            RegistryError::Deleted(_) => ApiError::conflict("tenant_deleted", e.to_string()),
            RegistryError::Pending(_) => ApiError::conflict("tenant_pending", e.to_string()),
            RegistryError::Corrupt { .. } => ApiError::Internal(e.into()),
            RegistryError::Database(db) => db.into(),
        }
    }
}

/// A tenant named in a path; a name that cannot be a tenant is simply not found.
pub(super) fn tenant_ref(raw: &str) -> Result<TenantRef, ApiError> {
    TenantRef::parse(raw).map_err(|_| ApiError::NotFound(format!("tenant `{raw}`")))
}

/// The tenant a path names by slug or id, or 404.
pub(super) async fn find(state: &AppState, raw: &str) -> Result<Tenant, ApiError> {
    let reference = tenant_ref(raw)?;
    let mut conn = state.db.acquire().await?;
    let tenant = registry::get(&mut conn, &reference).await?;
    indigo_core::traces::record_tenant(tenant.id);
    Ok(tenant)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListParams {
    /// Only tenants on this plan.
    plan: Option<String>,
    /// Only tenants in this lifecycle (`pending`: being onboarded).
    lifecycle: Option<Lifecycle>,
    /// Only tenants placed so.
    isolation: Option<Isolation>,
    /// Only tenants in this phase.
    phase: Option<Phase>,
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// List tenants, by slug, filtered and paginated.
#[utoipa::path(get, path = "/v1/tenants", tag = "tenants", params(ListParams),
    responses((status = 200, body = Page<Tenant>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn list_tenants(
    State(state): State<AppState>,
    _actor: Actor,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<Page<Tenant>>, ApiError> {
    let limit = params.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad_request("invalid_query", "limit must be between 1 and 500"));
    }
    if let Some(plan) = &params.plan {
        state.plans.get(plan).map_err(|e| ApiError::bad_request("invalid_query", e.to_string()))?;
    }
    let filter = ListFilter {
        plan: params.plan,
        lifecycle: params.lifecycle,
        isolation: params.isolation,
        phase: params.phase,
        after: params.cursor,
        limit,
    };
    let mut conn = state.db.acquire().await?;
    Ok(Json(registry::list(&mut conn, &filter).await?))
}

/// Register a tenant: recorded `pending`, then its onboarding workflow sets up its
/// database, billing, search and sample data and makes it `active`.
#[utoipa::path(post, path = "/v1/tenants", tag = "tenants", request_body = CreateTenantRequest,
    params(("Idempotency-Key" = String, Header, description = "Unique per intended change; a retry with the same key replays the answer")),
    responses((status = 201, body = Tenant), (status = 409, description = "Slug taken or key reused", body = ErrorBody),
              (status = 422, description = "Unknown plan, invalid slug, name or email", body = ErrorBody)))]
async fn create_tenant(
    State(state): State<AppState>,
    actor: Actor,
    key: IdempotencyKey,
    RequestId(request_id): RequestId,
    ApiJson(request): ApiJson<CreateTenantRequest>,
) -> Result<Response, ApiError> {
    actor.require(Role::Operator)?;
    let new = NewTenant {
        slug: Slug::parse(&request.slug).map_err(|e| ApiError::invalid("invalid_slug", e))?,
        name: TenantName::parse(&request.name).map_err(|e| ApiError::invalid("invalid_name", e))?,
        owner_email: Email::parse(&request.owner_email).map_err(|e| ApiError::invalid("invalid_email", e))?,
        plan: state.plans.get(&request.plan).map_err(|e| ApiError::invalid("unknown_plan", e))?,
        lifecycle: Lifecycle::Pending,
    };
    idempotency::run_once(&state, &key, &actor, &request, StatusCode::CREATED, async |tx| {
        Ok(workflow::onboard(tx, &actor, request_id.as_deref(), new).await?.0)
    })
    .await
}

/// Get a tenant by slug or id.
#[utoipa::path(get, path = "/v1/tenants/{tenant}", tag = "tenants",
    params(("tenant" = String, Path, description = "Slug or id")),
    responses((status = 200, body = Tenant), (status = 404, body = ErrorBody)))]
async fn get_tenant(
    State(state): State<AppState>,
    _actor: Actor,
    ApiPath(tenant): ApiPath<String>,
) -> Result<Json<Tenant>, ApiError> {
    let tenant = tenant_ref(&tenant)?;
    let mut conn = state.db.acquire().await?;
    Ok(Json(registry::get(&mut conn, &tenant).await?))
}

/// Change a tenant's plan: the new plan's limits apply at once, and a tier-change workflow
/// moves the tenant between the pool and a silo when the isolation changes, online.
/// Asking for the current plan changes nothing; a plan whose limits the tenant's rows already
/// exceed is refused (`409 over_limit`).
#[utoipa::path(put, path = "/v1/tenants/{tenant}/plan", tag = "tenants", request_body = ChangePlanRequest,
    params(("tenant" = String, Path, description = "Slug or id"), ("Idempotency-Key" = String, Header)),
    responses((status = 202, description = "Spec recorded; status follows", body = Tenant),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody),
              (status = 502, description = "The tenant's database did not answer", body = ErrorBody)))]
async fn change_plan(
    State(state): State<AppState>,
    actor: Actor,
    key: IdempotencyKey,
    RequestId(request_id): RequestId,
    ApiPath(raw): ApiPath<String>,
    ApiJson(request): ApiJson<ChangePlanRequest>,
) -> Result<Response, ApiError> {
    actor.require(Role::Operator)?;
    let tenant = tenant_ref(&raw)?;
    let plan = state.plans.get(&request.plan).map_err(|e| ApiError::invalid("unknown_plan", e))?;
    idempotency::run_once(&state, &key, &actor, &request, StatusCode::ACCEPTED, async |tx| {
        // A plan the tenant's rows already exceed is refused before anything changes.
        let current = registry::get(tx, &tenant).await?;
        if current.spec.plan.as_str() != plan.name.as_str() {
            let usage = workflow::preview::Usage::of(&state.db, state.databases.as_ref(), &current)
                .await
                .map_err(preview_failed)?;
            if let Some(refusal) = workflow::preview::over_limits(&usage, plan).into_iter().next() {
                return Err(ApiError::Conflict { code: "over_limit", message: refusal.message });
            }
            let into_a_silo = plan.isolation == Isolation::Silo
                && current.status.placement.as_ref().is_none_or(|p| p.isolation != Isolation::Silo);
            if into_a_silo && let Some(refusal) = workflow::preview::silo_quota(&state.db, state.max_silos).await? {
                return Err(ApiError::Conflict { code: "provider_quota", message: refusal.message });
            }
        }
        Ok(workflow::change_plan(tx, &actor, request_id.as_deref(), &tenant, plan).await?)
    })
    .await
}

pub(super) fn preview_failed(error: workflow::preview::PreviewError) -> ApiError {
    match error {
        workflow::preview::PreviewError::Control(e) => ApiError::Database(e),
        e @ (workflow::preview::PreviewError::TenantDatabase(_)
        | workflow::preview::PreviewError::Unreached(_)
        | workflow::preview::PreviewError::BackupStore(_)) => ApiError::Upstream(e.to_string()),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct PreviewParams {
    /// The plan to change to
    to: String,
}

/// What changing the tenant's plan to `to` would do, without changing anything: the rows that
/// would move and how long copying them should take at the rate this installation's moves have
/// reached, the write pause they had, what the tenant would run on, the prices, and what would
/// stop the change.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/plan-change", tag = "tenants",
    params(("tenant" = String, Path, description = "Slug or id"), PreviewParams),
    responses((status = 200, body = PlanChangePreview), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, description = "The tenant's plan is no longer sold", body = ErrorBody),
              (status = 422, body = ErrorBody),
              (status = 502, description = "The tenant's database did not answer", body = ErrorBody)))]
async fn plan_change_preview(
    State(state): State<AppState>,
    _actor: Actor,
    ApiPath(raw): ApiPath<String>,
    ApiQuery(params): ApiQuery<PreviewParams>,
) -> Result<Json<PlanChangePreview>, ApiError> {
    let to = state.plans.get(&params.to).map_err(|e| ApiError::invalid("unknown_plan", e))?;
    let tenant = find(&state, &raw).await?;
    let from = state.plans.get(tenant.spec.plan.as_str()).map_err(|e| ApiError::Conflict {
        code: "plan_retired",
        message: format!("the tenant's plan is no longer in the catalogue: {e}"),
    })?;
    let mut preview =
        workflow::preview::preview(&state.db, state.databases.as_ref(), &tenant, (from, to), state.max_silos)
            .await
            .map_err(preview_failed)?;
    if let Some(stripe) = &state.stripe
        && from.name != to.name
    {
        preview.proration = workflow::preview::proration(&state.db, stripe, &tenant, to).await;
    }
    Ok(Json(preview))
}

fn check_reason(request: &LifecycleRequest) -> Result<(), ApiError> {
    if request.reason.as_ref().is_some_and(|r| r.chars().count() > 500) {
        return Err(ApiError::invalid("invalid_reason", "reason must be at most 500 characters"));
    }
    Ok(())
}

async fn set_lifecycle(
    state: AppState,
    actor: Actor,
    key: IdempotencyKey,
    request_id: Option<String>,
    raw: String,
    request: LifecycleRequest,
    lifecycle: Lifecycle,
) -> Result<Response, ApiError> {
    actor.require(Role::Operator)?;
    let tenant = tenant_ref(&raw)?;
    check_reason(&request)?;
    idempotency::run_once(&state, &key, &actor, &request, StatusCode::ACCEPTED, async |tx| {
        let change =
            registry::set_lifecycle(tx, &actor, request_id.as_deref(), &tenant, lifecycle, request.reason.as_deref())
                .await?;
        Ok(change.tenant)
    })
    .await
}

/// Suspend a tenant: its storefront stops serving. Suspending a suspended tenant changes nothing.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/suspend", tag = "tenants", request_body(content = LifecycleRequest, description = "Optional"),
    params(("tenant" = String, Path, description = "Slug or id"), ("Idempotency-Key" = String, Header)),
    responses((status = 202, body = Tenant), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn suspend_tenant(
    State(state): State<AppState>,
    actor: Actor,
    key: IdempotencyKey,
    RequestId(request_id): RequestId,
    ApiPath(raw): ApiPath<String>,
    OptionalJson(request): OptionalJson<LifecycleRequest>,
) -> Result<Response, ApiError> {
    set_lifecycle(state, actor, key, request_id, raw, request, Lifecycle::Suspended).await
}

/// Resume a suspended tenant.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/resume", tag = "tenants", request_body(content = LifecycleRequest, description = "Optional"),
    params(("tenant" = String, Path, description = "Slug or id"), ("Idempotency-Key" = String, Header)),
    responses((status = 202, body = Tenant), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn resume_tenant(
    State(state): State<AppState>,
    actor: Actor,
    key: IdempotencyKey,
    RequestId(request_id): RequestId,
    ApiPath(raw): ApiPath<String>,
    OptionalJson(request): OptionalJson<LifecycleRequest>,
) -> Result<Response, ApiError> {
    set_lifecycle(state, actor, key, request_id, raw, request, Lifecycle::Active).await
}

/// Offboard a tenant (admin): its offboarding workflow suspends it, exports its
/// data, cancels its billing, deletes its data and records a deletion
/// certificate. Deleting a deleted (or offboarding) tenant changes nothing.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}", tag = "tenants",
    params(("tenant" = String, Path, description = "Slug or id"), ("Idempotency-Key" = String, Header)),
    responses((status = 202, body = Tenant), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_tenant(
    State(state): State<AppState>,
    actor: Actor,
    key: IdempotencyKey,
    RequestId(request_id): RequestId,
    ApiPath(raw): ApiPath<String>,
    OptionalJson(request): OptionalJson<LifecycleRequest>,
) -> Result<Response, ApiError> {
    actor.require(Role::Admin)?;
    let tenant = tenant_ref(&raw)?;
    check_reason(&request)?;
    idempotency::run_once(&state, &key, &actor, &request, StatusCode::ACCEPTED, async |tx| {
        Ok(workflow::offboard(tx, &actor, request_id.as_deref(), &tenant, request.reason.as_deref()).await?)
    })
    .await
}

async fn read_settings(
    conn: &mut sqlx::PgConnection,
    tenant: &TenantRef,
) -> Result<(Tenant, TenantSettings), ApiError> {
    let current = registry::get(conn, tenant).await?;
    let (timezone, personalize_campaign_arn): (Option<String>, Option<String>) = sqlx::query_as(
        "SELECT settings->>'timezone', settings->>'personalize_campaign_arn' FROM tenants WHERE id = $1",
    )
    .bind(current.id.0)
    .fetch_one(&mut *conn)
    .await?;
    Ok((current, TenantSettings { timezone: timezone.unwrap_or_else(|| "UTC".into()), personalize_campaign_arn }))
}

/// A tenant's settings (its time zone, its Personalize campaign).
#[utoipa::path(get, path = "/v1/tenants/{tenant}/settings", tag = "tenants",
    params(("tenant" = String, Path, description = "Slug or id")),
    responses((status = 200, body = TenantSettings), (status = 404, body = ErrorBody)))]
async fn get_settings(
    State(state): State<AppState>,
    _actor: Actor,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<TenantSettings>, ApiError> {
    let tenant = tenant_ref(&raw)?;
    Ok(Json(read_settings(&mut *state.db.acquire().await?, &tenant).await?.1))
}

/// Change a tenant's settings (operator). The time zone must be one PostgreSQL knows; the
/// Personalize campaign, an ARN of one (left out: none).
#[utoipa::path(put, path = "/v1/tenants/{tenant}/settings", tag = "tenants", request_body = TenantSettings,
    params(("tenant" = String, Path, description = "Slug or id"), ("Idempotency-Key" = String, Header)),
    responses((status = 200, body = TenantSettings), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn put_settings(
    State(state): State<AppState>,
    actor: Actor,
    key: IdempotencyKey,
    RequestId(request_id): RequestId,
    ApiPath(raw): ApiPath<String>,
    ApiJson(request): ApiJson<TenantSettings>,
) -> Result<Response, ApiError> {
    actor.require(Role::Operator)?;
    let tenant = tenant_ref(&raw)?;
    idempotency::run_once(&state, &key, &actor, &request, StatusCode::OK, async |tx| {
        let known: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_timezone_names WHERE name = $1)")
            .bind(&request.timezone)
            .fetch_one(&mut *tx)
            .await?;
        if !known {
            return Err(ApiError::invalid(
                "invalid_timezone",
                format!("`{}` is not a time zone (IANA names such as Europe/Paris)", request.timezone),
            ));
        }
        if let Some(arn) = &request.personalize_campaign_arn
            && !indigo_core::api::is_personalize_campaign_arn(arn)
        {
            return Err(ApiError::invalid(
                "invalid_campaign_arn",
                format!("`{arn}` is not a Personalize campaign ARN (arn:aws:personalize:REGION:ACCOUNT:campaign/NAME)"),
            ));
        }
        let (current, before) = read_settings(tx, &tenant).await?;
        sqlx::query(
            "UPDATE tenants SET settings = settings
                 || jsonb_build_object('timezone', $2::text, 'personalize_campaign_arn', $3::text) WHERE id = $1",
        )
        .bind(current.id.0)
        .bind(&request.timezone)
        .bind(&request.personalize_campaign_arn)
        .execute(&mut *tx)
        .await?;
        crate::journal::Audit {
            actor: &actor,
            action: "tenant.settings",
            tenant_id: Some(current.id),
            request_id: request_id.as_deref(),
            before: Some(serde_json::json!(before)),
            after: Some(serde_json::json!(request)),
        }
        .append(tx)
        .await?;
        Ok(request.clone())
    })
    .await
}
