//! `/v1/routing`: the table the data plane routes by. It answers 304 when the
//! caller already has the current version, so polling it is cheap.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use indigo_core::api::{Placement, Route, RoutingTable};
use indigo_core::tenant::{Isolation, Role, Slug, TenantId};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::auth::Caller;
use super::error::ApiError;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(routing_table))
}

#[derive(sqlx::FromRow)]
struct RouteRow {
    id: uuid::Uuid,
    slug: String,
    lifecycle: String,
    isolation: String,
    plan: String,
    placement: Option<serde_json::Value>,
    routing_version: i64,
}

pub async fn build(state: &AppState) -> Result<RoutingTable, ApiError> {
    let rows: Vec<RouteRow> = sqlx::query_as(
        "SELECT id, slug, lifecycle, isolation, plan, placement, routing_version
         FROM tenants WHERE lifecycle <> 'deleted' ORDER BY id",
    )
    .fetch_all(&state.db)
    .await?;
    // Deleted tenants drop out of the table, so its version must count them too.
    let version: i64 =
        sqlx::query_scalar("SELECT COALESCE(max(routing_version), 0) FROM tenants").fetch_one(&state.db).await?;
    let mut routes = Vec::with_capacity(rows.len());
    for row in rows {
        let corrupt = |what: &str| ApiError::Internal(anyhow::anyhow!("tenant {}: {what}", row.id));
        let isolation: Isolation = row.isolation.parse().map_err(|_| corrupt("isolation"))?;
        let placement: Option<Placement> =
            row.placement.clone().map(serde_json::from_value).transpose().map_err(|_| corrupt("placement"))?;
        let dbs = &state.tenant_dbs;
        let database_url = match (&placement, isolation) {
            // A silo on its own cluster (AWS) is reached at the cluster's endpoint.
            (Some(placement), _) => {
                let database = dbs.locate(placement.cluster.as_deref(), &placement.database);
                Some(database.server.app_url(&database.name))
            }
            (None, Isolation::Pool) => Some(dbs.server.app_url(&dbs.pool_database)),
            (None, Isolation::Silo) => None,
        };
        let Ok(plan) = state.plans.get(&row.plan) else {
            tracing::error!(tenant = %row.id, plan = %row.plan, "tenant's plan is not in the catalogue; not routed");
            continue;
        };
        routes.push(Route {
            tenant_id: TenantId(row.id),
            slug: Slug::parse(&row.slug).map_err(|_| corrupt("slug"))?,
            lifecycle: row.lifecycle.parse().map_err(|_| corrupt("lifecycle"))?,
            isolation,
            database_url,
            plan: plan.clone(),
            routing_version: row.routing_version,
        });
    }
    Ok(RoutingTable { version, routes })
}

/// The routing table (operator, or a data plane). Send the version you have as
/// `If-None-Match` to get 304 when nothing changed. A data plane bound to one
/// tenant sees that tenant's route only. Where the databases are is for those
/// who route to them: a viewer is refused.
#[utoipa::path(get, path = "/v1/routing", tag = "tenants",
    responses((status = 200, body = RoutingTable), (status = 304, description = "Unchanged")))]
async fn routing_table(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Caller::Person(actor) = &caller {
        actor.require(Role::Operator)?;
    }
    let current: i64 =
        sqlx::query_scalar("SELECT COALESCE(max(routing_version), 0) FROM tenants").fetch_one(&state.db).await?;
    let etag = format!("\"{current}\"");
    if headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) == Some(etag.as_str()) {
        return Ok(StatusCode::NOT_MODIFIED.into_response());
    }
    let mut table = build(&state).await?;
    table.routes.retain(|route| caller.reaches(route.tenant_id));
    let etag = format!("\"{}\"", table.version);
    Ok(([(header::ETAG, etag)], Json(table)).into_response())
}
