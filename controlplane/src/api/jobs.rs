//! `/v1/jobs`: the scheduled jobs, their last run and next run; run one now.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use indigo_core::api::{ErrorBody, JobStatus};
use indigo_core::http::ApiPath;
use indigo_core::tenant::Role;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::auth::Actor;
use super::error::ApiError;
use super::idempotency::{self, IdempotencyKey};
use crate::jobs::{JobError, Jobs};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_jobs)).routes(routes!(run_job))
}

impl From<JobError> for ApiError {
    fn from(e: JobError) -> Self {
        match e {
            JobError::Unknown(..) => ApiError::NotFound(e.to_string()),
            JobError::Busy(_) => ApiError::conflict("job_running", e.to_string()),
            JobError::Failed(message) => ApiError::Upstream(format!("the job failed: {message}")),
            JobError::Database(db) => db.into(),
        }
    }
}

/// Every scheduled job: schedule, runs, last outcome and detail, next run.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", responses((status = 200, body = [JobStatus])))]
async fn list_jobs(State(state): State<AppState>, _actor: Actor) -> Result<Json<Vec<JobStatus>>, ApiError> {
    Ok(Json(Jobs::status(&state.db).await?))
}

/// Run a job now (operator), e.g. the billing sync; answers what it did.
#[utoipa::path(post, path = "/v1/jobs/{name}/run", tag = "jobs",
    params(("name" = String, Path), ("Idempotency-Key" = String, Header)),
    responses((status = 200, description = "What the run did"), (status = 404, body = ErrorBody),
              (status = 409, description = "Running elsewhere right now", body = ErrorBody),
              (status = 503, body = ErrorBody)))]
async fn run_job(
    State(state): State<AppState>,
    actor: Actor,
    key: IdempotencyKey,
    ApiPath(name): ApiPath<String>,
) -> Result<Response, ApiError> {
    actor.require(Role::Operator)?;
    let jobs = state.jobs.clone().ok_or_else(|| ApiError::NotReady("this replica runs no jobs".into()))?;
    idempotency::run_once(&state, &key, &actor, &json!({ "run": name }), StatusCode::OK, async |_tx| {
        Ok(json!({ "job": name, "result": jobs.run(&name).await? }))
    })
    .await
}
