//! Who is calling. Local users with Argon2id password hashes (`password`), API keys for
//! headless agents and CI (`keys`: shown once, stored as a hash, scoped to virtual servers,
//! with an expiry, revocable), and `StoreAuth`, the authentication seam over them: one lookup
//! per request, so a revoked key or a disabled user is refused at the next request on every
//! gateway sharing the store.

mod keys;
mod password;

pub use keys::{KEY_PREFIX, StoreAuth, hash_key, new_key};
pub use password::{hash_password, new_password, verify_password};
