//! The storefront's one error type: client mistakes are 4xx with a stable
//! `code`; a database that asks to be tried again is a 503; any other
//! database trouble is a generic 500 whose details stay in the log.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use indigo_core::http::{Rejection, error_response};

use crate::schema::MOVED_SQLSTATE;

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

/// SQLSTATEs after which PostgreSQL asks the client to retry the transaction.
const RETRY_TRANSACTION: [&str; 2] = ["40001", "40P01"];

/// SQLSTATEs of a server that is shutting down, starting, out of connections,
/// or without the database.
const SERVER_UNAVAILABLE: [&str; 4] = ["57P01", "57P03", "53300", "3D000"];

/// Database errors that are no fault of the request's and no bug of ours:
/// each is a `503` the client may retry. The response carries it as an
/// extension, and the tenant gate replays the request whole first where that
/// can help (every handler runs in one transaction, and this one committed
/// nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryLater {
    /// A write met a closed move fence: the tenant now lives in another database.
    Moved,
    /// PostgreSQL aborted the transaction (a deadlock or a serialization
    /// failure) and asks for it to be run again.
    Aborted,
    /// The database is down, starting, saturated or gone.
    Unreachable,
}

impl RetryLater {
    fn of(error: &sqlx::Error) -> Option<Self> {
        match error {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => Some(Self::Unreachable),
            sqlx::Error::Database(error) => match error.code()?.as_ref() {
                MOVED_SQLSTATE => Some(Self::Moved),
                code if RETRY_TRANSACTION.contains(&code) => Some(Self::Aborted),
                code if SERVER_UNAVAILABLE.contains(&code) => Some(Self::Unreachable),
                _ => None,
            },
            _ => None,
        }
    }

    fn code(self) -> &'static str {
        match self {
            Self::Moved => "tenant_moving",
            Self::Aborted => "transaction_aborted",
            Self::Unreachable => "database_unavailable",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Self::Moved => "this tenant is moving to another database; retry shortly",
            Self::Aborted => "the database aborted this request's transaction; retry",
            Self::Unreachable => "this tenant's database cannot be reached right now; retry shortly",
        }
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
            Self::Database(error) => {
                if let Some(answer) = RetryLater::of(error) {
                    if answer != RetryLater::Moved {
                        tracing::warn!(%error, code = answer.code(), "storefront request refused by the database");
                    }
                    let mut response = error_response(StatusCode::SERVICE_UNAVAILABLE, answer.code(), answer.message());
                    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
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
