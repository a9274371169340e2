//! The storefront's behaviour against real PostgreSQL: catalogue, orders and
//! stock, search, plan limits, and bad input answered with clear 4xx errors.

use crate::support::{SECRET, Store, plan, silo_route, token, token_expiring};
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use indigo_core::plan::Limit;
use indigo_core::tenant::{Lifecycle, TenantId};
use indigo_dataplane::auth::{CallerRole, Claims, sign_with_tenant_key, tenant_key};
use serde_json::json;
use sqlx::Connection;
use std::time::Duration;

#[tokio::test]
async fn catalogue_crud_and_pagination() {
    let (store, ids) = Store::start(&[("shop", plan("pro"))]).await;
    let owner = token(ids[0], CallerRole::Owner);
    let mut created = Vec::new();
    for n in 0..5 {
        created.push(store.product(&owner, &format!("Boot {n}"), 1000 + n, 3).await);
    }
    let first = store.get(&owner, "/v1/products?limit=2").await;
    let names: Vec<&str> =
        first.body["items"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["Boot 4", "Boot 3"]);
    let cursor = first.body["next_cursor"].as_str().unwrap();
    let second = store.get(&owner, &format!("/v1/products?limit=2&cursor={cursor}")).await;
    assert_eq!(second.body["items"][0]["name"], "Boot 2");
    let cheap = store.get(&owner, "/v1/products?max_price=1001").await;
    assert_eq!(cheap.body["items"].as_array().unwrap().len(), 2);

    let id = created[0]["id"].as_str().unwrap();
    let patched = store
        .call(
            Some(&owner),
            Method::PATCH,
            &format!("/v1/products/{id}"),
            Some(json!({ "price_minor": 1500, "tags": ["sale"] })),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.body);
    assert_eq!((patched.body["price_minor"].as_i64(), patched.body["name"].as_str()), (Some(1500), Some("Boot 0")));
    let tagged = store.get(&owner, "/v1/products?tag=sale").await;
    assert_eq!(tagged.body["items"].as_array().unwrap().len(), 1);

    let deleted = store.call(Some(&owner), Method::DELETE, &format!("/v1/products/{id}"), None).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert_eq!(store.get(&owner, &format!("/v1/products/{id}")).await.status, StatusCode::NOT_FOUND);

    // Shoppers read but do not write the catalogue.
    let shopper = token(ids[0], CallerRole::Customer);
    assert_eq!(store.get(&shopper, "/v1/products").await.status, StatusCode::OK);
    let refused =
        store.post(&shopper, "/v1/products", json!({ "name": "x", "price_minor": 1, "currency": "usd" })).await;
    assert_eq!((refused.status, refused.code()), (StatusCode::FORBIDDEN, "forbidden"));
    store.cleanup().await;
}

#[tokio::test]
async fn orders_take_stock_atomically_and_refuse_when_short() {
    let (store, ids) = Store::start(&[("shop", plan("pro"))]).await;
    let owner = token(ids[0], CallerRole::Owner);
    let boot = store.product(&owner, "Boot", 2500, 3).await;
    let sock = store.product(&owner, "Sock", 300, 10).await;
    let customer = store.customer(&owner, "pat@example.com").await;
    let order = store
        .post(
            &owner,
            "/v1/orders",
            json!({ "customer_id": customer["id"], "items": [
                { "product_id": boot["id"], "quantity": 2 },
                { "product_id": sock["id"], "quantity": 4 },
                { "product_id": sock["id"], "quantity": 1 }
            ] }),
        )
        .await;
    assert_eq!(order.status, StatusCode::CREATED, "{}", order.body);
    assert_eq!(order.body["total_minor"], 2 * 2500 + 5 * 300);
    assert_eq!(order.body["items"].as_array().unwrap().len(), 2);
    let boot_id = boot["id"].as_str().unwrap();
    assert_eq!(store.get(&owner, &format!("/v1/products/{boot_id}")).await.body["stock"], 1);

    let short = store
        .post(
            &owner,
            "/v1/orders",
            json!({ "customer_id": customer["id"], "items": [{ "product_id": boot_id, "quantity": 2 }] }),
        )
        .await;
    assert_eq!((short.status, short.code()), (StatusCode::CONFLICT, "insufficient_stock"));
    assert_eq!(
        store.get(&owner, &format!("/v1/products/{boot_id}")).await.body["stock"],
        1,
        "a refused order takes nothing"
    );

    // Ten buyers race for the last boot: exactly one gets it.
    let store = std::sync::Arc::new(store);
    let mut racers = Vec::new();
    for _ in 0..10 {
        let (store, owner, cid, pid) = (store.clone(), owner.clone(), customer["id"].clone(), boot_id.to_owned());
        racers.push(tokio::spawn(async move {
            store
                .post(
                    &owner,
                    "/v1/orders",
                    json!({ "customer_id": cid, "items": [{ "product_id": pid, "quantity": 1 }] }),
                )
                .await
                .status
        }));
    }
    let mut statuses = Vec::new();
    for racer in racers {
        statuses.push(racer.await.unwrap());
    }
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::CREATED).count(), 1, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == StatusCode::CREATED || *s == StatusCode::CONFLICT), "{statuses:?}");
    assert_eq!(store.get(&owner, &format!("/v1/products/{boot_id}")).await.body["stock"], 0);
    let orders = store.get(&owner, &format!("/v1/orders?customer_id={}", customer["id"].as_str().unwrap())).await;
    assert_eq!(orders.body["items"].as_array().unwrap().len(), 2);
    let order_id = order.body["id"].as_str().unwrap();
    let fetched = store.get(&owner, &format!("/v1/orders/{order_id}")).await;
    assert_eq!(fetched.body["items"][0]["unit_price_minor"], 2500);
    std::sync::Arc::into_inner(store).unwrap().cleanup().await;
}

/// An order whose transaction the database aborts to break a deadlock is run
/// again by the data plane: the buyer gets the order, and gets it once.
#[tokio::test]
async fn an_order_aborted_by_a_deadlock_is_replayed_once() {
    use sqlx::ConnectOptions;
    let (store, ids) = Store::start(&[("shop", plan("pro"))]).await;
    let owner = token(ids[0], CallerRole::Owner);
    let boot = store.product(&owner, "Boot", 2500, 5).await;
    let boot_id: uuid::Uuid = boot["id"].as_str().unwrap().parse().unwrap();
    let customer = store.customer(&owner, "pat@example.com").await;
    let options = store.server.admin_options(&store.database);
    let admin = || options.connect();

    // Another session holds the boot's row, lets the order queue behind it,
    // then asks for the customers table the order has already read. Its own
    // deadlock check is put off, so the order's backend is the one to break
    // the cycle.
    let mut other = admin().await.unwrap();
    sqlx::raw_sql("SET deadlock_timeout = '10min'; BEGIN").execute(&mut other).await.unwrap();
    sqlx::query("SELECT 1 FROM products WHERE id = $1 FOR UPDATE").bind(boot_id).execute(&mut other).await.unwrap();
    let order = store.post(
        &owner,
        "/v1/orders",
        json!({ "customer_id": customer["id"], "items": [{ "product_id": boot_id, "quantity": 1 }] }),
    );
    let deadlock = async {
        let mut watcher = admin().await.unwrap();
        let queued = "SELECT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_stat_activity a USING (pid)
                                     WHERE NOT l.granted AND a.datname = current_database())";
        for _ in 0..500 {
            if sqlx::query_scalar::<_, bool>(queued).fetch_one(&mut watcher).await.unwrap() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        // Granted once the order's transaction is aborted; its replay then
        // waits for this commit.
        sqlx::raw_sql("LOCK TABLE customers IN ACCESS EXCLUSIVE MODE; COMMIT").execute(&mut other).await.unwrap();
        watcher
    };
    let (reply, mut watcher) = tokio::join!(order, deadlock);
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);

    let deadlocks = "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()";
    let mut seen = 0;
    for _ in 0..100 {
        seen = sqlx::query_scalar::<_, i64>(deadlocks).fetch_one(&mut watcher).await.unwrap();
        if seen > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(seen, 1, "the order's first transaction was a deadlock's victim");
    assert_eq!(store.get(&owner, &format!("/v1/products/{boot_id}")).await.body["stock"], 4);
    let orders = store.get(&owner, "/v1/orders").await;
    assert_eq!(orders.body["items"].as_array().unwrap().len(), 1, "{}", orders.body);
    sqlx::Connection::close(watcher).await.unwrap();
    sqlx::Connection::close(other).await.unwrap();
    store.cleanup().await;
}

#[tokio::test]
async fn search_ranks_by_relevance() {
    let (store, ids) = Store::start(&[("shop", plan("growth"))]).await;
    let owner = token(ids[0], CallerRole::Owner);
    store
        .post(&owner, "/v1/products", json!({ "name": "Trail running shoe", "price_minor": 9000, "currency": "usd", "stock": 4, "category": "shoes" }))
        .await;
    store
        .post(&owner, "/v1/products", json!({ "name": "Wool sock", "description": "goes well with a running shoe", "price_minor": 900, "currency": "usd" }))
        .await;
    store.post(&owner, "/v1/products", json!({ "name": "Hat", "price_minor": 2000, "currency": "usd" })).await;
    store
        .post(
            &owner,
            "/v1/products",
            json!({ "name": "Running shoe (draft)", "price_minor": 1, "currency": "usd", "status": "draft" }),
        )
        .await;
    let hits = store.get(&owner, "/v1/search?q=running%20shoe").await;
    assert_eq!(hits.status, StatusCode::OK, "{}", hits.body);
    let names: Vec<&str> = hits.body["items"].as_array().unwrap().iter().map(|h| h["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["Trail running shoe", "Wool sock"], "title matches rank first; drafts are hidden");
    let empty = store.get(&owner, "/v1/search?q=").await;
    assert_eq!((empty.status, empty.code()), (StatusCode::BAD_REQUEST, "invalid_query"));
    store.cleanup().await;
}

#[tokio::test]
async fn plan_limits_suspension_and_unknown_tenants() {
    let mut small = plan("starter");
    small.limits.products = Limit::AtMost(2);
    small.limits.api_calls_per_day = Limit::AtMost(6);
    let mut slow = plan("starter");
    slow.rate_limit.requests_per_second = 1;
    slow.rate_limit.burst = 2;
    let (store, ids) = Store::start(&[("small", small), ("slow", slow), ("paused", plan("pro"))]).await;

    let small = token(ids[0], CallerRole::Owner);
    store.product(&small, "one", 1, 1).await;
    store.product(&small, "two", 1, 1).await;
    let third =
        store.post(&small, "/v1/products", json!({ "name": "three", "price_minor": 1, "currency": "usd" })).await;
    assert_eq!((third.status, third.code()), (StatusCode::FORBIDDEN, "plan_limit"));
    assert_eq!(third.body["limit"], 2);
    for _ in 0..3 {
        assert_eq!(store.get(&small, "/v1/products").await.status, StatusCode::OK);
    }
    let over = store.get(&small, "/v1/products").await;
    assert_eq!((over.status, over.code()), (StatusCode::TOO_MANY_REQUESTS, "daily_limit"));
    let retry: u64 = over.headers[header::RETRY_AFTER].to_str().unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&retry));

    let slow = token(ids[1], CallerRole::Owner);
    assert_eq!(store.get(&slow, "/v1/products").await.status, StatusCode::OK);
    assert_eq!(store.get(&slow, "/v1/products").await.status, StatusCode::OK);
    let limited = store.get(&slow, "/v1/products").await;
    assert_eq!((limited.status, limited.code()), (StatusCode::TOO_MANY_REQUESTS, "rate_limited"));
    assert!(limited.headers.contains_key(header::RETRY_AFTER));

    let mut routes = store.routes.clone();
    routes[2].lifecycle = Lifecycle::Suspended;
    let silo = TenantId::new();
    routes.push(silo_route(silo));
    let unreachable = TenantId::new();
    let nothing_listens = format!("postgres://indigo_app@127.0.0.1:{}/shop", indigo_e2e::free_port().unwrap());
    routes.push(crate::support::route(unreachable, "down-shop", plan("pro"), Some(nothing_listens)));
    store.reroute(routes);
    let down = store.get(&token(unreachable, CallerRole::Owner), "/v1/products").await;
    assert_eq!((down.status, down.code()), (StatusCode::SERVICE_UNAVAILABLE, "database_unavailable"), "{}", down.body);
    assert_eq!(down.headers[header::RETRY_AFTER], "1");
    let suspended = store.get(&token(ids[2], CallerRole::Owner), "/v1/products").await;
    assert_eq!((suspended.status, suspended.code()), (StatusCode::FORBIDDEN, "tenant_suspended"));
    let unplaced = store.get(&token(silo, CallerRole::Owner), "/v1/products").await;
    assert_eq!((unplaced.status, unplaced.code()), (StatusCode::SERVICE_UNAVAILABLE, "tenant_unavailable"));
    let stranger = store.get(&token(TenantId::new(), CallerRole::Owner), "/v1/products").await;
    assert_eq!((stranger.status, stranger.code()), (StatusCode::UNAUTHORIZED, "unauthorized"));
    store.cleanup().await;
}

#[tokio::test]
async fn bad_input_gets_clear_errors_and_changes_nothing() {
    let (store, ids) = Store::start(&[("shop", plan("pro"))]).await;
    let owner = token(ids[0], CallerRole::Owner);
    let product = |body: serde_json::Value| {
        let store = &store;
        let owner = owner.clone();
        async move { store.post(&owner, "/v1/products", body).await }
    };
    let cases = [
        (
            json!({ "name": "x", "price_minor": -1, "currency": "usd" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_price",
        ),
        (
            json!({ "name": "x", "price_minor": 1, "currency": "USD" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_currency",
        ),
        (
            json!({ "name": "x", "price_minor": 1, "currency": "usd", "stock": -3 }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_stock",
        ),
        (json!({ "name": "", "price_minor": 1, "currency": "usd" }), StatusCode::UNPROCESSABLE_ENTITY, "invalid_name"),
        // PostgreSQL stores no NUL character in text: the client's mistake, not a 500.
        (
            json!({ "name": "x", "price_minor": 1, "currency": "usd", "category": "a\u{0}b" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_text",
        ),
        (
            json!({ "name": "x", "price_minor": 1, "currency": "usd", "tenant_id": ids[0] }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            json!({ "name": "x", "price_minor": "free", "currency": "usd" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            json!({ "name": "x", "price_minor": 1, "currency": "usd", "status": "sold" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
    ];
    for (body, status, code) in cases {
        let reply = product(body.clone()).await;
        assert_eq!((reply.status, reply.code()), (status, code), "{body}");
    }
    let customer = store.customer(&owner, "c@example.com").await;
    let order_cases = [
        (json!({ "customer_id": customer["id"], "items": [] }), "invalid_items"),
        (
            json!({ "customer_id": customer["id"], "items": [{ "product_id": uuid::Uuid::new_v4(), "quantity": 0 }] }),
            "invalid_quantity",
        ),
        (
            json!({ "customer_id": customer["id"], "items": [{ "product_id": uuid::Uuid::new_v4(), "quantity": -2 }] }),
            "invalid_quantity",
        ),
        (json!({ "customer_id": "not-a-uuid", "items": [] }), "invalid_body"),
    ];
    for (body, code) in order_cases {
        let reply = store.post(&owner, "/v1/orders", body.clone()).await;
        assert_eq!((reply.status, reply.code()), (StatusCode::UNPROCESSABLE_ENTITY, code), "{body}");
    }
    // A product the order names that does not exist is not found, like any reference.
    let body =
        json!({ "customer_id": customer["id"], "items": [{ "product_id": uuid::Uuid::new_v4(), "quantity": 1 }] });
    let reply = store.post(&owner, "/v1/orders", body).await;
    assert_eq!((reply.status, reply.code()), (StatusCode::NOT_FOUND, "unknown_product"));
    let duplicate = store.post(&owner, "/v1/customers", json!({ "email": "C@example.com", "name": "Again" })).await;
    assert_eq!((duplicate.status, duplicate.code()), (StatusCode::CONFLICT, "email_taken"));

    let malformed = Request::post("/v1/products")
        .header(header::AUTHORIZATION, format!("Bearer {owner}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{\"name\":"))
        .unwrap();
    let reply = store.send(malformed).await;
    assert_eq!((reply.status, reply.code()), (StatusCode::BAD_REQUEST, "malformed_json"));
    let huge = store
        .post(
            &owner,
            "/v1/products",
            json!({ "name": "x", "description": "d".repeat(100_000), "price_minor": 1, "currency": "usd" }),
        )
        .await;
    assert_eq!((huge.status, huge.code()), (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"));
    let bad_id = store.get(&owner, "/v1/products/not-a-uuid").await;
    assert_eq!((bad_id.status, bad_id.code()), (StatusCode::BAD_REQUEST, "invalid_id"));
    let bad_limit = store.get(&owner, "/v1/products?limit=1000").await;
    assert_eq!((bad_limit.status, bad_limit.code()), (StatusCode::BAD_REQUEST, "invalid_query"));

    // Tokens: missing, expired, forged, unsigned.
    let tenant = ids[0];
    let expired = token_expiring(tenant, CallerRole::Owner, chrono::Utc::now().timestamp() - 600);
    let forged = {
        let mut parts: Vec<String> = token(tenant, CallerRole::Owner).split('.').map(str::to_owned).collect();
        parts[2] = "AAAA".repeat(10);
        parts.join(".")
    };
    let unsigned = {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = b64.encode(r#"{"alg":"none","typ":"JWT"}"#);
        let claims = b64
            .encode(json!({ "tenant_id": tenant, "sub": "x", "role": "owner", "exp": 4_000_000_000i64 }).to_string());
        format!("{header}.{claims}.")
    };
    let other_secret = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({ "tenant_id": tenant, "sub": "x", "role": "owner", "exp": 4_000_000_000i64 }),
        &jsonwebtoken::EncodingKey::from_secret(b"not-the-secret"),
    )
    .unwrap();
    // Each tenant's tokens are signed with a key of its own: the holder of
    // another tenant's key cannot sign for this one, naming either tenant's key;
    // nor does the shared secret itself sign tokens.
    let exp = chrono::Utc::now().timestamp() + 600;
    let claims = |tenant_id| Claims { tenant_id, sub: "x".into(), role: CallerRole::Owner, exp };
    let neighbours_key = tenant_key(SECRET, TenantId::new());
    let as_neighbours_key = sign_with_tenant_key(&neighbours_key, &claims(tenant));
    let naming_this_tenant = {
        let header = jsonwebtoken::Header { kid: Some(tenant.to_string()), ..Default::default() };
        jsonwebtoken::encode(&header, &claims(tenant), &jsonwebtoken::EncodingKey::from_secret(&neighbours_key))
            .unwrap()
    };
    let with_the_shared_secret = {
        let header = jsonwebtoken::Header { kid: Some(tenant.to_string()), ..Default::default() };
        jsonwebtoken::encode(&header, &claims(tenant), &jsonwebtoken::EncodingKey::from_secret(SECRET)).unwrap()
    };
    let no_kid = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims(tenant),
        &jsonwebtoken::EncodingKey::from_secret(&tenant_key(SECRET, tenant)),
    )
    .unwrap();
    let own_key = sign_with_tenant_key(&tenant_key(SECRET, tenant), &claims(tenant));
    assert_eq!(store.get(&own_key, "/v1/products").await.status, StatusCode::OK, "the tenant's own key signs for it");
    for (what, bad) in [
        ("expired", expired),
        ("forged", forged),
        ("alg none", unsigned),
        ("other secret", other_secret),
        ("another tenant's key, claiming this tenant", as_neighbours_key),
        ("another tenant's key, named as this tenant's", naming_this_tenant),
        ("the shared secret itself", with_the_shared_secret),
        ("no key named", no_kid),
        ("garbage", "abc".into()),
    ] {
        let reply = store.get(&bad, "/v1/products").await;
        assert_eq!((reply.status, reply.code()), (StatusCode::UNAUTHORIZED, "unauthorized"), "{what}");
    }
    let anonymous = store.call(None, Method::GET, "/v1/products", None).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);

    // Nothing above left a product behind.
    let listed = store.get(&owner, "/v1/products").await;
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 0);
    store.cleanup().await;
}

#[tokio::test]
async fn probes_and_openapi() {
    let (store, _) = Store::start(&[]).await;
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        let reply = store.call(None, Method::GET, path, None).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
    }
    let openapi = store.call(None, Method::GET, "/openapi.json", None).await;
    let paths = openapi.body["paths"].as_object().unwrap();
    for path in ["/v1/products", "/v1/products/{id}", "/v1/search", "/v1/customers", "/v1/orders", "/v1/orders/{id}"] {
        assert!(paths.contains_key(path), "{path} missing");
    }
    store.cleanup().await;
}

#[tokio::test]
async fn the_per_client_limit_follows_the_trusted_forwarded_hop() {
    let (mut store, ids) = Store::start(&[("busy-shop", plan("enterprise"))]).await;
    let owner = token(ids[0], CallerRole::Owner);
    let from = |hops: &str| {
        Request::get("/v1/products")
            .header(header::AUTHORIZATION, format!("Bearer {owner}"))
            .header("x-forwarded-for", hops)
            .body(Body::empty())
            .unwrap()
    };
    store.state.limiter =
        std::sync::Arc::new(indigo_dataplane::limits::Limiter::new(2, std::time::Duration::from_secs(300)));
    // Not trusted: the header is ignored (and in-process there is no socket peer to limit).
    store.router = indigo_dataplane::api::router(store.state.clone());
    for _ in 0..3 {
        assert_eq!(store.send(from("203.0.113.7")).await.status, StatusCode::OK);
    }
    store.state.trust_forwarded_for = true;
    store.router = indigo_dataplane::api::router(store.state.clone());
    // The client may prepend anything; the last hop is what our balancer saw.
    assert_eq!(store.send(from("1.1.1.1, 198.51.100.4")).await.status, StatusCode::OK);
    assert_eq!(store.send(from("2.2.2.2, 198.51.100.4")).await.status, StatusCode::OK);
    let limited = store.send(from("3.3.3.3, 198.51.100.4")).await;
    assert_eq!((limited.status, limited.code()), (StatusCode::TOO_MANY_REQUESTS, "rate_limited"));
    assert_eq!(store.send(from("198.51.100.5")).await.status, StatusCode::OK, "another client is not affected");
    store.cleanup().await;
}

/// Every operation the document lists is routed: none falls through to the
/// router's "no such route" or "method not allowed".
#[tokio::test]
async fn every_documented_operation_is_routed() {
    let (store, ids) = Store::start(&[("routed", plan("pro"))]).await;
    let owner = token(ids[0], CallerRole::Owner);
    let document = store.get(&owner, "/openapi.json").await.body;
    let operations = indigo_e2e::documented_operations(&document);
    assert!(operations.len() >= 12, "{} operations", operations.len());
    for (method, path) in operations {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let reply = store.call(Some(&owner), method.clone(), &path, Some(json!({}))).await;
        assert_ne!(reply.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert_ne!(reply.body["message"], "no such route", "{method} {path} is documented but not routed");
    }
    store.cleanup().await;
}

/// The data plane lends its connections without pinging them first. When the
/// server ends them all (a restart, an administrator), the next request of
/// every kind still answers: its first statement fails on the dead connection
/// before anything ran, and runs again on a new one.
#[tokio::test]
async fn connections_the_server_ended_cost_no_request() {
    let (store, ids) = Store::start(&[("lost", plan("pro"))]).await;
    let owner = token(ids[0], CallerRole::Owner);
    let product = store.product(&owner, "Lantern", 1200, 5).await;
    let product = product["id"].as_str().unwrap().to_owned();
    let customer = store.post(&owner, "/v1/customers", json!({ "email": "l@example.com", "name": "L" })).await;
    assert_eq!(customer.status, StatusCode::CREATED, "{}", customer.body);
    let customer = customer.body["id"].as_str().unwrap().to_owned();
    let order = json!({ "customer_id": customer, "items": [{ "product_id": product, "quantity": 1 }] });
    let requests = async || {
        let catalogue = store.get(&owner, &format!("/v1/products/{product}")).await;
        assert_eq!(catalogue.status, StatusCode::OK, "a catalogue read: {}", catalogue.body);
        let shopper = store.get(&owner, &format!("/v1/customers/{customer}")).await;
        assert_eq!(shopper.status, StatusCode::OK, "a one-message read: {}", shopper.body);
        let search = store.get(&owner, "/v1/search?q=lantern").await;
        assert_eq!(search.status, StatusCode::OK, "a read in a transaction: {}", search.body);
        let placed = store.post(&owner, "/v1/orders", order.clone()).await;
        assert_eq!(placed.status, StatusCode::CREATED, "a write: {}", placed.body);
    };
    requests().await;

    let mut admin = sqlx::PgConnection::connect_with(&store.server.admin_options("postgres")).await.unwrap();
    let ended: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND usename = 'indigo_app'",
    )
    .bind(&store.database)
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert!(ended.len() >= 2, "the catalogue's session and the pool's connection were open: {ended:?}");
    requests().await;
    store.cleanup().await;
}

/// A tenant database's first catalogue read does not wait for a connection
/// to be made: one is opened as the database is first named, and the read
/// binds it (one round trip) rather than opening another.
#[tokio::test]
async fn a_databases_first_catalogue_read_binds_the_session_opened_ahead() {
    let (store, ids) = Store::start(&[("ahead", plan("pro"))]).await;
    let database = store.state.routes.database(&store.app_url).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while database.sessions.counts() != (1, 1) {
        assert!(tokio::time::Instant::now() < deadline, "no session opened ahead: {:?}", database.sessions.counts());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let session = database.sessions.acquire(ids[0]).await.unwrap();
    assert_eq!(session.bound_to(), Some(ids[0]));
    assert_eq!(database.sessions.counts(), (1, 0), "the read took the session opened ahead, and opened none");
    drop(session);
    let owner = token(ids[0], CallerRole::Owner);
    let listed = store.get(&owner, "/v1/products").await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
    assert_eq!(database.sessions.counts(), (1, 1), "still the one session");
    store.cleanup().await;
}
