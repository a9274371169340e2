//! `indigo serve`: the control-plane daemon.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use indigo_tenantdb::TenantDatabases;
use indigo_tenantdb::schema::TenantServer;
use tokio::net::TcpListener;

use crate::api::webhooks::WebhookConfig;
use crate::api::{self, AppState};
use crate::billing::Stripe;
use crate::config::{Config, Provider};
use crate::jobs::Jobs;
use crate::metering::aws::AwsUsage;
use crate::outbox::{self, Mailer};
use crate::providers::aws::AwsDatabases;
use crate::providers::aws::ecs::EcsServices;
use crate::providers::local::LocalDatabases;
use crate::providers::{ComputeProvider, DatabaseProvider};
use crate::reconciler::{Controller, Settings};
use crate::workflow::{self, Engine, Failpoints};

use crate::{db, policy};
/// Both daemons stop on SIGTERM or Ctrl-C.
pub use indigo_core::http::shutdown_signal;

/// Loads the policies, migrates the control database and builds the shared state.
/// Policies are read first: a broken plans file should stop us before any IO.
pub async fn prepare(config: &Config, database_url: &str) -> anyhow::Result<AppState> {
    let plans = policy::load_plans(&config.plans_file)?;
    let costs = policy::load_costs(&config.costs_file)?;
    let pool = db::connect(database_url).await?;
    db::migrate(&pool).await?;
    // The pool's schema and policies are brought up to date at every start.
    let server = TenantServer::new(config.tenant_server_url.as_deref().unwrap_or(database_url))?;
    server.provision(&config.pool_database).await?;
    if config.admin_token.is_none() {
        tracing::warn!("no admin_token configured: only tokens stored in the database are accepted");
    }
    let tenant_dbs = TenantDatabases { server, pool_database: config.pool_database.clone() };
    let mut state = AppState::new(pool, plans, config.admin_token.as_ref(), tenant_dbs);
    state.costs = Some(Arc::new(costs));
    state.webhooks = config.stripe_webhook_secret.clone().map(|secret| {
        Arc::new(WebhookConfig {
            secret,
            tolerance: chrono::Duration::minutes(5),
            grace: chrono::Duration::hours(i64::try_from(config.payment_grace_hours).unwrap_or(i64::MAX / 3600)),
        })
    });
    Ok(state)
}

/// What runs beside the API; dropping it stops the scheduler's jobs.
pub struct Background {
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
    pub scheduler: tokio_cron_scheduler::JobScheduler,
}

/// Starts this replica's reconciler, workflow engine, mail sender and scheduled
/// jobs, on the configured provider. `local_compute`: the data-plane processes
/// this control plane runs itself (`indigo up`); without it on the local
/// provider the data plane is deployed some other way.
pub async fn start_background(
    config: &Config,
    state: &mut AppState,
    local_compute: Option<Arc<dyn ComputeProvider>>,
) -> anyhow::Result<Background> {
    let (mut tasks, aws) = match config.provider {
        Provider::Local => {
            (start_workers(config, state, LocalDatabases::new(state.tenant_dbs.clone()), local_compute)?, None)
        }
        Provider::Aws => {
            let aws = aws_config::load_from_env().await;
            let databases = AwsDatabases::new(&aws, state.tenant_dbs.clone());
            let services = EcsServices::new(
                &aws,
                &config.aws_ecs_cluster,
                &config.aws_dataplane_image,
                config.aws_subnets.clone(),
            );
            (start_workers(config, state, Arc::new(databases), Some(Arc::new(services)))?, Some(aws))
        }
    };
    tasks.push(tokio::spawn(outbox::send_forever(state.db.clone(), Mailer::new(config))));
    let aws_usage = aws.map(|aws| {
        Arc::new(
            AwsUsage::new(&aws, &config.aws_usage_table, &config.aws_metrics_namespace)
                .with_features_table(&config.aws_features_table),
        )
    });
    if let Some(usage) = &aws_usage {
        state.tenant_metrics = usage.clone();
    }
    let jobs = Arc::new(Jobs {
        db: state.db.clone(),
        stripe: config.stripe.as_ref().map(Stripe::new).transpose().context("Stripe client")?,
        aws: aws_usage,
        tenant_dbs: state.tenant_dbs.clone(),
        plans: state.plans.clone(),
        failpoints: Failpoints::from_env().map_err(anyhow::Error::msg)?,
    });
    let scheduler = jobs.schedule().await.context("cannot start the job scheduler")?;
    state.jobs = Some(jobs);
    Ok(Background { tasks, scheduler })
}

/// The reconciler and the workflow engine of this replica, on one database provider.
fn start_workers<P: DatabaseProvider + Clone>(
    config: &Config,
    state: &mut AppState,
    databases: P,
    compute: Option<Arc<dyn ComputeProvider>>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let settings = Settings {
        resync: Duration::from_secs(config.resync_seconds),
        workers: config.reconcile_workers,
        ..Settings::default()
    };
    let mut controller =
        Controller::new(state.db.clone(), databases.clone(), state.tenant_dbs.clone(), state.plans.clone(), settings);
    if let Some(compute) = compute {
        controller = controller.with_compute(compute);
    }
    let mut tasks = controller.spawn();
    state.reconciler = Some(Arc::new(controller));
    tasks.push(workflow_engine(config, state, databases)?.spawn());
    Ok(tasks)
}

/// The workflow engine of this replica.
pub fn workflow_engine<P: DatabaseProvider>(
    config: &Config,
    state: &AppState,
    databases: P,
) -> anyhow::Result<Engine<P>> {
    let stripe = config.stripe.as_ref().map(Stripe::new).transpose().context("Stripe client")?;
    if stripe.is_none() {
        tracing::warn!("stripe_api_base is not set: tenants are onboarded without billing");
    }
    let mut services = workflow::Services::local(
        state.db.clone(),
        state.tenant_dbs.clone(),
        state.plans.clone(),
        stripe,
        config.data_dir.join("exports"),
    )
    .with_provider(databases);
    services.failpoints = Failpoints::from_env().map_err(anyhow::Error::msg)?;
    services.settings.move_grace = std::time::Duration::from_secs(config.move_grace_seconds);
    Ok(Engine::new(services))
}

/// Serves the admin API on `listener` until `shutdown` completes, then drains.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let address = listener.local_addr()?;
    tracing::info!(%address, "admin API listening");
    axum::serve(listener, api::router(state)).with_graceful_shutdown(shutdown).await.context("admin API server failed")
}

pub async fn bind(config: &Config) -> anyhow::Result<TcpListener> {
    TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} (config key `listen`)", config.listen))
}
