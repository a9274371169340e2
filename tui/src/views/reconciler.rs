//! The reconciler's health: queue, errors by reason, the RLS audit, and the
//! data-plane services with their replicas.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Paragraph};

use super::widgets::age;
use crate::app::App;
use crate::theme::Theme;

pub(super) const KEY_HINTS: &str = "? help  : command  Esc back  q quit";

pub(super) fn draw(frame: &mut Frame, area: Rect, app: &App, theme: Theme) {
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
        Line::from(format!("last resync   {} ago", age(app.now, r.last_full_resync_at))),
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
            format!("RLS audit     ok ({}, {} ago)", audit.database, age(app.now, Some(audit.at))),
            theme.good(),
        )),
        Some(audit) => {
            lines.push(Line::styled(format!("RLS audit     VIOLATIONS: {}", audit.violations.join("; ")), theme.bad()))
        }
        None => lines.push(Line::from("RLS audit     not run yet")),
    }
    if !r.services.is_empty() {
        lines.push(Line::from(""));
        lines.push(Line::styled("data-plane services", theme.heading()));
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
