//! The Indigo data plane as a library: the storefront server that the
//! `indigo-dataplane` binary runs. Tenant isolation, plan limits and metering
//! arrive with the storefront itself; today it serves its probes.

use std::net::SocketAddr;

use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

#[derive(Debug, clap::Parser)]
#[command(
    name = "indigo-dataplane",
    version,
    about = "Indigo data plane: serves the tenants' storefront traffic (products, customers, orders, search).",
    long_about = "Indigo data plane: serves the tenants' storefront traffic (products, customers, orders, search).\n\n\
                  Stateless: run as many replicas as needed. Each request carries a JWT naming its tenant;\n\
                  the tenant's rows are reached only through PostgreSQL row-level security.\n\
                  The control plane (`indigo up`) starts it locally."
)]
pub struct Cli {
    /// Address to serve on
    #[arg(long, env = "INDIGO_DATAPLANE_LISTEN", default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,
}

/// The routes served today: liveness and readiness.
pub fn router() -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({ "status": "ok" })) }))
        .route("/readyz", get(|| async { Json(json!({ "status": "ready" })) }))
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(cli.listen).await?;
    tracing::info!(address = %listener.local_addr()?, "data plane listening");
    axum::serve(listener, router()).await?;
    Ok(())
}
