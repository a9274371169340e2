//! The usage store on the AWS provider: rolled-up usage mirrored to the
//! reference design's DynamoDB usage table and to CloudWatch per-tenant
//! metrics (dimension `TenantId`), and each tenant's plan, features and limits
//! to its `indigo-tenant-features` table, as the job `usage_mirror`.
//!
//! DynamoDB items (`tenant_id`, `period` = UTC day) hold each event type's
//! total for the day, *set* from the roll-up rather than added to: the roll-up
//! recomputes totals, so setting them keeps the mirror exact however often it
//! runs. CloudWatch adds up what it is sent, so closed hours are sent once and
//! a window that grew is sent by the difference, recorded like Stripe's reports.

use aws_sdk_cloudwatch::primitives::DateTime as AwsDateTime;
use std::collections::BTreeMap;

use aws_sdk_cloudwatch::types::{Dimension, Metric, MetricDataQuery, MetricDatum, MetricStat, StandardUnit};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
};
use chrono::{DateTime, NaiveDate, Utc};
use indigo_core::plan::PlanCatalog;
use indigo_core::tenant::TenantId;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::db::AdvisoryLock;
use crate::failpoints::{Failpoints, Point};
use crate::providers::{MetricsProvider, ProviderError, ProviderFuture, empty_series};

pub const JOB: &str = "usage_mirror";

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("AWS {service}: {message}")]
    Aws { service: &'static str, message: String },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

fn aws(service: &'static str) -> impl Fn(String) -> MirrorError {
    move |message| MirrorError::Aws { service, message }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MirrorReport {
    pub items_written: u64,
    pub datapoints_sent: u64,
    /// Tenants whose features item was written or removed.
    pub features_written: u64,
}

/// CloudWatch's metric name for an event type (`api_call` → `ApiCall`).
pub fn metric_name(event_type: &str) -> String {
    event_type
        .split('_')
        .map(|word| {
            let mut chars = word.chars();
            chars.next().map(|c| c.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default()
        })
        .collect()
}

pub struct AwsUsage {
    dynamodb: aws_sdk_dynamodb::Client,
    cloudwatch: aws_sdk_cloudwatch::Client,
    pub table: String,
    pub namespace: String,
    pub features_table: String,
}

impl AwsUsage {
    /// Clients from the standard AWS configuration chain (`AWS_ENDPOINT_URL` included).
    pub async fn from_env(table: &str, namespace: &str) -> Self {
        Self::new(&aws_config::load_from_env().await, table, namespace)
    }

    pub fn new(config: &aws_config::SdkConfig, table: &str, namespace: &str) -> Self {
        Self {
            dynamodb: aws_sdk_dynamodb::Client::new(config),
            cloudwatch: aws_sdk_cloudwatch::Client::new(config),
            table: table.to_owned(),
            namespace: namespace.to_owned(),
            features_table: "indigo-tenant-features".into(),
        }
    }

    pub fn with_features_table(mut self, table: &str) -> Self {
        self.features_table = table.to_owned();
        self
    }

    /// Creates the usage table (`tenant_id` + `period`, on demand) unless it exists.
    pub async fn ensure_table(&self) -> Result<(), MirrorError> {
        self.ensure(&self.table, Some("period")).await
    }

    /// Creates a table keyed by `tenant_id` (and `range`, if any), on demand, unless it exists.
    async fn ensure(&self, table: &str, range: Option<&str>) -> Result<(), MirrorError> {
        let exists = self.dynamodb.describe_table().table_name(table).send().await.is_ok();
        if exists {
            return Ok(());
        }
        let key = |name: &str, kind: KeyType| {
            KeySchemaElement::builder().attribute_name(name).key_type(kind).build().map_err(|e| e.to_string())
        };
        let attribute = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(|e| e.to_string())
        };
        let mut create = self
            .dynamodb
            .create_table()
            .table_name(table)
            .billing_mode(BillingMode::PayPerRequest)
            .key_schema(key("tenant_id", KeyType::Hash).map_err(aws("dynamodb"))?)
            .attribute_definitions(attribute("tenant_id").map_err(aws("dynamodb"))?);
        if let Some(range) = range {
            create = create
                .key_schema(key(range, KeyType::Range).map_err(aws("dynamodb"))?)
                .attribute_definitions(attribute(range).map_err(aws("dynamodb"))?);
        }
        create
            .send()
            .await
            .map_err(|e| MirrorError::Aws { service: "dynamodb", message: format!("{}", e.into_service_error()) })?;
        Ok(())
    }

    /// One day's total of one event type for a tenant, as the table holds it.
    pub async fn day_total(&self, tenant: Uuid, day: NaiveDate, event_type: &str) -> Result<Option<f64>, MirrorError> {
        let item = self
            .dynamodb
            .get_item()
            .table_name(&self.table)
            .key("tenant_id", AttributeValue::S(tenant.to_string()))
            .key("period", AttributeValue::S(day.to_string()))
            .send()
            .await
            .map_err(|e| MirrorError::Aws { service: "dynamodb", message: format!("{}", e.into_service_error()) })?;
        Ok(item.item.and_then(|i| i.get(event_type).and_then(|v| v.as_n().ok()).and_then(|n| n.parse().ok())))
    }

    /// Mirrors what changed since the last run; `None` when another daemon is at it.
    pub async fn mirror(
        &self,
        db: &PgPool,
        plans: &PlanCatalog,
        failpoints: &Failpoints,
    ) -> Result<Option<MirrorReport>, MirrorError> {
        let Some(lock) = AdvisoryLock::try_acquire_dedicated(db, "indigo:job:usage_mirror".into()).await? else {
            return Ok(None);
        };
        self.ensure_table().await?;
        let mut report = MirrorReport::default();
        sqlx::query("INSERT INTO jobs (name, schedule) VALUES ($1, '') ON CONFLICT (name) DO NOTHING")
            .bind(JOB)
            .execute(db)
            .await?;
        let watermark: Option<DateTime<Utc>> =
            sqlx::query_scalar("SELECT watermark FROM jobs WHERE name = $1").bind(JOB).fetch_one(db).await?;
        let days: Vec<(Uuid, NaiveDate, String, f64, DateTime<Utc>)> = sqlx::query_as(
            "SELECT tenant_id, day, event_type, quantity, updated_at FROM usage_daily
             WHERE $1::timestamptz IS NULL OR updated_at > $1 ORDER BY updated_at",
        )
        .bind(watermark)
        .fetch_all(db)
        .await?;
        let mut newest = watermark;
        for (tenant, day, event_type, quantity, updated_at) in days {
            self.dynamodb
                .update_item()
                .table_name(&self.table)
                .key("tenant_id", AttributeValue::S(tenant.to_string()))
                .key("period", AttributeValue::S(day.to_string()))
                .update_expression("SET #total = :total, updated_at = :at")
                .expression_attribute_names("#total", &event_type)
                .expression_attribute_values(":total", AttributeValue::N(quantity.to_string()))
                .expression_attribute_values(":at", AttributeValue::S(updated_at.to_rfc3339()))
                .send()
                .await
                .map_err(|e| MirrorError::Aws {
                    service: "dynamodb",
                    message: format!("{}", e.into_service_error()),
                })?;
            report.items_written += 1;
            newest = newest.max(Some(updated_at));
        }
        if let Some(newest) = newest {
            sqlx::query("UPDATE jobs SET watermark = $2 WHERE name = $1").bind(JOB).bind(newest).execute(db).await?;
        }
        report.datapoints_sent = self.send_metrics(db, failpoints).await?;
        report.features_written = self.mirror_features(db, plans).await?;
        lock.release().await;
        Ok(Some(report))
    }

    /// Each tenant's plan, features (every feature of the catalogue, true or
    /// false) and limits (-1: unlimited), written when its plan or lifecycle
    /// changed since the last write; an offboarded tenant's item is removed.
    async fn mirror_features(&self, db: &PgPool, plans: &PlanCatalog) -> Result<u64, MirrorError> {
        self.ensure(&self.features_table, None).await?;
        let changed: Vec<(Uuid, String, String)> = sqlx::query_as(
            "SELECT t.id, t.plan, t.lifecycle FROM tenants t LEFT JOIN feature_mirror m ON m.tenant_id = t.id
             WHERE (m.tenant_id IS NULL AND t.lifecycle <> 'deleted') OR (m.plan, m.lifecycle) <> (t.plan, t.lifecycle)",
        )
        .fetch_all(db)
        .await?;
        let every_feature: std::collections::BTreeSet<&str> =
            plans.plans().iter().flat_map(|p| p.features.iter().map(String::as_str)).collect();
        let failed = |e: String| MirrorError::Aws { service: "dynamodb", message: e };
        for (tenant, plan_name, lifecycle) in &changed {
            let key = AttributeValue::S(tenant.to_string());
            match plans.get(plan_name) {
                Ok(plan) if lifecycle != "deleted" => {
                    let features = every_feature
                        .iter()
                        .map(|f| ((*f).to_owned(), AttributeValue::Bool(plan.has_feature(f))))
                        .collect();
                    let limit = |l: indigo_core::plan::Limit| match l {
                        indigo_core::plan::Limit::Unlimited => AttributeValue::N("-1".into()),
                        indigo_core::plan::Limit::AtMost(n) => AttributeValue::N(n.to_string()),
                    };
                    let limits = [
                        ("products", limit(plan.limits.products)),
                        ("ai_credits", limit(plan.limits.ai_credits)),
                        ("storage_gb", limit(plan.limits.storage_gb)),
                        ("team_members", limit(plan.limits.team_members)),
                        ("api_calls_per_day", limit(plan.limits.api_calls_per_day)),
                    ]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v))
                    .collect();
                    self.dynamodb
                        .put_item()
                        .table_name(&self.features_table)
                        .item("tenant_id", key)
                        .item("plan", AttributeValue::S(plan_name.clone()))
                        .item("lifecycle", AttributeValue::S(lifecycle.clone()))
                        .item("features", AttributeValue::M(features))
                        .item("limits", AttributeValue::M(limits))
                        .send()
                        .await
                        .map_err(|e| failed(format!("{}", e.into_service_error())))?;
                }
                _ => {
                    self.dynamodb
                        .delete_item()
                        .table_name(&self.features_table)
                        .key("tenant_id", key)
                        .send()
                        .await
                        .map_err(|e| failed(format!("{}", e.into_service_error())))?;
                }
            }
            sqlx::query(
                "INSERT INTO feature_mirror (tenant_id, plan, lifecycle) VALUES ($1, $2, $3)
                 ON CONFLICT (tenant_id) DO UPDATE SET plan = $2, lifecycle = $3, mirrored_at = now()",
            )
            .bind(tenant)
            .bind(plan_name)
            .bind(lifecycle)
            .execute(db)
            .await?;
        }
        Ok(changed.len() as u64)
    }

    /// A tenant's item of the features table: its plan and which features are on.
    pub async fn tenant_features(
        &self,
        tenant: Uuid,
    ) -> Result<Option<(String, std::collections::BTreeMap<String, bool>)>, MirrorError> {
        let item = self
            .dynamodb
            .get_item()
            .table_name(&self.features_table)
            .key("tenant_id", AttributeValue::S(tenant.to_string()))
            .send()
            .await
            .map_err(|e| MirrorError::Aws { service: "dynamodb", message: format!("{}", e.into_service_error()) })?;
        Ok(item.item.map(|item| {
            let plan = item.get("plan").and_then(|v| v.as_s().ok()).cloned().unwrap_or_default();
            let features = item
                .get("features")
                .and_then(|v| v.as_m().ok())
                .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), *v.as_bool().ok()?))).collect())
                .unwrap_or_default();
            (plan, features)
        }))
    }

    /// Closed hours not yet (fully) sent → CloudWatch datapoints, by the difference.
    async fn send_metrics(&self, db: &PgPool, failpoints: &Failpoints) -> Result<u64, MirrorError> {
        let due: Vec<(Uuid, String, DateTime<Utc>, f64, f64)> = sqlx::query_as(
            "SELECT h.tenant_id, h.event_type, h.hour, h.quantity, COALESCE(r.reported_quantity, 0)
             FROM usage_hourly h
             LEFT JOIN billing_reports r
               ON r.tenant_id = h.tenant_id AND r.meter = 'cloudwatch:' || h.event_type AND r.window_start = h.hour
             WHERE h.hour < date_trunc('hour', now(), 'UTC') AND h.hour >= now() - interval '14 days'
               AND h.quantity > COALESCE(r.reported_quantity, 0)
             ORDER BY h.hour",
        )
        .fetch_all(db)
        .await?;
        let mut sent = 0;
        // PutMetricData takes up to 1,000 datapoints per call.
        for chunk in due.chunks(500) {
            let data: Vec<MetricDatum> = chunk
                .iter()
                .map(|(tenant, event_type, hour, quantity, reported)| {
                    MetricDatum::builder()
                        .metric_name(metric_name(event_type))
                        .dimensions(Dimension::builder().name("TenantId").value(tenant.to_string()).build())
                        .timestamp(AwsDateTime::from_secs(hour.timestamp()))
                        .value(quantity - reported)
                        .unit(StandardUnit::Count)
                        .build()
                })
                .collect();
            self.cloudwatch
                .put_metric_data()
                .namespace(&self.namespace)
                .set_metric_data(Some(data))
                .send()
                .await
                .map_err(|e| MirrorError::Aws {
                    service: "cloudwatch",
                    message: format!("{}", e.into_service_error()),
                })?;
            failpoints.crash_at("job", JOB, Point::AfterRun);
            for (tenant, event_type, hour, quantity, _) in chunk {
                sqlx::query(
                    "INSERT INTO billing_reports (tenant_id, meter, window_start, reported_quantity, last_identifier)
                     VALUES ($1, 'cloudwatch:' || $2, $3, $4, 'put-metric-data')
                     ON CONFLICT (tenant_id, meter, window_start) DO UPDATE SET reported_quantity = $4, reported_at = now()",
                )
                .bind(tenant)
                .bind(event_type)
                .bind(hour)
                .bind(quantity)
                .execute(db)
                .await?;
                sent += 1;
            }
        }
        Ok(sent)
    }
}

/// Per-tenant metrics read back from CloudWatch with `GetMetricData`.
impl MetricsProvider for AwsUsage {
    fn hourly<'a>(
        &'a self,
        tenant: TenantId,
        metrics: &'a [&'a str],
        hours: &'a [DateTime<Utc>],
    ) -> ProviderFuture<'a, BTreeMap<String, Vec<f64>>> {
        Box::pin(async move {
            let mut series = empty_series(metrics, hours.len());
            let (Some(first), Some(last)) = (hours.first(), hours.last()) else { return Ok(series) };
            let queries = metrics.iter().enumerate().map(|(n, metric)| {
                let stat = MetricStat::builder()
                    .metric(
                        Metric::builder()
                            .namespace(&self.namespace)
                            .metric_name(metric_name(metric))
                            .dimensions(Dimension::builder().name("TenantId").value(tenant.to_string()).build())
                            .build(),
                    )
                    .period(3600)
                    .stat("Sum")
                    .build();
                // Query ids must start with a lowercase letter.
                MetricDataQuery::builder().id(format!("m{n}")).metric_stat(stat).build()
            });
            let mut pages = self
                .cloudwatch
                .get_metric_data()
                .set_metric_data_queries(Some(queries.collect()))
                .start_time(AwsDateTime::from_secs(first.timestamp()))
                .end_time(AwsDateTime::from_secs((*last + chrono::Duration::hours(1)).timestamp()))
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| {
                    ProviderError::Transient(format!("CloudWatch GetMetricData: {}", e.into_service_error()))
                })?;
                for result in page.metric_data_results() {
                    let metric = result.id().and_then(|id| id[1..].parse::<usize>().ok()).and_then(|n| metrics.get(n));
                    let Some(values) = metric.and_then(|m| series.get_mut(*m)) else { continue };
                    for (at, value) in result.timestamps().iter().zip(result.values()) {
                        let hour = DateTime::<Utc>::from_timestamp(at.secs(), 0);
                        if let Some(index) = hour.and_then(|h| hours.binary_search(&h).ok()) {
                            values[index] += value;
                        }
                    }
                }
            }
            Ok(series)
        })
    }
}
