//! Why an upstream request failed. The server crate maps these to JSON-RPC errors.

use std::time::Duration;

use rmcp::model::ErrorData;

#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// The connector is not running (crashed, circuit open, unreachable).
    #[error("connector unavailable: {0}")]
    Unavailable(String),
    /// The upstream answered with a JSON-RPC error; it is relayed as is.
    #[error("upstream error {}: {}", .0.code.0, .0.message)]
    Protocol(ErrorData),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("cancelled by the client")]
    Cancelled,
    #[error("unexpected upstream result: {0}")]
    BadResult(String),
}
