//! The client side of a forwarded call, as a connector sees it: where the call's progress, log
//! messages and the upstream's requests to the client (sampling, elicitation, roots) go. The
//! server crate implements it twice: a legacy session's response stream, and the MRTR bridge
//! of a 2026-07-28 call.

#![allow(deprecated)]

use std::{future::Future, pin::Pin};

use rmcp::model::{
    ClientCapabilities, ErrorData, LoggingMessageNotificationParam, ProgressNotificationParam,
};

pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What an upstream may ask a client during a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AskKind {
    /// `sampling/createMessage`
    Sampling,
    /// `elicitation/create`
    Elicitation,
    /// `roots/list`
    Roots,
}

impl AskKind {
    pub fn method(self) -> &'static str {
        match self {
            AskKind::Sampling => "sampling/createMessage",
            AskKind::Elicitation => "elicitation/create",
            AskKind::Roots => "roots/list",
        }
    }

    pub fn of(method: &str) -> Option<Self> {
        Some(match method {
            "sampling/createMessage" => AskKind::Sampling,
            "elicitation/create" => AskKind::Elicitation,
            "roots/list" => AskKind::Roots,
            _ => return None,
        })
    }

    /// Whether `caps` declare what this request needs.
    pub fn declared_by(self, caps: &ClientCapabilities) -> bool {
        match self {
            AskKind::Sampling => caps.sampling.is_some(),
            AskKind::Elicitation => caps.elicitation.is_some(),
            AskKind::Roots => caps.roots.is_some(),
        }
    }

    /// The capability this request needs, as a `ClientCapabilities` naming only it.
    pub fn capability(self) -> ClientCapabilities {
        let v = match self {
            AskKind::Sampling => serde_json::json!({ "sampling": {} }),
            AskKind::Elicitation => serde_json::json!({ "elicitation": {} }),
            AskKind::Roots => serde_json::json!({ "roots": {} }),
        };
        serde_json::from_value(v).expect("valid capabilities")
    }
}

/// One request of the upstream to the client, with its params as the upstream sent them.
#[derive(Clone, Debug)]
pub struct Ask {
    pub kind: AskKind,
    pub params: serde_json::Value,
    /// A 2026-07-28 upstream's own key for it (its `inputRequests` key), which the MRTR bridge
    /// offers the client unchanged.
    pub key: Option<String>,
}

pub trait Downstream: Send + Sync {
    /// The client's declared capabilities, if known; a request for one it lacks is refused
    /// before it reaches the client.
    fn capabilities(&self) -> Option<ClientCapabilities>;
    /// What the client declared, to tell a 2026-07-28 upstream in each request's `_meta` (so it
    /// asks only for what the client can answer). Defaults to `capabilities`.
    fn declared(&self) -> Option<ClientCapabilities> {
        self.capabilities()
    }
    fn progress(&self, p: ProgressNotificationParam) -> BoxFut<'_, ()>;
    fn log(&self, p: LoggingMessageNotificationParam) -> BoxFut<'_, ()>;
    /// Put `ask` to the client; its answer (the result object) as the client sent it.
    fn ask(&self, ask: Ask) -> BoxFut<'_, Result<serde_json::Value, ErrorData>>;
}
