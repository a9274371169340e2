//! The container images of `scripts/images`, built from this build's binaries
//! and run with podman as a deployment would run them: the control plane's
//! image serves the admin API from a control database of the test's own, and
//! the data plane's image, told only where that API is and its secrets,
//! serves a tenant onboarded there. Each runs as its non-root user and is
//! healthy by its own health check.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use indigo_core::tenant::TenantId;
use indigo_e2e::stack::{ADMIN_TOKEN, AdminClient, JWT_SECRET, Shop};
use indigo_e2e::{TestDatabase, free_port, server_url, workspace_binary};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::up::INDIGO;

const REPOSITORY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// podman with the repository's engine settings (images/containers.conf),
/// unless the environment names others.
fn podman(args: &[&str]) -> Output {
    let mut command = Command::new("podman");
    if std::env::var_os("CONTAINERS_CONF").is_none() {
        command.env("CONTAINERS_CONF", format!("{REPOSITORY}/images/containers.conf"));
    }
    command.args(args).output().unwrap_or_else(|e| {
        panic!("podman cannot run ({e}); it builds and runs the images (Debian: apt-get install podman runc; scripts/test installs it)")
    })
}

fn succeeded(output: &Output, what: &str) -> String {
    assert!(output.status.success(), "{what}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A running container, removed when the test ends however it ends.
struct Container(String);

impl Container {
    fn run(name: String, image: &str, env: &[(&str, String)], args: &[&str]) -> Self {
        let _ = podman(&["rm", "--force", &name]);
        let mut run = vec!["run", "--detach", "--network", "host", "--name", &name];
        let settings: Vec<String> = env.iter().map(|(key, value)| format!("{key}={value}")).collect();
        for setting in &settings {
            run.extend(["--env", setting]);
        }
        run.push(image);
        run.extend(args);
        succeeded(&podman(&run), &format!("podman run {image}"));
        Self(name)
    }

    /// Waits until the image's own health check passes.
    async fn wait_healthy(&self) {
        for _ in 0..120 {
            if podman(&["healthcheck", "run", &self.0]).status.success() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let logs = podman(&["logs", &self.0]);
        panic!("{} never became healthy; its log:\n{}", self.0, String::from_utf8_lossy(&logs.stderr));
    }

    /// The user its process runs as, read from the host's /proc.
    fn uid(&self) -> String {
        let pid = succeeded(&podman(&["inspect", "--format", "{{.State.Pid}}", &self.0]), "podman inspect");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap().to_owned();
        line.split_whitespace().nth(1).unwrap().to_owned()
    }
}

/// The images built under one tag, removed when the test ends however it ends.
struct Images(String);

impl Drop for Images {
    fn drop(&mut self) {
        for image in ["indigo", "indigo-dataplane"] {
            let _ = podman(&["rmi", "--force", &format!("localhost/{image}:{}", self.0)]);
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&["rm", "--force", "--time", "2", &self.0]);
    }
}

#[tokio::test]
async fn the_images_run_the_platform_as_a_non_root_user() {
    // Both images, from the binaries this test run was built with.
    let binaries: PathBuf = Path::new(INDIGO).parent().unwrap().into();
    workspace_binary("indigo-dataplane").unwrap();
    let images = Images(format!("test-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]));
    let tag = images.0.clone();
    let built = Command::new("bash")
        .arg(format!("{REPOSITORY}/scripts/images"))
        .arg("--from")
        .arg(&binaries)
        .args(["--tag", &tag])
        .output()
        .unwrap();
    let printed = succeeded(&built, "scripts/images");
    for image in ["indigo", "indigo-dataplane"] {
        assert!(printed.contains(&format!("built localhost/{image}:{tag}")), "{printed}");
        let user = succeeded(
            &podman(&["image", "inspect", "--format", "{{.Config.User}}", &format!("localhost/{image}:{tag}")]),
            "inspect",
        );
        assert_eq!(user, "10001:10001", "{image} runs as");
    }

    let control = TestDatabase::unique("indigo_img_control");
    let pool = TestDatabase::unique("indigo_img_pool");
    // `indigo serve` expects its control database made, as a deployment's is.
    indigo_controlplane::db::ensure_database(&control.url).await.unwrap();
    let (admin_port, storefront_port) = (free_port().unwrap(), free_port().unwrap());
    let admin = AdminClient { url: format!("http://127.0.0.1:{admin_port}"), http: reqwest::Client::new() };

    // The control plane, configured as a deployment would: by environment.
    let control_plane = Container::run(
        format!("indigo-test-control-{tag}"),
        &format!("localhost/indigo:{tag}"),
        &[
            ("INDIGO_DATABASE_URL", control.url.clone()),
            ("INDIGO_POOL_DATABASE", pool.name.clone()),
            ("INDIGO_TENANT_SERVER_URL", server_url()),
            ("INDIGO_ADMIN_TOKEN", ADMIN_TOKEN.to_owned()),
            ("INDIGO_LISTEN", format!("127.0.0.1:{admin_port}")),
        ],
        &[],
    );
    control_plane.wait_healthy().await;
    assert_eq!(control_plane.uid(), "10001", "the control plane's process runs as");

    // A tenant onboarded there, and a token for the data plane (an operator's:
    // data-plane identities are minted only for the data planes the control plane runs).
    let (status, tenant) = admin
        .request(
            Method::POST,
            "/v1/tenants",
            Some(json!({ "name": "Image Shop", "slug": "image-shop", "owner_email": "o@image.example", "plan": "starter" })),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::CREATED, "{tenant}");
    let onboarding = admin.wait_workflow("image-shop", "onboarding").await.unwrap();
    assert_eq!(onboarding["state"], "succeeded", "{onboarding}");
    let shop = Shop::new(TenantId(tenant["id"].as_str().unwrap().parse().unwrap()), "image-shop");
    let (status, created) = admin
        .request(Method::POST, "/v1/tokens", Some(json!({ "name": "image-test", "role": "operator" })))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::CREATED, "{created}");

    // The data plane, told where the control plane is and its secrets, nothing else.
    let data_plane = Container::run(
        format!("indigo-test-dataplane-{tag}"),
        &format!("localhost/indigo-dataplane:{tag}"),
        &[
            ("INDIGO_CONTROL_PLANE_URL", admin.url.clone()),
            ("INDIGO_CONTROL_PLANE_TOKEN", created["token"].as_str().unwrap().to_owned()),
            ("INDIGO_JWT_SECRET", String::from_utf8(JWT_SECRET.to_vec()).unwrap()),
            ("INDIGO_DATAPLANE_LISTEN", format!("127.0.0.1:{storefront_port}")),
        ],
        &[],
    );
    data_plane.wait_healthy().await;
    assert_eq!(data_plane.uid(), "10001", "the data plane's process runs as");

    let storefront = format!("http://127.0.0.1:{storefront_port}");
    let http = reqwest::Client::new();
    let product = json!({ "name": "Boxed tea", "price_minor": 1200, "currency": "usd", "stock": 3 });
    let (status, created) = shop.call(&http, &storefront, Method::POST, "/v1/products", Some(product)).await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let path = format!("/v1/products/{}", created["id"].as_str().unwrap());
    let (status, read) = shop.call(&http, &storefront, Method::GET, &path, None).await.unwrap();
    assert_eq!((status, &read["name"]), (StatusCode::OK, &json!("Boxed tea")), "{read}");
    // A tenant the control plane does not know is refused there.
    let stranger = Shop::new(TenantId(uuid::Uuid::new_v4()), "stranger");
    let (status, _) = stranger.call(&http, &storefront, Method::GET, "/v1/products", None).await.unwrap();
    assert!(status.is_client_error(), "{status}");

    drop((data_plane, control_plane, images));
    control.drop_now().await.unwrap();
    pool.drop_now().await.unwrap();
}
