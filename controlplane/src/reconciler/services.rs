//! The fleet's data-plane services, a controller of their own beside the
//! tenants': the pool's service kept at its plan's replicas and autoscaling
//! range, and services no tenant owns any more removed. A silo tenant's own
//! service is its tenant's reconcile. One replica at a time makes a pass (a
//! singleton lock), since they all act on the same services.

use std::sync::Arc;
use std::time::Duration;

use indigo_core::tenant::{Slug, TenantId};
use serde_json::json;

use super::plan::Action;
use super::queue::Queue;
use super::{Context, ReconcileError, describe};
use crate::journal;
use crate::providers::{
    ComputeProvider, DatabaseProvider, POOL_SERVICE, SERVICE_PREFIX, ServiceSpec, silo_service_name,
};
use crate::runtime::{self, jittered};

/// The singleton lock of a pass over the fleet's services.
const SINGLETON: &str = "indigo:fleet-services";

pub struct FleetServices<P> {
    ctx: Arc<Context<P>>,
    /// The tenants' queue: a silo tenant's dead replica wakes its reconcile.
    queue: Arc<Queue>,
}

impl<P: DatabaseProvider> FleetServices<P> {
    pub fn new(ctx: Arc<Context<P>>, queue: Arc<Queue>) -> Self {
        Self { ctx, queue }
    }

    /// Passes until aborted: at each resync, and at once when a replica dies
    /// (its tenant's service is that tenant's reconcile; the pool's, this).
    pub async fn run_forever(self) {
        let Some(compute) = self.ctx.compute.clone() else { return };
        let mut drift = compute.drift();
        loop {
            let pass = runtime::as_singleton(&self.ctx.db, SINGLETON, self.reconcile(compute.as_ref()));
            let next = match pass.await {
                Ok(_) => jittered(self.ctx.settings.resync),
                Err(error) => {
                    tracing::warn!(%error, "reconciling the data-plane services failed; trying again shortly");
                    jittered(Duration::from_secs(2)).min(self.ctx.settings.resync)
                }
            };
            let resync = tokio::time::sleep(next);
            tokio::pin!(resync);
            loop {
                let Some(receiver) = drift.as_mut() else {
                    resync.as_mut().await;
                    break;
                };
                tokio::select! {
                    () = resync.as_mut() => break,
                    dead = receiver.recv() => match dead {
                        Ok(Some(tenant)) => self.queue.schedule_now(tenant),
                        // The pool's, or so many that some were missed: look at everything.
                        Ok(None) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => drift = None,
                    },
                }
            }
        }
    }

    /// One pass over the fleet's services; returns what it changed.
    pub async fn reconcile(&self, compute: &dyn ComputeProvider) -> Result<Vec<Action>, ReconcileError> {
        let mut changed = Vec::new();
        let wanted = ServiceSpec::pool(self.ctx.plans.pool());
        let actual = compute.observe_service(POOL_SERVICE).await?;
        self.ctx.stats.saw_service(&wanted, actual.as_ref());
        if !actual.as_ref().is_some_and(|a| wanted.satisfied_by(a)) {
            let now = compute.ensure_service(&wanted).await?;
            self.ctx.stats.saw_service(&wanted, Some(&now));
            let action = match &actual {
                None => Action::CreateService { service: wanted.name.clone(), replicas: wanted.replicas },
                Some(a) if (wanted.replicas..=wanted.max()).contains(&a.replicas) => {
                    Action::SetAutoscaling { service: wanted.name.clone(), min: wanted.replicas, max: wanted.max() }
                }
                Some(a) => Action::ScaleService {
                    service: wanted.name.clone(),
                    running: a.replicas,
                    replicas: wanted.replicas,
                },
            };
            let kind = if actual.is_some() { "DriftRepaired" } else { "Reconciled" };
            self.publish(kind, &action).await?;
            changed.push(action);
        }
        let owned: Vec<(uuid::Uuid, String)> = sqlx::query_as(
            "SELECT id, slug FROM tenants
             WHERE lifecycle <> 'deleted' AND (isolation = 'silo' OR placement->>'isolation' = 'silo')",
        )
        .fetch_all(&self.ctx.db)
        .await?;
        let owned: std::collections::HashSet<String> = owned
            .into_iter()
            .filter_map(|(id, slug)| Some(silo_service_name(TenantId(id), &Slug::parse(&slug).ok()?)))
            .collect();
        for name in compute.list_services().await? {
            if name == POOL_SERVICE || !name.starts_with(SERVICE_PREFIX) || owned.contains(&name) {
                continue;
            }
            compute.delete_service(&name).await?;
            self.ctx.stats.services.lock().expect("stats lock").remove(&name);
            let action = Action::DeleteService { service: name };
            self.publish("OrphanRemoved", &action).await?;
            changed.push(action);
        }
        Ok(changed)
    }

    async fn publish(&self, kind: &str, action: &Action) -> Result<(), ReconcileError> {
        if kind == "DriftRepaired" {
            self.ctx.stats.count_drift_repaired();
        }
        let mut conn = self.ctx.db.acquire().await?;
        journal::publish(&mut conn, None, kind, &describe(action), json!({ "actions": [action] })).await?;
        Ok(())
    }
}
