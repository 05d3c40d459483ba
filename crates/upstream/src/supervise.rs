//! A connector's supervisor: connect, read the catalog, serve until the connection ends, then
//! back off (exponential, ±25% jitter) or open the circuit after `max_failures` within `window`.

use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use manifold_config::{StartMode, TransportSpec};
use tokio_util::sync::CancellationToken;

use crate::{
    HealthState, UpstreamCatalog, UpstreamEvent, connect::Connection, connector::Shared,
    listen::listen_upstream, stdio,
};

impl Shared {
    pub(crate) fn set_health(&self, state: HealthState, error: Option<String>) {
        // Every error a connector reports passes here on its way to clients, `/healthz/detail`
        // and the log: nothing of the connector's secrets goes further.
        let error = error.map(|e| self.spec.secrets.scrub(&e).into_owned());
        let mut h = self.health.lock().expect("health lock");
        let changed = h.state != state;
        if changed {
            h.since = SystemTime::now();
        }
        h.state = state;
        h.reached |= state == HealthState::Up;
        if error.is_some() || state == HealthState::Up {
            h.last_error = error.clone();
        }
        drop(h);
        if changed {
            match (&error, state) {
                (Some(e), _) => {
                    tracing::warn!(connector = %self.spec.id, state = ?state, error = %e, "connector health changed")
                }
                (None, _) => {
                    tracing::info!(connector = %self.spec.id, state = ?state, "connector health changed")
                }
            }
            let _ = self.health_tx.send(state);
            let _ = self
                .events
                .send(UpstreamEvent::HealthChanged(self.spec.id.clone(), state));
        }
    }
}

pub(crate) async fn supervise(shared: Arc<Shared>) {
    let _stopped = shared.stopped.clone().drop_guard();
    let restart = shared.spec.restart.clone();
    if let TransportSpec::Stdio(s) = &shared.spec.transport
        && s.start == StartMode::Lazy
    {
        tokio::select! {
            _ = shared.demand.notified() => {}
            _ = shared.shutdown.cancelled() => return,
        }
    }
    let mut failures: VecDeque<Instant> = VecDeque::new();
    let mut backoff = restart.initial_backoff;
    // After the circuit opened: the next start is the one trial; if it fails, the circuit
    // opens again at once (half-open).
    let mut trial = false;
    loop {
        shared.set_health(HealthState::Starting, None);
        let attempt = tokio::select! {
            a = shared.connect() => a,
            _ = shared.shutdown.cancelled() => {
                // Stopped while starting (e.g. npx still downloading): kill the whole group.
                let pgid = shared.starting_group.lock().expect("group lock").take();
                stdio::signal_group(pgid, nix::sys::signal::Signal::SIGKILL);
                return;
            }
        };
        shared.starting_group.lock().expect("group lock").take();
        let error = match attempt {
            Ok(conn) => {
                let (error, came_up) = run_connection(&shared, conn, &mut backoff).await;
                if came_up {
                    trial = false;
                }
                error
            }
            Err(e) => Some(e),
        };
        let Some(error) = error else { return }; // shutdown
        shared.peer.store(None);
        {
            // Under the refresh lock, so a refresh of the dead connection cannot publish after.
            let _refreshes = shared.refresh_lock.lock().await;
            shared.publish_catalog(UpstreamCatalog::default());
        }
        shared.health.lock().expect("health lock").restarts += 1;
        let now = Instant::now();
        failures.push_back(now);
        while failures
            .front()
            .is_some_and(|t| now.duration_since(*t) > restart.window)
        {
            failures.pop_front();
        }
        let wait = if trial || failures.len() as u32 >= restart.max_failures {
            let why = if trial {
                format!(
                    "{error}; the trial start after the circuit opened failed, next try in {:?}",
                    restart.open_for
                )
            } else {
                format!(
                    "{error}; circuit open after {} failures within {:?}, next try in {:?}",
                    restart.max_failures, restart.window, restart.open_for
                )
            };
            failures.clear();
            backoff = restart.initial_backoff;
            trial = true;
            shared.set_health(HealthState::Down, Some(why));
            restart.open_for
        } else {
            shared.set_health(HealthState::Degraded, Some(error));
            let w = jitter(backoff);
            backoff = (backoff * 2).min(restart.max_backoff);
            w
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shared.shutdown.cancelled() => return,
        }
    }
}

/// Serve one connection until it ends. Returns the failure (`None` on shutdown) and whether
/// the connection came up.
async fn run_connection(
    shared: &Arc<Shared>,
    conn: Connection,
    backoff: &mut Duration,
) -> (Option<String>, bool) {
    let Connection {
        running,
        link,
        child,
    } = conn;
    let peer = running.peer().clone();
    let ct = running.cancellation_token();
    let answered = peer.peer_info().map(|i| i.protocol_version.clone());
    // A connection opened with `initialize` is legacy whatever version the upstream echoes (one
    // that answers with a version without `initialize` is wrong, and is told nothing of it).
    let opened_legacy = shared.spec.era == manifold_config::Era::Legacy
        || *shared.modern.lock().expect("era lock") == Some(false);
    let modern = !opened_legacy && answered.as_ref().is_some_and(|v| !v.has_initialize());
    if opened_legacy && answered.as_ref().is_some_and(|v| !v.has_initialize()) {
        tracing::warn!(connector = %shared.spec.id, version = ?answered, "the upstream answered initialize with a version that has no initialize; speaking the legacy protocol to it");
    }
    if shared.modern.lock().expect("era lock").replace(modern) != Some(modern) {
        tracing::info!(connector = %shared.spec.id, era = if modern { "2026-07-28" } else { "legacy" }, "upstream protocol era");
    }
    link.set_modern(modern);
    match shared.refresh_and_publish(&peer, &link).await {
        Ok(()) => {}
        Err(e) => {
            link.close();
            ct.cancel();
            if let Some((child, pgid)) = child {
                stdio::terminate(child, pgid, Duration::from_secs(2)).await;
            }
            return (Some(e), false);
        }
    }
    // Ids restart with each connection: the previous one's calls have failed.
    shared.calls.clear();
    shared.link.store(Some(link.clone()));
    // A new process (or session) starts at its own default log level.
    *shared.log_level.lock().expect("level lock") = None;
    // Ends the listen task (below) when this connection ends, however it ends.
    let listening = CancellationToken::new();
    let _stop_listening = listening.clone().drop_guard();
    if modern {
        // A modern upstream has no session to announce changes on: the connector listens.
        tokio::spawn(listen_upstream(
            Arc::downgrade(shared),
            peer.clone(),
            link.clone(),
            listening,
        ));
    } else {
        // A legacy upstream's subscriptions end with its session: renew the watched ones.
        let uris = shared.watched_uris();
        if !uris.is_empty() {
            let (peer, id) = (peer.clone(), shared.spec.id.clone());
            tokio::spawn(async move {
                for uri in uris {
                    let params: rmcp::model::SubscribeRequestParams =
                        serde_json::from_value(serde_json::json!({ "uri": uri }))
                            .expect("a valid subscribe request");
                    if let Err(e) = peer.subscribe(params).await {
                        tracing::warn!(connector = %id, %uri, error = %e, "renewing a resource subscription after a restart failed; updates of this resource will be missed");
                    }
                }
            });
        }
    }
    shared.peer.store(Some(Arc::new(peer)));
    shared.set_health(HealthState::Up, None);
    let started = Instant::now();
    let mut waiting = std::pin::pin!(running.waiting());
    let outcome = match child {
        Some((mut child, pgid)) => {
            let r = tokio::select! {
                st = child.wait() => Some(match st {
                    Ok(st) => format!("process exited ({st})"),
                    Err(e) => format!("process wait failed: {e}"),
                }),
                _ = &mut waiting => Some("the connection closed (stdout ended)".to_owned()),
                _ = shared.shutdown.cancelled() => None,
            };
            // Stop the session first so in-flight calls fail now, then the whole process group.
            shared.peer.store(None);
            shared.link.store(None);
            link.close();
            ct.cancel();
            let grace = if r.is_some() {
                Duration::from_millis(500)
            } else {
                Duration::from_secs(4)
            };
            stdio::terminate(child, pgid, grace).await;
            r
        }
        None => {
            let r = tokio::select! {
                q = &mut waiting => Some(format!("the connection closed ({q:?})")),
                _ = shared.shutdown.cancelled() => None,
            };
            shared.peer.store(None);
            shared.link.store(None);
            link.close();
            ct.cancel();
            r
        }
    };
    if started.elapsed() > shared.spec.restart.window {
        *backoff = shared.spec.restart.initial_backoff;
    }
    (outcome, true)
}

/// ±25% so that many connectors restarting together do not stampede.
fn jitter(d: Duration) -> Duration {
    let f: f64 = rand::random_range(0.75..1.25);
    d.mul_f64(f)
}
