//! Tool review (`tool_updates = "review"`): the administrator's commands (`manifold tools
//! pending|approve|reject`) and the gateway's side — recording the definitions its catalogs
//! hold, and re-reading the approved ones when a decision is made (by this machine's CLI or
//! another's: the store is the one place they meet).

use std::{path::Path, sync::Arc, time::Duration};

use anyhow::{Context, bail};
use clap::Subcommand;
use manifold_router::{Approved, Reviews, review};
use manifold_server::Gateway;
use manifold_store::{Store, ToolReview, ToolStatus};

/// How often a running gateway looks at the store's decision counter.
pub const POLL: Duration = Duration::from_secs(1);

#[derive(Subcommand)]
pub enum ToolsCmd {
    /// List the tool definitions awaiting review (new tools, and approved tools whose
    /// definition changed), with what looks wrong in them and their full text, escaped.
    Pending {
        /// Only this virtual server's.
        #[arg(long)]
        server: Option<String>,
        /// Every definition ever held, decided or not.
        #[arg(long)]
        all: bool,
    },
    /// Approve a tool's definition: the virtual server shows the tool (with that definition
    /// only) from the next request on, on every gateway sharing the store.
    Approve(Pick),
    /// Reject a tool's definition: the tool stays hidden while its upstream offers it (an
    /// approved definition rejected is withdrawn).
    Reject(Pick),
}

#[derive(clap::Args)]
pub struct Pick {
    /// The virtual server.
    server: String,
    /// CONNECTOR/TOOL (the connector's id and the upstream's own name of the tool).
    tool: String,
    /// Which definition (a prefix of its fingerprint, as `pending` shows it); needed only when
    /// the tool has several awaiting review.
    #[arg(long)]
    fingerprint: Option<String>,
    /// Who decides, for the record (default: the user running the command).
    #[arg(long)]
    by: Option<String>,
}

/// `manifold tools …`.
pub async fn run(config_path: &Path, cmd: ToolsCmd) -> anyhow::Result<()> {
    let config = crate::load(config_path)?;
    let store = crate::admin::open(&config).await?;
    let reviewed: Vec<&str> = config
        .servers
        .values()
        .filter(|s| s.tool_updates == manifold_config::ToolUpdates::Review)
        .map(|s| s.name.as_str())
        .collect();
    match cmd {
        ToolsCmd::Pending { server, all } => {
            let reviews = store.tool_reviews(server.as_deref()).await?;
            let shown: Vec<&ToolReview> = reviews
                .iter()
                .filter(|r| all || r.status == ToolStatus::Pending)
                .collect();
            if reviewed.is_empty() {
                println!(
                    "no virtual server of {} reviews its tools (set tool_updates = \"review\" in [servers.NAME])",
                    config_path.display()
                );
            }
            if shown.is_empty() {
                println!("no tool definitions await review");
                return Ok(());
            }
            let now = manifold_store::now();
            for r in shown {
                let approved = reviews.iter().find(|a| {
                    a.status == ToolStatus::Approved
                        && (&a.server, &a.connector, &a.tool) == (&r.server, &r.connector, &r.tool)
                });
                let what = match (r.status, approved) {
                    (ToolStatus::Pending, Some(a)) => format!(
                        "CHANGED since the approved definition {}",
                        short(&a.fingerprint)
                    ),
                    (ToolStatus::Pending, None) => "new".to_owned(),
                    (s, _) => format!(
                        "{}{}",
                        s.as_str(),
                        r.decided_by
                            .as_ref()
                            .map(|b| format!(" by {b}"))
                            .unwrap_or_default()
                    ),
                };
                println!(
                    "{} {}/{} {} — {what}, first seen {} ago",
                    r.server,
                    r.connector,
                    r.tool,
                    short(&r.fingerprint),
                    ago(now - r.first_seen)
                );
                for f in &r.flags {
                    println!("  ! {f}");
                }
                println!("  {}", review::escaped(&r.definition));
            }
            Ok(())
        }
        ToolsCmd::Approve(pick) => decide(&store, &config, pick, true).await,
        ToolsCmd::Reject(pick) => decide(&store, &config, pick, false).await,
    }
}

async fn decide(
    store: &Store,
    config: &manifold_config::Config,
    pick: Pick,
    approve: bool,
) -> anyhow::Result<()> {
    let Some((connector, tool)) = pick.tool.split_once('/') else {
        bail!(
            "{:?} is not CONNECTOR/TOOL (for example \"github/create_issue\")",
            pick.tool
        );
    };
    if !config.servers.contains_key(&pick.server) {
        let known: Vec<&str> = config.servers.keys().map(String::as_str).collect();
        bail!(
            "no virtual server {:?} (there are: {})",
            pick.server,
            known.join(", ")
        );
    }
    let all = store.tool_reviews(Some(&pick.server)).await?;
    let of_tool: Vec<&ToolReview> = all
        .iter()
        .filter(|r| r.connector == connector && r.tool == tool)
        .collect();
    let candidates: Vec<&ToolReview> = match &pick.fingerprint {
        Some(f) => of_tool
            .iter()
            .copied()
            .filter(|r| r.fingerprint.starts_with(f.as_str()))
            .collect(),
        None => of_tool
            .iter()
            .copied()
            .filter(|r| r.status == ToolStatus::Pending)
            .collect(),
    };
    let chosen = match candidates.as_slice() {
        [one] => *one,
        [] if of_tool.is_empty() => bail!(
            "the virtual server {:?} has held no tool {connector}/{tool} (see `manifold tools pending --all`)",
            pick.server
        ),
        [] => bail!(
            "no definition of {connector}/{tool} {} on {:?} (see `manifold tools pending --all --server {}`)",
            match &pick.fingerprint {
                Some(f) => format!("has a fingerprint starting {f:?}"),
                None => "awaits review".to_owned(),
            },
            pick.server,
            pick.server
        ),
        several => bail!(
            "{} definitions of {connector}/{tool} match: {}; say which with --fingerprint",
            several.len(),
            several
                .iter()
                .map(|r| short(&r.fingerprint))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let by = pick
        .by
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "an administrator".to_owned());
    let at = manifold_store::now();
    if approve {
        store.approve_tool(chosen, &by, at).await?;
        println!(
            "approved {connector}/{tool} {} on {:?}: running gateways show it within {}s",
            short(&chosen.fingerprint),
            pick.server,
            POLL.as_secs().max(1) * 2
        );
    } else {
        store.reject_tool(chosen, &by, at).await?;
        println!(
            "rejected {connector}/{tool} {} on {:?}: it stays hidden while its upstream offers that definition",
            short(&chosen.fingerprint),
            pick.server
        );
    }
    Ok(())
}

/// A fingerprint as people read it.
fn short(fingerprint: &str) -> &str {
    &fingerprint[..fingerprint.len().min(12)]
}

fn ago(secs: i64) -> String {
    match secs.max(0) {
        s if s < 120 => format!("{s}s"),
        s if s < 7_200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3_600),
        s => format!("{}d", s / 86_400),
    }
}

/// The approved definitions in the store, as the catalogs take them.
pub async fn approved(store: &Store) -> anyhow::Result<Approved> {
    Ok(store
        .approved_tools()
        .await
        .context("cannot read the approved tool definitions")?
        .into_iter()
        .map(|(s, c, t, f)| ((s, c, t), f))
        .collect())
}

/// The gateway's side, for as long as it runs: record what its catalogs hold (a changed
/// approved tool is logged as a warning), and re-read the approved definitions when the
/// store's decision counter moves.
pub fn spawn(gw: Arc<Gateway>, store: Store, reviews: Arc<Reviews>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut held = reviews.held_changed();
        let mut serial = store.tool_review_changes().await.ok();
        let mut unrecorded = true;
        let mut tick = tokio::time::interval(POLL);
        loop {
            tokio::select! {
                r = held.changed() => {
                    if r.is_err() {
                        return;
                    }
                    unrecorded = true;
                }
                _ = tick.tick() => {}
            }
            match store.tool_review_changes().await {
                Ok(now) if Some(now) != serial => match approved(&store).await {
                    Ok(a) => {
                        serial = Some(now);
                        reviews.replace(a);
                        gw.review_changed();
                        unrecorded = true;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot re-read the approved tool definitions; trying again")
                    }
                },
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "cannot read the tool review counter"),
            }
            if unrecorded {
                unrecorded = !record(&gw, &store, &reviews).await;
            }
        }
    })
}

/// Record the held definitions of every server under review; whether all were recorded.
async fn record(gw: &Gateway, store: &Store, reviews: &Reviews) -> bool {
    let mut ok = true;
    for vs in gw.servers() {
        for h in &vs.catalog().held {
            let t = ToolReview {
                server: h.server.clone(),
                connector: h.connector.clone(),
                tool: h.tool.clone(),
                fingerprint: h.fingerprint.clone(),
                status: ToolStatus::Pending,
                definition: h.definition.clone(),
                flags: h.flags.clone(),
                first_seen: manifold_store::now(),
                decided_at: None,
                decided_by: None,
            };
            match store.hold_tool(&t).await {
                Ok(true) => {
                    let flags = h.flags.join("; ");
                    if reviews.approved(&h.server, &h.connector, &h.tool).is_some() {
                        tracing::warn!(server = %h.server, connector = %h.connector, tool = %h.tool, fingerprint = short(&h.fingerprint), flags, "an approved tool's definition changed: it is hidden until approved again (manifold tools pending)");
                    } else {
                        tracing::info!(server = %h.server, connector = %h.connector, tool = %h.tool, fingerprint = short(&h.fingerprint), flags, "a new tool awaits review (manifold tools pending)");
                    }
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot record a tool held for review; trying again");
                    ok = false;
                }
            }
        }
    }
    ok
}
