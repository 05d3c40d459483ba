//! The gateway's own data path for legacy-era sessions: the merged lists are answered from the
//! catalog's serialised items, and `tools/call`, `prompts/get`, `resources/read` and
//! `completion/complete` are parsed once into an envelope, forwarded as JSON text, and answered
//! with the upstream's result as it came (unknown fields included), changed only where names
//! and URIs are exposed differently. For stateless 2026-07-28 requests it answers the lists
//! (with their caching hints) and plain `tools/call`, `prompts/get` and `resources/read` the
//! same way. Everything else
//! (initialize, ping, subscriptions, `logging/setLevel`, GET streams, DELETE, requests with an
//! `Origin`, anything it does not fully check) goes to rmcp's service.
//!
//! A call is answered with a plain JSON body unless something about it must reach the client
//! first (progress, a log message, a sampling, elicitation or roots request): then the answer
//! becomes an event stream carrying those messages and, last, the result. The client's answers
//! to relayed requests (ids `mf-s-N`) and its `notifications/cancelled` for a call here are
//! taken here too.

#![allow(deprecated)] // sampling, roots and logging are legacy-era features we relay

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use axum::{
    body::{Body, Bytes},
    extract::Request,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use rmcp::{
    RoleServer,
    model::{
        ClientCapabilities, CreateMessageRequestParams, CreateMessageResult, ElicitRequestParams,
        ElicitResult, ErrorData, ListRootsResult, LoggingMessageNotificationParam,
        ProgressNotificationParam, ProgressToken,
    },
    service::Peer,
};
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use upstream::{BoxFut, Caller, Downstream};

use crate::{Gateway, handler::forwarded_meta, to_error};

/// Protocol revisions whose session-bound requests this path serves.
const LEGACY_VERSIONS: [&str; 3] = ["2025-03-26", "2025-06-18", "2025-11-25"];

/// Id prefix of the requests this path relays to clients.
const RELAY_PREFIX: &str = "mf-s-";

pub(crate) enum Outcome {
    Done(Response),
    /// Not for this path: rmcp serves it (the body is put back as it was read).
    Rmcp(Request),
}

/// Requests relayed to clients awaiting their answers, and the calls in flight here.
#[derive(Default)]
pub(crate) struct Relays {
    next: AtomicU64,
    /// Relay id → (client session, where the answer goes).
    waiting: Mutex<HashMap<u64, (u64, Answer)>>,
    /// (client session, JSON-RPC id text) → the call's cancellation.
    calls: Mutex<HashMap<(u64, String), CancellationToken>>,
}

/// Where a client's answer to a relayed request goes.
type Answer = oneshot::Sender<Result<Box<RawValue>, ErrorData>>;

#[derive(serde::Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    method: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    params: Option<&'a RawValue>,
    #[serde(borrow)]
    result: Option<&'a RawValue>,
    error: Option<ErrorData>,
}

pub(crate) async fn handle(gw: &Arc<Gateway>, server: &str, req: Request) -> Outcome {
    if modern_eligible(gw, req.headers()) {
        return modern_call(gw, server, req).await;
    }
    let Some((session, peer)) = eligible(gw, server, req.headers()) else {
        return Outcome::Rmcp(req);
    };
    let (parts, body) = req.into_parts();
    let bytes = match read_body(gw, body).await {
        Ok(b) => b,
        Err(too_large) => return Outcome::Done(too_large),
    };
    let rmcp = |bytes: Bytes| Outcome::Rmcp(Request::from_parts(parts, Body::from(bytes)));
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return rmcp(bytes);
    };
    let Ok(env) = serde_json::from_str::<Envelope>(text) else {
        return rmcp(bytes);
    };
    match (env.method.as_deref(), env.id) {
        (Some(m), Some(id)) if let Some(op) = Op::of(m) => {
            let id = id.to_owned();
            Outcome::Done(forward(gw, server, session, peer, id, op, env.params).await)
        }
        (Some(m), Some(id)) if let Some(list) = List::of(m) => {
            let id = id.to_owned();
            Outcome::Done(list_page(gw, server, &id, list, env.params, "").await)
        }
        (Some("notifications/cancelled"), None) if cancel(gw, session, env.params) => {
            Outcome::Done(StatusCode::ACCEPTED.into_response())
        }
        (None, Some(id)) if answer(gw, session, id, env.result, env.error) => {
            Outcome::Done(StatusCode::ACCEPTED.into_response())
        }
        _ => rmcp(bytes),
    }
}

/// The request body, up to `gateway.max_body_bytes` (else the 413 answer).
async fn read_body(gw: &Gateway, body: Body) -> Result<Bytes, Response> {
    let max = gw.config().gateway.max_body_bytes;
    axum::body::to_bytes(body, max).await.map_err(|_| {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body larger than {max} bytes (gateway.max_body_bytes)"),
        )
            .into_response()
    })
}

/// What both data paths ask of a request: no `Origin` (browsers go to rmcp, which checks it),
/// both answer forms accepted, a JSON body, an allowed `Host`.
fn plain_client(gw: &Gateway, h: &HeaderMap) -> bool {
    !h.contains_key(header::ORIGIN)
        && h.get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("application/json") && a.contains("text/event-stream"))
        && h.get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.starts_with("application/json"))
        && host_allowed(h, &gw.config().gateway.allowed_hosts)
}

/// A POST in a live legacy session of this server, from a non-browser client that accepts
/// both answer forms: the session number and its rmcp peer.
fn eligible(gw: &Gateway, server: &str, h: &HeaderMap) -> Option<(u64, Peer<RoleServer>)> {
    let key = h.get("mcp-session-id")?.to_str().ok()?;
    if let Some(v) = h.get("mcp-protocol-version")
        && !LEGACY_VERSIONS.iter().any(|l| v.as_bytes() == l.as_bytes())
    {
        return None;
    }
    if !plain_client(gw, h) {
        return None;
    }
    let (session, srv, peer) = gw.sessions.by_key(key)?;
    (&*srv == server).then_some((session, peer))
}

/// A stateless 2026-07-28 `tools/call`, `prompts/get`, `resources/read` or list request from a
/// non-browser client with no `Mcp-Param-*` headers. Whatever this path does not fully check
/// goes to rmcp, which answers with the precise error (header mismatch -32020, unsupported
/// version, ...).
fn modern_eligible(gw: &Gateway, h: &HeaderMap) -> bool {
    let is = |name: &str, want: &str| h.get(name).is_some_and(|v| v.as_bytes() == want.as_bytes());
    !h.contains_key("mcp-session-id")
        && is("mcp-protocol-version", MODERN_VERSION)
        && h.get("mcp-method")
            .and_then(|m| m.to_str().ok())
            .is_some_and(|m| {
                Op::modern(m).is_some() || List::of(m).is_some() && !h.contains_key("mcp-name")
            })
        && !h.keys().any(|k| k.as_str().starts_with("mcp-param-"))
        && plain_client(gw, h)
}

const MODERN_VERSION: &str = "2026-07-28";

/// A modern `tools/call`, `prompts/get` or `resources/read` on the gateway's own data path,
/// through the MRTR bridge like rmcp's handler does (a legacy upstream's questions become
/// `input_required` rounds), answered with one JSON body; or a list, answered from the catalog.
/// Requests with a progress token or a log level, MRTR retries, tools with header-mapped
/// parameters and anything malformed go to rmcp instead.
async fn modern_call(gw: &Arc<Gateway>, server: &str, req: Request) -> Outcome {
    let (parts, body) = req.into_parts();
    let bytes = match read_body(gw, body).await {
        Ok(b) => b,
        Err(too_large) => return Outcome::Done(too_large),
    };
    let name_header = parts
        .headers
        .get("mcp-name")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let method = parts
        .headers
        .get("mcp-method")
        .and_then(|v| v.to_str().ok());
    let list = method.and_then(List::of);
    let op = method.and_then(Op::modern);
    let caller = crate::mrtr::caller_of(Some(&parts.headers));
    let rmcp = |bytes: Bytes| Outcome::Rmcp(Request::from_parts(parts, Body::from(bytes)));
    if let Some(list) = list {
        let Some((id, params)) = prepare_modern_list(&bytes, list) else {
            return rmcp(bytes);
        };
        let (ttl, scope) = crate::handler::list_hints(gw);
        let scope = serde_json::to_string(&scope).expect("a scope serialises");
        let head = format!("\"resultType\":\"complete\",\"ttlMs\":{ttl},\"cacheScope\":{scope},");
        return Outcome::Done(list_page(gw, server, &id, list, Some(&params), &head).await);
    }
    let Some(op) = op else {
        return rmcp(bytes);
    };
    let Some(prepared) = prepare_modern(gw, server, &bytes, op, name_header.as_deref()) else {
        return rmcp(bytes);
    };
    let ModernCall {
        id,
        vs,
        params,
        meta,
        caps,
    } = prepared;
    let binding = crate::mrtr::binding(&caller, server, op.method(), &params);
    let session = gw.sessions.next_id();
    let pool = gw.pool.clone();
    let round = gw
        .bridge
        .start(
            crate::mrtr::Call {
                binding,
                caps,
                session,
                client: crate::mrtr::Client {
                    peer: None,
                    progress_token: None,
                },
                ct: gw.shutdown.child_token(),
                ttl: gw.config().gateway.input_wait,
                log_level: None,
            },
            move |mut c: Caller| {
                c.meta = meta;
                Box::pin(async move {
                    let r = match op {
                        Op::GetPrompt => vs.get_prompt_raw(params, &c).await,
                        Op::ReadResource => vs.read_resource_raw(params, &c).await,
                        Op::Complete => vs.complete_raw(params, &c).await,
                        Op::CallTool => vs.call_tool_raw(params, &c).await,
                    };
                    pool.end_session(session);
                    r
                })
            },
        )
        .await;
    Outcome::Done(match round {
        crate::mrtr::Round::Done(Ok(raw)) => {
            // 2026-07-28 requires resultType (legacy upstreams omit it) and caching hints on
            // reads; an upstream that gives none gets the cautious ones (stale, this caller only).
            let defaults: &[(&str, &str)] = match op {
                Op::ReadResource => &[
                    ("resultType", "\"complete\""),
                    ("ttlMs", "0"),
                    ("cacheScope", "\"private\""),
                ],
                _ => &[("resultType", "\"complete\"")],
            };
            json_response(result_message(&id, &with_defaults(raw.get(), defaults)))
        }
        crate::mrtr::Round::Done(Err(e)) => modern_error(&id, &to_error(e)),
        crate::mrtr::Round::Input(i) => json_response(result_message(
            &id,
            &serde_json::to_string(&i).expect("a result serialises"),
        )),
        crate::mrtr::Round::Missing(caps) => {
            modern_error(&id, &ErrorData::missing_required_client_capability(caps))
        }
    })
}

/// A JSON-RPC error for a 2026-07-28 client: the request-level errors (-32020 header mismatch,
/// -32021 missing capability, -32022 unsupported version) also get HTTP 400, like rmcp's.
fn modern_error(id: &RawValue, e: &ErrorData) -> Response {
    let mut r = json_response(error_message(id, e));
    if matches!(e.code.0, -32022..=-32020) {
        *r.status_mut() = StatusCode::BAD_REQUEST;
    }
    r
}

struct ModernCall {
    id: Box<RawValue>,
    vs: Arc<router::VirtualServer>,
    params: serde_json::Map<String, serde_json::Value>,
    meta: Option<serde_json::Map<String, serde_json::Value>>,
    caps: ClientCapabilities,
}

/// Everything this path needs, or None if rmcp should take the request.
fn prepare_modern(
    gw: &Gateway,
    server: &str,
    body: &[u8],
    op: Op,
    name_header: Option<&str>,
) -> Option<ModernCall> {
    let env: Envelope = serde_json::from_slice(body).ok()?;
    if env.method.as_deref() != Some(op.method()) {
        return None;
    }
    let id = env.id?.to_owned();
    let mut params: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(env.params?.get()).ok()?;
    // Mcp-Name carries the tool or prompt name, or the resource URI (SEP-2243); an encoded or
    // mismatched one is rmcp's to judge.
    let key = if matches!(op, Op::ReadResource) {
        "uri"
    } else {
        "name"
    };
    let name = params.get(key)?.as_str()?;
    if name_header != Some(name)
        || params.contains_key("requestState")
        || params.contains_key("inputResponses")
    {
        return None;
    }
    let vs = gw.virtual_server(server)?;
    if matches!(op, Op::CallTool) {
        let cat = vs.catalog();
        let tool = &cat.tools[*cat.tool_index.get(name)?];
        if has_param_headers(&tool.input_schema) {
            return None;
        }
    }
    let serde_json::Value::Object(meta) = params.remove("_meta")? else {
        return None;
    };
    if !plain_modern_meta(&meta) {
        return None;
    }
    let caps: ClientCapabilities = serde_json::from_value(
        meta.get("io.modelcontextprotocol/clientCapabilities")?
            .clone(),
    )
    .ok()?;
    Some(ModernCall {
        id,
        meta: forwarded_meta(&meta),
        vs,
        params,
        caps,
    })
}

/// A modern list request this path answers whole: the body's method is the header's, and the
/// `_meta` is a plain 2026-07-28 one (no progress token or log level, which rmcp handles).
/// Returns the id and the params (for the cursor).
fn prepare_modern_list(body: &[u8], list: List) -> Option<(Box<RawValue>, Box<RawValue>)> {
    let env: Envelope = serde_json::from_slice(body).ok()?;
    if env.method.as_deref() != Some(list.method()) {
        return None;
    }
    let id = env.id?.to_owned();
    #[derive(serde::Deserialize)]
    struct Params {
        #[serde(rename = "_meta")]
        meta: serde_json::Map<String, serde_json::Value>,
    }
    let params = env.params?;
    let meta = serde_json::from_str::<Params>(params.get()).ok()?.meta;
    plain_modern_meta(&meta).then(|| (id, params.to_owned()))
}

/// A request `_meta` this path serves: 2026-07-28 with the client's capabilities, and no
/// progress token or log level (rmcp's path streams those).
fn plain_modern_meta(meta: &serde_json::Map<String, serde_json::Value>) -> bool {
    meta.get("io.modelcontextprotocol/protocolVersion")
        .and_then(|v| v.as_str())
        == Some(MODERN_VERSION)
        && meta
            .get("io.modelcontextprotocol/clientCapabilities")
            .is_some_and(|c| c.is_object())
        && !meta.contains_key("progressToken")
        && !meta.contains_key("io.modelcontextprotocol/logLevel")
}

/// Whether a tool's schema maps arguments to `Mcp-Param-*` headers (rmcp validates those).
fn has_param_headers(schema: &serde_json::Map<String, serde_json::Value>) -> bool {
    schema
        .get("properties")
        .and_then(|p| p.as_object())
        .is_some_and(|props| {
            props.values().any(|p| {
                p.as_object()
                    .is_some_and(|p| p.contains_key("x-mcp-header") || has_param_headers(p))
            })
        })
}

/// A result object with each of `defaults` (key, JSON value) that it lacks put in front,
/// leaving the rest of the text as it came. Anything but an object comes back unchanged.
fn with_defaults(result: &str, defaults: &[(&str, &str)]) -> String {
    struct Keys<'k>(&'k [(&'k str, &'k str)]);
    impl<'de> serde::de::Visitor<'de> for Keys<'_> {
        /// Bit i set: the object has `defaults[i]`'s key.
        type Value = u64;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a result object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<u64, A::Error> {
            let mut found = 0;
            while let Some(k) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if let Some(i) = self.0.iter().position(|(d, _)| *d == k) {
                    found |= 1 << i;
                }
                map.next_value::<serde::de::IgnoredAny>()?;
            }
            Ok(found)
        }
    }
    let mut de = serde_json::Deserializer::from_str(result);
    let Ok(found) = serde::Deserializer::deserialize_map(&mut de, Keys(defaults)) else {
        return result.to_owned();
    };
    let Some(rest) = result.trim_start().strip_prefix('{') else {
        return result.to_owned();
    };
    let mut out = String::with_capacity(result.len() + 64);
    out.push('{');
    for (i, (k, v)) in defaults.iter().enumerate() {
        if found & (1 << i) == 0 {
            if out.len() > 1 {
                out.push(',');
            }
            out.push('"');
            out.push_str(k);
            out.push_str("\":");
            out.push_str(v);
        }
    }
    if out.len() > 1 && !rest.trim_start().starts_with('}') {
        out.push(',');
    }
    out.push_str(rest);
    out
}

/// The Host check of rmcp's service (host and, if the entry has one, port); anything it would
/// refuse goes to rmcp, which refuses it.
fn host_allowed(h: &HeaderMap, allowed: &[String]) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let Some(host) = h.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Ok(host) = http::uri::Authority::try_from(host) else {
        return false;
    };
    let norm = |s: &str| s.trim_matches(['[', ']']).to_ascii_lowercase();
    let (name, port) = (norm(host.host()), host.port_u16());
    allowed
        .iter()
        .any(|a| match http::uri::Authority::try_from(a.trim()) {
            Ok(a) => norm(a.host()) == name && a.port_u16().is_none_or(|p| Some(p) == port),
            Err(_) => norm(a) == name,
        })
}

fn json_response(body: String) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .expect("a valid response")
}

fn result_message(id: &RawValue, result: &str) -> String {
    let mut out = String::with_capacity(result.len() + id.get().len() + 32);
    out.push_str("{\"jsonrpc\":\"2.0\",\"id\":");
    out.push_str(id.get());
    out.push_str(",\"result\":");
    out.push_str(result);
    out.push('}');
    out
}

fn error_message(id: &RawValue, e: &ErrorData) -> String {
    let e = serde_json::to_string(e).expect("an error serialises");
    format!("{{\"jsonrpc\":\"2.0\",\"id\":{},\"error\":{e}}}", id.get())
}

/// The requests forwarded to one connector.
#[derive(Clone, Copy)]
enum Op {
    CallTool,
    GetPrompt,
    ReadResource,
    Complete,
}

impl Op {
    /// The requests a 2026-07-28 client sends through the MRTR bridge.
    fn modern(method: &str) -> Option<Self> {
        Self::of(method).filter(|op| !matches!(op, Op::Complete))
    }

    fn of(method: &str) -> Option<Self> {
        Some(match method {
            "tools/call" => Op::CallTool,
            "prompts/get" => Op::GetPrompt,
            "resources/read" => Op::ReadResource,
            "completion/complete" => Op::Complete,
            _ => return None,
        })
    }

    fn method(self) -> &'static str {
        match self {
            Op::CallTool => "tools/call",
            Op::GetPrompt => "prompts/get",
            Op::ReadResource => "resources/read",
            Op::Complete => "completion/complete",
        }
    }
}

/// The merged lists, answered from the catalog.
#[derive(Clone, Copy)]
enum List {
    Tools,
    Prompts,
    Resources,
    Templates,
}

impl List {
    fn of(method: &str) -> Option<Self> {
        Some(match method {
            "tools/list" => List::Tools,
            "prompts/list" => List::Prompts,
            "resources/list" => List::Resources,
            "resources/templates/list" => List::Templates,
            _ => return None,
        })
    }

    fn method(self) -> &'static str {
        match self {
            List::Tools => "tools/list",
            List::Prompts => "prompts/list",
            List::Resources => "resources/list",
            List::Templates => "resources/templates/list",
        }
    }
}

async fn list_page(
    gw: &Arc<Gateway>,
    server: &str,
    id: &RawValue,
    list: List,
    params: Option<&RawValue>,
    head: &str,
) -> Response {
    let Some(vs) = gw.virtual_server(server) else {
        let e =
            ErrorData::invalid_request(format!("virtual server {server:?} no longer exists"), None);
        return json_response(error_message(id, &e));
    };
    #[derive(serde::Deserialize)]
    struct P {
        cursor: Option<String>,
    }
    let cursor = match params.map(|p| serde_json::from_str::<P>(p.get())) {
        None => None,
        Some(Ok(p)) => p.cursor,
        Some(Err(e)) => {
            let e = ErrorData::invalid_params(format!("invalid list params: {e}"), None);
            return json_response(error_message(id, &e));
        }
    };
    let changes = vs.settle(router::SETTLE_WAIT).await;
    if changes.any() {
        gw.notify_changes(server, changes);
    }
    let cat = vs.catalog();
    let (items, key) = match list {
        List::Tools => (&cat.tools_json, "tools"),
        List::Prompts => (&cat.prompts_json, "prompts"),
        List::Resources => (&cat.resources_json, "resources"),
        List::Templates => (&cat.resource_templates_json, "resourceTemplates"),
    };
    match vs.page_json(items, key, cursor.as_deref(), head) {
        Ok(page) => json_response(result_message(id, &page)),
        Err(e) => json_response(error_message(id, &to_error(e))),
    }
}

/// Forward one request to its connector, answering with JSON or, if messages about it must
/// reach the client first, an event stream.
async fn forward(
    gw: &Arc<Gateway>,
    server: &str,
    session: u64,
    peer: Peer<RoleServer>,
    id: Box<RawValue>,
    op: Op,
    params: Option<&RawValue>,
) -> Response {
    let params: serde_json::Map<String, serde_json::Value> = match params
        .map(|p| serde_json::from_str(p.get()))
    {
        Some(Ok(p)) => p,
        Some(Err(e)) => {
            let e = ErrorData::invalid_params(format!("invalid {} params: {e}", op.method()), None);
            return json_response(error_message(&id, &e));
        }
        None => {
            let e = ErrorData::invalid_params(format!("{} needs params", op.method()), None);
            return json_response(error_message(&id, &e));
        }
    };
    let Some(vs) = gw.virtual_server(server) else {
        let e =
            ErrorData::invalid_request(format!("virtual server {server:?} no longer exists"), None);
        return json_response(error_message(&id, &e));
    };
    let empty = serde_json::Map::new();
    let meta = params
        .get("_meta")
        .and_then(|m| m.as_object())
        .unwrap_or(&empty);
    let progress_token = meta
        .get("progressToken")
        .and_then(|t| serde_json::from_value::<ProgressToken>(t.clone()).ok());
    let (tx, mut rx) = mpsc::channel::<String>(64);
    // Shutdown (after the grace period) cancels calls here as it ends rmcp's streams.
    let ct = gw.shutdown.child_token();
    let caller = Caller {
        session,
        meta: forwarded_meta(meta),
        downstream: Some(Arc::new(Relay {
            gw: Arc::downgrade(gw),
            session,
            peer,
            tx,
        })),
        progress_token,
        ct: ct.clone(),
        log_level: gw.sessions.level(session),
    };
    let key = (session, id.get().to_owned());
    gw.relays
        .calls
        .lock()
        .expect("relays lock")
        .insert(key.clone(), ct.clone());
    let forget = CallEntry {
        gw: Arc::downgrade(gw),
        key,
    };
    // Polled right here while the answer can still be a plain JSON body. If the client goes
    // away, the call is dropped, which tells the upstream (notifications/cancelled).
    let mut call = Box::pin(async move {
        let _forget = forget;
        match op {
            Op::CallTool => vs.call_tool_raw(params, &caller).await,
            Op::GetPrompt => vs.get_prompt_raw(params, &caller).await,
            Op::ReadResource => vs.read_resource_raw(params, &caller).await,
            Op::Complete => vs.complete_raw(params, &caller).await,
        }
        // `caller` (and with it the sender of `rx`) is dropped here.
    });
    tokio::select! {
        biased;
        r = &mut call => {
            // Messages sent during the call's last step (a log just before the answer) must
            // still go first: then the answer is a short event stream.
            let mut events = Vec::new();
            while let Ok(m) = rx.try_recv() {
                events.push(sse_event(&m));
            }
            if events.is_empty() {
                json_response(finish(&id, r))
            } else {
                events.push(sse_event(&finish(&id, r)));
                sse_response(Body::from_stream(futures::stream::iter(
                    events.into_iter().map(Ok::<_, std::convert::Infallible>),
                )))
            }
        }
        Some(first) = rx.recv() => {
            // Something must reach the client before the result: answer with an event stream,
            // fed by a task that now owns the call. A client that closes the stream cancels it.
            let (body_tx, body_rx) = mpsc::channel::<Result<Bytes, std::convert::Infallible>>(64);
            tokio::spawn(async move {
                let cancel_guard = ct.drop_guard();
                if body_tx.send(Ok(sse_event(&first))).await.is_err() {
                    return;
                }
                loop {
                    tokio::select! {
                        biased;
                        Some(m) = rx.recv() => {
                            if body_tx.send(Ok(sse_event(&m))).await.is_err() {
                                return;
                            }
                        }
                        r = &mut call => {
                            // Messages sent before the result go first.
                            while let Ok(m) = rx.try_recv() {
                                if body_tx.send(Ok(sse_event(&m))).await.is_err() {
                                    return;
                                }
                            }
                            let _ = body_tx.send(Ok(sse_event(&finish(&id, r)))).await;
                            cancel_guard.disarm();
                            return;
                        }
                        _ = body_tx.closed() => return,
                    }
                }
            });
            sse_response(Body::from_stream(tokio_stream_from(body_rx)))
        }
    }
}

fn sse_response(body: Body) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(body)
        .expect("a valid response")
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

fn finish(id: &RawValue, r: Result<Box<RawValue>, router::RouteError>) -> String {
    match r {
        Ok(result) => result_message(id, result.get()),
        Err(e) => error_message(id, &to_error(e)),
    }
}

/// One SSE event; a message with line breaks (pretty-printed upstream JSON) spans several
/// `data:` lines, which the client joins back with the same line breaks.
fn sse_event(msg: &str) -> Bytes {
    let mut out = String::with_capacity(msg.len() + 16);
    out.push_str("event: message\n");
    for line in msg.split('\n') {
        out.push_str("data: ");
        out.push_str(line.strip_suffix('\r').unwrap_or(line));
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

struct CallEntry {
    gw: std::sync::Weak<Gateway>,
    key: (u64, String),
}

impl Drop for CallEntry {
    fn drop(&mut self) {
        if let Some(gw) = self.gw.upgrade() {
            gw.relays
                .calls
                .lock()
                .expect("relays lock")
                .remove(&self.key);
        }
    }
}

/// `notifications/cancelled` for a call served here (same session): cancel it.
fn cancel(gw: &Gateway, session: u64, params: Option<&RawValue>) -> bool {
    #[derive(serde::Deserialize)]
    struct P<'a> {
        #[serde(rename = "requestId", borrow)]
        request_id: &'a RawValue,
    }
    let Some(p) = params.and_then(|p| serde_json::from_str::<P>(p.get()).ok()) else {
        return false;
    };
    let key = (session, p.request_id.get().to_owned());
    match gw.relays.calls.lock().expect("relays lock").get(&key) {
        Some(ct) => {
            ct.cancel();
            true
        }
        None => false,
    }
}

/// The client's answer to a request relayed from this path (same session only).
fn answer(
    gw: &Gateway,
    session: u64,
    id: &RawValue,
    result: Option<&RawValue>,
    error: Option<ErrorData>,
) -> bool {
    let Some(n) = id
        .get()
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .and_then(|s| s.strip_prefix(RELAY_PREFIX))
        .and_then(|s| s.parse::<u64>().ok())
    else {
        return false;
    };
    let mut waiting = gw.relays.waiting.lock().expect("relays lock");
    if waiting.get(&n).is_none_or(|(s, _)| *s != session) {
        return false;
    }
    let (_, tx) = waiting.remove(&n).expect("checked above");
    drop(waiting);
    let _ = tx.send(match (result, error) {
        (_, Some(e)) => Err(e),
        (Some(r), None) => Ok(r.to_owned()),
        (None, None) => Err(ErrorData::invalid_request(
            "the client answered with neither result nor error",
            None,
        )),
    });
    true
}

/// The client side of a call served here: messages go into the call's response stream.
struct Relay {
    gw: std::sync::Weak<Gateway>,
    session: u64,
    /// The session's rmcp peer, for the capabilities the client declared.
    peer: Peer<RoleServer>,
    tx: mpsc::Sender<String>,
}

impl Relay {
    async fn notify(&self, method: &str, params: impl serde::Serialize) {
        let msg = serde_json::json!({ "jsonrpc": "2.0", "method": method, "params": params });
        let _ = self.tx.send(msg.to_string()).await;
    }

    async fn request<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        params: impl serde::Serialize,
    ) -> Result<T, ErrorData> {
        let gone = || ErrorData::internal_error("the client's call has ended", None);
        let gw = self.gw.upgrade().ok_or_else(gone)?;
        let n = gw.relays.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        gw.relays
            .waiting
            .lock()
            .expect("relays lock")
            .insert(n, (self.session, tx));
        drop(gw);
        let msg = serde_json::json!({
            "jsonrpc": "2.0",
            "id": format!("{RELAY_PREFIX}{n}"),
            "method": method,
            "params": params,
        });
        let forget = || {
            if let Some(gw) = self.gw.upgrade() {
                gw.relays.waiting.lock().expect("relays lock").remove(&n);
            }
        };
        if self.tx.send(msg.to_string()).await.is_err() {
            forget();
            return Err(gone());
        }
        let r = tokio::select! {
            r = rx => r.map_err(|_| gone()),
            _ = self.tx.closed() => Err(gone()),
        };
        forget();
        let raw = r??;
        serde_json::from_str(raw.get()).map_err(|e| {
            ErrorData::invalid_params(
                format!("the client's answer to {method} is not valid: {e}"),
                None,
            )
        })
    }
}

impl Downstream for Relay {
    fn capabilities(&self) -> Option<ClientCapabilities> {
        self.peer.peer_info().map(|i| i.capabilities.clone())
    }

    fn progress(&self, p: ProgressNotificationParam) -> BoxFut<'_, ()> {
        Box::pin(self.notify("notifications/progress", p))
    }

    fn log(&self, p: LoggingMessageNotificationParam) -> BoxFut<'_, ()> {
        Box::pin(self.notify("notifications/message", p))
    }

    fn create_message(
        &self,
        p: CreateMessageRequestParams,
    ) -> BoxFut<'_, Result<CreateMessageResult, ErrorData>> {
        Box::pin(self.request("sampling/createMessage", p))
    }

    fn create_elicitation(
        &self,
        p: ElicitRequestParams,
    ) -> BoxFut<'_, Result<ElicitResult, ErrorData>> {
        Box::pin(self.request("elicitation/create", p))
    }

    fn list_roots(&self) -> BoxFut<'_, Result<ListRootsResult, ErrorData>> {
        Box::pin(self.request("roots/list", serde_json::json!({})))
    }
}

#[cfg(test)]
mod tests {
    use super::with_defaults;

    #[test]
    fn defaults_go_in_front_of_what_is_missing_only() {
        let d = [("resultType", "\"complete\""), ("ttlMs", "0")];
        assert_eq!(
            with_defaults(r#"{"contents":[],"x-extra":1}"#, &d),
            r#"{"resultType":"complete","ttlMs":0,"contents":[],"x-extra":1}"#
        );
        assert_eq!(
            with_defaults(r#"{"ttlMs":5000,"contents":[]}"#, &d),
            r#"{"resultType":"complete","ttlMs":5000,"contents":[]}"#
        );
        assert_eq!(
            with_defaults("{}", &d),
            r#"{"resultType":"complete","ttlMs":0}"#
        );
        assert_eq!(
            with_defaults(" { } ", &d),
            r#"{"resultType":"complete","ttlMs":0 } "#
        );
        let whole = r#"{"resultType":"input_required","ttlMs":1}"#;
        assert_eq!(with_defaults(whole, &d), whole);
        assert_eq!(with_defaults("[1]", &d), "[1]");
        assert_eq!(with_defaults("not json", &d), "not json");
    }
}
