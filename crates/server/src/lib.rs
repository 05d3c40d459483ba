//! The inbound side: the running `Gateway` (connectors and virtual servers, swapped whole on
//! reload) and its MCP endpoint at `/mcp/{name}` for both protocol eras, built as one pipeline:
//!
//! - `http`: the edge — routes, `Host`/`Origin` checks, the authentication seam, dispatch to a
//!   codec, `serve` and its drain;
//! - `jsonrpc`: the one validation of incoming messages, the messages written, the one mapping
//!   of failures to JSON-RPC errors;
//! - `legacy`, `modern`: the two codecs (sessions opened with `initialize`; stateless
//!   2026-07-28 requests), which build each request's `context` and hand it to
//! - `pipeline`: the one call core (route → authorize → credentials → upstream → audit), with
//!   `mrtr` bridging a legacy upstream's questions into 2026-07-28 rounds and `confirm`
//!   asking the member to confirm a call a role's `ask` rule names;
//! - `stream`: JSON or event-stream answers, long-lived streams, the `Relay` of a call;
//! - `session`: the gateway's own session table; `notify`: fan-out of upstream events;
//! - `seams`: the pluggable authentication, policy, credentials and audit;
//! - `gateway`: the runtime state, reload and health.

#![allow(deprecated)] // legacy-era logging notifications are relayed

mod admission;
mod confirm;
mod conn;
mod context;
mod drain;
mod gateway;
mod http;
mod jsonrpc;
mod legacy;
mod modern;
mod mrtr;
mod notify;
mod origin;
mod pipeline;
mod seams;
mod session;
mod stream;

pub use conn::Peer;
pub use gateway::Gateway;
pub use http::{app, check_host, serve, serve_with};
pub use jsonrpc::to_error;
pub use seams::{
    Anonymous, AuthError, AuthErrorKind, Authenticate, Configured, CredentialError, Credentials,
    Seams,
};
