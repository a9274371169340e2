//! What the Indigo HTTP servers share: the JSON error body as a response, the
//! shutdown signal, and extractors that turn what a client sends into typed values, rejecting bad
//! input with a stable `code` instead of axum's plain-text rejections.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use crate::api::ErrorBody;

/// Largest request body the Indigo servers read (set with `DefaultBodyLimit`).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The process-wide Prometheus recorder, installed on first use; shared so that
/// a process serving both APIs (a test, say) installs it once.
pub fn prometheus() -> metrics_exporter_prometheus::PrometheusHandle {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".into()),
                    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5],
                )
                .expect("static bucket list is not empty")
                .install_recorder()
                .expect("the Prometheus recorder is installed once per process")
        })
        .clone()
}

/// The response every error gets: `{"code": ..., "message": ...}`.
pub fn error_response(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (status, Json(ErrorBody { code: code.to_owned(), message: message.into() })).into_response()
}

/// `503` with a stable code and `Retry-After: 1`: a fault that is no one's
/// (a database that is away, a transaction it aborted) and passes on retry.
pub fn retry_later(code: &str, message: &str) -> Response {
    let mut response = error_response(StatusCode::SERVICE_UNAVAILABLE, code, message);
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// The log filter of both daemons: `RUST_LOG` (default `info`), with
/// PostgreSQL's notices below warnings. They are expected (the idempotent DDL
/// of every start says "already exists, skipping"), and sqlx logs each at INFO.
pub fn log_filter() -> String {
    let wanted = std::env::var("RUST_LOG").ok().filter(|f| !f.trim().is_empty()).unwrap_or_else(|| "info".into());
    format!("{wanted},sqlx::postgres::notice=warn")
}

/// Completes on SIGTERM or Ctrl-C; both daemons stop on it.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}

/// Completes once `parent` is no longer this process's parent (it died, even
/// by SIGKILL, and the process was re-parented), at once if that happened
/// before this process got here; never without a parent to watch. The PID
/// comes from the parent itself: read here, after start-up, it could already
/// be the re-parenting init's.
pub async fn parent_gone(parent: Option<u32>) {
    let Some(parent) = parent else { return std::future::pending().await };
    while std::os::unix::process::parent_id() == parent {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// Asks the server listening on `address` (the loopback address when it
/// listens on every interface) whether it is ready: `GET /readyz` answered
/// 200 within three seconds. The containers' health check, which has no shell
/// or curl to run.
pub async fn check_ready(address: std::net::SocketAddr) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut address = address;
    if address.ip().is_unspecified() {
        address.set_ip(match address {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let ask = async {
        let mut stream = tokio::net::TcpStream::connect(address).await?;
        let request = format!("GET /readyz HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut status_line = [0u8; 12];
        stream.read_exact(&mut status_line).await?;
        Ok::<_, std::io::Error>(status_line)
    };
    match tokio::time::timeout(std::time::Duration::from_secs(3), ask).await {
        Err(_) => Err(format!("{address} did not answer /readyz within 3 s")),
        Ok(Err(e)) => Err(format!("{address}: {e}")),
        Ok(Ok(line)) if line.ends_with(b" 200") => Ok(()),
        Ok(Ok(line)) => Err(format!("{address}/readyz answered {}", String::from_utf8_lossy(&line))),
    }
}

/// Input that the extractors below refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Rejection {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl Rejection {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, code, message: message.into() }
    }

    pub fn invalid(code: &'static str, message: impl ToString) -> Self {
        Self { status: StatusCode::UNPROCESSABLE_ENTITY, code, message: message.to_string() }
    }

    /// 404 for something a request refers to that does not exist.
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self { status: StatusCode::NOT_FOUND, code, message: message.into() }
    }

    pub fn too_large() -> Self {
        Self {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "payload_too_large",
            message: format!("request body is larger than the {MAX_BODY_BYTES} bytes allowed"),
        }
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        error_response(self.status, self.code, self.message)
    }
}

/// A JSON body: 400 when it is not JSON, 422 when fields are wrong, 413 when too big.
pub struct ApiJson<T>(pub T);

/// Like [`ApiJson`], but an empty body is allowed and yields `T::default()`.
pub struct OptionalJson<T>(pub T);

async fn read_body(req: Request) -> Result<Bytes, Rejection> {
    let declared_json =
        req.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).and_then(|v| v.split(';').next()).map(|mime| {
            let mime = mime.trim();
            mime.eq_ignore_ascii_case("application/json") || mime.ends_with("+json")
        });
    let bytes = Bytes::from_request(req, &()).await.map_err(|rejection| match rejection {
        BytesRejection::FailedToBufferBody(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Rejection::too_large(),
        other => Rejection::bad_request("unreadable_body", other.body_text()),
    })?;
    // A body without a Content-Type is accepted as JSON; a body declared as
    // something else is not.
    if !bytes.is_empty() && declared_json == Some(false) {
        return Err(Rejection {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            code: "unsupported_media_type",
            message: "request body must be JSON (Content-Type: application/json)".into(),
        });
    }
    Ok(bytes)
}

/// Every request body of both APIs is a JSON object. (serde would also read a
/// struct from an array of its fields, `[]` included: not what the documents say.)
fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Rejection> {
    if bytes.trim_ascii_start().first() != Some(&b'{') && serde_json::from_slice::<serde_json::Value>(bytes).is_ok() {
        return Err(Rejection::invalid("invalid_body", "the body must be a JSON object"));
    }
    // Only a body that spells the escape can hold a NUL (JSON forbids it raw):
    // those are walked for one; the rest are parsed once.
    if spells_nul(bytes)
        && let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes)
        && holds_nul(&value)
    {
        return Err(Rejection::invalid("invalid_text", NUL_REFUSED));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => Rejection::invalid("invalid_body", e),
            Category::Syntax | Category::Eof | Category::Io => {
                Rejection::bad_request("malformed_json", format!("request body is not valid JSON: {e}"))
            }
        }
    })
}

/// Whether the text spells `\u0000` anywhere. Compares only after each
/// backslash, not at every byte: a usage batch is megabytes long.
fn spells_nul(bytes: &[u8]) -> bool {
    bytes.iter().enumerate().any(|(at, &b)| b == b'\\' && bytes[at + 1..].starts_with(b"u0000"))
}

/// Why text with a NUL is refused, wherever it arrives.
pub const NUL_REFUSED: &str = "text must not contain the NUL character (U+0000)";

fn holds_nul(value: &serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(fields) => fields.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// A percent-encoded NUL in a query string or path.
fn encodes_nul(raw: &str) -> bool {
    raw.as_bytes().windows(3).any(|w| w == b"%00")
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = Rejection;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let bytes = read_body(req).await?;
        if bytes.is_empty() {
            return Err(Rejection::bad_request("malformed_json", "request body is empty; a JSON object is required"));
        }
        parse_json(&bytes).map(Self)
    }
}

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for OptionalJson<T> {
    type Rejection = Rejection;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let bytes = read_body(req).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(T::default()));
        }
        parse_json(&bytes).map(Self)
    }
}

/// Query parameters, 400 `invalid_query` when they do not parse.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if parts.uri.query().is_some_and(encodes_nul) {
            return Err(Rejection::bad_request("invalid_query", NUL_REFUSED));
        }
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| Self(q))
            .map_err(|e: QueryRejection| Rejection::bad_request("invalid_query", e.body_text()))
    }
}

/// Path parameters, 400 `invalid_path` when they do not parse.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if encodes_nul(parts.uri.path()) {
            return Err(Rejection::bad_request("invalid_path", NUL_REFUSED));
        }
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(p)| Self(p))
            .map_err(|e: PathRejection| Rejection::bad_request("invalid_path", e.body_text()))
    }
}

/// The request's id (set by the request-id layer), for the audit log.
#[derive(Debug, Clone)]
pub struct RequestId(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(parts.headers.get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned)))
    }
}
