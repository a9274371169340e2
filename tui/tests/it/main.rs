//! The console's integration tests in one binary.

mod console;
mod fixture;
mod snapshots;
mod tmux;
