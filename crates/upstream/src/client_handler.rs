//! The rmcp client handler of one upstream connection: relays server→client requests, progress
//! and log messages to the client session that caused them, and refreshes the catalog on
//! `list_changed`.

#![allow(deprecated)]

use std::sync::{Arc, Weak};

use rmcp::{
    ClientHandler, RoleClient,
    model::{
        ClientCapabilities, ClientConfig, CreateMessageRequestParams, CreateMessageResult,
        ElicitRequestParams, ElicitResult, ErrorData, Implementation, ListRootsResult,
        LoggingMessageNotificationParam, ProgressNotificationParam,
        ResourceUpdatedNotificationParam,
    },
    service::{NotificationContext, RequestContext},
};

use crate::{Shared, UpstreamEvent};

pub struct UpstreamHandler {
    shared: Weak<Shared>,
    /// The raw data path of this handler's connection (set once it exists).
    raw: Arc<std::sync::OnceLock<Arc<crate::raw::RawLink>>>,
    info: ClientConfig,
}

impl UpstreamHandler {
    pub(crate) fn new(
        shared: Weak<Shared>,
        raw: Arc<std::sync::OnceLock<Arc<crate::raw::RawLink>>>,
    ) -> Self {
        // A shared upstream session must declare everything any client may need; a client that
        // lacks a capability gets a clear error relayed back instead of a hang.
        let capabilities: ClientCapabilities = serde_json::from_value(serde_json::json!({
            "roots": { "listChanged": true },
            "sampling": {},
            "elicitation": { "form": {}, "url": {} }
        }))
        .expect("valid client capabilities");
        let mut implementation = Implementation::default();
        implementation.name = "manifold".into();
        implementation.version = env!("CARGO_PKG_VERSION").into();
        let mut info = ClientConfig::default();
        info.capabilities = capabilities;
        info.client_info = implementation;
        Self { shared, raw, info }
    }

    /// The raw call a server→client request arrived with (Streamable HTTP upstreams).
    fn origin(&self, cx: &RequestContext<RoleClient>) -> Option<u64> {
        self.raw.get().and_then(|l| l.origin(&cx.id))
    }

    fn shared(&self) -> Result<Arc<Shared>, ErrorData> {
        self.shared
            .upgrade()
            .ok_or_else(|| ErrorData::internal_error("connector is shutting down", None))
    }
}

impl ClientHandler for UpstreamHandler {
    fn get_info(&self) -> ClientConfig {
        self.info.clone()
    }

    async fn create_message(
        &self,
        params: CreateMessageRequestParams,
        cx: RequestContext<RoleClient>,
    ) -> Result<CreateMessageResult, ErrorData> {
        let shared = self.shared()?;
        let caller = shared
            .caller_for(self.origin(&cx))
            .map_err(|e| ErrorData::invalid_request(e.message(), None))?;
        let client = caller.downstream.expect("attributed callers have a client");
        if client.capabilities().is_some_and(|c| c.sampling.is_none()) {
            return Err(ErrorData::invalid_request(
                "the client did not declare the sampling capability",
                None,
            ));
        }
        client.create_message(params).await
    }

    async fn create_elicitation(
        &self,
        params: ElicitRequestParams,
        cx: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        let shared = self.shared()?;
        let caller = shared
            .caller_for(self.origin(&cx))
            .map_err(|e| ErrorData::invalid_request(e.message(), None))?;
        let client = caller.downstream.expect("attributed callers have a client");
        if client
            .capabilities()
            .is_some_and(|c| c.elicitation.is_none())
        {
            return Err(ErrorData::invalid_request(
                "the client did not declare the elicitation capability",
                None,
            ));
        }
        client.create_elicitation(params).await
    }

    async fn list_roots(
        &self,
        cx: RequestContext<RoleClient>,
    ) -> Result<ListRootsResult, ErrorData> {
        let shared = self.shared()?;
        let caller = match shared.caller_for(self.origin(&cx)) {
            Ok(c) => c,
            // Outside any call (servers often ask right after initialize) the shared session
            // has no client, so it has no roots.
            Err(crate::Unattributed::Nobody) => return Ok(ListRootsResult::default()),
            Err(e) => return Err(ErrorData::invalid_request(e.message(), None)),
        };
        let client = caller.downstream.expect("attributed callers have a client");
        if client.capabilities().is_some_and(|c| c.roots.is_none()) {
            return Ok(ListRootsResult::default());
        }
        client.list_roots().await
    }

    async fn on_progress(
        &self,
        mut params: ProgressNotificationParam,
        _cx: NotificationContext<RoleClient>,
    ) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        // The call registers its token just after rmcp sends it; an early notification waits a
        // moment for that instead of being dropped.
        let mut caller = shared.caller_for_progress(&params.progress_token);
        for _ in 0..5 {
            if caller.is_some() || shared.pending_calls() == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            caller = shared.caller_for_progress(&params.progress_token);
        }
        let Some(caller) = caller else {
            return;
        };
        let (Some(client), Some(token)) = (caller.downstream, caller.progress_token) else {
            return;
        };
        params.progress_token = token;
        client.progress(params).await;
    }

    async fn on_logging_message(
        &self,
        params: LoggingMessageNotificationParam,
        _cx: NotificationContext<RoleClient>,
    ) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        // Related to a call when exactly one session has calls in flight; otherwise fan out.
        if let Ok(caller) = shared.attributed_caller()
            && let Some(client) = caller.downstream
        {
            client.log(params).await;
            return;
        }
        let _ = shared
            .events
            .send(UpstreamEvent::Log(shared.spec.id.clone(), params));
    }

    async fn on_resource_updated(
        &self,
        params: ResourceUpdatedNotificationParam,
        _cx: NotificationContext<RoleClient>,
    ) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let _ = shared.events.send(UpstreamEvent::ResourceUpdated(
            shared.spec.id.clone(),
            params.uri,
        ));
    }

    async fn on_tool_list_changed(&self, cx: NotificationContext<RoleClient>) {
        self.spawn_refresh(cx.peer);
    }

    async fn on_prompt_list_changed(&self, cx: NotificationContext<RoleClient>) {
        self.spawn_refresh(cx.peer);
    }

    async fn on_resource_list_changed(&self, cx: NotificationContext<RoleClient>) {
        self.spawn_refresh(cx.peer);
    }
}

impl UpstreamHandler {
    /// Refresh off the notification path: the refresh itself sends requests on this connection.
    /// It uses the notifying connection's own peer, which may still be in its first refresh.
    fn spawn_refresh(&self, peer: rmcp::Peer<RoleClient>) {
        if let (Some(shared), Some(link)) = (self.shared.upgrade(), self.raw.get().cloned()) {
            tokio::spawn(async move { shared.refresh_after_change(&peer, &link).await });
        }
    }
}
