//! The passwords of tenants' own cluster logins. A route to a tenant on a
//! cluster of its own names the Secrets Manager secret holding its login's
//! password (never the password: the routing table travels over HTTP and may
//! be logged); the data plane reads it there with its own AWS identity (the
//! task role on ECS), the first time the route names it.

use tokio::sync::OnceCell;

#[derive(Default)]
pub struct LoginSecrets {
    /// Made on first use: a data plane no route sends to a cluster loads no
    /// AWS configuration at all.
    client: OnceCell<aws_sdk_secretsmanager::Client>,
}

impl LoginSecrets {
    /// Read through `client` (tests: an emulator's) rather than the standard AWS configuration.
    pub fn with_client(client: aws_sdk_secretsmanager::Client) -> Self {
        Self { client: OnceCell::new_with(Some(client)) }
    }

    /// The password kept in `secret`.
    pub async fn read(&self, secret: &str) -> anyhow::Result<String> {
        let client = self
            .client
            .get_or_init(|| async { aws_sdk_secretsmanager::Client::new(&aws_config::load_from_env().await) })
            .await;
        let value = client.get_secret_value().secret_id(secret).send().await.map_err(|e| {
            anyhow::anyhow!("cannot read {secret}: {}", aws_sdk_secretsmanager::error::DisplayErrorContext(e))
        })?;
        value
            .secret_string()
            .filter(|password| !password.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("the secret {secret} holds no password"))
    }
}
