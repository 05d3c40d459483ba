//! Users and their API keys. The store keeps what it is given: password hashes (Argon2id,
//! made by the caller) and key hashes, never a password or a key.

use sqlx::{Row, any::AnyRow};

use crate::{Store, StoreError, new_id, now};

/// The issuer of local users (those the gateway itself keeps, with a password).
pub const LOCAL_ISSUER: &str = "manifold:local";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub id: String,
    /// With `subject`, who the user is: (issuer, subject) is unique and never reused.
    pub issuer: String,
    pub subject: String,
    /// Unique per issuer: the local user's login name.
    pub name: String,
    pub email: Option<String>,
    pub password_hash: Option<String>,
    pub roles: Vec<String>,
    /// The groups they belong to (`[groups.NAME]` gives each group's members roles).
    pub groups: Vec<String>,
    pub disabled: bool,
    pub created_at: i64,
}

pub struct NewUser<'a> {
    pub name: &'a str,
    pub email: Option<&'a str>,
    pub password_hash: Option<&'a str>,
    pub roles: &'a [String],
    pub groups: &'a [String],
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKey {
    pub id: String,
    pub user_id: String,
    pub name: String,
    /// The virtual servers it may be used at.
    pub servers: Vec<String>,
    pub expires_at: Option<i64>,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

impl ApiKey {
    /// Usable at `now`: not revoked and not expired.
    pub fn live(&self, now: i64) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|t| now < t)
    }
}

pub struct NewApiKey<'a> {
    pub user_id: &'a str,
    pub name: &'a str,
    /// A hash of the key (the key itself is shown once and never stored).
    pub hash: &'a str,
    pub servers: &'a [String],
    pub expires_at: Option<i64>,
}

pub(crate) const USER_COLUMNS: &str =
    "id, issuer, subject, name, email, password_hash, roles, groups, disabled, created_at";
const KEY_COLUMNS: &str =
    "id, user_id, name, servers, expires_at, created_at, last_used_at, revoked_at";

fn words(s: String) -> Vec<String> {
    s.split_whitespace().map(str::to_owned).collect()
}

pub(crate) fn user_of(r: &AnyRow) -> Result<User, sqlx::Error> {
    user_in(r, r.try_get("id")?, "name", "created_at")
}

/// The user in `r`, whose `name` and `created_at` columns may be aliased (in a join).
pub(crate) fn user_in(
    r: &AnyRow,
    id: String,
    name: &str,
    created_at: &str,
) -> Result<User, sqlx::Error> {
    Ok(User {
        id,
        issuer: r.try_get("issuer")?,
        subject: r.try_get("subject")?,
        name: r.try_get(name)?,
        email: r.try_get("email")?,
        password_hash: r.try_get("password_hash")?,
        roles: words(r.try_get("roles")?),
        groups: words(r.try_get("groups")?),
        disabled: r.try_get::<i64, _>("disabled")? != 0,
        created_at: r.try_get(created_at)?,
    })
}

fn key_of(r: &AnyRow) -> Result<ApiKey, sqlx::Error> {
    Ok(ApiKey {
        id: r.try_get("id")?,
        user_id: r.try_get("user_id")?,
        name: r.try_get("name")?,
        servers: words(r.try_get("servers")?),
        expires_at: r.try_get("expires_at")?,
        created_at: r.try_get("created_at")?,
        last_used_at: r.try_get("last_used_at")?,
        revoked_at: r.try_get("revoked_at")?,
    })
}

pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

impl Store {
    /// A new local user. A name that exists already is a `Conflict`.
    pub async fn add_user(&self, u: &NewUser<'_>) -> Result<User, StoreError> {
        let id = new_id();
        let t = now();
        sqlx::query(
            "INSERT INTO users (id, issuer, subject, name, email, password_hash, roles, groups, disabled, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, $9, $9)",
        )
        .bind(&id)
        .bind(LOCAL_ISSUER)
        .bind(&id)
        .bind(u.name)
        .bind(u.email)
        .bind(u.password_hash)
        .bind(u.roles.join(" "))
        .bind(u.groups.join(" "))
        .bind(t)
        .execute(&self.pool)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Conflict(format!("a user named {:?} exists already", u.name))
            } else {
                self.err(e)
            }
        })?;
        self.user(&id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("user {id} vanished after insert")))
    }

    pub async fn user(&self, id: &str) -> Result<Option<User>, StoreError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
        self.one_user(sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id))
            .await
    }

    /// The local user called `name`.
    pub async fn local_user(&self, name: &str) -> Result<Option<User>, StoreError> {
        self.user_named(LOCAL_ISSUER, name).await
    }

    /// The user of `issuer` called `name`.
    pub(crate) async fn user_named(
        &self,
        issuer: &str,
        name: &str,
    ) -> Result<Option<User>, StoreError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE issuer = $1 AND name = $2");
        self.one_user(
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(issuer)
                .bind(name),
        )
        .await
    }

    /// The user of `issuer` with this subject.
    pub(crate) async fn user_by_subject(
        &self,
        issuer: &str,
        subject: &str,
    ) -> Result<Option<User>, StoreError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE issuer = $1 AND subject = $2");
        self.one_user(
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(issuer)
                .bind(subject),
        )
        .await
    }

    /// The user a query of `USER_COLUMNS` finds, if any.
    async fn one_user(
        &self,
        q: sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments>,
    ) -> Result<Option<User>, StoreError> {
        let row = q
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        row.as_ref()
            .map(user_of)
            .transpose()
            .map_err(|e| self.err(e))
    }

    /// Every user, by issuer and name.
    pub async fn users(&self) -> Result<Vec<User>, StoreError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users ORDER BY issuer, name");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        rows.iter()
            .map(user_of)
            .collect::<Result<_, _>>()
            .map_err(|e| self.err(e))
    }

    /// Disable (or enable again) a user; `NotFound` if there is none with this id.
    pub async fn set_disabled(&self, id: &str, disabled: bool) -> Result<(), StoreError> {
        let changed = self
            .withdraw(
                sqlx::query("UPDATE users SET disabled = $1, updated_at = $2 WHERE id = $3")
                    .bind(i64::from(disabled))
                    .bind(now())
                    .bind(id),
            )
            .await?;
        found(changed, id)
    }

    /// Replace a user's roles and (or) groups; `NotFound` if there is none with this id. A
    /// withdrawal: credentials verified under the old ones are checked again.
    pub async fn set_roles_and_groups(
        &self,
        id: &str,
        roles: Option<&[String]>,
        groups: Option<&[String]>,
    ) -> Result<(), StoreError> {
        let Some(u) = self.user(id).await? else {
            return found(0, id);
        };
        let roles = roles.map_or(u.roles, <[String]>::to_vec);
        let groups = groups.map_or(u.groups, <[String]>::to_vec);
        let changed = self
            .withdraw(
                sqlx::query(
                    "UPDATE users SET roles = $1, groups = $2, updated_at = $3 WHERE id = $4",
                )
                .bind(roles.join(" "))
                .bind(groups.join(" "))
                .bind(now())
                .bind(id),
            )
            .await?;
        found(changed, id)
    }

    pub async fn set_password_hash(&self, id: &str, hash: &str) -> Result<(), StoreError> {
        let r = sqlx::query("UPDATE users SET password_hash = $1, updated_at = $2 WHERE id = $3")
            .bind(hash)
            .bind(now())
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        found(r.rows_affected(), id)
    }

    pub async fn add_api_key(&self, k: &NewApiKey<'_>) -> Result<ApiKey, StoreError> {
        let id = new_id();
        sqlx::query(
            "INSERT INTO api_keys (id, user_id, name, hash, servers, expires_at, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&id)
        .bind(k.user_id)
        .bind(k.name)
        .bind(k.hash)
        .bind(k.servers.join(" "))
        .bind(k.expires_at)
        .bind(now())
        .execute(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&id)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        key_of(&row).map_err(|e| self.err(e))
    }

    /// The key with this hash and its user, whatever their state (the caller decides): one
    /// indexed read, as it is made for every request that carries a key.
    pub async fn api_key_by_hash(&self, hash: &str) -> Result<Option<(ApiKey, User)>, StoreError> {
        let row = sqlx::query(
            "SELECT k.id, k.user_id, k.name, k.servers, k.expires_at, k.created_at, k.last_used_at,
                    k.revoked_at, u.issuer, u.subject, u.name AS user_name, u.email, u.password_hash,
                    u.roles, u.groups, u.disabled, u.created_at AS user_created_at
             FROM api_keys k JOIN users u ON u.id = k.user_id WHERE k.hash = $1",
        )
        .bind(hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        let Some(r) = row else { return Ok(None) };
        let both = || -> Result<(ApiKey, User), sqlx::Error> {
            let key = key_of(&r)?;
            let user = user_in(&r, key.user_id.clone(), "user_name", "user_created_at")?;
            Ok((key, user))
        };
        both().map(Some).map_err(|e| self.err(e))
    }

    /// Keys, newest first; of one user if given.
    pub async fn api_keys(&self, user_id: Option<&str>) -> Result<Vec<ApiKey>, StoreError> {
        let rows = match user_id {
            Some(u) => {
                let sql = format!(
                    "SELECT {KEY_COLUMNS} FROM api_keys WHERE user_id = $1 ORDER BY created_at DESC, id"
                );
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(u)
                    .fetch_all(&self.pool)
                    .await
            }
            None => {
                let sql =
                    format!("SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at DESC, id");
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .fetch_all(&self.pool)
                    .await
            }
        }
        .map_err(|e| self.err(e))?;
        rows.iter()
            .map(key_of)
            .collect::<Result<_, _>>()
            .map_err(|e| self.err(e))
    }

    /// Revoke a key (moving the change counter); `NotFound` if unknown,
    /// and revoking a revoked key keeps its first revocation time.
    pub async fn revoke_api_key(&self, id: &str) -> Result<(), StoreError> {
        let changed = self
            .withdraw(
                sqlx::query(
                    "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2",
                )
                .bind(now())
                .bind(id),
            )
            .await?;
        found(changed, id)
    }

    /// Record a key's use (at most one write a minute per key).
    pub async fn touch_api_key(&self, id: &str, at: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE api_keys SET last_used_at = $1 WHERE id = $2 AND (last_used_at IS NULL OR last_used_at < $3)",
        )
        .bind(at)
        .bind(id)
        .bind(at - 60)
        .execute(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(())
    }
}

fn found(rows: u64, id: &str) -> Result<(), StoreError> {
    if rows == 0 {
        Err(StoreError::NotFound(format!("nothing with id {id}")))
    } else {
        Ok(())
    }
}
