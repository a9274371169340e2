//! Both APIs of a running `indigo up --demo`, fuzzed by schemathesis (a
//! tester nobody here wrote) against their own OpenAPI documents: no 5xx, no
//! response that its document does not describe, no schema-valid request
//! refused, no schema-violating one accepted, no call without its token let
//! through. Fixed seeds, so a failure reproduces (the stateful phase also
//! follows the servers' answers, so its path can vary from run to run).
//!
//! `scripts/test` installs the pinned schemathesis and names it in
//! `SCHEMATHESIS`; without it this test fails and says so.

use std::process::Command;
use std::time::Duration;

use crate::up::{Platform, storefront_token};

/// Examples per operation and phase: every operation covered, a few minutes in all.
const EXAMPLES: &str = "30";

fn schemathesis() -> String {
    let program = std::env::var("SCHEMATHESIS").unwrap_or_else(|_| "schemathesis".into());
    match Command::new(&program).arg("--version").output() {
        Ok(output) if output.status.success() => program,
        _ => panic!("schemathesis is not runnable as `{program}`; scripts/test installs the pinned version"),
    }
}

/// Runs schemathesis against the API at `url` with `token`; its report on failure.
fn fuzz(program: &str, url: &str, token: &str, seed: &str, data_dir: &std::path::Path) -> Result<(), String> {
    let output = Command::new(program)
        // Its cache (`.schemathesis/`) goes with the platform's directory, not into the checkout.
        .current_dir(data_dir)
        .args(["run", &format!("{url}/openapi.json"), "--checks", "all", "--no-color"])
        // Two stateful checks assume what this API does not promise: that a
        // DELETE removes (a tenant's starts an offboarding, and the tenant stays
        // readable, `deleted`, for its audit trail), and that whatever a path
        // under a created resource names exists (a tenant onboarded with billing
        // off has no billing account: 404).
        .args(["--exclude-checks", "use_after_free,ensure_resource_availability"])
        // Revoking the bootstrap token (once the fuzzer made another admin) would
        // leave the rest of the run nothing but 401s; Stripe's webhook takes only
        // what Stripe signed, which no generated request is (its signature check
        // is tested in controlplane/tests/it/usage_billing.rs).
        .args(["--exclude-path", "/v1/tokens/bootstrap", "--exclude-path", "/v1/webhooks/stripe"])
        .args(["--max-examples", EXAMPLES, "--seed", seed])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .output()
        .map_err(|e| e.to_string())?;
    let report = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() { Ok(()) } else { Err(format!("{report}\n{}", String::from_utf8_lossy(&output.stderr))) }
}

#[tokio::test]
async fn both_apis_fuzz_clean_against_their_documents() {
    let program = schemathesis();
    let platform = Platform::new();
    let data_dir = &platform.data_dir;
    // The fuzzer checks the contract, not the rates: a 429 would stand in for
    // the answer it is after (the storefront's shop is on a plan with room).
    let (mut daemon, api_url, storefront_url) =
        platform.start_demo(&[("INDIGO_API_REQUESTS_PER_SECOND", "100000")]).await;

    // The storefront first, as the owner of a growth shop: the admin run that
    // follows suspends and offboards tenants.
    let shop_token = storefront_token(data_dir, &api_url, "blue-bakery");
    let storefront = fuzz(&program, &storefront_url, &shop_token, "1", data_dir);
    let admin_token = std::fs::read_to_string(data_dir.join("admin.token")).unwrap().trim().to_owned();
    let admin = fuzz(&program, &api_url, &admin_token, "1", data_dir);

    let status = daemon.signal_and_wait("TERM", Duration::from_secs(30)).unwrap();
    assert!(status.success(), "indigo up exited with {status} after SIGTERM");
    // The fuzzer's tenants may have silos of their own: removing the platform releases them.
    platform.remove().await;

    if let Err(report) = storefront {
        panic!("the storefront API did not fuzz clean:\n{report}");
    }
    if let Err(report) = admin {
        panic!("the admin API did not fuzz clean:\n{report}");
    }
}
