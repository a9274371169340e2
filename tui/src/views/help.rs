//! Every key, in one list.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Paragraph};

const HELP: &[(&str, &str)] = &[
    ("j/k ↑/↓", "move"),
    ("g/G", "first / last"),
    ("Enter", "tenant detail"),
    ("Esc", "back"),
    ("/", "filter (substring; !text inverts)"),
    ("1-9, 0", "sort by column (again: reverse)"),
    (":", "command: tenants, events, reconciler, workflows (moves), cost, quit"),
    ("p", "change plan (a silo plan = own database)"),
    ("s", "suspend / resume"),
    ("R", "reconcile now"),
    ("P", "pause / resume reconciliation"),
    ("d", "dry run: what a reconcile would change"),
    ("X", "offboard (type the slug to confirm)"),
    ("b / B / N", "back up / restore newest backup / into new silo (detail; type slug)"),
    ("r / c", "workflows view: retry a failed one / cancel a running one"),
    ("u", "cost view: sort by usage / by margin"),
    ("Ctrl-r", "refresh now"),
    ("?", "this help"),
    ("q", "quit"),
];

pub(super) const KEY_HINTS: &str = "Esc back  q quit";

pub(super) fn draw(frame: &mut Frame, area: Rect) {
    let lines: Vec<Line> = HELP.iter().map(|(key, what)| Line::from(format!("{key:<10} {what}"))).collect();
    frame.render_widget(Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(" keys ")), area);
}
