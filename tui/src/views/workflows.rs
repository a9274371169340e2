//! Workflows, newest first, with the selected one's steps; the moves between
//! pool and silo above them, since they are what an operator watching an
//! upgrade waits on. `r` retries a failed workflow, `c` cancels a running one.

use crossterm::event::{KeyCode, KeyEvent};
use indigo_core::api::{TenantMove, WorkflowState};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Cell, Paragraph, Row, Table, Wrap};

use super::widgets::{age, bar, compact, current_step, note, progress_bar, steps_done};
use crate::app::{App, Command, Effect};
use crate::theme::Theme;

pub(super) const KEY_HINTS: &str = "? help  j/k select  r retry  c cancel  : command  Esc back  q quit";

pub(super) fn on_key(app: &mut App, key: KeyEvent) -> Vec<Effect> {
    let KeyCode::Char(key) = key.code else { return vec![] };
    let Some(workflow) = app.selected_workflow() else { return vec![] };
    let (id, kind, slug) = (workflow.id.to_string(), workflow.kind.clone(), app.slug_of(workflow.tenant_id));
    let command = match (key, workflow.state) {
        ('r', WorkflowState::Failed | WorkflowState::Cancelled) => Command::RetryWorkflow { id, kind, slug },
        ('r', state) => {
            app.status = format!("only a failed or cancelled workflow can be retried; this one is {state}");
            return vec![];
        }
        ('c', WorkflowState::Running) => Command::CancelWorkflow { id, kind, slug },
        ('c', state) => {
            app.status = format!("only a running workflow can be cancelled; this one is {state}");
            return vec![];
        }
        _ => return vec![],
    };
    app.ask_to_confirm(command)
}

pub(super) fn draw(frame: &mut Frame, area: Rect, app: &App, theme: Theme) {
    if app.workflows.is_empty() {
        note(frame, area, "workflows", "No workflows yet: creating or offboarding a tenant starts one.");
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
            let done = steps_done(w);
            let mut cells = vec![
                Cell::from(w.kind.clone()),
                Cell::from(app.slug_of(w.tenant_id)),
                Cell::from(w.state.to_string()).style(theme.workflow(w.state)),
                Cell::from(progress_bar(done, w.total_steps, if narrow { 8 } else { 12 })),
            ];
            // At 80 columns the step pane below names the current step.
            if !narrow {
                cells.push(Cell::from(current_step(w)));
                cells.push(Cell::from(format!("{} ago", age(app.now, Some(w.created_at)))));
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
            .header(Row::new(header).style(theme.heading()))
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
        lines.push(Line::styled(move_summary(moving), theme.busy()));
    }
    for step in &workflow.steps {
        let style = match step.state.as_str() {
            "succeeded" => theme.good(),
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
fn move_summary(moving: &TenantMove) -> String {
    let pause = moving.pause_ms.map(|ms| format!(" · writes held {ms} ms")).unwrap_or_default();
    // Beside what its preview said when it started.
    let estimate = match (moving.estimated_copy_seconds, moving.estimated_pause_ms) {
        (Some(copy), Some(pause)) => format!(" · est. copy {copy:.1} s, pause {pause} ms"),
        (Some(copy), None) => format!(" · est. copy {copy:.1} s"),
        _ => String::new(),
    };
    let pause = match moving.copy_seconds {
        Some(copy) => format!(" · copied in {copy:.1} s{pause}{estimate}"),
        None => format!("{pause}{estimate}"),
    };
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
                "done" => theme.good(),
                "rolled_back" => theme.bad(),
                _ => theme.busy(),
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
            .header(Row::new(header).style(theme.heading()))
            .block(Block::default().borders(Borders::ALL).title(format!(" moves ({}) ", app.moves.len()))),
        area,
    );
}
