//! Invoices at the end of a billing period. The emulator has no clock of its
//! own: `POST /_emulator/close_period` ends the current period of every active
//! subscription now, as the period's end would at Stripe. Each gets an invoice
//! for its items' prices (Stripe bills metered usage only through a metered
//! price on the subscription; the meters' totals are on the invoice's
//! metadata, for a look), finalized and paid — or, for the customers named in
//! `fail`, left open with a failed payment — each with its webhook events.

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{Emulator, list, now, param, parse_params};

/// Not one of Stripe's paths: the emulator's own, to end a period.
pub const CLOSE_PERIOD: &str = "/_emulator/close_period";

/// `fail=<customer id>` (repeatable): their payment fails.
pub async fn close_period(State(emulator): State<Emulator>, body: Bytes) -> Response {
    let params = parse_params(&body);
    let failing: Vec<&str> = params.iter().filter(|(k, _)| k == "fail").map(|(_, v)| v.as_str()).collect();
    let end = now();
    let (subscriptions, meters, meter_events) = {
        let objects = emulator.objects.lock().expect("emulator lock");
        let active: Vec<Value> = objects.subscriptions.values().filter(|s| s["status"] == "active").cloned().collect();
        let meters: Vec<Value> = objects.meters.values().cloned().collect();
        (active, meters, objects.meter_events.clone())
    };
    let mut issued = Vec::new();
    for subscription in subscriptions {
        let id = subscription["id"].as_str().unwrap_or_default().to_owned();
        let customer = subscription["customer"].as_str().unwrap_or_default().to_owned();
        // The first period also takes usage dated before the subscription (the
        // hour it was created in is reported from that hour's start).
        let invoiced_through = emulator.objects.lock().expect("emulator lock").invoiced_through.get(&id).copied();
        let start = invoiced_through.unwrap_or_else(|| subscription["created"].as_i64().unwrap_or(end));
        let lines: Vec<Value> = subscription["items"]["data"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|item| {
                let amount = item["price"]["unit_amount"].as_i64().unwrap_or(0);
                json!({ "object": "line_item", "amount": amount, "currency": item["price"]["currency"],
                        "pricing": { "price_details": { "price": item["price"]["id"] } }, "quantity": 1,
                        "period": { "start": start, "end": end } })
            })
            .collect();
        let total: i64 = lines.iter().filter_map(|l| l["amount"].as_i64()).sum();
        // What the meters summed for this customer in the period.
        let mut usage = serde_json::Map::new();
        for meter in &meters {
            let name = meter["event_name"].as_str().unwrap_or_default();
            let sum: f64 = meter_events
                .iter()
                .filter(|e| e["event_name"] == name && e["payload"]["stripe_customer_id"] == customer.as_str())
                .filter(|e| e["timestamp"].as_i64().is_some_and(|t| t < end && invoiced_through.is_none_or(|s| t >= s)))
                .filter_map(|e| e["payload"]["value"].as_str().and_then(|v| v.parse::<f64>().ok()))
                .sum();
            usage.insert(format!("meter_{name}"), json!(sum.to_string()));
        }
        let paid = !failing.contains(&customer.as_str());
        let mut invoice = emulator.fixture("invoice");
        invoice["id"] = json!(emulator.next_id("in"));
        invoice["customer"] = json!(customer);
        invoice["subscription"] = json!(id);
        invoice["billing_reason"] = json!("subscription_cycle");
        invoice["period_start"] = json!(start);
        invoice["period_end"] = json!(end);
        invoice["created"] = json!(end);
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
        invoice["metadata"] = Value::Object(usage);
        invoice["livemode"] = json!(false);
        {
            let mut objects = emulator.objects.lock().expect("emulator lock");
            objects.invoiced_through.insert(id, end);
            objects.invoices.push(invoice.clone());
        }
        emulator.emit("invoice.finalized", &invoice);
        emulator.emit(if paid { "invoice.paid" } else { "invoice.payment_failed" }, &invoice);
        issued.push(invoice);
    }
    list(CLOSE_PERIOD, issued)
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
