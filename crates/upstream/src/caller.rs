//! What a forwarded request carries from its client: who it is for, where messages about it go,
//! its cancellation, and the credential it goes upstream with.

#![allow(deprecated)]

use std::sync::Arc;

use rmcp::model::{LoggingLevel, ProgressToken};
use tokio_util::sync::CancellationToken;

use crate::Downstream;

/// The client side of one forwarded request.
#[derive(Clone)]
pub struct Caller {
    /// Which client the call is for: a legacy client session, or one stateless call (which gets
    /// a key of its own). Server→client requests are attributed, and per-client upstream
    /// sessions are kept, by it.
    pub client: u64,
    /// The client's request `_meta` as forwarded (minus its progress token, which is remapped,
    /// and the keys that describe the client's own hop).
    pub meta: Option<serde_json::Map<String, serde_json::Value>>,
    /// Where progress, logs and server→client requests of the call go.
    pub downstream: Option<Arc<dyn crate::Downstream>>,
    pub progress_token: Option<ProgressToken>,
    pub ct: CancellationToken,
    /// The least severe log level the client wants (its session's `logging/setLevel`, or a
    /// modern request's own `logLevel`); told to 2026-07-28 upstreams per request.
    pub log_level: Option<LoggingLevel>,
}

impl Caller {
    /// A call made for no client (catalog reads, upstream subscriptions of listen streams).
    pub fn internal(client: u64, ct: CancellationToken) -> Self {
        Self {
            client,
            meta: None,
            downstream: None,
            progress_token: None,
            ct,
            log_level: None,
        }
    }

    pub(crate) fn client_side(&self) -> Option<&dyn Downstream> {
        self.downstream.as_deref()
    }
}

/// What a forwarded request authenticates to its connector with. The gateway's credentials
/// seam chooses it per request, between routing and the upstream request; the connection it
/// goes on is keyed by it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Credential {
    /// The connector's own configured headers and environment: a service account shared by
    /// every caller, on the connector's connection (or on the client's own upstream session
    /// for `sessions = "per_client"` connectors).
    Configured,
}
