//! Stripe events and their webhook deliveries: each change the emulator makes
//! becomes an event (Stripe's `event` object around the changed object),
//! posted to the configured endpoint and signed as Stripe signs them
//! (`Stripe-Signature: t=<time>,v1=<HMAC-SHA256 of "<time>.<body>">`), retried
//! a few times, as Stripe retries, when the endpoint does not answer 2xx.

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use super::{Emulator, now};

/// Where events are delivered, and the secret they are signed with.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub url: String,
    pub secret: String,
}

/// One event's delivery: its last answer (`None`: the endpoint never answered).
#[derive(Debug, Clone)]
pub struct Delivery {
    pub event_id: String,
    pub kind: String,
    pub status: Option<u16>,
    pub attempts: u32,
}

const ATTEMPTS: u32 = 5;

/// The `Stripe-Signature` header of `payload` sent at `timestamp`.
pub fn signature(secret: &str, timestamp: i64, payload: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload);
    format!("t={timestamp},v1={}", hex::encode(mac.finalize().into_bytes()))
}

impl Emulator {
    /// Records `kind` about `object` and, with an endpoint configured,
    /// delivers it in the background.
    pub(crate) fn emit(&self, kind: &str, object: &Value) {
        let Some(endpoint) = self.objects.lock().expect("emulator lock").webhook.clone() else { return };
        let mut event = self.fixture("event");
        let id = self.next_id("evt");
        event["id"] = json!(id);
        event["type"] = json!(kind);
        event["created"] = json!(now());
        event["livemode"] = json!(false);
        event["data"] = json!({ "object": object });
        let emulator = self.clone();
        let kind = kind.to_owned();
        tokio::spawn(async move {
            let body = event.to_string();
            let mut delivery = Delivery { event_id: id, kind, status: None, attempts: 0 };
            while delivery.attempts < ATTEMPTS {
                delivery.attempts += 1;
                let sent = emulator
                    .http
                    .post(&endpoint.url)
                    .header("content-type", "application/json")
                    .header("stripe-signature", signature(&endpoint.secret, now(), body.as_bytes()))
                    .body(body.clone())
                    .send()
                    .await;
                delivery.status = sent.ok().map(|answer| answer.status().as_u16());
                if delivery.status.is_some_and(|status| (200..300).contains(&status)) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500) * delivery.attempts).await;
            }
            emulator.objects.lock().expect("emulator lock").deliveries.push(delivery);
        });
    }
}
