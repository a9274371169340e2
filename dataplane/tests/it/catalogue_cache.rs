//! The catalogue cache through a real Redis shared by two replicas: a read
//! after an acknowledged write is never stale on either replica, no tenant is
//! ever answered with another's catalogue, and with Redis killed the
//! storefront serves from the database.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use indigo_core::api::CatalogueCacheStats;
use indigo_core::plan::{Limit, Plan};
use indigo_core::tenant::TenantId;
use indigo_dataplane::auth::CallerRole;
use indigo_dataplane::catalogue_cache::CatalogueCache;
use indigo_dataplane::redis_link::RedisLink;
use indigo_e2e::{Process, free_port};
use serde_json::{Value, json};

use crate::support::{Store, plan, token};

/// A Redis of the test's own, so that it can be killed.
fn start_redis(port: u16) -> Process {
    let mut command = std::process::Command::new("redis-server");
    command.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
    let mut redis = Process::spawn(command).expect("redis-server is installed (.ci/run installs it)");
    redis.wait_for_line("Ready to accept connections", Duration::from_secs(10)).unwrap();
    redis
}

/// A replica's cache. It waits longer for Redis than in production, so that a
/// busy test machine does not turn a slow answer into a bypass.
fn cache(url: &str) -> Arc<CatalogueCache> {
    let redis = Arc::new(RedisLink::new(url).unwrap());
    Arc::new(CatalogueCache::new(redis, Duration::from_secs(60)).answer_within(Duration::from_secs(2)))
}

/// A plan that lets a test's thousands of requests through.
fn busy_plan() -> Plan {
    let mut plan = plan("growth");
    plan.rate_limit.requests_per_second = 1_000_000;
    plan.rate_limit.burst = 1_000_000;
    plan.limits.api_calls_per_day = Limit::Unlimited;
    plan
}

fn price(reply: &Value) -> i64 {
    reply["price_minor"].as_i64().unwrap_or_else(|| panic!("no price in {reply}"))
}

async fn hits_and_misses(url: &str, tenant: TenantId) -> (u64, u64) {
    let mut connection = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
    let key = CatalogueCacheStats::counts_key(tenant, chrono::Utc::now());
    let (hits, misses): (Option<u64>, Option<u64>) =
        redis::cmd("HMGET").arg(&key).arg("hits").arg("misses").query_async(&mut connection).await.unwrap();
    (hits.unwrap_or(0), misses.unwrap_or(0))
}

/// Rounds of each reader.
const READS: usize = 200;

#[tokio::test]
async fn two_replicas_never_serve_a_read_older_than_an_acknowledged_write_nor_another_tenants_catalogue() {
    let port = free_port().unwrap();
    let url = format!("redis://127.0.0.1:{port}");
    let _redis = start_redis(port);
    let (store, ids) = Store::start(&[("cache-a", busy_plan()), ("cache-b", busy_plan())]).await;
    let (cache_one, cache_two) = (cache(&url), cache(&url));
    let replicas = [
        store.replica(|state| state.catalogue_cache = Some(cache_one.clone())),
        store.replica(|state| state.catalogue_cache = Some(cache_two.clone())),
    ];
    let tokens = [token(ids[0], CallerRole::Staff), token(ids[1], CallerRole::Staff)];

    // The same names in both tenants, so that a search answered from the wrong
    // tenant's entry would look plausible.
    let mut products = Vec::new();
    for t in &tokens {
        products.push(store.product(t, "Desk lamp", 1000, 100).await["id"].as_str().unwrap().to_owned());
        store.product(t, "Floor lamp", 2000, 100).await;
    }

    // One writer moves each tenant's lamp price up, through either replica;
    // readers of both tenants check every answer against the last price
    // acknowledged before they asked.
    let acknowledged = [Arc::new(AtomicI64::new(1000)), Arc::new(AtomicI64::new(1000))];
    let replicas = Arc::new(replicas);
    let writer = {
        let (replicas, tokens, products, acknowledged) =
            (replicas.clone(), tokens.clone(), products.clone(), acknowledged.clone());
        tokio::spawn(async move {
            for n in 1..=150i64 {
                let t = (n % 2) as usize;
                let path = format!("/v1/products/{}", products[t]);
                let replica = &replicas[(n / 2 % 2) as usize];
                let new_price = 1000 + n;
                let reply = replica
                    .call(Some(&tokens[t]), Method::PATCH, &path, Some(json!({ "price_minor": new_price })))
                    .await;
                assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
                acknowledged[t].store(new_price, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let readers: Vec<_> = (0..4usize)
        .map(|reader| {
            let (replicas, tokens, products, acknowledged) =
                (replicas.clone(), tokens.clone(), products.clone(), acknowledged.clone());
            tokio::spawn(async move {
                let mut reads = 0;
                for n in 0..READS {
                    let t = (reader + n) % 2;
                    let other = 1 - t;
                    let replica = &replicas[(reader / 2 + n) % 2];
                    let at_least = acknowledged[t].load(Ordering::SeqCst);
                    let one = replica.get(&tokens[t], &format!("/v1/products/{}", products[t])).await;
                    assert_eq!(one.status, StatusCode::OK, "{}", one.body);
                    assert!(price(&one.body) >= at_least, "stale: {} after {at_least} was acknowledged", one.body);
                    let page = replica.get(&tokens[t], "/v1/products?limit=10").await;
                    let search = replica.get(&tokens[t], "/v1/search?q=lamp").await;
                    for listing in [&page.body, &search.body] {
                        let items = listing["items"].as_array().unwrap_or_else(|| panic!("no items in {listing}"));
                        assert_eq!(items.len(), 2, "each tenant has two lamps: {listing}");
                        let lamp = items.iter().find(|p| p["id"] == products[t].as_str());
                        let lamp = lamp.unwrap_or_else(|| panic!("the tenant's own lamp is missing: {listing}"));
                        assert!(price(lamp) >= at_least, "stale listing: {listing} after {at_least}");
                        assert!(
                            items.iter().all(|p| p["id"] != products[other].as_str()),
                            "another tenant's: {listing}"
                        );
                    }
                    // The other tenant's product id, asked with this tenant's token.
                    let foreign = replica.get(&tokens[t], &format!("/v1/products/{}", products[other])).await;
                    assert_eq!(foreign.status, StatusCode::NOT_FOUND, "{}", foreign.body);
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    writer.await.unwrap();
    for reader in readers {
        assert_eq!(reader.await.unwrap(), READS);
    }

    // A new order takes stock: the next read shows it, on either replica.
    let before = replicas[0].get(&tokens[0], &format!("/v1/products/{}", products[0])).await;
    assert_eq!(before.body["stock"], 100);
    let customer = store.customer(&tokens[0], "pat@example.com").await;
    let order = json!({ "customer_id": customer["id"], "items": [{ "product_id": products[0], "quantity": 3 }] });
    let placed = replicas[1].post(&tokens[0], "/v1/orders", order).await;
    assert_eq!(placed.status, StatusCode::CREATED, "{}", placed.body);
    let after = replicas[0].get(&tokens[0], &format!("/v1/products/{}", products[0])).await;
    assert_eq!(after.body["stock"], 97, "{}", after.body);

    // The cache served: each tenant's hits and misses reach Redis's hourly counts.
    cache_one.settle().await;
    cache_two.settle().await;
    for tenant in &ids {
        let (hits, misses) = hits_and_misses(&url, *tenant).await;
        assert!(hits > 0 && misses > 0, "hits {hits}, misses {misses}");
        // Four readers, half their rounds on each tenant, four catalogue reads a round; a read
        // that found the replica connecting to Redis went to the database uncounted.
        let lookups = 4 * READS as u64 / 2 * 4;
        assert!((lookups * 9 / 10..=lookups + 2).contains(&(hits + misses)), "{hits} + {misses} of {lookups}");
    }
    store.cleanup().await;
}

#[tokio::test]
async fn with_redis_killed_the_storefront_serves_from_the_database_and_caches_again_once_it_is_back() {
    let port = free_port().unwrap();
    let url = format!("redis://127.0.0.1:{port}");
    let mut redis = start_redis(port);
    let (store, ids) = Store::start(&[("cache-kill", busy_plan())]).await;
    let cache = cache(&url);
    let replica = store.replica(|state| state.catalogue_cache = Some(cache.clone()));
    let other_replica = store.replica(|state| state.catalogue_cache = Some(self::cache(&url)));
    let staff = token(ids[0], CallerRole::Staff);
    let id = store.product(&staff, "Kettle", 500, 10).await["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/products/{id}");
    assert_eq!(price(&replica.get(&staff, &path).await.body), 500);
    cache.settle().await;
    assert_eq!(hits_and_misses(&url, ids[0]).await, (0, 1), "the first read misses");
    // The miss's answer is stored without the read waiting for it.
    await_hit(&cache, &replica, &staff, &path, &url, ids[0]).await;

    redis.signal_and_wait("KILL", Duration::from_secs(5)).unwrap();
    for n in 1..=20 {
        let write = replica.call(Some(&staff), Method::PATCH, &path, Some(json!({ "price_minor": 500 + n }))).await;
        assert_eq!(write.status, StatusCode::OK, "{}", write.body);
        for serving in [&replica, &other_replica] {
            let read = serving.get(&staff, &path).await;
            assert_eq!(read.status, StatusCode::OK, "{}", read.body);
            assert_eq!(price(&read.body), 500 + n, "served from the database while Redis is away");
        }
    }

    // Back (empty, as a restarted Redis may be): the owed invalidation is made
    // and the cache is used again.
    let _redis = start_redis(port);
    await_hit(&cache, &replica, &staff, &path, &url, ids[0]).await;
    let write = replica.call(Some(&staff), Method::PATCH, &path, Some(json!({ "price_minor": 999 }))).await;
    assert_eq!(write.status, StatusCode::OK);
    assert_eq!(price(&other_replica.get(&staff, &path).await.body), 999);
    store.cleanup().await;
}

#[tokio::test]
async fn a_change_the_control_plane_makes_is_served_once_the_tenant_is_routed_anew() {
    let url = indigo_e2e::redis_url();
    let (store, ids) = Store::start(&[("cache-seeded", busy_plan())]).await;
    let cache = cache(&url);
    let replica = store.replica(|state| state.catalogue_cache = Some(cache.clone()));
    let staff = token(ids[0], CallerRole::Staff);
    let id = store.product(&staff, "Sample product", 100, 1).await["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/products/{id}");
    await_hit(&cache, &replica, &staff, &path, &url, ids[0]).await;

    // As onboarding's seed step or a move does: rows changed in the database,
    // as the schema owner, not through a storefront write.
    use sqlx::ConnectOptions;
    let mut owner = store.server.owner_options(&store.database).connect().await.unwrap();
    sqlx::query("SELECT set_config('app.current_tenant', $1, false)")
        .bind(ids[0].to_string())
        .execute(&mut owner)
        .await
        .unwrap();
    sqlx::query("UPDATE products SET price_minor = 777").execute(&mut owner).await.unwrap();
    assert_eq!(price(&replica.get(&staff, &path).await.body), 100, "the cache has not been told yet");
    // Such workflows end with a new routing version (activation, the switch).
    let mut routes = store.routes.clone();
    routes[0].routing_version += 1;
    store.reroute(routes);
    assert_eq!(price(&replica.get(&staff, &path).await.body), 777);
    store.cleanup().await;
}

/// Reads `path` through `replica` until its cache has counted a hit.
async fn await_hit(cache: &CatalogueCache, replica: &Store, token: &str, path: &str, url: &str, tenant: TenantId) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let read = replica.get(token, path).await;
        assert_eq!(read.status, StatusCode::OK, "{}", read.body);
        cache.settle().await;
        if hits_and_misses(url, tenant).await.0 > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "the cache never answered a read");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
