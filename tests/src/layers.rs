//! The workspace's layering, checked: which crate may link which, and which
//! control-plane modules may reach into the HTTP layer. A forbidden edge fails
//! here, where it is cheap to see, instead of quietly growing back.
//!
//! ```text
//! indigo-core ← indigo-client ← indigo-tui
//! indigo-core ← indigo-tenantdb ← indigo-dataplane, indigo-controlplane
//! indigo-controlplane, indigo-dataplane, indigo-client ← indigo-cli (the `indigo` binary)
//! ```

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// `crate` must not link `forbidden`, directly or through another crate.
const FORBIDDEN_LINKS: &[(&str, &[&str])] = &[
    (
        "indigo-core",
        &["indigo-client", "indigo-tenantdb", "indigo-controlplane", "indigo-dataplane", "sqlx", "reqwest"],
    ),
    ("indigo-client", &["indigo-tenantdb", "indigo-controlplane", "indigo-dataplane", "sqlx"]),
    // The console is an admin API client: no database, cloud or billing SDK.
    (
        "indigo-tui",
        &["indigo-controlplane", "indigo-dataplane", "indigo-tenantdb", "sqlx", "aws-config", "async-stripe"],
    ),
    ("indigo-tenantdb", &["indigo-controlplane", "indigo-dataplane", "axum"]),
    ("indigo-controlplane", &["indigo-dataplane", "indigo-cli"]),
    // The storefront calls the AI services it serves with (Bedrock) and reads
    // its tenants' cluster logins (Secrets Manager), never the control plane's
    // provisioning and billing APIs.
    (
        "indigo-dataplane",
        &[
            "indigo-controlplane",
            "indigo-cli",
            "async-stripe",
            "aws-sdk-ecs",
            "aws-sdk-rds",
            "aws-sdk-dynamodb",
            "aws-sdk-cloudwatch",
            "aws-sdk-applicationautoscaling",
        ],
    ),
    // The Stripe emulator stands alone: it knows Stripe's API, not Indigo.
    ("indigo-stripe-emulator", &["indigo-core", "indigo-controlplane", "indigo-dataplane", "sqlx", "async-stripe"]),
];

/// The only control-plane sources that may import the admin API (`crate::api`):
/// the API itself and the two places that serve it.
const API_IMPORTERS: &[&str] = &["src/api/", "src/control_plane.rs", "src/server.rs", "src/up.rs"];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ sits in the workspace").to_path_buf()
}

/// The crates `krate` links when built on its own (normal dependencies with
/// the features it asks for; dev- and build-dependencies aside), transitively.
fn linked_crates(krate: &str) -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = std::process::Command::new(cargo)
        .args(["tree", "--locked", "--offline", "-e", "normal", "--prefix", "none", "--format", "{p}", "-p", krate])
        .current_dir(workspace_root())
        .output()
        .expect("cargo tree runs");
    assert!(output.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&output.stderr));
    let tree = String::from_utf8(output.stdout).unwrap();
    tree.lines().skip(1).filter_map(|line| line.split_whitespace().next()).map(str::to_owned).collect()
}

#[test]
fn crates_link_only_the_layers_below_them() {
    let mut violations = Vec::new();
    for (krate, forbidden) in FORBIDDEN_LINKS {
        let linked = linked_crates(krate);
        assert!(linked.contains("serde"), "cargo tree listed {krate}'s dependencies: {linked:?}");
        violations.extend(forbidden.iter().filter(|f| linked.contains(**f)).map(|f| format!("{krate} links {f}")));
    }
    assert!(violations.is_empty(), "forbidden links between crates: {violations:#?}");
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

#[test]
fn only_the_api_and_its_servers_import_the_api() {
    let crate_dir = workspace_root().join("controlplane");
    let mut files = Vec::new();
    rust_files(&crate_dir.join("src"), &mut files);
    assert!(files.len() > 20, "found the control plane's sources");
    let offenders: Vec<String> = files
        .iter()
        .map(|path| path.strip_prefix(&crate_dir).unwrap().to_string_lossy().into_owned())
        .filter(|relative| !API_IMPORTERS.iter().any(|allowed| relative.starts_with(allowed)))
        .filter(|relative| std::fs::read_to_string(crate_dir.join(relative)).unwrap().contains("crate::api"))
        .collect();
    assert!(offenders.is_empty(), "domain modules importing the HTTP layer: {offenders:?}");
}
