//! Logging.

use tracing_subscriber::EnvFilter;

/// Logs to stderr, filtered by `RUST_LOG` (default `info`; expected database
/// notices kept quiet).
pub fn init_logging() {
    let filter = EnvFilter::try_new(indigo_core::http::log_filter()).unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}
