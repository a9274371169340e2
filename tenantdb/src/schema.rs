//! The tenant schema and the two roles it is used through: `indigo_owner` owns
//! the tables and runs migrations; `indigo_app` is what the data plane connects
//! as. Neither is a superuser nor has `BYPASSRLS`, and RLS is forced, so the
//! owner is bound too.

use std::str::FromStr;

use indigo_core::tenant::TenantId;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};

/// The tenant schema's migrations, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/tenant");

/// The RLS policies, applied after the migrations on every provisioning.
pub const RLS_POLICIES: &str = include_str!("../../policies/tenant_rls.sql");

pub const OWNER_ROLE: &str = "indigo_owner";
pub const APP_ROLE: &str = "indigo_app";

/// The login a tenant's own cluster is served through: a member of the app
/// role (its grants and policies, nothing more) with a password of its own, so
/// that no credential opens two tenants' clusters.
pub fn tenant_login(tenant: TenantId) -> String {
    format!("{APP_ROLE}_{}", tenant.0.simple())
}

/// The SQLSTATE of a write to a database the tenant has moved away from
/// (raised by the move fence, `migrations/tenant/*_moves.sql`).
pub const MOVED_SQLSTATE: &str = "IXM01";

/// Every table holding tenant rows, parents before children (delete in reverse).
pub const TENANT_TABLES: &[&str] =
    &["search_settings", "products", "customers", "orders", "order_items", "product_pairs", "recommender_state"];

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("invalid database URL: {0}")]
    Url(sqlx::Error),
    #[error("tenant database {database}: {source}")]
    Database { database: String, source: sqlx::Error },
    #[error("tenant schema migration failed on {database}: {source}")]
    Migrate { database: String, source: sqlx::migrate::MigrateError },
}

/// A server on which tenant databases are provisioned, and the login that
/// provisions them: a superuser on the tenant server, an Aurora cluster's
/// master user (no superuser, but a member of the owner role) on a cluster.
#[derive(Clone)]
pub struct TenantServer {
    login: PgConnectOptions,
    /// The app role's password, given to it at every provisioning. `None`:
    /// the role has none, and the server must trust the data plane's
    /// connections.
    app_password: Option<String>,
}

impl std::fmt::Debug for TenantServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantServer").field("address", &self.address()).finish_non_exhaustive()
    }
}

impl TenantServer {
    pub fn new(superuser_url: &str) -> Result<Self, SchemaError> {
        Ok(Self { login: PgConnectOptions::from_str(superuser_url).map_err(SchemaError::Url)?, app_password: None })
    }

    /// The same server, whose app role logs in with `password` (set on it at
    /// every provisioning, as a SCRAM-SHA-256 verifier).
    pub fn with_app_password(mut self, password: &str) -> Self {
        self.app_password = Some(password.to_owned());
        self
    }

    /// Connection options for `database` as the app role, whom the tenant's
    /// row-level security binds, with its password when it has one.
    pub fn app_options(&self, database: &str) -> PgConnectOptions {
        // Built afresh rather than from the login, whose password it must not carry.
        let options = PgConnectOptions::new_without_pgpass()
            .host(self.login.get_host())
            .port(self.login.get_port())
            .ssl_mode(self.login.get_ssl_mode())
            .username(APP_ROLE)
            .database(database);
        match &self.app_password {
            Some(password) => options.password(password),
            None => options,
        }
    }

    /// Connection options for `database` as the server's login, which may
    /// create roles and databases.
    pub fn admin_options(&self, database: &str) -> PgConnectOptions {
        self.login.clone().database(database)
    }

    /// Connection options for `database` as the schema owner, whom row-level
    /// security binds: the server's login, taking the owner role from the
    /// start of the session. The owner role needs no password of its own, so
    /// the control plane reaches an Aurora cluster with the one login RDS keeps.
    pub fn owner_options(&self, database: &str) -> PgConnectOptions {
        self.admin_options(database).options([("role", OWNER_ROLE)])
    }

    /// A URL for `database` as the app role, for the data plane's routing.
    pub fn app_url(&self, database: &str) -> String {
        self.login_url(APP_ROLE, database)
    }

    /// A URL for `database` as `login` (the app role, or a tenant's own login).
    pub fn login_url(&self, login: &str, database: &str) -> String {
        format!("postgres://{login}@{}:{}/{database}", self.login.get_host(), self.login.get_port())
    }

    /// The same login on another server (a silo tenant's own cluster). The app
    /// role gets no password there: a cluster is served through its tenant's
    /// own login ([`Self::provision_login`]), never the pool's credentials.
    pub fn at(&self, host: &str, port: u16) -> Self {
        Self { login: self.login.clone().host(host).port(port), app_password: None }
    }

    /// Another login on this server: an Aurora cluster's master user, who
    /// provisions it as a superuser would, though it is none.
    pub fn logged_in_as(&self, user: &str, password: &str) -> Self {
        Self { login: self.login.clone().username(user).password(password), app_password: self.app_password.clone() }
    }

    /// `host:port`, to tell servers apart.
    pub fn address(&self) -> String {
        format!("{}:{}", self.login.get_host(), self.login.get_port())
    }

    async fn admin_conn(&self, database: &str) -> Result<PgConnection, SchemaError> {
        self.admin_options(database)
            .connect()
            .await
            .map_err(|source| SchemaError::Database { database: database.into(), source })
    }

    /// Creates the roles, the database (owned by the owner role) if missing, and
    /// brings its schema and policies up to date. Safe to run again, and concurrently.
    pub async fn provision(&self, database: &str) -> Result<(), SchemaError> {
        let fail = |source| SchemaError::Database { database: database.into(), source };
        let mut admin = self.admin_conn("postgres").await?;
        // Roles and databases are cluster-wide; one provisioner at a time creates them.
        sqlx::query("SELECT pg_advisory_lock(hashtext('indigo:provision'))").execute(&mut admin).await.map_err(fail)?;
        for (role, inherit) in [(OWNER_ROLE, true), (APP_ROLE, false)] {
            // Only a superuser may name BYPASSRLS in ALTER ROLE, and an Aurora
            // master user is none: a role already as wanted is left alone.
            let attributes: Option<(bool, bool, bool, bool, bool, bool)> = sqlx::query_as(
                "SELECT rolcanlogin, rolsuper, rolbypassrls, rolcreatedb, rolcreaterole, rolinherit
                 FROM pg_roles WHERE rolname = $1",
            )
            .bind(role)
            .fetch_optional(&mut admin)
            .await
            .map_err(fail)?;
            let verb = match attributes {
                Some(found) if found == (true, false, false, false, false, inherit) => continue,
                Some(_) => "ALTER",
                None => "CREATE",
            };
            let inherit = if inherit { "INHERIT" } else { "NOINHERIT" };
            let sql = format!("{verb} ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE {inherit}");
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut admin).await.map_err(fail)?;
        }
        if let Some(password) = &self.app_password {
            // A verifier, not the password, crosses the wire and may reach a log.
            let sql = format!("ALTER ROLE {APP_ROLE} PASSWORD '{}'", crate::scram::verifier(password));
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut admin).await.map_err(fail)?;
        }
        // Giving a database to the owner role takes membership in it, which a
        // superuser has anyway and a master user grants itself.
        let superuser: bool = sqlx::query_scalar("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            .fetch_one(&mut admin)
            .await
            .map_err(fail)?;
        if !superuser {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("GRANT {OWNER_ROLE} TO CURRENT_USER")))
                .execute(&mut admin)
                .await
                .map_err(fail)?;
        }
        let owner: Option<String> =
            sqlx::query_scalar("SELECT pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = $1")
                .bind(database)
                .fetch_optional(&mut admin)
                .await
                .map_err(fail)?;
        match owner.as_deref() {
            Some(OWNER_ROLE) => {}
            // A cluster's database is made with the cluster, owned by its master user.
            Some(_) => {
                let sql = format!("ALTER DATABASE {} OWNER TO {OWNER_ROLE}", quote_ident(database));
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut admin).await.map_err(fail)?;
            }
            None => {
                let sql = format!("CREATE DATABASE {} OWNER {OWNER_ROLE}", quote_ident(database));
                match sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut admin).await {
                    Ok(_) => {}
                    Err(sqlx::Error::Database(e)) if matches!(e.code().as_deref(), Some("42P04" | "23505")) => {}
                    Err(source) => return Err(fail(source)),
                }
            }
        }
        // The lock is held through the migration too: two control planes
        // starting at once would otherwise race to create the same policies.
        let migrated = self.migrate(database).await;
        // Closing the session releases the advisory lock.
        let _ = admin.close().await;
        migrated
    }

    async fn migrate(&self, database: &str) -> Result<(), SchemaError> {
        let fail = |source| SchemaError::Database { database: database.into(), source };
        let mut owner = self.owner_options(database).connect().await.map_err(fail)?;
        // Only the owner may create objects in the tenant database.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "REVOKE CREATE ON SCHEMA public FROM PUBLIC; GRANT USAGE ON SCHEMA public TO {APP_ROLE};"
        )))
        .execute(&mut owner)
        .await
        .map_err(fail)?;
        MIGRATOR
            .run_direct(None, &mut owner, false)
            .await
            .map_err(|source| SchemaError::Migrate { database: database.into(), source })?;
        sqlx::raw_sql(RLS_POLICIES).execute(&mut owner).await.map_err(fail)?;
        let _ = owner.close().await;
        Ok(())
    }

    /// Makes `login` the one login that serves `database` (a tenant's own
    /// cluster): a member of the app role, neither superuser nor `BYPASSRLS`,
    /// with `password`; the database is closed to every other login but its
    /// owner's. Safe to run again; sets the password each time.
    pub async fn provision_login(&self, database: &str, login: &str, password: &str) -> Result<(), SchemaError> {
        let fail = |source| SchemaError::Database { database: database.into(), source };
        let mut admin = self.admin_conn("postgres").await?;
        sqlx::query("SELECT pg_advisory_lock(hashtext('indigo:provision'))").execute(&mut admin).await.map_err(fail)?;
        let exists = role_exists(&mut admin, login).await.map_err(fail)?;
        // Only a superuser may name SUPERUSER or BYPASSRLS in ALTER ROLE, and
        // an Aurora master user is none: a login found with either stays
        // flagged ([`Self::login_ready`], [`audit_isolation`]) for an operator.
        let attributes = if exists { "" } else { " NOSUPERUSER NOBYPASSRLS" };
        let verb = if exists { "ALTER" } else { "CREATE" };
        let (login, database_ident) = (quote_ident(login), quote_ident(database));
        // A verifier, not the password, crosses the wire and may reach a log.
        let statements = [
            format!(
                "{verb} ROLE {login} LOGIN{attributes} NOCREATEDB NOCREATEROLE INHERIT PASSWORD '{}'",
                crate::scram::verifier(password)
            ),
            format!("GRANT {APP_ROLE} TO {login}"),
            format!("REVOKE CONNECT ON DATABASE {database_ident} FROM PUBLIC, {APP_ROLE}"),
            format!("GRANT CONNECT ON DATABASE {database_ident} TO {login}, {OWNER_ROLE}"),
        ];
        for sql in statements {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut admin).await.map_err(fail)?;
        }
        let _ = admin.close().await;
        Ok(())
    }

    /// Whether `login` exists as [`Self::provision_login`] made it.
    pub async fn login_ready(&self, login: &str) -> Result<bool, SchemaError> {
        let fail = |source| SchemaError::Database { database: "postgres".into(), source };
        let mut admin = self.admin_conn("postgres").await?;
        let ready: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_roles r
                            WHERE r.rolname = $1 AND r.rolcanlogin AND NOT r.rolsuper AND NOT r.rolbypassrls
                              AND pg_has_role(r.oid, $2, 'MEMBER'))",
        )
        .bind(login)
        .bind(APP_ROLE)
        .fetch_one(&mut admin)
        .await
        .map_err(fail)?;
        let _ = admin.close().await;
        Ok(ready)
    }

    /// Drops `login` (its tenant's cluster is gone; on a shared server, its
    /// database with it).
    pub async fn drop_login(&self, login: &str) -> Result<(), SchemaError> {
        let fail = |source| SchemaError::Database { database: "postgres".into(), source };
        let mut admin = self.admin_conn("postgres").await?;
        let exists = role_exists(&mut admin, login).await.map_err(fail)?;
        if exists {
            // Its grants on databases (shared objects) go first, wherever they are.
            let login = quote_ident(login);
            let sql = format!("DROP OWNED BY {login}; DROP ROLE {login}");
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut admin).await.map_err(fail)?;
        }
        let _ = admin.close().await;
        Ok(())
    }

    /// Whether `database` exists and carries every tenant migration.
    pub async fn schema_ready(&self, database: &str) -> Result<bool, SchemaError> {
        let fail = |source| SchemaError::Database { database: database.into(), source };
        let mut admin = self.admin_conn("postgres").await?;
        let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(database)
            .fetch_one(&mut admin)
            .await
            .map_err(fail)?;
        let _ = admin.close().await;
        if !exists {
            return Ok(false);
        }
        let mut conn = match self.admin_conn(database).await {
            Ok(conn) => conn,
            // Dropped since it was looked up (its tenant offboarded meanwhile): not there.
            Err(SchemaError::Database { source: sqlx::Error::Database(e), .. })
                if e.code().as_deref() == Some("3D000") =>
            {
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        let current = schema_current(&mut conn).await.map_err(fail)?;
        let _ = conn.close().await;
        Ok(current)
    }

    /// Deletes every row of `tenant` from `database` (a pool tenant offboarded).
    /// Runs as the owner under the tenant's own RLS context, so it cannot reach
    /// another tenant's rows even by mistake.
    pub async fn delete_tenant_rows(&self, database: &str, tenant: TenantId) -> Result<u64, SchemaError> {
        let fail = |source| SchemaError::Database { database: database.into(), source };
        let mut owner = self.owner_options(database).connect().await.map_err(fail)?;
        let mut tx = owner.begin().await.map_err(fail)?;
        sqlx::query("SELECT set_config('app.current_tenant', $1, true)")
            .bind(tenant.to_string())
            .execute(&mut *tx)
            .await
            .map_err(fail)?;
        let mut deleted = 0;
        // Children first, so foreign keys hold at every step.
        for table in TENANT_TABLES.iter().rev() {
            deleted += sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table}")))
                .execute(&mut *tx)
                .await
                .map_err(fail)?
                .rows_affected();
        }
        // What its restores left here goes too (no row-level security on it: named by tenant).
        sqlx::query("DELETE FROM restore_marks WHERE tenant = $1")
            .bind(tenant.0)
            .execute(&mut *tx)
            .await
            .map_err(fail)?;
        tx.commit().await.map_err(fail)?;
        Ok(deleted)
    }

    /// Drops a tenant database (a silo being released).
    pub async fn drop_database(&self, database: &str) -> Result<(), SchemaError> {
        let fail = |source| SchemaError::Database { database: database.into(), source };
        let mut admin = self.admin_conn("postgres").await?;
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(database));
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut admin).await.map_err(fail)?;
        Ok(())
    }
}

async fn role_exists(conn: &mut PgConnection, role: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)").bind(role).fetch_one(conn).await
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// One breach of the isolation invariants found by [`audit_isolation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsolationViolation {
    pub subject: String,
    pub problem: String,
}

/// Whether the database `conn` is in carries every tenant migration.
pub async fn schema_current(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    let applied: i64 =
        match sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success").fetch_one(&mut *conn).await {
            Ok(n) => n,
            // No migrations table: created but never migrated.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => 0,
            Err(e) => return Err(e),
        };
    Ok(applied >= MIGRATOR.iter().count() as i64)
}

/// Checks, on a tenant database, that every table with a `tenant_id` column has
/// RLS enabled and forced with a policy, and that the app role is neither
/// superuser nor `BYPASSRLS` nor a table owner.
pub async fn audit_isolation(conn: &mut PgConnection) -> Result<Vec<IsolationViolation>, sqlx::Error> {
    let tables: Vec<(String, bool, bool, i64, String)> = sqlx::query_as(
        "SELECT c.relname::text, c.relrowsecurity, c.relforcerowsecurity,
                (SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid),
                pg_get_userbyid(c.relowner)::text
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
           AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped)
         ORDER BY 1",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut violations = Vec::new();
    for (table, enabled, forced, policies, owner) in tables {
        let mut flag =
            |problem: &str| violations.push(IsolationViolation { subject: table.clone(), problem: problem.into() });
        if !enabled {
            flag("row-level security is not enabled");
        }
        if !forced {
            flag("row-level security is not forced");
        }
        if policies == 0 {
            flag("has no policy");
        }
        if owner == APP_ROLE {
            flag("is owned by the app role");
        }
    }
    let role: Option<(bool, bool)> = sqlx::query_as("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = $1")
        .bind(APP_ROLE)
        .fetch_optional(&mut *conn)
        .await?;
    match role {
        None => violations.push(IsolationViolation { subject: APP_ROLE.into(), problem: "role is missing".into() }),
        Some((superuser, bypass)) => {
            if superuser {
                violations.push(IsolationViolation { subject: APP_ROLE.into(), problem: "is a superuser".into() });
            }
            if bypass {
                violations.push(IsolationViolation { subject: APP_ROLE.into(), problem: "has BYPASSRLS".into() });
            }
        }
    }
    // A tenant's own login serves as the app role does, and is bound as it is.
    let logins: Vec<(String, bool, bool)> = sqlx::query_as(
        "SELECT r.rolname::text, r.rolsuper, r.rolbypassrls FROM pg_roles r
         WHERE r.rolname <> $1 AND pg_has_role(r.oid, $1, 'MEMBER')
           AND r.rolname LIKE $1 || '\\_%'",
    )
    .bind(APP_ROLE)
    .fetch_all(&mut *conn)
    .await?;
    for (login, superuser, bypass) in logins {
        if superuser || bypass {
            violations.push(IsolationViolation { subject: login, problem: "is a superuser or has BYPASSRLS".into() });
        }
    }
    Ok(violations)
}
