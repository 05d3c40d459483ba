//! The gateway's own table of client sessions: legacy (`initialize`) sessions with their
//! `Mcp-Session-Id`, principal, negotiated version and capabilities, log level, resource
//! subscriptions, standalone (GET) stream and the requests relayed to them; and the
//! `subscriptions/listen` streams of 2026-07-28 clients. Locks are held only for map edits,
//! never across `.await`. A session costs a few hundred bytes while idle.

#![allow(deprecated)] // LoggingLevel: legacy-era logging

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use manifold_policy::{Principal, Via};
use rmcp::model::{ClientCapabilities, ErrorData, LoggingLevel, SubscriptionFilter};
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::{
    admission::{Owner, Refusal},
    jsonrpc,
};

/// Messages kept for a session while it has no standalone stream open (the oldest go first).
const BACKLOG: usize = 64;

/// Where a client's answer to a relayed request goes.
pub(crate) type Answer = oneshot::Sender<Result<Box<RawValue>, ErrorData>>;

/// One legacy client session.
pub(crate) struct Session {
    /// The client key of its calls (attribution, per-client upstream sessions).
    pub client: u64,
    /// The `Mcp-Session-Id`.
    pub key: Arc<str>,
    pub server: Arc<str>,
    /// Who uses it, as of their latest request (`same_caller`): a request of anyone else does
    /// not find it.
    principal: ArcSwap<Principal>,
    /// How its latest request arrived (its source address): what notifications are decided
    /// with.
    via: Mutex<Via>,
    /// Whose sessions it counts among (`gateway.max_sessions_per_client`).
    owner: Owner,
    /// The protocol version negotiated at `initialize`.
    pub version: String,
    /// What the client declared at `initialize`.
    pub capabilities: ClientCapabilities,
    state: Mutex<State>,
    /// Requests relayed to the client (ids `mf-s-N`) awaiting its answer.
    relays: Mutex<HashMap<u64, Answer>>,
    next_relay: AtomicU64,
    /// The client's calls in flight, by JSON-RPC id text (for `notifications/cancelled`).
    calls: Mutex<HashMap<Box<str>, CancellationToken>>,
    /// Cancelled when the session ends (DELETE, idle expiry, shutdown).
    pub closed: CancellationToken,
    /// What it was last shown of each list.
    pub views: Views,
}

impl Session {
    /// Who uses the session, as of their latest request.
    pub fn principal(&self) -> Arc<Principal> {
        self.principal.load_full()
    }

    /// How the session's latest request arrived.
    pub fn via(&self) -> Via {
        *self.via.lock().expect("via lock")
    }

    /// A request of the session arrived `via`.
    pub fn arrived(&self, via: Via) {
        *self.via.lock().expect("via lock") = via;
    }
}

/// Whether `a` and `b` are one caller (the same user, through the same OAuth client), whose
/// roles or scopes may differ: a session or stream stays theirs when their roles change.
pub(crate) fn same_caller(a: &Principal, b: &Principal) -> bool {
    a.id() == b.id() && a.client == b.client
}

/// Bring `slot` up to `who` if it holds the same caller as they were: whether it changed.
fn refresh(slot: &ArcSwap<Principal>, who: &Arc<Principal>) -> bool {
    let now = slot.load();
    if same_caller(&now, who) && **now != **who {
        slot.store(who.clone());
        return true;
    }
    false
}

/// What a client was last shown of each list (`VirtualServer::view`, by
/// `manifold_router::kind_index`), so that it is told of a change only when its own view changed.
#[derive(Default)]
pub(crate) struct Views(Mutex<[Option<u64>; 4]>);

impl Views {
    pub fn saw(&self, kind: usize, print: u64) {
        self.0.lock().expect("views lock")[kind] = Some(print);
    }

    /// Record `print` as what the client would now be shown of list `kind`; whether that is a
    /// change (`unknown`: what to say when nothing was recorded before).
    pub fn update(&self, kind: usize, print: u64, unknown: bool) -> bool {
        let mut v = self.0.lock().expect("views lock");
        let changed = v[kind].map_or(unknown, |old| old != print);
        v[kind] = Some(print);
        changed
    }
}

struct State {
    level: Option<LoggingLevel>,
    subscriptions: HashSet<String>,
    /// The open standalone (GET) stream, with its number (a new one replaces the old).
    stream: Option<(u64, mpsc::Sender<String>)>,
    backlog: VecDeque<String>,
    last_seen: Instant,
}

impl Session {
    pub fn level(&self) -> Option<LoggingLevel> {
        self.state.lock().expect("session lock").level
    }

    pub fn set_level(&self, level: LoggingLevel) {
        self.state.lock().expect("session lock").level = Some(level);
    }

    /// Whether the client wants log messages of `level` (no level set: all).
    pub fn wants(&self, level: LoggingLevel) -> bool {
        self.level()
            .is_none_or(|min| severity(level) >= severity(min))
    }

    pub fn subscribe(&self, uri: &str) {
        self.state
            .lock()
            .expect("session lock")
            .subscriptions
            .insert(uri.to_owned());
    }

    pub fn unsubscribe(&self, uri: &str) {
        self.state
            .lock()
            .expect("session lock")
            .subscriptions
            .remove(uri);
    }

    pub fn subscribed(&self, uri: &str) -> bool {
        self.state
            .lock()
            .expect("session lock")
            .subscriptions
            .contains(uri)
    }

    pub fn touch(&self) {
        self.state.lock().expect("session lock").last_seen = Instant::now();
    }

    /// Idle: no request for `idle` and no standalone stream open.
    fn idle(&self, idle: Duration, now: Instant) -> bool {
        let s = self.state.lock().expect("session lock");
        s.stream.as_ref().is_none_or(|(_, tx)| tx.is_closed())
            && now.duration_since(s.last_seen) >= idle
    }

    /// A message not about any call (list changes, resource updates, logs): on the standalone
    /// stream, or kept until one opens.
    pub fn notify(&self, msg: String) {
        let mut s = self.state.lock().expect("session lock");
        let msg = match &s.stream {
            Some((_, tx)) => match tx.try_send(msg) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(m) | mpsc::error::TrySendError::Closed(m)) => m,
            },
            None => msg,
        };
        if s.backlog.len() >= BACKLOG {
            s.backlog.pop_front();
        }
        s.backlog.push_back(msg);
    }

    /// Open the standalone stream (replacing an older one): its number, and the messages kept
    /// meanwhile, which the caller sends first.
    pub fn open_stream(&self, tx: mpsc::Sender<String>) -> (u64, Vec<String>) {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let mut s = self.state.lock().expect("session lock");
        s.stream = Some((n, tx));
        (n, s.backlog.drain(..).collect())
    }

    /// Stream `n` ended (unless a newer one replaced it).
    pub fn close_stream(&self, n: u64) {
        let mut s = self.state.lock().expect("session lock");
        if s.stream.as_ref().is_some_and(|(m, _)| *m == n) {
            s.stream = None;
        }
    }

    /// Register a relayed request: its id and where the answer arrives.
    pub fn relay(
        &self,
    ) -> (
        String,
        oneshot::Receiver<Result<Box<RawValue>, ErrorData>>,
        u64,
    ) {
        let n = self.next_relay.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.relays.lock().expect("relays lock").insert(n, tx);
        (format!("{RELAY_PREFIX}{n}"), rx, n)
    }

    pub fn forget_relay(&self, n: u64) {
        self.relays.lock().expect("relays lock").remove(&n);
    }

    /// The client's answer to relayed request `id`: whether it was one of ours.
    pub fn answer(&self, id: &RawValue, result: Result<Box<RawValue>, ErrorData>) -> bool {
        let Some(n) = id
            .get()
            .strip_prefix('"')
            .and_then(|s| s.strip_suffix('"'))
            .and_then(|s| s.strip_prefix(RELAY_PREFIX))
            .and_then(|s| s.parse::<u64>().ok())
        else {
            return false;
        };
        match self.relays.lock().expect("relays lock").remove(&n) {
            Some(tx) => {
                let _ = tx.send(result);
                true
            }
            None => false,
        }
    }

    /// A call of this session started; `notifications/cancelled` for its id cancels it.
    pub fn call_started(&self, id: &RawValue, ct: CancellationToken) {
        self.calls
            .lock()
            .expect("calls lock")
            .insert(id.get().into(), ct);
    }

    pub fn call_ended(&self, id: &RawValue) {
        self.calls.lock().expect("calls lock").remove(id.get());
    }

    /// `notifications/cancelled` for request `id` of this session.
    pub fn cancel(&self, id: &RawValue) -> bool {
        match self.calls.lock().expect("calls lock").get(id.get()) {
            Some(ct) => {
                ct.cancel();
                true
            }
            None => false,
        }
    }
}

/// Id prefix of the requests relayed to clients.
pub(crate) const RELAY_PREFIX: &str = "mf-s-";

/// An open `subscriptions/listen` stream of a 2026-07-28 client.
pub(crate) struct Listener {
    pub server: Arc<str>,
    /// The listen request's id: every notification names it as its subscription.
    pub id: Box<RawValue>,
    pub accepted: SubscriptionFilter,
    pub tx: mpsc::Sender<String>,
    /// Who listens (as of their latest request), how the listen request arrived, and the
    /// client key of its lists: list changes are for their view.
    pub principal: ArcSwap<Principal>,
    pub via: Via,
    pub client: u64,
    pub views: Views,
}

impl Listener {
    /// A notification tagged with this subscription, if the client accepted it.
    fn send(&self, method: &str, mut params: serde_json::Map<String, serde_json::Value>) {
        let meta = serde_json::json!({
            "io.modelcontextprotocol/subscriptionId": serde_json::from_str::<serde_json::Value>(self.id.get()).unwrap_or_default()
        });
        params.insert("_meta".into(), meta);
        let _ = self.tx.try_send(jsonrpc::notification(method, params));
    }

    pub fn list_changed(&self, tools: bool, prompts: bool, resources: bool) {
        let a = &self.accepted;
        for (wanted, accepted, method) in [
            (
                tools,
                a.tools_list_changed,
                "notifications/tools/list_changed",
            ),
            (
                prompts,
                a.prompts_list_changed,
                "notifications/prompts/list_changed",
            ),
            (
                resources,
                a.resources_list_changed,
                "notifications/resources/list_changed",
            ),
        ] {
            if wanted && accepted == Some(true) {
                self.send(method, serde_json::Map::new());
            }
        }
    }

    pub fn watches(&self, uri: &str) -> bool {
        self.accepted
            .resource_subscriptions
            .as_ref()
            .is_some_and(|u| u.iter().any(|u| u == uri))
    }

    pub fn updated(&self, uri: &str) {
        if self.watches(uri) {
            let mut p = serde_json::Map::new();
            p.insert("uri".into(), uri.into());
            self.send("notifications/resources/updated", p);
        }
    }
}

#[derive(Default)]
pub struct Sessions {
    next: AtomicU64,
    map: Mutex<Table>,
    listeners: Mutex<HashMap<u64, Arc<Listener>>>,
}

/// The live sessions, and how many each client has (for `gateway.max_sessions_per_client`).
#[derive(Default)]
struct Table {
    by_key: HashMap<Arc<str>, Arc<Session>>,
    per_owner: HashMap<Owner, usize>,
}

/// How many sessions may be live: in total, and per client.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Caps {
    pub total: usize,
    pub per_owner: usize,
}

impl Sessions {
    /// A fresh client key (a session's, a stateless call's, a listen stream's).
    pub fn next_client(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// A new session with a fresh, unguessable id (128 random bits); `closed` ends it (a
    /// child of the gateway's shutdown). Refused when the gateway or `owner` has `caps` live
    /// sessions already.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn create(
        &self,
        server: Arc<str>,
        principal: Arc<Principal>,
        via: Via,
        owner: Owner,
        caps: Caps,
        version: String,
        capabilities: ClientCapabilities,
        closed: CancellationToken,
    ) -> Result<Arc<Session>, Refusal> {
        let key: Arc<str> = format!("{:032x}", rand::random::<u128>()).into();
        let s = Arc::new(Session {
            client: self.next_client(),
            key: key.clone(),
            server,
            principal: ArcSwap::new(principal),
            via: Mutex::new(via),
            owner: owner.clone(),
            version,
            capabilities,
            state: Mutex::new(State {
                level: None,
                subscriptions: HashSet::new(),
                stream: None,
                backlog: VecDeque::new(),
                last_seen: Instant::now(),
            }),
            relays: Mutex::new(HashMap::new()),
            next_relay: AtomicU64::new(1),
            calls: Mutex::new(HashMap::new()),
            closed,
            views: Views::default(),
        });
        let mut t = self.map.lock().expect("sessions lock");
        if t.by_key.len() >= caps.total {
            return Err(Refusal::Full(caps.total));
        }
        let mine = t.per_owner.entry(owner).or_default();
        if *mine >= caps.per_owner {
            return Err(Refusal::OwnerFull(caps.per_owner));
        }
        *mine += 1;
        t.by_key.insert(key, s.clone());
        Ok(s)
    }

    pub(crate) fn get(&self, key: &str) -> Option<Arc<Session>> {
        self.map
            .lock()
            .expect("sessions lock")
            .by_key
            .get(key)
            .cloned()
    }

    /// End session `key`: it is gone for new requests, its streams and relayed requests end.
    pub(crate) fn remove(&self, key: &str) -> Option<Arc<Session>> {
        let s = {
            let mut t = self.map.lock().expect("sessions lock");
            let s = t.by_key.remove(key)?;
            if let Some(n) = t.per_owner.get_mut(&s.owner) {
                *n -= 1;
                if *n == 0 {
                    t.per_owner.remove(&s.owner);
                }
            }
            s
        };
        s.closed.cancel();
        Some(s)
    }

    pub(crate) fn of_server(&self, server: &str) -> Vec<Arc<Session>> {
        self.map
            .lock()
            .expect("sessions lock")
            .by_key
            .values()
            .filter(|s| &*s.server == server)
            .cloned()
            .collect()
    }

    pub(crate) fn by_client(&self, client: u64) -> Option<Arc<Session>> {
        self.map
            .lock()
            .expect("sessions lock")
            .by_key
            .values()
            .find(|s| s.client == client)
            .cloned()
    }

    /// The keys of sessions idle for `idle`.
    pub(crate) fn idle(&self, idle: Duration) -> Vec<Arc<str>> {
        let now = Instant::now();
        self.map
            .lock()
            .expect("sessions lock")
            .by_key
            .values()
            .filter(|s| s.idle(idle, now))
            .map(|s| s.key.clone())
            .collect()
    }

    pub(crate) fn all_keys(&self) -> Vec<Arc<str>> {
        self.map
            .lock()
            .expect("sessions lock")
            .by_key
            .keys()
            .cloned()
            .collect()
    }

    pub fn count(&self) -> usize {
        self.map.lock().expect("sessions lock").by_key.len()
    }

    pub(crate) fn count_of(&self, server: &str) -> usize {
        self.map
            .lock()
            .expect("sessions lock")
            .by_key
            .values()
            .filter(|s| &*s.server == server)
            .count()
    }

    /// Whether any session or listen stream of `server` still watches `uri`.
    pub(crate) fn anyone_subscribed(&self, server: &str, uri: &str) -> bool {
        self.of_server(server).iter().any(|s| s.subscribed(uri))
            || self.listeners_of(server).iter().any(|l| l.watches(uri))
    }

    pub(crate) fn listen(&self, n: u64, l: Arc<Listener>) {
        self.listeners.lock().expect("sessions lock").insert(n, l);
    }

    pub(crate) fn unlisten(&self, n: u64) {
        self.listeners.lock().expect("sessions lock").remove(&n);
    }

    /// `who` made a request on `server`: every session and listen stream of theirs there that
    /// still holds them with other roles or scopes now holds `who`. Whether any changed.
    pub(crate) fn caller_seen(&self, server: &str, who: &Arc<Principal>, sessions: bool) -> bool {
        let mut changed = false;
        for l in self.listeners.lock().expect("sessions lock").values() {
            if &*l.server == server {
                changed |= refresh(&l.principal, who);
            }
        }
        if sessions {
            for s in self.map.lock().expect("sessions lock").by_key.values() {
                if &*s.server == server {
                    changed |= refresh(&s.principal, who);
                }
            }
        }
        changed
    }

    pub(crate) fn listeners_of(&self, server: &str) -> Vec<Arc<Listener>> {
        self.listeners
            .lock()
            .expect("sessions lock")
            .values()
            .filter(|l| &*l.server == server)
            .cloned()
            .collect()
    }
}

pub(crate) fn severity(l: LoggingLevel) -> u8 {
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

#[cfg(test)]
mod tests {
    use super::*;

    const CAPS: Caps = Caps {
        total: 100,
        per_owner: 100,
    };

    fn session_of(sessions: &Sessions, owner: &str, caps: Caps) -> Result<Arc<Session>, Refusal> {
        sessions.create(
            "main".into(),
            Arc::new(Principal::anonymous()),
            Via::default(),
            Owner::Address(owner.parse().unwrap()),
            caps,
            "2025-11-25".into(),
            ClientCapabilities::default(),
            CancellationToken::new(),
        )
    }

    fn session(sessions: &Sessions) -> Arc<Session> {
        session_of(sessions, "127.0.0.1", CAPS).expect("room")
    }

    #[test]
    fn sessions_are_capped_in_total_and_per_client_and_freed_when_they_end() {
        let sessions = Sessions::default();
        let caps = Caps {
            total: 3,
            per_owner: 2,
        };
        let a1 = session_of(&sessions, "10.0.0.1", caps).unwrap();
        session_of(&sessions, "10.0.0.1", caps).unwrap();
        assert_eq!(
            session_of(&sessions, "10.0.0.1", caps).err(),
            Some(Refusal::OwnerFull(2))
        );
        session_of(&sessions, "10.0.0.2", caps).unwrap();
        assert_eq!(
            session_of(&sessions, "10.0.0.3", caps).err(),
            Some(Refusal::Full(3))
        );
        sessions.remove(&a1.key).unwrap();
        assert!(a1.closed.is_cancelled());
        session_of(&sessions, "10.0.0.1", caps).expect("a freed place is taken again");
        assert_eq!(sessions.count(), 3);
    }

    #[test]
    fn notifications_wait_for_a_stream_and_a_newer_stream_replaces_an_older_one() {
        let sessions = Sessions::default();
        let s = session(&sessions);
        for i in 0..(BACKLOG + 3) {
            s.notify(format!("m{i}"));
        }
        let (tx, mut rx) = mpsc::channel(8);
        let (n, kept) = s.open_stream(tx);
        assert_eq!(kept.len(), BACKLOG, "bounded");
        assert_eq!(kept[0], "m3", "the oldest went first");
        s.notify("live".into());
        assert_eq!(rx.try_recv().unwrap(), "live");
        let (tx2, mut rx2) = mpsc::channel(8);
        let (n2, _) = s.open_stream(tx2);
        s.close_stream(n);
        s.notify("to the newer".into());
        assert_eq!(rx2.try_recv().unwrap(), "to the newer");
        s.close_stream(n2);
        s.notify("kept".into());
        assert!(rx2.try_recv().is_err());
    }

    #[test]
    fn relayed_answers_are_taken_once_and_only_by_id() {
        let sessions = Sessions::default();
        let s = session(&sessions);
        let (id, mut rx, _) = s.relay();
        let id: Box<RawValue> = serde_json::value::to_raw_value(&id).unwrap();
        let other = serde_json::value::to_raw_value("mf-s-999").unwrap();
        assert!(!s.answer(&other, Ok(RawValue::from_string("{}".into()).unwrap())));
        assert!(s.answer(&id, Ok(RawValue::from_string("{\"a\":1}".into()).unwrap())));
        assert_eq!(rx.try_recv().unwrap().unwrap().get(), "{\"a\":1}");
        assert!(
            !s.answer(&id, Ok(RawValue::from_string("{}".into()).unwrap())),
            "once"
        );
    }

    #[test]
    fn sessions_have_unguessable_distinct_ids_and_end_once() {
        let sessions = Sessions::default();
        let (a, b) = (session(&sessions), session(&sessions));
        assert_ne!(a.key, b.key);
        assert_eq!(a.key.len(), 32);
        assert_ne!(a.client, b.client);
        let gone = sessions.remove(&a.key).unwrap();
        assert!(gone.closed.is_cancelled());
        assert!(sessions.get(&a.key).is_none());
        assert!(sessions.remove(&a.key).is_none());
        assert_eq!(sessions.count(), 1);
    }

    #[test]
    fn log_levels_filter_by_severity() {
        let sessions = Sessions::default();
        let s = session(&sessions);
        assert!(s.wants(LoggingLevel::Debug), "no level: everything");
        s.set_level(LoggingLevel::Warning);
        assert!(!s.wants(LoggingLevel::Info));
        assert!(s.wants(LoggingLevel::Error));
    }
}
