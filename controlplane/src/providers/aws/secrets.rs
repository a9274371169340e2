//! Secrets Manager, for four things: the master login of each Aurora
//! cluster, which RDS keeps there (the cluster is created with
//! `ManageMasterUserPassword`, so no one ever chose or saw the password), read
//! when the control plane works in the cluster's database (provisioning,
//! seeding, exports, moves) and kept in memory for a minute, never stored,
//! logged or handed on; the secrets of the data-plane tasks, handed to ECS by
//! ARN; the daemon's own secret settings, which may be given as ARNs; and
//! the passwords of the tenants' own cluster logins ([`TenantLogins`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

use indigo_core::tenant::TenantId;
use indigo_tenantdb::ClusterLogin;

use super::classify;
use crate::config::{Config, Secret};
use crate::providers::ProviderError;

/// Reads every secret setting given as a Secrets Manager ARN (the admin
/// token, the app role's database password, Stripe's key and webhook secret)
/// and puts its value in its place, so that configuration files and the
/// daemon's task definition carry ARNs, not secrets. No AWS configuration is
/// loaded when no setting is an ARN.
pub async fn resolve_config_arns(config: &mut Config) -> anyhow::Result<()> {
    let wanted = config.secrets_by_arn();
    if wanted.is_empty() {
        return Ok(());
    }
    let client = aws_sdk_secretsmanager::Client::new(&aws_config::load_from_env().await);
    for (key, secret) in wanted {
        let arn = secret.expose().to_owned();
        let read = client.get_secret_value().secret_id(&arn).send().await.map_err(|e| {
            anyhow::anyhow!("config key `{key}`: cannot read {arn} from Secrets Manager: {}", classify(e))
        })?;
        let value = read
            .secret_string()
            .ok_or_else(|| anyhow::anyhow!("config key `{key}`: the secret {arn} holds no text"))?;
        *secret = Secret::new(value);
    }
    config.check_secrets()?;
    Ok(())
}

/// What RDS writes into a managed master secret.
#[derive(Deserialize)]
struct SecretValue {
    username: String,
    password: String,
}

/// A cluster's master user and password.
#[derive(Debug, Clone)]
pub struct MasterLogin {
    pub username: String,
    pub password: Secret,
}

/// How long a master login read is used before it is read again: a reconcile
/// or a move reaches a cluster many times, and a rotated password is picked
/// up within this.
const LOGIN_REUSE: Duration = Duration::from_secs(60);

pub struct MasterSecrets {
    client: aws_sdk_secretsmanager::Client,
    /// Logins read recently, by secret ARN, in memory only.
    recent: Mutex<HashMap<String, (Instant, MasterLogin)>>,
}

impl MasterSecrets {
    pub fn new(config: &aws_config::SdkConfig) -> Self {
        Self { client: aws_sdk_secretsmanager::Client::new(config), recent: Mutex::default() }
    }

    /// The login kept in the secret `arn`.
    pub async fn login(&self, arn: &str) -> Result<MasterLogin, ProviderError> {
        if let Some((read, login)) = self.recent.lock().expect("master logins lock").get(arn)
            && read.elapsed() < LOGIN_REUSE
        {
            return Ok(login.clone());
        }
        let value = self.client.get_secret_value().secret_id(arn).send().await.map_err(classify)?;
        let unreadable = |why: &str| ProviderError::Permanent {
            reason: "MasterSecretUnreadable".into(),
            message: format!("the master secret {arn} {why}"),
        };
        let text = value.secret_string().ok_or_else(|| unreadable("holds no text"))?;
        let parsed: SecretValue =
            serde_json::from_str(text).map_err(|_| unreadable("is not RDS's {\"username\", \"password\"}"))?;
        let login = MasterLogin { username: parsed.username, password: Secret::new(parsed.password) };
        self.recent.lock().expect("master logins lock").insert(arn.to_owned(), (Instant::now(), login.clone()));
        Ok(login)
    }
}

/// A secret as the task definitions reference it, and whether its value
/// just changed (running tasks then need replacing to read it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub arn: String,
    pub changed: bool,
}

/// The secrets data-plane tasks read at start, kept in Secrets Manager under
/// `<prefix>/…` and handed to ECS by ARN (a container's `secrets`, never its
/// environment): the storefront's JWT secret, each service's own token for the
/// admin API, the Redis URL (which may carry a password), the app role's
/// database password.
pub struct TaskSecrets {
    client: aws_sdk_secretsmanager::Client,
    prefix: String,
    /// The control database, where the services' identities are minted.
    identities: sqlx::PgPool,
}

impl TaskSecrets {
    pub fn new(config: &aws_config::SdkConfig, prefix: &str, identities: sqlx::PgPool) -> Self {
        Self { client: aws_sdk_secretsmanager::Client::new(config), prefix: prefix.to_owned(), identities }
    }

    /// The name of the secret of `service`'s token.
    pub fn token_name(&self, service: &str) -> String {
        format!("{}/dataplane/{service}/control-plane-token", self.prefix)
    }

    /// The secret storefront tokens are signed with: `given`, or else made
    /// once, random.
    pub async fn jwt_secret(&self, given: Option<&Secret>) -> Result<Stored, ProviderError> {
        let name = format!("{}/storefront/jwt-secret", self.prefix);
        match (self.read(&name).await?, given) {
            (Some((arn, current)), Some(given)) if current == given.expose() => Ok(Stored { arn, changed: false }),
            (_, Some(given)) => self.put(&name, given.expose()).await,
            (Some((arn, _)), None) => Ok(Stored { arn, changed: false }),
            (None, None) => self.put(&name, &crate::identity::generate_token()).await,
        }
    }

    /// The token `service` (serving `tenant` only, for a silo's) presents to
    /// the admin API; minted again when the stored one is no longer current
    /// (revoked, or never stored).
    pub async fn control_plane_token(
        &self,
        service: &str,
        tenant: Option<indigo_core::tenant::TenantId>,
    ) -> Result<Stored, ProviderError> {
        let name = self.token_name(service);
        let unreachable = |e: sqlx::Error| ProviderError::Transient(format!("the control database: {e}"));
        if let Some((arn, token)) = self.read(&name).await?
            && crate::identity::dataplane_token_current(&self.identities, service, &token).await.map_err(unreachable)?
        {
            return Ok(Stored { arn, changed: false });
        }
        let token = crate::identity::mint_dataplane_token(&self.identities, service, tenant)
            .await
            .map_err(|e| ProviderError::Transient(format!("cannot give {service} an identity: {e}")))?;
        self.put(&name, token.expose()).await
    }

    /// The Redis URL the tasks share plan rates through, kept as configured.
    pub async fn redis_url(&self, url: &str) -> Result<Stored, ProviderError> {
        self.kept_as(&format!("{}/dataplane/redis-url", self.prefix), url).await
    }

    /// The app role's database password, kept as configured.
    pub async fn database_password(&self, password: &Secret) -> Result<Stored, ProviderError> {
        self.kept_as(&format!("{}/dataplane/database-password", self.prefix), password.expose()).await
    }

    /// The secret `name`, holding `value`: stored again only when it differs.
    async fn kept_as(&self, name: &str, value: &str) -> Result<Stored, ProviderError> {
        match self.read(name).await? {
            Some((arn, current)) if current == value => Ok(Stored { arn, changed: false }),
            _ => self.put(name, value).await,
        }
    }

    /// `service` is gone: its identity is revoked and its token's secret deleted.
    pub async fn forget_service(&self, service: &str) -> Result<(), ProviderError> {
        crate::identity::revoke_dataplane_token(&self.identities, service)
            .await
            .map_err(|e| ProviderError::Transient(format!("the control database: {e}")))?;
        let deleted = self
            .client
            .delete_secret()
            .secret_id(self.token_name(service))
            .force_delete_without_recovery(true)
            .send()
            .await;
        super::done_unless_refused(deleted, &["ResourceNotFoundException"])
    }

    /// The value of the secret `arn`, as ECS reads it for a task's `secrets`.
    pub async fn value(&self, arn: &str) -> Result<String, ProviderError> {
        let value = self.client.get_secret_value().secret_id(arn).send().await.map_err(classify)?;
        Ok(value.secret_string().unwrap_or_default().to_owned())
    }

    /// The secret's ARN and value; `None` when there is none.
    async fn read(&self, name: &str) -> Result<Option<(String, String)>, ProviderError> {
        match self.client.get_secret_value().secret_id(name).send().await {
            Ok(value) => {
                Ok(value.arn().map(|arn| (arn.to_owned(), value.secret_string().unwrap_or_default().to_owned())))
            }
            Err(e) if super::is_code(&e, &["ResourceNotFoundException"]) => Ok(None),
            Err(e) => Err(classify(e)),
        }
    }

    /// Stores `value` as the secret `name`, creating it if missing.
    async fn put(&self, name: &str, value: &str) -> Result<Stored, ProviderError> {
        let created = self
            .client
            .create_secret()
            .name(name)
            .secret_string(value)
            .tags(aws_sdk_secretsmanager::types::Tag::builder().key("managed-by").value("indigo").build())
            .send()
            .await;
        let arn = match created {
            Ok(created) => created.arn().map(str::to_owned),
            Err(e) if super::is_code(&e, &["ResourceExistsException"]) => self
                .client
                .put_secret_value()
                .secret_id(name)
                .secret_string(value)
                .send()
                .await
                .map_err(classify)?
                .arn()
                .map(str::to_owned),
            Err(e) => return Err(classify(e)),
        };
        let arn =
            arn.ok_or_else(|| ProviderError::Transient(format!("Secrets Manager stored {name} without an ARN")))?;
        Ok(Stored { arn, changed: true })
    }
}

/// The passwords of the tenants' own cluster logins, one secret each
/// ([`ClusterLogin::secret`]), made at random when the tenant's cluster is
/// first provisioned, tagged with the tenant and deleted with its cluster. The
/// data planes that serve the tenant read it themselves; no one else holds it.
pub struct TenantLogins {
    client: aws_sdk_secretsmanager::Client,
}

impl TenantLogins {
    pub fn new(config: &aws_config::SdkConfig) -> Self {
        Self { client: aws_sdk_secretsmanager::Client::new(config) }
    }

    /// The password of `tenant`'s `login`: the one kept, or else a new one, kept.
    pub async fn password(&self, tenant: TenantId, login: &ClusterLogin) -> Result<Secret, ProviderError> {
        let name = &login.secret;
        loop {
            match self.client.get_secret_value().secret_id(name).send().await {
                Ok(value) => {
                    let password =
                        value.secret_string().filter(|p| !p.is_empty()).ok_or_else(|| ProviderError::Permanent {
                            reason: "LoginSecretUnreadable".into(),
                            message: format!("the secret {name} holds no password"),
                        })?;
                    return Ok(Secret::new(password));
                }
                Err(e) if super::is_code(&e, &["ResourceNotFoundException"]) => {}
                Err(e) => return Err(classify(e)),
            }
            let tag =
                |key: &str, value: &str| aws_sdk_secretsmanager::types::Tag::builder().key(key).value(value).build();
            let created = self
                .client
                .create_secret()
                .name(name)
                .secret_string(crate::identity::generate_token())
                .tags(tag("tenant_id", &tenant.to_string()))
                .tags(tag("managed-by", "indigo"))
                .send()
                .await;
            // Made by a concurrent reconcile of the tenant: read that one.
            super::done_unless_refused(created, &["ResourceExistsException"])?;
        }
    }

    /// Deletes `login`'s secret at once (its cluster is gone). Gone already is done.
    pub async fn forget(&self, login: &ClusterLogin) -> Result<(), ProviderError> {
        let deleted =
            self.client.delete_secret().secret_id(&login.secret).force_delete_without_recovery(true).send().await;
        super::done_unless_refused(deleted, &["ResourceNotFoundException"])
    }
}
