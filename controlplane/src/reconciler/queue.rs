//! The reconciler's work queue, in the manner of kube-runtime's scheduler:
//! each tenant is queued at most once (the earliest wake-up wins), is never
//! handed to two workers at once (a request that arrives while it runs is
//! remembered and served right after), and counts its own failures in a row,
//! so that it backs off (as the caller's error policy says) without holding up
//! anyone else.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use indigo_core::tenant::TenantId;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::Requeue;

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

    /// Marks `tenant` done and queues its next look: `Ok(requeue)` after a
    /// success (its failures forgotten), as the reconcile said; `Err(policy)`
    /// after a failure, waiting what `policy` says for this many failures in a
    /// row. Returns the wait, `None` when it waits for a change.
    pub fn finish(&self, tenant: TenantId, outcome: Result<Requeue, &dyn Fn(u32) -> Duration>) -> Option<Duration> {
        let mut state = self.state.lock().expect("queue lock");
        state.running.remove(&tenant);
        let rerun = state.rerun.remove(&tenant);
        let delay = match outcome {
            Ok(requeue) => {
                state.failures.remove(&tenant);
                match requeue {
                    // A change that arrived meanwhile is served now.
                    _ if rerun => Some(Duration::ZERO),
                    Requeue::After(after) => Some(after),
                    Requeue::AwaitChange => None,
                }
            }
            Err(policy) => {
                let failures = state.failures.entry(tenant).or_insert(0);
                *failures += 1;
                Some(policy(*failures))
            }
        };
        drop(state);
        if let Some(delay) = delay {
            self.schedule(tenant, Instant::now() + delay);
        }
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
        assert_eq!(queue.finish(a, Ok(Requeue::After(Duration::from_secs(60)))), Some(Duration::ZERO));
        assert_eq!(queue.next().await, a);
        // Finished for good: nothing queued until something asks again.
        assert_eq!(queue.finish(a, Ok(Requeue::AwaitChange)), None);
        assert_eq!(queue.depth(), 0);
        queue.schedule_now(a);
        assert_eq!(queue.next().await, a);
    }

    #[tokio::test]
    async fn failures_back_off_per_tenant_only() {
        let queue = Queue::default();
        let (sick, healthy) = (TenantId::new(), TenantId::new());
        queue.schedule_now(sick);
        assert_eq!(queue.next().await, sick);
        let policy = |failures| Duration::from_millis(100) * failures;
        let first = queue.finish(sick, Err(&policy)).unwrap();
        assert_eq!(first, Duration::from_millis(100));
        assert_eq!(queue.next().await, sick);
        let second = queue.finish(sick, Err(&policy)).unwrap();
        assert!(second > first, "{second:?} should exceed {first:?}");
        queue.schedule_now(healthy);
        assert_eq!(queue.next().await, healthy, "the healthy tenant is not held up by the sick one");
        assert_eq!(queue.failing(), 1);
    }
}
