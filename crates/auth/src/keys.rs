//! API keys, and the authentication seam that accepts them as bearer tokens.
//!
//! A key is `mfk_` and 43 characters of base64url (256 random bits). It is shown once; the
//! store keeps its SHA-256 (a slow hash buys nothing for a random 256-bit secret, and lookup
//! stays one indexed read).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use base64::Engine;
use manifold_policy::Principal;
use manifold_server::{AuthError, AuthErrorKind, Authenticate};

use crate::{AuthServer, SCOPE, verified::Verified};
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
/// anything else is refused (401), as is a token in the URL query. A credential accepted once
/// is remembered (`verified`) until it expires or anything is withdrawn, so a repeated one
/// costs a hash and a lookup.
pub struct StoreAuth {
    store: Store,
    verified: Arc<Verified>,
    /// The authorization server whose access tokens are accepted, if sign-in is on.
    oauth: Option<Arc<AuthServer>>,
    /// When each key's use was last written (at most once a minute per key).
    touched: Mutex<HashMap<String, Instant>>,
}

impl StoreAuth {
    /// API keys only. Needs a tokio runtime (for the task that watches the store's changes).
    pub fn new(store: Store) -> Self {
        Self {
            verified: Verified::start(store.clone()),
            store,
            oauth: None,
            touched: Mutex::new(HashMap::new()),
        }
    }

    /// API keys and the authorization server's access tokens; a request without either is
    /// refused with a challenge naming the virtual server's resource metadata when
    /// `auth.required` is set.
    pub fn with_oauth(store: Store, oauth: Arc<AuthServer>) -> Self {
        Self {
            oauth: Some(oauth),
            ..Self::new(store)
        }
    }

    async fn check(&self, parts: &http::request::Parts) -> Result<Principal, AuthError> {
        let server = parts.uri.path().strip_prefix("/mcp/").unwrap_or_default();
        self.identify(parts, server).await.map_err(|mut e| {
            // Built only for a refusal: accepted requests pay nothing for it.
            e.challenge = self.oauth.as_ref().map(|o| o.challenge(server));
            e
        })
    }

    async fn identify(
        &self,
        parts: &http::request::Parts,
        server: &str,
    ) -> Result<Principal, AuthError> {
        let refuse = |m: &str| Err(AuthError::invalid(m));
        if parts.uri.query().is_some_and(|q| {
            q.split('&')
                .any(|p| p.starts_with("access_token=") || p.starts_with("api_key="))
        }) {
            return refuse(
                "a token in the URL is refused (URLs end up in logs): send it as `Authorization: Bearer <token>`",
            );
        }
        let Some(value) = parts.headers.get(http::header::AUTHORIZATION) else {
            if self.oauth.as_ref().is_some_and(|o| o.required()) {
                return Err(AuthError {
                    message: "sign in: this virtual server needs an access token or an API key"
                        .into(),
                    kind: AuthErrorKind::Missing,
                    challenge: None,
                });
            }
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
        let cached = Verified::key(server, token);
        let now = manifold_store::now();
        if let Some((principal, key_id)) = self.verified.get(&cached, now) {
            if let Some(id) = key_id {
                self.touch(&id, now);
            }
            return Ok(principal);
        }
        // Taken before the store is read: a withdrawal meanwhile voids what this check finds.
        let stamp = self.verified.stamp();
        if !token.starts_with(KEY_PREFIX) {
            return match &self.oauth {
                Some(o) => {
                    let (principal, exp) = self.access_token(o, token, server).await?;
                    self.verified
                        .put(cached, &principal, None, Some(exp), stamp, now);
                    Ok(principal)
                }
                None => refuse("the bearer token is not one this gateway issued"),
            };
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
        if let Some(why) = unusable(&key, &user, now) {
            return refuse(why);
        }
        if !key.servers.iter().any(|s| s == server || s == "*") {
            return Err(AuthError::invalid(format!(
                "the API key is not valid for the virtual server {server:?} (it is for {})",
                key.servers.join(", ")
            )));
        }
        self.touch(&key.id, now);
        let principal = Principal::user(user.issuer, user.subject, user.roles, Vec::new())
            .with_groups(user.groups);
        self.verified.put(
            cached,
            &principal,
            Some(&key.id),
            key.expires_at,
            stamp,
            now,
        );
        Ok(principal)
    }

    /// The administrator whose API key `headers` present: a live key for every server
    /// (`--server '*'`) of an enabled user holding one of `admin_roles`. Refused: the HTTP
    /// status (401 without a usable key, 403 for a user who is no administrator) and why.
    pub async fn administrator(
        &self,
        headers: &http::HeaderMap,
        admin_roles: &[String],
    ) -> Result<manifold_store::User, (u16, String)> {
        let unknown = |m: &str| Err((401, m.to_owned()));
        let token = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
            .filter(|t| t.starts_with(KEY_PREFIX));
        let Some(token) = token else {
            return unknown(
                "send an administrator's API key as `Authorization: Bearer mfk_…` (`manifold keys create --user NAME --server '*'`)",
            );
        };
        let (key, user) = match self.store.api_key_by_hash(&hash_key(token)).await {
            Ok(Some(found)) => found,
            Ok(None) => return unknown("the API key is not known (it may have been deleted)"),
            Err(e) => {
                tracing::error!(error = %e, "cannot check an API key: the store failed");
                return Err((
                    503,
                    "the gateway cannot check credentials right now; try again".into(),
                ));
            }
        };
        let now = manifold_store::now();
        if let Some(why) = unusable(&key, &user, now) {
            return unknown(why);
        }
        if !key.servers.iter().any(|s| s == "*") {
            return Err((
                403,
                format!(
                    "the API key is for {} only: administration needs a key for every server (`manifold keys create --server '*'`)",
                    key.servers.join(", ")
                ),
            ));
        }
        if !user.roles.iter().any(|r| admin_roles.contains(r)) {
            return Err((
                403,
                format!(
                    "{} holds none of the administrator roles (auth.admin_roles: {})",
                    user.name,
                    admin_roles.join(", ")
                ),
            ));
        }
        self.touch(&key.id, now);
        Ok(user)
    }

    /// The user of a valid access token for this virtual server, if their grant stands and
    /// they are enabled, and when the token expires.
    async fn access_token(
        &self,
        o: &AuthServer,
        token: &str,
        server: &str,
    ) -> Result<(Principal, i64), AuthError> {
        let claims = o
            .verify(token, &o.resource(server))
            .await
            .map_err(|e| AuthError::invalid(e.to_string()))?;
        let holder = self.store.token_holder(&claims.sub, &claims.sid).await;
        let user = match holder {
            Ok(Some((user, true))) if !user.disabled => user,
            Ok(Some((_, true))) => return Err(AuthError::invalid("the token's user is disabled")),
            Ok(_) => {
                return Err(AuthError::invalid(
                    "the token's sign-in was revoked: sign in again",
                ));
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot check an access token: the store failed");
                return Err(AuthError::invalid(
                    "the gateway cannot check credentials right now; try again",
                ));
            }
        };
        let scopes: Vec<String> = claims.scope.split_whitespace().map(str::to_owned).collect();
        if !scopes.iter().any(|s| s == SCOPE) {
            return Err(AuthError {
                message: format!("the token lacks the scope {SCOPE:?}"),
                kind: AuthErrorKind::InsufficientScope,
                challenge: None,
            });
        }
        Ok((
            Principal::user(user.issuer, user.subject, user.roles, scopes)
                .with_client(claims.client_id),
            claims.exp,
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

/// Why a found API key cannot be used now, if it cannot.
fn unusable(
    key: &manifold_store::ApiKey,
    user: &manifold_store::User,
    now: i64,
) -> Option<&'static str> {
    if key.revoked_at.is_some() {
        Some("the API key was revoked")
    } else if !key.live(now) {
        Some("the API key has expired: create a new one (`manifold keys create`)")
    } else if user.disabled {
        Some("the API key's user is disabled")
    } else {
        None
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
