//! The AWS provider's silo databases: one Aurora PostgreSQL Serverless v2
//! cluster per silo tenant, with its `db.serverless` writer. Created encrypted
//! and protected from deletion, with the capacity range and backup retention
//! of the tenant's plan (`silo` in `policies/plans.toml`), tagged `tenant_id`
//! and `plan`; resized when the plan changes; deleted writer first, then the
//! cluster (deletion protection lifted just before), with a final snapshot
//! when the plan asks for one.
//!
//! The control plane runs in the tenants' VPC and reaches each cluster's
//! writer endpoint; the data plane is routed there through the placement.

use std::collections::BTreeMap;

use aws_sdk_rds::types::{ServerlessV2ScalingConfiguration, Tag};
use indigo_core::plan::{PlanName, SiloSize};

use super::{classify, done_unless_refused, is_code};
use crate::providers::{ProviderError, SiloTenant};

const ENGINE: &str = "aurora-postgresql";
const WRITER_CLASS: &str = "db.serverless";
const MASTER_USER: &str = "indigo";
/// The database inside each tenant's cluster that holds its rows.
pub const TENANT_DATABASE: &str = "indigo";

/// What AWS reports of a tenant's cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterState {
    pub identifier: String,
    pub arn: Option<String>,
    pub status: String,
    pub endpoint: Option<String>,
    pub acu_min: Option<f64>,
    pub acu_max: Option<f64>,
    pub backup_retention_days: Option<i32>,
    pub encrypted: bool,
    pub deletion_protection: bool,
    pub tags: BTreeMap<String, String>,
    /// The writer instance, once it is a member of the cluster.
    pub writer: Option<String>,
    /// The Secrets Manager secret holding the master login.
    pub master_secret_arn: Option<String>,
}

impl ClusterState {
    /// Whether the cluster is sized and tagged as `plan` (with `size`) asks.
    pub fn sized_as(&self, plan: &PlanName, size: &SiloSize) -> bool {
        self.acu_min == Some(size.acu_min.get())
            && self.acu_max == Some(size.acu_max.get())
            && self.backup_retention_days == i32::try_from(size.backup_retention_days).ok()
            && self.tags.get("plan").map(String::as_str) == Some(plan.as_str())
    }
}

/// The cluster of a silo tenant: `indigo-`, its slug and the end of its id
/// (letters, digits and hyphens, as RDS requires).
pub fn cluster_identifier(tenant: &SiloTenant<'_>) -> String {
    crate::providers::resource_name("indigo", '-', tenant.id, tenant.slug)
}

fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build()
}

fn writer_identifier(cluster: &str) -> String {
    format!("{cluster}-writer")
}

pub struct AuroraClusters {
    rds: aws_sdk_rds::Client,
}

impl AuroraClusters {
    pub fn new(config: &aws_config::SdkConfig) -> Self {
        Self { rds: aws_sdk_rds::Client::new(config) }
    }

    /// The tenant's cluster as AWS reports it, `None` when there is none.
    pub async fn observe(&self, tenant: &SiloTenant<'_>) -> Result<Option<ClusterState>, ProviderError> {
        self.describe(&cluster_identifier(tenant)).await
    }

    /// The cluster `identifier` as AWS reports it, `None` when there is none.
    pub async fn describe(&self, identifier: &str) -> Result<Option<ClusterState>, ProviderError> {
        let described = match self.rds.describe_db_clusters().db_cluster_identifier(identifier).send().await {
            Ok(described) => described,
            Err(e) if is_code(&e, &["DBClusterNotFoundFault"]) => return Ok(None),
            Err(e) => return Err(classify(e)),
        };
        let Some(cluster) = described.db_clusters().first() else { return Ok(None) };
        let scaling = cluster.serverless_v2_scaling_configuration();
        Ok(Some(ClusterState {
            identifier: identifier.to_owned(),
            arn: cluster.db_cluster_arn().map(str::to_owned),
            status: cluster.status().unwrap_or("unknown").to_owned(),
            endpoint: cluster.endpoint().map(str::to_owned),
            acu_min: scaling.and_then(|s| s.min_capacity()),
            acu_max: scaling.and_then(|s| s.max_capacity()),
            backup_retention_days: cluster.backup_retention_period(),
            encrypted: cluster.storage_encrypted().unwrap_or(false),
            deletion_protection: cluster.deletion_protection().unwrap_or(false),
            tags: cluster
                .tag_list()
                .iter()
                .filter_map(|t| Some((t.key()?.to_owned(), t.value().unwrap_or_default().to_owned())))
                .collect(),
            writer: cluster
                .db_cluster_members()
                .iter()
                .find(|m| m.is_cluster_writer().unwrap_or(false))
                .and_then(|m| m.db_instance_identifier().map(str::to_owned)),
            master_secret_arn: cluster.master_user_secret().and_then(|s| s.secret_arn()).map(str::to_owned),
        }))
    }

    /// Brings the tenant's cluster and writer to what its plan says: creates
    /// what is missing, resizes and retags what differs. Safe to repeat.
    pub async fn ensure(&self, tenant: &SiloTenant<'_>) -> Result<ClusterState, ProviderError> {
        let (plan, size) = (&tenant.plan.name, tenant.size()?);
        let identifier = cluster_identifier(tenant);
        let tags = [tag("tenant_id", &tenant.id.to_string()), tag("plan", plan.as_str()), tag("managed-by", "indigo")];
        let scaling = ServerlessV2ScalingConfiguration::builder()
            .min_capacity(size.acu_min.get())
            .max_capacity(size.acu_max.get())
            .build();
        let retention = i32::try_from(size.backup_retention_days).unwrap_or(35);
        let state = match self.observe(tenant).await? {
            Some(state) => state,
            None => {
                let created = self
                    .rds
                    .create_db_cluster()
                    .db_cluster_identifier(&identifier)
                    .engine(ENGINE)
                    .master_username(MASTER_USER)
                    .database_name(TENANT_DATABASE)
                    .manage_master_user_password(true)
                    .storage_encrypted(true)
                    .deletion_protection(true)
                    .backup_retention_period(retention)
                    .serverless_v2_scaling_configuration(scaling.clone())
                    .set_tags(Some(tags.to_vec()))
                    .send()
                    .await;
                // Another reconcile got there first: carry on with its cluster.
                done_unless_refused(created, &["DBClusterAlreadyExistsFault"])?;
                self.observe(tenant).await?.ok_or_else(|| {
                    ProviderError::Transient(format!("cluster {identifier} created but not described yet"))
                })?
            }
        };
        // One deleted a moment ago (a silo made again: a restore into a new
        // silo) keeps its identifier until it is gone; then it is made anew.
        if state.status == "deleting" {
            return Err(ProviderError::Transient(format!("cluster {identifier} is still being deleted")));
        }
        if state.writer.is_none() {
            let created = self
                .rds
                .create_db_instance()
                .db_instance_identifier(writer_identifier(&identifier))
                .db_cluster_identifier(&identifier)
                .db_instance_class(WRITER_CLASS)
                .engine(ENGINE)
                .set_tags(Some(tags.to_vec()))
                .send()
                .await;
            done_unless_refused(created, &["DBInstanceAlreadyExists"])?;
        }
        if !state.sized_as(plan, size) {
            self.rds
                .modify_db_cluster()
                .db_cluster_identifier(&identifier)
                .serverless_v2_scaling_configuration(scaling)
                .backup_retention_period(retention)
                .apply_immediately(true)
                .send()
                .await
                .map_err(classify)?;
        }
        if state.tags.get("plan").map(String::as_str) != Some(plan.as_str())
            && let Some(arn) = &state.arn
        {
            self.rds
                .add_tags_to_resource()
                .resource_name(arn)
                .set_tags(Some(tags.to_vec()))
                .send()
                .await
                .map_err(classify)?;
        }
        self.observe(tenant)
            .await?
            .ok_or_else(|| ProviderError::Transient(format!("cluster {identifier} vanished while being set up")))
    }

    /// Deletes the writer, then the cluster (with a final snapshot named
    /// `<cluster>-final` when `final_snapshot`). Gone already is done.
    pub async fn delete(&self, tenant: &SiloTenant<'_>) -> Result<(), ProviderError> {
        let final_snapshot = tenant.final_snapshot();
        let Some(state) = self.observe(tenant).await? else { return Ok(()) };
        if state.status == "deleting" {
            return Ok(());
        }
        if let Some(writer) = &state.writer {
            // An instance of a cluster has no snapshot of its own: the cluster's is the one.
            let deleted = self.rds.delete_db_instance().db_instance_identifier(writer).send().await;
            done_unless_refused(deleted, &["DBInstanceNotFound", "DBInstanceNotFoundFault"])?;
        }
        if state.deletion_protection {
            self.rds
                .modify_db_cluster()
                .db_cluster_identifier(&state.identifier)
                .deletion_protection(false)
                .apply_immediately(true)
                .send()
                .await
                .map_err(classify)?;
        }
        let mut delete = self.rds.delete_db_cluster().db_cluster_identifier(&state.identifier);
        delete = if final_snapshot {
            // Dated: a tenant that comes back to a cluster of its own and leaves
            // it again (a second downgrade) leaves a second snapshot, not a clash.
            let taken = chrono::Utc::now().format("%Y%m%d%H%M%S");
            delete
                .skip_final_snapshot(false)
                .final_db_snapshot_identifier(format!("{}-final-{taken}", state.identifier))
        } else {
            delete.skip_final_snapshot(true)
        };
        done_unless_refused(delete.send().await, &["DBClusterNotFoundFault"])
    }
}
