//! The reconciler: keeps every tenant's actual resources matching its spec.
//! Level-triggered like kube-runtime's controller: [`reconcile`] re-reads the
//! spec, observes through the providers, decides with the pure [`plan::decide`],
//! applies the smallest change, writes status, and says when to look again.
//! Triggers are spec changes (NOTIFY), a periodic resync, and operators.

pub mod plan;
pub mod queue;
pub mod services;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indigo_core::api::{ReconcilePlan, ReconcilerStatus, RlsAudit, ServiceReplicas, Tenant};
use indigo_core::tenant::{Condition, Isolation, Lifecycle, Phase, TenantId};
use indigo_tenantdb::schema::audit_isolation;
use rand::Rng;
use serde_json::json;
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use tokio::time::Instant;

use indigo_core::plan::PlanCatalog;

use self::plan::{Action, Decision, Observed, ServiceView};
use self::queue::Queue;
use crate::db::{self, AdvisoryLock};
use crate::journal;
use crate::providers::{
    ComputeProvider, DatabaseProvider, ProviderError, ServiceSpec, ServiceState, SiloTenant, silo_service_name,
};
use crate::registry::{self, RegistryError, TenantRef};
use crate::runtime::{Notifications, Notified, jittered};
use crate::status::{self, READY, SpecGeneration, StatusWrite};
use indigo_tenantdb::TenantDatabases;

/// How soon a tenant whose silo is still being created is looked at again.
const PROVISIONING_RECHECK: Duration = Duration::from_secs(15);

/// Backoff of a tenant whose reconciles keep failing for a reason that may
/// pass (a provider or the control database unavailable)...
const TRANSIENT_BACKOFF: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(300));
/// ...and for one that will not pass by itself (a provider's refusal, a
/// tenant gone): looked at again much later, or at once when its spec changes.
const PERMANENT_BACKOFF: (Duration, Duration) = (Duration::from_secs(300), Duration::from_secs(3600));

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
    /// Whether retrying without a change can help.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Provider(ProviderError::Permanent { .. }) | Self::Registry(RegistryError::NotFound(_)))
    }

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
    services: Mutex<BTreeMap<String, ServiceReplicas>>,
}

impl Stats {
    fn count_drift_repaired(&self) {
        self.drift_repaired.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("indigo_reconciler_drift_repaired_total").increment(1);
    }

    /// Remembers what a service runs now (`None`: it is gone).
    fn saw_service(&self, spec: &ServiceSpec, state: Option<&ServiceState>) {
        let mut services = self.services.lock().expect("stats lock");
        match state {
            Some(state) => {
                let seen = ServiceReplicas {
                    name: spec.name.clone(),
                    tenant_id: spec.tenant,
                    running: state.replicas,
                    wanted: spec.replicas,
                    address: state.address.clone(),
                };
                services.insert(spec.name.clone(), seen);
            }
            None => {
                services.remove(&spec.name);
            }
        }
    }
}

pub struct Context<P> {
    pub db: PgPool,
    pub provider: P,
    /// The data-plane services, when this control plane runs them (`None`:
    /// the data plane is deployed some other way and is not reconciled here).
    pub compute: Option<Arc<dyn ComputeProvider>>,
    pub tenant_dbs: Arc<TenantDatabases>,
    pub plans: Arc<PlanCatalog>,
    pub settings: Settings,
    stats: Stats,
}

/// How long a tenant waits after its `failures`-th failed reconcile in a row
/// (kube-runtime's `error_policy`): a transient error backs off from half a
/// second, a permanent one from five minutes. A change to the tenant's spec
/// requeues it at once either way.
pub fn error_policy(tenant: TenantId, error: &ReconcileError, failures: u32) -> Duration {
    let (base, cap) = if error.is_permanent() { PERMANENT_BACKOFF } else { TRANSIENT_BACKOFF };
    let wait = crate::runtime::backoff(base, cap, failures);
    tracing::debug!(%tenant, failures, permanent = error.is_permanent(), ?wait, "reconcile will be retried");
    wait
}

/// What the controller does with a tenant after a reconcile (kube-runtime's
/// `Action`): look again after a while, or only when something changes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requeue {
    After(Duration),
    /// Its spec changing (NOTIFY) or an operator asking brings it back.
    AwaitChange,
}

impl Outcome {
    /// When a tenant is looked at again after a pass that did this.
    pub fn requeue(&self, settings: &Settings) -> Requeue {
        match self {
            // Finished tenants drop out until something changes them again.
            Outcome::Finished => Requeue::AwaitChange,
            // A silo being created is looked at again soon, not at the next resync.
            Outcome::Applied(decision) if decision.phase == Phase::Provisioning => {
                Requeue::After(jittered(PROVISIONING_RECHECK.min(settings.resync)))
            }
            Outcome::Paused | Outcome::InWorkflow | Outcome::Applied(_) => Requeue::After(jittered(settings.resync)),
        }
    }
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

fn serves_from_silo(tenant: &Tenant) -> bool {
    tenant.status.placement.as_ref().map_or(tenant.spec.isolation, |p| p.isolation) == Isolation::Silo
}

async fn observe<P: DatabaseProvider>(
    ctx: &Context<P>,
    conn: &mut PgConnection,
    tenant: &Tenant,
) -> Result<Observed, ReconcileError> {
    // On the reconcile's own connection: a second one per reconcile could drain the pool.
    let billing_parity = billing_parity(conn, tenant.id).await?;
    if !serves_from_silo(tenant) {
        return Ok(Observed { billing_parity, ..Observed::default() });
    }
    let deleted = tenant.spec.lifecycle == Lifecycle::Deleted;
    let silo = SiloTenant::of(tenant, &ctx.plans)?;
    let silo_state = if deleted { None } else { ctx.provider.observe_silo(&silo).await? };
    // A tenant whose plan is no longer a silo plan is on its way out of the
    // silo (a downgrade): its service is left to the orphan sweep.
    let service = match &ctx.compute {
        Some(compute) if deleted || tenant.spec.isolation == Isolation::Silo => {
            let wanted = if deleted {
                ServiceSpec::stopped(silo_service_name(tenant.id, &tenant.slug), Some(tenant.id))
            } else {
                ServiceSpec::silo(&silo)?
            };
            let actual = compute.observe_service(&wanted.name).await?;
            Some(ServiceView { wanted, actual })
        }
        _ => None,
    };
    Ok(Observed { silo: silo_state, service, billing_parity })
}

/// The tenant's last parity check against Stripe, as its condition will say it.
async fn billing_parity(conn: &mut PgConnection, tenant: TenantId) -> Result<Option<plan::Parity>, sqlx::Error> {
    let checked: Option<(bool, sqlx::types::Json<Vec<indigo_core::api::ParityMismatch>>)> =
        sqlx::query_as("SELECT in_parity, mismatches FROM billing_parity WHERE tenant_id = $1")
            .bind(tenant.0)
            .fetch_optional(conn)
            .await?;
    Ok(checked.map(|(in_parity, mismatches)| {
        let message = match mismatches.0.first() {
            None => "the usage Stripe received matches what was reported".to_owned(),
            Some(first) => format!("{} window(s) differ; {first}", mismatches.0.len()),
        };
        plan::Parity { in_parity, message }
    }))
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
    let mut conn = ctx.db.acquire().await?;
    let (tenant, paused) = read(&mut conn, id).await?;
    let observed = observe(ctx, &mut conn, &tenant).await?;
    let mut decision = plan::decide(&tenant, &observed);
    plan::settle(&mut decision, observed.silo.as_ref());
    Ok(ReconcilePlan {
        tenant_id: id,
        generation: tenant.spec.generation,
        actions: decision.actions.iter().map(|a| json!(a)).collect(),
        phase: decision.phase,
        conditions: decision.conditions,
        paused,
    })
}

/// Brings one tenant to its spec, using one connection of the control
/// database, and says when to look at it again (kube-runtime's `reconcile`).
#[tracing::instrument(name = "reconcile", skip_all, fields(tenant_id = %id))]
pub async fn reconcile<P: DatabaseProvider>(
    ctx: &Context<P>,
    conn: &mut PgConnection,
    id: TenantId,
) -> Result<Requeue, ReconcileError> {
    Ok(apply(ctx, conn, id).await?.requeue(&ctx.settings))
}

/// One pass of [`reconcile`]: what it did, for the controller's requeue and for
/// callers that want to see the decision (tests, tools).
pub async fn apply<P: DatabaseProvider>(
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
    let observed = observe(ctx, conn, &tenant).await?;
    let mut decision = plan::decide(&tenant, &observed);
    let mut silo_state = observed.silo.clone();
    let mut service_state = observed.service.as_ref().and_then(|s| s.actual.clone());
    for action in &decision.actions {
        match action {
            Action::PlaceInPool => {}
            Action::CreateSilo | Action::RecreateSilo | Action::ResizeSilo => {
                silo_state = Some(ctx.provider.ensure_silo(&SiloTenant::of(&tenant, &ctx.plans)?).await?);
            }
            Action::CreateService { .. } | Action::ScaleService { .. } | Action::SetAutoscaling { .. } => {
                if let (Some(compute), Some(view)) = (&ctx.compute, &observed.service) {
                    service_state = Some(compute.ensure_service(&view.wanted).await?);
                }
            }
            Action::DeleteService { service } => {
                if let Some(compute) = &ctx.compute {
                    compute.delete_service(service).await?;
                }
            }
            Action::DeleteSilo => ctx.provider.delete_silo(&SiloTenant::of(&tenant, &ctx.plans)?).await?,
            Action::DeletePoolRows => {
                ctx.provider.delete_pool_rows(tenant.id).await?;
            }
        }
    }
    if let Some(view) = &observed.service {
        let deleted = tenant.spec.lifecycle == Lifecycle::Deleted;
        ctx.stats.saw_service(&view.wanted, service_state.as_ref().filter(|_| !deleted));
    }
    plan::settle(&mut decision, silo_state.as_ref());
    // Where a dedicated service serves: its address when the provider knows it, else its name.
    let service = observed
        .service
        .as_ref()
        .map(|view| service_state.as_ref().and_then(|s| s.address.clone()).unwrap_or_else(|| view.wanted.name.clone()));
    let placement = plan::resulting_placement(
        tenant.status.placement.as_ref(),
        &decision.placement,
        &ctx.tenant_dbs.pool_database,
        silo_state.as_ref(),
        service.as_deref(),
    );
    plan::carry_transitions(&tenant.status.conditions, &mut decision.conditions);
    let diff = (!decision.actions.is_empty())
        .then(|| json!({ "generation": tenant.spec.generation, "actions": decision.actions }));
    let mut tx = conn.begin().await?;
    StatusWrite::new()
        .phase(decision.phase)
        .conditions(decision.conditions.clone())
        .placement(placement)
        .observed(SpecGeneration::Seen(tenant.spec.generation))
        .diff(diff.clone())
        .apply(&mut tx, id)
        .await?;
    if let Some(diff) = diff {
        let summary = decision.actions.iter().map(describe).collect::<Vec<_>>().join("; ");
        let (kind, message) = if decision.drift {
            ctx.stats.count_drift_repaired();
            ("DriftRepaired", format!("{}: drift repaired: {summary}", tenant.slug))
        } else {
            ("Reconciled", format!("{}: {summary}", tenant.slug))
        };
        journal::publish(&mut tx, Some(id), kind, &message, diff).await?;
    }
    tx.commit().await?;
    Ok(Outcome::Applied(decision))
}

/// One action in words, for events.
fn describe(action: &Action) -> String {
    match action {
        Action::PlaceInPool => "placed in the pool".into(),
        Action::CreateSilo => "silo database created".into(),
        Action::RecreateSilo => "the silo database had vanished and was recreated".into(),
        Action::ResizeSilo => "silo database resized to its plan".into(),
        Action::CreateService { service, replicas } => format!("service {service} started with {replicas} replica(s)"),
        Action::SetAutoscaling { service, min, max } => {
            format!("service {service} set to autoscale between {min} and {max} replica(s)")
        }
        Action::ScaleService { service, running, replicas } => {
            format!("service {service} brought from {running} to {replicas} replica(s)")
        }
        Action::DeleteService { service } => format!("service {service} deleted"),
        Action::DeleteSilo => "silo database deleted".into(),
        Action::DeletePoolRows => "rows deleted from the pool".into(),
    }
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
        let actor = crate::journal::Actor::system("reconciler");
        registry::set_lifecycle(&mut tx, &actor, None, &TenantRef::Id(tenant.id), Lifecycle::Suspended, Some(reason))
            .await?;
    }
    tx.commit().await?;
    Ok(overdue)
}

/// Records a failed reconcile in the tenant's conditions (an event on the first failure).
async fn record_failure(conn: &mut PgConnection, id: TenantId, error: &ReconcileError) -> Result<(), sqlx::Error> {
    let reason = error.reason();
    let mut tx = conn.begin().await?;
    let previous = status::reason_of(&mut tx, id, READY).await?;
    // The Ready condition says why; the others stay. Only a permanent error fails the tenant.
    let mut write = StatusWrite::new().condition(Condition::new(READY, false, &reason, error.to_string())).reconciled();
    if error.is_permanent() {
        write = write.phase(Phase::Failed);
    }
    write.apply(&mut tx, id).await?;
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
            services: stats.services.lock().expect("stats lock").values().cloned().collect(),
        }
    }
}

impl<P: DatabaseProvider> Controller<P> {
    pub fn new(
        db: PgPool,
        provider: P,
        tenant_dbs: Arc<TenantDatabases>,
        plans: Arc<PlanCatalog>,
        settings: Settings,
    ) -> Self {
        let ctx = Context { db, provider, compute: None, tenant_dbs, plans, settings, stats: Stats::default() };
        Self { ctx: Arc::new(ctx), queue: Arc::default() }
    }

    /// Reconciles the data-plane services too, through `compute`. Call before
    /// [`Controller::spawn`].
    pub fn with_compute(mut self, compute: Arc<dyn ComputeProvider>) -> Self {
        Arc::get_mut(&mut self.ctx).expect("with_compute is called before the controller is shared").compute =
            Some(compute);
        self
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
        if self.ctx.compute.is_some() {
            tasks.push(tokio::spawn(services::FleetServices::new(self.ctx.clone(), self.queue.clone()).run_forever()));
        }
        tasks
    }

    async fn work(self) {
        loop {
            let tenant = self.queue.next().await;
            match self.run_one(tenant).await {
                Ok(requeue) => self.queue.finish(tenant, Ok(requeue)),
                Err(error) => self.queue.finish(tenant, Err(&|failures| error_policy(tenant, &error, failures))),
            };
        }
    }

    /// One reconcile under a per-tenant advisory lock, so that replicas sharing
    /// the database never reconcile the same tenant at once. The connection that
    /// holds the lock does the reconcile's reads and writes too: one per worker.
    async fn run_one(&self, tenant: TenantId) -> Result<Requeue, ReconcileError> {
        let ctx = &self.ctx;
        let started = std::time::Instant::now();
        let mut lock = match AdvisoryLock::try_acquire(&ctx.db, db::tenant_lock_key(tenant)).await {
            Ok(Some(lock)) => lock,
            // Another replica (or a workflow) has it; look again a little later.
            Ok(None) => return Ok(Requeue::After(Duration::from_millis(rand::rng().random_range(500..1500)))),
            Err(error) => return Err(error.into()),
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
            Ok(requeue) => {
                metrics::counter!("indigo_reconciles_total", "outcome" => "ok").increment(1);
                Ok(requeue)
            }
            Err(error) => {
                let reason = error.reason();
                tracing::warn!(%tenant, %reason, %error, "reconcile failed");
                ctx.stats.errors.fetch_add(1, Ordering::Relaxed);
                *ctx.stats.errors_by_reason.lock().expect("stats lock").entry(reason.clone()).or_default() += 1;
                metrics::counter!("indigo_reconciles_total", "outcome" => "error", "reason" => reason).increment(1);
                Err(error)
            }
        }
    }

    async fn listen(self) {
        let mut changes = Notifications::new(self.ctx.db.clone(), CHANGES_CHANNEL);
        loop {
            match changes.recv().await {
                // Anything missed while not listening is caught by a full pass.
                Notified::Listening => {
                    let _ = self.enqueue_all().await;
                }
                Notified::Payload(payload) => {
                    if let Ok(id) = payload.parse::<TenantId>() {
                        self.queue.schedule_now(id);
                    }
                }
            }
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
        let mut conn = self.ctx.tenant_dbs.server.app_options(database).connect().await?;
        let violations = audit_isolation(&mut conn).await?;
        Ok(RlsAudit {
            at: chrono::Utc::now(),
            database: database.clone(),
            violations: violations.into_iter().map(|v| format!("{}: {}", v.subject, v.problem)).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_permanent_error_waits_much_longer_than_a_transient_one() {
        let tenant = TenantId::new();
        let transient = ReconcileError::Provider(ProviderError::Transient("throttled".into()));
        let permanent =
            ReconcileError::Provider(ProviderError::Permanent { reason: "QuotaExceeded".into(), message: "no".into() });
        assert!(error_policy(tenant, &transient, 1) < Duration::from_secs(1));
        assert!(error_policy(tenant, &permanent, 1) >= Duration::from_secs(300));
        for failures in 1..=10 {
            let (soon, late) = (error_policy(tenant, &transient, failures), error_policy(tenant, &permanent, failures));
            assert!(late > soon * 5, "after {failures} failures: {late:?} against {soon:?}");
        }
    }
}
