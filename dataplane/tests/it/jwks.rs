//! RS256 tokens verified with keys fetched from a JWKS URL over real HTTP.

use axum::http::StatusCode;
use axum::routing::get;
use indigo_dataplane::auth::{CallerRole, Claims, KeyError, Verifier};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

const PRIVATE_PEM: &[u8] = include_bytes!("../fixtures/rsa_private.pem");
const JWKS: &str = include_str!("../fixtures/jwks.json");

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

    let verifier = Verifier::jwks(&url).unwrap();
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
    let hs = crate::support::token(tenant, CallerRole::Owner);
    assert!(verifier.verify(&hs).await.is_err());
    let expired = Claims { exp: chrono::Utc::now().timestamp() - 600, ..claims };
    assert!(verifier.verify(&rs256(&expired, "test-key-1")).await.is_err());

    // And through the storefront itself.
    let (mut store, ids) = crate::support::Store::start(&[("rsa-shop", crate::support::plan("pro"))]).await;
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

/// Serves the fixture JWKS on loopback and counts the fetches.
async fn key_server() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let fetches = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = fetches.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/.well-known/jwks.json", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/.well-known/jwks.json",
        get(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async { ([("content-type", "application/json")], JWKS) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, fetches)
}

/// Tokens that cannot be stretched: not before their `nbf`, not for longer than
/// a day, not signed with a guessable secret, keys not fetched in clear text.
#[tokio::test]
async fn tokens_cannot_be_stretched() {
    let (url, _) = key_server().await;
    let verifier = Verifier::jwks(&url).unwrap();
    let now = chrono::Utc::now().timestamp();
    let claims = Claims {
        tenant_id: indigo_core::tenant::TenantId::new(),
        sub: "u".into(),
        role: CallerRole::Owner,
        exp: now + 600,
    };
    assert!(verifier.verify(&rs256(&claims, "test-key-1")).await.is_ok());

    let a_week = Claims { exp: now + 7 * 24 * 3600, ..claims.clone() };
    let refused = verifier.verify(&rs256(&a_week, "test-key-1")).await.unwrap_err();
    assert!(refused.to_string().contains("lives too long"), "{refused}");

    // `nbf` in the future: signed now, valid only later.
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("test-key-1".into());
    let mut early = serde_json::to_value(&claims).unwrap();
    early["nbf"] = (now + 600).into();
    let early = jsonwebtoken::encode(&header, &early, &EncodingKey::from_rsa_pem(PRIVATE_PEM).unwrap()).unwrap();
    assert!(verifier.verify(&early).await.is_err(), "a token is not valid before its nbf");

    assert_eq!(Verifier::hs256(b"").err(), Some(KeyError::ShortSecret), "an empty secret signs forgeable tokens");
    assert_eq!(Verifier::hs256(&[7; 31]).err(), Some(KeyError::ShortSecret));
    assert!(Verifier::hs256(&[7; 32]).is_ok());
    for insecure in ["http://keys.example.com/jwks.json", "ftp://127.0.0.1/jwks.json", "not a url"] {
        assert!(matches!(Verifier::jwks(insecure), Err(KeyError::InsecureJwks(_))), "{insecure}");
    }
    assert!(Verifier::jwks("https://keys.example.com/jwks.json").is_ok());
    assert!(Verifier::jwks("http://[::1]:9/jwks.json").is_ok(), "loopback may be plain http");
}

/// A flood of tokens naming made-up keys costs the key server one fetch per
/// interval, however many and however concurrent; known keys keep verifying.
#[tokio::test]
async fn a_flood_of_unknown_kids_fetches_the_keys_once() {
    use std::sync::atomic::Ordering;
    let (url, fetches) = key_server().await;
    let verifier = Verifier::jwks(&url).unwrap();
    let claims = Claims {
        tenant_id: indigo_core::tenant::TenantId::new(),
        sub: "u".into(),
        role: CallerRole::Owner,
        exp: chrono::Utc::now().timestamp() + 600,
    };
    let flood: Vec<_> = (0..300)
        .map(|i| {
            let (verifier, token) = (verifier.clone(), rs256(&claims, &format!("made-up-{i}")));
            tokio::spawn(async move { verifier.verify(&token).await })
        })
        .collect();
    for attempt in flood {
        assert!(attempt.await.unwrap().is_err(), "an unknown kid is refused");
    }
    assert_eq!(fetches.load(Ordering::SeqCst), 1, "one fetch for the whole flood");
    assert!(verifier.verify(&rs256(&claims, "test-key-1")).await.is_ok());
    assert_eq!(fetches.load(Ordering::SeqCst), 1, "the known key came with that fetch");
}
