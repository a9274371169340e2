//! Metering to billing: raw usage events rolled up per tenant, event type,
//! hour and day ([`rollup`]), and the closed hours reported to Stripe's billing
//! meter exactly once ([`billing_sync`]).

pub mod aws;
pub mod billing_sync;
pub mod limits;
pub mod parity;
pub mod recommender;
pub mod rollup;
pub mod storage;
