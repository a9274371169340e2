//! Cost and margin per tenant: the cost model of `policies/costs.toml` applied
//! to each tenant's last 30 days of rolled-up usage, against its plan's price.

use std::collections::{BTreeMap, HashMap};

use axum::Json;
use axum::extract::State;
use indigo_core::api::{BillingParity, ErrorBody, TenantBilling, TenantCost};
use indigo_core::cost::{CostModel, Fleet, Priced, Usage};
use indigo_core::http::{ApiPath, ApiQuery};
use indigo_core::tenant::{Isolation, Slug, TenantId};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::AppState;
use super::auth::Actor;
use super::error::ApiError;
use crate::registry::TenantRef;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(fleet_cost))
        .routes(routes!(tenant_cost))
        .routes(routes!(tenant_billing))
        .routes(routes!(billing_parity))
}

/// Each billed tenant's usage as Stripe received it against what Indigo reported, from the last
/// `billing_parity` check: in parity, or the meters and hours that differ with both numbers.
/// Tenants out of parity first.
#[utoipa::path(get, path = "/v1/billing/parity", tag = "cost", responses((status = 200, body = [BillingParity])))]
async fn billing_parity(State(state): State<AppState>, _actor: Actor) -> Result<Json<Vec<BillingParity>>, ApiError> {
    let rows: Vec<(Uuid, String, chrono::DateTime<chrono::Utc>, bool, serde_json::Value)> = sqlx::query_as(
        "SELECT p.tenant_id, t.slug, p.checked_at, p.in_parity, p.mismatches
         FROM billing_parity p JOIN tenants t ON t.id = p.tenant_id ORDER BY p.in_parity, t.slug",
    )
    .fetch_all(&state.db)
    .await?;
    rows.into_iter()
        .map(|(tenant, slug, checked_at, in_parity, mismatches)| {
            let mismatches = serde_json::from_value(mismatches)
                .map_err(|e| ApiError::Internal(anyhow::anyhow!("billing_parity.mismatches of {tenant}: {e}")))?;
            Ok(BillingParity { tenant_id: TenantId(tenant), slug, checked_at, in_parity, mismatches })
        })
        .collect::<Result<_, _>>()
        .map(Json)
}

#[derive(sqlx::FromRow)]
struct BillingRow {
    customer_id: String,
    subscription_id: Option<String>,
    price_id: Option<String>,
    status: String,
    payment_state: String,
    grace_until: Option<chrono::DateTime<chrono::Utc>>,
    usage_reported_through: Option<chrono::DateTime<chrono::Utc>>,
    last_usage_report_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// A tenant's Stripe customer, subscription, payment standing and how far its usage is reported.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/billing", tag = "cost",
    params(("tenant" = String, Path, description = "Slug or id")),
    responses((status = 200, body = TenantBilling), (status = 404, description = "Unknown tenant, or not billed", body = ErrorBody)))]
async fn tenant_billing(
    State(state): State<AppState>,
    _actor: Actor,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<TenantBilling>, ApiError> {
    let reference = super::tenants::tenant_ref(&raw)?;
    let mut conn = state.db.acquire().await?;
    let tenant = crate::registry::get(&mut conn, &reference).await?;
    let row: BillingRow = sqlx::query_as(
        "SELECT b.customer_id, b.subscription_id, b.price_id, b.status, b.payment_state, b.grace_until,
                r.window_start AS usage_reported_through, r.reported_at AS last_usage_report_at
         FROM tenant_billing b
         LEFT JOIN LATERAL (SELECT window_start, reported_at FROM billing_reports
                            WHERE tenant_id = b.tenant_id AND meter = $2 ORDER BY window_start DESC LIMIT 1) r ON true
         WHERE b.tenant_id = $1",
    )
    .bind(tenant.id.0)
    .bind(crate::billing::API_CALLS_METER)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| ApiError::NotFound(format!("billing account of `{raw}` (billing off when it was onboarded?)")))?;
    Ok(Json(TenantBilling {
        tenant_id: tenant.id,
        customer_id: row.customer_id,
        subscription_id: row.subscription_id,
        price_id: row.price_id,
        status: row.status,
        payment_state: row.payment_state,
        grace_until: row.grace_until,
        usage_reported_through: row.usage_reported_through,
        last_usage_report_at: row.last_usage_report_at,
    }))
}

struct Member {
    id: Uuid,
    slug: String,
    plan: String,
    isolation: Isolation,
    usage: BTreeMap<String, f64>,
}

impl Member {
    fn priced(&self) -> Priced {
        let get = |kind: &str| self.usage.get(kind).copied().unwrap_or(0.0);
        Priced {
            isolation: self.isolation,
            usage: Usage {
                api_calls: get("api_call"),
                search_queries: get("search_query"),
                ai_requests: get("ai_request"),
            },
        }
    }
}

/// Every serving (active or suspended) tenant with its last 30 days of usage.
async fn fleet(state: &AppState) -> Result<Vec<Member>, ApiError> {
    let tenants: Vec<(Uuid, String, String, String)> = sqlx::query_as(
        "SELECT id, slug, plan, isolation FROM tenants WHERE lifecycle IN ('active', 'suspended') ORDER BY slug",
    )
    .fetch_all(&state.db)
    .await?;
    let usage: Vec<(Uuid, String, f64)> = sqlx::query_as(
        "SELECT tenant_id, event_type, sum(quantity) FROM usage_daily
         WHERE day > (now() AT TIME ZONE 'UTC')::date - 30 GROUP BY 1, 2",
    )
    .fetch_all(&state.db)
    .await?;
    let mut by_tenant: HashMap<Uuid, BTreeMap<String, f64>> = HashMap::new();
    for (tenant, kind, quantity) in usage {
        by_tenant.entry(tenant).or_default().insert(kind, quantity);
    }
    tenants
        .into_iter()
        .map(|(id, slug, plan, isolation)| {
            let isolation = isolation.parse().map_err(|e| ApiError::Internal(anyhow::anyhow!("tenant {slug}: {e}")))?;
            Ok(Member { usage: by_tenant.remove(&id).unwrap_or_default(), id, slug, plan, isolation })
        })
        .collect()
}

fn price(state: &AppState, model: &CostModel, member: &Member, fleet: &Fleet) -> Result<TenantCost, ApiError> {
    let plan = state.plans.get(&member.plan).map_err(|e| ApiError::Internal(e.into()))?;
    let cost = model.monthly_cost(&member.priced(), fleet);
    let cost_total: f64 = cost.values().sum();
    let revenue = plan.price_per_month as f64 / 100.0;
    let margin = revenue - cost_total;
    Ok(TenantCost {
        tenant_id: TenantId(member.id),
        slug: Slug::parse(&member.slug).map_err(|e| ApiError::Internal(anyhow::anyhow!("{e}")))?,
        plan: plan.name.clone(),
        isolation: member.isolation,
        usage_30d: member.usage.clone(),
        cost,
        cost_total,
        revenue,
        margin,
        unprofitable: margin < 0.0,
        currency: model.currency.clone(),
    })
}

fn model(state: &AppState) -> Result<&CostModel, ApiError> {
    state.costs.as_deref().ok_or_else(|| ApiError::NotReady("no cost model loaded (costs_file)".into()))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct FleetParams {
    /// Only tenants whose plan does not pay for what they use.
    unprofitable: Option<bool>,
}

/// The fleet's cost and margin per tenant, lowest margin first.
#[utoipa::path(get, path = "/v1/cost", tag = "cost", params(FleetParams),
    responses((status = 200, body = [TenantCost]), (status = 503, body = ErrorBody)))]
async fn fleet_cost(
    State(state): State<AppState>,
    _actor: Actor,
    ApiQuery(params): ApiQuery<FleetParams>,
) -> Result<Json<Vec<TenantCost>>, ApiError> {
    let model = model(&state)?;
    let members = fleet(&state).await?;
    let whole = Fleet::of(&members.iter().map(Member::priced).collect::<Vec<_>>());
    let mut report = members.iter().map(|m| price(&state, model, m, &whole)).collect::<Result<Vec<_>, _>>()?;
    report.retain(|c| !params.unprofitable.unwrap_or(false) || c.unprofitable);
    report.sort_by(|a, b| a.margin.total_cmp(&b.margin).then_with(|| a.slug.cmp(&b.slug)));
    Ok(Json(report))
}

/// A tenant's estimated monthly cost by service, its revenue and margin.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/cost", tag = "cost",
    params(("tenant" = String, Path, description = "Slug or id")),
    responses((status = 200, body = TenantCost), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn tenant_cost(
    State(state): State<AppState>,
    _actor: Actor,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<TenantCost>, ApiError> {
    let model = model(&state)?;
    let reference = super::tenants::tenant_ref(&raw)?;
    let members = fleet(&state).await?;
    let member = members
        .iter()
        .find(|m| match &reference {
            TenantRef::Id(id) => m.id == id.0,
            TenantRef::Slug(slug) => m.slug == slug.as_str(),
        })
        .ok_or_else(|| ApiError::NotFound(format!("serving tenant `{raw}`")))?;
    let whole = Fleet::of(&members.iter().map(Member::priced).collect::<Vec<_>>());
    Ok(Json(price(&state, model, member, &whole)?))
}
