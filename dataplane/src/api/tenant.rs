//! The tenant context of a request, and the only ways a handler reaches its
//! rows: a transaction ([`TenantCtx::begin`]) or, for a shopper's hot read,
//! one message ([`TenantCtx::read`]), both of which set `app.current_tenant`
//! (which row-level security binds), the caller's role and its subject for
//! that one transaction only; or, for the catalogue, a read on a connection
//! bound to the tenant ([`TenantCtx::read_catalogue`]), whose statement also
//! keeps only the token's tenant's rows.

use std::fmt::Write as _;
use std::pin::Pin;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::FromRequestParts;
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use indigo_core::api::Route;
use indigo_core::http::NUL_REFUSED;
use indigo_tenantdb::retry::connection_lost;
use std::sync::OnceLock;

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgArguments, PgConnection, PgRow};
use sqlx::query::QueryAs;
use sqlx::{FromRow, PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::StoreError;
use crate::auth::Claims;
use crate::catalogue_cache::{CatalogueCache, Entry, Lookup};
use crate::tenant_sessions::TenantSessions;

/// The verified caller and where its tenant's rows live.
#[derive(Clone)]
pub struct TenantCtx {
    pub claims: Arc<Claims>,
    pub route: Arc<Route>,
    pub(super) pool: PgPool,
    pub(super) sessions: Arc<TenantSessions>,
    pub(super) cache: Option<Arc<CatalogueCache>>,
}

/// A JSON answer already serialized: what the catalogue cache holds.
pub struct JsonBody(Bytes);

impl IntoResponse for JsonBody {
    fn into_response(self) -> Response {
        ([(CONTENT_TYPE, "application/json")], self.0).into_response()
    }
}

/// A read that runs in one round trip: prepared once on each connection under
/// `name`, then executed by name in the same simple-query message that sets
/// the tenant context. PostgreSQL runs a message of several statements as one
/// implicit transaction, so `SET LOCAL` covers the read and ends with it —
/// whether it succeeds or fails — and the plan is the cached one.
pub struct OneTripRead {
    /// Unique among the data plane's statements; `indigo_` keeps it apart
    /// from the names sqlx gives its own.
    pub name: &'static str,
    /// The parameters' types, as `PREPARE` lists them: `uuid, text`.
    pub parameters: &'static str,
    pub sql: &'static str,
}

/// A read of the catalogue: its answer is the same for every caller of the
/// tenant, so it runs on a connection bound to the tenant (see
/// [`crate::tenant_sessions`]). It selects `tenant_id` among its columns, and
/// its parameters start at `$2`: `$1` is the token's tenant, which every row
/// it answers must have (a filter around the read, so no read can leave it
/// out). Row-level security binds the session's tenant as well, so a row
/// comes back only if both are its tenant.
pub struct CatalogueRead {
    sql: &'static str,
    checked: OnceLock<String>,
}

impl CatalogueRead {
    pub const fn new(sql: &'static str) -> Self {
        Self { sql, checked: OnceLock::new() }
    }

    /// The statement that runs: the read's rows of `$1`'s tenant.
    fn checked(&'static self) -> &'static str {
        self.checked.get_or_init(|| format!("SELECT * FROM ({}) AS read WHERE read.tenant_id = $1", self.sql))
    }
}

/// A catalogue read's statement with its parameters bound.
pub type CatalogueQuery<T> = QueryAs<'static, Postgres, T, PgArguments>;

/// A catalogue read's rows being fetched on a connection.
type Fetched<'c, Rows> = Pin<Box<dyn Future<Output = Result<Rows, sqlx::Error>> + Send + 'c>>;

/// A parameter of a [`OneTripRead`], written into the message as a literal.
/// Only these shapes can be written, each quoted so that no value can end its
/// literal: ids print only hex digits and dashes; text is quoted as
/// PostgreSQL's `quote_literal` does.
#[derive(Debug, Clone, Copy)]
pub enum Literal<'a> {
    Uuid(Uuid),
    Text(&'a str),
    Null,
}

impl<'a> From<Option<&'a str>> for Literal<'a> {
    fn from(text: Option<&'a str>) -> Self {
        text.map_or(Literal::Null, Literal::Text)
    }
}

impl Literal<'_> {
    fn write_to(self, sql: &mut String) -> Result<(), StoreError> {
        match self {
            Literal::Uuid(id) => write!(sql, "'{id}'").expect("writing to a String"),
            Literal::Null => sql.push_str("NULL"),
            Literal::Text(text) => {
                // A NUL would end the message's text early (the protocol's strings are C strings).
                if text.contains('\0') {
                    return Err(StoreError::invalid("invalid_text", NUL_REFUSED));
                }
                // As quote_literal: right whatever `standard_conforming_strings` says.
                if text.contains('\\') {
                    sql.push('E');
                }
                sql.push('\'');
                for c in text.chars() {
                    if c == '\'' || c == '\\' {
                        sql.push(c);
                    }
                    sql.push(c);
                }
                sql.push('\'');
            }
        }
        Ok(())
    }
}

/// SQLSTATE of `EXECUTE` naming a statement this connection has not prepared.
const NOT_PREPARED: &str = "26000";

impl TenantCtx {
    /// The statements that set this caller's context for the current
    /// transaction only: the tenant (a parsed UUID), the role (one of three
    /// names) and the subject (whatever the token's issuer chose, quoted).
    fn write_context(&self, message: &mut String) -> Result<(), StoreError> {
        write!(
            message,
            // `current_role` is a keyword, so that part of the name is quoted.
            "SET LOCAL app.current_tenant = '{}'; SET LOCAL app.\"current_role\" = '{}'; SET LOCAL app.current_subject = ",
            self.claims.tenant_id,
            self.claims.role.as_str(),
        )
        .expect("writing to a String");
        Literal::Text(&self.claims.sub).write_to(message)
    }

    /// A transaction bound to this tenant and caller, for reading. BEGIN and
    /// the context travel in one message, so the context costs no extra round trip.
    #[tracing::instrument(level = "debug", name = "db.begin", skip_all,
        fields(otel.kind = "client", db.system = "postgresql"))]
    pub async fn begin(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        let mut statement = String::from("BEGIN; ");
        self.write_context(&mut statement)?;
        self.start(statement).await
    }

    /// A transaction bound to this tenant and caller that writes: it holds the
    /// tenant's write lock shared, so while a move's cut-over or a restore
    /// holds the tenant's writes it waits here, before it has read or locked
    /// a row (reads go on). The lock travels in the same message as BEGIN.
    /// Only for handlers of unsafe methods (POST, PATCH, …): the gate replays
    /// those on the tenant's new database when they meet a move's fence.
    #[tracing::instrument(level = "debug", name = "db.begin", skip_all,
        fields(otel.kind = "client", db.system = "postgresql"))]
    pub async fn begin_write(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        let mut statement = String::from("BEGIN; ");
        self.write_context(&mut statement)?;
        statement.push_str("; ");
        statement.push_str(&indigo_tenantdb::moves::write_lock_statement(self.claims.tenant_id));
        self.start(statement).await
    }

    /// A transaction begun with `statement`. The pool lends its connections
    /// without pinging them first (a round trip per request); one that lost
    /// its server fails here, before anything ran, and the transaction is
    /// begun once more on another.
    async fn start(&self, statement: String) -> Result<Transaction<'static, Postgres>, StoreError> {
        Ok(on_a_live_connection(|| self.pool.begin_with(sqlx::AssertSqlSafe(statement.clone()))).await?)
    }

    /// The rows of `read` for this tenant and caller, in one round trip (see
    /// [`OneTripRead`]); the first use on a connection prepares it first.
    #[tracing::instrument(level = "debug", name = "db.read", skip_all,
        fields(otel.kind = "client", db.system = "postgresql", db.statement = read.name))]
    pub async fn read<T>(&self, read: &OneTripRead, arguments: &[Literal<'_>]) -> Result<Vec<T>, StoreError>
    where
        T: for<'r> FromRow<'r, PgRow>,
    {
        let mut message = String::with_capacity(256);
        self.write_context(&mut message)?;
        write!(message, "; EXECUTE {}(", read.name).expect("writing to a String");
        for (n, argument) in arguments.iter().enumerate() {
            if n > 0 {
                message.push_str(", ");
            }
            argument.write_to(&mut message)?;
        }
        message.push(')');

        // Read again on another connection: the read changes nothing (see `start`).
        let rows = on_a_live_connection(|| self.run_once(read, &message)).await?;
        Ok(rows.iter().map(T::from_row).collect::<Result<_, _>>()?)
    }

    async fn run_once(&self, read: &OneTripRead, message: &str) -> Result<Vec<PgRow>, sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        match run(&mut conn, message).await {
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(NOT_PREPARED) => {
                let prepare = format!("PREPARE {}({}) AS {}", read.name, read.parameters, read.sql);
                sqlx::raw_sql(sqlx::AssertSqlSafe(prepare)).execute(&mut *conn).await?;
                run(&mut conn, message).await
            }
            other => other,
        }
    }

    /// The rows of the catalogue read `read` for this tenant, its parameters
    /// from `$2` bound by `bind`: one round trip on a connection already
    /// bound to the tenant (see [`Self::on_a_bound_session`]).
    #[tracing::instrument(level = "debug", name = "db.read", skip_all,
        fields(otel.kind = "client", db.system = "postgresql"))]
    pub async fn read_catalogue<T>(
        &self,
        read: &'static CatalogueRead,
        bind: impl Fn(CatalogueQuery<T>) -> CatalogueQuery<T>,
    ) -> Result<Vec<T>, StoreError>
    where
        T: for<'r> FromRow<'r, PgRow> + Send + Unpin + 'static,
    {
        self.on_a_bound_session(read, bind, |query, conn| Box::pin(query.fetch_all(conn))).await
    }

    /// As [`Self::read_catalogue`], for a read of at most one row: the row
    /// comes straight back, without a stream collected into a list.
    #[tracing::instrument(level = "debug", name = "db.read", skip_all,
        fields(otel.kind = "client", db.system = "postgresql"))]
    pub async fn read_catalogue_one<T>(
        &self,
        read: &'static CatalogueRead,
        bind: impl Fn(CatalogueQuery<T>) -> CatalogueQuery<T>,
    ) -> Result<Option<T>, StoreError>
    where
        T: for<'r> FromRow<'r, PgRow> + Send + Unpin + 'static,
    {
        self.on_a_bound_session(read, bind, |query, conn| Box::pin(query.fetch_optional(conn))).await
    }

    /// `fetch` of the catalogue read `read`, its parameters bound by `bind`,
    /// on a connection bound to this tenant. An idle connection is not pinged
    /// before it is lent (a round trip per read); one that turns out to have
    /// lost its server is closed and the read, which changes nothing, runs
    /// again on another.
    async fn on_a_bound_session<T, Rows>(
        &self,
        read: &'static CatalogueRead,
        bind: impl Fn(CatalogueQuery<T>) -> CatalogueQuery<T>,
        fetch: impl for<'c> Fn(CatalogueQuery<T>, &'c mut PgConnection) -> Fetched<'c, Rows>,
    ) -> Result<Rows, StoreError>
    where
        T: for<'r> FromRow<'r, PgRow>,
    {
        let (bind, fetch) = (&bind, &fetch);
        let once = || async move {
            let mut session = self.sessions.acquire(self.claims.tenant_id).await?;
            let query = bind(sqlx::query_as(read.checked()).bind(self.claims.tenant_id.0));
            fetch(query, session.connection()).await.inspect_err(|error| session.discard_unless_usable(error))
        };
        Ok(on_a_live_connection(once).await?)
    }

    /// The catalogue read `entry` from the cache, or else from `read` (and
    /// then kept). Only for reads whose answer is the same for every caller of
    /// the tenant: the key holds the tenant and `entry`, nothing of the caller.
    pub async fn cached<T, F>(&self, entry: Entry, read: F) -> Result<JsonBody, StoreError>
    where
        T: serde::Serialize,
        F: Future<Output = Result<T, StoreError>>,
    {
        let slot = match &self.cache {
            Some(cache) => match cache.lookup(self.claims.tenant_id, self.route.routing_version, &entry).await {
                Lookup::Hit(body) => return Ok(JsonBody(body)),
                Lookup::Miss(slot) => Some((cache, slot)),
                Lookup::Bypass => None,
            },
            None => None,
        };
        let answer = read.await?;
        let body = Bytes::from(serde_json::to_vec(&answer).expect("catalogue answers serialize"));
        if let Some((cache, slot)) = slot {
            cache.store(slot, &body);
        }
        Ok(JsonBody(body))
    }

    /// A write to the tenant's catalogue committed: cached reads taken before
    /// it are not served again, by any replica. Call before answering.
    pub async fn catalogue_changed(&self) {
        if let Some(cache) = &self.cache {
            cache.changed(self.claims.tenant_id).await;
        }
    }

    /// The shopper this request acts for: the token's subject when its role is
    /// `customer`, none for the store's owner and staff, who see every
    /// customer. The database's `shopper_scope` policies enforce the same
    /// (policies/tenant_rls.sql); handlers filter on it as well, so that a
    /// shopper's answer never depends on one guard alone.
    pub fn shopper(&self) -> Option<&str> {
        (!self.claims.role.manages_catalogue()).then_some(self.claims.sub.as_str())
    }

    /// 403 `feature_not_in_plan` unless the tenant's plan has `feature`.
    pub fn require_feature(&self, feature: &'static str) -> Result<(), StoreError> {
        let plan = &self.route.plan;
        if plan.has_feature(feature) {
            Ok(())
        } else {
            Err(StoreError::NotInPlan { plan: plan.name.to_string(), feature })
        }
    }

    pub fn require_catalogue_role(&self) -> Result<(), StoreError> {
        if self.claims.role.manages_catalogue() {
            Ok(())
        } else {
            Err(StoreError::Forbidden("this needs the owner or staff role"))
        }
    }
}

/// Most connections of one database that a request finds dead in a row
/// before it gives up (503): each one found is closed, so a restarted server
/// costs each connection one failed attempt.
const MOST_LOST_CONNECTIONS: usize = 32;

/// The outcome of `attempt`, run again while it fails because its connection
/// had lost its server (before its statement ran).
async fn on_a_live_connection<T, Attempt>(attempt: impl Fn() -> Attempt) -> Result<T, sqlx::Error>
where
    Attempt: Future<Output = Result<T, sqlx::Error>>,
{
    let mut lost = 0;
    loop {
        match attempt().await {
            Err(error) if connection_lost(&error) && lost < MOST_LOST_CONNECTIONS => lost += 1,
            outcome => return outcome,
        }
    }
}

async fn run(conn: &mut PoolConnection<Postgres>, message: &str) -> Result<Vec<PgRow>, sqlx::Error> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(message)).fetch_all(&mut **conn).await
}

impl<S: Send + Sync> FromRequestParts<S> for TenantCtx {
    type Rejection = StoreError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        // Only the gate puts it there; a route outside the gate cannot have a tenant.
        parts.extensions.get::<TenantCtx>().cloned().ok_or(StoreError::Unauthorized("no tenant context".into()))
    }
}
