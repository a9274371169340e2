//! The reconciler on the local provider, against real PostgreSQL: it converges
//! new tenants, repairs drift, releases resources of deleted tenants, honours
//! pause and dry run, backs off per tenant, and shares work safely between
//! replicas.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indigo_controlplane::api::auth::Actor;
use indigo_controlplane::providers::local::{LocalDatabases, silo_database};
use indigo_controlplane::providers::{DatabaseProvider, ProviderError, SiloState, SiloTenant};
use indigo_controlplane::reconciler::{self, Controller, Outcome, Requeue, Settings};
use indigo_controlplane::registry::{self, NewTenant, TenantRef};
use indigo_controlplane::{db, policy};
use indigo_core::api::Tenant;
use indigo_core::plan::PlanCatalog;
use indigo_core::tenant::{Email, Lifecycle, Phase, Slug, TenantId, TenantName};
use indigo_tenantdb::TenantDatabases;
use indigo_tenantdb::schema::TenantServer;
use sqlx::PgPool;

fn plans() -> PlanCatalog {
    policy::load_plans(concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/plans.toml").as_ref()).unwrap()
}

/// A control database (from `#[sqlx::test]`) plus a pool database of its own.
struct World {
    db: PgPool,
    dbs: Arc<TenantDatabases>,
    plans: Arc<PlanCatalog>,
}

impl World {
    async fn new(db: PgPool) -> Self {
        let server = TenantServer::new(&indigo_e2e::server_url()).unwrap();
        let pool_database = format!("indigo_rec_pool_{}", uuid::Uuid::new_v4().simple());
        server.provision(&pool_database).await.unwrap();
        Self { db, dbs: Arc::new(TenantDatabases::new(server, pool_database)), plans: Arc::new(plans()) }
    }

    fn controller<P: DatabaseProvider>(&self, provider: P, workers: usize) -> Controller<P> {
        let settings = Settings { resync: Duration::from_secs(3600), workers, rls_audit: Duration::from_secs(3600) };
        Controller::new(self.db.clone(), provider, self.dbs.clone(), self.plans.clone(), settings)
    }

    fn local(&self) -> LocalDatabases {
        LocalDatabases::new(self.dbs.clone())
    }

    async fn tenant(&self, slug: &str, plan: &str) -> Tenant {
        let mut tx = self.db.begin().await.unwrap();
        let new = NewTenant {
            slug: Slug::parse(slug).unwrap(),
            name: TenantName::parse(slug).unwrap(),
            owner_email: Email::parse(&format!("o@{slug}.example")).unwrap(),
            plan: self.plans.get(plan).unwrap(),
            lifecycle: Lifecycle::Active,
        };
        let tenant = registry::create(&mut tx, &Actor::system("test"), None, new).await.unwrap();
        tx.commit().await.unwrap();
        tenant
    }

    async fn get(&self, id: TenantId) -> Tenant {
        registry::get(&mut self.db.acquire().await.unwrap(), &TenantRef::Id(id)).await.unwrap()
    }

    async fn set_lifecycle(&self, id: TenantId, lifecycle: Lifecycle) {
        let mut tx = self.db.begin().await.unwrap();
        registry::set_lifecycle(&mut tx, &Actor::system("test"), None, &TenantRef::Id(id), lifecycle, None)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }

    async fn database_exists(&self, name: &str) -> bool {
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&self.db)
            .await
            .unwrap()
    }

    async fn events(&self, id: TenantId, kind: &str) -> Vec<serde_json::Value> {
        sqlx::query_scalar("SELECT data FROM events WHERE tenant_id = $1 AND kind = $2 ORDER BY id")
            .bind(id.0)
            .bind(kind)
            .fetch_all(&self.db)
            .await
            .unwrap()
    }

    /// Runs `work` in the pool as the owner, under `tenant`'s row-level security.
    async fn in_pool_as<T>(&self, tenant: TenantId, work: impl AsyncFnOnce(&mut sqlx::PgConnection) -> T) -> T {
        use sqlx::{ConnectOptions, Connection};
        let mut owner = self.dbs.server.owner_options(&self.dbs.pool_database).connect().await.unwrap();
        let mut tx = owner.begin().await.unwrap();
        sqlx::query("SELECT set_config('app.current_tenant', $1, true)")
            .bind(tenant.to_string())
            .execute(&mut *tx)
            .await
            .unwrap();
        let result = work(&mut tx).await;
        tx.commit().await.unwrap();
        result
    }

    /// Drops the pool and every silo this world's tenants have.
    async fn cleanup(self) {
        let ids: Vec<(uuid::Uuid, String)> =
            sqlx::query_as("SELECT id, slug FROM tenants").fetch_all(&self.db).await.unwrap();
        for (id, slug) in ids {
            let slug = Slug::parse(&slug).unwrap();
            let name = silo_database(TenantId(id), &slug);
            self.dbs.server.drop_database(&name).await.unwrap();
        }
        self.dbs.server.drop_database(&self.dbs.pool_database).await.unwrap();
    }
}

async fn wait_until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..600 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}");
}

#[sqlx::test(migrator = "db::MIGRATOR")]
async fn new_tenants_converge_to_their_spec(pool: PgPool) {
    let world = World::new(pool).await;
    let controller = world.controller(world.local(), 2);
    let shop = world.tenant("pool-shop", "growth").await;
    let big = world.tenant("big-corp", "enterprise").await;
    for id in [shop.id, big.id] {
        assert!(matches!(reconcile(&world, &controller, id).await.unwrap(), Outcome::Applied(_)));
    }
    let shop = world.get(shop.id).await;
    assert_eq!((shop.status.phase, shop.status.observed_generation), (Phase::Ready, 1));
    assert_eq!(shop.status.placement.unwrap().database, world.dbs.pool_database);
    let big = world.get(big.id).await;
    let placement = big.status.placement.clone().unwrap();
    assert_eq!(placement.database, silo_database(big.id, &big.slug));
    assert!(world.database_exists(&placement.database).await);
    assert_eq!(big.status.phase, Phase::Ready);
    assert_eq!(world.events(big.id, "Reconciled").await[0]["actions"][0]["action"], "create_silo");

    // A second pass changes nothing and says so.
    let Outcome::Applied(decision) = reconcile(&world, &controller, big.id).await.unwrap() else { panic!() };
    assert!(decision.actions.is_empty());
    assert_eq!(world.events(big.id, "Reconciled").await.len(), 1);

    world.set_lifecycle(shop.id, Lifecycle::Suspended).await;
    reconcile(&world, &controller, shop.id).await.unwrap();
    let shop = world.get(shop.id).await;
    assert_eq!((shop.status.phase, shop.status.observed_generation), (Phase::Suspended, 2));
    world.cleanup().await;
}

async fn reconcile<P: DatabaseProvider>(
    world: &World,
    controller: &Controller<P>,
    id: TenantId,
) -> Result<Outcome, reconciler::ReconcileError> {
    reconcile_with(world, &controller.context(), id).await
}

async fn reconcile_with<P: DatabaseProvider>(
    world: &World,
    ctx: &reconciler::Context<P>,
    id: TenantId,
) -> Result<Outcome, reconciler::ReconcileError> {
    let mut conn = world.db.acquire().await.unwrap();
    reconciler::apply(ctx, &mut conn, id).await
}

/// The reconciler's context, for calling `reconcile` directly.
fn controller_ctx<P: DatabaseProvider>(controller: &Controller<P>) -> Arc<reconciler::Context<P>> {
    controller.context()
}

#[sqlx::test(migrator = "db::MIGRATOR")]
async fn a_dropped_silo_database_is_recreated_and_reported(pool: PgPool) {
    let world = World::new(pool).await;
    let controller = world.controller(world.local(), 2);
    let tasks = controller.spawn();
    let big = world.tenant("drifty", "enterprise").await;
    wait_until("the silo is placed", async || world.get(big.id).await.status.placement.is_some()).await;
    let database = world.get(big.id).await.status.placement.unwrap().database;

    // Someone drops it by hand.
    world.dbs.server.drop_database(&database).await.unwrap();
    assert!(!world.database_exists(&database).await);
    controller.queue().schedule_now(big.id);
    wait_until("the silo is recreated", async || world.database_exists(&database).await).await;
    wait_until("the repair is reported", async || !world.events(big.id, "DriftRepaired").await.is_empty()).await;
    let diff = &world.events(big.id, "DriftRepaired").await[0];
    assert_eq!(diff["actions"][0]["action"], "recreate_silo");
    assert_eq!(world.get(big.id).await.status.phase, Phase::Ready);
    tasks.iter().for_each(|t| t.abort());
    world.cleanup().await;
}

#[sqlx::test(migrator = "db::MIGRATOR")]
async fn deletion_releases_resources_before_the_tenant_is_done(pool: PgPool) {
    let world = World::new(pool).await;
    let controller = world.controller(world.local(), 2);
    let ctx = controller_ctx(&controller);
    let shop = world.tenant("leaving-shop", "starter").await;
    let big = world.tenant("leaving-corp", "enterprise").await;
    let stays = world.tenant("staying-shop", "starter").await;
    for id in [shop.id, big.id, stays.id] {
        reconcile_with(&world, &ctx, id).await.unwrap();
    }
    // Rows in the pool for the leaving tenant and for one that stays.
    for tenant in [shop.id, stays.id] {
        world
            .in_pool_as(tenant, async |tx| {
                sqlx::query("INSERT INTO products (tenant_id, id, name, price_minor, currency) VALUES ($1, gen_random_uuid(), 'x', 1, 'usd')")
                    .bind(tenant.0)
                    .execute(tx)
                    .await
                    .unwrap();
            })
            .await;
    }
    let silo = world.get(big.id).await.status.placement.unwrap().database;
    world.set_lifecycle(shop.id, Lifecycle::Deleted).await;
    world.set_lifecycle(big.id, Lifecycle::Deleted).await;
    for id in [shop.id, big.id] {
        reconcile_with(&world, &ctx, id).await.unwrap();
        let tenant = world.get(id).await;
        assert_eq!((tenant.status.phase, tenant.status.placement), (Phase::Deleted, None));
    }
    assert!(!world.database_exists(&silo).await);
    let count = async |tenant: TenantId| {
        world
            .in_pool_as(tenant, async |tx| {
                let n: i64 = sqlx::query_scalar("SELECT count(*) FROM products").fetch_one(tx).await.unwrap();
                n
            })
            .await
    };
    assert_eq!(count(shop.id).await, 0, "the deleted tenant's rows are gone");
    assert_eq!(count(stays.id).await, 1, "other tenants' rows are untouched");
    // Done tenants need nothing more.
    assert!(matches!(reconcile_with(&world, &ctx, big.id).await.unwrap(), Outcome::Finished));
    let mut conn = world.db.acquire().await.unwrap();
    let requeue = reconciler::reconcile(&ctx, &mut conn, big.id).await.unwrap();
    assert_eq!(requeue, Requeue::AwaitChange, "looked at again only when something changes it");
    world.cleanup().await;
}

#[sqlx::test(migrator = "db::MIGRATOR")]
async fn pause_and_dry_run_change_nothing(pool: PgPool) {
    let world = World::new(pool).await;
    let controller = world.controller(world.local(), 1);
    let ctx = controller_ctx(&controller);
    let big = world.tenant("careful-corp", "enterprise").await;
    let silo = silo_database(big.id, &big.slug);

    let plan = reconciler::dry_run(&ctx, big.id).await.unwrap();
    assert_eq!(plan.actions, [serde_json::json!({ "action": "create_silo" })]);
    assert!(!world.database_exists(&silo).await, "a dry run creates nothing");
    assert_eq!(world.get(big.id).await.status.phase, Phase::Pending);

    sqlx::query("UPDATE tenants SET reconcile_paused = true WHERE id = $1")
        .bind(big.id.0)
        .execute(&world.db)
        .await
        .unwrap();
    assert!(matches!(reconcile_with(&world, &ctx, big.id).await.unwrap(), Outcome::Paused));
    assert!(!world.database_exists(&silo).await);
    assert!(reconciler::dry_run(&ctx, big.id).await.unwrap().paused);

    sqlx::query("UPDATE tenants SET reconcile_paused = false WHERE id = $1")
        .bind(big.id.0)
        .execute(&world.db)
        .await
        .unwrap();
    reconcile_with(&world, &ctx, big.id).await.unwrap();
    assert!(world.database_exists(&silo).await);
    world.cleanup().await;
}

/// Fails every call for one tenant; counts how many reconciles of a tenant overlap.
struct Instrumented {
    inner: LocalDatabases,
    sick: Option<TenantId>,
    /// What the sick tenant's calls fail with.
    failure: ProviderError,
    in_flight: Mutex<HashMap<TenantId, usize>>,
    max_overlap: AtomicUsize,
    calls: Mutex<HashMap<TenantId, usize>>,
}

impl Instrumented {
    fn new(inner: LocalDatabases, sick: Option<TenantId>) -> Self {
        Self {
            inner,
            sick,
            failure: ProviderError::Transient("injected outage".into()),
            in_flight: Mutex::default(),
            max_overlap: AtomicUsize::new(0),
            calls: Mutex::default(),
        }
    }

    async fn guarded<T>(
        &self,
        tenant: TenantId,
        work: impl Future<Output = Result<T, ProviderError>>,
    ) -> Result<T, ProviderError> {
        *self.calls.lock().unwrap().entry(tenant).or_default() += 1;
        if self.sick == Some(tenant) {
            return Err(self.failure.clone());
        }
        let now = {
            let mut in_flight = self.in_flight.lock().unwrap();
            let n = in_flight.entry(tenant).or_default();
            *n += 1;
            *n
        };
        self.max_overlap.fetch_max(now, Ordering::SeqCst);
        // Counted out even when the reconcile is cancelled (a replica dying).
        let _leave = Leave { provider: self, tenant };
        // Widen the window in which a second reconcile could sneak in.
        tokio::time::sleep(Duration::from_millis(100)).await;
        work.await
    }
}

struct Leave<'a> {
    provider: &'a Instrumented,
    tenant: TenantId,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        *self.provider.in_flight.lock().unwrap().get_mut(&self.tenant).unwrap() -= 1;
    }
}

impl DatabaseProvider for Instrumented {
    async fn observe_silo(&self, t: &SiloTenant<'_>) -> Result<Option<SiloState>, ProviderError> {
        self.guarded(t.id, self.inner.observe_silo(t)).await
    }
    async fn ensure_silo(&self, t: &SiloTenant<'_>) -> Result<SiloState, ProviderError> {
        self.guarded(t.id, self.inner.ensure_silo(t)).await
    }
    async fn delete_silo(&self, t: &SiloTenant<'_>) -> Result<(), ProviderError> {
        self.guarded(t.id, self.inner.delete_silo(t)).await
    }
    async fn delete_pool_rows(&self, tenant: TenantId) -> Result<u64, ProviderError> {
        self.guarded(tenant, self.inner.delete_pool_rows(tenant)).await
    }
    async fn reach(&self, cluster: Option<&str>, database: &str) -> Result<indigo_tenantdb::Database, ProviderError> {
        self.inner.reach(cluster, database).await
    }
}

#[sqlx::test(migrator = "db::MIGRATOR")]
async fn a_failing_tenant_backs_off_alone(pool: PgPool) {
    let world = World::new(pool).await;
    let sick = world.tenant("sick-corp", "enterprise").await;
    let healthy: Vec<Tenant> = futures_join(&world, &["well-a", "well-b", "well-c"]).await;
    let provider = Arc::new(Instrumented::new(world.local(), Some(sick.id)));
    let controller = world.controller(provider.clone(), 2);
    let tasks = controller.spawn();
    for tenant in &healthy {
        let id = tenant.id;
        wait_until("healthy tenants converge", async || world.get(id).await.status.phase == Phase::Ready).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sick_calls = provider.calls.lock().unwrap()[&sick.id];
    // 0.5 s, 1 s, 2 s, ... between attempts: a handful, not the hundreds of a busy loop,
    // even on a loaded machine where the healthy ones take a while.
    assert!((2..=8).contains(&sick_calls), "the sick tenant was tried {sick_calls} times");
    let sick_now = world.get(sick.id).await;
    let ready = sick_now.status.conditions.iter().find(|c| c.kind == "Ready").unwrap();
    assert_eq!(ready.reason, "ProviderUnavailable");
    assert!(ready.message.contains("injected outage"), "{}", ready.message);
    assert_eq!(world.events(sick.id, "ReconcileFailed").await.len(), 1, "one event per failure streak, not per retry");
    let status = indigo_controlplane::reconciler::ReconcilerControl::status(&controller);
    assert_eq!(status.backing_off, 1);
    assert!(status.errors_by_reason["ProviderUnavailable"] >= 2);
    tasks.iter().for_each(|t| t.abort());
    world.cleanup().await;
}

/// A refusal retrying cannot fix (AWS out of capacity, a quota) is the
/// operator's: the tenant fails with the provider's own reason and message,
/// and is not retried at a transient error's pace.
#[sqlx::test(migrator = "db::MIGRATOR")]
async fn a_permanent_provider_error_shows_the_providers_reason(pool: PgPool) {
    let world = World::new(pool).await;
    let refused = world.tenant("refused-corp", "enterprise").await;
    let mut provider = Instrumented::new(world.local(), Some(refused.id));
    provider.failure = ProviderError::Permanent {
        reason: "InsufficientDBClusterCapacityFault".into(),
        message: "Cannot create a cluster: not enough capacity in us-east-1a".into(),
    };
    let provider = Arc::new(provider);
    let controller = world.controller(provider.clone(), 1);
    let tasks = controller.spawn();
    wait_until("the tenant fails", async || world.get(refused.id).await.status.phase == Phase::Failed).await;
    // Retrying cannot help: the next attempt waits minutes, not the half second
    // a transient error waits (`a_failing_tenant_backs_off_alone` sees several in 2 s).
    let calls = provider.calls.lock().unwrap()[&refused.id];
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(provider.calls.lock().unwrap()[&refused.id], calls, "retried at a transient error's pace");
    let tenant = world.get(refused.id).await;
    let ready = tenant.status.conditions.iter().find(|c| c.kind == "Ready").unwrap();
    assert_eq!(ready.reason, "InsufficientDBClusterCapacityFault");
    assert!(ready.message.contains("not enough capacity in us-east-1a"), "{}", ready.message);
    let failed = world.events(refused.id, "ReconcileFailed").await;
    assert_eq!(failed[0]["reason"], "InsufficientDBClusterCapacityFault");
    tasks.iter().for_each(|t| t.abort());
    world.cleanup().await;
}

async fn futures_join(world: &World, slugs: &[&str]) -> Vec<Tenant> {
    let mut tenants = Vec::new();
    for slug in slugs {
        tenants.push(world.tenant(slug, "enterprise").await);
    }
    tenants
}

#[sqlx::test(migrator = "db::MIGRATOR")]
async fn two_replicas_never_reconcile_one_tenant_at_once(pool: PgPool) {
    let world = World::new(pool).await;
    let tenants = futures_join(&world, &["twin-a", "twin-b", "twin-c", "twin-d"]).await;
    let provider = Arc::new(Instrumented::new(world.local(), None));
    let first = world.controller(provider.clone(), 4);
    let second = world.controller(provider.clone(), 4);
    // Both replicas want every tenant at the same moment, repeatedly.
    let first_tasks = first.spawn();
    let second_tasks = second.spawn();
    for _ in 0..3 {
        first.enqueue_all().await.unwrap();
        second.enqueue_all().await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // One replica dies; the other carries on with a new tenant.
    first_tasks.iter().for_each(|t| t.abort());
    let late = world.tenant("twin-late", "enterprise").await;
    for tenant in tenants.iter().chain([&late]) {
        let id = tenant.id;
        wait_until("every tenant converges", async || world.get(id).await.status.phase == Phase::Ready).await;
    }
    assert_eq!(provider.max_overlap.load(Ordering::SeqCst), 1, "a tenant was reconciled by two replicas at once");
    second_tasks.iter().for_each(|t| t.abort());
    world.cleanup().await;
}

#[sqlx::test(migrator = "db::MIGRATOR")]
async fn spec_changes_are_picked_up_at_once_and_the_pool_is_audited(pool: PgPool) {
    let world = World::new(pool).await;
    let controller = world.controller(world.local(), 2);
    let tasks = controller.spawn();
    let shop = world.tenant("notified-shop", "growth").await;
    wait_until("the new tenant is reconciled", async || world.get(shop.id).await.status.observed_generation == 1).await;
    // The resync is an hour away: only the NOTIFY can bring this change in.
    world.set_lifecycle(shop.id, Lifecycle::Suspended).await;
    wait_until("the suspension is observed", async || {
        let t = world.get(shop.id).await;
        t.status.observed_generation == 2 && t.status.phase == Phase::Suspended
    })
    .await;

    let audit = controller.audit_pool().await.unwrap();
    assert!(audit.violations.is_empty(), "{:?}", audit.violations);
    tasks.iter().for_each(|t| t.abort());
    world.cleanup().await;
}

/// Work that one replica at a time should do (a pass over the fleet's
/// services) runs in one: while a replica holds the singleton lock, another's
/// attempt does not start its work; once released, the next one does.
#[sqlx::test(migrator = "db::MIGRATOR")]
async fn singleton_work_runs_in_one_replica_at_a_time(pool: PgPool) {
    use indigo_controlplane::runtime::as_singleton;
    const NAME: &str = "indigo:test-singleton";
    let (entered, inside) = tokio::sync::oneshot::channel();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let first = tokio::spawn({
        let pool = pool.clone();
        async move {
            as_singleton(&pool, NAME, async {
                entered.send(()).unwrap();
                released.await.unwrap();
                Ok::<_, sqlx::Error>("first")
            })
            .await
        }
    });
    inside.await.unwrap();
    let started = std::sync::atomic::AtomicBool::new(false);
    let second = as_singleton(&pool, NAME, async {
        started.store(true, std::sync::atomic::Ordering::SeqCst);
        Ok::<_, sqlx::Error>("second")
    })
    .await
    .unwrap();
    assert_eq!(second, None);
    assert!(!started.load(std::sync::atomic::Ordering::SeqCst), "the second replica's work never started");
    release.send(()).unwrap();
    assert_eq!(first.await.unwrap().unwrap(), Some("first"));
    let third = as_singleton(&pool, NAME, async { Ok::<_, sqlx::Error>("third") }).await.unwrap();
    assert_eq!(third, Some("third"), "free again once the first is done");
}
