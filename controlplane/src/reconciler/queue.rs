//! The reconciler's work queue, in the manner of kube-runtime's scheduler:
//! each tenant is queued at most once (the earliest wake-up wins), is never
//! handed to two workers at once (a request that arrives while it runs is
//! remembered and served right after), and backs off on its own errors
//! without holding up anyone else.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use indigo_core::tenant::TenantId;
use rand::Rng;
use tokio::sync::Notify;
use tokio::time::Instant;

pub const BACKOFF_BASE: Duration = Duration::from_millis(500);
pub const BACKOFF_CAP: Duration = Duration::from_secs(300);

#[derive(Default)]
struct State {
    /// When each queued tenant is due; the heap may hold stale entries.
    due: HashMap<TenantId, Instant>,
    heap: BinaryHeap<Reverse<(Instant, TenantId)>>,
    running: HashSet<TenantId>,
    /// Asked for while running: run again as soon as it finishes.
    rerun: HashSet<TenantId>,
    failures: HashMap<TenantId, u32>,
}

#[derive(Default)]
pub struct Queue {
    state: Mutex<State>,
    wake: Notify,
}

impl Queue {
    /// Asks for `tenant` to be reconciled at `at` (or earlier if already queued earlier).
    pub fn schedule(&self, tenant: TenantId, at: Instant) {
        let mut state = self.state.lock().expect("queue lock");
        if state.running.contains(&tenant) && at <= Instant::now() {
            state.rerun.insert(tenant);
            return;
        }
        match state.due.get(&tenant) {
            Some(existing) if *existing <= at => return,
            _ => {}
        }
        state.due.insert(tenant, at);
        state.heap.push(Reverse((at, tenant)));
        drop(state);
        self.wake.notify_one();
    }

    pub fn schedule_now(&self, tenant: TenantId) {
        self.schedule(tenant, Instant::now());
    }

    /// The next tenant that is due and not running; marks it running.
    pub async fn next(&self) -> TenantId {
        loop {
            let wait = {
                let mut state = self.state.lock().expect("queue lock");
                loop {
                    let Some(Reverse((at, tenant))) = state.heap.peek().copied() else { break None };
                    if state.due.get(&tenant) != Some(&at) {
                        state.heap.pop(); // superseded by an earlier or later entry
                        continue;
                    }
                    if at > Instant::now() {
                        break Some(at);
                    }
                    state.heap.pop();
                    state.due.remove(&tenant);
                    if state.running.contains(&tenant) {
                        state.rerun.insert(tenant);
                        continue;
                    }
                    state.running.insert(tenant);
                    return tenant;
                }
            };
            match wait {
                Some(at) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {}
                        () = self.wake.notified() => {}
                    }
                }
                None => self.wake.notified().await,
            }
        }
    }

    /// Marks `tenant` done: `Ok(after)` requeues it for its next look; `Err(())`
    /// backs off exponentially (with jitter, capped) from its consecutive failures.
    pub fn finish(&self, tenant: TenantId, outcome: Result<Duration, ()>) -> Duration {
        let mut state = self.state.lock().expect("queue lock");
        state.running.remove(&tenant);
        let rerun = state.rerun.remove(&tenant);
        let delay = match outcome {
            Ok(after) => {
                state.failures.remove(&tenant);
                after
            }
            Err(()) => {
                let failures = state.failures.entry(tenant).or_insert(0);
                *failures += 1;
                backoff(*failures)
            }
        };
        drop(state);
        // A change that arrived meanwhile is served now, unless we are backing off.
        let delay = if rerun && outcome.is_ok() { Duration::ZERO } else { delay };
        self.schedule(tenant, Instant::now() + delay);
        delay
    }

    pub fn depth(&self) -> usize {
        self.state.lock().expect("queue lock").due.len()
    }

    pub fn running(&self) -> usize {
        self.state.lock().expect("queue lock").running.len()
    }

    /// Tenants whose last reconcile failed, with their consecutive failures.
    pub fn failing(&self) -> usize {
        self.state.lock().expect("queue lock").failures.len()
    }
}

/// `BACKOFF_BASE * 2^(failures-1)`, capped, with up to 20% jitter.
pub fn backoff(failures: u32) -> Duration {
    let exponential = BACKOFF_BASE.saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(20)));
    let capped = exponential.min(BACKOFF_CAP);
    let jitter = rand::rng().random_range(0.0..0.2);
    capped.mul_f64(1.0 + jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_tenant_is_queued_once_and_never_runs_twice_at_once() {
        let queue = Queue::default();
        let a = TenantId::new();
        queue.schedule_now(a);
        queue.schedule_now(a);
        assert_eq!(queue.depth(), 1);
        assert_eq!(queue.next().await, a);
        // Asked again while running: remembered, not handed out.
        queue.schedule_now(a);
        assert_eq!(queue.depth(), 0);
        assert_eq!(queue.finish(a, Ok(Duration::from_secs(60))), Duration::ZERO);
        assert_eq!(queue.next().await, a);
    }

    #[tokio::test]
    async fn failures_back_off_per_tenant_only() {
        let queue = Queue::default();
        let (sick, healthy) = (TenantId::new(), TenantId::new());
        queue.schedule_now(sick);
        assert_eq!(queue.next().await, sick);
        let first = queue.finish(sick, Err(()));
        assert_eq!(queue.next().await, sick);
        let second = queue.finish(sick, Err(()));
        assert!(second > first, "{second:?} should exceed {first:?}");
        queue.schedule_now(healthy);
        assert_eq!(queue.next().await, healthy, "the healthy tenant is not held up by the sick one");
        assert_eq!(queue.failing(), 1);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(1) >= BACKOFF_BASE && backoff(1) < BACKOFF_BASE * 2);
        assert!(backoff(3) >= BACKOFF_BASE * 4);
        assert!(backoff(50) <= BACKOFF_CAP.mul_f64(1.2));
    }
}
