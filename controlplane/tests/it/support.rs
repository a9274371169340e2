//! What several test files share.

use indigo_controlplane::config::{Config, Overrides};
use indigo_controlplane::control_plane::ControlPlane;

/// A control plane built as `indigo serve` builds it, on a test's own control
/// database: `overrides` over the repository's policies and the test server
/// (`indigo_e2e::server_url`). Nothing runs until the test starts it.
pub async fn control_plane(db: sqlx::PgPool, overrides: Overrides) -> ControlPlane {
    let plans = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/plans.toml");
    let config = Config::load(
        None,
        Overrides {
            plans_file: overrides.plans_file.clone().or(Some(plans.into())),
            tenant_server_url: overrides.tenant_server_url.clone().or(Some(indigo_e2e::server_url())),
            ..overrides
        },
    )
    .expect("a valid test configuration");
    ControlPlane::on_database(&config, db, None).await.expect("the control plane builds")
}
