//! The Indigo control plane as a library: the `indigo` binary (crate
//! `indigo-cli`) is a thin shell over it, and tests drive it in-process.

pub mod api;
pub mod backups;
pub mod billing;
pub mod config;
pub mod control_plane;
pub mod db;
pub mod failpoints;
pub mod idempotency;
pub mod identity;
pub mod jobs;
pub mod journal;
pub mod metering;
pub mod outbox;
pub mod policy;
pub mod providers;
pub mod reconciler;
pub mod registry;
pub mod runtime;
pub mod server;
pub mod status;
pub mod telemetry;
pub mod up;
pub mod workflow;
