//! Storefront authentication: a bearer JWT whose verified claims are the only
//! source of the tenant context. HS256 with a shared secret by default; RS256
//! with keys from a JWKS URL as an option.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

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
    /// HS256: the shared secret, from which each tenant's own key is derived.
    PerTenant(Vec<u8>),
    /// RS256 keys by `kid`, refreshed from the JWKS URL.
    Jwks(Jwks),
}

/// A signing key set fetched over HTTPS. A token naming an unknown key may
/// carry a rotated one, so the set is fetched again, but by one request at a
/// time and at most once per [`JWKS_REFETCH`]: a flood of made-up `kid`s costs
/// the key server one request per interval, not one per token.
struct Jwks {
    url: reqwest::Url,
    http: reqwest::Client,
    keys: RwLock<HashMap<String, DecodingKey>>,
    /// When the set was last fetched; held across a fetch, so others wait for it.
    fetched_at: tokio::sync::Mutex<Option<Instant>>,
}

/// Shortest shared secret accepted for HS256 (its key is the secret's bytes).
pub const MIN_SECRET_BYTES: usize = 32;

/// Longest time a token may still have to live: a leaked token is not a key for life.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Least time between two fetches of the JWKS.
pub const JWKS_REFETCH: Duration = Duration::from_secs(10);

/// How long a JWKS fetch may take.
const JWKS_TIMEOUT: Duration = Duration::from_secs(5);

/// A verifier that cannot be built from what it was given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the JWT secret must be at least {MIN_SECRET_BYTES} bytes")]
    ShortSecret,
    #[error("the JWKS URL `{0}` must be https:// (http:// only on this machine's loopback)")]
    InsecureJwks(String),
}

/// Verifies storefront tokens.
#[derive(Clone)]
pub struct Verifier {
    keys: Arc<Keys>,
    validation: Arc<Validation>,
    verified: Arc<Mutex<HashMap<Box<str>, Verified>>>,
}

/// A token whose signature and claims were checked, kept by its exact text:
/// a shopper's requests carry the same token for its life, and checking it
/// again (header, key, HMAC, claims) is most of what a request costs the data
/// plane besides its read. Only the identical token finds it.
struct Verified {
    claims: Arc<Claims>,
    at: Instant,
}

/// How long a verified token is taken without being checked again: the
/// signing keys a JWKS withdraws are refused again within this time.
pub const VERIFIED_TOKEN_TTL: Duration = Duration::from_secs(60);

/// Most verified tokens kept; past it, all are forgotten and checked again.
const MAX_VERIFIED_TOKENS: usize = 100_000;

impl Verifier {
    pub fn hs256(secret: &[u8]) -> Result<Self, KeyError> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(KeyError::ShortSecret);
        }
        Ok(Self::with(Keys::PerTenant(secret.to_vec()), Algorithm::HS256))
    }

    pub fn jwks(url: &str) -> Result<Self, KeyError> {
        let insecure = || KeyError::InsecureJwks(url.to_owned());
        let parsed = reqwest::Url::parse(url).map_err(|_| insecure())?;
        let host = parsed.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
        let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
        if !(parsed.scheme() == "https" || parsed.scheme() == "http" && loopback) {
            return Err(insecure());
        }
        let http = reqwest::Client::builder().timeout(JWKS_TIMEOUT).build().map_err(|_| insecure())?;
        let jwks = Jwks { url: parsed, http, keys: RwLock::default(), fetched_at: tokio::sync::Mutex::default() };
        Ok(Self::with(Keys::Jwks(jwks), Algorithm::RS256))
    }

    fn with(keys: Keys, algorithm: Algorithm) -> Self {
        // Only the one algorithm: no `none`, no HS/RS confusion.
        let mut validation = Validation::new(algorithm);
        validation.leeway = 5;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_aud = false;
        Self { keys: Arc::new(keys), validation: Arc::new(validation), verified: Arc::default() }
    }

    /// The claims of `token`, once its signature and claims are checked; a
    /// token verified in the last [`VERIFIED_TOKEN_TTL`] is taken as it was,
    /// until it expires.
    pub async fn verify(&self, token: &str) -> Result<Arc<Claims>, AuthError> {
        let now = Instant::now();
        if let Some(known) = self.verified.lock().expect("verified tokens lock").get(token)
            && now.duration_since(known.at) < VERIFIED_TOKEN_TTL
        {
            if known.claims.exp + (self.validation.leeway as i64) < chrono::Utc::now().timestamp() {
                return Err(AuthError::Expired);
            }
            return Ok(known.claims.clone());
        }
        let claims = Arc::new(self.verify_uncached(token).await?);
        let mut verified = self.verified.lock().expect("verified tokens lock");
        if verified.len() >= MAX_VERIFIED_TOKENS {
            verified.clear();
        }
        verified.insert(token.into(), Verified { claims: claims.clone(), at: now });
        Ok(claims)
    }

    async fn verify_uncached(&self, token: &str) -> Result<Claims, AuthError> {
        let claims = self.verify_signature(token).await?;
        let lifetime = claims.exp.saturating_sub(chrono::Utc::now().timestamp());
        if lifetime > MAX_TOKEN_LIFETIME.as_secs() as i64 + self.validation.leeway as i64 {
            return Err(AuthError::Invalid(format!(
                "the token lives too long: at most {} hours from now",
                MAX_TOKEN_LIFETIME.as_secs() / 3600
            )));
        }
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
        let key = match &*self.keys {
            Keys::PerTenant(secret) => {
                let tenant = tenant_of_key(token)?;
                let claims =
                    decode::<Claims>(token, &DecodingKey::from_secret(&tenant_key(secret, tenant)), &self.validation)
                        .map_err(classify)?
                        .claims;
                if claims.tenant_id != tenant {
                    return Err(AuthError::Invalid("the token claims another tenant than its key's".into()));
                }
                return Ok(claims);
            }
            Keys::Jwks(jwks) => {
                let kid = decode_header(token)
                    .map_err(classify)?
                    .kid
                    .ok_or_else(|| AuthError::Invalid("the token names no key (kid)".into()))?;
                jwks.key(&kid).await?
            }
        };
        decode::<Claims>(token, &key, &self.validation).map(|d| d.claims).map_err(classify)
    }
}

impl Jwks {
    fn known(&self, kid: &str) -> Option<DecodingKey> {
        self.keys.read().expect("JWKS lock").get(kid).cloned()
    }

    async fn key(&self, kid: &str) -> Result<DecodingKey, AuthError> {
        if let Some(key) = self.known(kid) {
            return Ok(key);
        }
        let unknown = || AuthError::Invalid(format!("unknown signing key `{kid}`"));
        let mut fetched_at = self.fetched_at.lock().await;
        // Whoever held the lock may have fetched the key meanwhile.
        if let Some(key) = self.known(kid) {
            return Ok(key);
        }
        if fetched_at.is_some_and(|at| at.elapsed() < JWKS_REFETCH) {
            return Err(unknown());
        }
        *fetched_at = Some(Instant::now());
        let fetched = self.fetch().await?;
        *self.keys.write().expect("JWKS lock") = fetched;
        self.known(kid).ok_or_else(unknown)
    }

    async fn fetch(&self) -> Result<HashMap<String, DecodingKey>, AuthError> {
        let unavailable = |e: reqwest::Error| AuthError::Invalid(format!("signing keys unavailable: {e}"));
        let response = self.http.get(self.url.clone()).send().await.map_err(unavailable)?;
        let set: JwkSet = response.error_for_status().map_err(unavailable)?.json().await.map_err(unavailable)?;
        let keys =
            set.keys.iter().filter_map(|jwk| Some((jwk.common.key_id.clone()?, DecodingKey::from_jwk(jwk).ok()?)));
        Ok(keys.collect())
    }
}

/// The key a tenant's HS256 tokens are signed with: derived from the shared
/// secret and the tenant (HMAC-SHA256), so that whoever holds one tenant's
/// key (its own backend, minting its shoppers' tokens) can sign for that
/// tenant only, and the data plane needs only the one secret to verify all.
pub fn tenant_key(secret: &[u8], tenant: TenantId) -> Vec<u8> {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(b"indigo storefront signing key\0");
    mac.update(tenant.0.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// The tenant whose key signed `token`, as its header names it (`kid`).
fn tenant_of_key(token: &str) -> Result<TenantId, AuthError> {
    let header = decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
    header
        .kid
        .and_then(|kid| kid.parse().ok())
        .ok_or_else(|| AuthError::Invalid("the token names no tenant key (kid)".into()))
}

/// Makes a token with its tenant's key, derived from `secret` (for tools,
/// tests and the benchmark; see [`tenant_key`]).
pub fn sign_hs256(secret: &[u8], claims: &Claims) -> String {
    sign_with_tenant_key(&tenant_key(secret, claims.tenant_id), claims)
}

/// Makes a token with a tenant's own key, as the tenant's backend does.
pub fn sign_with_tenant_key(key: &[u8], claims: &Claims) -> String {
    let header = jsonwebtoken::Header { kid: Some(claims.tenant_id.to_string()), ..Default::default() };
    jsonwebtoken::encode(&header, claims, &jsonwebtoken::EncodingKey::from_secret(key))
        .expect("HS256 signing of serializable claims cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"a-test-secret-of-at-least-32-bytes!";

    fn claims(exp: i64) -> Claims {
        Claims { tenant_id: TenantId::new(), sub: "shopper".into(), role: CallerRole::Customer, exp }
    }

    #[tokio::test]
    async fn a_verified_token_is_taken_again_only_as_its_exact_text_and_until_it_expires() {
        let verifier = Verifier::hs256(SECRET).unwrap();
        let token = sign_hs256(SECRET, &claims(chrono::Utc::now().timestamp() + 3600));
        let first = verifier.verify(&token).await.unwrap();
        let again = verifier.verify(&token).await.unwrap();
        assert!(Arc::ptr_eq(&first, &again), "the second request takes the verified claims");

        // Another signature on the same header and claims is checked, and refused.
        let (signed, signature) = token.rsplit_once('.').unwrap();
        let flipped = if signature.starts_with('A') { "B" } else { "A" };
        let forged = format!("{signed}.{flipped}{}", &signature[1..]);
        assert!(verifier.verify(&forged).await.is_err());

        // A kept token past its expiry (and the leeway) is refused, kept or not.
        let expired = Arc::new(claims(chrono::Utc::now().timestamp() - 60));
        verifier
            .verified
            .lock()
            .unwrap()
            .insert(token.as_str().into(), Verified { claims: expired, at: Instant::now() });
        assert_eq!(verifier.verify(&token).await.unwrap_err(), AuthError::Expired);

        // Kept longer than the TTL, it is checked again (and is valid again: its own claims are).
        let stale = Instant::now().checked_sub(VERIFIED_TOKEN_TTL + Duration::from_secs(1)).unwrap();
        verifier.verified.lock().unwrap().get_mut(token.as_str()).unwrap().at = stale;
        let rechecked = verifier.verify(&token).await.unwrap();
        assert_eq!(rechecked.exp, first.exp);
    }
}
