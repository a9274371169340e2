//! The real console binary under tmux, against a real `indigo up --demo`: it
//! shows the demo fleet, and an operator upgrades a tenant to enterprise with
//! the keys alone.

use std::process::Command;
use std::time::{Duration, Instant};

use indigo_e2e::{Process, TestDatabase, local_platform, wait_until_ok, workspace_binary};

const TUI: &str = env!("CARGO_BIN_EXE_indigo-tui");

struct Tmux {
    session: String,
}

impl Tmux {
    fn start(command: &str) -> Self {
        let session = format!("indigo-tui-test-{}", uuid::Uuid::new_v4().simple());
        let status = Command::new("tmux")
            .args(["new-session", "-d", "-s", &session, "-x", "120", "-y", "30", command])
            .status()
            .expect("tmux must be installed (.ci/run installs it)");
        assert!(status.success(), "tmux could not start the console");
        Self { session }
    }

    fn screen(&self) -> String {
        let output = Command::new("tmux").args(["capture-pane", "-p", "-t", &self.session]).output().unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        for key in keys {
            let status = Command::new("tmux").args(["send-keys", "-t", &self.session, key]).status().unwrap();
            assert!(status.success());
            std::thread::sleep(Duration::from_millis(60));
        }
    }

    fn literal(&self, text: &str) {
        let status = Command::new("tmux").args(["send-keys", "-l", "-t", &self.session, text]).status().unwrap();
        assert!(status.success());
        std::thread::sleep(Duration::from_millis(60));
    }

    fn wait_for(&self, what: impl Fn(&str) -> bool, describe: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let screen = self.screen();
            if what(&screen) {
                return screen;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {describe}; the screen:\n{screen}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn alive(&self) -> bool {
        Command::new("tmux").args(["has-session", "-t", &self.session]).status().map(|s| s.success()).unwrap_or(false)
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["kill-session", "-t", &self.session]).status();
    }
}

#[tokio::test]
async fn an_operator_upgrades_a_tenant_from_the_console() {
    let database = TestDatabase::unique("indigo_tui_test");
    let pool = TestDatabase::unique("indigo_tui_pool");
    let data_dir = std::env::temp_dir().join(format!("indigo-tui-{}", database.name));
    let mut daemon = local_platform(&workspace_binary("indigo").unwrap(), &database, &pool, &data_dir);
    daemon.arg("--demo");
    let mut daemon = Process::spawn(daemon).unwrap();
    let line = daemon.wait_for_line("admin API: ", Duration::from_secs(60)).unwrap();
    let api_url = line.split("admin API: ").nth(1).unwrap().trim().to_owned();
    wait_until_ok(&format!("{api_url}/readyz"), Duration::from_secs(30)).await.unwrap();
    let token = std::fs::read_to_string(data_dir.join("admin.token")).unwrap();

    let console =
        Tmux::start(&format!("{TUI} --api-url {api_url} --token {} --refresh-ms 300 --theme mono", token.trim()));
    console
        .wait_for(|s| s.contains("fjord-fashion") && s.contains("acme-shoes") && s.contains("ready"), "the demo fleet");
    console.wait_for(|s| s.contains("bootstrap-admin (admin)"), "the operator's identity");

    // acme-shoes is the first row: upgrade it to enterprise, typing its slug to confirm.
    console.keys(&["g", "p"]);
    console.literal("enterprise");
    console.keys(&["Enter"]);
    console.wait_for(|s| s.contains("moves to its own database"), "the confirmation");
    console.literal("acme-shoes");
    console.keys(&["Enter"]);
    console.wait_for(|s| s.contains("plan change to enterprise recorded"), "the outcome");
    // The tier change moves it online: its progress shows among the moves,
    // and it ends served from its own database.
    console.keys(&[":"]);
    console.literal("moves");
    console.keys(&["Enter"]);
    console.wait_for(
        |s| s.contains("moves (") && s.lines().any(|l| l.contains("acme-shoes") && l.contains("pool→silo")),
        "the move's progress",
    );
    console.wait_for(
        |s| s.lines().any(|l| l.contains("acme-shoes") && (l.contains("switched") || l.contains("done"))),
        "the move switched",
    );
    console.keys(&[":"]);
    console.literal("tenants");
    console.keys(&["Enter"]);
    let screen = console.wait_for(
        |s| {
            s.lines().any(|l| {
                l.contains("acme-shoes") && l.contains("enterprise") && l.contains("silo") && !l.contains("pool→silo")
            })
        },
        "the upgraded row, now a silo",
    );
    assert!(screen.contains("acme-shoes"));

    // Detail view and back, then quit: the terminal is handed back.
    console.keys(&["Enter"]);
    console.wait_for(|s| s.contains("acme-shoes · spec") && s.contains("TierChange"), "the detail view");
    console.keys(&["Escape", "q"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while console.alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!console.alive(), "q should quit the console");

    let status = daemon.signal_and_wait("TERM", Duration::from_secs(30)).unwrap();
    assert!(status.success());
    let control = sqlx::PgPool::connect(&database.url).await.unwrap();
    let silos: Vec<String> =
        sqlx::query_scalar("SELECT placement->>'database' FROM tenants WHERE placement->>'isolation' = 'silo'")
            .fetch_all(&control)
            .await
            .unwrap();
    control.close().await;
    for silo in silos {
        TestDatabase { url: String::new(), name: silo }.drop_now().await.unwrap();
    }
    database.drop_now().await.unwrap();
    pool.drop_now().await.unwrap();
    let _ = std::fs::remove_dir_all(&data_dir);
}
