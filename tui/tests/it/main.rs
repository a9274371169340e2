//! The console's integration tests in one binary.

mod console;
mod tmux;
