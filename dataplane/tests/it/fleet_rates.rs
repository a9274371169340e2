//! A tenant's plan rate held across data-plane replicas through a real Redis:
//! two replicas together admit what one bucket allows, not twice that, and a
//! replica whose Redis goes away limits alone until it is back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use indigo_core::plan::{Limit, Plan, PlanCatalog};
use indigo_core::tenant::TenantId;
use indigo_dataplane::limits::fleet::FleetRates;
use indigo_dataplane::limits::{Limiter, Refusal};
use indigo_dataplane::redis_link::RedisLink;
use indigo_e2e::{Process, free_port, redis_url};

const RATE: u32 = 10;
const BURST: u32 = 20;

fn plan() -> Plan {
    let catalog = PlanCatalog::parse("plans.toml", include_str!("../../../policies/plans.toml")).unwrap();
    let mut plan = catalog.get("starter").unwrap().clone();
    plan.rate_limit.requests_per_second = RATE;
    plan.rate_limit.burst = BURST;
    plan.limits.api_calls_per_day = Limit::Unlimited;
    plan
}

/// A replica's limiter. It waits longer for Redis than in production, so that
/// a busy test machine does not turn a slow answer into limiting alone.
fn replica(url: &str) -> Limiter {
    Limiter::default()
        .sharing_rates(FleetRates::new(Arc::new(RedisLink::new(url).unwrap())).answer_within(Duration::from_secs(2)))
}

/// Sends `requests` of one tenant, alternating between `replicas`, as fast as
/// they are answered; returns how many were admitted and how long it took.
async fn admitted(replicas: &[&Limiter], tenant: TenantId, requests: usize) -> (u32, Duration) {
    let plan = plan();
    let started = Instant::now();
    let mut admitted = 0;
    for n in 0..requests {
        match replicas[n % replicas.len()].admit(tenant, &plan, None).await {
            Ok(()) => admitted += 1,
            Err(Refusal::TenantRate { retry_after }) => assert!(retry_after <= Duration::from_secs(1)),
            Err(other) => panic!("only the tenant rate should refuse here: {other:?}"),
        }
    }
    (admitted, started.elapsed())
}

/// At most the burst plus what the rate refilled meanwhile (and one token
/// being refilled at the start).
fn allowed(elapsed: Duration) -> u32 {
    BURST + (elapsed.as_secs_f64() * f64::from(RATE)).ceil() as u32 + 1
}

#[tokio::test]
async fn two_replicas_admit_one_buckets_worth_not_twice() {
    let url = redis_url();
    let (a, b) = (replica(&url), replica(&url));
    let (shared, elapsed) = admitted(&[&a, &b], TenantId::new(), 200).await;
    for limiter in [&a, &b] {
        assert!(
            limiter.fleet().unwrap().is_shared(),
            "Redis is not reachable at {url}; the tests need it (.ci/run starts it)"
        );
    }
    assert!(shared >= BURST, "the burst is available: {shared} admitted");
    assert!(shared <= allowed(elapsed), "{shared} admitted in {elapsed:?} across two replicas");

    // The same traffic on replicas that limit alone: each gives the whole burst.
    let (alone_a, alone_b) = (Limiter::default(), Limiter::default());
    let (alone, _) = admitted(&[&alone_a, &alone_b], TenantId::new(), 200).await;
    assert!(alone >= 2 * BURST, "two lone replicas admit a burst each: {alone}");
    assert!(shared < alone, "shared {shared} against alone {alone}");
}

#[tokio::test]
async fn a_replica_limits_alone_while_its_redis_is_away_and_shares_again_when_back() {
    let port = free_port().unwrap();
    let url = format!("redis://127.0.0.1:{port}");
    let limiter = replica(&url);
    let fleet = limiter.fleet().unwrap();

    // No Redis: the storefront is not refused for it; the replica's own bucket holds the plan.
    let (alone, elapsed) = admitted(&[&limiter], TenantId::new(), 100).await;
    assert!(!fleet.is_shared());
    assert!((BURST..=allowed(elapsed)).contains(&alone), "{alone} admitted alone in {elapsed:?}");

    let mut command = std::process::Command::new("redis-server");
    command.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
    let mut redis = Process::spawn(command).expect("redis-server is installed (.ci/run installs it)");
    redis.wait_for_line("Ready to accept connections", Duration::from_secs(10)).unwrap();
    // Reconnects are tried at most once a second.
    let tenant = TenantId::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fleet.is_shared() {
        assert!(Instant::now() < deadline, "the replica never shared its rates again once Redis was back");
        let _ = limiter.admit(tenant, &plan(), None).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (shared, elapsed) = admitted(&[&limiter, &replica(&url)], TenantId::new(), 100).await;
    assert!((BURST..=allowed(elapsed)).contains(&shared), "{shared} admitted shared in {elapsed:?}");

    redis.signal_and_wait("KILL", Duration::from_secs(5)).unwrap();
    let (alone, elapsed) = admitted(&[&limiter], TenantId::new(), 100).await;
    assert!(!fleet.is_shared(), "Redis is gone");
    assert!((BURST..=allowed(elapsed)).contains(&alone), "{alone} admitted alone again in {elapsed:?}");
}
