//! Configuration: a TOML file, then `INDIGO_*` environment variables, then
//! command-line flags, each overriding the one before. Every error names the
//! key (or variable) at fault.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub const DEFAULT_CONFIG_FILE: &str = "indigo.toml";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATAPLANE_LISTEN: &str = "127.0.0.1:8081";
pub const DEFAULT_PLANS_FILE: &str = "policies/plans.toml";
pub const DEFAULT_DATA_DIR: &str = ".indigo";
pub const DEFAULT_POOL_DATABASE: &str = "indigo_pool";
/// Where `indigo up` looks for a PostgreSQL server when no database is configured.
pub const DEFAULT_LOCAL_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/indigo";

/// A secret setting that starts so is a Secrets Manager ARN, read at start.
pub const SECRET_ARN_PREFIX: &str = "arn:aws:secretsmanager:";

/// A value that must never reach a log line.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}` (env {env}): {message}")]
    Invalid { key: &'static str, env: &'static str, message: String },
}

/// The file's shape: every key optional, unknown keys refused (a typo should not
/// silently fall back to a default).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    database_url: Option<String>,
    listen: Option<String>,
    plans_file: Option<PathBuf>,
    costs_file: Option<PathBuf>,
    admin_token: Option<String>,
    app_database_password: Option<String>,
    data_dir: Option<PathBuf>,
    tenant_server_url: Option<String>,
    pool_database: Option<String>,
    dataplane_listen: Option<String>,
    resync_seconds: Option<u64>,
    reconcile_workers: Option<usize>,
    local_database_url: Option<String>,
    stripe_api_base: Option<String>,
    stripe_secret_key: Option<String>,
    smtp_relay: Option<String>,
    redis_url: Option<String>,
    otlp_endpoint: Option<String>,
    trace_propagation: Option<String>,
    mail_from: Option<String>,
    stripe_webhook_secret: Option<String>,
    payment_grace_hours: Option<u64>,
    move_grace_seconds: Option<u64>,
    max_silos: Option<u32>,
    export_retention_hours: Option<u64>,
    api_query_timeout_ms: Option<u64>,
    api_read_timeout_ms: Option<u64>,
    api_requests_per_second: Option<u32>,
    provider: Option<String>,
    aws_usage_table: Option<String>,
    aws_features_table: Option<String>,
    aws_metrics_namespace: Option<String>,
    aws_ecs_cluster: Option<String>,
    aws_dataplane_image: Option<String>,
    aws_bedrock_model_id: Option<String>,
    aws_subnets: Option<String>,
    aws_security_groups: Option<String>,
    aws_cluster_stand_in: Option<String>,
    aws_control_plane_url: Option<String>,
    aws_log_group: Option<String>,
    aws_task_execution_role: Option<String>,
    aws_task_role: Option<String>,
    aws_pool_target_group: Option<String>,
    aws_backup_bucket: Option<String>,
    aws_storefront_listener: Option<String>,
    aws_storefront_domain: Option<String>,
}

/// Values given on the command line (clap also reads their `INDIGO_*` variables).
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Overrides {
    /// PostgreSQL URL of the control database [env: INDIGO_DATABASE_URL]
    #[arg(long, env = "INDIGO_DATABASE_URL", hide_env = true)]
    pub database_url: Option<String>,
    /// Address the admin API listens on [env: INDIGO_LISTEN] [default: 127.0.0.1:8080]
    #[arg(long, env = "INDIGO_LISTEN", hide_env = true)]
    pub listen: Option<String>,
    /// The plan catalogue [env: INDIGO_PLANS_FILE] [default: policies/plans.toml]
    #[arg(long, env = "INDIGO_PLANS_FILE", hide_env = true)]
    pub plans_file: Option<PathBuf>,
    /// The cost model [env: INDIGO_COSTS_FILE] [default: costs.toml beside the plans file]
    #[arg(long, env = "INDIGO_COSTS_FILE", hide_env = true)]
    pub costs_file: Option<PathBuf>,
    /// Bootstrap admin token accepted besides the tokens in the database [env: INDIGO_ADMIN_TOKEN]
    #[arg(long, env = "INDIGO_ADMIN_TOKEN", hide_env = true)]
    pub admin_token: Option<String>,
    /// Password of the data plane's database role (`indigo_app`), set on every tenant database server it provisions; without it the role has none and the servers must trust the data planes [env: INDIGO_APP_DATABASE_PASSWORD]
    #[arg(long, env = "INDIGO_APP_DATABASE_PASSWORD", hide_env = true)]
    pub app_database_password: Option<String>,
    /// Local state: the private PostgreSQL of `indigo up`, the generated admin token [env: INDIGO_DATA_DIR] [default: .indigo]
    #[arg(long, env = "INDIGO_DATA_DIR", hide_env = true)]
    pub data_dir: Option<PathBuf>,
    /// PostgreSQL server (superuser URL) holding the pool and the local silos [env: INDIGO_TENANT_SERVER_URL] [default: the control database's server]
    #[arg(long, env = "INDIGO_TENANT_SERVER_URL", hide_env = true)]
    pub tenant_server_url: Option<String>,
    /// Name of the shared pool database [env: INDIGO_POOL_DATABASE] [default: indigo_pool]
    #[arg(long, env = "INDIGO_POOL_DATABASE", hide_env = true)]
    pub pool_database: Option<String>,
    /// Where `indigo up` runs the local data plane [env: INDIGO_DATAPLANE_LISTEN] [default: 127.0.0.1:8081]
    #[arg(long, env = "INDIGO_DATAPLANE_LISTEN", hide_env = true)]
    pub dataplane_listen: Option<String>,
    /// How often the reconciler looks at every tenant again [env: INDIGO_RESYNC_SECONDS] [default: 60]
    #[arg(long, env = "INDIGO_RESYNC_SECONDS", hide_env = true)]
    pub resync_seconds: Option<u64>,
    /// Tenants reconciled at once [env: INDIGO_RECONCILE_WORKERS] [default: 8]
    #[arg(long, env = "INDIGO_RECONCILE_WORKERS", hide_env = true)]
    pub reconcile_workers: Option<usize>,
    /// Where `indigo up` looks for a PostgreSQL server when no database_url is set, before starting a private one [env: INDIGO_LOCAL_DATABASE_URL] [default: postgres://postgres@127.0.0.1:5432/indigo]
    #[arg(long, env = "INDIGO_LOCAL_DATABASE_URL", hide_env = true)]
    pub local_database_url: Option<String>,
    /// Stripe's API base; set it to bill tenants (with stripe_secret_key) [env: INDIGO_STRIPE_API_BASE] [default: billing off]
    #[arg(long, env = "INDIGO_STRIPE_API_BASE", hide_env = true)]
    pub stripe_api_base: Option<String>,
    /// Stripe secret key [env: INDIGO_STRIPE_SECRET_KEY]
    #[arg(long, env = "INDIGO_STRIPE_SECRET_KEY", hide_env = true)]
    pub stripe_secret_key: Option<String>,
    /// SMTP relay (host:port, no auth) for the outbox's mail [env: INDIGO_SMTP_RELAY] [default: mail is logged, not sent]
    #[arg(long, env = "INDIGO_SMTP_RELAY", hide_env = true)]
    pub smtp_relay: Option<String>,
    /// Redis of the data planes: they share each tenant's plan rate and cache the catalogue there, and the admin API reads the cache's hit counts [env: INDIGO_REDIS_URL] [default: each replica limits alone, no cache]
    #[arg(long, env = "INDIGO_REDIS_URL", hide_env = true)]
    pub redis_url: Option<String>,
    /// OTLP/HTTP collector (base URL, e.g. http://127.0.0.1:4318) the daemon and the data planes it runs export traces to [env: INDIGO_OTLP_ENDPOINT] [default: no traces leave the process]
    #[arg(long, env = "INDIGO_OTLP_ENDPOINT", hide_env = true)]
    pub otlp_endpoint: Option<String>,
    /// How a trace's context travels between services: w3c (traceparent) or xray (X-Amzn-Trace-Id) [env: INDIGO_TRACE_PROPAGATION] [default: w3c]
    #[arg(long, env = "INDIGO_TRACE_PROPAGATION", hide_env = true)]
    pub trace_propagation: Option<String>,
    /// Sender address of the outbox's mail [env: INDIGO_MAIL_FROM] [default: noreply@indigo.local]
    #[arg(long, env = "INDIGO_MAIL_FROM", hide_env = true)]
    pub mail_from: Option<String>,
    /// Signing secret of the Stripe webhook endpoint (whsec_...) [env: INDIGO_STRIPE_WEBHOOK_SECRET] [default: webhooks refused]
    #[arg(long, env = "INDIGO_STRIPE_WEBHOOK_SECRET", hide_env = true)]
    pub stripe_webhook_secret: Option<String>,
    /// Hours a tenant may stay unpaid after a failed payment before suspension [env: INDIGO_PAYMENT_GRACE_HOURS] [default: 72]
    #[arg(long, env = "INDIGO_PAYMENT_GRACE_HOURS", hide_env = true)]
    pub payment_grace_hours: Option<u64>,
    /// Seconds a moved tenant's rows stay in the source database after the switch [env: INDIGO_MOVE_GRACE_SECONDS] [default: 300]
    #[arg(long, env = "INDIGO_MOVE_GRACE_SECONDS", hide_env = true)]
    pub move_grace_seconds: Option<u64>,
    /// The most silos this installation may run (on AWS, what the account's RDS DB cluster quota leaves it); an upgrade past it is refused [env: INDIGO_MAX_SILOS] [default: no limit]
    #[arg(long, env = "INDIGO_MAX_SILOS", hide_env = true)]
    pub max_silos: Option<u32>,
    /// Hours an offboarded tenant's export bundle is kept for hand-over before it is removed [env: INDIGO_EXPORT_RETENTION_HOURS] [default: 168]
    #[arg(long, env = "INDIGO_EXPORT_RETENTION_HOURS", hide_env = true)]
    pub export_retention_hours: Option<u64>,
    /// Longest an admin API query may run, in milliseconds; longer is cancelled and answered 503 [env: INDIGO_API_QUERY_TIMEOUT_MS] [default: 10000]
    #[arg(long, env = "INDIGO_API_QUERY_TIMEOUT_MS", hide_env = true)]
    pub api_query_timeout_ms: Option<u64>,
    /// Longest an admin API read (GET) may take as a whole, in milliseconds; longer is given up and answered 503 [env: INDIGO_API_READ_TIMEOUT_MS] [default: 15000]
    #[arg(long, env = "INDIGO_API_READ_TIMEOUT_MS", hide_env = true)]
    pub api_read_timeout_ms: Option<u64>,
    /// Admin API requests each token may make per second (bursts of twice that) [env: INDIGO_API_REQUESTS_PER_SECOND] [default: 100]
    #[arg(long, env = "INDIGO_API_REQUESTS_PER_SECOND", hide_env = true)]
    pub api_requests_per_second: Option<u32>,
    /// `local` or `aws` (silos on Aurora, the data plane on ECS, usage and metrics to DynamoDB and CloudWatch; standard AWS configuration) [env: INDIGO_PROVIDER] [default: local]
    #[arg(long, env = "INDIGO_PROVIDER", hide_env = true)]
    pub provider: Option<String>,
    /// DynamoDB usage table of the AWS provider [env: INDIGO_AWS_USAGE_TABLE] [default: indigo-usage]
    #[arg(long, env = "INDIGO_AWS_USAGE_TABLE", hide_env = true)]
    pub aws_usage_table: Option<String>,
    /// DynamoDB table of each tenant's plan, features and limits [env: INDIGO_AWS_FEATURES_TABLE] [default: indigo-tenant-features]
    #[arg(long, env = "INDIGO_AWS_FEATURES_TABLE", hide_env = true)]
    pub aws_features_table: Option<String>,
    /// CloudWatch namespace of per-tenant metrics [env: INDIGO_AWS_METRICS_NAMESPACE] [default: Indigo/Usage]
    #[arg(long, env = "INDIGO_AWS_METRICS_NAMESPACE", hide_env = true)]
    pub aws_metrics_namespace: Option<String>,
    /// ECS cluster the data-plane services run on [env: INDIGO_AWS_ECS_CLUSTER] [default: indigo]
    #[arg(long, env = "INDIGO_AWS_ECS_CLUSTER", hide_env = true)]
    pub aws_ecs_cluster: Option<String>,
    /// Container image of the data plane on ECS [env: INDIGO_AWS_DATAPLANE_IMAGE] [default: indigo-dataplane:latest]
    #[arg(long, env = "INDIGO_AWS_DATAPLANE_IMAGE", hide_env = true)]
    pub aws_dataplane_image: Option<String>,
    /// Bedrock model the data-plane tasks write product descriptions with, e.g. amazon.nova-micro-v1:0 [env: INDIGO_AWS_BEDROCK_MODEL_ID] [default: the tasks' built-in writer]
    #[arg(long, env = "INDIGO_AWS_BEDROCK_MODEL_ID", hide_env = true)]
    pub aws_bedrock_model_id: Option<String>,
    /// Comma-separated subnets: the data plane runs on Fargate there (else on EC2 capacity) [env: INDIGO_AWS_SUBNETS]
    #[arg(long, env = "INDIGO_AWS_SUBNETS", hide_env = true)]
    pub aws_subnets: Option<String>,
    /// Comma-separated security groups of the Fargate tasks [env: INDIGO_AWS_SECURITY_GROUPS]
    #[arg(long, env = "INDIGO_AWS_SECURITY_GROUPS", hide_env = true)]
    pub aws_security_groups: Option<String>,
    /// PostgreSQL server (superuser URL) standing in for every Aurora cluster, for trying the AWS mode on an emulator; never set it against AWS [env: INDIGO_AWS_CLUSTER_STAND_IN]
    #[arg(long, env = "INDIGO_AWS_CLUSTER_STAND_IN", hide_env = true)]
    pub aws_cluster_stand_in: Option<String>,
    /// Where the data-plane tasks on ECS reach the admin API, from inside the VPC (required with provider `aws`) [env: INDIGO_AWS_CONTROL_PLANE_URL]
    #[arg(long, env = "INDIGO_AWS_CONTROL_PLANE_URL", hide_env = true)]
    pub aws_control_plane_url: Option<String>,
    /// CloudWatch Logs group of the data-plane tasks' output [env: INDIGO_AWS_LOG_GROUP] [default: /indigo/dataplane]
    #[arg(long, env = "INDIGO_AWS_LOG_GROUP", hide_env = true)]
    pub aws_log_group: Option<String>,
    /// ARN of the IAM role ECS starts the data-plane tasks with: it reads their `secrets` from Secrets Manager and writes their logs [env: INDIGO_AWS_TASK_EXECUTION_ROLE]
    #[arg(long, env = "INDIGO_AWS_TASK_EXECUTION_ROLE", hide_env = true)]
    pub aws_task_execution_role: Option<String>,
    /// ARN of the IAM role the data-plane tasks act as: it reads the tenants' cluster-login secrets and calls Bedrock and Personalize [env: INDIGO_AWS_TASK_ROLE]
    #[arg(long, env = "INDIGO_AWS_TASK_ROLE", hide_env = true)]
    pub aws_task_role: Option<String>,
    /// The load balancer's target group of the pool's data plane (`app/<lb>/<id>/targetgroup/<tg>/<id>`): autoscaling then also tracks requests per task [env: INDIGO_AWS_POOL_TARGET_GROUP]
    #[arg(long, env = "INDIGO_AWS_POOL_TARGET_GROUP", hide_env = true)]
    pub aws_pool_target_group: Option<String>,
    /// ARN of the storefront load balancer's listener: each silo tenant's data plane gets a target group there, reached at <slug>.<aws_storefront_domain>, and scales on requests per task too [env: INDIGO_AWS_STOREFRONT_LISTENER]
    #[arg(long, env = "INDIGO_AWS_STOREFRONT_LISTENER", hide_env = true)]
    pub aws_storefront_listener: Option<String>,
    /// The domain under which silo tenants' storefronts answer on that listener [env: INDIGO_AWS_STOREFRONT_DOMAIN]
    #[arg(long, env = "INDIGO_AWS_STOREFRONT_DOMAIN", hide_env = true)]
    pub aws_storefront_domain: Option<String>,
    /// S3 bucket of the tenants' own backups, made if missing [env: INDIGO_AWS_BACKUP_BUCKET] [default: <aws_ecs_cluster>-tenant-backups]
    #[arg(long, env = "INDIGO_AWS_BACKUP_BUCKET", hide_env = true)]
    pub aws_backup_bucket: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// `None` lets `indigo up` find or start a local server.
    pub database_url: Option<String>,
    pub listen: SocketAddr,
    pub plans_file: PathBuf,
    pub costs_file: PathBuf,
    pub admin_token: Option<Secret>,
    /// The password of the data plane's database role; `None`: it has none.
    pub app_database_password: Option<Secret>,
    pub data_dir: PathBuf,
    /// `None`: the control database's server.
    pub tenant_server_url: Option<String>,
    pub pool_database: String,
    /// Where `indigo up` runs the local data plane.
    pub dataplane_listen: SocketAddr,
    pub resync_seconds: u64,
    pub reconcile_workers: usize,
    /// Where `indigo up` looks for a server when `database_url` is unset.
    pub local_database_url: String,
    /// Stripe's API base and key; billing is off without them.
    pub stripe: Option<StripeConfig>,
    /// `None`: the outbox's mail is logged instead of sent.
    pub smtp_relay: Option<String>,
    /// Passed to the data planes (shared plan rates, the catalogue cache) and
    /// read for the cache's hit counts; `None`: each replica limits tenants'
    /// rates alone and nothing is cached.
    pub redis_url: Option<String>,
    /// Where traces are exported and how their context travels; passed to the data planes too.
    pub traces: indigo_core::traces::TraceExport,
    pub mail_from: String,
    /// `None`: Stripe webhooks are refused (503).
    pub stripe_webhook_secret: Option<Secret>,
    pub payment_grace_hours: u64,
    pub move_grace_seconds: u64,
    /// `None`: no limit on the silos this installation runs.
    pub max_silos: Option<u32>,
    pub export_retention_hours: u64,
    /// The admin API's statement timeout.
    pub api_query_timeout: std::time::Duration,
    /// The longest an admin API read may take as a whole.
    pub api_read_timeout: std::time::Duration,
    /// The admin API's rate per token.
    pub api_requests_per_second: u32,
    pub provider: Provider,
    pub aws_usage_table: String,
    pub aws_features_table: String,
    pub aws_metrics_namespace: String,
    pub aws_ecs_cluster: String,
    /// Where tenants' backups are kept with provider `aws`.
    pub aws_backup_bucket: String,
    pub aws_dataplane_image: String,
    /// `None`: the data-plane tasks write descriptions with their built-in writer, not Bedrock.
    pub aws_bedrock_model_id: Option<String>,
    /// `None`: EC2 capacity with bridge networking.
    pub aws_subnets: Option<crate::providers::aws::ecs::Subnets>,
    /// `None` (always, on AWS): clusters are reached at their endpoints.
    pub aws_cluster_stand_in: Option<String>,
    /// Where the data-plane tasks reach the admin API; required with
    /// `Provider::Aws` (`indigo up` gives its own).
    pub aws_control_plane_url: Option<String>,
    pub aws_log_group: String,
    /// The IAM roles of the data-plane tasks: ECS's (`executionRoleArn`) and
    /// their own (`taskRoleArn`). Both are needed on AWS; the stand-in
    /// ignores them.
    pub aws_task_roles: crate::providers::aws::ecs::TaskRoles,
    pub aws_pool_target_group: Option<String>,
    /// The storefront load balancer's listener and the domain silo tenants'
    /// hosts are under; `None`: silo services are behind no load balancer the
    /// control plane manages.
    pub aws_storefront: Option<(String, String)>,
    /// The storefront's signing secret, when `indigo up` brings its own; on
    /// AWS it is otherwise made once in Secrets Manager. Not a setting.
    pub storefront_jwt_secret: Option<Secret>,
}

/// Where the control plane keeps what it acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Local,
    /// Silos on Aurora, the data plane on ECS, usage and metrics on DynamoDB and CloudWatch.
    Aws,
}

#[derive(Debug, Clone)]
pub struct StripeConfig {
    /// Ends with `/`: async-stripe joins paths as `{base}v1/...`.
    pub api_base: String,
    pub secret_key: Secret,
}

impl Config {
    /// Reads `file` (or `indigo.toml` when present), then applies `overrides`.
    pub fn load(file: Option<&Path>, overrides: Overrides) -> Result<Self, ConfigError> {
        let from_file = match file {
            Some(path) => read_file(path)?,
            None if Path::new(DEFAULT_CONFIG_FILE).exists() => read_file(Path::new(DEFAULT_CONFIG_FILE))?,
            None => ConfigFile::default(),
        };
        let listen_raw = overrides.listen.or(from_file.listen).unwrap_or_else(|| DEFAULT_LISTEN.into());
        let listen = parse_address(&listen_raw, "listen", "INDIGO_LISTEN")?;
        let dataplane_listen_raw = overrides
            .dataplane_listen
            .or(from_file.dataplane_listen)
            .unwrap_or_else(|| DEFAULT_DATAPLANE_LISTEN.into());
        let dataplane_listen = parse_address(&dataplane_listen_raw, "dataplane_listen", "INDIGO_DATAPLANE_LISTEN")?;
        let database_url = overrides.database_url.or(from_file.database_url);
        check_postgres_url(database_url.as_deref(), "database_url", "INDIGO_DATABASE_URL")?;
        let local_database_url = overrides
            .local_database_url
            .or(from_file.local_database_url)
            .unwrap_or_else(|| DEFAULT_LOCAL_DATABASE_URL.into());
        check_postgres_url(Some(&local_database_url), "local_database_url", "INDIGO_LOCAL_DATABASE_URL")?;
        let tenant_server_url = overrides.tenant_server_url.or(from_file.tenant_server_url);
        check_postgres_url(tenant_server_url.as_deref(), "tenant_server_url", "INDIGO_TENANT_SERVER_URL")?;
        let aws_cluster_stand_in = overrides.aws_cluster_stand_in.or(from_file.aws_cluster_stand_in);
        check_postgres_url(aws_cluster_stand_in.as_deref(), "aws_cluster_stand_in", "INDIGO_AWS_CLUSTER_STAND_IN")?;
        let pool_database =
            overrides.pool_database.or(from_file.pool_database).unwrap_or_else(|| DEFAULT_POOL_DATABASE.into());
        if pool_database.is_empty()
            || pool_database.len() > 63
            || !pool_database.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(ConfigError::Invalid {
                key: "pool_database",
                env: "INDIGO_POOL_DATABASE",
                message: "must be 1 to 63 lowercase letters, digits and `_`".into(),
            });
        }
        let role = |key: &'static str, env: &'static str, value: Option<String>| match value {
            Some(arn) if !arn.starts_with("arn:") => Err(ConfigError::Invalid {
                key,
                env,
                message: format!("is an IAM role's ARN (arn:aws:iam::…), not {arn:?}"),
            }),
            value => Ok(value),
        };
        let aws_task_roles = crate::providers::aws::ecs::TaskRoles {
            execution: role(
                "aws_task_execution_role",
                "INDIGO_AWS_TASK_EXECUTION_ROLE",
                overrides.aws_task_execution_role.or(from_file.aws_task_execution_role),
            )?,
            task: role("aws_task_role", "INDIGO_AWS_TASK_ROLE", overrides.aws_task_role.or(from_file.aws_task_role))?,
        };
        let aws_storefront = match (
            overrides.aws_storefront_listener.or(from_file.aws_storefront_listener),
            overrides.aws_storefront_domain.or(from_file.aws_storefront_domain),
        ) {
            (Some(listener), Some(domain)) => Some((listener, domain)),
            (None, None) => None,
            _ => {
                return Err(ConfigError::Invalid {
                    key: "aws_storefront_listener",
                    env: "INDIGO_AWS_STOREFRONT_LISTENER",
                    message: "is set together with aws_storefront_domain (INDIGO_AWS_STOREFRONT_DOMAIN), or neither is"
                        .into(),
                });
            }
        };
        let trace_propagation = match overrides.trace_propagation.or(from_file.trace_propagation) {
            Some(raw) => raw.parse().map_err(|message| ConfigError::Invalid {
                key: "trace_propagation",
                env: "INDIGO_TRACE_PROPAGATION",
                message,
            })?,
            None => indigo_core::traces::Propagation::default(),
        };
        let admin_token = overrides.admin_token.or(from_file.admin_token).map(Secret::new);
        let app_database_password =
            overrides.app_database_password.or(from_file.app_database_password).map(Secret::new);
        let stripe_webhook_secret =
            overrides.stripe_webhook_secret.or(from_file.stripe_webhook_secret).map(Secret::new);
        let stripe = match (
            overrides.stripe_api_base.or(from_file.stripe_api_base),
            overrides.stripe_secret_key.or(from_file.stripe_secret_key),
        ) {
            (None, None) => None,
            (Some(base), Some(key)) => {
                if !(base.starts_with("http://") || base.starts_with("https://")) {
                    return Err(ConfigError::Invalid {
                        key: "stripe_api_base",
                        env: "INDIGO_STRIPE_API_BASE",
                        message: format!("`{base}` is not an http(s) URL"),
                    });
                }
                let api_base = if base.ends_with('/') { base } else { format!("{base}/") };
                Some(StripeConfig { api_base, secret_key: Secret::new(key) })
            }
            (Some(_), None) => {
                return Err(ConfigError::Invalid {
                    key: "stripe_secret_key",
                    env: "INDIGO_STRIPE_SECRET_KEY",
                    message: "is required when stripe_api_base is set".into(),
                });
            }
            (None, Some(_)) => {
                return Err(ConfigError::Invalid {
                    key: "stripe_api_base",
                    env: "INDIGO_STRIPE_API_BASE",
                    message: "is required when stripe_secret_key is set (https://api.stripe.com/ for Stripe itself)"
                        .into(),
                });
            }
        };
        let plans_file: PathBuf =
            overrides.plans_file.or(from_file.plans_file).unwrap_or_else(|| DEFAULT_PLANS_FILE.into());
        let costs_file =
            overrides.costs_file.or(from_file.costs_file).unwrap_or_else(|| plans_file.with_file_name("costs.toml"));
        let provider = match overrides.provider.or(from_file.provider).as_deref() {
            None | Some("local") => Provider::Local,
            Some("aws") => Provider::Aws,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    key: "provider",
                    env: "INDIGO_PROVIDER",
                    message: format!("`{other}` is not `local` or `aws`"),
                });
            }
        };
        let aws_control_plane_url = overrides.aws_control_plane_url.or(from_file.aws_control_plane_url);
        if let Some(url) = &aws_control_plane_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(ConfigError::Invalid {
                key: "aws_control_plane_url",
                env: "INDIGO_AWS_CONTROL_PLANE_URL",
                message: format!("`{url}` is not an http:// or https:// URL"),
            });
        }
        let list = |raw: Option<String>| -> Vec<String> {
            raw.iter().flat_map(|r| r.split(',')).map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
        };
        let subnets = list(overrides.aws_subnets.or(from_file.aws_subnets));
        let security_groups = list(overrides.aws_security_groups.or(from_file.aws_security_groups));
        let aws_ecs_cluster =
            overrides.aws_ecs_cluster.or(from_file.aws_ecs_cluster).unwrap_or_else(|| "indigo".into());
        let config = Self {
            stripe,
            costs_file,
            provider,
            aws_backup_bucket: overrides
                .aws_backup_bucket
                .or(from_file.aws_backup_bucket)
                .unwrap_or_else(|| format!("{aws_ecs_cluster}-tenant-backups").to_lowercase()),
            aws_ecs_cluster,
            aws_dataplane_image: overrides
                .aws_dataplane_image
                .or(from_file.aws_dataplane_image)
                .unwrap_or_else(|| "indigo-dataplane:latest".into()),
            aws_bedrock_model_id: overrides.aws_bedrock_model_id.or(from_file.aws_bedrock_model_id),
            aws_subnets: (!subnets.is_empty())
                .then_some(crate::providers::aws::ecs::Subnets { subnets, security_groups }),
            aws_usage_table: overrides
                .aws_usage_table
                .or(from_file.aws_usage_table)
                .unwrap_or_else(|| "indigo-usage".into()),
            aws_features_table: overrides
                .aws_features_table
                .or(from_file.aws_features_table)
                .unwrap_or_else(|| "indigo-tenant-features".into()),
            aws_metrics_namespace: overrides
                .aws_metrics_namespace
                .or(from_file.aws_metrics_namespace)
                .unwrap_or_else(|| "Indigo/Usage".into()),
            smtp_relay: overrides.smtp_relay.or(from_file.smtp_relay),
            redis_url: overrides.redis_url.or(from_file.redis_url),
            traces: indigo_core::traces::TraceExport {
                otlp_endpoint: overrides.otlp_endpoint.or(from_file.otlp_endpoint),
                propagation: trace_propagation,
            },
            stripe_webhook_secret,
            payment_grace_hours: overrides.payment_grace_hours.or(from_file.payment_grace_hours).unwrap_or(72),
            move_grace_seconds: overrides.move_grace_seconds.or(from_file.move_grace_seconds).unwrap_or(300),
            max_silos: overrides.max_silos.or(from_file.max_silos),
            export_retention_hours: overrides
                .export_retention_hours
                .or(from_file.export_retention_hours)
                .unwrap_or(168)
                .min(24 * 365 * 100),
            api_requests_per_second: overrides
                .api_requests_per_second
                .or(from_file.api_requests_per_second)
                .unwrap_or(100)
                .max(1),
            api_query_timeout: std::time::Duration::from_millis(
                overrides.api_query_timeout_ms.or(from_file.api_query_timeout_ms).unwrap_or(10_000).max(1),
            ),
            api_read_timeout: std::time::Duration::from_millis(
                overrides.api_read_timeout_ms.or(from_file.api_read_timeout_ms).unwrap_or(15_000).max(1),
            ),
            mail_from: overrides.mail_from.or(from_file.mail_from).unwrap_or_else(|| "noreply@indigo.local".into()),
            database_url,
            listen,
            plans_file,
            admin_token,
            app_database_password,
            data_dir: overrides.data_dir.or(from_file.data_dir).unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
            tenant_server_url,
            aws_cluster_stand_in,
            aws_control_plane_url,
            storefront_jwt_secret: None,
            aws_log_group: overrides
                .aws_log_group
                .or(from_file.aws_log_group)
                .unwrap_or_else(|| "/indigo/dataplane".into()),
            aws_task_roles,
            aws_pool_target_group: overrides.aws_pool_target_group.or(from_file.aws_pool_target_group),
            aws_storefront,
            pool_database,
            dataplane_listen,
            resync_seconds: positive(
                overrides.resync_seconds.or(from_file.resync_seconds).unwrap_or(60),
                "resync_seconds",
                "INDIGO_RESYNC_SECONDS",
            )?,
            reconcile_workers: positive(
                overrides.reconcile_workers.or(from_file.reconcile_workers).unwrap_or(8),
                "reconcile_workers",
                "INDIGO_RECONCILE_WORKERS",
            )?,
            local_database_url,
        };
        config.check_secrets()?;
        Ok(config)
    }

    /// Secrets too short to resist guessing are refused; an empty webhook
    /// secret would accept any signature anyone can compute (a forged webhook).
    /// Checked again once secrets given as ARNs are read.
    pub fn check_secrets(&self) -> Result<(), ConfigError> {
        let checks = [
            ("admin_token", "INDIGO_ADMIN_TOKEN", &self.admin_token, "must be at least 16 characters"),
            (
                "app_database_password",
                "INDIGO_APP_DATABASE_PASSWORD",
                &self.app_database_password,
                "must be at least 16 characters",
            ),
            (
                "stripe_webhook_secret",
                "INDIGO_STRIPE_WEBHOOK_SECRET",
                &self.stripe_webhook_secret,
                "must be at least 16 characters (Stripe's `whsec_...` signing secret)",
            ),
        ];
        for (key, env, secret, message) in checks {
            if secret.as_ref().is_some_and(|s| s.expose().trim().len() < 16) {
                return Err(ConfigError::Invalid { key, env, message: message.into() });
            }
        }
        Ok(())
    }

    /// Every secret setting given as a Secrets Manager ARN, and where it is kept.
    pub fn secrets_by_arn(&mut self) -> Vec<(&'static str, &mut Secret)> {
        let stripe_key = self.stripe.as_mut().map(|s| &mut s.secret_key);
        [
            ("admin_token", self.admin_token.as_mut()),
            ("app_database_password", self.app_database_password.as_mut()),
            ("stripe_webhook_secret", self.stripe_webhook_secret.as_mut()),
            ("stripe_secret_key", stripe_key),
        ]
        .into_iter()
        .filter_map(|(key, secret)| secret.filter(|s| s.expose().starts_with(SECRET_ARN_PREFIX)).map(|s| (key, s)))
        .collect()
    }

    /// The configured database, or the conventional local one.
    pub fn database_url_or_local(&self) -> &str {
        self.database_url.as_deref().unwrap_or(&self.local_database_url)
    }
}

fn positive<T: PartialOrd + Default + fmt::Display>(
    value: T,
    key: &'static str,
    env: &'static str,
) -> Result<T, ConfigError> {
    if value > T::default() {
        Ok(value)
    } else {
        Err(ConfigError::Invalid { key, env, message: format!("must be more than 0, got {value}") })
    }
}

fn parse_address(raw: &str, key: &'static str, env: &'static str) -> Result<SocketAddr, ConfigError> {
    raw.parse().map_err(|_| ConfigError::Invalid {
        key,
        env,
        message: format!("`{raw}` is not an address such as 127.0.0.1:8080"),
    })
}

fn check_postgres_url(url: Option<&str>, key: &'static str, env: &'static str) -> Result<(), ConfigError> {
    match url {
        Some(url) if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) => {
            Err(ConfigError::Invalid { key, env, message: "must be a postgres:// URL".into() })
        }
        _ => Ok(()),
    }
}

fn read_file(path: &Path) -> Result<ConfigFile, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.into(), message: e.message().to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile_path::TempPath {
        tempfile_path::TempPath::with(text)
    }

    /// A file under the system temp dir, removed on drop.
    mod tempfile_path {
        pub struct TempPath(pub std::path::PathBuf);
        impl TempPath {
            pub fn with(text: &str) -> Self {
                let path = std::env::temp_dir().join(format!("indigo-config-{}.toml", uuid::Uuid::new_v4()));
                std::fs::write(&path, text).unwrap();
                Self(path)
            }
        }
        impl Drop for TempPath {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn flags_override_the_file() {
        let file = write("listen = \"127.0.0.1:9000\"\ndata_dir = \"/var/lib/indigo\"\n");
        let config =
            Config::load(Some(&file.0), Overrides { listen: Some("0.0.0.0:7000".into()), ..Default::default() })
                .unwrap();
        assert_eq!(config.listen.to_string(), "0.0.0.0:7000");
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/indigo"));
        assert_eq!(config.plans_file, PathBuf::from(DEFAULT_PLANS_FILE));
        assert!(config.database_url.is_none());
    }

    #[test]
    fn errors_name_the_key() {
        let file = write("listen = \"127.0.0.1:9000\"\nlisten_port = 3\n");
        let err = Config::load(Some(&file.0), Overrides::default()).unwrap_err().to_string();
        assert!(err.contains("unknown field `listen_port`"), "{err}");

        let err = Config::load(None, Overrides { listen: Some("nowhere".into()), ..Default::default() })
            .unwrap_err()
            .to_string();
        assert_eq!(err, "config key `listen` (env INDIGO_LISTEN): `nowhere` is not an address such as 127.0.0.1:8080");

        let err = Config::load(None, Overrides { database_url: Some("mysql://x".into()), ..Default::default() })
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("config key `database_url` (env INDIGO_DATABASE_URL)"), "{err}");

        let err =
            Config::load(None, Overrides { aws_task_role: Some("indigo-dataplane".into()), ..Default::default() })
                .unwrap_err()
                .to_string();
        assert!(
            err.starts_with("config key `aws_task_role` (env INDIGO_AWS_TASK_ROLE): is an IAM role's ARN"),
            "{err}"
        );
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let config = Config::load(
            None,
            Overrides { admin_token: Some("a-very-secret-admin-token".into()), ..Default::default() },
        )
        .unwrap();
        assert!(!format!("{config:?}").contains("a-very-secret"));
    }

    #[test]
    fn an_empty_or_short_webhook_secret_is_refused() {
        for weak in ["", "   ", "whsec_short"] {
            let overrides = Overrides { stripe_webhook_secret: Some(weak.into()), ..Default::default() };
            let err = Config::load(None, overrides).unwrap_err().to_string();
            assert!(err.starts_with("config key `stripe_webhook_secret`"), "{weak:?}: {err}");
        }
        let strong = Overrides { stripe_webhook_secret: Some("whsec_0123456789abcdef".into()), ..Default::default() };
        assert!(Config::load(None, strong).unwrap().stripe_webhook_secret.is_some());
    }
}
