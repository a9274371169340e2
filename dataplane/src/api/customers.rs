//! `/v1/customers`: the shop's customers. Owner and staff tokens see and
//! register any; a shopper (a `customer` token) registers its own record once
//! and sees only that one.

use std::sync::Arc;

use axum::Json;
use axum::http::StatusCode;
use indigo_core::api::Page;
use indigo_core::http::{ApiJson, ApiPath, ApiQuery};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{AppState, Literal, OneTripRead, StoreError, TenantCtx, page_limit, parse_id};

/// The unique index that gives each shopper one record per store.
const SHOPPER_RECORD: &str = "customers_by_subject";

pub fn router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(list_customers, create_customer)).routes(routes!(get_customer))
}

#[derive(Debug, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct Customer {
    pub id: Uuid,
    pub email: String,
    pub name: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCustomer {
    #[schema(format = "email", max_length = 254)]
    email: String,
    /// 1 to 200 characters, not only spaces.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00]*[^\x00\t\n\x0b\f\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\x00]*$"
    )]
    name: String,
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
}

/// Register a customer. A shopper's token registers the shopper's own record,
/// once (409 `customer_exists` after that). An email already registered is 409
/// `email_taken`.
#[utoipa::path(post, path = "/v1/customers", tag = "customers", request_body = NewCustomer,
    responses((status = 201, body = Customer), (status = 409), (status = 422)))]
async fn create_customer(
    tenant: TenantCtx,
    ApiJson(new): ApiJson<NewCustomer>,
) -> Result<(StatusCode, Json<Customer>), StoreError> {
    let email = new.email.trim().to_lowercase();
    indigo_core::tenant::Email::parse(&email).map_err(|e| StoreError::invalid("invalid_email", e.to_string()))?;
    let name = new.name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(StoreError::invalid("invalid_name", "name must be 1 to 200 characters"));
    }
    let mut tx = tenant.begin_write().await?;
    let inserted = sqlx::query_as(
        "INSERT INTO customers (tenant_id, id, email, name, subject)
         VALUES (current_setting('app.current_tenant')::uuid, $1, $2, $3, $4)
         RETURNING id, email, name, created_at",
    )
    .bind(Uuid::now_v7())
    .bind(&email)
    .bind(name)
    .bind(tenant.shopper())
    .fetch_one(&mut *tx)
    .await;
    let customer: Customer = match inserted {
        Ok(customer) => customer,
        Err(sqlx::Error::Database(e)) if e.constraint() == Some(SHOPPER_RECORD) => {
            return Err(StoreError::Conflict {
                code: "customer_exists",
                message: "this shopper already has a customer record in this store".into(),
            });
        }
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23505") => {
            return Err(StoreError::Conflict {
                code: "email_taken",
                message: format!("a customer with {email} exists"),
            });
        }
        Err(e) => return Err(e.into()),
    };
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(customer)))
}

/// One customer (for a shopper, only its own).
#[utoipa::path(get, path = "/v1/customers/{id}", tag = "customers", params(("id" = Uuid, Path)),
    responses((status = 200, body = Customer), (status = 404)))]
async fn get_customer(tenant: TenantCtx, ApiPath(id): ApiPath<String>) -> Result<Json<Customer>, StoreError> {
    let id = parse_id(&id)?;
    let customer: Option<Customer> =
        tenant.read(&CUSTOMER_BY_ID, &[Literal::Uuid(id), tenant.shopper().into()]).await?.pop();
    customer.map(Json).ok_or(StoreError::NotFound("customer"))
}

const CUSTOMER_BY_ID: OneTripRead = OneTripRead {
    name: "indigo_customer_by_id",
    parameters: "uuid, text",
    sql: "SELECT id, email, name, created_at FROM customers WHERE id = $1 AND ($2::text IS NULL OR subject = $2)",
};

/// Customers, newest first (for a shopper, only its own record).
#[utoipa::path(get, path = "/v1/customers", tag = "customers", params(ListParams), responses((status = 200, body = Page<Customer>)))]
async fn list_customers(
    tenant: TenantCtx,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<Page<Customer>>, StoreError> {
    let limit = page_limit(params.limit)?;
    let mut tx = tenant.begin().await?;
    let items: Vec<Customer> = sqlx::query_as(
        "SELECT id, email, name, created_at FROM customers
         WHERE ($1::uuid IS NULL OR (created_at, id) < (SELECT created_at, id FROM customers WHERE id = $1))
           AND ($3::text IS NULL OR subject = $3)
         ORDER BY created_at DESC, id DESC LIMIT $2",
    )
    .bind(params.cursor)
    .bind(limit)
    .bind(tenant.shopper())
    .fetch_all(&mut *tx)
    .await?;
    drop(tx);
    let next_cursor = (items.len() as i64 == limit).then(|| items.last().map(|c| c.id.to_string())).flatten();
    Ok(Json(Page { items, next_cursor }))
}
