//! Bearer-token authentication. A token maps to a role; the bootstrap admin
//! token comes from configuration, every other token from `api_tokens`, where
//! only its SHA-256 is kept.
//!
//! Two extractors: [`Actor`], a person's (or tool's) token, which every route
//! takes and which refuses a data plane's token; and [`Caller`], for the three
//! routes a data plane needs (routing, daily calls, usage intake), which
//! accepts either. A new route is closed to data planes unless it asks.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use indigo_core::rate::TokenBucket;
use indigo_core::tenant::{Role, TenantId};

use super::AppState;
use super::error::ApiError;
pub use crate::identity::{generate_token, hash_token};
pub use crate::journal::Actor;
use crate::journal::Forbidden;

/// Who calls one of the routes that data planes use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Person(Actor),
    /// A data plane's own identity; `tenant` when it serves that tenant only.
    DataPlane {
        name: String,
        tenant: Option<TenantId>,
    },
}

impl Caller {
    /// Whether this caller may see or report for `tenant`.
    pub fn reaches(&self, tenant: TenantId) -> bool {
        match self {
            Self::Person(_) | Self::DataPlane { tenant: None, .. } => true,
            Self::DataPlane { tenant: Some(own), .. } => *own == tenant,
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)?;
        let hash = hash_token(token);
        if state.bootstrap_admin_hash.as_deref() == Some(hash.as_slice()) {
            let revoked: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM bootstrap_revocations WHERE token_hash = $1)")
                    .bind(&hash)
                    .fetch_one(&state.db)
                    .await?;
            if revoked {
                return Err(ApiError::Unauthorized("invalid or revoked token"));
            }
            state.token_rates.admit(&hash)?;
            return Ok(Self::Person(Actor::system(Actor::BOOTSTRAP_ADMIN)));
        }
        let row: Option<(uuid::Uuid, String, String, Option<uuid::Uuid>)> = sqlx::query_as(
            "SELECT id, name, role, tenant_id FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL",
        )
        .bind(&hash)
        .fetch_optional(&state.db)
        .await?;
        let (id, name, role, tenant) = row.ok_or(ApiError::Unauthorized("invalid or revoked token"))?;
        state.token_rates.admit(&hash)?;
        let role: Role = role.parse().map_err(|e| anyhow::anyhow!("api_tokens.role: {e}"))?;
        Ok(match role {
            Role::DataPlane => Self::DataPlane { name, tenant: tenant.map(TenantId) },
            role => Self::Person(Actor { name, role, token_id: Some(id) }),
        })
    }
}

impl FromRequestParts<AppState> for Actor {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        match Caller::from_request_parts(parts, state).await? {
            Caller::Person(actor) => Ok(actor),
            Caller::DataPlane { name, .. } => {
                Err(Forbidden { needed: Role::Viewer, have: Role::DataPlane, actor: name }.into())
            }
        }
    }
}

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let header = parts
        .headers
        .get(AUTHORIZATION)
        .ok_or(ApiError::Unauthorized("missing bearer token (Authorization: Bearer <token>)"))?;
    header
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(ApiError::Unauthorized("the Authorization header must be `Bearer <token>`"))
}

/// Each token's request rate on the admin API: a token bucket per token,
/// refilled at `per_second` up to twice that.
pub struct TokenRates {
    buckets: std::sync::Mutex<std::collections::HashMap<Vec<u8>, TokenBucket>>,
    per_second: f64,
}

impl TokenRates {
    pub fn new(per_second: u32) -> Self {
        Self { buckets: Default::default(), per_second: f64::from(per_second.max(1)) }
    }

    /// Admits one request of the token with hash `token`, or says when to retry.
    fn admit(&self, token: &[u8]) -> Result<(), ApiError> {
        let (now, capacity) = (std::time::Instant::now(), 2.0 * self.per_second);
        let mut buckets = self.buckets.lock().expect("token rates lock");
        // Looked up first: a token's key is copied once, not on every request.
        let bucket = match buckets.get_mut(token) {
            Some(bucket) => bucket,
            None => buckets.entry(token.to_vec()).or_insert_with(|| TokenBucket::full(capacity, now)),
        };
        bucket.take(now, self.per_second, capacity).map_err(|retry_after| ApiError::TooMany { retry_after })
    }
}
