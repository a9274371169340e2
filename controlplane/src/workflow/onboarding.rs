//! Onboarding, started by `POST /v1/tenants` in the transaction that records
//! the tenant (`pending`):
//!
//! record → { database, billing } → { search, seed } → welcome_email → activate → publish
//!
//! The search settings and the sample data live in the tenant's database, so
//! they wait for it; billing runs beside the database. A permanent failure
//! undoes every step that started, in reverse, and leaves the tenant `pending`
//! and `failed` with the reason (retry the workflow, or offboard the tenant).

use indigo_core::api::Placement;
use indigo_core::tenant::{Condition, Isolation, Lifecycle, Phase, TenantId};
use indigo_tenantdb::schema::schema_current;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};

use super::{Definition, Kind, StepContext, StepError, workflow_steps};
use crate::journal::Actor;
use crate::journal::{self, Audit};
use crate::providers::{DatabaseProvider, SiloTenant};
use crate::registry::{self, TenantRef};
use crate::status::{READY, StatusWrite};

pub struct Onboarding;

workflow_steps! {
    pub enum Step {
        Record => "record",
        Database => "database",
        Billing => "billing",
        Search => "search",
        Seed => "seed",
        WelcomeEmail => "welcome_email",
        Activate => "activate",
        Publish => "publish",
    }
}

impl Definition for Onboarding {
    const KIND: Kind = Kind::Onboarding;
    type Step = Step;
    const STAGES: &'static [&'static [Step]] = &[
        &[Step::Record],
        &[Step::Database, Step::Billing],
        &[Step::Search, Step::Seed],
        &[Step::WelcomeEmail],
        &[Step::Activate],
        &[Step::Publish],
    ];

    async fn run<P: DatabaseProvider>(step: Step, cx: &StepContext<'_, P>) -> Result<Value, StepError> {
        match step {
            Step::Record => record(cx).await,
            Step::Database => database(cx).await,
            Step::Billing => billing(cx).await,
            Step::Search => search(cx).await,
            Step::Seed => seed(cx).await,
            Step::WelcomeEmail => welcome_email(cx).await,
            Step::Activate => activate(cx).await,
            Step::Publish => publish(cx).await,
        }
    }

    async fn compensate<P: DatabaseProvider>(step: Step, cx: &StepContext<'_, P>) -> Result<(), StepError> {
        match step {
            Step::Database => undo_database(cx).await,
            Step::Billing => undo_billing(cx).await,
            Step::Search => delete_in_tenant_database(cx, "DELETE FROM search_settings").await,
            Step::Seed => delete_in_tenant_database(cx, "DELETE FROM products WHERE id = $1").await,
            Step::WelcomeEmail => undo_welcome_email(cx).await,
            Step::Activate => undo_activate(cx).await,
            // The record stays, marked failed by `on_failure`. Events are history:
            // a published TenantCreated stays, followed by WorkflowFailed.
            Step::Record | Step::Publish => Ok(()),
        }
    }

    async fn on_failure<P: DatabaseProvider>(cx: &StepContext<'_, P>) -> Result<(), StepError> {
        mark_failed(cx).await
    }
}

/// The phase of a tenant being onboarded and its one condition, while its
/// lifecycle is still `pending`; whether it still was.
async fn pending_status(
    conn: &mut PgConnection,
    tenant: TenantId,
    phase: Phase,
    ready: Condition,
) -> Result<bool, sqlx::Error> {
    StatusWrite::new().phase(phase).conditions(vec![ready]).while_pending().apply(conn, tenant).await
}

async fn record<P>(cx: &StepContext<'_, P>) -> Result<Value, StepError> {
    let ready = Condition::new(READY, false, "Onboarding", "onboarding: setting up database, billing and search");
    let mut conn = cx.services.db.acquire().await?;
    let updated = pending_status(&mut conn, cx.tenant_id, Phase::Provisioning, ready).await?;
    if !updated {
        return Err(StepError::Permanent("the tenant is no longer pending".into()));
    }
    Ok(json!({}))
}

/// Leaves the tenant pending and failed, with the reason, for an operator.
async fn mark_failed<P>(cx: &StepContext<'_, P>) -> Result<(), StepError> {
    let reason = cx.error.unwrap_or("onboarding was undone");
    let failed = Condition::new(
        READY,
        false,
        "OnboardingFailed",
        format!("{reason}; retry the onboarding workflow or offboard"),
    );
    let mut conn = cx.services.db.acquire().await?;
    pending_status(&mut conn, cx.tenant_id, Phase::Failed, failed).await?;
    Ok(())
}

async fn database<P: DatabaseProvider>(cx: &StepContext<'_, P>) -> Result<Value, StepError> {
    let tenant = super::tenant(cx).await?;
    let placement = match tenant.spec.isolation {
        Isolation::Pool => {
            let dbs = &cx.services.tenant_dbs;
            let pool = cx.services.tenant_pools.get(&dbs.pool());
            let mut conn = pool.acquire().await.map_err(super::transient)?;
            let ready = schema_current(&mut conn).await.map_err(super::transient)?;
            if !ready {
                return Err(StepError::Transient(format!("the pool `{}` lacks the tenant schema", dbs.pool_database)));
            }
            Placement { isolation: Isolation::Pool, database: dbs.pool_database.clone(), cluster: None, service: None }
        }
        Isolation::Silo => {
            let silo = cx.services.provider.ensure_silo(&SiloTenant::of(&tenant, &cx.services.plans)?).await?;
            Placement { isolation: Isolation::Silo, database: silo.database, cluster: silo.cluster, service: None }
        }
    };
    let mut conn = cx.services.db.acquire().await?;
    StatusWrite::new().placement(Some(placement.clone())).apply(&mut conn, cx.tenant_id).await?;
    Ok(json!(placement))
}

async fn undo_database<P: DatabaseProvider>(cx: &StepContext<'_, P>) -> Result<(), StepError> {
    let tenant = super::tenant(cx).await?;
    match tenant.spec.isolation {
        Isolation::Silo => {
            cx.services.provider.delete_silo(&SiloTenant::of(&tenant, &cx.services.plans)?).await?;
            if let Some(placed) = cx.output
                && let Some(database) = placed.get("database").and_then(Value::as_str)
            {
                super::forget_database(cx, placed.get("cluster").and_then(Value::as_str), database);
            }
        }
        Isolation::Pool => {
            cx.services.provider.delete_pool_rows(tenant.id).await?;
        }
    }
    let mut conn = cx.services.db.acquire().await?;
    StatusWrite::new().placement(None).apply(&mut conn, cx.tenant_id).await?;
    Ok(())
}

async fn billing<P>(cx: &StepContext<'_, P>) -> Result<Value, StepError> {
    let Some(stripe) = &cx.services.stripe else { return Ok(json!({ "billing": "off" })) };
    let tenant = super::tenant(cx).await?;
    let plan = cx
        .services
        .plans
        .get(tenant.spec.plan.as_str())
        .map_err(|e| StepError::Permanent(format!("plan of the tenant: {e}")))?;
    let price_id = stripe.ensure_price(plan).await?;
    stripe.ensure_meters().await?;
    let customer_id = stripe.create_customer(tenant.id, &tenant.name, &tenant.owner_email, &cx.key("customer")).await?;
    let (subscription_id, subscribed_at) = stripe
        .create_subscription(
            tenant.id,
            &customer_id,
            (&price_id, &plan.currency, &cx.services.plans),
            &cx.key("subscription"),
        )
        .await?;
    sqlx::query(
        "INSERT INTO tenant_billing (tenant_id, customer_id, subscription_id, price_id, status, subscribed_at)
         VALUES ($1, $2, $3, $4, 'active', to_timestamp($5))
         ON CONFLICT (tenant_id) DO UPDATE SET customer_id = $2, subscription_id = $3, price_id = $4,
             status = 'active', subscribed_at = to_timestamp($5), updated_at = now()",
    )
    .bind(cx.tenant_id.0)
    .bind(&customer_id)
    .bind(&subscription_id)
    .bind(&price_id)
    .bind(subscribed_at as f64)
    .execute(&cx.services.db)
    .await?;
    Ok(json!({ "customer_id": customer_id, "subscription_id": subscription_id, "price_id": price_id }))
}

/// Deleting the customer at Stripe cancels its subscriptions too; the
/// subscription is cancelled first anyway, so that no invoice is cut meanwhile.
async fn undo_billing<P>(cx: &StepContext<'_, P>) -> Result<(), StepError> {
    let Some(stripe) = &cx.services.stripe else { return Ok(()) };
    let recorded: Option<(String, Option<String>)> =
        sqlx::query_as("SELECT customer_id, subscription_id FROM tenant_billing WHERE tenant_id = $1")
            .bind(cx.tenant_id.0)
            .fetch_optional(&cx.services.db)
            .await?;
    let (customer_id, subscription_id) = match recorded {
        Some(ids) => ids,
        None => {
            // Crashed between Stripe's answer and our record: the same
            // idempotency key makes Stripe answer with the customer it made.
            let tenant = super::tenant(cx).await?;
            let id = stripe.create_customer(tenant.id, &tenant.name, &tenant.owner_email, &cx.key("customer")).await?;
            (id, None)
        }
    };
    if let Some(subscription_id) = subscription_id {
        stripe.cancel_subscription(&subscription_id, &cx.key("undo-subscription")).await?;
    }
    stripe.delete_customer(&customer_id, &cx.key("undo-customer")).await?;
    sqlx::query("DELETE FROM tenant_billing WHERE tenant_id = $1")
        .bind(cx.tenant_id.0)
        .execute(&cx.services.db)
        .await?;
    Ok(())
}

/// Where this onboarding placed the tenant: its cluster (AWS) and database.
fn placed<'a, P>(cx: &'a StepContext<'_, P>) -> Result<(Option<&'a str>, &'a str), StepError> {
    let placed = cx.outputs.get("database");
    let database = placed
        .and_then(|p| p.get("database"))
        .and_then(Value::as_str)
        .ok_or_else(|| StepError::Permanent("the database step recorded no database".into()))?;
    Ok((placed.and_then(|p| p.get("cluster")).and_then(Value::as_str), database))
}

async fn search<P: DatabaseProvider>(cx: &StepContext<'_, P>) -> Result<Value, StepError> {
    let language = cx.input.get("search_language").and_then(Value::as_str).unwrap_or("english");
    let (cluster, database) = placed(cx)?;
    let mut tx = super::tenant_transaction(cx, cluster, database).await?;
    sqlx::query("INSERT INTO search_settings (tenant_id, language) VALUES ($1, $2) ON CONFLICT (tenant_id) DO NOTHING")
        .bind(cx.tenant_id.0)
        .bind(language)
        .execute(&mut *tx)
        .await
        .map_err(super::transient)?;
    tx.commit().await.map_err(super::transient)?;
    Ok(json!({ "language": language }))
}

/// The sample product's id: derived from the tenant's, so a rerun finds it.
fn sample_product_id(tenant: uuid::Uuid) -> uuid::Uuid {
    uuid::Uuid::from_u128(tenant.as_u128() ^ 0x5a5a_0000_0000_0000_0000_0000_0000_0001)
}

async fn seed<P: DatabaseProvider>(cx: &StepContext<'_, P>) -> Result<Value, StepError> {
    let tenant = super::tenant(cx).await?;
    let plan = cx.services.plans.get(tenant.spec.plan.as_str()).map_err(|e| StepError::Permanent(e.to_string()))?;
    let id = sample_product_id(cx.tenant_id.0);
    let (cluster, database) = placed(cx)?;
    let mut tx = super::tenant_transaction(cx, cluster, database).await?;
    sqlx::query(
        "INSERT INTO products (tenant_id, id, name, description, price_minor, currency, category, tags, status, stock)
         VALUES ($1, $2, 'Sample product', 'Edit or archive me: your shop starts with one product to try things on.',
                 1000, $3, 'Getting started', ARRAY['sample'], 'draft', 10)
         ON CONFLICT (tenant_id, id) DO NOTHING",
    )
    .bind(cx.tenant_id.0)
    .bind(id)
    .bind(&plan.currency)
    .execute(&mut *tx)
    .await
    .map_err(super::transient)?;
    tx.commit().await.map_err(super::transient)?;
    Ok(json!({ "sample_product_id": id }))
}

/// Deletes what a step wrote in the tenant's database (`$1`: the sample product's id).
async fn delete_in_tenant_database<P: DatabaseProvider>(
    cx: &StepContext<'_, P>,
    statement: &'static str,
) -> Result<(), StepError> {
    // No database recorded: nothing can have been written.
    let Ok((cluster, database)) = placed(cx) else { return Ok(()) };
    let mut tx = match super::tenant_transaction(cx, cluster, database).await {
        Ok(tx) => tx,
        // The database is gone already: so is what was written there.
        Err(_) if !super::database_exists(cx, cluster, database).await? => return Ok(()),
        Err(e) => return Err(e),
    };
    let query = sqlx::query(statement);
    let query = if statement.contains("$1") { query.bind(sample_product_id(cx.tenant_id.0)) } else { query };
    query.execute(&mut *tx).await.map_err(super::transient)?;
    tx.commit().await.map_err(super::transient)
}

async fn welcome_email<P>(cx: &StepContext<'_, P>) -> Result<Value, StepError> {
    let tenant = super::tenant(cx).await?;
    let body = format!(
        "Welcome to Indigo, {}!\n\nYour shop `{}` is ready on the {} plan.\n",
        tenant.name, tenant.slug, tenant.spec.plan
    );
    let id: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO outbox_emails (id, tenant_id, idempotency_key, to_address, subject, body)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (idempotency_key) DO UPDATE SET idempotency_key = EXCLUDED.idempotency_key
         RETURNING id",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(cx.tenant_id.0)
    .bind(cx.key("email"))
    .bind(&tenant.owner_email)
    .bind(format!("Welcome to Indigo, {}", tenant.name))
    .bind(body)
    .fetch_one(&cx.services.db)
    .await?;
    Ok(json!({ "email_id": id }))
}

async fn undo_welcome_email<P>(cx: &StepContext<'_, P>) -> Result<(), StepError> {
    let deleted = sqlx::query("DELETE FROM outbox_emails WHERE idempotency_key = $1 AND sent_at IS NULL")
        .bind(cx.key("email"))
        .execute(&cx.services.db)
        .await?;
    if deleted.rows_affected() == 0 {
        tracing::info!(tenant = %cx.tenant_id, "welcome email already sent (or never written); nothing to withdraw");
    }
    Ok(())
}

async fn activate<P>(cx: &StepContext<'_, P>) -> Result<Value, StepError> {
    let mut conn = cx.services.db.acquire().await?;
    let mut tx = conn.begin().await?;
    let before = registry::get(&mut tx, &TenantRef::Id(cx.tenant_id)).await?;
    if before.spec.lifecycle == Lifecycle::Pending {
        let ready = Condition::new(READY, true, "Onboarded", "serving; onboarding completed");
        pending_status(&mut tx, cx.tenant_id, Phase::Ready, ready).await?;
        registry::advance_lifecycle(&mut tx, cx.tenant_id, Lifecycle::Pending, Lifecycle::Active).await?;
        let after = registry::get(&mut tx, &TenantRef::Id(cx.tenant_id)).await?;
        Audit {
            actor: &Actor::system("onboarding"),
            action: "tenant.activate",
            tenant_id: Some(cx.tenant_id),
            request_id: None,
            before: Some(json!(before)),
            after: Some(json!(after)),
        }
        .append(&mut tx)
        .await?;
    }
    tx.commit().await?;
    Ok(json!({}))
}

async fn undo_activate<P>(cx: &StepContext<'_, P>) -> Result<(), StepError> {
    let mut conn = cx.services.db.acquire().await?;
    registry::advance_lifecycle(&mut conn, cx.tenant_id, Lifecycle::Active, Lifecycle::Pending).await?;
    Ok(())
}

async fn publish<P>(cx: &StepContext<'_, P>) -> Result<Value, StepError> {
    let mut conn = cx.services.db.acquire().await?;
    let mut tx = conn.begin().await?;
    let existing: Option<i64> = sqlx::query_scalar(
        "SELECT id FROM events WHERE tenant_id = $1 AND kind = 'TenantCreated' AND data->>'workflow_id' = $2",
    )
    .bind(cx.tenant_id.0)
    .bind(cx.workflow_id.to_string())
    .fetch_optional(&mut *tx)
    .await?;
    let event_id = match existing {
        Some(id) => id,
        None => {
            let tenant = registry::get(&mut tx, &TenantRef::Id(cx.tenant_id)).await?;
            event(&mut tx, cx, &tenant).await?
        }
    };
    tx.commit().await?;
    Ok(json!({ "event_id": event_id }))
}

async fn event<P>(
    conn: &mut PgConnection,
    cx: &StepContext<'_, P>,
    tenant: &indigo_core::api::Tenant,
) -> Result<i64, sqlx::Error> {
    journal::publish(
        conn,
        Some(tenant.id),
        "TenantCreated",
        &format!("tenant {} onboarded on plan {}", tenant.slug, tenant.spec.plan),
        json!({
            "workflow_id": cx.workflow_id,
            "slug": tenant.slug,
            "plan": tenant.spec.plan,
            "isolation": tenant.spec.isolation,
            "database": cx.outputs.get("database"),
            "billing": cx.outputs.get("billing"),
        }),
    )
    .await
}
