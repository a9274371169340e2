//! Logs and traces of the control plane (see `indigo_core::traces`).

use indigo_core::traces::Telemetry;

use crate::config::Config;

/// Logs to stderr; traces to `otlp_endpoint` when the configuration sets one.
pub fn init(config: &Config) -> anyhow::Result<Telemetry> {
    indigo_core::traces::init("indigo", &config.traces).map_err(anyhow::Error::msg)
}
