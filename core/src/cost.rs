//! The cost model of `policies/costs.toml`: each service's monthly cost at a
//! few fleet sizes, and how it is shared among tenants. Pure: the caller
//! brings the usage, this says what it costs.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::tenant::Isolation;

#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {message}")]
pub struct CostError {
    pub file: String,
    pub key: String,
    pub message: String,
}

/// How a service's monthly total is shared among tenants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Driver {
    Tenants,
    ApiCalls,
    PoolApiCalls,
    SearchQueries,
    AiRequests,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceCost {
    pub monthly: Vec<f64>,
    pub driver: Driver,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiloCost {
    pub database_monthly: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostModel {
    pub currency: String,
    /// Fleet sizes (tenants) the monthly figures are given at, ascending.
    pub scale: Vec<u64>,
    pub services: BTreeMap<String, ServiceCost>,
    pub silo: SiloCost,
    /// Credits per token (or unit) of each AI service.
    #[serde(default)]
    pub credit_rates: BTreeMap<String, f64>,
}

/// One tenant's usage over the period the model prices (30 days).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub api_calls: f64,
    pub search_queries: f64,
    pub ai_requests: f64,
}

/// A tenant as the model prices it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Priced {
    pub isolation: Isolation,
    pub usage: Usage,
}

impl CostModel {
    pub fn parse(file: &str, text: &str) -> Result<Self, CostError> {
        let error = |key: &str, message: String| CostError { file: file.into(), key: key.into(), message };
        let model: CostModel = toml::from_str(text).map_err(|e| error("(file)", e.message().to_owned()))?;
        if model.scale.len() < 2 || !model.scale.windows(2).all(|w| w[0] < w[1]) || model.scale[0] == 0 {
            return Err(error("scale", "needs two or more ascending fleet sizes above 0".into()));
        }
        for (name, service) in &model.services {
            let key = format!("services.{name}.monthly");
            if service.monthly.len() != model.scale.len() {
                return Err(error(&key, format!("needs {} figures, one per scale point", model.scale.len())));
            }
            if service.monthly.iter().any(|m| !m.is_finite() || *m < 0.0) {
                return Err(error(&key, "figures must be finite and 0 or more".into()));
            }
        }
        if let Some((service, _)) = model.credit_rates.iter().find(|(_, r)| !r.is_finite() || **r < 0.0) {
            return Err(error(&format!("credit_rates.{service}"), "must be finite and 0 or more".into()));
        }
        if !model.silo.database_monthly.is_finite() || model.silo.database_monthly < 0.0 {
            return Err(error("silo.database_monthly", "must be finite and 0 or more".into()));
        }
        Ok(model)
    }

    /// The credits an AI call costs: its tokens at its service's rate; `None`
    /// for a service without a rate.
    pub fn credits(&self, service: &str, tokens: u64) -> Option<f64> {
        self.credit_rates.get(service).map(|rate| tokens as f64 * rate)
    }

    /// A service's monthly total for a fleet of `tenants`: linear between the
    /// published points, priced per tenant at the nearest end beyond them.
    pub fn service_total(&self, service: &ServiceCost, tenants: usize) -> f64 {
        let n = tenants as f64;
        let points: Vec<(f64, f64)> =
            self.scale.iter().map(|s| *s as f64).zip(service.monthly.iter().copied()).collect();
        let (first, last) = (points[0], points[points.len() - 1]);
        if n <= first.0 {
            return first.1 * n / first.0;
        }
        if n >= last.0 {
            return last.1 * n / last.0;
        }
        let window = points.windows(2).find(|w| n <= w[1].0).expect("n is within the scale");
        let (a, b) = (window[0], window[1]);
        a.1 + (b.1 - a.1) * (n - a.0) / (b.0 - a.0)
    }

    /// What `tenant` costs per month, by service (and `silo_database`), in
    /// `fleet`.
    pub fn monthly_cost(&self, tenant: &Priced, fleet: &Fleet) -> BTreeMap<String, f64> {
        let mut costs = BTreeMap::new();
        let in_pool = tenant.isolation == Isolation::Pool;
        for (name, service) in &self.services {
            let total = self.service_total(service, fleet.tenants);
            let fraction = match service.driver {
                Driver::Tenants => 1.0 / fleet.tenants.max(1) as f64,
                Driver::ApiCalls => share(tenant.usage.api_calls, fleet.usage.api_calls, fleet.tenants),
                Driver::PoolApiCalls if in_pool => {
                    share(tenant.usage.api_calls, fleet.pool_api_calls, fleet.pool_tenants)
                }
                Driver::PoolApiCalls => 0.0,
                Driver::SearchQueries => share(tenant.usage.search_queries, fleet.usage.search_queries, fleet.tenants),
                Driver::AiRequests => share(tenant.usage.ai_requests, fleet.usage.ai_requests, fleet.tenants),
            };
            costs.insert(name.clone(), total * fraction);
        }
        if tenant.isolation == Isolation::Silo {
            costs.insert("silo_database".into(), self.silo.database_monthly);
        }
        costs
    }
}

/// A member's share of a service: its part of the members' measure, or an
/// equal part when none of them used any.
fn share(measure: f64, members_total: f64, members: usize) -> f64 {
    if members_total > 0.0 { measure / members_total } else { 1.0 / members.max(1) as f64 }
}

/// What sharing costs needs to know of the whole fleet, summed once: pricing
/// each tenant against it is then constant work, not a pass over the fleet.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Fleet {
    pub tenants: usize,
    pub pool_tenants: usize,
    pub usage: Usage,
    pub pool_api_calls: f64,
}

impl Fleet {
    pub fn of<'a>(members: impl IntoIterator<Item = &'a Priced>) -> Self {
        members.into_iter().fold(Fleet::default(), |mut fleet, member| {
            fleet.tenants += 1;
            fleet.usage.api_calls += member.usage.api_calls;
            fleet.usage.search_queries += member.usage.search_queries;
            fleet.usage.ai_requests += member.usage.ai_requests;
            if member.isolation == Isolation::Pool {
                fleet.pool_tenants += 1;
                fleet.pool_api_calls += member.usage.api_calls;
            }
            fleet
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = include_str!("../../policies/costs.toml");

    fn pool(api_calls: f64) -> Priced {
        Priced { isolation: Isolation::Pool, usage: Usage { api_calls, ..Usage::default() } }
    }

    #[test]
    fn the_policy_file_reproduces_the_reference_totals() {
        let model = CostModel::parse("costs.toml", FILE).unwrap();
        for (tenants, expected) in [(100, 600.0), (500, 2050.0), (2000, 7600.0)] {
            let total: f64 = model.services.values().map(|s| model.service_total(s, tenants)).sum();
            assert!((total - expected).abs() < 1e-6, "{tenants}: {total}");
        }
        let between: f64 = model.services.values().map(|s| model.service_total(s, 300)).sum();
        assert!((600.0..2050.0).contains(&between));
    }

    #[test]
    fn shares_follow_usage_and_silos_pay_their_database() {
        let model = CostModel::parse("costs.toml", FILE).unwrap();
        let mut fleet: Vec<Priced> = (0..99).map(|_| pool(100.0)).collect();
        let heavy = pool(100.0 * 99.0);
        fleet.push(heavy);
        let whole = Fleet::of(&fleet);
        let heavy_cost: f64 = model.monthly_cost(&heavy, &whole).values().sum();
        let light_cost: f64 = model.monthly_cost(&fleet[0], &whole).values().sum();
        assert!(heavy_cost > 20.0 * light_cost, "{heavy_cost} vs {light_cost}");
        let all: f64 = fleet.iter().map(|t| model.monthly_cost(t, &whole).values().sum::<f64>()).sum();
        assert!((all - 600.0).abs() < 1e-6, "the shares add up to the fleet's cost: {all}");

        let silo = Priced { isolation: Isolation::Silo, usage: Usage { api_calls: 100.0, ..Usage::default() } };
        fleet[0] = silo;
        let costs = model.monthly_cost(&silo, &Fleet::of(&fleet));
        assert_eq!(costs["silo_database"], 90.0);
        assert_eq!(costs["aurora_serverless"], 0.0, "no share of the pool's database");
    }

    #[test]
    fn mistakes_name_the_key() {
        let broken = FILE.replace("monthly = [150, 500, 2000]", "monthly = [150, 500]");
        let error = CostModel::parse("costs.toml", &broken).unwrap_err();
        assert_eq!(error.key, "services.ecs_fargate.monthly");
        assert!(CostModel::parse("costs.toml", "scale = [1]").is_err());
    }
}
