//! The `indigo` binary's integration tests in one binary.

mod aws;
mod fuzz;
mod images;
mod traces;
mod up;
