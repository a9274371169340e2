//! The data plane's integration tests in one binary (one link, not one per file).

mod catalogue_cache;
mod descriptions;
mod fleet_rates;
mod isolation;
mod jwks;
mod logins;
mod recommendations;
mod storefront;
mod support;
