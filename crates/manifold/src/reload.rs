//! Hot reload: on a change to the config file or to a `.cedar` file beside it (watched through
//! their directory, so editors that replace the file are seen) or on SIGHUP, validate the new
//! file and apply it; an invalid file is logged and the running config keeps serving.

use std::{path::PathBuf, sync::Arc, time::Duration};

use manifold_server::Gateway;
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Keeps the watcher alive; dropping it stops file watching.
pub struct Reloader {
    _watcher: Option<notify::RecommendedWatcher>,
}

pub fn spawn(
    path: PathBuf,
    gw: Arc<Gateway>,
    roles: Arc<manifold_policy::RolePolicy>,
    watch: bool,
) -> anyhow::Result<Reloader> {
    let (tx, mut rx) = mpsc::channel::<&'static str>(8);
    let watcher = if watch {
        let file = path.file_name().map(|f| f.to_owned());
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| ".".into());
        let ftx = tx.clone();
        let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res
                && !ev.kind.is_access()
                && ev.paths.iter().any(|p| {
                    p.file_name() == file.as_deref() || p.extension().is_some_and(|e| e == "cedar")
                })
            {
                let _ = ftx.try_send("file change");
            }
        })?;
        w.watch(&dir, RecursiveMode::NonRecursive)?;
        Some(w)
    } else {
        None
    };
    let htx = tx.clone();
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hup.recv().await.is_some() {
            let _ = htx.send("SIGHUP").await;
        }
    });
    tokio::spawn(async move {
        while let Some(why) = rx.recv().await {
            // Editors write in several steps: wait for the burst to settle, then read once.
            tokio::time::sleep(Duration::from_millis(150)).await;
            while rx.try_recv().is_ok() {}
            let env = crate::env_lookup();
            match manifold_config::Config::load(&path, &|k: &str| env(k)) {
                // A SIGHUP is an operator asking: answer it. Editors touch files often.
                Ok(cfg) if *gw.config() == cfg && why == "SIGHUP" => tracing::info!(
                    path = %path.display(),
                    "SIGHUP: the config is unchanged; still serving it"
                ),
                Ok(cfg) if *gw.config() == cfg => tracing::debug!(reason = why, "config unchanged"),
                Ok(cfg) => {
                    tracing::info!(reason = why, path = %path.display(), "reloading config");
                    for w in cfg.warnings() {
                        tracing::warn!("{w} (see docs/config.md)");
                    }
                    if cfg.store != gw.config().store {
                        tracing::warn!(
                            "[store] changed: the gateway keeps using the store it opened at start; restart it to switch"
                        );
                    }
                    if cfg.auth != gw.config().auth {
                        tracing::warn!(
                            "[auth] changed: the authorization server keeps the settings it started with; restart the gateway to apply them"
                        );
                    }
                    // Role rules, groups and conditions apply at the next request, before the rest of
                    // the reload; conditions that do not compile reject the whole reload.
                    if cfg.roles != gw.config().roles
                        || cfg.groups != gw.config().groups
                        || cfg.policy != gw.config().policy
                    {
                        match crate::conditions(&cfg) {
                            Ok(conditions) => {
                                roles.replace_all(
                                    crate::role_rules(&cfg.roles).iter().map(|(n, r)| (n, r)),
                                    conditions,
                                );
                                roles.replace_groups(cfg.groups.iter());
                                tracing::info!(
                                    roles = cfg.roles.len(),
                                    policy_texts = cfg.policy.len(),
                                    "role rules and conditions replaced"
                                );
                                // Clients whose own lists the change changed are told.
                                gw.policy_changed();
                            }
                            Err(errors) => {
                                let summary =
                                    format!("{} error(s) in the Cedar policies", errors.len());
                                rejected(why, &summary, &errors);
                                continue;
                            }
                        }
                    }
                    gw.apply(cfg);
                }
                // One line per problem, so each can be found by its file:line:col.
                Err(errors) => rejected(why, &errors.summary(), &errors),
            }
        }
    });
    Ok(Reloader { _watcher: watcher })
}

/// A reload refused: the summary, then one line per problem (each found by its file:line:col).
fn rejected<E: std::fmt::Display>(why: &str, summary: &str, errors: impl IntoIterator<Item = E>) {
    tracing::error!(
        reason = why,
        "config reload rejected, still serving the previous config: {summary}"
    );
    for e in errors {
        tracing::error!("{e}");
    }
}
