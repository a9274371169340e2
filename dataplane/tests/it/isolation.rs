//! Tenant isolation, as the real app role against real PostgreSQL: through
//! every endpoint, at the SQL level, by a randomized probe, and by a catalogue
//! check that every tenant table is bound by forced RLS.

use crate::support::{Store, plan, token, token_for};
use axum::http::{Method, StatusCode};
use indigo_dataplane::auth::CallerRole;
use indigo_tenantdb::schema::audit_isolation;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::sync::Arc;

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
    let mut known: Vec<&str> = indigo_tenantdb::schema::TENANT_TABLES.to_vec();
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
        store.server.owner_options(&store.database).connect().await.unwrap()
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
    assert_eq!((order.status, order.code()), (StatusCode::NOT_FOUND, "unknown_product"));
    let order = store
        .post(&a, "/v1/orders", json!({ "customer_id": cid, "items": [{ "product_id": pid, "quantity": 1 }] }))
        .await;
    assert_eq!((order.status, order.code()), (StatusCode::NOT_FOUND, "unknown_customer"));
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

/// Inside one store, who reaches what: owner and staff every customer and
/// order; a shopper (a `customer` token) its own record and orders only, and
/// orders as nobody else. Every route of the matrix, every role; then the
/// same at the SQL level, where the `shopper_scope` policies hold it alone.
#[tokio::test]
async fn shoppers_reach_only_their_own_customer_record_and_orders() {
    let (store, ids) = Store::start(&[("shop", plan("pro"))]).await;
    let owner = token(ids[0], CallerRole::Owner);
    let staff = token(ids[0], CallerRole::Staff);
    let alice = token_for(ids[0], CallerRole::Customer, "alice");
    let bob = token_for(ids[0], CallerRole::Customer, "bob@idp|42");
    let kettle = store.product(&owner, "Kettle", 2500, 10).await;

    // A shopper registers its own record, once; staff register walk-in customers.
    let alice_id = store.customer(&alice, "alice@shop.example").await["id"].as_str().unwrap().to_owned();
    let again = store.post(&alice, "/v1/customers", json!({ "email": "alice2@shop.example", "name": "A" })).await;
    assert_eq!((again.status, again.code()), (StatusCode::CONFLICT, "customer_exists"));
    let bob_id = store.customer(&bob, "bob@shop.example").await["id"].as_str().unwrap().to_owned();
    let walk_in_id = store.customer(&staff, "walk-in@shop.example").await["id"].as_str().unwrap().to_owned();

    let order = |token: String, customer: String| {
        let store = &store;
        let body = json!({ "customer_id": customer, "items": [{ "product_id": kettle["id"], "quantity": 1 }] });
        async move { store.post(&token, "/v1/orders", body).await }
    };
    let alice_order = order(alice.clone(), alice_id.clone()).await;
    assert_eq!(alice_order.status, StatusCode::CREATED, "{}", alice_order.body);
    for other in [&bob_id, &walk_in_id] {
        let refused = order(alice.clone(), other.clone()).await;
        assert_eq!((refused.status, refused.code()), (StatusCode::FORBIDDEN, "forbidden"), "alice ordering as {other}");
    }
    let bob_order = order(bob.clone(), bob_id.clone()).await;
    let walk_in_order = order(staff.clone(), walk_in_id.clone()).await;
    let owners_order = order(owner.clone(), alice_id.clone()).await;
    let orders = [&alice_order, &bob_order, &walk_in_order, &owners_order].map(|r| {
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        r.body["id"].as_str().unwrap().to_owned()
    });
    let stock = store.get(&owner, &format!("/v1/products/{}", kettle["id"].as_str().unwrap())).await;
    assert_eq!(stock.body["stock"], 10 - 4, "the refused orders took nothing");

    let everyone = [alice_id.clone(), bob_id.clone(), walk_in_id.clone()];
    let matrix = [
        ("owner", &owner, everyone.to_vec(), orders.to_vec()),
        ("staff", &staff, everyone.to_vec(), orders.to_vec()),
        ("alice", &alice, vec![alice_id.clone()], vec![orders[0].clone(), orders[3].clone()]),
        ("bob", &bob, vec![bob_id.clone()], vec![orders[1].clone()]),
    ];
    for (who, token, customers, own_orders) in matrix {
        let ids_of = |reply: &crate::support::Reply| {
            assert_eq!(reply.status, StatusCode::OK, "{who}: {}", reply.body);
            let mut ids: Vec<String> =
                reply.body["items"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap().to_owned()).collect();
            ids.sort();
            ids
        };
        let sorted = |mut ids: Vec<String>| {
            ids.sort();
            ids
        };
        assert_eq!(
            ids_of(&store.get(token, "/v1/customers").await),
            sorted(customers.clone()),
            "{who} lists customers"
        );
        assert_eq!(ids_of(&store.get(token, "/v1/orders").await), sorted(own_orders.clone()), "{who} lists orders");
        let filtered = store.get(token, &format!("/v1/orders?customer_id={bob_id}")).await;
        let bobs: Vec<String> = own_orders.iter().filter(|o| **o == orders[1]).cloned().collect();
        assert_eq!(ids_of(&filtered), bobs, "{who} filters by bob");
        for id in &everyone {
            let status = store.get(token, &format!("/v1/customers/{id}")).await.status;
            let expected = if customers.contains(id) { StatusCode::OK } else { StatusCode::NOT_FOUND };
            assert_eq!(status, expected, "{who} reads customer {id}");
        }
        for id in &orders {
            let status = store.get(token, &format!("/v1/orders/{id}")).await.status;
            let expected = if own_orders.contains(id) { StatusCode::OK } else { StatusCode::NOT_FOUND };
            assert_eq!(status, expected, "{who} reads order {id}");
        }
        // The catalogue: everyone reads and searches, only owner and staff write.
        assert_eq!(store.get(token, "/v1/products").await.status, StatusCode::OK, "{who}");
        assert_eq!(store.get(token, "/v1/search?q=kettle").await.status, StatusCode::OK, "{who}");
        let product = format!("/v1/products/{}", kettle["id"].as_str().unwrap());
        let patched = store.call(Some(token), Method::PATCH, &product, Some(json!({ "stock": 6 }))).await;
        let created =
            store.post(token, "/v1/products", json!({ "name": "x", "price_minor": 1, "currency": "usd" })).await;
        let expected = if who == "owner" || who == "staff" { [200, 201] } else { [403, 403] };
        assert_eq!([patched.status.as_u16(), created.status.as_u16()], expected, "{who} writes the catalogue");
    }

    // A subject that could not be stored is refused at the door.
    for subject in ["", "tab\there", &"x".repeat(256)] {
        let refused = store.get(&token_for(ids[0], CallerRole::Customer, subject), "/v1/orders").await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "subject {subject:?}");
    }

    // The database alone holds the same line, for the app role whatever the handler asks.
    let mut conn = store.app_connection().await;
    let context = |role: &str, subject: &str| {
        format!(
            "SELECT set_config('app.current_tenant', '{}', true), set_config('app.current_role', '{role}', true), \
             set_config('app.current_subject', '{subject}', true)",
            ids[0]
        )
    };
    let count = |sql: &'static str| sqlx::query_scalar::<_, i64>(sql);
    let mut tx = sqlx::Connection::begin(&mut conn).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(context("customer", "alice"))).execute(&mut *tx).await.unwrap();
    assert_eq!(count("SELECT count(*) FROM customers").fetch_one(&mut *tx).await.unwrap(), 1);
    assert_eq!(count("SELECT count(*) FROM orders").fetch_one(&mut *tx).await.unwrap(), 2);
    assert_eq!(count("SELECT count(*) FROM order_items").fetch_one(&mut *tx).await.unwrap(), 2);
    let as_bob = sqlx::query(
        "INSERT INTO orders (tenant_id, id, customer_id, total_minor, currency)
         VALUES (current_setting('app.current_tenant')::uuid, gen_random_uuid(), $1::uuid, 1, 'usd')",
    )
    .bind(&bob_id)
    .execute(&mut *tx)
    .await
    .unwrap_err();
    assert!(as_bob.to_string().contains("row-level security"), "{as_bob}");
    tx.rollback().await.unwrap();
    // A transaction that names no role is a shopper without a record: it sees none.
    let mut tx = sqlx::Connection::begin(&mut conn).await.unwrap();
    sqlx::query("SELECT set_config('app.current_tenant', $1, true)")
        .bind(ids[0].to_string())
        .execute(&mut *tx)
        .await
        .unwrap();
    assert_eq!(count("SELECT count(*) FROM customers").fetch_one(&mut *tx).await.unwrap(), 0);
    assert_eq!(count("SELECT count(*) FROM orders").fetch_one(&mut *tx).await.unwrap(), 0);
    // The kettle and the two products owner and staff added above.
    assert_eq!(
        count("SELECT count(*) FROM products").fetch_one(&mut *tx).await.unwrap(),
        3,
        "the catalogue stays open"
    );
    tx.rollback().await.unwrap();
    drop(conn);
    store.cleanup().await;
}

/// The catalogue's reads run on sessions bound to a tenant, bound again when
/// another tenant's read takes the connection; the transactions set the
/// context themselves. Eight tenants through two connections (one of each),
/// twenty-four callers at once, three thousand requests interleaved, and every
/// answer belongs to its caller's tenant — a connection carries no tenant's
/// context into another tenant's request.
#[tokio::test]
async fn tenants_interleaved_through_two_connections_each_see_only_their_own_rows() {
    let tenants: Vec<(String, _)> = (0..8).map(|i| (format!("pooled-{i}"), plan("pro"))).collect();
    let specs: Vec<(&str, _)> = tenants.iter().map(|(s, p)| (s.as_str(), p.clone())).collect();
    let (store, ids) = Store::start_with_connections(&specs, 2).await;
    let mut products: Vec<(usize, String)> = Vec::new();
    for (i, tenant) in ids.iter().enumerate() {
        let owner = token(*tenant, CallerRole::Owner);
        for n in 0..4 {
            let product = store.product(&owner, &format!("tenant {i} item {n}"), 100 + n, 5).await;
            products.push((i, product["id"].as_str().unwrap().to_owned()));
        }
    }
    let (store, ids, products) = (Arc::new(store), Arc::new(ids), Arc::new(products));
    let callers: Vec<_> = (0..24)
        .map(|caller_seed| {
            let (store, ids, products) = (store.clone(), ids.clone(), products.clone());
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(caller_seed);
                for _ in 0..125 {
                    let caller = rng.random_range(0..ids.len());
                    let role = if rng.random_bool(0.5) { CallerRole::Owner } else { CallerRole::Customer };
                    let t = token(ids[caller], role);
                    let own = format!("tenant {caller} ");
                    if rng.random_bool(0.8) {
                        let (holder, id) = products.choose(&mut rng).unwrap();
                        let reply = store.get(&t, &format!("/v1/products/{id}")).await;
                        if *holder == caller {
                            assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
                            assert!(reply.body["name"].as_str().unwrap().starts_with(&own), "{caller}: {}", reply.body);
                        } else {
                            assert_eq!(
                                reply.status,
                                StatusCode::NOT_FOUND,
                                "tenant {caller} read {id}: {}",
                                reply.body
                            );
                        }
                    } else {
                        // A page (one message) or a search (a transaction).
                        let path = if rng.random_bool(0.5) { "/v1/products?limit=100" } else { "/v1/search?q=item" };
                        let reply = store.get(&t, path).await;
                        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
                        let names: Vec<&str> = reply.body["items"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|p| p["name"].as_str().unwrap())
                            .collect();
                        assert_eq!(names.len(), 4, "tenant {caller}: {path} answers {names:?}");
                        assert!(
                            names.iter().all(|name| name.starts_with(&own)),
                            "tenant {caller}: {path} answers {names:?}"
                        );
                    }
                }
            })
        })
        .collect();
    for caller in callers {
        caller.await.expect("a caller's checks failed");
    }
    let database = store.state.routes.database(&store.app_url).unwrap();
    assert_eq!(
        (database.pool.size(), database.sessions.counts().0),
        (1, 1),
        "every request went through the same two connections: one for transactions, one for the catalogue"
    );
    Arc::into_inner(store).unwrap().cleanup().await;
}

/// A shopper's subject is whatever its identity provider chose, and a filter
/// whatever the client sent; the hot reads write both into their message as
/// literals. Quotes, backslashes and attempts to end the literal reach the
/// database exactly: each shopper reads its own record (its subject matched by
/// policy and filter alike) and no one else's, and each tag finds its product.
#[tokio::test]
async fn subjects_and_filters_reach_the_database_exactly() {
    let (store, ids) = Store::start(&[("quoting", plan("pro"))]).await;
    let owner = token(ids[0], CallerRole::Owner);
    let texts = [
        "o'brien",
        "o'brien\\",
        "back\\slash\\'",
        // Tags are at most 50 characters.
        "'; SET LOCAL app.current_tenant = ''; --",
        "$$ dollar $$ ünïcødé",
    ];
    let mut tagged = Vec::new();
    for tag in texts {
        let body = json!({ "name": format!("tagged {tag}"), "price_minor": 100, "currency": "usd", "tags": [tag] });
        let product = store.post(&owner, "/v1/products", body).await;
        assert_eq!(product.status, StatusCode::CREATED, "{}", product.body);
        tagged.push(product.body["id"].as_str().unwrap().to_owned());
    }
    for (tag, id) in texts.iter().zip(&tagged) {
        let query: String = tag.bytes().map(|b| format!("%{b:02X}")).collect();
        let found = store.get(&owner, &format!("/v1/products?tag={query}")).await;
        assert_eq!(found.status, StatusCode::OK, "{}", found.body);
        let ids: Vec<&str> =
            found.body["items"].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap()).collect();
        assert_eq!(ids, [id.as_str()], "tag {tag:?}");
    }
    let subjects = texts;
    let mut records = Vec::new();
    for (n, subject) in subjects.iter().enumerate() {
        let shopper = token_for(ids[0], CallerRole::Customer, subject);
        let record = store.customer(&shopper, &format!("shopper{n}@quoting.example")).await;
        records.push((shopper, record["id"].as_str().unwrap().to_owned()));
    }
    for (reader, (shopper, _)) in records.iter().enumerate() {
        for (holder, (_, id)) in records.iter().enumerate() {
            let reply = store.get(shopper, &format!("/v1/customers/{id}")).await;
            let expected = if reader == holder { StatusCode::OK } else { StatusCode::NOT_FOUND };
            assert_eq!(
                reply.status, expected,
                "{:?} reads the record of {:?}: {}",
                subjects[reader], subjects[holder], reply.body
            );
        }
    }
    store.cleanup().await;
}
