//! Every view's whole screen at the two sizes an operator uses most: a plain
//! 80×24 terminal and a wide 160×45 one. A change to what the console draws
//! shows up here as a diff to review (`cargo insta review`, or rerun with
//! `INSTA_UPDATE=always` and read `git diff`).

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use indigo_core::api::{
    AuditEntry, BillingParity, CatalogueCacheStats, ParityMismatch, PlanChangePreview, RecommenderStatus,
    TableFootprint, TenantBackup, TenantBackups, TenantBilling, UsageSeries, WorkflowState,
};
use indigo_core::tenant::{Condition, ConditionStatus, Isolation, Phase, Role};
use indigo_tui::app::{App, Loaded};

use crate::fixture::{
    Fleet, ago, console, cost, event, fleet, moving, reconciler, step, tenant, terminal, upgrade_copying, usage,
    workflow,
};

const SIZES: [(u16, u16); 2] = [(80, 24), (160, 45)];

/// A fleet with something in every view: traffic near a limit, a degraded
/// tenant, an upgrade copying its rows, a failed onboarding, a loss maker.
fn busy_console() -> App {
    let mut app = console(false);
    let mut tenants = fleet();
    tenants.push(tenant(5, "granite-games", "growth", Phase::Provisioning));
    tenants[2].status.conditions = vec![Condition {
        kind: "DataPlaneAvailable".into(),
        status: ConditionStatus::False,
        reason: "ReplicasUnavailable".into(),
        message: "1 of 2 replicas running".into(),
        last_transition_at: ago(300),
    }];
    // acme-shoes is on its way to its own database.
    tenants[0].spec.isolation = indigo_core::tenant::Isolation::Silo;
    tenants[0].spec.generation = 2;
    let upgrade = upgrade_copying(&tenants[0]);
    let onboarding = workflow(
        2,
        &tenants[4],
        "onboarding",
        WorkflowState::Failed,
        vec![step("record", "compensated", None), step("billing", "compensated", Some("Stripe refused the request"))],
    );
    let events = vec![
        event(1, &tenants[0], "PlanChanged", "plan changed from starter to enterprise"),
        event(2, &tenants[2], "ConditionChanged", "DataPlaneAvailable is False: 1 of 2 replicas running"),
        event(3, &tenants[4], "WorkflowFailed", "onboarding failed at billing"),
    ];
    app.apply(
        Fleet {
            usage: vec![usage(&tenants[0], 850, 2.5), usage(&tenants[1], 10_400, 14.0)],
            moves: vec![moving(&upgrade, &tenants[0], "copying", 50_000, 200_000)],
            workflows: vec![upgrade, onboarding],
            costs: vec![
                cost(&tenants[3], 812.4, 2_000.0, 4_200_000.0),
                cost(&tenants[0], 41.5, 29.0, 120_000.0),
                cost(&tenants[1], 3.2, 99.0, 900_000.0),
            ],
            // Stripe counted one of blue-bakery's hours twice.
            parity: vec![BillingParity {
                tenant_id: tenants[1].id,
                slug: tenants[1].slug.to_string(),
                checked_at: ago(600),
                in_parity: false,
                mismatches: vec![ParityMismatch {
                    meter: "indigo_api_calls".into(),
                    window_start: ago(7200),
                    window_end: ago(3600),
                    reported: 412.0,
                    received: 824.0,
                    invoice: None,
                }],
            }],
            reconciler: Some(reconciler()),
            events,
            tenants,
            ..Fleet::default()
        }
        .loaded(),
    );
    app
}

fn press(app: &mut App, keys: &str) {
    for c in keys.chars() {
        let code = match c {
            '\n' => KeyCode::Enter,
            c => KeyCode::Char(c),
        };
        app.handle_key(KeyEvent::new(code, KeyModifiers::NONE));
    }
}

fn detail(app: &mut App) {
    press(app, "\n");
    let slug = app.detail.slug.clone().unwrap();
    let mut usage = UsageSeries::default();
    usage.series.insert("api_call".into(), (0..24).map(|h| f64::from((h * 7) % 40)).collect());
    usage.series.insert("search_query".into(), (0..24).map(|h| f64::from(h % 5)).collect());
    app.apply(Loaded::Detail {
        slug,
        events: vec![event(1, &app.tenants[0], "PlanChanged", "plan changed from starter to enterprise")],
        audit: vec![AuditEntry {
            id: 7,
            at: ago(900),
            actor: "support-desk".into(),
            role: Role::Operator,
            action: "tenant.plan".into(),
            tenant_id: Some(app.tenants[0].id),
            request_id: None,
            before: Some(serde_json::json!({ "plan": "starter" })),
            after: Some(serde_json::json!({ "plan": "enterprise" })),
            token_id: None,
        }],
        usage,
        billing: Some(TenantBilling {
            tenant_id: app.tenants[0].id,
            customer_id: "cus_123".into(),
            subscription_id: Some("sub_456".into()),
            price_id: Some("price_1".into()),
            status: "active".into(),
            payment_state: "ok".into(),
            grace_until: None,
            usage_reported_through: Some(ago(3600)),
            last_usage_report_at: Some(ago(3000)),
        }),
        cache: Some(CatalogueCacheStats {
            tenant_id: Some(app.tenants[0].id),
            enabled: true,
            hours: 24,
            hits: 9_312,
            misses: 688,
            hit_rate: Some(0.9312),
        }),
        recommender: Some(RecommenderStatus {
            tenant_id: Some(app.tenants[0].id),
            enabled: true,
            refreshed_at: Some(ago(1500)),
            orders_counted: Some(57),
            pairs: 212,
        }),
        backups: Some(TenantBackups {
            tenant_id: app.tenants[0].id,
            slug: app.tenants[0].slug.to_string(),
            rpo_minutes: 60,
            rto_minutes: 240,
            newest_age_seconds: Some(1200),
            behind: false,
            backups: vec![TenantBackup {
                id: uuid::Uuid::nil(),
                taken_at: ago(1200),
                rows: 412,
                manifest_sha256: "9f2c".into(),
                path: "/var/lib/indigo/backups/acme/1".into(),
                drilled_at: Some(ago(600)),
                drill_problem: None,
            }],
        }),
    });
}

/// What the control plane says blue-bakery's upgrade would do.
fn upgrade_preview(app: &App) -> PlanChangePreview {
    let tenant = app.tenants.iter().find(|t| t.slug.as_str() == "blue-bakery").unwrap();
    PlanChangePreview {
        tenant_id: tenant.id,
        from_plan: "growth".into(),
        to_plan: "enterprise".into(),
        moves: true,
        from_isolation: Isolation::Pool,
        to_isolation: Isolation::Silo,
        tables: vec![TableFootprint { table: "products".into(), rows: 12_480, bytes: 3_412_000 }],
        rows_total: 12_480,
        bytes_total: 3_412_000,
        estimated_copy_seconds: 2.1,
        copy_rows_per_second: 5_943.0,
        moves_measured: 3,
        expected_pause_ms: Some(24),
        writes_last_5_minutes: Some(312),
        target_silo: None,
        price_per_month_from: 9_900,
        price_per_month_to: 99_900,
        currency: "usd".into(),
        proration: Some(60_020),
        refusals: vec![],
    }
}

/// The keys that bring an operator from the fleet to a view.
type Reach = fn(&mut App);

/// Each view, reached by an operator's keys from the fleet.
const VIEWS: &[(&str, Reach)] = &[
    ("tenants", |_| {}),
    ("detail", detail),
    ("events", |app| press(app, ":events\n")),
    ("reconciler", |app| press(app, ":reconciler\n")),
    ("workflows", |app| press(app, ":workflows\n")),
    ("cost", |app| press(app, ":cost\n")),
    ("help", |app| press(app, "?")),
    // blue-bakery, on growth in the pool, upgraded to the silo plan, with what it would do.
    ("upgrade_confirmation", |app| {
        press(app, "jpenterprise\nblue");
        app.apply(Loaded::PlanChange(upgrade_preview(app)));
    }),
];

#[test]
fn every_view_at_80x24_and_160x45() {
    for (name, reach) in VIEWS {
        for (width, height) in SIZES {
            let mut app = busy_console();
            reach(&mut app);
            insta::assert_snapshot!(format!("{name}_{width}x{height}"), terminal(&app, width, height).backend());
        }
    }
}

#[test]
fn empty_and_unreachable_states() {
    let mut app = console(true);
    insta::assert_snapshot!("loading_80x24", terminal(&app, 80, 24).backend());
    app.apply(Fleet::default().loaded());
    insta::assert_snapshot!("no_tenants_80x24", terminal(&app, 80, 24).backend());
    app.apply(Loaded::Failed { unauthorized: true, message: "invalid or revoked token".into() });
    insta::assert_snapshot!("unauthorized_80x24", terminal(&app, 80, 24).backend());
}
