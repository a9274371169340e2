//! The pure half of reconciling: from a tenant's spec, its recorded status and
//! what the providers observe, decide the smallest set of actions that
//! converge, and the status that will then hold. No IO here, so every case is
//! a unit test.

use indigo_core::api::{Placement, Tenant};
use indigo_core::tenant::{Condition, ConditionStatus, Isolation, Lifecycle, Phase};
use serde::Serialize;

use crate::workflow::tier_change::CONDITION as TIER_CHANGE;

/// What the providers report about a tenant's resources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// For a tenant placed in (or headed for) a silo: its database, if present.
    pub silo_database: Option<String>,
}

/// One change to the world.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Place a new tenant: no resources needed beyond the shared pool.
    PlaceInPool,
    /// Create the dedicated database of a new silo tenant.
    CreateSilo,
    /// The silo database vanished: create it again (drift).
    RecreateSilo,
    /// Offboarding: release the dedicated database.
    DeleteSilo,
    /// Offboarding: delete the tenant's rows from the pool.
    DeletePoolRows,
}

/// The reconciler's decision for one tenant.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub actions: Vec<Action>,
    pub phase: Phase,
    /// `None` means "leave as is" unless an action sets it.
    pub placement: PlacementChange,
    pub conditions: Vec<Condition>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PlacementChange {
    Keep,
    /// Set once the actions succeed; the database name comes from the provider.
    Pool,
    Silo,
    Clear,
}

fn condition(kind: &str, status: bool, reason: &str, message: impl Into<String>) -> Condition {
    Condition {
        kind: kind.into(),
        status: if status { ConditionStatus::True } else { ConditionStatus::False },
        reason: reason.into(),
        message: message.into(),
        last_transition_at: chrono::Utc::now(),
    }
}

/// Decides what to do for `tenant` given what was `observed`.
pub fn decide(tenant: &Tenant, observed: &Observed) -> Decision {
    let placement = tenant.status.placement.as_ref();
    if tenant.spec.lifecycle == Lifecycle::Pending {
        // Onboarding sets a pending tenant up, or leaves it failed for an operator.
        return Decision {
            actions: vec![],
            phase: tenant.status.phase,
            placement: PlacementChange::Keep,
            conditions: tenant.status.conditions.clone(),
        };
    }
    if tenant.spec.lifecycle == Lifecycle::Deleted {
        let actions = match placement.map(|p| p.isolation) {
            Some(Isolation::Silo) => vec![Action::DeleteSilo],
            Some(Isolation::Pool) => vec![Action::DeletePoolRows],
            None => vec![],
        };
        return Decision {
            actions,
            phase: Phase::Deleted,
            placement: PlacementChange::Clear,
            conditions: vec![condition("Ready", false, "Deleted", "offboarded: the tenant's data is released")],
        };
    }
    let mut actions = Vec::new();
    let mut conditions = Vec::new();
    let mut healthy = true;
    let placement_change = match (placement, tenant.spec.isolation) {
        (None, Isolation::Pool) => {
            actions.push(Action::PlaceInPool);
            PlacementChange::Pool
        }
        (None, Isolation::Silo) => {
            actions.push(Action::CreateSilo);
            PlacementChange::Silo
        }
        (Some(current), wanted) if current.isolation != wanted => {
            // Moving data between pool and silo is the tier-change workflow's job;
            // the tenant keeps serving from where its data is.
            healthy = false;
            conditions.push(condition(
                "PlacementMatchesSpec",
                false,
                "MoveRequired",
                format!(
                    "the spec asks for {wanted}, the data is in the {}; a tier-change move will bring it there",
                    current.isolation
                ),
            ));
            PlacementChange::Keep
        }
        (Some(current), Isolation::Silo) if observed.silo_database.as_deref() != Some(current.database.as_str()) => {
            actions.push(Action::RecreateSilo);
            PlacementChange::Silo
        }
        (Some(_), _) => PlacementChange::Keep,
    };
    if healthy {
        conditions.push(condition("PlacementMatchesSpec", true, "Placed", "the data is where the spec says"));
    }
    let phase = match (tenant.spec.lifecycle, healthy) {
        (Lifecycle::Suspended, _) => Phase::Suspended,
        (_, true) => Phase::Ready,
        (_, false) => Phase::Degraded,
    };
    let ready = phase == Phase::Ready;
    conditions.insert(
        0,
        match phase {
            Phase::Ready => condition("Ready", true, "Converged", "serving; observed state matches the spec"),
            Phase::Suspended => condition("Ready", false, "Suspended", "not serving: the tenant is suspended"),
            _ => condition("Ready", ready, "Degraded", "serving, but not everything matches the spec"),
        },
    );
    // Conditions that workflows own stay as their workflow left them.
    conditions.extend(tenant.status.conditions.iter().filter(|c| c.kind == TIER_CHANGE).cloned());
    Decision { actions, phase, placement: placement_change, conditions }
}

/// Keeps a condition's transition time when its status did not change.
pub fn carry_transitions(previous: &[Condition], next: &mut [Condition]) {
    for condition in next {
        if let Some(old) = previous.iter().find(|c| c.kind == condition.kind && c.status == condition.status) {
            condition.last_transition_at = old.last_transition_at;
        }
    }
}

/// The placement to record after the actions succeeded.
pub fn resulting_placement(
    current: Option<&Placement>,
    change: &PlacementChange,
    pool_database: &str,
    silo_database: Option<&str>,
) -> Option<Placement> {
    match change {
        PlacementChange::Keep => current.cloned(),
        PlacementChange::Clear => None,
        PlacementChange::Pool => {
            Some(Placement { isolation: Isolation::Pool, database: pool_database.into(), cluster: None, service: None })
        }
        PlacementChange::Silo => silo_database.map(|db| Placement {
            isolation: Isolation::Silo,
            database: db.into(),
            cluster: None,
            service: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use indigo_core::api::{TenantSpec, TenantStatus};
    use indigo_core::tenant::{Slug, TenantId};

    use super::*;

    fn tenant(isolation: Isolation, lifecycle: Lifecycle, placement: Option<Isolation>) -> Tenant {
        Tenant {
            id: TenantId::new(),
            slug: Slug::parse("shop").unwrap(),
            name: "Shop".into(),
            owner_email: "o@shop.example".into(),
            spec: TenantSpec {
                plan: serde_json::from_value(serde_json::json!("pro")).unwrap(),
                isolation,
                lifecycle,
                generation: 1,
            },
            status: TenantStatus {
                phase: Phase::Pending,
                conditions: vec![],
                placement: placement.map(|isolation| Placement {
                    isolation,
                    database: if isolation == Isolation::Pool { "pool".into() } else { "silo_shop".into() },
                    cluster: None,
                    service: None,
                }),
                observed_generation: 0,
                last_reconciled_at: None,
            },
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
        }
    }

    const NOTHING: Observed = Observed { silo_database: None };

    fn present() -> Observed {
        Observed { silo_database: Some("silo_shop".into()) }
    }

    #[test]
    fn a_new_pool_tenant_is_placed_and_ready() {
        let d = decide(&tenant(Isolation::Pool, Lifecycle::Active, None), &NOTHING);
        assert_eq!((d.actions, d.phase, d.placement), (vec![Action::PlaceInPool], Phase::Ready, PlacementChange::Pool));
    }

    #[test]
    fn a_new_silo_tenant_gets_its_database() {
        let d = decide(&tenant(Isolation::Silo, Lifecycle::Active, None), &NOTHING);
        assert_eq!((d.actions, d.placement), (vec![Action::CreateSilo], PlacementChange::Silo));
    }

    #[test]
    fn a_converged_tenant_needs_nothing() {
        assert!(
            decide(&tenant(Isolation::Pool, Lifecycle::Active, Some(Isolation::Pool)), &NOTHING).actions.is_empty()
        );
        let silo = decide(&tenant(Isolation::Silo, Lifecycle::Active, Some(Isolation::Silo)), &present());
        assert!(silo.actions.is_empty());
        assert_eq!(silo.phase, Phase::Ready);
    }

    #[test]
    fn a_vanished_silo_database_is_recreated() {
        let d = decide(&tenant(Isolation::Silo, Lifecycle::Active, Some(Isolation::Silo)), &NOTHING);
        assert_eq!(d.actions, [Action::RecreateSilo]);
    }

    #[test]
    fn an_isolation_change_waits_for_the_move_and_keeps_serving() {
        let d = decide(&tenant(Isolation::Silo, Lifecycle::Active, Some(Isolation::Pool)), &NOTHING);
        assert!(d.actions.is_empty());
        assert_eq!((d.phase, d.placement), (Phase::Degraded, PlacementChange::Keep));
        assert!(d.conditions.iter().any(|c| c.reason == "MoveRequired"));
    }

    #[test]
    fn suspension_and_deletion() {
        let d = decide(&tenant(Isolation::Pool, Lifecycle::Suspended, Some(Isolation::Pool)), &NOTHING);
        assert_eq!((d.phase, d.actions.len()), (Phase::Suspended, 0));
        let d = decide(&tenant(Isolation::Silo, Lifecycle::Deleted, Some(Isolation::Silo)), &present());
        assert_eq!(
            (d.actions, d.phase, d.placement),
            (vec![Action::DeleteSilo], Phase::Deleted, PlacementChange::Clear)
        );
        let d = decide(&tenant(Isolation::Pool, Lifecycle::Deleted, Some(Isolation::Pool)), &NOTHING);
        assert_eq!(d.actions, [Action::DeletePoolRows]);
        let d = decide(&tenant(Isolation::Pool, Lifecycle::Deleted, None), &NOTHING);
        assert!(d.actions.is_empty());
    }

    #[test]
    fn a_tier_change_condition_outlives_reconciles() {
        let mut t = tenant(Isolation::Pool, Lifecycle::Active, Some(Isolation::Pool));
        t.status.conditions = vec![
            condition(TIER_CHANGE, false, "Failed", "the move failed"),
            condition("PlacementMatchesSpec", false, "MoveRequired", "stale"),
        ];
        let d = decide(&t, &NOTHING);
        let kinds: Vec<&str> = d.conditions.iter().map(|c| c.kind.as_str()).collect();
        assert_eq!(kinds, ["Ready", "PlacementMatchesSpec", TIER_CHANGE]);
        assert_eq!(d.conditions[1].reason, "Placed");
    }
}
