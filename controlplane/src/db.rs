//! The control database: connecting, creating it when missing, migrating it.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

/// The control DB's migrations, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/control");

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database URL is invalid: {0}")]
    Url(sqlx::Error),
    #[error("cannot reach PostgreSQL at {target}: {source}")]
    Connect { target: String, source: sqlx::Error },
    #[error("cannot create database `{name}`: {source}")]
    Create { name: String, source: sqlx::Error },
    #[error("migrating the control database failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

fn options(url: &str) -> Result<PgConnectOptions, DbError> {
    PgConnectOptions::from_str(url).map_err(DbError::Url)
}

/// Where a URL points, for error messages (no password).
fn describe(options: &PgConnectOptions) -> String {
    format!("{}:{}/{}", options.get_host(), options.get_port(), options.get_database().unwrap_or(""))
}

pub async fn connect(url: &str) -> Result<PgPool, DbError> {
    let options = options(url)?;
    let target = describe(&options);
    PgPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
        .map_err(|source| DbError::Connect { target, source })
}

/// A pool on the same database whose statements are cancelled after
/// `timeout`: what the admin API queries through, so that no caller's read
/// can hold a connection and a core for long. Connects on first use.
pub fn bounded(pool: &PgPool, timeout: Duration) -> PgPool {
    let options = (*pool.connect_options()).clone().options([("statement_timeout", timeout.as_millis().to_string())]);
    PgPoolOptions::new().max_connections(16).acquire_timeout(Duration::from_secs(5)).connect_lazy_with(options)
}

/// Whether a PostgreSQL server answers at the URL's host and port (any database).
pub async fn server_answers(url: &str) -> bool {
    let Ok(options) = options(url) else { return false };
    let maintenance = options.database("postgres");
    matches!(tokio::time::timeout(Duration::from_secs(3), maintenance.connect()).await, Ok(Ok(_)))
}

/// Creates the URL's database when it does not exist yet. Returns whether it did.
pub async fn ensure_database(url: &str) -> Result<bool, DbError> {
    let options = options(url)?;
    let name = options.get_database().unwrap_or("postgres").to_owned();
    let maintenance = options.clone().database("postgres");
    let target = describe(&maintenance);
    let mut conn: PgConnection = maintenance.connect().await.map_err(|source| DbError::Connect { target, source })?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(&name)
        .fetch_one(&mut conn)
        .await
        .map_err(|source| DbError::Create { name: name.clone(), source })?;
    if exists {
        return Ok(false);
    }
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    let created = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {quoted}"))).execute(&mut conn).await;
    let _ = conn.close().await;
    match created {
        Ok(_) => Ok(true),
        // Another process created it between our check and our CREATE: fine.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => Ok(false),
        Err(source) => Err(DbError::Create { name, source }),
    }
}

pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// The advisory-lock key that serializes everything acting on one tenant:
/// reconciles and workflow steps, across every replica.
pub fn tenant_lock_key(tenant: indigo_core::tenant::TenantId) -> String {
    format!("indigo:tenant:{tenant}")
}

/// A pooled connection holding a session-level advisory lock. Should its holder
/// be cancelled (or the process die) before unlocking, the session ends and
/// PostgreSQL releases the lock with it: the connection is closed rather than
/// returned to the pool.
pub struct AdvisoryLock {
    conn: Option<LockConnection>,
    key: String,
}

enum LockConnection {
    Pooled(sqlx::pool::PoolConnection<sqlx::Postgres>),
    /// Opened for the lock alone; closing it releases the lock.
    Dedicated(PgConnection),
}

async fn try_lock(conn: &mut PgConnection, key: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))").bind(key).fetch_one(conn).await
}

impl AdvisoryLock {
    /// Takes the lock on a pool connection if no other session holds it.
    pub async fn try_acquire(pool: &PgPool, key: String) -> Result<Option<Self>, sqlx::Error> {
        let mut conn = pool.acquire().await?;
        let locked = try_lock(&mut conn, &key).await?;
        Ok(locked.then_some(Self { conn: Some(LockConnection::Pooled(conn)), key }))
    }

    /// Takes the lock on a connection of its own, for holders that also need
    /// pool connections meanwhile.
    pub async fn try_acquire_dedicated(pool: &PgPool, key: String) -> Result<Option<Self>, sqlx::Error> {
        let mut conn = pool.connect_options().connect().await?;
        let locked = try_lock(&mut conn, &key).await?;
        Ok(locked.then_some(Self { conn: Some(LockConnection::Dedicated(conn)), key }))
    }

    /// The connection holding the lock, for work done under it.
    pub fn conn(&mut self) -> &mut PgConnection {
        match self.conn.as_mut().expect("lock connection present until released") {
            LockConnection::Pooled(conn) => conn,
            LockConnection::Dedicated(conn) => conn,
        }
    }

    pub async fn release(mut self) {
        match self.conn.take() {
            Some(LockConnection::Dedicated(conn)) => {
                let _ = conn.close().await;
            }
            Some(LockConnection::Pooled(mut conn)) => {
                let unlocked = sqlx::query("SELECT pg_advisory_unlock(hashtextextended($1, 0))")
                    .bind(&self.key)
                    .execute(&mut *conn)
                    .await
                    .is_ok();
                if !unlocked {
                    conn.close_on_drop();
                }
                // Unlocked: the session holds nothing any more and may serve others.
            }
            None => {}
        }
    }
}

impl Drop for AdvisoryLock {
    fn drop(&mut self) {
        if let Some(LockConnection::Pooled(mut conn)) = self.conn.take() {
            conn.close_on_drop();
        }
    }
}
