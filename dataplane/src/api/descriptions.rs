//! `POST /v1/products/{id}/description`: a description written by a model
//! (Bedrock on AWS, the built-in writer locally), paid for in AI credits.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use indigo_core::api::AiUsage;
use indigo_core::http::{ApiPath, OptionalJson};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::products::{PRODUCT_BY_ID, Product};
use super::{AppState, StoreError, TenantCtx, ai_call_allowed, ai_call_made, parse_id};
use crate::descriptions::{ProductFacts, WriterError};

/// The plan feature that gives a tenant generated descriptions.
const FEATURE: &str = "ai_descriptions";

pub fn router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(describe_product))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DescriptionRequest {
    /// Also make it the product's description (default: only return it).
    #[serde(default)]
    store: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GeneratedDescription {
    product_id: Uuid,
    description: String,
    /// `bedrock`, or `embedded`: the built-in writer, which puts the product's facts into
    /// sentences without a model.
    generator: String,
    model: String,
    input_tokens: u32,
    output_tokens: u32,
    /// Whether it is now the product's description.
    stored: bool,
}

/// Write a description of a product (owner, staff; plans with `ai_descriptions`). Its tokens are
/// metered as AI credits; past the plan's monthly AI credits: 403 `plan_limit`, before any model call.
#[utoipa::path(post, path = "/v1/products/{id}/description", tag = "products", params(("id" = Uuid, Path)),
    request_body(content = DescriptionRequest, description = "Optional"),
    responses((status = 200, body = GeneratedDescription), (status = 403), (status = 404), (status = 422),
              (status = 502, description = "The model failed")))]
async fn describe_product(
    State(state): State<Arc<AppState>>,
    tenant: TenantCtx,
    ApiPath(id): ApiPath<String>,
    OptionalJson(request): OptionalJson<DescriptionRequest>,
) -> Result<Json<GeneratedDescription>, StoreError> {
    tenant.require_catalogue_role()?;
    let id = parse_id(&id)?;
    tenant.require_feature(FEATURE)?;
    ai_call_allowed(&state, &tenant)?;
    let tenant_id = tenant.claims.tenant_id;
    let product: Product = tenant
        .read_catalogue_one(&PRODUCT_BY_ID, |query| query.bind(id))
        .await?
        .ok_or(StoreError::NotFound("product"))?;
    let facts = ProductFacts {
        name: product.name,
        category: product.category,
        tags: product.tags,
        price_minor: product.price_minor,
        currency: product.currency,
    };
    let written = state.descriptions.write(&facts).await.map_err(|error| match error {
        WriterError::Throttled => StoreError::TooMany {
            code: "ai_throttled",
            message: error.to_string(),
            retry_after: std::time::Duration::from_secs(1),
        },
        WriterError::Failed(_) => {
            tracing::warn!(%error, "a product description could not be written");
            StoreError::Upstream(error.to_string())
        }
    })?;
    let usage = AiUsage {
        service: written.service.into(),
        input_tokens: written.input_tokens,
        output_tokens: written.output_tokens,
    };
    ai_call_made(&state, tenant_id, "/v1/products/{id}/description", usage);
    if request.store {
        let mut tx = tenant.begin_write().await?;
        let updated = sqlx::query("UPDATE products SET description = $2, updated_at = now() WHERE id = $1")
            .bind(id)
            .bind(&written.text)
            .execute(&mut *tx)
            .await?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::NotFound("product"));
        }
        tx.commit().await?;
        tenant.catalogue_changed().await;
    }
    Ok(Json(GeneratedDescription {
        product_id: id,
        description: written.text,
        generator: written.service.into(),
        model: written.model,
        input_tokens: written.input_tokens,
        output_tokens: written.output_tokens,
        stored: request.store,
    }))
}
