//! Live client sessions by number: which virtual server each uses, its peer for notifications,
//! its resource subscriptions and log level. Lock held only for map edits, never across `.await`.

#![allow(deprecated)] // LoggingLevel: legacy-era logging

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use rmcp::{
    RoleServer,
    model::LoggingLevel,
    service::{Peer, SubscriptionSink},
};

struct Entry {
    server: Arc<str>,
    /// The `Mcp-Session-Id` the client uses.
    key: Option<Arc<str>>,
    peer: Peer<RoleServer>,
    subscriptions: HashSet<String>,
    level: Option<LoggingLevel>,
}

/// (virtual server, last request) of one session id.
type Seen = (Arc<str>, Instant);

#[derive(Default)]
pub struct Sessions {
    next: AtomicU64,
    map: Mutex<HashMap<u64, Entry>>,
    /// `Mcp-Session-Id` → session number.
    keys: Mutex<HashMap<Arc<str>, u64>>,
    /// `Mcp-Session-Id` → (virtual server, last request), for idle expiry. Tracked from the
    /// moment rmcp hands out the id, so sessions never initialized expire too.
    seen: Mutex<HashMap<Arc<str>, Seen>>,
    /// Open `subscriptions/listen` streams of modern clients: number → (server, sink).
    listeners: Mutex<HashMap<u64, (Arc<str>, SubscriptionSink)>>,
}

impl Sessions {
    pub fn next_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn register(
        &self,
        id: u64,
        server: Arc<str>,
        peer: Peer<RoleServer>,
        key: Option<Arc<str>>,
    ) {
        if let Some(k) = &key {
            self.keys
                .lock()
                .expect("sessions lock")
                .insert(k.clone(), id);
        }
        // Idempotent: a request that needs the session (logging/setLevel, subscribe) may be
        // handled before `notifications/initialized`, and registers it first; what it set stays.
        self.map
            .lock()
            .expect("sessions lock")
            .entry(id)
            .or_insert(Entry {
                server,
                key,
                peer,
                subscriptions: HashSet::new(),
                level: None,
            });
    }

    pub fn remove(&self, id: u64) {
        let e = self.map.lock().expect("sessions lock").remove(&id);
        if let Some(k) = e.and_then(|e| e.key) {
            self.keys.lock().expect("sessions lock").remove(&k);
            self.seen.lock().expect("sessions lock").remove(&k);
        }
    }

    /// The session a client's `Mcp-Session-Id` names: its number, server and peer.
    pub fn by_key(&self, key: &str) -> Option<(u64, Arc<str>, Peer<RoleServer>)> {
        let id = *self.keys.lock().expect("sessions lock").get(key)?;
        let map = self.map.lock().expect("sessions lock");
        let e = map.get(&id)?;
        Some((id, e.server.clone(), e.peer.clone()))
    }

    /// rmcp created session `key` of `server`.
    pub fn track(&self, key: &str, server: &str) {
        self.seen
            .lock()
            .expect("sessions lock")
            .insert(key.into(), (server.into(), Instant::now()));
    }

    /// A request arrived in session `key` (tracked sessions only).
    pub fn touch(&self, key: &str) {
        if let Some((_, t)) = self.seen.lock().expect("sessions lock").get_mut(key) {
            *t = Instant::now();
        }
    }

    /// Take the sessions (server, key) without a request for `idle`.
    pub fn take_idle(&self, idle: Duration) -> Vec<(Arc<str>, Arc<str>)> {
        let now = Instant::now();
        let mut seen = self.seen.lock().expect("sessions lock");
        let stale: Vec<Arc<str>> = seen
            .iter()
            .filter(|(_, (_, t))| now.duration_since(*t) >= idle)
            .map(|(k, _)| k.clone())
            .collect();
        stale
            .into_iter()
            .filter_map(|k| seen.remove(&k).map(|(server, _)| (server, k)))
            .collect()
    }

    pub fn count(&self) -> usize {
        self.map.lock().expect("sessions lock").len()
    }

    pub fn subscribe(&self, id: u64, uri: String) {
        if let Some(e) = self.map.lock().expect("sessions lock").get_mut(&id) {
            e.subscriptions.insert(uri);
        }
    }

    pub fn unsubscribe(&self, id: u64, uri: &str) {
        if let Some(e) = self.map.lock().expect("sessions lock").get_mut(&id) {
            e.subscriptions.remove(uri);
        }
    }

    pub fn anyone_subscribed(&self, server: &str, uri: &str) -> bool {
        self.map
            .lock()
            .expect("sessions lock")
            .values()
            .any(|e| &*e.server == server && e.subscriptions.contains(uri))
            || !self.resource_listeners(server, uri).is_empty()
    }

    /// A modern client opened a `subscriptions/listen` stream on `server`.
    pub fn listen(&self, id: u64, server: Arc<str>, sink: SubscriptionSink) {
        self.listeners
            .lock()
            .expect("sessions lock")
            .insert(id, (server, sink));
    }

    pub fn unlisten(&self, id: u64) {
        self.listeners.lock().expect("sessions lock").remove(&id);
    }

    /// The listen streams of `server` (each filters what it accepted).
    pub fn listeners_of(&self, server: &str) -> Vec<SubscriptionSink> {
        self.listeners
            .lock()
            .expect("sessions lock")
            .values()
            .filter(|(s, _)| &**s == server)
            .map(|(_, sink)| sink.clone())
            .collect()
    }

    /// The listen streams of `server` that watch `uri`.
    pub fn resource_listeners(&self, server: &str, uri: &str) -> Vec<(u64, SubscriptionSink)> {
        self.listeners
            .lock()
            .expect("sessions lock")
            .iter()
            .filter(|(_, (s, sink))| {
                &**s == server
                    && sink
                        .accepted()
                        .resource_subscriptions
                        .as_ref()
                        .is_some_and(|u| u.iter().any(|u| u == uri))
            })
            .map(|(id, (_, sink))| (*id, sink.clone()))
            .collect()
    }

    pub fn level(&self, id: u64) -> Option<LoggingLevel> {
        self.map
            .lock()
            .expect("sessions lock")
            .get(&id)
            .and_then(|e| e.level)
    }

    pub fn set_level(&self, id: u64, level: LoggingLevel) {
        if let Some(e) = self.map.lock().expect("sessions lock").get_mut(&id) {
            e.level = Some(level);
        }
    }

    /// Peers of `server`'s sessions (a snapshot; sending happens after the lock is released).
    pub fn peers_of(&self, server: &str) -> Vec<(u64, Peer<RoleServer>)> {
        self.map
            .lock()
            .expect("sessions lock")
            .iter()
            .filter(|(_, e)| &*e.server == server)
            .map(|(id, e)| (*id, e.peer.clone()))
            .collect()
    }

    pub fn subscribers(&self, server: &str, uri: &str) -> Vec<(u64, Peer<RoleServer>)> {
        self.map
            .lock()
            .expect("sessions lock")
            .iter()
            .filter(|(_, e)| &*e.server == server && e.subscriptions.contains(uri))
            .map(|(id, e)| (*id, e.peer.clone()))
            .collect()
    }

    /// Sessions of `server` whose log level admits `level` (no level set: everything).
    pub fn log_listeners(&self, server: &str, level: LoggingLevel) -> Vec<(u64, Peer<RoleServer>)> {
        self.map
            .lock()
            .expect("sessions lock")
            .iter()
            .filter(|(_, e)| {
                &*e.server == server && e.level.is_none_or(|min| severity(level) >= severity(min))
            })
            .map(|(id, e)| (*id, e.peer.clone()))
            .collect()
    }
}

fn severity(l: LoggingLevel) -> u8 {
    match l {
        LoggingLevel::Debug => 0,
        LoggingLevel::Info => 1,
        LoggingLevel::Notice => 2,
        LoggingLevel::Warning => 3,
        LoggingLevel::Error => 4,
        LoggingLevel::Critical => 5,
        LoggingLevel::Alert => 6,
        LoggingLevel::Emergency => 7,
    }
}
