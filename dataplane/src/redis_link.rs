//! The replica's one connection to the fleet's Redis (ElastiCache in the
//! reference design), shared by what uses it: plan rates and the catalogue
//! cache. A request never waits for a reconnect: while Redis is away callers
//! hear so at once and do without it, and one of them tries again at most
//! every [`RECONNECT_EVERY`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;

/// While Redis is away, a reconnect is tried at most this often.
const RECONNECT_EVERY: Duration = Duration::from_secs(1);

/// A live connection and which run of the server it reaches.
#[derive(Clone)]
pub struct Connected {
    pub connection: MultiplexedConnection,
    /// The server's `run_id`, new at every start of Redis. Data keyed under it
    /// cannot outlive a restart, even one that reloads an older snapshot.
    pub server_run: Arc<str>,
}

/// Why there is no connection to use now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unreachable {
    /// Redis was away on the last try, or another request is reconnecting.
    Waiting,
    /// This call tried to reconnect and could not.
    Failed(String),
}

pub struct RedisLink {
    client: redis::Client,
    connection: Mutex<Option<Connected>>,
    /// When a reconnect may next be tried; held while one request reconnects.
    next_reconnect: tokio::sync::Mutex<Instant>,
}

impl RedisLink {
    /// A link to the Redis at `url`; connects on first use.
    pub fn new(url: &str) -> Result<Self, redis::RedisError> {
        Ok(Self {
            client: redis::Client::open(url)?,
            connection: Mutex::default(),
            next_reconnect: tokio::sync::Mutex::new(Instant::now()),
        })
    }

    /// The connection, without waiting for a reconnect another request is making.
    pub async fn connection(&self) -> Result<Connected, Unreachable> {
        self.connect(false).await
    }

    /// The connection, after the reconnect another request may be making:
    /// for work that is owed (an invalidation), not for a read that can do without.
    pub async fn connection_awaiting_reconnect(&self) -> Result<Connected, Unreachable> {
        self.connect(true).await
    }

    async fn connect(&self, await_reconnect: bool) -> Result<Connected, Unreachable> {
        if let Some(connected) = self.current() {
            return Ok(connected);
        }
        let mut next_reconnect = if await_reconnect {
            self.next_reconnect.lock().await
        } else {
            self.next_reconnect.try_lock().map_err(|_| Unreachable::Waiting)?
        };
        // Made by the request that held the lock meanwhile.
        if let Some(connected) = self.current() {
            return Ok(connected);
        }
        let now = Instant::now();
        if now < *next_reconnect {
            return Err(Unreachable::Waiting);
        }
        *next_reconnect = now + RECONNECT_EVERY;
        let connected = tokio::time::timeout(RECONNECT_EVERY, async {
            let mut connection = self.client.get_multiplexed_async_connection().await?;
            let info: redis::InfoDict = redis::cmd("INFO").arg("server").query_async(&mut connection).await?;
            let server_run: String = info.get("run_id").unwrap_or_default();
            Ok::<_, redis::RedisError>(Connected { connection, server_run: server_run.into() })
        })
        .await;
        match connected {
            Ok(Ok(connected)) => {
                *self.connection.lock().expect("connection lock") = Some(connected.clone());
                Ok(connected)
            }
            Ok(Err(error)) => Err(Unreachable::Failed(format!("cannot connect to Redis: {error}"))),
            Err(_) => Err(Unreachable::Failed("cannot connect to Redis: timed out".into())),
        }
    }

    fn current(&self) -> Option<Connected> {
        self.connection.lock().expect("connection lock").clone()
    }

    /// Drops a connection that failed; a later call connects again.
    pub fn forget(&self) {
        self.connection.lock().expect("connection lock").take();
    }
}
