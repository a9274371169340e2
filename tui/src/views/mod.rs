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
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Wrap};

use crate::app::{App, Connection, Effect, Mode, View};
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
        draw_confirm(frame, app, command.describe(), command.dangerous().then(|| command.slug().to_owned()), theme);
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
