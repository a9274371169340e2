//! The reconciler: keeps every tenant's actual resources matching its spec.
//! Level-triggered like kube-runtime's controller: [`reconcile`] re-reads the
//! spec, observes through the providers, decides with the pure [`plan::decide`],
//! applies the smallest change, writes status, and says when to look again.
//! Triggers are spec changes (NOTIFY), a periodic resync, and operators.

pub mod plan;
pub mod queue;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indigo_core::api::{ReconcilePlan, ReconcilerStatus, RlsAudit, Tenant};
use indigo_core::tenant::{Condition, ConditionStatus, Isolation, Lifecycle, Phase, TenantId};
use indigo_dataplane::schema::{APP_ROLE, audit_isolation};
use rand::Rng;
use serde_json::json;
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use tokio::time::Instant;

use self::plan::{Action, Decision, Observed};
use self::queue::Queue;
use crate::api::TenantDatabases;
use crate::db::{self, AdvisoryLock};
use crate::journal;
use crate::providers::{DatabaseProvider, ProviderError, SiloTenant};
use crate::registry::{self, RegistryError, TenantRef};

/// The channel the tenants table announces spec changes on.
pub const CHANGES_CHANNEL: &str = "indigo_tenant_changed";

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl ReconcileError {
    /// A CamelCase reason for conditions and metrics.
    pub fn reason(&self) -> String {
        match self {
            Self::Provider(ProviderError::Transient(_)) => "ProviderUnavailable".into(),
            Self::Provider(ProviderError::Permanent { reason, .. }) => reason.clone(),
            Self::Registry(RegistryError::NotFound(_)) => "TenantGone".into(),
            Self::Registry(_) | Self::Database(_) => "ControlDatabaseError".into(),
        }
    }
}

/// How often a converged tenant is looked at again, and how many at once.
#[derive(Debug, Clone)]
pub struct Settings {
    pub resync: Duration,
    pub workers: usize,
    pub rls_audit: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self { resync: Duration::from_secs(60), workers: 8, rls_audit: Duration::from_secs(60) }
    }
}

#[derive(Default)]
struct Stats {
    reconciles: AtomicU64,
    errors: AtomicU64,
    drift_repaired: AtomicU64,
    errors_by_reason: Mutex<BTreeMap<String, u64>>,
    last_full_resync: Mutex<Option<chrono::DateTime<chrono::Utc>>>,
    rls_audit: Mutex<Option<RlsAudit>>,
}

pub struct Context<P> {
    pub db: PgPool,
    pub provider: P,
    pub tenant_dbs: Arc<TenantDatabases>,
    pub settings: Settings,
    stats: Stats,
}

/// What one reconcile did.
#[derive(Debug)]
pub enum Outcome {
    Applied(Decision),
    Paused,
    /// A workflow (onboarding, offboarding) owns the tenant until it ends.
    InWorkflow,
    /// The tenant is fully offboarded; nothing more to look at.
    Finished,
}

fn needs_silo_observation(tenant: &Tenant) -> bool {
    let placed_in_silo = tenant.status.placement.as_ref().is_some_and(|p| p.isolation == Isolation::Silo);
    placed_in_silo || (tenant.status.placement.is_none() && tenant.spec.isolation == Isolation::Silo)
}

async fn observe<P: DatabaseProvider>(ctx: &Context<P>, tenant: &Tenant) -> Result<Observed, ReconcileError> {
    let silo = SiloTenant { id: tenant.id, slug: &tenant.slug };
    let silo_database = if needs_silo_observation(tenant) && tenant.spec.lifecycle != Lifecycle::Deleted {
        ctx.provider.observe_silo(&silo).await?
    } else {
        None
    };
    Ok(Observed { silo_database })
}

async fn read(conn: &mut PgConnection, id: TenantId) -> Result<(Tenant, bool), ReconcileError> {
    let tenant = registry::get(conn, &TenantRef::Id(id)).await?;
    let paused: bool = sqlx::query_scalar("SELECT reconcile_paused FROM tenants WHERE id = $1")
        .bind(id.0)
        .fetch_one(&mut *conn)
        .await?;
    Ok((tenant, paused))
}

/// What a reconcile of `id` would do now, without doing it.
pub async fn dry_run<P: DatabaseProvider>(ctx: &Context<P>, id: TenantId) -> Result<ReconcilePlan, ReconcileError> {
    let (tenant, paused) = read(&mut *ctx.db.acquire().await?, id).await?;
    let decision = plan::decide(&tenant, &observe(ctx, &tenant).await?);
    Ok(ReconcilePlan {
        tenant_id: id,
        generation: tenant.spec.generation,
        actions: decision.actions.iter().map(|a| json!(a)).collect(),
        phase: decision.phase,
        conditions: decision.conditions,
        paused,
    })
}

/// Brings one tenant to its spec, using one connection of the control database.
pub async fn reconcile<P: DatabaseProvider>(
    ctx: &Context<P>,
    conn: &mut PgConnection,
    id: TenantId,
) -> Result<Outcome, ReconcileError> {
    let (mut tenant, paused) = read(conn, id).await?;
    if paused {
        return Ok(Outcome::Paused);
    }
    if crate::workflow::active_for(conn, id).await?.is_some() {
        return Ok(Outcome::InWorkflow);
    }
    if suspend_if_unpaid(conn, &tenant).await? {
        tenant = read(conn, id).await?.0;
    }
    if tenant.spec.lifecycle == Lifecycle::Deleted
        && tenant.status.phase == Phase::Deleted
        && tenant.status.placement.is_none()
    {
        return Ok(Outcome::Finished);
    }
    let observed = observe(ctx, &tenant).await?;
    let mut decision = plan::decide(&tenant, &observed);
    let silo = SiloTenant { id: tenant.id, slug: &tenant.slug };
    let mut silo_database = observed.silo_database.clone();
    for action in &decision.actions {
        match action {
            Action::PlaceInPool => {}
            Action::CreateSilo | Action::RecreateSilo => silo_database = Some(ctx.provider.create_silo(&silo).await?),
            Action::DeleteSilo => ctx.provider.delete_silo(&silo).await?,
            Action::DeletePoolRows => {
                ctx.provider.delete_pool_rows(tenant.id).await?;
            }
        }
    }
    let placement = plan::resulting_placement(
        tenant.status.placement.as_ref(),
        &decision.placement,
        &ctx.tenant_dbs.pool_database,
        silo_database.as_deref(),
    );
    plan::carry_transitions(&tenant.status.conditions, &mut decision.conditions);
    let diff = (!decision.actions.is_empty())
        .then(|| json!({ "generation": tenant.spec.generation, "actions": decision.actions }));
    let mut tx = conn.begin().await?;
    sqlx::query(
        "UPDATE tenants SET phase = $2, conditions = $3, placement = $4, observed_generation = $5,
                last_reconciled_at = now(), last_diff = COALESCE($6, last_diff)
         WHERE id = $1",
    )
    .bind(id.0)
    .bind(decision.phase.as_str())
    .bind(json!(decision.conditions))
    .bind(placement.as_ref().map(|p| json!(p)))
    .bind(tenant.spec.generation)
    .bind(&diff)
    .execute(&mut *tx)
    .await?;
    if let Some(diff) = diff {
        let drift = decision.actions.contains(&Action::RecreateSilo);
        if drift {
            ctx.stats.drift_repaired.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("indigo_reconciler_drift_repaired_total").increment(1);
        }
        let (kind, message) = if drift {
            ("DriftRepaired", format!("{}: the silo database had vanished and was recreated", tenant.slug))
        } else {
            ("Reconciled", format!("{}: {} change(s) applied", tenant.slug, decision.actions.len()))
        };
        journal::publish(&mut tx, Some(id), kind, &message, diff).await?;
    }
    tx.commit().await?;
    Ok(Outcome::Applied(decision))
}

/// Suspends an active tenant whose grace period after a failed payment ended
/// unpaid; returns whether it did (the spec changed).
async fn suspend_if_unpaid(conn: &mut PgConnection, tenant: &Tenant) -> Result<bool, ReconcileError> {
    if tenant.spec.lifecycle != Lifecycle::Active {
        return Ok(false);
    }
    let mut tx = conn.begin().await?;
    let overdue = sqlx::query(
        "UPDATE tenant_billing SET payment_state = 'suspended_unpaid', updated_at = now()
         WHERE tenant_id = $1 AND payment_state = 'past_due' AND grace_until <= now()",
    )
    .bind(tenant.id.0)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        > 0;
    if overdue {
        let reason = "payment overdue: the grace period after a failed payment ended";
        let actor = crate::api::auth::Actor::system("reconciler");
        registry::set_lifecycle(&mut tx, &actor, None, &TenantRef::Id(tenant.id), Lifecycle::Suspended, Some(reason))
            .await?;
    }
    tx.commit().await?;
    Ok(overdue)
}

/// Records a failed reconcile in the tenant's conditions (an event on the first failure).
async fn record_failure(conn: &mut PgConnection, id: TenantId, error: &ReconcileError) -> Result<(), sqlx::Error> {
    let reason = error.reason();
    let condition = Condition {
        kind: "Ready".into(),
        status: ConditionStatus::False,
        reason: reason.clone(),
        message: error.to_string(),
        last_transition_at: chrono::Utc::now(),
    };
    let permanent = matches!(error, ReconcileError::Provider(ProviderError::Permanent { .. }));
    let mut tx = conn.begin().await?;
    // Replace the Ready condition, keep the others.
    let previous: Option<String> = sqlx::query_scalar(
        "UPDATE tenants t SET
             conditions = (SELECT COALESCE(jsonb_agg(c), '[]'::jsonb) FROM jsonb_array_elements(t.conditions) c WHERE c->>'type' <> 'Ready') || jsonb_build_array($2::jsonb),
             phase = CASE WHEN $3 THEN 'failed' ELSE phase END,
             last_reconciled_at = now()
         FROM (SELECT id, (SELECT c->>'reason' FROM jsonb_array_elements(conditions) c WHERE c->>'type' = 'Ready') AS reason
               FROM tenants WHERE id = $1 FOR UPDATE) old
         WHERE t.id = old.id
         RETURNING old.reason",
    )
    .bind(id.0)
    .bind(json!(condition))
    .bind(permanent)
    .fetch_optional(&mut *tx)
    .await?
    .flatten();
    if previous.as_deref() != Some(reason.as_str()) {
        journal::publish(&mut tx, Some(id), "ReconcileFailed", &error.to_string(), json!({ "reason": reason })).await?;
    }
    tx.commit().await
}

/// What the admin API may ask of the reconciler.
pub trait ReconcilerControl: Send + Sync {
    fn reconcile_now(&self, tenant: TenantId);
    fn dry_run(
        &self,
        tenant: TenantId,
    ) -> Pin<Box<dyn Future<Output = Result<ReconcilePlan, ReconcileError>> + Send + '_>>;
    fn status(&self) -> ReconcilerStatus;
}

/// The reconciler of one control-plane replica.
pub struct Controller<P> {
    ctx: Arc<Context<P>>,
    queue: Arc<Queue>,
}

impl<P> Clone for Controller<P> {
    fn clone(&self) -> Self {
        Self { ctx: self.ctx.clone(), queue: self.queue.clone() }
    }
}

impl<P: DatabaseProvider> ReconcilerControl for Controller<P> {
    fn reconcile_now(&self, tenant: TenantId) {
        self.queue.schedule_now(tenant);
    }

    fn dry_run(
        &self,
        tenant: TenantId,
    ) -> Pin<Box<dyn Future<Output = Result<ReconcilePlan, ReconcileError>> + Send + '_>> {
        Box::pin(dry_run(&self.ctx, tenant))
    }

    fn status(&self) -> ReconcilerStatus {
        let stats = &self.ctx.stats;
        ReconcilerStatus {
            running: true,
            workers: self.ctx.settings.workers,
            queue_depth: self.queue.depth(),
            in_progress: self.queue.running(),
            backing_off: self.queue.failing(),
            reconciles_total: stats.reconciles.load(Ordering::Relaxed),
            errors_total: stats.errors.load(Ordering::Relaxed),
            errors_by_reason: stats.errors_by_reason.lock().expect("stats lock").clone(),
            drift_repaired_total: stats.drift_repaired.load(Ordering::Relaxed),
            paused_tenants: Vec::new(),
            last_full_resync_at: *stats.last_full_resync.lock().expect("stats lock"),
            rls_audit: stats.rls_audit.lock().expect("stats lock").clone(),
        }
    }
}

impl<P: DatabaseProvider> Controller<P> {
    pub fn new(db: PgPool, provider: P, tenant_dbs: Arc<TenantDatabases>, settings: Settings) -> Self {
        let ctx = Context { db, provider, tenant_dbs, settings, stats: Stats::default() };
        Self { ctx: Arc::new(ctx), queue: Arc::default() }
    }

    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// The shared context, for calling [`reconcile`] and [`dry_run`] directly.
    pub fn context(&self) -> Arc<Context<P>> {
        self.ctx.clone()
    }

    /// Runs workers, the change listener, the periodic resync and the RLS audit
    /// until the returned handles are aborted.
    pub fn spawn(&self) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        for _ in 0..self.ctx.settings.workers.max(1) {
            tasks.push(tokio::spawn(self.clone().work()));
        }
        tasks.push(tokio::spawn(self.clone().listen()));
        tasks.push(tokio::spawn(self.clone().resync_forever()));
        tasks.push(tokio::spawn(self.clone().audit_forever()));
        tasks
    }

    async fn work(self) {
        loop {
            let tenant = self.queue.next().await;
            let outcome = self.run_one(tenant).await;
            self.queue.finish(tenant, outcome);
        }
    }

    /// One reconcile under a per-tenant advisory lock, so that replicas sharing
    /// the database never reconcile the same tenant at once. The connection that
    /// holds the lock does the reconcile's reads and writes too: one per worker.
    async fn run_one(&self, tenant: TenantId) -> Result<Duration, ()> {
        let ctx = &self.ctx;
        let started = std::time::Instant::now();
        let mut lock = match AdvisoryLock::try_acquire(&ctx.db, db::tenant_lock_key(tenant)).await {
            Ok(Some(lock)) => lock,
            // Another replica (or a workflow) has it; look again a little later.
            Ok(None) => return Ok(Duration::from_millis(rand::rng().random_range(500..1500))),
            Err(_) => return Err(()),
        };
        let result = reconcile(ctx, lock.conn(), tenant).await;
        if let Err(error) = &result
            && !matches!(error, ReconcileError::Registry(RegistryError::NotFound(_)))
        {
            let _ = record_failure(lock.conn(), tenant, error).await;
        }
        lock.release().await;
        ctx.stats.reconciles.fetch_add(1, Ordering::Relaxed);
        metrics::histogram!("indigo_reconcile_duration_seconds").record(started.elapsed().as_secs_f64());
        match result {
            Ok(outcome) => {
                metrics::counter!("indigo_reconciles_total", "outcome" => "ok").increment(1);
                match outcome {
                    // Finished tenants drop out until something changes them again.
                    Outcome::Finished => Ok(Duration::from_secs(24 * 3600)),
                    Outcome::Paused | Outcome::InWorkflow | Outcome::Applied(_) => Ok(jittered(ctx.settings.resync)),
                }
            }
            Err(error) => {
                let reason = error.reason();
                tracing::warn!(%tenant, %reason, %error, "reconcile failed");
                ctx.stats.errors.fetch_add(1, Ordering::Relaxed);
                *ctx.stats.errors_by_reason.lock().expect("stats lock").entry(reason.clone()).or_default() += 1;
                metrics::counter!("indigo_reconciles_total", "outcome" => "error", "reason" => reason).increment(1);
                Err(())
            }
        }
    }

    async fn listen(self) {
        loop {
            match sqlx::postgres::PgListener::connect_with(&self.ctx.db).await {
                Ok(mut listener) => {
                    if listener.listen(CHANGES_CHANNEL).await.is_ok() {
                        // Anything missed while not listening is caught by a full pass.
                        let _ = self.enqueue_all().await;
                        while let Ok(notification) = listener.recv().await {
                            if let Ok(id) = notification.payload().parse::<TenantId>() {
                                self.queue.schedule_now(id);
                            }
                        }
                    }
                }
                Err(error) => tracing::warn!(%error, "cannot listen for tenant changes; retrying"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Queues every tenant that may need attention; returns how many.
    pub async fn enqueue_all(&self) -> Result<usize, sqlx::Error> {
        let ids: Vec<uuid::Uuid> = sqlx::query_scalar(
            "SELECT id FROM tenants WHERE NOT (lifecycle = 'deleted' AND phase = 'deleted' AND placement IS NULL)",
        )
        .fetch_all(&self.ctx.db)
        .await?;
        let now = Instant::now();
        for id in &ids {
            self.queue.schedule(TenantId(*id), now);
        }
        *self.ctx.stats.last_full_resync.lock().expect("stats lock") = Some(chrono::Utc::now());
        Ok(ids.len())
    }

    async fn resync_forever(self) {
        loop {
            tokio::time::sleep(jittered(self.ctx.settings.resync)).await;
            if let Err(error) = self.enqueue_all().await {
                tracing::warn!(%error, "periodic resync could not list tenants");
            }
        }
    }

    async fn audit_forever(self) {
        loop {
            match self.audit_pool().await {
                Ok(audit) => {
                    let was_clean = self
                        .ctx
                        .stats
                        .rls_audit
                        .lock()
                        .expect("stats lock")
                        .as_ref()
                        .is_none_or(|a| a.violations.is_empty());
                    if !audit.violations.is_empty() {
                        tracing::error!(violations = ?audit.violations, "tenant isolation audit FAILED");
                        if was_clean && let Ok(mut conn) = self.ctx.db.acquire().await {
                            let _ = journal::publish(
                                &mut conn,
                                None,
                                "IsolationViolation",
                                &format!(
                                    "isolation audit of {} failed: {}",
                                    audit.database,
                                    audit.violations.join("; ")
                                ),
                                json!({ "violations": audit.violations }),
                            )
                            .await;
                        }
                    }
                    metrics::gauge!("indigo_rls_violations").set(audit.violations.len() as f64);
                    *self.ctx.stats.rls_audit.lock().expect("stats lock") = Some(audit);
                }
                Err(error) => tracing::warn!(%error, "isolation audit could not run"),
            }
            tokio::time::sleep(self.ctx.settings.rls_audit).await;
        }
    }

    /// Checks the pool as the data plane's own role sees it.
    pub async fn audit_pool(&self) -> Result<RlsAudit, sqlx::Error> {
        let database = &self.ctx.tenant_dbs.pool_database;
        let mut conn = self.ctx.tenant_dbs.server.options_as(APP_ROLE, database).connect().await?;
        let violations = audit_isolation(&mut conn).await?;
        Ok(RlsAudit {
            at: chrono::Utc::now(),
            database: database.clone(),
            violations: violations.into_iter().map(|v| format!("{}: {}", v.subject, v.problem)).collect(),
        })
    }
}

/// `base` ± 10%, so that replicas and tenants do not move in lockstep.
fn jittered(base: Duration) -> Duration {
    base.mul_f64(rand::rng().random_range(0.9..1.1))
}
