//! The tenant database, the piece both planes share: the tenant schema and its
//! roles (`schema`), which database errors mean "try again" (`retry`) or "bad
//! input" (`input`), and the
//! online move of one tenant's rows between two databases (`moves`). The data
//! plane serves from these databases; the control plane provisions them and
//! moves tenants between them.

pub mod input;
pub mod moves;
pub mod retry;
pub mod schema;
pub mod scram;

use schema::TenantServer;

/// Where tenants' data lives: the server of the pool and the local silos, the
/// pool's database on it, and how a silo on a cluster of its own is reached.
pub struct TenantDatabases {
    pub server: TenantServer,
    pub pool_database: String,
    /// A server that stands in for every Aurora cluster, for tests and for
    /// trying the AWS mode on an emulator: each cluster's database is the one
    /// named after the cluster there. A real deployment never sets it.
    pub cluster_stand_in: Option<TenantServer>,
    /// Where the passwords of the tenants' own cluster logins are kept (a
    /// Secrets Manager prefix); `None`: no tenant has a cluster of its own.
    pub cluster_logins: Option<String>,
}

/// How a data plane logs in to a tenant's own cluster: the tenant's login
/// ([`schema::tenant_login`]), whose password is kept in the secret named
/// here and nowhere else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterLogin {
    pub role: String,
    pub secret: String,
}

impl ClusterLogin {
    pub fn of(tenant: indigo_core::tenant::TenantId, secrets_prefix: &str) -> Self {
        Self { role: schema::tenant_login(tenant), secret: format!("{secrets_prefix}/tenants/{tenant}/database-login") }
    }
}

/// One tenant database and the server holding it, with the login the control
/// plane reaches it by.
#[derive(Debug, Clone)]
pub struct Database {
    pub server: TenantServer,
    pub name: String,
}

/// Aurora's port, where every cluster endpoint listens.
const CLUSTER_PORT: u16 = 5432;

impl TenantDatabases {
    pub fn new(server: TenantServer, pool_database: impl Into<String>) -> Self {
        Self { server, pool_database: pool_database.into(), cluster_stand_in: None, cluster_logins: None }
    }

    /// The login `tenant`'s database on `cluster` is served through, if it
    /// is on a cluster of its own.
    pub fn cluster_login(&self, tenant: indigo_core::tenant::TenantId, cluster: Option<&str>) -> Option<ClusterLogin> {
        cluster.and(self.cluster_logins.as_deref()).map(|prefix| ClusterLogin::of(tenant, prefix))
    }

    /// Where the data plane reaches `tenant` placed in `database` (on
    /// `cluster`, if on one of its own): a URL without password, and the
    /// secret holding the password when it is not the app role's.
    pub fn data_plane_login(
        &self,
        tenant: indigo_core::tenant::TenantId,
        cluster: Option<&str>,
        database: &str,
    ) -> (String, Option<String>) {
        let located = self.locate(cluster, database);
        match self.cluster_login(tenant, cluster) {
            Some(login) => (located.server.login_url(&login.role, &located.name), Some(login.secret)),
            None => (located.server.app_url(&located.name), None),
        }
    }

    /// The server and database holding a tenant placed in `database`, on
    /// the tenant server or on the cluster at `cluster` (an endpoint). The
    /// server keeps the tenant server's login, which a cluster's provider
    /// replaces with the cluster's own.
    pub fn locate(&self, cluster: Option<&str>, database: &str) -> Database {
        let (server, name) = match (cluster, &self.cluster_stand_in) {
            (None, _) => (self.server.clone(), database.to_owned()),
            (Some(endpoint), Some(stand_in)) => (stand_in.clone(), stand_in_database(endpoint)),
            (Some(endpoint), None) => (self.server.at(endpoint, CLUSTER_PORT), database.to_owned()),
        };
        Database { server, name }
    }

    /// The pool's database.
    pub fn pool(&self) -> Database {
        self.locate(None, &self.pool_database)
    }
}

/// The stand-in's database for the cluster at `endpoint`: its identifier, the
/// endpoint's first label (`indigo-acme-1a2b…` → `indigo_acme_1a2b…`).
pub fn stand_in_database(endpoint: &str) -> String {
    endpoint.split('.').next().unwrap_or(endpoint).replace('-', "_")
}
