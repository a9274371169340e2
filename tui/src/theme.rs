//! Colours, or none (`NO_COLOR`, `--theme mono`): emphasis then comes from bold and reverse.

use indigo_core::api::WorkflowState;
use indigo_core::tenant::Phase;
use ratatui::style::{Color, Modifier, Style};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Theme {
    pub color: bool,
}

impl Theme {
    pub fn fg(self, color: Color) -> Style {
        if self.color { Style::default().fg(color) } else { Style::default() }
    }

    pub fn good(self) -> Style {
        self.fg(Color::Green)
    }

    pub fn busy(self) -> Style {
        self.fg(Color::Cyan)
    }

    pub fn warn(self) -> Style {
        if self.color { Style::default().fg(Color::Yellow) } else { Style::default().add_modifier(Modifier::BOLD) }
    }

    pub fn bad(self) -> Style {
        if self.color { Style::default().fg(Color::Red) } else { Style::default().add_modifier(Modifier::BOLD) }
    }

    pub fn selected(self) -> Style {
        if self.color {
            Style::default().bg(Color::Blue).fg(Color::White)
        } else {
            Style::default().add_modifier(Modifier::REVERSED)
        }
    }

    pub fn heading(self) -> Style {
        Style::default().add_modifier(Modifier::BOLD)
    }

    pub fn phase(self, phase: Phase) -> Style {
        match phase {
            Phase::Ready => self.good(),
            Phase::Failed => self.bad(),
            Phase::Degraded | Phase::Pending | Phase::Provisioning | Phase::Suspended => self.warn(),
            Phase::Deleting | Phase::Deleted => self.fg(Color::DarkGray),
        }
    }

    pub fn workflow(self, state: WorkflowState) -> Style {
        match state {
            WorkflowState::Succeeded => self.good(),
            WorkflowState::Running => self.busy(),
            WorkflowState::Compensating | WorkflowState::Cancelled => self.warn(),
            WorkflowState::Failed => self.bad(),
        }
    }
}
