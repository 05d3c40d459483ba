//! Upstream sessions per client, for connectors with `sessions = "per_client"`: started on a
//! client's first call, stopped when that client (a legacy session, or one stateless call)
//! ends, capped per connector.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use manifold_config::{ConnectorId, ConnectorSpec, StartMode, TransportSpec};
use tokio::sync::broadcast;

use crate::{Connector, EnvLookup, UpstreamError, UpstreamEvent};

/// (the configured spec, the running instance), by (connector, client).
type Entries = HashMap<(ConnectorId, u64), (ConnectorSpec, Arc<Connector>)>;

pub struct Pool {
    entries: Mutex<Entries>,
    /// The gateway's event channel. A per-client session's catalog changes, resource updates
    /// and logs reach it as `ForClient` (they concern its client only); its health does not:
    /// health is the shared instance's.
    events: broadcast::Sender<UpstreamEvent>,
    env: EnvLookup,
}

impl Pool {
    pub fn new(env: EnvLookup, events: broadcast::Sender<UpstreamEvent>) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            events,
            env,
        }
    }

    /// The upstream session of `client` for this connector, started if needed.
    pub fn get(&self, spec: &ConnectorSpec, client: u64) -> Result<Arc<Connector>, UpstreamError> {
        let mut entries = self.entries.lock().expect("pool lock");
        let key = (spec.id.clone(), client);
        if let Some((configured, c)) = entries.get(&key) {
            if configured == spec {
                return Ok(c.clone());
            }
            // The connector was reconfigured: replace this client's instance.
            entries.remove(&key);
        }
        let open = entries.keys().filter(|(id, _)| id == &spec.id).count();
        if open >= spec.max_sessions {
            return Err(UpstreamError::Unavailable(format!(
                "connector {:?} has reached max_sessions = {} per-client sessions; try again later or raise the limit",
                spec.id.as_str(),
                spec.max_sessions
            )));
        }
        let mut eager = spec.clone();
        if let TransportSpec::Stdio(s) = &mut eager.transport {
            s.start = StartMode::Eager;
        }
        tracing::info!(connector = %spec.id, client, "starting a per-client upstream session");
        let (own, mut rx) = broadcast::channel(16);
        let c = Arc::new(Connector::start(eager, own, self.env.clone()));
        let (events, weak) = (self.events.clone(), Arc::downgrade(&c));
        tokio::spawn(async move {
            loop {
                let ev = match rx.recv().await {
                    Ok(ev) => ev,
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if matches!(
                    ev,
                    UpstreamEvent::CatalogChanged(..)
                        | UpstreamEvent::ResourceUpdated(..)
                        | UpstreamEvent::Log(..)
                ) {
                    let _ = events.send(UpstreamEvent::ForClient(client, Box::new(ev)));
                }
                // The client ended and its instance is gone.
                if weak.strong_count() == 0 {
                    return;
                }
            }
        });
        entries.insert(key, (spec.clone(), c.clone()));
        Ok(c)
    }

    /// The running upstream session of `client` for connector `id`, if it has one.
    pub fn existing(&self, id: &ConnectorId, client: u64) -> Option<Arc<Connector>> {
        self.entries
            .lock()
            .expect("pool lock")
            .get(&(id.clone(), client))
            .map(|(_, c)| c.clone())
    }

    /// Stop every upstream session of a client that ended.
    pub fn end_client(&self, client: u64) {
        let mut entries = self.entries.lock().expect("pool lock");
        let gone: Vec<_> = entries
            .keys()
            .filter(|(_, c)| *c == client)
            .cloned()
            .collect();
        for key in gone {
            if let Some((_, c)) = entries.remove(&key) {
                tracing::info!(connector = %key.0, client, "stopping a per-client upstream session");
                c.shutdown();
            }
        }
    }

    /// Keep only sessions of connectors that still exist with per-client sessions.
    pub fn retain(&self, keep: impl Fn(&ConnectorSpec) -> bool) {
        self.entries
            .lock()
            .expect("pool lock")
            .retain(|_, (spec, c)| {
                let k = keep(spec);
                if !k {
                    c.shutdown();
                }
                k
            });
    }

    /// Upstream sessions per connector, for health.
    pub fn counts(&self) -> HashMap<ConnectorId, usize> {
        let mut m = HashMap::new();
        for (id, _) in self.entries.lock().expect("pool lock").keys() {
            *m.entry(id.clone()).or_insert(0) += 1;
        }
        m
    }

    /// Stop every per-client session; returns them so the caller can wait for `stopped`.
    pub fn shutdown(&self) -> Vec<Arc<Connector>> {
        let all: Vec<Arc<Connector>> = self
            .entries
            .lock()
            .expect("pool lock")
            .drain()
            .map(|(_, (_, c))| c)
            .collect();
        for c in &all {
            c.shutdown();
        }
        all
    }
}
