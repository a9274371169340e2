//! Scheduled jobs, on `tokio-cron-scheduler`: the usage roll-up every minute
//! and the Stripe billing sync every hour (and on demand). Each job is
//! idempotent and takes a PostgreSQL advisory lock, so every daemon schedules
//! every job and whichever gets there first does the work; the `jobs` table
//! holds each job's last run, outcome and next run for the admin API.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use indigo_core::api::JobStatus;
use indigo_core::plan::PlanCatalog;
use indigo_tenantdb::TenantDatabases;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};

use crate::backups;
use crate::billing::Stripe;
use crate::failpoints::Failpoints;
use crate::metering::aws::{self, AwsUsage};
use crate::metering::{billing_sync, limits, parity, recommender, rollup, storage};
use crate::providers::ReachDatabases;

pub struct JobSpec {
    pub name: &'static str,
    /// Seconds, minutes, hours, day of month, month, day of week (UTC).
    pub schedule: &'static str,
    pub description: &'static str,
}

pub const JOBS: &[JobSpec] = &[
    JobSpec {
        name: rollup::JOB,
        schedule: "0 * * * * *",
        description: "usage events → per tenant, event type, hour and day",
    },
    JobSpec {
        name: billing_sync::JOB,
        schedule: "0 5 * * * *",
        description: "closed hours of billable usage → Stripe meter events",
    },
    JobSpec {
        name: parity::JOB,
        schedule: "0 50 * * * *",
        description: "usage Indigo reported to Stripe, per tenant, meter and hour → compared with what Stripe received",
    },
    JobSpec {
        name: limits::JOB,
        schedule: "15 * * * * *",
        description: "use against plan limits (local day, billing month) → LimitApproaching / LimitReached",
    },
    JobSpec {
        name: storage::JOB,
        schedule: "0 15 0 * * *",
        description: "each tenant's stored bytes → one storage_gb usage event per day",
    },
    JobSpec {
        name: recommender::JOB,
        schedule: "0 20 * * * *",
        description: "co-purchase counts of each tenant with `recommendations` recomputed from its orders",
    },
    JobSpec {
        name: aws::JOB,
        schedule: "30 * * * * *",
        description: "rolled-up usage → DynamoDB usage table and CloudWatch metrics (AWS provider)",
    },
    JobSpec {
        name: backups::JOB,
        schedule: "45 * * * * *",
        description: "each serving tenant backed up on its own when its newest backup is as old as its plan's RPO",
    },
    JobSpec {
        name: backups::DRILL_JOB,
        schedule: "0 55 * * * *",
        description: "each serving tenant's newest backup restored into a scratch database and checked against its checksums",
    },
    JobSpec {
        name: HOUSEKEEPING,
        schedule: "0 40 * * * *",
        description: "idempotency keys past their retention (24 h) pruned; export bundles past theirs removed",
    },
];

/// The job that prunes what is kept only for a while.
pub const HOUSEKEEPING: &str = "housekeeping";

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("no job `{0}`; jobs are {1}")]
    Unknown(String, String),
    #[error("another daemon is running `{0}` right now")]
    Busy(&'static str),
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// What the jobs act on.
pub struct Jobs {
    pub db: PgPool,
    /// `None`: billing is off and the billing sync has nothing to do.
    pub stripe: Option<Stripe>,
    /// `None`: the local provider, where PostgreSQL is the usage store.
    pub aws: Option<std::sync::Arc<AwsUsage>>,
    /// Where tenants' data lives: the restore drill's scratch databases.
    pub tenant_dbs: Arc<TenantDatabases>,
    /// How the storage, recommender and backups jobs reach a tenant's database.
    pub databases: Arc<dyn ReachDatabases>,
    /// The plans' limits, for the limits job.
    pub plans: Arc<PlanCatalog>,
    pub failpoints: Failpoints,
    /// Where the backups job keeps tenants' backups.
    pub backups: backups::BackupStore,
}

fn spec(name: &str) -> Result<&'static JobSpec, JobError> {
    JOBS.iter()
        .find(|j| j.name == name)
        .ok_or_else(|| JobError::Unknown(name.to_owned(), JOBS.iter().map(|j| j.name).collect::<Vec<_>>().join(", ")))
}

impl Jobs {
    /// Runs `name` now and records how it went. Busy when another daemon runs it.
    pub async fn run(&self, name: &str) -> Result<Value, JobError> {
        let spec = spec(name)?;
        let started = Utc::now();
        let result = match spec.name {
            rollup::JOB => rollup::roll_up(&self.db, &self.failpoints)
                .await
                .map(|r| r.map(|r| json!(r)))
                .map_err(|e| e.to_string()),
            billing_sync::JOB => match &self.stripe {
                None => Ok(Some(json!({ "billing": "off" }))),
                Some(stripe) => billing_sync::sync(&self.db, stripe, &self.failpoints)
                    .await
                    .map(|r| r.map(|r| json!(r)))
                    .map_err(|e| e.to_string()),
            },
            parity::JOB => match &self.stripe {
                None => Ok(Some(json!({ "billing": "off" }))),
                Some(stripe) => {
                    parity::check(&self.db, stripe).await.map(|r| Some(json!(r))).map_err(|e| e.to_string())
                }
            },
            limits::JOB => {
                limits::check_all(&self.db, &self.plans).await.map(|r| Some(json!(r))).map_err(|e| e.to_string())
            }
            storage::JOB => storage::measure_all(&self.db, self.databases.as_ref())
                .await
                .map(|r| Some(json!(r)))
                .map_err(|e| e.to_string()),
            recommender::JOB => recommender::refresh_all(&self.db, self.databases.as_ref(), &self.plans)
                .await
                .map(|r| Some(json!(r)))
                .map_err(|e| e.to_string()),
            aws::JOB => match &self.aws {
                None => Ok(Some(json!({ "provider": "local" }))),
                Some(mirror) => mirror
                    .mirror(&self.db, &self.plans, &self.failpoints)
                    .await
                    .map(|r| r.map(|r| json!(r)))
                    .map_err(|e| e.to_string()),
            },
            backups::JOB => {
                backups::run(&self.db, self.databases.as_ref(), &self.plans, &self.backups, &self.failpoints)
                    .await
                    .map(|r| r.map(|r| json!(r)))
                    .map_err(|e| e.to_string())
            }
            backups::DRILL_JOB => backups::drill_all(&self.db, &self.tenant_dbs, &self.backups)
                .await
                .map(|r| r.map(|r| json!(r)))
                .map_err(|e| e.to_string()),
            HOUSEKEEPING => match crate::idempotency::prune(&self.db).await {
                Ok(pruned) => crate::workflow::export::remove_expired(&self.db).await.map(|removed| {
                    Some(json!({ "idempotency_keys_pruned": pruned, "export_bundles_removed": removed }))
                }),
                Err(e) => Err(e.to_string()),
            },
            _ => unreachable!("every job in JOBS is matched"),
        };
        let (outcome, detail, error) = match &result {
            Ok(None) => return Err(JobError::Busy(spec.name)),
            Ok(Some(detail)) => ("ok", Some(detail.clone()), None),
            Err(error) => ("failed", None, Some(error.clone())),
        };
        sqlx::query(
            "INSERT INTO jobs (name, schedule, runs, last_started_at, last_finished_at, last_outcome, last_detail, last_error)
             VALUES ($1, $2, 1, $3, now(), $4, $5, $6)
             ON CONFLICT (name) DO UPDATE SET schedule = $2, runs = jobs.runs + 1, last_started_at = $3,
                 last_finished_at = now(), last_outcome = $4, last_detail = $5, last_error = $6",
        )
        .bind(spec.name)
        .bind(spec.schedule)
        .bind(started)
        .bind(outcome)
        .bind(&detail)
        .bind(&error)
        .execute(&self.db)
        .await?;
        metrics::counter!("indigo_job_runs_total", "job" => spec.name, "outcome" => outcome).increment(1);
        match result {
            Ok(_) => Ok(detail.unwrap_or(Value::Null)),
            Err(error) => Err(JobError::Failed(error)),
        }
    }

    /// Schedules every job; the returned scheduler runs them until shut down.
    pub async fn schedule(self: &Arc<Self>) -> Result<JobScheduler, JobSchedulerError> {
        let scheduler = JobScheduler::new().await?;
        for spec in JOBS {
            let jobs = self.clone();
            let job = Job::new_async(spec.schedule, move |id, mut scheduler| {
                let jobs = jobs.clone();
                Box::pin(async move {
                    match jobs.run(spec.name).await {
                        Ok(_) | Err(JobError::Busy(_)) => {}
                        Err(error) => tracing::warn!(job = spec.name, %error, "scheduled job failed"),
                    }
                    if let Ok(Some(next)) = scheduler.next_tick_for_job(id).await {
                        jobs.record_next_run(spec.name, next).await;
                    }
                })
            })?;
            let id = scheduler.add(job).await?;
            if let Ok(Some(next)) = scheduler.clone().next_tick_for_job(id).await {
                self.record_next_run(spec.name, next).await;
            }
        }
        scheduler.start().await?;
        Ok(scheduler)
    }

    async fn record_next_run(&self, name: &str, next: DateTime<Utc>) {
        let schedule = spec(name).map(|s| s.schedule).unwrap_or_default();
        let _ = sqlx::query(
            "INSERT INTO jobs (name, schedule, next_run_at) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET schedule = $2, next_run_at = $3",
        )
        .bind(name)
        .bind(schedule)
        .bind(next)
        .execute(&self.db)
        .await;
    }

    /// Every job with its last run, in definition order.
    pub async fn status(db: &PgPool) -> Result<Vec<JobStatus>, sqlx::Error> {
        let rows: Vec<JobRow> = sqlx::query_as(
            "SELECT name, runs, last_started_at, last_finished_at, last_outcome, last_error, last_detail, next_run_at
             FROM jobs",
        )
        .fetch_all(db)
        .await?;
        Ok(JOBS
            .iter()
            .map(|spec| {
                let row = rows.iter().find(|r| r.name == spec.name);
                JobStatus {
                    name: spec.name.into(),
                    schedule: spec.schedule.into(),
                    description: spec.description.into(),
                    runs: row.map_or(0, |r| r.runs),
                    last_started_at: row.and_then(|r| r.last_started_at),
                    last_finished_at: row.and_then(|r| r.last_finished_at),
                    last_outcome: row.and_then(|r| r.last_outcome.clone()),
                    last_error: row.and_then(|r| r.last_error.clone()),
                    last_detail: row.and_then(|r| r.last_detail.clone()),
                    next_run_at: row.and_then(|r| r.next_run_at),
                }
            })
            .collect())
    }
}

#[derive(sqlx::FromRow)]
struct JobRow {
    name: String,
    runs: i64,
    last_started_at: Option<DateTime<Utc>>,
    last_finished_at: Option<DateTime<Utc>>,
    last_outcome: Option<String>,
    last_error: Option<String>,
    last_detail: Option<Value>,
    next_run_at: Option<DateTime<Utc>>,
}
