//! `GET /v1/search`: PostgreSQL full-text search over the tenant's active
//! products, ranked. Plans with the `ai_search` feature get the richer ranking
//! (cover density, field weights, in-stock boost).

use std::sync::Arc;

use indigo_core::http::{ApiQuery, Rejection};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::products::{Product, product_columns};
use super::{AppState, JsonBody, StoreError, TenantCtx, page_limit};
use crate::catalogue_cache::Entry;

pub fn router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(search))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SearchParams {
    /// Words to find; supports "quoted phrases", `or` and `-excluded`. 1 to 200 characters.
    #[param(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00]*[^\x00\t\n\x0b\f\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\x00]*$"
    )]
    q: String,
    /// At most this many hits, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SearchHit {
    #[serde(flatten)]
    product: Product,
    rank: f32,
}

#[derive(sqlx::FromRow)]
struct HitRow {
    #[sqlx(flatten)]
    product: Product,
    rank: f32,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResults {
    items: Vec<SearchHit>,
}

/// Search the catalogue, best match first.
#[utoipa::path(get, path = "/v1/search", tag = "search", params(SearchParams), responses((status = 200, body = SearchResults)))]
async fn search(tenant: TenantCtx, ApiQuery(params): ApiQuery<SearchParams>) -> Result<JsonBody, StoreError> {
    let query = params.q.trim();
    if query.is_empty() || query.chars().count() > 200 {
        return Err(StoreError::Rejected(Rejection::bad_request("invalid_query", "q must be 1 to 200 characters")));
    }
    let limit = page_limit(params.limit)?;
    // The plan decides the ranking, so it is part of what is cached.
    let boosted = tenant.route.plan.has_feature("ai_search");
    tenant
        .cached(Entry::query("search", &(query, limit, boosted)), async {
            let mut tx = tenant.begin().await?;
            let rows: Vec<HitRow> = sqlx::query_as(concat!(
                "SELECT ",
                product_columns!(),
                ", (CASE WHEN $3 THEN ts_rank_cd('{0.2, 0.4, 0.7, 1.0}', search, query) * (CASE WHEN stock > 0 THEN 1.2 ELSE 1.0 END)
                         ELSE ts_rank(search, query) END)::real AS rank
                 FROM products, websearch_to_tsquery('simple', $1) AS query
                 WHERE search @@ query AND status = 'active'
                 ORDER BY rank DESC, id
                 LIMIT $2"
            ))
            .bind(query)
            .bind(limit)
            .bind(boosted)
            .fetch_all(&mut *tx)
            .await?;
            drop(tx);
            Ok(SearchResults {
                items: rows.into_iter().map(|r| SearchHit { product: r.product, rank: r.rank }).collect(),
            })
        })
        .await
}
