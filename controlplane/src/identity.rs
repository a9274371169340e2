//! API token secrets and the data planes' own identities. A token's secret is
//! shown once; the control database keeps its SHA-256 only.

use indigo_core::tenant::TenantId;
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::config::Secret;

pub fn hash_token(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// A new random token: `indigo_` and 32 bytes of hex.
pub fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("indigo_{}", hex::encode(bytes))
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("the token name `{0}` belongs to a token that is not a data plane's")]
    NameTaken(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Gives the data plane called `name` a fresh secret (role `dataplane`, bound
/// to `tenant` when it serves that tenant only) and returns it. The identity
/// keeps its name across restarts of the control plane; its previous secret
/// stops working.
pub async fn mint_dataplane_token(db: &PgPool, name: &str, tenant: Option<TenantId>) -> Result<Secret, IdentityError> {
    let secret = generate_token();
    let minted: Option<uuid::Uuid> = sqlx::query_scalar(
        "INSERT INTO api_tokens (id, name, role, token_hash, tenant_id) VALUES ($1, $2, 'dataplane', $3, $4)
         ON CONFLICT ((lower(name))) DO UPDATE
             SET token_hash = EXCLUDED.token_hash, tenant_id = EXCLUDED.tenant_id, revoked_at = NULL
             WHERE api_tokens.role = 'dataplane'
         RETURNING id",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(name)
    .bind(hash_token(&secret))
    .bind(tenant.map(|t| t.0))
    .fetch_optional(db)
    .await?;
    minted.map(|_| Secret::new(secret)).ok_or_else(|| IdentityError::NameTaken(name.to_owned()))
}

/// Revokes the data plane called `name` (its service is gone).
pub async fn revoke_dataplane_token(db: &PgPool, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE api_tokens SET revoked_at = now() WHERE lower(name) = lower($1) AND role = 'dataplane'")
        .bind(name)
        .execute(db)
        .await?;
    Ok(())
}

/// Whether `token` is the current secret of the data plane called `name`.
pub async fn dataplane_token_current(db: &PgPool, name: &str, token: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM api_tokens WHERE lower(name) = lower($1) AND role = 'dataplane'
                        AND revoked_at IS NULL AND token_hash = $2)",
    )
    .bind(name)
    .bind(hash_token(token))
    .fetch_one(db)
    .await
}
