//! What the OAuth authorization server keeps: dynamically registered clients, grants (a user's
//! sign-in to a client for one virtual server, the family of its refresh tokens), single-use
//! authorization codes and refresh tokens (by hash; taken with one conditional `UPDATE`, so of
//! two gateways redeeming one code at the same instant exactly one wins), remembered consents
//! and browser sign-in sessions.

use sqlx::{Row, any::AnyRow};

use crate::{
    Store, StoreError, User,
    users::{USER_COLUMNS, user_of},
};

/// A client registered through dynamic client registration (RFC 7591).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Client {
    pub client_id: String,
    pub name: String,
    pub redirect_uris: Vec<String>,
    /// The address that registered it (for the per-source limit).
    pub source: String,
    pub created_at: i64,
    pub last_used_at: i64,
}

/// A user's authorization of a client for one virtual server (`resource`) with `scope`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub id: String,
    pub user_id: String,
    pub client_id: String,
    pub resource: String,
    pub scope: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

/// What presenting a code or a refresh token found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Redeemed<T> {
    /// The first use: it is now spent.
    First(T, Grant),
    /// Spent already (or its grant revoked): the grant it belongs to, which the caller revokes.
    Again(String),
    /// Not known, or expired.
    Unknown,
}

/// A browser's sign-in session: its user, the CSRF token of its forms and the member's
/// refresh token at their provider, sealed (`None`: none; `Some("")`: an authorization took it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignIn {
    pub user: User,
    pub csrf: String,
    pub provider_token: Option<String>,
}

/// The redirect URI and PKCE challenge a code was issued with, and the member's refresh token
/// at their provider, sealed, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Code {
    pub redirect_uri: String,
    pub challenge: String,
    pub provider_token: Option<String>,
}

/// `USER_COLUMNS` of the table aliased `alias`, for a join.
fn user_columns(alias: &str) -> String {
    USER_COLUMNS
        .split(", ")
        .map(|c| format!("{alias}.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

const GRANT_COLUMNS: &str = "g.id AS g_id, g.user_id, g.client_id, g.resource, g.scope, g.created_at AS g_created_at, g.revoked_at";

fn grant_of(r: &AnyRow) -> Result<Grant, sqlx::Error> {
    Ok(Grant {
        id: r.try_get("g_id")?,
        user_id: r.try_get("user_id")?,
        client_id: r.try_get("client_id")?,
        resource: r.try_get("resource")?,
        scope: r.try_get("scope")?,
        created_at: r.try_get("g_created_at")?,
        revoked_at: r.try_get("revoked_at")?,
    })
}

fn client_of(r: &AnyRow) -> Result<Client, sqlx::Error> {
    Ok(Client {
        client_id: r.try_get("client_id")?,
        name: r.try_get("name")?,
        redirect_uris: r
            .try_get::<String, _>("redirect_uris")?
            .lines()
            .map(str::to_owned)
            .collect(),
        source: r.try_get("source")?,
        created_at: r.try_get("created_at")?,
        last_used_at: r.try_get("last_used_at")?,
    })
}

impl Store {
    pub async fn add_client(&self, c: &Client) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO oauth_clients (client_id, name, redirect_uris, source, created_at, last_used_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&c.client_id)
        .bind(&c.name)
        .bind(c.redirect_uris.join("\n"))
        .bind(&c.source)
        .bind(c.created_at)
        .bind(c.last_used_at)
        .execute(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub async fn client(&self, client_id: &str) -> Result<Option<Client>, StoreError> {
        let row = sqlx::query(
            "SELECT client_id, name, redirect_uris, source, created_at, last_used_at
             FROM oauth_clients WHERE client_id = $1",
        )
        .bind(client_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        row.as_ref()
            .map(client_of)
            .transpose()
            .map_err(|e| self.err(e))
    }

    /// How many registered clients there are, in all and from `source`.
    pub async fn client_counts(&self, source: &str) -> Result<(i64, i64), StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS total, COALESCE(SUM(CASE WHEN source = $1 THEN 1 ELSE 0 END), 0) AS mine
             FROM oauth_clients",
        )
        .bind(source)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        let get = |k| row.try_get::<i64, _>(k).map_err(|e| self.err(e));
        Ok((get("total")?, get("mine")?))
    }

    pub async fn touch_client(&self, client_id: &str, at: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE oauth_clients SET last_used_at = $1 WHERE client_id = $2")
            .bind(at)
            .bind(client_id)
            .execute(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Forget registered clients unused since `before` that hold no live grant; how many.
    pub async fn expire_clients(&self, before: i64) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "DELETE FROM oauth_clients WHERE last_used_at < $1 AND client_id NOT IN
               (SELECT client_id FROM oauth_grants WHERE revoked_at IS NULL)",
        )
        .bind(before)
        .execute(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(done.rows_affected())
    }

    pub async fn add_grant(&self, g: &Grant) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO oauth_grants (id, user_id, client_id, resource, scope, created_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&g.id)
        .bind(&g.user_id)
        .bind(&g.client_id)
        .bind(&g.resource)
        .bind(&g.scope)
        .bind(g.created_at)
        .execute(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Revoke one grant: its refresh tokens and access tokens stop working.
    pub async fn revoke_grant(&self, id: &str, at: i64) -> Result<(), StoreError> {
        self.withdraw(
            sqlx::query(
                "UPDATE oauth_grants SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
            )
            .bind(at)
            .bind(id),
        )
        .await?;
        Ok(())
    }

    /// Revoke every grant of a user; how many were live.
    pub async fn revoke_user_grants(&self, user_id: &str, at: i64) -> Result<u64, StoreError> {
        self.withdraw(
            sqlx::query(
                "UPDATE oauth_grants SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL",
            )
            .bind(at)
            .bind(user_id),
        )
        .await
    }

    /// The user behind an access token and whether its grant still stands (one query).
    pub async fn token_holder(
        &self,
        user_id: &str,
        grant_id: &str,
    ) -> Result<Option<(User, bool)>, StoreError> {
        let cols = user_columns("u");
        let sql = format!(
            "SELECT {cols}, g.revoked_at FROM users u JOIN oauth_grants g ON g.user_id = u.id
             WHERE u.id = $1 AND g.id = $2"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(user_id)
            .bind(grant_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        let Some(row) = row else { return Ok(None) };
        let user = user_of(&row).map_err(|e| self.err(e))?;
        let revoked: Option<i64> = row.try_get("revoked_at").map_err(|e| self.err(e))?;
        Ok(Some((user, revoked.is_none())))
    }

    pub async fn add_code(
        &self,
        hash: &str,
        grant_id: &str,
        code: &Code,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO oauth_codes (hash, grant_id, redirect_uri, challenge, expires_at, provider_token)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(hash)
        .bind(grant_id)
        .bind(&code.redirect_uri)
        .bind(&code.challenge)
        .bind(expires_at)
        .bind(&code.provider_token)
        .execute(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Spend an authorization code: the first presentation wins, atomically (and takes the
    /// sealed provider token, which the code keeps no longer).
    pub async fn take_code(&self, hash: &str, now: i64) -> Result<Redeemed<Code>, StoreError> {
        let e = |e| self.err(e);
        let won = sqlx::query(
            "UPDATE oauth_codes SET used_at = $1 WHERE hash = $2 AND used_at IS NULL AND expires_at > $1",
        )
        .bind(now)
        .bind(hash)
        .execute(&self.pool)
        .await
        .map_err(e)?
        .rows_affected()
            == 1;
        let sql = format!(
            "SELECT c.redirect_uri, c.challenge, c.provider_token, c.used_at AS c_used, c.expires_at AS c_expires, {GRANT_COLUMNS}
             FROM oauth_codes c JOIN oauth_grants g ON g.id = c.grant_id WHERE c.hash = $1"
        );
        let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(e)?
        else {
            return Ok(Redeemed::Unknown);
        };
        let grant = grant_of(&row).map_err(e)?;
        if !won {
            let expired = row.try_get::<i64, _>("c_expires").map_err(e)? <= now
                && row
                    .try_get::<Option<i64>, _>("c_used")
                    .map_err(e)?
                    .is_none();
            return Ok(if expired {
                Redeemed::Unknown
            } else {
                Redeemed::Again(grant.id)
            });
        }
        let code = Code {
            redirect_uri: row.try_get("redirect_uri").map_err(e)?,
            challenge: row.try_get("challenge").map_err(e)?,
            provider_token: row.try_get("provider_token").map_err(e)?,
        };
        if code.provider_token.is_some() {
            self.forget_provider_token("oauth_codes", hash).await?;
        }
        Ok(Redeemed::First(code, grant))
    }

    /// A refresh token (by hash) of the grant, with the member's refresh token at their
    /// provider sealed by it, if any.
    pub async fn add_refresh_token(
        &self,
        hash: &str,
        grant_id: &str,
        expires_at: i64,
        provider_token: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO oauth_refresh_tokens (hash, grant_id, expires_at, provider_token) VALUES ($1, $2, $3, $4)",
        )
        .bind(hash)
        .bind(grant_id)
        .bind(expires_at)
        .bind(provider_token)
        .execute(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Spend a refresh token (each is used once: the client gets the next one with its new
    /// access token), and take the provider token it sealed, if any. A second use, or a use
    /// after the grant was revoked, is `Again`.
    pub async fn take_refresh_token(
        &self,
        hash: &str,
        now: i64,
    ) -> Result<Redeemed<Option<String>>, StoreError> {
        let e = |e| self.err(e);
        let won = sqlx::query(
            "UPDATE oauth_refresh_tokens SET used_at = $1 WHERE hash = $2 AND used_at IS NULL AND expires_at > $1",
        )
        .bind(now)
        .bind(hash)
        .execute(&self.pool)
        .await
        .map_err(e)?
        .rows_affected()
            == 1;
        let sql = format!(
            "SELECT r.provider_token, r.used_at AS r_used, r.expires_at AS r_expires, {GRANT_COLUMNS}
             FROM oauth_refresh_tokens r JOIN oauth_grants g ON g.id = r.grant_id WHERE r.hash = $1"
        );
        let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(e)?
        else {
            return Ok(Redeemed::Unknown);
        };
        let grant = grant_of(&row).map_err(e)?;
        if won && grant.revoked_at.is_none() {
            let provider_token: Option<String> = row.try_get("provider_token").map_err(e)?;
            if provider_token.is_some() {
                self.forget_provider_token("oauth_refresh_tokens", hash)
                    .await?;
            }
            return Ok(Redeemed::First(provider_token, grant));
        }
        let expired = row.try_get::<i64, _>("r_expires").map_err(e)? <= now
            && row
                .try_get::<Option<i64>, _>("r_used")
                .map_err(e)?
                .is_none();
        Ok(if expired {
            Redeemed::Unknown
        } else {
            Redeemed::Again(grant.id)
        })
    }

    /// The grant a refresh token belongs to, if any (for revocation).
    pub async fn refresh_token_grant(&self, hash: &str) -> Result<Option<String>, StoreError> {
        sqlx::query_scalar("SELECT grant_id FROM oauth_refresh_tokens WHERE hash = $1")
            .bind(hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.err(e))
    }

    pub async fn has_consent(&self, user_id: &str, client_id: &str) -> Result<bool, StoreError> {
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT granted_at FROM oauth_consents WHERE user_id = $1 AND client_id = $2",
        )
        .bind(user_id)
        .bind(client_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(found.is_some())
    }

    pub async fn add_consent(
        &self,
        user_id: &str,
        client_id: &str,
        at: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO oauth_consents (user_id, client_id, granted_at) VALUES ($1, $2, $3)
             ON CONFLICT (user_id, client_id) DO UPDATE SET granted_at = $3",
        )
        .bind(user_id)
        .bind(client_id)
        .bind(at)
        .execute(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Forget a user's consent to a client (and, if `client_id` is `None`, to every client);
    /// its next sign-in asks again.
    pub async fn revoke_consents(
        &self,
        user_id: &str,
        client_id: Option<&str>,
    ) -> Result<u64, StoreError> {
        let done = match client_id {
            Some(c) => {
                sqlx::query("DELETE FROM oauth_consents WHERE user_id = $1 AND client_id = $2")
                    .bind(user_id)
                    .bind(c)
            }
            None => sqlx::query("DELETE FROM oauth_consents WHERE user_id = $1").bind(user_id),
        }
        .execute(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(done.rows_affected())
    }

    /// A browser's sign-in session (by the hash of its cookie), with the member's refresh
    /// token at their provider sealed by the cookie, if any.
    pub async fn add_sign_in(
        &self,
        hash: &str,
        user_id: &str,
        csrf: &str,
        (now, expires_at): (i64, i64),
        provider_token: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO login_sessions (hash, user_id, csrf, created_at, expires_at, provider_token) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(hash)
        .bind(user_id)
        .bind(csrf)
        .bind(now)
        .bind(expires_at)
        .bind(provider_token)
        .execute(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The live sign-in session with this hash, and its user.
    pub async fn sign_in(&self, hash: &str, now: i64) -> Result<Option<SignIn>, StoreError> {
        let cols = user_columns("u");
        let sql = format!(
            "SELECT {cols}, s.csrf, s.provider_token FROM login_sessions s JOIN users u ON u.id = s.user_id
             WHERE s.hash = $1 AND s.expires_at > $2"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(hash)
            .bind(now)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(SignIn {
            user: user_of(&row).map_err(|e| self.err(e))?,
            csrf: row.try_get("csrf").map_err(|e| self.err(e))?,
            provider_token: row.try_get("provider_token").map_err(|e| self.err(e))?,
        }))
    }

    /// Take the session's sealed provider token `sealed` for an authorization, once (false:
    /// another took it first): later authorizations from this session find `''` and ask the
    /// provider for one of their own.
    pub async fn take_sign_in_provider_token(
        &self,
        hash: &str,
        sealed: &str,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE login_sessions SET provider_token = '' WHERE hash = $1 AND provider_token = $2",
        )
        .bind(hash)
        .bind(sealed)
        .execute(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(done.rows_affected() == 1)
    }

    /// A spent code or refresh token keeps no sealed provider token.
    async fn forget_provider_token(&self, table: &str, hash: &str) -> Result<(), StoreError> {
        let sql = format!("UPDATE {table} SET provider_token = NULL WHERE hash = $1");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(hash)
            .execute(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub async fn end_sign_in(&self, hash: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM login_sessions WHERE hash = $1")
            .bind(hash)
            .execute(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }
}
