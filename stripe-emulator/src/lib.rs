//! A small Stripe emulator: the part of Stripe's API the control plane uses
//! (customers, products, prices, billing meters and meter events,
//! subscriptions), kept in memory. `indigo up --demo` runs it so that billing
//! works without a Stripe account, and the tests run it to see what Stripe
//! would have been asked. It answers with Stripe's own published example
//! objects (`fixtures/stripe/fixtures.json`, from stripe/openapi's
//! fixtures3.json, MIT) with the ids and fields of what was created, honours
//! `Idempotency-Key` as Stripe does (same key and body: the first answer
//! again; same key, other body: 400 `idempotency_error`), and records every
//! request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

pub mod events;
mod invoices;

const FIXTURES: &str = include_str!("../fixtures/stripe/fixtures.json");

/// One request the emulator received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub idempotency_key: Option<String>,
    /// Form fields (or query parameters) in order.
    pub params: Vec<(String, String)>,
}

#[derive(Default)]
struct Objects {
    customers: HashMap<String, Value>,
    deleted_customers: Vec<String>,
    products: HashMap<String, Value>,
    prices: HashMap<String, Value>,
    meters: HashMap<String, Value>,
    meter_events: Vec<Value>,
    subscriptions: HashMap<String, Value>,
    /// key → (fingerprint of the request, status, body)
    idempotency: HashMap<String, (String, u16, Value)>,
    received: Vec<Received>,
    next_id: u64,
    /// Paths (prefix) answered with this status, for failure tests.
    failures: Vec<(String, u16)>,
    invoices: Vec<Value>,
    /// Each subscription's invoiced period so far ends here (Unix time).
    invoiced_through: HashMap<String, i64>,
    webhook: Option<events::Endpoint>,
    deliveries: Vec<events::Delivery>,
}

#[derive(Clone)]
struct Emulator {
    fixtures: Arc<Value>,
    objects: Arc<Mutex<Objects>>,
    http: reqwest::Client,
}

/// A running emulator; stops when dropped.
pub struct StripeEmulator {
    pub url: String,
    emulator: Emulator,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StripeEmulator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StripeEmulator {
    /// The emulator's own path (not Stripe's) that ends every active
    /// subscription's billing period now: invoices, payments, their webhooks.
    pub const CLOSE_PERIOD: &str = invoices::CLOSE_PERIOD;

    /// Starts one on a free port of the loopback interface.
    pub async fn start() -> anyhow::Result<Self> {
        let emulator = Emulator {
            fixtures: Arc::new(serde_json::from_str(FIXTURES)?),
            objects: Arc::default(),
            http: reqwest::Client::builder().timeout(std::time::Duration::from_secs(10)).build()?,
        };
        let app = Router::new()
            .route("/v1/customers", post(create_customer))
            .route("/v1/customers/{id}", get(retrieve_customer).delete(delete_customer))
            .route("/v1/products", post(create_product))
            .route("/v1/products/{id}", get(retrieve_product))
            .route("/v1/prices", post(create_price).get(list_prices))
            .route("/v1/billing/meters", post(create_meter).get(list_meters))
            .route("/v1/billing/meter_events", post(create_meter_event))
            .route("/v1/subscriptions", post(create_subscription))
            .route(
                "/v1/subscriptions/{id}",
                get(retrieve_subscription).post(update_subscription).delete(cancel_subscription),
            )
            .route("/v1/invoices", get(invoices::list_invoices))
            .route(invoices::CLOSE_PERIOD, post(invoices::close_period))
            .fallback(|uri: Uri| async move {
                error(404, "invalid_request_error", &format!("Unrecognized request URL ({uri})"))
            })
            .layer(axum::middleware::from_fn_with_state(emulator.clone(), idempotent))
            .with_state(emulator.clone());
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let url = format!("http://{}/", listener.local_addr()?);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { url, emulator, task })
    }

    fn with<T>(&self, f: impl FnOnce(&Objects) -> T) -> T {
        f(&self.emulator.objects.lock().expect("emulator lock"))
    }

    /// Every request received so far.
    pub fn received(&self) -> Vec<Received> {
        self.with(|o| o.received.clone())
    }

    /// Customers that exist (not deleted), with `tenant_id` metadata if given.
    pub fn live_customers(&self, tenant_id: Option<&str>) -> Vec<Value> {
        self.with(|o| {
            o.customers
                .values()
                .filter(|c| tenant_id.is_none_or(|t| c["metadata"]["tenant_id"] == t))
                .cloned()
                .collect()
        })
    }

    /// Customers ever created (deleted ones included) for a tenant.
    pub fn customers_created(&self, tenant_id: &str) -> usize {
        self.with(|o| {
            o.received
                .iter()
                .filter(|r| r.method == "POST" && r.path == "/v1/customers")
                .filter(|r| r.params.iter().any(|(k, v)| k == "metadata[tenant_id]" && v == tenant_id))
                .map(|r| r.idempotency_key.clone())
                .collect::<std::collections::HashSet<_>>()
                .len()
        })
    }

    pub fn deleted_customers(&self) -> Vec<String> {
        self.with(|o| o.deleted_customers.clone())
    }

    /// Subscriptions of a customer with their status.
    pub fn subscriptions_of(&self, customer: &str) -> Vec<Value> {
        self.with(|o| o.subscriptions.values().filter(|s| s["customer"] == customer).cloned().collect())
    }

    pub fn all_subscriptions(&self) -> Vec<Value> {
        self.with(|o| o.subscriptions.values().cloned().collect())
    }

    pub fn prices(&self) -> Vec<Value> {
        self.with(|o| o.prices.values().cloned().collect())
    }

    pub fn meters(&self) -> Vec<Value> {
        self.with(|o| o.meters.values().cloned().collect())
    }

    pub fn meter_events(&self) -> Vec<Value> {
        self.with(|o| o.meter_events.clone())
    }

    /// Sends every event from now on to `url`, signed with `secret` as Stripe
    /// signs webhooks (`Stripe-Signature: t=…,v1=…`).
    pub fn deliver_webhooks_to(&self, url: &str, secret: &str) {
        self.emulator.objects.lock().expect("emulator lock").webhook =
            Some(events::Endpoint { url: url.to_owned(), secret: secret.to_owned() });
    }

    /// Every webhook delivery so far, with the status it was answered.
    pub fn deliveries(&self) -> Vec<events::Delivery> {
        self.with(|o| o.deliveries.clone())
    }

    pub fn invoices(&self) -> Vec<Value> {
        self.with(|o| o.invoices.clone())
    }

    /// Answers requests whose path starts with `prefix` with `status` from now on.
    pub fn fail(&self, prefix: &str, status: u16) {
        self.emulator.objects.lock().expect("emulator lock").failures.push((prefix.to_owned(), status));
    }
}

fn error(status: u16, kind: &str, message: &str) -> Response {
    let body = json!({ "error": { "type": kind, "message": message } });
    (StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST), axum::Json(body)).into_response()
}

fn parse_params(raw: &[u8]) -> Vec<(String, String)> {
    serde_urlencoded::from_bytes(raw).unwrap_or_default()
}

fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// `metadata[x]=y` fields as an object.
fn metadata(params: &[(String, String)]) -> Value {
    let map: serde_json::Map<String, Value> = params
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("metadata[")?.strip_suffix(']')?.to_owned(), json!(v))))
        .collect();
    Value::Object(map)
}

/// Records the request, replays or refuses reused idempotency keys, injects failures.
async fn idempotent(
    State(emulator): State<Emulator>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
    let key = parts.headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let path = parts.uri.path().to_owned();
    let raw_params =
        if parts.method == Method::GET { parts.uri.query().unwrap_or("").as_bytes().to_vec() } else { bytes.to_vec() };
    // Stripe compares parameters, not bytes: the order of form fields does not matter.
    let mut params = parse_params(&raw_params);
    params.sort();
    let fingerprint = format!("{} {} {params:?}", parts.method, path);
    {
        let mut objects = emulator.objects.lock().expect("emulator lock");
        objects.received.push(Received {
            method: parts.method.to_string(),
            path: path.clone(),
            idempotency_key: key.clone(),
            params: parse_params(&raw_params),
        });
        if let Some((_, status)) = objects.failures.iter().find(|(prefix, _)| path.starts_with(prefix.as_str())) {
            return error(*status, "api_error", "injected failure");
        }
        if let Some(key) = &key
            && let Some((seen, status, body)) = objects.idempotency.get(key)
        {
            if *seen != fingerprint {
                return error(
                    400,
                    "idempotency_error",
                    &format!(
                        "Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '{key}' if you meant to execute a different request."
                    ),
                );
            }
            let mut response =
                (StatusCode::from_u16(*status).unwrap_or(StatusCode::OK), axum::Json(body.clone())).into_response();
            response.headers_mut().insert("idempotent-replayed", "true".parse().expect("header"));
            return response;
        }
    }
    let response = next.run(axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes))).await;
    let Some(key) = key else { return response };
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
    if parts.status.is_success() || parts.status.is_client_error() {
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        emulator
            .objects
            .lock()
            .expect("emulator lock")
            .idempotency
            .insert(key, (fingerprint, parts.status.as_u16(), value));
    }
    Response::from_parts(parts, axum::body::Body::from(bytes))
}

impl Emulator {
    fn fixture(&self, name: &str) -> Value {
        self.fixtures[name].clone()
    }

    fn next_id(&self, prefix: &str) -> String {
        let mut objects = self.objects.lock().expect("emulator lock");
        objects.next_id += 1;
        format!("{prefix}_emu{:06}", objects.next_id)
    }
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

async fn create_customer(State(emulator): State<Emulator>, body: Bytes) -> Response {
    let params = parse_params(&body);
    let mut customer = emulator.fixture("customer");
    customer["id"] = json!(emulator.next_id("cus"));
    customer["email"] = json!(param(&params, "email"));
    customer["name"] = json!(param(&params, "name"));
    customer["metadata"] = metadata(&params);
    customer["created"] = json!(now());
    customer["discount"] = Value::Null;
    let id = customer["id"].as_str().unwrap_or_default().to_owned();
    emulator.objects.lock().expect("emulator lock").customers.insert(id, customer.clone());
    axum::Json(customer).into_response()
}

async fn retrieve_customer(State(emulator): State<Emulator>, Path(id): Path<String>) -> Response {
    match emulator.objects.lock().expect("emulator lock").customers.get(&id) {
        Some(customer) => axum::Json(customer.clone()).into_response(),
        None => error(404, "invalid_request_error", &format!("No such customer: '{id}'")),
    }
}

async fn delete_customer(State(emulator): State<Emulator>, Path(id): Path<String>) -> Response {
    let mut objects = emulator.objects.lock().expect("emulator lock");
    if objects.customers.remove(&id).is_none() {
        return error(404, "invalid_request_error", &format!("No such customer: '{id}'"));
    }
    objects.deleted_customers.push(id.clone());
    // As at Stripe: deleting a customer cancels its subscriptions.
    let mut canceled = Vec::new();
    for subscription in objects.subscriptions.values_mut().filter(|s| s["customer"] == id.as_str()) {
        if subscription["status"] != "canceled" {
            subscription["status"] = json!("canceled");
            canceled.push(subscription.clone());
        }
    }
    drop(objects);
    for subscription in &canceled {
        emulator.emit("customer.subscription.deleted", subscription);
    }
    let mut deleted = emulator.fixture("deleted_customer");
    deleted["id"] = json!(id);
    axum::Json(deleted).into_response()
}

async fn create_product(State(emulator): State<Emulator>, body: Bytes) -> Response {
    let params = parse_params(&body);
    let id = param(&params, "id").map(str::to_owned).unwrap_or_else(|| emulator.next_id("prod"));
    let mut objects = emulator.objects.lock().expect("emulator lock");
    if objects.products.contains_key(&id) {
        return error(400, "invalid_request_error", &format!("Product already exists: '{id}'"));
    }
    let mut product = emulator.fixture("product");
    product["id"] = json!(id);
    product["name"] = json!(param(&params, "name"));
    product["metadata"] = metadata(&params);
    objects.products.insert(id, product.clone());
    axum::Json(product).into_response()
}

async fn retrieve_product(State(emulator): State<Emulator>, Path(id): Path<String>) -> Response {
    match emulator.objects.lock().expect("emulator lock").products.get(&id) {
        Some(product) => axum::Json(product.clone()).into_response(),
        None => error(404, "invalid_request_error", &format!("No such product: '{id}'")),
    }
}

async fn create_price(State(emulator): State<Emulator>, body: Bytes) -> Response {
    let params = parse_params(&body);
    let Some(product) = param(&params, "product") else {
        return error(400, "invalid_request_error", "Missing required param: product.");
    };
    let mut price = emulator.fixture("price");
    price["id"] = json!(emulator.next_id("price"));
    price["product"] = json!(product);
    price["currency"] = json!(param(&params, "currency"));
    price["unit_amount"] = json!(param(&params, "unit_amount").and_then(|a| a.parse::<i64>().ok()));
    price["unit_amount_decimal"] = json!(param(&params, "unit_amount"));
    price["lookup_key"] = json!(param(&params, "lookup_key"));
    price["type"] = json!("recurring");
    price["recurring"] = json!({
        "interval": param(&params, "recurring[interval]").unwrap_or("month"),
        "interval_count": 1,
        "meter": param(&params, "recurring[meter]"),
        "trial_period_days": null,
        "usage_type": param(&params, "recurring[usage_type]").unwrap_or("licensed"),
    });
    let id = price["id"].as_str().unwrap_or_default().to_owned();
    emulator.objects.lock().expect("emulator lock").prices.insert(id, price.clone());
    axum::Json(price).into_response()
}

fn list(url: &str, data: Vec<Value>) -> Response {
    axum::Json(json!({ "object": "list", "url": url, "has_more": false, "data": data })).into_response()
}

async fn list_prices(State(emulator): State<Emulator>, RawQuery(query): RawQuery) -> Response {
    let params = parse_params(query.unwrap_or_default().as_bytes());
    let keys: Vec<&str> =
        params.iter().filter(|(k, _)| k.starts_with("lookup_keys")).map(|(_, v)| v.as_str()).collect();
    let prices = emulator.objects.lock().expect("emulator lock").prices.values().cloned().collect::<Vec<_>>();
    let data = prices.into_iter().filter(|p| keys.is_empty() || keys.iter().any(|k| p["lookup_key"] == *k)).collect();
    list("/v1/prices", data)
}

async fn create_meter(State(emulator): State<Emulator>, body: Bytes) -> Response {
    let params = parse_params(&body);
    let mut meter = emulator.fixture("billing.meter");
    meter["id"] = json!(emulator.next_id("mtr"));
    meter["event_name"] = json!(param(&params, "event_name"));
    meter["display_name"] = json!(param(&params, "display_name"));
    meter["default_aggregation"] = json!({ "formula": param(&params, "default_aggregation[formula]") });
    meter["livemode"] = json!(false);
    let id = meter["id"].as_str().unwrap_or_default().to_owned();
    emulator.objects.lock().expect("emulator lock").meters.insert(id, meter.clone());
    axum::Json(meter).into_response()
}

async fn list_meters(State(emulator): State<Emulator>) -> Response {
    let data = emulator.objects.lock().expect("emulator lock").meters.values().cloned().collect();
    list("/v1/billing/meters", data)
}

async fn create_meter_event(State(emulator): State<Emulator>, body: Bytes) -> Response {
    let params = parse_params(&body);
    let payload: serde_json::Map<String, Value> = params
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("payload[")?.strip_suffix(']')?.to_owned(), json!(v))))
        .collect();
    let mut event = emulator.fixture("billing.meter_event");
    event["event_name"] = json!(param(&params, "event_name"));
    event["identifier"] = json!(param(&params, "identifier"));
    event["payload"] = Value::Object(payload);
    let timestamp = param(&params, "timestamp").and_then(|t| t.parse::<i64>().ok()).unwrap_or_else(now);
    // As at Stripe: up to 35 days back, and at most 5 minutes ahead.
    if !(now() - METER_EVENT_WINDOW_SECONDS..=now() + 300).contains(&timestamp) {
        let message = "Timestamp must be within the past 35 days and no more than 5 minutes in the future.";
        return error(400, "invalid_request_error", message);
    }
    event["timestamp"] = json!(timestamp);
    event["livemode"] = json!(false);
    let mut objects = emulator.objects.lock().expect("emulator lock");
    // An identifier already received is the same event: counted once.
    let identifier = param(&params, "identifier");
    if let Some(first) = identifier.and_then(|id| objects.meter_events.iter().find(|e| e["identifier"] == id)) {
        return axum::Json(first.clone()).into_response();
    }
    objects.meter_events.push(event.clone());
    axum::Json(event).into_response()
}

/// How far back a meter event may be dated.
const METER_EVENT_WINDOW_SECONDS: i64 = 35 * 24 * 3600;

async fn create_subscription(State(emulator): State<Emulator>, body: Bytes) -> Response {
    let params = parse_params(&body);
    let Some(customer) = param(&params, "customer") else {
        return error(400, "invalid_request_error", "Missing required param: customer.");
    };
    let price_id = param(&params, "items[0][price]").unwrap_or_default().to_owned();
    let (customer_exists, price) = {
        let objects = emulator.objects.lock().expect("emulator lock");
        (objects.customers.contains_key(customer), objects.prices.get(&price_id).cloned())
    };
    if !customer_exists {
        return error(400, "invalid_request_error", &format!("No such customer: '{customer}'"));
    }
    let Some(price) = price else {
        return error(400, "invalid_request_error", &format!("No such price: '{price_id}'"));
    };
    let id = emulator.next_id("sub");
    let mut subscription = emulator.fixture("subscription");
    subscription["id"] = json!(id);
    subscription["customer"] = json!(customer);
    subscription["status"] = json!("active");
    subscription["metadata"] = metadata(&params);
    subscription["created"] = json!(now());
    let mut item = subscription["items"]["data"][0].clone();
    item["id"] = json!(emulator.next_id("si"));
    item["price"] = price;
    item["subscription"] = json!(id);
    subscription["items"]["data"] = json!([item]);
    subscription["items"]["url"] = json!(format!("/v1/subscription_items?subscription={id}"));
    emulator.objects.lock().expect("emulator lock").subscriptions.insert(id, subscription.clone());
    emulator.emit("customer.subscription.created", &subscription);
    axum::Json(subscription).into_response()
}

async fn retrieve_subscription(State(emulator): State<Emulator>, Path(id): Path<String>) -> Response {
    match emulator.objects.lock().expect("emulator lock").subscriptions.get(&id) {
        Some(subscription) => axum::Json(subscription.clone()).into_response(),
        None => error(404, "invalid_request_error", &format!("No such subscription: '{id}'")),
    }
}

/// A price change: the item named by `items[0][id]` moves to `items[0][price]`;
/// the proration behaviour asked for is kept on the subscription's metadata
/// for tests to see (Stripe itself would create proration invoice items).
async fn update_subscription(State(emulator): State<Emulator>, Path(id): Path<String>, body: Bytes) -> Response {
    let params = parse_params(&body);
    let mut objects = emulator.objects.lock().expect("emulator lock");
    let price = match param(&params, "items[0][price]") {
        Some(price_id) => match objects.prices.get(price_id) {
            Some(price) => Some(price.clone()),
            None => return error(400, "invalid_request_error", &format!("No such price: '{price_id}'")),
        },
        None => None,
    };
    let Some(subscription) = objects.subscriptions.get_mut(&id) else {
        return error(404, "invalid_request_error", &format!("No such subscription: '{id}'"));
    };
    if subscription["status"] == "canceled" {
        return error(
            400,
            "invalid_request_error",
            "A canceled subscription can only update its cancellation_details and metadata.",
        );
    }
    if let Some(price) = price {
        let item_id = param(&params, "items[0][id]").unwrap_or_default();
        let Some(item) = subscription["items"]["data"]
            .as_array_mut()
            .and_then(|items| items.iter_mut().find(|i| i["id"] == item_id))
        else {
            return error(400, "invalid_request_error", &format!("No such subscription item: '{item_id}'"));
        };
        item["price"] = price;
    }
    if let Some(behaviour) = param(&params, "proration_behavior") {
        subscription["metadata"]["indigo_test_proration_behavior"] = json!(behaviour);
    }
    let updated = subscription.clone();
    drop(objects);
    emulator.emit("customer.subscription.updated", &updated);
    axum::Json(updated).into_response()
}

async fn cancel_subscription(
    State(emulator): State<Emulator>,
    Path(id): Path<String>,
    _headers: HeaderMap,
    _method: Method,
) -> Response {
    let mut objects = emulator.objects.lock().expect("emulator lock");
    match objects.subscriptions.get_mut(&id) {
        Some(subscription) => {
            subscription["status"] = json!("canceled");
            subscription["canceled_at"] = json!(now());
            let canceled = subscription.clone();
            drop(objects);
            emulator.emit("customer.subscription.deleted", &canceled);
            axum::Json(canceled).into_response()
        }
        None => error(404, "invalid_request_error", &format!("No such subscription: '{id}'")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn meter_event(url: &str, identifier: &str, timestamp: i64) -> reqwest::StatusCode {
        let body = format!(
            "event_name=api_calls&identifier={identifier}&timestamp={timestamp}&payload[stripe_customer_id]=cus_1&payload[value]=3"
        );
        reqwest::Client::new()
            .post(format!("{url}v1/billing/meter_events"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap()
            .status()
    }

    /// Meter events as Stripe takes them: an identifier counts once, and
    /// events dated more than 35 days back or ahead of now are refused.
    #[tokio::test]
    async fn meter_events_count_once_within_their_window() {
        let emulator = StripeEmulator::start().await.unwrap();
        assert_eq!(meter_event(&emulator.url, "evt-a", now() - 3600).await, 200);
        assert_eq!(meter_event(&emulator.url, "evt-a", now() - 3600).await, 200, "a resend is answered");
        assert_eq!(meter_event(&emulator.url, "evt-b", now() - 36 * 24 * 3600).await, 400);
        assert_eq!(meter_event(&emulator.url, "evt-c", now() + 3600).await, 400);
        let events = emulator.meter_events();
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0]["payload"]["value"], "3");
    }
}
