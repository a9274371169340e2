//! The Indigo operator console as a library, run by the `indigo-tui` binary.
//! [`app`] holds the state and the keys every view shares, [`views`] draws it,
//! one file per view with that view's own keys; this module is the runtime
//! that feeds them: terminal input, the admin API polled in the background,
//! and the commands an operator confirms.

pub mod app;
pub mod theme;
pub mod views;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use crossterm::event::{self, Event as TermEvent, KeyEventKind};
use indigo_client::{AdminClient, ClientError, EventQuery, MoveQuery, TenantQuery, WorkflowQuery};
use indigo_core::tenant::Role;
use serde::Deserialize;
use tokio::sync::{mpsc, watch};

use crate::app::{App, Command, Effect, Loaded};
use crate::theme::Theme;

#[derive(Debug, clap::Parser)]
#[command(
    name = "indigo-tui",
    version,
    about = "Indigo operator console: watch the fleet of tenants and act on them (change plan, suspend, resume).",
    long_about = "Indigo operator console: watch the fleet of tenants and act on them (change plan, suspend, resume).\n\n\
                  It talks only to the control plane's admin API, with your token and its role: a viewer\n\
                  token (or --read-only) gives a console that watches but cannot act. Press ? inside for keys.\n\
                  Settings come from flags, INDIGO_* variables, then the config file."
)]
pub struct Cli {
    /// Admin API base URL [default: http://127.0.0.1:8080]
    #[arg(long, env = "INDIGO_API_URL")]
    pub api_url: Option<String>,
    /// Bearer token for the admin API [default: the one `indigo up` wrote to .indigo/admin.token]
    #[arg(long, env = "INDIGO_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Refresh interval in milliseconds [default: 2000]
    #[arg(long, env = "INDIGO_TUI_REFRESH_MS")]
    pub refresh_ms: Option<u64>,
    /// `color` or `mono` [default: color, mono when NO_COLOR is set]
    #[arg(long, env = "INDIGO_TUI_THEME")]
    pub theme: Option<String>,
    /// Watch only: every action is disabled
    #[arg(long)]
    pub read_only: bool,
    /// Config file [default: $XDG_CONFIG_HOME/indigo/tui.toml or ~/.config/indigo/tui.toml]
    #[arg(long, env = "INDIGO_TUI_CONFIG")]
    pub config: Option<PathBuf>,
}

/// The config file: the same keys as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    api_url: Option<String>,
    token: Option<String>,
    refresh_ms: Option<u64>,
    theme: Option<String>,
    read_only: Option<bool>,
}

/// Settings after flags, environment and file are merged.
#[derive(Debug, Clone)]
pub struct Settings {
    pub api_url: String,
    pub token: Option<String>,
    pub refresh: Duration,
    pub theme: Theme,
    pub read_only: bool,
}

impl Cli {
    pub fn settings(self) -> anyhow::Result<Settings> {
        let path = self.config.clone().or_else(|| {
            let base = std::env::var_os("XDG_CONFIG_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
            Some(base.join("indigo/tui.toml"))
        });
        let file: FileConfig = match &path {
            Some(path) if path.exists() => {
                let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
                toml::from_str(&text).map_err(|e| anyhow::anyhow!("config file {}: {}", path.display(), e.message()))?
            }
            _ => FileConfig::default(),
        };
        let theme = match self.theme.or(file.theme).as_deref() {
            Some("mono") => Theme { color: false },
            Some("color") => Theme { color: true },
            Some(other) => anyhow::bail!("theme must be `color` or `mono`, not `{other}`"),
            None => Theme { color: std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) },
        };
        let token = self
            .token
            .or(file.token)
            .or_else(|| std::fs::read_to_string(".indigo/admin.token").ok().map(|t| t.trim().to_owned()));
        Ok(Settings {
            api_url: self.api_url.or(file.api_url).unwrap_or_else(|| "http://127.0.0.1:8080".into()),
            token,
            refresh: Duration::from_millis(self.refresh_ms.or(file.refresh_ms).unwrap_or(2000).max(200)),
            theme,
            read_only: self.read_only || file.read_only.unwrap_or(false),
        })
    }
}

fn failed(error: ClientError) -> Loaded {
    let unauthorized = matches!(&error, ClientError::Api { status, .. } if status.as_u16() == 401);
    Loaded::Failed { unauthorized, message: error.to_string() }
}

async fn fetch_fleet(client: &AdminClient) -> Result<Loaded, ClientError> {
    let mut query = TenantQuery { limit: Some(500), ..Default::default() };
    let mut tenants = Vec::new();
    loop {
        let page = client.list_tenants(&query).await?;
        tenants.extend(page.items);
        match page.next_cursor {
            Some(cursor) => query.cursor = Some(cursor),
            None => break,
        }
    }
    let newest = client.events(&EventQuery { limit: Some(1000), ..Default::default() }).await?;
    let reconciler = client.reconciler().await.ok();
    let usage = client.usage_summary().await.unwrap_or_default();
    let workflows = client.workflows(&WorkflowQuery { limit: Some(200), ..Default::default() }).await?;
    let moves = client.moves(&MoveQuery { limit: Some(50), ..Default::default() }).await.unwrap_or_default();
    // A control plane without a cost model answers 503: the view says so.
    let costs = client.costs().await.unwrap_or_default();
    // Without billing there is nothing to compare: none.
    let parity = client.billing_parity().await.unwrap_or_default();
    let plans = client.plans().await?;
    Ok(Loaded::Fleet {
        tenants,
        events: newest.items,
        reconciler,
        usage,
        workflows,
        moves,
        costs,
        parity,
        plans,
        at: chrono::Utc::now(),
    })
}

/// Polls the fleet every `refresh` (not while the operator types), backing off when the API is away.
async fn poll(
    client: AdminClient,
    refresh: Duration,
    typing: watch::Receiver<bool>,
    kick: mpsc::UnboundedReceiver<()>,
    out: mpsc::UnboundedSender<Loaded>,
) {
    let mut kick = kick;
    let mut backoff = refresh;
    loop {
        if !*typing.borrow() {
            match fetch_fleet(&client).await {
                Ok(loaded) => {
                    backoff = refresh;
                    if out.send(loaded).is_err() {
                        return;
                    }
                }
                Err(error) => {
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    if out.send(failed(error)).is_err() {
                        return;
                    }
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = kick.recv() => {}
        }
    }
}

async fn execute(client: &AdminClient, command: &Command) -> Result<String, ClientError> {
    let key = uuid::Uuid::new_v4().to_string();
    match command {
        Command::ChangePlan { slug, plan, .. } => {
            client.change_plan(slug, plan, &key).await?;
            Ok(format!("{slug}: plan change to {plan} recorded"))
        }
        Command::Suspend { slug } => {
            client.suspend(slug, Some("from the console".into()), &key).await.map(|_| format!("{slug} suspended"))
        }
        Command::Resume { slug } => {
            client.resume(slug, Some("from the console".into()), &key).await.map(|_| format!("{slug} resumed"))
        }
        Command::ReconcileNow { slug } => {
            client.reconcile_now(slug).await.map(|_| format!("{slug} queued for reconcile"))
        }
        Command::SetReconcilePaused { slug, paused } => client
            .set_reconcile_paused(slug, *paused, &key)
            .await
            .map(|_| format!("reconciliation of {slug} {}", if *paused { "paused" } else { "resumed" })),
        Command::Offboard { slug } => {
            client.delete(slug, Some("from the console".into()), &key).await.map(|_| format!("{slug} offboarding"))
        }
        Command::TakeBackup { slug } => {
            client.take_backup(slug, &key).await.map(|backup| format!("{slug} backed up: {} rows", backup.rows))
        }
        Command::Restore { slug, backup, into, .. } => {
            client.restore(slug, *backup, *into, &key).await.map(|_| format!("{slug}: restore from its backup started"))
        }
        Command::RetryWorkflow { id, kind, slug } => {
            client.retry_workflow(id, &key).await.map(|w| format!("{kind} of {slug} retried (attempt {})", w.attempt))
        }
        Command::CancelWorkflow { id, kind, slug } => {
            client.cancel_workflow(id, &key).await.map(|_| format!("{kind} of {slug}: cancellation requested"))
        }
    }
}

/// Fetches a tenant's events and audit trail in the background.
fn load_detail(client: &AdminClient, out: &mpsc::UnboundedSender<Loaded>, slug: String) {
    let (client, out) = (client.clone(), out.clone());
    tokio::spawn(async move {
        let query = EventQuery { tenant: Some(slug.clone()), limit: Some(200), ..Default::default() };
        let (events, audit, usage, billing, cache, recommender, backups) = tokio::join!(
            client.events(&query),
            client.tenant_audit(&slug, 200),
            client.usage_series(&slug, 24),
            client.billing(&slug),
            client.catalogue_cache(&slug),
            client.recommender(&slug),
            client.backups(&slug)
        );
        if let (Ok(events), Ok(audit)) = (events, audit) {
            let _ = out.send(Loaded::Detail {
                slug,
                events: events.items,
                audit: audit.items,
                usage: usage.unwrap_or_default(),
                billing: billing.ok(),
                cache: cache.ok(),
                recommender: recommender.ok(),
                backups: backups.ok(),
            });
        }
    });
}

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let client = AdminClient::new(&settings.api_url, settings.token.clone());
    let mut app = App::new(&settings.api_url, settings.read_only);
    if let Ok(me) = client.whoami().await {
        app.who = format!("{} ({})", me.name, me.role);
        app.read_only |= me.role == Role::Viewer;
    }
    let (loaded_tx, mut loaded_rx) = mpsc::unbounded_channel::<Loaded>();
    let (typing_tx, typing_rx) = watch::channel(false);
    let (kick_tx, kick_rx) = mpsc::unbounded_channel::<()>();
    let poller = tokio::spawn(poll(client.clone(), settings.refresh, typing_rx, kick_rx, loaded_tx.clone()));
    let (key_tx, mut key_rx) = mpsc::unbounded_channel();
    // Terminal input blocks; it gets a thread of its own.
    std::thread::spawn(move || {
        while let Ok(event) = event::read() {
            if let TermEvent::Key(key) = event
                && key.kind == KeyEventKind::Press
                && key_tx.send(key).is_err()
            {
                break;
            }
        }
    });

    // Restores the terminal on every exit, panics included.
    let mut terminal = ratatui::init();
    let outcome = async {
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        loop {
            app.now = chrono::Utc::now();
            terminal.draw(|frame| views::draw(frame, &app, settings.theme))?;
            tokio::select! {
                Some(key) = key_rx.recv() => {
                    for effect in app.handle_key(key) {
                        match effect {
                            Effect::Quit => return Ok::<(), anyhow::Error>(()),
                            Effect::Refresh => { let _ = kick_tx.send(()); }
                            Effect::Run(command) => {
                                let (client, out, kick) = (client.clone(), loaded_tx.clone(), kick_tx.clone());
                                tokio::spawn(async move {
                                    let outcome = execute(&client, &command).await.map_err(|e| e.to_string());
                                    let _ = out.send(Loaded::Done(outcome));
                                    let _ = kick.send(());
                                });
                            }
                            Effect::LoadDetail(slug) => load_detail(&client, &loaded_tx, slug),
                            Effect::PreviewPlanChange { slug, plan } => {
                                let (client, out) = (client.clone(), loaded_tx.clone());
                                tokio::spawn(async move {
                                    let loaded = match client.preview_plan_change(&slug, &plan).await {
                                        Ok(preview) => Loaded::PlanChange(preview),
                                        Err(error) => Loaded::Done(Err(format!("preview: {error}"))),
                                    };
                                    let _ = out.send(loaded);
                                });
                            }
                            Effect::PreviewRestore { slug, backup, into } => {
                                let (client, out) = (client.clone(), loaded_tx.clone());
                                tokio::spawn(async move {
                                    let loaded = match client.preview_restore(&slug, backup, into).await {
                                        Ok(preview) => Loaded::Restore(preview),
                                        Err(error) => Loaded::Done(Err(format!("preview: {error}"))),
                                    };
                                    let _ = out.send(loaded);
                                });
                            }
                            Effect::DryRun(slug) => {
                                let (client, out) = (client.clone(), loaded_tx.clone());
                                tokio::spawn(async move {
                                    let loaded = match client.reconcile_plan(&slug).await {
                                        Ok(plan) => Loaded::Plan(plan),
                                        Err(error) => Loaded::Done(Err(error.to_string())),
                                    };
                                    let _ = out.send(loaded);
                                });
                            }
                        }
                    }
                    let _ = typing_tx.send(app.typing());
                }
                Some(loaded) = loaded_rx.recv() => {
                    let fleet = matches!(loaded, Loaded::Fleet { .. });
                    app.apply(loaded);
                    // The detail view follows the live refresh too.
                    if fleet && app.view == app::View::Detail && let Some(slug) = app.detail.slug.clone() {
                        load_detail(&client, &loaded_tx, slug);
                    }
                }
                _ = ticker.tick() => {}
            }
        }
    }
    .await;
    ratatui::restore();
    poller.abort();
    outcome
}
