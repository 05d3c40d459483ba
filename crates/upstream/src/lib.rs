//! One connector (upstream MCP server): supervision with backoff and a circuit breaker, the
//! rmcp client session, the connector's catalog, health, and request forwarding with id and
//! progress-token remapping and attribution of server→client requests.

// Sampling, roots and logging are deprecated by MCP 2026-07-28 but are what legacy peers use;
// relaying them is this crate's job.
#![allow(deprecated)]

mod downstream;
mod handler;
mod headers;
mod pool;
mod raw;
mod sse;
mod stdio;

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use arc_swap::{ArcSwap, ArcSwapOption};
use config::{ConnectorId, ConnectorSpec, HttpTransport, StartMode, TransportSpec};
use rmcp::{
    RoleClient,
    model::{
        CancelledNotificationParam, ClientRequest, ErrorData, ProgressToken, Prompt, RequestId,
        Resource, ResourceTemplate, ServerCapabilities, ServerResult, Tool,
    },
    service::{Peer, PeerRequestOptions, RunningService, ServiceError},
    transport::{
        StreamableHttpClientTransport, streamable_http_client::StreamableHttpClientTransportConfig,
    },
};
use tokio::sync::{Notify, broadcast, watch};
use tokio_util::sync::CancellationToken;

pub use downstream::{BoxFut, Downstream};
use handler::UpstreamHandler;
pub use pool::Pool;
use raw::RawLink;
pub use serde_json::value::RawValue;

/// Why an upstream request failed. The server crate maps these to JSON-RPC errors.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// The connector is not running (crashed, circuit open, unreachable).
    #[error("connector unavailable: {0}")]
    Unavailable(String),
    /// The upstream answered with a JSON-RPC error; it is relayed as is.
    #[error("upstream error {}: {}", .0.code.0, .0.message)]
    Protocol(ErrorData),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("cancelled by the client")]
    Cancelled,
    #[error("unexpected upstream result: {0}")]
    BadResult(String),
}

/// Connector health, as shown in `/healthz` and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    /// Not started yet (lazy connectors before first use).
    Idle,
    Starting,
    Up,
    /// Failed recently; restarting with backoff.
    Degraded,
    /// Circuit open after repeated failures; one trial start after a cool-down.
    Down,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Health {
    pub state: HealthState,
    pub last_error: Option<String>,
    pub restarts: u64,
    #[serde(with = "unix_secs")]
    pub since: SystemTime,
    pub tools: usize,
    pub prompts: usize,
    pub resources: usize,
    pub resource_templates: usize,
}

mod unix_secs {
    use std::time::SystemTime;
    pub fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        )
    }
}

/// What a connector offers right now. Empty while it is down, so its tools drop out of lists.
#[derive(Debug, Default, Clone)]
pub struct UpstreamCatalog {
    pub capabilities: Option<ServerCapabilities>,
    pub instructions: Option<String>,
    pub tools: Vec<Tool>,
    /// Each tool as the upstream sent it (same order as `tools`), unknown fields included.
    pub tools_json: Vec<Arc<JsonMap>>,
    pub prompts: Vec<Prompt>,
    pub prompts_json: Vec<Arc<JsonMap>>,
    pub resources: Vec<Resource>,
    pub resources_json: Vec<Arc<JsonMap>>,
    pub resource_templates: Vec<ResourceTemplate>,
    pub resource_templates_json: Vec<Arc<JsonMap>>,
}

/// A JSON object as an upstream sent it.
pub type JsonMap = serde_json::Map<String, serde_json::Value>;

/// Events for the rest of the gateway, fanned in from every connector.
#[derive(Debug, Clone)]
pub enum UpstreamEvent {
    CatalogChanged(ConnectorId),
    ResourceUpdated(ConnectorId, String),
    /// A log message not attributable to one in-flight call.
    Log(ConnectorId, rmcp::model::LoggingMessageNotificationParam),
    HealthChanged(ConnectorId, HealthState),
    /// An event of a per-client upstream session: it concerns client session `.0` only.
    ForSession(u64, Box<UpstreamEvent>),
}

/// The downstream side of one forwarded request: whom progress, logs and server→client requests
/// belong to. `session` identifies the client session for attribution.
#[derive(Clone)]
pub struct Caller {
    pub session: u64,
    /// The client's request `_meta` (minus its progress token, which is remapped).
    pub meta: Option<serde_json::Map<String, serde_json::Value>>,
    /// Where progress, logs and server→client requests of the call go.
    pub downstream: Option<Arc<dyn Downstream>>,
    pub progress_token: Option<ProgressToken>,
    pub ct: CancellationToken,
    /// The least severe log level the client wants (its session's `logging/setLevel`, or a
    /// modern request's own `logLevel`); told to 2026-07-28 upstreams per request.
    pub log_level: Option<rmcp::model::LoggingLevel>,
}

/// Why a server→client request has no client to go to.
enum Unattributed {
    /// No client call is in flight on this connection.
    Nobody,
    /// Calls of several client sessions are in flight; guessing could leak data.
    Several(String),
}

impl Unattributed {
    fn message(self) -> String {
        match self {
            Unattributed::Nobody => {
                "no client call is in flight to relay this request to".to_owned()
            }
            Unattributed::Several(m) => m,
        }
    }
}

struct Inflight {
    caller: Caller,
    done: bool,
}

/// How long a finished call's entry lingers for late progress notifications.
const INFLIGHT_LINGER: Duration = Duration::from_secs(2);

/// How a connector looks up the gateway's environment variables (for `env_passthrough`).
pub type EnvLookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// A supervised connector. Dropping it (or `shutdown`) stops its process.
pub struct Connector {
    shared: Arc<Shared>,
}

struct Shared {
    spec: ConnectorSpec,
    health: Mutex<Health>,
    health_tx: watch::Sender<HealthState>,
    peer: ArcSwapOption<Peer<RoleClient>>,
    /// The raw data path of the same connection (set and cleared with `peer`).
    raw: ArcSwapOption<RawLink>,
    /// The era the upstream was found to speak (`era = "auto"`), kept across reconnections:
    /// `Some(true)` for 2026-07-28.
    modern: Mutex<Option<bool>>,
    /// Upstream URIs clients watch. A legacy upstream is told with `resources/subscribe`; a
    /// modern one through the connector's `subscriptions/listen` stream, reopened on change.
    watched: Mutex<std::collections::BTreeSet<String>>,
    watched_changed: Notify,
    /// The last connection attempt probed the era and failed (see `connect`).
    probe_failed: std::sync::atomic::AtomicBool,
    /// The `logging/setLevel` last sent to a legacy upstream (its session has one level).
    log_level: Mutex<Option<rmcp::model::LoggingLevel>>,
    catalog: ArcSwap<UpstreamCatalog>,
    events: broadcast::Sender<UpstreamEvent>,
    /// Keyed by the progress token rmcp put on the upstream request (unique per connection).
    /// Entries stay briefly after the call ends (`done`), because rmcp delivers notifications
    /// on spawned tasks and the last progress may be handled after the response.
    inflight: Mutex<HashMap<ProgressToken, Inflight>>,
    demand: Notify,
    shutdown: CancellationToken,
    /// Cancelled when the supervisor has exited (its process group is gone).
    stopped: CancellationToken,
    /// The process group of a stdio child that is still initializing.
    starting_group: Mutex<Option<nix::unistd::Pid>>,
    /// Serialises catalog refreshes (initial and after each `list_changed`).
    refresh_lock: tokio::sync::Mutex<()>,
    env: EnvLookup,
    last_sweep: Mutex<Instant>,
}

impl Connector {
    /// Create the connector and start its supervisor (eager connectors start at once).
    pub fn start(
        spec: ConnectorSpec,
        events: broadcast::Sender<UpstreamEvent>,
        env: EnvLookup,
    ) -> Self {
        let (health_tx, _) = watch::channel(HealthState::Idle);
        let shared = Arc::new(Shared {
            health: Mutex::new(Health {
                state: HealthState::Idle,
                last_error: None,
                restarts: 0,
                since: SystemTime::now(),
                tools: 0,
                prompts: 0,
                resources: 0,
                resource_templates: 0,
            }),
            health_tx,
            peer: ArcSwapOption::empty(),
            raw: ArcSwapOption::empty(),
            modern: Mutex::new(None),
            watched: Mutex::new(Default::default()),
            watched_changed: Notify::new(),
            log_level: Mutex::new(None),
            probe_failed: std::sync::atomic::AtomicBool::new(false),
            catalog: ArcSwap::from_pointee(UpstreamCatalog::default()),
            events,
            inflight: Mutex::new(HashMap::new()),
            demand: Notify::new(),
            shutdown: CancellationToken::new(),
            stopped: CancellationToken::new(),
            starting_group: Mutex::new(None),
            refresh_lock: tokio::sync::Mutex::new(()),
            env,
            spec,
            last_sweep: Mutex::new(Instant::now()),
        });
        tokio::spawn(supervise(shared.clone()));
        Self { shared }
    }

    pub fn id(&self) -> &ConnectorId {
        &self.shared.spec.id
    }

    pub fn spec(&self) -> &ConnectorSpec {
        &self.shared.spec
    }

    pub fn health(&self) -> Health {
        self.shared.health.lock().expect("health lock").clone()
    }

    pub fn catalog(&self) -> Arc<UpstreamCatalog> {
        self.shared.catalog.load_full()
    }

    /// Ask a lazy connector to start; a no-op once started.
    pub fn demand(&self) {
        self.shared.demand.notify_one();
    }

    /// Wait until the connector is up, or give up after `max` (returns whether it is up).
    pub async fn wait_ready(&self, max: Duration) -> bool {
        self.demand();
        let mut rx = self.shared.health_tx.subscribe();
        let wait = rx.wait_for(|s| {
            matches!(
                s,
                HealthState::Up | HealthState::Degraded | HealthState::Down
            )
        });
        matches!(tokio::time::timeout(max, wait).await, Ok(Ok(s)) if *s == HealthState::Up)
    }

    /// Forward one request with a fresh upstream id and progress token and the call deadline.
    /// Cancelling `caller.ct` sends `notifications/cancelled` upstream and returns `Cancelled`.
    pub async fn request(
        &self,
        req: ClientRequest,
        caller: &Caller,
    ) -> Result<ServerResult, UpstreamError> {
        let shared = &self.shared;
        let peer = self.live_peer().await?;
        let timeout = shared.spec.call_timeout;
        let mut options = PeerRequestOptions::with_timeout(timeout);
        if let Some(meta) = &caller.meta {
            options = options.with_meta(rmcp::model::RequestMetaObject(rmcp::model::MetaObject(
                meta.clone(),
            )));
        }
        // Register the caller before sending: a fast upstream may ask for sampling (or report
        // progress) before `send_cancellable_request` returns. rmcp picks the progress token
        // while sending, so the entry is re-keyed once it is known.
        let mut guard = InflightGuard::register(shared, pending_token(), caller.clone(), true);
        let handle = peer
            .send_cancellable_request(req, options)
            .await
            .map_err(|e| map_service_error(&shared.spec.id, e, timeout))?;
        guard.rekey(handle.progress_token.clone());
        let id = handle.id.clone();
        tokio::select! {
            r = handle.await_response() => r.map_err(|e| map_service_error(&shared.spec.id, e, timeout)),
            _ = caller.ct.cancelled() => {
                cancel_upstream(&peer, id).await;
                Err(UpstreamError::Cancelled)
            }
        }
    }

    /// Forward one request as JSON text: `params` go upstream as given (with the caller's
    /// `_meta` and, if the client asked for progress, a progress token), and the upstream's
    /// result comes back untouched, unknown fields included. Same deadline, cancellation and
    /// attribution as `request`.
    ///
    /// A 2026-07-28 upstream may answer `input_required`: its input requests are put to the
    /// caller's client (as server→client requests, or as the caller's own next MRTR round) and
    /// the request is retried with the answers and the upstream's `requestState`.
    pub async fn raw_request(
        &self,
        method: &str,
        mut params: serde_json::Map<String, serde_json::Value>,
        caller: &Caller,
    ) -> Result<Box<RawValue>, UpstreamError> {
        params.remove("_meta");
        for _round in 0..MAX_INPUT_ROUNDS {
            let result = self.raw_once(method, &params, caller).await?;
            let Some(input) = raw::input_required(&result) else {
                return Ok(result);
            };
            let responses = answer_inputs(caller, input.input_requests).await?;
            params.insert("inputResponses".into(), responses.into());
            match input.request_state {
                Some(s) => params.insert("requestState".into(), s.into()),
                None => params.remove("requestState"),
            };
        }
        Err(UpstreamError::BadResult(format!(
            "the upstream asked for input more than {MAX_INPUT_ROUNDS} times"
        )))
    }

    async fn raw_once(
        &self,
        method: &str,
        params: &serde_json::Map<String, serde_json::Value>,
        caller: &Caller,
    ) -> Result<Box<RawValue>, UpstreamError> {
        let shared = &self.shared;
        self.live_peer().await?;
        let closed = || {
            UpstreamError::Unavailable(format!(
                "connector {:?} closed the connection during the call",
                shared.spec.id.as_str()
            ))
        };
        let link = shared.raw.load_full().ok_or_else(closed)?;
        // A request's own log level (a 2026-07-28 client's) becomes the legacy upstream's.
        if let Some(level) = caller.log_level
            && !link.is_modern()
        {
            self.set_log_level(level, caller).await;
        }
        let id = link.next_id();
        let token = raw::token(id);
        let mut meta = caller.meta.clone().unwrap_or_default();
        if caller.progress_token.is_some() {
            meta.insert("progressToken".into(), token.clone().into());
        }
        let declared = caller.downstream.as_ref().and_then(|d| d.declared());
        link.modern_meta(&mut meta, declared.as_ref());
        if link.is_modern()
            && let Some(level) = caller.log_level
        {
            meta.insert(
                "io.modelcontextprotocol/logLevel".into(),
                serde_json::to_value(level).unwrap_or_default(),
            );
        }
        // The params as given plus this hop's `_meta`, serialised without copying them.
        #[derive(serde::Serialize)]
        struct WithMeta<'a> {
            #[serde(flatten)]
            params: &'a serde_json::Map<String, serde_json::Value>,
            #[serde(rename = "_meta", skip_serializing_if = "serde_json::Map::is_empty")]
            meta: serde_json::Map<String, serde_json::Value>,
        }
        let body =
            serde_json::value::to_raw_value(&WithMeta { params, meta }).expect("params serialise");
        // Registered before sending, so early progress and sampling find their caller.
        let _guard = InflightGuard::register(
            shared,
            ProgressToken(rmcp::model::NumberOrString::String(token.into())),
            caller.clone(),
            false,
        );
        // A modern HTTP upstream wants annotated arguments repeated as Mcp-Param-* headers.
        let headers = match (link.is_modern(), method, params.get("name")) {
            (true, "tools/call", Some(serde_json::Value::String(name))) => {
                let cat = shared.catalog.load();
                match cat.tools.iter().find(|t| t.name == name.as_str()) {
                    Some(t) => headers::param_headers(
                        &t.input_schema,
                        params.get("arguments").unwrap_or(&serde_json::Value::Null),
                    ),
                    None => Vec::new(),
                }
            }
            _ => Vec::new(),
        };
        let mut pending = link
            .send(id, method, &body, caller.downstream.is_some(), headers)
            .ok_or_else(closed)?;
        // Sends notifications/cancelled if this future is dropped before the answer (the
        // client went away).
        let mut abandon = Abandon {
            link: &link,
            id,
            armed: true,
        };
        let deadline = tokio::time::sleep(shared.spec.call_timeout);
        tokio::pin!(deadline);
        let r = loop {
            tokio::select! {
                biased;
                Some(e) = recv_event(&mut pending.events) => forward_event(caller, e).await,
                _ = raw::drive(&mut pending.io) => {}
                r = &mut pending.reply => {
                    // Progress that arrived before the answer goes first.
                    while let Some(e) = pending.events.as_mut().and_then(|rx| rx.try_recv().ok()) {
                        forward_event(caller, e).await;
                    }
                    break match r {
                        Ok(Ok(v)) => Ok(v),
                        Ok(Err(e)) => Err(UpstreamError::Protocol(e)),
                        Err(_) => Err(closed()),
                    };
                }
                _ = &mut deadline => {
                    link.cancel(id, "the gateway's call timeout passed");
                    break Err(UpstreamError::Timeout(shared.spec.call_timeout));
                }
                _ = caller.ct.cancelled() => {
                    link.cancel(id, "cancelled by the client");
                    break Err(UpstreamError::Cancelled);
                }
            }
        };
        abandon.armed = false;
        r
    }

    /// Start watching upstream resource `uri` (a client subscribed to it).
    pub async fn watch(&self, uri: &str, caller: &Caller) -> Result<(), UpstreamError> {
        self.live_peer().await?;
        self.shared
            .watched
            .lock()
            .expect("watched lock")
            .insert(uri.to_owned());
        if self.is_modern() {
            self.shared.watched_changed.notify_one();
            return Ok(());
        }
        let params: rmcp::model::SubscribeRequestParams =
            serde_json::from_value(serde_json::json!({ "uri": uri }))
                .expect("a valid subscribe request");
        self.request(
            ClientRequest::SubscribeRequest(rmcp::model::Request::new(params)),
            caller,
        )
        .await
        .map(|_| ())
    }

    /// Stop watching upstream resource `uri` (nobody subscribes to it any more).
    pub async fn unwatch(&self, uri: &str, caller: &Caller) -> Result<(), UpstreamError> {
        self.shared
            .watched
            .lock()
            .expect("watched lock")
            .remove(uri);
        if self.is_modern() {
            self.shared.watched_changed.notify_one();
            return Ok(());
        }
        let params: rmcp::model::UnsubscribeRequestParams =
            serde_json::from_value(serde_json::json!({ "uri": uri }))
                .expect("a valid unsubscribe request");
        self.request(
            ClientRequest::UnsubscribeRequest(rmcp::model::Request::new(params)),
            caller,
        )
        .await
        .map(|_| ())
    }

    /// Send `logging/setLevel` to a legacy upstream that logs, unless it already has `level`.
    /// (A modern upstream gets the level with each request instead.)
    pub async fn set_log_level(&self, level: rmcp::model::LoggingLevel, caller: &Caller) {
        let logs = self
            .catalog()
            .capabilities
            .as_ref()
            .is_some_and(|c| c.logging.is_some());
        if !logs || self.is_modern() {
            return;
        }
        if self
            .shared
            .log_level
            .lock()
            .expect("level lock")
            .replace(level)
            == Some(level)
        {
            return;
        }
        let params: rmcp::model::SetLevelRequestParams =
            serde_json::from_value(serde_json::json!({ "level": level }))
                .expect("a valid setLevel request");
        let req = ClientRequest::SetLevelRequest(rmcp::model::Request::new(params));
        if let Err(e) = self.request(req, caller).await {
            *self.shared.log_level.lock().expect("level lock") = None;
            tracing::debug!(connector = %self.id(), error = %e, "logging/setLevel not applied");
        }
    }

    fn is_modern(&self) -> bool {
        self.shared
            .raw
            .load()
            .as_ref()
            .is_some_and(|l| l.is_modern())
    }

    async fn live_peer(&self) -> Result<Arc<Peer<RoleClient>>, UpstreamError> {
        if let Some(p) = self.shared.peer.load_full() {
            return Ok(p);
        }
        let state = self.health().state;
        // A connector that has never started (lazy) or is starting gets a bounded wait; one that
        // is failing answers at once, so a dead connector never stalls a client.
        if matches!(state, HealthState::Idle | HealthState::Starting)
            && self.wait_ready(startup_wait(&self.shared.spec)).await
            && let Some(p) = self.shared.peer.load_full()
        {
            return Ok(p);
        }
        let h = self.health();
        Err(UpstreamError::Unavailable(match h.last_error {
            Some(e) => {
                format!("connector {:?} is {:?}: {e}", self.id().as_str(), h.state).to_lowercase()
            }
            None => format!(
                "connector {:?} is not running ({:?})",
                self.id().as_str(),
                h.state
            )
            .to_lowercase(),
        }))
    }

    /// Stop the supervisor and the process (close stdin, SIGTERM, SIGKILL the group).
    pub fn shutdown(&self) {
        self.shared.shutdown.cancel();
    }

    /// Resolves once the supervisor has exited after `shutdown` (its processes are gone).
    pub async fn stopped(&self) {
        self.shared.stopped.cancelled().await;
    }
}

impl Drop for Connector {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
    }
}

fn startup_wait(spec: &ConnectorSpec) -> Duration {
    match &spec.transport {
        TransportSpec::Stdio(_) => Duration::from_secs(60),
        TransportSpec::Http(h) => h.connect_timeout + Duration::from_secs(5),
    }
}

async fn recv_event(
    rx: &mut Option<tokio::sync::mpsc::Receiver<raw::Event>>,
) -> Option<raw::Event> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

tokio::task_local! {
    /// While a modern upstream's input request is put to a client: the upstream's key for it.
    pub static INPUT_KEY: String;
}

/// Rounds of `input_required` a request may take before the gateway gives up.
const MAX_INPUT_ROUNDS: usize = 10;

/// Put a modern upstream's input requests to the caller's client; their answers by key.
async fn answer_inputs(
    caller: &Caller,
    requests: serde_json::Map<String, serde_json::Value>,
) -> Result<serde_json::Map<String, serde_json::Value>, UpstreamError> {
    let Some(client) = &caller.downstream else {
        return Err(UpstreamError::BadResult(
            "the upstream asked for client input, but this request has no client to ask".into(),
        ));
    };
    // All at once: the client (or the MRTR bridge) may gather them into one round.
    let answers = futures::future::join_all(requests.into_iter().map(|(key, req)| async move {
        // The client side may reuse the upstream's key (the MRTR bridge does).
        let answer = INPUT_KEY
            .scope(key.clone(), answer_input(client.as_ref(), req))
            .await;
        (key, answer)
    }))
    .await;
    let mut out = serde_json::Map::new();
    for (key, answer) in answers {
        out.insert(key, answer?);
    }
    Ok(out)
}

/// One input request of a modern upstream, put to `client`; its answer.
async fn answer_input(
    client: &dyn Downstream,
    req: serde_json::Value,
) -> Result<serde_json::Value, UpstreamError> {
    let bad = UpstreamError::BadResult;
    let method = req
        .get("method")
        .and_then(|m| m.as_str())
        .unwrap_or_default()
        .to_owned();
    let params = req.get("params").cloned().unwrap_or_default();
    let caps = client.capabilities();
    let lacks =
        |has: fn(&rmcp::model::ClientCapabilities) -> bool| caps.as_ref().is_some_and(|c| !has(c));
    let refused = |what: &str| {
        UpstreamError::Protocol(ErrorData::invalid_request(
            format!("the client did not declare the {what} capability"),
            None,
        ))
    };
    match method.as_str() {
        "sampling/createMessage" if lacks(|c| c.sampling.is_some()) => {
            return Err(refused("sampling"));
        }
        "elicitation/create" if lacks(|c| c.elicitation.is_some()) => {
            return Err(refused("elicitation"));
        }
        _ => {}
    }
    let answer = match method.as_str() {
        "sampling/createMessage" => {
            let p = serde_json::from_value(params).map_err(|e| bad(e.to_string()))?;
            serde_json::to_value(
                client
                    .create_message(p)
                    .await
                    .map_err(UpstreamError::Protocol)?,
            )
        }
        "elicitation/create" => {
            let p = serde_json::from_value(params).map_err(|e| bad(e.to_string()))?;
            serde_json::to_value(
                client
                    .create_elicitation(p)
                    .await
                    .map_err(UpstreamError::Protocol)?,
            )
        }
        "roots/list" if lacks(|c| c.roots.is_some()) => {
            serde_json::to_value(rmcp::model::ListRootsResult::default())
        }
        "roots/list" => {
            serde_json::to_value(client.list_roots().await.map_err(UpstreamError::Protocol)?)
        }
        other => {
            return Err(bad(format!(
                "the upstream asked for an unsupported input {other:?}"
            )));
        }
    };
    answer.map_err(|e| bad(e.to_string()))
}

/// A message about a raw request, to its client: progress with the client's own token (if it
/// asked for progress), log messages as they are.
async fn forward_event(caller: &Caller, e: raw::Event) {
    let Some(client) = &caller.downstream else {
        return;
    };
    match e {
        raw::Event::Progress(mut p) => {
            if let Some(token) = &caller.progress_token {
                p.progress_token = token.clone();
                client.progress(p).await;
            }
        }
        raw::Event::Log(p) => client.log(p).await,
    }
}

struct Abandon<'a> {
    link: &'a Arc<RawLink>,
    id: u64,
    armed: bool,
}

impl Drop for Abandon<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.link.cancel(self.id, "the client went away");
        }
    }
}

struct InflightGuard {
    shared: Arc<Shared>,
    token: ProgressToken,
    /// Keep the entry a while after the call for late progress (rmcp's typed path, which may
    /// hand over the response before a progress notification). A raw request's progress is
    /// taken in arrival order before its answer, so its entry goes at once.
    linger: bool,
}

/// A placeholder key for a call whose upstream progress token is not known yet.
fn pending_token() -> ProgressToken {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    ProgressToken(rmcp::model::NumberOrString::String(
        format!("manifold-pending-{n}").into(),
    ))
}

impl InflightGuard {
    fn rekey(&mut self, token: ProgressToken) {
        let mut map = self.shared.inflight.lock().expect("inflight lock");
        if let Some(e) = map.remove(&self.token) {
            map.insert(token.clone(), e);
        }
        self.token = token;
    }

    fn register(shared: &Arc<Shared>, token: ProgressToken, caller: Caller, linger: bool) -> Self {
        shared.inflight.lock().expect("inflight lock").insert(
            token.clone(),
            Inflight {
                caller,
                done: false,
            },
        );
        Self {
            shared: shared.clone(),
            token,
            linger,
        }
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        let mut map = self.shared.inflight.lock().expect("inflight lock");
        if !self.linger {
            map.remove(&self.token);
            return;
        }
        if let Some(e) = map.get_mut(&self.token) {
            e.done = true;
        }
        drop(map);
        // Forget the entry after the linger period; the sweep keeps the map bounded.
        let now = Instant::now();
        let mut last = self.shared.last_sweep.lock().expect("sweep lock");
        if now.duration_since(*last) >= INFLIGHT_LINGER {
            *last = now;
            let finished: Vec<ProgressToken> = self
                .shared
                .inflight
                .lock()
                .expect("inflight lock")
                .iter()
                .filter(|(_, e)| e.done)
                .map(|(t, _)| t.clone())
                .collect();
            let weak = Arc::downgrade(&self.shared);
            tokio::spawn(async move {
                tokio::time::sleep(INFLIGHT_LINGER).await;
                if let Some(shared) = weak.upgrade() {
                    let mut map = shared.inflight.lock().expect("inflight lock");
                    for t in finished {
                        map.remove(&t);
                    }
                }
            });
        }
    }
}

async fn cancel_upstream(peer: &Peer<RoleClient>, id: RequestId) {
    let param: CancelledNotificationParam = serde_json::from_value(serde_json::json!({
        "requestId": id, "reason": "cancelled by the client"
    }))
    .expect("a valid cancelled notification");
    let _ = peer.notify_cancelled(param).await;
}

fn map_service_error(id: &ConnectorId, e: ServiceError, timeout: Duration) -> UpstreamError {
    match e {
        ServiceError::McpError(data) => UpstreamError::Protocol(data),
        ServiceError::Timeout { .. } => UpstreamError::Timeout(timeout),
        ServiceError::Cancelled { .. } => UpstreamError::Cancelled,
        ServiceError::TransportClosed | ServiceError::TransportSend(_) => {
            UpstreamError::Unavailable(format!(
                "connector {:?} closed the connection during the call",
                id.as_str()
            ))
        }
        ServiceError::UnexpectedResponse => {
            UpstreamError::BadResult("the upstream answered with the wrong result type".into())
        }
        other => UpstreamError::Unavailable(format!("connector {:?}: {other}", id.as_str())),
    }
}

/// A live connection plus what must be stopped with it.
struct Connection {
    running: RunningService<RoleClient, UpstreamHandler>,
    raw: Arc<RawLink>,
    child: Option<(tokio::process::Child, Option<nix::unistd::Pid>)>,
}

impl Shared {
    fn set_health(&self, state: HealthState, error: Option<String>) {
        let mut h = self.health.lock().expect("health lock");
        let changed = h.state != state;
        if changed {
            h.since = SystemTime::now();
        }
        h.state = state;
        if error.is_some() || state == HealthState::Up {
            h.last_error = error.clone();
        }
        drop(h);
        if changed {
            match (&error, state) {
                (Some(e), _) => {
                    tracing::warn!(connector = %self.spec.id, state = ?state, error = %e, "connector health changed")
                }
                (None, _) => {
                    tracing::info!(connector = %self.spec.id, state = ?state, "connector health changed")
                }
            }
            let _ = self.health_tx.send(state);
            let _ = self
                .events
                .send(UpstreamEvent::HealthChanged(self.spec.id.clone(), state));
        }
    }

    fn publish_catalog(&self, cat: UpstreamCatalog) {
        {
            let mut h = self.health.lock().expect("health lock");
            h.tools = cat.tools.len();
            h.prompts = cat.prompts.len();
            h.resources = cat.resources.len();
            h.resource_templates = cat.resource_templates.len();
        }
        self.catalog.store(Arc::new(cat));
        let _ = self
            .events
            .send(UpstreamEvent::CatalogChanged(self.spec.id.clone()));
    }

    /// Open a connection. If probing the era (`era = "auto"`, nothing known yet) fails, the
    /// next attempt uses `initialize` directly (some legacy servers trip up on the probe), and
    /// if that fails too, the one after probes again.
    async fn connect(self: &Arc<Self>) -> Result<Connection, String> {
        let lifecycle = self.lifecycle();
        let probing = matches!(lifecycle, rmcp::ClientLifecycleMode::Auto { .. });
        let result = self.connect_with(lifecycle).await;
        if result.is_err() && self.modern.lock().expect("era lock").is_none() {
            self.probe_failed
                .store(probing, std::sync::atomic::Ordering::Relaxed);
        }
        result
    }

    async fn connect_with(
        self: &Arc<Self>,
        lifecycle: rmcp::ClientLifecycleMode,
    ) -> Result<Connection, String> {
        let cell = Arc::new(std::sync::OnceLock::new());
        let handler = UpstreamHandler::new(Arc::downgrade(self), cell.clone());
        match &self.spec.transport {
            TransportSpec::Stdio(s) => {
                let env = self.env.clone();
                let (lines, lines_rx) = tokio::sync::mpsc::channel(1024);
                let raw = RawLink::new(raw::RawOut::Lines(lines));
                let _ = cell.set(raw.clone());
                self.attach_logs(&raw);
                let spawned = stdio::spawn(&self.spec.id, s, &|k| env(k), raw.clone(), lines_rx)
                    .map_err(|e| e.to_string())?;
                let stdio::Spawned {
                    mut child,
                    pgid,
                    stdin,
                    stdout,
                } = spawned;
                *self.starting_group.lock().expect("group lock") = pgid;
                let init = rmcp::serve_client_with_lifecycle(handler, (stdout, stdin), lifecycle);
                let init_timeout = Duration::from_secs(60);
                tokio::select! {
                    r = tokio::time::timeout(init_timeout, init) => match r {
                        Ok(Ok(running)) => Ok(Connection { running, raw, child: Some((child, pgid)) }),
                        Ok(Err(e)) => {
                            let status = child.try_wait().ok().flatten();
                            stdio::terminate(child, pgid, Duration::from_millis(500)).await;
                            Err(match status {
                                Some(st) => format!("process exited during initialize ({st})"),
                                None => format!("initialize failed: {e}"),
                            })
                        }
                        Err(_) => {
                            stdio::terminate(child, pgid, Duration::from_millis(500)).await;
                            Err(format!("no answer to initialize within {init_timeout:?}"))
                        }
                    },
                    st = child.wait() => {
                        stdio::signal_group(pgid, nix::sys::signal::Signal::SIGKILL);
                        Err(match st {
                            Ok(st) => format!("process exited during initialize ({st})"),
                            Err(e) => format!("process failed: {e}"),
                        })
                    }
                }
            }
            TransportSpec::Http(h) => {
                let client = reqwest::Client::builder()
                    .connect_timeout(h.connect_timeout)
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .map_err(|e| format!("cannot build HTTP client: {e}"))?;
                let mut headers = HashMap::new();
                for (k, v) in &h.headers {
                    let name = http::HeaderName::try_from(k.as_str())
                        .map_err(|_| format!("invalid header name {k:?}"))?;
                    let value = http::HeaderValue::try_from(v.expose())
                        .map_err(|_| format!("invalid value for header {k:?}"))?;
                    headers.insert(name, value);
                }
                let budget = h.connect_timeout + Duration::from_secs(5);
                if h.transport != HttpTransport::Sse {
                    let config = StreamableHttpClientTransportConfig::with_uri(h.url.clone())
                        .custom_headers(headers.clone())
                        .max_concurrent_requests(1024);
                    let seen = Arc::new(Mutex::new(raw::Seen::default()));
                    let recording = raw::Recording {
                        inner: client.clone(),
                        seen: seen.clone(),
                    };
                    let (inject, injected) = tokio::sync::mpsc::channel(256);
                    let transport = raw::Injecting {
                        inner: StreamableHttpClientTransport::with_client(recording, config),
                        injected,
                    };
                    let raw = RawLink::new(raw::RawOut::Http(raw::HttpOut {
                        client: client.clone(),
                        url: reqwest::Url::parse(&h.url)
                            .map_err(|e| format!("invalid url {:?}: {e}", h.url))?,
                        headers: headers.clone(),
                        seen,
                        inject,
                    }));
                    let _ = cell.set(raw.clone());
                    self.attach_logs(&raw);
                    let attempt = tokio::time::timeout(
                        budget + Duration::from_secs(10),
                        rmcp::serve_client_with_lifecycle(handler, transport, lifecycle),
                    )
                    .await;
                    match attempt {
                        Ok(Ok(running)) => {
                            return Ok(Connection {
                                running,
                                raw,
                                child: None,
                            });
                        }
                        Ok(Err(e)) if h.transport == HttpTransport::Streamable => {
                            return Err(format!("initialize failed: {e}"));
                        }
                        Err(_) if h.transport == HttpTransport::Streamable => {
                            return Err(format!(
                                "no answer to initialize from {} within {budget:?}",
                                h.url
                            ));
                        }
                        Ok(Err(e)) => {
                            tracing::info!(connector = %self.spec.id, error = %e, "streamable HTTP failed; trying the legacy HTTP+SSE transport")
                        }
                        Err(_) => {
                            tracing::info!(connector = %self.spec.id, "streamable HTTP timed out; trying the legacy HTTP+SSE transport")
                        }
                    }
                }
                let cell = Arc::new(std::sync::OnceLock::new());
                let handler = UpstreamHandler::new(Arc::downgrade(self), cell.clone());
                let (transport, raw) =
                    sse::connect(client, &h.url, headers, h.connect_timeout).await?;
                let _ = cell.set(raw.clone());
                self.attach_logs(&raw);
                match tokio::time::timeout(budget, rmcp::serve_client(handler, transport)).await {
                    Ok(Ok(running)) => Ok(Connection {
                        running,
                        raw,
                        child: None,
                    }),
                    Ok(Err(e)) => Err(format!("initialize over HTTP+SSE failed: {e}")),
                    Err(_) => Err(format!(
                        "no answer to initialize over HTTP+SSE within {budget:?}"
                    )),
                }
            }
        }
    }

    /// Re-read every list and publish the result. Refreshes run one at a time (the async lock
    /// is held through publishing), so an older refresh never publishes after a newer one; a
    /// refresh of a connection that has since closed publishes nothing.
    async fn refresh_and_publish(
        &self,
        peer: &Peer<RoleClient>,
        link: &Arc<RawLink>,
    ) -> Result<(), String> {
        let _one_at_a_time = self.refresh_lock.lock().await;
        let cat = self.fetch_catalog(peer, link).await?;
        if peer.is_transport_closed() {
            return Err("the connection closed during the refresh".into());
        }
        self.publish_catalog(cat);
        Ok(())
    }

    /// Every list the upstream offers (all pages). Lists it lacks stay empty.
    async fn fetch_catalog(
        &self,
        peer: &Peer<RoleClient>,
        link: &Arc<RawLink>,
    ) -> Result<UpstreamCatalog, String> {
        let t = self.spec.call_timeout;
        let info = peer.peer_info();
        let caps = info
            .as_ref()
            .map(|i| i.capabilities.clone())
            .unwrap_or_default();
        // Lists are read raw, so fields rmcp does not model reach clients too.
        let (tools, tools_json) = if caps.tools.is_some() {
            raw::list_all(link, "tools/list", "tools", t).await?
        } else {
            Default::default()
        };
        let (prompts, prompts_json) = if caps.prompts.is_some() {
            raw::list_all(link, "prompts/list", "prompts", t).await?
        } else {
            Default::default()
        };
        let ((resources, resources_json), (resource_templates, resource_templates_json)) =
            if caps.resources.is_some() {
                (
                    raw::list_all(link, "resources/list", "resources", t).await?,
                    // Optional for servers; one that lacks it has no templates.
                    raw::list_all(link, "resources/templates/list", "resourceTemplates", t)
                        .await
                        .unwrap_or_default(),
                )
            } else {
                Default::default()
            };
        Ok(UpstreamCatalog {
            instructions: info.as_ref().and_then(|i| i.instructions.clone()),
            capabilities: Some(caps),
            tools,
            tools_json,
            prompts,
            prompts_json,
            resources,
            resources_json,
            resource_templates,
            resource_templates_json,
        })
    }

    /// Refresh after an upstream `list_changed`, keeping the rest of the catalog.
    async fn refresh_after_change(&self, peer: &Peer<RoleClient>, link: &Arc<RawLink>) {
        if let Err(e) = self.refresh_and_publish(peer, link).await {
            tracing::warn!(connector = %self.spec.id, error = %e, "refreshing the catalog after list_changed failed");
        }
    }

    /// The upstream resources clients watch.
    fn watched_uris(&self) -> Vec<String> {
        let watched = self.watched.lock().expect("watched lock");
        watched.iter().cloned().collect()
    }

    /// The caller of raw request `origin` if known (it arrived on that call's own exchange),
    /// else the single client session with calls in flight.
    fn caller_for(&self, origin: Option<u64>) -> Result<Caller, Unattributed> {
        if let Some(n) = origin {
            let token = ProgressToken(rmcp::model::NumberOrString::String(raw::token(n).into()));
            if let Some(e) = self.inflight.lock().expect("inflight lock").get(&token)
                && !e.done
                && e.caller.downstream.is_some()
            {
                return Ok(e.caller.clone());
            }
        }
        self.attributed_caller()
    }

    /// The single client session that has calls in flight, if there is exactly one.
    fn attributed_caller(&self) -> Result<Caller, Unattributed> {
        let inflight = self.inflight.lock().expect("inflight lock");
        let mut found: Option<&Caller> = None;
        for c in inflight
            .values()
            .filter(|e| !e.done)
            .map(|e| &e.caller)
            .filter(|c| c.downstream.is_some())
        {
            match found {
                Some(f) if f.session != c.session => {
                    return Err(Unattributed::Several(format!(
                        "manifold cannot tell which client this request is for: several clients have calls in flight on connector {:?} (set sessions = \"per_client\" on it)",
                        self.spec.id.as_str()
                    )));
                }
                _ => found = Some(c),
            }
        }
        found.cloned().ok_or(Unattributed::Nobody)
    }

    /// How to open the next connection: the configured era, or the one found before.
    fn lifecycle(&self) -> rmcp::ClientLifecycleMode {
        let modern = || rmcp::ClientLifecycleMode::Discover {
            preferred_versions: vec![rmcp::model::ProtocolVersion::V_2026_07_28],
        };
        match (self.spec.era, *self.modern.lock().expect("era lock")) {
            (config::Era::Legacy, _) | (config::Era::Auto, Some(false)) => {
                rmcp::ClientLifecycleMode::Initialize
            }
            (config::Era::Modern, _) | (config::Era::Auto, Some(true)) => modern(),
            (config::Era::Auto, None)
                if self.probe_failed.load(std::sync::atomic::Ordering::Relaxed) =>
            {
                rmcp::ClientLifecycleMode::Initialize
            }
            (config::Era::Auto, None) => rmcp::ClientLifecycleMode::Auto {
                preferred_versions: vec![rmcp::model::ProtocolVersion::V_2026_07_28],
                legacy_version: None,
            },
        }
    }

    /// Log messages of this connection go with the raw call they are about.
    fn attach_logs(self: &Arc<Self>, link: &Arc<RawLink>) {
        let weak = Arc::downgrade(self);
        let _ = link
            .log_target
            .set(Box::new(move || weak.upgrade()?.log_target()));
    }

    /// The raw call a log message is about: one of the calls in flight when they all belong to
    /// one client session (the same rule as for server→client requests).
    fn log_target(&self) -> Option<u64> {
        let inflight = self.inflight.lock().expect("inflight lock");
        let mut session = None;
        let mut target = None;
        for (token, e) in inflight.iter().filter(|(_, e)| !e.done) {
            if e.caller.downstream.is_none() {
                continue;
            }
            match session {
                Some(s) if s != e.caller.session => return None,
                _ => session = Some(e.caller.session),
            }
            if target.is_none()
                && let rmcp::model::NumberOrString::String(t) = &token.0
            {
                target = t.strip_prefix(raw::ID_PREFIX).and_then(|n| n.parse().ok());
            }
        }
        target
    }

    /// Calls registered under a placeholder token (sent, token not yet known).
    fn pending_calls(&self) -> usize {
        self.inflight
            .lock()
            .expect("inflight lock")
            .keys()
            .filter(|t| matches!(&t.0, rmcp::model::NumberOrString::String(s) if s.starts_with("manifold-pending-")))
            .count()
    }

    fn caller_for_progress(&self, token: &ProgressToken) -> Option<Caller> {
        self.inflight
            .lock()
            .expect("inflight lock")
            .get(token)
            .map(|e| e.caller.clone())
    }
}

async fn supervise(shared: Arc<Shared>) {
    let _stopped = shared.stopped.clone().drop_guard();
    let restart = shared.spec.restart.clone();
    if let TransportSpec::Stdio(s) = &shared.spec.transport
        && s.start == StartMode::Lazy
    {
        tokio::select! {
            _ = shared.demand.notified() => {}
            _ = shared.shutdown.cancelled() => return,
        }
    }
    let mut failures: VecDeque<Instant> = VecDeque::new();
    let mut backoff = restart.initial_backoff;
    loop {
        shared.set_health(HealthState::Starting, None);
        let attempt = tokio::select! {
            a = shared.connect() => a,
            _ = shared.shutdown.cancelled() => {
                // Stopped while starting (e.g. npx still downloading): kill the whole group.
                let pgid = shared.starting_group.lock().expect("group lock").take();
                stdio::signal_group(pgid, nix::sys::signal::Signal::SIGKILL);
                return;
            }
        };
        shared.starting_group.lock().expect("group lock").take();
        let error = match attempt {
            Ok(conn) => run_connection(&shared, conn, &mut backoff).await,
            Err(e) => Some(e),
        };
        let Some(error) = error else { return }; // shutdown
        shared.peer.store(None);
        {
            // Under the refresh lock, so a refresh of the dead connection cannot publish after.
            let _refreshes = shared.refresh_lock.lock().await;
            shared.publish_catalog(UpstreamCatalog::default());
        }
        shared.health.lock().expect("health lock").restarts += 1;
        let now = Instant::now();
        failures.push_back(now);
        while failures
            .front()
            .is_some_and(|t| now.duration_since(*t) > restart.window)
        {
            failures.pop_front();
        }
        let wait = if failures.len() as u32 >= restart.max_failures {
            failures.clear();
            backoff = restart.initial_backoff;
            shared.set_health(
                HealthState::Down,
                Some(format!(
                    "{error}; circuit open after {} failures within {:?}, next try in {:?}",
                    restart.max_failures, restart.window, restart.open_for
                )),
            );
            restart.open_for
        } else {
            shared.set_health(HealthState::Degraded, Some(error));
            let w = jitter(backoff);
            backoff = (backoff * 2).min(restart.max_backoff);
            w
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shared.shutdown.cancelled() => return,
        }
    }
}

/// Serve one connection until it ends. Returns the failure, or `None` on shutdown.
async fn run_connection(
    shared: &Arc<Shared>,
    conn: Connection,
    backoff: &mut Duration,
) -> Option<String> {
    let Connection {
        running,
        raw,
        child,
    } = conn;
    let peer = running.peer().clone();
    let ct = running.cancellation_token();
    let modern = peer
        .peer_info()
        .is_some_and(|i| !i.protocol_version.has_initialize());
    if shared.modern.lock().expect("era lock").replace(modern) != Some(modern) {
        tracing::info!(connector = %shared.spec.id, era = if modern { "2026-07-28" } else { "legacy" }, "upstream protocol era");
    }
    raw.set_modern(modern);
    match shared.refresh_and_publish(&peer, &raw).await {
        Ok(()) => {}
        Err(e) => {
            raw.close();
            ct.cancel();
            if let Some((child, pgid)) = child {
                stdio::terminate(child, pgid, Duration::from_secs(2)).await;
            }
            return Some(e);
        }
    }
    // Progress tokens restart with each connection: forget the previous one's calls.
    shared
        .inflight
        .lock()
        .expect("inflight lock")
        .retain(|_, e| !e.done);
    shared.raw.store(Some(raw.clone()));
    // A new process (or session) starts at its own default log level.
    *shared.log_level.lock().expect("level lock") = None;
    // Ends the listen task (below) when this connection ends, however it ends.
    let listening = CancellationToken::new();
    let _stop_listening = listening.clone().drop_guard();
    if modern {
        // A modern upstream has no session to announce changes on: the connector listens.
        tokio::spawn(listen_upstream(
            Arc::downgrade(shared),
            peer.clone(),
            raw.clone(),
            listening,
        ));
    } else {
        // A legacy upstream's subscriptions end with its session: renew the watched ones.
        let uris = shared.watched_uris();
        if !uris.is_empty() {
            let (peer, id) = (peer.clone(), shared.spec.id.clone());
            tokio::spawn(async move {
                for uri in uris {
                    let params: rmcp::model::SubscribeRequestParams =
                        serde_json::from_value(serde_json::json!({ "uri": uri }))
                            .expect("a valid subscribe request");
                    if let Err(e) = peer.subscribe(params).await {
                        tracing::warn!(connector = %id, %uri, error = %e, "renewing a resource subscription after a restart failed; updates of this resource will be missed");
                    }
                }
            });
        }
    }
    shared.peer.store(Some(Arc::new(peer)));
    shared.set_health(HealthState::Up, None);
    let started = Instant::now();
    let mut waiting = std::pin::pin!(running.waiting());
    let outcome = match child {
        Some((mut child, pgid)) => {
            let r = tokio::select! {
                st = child.wait() => Some(match st {
                    Ok(st) => format!("process exited ({st})"),
                    Err(e) => format!("process wait failed: {e}"),
                }),
                _ = &mut waiting => Some("the connection closed (stdout ended)".to_owned()),
                _ = shared.shutdown.cancelled() => None,
            };
            // Stop the session first so in-flight calls fail now, then the whole process group.
            shared.peer.store(None);
            shared.raw.store(None);
            raw.close();
            ct.cancel();
            let grace = if r.is_some() {
                Duration::from_millis(500)
            } else {
                Duration::from_secs(4)
            };
            stdio::terminate(child, pgid, grace).await;
            r
        }
        None => {
            let r = tokio::select! {
                q = &mut waiting => Some(format!("the connection closed ({q:?})")),
                _ = shared.shutdown.cancelled() => None,
            };
            shared.peer.store(None);
            shared.raw.store(None);
            raw.close();
            ct.cancel();
            r
        }
    };
    if started.elapsed() > shared.spec.restart.window {
        *backoff = shared.spec.restart.initial_backoff;
    }
    outcome
}

/// A modern upstream's `subscriptions/listen` stream for its list changes and the resources
/// clients watch; reopened whenever the watched set changes, ended with the connection.
async fn listen_upstream(
    shared: std::sync::Weak<Shared>,
    peer: Peer<RoleClient>,
    link: Arc<RawLink>,
    ct: CancellationToken,
) {
    use rmcp::model::ServerNotification as N;
    let mut failures = 0u32;
    loop {
        let Some(s) = shared.upgrade() else { return };
        let uris = s.watched_uris();
        let caps = s.catalog.load().capabilities.clone().unwrap_or_default();
        let mut filter = rmcp::model::SubscriptionFilter::new();
        filter.tools_list_changed = caps.tools.is_some().then_some(true);
        filter.prompts_list_changed = caps.prompts.is_some().then_some(true);
        filter.resources_list_changed = caps.resources.is_some().then_some(true);
        if !uris.is_empty() {
            filter.resource_subscriptions = Some(uris);
        }
        let id = s.spec.id.clone();
        drop(s);
        let opened = tokio::select! {
            r = peer.listen(filter) => r,
            _ = ct.cancelled() => return,
        };
        let mut sub = match opened {
            Ok(sub) => {
                failures = 0;
                sub
            }
            // The connection is ending (a restart or shutdown): nothing to report.
            Err(_)
                if ct.is_cancelled()
                    || shared.upgrade().is_none_or(|s| s.shutdown.is_cancelled()) =>
            {
                return;
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(connector = %id, error = %e, "subscriptions/listen to the upstream failed; list changes and resource updates of this connector will be missed until it works");
                let wait = Duration::from_secs(u64::from(failures.min(6)) * 5);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => continue,
                    _ = ct.cancelled() => return,
                }
            }
        };
        let Some(s) = shared.upgrade() else { return };
        loop {
            let changed = s.watched_changed.notified();
            tokio::select! {
                n = sub.next() => match n {
                    Ok(Some(N::ToolListChangedNotification(_)))
                    | Ok(Some(N::PromptListChangedNotification(_)))
                    | Ok(Some(N::ResourceListChangedNotification(_))) => {
                        let (s, peer, link) = (s.clone(), peer.clone(), link.clone());
                        tokio::spawn(async move { s.refresh_after_change(&peer, &link).await });
                    }
                    Ok(Some(N::ResourceUpdatedNotification(u))) => {
                        let _ = s.events.send(UpstreamEvent::ResourceUpdated(
                            s.spec.id.clone(),
                            u.params.uri,
                        ));
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                },
                _ = changed => break,
                _ = ct.cancelled() => return,
            }
        }
    }
}

/// ±25% so that many connectors restarting together do not stampede.
fn jitter(d: Duration) -> Duration {
    let f: f64 = rand::random_range(0.75..1.25);
    d.mul_f64(f)
}
