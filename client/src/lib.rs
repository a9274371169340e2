//! A typed client of the admin API, used by the CLI (and the console).

use indigo_core::api::{
    ApiToken, AuditEntry, BillingParity, CatalogueCacheStats, ChangePlanRequest, CreateTenantRequest,
    CreateTokenRequest, CreatedToken, ErrorBody, Event, LifecycleRequest, Page, PlanChangePreview, RecommenderStatus,
    ReconcilePlan, ReconcilerStatus, RestoreInto, RestorePreview, RestoreRequest, RestoreStarted, Tenant, TenantBackup,
    TenantBackups, TenantBilling, TenantCost, TenantMove, TenantUsage, UsageSeries, WhoAmI, Workflow,
};
use indigo_core::plan::Plan;
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{message} ({code}, HTTP {status})")]
    Api { status: StatusCode, code: String, message: String },
    #[error("cannot reach the admin API at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("unexpected answer from {url}: {reason}")]
    Protocol { url: String, reason: String },
}

#[derive(Debug, Clone)]
pub struct AdminClient {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

/// Which tenants to list.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TenantQuery {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub isolation: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// Which workflows to list.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WorkflowQuery {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
}

/// Which moves to list.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MoveQuery {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Only moves still under way.
    pub active: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
}

/// Which events to read.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EventQuery {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
}

impl AdminClient {
    pub fn new(base: &str, token: Option<String>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .expect("a client with only a timeout set always builds");
        Self { http, base: base.trim_end_matches('/').to_owned(), token }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: Option<&(impl Serialize + ?Sized)>,
        body: Option<&(impl Serialize + ?Sized)>,
        idempotency_key: Option<&str>,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(query) = query {
            request = request.query(query);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request
            .send()
            .await
            .map_err(|e| ClientError::Unreachable { url: self.base.clone(), reason: root_cause(&e) })?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| ClientError::Unreachable { url: url.clone(), reason: root_cause(&e) })?;
        if !status.is_success() {
            return Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(body) => ClientError::Api { status, code: body.code, message: body.message },
                Err(_) => ClientError::Protocol { url, reason: format!("HTTP {status} without an error body") },
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol { url, reason: e.to_string() })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str, query: &(impl Serialize + ?Sized)) -> Result<T, ClientError> {
        self.call(Method::GET, path, Some(query), None::<&()>, None).await
    }

    async fn mutate<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &(impl Serialize + ?Sized),
        idempotency_key: &str,
    ) -> Result<T, ClientError> {
        self.call(method, path, None::<&()>, Some(body), Some(idempotency_key)).await
    }

    pub async fn list_tenants(&self, query: &TenantQuery) -> Result<Page<Tenant>, ClientError> {
        self.get("/v1/tenants", query).await
    }

    pub async fn get_tenant(&self, tenant: &str) -> Result<Tenant, ClientError> {
        self.get(&format!("/v1/tenants/{}", path_segment(tenant)), &()).await
    }

    pub async fn create_tenant(&self, request: &CreateTenantRequest, key: &str) -> Result<Tenant, ClientError> {
        self.mutate(Method::POST, "/v1/tenants", request, key).await
    }

    pub async fn change_plan(&self, tenant: &str, plan: &str, key: &str) -> Result<Tenant, ClientError> {
        let body = ChangePlanRequest { plan: plan.to_owned() };
        self.mutate(Method::PUT, &format!("/v1/tenants/{}/plan", path_segment(tenant)), &body, key).await
    }

    pub async fn suspend(&self, tenant: &str, reason: Option<String>, key: &str) -> Result<Tenant, ClientError> {
        let body = LifecycleRequest { reason };
        self.mutate(Method::POST, &format!("/v1/tenants/{}/suspend", path_segment(tenant)), &body, key).await
    }

    pub async fn resume(&self, tenant: &str, reason: Option<String>, key: &str) -> Result<Tenant, ClientError> {
        let body = LifecycleRequest { reason };
        self.mutate(Method::POST, &format!("/v1/tenants/{}/resume", path_segment(tenant)), &body, key).await
    }

    pub async fn delete(&self, tenant: &str, reason: Option<String>, key: &str) -> Result<Tenant, ClientError> {
        let body = LifecycleRequest { reason };
        self.mutate(Method::DELETE, &format!("/v1/tenants/{}", path_segment(tenant)), &body, key).await
    }

    pub async fn workflows(&self, query: &WorkflowQuery) -> Result<Vec<Workflow>, ClientError> {
        self.get("/v1/workflows", query).await
    }

    pub async fn moves(&self, query: &MoveQuery) -> Result<Vec<TenantMove>, ClientError> {
        self.get("/v1/moves", query).await
    }

    pub async fn workflow(&self, id: &str) -> Result<Workflow, ClientError> {
        self.get(&format!("/v1/workflows/{}", path_segment(id)), &()).await
    }

    pub async fn retry_workflow(&self, id: &str, key: &str) -> Result<Workflow, ClientError> {
        self.mutate(Method::POST, &format!("/v1/workflows/{}/retry", path_segment(id)), &(), key).await
    }

    pub async fn cancel_workflow(&self, id: &str, key: &str) -> Result<Workflow, ClientError> {
        self.mutate(Method::POST, &format!("/v1/workflows/{}/cancel", path_segment(id)), &(), key).await
    }

    pub async fn backups(&self, tenant: &str) -> Result<TenantBackups, ClientError> {
        self.get(&format!("/v1/tenants/{}/backups", path_segment(tenant)), &()).await
    }

    /// Backs `tenant` up now; answers once the backup is taken.
    pub async fn take_backup(&self, tenant: &str, key: &str) -> Result<TenantBackup, ClientError> {
        let path = format!("/v1/tenants/{}/backups", path_segment(tenant));
        self.call(Method::POST, &path, None::<&()>, None::<&()>, Some(key)).await
    }

    /// What restoring `tenant` from its backup `backup` (`into` where) would do; changes nothing.
    pub async fn preview_restore(
        &self,
        tenant: &str,
        backup: uuid::Uuid,
        into: RestoreInto,
    ) -> Result<RestorePreview, ClientError> {
        let path = format!("/v1/tenants/{}/restores/preview", path_segment(tenant));
        self.get(&path, &(("backup_id", backup), ("into", into))).await
    }

    /// Starts restoring `tenant` from its backup `backup`, `into` where.
    pub async fn restore(
        &self,
        tenant: &str,
        backup: uuid::Uuid,
        into: RestoreInto,
        key: &str,
    ) -> Result<RestoreStarted, ClientError> {
        let body = RestoreRequest { backup_id: backup, into };
        self.mutate(Method::POST, &format!("/v1/tenants/{}/restores", path_segment(tenant)), &body, key).await
    }

    pub async fn billing(&self, tenant: &str) -> Result<TenantBilling, ClientError> {
        self.get(&format!("/v1/tenants/{}/billing", path_segment(tenant)), &()).await
    }

    /// A tenant's usage per hour over the last `hours`.
    pub async fn usage_series(&self, tenant: &str, hours: i64) -> Result<UsageSeries, ClientError> {
        self.get(&format!("/v1/tenants/{}/usage", path_segment(tenant)), &[("hours", hours)]).await
    }

    /// How the tenant's catalogue reads fared in the data planes' cache over the last day.
    pub async fn catalogue_cache(&self, tenant: &str) -> Result<CatalogueCacheStats, ClientError> {
        self.get(&format!("/v1/tenants/{}/catalogue-cache", path_segment(tenant)), &()).await
    }

    /// What changing the tenant's plan to `plan` would do; nothing changes.
    pub async fn preview_plan_change(&self, tenant: &str, plan: &str) -> Result<PlanChangePreview, ClientError> {
        self.get(&format!("/v1/tenants/{}/plan-change", path_segment(tenant)), &[("to", plan)]).await
    }

    /// Where the tenant's built-in recommender stands.
    pub async fn recommender(&self, tenant: &str) -> Result<RecommenderStatus, ClientError> {
        self.get(&format!("/v1/tenants/{}/recommender", path_segment(tenant)), &()).await
    }

    /// The fleet's cost and margin per tenant, lowest margin first.
    pub async fn costs(&self) -> Result<Vec<TenantCost>, ClientError> {
        self.get("/v1/cost", &()).await
    }

    /// Each billed tenant's usage at Stripe against what was reported, from the last check.
    pub async fn billing_parity(&self) -> Result<Vec<BillingParity>, ClientError> {
        self.get("/v1/billing/parity", &()).await
    }

    pub async fn plans(&self) -> Result<Vec<Plan>, ClientError> {
        self.get("/v1/plans", &()).await
    }

    pub async fn events(&self, query: &EventQuery) -> Result<Page<Event>, ClientError> {
        self.get("/v1/events", query).await
    }

    pub async fn create_token(&self, request: &CreateTokenRequest, key: &str) -> Result<CreatedToken, ClientError> {
        self.mutate(Method::POST, "/v1/tokens", request, key).await
    }

    pub async fn tokens(&self) -> Result<Vec<ApiToken>, ClientError> {
        self.get("/v1/tokens", &()).await
    }

    pub async fn tenant_audit(&self, tenant: &str, limit: i64) -> Result<Page<AuditEntry>, ClientError> {
        self.get(&format!("/v1/tenants/{}/audit", path_segment(tenant)), &[("limit", limit)]).await
    }

    pub async fn usage_summary(&self) -> Result<Vec<TenantUsage>, ClientError> {
        self.get("/v1/usage/summary", &()).await
    }

    pub async fn whoami(&self) -> Result<WhoAmI, ClientError> {
        self.get("/v1/whoami", &()).await
    }

    pub async fn reconciler(&self) -> Result<ReconcilerStatus, ClientError> {
        self.get("/v1/reconciler", &()).await
    }

    pub async fn reconcile_plan(&self, tenant: &str) -> Result<ReconcilePlan, ClientError> {
        self.get(&format!("/v1/tenants/{}/reconcile/plan", path_segment(tenant)), &()).await
    }

    pub async fn reconcile_now(&self, tenant: &str) -> Result<serde_json::Value, ClientError> {
        self.call(
            Method::POST,
            &format!("/v1/tenants/{}/reconcile", path_segment(tenant)),
            None::<&()>,
            None::<&()>,
            None,
        )
        .await
    }

    pub async fn set_reconcile_paused(
        &self,
        tenant: &str,
        paused: bool,
        key: &str,
    ) -> Result<serde_json::Value, ClientError> {
        let verb = if paused { "pause" } else { "resume" };
        self.mutate(Method::POST, &format!("/v1/tenants/{}/reconcile/{verb}", path_segment(tenant)), &(), key).await
    }

    pub async fn revoke_token(&self, id: &str, key: &str) -> Result<ApiToken, ClientError> {
        self.mutate(Method::DELETE, &format!("/v1/tokens/{}", path_segment(id)), &(), key).await
    }
}

/// Keeps a user-typed name from changing the path it is put in.
fn path_segment(raw: &str) -> String {
    raw.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// The innermost error, which is the one that says what went wrong.
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}
