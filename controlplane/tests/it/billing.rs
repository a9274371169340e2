//! The Stripe adapter over real HTTP: against localstripe for what it serves
//! (customers), and against the Stripe test double for Stripe's idempotency
//! rules, current object shapes and error classes.

use indigo_controlplane::billing::{BillingError, Stripe};
use indigo_controlplane::config::{Secret, StripeConfig};
use indigo_core::tenant::TenantId;
use indigo_stripe_emulator::StripeEmulator;

/// Where `.ci/run` starts localstripe (`pip install localstripe; localstripe --port 8420`).
fn localstripe_url() -> String {
    std::env::var("LOCALSTRIPE_URL").unwrap_or_else(|_| "http://127.0.0.1:8420/".into())
}

fn stripe_at(api_base: &str) -> Stripe {
    Stripe::new(&StripeConfig { api_base: api_base.to_owned(), secret_key: Secret::new("sk_test_indigo") }).unwrap()
}

#[tokio::test]
async fn customers_against_localstripe() {
    let url = localstripe_url();
    reqwest::get(format!("{url}v1/customers"))
        .await
        .unwrap_or_else(|e| panic!("localstripe is not reachable at {url} ({e}); .ci/run installs and starts it"));
    let stripe = stripe_at(&url);
    let tenant = TenantId::new();
    let key = format!("test-{}", uuid::Uuid::new_v4());
    let customer = stripe.create_customer(tenant, "Acme Shoes", "owner@acme.example", &key).await.unwrap();
    assert!(customer.starts_with("cus_"), "{customer}");
    assert_eq!(stripe.customer_tenant(&customer).await.unwrap(), Some(tenant.to_string()));

    stripe.delete_customer(&customer, &format!("{key}-delete")).await.unwrap();
    assert_eq!(stripe.customer_tenant(&customer).await.unwrap(), None, "deleted");
    // Deleting what is gone is done, not an error: a retried step must succeed.
    stripe.delete_customer(&customer, &format!("{key}-delete-again")).await.unwrap();
}

#[tokio::test]
async fn idempotency_keys_make_retries_safe() {
    let double = StripeEmulator::start().await.unwrap();
    let stripe = stripe_at(&double.url);
    let tenant = TenantId::new();
    let first = stripe.create_customer(tenant, "Acme", "o@acme.example", "k-customer").await.unwrap();
    let retried = stripe.create_customer(tenant, "Acme", "o@acme.example", "k-customer").await.unwrap();
    assert_eq!(first, retried, "the same key answers the same customer");
    assert_eq!(double.live_customers(None).len(), 1);

    // The same key with other parameters is refused, as Stripe does.
    let reused = stripe.create_customer(tenant, "Other", "x@acme.example", "k-customer").await.unwrap_err();
    assert!(
        matches!(&reused, BillingError::Rejected { status: 400, message, .. } if message.contains("same parameters")),
        "{reused}"
    );
}

#[tokio::test]
async fn errors_are_sorted_into_retry_or_stop() {
    let double = StripeEmulator::start().await.unwrap();
    let stripe = stripe_at(&double.url);
    let missing = stripe
        .create_subscription(
            TenantId::new(),
            "cus_nobody",
            (
                "price_none",
                "usd",
                &indigo_controlplane::policy::load_plans(
                    concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/plans.toml").as_ref(),
                )
                .unwrap(),
            ),
            "k-sub",
        )
        .await
        .unwrap_err();
    assert!(matches!(missing, BillingError::Rejected { status: 400, .. }), "{missing}");
    double.fail("/v1/customers", 503);
    let down = stripe.create_customer(TenantId::new(), "Acme", "o@acme.example", "k-down").await.unwrap_err();
    assert!(matches!(down, BillingError::Transient(_)), "{down}");
    let unreachable = stripe_at("http://127.0.0.1:9/");
    let error = unreachable.create_customer(TenantId::new(), "Acme", "o@acme.example", "k").await.unwrap_err();
    assert!(matches!(error, BillingError::Transient(_)), "{error}");
}
