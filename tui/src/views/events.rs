//! The fleet's events, newest first; `/` filters by tenant or type (substring,
//! `!` inverts), as in the tenants view.

use indigo_core::api::Event;
use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Paragraph};

use crate::app::App;

pub(super) const KEY_HINTS: &str = "? help  / filter  : command  Esc back  q quit";

pub(super) fn draw(frame: &mut Frame, area: Rect, app: &App) {
    let (invert, needle) = app.filter_parts();
    let height = area.height.saturating_sub(2) as usize;
    let slug = |e: &Event| e.tenant_id.map(|id| app.slug_of(id)).unwrap_or_else(|| "-".into());
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
