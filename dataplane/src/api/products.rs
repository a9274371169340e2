//! `/v1/products`: the catalogue. Reads for every role; writes for owner and staff.

use std::sync::Arc;

use axum::Json;
use axum::http::StatusCode;
use indigo_core::api::{Page, whole};
use indigo_core::http::{ApiJson, ApiPath, ApiQuery};
use indigo_core::plan::Limit;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{AppState, CatalogueRead, JsonBody, StoreError, TenantCtx, page_limit, parse_id};
use crate::catalogue_cache::Entry;

pub fn router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(list_products, create_product)).routes(routes!(
        get_product,
        update_product,
        delete_product
    ))
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct Product {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    /// Price in the currency's minor units (cents).
    pub price_minor: i64,
    pub currency: String,
    pub category: String,
    pub tags: Vec<String>,
    /// `draft`, `active` or `archived`.
    pub status: String,
    pub stock: i32,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

macro_rules! product_columns {
    () => {
        "id, name, description, price_minor, currency, category, tags, status, stock, created_at, updated_at"
    };
}
pub(crate) use product_columns;

/// Where a product stands: only `active` ones are sold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProductStatus {
    Draft,
    Active,
    Archived,
}

impl ProductStatus {
    fn as_str(self) -> &'static str {
        match self {
            ProductStatus::Draft => "draft",
            ProductStatus::Active => "active",
            ProductStatus::Archived => "archived",
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewProduct {
    // "Not only spaces" as the server checks it (Rust's `trim`, Unicode White_Space), spelled out:
    // a schema's `\s` is ECMAScript's, which leaves out U+0085 and counts U+FEFF.
    /// 1 to 200 characters, not only spaces.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00]*[^\x00\t\n\x0b\f\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\x00]*$"
    )]
    name: String,
    #[serde(default)]
    #[schema(max_length = 10000)]
    description: String,
    /// In the currency's minor units (cents).
    #[serde(deserialize_with = "whole::required")]
    #[schema(minimum = 0)]
    price_minor: i64,
    /// A lowercase ISO 4217 code such as `usd`.
    #[schema(pattern = "^[a-z]{3}$")]
    currency: String,
    #[serde(default)]
    #[schema(max_length = 100)]
    category: String,
    #[serde(default)]
    #[schema(value_type = Vec<Tag>, max_items = 20, inline)]
    tags: Vec<String>,
    /// `active` when left out.
    #[serde(default)]
    status: Option<ProductStatus>,
    #[serde(default, deserialize_with = "whole::required")]
    #[schema(minimum = 0, maximum = 2_147_483_647)]
    stock: i32,
}

/// Fields to change; absent ones stay.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProductChanges {
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00]*[^\x00\t\n\x0b\f\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\x00]*$"
    )]
    name: Option<String>,
    #[schema(max_length = 10000)]
    description: Option<String>,
    #[serde(default, deserialize_with = "whole::optional")]
    #[schema(minimum = 0)]
    price_minor: Option<i64>,
    #[schema(pattern = "^[a-z]{3}$")]
    currency: Option<String>,
    #[schema(max_length = 100)]
    category: Option<String>,
    #[schema(value_type = Option<Vec<Tag>>, max_items = 20, inline)]
    tags: Option<Vec<String>>,
    status: Option<ProductStatus>,
    #[serde(default, deserialize_with = "whole::optional")]
    #[schema(minimum = 0, maximum = 2_147_483_647)]
    stock: Option<i32>,
}

/// The schema of one of a product's tags: 1 to 50 characters.
#[derive(ToSchema)]
#[schema(value_type = String, min_length = 1, max_length = 50)]
struct Tag(#[allow(dead_code)] String);

impl ProductChanges {
    fn validate(&self) -> Result<(), StoreError> {
        if let Some(name) = &self.name
            && (name.trim().is_empty() || name.chars().count() > 200)
        {
            return Err(StoreError::invalid("invalid_name", "name must be 1 to 200 characters"));
        }
        if self.description.as_ref().is_some_and(|d| d.chars().count() > 10_000) {
            return Err(StoreError::invalid("invalid_description", "description must be at most 10000 characters"));
        }
        if self.price_minor.is_some_and(|p| p < 0) {
            return Err(StoreError::invalid("invalid_price", "price_minor must be 0 or more"));
        }
        if let Some(currency) = &self.currency
            && (currency.len() != 3 || !currency.chars().all(|c| c.is_ascii_lowercase()))
        {
            return Err(StoreError::invalid(
                "invalid_currency",
                "currency must be a lowercase ISO 4217 code such as `usd`",
            ));
        }
        if self.category.as_ref().is_some_and(|c| c.chars().count() > 100) {
            return Err(StoreError::invalid("invalid_category", "category must be at most 100 characters"));
        }
        if let Some(tags) = &self.tags
            && (tags.len() > 20 || tags.iter().any(|t| t.is_empty() || t.chars().count() > 50))
        {
            return Err(StoreError::invalid("invalid_tags", "at most 20 tags of 1 to 50 characters"));
        }
        if self.stock.is_some_and(|s| s < 0) {
            return Err(StoreError::invalid("invalid_stock", "stock must be 0 or more"));
        }
        Ok(())
    }
}

impl From<NewProduct> for ProductChanges {
    fn from(p: NewProduct) -> Self {
        Self {
            name: Some(p.name),
            description: Some(p.description),
            price_minor: Some(p.price_minor),
            currency: Some(p.currency),
            category: Some(p.category),
            tags: Some(p.tags),
            status: Some(p.status.unwrap_or(ProductStatus::Active)),
            stock: Some(p.stock),
        }
    }
}

#[derive(Debug, Deserialize, Serialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Page size, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<Uuid>,
    category: Option<String>,
    #[param(inline)]
    status: Option<ProductStatus>,
    /// Only products carrying this tag.
    tag: Option<String>,
    min_price: Option<i64>,
    max_price: Option<i64>,
}

/// Products, newest first.
#[utoipa::path(get, path = "/v1/products", tag = "products", params(ListParams), responses((status = 200, body = Page<Product>)))]
async fn list_products(tenant: TenantCtx, ApiQuery(params): ApiQuery<ListParams>) -> Result<JsonBody, StoreError> {
    let limit = page_limit(params.limit)?;
    tenant
        .cached(Entry::query("page", &params), async {
            let status = params.status.map(ProductStatus::as_str);
            let items: Vec<Product> = tenant
                .read_catalogue(&PRODUCT_PAGE, |query| {
                    query
                        .bind(params.cursor)
                        .bind(params.category.clone())
                        .bind(status)
                        .bind(params.tag.clone())
                        .bind(params.min_price)
                        .bind(params.max_price)
                        .bind(limit)
                })
                .await?;
            let next_cursor = (items.len() as i64 == limit).then(|| items.last().map(|p| p.id.to_string())).flatten();
            Ok(Page { items, next_cursor })
        })
        .await
}

/// A page of the catalogue, a storefront's other hot read.
static PRODUCT_PAGE: CatalogueRead = CatalogueRead::new(concat!(
    "SELECT tenant_id, ",
    product_columns!(),
    " FROM products
     WHERE ($2::uuid IS NULL OR (created_at, id) < (SELECT created_at, id FROM products WHERE id = $2))
       AND ($3::text IS NULL OR category = $3)
       AND ($4::text IS NULL OR status = $4)
       AND ($5::text IS NULL OR $5 = ANY (tags))
       AND ($6::bigint IS NULL OR price_minor >= $6)
       AND ($7::bigint IS NULL OR price_minor <= $7)
     ORDER BY created_at DESC, id DESC
     LIMIT $8"
));

/// One product.
#[utoipa::path(get, path = "/v1/products/{id}", tag = "products", params(("id" = Uuid, Path)),
    responses((status = 200, body = Product), (status = 404)))]
async fn get_product(tenant: TenantCtx, ApiPath(id): ApiPath<String>) -> Result<JsonBody, StoreError> {
    let id = parse_id(&id)?;
    tenant
        .cached(Entry::product(id), async {
            let product: Option<Product> = tenant.read_catalogue_one(&PRODUCT_BY_ID, |query| query.bind(id)).await?;
            product.ok_or(StoreError::NotFound("product"))
        })
        .await
}

/// The storefront's hottest read, in one round trip.
pub(super) static PRODUCT_BY_ID: CatalogueRead =
    CatalogueRead::new(concat!("SELECT tenant_id, ", product_columns!(), " FROM products WHERE id = $2"));

/// Add a product (owner, staff). Past the plan's product limit: 403 `plan_limit`.
#[utoipa::path(post, path = "/v1/products", tag = "products", request_body = NewProduct,
    responses((status = 201, body = Product), (status = 403), (status = 422)))]
async fn create_product(
    tenant: TenantCtx,
    ApiJson(new): ApiJson<NewProduct>,
) -> Result<(StatusCode, Json<Product>), StoreError> {
    tenant.require_catalogue_role()?;
    let changes = ProductChanges::from(new);
    changes.validate()?;
    let mut tx = tenant.begin_write().await?;
    if let Limit::AtMost(limit) = tenant.route.plan.limits.products {
        // Creates of one tenant queue here, so two cannot both take the last slot.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended(current_setting('app.current_tenant'), 0))")
            .execute(&mut *tx)
            .await?;
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM products").fetch_one(&mut *tx).await?;
        if !Limit::AtMost(limit).allows_one_more(u64::try_from(count).unwrap_or(0)) {
            return Err(StoreError::PlanLimit { what: "products", limit });
        }
    }
    let product: Product = sqlx::query_as(concat!(
        "INSERT INTO products (tenant_id, id, name, description, price_minor, currency, category, tags, status, stock)
         VALUES (current_setting('app.current_tenant')::uuid, $1, $2, $3, $4, $5, $6, $7, $8, $9)
         RETURNING ",
        product_columns!()
    ))
    .bind(Uuid::now_v7())
    .bind(changes.name.as_deref().map(str::trim))
    .bind(&changes.description)
    .bind(changes.price_minor)
    .bind(&changes.currency)
    .bind(&changes.category)
    .bind(&changes.tags)
    .bind(changes.status.map(ProductStatus::as_str))
    .bind(changes.stock)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    tenant.catalogue_changed().await;
    Ok((StatusCode::CREATED, Json(product)))
}

/// Change a product (owner, staff).
#[utoipa::path(patch, path = "/v1/products/{id}", tag = "products", params(("id" = Uuid, Path)), request_body = ProductChanges,
    responses((status = 200, body = Product), (status = 404), (status = 422)))]
async fn update_product(
    tenant: TenantCtx,
    ApiPath(id): ApiPath<String>,
    ApiJson(changes): ApiJson<ProductChanges>,
) -> Result<Json<Product>, StoreError> {
    tenant.require_catalogue_role()?;
    let id = parse_id(&id)?;
    changes.validate()?;
    let mut tx = tenant.begin_write().await?;
    let product: Option<Product> = sqlx::query_as(concat!(
        "UPDATE products SET
            name = COALESCE($2, name), description = COALESCE($3, description),
            price_minor = COALESCE($4, price_minor), currency = COALESCE($5, currency),
            category = COALESCE($6, category), tags = COALESCE($7, tags),
            status = COALESCE($8, status), stock = COALESCE($9, stock), updated_at = now()
         WHERE id = $1 RETURNING ",
        product_columns!()
    ))
    .bind(id)
    .bind(changes.name.as_deref().map(str::trim))
    .bind(&changes.description)
    .bind(changes.price_minor)
    .bind(&changes.currency)
    .bind(&changes.category)
    .bind(&changes.tags)
    .bind(changes.status.map(ProductStatus::as_str))
    .bind(changes.stock)
    .fetch_optional(&mut *tx)
    .await?;
    let product = product.ok_or(StoreError::NotFound("product"))?;
    tx.commit().await?;
    tenant.catalogue_changed().await;
    Ok(Json(product))
}

/// Remove a product (owner, staff). One that orders refer to is archived instead: 409.
#[utoipa::path(delete, path = "/v1/products/{id}", tag = "products", params(("id" = Uuid, Path)),
    responses((status = 204), (status = 404), (status = 409)))]
async fn delete_product(tenant: TenantCtx, ApiPath(id): ApiPath<String>) -> Result<StatusCode, StoreError> {
    tenant.require_catalogue_role()?;
    let id = parse_id(&id)?;
    let mut tx = tenant.begin_write().await?;
    let deleted = match sqlx::query("DELETE FROM products WHERE id = $1").bind(id).execute(&mut *tx).await {
        Ok(result) => result.rows_affected(),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23503") => {
            return Err(StoreError::Conflict {
                code: "product_in_orders",
                message: "orders refer to this product; set its status to archived instead".into(),
            });
        }
        Err(e) => return Err(e.into()),
    };
    if deleted == 0 {
        return Err(StoreError::NotFound("product"));
    }
    tx.commit().await?;
    tenant.catalogue_changed().await;
    Ok(StatusCode::NO_CONTENT)
}
