//! The pure half of reconciling: from a tenant's spec, its recorded status and
//! what the providers observe, decide the smallest set of actions that
//! converge, and the status that will then hold. No IO here, so every case is
//! a unit test.

use indigo_core::api::{Placement, Tenant};
use indigo_core::tenant::{Condition, Isolation, Lifecycle, Phase};
use serde::Serialize;

use crate::providers::{ServiceSpec, ServiceState, SiloState};
use crate::workflow::tier_change::CONDITION as TIER_CHANGE;

/// What the providers report about a tenant's resources.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observed {
    /// For a tenant placed in (or headed for) a silo: its database, if present.
    pub silo: Option<SiloState>,
    /// A silo tenant's dedicated data-plane service, when this control plane
    /// runs the compute (`None` otherwise).
    pub service: Option<ServiceView>,
    /// The last check of its usage against Stripe, when it is billed and was checked.
    pub billing_parity: Option<Parity>,
}

/// A tenant's usage at Stripe against what Indigo reported (`metering/parity.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parity {
    pub in_parity: bool,
    /// The numbers, for the condition.
    pub message: String,
}

/// A dedicated service: what the plan asks and what runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceView {
    pub wanted: ServiceSpec,
    pub actual: Option<ServiceState>,
}

/// One change to the world.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Place a new tenant: no resources needed beyond the shared pool.
    PlaceInPool,
    /// Create the dedicated database of a new silo tenant.
    CreateSilo,
    /// The silo database vanished: create it again.
    RecreateSilo,
    /// The silo's capacity is not what its plan says.
    ResizeSilo,
    /// Start the dedicated data-plane service of a silo tenant.
    CreateService { service: String, replicas: u32 },
    /// Bring the service to its plan's replicas (from `running`).
    ScaleService { service: String, running: u32, replicas: u32 },
    /// Set the service's autoscaling to its plan's range and policies again.
    SetAutoscaling { service: String, min: u32, max: u32 },
    /// Offboarding: stop the dedicated data-plane service.
    DeleteService { service: String },
    /// Offboarding: release the dedicated database.
    DeleteSilo,
    /// Offboarding: delete the tenant's rows from the pool.
    DeletePoolRows,
}

/// The reconciler's decision for one tenant.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub actions: Vec<Action>,
    /// The actions repair drift: the world moved away from a spec that had
    /// converged (a database dropped, a process killed, capacity changed by hand).
    pub drift: bool,
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

/// Decides what to do for `tenant` given what was `observed`.
pub fn decide(tenant: &Tenant, observed: &Observed) -> Decision {
    let placement = tenant.status.placement.as_ref();
    // The spec converged before and the world moved since: that is drift.
    let converged_before = placement.is_some() && tenant.status.observed_generation == tenant.spec.generation;
    if tenant.spec.lifecycle == Lifecycle::Pending {
        // Onboarding sets a pending tenant up, or leaves it failed for an operator.
        return Decision {
            actions: vec![],
            drift: false,
            phase: tenant.status.phase,
            placement: PlacementChange::Keep,
            conditions: tenant.status.conditions.clone(),
        };
    }
    if tenant.spec.lifecycle == Lifecycle::Deleted {
        let mut actions: Vec<Action> = observed
            .service
            .iter()
            .filter(|s| s.actual.is_some())
            .map(|s| Action::DeleteService { service: s.wanted.name.clone() })
            .collect();
        match placement.map(|p| p.isolation) {
            Some(Isolation::Silo) => actions.push(Action::DeleteSilo),
            Some(Isolation::Pool) => actions.push(Action::DeletePoolRows),
            None => {}
        }
        return Decision {
            actions,
            drift: false,
            phase: Phase::Deleted,
            placement: PlacementChange::Clear,
            conditions: vec![Condition::new("Ready", false, "Deleted", "offboarded: the tenant's data is released")],
        };
    }
    let mut actions = Vec::new();
    let mut conditions = Vec::new();
    let mut healthy = true;
    let mut drift = false;
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
            conditions.push(Condition::new(
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
        (Some(_), Isolation::Silo) => match &observed.silo {
            None => {
                actions.push(Action::RecreateSilo);
                drift = true;
                PlacementChange::Silo
            }
            Some(silo) => {
                if !silo.sized {
                    actions.push(Action::ResizeSilo);
                    drift |= converged_before;
                }
                PlacementChange::Keep
            }
        },
        (Some(_), Isolation::Pool) => PlacementChange::Keep,
    };
    let serves_from_silo = placement.map_or(tenant.spec.isolation, |p| p.isolation) == Isolation::Silo;
    if let Some(service) = observed.service.as_ref().filter(|_| serves_from_silo) {
        let (name, replicas) = (service.wanted.name.clone(), service.wanted.replicas);
        match &service.actual {
            None => {
                drift |= converged_before && placement.is_some_and(|p| p.service.is_some());
                actions.push(Action::CreateService { service: name, replicas });
            }
            Some(actual) if !service.wanted.satisfied_by(actual) => {
                drift |= converged_before;
                let wanted = &service.wanted;
                actions.push(if (wanted.replicas..=wanted.max()).contains(&actual.replicas) {
                    Action::SetAutoscaling { service: name, min: wanted.replicas, max: wanted.max() }
                } else {
                    Action::ScaleService { service: name, running: actual.replicas, replicas }
                });
            }
            Some(_) => {}
        }
    }
    if healthy {
        conditions.push(Condition::new("PlacementMatchesSpec", true, "Placed", "the data is where the spec says"));
    }
    if let Some(parity) = &observed.billing_parity {
        let reason = if parity.in_parity { "InParity" } else { "UsageMismatch" };
        conditions.push(Condition::new("BillingParity", parity.in_parity, reason, parity.message.clone()));
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
            Phase::Ready => Condition::new("Ready", true, "Converged", "serving; observed state matches the spec"),
            Phase::Suspended => Condition::new("Ready", false, "Suspended", "not serving: the tenant is suspended"),
            _ => Condition::new("Ready", ready, "Degraded", "serving, but not everything matches the spec"),
        },
    );
    // Conditions that workflows own stay as their workflow left them.
    conditions.extend(tenant.status.conditions.iter().filter(|c| c.kind == TIER_CHANGE).cloned());
    Decision { actions, drift, phase, placement: placement_change, conditions }
}

/// After the actions: a silo that does not serve yet (a cluster still being
/// created) leaves the tenant provisioning rather than ready.
pub fn settle(decision: &mut Decision, silo: Option<&SiloState>) {
    let Some(waiting) = silo.and_then(|s| s.unavailable.as_deref()) else { return };
    if decision.phase != Phase::Ready {
        return;
    }
    decision.phase = Phase::Provisioning;
    if let Some(ready) = decision.conditions.iter_mut().find(|c| c.kind == "Ready") {
        *ready = Condition::new("Ready", false, "Provisioning", format!("waiting for the silo database: {waiting}"));
    }
}

/// Keeps a condition's transition time when its status did not change.
pub fn carry_transitions(previous: &[Condition], next: &mut [Condition]) {
    for condition in next {
        if let Some(old) = previous.iter().find(|c| c.kind == condition.kind && c.status == condition.status) {
            condition.last_transition_at = old.last_transition_at;
        }
    }
}

/// The placement to record after the actions succeeded. A silo's placement
/// follows what was observed of it (its cluster endpoint, its service's address).
pub fn resulting_placement(
    current: Option<&Placement>,
    change: &PlacementChange,
    pool_database: &str,
    silo: Option<&SiloState>,
    service: Option<&str>,
) -> Option<Placement> {
    let in_silo = |silo: &SiloState| Placement {
        isolation: Isolation::Silo,
        database: silo.database.clone(),
        cluster: silo.cluster.clone(),
        service: service.map(str::to_owned),
    };
    match change {
        PlacementChange::Keep => match (current, silo) {
            (Some(placed), Some(silo)) if placed.isolation == Isolation::Silo => Some(in_silo(silo)),
            _ => current.cloned(),
        },
        PlacementChange::Clear => None,
        PlacementChange::Pool => {
            Some(Placement { isolation: Isolation::Pool, database: pool_database.into(), cluster: None, service: None })
        }
        PlacementChange::Silo => silo.map(in_silo),
    }
}

#[cfg(test)]
mod tests {
    use indigo_core::api::{TenantSpec, TenantStatus};
    use indigo_core::tenant::{Slug, TenantId};

    use super::*;
    use crate::providers::Autoscaling;

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

    const NOTHING: Observed = Observed { silo: None, service: None, billing_parity: None };

    fn present() -> Observed {
        Observed {
            silo: Some(SiloState { database: "silo_shop".into(), cluster: None, sized: true, unavailable: None }),
            service: None,
            billing_parity: None,
        }
    }

    fn with_service(mut observed: Observed, running: Option<u32>) -> Observed {
        observed.service = Some(ServiceView {
            wanted: ServiceSpec { replicas: 2, ..ServiceSpec::stopped("dp-shop".into(), None) },
            actual: running.map(|replicas| ServiceState {
                replicas,
                address: None,
                autoscaling: Autoscaling::NotScaled,
            }),
        });
        observed
    }

    fn converged(mut t: Tenant) -> Tenant {
        t.status.observed_generation = t.spec.generation;
        t
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
        // The service goes before the database it serves from.
        let d = decide(
            &tenant(Isolation::Silo, Lifecycle::Deleted, Some(Isolation::Silo)),
            &with_service(present(), Some(2)),
        );
        assert_eq!(d.actions, [Action::DeleteService { service: "dp-shop".into() }, Action::DeleteSilo]);
        let d = decide(&tenant(Isolation::Pool, Lifecycle::Deleted, Some(Isolation::Pool)), &NOTHING);
        assert_eq!(d.actions, [Action::DeletePoolRows]);
        let d = decide(&tenant(Isolation::Pool, Lifecycle::Deleted, None), &NOTHING);
        assert!(d.actions.is_empty());
    }

    #[test]
    fn a_tier_change_condition_outlives_reconciles() {
        let mut t = tenant(Isolation::Pool, Lifecycle::Active, Some(Isolation::Pool));
        t.status.conditions = vec![
            Condition::new(TIER_CHANGE, false, "Failed", "the move failed"),
            Condition::new("PlacementMatchesSpec", false, "MoveRequired", "stale"),
        ];
        let d = decide(&t, &NOTHING);
        let kinds: Vec<&str> = d.conditions.iter().map(|c| c.kind.as_str()).collect();
        assert_eq!(kinds, ["Ready", "PlacementMatchesSpec", TIER_CHANGE]);
        assert_eq!(d.conditions[1].reason, "Placed");
    }

    #[test]
    fn a_new_silo_tenant_gets_its_service_and_a_spec_change_scales_it() {
        let d = decide(&tenant(Isolation::Silo, Lifecycle::Active, None), &with_service(NOTHING, None));
        assert_eq!(d.actions, [Action::CreateSilo, Action::CreateService { service: "dp-shop".into(), replicas: 2 }]);
        assert!(!d.drift);
        // Generation 1 not yet observed: the plan changed, this is not drift.
        let d = decide(
            &tenant(Isolation::Silo, Lifecycle::Active, Some(Isolation::Silo)),
            &with_service(present(), Some(1)),
        );
        assert_eq!(d.actions, [Action::ScaleService { service: "dp-shop".into(), running: 1, replicas: 2 }]);
        assert!(!d.drift);
        // A pool tenant has no dedicated service.
        let d =
            decide(&tenant(Isolation::Pool, Lifecycle::Active, Some(Isolation::Pool)), &with_service(NOTHING, None));
        assert!(d.actions.is_empty());
    }

    #[test]
    fn a_killed_replica_or_a_resized_cluster_of_a_converged_tenant_is_drift() {
        let t = converged(tenant(Isolation::Silo, Lifecycle::Active, Some(Isolation::Silo)));
        let d = decide(&t, &with_service(present(), Some(1)));
        assert_eq!(d.actions, [Action::ScaleService { service: "dp-shop".into(), running: 1, replicas: 2 }]);
        assert!(d.drift);
        let mut resized = present();
        resized.silo.as_mut().unwrap().sized = false;
        let d = decide(&t, &resized);
        assert_eq!((d.actions, d.drift), (vec![Action::ResizeSilo], true));
        let d = decide(&t, &NOTHING);
        assert_eq!((d.actions, d.drift), (vec![Action::RecreateSilo], true));
        assert!(decide(&t, &with_service(present(), Some(2))).actions.is_empty());
        // Autoscaling changed by hand, the replicas as wanted: only autoscaling is set again.
        let mut observed = with_service(present(), Some(2));
        observed.service.as_mut().unwrap().actual.as_mut().unwrap().autoscaling = Autoscaling::Broken;
        let d = decide(&t, &observed);
        assert_eq!(d.actions, [Action::SetAutoscaling { service: "dp-shop".into(), min: 2, max: 2 }]);
        assert!(d.drift);
    }

    #[test]
    fn a_silo_placement_follows_the_observed_endpoint_and_service() {
        let current = Placement { isolation: Isolation::Silo, database: "old".into(), cluster: None, service: None };
        let silo = SiloState {
            database: "indigo".into(),
            cluster: Some("c.rds.example".into()),
            sized: true,
            unavailable: None,
        };
        let placed = resulting_placement(
            Some(&current),
            &PlacementChange::Keep,
            "pool",
            Some(&silo),
            Some("http://127.0.0.1:9"),
        );
        assert_eq!(
            placed,
            Some(Placement {
                isolation: Isolation::Silo,
                database: "indigo".into(),
                cluster: Some("c.rds.example".into()),
                service: Some("http://127.0.0.1:9".into())
            })
        );
    }

    #[test]
    fn a_silo_still_being_created_leaves_the_tenant_provisioning() {
        let mut d = decide(&tenant(Isolation::Silo, Lifecycle::Active, None), &NOTHING);
        let creating = SiloState {
            database: "indigo".into(),
            cluster: Some("c.rds.example".into()),
            sized: true,
            unavailable: Some("its Aurora cluster is creating".into()),
        };
        settle(&mut d, Some(&creating));
        assert_eq!(d.phase, Phase::Provisioning);
        assert_eq!(d.conditions[0].reason, "Provisioning");
        assert!(d.conditions[0].message.contains("creating"));
        let mut d = decide(&tenant(Isolation::Silo, Lifecycle::Suspended, Some(Isolation::Silo)), &present());
        settle(&mut d, Some(&creating));
        assert_eq!(d.phase, Phase::Suspended, "only a tenant about to be ready waits");
    }
}
