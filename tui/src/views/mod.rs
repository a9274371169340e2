//! The console's views, one file each: how the view draws the shared [`App`]
//! snapshot and which keys it adds to the global ones. This module draws the
//! frame around them (header, footer, confirmation) and hands each key the
//! global handling in `app.rs` leaves to the view on screen.

mod cost;
mod detail;
mod events;
mod help;
mod reconciler;
mod tenants;
mod widgets;
mod workflows;

use crossterm::event::KeyEvent;
use indigo_core::api::{PlanChangePreview, RestorePreview};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Wrap};

use crate::app::{App, Command, Connection, Effect, Mode, View};
use crate::theme::Theme;

/// Draws the whole screen: a pure function of the snapshot.
pub fn draw(frame: &mut Frame, app: &App, theme: Theme) {
    let [header, body, footer] =
        Layout::vertical([Constraint::Length(1), Constraint::Min(3), Constraint::Length(1)]).areas(frame.area());
    draw_header(frame, header, app, theme);
    match app.view {
        View::Tenants => tenants::draw(frame, body, app, theme),
        View::Detail => detail::draw(frame, body, app, theme),
        View::Events => events::draw(frame, body, app),
        View::Reconciler => reconciler::draw(frame, body, app, theme),
        View::Workflows => workflows::draw(frame, body, app, theme),
        View::Cost => cost::draw(frame, body, app, theme),
        View::Help => help::draw(frame, body),
    }
    draw_footer(frame, footer, app, theme);
    if let Mode::Confirm { command } = &app.mode {
        draw_confirm(frame, app, command, theme);
    }
}

/// The keys of the view on screen, after the global ones.
pub(crate) fn on_key(app: &mut App, key: KeyEvent) -> Vec<Effect> {
    match app.view {
        View::Tenants => tenants::on_key(app, key),
        View::Detail => detail::on_key(app, key),
        View::Workflows => workflows::on_key(app, key),
        View::Cost => cost::on_key(app, key),
        View::Events | View::Reconciler | View::Help => vec![],
    }
}

/// What the footer suggests when nothing else is to be said.
fn key_hints(view: View) -> &'static str {
    match view {
        View::Tenants => tenants::KEY_HINTS,
        View::Detail => detail::KEY_HINTS,
        View::Events => events::KEY_HINTS,
        View::Reconciler => reconciler::KEY_HINTS,
        View::Workflows => workflows::KEY_HINTS,
        View::Cost => cost::KEY_HINTS,
        View::Help => help::KEY_HINTS,
    }
}

fn draw_header(frame: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let mut spans = vec![
        Span::styled(" indigo ", theme.selected().patch(theme.heading())),
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
            let age = app.fetched_at.map(|at| (app.now - at).num_seconds().max(0)).unwrap_or(0);
            spans.push(Span::raw(format!("· updated {age}s ago")));
        }
        Connection::Stale(error) => spans.push(Span::styled(format!("· STALE, retrying: {error}"), theme.bad())),
        Connection::Unauthorized(error) => spans.push(Span::styled(format!("· UNAUTHORIZED: {error}"), theme.bad())),
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn draw_footer(frame: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let line = match &app.mode {
        Mode::Filter => Line::from(format!("/{}", app.input)),
        Mode::Command => Line::from(format!(":{}", app.input)),
        Mode::PlanPrompt { slug, from, .. } => {
            let names: Vec<&str> = app.plans.iter().map(|p| p.name.as_str()).collect();
            Line::from(format!("plan for {slug} (now {from}; {}): {}", names.join("/"), app.input))
        }
        Mode::Confirm { .. } => Line::from(""),
        Mode::Normal if !app.status.is_empty() => Line::styled(app.status.clone(), theme.warn()),
        Mode::Normal if !app.filter.is_empty() => {
            Line::from(format!("filter: {}   (/ to change, Esc to clear)", app.filter))
        }
        Mode::Normal => Line::from(key_hints(app.view)),
    };
    frame.render_widget(Paragraph::new(line), area);
}

fn draw_confirm(frame: &mut Frame, app: &App, command: &Command, theme: Theme) {
    let mut lines = vec![Line::from(command.describe())];
    match command {
        Command::ChangePlan { .. } => lines.extend(preview_lines(app.change_preview.as_ref(), theme)),
        Command::Restore { .. } => lines.extend(restore_lines(app.restore_preview.as_ref(), theme)),
        _ => {}
    }
    let prompt = match command.dangerous() {
        true => format!("Type {} and Enter to confirm, Esc to cancel: {}", command.slug(), app.input),
        false => "y to confirm, any other key to cancel".into(),
    };
    lines.extend([Line::from(""), Line::styled(prompt, theme.warn())]);
    let area = frame.area();
    let width = area.width.saturating_sub(4).min(90);
    // Room for the lines as they wrap inside the borders.
    let inner = usize::from(width.saturating_sub(2)).max(1);
    let rows: usize = lines.iter().map(|l| l.width().max(1).div_ceil(inner)).sum();
    let height = u16::try_from(rows + 2).unwrap_or(u16::MAX).min(area.height.saturating_sub(area.height / 3));
    let popup = Rect { x: area.x + (area.width - width) / 2, y: area.y + area.height / 3, width, height };
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: true })
            .block(Block::default().borders(Borders::ALL).title(" confirm ")),
        popup,
    );
}

/// What a plan change would do, from the control plane's preview.
fn preview_lines(preview: Option<&PlanChangePreview>, theme: Theme) -> Vec<Line<'static>> {
    let Some(preview) = preview else { return vec![Line::from("Working out what it would do…")] };
    let money = |minor: u64| format!("{}.{:02}", minor / 100, minor % 100);
    let mut lines = vec![];
    if preview.moves {
        let basis = match preview.moves_measured {
            0 => "default rate".to_owned(),
            n => format!("rate of the last {n} moves"),
        };
        let mut pause = match preview.expected_pause_ms {
            Some(ms) => format!("writes held up to {ms} ms"),
            None => "writes held, not refused".to_owned(),
        };
        if let Some(written) = preview.writes_last_5_minutes {
            pause += &format!(" ({written} rows written in the last 5 min)");
        }
        lines.push(Line::from(format!(
            "Copies {} rows ({:.1} MB) in about {:.1} s ({basis}); {pause}.",
            preview.rows_total,
            preview.bytes_total as f64 / 1_000_000.0,
            preview.estimated_copy_seconds
        )));
    }
    let proration = preview.proration.map(|minor| {
        let sign = if minor < 0 { "-" } else { "+" };
        format!(" Prorated now: {sign}{}.", money(minor.unsigned_abs()))
    });
    lines.push(Line::from(format!(
        "Price: {} → {} {} a month.{}",
        money(preview.price_per_month_from),
        money(preview.price_per_month_to),
        preview.currency,
        proration.unwrap_or_default()
    )));
    for refusal in &preview.refusals {
        lines.push(Line::styled(format!("Refused: {}.", refusal.message), theme.warn()));
    }
    lines
}

/// What a restore would do, from the control plane's preview.
fn restore_lines(preview: Option<&RestorePreview>, theme: Theme) -> Vec<Line<'static>> {
    let Some(preview) = preview else { return vec![Line::from("Working out what it would do…")] };
    let changed: Vec<String> = preview
        .tables
        .iter()
        .filter(|t| t.rows_now != t.rows_in_backup)
        .map(|t| format!("{} {} → {}", t.table, t.rows_now, t.rows_in_backup))
        .collect();
    let mut lines = vec![Line::from(format!(
        "Rows: {} now → {} after{}{}.",
        preview.rows_now,
        preview.rows_in_backup,
        if changed.is_empty() { "" } else { " (" },
        if changed.is_empty() { String::new() } else { changed.join(", ") + ")" },
    ))];
    for refusal in &preview.refusals {
        lines.push(Line::styled(format!("Refused: {}.", refusal.message), theme.warn()));
    }
    lines
}
