//! The one call core. Every MCP request the gateway answers, whichever codec read it (a legacy
//! session's POST, a 2026-07-28 stateless POST, an MRTR retry), goes through `handle` with its
//! `RequestContext`:
//!
//! ```text
//! authenticate (edge) → route → authorize → credentials → upstream → audit
//! ```
//!
//! The principal comes from the edge; `route` finds the connector; the policy turns the routed
//! request into a `Permit` (nothing else reaches an upstream or pages a list); the credentials
//! seam picks the credential; the router forwards; one audit event is recorded from the permit
//! (or the refusal) and the outcome, whatever happens — including a client that goes away.
//! Results get the era's defaults (`resultType`, caching hints) here, and every failure is
//! mapped to JSON-RPC here (`jsonrpc::to_error`).

#![allow(deprecated)] // logging/setLevel: a legacy-era method we serve

use std::sync::Arc;

use manifold_audit::{AuditEvent, Confirmation, Fault, Outcome};
use manifold_policy::{ItemKind, Permit, Target};
use manifold_router::{Method, RouteError, Routed, VirtualServer};
use manifold_upstream::Caller;
use rmcp::model::{ErrorCode, ErrorData, Implementation, InitializeResult, SubscriptionFilter};

use axum::http::StatusCode;

use crate::{
    Gateway, confirm,
    context::RequestContext,
    jsonrpc::{self, fault_of, modern_status, to_error},
    mrtr,
    stream::{self, Final, Relay},
};

/// The versions of the legacy lifecycle (`initialize`), oldest first.
pub(crate) const LEGACY_VERSIONS: [&str; 4] =
    ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];
/// The stateless revision.
pub(crate) const MODERN_VERSION: &str = "2026-07-28";

/// A request's params, parsed once by its codec (its `_meta` taken out: the context has it).
pub(crate) type Params = serde_json::Map<String, serde_json::Value>;

/// Decode params (or `{}` when there are none) as `T`, for methods with a fixed shape.
fn decode<T: serde::de::DeserializeOwned>(
    params: Option<Params>,
    method: &str,
) -> Result<T, ErrorData> {
    serde_json::from_value(serde_json::Value::Object(params.unwrap_or_default()))
        .map_err(|e| ErrorData::invalid_params(format!("invalid {method} params: {e}"), None))
}

/// The MCP methods the gateway answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mcp {
    Initialize,
    Discover,
    Ping,
    SetLevel,
    List(ItemKind),
    Forward(Method),
    Listen,
}

impl Mcp {
    pub fn of(method: &str) -> Option<Self> {
        Some(match method {
            "initialize" => Mcp::Initialize,
            "server/discover" => Mcp::Discover,
            "ping" => Mcp::Ping,
            "logging/setLevel" => Mcp::SetLevel,
            "tools/list" => Mcp::List(ItemKind::Tool),
            "prompts/list" => Mcp::List(ItemKind::Prompt),
            "resources/list" => Mcp::List(ItemKind::Resource),
            "resources/templates/list" => Mcp::List(ItemKind::ResourceTemplate),
            "subscriptions/listen" => Mcp::Listen,
            m => Mcp::Forward(Method::of(m)?),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Mcp::Initialize => "initialize",
            Mcp::Discover => "server/discover",
            Mcp::Ping => "ping",
            Mcp::SetLevel => "logging/setLevel",
            Mcp::List(ItemKind::Tool) => "tools/list",
            Mcp::List(ItemKind::Prompt) => "prompts/list",
            Mcp::List(ItemKind::Resource) => "resources/list",
            Mcp::List(ItemKind::ResourceTemplate) => "resources/templates/list",
            Mcp::Listen => "subscriptions/listen",
            Mcp::Forward(m) => m.as_str(),
        }
    }

    /// Whether the method exists in the request's era.
    fn in_era(self, modern: bool) -> bool {
        match self {
            Mcp::Initialize | Mcp::Ping | Mcp::SetLevel => !modern,
            Mcp::Forward(Method::Subscribe | Method::Unsubscribe) => !modern,
            Mcp::Listen => modern,
            Mcp::Discover | Mcp::List(_) | Mcp::Forward(_) => true,
        }
    }
}

/// What a request is answered with.
pub(crate) enum Reply {
    /// The result object, as JSON text.
    Result(String),
    Error(ErrorData),
    /// A `subscriptions/listen` stream to open.
    Listen(Listening),
}

impl From<Result<String, ErrorData>> for Reply {
    fn from(r: Result<String, ErrorData>) -> Self {
        match r {
            Ok(s) => Reply::Result(s),
            Err(e) => Reply::Error(e),
        }
    }
}

/// The audit record of one request: built as the request goes, recorded once when it ends —
/// also when it is dropped unfinished (the client went away).
struct Record<'a> {
    gw: &'a Gateway,
    cx: &'a RequestContext,
    method: &'static str,
    event: Option<AuditEvent>,
    /// What became of the member's confirmation, for a call that needs one.
    confirmation: Option<Confirmation>,
    done: bool,
}

impl<'a> Record<'a> {
    fn new(gw: &'a Gateway, cx: &'a RequestContext, method: &'static str) -> Self {
        Self {
            gw,
            cx,
            method,
            event: None,
            confirmation: None,
            done: false,
        }
    }

    fn permitted<T: Target>(&mut self, permit: &Permit<T>) {
        self.event = Some(AuditEvent::allowed(
            permit,
            self.method,
            Outcome::Ok,
            self.cx.started,
        ));
    }

    fn finish(mut self, reply: &Reply, upstream_failed: bool) {
        let outcome = match reply {
            Reply::Result(_) | Reply::Listen(_) => Outcome::Ok,
            Reply::Error(e) => {
                if let Some(c) = confirm::of_error(e) {
                    self.confirmation = Some(c);
                }
                Outcome::Error {
                    code: e.code.0,
                    fault: fault_of(e, upstream_failed),
                }
            }
        };
        self.record(outcome);
    }

    fn record(&mut self, outcome: Outcome) {
        if self.done {
            return;
        }
        self.done = true;
        let mut e = self.event.take().unwrap_or_else(|| {
            AuditEvent::failed(
                self.cx.principal.id(),
                self.cx.vs.name(),
                self.method,
                outcome.clone(),
                self.cx.started,
            )
        });
        if e.denied.is_none() {
            e.outcome = outcome;
        }
        e.confirmation = self.confirmation;
        e.duration = self.cx.started.elapsed().unwrap_or_default();
        self.gw.seams.audit.record(e);
    }
}

impl Drop for Record<'_> {
    fn drop(&mut self) {
        self.record(Outcome::Error {
            code: ErrorCode::INTERNAL_ERROR.0,
            fault: Fault::Client,
        });
    }
}

/// Answer one request.
pub(crate) async fn handle(
    gw: Arc<Gateway>,
    cx: RequestContext,
    method: Mcp,
    params: Option<Params>,
) -> Reply {
    let mut record = Record::new(&gw, &cx, method.name());
    if !method.in_era(cx.modern()) {
        let reply = Reply::Error(method_not_found(method.name()));
        record.finish(&reply, false);
        return reply;
    }
    let mut upstream_failed = false;
    let reply = match method {
        Mcp::Initialize => connect(&gw, &cx, &mut record)
            .map(|_| initialize(&cx))
            .into(),
        Mcp::Discover => connect(&gw, &cx, &mut record)
            .map(|_| discover(&gw, &cx))
            .into(),
        Mcp::Ping => connect(&gw, &cx, &mut record)
            .map(|_| "{}".to_owned())
            .into(),
        Mcp::SetLevel => set_level(&gw, &cx, &mut record, params).await.into(),
        Mcp::List(kind) => list(&gw, &cx, &mut record, kind, params).await.into(),
        Mcp::Listen => match listen(&gw, &cx, &mut record, params).await {
            Ok(filter) => Reply::Listen(filter),
            Err(e) => Reply::Error(e),
        },
        Mcp::Forward(m) => {
            let r = forward(&gw, &cx, &mut record, m, params).await;
            if let Err(Failure::Upstream(_)) = &r {
                upstream_failed = true;
            }
            r.map_err(Failure::into_error).into()
        }
    };
    record.finish(&reply, upstream_failed);
    reply
}

/// Answer one request on the wire: run it through `handle`, with its result or error as the
/// last message of a JSON or event-stream response (see `stream::respond`). A client that goes
/// away drops the request, which cancels it (and tells the upstream). A 2026-07-28 request's
/// request-level errors get their HTTP status.
pub(crate) async fn answer(
    gw: Arc<Gateway>,
    cx: RequestContext,
    method: Mcp,
    params: Option<Params>,
    rx: tokio::sync::mpsc::Receiver<String>,
) -> axum::response::Response {
    let id = cx.id.clone();
    let modern = cx.modern();
    let ct = cx.ct.clone();
    // Boxed where it is made: the request's state machine is kilobytes, and every move of an
    // unboxed future copies all of it (a measurable share of a proxied call's CPU).
    let fut = Box::pin(handle(gw, cx, method, params));
    let work = async move {
        let cancel_on_drop = ct.drop_guard();
        let reply = fut.await;
        cancel_on_drop.disarm();
        match reply {
            Reply::Result(r) => Final {
                message: jsonrpc::result_message(&id, &r),
                status: StatusCode::OK,
            },
            Reply::Error(e) => Final {
                status: if modern {
                    modern_status(&e)
                } else {
                    StatusCode::OK
                },
                message: jsonrpc::error_message(&id, &e),
            },
            Reply::Listen(_) => Final {
                status: StatusCode::OK,
                message: jsonrpc::error_message(
                    &id,
                    &ErrorData::internal_error("subscriptions/listen answers with a stream", None),
                ),
            },
        }
    };
    stream::respond(work, rx).await
}

/// A failed forward, with whose fault it was.
enum Failure {
    Client(ErrorData),
    Upstream(ErrorData),
}

impl Failure {
    fn into_error(self) -> ErrorData {
        match self {
            Failure::Client(e) | Failure::Upstream(e) => e,
        }
    }
}

impl From<RouteError> for Failure {
    fn from(e: RouteError) -> Self {
        match e {
            RouteError::Upstream { .. } => Failure::Upstream(to_error(e)),
            e => Failure::Client(to_error(e)),
        }
    }
}

impl From<ErrorData> for Failure {
    fn from(e: ErrorData) -> Self {
        Failure::Client(e)
    }
}

pub(crate) fn method_not_found(method: &str) -> ErrorData {
    ErrorData::new(
        ErrorCode::METHOD_NOT_FOUND,
        format!("method not found: {method}"),
        None,
    )
}

/// The decision for a request about the server itself (connect, discover, ping, log level).
fn connect(
    gw: &Gateway,
    cx: &RequestContext,
    record: &mut Record<'_>,
) -> Result<Permit<manifold_router::ServerRequest>, ErrorData> {
    decide(gw, cx, record, cx.vs.server_request()).map_err(|_| {
        ErrorData::invalid_request(
            format!("virtual server {:?} is not available to you", cx.vs.name()),
            None,
        )
    })
}

/// Ask the policy (once); a refusal is recorded and given back.
fn decide<T: Target>(
    gw: &Gateway,
    cx: &RequestContext,
    record: &mut Record<'_>,
    target: T,
) -> Result<Permit<T>, manifold_policy::Denied<T>> {
    match manifold_policy::authorize(gw.seams.policy.as_ref(), &cx.principal, cx.via, target) {
        Ok(p) => {
            record.permitted(&p);
            Ok(p)
        }
        Err(d) => {
            tracing::debug!(server = cx.vs.name(), principal = %cx.principal.id(), reason = %d.reason, "refused by policy");
            record.event = Some(AuditEvent::denied(
                &d,
                cx.principal.id(),
                record.method,
                ErrorCode::INVALID_PARAMS.0,
                cx.started,
            ));
            Err(d)
        }
    }
}

fn initialize(cx: &RequestContext) -> String {
    let cat = cx.vs.catalog();
    let mut info = InitializeResult::default();
    info.protocol_version = serde_json::from_value(serde_json::Value::String(
        cx.session
            .as_ref()
            .map_or(LEGACY_VERSIONS[3], |s| s.version.as_str())
            .to_owned(),
    ))
    .expect("a protocol version");
    info.capabilities = cat.capabilities.clone();
    info.server_info = implementation(cx);
    info.instructions = cat.instructions.clone();
    serde_json::to_string(&info).expect("a result serialises")
}

fn implementation(cx: &RequestContext) -> Implementation {
    let mut i = Implementation::default();
    i.name = format!("manifold/{}", cx.vs.name());
    i.title = cx.vs.spec.title.clone();
    i.version = env!("CARGO_PKG_VERSION").into();
    i.description = None;
    i.icons = None;
    i.website_url = None;
    i
}

/// The caching hints of `server/discover` and the merged lists: fresh for `gateway.cache_ttl`,
/// the same for every caller unless the list was filtered for this one.
fn hints(gw: &Gateway, private: bool) -> (u64, rmcp::model::CacheScope) {
    let ttl = u64::try_from(gw.config().gateway.cache_ttl.as_millis()).unwrap_or(u64::MAX);
    let scope = if private {
        rmcp::model::CacheScope::Private
    } else {
        rmcp::model::CacheScope::Public
    };
    (ttl, scope)
}

fn discover(gw: &Gateway, cx: &RequestContext) -> String {
    let cat = cx.vs.catalog();
    let mut info = InitializeResult::default();
    info.capabilities = cat.capabilities.clone();
    info.server_info = implementation(cx);
    info.instructions = cat.instructions.clone();
    let versions = LEGACY_VERSIONS
        .iter()
        .chain(std::iter::once(&MODERN_VERSION))
        .map(|v| {
            serde_json::from_value(serde_json::Value::String((*v).to_owned())).expect("a version")
        })
        .collect();
    let (ttl, scope) = hints(gw, false);
    let r = rmcp::model::DiscoverResult::from_server_info(versions, info)
        .with_ttl_ms(ttl)
        .with_cache_scope(scope);
    serde_json::to_string(&r).expect("a result serialises")
}

fn object(params: Option<Params>, method: &str) -> Result<Params, ErrorData> {
    params.ok_or_else(|| ErrorData::invalid_params(format!("{method} needs params"), None))
}

async fn set_level(
    gw: &Gateway,
    cx: &RequestContext,
    record: &mut Record<'_>,
    params: Option<Params>,
) -> Result<String, ErrorData> {
    #[derive(serde::Deserialize)]
    struct P {
        level: rmcp::model::LoggingLevel,
    }
    let p: P = decode(params, "logging/setLevel")?;
    let permit = connect(gw, cx, record)?;
    if let Some(s) = &cx.session {
        s.set_level(p.level);
    }
    cx.vs.set_level(&permit, p.level, &caller(gw, cx)).await;
    Ok("{}".to_owned())
}

async fn list(
    gw: &Gateway,
    cx: &RequestContext,
    record: &mut Record<'_>,
    kind: ItemKind,
    params: Option<Params>,
) -> Result<String, ErrorData> {
    #[derive(serde::Deserialize)]
    struct P {
        cursor: Option<String>,
    }
    let cursor = decode::<P>(params, "list")?.cursor;
    // A client's first list sees connectors that are still starting (of the newest
    // configuration, if a reload replaced the server meanwhile).
    let mut vs = cx.vs.clone();
    loop {
        let changes = vs.settle(manifold_router::SETTLE_WAIT).await;
        if changes.any() {
            gw.notify_changes(vs.name(), changes);
        }
        match gw.virtual_server(vs.name()) {
            Some(newer) if vs.is_superseded() && !Arc::ptr_eq(&newer, &vs) => vs = newer,
            _ => break,
        }
    }
    let permit = decide(gw, cx, record, vs.list_request(kind, cursor)).map_err(|_| {
        ErrorData::invalid_request(
            format!("virtual server {:?} is not available to you", vs.name()),
            None,
        )
    })?;
    let head = if cx.modern() {
        let (ttl, scope) = hints(gw, permit.filters());
        let scope = serde_json::to_string(&scope).expect("a scope serialises");
        format!("\"resultType\":\"complete\",\"ttlMs\":{ttl},\"cacheScope\":{scope},")
    } else {
        String::new()
    };
    let (page, view) = vs.page(&permit, cx.client, &head).map_err(to_error)?;
    if let Some(s) = &cx.session {
        s.views.saw(manifold_router::kind_index(kind), view);
    }
    Ok(page)
}

/// The upstream call of a request: where its messages go, its cancellation and log level.
fn caller(gw: &Gateway, cx: &RequestContext) -> Caller {
    Caller {
        client: cx.client,
        meta: cx.meta.clone(),
        downstream: Some(Arc::new(Relay {
            outbox: cx.outbox.clone(),
            session: cx.session.clone(),
            capabilities: cx.capabilities.clone(),
            level: cx.log_level,
            answer_wait: gw.config().gateway.input_wait,
        })),
        progress_token: cx.progress_token.clone(),
        ct: cx.ct.clone(),
        log_level: cx.log_level,
    }
}

/// "unknown tool" (prompt, resource) for the name `params` give.
fn not_found_name(
    method: Method,
    params: &serde_json::Map<String, serde_json::Value>,
) -> ErrorData {
    let name = |k: &str| {
        params
            .get(k)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    to_error(match method {
        Method::CallTool => RouteError::UnknownTool(name("name")),
        Method::GetPrompt => RouteError::UnknownPrompt(name("name")),
        _ => RouteError::UnknownResource(name("uri")),
    })
}

/// The error for a refused use: the same as for an item that does not exist.
fn not_found(routed: &Routed) -> ErrorData {
    to_error(match routed.kind {
        ItemKind::Tool => RouteError::UnknownTool(routed.exposed.clone()),
        ItemKind::Prompt => RouteError::UnknownPrompt(routed.exposed.clone()),
        ItemKind::Resource | ItemKind::ResourceTemplate => {
            RouteError::UnknownResource(routed.exposed.clone())
        }
    })
}

async fn forward(
    gw: &Arc<Gateway>,
    cx: &RequestContext,
    record: &mut Record<'_>,
    method: Method,
    params: Option<Params>,
) -> Result<String, Failure> {
    let mut params = object(params, method.as_str())?;
    let bridged = cx.modern()
        && matches!(
            method,
            Method::CallTool | Method::GetPrompt | Method::ReadResource
        );
    // A retry of an MRTR round: the state names the parked call to resume.
    let retry = if bridged {
        let state = params.remove("requestState");
        let responses = params.remove("inputResponses");
        match state {
            Some(serde_json::Value::String(s)) => Some((s, responses)),
            Some(_) => {
                return Err(
                    ErrorData::invalid_params("requestState must be a string", None).into(),
                );
            }
            None => None,
        }
    } else {
        None
    };
    // Boxed: this future is moved whole into its box, and stays small for every other call.
    let binding = bridged.then(|| {
        mrtr::Binding::boxed(
            cx.principal.id().to_string(),
            cx.vs.name(),
            method.as_str(),
            &params,
        )
    });
    // A reload while the request waited for connectors to start: the replacement server
    // routes it (and serves it), not the superseded one.
    let mut vs = cx.vs.clone();
    let routed = loop {
        match vs.route(method, params, cx.client).await {
            Err(RouteError::Superseded(back)) => match gw.virtual_server(vs.name()) {
                Some(newer) if !Arc::ptr_eq(&newer, &vs) => {
                    vs = newer;
                    params = *back;
                }
                _ => return Err(not_found_name(method, &back).into()),
            },
            r => break r?,
        }
    };
    let permit = match decide(gw, cx, record, routed) {
        Ok(p) => p,
        // A listed item refused for this call's arguments: the caller may know.
        Err(d) if d.visible => {
            return Err(ErrorData::invalid_params(
                format!(
                    "the call of {:?} was refused by policy for its arguments; if it should be allowed, ask an administrator (manifold policy explain … --args)",
                    d.target.exposed
                ),
                None,
            )
            .into());
        }
        Err(d) => return Err(not_found(&d.target).into()),
    };
    let asks = permit.confirmation().is_some() && method == Method::CallTool;
    // Read only where a confirmation is asked (a config load is not free on every call).
    let wait = || gw.config().gateway.input_wait;
    // A retry that answers the gateway's own confirmation round starts the call afresh.
    let retry = match (&binding, retry) {
        (Some(binding), Some((state, responses))) if asks => {
            match gw.bridge.open_confirmation(&binding.key(), &state, wait()) {
                mrtr::StateOf::Confirmation => {
                    let how = match &responses {
                        Some(serde_json::Value::Object(r)) => {
                            r.get(confirm::INPUT_KEY).map(confirm::answer_of)
                        }
                        _ => None,
                    }
                    .unwrap_or(Confirmation::Failed);
                    record.confirmation = Some(how);
                    if how != Confirmation::Confirmed {
                        return Err(confirm::refused(
                            permit.target(),
                            how,
                            Some("the retry did not answer the confirmation"),
                        )
                        .into());
                    }
                    None
                }
                mrtr::StateOf::Spent => {
                    return Err(
                        confirm::refused(permit.target(), Confirmation::TimedOut, None).into(),
                    );
                }
                mrtr::StateOf::Other => Some((state, responses)),
            }
        }
        (Some(binding), None) if asks => {
            if !confirm::askable(&cx.capabilities) {
                return Err(confirm::unsupported(permit.target()).into());
            }
            let request = serde_json::json!({
                "method": "elicitation/create",
                "params": confirm::question(permit.target()),
            });
            let request = serde_json::from_value(request).map_err(|e| {
                ErrorData::internal_error(
                    format!("manifold cannot ask for a confirmation: {e}"),
                    None,
                )
            })?;
            let mut round = rmcp::model::InputRequiredResult::from_request_state(
                gw.bridge.confirmation_state(&binding.key(), wait()),
            );
            round.result_type = rmcp::model::ResultType::INPUT_REQUIRED;
            round.input_requests = Some([(confirm::INPUT_KEY.to_owned(), request)].into());
            record.confirmation = Some(Confirmation::Asked);
            return Ok(serde_json::to_string(&round).expect("a result serialises"));
        }
        (_, retry) => retry,
    };
    if let (Some(binding), Some((state, responses))) = (&binding, retry) {
        let responses = match responses {
            Some(serde_json::Value::Object(r)) => Some(r),
            _ => None,
        };
        let client = round_requester(cx);
        let round = tokio::select! {
            r = gw.bridge.resume(binding.key(), &state, responses.as_ref(), client) => r?,
            // The client closing its request abandons the round (and the upstream call).
            _ = cx.ct.cancelled() => return Err(ErrorData::internal_error("request cancelled", None).into()),
        };
        return finish_round(round, method);
    }
    // Subscriptions are the session's; the upstream watches a resource while anyone does.
    if let (Some(s), Method::Subscribe | Method::Unsubscribe) = (&cx.session, method) {
        let uri = permit.target().exposed.clone();
        if method == Method::Unsubscribe {
            s.unsubscribe(&uri);
            if gw.sessions.anyone_subscribed(vs.name(), &uri) {
                return Ok("{}".to_owned());
            }
        }
        let credential = credential(gw, cx, &vs, &permit)?;
        vs.forward(&permit, &credential, &caller(gw, cx)).await?;
        if method == Method::Subscribe {
            s.subscribe(&uri);
        }
        return Ok("{}".to_owned());
    }
    let credential = credential(gw, cx, &vs, &permit)?;
    let Some(binding) = binding else {
        let caller = caller(gw, cx);
        if asks {
            let how = confirm_legacy(cx, &caller, permit.target(), wait()).await;
            record.confirmation = Some(how.0);
            if how.0 != Confirmation::Confirmed {
                return Err(confirm::refused(permit.target(), how.0, how.1.as_deref()).into());
            }
        }
        if let Some(s) = &cx.session {
            s.call_started(&cx.id, cx.ct.clone());
        }
        let r = vs.forward(&permit, &credential, &caller).await;
        if let Some(s) = &cx.session {
            s.call_ended(&cx.id);
        }
        let raw = r?;
        return Ok(match (cx.modern(), method) {
            // 2026-07-28 requires resultType (legacy upstreams omit it).
            (true, _) => with_defaults(raw.get(), &[("resultType", "\"complete\"")]),
            (false, _) => raw.get().to_owned(),
        });
    };
    // A 2026-07-28 call runs through the MRTR bridge: the legacy upstream's questions become
    // input_required rounds. The call outlives this request (it may be parked between rounds),
    // so it gets a client key of its own, whose per-client upstream sessions end with it.
    let client_key = gw.sessions.next_client();
    let vs = vs.clone();
    let pool = gw.pool.clone();
    let call = mrtr::Call {
        binding,
        caps: cx.capabilities.clone(),
        client_key,
        requester: round_requester(cx),
        ct: gw.shutdown.child_token(),
        ttl: gw.config().gateway.input_wait,
        meta: cx.meta.clone(),
    };
    let started = gw.bridge.start(call, move |caller| {
        Box::pin(async move {
            let r = vs.forward(&permit, &credential, &caller).await;
            pool.end_client(client_key);
            vs.forget_client(client_key);
            r
        })
    });
    let round = tokio::select! {
        r = started => r,
        _ = cx.ct.cancelled() => return Err(ErrorData::internal_error("request cancelled", None).into()),
    };
    finish_round(round, method)
}

/// Ask a legacy client's member to confirm `routed`, with a server→client elicitation.
async fn confirm_legacy(
    cx: &RequestContext,
    caller: &Caller,
    routed: &Routed,
    wait: std::time::Duration,
) -> (Confirmation, Option<String>) {
    let Some(downstream) = caller
        .downstream
        .as_ref()
        .filter(|_| confirm::askable(&cx.capabilities))
    else {
        return (Confirmation::Unsupported, None);
    };
    let ask = manifold_upstream::Ask {
        kind: manifold_upstream::AskKind::Elicitation,
        params: confirm::question(routed),
        key: None,
    };
    let asked = std::time::Instant::now();
    tokio::select! {
        r = tokio::time::timeout(wait, downstream.ask(ask)) => match r {
            Ok(Ok(answer)) => (confirm::answer_of(&answer), None),
            Ok(Err(_)) | Err(_) if asked.elapsed() >= wait => (Confirmation::TimedOut, None),
            Ok(Err(e)) => (Confirmation::Failed, Some(e.message.to_string())),
            Err(_) => (Confirmation::TimedOut, None),
        },
        _ = cx.ct.cancelled() => (Confirmation::Cancelled, Some("the request was cancelled".to_owned())),
    }
}

fn round_requester(cx: &RequestContext) -> mrtr::Requester {
    mrtr::Requester {
        outbox: cx.outbox.clone(),
        progress_token: cx.progress_token.clone(),
        log_level: cx.log_level,
    }
}

/// A bridged round's answer to a 2026-07-28 client.
fn finish_round(round: mrtr::Round, method: Method) -> Result<String, Failure> {
    match round {
        mrtr::Round::Done(Ok(raw)) => {
            // 2026-07-28 requires resultType (legacy upstreams omit it) and caching hints on
            // reads; an upstream that gives none gets the cautious ones (stale, this caller only).
            let defaults: &[(&str, &str)] = match method {
                Method::ReadResource => &[
                    ("resultType", "\"complete\""),
                    ("ttlMs", "0"),
                    ("cacheScope", "\"private\""),
                ],
                _ => &[("resultType", "\"complete\"")],
            };
            Ok(with_defaults(raw.get(), defaults))
        }
        mrtr::Round::Done(Err(e)) => Err(e.into()),
        mrtr::Round::Input(i) => Ok(serde_json::to_string(&i).expect("a result serialises")),
        mrtr::Round::Missing(caps) => {
            Err(ErrorData::missing_required_client_capability(caps).into())
        }
    }
}

/// The credentials seam, once per request that goes upstream.
fn credential(
    gw: &Gateway,
    cx: &RequestContext,
    vs: &VirtualServer,
    permit: &Permit<Routed>,
) -> Result<manifold_upstream::Credential, Failure> {
    let spec = vs.connector_spec(&permit.target().connector);
    gw.seams
        .credentials
        .credential(&cx.principal, spec)
        .map_err(|e| {
            Failure::Client(ErrorData::invalid_request(
                format!("connector {:?}: {e}", spec.id.as_str()),
                None,
            ))
        })
}

/// A `subscriptions/listen` request's stream: the notifications it accepts (what the client
/// asked for, of what the server offers), and the subscriptions it holds upstream, one per
/// resource it watches (each routed, decided and given its credential like a
/// `resources/subscribe`; unknown and refused ones are left out of the accepted filter).
pub(crate) struct Listening {
    pub accepted: SubscriptionFilter,
    pub watched: Vec<(Permit<Routed>, manifold_upstream::Credential)>,
}

async fn listen(
    gw: &Gateway,
    cx: &RequestContext,
    record: &mut Record<'_>,
    params: Option<Params>,
) -> Result<Listening, ErrorData> {
    #[derive(serde::Deserialize)]
    struct P {
        notifications: SubscriptionFilter,
    }
    let p: P = decode(params, "subscriptions/listen")?;
    connect(gw, cx, record)?;
    let mut accepted = p.notifications.supported_by(&cx.vs.catalog().capabilities);
    let mut watched = Vec::new();
    let mut uris = Vec::new();
    for uri in accepted.resource_subscriptions.take().unwrap_or_default() {
        let mut params = serde_json::Map::new();
        params.insert("uri".into(), uri.clone().into());
        let Ok(routed) = cx.vs.route(Method::Subscribe, params, cx.client).await else {
            continue;
        };
        let Ok(permit) =
            manifold_policy::authorize(gw.seams.policy.as_ref(), &cx.principal, cx.via, routed)
        else {
            continue;
        };
        let Ok(credential) = credential(gw, cx, &cx.vs, &permit) else {
            continue;
        };
        let caller = Caller::internal(cx.client, cx.ct.clone());
        match cx.vs.forward(&permit, &credential, &caller).await {
            Ok(_) => {
                uris.push(uri);
                watched.push((permit, credential));
            }
            Err(e) => {
                tracing::debug!(server = cx.vs.name(), %uri, error = %e, "upstream subscription for a listen stream failed");
            }
        }
    }
    accepted.resource_subscriptions = (!uris.is_empty()).then_some(uris);
    Ok(Listening { accepted, watched })
}

/// A result object with each of `defaults` (key, JSON value) that it lacks put in front,
/// leaving the rest of the text as it came. Anything but an object comes back unchanged.
pub(crate) fn with_defaults(result: &str, defaults: &[(&str, &str)]) -> String {
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
