//! The master login of each Aurora cluster, which RDS keeps in Secrets
//! Manager (the cluster is created with `ManageMasterUserPassword`, so no one
//! ever chose or saw the password). Read when the control plane provisions the
//! cluster's tenant schema; never stored, logged or handed on.

use serde::Deserialize;

use super::classify;
use crate::config::Secret;
use crate::providers::ProviderError;

/// What RDS writes into a managed master secret.
#[derive(Deserialize)]
struct SecretValue {
    username: String,
    password: String,
}

/// A cluster's master user and password.
#[derive(Debug)]
pub struct MasterLogin {
    pub username: String,
    pub password: Secret,
}

pub struct MasterSecrets {
    client: aws_sdk_secretsmanager::Client,
}

impl MasterSecrets {
    pub fn new(config: &aws_config::SdkConfig) -> Self {
        Self { client: aws_sdk_secretsmanager::Client::new(config) }
    }

    /// The login kept in the secret `arn`.
    pub async fn login(&self, arn: &str) -> Result<MasterLogin, ProviderError> {
        let value = self.client.get_secret_value().secret_id(arn).send().await.map_err(classify)?;
        let unreadable = |why: &str| ProviderError::Permanent {
            reason: "MasterSecretUnreadable".into(),
            message: format!("the master secret {arn} {why}"),
        };
        let text = value.secret_string().ok_or_else(|| unreadable("holds no text"))?;
        let parsed: SecretValue =
            serde_json::from_str(text).map_err(|_| unreadable("is not RDS's {\"username\", \"password\"}"))?;
        Ok(MasterLogin { username: parsed.username, password: Secret::new(parsed.password) })
    }
}
