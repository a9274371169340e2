//! The one writer of a tenant's observed status: its phase, conditions and
//! placement, and what the reconciler records with them. The reconciler and
//! every workflow write through [`StatusWrite`], so each kind of change is
//! spelled once, and a guard (still pending, not yet deleted) travels with it.

use indigo_core::api::Placement;
use indigo_core::tenant::{Condition, Phase, TenantId};
use serde_json::{Value, json};
use sqlx::{PgConnection, Postgres, QueryBuilder};

/// The condition every tenant carries: whether it serves as its spec says.
pub const READY: &str = "Ready";

/// Which spec generation the status now reflects.
#[derive(Debug, Clone, Copy)]
pub enum SpecGeneration {
    /// The one the tenant has now.
    Current,
    /// The one the caller read and acted on.
    Seen(i64),
}

#[derive(Debug, Clone)]
enum Conditions {
    /// These, and no others.
    All(Vec<Condition>),
    /// This one in place of any of its type; the others kept.
    Replace(Condition),
}

#[derive(Debug, Clone, Copy, Default)]
enum Guard {
    #[default]
    Always,
    WhilePending,
    UnlessDeleted,
}

/// One change to a tenant's status; unset parts stay as they are.
#[derive(Debug, Clone, Default)]
#[must_use = "a status change does nothing until applied"]
pub struct StatusWrite {
    phase: Option<Phase>,
    conditions: Option<Conditions>,
    placement: Option<Option<Placement>>,
    observed: Option<SpecGeneration>,
    reconciled: bool,
    diff: Option<Value>,
    guard: Guard,
}

impl StatusWrite {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn phase(mut self, phase: Phase) -> Self {
        self.phase = Some(phase);
        self
    }

    /// The tenant's conditions are exactly these.
    pub fn conditions(mut self, conditions: Vec<Condition>) -> Self {
        self.conditions = Some(Conditions::All(conditions));
        self
    }

    /// Replaces the condition of `condition`'s type, keeping the others.
    pub fn condition(mut self, condition: Condition) -> Self {
        self.conditions = Some(Conditions::Replace(condition));
        self
    }

    /// Where the tenant's rows live now (`None`: nowhere). A change of
    /// placement is a new routing version: data planes follow it.
    pub fn placement(mut self, placement: Option<Placement>) -> Self {
        self.placement = Some(placement);
        self
    }

    /// The status reflects this spec generation, as of now.
    pub fn observed(mut self, generation: SpecGeneration) -> Self {
        self.observed = Some(generation);
        self.reconciled = true;
        self
    }

    /// The reconciler looked at the tenant now.
    pub fn reconciled(mut self) -> Self {
        self.reconciled = true;
        self
    }

    /// What the reconciler last changed, when it changed something.
    pub fn diff(mut self, diff: Option<Value>) -> Self {
        self.diff = diff;
        self
    }

    /// Only while the tenant's lifecycle is still `pending` (onboarding).
    pub fn while_pending(mut self) -> Self {
        self.guard = Guard::WhilePending;
        self
    }

    /// Not once the tenant is deleted (its last status stays).
    pub fn unless_deleted(mut self) -> Self {
        self.guard = Guard::UnlessDeleted;
        self
    }

    /// Writes the change; whether the tenant was changed (`false`: unknown,
    /// or held back by the guard).
    pub async fn apply(self, conn: &mut PgConnection, tenant: TenantId) -> Result<bool, sqlx::Error> {
        let mut query = QueryBuilder::<Postgres>::new("UPDATE tenants SET ");
        let mut set = query.separated(", ");
        if let Some(phase) = self.phase {
            set.push("phase = ").push_bind_unseparated(phase.as_str());
        }
        match self.conditions {
            Some(Conditions::All(all)) => {
                set.push("conditions = ").push_bind_unseparated(json!(all));
            }
            Some(Conditions::Replace(one)) => {
                set.push("conditions = COALESCE((SELECT jsonb_agg(c) FROM jsonb_array_elements(conditions) c WHERE c->>'type' <> ")
                    .push_bind_unseparated(one.kind.clone())
                    .push_unseparated("), '[]'::jsonb) || jsonb_build_array(")
                    .push_bind_unseparated(json!(one))
                    .push_unseparated("::jsonb)");
            }
            None => {}
        }
        if let Some(placement) = self.placement {
            set.push("placement = ").push_bind_unseparated(placement.map(|p| json!(p)));
        }
        match self.observed {
            Some(SpecGeneration::Current) => {
                set.push("observed_generation = generation");
            }
            Some(SpecGeneration::Seen(generation)) => {
                set.push("observed_generation = ").push_bind_unseparated(generation);
            }
            None => {}
        }
        if self.reconciled {
            set.push("last_reconciled_at = now()");
        }
        if let Some(diff) = self.diff {
            set.push("last_diff = ").push_bind_unseparated(diff);
        }
        query.push(" WHERE id = ").push_bind(tenant.0);
        match self.guard {
            Guard::Always => {}
            Guard::WhilePending => {
                query.push(" AND lifecycle = 'pending'");
            }
            Guard::UnlessDeleted => {
                query.push(" AND phase <> 'deleted'");
            }
        }
        Ok(query.build().execute(conn).await?.rows_affected() > 0)
    }
}

/// The reason of the tenant's condition of type `kind`, locking the tenant's
/// row until the transaction ends (so a change and what it replaced agree).
pub async fn reason_of(conn: &mut PgConnection, tenant: TenantId, kind: &str) -> Result<Option<String>, sqlx::Error> {
    let reason: Option<Option<String>> = sqlx::query_scalar(
        "SELECT (SELECT c->>'reason' FROM jsonb_array_elements(conditions) c WHERE c->>'type' = $2 LIMIT 1)
         FROM tenants WHERE id = $1 FOR UPDATE",
    )
    .bind(tenant.0)
    .bind(kind)
    .fetch_optional(conn)
    .await?;
    Ok(reason.flatten())
}
