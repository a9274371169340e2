//! The composition root: every part of one control-plane replica built from
//! its configuration, in one place. `indigo serve`, `indigo up`, the test
//! stack and the benches build through [`ControlPlane::build`]; nothing is
//! changed after it is built, and nothing runs until [`ControlPlane::start`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use indigo_core::plan::PlanCatalog;
use indigo_tenantdb::TenantDatabases;
use indigo_tenantdb::schema::TenantServer;
use sqlx::PgPool;
use tokio::task::JoinHandle;

use crate::api::webhooks::WebhookConfig;
use crate::api::{self, AppState};
use crate::backups::BackupStore;
use crate::billing::Stripe;
use crate::config::{Config, Provider, StripeConfig};
use crate::jobs::Jobs;
use crate::metering::aws::AwsUsage;
use crate::outbox::{self, Mailer};
use crate::providers::aws::AwsDatabases;
use crate::providers::aws::ecs::{EcsServices, TaskSettings};
use crate::providers::aws::stand_in::StandInTasks;
use crate::providers::local::{LocalDatabases, PostgresMetrics};
use crate::providers::processes::LocalProcesses;
use crate::providers::{ComputeProvider, DatabaseProvider, MetricsProvider, ReachDatabases};
use crate::reconciler::{self, Controller, ReconcilerControl};
use crate::workflow::{Engine, Failpoints, Services};
use crate::{db, policy};

/// One replica of the control plane, built and not yet running.
pub struct ControlPlane {
    /// What the admin API serves from.
    pub state: AppState,
    /// The reconciler and the workflow engine, on the configured provider.
    loops: Vec<Arc<dyn Spawn>>,
    jobs: Arc<Jobs>,
    mailer: Mailer,
    shared: Shared,
}

/// What runs beside the API once started; dropping it stops the scheduler's jobs.
pub struct Background {
    pub tasks: Vec<JoinHandle<()>>,
    pub scheduler: tokio_cron_scheduler::JobScheduler,
}

/// A part with loops of its own, started once the whole is built.
trait Spawn: Send + Sync {
    fn spawn(&self) -> Vec<JoinHandle<()>>;
}

impl<P: DatabaseProvider> Spawn for Controller<P> {
    fn spawn(&self) -> Vec<JoinHandle<()>> {
        Controller::spawn(self)
    }
}

impl<P: DatabaseProvider> Spawn for Engine<P> {
    fn spawn(&self) -> Vec<JoinHandle<()>> {
        vec![Engine::spawn(self)]
    }
}

impl ControlPlane {
    /// Builds every part from `config`, on its `database_url`. Policies are
    /// read first: a broken plans file stops us before any IO. `dataplanes`:
    /// the data-plane processes this replica runs itself (`indigo up`). On the
    /// local provider they are the data plane (without them it is deployed
    /// some other way); on AWS the data planes are ECS services, whose tasks
    /// they run when ECS is an emulator's (the stand-in).
    pub async fn build(config: &Config, dataplanes: Option<Arc<LocalProcesses>>) -> anyhow::Result<Self> {
        let url = config.database_url.as_deref().context(
            "no database configured: set database_url (env INDIGO_DATABASE_URL), or use `indigo up` for a local platform",
        )?;
        let policies = Policies::load(config)?;
        let db = db::connect(url).await?;
        Self::assemble(config, policies, db, dataplanes).await
    }

    /// [`ControlPlane::build`] on a control database already connected (and
    /// migrated here): for a caller that needs the connection first, as
    /// `indigo up` does for its data planes' identities.
    pub async fn on_database(
        config: &Config,
        db: PgPool,
        dataplanes: Option<Arc<LocalProcesses>>,
    ) -> anyhow::Result<Self> {
        Self::assemble(config, Policies::load(config)?, db, dataplanes).await
    }

    async fn assemble(
        config: &Config,
        Policies { plans, costs }: Policies,
        db: PgPool,
        dataplanes: Option<Arc<LocalProcesses>>,
    ) -> anyhow::Result<Self> {
        let plans = Arc::new(plans);
        db::migrate(&db).await?;
        let time_zones: Vec<String> =
            sqlx::query_scalar("SELECT name FROM pg_timezone_names ORDER BY name").fetch_all(&db).await?;
        // The pool's schema and policies are brought up to date at every start.
        let database_url = config.database_url.as_deref().unwrap_or(&config.local_database_url);
        let mut server = TenantServer::new(config.tenant_server_url.as_deref().unwrap_or(database_url))?;
        match &config.app_database_password {
            Some(password) => server = server.with_app_password(password.expose()),
            None => tracing::warn!(
                "no app_database_password configured: the data plane's role has no password, \
                 so the tenant database servers must trust its connections"
            ),
        }
        server.provision(&config.pool_database).await?;
        if config.admin_token.is_none() {
            tracing::warn!("no admin_token configured: only tokens stored in the database are accepted");
        }
        if config.stripe.is_none() {
            tracing::warn!("stripe_api_base is not set: tenants are onboarded without billing");
        }
        let mut tenant_dbs = TenantDatabases::new(server, &config.pool_database);
        if let Some(url) = &config.aws_cluster_stand_in {
            let stand_in = TenantServer::new(url)?;
            tracing::warn!("aws_cluster_stand_in is set: every Aurora cluster is reached on {}", stand_in.address());
            tenant_dbs.cluster_stand_in = Some(stand_in);
        }
        // Beside the data-plane tasks' secrets, under the ECS cluster's name;
        // used only for tenants on a cluster of their own (AWS).
        tenant_dbs.cluster_logins = Some(config.aws_ecs_cluster.clone());
        let tenant_dbs = Arc::new(tenant_dbs);
        let failpoints = Failpoints::from_env().map_err(anyhow::Error::msg)?;
        let aws = match config.provider {
            Provider::Aws => Some(aws_config::load_from_env().await),
            Provider::Local => None,
        };
        let backups = match &aws {
            Some(aws) => BackupStore::s3(aws, &config.aws_backup_bucket, &config.data_dir),
            None => BackupStore::directory(&config.data_dir),
        };
        let shared = Shared {
            db: db.clone(),
            tenant_dbs: tenant_dbs.clone(),
            plans: plans.clone(),
            stripe: config.stripe.clone(),
            data_dir: config.data_dir.clone(),
            move_grace: Duration::from_secs(config.move_grace_seconds),
            export_retention: Duration::from_secs(config.export_retention_hours * 3600),
            failpoints: failpoints.clone(),
            backups: backups.clone(),
        };
        let (loops, aws_usage, databases) = match &aws {
            None => {
                let compute = dataplanes.map(|processes| processes as Arc<dyn ComputeProvider>);
                let databases = LocalDatabases::new(tenant_dbs.clone());
                let reach: Arc<dyn ReachDatabases> = Arc::new(databases.clone());
                (shared.loops(config, databases, compute)?, None, reach)
            }
            Some(aws) => {
                let databases = Arc::new(AwsDatabases::new(aws, tenant_dbs.clone()));
                let tasks = TaskSettings {
                    image: config.aws_dataplane_image.clone(),
                    control_plane_url: config.aws_control_plane_url.clone().context(
                        "aws_control_plane_url (env INDIGO_AWS_CONTROL_PLANE_URL) is required with provider `aws`: \
                         the URL at which the data-plane tasks reach the admin API",
                    )?,
                    jwt_secret: config.storefront_jwt_secret.clone(),
                    database_password: config.app_database_password.clone(),
                    redis_url: config.redis_url.clone(),
                    bedrock_model_id: config.aws_bedrock_model_id.clone(),
                    log_level: "info".into(),
                    traces: config.traces.clone(),
                    log_group: config.aws_log_group.clone(),
                    region: aws.region().map_or_else(|| "us-east-1".to_owned(), ToString::to_string),
                    roles: config.aws_task_roles.clone(),
                };
                let services =
                    EcsServices::new(aws, &config.aws_ecs_cluster, tasks, config.aws_subnets.clone(), db.clone())
                        .with_pool_target_group(config.aws_pool_target_group.clone())
                        .with_storefront_balancer(config.aws_storefront.as_ref().map(|(listener, domain)| {
                            crate::providers::aws::balancer::StorefrontBalancer::new(aws, listener, domain)
                        }));
                let compute: Arc<dyn ComputeProvider> = match dataplanes {
                    Some(processes) => Arc::new(StandInTasks::new(services, processes)),
                    None => Arc::new(services),
                };
                let reach: Arc<dyn ReachDatabases> = databases.clone();
                let loops = shared.loops(config, databases, Some(compute))?;
                let usage = AwsUsage::new(aws, &config.aws_usage_table, &config.aws_metrics_namespace)
                    .with_features_table(&config.aws_features_table);
                (loops, Some(Arc::new(usage)), reach)
            }
        };
        let tenant_metrics: Arc<dyn MetricsProvider> = match &aws_usage {
            Some(usage) => usage.clone(),
            None => Arc::new(PostgresMetrics::new(db.clone())),
        };
        let jobs = Arc::new(Jobs {
            db: db.clone(),
            stripe: shared.stripe()?,
            aws: aws_usage,
            tenant_dbs: tenant_dbs.clone(),
            plans: plans.clone(),
            failpoints,
            backups: backups.clone(),
            databases: databases.clone(),
        });
        let state = AppState {
            backups,
            databases,
            max_silos: config.max_silos,
            bootstrap_admin_hash: config.admin_token.as_ref().map(|t| crate::identity::hash_token(t.expose()).into()),
            metrics: indigo_core::http::prometheus(),
            tenant_dbs,
            reconciler: Some(loops.reconciler),
            jobs: Some(jobs.clone()),
            webhooks: config.stripe_webhook_secret.clone().map(|secret| {
                Arc::new(WebhookConfig {
                    secret,
                    tolerance: chrono::Duration::minutes(5),
                    grace: chrono::Duration::hours(
                        i64::try_from(config.payment_grace_hours).unwrap_or(i64::MAX / 3600),
                    ),
                })
            }),
            costs: Some(Arc::new(costs)),
            tenant_metrics,
            time_zones: time_zones.into(),
            token_rates: Arc::new(api::auth::TokenRates::new(config.api_requests_per_second)),
            read_timeout: config.api_read_timeout,
            routing_changes: api::routing::RoutingChanges::listen(db.clone()),
            stripe: shared.stripe()?.map(Arc::new),
            data_plane_redis: match &config.redis_url {
                Some(url) => Some(redis::Client::open(url.as_str()).context("invalid redis_url")?),
                None => None,
            },
            plans,
            // The admin API reads through a pool of its own whose statements time
            // out, at the latest when a read would be given up anyway.
            db: db::bounded(&db, config.api_query_timeout.min(config.api_read_timeout)),
        };
        Ok(Self { state, loops: loops.parts, jobs, mailer: Mailer::new(config), shared })
    }

    /// Starts the reconciler, the workflow engine, the mail sender and the scheduled jobs.
    pub async fn start(&self) -> anyhow::Result<Background> {
        let mut tasks: Vec<JoinHandle<()>> = self.loops.iter().flat_map(|part| part.spawn()).collect();
        tasks.push(tokio::spawn(outbox::send_forever(self.state.db.clone(), self.mailer.clone())));
        let scheduler = self.jobs.schedule().await.context("cannot start the job scheduler")?;
        Ok(Background { tasks, scheduler })
    }

    /// The admin API.
    pub fn router(&self) -> axum::Router {
        api::router(self.state.clone())
    }

    /// Workflow services as this replica's engine has them, on `databases`:
    /// for a caller that runs workflows itself (tests that crash and restart
    /// an engine).
    pub fn workflow_services<P>(&self, databases: P) -> anyhow::Result<Services<P>> {
        self.shared.workflow_services(databases)
    }
}

/// The reconciler and the workflow engine, to start; the reconciler also as
/// the admin API controls it.
struct Loops {
    parts: Vec<Arc<dyn Spawn>>,
    reconciler: Arc<dyn ReconcilerControl>,
}

/// The policy files, read before anything else: a broken one stops the start
/// before any IO.
struct Policies {
    plans: PlanCatalog,
    costs: indigo_core::cost::CostModel,
}

impl Policies {
    fn load(config: &Config) -> anyhow::Result<Self> {
        Ok(Self { plans: policy::load_plans(&config.plans_file)?, costs: policy::load_costs(&config.costs_file)? })
    }
}

/// What the reconciler, the workflow engine and the jobs share.
struct Shared {
    db: PgPool,
    tenant_dbs: Arc<TenantDatabases>,
    plans: Arc<PlanCatalog>,
    /// `None`: billing is off.
    stripe: Option<StripeConfig>,
    /// Where offboarding's export bundles and tenants' backups are written.
    data_dir: PathBuf,
    /// How long a moved tenant's source is kept before it is released.
    move_grace: Duration,
    /// How long an export bundle is kept for hand-over.
    export_retention: Duration,
    failpoints: Failpoints,
    /// Where tenants' backups are kept.
    backups: BackupStore,
}

impl Shared {
    fn stripe(&self) -> anyhow::Result<Option<Stripe>> {
        self.stripe.as_ref().map(Stripe::new).transpose().context("Stripe client")
    }

    fn workflow_services<P>(&self, databases: P) -> anyhow::Result<Services<P>> {
        let mut services = Services::local(
            self.db.clone(),
            self.tenant_dbs.clone(),
            self.plans.clone(),
            self.stripe()?,
            &self.data_dir,
        )
        .with_provider(databases);
        services.failpoints = self.failpoints.clone();
        services.backups = self.backups.clone();
        services.settings.move_grace = self.move_grace;
        services.settings.export_retention = self.export_retention;
        Ok(services)
    }

    /// The reconciler and the workflow engine on `databases`.
    fn loops<P: DatabaseProvider + Clone>(
        &self,
        config: &Config,
        databases: P,
        compute: Option<Arc<dyn ComputeProvider>>,
    ) -> anyhow::Result<Loops> {
        let settings = reconciler::Settings {
            resync: Duration::from_secs(config.resync_seconds),
            workers: config.reconcile_workers,
            ..reconciler::Settings::default()
        };
        let mut controller =
            Controller::new(self.db.clone(), databases.clone(), self.tenant_dbs.clone(), self.plans.clone(), settings);
        if let Some(compute) = compute {
            controller = controller.with_compute(compute);
        }
        let controller = Arc::new(controller);
        let engine = Arc::new(Engine::new(self.workflow_services(databases)?));
        Ok(Loops { parts: vec![controller.clone(), engine], reconciler: controller })
    }
}
