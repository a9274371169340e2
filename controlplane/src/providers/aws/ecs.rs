//! The AWS provider's compute: the data plane as ECS services on one cluster,
//! one service for the pool and one per silo tenant, each from a task
//! definition of the data-plane image; desired counts come from the plans
//! (`silo.dataplane_replicas`) and the configuration (the pool's replicas).
//! A silo tenant's service has a task definition family of its own whose
//! container is told to serve that tenant only (`INDIGO_DATAPLANE_TENANT`, as
//! `--tenant` does locally): another tenant's token is refused there.
//!
//! A task definition carries everything a task needs to serve: plain settings
//! as environment (the admin API's URL, the listen address, the spool, the log
//! level), secrets by ARN from Secrets Manager (the JWT secret, the service's
//! own admin-API token, the Redis URL), `awslogs` output, a health check on
//! `/readyz`, the port, and CPU and memory from the plan. Any difference from
//! the latest revision registers a new one, rolled out to the service; a
//! secret whose value changed replaces the running tasks.
//!
//! With subnets configured the services run on Fargate in those subnets;
//! without, on EC2 capacity with bridge networking.

use std::collections::BTreeMap;

use aws_sdk_ecs::types::{
    AssignPublicIp, AwsVpcConfiguration, Compatibility, ContainerDefinition, HealthCheck, KeyValuePair, LaunchType,
    LoadBalancer, LogConfiguration, LogDriver, NetworkConfiguration, NetworkMode, PortMapping, Secret as TaskSecret,
    Tag, TaskDefinition, TaskDefinitionStatus,
};
use aws_sdk_elasticloadbalancingv2::types::TargetTypeEnum;
use indigo_core::tenant::TenantId;

use super::balancer::StorefrontBalancer;
use super::scaling::{ServiceScaling, TaskRange};
use super::secrets::TaskSecrets;
use super::{classify, done_unless_refused, is_code};
pub use crate::providers::POOL_SERVICE;
use crate::providers::{Autoscaling, ProviderError, ServiceSpec};

/// The task definition family of the pool's data plane; a silo tenant's is
/// named after its service.
pub const FAMILY: &str = "indigo-dataplane";
const CONTAINER: &str = "dataplane";
const PORT: i32 = 8081;
/// Where a task keeps the usage it has not delivered yet.
const SPOOL_DIR: &str = "/var/lib/indigo/usage-spool";
/// The container's health check: ready means routed and serving. The image
/// has no shell or curl; the data plane asks its own `/readyz`.
const HEALTH_CHECK: [&str; 3] = ["CMD", "/usr/local/bin/indigo-dataplane", "--check-ready"];
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

/// Services ECS describes per request, at most.
const DESCRIBE_BATCH: usize = 10;

/// What ECS reports of a service.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceState {
    pub name: String,
    pub status: String,
    pub desired: i32,
    pub running: i32,
    pub task_definition: Option<String>,
    pub tags: BTreeMap<String, String>,
    /// The load balancer target groups its tasks are registered in.
    pub target_groups: Vec<String>,
}

/// The IAM roles of a data-plane task (ARNs): `execution`, ECS's, reads the
/// task's `secrets` and writes its logs; `task`, the task's own, reads its
/// tenants' cluster-login secrets and calls Bedrock and Personalize.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskRoles {
    pub execution: Option<String>,
    pub task: Option<String>,
}

/// What every data-plane task is given besides its service's own settings.
#[derive(Debug, Clone)]
pub struct TaskSettings {
    pub image: String,
    /// Where the tasks reach the admin API, from inside the VPC.
    pub control_plane_url: String,
    /// Where the tasks share plan rates; `None`: each task limits alone.
    pub redis_url: Option<String>,
    /// The storefront's signing secret, when given; else made once.
    pub jwt_secret: Option<crate::config::Secret>,
    /// The app role's database password, when it has one.
    pub database_password: Option<crate::config::Secret>,
    /// The Bedrock model the tasks write product descriptions with; `None`:
    /// their built-in writer.
    pub bedrock_model_id: Option<String>,
    /// The tasks' `RUST_LOG`.
    pub log_level: String,
    /// Where the tasks export their traces (an ADOT collector, say).
    pub traces: indigo_core::traces::TraceExport,
    /// The CloudWatch Logs group of the tasks' output.
    pub log_group: String,
    pub region: String,
    pub roles: TaskRoles,
}

pub struct EcsServices {
    ecs: aws_sdk_ecs::Client,
    cluster: String,
    tasks: TaskSettings,
    subnets: Option<Subnets>,
    secrets: TaskSecrets,
    scaling: ServiceScaling,
    /// The pool service's target group on the load balancer (its resource label), if it has one.
    pool_target_group: Option<String>,
    /// Where silo services are put behind the storefront's load balancer, if anywhere.
    balancer: Option<StorefrontBalancer>,
}

/// A task definition as a service wants it.
#[derive(Debug, PartialEq)]
struct WantedTask {
    family: String,
    cpu: String,
    memory: String,
    image: String,
    environment: Vec<(String, String)>,
    /// Variable names and the ARNs of the secrets they are read from.
    secrets: Vec<(String, String)>,
    log_options: Vec<(String, String)>,
    roles: TaskRoles,
}

impl WantedTask {
    /// Whether `definition` is this (the latest revision, still active).
    fn is(&self, definition: &TaskDefinition) -> bool {
        let Some(container) = definition.container_definitions().iter().find(|c| c.name() == Some(CONTAINER)) else {
            return false;
        };
        let mut secrets: Vec<(String, String)> =
            container.secrets().iter().map(|s| (s.name().to_owned(), s.value_from().to_owned())).collect();
        secrets.sort();
        let mut log_options: Vec<(String, String)> = container
            .log_configuration()
            .and_then(|l| l.options())
            .map(|o| o.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        log_options.sort();
        definition.status() == Some(&TaskDefinitionStatus::Active)
            && definition.cpu() == Some(self.cpu.as_str())
            && definition.memory() == Some(self.memory.as_str())
            && container.image() == Some(self.image.as_str())
            && container_environment(container) == self.environment
            && secrets == self.secrets
            && log_options == self.log_options
            && definition.execution_role_arn() == self.roles.execution.as_deref()
            && definition.task_role_arn() == self.roles.task.as_deref()
            && container.health_check().is_some_and(|check| check.command() == HEALTH_CHECK)
    }

    fn container(&self) -> Result<ContainerDefinition, ProviderError> {
        let invalid = |e: aws_sdk_ecs::error::BuildError| ProviderError::Permanent {
            reason: "InvalidTaskDefinition".into(),
            message: e.to_string(),
        };
        let mut logs = LogConfiguration::builder().log_driver(LogDriver::Awslogs);
        for (key, value) in &self.log_options {
            logs = logs.options(key, value);
        }
        let health = HealthCheck::builder()
            .set_command(Some(HEALTH_CHECK.map(str::to_owned).to_vec()))
            .interval(10)
            .timeout(5)
            .retries(3)
            .start_period(15)
            .build()
            .map_err(invalid)?;
        let secrets = self
            .secrets
            .iter()
            .map(|(name, arn)| TaskSecret::builder().name(name).value_from(arn).build().map_err(invalid))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ContainerDefinition::builder()
            .name(CONTAINER)
            .image(&self.image)
            .essential(true)
            .port_mappings(PortMapping::builder().container_port(PORT).build())
            .set_environment(Some(
                self.environment
                    .iter()
                    .map(|(name, value)| KeyValuePair::builder().name(name).value(value).build())
                    .collect(),
            ))
            .set_secrets(Some(secrets))
            .log_configuration(logs.build().map_err(invalid)?)
            .health_check(health)
            .build())
    }
}

impl EcsServices {
    /// Services on `cluster` from `tasks`; their secrets live under the
    /// cluster's name in Secrets Manager, their identities in `identities`
    /// (the control database).
    pub fn new(
        config: &aws_config::SdkConfig,
        cluster: &str,
        tasks: TaskSettings,
        subnets: Option<Subnets>,
        identities: sqlx::PgPool,
    ) -> Self {
        Self {
            ecs: aws_sdk_ecs::Client::new(config),
            cluster: cluster.to_owned(),
            tasks,
            subnets,
            secrets: TaskSecrets::new(config, cluster, identities),
            scaling: ServiceScaling::new(config, cluster),
            pool_target_group: None,
            balancer: None,
        }
    }

    /// Scales the pool's service on requests per task too, behind the load
    /// balancer's target group `label` (`app/<lb>/<id>/targetgroup/<tg>/<id>`).
    pub fn with_pool_target_group(self, label: Option<String>) -> Self {
        Self { pool_target_group: label, ..self }
    }

    /// Puts each silo service behind the storefront's load balancer (a target
    /// group of its own, scaled on requests per task too).
    pub fn with_storefront_balancer(self, balancer: Option<StorefrontBalancer>) -> Self {
        Self { balancer, ..self }
    }

    /// How the service is set up to scale.
    pub async fn autoscaling(&self, name: &str) -> Result<Autoscaling, ProviderError> {
        let behind = self.behind(name).await?;
        self.scaling.state(name, behind.as_deref()).await
    }

    /// The resource label of the target group `name`'s tasks are behind, if any.
    async fn behind(&self, name: &str) -> Result<Option<String>, ProviderError> {
        match &self.balancer {
            _ if name == POOL_SERVICE => Ok(self.pool_target_group.clone()),
            Some(balancer) => Ok(balancer.routed(name).await?.map(|routed| routed.resource_label)),
            None => Ok(None),
        }
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

    /// The task definition `spec`'s service runs, with its secrets in place;
    /// whether a secret's value changed since its tasks started.
    async fn wanted_task(&self, spec: &ServiceSpec) -> Result<(WantedTask, bool), ProviderError> {
        let settings = &self.tasks;
        let mut environment = vec![
            ("INDIGO_CONTROL_PLANE_URL".to_owned(), settings.control_plane_url.clone()),
            ("INDIGO_DATAPLANE_LISTEN".to_owned(), format!("0.0.0.0:{PORT}")),
            ("INDIGO_SPOOL_DIR".to_owned(), SPOOL_DIR.to_owned()),
            ("RUST_LOG".to_owned(), settings.log_level.clone()),
        ];
        if let Some(tenant) = spec.tenant {
            environment.push((TENANT_ENV.to_owned(), tenant.to_string()));
        }
        // Tenants whose settings name a Personalize campaign get its recommendations.
        environment.push(("INDIGO_RECOMMENDATIONS".to_owned(), "personalize".to_owned()));
        if let Some(model) = &settings.bedrock_model_id {
            environment.push(("INDIGO_DESCRIPTIONS".to_owned(), "bedrock".to_owned()));
            environment.push(("INDIGO_BEDROCK_MODEL_ID".to_owned(), model.clone()));
        }
        environment.extend(settings.traces.environment());
        environment.sort();
        let jwt = self.secrets.jwt_secret(settings.jwt_secret.as_ref()).await?;
        let token = self.secrets.control_plane_token(&spec.name, spec.tenant).await?;
        let mut changed = jwt.changed || token.changed;
        let mut secrets =
            vec![("INDIGO_JWT_SECRET".to_owned(), jwt.arn), ("INDIGO_CONTROL_PLANE_TOKEN".to_owned(), token.arn)];
        if let Some(url) = &settings.redis_url {
            let redis = self.secrets.redis_url(url).await?;
            changed |= redis.changed;
            secrets.push(("INDIGO_REDIS_URL".to_owned(), redis.arn));
        }
        if let Some(password) = &settings.database_password {
            let stored = self.secrets.database_password(password).await?;
            changed |= stored.changed;
            secrets.push(("INDIGO_DATABASE_PASSWORD".to_owned(), stored.arn));
        }
        secrets.sort();
        let family = family(&spec.name, spec.tenant);
        let mut log_options = vec![
            ("awslogs-create-group".to_owned(), "true".to_owned()),
            ("awslogs-group".to_owned(), settings.log_group.clone()),
            ("awslogs-region".to_owned(), settings.region.clone()),
            ("awslogs-stream-prefix".to_owned(), family.clone()),
        ];
        log_options.sort();
        let wanted = WantedTask {
            family,
            cpu: spec.cpu.to_string(),
            memory: spec.memory.to_string(),
            image: settings.image.clone(),
            environment,
            secrets,
            log_options,
            roles: settings.roles.clone(),
        };
        Ok((wanted, changed))
    }

    /// The ARN of `wanted`: the family's latest revision when it is that, a
    /// new revision otherwise.
    async fn task_definition(&self, wanted: &WantedTask) -> Result<String, ProviderError> {
        match self.ecs.describe_task_definition().task_definition(&wanted.family).send().await {
            Ok(found) => {
                if let Some(definition) = found.task_definition()
                    && wanted.is(definition)
                    && let Some(arn) = definition.task_definition_arn()
                {
                    return Ok(arn.to_owned());
                }
            }
            Err(e) if is_code(&e, &["ClientException"]) => {} // no revision yet
            Err(e) => return Err(classify(e)),
        }
        let (mode, compatibility) = match self.subnets {
            Some(_) => (NetworkMode::Awsvpc, Compatibility::Fargate),
            None => (NetworkMode::Bridge, Compatibility::Ec2),
        };
        let registered = self
            .ecs
            .register_task_definition()
            .family(&wanted.family)
            .network_mode(mode)
            .requires_compatibilities(compatibility)
            .cpu(&wanted.cpu)
            .memory(&wanted.memory)
            .set_execution_role_arn(wanted.roles.execution.clone())
            .set_task_role_arn(wanted.roles.task.clone())
            .container_definitions(wanted.container()?)
            .send()
            .await
            .map_err(classify)?;
        registered
            .task_definition()
            .and_then(|d| d.task_definition_arn())
            .map(str::to_owned)
            .ok_or_else(|| ProviderError::Transient("ECS registered a task definition without an ARN".into()))
    }

    /// What a task of `task_definition` starts with, as ECS would start it:
    /// the container's environment, and its secrets read from Secrets Manager.
    pub async fn container_environment(&self, task_definition: &str) -> Result<Vec<(String, String)>, ProviderError> {
        let described =
            self.ecs.describe_task_definition().task_definition(task_definition).send().await.map_err(classify)?;
        let container = described
            .task_definition()
            .and_then(|d| d.container_definitions().iter().find(|c| c.name() == Some(CONTAINER)))
            .ok_or_else(|| ProviderError::Permanent {
                reason: "InvalidTaskDefinition".into(),
                message: format!("{task_definition} has no container `{CONTAINER}`"),
            })?;
        let mut environment = container_environment(container);
        for secret in container.secrets() {
            environment.push((secret.name().to_owned(), self.secrets.value(secret.value_from()).await?));
        }
        Ok(environment)
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
            target_groups: service
                .load_balancers()
                .iter()
                .filter_map(|b| b.target_group_arn().map(str::to_owned))
                .collect(),
        }))
    }

    /// Brings the service to the spec's replicas of its current task
    /// definition (serving its tenant only, for a silo tenant's), creating it
    /// (tagged, and its cluster) if missing. Safe to repeat.
    pub async fn ensure(&self, spec: &ServiceSpec) -> Result<ServiceState, ProviderError> {
        let name = spec.name.as_str();
        let (wanted, secrets_changed) = self.wanted_task(spec).await?;
        let task_definition = self.task_definition(&wanted).await?;
        let count = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
        // Autoscaling moves the desired count inside the plan's range; outside it is drift.
        let range = TaskRange { min: count(spec.replicas), max: count(spec.max_replicas.max(spec.replicas)) };
        let tags = &spec.tags;
        // A silo service behind the load balancer: its target group and host rule first.
        let routed = match (&self.balancer, &spec.slug) {
            (Some(balancer), Some(slug)) if range.max > 0 => {
                let targets = if self.subnets.is_some() { TargetTypeEnum::Ip } else { TargetTypeEnum::Instance };
                Some(balancer.ensure(name, slug, targets).await?)
            }
            _ => None,
        };
        let registration = routed.as_ref().map(|routed| {
            vec![
                LoadBalancer::builder()
                    .target_group_arn(&routed.target_group_arn)
                    .container_name(CONTAINER)
                    .container_port(PORT)
                    .build(),
            ]
        });
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
                    .set_load_balancers(registration)
                    .desired_count(range.min)
                    .set_tags(Some(
                        tags.iter().map(|(key, value)| Tag::builder().key(key).value(value).build()).collect(),
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
            Some(state)
                if secrets_changed
                    || !(range.min..=range.max).contains(&state.desired)
                    || state.task_definition.as_deref() != Some(&task_definition)
                    || routed.as_ref().is_some_and(|r| !state.target_groups.contains(&r.target_group_arn)) =>
            {
                self.ecs
                    .update_service()
                    .cluster(&self.cluster)
                    .service(name)
                    .set_load_balancers(registration)
                    .desired_count(state.desired.clamp(range.min, range.max))
                    .task_definition(&task_definition)
                    // Tasks read their secrets at start: a new value needs new tasks.
                    .force_new_deployment(secrets_changed)
                    .send()
                    .await
                    .map_err(classify)?;
            }
            Some(_) => {}
        }
        if range.max == 0 {
            self.scaling.remove(name).await?;
        } else {
            let behind = match routed {
                Some(routed) => Some(routed.resource_label),
                None if name == POOL_SERVICE => self.pool_target_group.clone(),
                None => None,
            };
            let repaired = self.scaling.ensure(name, range, behind.as_deref()).await?;
            if !repaired.is_empty() {
                tracing::info!(service = name, ?repaired, "autoscaling set as the plan says");
            }
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
        // A deleted service may still be listed for a while (INACTIVE; moto keeps
        // listing it): only the active ones count.
        let mut active = Vec::with_capacity(names.len());
        for batch in names.chunks(DESCRIBE_BATCH) {
            let described = self
                .ecs
                .describe_services()
                .cluster(&self.cluster)
                .set_services(Some(batch.to_vec()))
                .send()
                .await
                .map_err(classify)?;
            active.extend(
                described
                    .services()
                    .iter()
                    .filter(|s| s.status() == Some("ACTIVE"))
                    .filter_map(|s| s.service_name().map(str::to_owned)),
            );
        }
        Ok(active)
    }

    /// Scales the service to zero and deletes it, then deregisters the task
    /// definitions of its own family (a silo tenant's). Gone already is done.
    pub async fn delete(&self, name: &str) -> Result<(), ProviderError> {
        self.scaling.remove(name).await?;
        if self.observe(name).await?.is_some() {
            let deleted = self.ecs.delete_service().cluster(&self.cluster).service(name).force(true).send().await;
            done_unless_refused(deleted, &["ServiceNotFoundException"])?;
        }
        // Its identity and token go with it.
        self.secrets.forget_service(name).await?;
        if name == POOL_SERVICE {
            return Ok(());
        }
        // Its place on the load balancer, once no task is registered there.
        if let Some(balancer) = &self.balancer {
            balancer.remove(name).await?;
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
