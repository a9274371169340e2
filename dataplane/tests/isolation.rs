//! Tenant isolation, as the real app role against real PostgreSQL: through
//! every endpoint, at the SQL level, by a randomized probe, and by a catalogue
//! check that every tenant table is bound by forced RLS.

mod support;

use axum::http::{Method, StatusCode};
use indigo_dataplane::auth::CallerRole;
use indigo_dataplane::schema::audit_isolation;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde_json::json;
use support::{Store, plan, token};

#[tokio::test]
async fn every_tenant_table_has_forced_rls_and_the_app_role_cannot_bypass_it() {
    let (store, _) = Store::start(&[]).await;
    let mut conn = store.app_connection().await;
    assert_eq!(audit_isolation(&mut conn).await.unwrap(), []);
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.columns WHERE table_schema = 'public' AND column_name = 'tenant_id' ORDER BY 1",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    // The tables offboarding exports and deletes are all of them.
    let mut known: Vec<&str> = indigo_dataplane::schema::TENANT_TABLES.to_vec();
    known.sort();
    assert_eq!(tables, known);
    let (superuser, bypass): (bool, bool) =
        sqlx::query_as("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert!(!superuser && !bypass);

    // The audit notices a table whose RLS is switched off.
    let mut owner = {
        use sqlx::ConnectOptions;
        store.server.options_as("indigo_owner", &store.database).connect().await.unwrap()
    };
    sqlx::query("ALTER TABLE customers NO FORCE ROW LEVEL SECURITY").execute(&mut owner).await.unwrap();
    let violations = audit_isolation(&mut conn).await.unwrap();
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert_eq!(violations[0].subject, "customers");
    drop((conn, owner));
    store.cleanup().await;
}

#[tokio::test]
async fn sql_level_isolation_for_the_app_role() {
    let (store, ids) = Store::start(&[("alpha", plan("pro")), ("bravo", plan("pro"))]).await;
    let (a, b) = (ids[0], ids[1]);
    let b_product = store.product(&token(b, CallerRole::Owner), "B's secret", 100, 1).await;
    store.product(&token(a, CallerRole::Owner), "A's thing", 100, 1).await;
    let mut conn = store.app_connection().await;

    // No tenant set: nothing visible.
    let visible: i64 = sqlx::query_scalar("SELECT count(*) FROM products").fetch_one(&mut conn).await.unwrap();
    assert_eq!(visible, 0);

    // Under A's context: only A's rows; B's rows can be neither written nor changed.
    use sqlx::Connection;
    let mut tx = conn.begin().await.unwrap();
    sqlx::query("SELECT set_config('app.current_tenant', $1, true)")
        .bind(a.to_string())
        .execute(&mut *tx)
        .await
        .unwrap();
    let names: Vec<String> = sqlx::query_scalar("SELECT name FROM products").fetch_all(&mut *tx).await.unwrap();
    assert_eq!(names, ["A's thing"]);
    let updated = sqlx::query("UPDATE products SET name = 'pwned' WHERE tenant_id = $1")
        .bind(b.0)
        .execute(&mut *tx)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(updated, 0);
    let insert = sqlx::query(
        "INSERT INTO products (tenant_id, id, name, price_minor, currency) VALUES ($1, gen_random_uuid(), 'planted', 1, 'usd')",
    )
    .bind(b.0)
    .execute(&mut *tx)
    .await;
    let err = insert.expect_err("a row for another tenant must be refused");
    assert!(err.to_string().contains("row-level security"), "{err}");
    drop(tx);
    drop(conn);

    let still =
        store.get(&token(b, CallerRole::Owner), &format!("/v1/products/{}", b_product["id"].as_str().unwrap())).await;
    assert_eq!(still.body["name"], "B's secret");
    store.cleanup().await;
}

#[tokio::test]
async fn every_endpoint_hides_other_tenants_ids() {
    let (store, ids) = Store::start(&[("alpha", plan("pro")), ("bravo", plan("pro"))]).await;
    let (a, b) = (token(ids[0], CallerRole::Owner), token(ids[1], CallerRole::Owner));
    let b_product = store.product(&b, "B shoe", 5000, 10).await;
    let b_customer = store.customer(&b, "b@shop.example").await;
    let b_order = store
        .post(
            &b,
            "/v1/orders",
            json!({ "customer_id": b_customer["id"], "items": [{ "product_id": b_product["id"], "quantity": 1 }] }),
        )
        .await;
    assert_eq!(b_order.status, StatusCode::CREATED, "{}", b_order.body);
    let a_customer = store.customer(&a, "a@shop.example").await;

    let (pid, cid, oid) =
        (b_product["id"].as_str().unwrap(), b_customer["id"].as_str().unwrap(), b_order.body["id"].as_str().unwrap());
    for path in [format!("/v1/products/{pid}"), format!("/v1/customers/{cid}"), format!("/v1/orders/{oid}")] {
        let reply = store.get(&a, &path).await;
        assert_eq!((reply.status, reply.code()), (StatusCode::NOT_FOUND, "not_found"), "{path}");
    }
    let patch =
        store.call(Some(&a), Method::PATCH, &format!("/v1/products/{pid}"), Some(json!({ "price_minor": 1 }))).await;
    assert_eq!(patch.status, StatusCode::NOT_FOUND);
    let delete = store.call(Some(&a), Method::DELETE, &format!("/v1/products/{pid}"), None).await;
    assert_eq!(delete.status, StatusCode::NOT_FOUND);
    let order = store
        .post(
            &a,
            "/v1/orders",
            json!({ "customer_id": a_customer["id"], "items": [{ "product_id": pid, "quantity": 1 }] }),
        )
        .await;
    assert_eq!((order.status, order.code()), (StatusCode::UNPROCESSABLE_ENTITY, "unknown_product"));
    let order = store
        .post(&a, "/v1/orders", json!({ "customer_id": cid, "items": [{ "product_id": pid, "quantity": 1 }] }))
        .await;
    assert_eq!((order.status, order.code()), (StatusCode::UNPROCESSABLE_ENTITY, "unknown_customer"));
    for path in ["/v1/products", "/v1/customers", "/v1/orders", "/v1/search?q=shoe"] {
        let reply = store.get(&a, path).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.body);
        let items = reply.body["items"].as_array().unwrap();
        let foreign = [pid, cid, oid];
        assert!(items.iter().all(|i| !foreign.contains(&i["id"].as_str().unwrap())), "{path} leaked: {items:?}");
    }
    // B's data is untouched by A's attempts.
    let product = store.get(&b, &format!("/v1/products/{pid}")).await;
    assert_eq!((product.body["price_minor"].as_i64(), product.body["stock"].as_i64()), (Some(5000), Some(9)));
    store.cleanup().await;
}

/// Many tenants, random ids from all of them on random routes: whatever comes
/// back must belong to the caller's tenant.
#[tokio::test]
async fn randomized_cross_tenant_probe_finds_no_leak() {
    let tenants: Vec<(String, _)> = (0..6).map(|i| (format!("probe-{i}"), plan("pro"))).collect();
    let specs: Vec<(&str, _)> = tenants.iter().map(|(s, p)| (s.as_str(), p.clone())).collect();
    let (store, ids) = Store::start(&specs).await;
    let mut owned: Vec<(usize, &str, String)> = Vec::new();
    for (i, tenant) in ids.iter().enumerate() {
        let t = token(*tenant, CallerRole::Owner);
        for n in 0..3 {
            let product = store.product(&t, &format!("item {i}-{n}"), 100 + n, 50).await;
            owned.push((i, "products", product["id"].as_str().unwrap().to_owned()));
        }
        let customer = store.customer(&t, &format!("c{i}@probe.example")).await;
        let cid = customer["id"].as_str().unwrap().to_owned();
        let order = store
            .post(
                &t,
                "/v1/orders",
                json!({ "customer_id": cid, "items": [{ "product_id": owned.last().unwrap().2, "quantity": 1 }] }),
            )
            .await;
        owned.push((i, "customers", cid));
        owned.push((i, "orders", order.body["id"].as_str().unwrap().to_owned()));
    }
    let mut rng = StdRng::seed_from_u64(0x1d160);
    let mut cross_requests = 0;
    for _ in 0..400 {
        let caller = rng.random_range(0..ids.len());
        let t = token(ids[caller], if rng.random_bool(0.5) { CallerRole::Owner } else { CallerRole::Customer });
        let (owner, kind, id) = owned.choose(&mut rng).unwrap();
        let reply = match rng.random_range(0..4) {
            0 => store.get(&t, &format!("/v1/{kind}/{id}")).await,
            1 => store.get(&t, &format!("/v1/{kind}?limit=100")).await,
            2 => store.get(&t, "/v1/search?q=item").await,
            _ => store.call(Some(&t), Method::PATCH, &format!("/v1/products/{id}"), Some(json!({ "stock": 7 }))).await,
        };
        if *owner != caller {
            cross_requests += 1;
        }
        // Every id in the answer must be one of the caller's.
        let mut found = Vec::new();
        collect_ids(&reply.body, &mut found);
        for seen in found {
            if let Some((holder, _, _)) = owned.iter().find(|(_, _, id)| *id == seen) {
                assert_eq!(*holder, caller, "tenant {caller} saw {seen} of tenant {holder}");
            }
        }
        if *owner != caller && reply.status.is_success() {
            assert!(
                !reply.body.to_string().contains(id.as_str()),
                "tenant {caller} reached {kind} {id} of tenant {owner}"
            );
        }
    }
    assert!(cross_requests > 200, "the probe should mostly cross tenants");
    store.cleanup().await;
}

fn collect_ids(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                if key.ends_with("id")
                    && let Some(s) = v.as_str()
                {
                    out.push(s.to_owned());
                }
                collect_ids(v, out);
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_ids(v, out)),
        _ => {}
    }
}
