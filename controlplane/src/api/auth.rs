//! Bearer-token authentication. A token maps to a role; the bootstrap admin
//! token comes from configuration, every other token from `api_tokens`, where
//! only its SHA-256 is kept.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::AppState;
use super::error::ApiError;
pub use crate::journal::Actor;

pub fn hash_token(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// A new random token: `indigo_` and 32 bytes of hex.
pub fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("indigo_{}", hex::encode(bytes))
}

impl FromRequestParts<AppState> for Actor {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or(ApiError::Unauthorized("missing bearer token (Authorization: Bearer <token>)"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(ApiError::Unauthorized("the Authorization header must be `Bearer <token>`"))?;
        let hash = hash_token(token);
        if state.bootstrap_admin_hash.as_deref() == Some(hash.as_slice()) {
            return Ok(Actor::system(Self::BOOTSTRAP_ADMIN));
        }
        let row: Option<(String, String)> =
            sqlx::query_as("SELECT name, role FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL")
                .bind(&hash)
                .fetch_optional(&state.db)
                .await?;
        let (name, role) = row.ok_or(ApiError::Unauthorized("invalid or revoked token"))?;
        let role = role.parse().map_err(|e| anyhow::anyhow!("api_tokens.role: {e}"))?;
        Ok(Actor { name, role })
    }
}
