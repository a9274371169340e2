//! `POST /v1/usage/events`: the usage store's intake. Events are deduplicated on
//! their id, so a re-sent batch is counted once; each bad event is refused with
//! its reason and the rest of the batch is kept. The event ids make every
//! delivery idempotent, so no `Idempotency-Key` is needed here.

use std::collections::HashSet;

use axum::Json;
use axum::extract::{DefaultBodyLimit, State};
use chrono::DurationRound;
use chrono::{Duration, Utc};
use indigo_core::api::{
    DailyCalls, ErrorBody, RejectedEvent, TenantUsage, UsageBatch, UsageBatchResult, UsageEvent, UsageSeries,
};
use indigo_core::cost::CostModel;
use indigo_core::http::ApiJson;
use indigo_core::tenant::{Role, TenantId};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::AppState;
use super::auth::{Actor, Caller};
use super::error::ApiError;

/// Largest batch accepted at once.
pub const MAX_BATCH_EVENTS: usize = 10_000;
const EVENT_TYPES: [&str; 4] = ["api_call", "search_query", "ai_request", "storage_gb"];

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(ingest))
        .layer(DefaultBodyLimit::max(8 * 1024 * 1024))
        .routes(routes!(summary))
        .routes(routes!(daily_calls))
        .routes(routes!(tenant_series))
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct SeriesParams {
    /// How many hours back, 1 to 720 (default 24).
    #[param(minimum = 1, maximum = 720)]
    hours: Option<i64>,
}

/// A tenant's usage per hour and event type, from the metrics provider (for sparklines).
#[utoipa::path(get, path = "/v1/tenants/{tenant}/usage", tag = "usage",
    params(("tenant" = String, Path, description = "Slug or id"), SeriesParams),
    responses((status = 200, body = UsageSeries), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn tenant_series(
    State(state): State<AppState>,
    _actor: Actor,
    indigo_core::http::ApiPath(raw): indigo_core::http::ApiPath<String>,
    indigo_core::http::ApiQuery(params): indigo_core::http::ApiQuery<SeriesParams>,
) -> Result<Json<UsageSeries>, ApiError> {
    let hours = params.hours.unwrap_or(24);
    if !(1..=720).contains(&hours) {
        return Err(ApiError::bad_request("invalid_query", "hours must be between 1 and 720"));
    }
    let tenant = super::tenants::find(&state, &raw).await?;
    let current = Utc::now().duration_trunc(Duration::hours(1)).map_err(|e| ApiError::Internal(e.into()))?;
    let axis: Vec<chrono::DateTime<Utc>> = (0..hours).rev().map(|n| current - Duration::hours(n)).collect();
    let series = state
        .tenant_metrics
        .hourly(tenant.id, &EVENT_TYPES, &axis)
        .await
        .map_err(|e| ApiError::Upstream(format!("the metrics store did not answer: {e}")))?;
    Ok(Json(UsageSeries { tenant_id: Some(tenant.id), hours: axis, series }))
}

/// Every active tenant's storefront calls so far in its own day, and when that
/// day ends: data-plane replicas count their daily limit from it, so that the
/// limit holds across replicas.
#[utoipa::path(get, path = "/v1/usage/daily-calls", tag = "usage", responses((status = 200, body = Vec<DailyCalls>)))]
async fn daily_calls(State(state): State<AppState>, caller: Caller) -> Result<Json<Vec<DailyCalls>>, ApiError> {
    let mut calls = crate::metering::limits::daily_calls(&state.db).await?;
    calls.retain(|tenant| caller.reaches(tenant.tenant_id));
    Ok(Json(calls))
}

/// Each tenant's storefront calls today (UTC), requests per second over the last minute and AI
/// credits this month (UTC).
#[utoipa::path(get, path = "/v1/usage/summary", tag = "usage", responses((status = 200, body = Vec<TenantUsage>)))]
async fn summary(State(state): State<AppState>, _actor: Actor) -> Result<Json<Vec<TenantUsage>>, ApiError> {
    // Today's calls and the month's credits mostly from the roll-ups; the last
    // minute from the events (the tenant index keeps that a minute's worth).
    let rows: Vec<(Uuid, i64, i64, f64)> = sqlx::query_as(
        "SELECT id, today, last_minute, ai_credits FROM (
             SELECT t.id, storefront_calls(t.id, date_trunc('day', now(), 'UTC')) AS today,
                    (SELECT count(*) FROM usage_events e
                      WHERE e.tenant_id = t.id AND e.event_type IN ('api_call', 'search_query')
                        AND e.occurred_at >= now() - interval '1 minute') AS last_minute,
                    ai_credits_used(t.id, date_trunc('month', now(), 'UTC')) AS ai_credits
             FROM tenants t WHERE t.lifecycle <> 'deleted') usage
         WHERE today > 0 OR last_minute > 0 OR ai_credits > 0
         ORDER BY id",
    )
    .fetch_all(&state.db)
    .await?;
    Ok(Json(
        rows.into_iter()
            .map(|(tenant, today, last_minute, ai_credits)| TenantUsage {
                tenant_id: TenantId(tenant),
                api_calls_today: today,
                requests_per_second: last_minute as f64 / 60.0,
                ai_credits_this_month: ai_credits,
            })
            .collect(),
    ))
}

/// What a data plane may report, for a tenant it serves: one storefront call
/// or search at a time, and the AI calls it makes itself, priced here from
/// their tokens. A compromised data plane cannot inflate another tenant's
/// bill, nor its own by more than the requests it really answers.
fn permitted(caller: &Caller, event: &UsageEvent) -> Result<(), (&'static str, String)> {
    let Caller::DataPlane { name, .. } = caller else { return Ok(()) };
    if !caller.reaches(event.tenant_id) {
        return Err(("tenant_not_served", format!("data plane `{name}` does not serve tenant {}", event.tenant_id)));
    }
    let storefront_call =
        DATAPLANE_EVENT_TYPES.contains(&event.event_type.as_str()) && event.quantity == 1.0 && event.ai.is_none();
    let own_ai_call = event.event_type == "ai_request"
        && event.quantity == 0.0
        && event.ai.as_ref().is_some_and(|ai| DATAPLANE_AI_SERVICES.contains(&ai.service.as_str()));
    if !(storefront_call || own_ai_call) {
        return Err((
            "not_permitted",
            format!(
                "a data plane reports {} events of quantity 1, and ai_request events of its own {} calls (quantity 0, priced from their tokens) only",
                DATAPLANE_EVENT_TYPES.join(" and "),
                DATAPLANE_AI_SERVICES.join(" and ")
            ),
        ));
    }
    Ok(())
}

/// The events a data plane meters itself.
const DATAPLANE_EVENT_TYPES: [&str; 2] = ["api_call", "search_query"];
/// The AI services a data plane calls itself (product descriptions, recommendations).
const DATAPLANE_AI_SERVICES: [&str; 3] = ["bedrock", "embedded", "personalize"];

/// Checks one event; for an AI call, returns its quantity in credits.
fn check(
    event: &UsageEvent,
    known_tenants: &HashSet<Uuid>,
    costs: Option<&CostModel>,
) -> Result<f64, (&'static str, String)> {
    if !EVENT_TYPES.contains(&event.event_type.as_str()) {
        return Err((
            "unknown_event_type",
            format!("event type `{}` is not one of {}", event.event_type, EVENT_TYPES.join(", ")),
        ));
    }
    if !event.quantity.is_finite() || event.quantity < 0.0 {
        return Err((
            "invalid_quantity",
            format!("quantity must be a finite number 0 or more, got {}", event.quantity),
        ));
    }
    if !known_tenants.contains(&event.tenant_id.0) {
        return Err(("unknown_tenant", format!("no tenant {}", event.tenant_id)));
    }
    // Like Stripe: up to 35 days late, and not from the future (small clock skew allowed).
    let now = Utc::now();
    if event.occurred_at < now - Duration::days(35) || event.occurred_at > now + Duration::minutes(5) {
        return Err(("invalid_timestamp", "occurred_at must be within the last 35 days".into()));
    }
    let Some(ai) = &event.ai else { return Ok(event.quantity) };
    if event.event_type != "ai_request" {
        return Err(("invalid_ai_usage", "only an ai_request carries AI usage".into()));
    }
    let costs = costs.ok_or(("credit_rates_unavailable", "no cost model is loaded to price AI calls".to_owned()))?;
    let tokens = u64::from(ai.input_tokens) + u64::from(ai.output_tokens);
    let credits = costs.credits(&ai.service, tokens).ok_or_else(|| {
        let known: Vec<&str> = costs.credit_rates.keys().map(String::as_str).collect();
        ("unknown_service", format!("AI service `{}` is not one of {}", ai.service, known.join(", ")))
    })?;
    if event.quantity != 0.0 && (event.quantity - credits).abs() > 1e-9 {
        return Err((
            "quantity_mismatch",
            format!("quantity {} is not the {credits} credits of {tokens} tokens on {}", event.quantity, ai.service),
        ));
    }
    Ok(credits)
}

/// Store a batch of usage events (operator, or a data plane). Duplicates by id
/// are counted once. A data plane reports what it meters, for the tenants it
/// serves: its events are one call or search each, and a data plane bound to
/// one tenant reports for that tenant only; other events are refused one by one.
#[utoipa::path(post, path = "/v1/usage/events", tag = "usage", request_body = UsageBatch,
    responses((status = 200, body = UsageBatchResult), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn ingest(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(batch): ApiJson<UsageBatch>,
) -> Result<Json<UsageBatchResult>, ApiError> {
    if let Caller::Person(actor) = &caller {
        actor.require(Role::Operator)?;
    }
    if batch.events.len() > MAX_BATCH_EVENTS {
        return Err(ApiError::invalid("batch_too_large", format!("at most {MAX_BATCH_EVENTS} events per batch")));
    }
    let tenant_ids: Vec<Uuid> =
        batch.events.iter().map(|e| e.tenant_id.0).collect::<HashSet<_>>().into_iter().collect();
    // A join, not `id = ANY ($1)`: a batch names up to thousands of tenants,
    // and the array is searched from its start for each row the plan reads.
    let known: HashSet<Uuid> =
        sqlx::query_scalar("SELECT id FROM tenants JOIN UNNEST($1::uuid[]) AS named (id) USING (id)")
            .bind(&tenant_ids)
            .fetch_all(&state.db)
            .await?
            .into_iter()
            .collect();
    let mut result = UsageBatchResult::default();
    let mut seen = HashSet::new();
    let mut accepted: Vec<(&UsageEvent, f64)> = Vec::with_capacity(batch.events.len());
    for (index, event) in batch.events.iter().enumerate() {
        match check(event, &known, state.costs.as_deref())
            .and_then(|credits| permitted(&caller, event).map(|()| credits))
        {
            Err((code, message)) => result.rejected.push(RejectedEvent { index, code: code.into(), message }),
            // A duplicate inside the batch is a duplicate too.
            Ok(_) if !seen.insert(event.id) => result.duplicates += 1,
            Ok(quantity) => accepted.push((event, quantity)),
        }
    }
    let stored = sqlx::query(
        "INSERT INTO usage_events (id, tenant_id, event_type, quantity, route, status, latency_ms, occurred_at,
                                   service, input_tokens, output_tokens)
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::float8[], $5::text[], $6::int2[], $7::int4[],
                              $8::timestamptz[], $9::text[], $10::int8[], $11::int8[])
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(accepted.iter().map(|(e, _)| e.id).collect::<Vec<_>>())
    .bind(accepted.iter().map(|(e, _)| e.tenant_id.0).collect::<Vec<_>>())
    .bind(accepted.iter().map(|(e, _)| e.event_type.as_str()).collect::<Vec<_>>())
    .bind(accepted.iter().map(|(_, quantity)| *quantity).collect::<Vec<_>>())
    .bind(accepted.iter().map(|(e, _)| e.route.as_deref()).collect::<Vec<_>>())
    .bind(accepted.iter().map(|(e, _)| e.status.and_then(|s| i16::try_from(s).ok())).collect::<Vec<_>>())
    .bind(accepted.iter().map(|(e, _)| e.latency_ms.and_then(|l| i32::try_from(l).ok())).collect::<Vec<_>>())
    .bind(accepted.iter().map(|(e, _)| e.occurred_at).collect::<Vec<_>>())
    .bind(accepted.iter().map(|(e, _)| e.ai.as_ref().map(|a| a.service.as_str())).collect::<Vec<_>>())
    .bind(accepted.iter().map(|(e, _)| e.ai.as_ref().map(|a| i64::from(a.input_tokens))).collect::<Vec<_>>())
    .bind(accepted.iter().map(|(e, _)| e.ai.as_ref().map(|a| i64::from(a.output_tokens))).collect::<Vec<_>>())
    .execute(&state.db)
    .await?
    .rows_affected();
    result.accepted = stored;
    result.duplicates += accepted.len() as u64 - stored;
    metrics::counter!("indigo_usage_events_accepted_total").increment(stored);
    Ok(Json(result))
}
