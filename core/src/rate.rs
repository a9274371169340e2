//! A token bucket: the request rates both APIs hold callers to.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A bucket holding `capacity` tokens at `now`.
    pub fn full(capacity: f64, now: Instant) -> Self {
        Self { tokens: capacity, updated: now }
    }

    /// Whether it would be full at `now`: a full bucket says nothing a new
    /// one would not, so a map of them can forget it.
    pub fn full_at(&self, now: Instant, per_second: f64, capacity: f64) -> bool {
        self.tokens + now.saturating_duration_since(self.updated).as_secs_f64() * per_second >= capacity
    }

    /// Takes one token, refilled at `per_second` up to `capacity`; on refusal
    /// says how long until one is there.
    pub fn take(&mut self, now: Instant, per_second: f64, capacity: f64) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * per_second).min(capacity);
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / per_second))
        }
    }
}
