//! Members who sign in through an identity provider: their user rows (keyed by the provider's
//! issuer and their subject) and the sign-ins in progress.

use sqlx::Row;

use crate::{Store, StoreError, User, new_id, now};

/// A redirect to an identity provider, waiting for its callback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SsoRequest {
    pub provider: String,
    /// SHA-256 of the cookie of the browser that started it.
    pub browser_hash: String,
    pub nonce: String,
    pub verifier: String,
    pub next: String,
    pub expires_at: i64,
}

/// What an identity provider says of a member at sign-in.
pub struct SsoMember<'a> {
    pub issuer: &'a str,
    pub subject: &'a str,
    /// A handle to show and find them by (their e-mail, or a user name); the subject when
    /// another member of the same provider has it.
    pub name: &'a str,
    pub email: Option<&'a str>,
    pub roles: &'a [String],
    /// Their groups, as the provider's groups claim gives them.
    pub groups: &'a [String],
}

impl Store {
    /// Record a sign-in sent to a provider; `Conflict` when `most` are waiting already (anyone
    /// can start one, so their number is bounded).
    pub async fn add_sso_request(
        &self,
        state_hash: &str,
        r: &SsoRequest,
        most: i64,
    ) -> Result<(), StoreError> {
        // Requests nobody came back for go with the next one.
        sqlx::query("DELETE FROM sso_requests WHERE expires_at < $1")
            .bind(now())
            .execute(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        let waiting: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sso_requests")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        if waiting >= most {
            return Err(StoreError::Conflict(format!(
                "{waiting} sign-ins are waiting for their identity provider already"
            )));
        }
        sqlx::query(
            "INSERT INTO sso_requests (state_hash, provider, browser_hash, nonce, verifier, next, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(state_hash)
        .bind(&r.provider)
        .bind(&r.browser_hash)
        .bind(&r.nonce)
        .bind(&r.verifier)
        .bind(&r.next)
        .bind(r.expires_at)
        .execute(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Spend the request with this state: the first callback gets it (whether or not it has
    /// expired: the caller checks), every later one `None`.
    pub async fn take_sso_request(
        &self,
        state_hash: &str,
    ) -> Result<Option<SsoRequest>, StoreError> {
        let e = |e| self.err(e);
        let row = sqlx::query(
            "DELETE FROM sso_requests WHERE state_hash = $1
             RETURNING provider, browser_hash, nonce, verifier, next, expires_at",
        )
        .bind(state_hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(e)?;
        let Some(r) = row else { return Ok(None) };
        Ok(Some(SsoRequest {
            provider: r.try_get("provider").map_err(e)?,
            browser_hash: r.try_get("browser_hash").map_err(e)?,
            nonce: r.try_get("nonce").map_err(e)?,
            verifier: r.try_get("verifier").map_err(e)?,
            next: r.try_get("next").map_err(e)?,
            expires_at: r.try_get("expires_at").map_err(e)?,
        }))
    }

    /// Spend the identity assertion `jti` of `issuer` (kept until `expires_at`): `true` the
    /// first time, `false` for a replay.
    pub async fn spend_assertion(
        &self,
        issuer: &str,
        jti: &str,
        expires_at: i64,
    ) -> Result<bool, StoreError> {
        sqlx::query("DELETE FROM spent_assertions WHERE expires_at < $1")
            .bind(now())
            .execute(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        let r = sqlx::query(
            "INSERT INTO spent_assertions (issuer, jti, expires_at) VALUES ($1, $2, $3)",
        )
        .bind(issuer)
        .bind(jti)
        .bind(expires_at)
        .execute(&self.pool)
        .await;
        match r {
            Ok(_) => Ok(true),
            Err(e) if crate::users::is_unique_violation(&e) => Ok(false),
            Err(e) => Err(self.err(e)),
        }
    }

    /// The member's user, created at their first sign-in and brought up to date at every
    /// later one (name, e-mail, roles, groups; never whether an administrator disabled them). A
    /// change of roles or groups is a withdrawal: credentials verified with the old roles are checked again.
    pub async fn sso_user(&self, m: &SsoMember<'_>) -> Result<User, StoreError> {
        let roles = m.roles.join(" ");
        let groups = m.groups.join(" ");
        let existing = self.user_by_subject(m.issuer, m.subject).await?;
        let t = now();
        match existing {
            None => {
                let id = new_id();
                let insert = |name: String| {
                    sqlx::query(
                        "INSERT INTO users (id, issuer, subject, name, email, password_hash, roles, groups, created_at, updated_at, signed_in_at)
                         VALUES ($1, $2, $3, $4, $5, NULL, $6, $7, $8, $8, $8)",
                    )
                    .bind(id.clone())
                    .bind(m.issuer.to_owned())
                    .bind(m.subject.to_owned())
                    .bind(name)
                    .bind(m.email.map(str::to_owned))
                    .bind(roles.clone())
                    .bind(groups.clone())
                    .bind(t)
                };
                if let Err(e) = insert(m.name.to_owned()).execute(&self.pool).await {
                    if !crate::users::is_unique_violation(&e) {
                        return Err(self.err(e));
                    }
                    // Another member has this name (or a concurrent first sign-in made this
                    // one): the subject is theirs alone.
                    if let Err(e) = insert(m.subject.to_owned()).execute(&self.pool).await
                        && !crate::users::is_unique_violation(&e)
                    {
                        return Err(self.err(e));
                    }
                }
            }
            Some(u) => {
                let name_taken =
                    u.name != m.name && self.user_named(m.issuer, m.name).await?.is_some();
                let name = if name_taken { m.subject } else { m.name };
                let update = sqlx::query(
                    "UPDATE users SET name = $1, email = $2, roles = $3, groups = $4, updated_at = $5, signed_in_at = $5 WHERE id = $6",
                )
                .bind(name)
                .bind(m.email)
                .bind(&roles)
                .bind(&groups)
                .bind(t)
                .bind(&u.id);
                if u.roles != m.roles || u.groups != m.groups {
                    self.withdraw(update).await?;
                } else {
                    update.execute(&self.pool).await.map_err(|e| self.err(e))?;
                }
            }
        }
        self.user_by_subject(m.issuer, m.subject)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("no user {} at {}", m.subject, m.issuer)))
    }

    /// The member's provider vouched for them just now (a refresh there) without saying more.
    pub async fn vouched(&self, user_id: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE users SET signed_in_at = $1 WHERE id = $2")
            .bind(now())
            .bind(user_id)
            .execute(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// When the member last signed in through their provider (`None` for a local user).
    pub async fn signed_in_at(&self, user_id: &str) -> Result<Option<i64>, StoreError> {
        sqlx::query_scalar::<_, Option<i64>>("SELECT signed_in_at FROM users WHERE id = $1")
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await
            .map(Option::flatten)
            .map_err(|e| self.err(e))
    }
}
