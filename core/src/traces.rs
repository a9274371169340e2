//! Logs and traces of both daemons. Spans come from `tracing`; with an OTLP
//! endpoint they are exported to it (OTLP over HTTP, protobuf, batched), and
//! without one nothing leaves the process. A request's trace continues across
//! the daemons: the caller's context arrives in the request's headers (W3C
//! `traceparent`, or AWS X-Ray's `X-Amzn-Trace-Id` by configuration) and goes
//! out in the headers of the calls a daemon makes to the other.

use std::str::FromStr;
use std::time::Duration;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The header format a trace's context travels in between services.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Propagation {
    /// W3C Trace Context (`traceparent`, `tracestate`).
    #[default]
    W3c,
    /// AWS X-Ray (`X-Amzn-Trace-Id`), as ALB and X-Ray's SDKs send it.
    Xray,
}

impl FromStr for Propagation {
    type Err = String;
    fn from_str(raw: &str) -> Result<Self, String> {
        match raw {
            "w3c" => Ok(Self::W3c),
            "xray" => Ok(Self::Xray),
            other => Err(format!("unknown trace propagation `{other}` (w3c or xray)")),
        }
    }
}

impl Propagation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::W3c => "w3c",
            Self::Xray => "xray",
        }
    }
}

/// Where a daemon's traces go and how their context travels: what the
/// control plane configures for itself and hands to the data planes it runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceExport {
    /// The OTLP/HTTP collector's base URL; `None`: nothing is exported.
    pub otlp_endpoint: Option<String>,
    pub propagation: Propagation,
}

impl TraceExport {
    /// The data plane's settings (`indigo-dataplane --help`) that say the same.
    pub fn environment(&self) -> Vec<(String, String)> {
        let mut environment = vec![("INDIGO_TRACE_PROPAGATION".to_owned(), self.propagation.as_str().to_owned())];
        if let Some(endpoint) = &self.otlp_endpoint {
            environment.push(("INDIGO_OTLP_ENDPOINT".to_owned(), endpoint.clone()));
        }
        environment
    }
}

/// What a daemon exports, kept until it stops: dropping it without
/// [`Telemetry::shutdown`] loses the spans not exported yet.
#[must_use = "call shutdown() before exiting, or the last spans are lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered, then stops exporting.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(error) = provider.shutdown()
        {
            eprintln!("indigo: exporting the last spans failed: {error}");
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`; expected database
/// notices kept quiet); spans of `service` exported to the OTLP endpoint (the
/// collector's base URL, e.g. `http://127.0.0.1:4318`) when there is one. A
/// process that already has a subscriber (a test) keeps it.
pub fn init(service: &'static str, export: &TraceExport) -> Result<Telemetry, String> {
    let TraceExport { otlp_endpoint, propagation } = export;
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(EnvFilter::try_new(crate::http::log_filter()).unwrap_or_else(|_| EnvFilter::new("info")));
    let provider = otlp_endpoint.as_deref().map(|endpoint| exporting_provider(service, endpoint)).transpose()?;
    let spans = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service)).with_filter(filter_fn(exported)));
    match propagation {
        Propagation::W3c => {
            opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new())
        }
        Propagation::Xray => {
            opentelemetry::global::set_text_map_propagator(opentelemetry_aws::trace::XrayPropagator::default())
        }
    }
    let _ = tracing_subscriber::registry().with(logs).with(spans).try_init();
    Ok(Telemetry { provider })
}

/// What the exported traces hold: everything at info and above, and the
/// debug-level spans that exist for them — each request's and database read's
/// (debug, so that a daemon exporting nothing does not pay for them on its
/// hot path) and each AWS SDK operation's (`ECS.CreateService`, with
/// `rpc.service` and `rpc.method`).
fn exported(meta: &tracing::Metadata<'_>) -> bool {
    let target = meta.target();
    *meta.level() <= tracing::Level::INFO
        || (meta.is_span()
            && *meta.level() <= tracing::Level::DEBUG
            && (target.starts_with("indigo_") || (target.starts_with("aws_sdk_") && target.contains("::operation::"))))
}

fn exporting_provider(service: &'static str, endpoint: &str) -> Result<SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
        .with_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| format!("otlp_endpoint {endpoint}: {e}"))?;
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(service).build();
    Ok(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build())
}

/// Middleware: each request in a span of its own (`METHOD /route`), the child
/// of the caller's span when the request's headers carry one. Handlers record
/// the tenant on it (`tenant_id`), once they know it. Debug level: exported,
/// not logged (see [`exported`]).
pub async fn request_span(request: Request, next: Next) -> Response {
    // Nothing to do on the hot path of a daemon that exports nothing.
    if !tracing::enabled!(kind: tracing::metadata::Kind::SPAN, tracing::Level::DEBUG) {
        return next.run(request).await;
    }
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str).to_owned();
    let method = request.method().clone();
    let caller = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(request.headers())));
    let span = tracing::debug_span!(
        "request",
        otel.name = format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = route,
        http.response.status_code = tracing::field::Empty,
        tenant_id = tracing::field::Empty,
    );
    let _ = span.set_parent(caller);
    let response = next.run(request).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    response
}

/// Records the tenant a request, step or reconcile acts for on the current span.
pub fn record_tenant(tenant: impl std::fmt::Display) {
    tracing::Span::current().record("tenant_id", tracing::field::display(tenant));
}

/// Headers that carry the current span's trace to the daemon being called.
pub fn context_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&context, &mut HeadersMut(&mut headers)));
    headers
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeadersMut<'a>(&'a mut HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (HeaderName::from_str(key), HeaderValue::from_str(&value)) {
            self.0.insert(name, value);
        }
    }
}
