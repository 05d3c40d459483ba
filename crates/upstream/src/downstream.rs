//! The client side of a forwarded call, as the upstream handler sees it: where the call's
//! progress, logs and server→client requests go. An rmcp session peer is one; the server
//! crate's own data path (a response stream of its own) is another.

#![allow(deprecated)]

use std::{future::Future, pin::Pin};

use rmcp::{
    RoleServer,
    model::{
        ClientCapabilities, CreateMessageRequestParams, CreateMessageResult, ElicitRequestParams,
        ElicitResult, ErrorData, ListRootsResult, LoggingMessageNotificationParam,
        ProgressNotificationParam,
    },
    service::Peer,
};

pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub trait Downstream: Send + Sync {
    /// The client's declared capabilities, if known; a request for one it lacks is refused.
    fn capabilities(&self) -> Option<ClientCapabilities>;
    /// What the client declared, to tell a 2026-07-28 upstream in each request's `_meta` (so it
    /// asks only for what the client can answer). Defaults to `capabilities`.
    fn declared(&self) -> Option<ClientCapabilities> {
        self.capabilities()
    }
    fn progress(&self, p: ProgressNotificationParam) -> BoxFut<'_, ()>;
    fn log(&self, p: LoggingMessageNotificationParam) -> BoxFut<'_, ()>;
    fn create_message(
        &self,
        p: CreateMessageRequestParams,
    ) -> BoxFut<'_, Result<CreateMessageResult, ErrorData>>;
    fn create_elicitation(
        &self,
        p: ElicitRequestParams,
    ) -> BoxFut<'_, Result<ElicitResult, ErrorData>>;
    fn list_roots(&self) -> BoxFut<'_, Result<ListRootsResult, ErrorData>>;
}

fn relay_error(what: &str, e: rmcp::ServiceError) -> ErrorData {
    match e {
        rmcp::ServiceError::McpError(d) => d,
        other => ErrorData::internal_error(
            format!("manifold could not relay {what} to the client: {other}"),
            None,
        ),
    }
}

impl Downstream for Peer<RoleServer> {
    fn capabilities(&self) -> Option<ClientCapabilities> {
        self.peer_info().map(|i| i.capabilities.clone())
    }

    fn progress(&self, p: ProgressNotificationParam) -> BoxFut<'_, ()> {
        Box::pin(async move {
            let _ = self.notify_progress(p).await;
        })
    }

    fn log(&self, p: LoggingMessageNotificationParam) -> BoxFut<'_, ()> {
        Box::pin(async move {
            let _ = self.notify_logging_message(p).await;
        })
    }

    fn create_message(
        &self,
        p: CreateMessageRequestParams,
    ) -> BoxFut<'_, Result<CreateMessageResult, ErrorData>> {
        Box::pin(async move {
            Peer::create_message(self, p)
                .await
                .map_err(|e| relay_error("sampling/createMessage", e))
        })
    }

    fn create_elicitation(
        &self,
        p: ElicitRequestParams,
    ) -> BoxFut<'_, Result<ElicitResult, ErrorData>> {
        Box::pin(async move {
            Peer::create_elicitation(self, p)
                .await
                .map_err(|e| relay_error("elicitation/create", e))
        })
    }

    fn list_roots(&self) -> BoxFut<'_, Result<ListRootsResult, ErrorData>> {
        Box::pin(async move {
            Peer::list_roots(self)
                .await
                .map_err(|e| relay_error("roots/list", e))
        })
    }
}
