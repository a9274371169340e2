//! The console's behaviour without a terminal: key handling on the pure state
//! and what each view shows, for every view and action. `snapshots.rs` pins
//! each view's whole screen.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use indigo_core::api::{
    PlanChangePreview, PlanChangeRefusal, RestoreInto, RestorePreview, RestoreTable, Tenant, TenantBackup,
    TenantBackups, TenantBilling, UsageSeries, WorkflowState,
};
use indigo_core::tenant::{Isolation, Phase};
use indigo_tui::app::{App, Column, Command, Connection, Effect, Loaded, Mode, View};
use indigo_tui::theme::Theme;
use indigo_tui::views;
use ratatui::Terminal;
use ratatui::backend::TestBackend;

use crate::fixture::{
    Fleet, console, cost, event, fleet, load, moving, plans, render, step, tenant, upgrade_copying, workflow,
};

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
    let mut app = console(false);
    load(&mut app, fleet());
    let screen = render(&app, 80, 24);
    for needle in ["tenants (4 of 4)", "acme-shoes", "fjord-fashion", "silo", "degraded", "SLUG"] {
        assert!(screen.contains(needle), "{needle} missing from\n{screen}");
    }
}

#[test]
fn traffic_columns_show_rate_and_todays_calls_against_the_plan() {
    let mut app = console(false);
    load(&mut app, fleet());
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
    let mut app = console(false);
    assert!(render(&app, 80, 24).contains("loading…"));
    load(&mut app, vec![]);
    assert!(render(&app, 80, 24).contains("no tenants yet"));
    load(&mut app, fleet());
    app.apply(Loaded::Failed { unauthorized: false, message: "connection refused".into() });
    let screen = render(&app, 100, 24);
    assert!(screen.contains("STALE, retrying: connection refused"), "{screen}");
    assert!(screen.contains("acme-shoes"), "the last data stays on screen");
    app.apply(Loaded::Failed { unauthorized: true, message: "invalid or revoked token".into() });
    assert!(render(&app, 100, 24).contains("UNAUTHORIZED"));
}

#[test]
fn detail_reconciler_events_help_and_notes_render() {
    let mut app = console(false);
    let mut tenants = fleet();
    tenants[0].spec.isolation = Isolation::Silo;
    tenants[0].spec.generation = 2;
    load(&mut app, tenants);
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
    let mut app = console(false);
    load(&mut app, fleet());
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
    let mut app = console(false);
    load(&mut app, fleet());
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
    assert_eq!(
        key(&mut app, KeyCode::Enter),
        [Effect::PreviewPlanChange { slug: "acme-shoes".into(), plan: "enterprise".into() }],
        "what it would do is asked for as the confirmation opens"
    );
    let screen = render(&app, 100, 24);
    assert!(screen.contains("moves to its own database"), "{screen}");
    assert!(screen.contains("Working out what it would do"), "{screen}");
    let tenant_id = app.tenants[0].id;
    let preview = |to: &str, refusals: Vec<PlanChangeRefusal>| PlanChangePreview {
        tenant_id,
        from_plan: "starter".into(),
        to_plan: to.into(),
        moves: true,
        from_isolation: Isolation::Pool,
        to_isolation: Isolation::Silo,
        tables: vec![],
        rows_total: 5_000,
        bytes_total: 2_000_000,
        estimated_copy_seconds: 1.0,
        copy_rows_per_second: 5_000.0,
        moves_measured: 0,
        expected_pause_ms: None,
        writes_last_5_minutes: Some(40),
        target_silo: None,
        price_per_month_from: 2_900,
        price_per_month_to: 99_900,
        currency: "usd".into(),
        proration: None,
        refusals,
    };
    // A preview of another change (an earlier dialog's) is not shown here.
    app.apply(Loaded::PlanChange(preview("pro", vec![])));
    assert!(render(&app, 100, 24).contains("Working out"));
    let busy =
        PlanChangeRefusal { code: "workflow_in_progress".into(), message: "its onboarding is still running".into() };
    app.apply(Loaded::PlanChange(preview("enterprise", vec![busy])));
    let screen = render(&app, 100, 24);
    assert!(screen.contains("Copies 5000 rows (2.0 MB) in about 1.0 s"), "{screen}");
    assert!(screen.contains("Price: 29.00 → 999.00 usd a month."), "{screen}");
    assert!(screen.contains("Refused: its onboarding is still running."), "{screen}");
    type_text(&mut app, "acme-shoes");
    assert_eq!(
        key(&mut app, KeyCode::Enter),
        [Effect::Run(Command::ChangePlan {
            slug: "acme-shoes".into(),
            from: "starter".into(),
            plan: "enterprise".into(),
            moves_to: Some(Isolation::Silo),
        })]
    );
    assert_eq!(key(&mut app, KeyCode::Char('d')), [Effect::DryRun("acme-shoes".into())]);
    app.apply(Loaded::Done(Err("forbidden".into())));
    assert!(render(&app, 80, 24).contains("failed: forbidden"));
}

#[test]
fn plan_changes_follow_the_catalogue_the_control_plane_serves() {
    let mut app = console(false);
    let change_to = |app: &mut App, plan: &str| {
        key(app, KeyCode::Char('p'));
        type_text(app, plan);
        key(app, KeyCode::Enter);
    };
    // Before the catalogue has loaded, nothing is guessed.
    app.apply(Fleet { tenants: fleet(), plans: Some(vec![]), ..Fleet::default() }.loaded());
    change_to(&mut app, "growth");
    assert_eq!(app.mode, Mode::Normal);
    assert!(app.status.contains("has not loaded yet"), "{}", app.status);

    // A catalogue whose silo plan is not called enterprise.
    let mut plans = plans();
    let silo = plans.iter_mut().find(|p| p.isolation == Isolation::Silo).unwrap();
    silo.name = serde_json::from_value("dedicated".into()).unwrap();
    app.apply(Fleet { tenants: fleet(), plans: Some(plans), ..Fleet::default() }.loaded());
    change_to(&mut app, "enterprise");
    assert_eq!(app.status, "unknown plan `enterprise`; plans are starter, growth, pro, dedicated");
    key(&mut app, KeyCode::Char('p'));
    assert!(render(&app, 100, 24).contains("(now starter; starter/growth/pro/dedicated): "), "the prompt lists them");
    key(&mut app, KeyCode::Esc);

    // Within the pool: a plain yes.
    change_to(&mut app, "growth");
    let Mode::Confirm { command } = app.mode.clone() else { panic!("{:?}", app.mode) };
    assert_eq!(command.describe(), "Change acme-shoes from starter to growth.");
    assert!(!command.dangerous());
    assert_eq!(key(&mut app, KeyCode::Char('y')).len(), 1);

    // Into a silo plan and back: the data moves, so the slug is typed back.
    change_to(&mut app, "dedicated");
    let Mode::Confirm { command } = app.mode.clone() else { panic!("{:?}", app.mode) };
    assert_eq!(command.describe(), "Change acme-shoes from starter to dedicated: its data moves to its own database.");
    assert!(command.dangerous());
    key(&mut app, KeyCode::Esc);
    key(&mut app, KeyCode::Char('G'));
    assert_eq!(app.selected_tenant().unwrap().slug.as_str(), "fjord-fashion");
    change_to(&mut app, "pro");
    let Mode::Confirm { command } = app.mode.clone() else { panic!("{:?}", app.mode) };
    assert!(command.describe().ends_with("its data moves into the shared pool."), "{}", command.describe());
    assert!(command.dangerous());
}

#[test]
fn read_only_mode_disables_every_action() {
    let mut app = console(true);
    load(&mut app, fleet());
    for k in ['p', 's', 'R', 'P', 'X', 'b'] {
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
    let mut app = console(false);
    let tenants: Vec<Tenant> =
        (0..10_000).map(|n| tenant(n, &format!("shop-{n:05}"), "growth", Phase::Ready)).collect();
    load(&mut app, tenants);
    key(&mut app, KeyCode::Char('G'));
    let mut terminal = Terminal::new(TestBackend::new(160, 50)).unwrap();
    let frames = 50;
    let started = std::time::Instant::now();
    for _ in 0..frames {
        terminal.draw(|frame| views::draw(frame, &app, Theme { color: true })).unwrap();
    }
    let per_frame = started.elapsed() / frames;
    let build = if cfg!(debug_assertions) { "debug" } else { "release" };
    println!("frame time with 10,000 tenants (160x50, {build} build): {per_frame:?}");
    assert!(render(&app, 160, 50).contains("shop-09999"), "the selection at the end is on screen");
}

#[test]
fn workflows_view_shows_progress_steps_and_acts_on_the_selected_one() {
    let mut app = console(false);
    let tenants = fleet();
    let running = workflow(
        1,
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
        2,
        &tenants[2],
        "onboarding",
        WorkflowState::Failed,
        vec![step("record", "compensated", None), step("billing", "compensated", Some("Stripe refused the request"))],
    );
    app.apply(
        Fleet { tenants: tenants.clone(), workflows: vec![running, failed.clone()], ..Fleet::default() }.loaded(),
    );
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
    let mut viewer = console(true);
    viewer.apply(Fleet { tenants, workflows: vec![failed], ..Fleet::default() }.loaded());
    key(&mut viewer, KeyCode::Char(':'));
    type_text(&mut viewer, "wf");
    key(&mut viewer, KeyCode::Enter);
    assert!(key(&mut viewer, KeyCode::Char('r')).is_empty());
    assert_eq!(viewer.mode, Mode::Normal);
    assert!(viewer.status.contains("read-only"));
}

#[test]
fn cost_view_puts_the_unprofitable_first_and_flags_them() {
    let mut app = console(false);
    let tenants = fleet();
    let costs = vec![
        cost(&tenants[2], 49.0, 99.0, 10.0),
        cost(&tenants[0], 41.5, 29.0, 120_000.0),
        cost(&tenants[1], 3.2, 99.0, 900_000.0),
    ];
    app.apply(Fleet { tenants, costs, ..Fleet::default() }.loaded());
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
    let mut app = console(false);
    load(&mut app, fleet());
    key(&mut app, KeyCode::Enter);
    let screen = render(&app, 100, 30);
    assert!(screen.contains("calls/h: no data"), "before the series arrives:\n{screen}");
    let mut usage = UsageSeries::default();
    usage.series.insert("api_call".into(), vec![0.0, 12.0, 30.0]);
    usage.series.insert("search_query".into(), vec![1.0, 0.0, 2.0]);
    usage.series.insert("ai_request".into(), vec![0.0, 0.0, 0.0]);
    let billing = TenantBilling {
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
    let tenant_id = app.tenants[0].id;
    app.apply(acme_detail(usage, Some(billing), pro_backups(tenant_id, vec![])));
    assert!(render(&app, 120, 30).contains("billing     cus_123 · sub_456 · past_due"));
    assert!(render(&app, 120, 30).contains("backups     none yet, RPO 15 min BEHIND"));
    for (width, height) in [(100, 30), (80, 24)] {
        let screen = render(&app, width, height);
        for needle in ["calls/h: 42 (max 30)", "search/h: 3 (max 2)", "AI cr/h: 0"] {
            assert!(screen.contains(needle), "{needle} missing at {width}x{height}:\n{screen}");
        }
    }
}

#[test]
fn moves_show_their_progress_above_the_workflows() {
    let mut app = console(false);
    let tenants = fleet();
    let upgrade = upgrade_copying(&tenants[0]);
    let copying = moving(&upgrade, &tenants[0], "copying", 50_000, 200_000);
    // A move of another tenant, whose workflow is no longer listed.
    let gone = workflow(9, &tenants[1], "tier_change", WorkflowState::Failed, vec![]);
    let rolled_back = indigo_core::api::TenantMove {
        error: Some("InsufficientDBClusterCapacity: no capacity".into()),
        ..moving(&gone, &tenants[1], "rolled_back", 50_000, 200_000)
    };
    app.apply(
        Fleet { tenants, workflows: vec![upgrade], moves: vec![copying, rolled_back], ..Fleet::default() }.loaded(),
    );
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
    let mut app = console(false);
    let tenants = fleet();
    let events = vec![
        event(1, &tenants[0], "PlanChanged", "plan changed to enterprise"),
        event(2, &tenants[1], "TenantSuspended", "suspended: unpaid"),
        event(3, &tenants[1], "MoveSwitched", "now served from the silo"),
    ];
    app.apply(Fleet { tenants, events, ..Fleet::default() }.loaded());
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

#[test]
fn a_tenant_is_backed_up_and_restored_from_its_newest_backup_in_its_detail() {
    let mut app = console(false);
    load(&mut app, fleet());
    // From the list, without its detail loaded, there is no backup to pick.
    assert!(key(&mut app, KeyCode::Char('B')).is_empty());
    assert!(app.status.contains("acme-shoes has no backup to restore from"), "{}", app.status);
    key(&mut app, KeyCode::Char('b'));
    assert_eq!(key(&mut app, KeyCode::Char('y')), [Effect::Run(Command::TakeBackup { slug: "acme-shoes".into() })]);

    key(&mut app, KeyCode::Enter);
    let backup = |id: u128, minutes_ago: i64| TenantBackup {
        id: uuid::Uuid::from_u128(id),
        taken_at: chrono::Utc::now() - chrono::Duration::minutes(minutes_ago),
        rows: 120,
        manifest_sha256: "ab".repeat(32),
        path: format!("/var/lib/indigo/backups/acme/{id}"),
        drilled_at: None,
        drill_problem: None,
    };
    let (newest, older) = (backup(2, 5), backup(1, 65));
    let tenant_id = app.tenants[0].id;
    app.apply(acme_detail(UsageSeries::default(), None, pro_backups(tenant_id, vec![newest.clone(), older])));
    // Restoring replaces rows: the slug is typed back, the newest backup is the one, and what
    // it would do is asked for as the confirmation opens.
    assert_eq!(
        key(&mut app, KeyCode::Char('B')),
        [Effect::PreviewRestore { slug: "acme-shoes".into(), backup: newest.id, into: RestoreInto::InPlace }]
    );
    let screen = render(&app, 120, 30);
    assert!(screen.contains("Restore acme-shoes from its backup of"), "{screen}");
    assert!(screen.contains("Working out what it would do"), "{screen}");
    assert!(screen.contains("Type acme-shoes and Enter to confirm"), "{screen}");
    let table = |table: &str, rows_now, rows_in_backup| RestoreTable { table: table.into(), rows_now, rows_in_backup };
    let preview = |backup_id| RestorePreview {
        tenant_id,
        backup_id,
        taken_at: newest.taken_at,
        tables: vec![table("products", 40, 40), table("orders", 80, 64)],
        rows_now: 120,
        rows_in_backup: 104,
        intact: true,
        into: RestoreInto::InPlace,
        refusals: vec![],
    };
    // Another backup's preview (an earlier dialog's) is not shown here.
    app.apply(Loaded::Restore(preview(uuid::Uuid::from_u128(1))));
    assert!(render(&app, 120, 30).contains("Working out"));
    app.apply(Loaded::Restore(preview(newest.id)));
    let screen = render(&app, 120, 30);
    assert!(screen.contains("Rows: 120 now → 104 after (orders 80 → 64)."), "{screen}");
    assert!(key(&mut app, KeyCode::Char('y')).is_empty(), "y is not enough");
    key(&mut app, KeyCode::Esc);
    assert!(app.restore_preview.is_none(), "a cancelled dialog forgets its preview");
    key(&mut app, KeyCode::Char('B'));
    type_text(&mut app, "acme-shoes");
    assert_eq!(
        key(&mut app, KeyCode::Enter),
        [Effect::Run(Command::Restore {
            slug: "acme-shoes".into(),
            backup: newest.id,
            taken_at: newest.taken_at,
            into: RestoreInto::InPlace
        })]
    );

    // Into a new silo: only a tenant on a silo plan, and the dialog says what that costs.
    assert!(key(&mut app, KeyCode::Char('N')).is_empty());
    assert!(app.status.contains("acme-shoes is not on a silo plan"), "{}", app.status);
    app.tenants[0].spec.isolation = Isolation::Silo;
    assert_eq!(
        key(&mut app, KeyCode::Char('N')),
        [Effect::PreviewRestore { slug: "acme-shoes".into(), backup: newest.id, into: RestoreInto::NewSilo }]
    );
    let screen = render(&app, 160, 30);
    assert!(screen.contains("Restore acme-shoes into a new silo"), "{screen}");
    assert!(screen.contains("answers 503 until the rows are in"), "{screen}");
    app.apply(Loaded::Restore(preview(newest.id)));
    assert!(app.restore_preview.is_none(), "an in-place preview is not this dialog's");
}

/// acme-shoes' detail as the runtime loads it, with nothing but `usage`, `billing` and `backups`.
fn acme_detail(usage: UsageSeries, billing: Option<TenantBilling>, backups: TenantBackups) -> Loaded {
    Loaded::Detail {
        slug: "acme-shoes".into(),
        events: vec![],
        audit: vec![],
        usage,
        billing,
        cache: None,
        recommender: None,
        backups: Some(backups),
    }
}

/// `backups` of a tenant on `pro` (RPO 15 min), behind it when there are none.
fn pro_backups(tenant_id: indigo_core::tenant::TenantId, backups: Vec<TenantBackup>) -> TenantBackups {
    TenantBackups {
        tenant_id,
        slug: "acme-shoes".into(),
        rpo_minutes: 15,
        rto_minutes: 60,
        newest_age_seconds: backups.first().map(|b| (chrono::Utc::now() - b.taken_at).num_seconds()),
        behind: backups.is_empty(),
        backups,
    }
}
