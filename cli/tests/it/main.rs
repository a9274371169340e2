//! The `indigo` binary's integration tests in one binary.

mod fuzz;
mod up;
