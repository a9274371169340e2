//! A small Stripe emulator: the part of Stripe's API the control plane uses
//! (customers, products, prices, billing meters and meter events,
//! subscriptions, their invoices and prorations, test clocks), kept in memory. `indigo up --demo` runs it so that billing
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
    /// Meter events held back (`delay_meter_event`), received later.
    delayed_meter_events: Vec<Value>,
    subscriptions: HashMap<String, Value>,
    /// key → (fingerprint of the request, status, body)
    idempotency: HashMap<String, (String, u16, Value)>,
    received: Vec<Received>,
    next_id: u64,
    /// Paths (prefix) answered with this status, for failure tests.
    failures: Vec<(String, u16)>,
    invoices: Vec<Value>,
    /// Each subscription's metered usage is invoiced up to here (Unix time).
    invoiced_through: HashMap<String, i64>,
    /// Prorations waiting for their subscription's next invoice.
    pending_invoice_items: Vec<Value>,
    test_clocks: HashMap<String, Value>,
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
            .route("/v1/prices/{id}", get(retrieve_price))
            .route("/v1/billing/meters", post(create_meter).get(list_meters))
            .route("/v1/billing/meter_events", post(create_meter_event))
            .route("/v1/billing/meters/{id}/event_summaries", get(meter_event_summaries))
            .route("/v1/subscriptions", post(create_subscription))
            .route(
                "/v1/subscriptions/{id}",
                get(retrieve_subscription).post(update_subscription).delete(cancel_subscription),
            )
            .route("/v1/invoices", get(invoices::list_invoices))
            .route("/v1/invoices/create_preview", post(invoices::create_preview))
            .route(invoices::CLOSE_PERIOD, post(invoices::close_period))
            .route("/v1/test_helpers/test_clocks", post(invoices::create_test_clock))
            .route("/v1/test_helpers/test_clocks/{id}", get(invoices::retrieve_test_clock))
            .route("/v1/test_helpers/test_clocks/{id}/advance", post(invoices::advance_test_clock))
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

    /// Loses the meter event `identifier`, as if Stripe never received it.
    pub fn drop_meter_event(&self, identifier: &str) {
        self.emulator.objects.lock().expect("emulator lock").meter_events.retain(|e| e["identifier"] != identifier);
    }

    /// Counts the meter event `identifier` a second time, as a second event
    /// under another identifier would be.
    pub fn duplicate_meter_event(&self, identifier: &str) {
        let mut objects = self.emulator.objects.lock().expect("emulator lock");
        let Some(mut copy) = objects.meter_events.iter().find(|e| e["identifier"] == identifier).cloned() else {
            return;
        };
        copy["identifier"] = json!(format!("{identifier}-again"));
        objects.meter_events.push(copy);
    }

    /// Holds the meter event `identifier` back, as if it were still on its
    /// way: not counted until [`StripeEmulator::deliver_delayed_meter_events`].
    pub fn delay_meter_event(&self, identifier: &str) {
        let mut objects = self.emulator.objects.lock().expect("emulator lock");
        let (delayed, kept) =
            std::mem::take(&mut objects.meter_events).into_iter().partition(|e| e["identifier"] == identifier);
        objects.meter_events = kept;
        objects.delayed_meter_events.extend::<Vec<Value>>(delayed);
    }

    /// The meter events held back arrive.
    pub fn deliver_delayed_meter_events(&self) {
        let mut objects = self.emulator.objects.lock().expect("emulator lock");
        let delayed = std::mem::take(&mut objects.delayed_meter_events);
        objects.meter_events.extend(delayed);
    }

    /// Ends every active subscription's period now, as `POST /_emulator/close_period` does.
    pub fn close_periods(&self) -> Vec<Value> {
        invoices::close_all(&self.emulator, &[])
    }

    /// Moves every subscription's start (and its items' current period)
    /// `seconds` into the past, as if it had been made then.
    pub fn backdate_subscriptions(&self, seconds: i64) {
        let mut objects = self.emulator.objects.lock().expect("emulator lock");
        for subscription in objects.subscriptions.values_mut() {
            for field in ["created", "billing_cycle_anchor"] {
                subscription[field] = json!(subscription[field].as_i64().unwrap_or_default() - seconds);
            }
            let start = subscription["created"].as_i64().unwrap_or_default();
            invoices::start_period(subscription, start);
        }
    }

    /// Sets the quantity of line `line` of invoice `invoice` by hand (its
    /// amount follows the line's unit price), as an operator editing an
    /// invoice in the dashboard before it was finalized would have.
    pub fn edit_invoice_line(&self, invoice: &str, line: usize, quantity: f64) {
        let mut objects = self.emulator.objects.lock().expect("emulator lock");
        let Some(found) = objects.invoices.iter_mut().find(|i| i["id"] == invoice) else { return };
        let edited = &mut found["lines"]["data"][line];
        let unit: f64 = edited["pricing"]["unit_amount_decimal"].as_str().and_then(|u| u.parse().ok()).unwrap_or(0.0);
        edited["quantity"] = json!(quantity.round() as u64);
        edited["quantity_decimal"] = json!(quantity.to_string());
        edited["amount"] = json!((quantity * unit).round() as i64);
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

    /// The prorations waiting for `subscription`'s next invoice, oldest first.
    pub fn pending_invoice_items(&self, subscription: &str) -> Vec<Value> {
        self.with(|o| {
            o.pending_invoice_items
                .iter()
                .filter(|i| i["parent"]["subscription_item_details"]["subscription"] == subscription)
                .cloned()
                .collect()
        })
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
        self.objects.lock().expect("emulator lock").next_id(prefix)
    }
}

impl Objects {
    fn next_id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}_emu{:06}", self.next_id)
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
    let mut objects = emulator.objects.lock().expect("emulator lock");
    if let Some(clock) = param(&params, "test_clock") {
        if !objects.test_clocks.contains_key(clock) {
            return error(400, "invalid_request_error", &format!("No such test clock: '{clock}'"));
        }
        customer["test_clock"] = json!(clock);
    }
    objects.customers.insert(id, customer.clone());
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

async fn retrieve_price(State(emulator): State<Emulator>, Path(id): Path<String>) -> Response {
    match emulator.objects.lock().expect("emulator lock").prices.get(&id) {
        Some(price) => axum::Json(price.clone()).into_response(),
        None => error(404, "invalid_request_error", &format!("No such price: '{id}'")),
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
    price["unit_amount_decimal"] = json!(param(&params, "unit_amount_decimal").or(param(&params, "unit_amount")));
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

/// `GET /v1/billing/meters/{id}/event_summaries?customer=&start_time=&end_time=&value_grouping_window=hour`:
/// what the meter summed for the customer, per hour (or over the whole range without a window).
async fn meter_event_summaries(
    State(emulator): State<Emulator>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let params = parse_params(query.unwrap_or_default().as_bytes());
    let number = |key: &str| param(&params, key).and_then(|v| v.parse::<i64>().ok());
    let (Some(customer), Some(start), Some(end)) =
        (param(&params, "customer"), number("start_time"), number("end_time"))
    else {
        return error(400, "invalid_request_error", "customer, start_time and end_time are required.");
    };
    let hourly = param(&params, "value_grouping_window") == Some("hour");
    let objects = emulator.objects.lock().expect("emulator lock");
    let Some(meter) = objects.meters.get(&id) else {
        return error(404, "invalid_request_error", &format!("No such billing meter: '{id}'"));
    };
    let mut sums = std::collections::BTreeMap::<i64, f64>::new();
    for event in objects.meter_events.iter().filter(|e| e["event_name"] == meter["event_name"]) {
        let Some(at) = event["timestamp"].as_i64().filter(|t| (start..end).contains(t)) else { continue };
        if event["payload"]["stripe_customer_id"] != customer {
            continue;
        }
        let value = event["payload"]["value"].as_str().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        *sums.entry(if hourly { at - at.rem_euclid(3600) } else { start }).or_default() += value;
    }
    let data = sums
        .into_iter()
        .map(|(from, value)| {
            let to = if hourly { from + 3600 } else { end };
            json!({ "id": format!("mtrusg_{id}_{from}"), "object": "billing.meter_event_summary", "aggregated_value": value,
                    "start_time": from, "end_time": to, "meter": id, "livemode": false })
        })
        .collect();
    list(&format!("/v1/billing/meters/{id}/event_summaries"), data)
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
    // Now is the customer's test clock's time, for a customer on one.
    let now = invoices::customer_now(
        &emulator.objects.lock().expect("emulator lock"),
        param(&params, "payload[stripe_customer_id]").unwrap_or_default(),
    );
    let timestamp = param(&params, "timestamp").and_then(|t| t.parse::<i64>().ok()).unwrap_or(now);
    // As at Stripe: up to 35 days back, and at most 5 minutes ahead.
    if !(now - METER_EVENT_WINDOW_SECONDS..=now + 300).contains(&timestamp) {
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
    let price_ids: Vec<&str> = (0..).map_while(|n| param(&params, &format!("items[{n}][price]"))).collect();
    let (customer_exists, prices, at, clock) = {
        let objects = emulator.objects.lock().expect("emulator lock");
        let clock = objects.customers.get(customer).map(|c| c["test_clock"].clone()).unwrap_or_default();
        let at = invoices::customer_now(&objects, customer);
        let prices: Result<Vec<Value>, &str> =
            price_ids.iter().map(|id| objects.prices.get(*id).cloned().ok_or(*id)).collect();
        (objects.customers.contains_key(customer), prices, at, clock)
    };
    if !customer_exists {
        return error(400, "invalid_request_error", &format!("No such customer: '{customer}'"));
    }
    let prices = match prices {
        Ok(prices) if !prices.is_empty() => prices,
        Ok(_) => return error(400, "invalid_request_error", "Missing required param: items."),
        Err(price_id) => return error(400, "invalid_request_error", &format!("No such price: '{price_id}'")),
    };
    let id = emulator.next_id("sub");
    let mut subscription = emulator.fixture("subscription");
    subscription["id"] = json!(id);
    subscription["customer"] = json!(customer);
    subscription["status"] = json!("active");
    subscription["metadata"] = metadata(&params);
    subscription["created"] = json!(at);
    subscription["billing_cycle_anchor"] = json!(at);
    subscription["test_clock"] = clock;
    subscription["cancel_at_period_end"] = json!(false);
    let template = subscription["items"]["data"][0].clone();
    let items: Vec<Value> = prices
        .into_iter()
        .map(|price| {
            let mut item = template.clone();
            item["id"] = json!(emulator.next_id("si"));
            item["price"] = price;
            item["subscription"] = json!(id);
            item
        })
        .collect();
    subscription["items"]["data"] = json!(items);
    subscription["items"]["url"] = json!(format!("/v1/subscription_items?subscription={id}"));
    invoices::start_period(&mut subscription, at);
    emulator.objects.lock().expect("emulator lock").subscriptions.insert(id, subscription.clone());
    emulator.emit("customer.subscription.created", &subscription);
    // As at Stripe: the first period is invoiced (and here paid) at once.
    let template = emulator.fixture("invoice")["lines"]["data"][0].clone();
    let lines = invoices::price_lines(&mut emulator.objects.lock().expect("emulator lock"), &template, &subscription);
    invoices::issue(&emulator, &subscription, ("subscription_create", at), lines, true);
    axum::Json(subscription).into_response()
}

async fn retrieve_subscription(State(emulator): State<Emulator>, Path(id): Path<String>) -> Response {
    match emulator.objects.lock().expect("emulator lock").subscriptions.get(&id) {
        Some(subscription) => axum::Json(subscription.clone()).into_response(),
        None => error(404, "invalid_request_error", &format!("No such subscription: '{id}'")),
    }
}

/// A price change: the item named by `items[0][id]` moves to `items[0][price]`,
/// prorated as `proration_behavior` asks (Stripe's default
/// `create_prorations`: a credit and a charge for the rest of the period,
/// pending for the next invoice; `always_invoice`: invoiced at once; `none`).
async fn update_subscription(State(emulator): State<Emulator>, Path(id): Path<String>, body: Bytes) -> Response {
    let params = parse_params(&body);
    let behaviour = param(&params, "proration_behavior").unwrap_or("create_prorations");
    if !["create_prorations", "always_invoice", "none"].contains(&behaviour) {
        return error(400, "invalid_request_error", &format!("Invalid proration_behavior: '{behaviour}'"));
    }
    let mut objects = emulator.objects.lock().expect("emulator lock");
    let price = match param(&params, "items[0][price]") {
        Some(price_id) => match objects.prices.get(price_id) {
            Some(price) => Some(price.clone()),
            None => return error(400, "invalid_request_error", &format!("No such price: '{price_id}'")),
        },
        None => None,
    };
    let at = match objects.subscriptions.get(&id) {
        Some(subscription) => invoices::customer_now(&objects, subscription["customer"].as_str().unwrap_or_default()),
        None => return error(404, "invalid_request_error", &format!("No such subscription: '{id}'")),
    };
    if objects.subscriptions[&id]["status"] == "canceled" {
        return error(
            400,
            "invalid_request_error",
            "A canceled subscription can only update its cancellation_details and metadata.",
        );
    }
    let mut prorations = Vec::new();
    if let Some(price) = price {
        let item_id = param(&params, "items[0][id]").unwrap_or_default();
        let items = objects.subscriptions[&id]["items"]["data"].as_array().cloned().unwrap_or_default();
        let Some(index) = items.iter().position(|i| i["id"] == item_id) else {
            return error(400, "invalid_request_error", &format!("No such subscription item: '{item_id}'"));
        };
        if behaviour != "none" && items[index]["price"]["id"] != price["id"] {
            let template = emulator.fixture("invoice")["lines"]["data"][0].clone();
            prorations.extend(invoices::prorations(&mut objects, &template, &items[index], &price, at));
        }
        let subscription = objects.subscriptions.get_mut(&id).expect("looked up above");
        subscription["items"]["data"][index]["price"] = price;
    }
    let updated = objects.subscriptions[&id].clone();
    if behaviour == "create_prorations" {
        objects.pending_invoice_items.append(&mut prorations);
    }
    drop(objects);
    emulator.emit("customer.subscription.updated", &updated);
    if behaviour == "always_invoice" && !prorations.is_empty() {
        invoices::issue(&emulator, &updated, ("subscription_update", at), prorations, true);
    }
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

    async fn form(url: &str, path: &str, body: &str) -> Value {
        let response = reqwest::Client::new()
            .post(format!("{url}{path}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{path}: {}", response.status());
        response.json().await.unwrap()
    }

    /// A subscription on a test clock: its first period invoiced at once; a
    /// price change a third into the period prorated (a credit for the old
    /// price's two thirds left, a charge for the new one's) onto the next
    /// invoice, which the clock's crossing the period's end issues with the new
    /// price for the next period; two periods crossed, two invoices.
    #[tokio::test]
    async fn a_price_change_is_prorated_onto_the_invoice_the_test_clock_brings() {
        let emulator = StripeEmulator::start().await.unwrap();
        let url = &emulator.url;
        let start = 1_800_000_000;
        let clock = form(url, "v1/test_helpers/test_clocks", &format!("frozen_time={start}")).await;
        let clock = clock["id"].as_str().unwrap();
        let customer = form(url, "v1/customers", &format!("email=a@b.example&test_clock={clock}")).await;
        let customer = customer["id"].as_str().unwrap();
        let product = form(url, "v1/products", "name=Plan").await;
        let product = product["id"].as_str().unwrap();
        let price =
            |amount: u32| format!("product={product}&unit_amount={amount}&currency=usd&recurring[interval]=month");
        let growth = form(url, "v1/prices", &price(3000)).await;
        let pro = form(url, "v1/prices", &price(9000)).await;
        let body = format!("customer={customer}&items[0][price]={}", growth["id"].as_str().unwrap());
        let subscription = form(url, "v1/subscriptions", &body).await;
        let (id, item) =
            (subscription["id"].as_str().unwrap(), subscription["items"]["data"][0]["id"].as_str().unwrap());
        assert_eq!(subscription["items"]["data"][0]["current_period_end"], start + invoices::PERIOD_SECONDS);
        let first = emulator.invoices();
        assert_eq!(
            (first.len(), &first[0]["billing_reason"], &first[0]["total"]),
            (1, &json!("subscription_create"), &json!(3000))
        );

        let third = start + invoices::PERIOD_SECONDS / 3;
        form(url, &format!("v1/test_helpers/test_clocks/{clock}/advance"), &format!("frozen_time={third}")).await;
        assert_eq!(emulator.invoices().len(), 1, "nothing is due inside the period");
        // Previewed first: the renewal it would bring, and nothing kept.
        let body = format!(
            "subscription={id}&subscription_details[items][0][id]={item}&subscription_details[items][0][price]={}",
            pro["id"].as_str().unwrap()
        );
        let preview = form(url, "v1/invoices/create_preview", &body).await;
        let prorated: i64 = preview["lines"]["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| invoices::is_proration(l))
            .map(|l| l["amount"].as_i64().unwrap())
            .sum();
        assert_eq!((prorated, &preview["total"]), (4000, &json!(13000)), "{preview}");
        assert!(emulator.pending_invoice_items(id).is_empty(), "a preview keeps nothing");
        let body = format!(
            "items[0][id]={item}&items[0][price]={}&proration_behavior=create_prorations",
            pro["id"].as_str().unwrap()
        );
        form(url, &format!("v1/subscriptions/{id}"), &body).await;

        let later = start + 2 * invoices::PERIOD_SECONDS + 60;
        form(url, &format!("v1/test_helpers/test_clocks/{clock}/advance"), &format!("frozen_time={later}")).await;
        let invoices = emulator.invoices();
        assert_eq!(invoices.len(), 3, "{invoices:?}");
        let renewal = &invoices[1];
        assert_eq!(renewal["billing_reason"], "subscription_cycle");
        assert_eq!(renewal["created"], start + invoices::PERIOD_SECONDS);
        let amounts: Vec<(i64, bool)> = renewal["lines"]["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| (l["amount"].as_i64().unwrap(), invoices::is_proration(l)))
            .collect();
        assert_eq!(amounts, [(9000, false), (-2000, true), (6000, true)]);
        assert_eq!(renewal["total"], 13000);
        assert_eq!(invoices[2]["lines"]["data"].as_array().unwrap().len(), 1, "prorations are invoiced once");
        assert_eq!(invoices[2]["total"], 9000);
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
