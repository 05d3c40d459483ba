//! The request context: everything the pipeline knows about one MCP request, built once by the
//! codec that read it (a legacy session's POST or a 2026-07-28 stateless POST).

#![allow(deprecated)]

use std::{sync::Arc, time::SystemTime};

use manifold_policy::{Principal, Via};
use manifold_router::VirtualServer;
use rmcp::model::{ClientCapabilities, LoggingLevel, ProgressToken};
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

use crate::{session::Session, stream::Outbox};

/// Which protocol era a request belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Era {
    /// In a session opened with `initialize`, at the negotiated version.
    Legacy,
    /// 2026-07-28: stateless, with per-request `_meta`.
    Modern,
}

pub(crate) struct RequestContext {
    /// Who is calling (from the authentication seam at the edge).
    pub principal: Arc<Principal>,
    /// How the request arrived (its source address), for the policy's conditions.
    pub via: Via,
    /// The virtual server, as configured when the request arrived.
    pub vs: Arc<VirtualServer>,
    pub era: Era,
    /// The legacy session (none for 2026-07-28 requests, and for `initialize` itself).
    pub session: Option<Arc<Session>>,
    /// The client key of the request's calls: its session's, or one of its own.
    pub client: u64,
    /// The JSON-RPC id to answer with.
    pub id: Box<RawValue>,
    /// The client's `_meta` as forwarded upstream (its own-hop keys removed).
    pub meta: Option<serde_json::Map<String, serde_json::Value>>,
    pub progress_token: Option<ProgressToken>,
    /// What the client declared: at `initialize`, or in this request's `_meta`.
    pub capabilities: ClientCapabilities,
    /// The least severe log level the client wants for this request.
    pub log_level: Option<LoggingLevel>,
    /// Where messages about the request go before its result (its response stream).
    pub outbox: Outbox,
    /// Cancelled when the client cancels the request (or the gateway shuts down).
    pub ct: CancellationToken,
    pub started: SystemTime,
}

impl RequestContext {
    pub fn modern(&self) -> bool {
        self.era == Era::Modern
    }
}

/// The client's `_meta` as forwarded upstream. The progress token is remapped per hop, and the
/// `io.modelcontextprotocol/*` keys (protocol version, client capabilities, log level) describe
/// the client's own hop, not the gateway's upstream session. Everything else (trace context,
/// custom keys) passes.
pub(crate) fn forwarded_meta(
    meta: &serde_json::Map<String, serde_json::Value>,
) -> Option<serde_json::Map<String, serde_json::Value>> {
    if meta
        .keys()
        .all(|k| k == "progressToken" || k.starts_with("io.modelcontextprotocol/"))
    {
        return None;
    }
    let mut meta = meta.clone();
    meta.retain(|k, _| k != "progressToken" && !k.starts_with("io.modelcontextprotocol/"));
    Some(meta)
}
