//! Upstream events to the clients they concern: catalog changes rebuild the affected virtual
//! servers' catalogs and become `list_changed`; resource updates go to the sessions and listen
//! streams that watch the resource and whose member the policy still lets watch it; log
//! messages no call claimed go to the sessions whose log level admits them and whose member
//! may still connect. A per-client upstream session's events concern its own client alone.
//! Also here: closing idle sessions.

#![allow(deprecated)] // legacy-era logging notifications are relayed

use std::{sync::Weak, time::Duration};

use manifold_upstream::UpstreamEvent;
use tokio::sync::broadcast;

use crate::{Gateway, gateway::notify_session, jsonrpc};

pub(crate) async fn fan_out(gw: Weak<Gateway>, mut rx: broadcast::Receiver<UpstreamEvent>) {
    loop {
        let ev = match rx.recv().await {
            Ok(ev) => ev,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "event fan-out lagged; rebuilding every catalog");
                if let Some(gw) = gw.upgrade() {
                    for vs in gw.servers() {
                        let ch = vs.rebuild();
                        if ch.any() {
                            gw.notify_changes(vs.name(), ch);
                        }
                    }
                }
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let Some(gw) = gw.upgrade() else { return };
        deliver(&gw, ev);
    }
}

/// Hand one upstream event to the clients it concerns: everyone it is about, or, for a
/// per-client upstream session's event, its own client alone.
fn deliver(gw: &Gateway, ev: UpstreamEvent) {
    let (ev, only) = match ev {
        UpstreamEvent::ForClient(client, ev) => (*ev, Some(client)),
        ev => (ev, None),
    };
    let concerns = |client: u64| only.is_none_or(|o| o == client);
    match ev {
        UpstreamEvent::ForClient(..) | UpstreamEvent::HealthChanged(..) => {}
        UpstreamEvent::CatalogChanged(id) => match only {
            None => {
                for vs in gw.servers().into_iter().filter(|vs| vs.uses(&id)) {
                    let ch = vs.rebuild();
                    if ch.any() {
                        gw.notify_changes(vs.name(), ch);
                    }
                }
            }
            // The client's own lists, from its own upstream session.
            Some(client) => {
                let Some(s) = gw.sessions.by_client(client) else {
                    return;
                };
                if let Some(vs) = gw.virtual_server(&s.server).filter(|vs| vs.uses(&id)) {
                    let ch = vs.client_changes(client);
                    if ch.any() {
                        notify_session(&s, ch);
                    }
                }
            }
        },
        UpstreamEvent::ResourceUpdated(id, uri) => {
            for vs in gw.servers().into_iter().filter(|vs| vs.uses(&id)) {
                let exposed = vs.catalog().expose_uri(&id, &uri);
                // The policy decides each delivery (as the member's roles are now).
                let may = |who: &manifold_policy::Principal, via| {
                    gw.may_watch(vs.name(), who, via, &id, &uri, &exposed)
                };
                for l in gw.sessions.listeners_of(vs.name()) {
                    if only.is_none() && l.watches(&exposed) && may(&l.principal.load(), l.via) {
                        l.updated(&exposed);
                    }
                }
                let msg = jsonrpc::notification(
                    "notifications/resources/updated",
                    serde_json::json!({ "uri": exposed }),
                );
                for s in gw.sessions.of_server(vs.name()) {
                    if concerns(s.client) && s.subscribed(&exposed) && may(&s.principal(), s.via())
                    {
                        s.notify(msg.clone());
                    }
                }
            }
        }
        UpstreamEvent::Log(id, params) => {
            let msg = jsonrpc::notification("notifications/message", &params);
            for vs in gw.servers().into_iter().filter(|vs| vs.uses(&id)) {
                for s in gw.sessions.of_server(vs.name()) {
                    if concerns(s.client)
                        && s.wants(params.level)
                        && gw.may_connect(vs.name(), &s.principal(), s.via())
                    {
                        s.notify(msg.clone());
                    }
                }
            }
        }
    }
}

/// Close sessions without a request (and without an open standalone stream) for
/// `gateway.session_idle_timeout`.
pub(crate) async fn expire_idle(gw: Weak<Gateway>) {
    loop {
        let Some(idle) = gw
            .upgrade()
            .map(|g| g.config().gateway.session_idle_timeout)
        else {
            return;
        };
        let tick = (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(15));
        tokio::time::sleep(tick).await;
        let Some(g) = gw.upgrade() else { return };
        for key in g.sessions.idle(idle) {
            tracing::debug!("closing an idle session");
            g.end_session(&key);
        }
    }
}
