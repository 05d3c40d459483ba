//! The inbound side: the running `Gateway` (connectors and virtual servers, swapped whole on
//! reload), one rmcp Streamable HTTP service per virtual server at `/mcp/{name}`, fan-out of
//! upstream events to client sessions, and the health endpoints.

#![allow(deprecated)] // legacy-era logging notifications are relayed

mod drain;
mod fast;
mod handler;
mod mrtr;
mod sessions;

use std::{
    collections::BTreeMap,
    future::Future,
    sync::{Arc, Mutex},
};

use arc_swap::ArcSwap;
use axum::{
    Json, Router,
    body::Body,
    extract::{Path, Request, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{any, get},
};
use config::{Config, ConnectorId, GatewaySettings};
use rmcp::transport::{
    StreamableHttpServerConfig, StreamableHttpService,
    streamable_http_server::session::local::{LocalSessionManager, SessionConfig},
};
use router::{Changes, VirtualServer};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use upstream::{Connector, EnvLookup, HealthState, UpstreamEvent};

pub use handler::{SessionHandler, to_error};
pub use sessions::Sessions;

type McpService = StreamableHttpService<SessionHandler, LocalSessionManager>;

#[derive(Clone)]
struct Service {
    http: Arc<McpService>,
    sessions: Arc<LocalSessionManager>,
}

/// Everything that a config reload replaces at once.
struct Runtime {
    config: Arc<Config>,
    connectors: BTreeMap<ConnectorId, Arc<Connector>>,
    servers: BTreeMap<String, Arc<VirtualServer>>,
    /// Shared, not cloned per request: cloning copies the config's host and origin lists.
    services: BTreeMap<String, Service>,
}

pub struct Gateway {
    runtime: ArcSwap<Runtime>,
    /// Serialises reloads; never held across `.await`.
    apply_lock: Mutex<()>,
    pub sessions: Sessions,
    events: broadcast::Sender<UpstreamEvent>,
    env: EnvLookup,
    shutdown: CancellationToken,
    /// MCP requests whose response is still being produced (for the shutdown drain).
    inflight: drain::Inflight,
    /// Upstream sessions of `sessions = "per_client"` connectors, by client session.
    pub pool: Arc<upstream::Pool>,
    /// The gateway's own data path: relayed requests and calls in flight there.
    relays: fast::Relays,
    /// Calls of modern clients parked between MRTR rounds.
    bridge: mrtr::Bridge,
}

impl Gateway {
    /// Start every eager connector and the event fan-out. Needs a Tokio runtime.
    pub fn start(config: Config, env: EnvLookup) -> Arc<Self> {
        let (events, _) = broadcast::channel(4096);
        let pool = Arc::new(upstream::Pool::new(env.clone(), events.clone()));
        let gw = Arc::new(Self {
            runtime: ArcSwap::from_pointee(Runtime {
                config: Arc::new(config.clone()),
                connectors: BTreeMap::new(),
                servers: BTreeMap::new(),
                services: BTreeMap::new(),
            }),
            apply_lock: Mutex::new(()),
            sessions: Sessions::default(),
            events,
            pool,
            env,
            shutdown: CancellationToken::new(),
            inflight: drain::Inflight::default(),
            relays: fast::Relays::default(),
            bridge: mrtr::Bridge::default(),
        });
        tokio::spawn(fan_out(Arc::downgrade(&gw), gw.events.subscribe()));
        tokio::spawn(expire_idle(Arc::downgrade(&gw)));
        gw.apply_inner(config, true);
        gw
    }

    pub fn config(&self) -> Arc<Config> {
        self.runtime.load().config.clone()
    }

    pub fn virtual_server(&self, name: &str) -> Option<Arc<VirtualServer>> {
        self.runtime.load().servers.get(name).cloned()
    }

    pub fn connectors(&self) -> Vec<Arc<Connector>> {
        self.runtime.load().connectors.values().cloned().collect()
    }

    pub fn servers(&self) -> Vec<Arc<VirtualServer>> {
        self.runtime.load().servers.values().cloned().collect()
    }

    /// Apply a new, already validated config: unchanged connectors keep running (and their
    /// sessions), changed ones restart, removed ones stop; clients whose lists changed are told.
    pub fn apply(self: &Arc<Self>, config: Config) {
        self.apply_inner(config, false);
    }

    fn apply_inner(self: &Arc<Self>, config: Config, first: bool) {
        let _guard = self.apply_lock.lock().expect("apply lock");
        let old = self.runtime.load_full();
        let mut connectors = BTreeMap::new();
        for (id, spec) in &config.connectors {
            match old.connectors.get(id) {
                Some(c) if c.spec() == spec => {
                    connectors.insert(id.clone(), c.clone());
                }
                prev => {
                    if let Some(p) = prev {
                        tracing::info!(connector = %id, "connector changed; restarting it");
                        p.shutdown();
                    } else if !first {
                        tracing::info!(connector = %id, "connector added");
                    }
                    let c = Connector::start(spec.clone(), self.events.clone(), self.env.clone());
                    connectors.insert(id.clone(), Arc::new(c));
                }
            }
        }
        for (id, c) in &old.connectors {
            if !connectors.contains_key(id) {
                tracing::info!(connector = %id, "connector removed; stopping it");
                c.shutdown();
            }
        }
        let all: Vec<Arc<Connector>> = connectors.values().cloned().collect();
        // Per-client sessions of removed, reconfigured or now-shared connectors stop.
        self.pool.retain(|spec| {
            config
                .connectors
                .get(&spec.id)
                .is_some_and(|s| s.sessions == config::SessionMode::PerClient)
        });
        let http_changed = old.config.gateway != config.gateway;
        let mut servers = BTreeMap::new();
        let mut services = BTreeMap::new();
        let mut notify = Vec::new();
        for (name, spec) in &config.servers {
            let vs = Arc::new(VirtualServer::new(
                spec.clone(),
                &all,
                self.pool.clone(),
                config.gateway.page_size,
            ));
            if let Some(prev) = old.servers.get(name) {
                let changes = vs.catalog().changes_from(&prev.catalog());
                if changes.any() {
                    notify.push((name.clone(), changes));
                }
            }
            let service = match old.services.get(name) {
                Some(s) if !http_changed => s.clone(),
                _ => self.mcp_service(name, &config.gateway),
            };
            servers.insert(name.clone(), vs);
            services.insert(name.clone(), service);
        }
        for name in old
            .servers
            .keys()
            .filter(|n| !config.servers.contains_key(*n))
        {
            tracing::info!(server = %name, "virtual server removed");
        }
        self.runtime.store(Arc::new(Runtime {
            config: Arc::new(config),
            connectors,
            servers,
            services,
        }));
        for (name, changes) in notify {
            self.notify_changes(&name, changes);
        }
    }

    fn mcp_service(self: &Arc<Self>, name: &str, g: &GatewaySettings) -> Service {
        let mut sessions = LocalSessionManager::default();
        sessions.session_config = {
            let mut c = SessionConfig::default();
            // Idle expiry is ours (`expire_idle`): requests on the gateway's own data path
            // never reach rmcp's session, so its timer would close busy sessions.
            c.keep_alive = None;
            c
        };
        let sessions = Arc::new(sessions);
        let mut cfg = StreamableHttpServerConfig::default()
            .with_allowed_hosts(g.allowed_hosts.clone())
            .with_allowed_origins(g.allowed_origins.clone())
            .with_sse_keep_alive(Some(g.sse_keep_alive))
            .with_max_request_body_bytes(g.max_body_bytes)
            .with_cancellation_token(self.shutdown.child_token());
        // Browsers send Origin; with no allow-list every present Origin is refused (403).
        cfg = cfg.enforce_origin_validation();
        let gw = Arc::downgrade(self);
        let server: Arc<str> = name.into();
        let http = StreamableHttpService::new(
            move || {
                let id = gw
                    .upgrade()
                    .map(|g| g.sessions.next_id())
                    .unwrap_or_default();
                Ok(SessionHandler::new(gw.clone(), server.clone(), id))
            },
            sessions.clone(),
            cfg,
        );
        Service {
            http: Arc::new(http),
            sessions,
        }
    }

    pub fn notify_changes(&self, server: &str, changes: Changes) {
        let peers = self.sessions.peers_of(server);
        let listeners = self.sessions.listeners_of(server);
        if !listeners.is_empty() {
            // Each stream sends only what its client asked for; the rest is refused quietly.
            tokio::spawn(async move {
                for sink in listeners {
                    if changes.tools {
                        let _ = sink.notify_tool_list_changed().await;
                    }
                    if changes.prompts {
                        let _ = sink.notify_prompt_list_changed().await;
                    }
                    if changes.resources {
                        let _ = sink.notify_resource_list_changed().await;
                    }
                }
            });
        }
        if peers.is_empty() {
            return;
        }
        tracing::debug!(
            server,
            ?changes,
            sessions = peers.len(),
            "notifying list changes"
        );
        tokio::spawn(async move {
            for (_, peer) in peers {
                if changes.tools {
                    let _ = peer.notify_tool_list_changed().await;
                }
                if changes.prompts {
                    let _ = peer.notify_prompt_list_changed().await;
                }
                if changes.resources {
                    let _ = peer.notify_resource_list_changed().await;
                }
            }
        });
    }

    /// Stop accepting MCP traffic and stop every connector and per-client session, waiting (at
    /// most 10 s) until their process groups are gone.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        let mut all: Vec<Arc<Connector>> =
            self.runtime.load().connectors.values().cloned().collect();
        all.extend(self.pool.shutdown());
        for c in &all {
            c.shutdown();
        }
        let stopped = futures::future::join_all(all.iter().map(|c| c.stopped()));
        if tokio::time::timeout(std::time::Duration::from_secs(10), stopped)
            .await
            .is_err()
        {
            tracing::warn!("some connectors did not stop within 10s");
        }
    }

    /// JSON health: `status` is `ok` when every connector is up, else `degraded`.
    pub fn health(&self, detailed: bool) -> serde_json::Value {
        let rt = self.runtime.load();
        let mut all_up = true;
        let per_client = self.pool.counts();
        let mut connectors = serde_json::Map::new();
        for (id, c) in &rt.connectors {
            let h = c.health();
            // A lazy connector that nobody has used yet is healthy.
            all_up &= matches!(h.state, HealthState::Up | HealthState::Idle);
            let v = if detailed {
                let mut v = serde_json::to_value(&h).unwrap_or_default();
                if c.spec().sessions == config::SessionMode::PerClient {
                    v["per_client_sessions"] =
                        serde_json::json!(per_client.get(id).copied().unwrap_or(0));
                }
                v
            } else {
                serde_json::json!(h.state)
            };
            connectors.insert(id.to_string(), v);
        }
        let mut out = serde_json::json!({
            "status": if all_up { "ok" } else { "degraded" },
            "connectors": connectors,
        });
        if detailed {
            let servers: serde_json::Map<String, serde_json::Value> = rt
                .servers
                .iter()
                .map(|(n, vs)| {
                    let cat = vs.catalog();
                    (
                        n.clone(),
                        serde_json::json!({
                            "path": format!("/mcp/{n}"),
                            "connectors": vs.spec.connectors.iter().map(|u| u.connector.as_str()).collect::<Vec<_>>(),
                            "tools": cat.tools.len(),
                            "prompts": cat.prompts.len(),
                            "resources": cat.resources.len(),
                            "resource_templates": cat.resource_templates.len(),
                            "conflicts": cat.conflicts,
                            "sessions": self.sessions.peers_of(n).len(),
                        }),
                    )
                })
                .collect();
            out["servers"] = serde_json::Value::Object(servers);
        }
        out
    }
}

/// Deliver upstream events to the sessions they concern.
async fn fan_out(gw: std::sync::Weak<Gateway>, mut rx: broadcast::Receiver<UpstreamEvent>) {
    loop {
        let ev = match rx.recv().await {
            Ok(ev) => ev,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "event fan-out lagged; rebuilding every catalog");
                if let Some(gw) = gw.upgrade() {
                    for vs in gw.servers() {
                        let ch = vs.rebuild();
                        if ch.any() {
                            gw.notify_changes(vs.name(), ch);
                        }
                    }
                }
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let Some(gw) = gw.upgrade() else { return };
        deliver(&gw, ev).await;
    }
}

/// Hand one upstream event to the clients it concerns: everyone it is about, or, for a
/// per-client upstream session's event, its own client alone.
async fn deliver(gw: &Gateway, ev: UpstreamEvent) {
    let (ev, only) = match ev {
        UpstreamEvent::ForSession(session, ev) => (*ev, Some(session)),
        ev => (ev, None),
    };
    let concerns = |id: u64| only.is_none_or(|o| o == id);
    match ev {
        // Lists and health come from the shared instance.
        UpstreamEvent::CatalogChanged(_) | UpstreamEvent::HealthChanged(..) if only.is_some() => {}
        UpstreamEvent::ForSession(..) => {}
        UpstreamEvent::CatalogChanged(id) => {
            for vs in gw.servers().into_iter().filter(|vs| vs.uses(&id)) {
                let ch = vs.rebuild();
                if ch.any() {
                    gw.notify_changes(vs.name(), ch);
                }
            }
        }
        UpstreamEvent::ResourceUpdated(id, uri) => {
            for vs in gw.servers().into_iter().filter(|vs| vs.uses(&id)) {
                let exposed = vs.catalog().expose_uri(&id, &uri);
                for (_, sink) in gw
                    .sessions
                    .resource_listeners(vs.name(), &exposed)
                    .into_iter()
                    .filter(|(s, _)| concerns(*s))
                {
                    let _ = sink.notify_resource_updated(exposed.clone()).await;
                }
                for (_, peer) in gw
                    .sessions
                    .subscribers(vs.name(), &exposed)
                    .into_iter()
                    .filter(|(s, _)| concerns(*s))
                {
                    let params = serde_json::from_value(serde_json::json!({ "uri": exposed }))
                        .expect("valid params");
                    let _ = peer.notify_resource_updated(params).await;
                }
            }
        }
        UpstreamEvent::Log(id, params) => {
            for vs in gw.servers().into_iter().filter(|vs| vs.uses(&id)) {
                for (_, peer) in gw
                    .sessions
                    .log_listeners(vs.name(), params.level)
                    .into_iter()
                    .filter(|(s, _)| concerns(*s))
                {
                    let _ = peer.notify_logging_message(params.clone()).await;
                }
            }
        }
        UpstreamEvent::HealthChanged(..) => {}
    }
}

/// The HTTP app: `/mcp/{server}`, `/healthz`, `/healthz/detail`.
pub fn app(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/mcp/{server}", any(mcp))
        .route("/healthz", get(healthz))
        .route("/healthz/detail", get(healthz_detail))
        .with_state(gw)
}

async fn mcp(State(gw): State<Arc<Gateway>>, Path(server): Path<String>, req: Request) -> Response {
    let service = gw.runtime.load().services.get(&server).cloned();
    let Some(service) = service else {
        let known: Vec<String> = gw
            .runtime
            .load()
            .servers
            .keys()
            .map(|k| format!("/mcp/{k}"))
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
    // A GET is the long-lived notification stream, not work to wait for when draining.
    let guard = (req.method() != axum::http::Method::GET).then(|| gw.inflight.enter());
    let key = req
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(k) = &key {
        gw.sessions.touch(k);
    }
    let resp = match fast::handle(&gw, &server, req).await {
        fast::Outcome::Done(r) => r,
        fast::Outcome::Rmcp(req) => {
            let resp = service.http.handle(req).await.map(Body::new);
            if key.is_none()
                && let Some(k) = resp
                    .headers()
                    .get("mcp-session-id")
                    .and_then(|v| v.to_str().ok())
            {
                gw.sessions.track(k, &server);
            }
            resp
        }
    };
    match guard {
        Some(g) => resp.map(|b| Body::new(drain::Guarded::new(b, g))),
        None => resp,
    }
}

/// Close sessions without a request for `gateway.session_idle_timeout`.
async fn expire_idle(gw: std::sync::Weak<Gateway>) {
    use rmcp::transport::streamable_http_server::session::SessionManager;
    loop {
        let Some(idle) = gw
            .upgrade()
            .map(|g| g.config().gateway.session_idle_timeout)
        else {
            return;
        };
        let tick = (idle / 4).clamp(
            std::time::Duration::from_millis(50),
            std::time::Duration::from_secs(15),
        );
        tokio::time::sleep(tick).await;
        let Some(g) = gw.upgrade() else { return };
        for (server, key) in g.sessions.take_idle(idle) {
            let managers = g
                .runtime
                .load()
                .services
                .get(&*server)
                .map(|s| s.sessions.clone());
            if let Some(m) = managers {
                tracing::debug!(%server, "closing an idle session");
                let _ = m.close_session(&key).await;
            }
        }
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
        // Ends the SSE streams and sessions, so the server's own drain can complete.
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
