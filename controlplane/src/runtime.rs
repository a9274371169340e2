//! What the control plane's long-running loops share (the reconciler, the
//! workflow engine): exponential backoff with jitter, a jittered period, a
//! LISTEN on a NOTIFY channel that reconnects by itself, and a singleton lock
//! for work that one replica at a time should do.

use std::time::Duration;

use rand::Rng;
use sqlx::PgPool;
use sqlx::postgres::PgListener;

/// The pause after the `failures`-th failure in a row: `base * 2^(failures-1)`,
/// capped at `cap`, then stretched by up to 20% at random so that many things
/// failing together do not retry together.
pub fn backoff(base: Duration, cap: Duration, failures: u32) -> Duration {
    let exponential = base.saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(20)));
    exponential.min(cap).mul_f64(1.0 + rand::rng().random_range(0.0..0.2))
}

/// `base` ± 10%: periodic work on several replicas spreads out.
pub fn jittered(base: Duration) -> Duration {
    base.mul_f64(rand::rng().random_range(0.9..1.1))
}

/// Runs `work` unless another session (another replica) is running work of
/// the same `name`: `Ok(None)` then, and `work` is not started. The lock is a
/// session advisory lock, released when the work ends or its connection dies.
pub async fn as_singleton<T, E: From<sqlx::Error>>(
    db: &PgPool,
    name: &str,
    work: impl Future<Output = Result<T, E>>,
) -> Result<Option<T>, E> {
    let Some(lock) = crate::db::AdvisoryLock::try_acquire(db, name.to_owned()).await? else { return Ok(None) };
    let result = work.await;
    lock.release().await;
    result.map(Some)
}

/// What [`Notifications::recv`] hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notified {
    /// Listening (again): anything sent while not listening was missed, so
    /// the caller catches up by looking at everything once.
    Listening,
    /// One notification's payload.
    Payload(String),
}

/// A LISTEN on one channel that survives a lost connection: it reconnects a
/// second later and says so, rather than failing its caller.
pub struct Notifications {
    db: PgPool,
    channel: &'static str,
    listener: Option<PgListener>,
}

impl Notifications {
    pub fn new(db: PgPool, channel: &'static str) -> Self {
        Self { db, channel, listener: None }
    }

    /// The next notification, or [`Notified::Listening`] after (re)connecting.
    /// Safe to cancel (e.g. in a `select!`): a later call picks up where it was.
    pub async fn recv(&mut self) -> Notified {
        loop {
            match &mut self.listener {
                Some(listener) => match listener.recv().await {
                    Ok(notification) => return Notified::Payload(notification.payload().to_owned()),
                    Err(error) => {
                        tracing::warn!(channel = self.channel, %error, "lost the notification connection; reconnecting");
                        self.listener = None;
                    }
                },
                None => match self.listen().await {
                    Ok(listener) => {
                        self.listener = Some(listener);
                        return Notified::Listening;
                    }
                    Err(error) => {
                        tracing::warn!(channel = self.channel, %error, "cannot listen for notifications; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                },
            }
        }
    }

    async fn listen(&self) -> Result<PgListener, sqlx::Error> {
        let mut listener = PgListener::connect_with(&self.db).await?;
        listener.listen(self.channel).await?;
        Ok(listener)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let (base, cap) = (Duration::from_millis(500), Duration::from_secs(300));
        assert!(backoff(base, cap, 1) >= base && backoff(base, cap, 1) < base * 2);
        assert!(backoff(base, cap, 3) >= base * 4);
        assert!(backoff(base, cap, 50) <= cap.mul_f64(1.2));
    }
}
