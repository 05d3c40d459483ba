//! The rmcp `ServerHandler` of a virtual server session: adapts MCP requests to the router and
//! maps every `RouteError` to a JSON-RPC error in one place (`to_error`).

#![allow(deprecated)] // logging/setLevel and roots are legacy-era features we serve

use std::sync::{Arc, Weak};

use rmcp::{
    ErrorData, RoleServer, ServerHandler,
    model::{
        CacheScope, CallToolRequestParams, CallToolResponse, CompleteRequestParams, CompleteResult,
        DiscoverResult, GetPromptRequestParams, GetPromptResponse, Implementation,
        InitializeResult, InputRequiredResult, JsonObject, ListPromptsResult,
        ListResourceTemplatesResult, ListResourcesResult, ListToolsResult, PaginatedRequestParams,
        ReadResourceRequestParams, ReadResourceResponse, ResultType, ServerCapabilities,
        SetLevelRequestParams, SubscribeRequestParams, UnsubscribeRequestParams,
    },
    service::{NotificationContext, RequestContext},
};
use router::{RouteError, VirtualServer};
use upstream::{Caller, UpstreamError};

use crate::Gateway;

/// One handler per client session (legacy era) or per request (modern era).
pub struct SessionHandler {
    gateway: Weak<Gateway>,
    server: Arc<str>,
    session: u64,
}

impl SessionHandler {
    pub(crate) fn new(gateway: Weak<Gateway>, server: Arc<str>, session: u64) -> Self {
        Self {
            gateway,
            server,
            session,
        }
    }

    /// The virtual server as currently configured (a reload swaps it under live sessions).
    fn server(&self) -> Result<(Arc<Gateway>, Arc<VirtualServer>), ErrorData> {
        let gw = self
            .gateway
            .upgrade()
            .ok_or_else(|| ErrorData::internal_error("the gateway is shutting down", None))?;
        let vs = gw.virtual_server(&self.server).ok_or_else(|| {
            ErrorData::invalid_request(
                format!("virtual server {:?} no longer exists", &*self.server),
                None,
            )
        })?;
        Ok((gw, vs))
    }

    /// A modern (2026-07-28) request: stateless, with MRTR instead of server→client requests.
    fn modern(cx: &RequestContext<RoleServer>) -> bool {
        cx.meta
            .protocol_version()
            .is_some_and(|v| !v.has_initialize())
    }

    /// Run `method` for a modern client through the MRTR bridge: a fresh call, or the resumption
    /// of the parked call its `requestState` names.
    async fn bridged<T: serde::de::DeserializeOwned>(
        &self,
        gw: &Arc<Gateway>,
        method: &'static str,
        params: &impl serde::Serialize,
        cx: &RequestContext<RoleServer>,
        call: impl FnOnce(
            JsonObject,
            Caller,
        )
            -> upstream::BoxFut<'static, Result<Box<upstream::RawValue>, RouteError>>,
    ) -> Result<Result<T, InputRequiredResult>, ErrorData> {
        let params = match serde_json::to_value(params) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => return Err(ErrorData::invalid_params("params must be an object", None)),
        };
        let caller = crate::mrtr::caller_of(
            cx.extensions
                .get::<http::request::Parts>()
                .map(|p| &p.headers),
        );
        let binding = crate::mrtr::binding(&caller, &self.server, method, &params);
        // Progress of this round goes to this request's response stream.
        let client = crate::mrtr::Client {
            peer: Some(cx.peer.clone()),
            progress_token: cx.meta.get_progress_token(),
        };
        // While this request waits for its round, the client closing it (rmcp cancels `cx.ct`)
        // abandons the round, and with it the upstream call; a parked call outlives the request.
        let round = async {
            Ok(match params.get("requestState").and_then(|s| s.as_str()) {
                Some(state) => {
                    let responses = params.get("inputResponses").and_then(|r| r.as_object());
                    gw.bridge.resume(binding, state, responses, client).await?
                }
                None => {
                    let caps = cx.meta.client_capabilities().unwrap_or_default();
                    let mut fwd = params.clone();
                    fwd.remove("inputResponses");
                    fwd.remove("requestState");
                    let meta = forwarded_meta(&cx.meta.0.0);
                    // The call outlives this request (it may be parked between rounds), so it gets
                    // a session number of its own, whose per-client upstream sessions end with it.
                    let session = gw.sessions.next_id();
                    let pool = gw.pool.clone();
                    gw.bridge
                        .start(
                            crate::mrtr::Call {
                                binding,
                                caps,
                                session,
                                client,
                                ct: gw.shutdown.child_token(),
                                ttl: gw.config().gateway.input_wait,
                                log_level: cx.meta.log_level(),
                            },
                            move |mut c: Caller| {
                                c.meta = meta;
                                let fut = call(fwd, c);
                                Box::pin(async move {
                                    let r = fut.await;
                                    pool.end_session(session);
                                    r
                                })
                            },
                        )
                        .await
                }
            })
        };
        let round = tokio::select! {
            r = round => r?,
            _ = cx.ct.cancelled() => {
                return Err(ErrorData::internal_error("request cancelled", None));
            }
        };
        match round {
            crate::mrtr::Round::Done(r) => {
                let raw = r.map_err(to_error)?;
                serde_json::from_str(raw.get()).map(Ok).map_err(|e| {
                    ErrorData::internal_error(
                        format!("the upstream's {method} result is not valid: {e}"),
                        None,
                    )
                })
            }
            crate::mrtr::Round::Input(i) => Ok(Err(i)),
            crate::mrtr::Round::Missing(caps) => {
                Err(ErrorData::missing_required_client_capability(caps))
            }
        }
    }

    /// Make this legacy session known to the gateway (its key, peer, level, subscriptions).
    /// rmcp may run a request before the `notifications/initialized` that precedes it, so the
    /// requests that set session state register too; registering again changes nothing.
    fn register(&self, gw: &Gateway, peer: rmcp::Peer<RoleServer>, ext: &rmcp::model::Extensions) {
        let key = ext
            .get::<http::request::Parts>()
            .and_then(|p| p.headers.get("mcp-session-id"))
            .and_then(|v| v.to_str().ok())
            .map(Arc::from);
        gw.sessions
            .register(self.session, self.server.clone(), peer, key);
    }

    /// A list's caching hints: `list_hints` for a modern client, none for a legacy one.
    fn list_hints_for(
        gw: &Gateway,
        cx: &RequestContext<RoleServer>,
    ) -> (Option<u64>, Option<CacheScope>) {
        if !Self::modern(cx) {
            return (None, None);
        }
        let (ttl, scope) = list_hints(gw);
        (Some(ttl), Some(scope))
    }

    fn caller(&self, cx: &RequestContext<RoleServer>) -> Caller {
        Caller {
            session: self.session,
            meta: forwarded_meta(&cx.meta.0.0),
            downstream: Some(Arc::new(cx.peer.clone())),
            progress_token: cx.meta.get_progress_token(),
            ct: cx.ct.clone(),
            log_level: cx.meta.log_level().or_else(|| {
                self.gateway
                    .upgrade()
                    .and_then(|gw| gw.sessions.level(self.session))
            }),
        }
    }
}

/// The caching hints (2026-07-28) of `server/discover` and the merged lists: fresh for
/// `gateway.cache_ttl`, and the same for every caller. Once lists are filtered per caller,
/// this must become `private`.
pub(crate) fn list_hints(gw: &Gateway) -> (u64, CacheScope) {
    let ttl = gw.config().gateway.cache_ttl.as_millis();
    (u64::try_from(ttl).unwrap_or(u64::MAX), CacheScope::Public)
}

/// The client's `_meta` as forwarded upstream. The progress token is remapped per hop, and the
/// `io.modelcontextprotocol/*` keys (protocol version, client capabilities, log level) describe
/// the client's own hop, not the gateway's upstream session. Everything else (trace context,
/// custom keys) passes.
pub(crate) fn forwarded_meta(
    meta: &serde_json::Map<String, serde_json::Value>,
) -> Option<serde_json::Map<String, serde_json::Value>> {
    let mut meta = meta.clone();
    meta.retain(|k, _| k != "progressToken" && !k.starts_with("io.modelcontextprotocol/"));
    (!meta.is_empty()).then_some(meta)
}

impl Drop for SessionHandler {
    fn drop(&mut self) {
        if let Some(gw) = self.gateway.upgrade() {
            gw.sessions.remove(self.session);
            gw.pool.end_session(self.session);
        }
    }
}

/// The one mapping from routing/upstream failures to JSON-RPC errors. A connector that is down
/// is named, so users know which one; upstream JSON-RPC errors pass through unchanged.
pub fn to_error(e: RouteError) -> ErrorData {
    match e {
        RouteError::UnknownTool(n) => ErrorData::invalid_params(format!("unknown tool: {n}"), None),
        RouteError::UnknownPrompt(n) => {
            ErrorData::invalid_params(format!("unknown prompt: {n}"), None)
        }
        RouteError::UnknownResource(u) => ErrorData::invalid_params(
            format!("resource not found: {u}"),
            Some(serde_json::json!({ "uri": u })),
        ),
        RouteError::InvalidCursor(c) => ErrorData::invalid_params(
            format!("invalid cursor {c:?}: list again without a cursor"),
            None,
        ),
        RouteError::InvalidParams(m) => ErrorData::invalid_params(m, None),
        RouteError::BadResult(m) => ErrorData::internal_error(m, None),
        RouteError::Upstream { connector, error } => match error {
            UpstreamError::Protocol(data) => data,
            UpstreamError::Unavailable(m) => ErrorData::internal_error(
                format!("{m}; the other connectors keep working"),
                Some(serde_json::json!({ "connector": connector.as_str() })),
            ),
            UpstreamError::Timeout(d) => ErrorData::internal_error(
                format!(
                    "connector {:?} did not answer within {d:?}",
                    connector.as_str()
                ),
                Some(serde_json::json!({ "connector": connector.as_str() })),
            ),
            UpstreamError::Cancelled => ErrorData::internal_error("request cancelled", None),
            UpstreamError::BadResult(m) => ErrorData::internal_error(
                format!("connector {:?}: {m}", connector.as_str()),
                Some(serde_json::json!({ "connector": connector.as_str() })),
            ),
        },
    }
}

impl ServerHandler for SessionHandler {
    fn get_info(&self) -> InitializeResult {
        // The union of the connectors' capabilities (everything while one is not reached yet);
        // logging and completions are routed to the connectors that have them.
        let (instructions, title, capabilities) = match self.server() {
            Ok((_, vs)) => {
                let cat = vs.catalog();
                (
                    cat.instructions.clone(),
                    vs.spec.title.clone(),
                    cat.capabilities.clone(),
                )
            }
            Err(_) => (None, None, ServerCapabilities::default()),
        };
        let mut implementation = Implementation::default();
        implementation.name = format!("manifold/{}", self.server);
        implementation.title = title;
        implementation.version = env!("CARGO_PKG_VERSION").into();
        let mut info = InitializeResult::default();
        info.capabilities = capabilities;
        info.server_info = implementation;
        info.instructions = instructions;
        info
    }

    /// `server/discover`: rmcp's answer from `get_info`, with the caching hints of the lists.
    async fn discover(&self, _cx: RequestContext<RoleServer>) -> Result<DiscoverResult, ErrorData> {
        let (gw, _) = self.server()?;
        let (ttl, scope) = list_hints(&gw);
        Ok(DiscoverResult::from_server_info(
            self.supported_protocol_versions().into_owned(),
            self.get_info(),
        )
        .with_ttl_ms(ttl)
        .with_cache_scope(scope))
    }

    /// The exposed tool, for rmcp's validation of 2026-07-28 `Mcp-Param-*` headers against
    /// the tool's `inputSchema` (SEP-2243).
    fn get_tool(&self, name: &str) -> Option<rmcp::model::Tool> {
        let (_, vs) = self.server().ok()?;
        let cat = vs.catalog();
        cat.tool_index.get(name).map(|i| cat.tools[*i].clone())
    }

    /// Modern clients' `subscriptions/listen`: everything they ask for that we advertise
    /// (rmcp intersects with the capabilities in `get_info`).
    fn accepted_subscription_filter(
        &self,
        requested: &rmcp::model::SubscriptionFilter,
    ) -> Option<rmcp::model::SubscriptionFilter> {
        Some(requested.clone())
    }

    /// One `subscriptions/listen` stream: list changes of this virtual server and updates of
    /// the resources it names reach it until the client closes it. Upstream subscriptions are
    /// made for those resources and dropped when nobody watches them any more.
    async fn listen(&self, context: rmcp::service::SubscriptionContext) -> Result<(), ErrorData> {
        let (gw, vs) = self.server()?;
        let id = gw.sessions.next_id();
        let uris = context
            .accepted()
            .resource_subscriptions
            .clone()
            .unwrap_or_default();
        let caller = Caller {
            session: id,
            meta: None,
            downstream: None,
            progress_token: None,
            ct: gw.shutdown.child_token(),
            log_level: None,
        };
        gw.sessions
            .listen(id, self.server.clone(), context.sink().clone());
        for uri in &uris {
            if let Err(e) = vs.subscribe(uri, &caller).await {
                tracing::debug!(server = %self.server, %uri, error = %e, "upstream subscription for a listen stream failed");
            }
        }
        tokio::select! {
            _ = context.cancelled() => {}
            _ = gw.shutdown.cancelled() => {}
        }
        gw.sessions.unlisten(id);
        for uri in &uris {
            if !gw.sessions.anyone_subscribed(&self.server, uri) {
                let _ = vs.unsubscribe(uri, &caller).await;
            }
        }
        Ok(())
    }

    async fn on_initialized(&self, cx: NotificationContext<RoleServer>) {
        if let Ok((gw, vs)) = self.server() {
            vs.demand();
            self.register(&gw, cx.peer, &cx.extensions);
        }
    }

    async fn list_tools(
        &self,
        p: Option<PaginatedRequestParams>,
        cx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let (gw, vs) = self.server()?;
        let changes = vs.settle(router::SETTLE_WAIT).await;
        if changes.any() {
            gw.notify_changes(&self.server, changes);
        }
        let cat = vs.catalog();
        let (page, next) = vs
            .page(&cat.tools, p.as_ref().and_then(|p| p.cursor.as_deref()))
            .map_err(to_error)?;
        let mut r = ListToolsResult::with_all_items(page.to_vec());
        r.next_cursor = next;
        (r.ttl_ms, r.cache_scope) = Self::list_hints_for(&gw, &cx);
        Ok(r)
    }

    async fn call_tool(
        &self,
        p: CallToolRequestParams,
        cx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let (gw, vs) = self.server()?;
        if Self::modern(&cx) {
            let r = self
                .bridged::<rmcp::model::CallToolResult>(
                    &gw,
                    "tools/call",
                    &p,
                    &cx,
                    move |fwd, c| Box::pin(async move { vs.call_tool_raw(fwd, &c).await }),
                )
                .await?;
            return Ok(match r {
                Ok(mut r) => {
                    r.result_type.get_or_insert(ResultType::COMPLETE);
                    CallToolResponse::Complete(r)
                }
                Err(i) => CallToolResponse::InputRequired(i),
            });
        }
        let caller = self.caller(&cx);
        vs.call_tool(p, &caller)
            .await
            .map(|mut r| {
                // A legacy upstream omits resultType; modern clients require it. rmcp strips it
                // again for clients that negotiated an older revision.
                r.result_type.get_or_insert(ResultType::COMPLETE);
                CallToolResponse::Complete(r)
            })
            .map_err(to_error)
    }

    async fn list_prompts(
        &self,
        p: Option<PaginatedRequestParams>,
        cx: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        let (gw, vs) = self.server()?;
        let cat = vs.catalog();
        let (page, next) = vs
            .page(&cat.prompts, p.as_ref().and_then(|p| p.cursor.as_deref()))
            .map_err(to_error)?;
        let mut r = ListPromptsResult::with_all_items(page.to_vec());
        r.next_cursor = next;
        (r.ttl_ms, r.cache_scope) = Self::list_hints_for(&gw, &cx);
        Ok(r)
    }

    async fn get_prompt(
        &self,
        p: GetPromptRequestParams,
        cx: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        let (gw, vs) = self.server()?;
        if Self::modern(&cx) {
            let r = self
                .bridged::<rmcp::model::GetPromptResult>(
                    &gw,
                    "prompts/get",
                    &p,
                    &cx,
                    move |fwd, c| Box::pin(async move { vs.get_prompt_raw(fwd, &c).await }),
                )
                .await?;
            return Ok(match r {
                Ok(mut r) => {
                    r.result_type.get_or_insert(ResultType::COMPLETE);
                    GetPromptResponse::Complete(r)
                }
                Err(i) => GetPromptResponse::InputRequired(i),
            });
        }
        vs.get_prompt(p, &self.caller(&cx))
            .await
            .map(|mut r| {
                r.result_type.get_or_insert(ResultType::COMPLETE);
                GetPromptResponse::Complete(r)
            })
            .map_err(to_error)
    }

    async fn list_resources(
        &self,
        p: Option<PaginatedRequestParams>,
        cx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let (gw, vs) = self.server()?;
        let cat = vs.catalog();
        let (page, next) = vs
            .page(&cat.resources, p.as_ref().and_then(|p| p.cursor.as_deref()))
            .map_err(to_error)?;
        let mut r = ListResourcesResult::with_all_items(page.to_vec());
        r.next_cursor = next;
        (r.ttl_ms, r.cache_scope) = Self::list_hints_for(&gw, &cx);
        Ok(r)
    }

    async fn list_resource_templates(
        &self,
        p: Option<PaginatedRequestParams>,
        cx: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        let (gw, vs) = self.server()?;
        let cat = vs.catalog();
        let (page, next) = vs
            .page(
                &cat.resource_templates,
                p.as_ref().and_then(|p| p.cursor.as_deref()),
            )
            .map_err(to_error)?;
        let mut r = ListResourceTemplatesResult::with_all_items(page.to_vec());
        r.next_cursor = next;
        (r.ttl_ms, r.cache_scope) = Self::list_hints_for(&gw, &cx);
        Ok(r)
    }

    async fn read_resource(
        &self,
        p: ReadResourceRequestParams,
        cx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let (gw, vs) = self.server()?;
        if Self::modern(&cx) {
            let r = self
                .bridged::<rmcp::model::ReadResourceResult>(
                    &gw,
                    "resources/read",
                    &p,
                    &cx,
                    move |fwd, c| Box::pin(async move { vs.read_resource_raw(fwd, &c).await }),
                )
                .await?;
            return Ok(match r {
                Ok(mut r) => {
                    r.result_type.get_or_insert(ResultType::COMPLETE);
                    // An upstream that gives no hint (every legacy one) gets the cautious one:
                    // stale at once, for this caller only.
                    r.ttl_ms.get_or_insert(0);
                    r.cache_scope.get_or_insert(CacheScope::Private);
                    ReadResourceResponse::Complete(r)
                }
                Err(i) => ReadResourceResponse::InputRequired(i),
            });
        }
        vs.read_resource(p, &self.caller(&cx))
            .await
            .map(|mut r| {
                r.result_type.get_or_insert(ResultType::COMPLETE);
                ReadResourceResponse::Complete(r)
            })
            .map_err(to_error)
    }

    async fn subscribe(
        &self,
        p: SubscribeRequestParams,
        cx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let (gw, vs) = self.server()?;
        self.register(&gw, cx.peer.clone(), &cx.extensions);
        vs.subscribe(&p.uri, &self.caller(&cx))
            .await
            .map_err(to_error)?;
        gw.sessions.subscribe(self.session, p.uri);
        Ok(())
    }

    async fn unsubscribe(
        &self,
        p: UnsubscribeRequestParams,
        cx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let (gw, vs) = self.server()?;
        gw.sessions.unsubscribe(self.session, &p.uri);
        // Other sessions may still watch it; the upstream subscription is shared, so it stays
        // unless no session of this gateway watches the URI any more.
        if !gw.sessions.anyone_subscribed(&self.server, &p.uri) {
            vs.unsubscribe(&p.uri, &self.caller(&cx))
                .await
                .map_err(to_error)?;
        }
        Ok(())
    }

    async fn complete(
        &self,
        p: CompleteRequestParams,
        cx: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, ErrorData> {
        let (_, vs) = self.server()?;
        let mut r = vs.complete(p, &self.caller(&cx)).await.map_err(to_error)?;
        // Required by 2026-07-28 clients; rmcp removes it for older ones.
        r.result_type.get_or_insert(ResultType::COMPLETE);
        Ok(r)
    }

    async fn set_level(
        &self,
        p: SetLevelRequestParams,
        cx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let (gw, vs) = self.server()?;
        self.register(&gw, cx.peer.clone(), &cx.extensions);
        gw.sessions.set_level(self.session, p.level);
        vs.set_level(p.level, &self.caller(&cx)).await;
        Ok(())
    }
}
