//! Autoscaling of the data-plane services (reference design §1): each ECS
//! service is a scalable target of Application Auto Scaling with the plan's
//! range of tasks, tracked on average CPU at 70 % and, for a service behind a
//! load balancer (its target group's resource label given), on 1,000 requests
//! per target. ECS then sets the desired count inside the range; the
//! reconciler keeps the range and the policies as the plan says, putting back
//! whatever was changed or removed by hand.

use aws_sdk_applicationautoscaling::types::{
    MetricType, PolicyType, PredefinedMetricSpecification, ScalableDimension, ScalingPolicy, ServiceNamespace,
    TargetTrackingScalingPolicyConfiguration,
};

use super::{classify, done_unless_refused};
use crate::providers::{Autoscaling, ProviderError};

/// The tasks a service may run: the plan's replicas at least, its maximum at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskRange {
    pub min: i32,
    pub max: i32,
}

/// One target-tracking policy the services carry.
struct Tracking {
    name: &'static str,
    metric: MetricType,
    target: f64,
    /// The load balancer's target group (`app/…/targetgroup/…`), for a per-target metric.
    label: Option<String>,
}

impl Tracking {
    fn configuration(&self) -> Result<TargetTrackingScalingPolicyConfiguration, ProviderError> {
        let invalid = |e: aws_sdk_applicationautoscaling::error::BuildError| ProviderError::Permanent {
            reason: "InvalidScalingPolicy".into(),
            message: e.to_string(),
        };
        let metric = PredefinedMetricSpecification::builder()
            .predefined_metric_type(self.metric.clone())
            .set_resource_label(self.label.clone())
            .build()
            .map_err(invalid)?;
        TargetTrackingScalingPolicyConfiguration::builder()
            .target_value(self.target)
            .predefined_metric_specification(metric)
            .build()
            .map_err(invalid)
    }

    /// Whether `policy` tracks what this one tracks.
    fn is(&self, policy: &ScalingPolicy) -> bool {
        let Some(tracking) = policy.target_tracking_scaling_policy_configuration() else { return false };
        let metric = tracking.predefined_metric_specification();
        tracking.target_value() == self.target
            && metric.map(|m| m.predefined_metric_type()) == Some(&self.metric)
            && metric.and_then(|m| m.resource_label()) == self.label.as_deref()
    }
}

/// CPU target of every service, in percent.
const CPU_TARGET: f64 = 70.0;
/// Requests per task a service behind a load balancer is scaled to.
const REQUESTS_TARGET: f64 = 1000.0;

pub struct ServiceScaling {
    client: aws_sdk_applicationautoscaling::Client,
    cluster: String,
}

impl ServiceScaling {
    pub fn new(config: &aws_config::SdkConfig, cluster: &str) -> Self {
        Self { client: aws_sdk_applicationautoscaling::Client::new(config), cluster: cluster.to_owned() }
    }

    fn resource_id(&self, service: &str) -> String {
        format!("service/{}/{service}", self.cluster)
    }

    /// CPU for every service; requests per task too for one behind the load
    /// balancer in the target group `behind` (its resource label).
    fn policies(behind: Option<&str>) -> Vec<Tracking> {
        let cpu = Tracking {
            name: "indigo-cpu",
            metric: MetricType::EcsServiceAverageCpuUtilization,
            target: CPU_TARGET,
            label: None,
        };
        let requests = behind.map(|label| Tracking {
            name: "indigo-requests",
            metric: MetricType::AlbRequestCountPerTarget,
            target: REQUESTS_TARGET,
            label: Some(label.to_owned()),
        });
        std::iter::once(cpu).chain(requests).collect()
    }

    /// The range the service is registered with, if it is.
    async fn observe(&self, service: &str) -> Result<Option<TaskRange>, ProviderError> {
        let described = self
            .client
            .describe_scalable_targets()
            .service_namespace(ServiceNamespace::Ecs)
            .scalable_dimension(ScalableDimension::EcsServiceDesiredCount)
            .resource_ids(self.resource_id(service))
            .send()
            .await
            .map_err(classify)?;
        Ok(described.scalable_targets().first().map(|t| TaskRange { min: t.min_capacity(), max: t.max_capacity() }))
    }

    /// The service's scaling policies as registered.
    async fn registered_policies(&self, service: &str) -> Result<Vec<ScalingPolicy>, ProviderError> {
        let described = self
            .client
            .describe_scaling_policies()
            .service_namespace(ServiceNamespace::Ecs)
            .scalable_dimension(ScalableDimension::EcsServiceDesiredCount)
            .resource_id(self.resource_id(service))
            .send()
            .await
            .map_err(classify)?;
        Ok(described.scaling_policies().to_vec())
    }

    /// The range the service is registered with, if every policy it should
    /// carry (behind the target group `behind`, if any) is there as wanted.
    pub async fn state(&self, service: &str, behind: Option<&str>) -> Result<Autoscaling, ProviderError> {
        let Some(range) = self.observe(service).await? else { return Ok(Autoscaling::Broken) };
        let registered = self.registered_policies(service).await?;
        let intact = Self::policies(behind)
            .iter()
            .all(|wanted| registered.iter().any(|p| p.policy_name() == wanted.name && wanted.is(p)));
        let count = |n: i32| u32::try_from(n).unwrap_or(0);
        Ok(if intact {
            Autoscaling::Range { min: count(range.min), max: count(range.max) }
        } else {
            Autoscaling::Broken
        })
    }

    /// Registers the service with `range` and puts its policies (behind the
    /// target group `behind`, if any), where they are not as wanted already.
    /// Returns what it repaired, for the record.
    pub async fn ensure(
        &self,
        service: &str,
        range: TaskRange,
        behind: Option<&str>,
    ) -> Result<Vec<String>, ProviderError> {
        let resource = self.resource_id(service);
        let mut repaired = Vec::new();
        if self.observe(service).await? != Some(range) {
            self.client
                .register_scalable_target()
                .service_namespace(ServiceNamespace::Ecs)
                .scalable_dimension(ScalableDimension::EcsServiceDesiredCount)
                .resource_id(&resource)
                .min_capacity(range.min)
                .max_capacity(range.max)
                .send()
                .await
                .map_err(classify)?;
            repaired.push(format!("task range {}..={}", range.min, range.max));
        }
        let registered = self.registered_policies(service).await?;
        for wanted in Self::policies(behind) {
            let current = registered.iter().find(|p| p.policy_name() == wanted.name);
            if current.is_some_and(|p| wanted.is(p)) {
                continue;
            }
            self.client
                .put_scaling_policy()
                .policy_name(wanted.name)
                .service_namespace(ServiceNamespace::Ecs)
                .scalable_dimension(ScalableDimension::EcsServiceDesiredCount)
                .resource_id(&resource)
                .policy_type(PolicyType::TargetTrackingScaling)
                .target_tracking_scaling_policy_configuration(wanted.configuration()?)
                .send()
                .await
                .map_err(classify)?;
            repaired.push(format!("policy {}", wanted.name));
        }
        Ok(repaired)
    }

    /// Deletes the service's policies and deregisters it. Gone already is done.
    pub async fn remove(&self, service: &str) -> Result<(), ProviderError> {
        if self.observe(service).await?.is_none() {
            return Ok(());
        }
        let resource = self.resource_id(service);
        // Deregistering deletes the policies on AWS; moto keeps them, so they go first.
        for policy in self.registered_policies(service).await? {
            let deleted = self
                .client
                .delete_scaling_policy()
                .policy_name(policy.policy_name())
                .service_namespace(ServiceNamespace::Ecs)
                .scalable_dimension(ScalableDimension::EcsServiceDesiredCount)
                .resource_id(&resource)
                .send()
                .await;
            done_unless_refused(deleted, &["ObjectNotFoundException"])?;
        }
        let deregistered = self
            .client
            .deregister_scalable_target()
            .service_namespace(ServiceNamespace::Ecs)
            .scalable_dimension(ScalableDimension::EcsServiceDesiredCount)
            .resource_id(&resource)
            .send()
            .await;
        done_unless_refused(deregistered, &["ObjectNotFoundException"])
    }
}
