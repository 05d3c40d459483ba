//! The persistent store, and the only code with SQL: embedded SQLite in a data directory (WAL)
//! by default, PostgreSQL when configured, behind one interface (sqlx's Any driver; every
//! statement is portable SQL with `$n` parameters). Migrations are embedded and applied at
//! open, once, even when several gateways start on one PostgreSQL database at the same time.
//!
//! Invariants: nothing secret is stored in the clear (password hashes, key hashes only; a
//! provider's refresh tokens sealed by secrets the store keeps only as hashes); times
//! are Unix seconds; ids are 128 random bits in hex; every method that withdraws a credential
//! (revokes a grant or an API key, disables a user) moves the change counter in the same
//! transaction (`Store::withdraw`), so that caches of verified credentials can tell.

mod keys;
mod migrate;
mod oauth;
mod reviews;
mod sso;
mod users;

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use sqlx::{
    AnyPool, Executor,
    any::{AnyConnectOptions, AnyPoolOptions},
};

pub use keys::StoredSigningKey;
pub use oauth::{Client, Code, Grant, Redeemed, SignIn};
pub use reviews::{ToolReview, ToolStatus};
pub use sso::{SsoMember, SsoRequest};
pub use users::{ApiKey, LOCAL_ISSUER, NewApiKey, NewUser, User};

/// Where the store lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// `manifold.db` in this directory (created if missing).
    Sqlite(PathBuf),
    /// A `postgres://` URL (may hold a password: never shown, see `Location::shown`).
    Postgres(String),
}

impl Location {
    /// For messages: the SQLite file, or the PostgreSQL URL without its userinfo and query.
    pub fn shown(&self) -> String {
        match self {
            Location::Sqlite(dir) => dir.join(DB_FILE).display().to_string(),
            Location::Postgres(url) => {
                let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
                let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
                let rest = rest.split('?').next().unwrap_or(rest);
                format!("{scheme}://{rest}")
            }
        }
    }
}

const DB_FILE: &str = "manifold.db";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The thing exists already (a user name, say).
    #[error("{0}")]
    Conflict(String),
    /// The thing does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The database could not be opened or answered with an error.
    #[error("store {at}: {source}")]
    Database {
        at: String,
        #[source]
        source: sqlx::Error,
    },
    /// The data directory could not be created.
    #[error("cannot create the data directory {0}: {1}")]
    DataDir(String, std::io::Error),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The store: a connection pool and which backend it is. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    at: String,
    /// How many withdrawals this process has committed (through any clone of this store).
    withdrawals: Arc<AtomicU64>,
}

impl Store {
    /// Open (creating an SQLite file and its directory if need be) and migrate.
    pub async fn open(location: &Location) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let at = location.shown();
        let db = |source| StoreError::Database {
            at: at.clone(),
            source,
        };
        let (url, backend) = match location {
            Location::Sqlite(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| StoreError::DataDir(dir.display().to_string(), e))?;
                let file = dir.join(DB_FILE);
                (
                    format!("sqlite://{}?mode=rwc", file.display()),
                    Backend::Sqlite,
                )
            }
            Location::Postgres(url) => (url.clone(), Backend::Postgres),
        };
        let options: AnyConnectOptions = url.parse().map_err(db)?;
        let mut pool = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 4 } else { 8 })
            .acquire_timeout(Duration::from_secs(10));
        if backend == Backend::Sqlite {
            // WAL: readers do not wait for the writer; a writer waits up to 5 s for another.
            pool = pool.after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA busy_timeout = 5000").await?;
                    conn.execute("PRAGMA foreign_keys = ON").await?;
                    conn.execute("PRAGMA synchronous = NORMAL").await?;
                    Ok(())
                })
            });
        }
        let pool = pool.connect_with(options).await.map_err(db)?;
        let store = Store {
            pool,
            backend,
            at,
            withdrawals: Arc::default(),
        };
        migrate::run(&store).await?;
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Where it is, for messages (no password).
    pub fn shown(&self) -> &str {
        &self.at
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The change counter of the whole store: it moves whenever any process sharing the store
    /// withdraws a credential. One read of one row.
    pub async fn credential_changes(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT serial FROM credential_changes WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.err(e))
    }

    /// Record that `gateway` has acted on the change counter up to `serial` (and is running).
    pub async fn record_check(
        &self,
        gateway: &str,
        serial: i64,
        at: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO credential_checks (gateway, serial, checked_at) VALUES ($1, $2, $3)
             ON CONFLICT (gateway) DO UPDATE SET serial = excluded.serial, checked_at = excluded.checked_at",
        )
        .bind(gateway)
        .bind(serial)
        .bind(at)
        .execute(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The gateways that checked the counter since `since` (so are running) but have not yet
    /// acted on `serial`; and forget those that have not checked for a day.
    pub async fn gateways_behind(
        &self,
        serial: i64,
        since: i64,
    ) -> Result<Vec<String>, StoreError> {
        sqlx::query("DELETE FROM credential_checks WHERE checked_at < $1")
            .bind(since - 86_400)
            .execute(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        sqlx::query_scalar(
            "SELECT gateway FROM credential_checks WHERE checked_at >= $1 AND serial < $2 ORDER BY gateway",
        )
        .bind(since)
        .bind(serial)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.err(e))
    }

    /// How many withdrawals this process has committed: a cache in this process that took
    /// this number before reading a credential knows at once when it changed.
    pub fn withdrawals_here(&self) -> u64 {
        self.withdrawals.load(Ordering::Acquire)
    }

    /// Run one withdrawing statement and move the change counter in the same transaction;
    /// the rows it changed.
    async fn withdraw(
        &self,
        query: sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments>,
    ) -> Result<u64, StoreError> {
        let e = |e| self.err(e);
        let mut tx = self.pool.begin().await.map_err(e)?;
        let changed = query.execute(&mut *tx).await.map_err(e)?.rows_affected();
        if changed > 0 {
            sqlx::query("UPDATE credential_changes SET serial = serial + 1 WHERE id = 1")
                .execute(&mut *tx)
                .await
                .map_err(e)?;
        }
        tx.commit().await.map_err(e)?;
        if changed > 0 {
            self.withdrawals.fetch_add(1, Ordering::Release);
        }
        Ok(changed)
    }

    fn err(&self, source: sqlx::Error) -> StoreError {
        StoreError::Database {
            at: self.at.clone(),
            source,
        }
    }
}

/// 128 random bits in hex: the ids of everything the store keeps.
pub fn new_id() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Now, in Unix seconds.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;

/// For tests (this crate's and the gateway's): a PostgreSQL database of one's own.
#[doc(hidden)]
pub mod testing {
    use sqlx::{AssertSqlSafe, Executor};

    /// The test database: `MANIFOLD_TEST_POSTGRES`, or the one every development and CI
    /// machine here has.
    pub fn postgres_url() -> String {
        std::env::var("MANIFOLD_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
    }

    /// Whether a test must fail, rather than skip, without PostgreSQL: `MANIFOLD_REQUIRE_POSTGRES=1`
    /// (CI's `.ci/run` sets it; a machine without PostgreSQL skips those tests and says so).
    pub fn postgres_required() -> bool {
        std::env::var("MANIFOLD_REQUIRE_POSTGRES").as_deref() == Ok("1")
    }

    /// A fresh, empty schema in the test database, and a URL whose connections use it; an
    /// error (the reason) when PostgreSQL is not reachable.
    pub async fn fresh_postgres() -> Result<String, String> {
        sqlx::any::install_default_drivers();
        let base = postgres_url();
        let now = crate::now();
        let schema = format!("t_{now}_{}", crate::new_id());
        let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&base)
            .await
            .map_err(|e| format!("PostgreSQL at {base} is not reachable: {e}"))?;
        // The schemas of earlier runs (named by their creation time) go after an hour.
        let old: Vec<String> = sqlx::query_scalar(
            "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 't\\_%\\_%'",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap_or_default();
        for name in old {
            let born = name.split('_').nth(1).and_then(|t| t.parse::<i64>().ok());
            if born.is_some_and(|t| t < now - 3600) {
                let _ = conn
                    .execute(AssertSqlSafe(format!(
                        "DROP SCHEMA IF EXISTS {name} CASCADE"
                    )))
                    .await;
            }
        }
        conn.execute(AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .await
            .map_err(|e| format!("cannot create a schema in {base}: {e}"))?;
        let sep = if base.contains('?') { '&' } else { '?' };
        Ok(format!("{base}{sep}options=-c%20search_path%3D{schema}"))
    }
}
