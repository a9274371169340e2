//! Invoices and billing periods, as Stripe runs them: a subscription's
//! licensed prices are invoiced in advance, the first period when the
//! subscription is created; at each period's end the next one is, with the
//! prorations a price change left pending, and its metered prices are
//! invoiced in arrears — a line per metered item with what its meter counted
//! for the customer in the period that ended (also on the invoice's metadata,
//! per meter). Periods here are 30 days (Stripe's are calendar months).
//!
//! A period ends when a test clock its customer is on is advanced past it
//! (Stripe's `/v1/test_helpers/test_clocks`), or for every active subscription
//! at once with the emulator's own `POST /_emulator/close_period`
//! (`fail=<customer>`: that customer's payment fails).

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{Emulator, Objects, error, list, now, param, parse_params};

/// Not one of Stripe's paths: the emulator's own, to end a period.
pub const CLOSE_PERIOD: &str = "/_emulator/close_period";

/// The length of a billing period.
pub(crate) const PERIOD_SECONDS: i64 = 30 * 24 * 3600;

/// The time on the customer's test clock, or now for a customer on none.
pub(crate) fn customer_now(objects: &Objects, customer: &str) -> i64 {
    objects
        .customers
        .get(customer)
        .and_then(|c| c["test_clock"].as_str())
        .and_then(|clock| objects.test_clocks.get(clock))
        .and_then(|clock| clock["frozen_time"].as_i64())
        .unwrap_or_else(now)
}

/// Sets every item of `subscription` to the period starting at `start`.
pub(crate) fn start_period(subscription: &mut Value, start: i64) {
    for item in subscription["items"]["data"].as_array_mut().into_iter().flatten() {
        item["current_period_start"] = json!(start);
        item["current_period_end"] = json!(start + PERIOD_SECONDS);
    }
}

/// An invoice line in Stripe's shape (the published example's, with what
/// this line is): `amount` of `price` for `period`, from the subscription
/// item, a proration or not.
fn line(
    template: &Value,
    id: String,
    amount: i64,
    price: &Value,
    period: (i64, i64),
    item: &Value,
    proration: bool,
) -> Value {
    let mut line = template.clone();
    line["id"] = json!(id);
    line["amount"] = json!(amount);
    line["subtotal"] = json!(amount);
    line["currency"] = price["currency"].clone();
    line["description"] = json!(format!("{} × {}", 1, price["id"].as_str().unwrap_or_default()));
    line["discount_amounts"] = json!([]);
    line["invoice"] = Value::Null;
    line["period"] = json!({ "start": period.0, "end": period.1 });
    line["pricing"] = json!({ "type": "price_details", "price_details": { "price": price["id"], "product": price["product"] },
                              "unit_amount_decimal": price["unit_amount"].as_i64().map(|a| a.to_string()) });
    line["parent"] = json!({ "type": "subscription_item_details", "invoice_item_details": null,
                             "subscription_item_details": { "invoice_item": null, "proration": proration,
                                 "proration_details": { "credited_items": null },
                                 "subscription": item["subscription"], "subscription_item": item["id"] } });
    line["quantity"] = json!(1);
    line
}

/// Whether an invoice line is a proration.
#[cfg(test)]
pub(crate) fn is_proration(line: &Value) -> bool {
    line["parent"]["subscription_item_details"]["proration"] == true
}

/// Whether a subscription item's price is metered (billed in arrears).
fn metered(item: &Value) -> bool {
    item["price"]["recurring"]["usage_type"] == "metered"
}

/// Each licensed item's price for its current period, as invoice lines.
pub(crate) fn price_lines(objects: &mut Objects, template: &Value, subscription: &Value) -> Vec<Value> {
    subscription["items"]["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|item| !metered(item))
        .map(|item| {
            let period =
                (item["current_period_start"].as_i64().unwrap_or(0), item["current_period_end"].as_i64().unwrap_or(0));
            let amount = item["price"]["unit_amount"].as_i64().unwrap_or(0);
            line(template, objects.next_id("il"), amount, &item["price"], period, item, false)
        })
        .collect()
}

/// The prorations pending for `subscription`, taken off the pending list.
fn take_pending(objects: &mut Objects, subscription: &str) -> Vec<Value> {
    let (taken, kept) = std::mem::take(&mut objects.pending_invoice_items)
        .into_iter()
        .partition(|item| item["parent"]["subscription_item_details"]["subscription"] == subscription);
    objects.pending_invoice_items = kept;
    taken
}

/// A price change from `old` to `new` at `at`, inside the item's period: a
/// credit for the old price's unused time and a charge for the new one's,
/// each in proportion to the time left (Stripe's `create_prorations`).
pub(crate) fn prorations(objects: &mut Objects, template: &Value, item: &Value, new: &Value, at: i64) -> [Value; 2] {
    let (start, end) =
        (item["current_period_start"].as_i64().unwrap_or(at), item["current_period_end"].as_i64().unwrap_or(at));
    let left = if end > start { (end - at).clamp(0, end - start) as f64 / (end - start) as f64 } else { 0.0 };
    let mut prorated = |price: &Value, sign: f64| {
        let amount = (sign * price["unit_amount"].as_i64().unwrap_or(0) as f64 * left).round() as i64;
        line(template, objects.next_id("il"), amount, price, (at, end), item, true)
    };
    [prorated(&item["price"], -1.0), prorated(new, 1.0)]
}

/// Issues an invoice of `lines` for `subscription` at `created` — finalized,
/// and paid unless `paid` is false — and sends its webhooks.
pub(crate) fn issue(
    emulator: &Emulator,
    subscription: &Value,
    (reason, created): (&str, i64),
    lines: Vec<Value>,
    paid: bool,
) -> Value {
    let customer = subscription["customer"].as_str().unwrap_or_default();
    let total: i64 = lines.iter().filter_map(|l| l["amount"].as_i64()).sum();
    let mut invoice = emulator.fixture("invoice");
    invoice["id"] = json!(emulator.next_id("in"));
    invoice["customer"] = json!(customer);
    invoice["subscription"] = subscription["id"].clone();
    invoice["billing_reason"] = json!(reason);
    invoice["created"] = json!(created);
    invoice["period_start"] = json!(created);
    invoice["period_end"] = json!(created);
    invoice["lines"] = json!({ "object": "list", "data": lines, "has_more": false, "url": "/v1/invoices/lines" });
    invoice["total"] = json!(total);
    invoice["subtotal"] = json!(total);
    invoice["amount_due"] = json!(total);
    invoice["amount_paid"] = json!(if paid { total } else { 0 });
    invoice["amount_remaining"] = json!(if paid { 0 } else { total });
    invoice["amount_overpaid"] = json!(0);
    invoice["attempted"] = json!(true);
    invoice["attempt_count"] = json!(1);
    invoice["status"] = json!(if paid { "paid" } else { "open" });
    invoice["metadata"] = json!({});
    invoice["livemode"] = json!(false);
    emulator.objects.lock().expect("emulator lock").invoices.push(invoice.clone());
    emulator.emit("invoice.finalized", &invoice);
    emulator.emit(if paid { "invoice.paid" } else { "invoice.payment_failed" }, &invoice);
    invoice
}

/// Ends the current period of subscription `id` at `end`: invoices the next
/// period in advance with the prorations pending, and the period that ended's
/// metered usage in arrears (a line per metered item, and on the metadata):
/// the meter events dated from the period's start (the subscription's, for
/// the first) up to its end.
fn renew(emulator: &Emulator, id: &str, end: i64, paid: bool) -> Option<Value> {
    let (subscription, usage_since, pending, meters, events) = {
        let mut objects = emulator.objects.lock().expect("emulator lock");
        let subscription = objects.subscriptions.get_mut(id)?;
        let began = subscription["created"].as_i64().unwrap_or(end);
        start_period(subscription, end);
        let subscription = subscription.clone();
        let usage_since = objects.invoiced_through.insert(id.to_owned(), end).unwrap_or(began);
        let pending = take_pending(&mut objects, id);
        let meters: Vec<Value> = objects.meters.values().cloned().collect();
        (subscription, usage_since, pending, meters, objects.meter_events.clone())
    };
    let customer = subscription["customer"].as_str().unwrap_or_default();
    let counted = |meter: &Value| -> f64 {
        let name = meter["event_name"].as_str().unwrap_or_default();
        events
            .iter()
            .filter(|e| e["event_name"] == name && e["payload"]["stripe_customer_id"] == customer)
            .filter(|e| e["timestamp"].as_i64().is_some_and(|t| (usage_since..end).contains(&t)))
            .filter_map(|e| e["payload"]["value"].as_str().and_then(|v| v.parse::<f64>().ok()))
            .sum()
    };
    let mut usage = serde_json::Map::new();
    for meter in &meters {
        let name = meter["event_name"].as_str().unwrap_or_default();
        usage.insert(format!("meter_{name}"), json!(counted(meter).to_string()));
    }
    let template = emulator.fixture("invoice")["lines"]["data"][0].clone();
    let mut lines = {
        let mut objects = emulator.objects.lock().expect("emulator lock");
        let mut lines = price_lines(&mut objects, &template, &subscription);
        for item in subscription["items"]["data"].as_array().into_iter().flatten().filter(|item| metered(item)) {
            let meter = meters.iter().find(|m| m["id"] == item["price"]["recurring"]["meter"]).cloned();
            let quantity = meter.as_ref().map_or(0.0, counted);
            let unit: f64 = item["price"]["unit_amount_decimal"].as_str().and_then(|u| u.parse().ok()).unwrap_or(0.0);
            let amount = (quantity * unit).round() as i64;
            let mut line =
                line(&template, objects.next_id("il"), amount, &item["price"], (usage_since, end), item, false);
            line["quantity"] = json!(quantity.round() as u64);
            line["quantity_decimal"] = json!(quantity.to_string());
            line["pricing"]["unit_amount_decimal"] = item["price"]["unit_amount_decimal"].clone();
            lines.push(line);
        }
        lines
    };
    lines.extend(pending);
    let mut invoice = issue(emulator, &subscription, ("subscription_cycle", end), lines, paid);
    invoice["metadata"] = Value::Object(usage);
    let mut objects = emulator.objects.lock().expect("emulator lock");
    if let Some(kept) = objects.invoices.iter_mut().find(|i| i["id"] == invoice["id"]) {
        kept["metadata"] = invoice["metadata"].clone();
    }
    Some(invoice)
}

/// `fail=<customer id>` (repeatable): their payment fails.
pub async fn close_period(State(emulator): State<Emulator>, body: Bytes) -> Response {
    let params = parse_params(&body);
    let failing: Vec<&str> = params.iter().filter(|(k, _)| k == "fail").map(|(_, v)| v.as_str()).collect();
    list(CLOSE_PERIOD, close_all(&emulator, &failing))
}

/// Ends the period of every active subscription now (on its customer's test
/// clock, if any); the payments of the customers in `failing` fail.
pub(crate) fn close_all(emulator: &Emulator, failing: &[&str]) -> Vec<Value> {
    let active: Vec<(String, String, i64)> = {
        let objects = emulator.objects.lock().expect("emulator lock");
        objects
            .subscriptions
            .values()
            .filter(|s| s["status"] == "active")
            .map(|s| {
                let customer = s["customer"].as_str().unwrap_or_default().to_owned();
                let end = customer_now(&objects, &customer);
                (s["id"].as_str().unwrap_or_default().to_owned(), customer, end)
            })
            .collect()
    };
    active
        .into_iter()
        .filter_map(|(id, customer, end)| renew(emulator, &id, end, !failing.contains(&customer.as_str())))
        .collect()
}

/// `GET /v1/invoices?customer=`: a customer's invoices (or all), newest first.
pub async fn list_invoices(State(emulator): State<Emulator>, RawQuery(query): RawQuery) -> Response {
    let params = parse_params(query.unwrap_or_default().as_bytes());
    let customer = param(&params, "customer");
    let mut data: Vec<Value> = emulator
        .objects
        .lock()
        .expect("emulator lock")
        .invoices
        .iter()
        .filter(|i| customer.is_none_or(|c| i["customer"] == c))
        .cloned()
        .collect();
    data.reverse();
    list("/v1/invoices", data).into_response()
}

/// `POST /v1/test_helpers/test_clocks` (`frozen_time`, `name`).
pub async fn create_test_clock(State(emulator): State<Emulator>, body: Bytes) -> Response {
    let params = parse_params(&body);
    let Some(frozen_time) = param(&params, "frozen_time").and_then(|t| t.parse::<i64>().ok()) else {
        return error(400, "invalid_request_error", "Missing required param: frozen_time.");
    };
    let id = emulator.next_id("clock");
    let clock = json!({ "id": id, "object": "test_helpers.test_clock", "created": now(), "frozen_time": frozen_time,
                        "name": param(&params, "name"), "status": "ready", "livemode": false,
                        "deletes_after": now() + 30 * 24 * 3600 });
    emulator.objects.lock().expect("emulator lock").test_clocks.insert(id, clock.clone());
    axum::Json(clock).into_response()
}

pub async fn retrieve_test_clock(State(emulator): State<Emulator>, Path(id): Path<String>) -> Response {
    match emulator.objects.lock().expect("emulator lock").test_clocks.get(&id) {
        Some(clock) => axum::Json(clock.clone()).into_response(),
        None => error(404, "invalid_request_error", &format!("No such test clock: '{id}'")),
    }
}

/// `POST /v1/test_helpers/test_clocks/{id}/advance` (`frozen_time`): moves the
/// clock forward; every period of its customers' active subscriptions that
/// ends by then is renewed, in order, before the answer.
pub async fn advance_test_clock(State(emulator): State<Emulator>, Path(id): Path<String>, body: Bytes) -> Response {
    let params = parse_params(&body);
    let Some(to) = param(&params, "frozen_time").and_then(|t| t.parse::<i64>().ok()) else {
        return error(400, "invalid_request_error", "Missing required param: frozen_time.");
    };
    let on_clock: Vec<String> = {
        let mut objects = emulator.objects.lock().expect("emulator lock");
        let Some(clock) = objects.test_clocks.get_mut(&id) else {
            return error(404, "invalid_request_error", &format!("No such test clock: '{id}'"));
        };
        if clock["frozen_time"].as_i64().is_some_and(|at| to <= at) {
            return error(400, "invalid_request_error", "The test clock can only be advanced forward in time.");
        }
        clock["frozen_time"] = json!(to);
        let customers: Vec<&String> =
            objects.customers.iter().filter(|(_, c)| c["test_clock"] == id.as_str()).map(|(k, _)| k).collect();
        objects
            .subscriptions
            .values()
            .filter(|s| s["status"] == "active" && customers.iter().any(|c| s["customer"] == c.as_str()))
            .filter_map(|s| s["id"].as_str().map(str::to_owned))
            .collect()
    };
    for subscription in on_clock {
        loop {
            let end = emulator.objects.lock().expect("emulator lock").subscriptions[&subscription]["items"]["data"][0]
                ["current_period_end"]
                .as_i64();
            match end {
                Some(end) if end <= to => {
                    renew(&emulator, &subscription, end, true);
                }
                _ => break,
            }
        }
    }
    retrieve_test_clock(State(emulator), Path(id)).await
}

/// `POST /v1/invoices/create_preview` for a subscription's price change
/// (`subscription`, `subscription_details[items][0][id|price]`,
/// `subscription_details[proration_date]`): the invoice its next renewal
/// would be — the prorations pending and those this change would add, then
/// the next period at the new price. Nothing is kept.
pub async fn create_preview(State(emulator): State<Emulator>, body: Bytes) -> Response {
    let params = parse_params(&body);
    let Some(id) = param(&params, "subscription") else {
        return error(400, "invalid_request_error", "Missing required param: subscription.");
    };
    let template = emulator.fixture("invoice")["lines"]["data"][0].clone();
    let mut objects = emulator.objects.lock().expect("emulator lock");
    let Some(subscription) = objects.subscriptions.get(id).cloned() else {
        return error(404, "invalid_request_error", &format!("No such subscription: '{id}'"));
    };
    let customer = subscription["customer"].as_str().unwrap_or_default().to_owned();
    let at = param(&params, "subscription_details[proration_date]")
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| customer_now(&objects, &customer));
    let mut next = subscription.clone();
    let mut lines: Vec<Value> = objects
        .pending_invoice_items
        .iter()
        .filter(|l| l["parent"]["subscription_item_details"]["subscription"] == id)
        .cloned()
        .collect();
    if let Some(price_id) = param(&params, "subscription_details[items][0][price]") {
        let Some(price) = objects.prices.get(price_id).cloned() else {
            return error(400, "invalid_request_error", &format!("No such price: '{price_id}'"));
        };
        let item_id = param(&params, "subscription_details[items][0][id]").unwrap_or_default();
        let Some(index) =
            subscription["items"]["data"].as_array().and_then(|i| i.iter().position(|i| i["id"] == item_id))
        else {
            return error(400, "invalid_request_error", &format!("No such subscription item: '{item_id}'"));
        };
        let item = &subscription["items"]["data"][index];
        if param(&params, "subscription_details[proration_behavior]") != Some("none")
            && item["price"]["id"] != price["id"]
        {
            lines.extend(prorations(&mut objects, &template, item, &price, at));
        }
        next["items"]["data"][index]["price"] = price;
    }
    let end = next["items"]["data"][0]["current_period_end"].as_i64().unwrap_or(at);
    start_period(&mut next, end);
    lines.extend(price_lines(&mut objects, &template, &next));
    drop(objects);
    let total: i64 = lines.iter().filter_map(|l| l["amount"].as_i64()).sum();
    let mut invoice = emulator.fixture("invoice");
    invoice["id"] = Value::Null;
    invoice["object"] = json!("invoice");
    invoice["customer"] = json!(customer);
    invoice["subscription"] = json!(id);
    invoice["status"] = json!("draft");
    invoice["billing_reason"] = json!("upcoming");
    invoice["created"] = json!(at);
    invoice["period_start"] = json!(at);
    invoice["period_end"] = json!(end);
    invoice["lines"] =
        json!({ "object": "list", "data": lines, "has_more": false, "url": "/v1/invoices/create_preview/lines" });
    invoice["total"] = json!(total);
    invoice["subtotal"] = json!(total);
    invoice["amount_due"] = json!(total);
    invoice["amount_paid"] = json!(0);
    invoice["amount_remaining"] = json!(total);
    invoice["livemode"] = json!(false);
    axum::Json(invoice).into_response()
}
