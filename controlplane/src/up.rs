//! `indigo up`: the whole local platform from nothing but PostgreSQL's binaries.
//! Uses the configured database, else the local server on 127.0.0.1:5432, else
//! initialises and runs a private server under the data directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use indigo_core::tenant::{Email, Lifecycle, Slug, TenantName};
use indigo_stripe_emulator::StripeEmulator;
use tokio::process::Command;

use crate::api::auth::{self, Actor};
use crate::config::{Config, Provider, Secret, StripeConfig};
use crate::control_plane::ControlPlane;
use crate::providers::processes::{Credentials, Launch, LocalProcesses};
use crate::registry::{NewTenant, RegistryError};
use crate::workflow::{self, StartError};
use crate::{db, server};

/// Port of the private PostgreSQL that `indigo up` starts when no server answers.
pub const PRIVATE_POSTGRES_PORT: u16 = 54329;

/// Where `indigo up` keeps the admin token it generated (read by the CLI).
pub fn token_file(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.token")
}

/// Where `indigo up` keeps the storefront's JWT secret.
pub fn jwt_secret_file(data_dir: &Path) -> PathBuf {
    data_dir.join("jwt.secret")
}

/// Where `indigo up` keeps the password of the data plane's database role.
pub fn app_database_password_file(data_dir: &Path) -> PathBuf {
    data_dir.join("app-database.password")
}

/// Where `indigo up --demo` keeps the webhook secret the Stripe emulator signs with.
pub fn stripe_webhook_secret_file(data_dir: &Path) -> PathBuf {
    data_dir.join("stripe-webhook.secret")
}

/// Where `indigo up` keeps the password of its private PostgreSQL's superuser.
pub fn private_postgres_password_file(data_dir: &Path) -> PathBuf {
    data_dir.join("postgres.password")
}

/// The Redis `indigo up` uses when `redis_url` is unset and one answers here.
const LOCAL_REDIS: &str = "redis://127.0.0.1:6379";

async fn redis_answers(url: &str) -> bool {
    let Ok(client) = redis::Client::open(url) else { return false };
    let ping = async {
        let mut connection = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut connection).await
    };
    matches!(tokio::time::timeout(Duration::from_secs(2), ping).await, Ok(Ok(_)))
}

const DEMO_TENANTS: &[(&str, &str, &str)] = &[
    ("acme-shoes", "Acme Shoes", "starter"),
    ("blue-bakery", "Blue Bakery", "growth"),
    ("cobalt-coffee", "Cobalt Coffee", "pro"),
    ("delta-books", "Delta Books", "starter"),
    ("ember-outdoor", "Ember Outdoor", "growth"),
    ("fjord-fashion", "Fjord Fashion", "enterprise"),
];

pub async fn run(mut config: Config, demo: bool) -> anyhow::Result<()> {
    private_directory(&config.data_dir)?;
    let (database_url, private) = match &config.database_url {
        Some(url) => (url.clone(), None),
        None if db::server_answers(&config.local_database_url).await => (config.local_database_url.clone(), None),
        None => {
            println!(
                "no PostgreSQL answers at {}; starting a private one under {}",
                redact(&config.local_database_url),
                config.data_dir.display()
            );
            let private = PrivatePostgres::start(&config.data_dir).await?;
            (private.url(), Some(private))
        }
    };
    let outcome = serve(&mut config, &database_url, demo).await;
    if let Some(private) = private {
        private.stop().await;
    }
    outcome
}

async fn serve(config: &mut Config, database_url: &str, demo: bool) -> anyhow::Result<()> {
    if db::ensure_database(database_url).await? {
        println!("created database {}", redact(database_url));
    }
    if config.admin_token.is_none() {
        config.admin_token = Some(local_secret(&token_file(&config.data_dir))?);
    }
    if config.app_database_password.is_none() {
        config.app_database_password = Some(local_secret(&app_database_password_file(&config.data_dir))?);
    }
    config.database_url = Some(database_url.to_owned());
    // On the AWS stand-in too: the ECS tasks (local processes) get it from their task definitions.
    if config.redis_url.is_none() && redis_answers(LOCAL_REDIS).await {
        config.redis_url = Some(LOCAL_REDIS.to_owned());
    }
    // Billing in the demo without a Stripe account: an emulator in this
    // process, gone with it. `stripe_api_base` bills through Stripe instead.
    let stripe_emulator = if demo && config.stripe.is_none() {
        let emulator = StripeEmulator::start().await.context("cannot start the Stripe emulator")?;
        let secret_key = Secret::new("sk_test_indigo_emulator");
        config.stripe = Some(StripeConfig { api_base: emulator.url.clone(), secret_key });
        if config.stripe_webhook_secret.is_none() {
            config.stripe_webhook_secret = Some(local_secret(&stripe_webhook_secret_file(&config.data_dir))?);
        }
        Some(emulator)
    } else {
        None
    };
    // Connected first: the data planes' identities are minted in it.
    let control_db = db::connect(database_url).await?;
    let listener = server::bind(config).await?;
    let address = listener.local_addr()?;
    if let (Some(emulator), Some(secret)) = (&stripe_emulator, &config.stripe_webhook_secret) {
        // As a Stripe account's webhook endpoint would: its events, signed, to the admin API.
        emulator.deliver_webhooks_to(&format!("http://{address}/v1/webhooks/stripe"), secret.expose());
    }
    let storefront = free_address(config.dataplane_listen)?;
    let jwt_secret = local_secret(&jwt_secret_file(&config.data_dir))?;
    let emulator = match config.provider {
        Provider::Local => None,
        Provider::Aws => Some(on_aws_emulator(config, address, database_url, &jwt_secret)?),
    };
    // The data planes are the reconciler's to run: the pool's replicas, and one
    // service per silo tenant (on AWS, the tasks of their ECS services).
    let dataplanes = Arc::new(LocalProcesses::new(Launch {
        program: std::env::current_exe()?,
        subcommand: vec!["dataplane".into()],
        control_plane_url: format!("http://{address}"),
        // Each data plane gets an identity of its own, never the admin's token.
        credentials: Credentials::PerService(control_db.clone()),
        jwt_secret,
        spool_dir: config.data_dir.join("usage-spool"),
        pool_listen: storefront,
        redis_url: config.redis_url.clone(),
        database_password: config.app_database_password.clone(),
        traces: config.traces.clone(),
    }));
    let control_plane = ControlPlane::on_database(config, control_db, Some(dataplanes.clone())).await?;
    let _background = control_plane.start().await?;
    let state = control_plane.state;
    if demo {
        let seeded = seed_demo(&state.db, &state.plans).await?;
        println!("demo tenants: {seeded} added, {} already there", DEMO_TENANTS.len() - seeded);
    }
    println!("indigo is up");
    println!("  admin API:   http://{address}");
    println!("  storefront:  http://{storefront}");
    println!(
        "  data planes: {} pool replica(s) there, and one service per silo tenant (its placement says where)",
        state.plans.pool().dataplane_replicas
    );
    if let Some(emulator) = emulator {
        println!(
            "  AWS:         {emulator} (RDS, ECS, Secrets Manager); each Aurora cluster is a database on {}, \
             each ECS task a process here",
            redact(database_url)
        );
    }
    match (&stripe_emulator, &config.stripe) {
        (Some(emulator), _) => println!(
            "  billing:     a Stripe emulator at {} (in this process; its webhooks to the admin API; \
             POST {}{} ends a billing period; stripe_api_base bills through Stripe)",
            emulator.url,
            emulator.url.trim_end_matches('/'),
            StripeEmulator::CLOSE_PERIOD
        ),
        (None, Some(stripe)) => println!("  billing:     Stripe at {}", stripe.api_base),
        (None, None) => println!("  billing:     off (stripe_api_base is not set)"),
    }
    println!("  database:    {}", redact(database_url));
    match &config.redis_url {
        Some(url) => {
            println!("  redis:       {} (plan rates shared by the data planes, catalogue cached)", redact(url))
        }
        None => println!("  redis:       none (each data plane limits rates alone; no catalogue cache)"),
    }
    println!("  token:       {} (the CLI reads it from there)", token_file(&config.data_dir).display());
    println!("  try:         indigo tenant list --api-url http://{address}");
    let shutdown = async move {
        server::shutdown_signal().await;
        // The data planes stop first: their last usage goes to the admin API, still up.
        dataplanes.stop_all().await;
    };
    server::serve(listener, state, shutdown).await
}

/// The local platform in the AWS mode, on an emulator of AWS's APIs (moto):
/// the admin API is where the ECS tasks reach the control plane, the local
/// server stands in for every Aurora cluster, and the storefront's signing
/// secret is the local one. Returns the emulator's address. Against AWS
/// itself this would build real clusters around local data: refused.
fn on_aws_emulator(
    config: &mut Config,
    address: SocketAddr,
    database_url: &str,
    jwt_secret: &Secret,
) -> anyhow::Result<String> {
    let emulator = std::env::var("AWS_ENDPOINT_URL").ok().filter(|url| !url.is_empty()).context(
        "`indigo up` runs the AWS mode on an emulator of AWS's APIs only: set AWS_ENDPOINT_URL \
         (moto: http://127.0.0.1:5000); against AWS, run `indigo serve` inside the tenants' VPC",
    )?;
    config.aws_control_plane_url.get_or_insert_with(|| format!("http://{address}"));
    config.aws_cluster_stand_in.get_or_insert_with(|| database_url.to_owned());
    config.storefront_jwt_secret = Some(jwt_secret.clone());
    Ok(emulator)
}

/// A secret of the local platform: reused from its file, or made once (mode 0600).
/// The secret kept in `path`, made there (readable by its owner alone) on
/// first use. One that others can read, or too short to resist guessing (an
/// empty JWT secret signs tokens anyone can forge), is refused, not used.
fn local_secret(path: &Path) -> anyhow::Result<Secret> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    match std::fs::read_to_string(path) {
        Ok(existing) => {
            let mode = std::fs::metadata(path)?.permissions().mode();
            if mode & 0o077 != 0 {
                anyhow::bail!(
                    "{} can be read by others (mode {:o}); `chmod 600` it or delete it",
                    path.display(),
                    mode & 0o777
                );
            }
            if existing.trim().len() < MIN_SECRET_CHARS {
                anyhow::bail!(
                    "{} holds fewer than {MIN_SECRET_CHARS} characters; delete it to have a new secret made",
                    path.display()
                );
            }
            Ok(Secret::new(existing.trim()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = auth::generate_token();
            // Created with its final mode: never readable by others, not even for an instant.
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            file.write_all(format!("{token}\n").as_bytes())
                .with_context(|| format!("cannot write {}", path.display()))?;
            Ok(Secret::new(token))
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Shortest secret `indigo up` accepts from its data directory (it makes 71).
const MIN_SECRET_CHARS: usize = 32;

/// The data directory, made (or kept) readable by its owner alone: it holds
/// the platform's secrets and, without a server of its own, its database.
fn private_directory(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .with_context(|| format!("cannot create data directory {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict permissions of {}", path.display()))
}

/// `addr`, or with port 0 a free port on its host.
fn free_address(addr: SocketAddr) -> anyhow::Result<SocketAddr> {
    if addr.port() != 0 {
        return Ok(addr);
    }
    Ok(std::net::TcpListener::bind(addr)?.local_addr()?)
}

/// Registers the demo tenants that are not there yet; returns how many it added.
async fn seed_demo(pool: &sqlx::PgPool, plans: &indigo_core::plan::PlanCatalog) -> anyhow::Result<usize> {
    let actor = Actor::system("indigo-up-demo");
    let mut added = 0;
    for (slug, name, plan) in DEMO_TENANTS {
        let new = NewTenant {
            slug: Slug::parse(slug)?,
            name: TenantName::parse(name)?,
            owner_email: Email::parse(&format!("owner@{slug}.example"))?,
            plan: plans.get(plan)?,
            lifecycle: Lifecycle::Pending,
        };
        let mut tx = pool.begin().await?;
        match workflow::onboard(&mut tx, &actor, None, new).await {
            Ok(_) => {
                tx.commit().await?;
                added += 1;
            }
            Err(StartError::Registry(RegistryError::SlugTaken(_))) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(added)
}

/// A URL with any password hidden, for printing.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if url[scheme + 3..at].contains(':') => {
            let user_end = scheme + 3 + url[scheme + 3..at].find(':').unwrap_or(0);
            format!("{}:***{}", &url[..user_end], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// Stops the private PostgreSQL under `data_dir` once `parent` (an `indigo up`)
/// is gone without having stopped it, as after a SIGKILL: the server is a
/// daemon of `pg_ctl`, not a child, so nothing else would stop it.
pub async fn guard_private_postgres(parent: u32, data_dir: &Path) -> anyhow::Result<()> {
    indigo_core::http::parent_gone(Some(parent)).await;
    let server = PrivatePostgres::at(data_dir).await?;
    if server.pgdata.join("postmaster.pid").exists() {
        eprintln!("indigo: the platform that started the private PostgreSQL is gone; stopping it");
        server.stop().await;
    }
    Ok(())
}

/// A PostgreSQL server of our own, from the system's binaries, in `<data_dir>/pg`.
struct PrivatePostgres {
    bindir: PathBuf,
    pgdata: PathBuf,
    /// PostgreSQL refuses to run as root; as root we run it as `postgres`.
    as_postgres: bool,
    /// `indigo guard-postgres`, which stops the server should this process die
    /// first; killed once the server is stopped in order.
    guard: Option<tokio::process::Child>,
    /// The superuser's password: every role logs in with a password
    /// (SCRAM-SHA-256). `None` for a server made before passwords were.
    password: Option<Secret>,
}

impl PrivatePostgres {
    async fn at(data_dir: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            bindir: postgres_bindir().await?,
            pgdata: std::path::absolute(data_dir)?.join("pg"),
            as_postgres: running_as_root().await,
            guard: None,
            password: None,
        })
    }

    async fn start(data_dir: &Path) -> anyhow::Result<Self> {
        let data_dir = std::path::absolute(data_dir)?;
        let mut server = Self::at(&data_dir).await?;
        let password_file = private_postgres_password_file(&data_dir);
        if !server.pgdata.join("PG_VERSION").exists() {
            std::fs::create_dir_all(&server.pgdata)?;
            local_secret(&password_file)?;
            server.give_to_postgres(&data_dir).await?;
            let pgdata = server.pgdata.display().to_string();
            let pwfile = format!("--pwfile={}", password_file.display());
            // Password authentication for every role, local sockets included.
            let args = ["-D", &pgdata, "-U", "postgres", "--auth=scram-sha-256", &pwfile, "-E", "UTF8"];
            server.pg("initdb", &args).await?;
        }
        if password_file.exists() {
            server.password = Some(local_secret(&password_file)?);
        } else {
            println!(
                "the private PostgreSQL under {} predates passwords: it trusts local connections",
                data_dir.display()
            );
        }
        let log = data_dir.join("postgres.log");
        server.give_to_postgres(&data_dir).await?;
        // Watching before the server exists: a kill during start-up is covered too.
        server.guard = Some(
            Command::new(std::env::current_exe()?)
                .arg("guard-postgres")
                .arg("--parent")
                .arg(std::process::id().to_string())
                .arg("--data-dir")
                .arg(&data_dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                // Out of this process group, so that killing the group spares it.
                .process_group(0)
                .kill_on_drop(true)
                .spawn()
                .context("cannot start the private PostgreSQL's guard")?,
        );
        let options =
            format!("-p {PRIVATE_POSTGRES_PORT} -c listen_addresses=127.0.0.1 -k {}", server.pgdata.display());
        server
            .pg(
                "pg_ctl",
                &[
                    "-D",
                    &server.pgdata.display().to_string(),
                    "-l",
                    &log.display().to_string(),
                    "-o",
                    &options,
                    "-w",
                    "start",
                ],
            )
            .await
            .with_context(|| format!("private PostgreSQL did not start; see {}", log.display()))?;
        println!("private PostgreSQL running on 127.0.0.1:{PRIVATE_POSTGRES_PORT} (log: {})", log.display());
        Ok(server)
    }

    fn url(&self) -> String {
        match &self.password {
            Some(password) => {
                format!("postgres://postgres:{}@127.0.0.1:{PRIVATE_POSTGRES_PORT}/indigo", password.expose())
            }
            None => format!("postgres://postgres@127.0.0.1:{PRIVATE_POSTGRES_PORT}/indigo"),
        }
    }

    async fn stop(mut self) {
        let pgdata = self.pgdata.display().to_string();
        if let Err(e) = self.pg("pg_ctl", &["-D", &pgdata, "-m", "fast", "-w", "stop"]).await {
            eprintln!("indigo: stopping the private PostgreSQL failed: {e:#}");
        }
        if let Some(mut guard) = self.guard.take() {
            let _ = guard.kill().await;
        }
    }

    async fn give_to_postgres(&self, data_dir: &Path) -> anyhow::Result<()> {
        if self.as_postgres {
            for path in [data_dir, self.pgdata.as_path()] {
                let status = Command::new("chown").args(["-R", "postgres:postgres"]).arg(path).status().await?;
                if !status.success() {
                    bail!("chown of {} to postgres failed", path.display());
                }
            }
        }
        Ok(())
    }

    async fn pg(&self, program: &str, args: &[&str]) -> anyhow::Result<()> {
        let binary = self.bindir.join(program);
        let mut command = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&binary);
            c
        } else {
            Command::new(&binary)
        };
        let output = command
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .with_context(|| format!("cannot run {}", binary.display()))?;
        if !output.status.success() {
            bail!("{program} failed: {}", String::from_utf8_lossy(&output.stderr).trim());
        }
        Ok(())
    }
}

/// The directory of `initdb` and `pg_ctl`, which Debian keeps off PATH.
async fn postgres_bindir() -> anyhow::Result<PathBuf> {
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output().await
        && output.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if dir.join("initdb").exists() {
            return Ok(dir);
        }
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("bin"))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    candidates.sort();
    candidates.pop().context(
        "no PostgreSQL server binaries found (initdb); install PostgreSQL or set database_url (env INDIGO_DATABASE_URL)",
    )
}

async fn running_as_root() -> bool {
    match Command::new("id").arg("-u").output().await {
        Ok(output) => String::from_utf8_lossy(&output.stdout).trim() == "0",
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(redact("postgres://app:s3cret@db:5432/indigo"), "postgres://app:***@db:5432/indigo");
        assert_eq!(redact("postgres://postgres@127.0.0.1/indigo"), "postgres://postgres@127.0.0.1/indigo");
    }
}
