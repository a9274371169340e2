//! A restore, started by `POST /v1/tenants/{tenant}/restores`: one tenant's
//! rows replaced, where they are, by one of its backups.
//!
//! verify → safeguard → swap
//!
//! `verify` checks the backup is the tenant's, kept, and intact (every file
//! against its manifest); `safeguard` backs the tenant's rows up as they are,
//! so that the restore can itself be undone; `swap` holds the tenant's writes
//! (the move's write pause: writes in flight end, new ones wait; no other
//! tenant waits), and in one transaction deletes its rows, loads the backup's,
//! reads them back against the manifest's checksums and leaves its mark. The
//! held writes then go on, onto the restored rows. A daemon that dies before
//! the commit leaves the rows as they were (its pause ends with its
//! connection); one that dies after finds the mark and does not swap again.

use std::path::Path;

use indigo_core::api::{PlanChangeRefusal, RestorePreview, RestoreTable};
use indigo_core::tenant::TenantId;
use indigo_tenantdb::moves;
use indigo_tenantdb::schema::TENANT_TABLES;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::{ConnectOptions, Connection};
use uuid::Uuid;

use super::{Definition, Kind, StepContext, StepError, export, transient, workflow_steps};
use crate::backups;
use crate::providers::DatabaseProvider;

pub struct Restore;

/// What starts a restore.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Input {
    pub backup_id: Uuid,
}

workflow_steps! {
    pub enum Step {
        Verify => "verify",
        Safeguard => "safeguard",
        Swap => "swap",
    }
}

impl Definition for Restore {
    const KIND: Kind = Kind::Restore;
    type Step = Step;
    const STAGES: &'static [&'static [Step]] = &[&[Step::Verify], &[Step::Safeguard], &[Step::Swap]];

    async fn run<P: DatabaseProvider>(step: Step, cx: &StepContext<'_, P>) -> Result<Value, StepError> {
        match step {
            Step::Verify => verify(cx).await,
            Step::Safeguard => safeguard(cx).await,
            Step::Swap => swap(cx).await,
        }
    }

    /// Nothing to undo: the swap is one transaction, and a safeguard backup
    /// is a backup like any other.
    async fn compensate<P: DatabaseProvider>(_step: Step, _cx: &StepContext<'_, P>) -> Result<(), StepError> {
        Ok(())
    }

    async fn on_failure<P: DatabaseProvider>(cx: &StepContext<'_, P>) -> Result<(), StepError> {
        let reason = cx.error.unwrap_or("the restore was cancelled");
        let message = format!("the restore did not happen; the tenant's rows are as they were: {reason}");
        super::publish(cx, "RestoreFailed", &message, json!({ "reason": reason })).await
    }
}

/// Where the tenant's rows are, and the backup that replaces them, as `verify` found them.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Verified {
    backup_id: Uuid,
    path: String,
    manifest_sha256: String,
    rows: u64,
    database: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cluster: Option<String>,
}

fn input<P>(cx: &StepContext<'_, P>) -> Result<Input, StepError> {
    serde_json::from_value(cx.input.clone()).map_err(|e| StepError::Permanent(format!("workflow input: {e}")))
}

fn verified<P>(cx: &StepContext<'_, P>) -> Result<Verified, StepError> {
    let recorded = cx.outputs.get("verify").cloned().unwrap_or_default();
    serde_json::from_value(recorded).map_err(|e| StepError::Permanent(format!("recorded verification: {e}")))
}

async fn verify<P>(cx: &StepContext<'_, P>) -> Result<Value, StepError> {
    let Input { backup_id } = input(cx)?;
    let tenant = super::tenant(cx).await?;
    let placement = tenant
        .status
        .placement
        .ok_or_else(|| StepError::Permanent("the tenant has no rows anywhere yet; nothing to restore".into()))?;
    let backup = backups::find(&cx.services.db, tenant.id, backup_id)
        .await?
        .ok_or_else(|| StepError::Permanent(format!("backup {backup_id} is not one of the tenant's kept backups")))?;
    let manifest = intact(&backup.path, &backup.manifest_sha256, backup_id).await?;
    if manifest.tenant_id != tenant.id.to_string() {
        return Err(StepError::Permanent(format!("backup {backup_id} holds another tenant's rows")));
    }
    let rows = manifest.tables.iter().map(|t| t.rows).sum();
    let message = format!("restoring {} from backup {backup_id} taken {}: {rows} rows", tenant.slug, backup.taken_at);
    super::publish(cx, "RestoreStarted", &message, json!({ "backup_id": backup_id, "rows": rows })).await?;
    let verified = Verified {
        backup_id,
        path: backup.path,
        manifest_sha256: backup.manifest_sha256,
        rows,
        database: placement.database,
        cluster: placement.cluster,
    };
    Ok(json!(verified))
}

/// The manifest of the bundle at `path`, once the manifest is found to be the
/// one written when the backup was taken and every file to match it.
async fn intact(path: &str, manifest_sha256: &str, backup: Uuid) -> Result<export::Manifest, StepError> {
    check_intact(path, manifest_sha256)
        .await
        .map_err(|problem| StepError::Permanent(format!("backup {backup} is not intact: {problem}")))
}

/// [`intact`], with what is wrong as text.
async fn check_intact(path: &str, manifest_sha256: &str) -> Result<export::Manifest, String> {
    let (path, expected) = (std::path::PathBuf::from(path), manifest_sha256.to_owned());
    tokio::task::spawn_blocking(move || {
        let manifest = path.join(export::MANIFEST);
        let bytes = std::fs::read(&manifest).map_err(|e| format!("{}: {e}", manifest.display()))?;
        if hex::encode(Sha256::digest(&bytes)) != expected {
            return Err("its manifest is not the one written when it was taken".to_owned());
        }
        export::verify(&path)
    })
    .await
    .map_err(|e| e.to_string())?
}

/// What restoring `tenant` from `backup` would do, changing nothing: each
/// table's rows now and in the backup, whether the backup is intact, and what
/// would stop the restore.
pub async fn preview(
    db: &sqlx::PgPool,
    dbs: &indigo_tenantdb::TenantDatabases,
    tenant: &indigo_core::api::Tenant,
    backup: &indigo_core::api::TenantBackup,
) -> Result<RestorePreview, super::preview::PreviewError> {
    let now = super::preview::footprint(dbs, tenant).await?;
    let checked = check_intact(&backup.path, &backup.manifest_sha256).await;
    let in_backup = |table: &str| match &checked {
        Ok(manifest) => manifest.tables.iter().find(|t| t.table == table).map_or(0, |t| t.rows),
        Err(_) => 0,
    };
    let tables: Vec<RestoreTable> = now
        .iter()
        .map(|t| RestoreTable {
            table: t.table.clone(),
            rows_now: u64::try_from(t.rows).unwrap_or_default(),
            rows_in_backup: in_backup(&t.table),
        })
        .collect();
    let mut refusals = Vec::new();
    if let Err(problem) = &checked {
        refusals.push(PlanChangeRefusal {
            code: "not_intact".into(),
            message: format!("the backup is not intact: {problem}"),
        });
    }
    if let Some((id, kind)) = super::active_for(&mut *db.acquire().await?, tenant.id).await? {
        refusals.push(PlanChangeRefusal {
            code: "workflow_in_progress".into(),
            message: format!("its {kind} workflow {id} is still running"),
        });
    }
    Ok(RestorePreview {
        tenant_id: tenant.id,
        backup_id: backup.id,
        taken_at: backup.taken_at,
        rows_now: tables.iter().map(|t| t.rows_now).sum(),
        rows_in_backup: tables.iter().map(|t| t.rows_in_backup).sum(),
        tables,
        intact: checked.is_ok(),
        refusals,
    })
}

async fn safeguard<P: DatabaseProvider>(cx: &StepContext<'_, P>) -> Result<Value, StepError> {
    let Verified { database, cluster, .. } = verified(cx)?;
    let services = cx.services;
    let located = services.provider.reach(cluster.as_deref(), &database).await?;
    let backup = backups::take(&services.db, &located, &services.backups_dir, cx.tenant_id.0, &services.failpoints)
        .await
        .map_err(transient)?;
    Ok(json!({ "backup_id": backup.id, "rows": backup.rows }))
}

/// What a swap did, kept in the tenant database with its mark.
#[derive(Debug, sqlx::FromRow)]
struct Mark {
    rows: i64,
    applied_at: chrono::DateTime<chrono::Utc>,
}

async fn swap<P: DatabaseProvider>(cx: &StepContext<'_, P>) -> Result<Value, StepError> {
    let Verified { backup_id, path, manifest_sha256, database, cluster, .. } = verified(cx)?;
    let tenant = super::tenant(cx).await?;
    let still_there = tenant.status.placement.as_ref().is_some_and(|p| p.database == database && p.cluster == cluster);
    if !still_there {
        return Err(StepError::Permanent("the tenant's rows moved since the restore began; not restoring".into()));
    }
    let reached = cx.services.provider.reach(cluster.as_deref(), &database).await?;
    let options = reached.server.owner_options(&reached.name);
    let mut conn = options.connect().await.map_err(transient)?;
    if let Some(mark) = mark(&mut conn, cx.workflow_id).await? {
        // Swapped before a crash: the tenant has written since; swapping again would lose that.
        return finish(cx, &tenant.slug, backup_id, mark.rows, None, Some(mark.applied_at)).await;
    }
    // Checked again: the files could have changed since `verify`.
    let manifest = intact(&path, &manifest_sha256, backup_id).await?;
    let pause = moves::hold_writes(&options, cx.tenant_id).await.map_err(transient)?;
    cx.services.failpoints.hold(Kind::Restore, "swap").await;
    let swapped = replace_rows(&mut conn, cx.tenant_id, cx.workflow_id, backup_id, Path::new(&path), &manifest).await;
    // Taken before the release: no held write can have finished before it.
    let held_until = chrono::Utc::now();
    let held = pause.release().await;
    let _ = conn.close().await;
    let rows = swapped?;
    let held = Held { from: held_until - held, until: held_until };
    finish(cx, &tenant.slug, backup_id, rows, Some(held), None).await
}

/// When the tenant's writes were held.
struct Held {
    from: chrono::DateTime<chrono::Utc>,
    until: chrono::DateTime<chrono::Utc>,
}

async fn mark(conn: &mut sqlx::PgConnection, workflow: Uuid) -> Result<Option<Mark>, StepError> {
    sqlx::query_as("SELECT rows, applied_at FROM restore_marks WHERE workflow_id = $1")
        .bind(workflow)
        .fetch_optional(conn)
        .await
        .map_err(transient)
}

/// In one transaction bound to `tenant`: its rows deleted, the backup's
/// loaded and read back against the manifest, the mark left. Returns the rows
/// loaded. Nothing changes unless all of it succeeds.
async fn replace_rows(
    conn: &mut sqlx::PgConnection,
    tenant: TenantId,
    workflow: Uuid,
    backup: Uuid,
    path: &Path,
    manifest: &export::Manifest,
) -> Result<i64, StepError> {
    let mut tx = conn.begin().await.map_err(transient)?;
    sqlx::query("SELECT set_config('app.current_tenant', $1, true)")
        .bind(tenant.to_string())
        .execute(&mut *tx)
        .await
        .map_err(transient)?;
    // Children first, so that foreign keys hold at every step.
    for table in TENANT_TABLES.iter().rev() {
        sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table}"))).execute(&mut *tx).await.map_err(transient)?;
    }
    let rows = backups::load(&mut tx, path, manifest).await.map_err(StepError::Permanent)?;
    backups::compare(&mut tx, path, manifest).await.map_err(StepError::Permanent)?;
    let rows = i64::try_from(rows).unwrap_or(i64::MAX);
    sqlx::query("INSERT INTO restore_marks (workflow_id, tenant, backup_id, rows) VALUES ($1, $2, $3, $4)")
        .bind(workflow)
        .bind(tenant.0)
        .bind(backup)
        .bind(rows)
        .execute(&mut *tx)
        .await
        .map_err(transient)?;
    tx.commit().await.map_err(transient)?;
    Ok(rows)
}

/// After the swap: cached catalogue reads of the tenant are not served again
/// (the routing version is part of their key), and the restore is an event.
async fn finish<P>(
    cx: &StepContext<'_, P>,
    slug: &indigo_core::tenant::Slug,
    backup_id: Uuid,
    rows: i64,
    held: Option<Held>,
    swapped_before: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<Value, StepError> {
    super::bump_routing_version(cx).await?;
    let pause_ms = held.as_ref().map(|held| (held.until - held.from).num_milliseconds());
    let message = match pause_ms {
        Some(ms) => format!("{slug} restored from backup {backup_id}: {rows} rows; writes held {ms} ms"),
        None => format!("{slug} restored from backup {backup_id}: {rows} rows"),
    };
    let data = json!({ "backup_id": backup_id, "rows": rows, "pause_ms": pause_ms });
    super::publish(cx, "TenantRestored", &message, data).await?;
    Ok(json!({
        "backup_id": backup_id, "rows": rows, "pause_ms": pause_ms,
        "held_from": held.as_ref().map(|h| h.from), "held_until": held.as_ref().map(|h| h.until),
        "swapped_before_a_crash": swapped_before,
    }))
}
