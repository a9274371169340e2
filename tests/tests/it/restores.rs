//! One tenant restored in place from its own backup while it and a neighbour
//! serve storefront traffic: the tenant's writes are held, never refused,
//! while its rows are swapped; the neighbour never waits; what the tenant
//! wrote after the backup is gone, what it wrote after the swap is there.

use std::time::Duration;

use chrono::{DateTime, Utc};
use indigo_controlplane::failpoints::CRASH_EXIT_CODE;
use indigo_controlplane::workflow::StepName;
use indigo_controlplane::workflow::restore::Restore;
use indigo_e2e::stack::{AdminClient, LoadReport, Sample, Shop, Stack, Storefront, ids_in, start_load};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::watch;
use uuid::Uuid;

use crate::daemons::{Daemons, Provider};

/// How long the swap holds the tenant's writes in this test, so that "the
/// neighbour did not wait" has a window to be checked in.
const HOLD_MS: u64 = 1_000;
const STOCK: i32 = 1_000_000;

/// An order the tenant's traffic placed, and when its request ran.
struct Placed {
    id: Uuid,
    sample: Sample,
}

/// One request of some traffic: its method, path and body.
type Request = (Method, &'static str, Option<Value>);

/// What some traffic got: each answered request's sample and answer, and what failed.
type Answered = (Vec<(Sample, Value)>, Vec<String>);

/// Requests from `next` on `shop`, one after another, until `stop`: each
/// answered one's sample and answer, and what failed.
fn traffic(
    stack: &Stack,
    shop: &Shop,
    mut stop: watch::Receiver<bool>,
    mut next: impl FnMut(usize) -> Request + Send + 'static,
) -> tokio::task::JoinHandle<Answered> {
    let (http, url, shop) = (stack.http.clone(), stack.storefront.url.clone(), shop.clone());
    tokio::spawn(async move {
        let (mut answered, mut failures) = (Vec::new(), Vec::new());
        let mut i = 0usize;
        while !*stop.borrow_and_update() {
            i += 1;
            let (method, path, body) = next(i);
            let write = method == Method::POST;
            let started = Utc::now();
            match shop.call(&http, &url, method, path, body).await {
                Ok((status, answer)) if status.is_success() => {
                    answered.push((Sample { started, finished: Utc::now(), write }, answer));
                }
                Ok((status, answer)) => failures.push(format!("{path}: {status} {answer}")),
                Err(error) => failures.push(format!("{path}: {error}")),
            }
            tokio::select! {
                _ = stop.changed() => {}
                () = tokio::time::sleep(Duration::from_millis(8)) => {}
            }
        }
        (answered, failures)
    })
}

/// Orders and catalogue reads on `shop` with the customers and products it
/// had when it was backed up (rows made after the backup are gone after the
/// restore, and an order naming them would rightly be refused).
fn order_traffic(
    stack: &Stack,
    shop: &Shop,
    (products, customers): (Vec<Uuid>, Vec<Uuid>),
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<(Vec<Placed>, Vec<String>)> {
    let requests = traffic(stack, shop, stop, move |i| {
        if i.is_multiple_of(3) {
            return (Method::GET, "/v1/products?limit=20", None);
        }
        let items = json!([{ "product_id": products[i % products.len()], "quantity": 1 }]);
        (Method::POST, "/v1/orders", Some(json!({ "customer_id": customers[i % customers.len()], "items": items })))
    });
    tokio::spawn(async move {
        let (answered, failures) = requests.await.expect("the traffic ran");
        let placed = answered
            .into_iter()
            .filter(|(sample, _)| sample.write)
            .filter_map(|(sample, order)| Some(Placed { id: order["id"].as_str()?.parse().ok()?, sample }))
            .collect();
        (placed, failures)
    })
}

async fn place_orders(stack: &Stack, shop: &Shop, product: Uuid, customer: Uuid, n: usize) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let body = json!({ "customer_id": customer, "items": [{ "product_id": product, "quantity": 1 }] });
        let (status, order) =
            shop.call(&stack.http, &stack.storefront.url, Method::POST, "/v1/orders", Some(body)).await.unwrap();
        assert_eq!(status, StatusCode::CREATED, "{order}");
        ids.push(order["id"].as_str().unwrap().parse().unwrap());
    }
    ids
}

/// A shop's catalogue, the orders placed before its backup (a restore brings
/// them back) and after it (a restore drops them), and the backup.
struct AroundABackup {
    products: Vec<Uuid>,
    customers: Vec<Uuid>,
    kept: Vec<Uuid>,
    backup: Value,
    lost: Vec<Uuid>,
}

/// Seeds `shop`, places 3 orders, backs it up through the admin API, places `after` more.
async fn around_a_backup(stack: &Stack, shop: &Shop, after: usize) -> AroundABackup {
    let (products, customers) = shop.seed(&stack.http, &stack.storefront.url, 4, 3, STOCK).await.unwrap();
    let kept = place_orders(stack, shop, products[0], customers[0], 3).await;
    let path = format!("/v1/tenants/{}/backups", shop.slug);
    let (status, backup) = stack.admin.request(Method::POST, &path, None).await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{backup}");
    let lost = place_orders(stack, shop, products[1], customers[1], after).await;
    AroundABackup { products, customers, kept, backup, lost }
}

fn at(value: &Value) -> DateTime<Utc> {
    value.as_str().unwrap_or_else(|| panic!("a time, not {value}")).parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_is_restored_in_place_under_load_and_its_neighbour_never_waits() {
    let mut stack = Stack::start().await.unwrap();
    stack.start_engine(stack.services(&format!("restore.swap=hold:{HOLD_MS}")).unwrap());
    let shop = stack.onboard("restored-shop", "pro").await.unwrap();
    let neighbour = stack.onboard("restore-neighbour", "pro").await.unwrap();
    let AroundABackup { products, customers, kept, backup, lost } = around_a_backup(&stack, &shop, 3).await;
    let backup_id: Uuid = backup["id"].as_str().unwrap().parse().unwrap();

    // Previewed: the rows now against the backup's; nothing changes.
    let preview_path = format!("/v1/tenants/restored-shop/restores/preview?backup_id={backup_id}");
    let (status, preview) = stack.admin.request(Method::GET, &preview_path, None).await.unwrap();
    assert_eq!(status, StatusCode::OK, "{preview}");
    let orders_in = |preview: &Value, column: &str| {
        let tables = preview["tables"].as_array().unwrap();
        tables.iter().find(|t| t["table"] == "orders").unwrap()[column].as_u64().unwrap()
    };
    assert_eq!((orders_in(&preview, "rows_now"), orders_in(&preview, "rows_in_backup")), (6, 3), "{preview}");
    assert_eq!((preview["intact"].as_bool(), preview["refusals"].as_array().map(Vec::len)), (Some(true), Some(0)));

    // A backup changed on disk is refused by the preview and by the restore, which changes nothing.
    let (_, tampered) = stack.admin.request(Method::POST, "/v1/tenants/restored-shop/backups", None).await.unwrap();
    let orders_file = std::path::Path::new(tampered["path"].as_str().unwrap()).join("orders.jsonl");
    let mut lines = std::fs::read_to_string(&orders_file).unwrap();
    lines.push_str(&lines.clone());
    std::fs::write(&orders_file, lines).unwrap();
    let tampered_preview =
        format!("/v1/tenants/restored-shop/restores/preview?backup_id={}", tampered["id"].as_str().unwrap());
    let (_, preview) = stack.admin.request(Method::GET, &tampered_preview, None).await.unwrap();
    assert_eq!(preview["intact"], false, "{preview}");
    assert_eq!(preview["refusals"][0]["code"], "not_intact", "{preview}");
    let body = json!({ "backup_id": tampered["id"] });
    let (status, _) =
        stack.admin.request(Method::POST, "/v1/tenants/restored-shop/restores", Some(body)).await.unwrap();
    assert_eq!(status, StatusCode::ACCEPTED);
    let refused = stack.admin.wait_workflow("restored-shop", "restore").await.unwrap();
    assert_eq!(refused["state"], "failed", "{refused}");
    assert!(refused["error"].as_str().unwrap().contains("not intact"), "{refused}");
    assert_eq!(stack.ids_in(stack.pool_database(), "orders", shop.id).await.unwrap().len(), 6, "nothing changed");

    // A restore is the admin's: an unknown backup is refused before anything starts.
    let (status, refused) = stack
        .admin
        .request(Method::POST, "/v1/tenants/restored-shop/restores", Some(json!({ "backup_id": Uuid::new_v4() })))
        .await
        .unwrap();
    assert_eq!((status, refused["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")), "{refused}");

    let (stop, watching) = watch::channel(false);
    let ordering = order_traffic(&stack, &shop, (products.clone(), customers.clone()), watching.clone());
    // The tenant's orders listed again and again (a read in a transaction of its own), beside its
    // writes: reads are never held.
    let reads = traffic(&stack, &shop, watching.clone(), |_| (Method::GET, "/v1/orders?limit=20", None));
    let (neighbour_products, neighbour_customers) =
        neighbour.seed(&stack.http, &stack.storefront.url, 4, 3, STOCK).await.unwrap();
    let neighbour_load = start_load(
        stack.http.clone(),
        stack.storefront.url.clone(),
        neighbour.clone(),
        neighbour_products,
        neighbour_customers,
        watching,
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, started) = stack
        .admin
        .request(Method::POST, "/v1/tenants/restored-shop/restores", Some(json!({ "backup_id": backup_id })))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    let workflow = stack.admin.wait_workflow("restored-shop", "restore").await.unwrap();
    assert_eq!(workflow["state"], "succeeded", "{workflow}");
    assert_eq!(workflow["id"], started["workflow_id"], "{workflow}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.send(true).unwrap();
    let (placed, mut failures) = ordering.await.unwrap();
    let (read, read_failures) = reads.await.unwrap();
    let read: Vec<Sample> = read.into_iter().map(|(sample, _)| sample).collect();
    failures.extend(read_failures);
    let neighbour_report: LoadReport = neighbour_load.await.unwrap();
    assert!(failures.is_empty(), "the restored tenant's failed requests: {failures:#?}");
    assert!(neighbour_report.failures.is_empty(), "the neighbour's failed requests: {:#?}", neighbour_report.failures);

    let steps = workflow["steps"].as_array().unwrap();
    let swap = &steps.iter().find(|s| s["name"] == "swap").unwrap()["output"];
    assert_eq!(swap["rows"].as_i64(), backup["rows"].as_i64(), "every row of the backup loaded: {swap}");
    assert!(swap["pause_ms"].as_i64().unwrap() >= HOLD_MS as i64, "{swap}");
    let (held_from, held_until) = (at(&swap["held_from"]), at(&swap["held_until"]));

    // Held, not refused: an order asked for well inside the hold was answered
    // after it, and is there. The neighbour went on all along.
    let inside = held_until - chrono::Duration::milliseconds(HOLD_MS as i64 / 2);
    let held: Vec<&Placed> =
        placed.iter().filter(|p| p.sample.started < inside && p.sample.finished > held_until).collect();
    assert!(!held.is_empty(), "no order of the tenant was held by the swap ({held_from} .. {held_until})");
    let neighbour_served = neighbour_report
        .samples
        .iter()
        .filter(|s| s.write && s.started >= held_from && s.finished <= held_until)
        .count();
    assert!(neighbour_served > 0, "the neighbour wrote nothing while the tenant's writes were held");
    let read_during = read.iter().filter(|s| s.started >= held_from && s.finished <= held_until).count();
    assert!(read_during > 0, "the tenant's reads waited for its writes' pause");

    let pool = stack.pool_database().to_owned();
    let orders = stack.ids_in(&pool, "orders", shop.id).await.unwrap();
    let present = |id: &Uuid| orders.binary_search(id).is_ok();
    assert!(kept.iter().all(present), "orders taken before the backup are back");
    assert!(!lost.iter().any(present), "orders taken after the backup are gone");
    let before: Vec<_> = placed.iter().filter(|p| p.sample.finished < held_from).map(|p| p.id).collect();
    let after: Vec<_> = placed.iter().filter(|p| p.sample.finished > held_until).map(|p| p.id).collect();
    assert!(!before.iter().any(present), "orders committed before the swap are gone with the rest");
    assert!(after.iter().all(present), "every order answered after the swap is there");
    let neighbour_orders = stack.ids_in(&pool, "orders", neighbour.id).await.unwrap();
    let neighbour_lost: Vec<_> =
        neighbour_report.orders.iter().filter(|id| neighbour_orders.binary_search(id).is_err()).collect();
    assert!(neighbour_lost.is_empty(), "the neighbour lost orders: {neighbour_lost:?}");

    // The rows as they were before the restore are a backup of their own.
    let safeguard = &steps.iter().find(|s| s["name"] == "safeguard").unwrap()["output"];
    let (_, backups) = stack.admin.request(Method::GET, "/v1/tenants/restored-shop/backups", None).await.unwrap();
    let listed: Vec<&str> = backups["backups"].as_array().unwrap().iter().filter_map(|b| b["id"].as_str()).collect();
    assert!(listed.contains(&safeguard["backup_id"].as_str().unwrap()), "{safeguard} in {backups}");
    let (_, events) =
        stack.admin.request(Method::GET, "/v1/events?tenant=restored-shop&limit=1000", None).await.unwrap();
    let kinds: Vec<&str> = events["items"].as_array().unwrap().iter().filter_map(|e| e["kind"].as_str()).collect();
    assert!(kinds.contains(&"TenantRestored"), "{kinds:?}");

    stack.stop().await.unwrap();
}

/// kill -9 of the control plane while a backup is written (the backup is
/// never used), and at every step of a restore, right after the step acted and
/// right after its result was recorded: a fresh daemon finishes the restore,
/// and the rows are swapped exactly once. An order placed between
/// the crash and the resume is gone when the crash came before the swap (the
/// swap that follows replaces it), and kept when it came after (the swap is
/// not done again).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_control_plane_killed_in_a_backup_or_any_step_of_a_restore_leaves_no_partial_backup_and_swaps_once() {
    let daemons = Daemons::new(Provider::Local);
    indigo_controlplane::db::ensure_database(&daemons.control.url).await.unwrap();
    let mut running = daemons.start("").await;
    let admin = AdminClient { url: daemons.url(), http: reqwest::Client::new() };
    let storefront = Storefront::start(&daemons.url()).await.unwrap();
    let shop = admin.onboard(&storefront, "restore-crash", "pro").await.unwrap();
    let (products, customers) = shop.seed(&admin.http, &storefront.url, 2, 2, STOCK).await.unwrap();
    let server = indigo_tenantdb::schema::TenantServer::new(&indigo_e2e::server_url()).unwrap();
    let order = async || {
        let items = json!([{ "product_id": products[0], "quantity": 1 }]);
        let body = json!({ "customer_id": customers[0], "items": items });
        let (status, order) =
            shop.call(&admin.http, &storefront.url, Method::POST, "/v1/orders", Some(body)).await.unwrap();
        assert_eq!(status, StatusCode::CREATED, "{order}");
        order["id"].as_str().unwrap().parse::<Uuid>().unwrap()
    };

    // kill -9 while a backup is being written: it is never listed nor used,
    // and the next run of the backups job removes what it left.
    running.signal_and_wait("TERM", Duration::from_secs(20)).unwrap();
    let mut armed = daemons.start("backup.write=crash-after-run").await;
    let cut_short = admin.request(Method::POST, "/v1/tenants/restore-crash/backups", None).await;
    assert!(cut_short.is_err(), "the daemon died while writing the backup: {cut_short:?}");
    assert_eq!(armed.wait_exit(Duration::from_secs(60)).unwrap().code(), Some(CRASH_EXIT_CODE));
    // Recorded, never taken (the scheduled job may have taken others meanwhile).
    let control = sqlx::PgPool::connect(&daemons.control.url).await.unwrap();
    let cut_short_id: Uuid =
        sqlx::query_scalar("SELECT id FROM tenant_backups WHERE tenant_id = $1 AND taken_at IS NULL")
            .bind(shop.id.0)
            .fetch_one(&control)
            .await
            .unwrap();
    control.close().await;
    let written = daemons.data_dir.join("backups").join(shop.id.to_string());
    assert!(written.join(cut_short_id.to_string()).exists(), "its bundle was written before the crash");
    running = daemons.start("").await;
    let (_, listed) = admin.request(Method::GET, "/v1/tenants/restore-crash/backups", None).await.unwrap();
    let cut_short_listed = listed["backups"].as_array().unwrap().iter().any(|b| b["id"] == json!(cut_short_id));
    assert!(!cut_short_listed, "a backup cut short is never listed: {listed}");
    let body = json!({ "backup_id": cut_short_id });
    let (status, refused) =
        admin.request(Method::POST, "/v1/tenants/restore-crash/restores", Some(body)).await.unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND, "a backup cut short is never restored from: {refused}");
    // The scheduled run may get there first; either way the bundle goes.
    loop {
        let (status, run) = admin.request(Method::POST, "/v1/jobs/backups/run", None).await.unwrap();
        if status != StatusCode::CONFLICT {
            assert_eq!(status, StatusCode::OK, "{run}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!written.join(cut_short_id.to_string()).exists(), "the cut-short bundle is removed");

    let steps = indigo_controlplane::workflow::step_order::<Restore>().map(|step| step.name());
    for (step, point) in steps.flat_map(|step| [(step, "crash-after-run"), (step, "crash-after-record")]) {
        let kept = order().await;
        let (status, backup) = admin.request(Method::POST, "/v1/tenants/restore-crash/backups", None).await.unwrap();
        assert_eq!(status, StatusCode::CREATED, "{backup}");
        let lost = order().await;

        running.signal_and_wait("TERM", Duration::from_secs(20)).unwrap();
        let mut armed = daemons.start(&format!("restore.{step}={point}")).await;
        let body = json!({ "backup_id": backup["id"] });
        let (status, started) =
            admin.request(Method::POST, "/v1/tenants/restore-crash/restores", Some(body)).await.unwrap();
        assert_eq!(status, StatusCode::ACCEPTED, "{started}");
        let exit = armed.wait_exit(Duration::from_secs(60)).unwrap();
        assert_eq!(exit.code(), Some(CRASH_EXIT_CODE), "{step} {point}: the daemon was to crash");
        let between = order().await;
        running = daemons.start("").await;
        let workflow = admin.wait_workflow("restore-crash", "restore").await.unwrap();
        assert_eq!(workflow["state"], "succeeded", "{step} {point}: {workflow}");

        let orders = ids_in(&server, &daemons.pool.name, "orders", shop.id).await.unwrap();
        let present = |id: &Uuid| orders.binary_search(id).is_ok();
        assert!(present(&kept), "{step} {point}: the order taken before the backup is back");
        assert!(!present(&lost), "{step} {point}: the order taken after the backup is gone");
        let swapped_before_the_crash = step == "swap";
        assert_eq!(
            present(&between),
            swapped_before_the_crash,
            "{step} {point}: the order placed between the crash and the resume"
        );
    }
    running.signal_and_wait("TERM", Duration::from_secs(20)).unwrap();
    drop(storefront);
    server.drop_database(&daemons.pool.name).await.unwrap();
    daemons.control.drop_now().await.unwrap();
    let _ = std::fs::remove_dir_all(&daemons.data_dir);
}

/// A silo tenant whose silo is lost (its database dropped) is restored into a
/// new silo: out of routing while its silo is deleted and made again (its
/// storefront answers 503, never an empty shop), the backup loaded and checked,
/// then served from the new silo. A tenant of the pool is refused, in the
/// preview and by the restore.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silo_tenant_whose_silo_is_lost_is_restored_into_a_new_silo() {
    let mut stack = Stack::start().await.unwrap();
    stack.start_engine(stack.services(&format!("restore.rebuild=hold:{HOLD_MS}")).unwrap());
    let shop = stack.onboard("lost-silo", "enterprise").await.unwrap();
    let pooled = stack.onboard("pooled-shop", "pro").await.unwrap();
    let AroundABackup { products, customers, kept, backup, lost } = around_a_backup(&stack, &shop, 2).await;

    // Only a silo is restored into a new one.
    let (_, pooled_backup) = stack.admin.request(Method::POST, "/v1/tenants/pooled-shop/backups", None).await.unwrap();
    let path = format!("/v1/tenants/pooled-shop/restores/preview?backup_id={}&into=new_silo", pooled_backup["id"]);
    let (status, preview) = stack.admin.request(Method::GET, &path.replace('"', ""), None).await.unwrap();
    assert_eq!((status, preview["refusals"][0]["code"].as_str()), (StatusCode::OK, Some("not_in_silo")), "{preview}");
    let body = json!({ "backup_id": pooled_backup["id"], "into": "new_silo" });
    let (status, refused) =
        stack.admin.request(Method::POST, "/v1/tenants/pooled-shop/restores", Some(body)).await.unwrap();
    assert_eq!((status, refused["code"].as_str()), (StatusCode::CONFLICT, Some("not_in_silo")), "{refused}");
    assert_eq!(stack.ids_in(stack.pool_database(), "orders", pooled.id).await.unwrap().len(), 0, "nothing changed");

    // The silo is lost.
    let tenant = stack.admin.tenant("lost-silo").await.unwrap();
    let silo = tenant["status"]["placement"]["database"].as_str().unwrap().to_owned();
    stack.state.tenant_dbs.server.drop_database(&silo).await.unwrap();
    let (status, _) = shop.call(&stack.http, &stack.storefront.url, Method::GET, "/v1/orders", None).await.unwrap();
    assert!(status.is_server_error(), "a lost silo cannot serve: {status}");

    // Previewed: nothing of the lost silo to count, the backup's rows to come.
    let path = format!("/v1/tenants/lost-silo/restores/preview?backup_id={}&into=new_silo", backup["id"]);
    let (status, preview) = stack.admin.request(Method::GET, &path.replace('"', ""), None).await.unwrap();
    assert_eq!(status, StatusCode::OK, "{preview}");
    assert_eq!(
        (preview["rows_now"].as_u64(), preview["rows_in_backup"].as_u64()),
        (Some(0), backup["rows"].as_u64()),
        "{preview}"
    );
    assert_eq!((preview["into"].as_str(), preview["refusals"].as_array().map(Vec::len)), (Some("new_silo"), Some(0)));

    let body = json!({ "backup_id": backup["id"], "into": "new_silo" });
    let (status, started) =
        stack.admin.request(Method::POST, "/v1/tenants/lost-silo/restores", Some(body)).await.unwrap();
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    // While the new silo is empty, the tenant is out of routing: 503, not an empty shop.
    let answers = async || {
        let (status, body) =
            shop.call(&stack.http, &stack.storefront.url, Method::GET, "/v1/orders", None).await.unwrap();
        (status, body)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut unavailable = None;
    while std::time::Instant::now() < deadline {
        let (_, workflows) =
            stack.admin.request(Method::GET, "/v1/workflows?tenant=lost-silo&kind=restore", None).await.unwrap();
        let steps = workflows[0]["steps"].as_array().cloned().unwrap_or_default();
        let rebuilding = steps.iter().any(|s| s["name"] == "rebuild" && s["state"] == "running");
        let (status, body) = answers().await;
        if rebuilding {
            unavailable = Some((status, body));
            break;
        }
        assert!(status != StatusCode::OK || body["items"].as_array().is_some_and(|o| !o.is_empty()), "{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = unavailable.expect("the restore reached its rebuild");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "an empty new silo is not served: {body}");
    let workflow = stack.admin.wait_workflow("lost-silo", "restore").await.unwrap();
    assert_eq!(workflow["state"], "succeeded", "{workflow}");
    let steps = workflow["steps"].as_array().unwrap();
    let output = |name: &str| steps.iter().find(|s| s["name"] == name).unwrap()["output"].clone();
    assert!(output("safeguard")["skipped"].is_string(), "a lost silo has nothing to keep: {}", output("safeguard"));
    assert_eq!(output("retire")["deleted"], json!(silo));
    assert_eq!(output("rebuild")["database"], json!(silo), "the local provider names a tenant's silo alike");
    assert_eq!(output("swap")["rows"], backup["rows"], "every row of the backup loaded");

    // Served from the new silo again: what the backup held, and new orders kept.
    let tenant = stack.admin.tenant("lost-silo").await.unwrap();
    assert_eq!(tenant["status"]["placement"]["database"], json!(silo), "{tenant}");
    assert_eq!(tenant["status"]["placement"]["isolation"], "silo", "{tenant}");
    let after = loop {
        let (status, body) = answers().await;
        if status == StatusCode::OK {
            break body;
        }
        assert!(std::time::Instant::now() < deadline, "the restored tenant never served: {status} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let listed: Vec<&str> = after["items"].as_array().unwrap().iter().filter_map(|o| o["id"].as_str()).collect();
    assert_eq!(listed.len(), kept.len(), "{after}");
    let orders = stack.ids_in(&silo, "orders", shop.id).await.unwrap();
    let present = |id: &Uuid| orders.binary_search(id).is_ok();
    assert!(kept.iter().all(present), "orders taken before the backup are back");
    assert!(!lost.iter().any(present), "orders taken after the backup are gone");
    let new = place_orders(&stack, &shop, products[2], customers[2], 1).await;
    assert!(stack.ids_in(&silo, "orders", shop.id).await.unwrap().contains(&new[0]), "it takes orders again");
    let (_, events) = stack.admin.request(Method::GET, "/v1/events?tenant=lost-silo&limit=1000", None).await.unwrap();
    let kinds: Vec<&str> = events["items"].as_array().unwrap().iter().filter_map(|e| e["kind"].as_str()).collect();
    assert!(kinds.contains(&"SiloRetired") && kinds.contains(&"TenantRestored"), "{kinds:?}");

    stack.stop().await.unwrap();
}

/// On AWS, a tenant's backups are kept in S3 (moto, through the real SDK):
/// each bundle uploaded object by object and its staged copy gone; a restore
/// in place reads the backup back from the bucket; a bundle changed in the
/// bucket is refused by the restore preview and found by the restore drill.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_aws_backups_are_kept_in_s3_and_restored_from_it() {
    let moto = indigo_e2e::moto().await;
    let s3 = aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(&moto).force_path_style(true).build());
    let daemons = Daemons::new(Provider::Aws);
    indigo_controlplane::db::ensure_database(&daemons.control.url).await.unwrap();
    let mut running = daemons.start("").await;
    let admin = AdminClient { url: daemons.url(), http: reqwest::Client::new() };
    let storefront = Storefront::start_on_aws(&daemons.url()).await.unwrap();
    let shop = admin.onboard(&storefront, "s3-shop", "enterprise").await.unwrap();
    let (products, customers) = shop.seed(&admin.http, &storefront.url, 2, 2, STOCK).await.unwrap();
    let order = async || {
        let items = json!([{ "product_id": products[0], "quantity": 1 }]);
        let body = json!({ "customer_id": customers[0], "items": items });
        let (status, order) =
            shop.call(&admin.http, &storefront.url, Method::POST, "/v1/orders", Some(body)).await.unwrap();
        assert_eq!(status, StatusCode::CREATED, "{order}");
        order["id"].as_str().unwrap().to_owned()
    };
    let listed_orders = async || {
        let (status, page) = shop.call(&admin.http, &storefront.url, Method::GET, "/v1/orders", None).await.unwrap();
        assert_eq!(status, StatusCode::OK, "{page}");
        page["items"].as_array().unwrap().iter().map(|o| o["id"].as_str().unwrap().to_owned()).collect::<Vec<_>>()
    };
    let kept = order().await;

    let (status, backup) = admin.request(Method::POST, "/v1/tenants/s3-shop/backups", None).await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{backup}");
    let bucket = format!("{}-tenant-backups", daemons.ecs_cluster);
    let objects = async |backup: &Value| {
        let prefix = format!("{}/{}/", shop.id, backup.as_str().unwrap());
        let listed = s3.list_objects_v2().bucket(&bucket).prefix(&prefix).send().await.unwrap();
        let keys: Vec<String> = listed.contents().iter().filter_map(|o| o.key().map(str::to_owned)).collect();
        (prefix, keys)
    };
    let (prefix, keys) = objects(&backup["id"]).await;
    assert_eq!(backup["path"], format!("s3://{bucket}/{}", prefix.trim_end_matches('/')), "{backup}");
    assert!(
        keys.contains(&format!("{prefix}manifest.json")) && keys.contains(&format!("{prefix}orders.jsonl")),
        "{keys:?}"
    );
    let staged = daemons.data_dir.join("backups").join(shop.id.to_string()).join(backup["id"].as_str().unwrap());
    assert!(!staged.exists(), "the staged copy is gone once uploaded");
    // The jobs reach the tenant's cluster as the provider does (with its master login).
    let run_job = async |job: &str| loop {
        let (status, run) = admin.request(Method::POST, &format!("/v1/jobs/{job}/run"), None).await.unwrap();
        if status != StatusCode::CONFLICT {
            assert_eq!(status, StatusCode::OK, "{run}");
            break run["result"].clone();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let scheduled = run_job("backups").await;
    assert_eq!((scheduled["taken"].as_u64(), scheduled["failed"].as_u64()), (Some(1), Some(0)), "{scheduled}");
    let measured = run_job("storage").await;
    assert_eq!(measured["tenants_measured"].as_u64(), Some(1), "{measured}");
    let lost = order().await;

    // Restored in place from the bucket.
    let body = json!({ "backup_id": backup["id"] });
    let (status, started) = admin.request(Method::POST, "/v1/tenants/s3-shop/restores", Some(body)).await.unwrap();
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    let workflow = admin.wait_workflow("s3-shop", "restore").await.unwrap();
    assert_eq!(workflow["state"], "succeeded", "{workflow}");
    let orders = listed_orders().await;
    assert!(orders.contains(&kept) && !orders.contains(&lost), "kept {kept}, lost {lost}: {orders:?}");
    // The safeguard went to the bucket too.
    let safeguard = &workflow["steps"].as_array().unwrap().iter().find(|s| s["name"] == "safeguard").unwrap()["output"];
    let (_, safeguarded) = objects(&safeguard["backup_id"]).await;
    assert!(!safeguarded.is_empty(), "{safeguard}");

    // A bundle changed in the bucket: the preview refuses it, the drill finds it.
    let change = async |backup: &Value| {
        let (prefix, _) = objects(backup).await;
        let key = format!("{prefix}orders.jsonl");
        let original =
            s3.get_object().bucket(&bucket).key(&key).send().await.unwrap().body.collect().await.unwrap().to_vec();
        let doubled = [original.clone(), original].concat();
        s3.put_object().bucket(&bucket).key(&key).body(doubled.into()).send().await.unwrap();
    };
    let (_, changed) = admin.request(Method::POST, "/v1/tenants/s3-shop/backups", None).await.unwrap();
    change(&changed["id"]).await;
    let path = format!("/v1/tenants/s3-shop/restores/preview?backup_id={}", changed["id"].as_str().unwrap());
    let (status, preview) = admin.request(Method::GET, &path, None).await.unwrap();
    assert_eq!((status, preview["intact"].as_bool()), (StatusCode::OK, Some(false)), "{preview}");
    assert_eq!(preview["refusals"][0]["code"], "not_intact", "{preview}");
    // The drill takes each tenant's newest backup, and the scheduler backs an
    // enterprise tenant (RPO 1 min) up every minute: when it has taken a newer
    // one meanwhile, that one is changed too and the drill run again.
    let newest = async || {
        let (_, listed) = admin.request(Method::GET, "/v1/tenants/s3-shop/backups", None).await.unwrap();
        listed["backups"][0].clone()
    };
    let mut target = changed;
    let mut drilled = Value::Null;
    for _ in 0..3 {
        run_job("backup_drill").await;
        drilled = newest().await;
        if drilled["id"] == target["id"] {
            break;
        }
        target = drilled.clone();
        change(&target["id"]).await;
    }
    assert_eq!(drilled["id"], target["id"], "a newer backup each time the drill ran");
    assert!(drilled["drill_problem"].as_str().is_some_and(|p| p.contains("orders")), "{drilled}");

    let tenant = admin.tenant("s3-shop").await.unwrap();
    let endpoint = tenant["status"]["placement"]["cluster"].as_str().unwrap();
    running.signal_and_wait("TERM", Duration::from_secs(20)).unwrap();
    drop(storefront);
    let server = indigo_tenantdb::schema::TenantServer::new(&indigo_e2e::server_url()).unwrap();
    for database in [indigo_tenantdb::stand_in_database(endpoint), daemons.pool.name.clone()] {
        server.drop_database(&database).await.unwrap();
    }
    daemons.control.drop_now().await.unwrap();
    let _ = std::fs::remove_dir_all(&daemons.data_dir);
}
