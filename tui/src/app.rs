//! The console's state and how keys and data change it. No IO and no drawing:
//! a key or a loaded snapshot goes in, the new state and the effects to carry
//! out come out, so every behaviour is a plain unit test. The keys every view
//! shares are here; each view's own keys are in its file under `views/`.

use std::cmp::Ordering;
use std::collections::HashMap;

use chrono::{DateTime, Utc};
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use indigo_core::api::{
    AuditEntry, BillingParity, CatalogueCacheStats, Event, PlanChangePreview, RecommenderStatus, ReconcilePlan,
    ReconcilerStatus, RestoreInto, RestorePreview, Tenant, TenantBackups, TenantBilling, TenantCost, TenantMove,
    TenantUsage, UsageSeries, Workflow,
};
use indigo_core::plan::Plan;
use indigo_core::tenant::{Isolation, TenantId};

use crate::views;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Tenants,
    Detail,
    Events,
    Reconciler,
    Workflows,
    Cost,
    Help,
}

impl View {
    pub fn title(self) -> &'static str {
        match self {
            View::Tenants => "tenants",
            View::Detail => "tenant",
            View::Events => "events",
            View::Reconciler => "reconciler",
            View::Workflows => "workflows",
            View::Cost => "cost",
            View::Help => "help",
        }
    }
}

/// What the tenants table can be sorted by, in column order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    Slug,
    Name,
    Plan,
    Isolation,
    Lifecycle,
    Phase,
    Synced,
    Reconciled,
    Rate,
    Today,
}

impl Column {
    pub const ALL: [Column; 10] = [
        Column::Slug,
        Column::Name,
        Column::Plan,
        Column::Isolation,
        Column::Lifecycle,
        Column::Phase,
        Column::Synced,
        Column::Reconciled,
        Column::Rate,
        Column::Today,
    ];

    pub fn header(self) -> &'static str {
        match self {
            Column::Slug => "SLUG",
            Column::Name => "NAME",
            Column::Plan => "PLAN",
            Column::Isolation => "ISOL",
            Column::Lifecycle => "LIFE",
            Column::Phase => "PHASE",
            Column::Synced => "SYNC",
            Column::Reconciled => "AGE",
            Column::Rate => "REQ/S",
            Column::Today => "TODAY",
        }
    }

    fn compare(self, a: &Tenant, b: &Tenant, usage: &HashMap<TenantId, TenantUsage>) -> Ordering {
        let rate = |t: &Tenant| usage.get(&t.id).map_or(0.0, |u| u.requests_per_second);
        let today = |t: &Tenant| usage.get(&t.id).map_or(0, |u| u.api_calls_today);
        match self {
            Column::Rate => rate(a).total_cmp(&rate(b)),
            Column::Today => today(a).cmp(&today(b)),
            Column::Slug => a.slug.cmp(&b.slug),
            Column::Name => a.name.cmp(&b.name),
            Column::Plan => a.spec.plan.cmp(&b.spec.plan),
            Column::Isolation => isolation_label(a).cmp(&isolation_label(b)),
            Column::Lifecycle => a.spec.lifecycle.as_str().cmp(b.spec.lifecycle.as_str()),
            Column::Phase => a.status.phase.as_str().cmp(b.status.phase.as_str()),
            Column::Synced => a.status_current().cmp(&b.status_current()),
            Column::Reconciled => a.status.last_reconciled_at.cmp(&b.status.last_reconciled_at),
        }
    }
}

/// Where the data lives, and where the spec wants it when that differs (`pool→silo`).
pub fn isolation_label(tenant: &Tenant) -> String {
    match &tenant.status.placement {
        Some(p) if p.isolation != tenant.spec.isolation => format!("{}→{}", p.isolation, tenant.spec.isolation),
        Some(p) => p.isolation.to_string(),
        None => tenant.spec.isolation.to_string(),
    }
}

/// A change an operator asks for, carried out through the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    ChangePlan {
        slug: String,
        from: String,
        plan: String,
        /// Where the data moves when the new plan's isolation differs.
        moves_to: Option<Isolation>,
    },
    Suspend {
        slug: String,
    },
    Resume {
        slug: String,
    },
    ReconcileNow {
        slug: String,
    },
    SetReconcilePaused {
        slug: String,
        paused: bool,
    },
    Offboard {
        slug: String,
    },
    TakeBackup {
        slug: String,
    },
    /// Put the tenant's rows back as its backup `backup` holds them.
    Restore {
        slug: String,
        backup: uuid::Uuid,
        taken_at: chrono::DateTime<chrono::Utc>,
        into: RestoreInto,
    },
    RetryWorkflow {
        id: String,
        kind: String,
        slug: String,
    },
    CancelWorkflow {
        id: String,
        kind: String,
        slug: String,
    },
}

impl Command {
    pub fn slug(&self) -> &str {
        match self {
            Command::ChangePlan { slug, .. }
            | Command::Suspend { slug }
            | Command::Resume { slug }
            | Command::ReconcileNow { slug }
            | Command::SetReconcilePaused { slug, .. }
            | Command::Offboard { slug }
            | Command::TakeBackup { slug }
            | Command::Restore { slug, .. }
            | Command::RetryWorkflow { slug, .. }
            | Command::CancelWorkflow { slug, .. } => slug,
        }
    }

    /// What it will do, in a sentence, for the confirmation.
    pub fn describe(&self) -> String {
        match self {
            Command::ChangePlan { slug, from, plan, moves_to: Some(Isolation::Silo) } => {
                format!("Change {slug} from {from} to {plan}: its data moves to its own database.")
            }
            Command::ChangePlan { slug, from, plan, moves_to: Some(Isolation::Pool) } => {
                format!("Change {slug} from {from} to {plan}: its data moves into the shared pool.")
            }
            Command::ChangePlan { slug, from, plan, moves_to: None } => format!("Change {slug} from {from} to {plan}."),
            Command::Suspend { slug } => format!("Suspend {slug}: its storefront stops serving."),
            Command::Resume { slug } => format!("Resume {slug}: its storefront serves again."),
            Command::ReconcileNow { slug } => format!("Reconcile {slug} now."),
            Command::SetReconcilePaused { slug, paused: true } => format!("Pause reconciliation of {slug}."),
            Command::SetReconcilePaused { slug, paused: false } => format!("Resume reconciliation of {slug}."),
            Command::Offboard { slug } => format!("Offboard {slug}: its data is deleted."),
            Command::TakeBackup { slug } => format!("Back {slug} up now."),
            Command::Restore { slug, taken_at, into: RestoreInto::InPlace, .. } => format!(
                "Restore {slug} from its backup of {}: what it wrote since is lost (its rows as they are now are backed up first).",
                taken_at.format("%Y-%m-%d %H:%M:%S UTC")
            ),
            Command::Restore { slug, taken_at, into: RestoreInto::NewSilo, .. } => format!(
                "Restore {slug} into a new silo from its backup of {}: its silo is deleted and made again, its storefront answers 503 until the rows are in, what it wrote since is lost (its rows as they are now are backed up first, if its silo answers).",
                taken_at.format("%Y-%m-%d %H:%M:%S UTC")
            ),
            Command::RetryWorkflow { kind, slug, .. } => format!("Retry the {kind} of {slug} from where it stopped."),
            Command::CancelWorkflow { kind, slug, .. } => {
                format!("Cancel the {kind} of {slug}: its completed steps are undone.")
            }
        }
    }

    /// Dangerous commands need the slug typed back, not just `y`: those that
    /// stop a storefront, delete or replace data, or move it.
    pub fn dangerous(&self) -> bool {
        matches!(
            self,
            Command::Suspend { .. }
                | Command::Offboard { .. }
                | Command::Restore { .. }
                | Command::ChangePlan { moves_to: Some(_), .. }
        )
    }
}

/// What the runtime must do after a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Refresh,
    Run(Command),
    LoadDetail(String),
    DryRun(String),
    /// Work out what changing `slug` to `plan` would do, for its confirmation.
    PreviewPlanChange {
        slug: String,
        plan: String,
    },
    /// Work out what restoring `slug` from `backup` would do, for its confirmation.
    PreviewRestore {
        slug: String,
        backup: uuid::Uuid,
        into: RestoreInto,
    },
    Quit,
}

/// Data the runtime brings in.
// One value per refresh goes through a channel: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Loaded {
    Fleet {
        tenants: Vec<Tenant>,
        events: Vec<Event>,
        reconciler: Option<ReconcilerStatus>,
        usage: Vec<TenantUsage>,
        /// The most recent workflows, newest first.
        workflows: Vec<Workflow>,
        /// The most recent moves between pool and silo, newest first.
        moves: Vec<TenantMove>,
        /// Cost and margin per tenant, lowest margin first (empty without a cost model).
        costs: Vec<TenantCost>,
        /// Each billed tenant's usage at Stripe against what was reported.
        parity: Vec<BillingParity>,
        /// The plan catalogue, lowest tier first.
        plans: Vec<Plan>,
        at: DateTime<Utc>,
    },
    Detail {
        slug: String,
        events: Vec<Event>,
        audit: Vec<AuditEntry>,
        /// Hourly usage over the last day (empty when unavailable).
        usage: UsageSeries,
        /// Its Stripe account, when it is billed.
        billing: Option<TenantBilling>,
        /// Its catalogue reads in the data planes' cache over the last day.
        cache: Option<CatalogueCacheStats>,
        /// Where its built-in recommender stands.
        recommender: Option<RecommenderStatus>,
        /// Its own backups against its plan's RPO.
        backups: Option<TenantBackups>,
    },
    Plan(ReconcilePlan),
    /// What a plan change being confirmed would do.
    PlanChange(PlanChangePreview),
    Restore(RestorePreview),
    /// The API could not be reached, or refused the token.
    Failed {
        unauthorized: bool,
        message: String,
    },
    /// A command finished: its outcome for the status line.
    Done(Result<String, String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connection {
    Loading,
    Live,
    /// Showing the last data; the API is unreachable.
    Stale(String),
    Unauthorized(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Normal,
    Filter,
    Command,
    /// Typing the plan to change to.
    PlanPrompt {
        slug: String,
        from: String,
        /// The tenant's isolation now, to tell whether the new plan moves it.
        isolation: Isolation,
    },
    Confirm {
        command: Command,
    },
}

/// The tenant the detail view shows, and what was loaded for it.
#[derive(Debug, Clone, Default)]
pub struct Detail {
    pub slug: Option<String>,
    pub events: Vec<Event>,
    pub audit: Vec<AuditEntry>,
    /// Hourly usage over the last day.
    pub usage: UsageSeries,
    pub billing: Option<TenantBilling>,
    pub cache: Option<CatalogueCacheStats>,
    pub recommender: Option<RecommenderStatus>,
    pub backups: Option<TenantBackups>,
}

pub struct App {
    pub view: View,
    /// Where Esc leaves the help view to.
    back: View,
    pub mode: Mode,
    pub input: String,
    pub filter: String,
    pub sort: (Column, bool),
    pub selected: usize,
    /// The clock the views measure ages against: set by the runtime before
    /// each frame, so drawing stays a pure function of this state.
    pub now: DateTime<Utc>,
    pub tenants: Vec<Tenant>,
    pub events: Vec<Event>,
    pub reconciler: Option<ReconcilerStatus>,
    pub workflows: Vec<Workflow>,
    pub moves: Vec<TenantMove>,
    /// Slugs by tenant id, for the views that list other things than tenants.
    slugs: HashMap<TenantId, String>,
    /// The cost view's order: by API calls (busiest first) instead of by margin.
    pub cost_by_usage: bool,
    pub costs: Vec<TenantCost>,
    /// Tenants whose usage at Stripe differs from what was reported (the last parity check).
    pub out_of_parity: std::collections::HashSet<TenantId>,
    pub fetched_at: Option<DateTime<Utc>>,
    pub connection: Connection,
    pub detail: Detail,
    pub plan_preview: Option<ReconcilePlan>,
    /// What the plan change awaiting confirmation would do, once the control plane has said.
    pub change_preview: Option<PlanChangePreview>,
    /// What the restore being confirmed would do, once the control plane has said.
    pub restore_preview: Option<RestorePreview>,
    pub read_only: bool,
    pub status: String,
    pub api_url: String,
    pub who: String,
    /// The plan catalogue as the control plane serves it (`/v1/plans`).
    pub plans: Vec<Plan>,
    /// Recent traffic by tenant (for the REQ/S and TODAY columns).
    pub usage: HashMap<TenantId, TenantUsage>,
}

impl App {
    pub fn new(api_url: &str, read_only: bool) -> Self {
        Self {
            view: View::Tenants,
            back: View::Tenants,
            mode: Mode::Normal,
            input: String::new(),
            filter: String::new(),
            sort: (Column::Slug, false),
            selected: 0,
            now: Utc::now(),
            tenants: Vec::new(),
            events: Vec::new(),
            reconciler: None,
            workflows: Vec::new(),
            moves: Vec::new(),
            slugs: HashMap::new(),
            cost_by_usage: false,
            costs: Vec::new(),
            out_of_parity: Default::default(),
            fetched_at: None,
            connection: Connection::Loading,
            detail: Detail::default(),
            plan_preview: None,
            change_preview: None,
            restore_preview: None,
            read_only,
            status: String::new(),
            api_url: api_url.to_owned(),
            who: String::new(),
            plans: Vec::new(),
            usage: HashMap::new(),
        }
    }

    /// Live refresh pauses while the operator types.
    pub fn typing(&self) -> bool {
        !matches!(self.mode, Mode::Normal)
    }

    /// The filter being typed or in force: whether it is inverted (`!`), and
    /// the lowercase substring to look for.
    pub fn filter_parts(&self) -> (bool, String) {
        let filter = if self.mode == Mode::Filter { self.input.as_str() } else { self.filter.as_str() };
        match filter.strip_prefix('!') {
            Some(rest) => (true, rest.to_lowercase()),
            None => (false, filter.to_lowercase()),
        }
    }

    /// The tenants the table shows: filtered (substring; `!` inverts), then sorted.
    pub fn visible(&self) -> Vec<&Tenant> {
        let (invert, needle) = self.filter_parts();
        let mut rows: Vec<&Tenant> = self
            .tenants
            .iter()
            .filter(|t| {
                if needle.is_empty() {
                    return true;
                }
                let haystack = format!(
                    "{} {} {} {} {} {}",
                    t.slug,
                    t.name.to_lowercase(),
                    t.spec.plan,
                    isolation_label(t),
                    t.spec.lifecycle,
                    t.status.phase
                );
                haystack.contains(&needle) != invert
            })
            .collect();
        let (column, descending) = self.sort;
        rows.sort_by(|a, b| {
            let order = column.compare(a, b, &self.usage).then_with(|| a.slug.cmp(&b.slug));
            if descending { order.reverse() } else { order }
        });
        rows
    }

    pub fn selected_tenant(&self) -> Option<&Tenant> {
        match self.view {
            View::Detail => self.detail.slug.as_ref().and_then(|s| self.tenants.iter().find(|t| t.slug.as_str() == s)),
            _ => self.visible().get(self.selected).copied(),
        }
    }

    pub fn plan(&self, name: &str) -> Option<&Plan> {
        self.plans.iter().find(|p| p.name.as_str() == name)
    }

    pub fn apply(&mut self, loaded: Loaded) {
        match loaded {
            Loaded::Fleet { tenants, events, reconciler, usage, workflows, moves, costs, parity, plans, at } => {
                self.slugs = tenants.iter().map(|t| (t.id, t.slug.to_string())).collect();
                self.tenants = tenants;
                self.workflows = workflows;
                self.moves = moves;
                self.costs = costs;
                self.sort_costs();
                self.out_of_parity = parity.into_iter().filter(|p| !p.in_parity).map(|p| p.tenant_id).collect();
                self.usage = usage.into_iter().map(|u| (u.tenant_id, u)).collect();
                self.events = events;
                self.reconciler = reconciler;
                if !plans.is_empty() {
                    self.plans = plans;
                }
                self.fetched_at = Some(at);
                self.connection = Connection::Live;
                self.clamp_selection();
            }
            Loaded::Detail { slug, events, audit, usage, billing, cache, recommender, backups } => {
                if self.detail.slug.as_deref() == Some(slug.as_str()) {
                    self.detail =
                        Detail { slug: Some(slug), events, audit, usage, billing, cache, recommender, backups };
                }
            }
            Loaded::PlanChange(preview) => {
                if let Mode::Confirm { command: Command::ChangePlan { plan, .. } } = &self.mode
                    && *plan == preview.to_plan
                {
                    self.change_preview = Some(preview);
                }
            }
            Loaded::Restore(preview) => {
                if let Mode::Confirm { command: Command::Restore { backup, into, .. } } = &self.mode
                    && (*backup, *into) == (preview.backup_id, preview.into)
                {
                    self.restore_preview = Some(preview);
                }
            }
            Loaded::Plan(plan) => {
                self.status = if plan.actions.is_empty() {
                    "dry run: nothing to change".into()
                } else {
                    format!("dry run: {} change(s) pending", plan.actions.len())
                };
                self.plan_preview = Some(plan);
            }
            Loaded::Failed { unauthorized: true, message } => self.connection = Connection::Unauthorized(message),
            Loaded::Failed { unauthorized: false, message } => self.connection = Connection::Stale(message),
            Loaded::Done(Ok(message)) => self.status = message,
            Loaded::Done(Err(message)) => self.status = format!("failed: {message}"),
        }
    }

    fn clamp_selection(&mut self) {
        let len = self.rows();
        self.selected = self.selected.min(len.saturating_sub(1));
    }

    /// How many rows the current view selects among.
    fn rows(&self) -> usize {
        match self.view {
            View::Workflows => self.workflows.len(),
            View::Cost => self.costs.len(),
            _ => self.visible().len(),
        }
    }

    pub fn selected_workflow(&self) -> Option<&Workflow> {
        (self.view == View::Workflows).then(|| self.workflows.get(self.selected)).flatten()
    }

    /// A tenant's slug from its id, for views that list by id.
    pub fn slug_of(&self, id: TenantId) -> String {
        self.slugs.get(&id).cloned().unwrap_or_else(|| id.to_string())
    }

    /// Unprofitable tenants first, then by margin (lowest first) or by API
    /// calls over 30 days (most first).
    pub(crate) fn sort_costs(&mut self) {
        let calls = |c: &TenantCost| c.usage_30d.get("api_call").copied().unwrap_or(0.0);
        let by_usage = self.cost_by_usage;
        self.costs.sort_by(|a, b| {
            b.unprofitable
                .cmp(&a.unprofitable)
                .then_with(|| if by_usage { calls(b).total_cmp(&calls(a)) } else { a.margin.total_cmp(&b.margin) })
        });
    }

    /// The move a tier-change workflow is making, if it moves the tenant.
    pub fn move_of(&self, workflow: uuid::Uuid) -> Option<&TenantMove> {
        self.moves.iter().find(|m| m.workflow_id == workflow)
    }

    /// The workflows of one tenant, newest first.
    pub fn workflows_of(&self, id: TenantId) -> impl Iterator<Item = &Workflow> {
        self.workflows.iter().filter(move |w| w.tenant_id == id)
    }

    pub fn handle_key(&mut self, key: KeyEvent) -> Vec<Effect> {
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return vec![Effect::Quit];
        }
        match self.mode.clone() {
            Mode::Normal => self.normal_key(key),
            Mode::Filter => {
                match key.code {
                    KeyCode::Enter => {
                        self.filter = std::mem::take(&mut self.input);
                        self.mode = Mode::Normal;
                    }
                    KeyCode::Esc => {
                        self.input.clear();
                        self.filter.clear();
                        self.mode = Mode::Normal;
                    }
                    code => edit(&mut self.input, code),
                }
                self.selected = 0;
                vec![]
            }
            Mode::Command => match key.code {
                KeyCode::Enter => {
                    let command = std::mem::take(&mut self.input);
                    self.mode = Mode::Normal;
                    self.run_command(command.trim())
                }
                KeyCode::Esc => {
                    self.input.clear();
                    self.mode = Mode::Normal;
                    vec![]
                }
                code => {
                    edit(&mut self.input, code);
                    vec![]
                }
            },
            Mode::PlanPrompt { slug, from, isolation } => match key.code {
                KeyCode::Enter => {
                    let plan = std::mem::take(&mut self.input).trim().to_lowercase();
                    self.mode = Mode::Normal;
                    match self.plan(&plan) {
                        None if self.plans.is_empty() => {
                            self.status = "the plan catalogue has not loaded yet; try again in a moment".into()
                        }
                        None => {
                            let names: Vec<&str> = self.plans.iter().map(|p| p.name.as_str()).collect();
                            self.status = format!("unknown plan `{plan}`; plans are {}", names.join(", "));
                        }
                        Some(_) if plan == from => self.status = format!("{slug} is already on {plan}"),
                        Some(target) => {
                            let moves_to = (target.isolation != isolation).then_some(target.isolation);
                            self.change_preview = None;
                            let preview = Effect::PreviewPlanChange { slug: slug.clone(), plan: plan.clone() };
                            self.mode = Mode::Confirm { command: Command::ChangePlan { slug, from, plan, moves_to } };
                            return vec![preview];
                        }
                    }
                    vec![]
                }
                KeyCode::Esc => {
                    self.cancel();
                    vec![]
                }
                code => {
                    edit(&mut self.input, code);
                    vec![]
                }
            },
            Mode::Confirm { command } => {
                let confirmed = if command.dangerous() {
                    match key.code {
                        KeyCode::Enter => self.input == command.slug(),
                        KeyCode::Esc => {
                            self.cancel();
                            return vec![];
                        }
                        code => {
                            edit(&mut self.input, code);
                            return vec![];
                        }
                    }
                } else {
                    matches!(key.code, KeyCode::Char('y') | KeyCode::Char('Y'))
                };
                self.input.clear();
                self.mode = Mode::Normal;
                self.change_preview = None;
                self.restore_preview = None;
                if confirmed {
                    self.status = format!("{}…", command.describe());
                    vec![Effect::Run(command)]
                } else {
                    self.status = "cancelled".into();
                    vec![]
                }
            }
        }
    }

    fn cancel(&mut self) {
        self.input.clear();
        self.mode = Mode::Normal;
        self.change_preview = None;
        self.restore_preview = None;
        self.status = "cancelled".into();
    }

    /// The keys every view shares; the rest go to the view on screen.
    fn normal_key(&mut self, key: KeyEvent) -> Vec<Effect> {
        let rows = self.rows();
        match key.code {
            KeyCode::Char('q') => return vec![Effect::Quit],
            KeyCode::Char('?') => self.show(View::Help),
            KeyCode::Char(':') => self.mode = Mode::Command,
            KeyCode::Char('/') => {
                self.input = self.filter.clone();
                self.mode = Mode::Filter;
            }
            KeyCode::Esc => {
                self.view = if self.view == View::Help { self.back } else { View::Tenants };
                self.plan_preview = None;
            }
            KeyCode::Char('j') | KeyCode::Down => self.selected = (self.selected + 1).min(rows.saturating_sub(1)),
            KeyCode::Char('k') | KeyCode::Up => self.selected = self.selected.saturating_sub(1),
            KeyCode::Char('g') | KeyCode::Home => self.selected = 0,
            KeyCode::Char('G') | KeyCode::End => self.selected = rows.saturating_sub(1),
            KeyCode::PageDown => self.selected = (self.selected + 20).min(rows.saturating_sub(1)),
            KeyCode::PageUp => self.selected = self.selected.saturating_sub(20),
            KeyCode::Char('r') if key.modifiers.contains(KeyModifiers::CONTROL) => return vec![Effect::Refresh],
            _ => return views::on_key(self, key),
        }
        vec![]
    }

    /// Every action is confirmed first, and refused in read-only mode.
    pub(crate) fn ask_to_confirm(&mut self, command: Command) -> Vec<Effect> {
        if self.read_only {
            return self.refuse();
        }
        self.input.clear();
        self.mode = Mode::Confirm { command };
        vec![]
    }

    pub(crate) fn refuse(&mut self) -> Vec<Effect> {
        self.status = "read-only: actions are disabled".into();
        vec![]
    }

    fn show(&mut self, view: View) {
        if self.view != View::Help {
            self.back = self.view;
        }
        self.view = view;
    }

    fn run_command(&mut self, command: &str) -> Vec<Effect> {
        match command {
            "tenants" | "t" => self.show(View::Tenants),
            "events" | "ev" => self.show(View::Events),
            "reconciler" | "rec" => self.show(View::Reconciler),
            "moves" | "workflows" | "wf" => self.show(View::Workflows),
            "cost" | "usage" => self.show(View::Cost),
            "help" | "h" => self.show(View::Help),
            "q" | "quit" => return vec![Effect::Quit],
            other => {
                self.status =
                    format!("unknown command `:{other}`; try :tenants, :events, :reconciler, :workflows, :cost")
            }
        }
        self.selected = 0;
        vec![]
    }
}

fn edit(input: &mut String, code: KeyCode) {
    match code {
        KeyCode::Backspace => {
            input.pop();
        }
        KeyCode::Char(c) => input.push(c),
        _ => {}
    }
}
