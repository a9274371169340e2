//! The Indigo data plane as a library: the storefront server that the
//! `indigo-dataplane` binary runs (and `indigo dataplane`, the same server).

pub mod api;
pub mod auth;
pub mod catalogue_cache;
pub mod descriptions;
pub mod limits;
pub mod logins;
pub mod metering;
pub mod personalize;
pub mod redis_link;
pub mod routing;
pub mod tenant_sessions;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use indigo_core::http::{parent_gone, shutdown_signal};

use crate::api::AppState;
use crate::auth::Verifier;
use crate::catalogue_cache::CatalogueCache;
use crate::descriptions::DescriptionWriter;
use crate::limits::Limiter;
use crate::limits::fleet::FleetRates;
use crate::metering::{Meter, UsageSink};
use crate::personalize::Personalize;
use indigo_core::traces::TraceExport;

use crate::redis_link::RedisLink;
use crate::routing::{ControlPlaneSource, Routes};

#[derive(Debug, clap::Parser)]
#[command(
    name = "indigo-dataplane",
    version,
    about = "Indigo data plane: serves the tenants' storefront traffic (products, customers, orders, search).",
    long_about = "Indigo data plane: serves the tenants' storefront traffic (products, customers, orders, search).\n\n\
                  Stateless: run as many replicas as needed. Each request carries a JWT naming its tenant; the\n\
                  tenant's rows are reached only through PostgreSQL row-level security. Routing (which database\n\
                  serves which tenant, on which plan) comes from the control plane and keeps serving from the\n\
                  last known table when the control plane is away. `indigo up` runs them for you."
)]
pub struct Cli {
    /// Address to serve on
    #[arg(long, env = "INDIGO_DATAPLANE_LISTEN", default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,
    /// The control plane's admin API (routing table, usage store)
    #[arg(long, env = "INDIGO_CONTROL_PLANE_URL", default_value = "http://127.0.0.1:8080")]
    pub control_plane_url: String,
    /// Admin API token of the data plane: a data-plane identity (role `dataplane`), or an operator's
    #[arg(long, env = "INDIGO_CONTROL_PLANE_TOKEN", hide_env_values = true)]
    pub control_plane_token: String,
    /// Shared secret of the storefront's HS256 tokens
    #[arg(long, env = "INDIGO_JWT_SECRET", hide_env_values = true, required_unless_present = "jwks_url")]
    pub jwt_secret: Option<String>,
    /// Verify RS256 tokens with the keys at this JWKS URL instead
    #[arg(long, env = "INDIGO_JWKS_URL", conflicts_with = "jwt_secret")]
    pub jwks_url: Option<String>,
    /// How soon to ask again for the routing table after a failed request
    /// (otherwise the control plane answers when the table changes)
    #[arg(long, env = "INDIGO_ROUTING_REFRESH_MS", default_value_t = 500)]
    pub routing_refresh_ms: u64,
    /// How often to take in every tenant's calls today from the control plane (the shared daily limit)
    #[arg(long, env = "INDIGO_DAILY_CALLS_REFRESH_MS", default_value_t = 10_000)]
    pub daily_calls_refresh_ms: u64,
    /// How often to send buffered usage events
    #[arg(long, env = "INDIGO_METERING_FLUSH_MS", default_value_t = 1000)]
    pub metering_flush_ms: u64,
    /// Where undeliverable usage batches wait for retry
    #[arg(long, env = "INDIGO_SPOOL_DIR", default_value = ".indigo/usage-spool")]
    pub spool_dir: PathBuf,
    /// Password of the app role (`indigo_app`) on the tenant databases; the routing table carries none
    #[arg(long, env = "INDIGO_DATABASE_PASSWORD", hide_env_values = true)]
    pub database_password: Option<String>,
    /// Connections per tenant database: half for the catalogue's reads (sessions bound to a tenant), half for transactions
    #[arg(long, env = "INDIGO_DB_CONNECTIONS", default_value_t = 16)]
    pub db_connections: u32,
    /// Redis through which all replicas share each tenant's plan rate (e.g. redis://127.0.0.1:6379);
    /// without it each replica limits alone
    #[arg(long, env = "INDIGO_REDIS_URL")]
    pub redis_url: Option<String>,
    /// How long the catalogue's cached reads live in Redis, in seconds (at most 3600; 0 turns the
    /// cache off). A write makes every earlier entry of its tenant unused at once; the TTL bounds
    /// only what Redis holds, and staleness while Redis cannot be told of a write
    #[arg(long, env = "INDIGO_CATALOGUE_CACHE_TTL_SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub catalogue_cache_ttl_secs: u64,
    /// Who writes product descriptions: `embedded` (built in, no network) or `bedrock` (Amazon
    /// Bedrock's InvokeModel, configured from the standard AWS chain)
    #[arg(long, env = "INDIGO_DESCRIPTIONS", value_enum, default_value_t = Descriptions::Embedded)]
    pub descriptions: Descriptions,
    /// The Bedrock model that writes descriptions
    #[arg(long, env = "INDIGO_BEDROCK_MODEL_ID", default_value = descriptions::DEFAULT_BEDROCK_MODEL)]
    pub bedrock_model_id: String,
    /// Who recommends for tenants whose settings name a Personalize campaign: `personalize`
    /// (GetRecommendations, the standard AWS chain) or `embedded` (the built-in recommender, as for
    /// every other tenant)
    #[arg(long, env = "INDIGO_RECOMMENDATIONS", value_enum, default_value_t = Recommendations::Embedded)]
    pub recommendations: Recommendations,
    /// Behind a load balancer: rate-limit clients by the last X-Forwarded-For hop, not the socket peer
    #[arg(long, env = "INDIGO_TRUST_FORWARDED_FOR")]
    pub trust_forwarded_for: bool,
    /// Serve this one tenant only (a silo tenant's dedicated data plane); others are unknown here
    #[arg(long, env = "INDIGO_DATAPLANE_TENANT")]
    pub tenant: Option<indigo_core::tenant::TenantId>,
    /// Share the listen address with other replicas (SO_REUSEPORT: the kernel spreads connections)
    #[arg(long, env = "INDIGO_DATAPLANE_REUSE_PORT")]
    pub reuse_port: bool,
    /// Stop (gracefully) once the process with this PID is no longer this one's
    /// parent; `indigo up` passes its own
    #[arg(long, hide = true, value_name = "PID")]
    pub exit_with_parent: Option<u32>,
    /// OTLP/HTTP collector (base URL, e.g. http://127.0.0.1:4318) to export traces to; none: no traces leave the process
    #[arg(long, env = "INDIGO_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// How a trace's context travels between services: w3c (traceparent) or xray (X-Amzn-Trace-Id)
    #[arg(long, env = "INDIGO_TRACE_PROPAGATION", default_value = "w3c")]
    pub trace_propagation: indigo_core::traces::Propagation,
    /// Instead of serving, ask the data plane serving on --listen whether it is
    /// ready (routed and serving): exit 0 if so, 1 if not. The container's health check
    #[arg(long)]
    pub check_ready: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Descriptions {
    Embedded,
    Bedrock,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Recommendations {
    Embedded,
    Personalize,
}

/// How often the catalogue cache's owed invalidations are retried and its
/// hit counts added to Redis.
const CACHE_SETTLE_EVERY: Duration = Duration::from_secs(2);

/// Serves until SIGTERM (or `--check-ready`: asks the one serving), logging
/// to stderr and exporting traces when `--otlp-endpoint` is set.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    if cli.check_ready {
        return indigo_core::http::check_ready(cli.listen)
            .await
            .map_err(|reason| anyhow::anyhow!("not ready: {reason}"));
    }
    let export = TraceExport { otlp_endpoint: cli.otlp_endpoint.clone(), propagation: cli.trace_propagation };
    let telemetry = indigo_core::traces::init("indigo-dataplane", &export).map_err(anyhow::Error::msg)?;
    let ended = serve(cli).await;
    telemetry.shutdown();
    ended
}

async fn serve(cli: Cli) -> anyhow::Result<()> {
    let verifier = match (&cli.jwt_secret, &cli.jwks_url) {
        (_, Some(url)) => Verifier::jwks(url).context("jwks_url (INDIGO_JWKS_URL)")?,
        (Some(secret), None) => Verifier::hs256(secret.as_bytes()).context("jwt_secret (INDIGO_JWT_SECRET)")?,
        (None, None) => anyhow::bail!("set jwt_secret (INDIGO_JWT_SECRET) or jwks_url (INDIGO_JWKS_URL)"),
    };
    let routes = match cli.tenant {
        Some(tenant) => Routes::dedicated(tenant, cli.db_connections),
        None => Routes::new(cli.db_connections),
    };
    let routes = Arc::new(routes.with_database_password(cli.database_password.clone()));
    let source = ControlPlaneSource::new(&cli.control_plane_url, &cli.control_plane_token);
    let meter =
        Meter::new(Some(UsageSink::new(&cli.control_plane_url, &cli.control_plane_token)), cli.spool_dir.clone());
    let refresher = tokio::spawn(routing::refresh_forever(
        routes.clone(),
        source.clone(),
        Duration::from_millis(cli.routing_refresh_ms),
    ));
    let flusher = tokio::spawn(metering::flush_forever(meter.clone(), Duration::from_millis(cli.metering_flush_ms)));
    let mut state = AppState::new(routes, verifier, meter.clone());
    if cli.recommendations == Recommendations::Personalize {
        state.personalize = Some(Arc::new(Personalize::from_env().await));
    }
    if cli.descriptions == Descriptions::Bedrock {
        state.descriptions = Arc::new(DescriptionWriter::bedrock(&cli.bedrock_model_id).await);
    }
    let mut settler = None;
    if let Some(url) = &cli.redis_url {
        let redis = Arc::new(RedisLink::new(url).with_context(|| format!("invalid redis_url {url}"))?);
        state.limiter = Arc::new(Limiter::default().sharing_rates(FleetRates::new(redis.clone())));
        if cli.catalogue_cache_ttl_secs > 0 {
            let cache = Arc::new(CatalogueCache::new(redis, Duration::from_secs(cli.catalogue_cache_ttl_secs)));
            settler = Some(tokio::spawn(catalogue_cache::settle_forever(cache.clone(), CACHE_SETTLE_EVERY)));
            state.catalogue_cache = Some(cache);
        }
    }
    let sharer = tokio::spawn(limits::share_daily_forever(
        state.limiter.clone(),
        source,
        Duration::from_millis(cli.daily_calls_refresh_ms),
    ));
    state.trust_forwarded_for = cli.trust_forwarded_for;
    let listener = bind(cli.listen, cli.reuse_port).with_context(|| format!("cannot listen on {}", cli.listen))?;
    tracing::info!(address = %listener.local_addr()?, "data plane listening");
    println!("data plane listening on http://{}", listener.local_addr()?);
    let stop = async move {
        tokio::select! {
            () = shutdown_signal() => {}
            () = parent_gone(cli.exit_with_parent) => tracing::warn!("the process that started the data plane is gone; stopping"),
        }
    };
    axum::serve(listener, api::router(state).into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(stop)
        .await?;
    refresher.abort();
    sharer.abort();
    flusher.abort();
    if let Some(settler) = settler {
        settler.abort();
    }
    // In-flight requests are drained; their usage is sent (or spooled) before exit.
    meter.flush().await.context("final usage flush")?;
    tracing::info!("data plane stopped; usage flushed");
    Ok(())
}

fn bind(address: SocketAddr, reuse_port: bool) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if address.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(reuse_port)?;
    socket.bind(address)?;
    socket.listen(1024)
}
