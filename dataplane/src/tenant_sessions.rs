//! Connections to one tenant database whose sessions stay bound to the tenant
//! they last served, for the catalogue's hot reads: a read on a connection
//! already bound to its tenant is one extended-protocol round trip (a cached
//! plan, binary values), with no context to set first.
//!
//! A read finds rows only where both guards agree: row-level security binds
//! the session's tenant, and the read's own statement keeps only the rows of
//! the tenant its verified token names (see
//! [`crate::api::tenant::CatalogueRead`]). A session bound to another tenant
//! than it is recorded as (which nothing here does) would answer nothing,
//! never another tenant's rows. Each session's binding is recorded once its
//! `set_config` has succeeded, and only these reads run on these connections.
//! A session is bound with no role and no subject, so the `shopper_scope`
//! policies show it no shopper's data: these connections serve the catalogue,
//! which is the same for every caller of a tenant. Writes and shoppers' reads
//! keep their transactions on the sqlx pool.
//!
//! A connection goes first to a read of the tenant it is bound to, then the
//! longest-idle connection of another tenant is bound again (one round trip),
//! and only when none is idle is a new one opened (while fewer than `max` are
//! open): opening one costs a TLS handshake and a login, some ~100 ms here, a
//! thousand rebindings. Under load every connection is busy and more are
//! opened; with a few busy tenants per database, rebinding is rare.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indigo_core::tenant::TenantId;
use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use tokio::sync::Notify;

pub struct TenantSessions {
    options: PgConnectOptions,
    max: usize,
    acquire_timeout: Duration,
    state: Mutex<Sessions>,
    /// Woken when a connection goes back to idle or is closed.
    released: Notify,
}

#[derive(Default)]
struct Sessions {
    /// Least recently used first.
    idle: VecDeque<Idle>,
    /// Idle and in use.
    open: usize,
}

struct Idle {
    bound_to: Option<TenantId>,
    conn: PgConnection,
}

impl TenantSessions {
    pub fn new(options: PgConnectOptions, max: u32, acquire_timeout: Duration) -> Self {
        Self { options, max: max.max(1) as usize, acquire_timeout, state: Mutex::default(), released: Notify::new() }
    }

    /// A connection whose session is bound to `tenant`, binding it first if
    /// it served another tenant or none; waits up to the acquire timeout when
    /// all `max` are in use.
    pub async fn acquire(self: &Arc<Self>, tenant: TenantId) -> Result<TenantSession, sqlx::Error> {
        let deadline = tokio::time::Instant::now() + self.acquire_timeout;
        loop {
            // Registered before looking, so a release in between still wakes us.
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            match self.take(tenant) {
                Taken::Bound(conn) => return Ok(self.lease(Some(tenant), conn)),
                Taken::Other(conn) => return self.bind(conn, tenant).await,
                Taken::Open => {
                    // The slot taken goes back if the connection is not made,
                    // the request dropped meanwhile included.
                    let mut opening = Opening(Some(self.as_ref()));
                    let conn = self.options.connect().await?;
                    opening.0 = None;
                    return self.bind(conn, tenant).await;
                }
                Taken::Nothing => {
                    tokio::time::timeout_at(deadline, released).await.map_err(|_| sqlx::Error::PoolTimedOut)?
                }
            }
        }
    }

    /// Opens a connection in the background, unbound, when none is open yet:
    /// the database's first catalogue read then binds it (one round trip)
    /// instead of waiting for a connection to be made.
    pub fn open_one_ahead(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        {
            let mut state = self.state.lock().expect("sessions lock");
            if state.open > 0 {
                return;
            }
            state.open += 1;
        }
        let sessions = self.clone();
        runtime.spawn(async move {
            let mut opening = Opening(Some(sessions.as_ref()));
            match sessions.options.connect().await {
                Ok(conn) => {
                    opening.0 = None;
                    drop(sessions.lease(None, conn));
                }
                Err(error) => tracing::warn!(%error, "cannot connect ahead to a tenant database"),
            }
        });
    }

    fn take(&self, tenant: TenantId) -> Taken {
        let mut state = self.state.lock().expect("sessions lock");
        if let Some(at) = state.idle.iter().rposition(|idle| idle.bound_to == Some(tenant)) {
            return Taken::Bound(state.idle.remove(at).expect("a position found in it").conn);
        }
        if let Some(idle) = state.idle.pop_front() {
            return Taken::Other(idle.conn);
        }
        if state.open < self.max {
            state.open += 1;
            return Taken::Open;
        }
        Taken::Nothing
    }

    /// Binds the session to `tenant`, with no role and no subject.
    async fn bind(self: &Arc<Self>, conn: PgConnection, tenant: TenantId) -> Result<TenantSession, sqlx::Error> {
        // Leased unbound until the binding is known to hold: a bind cut short
        // (the request dropped) leaves a connection that binds again.
        let mut session = self.lease(None, conn);
        sqlx::query(
            "SELECT set_config('app.current_tenant', $1, false), set_config('app.current_role', '', false),
                    set_config('app.current_subject', '', false)",
        )
        .bind(tenant.to_string())
        .execute(session.connection())
        .await
        .inspect_err(|error| session.discard_unless_usable(error))?;
        session.bound_to = Some(tenant);
        Ok(session)
    }

    fn lease(self: &Arc<Self>, bound_to: Option<TenantId>, conn: PgConnection) -> TenantSession {
        TenantSession { sessions: self.clone(), bound_to, conn: Some(conn) }
    }

    fn closed(&self) {
        self.state.lock().expect("sessions lock").open -= 1;
        self.released.notify_one();
    }

    /// Connections open (idle and in use), and how many are idle.
    pub fn counts(&self) -> (usize, usize) {
        let state = self.state.lock().expect("sessions lock");
        (state.open, state.idle.len())
    }
}

/// A slot counted in `open` for a connection being made.
struct Opening<'a>(Option<&'a TenantSessions>);

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        if let Some(sessions) = self.0 {
            sessions.closed();
        }
    }
}

enum Taken {
    Bound(PgConnection),
    Other(PgConnection),
    Open,
    Nothing,
}

/// A connection on loan, bound to one tenant; back to idle when dropped.
pub struct TenantSession {
    sessions: Arc<TenantSessions>,
    bound_to: Option<TenantId>,
    conn: Option<PgConnection>,
}

impl TenantSession {
    pub fn connection(&mut self) -> &mut PgConnection {
        self.conn.as_mut().expect("a leased session holds its connection until dropped")
    }

    pub fn bound_to(&self) -> Option<TenantId> {
        self.bound_to
    }

    /// After `error`, closes the connection if it lost its server (it is not
    /// lent again); a statement the server merely refused leaves it usable.
    pub fn discard_unless_usable(&mut self, error: &sqlx::Error) {
        if indigo_tenantdb::retry::connection_lost(error)
            && let Some(conn) = self.conn.take()
        {
            drop(conn);
            self.sessions.closed();
        }
    }
}

impl Drop for TenantSession {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        let mut state = self.sessions.state.lock().expect("sessions lock");
        state.idle.push_back(Idle { bound_to: self.bound_to, conn });
        drop(state);
        self.sessions.released.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request dropped while its connection was being made gives the slot
    /// back: otherwise each such drop would leave one connection fewer.
    #[tokio::test]
    async fn a_connection_being_made_when_its_request_is_dropped_gives_its_slot_back() {
        // Accepts and never answers: the connection is never made.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = silent.local_addr().unwrap().port();
        let held = tokio::spawn(async move {
            let mut accepted = Vec::new();
            while let Ok((socket, _)) = silent.accept().await {
                accepted.push(socket);
            }
        });
        let options = PgConnectOptions::new().host("127.0.0.1").port(port).username("nobody");
        let sessions = Arc::new(TenantSessions::new(options, 1, Duration::from_secs(5)));
        let dropped = tokio::time::timeout(Duration::from_millis(200), sessions.acquire(TenantId::new())).await;
        assert!(dropped.is_err(), "the connection was never made");
        assert_eq!(sessions.counts(), (0, 0), "the slot went back");
        held.abort();
    }
}
