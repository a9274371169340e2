//! The console without a terminal: rendering on ratatui's TestBackend and key
//! handling on the pure state, for every view and action.

use chrono::Utc;
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use indigo_core::api::{
    Event, Placement, ReconcilerStatus, RlsAudit, Tenant, TenantMove, TenantSpec, TenantStatus, Workflow,
    WorkflowState, WorkflowStep,
};
use indigo_core::tenant::{Isolation, Lifecycle, Phase, Slug, TenantId};
use indigo_tui::app::{App, Column, Command, Connection, Effect, Loaded, Mode, View};
use indigo_tui::ui::{self, Theme};
use ratatui::Terminal;
use ratatui::backend::TestBackend;

fn tenant(slug: &str, plan: &str, phase: Phase) -> Tenant {
    let isolation = if plan == "enterprise" { Isolation::Silo } else { Isolation::Pool };
    Tenant {
        id: TenantId::new(),
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
            placement: Some(Placement { isolation, database: "indigo_pool".into(), cluster: None, service: None }),
            observed_generation: 1,
            last_reconciled_at: Some(Utc::now()),
        },
        created_at: Utc::now(),
        updated_at: Utc::now(),
    }
}

fn fleet() -> Vec<Tenant> {
    vec![
        tenant("acme-shoes", "starter", Phase::Ready),
        tenant("blue-bakery", "growth", Phase::Ready),
        tenant("cobalt-coffee", "pro", Phase::Degraded),
        tenant("fjord-fashion", "enterprise", Phase::Ready),
    ]
}

fn loaded(app: &mut App, tenants: Vec<Tenant>) {
    let event = Event {
        id: 1,
        tenant_id: tenants.first().map(|t| t.id),
        kind: "PlanChanged".into(),
        message: "plan of acme-shoes changed to growth".into(),
        data: serde_json::json!({}),
        created_at: Utc::now(),
    };
    let reconciler = ReconcilerStatus {
        running: true,
        workers: 8,
        reconciles_total: 42,
        rls_audit: Some(RlsAudit { at: Utc::now(), database: "indigo_pool".into(), violations: vec![] }),
        services: vec![indigo_core::api::ServiceReplicas {
            name: "indigo-dp-pool".into(),
            tenant_id: None,
            running: 1,
            wanted: 2,
            address: Some("http://127.0.0.1:8081".into()),
        }],
        ..Default::default()
    };
    let usage = tenants
        .first()
        .map(|t| indigo_core::api::TenantUsage { tenant_id: t.id, api_calls_today: 850, requests_per_second: 2.5 })
        .into_iter()
        .collect();
    app.daily_limits.insert("starter".into(), indigo_core::plan::Limit::AtMost(1000));
    let workflows = vec![];
    app.apply(Loaded::Fleet {
        tenants,
        events: vec![event],
        reconciler: Some(reconciler),
        usage,
        workflows,
        moves: vec![],
        costs: vec![],
        at: Utc::now(),
    });
}

fn step(name: &str, state: &str, error: Option<&str>) -> WorkflowStep {
    WorkflowStep {
        name: name.into(),
        state: state.into(),
        attempts: 1,
        output: None,
        error: error.map(str::to_owned),
        next_attempt_at: None,
        started_at: Some(Utc::now()),
        finished_at: Some(Utc::now()),
    }
}

fn workflow(tenant: &Tenant, kind: &str, state: WorkflowState, steps: Vec<WorkflowStep>) -> Workflow {
    Workflow {
        id: uuid::Uuid::now_v7(),
        kind: kind.into(),
        tenant_id: tenant.id,
        state,
        attempt: 1,
        error: (state == WorkflowState::Failed).then(|| "step `billing` failed: Stripe refused the request".into()),
        cancel_requested: false,
        steps,
        total_steps: 8,
        created_at: Utc::now(),
        updated_at: Utc::now(),
        finished_at: None,
    }
}

fn render(app: &App, width: u16, height: u16) -> String {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal.draw(|frame| ui::draw(frame, app, Theme { color: false })).unwrap();
    let buffer = terminal.backend().buffer().clone();
    let mut text = String::new();
    for y in 0..buffer.area.height {
        for x in 0..buffer.area.width {
            text.push_str(buffer[(x, y)].symbol());
        }
        text.push('\n');
    }
    text
}

fn key(app: &mut App, code: KeyCode) -> Vec<Effect> {
    app.handle_key(KeyEvent::new(code, KeyModifiers::NONE))
}

fn type_text(app: &mut App, text: &str) {
    for c in text.chars() {
        key(app, KeyCode::Char(c));
    }
}

#[test]
fn tenants_view_at_80x24() {
    let mut app = App::new("http://127.0.0.1:8080", false);
    loaded(&mut app, fleet());
    let screen = render(&app, 80, 24);
    for needle in ["tenants (4 of 4)", "acme-shoes", "fjord-fashion", "silo", "degraded", "SLUG"] {
        assert!(screen.contains(needle), "{needle} missing from\n{screen}");
    }
}

#[test]
fn traffic_columns_show_rate_and_todays_calls_against_the_plan() {
    let mut app = App::new("http://api", false);
    loaded(&mut app, fleet());
    let screen = render(&app, 140, 24);
    assert!(screen.contains("850/1000 85%"), "{screen}");
    assert!(screen.contains("2.5"), "{screen}");
    key(&mut app, KeyCode::Char('0'));
    assert_eq!(app.sort, (Column::Today, false));
    key(&mut app, KeyCode::Char('0'));
    assert_eq!(app.visible()[0].slug.as_str(), "acme-shoes", "the busiest first when reversed");
    key(&mut app, KeyCode::Char('9'));
    assert_eq!(app.sort, (Column::Rate, false));
}

#[test]
fn loading_empty_stale_and_unauthorized_states() {
    let mut app = App::new("http://api", false);
    assert!(render(&app, 80, 24).contains("loading…"));
    loaded(&mut app, vec![]);
    assert!(render(&app, 80, 24).contains("no tenants yet"));
    loaded(&mut app, fleet());
    app.apply(Loaded::Failed { unauthorized: false, message: "connection refused".into() });
    let screen = render(&app, 100, 24);
    assert!(screen.contains("STALE, retrying: connection refused"), "{screen}");
    assert!(screen.contains("acme-shoes"), "the last data stays on screen");
    app.apply(Loaded::Failed { unauthorized: true, message: "invalid or revoked token".into() });
    assert!(render(&app, 100, 24).contains("UNAUTHORIZED"));
}

#[test]
fn detail_reconciler_events_help_and_notes_render() {
    let mut app = App::new("http://api", false);
    let mut tenants = fleet();
    tenants[0].spec.isolation = Isolation::Silo;
    tenants[0].spec.generation = 2;
    loaded(&mut app, tenants);
    assert_eq!(key(&mut app, KeyCode::Enter), [Effect::LoadDetail("acme-shoes".into())]);
    let screen = render(&app, 100, 30);
    for needle in [
        "acme-shoes · spec",
        "isolation   silo",
        "placement   pool · indigo_pool",
        "observed    generation 1",
        "no events yet",
    ] {
        assert!(screen.contains(needle), "{needle} missing from\n{screen}");
    }
    key(&mut app, KeyCode::Esc);
    for (command, needle) in [
        ("reconciler", "RLS audit     ok"),
        ("reconciler", "indigo-dp-pool                           1/2 replicas"),
        ("events", "PlanChanged"),
        ("moves", "No workflows yet"),
        ("cost", "No cost report"),
    ] {
        key(&mut app, KeyCode::Char(':'));
        type_text(&mut app, command);
        key(&mut app, KeyCode::Enter);
        let screen = render(&app, 100, 24);
        assert!(screen.contains(needle), ":{command} should show {needle}:\n{screen}");
    }
    key(&mut app, KeyCode::Char('?'));
    let screen = render(&app, 80, 24);
    assert!(screen.contains("filter (substring; !text inverts)"), "{screen}");
    key(&mut app, KeyCode::Esc);
    assert_eq!(app.view, View::Cost, "Esc leaves help to where it was opened");
}

#[test]
fn filter_sort_and_navigation() {
    let mut app = App::new("http://api", false);
    loaded(&mut app, fleet());
    key(&mut app, KeyCode::Char('/'));
    type_text(&mut app, "coffee");
    assert!(app.typing(), "refresh pauses while typing");
    assert_eq!(app.visible().len(), 1);
    key(&mut app, KeyCode::Enter);
    assert_eq!(app.filter, "coffee");
    key(&mut app, KeyCode::Char('/'));
    key(&mut app, KeyCode::Esc);
    key(&mut app, KeyCode::Char('/'));
    type_text(&mut app, "!pool");
    key(&mut app, KeyCode::Enter);
    let slugs: Vec<&str> = app.visible().iter().map(|t| t.slug.as_str()).collect();
    assert_eq!(slugs, ["fjord-fashion"], "! inverts the filter");
    key(&mut app, KeyCode::Char('/'));
    key(&mut app, KeyCode::Esc);

    key(&mut app, KeyCode::Char('6'));
    assert_eq!(app.sort, (Column::Phase, false));
    assert_eq!(app.visible()[0].slug.as_str(), "cobalt-coffee", "degraded sorts before ready");
    key(&mut app, KeyCode::Char('6'));
    assert_eq!(app.sort, (Column::Phase, true));
    key(&mut app, KeyCode::Char('1'));
    key(&mut app, KeyCode::Char('G'));
    assert_eq!(app.selected, 3);
    key(&mut app, KeyCode::Char('k'));
    assert_eq!(app.selected_tenant().unwrap().slug.as_str(), "cobalt-coffee");
    key(&mut app, KeyCode::Char('g'));
    key(&mut app, KeyCode::Down);
    assert_eq!(app.selected_tenant().unwrap().slug.as_str(), "blue-bakery");
}

#[test]
fn each_action_confirms_and_can_be_cancelled() {
    let mut app = App::new("http://api", false);
    loaded(&mut app, fleet());
    // Simple confirmations: y runs, anything else cancels.
    for (k, command) in [
        ('R', Command::ReconcileNow { slug: "acme-shoes".into() }),
        ('P', Command::SetReconcilePaused { slug: "acme-shoes".into(), paused: true }),
    ] {
        key(&mut app, KeyCode::Char(k));
        assert_eq!(app.mode, Mode::Confirm { command: command.clone() });
        assert!(key(&mut app, KeyCode::Char('n')).is_empty());
        assert_eq!(app.status, "cancelled");
        key(&mut app, KeyCode::Char(k));
        assert_eq!(key(&mut app, KeyCode::Char('y')), [Effect::Run(command)]);
    }
    // Dangerous ones need the slug typed back.
    for (k, command) in
        [('s', Command::Suspend { slug: "acme-shoes".into() }), ('X', Command::Offboard { slug: "acme-shoes".into() })]
    {
        key(&mut app, KeyCode::Char(k));
        assert!(render(&app, 80, 24).contains("Type acme-shoes"));
        assert!(key(&mut app, KeyCode::Char('y')).is_empty(), "y is not enough");
        key(&mut app, KeyCode::Esc);
        assert_eq!(app.mode, Mode::Normal);
        key(&mut app, KeyCode::Char(k));
        type_text(&mut app, "acme-shoe");
        assert!(key(&mut app, KeyCode::Enter).is_empty(), "a wrong slug cancels");
        key(&mut app, KeyCode::Char(k));
        type_text(&mut app, "acme-shoes");
        assert_eq!(key(&mut app, KeyCode::Enter), [Effect::Run(command)]);
    }
    // Change plan: prompt, then confirm; enterprise is dangerous (a move).
    key(&mut app, KeyCode::Char('p'));
    type_text(&mut app, "gold");
    key(&mut app, KeyCode::Enter);
    assert!(app.status.contains("unknown plan `gold`"));
    key(&mut app, KeyCode::Char('p'));
    type_text(&mut app, "enterprise");
    key(&mut app, KeyCode::Enter);
    let screen = render(&app, 100, 24);
    assert!(screen.contains("moves to its own database"), "{screen}");
    type_text(&mut app, "acme-shoes");
    assert_eq!(
        key(&mut app, KeyCode::Enter),
        [Effect::Run(Command::ChangePlan {
            slug: "acme-shoes".into(),
            from: "starter".into(),
            plan: "enterprise".into()
        })]
    );
    assert_eq!(key(&mut app, KeyCode::Char('d')), [Effect::DryRun("acme-shoes".into())]);
    app.apply(Loaded::Done(Err("forbidden".into())));
    assert!(render(&app, 80, 24).contains("failed: forbidden"));
}

#[test]
fn read_only_mode_disables_every_action() {
    let mut app = App::new("http://api", true);
    loaded(&mut app, fleet());
    for k in ['p', 's', 'R', 'P', 'X'] {
        assert!(key(&mut app, KeyCode::Char(k)).is_empty());
        assert_eq!(app.mode, Mode::Normal, "{k} must not open a prompt");
        assert_eq!(app.status, "read-only: actions are disabled");
    }
    assert!(render(&app, 80, 24).contains("READ-ONLY"));
    // Watching still works.
    assert_eq!(key(&mut app, KeyCode::Char('d')), [Effect::DryRun("acme-shoes".into())]);
    assert_eq!(app.connection, Connection::Live);
}

#[test]
fn frame_time_with_ten_thousand_tenants() {
    let mut app = App::new("http://api", false);
    let tenants: Vec<Tenant> = (0..10_000).map(|n| tenant(&format!("shop-{n:05}"), "growth", Phase::Ready)).collect();
    loaded(&mut app, tenants);
    key(&mut app, KeyCode::Char('G'));
    let mut terminal = Terminal::new(TestBackend::new(160, 50)).unwrap();
    let frames = 50;
    let started = std::time::Instant::now();
    for _ in 0..frames {
        terminal.draw(|frame| ui::draw(frame, &app, Theme { color: true })).unwrap();
    }
    let per_frame = started.elapsed() / frames;
    let build = if cfg!(debug_assertions) { "debug" } else { "release" };
    println!("frame time with 10,000 tenants (160x50, {build} build): {per_frame:?}");
    assert!(render(&app, 160, 50).contains("shop-09999"), "the selection at the end is on screen");
}

#[test]
fn workflows_view_shows_progress_steps_and_acts_on_the_selected_one() {
    let mut app = App::new("http://api", false);
    let tenants = fleet();
    let running = workflow(
        &tenants[1],
        "onboarding",
        WorkflowState::Running,
        vec![
            step("record", "succeeded", None),
            step("database", "succeeded", None),
            step("billing", "retrying", Some("Stripe is unavailable")),
        ],
    );
    let failed = workflow(
        &tenants[2],
        "onboarding",
        WorkflowState::Failed,
        vec![step("record", "compensated", None), step("billing", "compensated", Some("Stripe refused the request"))],
    );
    let fleet_at = Utc::now();
    app.apply(Loaded::Fleet {
        tenants: tenants.clone(),
        events: vec![],
        reconciler: None,
        usage: vec![],
        workflows: vec![running, failed.clone()],
        moves: vec![],
        costs: vec![],
        at: fleet_at,
    });
    key(&mut app, KeyCode::Char(':'));
    type_text(&mut app, "workflows");
    key(&mut app, KeyCode::Enter);
    assert_eq!(app.view, View::Workflows);
    for (width, height) in [(140, 30), (80, 24)] {
        let screen = render(&app, width, height);
        for needle in [
            "workflows (2)",
            "blue-bakery",
            "cobalt-coffee",
            "2/8",
            "billing          retrying",
            "Stripe is unavailable",
        ] {
            assert!(screen.contains(needle), "{needle} missing at {width}x{height} from\n{screen}");
        }
    }

    // The running one cannot be retried; the failed one can, after confirmation.
    assert!(key(&mut app, KeyCode::Char('r')).is_empty());
    assert!(app.status.contains("only a failed or cancelled"), "{}", app.status);
    key(&mut app, KeyCode::Char('j'));
    key(&mut app, KeyCode::Char('r'));
    assert!(matches!(app.mode, Mode::Confirm { command: Command::RetryWorkflow { .. } }));
    let effects = key(&mut app, KeyCode::Char('y'));
    let expected =
        Command::RetryWorkflow { id: failed.id.to_string(), kind: "onboarding".into(), slug: "cobalt-coffee".into() };
    assert_eq!(effects, [Effect::Run(expected)]);

    // Cancel the running one.
    key(&mut app, KeyCode::Char('k'));
    key(&mut app, KeyCode::Char('c'));
    assert!(matches!(app.mode, Mode::Confirm { command: Command::CancelWorkflow { .. } }));
    assert!(key(&mut app, KeyCode::Char('n')).is_empty(), "n cancels the confirmation");

    // The tenant's detail lists its workflows.
    key(&mut app, KeyCode::Char(':'));
    type_text(&mut app, "tenants");
    key(&mut app, KeyCode::Enter);
    key(&mut app, KeyCode::Char('j'));
    key(&mut app, KeyCode::Enter);
    let screen = render(&app, 120, 30);
    assert!(screen.contains("onboarding running"), "{screen}");
    assert!(render(&app, 140, 30).contains("billing (retrying)"), "the current step in the wide list");

    // Read-only: no workflow actions.
    let mut viewer = App::new("http://api", true);
    viewer.apply(Loaded::Fleet {
        tenants,
        events: vec![],
        reconciler: None,
        usage: vec![],
        workflows: vec![failed],
        moves: vec![],
        costs: vec![],
        at: fleet_at,
    });
    key(&mut viewer, KeyCode::Char(':'));
    type_text(&mut viewer, "wf");
    key(&mut viewer, KeyCode::Enter);
    assert!(key(&mut viewer, KeyCode::Char('r')).is_empty());
    assert_eq!(viewer.mode, Mode::Normal);
    assert!(viewer.status.contains("read-only"));
}

#[test]
fn cost_view_puts_the_unprofitable_first_and_flags_them() {
    let mut app = App::new("http://api", false);
    let tenants = fleet();
    let cost = |t: &Tenant, total: f64, revenue: f64| indigo_core::api::TenantCost {
        tenant_id: t.id,
        slug: t.slug.clone(),
        plan: t.spec.plan.clone(),
        isolation: t.spec.isolation,
        usage_30d: [("api_call".to_owned(), 120_000.0)].into(),
        cost: [("ecs_fargate".to_owned(), total)].into(),
        cost_total: total,
        revenue,
        margin: revenue - total,
        unprofitable: total > revenue,
        currency: "usd".into(),
    };
    let mut quiet = cost(&tenants[2], 49.0, 99.0);
    quiet.usage_30d = [("api_call".to_owned(), 10.0)].into();
    let mut busy = cost(&tenants[1], 3.2, 99.0);
    busy.usage_30d = [("api_call".to_owned(), 900_000.0)].into();
    let costs = vec![quiet, cost(&tenants[0], 41.5, 29.0), busy];
    app.apply(Loaded::Fleet {
        tenants: tenants.clone(),
        events: vec![],
        reconciler: None,
        usage: vec![],
        workflows: vec![],
        moves: vec![],
        costs,
        at: Utc::now(),
    });
    key(&mut app, KeyCode::Char(':'));
    type_text(&mut app, "cost");
    key(&mut app, KeyCode::Enter);
    for (width, height) in [(140, 30), (80, 24)] {
        let screen = render(&app, width, height);
        for needle in ["1 unprofitable", "acme-shoes", "-12.50", "LOSS", "blue-bakery", "95.80", "120000"] {
            assert!(screen.contains(needle), "{needle} missing at {width}x{height}:\n{screen}");
        }
    }
    assert!(render(&app, 140, 30).contains("ecs_fargate 41.50"));
    let order = |app: &App| app.costs.iter().map(|c| c.slug.to_string()).collect::<Vec<_>>();
    assert_eq!(order(&app), ["acme-shoes", "cobalt-coffee", "blue-bakery"], "the loss first, then lowest margin");
    key(&mut app, KeyCode::Char('u'));
    assert_eq!(order(&app), ["acme-shoes", "blue-bakery", "cobalt-coffee"], "the loss first, then the busiest");
    assert!(render(&app, 140, 30).contains("then busiest"));
    key(&mut app, KeyCode::Char('u'));
    key(&mut app, KeyCode::Char('j'));
    assert_eq!(app.selected, 1);
}

#[test]
fn detail_shows_billing_and_a_days_usage_as_sparklines() {
    let mut app = App::new("http://api", false);
    loaded(&mut app, fleet());
    key(&mut app, KeyCode::Enter);
    let screen = render(&app, 100, 30);
    assert!(screen.contains("calls/h: no data"), "before the series arrives:\n{screen}");
    let mut usage = indigo_core::api::UsageSeries::default();
    usage.series.insert("api_call".into(), vec![0.0, 12.0, 30.0]);
    usage.series.insert("search_query".into(), vec![1.0, 0.0, 2.0]);
    usage.series.insert("ai_request".into(), vec![0.0, 0.0, 0.0]);
    let billing = indigo_core::api::TenantBilling {
        tenant_id: app.tenants[0].id,
        customer_id: "cus_123".into(),
        subscription_id: Some("sub_456".into()),
        price_id: Some("price_1".into()),
        status: "active".into(),
        payment_state: "past_due".into(),
        grace_until: None,
        usage_reported_through: None,
        last_usage_report_at: None,
    };
    app.apply(Loaded::Detail {
        slug: "acme-shoes".into(),
        events: vec![],
        audit: vec![],
        usage,
        billing: Some(billing),
    });
    assert!(render(&app, 120, 30).contains("billing     cus_123 · sub_456 · past_due"));
    for (width, height) in [(100, 30), (80, 24)] {
        let screen = render(&app, width, height);
        for needle in ["calls/h: 42 (max 30)", "search/h: 3 (max 2)", "AI cr/h: 0"] {
            assert!(screen.contains(needle), "{needle} missing at {width}x{height}:\n{screen}");
        }
    }
}

#[test]
fn moves_show_their_progress_above_the_workflows() {
    let mut app = App::new("http://api", false);
    let tenants = fleet();
    let upgrade = workflow(
        &tenants[0],
        "tier_change",
        WorkflowState::Running,
        vec![
            step("entitlements", "succeeded", None),
            step("provision", "succeeded", None),
            step("copy", "running", None),
        ],
    );
    let copying = TenantMove {
        workflow_id: upgrade.id,
        tenant_id: tenants[0].id,
        slug: tenants[0].slug.to_string(),
        from_isolation: Isolation::Pool,
        to_isolation: Isolation::Silo,
        source_database: "indigo_pool".into(),
        target_database: Some("silo_acme".into()),
        phase: "copying".into(),
        rows_total: 200_000,
        rows_copied: 50_000,
        lag: 12,
        pause_ms: None,
        error: None,
        started_at: Utc::now(),
        updated_at: Utc::now(),
        switched_at: None,
        finished_at: None,
    };
    let rolled_back = TenantMove {
        workflow_id: uuid::Uuid::new_v4(),
        slug: tenants[1].slug.to_string(),
        tenant_id: tenants[1].id,
        phase: "rolled_back".into(),
        error: Some("InsufficientDBClusterCapacity: no capacity".into()),
        ..copying.clone()
    };
    app.apply(Loaded::Fleet {
        tenants,
        events: vec![],
        reconciler: None,
        usage: vec![],
        workflows: vec![upgrade],
        moves: vec![copying, rolled_back],
        costs: vec![],
        at: Utc::now(),
    });
    key(&mut app, KeyCode::Char(':'));
    type_text(&mut app, "moves");
    key(&mut app, KeyCode::Enter);
    for (width, height) in [(140, 30), (80, 24)] {
        let screen = render(&app, width, height);
        for needle in ["moves (2)", "pool→silo", "copying", "50k/200k", "rolled_back", "workflows (1)"] {
            assert!(screen.contains(needle), "{needle} missing at {width}x{height} from\n{screen}");
        }
    }
    // The selected tier change says what its move is doing.
    let screen = render(&app, 140, 30);
    assert!(screen.contains("move pool→silo · copying · 50000 rows of 200000 copied · lag 12"), "{screen}");
    assert!(screen.contains("InsufficientDBClusterCapacity"), "the wide view shows why a move was rolled back");
}

#[test]
fn events_filter_by_tenant_or_type() {
    let mut app = App::new("http://api", false);
    let tenants = fleet();
    let event = |id: i64, tenant: &Tenant, kind: &str, message: &str| Event {
        id,
        tenant_id: Some(tenant.id),
        kind: kind.into(),
        message: message.into(),
        data: serde_json::json!({}),
        created_at: Utc::now(),
    };
    let events = vec![
        event(1, &tenants[0], "PlanChanged", "plan changed to enterprise"),
        event(2, &tenants[1], "TenantSuspended", "suspended: unpaid"),
        event(3, &tenants[1], "MoveSwitched", "now served from the silo"),
    ];
    app.apply(Loaded::Fleet {
        tenants,
        events,
        reconciler: None,
        usage: vec![],
        workflows: vec![],
        moves: vec![],
        costs: vec![],
        at: Utc::now(),
    });
    key(&mut app, KeyCode::Char(':'));
    type_text(&mut app, "events");
    key(&mut app, KeyCode::Enter);
    let screen = render(&app, 100, 24);
    assert!(["acme-shoes", "blue-bakery", "MoveSwitched"].iter().all(|n| screen.contains(n)), "{screen}");
    // By tenant: its slug, though the messages do not name it.
    key(&mut app, KeyCode::Char('/'));
    type_text(&mut app, "blue-bakery");
    key(&mut app, KeyCode::Enter);
    let screen = render(&app, 100, 24);
    assert!(screen.contains("TenantSuspended") && screen.contains("MoveSwitched"), "{screen}");
    assert!(!screen.contains("PlanChanged"), "{screen}");
    // By type, inverted.
    key(&mut app, KeyCode::Char('/'));
    key(&mut app, KeyCode::Esc);
    key(&mut app, KeyCode::Char('/'));
    type_text(&mut app, "!moveswitched");
    key(&mut app, KeyCode::Enter);
    let screen = render(&app, 100, 24);
    assert!(screen.contains("PlanChanged") && screen.contains("TenantSuspended"), "{screen}");
    assert!(!screen.contains("MoveSwitched"), "{screen}");
}
