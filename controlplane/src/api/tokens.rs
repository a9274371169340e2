//! `/v1/tokens`: API tokens and their roles (admin only). A token's secret is
//! returned once, at creation; the database keeps its hash.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use indigo_core::api::{ApiToken, CreateTokenRequest, CreatedToken, ErrorBody, WhoAmI};
use indigo_core::http::{ApiJson, ApiPath, RequestId};
use indigo_core::tenant::Role;
use serde_json::json;
use sqlx::PgConnection;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::AppState;
use super::auth::{self, Actor};
use super::error::ApiError;
use super::idempotency::{self, Claim, IdempotencyKey};
use crate::journal::Audit;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_tokens, create_token))
        .routes(routes!(revoke_token))
        .routes(routes!(revoke_bootstrap))
        .routes(routes!(whoami))
}

#[derive(sqlx::FromRow)]
struct TokenRow {
    id: Uuid,
    name: String,
    role: String,
    created_at: chrono::DateTime<chrono::Utc>,
    revoked_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl TryFrom<TokenRow> for ApiToken {
    type Error = ApiError;
    fn try_from(row: TokenRow) -> Result<Self, ApiError> {
        Ok(ApiToken {
            id: row.id,
            name: row.name,
            role: row.role.parse().map_err(|e| anyhow::anyhow!("api_tokens.role: {e}"))?,
            created_at: row.created_at,
            revoked_at: row.revoked_at,
        })
    }
}

/// Inserts a token with a fresh secret; also used by `indigo up` for the local admin.
pub async fn insert_token(conn: &mut PgConnection, name: &str, role: Role) -> Result<CreatedToken, ApiError> {
    let secret = auth::generate_token();
    let row: TokenRow = sqlx::query_as(
        "INSERT INTO api_tokens (id, name, role, token_hash) VALUES ($1, $2, $3, $4)
         RETURNING id, name, role, created_at, revoked_at",
    )
    .bind(Uuid::now_v7())
    .bind(name)
    .bind(role.as_str())
    .bind(auth::hash_token(&secret))
    .fetch_one(conn)
    .await?;
    Ok(CreatedToken { info: row.try_into()?, token: secret })
}

/// Create a token (admin). The secret is in this response only; a replay shows it redacted.
#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", request_body = CreateTokenRequest,
    params(("Idempotency-Key" = String, Header)),
    responses((status = 201, body = CreatedToken), (status = 403, body = ErrorBody),
        (status = 409, description = "A token of that name exists", body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_token(
    State(state): State<AppState>,
    actor: Actor,
    key: IdempotencyKey,
    RequestId(request_id): RequestId,
    ApiJson(request): ApiJson<CreateTokenRequest>,
) -> Result<Response, ApiError> {
    actor.require(Role::Admin)?;
    let name = request.name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(ApiError::invalid("invalid_name", "token name must be 1 to 100 characters"));
    }
    if request.role == Role::DataPlane {
        return Err(ApiError::invalid(
            "invalid_role",
            "data-plane identities are made by the control plane for the data planes it runs",
        ));
    }
    if Actor::SYSTEM_NAMES.iter().any(|system| system.eq_ignore_ascii_case(name)) {
        return Err(ApiError::invalid("reserved_name", format!("`{name}` is a name the control plane acts under")));
    }
    let mut tx = state.db.begin().await?;
    let pending = match key.claim(&mut tx, &actor, &request).await? {
        Claim::Replay(response) => return Ok(response),
        Claim::Fresh(pending) => pending,
    };
    let created = match insert_token(&mut tx, name, request.role).await {
        Err(ApiError::Database(sqlx::Error::Database(e))) if e.constraint() == Some("api_tokens_name_key") => {
            return Err(ApiError::conflict("token_name_taken", format!("a token named `{name}` exists")));
        }
        created => created?,
    };
    Audit {
        actor: &actor,
        action: "token.create",
        tenant_id: None,
        request_id: request_id.as_deref(),
        before: None,
        after: Some(json!(created.info)),
    }
    .append(&mut tx)
    .await?;
    let redacted = CreatedToken { info: created.info.clone(), token: "(shown only in the first response)".into() };
    let response = pending.complete_redacted(&mut tx, StatusCode::CREATED, &created, &redacted).await?;
    tx.commit().await?;
    Ok(response)
}

/// The caller's token name and role (any role), so clients can adapt, e.g. a read-only console.
#[utoipa::path(get, path = "/v1/whoami", tag = "tokens", responses((status = 200, body = WhoAmI), (status = 401, body = ErrorBody)))]
async fn whoami(actor: Actor) -> Json<WhoAmI> {
    Json(WhoAmI { name: actor.name, role: actor.role })
}

/// List tokens (admin); secrets are never shown.
#[utoipa::path(get, path = "/v1/tokens", tag = "tokens",
    responses((status = 200, body = Vec<ApiToken>), (status = 403, body = ErrorBody)))]
async fn list_tokens(State(state): State<AppState>, actor: Actor) -> Result<Json<Vec<ApiToken>>, ApiError> {
    actor.require(Role::Admin)?;
    let rows: Vec<TokenRow> =
        sqlx::query_as("SELECT id, name, role, created_at, revoked_at FROM api_tokens ORDER BY created_at")
            .fetch_all(&state.db)
            .await?;
    Ok(Json(rows.into_iter().map(ApiToken::try_from).collect::<Result<_, _>>()?))
}

/// Revoke a token (admin). Revoking a revoked token changes nothing.
#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "tokens",
    params(("id" = Uuid, Path), ("Idempotency-Key" = String, Header)),
    responses((status = 200, body = ApiToken), (status = 404, body = ErrorBody)))]
async fn revoke_token(
    State(state): State<AppState>,
    actor: Actor,
    key: IdempotencyKey,
    RequestId(request_id): RequestId,
    ApiPath(raw): ApiPath<String>,
) -> Result<Response, ApiError> {
    actor.require(Role::Admin)?;
    let id: Uuid = raw.parse().map_err(|_| ApiError::NotFound(format!("token `{raw}`")))?;
    idempotency::run_once(&state, &key, &actor, &id, StatusCode::OK, async |tx| {
        let row: Option<TokenRow> = sqlx::query_as(
            "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, now()) WHERE id = $1
             RETURNING id, name, role, created_at, revoked_at",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let token = ApiToken::try_from(row.ok_or_else(|| ApiError::NotFound(format!("token `{id}`")))?)?;
        Audit {
            actor: &actor,
            action: "token.revoke",
            tenant_id: None,
            request_id: request_id.as_deref(),
            before: None,
            after: Some(json!(token)),
        }
        .append(tx)
        .await?;
        Ok(token)
    })
    .await
}

/// When the bootstrap token was revoked.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct BootstrapRevocation {
    pub revoked_at: chrono::DateTime<chrono::Utc>,
}

/// Revoke the configured bootstrap admin token (admin), once another admin
/// token exists: from then on only stored tokens are accepted. Configuring a
/// new bootstrap token is the way back in.
#[utoipa::path(delete, path = "/v1/tokens/bootstrap", tag = "tokens",
    params(("Idempotency-Key" = String, Header)),
    responses((status = 200, body = BootstrapRevocation),
        (status = 404, description = "No bootstrap token is configured", body = ErrorBody),
        (status = 409, description = "No other admin token exists yet (`last_admin`)", body = ErrorBody)))]
async fn revoke_bootstrap(
    State(state): State<AppState>,
    actor: Actor,
    key: IdempotencyKey,
    RequestId(request_id): RequestId,
) -> Result<Response, ApiError> {
    actor.require(Role::Admin)?;
    let hash = state.bootstrap_admin_hash.clone().ok_or_else(|| ApiError::NotFound("a bootstrap token".into()))?;
    idempotency::run_once(&state, &key, &actor, &"bootstrap", StatusCode::OK, async |tx| {
        let other_admin: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM api_tokens WHERE role = 'admin' AND revoked_at IS NULL)")
                .fetch_one(&mut *tx)
                .await?;
        if !other_admin {
            return Err(ApiError::conflict(
                "last_admin",
                "create another admin token first: without the bootstrap token no admin would be left",
            ));
        }
        let revoked_at: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
            "INSERT INTO bootstrap_revocations (token_hash, revoked_by) VALUES ($1, $2)
             ON CONFLICT (token_hash) DO UPDATE SET token_hash = EXCLUDED.token_hash
             RETURNING revoked_at",
        )
        .bind(&hash[..])
        .bind(&actor.name)
        .fetch_one(&mut *tx)
        .await?;
        let revocation = BootstrapRevocation { revoked_at };
        Audit {
            actor: &actor,
            action: "token.revoke_bootstrap",
            tenant_id: None,
            request_id: request_id.as_deref(),
            before: None,
            after: Some(json!(revocation)),
        }
        .append(tx)
        .await?;
        Ok(revocation)
    })
    .await
}
