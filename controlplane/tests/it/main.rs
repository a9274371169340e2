//! The control plane's integration tests in one binary: each module was once a
//! binary of its own, and each linked the whole dependency set.

mod api;
mod aws_provider;
mod billing;
mod reconciler;
mod support;
mod usage_billing;
mod workflows;
