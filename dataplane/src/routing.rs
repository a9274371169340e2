//! The routing table: which database serves each tenant, on which plan, in
//! which lifecycle. Fetched from the control plane, then kept current by
//! asking it to answer when the table changes (a long poll), so a new route
//! is here as soon as it commits; when the control plane is unreachable the
//! last known table keeps serving.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use indigo_core::api::{DailyCalls, Route, RoutingTable};
use indigo_core::tenant::TenantId;
use reqwest::StatusCode;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::sync::Notify;

use crate::tenant_sessions::TenantSessions;

/// The current table, indexed by tenant, with connections per database.
#[derive(Default)]
pub struct Routes {
    table: RwLock<Arc<Indexed>>,
    pools: RwLock<HashMap<String, Database>>,
    max_connections: u32,
    /// Woken whenever a new table is in place.
    replaced: Notify,
    /// Asks the refresher to fetch now rather than at its next tick.
    refresh_now: Notify,
    /// A dedicated (silo) data plane routes its one tenant and no other.
    only: Option<TenantId>,
    /// The app role's password, which the routing table never carries.
    database_password: Option<String>,
    /// Passwords of the databases whose routes name a login of the tenant's
    /// own, by URL, as read from the secrets the routes name.
    login_passwords: RwLock<HashMap<String, String>>,
    login_secrets: crate::logins::LoginSecrets,
}

#[derive(Default)]
struct Indexed {
    version: i64,
    loaded: bool,
    by_tenant: HashMap<TenantId, Arc<Route>>,
    /// The databases reached only as a tenant's own login, never with the
    /// app role's password.
    login_urls: std::collections::HashSet<String>,
    ai_credit_rates: std::collections::BTreeMap<String, f64>,
}

impl Routes {
    pub fn new(max_connections: u32) -> Self {
        Self { max_connections, ..Default::default() }
    }

    /// Routes for a data plane dedicated to `tenant`: every other tenant is unknown here.
    pub fn dedicated(tenant: TenantId, max_connections: u32) -> Self {
        Self { max_connections, only: Some(tenant), ..Default::default() }
    }

    /// Logs in to every tenant database with `password` (the app role's).
    pub fn with_database_password(mut self, password: Option<String>) -> Self {
        self.database_password = password;
        self
    }

    /// Reads the tenants' cluster logins through `secrets`.
    pub fn with_login_secrets(mut self, secrets: crate::logins::LoginSecrets) -> Self {
        self.login_secrets = secrets;
        self
    }

    /// A table fixed once (tests and tools); no refreshing.
    pub fn fixed(table: RoutingTable, max_connections: u32) -> Self {
        let routes = Self::new(max_connections);
        routes.replace(table);
        routes
    }

    /// Reads the password of each tenant login `table` names that is not
    /// known yet, and forgets those of databases it no longer routes to (with
    /// their connections: a tenant that comes back to a cluster gets a new
    /// login). Run before the table replaces the current one, so a route is
    /// never used before its login is known; a secret that cannot be read
    /// leaves its database failing to connect, and is tried again with the
    /// next table.
    pub async fn read_logins(&self, table: &RoutingTable) {
        let wanted: HashMap<&str, &str> = table
            .routes
            .iter()
            .filter(|r| self.only.is_none_or(|only| only == r.tenant_id))
            .flat_map(login_databases)
            .collect();
        let known: Vec<String> = self.login_passwords.read().expect("logins lock").keys().cloned().collect();
        for url in known.iter().filter(|url| !wanted.contains_key(url.as_str())) {
            self.login_passwords.write().expect("logins lock").remove(url);
            self.pools.write().expect("pools lock").remove(url);
        }
        for (url, secret) in wanted.into_iter().filter(|(url, _)| !known.iter().any(|k| k == url)) {
            match self.login_secrets.read(secret).await {
                Ok(password) => {
                    self.login_passwords.write().expect("logins lock").insert(url.to_owned(), password);
                    // A pool made before the password was known cannot log in.
                    self.pools.write().expect("pools lock").remove(url);
                }
                Err(error) => tracing::warn!(%error, "a tenant's database login is unreadable; its requests fail"),
            }
        }
    }

    pub fn replace(&self, table: RoutingTable) {
        let by_tenant: HashMap<TenantId, Arc<Route>> = table
            .routes
            .into_iter()
            .filter(|r| self.only.is_none_or(|only| only == r.tenant_id))
            .map(|r| (r.tenant_id, Arc::new(r)))
            .collect();
        let login_urls = by_tenant.values().flat_map(|r| login_databases(r)).map(|(url, _)| url.to_owned()).collect();
        *self.table.write().expect("routing lock") = Arc::new(Indexed {
            version: table.version,
            loaded: true,
            by_tenant,
            login_urls,
            ai_credit_rates: table.ai_credit_rates,
        });
        self.replaced.notify_waiters();
    }

    /// Waits until the table routes `tenant` somewhere other than `old_url`
    /// (a tenant that moved), asking for a refresh meanwhile; `None` on timeout.
    pub async fn await_new_database(&self, tenant: TenantId, old_url: &str, timeout: Duration) -> Option<Arc<Route>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Registered before looking, so a table replaced in between still wakes us.
            let replaced = self.replaced.notified();
            tokio::pin!(replaced);
            replaced.as_mut().enable();
            if let Some(route) = self.route(tenant).filter(|r| r.database_url.as_deref() != Some(old_url)) {
                return Some(route);
            }
            self.refresh_now.notify_one();
            tokio::time::timeout_at(deadline, replaced).await.ok()?;
        }
    }

    pub fn version(&self) -> i64 {
        self.table.read().expect("routing lock").version
    }

    /// Whether a table was ever loaded (readiness).
    pub fn loaded(&self) -> bool {
        self.table.read().expect("routing lock").loaded
    }

    pub fn route(&self, tenant: TenantId) -> Option<Arc<Route>> {
        self.table.read().expect("routing lock").by_tenant.get(&tenant).cloned()
    }

    /// The AI credits `tokens` of `service` cost, at the rates the control
    /// plane prices them (none without a rate for the service).
    pub fn ai_credits(&self, service: &str, tokens: u64) -> Option<f64> {
        self.table.read().expect("routing lock").ai_credit_rates.get(service).map(|rate| tokens as f64 * rate)
    }

    /// Opens a connection to each database a tenant is about to move to, so
    /// that its writes held through the switch find one ready (and its
    /// catalogue's reads a session: see [`Self::database`]).
    pub fn warm_next_databases(&self) {
        let table = self.table.read().expect("routing lock").clone();
        for url in table.by_tenant.values().filter_map(|route| route.next_database_url.as_deref()) {
            if self.pools.read().expect("pools lock").contains_key(url) {
                continue;
            }
            match self.pool(url) {
                Ok(pool) => {
                    tokio::spawn(async move {
                        if let Err(error) = pool.acquire().await {
                            tracing::warn!(%error, "cannot connect ahead to a moving tenant's next database");
                        }
                    });
                }
                Err(error) => tracing::warn!(%error, "a moving tenant's next database has a bad URL"),
            }
        }
    }

    /// The pool for a tenant database, created on first use (lazily connecting).
    pub fn pool(&self, database_url: &str) -> Result<PgPool, sqlx::Error> {
        Ok(self.database(database_url)?.pool)
    }

    /// The connections to a tenant database, made on first use (lazily
    /// connecting, but for one catalogue session opened ahead, so that the
    /// database's first read does not wait for a connection to be made).
    pub fn database(&self, database_url: &str) -> Result<Database, sqlx::Error> {
        if let Some(database) = self.pools.read().expect("pools lock").get(database_url) {
            return Ok(database.clone());
        }
        let mut pools = self.pools.write().expect("pools lock");
        if let Some(database) = pools.get(database_url) {
            return Ok(database.clone());
        }
        let mut options = PgConnectOptions::from_str(database_url)?;
        let login_password = self.login_passwords.read().expect("logins lock").get(database_url).cloned();
        let needs_login = self.table.read().expect("routing lock").login_urls.contains(database_url);
        let password = match login_password {
            Some(password) => Some(password),
            // Its secret could not be read: unreachable until it is (503, retry).
            None if needs_login => {
                return Err(sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    "the tenant's database login is not known: its secret could not be read",
                )));
            }
            None => self.database_password.clone(),
        };
        if let Some(password) = &password {
            options = options.password(password);
        }
        // Half the connections each, so that a replica holds no more than it was given.
        let sessions_max = (self.max_connections / 2).max(1);
        let sessions = TenantSessions::new(options.clone(), sessions_max, ACQUIRE_TIMEOUT);
        let pool = PgPoolOptions::new()
            .max_connections(self.max_connections.saturating_sub(sessions_max).max(1))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // No ping before each request: a connection that lost its server is found by its first statement, which
            // is run again on another (TenantCtx); sqlx still pings a connection as it comes back.
            .test_before_acquire(false)
            .connect_lazy_with(options);
        let database = Database { pool, sessions: Arc::new(sessions) };
        database.sessions.open_one_ahead();
        pools.insert(database_url.to_owned(), database.clone());
        Ok(database)
    }
}

/// How long a request waits for a connection to its tenant's database.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// The connections of one tenant database: a pool for transactions and
/// shoppers' reads, and sessions bound to tenants for the catalogue's reads,
/// sharing the data plane's connections per database half and half.
#[derive(Clone)]
pub struct Database {
    pub pool: PgPool,
    pub sessions: Arc<TenantSessions>,
}

/// The databases `route` reaches as a tenant's own login, with the secrets
/// holding its password.
fn login_databases(route: &Route) -> impl Iterator<Item = (&str, &str)> {
    [
        (route.database_url.as_deref(), route.database_login_secret.as_deref()),
        (route.next_database_url.as_deref(), route.next_database_login_secret.as_deref()),
    ]
    .into_iter()
    .filter_map(|(url, secret)| Some((url?, secret?)))
}

/// How long the control plane takes to answer, beyond any wait asked for.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long each request for a newer table may be held by the control plane.
const LONG_POLL: Duration = Duration::from_secs(20);

/// Where the routing table (and the shared daily call counts) come from.
#[derive(Clone)]
pub struct ControlPlaneSource {
    http: reqwest::Client,
    url: String,
    daily_calls_url: String,
    token: String,
}

impl ControlPlaneSource {
    pub fn new(control_plane_url: &str, token: &str) -> Self {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .expect("a client with only a timeout set always builds");
        let base = control_plane_url.trim_end_matches('/');
        Self {
            http,
            url: format!("{base}/v1/routing"),
            daily_calls_url: format!("{base}/v1/usage/daily-calls"),
            token: token.to_owned(),
        }
    }

    /// Every tenant's calls so far in its own day, as the control plane metered them.
    #[tracing::instrument(name = "usage.daily_calls", skip_all, fields(otel.kind = "client"))]
    pub async fn daily_calls(&self) -> anyhow::Result<Vec<DailyCalls>> {
        let request = self.http.get(&self.daily_calls_url).headers(indigo_core::traces::context_headers());
        let response = request.bearer_auth(&self.token).send().await?;
        match response.status() {
            status if status.is_success() => Ok(response.json().await?),
            status => anyhow::bail!("control plane answered {status}: {}", response.text().await.unwrap_or_default()),
        }
    }

    /// The table if it is newer than `known_version`. The control plane holds
    /// its answer until the table changes, for up to `wait`.
    #[tracing::instrument(name = "routing.fetch", skip_all, fields(otel.kind = "client", known_version))]
    pub async fn fetch(&self, known_version: i64, wait: Duration) -> anyhow::Result<Fetched> {
        let response = self
            .http
            .get(&self.url)
            .headers(indigo_core::traces::context_headers())
            .bearer_auth(&self.token)
            .header(reqwest::header::IF_NONE_MATCH, format!("\"{known_version}\""))
            .header("prefer", format!("wait={}", wait.as_secs()))
            .timeout(wait + REQUEST_TIMEOUT)
            .send()
            .await?;
        match response.status() {
            StatusCode::NOT_MODIFIED => {
                Ok(Fetched::Unchanged { held: response.headers().contains_key("preference-applied") })
            }
            status if status.is_success() => Ok(Fetched::Newer(response.json().await?)),
            status => anyhow::bail!("control plane answered {status}: {}", response.text().await.unwrap_or_default()),
        }
    }
}

/// What asking for a newer routing table brought.
pub enum Fetched {
    Newer(RoutingTable),
    /// `held`: the control plane waited for a change before saying so.
    Unchanged {
        held: bool,
    },
}

/// Keeps `routes` current: asks for a newer table and is answered when there
/// is one (or after [`LONG_POLL`] with none), then asks again. After a failure,
/// or from a control plane that did not hold its answer, it asks again
/// `interval` later. Keeps the last table on errors.
pub async fn refresh_forever(routes: Arc<Routes>, source: ControlPlaneSource, interval: Duration) {
    let mut failing = false;
    loop {
        let known = if routes.loaded() { routes.version() } else { -1 };
        let fetched = tokio::select! {
            fetched = source.fetch(known, LONG_POLL) => fetched,
            // A request on a moved tenant wants the newest table: ask anew.
            () = routes.refresh_now.notified() => continue,
        };
        let pause = match fetched {
            Ok(Fetched::Newer(table)) => {
                tracing::info!(version = table.version, tenants = table.routes.len(), "routing table updated");
                routes.read_logins(&table).await;
                routes.replace(table);
                routes.warm_next_databases();
                failing = false;
                Duration::ZERO
            }
            Ok(Fetched::Unchanged { held }) => {
                failing = false;
                if held { Duration::ZERO } else { interval }
            }
            Err(error) => {
                if !failing {
                    tracing::warn!(%error, "routing refresh failed; serving the last known table");
                }
                failing = true;
                interval
            }
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = routes.refresh_now.notified() => {}
        }
    }
}
