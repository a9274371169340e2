//! `POST /v1/webhooks/stripe`: Stripe's event deliveries. The signature (HMAC
//! of the timestamp and body with the webhook secret) is the authentication; a
//! forged, altered or replayed (too old) delivery is refused with 400 and
//! logged. Each event id is processed once, in the transaction that records
//! it, so Stripe's redeliveries change nothing.
//!
//! - `invoice.payment_failed`: the tenant's payment is past due; a grace period
//!   starts, after which the reconciler suspends it if still unpaid.
//! - `invoice.paid`: paid again; a tenant suspended for non-payment resumes.
//! - `customer.subscription.deleted`: the tenant is suspended.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use indigo_core::api::ErrorBody;
use indigo_core::tenant::{Lifecycle, TenantId};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Sha256;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::auth::Actor;
use super::error::ApiError;
use crate::config::Secret;
use crate::journal;
use crate::registry::{self, RegistryError, TenantRef};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(stripe_webhook)).layer(DefaultBodyLimit::max(1024 * 1024))
}

pub struct WebhookConfig {
    pub secret: Secret,
    /// How old a signed delivery may be (Stripe's libraries use 5 minutes).
    pub tolerance: chrono::Duration,
    /// How long a tenant may stay unpaid before it is suspended.
    pub grace: chrono::Duration,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("no Stripe-Signature header")]
    Missing,
    #[error("the Stripe-Signature header has no timestamp or no v1 signature")]
    Malformed,
    #[error("the signature does not match the payload")]
    Mismatch,
    #[error("the signature is {0} s old; replays are refused")]
    TooOld(i64),
}

/// Signs `payload` as Stripe does, for tests and tools: `t=<time>,v1=<hex>`.
pub fn sign(secret: &str, timestamp: i64, payload: &[u8]) -> String {
    format!("t={timestamp},v1={}", hex::encode(mac(secret, timestamp, payload).finalize().into_bytes()))
}

fn mac(secret: &str, timestamp: i64, payload: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload);
    mac
}

/// Checks a `Stripe-Signature` header against the payload, at time `now`.
pub fn verify(
    header: Option<&str>,
    payload: &[u8],
    secret: &str,
    now: i64,
    tolerance: chrono::Duration,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
            Some(("v1", v)) => signatures.extend(hex::decode(v).ok()),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed);
    }
    // Constant-time comparison, against every v1 (Stripe sends several while rolling secrets).
    if !signatures.iter().any(|signature| mac(secret, timestamp, payload).verify_slice(signature).is_ok()) {
        return Err(SignatureError::Mismatch);
    }
    let age = now - timestamp;
    if age.abs() > tolerance.num_seconds() {
        return Err(SignatureError::TooOld(age));
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
struct StripeEvent {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    data: EventData,
}

#[derive(Debug, Deserialize)]
struct EventData {
    object: Value,
}

/// Receive a Stripe event (signed with the webhook secret).
#[utoipa::path(post, path = "/v1/webhooks/stripe", tag = "webhooks",
    // Stripe signs its deliveries instead of sending a bearer token.
    security(()),
    params(("Stripe-Signature" = String, Header)),
    responses((status = 200, description = "Processed (or seen before)"),
              (status = 400, description = "Unsigned, wrongly signed, too old, or not a Stripe event", body = ErrorBody),
              (status = 404, description = "This control plane has no stripe_webhook_secret", body = ErrorBody)))]
async fn stripe_webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    // An unsigned request is malformed whether or not webhooks are configured.
    let Some(header) = headers.get("stripe-signature").and_then(|v| v.to_str().ok()) else {
        return Err(ApiError::bad_request("invalid_signature", SignatureError::Missing.to_string()));
    };
    let config = state
        .webhooks
        .clone()
        .ok_or_else(|| ApiError::NotFound("a Stripe webhook endpoint (stripe_webhook_secret is not set)".into()))?;
    if let Err(error) =
        verify(Some(header), &body, config.secret.expose(), chrono::Utc::now().timestamp(), config.tolerance)
    {
        tracing::warn!(%error, "Stripe webhook refused");
        metrics::counter!("indigo_stripe_webhooks_refused_total").increment(1);
        let code = if matches!(error, SignatureError::TooOld(_)) { "signature_expired" } else { "invalid_signature" };
        return Err(ApiError::bad_request(code, error.to_string()));
    }
    let event: StripeEvent = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid_event", format!("not a Stripe event: {e}")))?;
    let customer = event.data.object.get("customer").and_then(Value::as_str).map(str::to_owned);
    let mut tx = state.db.begin().await?;
    let tenant: Option<uuid::Uuid> = match &customer {
        Some(customer) => {
            sqlx::query_scalar("SELECT tenant_id FROM tenant_billing WHERE customer_id = $1")
                .bind(customer)
                .fetch_optional(&mut *tx)
                .await?
        }
        None => None,
    };
    let fresh: Option<String> = sqlx::query_scalar(
        "INSERT INTO stripe_events (id, type, tenant_id, outcome) VALUES ($1, $2, $3, 'received')
         ON CONFLICT (id) DO NOTHING RETURNING id",
    )
    .bind(&event.id)
    .bind(&event.kind)
    .bind(tenant)
    .fetch_optional(&mut *tx)
    .await?;
    if fresh.is_none() {
        return Ok(Json(json!({ "received": true, "duplicate": true })));
    }
    let outcome = match tenant {
        None => "ignored: no tenant has this customer".to_owned(),
        Some(tenant) => apply(&mut tx, &config, TenantId(tenant), &event).await?,
    };
    sqlx::query("UPDATE stripe_events SET outcome = $2 WHERE id = $1")
        .bind(&event.id)
        .bind(&outcome)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Json(json!({ "received": true, "outcome": outcome })))
}

/// What the event means for the tenant; runs in the transaction that records it.
async fn apply(
    conn: &mut sqlx::PgConnection,
    config: &WebhookConfig,
    tenant: TenantId,
    event: &StripeEvent,
) -> Result<String, ApiError> {
    let actor = Actor::system("stripe-webhook");
    let reference = TenantRef::Id(tenant);
    match event.kind.as_str() {
        "invoice.payment_failed" => {
            let started = sqlx::query(
                "UPDATE tenant_billing SET payment_state = 'past_due', grace_until = now() + $2, updated_at = now()
                 WHERE tenant_id = $1 AND payment_state = 'ok'",
            )
            .bind(tenant.0)
            .bind(config.grace)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            if started > 0 {
                let hours = config.grace.num_hours();
                let message = format!("payment failed; the tenant is suspended in {hours} h unless paid");
                journal::publish(conn, Some(tenant), "PaymentFailed", &message, json!({ "stripe_event": event.id }))
                    .await?;
            }
            Ok("grace period started".into())
        }
        "invoice.paid" => {
            let previous: Option<String> =
                sqlx::query_scalar("SELECT payment_state FROM tenant_billing WHERE tenant_id = $1 FOR UPDATE")
                    .bind(tenant.0)
                    .fetch_optional(&mut *conn)
                    .await?;
            sqlx::query(
                "UPDATE tenant_billing SET payment_state = 'ok', grace_until = NULL, updated_at = now() WHERE tenant_id = $1",
            )
            .bind(tenant.0)
            .execute(&mut *conn)
            .await?;
            if previous.as_deref() != Some("suspended_unpaid") {
                return Ok("paid".into());
            }
            match registry::set_lifecycle(conn, &actor, None, &reference, Lifecycle::Active, Some("payment received"))
                .await
            {
                Ok(_) => Ok("paid; resumed".into()),
                // Offboarded meanwhile: nothing to resume.
                Err(RegistryError::Deleted(_) | RegistryError::Pending(_)) => Ok("paid".into()),
                Err(e) => Err(e.into()),
            }
        }
        "customer.subscription.deleted" => {
            let current = registry::get(conn, &reference).await?;
            if current.spec.lifecycle != Lifecycle::Active {
                // Offboarding (or onboarding's undo) cancelled it: nothing to add.
                return Ok(format!("ignored: tenant is {}", current.spec.lifecycle));
            }
            sqlx::query("UPDATE tenant_billing SET status = 'cancelled', updated_at = now() WHERE tenant_id = $1")
                .bind(tenant.0)
                .execute(&mut *conn)
                .await?;
            let reason = Some("subscription cancelled at Stripe");
            registry::set_lifecycle(conn, &actor, None, &reference, Lifecycle::Suspended, reason).await?;
            Ok("suspended".into())
        }
        other => Ok(format!("ignored: {other}")),
    }
}
