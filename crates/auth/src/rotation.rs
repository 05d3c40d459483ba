//! Signing-key rotation over the store, so every gateway sharing it signs with the same key
//! and publishes the same JWKS.
//!
//! A new key is created `lead` before the current one has signed for `every`, and is published
//! from then on but signs only once the lead has passed (clients and resource servers that
//! cache the JWKS see it before its first token). A key that no longer signs is retired once
//! every token it signed has expired (`token_lifetime` plus the clock skew allowed).

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use manifold_store::{Store, StoredSigningKey};

use crate::{KeyRing, LEEWAY_SECS, SigningKey};

#[derive(Clone, Copy, Debug)]
pub struct Rotation {
    /// How long a key signs before the next takes over.
    pub every: i64,
    /// How long a new key is published before it signs.
    pub lead: i64,
    /// The longest an access token lives.
    pub token_lifetime: i64,
}

impl Default for Rotation {
    fn default() -> Self {
        Self {
            every: 30 * 86_400,
            lead: 3_600,
            token_lifetime: 3_600,
        }
    }
}

/// The key ring at `now`: created, rotated and pruned in the store as the policy says.
pub async fn key_ring(store: &Store, now: i64, policy: Rotation) -> Result<KeyRing, String> {
    let e = |e: manifold_store::StoreError| e.to_string();
    let mut stored = store.signing_keys().await.map_err(e)?;
    if stored.is_empty() {
        // The first key signs at once: there is nothing yet to announce it ahead of.
        add(store, now, now).await?;
        stored = store.signing_keys().await.map_err(e)?;
    }
    let newest = stored[0].signs_from;
    if newest <= now && newest + policy.every - policy.lead <= now {
        add(store, now, newest.max(now) + policy.lead).await?;
        stored = store.signing_keys().await.map_err(e)?;
    }
    // `stored` is newest first: the signer is the first that signs by now; the keys after it
    // stopped signing when the one before them started.
    let signer = stored
        .iter()
        .position(|k| k.signs_from <= now)
        .ok_or("no signing key signs yet")?;
    let mut keys = Vec::new();
    for (i, k) in stored.iter().enumerate() {
        if i > signer {
            let stopped = stored[i - 1].signs_from;
            if stopped + policy.token_lifetime + LEEWAY_SECS < now {
                store.retire_signing_key(&k.kid, now).await.map_err(e)?;
                continue;
            }
        }
        let der = B64
            .decode(&k.private_key)
            .map_err(|_| format!("signing key {}: the stored key is not base64", k.kid))?;
        keys.push(SigningKey::from_pkcs8(&k.kid, &der)?);
    }
    KeyRing::new(keys, signer)
}

async fn add(store: &Store, now: i64, signs_from: i64) -> Result<(), String> {
    let key = SigningKey::generate()?;
    store
        .add_signing_key(&StoredSigningKey {
            kid: key.kid.clone(),
            alg: "ES256".into(),
            private_key: B64.encode(key.pkcs8()),
            created_at: now,
            signs_from,
        })
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(kid = %key.kid, signs_from, "new access-token signing key");
    Ok(())
}

#[cfg(test)]
mod tests {
    use manifold_store::{Location, testing};

    use super::*;

    async fn stores() -> Vec<Store> {
        let dir = std::env::temp_dir().join(format!("manifold-auth-{}", manifold_store::new_id()));
        let mut out = vec![Store::open(&Location::Sqlite(dir)).await.unwrap()];
        match testing::fresh_postgres().await {
            Ok(url) => out.push(Store::open(&Location::Postgres(url)).await.unwrap()),
            Err(why) if testing::postgres_required() => panic!("{why}"),
            Err(why) => eprintln!("SKIPPED rotation on PostgreSQL: {why}"),
        }
        out
    }

    fn kids(r: &KeyRing) -> Vec<String> {
        r.jwks()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect()
    }

    #[tokio::test]
    async fn keys_are_announced_before_they_sign_and_kept_until_their_tokens_expire() {
        let p = Rotation {
            every: 1000,
            lead: 100,
            token_lifetime: 50,
        };
        for store in stores().await {
            let t0 = 1_800_000_000;
            let first = key_ring(&store, t0, p).await.unwrap();
            let k1 = first.signer_kid().to_owned();
            assert_eq!(kids(&first), std::slice::from_ref(&k1));
            // Loading again (another gateway, a restart) finds the same key.
            let again = key_ring(&store, t0 + 10, p).await.unwrap();
            assert_eq!(again.signer_kid(), k1);
            let claims = crate::AccessClaims {
                iss: "i".into(),
                sub: "s".into(),
                aud: "a".into(),
                exp: t0 + 950,
                iat: t0 + 900,
                jti: "j".into(),
                client_id: "c".into(),
                scope: String::new(),
                sid: String::new(),
            };
            let old_token = first.issue(&claims).unwrap();
            // `lead` before `every`: the next key is published, the first still signs.
            let announced = key_ring(&store, t0 + 900, p).await.unwrap();
            assert_eq!(announced.signer_kid(), k1);
            let all = kids(&announced);
            assert_eq!(all.len(), 2, "{all:?}");
            let k2 = all[0].clone();
            assert_ne!(k2, k1);
            // Loading again does not announce a third.
            assert_eq!(kids(&key_ring(&store, t0 + 950, p).await.unwrap()).len(), 2);
            // From then on the new key signs; the old one's tokens still verify.
            let rotated = key_ring(&store, t0 + 1000, p).await.unwrap();
            assert_eq!(rotated.signer_kid(), k2);
            assert!(rotated.verify(&old_token, "i", "a", t0 + 1000).is_ok());
            // Once no token of the old key can be valid, it is gone from the JWKS.
            let pruned = key_ring(&store, t0 + 1000 + 50 + LEEWAY_SECS + 1, p)
                .await
                .unwrap();
            assert_eq!(kids(&pruned), std::slice::from_ref(&k2));
            assert!(pruned.verify(&old_token, "i", "a", t0 + 1000).is_err());
        }
    }
}
