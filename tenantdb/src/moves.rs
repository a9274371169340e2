//! Online moves of one tenant's rows between two tenant databases (pool to
//! silo on an upgrade, silo to pool on a downgrade) while the tenant keeps
//! serving reads and writes. The tier-change workflow drives the phases:
//!
//! 1. **capture**: triggers added for this tenant alone log every change of its
//!    rows on the source, inside the writer's own transaction
//!    (`migrations/tenant/*_moves.sql`);
//! 2. **copy**: one REPEATABLE READ snapshot of the tenant's rows, streamed
//!    table by table with COPY into the target in one transaction, then
//!    verified: per table, row count and checksum of the snapshot equal the
//!    target's;
//! 3. **catch up**: the log is applied to the target in batches, as upserts and
//!    deletes of row images, and removed from the source once applied; the
//!    keys written are remembered on the target. Replaying a change the
//!    snapshot already holds is harmless: a row ends as its last image;
//! 4. **cut over**: the tenant's move lock, taken exclusively, holds its new
//!    writes and drains the ones in flight; the rest of the log is applied;
//!    the rows written since the copy must match on both sides (the others are
//!    as the verified copy left them, on both sides, since every change is
//!    logged); the fence closes, the caller switches routing, the lock is
//!    released and the held writes fail over to the target.
//!
//! Why a change log and not logical replication with a row-filtered
//! publication: that needs `wal_level = logical` (a server restart; on Aurora a
//! parameter group change and a reboot) and superuser-made subscriptions, and it
//! has no per-tenant write pause. The log costs the moving tenant one row per
//! change for the duration of the move; the triggers' `WHEN` clause keeps every
//! other tenant's writes off it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use indigo_core::tenant::TenantId;
use serde::Serialize;
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool, Postgres, Transaction};

use crate::Database;
use crate::schema::TENANT_TABLES;

/// Changes applied to the target per transaction.
pub const BATCH: i64 = 5_000;

/// Source rows deleted per transaction when a move's source is released.
const DELETE_BATCH: i64 = 5_000;

/// The catch-up hands over to the cut-over once fewer changes than this wait:
/// the cut-over applies them with the tenant's writes held.
pub const CUTOVER_LAG: i64 = 100;

#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    #[error("database {database}: {source}")]
    Database {
        database: String,
        #[source]
        source: sqlx::Error,
    },
    #[error(
        "verification failed on `{table}`: the source has {source_rows} rows (checksum {source_sum}), \
         the target {target_rows} (checksum {target_sum})"
    )]
    Mismatch { table: String, source_rows: i64, target_rows: i64, source_sum: String, target_sum: String },
    #[error("change log entry {id}: {message}")]
    Corrupt { id: i64, message: String },
}

impl MoveError {
    /// Connection trouble and the like may pass; a mismatch or a corrupt log will not.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Database { .. })
    }
}

/// One database of a move, reached as the schema owner bound to the moving
/// tenant: row-level security lets the mover read and write that tenant's
/// rows alone, whatever a statement says, and no side needs a superuser (an
/// Aurora cluster has none).
struct Side {
    database: String,
    pool: PgPool,
    options: PgConnectOptions,
}

impl Side {
    fn new(database: &Database, tenant: TenantId) -> Self {
        // Checksums hash rows as text, and timestamps print in the session's zone.
        // The idempotent DROP ... IF EXISTS of clean-ups would otherwise log a notice each.
        let options = database.server.owner_options(&database.name).options([
            ("TimeZone", "UTC".to_owned()),
            ("client_min_messages", "warning".to_owned()),
            ("app.current_tenant", tenant.to_string()),
        ]);
        // One connection per side, which every step takes in turn. With two,
        // a step right after another opens the second (sqlx hands a released
        // connection back to its pool a moment later), and a new connection —
        // TLS included — cost the write pause about 100 ms.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .idle_timeout(Duration::from_secs(30))
            .connect_lazy_with(options.clone());
        Self { database: database.name.clone(), pool, options }
    }

    fn fail(&self) -> impl Fn(sqlx::Error) -> MoveError + '_ {
        |source| MoveError::Database { database: self.database.clone(), source }
    }

    async fn begin(&self) -> Result<Transaction<'static, Postgres>, MoveError> {
        self.pool.begin().await.map_err(self.fail())
    }

    /// Runs one statement whose only parameter is the tenant.
    async fn execute_for(&self, sql: &'static str, tenant: TenantId) -> Result<(), MoveError> {
        sqlx::query(sql).bind(tenant.0).execute(&self.pool).await.map_err(self.fail())?;
        Ok(())
    }

    /// Runs DDL on one shared tenant table (adding or dropping a tenant's
    /// capture triggers) without getting in the other tenants' way. Each table
    /// is a transaction of its own: holding one table's lock while queueing for
    /// the next could close a cycle with a storefront transaction that touches
    /// them in another order, and PostgreSQL would abort one of the two,
    /// possibly a customer's order. The wait for the lock is kept short, since
    /// every later statement on the table queues behind it, and retried.
    async fn alter_table(&self, ddl: &str) -> Result<(), MoveError> {
        let fail = self.fail();
        let started = Instant::now();
        let mut pause = Duration::from_millis(20);
        loop {
            let mut tx = self.begin().await?;
            let outcome =
                sqlx::raw_sql(AssertSqlSafe(format!("SET LOCAL lock_timeout = '{DDL_LOCK_WAIT_MS}ms'; {ddl}")))
                    .execute(&mut *tx)
                    .await;
            match outcome {
                Ok(_) => return tx.commit().await.map_err(&fail),
                Err(sqlx::Error::Database(error))
                    if error.code().as_deref() == Some(LOCK_NOT_AVAILABLE) && started.elapsed() < DDL_PATIENCE =>
                {
                    drop(tx);
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                Err(error) => return Err(fail(error)),
            }
        }
    }
}

impl Drop for Side {
    /// A pool dropped cuts its connection off, which the server logs as a
    /// reset at the end of every step; closed, the connection says goodbye.
    fn drop(&mut self) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let pool = self.pool.clone();
            runtime.spawn(async move { pool.close().await });
        }
    }
}

/// How long trigger DDL waits for a table's lock before letting the queue
/// behind it move and trying again, and how long it keeps trying before the
/// workflow step fails (transiently, to be retried later).
const DDL_LOCK_WAIT_MS: u64 = 100;
const DDL_PATIENCE: Duration = Duration::from_secs(30);

/// SQLSTATE of a lock wait that ran out of `lock_timeout`.
const LOCK_NOT_AVAILABLE: &str = "55P03";

/// The columns of a tenant table that a move carries (generated ones are
/// computed again on the target) and its primary key.
#[derive(Debug)]
struct Table {
    name: &'static str,
    columns: Vec<String>,
    key: Vec<String>,
}

impl Table {
    fn column_list(&self) -> String {
        self.columns.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ")
    }

    fn key_list(&self) -> String {
        self.key.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ")
    }

    /// The key columns of a row image, as a JSON object.
    fn key_image(&self, image: &Value) -> Value {
        Value::Object(self.key.iter().map(|c| (c.clone(), image.get(c).cloned().unwrap_or(Value::Null))).collect())
    }

    /// Row count and checksum of the tenant's rows, or of those with the keys
    /// in `keys` (a JSON array of key objects).
    async fn checksum(
        &self,
        conn: &mut PgConnection,
        tenant: TenantId,
        keys: Option<&Value>,
    ) -> Result<(i64, String), sqlx::Error> {
        let columns: Vec<String> = self.columns.iter().map(|c| format!("t.{}", quote_ident(c))).collect();
        let hash = format!(
            "count(*), COALESCE(sum(hashtextextended(ROW({})::text, 0)::numeric), 0)::text",
            columns.join(", ")
        );
        let sql = match keys {
            None => format!("SELECT {hash} FROM {} t WHERE t.tenant_id = $1", self.name),
            // One primary-key lookup per key, whatever the planner thinks of the key list's size.
            Some(_) => format!(
                "SELECT {hash} FROM (SELECT DISTINCT {key} FROM jsonb_populate_recordset(NULL::{name}, $2)) k
                 CROSS JOIN LATERAL (SELECT * FROM {name} r WHERE r.tenant_id = $1 AND {matches}) t",
                name = self.name,
                key = self.key_list(),
                matches =
                    self.key.iter().map(|c| format!("r.{0} = k.{0}", quote_ident(c))).collect::<Vec<_>>().join(" AND "),
            ),
        };
        sqlx::query_as(AssertSqlSafe(sql)).bind(tenant.0).bind(keys).fetch_one(conn).await
    }

    /// Per key in `keys` (a JSON array of key objects), in that order, a hash
    /// of the tenant's row with that key, `None` where there is none.
    async fn row_hashes(
        &self,
        conn: &mut PgConnection,
        tenant: TenantId,
        keys: &Value,
    ) -> Result<Vec<Option<i64>>, sqlx::Error> {
        let columns: Vec<String> = self.columns.iter().map(|c| format!("t.{}", quote_ident(c))).collect();
        let sql = format!(
            "SELECT (SELECT hashtextextended(ROW({columns})::text, 0) FROM {name} t WHERE t.tenant_id = $1 AND {matches})
             FROM jsonb_array_elements($2) WITH ORDINALITY AS k(key, n)
             CROSS JOIN LATERAL jsonb_populate_record(NULL::{name}, k.key) AS p
             ORDER BY k.n",
            columns = columns.join(", "),
            name = self.name,
            matches = self.key.iter().map(|c| format!("t.{0} = p.{0}", quote_ident(c))).collect::<Vec<_>>().join(" AND "),
        );
        sqlx::query_scalar(AssertSqlSafe(sql)).bind(tenant.0).bind(keys).fetch_all(conn).await
    }

    /// Deletes the rows whose keys are in `$1` (row images), of tenant `$2`.
    fn delete_sql(&self) -> String {
        format!(
            "DELETE FROM {name} WHERE tenant_id = $2 AND ({key}) IN
                 (SELECT {key} FROM jsonb_populate_recordset(NULL::{name}, $1))",
            name = self.name,
            key = self.key_list()
        )
    }

    /// Writes the row images in `$1` (of tenant `$2`) over whatever has their keys.
    fn upsert_sql(&self) -> String {
        let columns = self.column_list();
        let updates: Vec<String> = self
            .columns
            .iter()
            .filter(|c| !self.key.contains(c))
            .map(|c| format!("{0} = EXCLUDED.{0}", quote_ident(c)))
            .collect();
        let on_conflict =
            if updates.is_empty() { "NOTHING".to_owned() } else { format!("UPDATE SET {}", updates.join(", ")) };
        format!(
            "INSERT INTO {name} ({columns})
             SELECT {columns} FROM jsonb_populate_recordset(NULL::{name}, $1) WHERE tenant_id = $2
             ON CONFLICT ({key}) DO {on_conflict}",
            name = self.name,
            key = self.key_list(),
        )
    }

    /// The primary key of a row image, as a comparable string.
    fn key_of(&self, image: &Value) -> String {
        self.key.iter().map(|c| image.get(c).map(Value::to_string).unwrap_or_default()).collect::<Vec<_>>().join("|")
    }
}

/// One logged change of a moving tenant's row.
#[derive(sqlx::FromRow)]
struct Change {
    id: i64,
    table_name: String,
    old_image: Option<Value>,
    new_image: Option<Value>,
}

/// What a row ends as after a batch of changes.
enum Last<'a> {
    Upsert(&'a Value),
    Delete(&'a Value),
}

/// Rows and checksum of one table of the tenant, on both sides.
#[derive(Debug, Clone, Serialize)]
pub struct TableCheck {
    pub table: String,
    pub rows: i64,
    pub checksum: String,
}

/// The statement that takes `tenant`'s write lock shared until its
/// transaction ends. Every write of the tenant holds it: the data plane takes
/// it as each of its transactions begins, and the capture trigger as a moving
/// tenant's rows change. [`hold_writes`] takes it exclusively.
pub fn write_lock_statement(tenant: TenantId) -> String {
    format!("SELECT pg_advisory_xact_lock_shared({})", move_lock_key(tenant))
}

/// Holds `tenant`'s writes in the database `options` reach: waits for its
/// write transactions in flight to end, then makes new ones wait (held, not
/// refused) until the pause is released. Other tenants never wait. A
/// connection of its own: if the holder dies, the server ends the pause.
///
/// The lock is first tried between the tenant's writes, without queueing for
/// it: a request in the queue holds every new write behind the one in flight,
/// which on a busy server takes tens of milliseconds to commit (the pause would
/// count them). Only a tenant whose writes never leave a gap within
/// [`QUIET_WAIT`] has the lock queued for.
pub async fn hold_writes(options: &PgConnectOptions, tenant: TenantId) -> Result<WritePause, sqlx::Error> {
    let mut conn = PgConnection::connect_with(options).await?;
    let key = move_lock_key(tenant);
    let asked = Instant::now();
    let started = loop {
        let started = Instant::now();
        let sql = format!("SELECT pg_try_advisory_lock({key})");
        if sqlx::query_scalar(AssertSqlSafe(sql)).fetch_one(&mut conn).await? {
            break started;
        }
        if asked.elapsed() >= QUIET_WAIT {
            let started = Instant::now();
            sqlx::query(AssertSqlSafe(format!("SELECT pg_advisory_lock({key})"))).execute(&mut conn).await?;
            break started;
        }
        tokio::time::sleep(QUIET_TRY_EVERY).await;
    };
    Ok(WritePause { conn, started, waited: started - asked })
}

/// How long [`hold_writes`] looks for a gap between the tenant's writes
/// before it queues for the lock.
pub const QUIET_WAIT: Duration = Duration::from_millis(500);

/// How often [`hold_writes`] tries the lock while writes are in flight.
const QUIET_TRY_EVERY: Duration = Duration::from_millis(1);

/// The tenant's move lock's key, as `move_capture()` and the data plane's
/// writes compute it. The id is a parsed UUID: safe to format in.
fn move_lock_key(tenant: TenantId) -> String {
    format!("hashtextextended('indigo:move:{tenant}', 0)")
}

/// A tenant's writes held: new ones wait, none is in flight.
/// Dropping it closes its connection, which releases the lock.
pub struct WritePause {
    conn: PgConnection,
    started: Instant,
    waited: Duration,
}

impl WritePause {
    /// How long the writes have been held so far.
    pub fn held(&self) -> Duration {
        self.started.elapsed()
    }

    /// How long the pause looked for a gap between writes before it began
    /// (writes were not held meanwhile unless it ran out of [`QUIET_WAIT`]).
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// Releases the held writes; returns how long they were held.
    pub async fn release(mut self) -> Duration {
        let held = self.started.elapsed();
        if sqlx::query("SELECT pg_advisory_unlock_all()").execute(&mut self.conn).await.is_err() {
            tracing::warn!("could not release the write pause cleanly; closing its connection releases it");
        }
        let _ = self.conn.close().await;
        held
    }
}

/// What a move of `tenant` out of `database` would copy: its rows and their
/// stored size per tenant table, counted in one snapshot as the schema owner
/// bound to the tenant (row-level security confines the count to its rows).
pub async fn footprint(
    database: &Database,
    tenant: TenantId,
) -> Result<Vec<indigo_core::api::TableFootprint>, sqlx::Error> {
    footprint_of(database, tenant, TENANT_TABLES).await
}

/// [`footprint`] of some tenant tables only.
pub async fn footprint_of(
    database: &Database,
    tenant: TenantId,
    tables: &[&str],
) -> Result<Vec<indigo_core::api::TableFootprint>, sqlx::Error> {
    use sqlx::ConnectOptions;
    let mut conn = database.server.owner_options(&database.name).connect().await?;
    let mut tx = conn.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?;
    sqlx::query("SELECT set_config('app.current_tenant', $1, true)").bind(tenant.to_string()).execute(&mut *tx).await?;
    let mut counted = Vec::with_capacity(tables.len());
    for &table in tables.iter().filter(|t| TENANT_TABLES.contains(t)) {
        let sql = format!("SELECT count(*), coalesce(sum(pg_column_size(t.*)), 0)::bigint FROM {table} t");
        let (rows, bytes): (i64, i64) = sqlx::query_as(AssertSqlSafe(sql)).fetch_one(&mut *tx).await?;
        counted.push(indigo_core::api::TableFootprint { table: table.to_owned(), rows, bytes });
    }
    tx.commit().await?;
    let _ = conn.close().await;
    Ok(counted)
}

/// The rows `tenant` wrote in `database` over the last `minutes`, as its
/// timestamps tell: orders and customers created, products changed (order
/// items go with their orders). Read as the schema owner bound to the tenant.
pub async fn recent_writes(database: &Database, tenant: TenantId, minutes: i32) -> Result<i64, sqlx::Error> {
    use sqlx::ConnectOptions;
    let mut conn = database.server.owner_options(&database.name).connect().await?;
    let mut tx = conn.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?;
    sqlx::query("SELECT set_config('app.current_tenant', $1, true)").bind(tenant.to_string()).execute(&mut *tx).await?;
    let written: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM orders WHERE created_at > now() - make_interval(mins => $1))
              + (SELECT count(*) FROM customers WHERE created_at > now() - make_interval(mins => $1))
              + (SELECT count(*) FROM products WHERE updated_at > now() - make_interval(mins => $1))",
    )
    .bind(minutes)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    let _ = conn.close().await;
    Ok(written)
}

/// Moves one tenant's rows from `source` to `target`.
pub struct Mover {
    tenant: TenantId,
    source: Side,
    target: Side,
    tables: Vec<Table>,
}

impl Mover {
    pub async fn connect(tenant: TenantId, source: &Database, target: &Database) -> Result<Self, MoveError> {
        let source = Side::new(source, tenant);
        let target = Side::new(target, tenant);
        // The shapes come from the target: both carry the same schema, and a
        // move's last step runs after a silo source may already be dropped.
        let mut conn = target.pool.acquire().await.map_err(target.fail())?;
        let mut tables = Vec::with_capacity(TENANT_TABLES.len());
        for &name in TENANT_TABLES {
            let columns = sqlx::query_scalar(
                "SELECT attname::text FROM pg_attribute
                 WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped AND attgenerated = ''
                 ORDER BY attnum",
            )
            .bind(name)
            .fetch_all(&mut *conn)
            .await
            .map_err(target.fail())?;
            let key = sqlx::query_scalar(
                "SELECT a.attname::text FROM pg_index i
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
                 WHERE i.indrelid = $1::regclass AND i.indisprimary ORDER BY array_position(i.indkey, a.attnum)",
            )
            .bind(name)
            .fetch_all(&mut *conn)
            .await
            .map_err(target.fail())?;
            tables.push(Table { name, columns, key });
        }
        drop(conn);
        Ok(Self { tenant, source, target, tables })
    }

    pub fn source_database(&self) -> &str {
        &self.source.database
    }

    pub fn target_database(&self) -> &str {
        &self.target.database
    }

    fn table(&self, name: &str) -> Option<&Table> {
        self.tables.iter().find(|t| t.name == name)
    }

    /// Clears what an earlier move of this tenant may have left on the target
    /// (its capture triggers, fence and log); the rows go with the copy.
    pub async fn prepare_target(&self) -> Result<(), MoveError> {
        stop_capture(&self.target, self.tenant, &self.tables).await
    }

    /// Starts logging the tenant's changes on the source. Idempotent.
    /// The copy starts only after this returns, so capture is on for every
    /// table by then even though each table gets its triggers on its own.
    pub async fn start_capture(&self) -> Result<(), MoveError> {
        self.source
            .execute_for("INSERT INTO move_fences (tenant) VALUES ($1) ON CONFLICT (tenant) DO NOTHING", self.tenant)
            .await?;
        let (writes, deletes) = trigger_names(self.tenant);
        for table in &self.tables {
            // The tenant id is a parsed UUID; the names are ours.
            let ddl = format!(
                "CREATE OR REPLACE TRIGGER {writes} AFTER INSERT OR UPDATE ON {table} FOR EACH ROW
                     WHEN (NEW.tenant_id = '{tenant}') EXECUTE FUNCTION move_capture();
                 CREATE OR REPLACE TRIGGER {deletes} AFTER DELETE ON {table} FOR EACH ROW
                     WHEN (OLD.tenant_id = '{tenant}') EXECUTE FUNCTION move_capture();",
                table = table.name,
                tenant = self.tenant,
            );
            self.source.alter_table(&ddl).await?;
        }
        Ok(())
    }

    /// Stops logging on the source and forgets the log (a move given up).
    pub async fn stop_capture(&self) -> Result<(), MoveError> {
        stop_capture(&self.source, self.tenant, &self.tables).await
    }

    /// The tenant's rows on the source, per table, in the copy's order.
    pub async fn count_source(&self) -> Result<i64, MoveError> {
        let mut total = 0;
        for table in &self.tables {
            let count: i64 =
                sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM {} WHERE tenant_id = $1", table.name)))
                    .bind(self.tenant.0)
                    .fetch_one(&self.source.pool)
                    .await
                    .map_err(self.source.fail())?;
            total += count;
        }
        Ok(total)
    }

    /// Copies a snapshot of the tenant's rows into the target, replacing any
    /// an earlier attempt left there, in one target transaction, and checks
    /// that the target holds exactly the snapshot. `progress` is told the rows
    /// copied so far. Capture must have started before.
    pub async fn copy(&self, mut progress: impl FnMut(u64)) -> Result<Vec<TableCheck>, MoveError> {
        let source_fail = self.source.fail();
        let target_fail = self.target.fail();
        let mut source = self.source.pool.acquire().await.map_err(&source_fail)?;
        let mut snapshot =
            source.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY").await.map_err(&source_fail)?;
        let mut target = self.target.begin().await?;
        delete_rows(&mut target, self.tenant, &self.tables).await.map_err(&target_fail)?;
        sqlx::query("DELETE FROM move_touched WHERE tenant = $1")
            .bind(self.tenant.0)
            .execute(&mut *target)
            .await
            .map_err(&target_fail)?;
        let mut copied = 0u64;
        for table in &self.tables {
            let columns = table.column_list();
            let out =
                format!("COPY (SELECT {columns} FROM {} WHERE tenant_id = '{}') TO STDOUT", table.name, self.tenant);
            let mut rows = snapshot.copy_out_raw(&out).await.map_err(&source_fail)?;
            // COPY FROM refuses a table under row-level security, so the rows
            // land in a temporary table first and enter through the policy.
            let stage = format!("indigo_move_stage_{}", table.name);
            sqlx::raw_sql(AssertSqlSafe(format!(
                "CREATE TEMP TABLE {stage} ON COMMIT DROP AS SELECT {columns} FROM {} WITH NO DATA",
                table.name
            )))
            .execute(&mut *target)
            .await
            .map_err(&target_fail)?;
            let mut sink =
                target.copy_in_raw(&format!("COPY {stage} ({columns}) FROM STDIN")).await.map_err(&target_fail)?;
            while let Some(chunk) = rows.next().await {
                let chunk = chunk.map_err(&source_fail)?;
                // COPY's text format escapes newlines inside values: one per row.
                copied += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
                sink.send(chunk).await.map_err(&target_fail)?;
                progress(copied);
            }
            sink.finish().await.map_err(&target_fail)?;
            sqlx::raw_sql(AssertSqlSafe(format!(
                "INSERT INTO {name} ({columns}) SELECT {columns} FROM {stage}; DROP TABLE {stage}",
                name = table.name
            )))
            .execute(&mut *target)
            .await
            .map_err(&target_fail)?;
        }
        let mut checks = Vec::with_capacity(self.tables.len());
        for table in &self.tables {
            let (rows, checksum) = table.checksum(&mut target, self.tenant, None).await.map_err(&target_fail)?;
            let (source_rows, source_sum) =
                table.checksum(&mut snapshot, self.tenant, None).await.map_err(&source_fail)?;
            compare(table, (source_rows, source_sum), (rows, checksum.clone()))?;
            checks.push(TableCheck { table: table.name.into(), rows, checksum });
        }
        target.commit().await.map_err(&target_fail)?;
        snapshot.commit().await.map_err(&source_fail)?;
        Ok(checks)
    }

    /// Changes logged and not yet applied: the move's lag.
    pub async fn lag(&self) -> Result<i64, MoveError> {
        sqlx::query_scalar("SELECT count(*) FROM move_changes WHERE tenant = $1")
            .bind(self.tenant.0)
            .fetch_one(&self.source.pool)
            .await
            .map_err(self.source.fail())
    }

    /// Applies up to `limit` logged changes to the target, oldest first, and
    /// removes them from the log; returns how many.
    pub async fn apply_batch(&self, limit: i64) -> Result<usize, MoveError> {
        let changes: Vec<Change> = sqlx::query_as(
            "SELECT id, table_name, old_image, new_image FROM move_changes WHERE tenant = $1 ORDER BY id LIMIT $2",
        )
        .bind(self.tenant.0)
        .bind(limit)
        .fetch_all(&self.source.pool)
        .await
        .map_err(self.source.fail())?;
        if changes.is_empty() {
            return Ok(0);
        }
        match self.apply(&changes).await {
            Err(MoveError::Database { source: sqlx::Error::Database(e), .. })
                if e.code().is_some_and(|c| c.starts_with("23")) =>
            {
                // Folding a batch into one statement per table can reorder
                // changes that a constraint ties together; in log order, one
                // at a time, they apply as they happened.
                tracing::debug!(tenant = %self.tenant, error = %e, "applying the batch change by change");
                for change in &changes {
                    self.apply(std::slice::from_ref(change)).await?;
                }
            }
            other => other?,
        }
        let ids: Vec<i64> = changes.iter().map(|c| c.id).collect();
        sqlx::query("DELETE FROM move_changes WHERE tenant = $1 AND id = ANY ($2)")
            .bind(self.tenant.0)
            .bind(&ids)
            .execute(&self.source.pool)
            .await
            .map_err(self.source.fail())?;
        Ok(changes.len())
    }

    /// Applies `changes` to the target in one transaction: each row ends as
    /// its last change made it.
    async fn apply(&self, changes: &[Change]) -> Result<(), MoveError> {
        let mut last: HashMap<(&'static str, String), (i64, Last<'_>)> = HashMap::new();
        for change in changes {
            let table = self.table(&change.table_name).ok_or_else(|| MoveError::Corrupt {
                id: change.id,
                message: format!("unknown table `{}`", change.table_name),
            })?;
            for image in change.old_image.iter().chain(&change.new_image) {
                if image.get("tenant_id").and_then(Value::as_str) != Some(self.tenant.to_string().as_str()) {
                    return Err(MoveError::Corrupt { id: change.id, message: "a row of another tenant".into() });
                }
            }
            let new_key = change.new_image.as_ref().map(|image| table.key_of(image));
            if let Some(old) = &change.old_image {
                let old_key = table.key_of(old);
                if new_key.as_ref() != Some(&old_key) {
                    last.insert((table.name, old_key), (change.id, Last::Delete(old)));
                }
            }
            if let (Some(new), Some(key)) = (&change.new_image, new_key) {
                last.insert((table.name, key), (change.id, Last::Upsert(new)));
            }
        }
        let mut ordered: Vec<(&'static str, i64, &Last<'_>)> =
            last.iter().map(|((table, _), (id, op))| (*table, *id, op)).collect();
        ordered.sort_by_key(|(_, id, _)| *id);
        let rows_of = |table: &str, upserts: bool| -> Value {
            Value::Array(
                ordered
                    .iter()
                    .filter(|(t, _, _)| *t == table)
                    .filter_map(|(_, _, op)| match (op, upserts) {
                        (Last::Upsert(image), true) | (Last::Delete(image), false) => Some((*image).clone()),
                        _ => None,
                    })
                    .collect(),
            )
        };
        let fail = self.target.fail();
        let mut tx = self.target.begin().await?;
        for table in &self.tables {
            let touched: Vec<Value> = ordered
                .iter()
                .filter(|(t, _, _)| *t == table.name)
                .map(|(_, _, op)| match op {
                    Last::Upsert(image) | Last::Delete(image) => table.key_image(image),
                })
                .collect();
            if !touched.is_empty() {
                sqlx::query(
                    "INSERT INTO move_touched (tenant, table_name, key)
                     SELECT $1, $2, k FROM jsonb_array_elements($3) k
                     ON CONFLICT (tenant, table_name, key) DO UPDATE SET verified = false",
                )
                .bind(self.tenant.0)
                .bind(table.name)
                .bind(Value::Array(touched))
                .execute(&mut *tx)
                .await
                .map_err(&fail)?;
            }
        }
        // Children first for deletes, then parents first for upserts: foreign keys hold.
        let statements = self.tables.iter().rev().map(|t| (t, false)).chain(self.tables.iter().map(|t| (t, true)));
        for (table, upserts) in statements {
            let rows = rows_of(table.name, upserts);
            if rows.as_array().is_none_or(Vec::is_empty) {
                continue;
            }
            let sql = if upserts { table.upsert_sql() } else { table.delete_sql() };
            sqlx::query(AssertSqlSafe(sql)).bind(rows).bind(self.tenant.0).execute(&mut *tx).await.map_err(&fail)?;
        }
        tx.commit().await.map_err(&fail)
    }

    /// Holds the tenant's writes on the source: waits for the ones in flight,
    /// makes new ones wait. Other tenants are not touched.
    pub async fn pause_writes(&self) -> Result<WritePause, MoveError> {
        let fail = self.source.fail();
        // Every connection the switch uses is opened before writes are held, not during.
        sqlx::query("SELECT 1").execute(&self.source.pool).await.map_err(&fail)?;
        sqlx::query("SELECT 1").execute(&self.target.pool).await.map_err(self.target.fail())?;
        hold_writes(&self.source.options, self.tenant).await.map_err(&fail)
    }

    /// Applies the whole log (writes must be paused for it to stay empty). A
    /// batch shorter than asked for took what was left: with writes paused
    /// nothing is logged after it, so the log is not read again to find it empty.
    pub async fn drain(&self) -> Result<usize, MoveError> {
        let mut applied = 0;
        loop {
            let batch = self.apply_batch(BATCH).await?;
            applied += batch;
            if (batch as i64) < BATCH {
                return Ok(applied);
            }
        }
    }

    /// Marks verified the rows the catch-up wrote that are now equal on both
    /// sides, while the tenant keeps writing; returns how many. A row still
    /// different has a change waiting in the log, and stays unverified. A
    /// verified row that changes again is logged, and applying that change
    /// clears the mark, so every row is compared after its last change: the
    /// pause's [`Mover::verify_changed`] is left with the rows changed since.
    pub async fn verify_settled(&self) -> Result<u64, MoveError> {
        let (source_fail, target_fail) = (self.source.fail(), self.target.fail());
        let mut source = self.source.pool.acquire().await.map_err(&source_fail)?;
        let mut target = self.target.pool.acquire().await.map_err(&target_fail)?;
        let mut settled = 0;
        for table in &self.tables {
            let keys = self.unverified(&mut target, table).await?;
            if keys.is_empty() {
                continue;
            }
            let keys = Value::Array(keys);
            let on_source = table.row_hashes(&mut source, self.tenant, &keys).await.map_err(&source_fail)?;
            let on_target = table.row_hashes(&mut target, self.tenant, &keys).await.map_err(&target_fail)?;
            let Value::Array(keys) = keys else { unreachable!("built as an array above") };
            let equal: Vec<Value> = keys
                .into_iter()
                .zip(on_source.iter().zip(&on_target))
                .filter(|(_, (source, target))| source == target)
                .map(|(key, _)| key)
                .collect();
            settled += sqlx::query(
                "UPDATE move_touched SET verified = true
                 WHERE tenant = $1 AND table_name = $2 AND key IN (SELECT jsonb_array_elements($3))",
            )
            .bind(self.tenant.0)
            .bind(table.name)
            .bind(Value::Array(equal))
            .execute(&mut *target)
            .await
            .map_err(&target_fail)?
            .rows_affected();
        }
        Ok(settled)
    }

    /// The keys of `table` the catch-up wrote and no comparison has settled.
    async fn unverified(&self, target: &mut PgConnection, table: &Table) -> Result<Vec<Value>, MoveError> {
        sqlx::query_scalar("SELECT key FROM move_touched WHERE tenant = $1 AND table_name = $2 AND NOT verified")
            .bind(self.tenant.0)
            .bind(table.name)
            .fetch_all(target)
            .await
            .map_err(self.target.fail())
    }

    /// The rows written since the copy and not yet verified, equal on both
    /// sides (with writes paused, after [`Mover::drain`]): row counts and
    /// checksums per table of those keys, or the first difference.
    pub async fn verify_changed(&self) -> Result<Vec<TableCheck>, MoveError> {
        let (source_fail, target_fail) = (self.source.fail(), self.target.fail());
        let mut source = self.source.pool.acquire().await.map_err(&source_fail)?;
        let mut target = self.target.pool.acquire().await.map_err(&target_fail)?;
        let mut checks = Vec::with_capacity(self.tables.len());
        for table in &self.tables {
            let keys = self.unverified(&mut target, table).await?;
            if keys.is_empty() {
                checks.push(TableCheck { table: table.name.into(), rows: 0, checksum: "0".into() });
                continue;
            }
            let keys = Value::Array(keys);
            // Both sides at once: each round trip here is part of the write pause.
            let (on_source, on_target) = tokio::try_join!(
                async { table.checksum(&mut source, self.tenant, Some(&keys)).await.map_err(&source_fail) },
                async { table.checksum(&mut target, self.tenant, Some(&keys)).await.map_err(&target_fail) },
            )?;
            compare(table, on_source, on_target.clone())?;
            checks.push(TableCheck { table: table.name.into(), rows: on_target.0, checksum: on_target.1 });
        }
        Ok(checks)
    }

    /// Closes the fence on the source: from now on the tenant's writes there
    /// fail with [`crate::schema::MOVED_SQLSTATE`], and the data plane retries them on the target.
    pub async fn close_fence(&self) -> Result<(), MoveError> {
        sqlx::query(
            "INSERT INTO move_fences (tenant, moved_to) VALUES ($1, $2)
             ON CONFLICT (tenant) DO UPDATE SET moved_to = EXCLUDED.moved_to",
        )
        .bind(self.tenant.0)
        .bind(&self.target.database)
        .execute(&self.source.pool)
        .await
        .map_err(self.source.fail())?;
        Ok(())
    }

    /// Opens the fence again (a cut-over undone before routing switched).
    pub async fn open_fence(&self) -> Result<(), MoveError> {
        self.source.execute_for("UPDATE move_fences SET moved_to = NULL WHERE tenant = $1", self.tenant).await
    }

    /// After the grace period: deletes the tenant's rows from the source, then
    /// stops capture there. The rows go in batches, each its own transaction,
    /// so that no lock is held long; the session says it is releasing the
    /// tenant, so the capture trigger lets its deletes pass unlogged while the
    /// closed fence stays up for everyone else. Dropping the triggers takes a
    /// brief exclusive lock on each table, so it comes last, alone: with the
    /// deletes in the same transaction every tenant's writes would wait for them.
    pub async fn release_source(&self) -> Result<u64, MoveError> {
        let fail = self.source.fail();
        let mut conn = PgConnection::connect_with(&self.source.options).await.map_err(&fail)?;
        sqlx::query("SELECT set_config('indigo.move_releasing', $1, false)")
            .bind(self.tenant.to_string())
            .execute(&mut conn)
            .await
            .map_err(&fail)?;
        let mut deleted = 0;
        for table in self.tables.iter().rev() {
            let sql = format!(
                "DELETE FROM {name} WHERE ctid = ANY (ARRAY(SELECT ctid FROM {name} WHERE tenant_id = $1 LIMIT {DELETE_BATCH}))",
                name = table.name
            );
            loop {
                let batch = sqlx::query(AssertSqlSafe(sql.clone()))
                    .bind(self.tenant.0)
                    .execute(&mut conn)
                    .await
                    .map_err(&fail)?
                    .rows_affected();
                deleted += batch;
                if batch == 0 {
                    break;
                }
            }
        }
        let _ = conn.close().await;
        stop_capture(&self.source, self.tenant, &self.tables).await?;
        Ok(deleted)
    }

    /// Deletes the tenant's rows from the target (a move to the pool given up).
    pub async fn clear_target(&self) -> Result<u64, MoveError> {
        let fail = self.target.fail();
        let mut tx = self.target.begin().await?;
        let deleted = delete_rows(&mut tx, self.tenant, &self.tables).await.map_err(&fail)?;
        tx.commit().await.map_err(&fail)?;
        Ok(deleted)
    }
}

/// Forgets what the catch-up of `tenant`'s move wrote on `target` (the move is
/// over). Needs only the target: the source may be gone by then.
pub async fn forget_touched(target: &Database, tenant: TenantId) -> Result<(), MoveError> {
    Side::new(target, tenant).execute_for("DELETE FROM move_touched WHERE tenant = $1", tenant).await
}

fn compare(table: &Table, source: (i64, String), target: (i64, String)) -> Result<(), MoveError> {
    if source == target {
        return Ok(());
    }
    Err(MoveError::Mismatch {
        table: table.name.into(),
        source_rows: source.0,
        target_rows: target.0,
        source_sum: source.1,
        target_sum: target.1,
    })
}

fn trigger_names(tenant: TenantId) -> (String, String) {
    let id = tenant.0.simple();
    (format!("indigo_move_{id}_w"), format!("indigo_move_{id}_d"))
}

/// Drops the tenant's capture triggers, then its log, fence and touched keys.
/// The bookkeeping goes last, so an interrupted stop leaves the fence in place.
async fn stop_capture(side: &Side, tenant: TenantId, tables: &[Table]) -> Result<(), MoveError> {
    let (writes, deletes) = trigger_names(tenant);
    for table in tables {
        let name = table.name;
        side.alter_table(&format!(
            "DROP TRIGGER IF EXISTS {writes} ON {name}; DROP TRIGGER IF EXISTS {deletes} ON {name};"
        ))
        .await?;
    }
    let fail = side.fail();
    let mut tx = side.begin().await?;
    for sql in [
        "DELETE FROM move_changes WHERE tenant = $1",
        "DELETE FROM move_fences WHERE tenant = $1",
        "DELETE FROM move_touched WHERE tenant = $1",
    ] {
        sqlx::query(sql).bind(tenant.0).execute(&mut *tx).await.map_err(&fail)?;
    }
    tx.commit().await.map_err(&fail)
}

/// Deletes the tenant's rows, children first.
async fn delete_rows(conn: &mut PgConnection, tenant: TenantId, tables: &[Table]) -> Result<u64, sqlx::Error> {
    let mut deleted = 0;
    for table in tables.iter().rev() {
        deleted += sqlx::query(AssertSqlSafe(format!("DELETE FROM {} WHERE tenant_id = $1", table.name)))
            .bind(tenant.0)
            .execute(&mut *conn)
            .await?
            .rows_affected();
    }
    Ok(deleted)
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
