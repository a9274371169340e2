//! `Idempotency-Key` handling. The key is claimed by the first statement of the
//! mutation's own transaction, so a concurrent retry waits on it and then
//! replays the stored response; a rolled-back attempt leaves no trace. Keys
//! are the caller's own (another caller's same key is another request) and
//! live for [`idempotency::RETENTION`](crate::idempotency::RETENTION).

use axum::Json;
use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;

use super::AppState;
use super::auth::Actor;
use super::error::ApiError;

pub const HEADER: &str = "idempotency-key";

/// The key of a mutating request, and what the request was for (method + path).
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    key: String,
    target: String,
}

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let raw = parts.headers.get(HEADER).ok_or_else(|| {
            ApiError::bad_request(
                "idempotency_key_required",
                "this request changes state and needs an Idempotency-Key header (any unique string, e.g. a UUID)",
            )
        })?;
        let key = raw
            .to_str()
            .ok()
            .filter(|k| (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_idempotency_key",
                    "Idempotency-Key must be 1 to 255 visible ASCII characters",
                )
            })?;
        Ok(Self { key: key.to_owned(), target: format!("{} {}", parts.method, parts.uri.path()) })
    }
}

/// A claimed key: either this request is new, or here is the first one's answer.
pub enum Claim {
    Fresh(Pending),
    Replay(Response),
}

/// A fresh claim that still needs its response recorded.
pub struct Pending {
    actor: String,
    key: String,
    fingerprint: Vec<u8>,
}

impl IdempotencyKey {
    /// Claims the key inside `tx`, which must be the mutation's transaction.
    pub async fn claim(&self, tx: &mut PgConnection, actor: &Actor, body: &impl Serialize) -> Result<Claim, ApiError> {
        let fingerprint = self.fingerprint(body)?;
        // Blocks while another transaction holds the same key uncommitted. A
        // key past its retention is claimed afresh, as if it had been pruned.
        let claimed = sqlx::query(
            "INSERT INTO idempotency_keys (actor, key, fingerprint, status_code, response)
             VALUES ($1, $2, $3, 0, 'null')
             ON CONFLICT (actor, key) DO UPDATE
                 SET fingerprint = EXCLUDED.fingerprint, status_code = 0, response = 'null', created_at = now()
                 WHERE idempotency_keys.created_at < now() - $4::interval",
        )
        .bind(&actor.name)
        .bind(&self.key)
        .bind(&fingerprint)
        .bind(crate::idempotency::RETENTION)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if claimed == 1 {
            return Ok(Claim::Fresh(Pending { actor: actor.name.clone(), key: self.key.clone(), fingerprint }));
        }
        let (stored, status, response): (Vec<u8>, i16, serde_json::Value) = sqlx::query_as(
            "SELECT fingerprint, status_code, response FROM idempotency_keys WHERE actor = $1 AND key = $2",
        )
        .bind(&actor.name)
        .bind(&self.key)
        .fetch_one(&mut *tx)
        .await?;
        if stored != fingerprint {
            return Err(ApiError::conflict(
                "idempotency_key_reused",
                "this Idempotency-Key was already used for a different request",
            ));
        }
        let status = u16::try_from(status)
            .ok()
            .and_then(|s| StatusCode::from_u16(s).ok())
            .ok_or_else(|| anyhow::anyhow!("stored idempotent response has status {status}"))?;
        let mut replay = (status, Json(response)).into_response();
        replay.headers_mut().insert("idempotent-replayed", "true".parse().expect("static header value"));
        Ok(Claim::Replay(replay))
    }

    fn fingerprint(&self, body: &impl Serialize) -> Result<Vec<u8>, ApiError> {
        let body = serde_json::to_vec(body).map_err(anyhow::Error::from)?;
        let mut hasher = Sha256::new();
        hasher.update(self.target.as_bytes());
        hasher.update([0]);
        hasher.update(&body);
        Ok(hasher.finalize().to_vec())
    }
}

impl Pending {
    /// Stores the response that a retry with this key will get, and returns it.
    pub async fn complete(
        self,
        tx: &mut PgConnection,
        status: StatusCode,
        body: &impl Serialize,
    ) -> Result<Response, ApiError> {
        let value = serde_json::to_value(body).map_err(anyhow::Error::from)?;
        self.store(tx, status, &value).await?;
        Ok((status, Json(value)).into_response())
    }

    /// Like [`Pending::complete`], but a retry gets `stored` instead: for answers
    /// holding a secret that must be shown once and never kept.
    pub async fn complete_redacted(
        self,
        tx: &mut PgConnection,
        status: StatusCode,
        shown: &impl Serialize,
        stored: &impl Serialize,
    ) -> Result<Response, ApiError> {
        let stored = serde_json::to_value(stored).map_err(anyhow::Error::from)?;
        self.store(tx, status, &stored).await?;
        Ok((status, Json(serde_json::to_value(shown).map_err(anyhow::Error::from)?)).into_response())
    }

    async fn store(
        self,
        tx: &mut PgConnection,
        status: StatusCode,
        response: &serde_json::Value,
    ) -> Result<(), ApiError> {
        sqlx::query(
            "UPDATE idempotency_keys SET status_code = $4, response = $5
             WHERE actor = $1 AND key = $2 AND fingerprint = $3",
        )
        .bind(&self.actor)
        .bind(&self.key)
        .bind(&self.fingerprint)
        .bind(i16::try_from(status.as_u16()).unwrap_or(500))
        .bind(response)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }
}

/// Runs `mutation` exactly once per key: in one transaction with the key's claim,
/// answering `status` and its result, or replaying the first answer on a retry.
/// `request` is what identifies the request besides its method and path.
pub async fn run_once<T: Serialize>(
    state: &AppState,
    key: &IdempotencyKey,
    actor: &Actor,
    request: &impl Serialize,
    status: StatusCode,
    mutation: impl AsyncFnOnce(&mut PgConnection) -> Result<T, ApiError>,
) -> Result<Response, ApiError> {
    let mut tx = state.db.begin().await?;
    let pending = match key.claim(&mut tx, actor, request).await? {
        Claim::Replay(response) => return Ok(response),
        Claim::Fresh(pending) => pending,
    };
    let result = mutation(&mut tx).await?;
    let response = pending.complete(&mut tx, status, &result).await?;
    tx.commit().await?;
    Ok(response)
}
