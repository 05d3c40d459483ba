//! One connector (upstream MCP server): its supervisor, connections and catalog, its health, and
//! forwarding of requests to it as JSON text with id and progress-token remapping, deadlines,
//! cancellation, and attribution of what the upstream sends back about each call.
//!
//! - `connector`: the `Connector` façade and the state its parts share; `forward` sends one
//!   request.
//! - `supervise`, `connect`, `catalog`, `listen`: the connection's life — open, read the lists,
//!   serve, restart with backoff; a 2026-07-28 upstream's own `subscriptions/listen` stream.
//! - `link`: the connection's data path (ids `mf-N`, answers picked out before rmcp sees them),
//!   over stdio lines, Streamable HTTP (`link/http.rs`) or HTTP+SSE (`sse`).
//! - `inflight`: the calls in flight, and whom a server→client request belongs to.
//! - `client_handler`: rmcp's side of the connection (requests to the client, list changes).
//! - `input`: a 2026-07-28 upstream's `input_required` rounds.
//! - `caller`, `downstream`: what a forwarded request carries from its client, and where the
//!   messages about it go.
//! - `pool`: per-client upstream sessions; `stdio`, `headers`: process and header details.

// Sampling, roots and logging are deprecated by MCP 2026-07-28 but are what legacy peers use;
// relaying them is this crate's job.
#![allow(deprecated)]

mod caller;
mod catalog;
mod client_handler;
mod connect;
mod connector;
mod downstream;
mod error;
mod headers;
mod health;
mod inflight;
mod input;
mod link;
mod listen;
mod pool;
mod sse;
mod stdio;
mod supervise;

use std::sync::Arc;

use manifold_config::ConnectorId;

pub use caller::{Caller, Credential};
pub use catalog::{JsonMap, UpstreamCatalog};
pub use connector::Connector;
pub use downstream::{Ask, AskKind, BoxFut, Downstream};
pub use error::UpstreamError;
pub use headers::{check_param_headers, decode_header_value, param_header_names};
pub use health::{Health, HealthState};
pub use pool::Pool;
pub use serde_json::value::RawValue;

/// Events for the rest of the gateway, fanned in from every connector.
#[derive(Debug, Clone)]
pub enum UpstreamEvent {
    CatalogChanged(ConnectorId),
    ResourceUpdated(ConnectorId, String),
    /// A log message not attributable to one in-flight call.
    Log(ConnectorId, rmcp::model::LoggingMessageNotificationParam),
    HealthChanged(ConnectorId, HealthState),
    /// An event of a per-client upstream session: it concerns client `.0` only.
    ForClient(u64, Box<UpstreamEvent>),
}

/// How a connector looks up the gateway's environment variables (for `env_passthrough`).
pub type EnvLookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Makes ring the process's TLS crypto provider, once. reqwest and rmcp are built without one
/// (their default, aws-lc-rs, is a long C build), so this runs before any HTTP client is built;
/// calling it again, or after something else installed a provider, changes nothing.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // An error means a provider is installed already, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
