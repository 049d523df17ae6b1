//! Authentication: `Authorization: Bearer <credential>` is an API key (looked up in a table
//! from a file or Kubernetes Secrets) or, when it has the three dot-separated parts of a JWT
//! and JWT verification is configured, a token checked against the JWKS.

use std::sync::{Arc, RwLock};

use hyper::header::{HeaderMap, AUTHORIZATION};

use super::identity::{Identity, KeyTable};
use super::jwt::JwtVerifier;

/// Why a request was not authenticated (all are 401s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    Missing,
    /// Not a known API key.
    InvalidKey,
    /// A JWT that failed verification, with the reason.
    InvalidToken(String),
}

impl AuthError {
    /// Metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::InvalidKey => "invalid_key",
            AuthError::InvalidToken(_) => "invalid_token",
        }
    }

    /// Message for the client.
    pub fn message(&self) -> String {
        match self {
            AuthError::Missing => {
                "Missing credentials: send `Authorization: Bearer <API key or JWT>`.".into()
            }
            AuthError::InvalidKey => "Invalid API key.".into(),
            AuthError::InvalidToken(why) => format!("Invalid token: {why}."),
        }
    }
}

/// API keys and/or JWT verification; with neither configured every caller is anonymous.
pub struct Authenticator {
    keys: Option<RwLock<Arc<KeyTable>>>,
    jwt: Option<Arc<JwtVerifier>>,
    anonymous: Arc<Identity>,
}

impl Authenticator {
    /// `keys: Some` enables API keys (the table may be replaced later); `jwt` enables tokens.
    pub fn new(keys: Option<KeyTable>, jwt: Option<Arc<JwtVerifier>>) -> Self {
        Authenticator {
            keys: keys.map(|k| RwLock::new(Arc::new(k))),
            jwt,
            anonymous: Arc::new(Identity::anonymous()),
        }
    }

    /// No authentication.
    pub fn disabled() -> Self {
        Self::new(None, None)
    }

    /// Whether requests must authenticate.
    pub fn enabled(&self) -> bool {
        self.keys.is_some() || self.jwt.is_some()
    }

    /// The JWT verifier, if configured (for its refresh loop).
    pub fn jwt(&self) -> Option<&Arc<JwtVerifier>> {
        self.jwt.as_ref()
    }

    /// Replaces the API-key table (file reload, Secret change). A no-op without API keys.
    pub fn replace_keys(&self, table: KeyTable) {
        if let Some(k) = &self.keys {
            *k.write().expect("keys lock") = Arc::new(table);
        }
    }

    /// The caller's identity.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<Identity>, AuthError> {
        if !self.enabled() {
            return Ok(self.anonymous.clone());
        }
        let credential = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .ok_or(AuthError::Missing)?;
        if let Some(keys) = &self.keys {
            let table = keys.read().expect("keys lock").clone();
            if let Some(id) = table.get(credential) {
                return Ok(id.clone());
            }
        }
        match &self.jwt {
            Some(jwt) if credential.split('.').count() == 3 => jwt
                .verify(credential)
                .await
                .map(Arc::new)
                .map_err(AuthError::InvalidToken),
            _ => Err(AuthError::InvalidKey),
        }
    }
}
