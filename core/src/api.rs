//! The admin API's request and response bodies, shared by the server, the CLI
//! and the console so that all three read the same JSON the same way.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::plan::PlanName;
use crate::tenant::{Condition, Isolation, Lifecycle, Phase, Role, Slug, TenantId};

/// A tenant as the registry holds it: what it should be, and what was last seen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Tenant {
    pub id: TenantId,
    pub slug: Slug,
    pub name: String,
    pub owner_email: String,
    pub spec: TenantSpec,
    pub status: TenantStatus,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Tenant {
    /// Whether the last observation reflects the current spec.
    pub fn status_current(&self) -> bool {
        self.status.observed_generation >= self.spec.generation
    }
}

/// The desired state of a tenant. Every change bumps `generation`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TenantSpec {
    pub plan: PlanName,
    pub isolation: Isolation,
    pub lifecycle: Lifecycle,
    pub generation: i64,
}

/// The observed state of a tenant; `observed_generation` says which spec it reflects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TenantStatus {
    pub phase: Phase,
    pub conditions: Vec<Condition>,
    pub placement: Option<Placement>,
    pub observed_generation: i64,
    pub last_reconciled_at: Option<DateTime<Utc>>,
}

/// Where a tenant's data and compute actually are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Placement {
    pub isolation: Isolation,
    /// The database holding the tenant's rows (the pool's or its own).
    pub database: String,
    /// The dedicated cluster, for a silo on AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// The data-plane service that serves it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

impl Placement {
    /// Where the data is and what serves it, for people: `silo · indigo · cluster … · service …`.
    pub fn describe(&self) -> String {
        let mut text = format!("{} · {}", self.isolation, self.database);
        if let Some(cluster) = &self.cluster {
            text += &format!(" · cluster {cluster}");
        }
        if let Some(service) = &self.service {
            text += &format!(" · service {service}");
        }
        text
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenantRequest {
    /// Display name, 1 to 100 characters, no control characters.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub name: String,
    /// 3 to 40 lowercase letters, digits and hyphens; starts with a letter, does not end with a hyphen.
    #[schema(pattern = "^[a-z][a-z0-9-]{1,38}[a-z0-9]$")]
    pub slug: String,
    #[schema(format = "email", max_length = 254)]
    pub owner_email: String,
    /// A plan from `GET /v1/plans`.
    pub plan: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePlanRequest {
    pub plan: String,
}

/// Optional body of suspend and resume: why, for the audit trail.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LifecycleRequest {
    #[serde(default)]
    pub reason: Option<String>,
}

/// One page of a list; pass `next_cursor` as `cursor` to get the next.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// Every error the admin API returns has this shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// Stable, machine-readable: `unknown_plan`, `slug_taken`, `unauthorized`, ...
    pub code: String,
    /// A sentence for a person.
    pub message: String,
}

/// Something that happened to a tenant or the fleet, for people to follow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    /// Increasing; pass the last one seen as `after` to follow the stream.
    pub id: i64,
    pub tenant_id: Option<TenantId>,
    /// `TenantCreated`, `PlanChanged`, `TenantSuspended`, ...
    pub kind: String,
    pub message: String,
    pub data: Value,
    pub created_at: DateTime<Utc>,
}

/// One mutation, as the append-only audit log recorded it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    pub at: DateTime<Utc>,
    /// The API token's name.
    pub actor: String,
    pub role: Role,
    /// `tenant.create`, `tenant.plan`, `token.create`, ...
    pub action: String,
    pub tenant_id: Option<TenantId>,
    pub request_id: Option<String>,
    pub before: Option<Value>,
    pub after: Option<Value>,
    /// The acting API token's id; none for the control plane's own actors and the bootstrap token.
    #[serde(default)]
    pub token_id: Option<Uuid>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    /// Who or what uses the token; recorded as the actor in the audit log. 1 to 100 characters.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\x00]*[^\x00\t\n\x0b\f\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\x00]*$"
    )]
    pub name: String,
    pub role: Role,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApiToken {
    pub id: Uuid,
    pub name: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Returned once, when a token is created; only its hash is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    #[serde(flatten)]
    pub info: ApiToken,
    pub token: String,
}

/// Where the data plane sends each tenant's traffic, and with what entitlements.
/// `version` is the highest `routing_version` of any route: it only grows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RoutingTable {
    pub version: i64,
    pub routes: Vec<Route>,
    /// AI credits per token of each AI service (`policies/costs.toml`), so that
    /// a data plane prices its own AI calls against the plans' monthly credits
    /// as the usage store will.
    #[serde(default)]
    pub ai_credit_rates: std::collections::BTreeMap<String, f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Route {
    pub tenant_id: TenantId,
    pub slug: Slug,
    pub lifecycle: Lifecycle,
    pub isolation: Isolation,
    /// The tenant database, as a URL for the data plane's role; `None` while it
    /// has no placement yet (the data plane then answers 503).
    pub database_url: Option<String>,
    /// The database the tenant is moving to, while its move catches up and
    /// cuts over: a data plane connects there ahead of the switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_database_url: Option<String>,
    /// The Secrets Manager secret holding the password of `database_url`'s
    /// login, when that is a tenant's own (on its own cluster); otherwise the
    /// data plane logs in with the app role's password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_login_secret: Option<String>,
    /// The same for `next_database_url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_database_login_secret: Option<String>,
    pub plan: crate::plan::Plan,
    /// Bumped by every change that affects routing (plan, lifecycle, placement,
    /// the Personalize campaign).
    pub routing_version: i64,
    /// The tenant's Amazon Personalize campaign, which recommends for it when
    /// the data plane calls Personalize (its settings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub personalize_campaign_arn: Option<String>,
}

/// One metered unit of use, as the data plane reports it. `id` is unique per
/// event and makes delivery idempotent: a re-sent event is counted once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageEvent {
    pub id: Uuid,
    pub tenant_id: TenantId,
    /// `api_call`, `search_query`, `ai_request` or `storage_gb`.
    pub event_type: String,
    /// Units of the event type; for an `ai_request` with `ai`, the credits are
    /// computed from the tokens (0 or omitted here, or equal to them).
    #[serde(default)]
    pub quantity: f64,
    #[serde(default)]
    pub route: Option<String>,
    #[serde(default, deserialize_with = "whole::optional")]
    #[schema(maximum = 65535)]
    pub status: Option<u16>,
    #[serde(default, deserialize_with = "whole::optional")]
    #[schema(format = Int64, maximum = 4_294_967_295_u64)]
    pub latency_ms: Option<u32>,
    pub occurred_at: DateTime<Utc>,
    /// An AI call: its service and tokens, priced in credits by `policies/costs.toml`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ai: Option<AiUsage>,
}

/// What an AI call used, as its caller reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AiUsage {
    /// `bedrock`, `personalize`, `comprehend`, `rekognition`, `embedded` (the rates' keys).
    pub service: String,
    #[serde(deserialize_with = "whole::required")]
    #[schema(format = Int64, maximum = 4_294_967_295_u64)]
    pub input_tokens: u32,
    #[serde(deserialize_with = "whole::required")]
    #[schema(format = Int64, maximum = 4_294_967_295_u64)]
    pub output_tokens: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageBatch {
    pub events: Vec<UsageEvent>,
}

/// What became of a batch: counts, and why each refused event was refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UsageBatchResult {
    pub accepted: u64,
    /// Events whose id had been stored before.
    pub duplicates: u64,
    pub rejected: Vec<RejectedEvent>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RejectedEvent {
    /// Position in the batch.
    pub index: usize,
    pub code: String,
    pub message: String,
}

/// The reconciler's state, for operators and the console.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReconcilerStatus {
    /// Whether this replica runs a reconciler.
    pub running: bool,
    pub workers: usize,
    pub queue_depth: usize,
    pub in_progress: usize,
    /// Tenants whose last reconcile failed and are backing off.
    pub backing_off: usize,
    pub reconciles_total: u64,
    pub errors_total: u64,
    pub errors_by_reason: std::collections::BTreeMap<String, u64>,
    pub drift_repaired_total: u64,
    pub paused_tenants: Vec<Slug>,
    pub last_full_resync_at: Option<DateTime<Utc>>,
    pub rls_audit: Option<RlsAudit>,
    /// The data-plane services this replica runs or keeps, as last observed
    /// (empty when the data plane is deployed some other way).
    #[serde(default)]
    pub services: Vec<ServiceReplicas>,
}

/// A data-plane service as the reconciler last saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServiceReplicas {
    pub name: String,
    /// The silo tenant it serves; `None` for the pool's.
    pub tenant_id: Option<TenantId>,
    pub running: u32,
    /// What the plan (or `[pool]`) asks.
    pub wanted: u32,
    pub address: Option<String>,
}

/// The last check that every tenant table is bound by forced RLS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RlsAudit {
    pub at: DateTime<Utc>,
    pub database: String,
    /// Empty when all is well.
    pub violations: Vec<String>,
}

/// What a reconcile would do, without doing it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReconcilePlan {
    pub tenant_id: TenantId,
    pub generation: i64,
    /// Each planned change, e.g. `{"action": "create_silo"}`.
    pub actions: Vec<Value>,
    pub phase: Phase,
    pub conditions: Vec<Condition>,
    pub paused: bool,
}

/// Who the caller's token says it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    pub name: String,
    pub role: Role,
}

/// A tenant's recent traffic and this month's AI credits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TenantUsage {
    pub tenant_id: TenantId,
    /// Storefront calls (API calls and searches) since 00:00 UTC.
    pub api_calls_today: i64,
    /// Average over the last minute.
    pub requests_per_second: f64,
    /// AI credits used since the start of the month (UTC), against the plan's `ai_credits`.
    #[serde(default)]
    pub ai_credits_this_month: f64,
}

/// A tenant's storefront calls so far in its own day (the time zone of its
/// settings), which every data-plane replica counts its daily limit from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DailyCalls {
    pub tenant_id: TenantId,
    /// API calls and searches since the tenant's local midnight, as metered.
    pub calls: u64,
    /// The tenant's next local midnight, when the count starts again.
    pub resets_at: DateTime<Utc>,
    /// AI credits used in the current billing month (UTC), as metered.
    #[serde(default)]
    pub ai_credits_this_month: f64,
}

/// Where a durable workflow stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WorkflowState {
    /// Moving forward, step by step.
    Running,
    /// A step failed for good (or an operator cancelled): undoing the completed steps.
    Compensating,
    Succeeded,
    /// Ended without reaching its goal; `error` says why. Retry starts it again.
    Failed,
    /// Cancelled by an operator and undone.
    Cancelled,
}
crate::wire_enum!(WorkflowState {
    Running => "running",
    Compensating => "compensating",
    Succeeded => "succeeded",
    Failed => "failed",
    Cancelled => "cancelled",
});

impl WorkflowState {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

/// One step of a workflow as last recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WorkflowStep {
    pub name: String,
    /// `running`, `retrying`, `succeeded`, `failed`, `compensating`, `compensated` or `compensation_failed`.
    pub state: String,
    pub attempts: i32,
    /// What the step produced (ids of what it created), once it succeeded.
    pub output: Option<Value>,
    pub error: Option<String>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// A durable workflow (onboarding, offboarding, ...) and its steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Workflow {
    pub id: Uuid,
    /// `onboarding`, `offboarding`, `tier_change` or `restore`.
    pub kind: String,
    pub tenant_id: TenantId,
    pub state: WorkflowState,
    /// Bumped by each retry; part of every step's idempotency key.
    pub attempt: i32,
    pub error: Option<String>,
    pub cancel_requested: bool,
    /// Steps in the order they were defined; those not started yet are absent.
    pub steps: Vec<WorkflowStep>,
    /// How many steps the workflow has in all (for progress).
    pub total_steps: usize,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// An online move of a tenant between the pool and a silo (part of a tier change).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TenantMove {
    pub workflow_id: Uuid,
    pub tenant_id: TenantId,
    pub slug: String,
    pub from_isolation: Isolation,
    pub to_isolation: Isolation,
    pub source_database: String,
    pub target_database: Option<String>,
    /// `provisioning`, `copying`, `catching_up`, `cutting_over`, `switched`,
    /// `cleaning_up`, `done` or `rolled_back`.
    pub phase: String,
    pub rows_total: i64,
    pub rows_copied: i64,
    /// Changes logged on the source and not yet applied to the target.
    pub lag: i64,
    /// How long the tenant's writes were held at the switch.
    pub pause_ms: Option<i64>,
    /// What its preview said when it started: the copy time for its rows at the rate earlier
    /// moves reached, and their longest pause (none before any was measured).
    pub estimated_copy_seconds: Option<f64>,
    pub estimated_pause_ms: Option<i64>,
    /// How long the copy took: from the start to the switch.
    pub copy_seconds: Option<f64>,
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub switched_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl TenantMove {
    /// Whether the move is still under way.
    pub fn active(&self) -> bool {
        self.finished_at.is_none()
    }
}

/// A scheduled job of the control plane and how its last run went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobStatus {
    pub name: String,
    /// Cron expression (with seconds), in UTC.
    pub schedule: String,
    pub description: String,
    pub runs: i64,
    pub last_started_at: Option<DateTime<Utc>>,
    pub last_finished_at: Option<DateTime<Utc>>,
    /// `ok` or `failed`.
    pub last_outcome: Option<String>,
    pub last_error: Option<String>,
    /// What the last run did (buckets changed, windows reported, ...).
    pub last_detail: Option<Value>,
    pub next_run_at: Option<DateTime<Utc>>,
}

/// What a tenant costs per month against what it pays (the cost model of
/// `policies/costs.toml` over its last 30 days of usage).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TenantCost {
    pub tenant_id: TenantId,
    pub slug: Slug,
    pub plan: PlanName,
    pub isolation: Isolation,
    /// Usage over the last 30 days by event type.
    pub usage_30d: std::collections::BTreeMap<String, f64>,
    /// Estimated monthly cost by service (and `silo_database`).
    pub cost: std::collections::BTreeMap<String, f64>,
    pub cost_total: f64,
    /// The plan's monthly price (metered revenue comes with usage billing).
    pub revenue: f64,
    pub margin: f64,
    /// The plan does not pay for what the tenant uses.
    pub unprofitable: bool,
    pub currency: String,
}

/// A tenant's own settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantSettings {
    /// IANA time zone of the tenant's day (daily limits reset at its midnight), e.g. `Europe/Paris`.
    pub timezone: String,
    /// The tenant's Amazon Personalize campaign, for its recommendations on AWS; left out: none
    /// (the built-in recommender).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = r"^arn:aws[a-z-]*:personalize:[a-z0-9-]+:[0-9]{12}:campaign/[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")]
    pub personalize_campaign_arn: Option<String>,
}

/// Whether `arn` names a Personalize campaign, exactly as
/// [`TenantSettings::personalize_campaign_arn`]'s pattern says.
pub fn is_personalize_campaign_arn(arn: &str) -> bool {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let [arn_prefix, partition, service, region, account, resource] = parts[..] else { return false };
    let name = resource.strip_prefix("campaign/").unwrap_or_default();
    arn_prefix == "arn"
        && partition.strip_prefix("aws").is_some_and(|rest| rest.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
        && service == "personalize"
        && !region.is_empty()
        && region.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && account.len() == 12
        && account.chars().all(|c| c.is_ascii_digit())
        && (1..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// A tenant's rolled-up usage per hour, oldest first (the current hour so far last).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UsageSeries {
    pub tenant_id: Option<TenantId>,
    /// The start of each hour.
    pub hours: Vec<DateTime<Utc>>,
    /// Per event type, one value per hour (0 where nothing happened).
    pub series: std::collections::BTreeMap<String, Vec<f64>>,
}

/// How a tenant's catalogue reads fared in the data planes' Redis cache over
/// the last [`CatalogueCacheStats::WINDOW_HOURS`] hours.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CatalogueCacheStats {
    pub tenant_id: Option<TenantId>,
    /// Whether the control plane reaches the data planes' Redis (`redis_url`);
    /// without it there is no cache and no counts.
    pub enabled: bool,
    pub hours: u32,
    pub hits: u64,
    pub misses: u64,
    /// hits ÷ (hits + misses); none before the first read.
    pub hit_rate: Option<f64>,
}

impl CatalogueCacheStats {
    pub const WINDOW_HOURS: u32 = 24;

    /// The Redis hash in which data planes add up `tenant`'s cache hits and
    /// misses during the UTC hour that contains `at`.
    pub fn counts_key(tenant: TenantId, at: DateTime<Utc>) -> String {
        // `{tenant}` is a hash tag: all of a tenant's keys share a Redis cluster slot.
        format!("indigo:catalogue:{{{tenant}}}:counts:{}", at.format("%Y%m%d%H"))
    }
}

/// What changing a tenant's plan would do, worked out without changing anything.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PlanChangePreview {
    pub tenant_id: TenantId,
    pub from_plan: String,
    pub to_plan: String,
    /// Whether the change moves the tenant's rows (its isolation changes).
    pub moves: bool,
    pub from_isolation: Isolation,
    pub to_isolation: Isolation,
    /// The tenant's rows and their size, per table, as they are now.
    pub tables: Vec<TableFootprint>,
    pub rows_total: i64,
    pub bytes_total: i64,
    /// How long copying them would take at `copy_rows_per_second` (0 when nothing moves).
    pub estimated_copy_seconds: f64,
    /// The copy rate this installation's past moves reached (their median), or a default until there is one.
    pub copy_rows_per_second: f64,
    /// How many past moves the rate comes from; 0: the default.
    pub moves_measured: i64,
    /// The longest write pause of the past moves, the pause to expect; none until a move has been measured.
    pub expected_pause_ms: Option<i64>,
    /// The tenant's rows written in the last 5 minutes (orders and customers created, products
    /// changed), when it moves: the pause applies the changes made since the catch-up's last
    /// batch, so it grows with the tenant's write rate.
    pub writes_last_5_minutes: Option<i64>,
    /// What the tenant would run on: its own cluster's size and data-plane service for a silo plan, none for the pool.
    pub target_silo: Option<crate::plan::SiloSize>,
    /// List prices per month in `currency`'s minor units.
    pub price_per_month_from: u64,
    pub price_per_month_to: u64,
    pub currency: String,
    /// What the change would invoice in prorations for the rest of the billing period, in minor
    /// units (a credit is negative), from the payment provider's invoice preview; none when the
    /// tenant is not billed or the provider did not answer.
    pub proration: Option<i64>,
    /// What would stop the change; empty when it can go ahead.
    pub refusals: Vec<PlanChangeRefusal>,
}

/// A tenant's backups and where they stand against its plan's recovery targets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TenantBackups {
    pub tenant_id: TenantId,
    pub slug: String,
    /// The plan's recovery point objective: the oldest its newest backup may be.
    pub rpo_minutes: u32,
    /// The plan's recovery time objective: the longest a restore may take.
    pub rto_minutes: u32,
    /// Seconds since the newest backup was taken; `None` before the first.
    pub newest_age_seconds: Option<i64>,
    /// The newest backup is older than the RPO (or there is none, and the
    /// tenant is older than its RPO).
    pub behind: bool,
    /// Newest first.
    pub backups: Vec<TenantBackup>,
}

/// One consistent snapshot of a tenant's rows: an export bundle with a
/// manifest of each table's rows and SHA-256.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TenantBackup {
    pub id: Uuid,
    pub taken_at: DateTime<Utc>,
    /// Rows in all its tables.
    pub rows: u64,
    /// SHA-256 of its manifest.
    pub manifest_sha256: String,
    /// Where the bundle is (a directory on the control plane's host).
    pub path: String,
    /// When the restore drill last restored it into a scratch database and
    /// checked every table against its checksums.
    pub drilled_at: Option<DateTime<Utc>>,
    /// What that drill found wrong; `None` when it restored intact.
    pub drill_problem: Option<String>,
}

/// Restore a tenant's rows from one of its backups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    /// One of the tenant's backups (`GET /v1/tenants/{tenant}/backups`).
    pub backup_id: Uuid,
    /// Where the backup's rows go; in place unless said.
    #[serde(default)]
    pub into: RestoreInto,
}

/// Where a restore puts the backup's rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RestoreInto {
    /// Into the database the tenant is served from, its writes held meanwhile.
    #[default]
    InPlace,
    /// A silo tenant only: its silo deleted and made again, then loaded. For a
    /// silo that is lost or not to be trusted; the tenant answers 503 from the
    /// rebuild until the load commits.
    NewSilo,
}

/// What restoring a tenant from one of its backups would do, changing nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RestorePreview {
    pub tenant_id: TenantId,
    pub backup_id: Uuid,
    pub taken_at: DateTime<Utc>,
    /// Per tenant table: its rows now, and in the backup (what it would have after).
    pub tables: Vec<RestoreTable>,
    pub rows_now: u64,
    pub rows_in_backup: u64,
    /// Every file of the backup matches its manifest, and the manifest is the one written when it was taken.
    pub intact: bool,
    /// Where the rows would go.
    pub into: RestoreInto,
    /// What would stop it (`not_intact`, `workflow_in_progress`, `not_in_silo`); none: it would go ahead.
    pub refusals: Vec<PlanChangeRefusal>,
}

/// One table of a [`RestorePreview`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RestoreTable {
    pub table: String,
    pub rows_now: u64,
    pub rows_in_backup: u64,
}

/// A restore under way: follow it as a workflow of kind `restore`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RestoreStarted {
    pub tenant_id: TenantId,
    pub backup_id: Uuid,
    pub workflow_id: Uuid,
}

/// A tenant's usage as Stripe received it, against what Indigo reported: the last check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BillingParity {
    pub tenant_id: TenantId,
    pub slug: String,
    pub checked_at: DateTime<Utc>,
    pub in_parity: bool,
    /// Each meter's hour, and each invoice line, where the two differ.
    pub mismatches: Vec<ParityMismatch>,
}

/// Where Indigo's usage and Stripe's differ: one meter's hour, what Indigo
/// reported against what the meter received; or one metered line of a
/// finalized invoice, Indigo's total for the line's period against the
/// quantity invoiced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ParityMismatch {
    /// The Stripe meter's event name.
    pub meter: String,
    pub window_start: DateTime<Utc>,
    /// The end of the window: an hour after its start, or the invoice line's period end.
    pub window_end: DateTime<Utc>,
    /// What Indigo counted (reported to the meter) in the window.
    pub reported: f64,
    /// What Stripe has: the meter's total for the hour, or the quantity invoiced.
    pub received: f64,
    /// The invoice whose line differs; `None` for a meter's hour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invoice: Option<String>,
}

impl std::fmt::Display for ParityMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (meter, reported, received) = (&self.meter, self.reported, self.received);
        match &self.invoice {
            None => write!(
                f,
                "{meter} at {}: reported {reported}, Stripe received {received}",
                self.window_start.format("%Y-%m-%d %H:00 UTC")
            ),
            Some(invoice) => write!(
                f,
                "{meter} on invoice {invoice} ({} to {}): Indigo counted {reported}, Stripe invoiced {received}",
                self.window_start.format("%Y-%m-%d %H:%M UTC"),
                self.window_end.format("%Y-%m-%d %H:%M UTC")
            ),
        }
    }
}

/// One table's share of a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TableFootprint {
    pub table: String,
    pub rows: i64,
    /// The rows' size as stored (`pg_column_size`), indexes not counted.
    pub bytes: i64,
}

/// A reason a plan change (or a restore) would not go ahead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PlanChangeRefusal {
    /// A plan change's `same_plan`, `workflow_in_progress` or `over_limit`; a restore's `not_intact` or `workflow_in_progress`.
    pub code: String,
    pub message: String,
}

/// Where a tenant's built-in recommender stands (its co-purchase counts).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RecommenderStatus {
    pub tenant_id: Option<TenantId>,
    /// Whether the tenant's plan has `recommendations`.
    pub enabled: bool,
    /// When the counts were last computed; none before the first refresh.
    pub refreshed_at: Option<DateTime<Utc>>,
    /// The orders they were computed from.
    pub orders_counted: Option<i64>,
    /// Pairs of products counted (a product with itself included).
    pub pairs: i64,
}

/// A tenant's account at the payment provider and how far its usage is reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TenantBilling {
    pub tenant_id: TenantId,
    pub customer_id: String,
    pub subscription_id: Option<String>,
    pub price_id: Option<String>,
    /// `active` or `cancelled`.
    pub status: String,
    /// `ok`, `past_due` (in its grace period) or `suspended_unpaid`.
    pub payment_state: String,
    pub grace_until: Option<DateTime<Utc>>,
    /// The last hour window Stripe acknowledged usage for, and when.
    pub usage_reported_through: Option<DateTime<Utc>>,
    pub last_usage_report_at: Option<DateTime<Utc>>,
}

/// Whole numbers in request bodies. JSON Schema's `integer` includes `3.0`,
/// so where the documents say integer these accept it too; a fraction, a
/// negative number or one too large for the field is refused.
pub mod whole {
    use serde::{Deserialize, Deserializer};

    fn from_number<T: TryFrom<i128>>(number: &serde_json::Number) -> Option<T> {
        let whole = match (number.as_i64(), number.as_u64()) {
            (Some(n), _) => i128::from(n),
            (None, Some(n)) => i128::from(n),
            (None, None) => {
                let f = number.as_f64()?;
                // Beyond 2^64 no field of ours has room; the cast below is exact inside it.
                if f.fract() != 0.0 || f.abs() >= 18_446_744_073_709_551_616.0 {
                    return None;
                }
                f as i128
            }
        };
        T::try_from(whole).ok()
    }

    fn refused<E: serde::de::Error>(number: &serde_json::Number) -> E {
        E::custom(format!("expected a whole number in range, got {number}"))
    }

    pub fn required<'de, D: Deserializer<'de>, T: TryFrom<i128>>(d: D) -> Result<T, D::Error> {
        let number = serde_json::Number::deserialize(d)?;
        from_number(&number).ok_or_else(|| refused(&number))
    }

    pub fn optional<'de, D: Deserializer<'de>, T: TryFrom<i128>>(d: D) -> Result<Option<T>, D::Error> {
        match Option::<serde_json::Number>::deserialize(d)? {
            None => Ok(None),
            Some(number) => from_number(&number).map(Some).ok_or_else(|| refused(&number)),
        }
    }

    #[cfg(test)]
    mod tests {

        #[derive(serde::Deserialize)]
        struct Probe {
            #[serde(default, deserialize_with = "super::optional")]
            status: Option<u16>,
        }

        fn status(json: &str) -> Result<Option<u16>, String> {
            serde_json::from_str::<Probe>(json).map(|p| p.status).map_err(|e| e.to_string())
        }

        #[test]
        fn integers_as_json_schema_counts_them() {
            assert_eq!(status(r#"{"status": 200}"#), Ok(Some(200)));
            assert_eq!(status(r#"{"status": 200.0}"#), Ok(Some(200)), "3.0 is an integer to JSON Schema");
            assert_eq!(status(r#"{"status": null}"#), Ok(None));
            assert_eq!(status("{}"), Ok(None));
            for refused in ["200.5", "-1", "65536", "1e300"] {
                assert!(status(&format!(r#"{{"status": {refused}}}"#)).is_err(), "{refused} must be refused");
            }
        }
    }
}

#[cfg(test)]
mod campaign_arn_tests {
    use super::is_personalize_campaign_arn;

    #[test]
    fn personalize_campaign_arns_are_told_apart_from_other_text() {
        for good in [
            "arn:aws:personalize:us-east-1:123456789012:campaign/recs",
            "arn:aws-cn:personalize:cn-north-1:123456789012:campaign/A_b-9",
        ] {
            assert!(is_personalize_campaign_arn(good), "{good}");
        }
        for bad in [
            "",
            "arn:aws:personalize:us-east-1:123456789012:solution/recs",
            "arn:aws:personalize:us-east-1:12345678901:campaign/recs",
            "arn:aws:personalize::123456789012:campaign/recs",
            "arn:aws:s3:::bucket",
            "arn:aws:personalize:us-east-1:123456789012:campaign/-recs",
            "arn:aws:personalize:us-east-1:123456789012:campaign/recs\n",
            "arn:aws:personalize:US-EAST-1:123456789012:campaign/recs",
        ] {
            assert!(!is_personalize_campaign_arn(bad), "{bad}");
        }
    }
}
