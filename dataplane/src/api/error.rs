//! The storefront's one error type: client mistakes are 4xx with a stable
//! `code`; a database that asks to be tried again is a 503; any other
//! database trouble is a generic 500 whose details stay in the log.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use indigo_core::http::{Rejection, error_response};

use indigo_tenantdb::input::client_fault;
use indigo_tenantdb::retry::RetryLater;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("this tenant is suspended")]
    Suspended,
    /// 403: the caller's role does not allow this.
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("the plan allows at most {limit} {what}")]
    PlanLimit { what: &'static str, limit: u64 },
    /// 403: the tenant's plan does not include the feature.
    #[error("the {plan} plan does not include {feature}")]
    NotInPlan { plan: String, feature: &'static str },
    /// 502: a service the request depends on (a model) failed.
    #[error("{0}")]
    Upstream(String),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("{message}")]
    TooMany { code: &'static str, message: String, retry_after: Duration },
    #[error("this tenant's database is not available yet")]
    Unavailable,
    /// 503 until this replica has its first routing table: a token it cannot
    /// place yet is not a stranger's, so no `401` before then.
    #[error("this replica has not loaded its routing table yet")]
    NotReady,
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error(transparent)]
    Database(sqlx::Error),
}

impl StoreError {
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid { code, message: message.into() }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match client_fault(&error) {
            Some((code, message)) => Self::invalid(code, message),
            None => Self::Database(error),
        }
    }
}

impl IntoResponse for StoreError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Suspended => (StatusCode::FORBIDDEN, "tenant_suspended"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::PlanLimit { .. } => (StatusCode::FORBIDDEN, "plan_limit"),
            Self::NotInPlan { .. } => (StatusCode::FORBIDDEN, "feature_not_in_plan"),
            Self::Upstream(_) => (StatusCode::BAD_GATEWAY, "upstream_failed"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Invalid { code, .. } => (StatusCode::UNPROCESSABLE_ENTITY, *code),
            Self::Conflict { code, .. } => (StatusCode::CONFLICT, *code),
            Self::TooMany { code, .. } => (StatusCode::TOO_MANY_REQUESTS, *code),
            Self::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "tenant_unavailable"),
            Self::NotReady => return indigo_core::http::retry_later("not_ready", &self.to_string()),
            Self::Rejected(rejection) => return rejection.clone().into_response(),
            Self::Database(error) => {
                if let Some(answer) = RetryLater::of(error) {
                    if answer != RetryLater::Moved {
                        tracing::warn!(%error, code = answer.code(), "storefront request refused by the database");
                    }
                    let mut response = indigo_core::http::retry_later(answer.code(), answer.message());
                    response.extensions_mut().insert(answer);
                    return response;
                }
                tracing::error!(%error, "storefront database error");
                return error_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; see the server log",
                );
            }
        };
        let mut response = error_response(status, code, self.to_string());
        match &self {
            Self::PlanLimit { limit, what } => {
                // The limit is also given as data, for clients to show.
                let body =
                    serde_json::json!({ "code": code, "message": self.to_string(), "limit": limit, "resource": what });
                response = (status, axum::Json(body)).into_response();
            }
            Self::TooMany { retry_after, .. } => {
                let seconds = retry_after.as_secs().max(1).to_string();
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_str(&seconds).expect("digits"));
            }
            _ => {}
        }
        response
    }
}
