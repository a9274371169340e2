//! The tenant registry: each tenant's spec (desired) and status (observed), and
//! the changes operators make to the spec. Every change appends to the audit log
//! and publishes an event in the same transaction.

use std::fmt;

use indigo_core::api::{Page, Placement, Tenant, TenantSpec, TenantStatus};
use indigo_core::plan::Plan;
use indigo_core::tenant::{
    Condition, ConditionStatus, Email, InvalidField, Isolation, Lifecycle, Phase, Slug, TenantId, TenantName,
};
use serde_json::json;
use sqlx::PgConnection;

use crate::journal::Actor;
use crate::journal::{self, Audit};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("tenant `{0}` not found")]
    NotFound(String),
    #[error("slug `{0}` is already taken")]
    SlugTaken(Slug),
    #[error("tenant `{0}` is deleted; it can no longer change")]
    Deleted(Slug),
    #[error("tenant `{0}` is still being onboarded; only offboarding applies until its onboarding ends")]
    Pending(Slug),
    #[error("registry row for tenant {id} is unreadable: {problem}")]
    Corrupt { id: uuid::Uuid, problem: String },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// A tenant as named in a path: by id or by slug.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantRef {
    Id(TenantId),
    Slug(Slug),
}

impl TenantRef {
    pub fn parse(raw: &str) -> Result<Self, InvalidField> {
        match raw.parse::<TenantId>() {
            Ok(id) => Ok(Self::Id(id)),
            Err(_) => Slug::parse(raw).map(Self::Slug),
        }
    }
}

impl fmt::Display for TenantRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Id(id) => id.fmt(f),
            Self::Slug(slug) => slug.fmt(f),
        }
    }
}

/// A tenant to register, already validated.
pub struct NewTenant<'a> {
    pub slug: Slug,
    pub name: TenantName,
    pub owner_email: Email,
    pub plan: &'a Plan,
    /// `Pending` for a tenant onboarding will set up; `Active` for one placed directly.
    pub lifecycle: Lifecycle,
}

/// The result of a spec change: the tenant after it, and whether anything changed.
pub struct Change {
    pub tenant: Tenant,
    pub changed: bool,
}

/// Which tenants to list. `after` is the slug that ended the previous page.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub plan: Option<String>,
    pub lifecycle: Option<Lifecycle>,
    pub isolation: Option<Isolation>,
    pub phase: Option<Phase>,
    pub after: Option<String>,
    pub limit: i64,
}

macro_rules! tenant_columns {
    () => {
        "id, slug, name, owner_email, plan, isolation, lifecycle, generation, phase, conditions,
         placement, observed_generation, last_reconciled_at, created_at, updated_at"
    };
}

#[derive(sqlx::FromRow)]
struct TenantRow {
    id: uuid::Uuid,
    slug: String,
    name: String,
    owner_email: String,
    plan: String,
    isolation: String,
    lifecycle: String,
    generation: i64,
    phase: String,
    conditions: serde_json::Value,
    placement: Option<serde_json::Value>,
    observed_generation: i64,
    last_reconciled_at: Option<chrono::DateTime<chrono::Utc>>,
    created_at: chrono::DateTime<chrono::Utc>,
    updated_at: chrono::DateTime<chrono::Utc>,
}

impl TryFrom<TenantRow> for Tenant {
    type Error = RegistryError;

    fn try_from(row: TenantRow) -> Result<Self, Self::Error> {
        let corrupt = |problem: String| RegistryError::Corrupt { id: row.id, problem };
        let plan = serde_json::from_value(json!(row.plan)).map_err(|e| corrupt(format!("plan: {e}")))?;
        Ok(Tenant {
            id: TenantId(row.id),
            slug: Slug::parse(&row.slug).map_err(|e| corrupt(e.to_string()))?,
            name: row.name,
            owner_email: row.owner_email,
            spec: TenantSpec {
                plan,
                isolation: row.isolation.parse().map_err(|e| corrupt(format!("{e}")))?,
                lifecycle: row.lifecycle.parse().map_err(|e| corrupt(format!("{e}")))?,
                generation: row.generation,
            },
            status: TenantStatus {
                phase: row.phase.parse().map_err(|e| corrupt(format!("{e}")))?,
                conditions: serde_json::from_value(row.conditions).map_err(|e| corrupt(format!("conditions: {e}")))?,
                placement: row
                    .placement
                    .map(serde_json::from_value::<Placement>)
                    .transpose()
                    .map_err(|e| corrupt(format!("placement: {e}")))?,
                observed_generation: row.observed_generation,
                last_reconciled_at: row.last_reconciled_at,
            },
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

async fn fetch(conn: &mut PgConnection, tenant: &TenantRef, for_update: bool) -> Result<Tenant, RegistryError> {
    let query = match (tenant, for_update) {
        (TenantRef::Id(_), false) => concat!("SELECT ", tenant_columns!(), " FROM tenants WHERE id = $1::uuid"),
        (TenantRef::Id(_), true) => {
            concat!("SELECT ", tenant_columns!(), " FROM tenants WHERE id = $1::uuid FOR UPDATE")
        }
        (TenantRef::Slug(_), false) => concat!("SELECT ", tenant_columns!(), " FROM tenants WHERE slug = $1"),
        (TenantRef::Slug(_), true) => {
            concat!("SELECT ", tenant_columns!(), " FROM tenants WHERE slug = $1 FOR UPDATE")
        }
    };
    let row: Option<TenantRow> = sqlx::query_as(query).bind(tenant.to_string()).fetch_optional(conn).await?;
    row.ok_or_else(|| RegistryError::NotFound(tenant.to_string()))?.try_into()
}

pub async fn get(conn: &mut PgConnection, tenant: &TenantRef) -> Result<Tenant, RegistryError> {
    fetch(conn, tenant, false).await
}

pub async fn list(conn: &mut PgConnection, filter: &ListFilter) -> Result<Page<Tenant>, RegistryError> {
    let rows: Vec<TenantRow> = sqlx::query_as(concat!(
        "SELECT ",
        tenant_columns!(),
        " FROM tenants
         WHERE ($1::text IS NULL OR plan = $1)
           AND ($2::text IS NULL OR lifecycle = $2)
           AND ($3::text IS NULL OR isolation = $3)
           AND ($4::text IS NULL OR phase = $4)
           AND ($5::text IS NULL OR slug > $5)
         ORDER BY slug
         LIMIT $6"
    ))
    .bind(&filter.plan)
    .bind(filter.lifecycle.map(Lifecycle::as_str))
    .bind(filter.isolation.map(Isolation::as_str))
    .bind(filter.phase.map(Phase::as_str))
    .bind(&filter.after)
    // One extra row tells whether there is a next page.
    .bind(filter.limit + 1)
    .fetch_all(conn)
    .await?;
    let mut items = rows.into_iter().map(Tenant::try_from).collect::<Result<Vec<_>, _>>()?;
    let next_cursor = if items.len() as i64 > filter.limit {
        items.truncate(filter.limit as usize);
        items.last().map(|t| t.slug.to_string())
    } else {
        None
    };
    Ok(Page { items, next_cursor })
}

fn awaiting_reconcile() -> Condition {
    Condition {
        kind: "Ready".into(),
        status: ConditionStatus::Unknown,
        reason: "AwaitingReconcile".into(),
        message: "recorded; the control plane has not acted on this tenant yet".into(),
        last_transition_at: chrono::Utc::now(),
    }
}

pub async fn create(
    conn: &mut PgConnection,
    actor: &Actor,
    request_id: Option<&str>,
    new: NewTenant<'_>,
) -> Result<Tenant, RegistryError> {
    let id = TenantId::new();
    let inserted: Result<TenantRow, sqlx::Error> = sqlx::query_as(concat!(
        "INSERT INTO tenants (id, slug, name, owner_email, plan, isolation, conditions, lifecycle)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING ",
        tenant_columns!()
    ))
    .bind(id.0)
    .bind(new.slug.as_str())
    .bind(new.name.as_str())
    .bind(new.owner_email.as_str())
    .bind(new.plan.name.as_str())
    .bind(new.plan.isolation.as_str())
    .bind(json!([awaiting_reconcile()]))
    .bind(new.lifecycle.as_str())
    .fetch_one(&mut *conn)
    .await;
    let tenant: Tenant = match inserted {
        Ok(row) => row.try_into()?,
        Err(sqlx::Error::Database(e)) if e.constraint() == Some("tenants_slug_key") => {
            return Err(RegistryError::SlugTaken(new.slug));
        }
        Err(e) => return Err(e.into()),
    };
    Audit {
        actor,
        action: "tenant.create",
        tenant_id: Some(tenant.id),
        request_id,
        before: None,
        after: Some(json!(tenant)),
    }
    .append(conn)
    .await?;
    journal::publish(
        conn,
        Some(tenant.id),
        "TenantRegistered",
        &format!("tenant {} registered on plan {}", tenant.slug, tenant.spec.plan),
        json!({ "slug": tenant.slug, "plan": tenant.spec.plan, "isolation": tenant.spec.isolation }),
    )
    .await?;
    Ok(tenant)
}

/// A change to a tenant's spec, with how the audit log and events name it.
struct SpecChange<'a> {
    plan: Option<&'a Plan>,
    lifecycle: Option<Lifecycle>,
    action: &'static str,
    event: &'static str,
    message: String,
    reason: Option<&'a str>,
}

impl SpecChange<'_> {
    fn already_holds(&self, tenant: &Tenant) -> bool {
        self.plan.is_none_or(|p| p.name == tenant.spec.plan)
            && self.lifecycle.is_none_or(|l| l == tenant.spec.lifecycle)
    }
}

/// Applies one spec change under a row lock; a change to what already holds is a no-op.
async fn change_spec(
    conn: &mut PgConnection,
    actor: &Actor,
    request_id: Option<&str>,
    tenant: &TenantRef,
    change: SpecChange<'_>,
) -> Result<Change, RegistryError> {
    let before = fetch(conn, tenant, true).await?;
    if change.already_holds(&before) {
        return Ok(Change { tenant: before, changed: false });
    }
    if before.spec.lifecycle == Lifecycle::Deleted {
        return Err(RegistryError::Deleted(before.slug));
    }
    if before.spec.lifecycle == Lifecycle::Pending && change.lifecycle != Some(Lifecycle::Deleted) {
        return Err(RegistryError::Pending(before.slug));
    }
    let row: TenantRow = sqlx::query_as(concat!(
        "UPDATE tenants SET plan = COALESCE($2, plan), isolation = COALESCE($3, isolation),
                            lifecycle = COALESCE($4, lifecycle)
         WHERE id = $1 RETURNING ",
        tenant_columns!()
    ))
    .bind(before.id.0)
    .bind(change.plan.map(|p| p.name.as_str()))
    .bind(change.plan.map(|p| p.isolation.as_str()))
    .bind(change.lifecycle.map(Lifecycle::as_str))
    .fetch_one(&mut *conn)
    .await?;
    let after: Tenant = row.try_into()?;
    Audit {
        actor,
        action: change.action,
        tenant_id: Some(after.id),
        request_id,
        before: Some(json!(before)),
        after: Some(json!(after)),
    }
    .append(conn)
    .await?;
    journal::publish(
        conn,
        Some(after.id),
        change.event,
        &change.message,
        json!({
            "generation": after.spec.generation,
            "plan": after.spec.plan,
            "lifecycle": after.spec.lifecycle,
            "reason": change.reason,
        }),
    )
    .await?;
    Ok(Change { tenant: after, changed: true })
}

pub async fn change_plan(
    conn: &mut PgConnection,
    actor: &Actor,
    request_id: Option<&str>,
    tenant: &TenantRef,
    plan: &Plan,
) -> Result<Change, RegistryError> {
    let change = SpecChange {
        plan: Some(plan),
        lifecycle: None,
        action: "tenant.plan",
        event: "PlanChanged",
        message: format!("plan of {tenant} changed to {}", plan.name),
        reason: None,
    };
    change_spec(conn, actor, request_id, tenant, change).await
}

pub async fn set_lifecycle(
    conn: &mut PgConnection,
    actor: &Actor,
    request_id: Option<&str>,
    tenant: &TenantRef,
    lifecycle: Lifecycle,
    reason: Option<&str>,
) -> Result<Change, RegistryError> {
    let (action, event, verb) = match lifecycle {
        Lifecycle::Pending => ("tenant.pending", "TenantPending", "set pending"),
        Lifecycle::Active => ("tenant.resume", "TenantResumed", "resumed"),
        Lifecycle::Suspended => ("tenant.suspend", "TenantSuspended", "suspended"),
        Lifecycle::Deleted => ("tenant.delete", "TenantDeletionRequested", "marked for deletion"),
    };
    let message = match reason {
        Some(reason) => format!("tenant {tenant} {verb}: {reason}"),
        None => format!("tenant {tenant} {verb}"),
    };
    let change = SpecChange { plan: None, lifecycle: Some(lifecycle), action, event, message, reason };
    change_spec(conn, actor, request_id, tenant, change).await
}

/// Moves a tenant's lifecycle from `from` to `to` as a workflow's own step
/// (activation at the end of onboarding, and its undo), which records its own
/// audit entry; whether the tenant was at `from`.
pub async fn advance_lifecycle(
    conn: &mut PgConnection,
    tenant: TenantId,
    from: Lifecycle,
    to: Lifecycle,
) -> Result<bool, sqlx::Error> {
    let moved = sqlx::query("UPDATE tenants SET lifecycle = $3 WHERE id = $1 AND lifecycle = $2")
        .bind(tenant.0)
        .bind(from.as_str())
        .bind(to.as_str())
        .execute(conn)
        .await?;
    Ok(moved.rows_affected() > 0)
}
