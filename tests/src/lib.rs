//! Support for tests that run the real Indigo binaries against real services:
//! throwaway databases on the local PostgreSQL and child processes that are
//! stopped however the test ends.

pub mod bench;
pub mod cluster_logins;
#[cfg(test)]
mod layers;
pub mod stack;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A control plane's settings for a test or a bench, as `indigo serve` reads
/// them: its control database, a pool database of its own, the repository's
/// policies, the tenant databases on this server, and its directory.
pub fn control_plane_settings(
    database_url: &str,
    pool_database: &str,
    admin_token: &str,
    data_dir: std::path::PathBuf,
) -> indigo_controlplane::config::Overrides {
    indigo_controlplane::config::Overrides {
        database_url: Some(database_url.to_owned()),
        plans_file: Some(concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/plans.toml").into()),
        admin_token: Some(admin_token.to_owned()),
        tenant_server_url: Some(server_url()),
        pool_database: Some(pool_database.to_owned()),
        data_dir: Some(data_dir),
        ..Default::default()
    }
}

/// AWS settings for moto, where `.ci/run` starts it (`MOTO_URL`, default
/// `http://127.0.0.1:5000`); fails with what to do when moto is not there.
/// Explicit settings rather than the environment: a developer's own AWS
/// settings stay out of the tests.
pub async fn moto() -> aws_config::SdkConfig {
    let url = moto_url();
    reqwest::get(format!("{url}/moto-api/"))
        .await
        .unwrap_or_else(|e| panic!("moto is not reachable at {url} ({e}); .ci/run installs and starts it"));
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(&url)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_rds::config::Credentials::new("test", "test", None, None, "moto"))
        .load()
        .await
}

/// Where moto listens: `MOTO_URL`, default `http://127.0.0.1:5000`.
pub fn moto_url() -> String {
    std::env::var("MOTO_URL").unwrap_or_else(|_| "http://127.0.0.1:5000".into())
}

/// Points an `indigo` command at AWS on moto, with every Aurora cluster
/// standing in on the test server: provider `aws`, moto's endpoint and dummy
/// credentials, `ecs_cluster` (each test its own on the shared moto), and
/// where the data-plane tasks would reach the admin API.
pub fn on_aws_stand_in(command: &mut Command, ecs_cluster: &str, control_plane_url: &str) {
    command
        .env("INDIGO_PROVIDER", "aws")
        .env("AWS_ENDPOINT_URL", moto_url())
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("INDIGO_AWS_ECS_CLUSTER", ecs_cluster)
        .env("INDIGO_AWS_CLUSTER_STAND_IN", server_url())
        .env("INDIGO_AWS_CONTROL_PLANE_URL", control_plane_url);
}

/// The server tests create their databases on (`DATABASE_URL`, set in `.cargo/config.toml`).
pub fn server_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn with_database(server: &str, database: &str) -> String {
    let base = server.rsplit_once('/').map_or(server, |(base, _)| base);
    format!("{base}/{database}")
}

/// A database name no other test uses. The database is created by whoever
/// connects first (e.g. `indigo up`) and dropped by [`TestDatabase::drop_now`].
pub struct TestDatabase {
    pub name: String,
    pub url: String,
}

impl TestDatabase {
    pub fn unique(prefix: &str) -> Self {
        let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        Self { url: with_database(&server_url(), &name), name }
    }

    pub async fn drop_now(&self) -> anyhow::Result<()> {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&server_url())
            .await
            .with_context(|| format!("PostgreSQL is not reachable at {}; tests need it running", server_url()))?;
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name)))
            .execute(&mut conn)
            .await?;
        Ok(())
    }
}

/// The Redis tests share plan rates through (`REDIS_URL`; `.ci/run` starts one).
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A port free on 127.0.0.1 right now, for a child process to listen on.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A child process, killed on drop if the test did not stop it.
pub struct Process {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Process {
    /// Starts `command` with stdout captured line by line (stderr is inherited, so
    /// its log shows in the test output on failure).
    pub fn spawn(mut command: Command) -> anyhow::Result<Self> {
        let mut child = command
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {command:?}"))?;
        let stdout = child.stdout.take().context("stdout is piped")?;
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self { child, lines, seen: Vec::new() })
    }

    /// Like [`Process::spawn`], but its log (stderr) goes to the file `log`,
    /// for a test to search, instead of to the test's output.
    pub fn spawn_logging_to(mut command: Command, log: &std::path::Path) -> anyhow::Result<Self> {
        if let Some(directory) = log.parent() {
            std::fs::create_dir_all(directory)?;
        }
        let file = std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        command.stderr(file);
        Self::spawn(command)
    }

    /// Every stdout line so far.
    pub fn stdout_so_far(&mut self) -> Vec<String> {
        self.seen.extend(self.lines.try_iter());
        self.seen.clone()
    }

    /// Waits for a stdout line containing `needle` and returns it.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return Ok(line);
                    }
                }
                Err(_) => bail!("no line containing {needle:?} within {timeout:?}; stdout so far: {:#?}", self.seen),
            }
        }
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("process {} still running after {timeout:?}", self.pid());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. "TERM") and waits for the process to exit.
    pub fn signal_and_wait(&mut self, signal: &str, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let status = Command::new("kill").arg(format!("-{signal}")).arg(self.pid().to_string()).status()?;
        if !status.success() {
            bail!("kill -{signal} {} failed", self.pid());
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("process {} still running {timeout:?} after SIG{signal}", self.pid());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `url` until it answers 200.
pub async fn wait_until_ok(url: &str, timeout: Duration) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + timeout;
    loop {
        match client.get(url).send().await {
            Ok(response) if response.status().is_success() => return Ok(()),
            outcome if Instant::now() > deadline => bail!("{url} not OK within {timeout:?}: {outcome:?}"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// A binary of this workspace, from the target directory the running test lives
/// in. `cargo test --workspace` builds every package's binaries; a test run on
/// its own may need `cargo build --workspace` first, and says so.
pub fn workspace_binary(name: &str) -> anyhow::Result<std::path::PathBuf> {
    let test_exe = std::env::current_exe()?;
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let profile_dir = test_exe.parent().and_then(|deps| deps.parent()).context("unexpected test binary location")?;
    let binary = profile_dir.join(name);
    if !binary.exists() {
        bail!(
            "{} is not built; run `cargo build --workspace` (or the whole suite with `cargo test --workspace`)",
            binary.display()
        );
    }
    Ok(binary)
}

/// `indigo up` on throwaway databases: its own control and pool database, free
/// ports, a private data directory and the repository's plans. Add `--demo` or
/// other arguments before spawning.
pub fn local_platform(
    indigo: &std::path::Path,
    control: &TestDatabase,
    pool: &TestDatabase,
    data_dir: &std::path::Path,
) -> Command {
    let mut command = Command::new(indigo);
    command
        .arg("up")
        .env("INDIGO_DATABASE_URL", &control.url)
        .env("INDIGO_POOL_DATABASE", &pool.name)
        .env("INDIGO_LISTEN", "127.0.0.1:0")
        .env("INDIGO_DATAPLANE_LISTEN", "127.0.0.1:0")
        .env("INDIGO_DATA_DIR", data_dir)
        .env("INDIGO_PLANS_FILE", concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/plans.toml"))
        .env_remove("INDIGO_ADMIN_TOKEN");
    command
}

/// Every operation an OpenAPI document lists, as a request to send: its
/// method (upper case) and its path with each parameter filled with `x`.
/// For tests that check each documented operation is really routed.
pub fn documented_operations(openapi: &serde_json::Value) -> Vec<(String, String)> {
    let mut operations = Vec::new();
    for (template, item) in openapi["paths"].as_object().into_iter().flatten() {
        let mut path = String::new();
        let mut rest = template.as_str();
        while let Some(start) = rest.find('{') {
            let end = rest[start..].find('}').map_or(rest.len(), |e| start + e + 1);
            path.push_str(&rest[..start]);
            path.push('x');
            rest = &rest[end..];
        }
        path.push_str(rest);
        for method in ["get", "put", "post", "delete", "patch"] {
            if item.get(method).is_some() {
                operations.push((method.to_ascii_uppercase(), path.clone()));
            }
        }
    }
    operations
}
