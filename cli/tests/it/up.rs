//! `indigo up --demo` as a real process: it comes up, turns ready, the CLI lists
//! the demo tenants, and SIGTERM stops it cleanly.

use std::process::Command;
use std::time::Duration;

use indigo_controlplane::providers::local::silo_database;
use indigo_core::tenant::{Slug, TenantId};
use indigo_e2e::{Process, TestDatabase, local_platform, redis_url, wait_until_ok};

pub(crate) const INDIGO: &str = env!("CARGO_BIN_EXE_indigo");

#[tokio::test]
async fn up_demo_serves_the_cli_and_stops_on_sigterm() {
    let platform = Platform::new();
    let (database, data_dir) = (&platform.database, &platform.data_dir);
    let (mut daemon, api_url, storefront_url) = platform.start_demo(&[]).await;

    // Its secrets are its owner's alone, from the moment they exist.
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: std::path::PathBuf| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(data_dir.clone()), 0o700, "the data directory");
    assert_eq!(mode(data_dir.join("admin.token")), 0o600);
    assert_eq!(mode(data_dir.join("jwt.secret")), 0o600);
    assert_eq!(mode(data_dir.join("app-database.password")), 0o600);

    // The CLI finds the token `indigo up` wrote into the data directory.
    let output = Command::new(INDIGO)
        .args(["tenant", "list", "--output", "json", "--api-url", &api_url])
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("INDIGO_TOKEN")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let tenants: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let mut plans: Vec<(String, String)> = tenants
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["slug"].as_str().unwrap().to_owned(), t["spec"]["plan"].as_str().unwrap().to_owned()))
        .collect();
    plans.sort();
    assert_eq!(plans.len(), 6, "{plans:?}");
    for plan in ["starter", "growth", "pro", "enterprise"] {
        assert!(plans.iter().any(|(_, p)| p == plan), "no demo tenant on {plan}: {plans:?}");
    }

    // A failing command exits non-zero with a one-line reason.
    let output = cli(data_dir, &["tenant", "plan", "acme-shoes", "gold", "--api-url", &api_url]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("unknown plan `gold`"), "{stderr}");

    // The reconciler converges every demo tenant; the enterprise one gets its own database.
    let mut converged = false;
    for _ in 0..100 {
        let output = cli(data_dir, &["tenant", "get", "fjord-fashion", "--output", "json", "--api-url", &api_url]);
        let tenant: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        if tenant["status"]["phase"] == "ready" {
            assert_eq!(tenant["status"]["placement"]["isolation"], "silo");
            converged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(converged, "fjord-fashion never became ready");

    // Table output for people.
    let output = cli(data_dir, &["tenant", "get", "fjord-fashion", "--api-url", &api_url]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("plan=enterprise isolation=silo"), "{stdout}");

    // Backed up on its own at its plan's RPO (the job run now rather than at its minute).
    let admin = std::fs::read_to_string(data_dir.join("admin.token")).unwrap().trim().to_owned();
    let ran = run_job(&api_url, &admin, "backups", "backups-now").await;
    assert_eq!(ran.status(), 200, "{}", ran.text().await.unwrap());
    let output = cli(data_dir, &["tenant", "backups", "fjord-fashion", "--api-url", &api_url]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("within its RPO of 1 min (restores within 15 min)"), "{stdout}");
    let output = cli(data_dir, &["tenant", "backups", "fjord-fashion", "--output", "json", "--api-url", &api_url]);
    let backups: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let taken = &backups["backups"][0];
    let manifest = indigo_controlplane::workflow::export::verify(std::path::Path::new(taken["path"].as_str().unwrap()))
        .expect("the bundle verifies");
    assert!(manifest.tables.iter().any(|t| t.table == "products" && t.rows >= 1), "{manifest:?}");
    // Backed up on demand, and a restore from it previewed: nothing changes.
    let output = cli(data_dir, &["tenant", "backup", "fjord-fashion", "--output", "json", "--api-url", &api_url]);
    let backup: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let id = backup["id"].as_str().unwrap();
    let output = cli(data_dir, &["tenant", "restore", "fjord-fashion", id, "--dry-run", "--api-url", &api_url]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("the backup is intact") && stdout.contains("It would go ahead"), "{stdout}");

    // The storefront serves a demo tenant with a token minted by the CLI.
    let jwt = storefront_token(data_dir, &api_url, "blue-bakery");
    let http = reqwest::Client::new();
    let created = http
        .post(format!("{storefront_url}/v1/products"))
        .bearer_auth(&jwt)
        .json(&serde_json::json!({ "name": "Sourdough", "price_minor": 650, "currency": "usd", "stock": 12 }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let listed: serde_json::Value =
        http.get(format!("{storefront_url}/v1/products")).bearer_auth(&jwt).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["items"][0]["name"], "Sourdough");
    // Billing is on in the demo, through the Stripe emulator `indigo up` runs
    // in its own process: each demo tenant becomes a customer with a subscription.
    let printed = daemon.wait_for_line("billing: ", Duration::from_secs(10)).unwrap();
    assert!(printed.contains("billing:     a Stripe emulator at http://127.0.0.1:"), "{printed}");
    let admin = std::fs::read_to_string(data_dir.join("admin.token")).unwrap().trim().to_owned();
    let bakery_billing = async || -> Option<serde_json::Value> {
        let answer =
            http.get(format!("{api_url}/v1/tenants/blue-bakery/billing")).bearer_auth(&admin).send().await.unwrap();
        if answer.status() != 200 {
            return None;
        }
        answer.json().await.ok()
    };
    let billing = eventually("blue-bakery has a billing account", async || bakery_billing().await).await;
    assert!(billing["customer_id"].as_str().is_some_and(|c| c.starts_with("cus_")), "{billing}");
    assert!(billing["subscription_id"].as_str().is_some_and(|s| s.starts_with("sub_")), "{billing}");
    assert_eq!(billing["status"], "active");
    // Its events reach the admin API as Stripe's webhooks would, signed (a
    // subscription's may come before the tenant's billing step has recorded
    // its customer, and is then taken and ignored, as with Stripe itself).
    let control = sqlx::PgPool::connect(&database.url).await.unwrap();
    let processed = async |kind: &str| -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM stripe_events WHERE type = $1")
            .bind(kind)
            .fetch_one(&control)
            .await
            .unwrap()
    };
    // Each subscription's first period is invoiced (and paid) as it starts.
    eventually("every demo tenant's subscription and first invoice webhooks are processed", async || {
        (processed("customer.subscription.created").await == 6 && processed("invoice.paid").await == 6).then_some(())
    })
    .await;
    // The end of a billing period: an invoice each, paid — but the bakery's payment fails.
    let emulator = printed.split("a Stripe emulator at ").nth(1).unwrap().split(' ').next().unwrap().to_owned();
    let customer = billing["customer_id"].as_str().unwrap().to_owned();
    let closed: serde_json::Value = http
        .post(format!("{}{}", emulator.trim_end_matches('/'), indigo_stripe_emulator::StripeEmulator::CLOSE_PERIOD))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("fail={customer}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(closed["data"].as_array().unwrap().len(), 6, "an invoice per subscription");
    eventually("the invoices' webhooks are processed", async || {
        (processed("invoice.paid").await == 6 + 5 && processed("invoice.payment_failed").await == 1).then_some(())
    })
    .await;
    let billing = bakery_billing().await.unwrap();
    assert_eq!(billing["payment_state"], "past_due", "a failed payment starts the grace period: {billing}");
    control.close().await;
    // The usage on those invoices (a line per meter) is what Indigo counted: every tenant in parity.
    let ran = run_job(&api_url, &admin, "billing_parity", "parity-now").await;
    assert_eq!(ran.status(), 200, "{}", ran.text().await.unwrap());
    let output = cli(data_dir, &["parity", "--api-url", &api_url]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(stdout.matches("in parity").count(), 6, "{stdout}");

    // The tenant's own signing key, for its backend to mint its shoppers'
    // tokens: it signs for that tenant, and for no other.
    let output = cli(data_dir, &["storefront-token", "blue-bakery", "--signing-key", "--api-url", &api_url]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let key = {
        use base64::Engine;
        let printed = String::from_utf8(output.stdout).unwrap();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(printed.trim()).unwrap()
    };
    let id_of = |slug: &str| {
        let output = cli(data_dir, &["tenant", "get", slug, "--output", "json", "--api-url", &api_url]);
        let tenant: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        indigo_core::tenant::TenantId(tenant["id"].as_str().unwrap().parse().unwrap())
    };
    let signed_for = |slug: &str| {
        let claims = indigo_dataplane::auth::Claims {
            tenant_id: id_of(slug),
            sub: "shopper-of-the-backend".into(),
            role: indigo_dataplane::auth::CallerRole::Customer,
            exp: chrono::Utc::now().timestamp() + 600,
        };
        indigo_dataplane::auth::sign_with_tenant_key(&key, &claims)
    };
    let products = async |token: String| {
        http.get(format!("{storefront_url}/v1/products")).bearer_auth(token).send().await.unwrap().status()
    };
    assert_eq!(products(signed_for("blue-bakery")).await, 200, "the bakery's key signs for the bakery");
    assert_eq!(products(signed_for("cobalt-coffee")).await, 401, "and for no other tenant");
    // The data planes share the tenant's plan rate through Redis: its bucket is there.
    let output = cli(data_dir, &["tenant", "get", "blue-bakery", "--output", "json", "--api-url", &api_url]);
    let bakery: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let bucket = format!("indigo:rate:{}", bakery["id"].as_str().unwrap());
    let mut redis = redis::Client::open(redis_url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let tokens: Option<f64> = redis::cmd("HGET").arg(&bucket).arg("tokens").query_async(&mut redis).await.unwrap();
    let tokens = tokens.unwrap_or_else(|| panic!("no shared bucket {bucket} in Redis"));
    assert!(tokens < 100.0, "two requests were drawn from the shared bucket: {tokens} left");

    let status = daemon.signal_and_wait("TERM", Duration::from_secs(30)).unwrap();
    assert!(status.success(), "indigo up exited with {status} after SIGTERM");

    // The data plane flushed its usage before the platform stopped: the three
    // requests the bakery was served are counted (the refused one is not).
    let control = sqlx::PgPool::connect(&database.url).await.unwrap();
    let metered: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM usage_events u JOIN tenants t ON t.id = u.tenant_id WHERE t.slug = 'blue-bakery'",
    )
    .fetch_one(&control)
    .await
    .unwrap();
    assert_eq!(metered, 3);
    // It reported them as a data plane, not as an admin: each service has an
    // identity of its own, and a silo tenant's is bound to that tenant.
    let identities: Vec<(String, Option<uuid::Uuid>)> =
        sqlx::query_as("SELECT name, tenant_id FROM api_tokens WHERE role = 'dataplane' ORDER BY name")
            .fetch_all(&control)
            .await
            .unwrap();
    assert!(identities.contains(&("indigo-dp-pool".into(), None)), "{identities:?}");
    assert!(identities.iter().all(|(name, tenant)| name == "indigo-dp-pool" || tenant.is_some()), "{identities:?}");
    // The reconciler gave the enterprise demo tenant its own database.
    let silos: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM tenants WHERE isolation = 'silo' AND placement->>'isolation' = 'silo'",
    )
    .fetch_one(&control)
    .await
    .unwrap();
    assert_eq!(silos, 1, "the enterprise demo tenant is placed in a silo");
    control.close().await;
    platform.remove().await;
}

#[test]
fn an_unreachable_api_is_a_one_line_failure() {
    let output = Command::new(INDIGO)
        .args(["tenant", "list", "--api-url", "http://127.0.0.1:9", "--token", "x"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("cannot reach the admin API"), "{stderr}");
}

#[test]
fn a_broken_plans_file_stops_the_daemon_with_file_plan_and_key() {
    let dir = std::env::temp_dir().join(format!("indigo-plans-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/plans.toml")).unwrap();
    let broken = dir.join("plans.toml");
    std::fs::write(&broken, good.replacen("api_calls_per_day = 10000", "api_calls_per_day = -7", 1)).unwrap();
    let output = Command::new(INDIGO).args(["policy", "--plans-file"]).arg(&broken).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("{}: plan `growth`: key `limits.api_calls_per_day`", broken.display())),
        "{stderr}"
    );
    let output = Command::new(INDIGO)
        .args(["serve", "--database-url", "postgres://127.0.0.1:9/none", "--plans-file"])
        .arg(&broken)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("plan `growth`: key `limits.api_calls_per_day`"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Without a server of its own, `indigo up` starts a private PostgreSQL on
/// which every role logs in with a password (SCRAM-SHA-256): its superuser's
/// and the data plane's role's are secrets in the data directory, and the data
/// plane serves with its own. The server does not outlive the platform.
#[tokio::test]
async fn up_starts_a_private_postgres_when_none_answers() {
    let data_dir = std::env::temp_dir().join(format!("indigo-private-{}", uuid::Uuid::new_v4().simple()));
    let up = || {
        let mut command = Command::new(INDIGO);
        command
            .args(["up", "--demo"])
            .env_remove("INDIGO_DATABASE_URL")
            .env_remove("INDIGO_ADMIN_TOKEN")
            .env_remove("INDIGO_APP_DATABASE_PASSWORD")
            // Nothing listens on port 1: `up` must fall back to a server of its own.
            .env("INDIGO_LOCAL_DATABASE_URL", "postgres://postgres@127.0.0.1:1/indigo")
            .env("INDIGO_LISTEN", "127.0.0.1:0")
            .env("INDIGO_DATAPLANE_LISTEN", "127.0.0.1:0")
            .env("INDIGO_DATA_DIR", &data_dir)
            .env("INDIGO_PLANS_FILE", concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/plans.toml"));
        command
    };
    let mut daemon = Process::spawn(up()).unwrap();
    daemon.wait_for_line("starting a private one", Duration::from_secs(30)).unwrap();
    daemon.wait_for_line("private PostgreSQL running on 127.0.0.1:54329", Duration::from_secs(120)).unwrap();
    let line = daemon.wait_for_line("admin API: ", Duration::from_secs(60)).unwrap();
    let api_url = line.split("admin API: ").nth(1).unwrap().trim().to_owned();
    let line = daemon.wait_for_line("storefront: ", Duration::from_secs(30)).unwrap();
    let storefront_url = line.split("storefront: ").nth(1).unwrap().trim().to_owned();
    wait_until_ok(&format!("{api_url}/readyz"), Duration::from_secs(30)).await.unwrap();
    let output = cli(&data_dir, &["tenant", "list", "--output", "json", "--api-url", &api_url]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let tenants: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(tenants.as_array().unwrap().len(), 6);

    // No role gets in without its password; each gets in with its own.
    let secret = |file: &str| std::fs::read_to_string(data_dir.join(file)).unwrap().trim().to_owned();
    let (superuser, app) = (secret("postgres.password"), secret("app-database.password"));
    let login = |user: &str, password: Option<&str>| {
        let options = sqlx::postgres::PgConnectOptions::new_without_pgpass()
            .host("127.0.0.1")
            .port(54329)
            .username(user)
            .database("indigo_pool");
        match password {
            Some(password) => options.password(password),
            None => options,
        }
    };
    use sqlx::ConnectOptions;
    for (user, password) in [("postgres", None), ("indigo_app", None), ("indigo_app", Some(superuser.as_str()))] {
        let refused = login(user, password).connect().await.unwrap_err().to_string();
        assert!(refused.contains("password"), "{user} without its password: {refused}");
    }
    let mut as_app = login("indigo_app", Some(&app)).connect().await.unwrap();
    let visible: i64 = sqlx::query_scalar("SELECT count(*) FROM products").fetch_one(&mut as_app).await.unwrap();
    assert_eq!(visible, 0, "the app role logs in, and sees no tenant's rows without one");
    let stored: String = sqlx::query_scalar("SELECT rolpassword FROM pg_authid WHERE rolname = 'indigo_app'")
        .fetch_one(&mut login("postgres", Some(&superuser)).connect().await.unwrap())
        .await
        .unwrap();
    assert!(stored.starts_with("SCRAM-SHA-256$"), "stored as a SCRAM verifier");
    // The data plane logs in with its own password: a tenant's storefront serves.
    let token = storefront_token(&data_dir, &api_url, "blue-bakery");
    // Once its onboarding has seeded it: the sample product.
    eventually("the storefront serves the seeded tenant from the private server", async || {
        let reply = reqwest::Client::new()
            .get(format!("{storefront_url}/v1/products"))
            .bearer_auth(&token)
            .send()
            .await
            .ok()?;
        let status = reply.status();
        let body = reply.text().await.ok()?;
        (status == 200 && body.contains("Sample product")).then_some(())
    })
    .await;

    let status = daemon.signal_and_wait("TERM", Duration::from_secs(60)).unwrap();
    assert!(status.success(), "indigo up exited with {status}");
    // The private server went down with the platform.
    let private = format!("postgres://postgres:{superuser}@127.0.0.1:54329/postgres");
    assert!(!indigo_controlplane::db::server_answers(&private).await);

    // Started again on the same directory, then SIGKILLed: the server, a
    // daemon of pg_ctl's, does not outlive it either.
    let mut daemon = Process::spawn(up()).unwrap();
    daemon.wait_for_line("private PostgreSQL running on 127.0.0.1:54329", Duration::from_secs(120)).unwrap();
    daemon.wait_for_line("admin API: ", Duration::from_secs(60)).unwrap();
    assert!(indigo_controlplane::db::server_answers(&private).await, "the same password again");
    daemon.signal_and_wait("KILL", Duration::from_secs(10)).unwrap();
    eventually("the private PostgreSQL stops after its platform was killed", async || {
        (!indigo_controlplane::db::server_answers(&private).await).then_some(())
    })
    .await;
    let _ = std::fs::remove_dir_all(&data_dir);
}

/// The data planes `indigo up` runs: the pool's replicas and each silo tenant's
/// own service are the reconciler's to keep; one killed by hand comes back,
/// reported as drift with what was repaired.
#[tokio::test]
async fn a_data_plane_killed_by_hand_is_restored_by_the_reconciler() {
    let platform = Platform::new();
    let (database, pool, data_dir) = (&platform.database, &platform.pool, &platform.data_dir);
    let mut command = local_platform(INDIGO.as_ref(), database, pool, data_dir);
    command.arg("--demo").env("INDIGO_RESYNC_SECONDS", "3600");
    let mut daemon = Process::spawn(command).unwrap();
    let line = daemon.wait_for_line("admin API: ", Duration::from_secs(60)).unwrap();
    let api_url = line.split("admin API: ").nth(1).unwrap().trim().to_owned();
    wait_until_ok(&format!("{api_url}/readyz"), Duration::from_secs(30)).await.unwrap();
    let control = sqlx::PgPool::connect(&database.url).await.unwrap();

    // The enterprise demo tenant's own service, at the address its placement gives.
    let (tenant, service) = eventually("fjord-fashion has its own data plane", async || {
        sqlx::query_as::<_, (uuid::Uuid, String)>(
            "SELECT id, placement->>'service' FROM tenants WHERE slug = 'fjord-fashion' AND placement->>'service' IS NOT NULL",
        )
        .fetch_optional(&control)
        .await
        .unwrap()
    })
    .await;
    wait_until_ok(&format!("{service}/readyz"), Duration::from_secs(30)).await.unwrap();
    let ours = DataPlanes { control_plane: api_url.clone() };
    assert_eq!(ours.serving(Some(tenant)).len(), 2, "the plan's dataplane_replicas");
    assert_eq!(ours.serving(None).len(), 2, "the pool's replicas from policies/plans.toml");
    // Operators see them in the reconciler's state.
    let output = cli(data_dir, &["reconciler", "--output", "json", "--api-url", &api_url]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let services = status["services"].as_array().unwrap();
    let seen = |tenant: serde_json::Value| services.iter().find(|s| s["tenant_id"] == tenant).cloned();
    let own = seen(serde_json::json!(tenant)).expect("fjord-fashion's service in the reconciler's state");
    assert_eq!(
        (own["running"].as_u64(), own["wanted"].as_u64(), own["address"].as_str()),
        (Some(2), Some(2), Some(service.as_str()))
    );
    let pool_service = seen(serde_json::Value::Null).expect("the pool's service");
    assert_eq!(pool_service["name"], "indigo-dp-pool");

    // It serves its tenant, and no other.
    let http = reqwest::Client::new();
    let token = |slug: &str| storefront_token(data_dir, &api_url, slug);
    let own = http.get(format!("{service}/v1/products")).bearer_auth(token("fjord-fashion")).send().await.unwrap();
    assert_eq!(own.status(), 200);
    let other = http.get(format!("{service}/v1/products")).bearer_auth(token("blue-bakery")).send().await.unwrap();
    assert_eq!(other.status(), 401, "a dedicated data plane serves its tenant only");

    // Kill one of the tenant's replicas, then one of the pool's.
    kill(ours.serving(Some(tenant))[0]);
    let repaired = eventually("the tenant's repair is reported", async || {
        sqlx::query_scalar::<_, serde_json::Value>(
            "SELECT data FROM events WHERE tenant_id = $1 AND kind = 'DriftRepaired'",
        )
        .bind(tenant)
        .fetch_optional(&control)
        .await
        .unwrap()
    })
    .await;
    assert_eq!(repaired["actions"][0]["action"], "scale_service", "{repaired}");
    assert_eq!(
        (repaired["actions"][0]["running"].as_u64(), repaired["actions"][0]["replicas"].as_u64()),
        (Some(1), Some(2))
    );
    eventually("two replicas again", async || (ours.serving(Some(tenant)).len() == 2).then_some(())).await;

    kill(ours.serving(None)[0]);
    eventually("the pool's repair is reported", async || {
        sqlx::query_scalar::<_, i64>("SELECT id FROM events WHERE tenant_id IS NULL AND kind = 'DriftRepaired'")
            .fetch_optional(&control)
            .await
            .unwrap()
    })
    .await;
    eventually("two pool replicas again", async || (ours.serving(None).len() == 2).then_some(())).await;

    let status = daemon.signal_and_wait("TERM", Duration::from_secs(30)).unwrap();
    assert!(status.success(), "indigo up exited with {status} after SIGTERM");
    assert!(ours.serving(Some(tenant)).is_empty() && ours.serving(None).is_empty(), "data planes stopped with it");
    let silo: String = sqlx::query_scalar("SELECT placement->>'database' FROM tenants WHERE id = $1")
        .bind(tenant)
        .fetch_one(&control)
        .await
        .unwrap();
    control.close().await;
    TestDatabase { url: String::new(), name: silo }.drop_now().await.unwrap();
    platform.remove().await;
}

/// The data-plane processes of one platform, found by the control plane they
/// report to (their environment says, as it says the tenant they serve alone).
pub(crate) struct DataPlanes {
    pub(crate) control_plane: String,
}

impl DataPlanes {
    /// Pids of the data planes serving `tenant` (`None`: the pool's).
    pub(crate) fn serving(&self, tenant: Option<uuid::Uuid>) -> Vec<u32> {
        self.running().into_iter().filter(|(_, serves)| *serves == tenant).map(|(pid, _)| pid).collect()
    }

    /// Every data plane of this platform: its pid and the tenant it serves alone, if any.
    pub(crate) fn running(&self) -> Vec<(u32, Option<uuid::Uuid>)> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
            let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else { continue };
            if raw.split(|b| *b == 0).nth(1) != Some(b"dataplane".as_slice()) {
                continue;
            }
            let environment = Self::environment(pid);
            if environment.get("INDIGO_CONTROL_PLANE_URL") == Some(&self.control_plane) {
                found.push((pid, environment.get("INDIGO_DATAPLANE_TENANT").and_then(|t| t.parse().ok())));
            }
        }
        found
    }

    /// The environment process `pid` was started with.
    pub(crate) fn environment(pid: u32) -> std::collections::HashMap<String, String> {
        let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        raw.split(|b| *b == 0)
            .filter_map(|pair| {
                let (name, value) =
                    String::from_utf8_lossy(pair).split_once('=').map(|(n, v)| (n.to_owned(), v.to_owned()))?;
                Some((name, value))
            })
            .collect()
    }
}

fn kill(pid: u32) {
    let status = Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
    assert!(status.success());
}

pub(crate) async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    for _ in 0..300 {
        if let Some(found) = check().await {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting until {what}");
}

/// What one `indigo up` under test owns: its control and pool databases and its data directory.
pub(crate) struct Platform {
    pub(crate) database: TestDatabase,
    pub(crate) pool: TestDatabase,
    pub(crate) data_dir: std::path::PathBuf,
}

impl Platform {
    pub(crate) fn new() -> Self {
        let database = TestDatabase::unique("indigo_up_test");
        let pool = TestDatabase::unique("indigo_up_pool");
        let data_dir = std::env::temp_dir().join(format!("indigo-up-{}", database.name));
        Self { database, pool, data_dir }
    }

    /// Starts `indigo up --demo` with `env`, and waits until both APIs are
    /// ready; the process, the admin API's URL and the storefront's.
    pub(crate) async fn start_demo(&self, env: &[(&str, &str)]) -> (Process, String, String) {
        self.start_demo_logging(env, None).await
    }

    /// [`Platform::start_demo`], its log (stderr, the tasks' included) written to `log` if given.
    pub(crate) async fn start_demo_logging(
        &self,
        env: &[(&str, &str)],
        log: Option<&std::path::Path>,
    ) -> (Process, String, String) {
        let mut command = local_platform(INDIGO.as_ref(), &self.database, &self.pool, &self.data_dir);
        command.arg("--demo").env("INDIGO_REDIS_URL", redis_url()).envs(env.iter().copied());
        let mut daemon = match log {
            Some(log) => Process::spawn_logging_to(command, log).unwrap(),
            None => Process::spawn(command).unwrap(),
        };
        let line = daemon.wait_for_line("admin API: ", Duration::from_secs(60)).unwrap();
        let api_url = line.split("admin API: ").nth(1).unwrap().trim().to_owned();
        let line = daemon.wait_for_line("storefront: ", Duration::from_secs(30)).unwrap();
        let storefront_url = line.split("storefront: ").nth(1).unwrap().trim().to_owned();
        wait_until_ok(&format!("{api_url}/readyz"), Duration::from_secs(30)).await.unwrap();
        // Ready means the data plane has its routing table.
        wait_until_ok(&format!("{storefront_url}/readyz"), Duration::from_secs(30)).await.unwrap();
        (daemon, api_url, storefront_url)
    }

    /// Drops its databases, every silo its tenants may have had included, and its directory.
    pub(crate) async fn remove(self) {
        let control = sqlx::PgPool::connect(&self.database.url).await.unwrap();
        let tenants: Vec<(uuid::Uuid, String)> =
            sqlx::query_as("SELECT id, slug FROM tenants").fetch_all(&control).await.unwrap_or_default();
        control.close().await;
        for (id, slug) in tenants {
            let Ok(slug) = Slug::parse(&slug) else { continue };
            let name = silo_database(TenantId(id), &slug);
            TestDatabase { url: String::new(), name }.drop_now().await.unwrap();
        }
        self.database.drop_now().await.unwrap();
        self.pool.drop_now().await.unwrap();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// A storefront token (the owner's) for the tenant `slug` of the platform at `api_url`.
pub(crate) fn storefront_token(data_dir: &std::path::Path, api_url: &str, slug: &str) -> String {
    let output = cli(data_dir, &["storefront-token", slug, "--api-url", api_url]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// The CLI against a platform under test, finding its token in `data_dir`.
pub(crate) fn cli(data_dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(INDIGO).args(args).arg("--data-dir").arg(data_dir).output().unwrap()
}

/// A secret file that is empty (tokens anyone could forge) or that others can
/// read stops `indigo up` before it serves anything, with the file named.
#[tokio::test]
async fn up_refuses_an_empty_or_exposed_secret() {
    use std::os::unix::fs::PermissionsExt;
    let platform = Platform::new();
    let (database, pool, data_dir) = (&platform.database, &platform.pool, &platform.data_dir);
    std::fs::create_dir_all(data_dir).unwrap();
    let secret = data_dir.join("jwt.secret");
    std::fs::write(&secret, "\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let output = local_platform(INDIGO.as_ref(), database, pool, data_dir).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains(&format!("{} holds fewer than 32 characters", secret.display())), "{stderr}");

    std::fs::write(&secret, "x".repeat(64)).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = local_platform(INDIGO.as_ref(), database, pool, data_dir).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("can be read by others (mode 644)"), "{stderr}");
    platform.remove().await;
}

/// A data plane whose platform died before it had even started (its parent is
/// no longer the PID it was handed) stops at once, instead of serving on as an
/// orphan with a stale routing table.
#[test]
fn a_data_plane_whose_platform_is_already_gone_stops_at_once() {
    let spool = std::env::temp_dir().join(format!("indigo-orphan-spool-{}", std::process::id()));
    let mut child = Command::new(INDIGO)
        .args(["dataplane", "--listen", "127.0.0.1:0", "--control-plane-url", "http://127.0.0.1:9"])
        .args(["--control-plane-token", "t", "--jwt-secret", "a-secret-of-at-least-thirty-two-bytes", "--spool-dir"])
        .arg(&spool)
        // PID 1 is not this test, which is the data plane's parent.
        .args(["--exit-with-parent", "1"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the orphaned data plane kept running");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "it stops gracefully: {status}");
    let _ = std::fs::remove_dir_all(spool);
}

/// Every request a data plane answered is metered, also when the data plane
/// is SIGKILLed under load before it flushed, and nothing twice: the events
/// are in the replica's journal before the answers go out, and its successor
/// on the same spool directory delivers them. A replica that has not loaded
/// its routing table yet answers 503, never 401 for a tenant it will know.
#[tokio::test]
async fn usage_survives_a_killed_data_plane_under_load() {
    let platform = Platform::new();
    let (database, data_dir) = (&platform.database, &platform.data_dir);
    // Flushes far apart: what the kill takes is a few seconds of usage, not none.
    let (mut daemon, api_url, storefront) = platform.start_demo(&[("INDIGO_METERING_FLUSH_MS", "5000")]).await;
    let token = storefront_token(data_dir, &api_url, "cobalt-coffee");

    // Two clients for four seconds; the pool's replicas are killed after the first.
    const CLIENTS: usize = 2;
    let stop = std::time::Instant::now() + Duration::from_secs(4);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (url, token) = (format!("{storefront}/v1/products"), token.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
                let (mut answered, mut statuses) = (0u64, std::collections::BTreeMap::<u16, u64>::new());
                while std::time::Instant::now() < stop {
                    match http.get(&url).bearer_auth(&token).send().await {
                        Ok(response) => {
                            let status = response.status().as_u16();
                            *statuses.entry(status).or_default() += 1;
                            answered += u64::from(status == 200);
                        }
                        // Killed mid-request, or not yet restored: not answered.
                        Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
                (answered, statuses)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let replicas = DataPlanes { control_plane: api_url.clone() };
    let killed = replicas.serving(None);
    assert_eq!(killed.len(), 2, "the pool's two replicas");
    for pid in &killed {
        kill(*pid);
    }
    let mut answered = 0;
    let mut statuses = std::collections::BTreeMap::<u16, u64>::new();
    for client in clients {
        let (count, seen) = client.await.unwrap();
        answered += count;
        for (status, n) in seen {
            *statuses.entry(status).or_default() += n;
        }
    }
    assert!(!statuses.contains_key(&401), "a known tenant was refused: {statuses:?}");
    assert!(answered > 0, "{statuses:?}");
    eventually("the pool's replicas are back", async || {
        let now = replicas.serving(None);
        (now.len() == 2 && now.iter().all(|pid| !killed.contains(pid))).then_some(())
    })
    .await;

    // Each answered request once; a request in flight at the kill may have been
    // metered without its answer reaching the client, at most one per client.
    let control = sqlx::PgPool::connect(&database.url).await.unwrap();
    let metered = eventually("the killed replicas' usage is delivered", async || {
        let metered: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM usage_events u JOIN tenants t ON t.id = u.tenant_id
             WHERE t.slug = 'cobalt-coffee' AND u.event_type = 'api_call' AND u.status = 200",
        )
        .fetch_one(&control)
        .await
        .unwrap();
        (u64::try_from(metered).unwrap() >= answered).then_some(metered)
    })
    .await;
    let metered = u64::try_from(metered).unwrap();
    assert!(metered <= answered + CLIENTS as u64, "metered {metered} for {answered} answered: some twice");

    control.close().await;
    let status = daemon.signal_and_wait("TERM", Duration::from_secs(30)).unwrap();
    assert!(status.success(), "indigo up exited with {status} after SIGTERM");
    platform.remove().await;
}

/// When `indigo up` is SIGKILLed, at any moment — as soon as its API is up,
/// once its data planes serve, while it reconciles the silo tenant's service —
/// none of the data planes it started outlives it; started again on the same
/// databases and directory, it serves again.
#[tokio::test]
async fn no_data_plane_outlives_a_killed_platform() {
    let platform = Platform::new();
    let (database, pool, data_dir) = (&platform.database, &platform.pool, &platform.data_dir);
    for moment in ["api up", "storefront up", "reconciling the silo"] {
        let mut command = local_platform(INDIGO.as_ref(), database, pool, data_dir);
        command.arg("--demo");
        let mut daemon = Process::spawn(command).unwrap();
        let line = daemon.wait_for_line("admin API: ", Duration::from_secs(60)).unwrap();
        let api_url = line.split("admin API: ").nth(1).unwrap().trim().to_owned();
        let ours = DataPlanes { control_plane: api_url.clone() };
        if moment != "api up" {
            let line = daemon.wait_for_line("storefront: ", Duration::from_secs(30)).unwrap();
            let storefront = line.split("storefront: ").nth(1).unwrap().trim().to_owned();
            wait_until_ok(&format!("{storefront}/healthz"), Duration::from_secs(30)).await.unwrap();
        }
        if moment == "reconciling the silo" {
            eventually("the silo tenant's data planes start", async || {
                ours.running().iter().any(|(_, tenant)| tenant.is_some()).then_some(())
            })
            .await;
        }
        daemon.signal_and_wait("KILL", Duration::from_secs(10)).unwrap();
        eventually(&format!("no data plane left after a kill with the {moment}"), async || {
            ours.running().is_empty().then_some(())
        })
        .await;
    }

    let (mut daemon, _, _) = platform.start_demo(&[]).await;
    let status = daemon.signal_and_wait("TERM", Duration::from_secs(30)).unwrap();
    assert!(status.success(), "indigo up exited with {status} after SIGTERM");
    platform.remove().await;
}

/// Runs the control plane's job `name` now. The scheduler may be running it
/// this minute (409 job_running): the run waits for that one to end (a refused
/// run leaves no idempotency record, so the same key is sent again).
async fn run_job(api_url: &str, admin: &str, name: &str, key: &str) -> reqwest::Response {
    loop {
        let ran = reqwest::Client::new()
            .post(format!("{api_url}/v1/jobs/{name}/run"))
            .bearer_auth(admin)
            .header("idempotency-key", key)
            .send()
            .await
            .unwrap();
        if ran.status() != 409 {
            return ran;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}
