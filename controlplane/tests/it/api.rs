//! The admin API through its real router, against a fresh migrated database per
//! test (`#[sqlx::test]` creates and drops it on the server in DATABASE_URL).

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use indigo_controlplane::config::Overrides;
use indigo_controlplane::db;
use indigo_controlplane::providers::local::LocalDatabases;
use indigo_controlplane::workflow::{Services, engine};
use serde_json::{Value, json};
use sqlx::PgPool;
use tower::ServiceExt;

use crate::support;

const ADMIN: &str = "test-bootstrap-admin-token";

struct TestApp {
    router: Router,
    pool: PgPool,
    /// The pool the API reads through (its statements time out).
    api_pool: PgPool,
    routing_changes: indigo_controlplane::api::routing::RoutingChanges,
    workflows: Services<LocalDatabases>,
}

/// One pool database for every test of this file, provisioned once.
const POOL: &str = "indigo_api_pool_test";

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
}

impl Reply {
    fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or_else(|| panic!("no error code in {}", self.body))
    }
}

impl TestApp {
    async fn new(pool: PgPool) -> Self {
        Self::with(pool, Overrides::default()).await
    }

    /// The API with `overrides` over this file's settings.
    async fn with(pool: PgPool, overrides: Overrides) -> Self {
        let overrides = Overrides {
            admin_token: Some(ADMIN.into()),
            pool_database: Some(POOL.into()),
            data_dir: Some(std::env::temp_dir().join("indigo-api-test")),
            ..overrides
        };
        let control_plane = support::control_plane(pool.clone(), overrides).await;
        let workflows =
            control_plane.workflow_services(LocalDatabases::new(control_plane.state.tenant_dbs.clone())).unwrap();
        Self {
            router: control_plane.router(),
            api_pool: control_plane.state.db.clone(),
            routing_changes: control_plane.state.routing_changes.clone(),
            pool,
            workflows,
        }
    }

    /// Runs the onboarding and offboarding workflows the calls so far started.
    async fn settle(&self) {
        engine::run_until_idle(&self.workflows).await.unwrap();
    }

    async fn raw(&self, request: Request<Body>) -> Reply {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Reply { status, headers, body }
    }

    fn builder(method: Method, path: &str, token: Option<&str>) -> axum::http::request::Builder {
        let mut builder = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        builder
    }

    async fn get(&self, path: &str, token: &str) -> Reply {
        self.raw(Self::builder(Method::GET, path, Some(token)).body(Body::empty()).unwrap()).await
    }

    /// A mutating call with a JSON body and an idempotency key.
    async fn send(&self, method: Method, path: &str, token: &str, key: &str, body: Value) -> Reply {
        let request = Self::builder(method, path, Some(token))
            .header(header::CONTENT_TYPE, "application/json")
            .header("idempotency-key", key)
            .body(Body::from(body.to_string()))
            .unwrap();
        self.raw(request).await
    }

    async fn create(&self, slug: &str, plan: &str) -> Reply {
        let body = json!({ "name": format!("Shop {slug}"), "slug": slug, "owner_email": format!("o@{slug}.example"), "plan": plan });
        let reply = self.send(Method::POST, "/v1/tenants", ADMIN, &format!("create-{slug}"), body).await;
        self.settle().await;
        reply
    }

    /// A token of `role` made through the API.
    async fn token(&self, role: &str) -> String {
        let reply = self
            .send(
                Method::POST,
                "/v1/tokens",
                ADMIN,
                &format!("token-{role}"),
                json!({ "name": format!("{role}-bot"), "role": role }),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        reply.body["token"].as_str().unwrap().to_owned()
    }

    async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned())).fetch_one(&self.pool).await.unwrap()
    }
}

#[sqlx::test(migrator = "db::MIGRATOR")]
async fn migrations_are_rerunnable(pool: PgPool) {
    db::MIGRATOR.run(&pool).await.expect("a second run applies nothing and fails nothing");
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for table in ["api_tokens", "audit_log", "events", "idempotency_keys", "tenants"] {
        assert!(tables.contains(&table.to_owned()), "{table} missing from {tables:?}");
    }
}

#[sqlx::test(migrator = "db::MIGRATOR")]
async fn create_then_get_by_slug_and_id(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let created = app.create("acme-shoes", "growth").await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let tenant = &created.body;
    assert_eq!(tenant["slug"], "acme-shoes");
    assert_eq!(tenant["spec"]["plan"], "growth");
    assert_eq!(tenant["spec"]["isolation"], "pool");
    // Recorded pending; onboarding (run by `create` here) makes it active.
    assert_eq!(tenant["spec"]["lifecycle"], "pending");
    assert_eq!(tenant["spec"]["generation"], 1);
    assert_eq!(tenant["status"]["phase"], "pending");
    assert_eq!(tenant["status"]["observed_generation"], 0);
    assert!(created.headers.contains_key("x-request-id"));

    let by_slug = app.get("/v1/tenants/acme-shoes", ADMIN).await;
    assert_eq!(by_slug.status, StatusCode::OK);
    assert_eq!(by_slug.body["id"], tenant["id"]);
    assert_eq!(by_slug.body["spec"]["lifecycle"], "active");
    assert_eq!(by_slug.body["status"]["phase"], "ready");
    assert_eq!(by_slug.body["status"]["placement"]["database"], POOL);
    let by_id = app.get(&format!("/v1/tenants/{}", tenant["id"].as_str().unwrap()), ADMIN).await;
    assert_eq!(by_id.body, by_slug.body);

    // Not onboarded here: it would create a silo database.
    let body = json!({ "name": "Big Corp", "slug": "big-corp", "owner_email": "o@big.example", "plan": "enterprise" });
    let enterprise = app.send(Method::POST, "/v1/tenants", ADMIN, "create-big-corp", body).await;
    assert_eq!(enterprise.body["spec"]["isolation"], "silo");
}

#[sqlx::test(migrator = "db::MIGRATOR")]
async fn create_rejects_bad_input_and_changes_nothing(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let valid = json!({ "name": "Acme", "slug": "acme", "owner_email": "o@acme.example", "plan": "starter" });
    let with = |field: &str, value: Value| {
        let mut body = valid.clone();
        body[field] = value;
        body
    };
    let cases = [
        (with("plan", json!("gold")), StatusCode::UNPROCESSABLE_ENTITY, "unknown_plan"),
        (with("slug", json!("Acme")), StatusCode::UNPROCESSABLE_ENTITY, "invalid_slug"),
        (with("slug", json!("ab")), StatusCode::UNPROCESSABLE_ENTITY, "invalid_slug"),
        (with("slug", json!("a".repeat(41))), StatusCode::UNPROCESSABLE_ENTITY, "invalid_slug"),
        (with("slug", json!("acme_shoes")), StatusCode::UNPROCESSABLE_ENTITY, "invalid_slug"),
        (with("slug", json!("acme-")), StatusCode::UNPROCESSABLE_ENTITY, "invalid_slug"),
        (with("name", json!("   ")), StatusCode::UNPROCESSABLE_ENTITY, "invalid_name"),
        (with("owner_email", json!("nobody")), StatusCode::UNPROCESSABLE_ENTITY, "invalid_email"),
        (with("plan", json!(7)), StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
        (with("extra", json!(true)), StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
        (json!({ "name": "Acme" }), StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
        (json!([1, 2]), StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
    ];
    for (i, (body, status, code)) in cases.into_iter().enumerate() {
        let reply = app.send(Method::POST, "/v1/tenants", ADMIN, &format!("bad-{i}"), body.clone()).await;
        assert_eq!((reply.status, reply.code()), (status, code), "body {body}: {}", reply.body);
        assert!(reply.body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }

    let malformed = Request::post("/v1/tenants")
        .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
        .header(header::CONTENT_TYPE, "application/json")
        .header("idempotency-key", "malformed")
        .body(Body::from("{\"name\": "))
        .unwrap();
    let reply = app.raw(malformed).await;
    assert_eq!((reply.status, reply.code()), (StatusCode::BAD_REQUEST, "malformed_json"));

    let not_json = Request::post("/v1/tenants")
        .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
        .header(header::CONTENT_TYPE, "text/plain")
        .header("idempotency-key", "text")
        .body(Body::from(valid.to_string()))
        .unwrap();
    let reply = app.raw(not_json).await;
    assert_eq!((reply.status, reply.code()), (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"));

    let oversized =
        json!({ "name": "x".repeat(100 * 1024), "slug": "acme", "owner_email": "o@acme.example", "plan": "starter" });
    let reply = app.send(Method::POST, "/v1/tenants", ADMIN, "huge", oversized).await;
    assert_eq!((reply.status, reply.code()), (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"));

    let no_key = Request::post("/v1/tenants")
        .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(valid.to_string()))
        .unwrap();
    let reply = app.raw(no_key).await;
    assert_eq!((reply.status, reply.code()), (StatusCode::BAD_REQUEST, "idempotency_key_required"));

    assert_eq!(app.count("SELECT count(*) FROM tenants").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM audit_log").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM idempotency_keys").await, 0);

    // The same body with a fresh key now succeeds: nothing above was half-done.
    assert_eq!(app.send(Method::POST, "/v1/tenants", ADMIN, "good", valid).await.status, StatusCode::CREATED);
}

/// Text PostgreSQL cannot store (the NUL character) is the client's mistake,
/// refused at the edge wherever it arrives (query 400, path 400, body 422),
/// never a 500, nothing changed.
#[sqlx::test(migrator = "db::MIGRATOR")]
async fn text_the_database_cannot_store_is_a_client_error(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.create("acme", "starter").await;
    for path in ["/v1/tenants/acme/events?kind=%00", "/v1/tenants/acme/audit?kind=a%00b", "/v1/events?kind=%00"] {
        let reply = app.get(path, ADMIN).await;
        assert_eq!((reply.status, reply.code()), (StatusCode::BAD_REQUEST, "invalid_query"), "{path}");
    }
    let reply = app.get("/v1/tenants/ac%00me", ADMIN).await;
    assert_eq!((reply.status, reply.code()), (StatusCode::BAD_REQUEST, "invalid_path"));
    let settings =
        app.send(Method::PUT, "/v1/tenants/acme/settings", ADMIN, "tz", json!({ "timezone": "Europe/\u{0}" })).await;
    assert_eq!(
        (settings.status, settings.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_text"),
        "{}",
        settings.body
    );
    let timezone = app.get("/v1/tenants/acme/settings", ADMIN).await.body["timezone"].clone();
    assert_eq!(timezone, "UTC", "nothing changed");
}

#[sqlx::test(migrator = "db::MIGRATOR")]
async fn a_personalize_campaign_in_the_settings_is_routed_and_a_malformed_one_refused(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.create("acme", "pro").await;
    let before = app.get("/v1/routing", ADMIN).await.body["version"].as_i64().unwrap();
    let campaign = "arn:aws:personalize:eu-west-1:123456789012:campaign/acme-recs";
    let bad = json!({ "timezone": "UTC", "personalize_campaign_arn": "arn:aws:s3:::bucket" });
    let refused = app.send(Method::PUT, "/v1/tenants/acme/settings", ADMIN, "arn-bad", bad).await;
    assert_eq!((refused.status, refused.code()), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_campaign_arn"));
    let body = json!({ "timezone": "Europe/Paris", "personalize_campaign_arn": campaign });
    let set = app.send(Method::PUT, "/v1/tenants/acme/settings", ADMIN, "arn-good", body.clone()).await;
    assert_eq!((set.status, &set.body), (StatusCode::OK, &body));
    assert_eq!(app.get("/v1/tenants/acme/settings", ADMIN).await.body, body);
    let table = app.get("/v1/routing", ADMIN).await.body;
    assert!(table["version"].as_i64().unwrap() > before, "a new routing version: {table}");
    assert_eq!(table["routes"][0]["personalize_campaign_arn"], campaign);
    // Left out: none again.
    let cleared =
        app.send(Method::PUT, "/v1/tenants/acme/settings", ADMIN, "arn-none", json!({ "timezone": "UTC" })).await;
    assert_eq!(cleared.status, StatusCode::OK);
    assert!(app.get("/v1/routing", ADMIN).await.body["routes"][0].get("personalize_campaign_arn").is_none());
}

#[sqlx::test(migrator = "db::MIGRATOR")]
async fn duplicate_slug_is_a_conflict(pool: PgPool) {
    let app = TestApp::new(pool).await;
    assert_eq!(app.create("acme", "starter").await.status, StatusCode::CREATED);
    let body = json!({ "name": "Other", "slug": "acme", "owner_email": "x@y.example", "plan": "pro" });
    let reply = app.send(Method::POST, "/v1/tenants", ADMIN, "another-key", body).await;
    assert_eq!((reply.status, reply.code()), (StatusCode::CONFLICT, "slug_taken"));
    assert_eq!(app.count("SELECT count(*) FROM tenants").await, 1);
}

#[sqlx::test(migrator = "db::MIGRATOR")]
async fn idempotency_replays_and_detects_reuse(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let first = app.create("acme", "starter").await;
    let again = app.create("acme", "starter").await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.body, first.body);
    assert_eq!(again.headers.get("idempotent-replayed").unwrap(), "true");
    assert_eq!(app.count("SELECT count(*) FROM tenants").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM audit_log WHERE action = 'tenant.create'").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM workflows").await, 1);

    let different = json!({ "name": "Acme", "slug": "acme", "owner_email": "o@acme.example", "plan": "pro" });
    let reply = app.send(Method::POST, "/v1/tenants", ADMIN, "create-acme", different).await;
    assert_eq!((reply.status, reply.code()), (StatusCode::CONFLICT, "idempotency_key_reused"));

    // The same key on another path is another request, also refused.
    let reply = app.send(Method::PUT, "/v1/tenants/acme/plan", ADMIN, "create-acme", json!({ "plan": "pro" })).await;
    assert_eq!((reply.status, reply.code()), (StatusCode::CONFLICT, "idempotency_key_reused"));
}

#[sqlx::test(migrator = "db::MIGRATOR")]
async fn concurrent_retries_create_one_tenant(pool: PgPool) {
    let app = std::sync::Arc::new(TestApp::new(pool).await);
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move { app.create("racer", "growth").await }));
    }
    let mut bodies = Vec::new();
    for task in tasks {
        let reply = task.await.unwrap();
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        bodies.push(reply.body);
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "every retry sees the first answer");
    assert_eq!(app.count("SELECT count(*) FROM tenants").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM events WHERE kind = 'TenantRegistered'").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM workflows").await, 1, "one onboarding");
    assert_eq!(app.count("SELECT count(*) FROM events WHERE kind = 'TenantCreated'").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM outbox_emails").await, 1, "one welcome email");
}

#[sqlx::test(migrator = "db::MIGRATOR")]
async fn authentication_and_roles(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.create("acme", "starter").await;

    let anonymous = app.raw(Request::get("/v1/tenants").body(Body::empty()).unwrap()).await;
    assert_eq!((anonymous.status, anonymous.code()), (StatusCode::UNAUTHORIZED, "unauthorized"));
    let wrong = app.get("/v1/tenants", "not-a-real-token").await;
    assert_eq!((wrong.status, wrong.code()), (StatusCode::UNAUTHORIZED, "unauthorized"));
    let basic = app
        .raw(
            Request::get("/v1/tenants")
                .header(header::AUTHORIZATION, "Basic Zm9vOmJhcg==")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(basic.status, StatusCode::UNAUTHORIZED);

    let viewer = app.token("viewer").await;
    let operator = app.token("operator").await;
    assert_eq!(app.get("/v1/tenants", &viewer).await.status, StatusCode::OK);
    assert_eq!(app.get("/v1/tenants/acme/audit", &viewer).await.status, StatusCode::OK);
    // Where tenants' databases are is for the data planes and operators, not for onlookers.
    let routing = app.get("/v1/routing", &viewer).await;
    assert_eq!((routing.status, routing.code()), (StatusCode::FORBIDDEN, "forbidden"));
    assert_eq!(app.get("/v1/routing", &operator).await.status, StatusCode::OK);

    let plan = json!({ "plan": "pro" });
    let reply = app.send(Method::PUT, "/v1/tenants/acme/plan", &viewer, "v-plan", plan.clone()).await;
    assert_eq!((reply.status, reply.code()), (StatusCode::FORBIDDEN, "forbidden"));
    assert!(reply.body["message"].as_str().unwrap().contains("operator"));
    let reply = app.send(Method::POST, "/v1/tenants/acme/suspend", &viewer, "v-suspend", json!({})).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    let new = json!({ "name": "B", "slug": "bravo", "owner_email": "b@b.example", "plan": "starter" });
    assert_eq!(
        app.send(Method::POST, "/v1/tenants", &viewer, "v-create", new.clone()).await.status,
        StatusCode::FORBIDDEN
    );

    assert_eq!(
        app.send(Method::PUT, "/v1/tenants/acme/plan", &operator, "o-plan", plan).await.status,
        StatusCode::ACCEPTED
    );
    assert_eq!(app.send(Method::POST, "/v1/tenants", &operator, "o-create", new).await.status, StatusCode::CREATED);
    let reply = app.send(Method::DELETE, "/v1/tenants/acme", &operator, "o-delete", json!({})).await;
    assert_eq!((reply.status, reply.code()), (StatusCode::FORBIDDEN, "forbidden"));
    assert_eq!(app.get("/v1/tokens", &operator).await.status, StatusCode::FORBIDDEN);

    // The audit log names the token that acted.
    let audit = app.get("/v1/tenants/acme/audit", ADMIN).await;
    let actions: Vec<(&str, &str)> = audit.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["actor"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actions,
        [("tenant.create", "bootstrap-admin"), ("tenant.activate", "onboarding"), ("tenant.plan", "operator-bot")]
    );
    // ...and its id, which a name could be mistaken for; the control plane's own actors have none.
    let operator_id: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM api_tokens WHERE name = 'operator-bot'").fetch_one(&app.pool).await.unwrap();
    let ids: Vec<Value> = audit.body["items"].as_array().unwrap().iter().map(|e| e["token_id"].clone()).collect();
    assert_eq!(ids, [Value::Null, Value::Null, json!(operator_id)]);
}

#[sqlx::test(migrator = "db::MIGRATOR")]
async fn tokens_are_shown_once_and_can_be_revoked(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let body = json!({ "name": "ci", "role": "viewer" });
    let created = app.send(Method::POST, "/v1/tokens", ADMIN, "tok", body.clone()).await;
    assert_eq!(created.status, StatusCode::CREATED);
    let secret = created.body["token"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("indigo_"));
    let replay = app.send(Method::POST, "/v1/tokens", ADMIN, "tok", body).await;
    assert_eq!(replay.body["id"], created.body["id"]);
    assert!(!replay.body.to_string().contains(&secret), "a replay must not reveal the secret");
    assert_eq!(app.count("SELECT count(*) FROM idempotency_keys WHERE response::text LIKE '%indigo_%'").await, 0);

    let listed = app.get("/v1/tokens", ADMIN).await;
    assert_eq!(listed.body.as_array().unwrap().len(), 1);
    assert!(!listed.body.to_string().contains(&secret));

    assert_eq!(app.get("/v1/tenants", &secret).await.status, StatusCode::OK);
    let me = app.get("/v1/whoami", &secret).await;
    assert_eq!((me.body["name"].as_str(), me.body["role"].as_str()), (Some("ci"), Some("viewer")));
    let id = created.body["id"].as_str().unwrap();
    let revoked = app.send(Method::DELETE, &format!("/v1/tokens/{id}"), ADMIN, "revoke", json!(null)).await;
    assert_eq!(revoked.status, StatusCode::OK);
    assert!(revoked.body["revoked_at"].is_string());
    assert_eq!(app.get("/v1/tenants", &secret).await.status, StatusCode::UNAUTHORIZED);

    let bad_role = app.send(Method::POST, "/v1/tokens", ADMIN, "tok2", json!({ "name": "x", "role": "root" })).await;
    assert_eq!((bad_role.status, bad_role.code()), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"));
    let unknown =
        app.send(Method::DELETE, &format!("/v1/tokens/{}", uuid::Uuid::nil()), ADMIN, "revoke2", json!(null)).await;
    assert_eq!((unknown.status, unknown.code()), (StatusCode::NOT_FOUND, "not_found"));
}

/// Token names are the audit log's identities: unique, and never a system actor's.
#[sqlx::test(migrator = "db::MIGRATOR")]
async fn token_names_are_unique_and_system_names_reserved(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let first = app.send(Method::POST, "/v1/tokens", ADMIN, "n1", json!({ "name": "deploy", "role": "viewer" })).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let twin = app.send(Method::POST, "/v1/tokens", ADMIN, "n2", json!({ "name": "Deploy", "role": "admin" })).await;
    assert_eq!((twin.status, twin.code()), (StatusCode::CONFLICT, "token_name_taken"));
    for system in ["reconciler", "bootstrap-admin", "Onboarding"] {
        let body = json!({ "name": system, "role": "admin" });
        let reply = app.send(Method::POST, "/v1/tokens", ADMIN, &format!("sys-{system}"), body).await;
        assert_eq!((reply.status, reply.code()), (StatusCode::UNPROCESSABLE_ENTITY, "reserved_name"), "{system}");
    }
    assert_eq!(app.count("SELECT count(*) FROM api_tokens").await, 1);
}

/// An idempotency key is its caller's: another caller's same key and body is a
/// request of its own, answered for that caller and audited to it.
#[sqlx::test(migrator = "db::MIGRATOR")]
async fn idempotency_keys_belong_to_their_caller(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.create("acme", "starter").await;
    let (alice, bob) = (app.token("operator").await, app.token("admin").await);
    let delta = json!({ "name": "D", "slug": "delta", "owner_email": "d@d.example", "plan": "starter" });
    let first = app.send(Method::POST, "/v1/tenants", &alice, "shared-key", delta.clone()).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    let other = app.send(Method::POST, "/v1/tenants", &bob, "shared-key", delta).await;
    assert!(other.headers.get("idempotent-replayed").is_none(), "not the first caller's answer");
    assert_eq!((other.status, other.code()), (StatusCode::CONFLICT, "slug_taken"), "bob's own request ran");
    // Claiming a key first blocks no one else's request with it.
    let body = json!({ "name": "B", "slug": "bravo", "owner_email": "b@b.example", "plan": "starter" });
    let charlie = json!({ "name": "C", "slug": "charlie", "owner_email": "c@c.example", "plan": "starter" });
    let squat = app.send(Method::POST, "/v1/tenants", &alice, "bravo-key", charlie).await;
    assert_eq!(squat.status, StatusCode::CREATED);
    let created = app.send(Method::POST, "/v1/tenants", &bob, "bravo-key", body).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);

    // Past the retention a key is new again, and the housekeeping job prunes it.
    sqlx::query("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'")
        .execute(&app.pool)
        .await
        .unwrap();
    let again = app.send(Method::POST, "/v1/tenants/acme/suspend", &alice, "shared-key", json!({})).await;
    assert_eq!(again.status, StatusCode::ACCEPTED, "an expired key is not `idempotency_key_reused`: {}", again.body);
    let kept = app.count("SELECT count(*) FROM idempotency_keys").await;
    assert_eq!(indigo_controlplane::idempotency::prune(&app.pool).await.unwrap() as i64, kept - 1);
    assert_eq!(app.count("SELECT count(*) FROM idempotency_keys").await, 1, "the key claimed again stays");
}

/// A data plane's own identity reaches routing, daily calls and usage intake,
/// and nothing else of the admin API; bound to a tenant, only that tenant's;
/// and it reports single calls, not arbitrary quantities.
#[sqlx::test(migrator = "db::MIGRATOR")]
async fn a_data_plane_identity_reaches_only_what_a_data_plane_needs(pool: PgPool) {
    use indigo_controlplane::identity::mint_dataplane_token;
    let app = TestApp::new(pool).await;
    app.create("acme", "starter").await;
    app.create("bravo", "growth").await;
    let acme: uuid::Uuid = app.get("/v1/tenants/acme", ADMIN).await.body["id"].as_str().unwrap().parse().unwrap();
    let bravo: uuid::Uuid = app.get("/v1/tenants/bravo", ADMIN).await.body["id"].as_str().unwrap().parse().unwrap();
    let pool_plane = mint_dataplane_token(&app.pool, "indigo-dp-pool", None).await.unwrap();
    let acme_plane =
        mint_dataplane_token(&app.pool, "indigo-dp-acme", Some(indigo_core::tenant::TenantId(acme))).await.unwrap();

    // Every other route of the document refuses both, whatever it does.
    let allowed = [("get", "/v1/routing"), ("get", "/v1/usage/daily-calls"), ("post", "/v1/usage/events")];
    let openapi = app.raw(Request::get("/openapi.json").body(Body::empty()).unwrap()).await;
    let mut refused = 0;
    for (path, operations) in openapi.body["paths"].as_object().unwrap() {
        let concrete = path
            .replace("{tenant}", "acme")
            .replace("{id}", &uuid::Uuid::nil().to_string())
            .replace("{name}", "rollup");
        for method in operations.as_object().unwrap().keys() {
            if allowed.contains(&(method.as_str(), path.as_str())) || path.starts_with("/v1/webhooks") {
                continue;
            }
            let method: Method = method.to_uppercase().parse().unwrap();
            let anonymous =
                app.raw(TestApp::builder(method.clone(), &concrete, None).body(Body::empty()).unwrap()).await;
            if anonymous.status != StatusCode::UNAUTHORIZED {
                continue; // a public probe
            }
            for token in [pool_plane.expose(), acme_plane.expose()] {
                let request = TestApp::builder(method.clone(), &concrete, Some(token))
                    .header(header::CONTENT_TYPE, "application/json")
                    .header("idempotency-key", "dp-probe")
                    .body(Body::from("{}"))
                    .unwrap();
                let reply = app.raw(request).await;
                assert_eq!(reply.status, StatusCode::FORBIDDEN, "{method} {path}: {}", reply.body);
                refused += 1;
            }
        }
    }
    assert!(refused > 40, "the probe covered the API ({refused} refusals)");

    let routes = |reply: Reply| -> Vec<String> {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        reply.body["routes"].as_array().unwrap().iter().map(|r| r["slug"].as_str().unwrap().to_owned()).collect()
    };
    let mut all = routes(app.get("/v1/routing", pool_plane.expose()).await);
    all.sort();
    assert_eq!(all, ["acme", "bravo"], "the pool's data plane routes every tenant");
    assert_eq!(routes(app.get("/v1/routing", acme_plane.expose()).await), ["acme"]);
    let calls = app.get("/v1/usage/daily-calls", acme_plane.expose()).await;
    assert!(calls.body.as_array().unwrap().iter().all(|c| c["tenant_id"] == acme.to_string()), "{}", calls.body);

    let now = chrono::Utc::now();
    let event = |tenant: uuid::Uuid, kind: &str, quantity: f64| json!({ "id": uuid::Uuid::now_v7(), "tenant_id": tenant, "event_type": kind, "quantity": quantity, "occurred_at": now });
    let batch = json!({ "events": [
        event(acme, "api_call", 1.0),
        event(bravo, "api_call", 1.0),
        event(acme, "api_call", 1000.0),
        event(acme, "storage_gb", 1.0),
    ] });
    let reply = app.send(Method::POST, "/v1/usage/events", acme_plane.expose(), "u1", batch).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["accepted"], 1);
    let codes: Vec<&str> =
        reply.body["rejected"].as_array().unwrap().iter().map(|r| r["code"].as_str().unwrap()).collect();
    assert_eq!(codes, ["tenant_not_served", "not_permitted", "not_permitted"]);
    // Its own AI calls, priced here from their tokens: not another service's,
    // nor at a quantity of its own choosing.
    let ai_call = |service: &str, quantity: f64| {
        let mut event = event(acme, "ai_request", quantity);
        event["ai"] = json!({ "service": service, "input_tokens": 120, "output_tokens": 80 });
        event
    };
    let batch = json!({ "events": [ai_call("bedrock", 0.0), ai_call("comprehend", 0.0), ai_call("bedrock", 5.0)] });
    let reply = app.send(Method::POST, "/v1/usage/events", acme_plane.expose(), "u-ai", batch).await;
    assert_eq!(reply.body["accepted"], 1, "{}", reply.body);
    let calls = app.get("/v1/usage/daily-calls", acme_plane.expose()).await;
    let credits = calls.body[0]["ai_credits_this_month"].as_f64().unwrap();
    assert!((credits - 0.2).abs() < 1e-9, "200 tokens at 0.001 credits: {}", calls.body);
    let summary = app.get("/v1/usage/summary", ADMIN).await;
    let acme_usage = summary.body.as_array().unwrap().iter().find(|u| u["tenant_id"] == acme.to_string()).unwrap();
    assert!((acme_usage["ai_credits_this_month"].as_f64().unwrap() - 0.2).abs() < 1e-9, "{}", summary.body);
    let reply = app
        .send(
            Method::POST,
            "/v1/usage/events",
            pool_plane.expose(),
            "u2",
            json!({ "events": [event(bravo, "search_query", 1.0)] }),
        )
        .await;
    assert_eq!(reply.body["accepted"], 1, "{}", reply.body);

    // Only the control plane makes these identities; admins see and can revoke them.
    let made =
        app.send(Method::POST, "/v1/tokens", ADMIN, "mk-dp", json!({ "name": "mine", "role": "dataplane" })).await;
    assert_eq!((made.status, made.code()), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_role"));
    let listed = app.get("/v1/tokens", ADMIN).await;
    assert_eq!(listed.body.as_array().unwrap().iter().filter(|t| t["role"] == "dataplane").count(), 2);
    // A new secret for the same identity retires the old one.
    let rotated = mint_dataplane_token(&app.pool, "indigo-dp-pool", None).await.unwrap();
    assert_eq!(app.get("/v1/routing", pool_plane.expose()).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(app.get("/v1/routing", rotated.expose()).await.status, StatusCode::OK);
}

/// Retrying or cancelling a workflow needs the role that starts its kind: an
/// operator cannot carry an admin's offboarding through data deletion.
#[sqlx::test(migrator = "db::MIGRATOR")]
async fn workflows_are_retried_and_cancelled_by_the_role_that_starts_them(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.create("acme", "starter").await;
    let operator = app.token("operator").await;
    let deleted = app.send(Method::DELETE, "/v1/tenants/acme", ADMIN, "del", json!({})).await;
    assert_eq!(deleted.status, StatusCode::ACCEPTED);
    let offboarding: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM workflows WHERE kind = 'offboarding'").fetch_one(&app.pool).await.unwrap();
    for action in ["cancel", "retry"] {
        let path = format!("/v1/workflows/{offboarding}/{action}");
        let reply = app.send(Method::POST, &path, &operator, &format!("op-{action}"), json!(null)).await;
        assert_eq!((reply.status, reply.code()), (StatusCode::FORBIDDEN, "forbidden"), "operator {action}");
        assert!(reply.body["message"].as_str().unwrap().contains("admin"), "{}", reply.body);
    }
    assert_eq!(app.count("SELECT count(*) FROM workflows WHERE cancel_requested").await, 0, "nothing changed");
    let cancelled = app
        .send(Method::POST, &format!("/v1/workflows/{offboarding}/cancel"), ADMIN, "admin-cancel", json!(null))
        .await;
    assert_eq!(cancelled.status, StatusCode::ACCEPTED, "{}", cancelled.body);

    // An onboarding is an operator's to start, so also to cancel.
    let new = json!({ "name": "B", "slug": "bravo", "owner_email": "b@b.example", "plan": "starter" });
    assert_eq!(app.send(Method::POST, "/v1/tenants", &operator, "create-b", new).await.status, StatusCode::CREATED);
    let onboarding: uuid::Uuid =
        sqlx::query_scalar("SELECT w.id FROM workflows w JOIN tenants t ON t.id = w.tenant_id WHERE t.slug = 'bravo'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let reply =
        app.send(Method::POST, &format!("/v1/workflows/{onboarding}/cancel"), &operator, "op-b", json!(null)).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
}

#[sqlx::test(migrator = "db::MIGRATOR")]
async fn plan_change_bumps_generation_and_is_audited(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.create("acme", "starter").await;
    let changed = app.send(Method::PUT, "/v1/tenants/acme/plan", ADMIN, "p1", json!({ "plan": "enterprise" })).await;
    assert_eq!(changed.status, StatusCode::ACCEPTED, "{}", changed.body);
    assert_eq!(changed.body["spec"]["plan"], "enterprise");
    assert_eq!(changed.body["spec"]["isolation"], "silo");
    assert_eq!(changed.body["spec"]["generation"], 3, "1: recorded, 2: activated, 3: the plan");

    // Asking for the plan it already has changes nothing.
    let same = app.send(Method::PUT, "/v1/tenants/acme/plan", ADMIN, "p2", json!({ "plan": "enterprise" })).await;
    assert_eq!(same.status, StatusCode::ACCEPTED);
    assert_eq!(same.body["spec"]["generation"], 3);
    // The tier change it started is still under way (no engine runs here): another plan waits for it.
    let busy = app.send(Method::PUT, "/v1/tenants/acme/plan", ADMIN, "p2b", json!({ "plan": "pro" })).await;
    assert_eq!((busy.status, busy.code()), (StatusCode::CONFLICT, "workflow_in_progress"), "{}", busy.body);

    let unknown = app.send(Method::PUT, "/v1/tenants/acme/plan", ADMIN, "p3", json!({ "plan": "platinum" })).await;
    assert_eq!((unknown.status, unknown.code()), (StatusCode::UNPROCESSABLE_ENTITY, "unknown_plan"));
    let missing = app.send(Method::PUT, "/v1/tenants/nobody/plan", ADMIN, "p4", json!({ "plan": "pro" })).await;
    assert_eq!((missing.status, missing.code()), (StatusCode::NOT_FOUND, "not_found"));

    let audit = app.get("/v1/tenants/acme/audit?kind=tenant.plan", ADMIN).await;
    let entries = audit.body["items"].as_array().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["before"]["spec"]["plan"], "starter");
    assert_eq!(entries[0]["after"]["spec"]["plan"], "enterprise");
    assert!(entries[0]["request_id"].is_string());

    let events = app.get("/v1/tenants/acme/events", ADMIN).await;
    let kinds: Vec<&str> =
        events.body["items"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["TenantRegistered", "WorkflowStarted", "TenantCreated", "WorkflowSucceeded", "PlanChanged", "WorkflowStarted"]
    );
}

#[sqlx::test(migrator = "db::MIGRATOR")]
async fn suspend_resume_delete(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.create("acme", "growth").await;
    let suspended =
        app.send(Method::POST, "/v1/tenants/acme/suspend", ADMIN, "s1", json!({ "reason": "payment overdue" })).await;
    assert_eq!(suspended.status, StatusCode::ACCEPTED);
    assert_eq!(suspended.body["spec"]["lifecycle"], "suspended");

    // An empty body is fine for suspend and resume.
    let resumed = app
        .raw(
            Request::post("/v1/tenants/acme/resume")
                .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
                .header("idempotency-key", "r1")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(resumed.status, StatusCode::ACCEPTED, "{}", resumed.body);
    assert_eq!(resumed.body["spec"]["lifecycle"], "active");
    assert_eq!(resumed.body["spec"]["generation"], 4);

    // DELETE starts offboarding; a second one while it runs starts nothing.
    let deleted = app.send(Method::DELETE, "/v1/tenants/acme", ADMIN, "d1", json!({})).await;
    assert_eq!(deleted.status, StatusCode::ACCEPTED);
    let during = app.send(Method::DELETE, "/v1/tenants/acme", ADMIN, "d2", json!({})).await;
    assert_eq!(during.status, StatusCode::ACCEPTED);
    assert_eq!(during.body, deleted.body, "a second delete is a no-op with the same result");
    app.settle().await;
    let gone = app.get("/v1/tenants/acme", ADMIN).await;
    assert_eq!(gone.body["spec"]["lifecycle"], "deleted");
    assert_eq!(gone.body["status"]["phase"], "deleted");
    let after = app.send(Method::DELETE, "/v1/tenants/acme", ADMIN, "d3", json!({})).await;
    assert_eq!(after.status, StatusCode::ACCEPTED);
    assert_eq!(after.body, gone.body, "deleting a deleted tenant changes nothing");
    assert_eq!(app.count("SELECT count(*) FROM workflows WHERE kind = 'offboarding'").await, 1);

    let reply = app.send(Method::PUT, "/v1/tenants/acme/plan", ADMIN, "p1", json!({ "plan": "pro" })).await;
    assert_eq!((reply.status, reply.code()), (StatusCode::CONFLICT, "tenant_deleted"));
    let reply = app.send(Method::POST, "/v1/tenants/acme/resume", ADMIN, "r2", json!({})).await;
    assert_eq!((reply.status, reply.code()), (StatusCode::CONFLICT, "tenant_deleted"));

    let actions: Vec<String> =
        sqlx::query_scalar("SELECT action FROM audit_log ORDER BY id").fetch_all(&app.pool).await.unwrap();
    assert_eq!(
        actions,
        [
            "tenant.create",
            "tenant.activate",
            "tenant.suspend",
            "tenant.resume",
            "tenant.offboard",
            "tenant.suspend",
            "tenant.delete",
            "tenant.deletion_certificate"
        ]
    );
    let reason: String =
        sqlx::query_scalar("SELECT data->>'reason' FROM events WHERE kind = 'TenantSuspended' ORDER BY id LIMIT 1")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(reason, "payment overdue");
}

#[sqlx::test(migrator = "db::MIGRATOR")]
async fn list_filters_and_paginates(pool: PgPool) {
    let app = TestApp::new(pool).await;
    for (slug, plan) in [
        ("alpha", "starter"),
        ("bravo", "growth"),
        ("charlie", "starter"),
        ("delta", "enterprise"),
        ("echo", "starter"),
    ] {
        assert_eq!(app.create(slug, plan).await.status, StatusCode::CREATED);
    }
    app.send(Method::POST, "/v1/tenants/charlie/suspend", ADMIN, "s", json!({})).await;
    let slugs = |reply: &Reply| -> Vec<String> {
        reply.body["items"].as_array().unwrap().iter().map(|t| t["slug"].as_str().unwrap().to_owned()).collect()
    };

    assert_eq!(slugs(&app.get("/v1/tenants?plan=starter", ADMIN).await), ["alpha", "charlie", "echo"]);
    assert_eq!(slugs(&app.get("/v1/tenants?isolation=silo", ADMIN).await), ["delta"]);
    assert_eq!(slugs(&app.get("/v1/tenants?lifecycle=suspended", ADMIN).await), ["charlie"]);
    assert_eq!(slugs(&app.get("/v1/tenants?plan=starter&lifecycle=active", ADMIN).await), ["alpha", "echo"]);
    assert_eq!(slugs(&app.get("/v1/tenants?phase=ready", ADMIN).await).len(), 5);

    let first = app.get("/v1/tenants?limit=2", ADMIN).await;
    assert_eq!(slugs(&first), ["alpha", "bravo"]);
    let cursor = first.body["next_cursor"].as_str().unwrap().to_owned();
    let second = app.get(&format!("/v1/tenants?limit=2&cursor={cursor}"), ADMIN).await;
    assert_eq!(slugs(&second), ["charlie", "delta"]);
    let third =
        app.get(&format!("/v1/tenants?limit=2&cursor={}", second.body["next_cursor"].as_str().unwrap()), ADMIN).await;
    assert_eq!(slugs(&third), ["echo"]);
    assert!(third.body["next_cursor"].is_null());

    for bad in
        ["limit=0", "limit=501", "limit=ten", "lifecycle=sleeping", "isolation=bridge", "plan=gold", "color=blue"]
    {
        let reply = app.get(&format!("/v1/tenants?{bad}"), ADMIN).await;
        assert_eq!((reply.status, reply.code()), (StatusCode::BAD_REQUEST, "invalid_query"), "{bad}");
    }
}

#[sqlx::test(migrator = "db::MIGRATOR")]
async fn unknown_tenants_routes_and_methods(pool: PgPool) {
    let app = TestApp::new(pool).await;
    for path in [
        "/v1/tenants/nobody",
        "/v1/tenants/NOT_A_SLUG",
        "/v1/tenants/00000000-0000-0000-0000-000000000000",
        "/v1/tenants/nobody/events",
    ] {
        let reply = app.get(path, ADMIN).await;
        assert_eq!((reply.status, reply.code()), (StatusCode::NOT_FOUND, "not_found"), "{path}");
    }
    let reply = app.get("/v1/nothing-here", ADMIN).await;
    assert_eq!((reply.status, reply.code()), (StatusCode::NOT_FOUND, "not_found"));
    let reply = app.send(Method::PATCH, "/v1/tenants", ADMIN, "k", json!({})).await;
    assert_eq!((reply.status, reply.code()), (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"));
    let reply = app.get("/v1/plans/gold", ADMIN).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
}

#[sqlx::test(migrator = "db::MIGRATOR")]
async fn plans_come_from_the_policy_file(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let plans = app.get("/v1/plans", ADMIN).await;
    let names: Vec<&str> = plans.body.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["starter", "growth", "pro", "enterprise"]);
    let enterprise = app.get("/v1/plans/enterprise", ADMIN).await;
    assert_eq!(enterprise.body["isolation"], "silo");
    assert_eq!(enterprise.body["limits"]["products"], -1);
    // A silo plan's own resources, sized in the policy file.
    assert_eq!(enterprise.body["silo"]["acu_max"], 16.0);
    assert_eq!(enterprise.body["silo"]["backup_retention_days"], 14);
    let starter = app.get("/v1/plans/starter", ADMIN).await;
    assert_eq!(starter.body["limits"]["api_calls_per_day"], 1000);
}

#[sqlx::test(migrator = "db::MIGRATOR")]
async fn events_follow_with_a_cursor(pool: PgPool) {
    let app = TestApp::new(pool).await;
    for slug in ["alpha", "bravo", "charlie"] {
        app.create(slug, "starter").await;
    }
    let first = app.get("/v1/events?limit=2&kind=TenantCreated", ADMIN).await;
    assert_eq!(first.body["items"].as_array().unwrap().len(), 2);
    let after = first.body["next_cursor"].as_str().unwrap();
    let rest = app.get(&format!("/v1/events?after={after}&kind=TenantCreated"), ADMIN).await;
    let items = rest.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert!(items[0]["message"].as_str().unwrap().contains("charlie"));
    let only_bravo = app.get("/v1/events?tenant=bravo", ADMIN).await;
    let kinds: Vec<&str> =
        only_bravo.body["items"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["TenantRegistered", "WorkflowStarted", "TenantCreated", "WorkflowSucceeded"]);
    let reply = app.get("/v1/events?after=abc", ADMIN).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
}

#[sqlx::test(migrator = "db::MIGRATOR")]
async fn health_metrics_and_openapi(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let anonymous = |path: &str| Request::get(path).body(Body::empty()).unwrap();
    assert_eq!(app.raw(anonymous("/healthz")).await.status, StatusCode::OK);
    let ready = app.raw(anonymous("/readyz")).await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.body);

    app.get("/v1/tenants", ADMIN).await;
    let metrics = app.raw(anonymous("/metrics")).await;
    let text = metrics.body.as_str().unwrap();
    assert!(text.contains("indigo_admin_requests_total"), "{text}");
    assert!(text.contains("route=\"/v1/tenants\""), "{text}");

    let openapi = app.raw(anonymous("/openapi.json")).await;
    let paths = openapi.body["paths"].as_object().unwrap();
    for path in [
        "/v1/tenants",
        "/v1/tenants/{tenant}",
        "/v1/tenants/{tenant}/plan",
        "/v1/tenants/{tenant}/suspend",
        "/v1/tenants/{tenant}/resume",
        "/v1/tenants/{tenant}/events",
        "/v1/tenants/{tenant}/audit",
        "/v1/plans",
        "/v1/events",
        "/v1/tokens",
        "/healthz",
        "/readyz",
    ] {
        assert!(paths.contains_key(path), "{path} missing from the OpenAPI document");
    }
    assert!(openapi.body["components"]["schemas"]["Tenant"].is_object());
}

/// A control database that cannot be reached is the server's trouble, not the
/// client's mistake, and not a crash either: 503 with a code and a retry hint.
#[sqlx::test(migrator = "db::MIGRATOR")]
async fn an_unreachable_database_answers_503_with_a_retry_hint(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.api_pool.close().await;
    let reply = app.get("/v1/tenants", ADMIN).await;
    assert_eq!(
        (reply.status, reply.body["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("database_unavailable"))
    );
    assert_eq!(reply.headers[header::RETRY_AFTER], "1");
    let created = app
        .send(
            Method::POST,
            "/v1/tenants",
            ADMIN,
            "create-down",
            json!({ "name": "Down", "slug": "down", "owner_email": "o@down.example", "plan": "starter" }),
        )
        .await;
    assert_eq!(created.status, StatusCode::SERVICE_UNAVAILABLE, "{}", created.body);
}

#[sqlx::test(migrator = "db::MIGRATOR")]
async fn audit_log_is_append_only(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.create("acme", "starter").await;
    for statement in ["UPDATE audit_log SET actor = 'someone-else'", "DELETE FROM audit_log", "TRUNCATE audit_log"] {
        let err = sqlx::query(statement).execute(&app.pool).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{statement}: {err}");
    }
    assert_eq!(app.count("SELECT count(*) FROM audit_log").await, 2, "tenant.create and tenant.activate");
}

#[sqlx::test(migrator = "db::MIGRATOR")]
async fn spec_changes_bump_generation_whoever_writes_them(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.create("acme", "starter").await;
    sqlx::query("UPDATE tenants SET phase = 'ready', observed_generation = 2").execute(&app.pool).await.unwrap();
    assert_eq!(app.count("SELECT generation FROM tenants").await, 2, "a status write is not a spec change");
    sqlx::query("UPDATE tenants SET lifecycle = 'suspended'").execute(&app.pool).await.unwrap();
    assert_eq!(app.count("SELECT generation FROM tenants").await, 3);
    let tenant = app.get("/v1/tenants/acme", ADMIN).await;
    assert_eq!(tenant.body["status"]["observed_generation"], 2);
    assert_eq!(tenant.body["spec"]["generation"], 3);
}

/// Every operation the document lists is routed: none falls through to the
/// router's "route not found" or "method not allowed". (Every route is
/// documented by construction: each is added with its documentation, through
/// `utoipa_axum::routes!`.)
#[sqlx::test(migrator = "db::MIGRATOR")]
async fn every_documented_operation_is_routed(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let document = app.get("/openapi.json", ADMIN).await.body;
    let operations = indigo_e2e::documented_operations(&document);
    assert!(operations.len() > 40, "{} operations", operations.len());
    for (method, path) in operations {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let reply = app.send(method.clone(), &path, ADMIN, &format!("routed-{method}-{path}"), json!({})).await;
        assert_ne!(reply.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert_ne!(reply.body["message"], "route not found", "{method} {path} is documented but not routed");
    }
}

/// A viewer's read that takes too long is cancelled at the API's query timeout and
/// answered `503 query_timeout`, or, when the whole read takes too long, given
/// up at the read timeout and answered `503 request_timeout`: it cannot hold a
/// connection and a core for as long as it likes. Light reads go on being
/// answered.
#[sqlx::test(migrator = "db::MIGRATOR")]
async fn a_heavy_read_times_out_instead_of_stalling_the_daemon(pool: PgPool) {
    let by_query = Overrides { api_query_timeout_ms: Some(50), ..Overrides::default() };
    let by_request = Overrides { api_read_timeout_ms: Some(300), ..Overrides::default() };
    let mut apps = Vec::new();
    for (overrides, code) in [(by_query, "query_timeout"), (by_request, "request_timeout")] {
        apps.push((TestApp::with(pool.clone(), overrides).await, code));
    }
    assert_eq!(apps[0].0.create("acme", "starter").await.status, StatusCode::CREATED);
    let viewer = apps[0].0.token("viewer").await;
    for (app, code) in apps {
        // The usage summary, kept waiting for as long as this transaction holds its table.
        let mut blocker = pool.begin().await.unwrap();
        sqlx::query("LOCK TABLE usage_events IN ACCESS EXCLUSIVE MODE").execute(&mut *blocker).await.unwrap();
        let started = std::time::Instant::now();
        let summary = app.get("/v1/usage/summary", &viewer).await;
        assert_eq!((summary.status, summary.code()), (StatusCode::SERVICE_UNAVAILABLE, code), "{}", summary.body);
        assert!(summary.headers.contains_key("retry-after"));
        println!("the heavy read was refused ({code}) after {:?}", started.elapsed());
        let light = app.get("/v1/tenants/acme", &viewer).await;
        assert_eq!(light.status, StatusCode::OK, "light reads are answered: {}", light.body);
        blocker.rollback().await.unwrap();
    }
}

/// The bootstrap token can be revoked, but not while it is the only admin:
/// after that only stored tokens are accepted.
#[sqlx::test(migrator = "db::MIGRATOR")]
async fn the_bootstrap_token_is_revocable_once_another_admin_exists(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let alone = app.send(Method::DELETE, "/v1/tokens/bootstrap", ADMIN, "revoke-1", json!({})).await;
    assert_eq!((alone.status, alone.code()), (StatusCode::CONFLICT, "last_admin"));
    assert_eq!(app.get("/v1/tenants", ADMIN).await.status, StatusCode::OK, "still in force");

    let created =
        app.send(Method::POST, "/v1/tokens", ADMIN, "second", json!({ "name": "second-admin", "role": "admin" })).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let second = created.body["token"].as_str().unwrap().to_owned();
    let revoked = app.send(Method::DELETE, "/v1/tokens/bootstrap", ADMIN, "revoke-2", json!({})).await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.body);
    let refused = app.get("/v1/tenants", ADMIN).await;
    assert_eq!((refused.status, refused.code()), (StatusCode::UNAUTHORIZED, "unauthorized"));
    assert_eq!(app.get("/v1/tenants", &second).await.status, StatusCode::OK);
    // Again, by the remaining admin: nothing changes.
    let again = app.send(Method::DELETE, "/v1/tokens/bootstrap", &second, "revoke-3", json!({})).await;
    assert_eq!((again.status, &again.body["revoked_at"]), (StatusCode::OK, &revoked.body["revoked_at"]));
    let audit: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'token.revoke_bootstrap'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(audit, 2, "each revocation call is audited");
}

/// Each token has a request rate of its own: past it, `429 rate_limited`
/// with `Retry-After`, and other tokens are not held back.
#[sqlx::test(migrator = "db::MIGRATOR")]
async fn each_token_is_held_to_its_own_rate(pool: PgPool) {
    let rate = Overrides { api_requests_per_second: Some(5), ..Overrides::default() };
    let app = TestApp::with(pool, rate).await;
    let created =
        app.send(Method::POST, "/v1/tokens", ADMIN, "viewer", json!({ "name": "watcher", "role": "viewer" })).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let viewer = created.body["token"].as_str().unwrap().to_owned();
    let mut refused = None;
    for _ in 0..40 {
        let reply = app.get("/v1/plans", ADMIN).await;
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            refused = Some(reply);
            break;
        }
        assert_eq!(reply.status, StatusCode::OK);
    }
    let refused = refused.expect("40 requests at once is past a burst of 10");
    assert_eq!(refused.code(), "rate_limited");
    assert!(refused.headers.contains_key("retry-after"));
    assert_eq!(app.get("/v1/plans", &viewer).await.status, StatusCode::OK, "another token is not held back");
}

/// A body must be a JSON object, as the documents say: serde alone would read
/// a struct of optional fields from `[]`.
#[sqlx::test(migrator = "db::MIGRATOR")]
async fn a_body_that_is_not_an_object_is_refused(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.create("acme", "starter").await;
    for body in [json!([]), json!(["why"]), json!("why"), json!(7)] {
        let reply = app.send(Method::POST, "/v1/tenants/acme/suspend", ADMIN, &format!("s-{body}"), body.clone()).await;
        assert_eq!((reply.status, reply.code()), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"), "{body}");
    }
    assert_eq!(app.get("/v1/tenants/acme", ADMIN).await.body["spec"]["lifecycle"], "active", "nothing changed");
}

/// A data plane that has the current routing table and says it will wait is
/// answered when the table changes — the one request it sent returns the new
/// version — and, when nothing changes, with a 304 that says it was held.
#[sqlx::test(migrator = "db::MIGRATOR")]
async fn a_waiting_routing_request_is_answered_when_the_table_changes(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.create("acme", "starter").await;
    let table = app.get("/v1/routing", ADMIN).await;
    let etag = table.headers[header::ETAG].to_str().unwrap().to_owned();
    let waiting = |wait: u64| {
        let request = TestApp::builder(Method::GET, "/v1/routing", Some(ADMIN))
            .header(header::IF_NONE_MATCH, &etag)
            .header("prefer", format!("wait={wait}"))
            .body(Body::empty())
            .unwrap();
        app.raw(request)
    };

    let quiet = waiting(1).await;
    assert_eq!(quiet.status, StatusCode::NOT_MODIFIED);
    assert_eq!(quiet.headers["preference-applied"], "wait=1", "held for the second it asked");
    let unasked = app
        .raw(
            TestApp::builder(Method::GET, "/v1/routing", Some(ADMIN))
                .header(header::IF_NONE_MATCH, &etag)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(unasked.status, StatusCode::NOT_MODIFIED);
    assert!(!unasked.headers.contains_key("preference-applied"), "not held unless asked");

    // The change lands while the request waits; no second request is sent.
    let (held, ()) = tokio::join!(waiting(20), async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        app.create("bravo", "starter").await;
    });
    assert_eq!(held.status, StatusCode::OK, "{}", held.body);
    let version = held.body["version"].as_i64().unwrap();
    assert!(version > table.body["version"].as_i64().unwrap(), "{}", held.body);
    let slugs: Vec<&str> = held.body["routes"].as_array().unwrap().iter().filter_map(|r| r["slug"].as_str()).collect();
    assert!(slugs.contains(&"bravo"), "{slugs:?}");

    // A stopping server answers waiting requests at once, so that draining them does not hold it up.
    let current = app.get("/v1/routing", ADMIN).await;
    let etag = current.headers[header::ETAG].to_str().unwrap().to_owned();
    let request = TestApp::builder(Method::GET, "/v1/routing", Some(ADMIN))
        .header(header::IF_NONE_MATCH, &etag)
        .header("prefer", "wait=20")
        .body(Body::empty())
        .unwrap();
    let (stopped, ()) = tokio::join!(app.raw(request), async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        app.routing_changes.close();
    });
    assert_eq!(stopped.status, StatusCode::NOT_MODIFIED);
    assert!(!stopped.headers.contains_key("preference-applied"), "cut short, not held for its wait");
}

#[sqlx::test(migrator = "db::MIGRATOR")]
async fn a_tenants_catalogue_cache_hit_rate_is_its_last_days_counts_in_redis(pool: PgPool) {
    use indigo_core::api::CatalogueCacheStats;
    let without = TestApp::new(pool.clone()).await;
    let created = without.create("cache-shop", "growth").await;
    let tenant: indigo_core::tenant::TenantId = serde_json::from_value(created.body["id"].clone()).unwrap();
    let off = without.get("/v1/tenants/cache-shop/catalogue-cache", ADMIN).await;
    assert_eq!(off.status, StatusCode::OK, "{}", off.body);
    assert_eq!(off.body["enabled"], false, "no Redis configured: {}", off.body);

    let url = indigo_e2e::redis_url();
    let app = TestApp::with(pool, Overrides { redis_url: Some(url.clone()), ..Overrides::default() }).await;
    let mut redis = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
    let now = chrono::Utc::now();
    // Inside the day: this hour and five hours ago; outside: two days ago.
    for (hours_ago, hits, misses) in [(0, 90, 10), (5, 60, 40), (48, 1000, 0)] {
        let key = CatalogueCacheStats::counts_key(tenant, now - chrono::Duration::hours(hours_ago));
        let _: () = redis::pipe()
            .hset(&key, "hits", hits)
            .hset(&key, "misses", misses)
            .expire(&key, 600)
            .query_async(&mut redis)
            .await
            .unwrap();
    }
    let stats = app.get(&format!("/v1/tenants/{tenant}/catalogue-cache"), ADMIN).await;
    assert_eq!(stats.status, StatusCode::OK, "{}", stats.body);
    let stats: CatalogueCacheStats = serde_json::from_value(stats.body).unwrap();
    assert_eq!((stats.enabled, stats.hours, stats.hits, stats.misses), (true, 24, 150, 50));
    assert_eq!(stats.hit_rate, Some(0.75));
    assert_eq!(app.get("/v1/tenants/no-such-shop/catalogue-cache", ADMIN).await.status, StatusCode::NOT_FOUND);
}

/// An installation that may run no more silos refuses an upgrade into one, in
/// the preview and in the change, and lets a change that stays in the pool through.
#[sqlx::test(migrator = "db::MIGRATOR")]
async fn an_upgrade_past_the_installations_silo_quota_is_refused(pool: PgPool) {
    let app = TestApp::with(pool, Overrides { max_silos: Some(0), ..Overrides::default() }).await;
    app.create("quota-shop", "starter").await;
    let preview = app.get("/v1/tenants/quota-shop/plan-change?to=enterprise", ADMIN).await;
    assert_eq!(preview.status, StatusCode::OK, "{}", preview.body);
    let codes: Vec<&str> =
        preview.body["refusals"].as_array().unwrap().iter().filter_map(|r| r["code"].as_str()).collect();
    assert_eq!(codes, ["provider_quota"], "{}", preview.body);
    assert!(preview.body["refusals"][0]["message"].as_str().unwrap().contains("runs 0 silos and may run 0"));
    let refused =
        app.send(Method::PUT, "/v1/tenants/quota-shop/plan", ADMIN, "q1", json!({ "plan": "enterprise" })).await;
    assert_eq!((refused.status, refused.code()), (StatusCode::CONFLICT, "provider_quota"), "{}", refused.body);
    assert_eq!(app.get("/v1/tenants/quota-shop", ADMIN).await.body["spec"]["plan"], "starter", "nothing changed");
    let within_the_pool = app.get("/v1/tenants/quota-shop/plan-change?to=growth", ADMIN).await;
    assert_eq!(within_the_pool.body["refusals"], json!([]), "{}", within_the_pool.body);
    let changed = app.send(Method::PUT, "/v1/tenants/quota-shop/plan", ADMIN, "q2", json!({ "plan": "growth" })).await;
    assert_eq!(changed.status, StatusCode::ACCEPTED, "{}", changed.body);
}
