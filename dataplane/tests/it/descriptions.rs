//! Generated product descriptions: the built-in writer locally, Bedrock's
//! `InvokeModel` through the real SDK client against a double that answers
//! with Nova's published shapes (its throttle and its errors too); the tokens
//! metered as AI credits exactly, and the plan's credits enforced before any
//! model call.

use std::sync::{Arc, Mutex};

use aws_sdk_bedrockruntime::config::retry::RetryConfig;
use aws_sdk_bedrockruntime::config::{BehaviorVersion, Credentials, Region};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use indigo_core::api::{UsageBatch, UsageBatchResult, UsageEvent};
use indigo_core::plan::{Limit, Plan};
use indigo_dataplane::auth::CallerRole;
use indigo_dataplane::descriptions::{DEFAULT_BEDROCK_MODEL, DescriptionWriter};
use indigo_dataplane::metering::{Meter, UsageSink};
use serde_json::{Value, json};

use crate::support::{Store, credit_rates, plan, token};

fn plan_with_credits(name: &str, credits: u64) -> Plan {
    let mut plan = plan(name);
    plan.limits.ai_credits = Limit::AtMost(credits);
    plan
}

/// A usage store that keeps every event it is sent.
async fn usage_store() -> (String, Arc<Mutex<Vec<UsageEvent>>>) {
    let kept: Arc<Mutex<Vec<UsageEvent>>> = Arc::default();
    let app = Router::new()
        .route(
            "/v1/usage/events",
            post(|State(kept): State<Arc<Mutex<Vec<UsageEvent>>>>, Json(batch): Json<UsageBatch>| async move {
                let accepted = batch.events.len() as u64;
                kept.lock().unwrap().extend(batch.events);
                Json(UsageBatchResult { accepted, duplicates: 0, rejected: vec![] })
            }),
        )
        .with_state(kept.clone());
    (serve(app).await, kept)
}

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// A replica of `store` that meters to a usage store of its own.
async fn metered(store: &Store, writer: DescriptionWriter) -> (Store, Meter, Arc<Mutex<Vec<UsageEvent>>>) {
    let (store_url, kept) = usage_store().await;
    let spool = std::env::temp_dir().join(format!("indigo-descriptions-{}", uuid::Uuid::new_v4().simple()));
    let meter = Meter::new(Some(UsageSink::new(&store_url, "test")), spool);
    let replica = store.replica(|state| {
        state.meter = meter.clone();
        state.descriptions = Arc::new(writer);
    });
    (replica, meter, kept)
}

/// The AI events delivered so far, after a flush.
async fn ai_events(meter: &Meter, kept: &Mutex<Vec<UsageEvent>>) -> Vec<UsageEvent> {
    meter.flush().await.unwrap();
    kept.lock().unwrap().iter().filter(|e| e.event_type == "ai_request").cloned().collect()
}

#[tokio::test]
async fn the_built_in_writer_describes_stores_meters_and_stops_at_the_plans_credits() {
    let (store, ids) =
        Store::start(&[("writer-shop", plan_with_credits("growth", 1)), ("plain-shop", plan("starter"))]).await;
    let (replica, meter, kept) = metered(&store, DescriptionWriter::Embedded).await;
    let staff = token(ids[0], CallerRole::Staff);
    let product = store.product(&staff, "Desk lamp", 4950, 3).await;
    let path = format!("/v1/products/{}/description", product["id"].as_str().unwrap());
    let plain = token(ids[1], CallerRole::Staff);
    let other =
        format!("/v1/products/{}/description", store.product(&plain, "Mug", 900, 1).await["id"].as_str().unwrap());
    // Another tenant's product is not found (and costs nothing).
    let foreign = replica.post(&staff, &other, json!({})).await;
    assert_eq!(foreign.status, StatusCode::NOT_FOUND, "{}", foreign.body);

    let written = replica.post(&staff, &path, json!({ "store": true })).await;
    assert_eq!(written.status, StatusCode::OK, "{}", written.body);
    assert_eq!(written.body["generator"], "embedded");
    assert_eq!(written.body["description"], "Desk lamp. Chosen for demo. Yours for 49.50 USD.");
    assert_eq!(written.body["stored"], true);
    let read = replica.get(&staff, &format!("/v1/products/{}", product["id"].as_str().unwrap())).await;
    assert_eq!(read.body["description"], written.body["description"], "stored on the product");
    // Without a body it is only returned, as the contract says.
    let contract = replica.call(None, axum::http::Method::GET, "/openapi.json", None).await;
    let body = &contract.body["paths"]["/v1/products/{id}/description"]["post"]["requestBody"];
    assert!(body.is_object() && !body["required"].as_bool().unwrap_or(false), "an optional body: {body}");
    let returned = replica.call(Some(&staff), axum::http::Method::POST, &path, None).await;
    assert_eq!((returned.status, &returned.body["stored"]), (StatusCode::OK, &json!(false)));

    // Each call metered once with its tokens; calls until the plan's one credit is spent.
    let rate = credit_rates()["embedded"];
    let tokens = |body: &Value| body["input_tokens"].as_u64().unwrap() + body["output_tokens"].as_u64().unwrap();
    let mut spent = (tokens(&written.body) + tokens(&returned.body)) as f64 * rate;
    let mut calls = 2;
    let refusal = loop {
        let reply = replica.post(&staff, &path, json!({})).await;
        if reply.status != StatusCode::OK {
            break reply;
        }
        spent += tokens(&reply.body) as f64 * rate;
        calls += 1;
        assert!(calls < 1000, "the plan's credit never ran out");
    };
    assert_eq!(refusal.status, StatusCode::FORBIDDEN, "{}", refusal.body);
    assert_eq!((refusal.code(), &refusal.body["limit"]), ("plan_limit", &json!(1)));
    assert_eq!(refusal.body["resource"], "ai_credits");
    assert!(spent >= 1.0, "refused only once the credit was spent: {spent}");
    let events = ai_events(&meter, &kept).await;
    assert_eq!(events.len(), calls, "every call metered once, the refused one not at all");
    let metered: f64 = events
        .iter()
        .map(|e| {
            let ai = e.ai.as_ref().unwrap();
            assert_eq!((ai.service.as_str(), e.quantity, e.tenant_id), ("embedded", 0.0, ids[0]));
            f64::from(ai.input_tokens + ai.output_tokens) * rate
        })
        .sum();
    assert!((metered - spent).abs() < 1e-9, "metered {metered} credits, answered {spent}");

    // Shoppers cannot; a plan without the feature cannot.
    let shopper = replica.post(&token(ids[0], CallerRole::Customer), &path, json!({})).await;
    assert_eq!((shopper.status, shopper.code()), (StatusCode::FORBIDDEN, "forbidden"));
    let reply = replica.post(&plain, &other, json!({})).await;
    assert_eq!((reply.status, reply.code()), (StatusCode::FORBIDDEN, "feature_not_in_plan"));
    store.cleanup().await;
}

/// What the Bedrock double answers next.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Answer {
    Describe,
    Throttle,
    Fail,
}

#[derive(Clone)]
struct Double {
    answer: Arc<Mutex<Answer>>,
    /// Each request: its model id, content type and JSON body.
    requests: Arc<Mutex<Vec<(String, String, Value)>>>,
}

/// Bedrock runtime's `InvokeModel` as Nova models answer it, or its
/// `ThrottlingException` and `ValidationException` shapes.
async fn invoke(
    State(double): State<Double>,
    Path(model): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> axum::response::Response {
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    double.requests.lock().unwrap().push((model, content_type, body));
    let answer = *double.answer.lock().unwrap();
    let error = |status: StatusCode, kind: &str, message: &str| {
        (status, [("x-amzn-errortype", kind.to_owned())], Json(json!({ "message": message }))).into_response()
    };
    match answer {
        Answer::Describe => Json(json!({
            "output": { "message": { "role": "assistant", "content": [{ "text": "A brass desk lamp for long evenings of reading." }] } },
            "stopReason": "end_turn",
            "usage": { "inputTokens": 40, "outputTokens": 20, "totalTokens": 60 }
        }))
        .into_response(),
        Answer::Throttle => error(StatusCode::TOO_MANY_REQUESTS, "ThrottlingException", "Too many requests, please wait before trying again."),
        Answer::Fail => error(StatusCode::BAD_REQUEST, "ValidationException", "The provided model identifier is invalid."),
    }
}

#[tokio::test]
async fn bedrock_writes_through_invoke_model_and_its_throttle_and_failure_are_answered_clearly() {
    let double = Double { answer: Arc::new(Mutex::new(Answer::Describe)), requests: Arc::default() };
    let url = serve(Router::new().route("/model/{model}/invoke", post(invoke)).with_state(double.clone())).await;
    let config = aws_sdk_bedrockruntime::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(&url)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        // One attempt: the test sees each throttle itself.
        .retry_config(RetryConfig::standard().with_max_attempts(1))
        .build();
    let writer = DescriptionWriter::Bedrock {
        client: aws_sdk_bedrockruntime::Client::from_conf(config),
        model_id: DEFAULT_BEDROCK_MODEL.into(),
    };
    let (store, ids) =
        Store::start(&[("bedrock-shop", plan("pro")), ("spent-shop", plan_with_credits("pro", 0))]).await;
    let (replica, meter, kept) = metered(&store, writer).await;
    let staff = token(ids[0], CallerRole::Staff);
    let product = store.product(&staff, "Desk lamp", 4950, 3).await;
    let path = format!("/v1/products/{}/description", product["id"].as_str().unwrap());

    let written = replica.post(&staff, &path, json!({})).await;
    assert_eq!(written.status, StatusCode::OK, "{}", written.body);
    assert_eq!(written.body["description"], "A brass desk lamp for long evenings of reading.");
    assert_eq!(
        (&written.body["generator"], &written.body["model"]),
        (&json!("bedrock"), &json!(DEFAULT_BEDROCK_MODEL))
    );
    assert_eq!((&written.body["input_tokens"], &written.body["output_tokens"]), (&json!(40), &json!(20)));
    {
        let requests = double.requests.lock().unwrap();
        let (model, content_type, body) = &requests[0];
        assert_eq!((model.as_str(), content_type.as_str()), (DEFAULT_BEDROCK_MODEL, "application/json"));
        assert_eq!(body["schemaVersion"], "messages-v1");
        let prompt = body["messages"][0]["content"][0]["text"].as_str().unwrap();
        assert!(prompt.contains("Desk lamp") && prompt.contains("49.50 USD"), "{prompt}");
    }

    *double.answer.lock().unwrap() = Answer::Throttle;
    let throttled = replica.post(&staff, &path, json!({})).await;
    assert_eq!((throttled.status, throttled.code()), (StatusCode::TOO_MANY_REQUESTS, "ai_throttled"));
    assert!(throttled.headers.contains_key("retry-after"));
    *double.answer.lock().unwrap() = Answer::Fail;
    let failed = replica.post(&staff, &path, json!({})).await;
    assert_eq!((failed.status, failed.code()), (StatusCode::BAD_GATEWAY, "upstream_failed"));
    assert_eq!(double.requests.lock().unwrap().len(), 3);

    // Only the call that wrote is metered: 60 tokens of Bedrock.
    let events = ai_events(&meter, &kept).await;
    assert_eq!(events.len(), 1, "{events:?}");
    let ai = events[0].ai.as_ref().unwrap();
    assert_eq!((ai.service.as_str(), ai.input_tokens, ai.output_tokens), ("bedrock", 40, 20));

    // A tenant without credits left is refused before the model is called.
    *double.answer.lock().unwrap() = Answer::Describe;
    let spent = token(ids[1], CallerRole::Staff);
    let other = store.product(&spent, "Mug", 900, 1).await;
    let refused =
        replica.post(&spent, &format!("/v1/products/{}/description", other["id"].as_str().unwrap()), json!({})).await;
    assert_eq!((refused.status, refused.code()), (StatusCode::FORBIDDEN, "plan_limit"));
    assert_eq!(double.requests.lock().unwrap().len(), 3, "no model call for a tenant out of credits");
    store.cleanup().await;
}
