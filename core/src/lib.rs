//! Types that every Indigo binary shares: tenant identity and lifecycle, the plan
//! catalogue, and the shapes of the admin API. Nothing here does IO, so the data
//! plane, the control plane and the console agree on one definition of each.

pub mod api;
pub mod cost;
#[cfg(feature = "server")]
pub mod http;
pub mod openapi;
pub mod plan;
pub mod rate;
pub mod tenant;
#[cfg(feature = "server")]
pub mod traces;
