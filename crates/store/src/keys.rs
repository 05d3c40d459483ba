//! The keys that sign access tokens, shared by every gateway on the store.

use sqlx::Row;

use crate::{Store, StoreError};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSigningKey {
    pub kid: String,
    pub alg: String,
    /// The private key (PKCS#8, base64).
    pub private_key: String,
    pub created_at: i64,
    pub signs_from: i64,
}

impl Store {
    pub async fn add_signing_key(&self, k: &StoredSigningKey) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO signing_keys (kid, alg, private_key, created_at, signs_from)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&k.kid)
        .bind(&k.alg)
        .bind(&k.private_key)
        .bind(k.created_at)
        .bind(k.signs_from)
        .execute(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The keys not retired, the one that signs last first (by `signs_from`, then `kid`).
    pub async fn signing_keys(&self) -> Result<Vec<StoredSigningKey>, StoreError> {
        let rows = sqlx::query(
            "SELECT kid, alg, private_key, created_at, signs_from FROM signing_keys
             WHERE retired_at IS NULL ORDER BY signs_from DESC, kid",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        rows.iter()
            .map(|r| {
                Ok(StoredSigningKey {
                    kid: r.try_get("kid")?,
                    alg: r.try_get("alg")?,
                    private_key: r.try_get("private_key")?,
                    created_at: r.try_get("created_at")?,
                    signs_from: r.try_get("signs_from")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(|e| self.err(e))
    }

    pub async fn retire_signing_key(&self, kid: &str, at: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE signing_keys SET retired_at = $1 WHERE kid = $2 AND retired_at IS NULL",
        )
        .bind(at)
        .bind(kid)
        .execute(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(())
    }
}
