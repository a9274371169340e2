//! Per-tenant backups (reference design §11). Cluster backups cannot give one
//! pool tenant its rows back without rewinding every other tenant, so each
//! tenant is also backed up on its own: a consistent snapshot of its rows (one
//! repeatable-read transaction under its row-level security), written as an
//! export bundle — one file per table with its row count and SHA-256, and a
//! manifest — kept in the [`BackupStore`]: under `<data_dir>/backups/<tenant>/<backup>`,
//! or in an S3 bucket on the AWS provider. The `backups` job
//! takes one for every serving tenant whose newest would be older than its
//! plan's RPO by the next run, keeps the plan's `backups_kept` newest, and
//! turns a tenant whose newest backup is older than its RPO into an event
//! (`BackupBehind`, then `BackupCaughtUp`). The `backup_drill` job restores
//! each tenant's newest backup into a scratch database and checks it there.
//!
//! A backup is recorded before it is written and marked taken only once its
//! bundle is complete and in place; one cut short (a crash, a failure) is
//! never listed or used, and the next run removes what it left.

use std::path::Path;

use chrono::{DateTime, Utc};
use indigo_core::api::TenantBackup;
use indigo_core::plan::PlanCatalog;
use indigo_core::tenant::TenantId;
use indigo_tenantdb::{Database, TenantDatabases};
use serde::Serialize;
use serde_json::json;
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use uuid::Uuid;

use crate::failpoints::{Failpoints, Point};
use crate::journal;
use crate::providers::ReachDatabases;
use crate::registry::{self, TenantRef};
use crate::workflow::export;

mod store;
pub use store::{BackupStore, Fetched};

pub const JOB: &str = "backups";

/// How often the job runs (its schedule in `jobs.rs`: every minute).
const RUN_EVERY: chrono::Duration = chrono::Duration::minutes(1);

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("tenant {tenant}: {message}")]
    Tenant { tenant: Uuid, message: String },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BackupReport {
    pub taken: u64,
    pub failed: u64,
    /// Backups cut short by an earlier run, removed.
    pub abandoned: u64,
    /// Backups past the plan's `backups_kept`, removed.
    pub pruned: u64,
    /// Serving tenants whose newest backup is older than their RPO after this run.
    pub behind: u64,
}

/// A serving tenant, where its rows are and when it was last backed up.
#[derive(sqlx::FromRow)]
struct Serving {
    id: Uuid,
    plan: String,
    database: String,
    cluster: Option<String>,
    created_at: DateTime<Utc>,
    newest: Option<DateTime<Utc>>,
}

/// One run of the job; `None` when another daemon is running it.
pub async fn run(
    db: &PgPool,
    databases: &dyn ReachDatabases,
    plans: &PlanCatalog,
    store: &BackupStore,
    failpoints: &Failpoints,
) -> Result<Option<BackupReport>, BackupError> {
    // One run at a time across daemons. The lock is this connection's, out of
    // the pool: closed when the run ends however it ends, it lets go.
    let mut lock = db.acquire().await?.detach();
    let locked: bool =
        sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext('indigo:job:backups'))").fetch_one(&mut lock).await?;
    if !locked {
        return Ok(None);
    }
    let report = run_locked(db, databases, plans, store, failpoints).await?;
    let _ = lock.close().await;
    Ok(Some(report))
}

async fn run_locked(
    db: &PgPool,
    databases: &dyn ReachDatabases,
    plans: &PlanCatalog,
    store: &BackupStore,
    failpoints: &Failpoints,
) -> Result<BackupReport, BackupError> {
    let mut report = BackupReport { abandoned: remove_abandoned(db, store).await?, ..BackupReport::default() };

    let serving: Vec<Serving> = sqlx::query_as(
        "SELECT t.id, t.plan, t.placement->>'database' AS database, t.placement->>'cluster' AS cluster, t.created_at,
                (SELECT max(b.taken_at) FROM tenant_backups b
                 WHERE b.tenant_id = t.id AND b.removed_at IS NULL) AS newest
         FROM tenants t WHERE t.lifecycle = 'active' AND t.placement IS NOT NULL ORDER BY t.id",
    )
    .fetch_all(db)
    .await?;
    for Serving { id: tenant, plan, database, cluster, created_at, newest } in serving {
        let Ok(plan) = plans.get(&plan) else { continue };
        // Taken a run early rather than a run late: the next run may be too late.
        let due_at = chrono::Duration::minutes(i64::from(plan.recovery.rpo_minutes)) - RUN_EVERY;
        let mut newest = newest;
        if newest.is_none_or(|taken| Utc::now() - taken >= due_at) {
            let taken = match databases.reach(cluster.as_deref(), &database).await {
                Ok(reached) => take(db, &reached, store, tenant, failpoints).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match taken {
                Ok(backup) => {
                    report.taken += 1;
                    newest = Some(backup.taken_at);
                }
                Err(error) => {
                    tracing::warn!(%tenant, %error, "cannot back the tenant up");
                    report.failed += 1;
                }
            }
        }
        report.pruned += prune(db, store, tenant, plan.recovery.backups_kept).await?;
        let behind = behind(newest, created_at, plan.recovery.rpo_minutes, Utc::now());
        report.behind += u64::from(behind);
        record_standing(db, TenantId(tenant), behind, plan.recovery.rpo_minutes).await?;
    }
    Ok(report)
}

/// The lock a backup being written is held under, by the session writing it.
fn writing_lock(backup: Uuid) -> i64 {
    i64::from_be_bytes(backup.as_bytes()[8..].try_into().expect("8 bytes"))
}

/// Removes the backups whose writer is gone (a crash, a failure): recorded,
/// never taken, and no session holds their writing lock. A backup being
/// written by another daemon or request is left alone.
async fn remove_abandoned(db: &PgPool, store: &BackupStore) -> Result<u64, sqlx::Error> {
    let unfinished: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT id, path FROM tenant_backups WHERE taken_at IS NULL AND removed_at IS NULL")
            .fetch_all(db)
            .await?;
    let mut removed = 0;
    for (id, path) in unfinished {
        let mut conn = db.acquire().await?;
        let free: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(writing_lock(id)).fetch_one(&mut *conn).await?;
        if free {
            sqlx::query("UPDATE tenant_backups SET removed_at = now() WHERE id = $1")
                .bind(id)
                .execute(&mut *conn)
                .await?;
            store.remove(&path).await;
            sqlx::query("SELECT pg_advisory_unlock($1)").bind(writing_lock(id)).execute(&mut *conn).await?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Takes a backup of `tenant`, whose rows are in `located`, now, whatever its
/// age. The failpoint `backup.write=crash-after-run` ends the process once the
/// bundle is written and before it is marked taken (the crash tests).
pub async fn take(
    db: &PgPool,
    located: &Database,
    store: &BackupStore,
    tenant: Uuid,
    failpoints: &Failpoints,
) -> Result<TenantBackup, BackupError> {
    let failed = |message: String| BackupError::Tenant { tenant, message };
    let record = registry::get(&mut *db.acquire().await?, &TenantRef::Id(TenantId(tenant)))
        .await
        .map_err(|e| failed(e.to_string()))?;
    let id = Uuid::now_v7();
    let (path, location) = store.place(tenant, id);
    // Held while the bundle is written, on a connection of its own that ends
    // with this function however it ends: the sweep leaves this backup alone.
    let mut writing = db.acquire().await?.detach();
    sqlx::query("SELECT pg_advisory_lock($1)").bind(writing_lock(id)).execute(&mut writing).await?;
    sqlx::query("INSERT INTO tenant_backups (id, tenant_id, path) VALUES ($1, $2, $3)")
        .bind(id)
        .bind(tenant)
        .bind(&location)
        .execute(db)
        .await?;
    // The tenant's database failing is the tenant's backup failing, not the control plane's.
    let in_tenant_db = |e: sqlx::Error| failed(format!("its database {}: {e}", located.name));
    let mut conn = located.server.owner_options(&located.name).connect().await.map_err(in_tenant_db)?;
    // One snapshot for every table: the rows as they were at one instant.
    let mut tx = conn.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await.map_err(in_tenant_db)?;
    sqlx::query("SELECT set_config('app.current_tenant', $1, true)")
        .bind(tenant.to_string())
        .execute(&mut *tx)
        .await
        .map_err(in_tenant_db)?;
    let bundle =
        export::write(Some(&mut *tx), &path, &record, Some(&located.name)).await.map_err(|e| failed(e.to_string()))?;
    tx.commit().await.map_err(in_tenant_db)?;
    store.keep(&path, &location).await.map_err(failed)?;
    failpoints.crash_at("backup", "write", Point::AfterRun);
    let rows: u64 = bundle.manifest.tables.iter().map(|t| t.rows).sum();
    let taken_at: DateTime<Utc> = sqlx::query_scalar(
        "UPDATE tenant_backups SET taken_at = now(), manifest_sha256 = $2, rows = $3 WHERE id = $1 RETURNING taken_at",
    )
    .bind(id)
    .bind(&bundle.manifest_sha256)
    .bind(i64::try_from(rows).unwrap_or(i64::MAX))
    .fetch_one(db)
    .await?;
    let _ = writing.close().await;
    Ok(TenantBackup {
        id,
        taken_at,
        rows,
        manifest_sha256: bundle.manifest_sha256,
        path: location,
        drilled_at: None,
        drill_problem: None,
    })
}

/// Removes `tenant`'s taken backups beyond the `kept` newest.
async fn prune(db: &PgPool, store: &BackupStore, tenant: Uuid, kept: u32) -> Result<u64, sqlx::Error> {
    let old: Vec<String> = sqlx::query_scalar(
        "UPDATE tenant_backups SET removed_at = now()
         WHERE id IN (SELECT id FROM tenant_backups WHERE tenant_id = $1 AND taken_at IS NOT NULL AND removed_at IS NULL
                      ORDER BY taken_at DESC OFFSET $2)
         RETURNING path",
    )
    .bind(tenant)
    .bind(i64::from(kept))
    .fetch_all(db)
    .await?;
    for path in &old {
        store.remove(path).await;
    }
    Ok(old.len() as u64)
}

/// Keeps whether `tenant`'s newest backup is older than its RPO; an event when that changes.
async fn record_standing(db: &PgPool, tenant: TenantId, behind: bool, rpo_minutes: u32) -> Result<(), sqlx::Error> {
    let mut tx = db.begin().await?;
    let was: Option<bool> = sqlx::query_scalar("SELECT behind FROM backup_standing WHERE tenant_id = $1 FOR UPDATE")
        .bind(tenant.0)
        .fetch_optional(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO backup_standing (tenant_id, behind, checked_at) VALUES ($1, $2, now())
         ON CONFLICT (tenant_id) DO UPDATE SET behind = $2, checked_at = now()",
    )
    .bind(tenant.0)
    .bind(behind)
    .execute(&mut *tx)
    .await?;
    match (was, behind) {
        (Some(false) | None, true) => {
            let message = format!("the tenant's newest backup is older than its plan's RPO of {rpo_minutes} min");
            journal::publish(&mut tx, Some(tenant), "BackupBehind", &message, json!({ "rpo_minutes": rpo_minutes }))
                .await?;
        }
        (Some(true), false) => {
            let message = format!("the tenant is backed up within its plan's RPO of {rpo_minutes} min again");
            journal::publish(&mut tx, Some(tenant), "BackupCaughtUp", &message, json!({ "rpo_minutes": rpo_minutes }))
                .await?;
        }
        _ => {}
    }
    tx.commit().await
}

/// Whether a tenant created at `created_at`, whose newest backup was taken
/// at `newest`, is behind an RPO of `rpo_minutes` at `now`: its newest backup
/// is older than that, or it has none and is older than that itself.
pub fn behind(newest: Option<DateTime<Utc>>, created_at: DateTime<Utc>, rpo_minutes: u32, now: DateTime<Utc>) -> bool {
    now - newest.unwrap_or(created_at) > chrono::Duration::minutes(i64::from(rpo_minutes))
}

#[derive(sqlx::FromRow)]
struct Taken {
    id: Uuid,
    taken_at: DateTime<Utc>,
    rows: Option<i64>,
    manifest_sha256: Option<String>,
    path: String,
    drilled_at: Option<DateTime<Utc>>,
    drill_problem: Option<String>,
}

impl From<Taken> for TenantBackup {
    fn from(row: Taken) -> Self {
        Self {
            id: row.id,
            taken_at: row.taken_at,
            rows: row.rows.and_then(|n| u64::try_from(n).ok()).unwrap_or_default(),
            manifest_sha256: row.manifest_sha256.unwrap_or_default(),
            path: row.path,
            drilled_at: row.drilled_at,
            drill_problem: row.drill_problem,
        }
    }
}

const TAKEN: &str = "SELECT id, taken_at, rows, manifest_sha256, path, drilled_at, drill_problem FROM tenant_backups
                     WHERE tenant_id = $1 AND taken_at IS NOT NULL AND removed_at IS NULL";

/// `tenant`'s taken backups, newest first.
pub async fn list(db: &PgPool, tenant: TenantId) -> Result<Vec<TenantBackup>, sqlx::Error> {
    let rows: Vec<Taken> = sqlx::query_as(sqlx::AssertSqlSafe(format!("{TAKEN} ORDER BY taken_at DESC")))
        .bind(tenant.0)
        .fetch_all(db)
        .await?;
    Ok(rows.into_iter().map(TenantBackup::from).collect())
}

/// `tenant`'s backup `backup`, if it was taken and is still kept.
pub async fn find(db: &PgPool, tenant: TenantId, backup: Uuid) -> Result<Option<TenantBackup>, sqlx::Error> {
    let row: Option<Taken> = sqlx::query_as(sqlx::AssertSqlSafe(format!("{TAKEN} AND id = $2")))
        .bind(tenant.0)
        .bind(backup)
        .fetch_optional(db)
        .await?;
    Ok(row.map(TenantBackup::from))
}

/// The restore drill's job: each serving tenant's newest backup restored into
/// a scratch database and checked, hourly.
pub const DRILL_JOB: &str = "backup_drill";

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DrillReport {
    pub drilled: u64,
    /// Backups that did not restore intact (each also a `BackupDrillFailed` event).
    pub failed: u64,
}

/// Rows restored per statement.
const RESTORE_BATCH: usize = 500;

/// Drills the newest backup of every serving tenant; `None` when another daemon is at it.
pub async fn drill_all(
    db: &PgPool,
    dbs: &TenantDatabases,
    store: &BackupStore,
) -> Result<Option<DrillReport>, BackupError> {
    let mut lock = db.acquire().await?.detach();
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext('indigo:job:backup_drill'))")
        .fetch_one(&mut lock)
        .await?;
    if !locked {
        return Ok(None);
    }
    let newest: Vec<(Uuid, Uuid, String)> = sqlx::query_as(
        "SELECT DISTINCT ON (b.tenant_id) b.id, b.tenant_id, b.path FROM tenant_backups b
         JOIN tenants t ON t.id = b.tenant_id AND t.lifecycle = 'active'
         WHERE b.taken_at IS NOT NULL AND b.removed_at IS NULL ORDER BY b.tenant_id, b.taken_at DESC",
    )
    .fetch_all(db)
    .await?;
    let mut report = DrillReport::default();
    for (backup, tenant, path) in newest {
        // A store that does not answer says nothing about the backup: it is drilled next time.
        let fetched = match store.fetch(&path).await {
            Ok(fetched) => fetched,
            Err(error) => {
                tracing::warn!(%backup, %error, "cannot fetch a backup to drill it");
                continue;
            }
        };
        let problem = drill(dbs, fetched.path()).await.err();
        report.drilled += 1;
        report.failed += u64::from(problem.is_some());
        let mut tx = db.begin().await?;
        sqlx::query("UPDATE tenant_backups SET drilled_at = now(), drill_problem = $2 WHERE id = $1")
            .bind(backup)
            .bind(&problem)
            .execute(&mut *tx)
            .await?;
        if let Some(problem) = &problem {
            let message = format!("the tenant's newest backup does not restore intact: {problem}");
            let data = json!({ "backup_id": backup, "problem": problem });
            journal::publish(&mut tx, Some(TenantId(tenant)), "BackupDrillFailed", &message, data).await?;
        }
        tx.commit().await?;
    }
    let _ = lock.close().await;
    Ok(Some(report))
}

/// Restores the bundle at `path` into a scratch database of its own on the
/// tenant server, under its tenant's RLS, and checks every table's rows and
/// checksum there against the bundle's manifest; the scratch database is
/// dropped afterwards. `Err` says what is wrong: a file that does not match
/// its manifest, a row that does not load, or a table that reads back
/// otherwise than it was written.
pub async fn drill(dbs: &TenantDatabases, path: &Path) -> Result<(), String> {
    let manifest = export::verify(path)?;
    let scratch = format!("indigo_drill_{}", Uuid::new_v4().simple());
    let server = &dbs.server;
    let restored = async {
        server.provision(&scratch).await.map_err(|e| e.to_string())?;
        restore_and_compare(server, &scratch, path, &manifest).await
    }
    .await;
    if let Err(error) = server.drop_database(&scratch).await {
        tracing::warn!(%error, database = %scratch, "cannot drop a restore drill's scratch database");
    }
    restored
}

async fn restore_and_compare(
    server: &indigo_tenantdb::schema::TenantServer,
    scratch: &str,
    path: &Path,
    manifest: &export::Manifest,
) -> Result<(), String> {
    let mut conn = server.owner_options(scratch).connect().await.map_err(failed("the scratch database"))?;
    let mut tx = conn.begin().await.map_err(failed("the scratch database"))?;
    sqlx::query("SELECT set_config('app.current_tenant', $1, true)")
        .bind(&manifest.tenant_id)
        .execute(&mut *tx)
        .await
        .map_err(failed("the tenant's context"))?;
    load(&mut tx, path, manifest).await?;
    let outcome = compare(&mut tx, path, manifest).await;
    // Nothing of the drill is kept: the scratch database is dropped after.
    let _ = tx.rollback().await;
    outcome
}

fn failed(what: &str) -> impl FnOnce(sqlx::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// Inserts the rows of the bundle at `path` through `conn`, a transaction
/// bound to the bundle's tenant, parents first as the bundle lists them;
/// returns how many.
pub(crate) async fn load(conn: &mut PgConnection, path: &Path, manifest: &export::Manifest) -> Result<u64, String> {
    use tokio::io::AsyncBufReadExt;
    let mut loaded = 0;
    for table in &manifest.tables {
        let columns: Vec<String> = sqlx::query_scalar(
            "SELECT quote_ident(attname) FROM pg_attribute
             WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped AND attgenerated = ''
             ORDER BY attnum",
        )
        .bind(&table.table)
        .fetch_all(&mut *conn)
        .await
        .map_err(failed(&table.table))?;
        let columns = columns.join(", ");
        let insert = format!(
            "INSERT INTO {t} ({columns}) SELECT {columns} FROM json_populate_recordset(NULL::{t}, $1::json)",
            t = table.table
        );
        let file = tokio::fs::File::open(path.join(&table.file)).await.map_err(|e| format!("{}: {e}", table.file))?;
        let mut lines = tokio::io::BufReader::new(file).lines();
        let mut batch = Vec::with_capacity(RESTORE_BATCH);
        loop {
            let line = lines.next_line().await.map_err(|e| format!("{}: {e}", table.file))?;
            let done = line.is_none();
            batch.extend(line);
            if batch.len() == RESTORE_BATCH || (done && !batch.is_empty()) {
                loaded += sqlx::query(sqlx::AssertSqlSafe(insert.clone()))
                    .bind(format!("[{}]", batch.join(",")))
                    .execute(&mut *conn)
                    .await
                    .map_err(failed(&table.table))?
                    .rows_affected();
                batch.clear();
            }
            if done {
                break;
            }
        }
    }
    Ok(loaded)
}

/// Reads every table of the bundle's tenant back through `conn` as a backup
/// writes it, and compares rows and checksum with the manifest: the same rows
/// give the same checksum.
pub(crate) async fn compare(conn: &mut PgConnection, path: &Path, manifest: &export::Manifest) -> Result<(), String> {
    // Beside the bundle (its rows are the tenant's), one per reader.
    let readback = path.with_extension(format!("readback-{}", Uuid::new_v4().simple()));
    tokio::fs::create_dir_all(&readback).await.map_err(|e| format!("{}: {e}", readback.display()))?;
    let mut outcome = Ok(());
    for table in &manifest.tables {
        match export::write_table(conn, &table.table, &readback.join(&table.file)).await {
            Ok((rows, sha256)) if rows == table.rows && sha256 == table.sha256 => {}
            Ok((rows, _)) => {
                outcome = Err(format!(
                    "{} reads back as {rows} rows with another checksum than the backup's {} rows",
                    table.table, table.rows
                ));
                break;
            }
            Err(error) => {
                outcome = Err(format!("{}: {error}", table.table));
                break;
            }
        }
    }
    let _ = tokio::fs::remove_dir_all(&readback).await;
    outcome
}
