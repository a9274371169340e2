//! The export bundle offboarding writes before anything is deleted: one JSON
//! Lines file per tenant table and a `manifest.json` with each file's row count
//! and SHA-256, so the bundle can be verified long after the data is gone.
//! Rows are streamed to disk one by one, never held in memory as a table. A
//! bundle is kept for hand-over (`export_retention_hours`), then removed by the
//! housekeeping job, which records that in the audit log.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use indigo_core::api::Tenant;
use indigo_core::tenant::TenantId;
use indigo_tenantdb::schema::TENANT_TABLES;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{StepError, transient};
use crate::journal::{Actor, Audit};

pub const MANIFEST: &str = "manifest.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableExport {
    pub table: String,
    pub file: String,
    pub rows: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub tenant_id: String,
    pub slug: String,
    pub plan: String,
    pub database: Option<String>,
    pub exported_at: chrono::DateTime<chrono::Utc>,
    pub tables: Vec<TableExport>,
}

/// What the export step records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bundle {
    pub path: PathBuf,
    pub manifest_sha256: String,
    pub manifest: Manifest,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> StepError + '_ {
    move |e| StepError::Transient(format!("export bundle {}: {e}", path.display()))
}

/// Writes the bundle of `tenant` into `dir`, reading through `conn` (a
/// transaction bound to the tenant, or `None` when it has no data anywhere).
/// Written aside and renamed into place, so a crash never leaves half a bundle
/// where a complete one is expected.
pub async fn write(
    conn: Option<&mut PgConnection>,
    dir: &Path,
    tenant: &Tenant,
    database: Option<&str>,
) -> Result<Bundle, StepError> {
    let partial = dir.with_extension("partial");
    if partial.exists() {
        tokio::fs::remove_dir_all(&partial).await.map_err(io(&partial))?;
    }
    // Customers' names and emails: readable by the daemon's user alone, from the start.
    tokio::fs::DirBuilder::new().recursive(true).mode(0o700).create(&partial).await.map_err(io(&partial))?;
    let mut tables = Vec::new();
    if let Some(conn) = conn {
        for table in TENANT_TABLES {
            let file = format!("{table}.jsonl");
            let (rows, sha256) = write_table(conn, table, &partial.join(&file)).await?;
            tables.push(TableExport { table: (*table).to_owned(), file, rows, sha256 });
        }
    }
    let manifest = Manifest {
        format: "indigo-export/1".into(),
        tenant_id: tenant.id.to_string(),
        slug: tenant.slug.to_string(),
        plan: tenant.spec.plan.to_string(),
        database: database.map(str::to_owned),
        exported_at: chrono::Utc::now(),
        tables,
    };
    let manifest_bytes = serde_json::to_vec_pretty(&manifest).map_err(|e| StepError::Permanent(e.to_string()))?;
    let manifest_path = partial.join(MANIFEST);
    write_private(&manifest_path, &manifest_bytes).await?;
    if dir.exists() {
        tokio::fs::remove_dir_all(dir).await.map_err(io(dir))?;
    }
    tokio::fs::rename(&partial, dir).await.map_err(io(dir))?;
    Ok(Bundle { path: dir.to_owned(), manifest_sha256: hex::encode(Sha256::digest(&manifest_bytes)), manifest })
}

/// Streams `table` into `path` as JSON Lines, one row at a time; returns the
/// rows written and the file's SHA-256.
pub(crate) async fn write_table(conn: &mut PgConnection, table: &str, path: &Path) -> Result<(u64, String), StepError> {
    use futures_util::TryStreamExt;
    use tokio::io::AsyncWriteExt;
    let mut file = tokio::io::BufWriter::new(create_private(path).await?);
    let mut digest = Sha256::new();
    let mut rows = 0u64;
    // Ordered, so that the same data always gives the same checksum.
    let mut lines = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(format!(
        "SELECT row_to_json(t)::text AS line FROM {table} t ORDER BY line"
    )))
    .fetch(conn);
    while let Some(mut line) = lines.try_next().await.map_err(transient)? {
        line.push('\n');
        digest.update(line.as_bytes());
        file.write_all(line.as_bytes()).await.map_err(io(path))?;
        rows += 1;
    }
    file.flush().await.map_err(io(path))?;
    Ok((rows, hex::encode(digest.finalize())))
}

/// Creates `path` readable and writable by its owner alone (0600).
async fn create_private(path: &Path) -> Result<tokio::fs::File, StepError> {
    tokio::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).await.map_err(io(path))
}

/// Creates `path` readable and writable by its owner alone (0600) and writes `bytes`.
async fn write_private(path: &Path, bytes: &[u8]) -> Result<(), StepError> {
    use tokio::io::AsyncWriteExt;
    let mut file = create_private(path).await?;
    file.write_all(bytes).await.map_err(io(path))?;
    file.flush().await.map_err(io(path))
}

/// Keeps `bundle` of `workflow`'s tenant on record, to be removed after `remove_after`.
pub async fn record(
    db: &PgPool,
    workflow: Uuid,
    tenant: TenantId,
    bundle: &Bundle,
    remove_after: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO export_bundles (workflow_id, tenant_id, path, manifest_sha256, remove_after)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (workflow_id) DO UPDATE SET path = $3, manifest_sha256 = $4, written_at = now(),
             remove_after = $5, removed_at = NULL",
    )
    .bind(workflow)
    .bind(tenant.0)
    .bind(bundle.path.to_string_lossy().as_ref())
    .bind(&bundle.manifest_sha256)
    .bind(remove_after)
    .execute(db)
    .await?;
    Ok(())
}

/// Forgets the bundle of `workflow` (its offboarding was undone and the bundle removed with it).
pub async fn forget(db: &PgPool, workflow: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM export_bundles WHERE workflow_id = $1").bind(workflow).execute(db).await?;
    Ok(())
}

/// Removes every bundle kept past its time whose offboarding has ended, and
/// records each removal in the audit log; returns how many were removed.
pub async fn remove_expired(db: &PgPool) -> Result<u64, String> {
    let due: Vec<(Uuid, Uuid, String, String)> = sqlx::query_as(
        "SELECT b.workflow_id, b.tenant_id, b.path, b.manifest_sha256 FROM export_bundles b
           JOIN workflows w ON w.id = b.workflow_id
          WHERE b.removed_at IS NULL AND b.remove_after <= now() AND w.state NOT IN ('running', 'compensating')",
    )
    .fetch_all(db)
    .await
    .map_err(|e| e.to_string())?;
    let mut removed = 0;
    for (workflow, tenant, path, manifest_sha256) in due {
        let found = match tokio::fs::remove_dir_all(&path).await {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(format!("export bundle {path}: {e}")),
        };
        let mut tx = db.begin().await.map_err(|e| e.to_string())?;
        let marked =
            sqlx::query("UPDATE export_bundles SET removed_at = now() WHERE workflow_id = $1 AND removed_at IS NULL")
                .bind(workflow)
                .execute(&mut *tx)
                .await
                .map_err(|e| e.to_string())?
                .rows_affected();
        if marked == 1 {
            Audit {
                actor: &Actor::system("offboarding"),
                action: "tenant.export_removed",
                tenant_id: Some(TenantId(tenant)),
                request_id: None,
                before: None,
                after: Some(json!({
                    "workflow_id": workflow,
                    "path": path,
                    "manifest_sha256": manifest_sha256,
                    // Not found: removed by hand before its time.
                    "found": found,
                })),
            }
            .append(&mut tx)
            .await
            .map_err(|e| e.to_string())?;
            removed += 1;
        }
        tx.commit().await.map_err(|e| e.to_string())?;
    }
    Ok(removed)
}

/// Verifies a bundle against its manifest: every file's rows and checksum.
pub fn verify(dir: &Path) -> Result<Manifest, String> {
    let manifest: Manifest = serde_json::from_slice(
        &std::fs::read(dir.join(MANIFEST)).map_err(|e| format!("{}: {e}", dir.join(MANIFEST).display()))?,
    )
    .map_err(|e| format!("manifest: {e}"))?;
    for table in &manifest.tables {
        let content = std::fs::read(dir.join(&table.file)).map_err(|e| format!("{}: {e}", table.file))?;
        let sha = hex::encode(Sha256::digest(&content));
        if sha != table.sha256 {
            return Err(format!("{}: checksum {sha} does not match the manifest's {}", table.file, table.sha256));
        }
        let rows = content.iter().filter(|b| **b == b'\n').count() as u64;
        if rows != table.rows {
            return Err(format!("{}: {rows} rows, the manifest says {}", table.file, table.rows));
        }
    }
    Ok(manifest)
}
