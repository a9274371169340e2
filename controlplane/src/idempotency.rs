//! How long the admin API remembers an `Idempotency-Key` (the claim itself is
//! `api::idempotency`'s), and the pruning of older keys.

use sqlx::PgPool;

/// A retry within this interval (a PostgreSQL interval) replays the first
/// answer; after it, the same key is a new request. Stripe keeps keys as long.
pub const RETENTION: &str = "24 hours";

/// Deletes the keys past their retention; returns how many.
pub async fn prune(db: &PgPool) -> Result<u64, sqlx::Error> {
    let pruned = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < now() - $1::interval")
        .bind(RETENTION)
        .execute(db)
        .await?
        .rows_affected();
    Ok(pruned)
}
