//! The control plane's integration tests in one binary: each module was once a
//! binary of its own, and each linked the whole dependency set.

// Proving a spawned admin-API future `Send` walks async-stripe's mutually
// recursive types (Transfer ↔ TransferReversal) through every layer of the
// future, the workflow steps' spans included; 128 levels is not enough.
#![recursion_limit = "256"]

mod api;
mod aws_provider;
mod billing;
mod reconciler;
mod support;
mod usage_billing;
mod workflows;
