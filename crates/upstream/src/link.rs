//! The data path of one upstream connection (its `Link`). Requests sent here carry their params
//! and get their results as JSON text, bypassing rmcp's typed model: unknown fields survive, and
//! nothing is decoded or re-encoded that the gateway does not touch.
//!
//! Requests on the link use string ids `mf-N` (rmcp's own ids are numbers), so their answers can
//! be picked out of the connection's incoming messages before rmcp sees them. Everything else
//! on the connection (server→client requests, unrelated notifications) still flows through rmcp,
//! to the connector's `client_handler`.

mod http;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use rmcp::model::ErrorData;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};

pub(crate) use http::{HttpOut, Injecting, Negotiated, Recording, Sender};

/// What a request on the link gets back: the upstream's `result` text, or its JSON-RPC error.
pub type Reply = Result<Box<RawValue>, ErrorData>;

/// Prefix of link request ids and progress tokens.
pub(crate) const ID_PREFIX: &str = "mf-";

/// Where the messages about one request go: its progress and log messages, in order, then its
/// answer.
struct Slot {
    reply: oneshot::Sender<Reply>,
    /// Only for requests made for a client (not catalog reads).
    events: Option<mpsc::Sender<Event>>,
}

/// A message about a request that arrived before its answer.
pub enum Event {
    Progress(rmcp::model::ProgressNotificationParam),
    #[allow(deprecated)]
    Log(rmcp::model::LoggingMessageNotificationParam),
}

/// Which request (if any) a log message from the upstream is about.
pub(crate) type LogTarget = Box<dyn Fn() -> Option<u64> + Send + Sync>;

/// Messages buffered per request before further ones are dropped.
const EVENT_BUFFER: usize = 256;

pub(crate) struct Link {
    out: Out,
    pending: Mutex<HashMap<u64, Slot, crate::inflight::IdHash>>,
    next: AtomicU64,
    closed: AtomicBool,
    /// Set by the connector: attributes upstream log messages to a request.
    pub log_target: std::sync::OnceLock<LogTarget>,
    /// Server→client requests that arrived on a request's own HTTP exchange: upstream request
    /// id → link request id (taken by the client handler).
    origins: Mutex<HashMap<rmcp::model::RequestId, u64>>,
    /// The upstream speaks 2026-07-28: every request carries its own protocol `_meta` (and, over
    /// HTTP, the routing headers) and no session.
    modern: AtomicBool,
    /// The connector's secret values, scrubbed from what the upstream sends back in errors.
    pub secrets: manifold_config::Secrets,
}

/// An upstream's `input_required` result.
#[derive(serde::Deserialize)]
pub(crate) struct InputRequired {
    #[serde(rename = "inputRequests", default)]
    pub input_requests: serde_json::Map<String, serde_json::Value>,
    #[serde(rename = "requestState")]
    pub request_state: Option<String>,
}

/// `result` if it is an `input_required` result (cheap check first).
pub(crate) fn input_required(result: &RawValue) -> Option<InputRequired> {
    if !result.get().contains("input_required") {
        return None;
    }
    #[derive(serde::Deserialize)]
    struct Kind<'a> {
        #[serde(rename = "resultType", borrow)]
        result_type: Option<&'a str>,
    }
    let kind: Kind = serde_json::from_str(result.get()).ok()?;
    if kind.result_type != Some("input_required") {
        return None;
    }
    serde_json::from_str(result.get()).ok()
}

pub(crate) enum Out {
    /// Whole JSON-RPC messages for the transport's own writer (stdio stdin, HTTP+SSE POSTs).
    Lines(mpsc::Sender<Vec<u8>>),
    /// Streamable HTTP: our own POSTs in the session rmcp opened.
    Http(Box<HttpOut>),
}

#[derive(PartialEq, Eq)]
enum Taken {
    No,
    /// Progress or a log message about a request.
    Event,
    Answer,
}

/// A pending request; dropping it forgets the request.
pub(crate) struct Pending {
    pub id: u64,
    pub reply: oneshot::Receiver<Reply>,
    /// Progress and log messages about this request, in the order they arrived (before the
    /// answer: the reader handles all of them, one message at a time).
    pub events: Option<mpsc::Receiver<Event>>,
    /// The HTTP exchange that carries the request (Streamable HTTP): driven by the caller's
    /// own task rather than a spawned one, and dropped with it.
    pub io: Option<Io>,
    link: Arc<Link>,
}

pub(crate) type Io = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// Drive a request's HTTP exchange to its end; pending forever once there is none.
pub(crate) async fn drive(io: &mut Option<Io>) {
    match io.as_mut() {
        Some(f) => {
            f.await;
            *io = None;
        }
        None => std::future::pending().await,
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.link
            .pending
            .lock()
            .expect("link lock")
            .remove(&self.id);
    }
}

pub(crate) fn token(id: u64) -> String {
    format!("{ID_PREFIX}{id}")
}

/// A link request's id on the wire (`"mf-N"`), written without an intermediate string.
struct LinkId(u64);

impl serde::Serialize for LinkId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{ID_PREFIX}{}", self.0))
    }
}

impl Link {
    pub fn new(out: Out, secrets: manifold_config::Secrets) -> Arc<Self> {
        Arc::new(Self {
            out,
            pending: Mutex::new(HashMap::default()),
            next: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            log_target: std::sync::OnceLock::new(),
            origins: Mutex::new(HashMap::new()),
            modern: AtomicBool::new(false),
            secrets,
        })
    }

    pub fn is_modern(&self) -> bool {
        self.modern.load(Ordering::Acquire)
    }

    pub fn set_modern(&self, modern: bool) {
        self.modern.store(modern, Ordering::Release);
    }

    /// Whether every server→client request about a request arrives on that request's own
    /// exchange, so attribution needs no guessing: Streamable HTTP. (A modern upstream asks in
    /// its results instead, which is exact on any transport.)
    pub fn exact_attribution(&self) -> bool {
        matches!(self.out, Out::Http(_)) || self.is_modern()
    }

    /// Add the per-request protocol `_meta` a 2026-07-28 upstream needs (nothing for legacy):
    /// the client's capabilities when known, else everything the gateway can relay.
    pub fn modern_meta(
        &self,
        meta: &mut serde_json::Map<String, serde_json::Value>,
        caps: Option<&rmcp::model::ClientCapabilities>,
    ) {
        if !self.modern.load(Ordering::Acquire) {
            return;
        }
        meta.insert(
            "io.modelcontextprotocol/protocolVersion".into(),
            "2026-07-28".into(),
        );
        let caps = match caps {
            Some(c) => serde_json::to_value(c).unwrap_or_default(),
            None => {
                serde_json::json!({ "roots": {}, "sampling": {}, "elicitation": { "form": {}, "url": {} } })
            }
        };
        meta.insert("io.modelcontextprotocol/clientCapabilities".into(), caps);
        meta.insert(
            "io.modelcontextprotocol/clientInfo".into(),
            serde_json::json!({ "name": "manifold", "version": env!("CARGO_PKG_VERSION") }),
        );
    }

    /// The id the next request will get (so its progress token can be put in its params).
    pub fn next_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Send `method` with `params` under `id`, collecting the messages about it if `events`;
    /// `name` is the request's `Mcp-Name` (its tool or prompt name, or resource URI), for a
    /// 2026-07-28 upstream over HTTP. `None` if the connection is closed.
    pub fn send<P: serde::Serialize + ?Sized>(
        self: &Arc<Self>,
        id: u64,
        method: &str,
        params: &P,
        name: Option<&str>,
        events: bool,
        headers: Vec<(String, String)>,
    ) -> Option<Pending> {
        if self.closed.load(Ordering::Acquire) {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        let (ptx, prx) = if events {
            let (a, b) = mpsc::channel(EVENT_BUFFER);
            (Some(a), Some(b))
        } else {
            (None, None)
        };
        self.pending.lock().expect("link lock").insert(
            id,
            Slot {
                reply: tx,
                events: ptx,
            },
        );
        let mut pending = Pending {
            id,
            reply: rx,
            events: prx,
            io: None,
            link: self.clone(),
        };
        #[derive(serde::Serialize)]
        struct Req<'a, P: ?Sized> {
            jsonrpc: &'static str,
            id: LinkId,
            method: &'a str,
            params: &'a P,
        }
        let body = serde_json::to_vec(&Req {
            jsonrpc: "2.0",
            id: LinkId(id),
            method,
            params,
        })
        .expect("a request serialises");
        let name = if self.is_modern() { name } else { None };
        pending.io = self
            .write(body, Some(id), Some((method, name)), headers)
            .ok()?;
        Some(pending)
    }

    /// Tell the upstream that request `id` is cancelled.
    pub fn cancel(self: &Arc<Self>, id: u64, reason: &str) {
        let body = serde_json::to_vec(&serde_json::json!({
            "jsonrpc": "2.0",
            "method": "notifications/cancelled",
            "params": { "requestId": token(id), "reason": reason },
        }))
        .expect("a notification serialises");
        if let Ok(Some(io)) = self.write(body, None, None, Vec::new()) {
            tokio::spawn(io);
        }
    }

    /// Hand `body` to the transport. Over Streamable HTTP the exchange is returned, for the
    /// caller to drive.
    fn write(
        self: &Arc<Self>,
        body: Vec<u8>,
        id: Option<u64>,
        route: Option<(&str, Option<&str>)>,
        extra: Vec<(String, String)>,
    ) -> Result<Option<Io>, ()> {
        match &self.out {
            Out::Lines(tx) => tx.try_send(body).map(|_| None).map_err(|_| ()),
            Out::Http(h) => Ok(Some(h.exchange(self, body, id, route, extra))),
        }
    }

    /// An exchange that ended without the answer fails its request now rather than at the
    /// deadline.
    fn unanswered(&self, id: Option<u64>, outcome: Result<(), String>) {
        let slot = id.and_then(|id| self.pending.lock().expect("link lock").remove(&id));
        if let Some(slot) = slot {
            let why = match outcome {
                Err(e) => self.secrets.scrub(&e).into_owned(),
                Ok(()) => "the upstream ended the exchange without answering".into(),
            };
            tracing::debug!(error = %why, "upstream POST failed");
            let _ = slot.reply.send(Err(ErrorData::internal_error(why, None)));
        }
    }

    /// If `text` is the answer to a request on the link or a message about one, deliver it and
    /// return true.
    pub fn intercept(&self, text: &str) -> bool {
        self.take(text) != Taken::No
    }

    /// What `text` was for the link.
    fn take(&self, text: &str) -> Taken {
        // Only answers and progress of link requests (ids and tokens `mf-N`) and log messages
        // are candidates; everything else is left to rmcp without parsing.
        if !text.contains("\"mf-") && !text.contains("notifications/message") {
            return Taken::No;
        }
        #[derive(serde::Deserialize)]
        struct Message<'a> {
            #[serde(borrow)]
            id: Option<&'a RawValue>,
            #[serde(borrow)]
            method: Option<&'a RawValue>,
            #[serde(borrow)]
            result: Option<&'a RawValue>,
            error: Option<ErrorData>,
        }
        let Ok(r) = serde_json::from_str::<Message>(text) else {
            return Taken::No;
        };
        if let Some(m) = r.method {
            let taken = match m.get() {
                "\"notifications/progress\"" => self.progress(text),
                "\"notifications/message\"" => self.log(text),
                _ => false,
            };
            return if taken { Taken::Event } else { Taken::No };
        }
        let Some(n) =
            r.id.map(RawValue::get)
                .and_then(|s| s.strip_prefix('"'))
                .and_then(|s| s.strip_suffix('"'))
                .and_then(|s| s.strip_prefix(ID_PREFIX))
                .and_then(|s| s.parse::<u64>().ok())
        else {
            return Taken::No;
        };
        let reply = match (r.result, r.error) {
            (_, Some(e)) => Err(e),
            (Some(v), None) => Ok(v.to_owned()),
            (None, None) => Err(ErrorData::internal_error(
                "the upstream answered with neither result nor error",
                None,
            )),
        };
        if let Some(slot) = self.pending.lock().expect("link lock").remove(&n) {
            let _ = slot.reply.send(reply);
        }
        Taken::Answer
    }

    /// Progress for a link request goes to that request, in order with its answer.
    fn progress(&self, text: &str) -> bool {
        #[derive(serde::Deserialize)]
        struct Note {
            params: rmcp::model::ProgressNotificationParam,
        }
        let Ok(note) = serde_json::from_str::<Note>(text) else {
            return false;
        };
        let rmcp::model::NumberOrString::String(t) = &note.params.progress_token.0 else {
            return false;
        };
        let Some(n) = t
            .strip_prefix(ID_PREFIX)
            .and_then(|s| s.parse::<u64>().ok())
        else {
            return false;
        };
        self.event(n, Event::Progress(note.params));
        // Progress of a link request never goes to rmcp, even after the request ended.
        true
    }

    /// A log message about a link request (as its connector attributes it) goes with it, in
    /// order; others go to rmcp, which fans them out.
    #[allow(deprecated)]
    fn log(&self, text: &str) -> bool {
        #[derive(serde::Deserialize)]
        struct Note {
            params: rmcp::model::LoggingMessageNotificationParam,
        }
        let Some(n) = self.log_target.get().and_then(|f| f()) else {
            return false;
        };
        if !self.pending.lock().expect("link lock").contains_key(&n) {
            return false;
        }
        let Ok(note) = serde_json::from_str::<Note>(text) else {
            return false;
        };
        self.event(n, Event::Log(note.params));
        true
    }

    fn event(&self, n: u64, e: Event) {
        if let Some(slot) = self.pending.lock().expect("link lock").get(&n)
            && let Some(tx) = &slot.events
            && tx.try_send(e).is_err()
        {
            tracing::debug!(request = n, "dropped a message about a call (buffer full)");
        }
    }

    /// Note that a server→client request arrived on request `n`'s own exchange.
    fn note_origin(&self, request: rmcp::model::RequestId, n: u64) {
        self.origins
            .lock()
            .expect("origins lock")
            .insert(request, n);
    }

    /// The link request a server→client request arrived with, if it came on one's exchange.
    pub fn origin(&self, id: &rmcp::model::RequestId) -> Option<u64> {
        self.origins.lock().expect("origins lock").remove(id)
    }

    /// The connection is gone: every pending request fails now, later ones at once.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.pending.lock().expect("link lock").clear();
    }
}

pub(crate) fn preview(s: &str) -> String {
    let mut p: String = s.chars().take(200).collect();
    if p.len() < s.len() {
        p.push('…');
    }
    p
}

/// One request outside any client call (catalog reads), with a deadline.
pub(crate) async fn request(
    link: &Arc<Link>,
    method: &str,
    params: &RawValue,
    timeout: std::time::Duration,
) -> Result<Box<RawValue>, String> {
    let id = link.next_id();
    let mut pending = link
        .send(id, method, params, None, false, Vec::new())
        .ok_or_else(|| "the connection is closed".to_owned())?;
    let reply = async {
        loop {
            tokio::select! {
                biased;
                r = &mut pending.reply => break r,
                _ = drive(&mut pending.io) => {}
            }
        }
    };
    match tokio::time::timeout(timeout, reply).await {
        Ok(Ok(Ok(v))) => Ok(v),
        Ok(Ok(Err(e))) => Err(format!("{method} failed: {}", e.message)),
        Ok(Err(_)) => Err(format!("the connection closed during {method}")),
        Err(_) => {
            link.cancel(id, "timed out");
            Err(format!("{method} timed out after {timeout:?}"))
        }
    }
}

/// Every page of a list method (`tools/list`, `prompts/list`, …): each item both typed (for
/// the catalog's logic) and as sent. Items that do not decode are skipped with a warning.
pub(crate) async fn list_all<T: serde::de::DeserializeOwned>(
    link: &Arc<Link>,
    method: &str,
    key: &str,
    timeout: std::time::Duration,
) -> Result<(Vec<T>, Vec<Arc<serde_json::Map<String, serde_json::Value>>>), String> {
    type Item = serde_json::Map<String, serde_json::Value>;
    let mut typed = Vec::new();
    let mut json = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10_000 {
        let mut params = serde_json::Map::new();
        if let Some(c) = &cursor {
            params.insert("cursor".into(), c.clone().into());
        }
        let mut meta = serde_json::Map::new();
        link.modern_meta(&mut meta, None);
        if !meta.is_empty() {
            params.insert("_meta".into(), meta.into());
        }
        let params = serde_json::value::to_raw_value(&params).expect("params serialise");
        let result = request(link, method, &params, timeout).await?;
        let mut page: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(result.get())
                .map_err(|e| format!("{method} answered with an invalid page: {e}"))?;
        let items: Vec<Item> = match page.remove(key) {
            Some(v) => serde_json::from_value(v)
                .map_err(|e| format!("{method} answered with an invalid {key:?} list: {e}"))?,
            None => return Err(format!("{method} answered without {key:?}")),
        };
        for item in items {
            match serde_json::from_value::<T>(serde_json::Value::Object(item.clone())) {
                Ok(t) => {
                    typed.push(t);
                    json.push(Arc::new(item));
                }
                Err(e) => tracing::warn!(
                    method,
                    item = %preview(&serde_json::Value::Object(item).to_string()),
                    error = %e,
                    "skipped an invalid list item"
                ),
            }
        }
        match page.get("nextCursor").and_then(|c| c.as_str()) {
            Some(c) if !c.is_empty() && cursor.as_deref() != Some(c) => cursor = Some(c.to_owned()),
            _ => return Ok((typed, json)),
        }
    }
    Err(format!("{method} returned more than 10000 pages"))
}
