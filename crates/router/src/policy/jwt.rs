//! JWT bearer tokens verified against a JWKS fetched over HTTP (a loopback or in-cluster URL;
//! there is no TLS client in the router) and cached: refreshed every `refresh`, and at most
//! once per [`UNKNOWN_KID_REFETCH`] when a token names a key id the cache lacks (key rotation).
//!
//! Only asymmetric keys (RSA, EC, OKP) are used; the token's `alg` must belong to its key's
//! family, so a token cannot pick `HS256` and turn a public key into a shared secret.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use super::identity::{Identity, Priority};

/// Shortest gap between two fetches triggered by unknown key ids.
pub const UNKNOWN_KID_REFETCH: Duration = Duration::from_secs(10);

/// JWT settings.
#[derive(Debug, Clone)]
pub struct JwtConfig {
    /// `http://` URL of the JWKS document.
    pub jwks_url: hyper::Uri,
    /// Required `iss`, if any.
    pub issuer: Option<String>,
    /// Required `aud`, if any.
    pub audience: Option<String>,
    /// Claim naming the tenant (default `tenant`; absent → the `sub`).
    pub tenant_claim: String,
    /// Claim listing allowed models (array or space/comma-separated string; absent → all).
    pub models_claim: String,
    /// Claim naming the priority class (`high`, `normal`, `low`).
    pub priority_claim: String,
    /// Periodic JWKS refresh.
    pub refresh: Duration,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    Rsa,
    Ec,
    Ed,
}

fn family_of(alg: Algorithm) -> Option<Family> {
    use Algorithm::*;
    match alg {
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => Some(Family::Rsa),
        ES256 | ES384 => Some(Family::Ec),
        EdDSA => Some(Family::Ed),
        HS256 | HS384 | HS512 => None,
    }
}

struct CachedKey {
    kid: Option<String>,
    family: Family,
    key: DecodingKey,
}

/// Verifies tokens; cheap to share.
pub struct JwtVerifier {
    config: JwtConfig,
    keys: RwLock<Arc<Vec<CachedKey>>>,
    last_fetch: Mutex<Option<Instant>>,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
}

impl JwtVerifier {
    /// A verifier with an empty key cache (call [`JwtVerifier::refresh`]).
    pub fn new(config: JwtConfig) -> Self {
        JwtVerifier {
            config,
            keys: RwLock::new(Arc::new(Vec::new())),
            last_fetch: Mutex::new(None),
            // No pooling: fetches are rare and may come from any worker's runtime.
            client: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(0)
                .build_http(),
        }
    }

    /// Settings.
    pub fn config(&self) -> &JwtConfig {
        &self.config
    }

    /// Fetches the JWKS and replaces the cache; returns the number of usable keys.
    pub async fn refresh(&self) -> Result<usize, String> {
        *self.last_fetch.lock().expect("fetch lock") = Some(Instant::now());
        let url = &self.config.jwks_url;
        let req = hyper::Request::get(url.clone())
            .body(Empty::new())
            .map_err(|e| format!("JWKS request for {url}: {e}"))?;
        let resp = tokio::time::timeout(Duration::from_secs(5), self.client.request(req))
            .await
            .map_err(|_| format!("JWKS fetch from {url} timed out"))?
            .map_err(|e| format!("JWKS fetch from {url}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("JWKS fetch from {url} answered {}", resp.status()));
        }
        let body = tokio::time::timeout(
            Duration::from_secs(5),
            Limited::new(resp.into_body(), 1 << 20).collect(),
        )
        .await
        .map_err(|_| format!("JWKS body from {url} timed out"))?
        .map_err(|e| format!("JWKS body from {url}: {e}"))?
        .to_bytes();
        let set: JwkSet = serde_json::from_slice(&body)
            .map_err(|e| format!("JWKS from {url} is not a JWK set: {e}"))?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
            let family = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Family::Rsa,
                AlgorithmParameters::EllipticCurve(_) => Family::Ec,
                AlgorithmParameters::OctetKeyPair(_) => Family::Ed,
                AlgorithmParameters::OctetKey(_) => continue, // shared secrets never come from a JWKS
            };
            match DecodingKey::from_jwk(jwk) {
                Ok(key) => keys.push(CachedKey {
                    kid: jwk.common.key_id.clone(),
                    family,
                    key,
                }),
                Err(e) => {
                    tracing::warn!(kid = ?jwk.common.key_id, error = %e, "skipping unusable JWK")
                }
            }
        }
        let n = keys.len();
        *self.keys.write().expect("keys lock") = Arc::new(keys);
        Ok(n)
    }

    fn find(&self, kid: Option<&str>, family: Family) -> Option<DecodingKey> {
        let keys = self.keys.read().expect("keys lock").clone();
        keys.iter()
            .find(|k| k.family == family && (kid.is_none() || k.kid.as_deref() == kid))
            .map(|k| k.key.clone())
    }

    /// Verifies `token` and derives the caller's identity; the error says why it was refused.
    pub async fn verify(&self, token: &str) -> Result<Identity, String> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| format!("malformed JWT: {e}"))?;
        let family = family_of(header.alg)
            .ok_or_else(|| format!("JWT algorithm {:?} is not accepted", header.alg))?;
        let kid = header.kid.as_deref();
        let key = match self.find(kid, family) {
            Some(k) => k,
            None => {
                let may_fetch = self
                    .last_fetch
                    .lock()
                    .expect("fetch lock")
                    .is_none_or(|t| t.elapsed() >= UNKNOWN_KID_REFETCH);
                if may_fetch {
                    if let Err(e) = self.refresh().await {
                        tracing::warn!(error = %e, "JWKS refresh failed");
                    }
                }
                self.find(kid, family)
                    .ok_or_else(|| format!("no JWKS key matches kid {kid:?}"))?
            }
        };
        let mut validation = Validation::new(header.alg);
        validation.leeway = 30;
        match &self.config.issuer {
            Some(iss) => validation.set_issuer(&[iss]),
            None => validation.iss = None,
        }
        match &self.config.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&["exp", "sub"]);
        let data = jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &key, &validation)
            .map_err(|e| format!("JWT rejected: {e}"))?;
        identity_from_claims(&data.claims, &self.config)
    }
}

/// The identity a verified token's claims describe.
pub fn identity_from_claims(
    claims: &serde_json::Map<String, Value>,
    config: &JwtConfig,
) -> Result<Identity, String> {
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or("JWT has no string `sub`")?;
    let tenant = match claims.get(&config.tenant_claim) {
        None | Some(Value::Null) => sub,
        Some(Value::String(t)) if !t.is_empty() => t.as_str(),
        Some(other) => {
            return Err(format!(
                "JWT claim `{}` must be a non-empty string, got {other}",
                config.tenant_claim
            ))
        }
    };
    let models = match claims.get(&config.models_claim) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(
            s.split([',', ' '])
                .filter(|m| !m.is_empty())
                .map(str::to_string)
                .collect::<HashSet<_>>(),
        ),
        Some(Value::Array(a)) => Some(
            a.iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<HashSet<_>>>()
                .ok_or_else(|| format!("JWT claim `{}` must list strings", config.models_claim))?,
        ),
        Some(other) => {
            return Err(format!(
                "JWT claim `{}` must be a string or a list of strings, got {other}",
                config.models_claim
            ))
        }
    };
    let priority = match claims.get(&config.priority_claim).and_then(Value::as_str) {
        Some(p) => {
            Priority::parse(p).map_err(|e| format!("JWT claim `{}`: {e}", config.priority_claim))?
        }
        None => Priority::Normal,
    };
    Ok(Identity {
        tenant: tenant.into(),
        user: sub.into(),
        key: format!("jwt:{sub}").into(),
        models: models.map(Arc::new),
        priority,
        weight: 1.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg() -> JwtConfig {
        JwtConfig {
            jwks_url: "http://127.0.0.1:9/jwks".parse().unwrap(),
            issuer: None,
            audience: None,
            tenant_claim: "tenant".into(),
            models_claim: "models".into(),
            priority_claim: "priority".into(),
            refresh: Duration::from_secs(300),
        }
    }

    #[test]
    fn claims_map_to_identity() {
        let c = json!({"sub": "u1", "tenant": "acme", "models": ["llama"], "priority": "low"});
        let id = identity_from_claims(c.as_object().unwrap(), &cfg()).unwrap();
        assert_eq!(
            (&*id.tenant, &*id.user, id.priority),
            ("acme", "u1", Priority::Low)
        );
        assert!(id.may_use("llama") && !id.may_use("qwen"));
        let c = json!({"sub": "u2", "models": "a b"});
        let id = identity_from_claims(c.as_object().unwrap(), &cfg()).unwrap();
        assert_eq!(&*id.tenant, "u2");
        assert!(id.may_use("b"));
        for bad in [
            json!({}),
            json!({"sub": "u", "tenant": 3}),
            json!({"sub": "u", "models": [1]}),
        ] {
            assert!(
                identity_from_claims(bad.as_object().unwrap(), &cfg()).is_err(),
                "{bad}"
            );
        }
    }
}
