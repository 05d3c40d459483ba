//! Who is calling. Signed access tokens and their key ring (`tokens`: ES256 `at+jwt`, the
//! piece the OAuth authorization server will issue and the resource server verify), local
//! users with Argon2id password hashes (`password`), API keys for
//! headless agents and CI (`keys`: shown once, stored as a hash, scoped to virtual servers,
//! with an expiry, revocable), and `StoreAuth`, the authentication seam over them: one lookup
//! per request, so a revoked key or a disabled user is refused at the next request on every
//! gateway sharing the store.

mod client_doc;
mod keys;
mod oauth;
mod pages;
mod password;
mod rotation;
mod tokens;

pub use keys::{KEY_PREFIX, StoreAuth, hash_key, new_key};
pub use oauth::{AuthServer, SCOPE};
pub use password::{hash_password, new_password, verify_password};
pub use rotation::{Rotation, key_ring};
pub use tokens::{AccessClaims, KeyRing, LEEWAY_SECS, SigningKey, TokenError};
