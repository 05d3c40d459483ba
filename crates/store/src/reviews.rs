//! Tool review: the definitions of tools that virtual servers under `tool_updates = "review"`
//! held out, and the administrators' decisions. Gateways record what they hold
//! (`hold_tool`), read the approved definitions (`approved_tools`) and re-read them when the
//! decision counter moves (`tool_review_changes`); the CLI decides (`approve_tool`,
//! `reject_tool`), in one transaction with the counter.

use sqlx::Row;

use crate::{Store, StoreError};

/// What became of one definition of a tool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToolStatus {
    /// Held, awaiting an administrator.
    Pending,
    /// The definition the tool is shown with.
    Approved,
    /// Refused: the tool stays held while the upstream offers this definition.
    Rejected,
    /// Approved once, replaced by a later approval.
    Superseded,
}

impl ToolStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ToolStatus::Pending => "pending",
            ToolStatus::Approved => "approved",
            ToolStatus::Rejected => "rejected",
            ToolStatus::Superseded => "superseded",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "approved" => ToolStatus::Approved,
            "rejected" => ToolStatus::Rejected,
            "superseded" => ToolStatus::Superseded,
            _ => ToolStatus::Pending,
        }
    }
}

/// One definition of a tool of a virtual server, and its review.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolReview {
    pub server: String,
    pub connector: String,
    /// The upstream's own name of the tool.
    pub tool: String,
    /// SHA-256 (hex) of `definition`.
    pub fingerprint: String,
    pub status: ToolStatus,
    /// The reviewed fields as canonical JSON.
    pub definition: String,
    /// What looked wrong in it (hidden characters, instruction blocks, size).
    pub flags: Vec<String>,
    pub first_seen: i64,
    pub decided_at: Option<i64>,
    pub decided_by: Option<String>,
}

const COLUMNS: &str = "server, connector, tool, fingerprint, status, definition, flags, first_seen, decided_at, decided_by";

fn review_of(r: &sqlx::any::AnyRow) -> Result<ToolReview, sqlx::Error> {
    let flags: String = r.try_get("flags")?;
    let status: String = r.try_get("status")?;
    Ok(ToolReview {
        server: r.try_get("server")?,
        connector: r.try_get("connector")?,
        tool: r.try_get("tool")?,
        fingerprint: r.try_get("fingerprint")?,
        status: ToolStatus::parse(&status),
        definition: r.try_get("definition")?,
        flags: flags.lines().map(str::to_owned).collect(),
        first_seen: r.try_get("first_seen")?,
        decided_at: r.try_get("decided_at")?,
        decided_by: r.try_get("decided_by")?,
    })
}

impl Store {
    /// Record a definition a gateway holds, as pending, unless the store has it already
    /// (pending, or decided); whether it was new.
    pub async fn hold_tool(&self, t: &ToolReview) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO tool_reviews (server, connector, tool, fingerprint, status, definition, flags, first_seen)
             VALUES ($1, $2, $3, $4, 'pending', $5, $6, $7)
             ON CONFLICT (server, connector, tool, fingerprint) DO NOTHING",
        )
        .bind(&t.server)
        .bind(&t.connector)
        .bind(&t.tool)
        .bind(&t.fingerprint)
        .bind(&t.definition)
        .bind(t.flags.join("\n"))
        .bind(t.first_seen)
        .execute(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(done.rows_affected() > 0)
    }

    /// The approved definitions: (server, connector, tool, fingerprint).
    pub async fn approved_tools(
        &self,
    ) -> Result<Vec<(String, String, String, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT server, connector, tool, fingerprint FROM tool_reviews WHERE status = 'approved'",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("server")?,
                    r.try_get("connector")?,
                    r.try_get("tool")?,
                    r.try_get("fingerprint")?,
                ))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(|e| self.err(e))
    }

    /// The decision counter: it moves with every approval and rejection.
    pub async fn tool_review_changes(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT serial FROM tool_review_changes WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.err(e))
    }

    /// The reviews of `server` (all servers: `None`), by server, connector, tool and when each
    /// definition was first seen.
    pub async fn tool_reviews(&self, server: Option<&str>) -> Result<Vec<ToolReview>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM tool_reviews WHERE ($1 = '' OR server = $1)
             ORDER BY server, connector, tool, first_seen, fingerprint"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(server.unwrap_or(""))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        rows.iter()
            .map(review_of)
            .collect::<Result<_, _>>()
            .map_err(|e| self.err(e))
    }

    /// Approve one definition (`NotFound` without it): it becomes the one the tool is shown
    /// with, and an earlier approved one is superseded.
    pub async fn approve_tool(&self, t: &ToolReview, by: &str, at: i64) -> Result<(), StoreError> {
        self.decide_tool(t, ToolStatus::Approved, by, at).await
    }

    /// Reject one definition (`NotFound` without it): the tool stays held while its upstream
    /// offers it (an approved definition rejected so is withdrawn).
    pub async fn reject_tool(&self, t: &ToolReview, by: &str, at: i64) -> Result<(), StoreError> {
        self.decide_tool(t, ToolStatus::Rejected, by, at).await
    }

    async fn decide_tool(
        &self,
        t: &ToolReview,
        status: ToolStatus,
        by: &str,
        at: i64,
    ) -> Result<(), StoreError> {
        let e = |e| self.err(e);
        let mut tx = self.pool.begin().await.map_err(e)?;
        if status == ToolStatus::Approved {
            sqlx::query(
                "UPDATE tool_reviews SET status = 'superseded' WHERE server = $1 AND connector = $2 AND tool = $3
                 AND status = 'approved' AND fingerprint <> $4",
            )
            .bind(&t.server)
            .bind(&t.connector)
            .bind(&t.tool)
            .bind(&t.fingerprint)
            .execute(&mut *tx)
            .await
            .map_err(e)?;
        }
        let changed = sqlx::query(
            "UPDATE tool_reviews SET status = $1, decided_at = $2, decided_by = $3
             WHERE server = $4 AND connector = $5 AND tool = $6 AND fingerprint = $7",
        )
        .bind(status.as_str())
        .bind(at)
        .bind(by)
        .bind(&t.server)
        .bind(&t.connector)
        .bind(&t.tool)
        .bind(&t.fingerprint)
        .execute(&mut *tx)
        .await
        .map_err(e)?
        .rows_affected();
        if changed == 0 {
            return Err(StoreError::NotFound(format!(
                "no definition {} of {}/{} on {:?}",
                t.fingerprint, t.connector, t.tool, t.server
            )));
        }
        sqlx::query("UPDATE tool_review_changes SET serial = serial + 1 WHERE id = 1")
            .execute(&mut *tx)
            .await
            .map_err(e)?;
        tx.commit().await.map_err(e)?;
        Ok(())
    }
}
