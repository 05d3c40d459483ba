//! Sealing a member's refresh token at their identity provider, so that the store alone cannot
//! use it. It is sealed (AES-256-GCM) with a key derived (HKDF-SHA256) from the secret that
//! holds it at each step of a sign-in: the browser's sign-in cookie, then the authorization
//! code, then each refresh token of ours. The store keeps those secrets only as SHA-256 hashes,
//! and the key is derived with a salt of its own, so that the hash is not the key.
//!
//! Sealed text: base64url(nonce ‖ ciphertext ‖ tag). `step` (what holds it) is bound as
//! associated data: a value sealed for a code does not open as a refresh token's.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use ring::{
    aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey},
    hkdf::{HKDF_SHA256, Salt},
};

/// What holds a sealed value.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Step {
    /// A browser's sign-in session (its cookie).
    Session,
    /// An authorization code.
    Code,
    /// A refresh token of ours.
    Refresh,
}

impl Step {
    fn label(self) -> &'static [u8] {
        match self {
            Step::Session => b"session",
            Step::Code => b"code",
            Step::Refresh => b"refresh",
        }
    }
}

fn key(secret: &str, step: Step) -> LessSafeKey {
    let salt = Salt::new(HKDF_SHA256, b"manifold: a provider's refresh token");
    let prk = salt.extract(secret.as_bytes());
    let info = [step.label()];
    let okm = prk
        .expand(&info, &AES_256_GCM)
        .expect("an AES-256 key is a valid HKDF length");
    LessSafeKey::new(UnboundKey::from(okm))
}

/// `plain` sealed with the key of `secret` at `step`.
pub(crate) fn seal(secret: &str, step: Step, plain: &str) -> String {
    let nonce: [u8; NONCE_LEN] = rand::random();
    let mut out = plain.as_bytes().to_vec();
    key(secret, step)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(step.label()),
            &mut out,
        )
        .expect("sealing a short text cannot fail");
    let mut all = nonce.to_vec();
    all.extend_from_slice(&out);
    B64.encode(all)
}

/// What `seal` sealed, if `sealed` was sealed with `secret` at `step` and not altered.
pub(crate) fn open(secret: &str, step: Step, sealed: &str) -> Option<String> {
    let mut all = B64.decode(sealed).ok()?;
    if all.len() < NONCE_LEN {
        return None;
    }
    let mut body = all.split_off(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(&all).ok()?;
    let plain = key(secret, step)
        .open_in_place(nonce, Aad::from(step.label()), &mut body)
        .ok()?;
    String::from_utf8(plain.to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_opens_only_with_its_secret_and_step() {
        let sealed = seal("s3cret", Step::Code, "provider refresh token");
        assert_eq!(
            open("s3cret", Step::Code, &sealed).as_deref(),
            Some("provider refresh token")
        );
        assert!(!sealed.contains("provider"));
        assert_eq!(open("other", Step::Code, &sealed), None);
        assert_eq!(open("s3cret", Step::Refresh, &sealed), None);
        // The stored hash of the secret is not its key.
        assert_eq!(open(&crate::hash_key("s3cret"), Step::Code, &sealed), None);
        // Altered, cut short or not base64: nothing.
        let mut bytes = B64.decode(&sealed).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert_eq!(open("s3cret", Step::Code, &B64.encode(&bytes)), None);
        assert_eq!(open("s3cret", Step::Code, &sealed[..10]), None);
        assert_eq!(open("s3cret", Step::Code, "!!"), None);
        // Two seals of one text differ (a fresh nonce each time).
        assert_ne!(sealed, seal("s3cret", Step::Code, "provider refresh token"));
    }
}
