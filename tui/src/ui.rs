//! Drawing: pure functions of the [`App`] snapshot onto a frame.

use chrono::Utc;
use indigo_core::api::{Tenant, TenantMove, Workflow, WorkflowState};
use indigo_core::plan::Limit;
use indigo_core::tenant::{ConditionStatus, Phase};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Sparkline, Table, Wrap};

use crate::app::{App, Column, Connection, Mode, View, isolation_label};

/// Colours, or none (`NO_COLOR`, `--theme mono`): emphasis then comes from bold and reverse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Theme {
    pub color: bool,
}

impl Theme {
    fn fg(self, color: Color) -> Style {
        if self.color { Style::default().fg(color) } else { Style::default() }
    }

    fn warn(self) -> Style {
        if self.color { Style::default().fg(Color::Yellow) } else { Style::default().add_modifier(Modifier::BOLD) }
    }

    fn bad(self) -> Style {
        if self.color { Style::default().fg(Color::Red) } else { Style::default().add_modifier(Modifier::BOLD) }
    }

    fn selected(self) -> Style {
        if self.color {
            Style::default().bg(Color::Blue).fg(Color::White)
        } else {
            Style::default().add_modifier(Modifier::REVERSED)
        }
    }

    fn phase(self, phase: Phase) -> Style {
        match phase {
            Phase::Ready => self.fg(Color::Green),
            Phase::Failed => self.bad(),
            Phase::Degraded | Phase::Pending | Phase::Provisioning | Phase::Suspended => self.warn(),
            Phase::Deleting | Phase::Deleted => self.fg(Color::DarkGray),
        }
    }
}

pub fn draw(frame: &mut Frame, app: &App, theme: Theme) {
    let [header, body, footer] =
        Layout::vertical([Constraint::Length(1), Constraint::Min(3), Constraint::Length(1)]).areas(frame.area());
    draw_header(frame, header, app, theme);
    match app.view {
        View::Tenants => draw_tenants(frame, body, app, theme),
        View::Detail => draw_detail(frame, body, app, theme),
        View::Events => draw_events(frame, body, app),
        View::Reconciler => draw_reconciler(frame, body, app, theme),
        View::Workflows => draw_workflows(frame, body, app, theme),
        View::Cost => draw_cost(frame, body, app, theme),
        View::Help => draw_help(frame, body),
    }
    draw_footer(frame, footer, app, theme);
    if let Mode::Confirm { command } = &app.mode {
        draw_confirm(frame, app, command.describe(), command.dangerous().then(|| command.slug().to_owned()), theme);
    }
}

fn draw_header(frame: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let mut spans = vec![
        Span::styled(" indigo ", theme.selected().add_modifier(Modifier::BOLD)),
        Span::raw(format!(" {} ", app.view.title())),
        Span::raw(format!("· {} ", app.api_url)),
    ];
    if !app.who.is_empty() {
        spans.push(Span::raw(format!("· {} ", app.who)));
    }
    if app.read_only {
        spans.push(Span::styled("· READ-ONLY ", theme.warn()));
    }
    match &app.connection {
        Connection::Loading => spans.push(Span::styled("· loading…", theme.warn())),
        Connection::Live => {
            let age = app.fetched_at.map(|at| (Utc::now() - at).num_seconds().max(0)).unwrap_or(0);
            spans.push(Span::raw(format!("· updated {age}s ago")));
        }
        Connection::Stale(error) => spans.push(Span::styled(format!("· STALE, retrying: {error}"), theme.bad())),
        Connection::Unauthorized(error) => spans.push(Span::styled(format!("· UNAUTHORIZED: {error}"), theme.bad())),
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn age(at: Option<chrono::DateTime<Utc>>) -> String {
    let Some(at) = at else { return "never".into() };
    let seconds = (Utc::now() - at).num_seconds().max(0);
    match seconds {
        0..=59 => format!("{seconds}s"),
        60..=3599 => format!("{}m", seconds / 60),
        _ => format!("{}h", seconds / 3600),
    }
}

/// Today's calls against the plan's daily limit, e.g. `812/1000 81%`.
fn today_gauge(app: &App, tenant: &Tenant) -> (String, Option<f64>) {
    let used = app.usage.get(&tenant.id).map_or(0, |u| u.api_calls_today);
    match app.daily_limits.get(tenant.spec.plan.as_str()) {
        Some(Limit::AtMost(limit)) if *limit > 0 => {
            let share = used as f64 / *limit as f64;
            (format!("{used}/{limit} {:.0}%", share * 100.0), Some(share))
        }
        _ => (used.to_string(), None),
    }
}

fn cells(app: &App, tenant: &Tenant) -> [String; 10] {
    let synced = if tenant.status_current() {
        "yes".into()
    } else {
        format!("{}/{}", tenant.status.observed_generation, tenant.spec.generation)
    };
    [
        tenant.slug.to_string(),
        tenant.name.clone(),
        tenant.spec.plan.to_string(),
        isolation_label(tenant),
        tenant.spec.lifecycle.to_string(),
        tenant.status.phase.to_string(),
        synced,
        age(tenant.status.last_reconciled_at),
        app.usage.get(&tenant.id).map_or_else(|| "0".into(), |u| format!("{:.1}", u.requests_per_second)),
        today_gauge(app, tenant).0,
    ]
}

fn draw_tenants(frame: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let visible = app.visible();
    let title = format!(" tenants ({} of {}) ", visible.len(), app.tenants.len());
    let block = Block::default().borders(Borders::ALL).title(title);
    if visible.is_empty() {
        let message = match (&app.connection, app.tenants.is_empty()) {
            (Connection::Loading, _) => "loading…",
            (Connection::Unauthorized(_), _) => "unauthorized: check the token (--token or INDIGO_TOKEN)",
            (_, true) => "no tenants yet: create one with `indigo tenant create`",
            (_, false) => "no tenant matches the filter",
        };
        frame.render_widget(Paragraph::new(message).block(block), area);
        return;
    }
    // Only the rows that fit are built: the fleet may be 10,000 tenants.
    let height = area.height.saturating_sub(3) as usize;
    let offset = app.selected.saturating_sub(height.saturating_sub(1));
    // Narrow terminals (80 columns) drop name, lifecycle and age; the phase still says "suspended".
    let shown: Vec<usize> =
        if area.width >= 120 { (0..Column::ALL.len()).collect() } else { vec![0, 2, 3, 5, 6, 8, 9] };
    let slug_width =
        visible.iter().skip(offset).take(height).map(|t| t.slug.as_str().len()).max().unwrap_or(4).max(6) as u16;
    let all_widths = [
        Constraint::Length(slug_width + 1),
        Constraint::Min(8),
        Constraint::Length(11),
        Constraint::Length(10),
        Constraint::Length(10),
        Constraint::Length(9),
        Constraint::Length(5),
        Constraint::Length(5),
        Constraint::Length(6),
        Constraint::Length(13),
    ];
    let rows: Vec<Row> = visible
        .iter()
        .enumerate()
        .skip(offset)
        .take(height)
        .map(|(i, tenant)| {
            let share = today_gauge(app, tenant).1.unwrap_or(0.0);
            let texts = cells(app, tenant);
            let mut row = Row::new(shown.iter().map(|&c| {
                let text = texts[c].clone();
                let style = match c {
                    5 => theme.phase(tenant.status.phase),
                    3 if text.contains('→') => theme.warn(),
                    6 if text != "yes" => theme.warn(),
                    9 if share >= 1.0 => theme.bad(),
                    9 if share >= 0.8 => theme.warn(),
                    _ => Style::default(),
                };
                Cell::from(text).style(style)
            }));
            if i == app.selected {
                row = row.style(theme.selected());
            }
            row
        })
        .collect();
    let (sort_column, descending) = app.sort;
    let header = Row::new(shown.iter().map(|&i| {
        let column = Column::ALL[i];
        let arrow = if column == sort_column { if descending { "▼" } else { "▲" } } else { "" };
        format!("{}{}{arrow}", (i + 1) % 10, column.header())
    }))
    .style(Style::default().add_modifier(Modifier::BOLD));
    let widths: Vec<Constraint> = shown.iter().map(|&i| all_widths[i]).collect();
    frame.render_widget(Table::new(rows, widths).header(header).block(block), area);
}

fn draw_detail(frame: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let Some(tenant) = app.selected_tenant() else {
        frame.render_widget(Paragraph::new("this tenant is gone").block(Block::default().borders(Borders::ALL)), area);
        return;
    };
    let [top, usage_area, bottom] =
        Layout::vertical([Constraint::Length(13), Constraint::Length(4), Constraint::Min(3)]).areas(area);
    draw_usage(frame, usage_area, app, theme);
    let [spec_area, status_area] =
        Layout::horizontal([Constraint::Percentage(45), Constraint::Percentage(55)]).areas(top);
    let placement = tenant.status.placement.as_ref();
    let placed = placement.map(|p| p.isolation);
    let mismatch = |differs: bool| if differs { theme.bad() } else { Style::default() };
    let spec = vec![
        Line::from(format!("plan        {}", tenant.spec.plan)),
        Line::styled(
            format!("isolation   {}", tenant.spec.isolation),
            mismatch(placed.is_some_and(|p| p != tenant.spec.isolation)),
        ),
        Line::from(format!("lifecycle   {}", tenant.spec.lifecycle)),
        Line::styled(format!("generation  {}", tenant.spec.generation), mismatch(!tenant.status_current())),
        Line::from(format!("owner       {}", tenant.owner_email)),
        Line::from(format!("id          {}", tenant.id)),
    ];
    frame.render_widget(
        Paragraph::new(spec).block(Block::default().borders(Borders::ALL).title(format!(" {} · spec ", tenant.slug))),
        spec_area,
    );
    let mut status = vec![
        Line::styled(format!("phase       {}", tenant.status.phase), theme.phase(tenant.status.phase)),
        Line::styled(
            format!("placement   {}", placement.map(|p| p.describe()).unwrap_or_else(|| "none yet".into())),
            mismatch(placed.is_some_and(|p| p != tenant.spec.isolation)),
        ),
        Line::styled(
            format!("observed    generation {}", tenant.status.observed_generation),
            mismatch(!tenant.status_current()),
        ),
        Line::from(format!("reconciled  {} ago", age(tenant.status.last_reconciled_at))),
    ];
    if let Some(billing) = &app.detail_billing {
        let style = if billing.payment_state == "ok" { Style::default() } else { theme.warn() };
        status.push(Line::styled(
            format!(
                "billing     {} · {} · {} · usage reported to {}",
                billing.customer_id,
                billing.subscription_id.as_deref().unwrap_or("no subscription"),
                billing.payment_state,
                billing
                    .usage_reported_through
                    .map(|t| t.format("%m-%d %H:00").to_string())
                    .unwrap_or_else(|| "—".into())
            ),
            style,
        ));
    }
    for condition in &tenant.status.conditions {
        let style = if condition.status == ConditionStatus::True { theme.fg(Color::Green) } else { theme.warn() };
        status.push(Line::styled(
            format!("{} {:?}: {} — {}", condition.kind, condition.status, condition.reason, condition.message),
            style,
        ));
    }
    frame.render_widget(
        Paragraph::new(status)
            .wrap(Wrap { trim: true })
            .block(Block::default().borders(Borders::ALL).title(" status ")),
        status_area,
    );
    let [events_area, audit_area] =
        Layout::horizontal([Constraint::Percentage(60), Constraint::Percentage(40)]).areas(bottom);
    let mut lines: Vec<Line> = app
        .workflows_of(tenant.id)
        .take(3)
        .map(|w| {
            let done = w.steps.iter().filter(|s| s.state == "succeeded").count();
            Line::styled(
                format!("{} {} {} {}", w.kind, w.state, progress_bar(done, w.total_steps, 8), current_step(w)),
                workflow_style(w.state, theme),
            )
        })
        .collect();
    if let Some(plan) = &app.plan_preview {
        lines.push(Line::styled(
            format!(
                "dry run → phase {}; actions: {}",
                plan.phase,
                if plan.actions.is_empty() {
                    "none".into()
                } else {
                    serde_json::to_string(&plan.actions).unwrap_or_default()
                }
            ),
            theme.warn(),
        ));
    }
    for event in app.detail_events.iter().rev() {
        lines.push(Line::from(format!("{} {:<18} {}", event.created_at.format("%H:%M:%S"), event.kind, event.message)));
    }
    if lines.is_empty() {
        lines.push(Line::from("no events yet"));
    }
    frame.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(" events (newest first) ")),
        events_area,
    );
    let mut audit: Vec<Line> = app
        .detail_audit
        .iter()
        .rev()
        .map(|entry| Line::from(format!("{} {} by {}", entry.at.format("%m-%d %H:%M"), entry.action, entry.actor)))
        .collect();
    if audit.is_empty() {
        audit.push(Line::from("no changes recorded"));
    }
    frame.render_widget(
        Paragraph::new(audit).block(Block::default().borders(Borders::ALL).title(" audit ")),
        audit_area,
    );
}

/// Sparklines of the tenant's last 24 hours: calls, searches, AI credits;
/// each title has the day's total and the busiest hour.
fn draw_usage(frame: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let areas: [Rect; 3] = Layout::horizontal([Constraint::Ratio(1, 3); 3]).areas(area);
    for ((kind, label), area) in
        [("api_call", "calls/h"), ("search_query", "search/h"), ("ai_request", "AI cr/h")].into_iter().zip(areas)
    {
        let values: Vec<u64> = app
            .detail_usage
            .series
            .get(kind)
            .map(|v| v.iter().map(|q| q.max(0.0).round() as u64).collect())
            .unwrap_or_default();
        let total: u64 = values.iter().sum();
        let peak = values.iter().max().copied().unwrap_or(0);
        let title =
            if values.is_empty() { format!(" {label}: no data ") } else { format!(" {label}: {total} (max {peak}) ") };
        frame.render_widget(
            Sparkline::default()
                .block(Block::default().borders(Borders::ALL).title(title))
                .data(&values)
                .style(theme.fg(Color::Cyan)),
            area,
        );
    }
}

fn draw_events(frame: &mut Frame, area: Rect, app: &App) {
    // Filter by tenant or type with `/` (substring; `!` inverts), as the tenants view.
    let (invert, needle) = app.filter_parts();
    let height = area.height.saturating_sub(2) as usize;
    let slug = |e: &indigo_core::api::Event| e.tenant_id.map(|id| app.slug_of(id)).unwrap_or_else(|| "-".into());
    let lines: Vec<Line> = app
        .events
        .iter()
        .rev()
        .filter(|e| {
            needle.is_empty()
                || format!("{} {} {}", e.kind, slug(e), e.message).to_lowercase().contains(&needle) != invert
        })
        .take(height)
        .map(|e| {
            Line::from(format!("{} {:<16} {:<22} {}", e.created_at.format("%H:%M:%S"), slug(e), e.kind, e.message))
        })
        .collect();
    let body = if lines.is_empty() { vec![Line::from("no events")] } else { lines };
    frame.render_widget(Paragraph::new(body).block(Block::default().borders(Borders::ALL).title(" events ")), area);
}

fn draw_reconciler(frame: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let block = Block::default().borders(Borders::ALL).title(" reconciler ");
    let Some(r) = &app.reconciler else {
        frame.render_widget(Paragraph::new("no reconciler state yet").block(block), area);
        return;
    };
    let mut lines = vec![
        Line::from(format!("running       {} ({} workers)", r.running, r.workers)),
        Line::from(format!(
            "queue depth   {}   in progress {}   backing off {}",
            r.queue_depth, r.in_progress, r.backing_off
        )),
        Line::from(format!(
            "reconciles    {}   errors {}   drift repaired {}",
            r.reconciles_total, r.errors_total, r.drift_repaired_total
        )),
        Line::from(format!("last resync   {} ago", age(r.last_full_resync_at))),
        Line::from(format!(
            "paused        {}",
            if r.paused_tenants.is_empty() {
                "none".into()
            } else {
                r.paused_tenants.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            }
        )),
    ];
    for (reason, count) in &r.errors_by_reason {
        lines.push(Line::styled(format!("errors        {reason}: {count}"), theme.warn()));
    }
    match &r.rls_audit {
        Some(audit) if audit.violations.is_empty() => lines.push(Line::styled(
            format!("RLS audit     ok ({}, {} ago)", audit.database, age(Some(audit.at))),
            theme.fg(Color::Green),
        )),
        Some(audit) => {
            lines.push(Line::styled(format!("RLS audit     VIOLATIONS: {}", audit.violations.join("; ")), theme.bad()))
        }
        None => lines.push(Line::from("RLS audit     not run yet")),
    }
    if !r.services.is_empty() {
        lines.push(Line::from(""));
        lines.push(Line::styled("data-plane services", Style::default().add_modifier(Modifier::BOLD)));
    }
    for service in &r.services {
        let short = service.running < service.wanted;
        let line = format!(
            "  {:<40} {}/{} replicas  {}",
            service.name,
            service.running,
            service.wanted,
            service.address.as_deref().unwrap_or("")
        );
        lines.push(if short { Line::styled(line, theme.warn()) } else { Line::from(line) });
    }
    frame.render_widget(Paragraph::new(lines).block(block), area);
}

/// `███░░░ 3/8`: steps done of all.
pub fn progress_bar(done: usize, total: usize, width: usize) -> String {
    format!("{} {done}/{total}", bar(done, total, width))
}

fn bar(done: usize, total: usize, width: usize) -> String {
    let filled = (done.saturating_mul(width)).checked_div(total).unwrap_or(0).min(width);
    format!("{}{}", "█".repeat(filled), "░".repeat(width - filled))
}

/// A count in at most five characters: 950, 12k, 3.4M.
pub fn compact(n: usize) -> String {
    match n {
        0..10_000 => n.to_string(),
        10_000..10_000_000 => format!("{}k", n / 1_000),
        _ => format!("{:.1}M", n as f64 / 1e6),
    }
}

fn workflow_style(state: WorkflowState, theme: Theme) -> Style {
    match state {
        WorkflowState::Succeeded => theme.fg(Color::Green),
        WorkflowState::Running => theme.fg(Color::Cyan),
        WorkflowState::Compensating | WorkflowState::Cancelled => theme.warn(),
        WorkflowState::Failed => theme.bad(),
    }
}

/// The step a workflow is at: the last one started that has not succeeded.
fn current_step(workflow: &Workflow) -> String {
    workflow
        .steps
        .iter()
        .rev()
        .find(|s| s.state != "succeeded")
        .map(|s| format!("{} ({})", s.name, s.state))
        .unwrap_or_default()
}

fn draw_workflows(frame: &mut Frame, area: Rect, app: &App, theme: Theme) {
    if app.workflows.is_empty() {
        draw_note(frame, area, "workflows", "No workflows yet: creating or offboarding a tenant starts one.");
        return;
    }
    // Moves first: they are what an operator watching an upgrade waits on.
    let moves_height = if app.moves.is_empty() { 0 } else { (app.moves.len() as u16 + 3).min(area.height / 3) };
    let [moves_area, area] = Layout::vertical([Constraint::Length(moves_height), Constraint::Min(8)]).areas(area);
    if moves_height > 0 {
        draw_moves(frame, moves_area, app, theme);
    }
    let [list_area, steps_area] = Layout::vertical([Constraint::Percentage(60), Constraint::Min(5)]).areas(area);
    let narrow = area.width < 120;
    let height = list_area.height.saturating_sub(3) as usize;
    let first = app.selected.saturating_sub(height.saturating_sub(1));
    let rows: Vec<Row> = app
        .workflows
        .iter()
        .enumerate()
        .skip(first)
        .take(height)
        .map(|(n, w)| {
            let done = w.steps.iter().filter(|s| s.state == "succeeded").count();
            let mut cells = vec![
                Cell::from(w.kind.clone()),
                Cell::from(app.slug_of(w.tenant_id)),
                Cell::from(w.state.to_string()).style(workflow_style(w.state, theme)),
                Cell::from(progress_bar(done, w.total_steps, if narrow { 8 } else { 12 })),
            ];
            // At 80 columns the step pane below names the current step.
            if !narrow {
                cells.push(Cell::from(current_step(w)));
                cells.push(Cell::from(format!("{} ago", age(Some(w.created_at)))));
            }
            cells.push(Cell::from(w.error.clone().unwrap_or_default()));
            let row = Row::new(cells);
            if n == app.selected { row.style(theme.selected()) } else { row }
        })
        .collect();
    let mut header = vec!["KIND", "TENANT", "STATE", "PROGRESS"];
    let mut widths = vec![
        Constraint::Length(11),
        Constraint::Length(18),
        Constraint::Length(12),
        Constraint::Length(if narrow { 13 } else { 17 }),
    ];
    if !narrow {
        header.extend(["AT", "AGE"]);
        widths.extend([Constraint::Length(24), Constraint::Length(8)]);
    }
    header.push("ERROR");
    widths.push(Constraint::Min(10));
    frame.render_widget(
        Table::new(rows, widths)
            .header(Row::new(header).style(Style::default().add_modifier(Modifier::BOLD)))
            .block(Block::default().borders(Borders::ALL).title(format!(" workflows ({}) ", app.workflows.len()))),
        list_area,
    );
    let Some(workflow) = app.workflows.get(app.selected) else { return };
    let mut lines = vec![Line::from(format!(
        "{} of {} · attempt {} · {}",
        workflow.kind,
        app.slug_of(workflow.tenant_id),
        workflow.attempt,
        workflow.id
    ))];
    if let Some(moving) = app.move_of(workflow.id) {
        lines.push(Line::styled(move_summary(moving), theme.fg(Color::Cyan)));
    }
    for step in &workflow.steps {
        let style = match step.state.as_str() {
            "succeeded" => theme.fg(Color::Green),
            "failed" | "compensation_failed" => theme.bad(),
            "retrying" | "compensating" | "compensated" => theme.warn(),
            _ => Style::default(),
        };
        let error = step.error.as_deref().map(|e| format!(" — {e}")).unwrap_or_default();
        lines.push(Line::styled(format!("{:<16} {:<20} ×{}{error}", step.name, step.state, step.attempts), style));
    }
    if workflow.steps.len() < workflow.total_steps {
        lines.push(Line::from(format!("… {} step(s) not started", workflow.total_steps - workflow.steps.len())));
    }
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: true })
            .block(Block::default().borders(Borders::ALL).title(" steps · r retry · c cancel ")),
        steps_area,
    );
}

/// One move in a line: direction, phase, rows copied, lag and write pause.
pub fn move_summary(moving: &TenantMove) -> String {
    let pause = moving.pause_ms.map(|ms| format!(" · writes held {ms} ms")).unwrap_or_default();
    let error = moving.error.as_deref().map(|e| format!(" · {e}")).unwrap_or_default();
    format!(
        "move {}→{} · {} · {} rows of {} copied · lag {}{pause}{error}",
        moving.from_isolation, moving.to_isolation, moving.phase, moving.rows_copied, moving.rows_total, moving.lag
    )
}

fn draw_moves(frame: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let narrow = area.width < 100;
    let rows: Vec<Row> = app
        .moves
        .iter()
        .take(area.height.saturating_sub(3) as usize)
        .map(|m| {
            let style = match m.phase.as_str() {
                "done" => theme.fg(Color::Green),
                "rolled_back" => theme.bad(),
                _ => theme.fg(Color::Cyan),
            };
            let copied = usize::try_from(m.rows_copied).unwrap_or(0);
            let total = usize::try_from(m.rows_total).unwrap_or(0);
            let mut cells = vec![
                Cell::from(m.slug.clone()),
                Cell::from(format!("{}→{}", m.from_isolation, m.to_isolation)),
                Cell::from(m.phase.clone()).style(style),
                Cell::from(format!(
                    "{} {}/{}",
                    bar(copied, total, if narrow { 8 } else { 16 }),
                    compact(copied),
                    compact(total)
                )),
                Cell::from(m.lag.to_string()),
                Cell::from(m.pause_ms.map(|ms| format!("{ms} ms")).unwrap_or_else(|| "-".into())),
            ];
            if !narrow {
                cells.push(Cell::from(m.error.clone().unwrap_or_default()));
            }
            Row::new(cells)
        })
        .collect();
    let mut header = vec!["TENANT", "MOVE", "PHASE", "ROWS COPIED", "LAG", "PAUSE"];
    let mut widths = vec![
        Constraint::Length(16),
        Constraint::Length(10),
        Constraint::Length(12),
        Constraint::Length(if narrow { 20 } else { 32 }),
        Constraint::Length(7),
        Constraint::Length(9),
    ];
    if !narrow {
        header.push("ERROR");
        widths.push(Constraint::Min(10));
    }
    frame.render_widget(
        Table::new(rows, widths)
            .header(Row::new(header).style(Style::default().add_modifier(Modifier::BOLD)))
            .block(Block::default().borders(Borders::ALL).title(format!(" moves ({}) ", app.moves.len()))),
        area,
    );
}

fn draw_cost(frame: &mut Frame, area: Rect, app: &App, theme: Theme) {
    if app.costs.is_empty() {
        draw_note(
            frame,
            area,
            "usage & cost",
            "No cost report: the control plane has no cost model or no serving tenants.",
        );
        return;
    }
    let narrow = area.width < 100;
    let height = area.height.saturating_sub(3) as usize;
    let first = app.selected.saturating_sub(height.saturating_sub(1));
    let unprofitable = app.costs.iter().filter(|c| c.unprofitable).count();
    let rows: Vec<Row> = app
        .costs
        .iter()
        .enumerate()
        .skip(first)
        .take(height)
        .map(|(n, c)| {
            let calls = c.usage_30d.get("api_call").copied().unwrap_or(0.0);
            let mut cells = vec![
                Cell::from(c.slug.to_string()),
                Cell::from(c.plan.to_string()),
                Cell::from(c.isolation.to_string()),
                Cell::from(format!("{calls:.0}")),
                Cell::from(format!("{:.2}", c.cost_total)),
                Cell::from(format!("{:.2}", c.revenue)),
                Cell::from(format!("{:.2}", c.margin)).style(if c.unprofitable {
                    theme.bad()
                } else {
                    theme.fg(Color::Green)
                }),
            ];
            if !narrow {
                let biggest = c.cost.iter().max_by(|a, b| a.1.total_cmp(b.1)).map(|(k, v)| format!("{k} {v:.2}"));
                cells.push(Cell::from(biggest.unwrap_or_default()));
            }
            cells.push(Cell::from(if c.unprofitable { "LOSS" } else { "" }));
            let row = Row::new(cells);
            if n == app.selected { row.style(theme.selected()) } else { row }
        })
        .collect();
    let mut header = vec!["SLUG", "PLAN", "ISOL", "CALLS/30D", "COST", "REVENUE", "MARGIN"];
    let mut widths = vec![
        Constraint::Length(18),
        Constraint::Length(11),
        Constraint::Length(5),
        Constraint::Length(10),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(9),
    ];
    if !narrow {
        header.push("LARGEST COST");
        widths.push(Constraint::Length(26));
    }
    header.push("FLAG");
    widths.push(Constraint::Min(4));
    let currency = app.costs[0].currency.to_uppercase();
    frame.render_widget(
        Table::new(rows, widths).header(Row::new(header).style(Style::default().add_modifier(Modifier::BOLD))).block(
            Block::default().borders(Borders::ALL).title(format!(
                " usage & cost ({currency}/month, {unprofitable} unprofitable first, then {}; u: sort by {}) ",
                if app.cost_by_usage { "busiest" } else { "lowest margin" },
                if app.cost_by_usage { "margin" } else { "usage" }
            )),
        ),
        area,
    );
}

fn draw_note(frame: &mut Frame, area: Rect, title: &str, text: &str) {
    frame.render_widget(
        Paragraph::new(text)
            .wrap(Wrap { trim: true })
            .block(Block::default().borders(Borders::ALL).title(format!(" {title} "))),
        area,
    );
}

pub const HELP: &[(&str, &str)] = &[
    ("j/k ↑/↓", "move"),
    ("g/G", "first / last"),
    ("Enter", "tenant detail"),
    ("Esc", "back"),
    ("/", "filter (substring; !text inverts)"),
    ("1-9, 0", "sort by column (again: reverse)"),
    (":", "command: tenants, events, reconciler, workflows (moves), cost, quit"),
    ("p", "change plan (enterprise = own database)"),
    ("s", "suspend / resume"),
    ("R", "reconcile now"),
    ("P", "pause / resume reconciliation"),
    ("d", "dry run: what a reconcile would change"),
    ("X", "offboard (type the slug to confirm)"),
    ("r / c", "workflows view: retry a failed one / cancel a running one"),
    ("u", "cost view: sort by usage / by margin"),
    ("Ctrl-r", "refresh now"),
    ("?", "this help"),
    ("q", "quit"),
];

fn draw_help(frame: &mut Frame, area: Rect) {
    let lines: Vec<Line> = HELP.iter().map(|(key, what)| Line::from(format!("{key:<10} {what}"))).collect();
    frame.render_widget(Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(" keys ")), area);
}

fn draw_footer(frame: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let line = match &app.mode {
        Mode::Filter => Line::from(format!("/{}", app.input)),
        Mode::Command => Line::from(format!(":{}", app.input)),
        Mode::PlanPrompt { slug, from } => {
            Line::from(format!("plan for {slug} (now {from}; {}): {}", app.plans.join("/"), app.input))
        }
        Mode::Confirm { .. } => Line::from(""),
        Mode::Normal if !app.status.is_empty() => Line::styled(app.status.clone(), theme.warn()),
        Mode::Normal if !app.filter.is_empty() => {
            Line::from(format!("filter: {}   (/ to change, Esc to clear)", app.filter))
        }
        Mode::Normal if app.view == View::Workflows => {
            Line::from("? help  j/k select  r retry  c cancel  : command  Esc back  q quit")
        }
        Mode::Normal => Line::from("? help  / filter  : command  Enter detail  p plan  s suspend  R reconcile  q quit"),
    };
    frame.render_widget(Paragraph::new(line), area);
}

fn draw_confirm(frame: &mut Frame, app: &App, what: String, type_back: Option<String>, theme: Theme) {
    let area = frame.area();
    let width = area.width.saturating_sub(4).min(90);
    let popup = Rect { x: area.x + (area.width - width) / 2, y: area.y + area.height / 3, width, height: 6 };
    let prompt = match &type_back {
        Some(slug) => format!("Type {slug} and Enter to confirm, Esc to cancel: {}", app.input),
        None => "y to confirm, any other key to cancel".into(),
    };
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(vec![Line::from(what), Line::from(""), Line::styled(prompt, theme.warn())])
            .wrap(Wrap { trim: true })
            .block(Block::default().borders(Borders::ALL).title(" confirm ")),
        popup,
    );
}
