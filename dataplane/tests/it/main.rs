//! The data plane's integration tests in one binary (one link, not one per file).

mod fleet_rates;
mod isolation;
mod jwks;
mod storefront;
mod support;
