//! The rmcp `ClientHandler` of one upstream connection: puts the upstream's requests to the
//! client (sampling, elicitation, roots) to the client whose call caused them, fans out log
//! messages no call claims, and refreshes the catalog on `list_changed`.

#![allow(deprecated)]

use std::sync::{Arc, Weak};

use rmcp::{
    ClientHandler, RoleClient,
    model::{
        ClientCapabilities, ClientConfig, CreateMessageRequestParams, CreateMessageResult,
        ElicitRequestParams, ElicitResult, ErrorData, Implementation, ListRootsResult,
        LoggingMessageNotificationParam, ResourceUpdatedNotificationParam,
    },
    service::{NotificationContext, RequestContext},
};

use crate::{Ask, AskKind, UpstreamEvent, connector::Shared, inflight::Unattributed, link::Link};

pub struct UpstreamHandler {
    shared: Weak<Shared>,
    /// The data path of this handler's connection (set once it exists).
    link: Arc<std::sync::OnceLock<Arc<Link>>>,
    info: ClientConfig,
}

impl UpstreamHandler {
    pub(crate) fn new(shared: Weak<Shared>, link: Arc<std::sync::OnceLock<Arc<Link>>>) -> Self {
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
        // What `initialize` offers (a 2026-07-28 handshake is `server/discover`, which names its
        // versions itself): a legacy connection never offers a version without `initialize`.
        info.protocol_version = rmcp::model::ProtocolVersion::LATEST_WITH_INITIALIZE;
        info.capabilities = capabilities;
        info.client_info = implementation;
        Self { shared, link, info }
    }

    /// Put one request of the upstream to the client it belongs to; its answer decoded as `T`.
    async fn ask<T: serde::de::DeserializeOwned>(
        &self,
        kind: AskKind,
        params: serde_json::Value,
        cx: &RequestContext<RoleClient>,
    ) -> Result<T, ErrorData> {
        let shared = self
            .shared
            .upgrade()
            .ok_or_else(|| ErrorData::internal_error("connector is shutting down", None))?;
        let origin = self.link.get().and_then(|l| l.origin(&cx.id));
        let caller = match shared.calls.attribute(origin).await {
            Ok(c) => c,
            // Outside any call (servers often ask right after initialize) the shared session
            // has no client, so it has no roots.
            Err(Unattributed::Nobody) if kind == AskKind::Roots => {
                return decode(serde_json::json!({ "roots": [] }), kind);
            }
            Err(e) => return Err(ErrorData::invalid_request(e.message(), None)),
        };
        let client = caller.downstream.expect("attributed callers have a client");
        if let Some(caps) = client.capabilities()
            && !kind.declared_by(&caps)
        {
            if kind == AskKind::Roots {
                return decode(serde_json::json!({ "roots": [] }), kind);
            }
            return Err(ErrorData::invalid_request(
                format!(
                    "the client did not declare the capability {} needs",
                    kind.method()
                ),
                None,
            ));
        }
        let answer = client
            .ask(Ask {
                kind,
                params,
                key: None,
            })
            .await?;
        decode(answer, kind)
    }
}

fn decode<T: serde::de::DeserializeOwned>(
    v: serde_json::Value,
    kind: AskKind,
) -> Result<T, ErrorData> {
    serde_json::from_value(v).map_err(|e| {
        ErrorData::invalid_params(
            format!("the client's answer to {} is not valid: {e}", kind.method()),
            None,
        )
    })
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
        let params = serde_json::to_value(params).unwrap_or_default();
        self.ask(AskKind::Sampling, params, &cx).await
    }

    async fn create_elicitation(
        &self,
        params: ElicitRequestParams,
        cx: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        let params = serde_json::to_value(params).unwrap_or_default();
        self.ask(AskKind::Elicitation, params, &cx).await
    }

    async fn list_roots(
        &self,
        cx: RequestContext<RoleClient>,
    ) -> Result<ListRootsResult, ErrorData> {
        self.ask(AskKind::Roots, serde_json::json!({}), &cx).await
    }

    async fn on_logging_message(
        &self,
        params: LoggingMessageNotificationParam,
        _cx: NotificationContext<RoleClient>,
    ) {
        // A message the link did not attribute to a call (several clients had calls in
        // flight, or none) goes to every session that watches this connector's logs.
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
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
        if let (Some(shared), Some(link)) = (self.shared.upgrade(), self.link.get().cloned()) {
            tokio::spawn(async move { shared.refresh_after_change(&peer, &link).await });
        }
    }
}
