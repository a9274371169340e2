//! What several test files share.

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
