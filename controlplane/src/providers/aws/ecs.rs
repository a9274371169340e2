//! The AWS provider's compute: the data plane as ECS services on one cluster,
//! one service for the pool and one per silo tenant, each from a task
//! definition of the data-plane image; desired counts come from the plans
//! (`silo.dataplane_replicas`) and the configuration (the pool's replicas).
//! A silo tenant's service has a task definition family of its own whose
//! container is told to serve that tenant only (`INDIGO_DATAPLANE_TENANT`, as
//! `--tenant` does locally): another tenant's token is refused there.
//! With subnets configured the services run on Fargate in those subnets;
//! without, on EC2 capacity with bridge networking.

use std::collections::BTreeMap;

use aws_sdk_ecs::types::{
    AssignPublicIp, AwsVpcConfiguration, Compatibility, ContainerDefinition, KeyValuePair, LaunchType,
    NetworkConfiguration, NetworkMode, PortMapping, Tag, TaskDefinitionStatus,
};
use indigo_core::tenant::TenantId;

use super::{classify, done_unless_refused, is_code};
pub use crate::providers::POOL_SERVICE;
use crate::providers::ProviderError;

/// The task definition family of the pool's data plane; a silo tenant's is
/// named after its service.
pub const FAMILY: &str = "indigo-dataplane";
const CONTAINER: &str = "dataplane";
const PORT: i32 = 8081;
/// The data plane's setting that restricts it to one tenant.
pub const TENANT_ENV: &str = "INDIGO_DATAPLANE_TENANT";

/// The task definition family of the service `name` (of `tenant`, for a silo).
pub fn family(name: &str, tenant: Option<TenantId>) -> String {
    match tenant {
        Some(_) => name.to_owned(),
        None => FAMILY.to_owned(),
    }
}

/// Where Fargate tasks run.
#[derive(Debug, Clone)]
pub struct Subnets {
    pub subnets: Vec<String>,
    pub security_groups: Vec<String>,
}

/// What ECS reports of a service.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceState {
    pub name: String,
    pub status: String,
    pub desired: i32,
    pub running: i32,
    pub task_definition: Option<String>,
    pub tags: BTreeMap<String, String>,
}

pub struct EcsServices {
    ecs: aws_sdk_ecs::Client,
    cluster: String,
    image: String,
    subnets: Option<Subnets>,
}

impl EcsServices {
    pub fn new(config: &aws_config::SdkConfig, cluster: &str, image: &str, subnets: Option<Subnets>) -> Self {
        Self { ecs: aws_sdk_ecs::Client::new(config), cluster: cluster.to_owned(), image: image.to_owned(), subnets }
    }

    /// The cluster, created if missing.
    pub async fn ensure_cluster(&self) -> Result<(), ProviderError> {
        let described = self.ecs.describe_clusters().clusters(&self.cluster).send().await.map_err(classify)?;
        if described.clusters().iter().any(|c| c.status() == Some("ACTIVE")) {
            return Ok(());
        }
        self.ecs.create_cluster().cluster_name(&self.cluster).send().await.map_err(classify)?;
        Ok(())
    }

    /// The task definition a service of `family` runs: the family's latest
    /// revision when it runs the configured image with the wanted environment
    /// (for a silo, its tenant), a new revision otherwise.
    pub async fn task_definition(&self, family: &str, tenant: Option<TenantId>) -> Result<String, ProviderError> {
        let environment: Vec<(String, String)> =
            tenant.map(|tenant| (TENANT_ENV.to_owned(), tenant.to_string())).into_iter().collect();
        match self.ecs.describe_task_definition().task_definition(family).send().await {
            Ok(found) => {
                if let Some(definition) = found.task_definition()
                    && definition.status() == Some(&TaskDefinitionStatus::Active)
                    && definition
                        .container_definitions()
                        .iter()
                        .any(|c| c.image() == Some(self.image.as_str()) && container_environment(c) == environment)
                    && let Some(arn) = definition.task_definition_arn()
                {
                    return Ok(arn.to_owned());
                }
            }
            Err(e) if is_code(&e, &["ClientException"]) => {} // no revision yet
            Err(e) => return Err(classify(e)),
        }
        let container = ContainerDefinition::builder()
            .name(CONTAINER)
            .image(&self.image)
            .essential(true)
            .memory(512)
            .port_mappings(PortMapping::builder().container_port(PORT).build())
            .set_environment(Some(
                environment
                    .iter()
                    .map(|(name, value)| KeyValuePair::builder().name(name).value(value).build())
                    .collect(),
            ))
            .build();
        let (mode, compatibility) = match self.subnets {
            Some(_) => (NetworkMode::Awsvpc, Compatibility::Fargate),
            None => (NetworkMode::Bridge, Compatibility::Ec2),
        };
        let registered = self
            .ecs
            .register_task_definition()
            .family(family)
            .network_mode(mode)
            .requires_compatibilities(compatibility)
            .cpu("256")
            .memory("512")
            .container_definitions(container)
            .send()
            .await
            .map_err(classify)?;
        registered
            .task_definition()
            .and_then(|d| d.task_definition_arn())
            .map(str::to_owned)
            .ok_or_else(|| ProviderError::Transient("ECS registered a task definition without an ARN".into()))
    }

    /// The service as ECS reports it; `None` when it does not exist (or is being deleted).
    pub async fn observe(&self, name: &str) -> Result<Option<ServiceState>, ProviderError> {
        let described = match self
            .ecs
            .describe_services()
            .cluster(&self.cluster)
            .services(name)
            .include(aws_sdk_ecs::types::ServiceField::Tags)
            .send()
            .await
        {
            Ok(described) => described,
            // No cluster yet: no service either; `ensure` creates both.
            Err(e) if is_code(&e, &["ClusterNotFoundException"]) => return Ok(None),
            Err(e) => return Err(classify(e)),
        };
        let Some(service) = described.services().iter().find(|s| s.status() == Some("ACTIVE")) else {
            return Ok(None);
        };
        Ok(Some(ServiceState {
            name: name.to_owned(),
            status: service.status().unwrap_or("unknown").to_owned(),
            desired: service.desired_count(),
            running: service.running_count(),
            task_definition: service.task_definition().map(str::to_owned),
            tags: service
                .tags()
                .iter()
                .filter_map(|t| Some((t.key()?.to_owned(), t.value().unwrap_or_default().to_owned())))
                .collect(),
        }))
    }

    /// Brings the service to `desired` tasks of the current task definition
    /// (serving `tenant` only, for a silo tenant's), creating it (tagged with
    /// `tags`, and its cluster) if missing. Safe to repeat.
    pub async fn ensure(
        &self,
        name: &str,
        tenant: Option<TenantId>,
        desired: u32,
        tags: &[(&str, &str)],
    ) -> Result<ServiceState, ProviderError> {
        let task_definition = self.task_definition(&family(name, tenant), tenant).await?;
        let desired = i32::try_from(desired).unwrap_or(i32::MAX);
        match self.observe(name).await? {
            None => {
                // Only a new service may need the cluster it runs on.
                self.ensure_cluster().await?;
                let mut create = self
                    .ecs
                    .create_service()
                    .cluster(&self.cluster)
                    .service_name(name)
                    .task_definition(&task_definition)
                    .desired_count(desired)
                    .set_tags(Some(
                        tags.iter().map(|(key, value)| Tag::builder().key(*key).value(*value).build()).collect(),
                    ));
                create = match &self.subnets {
                    Some(network) => create.launch_type(LaunchType::Fargate).network_configuration(
                        NetworkConfiguration::builder()
                            .awsvpc_configuration(
                                AwsVpcConfiguration::builder()
                                    .set_subnets(Some(network.subnets.clone()))
                                    .set_security_groups(Some(network.security_groups.clone()))
                                    .assign_public_ip(AssignPublicIp::Disabled)
                                    .build()
                                    .map_err(|e| ProviderError::Permanent {
                                        reason: "InvalidNetworkConfiguration".into(),
                                        message: e.to_string(),
                                    })?,
                            )
                            .build(),
                    ),
                    None => create.launch_type(LaunchType::Ec2),
                };
                create.send().await.map_err(classify)?;
            }
            Some(state) if state.desired != desired || state.task_definition.as_deref() != Some(&task_definition) => {
                self.ecs
                    .update_service()
                    .cluster(&self.cluster)
                    .service(name)
                    .desired_count(desired)
                    .task_definition(&task_definition)
                    .send()
                    .await
                    .map_err(classify)?;
            }
            Some(_) => {}
        }
        self.observe(name).await?.ok_or_else(|| ProviderError::Transient(format!("service {name} not described yet")))
    }

    /// The names of the cluster's services.
    pub async fn list(&self) -> Result<Vec<String>, ProviderError> {
        let mut names = Vec::new();
        let mut pages = self.ecs.list_services().cluster(&self.cluster).into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = match page {
                Ok(page) => page,
                Err(e) if is_code(&e, &["ClusterNotFoundException"]) => return Ok(names),
                Err(e) => return Err(classify(e)),
            };
            // ECS lists ARNs: `arn:aws:ecs:<region>:<account>:service/<cluster>/<name>`.
            names.extend(page.service_arns().iter().filter_map(|arn| arn.rsplit('/').next().map(str::to_owned)));
        }
        Ok(names)
    }

    /// Scales the service to zero and deletes it, then deregisters the task
    /// definitions of its own family (a silo tenant's). Gone already is done.
    pub async fn delete(&self, name: &str) -> Result<(), ProviderError> {
        if self.observe(name).await?.is_some() {
            let deleted = self.ecs.delete_service().cluster(&self.cluster).service(name).force(true).send().await;
            done_unless_refused(deleted, &["ServiceNotFoundException"])?;
        }
        if name == POOL_SERVICE {
            return Ok(());
        }
        for arn in self.revisions(name).await? {
            let deregistered = self.ecs.deregister_task_definition().task_definition(&arn).send().await;
            done_unless_refused(deregistered, &["ClientException"])?;
        }
        Ok(())
    }

    /// The active revisions of a task definition family.
    pub async fn revisions(&self, family: &str) -> Result<Vec<String>, ProviderError> {
        let mut arns = Vec::new();
        let mut pages = self
            .ecs
            .list_task_definitions()
            .family_prefix(family)
            .status(TaskDefinitionStatus::Active)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            // A prefix also matches longer families; keep this one's (`…/<family>:<revision>`).
            let page = page.map_err(classify)?;
            arns.extend(
                page.task_definition_arns()
                    .iter()
                    .filter(|arn| arn.rsplit_once(':').and_then(|(head, _)| head.rsplit('/').next()) == Some(family))
                    .cloned(),
            );
        }
        Ok(arns)
    }
}

fn container_environment(container: &ContainerDefinition) -> Vec<(String, String)> {
    let mut environment: Vec<(String, String)> = container
        .environment()
        .iter()
        .filter_map(|pair| Some((pair.name()?.to_owned(), pair.value().unwrap_or_default().to_owned())))
        .collect();
    environment.sort();
    environment
}
