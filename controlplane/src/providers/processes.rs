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
use std::time::Duration;

use indigo_core::tenant::TenantId;
use tokio::process::{Child, Command};
use tokio::sync::{Mutex, broadcast, oneshot};

use super::{ComputeProvider, POOL_SERVICE, ProviderError, ProviderFuture, ServiceSpec, ServiceState};
use crate::config::Secret;

/// How a data-plane process is started.
#[derive(Clone)]
pub struct Launch {
    /// The program and the arguments before the data plane's own (`indigo dataplane`).
    pub program: PathBuf,
    pub subcommand: Vec<String>,
    pub control_plane_url: String,
    pub control_plane_token: Secret,
    pub jwt_secret: Secret,
    /// Each replica spools undeliverable usage under its own directory here.
    pub spool_dir: PathBuf,
    /// Where the pool's replicas serve.
    pub pool_listen: SocketAddr,
}

struct Replica {
    exited: Arc<AtomicBool>,
    stop: oneshot::Sender<()>,
    watcher: tokio::task::JoinHandle<()>,
}

struct Service {
    address: SocketAddr,
    /// Slot `i` spools under `<spool_dir>/<service>/<i>`, so a restored replica
    /// picks up what its predecessor could not send.
    slots: Vec<Option<Replica>>,
}

impl Service {
    fn running(&self) -> u32 {
        let alive = self.slots.iter().flatten().filter(|r| !r.exited.load(Ordering::Acquire)).count();
        u32::try_from(alive).unwrap_or(u32::MAX)
    }

    fn state(&self) -> ServiceState {
        ServiceState { replicas: self.running(), address: Some(format!("http://{}", self.address)) }
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

    fn command(&self, spec: &ServiceSpec, address: SocketAddr, slot: usize) -> Command {
        let launch = &self.launch;
        let mut command = Command::new(&launch.program);
        command
            .args(&launch.subcommand)
            // Should the control plane die without stopping it (SIGKILL), the data plane follows.
            .arg("--exit-with-parent")
            .arg("--reuse-port")
            .arg("--listen")
            .arg(address.to_string())
            .arg("--control-plane-url")
            .arg(&launch.control_plane_url)
            .arg("--spool-dir")
            .arg(launch.spool_dir.join(&spec.name).join(slot.to_string()))
            // Secrets go by environment, not arguments, which `ps` shows.
            .env("INDIGO_CONTROL_PLANE_TOKEN", launch.control_plane_token.expose())
            .env("INDIGO_JWT_SECRET", launch.jwt_secret.expose())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // Out of the terminal's process group: Ctrl-C stops the control plane,
            // which stops its data planes in order, rather than all at once.
            .process_group(0)
            .kill_on_drop(true);
        if let Some(tenant) = spec.tenant {
            command.arg("--tenant").arg(tenant.to_string());
        }
        command
    }

    fn start(&self, spec: &ServiceSpec, address: SocketAddr, slot: usize) -> Result<Replica, ProviderError> {
        let child = self.command(spec, address, slot).spawn().map_err(|e| ProviderError::Permanent {
            reason: "DataplaneNotStarted".into(),
            message: format!("cannot start {}: {e}", self.launch.program.display()),
        })?;
        let exited = Arc::new(AtomicBool::new(false));
        let (stop, stopped) = oneshot::channel();
        let watcher =
            tokio::spawn(watch(child, spec.name.clone(), spec.tenant, exited.clone(), stopped, self.drift.clone()));
        tracing::info!(service = %spec.name, slot, %address, "data-plane replica started");
        Ok(Replica { exited, stop, watcher })
    }

    async fn ensure(&self, spec: &ServiceSpec) -> Result<ServiceState, ProviderError> {
        if self.stopping.load(Ordering::Acquire) {
            return Err(ProviderError::Transient("the control plane is stopping its data planes".into()));
        }
        let mut services = self.services.lock().await;
        let service = match services.get_mut(&spec.name) {
            Some(service) => service,
            None => {
                let address = if spec.name == POOL_SERVICE { self.launch.pool_listen } else { free_address()? };
                services.entry(spec.name.clone()).or_insert(Service { address, slots: Vec::new() })
            }
        };
        let wanted = usize::try_from(spec.replicas).unwrap_or(usize::MAX);
        for extra in service.slots.drain(wanted.min(service.slots.len())..).flatten() {
            stop(extra).await;
        }
        service.slots.resize_with(wanted, || None);
        for slot in 0..wanted {
            let alive = service.slots[slot].as_ref().is_some_and(|r| !r.exited.load(Ordering::Acquire));
            if !alive {
                service.slots[slot] = Some(self.start(spec, service.address, slot)?);
            }
        }
        Ok(service.state())
    }

    async fn delete(&self, name: &str) {
        let removed = self.services.lock().await.remove(name);
        for replica in removed.into_iter().flat_map(|s| s.slots).flatten() {
            stop(replica).await;
        }
    }

    /// Stops every data plane (gracefully: each flushes its usage) and starts no more.
    pub async fn stop_all(&self) {
        self.stopping.store(true, Ordering::Release);
        let services: Vec<Service> = self.services.lock().await.drain().map(|(_, s)| s).collect();
        let stops = services.into_iter().flat_map(|s| s.slots).flatten().map(stop);
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
