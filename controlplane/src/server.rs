//! `indigo serve`: the admin API on its listener. The parts behind it are
//! built by [`crate::control_plane::ControlPlane`].

use std::future::Future;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::api::{self, AppState};
use crate::config::Config;

/// Both daemons stop on SIGTERM or Ctrl-C.
pub use indigo_core::http::shutdown_signal;

/// Serves the admin API on `listener` until `shutdown` completes, then drains.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let address = listener.local_addr()?;
    tracing::info!(%address, "admin API listening");
    let routing = state.routing_changes.clone();
    // Data planes' routing requests wait for changes; stopping answers them at once.
    let shutdown = async move {
        shutdown.await;
        routing.close();
    };
    axum::serve(listener, api::router(state)).with_graceful_shutdown(shutdown).await.context("admin API server failed")
}

pub async fn bind(config: &Config) -> anyhow::Result<TcpListener> {
    TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} (config key `listen`)", config.listen))
}
