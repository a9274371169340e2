//! `/v1/recommendations`: products to suggest — from the tenant's Amazon
//! Personalize campaign when its settings name one and this data plane calls
//! Personalize, otherwise (and whenever Personalize fails) from the built-in
//! recommender: item-to-item co-purchase counts over the tenant's own orders
//! (`migrations/tenant/*_recommendations.sql`), refreshed by the control
//! plane's scheduled job and on demand here.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use indigo_core::http::ApiQuery;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use indigo_core::api::AiUsage;

use super::products::{Product, product_columns};
use super::{AppState, StoreError, TenantCtx, ai_call_allowed, ai_call_made, page_limit};
use crate::personalize::Seeds;

/// The plan feature that gives a tenant recommendations.
const FEATURE: &str = "recommendations";

pub fn router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(recommend)).routes(routes!(refresh))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RecommendationParams {
    /// Suggest what was bought together with what this customer bought (a shopper sees only
    /// its own orders, so another's id yields the popular products).
    customer_id: Option<Uuid>,
    /// Suggest what was bought together with this product.
    product_id: Option<Uuid>,
    /// At most this many, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Recommendation {
    #[serde(flatten)]
    product: Product,
    /// From the built-in recommender, how many orders held it with what the suggestion starts
    /// from (for `popular`, how many orders held it); from Personalize, its score.
    score: f64,
    /// `bought_together`, `popular` when there is nothing to start from or it ran out, or
    /// `personalize`.
    reason: String,
}

#[derive(sqlx::FromRow)]
struct RecommendationRow {
    #[sqlx(flatten)]
    product: Product,
    score: i64,
    reason: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Recommendations {
    /// Active products in stock only, best first.
    items: Vec<Recommendation>,
    /// `embedded` (the built-in recommender) or `personalize`.
    source: String,
    /// When the built-in recommender's counts were last computed; none before the first refresh,
    /// and for Personalize.
    refreshed_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RecommenderRefresh {
    /// The orders the counts were computed from.
    orders_counted: i64,
    refreshed_at: DateTime<Utc>,
}

/// Products to suggest (plans with `recommendations`): bought together with a product, or with a
/// customer's past orders; the most bought ones otherwise. With the tenant's Personalize campaign,
/// Personalize's (paid in AI credits: past the plan's, 403 `plan_limit`).
#[utoipa::path(get, path = "/v1/recommendations", tag = "recommendations", params(RecommendationParams),
    responses((status = 200, body = Recommendations), (status = 403)))]
async fn recommend(
    State(state): State<Arc<AppState>>,
    tenant: TenantCtx,
    ApiQuery(params): ApiQuery<RecommendationParams>,
) -> Result<Json<Recommendations>, StoreError> {
    tenant.require_feature(FEATURE)?;
    let limit = page_limit(params.limit)?;
    let seeds = Seeds { customer: params.customer_id, product: params.product_id };
    if let (Some(personalize), Some(campaign)) = (&state.personalize, &tenant.route.personalize_campaign_arn)
        && (seeds.customer.is_some() || seeds.product.is_some())
    {
        ai_call_allowed(&state, &tenant)?;
        let tenant_id = tenant.claims.tenant_id;
        match personalize.recommend(campaign, seeds, limit).await {
            Ok(picks) => {
                // One request is one unit of Personalize.
                let usage = AiUsage { service: "personalize".into(), input_tokens: 1, output_tokens: 0 };
                ai_call_made(&state, tenant_id, "/v1/recommendations", usage);
                return Ok(Json(from_personalize(&tenant, picks).await?));
            }
            Err(error) => {
                tracing::warn!(tenant = %tenant_id, %error, "Personalize did not answer; the built-in recommender does")
            }
        }
    }
    let mut tx = tenant.begin().await?;
    let rows: Vec<RecommendationRow> = sqlx::query_as(concat!(
        "WITH seeds AS (
             SELECT $1::uuid AS id WHERE $1::uuid IS NOT NULL
             UNION
             SELECT i.product_id FROM order_items i
             JOIN orders o ON o.tenant_id = i.tenant_id AND o.id = i.order_id
             WHERE $2::uuid IS NOT NULL AND o.customer_id = $2
         ), together AS (
             SELECT other_id AS id, sum(orders)::bigint AS score FROM product_pairs
             WHERE product_id IN (SELECT id FROM seeds) AND other_id NOT IN (SELECT id FROM seeds)
             GROUP BY other_id
         ), ranked AS (
             SELECT id AS pick, score, 'bought_together' AS reason, 0 AS tier FROM together
             UNION ALL
             SELECT product_id, orders, 'popular', 1 FROM product_pairs
             WHERE product_id = other_id AND product_id NOT IN (SELECT id FROM seeds)
               AND product_id NOT IN (SELECT id FROM together)
         )
         SELECT ",
        product_columns!(),
        ", r.score, r.reason
         FROM ranked r JOIN products p ON p.id = r.pick
         WHERE p.status = 'active' AND p.stock > 0
         ORDER BY r.tier, r.score DESC, p.id
         LIMIT $3"
    ))
    .bind(params.product_id)
    .bind(params.customer_id)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    let refreshed_at: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT refreshed_at FROM recommender_state").fetch_optional(&mut *tx).await?;
    drop(tx);
    Ok(Json(Recommendations {
        items: rows
            .into_iter()
            .map(|r| Recommendation { product: r.product, score: r.score as f64, reason: r.reason })
            .collect(),
        source: "embedded".into(),
        refreshed_at,
    }))
}

/// Personalize's picks that are this tenant's active products in stock, in its order.
async fn from_personalize(tenant: &TenantCtx, picks: Vec<(Uuid, f64)>) -> Result<Recommendations, StoreError> {
    let ids: Vec<Uuid> = picks.iter().map(|(id, _)| *id).collect();
    let mut tx = tenant.begin().await?;
    let products: Vec<Product> = sqlx::query_as(concat!(
        "SELECT ",
        product_columns!(),
        " FROM products WHERE id = ANY ($1) AND status = 'active' AND stock > 0"
    ))
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    drop(tx);
    let mut products: std::collections::HashMap<Uuid, Product> = products.into_iter().map(|p| (p.id, p)).collect();
    let items = picks
        .into_iter()
        .filter_map(|(id, score)| {
            let product = products.remove(&id)?;
            Some(Recommendation { product, score, reason: "personalize".into() })
        })
        .collect();
    Ok(Recommendations { items, source: "personalize".into(), refreshed_at: None })
}

/// Recompute the co-purchase counts from the tenant's orders now (owner, staff; plans with
/// `recommendations`). The control plane also does it on a schedule.
#[utoipa::path(post, path = "/v1/recommendations/refresh", tag = "recommendations",
    responses((status = 200, body = RecommenderRefresh), (status = 403)))]
async fn refresh(tenant: TenantCtx) -> Result<Json<RecommenderRefresh>, StoreError> {
    tenant.require_catalogue_role()?;
    tenant.require_feature(FEATURE)?;
    let mut tx = tenant.begin_write().await?;
    let orders_counted: i64 = sqlx::query_scalar("SELECT refresh_product_pairs()").fetch_one(&mut *tx).await?;
    let refreshed_at: DateTime<Utc> =
        sqlx::query_scalar("SELECT refreshed_at FROM recommender_state").fetch_one(&mut *tx).await?;
    tx.commit().await?;
    Ok(Json(RecommenderRefresh { orders_counted, refreshed_at }))
}
