//! The 2026-07-28 (stateless) codec: a POST without a session whose version is 2026-07-28.
//! Its checks are the transport's (SEP-2243 routing headers equal to the body, the protocol
//! version header equal to `_meta`, the required `_meta` keys, a supported version); the
//! request then goes to the pipeline, and its answer back as JSON or an event stream, with the
//! request-level errors as HTTP 400 and an unknown method as 404. `subscriptions/listen` opens
//! a long-lived stream fed by the gateway's fan-out.

#![allow(deprecated)]

use std::{sync::Arc, time::SystemTime};

use axum::{
    http::{HeaderMap, StatusCode, header::ALLOW},
    response::{IntoResponse, Response},
};
use manifold_policy::Principal;
use manifold_router::VirtualServer;
use rmcp::model::{ClientCapabilities, ErrorCode, ErrorData, LoggingLevel, ProgressToken};
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use crate::{
    Gateway,
    context::{Era, RequestContext, forwarded_meta},
    jsonrpc::{self, Incoming, modern_status},
    pipeline::{self, MODERN_VERSION, Mcp, Params, Reply},
    session::Listener,
    stream::{self, OUTBOX},
};

const VERSION_KEY: &str = "io.modelcontextprotocol/protocolVersion";
const CAPS_KEY: &str = "io.modelcontextprotocol/clientCapabilities";
const LEVEL_KEY: &str = "io.modelcontextprotocol/logLevel";

/// The protocol version a request's `_meta` names, read without parsing the rest.
fn meta_version(params: Option<&RawValue>) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Meta {
        #[serde(rename = "io.modelcontextprotocol/protocolVersion")]
        version: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct P {
        #[serde(rename = "_meta")]
        meta: Option<Meta>,
    }
    serde_json::from_str::<P>(params?.get()).ok()?.meta?.version
}

/// The `MCP-Protocol-Version` header, if it is one readable value.
pub(crate) fn version_header(h: &HeaderMap) -> Option<&str> {
    h.get("mcp-protocol-version").and_then(|v| v.to_str().ok())
}

/// Whether a message without a session is a 2026-07-28 one: its version header or `_meta`
/// says so, or it is `server/discover` (the probe a dual-era client starts with).
pub(crate) fn applies(h: &HeaderMap, msg: &Incoming<'_>) -> bool {
    if version_header(h).is_some_and(|v| v >= MODERN_VERSION) {
        return true;
    }
    match msg {
        Incoming::Request { method, params, .. } => {
            method == "server/discover" || meta_version(*params).is_some()
        }
        _ => false,
    }
}

/// GET and DELETE have no meaning without a session in 2026-07-28.
pub(crate) fn not_allowed() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(ALLOW, "POST")],
        "a 2026-07-28 endpoint takes POST only (GET and DELETE belong to legacy sessions)",
    )
        .into_response()
}

fn refuse(id: &RawValue, e: ErrorData, status: StatusCode) -> Response {
    stream::json_response(status, jsonrpc::error_message(id, &e))
}

fn header_mismatch(id: &RawValue, why: String) -> Response {
    refuse(
        id,
        ErrorData::new(ErrorCode(-32020), why, None),
        StatusCode::BAD_REQUEST,
    )
}

/// One header's only value (duplicates and unreadable bytes are refused).
fn single<'h>(h: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, String> {
    let mut all = h.get_all(name).iter();
    let Some(v) = all.next() else {
        return Ok(None);
    };
    if all.next().is_some() {
        return Err(format!("duplicate {name} header"));
    }
    v.to_str()
        .map(Some)
        .map_err(|_| format!("the {name} header has invalid characters"))
}

/// Check the SEP-2243 headers against the body: `Mcp-Method`, `Mcp-Name` (the tool or prompt
/// name, or the resource URI) and the tool's `Mcp-Param-*`.
fn check_routing_headers(
    vs: &VirtualServer,
    h: &HeaderMap,
    method: &str,
    params: &Params,
) -> Result<(), String> {
    let text = |k: &str| params.get(k).and_then(|v| v.as_str());
    match single(h, "mcp-method")? {
        None => return Err("missing required Mcp-Method header".into()),
        Some(m) if m != method => {
            return Err(format!(
                "Mcp-Method header {m:?} does not match the body's method {method:?}"
            ));
        }
        Some(_) => {}
    }
    let expected = match method {
        "tools/call" | "prompts/get" => text("name"),
        "resources/read" => text("uri"),
        _ => None,
    };
    if let Some(want) = expected {
        let raw = single(h, "mcp-name")?
            .ok_or_else(|| format!("missing required Mcp-Name header for {method}"))?;
        let got = manifold_upstream::decode_header_value(raw)
            .ok_or_else(|| "the Mcp-Name header is not valid base64".to_owned())?;
        if got != want {
            return Err(format!(
                "Mcp-Name header {got:?} does not match the body's {want:?}"
            ));
        }
    }
    if method == "tools/call"
        && let Some(name) = text("name")
    {
        let cat = vs.catalog();
        if let Some(&i) = cat.tool_index.get(name)
            && cat.tool_param_headers.get(i).copied().unwrap_or(true)
        {
            let args = params.get("arguments").unwrap_or(&serde_json::Value::Null);
            manifold_upstream::check_param_headers(&cat.tools[i].input_schema, args, |n| {
                single(h, n)
            })?;
        }
    }
    Ok(())
}

/// Answer one stateless message.
pub(crate) async fn post(
    gw: &Arc<Gateway>,
    vs: Arc<VirtualServer>,
    principal: Arc<Principal>,
    peer: Option<std::net::IpAddr>,
    h: &HeaderMap,
    msg: Incoming<'_>,
) -> Response {
    let (id, method, params) = match msg {
        Incoming::Request { id, method, params } => (id, method, params),
        // No client→server notifications are defined over HTTP in 2026-07-28: accepted, unused.
        Incoming::Notification { .. } => return StatusCode::ACCEPTED.into_response(),
        Incoming::Response { .. } => {
            return refuse(
                RawValue::NULL,
                ErrorData::invalid_request(
                    "a 2026-07-28 request carries no responses: answers to input requests go in the retried request's inputResponses",
                    None,
                ),
                StatusCode::BAD_REQUEST,
            );
        }
    };
    let mut params: Params = match params.map(|p| serde_json::from_str(p.get())) {
        None => Params::new(),
        Some(Ok(p)) => p,
        Some(Err(e)) => {
            let e = ErrorData::invalid_params(format!("invalid params: {e}"), None);
            return refuse(id, e, StatusCode::BAD_REQUEST);
        }
    };
    let meta = match params.remove("_meta") {
        Some(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    let header = match single(h, "mcp-protocol-version") {
        Ok(v) => v,
        Err(why) => return header_mismatch(id, why),
    };
    if header.is_some_and(|v| v >= MODERN_VERSION)
        && let Err(why) = check_routing_headers(&vs, h, &method, &params)
    {
        return header_mismatch(id, why);
    }
    let Some(version) = meta.get(VERSION_KEY).and_then(|v| v.as_str()) else {
        return refuse(
            id,
            ErrorData::invalid_params(
                format!(
                    "request _meta is missing or has malformed required fields: {VERSION_KEY}, {CAPS_KEY}"
                ),
                None,
            ),
            StatusCode::BAD_REQUEST,
        );
    };
    match header {
        None => {
            return header_mismatch(
                id,
                "a request whose _meta names a protocol version needs the MCP-Protocol-Version header".into(),
            );
        }
        Some(h) if h != version => {
            return header_mismatch(
                id,
                format!(
                    "MCP-Protocol-Version header ({h}) does not match the request _meta protocolVersion ({version})"
                ),
            );
        }
        Some(_) => {}
    }
    if version != MODERN_VERSION {
        let supported: Vec<rmcp::model::ProtocolVersion> =
            vec![serde_json::from_value(MODERN_VERSION.into()).expect("a version")];
        let requested =
            serde_json::from_value(version.into()).unwrap_or_else(|_| supported[0].clone());
        return refuse(
            id,
            ErrorData::unsupported_protocol_version(requested, &supported),
            StatusCode::BAD_REQUEST,
        );
    }
    let Some(capabilities) = meta
        .get(CAPS_KEY)
        .filter(|c| c.is_object())
        .and_then(|c| <ClientCapabilities as serde::Deserialize>::deserialize(c).ok())
    else {
        return refuse(
            id,
            ErrorData::invalid_params(
                format!("request _meta is missing or has malformed required fields: {CAPS_KEY}"),
                None,
            ),
            StatusCode::BAD_REQUEST,
        );
    };
    let log_level = meta
        .get(LEVEL_KEY)
        .and_then(|l| <LoggingLevel as serde::Deserialize>::deserialize(l).ok());
    let progress_token = meta
        .get("progressToken")
        .and_then(|t| <ProgressToken as serde::Deserialize>::deserialize(t).ok());
    let id = id.to_owned();
    let Some(mcp) = Mcp::of(&method) else {
        let e = pipeline::method_not_found(&method);
        return refuse(&id, e, StatusCode::NOT_FOUND);
    };
    if gw.sessions.caller_seen(vs.name(), &principal, false) {
        // Their roles or scopes changed: their listen streams hear of the lists they now see
        // otherwise.
        gw.notify_caller(vs.name(), &principal);
    }
    let (outbox, rx) = mpsc::channel(OUTBOX);
    let cx = RequestContext {
        principal,
        via: manifold_policy::Via { source: peer },
        vs,
        era: Era::Modern,
        session: None,
        client: gw.sessions.next_client(),
        id,
        meta: forwarded_meta(&meta),
        progress_token,
        capabilities,
        log_level,
        outbox,
        ct: gw.shutdown.child_token(),
        started: SystemTime::now(),
    };
    let params = Some(params);
    if mcp == Mcp::Listen {
        return listen(gw, cx, params).await;
    }
    pipeline::answer(gw.clone(), cx, mcp, params, rx).await
}

/// A `subscriptions/listen` stream: the acknowledgment with what it accepts, then list changes
/// and resource updates until the client closes it (or the gateway stops); its upstream
/// subscriptions end with it when no one else watches their resources.
async fn listen(gw: &Arc<Gateway>, cx: RequestContext, params: Option<Params>) -> Response {
    let id = cx.id.clone();
    let vs = cx.vs.clone();
    let client = cx.client;
    let principal = cx.principal.clone();
    let via = cx.via;
    let reply = Box::pin(pipeline::handle(gw.clone(), cx, Mcp::Listen, params)).await;
    let listening = match reply {
        Reply::Listen(l) => l,
        Reply::Error(e) => return refuse(&id, e.clone(), modern_status(&e)),
        Reply::Result(_) => unreachable!("listen answers a stream"),
    };
    let (tx, rx) = mpsc::channel(OUTBOX);
    let listener = Arc::new(Listener {
        server: vs.name().into(),
        id: id.clone(),
        accepted: listening.accepted.clone(),
        tx,
        views: Default::default(),
        principal: arc_swap::ArcSwap::new(principal.clone()),
        via,
        client,
    });
    // What it sees now: list changes are told when that changes.
    for (k, print) in gw
        .views_of(&vs, &principal, via, client)
        .into_iter()
        .enumerate()
    {
        listener.views.saw(k, print);
    }
    let ack = {
        let mut meta = serde_json::Map::new();
        meta.insert(
            "io.modelcontextprotocol/subscriptionId".into(),
            serde_json::from_str(id.get()).unwrap_or_default(),
        );
        jsonrpc::notification(
            "notifications/subscriptions/acknowledged",
            serde_json::json!({ "notifications": listening.accepted, "_meta": meta }),
        )
    };
    gw.sessions.listen(client, listener);
    let gw2 = gw.clone();
    let watched = listening.watched;
    let on_close = move || {
        gw2.sessions.unlisten(client);
        let gw = gw2.clone();
        tokio::spawn(async move {
            for (permit, credential) in watched {
                let uri = permit.target().exposed.clone();
                if gw.sessions.anyone_subscribed(vs.name(), &uri) {
                    continue;
                }
                let caller = manifold_upstream::Caller::internal(client, gw.shutdown.child_token());
                if let Err(e) = vs.unwatch(&permit, &credential, &caller).await {
                    tracing::debug!(server = vs.name(), %uri, error = %e, "ending an upstream subscription failed");
                }
            }
            gw.pool.end_client(client);
        });
    };
    stream::live(
        vec![ack],
        rx,
        gw.config().gateway.sse_keep_alive,
        gw.shutdown.clone(),
        on_close,
    )
}
