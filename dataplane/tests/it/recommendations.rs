//! The built-in recommender on real orders: a customer who bought A gets B
//! that others bought with A; popular products for a new customer; only
//! active products in stock; and nothing of another tenant ever, with two
//! tenants selling the same product names in the same patterns.

use std::collections::HashMap;

use axum::http::{Method, StatusCode};
use indigo_dataplane::auth::CallerRole;
use serde_json::{Value, json};

use crate::support::{Store, plan, token, token_for};

/// One tenant's shop: its products by name and its staff token.
struct Shop {
    staff: String,
    products: HashMap<&'static str, String>,
}

async fn shop(store: &Store, tenant: indigo_core::tenant::TenantId, orders: &[&[&'static str]]) -> Shop {
    let staff = token(tenant, CallerRole::Staff);
    let mut products = HashMap::new();
    for name in ["Lamp", "Bulb", "Shade", "Desk"] {
        products.insert(name, store.product(&staff, name, 1000, 100).await["id"].as_str().unwrap().to_owned());
    }
    let customer = store.customer(&staff, &format!("regular-{tenant}@example.com")).await;
    for items in orders {
        let items: Vec<Value> =
            items.iter().map(|name| json!({ "product_id": products[name], "quantity": 1 })).collect();
        let placed = store.post(&staff, "/v1/orders", json!({ "customer_id": customer["id"], "items": items })).await;
        assert_eq!(placed.status, StatusCode::CREATED, "{}", placed.body);
    }
    Shop { staff, products }
}

/// The names of the recommended products, in order, and their reasons.
fn names(shop: &Shop, reply: &Value) -> Vec<(String, String)> {
    let by_id: HashMap<&str, &str> = shop.products.iter().map(|(name, id)| (id.as_str(), *name)).collect();
    reply["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items in {reply}"))
        .iter()
        .map(|item| {
            let id = item["id"].as_str().unwrap();
            let name = by_id.get(id).unwrap_or_else(|| panic!("{id} is not this shop's product: {reply}"));
            (name.to_string(), item["reason"].as_str().unwrap().to_owned())
        })
        .collect()
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected.iter().map(|(n, r)| (n.to_string(), r.to_string())).collect()
}

#[tokio::test]
async fn customers_get_what_others_bought_with_theirs_and_never_another_tenants_products() {
    let (store, ids) =
        Store::start(&[("recs-a", plan("growth")), ("recs-b", plan("growth")), ("recs-plain", plan("starter"))]).await;
    let a =
        shop(&store, ids[0], &[&["Lamp", "Bulb"], &["Lamp", "Bulb"], &["Lamp", "Shade"], &["Desk"], &["Desk"]]).await;
    // The other tenant: the same names, bought in another pattern.
    let b = shop(&store, ids[1], &[&["Lamp", "Desk"], &["Lamp", "Desk"], &["Lamp", "Desk"]]).await;

    // Nothing computed yet: no suggestions, and it says so.
    let before = store.get(&a.staff, "/v1/recommendations").await;
    assert_eq!(before.status, StatusCode::OK, "{}", before.body);
    assert_eq!((before.body["items"].as_array().unwrap().len(), &before.body["refreshed_at"]), (0, &Value::Null));
    let refreshed = store.call(Some(&a.staff), Method::POST, "/v1/recommendations/refresh", None).await;
    assert_eq!(refreshed.status, StatusCode::OK, "{}", refreshed.body);
    assert_eq!(refreshed.body["orders_counted"], 5);
    let refreshed = store.call(Some(&b.staff), Method::POST, "/v1/recommendations/refresh", None).await;
    assert_eq!(refreshed.body["orders_counted"], 3, "{}", refreshed.body);

    // Bought with a lamp: bulbs (twice), shades (once); then the most bought of the rest.
    let with_lamp = store.get(&a.staff, &format!("/v1/recommendations?product_id={}", a.products["Lamp"])).await;
    assert_eq!(with_lamp.body["source"], "embedded");
    assert!(with_lamp.body["refreshed_at"].is_string());
    assert_eq!(
        names(&a, &with_lamp.body),
        pairs(&[("Bulb", "bought_together"), ("Shade", "bought_together"), ("Desk", "popular")])
    );
    assert_eq!(with_lamp.body["items"][0]["score"].as_f64(), Some(2.0));

    // A shopper who bought a lamp and a bulb: the shade others bought with the lamp.
    let shopper = token_for(ids[0], CallerRole::Customer, "shopper-1");
    let me = store.post(&shopper, "/v1/customers", json!({ "email": "shopper-1@example.com", "name": "Sam" })).await;
    let order = json!({ "customer_id": me.body["id"], "items": [
        { "product_id": a.products["Lamp"], "quantity": 1 }, { "product_id": a.products["Bulb"], "quantity": 1 }] });
    assert_eq!(store.post(&shopper, "/v1/orders", order).await.status, StatusCode::CREATED);
    store.call(Some(&a.staff), Method::POST, "/v1/recommendations/refresh", None).await;
    let mine =
        store.get(&shopper, &format!("/v1/recommendations?customer_id={}", me.body["id"].as_str().unwrap())).await;
    assert_eq!(names(&a, &mine.body), pairs(&[("Shade", "bought_together"), ("Desk", "popular")]));

    // A new customer: the most bought first. Out of stock or not active: never.
    let popular = store.get(&a.staff, "/v1/recommendations").await;
    assert_eq!(names(&a, &popular.body)[0], ("Lamp".to_owned(), "popular".to_owned()));
    for (name, change) in [("Shade", json!({ "stock": 0 })), ("Desk", json!({ "status": "archived" }))] {
        let path = format!("/v1/products/{}", a.products[name]);
        assert_eq!(store.call(Some(&a.staff), Method::PATCH, &path, Some(change)).await.status, StatusCode::OK);
    }
    let remaining = store.get(&a.staff, "/v1/recommendations").await;
    assert_eq!(names(&a, &remaining.body), pairs(&[("Lamp", "popular"), ("Bulb", "popular")]));

    // The other tenant: its own pattern, and only its own products, even asked about A's lamp.
    let with_b_lamp = store.get(&b.staff, &format!("/v1/recommendations?product_id={}", b.products["Lamp"])).await;
    assert_eq!(names(&b, &with_b_lamp.body), pairs(&[("Desk", "bought_together")]));
    let asked_about_a = store.get(&b.staff, &format!("/v1/recommendations?product_id={}", a.products["Lamp"])).await;
    // (Lamp and Desk were each in three orders: the older product first.)
    assert_eq!(names(&b, &asked_about_a.body), pairs(&[("Lamp", "popular"), ("Desk", "popular")]));

    // A plan without the feature; a shopper cannot refresh.
    let plain = store.get(&token(ids[2], CallerRole::Staff), "/v1/recommendations").await;
    assert_eq!((plain.status, plain.code()), (StatusCode::FORBIDDEN, "feature_not_in_plan"));
    let by_shopper = store.call(Some(&shopper), Method::POST, "/v1/recommendations/refresh", None).await;
    assert_eq!(by_shopper.status, StatusCode::FORBIDDEN);
    store.cleanup().await;
}

/// Personalize runtime's `GetRecommendations` as a double: the items it is
/// told to answer with, and every request it was sent.
#[derive(Clone, Default)]
struct PersonalizeDouble {
    answer: std::sync::Arc<std::sync::Mutex<Option<Vec<String>>>>,
    requests: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
}

async fn get_recommendations(
    axum::extract::State(double): axum::extract::State<PersonalizeDouble>,
    axum::Json(request): axum::Json<Value>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    double.requests.lock().unwrap().push(request);
    match double.answer.lock().unwrap().clone() {
        Some(items) => {
            let items: Vec<Value> = items
                .iter()
                .enumerate()
                .map(|(n, id)| json!({ "itemId": id, "score": 0.9 - n as f64 / 10.0 }))
                .collect();
            axum::Json(json!({ "itemList": items, "recommendationId": "RID-test" })).into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            [("x-amzn-errortype", "ResourceNotFoundException")],
            axum::Json(json!({ "message": "Campaign not found" })),
        )
            .into_response(),
    }
}

#[tokio::test]
async fn a_tenant_with_a_personalize_campaign_gets_its_picks_and_the_built_in_recommender_when_it_fails() {
    use aws_sdk_personalizeruntime::config::{BehaviorVersion, Credentials, Region};
    let double = PersonalizeDouble::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .route("/recommendations", axum::routing::post(get_recommendations))
        .with_state(double.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let config = aws_sdk_personalizeruntime::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(&url)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .build();
    let personalize =
        indigo_dataplane::personalize::Personalize::new(aws_sdk_personalizeruntime::Client::from_conf(config));

    let (store, ids) = Store::start(&[("recs-aws", plan("pro")), ("recs-local", plan("pro"))]).await;
    const CAMPAIGN: &str = "arn:aws:personalize:us-east-1:123456789012:campaign/shop-recs";
    let mut routes = store.routes.clone();
    routes[0].personalize_campaign_arn = Some(CAMPAIGN.into());
    store.reroute(routes);
    let replica = store.replica(|state| state.personalize = Some(std::sync::Arc::new(personalize)));
    let a = shop(&store, ids[0], &[&["Lamp", "Bulb"]]).await;
    let b = shop(&store, ids[1], &[&["Lamp", "Bulb"]]).await;
    store.call(Some(&a.staff), Method::POST, "/v1/recommendations/refresh", None).await;

    // Personalize's order; an item that is not a product here, or not in stock, is left out.
    let shade = format!("/v1/products/{}", a.products["Shade"]);
    store.call(Some(&a.staff), Method::PATCH, &shade, Some(json!({ "stock": 0 }))).await;
    *double.answer.lock().unwrap() = Some(vec![
        a.products["Desk"].clone(),
        uuid::Uuid::new_v4().to_string(),
        b.products["Bulb"].clone(),
        a.products["Shade"].clone(),
        a.products["Bulb"].clone(),
    ]);
    let lamp = a.products["Lamp"].clone();
    let picks = replica.get(&a.staff, &format!("/v1/recommendations?product_id={lamp}&limit=5")).await;
    assert_eq!(picks.status, StatusCode::OK, "{}", picks.body);
    assert_eq!(picks.body["source"], "personalize");
    assert_eq!(names(&a, &picks.body), pairs(&[("Desk", "personalize"), ("Bulb", "personalize")]));
    let sent = double.requests.lock().unwrap()[0].clone();
    assert_eq!((sent["campaignArn"].as_str(), sent["itemId"].as_str()), (Some(CAMPAIGN), Some(lamp.as_str())));
    assert_eq!(sent["numResults"], 5);

    // Campaign gone: the built-in recommender answers.
    *double.answer.lock().unwrap() = None;
    let fallback = replica.get(&a.staff, &format!("/v1/recommendations?product_id={lamp}")).await;
    assert_eq!((fallback.status, &fallback.body["source"]), (StatusCode::OK, &json!("embedded")));
    assert_eq!(names(&a, &fallback.body), pairs(&[("Bulb", "bought_together")]));
    // A tenant without a campaign never reaches Personalize.
    let calls = double.requests.lock().unwrap().len();
    let local = replica.get(&b.staff, &format!("/v1/recommendations?product_id={}", b.products["Lamp"])).await;
    assert_eq!(local.body["source"], "embedded");
    assert_eq!(double.requests.lock().unwrap().len(), calls);
    store.cleanup().await;
}
