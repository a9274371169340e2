//! Reconciler benchmark, on the local provider with 10,000 pool tenants:
//!   - initial convergence of the whole fleet;
//!   - a full resync of the fleet in sync;
//!   - spec change → status converged, one change at a time (steady state);
//!   - the same under a burst of 1,000 spec changes;
//!   - CPU used by an idle reconciler.
//!
//! Writes `benchmarks/reconciler.md`.
//!
//! Run: `cargo bench -p indigo-controlplane --bench reconciler` (PostgreSQL on
//! DATABASE_URL's server). Env: BENCH_TENANTS (default 10000), BENCH_WORKERS (default 8).

use std::sync::Arc;
use std::time::{Duration, Instant};

use indigo_controlplane::db;
use indigo_controlplane::providers::local::LocalDatabases;
use indigo_controlplane::reconciler::{Controller, ReconcilerControl, Settings};
use indigo_tenantdb::TenantDatabases;
use indigo_tenantdb::schema::TenantServer;
use sqlx::PgPool;

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted.get(((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1))).copied().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

async fn behind(db: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM tenants WHERE observed_generation < generation")
        .fetch_one(db)
        .await
        .unwrap()
}

async fn wait_converged(db: &PgPool) -> Duration {
    let started = Instant::now();
    while behind(db).await > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    started.elapsed()
}

/// CPU seconds this process has used (user + system).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let tenants: i64 = std::env::var("BENCH_TENANTS").ok().and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let workers: usize = std::env::var("BENCH_WORKERS").ok().and_then(|s| s.parse().ok()).unwrap_or(8);
    let server_url =
        std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let control_url = format!("{}/indigo_bench_control_{suffix}", server_url.rsplit_once('/').unwrap().0);
    db::ensure_database(&control_url).await?;
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(workers as u32 + 8).connect(&control_url).await?;
    db::migrate(&pool).await?;
    let server = TenantServer::new(&server_url)?;
    let pool_database = format!("indigo_bench_pool_{suffix}");
    server.provision(&pool_database).await?;
    let dbs = Arc::new(TenantDatabases::new(server.clone(), pool_database.clone()));
    sqlx::query(
        "INSERT INTO tenants (id, slug, name, owner_email, plan, isolation)
         SELECT gen_random_uuid(), 'bench-' || n, 'Bench ' || n, 'owner@bench.example', 'starter', 'pool'
         FROM generate_series(1, $1) AS n",
    )
    .bind(tenants)
    .execute(&pool)
    .await?;

    let settings = Settings { resync: Duration::from_secs(3600), workers, rls_audit: Duration::from_secs(3600) };
    let plans = Arc::new(indigo_controlplane::policy::load_plans(
        concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/plans.toml").as_ref(),
    )?);
    let controller = Controller::new(pool.clone(), LocalDatabases::new(dbs.clone()), dbs, plans, settings);
    let started = Instant::now();
    let tasks = controller.spawn();
    // The listener queues the whole fleet when it starts.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let initial = started.elapsed() + wait_converged(&pool).await;

    // Full resync of a fleet in sync.
    let before = controller.status().reconciles_total;
    let started = Instant::now();
    let queued = controller.enqueue_all().await? as u64;
    while controller.status().reconciles_total < before + queued {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let resync = started.elapsed();

    // One change at a time: NOTIFY → queue → reconcile → status.
    let ids: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM tenants ORDER BY slug").fetch_all(&pool).await?;
    let mut steady = Vec::new();
    for (n, id) in ids.iter().step_by(ids.len() / 50).take(50).enumerate() {
        let plan = if n % 2 == 0 { "growth" } else { "starter" };
        let changed = Instant::now();
        sqlx::query("UPDATE tenants SET plan = $2 WHERE id = $1").bind(id).bind(plan).execute(&pool).await?;
        loop {
            let done: bool = sqlx::query_scalar("SELECT observed_generation >= generation FROM tenants WHERE id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await?;
            if done {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        steady.push(changed.elapsed());
    }
    steady.sort();

    // A burst of 1,000 changes in one statement.
    let burst_size: i64 = 1000.min(tenants);
    let changed_at: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
        "WITH changed AS (UPDATE tenants SET plan = CASE plan WHEN 'pro' THEN 'growth' ELSE 'pro' END
                          WHERE id IN (SELECT id FROM tenants ORDER BY id LIMIT $1) RETURNING id)
         SELECT now()",
    )
    .bind(burst_size)
    .fetch_one(&pool)
    .await?;
    let burst_total = wait_converged(&pool).await;
    let mut burst: Vec<Duration> = sqlx::query_scalar::<_, chrono::DateTime<chrono::Utc>>(
        "SELECT last_reconciled_at FROM tenants WHERE id IN (SELECT id FROM tenants ORDER BY id LIMIT $1)",
    )
    .bind(burst_size)
    .fetch_all(&pool)
    .await?
    .into_iter()
    .map(|at| (at - changed_at).to_std().unwrap_or_default())
    .collect();
    burst.sort();

    // Idle: nothing changes, the resync is an hour away.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (cpu_before, wall) = (cpu_seconds(), Instant::now());
    tokio::time::sleep(Duration::from_secs(10)).await;
    let idle_cpu = (cpu_seconds() - cpu_before) / wall.elapsed().as_secs_f64() * 100.0;

    let mut report = String::new();
    report.push_str("# Reconciler benchmark\n\n");
    report.push_str(&format!(
        "{}\n\n{tenants} pool tenants on the local provider, {workers} workers, the control database \
         on the same machine. Rerun: `cargo bench -p indigo-controlplane --bench reconciler`.\n\n",
        indigo_e2e::bench::provenance(),
    ));
    report.push_str("| measure | result | goal |\n|---|---:|---:|\n");
    report.push_str(&format!("| initial convergence of {tenants} new tenants | {:.2} s | |\n", initial.as_secs_f64()));
    report
        .push_str(&format!("| full resync of {tenants} tenants in sync | {:.2} s | < 10 s |\n", resync.as_secs_f64()));
    report.push_str(&format!(
        "| spec change → status converged, one at a time (median / p99 of {}) | {} / {} | median < 100 ms |\n",
        steady.len(),
        ms(percentile(&steady, 0.5)),
        ms(percentile(&steady, 0.99))
    ));
    report.push_str(&format!(
        "| burst of {burst_size} spec changes: all converged | {:.2} s | |\n",
        burst_total.as_secs_f64()
    ));
    report.push_str(&format!(
        "| burst: change → converged per tenant (median / p99) | {} / {} | |\n",
        ms(percentile(&burst, 0.5)),
        ms(percentile(&burst, 0.99))
    ));
    report.push_str(&format!("| idle CPU of the reconciler (10 s, % of one core) | {idle_cpu:.2}% | < 2% |\n"));
    println!("{report}");
    std::fs::write(concat!(env!("CARGO_MANIFEST_DIR"), "/../benchmarks/reconciler.md"), &report)?;
    println!("written to benchmarks/reconciler.md");

    tasks.iter().for_each(|t| t.abort());
    pool.close().await;
    server.drop_database(&pool_database).await?;
    server.drop_database(&format!("indigo_bench_control_{suffix}")).await?;
    Ok(())
}
