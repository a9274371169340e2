//! Small pieces more than one view draws with.

use chrono::{DateTime, Utc};
use indigo_core::api::Workflow;
use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::widgets::{Block, Borders, Paragraph, Wrap};

/// How long ago, in the largest whole unit: `42s`, `5m`, `3h`, or `never`.
pub fn age(now: DateTime<Utc>, at: Option<DateTime<Utc>>) -> String {
    let Some(at) = at else { return "never".into() };
    let seconds = (now - at).num_seconds().max(0);
    match seconds {
        0..=59 => format!("{seconds}s"),
        60..=3599 => format!("{}m", seconds / 60),
        _ => format!("{}h", seconds / 3600),
    }
}

/// `███░░░ 3/8`: steps done of all.
pub fn progress_bar(done: usize, total: usize, width: usize) -> String {
    format!("{} {done}/{total}", bar(done, total, width))
}

pub fn bar(done: usize, total: usize, width: usize) -> String {
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

pub fn steps_done(workflow: &Workflow) -> usize {
    workflow.steps.iter().filter(|s| s.state == "succeeded").count()
}

/// The step a workflow is at: the last one started that has not succeeded.
pub fn current_step(workflow: &Workflow) -> String {
    workflow
        .steps
        .iter()
        .rev()
        .find(|s| s.state != "succeeded")
        .map(|s| format!("{} ({})", s.name, s.state))
        .unwrap_or_default()
}

/// A titled box holding one sentence, for a view with nothing to list.
pub fn note(frame: &mut Frame, area: Rect, title: &str, text: &str) {
    frame.render_widget(
        Paragraph::new(text)
            .wrap(Wrap { trim: true })
            .block(Block::default().borders(Borders::ALL).title(format!(" {title} "))),
        area,
    );
}
