//! The HTTP edge: the routes (`/mcp/{server}`, `/healthz`, `/healthz/detail`, `/readyz`, and
//! a pointer to the endpoints at `/` and `/mcp`), the checks every
//! MCP request passes before anything else (the `Caller` extractor: `Host`/`Origin`, then the
//! authentication seam — the only place headers are read for identity), the dispatch of a POST to the legacy or the 2026-07-28 codec, and
//! `serve` with its shutdown drain.

use std::{future::Future, sync::Arc, time::Duration};

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
    Gateway, conn, drain,
    jsonrpc::{self, Incoming},
    legacy, modern,
    origin::Refused,
};

/// The HTTP app: `/mcp/{server}`, `/healthz`, `/healthz/detail`, `/readyz`, a pointer at `/`
/// and `/mcp`; anything else is a 404. Every route applies the same Host/Origin policy.
pub fn app(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/mcp/{server}", any(mcp))
        .route("/healthz", get(healthz))
        .route("/healthz/detail", get(healthz_detail))
        .route("/readyz", get(readyz))
        .route("/", any(pointer))
        .route("/mcp", any(pointer))
        .route("/mcp/", any(pointer))
        .fallback(not_found)
        .with_state(gw)
}

/// A request that passed the Host/Origin checks (DNS-rebinding and cross-site protection).
pub(crate) struct Checked;

impl axum::extract::FromRequestParts<Arc<Gateway>> for Checked {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        gw: &Arc<Gateway>,
    ) -> Result<Self, Response> {
        match refusal(gw.runtime.load().allowed.check(&parts.headers)) {
            None => Ok(Checked),
            Some(r) => Err(r),
        }
    }
}

/// The `Host` check (DNS-rebinding protection) for routes that judge `Origin` themselves, such
/// as the sign-in pages, which their own origin posts to.
/// `None` if the request may go on, else the answer that refuses it.
pub fn check_host(gw: &Gateway, headers: &HeaderMap) -> Option<Response> {
    refusal(gw.runtime.load().allowed.check_host(headers))
}

fn refusal(checked: Result<(), Refused>) -> Option<Response> {
    match checked {
        Ok(()) => None,
        Err(Refused::BadHost) => Some(
            (
                StatusCode::BAD_REQUEST,
                "Bad Request: missing or invalid Host header",
            )
                .into_response(),
        ),
        Err(Refused::Host(h)) => {
            tracing::warn!(host = %h, "refused a request with a Host that is not allowed (possible DNS rebinding)");
            Some((
                    StatusCode::FORBIDDEN,
                    format!("Forbidden: Host {h:?} is not allowed; to serve this host name, add it to gateway.allowed_hosts in the config"),
                )
                    .into_response())
        }
        Err(Refused::Origin(o)) => {
            tracing::warn!(origin = %o, "refused a request from an Origin that is not allowed");
            Some((
                    StatusCode::FORBIDDEN,
                    format!("Forbidden: Origin {o:?} is not allowed; to let pages of this origin call the gateway, add it to gateway.allowed_origins in the config"),
                )
                    .into_response())
        }
    }
}

/// May this request see the gateway's internals (`/healthz/detail`, the list of virtual
/// servers)? Until callers authenticate: only from this machine — a loopback peer whose request
/// was not relayed by a proxy (no `Forwarded`/`X-Forwarded-For`/`X-Real-IP`) — unless
/// `gateway.public_detail` is set.
fn may_see_detail(gw: &Gateway, parts: &http::request::Parts) -> bool {
    detail_allowed(
        gw.config().gateway.public_detail,
        parts.extensions.get::<conn::Peer>().map(|p| p.0),
        &parts.headers,
    )
}

fn detail_allowed(public: bool, peer: Option<std::net::SocketAddr>, h: &HeaderMap) -> bool {
    let local = peer.is_some_and(|p| p.ip().is_loopback());
    let relayed = ["forwarded", "x-forwarded-for", "x-real-ip"]
        .iter()
        .any(|k| h.contains_key(*k));
    public || (local && !relayed)
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
        Checked::from_request_parts(parts, gw).await?;
        match gw.seams.authenticate.authenticate(parts).await {
            Ok(p) => Ok(Caller(Arc::new(p))),
            Err(e) => Err(refused(&e)),
        }
    }
}

/// The answer to a request the authentication seam refused: 401 or 403 with a
/// `WWW-Authenticate: Bearer` challenge that says why (RFC 6750) and where to sign in (RFC 9728).
fn refused(e: &crate::AuthError) -> Response {
    use crate::AuthErrorKind::*;
    // Quoted-string values: printable ASCII without quotes or backslashes.
    let why: String = e
        .message
        .chars()
        .map(|c| match c {
            '"' | '\\' => '\'',
            c if c.is_ascii_graphic() || c == ' ' => c,
            _ => '?',
        })
        .collect();
    let mut params = Vec::new();
    let status = match e.kind {
        Missing => StatusCode::UNAUTHORIZED,
        Invalid => {
            params.push("error=\"invalid_token\"".to_owned());
            params.push(format!("error_description=\"{why}\""));
            StatusCode::UNAUTHORIZED
        }
        InsufficientScope => {
            params.push("error=\"insufficient_scope\"".to_owned());
            params.push(format!("error_description=\"{why}\""));
            StatusCode::FORBIDDEN
        }
    };
    if let Some(c) = &e.challenge {
        params.push(c.clone());
    }
    let challenge = if params.is_empty() {
        "Bearer".to_owned()
    } else {
        format!("Bearer {}", params.join(", "))
    };
    let label = if status == StatusCode::FORBIDDEN {
        "Forbidden"
    } else {
        "Unauthorized"
    };
    // The request's body is not read: the connection cannot serve another request reliably,
    // so say it closes (else a client may send its next request, say the same one with a
    // token, on a connection the server is closing, and see it cut).
    (
        status,
        [
            (header::WWW_AUTHENTICATE, challenge),
            (header::CONNECTION, "close".to_owned()),
        ],
        format!("{label}: {e}"),
    )
        .into_response()
}

async fn mcp(
    State(gw): State<Arc<Gateway>>,
    Caller(principal): Caller,
    Path(server): Path<String>,
    req: Request,
) -> Response {
    let Some(vs) = gw.virtual_server(&server) else {
        let (parts, _) = req.into_parts();
        return no_such_server(&gw, &parts, &format!("no virtual server named {server:?}"));
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

/// The request body, up to `gateway.max_body_bytes` (else 413) within
/// `gateway.body_read_timeout` (else 408).
async fn read_body(gw: &Gateway, body: Body) -> Result<Bytes, Response> {
    let settings = &gw.config().gateway;
    let (max, wait) = (settings.max_body_bytes, settings.body_read_timeout);
    match tokio::time::timeout(wait, axum::body::to_bytes(body, max)).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(_)) => Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body larger than {max} bytes (gateway.max_body_bytes)"),
        )
            .into_response()),
        Err(_) => Err((
            StatusCode::REQUEST_TIMEOUT,
            [(header::CONNECTION, "close")],
            format!("the request body did not arrive within {wait:?} (gateway.body_read_timeout)"),
        )
            .into_response()),
    }
}

/// Whether `Accept` takes both JSON and event streams (`*/*` takes both; `q=0` refuses a type).
/// Read as bytes, in place: this runs on every POST.
fn accepts_both(h: &HeaderMap) -> bool {
    let (mut json, mut sse) = (false, false);
    for value in h.get_all(header::ACCEPT) {
        for part in value.as_bytes().split(|&b| b == b',') {
            let (essence, params) = match part.iter().position(|&b| b == b';') {
                Some(i) => (&part[..i], Some(&part[i + 1..])),
                None => (part, None),
            };
            if params.is_some_and(refuses) {
                continue;
            }
            let essence = essence.trim_ascii();
            let any = essence == b"*/*";
            json |= any || essence.eq_ignore_ascii_case(b"application/json");
            sse |= any || essence.eq_ignore_ascii_case(b"text/event-stream");
        }
    }
    json && sse
}

/// Whether a media range's parameters give it an explicit `q=0` (which excludes the type).
fn refuses(params: &[u8]) -> bool {
    params.split(|&b| b == b';').any(|p| {
        p.trim_ascii()
            .strip_prefix(b"q=")
            .and_then(|q| std::str::from_utf8(q).ok())
            .and_then(|q| q.trim().parse::<f32>().ok())
            .is_some_and(|q| q <= 0.0)
    })
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
    let peer = parts
        .extensions
        .get::<conn::Peer>()
        .map(|p| conn::client_address(p.0.ip(), h, &gw.config().gateway));
    let resp = match &msg {
        Incoming::Request {
            id, method, params, ..
        } if method == "initialize" && !modern::applies(h, &msg) => {
            legacy::initialize(gw, vs, principal, peer, h, id, *params).await
        }
        _ if h.contains_key("mcp-session-id") => {
            legacy::post(gw, vs, principal, peer, h, msg).await
        }
        _ if modern::applies(h, &msg) => {
            if matches!(&msg, Incoming::Request { method, .. } if method == "subscriptions/listen")
            {
                guard = None;
            }
            modern::post(gw, vs, principal, peer, h, msg).await
        }
        Incoming::Request { id, .. } => legacy::session_required(Some(id)),
        _ => legacy::session_required(None),
    };
    match guard {
        Some(g) => resp.map(|b| Body::new(drain::Guarded::new(b, g))),
        None => resp,
    }
}

/// A 404 that lists the virtual servers to those who may see them.
fn no_such_server(gw: &Gateway, parts: &http::request::Parts, error: &str) -> Response {
    let mut body = serde_json::json!({ "error": error });
    if may_see_detail(gw, parts) {
        let known: Vec<String> = gw
            .servers()
            .iter()
            .map(|s| format!("/mcp/{}", s.name()))
            .collect();
        body["available"] = known.into();
    }
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

async fn not_found(State(gw): State<Arc<Gateway>>, _: Checked, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    let error = format!(
        "no route {}: virtual servers are at /mcp/NAME, health at /healthz and /readyz",
        parts.uri.path()
    );
    no_such_server(&gw, &parts, &error)
}

/// `/`, `/mcp`: not an MCP endpoint, so say where the endpoints are (their names only to those
/// who may see the list of servers). A browser or `curl` gets a short text; anything else (an
/// MCP client posting to the wrong URL) a 404 whose JSON-RPC error says the same, so the
/// client shows it.
async fn pointer(State(gw): State<Arc<Gateway>>, _: Checked, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    let base = base_url(&parts.headers);
    let text = if may_see_detail(&gw, &parts) {
        let servers = gw.servers();
        if servers.is_empty() {
            "No virtual server is configured: add a [servers.NAME] table to the config (see docs/config.md).".to_owned()
        } else {
            let mut t = String::from("Connect an MCP client to a virtual server:");
            for vs in &servers {
                t.push_str(&format!("\n  {base}/mcp/{}", vs.name()));
                if let Some(title) = &vs.spec.title {
                    t.push_str(&format!("  ({title})"));
                }
            }
            t
        }
    } else {
        format!(
            "Connect an MCP client to {base}/mcp/NAME, where NAME is a virtual server your administrator gives you."
        )
    };
    if parts.method == Method::GET || parts.method == Method::HEAD {
        let body = format!(
            "This is Manifold, a gateway of Virtual MCP servers. {text}\nHealth: {base}/healthz, readiness: {base}/readyz\n"
        );
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            body,
        )
            .into_response();
    }
    let message = format!(
        "{} is not an MCP endpoint. {}",
        parts.uri.path(),
        text.replace("\n  ", " ")
    );
    let body = serde_json::json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": { "code": -32600, "message": message },
    });
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

/// The gateway's address as the client used it: the `Host` header (already checked against
/// `gateway.allowed_hosts`), https when a proxy says the request came that way.
fn base_url(h: &HeaderMap) -> String {
    let host = h
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("127.0.0.1");
    let https = h
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"))
        || h.get("forwarded")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|f| f.to_ascii_lowercase().contains("proto=https"));
    format!("{}://{host}", if https { "https" } else { "http" })
}

async fn readyz(State(gw): State<Arc<Gateway>>, _: Checked) -> Response {
    let (ready, body) = gw.readiness();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn healthz(State(gw): State<Arc<Gateway>>, _: Checked) -> Json<serde_json::Value> {
    Json(gw.health(false))
}

async fn healthz_detail(State(gw): State<Arc<Gateway>>, _: Checked, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    if !may_see_detail(&gw, &parts) {
        return (
            StatusCode::FORBIDDEN,
            "Forbidden: /healthz/detail is served to this machine only; set gateway.public_detail = true to serve it to every caller",
        )
            .into_response();
    }
    Json(gw.health(true)).into_response()
}

/// Serve until `shutdown` resolves, then drain: let in-flight MCP requests finish for up to
/// `gateway.shutdown_grace` (still answering the requests they need, such as a client's answer
/// to a sampling request), then stop accepting connections, close the remaining streams and
/// sessions, and stop every connector (their process groups included).
pub async fn serve(
    listener: tokio::net::TcpListener,
    gw: Arc<Gateway>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, gw, Router::new(), shutdown).await
}

/// `serve`, with more routes beside the gateway's own (the authorization server's).
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    gw: Arc<Gateway>,
    extra: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = app(gw.clone()).merge(extra);
    let settings = &gw.config().gateway;
    let grace = settings.shutdown_grace;
    let limits = conn::Limits::from_config(settings);
    tracing::debug!(?limits, "connection limits");
    let conns = conn::Connections::new(limits.max_connections);
    let stop = tokio_util::sync::CancellationToken::new();
    let accepting = tokio::spawn(conn::accept(
        listener,
        app,
        limits,
        conns.clone(),
        stop.clone(),
    ));
    shutdown.await;
    let left = gw.inflight.count();
    if left > 0 {
        tracing::info!(requests = left, ?grace, "waiting for in-flight requests");
    }
    if tokio::time::timeout(grace, gw.inflight.idle())
        .await
        .is_err()
    {
        tracing::warn!(
            requests = gw.inflight.count(),
            "grace period over; closing the remaining requests"
        );
    }
    stop.cancel();
    let _ = accepting.await;
    // Connections finish the request they are on and close; event streams and sessions end.
    conns.closing.cancel();
    gw.shutdown.cancel();
    if tokio::time::timeout(Duration::from_secs(5), conns.closed())
        .await
        .is_err()
    {
        tracing::warn!(
            connections = conns.count(),
            "connections still open after the drain; closing them"
        );
    }
    gw.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_must_take_json_and_event_streams() {
        let accepts = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::ACCEPT, v.parse().unwrap());
            }
            accepts_both(&h)
        };
        assert!(accepts(&["application/json, text/event-stream"]));
        assert!(accepts(&["Text/Event-Stream;q=0.5 ,APPLICATION/JSON"]));
        assert!(accepts(&["application/json", "text/event-stream"]));
        assert!(accepts(&["*/*"]));
        assert!(accepts(&[
            "application/json;q=1;charset=utf-8, text/event-stream; q=0.001"
        ]));
        assert!(!accepts(&[]));
        assert!(!accepts(&["application/json"]));
        assert!(!accepts(&["text/event-stream"]));
        assert!(!accepts(&["application/json, text/event-stream;q=0"]));
        // RFC 9110 allows no space around `=` in a weight: this is not one, so it refuses nothing.
        assert!(accepts(&["application/json, text/event-stream; q = 0"]));
        assert!(!accepts(&["*/*;q=0"]));
        assert!(!accepts(&["application/jsonx, text/event-streams"]));
        assert!(!accepts(&["application/json text/event-stream"]));
    }

    #[test]
    fn refusals_carry_the_challenge_rfc_6750_and_9728_describe() {
        let meta = "resource_metadata=\"https://gw/.well-known/oauth-protected-resource/mcp/a\", scope=\"mcp\"";
        let cases = [
            (crate::AuthErrorKind::Missing, 401, format!("Bearer {meta}")),
            (
                crate::AuthErrorKind::Invalid,
                401,
                format!(
                    "Bearer error=\"invalid_token\", error_description=\"it is 'bad'?\", {meta}"
                ),
            ),
            (
                crate::AuthErrorKind::InsufficientScope,
                403,
                format!(
                    "Bearer error=\"insufficient_scope\", error_description=\"it is 'bad'?\", {meta}"
                ),
            ),
        ];
        for (kind, status, challenge) in cases {
            let r = refused(&crate::AuthError {
                message: "it is \"bad\"\n".into(),
                kind,
                challenge: Some(meta.into()),
            });
            assert_eq!(r.status().as_u16(), status, "{kind:?}");
            assert_eq!(
                r.headers()[header::WWW_AUTHENTICATE],
                challenge.as_str(),
                "{kind:?}"
            );
        }
        let bare = refused(&crate::AuthError::invalid("x"));
        assert_eq!(
            bare.headers()[header::WWW_AUTHENTICATE],
            "Bearer error=\"invalid_token\", error_description=\"x\""
        );
    }

    #[test]
    fn detail_is_for_this_machine_unless_public() {
        let lo = Some("127.0.0.1:5000".parse().unwrap());
        let lo6 = Some("[::1]:5000".parse().unwrap());
        let lan = Some("192.0.2.7:5000".parse().unwrap());
        let plain = HeaderMap::new();
        let mut relayed = HeaderMap::new();
        relayed.insert("x-forwarded-for", "198.51.100.1".parse().unwrap());
        assert!(detail_allowed(false, lo, &plain));
        assert!(detail_allowed(false, lo6, &plain));
        assert!(!detail_allowed(false, lan, &plain));
        assert!(
            !detail_allowed(false, lo, &relayed),
            "a local proxy relays others"
        );
        assert!(!detail_allowed(false, None, &plain));
        assert!(detail_allowed(true, lan, &relayed));
    }
}
