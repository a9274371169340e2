//! Storefront benchmark: what does tenancy cost a read, and what does a write cost?
//!
//! In one process and one run, against the same database and rows, it measures
//! requests/s and p50/p99 latency of
//!   (a) a bare axum + sqlx handler reading one product by primary key, with no
//!       tenancy (a superuser connection; the tenant id is just a parameter),
//!       through sqlx's pool as it comes;
//!   (b) the real data plane `GET /v1/products/{id}`: JWT verification, routing,
//!       limits, the read with the tenant context under RLS, and metering;
//!   (c) the same as (b) with metering off, to price metering alone;
//!   (d) the same as (b) with the tenant's rate shared through Redis, to price
//!       fleet-wide limits (REDIS_URL, default redis://127.0.0.1:6379);
//!   (e) the same as (b) with usage kept in memory only, to price the journal;
//!   (f) the data plane `POST /v1/orders`: an order of one item, by the store's backend;
//!   (g) the same as (b) with the catalogue cached in Redis;
//!   (h) the bare handler of (a) on connections lent as the data plane lends
//!       its catalogue sessions, without sqlx's pings: one round trip per read;
//! then PostgreSQL alone (`pgbench -S`, same clients and time), and the ways of
//! carrying the tenant context at the SQL level, without HTTP;
//! and writes `benchmarks/dataplane.md`.
//!
//! Run: `cargo bench -p indigo-dataplane --bench storefront` (PostgreSQL on
//! DATABASE_URL's server, default 127.0.0.1:5432). Env: BENCH_SECONDS (default 10),
//! BENCH_CONCURRENCY (default 32), BENCH_CASES (for profiling one path: only the
//! cases of these letters, e.g. `bh`, their rates printed and no report written).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use indigo_core::api::{CatalogueCacheStats, Route, RoutingTable, UsageBatch, UsageBatchResult};
use indigo_core::plan::{Limit, PlanCatalog};
use indigo_core::tenant::{Lifecycle, Slug, TenantId};
use indigo_dataplane::api::{self, AppState};
use indigo_dataplane::auth::{CallerRole, Claims, Verifier, sign_hs256};
use indigo_dataplane::catalogue_cache::{self, CatalogueCache};
use indigo_dataplane::limits::Limiter;
use indigo_dataplane::limits::fleet::FleetRates;
use indigo_dataplane::metering::{Meter, UsageSink};
use indigo_dataplane::redis_link::RedisLink;
use indigo_dataplane::routing::Routes;
use indigo_dataplane::tenant_sessions::TenantSessions;
use indigo_tenantdb::schema::TenantServer;
use sqlx::postgres::PgPoolOptions;
use sqlx::{ConnectOptions, Connection, PgPool};
use uuid::Uuid;

const PRODUCTS: usize = 10_000;
const CUSTOMERS: i32 = 1_000;
const POOL_SIZE: u32 = 16;
const SECRET: &[u8] = b"bench-secret-of-at-least-32-bytes";

#[derive(serde::Serialize, sqlx::FromRow)]
struct Product {
    id: Uuid,
    name: String,
    description: String,
    price_minor: i64,
    currency: String,
    category: String,
    tags: Vec<String>,
    status: String,
    stock: i32,
    created_at: chrono::DateTime<chrono::Utc>,
    updated_at: chrono::DateTime<chrono::Utc>,
}

const BARE_READ: &str =
    "SELECT id, name, description, price_minor, currency, category, tags, status, stock, created_at, updated_at
     FROM products WHERE tenant_id = $1 AND id = $2";

/// (a): the bare read through sqlx's pool as it comes, which pings a
/// connection before lending it and again when it comes back.
async fn bare_product(State((pool, tenant)): State<(PgPool, Uuid)>, Path(id): Path<Uuid>) -> Json<Option<Product>> {
    let product = sqlx::query_as(BARE_READ).bind(tenant).bind(id).fetch_optional(&pool).await.unwrap();
    Json(product)
}

/// (h): the same read, one round trip: connections lent as the data plane
/// lends its catalogue sessions (no ping); still no tenancy.
async fn bare_product_unpinged(
    State((sessions, tenant)): State<(Arc<TenantSessions>, Uuid)>,
    Path(id): Path<Uuid>,
) -> Json<Option<Product>> {
    let mut session = sessions.acquire(TenantId(tenant)).await.unwrap();
    let product = sqlx::query_as(BARE_READ).bind(tenant).bind(id).fetch_optional(session.connection()).await.unwrap();
    Json(product)
}

struct Outcome {
    name: &'static str,
    latencies: Vec<Duration>,
    failures: usize,
    seconds: f64,
}

impl Outcome {
    fn rps(&self) -> f64 {
        self.latencies.len() as f64 / self.seconds
    }

    /// The latency below which a share `q` of the requests were answered.
    fn quantile(&self, q: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        sorted
            .get(((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    }
}

/// A case's letter: `b` of "(b) data plane …".
fn letter(name: &str) -> char {
    name.chars().nth(1).expect("a case named \"(x) …\"")
}

/// Rounds each case's time is split into, the cases taking turns, so that
/// the machine's drift over the run (other work on the host) falls on every
/// case alike instead of on whichever ran at the time.
const ROUNDS: u64 = 5;

/// Requests to `base` for `seconds`: GET `{base}{product id}`, or with
/// `order_for`, POST `base` an order of one product for one of those customers.
#[allow(clippy::too_many_arguments)]
async fn load(
    base: String,
    token: Option<String>,
    order_for: Option<Arc<Vec<Uuid>>>,
    ids: Arc<Vec<Uuid>>,
    warm_up: Duration,
    seconds: f64,
    concurrency: usize,
    outcome: &mut Outcome,
) {
    let client = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build().unwrap();
    // Made once: the load generator shares the machine, so its own work per request would count against the case.
    let token = token.map(|token| reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).unwrap());
    // Warm up the connection pools on both sides.
    let warm_until = Instant::now() + warm_up;
    let run = |until: Instant, record: bool| {
        let (client, base, token, ids, order_for) =
            (client.clone(), base.clone(), token.clone(), ids.clone(), order_for.clone());
        async move {
            let mut tasks = Vec::new();
            for worker in 0..concurrency {
                let (client, base, token, ids, order_for) =
                    (client.clone(), base.clone(), token.clone(), ids.clone(), order_for.clone());
                tasks.push(tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    let mut failures = 0;
                    let mut n = worker * 7919;
                    while Instant::now() < until {
                        n = (n + 104_729) % ids.len();
                        let mut request = match &order_for {
                            Some(customers) => client.post(&base).header("content-type", "application/json").body(
                                serde_json::json!({
                                    "customer_id": customers[n % customers.len()],
                                    "items": [{ "product_id": ids[n], "quantity": 1 }],
                                })
                                .to_string(),
                            ),
                            None => client.get(format!("{base}{}", ids[n])),
                        };
                        if let Some(token) = &token {
                            request = request.header(reqwest::header::AUTHORIZATION, token.clone());
                        }
                        let started = Instant::now();
                        match request.send().await {
                            Ok(r) if r.status().is_success() => {
                                let _ = r.bytes().await;
                                if record {
                                    latencies.push(started.elapsed());
                                }
                            }
                            failed => {
                                // A worker's first failure says why, so a failing case is not a mystery.
                                if failures == 0 {
                                    let why = match failed {
                                        Ok(r) => format!("{} {}", r.status(), r.text().await.unwrap_or_default()),
                                        Err(e) => e.to_string(),
                                    };
                                    eprintln!("{base}: a request failed: {why}");
                                }
                                failures += 1;
                            }
                        }
                    }
                    (latencies, failures)
                }));
            }
            let mut all = Vec::new();
            let mut failures = 0;
            for task in tasks {
                let (latencies, failed) = task.await.unwrap();
                all.extend(latencies);
                failures += failed;
            }
            (all, failures)
        }
    };
    run(warm_until, false).await;
    let started = Instant::now();
    let (latencies, failures) = run(started + Duration::from_secs_f64(seconds), true).await;
    outcome.seconds += started.elapsed().as_secs_f64();
    outcome.latencies.extend(latencies);
    outcome.failures += failures;
}

/// The hits and misses of `tenant` that `cache` counted, this hour and the last.
async fn cache_counts(cache: &CatalogueCache, redis_url: &str, tenant: TenantId) -> anyhow::Result<(u64, u64)> {
    cache.settle().await;
    let mut redis = redis::Client::open(redis_url)?.get_multiplexed_async_connection().await?;
    let now = chrono::Utc::now();
    let (mut hits, mut misses) = (0, 0);
    for hour in [now, now - chrono::Duration::hours(1)] {
        let key = CatalogueCacheStats::counts_key(tenant, hour);
        let (h, m): (Option<u64>, Option<u64>) =
            redis::cmd("HMGET").arg(&key).arg("hits").arg("misses").query_async(&mut redis).await?;
        hits += h.unwrap_or(0);
        misses += m.unwrap_or(0);
    }
    Ok((hits, misses))
}

/// The usage store the metered data planes deliver to: takes every batch.
async fn usage_store(Json(batch): Json<UsageBatch>) -> Json<UsageBatchResult> {
    Json(UsageBatchResult { accepted: batch.events.len() as u64, duplicates: 0, rejected: vec![] })
}

async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{address}")
}

/// Why the data plane's hot reads carry the tenant context as they do.
const CHOICE: &str = "
Why bound sessions. A read used to set the tenant context for itself: first in a transaction (three round
trips), then in one simple-query message of `SET LOCAL`s and an `EXECUTE` (one round trip, but four
statements for the server to parse and run, and text results). sqlx cannot put several Bind/Execute under
one Sync, which would have made one implicit transaction of the context and the read. Instead the
catalogue's reads run on connections whose session stays bound to the tenant they last served: a read on
a connection already bound to its tenant is one prepared statement, binary, with nothing set first. A
connection goes to a read of its own tenant first, else the longest-idle one is bound again (`set_config`,
one more round trip), else a new one is opened. Binding never decides what a read sees: row-level
security binds the session's tenant, and every catalogue read also keeps only the rows of the tenant its
verified token names (`WHERE read.tenant_id = $1` around the read), so a session bound to another tenant
would answer nothing, never that tenant's rows. Sessions are bound with no role and no subject, so the
shoppers' tables show them nothing; shoppers' reads keep the one message, and writes their transactions.
These connections are not pinged when lent (sqlx's pool pings each connection before lending it and when
it comes back: (a) pays both, (h) does not); one found dead is closed and the read, which changes nothing,
runs once more. A verified token is kept for 60 s by its exact text, so a shopper's next requests skip
the signature.
";

/// How a read carries the tenant context to the database (the cases of the
/// SQL-level table), each from its own connections, no HTTP.
#[derive(Clone, Copy)]
enum Context {
    /// None: the superuser reads by tenant id and product id.
    Bare,
    /// `BEGIN` + `set_config`s in one message, the prepared read, a lazy
    /// `ROLLBACK`: three round trips (the data plane until 2026-12-04).
    Transaction,
    /// `SET LOCAL`s and `EXECUTE` of the read prepared on the connection, one
    /// message: one round trip (the data plane's catalogue reads until
    /// 2026-12-05, its shoppers' reads now).
    OneMessage,
    /// The session bound to the tenant once per connection; each read a
    /// prepared statement keeping only the token's tenant's rows: one round
    /// trip (the data plane's catalogue reads now).
    BoundSession,
}

const COLUMNS: &str =
    "id, name, description, price_minor, currency, category, tags, status, stock, created_at, updated_at";

/// Reads of one product by id, `concurrency` connections at once, for
/// `seconds`; returns the reads and the seconds they took.
async fn sql_reads(
    pool: PgPool,
    context: Context,
    tenant: Uuid,
    ids: Arc<Vec<Uuid>>,
    seconds: f64,
    concurrency: usize,
) -> anyhow::Result<(u64, f64)> {
    let by_tenant_and_id = format!("SELECT {COLUMNS} FROM products WHERE tenant_id = $1 AND id = $2");
    let by_id = format!("SELECT {COLUMNS} FROM products WHERE id = $1");
    let checked_by_id = format!(
        "SELECT * FROM (SELECT tenant_id, {COLUMNS} FROM products WHERE id = $2) AS read WHERE read.tenant_id = $1"
    );
    // The clock starts once every worker holds its connection (TLS handshake
    // and PREPARE done): a round is short, and opening connections is not
    // what is measured.
    let ready = Arc::new(tokio::sync::Barrier::new(concurrency + 1));
    let mut workers = Vec::new();
    for worker in 0..concurrency {
        let (pool, ids, by_tenant_and_id, by_id, checked_by_id) =
            (pool.clone(), ids.clone(), by_tenant_and_id.clone(), by_id.clone(), checked_by_id.clone());
        let ready = ready.clone();
        workers.push(tokio::spawn(async move {
            let connected = async {
                let mut conn = pool.acquire().await?;
                match context {
                    Context::OneMessage => {
                        let prepare = format!("PREPARE bench_product_by_id(uuid) AS {by_id}");
                        sqlx::raw_sql(sqlx::AssertSqlSafe(prepare)).execute(&mut *conn).await?;
                    }
                    Context::BoundSession => {
                        sqlx::query("SELECT set_config('app.current_tenant', $1, false)")
                            .bind(tenant.to_string())
                            .execute(&mut *conn)
                            .await?;
                    }
                    Context::Bare | Context::Transaction => {}
                }
                anyhow::Ok(conn)
            }
            .await;
            // Also on failure, so that the others are not left waiting.
            ready.wait().await;
            let mut conn = connected?;
            let until = Instant::now() + Duration::from_secs_f64(seconds);
            let (mut n, mut reads) = (worker * 7919, 0u64);
            while Instant::now() < until {
                n = (n + 104_729) % ids.len();
                let id = ids[n];
                let rows = match context {
                    Context::Bare => {
                        let statement = sqlx::AssertSqlSafe(by_tenant_and_id.as_str());
                        sqlx::query(statement).bind(tenant).bind(id).fetch_all(&mut *conn).await?
                    }
                    Context::Transaction => {
                        let begin = format!(
                            "BEGIN; SELECT set_config('app.current_tenant', '{tenant}', true), \
                             set_config('app.current_role', 'customer', true), set_config('app.current_subject', 'bench', true)"
                        );
                        let mut tx = sqlx::Connection::begin_with(&mut *conn, sqlx::AssertSqlSafe(begin)).await?;
                        sqlx::query(sqlx::AssertSqlSafe(by_id.as_str())).bind(id).fetch_all(&mut *tx).await?
                    }
                    Context::OneMessage => {
                        let message = format!(
                            "SET LOCAL app.current_tenant = '{tenant}'; SET LOCAL app.\"current_role\" = 'customer'; \
                             SET LOCAL app.current_subject = 'bench'; EXECUTE bench_product_by_id('{id}')"
                        );
                        sqlx::raw_sql(sqlx::AssertSqlSafe(message)).fetch_all(&mut *conn).await?
                    }
                    Context::BoundSession => {
                        let statement = sqlx::AssertSqlSafe(checked_by_id.as_str());
                        sqlx::query(statement).bind(tenant).bind(id).fetch_all(&mut *conn).await?
                    }
                };
                anyhow::ensure!(rows.len() == 1, "product {id} read {} rows", rows.len());
                reads += 1;
            }
            anyhow::Ok(reads)
        }));
    }
    ready.wait().await;
    let started = Instant::now();
    let mut reads = 0;
    for worker in workers {
        reads += worker.await??;
    }
    pool.close().await;
    Ok((reads, started.elapsed().as_secs_f64()))
}

/// PostgreSQL alone on the same server: pgbench's select-only case (`-S`,
/// one primary-key read per transaction, prepared), with the same clients and
/// time. Returns its transactions per second.
fn pgbench_select_only(database_url: &str, seconds: u64, concurrency: usize) -> anyhow::Result<f64> {
    let run = |args: &[&str]| -> anyhow::Result<String> {
        let output = std::process::Command::new("pgbench")
            .args(args)
            .arg(database_url)
            .output()
            .map_err(|e| anyhow::anyhow!("pgbench (PostgreSQL's client tools) could not run: {e}"))?;
        anyhow::ensure!(output.status.success(), "pgbench failed: {}", String::from_utf8_lossy(&output.stderr));
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    };
    run(&["-i", "-q", "-s", "10"])?;
    let (seconds, clients) = (seconds.to_string(), concurrency.to_string());
    let report = run(&["-n", "-S", "-M", "prepared", "-j", "2", "-c", &clients, "-T", &seconds])?;
    report
        .lines()
        .find_map(|line| line.strip_prefix("tps = ")?.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no tps in pgbench's report:\n{report}"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let seconds: u64 = std::env::var("BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(10);
    let concurrency: usize = std::env::var("BENCH_CONCURRENCY").ok().and_then(|s| s.parse().ok()).unwrap_or(32);
    let server_url =
        std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let server = TenantServer::new(&server_url)?;
    let database = format!("indigo_bench_{}", Uuid::new_v4().simple());
    server.provision(&database).await?;
    let tenant = TenantId::new();

    // Rows: the tenant's catalogue plus other tenants' rows, as in a real pool.
    let mut owner = server.owner_options(&database).connect().await?;
    let mut ids = Vec::with_capacity(PRODUCTS);
    let mut customers = Vec::new();
    for t in 0..4 {
        let this = if t == 0 { tenant } else { TenantId::new() };
        let mut tx = owner.begin().await?;
        sqlx::query("SELECT set_config('app.current_tenant', $1, true)")
            .bind(this.to_string())
            .execute(&mut *tx)
            .await?;
        let inserted: Vec<Uuid> = sqlx::query_scalar(
            "INSERT INTO products (tenant_id, id, name, description, price_minor, currency, category, tags, stock)
             SELECT $1, gen_random_uuid(), 'Product ' || n, 'A fine product number ' || n, 100 + n, 'usd', 'cat' || (n % 10), ARRAY['t' || (n % 7)], 1000
             FROM generate_series(1, $2) AS n RETURNING id",
        )
        .bind(this.0)
        .bind(PRODUCTS as i32)
        .fetch_all(&mut *tx)
        .await?;
        if t == 0 {
            ids = inserted;
            // The customers case (f) orders for, as the store's own backend would.
            customers = sqlx::query_scalar(
                "INSERT INTO customers (tenant_id, id, email, name)
                 SELECT $1, gen_random_uuid(), 'customer' || n || '@bench.example', 'Customer ' || n
                 FROM generate_series(1, $2) AS n RETURNING id",
            )
            .bind(this.0)
            .bind(CUSTOMERS)
            .fetch_all(&mut *tx)
            .await?;
        }
        tx.commit().await?;
    }
    sqlx::query("ANALYZE products").execute(&mut owner).await?;
    let ids = Arc::new(ids);

    // PostgreSQL alone first, while no data plane holds connections.
    let sql_cases = [
        ("none (superuser, tenant id as a parameter)", Context::Bare),
        ("transaction: `BEGIN` + `set_config`s, the read, `ROLLBACK` — 3 round trips", Context::Transaction),
        ("one message: `SET LOCAL`s + `EXECUTE` of the prepared read — 1 round trip", Context::OneMessage),
        (
            "bound session: bound once per connection, each read also filtering by the token's tenant — 1 round trip",
            Context::BoundSession,
        ),
    ];
    let mut sql_rates = [(0u64, 0f64); 4];
    // For profiling one path: only the cases named by their letters (`BENCH_CASES=bh`), their rates printed, no
    // SQL-level table, no pgbench, no report written.
    let only: Option<String> = std::env::var("BENCH_CASES").ok();
    for _ in 0..if only.is_some() { 0 } else { ROUNDS } {
        for ((_, context), (reads, took)) in sql_cases.iter().zip(&mut sql_rates) {
            let options = match context {
                Context::Bare => server.admin_options(&database),
                Context::Transaction | Context::OneMessage | Context::BoundSession => server.app_options(&database),
            };
            let pool = PgPoolOptions::new().max_connections(concurrency as u32).connect_lazy_with(options);
            let share = seconds as f64 / ROUNDS as f64;
            let (more, seconds) = sql_reads(pool, *context, tenant.0, ids.clone(), share, concurrency).await?;
            *reads += more;
            *took += seconds;
        }
    }
    let sql_cases: Vec<(&str, f64)> =
        sql_cases.iter().zip(sql_rates).map(|((name, _), (reads, took))| (*name, reads as f64 / took)).collect();
    let database_url = format!("{}/{database}", server_url.rsplit_once('/').expect("a server URL").0);
    let pgbench = match only {
        Some(_) => f64::NAN,
        None => tokio::task::spawn_blocking(move || pgbench_select_only(&database_url, seconds, concurrency)).await??,
    };

    // (a) bare, and (h) bare in one round trip
    let pooled = PgPoolOptions::new().max_connections(POOL_SIZE).connect_with(server.admin_options(&database)).await?;
    let bare = axum::Router::new().route("/products/{id}", get(bare_product)).with_state((pooled, tenant.0));
    let bare_url = serve(bare).await;
    let lent = Arc::new(TenantSessions::new(server.admin_options(&database), POOL_SIZE, Duration::from_secs(5)));
    let unpinged = axum::Router::new().route("/products/{id}", get(bare_product_unpinged)).with_state((lent, tenant.0));
    let unpinged_url = serve(unpinged).await;

    // (b) and (c): the data plane, its plan unlimited so that limits admit every request.
    let catalog = PlanCatalog::parse("plans.toml", include_str!("../../policies/plans.toml"))?;
    let mut plan = catalog.get("enterprise")?.clone();
    plan.limits.api_calls_per_day = Limit::Unlimited;
    plan.rate_limit.requests_per_second = 10_000_000;
    plan.rate_limit.burst = 10_000_000;
    let route = Route {
        tenant_id: tenant,
        slug: Slug::parse("bench-shop")?,
        lifecycle: Lifecycle::Active,
        isolation: plan.isolation,
        database_url: Some(server.app_url(&database)),
        next_database_url: None,
        database_login_secret: None,
        next_database_login_secret: None,
        plan,
        routing_version: 1,
        personalize_campaign_arn: None,
    };
    let table = RoutingTable { version: 1, routes: vec![route], ai_credit_rates: Default::default() };
    let token = sign_hs256(
        SECRET,
        &Claims {
            tenant_id: tenant,
            sub: "bench".into(),
            role: CallerRole::Customer,
            exp: chrono::Utc::now().timestamp() + 3600,
        },
    );
    // The store's own backend, ordering for its customers in case (f).
    let backend_token = sign_hs256(
        SECRET,
        &Claims {
            tenant_id: tenant,
            sub: "bench-backend".into(),
            role: CallerRole::Staff,
            exp: chrono::Utc::now().timestamp() + 3600,
        },
    );
    // Metered as in production: each event journaled before the answer, and
    // delivered every second to a usage store that takes every batch.
    let store_url = serve(axum::Router::new().route("/v1/usage/events", post(usage_store))).await;
    let spool = std::env::temp_dir().join(format!("indigo-bench-spool-{}", Uuid::new_v4().simple()));
    let meter = Meter::new(Some(UsageSink::new(&store_url, "bench")), spool.clone());
    let metered = AppState::new(
        Arc::new(Routes::fixed(table.clone(), POOL_SIZE)),
        Verifier::hs256(SECRET).unwrap(),
        meter.clone(),
    );
    let metered_url = serve(api::router(metered)).await;
    let mut unmetered = AppState::new(
        Arc::new(Routes::fixed(table.clone(), POOL_SIZE)),
        Verifier::hs256(SECRET).unwrap(),
        meter.clone(),
    );
    unmetered.metering = false;
    unmetered.limiter = Arc::new(Limiter::default());
    let unmetered_url = serve(api::router(unmetered)).await;
    let redis_url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let mut shared = AppState::new(
        Arc::new(Routes::fixed(table.clone(), POOL_SIZE)),
        Verifier::hs256(SECRET).unwrap(),
        meter.clone(),
    );
    let redis = Arc::new(RedisLink::new(&redis_url)?);
    let shared_limiter = Arc::new(Limiter::default().sharing_rates(FleetRates::new(redis.clone())));
    shared.limiter = shared_limiter.clone();
    let shared_url = serve(api::router(shared)).await;
    // (g): as (b), the catalogue's reads cached in Redis.
    let mut cached = AppState::new(
        Arc::new(Routes::fixed(table.clone(), POOL_SIZE)),
        Verifier::hs256(SECRET).unwrap(),
        meter.clone(),
    );
    let cache = Arc::new(CatalogueCache::new(redis, catalogue_cache::MAX_TTL));
    cached.catalogue_cache = Some(cache.clone());
    let cached_url = serve(api::router(cached)).await;
    // (e): metered, the events kept in memory only, as before the journal.
    let unjournaled = AppState::new(
        Arc::new(Routes::fixed(table, POOL_SIZE)),
        Verifier::hs256(SECRET).unwrap(),
        Meter::new(None, spool.clone()),
    );
    let unjournaled_url = serve(api::router(unjournaled)).await;

    // A background drain, as the real flusher would do, so the buffer does not grow unbounded.
    let drain = meter.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = drain.flush().await;
        }
    });

    let cases = [
        ("(a) bare axum + sqlx, no tenancy (sqlx's pool as it comes)", format!("{bare_url}/products/"), None, None),
        ("(b) data plane GET /v1/products/{id}", format!("{metered_url}/v1/products/"), Some(token.clone()), None),
        ("(c) data plane, metering off", format!("{unmetered_url}/v1/products/"), Some(token.clone()), None),
        ("(d) data plane, rate shared through Redis", format!("{shared_url}/v1/products/"), Some(token.clone()), None),
        (
            "(e) data plane, usage in memory only (no journal)",
            format!("{unjournaled_url}/v1/products/"),
            Some(token.clone()),
            None,
        ),
        (
            "(f) data plane POST /v1/orders, an order of one item",
            format!("{metered_url}/v1/orders"),
            Some(backend_token),
            Some(Arc::new(customers)),
        ),
        ("(g) data plane, catalogue cached in Redis", format!("{cached_url}/v1/products/"), Some(token.clone()), None),
        ("(h) bare, one round trip (connections lent unpinged)", format!("{unpinged_url}/products/"), None, None),
    ];
    let mut outcomes: Vec<Outcome> =
        cases.iter().map(|(name, ..)| Outcome { name, latencies: Vec::new(), failures: 0, seconds: 0.0 }).collect();
    for round in 0..ROUNDS {
        // Each round opens its own client connections; the first also fills the servers' pools.
        let warm_up = Duration::from_millis(if round == 0 { 2000 } else { 500 });
        for ((name, base, token, order_for), outcome) in cases.iter().zip(&mut outcomes) {
            if only.as_ref().is_some_and(|only| !only.contains(letter(name))) {
                continue;
            }
            let share = seconds as f64 / ROUNDS as f64;
            let order_for = order_for.clone();
            load(base.clone(), token.clone(), order_for, ids.clone(), warm_up, share, concurrency, outcome).await;
        }
    }
    if only.is_some() {
        for outcome in outcomes.iter().filter(|o| o.seconds > 0.0) {
            println!("{} {:.0} requests/s", outcome.name, outcome.rps());
        }
        drop(owner);
        server.drop_database(&database).await?;
        let _ = std::fs::remove_dir_all(&spool);
        return Ok(());
    }
    anyhow::ensure!(
        shared_limiter.fleet().is_some_and(|f| f.is_shared()),
        "case (d) needs Redis at {redis_url}; it limited alone instead"
    );
    let (hits, misses) = cache_counts(&cache, &redis_url, tenant).await?;
    anyhow::ensure!(hits > 0, "case (g) needs Redis at {redis_url}; its cache never answered");

    let a = outcomes[0].rps();
    let mut report = String::new();
    report.push_str("# Data-plane benchmark\n\n");
    report.push_str(&format!(
        "{}\n\n{concurrency} concurrent keep-alive clients, {seconds} s per case in {ROUNDS} rounds, the cases taking \
         turns (a 2 s warm-up first, 0.5 s in later rounds); \
         load generator, servers and PostgreSQL share the machine. Rerun: `cargo bench -p indigo-dataplane --bench storefront`.\n\n",
        indigo_e2e::bench::provenance(),
    ));
    report.push_str("| case | requests/s | p50 | p99 | failed | ratio to (a) |\n|---|---:|---:|---:|---:|---:|\n");
    for (o, (.., order_for)) in outcomes.iter().zip(&cases) {
        // A write against a read would be no ratio worth printing.
        let ratio = if order_for.is_some() { "(a write)".to_owned() } else { format!("{:.2}", o.rps() / a) };
        report.push_str(&format!(
            "| {} | {:.0} | {:.2} ms | {:.2} ms | {} | {ratio} |\n",
            o.name,
            o.rps(),
            o.quantile(0.50).as_secs_f64() * 1000.0,
            o.quantile(0.99).as_secs_f64() * 1000.0,
            o.failures,
        ));
    }
    let h = outcomes[7].rps();
    report.push_str(&format!(
        "\n(b)/(a) = **{:.2}**; against the bare read in one round trip, (b)/(h) = **{:.2}**: what tenancy \
         itself costs a read (the token, the routing table, the limits, metering, RLS) beside a handler \
         that lends its connections as the data plane does. Metering costs {:.1}% of the data plane's throughput ((c) vs (b)); \
         sharing the rate through Redis costs {:.1}% ((d) vs (b); the tenant's plan is unlimited, so \
         a replica leases 100 tokens per Redis round trip).\n",
        outcomes[1].rps() / a,
        outcomes[1].rps() / h,
        (1.0 - outcomes[1].rps() / outcomes[2].rps()) * 100.0,
        (1.0 - outcomes[3].rps() / outcomes[1].rps()) * 100.0
    ));
    report.push_str(&format!(
        "\nPostgreSQL alone, `pgbench -S -M prepared` on the same server with the same {concurrency} clients: \
         {pgbench:.0} transactions/s. The data plane answers {:.2}× that over HTTP ((b) ÷ pgbench), the bare \
         handler {:.2}× ((a) ÷ pgbench).\n",
        outcomes[1].rps() / pgbench,
        a / pgbench
    ));
    report.push_str(&format!(
        "An order (f), placed by the store's backend for one of {CUSTOMERS} customers, is a transaction of its \
         own — the context set with `BEGIN` in one message, the customer checked, the product read and locked, \
         stock taken, the order and its line written, `COMMIT` (and its WAL flush) — and runs at {:.2}× the data \
         plane's product read.\n",
        outcomes[5].rps() / outcomes[1].rps()
    ));
    report.push_str(&format!(
        "The usage journal (one append per answered request, so that a killed replica loses no usage) \
         costs {:.1}% ((b) vs (e)).\n",
        (1.0 - outcomes[1].rps() / outcomes[4].rps()) * 100.0
    ));
    report.push_str(&format!(
        "With the catalogue cached in Redis (g), a product read runs at {:.2}× (a) and {:.2}× (b); {:.1}% of its \
         {} reads (warm-ups included) were answered from the cache, each with one `MGET` of the tenant's generation \
         and the entry instead of the database's round trip. Its {PRODUCTS} products fit the cache, and nothing \
         wrote to the catalogue through it, so this is the cache's best case; a write makes every entry of its \
         tenant a miss. The 0.9 goal is for the uncached path (b).\n",
        outcomes[6].rps() / a,
        outcomes[6].rps() / outcomes[1].rps(),
        100.0 * hits as f64 / (hits + misses).max(1) as f64,
        hits + misses,
    ));
    report.push_str(&format!(
        "\n## The tenant context at the SQL level\n\n\
         One product by id through {concurrency} connections at once, {seconds} s each in {ROUNDS} rounds taking \
         turns, no HTTP: what each way of \
         carrying the tenant context costs the database and the driver.\n\n\
         | how the context travels | reads/s | ratio to none |\n|---|---:|---:|\n"
    ));
    for (name, rate) in &sql_cases {
        report.push_str(&format!("| {name} | {rate:.0} | {:.2} |\n", rate / sql_cases[0].1));
    }
    report.push_str(CHOICE);
    println!("{report}");
    let out = concat!(env!("CARGO_MANIFEST_DIR"), "/../benchmarks/dataplane.md");
    std::fs::write(out, &report)?;
    println!("written to benchmarks/dataplane.md");
    drop(owner);
    server.drop_database(&database).await?;
    let _ = std::fs::remove_dir_all(&spool);
    Ok(())
}
