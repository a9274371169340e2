//! What several test files share.

use indigo_controlplane::config::{Config, Overrides};
use indigo_controlplane::control_plane::ControlPlane;

/// AWS settings for moto, where `.ci/run` starts it (`MOTO_URL`, default
/// `http://127.0.0.1:5000`); fails with what to do when moto is not there.
/// Explicit settings rather than the environment: a developer's own AWS
/// settings stay out of the tests.
pub async fn moto() -> aws_config::SdkConfig {
    let url = std::env::var("MOTO_URL").unwrap_or_else(|_| "http://127.0.0.1:5000".into());
    reqwest::get(format!("{url}/moto-api/"))
        .await
        .unwrap_or_else(|e| panic!("moto is not reachable at {url} ({e}); .ci/run installs and starts it"));
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(&url)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new("test", "test", None, None, "moto"))
        .load()
        .await
}

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
