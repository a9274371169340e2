//! `indigo serve` as a process of its own, for the tests that kill it.

use std::time::Duration;

use indigo_e2e::stack::ADMIN_TOKEN;
use indigo_e2e::{Process, TestDatabase, free_port, wait_until_ok, workspace_binary};
use uuid::Uuid;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Provider {
    Local,
    Aws,
}

/// `indigo serve` on the crash test's databases, started again and again.
pub struct Daemons {
    pub provider: Provider,
    pub control: TestDatabase,
    pub pool: TestDatabase,
    port: u16,
    pub data_dir: std::path::PathBuf,
    /// AWS mode's ECS cluster, the test's own on the shared moto.
    pub ecs_cluster: String,
}

impl Daemons {
    pub fn new(provider: Provider) -> Self {
        let id = Uuid::new_v4().simple().to_string();
        Self {
            provider,
            control: TestDatabase::unique("indigo_move_control"),
            pool: TestDatabase::unique("indigo_move_pool"),
            port: free_port().unwrap(),
            data_dir: std::env::temp_dir().join(format!("indigo-move-crash-{id}")),
            ecs_cluster: format!("indigo-crash-{}", &id[..12]),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A daemon armed with `failpoints`, answering once it is up.
    pub async fn start(&self, failpoints: &str) -> Process {
        let mut command = std::process::Command::new(workspace_binary("indigo").unwrap());
        command
            .arg("serve")
            .env("INDIGO_DATABASE_URL", &self.control.url)
            .env("INDIGO_POOL_DATABASE", &self.pool.name)
            .env("INDIGO_LISTEN", format!("127.0.0.1:{}", self.port))
            .env("INDIGO_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("INDIGO_DATA_DIR", &self.data_dir)
            .env("INDIGO_PLANS_FILE", concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/plans.toml"))
            .env("INDIGO_MOVE_GRACE_SECONDS", "0")
            .env("INDIGO_FAILPOINTS", failpoints)
            .env("RUST_LOG", "warn");
        if self.provider == Provider::Aws {
            indigo_e2e::on_aws_stand_in(&mut command, &self.ecs_cluster, &self.url());
            // The fleet's services are looked at every resync: a downgraded tenant's goes within seconds.
            command.env("INDIGO_RESYNC_SECONDS", "5");
        }
        let process = Process::spawn(command).unwrap();
        wait_until_ok(&format!("{}/healthz", self.url()), Duration::from_secs(30)).await.unwrap();
        process
    }
}
