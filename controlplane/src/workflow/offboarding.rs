//! Offboarding, started by `DELETE /v1/tenants/{slug}`:
//!
//! suspend → export → cancel_billing → delete_data → certificate → finish
//!
//! Until billing is cancelled everything can be undone (the tenant resumes,
//! the bundle is removed). From `cancel_billing` on there is no way back: a
//! failure there stops the workflow for an operator to retry, and it resumes.

use indigo_core::api::Tenant;
use indigo_core::tenant::{Condition, Isolation, Lifecycle, Phase};
use serde_json::{Value, json};
use sqlx::Connection;

use super::export;
use super::{Definition, Kind, StepContext, StepError, workflow_steps};
use crate::journal::Actor;
use crate::journal::{self, Audit};
use crate::providers::{DatabaseProvider, SiloTenant};
use crate::registry::{self, TenantRef};
use crate::status::{READY, SpecGeneration, StatusWrite};

pub struct Offboarding;

const REASON: &str = "offboarding";

workflow_steps! {
    pub enum Step {
        Suspend => "suspend",
        Export => "export",
        CancelBilling => "cancel_billing",
        DeleteData => "delete_data",
        Certificate => "certificate",
        Finish => "finish",
    }
}

impl Definition for Offboarding {
    const KIND: Kind = Kind::Offboarding;
    type Step = Step;
    const STAGES: &'static [&'static [Step]] = &[
        &[Step::Suspend],
        &[Step::Export],
        &[Step::CancelBilling],
        &[Step::DeleteData],
        &[Step::Certificate],
        &[Step::Finish],
    ];
    const POINT_OF_NO_RETURN: Option<Step> = Some(Step::CancelBilling);

    async fn run<P: DatabaseProvider>(step: Step, cx: &StepContext<'_, P>) -> Result<Value, StepError> {
        match step {
            Step::Suspend => suspend(cx).await,
            Step::Export => export_bundle(cx).await,
            Step::CancelBilling => cancel_billing(cx).await,
            Step::DeleteData => delete_data(cx).await,
            Step::Certificate => certificate(cx).await,
            Step::Finish => finish(cx).await,
        }
    }

    async fn compensate<P: DatabaseProvider>(step: Step, cx: &StepContext<'_, P>) -> Result<(), StepError> {
        match step {
            Step::Suspend => resume(cx).await,
            Step::Export => {
                let dir = bundle_dir(cx).await?;
                match tokio::fs::remove_dir_all(&dir).await {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(super::transient(e)),
                    _ => {}
                }
                Ok(export::forget(&cx.services.db, cx.workflow_id).await?)
            }
            // Past the point of no return: never undone.
            Step::CancelBilling | Step::DeleteData | Step::Certificate | Step::Finish => Ok(()),
        }
    }
}

async fn set_lifecycle<P>(cx: &StepContext<'_, P>, lifecycle: Lifecycle, reason: &str) -> Result<Tenant, StepError> {
    let mut conn = cx.services.db.acquire().await?;
    let mut tx = conn.begin().await?;
    let actor = Actor::system(REASON);
    let change =
        registry::set_lifecycle(&mut tx, &actor, None, &TenantRef::Id(cx.tenant_id), lifecycle, Some(reason)).await?;
    tx.commit().await?;
    Ok(change.tenant)
}

async fn suspend<P>(cx: &StepContext<'_, P>) -> Result<Value, StepError> {
    let tenant = super::tenant(cx).await?;
    // A rerun finds the tenant suspended already; the first run's record says what it was.
    if tenant.spec.lifecycle == Lifecycle::Active {
        set_lifecycle(cx, Lifecycle::Suspended, REASON).await?;
    }
    Ok(json!({ "previous_lifecycle": tenant.spec.lifecycle }))
}

async fn resume<P>(cx: &StepContext<'_, P>) -> Result<(), StepError> {
    let was_active = cx.output.and_then(|o| o.get("previous_lifecycle")).and_then(Value::as_str) == Some("active");
    let tenant = super::tenant(cx).await?;
    if was_active && tenant.spec.lifecycle == Lifecycle::Suspended {
        set_lifecycle(cx, Lifecycle::Active, "offboarding undone").await?;
    }
    Ok(())
}

async fn bundle_dir<P>(cx: &StepContext<'_, P>) -> Result<std::path::PathBuf, StepError> {
    let tenant = super::tenant(cx).await?;
    Ok(cx.services.export_dir.join(format!("{}-{}", tenant.slug, cx.workflow_id.simple())))
}

async fn export_bundle<P: DatabaseProvider>(cx: &StepContext<'_, P>) -> Result<Value, StepError> {
    let tenant = super::tenant(cx).await?;
    let dir = bundle_dir(cx).await?;
    let bundle = match &tenant.status.placement {
        Some(placement) => {
            let mut tx = super::tenant_transaction(cx, placement.cluster.as_deref(), &placement.database).await?;
            export::write(Some(&mut tx), &dir, &tenant, Some(&placement.database)).await?
        }
        None => export::write(None, &dir, &tenant, None).await?,
    };
    let remove_after = chrono::Utc::now()
        + chrono::Duration::from_std(cx.services.settings.export_retention).unwrap_or(chrono::Duration::MAX);
    export::record(&cx.services.db, cx.workflow_id, tenant.id, &bundle, remove_after).await?;
    let mut output = json!(bundle);
    output["remove_after"] = json!(remove_after);
    Ok(output)
}

async fn cancel_billing<P>(cx: &StepContext<'_, P>) -> Result<Value, StepError> {
    let account: Option<(String, Option<String>)> = sqlx::query_as(
        "SELECT customer_id, subscription_id FROM tenant_billing WHERE tenant_id = $1 AND status = 'active'",
    )
    .bind(cx.tenant_id.0)
    .fetch_optional(&cx.services.db)
    .await?;
    let Some((customer_id, subscription_id)) = account else { return Ok(json!({ "billing": "none" })) };
    let Some(stripe) = &cx.services.stripe else {
        return Err(StepError::Permanent(format!(
            "the tenant has Stripe customer {customer_id} but billing is not configured (stripe_api_base)"
        )));
    };
    if let Some(subscription_id) = &subscription_id {
        stripe.cancel_subscription(subscription_id, &cx.key("subscription")).await?;
    }
    stripe.delete_customer(&customer_id, &cx.key("customer")).await?;
    sqlx::query("UPDATE tenant_billing SET status = 'cancelled', updated_at = now() WHERE tenant_id = $1")
        .bind(cx.tenant_id.0)
        .execute(&cx.services.db)
        .await?;
    Ok(json!({ "customer_id": customer_id, "subscription_id": subscription_id, "customer": "deleted" }))
}

async fn delete_data<P: DatabaseProvider>(cx: &StepContext<'_, P>) -> Result<Value, StepError> {
    let mut tenant = super::tenant(cx).await?;
    if tenant.spec.lifecycle != Lifecycle::Deleted {
        tenant = set_lifecycle(cx, Lifecycle::Deleted, REASON).await?;
    }
    // A rerun after the placement was cleared finds the record of the first run.
    let Some(placement) = tenant.status.placement.clone() else {
        return Ok(cx.output.cloned().unwrap_or_else(|| json!({ "isolation": null, "rows_deleted": 0 })));
    };
    let rows_deleted = match placement.isolation {
        Isolation::Pool => cx.services.provider.delete_pool_rows(tenant.id).await?,
        Isolation::Silo => {
            cx.services.provider.delete_silo(&SiloTenant::of(&tenant, &cx.services.plans)?).await?;
            super::forget_database(cx, placement.cluster.as_deref(), &placement.database);
            0
        }
    };
    let mut conn = cx.services.db.acquire().await?;
    StatusWrite::new().placement(None).phase(Phase::Deleting).apply(&mut conn, cx.tenant_id).await?;
    Ok(json!({
        "isolation": placement.isolation,
        "database": placement.database,
        "database_dropped": placement.isolation == Isolation::Silo,
        "rows_deleted": rows_deleted,
    }))
}

async fn certificate<P>(cx: &StepContext<'_, P>) -> Result<Value, StepError> {
    let mut conn = cx.services.db.acquire().await?;
    let mut tx = conn.begin().await?;
    let existing: Option<i64> = sqlx::query_scalar(
        "SELECT id FROM audit_log WHERE tenant_id = $1 AND action = 'tenant.deletion_certificate'
           AND after->>'workflow_id' = $2",
    )
    .bind(cx.tenant_id.0)
    .bind(cx.workflow_id.to_string())
    .fetch_optional(&mut *tx)
    .await?;
    if existing.is_none() {
        let export = cx.outputs.get("export");
        Audit {
            actor: &Actor::system(REASON),
            action: "tenant.deletion_certificate",
            tenant_id: Some(cx.tenant_id),
            request_id: None,
            before: None,
            after: Some(json!({
                "workflow_id": cx.workflow_id,
                "tenant_id": cx.tenant_id,
                "certified_at": chrono::Utc::now(),
                "deleted": cx.outputs.get("delete_data"),
                "billing": cx.outputs.get("cancel_billing"),
                "export": {
                    "path": export.and_then(|e| e.get("path")),
                    "manifest_sha256": export.and_then(|e| e.get("manifest_sha256")),
                    "tables": export.and_then(|e| e.pointer("/manifest/tables")),
                    // Kept for hand-over until then; its removal is audited as `tenant.export_removed`.
                    "remove_after": export.and_then(|e| e.get("remove_after")),
                },
            })),
        }
        .append(&mut tx)
        .await?;
    }
    tx.commit().await?;
    Ok(json!({ "certified": true }))
}

async fn finish<P>(cx: &StepContext<'_, P>) -> Result<Value, StepError> {
    let mut conn = cx.services.db.acquire().await?;
    let mut tx = conn.begin().await?;
    let deleted = Condition::new(READY, false, "Deleted", "offboarded: data exported, billing cancelled, data deleted");
    let changed = StatusWrite::new()
        .phase(Phase::Deleted)
        .conditions(vec![deleted])
        .placement(None)
        .observed(SpecGeneration::Current)
        .unless_deleted()
        .apply(&mut tx, cx.tenant_id)
        .await?;
    if changed {
        let tenant = registry::get(&mut tx, &TenantRef::Id(cx.tenant_id)).await?;
        journal::publish(
            &mut tx,
            Some(cx.tenant_id),
            "TenantDeleted",
            &format!("tenant {} offboarded", tenant.slug),
            json!({ "workflow_id": cx.workflow_id, "export": cx.outputs.get("export").and_then(|e| e.get("path")) }),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(json!({}))
}
