//! Authentication: `Authorization: Bearer <credential>` is an API key (looked up in a table
//! from a file or Kubernetes Secrets) or, when it has the three dot-separated parts of a JWT
//! and JWT verification is configured, a token checked against the JWKS.

use std::sync::atomic::{AtomicBool, Ordering};
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
    /// False until a key source read after start (Kubernetes Secrets) delivers its first table;
    /// the router is not ready before, or it would turn valid keys away.
    keys_loaded: AtomicBool,
    jwt: Option<Arc<JwtVerifier>>,
    anonymous: Arc<Identity>,
}

impl Authenticator {
    /// `keys: Some` enables API keys (the table may be replaced later); `jwt` enables tokens.
    pub fn new(keys: Option<KeyTable>, jwt: Option<Arc<JwtVerifier>>) -> Self {
        Authenticator {
            keys: keys.map(|k| RwLock::new(Arc::new(k))),
            keys_loaded: AtomicBool::new(true),
            jwt,
            anonymous: Arc::new(Identity::anonymous()),
        }
    }

    /// API keys that arrive later (from Kubernetes Secrets): until the first
    /// [`replace_keys`](Self::replace_keys), [`keys_loaded`](Self::keys_loaded) is false.
    pub fn awaiting_keys(jwt: Option<Arc<JwtVerifier>>) -> Self {
        let auth = Self::new(Some(KeyTable::new()), jwt);
        auth.keys_loaded.store(false, Ordering::Release);
        auth
    }

    /// Whether the API-key table has been loaded (always, unless built by
    /// [`awaiting_keys`](Self::awaiting_keys)).
    pub fn keys_loaded(&self) -> bool {
        self.keys_loaded.load(Ordering::Acquire)
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
            self.keys_loaded.store(true, Ordering::Release);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::identity::bare_identity;

    fn bearer(key: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, format!("Bearer {key}").parse().unwrap());
        h
    }

    #[tokio::test]
    async fn keys_from_a_later_source_are_not_loaded_until_the_first_table() {
        let auth = Authenticator::awaiting_keys(None);
        assert!(auth.enabled() && !auth.keys_loaded());
        assert_eq!(
            auth.authenticate(&bearer("sk-1")).await.unwrap_err(),
            AuthError::InvalidKey
        );
        let mut table = KeyTable::new();
        table.insert("sk-1".into(), Arc::new(bare_identity("sk-1")));
        auth.replace_keys(table);
        assert!(auth.keys_loaded());
        assert!(auth.authenticate(&bearer("sk-1")).await.is_ok());
        // An empty first table (no Secrets yet) also counts as loaded.
        let empty = Authenticator::awaiting_keys(None);
        empty.replace_keys(KeyTable::new());
        assert!(empty.keys_loaded());
        assert!(Authenticator::new(Some(KeyTable::new()), None).keys_loaded());
    }
}
