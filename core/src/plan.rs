//! The plan catalogue: what each plan entitles a tenant to. The data lives in
//! `policies/plans.toml`; this module parses and validates it, naming the file,
//! the plan and the key in every error so that an edit gone wrong is found at once.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use toml::{Table, Value};
use utoipa::ToSchema;

use crate::tenant::Isolation;

/// A plan's name as the catalogue spells it (`starter`, `enterprise`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, ToSchema)]
#[serde(transparent)]
#[schema(value_type = String, example = "growth")]
pub struct PlanName(String);

impl PlanName {
    /// Checks the spelling only; whether the plan exists is the catalogue's call.
    fn parse(raw: &str) -> Option<Self> {
        let ok = !raw.is_empty()
            && raw.len() <= 40
            && raw.starts_with(|c: char| c.is_ascii_lowercase())
            && raw.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        ok.then(|| Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for PlanName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        PlanName::parse(&raw).ok_or_else(|| serde::de::Error::custom(format!("`{raw}` is not a plan name")))
    }
}

impl fmt::Display for PlanName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A quota: a maximum, or unlimited (written `-1` in the policy file and in JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Unlimited,
    AtMost(u64),
}

impl Limit {
    /// Whether `used + 1` more would still be within the quota.
    pub fn allows_one_more(self, used: u64) -> bool {
        match self {
            Limit::Unlimited => true,
            Limit::AtMost(max) => used < max,
        }
    }

    pub fn as_i64(self) -> i64 {
        match self {
            Limit::Unlimited => -1,
            Limit::AtMost(max) => i64::try_from(max).unwrap_or(i64::MAX),
        }
    }
}

impl Serialize for Limit {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(self.as_i64())
    }
}

impl<'de> Deserialize<'de> for Limit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match i64::deserialize(d)? {
            -1 => Ok(Limit::Unlimited),
            n => u64::try_from(n)
                .map(Limit::AtMost)
                .map_err(|_| serde::de::Error::custom(format!("limit must be -1 or 0 or more, got {n}"))),
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limit::Unlimited => f.write_str("unlimited"),
            Limit::AtMost(max) => write!(f, "{max}"),
        }
    }
}

/// The quotas of one plan, as in the reference design's plan limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Limits {
    #[schema(value_type = i64)]
    pub products: Limit,
    #[schema(value_type = i64)]
    pub ai_credits: Limit,
    #[schema(value_type = i64)]
    pub storage_gb: Limit,
    #[schema(value_type = i64)]
    pub team_members: Limit,
    #[schema(value_type = i64)]
    pub api_calls_per_day: Limit,
}

/// The storefront request rate a tenant on this plan may sustain (token bucket).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RateLimit {
    pub requests_per_second: u32,
    pub burst: u32,
}

/// Aurora Serverless v2 capacity units, in steps of 0.5.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize, Deserialize, ToSchema)]
#[serde(transparent)]
pub struct Acu(f64);

// Only finite values are ever built (the policy parser checks), so equality is total.
impl Eq for Acu {}

impl Acu {
    pub fn get(self) -> f64 {
        self.0
    }
}

impl fmt::Display for Acu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What a silo tenant on this plan gets for itself: the provider sizes its
/// database cluster and its data-plane service from this.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SiloSize {
    /// Capacity range of its Aurora Serverless v2 cluster.
    #[schema(value_type = f64)]
    pub acu_min: Acu,
    #[schema(value_type = f64)]
    pub acu_max: Acu,
    /// Days of automated backups kept, 1 to 35.
    pub backup_retention_days: u32,
    /// Replicas of its dedicated data-plane service, and the most that
    /// autoscaling may run (where the provider scales: ECS).
    pub dataplane_replicas: u32,
    pub dataplane_max_replicas: u32,
    /// Whether deleting its cluster keeps a final snapshot.
    pub final_snapshot: bool,
    /// CPU units (1024 = one vCPU) and memory (MiB) of each of its data-plane
    /// tasks on ECS; 512 and 1024 unless the plan says.
    pub dataplane_cpu: u32,
    pub dataplane_memory: u32,
}

/// Fargate's task CPU sizes.
const TASK_CPU: [u32; 7] = [256, 512, 1024, 2048, 4096, 8192, 16384];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Plan {
    pub name: PlanName,
    pub display_name: String,
    /// Position in the upgrade path: a higher tier is an upgrade.
    pub tier: u32,
    pub isolation: Isolation,
    /// List price in the currency's minor units (cents).
    pub price_per_month: u64,
    pub currency: String,
    pub features: Vec<String>,
    pub limits: Limits,
    pub rate_limit: RateLimit,
    /// The dedicated resources, for a silo plan (`None` for a pool plan).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub silo: Option<SiloSize>,
    pub recovery: Recovery,
}

/// What a tenant on this plan may lose and wait for when its data is
/// restored (reference design §11): the control plane backs each tenant up
/// on its own at least every `rpo_minutes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Recovery {
    /// Recovery point objective: the oldest a tenant's newest backup may be.
    pub rpo_minutes: u32,
    /// Recovery time objective: the longest a restore may take.
    pub rto_minutes: u32,
    /// The tenant's backups kept; older ones are removed.
    pub backups_kept: u32,
}

impl Plan {
    pub fn has_feature(&self, feature: &str) -> bool {
        self.features.iter().any(|f| f == feature)
    }
}

/// Every plan the product sells, by name, the shared pool's own size, and
/// what each meter's usage costs on an invoice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanCatalog {
    plans: BTreeMap<PlanName, Plan>,
    pool: PoolSize,
    /// `[usage_prices]`: per meter (its event name), the price of one unit in
    /// the currency's minor units, as a decimal (Stripe's `unit_amount_decimal`).
    usage_prices: BTreeMap<String, String>,
}

/// The resources every pool tenant shares (`[pool]` in the plans file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSize {
    /// Replicas of the pool's data-plane service, and the most that
    /// autoscaling may run (where the provider scales: ECS).
    pub dataplane_replicas: u32,
    pub dataplane_max_replicas: u32,
}

impl Default for PoolSize {
    /// A file without `[pool]` runs one replica.
    fn default() -> Self {
        Self { dataplane_replicas: 1, dataplane_max_replicas: 1 }
    }
}

/// A policy file that cannot be used, with where the problem is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PlanError {
    pub file: String,
    pub plan: Option<String>,
    pub key: Option<String>,
    pub problem: String,
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(plan) = &self.plan {
            write!(f, ": plan `{plan}`")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": key `{key}`")?;
        }
        write!(f, ": {}", self.problem)
    }
}

/// Why a plan name was refused by the catalogue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown plan `{requested}`; plans are: {}", known.join(", "))]
pub struct UnknownPlan {
    pub requested: String,
    pub known: Vec<String>,
}

impl PlanCatalog {
    /// Parses the text of a plans file; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Self, PlanError> {
        let root: Table = text.parse().map_err(|e: toml::de::Error| PlanError {
            file: file.to_owned(),
            plan: None,
            key: None,
            problem: format!("not valid TOML: {}", e.to_string().trim()),
        })?;
        let top = Section { file, plan: None, prefix: String::new(), table: &root };
        top.only_keys(&["plans", "pool", "usage_prices"])?;
        let pool = match root.get("pool") {
            Some(_) => {
                let section = top.table("pool")?;
                section.only_keys(&["dataplane_replicas", "dataplane_max_replicas"])?;
                let dataplane_replicas = section.positive("dataplane_replicas")?;
                PoolSize { dataplane_replicas, dataplane_max_replicas: section.max_replicas(dataplane_replicas)? }
            }
            None => PoolSize::default(),
        };
        let plans_table = top.table("plans")?;
        let mut plans = BTreeMap::new();
        for (raw_name, value) in plans_table.table {
            let section = plans_table.nested(raw_name, value, Some(raw_name))?;
            let name = PlanName::parse(raw_name).ok_or_else(|| {
                section.error(None, "plan names use lowercase letters, digits, `_` and `-`, starting with a letter")
            })?;
            let plan = parse_plan(name.clone(), &section)?;
            plans.insert(name, plan);
        }
        if plans.is_empty() {
            return Err(top.error(Some("plans"), "defines no plan; at least one is needed"));
        }
        let usage_prices = match root.get("usage_prices") {
            Some(_) => parse_usage_prices(&top.table("usage_prices")?)?,
            None => BTreeMap::new(),
        };
        let catalog = Self { plans, pool, usage_prices };
        catalog.check_tiers_unique(file)?;
        Ok(catalog)
    }

    fn check_tiers_unique(&self, file: &str) -> Result<(), PlanError> {
        let mut seen: BTreeMap<u32, &PlanName> = BTreeMap::new();
        for plan in self.plans.values() {
            if let Some(other) = seen.insert(plan.tier, &plan.name) {
                return Err(PlanError {
                    file: file.to_owned(),
                    plan: Some(plan.name.to_string()),
                    key: Some("tier".into()),
                    problem: format!("tier {} is also used by plan `{other}`; tiers must be unique", plan.tier),
                });
            }
        }
        Ok(())
    }

    /// Resolves a requested plan name, refusing names the catalogue does not sell.
    pub fn get(&self, requested: &str) -> Result<&Plan, UnknownPlan> {
        PlanName::parse(requested).and_then(|name| self.plans.get(&name)).ok_or_else(|| UnknownPlan {
            requested: requested.to_owned(),
            known: self.names().map(str::to_owned).collect(),
        })
    }

    pub fn pool(&self) -> &PoolSize {
        &self.pool
    }

    /// The price of one unit of `meter`'s usage (minor units, a decimal); `"0"`
    /// unless `[usage_prices]` names it: the plan's price includes its usage.
    pub fn usage_price(&self, meter: &str) -> &str {
        self.usage_prices.get(meter).map_or("0", String::as_str)
    }

    /// The meters `[usage_prices]` names.
    pub fn priced_meters(&self) -> impl Iterator<Item = &str> {
        self.usage_prices.keys().map(String::as_str)
    }

    /// Plans from the lowest tier to the highest.
    pub fn plans(&self) -> Vec<&Plan> {
        let mut plans: Vec<&Plan> = self.plans.values().collect();
        plans.sort_by_key(|p| p.tier);
        plans
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.plans().into_iter().map(|p| p.name.as_str())
    }
}

/// Each meter's unit price: a decimal of at most 12 places, 0 or more.
fn parse_usage_prices(s: &Section<'_>) -> Result<BTreeMap<String, String>, PlanError> {
    let mut prices = BTreeMap::new();
    for meter in s.table.keys() {
        let price = s.string(meter)?;
        let (whole, fraction) = price.split_once('.').unwrap_or((&price, ""));
        let digits = |part: &str| part.chars().all(|c| c.is_ascii_digit());
        if whole.is_empty() || !digits(whole) || !digits(fraction) || fraction.len() > 12 {
            return Err(s.error(
                Some(meter),
                &format!(
                    "must be a price in minor units like \"0\" or \"0.05\" (12 decimals at most), got \"{price}\""
                ),
            ));
        }
        prices.insert(meter.clone(), price);
    }
    Ok(prices)
}

fn parse_plan(name: PlanName, s: &Section<'_>) -> Result<Plan, PlanError> {
    s.only_keys(&[
        "display_name",
        "tier",
        "isolation",
        "price_per_month",
        "currency",
        "features",
        "limits",
        "rate_limit",
        "silo",
        "recovery",
    ])?;
    let isolation_raw = s.string("isolation")?;
    let isolation = isolation_raw
        .parse::<Isolation>()
        .map_err(|_| s.error(Some("isolation"), &format!("must be `pool` or `silo`, got `{isolation_raw}`")))?;
    let currency = s.string("currency")?;
    if currency.len() != 3 || !currency.chars().all(|c| c.is_ascii_lowercase()) {
        return Err(s.error(Some("currency"), "must be a lowercase ISO 4217 code such as `usd`"));
    }
    let features = s.strings("features")?;
    for feature in &features {
        if feature.is_empty() || !feature.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
            return Err(s.error(Some("features"), &format!("feature `{feature}` must be lowercase letters and `_`")));
        }
    }
    let limits = s.table("limits")?;
    limits.only_keys(&["products", "ai_credits", "storage_gb", "team_members", "api_calls_per_day"])?;
    let rate = s.table("rate_limit")?;
    rate.only_keys(&["requests_per_second", "burst"])?;
    let display_name = s.string("display_name")?;
    if display_name.trim().is_empty() {
        return Err(s.error(Some("display_name"), "must not be blank"));
    }
    let silo = match (isolation, s.table.contains_key("silo")) {
        (Isolation::Silo, _) => Some(parse_silo(&s.table("silo")?)?),
        (Isolation::Pool, false) => None,
        (Isolation::Pool, true) => {
            return Err(s.error(Some("silo"), "only a plan with isolation `silo` has silo sizes"));
        }
    };
    Ok(Plan {
        name,
        display_name,
        tier: s.positive("tier")?,
        isolation,
        price_per_month: s.non_negative("price_per_month")?,
        currency,
        features,
        limits: Limits {
            products: limits.limit("products")?,
            ai_credits: limits.limit("ai_credits")?,
            storage_gb: limits.limit("storage_gb")?,
            team_members: limits.limit("team_members")?,
            api_calls_per_day: limits.limit("api_calls_per_day")?,
        },
        rate_limit: RateLimit {
            requests_per_second: rate.positive("requests_per_second")?,
            burst: rate.positive("burst")?,
        },
        silo,
        recovery: parse_recovery(&s.table("recovery")?)?,
    })
}

fn parse_recovery(s: &Section<'_>) -> Result<Recovery, PlanError> {
    s.only_keys(&["rpo_minutes", "rto_minutes", "backups_kept"])?;
    Ok(Recovery {
        rpo_minutes: s.positive("rpo_minutes")?,
        rto_minutes: s.positive("rto_minutes")?,
        backups_kept: s.positive("backups_kept")?,
    })
}

fn parse_silo(s: &Section<'_>) -> Result<SiloSize, PlanError> {
    s.only_keys(&[
        "acu_min",
        "acu_max",
        "backup_retention_days",
        "dataplane_replicas",
        "dataplane_max_replicas",
        "final_snapshot",
        "dataplane_cpu",
        "dataplane_memory",
    ])?;
    let acu = |key: &str| -> Result<Acu, PlanError> {
        let n = s.number(key)?;
        if !(0.5..=256.0).contains(&n) || (n * 2.0).fract() != 0.0 {
            return Err(s.error(Some(key), &format!("must be 0.5 to 256 in steps of 0.5, got {n}")));
        }
        Ok(Acu(n))
    };
    let (acu_min, acu_max) = (acu("acu_min")?, acu("acu_max")?);
    if acu_min > acu_max {
        return Err(s.error(Some("acu_max"), &format!("must be at least acu_min ({acu_min}), got {acu_max}")));
    }
    let backup_retention_days = s.positive("backup_retention_days")?;
    if backup_retention_days > 35 {
        return Err(s.error(Some("backup_retention_days"), &format!("must be 1 to 35, got {backup_retention_days}")));
    }
    let or_default = |key: &str, default: u32| if s.table.contains_key(key) { s.positive(key) } else { Ok(default) };
    let dataplane_cpu = or_default("dataplane_cpu", 512)?;
    if !TASK_CPU.contains(&dataplane_cpu) {
        return Err(s.error(Some("dataplane_cpu"), &format!("must be one of {TASK_CPU:?}, got {dataplane_cpu}")));
    }
    let dataplane_memory = or_default("dataplane_memory", 1024)?;
    if !(512..=122_880).contains(&dataplane_memory) {
        return Err(s.error(Some("dataplane_memory"), &format!("must be 512 to 122880 MiB, got {dataplane_memory}")));
    }
    let dataplane_replicas = s.positive("dataplane_replicas")?;
    Ok(SiloSize {
        acu_min,
        acu_max,
        backup_retention_days,
        dataplane_replicas,
        dataplane_max_replicas: s.max_replicas(dataplane_replicas)?,
        final_snapshot: s.boolean("final_snapshot")?,
        dataplane_cpu,
        dataplane_memory,
    })
}

/// A table of the policy file together with where it sits, so that every
/// accessor can name the plan and the full key of what it rejects.
struct Section<'a> {
    file: &'a str,
    plan: Option<&'a str>,
    prefix: String,
    table: &'a Table,
}

impl<'a> Section<'a> {
    /// `dataplane_max_replicas`: at least `replicas`, which it is when absent.
    fn max_replicas(&self, replicas: u32) -> Result<u32, PlanError> {
        const KEY: &str = "dataplane_max_replicas";
        if !self.table.contains_key(KEY) {
            return Ok(replicas);
        }
        let max = self.positive(KEY)?;
        if max < replicas {
            return Err(self.error(Some(KEY), &format!("must be at least dataplane_replicas ({replicas}), got {max}")));
        }
        Ok(max)
    }

    fn full_key(&self, key: &str) -> String {
        if self.prefix.is_empty() { key.to_owned() } else { format!("{}.{key}", self.prefix) }
    }

    fn error(&self, key: Option<&str>, problem: &str) -> PlanError {
        PlanError {
            file: self.file.to_owned(),
            plan: self.plan.map(str::to_owned),
            key: key.map(|k| self.full_key(k)),
            problem: problem.to_owned(),
        }
    }

    fn only_keys(&self, allowed: &[&str]) -> Result<(), PlanError> {
        match self.table.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(unknown) => {
                Err(self.error(Some(unknown), &format!("unknown key; allowed here: {}", allowed.join(", "))))
            }
            None => Ok(()),
        }
    }

    fn get(&self, key: &str) -> Result<&'a Value, PlanError> {
        self.table.get(key).ok_or_else(|| self.error(Some(key), "is missing"))
    }

    fn nested(&self, key: &str, value: &'a Value, plan: Option<&'a str>) -> Result<Section<'a>, PlanError> {
        // A plan's own keys are named relative to the plan, not to `plans.<name>`.
        let (prefix, plan) = match plan {
            Some(p) => (String::new(), Some(p)),
            None => (self.full_key(key), self.plan),
        };
        match value {
            Value::Table(table) => Ok(Section { file: self.file, plan, prefix, table }),
            other => Err(self.error(Some(key), &format!("must be a table, got {}", other.type_str()))),
        }
    }

    fn table(&self, key: &str) -> Result<Section<'a>, PlanError> {
        let value = self.get(key)?;
        self.nested(key, value, None)
    }

    fn string(&self, key: &str) -> Result<String, PlanError> {
        match self.get(key)? {
            Value::String(s) => Ok(s.clone()),
            other => Err(self.error(Some(key), &format!("must be a string, got {}", other.type_str()))),
        }
    }

    fn strings(&self, key: &str) -> Result<Vec<String>, PlanError> {
        let Value::Array(items) = self.get(key)? else {
            return Err(self.error(Some(key), "must be an array of strings"));
        };
        items
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok(s.clone()),
                _ => Err(self.error(Some(key), "must be an array of strings")),
            })
            .collect()
    }

    fn integer(&self, key: &str) -> Result<i64, PlanError> {
        match self.get(key)? {
            Value::Integer(n) => Ok(*n),
            other => Err(self.error(Some(key), &format!("must be an integer, got {}", other.type_str()))),
        }
    }

    /// An integer or a float, finite.
    fn number(&self, key: &str) -> Result<f64, PlanError> {
        match self.get(key)? {
            Value::Integer(n) => Ok(*n as f64),
            Value::Float(n) if n.is_finite() => Ok(*n),
            other => Err(self.error(Some(key), &format!("must be a number, got {}", other.type_str()))),
        }
    }

    fn boolean(&self, key: &str) -> Result<bool, PlanError> {
        match self.get(key)? {
            Value::Boolean(b) => Ok(*b),
            other => Err(self.error(Some(key), &format!("must be true or false, got {}", other.type_str()))),
        }
    }

    fn non_negative(&self, key: &str) -> Result<u64, PlanError> {
        let n = self.integer(key)?;
        u64::try_from(n).map_err(|_| self.error(Some(key), &format!("must be 0 or more, got {n}")))
    }

    fn positive(&self, key: &str) -> Result<u32, PlanError> {
        let n = self.integer(key)?;
        match u32::try_from(n) {
            Ok(v) if v > 0 => Ok(v),
            _ => Err(self.error(Some(key), &format!("must be a positive integer, got {n}"))),
        }
    }

    fn limit(&self, key: &str) -> Result<Limit, PlanError> {
        match self.integer(key)? {
            -1 => Ok(Limit::Unlimited),
            n => u64::try_from(n)
                .map(Limit::AtMost)
                .map_err(|_| self.error(Some(key), &format!("must be -1 (unlimited) or 0 or more, got {n}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = r#"
[plans.starter]
display_name = "Starter"
tier = 1
isolation = "pool"
price_per_month = 2900
currency = "usd"
features = ["basic_store"]
limits = { products = 100, ai_credits = 50, storage_gb = 1, team_members = 1, api_calls_per_day = 1000 }
rate_limit = { requests_per_second = 10, burst = 20 }
recovery = { rpo_minutes = 60, rto_minutes = 240, backups_kept = 24 }

[plans.enterprise]
display_name = "Enterprise"
tier = 4
isolation = "silo"
price_per_month = 99900
currency = "usd"
features = ["basic_store", "sso"]
limits = { products = -1, ai_credits = -1, storage_gb = -1, team_members = -1, api_calls_per_day = -1 }
rate_limit = { requests_per_second = 500, burst = 1000 }
recovery = { rpo_minutes = 1, rto_minutes = 15, backups_kept = 60 }
silo = { acu_min = 0.5, acu_max = 16, backup_retention_days = 14, dataplane_replicas = 2, final_snapshot = true }
"#;

    fn broken(from: &str, to: &str) -> String {
        assert!(VALID.contains(from), "fixture does not contain {from}");
        PlanCatalog::parse("plans.toml", &VALID.replacen(from, to, 1)).unwrap_err().to_string()
    }

    #[test]
    fn parses_limits_and_isolation() {
        let catalog = PlanCatalog::parse("plans.toml", VALID).unwrap();
        let enterprise = catalog.get("enterprise").unwrap();
        assert_eq!(enterprise.isolation, Isolation::Silo);
        assert_eq!(enterprise.limits.products, Limit::Unlimited);
        assert_eq!(catalog.get("starter").unwrap().limits.products, Limit::AtMost(100));
        assert_eq!(catalog.names().collect::<Vec<_>>(), ["starter", "enterprise"]);
        assert!(enterprise.has_feature("sso"));
        assert_eq!(serde_json::to_value(&enterprise.limits).unwrap()["products"], -1);
    }

    #[test]
    fn usage_prices_are_zero_unless_named_and_decimals_in_minor_units() {
        let catalog = PlanCatalog::parse("plans.toml", VALID).unwrap();
        assert_eq!(catalog.usage_price("indigo_api_calls"), "0");
        let priced = format!("{VALID}\n[usage_prices]\nindigo_api_calls = \"0.05\"\n");
        let catalog = PlanCatalog::parse("plans.toml", &priced).unwrap();
        assert_eq!((catalog.usage_price("indigo_api_calls"), catalog.usage_price("indigo_ai_credits")), ("0.05", "0"));
        assert_eq!(catalog.priced_meters().collect::<Vec<_>>(), ["indigo_api_calls"]);
        for wrong in ["\"-1\"", "\"1e3\"", "\".5\"", "0.05"] {
            let text = format!("{VALID}\n[usage_prices]\nindigo_api_calls = {wrong}\n");
            let error = PlanCatalog::parse("plans.toml", &text).unwrap_err().to_string();
            assert!(error.starts_with("plans.toml: key `usage_prices.indigo_api_calls`: must be"), "{wrong}: {error}");
        }
    }

    #[test]
    fn unknown_plan_lists_the_known_ones() {
        let catalog = PlanCatalog::parse("plans.toml", VALID).unwrap();
        let err = catalog.get("gold").unwrap_err();
        assert_eq!(err.to_string(), "unknown plan `gold`; plans are: starter, enterprise");
        assert!(catalog.get("Starter").is_err());
    }

    #[test]
    fn errors_name_file_plan_and_key() {
        assert_eq!(
            broken("products = 100", "products = -5"),
            "plans.toml: plan `starter`: key `limits.products`: must be -1 (unlimited) or 0 or more, got -5"
        );
        assert_eq!(
            broken("isolation = \"silo\"", "isolation = \"bridge\""),
            "plans.toml: plan `enterprise`: key `isolation`: must be `pool` or `silo`, got `bridge`"
        );
        assert_eq!(
            broken("requests_per_second = 10,", "requests_per_second = \"fast\","),
            "plans.toml: plan `starter`: key `rate_limit.requests_per_second`: must be an integer, got string"
        );
        assert_eq!(
            broken("tier = 4", "tier = 1"),
            "plans.toml: plan `starter`: key `tier`: tier 1 is also used by plan `enterprise`; tiers must be unique"
        );
        assert!(broken("display_name = \"Starter\"\n", "").ends_with("plan `starter`: key `display_name`: is missing"));
        assert!(
            broken("tier = 1\n", "tier = 1\nmax_widgets = 3\n")
                .contains("plan `starter`: key `max_widgets`: unknown key")
        );
        assert!(broken("ai_credits = 50,", "ai_credit = 50,").contains("key `limits.ai_credit`: unknown key"));
        assert!(broken("[plans.starter]", "[plans.Starter]").contains("plan `Starter`"));
        assert!(broken("[plans.starter]", "[plans.starter").starts_with("plans.toml: not valid TOML"));
    }

    #[test]
    fn silo_sizes_come_with_silo_plans_only() {
        let catalog = PlanCatalog::parse("plans.toml", VALID).unwrap();
        let silo = catalog.get("enterprise").unwrap().silo.clone().unwrap();
        assert_eq!((silo.acu_min.get(), silo.acu_max.get(), silo.backup_retention_days), (0.5, 16.0, 14));
        assert_eq!((silo.dataplane_replicas, silo.final_snapshot), (2, true));
        assert_eq!(silo.dataplane_max_replicas, 2, "no range unless the plan gives one");
        assert!(catalog.get("starter").unwrap().silo.is_none());
        let ranged =
            VALID.replacen("dataplane_replicas = 2,", "dataplane_replicas = 2, dataplane_max_replicas = 6,", 1);
        let catalog = PlanCatalog::parse("plans.toml", &ranged).unwrap();
        assert_eq!(catalog.get("enterprise").unwrap().silo.as_ref().unwrap().dataplane_max_replicas, 6);
        assert_eq!(
            broken("dataplane_replicas = 2,", "dataplane_replicas = 2, dataplane_max_replicas = 1,"),
            "plans.toml: plan `enterprise`: key `silo.dataplane_max_replicas`: \
             must be at least dataplane_replicas (2), got 1"
        );
        assert_eq!(
            broken("acu_max = 16", "acu_max = 0.25"),
            "plans.toml: plan `enterprise`: key `silo.acu_max`: must be 0.5 to 256 in steps of 0.5, got 0.25"
        );
        assert_eq!(
            broken("acu_min = 0.5", "acu_min = 32"),
            "plans.toml: plan `enterprise`: key `silo.acu_max`: must be at least acu_min (32), got 16"
        );
        assert!(broken("backup_retention_days = 14", "backup_retention_days = 90").contains("must be 1 to 35"));
        assert!(broken("final_snapshot = true", "final_snapshot = \"yes\"").contains("must be true or false"));
        assert!(
            broken(", final_snapshot = true }", " }").ends_with("key `silo.final_snapshot`: is missing"),
            "every size is explicit"
        );
        assert_eq!(
            broken(
                "rate_limit = { requests_per_second = 10, burst = 20 }",
                "rate_limit = { requests_per_second = 10, burst = 20 }\nsilo = {}"
            ),
            "plans.toml: plan `starter`: key `silo`: only a plan with isolation `silo` has silo sizes"
        );
        let zero = broken("rpo_minutes = 60", "rpo_minutes = 0");
        assert!(zero.starts_with("plans.toml: plan `starter`: key `recovery.rpo_minutes`"), "{zero}");
        let missing = VALID.replacen("silo = {", "# silo = {", 1);
        assert!(
            PlanCatalog::parse("plans.toml", &missing).unwrap_err().to_string().ends_with("key `silo`: is missing")
        );
    }

    #[test]
    fn empty_catalog_is_refused() {
        let err = PlanCatalog::parse("p.toml", "[plans]\n").unwrap_err();
        assert_eq!(err.to_string(), "p.toml: key `plans`: defines no plan; at least one is needed");
    }
}
