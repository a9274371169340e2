//! A console with known data at a known time, so that what it draws is the
//! same on every run: fixed ids, fixed timestamps, the real plan catalogue.

use chrono::{DateTime, Duration, Utc};
use indigo_core::api::{
    BillingParity, Event, Placement, ReconcilerStatus, RlsAudit, ServiceReplicas, Tenant, TenantCost, TenantMove,
    TenantSpec, TenantStatus, TenantUsage, Workflow, WorkflowState, WorkflowStep,
};
use indigo_core::plan::{Plan, PlanCatalog};
use indigo_core::tenant::{Isolation, Lifecycle, Phase, Slug, TenantId};
use indigo_tui::app::{App, Loaded};
use indigo_tui::theme::Theme;
use indigo_tui::views;
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use uuid::Uuid;

/// The moment every fixture is seen from.
pub fn now() -> DateTime<Utc> {
    "2026-12-03T12:00:00Z".parse().unwrap()
}

pub fn ago(seconds: i64) -> DateTime<Utc> {
    now() - Duration::seconds(seconds)
}

/// The plans `indigo up` serves, from the repository's own catalogue.
pub fn plans() -> Vec<Plan> {
    let text = include_str!("../../../policies/plans.toml");
    PlanCatalog::parse("policies/plans.toml", text).unwrap().plans().into_iter().cloned().collect()
}

/// A console as the runtime makes one, its clock stopped at [`now`].
pub fn console(read_only: bool) -> App {
    let mut app = App::new("http://127.0.0.1:8080", read_only);
    app.now = now();
    app
}

/// A tenant numbered `n`: the number is its id, so ids are stable too.
pub fn tenant(n: u128, slug: &str, plan: &str, phase: Phase) -> Tenant {
    let isolation = if plan == "enterprise" { Isolation::Silo } else { Isolation::Pool };
    let database =
        if isolation == Isolation::Silo { format!("silo_{}", slug.replace('-', "_")) } else { "indigo_pool".into() };
    Tenant {
        id: TenantId(Uuid::from_u128(n)),
        slug: Slug::parse(slug).unwrap(),
        name: format!("Shop {slug}"),
        owner_email: format!("o@{slug}.example"),
        spec: TenantSpec {
            plan: serde_json::from_value(plan.into()).unwrap(),
            isolation,
            lifecycle: Lifecycle::Active,
            generation: 1,
        },
        status: TenantStatus {
            phase,
            conditions: vec![],
            placement: Some(Placement { isolation, database, cluster: None, service: None }),
            observed_generation: 1,
            last_reconciled_at: Some(ago(20)),
        },
        created_at: ago(86_400),
        updated_at: ago(60),
    }
}

pub fn fleet() -> Vec<Tenant> {
    vec![
        tenant(1, "acme-shoes", "starter", Phase::Ready),
        tenant(2, "blue-bakery", "growth", Phase::Ready),
        tenant(3, "cobalt-coffee", "pro", Phase::Degraded),
        tenant(4, "fjord-fashion", "enterprise", Phase::Ready),
    ]
}

pub fn event(id: i64, tenant: &Tenant, kind: &str, message: &str) -> Event {
    Event {
        id,
        tenant_id: Some(tenant.id),
        kind: kind.into(),
        message: message.into(),
        data: serde_json::json!({}),
        created_at: ago(600 - id * 60),
    }
}

pub fn reconciler() -> ReconcilerStatus {
    ReconcilerStatus {
        running: true,
        workers: 8,
        reconciles_total: 42,
        last_full_resync_at: Some(ago(45)),
        rls_audit: Some(RlsAudit { at: ago(300), database: "indigo_pool".into(), violations: vec![] }),
        services: vec![ServiceReplicas {
            name: "indigo-dp-pool".into(),
            tenant_id: None,
            running: 1,
            wanted: 2,
            address: Some("http://127.0.0.1:8081".into()),
        }],
        ..Default::default()
    }
}

pub fn usage(tenant: &Tenant, calls_today: i64, per_second: f64) -> TenantUsage {
    TenantUsage {
        tenant_id: tenant.id,
        api_calls_today: calls_today,
        requests_per_second: per_second,
        ai_credits_this_month: 12.5,
    }
}

pub fn step(name: &str, state: &str, error: Option<&str>) -> WorkflowStep {
    WorkflowStep {
        name: name.into(),
        state: state.into(),
        attempts: 1,
        output: None,
        error: error.map(str::to_owned),
        next_attempt_at: None,
        started_at: Some(ago(120)),
        finished_at: Some(ago(100)),
    }
}

pub fn workflow(n: u128, tenant: &Tenant, kind: &str, state: WorkflowState, steps: Vec<WorkflowStep>) -> Workflow {
    Workflow {
        id: Uuid::from_u128(0x1000 + n),
        kind: kind.into(),
        tenant_id: tenant.id,
        state,
        attempt: 1,
        error: (state == WorkflowState::Failed).then(|| "step `billing` failed: Stripe refused the request".into()),
        cancel_requested: false,
        steps,
        total_steps: 8,
        created_at: ago(150),
        updated_at: ago(100),
        finished_at: None,
    }
}

/// A tier change of `tenant` into the silo, copying its rows.
pub fn upgrade_copying(tenant: &Tenant) -> Workflow {
    let steps = vec![
        step("entitlements", "succeeded", None),
        step("provision", "succeeded", None),
        step("copy", "running", None),
    ];
    workflow(1, tenant, "tier_change", WorkflowState::Running, steps)
}

pub fn moving(workflow: &Workflow, tenant: &Tenant, phase: &str, copied: i64, total: i64) -> TenantMove {
    TenantMove {
        workflow_id: workflow.id,
        tenant_id: tenant.id,
        slug: tenant.slug.to_string(),
        from_isolation: Isolation::Pool,
        to_isolation: Isolation::Silo,
        source_database: "indigo_pool".into(),
        target_database: Some(format!("silo_{}", tenant.slug.as_str().replace('-', "_"))),
        phase: phase.into(),
        rows_total: total,
        rows_copied: copied,
        lag: 12,
        pause_ms: None,
        estimated_copy_seconds: Some(34.0),
        estimated_pause_ms: Some(25),
        copy_seconds: None,
        error: None,
        started_at: ago(140),
        updated_at: ago(5),
        switched_at: None,
        finished_at: None,
    }
}

pub fn cost(tenant: &Tenant, total: f64, revenue: f64, calls: f64) -> TenantCost {
    TenantCost {
        tenant_id: tenant.id,
        slug: tenant.slug.clone(),
        plan: tenant.spec.plan.clone(),
        isolation: tenant.spec.isolation,
        usage_30d: [("api_call".to_owned(), calls)].into(),
        cost: [("ecs_fargate".to_owned(), total)].into(),
        cost_total: total,
        revenue,
        margin: revenue - total,
        unprofitable: total > revenue,
        currency: "usd".into(),
    }
}

/// One refresh of the fleet; what a test leaves out is empty.
#[derive(Default)]
pub struct Fleet {
    pub tenants: Vec<Tenant>,
    pub events: Vec<Event>,
    pub reconciler: Option<ReconcilerStatus>,
    pub usage: Vec<TenantUsage>,
    pub workflows: Vec<Workflow>,
    pub moves: Vec<TenantMove>,
    pub costs: Vec<TenantCost>,
    pub parity: Vec<BillingParity>,
    /// The plan catalogue; the repository's own when left out.
    pub plans: Option<Vec<Plan>>,
}

impl Fleet {
    pub fn loaded(self) -> Loaded {
        Loaded::Fleet {
            tenants: self.tenants,
            events: self.events,
            reconciler: self.reconciler,
            usage: self.usage,
            workflows: self.workflows,
            moves: self.moves,
            costs: self.costs,
            parity: self.parity,
            plans: self.plans.unwrap_or_else(plans),
            at: ago(1),
        }
    }
}

/// The fleet with an event, the reconciler's state and some traffic.
pub fn load(app: &mut App, tenants: Vec<Tenant>) {
    let events = tenants.first().map(|t| event(1, t, "PlanChanged", "plan of acme-shoes changed to growth"));
    let usage = tenants.first().map(|t| usage(t, 850, 2.5));
    app.apply(
        Fleet {
            events: events.into_iter().collect(),
            usage: usage.into_iter().collect(),
            reconciler: Some(reconciler()),
            tenants,
            ..Fleet::default()
        }
        .loaded(),
    );
}

pub fn terminal(app: &App, width: u16, height: u16) -> Terminal<TestBackend> {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal.draw(|frame| views::draw(frame, app, Theme { color: false })).unwrap();
    terminal
}

/// The screen as text, one line per row.
pub fn render(app: &App, width: u16, height: u16) -> String {
    let terminal = terminal(app, width, height);
    let buffer = terminal.backend().buffer();
    let mut text = String::new();
    for y in 0..buffer.area.height {
        for x in 0..buffer.area.width {
            text.push_str(buffer[(x, y)].symbol());
        }
        text.push('\n');
    }
    text
}
