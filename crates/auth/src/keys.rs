//! API keys, and the authentication seam that accepts them as bearer tokens.
//!
//! A key is `mfk_` and 43 characters of base64url (256 random bits). It is shown once; the
//! store keeps its SHA-256 (a slow hash buys nothing for a random 256-bit secret, and lookup
//! stays one indexed read).

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use base64::Engine;
use manifold_policy::Principal;
use manifold_server::{AuthError, Authenticate};
use manifold_store::Store;
use manifold_upstream::BoxFut;
use sha2::Digest;

/// What every API key starts with (so a leaked key is recognisable, e.g. by secret scanners).
pub const KEY_PREFIX: &str = "mfk_";

/// A new key and the hash to store.
pub fn new_key() -> (String, String) {
    let bytes: [u8; 32] = rand::random();
    let key = format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let hash = hash_key(&key);
    (key, hash)
}

/// The stored form of a key: SHA-256, hex.
pub fn hash_key(key: &str) -> String {
    sha2::Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The authentication seam over the store. A request without `Authorization` is anonymous
/// (until the gateway requires sign-in); one with `Authorization: Bearer mfk_…` is the key's
/// user, if the key is live, its user enabled, and the virtual server one the key is for;
/// anything else is refused (401), as is a token in the URL query.
pub struct StoreAuth {
    store: Store,
    /// When each key's use was last written (at most once a minute per key).
    touched: Mutex<HashMap<String, Instant>>,
}

impl StoreAuth {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            touched: Mutex::new(HashMap::new()),
        }
    }

    async fn check(&self, parts: &http::request::Parts) -> Result<Principal, AuthError> {
        let refuse = |m: &str| Err(AuthError(m.to_owned()));
        if parts.uri.query().is_some_and(|q| {
            q.split('&')
                .any(|p| p.starts_with("access_token=") || p.starts_with("api_key="))
        }) {
            return refuse(
                "a token in the URL is refused (URLs end up in logs): send it as `Authorization: Bearer <token>`",
            );
        }
        let Some(value) = parts.headers.get(http::header::AUTHORIZATION) else {
            return Ok(Principal::anonymous());
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim());
        let Some(token) = token else {
            return refuse("Authorization must be `Bearer <token>`");
        };
        if !token.starts_with(KEY_PREFIX) {
            return refuse("the bearer token is not one this gateway issued");
        }
        let found = self.store.api_key_by_hash(&hash_key(token)).await;
        let (key, user) = match found {
            Ok(Some(found)) => found,
            Ok(None) => return refuse("the API key is not known (it may have been deleted)"),
            Err(e) => {
                tracing::error!(error = %e, "cannot check an API key: the store failed");
                return refuse("the gateway cannot check credentials right now; try again");
            }
        };
        let now = manifold_store::now();
        if key.revoked_at.is_some() {
            return refuse("the API key was revoked");
        }
        if !key.live(now) {
            return refuse("the API key has expired: create a new one (`manifold keys create`)");
        }
        if user.disabled {
            return refuse("the API key's user is disabled");
        }
        let server = parts.uri.path().strip_prefix("/mcp/").unwrap_or_default();
        if !key.servers.iter().any(|s| s == server || s == "*") {
            return Err(AuthError(format!(
                "the API key is not valid for the virtual server {server:?} (it is for {})",
                key.servers.join(", ")
            )));
        }
        self.touch(&key.id, now);
        Ok(Principal::user(
            user.issuer,
            user.subject,
            user.roles,
            Vec::new(),
        ))
    }

    /// Record the key's use without holding up the request, at most once a minute.
    fn touch(&self, id: &str, now: i64) {
        {
            let mut t = self.touched.lock().expect("touched lock");
            if t.get(id)
                .is_some_and(|at| at.elapsed() < Duration::from_secs(60))
            {
                return;
            }
            if t.len() > 100_000 {
                t.clear();
            }
            t.insert(id.to_owned(), Instant::now());
        }
        let (store, id) = (self.store.clone(), id.to_owned());
        tokio::spawn(async move {
            if let Err(e) = store.touch_api_key(&id, now).await {
                tracing::warn!(error = %e, "cannot record an API key's use");
            }
        });
    }
}

impl Authenticate for StoreAuth {
    fn authenticate<'a>(
        &'a self,
        parts: &'a http::request::Parts,
    ) -> BoxFut<'a, Result<Principal, AuthError>> {
        Box::pin(self.check(parts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_long_random_and_stored_as_their_hash() {
        let (key, hash) = new_key();
        assert!(key.starts_with(KEY_PREFIX), "{key}");
        assert_eq!(
            key.len(),
            KEY_PREFIX.len() + 43,
            "256 bits of base64url: {key}"
        );
        assert!(
            key[KEY_PREFIX.len()..]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert_eq!(hash, hash_key(&key));
        assert_eq!(hash.len(), 64);
        assert!(!hash.contains(&key[KEY_PREFIX.len()..]));
        let (other, _) = new_key();
        assert_ne!(key, other);
        // SHA-256 of "abc", as FIPS 180-2 gives it.
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
