//! Access tokens: short-lived JWTs (`typ: at+jwt`, RFC 9068) signed with ES256, and the key
//! ring that signs and verifies them.
//!
//! The signature work is ring's (ECDSA P-256, the TLS provider already in the binary); this
//! module only frames the compact JWS and checks the claims, strictly: the header must be
//! exactly ES256 with a known `kid` and `typ: at+jwt` (so `alg: none`, HS256 "signed" with the
//! public key and ID tokens are refused before any signature is looked at); `iss` and `aud`
//! must match exactly; `exp` must be in the future (60 s of clock skew allowed) and `iat` not
//! in it. Verification uses every published key, signing only the active one, so a new key is
//! published before it signs and an old one verifies until its tokens have expired.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use ring::{
    rand::SystemRandom,
    signature::{
        ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
        UnparsedPublicKey,
    },
};
use serde::{Deserialize, Serialize};

/// Clock skew tolerated on `exp` and `iat`.
pub const LEEWAY_SECS: i64 = 60;

/// The claims of an access token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub sub: String,
    /// The one virtual server (its canonical URL) the token is for (RFC 8707).
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub jti: String,
    pub client_id: String,
    /// Space-separated scopes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope: String,
    /// The grant (the user's sign-in to this client) the token belongs to: revoking it, or
    /// disabling the user, ends the token at its next use.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sid: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not a signed JWT")]
    Malformed,
    #[error("the token is not an access token of this gateway (header {0})")]
    Header(String),
    #[error("the token's signing key is not known (kid {0:?})")]
    UnknownKey(String),
    #[error("the token's signature is not valid")]
    Signature,
    #[error("the token was issued by {0:?}, not by this gateway")]
    Issuer(String),
    #[error("the token is for {0:?}, not for this virtual server")]
    Audience(String),
    #[error("the token has expired")]
    Expired,
    #[error("the token is issued in the future")]
    NotYetValid,
}

/// One signing key: its id, the PKCS#8 document (secret) and its public point.
pub struct SigningKey {
    pub kid: String,
    pair: EcdsaKeyPair,
    pkcs8: Vec<u8>,
}

impl SigningKey {
    pub fn generate() -> Result<Self, String> {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| "cannot generate a signing key".to_owned())?;
        let bytes: [u8; 12] = rand::random();
        Self::from_pkcs8(&B64.encode(bytes), doc.as_ref())
    }

    pub fn from_pkcs8(kid: &str, pkcs8: &[u8]) -> Result<Self, String> {
        let pair = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8,
            &SystemRandom::new(),
        )
        .map_err(|e| format!("signing key {kid}: not a P-256 PKCS#8 key ({e})"))?;
        Ok(Self {
            kid: kid.to_owned(),
            pair,
            pkcs8: pkcs8.to_vec(),
        })
    }

    /// The PKCS#8 document, to store (it is the private key).
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The public key as a JWK (RFC 7517/7518).
    pub fn jwk(&self) -> serde_json::Value {
        let point = self.pair.public_key().as_ref();
        serde_json::json!({
            "kty": "EC",
            "crv": "P-256",
            "x": B64.encode(&point[1..33]),
            "y": B64.encode(&point[33..65]),
            "kid": self.kid,
            "alg": "ES256",
            "use": "sig",
        })
    }
}

/// The keys in use: the one that signs (the newest active) and all that verify.
pub struct KeyRing {
    /// Newest first; `keys[signer]` signs.
    keys: Vec<SigningKey>,
    signer: usize,
}

impl KeyRing {
    /// `keys` are every published key, newest first, and `signer` the index of the one that
    /// signs (the newest whose publication lead has passed).
    pub fn new(keys: Vec<SigningKey>, signer: usize) -> Result<Self, String> {
        if signer >= keys.len() {
            return Err("no signing key".to_owned());
        }
        Ok(Self { keys, signer })
    }

    /// `{"keys": [...]}`: every published key, the next one included.
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({ "keys": self.keys.iter().map(SigningKey::jwk).collect::<Vec<_>>() })
    }

    pub fn signer_kid(&self) -> &str {
        &self.keys[self.signer].kid
    }

    pub fn issue(&self, claims: &AccessClaims) -> Result<String, String> {
        let key = &self.keys[self.signer];
        let header = serde_json::json!({ "alg": "ES256", "typ": "at+jwt", "kid": key.kid });
        let header = B64.encode(serde_json::to_vec(&header).map_err(|e| e.to_string())?);
        let body = B64.encode(serde_json::to_vec(claims).map_err(|e| e.to_string())?);
        let input = format!("{header}.{body}");
        let sig = key
            .pair
            .sign(&SystemRandom::new(), input.as_bytes())
            .map_err(|_| "cannot sign the token".to_owned())?;
        Ok(format!("{input}.{}", B64.encode(sig.as_ref())))
    }

    /// The claims of a valid access token from `issuer` for `audience` at `now`.
    pub fn verify(
        &self,
        token: &str,
        issuer: &str,
        audience: &str,
        now: i64,
    ) -> Result<AccessClaims, TokenError> {
        let mut parts = token.split('.');
        let (Some(h), Some(b), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let header: serde_json::Value = B64
            .decode(h)
            .ok()
            .and_then(|raw| serde_json::from_slice(&raw).ok())
            .ok_or(TokenError::Malformed)?;
        let Some(obj) = header.as_object() else {
            return Err(TokenError::Malformed);
        };
        let exact = obj.get("alg").and_then(|v| v.as_str()) == Some("ES256")
            && obj.get("typ").and_then(|v| v.as_str()) == Some("at+jwt")
            && obj
                .keys()
                .all(|k| ["alg", "typ", "kid"].contains(&k.as_str()));
        if !exact {
            return Err(TokenError::Header(header.to_string()));
        }
        let kid = obj.get("kid").and_then(|v| v.as_str()).unwrap_or_default();
        let key = self
            .keys
            .iter()
            .find(|k| k.kid == kid)
            .ok_or_else(|| TokenError::UnknownKey(kid.to_owned()))?;
        let sig = B64.decode(s).map_err(|_| TokenError::Malformed)?;
        let public =
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, key.pair.public_key().as_ref());
        public
            .verify(format!("{h}.{b}").as_bytes(), &sig)
            .map_err(|_| TokenError::Signature)?;
        let claims: AccessClaims = B64
            .decode(b)
            .ok()
            .and_then(|raw| serde_json::from_slice(&raw).ok())
            .ok_or(TokenError::Malformed)?;
        if claims.iss != issuer {
            return Err(TokenError::Issuer(claims.iss));
        }
        if claims.aud != audience {
            return Err(TokenError::Audience(claims.aud));
        }
        if claims.exp + LEEWAY_SECS <= now {
            return Err(TokenError::Expired);
        }
        if claims.iat > now + LEEWAY_SECS {
            return Err(TokenError::NotYetValid);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISS: &str = "https://gw.example";
    const AUD: &str = "https://gw.example/mcp/main";

    fn claims(now: i64) -> AccessClaims {
        AccessClaims {
            iss: ISS.into(),
            sub: "alice".into(),
            aud: AUD.into(),
            exp: now + 300,
            iat: now,
            jti: "j1".into(),
            client_id: "c1".into(),
            scope: "mcp".into(),
            sid: "g1".into(),
        }
    }

    fn ring() -> KeyRing {
        KeyRing::new(vec![SigningKey::generate().unwrap()], 0).unwrap()
    }

    /// A token with this header and body, "signed" with `sig`.
    fn forge(header: serde_json::Value, body: &AccessClaims, sig: &[u8]) -> String {
        format!(
            "{}.{}.{}",
            B64.encode(header.to_string()),
            B64.encode(serde_json::to_vec(body).unwrap()),
            B64.encode(sig)
        )
    }

    #[test]
    fn a_token_verifies_for_its_audience_only() {
        let r = ring();
        let now = 1_800_000_000;
        let t = r.issue(&claims(now)).unwrap();
        assert_eq!(r.verify(&t, ISS, AUD, now).unwrap(), claims(now));
        assert_eq!(
            r.verify(&t, ISS, "https://gw.example/mcp/other", now),
            Err(TokenError::Audience(AUD.into()))
        );
        assert_eq!(
            r.verify(&t, "https://evil.example", AUD, now),
            Err(TokenError::Issuer(ISS.into()))
        );
        assert_eq!(
            r.verify(&t, ISS, AUD, now + 300 + 61),
            Err(TokenError::Expired)
        );
        assert!(r.verify(&t, ISS, AUD, now + 300 + 59).is_ok(), "clock skew");
        assert_eq!(
            r.verify(&t, ISS, AUD, now - 120),
            Err(TokenError::NotYetValid)
        );
    }

    #[test]
    fn forged_and_foreign_tokens_are_refused() {
        let r = ring();
        let now = 1_800_000_000;
        let good = r.issue(&claims(now)).unwrap();
        let kid = r.signer_kid().to_owned();
        let body = claims(now);
        // alg none, with and without a signature.
        for t in [
            forge(
                serde_json::json!({"alg": "none", "typ": "at+jwt", "kid": kid}),
                &body,
                b"",
            ),
            forge(serde_json::json!({"alg": "none"}), &body, b"x"),
        ] {
            assert!(
                matches!(
                    r.verify(&t, ISS, AUD, now),
                    Err(TokenError::Header(_)) | Err(TokenError::Malformed)
                ),
                "{t}"
            );
        }
        // HS256 "signed" with the public key as the secret.
        let public = r.jwks()["keys"][0].to_string();
        let hs = forge(
            serde_json::json!({"alg": "HS256", "typ": "at+jwt", "kid": kid}),
            &body,
            public.as_bytes(),
        );
        assert!(matches!(
            r.verify(&hs, ISS, AUD, now),
            Err(TokenError::Header(_))
        ));
        // An ID token (typ JWT), an extra header (jku pointing elsewhere).
        let (h, rest) = good.split_once('.').unwrap();
        let _ = h;
        for header in [
            serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": kid}),
            serde_json::json!({"alg": "ES256", "typ": "at+jwt", "kid": kid, "jku": "https://evil.example/jwks"}),
        ] {
            let t = format!("{}.{rest}", B64.encode(header.to_string()));
            assert!(
                matches!(r.verify(&t, ISS, AUD, now), Err(TokenError::Header(_))),
                "{t}"
            );
        }
        // Unknown kid; another gateway's key; a changed body under the original signature.
        let t = format!(
            "{}.{rest}",
            B64.encode(
                serde_json::json!({"alg": "ES256", "typ": "at+jwt", "kid": "nope"}).to_string()
            )
        );
        assert_eq!(
            r.verify(&t, ISS, AUD, now),
            Err(TokenError::UnknownKey("nope".into()))
        );
        let other = ring();
        let theirs = other.issue(&claims(now)).unwrap();
        assert!(matches!(
            r.verify(&theirs, ISS, AUD, now),
            Err(TokenError::UnknownKey(_))
        ));
        let mut widened = claims(now);
        widened.scope = "admin".into();
        let (h, rest) = good.split_once('.').unwrap();
        let sig = rest.split_once('.').unwrap().1;
        let t = format!(
            "{h}.{}.{sig}",
            B64.encode(serde_json::to_vec(&widened).unwrap())
        );
        assert_eq!(r.verify(&t, ISS, AUD, now), Err(TokenError::Signature));
        for junk in ["", "a.b", "a.b.c.d", "!!.!!.!!", &good[..good.len() - 3]] {
            assert!(r.verify(junk, ISS, AUD, now).is_err(), "{junk:?}");
        }
    }

    #[test]
    fn rotation_publishes_the_next_key_before_it_signs_and_keeps_the_last() {
        let old = SigningKey::generate().unwrap();
        let old_kid = old.kid.clone();
        let now = 1_800_000_000;
        let before = KeyRing::new(vec![old], 0).unwrap();
        let token = before.issue(&claims(now)).unwrap();
        // The next key is published (in the JWKS) but the old one still signs.
        let pkcs8 = before.keys[0].pkcs8().to_vec();
        let next = SigningKey::generate().unwrap();
        let next_kid = next.kid.clone();
        let published = KeyRing::new(
            vec![next, SigningKey::from_pkcs8(&old_kid, &pkcs8).unwrap()],
            1,
        )
        .unwrap();
        let kids: Vec<String> = published.jwks()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(kids, [next_kid.clone(), old_kid.clone()]);
        assert_eq!(published.signer_kid(), old_kid);
        // Then the new key signs, and the old one's tokens still verify.
        let rotated = KeyRing::new(published.keys, 0).unwrap();
        assert_eq!(rotated.signer_kid(), next_kid);
        assert!(rotated.verify(&token, ISS, AUD, now).is_ok());
        let fresh = rotated.issue(&claims(now)).unwrap();
        assert!(rotated.verify(&fresh, ISS, AUD, now).is_ok());
        // A restored key signs tokens the original verifies: the PKCS#8 document is the key.
        assert!(SigningKey::from_pkcs8("x", b"not a key").is_err());
    }
}
