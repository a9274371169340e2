//! The storefront's one error type: client mistakes are 4xx with a stable
//! `code`; database trouble is a generic 5xx whose details stay in the log.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use indigo_core::http::{Rejection, error_response};

use crate::schema::MOVED_SQLSTATE;

/// Marks a response whose request the tenant gate may replay whole: every
/// handler runs in one transaction, and this one committed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// A write met a closed move fence: the tenant now lives in another database.
    Moved,
    /// PostgreSQL aborted the transaction (a deadlock or a serialization
    /// failure) and asks for it to be run again.
    Aborted,
}

/// SQLSTATEs after which PostgreSQL asks the client to retry the transaction.
const RETRY_TRANSACTION: [&str; 2] = ["40001", "40P01"];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("this tenant is suspended")]
    Suspended,
    #[error("this needs the owner or staff role")]
    Forbidden,
    #[error("the plan allows at most {limit} {what}")]
    PlanLimit { what: &'static str, limit: u64 },
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
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl StoreError {
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid { code, message: message.into() }
    }
}

impl IntoResponse for StoreError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Suspended => (StatusCode::FORBIDDEN, "tenant_suspended"),
            Self::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
            Self::PlanLimit { .. } => (StatusCode::FORBIDDEN, "plan_limit"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Invalid { code, .. } => (StatusCode::UNPROCESSABLE_ENTITY, *code),
            Self::Conflict { code, .. } => (StatusCode::CONFLICT, *code),
            Self::TooMany { code, .. } => (StatusCode::TOO_MANY_REQUESTS, *code),
            Self::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "tenant_unavailable"),
            Self::Rejected(rejection) => return rejection.clone().into_response(),
            Self::Database(sqlx::Error::Database(error)) if error.code().as_deref() == Some(MOVED_SQLSTATE) => {
                // The tenant gate replays the request on the tenant's new database.
                let mut response = error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "tenant_moving",
                    "this tenant is moving to another database; retry shortly",
                );
                response.extensions_mut().insert(Replay::Moved);
                return response;
            }
            Self::Database(sqlx::Error::Database(error))
                if error.code().is_some_and(|code| RETRY_TRANSACTION.contains(&code.as_ref())) =>
            {
                tracing::warn!(%error, "storefront transaction aborted by the database");
                let mut response = error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "transaction_aborted",
                    "the database aborted this request's transaction; retry",
                );
                response.extensions_mut().insert(Replay::Aborted);
                return response;
            }
            Self::Database(error) => {
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
