//! Who is calling. Signed access tokens and their key ring (`tokens`: ES256 `at+jwt`, the
//! piece the OAuth authorization server will issue and the resource server verify), local
//! users with Argon2id password hashes (`password`), API keys for
//! headless agents and CI (`keys`: shown once, stored as a hash, scoped to virtual servers,
//! with an expiry, revocable), and `StoreAuth`, the authentication seam over them, which
//! remembers what it verified (`verified`) until it expires or the store says something was
//! withdrawn: a revoked key, a revoked sign-in or a disabled user is refused at the next request
//! when the change was made by this gateway or once the CLI that made it returns (it waits,
//! `until_gateways_notice`), and within `verified::POLL` (one second) when another gateway
//! sharing the store made it.

mod client_doc;
mod id_jag;
mod keys;
mod oauth;
mod pages;
mod password;
mod rotation;
mod seal;
mod sso;
mod tokens;
mod verified;

pub use keys::{KEY_PREFIX, StoreAuth, hash_key, new_key};
pub use oauth::{AuthServer, SCOPE};
pub use password::{hash_password, new_password, verify_password};
pub use rotation::{Rotation, key_ring};
pub use sso::probe_providers;
pub use tokens::{AccessClaims, KeyRing, LEEWAY_SECS, SigningKey, TokenError};
pub use verified::until_gateways_notice;
