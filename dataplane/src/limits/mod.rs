//! Plan limits and fairness, kept in memory so that no request pays a database
//! round trip for them: a token bucket per tenant (the plan's request rate), one
//! per client IP (the reference design's WAF rule), and a daily call counter.
//!
//! The tenant's rate is shared when a Redis is configured ([`fleet`]): every
//! replica draws from one bucket per tenant, and falls back to its own bucket
//! while Redis is away.
//!
//! The plan's monthly AI credits are checked before each AI call: credits the
//! control plane metered this month (shared with the daily counts), raised by
//! what this replica spent since.
//!
//! The daily counter is shared: every few seconds the control plane's metered
//! count of the tenant's day ([`Limiter::share_daily`]) raises each replica's
//! own, so the limit holds across replicas (short by at most what the others
//! served since the last share), and the day is the tenant's local day.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Datelike, Utc};
use indigo_core::api::DailyCalls;
use indigo_core::plan::{Limit, Plan};
use indigo_core::tenant::TenantId;

use crate::routing::ControlPlaneSource;

pub mod fleet;

use fleet::FleetRates;

/// The per-IP rule: 2000 requests per 5 minutes.
pub const IP_REQUESTS_PER_WINDOW: u32 = 2000;
pub const IP_WINDOW: Duration = Duration::from_secs(300);

use indigo_core::rate::TokenBucket as Bucket;

/// Why a request may not go ahead, and when it may be retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    ClientRate { retry_after: Duration },
    TenantRate { retry_after: Duration },
    DailyCalls { limit: u64, retry_after: Duration },
}

struct DailyCount {
    /// When the counted day ends: the tenant's local midnight once shared,
    /// UTC midnight until then.
    resets_at: DateTime<Utc>,
    calls: u64,
}

/// AI credits a tenant used in one UTC month.
struct MonthCredits {
    month: (i32, u32),
    used: f64,
}

pub struct Limiter {
    tenants: Mutex<HashMap<TenantId, Bucket>>,
    clients: Mutex<HashMap<IpAddr, Bucket>>,
    daily: Mutex<HashMap<TenantId, DailyCount>>,
    ai_credits: Mutex<HashMap<TenantId, MonthCredits>>,
    ip_per_second: f64,
    ip_capacity: f64,
    fleet: Option<FleetRates>,
}

impl Default for Limiter {
    fn default() -> Self {
        Self::new(IP_REQUESTS_PER_WINDOW, IP_WINDOW)
    }
}

impl Limiter {
    pub fn new(ip_requests: u32, ip_window: Duration) -> Self {
        Self {
            tenants: Mutex::default(),
            clients: Mutex::default(),
            daily: Mutex::default(),
            ai_credits: Mutex::default(),
            ip_per_second: f64::from(ip_requests) / ip_window.as_secs_f64(),
            ip_capacity: f64::from(ip_requests),
            fleet: None,
        }
    }

    /// Draws the tenants' rates from buckets every replica shares.
    pub fn sharing_rates(mut self, fleet: FleetRates) -> Self {
        self.fleet = Some(fleet);
        self
    }

    pub fn fleet(&self) -> Option<&FleetRates> {
        self.fleet.as_ref()
    }

    /// Admits one request of `tenant` from `client`, or says why not.
    pub async fn admit(&self, tenant: TenantId, plan: &Plan, client: Option<IpAddr>) -> Result<(), Refusal> {
        let now = Instant::now();
        if let Some(ip) = client {
            let mut clients = self.clients.lock().expect("limiter lock");
            if clients.len() > 100_000 {
                // Forget clients whose bucket has refilled: they would start full anyway.
                let (rate, cap) = (self.ip_per_second, self.ip_capacity);
                clients.retain(|_, b| !b.full_at(now, rate, cap));
            }
            let bucket = clients.entry(ip).or_insert(Bucket::full(self.ip_capacity, now));
            bucket
                .take(now, self.ip_per_second, self.ip_capacity)
                .map_err(|retry_after| Refusal::ClientRate { retry_after })?;
        }
        // The fleet's bucket when Redis answers, this replica's own otherwise.
        let shared = match &self.fleet {
            Some(fleet) => fleet.take(tenant, plan).await.ok(),
            None => None,
        };
        let taken = shared.unwrap_or_else(|| {
            let rate = f64::from(plan.rate_limit.requests_per_second);
            let burst = f64::from(plan.rate_limit.burst);
            let mut tenants = self.tenants.lock().expect("limiter lock");
            tenants.entry(tenant).or_insert(Bucket::full(burst, now)).take(now, rate, burst)
        });
        taken.map_err(|retry_after| Refusal::TenantRate { retry_after })?;
        let now = Utc::now();
        let mut daily = self.daily.lock().expect("limiter lock");
        let count = daily.entry(tenant).or_insert_with(|| DailyCount { resets_at: next_utc_midnight(now), calls: 0 });
        if now >= count.resets_at {
            *count = DailyCount { resets_at: next_utc_midnight(now), calls: 0 };
        }
        if let Limit::AtMost(limit) = plan.limits.api_calls_per_day
            && count.calls >= limit
        {
            let retry_after = (count.resets_at - now).to_std().unwrap_or(Duration::from_secs(1));
            return Err(Refusal::DailyCalls { limit, retry_after });
        }
        count.calls += 1;
        Ok(())
    }

    /// Takes in the control plane's count of each tenant's day and AI credits
    /// this month: a replica's count never falls below what all replicas were
    /// metered for.
    pub fn share_daily(&self, shared: &[DailyCalls]) {
        let now = Utc::now();
        {
            let mut daily = self.daily.lock().expect("limiter lock");
            for day in shared.iter().filter(|d| d.resets_at > now) {
                let count = daily.entry(day.tenant_id).or_insert(DailyCount { resets_at: day.resets_at, calls: 0 });
                let own = if count.resets_at > now { count.calls } else { 0 };
                *count = DailyCount { resets_at: day.resets_at, calls: own.max(day.calls) };
            }
        }
        let mut credits = self.ai_credits.lock().expect("limiter lock");
        for tenant in shared {
            let month = self.month_credits(&mut credits, tenant.tenant_id, now);
            month.used = month.used.max(tenant.ai_credits_this_month);
        }
    }

    /// Whether `tenant` may make an AI call: not once its plan's monthly AI
    /// credits are used up (`Err` with the plan's credits). Asked before the
    /// call, so a refused tenant costs nothing.
    pub fn admit_ai(&self, tenant: TenantId, plan: &Plan) -> Result<(), u64> {
        let Limit::AtMost(limit) = plan.limits.ai_credits else { return Ok(()) };
        let mut credits = self.ai_credits.lock().expect("limiter lock");
        let month = self.month_credits(&mut credits, tenant, Utc::now());
        if month.used >= limit as f64 { Err(limit) } else { Ok(()) }
    }

    /// Counts an AI call's credits against the tenant's month.
    pub fn spend_ai(&self, tenant: TenantId, spent: f64) {
        let mut credits = self.ai_credits.lock().expect("limiter lock");
        self.month_credits(&mut credits, tenant, Utc::now()).used += spent;
    }

    fn month_credits<'a>(
        &self,
        credits: &'a mut HashMap<TenantId, MonthCredits>,
        tenant: TenantId,
        now: DateTime<Utc>,
    ) -> &'a mut MonthCredits {
        let month = (now.year(), now.month());
        let entry = credits.entry(tenant).or_insert(MonthCredits { month, used: 0.0 });
        if entry.month != month {
            *entry = MonthCredits { month, used: 0.0 };
        }
        entry
    }
}

fn next_utc_midnight(now: DateTime<Utc>) -> DateTime<Utc> {
    (now.date_naive() + chrono::Days::new(1)).and_hms_opt(0, 0, 0).expect("midnight exists").and_utc()
}

/// Keeps `limiter`'s daily counts shared: fetches the control plane's every
/// `interval`; when it is unreachable the replica counts on alone.
pub async fn share_daily_forever(limiter: std::sync::Arc<Limiter>, source: ControlPlaneSource, interval: Duration) {
    let mut failing = false;
    loop {
        match source.daily_calls().await {
            Ok(shared) => {
                limiter.share_daily(&shared);
                failing = false;
            }
            Err(error) if !failing => {
                tracing::warn!(%error, "daily call counts unavailable; counting this replica's calls alone");
                failing = true;
            }
            Err(_) => {}
        }
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(rps: u32, burst: u32, daily: Limit) -> Plan {
        let mut plan = indigo_core::plan::PlanCatalog::parse("t", include_str!("../../../policies/plans.toml"))
            .unwrap()
            .get("starter")
            .unwrap()
            .clone();
        plan.rate_limit.requests_per_second = rps;
        plan.rate_limit.burst = burst;
        plan.limits.api_calls_per_day = daily;
        plan
    }

    #[tokio::test]
    async fn tenant_bucket_allows_the_burst_then_refuses() {
        let limiter = Limiter::default();
        let tenant = TenantId::new();
        let plan = plan(1, 3, Limit::Unlimited);
        for _ in 0..3 {
            limiter.admit(tenant, &plan, None).await.unwrap();
        }
        assert!(matches!(limiter.admit(tenant, &plan, None).await, Err(Refusal::TenantRate { .. })));
        // Another tenant is not affected.
        limiter.admit(TenantId::new(), &plan, None).await.unwrap();
    }

    #[tokio::test]
    async fn client_ip_rule_applies_across_tenants() {
        let limiter = Limiter::new(2, Duration::from_secs(300));
        let plan = plan(100, 100, Limit::Unlimited);
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        limiter.admit(TenantId::new(), &plan, Some(ip)).await.unwrap();
        limiter.admit(TenantId::new(), &plan, Some(ip)).await.unwrap();
        assert!(matches!(limiter.admit(TenantId::new(), &plan, Some(ip)).await, Err(Refusal::ClientRate { .. })));
        limiter.admit(TenantId::new(), &plan, Some("10.9.9.9".parse().unwrap())).await.unwrap();
    }

    #[tokio::test]
    async fn shared_counts_raise_a_replicas_own_and_move_its_day_to_the_tenants() {
        let limiter = Limiter::default();
        let tenant = TenantId::new();
        let plan = plan(1000, 1000, Limit::AtMost(10));
        limiter.admit(tenant, &plan, None).await.unwrap();
        // The other replicas served 8 more: 9 in all, one call left.
        let resets_at = Utc::now() + chrono::Duration::hours(3);
        limiter.share_daily(&[DailyCalls { tenant_id: tenant, calls: 9, resets_at, ai_credits_this_month: 0.0 }]);
        limiter.admit(tenant, &plan, None).await.unwrap();
        match limiter.admit(tenant, &plan, None).await {
            Err(Refusal::DailyCalls { limit: 10, retry_after }) => {
                assert!(
                    retry_after > Duration::from_secs(3 * 3600 - 60) && retry_after <= Duration::from_secs(3 * 3600)
                );
            }
            other => panic!("expected the daily limit until the tenant's midnight, got {other:?}"),
        }
        // A lower shared count (lagging metering) never lowers the replica's own.
        limiter.share_daily(&[DailyCalls { tenant_id: tenant, calls: 2, resets_at, ai_credits_this_month: 0.0 }]);
        assert!(matches!(limiter.admit(tenant, &plan, None).await, Err(Refusal::DailyCalls { .. })));
        // A day already over is ignored.
        let other = TenantId::new();
        limiter.share_daily(&[DailyCalls {
            tenant_id: other,
            calls: 100,
            resets_at: Utc::now() - chrono::Duration::seconds(1),
            ai_credits_this_month: 0.0,
        }]);
        limiter.admit(other, &plan, None).await.unwrap();
    }

    #[test]
    fn ai_calls_stop_once_the_months_credits_are_used_whichever_replica_spent_them() {
        let limiter = Limiter::default();
        let tenant = TenantId::new();
        let mut plan = plan(1000, 1000, Limit::Unlimited);
        plan.limits.ai_credits = Limit::AtMost(50);
        limiter.admit_ai(tenant, &plan).unwrap();
        // The fleet used 49.5 this month; this replica spends 0.4, then 0.2.
        let resets_at = Utc::now() + chrono::Duration::hours(3);
        limiter.share_daily(&[DailyCalls { tenant_id: tenant, calls: 0, resets_at, ai_credits_this_month: 49.5 }]);
        limiter.spend_ai(tenant, 0.4);
        limiter.admit_ai(tenant, &plan).unwrap();
        limiter.spend_ai(tenant, 0.2);
        assert_eq!(limiter.admit_ai(tenant, &plan), Err(50));
        // Another tenant, and an unlimited plan, are not affected.
        limiter.admit_ai(TenantId::new(), &plan).unwrap();
        plan.limits.ai_credits = Limit::Unlimited;
        limiter.admit_ai(tenant, &plan).unwrap();
    }

    #[tokio::test]
    async fn daily_calls_stop_at_the_limit() {
        let limiter = Limiter::default();
        let tenant = TenantId::new();
        let plan = plan(1000, 1000, Limit::AtMost(5));
        for _ in 0..5 {
            limiter.admit(tenant, &plan, None).await.unwrap();
        }
        match limiter.admit(tenant, &plan, None).await {
            Err(Refusal::DailyCalls { limit: 5, retry_after }) => assert!(retry_after <= Duration::from_secs(86_400)),
            other => panic!("expected the daily limit, got {other:?}"),
        }
    }
}
