//! MRTR bridging (SEP-2322) for modern (2026-07-28) clients of legacy upstreams.
//!
//! A legacy upstream asks for sampling, elicitation or roots *during* a call, on its own
//! connection. A modern client has no connection to receive such a request on: it expects an
//! `input_required` result and retries the call with `inputResponses`. The bridge runs the
//! upstream call in a task of its own; when the upstream asks, the call is *parked* (kept
//! waiting upstream) and the client gets `input_required` with a sealed `requestState` naming the
//! parked call. The retry opens the state, hands the client's answers to the waiting upstream
//! requests and resumes the same call, until it produces its result.
//!
//! `requestState` is sealed with HMAC-SHA256 (rmcp's `RequestStateCodec`, a per-process random
//! key), bound to the principal, the virtual server and the request, and expires; a parked call can be resumed once
//! (the state of each round names a fresh round), so a replayed, forged, altered or expired
//! state is refused. The retry must repeat the original request (same tool and arguments).

#![allow(deprecated)] // sampling and roots are legacy-era requests we bridge

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use manifold_router::RouteError;
use manifold_upstream::{Ask, AskKind, BoxFut, Downstream};
use rmcp::model::{
    ClientCapabilities, ErrorData, InputRequests, InputRequiredResult, LoggingLevel,
    LoggingMessageNotificationParam, ProgressNotificationParam, RequestStateCodec, ResultType,
    SealOptions,
};
use serde_json::{Value, value::RawValue};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::{jsonrpc, session::severity, stream::Outbox};

/// At most this many calls wait parked at once; beyond it a call that needs input fails (its
/// upstream call is cancelled) rather than letting clients pile up waiting upstream calls.
const MAX_PARKED: usize = 10_000;

/// After the first input request of a round, how long to wait for more before answering.
const GATHER: Duration = Duration::from_millis(20);

pub(crate) type Outcome = Result<Box<RawValue>, RouteError>;

/// One round's end: the call's result, input the client must give, or a capability the client
/// lacks (the call is abandoned).
pub(crate) enum Round {
    Done(Outcome),
    Input(InputRequiredResult),
    Missing(ClientCapabilities),
}

enum Event {
    Input {
        /// The modern upstream's own key for it, when it has one.
        key: Option<String>,
        request: Value,
        answer: oneshot::Sender<Result<Value, ErrorData>>,
    },
    Missing(ClientCapabilities),
}

/// The request a round answers (each retry is a new one): where its progress and log
/// messages go.
pub(crate) struct Requester {
    pub outbox: Outbox,
    pub progress_token: Option<rmcp::model::ProgressToken>,
    /// The request's own log level (none: it wants no log messages).
    pub log_level: Option<LoggingLevel>,
}

/// A new bridged call: what it is (`binding`), the client's capabilities, its own client key,
/// the request that started it, its cancellation and how long it may wait parked.
pub(crate) struct Call {
    pub binding: Box<Binding>,
    pub caps: ClientCapabilities,
    pub client_key: u64,
    pub requester: Requester,
    pub ct: CancellationToken,
    pub ttl: Duration,
    pub meta: Option<serde_json::Map<String, Value>>,
}

/// A call in progress between rounds.
struct Run {
    /// The current round's request (replaced on each resumption).
    client: Arc<Mutex<Option<Requester>>>,
    events: mpsc::Receiver<Event>,
    done: oneshot::Receiver<Outcome>,
    /// Answers the upstream still waits for, by input key.
    waiting: HashMap<String, oneshot::Sender<Result<Value, ErrorData>>>,
    /// Cancels the upstream call when the run is dropped (expired, abandoned).
    _cancel: DropGuard,
    /// How long it waits parked for the client's retry (`gateway.input_wait`).
    ttl: Duration,
}

struct Parked {
    /// What the retry must repeat: virtual server, method, and the request's identity.
    binding: String,
    run: Run,
    expires: Instant,
}

pub(crate) struct Bridge {
    codec: RequestStateCodec,
    next: AtomicU64,
    parked: Mutex<HashMap<u64, Parked>>,
    /// The confirmation states already answered (each confirms one call), until they expire.
    answered: Mutex<HashMap<u64, Instant>>,
}

/// The payload of a confirmation state begins with this (a parked call's is 8 bytes).
const CONFIRMATION: &[u8] = b"confirm:";

/// What a retry's `requestState` is, as far as a confirmation is concerned.
pub(crate) enum StateOf {
    /// The gateway's own confirmation round for this very request, not answered before.
    Confirmation,
    /// A state this request cannot use any more: expired, or a confirmation already answered.
    Spent,
    /// Anything else (a parked call's state, or a bad one: `resume` says what is wrong).
    Other,
}

impl Default for Bridge {
    fn default() -> Self {
        let key: [u8; 32] = rand::random();
        Self {
            codec: RequestStateCodec::try_new(key.to_vec()).expect("a 32-byte key"),
            next: AtomicU64::new(1),
            parked: Mutex::new(HashMap::new()),
            answered: Mutex::new(HashMap::new()),
        }
    }
}

/// What identifies a request across rounds: who sends it (the principal), the virtual server,
/// the method and what the request is about (tool or prompt name and arguments, or resource
/// URI). Other params (the MRTR fields, `_meta`, anything unrecognised) may differ between
/// rounds. Kept as its parts until a round needs it written out ([`Binding::key`]): most calls
/// never ask anything.
pub(crate) struct Binding {
    caller: String,
    server: String,
    method: &'static str,
    about: serde_json::Map<String, Value>,
}

impl Binding {
    pub(crate) fn boxed(
        caller: String,
        server: &str,
        method: &'static str,
        params: &serde_json::Map<String, Value>,
    ) -> Box<Self> {
        let about = ["name", "arguments", "uri"]
            .iter()
            .filter_map(|k| params.get(*k).map(|v| ((*k).to_owned(), v.clone())))
            .collect();
        Box::new(Binding {
            caller,
            server: server.to_owned(),
            method,
            about,
        })
    }

    /// The binding as text, bound into a round's `requestState`. Canonical (keys sorted at
    /// every depth): a retry that sends the same arguments in another order is the same
    /// request (serde_json's maps keep insertion order in this build).
    pub(crate) fn key(&self) -> String {
        let about = manifold_router::review::canonical_object(&self.about);
        format!("{}\n{}\n{}\n{about}", self.caller, self.server, self.method)
    }
}

impl Bridge {
    /// Start `body` (the upstream call, given its `Caller`) as `call`; returns its first round.
    pub(crate) async fn start(
        &self,
        call: Call,
        body: impl FnOnce(manifold_upstream::Caller) -> BoxFut<'static, Outcome>,
    ) -> Round {
        let Call {
            binding,
            caps,
            client_key,
            requester,
            ct,
            ttl,
            meta,
        } = call;
        let (tx, events) = mpsc::channel(16);
        // With a token, the upstream is asked for progress; each round's own token is used
        // when relaying it (see `Asker::progress`).
        let progress_token = requester.progress_token.clone();
        let log_level = requester.log_level;
        let current = Arc::new(Mutex::new(Some(requester)));
        let caller = manifold_upstream::Caller {
            client: client_key,
            meta,
            downstream: Some(Arc::new(Asker {
                tx,
                caps,
                client: current.clone(),
            })),
            progress_token,
            ct: ct.clone(),
            log_level,
        };
        // Polled right here until it either ends (most calls never ask anything) or asks:
        // only then does it move to a task of its own, to wait parked between rounds.
        let mut fut = body(caller);
        let mut events = events;
        let first = tokio::select! {
            biased;
            e = events.recv() => e,
            r = &mut fut => {
                // A call refused for a capability the client lacks says so before it ends.
                if let Ok(Event::Missing(caps)) = events.try_recv() {
                    return Round::Missing(caps);
                }
                return Round::Done(r);
            }
        };
        let (done_tx, done) = oneshot::channel();
        tokio::spawn(async move {
            let _ = done_tx.send(fut.await);
        });
        let run = Run {
            client: current,
            events,
            done,
            waiting: HashMap::new(),
            _cancel: ct.drop_guard(),
            ttl,
        };
        self.round_from(binding.key(), run, first).await
    }

    /// The `requestState` of a round that asks the member to confirm the request `binding`
    /// names; it expires after `ttl` and confirms one call.
    pub(crate) fn confirmation_state(&self, binding: &str, ttl: Duration) -> String {
        let mut payload = CONFIRMATION.to_vec();
        payload.extend_from_slice(&rand::random::<u64>().to_be_bytes());
        self.codec.seal_with(
            &payload,
            &SealOptions::new()
                .associated_data(binding.as_bytes())
                .ttl(ttl),
        )
    }

    /// Open `state` as a confirmation of the request `binding` names; a confirmation is
    /// spent by being opened.
    pub(crate) fn open_confirmation(&self, binding: &str, state: &str, ttl: Duration) -> StateOf {
        let payload = match self.codec.open_with(state, binding.as_bytes()) {
            Ok(p) => p,
            Err(rmcp::model::RequestStateError::Expired) => return StateOf::Spent,
            Err(_) => return StateOf::Other,
        };
        let Some(nonce) = payload
            .strip_prefix(CONFIRMATION)
            .and_then(|n| <[u8; 8]>::try_from(n).ok())
            .map(u64::from_be_bytes)
        else {
            return StateOf::Other;
        };
        let mut answered = self.answered.lock().expect("answered lock");
        let now = Instant::now();
        answered.retain(|_, expires| *expires > now);
        if answered.len() >= MAX_PARKED || answered.contains_key(&nonce) {
            return StateOf::Spent;
        }
        answered.insert(nonce, now + ttl);
        StateOf::Confirmation
    }

    /// Resume the call `state` names with the client's `responses`.
    pub(crate) async fn resume(
        &self,
        binding: String,
        state: &str,
        responses: Option<&serde_json::Map<String, Value>>,
        requester: Requester,
    ) -> Result<Round, ErrorData> {
        let refuse = |why: &str| {
            ErrorData::invalid_params(
                format!("invalid requestState: {why}; call again without it to start over"),
                None,
            )
        };
        let opened = self
            .codec
            .open_with(state, binding.as_bytes())
            .map_err(|e| refuse(&e.to_string()))?;
        let id = <[u8; 8]>::try_from(opened.as_slice())
            .map(u64::from_be_bytes)
            .map_err(|_| refuse("unexpected payload"))?;
        let parked = {
            let mut map = self.parked.lock().expect("parked lock");
            sweep(&mut map);
            map.remove(&id)
        };
        let Some(mut parked) = parked else {
            return Err(refuse("it was already used or has expired"));
        };
        if parked.binding != binding {
            return Err(refuse("it belongs to a different request"));
        }
        *parked.run.client.lock().expect("client lock") = Some(requester);
        for (key, tx) in parked.run.waiting.drain() {
            let answer = match responses.and_then(|r| r.get(&key)) {
                Some(v) => Ok(v.clone()),
                None => Err(ErrorData::invalid_request(
                    format!("the client gave no answer for input {key:?}"),
                    None,
                )),
            };
            let _ = tx.send(answer);
        }
        Ok(self.round(binding, parked.run).await)
    }

    /// Wait for the call's result or its next input requests.
    async fn round(&self, binding: String, mut run: Run) -> Round {
        let first = tokio::select! {
            biased;
            e = run.events.recv() => e,
            r = &mut run.done => return Round::Done(r.unwrap_or_else(|_| Err(RouteError::Gateway(
                "the call ended without a result".into(),
            )))),
        };
        self.round_from(binding, run, first).await
    }

    /// A round whose first event (`first`) has arrived: gather the rest of its input requests.
    async fn round_from(&self, binding: String, mut run: Run, first: Option<Event>) -> Round {
        let mut requests = InputRequests::new();
        let mut next = first;
        loop {
            match next {
                Some(Event::Missing(caps)) => return Round::Missing(caps),
                Some(Event::Input {
                    key,
                    request,
                    answer,
                }) => {
                    let key = key
                        .filter(|k| !requests.contains_key(k))
                        .unwrap_or_else(|| format!("r{}", requests.len() + 1));
                    match serde_json::from_value(request) {
                        Ok(r) => {
                            requests.insert(key.clone(), r);
                            run.waiting.insert(key, answer);
                        }
                        Err(e) => {
                            let _ = answer.send(Err(ErrorData::internal_error(
                                format!("manifold cannot bridge this request: {e}"),
                                None,
                            )));
                        }
                    }
                }
                None => break,
            }
            // Several requests of one round arrive together; gather them briefly.
            next = match tokio::time::timeout(GATHER, run.events.recv()).await {
                Ok(e) => e,
                Err(_) => break,
            };
        }
        if requests.is_empty() {
            return Round::Done(
                (&mut run.done)
                    .await
                    .unwrap_or_else(|_| Err(RouteError::Gateway("the call ended".into()))),
            );
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let state = self.codec.seal_with(
            &id.to_be_bytes(),
            &SealOptions::new()
                .associated_data(binding.as_bytes())
                .ttl(run.ttl),
        );
        // Until the retry, progress has no request to go to.
        *run.client.lock().expect("client lock") = None;
        {
            let mut map = self.parked.lock().expect("parked lock");
            sweep(&mut map);
            if map.len() >= MAX_PARKED {
                drop(map);
                tracing::warn!(
                    limit = MAX_PARKED,
                    "too many calls waiting for client input"
                );
                return Round::Done(Err(RouteError::Gateway(format!(
                    "the gateway already has {MAX_PARKED} calls waiting for client input; try again later"
                ))));
            }
            map.insert(
                id,
                Parked {
                    binding,
                    expires: Instant::now() + run.ttl,
                    run,
                },
            );
        }
        let mut r = InputRequiredResult::from_request_state(state);
        r.result_type = ResultType::INPUT_REQUIRED;
        r.input_requests = Some(requests);
        Round::Input(r)
    }
}

/// Drop expired parked calls (their upstream calls are cancelled).
fn sweep(map: &mut HashMap<u64, Parked>) {
    let now = Instant::now();
    map.retain(|_, p| p.expires > now);
}

/// The client side of a bridged call: requests become input requests of the next round.
struct Asker {
    tx: mpsc::Sender<Event>,
    caps: ClientCapabilities,
    client: Arc<Mutex<Option<Requester>>>,
}

impl Asker {
    async fn ask(&self, ask: Ask) -> Result<Value, ErrorData> {
        let method = ask.kind.method();
        if !ask.kind.declared_by(&self.caps) {
            // A client without roots has none (as for legacy clients); nothing to ask.
            if ask.kind == AskKind::Roots {
                return Ok(serde_json::json!({ "roots": [] }));
            }
            let _ = self.tx.send(Event::Missing(ask.kind.capability())).await;
            return Err(ErrorData::invalid_request(
                format!("the client did not declare the capability {method} needs"),
                None,
            ));
        }
        let (answer, rx) = oneshot::channel();
        let request = serde_json::json!({ "method": method, "params": ask.params });
        self.tx
            .send(Event::Input {
                key: ask.key,
                request,
                answer,
            })
            .await
            .map_err(|_| ErrorData::internal_error("the client's call has ended", None))?;
        rx.await
            .map_err(|_| ErrorData::internal_error("the client did not come back", None))?
    }

    /// The current round's response stream, if it wants this message.
    fn outbox(
        &self,
        log: Option<LoggingLevel>,
    ) -> Option<(Outbox, Option<rmcp::model::ProgressToken>)> {
        let client = self.client.lock().expect("client lock");
        let c = client.as_ref()?;
        if let Some(level) = log
            && c.log_level
                .is_none_or(|min| severity(level) < severity(min))
        {
            return None;
        }
        Some((c.outbox.clone(), c.progress_token.clone()))
    }
}

impl Downstream for Asker {
    fn capabilities(&self) -> Option<ClientCapabilities> {
        // Checked per request in `ask`, where a missing one also ends the client's call.
        None
    }

    fn declared(&self) -> Option<ClientCapabilities> {
        Some(self.caps.clone())
    }

    fn progress(&self, mut p: ProgressNotificationParam) -> BoxFut<'_, ()> {
        let target = self.outbox(None).and_then(|(o, token)| Some((o, token?)));
        Box::pin(async move {
            if let Some((outbox, token)) = target {
                p.progress_token = token;
                let _ = outbox
                    .send(jsonrpc::notification("notifications/progress", p))
                    .await;
            }
        })
    }

    fn log(&self, p: LoggingMessageNotificationParam) -> BoxFut<'_, ()> {
        // Logs between rounds have no request to go to.
        let target = self.outbox(Some(p.level));
        Box::pin(async move {
            if let Some((outbox, _)) = target {
                let _ = outbox
                    .send(jsonrpc::notification("notifications/message", p))
                    .await;
            }
        })
    }

    fn ask(&self, ask: Ask) -> BoxFut<'_, Result<Value, ErrorData>> {
        Box::pin(Asker::ask(self, ask))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use manifold_upstream::{Ask, AskKind, Caller};
    use serde_json::json;
    use tokio_util::sync::CancellationToken;

    use super::*;

    fn binding(
        caller: &str,
        server: &str,
        method: &'static str,
        params: &serde_json::Map<String, Value>,
    ) -> Box<Binding> {
        Binding::boxed(caller.to_owned(), server, method, params)
    }

    fn requester() -> Requester {
        let (outbox, _) = mpsc::channel(8);
        Requester {
            outbox,
            progress_token: None,
            log_level: None,
        }
    }

    fn call(caps: serde_json::Value, ttl: Duration) -> Call {
        Call {
            binding: binding(
                "alice",
                "main",
                "tools/call",
                &json!({"name": "t", "arguments": {"a": 1}})
                    .as_object()
                    .unwrap()
                    .clone(),
            ),
            caps: serde_json::from_value(caps).unwrap(),
            client_key: 1,
            requester: requester(),
            ct: CancellationToken::new(),
            ttl,
            meta: None,
        }
    }

    /// An upstream call that asks its client once (under `key`) and answers with the answer.
    fn asking(key: Option<&'static str>) -> impl FnOnce(Caller) -> BoxFut<'static, Outcome> {
        move |caller: Caller| {
            Box::pin(async move {
                let client = caller.downstream.expect("a bridged call has a client");
                let answer = client
                    .ask(Ask {
                        kind: AskKind::Elicitation,
                        params: json!({"message": "who?", "requestedSchema": {"type": "object", "properties": {}}}),
                        key: key.map(str::to_owned),
                    })
                    .await
                    .map_err(|e| RouteError::Gateway(e.message.to_string()))?;
                Ok(
                    serde_json::value::to_raw_value(&json!({"content": [], "answer": answer}))
                        .unwrap(),
                )
            })
        }
    }

    fn state_of(r: &Round) -> (String, Vec<String>) {
        let Round::Input(i) = r else {
            panic!("not an input round")
        };
        let keys = i.input_requests.as_ref().unwrap().keys().cloned().collect();
        (i.request_state.clone().unwrap(), keys)
    }

    #[tokio::test]
    async fn a_question_becomes_a_round_and_the_retry_resumes_the_call_once() {
        let bridge = Bridge::default();
        let c = call(json!({"elicitation": {}}), Duration::from_secs(60));
        let b = c.binding.key();
        let first = bridge.start(c, asking(None)).await;
        let (state, keys) = state_of(&first);
        assert_eq!(
            keys,
            ["r1"],
            "a legacy upstream's question gets the gateway's key"
        );
        let answers = json!({"r1": {"action": "accept", "content": {"name": "Ada"}}});
        let done = bridge
            .resume(b.clone(), &state, answers.as_object(), requester())
            .await
            .unwrap();
        let Round::Done(Ok(raw)) = done else {
            panic!("the call completes")
        };
        assert!(raw.get().contains("Ada"), "{}", raw.get());
        let again = bridge
            .resume(b, &state, answers.as_object(), requester())
            .await;
        let e = again.err().expect("a state is single-use");
        assert!(e.message.contains("already used"), "{}", e.message);
    }

    #[tokio::test]
    async fn tampered_foreign_and_expired_states_are_refused() {
        let bridge = Bridge::default();
        let c = call(json!({"elicitation": {}}), Duration::from_millis(100));
        let b = c.binding.key();
        let (state, _) = state_of(&bridge.start(c, asking(None)).await);
        let mut tampered = state.clone().into_bytes();
        let i = tampered.len() - 3;
        tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert!(
            bridge
                .resume(b.clone(), &tampered, None, requester())
                .await
                .is_err()
        );
        let other = binding(
            "bob",
            "main",
            "tools/call",
            &json!({"name": "t", "arguments": {"a": 1}})
                .as_object()
                .unwrap()
                .clone(),
        );
        let e = bridge
            .resume(other.key(), &state, None, requester())
            .await
            .err()
            .unwrap();
        assert!(
            e.message.contains("invalid requestState"),
            "another principal's: {}",
            e.message
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let e = bridge
            .resume(b, &state, None, requester())
            .await
            .err()
            .unwrap();
        assert!(
            e.message.contains("invalid requestState"),
            "expired: {}",
            e.message
        );
    }

    #[tokio::test]
    async fn an_upstreams_own_key_is_kept_and_a_missing_capability_ends_the_call() {
        let bridge = Bridge::default();
        let (_, keys) = state_of(
            &bridge
                .start(
                    call(json!({"elicitation": {}}), Duration::from_secs(60)),
                    asking(Some("user_name")),
                )
                .await,
        );
        assert_eq!(keys, ["user_name"]);
        let r = bridge
            .start(call(json!({}), Duration::from_secs(60)), asking(None))
            .await;
        let Round::Missing(caps) = r else {
            panic!("the client lacks elicitation")
        };
        assert!(caps.elicitation.is_some());
    }

    #[tokio::test]
    async fn a_call_that_asks_nothing_is_done_in_its_first_round() {
        let bridge = Bridge::default();
        let r = bridge
            .start(call(json!({}), Duration::from_secs(60)), |_c| {
                Box::pin(async {
                    Ok(serde_json::value::to_raw_value(&json!({"content": []})).unwrap())
                })
            })
            .await;
        assert!(matches!(r, Round::Done(Ok(_))));
    }

    #[test]
    fn a_binding_does_not_depend_on_the_order_of_the_arguments() {
        let a: serde_json::Map<String, Value> =
            serde_json::from_str(r#"{"name": "t", "arguments": {"a": 1, "b": {"y": 2, "x": 3}}}"#)
                .unwrap();
        let b: serde_json::Map<String, Value> =
            serde_json::from_str(r#"{"arguments": {"b": {"x": 3, "y": 2}, "a": 1}, "name": "t"}"#)
                .unwrap();
        assert_eq!(
            binding("u", "main", "tools/call", &a).key(),
            binding("u", "main", "tools/call", &b).key()
        );
        let c: serde_json::Map<String, Value> =
            serde_json::from_str(r#"{"name": "t", "arguments": {"a": 2, "b": {"x": 3, "y": 2}}}"#)
                .unwrap();
        assert_ne!(
            binding("u", "main", "tools/call", &a).key(),
            binding("u", "main", "tools/call", &c).key()
        );
    }

    #[tokio::test]
    async fn a_confirmation_state_confirms_one_call_of_its_own_request_until_it_expires() {
        let bridge = Bridge::default();
        let ttl = Duration::from_millis(200);
        let mine = "alice\nmain\ntools/call\n{}";
        let name = |s: StateOf| match s {
            StateOf::Confirmation => "confirmation",
            StateOf::Spent => "spent",
            StateOf::Other => "other",
        };
        let open = |binding: &str, state: &str| name(bridge.open_confirmation(binding, state, ttl));
        let state = bridge.confirmation_state(mine, ttl);
        assert_eq!(
            open("bob\nmain\ntools/call\n{}", &state),
            "other",
            "another request's"
        );
        assert_eq!(open(mine, &state), "confirmation");
        assert_eq!(open(mine, &state), "spent", "used once only");
        let late = bridge.confirmation_state(mine, ttl);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(open(mine, &late), "spent", "expired");
        assert_eq!(open(mine, "garbage"), "other");
    }
}
