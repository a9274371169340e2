//! The audit log (who changed what) and the event stream (what happened), both
//! written inside the transaction of the change they describe.

use indigo_core::api::{AuditEntry, Event};
use indigo_core::tenant::{Role, TenantId};
use serde_json::Value;
use sqlx::PgConnection;

/// Who is calling: the token's name (the audit log's actor), its role, and
/// its id (none for the control plane's own actors and the bootstrap token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub name: String,
    pub role: Role,
    pub token_id: Option<uuid::Uuid>,
}

impl Actor {
    pub const BOOTSTRAP_ADMIN: &'static str = "bootstrap-admin";

    /// The names the control plane acts under itself (with [`Actor::system`]),
    /// which no API token may take: the audit log would credit it with their work.
    pub const SYSTEM_NAMES: &'static [&'static str] = &[
        Self::BOOTSTRAP_ADMIN,
        "reconciler",
        "onboarding",
        "offboarding",
        "tier-change",
        "stripe-webhook",
        "indigo-up-demo",
    ];

    /// The control plane itself, acting on its own behalf.
    pub fn system(name: &str) -> Self {
        Self { name: name.to_owned(), role: Role::Admin, token_id: None }
    }

    /// Refuses a caller whose role is below `needed`.
    pub fn require(&self, needed: Role) -> Result<(), Forbidden> {
        if self.role >= needed { Ok(()) } else { Err(Forbidden { needed, have: self.role, actor: self.name.clone() }) }
    }
}

/// A caller acting above its role.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("this needs the {needed} role; the token `{actor}` has {have}")]
pub struct Forbidden {
    pub needed: Role,
    pub have: Role,
    pub actor: String,
}

/// The channel on which every new event id is announced (NOTIFY).
pub const EVENTS_CHANNEL: &str = "indigo_events";

/// One audit-log line to append.
pub struct Audit<'a> {
    pub actor: &'a Actor,
    pub action: &'a str,
    pub tenant_id: Option<TenantId>,
    pub request_id: Option<&'a str>,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

impl Audit<'_> {
    pub async fn append(self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO audit_log (actor, role, action, tenant_id, request_id, before, after, token_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&self.actor.name)
        .bind(self.actor.role.as_str())
        .bind(self.action)
        .bind(self.tenant_id.map(|t| t.0))
        .bind(self.request_id)
        .bind(self.before)
        .bind(self.after)
        .bind(self.actor.token_id)
        .execute(conn)
        .await?;
        Ok(())
    }
}

/// Records an event and announces it to listeners once the transaction commits.
pub async fn publish(
    conn: &mut PgConnection,
    tenant_id: Option<TenantId>,
    kind: &str,
    message: &str,
    data: Value,
) -> Result<i64, sqlx::Error> {
    let id: i64 =
        sqlx::query_scalar("INSERT INTO events (tenant_id, kind, message, data) VALUES ($1, $2, $3, $4) RETURNING id")
            .bind(tenant_id.map(|t| t.0))
            .bind(kind)
            .bind(message)
            .bind(&data)
            .fetch_one(&mut *conn)
            .await?;
    sqlx::query("SELECT pg_notify($1, $2)").bind(EVENTS_CHANNEL).bind(id.to_string()).execute(conn).await?;
    Ok(id)
}

/// Which events or audit entries to read: after a cursor, optionally for one tenant.
#[derive(Debug, Clone, Default)]
pub struct Window {
    pub tenant_id: Option<TenantId>,
    pub after: i64,
    pub limit: i64,
    pub kind: Option<String>,
}

#[derive(sqlx::FromRow)]
struct EventRow {
    id: i64,
    tenant_id: Option<uuid::Uuid>,
    kind: String,
    message: String,
    data: Value,
    created_at: chrono::DateTime<chrono::Utc>,
}

pub async fn events(conn: &mut PgConnection, window: &Window) -> Result<Vec<Event>, sqlx::Error> {
    let rows: Vec<EventRow> = sqlx::query_as(
        "SELECT id, tenant_id, kind, message, data, created_at FROM events
         WHERE id > $1 AND ($2::uuid IS NULL OR tenant_id = $2) AND ($3::text IS NULL OR kind = $3)
         ORDER BY id LIMIT $4",
    )
    .bind(window.after)
    .bind(window.tenant_id.map(|t| t.0))
    .bind(&window.kind)
    .bind(window.limit)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Event {
            id: r.id,
            tenant_id: r.tenant_id.map(TenantId),
            kind: r.kind,
            message: r.message,
            data: r.data,
            created_at: r.created_at,
        })
        .collect())
}

#[derive(sqlx::FromRow)]
struct AuditRow {
    id: i64,
    at: chrono::DateTime<chrono::Utc>,
    actor: String,
    role: String,
    action: String,
    tenant_id: Option<uuid::Uuid>,
    request_id: Option<String>,
    before: Option<Value>,
    after: Option<Value>,
    token_id: Option<uuid::Uuid>,
}

pub async fn audit_entries(conn: &mut PgConnection, window: &Window) -> anyhow::Result<Vec<AuditEntry>> {
    let rows: Vec<AuditRow> = sqlx::query_as(
        "SELECT id, at, actor, role, action, tenant_id, request_id, before, after, token_id FROM audit_log
         WHERE id > $1 AND ($2::uuid IS NULL OR tenant_id = $2) AND ($3::text IS NULL OR action = $3)
         ORDER BY id LIMIT $4",
    )
    .bind(window.after)
    .bind(window.tenant_id.map(|t| t.0))
    .bind(&window.kind)
    .bind(window.limit)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(AuditEntry {
                id: r.id,
                at: r.at,
                actor: r.actor,
                role: r.role.parse()?,
                action: r.action,
                tenant_id: r.tenant_id.map(TenantId),
                request_id: r.request_id,
                before: r.before,
                after: r.after,
                token_id: r.token_id,
            })
        })
        .collect()
}
