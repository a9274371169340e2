//! The fleet: every tenant in a sortable, filterable table, with today's
//! traffic against its plan. Enter opens a tenant; the action keys act on the
//! selected one (and work the same in its detail view).

use crossterm::event::{KeyCode, KeyEvent};
use indigo_core::api::{RestoreInto, Tenant};
use indigo_core::plan::Limit;
use indigo_core::tenant::{Isolation, Lifecycle};
use ratatui::Frame;
use ratatui::layout::{Constraint, Rect};
use ratatui::style::Style;
use ratatui::widgets::{Block, Borders, Cell, Paragraph, Row, Table};

use super::widgets::age;
use crate::app::{App, Command, Connection, Effect, Mode, View};
use crate::theme::Theme;

use crate::app::{Column, isolation_label};

pub(super) const KEY_HINTS: &str = "? help  / filter  : command  Enter open  p plan  s suspend  R reconcile  q quit";

pub(super) fn on_key(app: &mut App, key: KeyEvent) -> Vec<Effect> {
    match key.code {
        KeyCode::Char(c @ '0'..='9') => {
            // 1 to 9, then 0 for the tenth column.
            let column = Column::ALL[(c as usize + 10 - '1' as usize) % 10];
            app.sort = (column, app.sort.0 == column && !app.sort.1);
            vec![]
        }
        KeyCode::Enter => open_detail(app),
        KeyCode::Char(c) => act(app, c),
        _ => vec![],
    }
}

fn open_detail(app: &mut App) -> Vec<Effect> {
    let Some(tenant) = app.selected_tenant() else { return vec![] };
    let slug = tenant.slug.to_string();
    app.detail = Default::default();
    app.detail.slug = Some(slug.clone());
    app.plan_preview = None;
    app.view = View::Detail;
    vec![Effect::LoadDetail(slug)]
}

/// The keys that act on the selected tenant, here and in its detail.
pub(super) fn act(app: &mut App, key: char) -> Vec<Effect> {
    let Some(tenant) = app.selected_tenant() else { return vec![] };
    let slug = tenant.slug.to_string();
    let (from, isolation) = (tenant.spec.plan.to_string(), tenant.spec.isolation);
    let suspended = tenant.spec.lifecycle == Lifecycle::Suspended;
    let paused = app.reconciler.as_ref().is_some_and(|r| r.paused_tenants.iter().any(|p| p.as_str() == slug));
    let command = match key {
        'd' => return vec![Effect::DryRun(slug)],
        'p' => {
            if app.read_only {
                return app.refuse();
            }
            app.input.clear();
            app.mode = Mode::PlanPrompt { slug, from, isolation };
            return vec![];
        }
        's' if !suspended => Command::Suspend { slug },
        's' => Command::Resume { slug },
        'R' => Command::ReconcileNow { slug },
        'P' => Command::SetReconcilePaused { slug, paused: !paused },
        'X' => Command::Offboard { slug },
        'b' => Command::TakeBackup { slug },
        'B' | 'N' if key == 'N' && isolation != Isolation::Silo => {
            app.status = format!("{slug} is not on a silo plan: only a silo is restored into a new one");
            return vec![];
        }
        'B' | 'N' => {
            let into = if key == 'N' { RestoreInto::NewSilo } else { RestoreInto::InPlace };
            // The backups are those the tenant's detail loaded.
            let newest = app.detail.backups.as_ref().filter(|_| app.detail.slug.as_deref() == Some(slug.as_str()));
            match newest.and_then(|b| b.backups.first()) {
                Some(backup) => {
                    let (id, taken_at) = (backup.id, backup.taken_at);
                    app.restore_preview = None;
                    let restore = Command::Restore { slug: slug.clone(), backup: id, taken_at, into };
                    let mut effects = app.ask_to_confirm(restore);
                    // What it would do is asked for as the confirmation opens.
                    if matches!(app.mode, Mode::Confirm { .. }) {
                        effects.push(Effect::PreviewRestore { slug, backup: id, into });
                    }
                    return effects;
                }
                None => {
                    app.status = format!("{slug} has no backup to restore from (open its detail to see its backups)");
                    return vec![];
                }
            }
        }
        _ => return vec![],
    };
    app.ask_to_confirm(command)
}

/// Today's calls against the plan's daily limit, e.g. `812/1000 81%`.
fn today_gauge(app: &App, tenant: &Tenant) -> (String, Option<f64>) {
    let used = app.usage.get(&tenant.id).map_or(0, |u| u.api_calls_today);
    match app.plan(tenant.spec.plan.as_str()).map(|p| p.limits.api_calls_per_day) {
        Some(Limit::AtMost(limit)) if limit > 0 => {
            let share = used as f64 / limit as f64;
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
        age(app.now, tenant.status.last_reconciled_at),
        app.usage.get(&tenant.id).map_or_else(|| "0".into(), |u| format!("{:.1}", u.requests_per_second)),
        today_gauge(app, tenant).0,
    ]
}

pub(super) fn draw(frame: &mut Frame, area: Rect, app: &App, theme: Theme) {
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
        Constraint::Length(10),
        Constraint::Length(9),
        Constraint::Length(10),
        Constraint::Length(12),
        Constraint::Length(5),
        Constraint::Length(5),
        Constraint::Length(6),
        Constraint::Length(16),
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
    .style(theme.heading());
    let widths: Vec<Constraint> = shown.iter().map(|&i| all_widths[i]).collect();
    frame.render_widget(Table::new(rows, widths).header(header).block(block), area);
}
