//! The HTTP edge: the routes (`/mcp/{server}`, `/healthz`, `/healthz/detail`), the checks every
//! MCP request passes before anything else (the `Caller` extractor: `Host`/`Origin`, then the
//! authentication seam — the only place headers are read for identity), the dispatch of a POST to the legacy or the 2026-07-28 codec, and
//! `serve` with its shutdown drain.

use std::{future::Future, sync::Arc};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{Path, Request, State},
    http::{HeaderMap, Method, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{any, get},
};
use manifold_policy::Principal;

use crate::{
    Gateway, drain,
    jsonrpc::{self, Incoming},
    legacy, modern,
    origin::Refused,
};

/// The HTTP app: `/mcp/{server}`, `/healthz`, `/healthz/detail`.
pub fn app(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/mcp/{server}", any(mcp))
        .route("/healthz", get(healthz))
        .route("/healthz/detail", get(healthz_detail))
        .with_state(gw)
}

/// The authenticated caller of a request: extracting it is the edge — the Host/Origin checks,
/// then the authentication seam, once per HTTP request, before any MCP handling (the only
/// place a request's headers are read for identity).
pub(crate) struct Caller(pub Arc<Principal>);

impl axum::extract::FromRequestParts<Arc<Gateway>> for Caller {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        gw: &Arc<Gateway>,
    ) -> Result<Self, Response> {
        let checked = gw.runtime.load().allowed.check(&parts.headers);
        match checked {
            Ok(()) => {}
            Err(Refused::BadHost) => {
                return Err((
                    StatusCode::BAD_REQUEST,
                    "Bad Request: missing or invalid Host header",
                )
                    .into_response());
            }
            Err(Refused::Host(h)) => {
                tracing::warn!(host = %h, "refused a request with a Host that is not allowed (possible DNS rebinding)");
                return Err((
                    StatusCode::FORBIDDEN,
                    format!("Forbidden: Host {h:?} is not allowed (gateway.allowed_hosts)"),
                )
                    .into_response());
            }
            Err(Refused::Origin(o)) => {
                tracing::warn!(origin = %o, "refused a request from an Origin that is not allowed");
                return Err((
                    StatusCode::FORBIDDEN,
                    format!("Forbidden: Origin {o:?} is not allowed (gateway.allowed_origins)"),
                )
                    .into_response());
            }
        }
        match gw.seams.authenticate.authenticate(parts).await {
            Ok(p) => Ok(Caller(Arc::new(p))),
            Err(e) => Err((StatusCode::UNAUTHORIZED, format!("Unauthorized: {e}")).into_response()),
        }
    }
}

async fn mcp(
    State(gw): State<Arc<Gateway>>,
    Caller(principal): Caller,
    Path(server): Path<String>,
    req: Request,
) -> Response {
    let Some(vs) = gw.virtual_server(&server) else {
        let known: Vec<String> = gw
            .servers()
            .iter()
            .map(|s| format!("/mcp/{}", s.name()))
            .collect();
        return (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({
                "error": format!("no virtual server named {server:?}"),
                "available": known,
            })),
        )
            .into_response();
    };
    let has_session = req.headers().contains_key("mcp-session-id");
    let modern_version =
        modern::version_header(req.headers()).is_some_and(|v| v >= crate::pipeline::MODERN_VERSION);
    match *req.method() {
        Method::POST => post(&gw, vs, principal, req).await,
        Method::GET if has_session => legacy::get(&gw, &vs, &principal, req.headers()),
        Method::DELETE if has_session => legacy::delete(&gw, &vs, &principal, req.headers()),
        Method::GET | Method::DELETE if modern_version => modern::not_allowed(),
        Method::GET | Method::DELETE => legacy::session_required(None),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, "GET, POST, DELETE")],
            "Method Not Allowed",
        )
            .into_response(),
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

fn accepts_both(h: &HeaderMap) -> bool {
    let mut json = false;
    let mut sse = false;
    for part in h
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
    {
        let mut bits = part.split(';');
        let essence = bits.next().unwrap_or("").trim();
        // An explicit q=0 excludes the type.
        let refused = bits.any(|b| {
            b.trim()
                .strip_prefix("q=")
                .and_then(|q| q.trim().parse::<f32>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        if refused {
            continue;
        }
        json |= essence.eq_ignore_ascii_case("application/json") || essence == "*/*";
        sse |= essence.eq_ignore_ascii_case("text/event-stream") || essence == "*/*";
    }
    json && sse
}

fn is_json(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("application/json")
        })
}

/// A POST: read and validate the message, then the legacy codec (`initialize`, or a session's
/// message) or the 2026-07-28 one.
async fn post(
    gw: &Arc<Gateway>,
    vs: Arc<manifold_router::VirtualServer>,
    principal: Arc<Principal>,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let h = &parts.headers;
    if !accepts_both(h) {
        return (
            StatusCode::NOT_ACCEPTABLE,
            "Not Acceptable: the client must accept both application/json and text/event-stream",
        )
            .into_response();
    }
    if !is_json(h) {
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Unsupported Media Type: Content-Type must be application/json",
        )
            .into_response();
    }
    // In flight until its response (often an event stream) is sent or dropped; a listen
    // stream is not work to wait for when draining.
    let mut guard = Some(gw.inflight.enter());
    let bytes = match read_body(gw, body).await {
        Ok(b) => b,
        Err(too_large) => return too_large,
    };
    let msg = match jsonrpc::parse(&bytes) {
        Ok(m) => m,
        Err(refusal) => {
            return crate::stream::json_response(StatusCode::BAD_REQUEST, refusal.message());
        }
    };
    let resp = match &msg {
        Incoming::Request {
            id, method, params, ..
        } if method == "initialize" && !modern::applies(h, &msg) => {
            legacy::initialize(gw, vs, principal, h, id, *params).await
        }
        _ if h.contains_key("mcp-session-id") => legacy::post(gw, vs, principal, h, msg).await,
        _ if modern::applies(h, &msg) => {
            if matches!(&msg, Incoming::Request { method, .. } if method == "subscriptions/listen")
            {
                guard = None;
            }
            modern::post(gw, vs, principal, h, msg).await
        }
        Incoming::Request { id, .. } => legacy::session_required(Some(id)),
        _ => legacy::session_required(None),
    };
    match guard {
        Some(g) => resp.map(|b| Body::new(drain::Guarded::new(b, g))),
        None => resp,
    }
}

async fn healthz(State(gw): State<Arc<Gateway>>) -> Json<serde_json::Value> {
    Json(gw.health(false))
}

async fn healthz_detail(State(gw): State<Arc<Gateway>>) -> Json<serde_json::Value> {
    Json(gw.health(true))
}

/// Serve until `shutdown` resolves, then drain: stop accepting connections, let in-flight MCP
/// requests finish for up to `gateway.shutdown_grace`, close the remaining streams and sessions,
/// and stop every connector (their process groups included).
pub async fn serve(
    listener: tokio::net::TcpListener,
    gw: Arc<Gateway>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = app(gw.clone());
    let grace = gw.config().gateway.shutdown_grace;
    let g = gw.clone();
    let signal = async move {
        shutdown.await;
        let left = g.inflight.count();
        if left > 0 {
            tracing::info!(requests = left, ?grace, "waiting for in-flight requests");
        }
        if tokio::time::timeout(grace, g.inflight.idle())
            .await
            .is_err()
        {
            tracing::warn!(
                requests = g.inflight.count(),
                "grace period over; closing the remaining requests"
            );
        }
        // Ends the event streams and sessions, so the server's own drain can complete.
        g.shutdown.cancel();
    };
    // Responses are often written in several pieces (headers, SSE events); without NODELAY the
    // second write waits for the client's delayed ACK (~40 ms per request).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(signal)
        .await;
    gw.shutdown().await;
    result
}
