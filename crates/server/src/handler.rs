//! The rmcp `ServerHandler` of a virtual server session: adapts MCP requests to the router and
//! maps every `RouteError` to a JSON-RPC error in one place (`to_error`).

#![allow(deprecated)] // logging/setLevel and roots are legacy-era features we serve

use std::sync::{Arc, Weak};

use rmcp::{
    ErrorData, RoleServer, ServerHandler,
    model::{
        CallToolRequestParams, CallToolResponse, CompleteRequestParams, CompleteResult,
        GetPromptRequestParams, GetPromptResponse, Implementation, InitializeResult,
        ListPromptsResult, ListResourceTemplatesResult, ListResourcesResult, ListToolsResult,
        PaginatedRequestParams, ReadResourceRequestParams, ReadResourceResponse, ResultType,
        ServerCapabilities, SetLevelRequestParams, SubscribeRequestParams,
        UnsubscribeRequestParams,
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

    fn caller(&self, cx: &RequestContext<RoleServer>) -> Caller {
        Caller {
            session: self.session,
            meta: forwarded_meta(&cx.meta.0.0),
            downstream: Some(Arc::new(cx.peer.clone())),
            progress_token: cx.meta.get_progress_token(),
            ct: cx.ct.clone(),
        }
    }
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
        let (instructions, title) = match self.server() {
            Ok((_, vs)) => (vs.catalog().instructions.clone(), vs.spec.title.clone()),
            Err(_) => (None, None),
        };
        // Lists may grow when a connector comes up, so every list capability is advertised with
        // listChanged; logging and completions are routed to the connectors that have them.
        let capabilities: ServerCapabilities = serde_json::from_value(serde_json::json!({
            "tools": { "listChanged": true },
            "prompts": { "listChanged": true },
            "resources": { "listChanged": true, "subscribe": true },
            "completions": {},
            "logging": {}
        }))
        .expect("valid server capabilities");
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

    async fn on_initialized(&self, cx: NotificationContext<RoleServer>) {
        if let Ok((gw, vs)) = self.server() {
            vs.demand();
            let key = cx
                .extensions
                .get::<http::request::Parts>()
                .and_then(|p| p.headers.get("mcp-session-id"))
                .and_then(|v| v.to_str().ok())
                .map(Arc::from);
            gw.sessions
                .register(self.session, self.server.clone(), cx.peer, key);
        }
    }

    async fn list_tools(
        &self,
        p: Option<PaginatedRequestParams>,
        _cx: RequestContext<RoleServer>,
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
        Ok(r)
    }

    async fn call_tool(
        &self,
        p: CallToolRequestParams,
        cx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let (_, vs) = self.server()?;
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
        _cx: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        let (_, vs) = self.server()?;
        let cat = vs.catalog();
        let (page, next) = vs
            .page(&cat.prompts, p.as_ref().and_then(|p| p.cursor.as_deref()))
            .map_err(to_error)?;
        let mut r = ListPromptsResult::with_all_items(page.to_vec());
        r.next_cursor = next;
        Ok(r)
    }

    async fn get_prompt(
        &self,
        p: GetPromptRequestParams,
        cx: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        let (_, vs) = self.server()?;
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
        _cx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let (_, vs) = self.server()?;
        let cat = vs.catalog();
        let (page, next) = vs
            .page(&cat.resources, p.as_ref().and_then(|p| p.cursor.as_deref()))
            .map_err(to_error)?;
        let mut r = ListResourcesResult::with_all_items(page.to_vec());
        r.next_cursor = next;
        Ok(r)
    }

    async fn list_resource_templates(
        &self,
        p: Option<PaginatedRequestParams>,
        _cx: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        let (_, vs) = self.server()?;
        let cat = vs.catalog();
        let (page, next) = vs
            .page(
                &cat.resource_templates,
                p.as_ref().and_then(|p| p.cursor.as_deref()),
            )
            .map_err(to_error)?;
        let mut r = ListResourceTemplatesResult::with_all_items(page.to_vec());
        r.next_cursor = next;
        Ok(r)
    }

    async fn read_resource(
        &self,
        p: ReadResourceRequestParams,
        cx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let (_, vs) = self.server()?;
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
        vs.complete(p, &self.caller(&cx)).await.map_err(to_error)
    }

    async fn set_level(
        &self,
        p: SetLevelRequestParams,
        cx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let (gw, vs) = self.server()?;
        gw.sessions.set_level(self.session, p.level);
        vs.set_level(p.level, &self.caller(&cx)).await;
        Ok(())
    }
}
