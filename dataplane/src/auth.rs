//! Storefront authentication: a bearer JWT whose verified claims are the only
//! source of the tenant context. HS256 with a shared secret by default; RS256
//! with keys from a JWKS URL as an option.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use indigo_core::tenant::TenantId;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::{Deserialize, Serialize};

/// What a storefront caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallerRole {
    /// The shop's owner: everything.
    Owner,
    /// The shop's staff: catalogue and orders.
    Staff,
    /// A shopper: reads the catalogue, places orders.
    Customer,
}

impl CallerRole {
    /// As the data plane's transactions name it (`app.current_role`, which the
    /// `shopper_scope` policies read).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Owner => "owner",
            Self::Staff => "staff",
            Self::Customer => "customer",
        }
    }

    pub fn manages_catalogue(self) -> bool {
        matches!(self, Self::Owner | Self::Staff)
    }
}

/// The claims Indigo requires. Unknown claims are ignored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub tenant_id: TenantId,
    pub sub: String,
    pub role: CallerRole,
    pub exp: i64,
}

/// Longest subject (`sub`) a token may carry (`customers.subject` holds it).
pub const MAX_SUBJECT_CHARS: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("the token is expired")]
    Expired,
    #[error("the token is not valid: {0}")]
    Invalid(String),
}

enum Keys {
    Shared(DecodingKey),
    /// RS256 keys by `kid`, refreshed from the JWKS URL.
    Jwks {
        url: String,
        keys: RwLock<HashMap<String, DecodingKey>>,
        http: reqwest::Client,
    },
}

/// Verifies storefront tokens.
#[derive(Clone)]
pub struct Verifier {
    keys: Arc<Keys>,
    validation: Arc<Validation>,
}

impl Verifier {
    pub fn hs256(secret: &[u8]) -> Self {
        Self::with(Keys::Shared(DecodingKey::from_secret(secret)), Algorithm::HS256)
    }

    pub fn jwks(url: &str) -> Self {
        let keys = Keys::Jwks { url: url.to_owned(), keys: RwLock::default(), http: reqwest::Client::new() };
        Self::with(keys, Algorithm::RS256)
    }

    fn with(keys: Keys, algorithm: Algorithm) -> Self {
        // Only the one algorithm: no `none`, no HS/RS confusion.
        let mut validation = Validation::new(algorithm);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_aud = false;
        Self { keys: Arc::new(keys), validation: Arc::new(validation) }
    }

    pub async fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let claims = self.verify_signature(token).await?;
        // The subject names the shopper a customer token acts for; it is stored
        // with that shopper's records, so it must be a short printable name.
        let length = claims.sub.chars().count();
        if !(1..=MAX_SUBJECT_CHARS).contains(&length) || claims.sub.chars().any(char::is_control) {
            return Err(AuthError::Invalid(format!(
                "the subject (sub) must be 1 to {MAX_SUBJECT_CHARS} printable characters"
            )));
        }
        Ok(claims)
    }

    async fn verify_signature(&self, token: &str) -> Result<Claims, AuthError> {
        let classify = |e: jsonwebtoken::errors::Error| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
            _ => AuthError::Invalid(e.to_string()),
        };
        match &*self.keys {
            Keys::Shared(key) => decode::<Claims>(token, key, &self.validation).map(|d| d.claims).map_err(classify),
            Keys::Jwks { url, keys, http } => {
                let kid = decode_header(token)
                    .map_err(classify)?
                    .kid
                    .ok_or_else(|| AuthError::Invalid("the token names no key (kid)".into()))?;
                let known = keys.read().expect("JWKS lock").get(&kid).cloned();
                let key = match known {
                    Some(key) => key,
                    None => {
                        // An unknown kid may be a rotated key: fetch the set once more.
                        let fetched = fetch_jwks(http, url).await?;
                        let key = fetched.get(&kid).cloned();
                        *keys.write().expect("JWKS lock") = fetched;
                        key.ok_or_else(|| AuthError::Invalid(format!("unknown signing key `{kid}`")))?
                    }
                };
                decode::<Claims>(token, &key, &self.validation).map(|d| d.claims).map_err(classify)
            }
        }
    }
}

async fn fetch_jwks(http: &reqwest::Client, url: &str) -> Result<HashMap<String, DecodingKey>, AuthError> {
    let unavailable = |e: reqwest::Error| AuthError::Invalid(format!("signing keys unavailable: {e}"));
    let set: JwkSet = http.get(url).send().await.map_err(unavailable)?.json().await.map_err(unavailable)?;
    Ok(set.keys.iter().filter_map(|jwk| Some((jwk.common.key_id.clone()?, DecodingKey::from_jwk(jwk).ok()?))).collect())
}

/// Makes a token (for tests, tools and the benchmark).
pub fn sign_hs256(secret: &[u8], claims: &Claims) -> String {
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), claims, &jsonwebtoken::EncodingKey::from_secret(secret))
        .expect("HS256 signing of serializable claims cannot fail")
}
