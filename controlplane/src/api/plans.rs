//! `/v1/plans`: the catalogue as loaded from the policy file.

use axum::Json;
use axum::extract::State;
use indigo_core::api::ErrorBody;
use indigo_core::http::ApiPath;
use indigo_core::plan::Plan;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::auth::Actor;
use super::error::ApiError;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_plans)).routes(routes!(get_plan))
}

/// Every plan, from the lowest tier to the highest.
#[utoipa::path(get, path = "/v1/plans", tag = "plans", responses((status = 200, body = Vec<Plan>)))]
async fn list_plans(State(state): State<AppState>, _actor: Actor) -> Json<Vec<Plan>> {
    Json(state.plans.plans().into_iter().cloned().collect())
}

/// One plan by name.
#[utoipa::path(get, path = "/v1/plans/{plan}", tag = "plans", params(("plan" = String, Path)),
    responses((status = 200, body = Plan), (status = 404, body = ErrorBody)))]
async fn get_plan(
    State(state): State<AppState>,
    _actor: Actor,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Plan>, ApiError> {
    state.plans.get(&name).map(|plan| Json(plan.clone())).map_err(|_| ApiError::NotFound(format!("plan `{name}`")))
}
