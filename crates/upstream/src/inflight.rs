//! The calls in flight on one connector, for attributing what the upstream sends about them
//! (log messages, requests to the client) to the right client — and never to a guess.
//!
//! A request that arrives on a call's own HTTP exchange is that call's. On stdio and HTTP+SSE
//! nothing in a server→client request links it to the call that caused it, so the connector
//! keeps two things: which calls ask (learned per method and name: a call that asked is an
//! asker for good; one that completed without asking is quiet until it asks), and a slot that
//! one client at a time holds for its calls that may ask (askers, and calls not seen before):
//! the same client's such calls share it, another client's wait their turn. A request then
//! belongs to the slot holder's client; if calls of several clients are candidates (a quiet
//! call that asks after all), it waits a moment for them to narrow to one client, and is
//! refused if they do not.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use manifold_config::ConnectorId;
use tokio::sync::Notify;

use crate::{Caller, UpstreamError};

/// How long a request that several clients' calls could have made waits for them to narrow
/// down (calls that did not ask finish; the one that asked cannot until it is answered).
const NARROW_WAIT: Duration = Duration::from_secs(10);

/// Methods and names remembered per connector before the book starts over.
const BOOK_LIMIT: usize = 10_000;

/// What the connector has learned about a call (by method and name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Asks {
    /// Completed without asking the client anything (so far).
    Quiet,
    /// Asked the client something at least once.
    Yes,
}

struct Entry {
    caller: Caller,
    /// `"tools/call echo"`: what the call is, for the book.
    what: Option<Arc<str>>,
    /// Holds the ask slot.
    exclusive: bool,
    /// A request of the upstream was attributed to this call.
    asked: bool,
}

/// Why a server→client request has no client to go to.
pub(crate) enum Unattributed {
    /// No client call is in flight on this connection.
    Nobody,
    /// Calls of several clients are in flight; guessing could leak data.
    Several(String),
}

impl Unattributed {
    pub(crate) fn message(self) -> String {
        match self {
            Unattributed::Nobody => {
                "no client call is in flight to relay this request to".to_owned()
            }
            Unattributed::Several(m) => m,
        }
    }
}

pub(crate) struct Calls {
    connector: ConnectorId,
    /// Keyed by the call's link id (`mf-N`, unique per connection).
    map: Mutex<HashMap<u64, Entry, IdHash>>,
    /// Signalled when a call ends (the candidates for a request may have narrowed).
    ended: Notify,
    /// By method and name (`"tools/call echo"`).
    book: Mutex<HashMap<Arc<str>, Asks>>,
    slot: Mutex<Slot>,
    /// Signalled when the slot is released.
    released: Notify,
}

/// Who holds the ask slot.
#[derive(Default)]
struct Slot {
    /// The client and how many of its calls hold it.
    owner: Option<(u64, usize)>,
    /// Calls of other clients waiting for it (the owner's new calls then wait too, so that
    /// turns pass).
    waiting: usize,
}

/// A call's share of the ask slot, given back when dropped.
pub(crate) struct SlotShare {
    calls: Arc<Calls>,
}

impl Drop for SlotShare {
    fn drop(&mut self) {
        let mut slot = self.calls.slot.lock().expect("slot lock");
        if let Some((client, n)) = slot.owner {
            slot.owner = (n > 1).then_some((client, n - 1));
        }
        drop(slot);
        self.calls.released.notify_waiters();
    }
}

/// A registered call; dropping it ends the call's entry.
pub(crate) struct CallGuard {
    calls: Arc<Calls>,
    id: u64,
    _slot: Option<SlotShare>,
}

impl Calls {
    pub(crate) fn new(connector: ConnectorId) -> Arc<Self> {
        Arc::new(Self {
            connector,
            map: Mutex::new(HashMap::default()),
            ended: Notify::new(),
            book: Mutex::new(HashMap::new()),
            slot: Mutex::new(Slot::default()),
            released: Notify::new(),
        })
    }

    /// Whether a call of `what` may ask the client something: an asker, or not seen yet.
    pub(crate) fn may_ask(&self, what: &str) -> bool {
        self.book.lock().expect("book lock").get(what) != Some(&Asks::Quiet)
    }

    /// Wait for the ask slot for the caller's client (at most `wait`, or until the caller gives
    /// up): at once if its client holds it (and nobody else waits) or nobody does.
    pub(crate) async fn take_slot(
        self: &Arc<Self>,
        wait: Duration,
        caller: &Caller,
    ) -> Result<SlotShare, UpstreamError> {
        /// Counts this call among the waiting until it ends, however it ends (the caller's
        /// future may be dropped while it waits).
        struct Waiting<'a>(&'a Calls, bool);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                if self.1 {
                    self.0.slot.lock().expect("slot lock").waiting -= 1;
                    self.0.released.notify_waiters();
                }
            }
        }
        let deadline = tokio::time::Instant::now() + wait;
        let mut counted = Waiting(self, false);
        let outcome = loop {
            let released = self.released.notified();
            {
                let mut slot = self.slot.lock().expect("slot lock");
                let others_wait = slot.waiting > usize::from(counted.1);
                match slot.owner {
                    None => {
                        slot.owner = Some((caller.client, 1));
                        break Ok(());
                    }
                    Some((c, n)) if c == caller.client && !others_wait => {
                        slot.owner = Some((c, n + 1));
                        break Ok(());
                    }
                    Some((c, _)) if c != caller.client && !counted.1 => {
                        slot.waiting += 1;
                        counted.1 = true;
                    }
                    Some(_) => {}
                }
            }
            tokio::select! {
                _ = released => {}
                _ = tokio::time::sleep_until(deadline) => break Err(UpstreamError::Unavailable(format!(
                    "connector {:?} is busy with another client's call that may ask its client for input (one client at a time on a shared connection); try again, or set sessions = \"per_client\" on it",
                    self.connector.as_str()
                ))),
                _ = caller.ct.cancelled() => break Err(UpstreamError::Cancelled),
            }
        };
        drop(counted);
        outcome.map(|()| SlotShare {
            calls: self.clone(),
        })
    }

    /// Register a call before it is sent, so early messages about it find their caller.
    pub(crate) fn register(
        self: &Arc<Self>,
        id: u64,
        caller: Caller,
        what: Option<Arc<str>>,
        slot: Option<SlotShare>,
    ) -> CallGuard {
        self.map.lock().expect("calls lock").insert(
            id,
            Entry {
                caller,
                what,
                exclusive: slot.is_some(),
                asked: false,
            },
        );
        CallGuard {
            calls: self.clone(),
            id,
            _slot: slot,
        }
    }

    /// The client a server→client request belongs to: the call whose exchange it arrived on
    /// (`origin`), else by the rules in the module doc, waiting briefly when calls of several
    /// clients are candidates.
    pub(crate) async fn attribute(&self, origin: Option<u64>) -> Result<Caller, Unattributed> {
        let deadline = tokio::time::Instant::now() + NARROW_WAIT;
        loop {
            let ended = self.ended.notified();
            match self.try_attribute(origin) {
                Err(Unattributed::Several(m)) => {
                    if tokio::time::timeout_at(deadline, ended).await.is_err() {
                        tracing::warn!(connector = %self.connector, "{m}");
                        return Err(Unattributed::Several(m));
                    }
                }
                other => return other,
            }
        }
    }

    fn try_attribute(&self, origin: Option<u64>) -> Result<Caller, Unattributed> {
        let mut map = self.map.lock().expect("calls lock");
        if let Some(n) = origin
            && let Some(e) = map.get_mut(&n)
            && e.caller.downstream.is_some()
        {
            e.asked = true;
            let (what, caller) = (e.what.clone(), e.caller.clone());
            drop(map);
            self.learn(what.as_deref());
            return Ok(caller);
        }
        let mut live = map.values_mut().filter(|e| e.caller.downstream.is_some());
        let Some(first) = live.next() else {
            return Err(Unattributed::Nobody);
        };
        let client = first.caller.client;
        let mut candidates = vec![first];
        let mut several = false;
        for e in live {
            several |= e.caller.client != client;
            candidates.push(e);
        }
        // The slot holder is the one that may ask, unless quiet calls of other clients are in
        // flight too: a quiet call can ask after all, so wait for those to finish.
        if several {
            return Err(Unattributed::Several(format!(
                "manifold cannot tell which client this request is for: calls of several clients are in flight on connector {:?}; it waits for them to finish, and fails the request if they do not (set sessions = \"per_client\" on the connector to give each client its own session)",
                self.connector.as_str()
            )));
        }
        // One client: the slot holder asked if there is one, else any of its calls did.
        let chosen = match candidates.iter().position(|e| e.exclusive) {
            Some(i) => vec![i],
            None => (0..candidates.len()).collect(),
        };
        let mut learned = Vec::new();
        for &i in &chosen {
            candidates[i].asked = true;
            learned.extend(candidates[i].what.clone());
        }
        let caller = candidates[chosen[0]].caller.clone();
        drop(candidates);
        drop(map);
        for w in &learned {
            self.learn(Some(w));
        }
        Ok(caller)
    }

    /// `what` asks the client: from now on it takes the slot.
    fn learn(&self, what: Option<&str>) {
        let Some(what) = what else { return };
        let mut book = self.book.lock().expect("book lock");
        if book.get(what) != Some(&Asks::Yes) {
            if book.len() >= BOOK_LIMIT {
                book.clear();
            }
            tracing::debug!(connector = %self.connector, call = what, "learned that this call asks its client for input");
            book.insert(what.into(), Asks::Yes);
        }
    }

    /// The raw call a log message is about: one of the calls in flight when they all belong to
    /// one client (the same rule as for requests, without waiting).
    pub(crate) fn log_target(&self) -> Option<u64> {
        let map = self.map.lock().expect("calls lock");
        let mut client = None;
        let mut target = None;
        for (id, e) in map.iter().filter(|(_, e)| e.caller.downstream.is_some()) {
            match client {
                Some(c) if c != e.caller.client => return None,
                _ => client = Some(e.caller.client),
            }
            if target.is_none() {
                target = Some(*id);
            }
        }
        target
    }

    /// The connection ended: its calls have failed.
    pub(crate) fn clear(&self) {
        self.map.lock().expect("calls lock").clear();
        self.ended.notify_waiters();
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        let e = self.calls.map.lock().expect("calls lock").remove(&self.id);
        self.calls.ended.notify_waiters();
        // A call that completed without asking is quiet, unless it is known to ask.
        if let Some(Entry {
            what: Some(what),
            asked: false,
            ..
        }) = e
        {
            let mut book = self.calls.book.lock().expect("book lock");
            if !book.contains_key(&*what) && book.len() < BOOK_LIMIT {
                book.insert(what, Asks::Quiet);
            }
        }
    }
}

/// A hasher for keys that are already unique numbers (link ids): no need to hash them
/// with SipHash, whose cost showed in profiles.
#[derive(Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        // Spread the sequential ids over the table's buckets.
        self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

pub(crate) type IdHash = std::hash::BuildHasherDefault<IdHasher>;

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::{Ask, BoxFut, Downstream};

    struct Nobody;
    impl Downstream for Nobody {
        fn capabilities(&self) -> Option<rmcp::model::ClientCapabilities> {
            None
        }
        fn progress(&self, _: rmcp::model::ProgressNotificationParam) -> BoxFut<'_, ()> {
            Box::pin(async {})
        }
        #[allow(deprecated)]
        fn log(&self, _: rmcp::model::LoggingMessageNotificationParam) -> BoxFut<'_, ()> {
            Box::pin(async {})
        }
        fn ask(&self, _: Ask) -> BoxFut<'_, Result<serde_json::Value, rmcp::model::ErrorData>> {
            Box::pin(async { Ok(serde_json::Value::Null) })
        }
    }

    fn caller(client: u64) -> Caller {
        let mut c = Caller::internal(client, CancellationToken::new());
        c.downstream = Some(Arc::new(Nobody));
        c
    }

    fn what(s: &str) -> Option<Arc<str>> {
        Some(s.into())
    }

    #[tokio::test]
    async fn a_request_on_a_calls_own_exchange_is_that_calls() {
        let calls = Calls::new(ConnectorId::parse("c").unwrap());
        let _a = calls.register(1, caller(10), what("tools/call a"), None);
        let _b = calls.register(2, caller(20), what("tools/call b"), None);
        assert_eq!(calls.attribute(Some(2)).await.ok().unwrap().client, 20);
        assert!(calls.may_ask("tools/call b"), "b asked");
    }

    #[tokio::test]
    async fn one_client_with_calls_in_flight_gets_the_request() {
        let calls = Calls::new(ConnectorId::parse("c").unwrap());
        assert!(matches!(
            calls.attribute(None).await,
            Err(Unattributed::Nobody)
        ));
        let _a = calls.register(1, caller(10), what("tools/call a"), None);
        let _a2 = calls.register(2, caller(10), what("tools/call a2"), None);
        assert_eq!(calls.attribute(None).await.ok().unwrap().client, 10);
    }

    #[tokio::test(start_paused = true)]
    async fn several_clients_wait_until_one_is_left() {
        let calls = Calls::new(ConnectorId::parse("c").unwrap());
        let a = calls.register(1, caller(10), what("tools/call quiet"), None);
        let _b = calls.register(2, caller(20), what("tools/call asker"), None);
        let waiting = {
            let calls = calls.clone();
            tokio::spawn(async move { calls.attribute(None).await.ok().map(|c| c.client) })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished(), "two clients: no guess");
        drop(a);
        assert_eq!(
            waiting.await.unwrap(),
            Some(20),
            "the call still in flight asked"
        );
        assert!(
            !calls.may_ask("tools/call quiet"),
            "a finished without asking"
        );
        assert!(calls.may_ask("tools/call asker"));
    }

    #[tokio::test(start_paused = true)]
    async fn several_clients_that_stay_are_refused() {
        let calls = Calls::new(ConnectorId::parse("c").unwrap());
        let _a = calls.register(1, caller(10), what("tools/call x"), None);
        let _b = calls.register(2, caller(20), what("tools/call y"), None);
        assert!(matches!(
            calls.attribute(None).await,
            Err(Unattributed::Several(_))
        ));
    }

    #[tokio::test]
    async fn the_slot_holder_of_one_client_is_the_asker() {
        let calls = Calls::new(ConnectorId::parse("c").unwrap());
        let c = caller(10);
        let slot = calls.take_slot(Duration::from_secs(1), &c).await.unwrap();
        let _a = calls.register(1, c.clone(), what("tools/call new"), Some(slot));
        let _q = calls.register(2, c, what("tools/call other"), None);
        assert_eq!(calls.attribute(None).await.ok().unwrap().client, 10);
        assert!(calls.may_ask("tools/call new"));
        // The same client's next call shares it; another client's waits, and gives up after
        // its wait.
        let same = calls
            .take_slot(Duration::from_millis(20), &caller(10))
            .await;
        assert!(same.is_ok(), "one client's calls share the slot");
        let other = caller(20);
        assert!(
            calls
                .take_slot(Duration::from_millis(20), &other)
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn the_slot_passes_to_a_waiting_client_before_the_holders_next_call() {
        let calls = Calls::new(ConnectorId::parse("c").unwrap());
        let a = calls
            .take_slot(Duration::from_secs(1), &caller(10))
            .await
            .unwrap();
        let waiting = {
            let calls = calls.clone();
            tokio::spawn(async move {
                calls
                    .take_slot(Duration::from_secs(5), &caller(20))
                    .await
                    .is_ok()
            })
        };
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        // Client 10's next call now waits its turn too.
        assert!(
            calls
                .take_slot(Duration::from_millis(30), &caller(10))
                .await
                .is_err(),
            "the holder's new call does not jump the queue"
        );
        drop(a);
        assert!(
            waiting.await.unwrap(),
            "client 20 got it once client 10 let go"
        );
    }
}
