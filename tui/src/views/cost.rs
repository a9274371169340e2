//! Cost and margin per tenant over 30 days: the unprofitable first, then by
//! margin or (`u`) by usage.

use crossterm::event::{KeyCode, KeyEvent};
use ratatui::Frame;
use ratatui::layout::{Constraint, Rect};
use ratatui::widgets::{Block, Borders, Cell, Row, Table};

use super::widgets::note;
use crate::app::{App, Effect};
use crate::theme::Theme;

pub(super) const KEY_HINTS: &str = "? help  j/k select  u sort by usage/margin  : command  Esc back  q quit";

pub(super) fn on_key(app: &mut App, key: KeyEvent) -> Vec<Effect> {
    if key.code == KeyCode::Char('u') {
        app.cost_by_usage = !app.cost_by_usage;
        app.sort_costs();
        app.status = format!("sorted by {}", if app.cost_by_usage { "usage" } else { "margin" });
    }
    vec![]
}

pub(super) fn draw(frame: &mut Frame, area: Rect, app: &App, theme: Theme) {
    if app.costs.is_empty() {
        note(frame, area, "usage & cost", "No cost report: the control plane has no cost model or no serving tenants.");
        return;
    }
    let narrow = area.width < 100;
    let height = area.height.saturating_sub(3) as usize;
    let first = app.selected.saturating_sub(height.saturating_sub(1));
    let unprofitable = app.costs.iter().filter(|c| c.unprofitable).count();
    // Usage Stripe received differently from what was reported (BILL): said above a wide table too.
    let parity = match app.out_of_parity.len() {
        n if n > 0 && !narrow => format!("; {n} out of billing parity (BILL)"),
        _ => String::new(),
    };
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
                Cell::from(format!("{:.2}", c.margin)).style(if c.unprofitable { theme.bad() } else { theme.good() }),
            ];
            if !narrow {
                let biggest = c.cost.iter().max_by(|a, b| a.1.total_cmp(b.1)).map(|(k, v)| format!("{k} {v:.2}"));
                cells.push(Cell::from(biggest.unwrap_or_default()));
            }
            let parity = app.out_of_parity.contains(&c.tenant_id);
            let flags: Vec<&str> = [(c.unprofitable, "LOSS"), (parity, "BILL")]
                .into_iter()
                .filter_map(|(set, flag)| set.then_some(flag))
                .collect();
            cells.push(Cell::from(flags.join(" ")).style(if flags.is_empty() { theme.good() } else { theme.bad() }));
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
        Table::new(rows, widths).header(Row::new(header).style(theme.heading())).block(
            Block::default().borders(Borders::ALL).title(format!(
                " usage & cost ({currency}/month; {unprofitable} unprofitable first, then {}{parity}) ",
                if app.cost_by_usage { "busiest" } else { "lowest margin" },
            )),
        ),
        area,
    );
}
