//! The catalogue's reads cached in Redis (the reference design's ElastiCache),
//! shared by every replica, one namespace per tenant.
//!
//! Only reads whose answer depends on nothing but the tenant and the request's
//! parameters are cached — products, pages of the catalogue, searches — never
//! a shopper's own data. The tenant in every key is the verified token's,
//! exactly as the database's context is.
//!
//! Invalidation is O(1): each tenant has a *generation* counter, every entry
//! carries the generation it was read under, and a write to the catalogue
//! bumps the counter after its commit and before it is answered. A read fetches
//! the counter and the entry in one `MGET` and takes the entry only when the
//! two agree, so after an acknowledged write no replica serves what was read
//! before it. A reader that raced the write may still store what it read, but
//! under the old generation, which no read takes any more.
//!
//! The control plane changes a tenant's rows only inside workflows that end
//! with a new routing version (onboarding seeds the catalogue, then activates
//! the tenant; a move switches databases), so entries are also keyed by the
//! route's `routing_version`: what was read before such a change is not used
//! after it.
//!
//! Keys live under the Redis server's `run_id`, so a restarted Redis — even one
//! reloading a snapshot taken before the last bumps — starts the cache empty.
//! When Redis is away, or slow, reads go to the database. A bump that could not
//! be made is owed: this replica stops using the cache for that tenant and
//! makes the bump as soon as Redis answers; until then other replicas may serve
//! the tenant's entries for at most their TTL.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use indigo_core::api::CatalogueCacheStats;
use indigo_core::tenant::TenantId;
use sha2::{Digest, Sha256};

use crate::redis_link::{Connected, RedisLink, Unreachable};

/// How long a cache lookup may take before the read goes to the database.
const ANSWER_WITHIN: Duration = Duration::from_millis(50);
/// A tenant's generation outlives any entry read under an older one.
const GENERATION_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// The longest TTL allowed, so entries stay well inside [`GENERATION_LIFETIME`].
pub const MAX_TTL: Duration = Duration::from_secs(3600);
/// How long each hour's hit and miss counts ([`CatalogueCacheStats::counts_key`]) are kept in Redis.
const COUNTS_LIFETIME: Duration = Duration::from_secs(48 * 3600);

/// What a cached read is: the part of its key after the tenant's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry(String);

impl Entry {
    pub fn product(id: uuid::Uuid) -> Self {
        Self(format!("product:{id}"))
    }

    /// A read named by `kind` and its parameters, any length, as a fixed-size key.
    pub fn query(kind: &str, parameters: &impl serde::Serialize) -> Self {
        let canonical = serde_json::to_vec(parameters).expect("parameters serialize");
        let digest = Sha256::digest(&canonical);
        Self(format!("{kind}:{}", hex_prefix(&digest)))
    }
}

fn hex_prefix(digest: &[u8]) -> String {
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// The answer of a lookup.
pub enum Lookup {
    /// The JSON body stored for this read, current for the tenant's generation.
    Hit(Bytes),
    /// Not there (or stale): read the database, then [`CatalogueCache::store`].
    Miss(Slot),
    /// Not usable now (Redis away or slow, or a bump owed): read the database only.
    Bypass,
}

/// Where a miss's answer goes: its key under the generation it was looked up in.
pub struct Slot {
    key: String,
    generation: String,
    connection: Connected,
}

/// Hits and misses of one tenant not yet added to Redis's hourly counts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub hits: u64,
    pub misses: u64,
}

pub struct CatalogueCache {
    redis: Arc<RedisLink>,
    ttl: Duration,
    answer_within: Duration,
    counts: Mutex<HashMap<TenantId, Counts>>,
    owed_bumps: Mutex<HashSet<TenantId>>,
    /// [`UNKNOWN`], [`SERVING`] or [`AWAY`], so each change is logged once.
    state: AtomicU8,
}

const UNKNOWN: u8 = 0;
const SERVING: u8 = 1;
const AWAY: u8 = 2;

impl CatalogueCache {
    /// A cache in `redis` whose entries live `ttl` (at most [`MAX_TTL`]).
    pub fn new(redis: Arc<RedisLink>, ttl: Duration) -> Self {
        Self {
            redis,
            ttl: ttl.min(MAX_TTL),
            answer_within: ANSWER_WITHIN,
            counts: Mutex::default(),
            owed_bumps: Mutex::default(),
            state: AtomicU8::new(UNKNOWN),
        }
    }

    /// How long a lookup may wait for Redis before the read goes to the database.
    pub fn answer_within(mut self, patience: Duration) -> Self {
        self.answer_within = patience;
        self
    }

    /// The entry of `tenant`'s read as routed at `routing_version`.
    pub async fn lookup(&self, tenant: TenantId, routing_version: i64, entry: &Entry) -> Lookup {
        if self.owed_bumps.lock().expect("owed lock").contains(&tenant) {
            return self.bypass();
        }
        let Some(connected) = self.connection().await else {
            return self.bypass();
        };
        let namespace = namespace(tenant, &connected.server_run);
        let key = format!("{namespace}{routing_version}:{}", entry.0);
        let mut connection = connected.connection.clone();
        let mut mget = redis::cmd("MGET");
        mget.arg(format!("{namespace}generation")).arg(&key);
        let asked = mget.query_async(&mut connection);
        let (generation, stored): (Option<String>, Option<Vec<u8>>) =
            match tokio::time::timeout(self.answer_within, asked).await {
                Ok(Ok(answer)) => answer,
                Ok(Err(error)) => {
                    self.redis.forget();
                    self.away(&error.to_string());
                    return self.bypass();
                }
                Err(_) => {
                    self.away("Redis did not answer in time");
                    return self.bypass();
                }
            };
        self.serving();
        let generation = generation.unwrap_or_else(|| "0".to_owned());
        let current = stored.and_then(|stored| {
            let (stored_generation, body) = split_entry(&stored)?;
            (stored_generation == generation.as_bytes()).then(|| Bytes::copy_from_slice(body))
        });
        let mut counts = self.counts.lock().expect("counts lock");
        let counts = counts.entry(tenant).or_default();
        match current {
            Some(body) => {
                counts.hits += 1;
                metrics::counter!("indigo_dataplane_catalogue_cache_total", "outcome" => "hit").increment(1);
                Lookup::Hit(body)
            }
            None => {
                counts.misses += 1;
                metrics::counter!("indigo_dataplane_catalogue_cache_total", "outcome" => "miss").increment(1);
                Lookup::Miss(Slot { key, generation, connection: connected })
            }
        }
    }

    /// Keeps what a miss read from the database. Sent without waiting for the
    /// answer: the response does not depend on it.
    pub fn store(&self, slot: Slot, body: &[u8]) {
        let mut value = Vec::with_capacity(slot.generation.len() + 1 + body.len());
        value.extend_from_slice(slot.generation.as_bytes());
        value.push(b'\n');
        value.extend_from_slice(body);
        let ttl = self.ttl.as_millis().max(1) as u64;
        let mut connection = slot.connection.connection;
        tokio::spawn(async move {
            let stored: Result<(), _> =
                redis::cmd("SET").arg(&slot.key).arg(value).arg("PX").arg(ttl).query_async(&mut connection).await;
            if let Err(error) = stored {
                tracing::debug!(%error, "a catalogue cache entry was not stored");
            }
        });
    }

    /// The tenant's catalogue changed (and the change is committed): no replica
    /// may serve an entry read before it. Call before answering the write.
    pub async fn changed(&self, tenant: TenantId) {
        if let Err(reason) = self.bump(tenant).await {
            tracing::warn!(%tenant, reason, "the catalogue cache could not be told of a write; this replica bypasses it for the tenant until it can");
            self.owed_bumps.lock().expect("owed lock").insert(tenant);
        }
    }

    async fn bump(&self, tenant: TenantId) -> Result<(), String> {
        let connected = match self.redis.connection_awaiting_reconnect().await {
            Ok(connected) => connected,
            Err(Unreachable::Waiting) => return Err("Redis is away".into()),
            Err(Unreachable::Failed(reason)) => return Err(reason),
        };
        let generation = format!("{}generation", namespace(tenant, &connected.server_run));
        let mut connection = connected.connection;
        let mut bump = redis::pipe();
        bump.atomic()
            .incr(&generation, 1)
            .ignore()
            .pexpire(&generation, GENERATION_LIFETIME.as_millis() as i64)
            .ignore();
        match tokio::time::timeout(self.answer_within.max(Duration::from_secs(1)), bump.query_async(&mut connection))
            .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => {
                self.redis.forget();
                Err(error.to_string())
            }
            Err(_) => Err("Redis did not answer in time".into()),
        }
    }

    /// Makes the bumps still owed and adds the hits and misses counted since
    /// the last call to each tenant's hourly counts. Run every few seconds.
    pub async fn settle(&self) {
        let owed: Vec<TenantId> = self.owed_bumps.lock().expect("owed lock").iter().copied().collect();
        for tenant in owed {
            if self.bump(tenant).await.is_ok() {
                self.owed_bumps.lock().expect("owed lock").remove(&tenant);
                tracing::info!(%tenant, "the catalogue cache was told of the tenant's write; it is used again");
            }
        }
        let counts = std::mem::take(&mut *self.counts.lock().expect("counts lock"));
        if counts.is_empty() {
            return;
        }
        let now = chrono::Utc::now();
        let mut add = redis::pipe();
        for (tenant, counts) in &counts {
            let key = CatalogueCacheStats::counts_key(*tenant, now);
            add.hincr(&key, "hits", counts.hits)
                .ignore()
                .hincr(&key, "misses", counts.misses)
                .ignore()
                .pexpire(&key, COUNTS_LIFETIME.as_millis() as i64)
                .ignore();
        }
        let added = match self.redis.connection().await {
            Ok(connected) => {
                let mut connection = connected.connection;
                tokio::time::timeout(Duration::from_secs(1), add.query_async::<()>(&mut connection)).await.ok()
            }
            Err(_) => None,
        };
        if !matches!(added, Some(Ok(()))) {
            // Kept for the next try rather than lost.
            let mut pending = self.counts.lock().expect("counts lock");
            for (tenant, counts) in counts {
                let kept = pending.entry(tenant).or_default();
                kept.hits += counts.hits;
                kept.misses += counts.misses;
            }
        }
    }

    async fn connection(&self) -> Option<Connected> {
        match self.redis.connection().await {
            Ok(connected) => Some(connected),
            Err(Unreachable::Waiting) => None,
            Err(Unreachable::Failed(reason)) => {
                self.away(&reason);
                None
            }
        }
    }

    fn bypass(&self) -> Lookup {
        metrics::counter!("indigo_dataplane_catalogue_cache_total", "outcome" => "bypass").increment(1);
        Lookup::Bypass
    }

    fn serving(&self) {
        if self.state.swap(SERVING, Ordering::Relaxed) != SERVING {
            tracing::info!("catalogue reads are cached in Redis");
        }
    }

    fn away(&self, reason: &str) {
        if self.state.swap(AWAY, Ordering::Relaxed) != AWAY {
            tracing::warn!(reason, "catalogue reads go to the database until Redis answers");
        }
    }
}

/// Settles the cache's owed bumps and counts every `period`, until aborted.
pub async fn settle_forever(cache: Arc<CatalogueCache>, period: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        cache.settle().await;
    }
}

/// `{tenant}` is a hash tag: a tenant's keys share one slot of a Redis cluster.
fn namespace(tenant: TenantId, server_run: &str) -> String {
    format!("indigo:catalogue:{{{tenant}}}:{server_run}:")
}

fn split_entry(stored: &[u8]) -> Option<(&[u8], &[u8])> {
    let newline = stored.iter().position(|&b| b == b'\n')?;
    Some((&stored[..newline], &stored[newline + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_of_the_same_read_share_a_key_and_of_different_reads_do_not() {
        let page = |category: &str| Entry::query("page", &(20, Some(category), None::<&str>));
        assert_eq!(page("shoes"), page("shoes"));
        assert_ne!(page("shoes"), page("hats"));
        assert_ne!(Entry::query("page", &("x",)), Entry::query("search", &("x",)));
        assert_eq!(Entry::query("search", &("a".repeat(500),)).0.len(), "search:".len() + 32);
    }

    #[test]
    fn a_stored_entry_splits_into_its_generation_and_body() {
        assert_eq!(split_entry(b"12\n{\"a\":\"\\n\"}"), Some((&b"12"[..], &b"{\"a\":\"\\n\"}"[..])));
        assert_eq!(split_entry(b"no generation"), None);
    }

    #[test]
    fn every_key_of_a_tenant_carries_its_hash_tag() {
        let tenant = TenantId(uuid::Uuid::nil());
        assert!(namespace(tenant, "run").starts_with("indigo:catalogue:{00000000-0000-0000-0000-000000000000}:"));
        assert!(
            CatalogueCacheStats::counts_key(tenant, chrono::Utc::now())
                .contains("{00000000-0000-0000-0000-000000000000}")
        );
    }
}
