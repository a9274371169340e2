//! One tenant: spec beside status (what differs is marked), a day's usage as
//! sparklines, its workflows and events, and its audit trail. The tenant
//! action keys work here as in the table.

use crossterm::event::{KeyCode, KeyEvent};
use indigo_core::plan::Limit;
use indigo_core::tenant::ConditionStatus;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Paragraph, Sparkline, Wrap};

use super::widgets::{age, current_step, progress_bar, steps_done};
use crate::app::{App, Effect};
use crate::theme::Theme;

pub(super) const KEY_HINTS: &str = "? help  p plan  s suspend  R reconcile  P pause  d dry run  X offboard  Esc back";

pub(super) fn on_key(app: &mut App, key: KeyEvent) -> Vec<Effect> {
    match key.code {
        KeyCode::Char(c) => super::tenants::act(app, c),
        _ => vec![],
    }
}

pub(super) fn draw(frame: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let Some(tenant) = app.selected_tenant() else {
        frame.render_widget(Paragraph::new("this tenant is gone").block(Block::default().borders(Borders::ALL)), area);
        return;
    };
    let [top, usage_area, bottom] =
        Layout::vertical([Constraint::Length(13), Constraint::Length(4), Constraint::Min(3)]).areas(area);
    draw_usage(frame, usage_area, app, theme);
    // Wide enough for a tenant id on a line of its own (36 characters) at 80 columns.
    let spec_width = (top.width * 45 / 100).max(38);
    let [spec_area, status_area] = Layout::horizontal([Constraint::Length(spec_width), Constraint::Fill(1)]).areas(top);
    let placement = tenant.status.placement.as_ref();
    let placed = placement.map(|p| p.isolation);
    let mismatch = |differs: bool| if differs { theme.bad() } else { Style::default() };
    let mut spec = vec![
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
    // What the tenant uses, under its spec: the status side keeps its room for conditions.
    let credits = app.usage.get(&tenant.id).map_or(0.0, |u| u.ai_credits_this_month);
    let allowed = match app.plan(tenant.spec.plan.as_str()).map(|p| p.limits.ai_credits) {
        Some(Limit::AtMost(limit)) => format!("of {limit}"),
        Some(Limit::Unlimited) => "(unlimited)".to_owned(),
        None => String::new(),
    };
    spec.push(Line::from(""));
    spec.push(Line::from(format!("AI credits  {credits:.2} {allowed} this month")));
    if let Some(cache) = app.detail.cache.as_ref().filter(|c| c.enabled) {
        spec.push(Line::from(match cache.hit_rate {
            Some(rate) => {
                format!("cache hits  {:.1}% of {} ({} h)", rate * 100.0, cache.hits + cache.misses, cache.hours)
            }
            None => format!("cache hits  no catalogue reads ({} h)", cache.hours),
        }));
    }
    if let Some(recommender) = app.detail.recommender.as_ref().filter(|r| r.enabled) {
        spec.push(Line::from(match (recommender.refreshed_at, recommender.orders_counted) {
            (Some(at), Some(orders)) => format!("recommender {} ago, {orders} orders", age(app.now, Some(at))),
            _ => "recommender not computed yet".to_owned(),
        }));
    }
    if let Some(backups) = &app.detail.backups {
        let newest = backups.backups.first().map(|b| b.taken_at);
        let taken = match newest {
            Some(at) => format!("newest {} ago", age(app.now, Some(at))),
            None => "none yet".to_owned(),
        };
        let line = format!("backups     {taken}, RPO {} min", backups.rpo_minutes);
        spec.push(if backups.behind { Line::styled(line + " BEHIND", theme.bad()) } else { Line::from(line) });
    }
    frame.render_widget(
        Paragraph::new(spec)
            .wrap(Wrap { trim: false })
            .block(Block::default().borders(Borders::ALL).title(format!(" {} · spec ", tenant.slug))),
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
        Line::from(format!("reconciled  {} ago", age(app.now, tenant.status.last_reconciled_at))),
    ];
    if let Some(billing) = &app.detail.billing {
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
        let style = if condition.status == ConditionStatus::True { theme.good() } else { theme.warn() };
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
            Line::styled(
                format!("{} {} {} {}", w.kind, w.state, progress_bar(steps_done(w), w.total_steps, 8), current_step(w)),
                theme.workflow(w.state),
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
    for event in app.detail.events.iter().rev() {
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
        .detail
        .audit
        .iter()
        .rev()
        .map(|entry| Line::from(format!("{} {} by {}", entry.at.format("%m-%d %H:%M"), entry.action, entry.actor)))
        .collect();
    if audit.is_empty() {
        audit.push(Line::from("no changes recorded"));
    }
    frame.render_widget(
        Paragraph::new(audit).wrap(Wrap { trim: false }).block(Block::default().borders(Borders::ALL).title(" audit ")),
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
            .detail
            .usage
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
                .style(theme.busy()),
            area,
        );
    }
}
