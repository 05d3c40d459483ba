//! The connector façade: one supervised upstream, and forwarding of one request to it with a
//! fresh id and progress token, the call deadline, cancellation, and the attribution of what
//! the upstream sends about the call.

#![allow(deprecated)]

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use arc_swap::{ArcSwap, ArcSwapOption};
use manifold_config::{ConnectorId, ConnectorSpec, TransportSpec};
use rmcp::{
    RoleClient,
    model::{ClientRequest, LoggingLevel},
    service::{Peer, PeerRequestOptions, ServiceError},
};
use tokio::sync::{Notify, broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::{
    Caller, EnvLookup, Health, HealthState, RawValue, UpstreamCatalog, UpstreamError,
    UpstreamEvent, headers,
    inflight::Calls,
    input::{MAX_INPUT_ROUNDS, answer_inputs},
    link::{self, Link},
    supervise::supervise,
};

/// A supervised connector. Dropping it (or `shutdown`) stops its process.
pub struct Connector {
    shared: Arc<Shared>,
}

/// The state of one connector that its supervisor, its connections and its callers share.
pub(crate) struct Shared {
    pub spec: ConnectorSpec,
    pub health: Mutex<Health>,
    pub health_tx: watch::Sender<HealthState>,
    /// The rmcp session of the current connection (for its own requests and lifecycle).
    pub peer: ArcSwapOption<Peer<RoleClient>>,
    /// The data path of the same connection (set and cleared with `peer`).
    pub link: ArcSwapOption<Link>,
    /// The era the upstream was found to speak (`era = "auto"`), kept across reconnections:
    /// `Some(true)` for 2026-07-28.
    pub modern: Mutex<Option<bool>>,
    /// Upstream URIs clients watch. A legacy upstream is told with `resources/subscribe`; a
    /// modern one through the connector's `subscriptions/listen` stream, reopened on change.
    pub watched: Mutex<std::collections::BTreeSet<String>>,
    pub watched_changed: Notify,
    /// The last connection attempt probed the era and failed (see `connect`).
    pub probe_failed: std::sync::atomic::AtomicBool,
    /// The `logging/setLevel` last sent to a legacy upstream (its session has one level).
    pub log_level: Mutex<Option<LoggingLevel>>,
    pub catalog: ArcSwap<UpstreamCatalog>,
    /// The last catalog a connection offered (empty until one did); kept across restarts and
    /// reloads, so that a call for one of its tools while it is down can say so.
    pub last_known: ArcSwap<UpstreamCatalog>,
    pub events: broadcast::Sender<UpstreamEvent>,
    /// The calls in flight, for attribution.
    pub calls: Arc<Calls>,
    pub demand: Notify,
    pub shutdown: CancellationToken,
    /// Cancelled when the supervisor has exited (its process group is gone).
    pub stopped: CancellationToken,
    /// The process group of a stdio child that is still initializing.
    pub starting_group: Mutex<Option<nix::unistd::Pid>>,
    /// Serialises catalog refreshes (initial and after each `list_changed`).
    pub refresh_lock: tokio::sync::Mutex<()>,
    pub env: EnvLookup,
    /// Requests being forwarded (a retired connector stops when none is left).
    pub active: std::sync::atomic::AtomicUsize,
    pub went_idle: Notify,
}

/// A request being forwarded, counted in `Shared::active`.
struct Forwarding<'a>(&'a Shared);

impl<'a> Forwarding<'a> {
    fn enter(shared: &'a Shared) -> Self {
        shared
            .active
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Self(shared)
    }
}

impl Drop for Forwarding<'_> {
    fn drop(&mut self) {
        if self
            .0
            .active
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel)
            == 1
        {
            self.0.went_idle.notify_waiters();
        }
    }
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
            health: Mutex::new(Health::new()),
            health_tx,
            peer: ArcSwapOption::empty(),
            link: ArcSwapOption::empty(),
            modern: Mutex::new(None),
            watched: Mutex::new(Default::default()),
            watched_changed: Notify::new(),
            log_level: Mutex::new(None),
            probe_failed: std::sync::atomic::AtomicBool::new(false),
            catalog: ArcSwap::from_pointee(UpstreamCatalog::default()),
            last_known: ArcSwap::from_pointee(UpstreamCatalog::default()),
            events,
            calls: Calls::new(spec.id.clone()),
            demand: Notify::new(),
            shutdown: CancellationToken::new(),
            stopped: CancellationToken::new(),
            starting_group: Mutex::new(None),
            refresh_lock: tokio::sync::Mutex::new(()),
            env,
            active: std::sync::atomic::AtomicUsize::new(0),
            went_idle: Notify::new(),
            spec,
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

    /// The last catalog a connection offered, while the current one is empty (the connector is
    /// down or restarting); `None` when the current one is live or none ever was.
    pub fn last_known_catalog(&self) -> Option<Arc<UpstreamCatalog>> {
        if self.shared.catalog.load().capabilities.is_some() {
            return None;
        }
        let last = self.shared.last_known.load_full();
        last.capabilities.is_some().then_some(last)
    }

    /// Take over what `previous` (the instance this one replaces) last offered.
    pub fn inherit_last_known(&self, previous: &Connector) {
        self.shared
            .last_known
            .store(previous.shared.last_known.load_full());
    }

    /// Ask a lazy connector to start; a no-op once started.
    pub fn demand(&self) {
        self.shared.demand.notify_one();
    }

    /// Wait until the connector is up, or give up after `max` or when it is stopped (a
    /// reload replaced it); returns whether it is up.
    pub async fn wait_ready(&self, max: Duration) -> bool {
        self.demand();
        let mut rx = self.shared.health_tx.subscribe();
        let wait = rx.wait_for(|s| {
            matches!(
                s,
                HealthState::Up | HealthState::Degraded | HealthState::Down
            )
        });
        tokio::select! {
            r = tokio::time::timeout(max, wait) => matches!(r, Ok(Ok(s)) if *s == HealthState::Up),
            _ = self.shared.shutdown.cancelled() => false,
        }
    }

    /// Replaced by a reload: finish the requests in flight (for at most `call_timeout`, which
    /// they cannot outlast), then stop. New requests go to the replacement.
    pub fn retire(self: &Arc<Self>) {
        let c = self.clone();
        tokio::spawn(async move {
            let shared = &c.shared;
            let idle = async {
                loop {
                    let notified = shared.went_idle.notified();
                    if shared.active.load(std::sync::atomic::Ordering::Acquire) == 0 {
                        return;
                    }
                    notified.await;
                }
            };
            let left = shared.active.load(std::sync::atomic::Ordering::Acquire);
            if left > 0 {
                tracing::info!(connector = %shared.spec.id, requests = left, "the replaced connector finishes its requests before it stops");
            }
            let grace = shared.spec.call_timeout + Duration::from_secs(1);
            if tokio::time::timeout(grace, idle).await.is_err() {
                tracing::warn!(connector = %shared.spec.id, "the replaced connector still had requests after call_timeout; stopping it");
            }
            c.shutdown();
        });
    }

    /// Forward one request as JSON text: `params` (without `_meta`) go upstream as given (with the caller's
    /// `_meta` and, if the client asked for progress, a progress token), and the upstream's
    /// result comes back untouched, unknown fields included. The call deadline applies;
    /// cancelling `caller.ct` (or dropping the future: the client went away) sends
    /// `notifications/cancelled` upstream.
    ///
    /// A 2026-07-28 upstream may answer `input_required`: its input requests are put to the
    /// caller's client (as server→client requests, or as the caller's own next MRTR round) and
    /// the request is retried with the answers and the upstream's `requestState`.
    pub async fn forward(
        &self,
        method: &str,
        params: &serde_json::Map<String, serde_json::Value>,
        caller: &Caller,
    ) -> Result<Box<RawValue>, UpstreamError> {
        let _active = Forwarding::enter(&self.shared);
        let result = self.forward_once(method, params, caller).await?;
        let Some(mut input) = link::input_required(&result) else {
            return Ok(result);
        };
        // Rounds are rare: only then are the params copied, to carry the answers.
        let mut params = params.clone();
        for _round in 1..MAX_INPUT_ROUNDS {
            let responses = answer_inputs(caller, input.input_requests).await?;
            params.insert("inputResponses".into(), responses.into());
            match input.request_state {
                Some(s) => params.insert("requestState".into(), s.into()),
                None => params.remove("requestState"),
            };
            let result = self.forward_once(method, &params, caller).await?;
            match link::input_required(&result) {
                Some(i) => input = i,
                None => return Ok(result),
            }
        }
        Err(UpstreamError::BadResult(format!(
            "the upstream asked for input more than {MAX_INPUT_ROUNDS} times"
        )))
    }

    async fn forward_once(
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
        let link = shared.link.load_full().ok_or_else(closed)?;
        // A request's own log level (a 2026-07-28 client's) becomes the legacy upstream's.
        if let Some(level) = caller.log_level
            && !link.is_modern()
        {
            self.set_log_level(level, caller).await;
        }
        // On a link where a server→client request cannot be traced to its call, a call that
        // may ask its client something waits for the connector's ask slot (see `inflight`).
        let traced = link.exact_attribution();
        let what = if traced { None } else { what(method, params) };
        let slot = match &what {
            Some(w) if caller.downstream.is_some() && shared.calls.may_ask(w) => Some(
                shared
                    .calls
                    .take_slot(shared.spec.call_timeout, caller)
                    .await?,
            ),
            _ => None,
        };
        let id = link.next_id();
        let mut meta = caller.meta.clone().unwrap_or_default();
        if caller.progress_token.is_some() {
            meta.insert("progressToken".into(), link::token(id).into());
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
        // The params as given plus this hop's `_meta`, serialised straight into the request.
        #[derive(serde::Serialize)]
        struct WithMeta<'a> {
            #[serde(flatten)]
            params: &'a serde_json::Map<String, serde_json::Value>,
            #[serde(rename = "_meta", skip_serializing_if = "serde_json::Map::is_empty")]
            meta: serde_json::Map<String, serde_json::Value>,
        }
        // Registered before sending, so early messages about the call find its caller.
        let _call = shared.calls.register(id, caller.clone(), what, slot);
        let modern = link.is_modern();
        // The Mcp-Name of a 2026-07-28 request: the tool or prompt name, or the resource URI.
        let name = match method {
            "tools/call" | "prompts/get" if modern => params.get("name"),
            "resources/read" if modern => params.get("uri"),
            _ => None,
        }
        .and_then(|n| n.as_str());
        // A modern HTTP upstream wants annotated arguments repeated as Mcp-Param-* headers.
        let headers = match (modern, method, name) {
            (true, "tools/call", Some(name)) => {
                let cat = shared.catalog.load();
                match cat.tools.iter().find(|t| t.name == name) {
                    Some(t) => headers::param_headers(
                        &t.input_schema,
                        params.get("arguments").unwrap_or(&serde_json::Value::Null),
                    ),
                    None => Vec::new(),
                }
            }
            _ => Vec::new(),
        };
        let body = WithMeta { params, meta };
        let mut pending = link
            .send(
                id,
                method,
                &body,
                name,
                caller.downstream.is_some(),
                headers,
            )
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
                _ = link::drive(&mut pending.io) => {}
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
        self.rmcp_request(
            ClientRequest::SubscribeRequest(rmcp::model::Request::new(params)),
            caller,
        )
        .await
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
        self.rmcp_request(
            ClientRequest::UnsubscribeRequest(rmcp::model::Request::new(params)),
            caller,
        )
        .await
    }

    /// Send `logging/setLevel` to a legacy upstream that logs, unless it already has `level`.
    /// (A modern upstream gets the level with each request instead.)
    pub async fn set_log_level(&self, level: LoggingLevel, caller: &Caller) {
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
        if let Err(e) = self.rmcp_request(req, caller).await {
            *self.shared.log_level.lock().expect("level lock") = None;
            tracing::debug!(connector = %self.id(), error = %e, "logging/setLevel not applied");
        }
    }

    /// One of rmcp's own typed requests on the connection (subscriptions and log levels, whose
    /// answers carry nothing to pass through), with the call deadline and cancellation.
    async fn rmcp_request(&self, req: ClientRequest, caller: &Caller) -> Result<(), UpstreamError> {
        let shared = &self.shared;
        let peer = self.live_peer().await?;
        let timeout = shared.spec.call_timeout;
        let options = PeerRequestOptions::with_timeout(timeout);
        let handle = peer
            .send_cancellable_request(req, options)
            .await
            .map_err(|e| map_service_error(&shared.spec.id, &shared.spec.secrets, e, timeout))?;
        let id = handle.id.clone();
        tokio::select! {
            r = handle.await_response() => r.map(|_| ()).map_err(|e| map_service_error(&shared.spec.id, &shared.spec.secrets, e, timeout)),
            _ = caller.ct.cancelled() => {
                let param: rmcp::model::CancelledNotificationParam = serde_json::from_value(serde_json::json!({
                    "requestId": id, "reason": "cancelled by the client"
                }))
                .expect("a valid cancelled notification");
                let _ = peer.notify_cancelled(param).await;
                Err(UpstreamError::Cancelled)
            }
        }
    }

    fn is_modern(&self) -> bool {
        self.shared
            .link
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
            Some(e) => format!("connector {:?} is {}: {e}", self.id().as_str(), h.state),
            None => format!(
                "connector {:?} is not running ({})",
                self.id().as_str(),
                h.state
            ),
        }))
    }

    /// Stop the supervisor and the process (close stdin, SIGTERM, SIGKILL the group).
    pub fn shutdown(&self) {
        self.shared.shutdown.cancel();
    }

    /// Whether the supervisor has exited (see `stopped`).
    pub fn is_stopped(&self) -> bool {
        self.shared.stopped.is_cancelled()
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

/// What a call is, for learning whether calls like it ask the client: method and name (or URI).
fn what(method: &str, params: &serde_json::Map<String, serde_json::Value>) -> Option<Arc<str>> {
    let key = match method {
        "tools/call" | "prompts/get" => "name",
        "resources/read" => "uri",
        _ => return Some(method.into()),
    };
    let name = params.get(key)?.as_str()?;
    Some(format!("{method} {name}").into())
}

fn startup_wait(spec: &ConnectorSpec) -> Duration {
    match &spec.transport {
        TransportSpec::Stdio(_) => Duration::from_secs(60),
        TransportSpec::Http(h) => h.connect_timeout + Duration::from_secs(5),
    }
}

async fn recv_event(
    rx: &mut Option<tokio::sync::mpsc::Receiver<link::Event>>,
) -> Option<link::Event> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// A message about a forwarded request, to its client: progress with the client's own token
/// (if it asked for progress), log messages as they are.
async fn forward_event(caller: &Caller, e: link::Event) {
    let Some(client) = &caller.downstream else {
        return;
    };
    match e {
        link::Event::Progress(mut p) => {
            if let Some(token) = &caller.progress_token {
                p.progress_token = token.clone();
                client.progress(p).await;
            }
        }
        link::Event::Log(p) => client.log(p).await,
    }
}

struct Abandon<'a> {
    link: &'a Arc<Link>,
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

fn map_service_error(
    id: &ConnectorId,
    secrets: &manifold_config::Secrets,
    e: ServiceError,
    timeout: Duration,
) -> UpstreamError {
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
        other => UpstreamError::Unavailable(format!(
            "connector {:?}: {}",
            id.as_str(),
            secrets.scrub(&other.to_string())
        )),
    }
}
