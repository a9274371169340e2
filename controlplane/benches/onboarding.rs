//! Onboarding benchmark: `POST /v1/tenants` → the tenant `active` with its
//! database, Stripe customer and subscription (the Stripe test double over
//! HTTP), search settings, sample data, welcome email and `TenantCreated`,
//! driven by a running workflow engine, one tenant at a time.
//!
//! Writes `benchmarks/onboarding.md`.
//!
//! Run: `cargo bench -p indigo-controlplane --bench onboarding` (PostgreSQL on
//! DATABASE_URL's server). Env: BENCH_TENANTS (default 50 pool, a fifth of that silo).

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use indigo_controlplane::config::{Config, Overrides};
use indigo_controlplane::control_plane::ControlPlane;
use indigo_controlplane::db;
use indigo_controlplane::providers::local::LocalDatabases;
use indigo_controlplane::workflow::Engine;
use indigo_stripe_emulator::StripeEmulator;
use serde_json::json;
use tower::ServiceExt;

const ADMIN: &str = "bench-admin-token-0123456789";

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted.get(((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1))).copied().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Onboards `count` tenants on `plan` one after the other; returns each one's time.
async fn onboard(router: &axum::Router, db: &sqlx::PgPool, plan: &str, count: usize) -> anyhow::Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(count);
    for n in 0..count {
        let slug = format!("bench-{plan}-{n}");
        let body = json!({ "name": slug, "slug": slug, "owner_email": format!("o@{slug}.example"), "plan": plan });
        let request = Request::post("/v1/tenants")
            .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
            .header(header::CONTENT_TYPE, "application/json")
            .header("idempotency-key", &slug)
            .body(Body::from(body.to_string()))?;
        let started = Instant::now();
        let response = router.clone().oneshot(request).await?;
        anyhow::ensure!(response.status() == StatusCode::CREATED, "create {slug}: {}", response.status());
        loop {
            let state: Option<String> = sqlx::query_scalar(
                "SELECT w.state FROM workflows w JOIN tenants t ON t.id = w.tenant_id WHERE t.slug = $1",
            )
            .bind(&slug)
            .fetch_optional(db)
            .await?;
            match state.as_deref() {
                Some("succeeded") => break,
                Some("failed" | "cancelled") => anyhow::bail!("onboarding of {slug} ended {state:?}"),
                _ => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
        times.push(started.elapsed());
    }
    times.sort();
    Ok(times)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let tenants: usize = std::env::var("BENCH_TENANTS").ok().and_then(|s| s.parse().ok()).unwrap_or(50);
    let server_url =
        std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let control_url = format!("{}/indigo_bench_control_{suffix}", server_url.rsplit_once('/').unwrap().0);
    db::ensure_database(&control_url).await?;
    let pool_database = format!("indigo_bench_pool_{suffix}");
    let stripe = StripeEmulator::start().await?;
    let data_dir = std::env::temp_dir().join(format!("indigo-bench-{suffix}"));
    let config = Config::load(
        None,
        Overrides {
            stripe_api_base: Some(stripe.url.clone()),
            stripe_secret_key: Some("sk_test_bench".into()),
            ..indigo_e2e::control_plane_settings(&control_url, &pool_database, ADMIN, data_dir)
        },
    )?;
    let control_plane = ControlPlane::build(&config, None).await?;
    let (pool, server) = (control_plane.state.db.clone(), control_plane.state.tenant_dbs.server.clone());
    // The workflow engine alone: the reconciler and the jobs would share the two cores.
    let databases = LocalDatabases::new(control_plane.state.tenant_dbs.clone());
    let task = Engine::new(control_plane.workflow_services(databases)?).spawn();
    let router = control_plane.router();

    let pool_times = onboard(&router, &pool, "growth", tenants).await?;
    let silo_times = onboard(&router, &pool, "enterprise", (tenants / 5).max(1)).await?;
    task.abort();

    let steps: Vec<(String, f64)> = sqlx::query_as(
        "SELECT name, avg(extract(epoch FROM finished_at - started_at) * 1000)::float8
         FROM workflow_steps GROUP BY name ORDER BY 2 DESC",
    )
    .fetch_all(&pool)
    .await?;

    let mut report = format!(
        "# Onboarding benchmark\n\n{}\n\n`POST /v1/tenants` until the onboarding workflow has \
         succeeded (tenant active, database, Stripe customer and subscription on the Stripe test double over HTTP, \
         search settings, sample product, welcome email, `TenantCreated`), one tenant at a time, the engine \
         woken by NOTIFY. Rerun: `cargo bench -p indigo-controlplane --bench onboarding`.\n\n\
         | tenants | count | median | p95 | max | goal |\n|---|---:|---:|---:|---:|---:|\n",
        indigo_e2e::bench::provenance()
    );
    for (label, times) in [("pool (growth)", &pool_times), ("silo (enterprise, own database)", &silo_times)] {
        report.push_str(&format!(
            "| {label} | {} | {} | {} | {} | < 1 s |\n",
            times.len(),
            ms(percentile(times, 0.5)),
            ms(percentile(times, 0.95)),
            ms(*times.last().unwrap())
        ));
    }
    report.push_str("\nMean time per step (both kinds):\n\n| step | mean |\n|---|---:|\n");
    for (name, mean) in steps {
        report.push_str(&format!("| {name} | {mean:.1} ms |\n"));
    }
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../benchmarks/onboarding.md");
    std::fs::write(path, &report)?;
    println!("{report}");

    // Release what the silo tenants created.
    let silos: Vec<String> = sqlx::query_scalar("SELECT placement->>'database' FROM tenants WHERE isolation = 'silo'")
        .fetch_all(&pool)
        .await?;
    for silo in silos {
        server.drop_database(&silo).await?;
    }
    server.drop_database(&pool_database).await?;
    pool.close().await;
    server.drop_database(&format!("indigo_bench_control_{suffix}")).await?;
    let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("indigo-bench-{suffix}")));
    Ok(())
}
