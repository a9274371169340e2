//! The `indigo` command line: the daemon's own commands (over the control
//! plane's library), the operators' client commands (over the admin API
//! client), and `indigo dataplane`, a thin call into the data plane's library
//! that `indigo up` runs its storefront servers with. This crate is the only
//! one that joins the two planes.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use comfy_table::presets::UTF8_BORDERS_ONLY;
use comfy_table::{ContentArrangement, Table};
use indigo_core::api::{CreateTenantRequest, CreateTokenRequest, Tenant, TenantMove, Workflow};
use indigo_core::tenant::Role;
use serde::Serialize;

use indigo_client::{AdminClient, EventQuery, MoveQuery, TenantQuery, WorkflowQuery};
use indigo_controlplane::config::{self, Config, Overrides};
use indigo_controlplane::control_plane::ControlPlane;
use indigo_controlplane::providers::aws::secrets::resolve_config_arns;
use indigo_controlplane::{db, policy, server, telemetry, up};

#[derive(Debug, Parser)]
#[command(
    name = "indigo",
    version,
    about = "Indigo control plane: onboards, tiers, meters and offboards the tenants of a multi-tenant SaaS.",
    long_about = "Indigo control plane: onboards, tiers, meters and offboards the tenants of a multi-tenant SaaS.\n\n\
                  Start everything locally with `indigo up --demo`, then try `indigo tenant list`.\n\
                  The daemon commands (up, serve, migrate) read indigo.toml and INDIGO_* variables;\n\
                  the client commands (tenant, plans, token, events) talk to the admin API."
)]
pub struct Cli {
    /// Config file [default: indigo.toml when present]
    #[arg(long, global = true, env = "INDIGO_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the whole local platform: find (or start) PostgreSQL, migrate, serve the admin API
    Up(UpArgs),
    /// Run the control-plane daemon against the configured database
    Serve(DaemonArgs),
    /// Apply the control database migrations and exit
    Migrate(DaemonArgs),
    /// Validate the policy files and exit
    Policy(DaemonArgs),
    /// Create, inspect and change tenants
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// List the plans and what they include
    Plans(ClientArgs),
    /// Show the event stream
    Events(EventsArgs),
    /// Show the reconciler: queue, errors, drift repaired, the RLS audit and the data-plane services
    Reconciler(ClientArgs),
    /// Show whether each billed tenant's usage at Stripe (its meters' hours and its invoices) is what Indigo counted
    Parity(ClientArgs),
    /// Follow onboarding, offboarding and tier-change workflows and their moves; retry or cancel one (operator)
    #[command(subcommand)]
    Workflow(WorkflowCommand),
    /// Manage admin API tokens (admin role)
    #[command(subcommand)]
    Token(TokenCommand),
    /// Print a storefront JWT for a tenant, signed with its own key (derived from the local platform's secret)
    StorefrontToken(StorefrontTokenArgs),
    /// Run the data plane (the same server as `indigo-dataplane`); `indigo up` uses it
    Dataplane(indigo_dataplane::Cli),
    /// Exit 0 if the admin API on --listen answers ready, 1 if not: the container's health check
    CheckReady(CheckReadyArgs),
    /// Stop the private PostgreSQL under a data directory once the `indigo up`
    /// that started it is gone; `indigo up` runs it
    #[command(hide = true)]
    GuardPostgres(GuardPostgresArgs),
}

#[derive(Debug, Args)]
pub struct CheckReadyArgs {
    /// Where the admin API listens
    #[arg(long, env = "INDIGO_LISTEN", default_value = config::DEFAULT_LISTEN)]
    pub listen: std::net::SocketAddr,
}

#[derive(Debug, Args)]
pub struct GuardPostgresArgs {
    /// The `indigo up` to outlive
    #[arg(long)]
    pub parent: u32,
    #[arg(long)]
    pub data_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct StorefrontTokenArgs {
    /// The tenant (slug or id)
    pub tenant: String,
    /// owner, staff or customer
    #[arg(long, default_value = "owner")]
    pub role: String,
    /// Who the token speaks for (its `sub`): for a customer token, the shopper
    /// whose own customer record and orders it reaches [default: SLUG-ROLE]
    #[arg(long)]
    pub subject: Option<String>,
    /// Lifetime in seconds
    #[arg(long, default_value_t = 3600)]
    pub ttl: i64,
    /// Print the tenant's own signing key (base64url) instead of a token: its
    /// backend signs its shoppers' tokens with it (HS256, `kid` = the tenant id)
    /// and cannot sign for any other tenant
    #[arg(long)]
    pub signing_key: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct DaemonArgs {
    #[command(flatten)]
    pub overrides: Overrides,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub overrides: Overrides,
    /// Seed a handful of demo tenants across all plans
    #[arg(long)]
    pub demo: bool,
}

#[derive(Debug, Clone, Copy, Default, ValueEnum)]
pub enum Output {
    /// Aligned columns, for people
    #[default]
    Table,
    /// JSON, for scripts
    Json,
}

#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Admin API base URL
    #[arg(long, env = "INDIGO_API_URL", default_value = "http://127.0.0.1:8080")]
    pub api_url: String,
    /// Bearer token [default: the token `indigo up` wrote to <data dir>/admin.token]
    #[arg(long, env = "INDIGO_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Where `indigo up` keeps its state
    #[arg(long, env = "INDIGO_DATA_DIR", default_value = config::DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    #[arg(long, short, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

impl ClientArgs {
    fn client(&self) -> anyhow::Result<AdminClient> {
        let token = match &self.token {
            Some(token) => Some(token.clone()),
            None => std::fs::read_to_string(up::token_file(&self.data_dir)).ok().map(|t| t.trim().to_owned()),
        };
        Ok(AdminClient::new(&self.api_url, token))
    }
}

#[derive(Debug, Args)]
pub struct Mutation {
    /// Makes a retried command act once; a fresh one is generated when omitted
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
}

impl Mutation {
    fn key(&self) -> String {
        self.idempotency_key.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
    }
}

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// List tenants
    List {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        plan: Option<String>,
        /// pending, active, suspended or deleted
        #[arg(long)]
        lifecycle: Option<String>,
        /// pool or silo
        #[arg(long)]
        isolation: Option<String>,
        #[arg(long)]
        phase: Option<String>,
    },
    /// Show one tenant (by slug or id)
    Get {
        tenant: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Register a new tenant
    Create {
        /// Display name
        #[arg(long)]
        name: String,
        /// 3-40 lowercase letters, digits and hyphens
        #[arg(long)]
        slug: String,
        #[arg(long)]
        owner_email: String,
        #[arg(long, default_value = "starter")]
        plan: String,
        #[command(flatten)]
        mutation: Mutation,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Move a tenant to another plan (enterprise means its own database)
    Plan {
        tenant: String,
        plan: String,
        /// Show what the change would do (rows to move, copy time, write pause, prices, refusals) and change nothing
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        mutation: Mutation,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// A tenant's own backups, newest first, against its plan's RPO
    Backups {
        tenant: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Back a tenant up now (kept and pruned like the scheduled backups)
    Backup {
        tenant: String,
        #[command(flatten)]
        mutation: Mutation,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Restore a tenant's rows from one of its backups, in place unless told (admin role; what it wrote since is lost)
    Restore {
        tenant: String,
        /// The backup's id (`indigo tenant backups SLUG`)
        backup: uuid::Uuid,
        /// A silo tenant only: delete its silo and make it again, then load the backup there (it answers 503 meanwhile)
        #[arg(long)]
        into_new_silo: bool,
        /// Show what the restore would do (rows per table now and in the backup, whether it is intact, refusals) and change nothing
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        mutation: Mutation,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Stop a tenant's storefront from serving
    Suspend {
        tenant: String,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        mutation: Mutation,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Let a suspended tenant serve again
    Resume {
        tenant: String,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        mutation: Mutation,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Offboard a tenant (admin role)
    Delete {
        tenant: String,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        mutation: Mutation,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only this tenant's events (slug or id)
    #[arg(long)]
    pub tenant: Option<String>,
    /// Only events of this kind, e.g. PlanChanged
    #[arg(long)]
    pub kind: Option<String>,
    /// Events after this id
    #[arg(long)]
    pub after: Option<i64>,
    #[arg(long, default_value_t = 50)]
    pub limit: i64,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Subcommand)]
pub enum WorkflowCommand {
    /// List workflows, newest first
    List {
        /// Only this tenant's (slug or id)
        #[arg(long)]
        tenant: Option<String>,
        /// onboarding, offboarding, tier_change or restore
        #[arg(long)]
        kind: Option<String>,
        /// running, compensating, succeeded, failed or cancelled
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List moves between pool and silo with their progress, newest first
    Moves {
        /// Only this tenant's (slug or id)
        #[arg(long)]
        tenant: Option<String>,
        /// Only moves still under way
        #[arg(long)]
        active: bool,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a workflow with each step's state
    Get {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Run a failed or cancelled workflow again
    Retry {
        id: String,
        #[command(flatten)]
        mutation: Mutation,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Stop a running workflow; its completed steps are undone
    Cancel {
        id: String,
        #[command(flatten)]
        mutation: Mutation,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token; its secret is printed once
    Create {
        /// Who uses it (recorded in the audit log)
        #[arg(long)]
        name: String,
        #[arg(long, value_parser = parse_role)]
        role: Role,
        #[command(flatten)]
        mutation: Mutation,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List tokens
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Revoke a token by id
    Revoke {
        id: String,
        #[command(flatten)]
        mutation: Mutation,
        #[command(flatten)]
        client: ClientArgs,
    },
}

fn parse_role(raw: &str) -> Result<Role, String> {
    raw.parse().map_err(|e: indigo_core::tenant::UnknownVariant| e.to_string())
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let config_file = cli.config;
    let load = |overrides: Overrides| Config::load(config_file.as_deref(), overrides);
    match cli.command {
        Command::Up(args) => {
            let mut config = load(args.overrides)?;
            let telemetry = telemetry::init(&config)?;
            resolve_config_arns(&mut config).await?;
            let ended = up::run(config, args.demo).await;
            telemetry.shutdown();
            ended
        }
        Command::Serve(args) => {
            let config = load(args.overrides)?;
            let telemetry = telemetry::init(&config)?;
            let ended = serve(config).await;
            telemetry.shutdown();
            ended
        }
        Command::Migrate(args) => {
            let config = load(args.overrides)?;
            let url = config.database_url_or_local();
            db::ensure_database(url).await?;
            db::migrate(&db::connect(url).await?).await?;
            println!("control database migrated ({} migrations)", db::MIGRATOR.iter().count());
            Ok(())
        }
        Command::Policy(args) => {
            let config = load(args.overrides)?;
            let plans = policy::load_plans(&config.plans_file)?;
            println!(
                "{}: {} plans valid ({})",
                config.plans_file.display(),
                plans.plans().len(),
                plans.names().collect::<Vec<_>>().join(", ")
            );
            let costs = policy::load_costs(&config.costs_file)?;
            println!("{}: cost model valid ({} services)", config.costs_file.display(), costs.services.len());
            Ok(())
        }
        Command::Tenant(command) => run_tenant(command).await,
        Command::Plans(client) => {
            let plans = client.client()?.plans().await?;
            print(client.output, &plans, || {
                let mut table =
                    table(&["PLAN", "TIER", "ISOLATION", "PRICE/MO", "PRODUCTS", "API CALLS/DAY", "RATE/S", "SILO"]);
                for p in &plans {
                    table.add_row(vec![
                        p.name.to_string(),
                        p.tier.to_string(),
                        p.isolation.to_string(),
                        format!("{}.{:02} {}", p.price_per_month / 100, p.price_per_month % 100, p.currency),
                        p.limits.products.to_string(),
                        p.limits.api_calls_per_day.to_string(),
                        p.rate_limit.requests_per_second.to_string(),
                        p.silo
                            .as_ref()
                            .map(|s| {
                                format!(
                                    "{}-{} ACU, {} d backups, {} replicas",
                                    s.acu_min, s.acu_max, s.backup_retention_days, s.dataplane_replicas
                                )
                            })
                            .unwrap_or_default(),
                    ]);
                }
                table.to_string()
            })
        }
        Command::Events(args) => {
            let query = EventQuery { after: args.after, tenant: args.tenant, kind: args.kind, limit: Some(args.limit) };
            let page = args.client.client()?.events(&query).await?;
            print(args.client.output, &page, || {
                let mut table = table(&["ID", "AT", "TENANT", "KIND", "MESSAGE"]);
                for e in &page.items {
                    table.add_row(vec![
                        e.id.to_string(),
                        e.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                        e.tenant_id.map(|t| t.to_string()).unwrap_or_default(),
                        e.kind.clone(),
                        e.message.clone(),
                    ]);
                }
                table.to_string()
            })
        }
        Command::Reconciler(client) => {
            let status = client.client()?.reconciler().await?;
            print(client.output, &status, || reconciler_text(&status))
        }
        Command::Parity(client) => {
            let parity = client.client()?.billing_parity().await?;
            print(client.output, &parity, || parity_table(&parity))
        }
        Command::Workflow(command) => run_workflow(command).await,
        Command::Token(command) => run_token(command).await,
        Command::StorefrontToken(args) => {
            let tenant = args.client.client()?.get_tenant(&args.tenant).await?;
            let secret = std::fs::read_to_string(up::jwt_secret_file(&args.client.data_dir)).with_context(|| {
                format!("no JWT secret in {}; is `indigo up` running here?", args.client.data_dir.display())
            })?;
            if args.signing_key {
                use base64::Engine;
                let key = indigo_dataplane::auth::tenant_key(secret.trim().as_bytes(), tenant.id);
                println!("{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key));
                return Ok(());
            }
            let role = serde_json::from_value(serde_json::Value::String(args.role.clone()))
                .map_err(|_| anyhow::anyhow!("role must be owner, staff or customer, not `{}`", args.role))?;
            let claims = indigo_dataplane::auth::Claims {
                tenant_id: tenant.id,
                sub: args.subject.clone().unwrap_or_else(|| format!("{}-{}", tenant.slug, args.role)),
                role,
                exp: chrono::Utc::now().timestamp() + args.ttl,
            };
            println!("{}", indigo_dataplane::auth::sign_hs256(secret.trim().as_bytes(), &claims));
            Ok(())
        }
        Command::Dataplane(args) => indigo_dataplane::run(args).await,
        Command::GuardPostgres(args) => up::guard_private_postgres(args.parent, &args.data_dir).await,
        Command::CheckReady(args) => {
            indigo_core::http::check_ready(args.listen).await.map_err(|reason| anyhow::anyhow!("not ready: {reason}"))
        }
    }
}

async fn serve(mut config: Config) -> anyhow::Result<()> {
    resolve_config_arns(&mut config).await?;
    let control_plane = ControlPlane::build(&config, None).await?;
    let _background = control_plane.start().await?;
    server::serve(server::bind(&config).await?, control_plane.state, server::shutdown_signal()).await
}

async fn run_tenant(command: TenantCommand) -> anyhow::Result<()> {
    let (client, tenant) = match command {
        TenantCommand::List { client, plan, lifecycle, isolation, phase } => {
            let api = client.client()?;
            let mut query = TenantQuery { plan, lifecycle, isolation, phase, limit: Some(500), cursor: None };
            let mut tenants = Vec::new();
            loop {
                let page = api.list_tenants(&query).await?;
                tenants.extend(page.items);
                match page.next_cursor {
                    Some(cursor) => query.cursor = Some(cursor),
                    None => break,
                }
            }
            return print(client.output, &tenants, || tenant_table(&tenants));
        }
        TenantCommand::Backups { tenant, client } => {
            let backups = client.client()?.backups(&tenant).await?;
            return print(client.output, &backups, || backups_table(&backups));
        }
        TenantCommand::Backup { tenant, mutation, client } => {
            let backup = client.client()?.take_backup(&tenant, &mutation.key()).await?;
            return print(client.output, &backup, || {
                format!("backup {} taken at {}: {} rows in {}", backup.id, backup.taken_at, backup.rows, backup.path)
            });
        }
        TenantCommand::Restore { tenant, backup, into_new_silo, dry_run: true, client, .. } => {
            let preview = client.client()?.preview_restore(&tenant, backup, restore_into(into_new_silo)).await?;
            return print(client.output, &preview, || restore_preview_table(&preview));
        }
        TenantCommand::Restore { tenant, backup, into_new_silo, mutation, client, .. } => {
            let into = restore_into(into_new_silo);
            let started = client.client()?.restore(&tenant, backup, into, &mutation.key()).await?;
            return print(client.output, &started, || {
                format!(
                    "restoring {tenant} from backup {backup}: workflow {id}\nfollow it with `indigo workflow get {id}`",
                    id = started.workflow_id
                )
            });
        }
        TenantCommand::Get { tenant, client } => {
            let found = client.client()?.get_tenant(&tenant).await?;
            (client, found)
        }
        TenantCommand::Create { name, slug, owner_email, plan, mutation, client } => {
            let request = CreateTenantRequest { name, slug, owner_email, plan };
            let created = client.client()?.create_tenant(&request, &mutation.key()).await?;
            (client, created)
        }
        TenantCommand::Plan { tenant, plan, dry_run: true, client, .. } => {
            let preview = client.client()?.preview_plan_change(&tenant, &plan).await?;
            return print(client.output, &preview, || preview_table(&preview));
        }
        TenantCommand::Plan { tenant, plan, mutation, client, .. } => {
            let changed = client.client()?.change_plan(&tenant, &plan, &mutation.key()).await?;
            (client, changed)
        }
        TenantCommand::Suspend { tenant, reason, mutation, client } => {
            let changed = client.client()?.suspend(&tenant, reason, &mutation.key()).await?;
            (client, changed)
        }
        TenantCommand::Resume { tenant, reason, mutation, client } => {
            let changed = client.client()?.resume(&tenant, reason, &mutation.key()).await?;
            (client, changed)
        }
        TenantCommand::Delete { tenant, reason, mutation, client } => {
            let changed = client.client()?.delete(&tenant, reason, &mutation.key()).await?;
            (client, changed)
        }
    };
    print(client.output, &tenant, || tenant_detail(&tenant))
}

fn workflow_table(workflows: &[Workflow]) -> String {
    let mut table = table(&["ID", "KIND", "TENANT", "STATE", "STEPS", "CREATED", "ERROR"]);
    for w in workflows {
        let done = w.steps.iter().filter(|s| s.state == "succeeded").count();
        table.add_row(vec![
            w.id.to_string(),
            w.kind.clone(),
            w.tenant_id.to_string(),
            w.state.to_string(),
            format!("{done}/{}", w.steps.len()),
            w.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            w.error.clone().unwrap_or_default(),
        ]);
    }
    table.to_string()
}

fn move_table(moves: &[TenantMove]) -> String {
    let mut table =
        table(&["TENANT", "MOVE", "PHASE", "ROWS COPIED", "LAG", "COPY (EST.)", "PAUSE (EST.)", "STARTED", "ERROR"]);
    // What happened beside what the preview said when the move started.
    let beside = |actual: Option<String>, estimate: Option<String>| match (actual, estimate) {
        (Some(actual), Some(estimate)) => format!("{actual} ({estimate})"),
        (Some(actual), None) => actual,
        (None, Some(estimate)) => format!("- ({estimate})"),
        (None, None) => String::new(),
    };
    for m in moves {
        let seconds = |s: f64| format!("{s:.1} s");
        let ms = |ms: i64| format!("{ms} ms");
        table.add_row(vec![
            m.slug.clone(),
            format!("{}→{}", m.from_isolation, m.to_isolation),
            m.phase.clone(),
            format!("{}/{}", m.rows_copied, m.rows_total),
            m.lag.to_string(),
            beside(m.copy_seconds.map(seconds), m.estimated_copy_seconds.map(seconds)),
            beside(m.pause_ms.map(ms), m.estimated_pause_ms.map(ms)),
            m.started_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            m.error.clone().unwrap_or_default(),
        ]);
    }
    table.to_string()
}

fn workflow_detail(w: &Workflow) -> String {
    let mut out =
        format!("{} workflow {} of tenant {}: {} (attempt {})\n", w.kind, w.id, w.tenant_id, w.state, w.attempt);
    if let Some(error) = &w.error {
        out.push_str(&format!("error: {error}\n"));
    }
    let mut steps = table(&["STEP", "STATE", "ATTEMPTS", "FINISHED", "ERROR"]);
    for s in &w.steps {
        steps.add_row(vec![
            s.name.clone(),
            s.state.clone(),
            s.attempts.to_string(),
            s.finished_at.map(|t| t.format("%H:%M:%S%.3f").to_string()).unwrap_or_default(),
            s.error.clone().unwrap_or_default(),
        ]);
    }
    out.push_str(&steps.to_string());
    out
}

async fn run_workflow(command: WorkflowCommand) -> anyhow::Result<()> {
    match command {
        WorkflowCommand::List { tenant, kind, state, limit, client } => {
            let query = WorkflowQuery { tenant, kind, state, limit: Some(limit) };
            let workflows = client.client()?.workflows(&query).await?;
            print(client.output, &workflows, || workflow_table(&workflows))
        }
        WorkflowCommand::Moves { tenant, active, limit, client } => {
            let moves = client.client()?.moves(&MoveQuery { tenant, active, limit: Some(limit) }).await?;
            print(client.output, &moves, || move_table(&moves))
        }
        WorkflowCommand::Get { id, client } => {
            let workflow = client.client()?.workflow(&id).await?;
            print(client.output, &workflow, || workflow_detail(&workflow))
        }
        WorkflowCommand::Retry { id, mutation, client } => {
            let workflow = client.client()?.retry_workflow(&id, &mutation.key()).await?;
            print(client.output, &workflow, || {
                format!("workflow {} retried (attempt {})", workflow.id, workflow.attempt)
            })
        }
        WorkflowCommand::Cancel { id, mutation, client } => {
            let workflow = client.client()?.cancel_workflow(&id, &mutation.key()).await?;
            print(client.output, &workflow, || format!("workflow {}: cancellation requested", workflow.id))
        }
    }
}

async fn run_token(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create { name, role, mutation, client } => {
            let created = client.client()?.create_token(&CreateTokenRequest { name, role }, &mutation.key()).await?;
            print(client.output, &created, || {
                format!(
                    "token {} ({}, {}) created; its secret, shown only now:\n{}",
                    created.info.name, created.info.role, created.info.id, created.token
                )
            })
        }
        TokenCommand::List { client } => {
            let tokens = client.client()?.tokens().await?;
            print(client.output, &tokens, || {
                let mut table = table(&["ID", "NAME", "ROLE", "CREATED", "REVOKED"]);
                for t in &tokens {
                    table.add_row(vec![
                        t.id.to_string(),
                        t.name.clone(),
                        t.role.to_string(),
                        t.created_at.format("%Y-%m-%d %H:%M").to_string(),
                        t.revoked_at.map(|r| r.format("%Y-%m-%d %H:%M").to_string()).unwrap_or_default(),
                    ]);
                }
                table.to_string()
            })
        }
        TokenCommand::Revoke { id, mutation, client } => {
            let token = client.client()?.revoke_token(&id, &mutation.key()).await?;
            print(client.output, &token, || format!("token {} ({}) revoked", token.name, token.id))
        }
    }
}

/// A plan change's preview, for people.
fn restore_into(new_silo: bool) -> indigo_core::api::RestoreInto {
    if new_silo { indigo_core::api::RestoreInto::NewSilo } else { indigo_core::api::RestoreInto::InPlace }
}

fn restore_preview_table(preview: &indigo_core::api::RestorePreview) -> String {
    let mut rows = table(&["TABLE", "ROWS NOW", "ROWS AFTER"]);
    for t in &preview.tables {
        rows.add_row(vec![t.table.clone(), t.rows_now.to_string(), t.rows_in_backup.to_string()]);
    }
    let verdict = if preview.refusals.is_empty() {
        "It would go ahead; the rows as they are now are backed up first.".to_owned()
    } else {
        let reasons: Vec<&str> = preview.refusals.iter().map(|r| r.message.as_str()).collect();
        format!("Refused: {}.", reasons.join("; "))
    };
    let whereto = match preview.into {
        indigo_core::api::RestoreInto::InPlace => "in place",
        indigo_core::api::RestoreInto::NewSilo => "into a new silo (503 until the rows are in)",
    };
    format!(
        "Restore {whereto} from backup {} taken {}: {} rows now, {} after; the backup is {}.\n{rows}\n{verdict}",
        preview.backup_id,
        preview.taken_at.format("%Y-%m-%d %H:%M:%S UTC"),
        preview.rows_now,
        preview.rows_in_backup,
        if preview.intact { "intact" } else { "NOT intact" },
    )
}

fn backups_table(backups: &indigo_core::api::TenantBackups) -> String {
    let standing = match (backups.newest_age_seconds, backups.behind) {
        (Some(age), false) => format!("newest {age} s old, within"),
        (Some(age), true) => format!("BEHIND: newest {age} s old, past"),
        (None, false) => "none yet, within".to_owned(),
        (None, true) => "BEHIND: none taken, past".to_owned(),
    };
    let out = format!(
        "{}: {standing} its RPO of {} min (restores within {} min)\n",
        backups.slug, backups.rpo_minutes, backups.rto_minutes
    );
    let mut rows = table(&["taken at", "rows", "manifest sha256", "restore drill", "path"]);
    for backup in &backups.backups {
        let drill = match (&backup.drilled_at, &backup.drill_problem) {
            (None, _) => "not yet".to_owned(),
            (Some(at), None) => format!("intact at {}", at.format("%H:%M")),
            (Some(_), Some(problem)) => format!("FAILED: {problem}"),
        };
        rows.add_row(vec![
            backup.taken_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            backup.rows.to_string(),
            backup.manifest_sha256.chars().take(12).collect(),
            drill,
            backup.path.clone(),
        ]);
    }
    out + &rows.to_string()
}

fn preview_table(preview: &indigo_core::api::PlanChangePreview) -> String {
    let money = |minor: u64| format!("{}.{:02} {}", minor / 100, minor % 100, preview.currency);
    let mut out = format!(
        "{} → {}: {}\n",
        preview.from_plan,
        preview.to_plan,
        if preview.moves {
            format!("moves from the {:?} to a {:?}", preview.from_isolation, preview.to_isolation).to_lowercase()
        } else {
            "limits and price only; nothing moves".into()
        }
    );
    for table in &preview.tables {
        out += &format!("  {:<16} {:>10} rows {:>12} bytes\n", table.table, table.rows, table.bytes);
    }
    if preview.moves {
        let basis = match preview.moves_measured {
            0 => "the default rate: no move measured here yet".to_owned(),
            n => format!("the median of the last {n} moves here"),
        };
        out += &format!(
            "copy: {} rows in about {:.1} s at {:.0} rows/s ({basis})\n",
            preview.rows_total, preview.estimated_copy_seconds, preview.copy_rows_per_second
        );
        out += &match preview.expected_pause_ms {
            Some(ms) => format!("write pause: up to {ms} ms, as past moves had; writes are held, not refused\n"),
            None => "write pause: not measured here yet; writes are held, not refused\n".to_owned(),
        };
        if let Some(written) = preview.writes_last_5_minutes {
            out += &format!(
                "  it grows with the writes the switch applies: {written} rows written in the last 5 minutes\n"
            );
        }
    }
    out += &format!("price: {} → {} a month\n", money(preview.price_per_month_from), money(preview.price_per_month_to));
    if let Some(minor) = preview.proration {
        let sign = if minor < 0 { "-" } else { "+" };
        out += &format!("prorated for the rest of this period: {sign}{}\n", money(minor.unsigned_abs()));
    }
    if preview.refusals.is_empty() {
        out += "nothing stops it\n";
    }
    for refusal in &preview.refusals {
        out += &format!("refused ({}): {}\n", refusal.code, refusal.message);
    }
    out
}

fn print<T: Serialize>(output: Output, value: &T, human: impl FnOnce() -> String) -> anyhow::Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Output::Table => println!("{}", human()),
    }
    Ok(())
}

fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(UTF8_BORDERS_ONLY)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header.to_vec());
    table
}

/// Each billed tenant's last parity check, out of parity first, with every window that differs.
fn parity_table(parity: &[indigo_core::api::BillingParity]) -> String {
    if parity.is_empty() {
        return "no billed tenant checked yet (job billing_parity, hourly)".into();
    }
    let mut rows = table(&["TENANT", "CHECKED", "PARITY", "WHERE IT DIFFERS"]);
    for tenant in parity {
        let differs: Vec<String> = tenant.mismatches.iter().map(ToString::to_string).collect();
        rows.add_row(vec![
            tenant.slug.clone(),
            tenant.checked_at.format("%Y-%m-%d %H:%M UTC").to_string(),
            if tenant.in_parity { "in parity".into() } else { "OUT".into() },
            differs.join("\n"),
        ]);
    }
    rows.to_string()
}

fn tenant_table(tenants: &[Tenant]) -> String {
    if tenants.is_empty() {
        return "no tenants".into();
    }
    let mut table = table(&["SLUG", "NAME", "PLAN", "ISOLATION", "LIFECYCLE", "PHASE", "SYNCED"]);
    for t in tenants {
        table.add_row(vec![
            t.slug.to_string(),
            t.name.clone(),
            t.spec.plan.to_string(),
            t.spec.isolation.to_string(),
            t.spec.lifecycle.to_string(),
            t.status.phase.to_string(),
            sync_label(t),
        ]);
    }
    table.to_string()
}

/// "yes", or which generation the status still reflects.
fn sync_label(tenant: &Tenant) -> String {
    if tenant.status_current() {
        "yes".into()
    } else {
        format!("no ({}/{})", tenant.status.observed_generation, tenant.spec.generation)
    }
}

fn tenant_detail(t: &Tenant) -> String {
    let mut lines = vec![
        format!("{} ({})", t.name, t.slug),
        format!("  id           {}", t.id),
        format!("  owner        {}", t.owner_email),
        format!(
            "  spec         plan={} isolation={} lifecycle={} generation={}",
            t.spec.plan, t.spec.isolation, t.spec.lifecycle, t.spec.generation
        ),
        format!(
            "  status       phase={} observed_generation={} synced={}",
            t.status.phase,
            t.status.observed_generation,
            sync_label(t)
        ),
    ];
    if let Some(p) = &t.status.placement {
        lines.push(format!("  placement    {}", p.describe()));
    }
    for c in &t.status.conditions {
        lines.push(format!("  condition    {}={:?} {}: {}", c.kind, c.status, c.reason, c.message));
    }
    lines.join("\n")
}

fn reconciler_text(r: &indigo_core::api::ReconcilerStatus) -> String {
    let mut lines = vec![
        format!("running        {} ({} workers)", r.running, r.workers),
        format!(
            "queue          {} queued, {} in progress, {} backing off",
            r.queue_depth, r.in_progress, r.backing_off
        ),
        format!(
            "reconciles     {} ({} errors, {} drift repaired)",
            r.reconciles_total, r.errors_total, r.drift_repaired_total
        ),
    ];
    lines.extend(r.errors_by_reason.iter().map(|(reason, n)| format!("errors         {reason}: {n}")));
    lines.push(match &r.rls_audit {
        Some(audit) if audit.violations.is_empty() => format!("RLS audit      ok ({})", audit.database),
        Some(audit) => format!("RLS audit      VIOLATIONS: {}", audit.violations.join("; ")),
        None => "RLS audit      not run yet".into(),
    });
    if !r.services.is_empty() {
        let mut services = table(&["SERVICE", "REPLICAS", "ADDRESS"]);
        for s in &r.services {
            services.add_row(vec![
                s.name.clone(),
                format!("{}/{}", s.running, s.wanted),
                s.address.clone().unwrap_or_default(),
            ]);
        }
        lines.push(services.to_string());
    }
    lines.join("\n")
}
