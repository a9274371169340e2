//! The tenant database, the piece both planes share: the tenant schema and its
//! roles (`schema`), which database errors mean "try again" (`retry`) or "bad
//! input" (`input`), and the
//! online move of one tenant's rows between two databases (`moves`). The data
//! plane serves from these databases; the control plane provisions them and
//! moves tenants between them.

pub mod input;
pub mod moves;
pub mod retry;
pub mod schema;

use schema::TenantServer;

/// Where tenants' data lives: the server of the pool and the local silos, and
/// the pool's database on it.
pub struct TenantDatabases {
    pub server: TenantServer,
    pub pool_database: String,
}
