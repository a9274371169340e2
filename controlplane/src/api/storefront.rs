//! How a tenant's storefront features stand, seen from the control plane: the
//! data planes' catalogue cache (its counts in their Redis) and the built-in
//! recommender (its counts in the tenant's database).

use axum::Json;
use axum::extract::State;
use chrono::{Duration, Utc};
use indigo_core::api::{CatalogueCacheStats, ErrorBody, RecommenderStatus};
use indigo_core::http::ApiPath;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::auth::Actor;
use super::error::ApiError;
use crate::metering::recommender;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(catalogue_cache)).routes(routes!(recommender_status))
}

/// How the tenant's catalogue reads fared in the data planes' Redis cache over the last day.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/catalogue-cache", tag = "storefront",
    params(("tenant" = String, Path, description = "Slug or id")),
    responses((status = 200, body = CatalogueCacheStats), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 502, description = "Redis did not answer", body = ErrorBody)))]
async fn catalogue_cache(
    State(state): State<AppState>,
    _actor: Actor,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<CatalogueCacheStats>, ApiError> {
    let tenant = super::tenants::find(&state, &raw).await?;
    let hours = CatalogueCacheStats::WINDOW_HOURS;
    let Some(redis) = &state.data_plane_redis else {
        return Ok(Json(CatalogueCacheStats { tenant_id: Some(tenant.id), hours, ..Default::default() }));
    };
    let now = Utc::now();
    let mut read = redis::pipe();
    for hour in 0..hours {
        let key = CatalogueCacheStats::counts_key(tenant.id, now - Duration::hours(i64::from(hour)));
        read.cmd("HMGET").arg(key).arg("hits").arg("misses");
    }
    let counts: Vec<(Option<u64>, Option<u64>)> = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        let mut connection = redis.get_multiplexed_async_connection().await?;
        read.query_async(&mut connection).await
    })
    .await
    .map_err(|_| ApiError::Upstream("Redis did not answer in time".into()))?
    .map_err(|e| ApiError::Upstream(format!("Redis did not answer: {e}")))?;
    let hits: u64 = counts.iter().filter_map(|(hits, _)| *hits).sum();
    let misses: u64 = counts.iter().filter_map(|(_, misses)| *misses).sum();
    let reads = hits + misses;
    Ok(Json(CatalogueCacheStats {
        tenant_id: Some(tenant.id),
        enabled: true,
        hours,
        hits,
        misses,
        hit_rate: (reads > 0).then(|| hits as f64 / reads as f64),
    }))
}

/// Where the tenant's built-in recommender stands: when its co-purchase counts were computed, from
/// how many orders.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/recommender", tag = "storefront",
    params(("tenant" = String, Path, description = "Slug or id")),
    responses((status = 200, body = RecommenderStatus), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 502, description = "The tenant's database did not answer", body = ErrorBody)))]
async fn recommender_status(
    State(state): State<AppState>,
    _actor: Actor,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<RecommenderStatus>, ApiError> {
    let tenant = super::tenants::find(&state, &raw).await?;
    let enabled = state.plans.get(tenant.spec.plan.as_str()).is_ok_and(|plan| plan.has_feature("recommendations"));
    let mut status = RecommenderStatus { tenant_id: Some(tenant.id), enabled, ..Default::default() };
    let Some(placement) = &tenant.status.placement else { return Ok(Json(status)) };
    let unanswered =
        |e: &dyn std::fmt::Display| ApiError::Upstream(format!("the tenant's database did not answer: {e}"));
    let database =
        state.databases.reach(placement.cluster.as_deref(), &placement.database).await.map_err(|e| unanswered(&e))?;
    let standing = recommender::standing(&database, tenant.id.0).await.map_err(|e| unanswered(&e))?;
    status.refreshed_at = standing.refreshed_at;
    status.orders_counted = standing.orders_counted;
    status.pairs = standing.pairs;
    Ok(Json(status))
}
