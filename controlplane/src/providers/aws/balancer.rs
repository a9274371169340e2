//! The storefront's load balancer (reference design §1: an ALB in front of
//! the data plane). With `aws_storefront_listener` set, each silo tenant's
//! data-plane service sits behind that listener in a target group of its own,
//! reached at `<slug>.<aws_storefront_domain>` by a host-header rule, so that
//! its autoscaling tracks requests per target as the pool's does. The pool's
//! target group is the deployment's (`aws_pool_target_group`); these are the
//! control plane's, created with the service and deleted after it.

use aws_sdk_elasticloadbalancingv2::types::{
    Action, ActionTypeEnum, ProtocolEnum, RuleCondition, Tag, TargetGroup, TargetTypeEnum,
};
use sha2::{Digest, Sha256};

use super::{classify, done_unless_refused, is_code};
use crate::providers::ProviderError;

/// Where the tasks listen (the container's port).
const PORT: i32 = 8081;

/// A silo service's place on the load balancer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    pub target_group_arn: String,
    /// `app/<lb>/<id>/targetgroup/<tg>/<id>`: what a requests-per-target
    /// scaling policy names.
    pub resource_label: String,
}

pub struct StorefrontBalancer {
    elb: aws_sdk_elasticloadbalancingv2::Client,
    listener_arn: String,
    domain: String,
}

impl StorefrontBalancer {
    pub fn new(config: &aws_config::SdkConfig, listener_arn: &str, domain: &str) -> Self {
        Self {
            elb: aws_sdk_elasticloadbalancingv2::Client::new(config),
            listener_arn: listener_arn.to_owned(),
            domain: domain.trim_matches('.').to_owned(),
        }
    }

    /// The host name a silo tenant's storefront answers at.
    pub fn host(&self, slug: &str) -> String {
        format!("{slug}.{}", self.domain)
    }

    /// The target group of `service` and the rule sending `slug`'s host to it,
    /// each made if missing and put back as wanted if changed. Safe to repeat.
    pub async fn ensure(&self, service: &str, slug: &str, targets: TargetTypeEnum) -> Result<Routed, ProviderError> {
        let balancer_arn = self.balancer_arn().await?;
        let group = match self.target_group(service).await? {
            Some(group) => group,
            None => self.create_target_group(service, &balancer_arn, targets).await?,
        };
        let group_arn = group.target_group_arn().unwrap_or_default().to_owned();
        self.ensure_rule(&group_arn, &self.host(slug)).await?;
        Ok(Routed { resource_label: resource_label(&balancer_arn, &group_arn)?, target_group_arn: group_arn })
    }

    /// Where `service` is on the load balancer, if it has a target group.
    pub async fn routed(&self, service: &str) -> Result<Option<Routed>, ProviderError> {
        let Some(group) = self.target_group(service).await? else { return Ok(None) };
        let group_arn = group.target_group_arn().unwrap_or_default().to_owned();
        let balancer_arn = self.balancer_arn().await?;
        Ok(Some(Routed { resource_label: resource_label(&balancer_arn, &group_arn)?, target_group_arn: group_arn }))
    }

    /// The rules to `service`'s target group, then the group. Gone already is done.
    pub async fn remove(&self, service: &str) -> Result<(), ProviderError> {
        let Some(group) = self.target_group(service).await? else { return Ok(()) };
        let group_arn = group.target_group_arn().unwrap_or_default();
        for rule in self.rules_to(group_arn).await? {
            done_unless_refused(self.elb.delete_rule().rule_arn(rule).send().await, &["RuleNotFound"])?;
        }
        let deleted = self.elb.delete_target_group().target_group_arn(group_arn).send().await;
        done_unless_refused(deleted, &["TargetGroupNotFound"])
    }

    async fn balancer_arn(&self) -> Result<String, ProviderError> {
        let described =
            self.elb.describe_listeners().listener_arns(&self.listener_arn).send().await.map_err(classify)?;
        described.listeners().first().and_then(|l| l.load_balancer_arn()).map(str::to_owned).ok_or_else(|| {
            ProviderError::Permanent {
                reason: "ListenerNotFound".into(),
                message: format!("aws_storefront_listener {} is not a listener of a load balancer", self.listener_arn),
            }
        })
    }

    async fn target_group(&self, service: &str) -> Result<Option<TargetGroup>, ProviderError> {
        match self.elb.describe_target_groups().names(target_group_name(service)).send().await {
            Ok(found) => Ok(found.target_groups().first().cloned()),
            Err(e) if is_code(&e, &["TargetGroupNotFound"]) => Ok(None),
            Err(e) => Err(classify(e)),
        }
    }

    async fn create_target_group(
        &self,
        service: &str,
        balancer_arn: &str,
        targets: TargetTypeEnum,
    ) -> Result<TargetGroup, ProviderError> {
        let balancers =
            self.elb.describe_load_balancers().load_balancer_arns(balancer_arn).send().await.map_err(classify)?;
        let vpc = balancers.load_balancers().first().and_then(|b| b.vpc_id()).map(str::to_owned);
        let tag = Tag::builder().key("service").value(service).build();
        let created = self
            .elb
            .create_target_group()
            .name(target_group_name(service))
            .protocol(ProtocolEnum::Http)
            .port(PORT)
            .set_vpc_id(vpc)
            .target_type(targets)
            .health_check_path("/readyz")
            .tags(tag)
            .send()
            .await
            .map_err(classify)?;
        created
            .target_groups()
            .first()
            .cloned()
            .ok_or_else(|| ProviderError::Transient("the load balancer made a target group it does not report".into()))
    }

    /// The rules of the listener that forward to `group_arn`.
    async fn rules_to(&self, group_arn: &str) -> Result<Vec<String>, ProviderError> {
        let described = self.elb.describe_rules().listener_arn(&self.listener_arn).send().await.map_err(classify)?;
        Ok(described
            .rules()
            .iter()
            .filter(|rule| rule.actions().iter().any(|a| a.target_group_arn() == Some(group_arn)))
            .filter_map(|rule| rule.rule_arn().map(str::to_owned))
            .collect())
    }

    /// One rule sends `host` to `group_arn`: made at the lowest free priority,
    /// or its condition put back if it was changed.
    async fn ensure_rule(&self, group_arn: &str, host: &str) -> Result<(), ProviderError> {
        let described = self.elb.describe_rules().listener_arn(&self.listener_arn).send().await.map_err(classify)?;
        let condition = RuleCondition::builder().field("host-header").values(host).build();
        let forward = Action::builder().r#type(ActionTypeEnum::Forward).target_group_arn(group_arn).build();
        let ours =
            described.rules().iter().find(|r| r.actions().iter().any(|a| a.target_group_arn() == Some(group_arn)));
        match ours {
            Some(rule) if rule.conditions().iter().any(|c| c.values() == [host]) => Ok(()),
            Some(rule) => {
                let modified = self
                    .elb
                    .modify_rule()
                    .rule_arn(rule.rule_arn().unwrap_or_default())
                    .conditions(condition)
                    .actions(forward)
                    .send()
                    .await;
                modified.map(|_| ()).map_err(classify)
            }
            None => {
                let taken: Vec<i32> =
                    described.rules().iter().filter_map(|r| r.priority()?.parse::<i32>().ok()).collect();
                let priority = (1..=50_000).find(|p| !taken.contains(p)).ok_or_else(|| ProviderError::Permanent {
                    reason: "TooManyRules".into(),
                    message: "the storefront listener has no free rule priority".into(),
                })?;
                let created = self
                    .elb
                    .create_rule()
                    .listener_arn(&self.listener_arn)
                    .priority(priority)
                    .conditions(condition)
                    .actions(forward)
                    .send()
                    .await;
                created.map(|_| ()).map_err(classify)
            }
        }
    }
}

/// A target group's name: at most 32 characters of letters, digits and
/// hyphens, so a digest of the service's name rather than the name.
fn target_group_name(service: &str) -> String {
    let digest = Sha256::digest(service.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("indigo-{}", &hex[..25])
}

/// `app/<lb>/<id>/targetgroup/<tg>/<id>` from the two ARNs
/// (`…:loadbalancer/app/<lb>/<id>` and `…:targetgroup/<tg>/<id>`).
fn resource_label(balancer_arn: &str, group_arn: &str) -> Result<String, ProviderError> {
    let balancer = balancer_arn.split_once(":loadbalancer/").map(|(_, rest)| rest);
    let group = group_arn.split_once(":targetgroup/").map(|(_, rest)| rest);
    match (balancer, group) {
        (Some(balancer), Some(group)) => Ok(format!("{balancer}/targetgroup/{group}")),
        _ => Err(ProviderError::Permanent {
            reason: "UnexpectedArn".into(),
            message: format!("cannot name the target group {group_arn} of {balancer_arn} for autoscaling"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels_are_what_aws_accepts() {
        let name = target_group_name("indigo-dp-a-very-long-tenant-slug-of-a-shop-0190f1c2");
        assert_eq!(name.len(), 32);
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        let label = resource_label(
            "arn:aws:elasticloadbalancing:us-east-1:123456789012:loadbalancer/app/storefront/50dc6c495c0c9188",
            "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/indigo-0a1b/73e2d6bc24d8a067",
        )
        .unwrap();
        assert_eq!(label, "app/storefront/50dc6c495c0c9188/targetgroup/indigo-0a1b/73e2d6bc24d8a067");
    }
}
