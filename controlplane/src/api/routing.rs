//! `/v1/routing`: the table the data plane routes by. It answers 304 when the
//! caller already has the current version, and a caller that says it will
//! wait (`Prefer: wait=N`) is answered as soon as the table changes: data
//! planes learn of a new route when its transaction commits, not at their
//! next poll, which is what lets a moved tenant's held writes go on at once.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use indigo_core::api::{Placement, Route, RoutingTable};
use indigo_core::tenant::{Isolation, Role, Slug, TenantId};
use sqlx::PgPool;
use tokio::sync::watch;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::auth::Caller;
use super::error::ApiError;
use crate::runtime::Notifications;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(routing_table))
}

#[derive(sqlx::FromRow)]
struct RouteRow {
    id: uuid::Uuid,
    slug: String,
    lifecycle: String,
    isolation: String,
    plan: String,
    placement: Option<serde_json::Value>,
    routing_version: i64,
    /// The target of a move catching up or cutting over.
    next_database: Option<String>,
    next_cluster: Option<String>,
    personalize_campaign_arn: Option<String>,
}

pub async fn build(state: &AppState) -> Result<RoutingTable, ApiError> {
    let rows: Vec<RouteRow> = sqlx::query_as(
        "SELECT t.id, t.slug, t.lifecycle, t.isolation, t.plan, t.placement, t.routing_version,
                m.target_database AS next_database, m.target_cluster AS next_cluster,
                t.settings->>'personalize_campaign_arn' AS personalize_campaign_arn
         FROM tenants t
         LEFT JOIN LATERAL (SELECT target_database, target_cluster FROM tenant_moves
                            WHERE tenant_id = t.id AND finished_at IS NULL AND phase IN ('catching_up', 'cutting_over')
                            ORDER BY started_at DESC LIMIT 1) m ON true
         WHERE t.lifecycle <> 'deleted' ORDER BY t.id",
    )
    .fetch_all(&state.db)
    .await?;
    // Deleted tenants drop out of the table, so its version must count them too.
    let version = current_version(&state.db).await?;
    let mut routes = Vec::with_capacity(rows.len());
    for row in rows {
        let corrupt = |what: &str| ApiError::Internal(anyhow::anyhow!("tenant {}: {what}", row.id));
        let isolation: Isolation = row.isolation.parse().map_err(|_| corrupt("isolation"))?;
        let placement: Option<Placement> =
            row.placement.clone().map(serde_json::from_value).transpose().map_err(|_| corrupt("placement"))?;
        let dbs = &state.tenant_dbs;
        let tenant_id = TenantId(row.id);
        let (database_url, database_login_secret) = match (&placement, isolation) {
            // A silo on its own cluster (AWS) is reached at the cluster's endpoint.
            (Some(placement), _) => {
                let (url, secret) = dbs.data_plane_login(tenant_id, placement.cluster.as_deref(), &placement.database);
                (Some(url), secret)
            }
            (None, Isolation::Pool) => (Some(dbs.server.app_url(&dbs.pool_database)), None),
            (None, Isolation::Silo) => (None, None),
        };
        let (next_database_url, next_database_login_secret) = match row.next_database.as_deref() {
            Some(database) => {
                let (url, secret) = dbs.data_plane_login(tenant_id, row.next_cluster.as_deref(), database);
                (Some(url), secret)
            }
            None => (None, None),
        };
        let Ok(plan) = state.plans.get(&row.plan) else {
            tracing::error!(tenant = %row.id, plan = %row.plan, "tenant's plan is not in the catalogue; not routed");
            continue;
        };
        routes.push(Route {
            tenant_id,
            slug: Slug::parse(&row.slug).map_err(|_| corrupt("slug"))?,
            lifecycle: row.lifecycle.parse().map_err(|_| corrupt("lifecycle"))?,
            isolation,
            database_url,
            next_database_url,
            database_login_secret,
            next_database_login_secret,
            plan: plan.clone(),
            routing_version: row.routing_version,
            personalize_campaign_arn: row.personalize_campaign_arn.clone(),
        });
    }
    let ai_credit_rates = state.costs.as_ref().map(|costs| costs.credit_rates.clone()).unwrap_or_default();
    Ok(RoutingTable { version, routes, ai_credit_rates })
}

/// Where the tenants table's triggers announce each new routing version.
const CHANNEL: &str = "indigo_routing";

/// The longest a request waits for a change, whatever it asks: below the
/// admin API's read timeout, which would otherwise answer 503 first.
const MAX_WAIT: Duration = Duration::from_secs(25);

/// Wakes the requests waiting for the routing table to change: a LISTEN on
/// [`CHANNEL`] that lives as long as any clone of it (the API's state).
#[derive(Clone)]
pub struct RoutingChanges {
    changes: watch::Receiver<u64>,
    /// Set when the server stops: waiting requests answer at once, so that
    /// draining them does not hold the shutdown for their whole wait.
    closing: Arc<watch::Sender<bool>>,
}

impl RoutingChanges {
    pub fn listen(db: PgPool) -> Self {
        let (wake, changes) = watch::channel(0u64);
        tokio::spawn(async move {
            let mut notifications = Notifications::new(db, CHANNEL);
            loop {
                tokio::select! {
                    () = wake.closed() => return,
                    // A new version, or listening again after a lost
                    // connection (a change may have been missed): look again.
                    _ = notifications.recv() => wake.send_modify(|n| *n = n.wrapping_add(1)),
                }
            }
        });
        Self { changes, closing: Arc::new(watch::channel(false).0) }
    }

    /// Answers every waiting request now, and every later one without waiting.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }
}

/// The `wait` preference of RFC 7240 (`Prefer: wait=10`), in seconds;
/// anything else in the header is ignored, as the RFC asks.
fn preferred_wait(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|preference| preference.split_once('='))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("wait"))
        .and_then(|(_, seconds)| seconds.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

async fn current_version(db: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COALESCE(max(routing_version), 0) FROM tenants").fetch_one(db).await
}

/// The routing table (operator, or a data plane). Send the version you have as
/// `If-None-Match` to get 304 when nothing changed; add `Prefer: wait=N` to
/// have the answer held until the table changes, for up to N seconds (at most
/// 25, and less than the API's read timeout), then 304 if it did not. A data
/// plane bound to one tenant sees that tenant's route only. Where the
/// databases are is for those who route to them: a viewer is refused.
#[utoipa::path(get, path = "/v1/routing", tag = "tenants",
    params(
        ("If-None-Match" = Option<String>, Header, description = "The version you have, as the `ETag` gave it (`\"42\"`)"),
        ("Prefer" = Option<String>, Header, description = "`wait=N`: hold a 304 up to N seconds for a change"),
    ),
    responses((status = 200, body = RoutingTable),
        (status = 304, description = "Unchanged; after a wait, `Preference-Applied` says how long it was held",
            headers(("Preference-Applied" = String, description = "`wait=N` when the answer was held N seconds")))))]
async fn routing_table(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Caller::Person(actor) = &caller {
        actor.require(Role::Operator)?;
    }
    let known = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok());
    let wait = preferred_wait(&headers).unwrap_or_default().min(MAX_WAIT.min(state.read_timeout.mul_f64(2.0 / 3.0)));
    let deadline = tokio::time::Instant::now() + wait;
    // Subscribed before looking, so a change between the look and the wait still wakes it.
    let mut changes = state.routing_changes.changes.clone();
    let mut closing = state.routing_changes.closing.subscribe();
    loop {
        changes.borrow_and_update();
        let current = current_version(&state.db).await?;
        if known != Some(format!("\"{current}\"").as_str()) {
            break;
        }
        let changed = async {
            tokio::select! {
                changed = changes.changed() => changed.is_ok(),
                _ = closing.wait_for(|closing| *closing) => false,
            }
        };
        match tokio::time::timeout_at(deadline, changed).await {
            Ok(true) => continue,
            // Held as long as it could be: the caller may ask again at once.
            Err(_) if wait.as_secs() > 0 => {
                let applied = format!("wait={}", wait.as_secs());
                return Ok((StatusCode::NOT_MODIFIED, [("preference-applied", applied)]).into_response());
            }
            // Not held, or cut short by a stopping server: the caller asks again later.
            Ok(false) | Err(_) => return Ok(StatusCode::NOT_MODIFIED.into_response()),
        }
    }
    let mut table = build(&state).await?;
    table.routes.retain(|route| caller.reaches(route.tenant_id));
    let etag = format!("\"{}\"", table.version);
    Ok(([(header::ETAG, etag)], Json(table)).into_response())
}
