//! Traces across both daemons: `indigo up --demo` exporting to an OTLP
//! receiver of the test's own (OTLP over HTTP, protobuf, decoded as a
//! collector would). A storefront request that arrives with the caller's
//! `traceparent` continues the caller's trace in the data plane, in the
//! tenant's name; the usage it causes is delivered to the control plane in a
//! trace that crosses from the data plane into the control plane's request;
//! the control plane's workflow steps carry their tenant, and its calls to
//! Stripe are spans inside them.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;

use crate::up::{Platform, cli, storefront_token};

/// One exported span, with the service that exported it.
#[derive(Debug, Clone)]
pub(crate) struct Span {
    pub(crate) service: String,
    pub(crate) name: String,
    pub(crate) trace_id: Vec<u8>,
    pub(crate) span_id: Vec<u8>,
    pub(crate) parent_span_id: Vec<u8>,
    pub(crate) attributes: Vec<(String, String)>,
}

impl Span {
    pub(crate) fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

fn text(attributes: &[KeyValue]) -> Vec<(String, String)> {
    let value = |kv: &KeyValue| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        other => format!("{other:?}"),
    };
    attributes.iter().map(|kv| (kv.key.clone(), value(kv))).collect()
}

/// An OTLP/HTTP receiver on a port of its own: every span it was sent.
pub(crate) async fn receiver() -> (String, Arc<Mutex<Vec<Span>>>) {
    let spans = Arc::new(Mutex::new(Vec::new()));
    let kept = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| async move {
            let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf export");
            let mut kept = kept.lock().unwrap();
            for resource_spans in request.resource_spans {
                let resource = text(&resource_spans.resource.map(|r| r.attributes).unwrap_or_default());
                let service = resource.iter().find(|(k, _)| k == "service.name").map(|(_, v)| v.clone());
                for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                    kept.push(Span {
                        service: service.clone().unwrap_or_default(),
                        name: span.name,
                        trace_id: span.trace_id,
                        span_id: span.span_id,
                        parent_span_id: span.parent_span_id,
                        attributes: text(&span.attributes),
                    });
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, spans)
}

/// Waits (batches are exported every few seconds) until `found` finds what it looks for.
pub(crate) async fn wait_for<T>(spans: &Mutex<Vec<Span>>, what: &str, found: impl Fn(&[Span]) -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(result) = found(&spans.lock().unwrap()) {
            return result;
        }
        if Instant::now() > deadline {
            let spans = spans.lock().unwrap();
            let seen: Vec<_> = spans.iter().map(|s| format!("{}: {}", s.service, s.name)).collect();
            panic!("no {what} among the {} spans exported: {seen:?}", spans.len());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_trace_crosses_from_the_data_plane_into_the_control_plane() {
    let (otlp, spans) = receiver().await;
    let platform = Platform::new();
    let (mut daemon, api_url, storefront_url) = platform.start_demo(&[("INDIGO_OTLP_ENDPOINT", &otlp)]).await;
    let data_dir = &platform.data_dir;
    let output = cli(data_dir, &["tenant", "get", "blue-bakery", "--output", "json", "--api-url", &api_url]);
    let tenant: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let tenant_id = tenant["id"].as_str().unwrap().to_owned();

    // A caller's request, in a trace of the caller's.
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let response = reqwest::Client::new()
        .get(format!("{storefront_url}/v1/products"))
        .bearer_auth(storefront_token(data_dir, &api_url, "blue-bakery"))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // The data plane continued it, as a child of the caller's span, for that tenant.
    let request = wait_for(&spans, "storefront request in the caller's trace", |spans| {
        spans
            .iter()
            .find(|s| s.service == "indigo-dataplane" && hex(&s.trace_id) == trace_id && s.name == "GET /v1/products")
            .cloned()
    })
    .await;
    assert_eq!(hex(&request.parent_span_id), "00f067aa0ba902b7");
    assert_eq!(request.attribute("tenant_id"), Some(tenant_id.as_str()));
    assert_eq!(request.attribute("http.response.status_code"), Some("200"));

    // A write's transaction is a span inside its request.
    let write_trace = uuid::Uuid::new_v4().simple().to_string();
    let created = reqwest::Client::new()
        .post(format!("{storefront_url}/v1/products"))
        .bearer_auth(storefront_token(data_dir, &api_url, "blue-bakery"))
        .header("traceparent", format!("00-{write_trace}-00f067aa0ba902b7-01"))
        .json(&serde_json::json!({ "name": "Rye", "price_minor": 500, "currency": "usd", "stock": 4 }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let (write, begin) = wait_for(&spans, "transaction inside the write's request", |spans| {
        let write = spans.iter().find(|s| hex(&s.trace_id) == write_trace && s.name == "POST /v1/products")?;
        let begin = spans.iter().find(|s| s.name == "db.begin" && s.parent_span_id == write.span_id)?;
        Some((write.clone(), begin.clone()))
    })
    .await;
    assert_eq!(begin.attribute("db.system"), Some("postgresql"), "{write:?} → {begin:?}");

    // The usage it caused went to the control plane in one trace across both daemons.
    let (delivery, ingest) = wait_for(&spans, "usage delivery continued by the control plane", |spans| {
        spans.iter().filter(|s| s.service == "indigo-dataplane" && s.name == "usage.deliver").find_map(|delivery| {
            let ingest = spans.iter().find(|s| {
                s.service == "indigo" && s.trace_id == delivery.trace_id && s.parent_span_id == delivery.span_id
            })?;
            Some((delivery.clone(), ingest.clone()))
        })
    })
    .await;
    assert_eq!(ingest.name, "POST /v1/usage/events", "{delivery:?} → {ingest:?}");

    // The control plane's workflow steps are spans of their own, in their tenant's name.
    let step = wait_for(&spans, "workflow step of blue-bakery", |spans| {
        spans
            .iter()
            .find(|s| {
                s.service == "indigo"
                    && s.attribute("workflow").is_some()
                    && s.attribute("tenant_id") == Some(&tenant_id)
            })
            .cloned()
    })
    .await;
    assert_eq!(step.attribute("kind"), Some("onboarding"), "{step:?}");
    // Its calls to Stripe (the emulator `indigo up` runs) are spans inside its billing step.
    let stripe_call = wait_for(&spans, "Stripe call inside a billing step", |spans| {
        let billing: Vec<&Span> = spans.iter().filter(|s| s.service == "indigo" && s.name == "billing").collect();
        spans
            .iter()
            .find(|s| s.attribute("path").is_some() && billing.iter().any(|b| b.span_id == s.parent_span_id))
            .cloned()
    })
    .await;
    assert!(stripe_call.attribute("path").unwrap().starts_with('/'), "{stripe_call:?}");

    daemon.signal_and_wait("TERM", Duration::from_secs(30)).unwrap();
    platform.remove().await;
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
