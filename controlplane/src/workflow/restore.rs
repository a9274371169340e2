//! A restore, started by `POST /v1/tenants/{tenant}/restores`: one tenant's
//! rows replaced by one of its backups, where they are or in a new silo.
//!
//! verify → safeguard → retire → rebuild → swap
//!
//! `verify` checks the backup is the tenant's, kept, and intact (every file
//! against its manifest); `safeguard` backs the tenant's rows up as they are,
//! so that the restore can itself be undone. Into a new silo only, `retire`
//! takes the tenant out of routing (its storefront answers 503) and deletes its
//! silo, and `rebuild` makes the silo again, empty. `swap` holds the tenant's writes
//! (the move's write pause: writes in flight end, new ones wait; no other
//! tenant waits), and in one transaction deletes its rows, loads the backup's,
//! reads them back against the manifest's checksums and leaves its mark. The
//! held writes then go on, onto the restored rows. A daemon that dies before
//! the commit leaves the rows as they were (its pause ends with its
//! connection); one that dies after finds the mark and does not swap again.
//! Into a new silo, the swap then routes the tenant to it.

use std::path::Path;

use indigo_core::api::{Placement, PlanChangeRefusal, RestoreInto, RestorePreview, RestoreTable};
use indigo_core::tenant::{Isolation, TenantId};
use indigo_tenantdb::moves;
use indigo_tenantdb::schema::TENANT_TABLES;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::{ConnectOptions, Connection};
use uuid::Uuid;

use super::{Definition, Kind, StepContext, StepError, export, transient, workflow_steps};
use crate::backups::{self, BackupStore, Fetched};
use crate::providers::{DatabaseProvider, SiloTenant};
use crate::status::StatusWrite;

pub struct Restore;

/// What starts a restore.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Input {
    pub backup_id: Uuid,
    #[serde(default)]
    pub into: RestoreInto,
}

workflow_steps! {
    pub enum Step {
        Verify => "verify",
        Safeguard => "safeguard",
        Retire => "retire",
        Rebuild => "rebuild",
        Swap => "swap",
    }
}

impl Definition for Restore {
    const KIND: Kind = Kind::Restore;
    type Step = Step;
    const STAGES: &'static [&'static [Step]] =
        &[&[Step::Verify], &[Step::Safeguard], &[Step::Retire], &[Step::Rebuild], &[Step::Swap]];

    async fn run<P: DatabaseProvider>(step: Step, cx: &StepContext<'_, P>) -> Result<Value, StepError> {
        match step {
            Step::Verify => verify(cx).await,
            Step::Safeguard => safeguard(cx).await,
            Step::Retire => retire(cx).await,
            Step::Rebuild => rebuild(cx).await,
            Step::Swap => swap(cx).await,
        }
    }

    /// Nothing to undo: the swap is one transaction, and a safeguard backup
    /// is a backup like any other. A silo retired is not brought back: the
    /// reconciler makes it again (empty; the safeguard backup holds its rows).
    async fn compensate<P: DatabaseProvider>(_step: Step, _cx: &StepContext<'_, P>) -> Result<(), StepError> {
        Ok(())
    }

    async fn on_failure<P: DatabaseProvider>(cx: &StepContext<'_, P>) -> Result<(), StepError> {
        let reason = cx.error.unwrap_or("the restore was cancelled");
        let retired = cx.outputs.get("retire").is_some_and(|o| o.get("skipped").is_none());
        let message = if retired {
            format!(
                "the restore into a new silo did not finish; its old silo is gone, its rows are in the safeguard backup: {reason}"
            )
        } else {
            format!("the restore did not happen; the tenant's rows are as they were: {reason}")
        };
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
    /// The dedicated data-plane service serving the tenant, kept through a new silo.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    service: Option<String>,
}

/// A silo `rebuild` made.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Rebuilt {
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
    let Input { backup_id, into } = input(cx)?;
    let tenant = super::tenant(cx).await?;
    if into == RestoreInto::NewSilo && !in_silo(&tenant) {
        return Err(StepError::Permanent(NOT_IN_SILO.into()));
    }
    let placement = tenant
        .status
        .placement
        .ok_or_else(|| StepError::Permanent("the tenant has no rows anywhere yet; nothing to restore".into()))?;
    let backup = backups::find(&cx.services.db, tenant.id, backup_id)
        .await?
        .ok_or_else(|| StepError::Permanent(format!("backup {backup_id} is not one of the tenant's kept backups")))?;
    let (_, manifest) = intact(&cx.services.backups, &backup.path, &backup.manifest_sha256, backup_id).await?;
    if manifest.tenant_id != tenant.id.to_string() {
        return Err(StepError::Permanent(format!("backup {backup_id} holds another tenant's rows")));
    }
    let rows = manifest.tables.iter().map(|t| t.rows).sum();
    let whereto = if into == RestoreInto::NewSilo { " into a new silo" } else { "" };
    let message =
        format!("restoring {}{whereto} from backup {backup_id} taken {}: {rows} rows", tenant.slug, backup.taken_at);
    super::publish(cx, "RestoreStarted", &message, json!({ "backup_id": backup_id, "rows": rows })).await?;
    let verified = Verified {
        backup_id,
        path: backup.path,
        manifest_sha256: backup.manifest_sha256,
        rows,
        database: placement.database,
        cluster: placement.cluster,
        service: placement.service,
    };
    Ok(json!(verified))
}

pub const NOT_IN_SILO: &str = "only a tenant served from a silo, on a silo plan, is restored into a new silo";

/// Whether the tenant is in a silo and its plan keeps it there: what a
/// restore into a new silo needs.
pub fn in_silo(tenant: &indigo_core::api::Tenant) -> bool {
    let placed = tenant.status.placement.as_ref().is_some_and(|p| p.isolation == Isolation::Silo);
    placed && tenant.spec.isolation == Isolation::Silo
}

/// The bundle at `location`, fetched from where backups are kept (a store
/// that does not answer may later), and its manifest, once the manifest is
/// found to be the one written when the backup was taken and every file to
/// match it (a backup that does not never will).
async fn intact(
    store: &BackupStore,
    location: &str,
    manifest_sha256: &str,
    backup: Uuid,
) -> Result<(Fetched, export::Manifest), StepError> {
    let fetched = store.fetch(location).await.map_err(StepError::Transient)?;
    let manifest = check_intact(&fetched, manifest_sha256)
        .await
        .map_err(|problem| StepError::Permanent(format!("backup {backup} is not intact: {problem}")))?;
    Ok((fetched, manifest))
}

/// The manifest of the bundle `fetched` if it is intact; what is wrong, as text, if not.
async fn check_intact(fetched: &Fetched, manifest_sha256: &str) -> Result<export::Manifest, String> {
    let (path, expected) = (fetched.path().to_owned(), manifest_sha256.to_owned());
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

/// What restoring `tenant` from `backup` (`into` where) would do, changing
/// nothing: each table's rows now and in the backup, whether the backup is
/// intact, and what would stop the restore. Into a new silo, a silo that does
/// not answer counts as empty: nothing of it would be kept.
pub async fn preview(
    db: &sqlx::PgPool,
    databases: &dyn crate::providers::ReachDatabases,
    store: &BackupStore,
    tenant: &indigo_core::api::Tenant,
    backup: &indigo_core::api::TenantBackup,
    into: RestoreInto,
) -> Result<RestorePreview, super::preview::PreviewError> {
    let now = match super::preview::footprint(databases, tenant).await {
        Err(super::preview::PreviewError::TenantDatabase(_) | super::preview::PreviewError::Unreached(_))
            if into == RestoreInto::NewSilo =>
        {
            TENANT_TABLES
                .iter()
                .map(|table| indigo_core::api::TableFootprint { table: (*table).to_owned(), rows: 0, bytes: 0 })
                .collect()
        }
        counted => counted?,
    };
    let fetched = store.fetch(&backup.path).await.map_err(super::preview::PreviewError::BackupStore)?;
    let checked = check_intact(&fetched, &backup.manifest_sha256).await;
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
    if into == RestoreInto::NewSilo && !in_silo(tenant) {
        refusals.push(PlanChangeRefusal { code: "not_in_silo".into(), message: NOT_IN_SILO.into() });
    }
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
        into,
        refusals,
    })
}

async fn safeguard<P: DatabaseProvider>(cx: &StepContext<'_, P>) -> Result<Value, StepError> {
    let Verified { database, cluster, .. } = verified(cx)?;
    let services = cx.services;
    if input(cx)?.into == RestoreInto::NewSilo {
        let tenant = super::tenant(cx).await?;
        if services.provider.observe_silo(&SiloTenant::of(&tenant, &services.plans)?).await?.is_none() {
            return Ok(json!({ "skipped": "the tenant's silo is gone; nothing of it to keep" }));
        }
    }
    let located = services.provider.reach(cluster.as_deref(), &database).await?;
    let backup = backups::take(&services.db, &located, &services.backups, cx.tenant_id.0, &services.failpoints)
        .await
        .map_err(transient)?;
    Ok(json!({ "backup_id": backup.id, "rows": backup.rows }))
}

/// Into a new silo: the tenant out of routing (its storefront answers 503
/// rather than serve an empty silo), then its silo deleted. Both are
/// idempotent, so a retried or resumed step does them again harmlessly.
async fn retire<P: DatabaseProvider>(cx: &StepContext<'_, P>) -> Result<Value, StepError> {
    if input(cx)?.into == RestoreInto::InPlace {
        return Ok(json!({ "skipped": "restored in place" }));
    }
    let Verified { database, cluster, .. } = verified(cx)?;
    let tenant = super::tenant(cx).await?;
    StatusWrite::new().placement(None).apply(&mut *cx.services.db.acquire().await?, cx.tenant_id).await?;
    cx.services.provider.delete_silo(&SiloTenant::of(&tenant, &cx.services.plans)?).await?;
    super::forget_database(cx, cluster.as_deref(), &database);
    super::publish(cx, "SiloRetired", &format!("{}'s silo {database} deleted for the restore", tenant.slug), json!({}))
        .await?;
    Ok(json!({ "deleted": database, "cluster": cluster }))
}

/// Into a new silo: the silo made again, empty, waited for until it serves.
async fn rebuild<P: DatabaseProvider>(cx: &StepContext<'_, P>) -> Result<Value, StepError> {
    if input(cx)?.into == RestoreInto::InPlace {
        return Ok(json!({ "skipped": "restored in place" }));
    }
    let tenant = super::tenant(cx).await?;
    let silo = cx.services.provider.ensure_silo(&SiloTenant::of(&tenant, &cx.services.plans)?).await?;
    if let Some(why) = silo.unavailable {
        return Err(StepError::Transient(format!("waiting for the tenant's new silo: {why}")));
    }
    // With the new silo empty: the tenant must answer 503 here, never an empty shop.
    cx.services.failpoints.hold(Kind::Restore, "rebuild").await;
    Ok(json!(Rebuilt { database: silo.database, cluster: silo.cluster }))
}

fn rebuilt<P>(cx: &StepContext<'_, P>) -> Result<Option<Rebuilt>, StepError> {
    match cx.outputs.get("rebuild") {
        Some(recorded) if recorded.get("skipped").is_none() => serde_json::from_value(recorded.clone())
            .map(Some)
            .map_err(|e| StepError::Permanent(format!("recorded silo: {e}"))),
        _ => Ok(None),
    }
}

/// What a swap did, kept in the tenant database with its mark.
#[derive(Debug, sqlx::FromRow)]
struct Mark {
    rows: i64,
    applied_at: chrono::DateTime<chrono::Utc>,
}

async fn swap<P: DatabaseProvider>(cx: &StepContext<'_, P>) -> Result<Value, StepError> {
    let Verified { backup_id, path, manifest_sha256, database, cluster, service, .. } = verified(cx)?;
    let tenant = super::tenant(cx).await?;
    let rebuilt = rebuilt(cx)?;
    let (database, cluster) = match &rebuilt {
        Some(silo) => (silo.database.clone(), silo.cluster.clone()),
        None => (database, cluster),
    };
    let placed_there = |p: &Placement| p.database == database && p.cluster == cluster;
    // Out of routing since `retire` (or routed to the new silo by a swap before a crash).
    let still_there = match (&tenant.status.placement, &rebuilt) {
        (None, Some(_)) => true,
        (placement, _) => placement.as_ref().is_some_and(placed_there),
    };
    if !still_there {
        return Err(StepError::Permanent("the tenant's rows moved since the restore began; not restoring".into()));
    }
    let reached = cx.services.provider.reach(cluster.as_deref(), &database).await?;
    let options = reached.server.owner_options(&reached.name);
    let mut conn = options.connect().await.map_err(transient)?;
    let new_silo = rebuilt.map(|_| Placement { isolation: Isolation::Silo, database, cluster, service });
    if let Some(mark) = mark(&mut conn, cx.workflow_id).await? {
        // Swapped before a crash: the tenant has written since; swapping again would lose that.
        route_to(cx, new_silo).await?;
        return finish(cx, &tenant.slug, backup_id, mark.rows, None, Some(mark.applied_at)).await;
    }
    // Checked again: the files could have changed since `verify`.
    let (fetched, manifest) = intact(&cx.services.backups, &path, &manifest_sha256, backup_id).await?;
    let pause = moves::hold_writes(&options, cx.tenant_id).await.map_err(transient)?;
    cx.services.failpoints.hold(Kind::Restore, "swap").await;
    let swapped = replace_rows(&mut conn, cx.tenant_id, cx.workflow_id, backup_id, fetched.path(), &manifest).await;
    // Taken before the release: no held write can have finished before it.
    let held_until = chrono::Utc::now();
    let held = pause.release().await;
    let _ = conn.close().await;
    let rows = swapped?;
    let held = Held { from: held_until - held, until: held_until };
    route_to(cx, new_silo).await?;
    finish(cx, &tenant.slug, backup_id, rows, Some(held), None).await
}

/// The tenant served from its new silo, when the restore made one.
async fn route_to<P>(cx: &StepContext<'_, P>, new_silo: Option<Placement>) -> Result<(), StepError> {
    if let Some(placement) = new_silo {
        StatusWrite::new()
            .placement(Some(placement))
            .apply(&mut *cx.services.db.acquire().await?, cx.tenant_id)
            .await?;
    }
    Ok(())
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
