//! `indigo up --demo` in the AWS mode, on moto and the stand-in: the enterprise
//! demo tenant lives on its own Aurora cluster (a database on the local server)
//! and is served by the tasks of its own ECS service, started here from the
//! task definition registered in moto, with its secrets read from moto's
//! Secrets Manager; the storefront a newcomer is shown answers.

use std::time::Duration;

use crate::up::{DataPlanes, Platform, eventually, storefront_token};

#[tokio::test]
async fn on_aws_the_enterprise_tenant_is_served_from_its_own_cluster_by_its_own_tasks() {
    let moto = std::env::var("MOTO_URL").unwrap_or_else(|_| "http://127.0.0.1:5000".into());
    reqwest::get(format!("{moto}/moto-api/"))
        .await
        .unwrap_or_else(|e| panic!("moto is not reachable at {moto} ({e}); scripts/test installs and starts it"));
    let platform = Platform::new();
    let data_dir = &platform.data_dir;
    let ecs_cluster = format!("indigo-up-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    // A secret setting given as a Secrets Manager ARN: the daemon reads it at start.
    let webhook_secret = format!("whsec_{}", uuid::Uuid::new_v4().simple());
    let secrets_manager = aws_sdk_secretsmanager::Client::new(&indigo_e2e::moto().await);
    let webhook_arn = secrets_manager
        .create_secret()
        .name(format!("{ecs_cluster}/daemon/stripe-webhook-secret"))
        .secret_string(&webhook_secret)
        .send()
        .await
        .unwrap()
        .arn()
        .unwrap()
        .to_owned();
    let (otlp, spans) = crate::traces::receiver().await;
    let aws = [
        ("INDIGO_OTLP_ENDPOINT", otlp.as_str()),
        ("INDIGO_STRIPE_WEBHOOK_SECRET", webhook_arn.as_str()),
        ("INDIGO_PROVIDER", "aws"),
        ("AWS_ENDPOINT_URL", moto.as_str()),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
        ("INDIGO_AWS_ECS_CLUSTER", ecs_cluster.as_str()),
        // The control plane logs everything it might leak a secret through; the
        // tasks log at `info` only if their task definition says so.
        ("RUST_LOG", "info,indigo_controlplane=debug,indigo_tenantdb=debug,sqlx=debug"),
    ];
    let log = data_dir.join("indigo-up.log");
    let (mut daemon, api_url, storefront) = platform.start_demo_logging(&aws, Some(&log)).await;
    daemon.wait_for_line("AWS: ", Duration::from_secs(5)).unwrap();
    let control = sqlx::PgPool::connect(&platform.database.url).await.unwrap();

    let (tenant, endpoint, service) = eventually("fjord-fashion is placed on its cluster and served", async || {
        sqlx::query_as::<_, (uuid::Uuid, String, String)>(
            "SELECT id, placement->>'cluster', placement->>'service' FROM tenants
             WHERE slug = 'fjord-fashion' AND phase = 'ready' AND placement->>'service' IS NOT NULL",
        )
        .fetch_optional(&control)
        .await
        .unwrap()
    })
    .await;
    assert!(endpoint.contains(".cluster-"), "an Aurora endpoint: {endpoint}");
    indigo_e2e::wait_until_ok(&format!("{service}/readyz"), Duration::from_secs(30)).await.unwrap();

    // Its cluster was made by an AWS call traced in the tenant's name.
    let create = crate::traces::wait_for(&spans, "RDS.CreateDBCluster in fjord-fashion's name", |spans| {
        let create = spans.iter().find(|s| s.name == "RDS.CreateDBCluster")?;
        let mut parent = spans.iter().find(|s| s.span_id == create.parent_span_id)?;
        while parent.attribute("tenant_id").is_none() {
            parent = spans.iter().find(|s| s.span_id == parent.parent_span_id)?;
        }
        Some((create.clone(), parent.attribute("tenant_id")?.to_owned()))
    })
    .await;
    assert_eq!(create.1, tenant.to_string(), "{create:?}");
    assert_eq!(create.0.attribute("rpc.service"), Some("RDS"));

    // Its tasks run with what the task definition says, secrets resolved.
    let ours = DataPlanes { control_plane: api_url.clone() };
    let tasks = ours.serving(Some(tenant));
    assert_eq!(tasks.len(), 2, "the plan's dataplane_replicas");
    let environment = DataPlanes::environment(tasks[0]);
    assert_eq!(environment.get("RUST_LOG").map(String::as_str), Some("info"), "set by the task definition alone");
    assert!(environment["INDIGO_CONTROL_PLANE_TOKEN"].starts_with("indigo_"), "read from Secrets Manager");
    // Nothing from the control plane's own environment but what ECS gives every
    // task: its region and task role (the emulator's, here).
    assert!(!environment.contains_key("INDIGO_PROVIDER"), "nothing from the control plane's own settings");
    assert_eq!(environment.get("AWS_ENDPOINT_URL"), Some(&moto), "the task role's stand-in");

    // It serves its own rows, from its cluster; another tenant is refused there.
    let http = reqwest::Client::new();
    let token = |slug: &str| storefront_token(data_dir, &api_url, slug);
    // Its two tasks share the address; one may not have its routing table yet
    // (503 `not_ready`, "try again"), as a client would, the test tries again.
    let products = async |slug: &str| {
        let token = token(slug);
        eventually("a task with its routing table answers", async || {
            let answer = http.get(format!("{service}/v1/products")).bearer_auth(&token).send().await.unwrap();
            let status = answer.status();
            let body = answer.text().await.unwrap();
            (!body.contains("not_ready")).then_some((status, body))
        })
        .await
    };
    let (status, body) = products("fjord-fashion").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Sample product"), "the product seeded on its cluster: {body}");
    let (status, body) = products("blue-bakery").await;
    assert_eq!(status, 401, "a dedicated data plane serves its tenant only: {body}");
    // Its tasks are in its cluster's database as its own login, read from its secret.
    let on_cluster = indigo_tenantdb::stand_in_database(&endpoint);
    let tenant_id = indigo_core::tenant::TenantId(tenant);
    let login =
        indigo_e2e::cluster_logins::assert_serving(&indigo_e2e::moto().await, &ecs_cluster, tenant_id, &on_cluster)
            .await;
    let users: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT usename::text FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend'",
    )
    .bind(&on_cluster)
    .fetch_all(&control)
    .await
    .unwrap();
    assert!(users.contains(&login.role), "the tasks log in as {}: {users:?}", login.role);
    assert!(!users.iter().any(|u| u == "indigo_app"), "the pool's credentials never reach the cluster: {users:?}");
    // The storefront `indigo up` printed is the pool's, and answers.
    let pool = http.get(format!("{storefront}/v1/products")).bearer_auth(token("blue-bakery")).send().await.unwrap();
    assert_eq!(pool.status(), 200);

    // The tenant's tasks cache its catalogue in the Redis their task definitions name, and the
    // admin API reads the counts there.
    let admin_token = std::fs::read_to_string(data_dir.join("admin.token")).unwrap().trim().to_owned();
    let fjord = token("fjord-fashion");
    let cache = eventually("the tasks' catalogue cache answers reads", async || {
        http.get(format!("{service}/v1/products")).bearer_auth(&fjord).send().await.ok()?;
        let stats: serde_json::Value = http
            .get(format!("{api_url}/v1/tenants/fjord-fashion/catalogue-cache"))
            .bearer_auth(&admin_token)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (stats["hits"].as_u64() > Some(0)).then_some(stats)
    })
    .await;
    assert_eq!(cache["enabled"], true, "{cache}");
    // Descriptions and recommendations on its tasks: the built-in writer and recommender, since no
    // Bedrock model is configured and the tenant names no Personalize campaign.
    let listed: serde_json::Value =
        http.get(format!("{service}/v1/products")).bearer_auth(&fjord).send().await.unwrap().json().await.unwrap();
    let product = listed["items"][0]["id"].as_str().unwrap().to_owned();
    let described =
        http.post(format!("{service}/v1/products/{product}/description")).bearer_auth(&fjord).send().await.unwrap();
    assert_eq!(described.status(), 200);
    assert_eq!(described.json::<serde_json::Value>().await.unwrap()["generator"], "embedded");
    let recommended = http.get(format!("{service}/v1/recommendations")).bearer_auth(&fjord).send().await.unwrap();
    assert_eq!(recommended.status(), 200);
    assert_eq!(recommended.json::<serde_json::Value>().await.unwrap()["source"], "embedded");

    // The webhook secret is the ARN's value: a delivery signed with it is taken, one signed with the ARN is not.
    let event =
        serde_json::json!({ "id": "evt_arn", "object": "event", "type": "customer.created", "data": { "object": {} } });
    let body = event.to_string();
    let deliver = async |secret: &str| {
        let signature =
            indigo_controlplane::api::webhooks::sign(secret, chrono::Utc::now().timestamp(), body.as_bytes());
        let answer = http
            .post(format!("{api_url}/v1/webhooks/stripe"))
            .header("stripe-signature", signature)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        answer.status()
    };
    assert_eq!(deliver(&webhook_arn).await, 400, "the ARN itself is not the secret");
    assert_eq!(deliver(&webhook_secret).await, 200, "the secret read from Secrets Manager verifies");

    // No secret's value is anywhere the control plane keeps or shows things:
    // its database (tenants, events, audit log, workflow steps, …) or its API.
    let identifier = endpoint.split('.').next().unwrap();
    let secrets = secret_values(&moto, &format!("{ecs_cluster}/"), identifier).await;
    assert!(
        secrets.len() >= 7,
        "the JWT secret, two services' tokens, the app role's password, the tenant's login, the master login, \
         the webhook secret: {secrets:?}"
    );
    let dump = std::process::Command::new("pg_dump").args(["--data-only", &platform.database.url]).output().unwrap();
    assert!(dump.status.success(), "{}", String::from_utf8_lossy(&dump.stderr));
    let dump = String::from_utf8_lossy(&dump.stdout).into_owned();
    let admin = std::fs::read_to_string(data_dir.join("admin.token")).unwrap().trim().to_owned();
    let mut shown = String::new();
    for path in
        ["/v1/tenants", "/v1/tenants/fjord-fashion", "/v1/workflows", "/v1/events", "/v1/reconciler", "/v1/routing"]
    {
        let answer = http.get(format!("{api_url}{path}")).bearer_auth(&admin).send().await.unwrap();
        assert_eq!(answer.status(), 200, "{path}");
        shown += &answer.text().await.unwrap();
    }
    let status = daemon.signal_and_wait("TERM", Duration::from_secs(30)).unwrap();
    assert!(status.success(), "indigo up exited with {status} after SIGTERM");
    // …nor in what it and its tasks logged and printed, statements included.
    let logged = std::fs::read_to_string(&log).unwrap() + &daemon.stdout_so_far().join("\n");
    assert!(logged.contains("DEBUG"), "the log is at debug level: {} bytes", logged.len());
    for (name, value) in &secrets {
        assert!(!dump.contains(value.as_str()), "the secret {name} is in the control database");
        assert!(!shown.contains(value.as_str()), "the secret {name} is in an admin API answer");
        assert!(!logged.contains(value.as_str()), "the secret {name} is in the log ({})", log.display());
    }
    assert!(ours.running().is_empty(), "its tasks stopped with it");
    control.close().await;
    indigo_e2e::TestDatabase { url: String::new(), name: on_cluster }.drop_now().await.unwrap();
    let server = indigo_tenantdb::schema::TenantServer::new(&indigo_e2e::server_url()).unwrap();
    server.drop_login(&login.role).await.unwrap();
    platform.remove().await;
}

/// The values of the secrets this platform's tasks and `cluster`'s master login
/// live in, read from moto's Secrets Manager as any client would (moto takes
/// unsigned requests): name → value. The services' tokens and the JWT secret
/// are under `prefix`; the master login is RDS's secret for `cluster`.
async fn secret_values(moto: &str, prefix: &str, cluster: &str) -> Vec<(String, String)> {
    let http = reqwest::Client::new();
    let call = async |target: &str, body: serde_json::Value| -> serde_json::Value {
        http.post(format!("{moto}/"))
            .header("X-Amz-Target", format!("secretsmanager.{target}"))
            .header("Content-Type", "application/x-amz-json-1.1")
            .header("Authorization", "AWS4-HMAC-SHA256 Credential=test/20261203/us-east-1/secretsmanager/aws4_request")
            .body(body.to_string())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    };
    let mut values = Vec::new();
    let listed = call("ListSecrets", serde_json::json!({ "MaxResults": 100 })).await;
    let mut next = listed["NextToken"].as_str().map(str::to_owned);
    let mut secrets: Vec<serde_json::Value> = listed["SecretList"].as_array().cloned().unwrap_or_default();
    while let Some(token) = next.take() {
        let page = call("ListSecrets", serde_json::json!({ "MaxResults": 100, "NextToken": token })).await;
        next = page["NextToken"].as_str().map(str::to_owned);
        secrets.extend(page["SecretList"].as_array().cloned().unwrap_or_default());
    }
    for secret in secrets {
        let name = secret["Name"].as_str().unwrap_or_default().to_owned();
        let ours = name.starts_with(prefix) && !name.ends_with("redis-url");
        let master = secret["Description"].as_str().is_some_and(|d| d.ends_with(&format!(":cluster:{cluster}")));
        if !(ours || master) {
            continue;
        }
        let value = call("GetSecretValue", serde_json::json!({ "SecretId": secret["ARN"] })).await;
        let text = value["SecretString"].as_str().unwrap_or_default().to_owned();
        if master {
            let login: serde_json::Value = serde_json::from_str(&text).unwrap();
            values.push((format!("{name} (password)"), login["password"].as_str().unwrap().to_owned()));
        } else {
            values.push((name, text));
        }
    }
    values
}
