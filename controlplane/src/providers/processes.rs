//! The local compute provider: data-plane services as `indigo-dataplane`
//! processes that the control plane starts, watches and stops. The pool's
//! replicas share one address (SO_REUSEPORT: the kernel spreads connections,
//! as a load balancer would); a silo tenant's service gets an address of its
//! own and serves that tenant only.
//!
//! The control plane is the scheduler here: a replica that dies is not
//! restarted behind the reconciler's back. It is reported as drift, and the
//! reconciler restores it (and records what it repaired).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use indigo_core::tenant::TenantId;
use tokio::process::{Child, Command};
use tokio::sync::{Mutex, broadcast, oneshot};

use super::{Autoscaling, ComputeProvider, POOL_SERVICE, ProviderError, ProviderFuture, ServiceSpec, ServiceState};
use crate::config::Secret;

/// How a data-plane process is started.
#[derive(Clone)]
pub struct Launch {
    /// The program and the arguments before the data plane's own (`indigo dataplane`).
    pub program: PathBuf,
    pub subcommand: Vec<String>,
    pub control_plane_url: String,
    pub credentials: Credentials,
    pub jwt_secret: Secret,
    /// Each replica spools undeliverable usage under its own directory here.
    pub spool_dir: PathBuf,
    /// Where the pool's replicas serve.
    pub pool_listen: SocketAddr,
    /// Redis through which the replicas share each tenant's plan rate.
    pub redis_url: Option<String>,
    /// The app role's database password, when it has one.
    pub database_password: Option<Secret>,
    /// Where the replicas export their traces.
    pub traces: indigo_core::traces::TraceExport,
}

/// What a data plane authenticates to the admin API with.
#[derive(Clone)]
pub enum Credentials {
    /// One token for every data plane, issued elsewhere.
    Shared(Secret),
    /// An identity of its own per service (role `dataplane`, named as the
    /// service, bound to the silo tenant it serves), minted in this control
    /// database when the service starts and revoked when it is deleted.
    PerService(sqlx::PgPool),
}

/// A replica that dies sooner than this after starting is crashing, not drifting.
const QUICK_EXIT: Duration = Duration::from_secs(10);
const RESTART_PAUSE_CAP: Duration = Duration::from_secs(60);

struct Replica {
    started: Instant,
    exited: Arc<AtomicBool>,
    stop: oneshot::Sender<()>,
    watcher: tokio::task::JoinHandle<()>,
}

impl Replica {
    fn alive(&self) -> bool {
        !self.exited.load(Ordering::Acquire)
    }
}

/// Slot `i` of a service spools under `<spool_dir>/<service>/<i>`, so a
/// restored replica picks up what its predecessor could not send.
#[derive(Default)]
struct Slot {
    replica: Option<Replica>,
    /// Replicas in a row that died within [`QUICK_EXIT`] of starting.
    quick_exits: u32,
}

impl Slot {
    /// Whether a replica may start here now; a crashing one waits, doubling
    /// each time, so that a broken binary or a taken port is not a busy loop.
    fn may_start(&mut self, now: Instant) -> Result<(), Duration> {
        let Some(dead) = self.replica.as_ref() else { return Ok(()) };
        let lived = now.duration_since(dead.started);
        if lived >= QUICK_EXIT {
            self.quick_exits = 0;
            return Ok(());
        }
        let pause = Duration::from_millis(500).saturating_mul(1 << self.quick_exits.min(10)).min(RESTART_PAUSE_CAP);
        if lived >= pause {
            self.quick_exits += 1;
            Ok(())
        } else {
            Err(pause - lived)
        }
    }
}

struct Service {
    address: SocketAddr,
    /// Its replicas' environment: settings and secrets (the token they present
    /// to the admin API among them).
    environment: Environment,
    /// Whether that is all they get (a task definition's, as in a container),
    /// rather than added to the control plane's own environment.
    only: bool,
    slots: Vec<Slot>,
}

/// Variables a replica is started with.
pub type Environment = Vec<(String, String)>;

impl Service {
    fn running(&self) -> u32 {
        let alive = self.slots.iter().filter_map(|s| s.replica.as_ref()).filter(|r| r.alive()).count();
        u32::try_from(alive).unwrap_or(u32::MAX)
    }

    fn state(&self) -> ServiceState {
        ServiceState {
            replicas: self.running(),
            address: Some(format!("http://{}", self.address)),
            autoscaling: Autoscaling::NotScaled,
        }
    }
}

pub struct LocalProcesses {
    launch: Launch,
    services: Mutex<HashMap<String, Service>>,
    drift: broadcast::Sender<Option<TenantId>>,
    /// Set by [`LocalProcesses::stop_all`]: nothing starts after shutdown began.
    stopping: AtomicBool,
}

impl LocalProcesses {
    pub fn new(launch: Launch) -> Self {
        Self { launch, services: Mutex::default(), drift: broadcast::channel(256).0, stopping: AtomicBool::new(false) }
    }

    /// The environment of `spec`'s replicas when the control plane itself
    /// says what they need: where it is, its token, the JWT secret, Redis.
    async fn environment_for(&self, spec: &ServiceSpec) -> Result<Environment, ProviderError> {
        let launch = &self.launch;
        let token = match &launch.credentials {
            Credentials::Shared(token) => token.clone(),
            Credentials::PerService(db) => crate::identity::mint_dataplane_token(db, &spec.name, spec.tenant)
                .await
                .map_err(|e| ProviderError::Transient(format!("cannot give {} an identity: {e}", spec.name)))?,
        };
        let mut environment = vec![
            ("INDIGO_CONTROL_PLANE_URL".to_owned(), launch.control_plane_url.clone()),
            ("INDIGO_CONTROL_PLANE_TOKEN".to_owned(), token.expose().to_owned()),
            ("INDIGO_JWT_SECRET".to_owned(), launch.jwt_secret.expose().to_owned()),
        ];
        if let Some(tenant) = spec.tenant {
            environment.push(("INDIGO_DATAPLANE_TENANT".to_owned(), tenant.to_string()));
        }
        if let Some(url) = &launch.redis_url {
            environment.push(("INDIGO_REDIS_URL".to_owned(), url.clone()));
        }
        if let Some(password) = &launch.database_password {
            environment.push(("INDIGO_DATABASE_PASSWORD".to_owned(), password.expose().to_owned()));
        }
        environment.extend(launch.traces.environment());
        Ok(environment)
    }

    /// A replica of `spec` in `slot`, serving on `address` with `environment`.
    /// Secrets go by environment, not arguments, which `ps` shows; the address
    /// and the spool are arguments, which win over the environment (as a
    /// container's port and volume mappings do).
    fn command(&self, spec: &ServiceSpec, address: SocketAddr, environment: &Environment, slot: usize) -> Command {
        let launch = &self.launch;
        let mut command = Command::new(&launch.program);
        command
            .args(&launch.subcommand)
            // Should the control plane die without stopping it (SIGKILL), the data plane follows.
            .arg("--exit-with-parent")
            .arg(std::process::id().to_string())
            .arg("--reuse-port")
            .arg("--listen")
            .arg(address.to_string())
            .arg("--spool-dir")
            .arg(launch.spool_dir.join(&spec.name).join(slot.to_string()))
            .envs(environment.iter().map(|(name, value)| (name, value)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // Out of the terminal's process group: Ctrl-C stops the control plane,
            // which stops its data planes in order, rather than all at once.
            .process_group(0)
            .kill_on_drop(true);
        command
    }

    fn start(
        &self,
        spec: &ServiceSpec,
        address: SocketAddr,
        environment: &Environment,
        only: bool,
        slot: usize,
    ) -> Result<Replica, ProviderError> {
        let mut command = self.command(spec, address, environment, slot);
        if only {
            command.env_clear().envs(environment.iter().map(|(name, value)| (name, value)));
        }
        let child = command.spawn().map_err(|e| ProviderError::Permanent {
            reason: "DataplaneNotStarted".into(),
            message: format!("cannot start {}: {e}", self.launch.program.display()),
        })?;
        let exited = Arc::new(AtomicBool::new(false));
        let (stop, stopped) = oneshot::channel();
        let watcher =
            tokio::spawn(watch(child, spec.name.clone(), spec.tenant, exited.clone(), stopped, self.drift.clone()));
        tracing::info!(service = %spec.name, slot, %address, "data-plane replica started");
        Ok(Replica { started: Instant::now(), exited, stop, watcher })
    }

    async fn ensure(&self, spec: &ServiceSpec) -> Result<ServiceState, ProviderError> {
        self.ensure_with(spec, None).await
    }

    /// Brings `spec`'s service to its replicas, started with `environment`
    /// and nothing else (when given: a task definition's; else the control
    /// plane's own and what [`Self::environment_for`] adds, once). Replicas
    /// started with another environment are replaced.
    pub async fn ensure_with(
        &self,
        spec: &ServiceSpec,
        environment: Option<Environment>,
    ) -> Result<ServiceState, ProviderError> {
        if self.stopping.load(Ordering::Acquire) {
            return Err(ProviderError::Transient("the control plane is stopping its data planes".into()));
        }
        let mut services = self.services.lock().await;
        if let (Some(service), Some(wanted)) = (services.get(&spec.name), &environment)
            && &service.environment != wanted
        {
            tracing::info!(service = %spec.name, "its environment changed; replacing its replicas");
            let replaced = services.remove(&spec.name).into_iter().flat_map(|s| s.slots);
            for replica in replaced.filter_map(|s| s.replica) {
                stop(replica).await;
            }
        }
        let service = match services.get_mut(&spec.name) {
            Some(service) => service,
            None => {
                let address = if spec.name == POOL_SERVICE { self.launch.pool_listen } else { free_address()? };
                let only = environment.is_some();
                let environment = match environment {
                    Some(environment) => environment,
                    None => self.environment_for(spec).await?,
                };
                services.entry(spec.name.clone()).or_insert(Service { address, environment, only, slots: Vec::new() })
            }
        };
        let wanted = usize::try_from(spec.replicas).unwrap_or(usize::MAX);
        for extra in service.slots.drain(wanted.min(service.slots.len())..).filter_map(|s| s.replica) {
            stop(extra).await;
        }
        service.slots.resize_with(wanted, Slot::default);
        let now = Instant::now();
        for (index, slot) in service.slots.iter_mut().enumerate() {
            if slot.replica.as_ref().is_some_and(Replica::alive) {
                continue;
            }
            if let Err(wait) = slot.may_start(now) {
                return Err(ProviderError::Transient(format!(
                    "a replica of {} keeps exiting within {} s of starting ({} times in a row); next start in {} ms",
                    spec.name,
                    QUICK_EXIT.as_secs(),
                    slot.quick_exits + 1,
                    wait.as_millis()
                )));
            }
            slot.replica = Some(self.start(spec, service.address, &service.environment, service.only, index)?);
        }
        Ok(service.state())
    }

    async fn delete(&self, name: &str) {
        let removed = self.services.lock().await.remove(name);
        for replica in removed.into_iter().flat_map(|s| s.slots).filter_map(|s| s.replica) {
            stop(replica).await;
        }
        if let Credentials::PerService(db) = &self.launch.credentials
            && let Err(e) = crate::identity::revoke_dataplane_token(db, name).await
        {
            tracing::warn!(service = name, error = %e, "could not revoke the deleted data plane's identity");
        }
    }

    /// Stops every data plane (gracefully: each flushes its usage) and starts no more.
    pub async fn stop_all(&self) {
        self.stopping.store(true, Ordering::Release);
        let services: Vec<Service> = self.services.lock().await.drain().map(|(_, s)| s).collect();
        let stops = services.into_iter().flat_map(|s| s.slots).filter_map(|s| s.replica).map(stop);
        futures_util::future::join_all(stops).await;
    }
}

/// Waits for the replica to exit (drift, reported) or to be told to stop.
async fn watch(
    mut child: Child,
    service: String,
    tenant: Option<TenantId>,
    exited: Arc<AtomicBool>,
    stop: oneshot::Receiver<()>,
    drift: broadcast::Sender<Option<TenantId>>,
) {
    tokio::select! {
        status = child.wait() => {
            exited.store(true, Ordering::Release);
            tracing::warn!(%service, ?status, "data-plane replica exited");
            let _ = drift.send(tenant);
        }
        _ = stop => {
            if let Some(pid) = child.id() {
                let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status().await;
            }
            if tokio::time::timeout(Duration::from_secs(15), child.wait()).await.is_err() {
                tracing::warn!(%service, "data-plane replica did not stop in 15 s; killing it");
                let _ = child.kill().await;
            }
            exited.store(true, Ordering::Release);
        }
    }
}

async fn stop(replica: Replica) {
    let _ = replica.stop.send(());
    let _ = replica.watcher.await;
}

fn free_address() -> Result<SocketAddr, ProviderError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| ProviderError::Transient(format!("no free local port for a data plane: {e}")))
}

impl ComputeProvider for LocalProcesses {
    fn observe_service<'a>(&'a self, name: &'a str) -> ProviderFuture<'a, Option<ServiceState>> {
        Box::pin(async move { Ok(self.services.lock().await.get(name).map(Service::state)) })
    }

    fn ensure_service<'a>(&'a self, spec: &'a ServiceSpec) -> ProviderFuture<'a, ServiceState> {
        Box::pin(self.ensure(spec))
    }

    fn delete_service<'a>(&'a self, name: &'a str) -> ProviderFuture<'a, ()> {
        Box::pin(async move {
            self.delete(name).await;
            Ok(())
        })
    }

    fn list_services(&self) -> ProviderFuture<'_, Vec<String>> {
        Box::pin(async move { Ok(self.services.lock().await.keys().cloned().collect()) })
    }

    fn drift(&self) -> Option<broadcast::Receiver<Option<TenantId>>> {
        Some(self.drift.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(program: &str) -> Launch {
        Launch {
            program: program.into(),
            subcommand: vec![],
            control_plane_url: "http://127.0.0.1:9".into(),
            credentials: Credentials::Shared(Secret::new("t")),
            jwt_secret: Secret::new("s"),
            spool_dir: std::env::temp_dir(),
            pool_listen: "127.0.0.1:0".parse().unwrap(),
            redis_url: None,
            database_password: None,
            traces: Default::default(),
        }
    }

    #[tokio::test]
    async fn a_replica_that_keeps_dying_at_start_is_restarted_after_growing_pauses() {
        // `false` ignores its arguments and exits at once, as a broken data plane would.
        let processes = LocalProcesses::new(launch("false"));
        let mut drift = processes.drift().unwrap();
        let spec = ServiceSpec::pool(&indigo_core::plan::PoolSize { dataplane_replicas: 1, dataplane_max_replicas: 1 });
        processes.ensure_service(&spec).await.unwrap();
        assert_eq!(drift.recv().await.unwrap(), None, "its exit is reported as the pool's drift");
        // Restarted once after a short pause, then refused until a longer one has passed.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(processes.ensure_service(&spec).await.unwrap().replicas, 1);
        drift.recv().await.unwrap();
        let refused = processes.ensure_service(&spec).await.unwrap_err();
        assert!(matches!(&refused, ProviderError::Transient(m) if m.contains("keeps exiting")), "{refused}");
        assert_eq!(processes.observe_service(POOL_SERVICE).await.unwrap().unwrap().replicas, 0);
        processes.stop_all().await;
        assert!(processes.ensure_service(&spec).await.is_err(), "nothing starts once stopping");
    }
}
