//! The pipeline's four seams, each consulted once per request: **authenticate** at the HTTP
//! edge (a request's headers → its `Principal`), **authorize** (the `Policy` that turns a routed
//! request into a `Permit`), **credentials** (which credential a permitted request goes
//! upstream with), and **audit** (where the record of each request goes). The defaults allow
//! everything as today's gateway does: anonymous callers, every action, the connectors' own
//! configured credentials, audit events in the log.

use std::sync::Arc;

use manifold_audit::AuditSink;
use manifold_config::ConnectorSpec;
use manifold_policy::{Policy, Principal};
use manifold_upstream::{BoxFut, Credential};

/// Why a request could not be authenticated: 401 (no credential, or one that is not valid) or
/// 403 (valid, but without a scope the request needs), with the `WWW-Authenticate: Bearer`
/// parameters that tell the client what to do (RFC 6750, RFC 9728).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct AuthError {
    pub message: String,
    pub kind: AuthErrorKind,
    /// `resource_metadata="…", scope="…"`, when the gateway has an authorization server.
    pub challenge: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthErrorKind {
    /// No credential: 401 without an `error` (the client should sign in).
    Missing,
    /// A credential that is not valid: 401 `invalid_token`.
    Invalid,
    /// Valid, but short of a scope: 403 `insufficient_scope`.
    InsufficientScope,
}

impl AuthError {
    /// 401 `invalid_token` with this reason.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            kind: AuthErrorKind::Invalid,
            challenge: None,
        }
    }
}

/// The authentication seam: reads a request's headers (only here: nothing downstream reads
/// `Authorization` again) and says who is calling.
pub trait Authenticate: Send + Sync {
    fn authenticate<'a>(
        &'a self,
        parts: &'a http::request::Parts,
    ) -> BoxFut<'a, Result<Principal, AuthError>>;
}

/// Every caller is anonymous (the gateway before authentication exists).
#[derive(Clone, Copy, Debug, Default)]
pub struct Anonymous;

impl Authenticate for Anonymous {
    fn authenticate<'a>(
        &'a self,
        _parts: &'a http::request::Parts,
    ) -> BoxFut<'a, Result<Principal, AuthError>> {
        Box::pin(async { Ok(Principal::anonymous()) })
    }
}

/// Why no credential could be found for a permitted request (the caller has not authorised
/// the connector yet, say).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct CredentialError(pub String);

/// The credentials seam: between routing and the upstream request, which credential the
/// request goes with (and so which upstream connection).
pub trait Credentials: Send + Sync {
    fn credential(
        &self,
        who: &Principal,
        connector: &ConnectorSpec,
    ) -> Result<Credential, CredentialError>;
}

/// Every request uses the connector's configured headers and environment.
#[derive(Clone, Copy, Debug, Default)]
pub struct Configured;

impl Credentials for Configured {
    fn credential(
        &self,
        _who: &Principal,
        _connector: &ConnectorSpec,
    ) -> Result<Credential, CredentialError> {
        Ok(Credential::Configured)
    }
}

/// The seams a gateway runs with.
#[derive(Clone)]
pub struct Seams {
    pub authenticate: Arc<dyn Authenticate>,
    pub policy: Arc<dyn Policy>,
    pub credentials: Arc<dyn Credentials>,
    pub audit: Arc<dyn AuditSink>,
    /// The approved tool definitions that catalogs under `tool_updates = "review"` are built
    /// with (not a per-request seam: consulted when a catalog is built).
    pub reviews: Arc<manifold_router::Reviews>,
}

impl Default for Seams {
    fn default() -> Self {
        Self {
            authenticate: Arc::new(Anonymous),
            policy: Arc::new(manifold_policy::AllowAll),
            credentials: Arc::new(Configured),
            audit: Arc::new(manifold_audit::LogSink),
            reviews: Arc::default(),
        }
    }
}
