//! The export bundle offboarding writes before anything is deleted: one JSON
//! Lines file per tenant table and a `manifest.json` with each file's row count
//! and SHA-256, so the bundle can be verified long after the data is gone.

use std::path::{Path, PathBuf};

use indigo_core::api::Tenant;
use indigo_tenantdb::schema::TENANT_TABLES;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgConnection;

use super::{StepError, transient};

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
            // Ordered, so that the same data always gives the same checksum.
            let lines: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT row_to_json(t)::text AS line FROM {table} t ORDER BY line"
            )))
            .fetch_all(&mut *conn)
            .await
            .map_err(transient)?;
            let mut content = String::new();
            for line in &lines {
                content.push_str(line);
                content.push('\n');
            }
            let file = format!("{table}.jsonl");
            let path = partial.join(&file);
            write_private(&path, content.as_bytes()).await?;
            tables.push(TableExport {
                table: (*table).to_owned(),
                file,
                rows: lines.len() as u64,
                sha256: hex::encode(Sha256::digest(content.as_bytes())),
            });
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

/// Creates `path` readable and writable by its owner alone (0600) and writes `bytes`.
async fn write_private(path: &Path, bytes: &[u8]) -> Result<(), StepError> {
    use tokio::io::AsyncWriteExt;
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .await
        .map_err(io(path))?;
    file.write_all(bytes).await.map_err(io(path))?;
    file.flush().await.map_err(io(path))
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
