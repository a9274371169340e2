//! Durable workflows: named stages of steps (the steps of a stage run
//! concurrently), each step with its compensation. Every step's start, result
//! and error is written to the control database before the next step begins,
//! so a daemon that dies mid-way is resumed by whichever daemon looks next; a
//! step that fails for good has the completed steps undone in reverse order.
//!
//! [`onboarding`], [`offboarding`], [`tier_change`] and [`restore`] are the workflows; [`engine`] drives them.

pub mod engine;
pub mod export;
pub mod offboarding;
pub mod onboarding;
pub mod preview;
pub mod restore;
pub mod store;
pub mod tier_change;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use indigo_core::plan::PlanCatalog;
use indigo_core::tenant::TenantId;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

pub use self::engine::Engine;
pub use self::store::{WorkflowError, active_for};
use crate::billing::{BillingError, Stripe};
pub use crate::failpoints::Failpoints;
use crate::providers::{DatabaseProvider, ProviderError};
use indigo_tenantdb::{Database, TenantDatabases};

/// The workflows there are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Onboarding,
    Offboarding,
    TierChange,
    Restore,
}
indigo_core::wire_enum!(Kind {
    Onboarding => "onboarding",
    Offboarding => "offboarding",
    TierChange => "tier_change",
    Restore => "restore",
});

impl Kind {
    /// The role that starts a workflow of this kind, and so the role that may
    /// retry or cancel one: an operator must not finish an admin's deletion.
    pub fn required_role(self) -> indigo_core::tenant::Role {
        match self {
            Self::Onboarding | Self::TierChange => indigo_core::tenant::Role::Operator,
            // Both destroy rows: offboarding all of them, a restore those written since its backup.
            Self::Offboarding | Self::Restore => indigo_core::tenant::Role::Admin,
        }
    }
}

/// Why a step did not succeed, sorted by what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// Retried with backoff, up to the engine's attempt limit.
    #[error("{0}")]
    Transient(String),
    /// Not retried: the workflow compensates and fails with this message.
    #[error("{0}")]
    Permanent(String),
}

impl From<sqlx::Error> for StepError {
    fn from(error: sqlx::Error) -> Self {
        Self::Transient(format!("control database: {error}"))
    }
}

impl From<ProviderError> for StepError {
    fn from(error: ProviderError) -> Self {
        match error {
            ProviderError::Transient(message) => Self::Transient(message),
            permanent @ ProviderError::Permanent { .. } => Self::Permanent(permanent.to_string()),
        }
    }
}

impl From<BillingError> for StepError {
    fn from(error: BillingError) -> Self {
        match error {
            BillingError::Transient(_) => Self::Transient(error.to_string()),
            _ => Self::Permanent(error.to_string()),
        }
    }
}

impl From<crate::registry::RegistryError> for StepError {
    fn from(error: crate::registry::RegistryError) -> Self {
        match error {
            crate::registry::RegistryError::Database(e) => e.into(),
            other => Self::Permanent(other.to_string()),
        }
    }
}

/// Retries, backoff and concurrency of the engine.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Attempts of a step (or a compensation) before a transient error counts as permanent.
    pub max_attempts: i32,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// Workflows driven at once by one daemon.
    pub concurrency: usize,
    /// How long a moved tenant's rows stay in the source after the switch.
    pub move_grace: Duration,
    /// How long an offboarded tenant's export bundle is kept for hand-over.
    pub export_retention: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            backoff_base: Duration::from_millis(200),
            backoff_cap: Duration::from_secs(60),
            concurrency: 16,
            move_grace: Duration::from_secs(300),
            export_retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl Settings {
    /// The pause after the `attempt`-th failure of a step, capped.
    pub fn backoff(&self, attempt: i32) -> Duration {
        crate::runtime::backoff(self.backoff_base, self.backoff_cap, u32::try_from(attempt).unwrap_or(0))
    }
}

/// What the steps act on.
pub struct Services<P> {
    pub db: PgPool,
    pub provider: P,
    pub tenant_dbs: Arc<TenantDatabases>,
    pub plans: Arc<PlanCatalog>,
    /// `None`: billing is off, the billing steps record that and do nothing.
    pub stripe: Option<Stripe>,
    /// Where offboarding writes export bundles.
    pub export_dir: PathBuf,
    /// Where tenants' backups are kept (a restore's safeguard among them).
    pub backups: crate::backups::BackupStore,
    pub failpoints: Failpoints,
    pub settings: Settings,
    pub tenant_pools: TenantPools,
}

impl Services<crate::providers::local::LocalDatabases> {
    /// Services on the local provider, for the daemon and tests, writing
    /// export bundles and backups under `data_dir`.
    pub fn local(
        db: PgPool,
        tenant_dbs: Arc<TenantDatabases>,
        plans: Arc<PlanCatalog>,
        stripe: Option<Stripe>,
        data_dir: &std::path::Path,
    ) -> Self {
        Self {
            db,
            provider: crate::providers::local::LocalDatabases::new(tenant_dbs.clone()),
            tenant_dbs,
            plans,
            stripe,
            export_dir: data_dir.join("exports"),
            backups: crate::backups::BackupStore::directory(data_dir),
            failpoints: Failpoints::default(),
            settings: Settings::default(),
            tenant_pools: TenantPools::default(),
        }
    }
}

impl<P> Services<P> {
    /// The same services acting through another provider (AWS, or a test's).
    pub fn with_provider<Q>(self, provider: Q) -> Services<Q> {
        Services {
            db: self.db,
            provider,
            tenant_dbs: self.tenant_dbs,
            plans: self.plans,
            stripe: self.stripe,
            export_dir: self.export_dir,
            backups: self.backups,
            failpoints: self.failpoints,
            settings: self.settings,
            tenant_pools: self.tenant_pools,
        }
    }
}

/// Everything a step sees.
pub struct StepContext<'a, P> {
    pub services: &'a Services<P>,
    pub workflow_id: Uuid,
    pub tenant_id: TenantId,
    pub attempt: i32,
    pub step: &'static str,
    pub input: &'a Value,
    /// Outputs of the steps that succeeded so far, by name.
    pub outputs: &'a HashMap<String, Value>,
    /// When compensating: what this step recorded, if it got that far.
    pub output: Option<&'a Value>,
    /// When compensating: why the workflow is being undone.
    pub error: Option<&'a str>,
}

impl<P> StepContext<'_, P> {
    /// The idempotency key of one external call of this step: the same for
    /// every run of the step within one attempt of the workflow.
    pub fn key(&self, call: &str) -> String {
        format!("indigo-{}-{}-{}-{call}", self.workflow_id.simple(), self.attempt, self.step)
    }
}

/// A workflow: its stages and what each step does and undoes.
pub trait Definition: Send + Sync + 'static {
    const KIND: Kind;
    /// The workflow's steps: matching on one is checked for every step.
    type Step: StepName;
    /// In order; the steps of one stage run concurrently.
    const STAGES: &'static [&'static [Self::Step]];
    /// Steps from this one on cannot be undone: a failure there stops the
    /// workflow `failed` without compensating, and a retry resumes it.
    const POINT_OF_NO_RETURN: Option<Self::Step> = None;

    fn run<P: DatabaseProvider>(
        step: Self::Step,
        cx: &StepContext<'_, P>,
    ) -> impl Future<Output = Result<Value, StepError>> + Send;

    fn compensate<P: DatabaseProvider>(
        step: Self::Step,
        cx: &StepContext<'_, P>,
    ) -> impl Future<Output = Result<(), StepError>> + Send;

    /// Runs once the workflow has been undone (failed or cancelled), even when
    /// no step had started: where the workflow leaves what it was for.
    fn on_failure<P: DatabaseProvider>(cx: &StepContext<'_, P>) -> impl Future<Output = Result<(), StepError>> + Send {
        let _ = cx;
        async { Ok(()) }
    }
}

/// The name a [`StepContext`] carries outside any step (in `on_failure`).
pub const NO_STEP: &str = "(workflow)";

/// One step of a workflow. Its name is what the database, events,
/// failpoints and idempotency keys know it by.
pub trait StepName: Copy + PartialEq + Send + Sync + 'static {
    const ALL: &'static [Self];

    fn name(self) -> &'static str;

    fn named(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|step| step.name() == name)
    }
}

/// Declares a workflow's steps: an enum and the name of each.
macro_rules! workflow_steps {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($variant:ident => $wire:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        $vis enum $name { $($variant),+ }

        impl $crate::workflow::StepName for $name {
            const ALL: &'static [Self] = &[$(Self::$variant),+];

            fn name(self) -> &'static str {
                match self { $(Self::$variant => $wire),+ }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str($crate::workflow::StepName::name(*self))
            }
        }
    };
}
pub(crate) use workflow_steps;

/// The steps of `D` in definition order.
pub fn step_order<D: Definition>() -> impl DoubleEndedIterator<Item = D::Step> {
    D::STAGES.iter().flat_map(|stage| stage.iter().copied())
}

/// Whether `step` comes before `D`'s point of no return (and so can be undone).
pub fn compensable<D: Definition>(step: D::Step) -> bool {
    match D::POINT_OF_NO_RETURN {
        None => true,
        Some(pivot) => step_order::<D>().take_while(|s| *s != pivot).any(|s| s == step),
    }
}

/// The tenant as it stands now.
pub(crate) async fn tenant<P>(cx: &StepContext<'_, P>) -> Result<indigo_core::api::Tenant, StepError> {
    let mut conn = cx.services.db.acquire().await?;
    Ok(crate::registry::get(&mut conn, &crate::registry::TenantRef::Id(cx.tenant_id)).await?)
}

/// Publishes `event` on the step's tenant, its data naming the workflow.
pub(crate) async fn publish<P>(
    cx: &StepContext<'_, P>,
    event: &str,
    message: &str,
    mut data: Value,
) -> Result<(), StepError> {
    data["workflow_id"] = serde_json::json!(cx.workflow_id);
    let mut conn = cx.services.db.acquire().await?;
    crate::journal::publish(&mut conn, Some(cx.tenant_id), event, message, data).await?;
    Ok(())
}

/// Gives the step's tenant a new routing version: data planes fetch its route
/// again, and no catalogue read cached under the old version is served.
pub(crate) async fn bump_routing_version<P>(cx: &StepContext<'_, P>) -> Result<(), StepError> {
    sqlx::query("UPDATE tenants SET routing_version = nextval('routing_version_seq') WHERE id = $1")
        .bind(cx.tenant_id.0)
        .execute(&cx.services.db)
        .await?;
    Ok(())
}

pub(crate) fn transient(error: impl std::fmt::Display) -> StepError {
    StepError::Transient(error.to_string())
}

/// Connections to tenant databases as the schema owner, a small lazy pool per
/// database: steps that write into a tenant's database (search settings,
/// sample data, the export) reuse them instead of connecting each time.
#[derive(Default)]
pub struct TenantPools {
    pools: std::sync::Mutex<HashMap<String, sqlx::PgPool>>,
}

impl TenantPools {
    pub fn get(&self, database: &Database) -> sqlx::PgPool {
        let mut pools = self.pools.lock().expect("tenant pools lock");
        pools
            .entry(Self::key(database))
            .or_insert_with(|| {
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(4)
                    .idle_timeout(Duration::from_secs(60))
                    .connect_lazy_with(database.server.owner_options(&database.name))
            })
            .clone()
    }

    /// Drops the pool of a database that is being dropped.
    pub fn forget(&self, database: &Database) {
        self.pools.lock().expect("tenant pools lock").remove(&Self::key(database));
    }

    /// Databases of one name on two servers (two clusters) are two pools.
    fn key(database: &Database) -> String {
        format!("{}/{}", database.server.address(), database.name)
    }
}

/// A transaction in a tenant database as the schema owner, bound to the step's
/// tenant: row-level security applies, as in the data plane. The database is
/// on the tenant server, or on the tenant's own `cluster` (AWS), which the
/// control plane reaches from inside the tenants' VPC.
pub(crate) async fn tenant_transaction<P: DatabaseProvider>(
    cx: &StepContext<'_, P>,
    cluster: Option<&str>,
    database: &str,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StepError> {
    let pool = cx.services.tenant_pools.get(&cx.services.provider.reach(cluster, database).await?);
    // The id is a parsed UUID: safe to format in.
    let begin = format!("BEGIN; SELECT set_config('app.current_tenant', '{}', true)", cx.tenant_id);
    pool.begin_with(sqlx::AssertSqlSafe(begin)).await.map_err(transient)
}

/// Whether `database` exists, on the tenant server or on `cluster`.
pub(crate) async fn database_exists<P: DatabaseProvider>(
    cx: &StepContext<'_, P>,
    cluster: Option<&str>,
    database: &str,
) -> Result<bool, StepError> {
    let reached = cx.services.provider.reach(cluster, database).await?;
    let pool = cx.services.tenant_pools.get(&Database { name: "postgres".into(), ..reached.clone() });
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(&reached.name)
        .fetch_one(&pool)
        .await
        .map_err(transient)
}

/// Drops the connections to a database that is being dropped.
pub(crate) fn forget_database<P>(cx: &StepContext<'_, P>, cluster: Option<&str>, database: &str) {
    cx.services.tenant_pools.forget(&cx.services.tenant_dbs.locate(cluster, database));
}

/// Why a workflow could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    #[error(transparent)]
    Workflow(#[from] WorkflowError),
}

impl From<sqlx::Error> for StartError {
    fn from(error: sqlx::Error) -> Self {
        Self::Workflow(error.into())
    }
}

/// Records a tenant `pending` and starts its onboarding, in the caller's transaction.
pub async fn onboard(
    conn: &mut sqlx::PgConnection,
    actor: &crate::journal::Actor,
    request_id: Option<&str>,
    mut new: crate::registry::NewTenant<'_>,
) -> Result<(indigo_core::api::Tenant, Uuid), StartError> {
    new.lifecycle = indigo_core::tenant::Lifecycle::Pending;
    let tenant = crate::registry::create(conn, actor, request_id, new).await?;
    let workflow = store::start(conn, Kind::Onboarding, tenant.id, Value::Object(Default::default())).await?;
    Ok((tenant, workflow))
}

/// Changes a tenant's plan and starts the tier change that makes it real, in
/// the caller's transaction. Asking for the plan it already has changes nothing;
/// asking while another workflow acts on the tenant is refused.
pub async fn change_plan(
    conn: &mut sqlx::PgConnection,
    actor: &crate::journal::Actor,
    request_id: Option<&str>,
    tenant: &crate::registry::TenantRef,
    plan: &indigo_core::plan::Plan,
) -> Result<indigo_core::api::Tenant, StartError> {
    let current = crate::registry::get(conn, tenant).await?;
    // Serializes concurrent requests for this tenant until the caller commits.
    sqlx::query("SELECT 1 FROM tenants WHERE id = $1 FOR UPDATE").bind(current.id.0).execute(&mut *conn).await?;
    if current.spec.plan.as_str() == plan.name.as_str() {
        return Ok(current);
    }
    if let Some((id, kind)) = active_for(conn, current.id).await? {
        return Err(WorkflowError::Busy { tenant: current.id, kind, id }.into());
    }
    let changed = crate::registry::change_plan(conn, actor, request_id, tenant, plan).await?;
    let input = tier_change::Input { from_plan: current.spec.plan.as_str().into(), to_plan: plan.name.as_str().into() };
    store::start(conn, Kind::TierChange, current.id, serde_json::json!(input)).await?;
    Ok(changed.tenant)
}

/// Starts offboarding `tenant`, in the caller's transaction. Offboarding a
/// tenant that is deleted or already being offboarded changes nothing.
pub async fn offboard(
    conn: &mut sqlx::PgConnection,
    actor: &crate::journal::Actor,
    request_id: Option<&str>,
    tenant: &crate::registry::TenantRef,
    reason: Option<&str>,
) -> Result<indigo_core::api::Tenant, StartError> {
    let current = crate::registry::get(conn, tenant).await?;
    // Serializes concurrent requests for this tenant until the caller commits.
    sqlx::query("SELECT 1 FROM tenants WHERE id = $1 FOR UPDATE").bind(current.id.0).execute(&mut *conn).await?;
    if current.spec.lifecycle == indigo_core::tenant::Lifecycle::Deleted {
        return Ok(current);
    }
    if let Some((id, kind)) = active_for(conn, current.id).await? {
        if kind == Kind::Offboarding.as_str() {
            return Ok(current);
        }
        return Err(WorkflowError::Busy { tenant: current.id, kind, id }.into());
    }
    let workflow = store::start(conn, Kind::Offboarding, current.id, serde_json::json!({ "reason": reason })).await?;
    crate::journal::Audit {
        actor,
        action: "tenant.offboard",
        tenant_id: Some(current.id),
        request_id,
        before: Some(serde_json::json!(current)),
        after: Some(serde_json::json!({ "workflow_id": workflow, "reason": reason })),
    }
    .append(conn)
    .await?;
    Ok(current)
}

/// Starts restoring `tenant` from its backup `backup`, in the caller's
/// transaction; refused while another workflow acts on the tenant.
pub async fn restore(
    conn: &mut sqlx::PgConnection,
    actor: &crate::journal::Actor,
    request_id: Option<&str>,
    tenant: &crate::registry::TenantRef,
    input: restore::Input,
) -> Result<(indigo_core::api::Tenant, Uuid), StartError> {
    let current = crate::registry::get(conn, tenant).await?;
    // Serializes concurrent requests for this tenant until the caller commits.
    sqlx::query("SELECT 1 FROM tenants WHERE id = $1 FOR UPDATE").bind(current.id.0).execute(&mut *conn).await?;
    let workflow = store::start(conn, Kind::Restore, current.id, serde_json::json!(input)).await?;
    crate::journal::Audit {
        actor,
        action: "tenant.restore",
        tenant_id: Some(current.id),
        request_id,
        before: None,
        after: Some(serde_json::json!({ "workflow_id": workflow, "backup_id": input.backup_id, "into": input.into })),
    }
    .append(conn)
    .await?;
    Ok((current, workflow))
}
