//! The legacy (2025-11-25 and earlier) codec: `initialize` opens a session of the gateway's own
//! table; the session's POSTs carry requests (to the pipeline), notifications and the client's
//! answers to relayed requests; its GET is the standalone stream for messages about no call;
//! DELETE ends it. A session belongs to the principal that opened it: with anyone else's
//! credentials, or on another virtual server, its id is unknown (404).

#![allow(deprecated)]

use std::{
    sync::Arc,
    time::{Instant, SystemTime},
};

use axum::{
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use manifold_policy::{Principal, Via};
use manifold_router::VirtualServer;
use rmcp::model::{ClientCapabilities, ErrorData, ProgressToken};
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use crate::{
    Gateway,
    admission::{Owner, Refusal},
    context::{Era, RequestContext, forwarded_meta},
    jsonrpc::{self, Incoming},
    pipeline::{self, LEGACY_VERSIONS, Mcp, Params, Reply},
    session::{self, Session},
    stream::{self, OUTBOX},
};

fn bad_request(id: Option<&RawValue>, e: ErrorData) -> Response {
    stream::json_response(
        StatusCode::BAD_REQUEST,
        jsonrpc::error_message(id.unwrap_or(RawValue::NULL), &e),
    )
}

/// An `initialize` the session caps or the rate limit turned away: 503 when the gateway is
/// full, 429 when this client is over its share (with `Retry-After`), and a JSON-RPC error
/// that says which limit and what to do.
fn turned_away(gw: &Gateway, id: &RawValue, owner: &Owner, refusal: &Refusal) -> Response {
    let message = refusal.message(owner);
    gw.turned_away
        .lock()
        .expect("refusals lock")
        .note(format_args!("refused a new session: {message}"));
    let (status, retry) = match refusal {
        Refusal::Full(_) => (StatusCode::SERVICE_UNAVAILABLE, 5),
        Refusal::OwnerFull(_) => (StatusCode::TOO_MANY_REQUESTS, 5),
        Refusal::TooFast(after) => (StatusCode::TOO_MANY_REQUESTS, after.as_secs().max(1)),
    };
    let e = ErrorData::new(rmcp::model::ErrorCode(-32000), message, None);
    let mut resp = stream::json_response(status, jsonrpc::error_message(id, &e));
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry));
    resp
}

/// A request without a session that is not `initialize` (nor a 2026-07-28 request).
pub(crate) fn session_required(id: Option<&RawValue>) -> Response {
    bad_request(
        id,
        ErrorData::invalid_request(
            "Mcp-Session-Id header is required: send initialize first (or use protocol version 2026-07-28, which needs no session)",
            None,
        ),
    )
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        "session not found: it ended or never existed; send initialize to start a new one",
    )
        .into_response()
}

/// `initialize`: a new session at the negotiated version (the client's if it is a legacy one
/// the gateway speaks, else the latest legacy one).
pub(crate) async fn initialize(
    gw: &Arc<Gateway>,
    vs: Arc<VirtualServer>,
    principal: Arc<Principal>,
    peer: Option<std::net::IpAddr>,
    h: &HeaderMap,
    id: &RawValue,
    params: Option<&RawValue>,
) -> Response {
    #[derive(serde::Deserialize)]
    struct P {
        #[serde(rename = "protocolVersion")]
        protocol_version: String,
        #[serde(default)]
        capabilities: Option<ClientCapabilities>,
    }
    let p: P = match params.map(|p| serde_json::from_str(p.get())) {
        Some(Ok(p)) => p,
        Some(Err(e)) => {
            let e = ErrorData::invalid_params(format!("invalid initialize params: {e}"), None);
            return stream::json_response(StatusCode::OK, jsonrpc::error_message(id, &e));
        }
        None => {
            let e = ErrorData::invalid_params("initialize needs params", None);
            return stream::json_response(StatusCode::OK, jsonrpc::error_message(id, &e));
        }
    };
    if let Some(v) = crate::modern::version_header(h)
        && v != p.protocol_version
    {
        return bad_request(
            Some(id),
            ErrorData::invalid_request(
                format!(
                    "MCP-Protocol-Version header ({v}) does not match initialize params.protocolVersion ({})",
                    p.protocol_version
                ),
                None,
            ),
        );
    }
    let version = if LEGACY_VERSIONS.contains(&p.protocol_version.as_str()) {
        p.protocol_version
    } else {
        LEGACY_VERSIONS[LEGACY_VERSIONS.len() - 1].to_owned()
    };
    let owner = Owner::of(&principal, peer);
    let settings = &gw.config().gateway;
    let caps = session::Caps {
        total: settings.max_sessions,
        per_owner: settings.max_sessions_per_client,
    };
    let admitted = gw
        .initializes
        .take(&owner, settings.initialize_per_minute, Instant::now())
        .map_err(Refusal::TooFast)
        .and_then(|()| {
            gw.sessions.create(
                vs.name().into(),
                principal.clone(),
                Via { source: peer },
                owner.clone(),
                caps,
                version,
                p.capabilities.unwrap_or_default(),
                gw.shutdown.child_token(),
            )
        });
    let session = match admitted {
        Ok(s) => s,
        Err(refusal) => return turned_away(gw, id, &owner, &refusal),
    };
    let (outbox, _rx) = mpsc::channel(1);
    let cx = RequestContext {
        principal,
        via: Via { source: peer },
        client: session.client,
        vs,
        era: Era::Legacy,
        session: Some(session.clone()),
        id: id.to_owned(),
        meta: None,
        progress_token: None,
        capabilities: session.capabilities.clone(),
        log_level: None,
        outbox,
        ct: session.closed.child_token(),
        started: SystemTime::now(),
    };
    match Box::pin(pipeline::handle(gw.clone(), cx, Mcp::Initialize, None)).await {
        Reply::Result(r) => {
            let mut resp = stream::json_response(StatusCode::OK, jsonrpc::result_message(id, &r));
            resp.headers_mut().insert(
                "mcp-session-id",
                HeaderValue::from_str(&session.key).expect("a hex session id"),
            );
            resp
        }
        Reply::Error(e) => {
            gw.end_session(&session.key);
            stream::json_response(StatusCode::OK, jsonrpc::error_message(id, &e))
        }
        Reply::Listen(_) => unreachable!("initialize answers a result"),
    }
}

/// Why a request's session was not found.
enum NoSession {
    Required,
    NotFound,
    /// The version header names another version than the session negotiated.
    Version(String, String),
}

impl IntoResponse for NoSession {
    fn into_response(self) -> Response {
        match self {
            NoSession::Required => session_required(None),
            NoSession::NotFound => not_found(),
            NoSession::Version(sent, negotiated) => bad_request(
                None,
                ErrorData::invalid_request(
                    format!(
                        "MCP-Protocol-Version {sent:?} does not match the version this session negotiated ({negotiated})"
                    ),
                    None,
                ),
            ),
        }
    }
}

/// The session a request names, if it is this principal's on this virtual server, with a
/// matching protocol version header (when one is sent).
fn find(
    gw: &Gateway,
    vs: &VirtualServer,
    principal: &Arc<Principal>,
    h: &HeaderMap,
) -> Result<Arc<Session>, NoSession> {
    let key = h
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .ok_or(NoSession::Required)?;
    let session = gw
        .sessions
        .get(key)
        .filter(|s| &*s.server == vs.name())
        .ok_or(NoSession::NotFound)?;
    let holds = session.principal();
    if !session::same_caller(&holds, principal) {
        return Err(NoSession::NotFound);
    }
    if *holds != **principal {
        // Their roles or scopes changed (in the store, at their provider): the session goes on
        // under the new ones, and each of their clients is told of the lists it now sees
        // otherwise.
        gw.caller_changed(vs.name(), principal);
    }
    if let Some(v) = crate::modern::version_header(h)
        && v != session.version
    {
        return Err(NoSession::Version(v.to_owned(), session.version.clone()));
    }
    session.touch();
    Ok(session)
}

/// A POST in a session: a request, a notification, or an answer to a relayed request.
pub(crate) async fn post(
    gw: &Arc<Gateway>,
    vs: Arc<VirtualServer>,
    principal: Arc<Principal>,
    peer: Option<std::net::IpAddr>,
    h: &HeaderMap,
    msg: Incoming<'_>,
) -> Response {
    let session = match find(gw, &vs, &principal, h) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    session.arrived(Via { source: peer });
    let (id, method, params) = match msg {
        Incoming::Request { id, method, params } => (id, method, params),
        Incoming::Notification { method, params } => {
            match &*method {
                "notifications/initialized" => vs.demand(),
                "notifications/cancelled" => {
                    #[derive(serde::Deserialize)]
                    struct P<'a> {
                        #[serde(rename = "requestId", borrow)]
                        request_id: &'a RawValue,
                    }
                    if let Some(p) = params.and_then(|p| serde_json::from_str::<P>(p.get()).ok()) {
                        session.cancel(p.request_id);
                    }
                }
                _ => {}
            }
            return StatusCode::ACCEPTED.into_response();
        }
        Incoming::Response { id, result } => {
            if !session.answer(id, result.map(ToOwned::to_owned)) {
                tracing::debug!(id = id.get(), "an answer to no request of this session");
            }
            return StatusCode::ACCEPTED.into_response();
        }
    };
    let Some(mcp) = Mcp::of(&method) else {
        let e = pipeline::method_not_found(&method);
        return stream::json_response(StatusCode::OK, jsonrpc::error_message(id, &e));
    };
    if mcp == Mcp::Initialize {
        let e = ErrorData::invalid_request("this session is already initialized", None);
        return stream::json_response(StatusCode::OK, jsonrpc::error_message(id, &e));
    }
    let mut params: Option<Params> = match params.map(|p| serde_json::from_str(p.get())) {
        None => None,
        Some(Ok(p)) => Some(p),
        Some(Err(e)) => {
            let e = ErrorData::invalid_params(format!("invalid params: {e}"), None);
            return stream::json_response(StatusCode::OK, jsonrpc::error_message(id, &e));
        }
    };
    let meta = match params.as_mut().and_then(|p| p.remove("_meta")) {
        Some(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    let (outbox, rx) = mpsc::channel(OUTBOX);
    let cx = RequestContext {
        principal,
        via: Via { source: peer },
        client: session.client,
        vs,
        era: Era::Legacy,
        id: id.to_owned(),
        meta: forwarded_meta(&meta),
        progress_token: meta
            .get("progressToken")
            .and_then(|t| <ProgressToken as serde::Deserialize>::deserialize(t).ok()),
        capabilities: session.capabilities.clone(),
        log_level: session.level(),
        outbox,
        ct: session.closed.child_token(),
        session: Some(session),
        started: SystemTime::now(),
    };
    pipeline::answer(gw.clone(), cx, mcp, params, rx).await
}

/// GET: the session's standalone stream (a newer one replaces an older one), carrying list
/// changes, resource updates and log messages, and what was kept while none was open.
pub(crate) fn get(
    gw: &Gateway,
    vs: &VirtualServer,
    principal: &Arc<Principal>,
    h: &HeaderMap,
) -> Response {
    let accepts = h
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/event-stream"));
    if !accepts {
        return (
            StatusCode::NOT_ACCEPTABLE,
            "a GET opens an event stream: send Accept: text/event-stream",
        )
            .into_response();
    }
    let session = match find(gw, vs, principal, h) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let (tx, rx) = mpsc::channel(OUTBOX);
    let (n, kept) = session.open_stream(tx);
    let end = session.closed.clone();
    stream::live(
        kept,
        rx,
        gw.config().gateway.sse_keep_alive,
        end,
        move || session.close_stream(n),
    )
}

/// DELETE: the client ends its session.
pub(crate) fn delete(
    gw: &Gateway,
    vs: &VirtualServer,
    principal: &Arc<Principal>,
    h: &HeaderMap,
) -> Response {
    let session = match find(gw, vs, principal, h) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    gw.end_session(&session.key);
    StatusCode::NO_CONTENT.into_response()
}
