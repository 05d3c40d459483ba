//! Live client sessions by number: which virtual server each uses, its peer for notifications,
//! its resource subscriptions and log level. Lock held only for map edits, never across `.await`.

#![allow(deprecated)] // LoggingLevel: legacy-era logging

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use rmcp::{RoleServer, model::LoggingLevel, service::Peer};

struct Entry {
    server: Arc<str>,
    peer: Peer<RoleServer>,
    subscriptions: HashSet<String>,
    level: Option<LoggingLevel>,
}

#[derive(Default)]
pub struct Sessions {
    next: AtomicU64,
    map: Mutex<HashMap<u64, Entry>>,
}

impl Sessions {
    pub fn next_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn register(&self, id: u64, server: Arc<str>, peer: Peer<RoleServer>) {
        self.map.lock().expect("sessions lock").insert(
            id,
            Entry {
                server,
                peer,
                subscriptions: HashSet::new(),
                level: None,
            },
        );
    }

    pub fn remove(&self, id: u64) {
        self.map.lock().expect("sessions lock").remove(&id);
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
