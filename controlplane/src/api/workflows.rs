//! `/v1/workflows`: durable workflows (onboarding, offboarding, tier changes)
//! with each step's state; retry a failed one, cancel a running one.
//! `/v1/moves`: the tier changes' moves between pool and silo, with progress.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use indigo_core::api::{ErrorBody, TenantMove, Workflow, WorkflowState};
use indigo_core::http::{ApiPath, ApiQuery};
use indigo_core::tenant::Role;
use serde::Deserialize;
use serde_json::json;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::auth::Actor;
use super::error::ApiError;
use super::idempotency::{self, IdempotencyKey};
use crate::registry;
use crate::workflow::store::{self, ListFilter};
use crate::workflow::{Kind, StartError, WorkflowError};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_workflows))
        .routes(routes!(get_workflow))
        .routes(routes!(retry_workflow))
        .routes(routes!(cancel_workflow))
        .routes(routes!(list_moves))
}

impl From<WorkflowError> for ApiError {
    fn from(e: WorkflowError) -> Self {
        match e {
            WorkflowError::NotFound(id) => ApiError::NotFound(format!("workflow `{id}`")),
            WorkflowError::Busy { .. } => ApiError::conflict("workflow_in_progress", e.to_string()),
            WorkflowError::WrongState { .. } => ApiError::conflict("workflow_state", e.to_string()),
            WorkflowError::PastPointOfNoReturn { .. } => ApiError::conflict("past_point_of_no_return", e.to_string()),
            WorkflowError::Corrupt { .. } => ApiError::Internal(e.into()),
            WorkflowError::Database(db) => db.into(),
        }
    }
}

impl From<StartError> for ApiError {
    fn from(e: StartError) -> Self {
        match e {
            StartError::Registry(e) => e.into(),
            StartError::Workflow(e) => e.into(),
        }
    }
}

/// A list's page size: 1 to 200, 50 when not given.
fn list_limit(raw: Option<i64>) -> Result<i64, ApiError> {
    match raw.unwrap_or(50) {
        limit @ 1..=200 => Ok(limit),
        _ => Err(ApiError::bad_request("invalid_query", "limit must be between 1 and 200")),
    }
}

/// The tenant a list is narrowed to (slug or id), if any; 404 when unknown.
async fn tenant_of(
    conn: &mut sqlx::PgConnection,
    raw: Option<&str>,
) -> Result<Option<indigo_core::tenant::TenantId>, ApiError> {
    match raw {
        Some(raw) => Ok(Some(registry::get(conn, &super::tenants::tenant_ref(raw)?).await?.id)),
        None => Ok(None),
    }
}

fn workflow_id(raw: &str) -> Result<uuid::Uuid, ApiError> {
    raw.parse().map_err(|_| ApiError::NotFound(format!("workflow `{raw}`")))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListParams {
    /// Only this tenant's workflows (slug or id).
    tenant: Option<String>,
    /// Only workflows of this kind.
    #[param(inline)]
    kind: Option<Kind>,
    /// Only workflows in this state.
    state: Option<WorkflowState>,
    /// Page size, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    /// The last id of the previous page.
    before: Option<uuid::Uuid>,
}

/// Workflows, newest first, with their steps.
#[utoipa::path(get, path = "/v1/workflows", tag = "workflows", params(ListParams),
    responses((status = 200, body = [Workflow]), (status = 400, body = ErrorBody),
              (status = 404, description = "The tenant named in `tenant` is unknown", body = ErrorBody)))]
async fn list_workflows(
    State(state): State<AppState>,
    _actor: Actor,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<Vec<Workflow>>, ApiError> {
    let limit = list_limit(params.limit)?;
    let mut conn = state.db.acquire().await?;
    let tenant = tenant_of(&mut conn, params.tenant.as_deref()).await?;
    let filter = ListFilter { tenant, kind: params.kind, state: params.state, before: params.before, limit };
    Ok(Json(store::list(&mut conn, &filter).await?))
}

/// One workflow with each step's state, attempts, output and error.
#[utoipa::path(get, path = "/v1/workflows/{id}", tag = "workflows",
    params(("id" = uuid::Uuid, Path, description = "The workflow's id")),
    responses((status = 200, body = Workflow), (status = 404, body = ErrorBody)))]
async fn get_workflow(
    State(state): State<AppState>,
    _actor: Actor,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<Workflow>, ApiError> {
    let id = workflow_id(&raw)?;
    Ok(Json(store::get(&mut *state.db.acquire().await?, id).await?))
}

/// Retry or cancel: one transition of a workflow, once per idempotency key.
async fn transition(
    state: AppState,
    actor: Actor,
    key: IdempotencyKey,
    raw: String,
    action: &'static str,
    apply: impl AsyncFnOnce(&mut sqlx::PgConnection, uuid::Uuid) -> Result<Workflow, WorkflowError>,
) -> Result<Response, ApiError> {
    actor.require(Role::Operator)?;
    let id = workflow_id(&raw)?;
    let kind: Kind = store::get(&mut *state.db.acquire().await?, id)
        .await?
        .kind
        .parse()
        .map_err(|e| anyhow::anyhow!("workflow {id} has an unknown kind: {e}"))?;
    actor.require(kind.required_role())?;
    idempotency::run_once(&state, &key, &actor, &json!({ action: id }), StatusCode::ACCEPTED, async |tx| {
        Ok(apply(tx, id).await?)
    })
    .await
}

/// Run a failed or cancelled workflow again (the role that starts its kind:
/// operator, admin for an offboarding).
#[utoipa::path(post, path = "/v1/workflows/{id}/retry", tag = "workflows",
    params(("id" = uuid::Uuid, Path, description = "The workflow's id"), ("Idempotency-Key" = String, Header)),
    responses((status = 202, body = Workflow), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn retry_workflow(
    State(state): State<AppState>,
    actor: Actor,
    key: IdempotencyKey,
    ApiPath(raw): ApiPath<String>,
) -> Result<Response, ApiError> {
    transition(state, actor, key, raw, "retry", store::retry).await
}

/// Cancel a running workflow: its completed steps are undone (the role that
/// starts its kind: operator, admin for an offboarding).
#[utoipa::path(post, path = "/v1/workflows/{id}/cancel", tag = "workflows",
    params(("id" = uuid::Uuid, Path, description = "The workflow's id"), ("Idempotency-Key" = String, Header)),
    responses((status = 202, body = Workflow), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn cancel_workflow(
    State(state): State<AppState>,
    actor: Actor,
    key: IdempotencyKey,
    ApiPath(raw): ApiPath<String>,
) -> Result<Response, ApiError> {
    transition(state, actor, key, raw, "cancel", store::cancel).await
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct MoveParams {
    /// Only this tenant's moves (slug or id).
    tenant: Option<String>,
    /// Only moves still under way.
    #[serde(default)]
    active: bool,
    /// At most this many, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct MoveRow {
    workflow_id: uuid::Uuid,
    tenant_id: uuid::Uuid,
    slug: String,
    from_isolation: String,
    to_isolation: String,
    source_database: String,
    target_database: Option<String>,
    phase: String,
    rows_total: i64,
    rows_copied: i64,
    lag: i64,
    pause_ms: Option<i64>,
    estimated_rows_per_second: Option<f64>,
    estimated_pause_ms: Option<i64>,
    error: Option<String>,
    started_at: chrono::DateTime<chrono::Utc>,
    updated_at: chrono::DateTime<chrono::Utc>,
    switched_at: Option<chrono::DateTime<chrono::Utc>>,
    finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl TryFrom<MoveRow> for TenantMove {
    type Error = ApiError;

    fn try_from(row: MoveRow) -> Result<Self, ApiError> {
        let isolation = |raw: &str| {
            raw.parse().map_err(|_| ApiError::Internal(anyhow::anyhow!("move {}: isolation `{raw}`", row.workflow_id)))
        };
        Ok(TenantMove {
            from_isolation: isolation(&row.from_isolation)?,
            to_isolation: isolation(&row.to_isolation)?,
            workflow_id: row.workflow_id,
            tenant_id: indigo_core::tenant::TenantId(row.tenant_id),
            slug: row.slug,
            source_database: row.source_database,
            target_database: row.target_database,
            phase: row.phase,
            rows_total: row.rows_total,
            rows_copied: row.rows_copied,
            lag: row.lag,
            pause_ms: row.pause_ms,
            estimated_copy_seconds: row
                .estimated_rows_per_second
                .filter(|rate| *rate > 0.0 && row.rows_total > 0)
                .map(|rate| row.rows_total as f64 / rate),
            estimated_pause_ms: row.estimated_pause_ms,
            copy_seconds: row.switched_at.map(|at| (at - row.started_at).num_milliseconds() as f64 / 1000.0),
            error: row.error,
            started_at: row.started_at,
            updated_at: row.updated_at,
            switched_at: row.switched_at,
            finished_at: row.finished_at,
        })
    }
}

/// Moves between pool and silo, newest first: phase, rows copied of the total,
/// lag, and the write pause at the switch.
#[utoipa::path(get, path = "/v1/moves", tag = "workflows", params(MoveParams),
    responses((status = 200, body = [TenantMove]), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_moves(
    State(state): State<AppState>,
    _actor: Actor,
    ApiQuery(params): ApiQuery<MoveParams>,
) -> Result<Json<Vec<TenantMove>>, ApiError> {
    let limit = list_limit(params.limit)?;
    let mut conn = state.db.acquire().await?;
    let tenant = tenant_of(&mut conn, params.tenant.as_deref()).await?.map(|t| t.0);
    let rows: Vec<MoveRow> = sqlx::query_as(
        "SELECT m.workflow_id, m.tenant_id, t.slug, m.from_isolation, m.to_isolation, m.source_database,
                m.target_database, m.phase, m.rows_total, m.rows_copied, m.lag, m.pause_ms,
                m.estimated_rows_per_second, m.estimated_pause_ms, m.error,
                m.started_at, m.updated_at, m.switched_at, m.finished_at
         FROM tenant_moves m JOIN tenants t ON t.id = m.tenant_id
         WHERE ($1::uuid IS NULL OR m.tenant_id = $1) AND (NOT $2 OR m.finished_at IS NULL)
         ORDER BY m.started_at DESC LIMIT $3",
    )
    .bind(tenant)
    .bind(params.active)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    Ok(Json(rows.into_iter().map(TenantMove::try_from).collect::<Result<_, _>>()?))
}
