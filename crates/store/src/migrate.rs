//! Embedded migrations, applied in order at open. Each runs in a transaction with its record in
//! `manifold_migrations`; on PostgreSQL an advisory lock makes gateways that start together on
//! one database take turns, so each migration runs once.

use sqlx::{AssertSqlSafe, Executor};

use crate::{Backend, Store, StoreError};

/// (version, name, SQL). Append only: a released migration never changes.
pub(crate) const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "users and API keys",
        include_str!("../migrations/0001_users_and_keys.sql"),
    ),
    (
        2,
        "signing keys",
        include_str!("../migrations/0002_signing_keys.sql"),
    ),
    (
        3,
        "oauth clients, grants, codes, refresh tokens, consents, sign-in sessions",
        include_str!("../migrations/0003_oauth.sql"),
    ),
    (
        4,
        "credential change counter and what each gateway has seen of it",
        include_str!("../migrations/0004_credential_changes.sql"),
    ),
    (
        5,
        "sign-ins through identity providers in progress",
        include_str!("../migrations/0005_sso.sql"),
    ),
    (
        6,
        "identity assertions spent",
        include_str!("../migrations/0006_id_jag.sql"),
    ),
    (
        7,
        "when members last signed in through their provider",
        include_str!("../migrations/0007_signed_in_at.sql"),
    ),
    (
        8,
        "members' refresh tokens at their provider, sealed",
        include_str!("../migrations/0008_provider_tokens.sql"),
    ),
    (
        9,
        "tool definitions held for review, and the decisions",
        include_str!("../migrations/0009_tool_reviews.sql"),
    ),
    (
        10,
        "the groups users belong to",
        include_str!("../migrations/0010_groups.sql"),
    ),
];

/// An arbitrary constant: the advisory lock the gateways' migrations share.
const LOCK: i64 = 0x6d61_6e69_666f_6c64;

pub(crate) async fn run(store: &Store) -> Result<(), StoreError> {
    let e = |s| store.err(s);
    let mut tx = store.pool.begin().await.map_err(e)?;
    if store.backend == Backend::Postgres {
        tx.execute(AssertSqlSafe(format!(
            "SELECT pg_advisory_xact_lock({LOCK})"
        )))
        .await
        .map_err(e)?;
    }
    tx.execute(
        "CREATE TABLE IF NOT EXISTS manifold_migrations (
            version BIGINT PRIMARY KEY,
            name TEXT NOT NULL,
            applied_at BIGINT NOT NULL
        )",
    )
    .await
    .map_err(e)?;
    let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM manifold_migrations")
        .fetch_all(&mut *tx)
        .await
        .map_err(e)?;
    if let Some(newer) = applied.iter().find(|v| **v > MIGRATIONS.len() as i64) {
        return Err(StoreError::Conflict(format!(
            "the store {} was migrated to version {newer} by a newer Manifold; this one knows up to {}: upgrade it",
            store.at,
            MIGRATIONS.len()
        )));
    }
    for (version, name, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        sqlx::raw_sql(AssertSqlSafe(*sql))
            .execute(&mut *tx)
            .await
            .map_err(e)?;
        sqlx::query(
            "INSERT INTO manifold_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
        )
        .bind(version)
        .bind(*name)
        .bind(crate::now())
        .execute(&mut *tx)
        .await
        .map_err(e)?;
        tracing::info!(store = %store.at, version, name, "store migrated");
    }
    tx.commit().await.map_err(e)?;
    Ok(())
}
