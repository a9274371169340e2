//! `/v1/orders`: orders priced from the catalogue, with stock taken atomically.
//! Owner and staff tokens see and place any customer's orders; a shopper (a
//! `customer` token) only its own.

use std::sync::Arc;

use std::collections::BTreeMap;

use axum::Json;
use axum::http::StatusCode;
use indigo_core::api::{Page, whole};
use indigo_core::http::{ApiJson, ApiPath, ApiQuery, Rejection};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{AppState, StoreError, TenantCtx, page_limit, parse_id};

pub fn router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(list_orders, create_order)).routes(routes!(get_order))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOrder {
    customer_id: Uuid,
    #[schema(min_items = 1, max_items = 100)]
    items: Vec<NewItem>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewItem {
    product_id: Uuid,
    #[serde(deserialize_with = "whole::required")]
    #[schema(minimum = 1, maximum = 10000)]
    quantity: i32,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Order {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub status: String,
    pub total_minor: i64,
    pub currency: String,
    pub items: Vec<OrderItem>,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct OrderItem {
    pub line: i32,
    pub product_id: Uuid,
    pub quantity: i32,
    pub unit_price_minor: i64,
}

#[derive(sqlx::FromRow)]
struct OrderRow {
    id: Uuid,
    customer_id: Uuid,
    status: String,
    total_minor: i64,
    currency: String,
    created_at: chrono::DateTime<chrono::Utc>,
}

impl OrderRow {
    fn with_items(self, items: Vec<OrderItem>) -> Order {
        Order {
            id: self.id,
            customer_id: self.customer_id,
            status: self.status,
            total_minor: self.total_minor,
            currency: self.currency,
            items,
            created_at: self.created_at,
        }
    }
}

#[derive(sqlx::FromRow)]
struct Stocked {
    id: Uuid,
    price_minor: i64,
    currency: String,
    stock: i32,
    status: String,
}

/// Place an order. Prices come from the catalogue; stock is taken in the same
/// transaction, under row locks, so two orders cannot both take the last unit.
/// A shopper orders for its own customer record only (403 otherwise).
#[utoipa::path(post, path = "/v1/orders", tag = "orders", request_body = NewOrder,
    responses((status = 201, body = Order), (status = 403, description = "A shopper ordering for another customer"),
        (status = 404, description = "The customer or a product is unknown"),
        (status = 409, description = "Not enough stock"), (status = 422)))]
async fn create_order(
    tenant: TenantCtx,
    ApiJson(new): ApiJson<NewOrder>,
) -> Result<(StatusCode, Json<Order>), StoreError> {
    if new.items.is_empty() || new.items.len() > 100 {
        return Err(StoreError::invalid("invalid_items", "an order has 1 to 100 items"));
    }
    // The same product twice is one line with the quantities added.
    let mut wanted: BTreeMap<Uuid, i64> = BTreeMap::new();
    for item in &new.items {
        if item.quantity < 1 || item.quantity > 10_000 {
            return Err(StoreError::invalid("invalid_quantity", "quantity must be between 1 and 10000"));
        }
        *wanted.entry(item.product_id).or_default() += i64::from(item.quantity);
    }
    let ids: Vec<Uuid> = wanted.keys().copied().collect();
    let mut tx = tenant.begin_write().await?;
    let customer_known: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM customers WHERE id = $1 AND ($2::text IS NULL OR subject = $2))",
    )
    .bind(new.customer_id)
    .bind(tenant.shopper())
    .fetch_one(&mut *tx)
    .await?;
    if !customer_known && tenant.shopper().is_some() {
        return Err(StoreError::Forbidden("a shopper places orders for its own customer record only"));
    }
    if !customer_known {
        return Err(Rejection::not_found("unknown_customer", format!("no customer {}", new.customer_id)).into());
    }
    // Locked in id order, so concurrent orders cannot deadlock on each other.
    let products: Vec<Stocked> = sqlx::query_as(
        "SELECT id, price_minor, currency, stock, status FROM products WHERE id = ANY ($1) ORDER BY id FOR UPDATE",
    )
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    if let Some(missing) = ids.iter().find(|id| !products.iter().any(|p| p.id == **id)) {
        return Err(Rejection::not_found("unknown_product", format!("no product {missing}")).into());
    }
    let currency = products[0].currency.clone();
    let mut total: i64 = 0;
    let mut lines = Vec::with_capacity(products.len());
    for (line, product) in products.iter().enumerate() {
        let quantity = wanted[&product.id];
        if product.status != "active" {
            return Err(StoreError::Conflict {
                code: "product_unavailable",
                message: format!("product {} is not for sale", product.id),
            });
        }
        if product.currency != currency {
            return Err(StoreError::invalid("mixed_currency", "all items of an order must share one currency"));
        }
        if i64::from(product.stock) < quantity {
            return Err(StoreError::Conflict {
                code: "insufficient_stock",
                message: format!("product {} has {} in stock, {quantity} wanted", product.id, product.stock),
            });
        }
        total = product
            .price_minor
            .checked_mul(quantity)
            .and_then(|amount| total.checked_add(amount))
            .ok_or_else(|| StoreError::invalid("invalid_quantity", "the order total is too large"))?;
        lines.push(OrderItem {
            line: i32::try_from(line + 1).expect("at most 100 lines"),
            product_id: product.id,
            quantity: i32::try_from(quantity)
                .map_err(|_| StoreError::invalid("invalid_quantity", "quantity too large"))?,
            unit_price_minor: product.price_minor,
        });
    }
    let product_ids: Vec<Uuid> = lines.iter().map(|l| l.product_id).collect();
    let quantities: Vec<i32> = lines.iter().map(|l| l.quantity).collect();
    sqlx::query(
        "UPDATE products p SET stock = p.stock - w.quantity, updated_at = now()
         FROM UNNEST($1::uuid[], $2::int[]) AS w (id, quantity) WHERE p.id = w.id",
    )
    .bind(&product_ids)
    .bind(&quantities)
    .execute(&mut *tx)
    .await?;
    let order: OrderRow = sqlx::query_as(
        "INSERT INTO orders (tenant_id, id, customer_id, total_minor, currency)
         VALUES (current_setting('app.current_tenant')::uuid, $1, $2, $3, $4)
         RETURNING id, customer_id, status, total_minor, currency, created_at",
    )
    .bind(Uuid::now_v7())
    .bind(new.customer_id)
    .bind(total)
    .bind(&currency)
    .fetch_one(&mut *tx)
    .await?;
    let line_numbers: Vec<i32> = lines.iter().map(|l| l.line).collect();
    let prices: Vec<i64> = lines.iter().map(|l| l.unit_price_minor).collect();
    sqlx::query(
        "INSERT INTO order_items (tenant_id, order_id, line, product_id, quantity, unit_price_minor)
         SELECT current_setting('app.current_tenant')::uuid, $1, * FROM UNNEST($2::int[], $3::uuid[], $4::int[], $5::bigint[])",
    )
    .bind(order.id)
    .bind(&line_numbers)
    .bind(&product_ids)
    .bind(&quantities)
    .bind(&prices)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    // The products' stock changed.
    tenant.catalogue_changed().await;
    Ok((StatusCode::CREATED, Json(order.with_items(lines))))
}

/// One order with its items (for a shopper, only its own).
#[utoipa::path(get, path = "/v1/orders/{id}", tag = "orders", params(("id" = Uuid, Path)),
    responses((status = 200, body = Order), (status = 404)))]
async fn get_order(tenant: TenantCtx, ApiPath(id): ApiPath<String>) -> Result<Json<Order>, StoreError> {
    let id = parse_id(&id)?;
    let mut tx = tenant.begin().await?;
    let order: Option<OrderRow> = sqlx::query_as(
        "SELECT id, customer_id, status, total_minor, currency, created_at FROM orders
         WHERE id = $1 AND ($2::text IS NULL OR customer_id IN (SELECT id FROM customers WHERE subject = $2))",
    )
    .bind(id)
    .bind(tenant.shopper())
    .fetch_optional(&mut *tx)
    .await?;
    let order = order.ok_or(StoreError::NotFound("order"))?;
    let items: Vec<OrderItem> = sqlx::query_as(
        "SELECT line, product_id, quantity, unit_price_minor FROM order_items WHERE order_id = $1 ORDER BY line",
    )
    .bind(id)
    .fetch_all(&mut *tx)
    .await?;
    drop(tx);
    Ok(Json(order.with_items(items)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Page size, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<Uuid>,
    customer_id: Option<Uuid>,
}

/// Orders, newest first (items included); for a shopper, only its own.
#[utoipa::path(get, path = "/v1/orders", tag = "orders", params(ListParams), responses((status = 200, body = Page<Order>)))]
async fn list_orders(
    tenant: TenantCtx,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<Page<Order>>, StoreError> {
    let limit = page_limit(params.limit)?;
    let mut tx = tenant.begin().await?;
    let rows: Vec<OrderRow> = sqlx::query_as(
        "SELECT id, customer_id, status, total_minor, currency, created_at FROM orders
         WHERE ($1::uuid IS NULL OR (created_at, id) < (SELECT created_at, id FROM orders WHERE id = $1))
           AND ($2::uuid IS NULL OR customer_id = $2)
           AND ($4::text IS NULL OR customer_id IN (SELECT id FROM customers WHERE subject = $4))
         ORDER BY created_at DESC, id DESC LIMIT $3",
    )
    .bind(params.cursor)
    .bind(params.customer_id)
    .bind(limit)
    .bind(tenant.shopper())
    .fetch_all(&mut *tx)
    .await?;
    let ids: Vec<Uuid> = rows.iter().map(|o| o.id).collect();
    let items: Vec<(Uuid, i32, Uuid, i32, i64)> = sqlx::query_as(
        "SELECT order_id, line, product_id, quantity, unit_price_minor FROM order_items
         WHERE order_id = ANY ($1) ORDER BY order_id, line",
    )
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    drop(tx);
    let mut by_order: BTreeMap<Uuid, Vec<OrderItem>> = BTreeMap::new();
    for (order_id, line, product_id, quantity, unit_price_minor) in items {
        by_order.entry(order_id).or_default().push(OrderItem { line, product_id, quantity, unit_price_minor });
    }
    let items: Vec<Order> = rows
        .into_iter()
        .map(|row| {
            let lines = by_order.remove(&row.id).unwrap_or_default();
            row.with_items(lines)
        })
        .collect();
    let next_cursor = (items.len() as i64 == limit).then(|| items.last().map(|o| o.id.to_string())).flatten();
    Ok(Json(Page { items, next_cursor }))
}
