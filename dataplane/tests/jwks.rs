//! RS256 tokens verified with keys fetched from a JWKS URL over real HTTP.

mod support;

use axum::http::StatusCode;
use axum::routing::get;
use indigo_dataplane::auth::{CallerRole, Claims, Verifier};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

const PRIVATE_PEM: &[u8] = include_bytes!("fixtures/rsa_private.pem");
const JWKS: &str = include_str!("fixtures/jwks.json");

fn rs256(claims: &Claims, kid: &str) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_rsa_pem(PRIVATE_PEM).unwrap()).unwrap()
}

#[tokio::test]
async fn rs256_tokens_verify_against_the_jwks_url() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/.well-known/jwks.json", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .route("/.well-known/jwks.json", get(|| async { ([("content-type", "application/json")], JWKS) }));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let verifier = Verifier::jwks(&url);
    let tenant = indigo_core::tenant::TenantId::new();
    let claims = Claims {
        tenant_id: tenant,
        sub: "u".into(),
        role: CallerRole::Staff,
        exp: chrono::Utc::now().timestamp() + 600,
    };
    let verified = verifier.verify(&rs256(&claims, "test-key-1")).await.unwrap();
    assert_eq!((verified.tenant_id, verified.role), (tenant, CallerRole::Staff));

    assert!(verifier.verify(&rs256(&claims, "unknown-key")).await.is_err(), "an unknown kid is refused");
    // An HS256 token is refused by an RS256 verifier, even one signed with the public key's bytes.
    let hs = support::token(tenant, CallerRole::Owner);
    assert!(verifier.verify(&hs).await.is_err());
    let expired = Claims { exp: chrono::Utc::now().timestamp() - 600, ..claims };
    assert!(verifier.verify(&rs256(&expired, "test-key-1")).await.is_err());

    // And through the storefront itself.
    let (mut store, ids) = support::Store::start(&[("rsa-shop", support::plan("pro"))]).await;
    store.state.verifier = verifier;
    store.router = indigo_dataplane::api::router(store.state.clone());
    let claims = Claims {
        tenant_id: ids[0],
        sub: "u".into(),
        role: CallerRole::Owner,
        exp: chrono::Utc::now().timestamp() + 600,
    };
    let reply = store.get(&rs256(&claims, "test-key-1"), "/v1/products").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    store.cleanup().await;
}
