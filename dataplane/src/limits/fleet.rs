//! The plan's request rate held for the whole fleet: every data-plane replica
//! takes its tenants' tokens from one bucket per tenant in Redis, so a tenant
//! gets its plan's rate however many replicas serve it (with a bucket per
//! replica, two pool replicas would give every tenant twice its plan).
//!
//! A replica leases a few tokens at a time and spends them locally, so busy
//! tenants cost a Redis round trip per lease, not per request. Leased tokens
//! expire unused after [`LEASE_TTL`]: a replica never hoards what another
//! could serve. When Redis cannot answer in time, the replica limits alone
//! (the caller's local bucket) rather than refuse or stall the storefront.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indigo_core::plan::Plan;
use indigo_core::tenant::TenantId;

use crate::redis_link::{RedisLink, Unreachable};

/// How long leased tokens stay spendable on this replica.
pub const LEASE_TTL: Duration = Duration::from_millis(250);
/// By default a request waits at most this long for Redis before the replica
/// limits alone.
const ANSWER_WITHIN: Duration = Duration::from_millis(50);

/// A token bucket of `rate` per second and `burst` capacity, refilled from
/// Redis's clock (so replicas' clocks do not matter). Takes up to `want`
/// tokens; answers how many it gave and, if none, how many ms until one.
const TAKE: &str = r"
local rate, burst, want = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = clock[1] * 1000 + math.floor(clock[2] / 1000)
local held = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(held[1]) or burst
local at = tonumber(held[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate / 1000)
local granted = math.min(want, math.floor(tokens))
tokens = tokens - granted
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
local wait = 0
if granted == 0 then wait = math.ceil((1 - tokens) * 1000 / rate) end
return {granted, wait}
";

#[derive(Debug, Clone, Copy)]
struct Lease {
    tokens: u32,
    expires: Instant,
}

/// Redis could not answer; the caller limits on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetUnavailable;

pub struct FleetRates {
    redis: Arc<RedisLink>,
    script: redis::Script,
    leases: Mutex<HashMap<TenantId, Lease>>,
    answer_within: Duration,
    /// [`UNKNOWN`], [`SHARED`] or [`ALONE`]: what the last answer was, so each
    /// change is logged once.
    state: AtomicU8,
}

const UNKNOWN: u8 = 0;
const SHARED: u8 = 1;
const ALONE: u8 = 2;

impl FleetRates {
    /// Rates shared through `redis`.
    pub fn new(redis: Arc<RedisLink>) -> Self {
        Self {
            redis,
            script: redis::Script::new(TAKE),
            leases: Mutex::default(),
            answer_within: ANSWER_WITHIN,
            state: AtomicU8::new(UNKNOWN),
        }
    }

    /// How long a request may wait for Redis before the replica limits alone.
    pub fn answer_within(mut self, patience: Duration) -> Self {
        self.answer_within = patience;
        self
    }

    /// Whether the last answer came from Redis (the limit holds fleet-wide).
    pub fn is_shared(&self) -> bool {
        self.state.load(Ordering::Relaxed) == SHARED
    }

    /// Takes one of the tenant's tokens: `Ok(Ok(()))` to go ahead,
    /// `Ok(Err(retry_after))` when the fleet has spent the tenant's rate.
    pub async fn take(&self, tenant: TenantId, plan: &Plan) -> Result<Result<(), Duration>, FleetUnavailable> {
        let now = Instant::now();
        {
            let mut leases = self.leases.lock().expect("lease lock");
            if let Some(lease) = leases.get_mut(&tenant)
                && lease.tokens > 0
                && lease.expires > now
            {
                lease.tokens -= 1;
                return Ok(Ok(()));
            }
        }
        let rate = plan.rate_limit.requests_per_second.max(1);
        let burst = plan.rate_limit.burst.max(1);
        let (granted, wait_ms) = self.ask(tenant, rate, burst, lease_size(rate, burst)).await?;
        if granted == 0 {
            return Ok(Err(Duration::from_millis(wait_ms.max(1))));
        }
        let mut leases = self.leases.lock().expect("lease lock");
        if leases.len() > 100_000 {
            leases.retain(|_, lease| lease.expires > now);
        }
        let lease = leases.entry(tenant).or_insert(Lease { tokens: 0, expires: now });
        if lease.expires <= now {
            lease.tokens = 0;
        }
        lease.tokens += granted - 1;
        lease.expires = now + LEASE_TTL;
        Ok(Ok(()))
    }

    async fn ask(&self, tenant: TenantId, rate: u32, burst: u32, want: u32) -> Result<(u32, u64), FleetUnavailable> {
        let mut connection = match self.redis.connection().await {
            Ok(connected) => connected.connection,
            Err(Unreachable::Waiting) => return Err(FleetUnavailable),
            Err(Unreachable::Failed(reason)) => return Err(self.unshared(&reason)),
        };
        let mut call = self.script.key(format!("indigo:rate:{tenant}"));
        call.arg(rate).arg(burst).arg(want);
        match tokio::time::timeout(self.answer_within, call.invoke_async(&mut connection)).await {
            Ok(Ok(answer)) => {
                if self.state.swap(SHARED, Ordering::Relaxed) != SHARED {
                    tracing::info!("plan rate limits are shared across replicas through Redis");
                    metrics::gauge!("indigo_dataplane_rate_limits_shared").set(1.0);
                }
                Ok(answer)
            }
            Ok(Err(error)) => {
                // A broken connection is replaced on a later request.
                self.redis.forget();
                Err(self.unshared(&error.to_string()))
            }
            Err(_) => Err(self.unshared("Redis did not answer in time")),
        }
    }

    fn unshared(&self, reason: &str) -> FleetUnavailable {
        if self.state.swap(ALONE, Ordering::Relaxed) != ALONE {
            tracing::warn!(reason, "plan rate limits are held by this replica alone until Redis answers");
            metrics::gauge!("indigo_dataplane_rate_limits_shared").set(0.0);
        }
        FleetUnavailable
    }
}

/// Tokens leased per round trip: about a twentieth of a second's rate, so a
/// lease left unspent on one replica is a small share of the tenant's rate.
fn lease_size(rate: u32, burst: u32) -> u32 {
    (rate / 20).clamp(1, 100).min(burst)
}
