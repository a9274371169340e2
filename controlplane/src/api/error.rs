//! The admin API's one error type. Client mistakes map to 4xx with a stable
//! `code`; a database that asks to be tried again is a 503 (a retry with the
//! same Idempotency-Key is safe); anything else is logged and answered with a
//! generic 500.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use indigo_core::http::error_response;
use indigo_tenantdb::input::client_fault;
use indigo_tenantdb::retry::RetryLater;

use crate::journal::Forbidden;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request cannot be understood.
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    /// 422: understood, but a field is not acceptable.
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error(transparent)]
    Forbidden(#[from] Forbidden),
    #[error("{0} not found")]
    NotFound(String),
    /// 409: the request conflicts with the current state.
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("{0}")]
    NotReady(String),
    /// 429: this token's request rate is spent for now.
    #[error("too many requests from this token; retry after {} s", retry_after.as_secs().max(1))]
    TooMany { retry_after: std::time::Duration },
    /// 502: a service we depend on (Stripe, CloudWatch) failed; the message says how.
    #[error("{0}")]
    Upstream(String),
    #[error(transparent)]
    Database(sqlx::Error),
    #[error(transparent)]
    Internal(anyhow::Error),
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest { code, message: message.into() }
    }

    pub fn invalid(code: &'static str, message: impl ToString) -> Self {
        Self::Invalid { code, message: message.to_string() }
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::Conflict { code, message: message.into() }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::TooMany { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Upstream(_) => StatusCode::BAD_GATEWAY,
            Self::Database(error) if RetryLater::of(error).is_some() => StatusCode::SERVICE_UNAVAILABLE,
            Self::Database(_) | Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest { code, .. } | Self::Invalid { code, .. } | Self::Conflict { code, .. } => code,
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::NotReady(_) => "not_ready",
            Self::TooMany { .. } => "rate_limited",
            Self::Upstream(_) => "upstream_failed",
            Self::Database(error) => RetryLater::of(error).map_or("internal", RetryLater::code),
            Self::Internal(_) => "internal",
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        match client_fault(&error) {
            Some((code, message)) => Self::Invalid { code, message: message.into() },
            None => Self::Database(error),
        }
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(error: anyhow::Error) -> Self {
        // A database refusal of the client's input stays the client's, however it was wrapped.
        match error.downcast_ref::<sqlx::Error>().and_then(client_fault) {
            Some((code, message)) => Self::Invalid { code, message: message.into() },
            None => Self::Internal(error),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let Self::Database(error) = &self
            && let Some(answer) = RetryLater::of(error)
        {
            tracing::warn!(%error, code = answer.code(), "request refused by the database");
            return indigo_core::http::retry_later(answer.code(), answer.message());
        }
        if status.is_server_error() && !matches!(self, Self::NotReady(_) | Self::Upstream(_)) {
            // The detail goes to the log, never to the client.
            tracing::error!(error = %self, "request failed");
            return error_response(status, self.code(), "internal error; see the server log");
        }
        let mut response = error_response(status, self.code(), self.to_string());
        if let Self::TooMany { retry_after } = &self {
            let seconds = retry_after.as_secs().max(1).to_string();
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, seconds.parse().expect("digits"));
        }
        response
    }
}
