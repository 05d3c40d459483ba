//! The gateway's OAuth 2.1 authorization server, on the gateway's own origin: discovery
//! metadata (RFC 8414, OpenID discovery, and each virtual server's protected-resource metadata,
//! RFC 9728), the authorization endpoint (authorization code with PKCE S256 only, `resource`
//! required, `iss` on every response, RFC 9207) with its sign-in and consent pages, the token
//! endpoint (codes single-use and bound to client, redirect URI, resource, challenge and user;
//! refresh tokens rotated on every use, a reuse revoking the whole grant), revocation
//! (RFC 7009), client ID metadata documents (`client_doc`), dynamic client registration
//! (RFC 7591, limited per source and in total, unused clients expiring) and the JWKS.
//!
//! Invariants: the issuer comes from the config (or the listening address), never from a
//! request; no redirect happens to a URI not registered for the client; codes, refresh tokens
//! and sign-in sessions are stored as hashes; token responses and pages are `no-store`.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, OnceLock, Weak},
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use axum::{
    Form, Json, Router,
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use manifold_config::{AuthSettings, valid_redirect_uri};
use manifold_server::{Gateway, Peer};
use manifold_store::{Client, Code, Grant, Redeemed, Store, User, new_id, now};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::{
    AccessClaims, KeyRing, Rotation, TokenError,
    client_doc::{self, ClientDocs},
    hash_key, key_ring, pages,
    seal::{self, Step},
};

/// The one scope: access to a virtual server's tools, prompts and resources.
pub const SCOPE: &str = "mcp";
/// How long an authorization code may wait to be redeemed.
const CODE_LIFETIME: i64 = 300;
/// How long a browser stays signed in to the authorization server.
const SIGN_IN_LIFETIME: i64 = 12 * 3600;
const SESSION_COOKIE: &str = "mf_session";
const CSRF_COOKIE: &str = "mf_csrf";

/// The authorization server, shared by its routes and the resource server's checks.
pub struct AuthServer {
    pub(crate) store: Store,
    /// The gateway it serves (set once it runs: the gateway holds this server in its seams).
    gw: OnceLock<Weak<Gateway>>,
    /// `https://gateway.example.com`: no trailing slash.
    pub issuer: String,
    settings: AuthSettings,
    ring: ArcSwap<KeyRing>,
    /// When the key ring was last read from the store (an unknown `kid` reads it again, at
    /// most this often).
    ring_read: Mutex<Instant>,
    logins: Window,
    registrations: Window,
    /// Client ID metadata documents, when accepted.
    docs: Option<ClientDocs>,
    /// Identity providers members may sign in through, if any.
    pub(crate) sso: Option<crate::sso::Sso>,
}

/// A client the authorization request names: its name, redirect URIs and whether the
/// administrator configured it.
pub(crate) struct KnownClient {
    pub name: String,
    pub redirect_uris: Vec<String>,
    pub configured: bool,
}

/// Why a client cannot be used, for the page the person sees.
pub(crate) enum NoClient {
    Unknown,
    /// Its metadata document was refused (the reason).
    Document(String),
    /// The store failed.
    Failed(String),
}

impl AuthServer {
    /// The server for `issuer` (the config's, or `http://` and the listening address).
    pub async fn start(
        store: Store,
        settings: &AuthSettings,
        listening: SocketAddr,
    ) -> Result<Arc<Self>, String> {
        let settings = settings.clone();
        let issuer = settings
            .issuer
            .clone()
            .unwrap_or_else(|| format!("http://{listening}"));
        let ring = key_ring(&store, now(), rotation(&settings)).await?;
        let docs = if settings.client_metadata_documents {
            Some(ClientDocs::new(&settings)?)
        } else {
            None
        };
        let sso = crate::sso::Sso::new(&settings.providers, &issuer)?;
        let server = Arc::new(Self {
            sso,
            store,
            gw: OnceLock::new(),
            issuer,
            ring: ArcSwap::from_pointee(ring),
            ring_read: Mutex::new(Instant::now()),
            logins: Window::new(Duration::from_secs(60), settings.logins_per_minute),
            registrations: Window::new(Duration::from_secs(3600), settings.registrations_per_hour),
            docs,
            settings,
        });
        // Keys rotate and other gateways add theirs: read the ring again every minute; forget
        // registered clients nobody used for `unused_client_expiry`.
        let weak = Arc::downgrade(&server);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            tick.tick().await;
            let mut n: u64 = 0;
            loop {
                tick.tick().await;
                let Some(s) = weak.upgrade() else { return };
                s.reread_ring().await;
                if n.is_multiple_of(60) {
                    let before = now() - s.settings.unused_client_expiry.as_secs() as i64;
                    match s.store.expire_clients(before).await {
                        Ok(0) => {}
                        Ok(gone) => {
                            tracing::info!(clients = gone, "forgot unused registered clients")
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot expire unused clients"),
                    }
                }
                n += 1;
            }
        });
        Ok(server)
    }

    /// Serve `gw` (once, after the gateway has started with this server in its seams).
    pub fn attach(&self, gw: &Arc<Gateway>) {
        let _ = self.gw.set(Arc::downgrade(gw));
    }

    fn gateway(&self) -> Option<Arc<Gateway>> {
        self.gw.get().and_then(Weak::upgrade)
    }

    /// Whether `name` is a virtual server of the running config.
    pub(crate) fn serves(&self, name: &str) -> bool {
        self.gateway()
            .is_some_and(|g| g.virtual_server(name).is_some())
    }

    pub fn required(&self) -> bool {
        self.settings.required
    }

    /// The canonical URL of a virtual server: the audience of its tokens (RFC 8707).
    pub fn resource(&self, server: &str) -> String {
        format!("{}/mcp/{server}", self.issuer)
    }

    /// `resource_metadata="…", scope="…"` for a virtual server's challenges.
    pub fn challenge(&self, server: &str) -> String {
        format!(
            "resource_metadata=\"{}/.well-known/oauth-protected-resource/mcp/{server}\", scope=\"{SCOPE}\"",
            self.issuer
        )
    }

    async fn reread_ring(&self) {
        match key_ring(&self.store, now(), rotation(&self.settings)).await {
            Ok(r) => self.ring.store(Arc::new(r)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the signing keys; keeping the ones loaded")
            }
        }
        *self.ring_read.lock().expect("ring lock") = Instant::now();
    }

    /// Verify an access token for `audience`; an unknown key (another gateway's new one)
    /// reads the ring again, at most every 5 seconds.
    pub(crate) async fn verify(
        &self,
        token: &str,
        audience: &str,
    ) -> Result<AccessClaims, TokenError> {
        let first = self
            .ring
            .load()
            .verify(token, &self.issuer, audience, now());
        if !matches!(first, Err(TokenError::UnknownKey(_))) {
            return first;
        }
        let stale = self.ring_read.lock().expect("ring lock").elapsed() > Duration::from_secs(5);
        if !stale {
            return first;
        }
        self.reread_ring().await;
        self.ring
            .load()
            .verify(token, &self.issuer, audience, now())
    }

    /// A signed access token for `grant`, issued at `now`, for its virtual server only.
    pub fn access_token(&self, grant: &Grant, now: i64) -> Result<String, String> {
        self.ring.load().issue(&AccessClaims {
            iss: self.issuer.clone(),
            sub: grant.user_id.clone(),
            aud: grant.resource.clone(),
            exp: now + self.settings.access_token_lifetime.as_secs() as i64,
            iat: now,
            jti: new_id(),
            client_id: grant.client_id.clone(),
            scope: grant.scope.clone(),
            sid: grant.id.clone(),
        })
    }

    /// The routes: metadata, the authorization and token endpoints, sign-in and consent,
    /// registration, revocation and the JWKS.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/.well-known/oauth-authorization-server", get(as_metadata))
            .route("/.well-known/openid-configuration", get(oidc_metadata))
            .route(
                "/.well-known/oauth-protected-resource/mcp/{server}",
                get(resource_metadata),
            )
            .route("/oauth/authorize", get(authorize))
            .route("/oauth/login", post(login))
            .route("/oauth/logout", get(logout_page).post(logout))
            .route("/oauth/consent", post(consent))
            .route("/oauth/token", post(token))
            .route("/oauth/register", post(register))
            .route("/oauth/revoke", post(revoke))
            .route("/oauth/jwks", get(jwks))
            .merge(crate::sso::Sso::router())
            .with_state(self.clone())
    }

    fn metadata(&self) -> serde_json::Value {
        let i = &self.issuer;
        let mut m = json!({
            "issuer": i,
            "authorization_endpoint": format!("{i}/oauth/authorize"),
            "token_endpoint": format!("{i}/oauth/token"),
            "revocation_endpoint": format!("{i}/oauth/revoke"),
            "jwks_uri": format!("{i}/oauth/jwks"),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post"],
            "revocation_endpoint_auth_methods_supported": ["none"],
            "scopes_supported": [SCOPE],
            "authorization_response_iss_parameter_supported": true,
            "client_id_metadata_document_supported": self.docs.is_some(),
        });
        if self.settings.dynamic_registration {
            m["registration_endpoint"] = json!(format!("{i}/oauth/register"));
        }
        if self.sso.as_ref().is_some_and(|x| x.accepts_assertions()) {
            m["grant_types_supported"] = json!([
                "authorization_code",
                "refresh_token",
                crate::id_jag::GRANT_TYPE
            ]);
        }
        m
    }

    /// A configured client, a registered one, or one whose id is the URL of its metadata
    /// document.
    pub(crate) async fn client(&self, id: &str) -> Result<KnownClient, NoClient> {
        if let Some(c) = self.settings.clients.get(id) {
            return Ok(KnownClient {
                name: c.name.clone(),
                redirect_uris: c.redirect_uris.clone(),
                configured: true,
            });
        }
        if client_doc::is_url(id) {
            let Some(docs) = &self.docs else {
                return Err(NoClient::Document(
                    "this gateway does not accept client metadata documents (auth.client_metadata_documents is off)".to_owned(),
                ));
            };
            let d = docs.get(id).await.map_err(NoClient::Document)?;
            return Ok(KnownClient {
                name: d.name.clone(),
                redirect_uris: d.redirect_uris.clone(),
                configured: false,
            });
        }
        if !id.starts_with("mfc_") {
            return Err(NoClient::Unknown);
        }
        match self.store.client(id).await {
            Ok(Some(c)) => Ok(KnownClient {
                name: c.name,
                redirect_uris: c.redirect_uris,
                configured: false,
            }),
            Ok(None) => Err(NoClient::Unknown),
            Err(e) => Err(NoClient::Failed(e.to_string())),
        }
    }
}

fn rotation(s: &AuthSettings) -> Rotation {
    Rotation {
        token_lifetime: s.access_token_lifetime.as_secs() as i64,
        ..Rotation::default()
    }
}

/// A fixed window of attempts per key (a source address, a user name), bounded in memory.
pub(crate) struct Window {
    every: Duration,
    max: u32,
    seen: Mutex<HashMap<String, (Instant, u32)>>,
}

impl Window {
    pub(crate) fn new(every: Duration, max: u32) -> Self {
        Self {
            every,
            max: max.max(1),
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Count one attempt for each key; false if any is over its limit.
    pub(crate) fn allow(&self, keys: &[&str]) -> bool {
        let mut seen = self.seen.lock().expect("window lock");
        if seen.len() > 100_000 {
            let every = self.every;
            seen.retain(|_, (t, _)| t.elapsed() < every);
        }
        let mut ok = true;
        for k in keys {
            let e = seen.entry((*k).to_owned()).or_insert((Instant::now(), 0));
            if e.0.elapsed() >= self.every {
                *e = (Instant::now(), 0);
            }
            e.1 += 1;
            ok &= e.1 <= self.max;
        }
        ok
    }
}

/// Random, URL-safe: 256 bits.
pub(crate) fn secret(prefix: &str) -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{prefix}{}", B64.encode(bytes))
}

fn source(peer: Option<&Peer>) -> String {
    peer.map(|p| p.0.ip().to_string()).unwrap_or_default()
}

pub(crate) fn cookie<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

pub(crate) fn set_cookie(s: &AuthServer, name: &str, value: &str, max_age: i64) -> HeaderValue {
    let secure = if s.issuer.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/oauth; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}"
    ))
    .expect("cookie values are URL-safe")
}

/// Checks every route of the authorization server makes first: the `Host` (DNS rebinding),
/// and for the forms, that a browser posts them from this origin.
pub(crate) fn host_ok(s: &AuthServer, h: &HeaderMap) -> Option<Response> {
    match s.gateway() {
        Some(gw) => manifold_server::check_host(&gw, h),
        None => Some((StatusCode::SERVICE_UNAVAILABLE, "the gateway is starting").into_response()),
    }
}

fn same_origin(s: &AuthServer, h: &HeaderMap) -> Option<Response> {
    if let Some(r) = host_ok(s, h) {
        return Some(r);
    }
    match h.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        None => None,
        Some(o) if o == s.issuer => None,
        Some(o) => Some(pages::error(
            StatusCode::FORBIDDEN,
            "This form was sent from another site",
            &format!(
                "The sign-in forms accept posts from {} only, not from {o}.",
                s.issuer
            ),
        )),
    }
}

async fn as_metadata(State(s): State<Arc<AuthServer>>, h: HeaderMap) -> Response {
    if let Some(r) = host_ok(&s, &h) {
        return r;
    }
    Json(s.metadata()).into_response()
}

async fn oidc_metadata(State(s): State<Arc<AuthServer>>, h: HeaderMap) -> Response {
    if let Some(r) = host_ok(&s, &h) {
        return r;
    }
    let mut m = s.metadata();
    m["subject_types_supported"] = json!(["public"]);
    m["id_token_signing_alg_values_supported"] = json!(["ES256"]);
    Json(m).into_response()
}

async fn resource_metadata(
    State(s): State<Arc<AuthServer>>,
    Path(server): Path<String>,
    h: HeaderMap,
) -> Response {
    if let Some(r) = host_ok(&s, &h) {
        return r;
    }
    if !s.serves(&server) {
        return (StatusCode::NOT_FOUND, "no such virtual server").into_response();
    }
    Json(json!({
        "resource": s.resource(&server),
        "authorization_servers": [s.issuer],
        "scopes_supported": [SCOPE],
        "bearer_methods_supported": ["header"],
        "resource_name": server,
    }))
    .into_response()
}

async fn jwks(State(s): State<Arc<AuthServer>>, h: HeaderMap) -> Response {
    if let Some(r) = host_ok(&s, &h) {
        return r;
    }
    (
        [(header::CACHE_CONTROL, "max-age=300")],
        Json(s.ring.load().jwks()),
    )
        .into_response()
}

/// The parameters of an authorization request (and of the forms that continue it).
#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct AuthzParams {
    #[serde(default)]
    pub response_type: String,
    #[serde(default)]
    pub client_id: String,
    #[serde(default)]
    pub redirect_uri: Option<String>,
    #[serde(default)]
    pub scope: Option<String>,
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub code_challenge: Option<String>,
    #[serde(default)]
    pub code_challenge_method: Option<String>,
    #[serde(default)]
    pub resource: Option<String>,
}

impl AuthzParams {
    /// The request as a query string, to carry it through the sign-in form.
    pub fn query(&self) -> String {
        let mut q: Vec<(String, String)> = Vec::new();
        let mut add = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                q.push((k.to_owned(), v.clone()));
            }
        };
        add("response_type", &Some(self.response_type.clone()));
        add("client_id", &Some(self.client_id.clone()));
        add("redirect_uri", &self.redirect_uri);
        add("scope", &self.scope);
        add("state", &self.state);
        add("code_challenge", &self.code_challenge);
        add("code_challenge_method", &self.code_challenge_method);
        add("resource", &self.resource);
        q.iter()
            .map(|(k, v)| format!("{k}={}", pct(v)))
            .collect::<Vec<_>>()
            .join("&")
    }
}

/// Percent-encode everything but the unreserved characters (RFC 3986).
pub(crate) fn pct(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A validated authorization request.
pub(crate) struct Authz {
    pub params: AuthzParams,
    pub client_name: String,
    pub configured: bool,
    pub redirect_uri: String,
    pub resource: String,
    pub scope: String,
    pub challenge: String,
}

/// Whether `given` is `registered`: exact, except that the port of a loopback IP redirect
/// may differ (RFC 8252 §7.3: native apps listen on a port of their choosing).
fn redirect_matches(registered: &str, given: &str) -> bool {
    if registered == given {
        return true;
    }
    let (Ok(r), Ok(g)) = (registered.parse::<http::Uri>(), given.parse::<http::Uri>()) else {
        return false;
    };
    let loopback_ip = |u: &http::Uri| {
        u.scheme_str() == Some("http")
            && u.host()
                .map(|h| h.trim_matches(['[', ']']))
                .and_then(|h| h.parse::<std::net::IpAddr>().ok())
                .is_some_and(|ip| ip.is_loopback())
    };
    loopback_ip(&r)
        && loopback_ip(&g)
        && r.host() == g.host()
        && r.path_and_query() == g.path_and_query()
        && !given.contains('@')
        && !given.contains('#')
}

/// Why an authorization request was refused. `Page`: the client or redirect URI is not valid,
/// so the error is shown here and nothing is redirected; `Redirect`: the error goes back to the
/// client's redirect URI.
pub(crate) enum Refusal {
    Page(Response),
    Redirect(Response),
}

async fn validate(s: &AuthServer, p: AuthzParams) -> Result<Authz, Refusal> {
    let page =
        |title: &str, m: &str| Refusal::Page(pages::error(StatusCode::BAD_REQUEST, title, m));
    if p.client_id.is_empty() {
        return Err(page("No client", "The request names no client_id."));
    }
    let KnownClient {
        name: client_name,
        redirect_uris: uris,
        configured,
    } = match s.client(&p.client_id).await {
        Ok(c) => c,
        Err(NoClient::Unknown) => {
            return Err(page(
                "Unknown application",
                "The application that sent you here is not registered with this gateway (it may have expired): start again from the application.",
            ));
        }
        Err(NoClient::Document(why)) => {
            return Err(page(
                "Unknown application",
                &format!(
                    "The application that sent you here identifies itself by the address {}, but the gateway cannot use what is there: {why}. Tell the application's developer.",
                    p.client_id
                ),
            ));
        }
        Err(NoClient::Failed(e)) => {
            tracing::error!(error = %e, "cannot look up a client: the store failed");
            return Err(Refusal::Page(pages::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Try again",
                "The gateway cannot check the application right now.",
            )));
        }
    };
    let redirect_uri = match &p.redirect_uri {
        Some(r) if uris.iter().any(|u| redirect_matches(u, r)) => r.clone(),
        Some(_) => {
            return Err(page(
                "Wrong redirect address",
                "The address this request wants to return to is not registered for the application, so you are not sent there.",
            ));
        }
        None if uris.len() == 1 => uris[0].clone(),
        None => {
            return Err(page(
                "No redirect address",
                "The request names no redirect_uri.",
            ));
        }
    };
    let back = |error: &str, description: &str| {
        Refusal::Redirect(redirect(
            s,
            &redirect_uri,
            &[("error", error), ("error_description", description)],
            p.state.as_deref(),
        ))
    };
    if p.response_type != "code" {
        return Err(back(
            "unsupported_response_type",
            "only response_type=code is supported",
        ));
    }
    let Some(challenge) = p.code_challenge.clone().filter(|c| !c.is_empty()) else {
        return Err(back(
            "invalid_request",
            "PKCE is required: send code_challenge and code_challenge_method=S256",
        ));
    };
    if p.code_challenge_method.as_deref() != Some("S256") {
        return Err(back(
            "invalid_request",
            "only code_challenge_method=S256 is supported",
        ));
    }
    if challenge.len() != 43
        || !challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(back(
            "invalid_request",
            "code_challenge must be the base64url SHA-256 of the verifier (43 characters)",
        ));
    }
    let Some(resource) = p.resource.clone() else {
        return Err(back(
            "invalid_target",
            "send resource=<the virtual server's URL> (RFC 8707)",
        ));
    };
    let known = resource
        .strip_prefix(&format!("{}/mcp/", s.issuer))
        .is_some_and(|name| s.serves(name));
    if !known {
        return Err(back(
            "invalid_target",
            "resource is not a virtual server of this gateway",
        ));
    }
    // Unknown scopes are dropped (RFC 6749 §3.3); the granted scope is in the token response.
    let scope = SCOPE.to_owned();
    Ok(Authz {
        params: p,
        client_name,
        configured,
        redirect_uri,
        resource,
        scope,
        challenge,
    })
}

/// A 303 to the client's redirect URI with `params`, `state` and `iss` (RFC 9207).
fn redirect(s: &AuthServer, uri: &str, params: &[(&str, &str)], state: Option<&str>) -> Response {
    let mut q: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{k}={}", pct(v)))
        .collect();
    if let Some(st) = state {
        q.push(format!("state={}", pct(st)));
    }
    q.push(format!("iss={}", pct(&s.issuer)));
    let sep = if uri.contains('?') { '&' } else { '?' };
    let mut r = Redirect::to(&format!("{uri}{sep}{}", q.join("&"))).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The browser's sign-in session, if it stands: its user is enabled, and a member of an
/// identity provider signed in there recently enough (else they sign in there again).
async fn signed_in(s: &AuthServer, h: &HeaderMap) -> Option<manifold_store::SignIn> {
    let token = cookie(h, SESSION_COOKIE)?;
    match s.store.sign_in(&hash_key(token), now()).await {
        Ok(Some(si)) if !si.user.disabled => {
            if si.user.issuer != manifold_store::LOCAL_ISSUER
                && recent_enough(s, &si.user.id, now()).await.is_err()
            {
                return None;
            }
            Some(si)
        }
        Ok(_) => None,
        Err(e) => {
            tracing::error!(error = %e, "cannot read a sign-in session: the store failed");
            None
        }
    }
}

async fn authorize(
    State(s): State<Arc<AuthServer>>,
    h: HeaderMap,
    Query(p): Query<AuthzParams>,
) -> Response {
    if let Some(r) = host_ok(&s, &h) {
        return r;
    }
    let a = match validate(&s, p).await {
        Ok(a) => a,
        Err(Refusal::Page(r) | Refusal::Redirect(r)) => return r,
    };
    let Some(si) = signed_in(&s, &h).await else {
        return login_page(&s, &a.params, None);
    };
    // Consent is asked once per user and client; clients in the config are the
    // administrator's, and need none.
    let remembered = a.configured
        || match s.store.has_consent(&si.user.id, &a.params.client_id).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot read consents: the store failed");
                false
            }
        };
    // A member whose provider token went to an earlier authorization gets one of their own
    // (from the provider, without a page when its own session stands).
    if si.provider_token.as_deref() == Some("")
        && let Some(r) = to_provider_again(&s, &si.user, &a.params)
    {
        return r;
    }
    if remembered {
        return code_for(&s, &h, &a, &si).await;
    }
    pages::consent(&a, &si.csrf, &si.user.name)
}

/// Off to the member's identity provider to sign in there again (`None`: a local user, or a
/// provider no longer configured).
fn to_provider_again(s: &AuthServer, user: &User, p: &AuthzParams) -> Option<Response> {
    let (name, _) = s.sso.as_ref()?.of_issuer(&user.issuer)?;
    let mut r = Redirect::to(&format!("/oauth/sso/{name}?{}", p.query())).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Some(r)
}

/// The code of an authorization from the browser's session `si`, which hands the member's
/// provider token (if any) on to it, once.
async fn code_for(
    s: &AuthServer,
    h: &HeaderMap,
    a: &Authz,
    si: &manifold_store::SignIn,
) -> Response {
    let mut provider_token = None;
    if let (Some(sealed), Some(cookie)) = (
        si.provider_token.as_deref().filter(|t| !t.is_empty()),
        cookie(h, SESSION_COOKIE),
    ) {
        let taken = s
            .store
            .take_sign_in_provider_token(&hash_key(cookie), sealed)
            .await;
        match taken {
            Ok(true) => provider_token = seal::open(cookie, Step::Session, sealed),
            // Another authorization from this session took it at the same moment.
            Ok(false) => {
                if let Some(r) = to_provider_again(s, &si.user, &a.params) {
                    return r;
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot read a sign-in session: the store failed");
                return redirect(
                    s,
                    &a.redirect_uri,
                    &[("error", "temporarily_unavailable")],
                    a.params.state.as_deref(),
                );
            }
        }
    }
    issue_code(s, a, &si.user, provider_token.as_deref()).await
}

/// The sign-in page (or, when the only way to sign in is one identity provider, that
/// provider).
fn login_page(s: &AuthServer, p: &AuthzParams, problem: Option<&str>) -> Response {
    let providers = s.sso.as_ref().map(|x| x.choices()).unwrap_or_default();
    if let ([(name, _)], false, None) = (&providers[..], s.settings.password_login, problem) {
        return Redirect::to(&format!("/oauth/sso/{name}?{}", p.query())).into_response();
    }
    let csrf = secret("");
    let mut r = pages::login(
        &p.query(),
        &csrf,
        problem,
        &providers,
        s.settings.password_login,
    );
    r.headers_mut()
        .append(header::SET_COOKIE, set_cookie(s, CSRF_COOKIE, &csrf, 3600));
    r
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf: String,
    /// The authorization request to continue, as a query string.
    #[serde(default)]
    next: String,
}

async fn login(
    State(s): State<Arc<AuthServer>>,
    peer: Option<axum::Extension<Peer>>,
    h: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    if let Some(r) = same_origin(&s, &h) {
        return r;
    }
    let p: AuthzParams = serde_urlencoded_from(&f.next);
    if !s.settings.password_login {
        return pages::error(
            StatusCode::FORBIDDEN,
            "Passwords are off",
            "This gateway signs members in through their identity provider only.",
        );
    }
    if f.csrf.is_empty() || cookie(&h, CSRF_COOKIE) != Some(f.csrf.as_str()) {
        return login_page(
            &s,
            &p,
            Some("The sign-in form expired: please sign in again."),
        );
    }
    let from = source(peer.as_ref().map(|e| &e.0));
    let name = f.username.trim().to_owned();
    if !s
        .logins
        .allow(&[&format!("ip:{from}"), &format!("user:{name}")])
    {
        tracing::warn!(user = %name, source = %from, "too many sign-in attempts");
        return pages::error(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many attempts",
            "Too many sign-in attempts: wait a minute and try again.",
        );
    }
    let user = match s.store.local_user(&name).await {
        Ok(u) => u,
        Err(e) => {
            tracing::error!(error = %e, "cannot check a password: the store failed");
            return pages::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Try again",
                "The gateway cannot check passwords right now.",
            );
        }
    };
    let password = f.password;
    let user = tokio::task::spawn_blocking(move || {
        let ok = user.as_ref().is_some_and(|u| {
            !u.disabled
                && u.password_hash
                    .as_deref()
                    .is_some_and(|h| crate::verify_password(&password, h))
        });
        if user.is_none() {
            // As slow as a real check, so a name's existence does not show in the timing.
            let _ = crate::hash_password(&password);
        }
        user.filter(|_| ok)
    })
    .await
    .ok()
    .flatten();
    let Some(user) = user else {
        tracing::info!(user = %name, source = %from, "sign-in refused");
        return login_page(
            &s,
            &p,
            Some("The user name or password is not right (or the user is disabled)."),
        );
    };
    tracing::info!(user = %user.name, source = %from, "signed in");
    begin_session(&s, &h, &user, &p, None).await
}

/// Signed in as `user`: a new session (no fixation; the old one, if any, ends), then on with
/// the authorization request `p`. `provider_token`: the member's refresh token at their
/// identity provider, kept sealed by the session's cookie until an authorization takes it.
pub(crate) async fn begin_session(
    s: &AuthServer,
    h: &HeaderMap,
    user: &User,
    p: &AuthzParams,
    provider_token: Option<&str>,
) -> Response {
    if let Some(old) = cookie(h, SESSION_COOKIE) {
        let _ = s.store.end_sign_in(&hash_key(old)).await;
    }
    let token = secret("");
    let t = now();
    if let Err(e) = s
        .store
        .add_sign_in(
            &hash_key(&token),
            &user.id,
            &secret(""),
            (t, t + SIGN_IN_LIFETIME),
            provider_token
                .map(|pt| seal::seal(&token, Step::Session, pt))
                .as_deref(),
        )
        .await
    {
        tracing::error!(error = %e, "cannot record a sign-in: the store failed");
        return pages::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "Try again",
            "The gateway cannot sign you in right now.",
        );
    }
    let mut r = Redirect::to(&format!("/oauth/authorize?{}", p.query())).into_response();
    let hs = r.headers_mut();
    hs.append(
        header::SET_COOKIE,
        set_cookie(s, SESSION_COOKIE, &token, SIGN_IN_LIFETIME),
    );
    hs.append(header::SET_COOKIE, set_cookie(s, CSRF_COOKIE, "", 0));
    hs.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The authorization request in a query string (what a sign-in continues).
pub(crate) fn params_from(q: &str) -> AuthzParams {
    serde_urlencoded_from(q)
}

fn serde_urlencoded_from(q: &str) -> AuthzParams {
    Query::<AuthzParams>::try_from_uri(
        &format!("/?{q}")
            .parse()
            .unwrap_or_else(|_| "/".parse().expect("a path")),
    )
    .map(|q| q.0)
    .unwrap_or_default()
}

/// `GET /oauth/logout`: who is signed in here, and a button to sign out.
async fn logout_page(State(s): State<Arc<AuthServer>>, h: HeaderMap) -> Response {
    if let Some(r) = host_ok(&s, &h) {
        return r;
    }
    match signed_in(&s, &h).await {
        Some(si) => pages::sign_out(&si.user.name, &si.csrf),
        None => pages::error(
            StatusCode::OK,
            "Signed out",
            "This browser is not signed in to Manifold.",
        ),
    }
}

#[derive(Deserialize)]
struct LogoutForm {
    #[serde(default)]
    csrf: String,
}

/// `POST /oauth/logout`: end this browser's sign-in session.
async fn logout(
    State(s): State<Arc<AuthServer>>,
    h: HeaderMap,
    Form(f): Form<LogoutForm>,
) -> Response {
    if let Some(r) = same_origin(&s, &h) {
        return r;
    }
    let Some(si) = signed_in(&s, &h).await else {
        return pages::error(
            StatusCode::OK,
            "Signed out",
            "This browser is not signed in to Manifold.",
        );
    };
    if f.csrf.is_empty() || f.csrf != si.csrf {
        return pages::error(
            StatusCode::FORBIDDEN,
            "The form expired",
            "Open the sign-out page again.",
        );
    }
    if let Some(token) = cookie(&h, SESSION_COOKIE)
        && let Err(e) = s.store.end_sign_in(&hash_key(token)).await
    {
        return store_failed(&e);
    }
    tracing::info!(user = %si.user.name, "signed out");
    let mut r = pages::error(
        StatusCode::OK,
        "Signed out",
        "You are signed out of Manifold in this browser.",
    );
    r.headers_mut()
        .append(header::SET_COOKIE, set_cookie(&s, SESSION_COOKIE, "", 0));
    r
}

#[derive(Deserialize)]
struct ConsentForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    decision: String,
    #[serde(flatten)]
    params: AuthzParams,
}

async fn consent(
    State(s): State<Arc<AuthServer>>,
    h: HeaderMap,
    Form(f): Form<ConsentForm>,
) -> Response {
    if let Some(r) = same_origin(&s, &h) {
        return r;
    }
    let a = match validate(&s, f.params).await {
        Ok(a) => a,
        Err(Refusal::Page(r) | Refusal::Redirect(r)) => return r,
    };
    let Some(si) = signed_in(&s, &h).await else {
        return login_page(
            &s,
            &a.params,
            Some("Your sign-in expired: please sign in again."),
        );
    };
    if f.csrf.is_empty() || f.csrf != si.csrf {
        return pages::error(
            StatusCode::FORBIDDEN,
            "The form expired",
            "Go back to the application and start again.",
        );
    }
    if f.decision != "allow" {
        tracing::info!(user = %si.user.name, client = %a.params.client_id, "access denied by the user");
        return redirect(
            &s,
            &a.redirect_uri,
            &[
                ("error", "access_denied"),
                ("error_description", "the user declined"),
            ],
            a.params.state.as_deref(),
        );
    }
    if let Err(e) = s
        .store
        .add_consent(&si.user.id, &a.params.client_id, now())
        .await
    {
        tracing::error!(error = %e, "cannot record a consent: the store failed");
    }
    code_for(&s, &h, &a, &si).await
}

/// A grant and its code; `provider_token` (the member's refresh token at their provider) is
/// kept sealed by the code.
async fn issue_code(
    s: &AuthServer,
    a: &Authz,
    user: &User,
    provider_token: Option<&str>,
) -> Response {
    let t = now();
    let grant = Grant {
        id: new_id(),
        user_id: user.id.clone(),
        client_id: a.params.client_id.clone(),
        resource: a.resource.clone(),
        scope: a.scope.clone(),
        created_at: t,
        revoked_at: None,
    };
    let code = secret("");
    let stored = async {
        s.store.add_grant(&grant).await?;
        s.store
            .add_code(
                &hash_key(&code),
                &grant.id,
                &Code {
                    redirect_uri: a.redirect_uri.clone(),
                    challenge: a.challenge.clone(),
                    provider_token: provider_token.map(|pt| seal::seal(&code, Step::Code, pt)),
                },
                t + CODE_LIFETIME,
            )
            .await
    };
    if let Err(e) = stored.await {
        tracing::error!(error = %e, "cannot record an authorization: the store failed");
        return redirect(
            s,
            &a.redirect_uri,
            &[("error", "temporarily_unavailable")],
            a.params.state.as_deref(),
        );
    }
    tracing::info!(user = %user.name, client = %a.params.client_id, resource = %a.resource, "authorization code issued");
    redirect(
        s,
        &a.redirect_uri,
        &[("code", &code)],
        a.params.state.as_deref(),
    )
}

/// An OAuth error from the token, registration or revocation endpoint.
fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::PRAGMA, "no-cache"),
        ],
        Json(json!({ "error": error, "error_description": description })),
    )
        .into_response()
}

#[derive(Deserialize)]
struct TokenForm {
    #[serde(default)]
    grant_type: String,
    code: Option<String>,
    redirect_uri: Option<String>,
    code_verifier: Option<String>,
    refresh_token: Option<String>,
    #[serde(default)]
    client_id: String,
    client_secret: Option<String>,
    resource: Option<String>,
    assertion: Option<String>,
}

/// `application/x-www-form-urlencoded` decoding of one value (RFC 6749 §2.3.1 encodes the
/// client id and secret so inside HTTP Basic).
fn form_decode(v: &str) -> Option<String> {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = v.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// The client's authentication at the token endpoint: `Ok(Some(id))` for a configured
/// confidential client with the right secret (HTTP Basic or `client_secret`), `Ok(None)` for a
/// public client, and why not (for a 401 `invalid_client`) for a wrong secret or a
/// confidential client that did not authenticate.
fn authenticate_client(
    s: &AuthServer,
    h: &HeaderMap,
    f: &TokenForm,
) -> Result<Option<String>, &'static str> {
    let basic = h
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .map(|b64| {
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|pair| {
                    let (id, secret) = pair.split_once(':')?;
                    Some((form_decode(id)?, form_decode(secret)?))
                })
        });
    let presented = match (basic, &f.client_secret) {
        (Some(None), _) => return Err("the Basic credentials are malformed"),
        (Some(Some((id, _))), _) if !f.client_id.is_empty() && f.client_id != id => {
            return Err("client_id differs from the authenticated client");
        }
        (Some(Some(pair)), None) => Some(pair),
        (Some(Some(_)), Some(_)) => {
            return Err("authenticate one way only (Basic or client_secret)");
        }
        (None, Some(secret)) => Some((f.client_id.clone(), secret.clone())),
        (None, None) => None,
    };
    let configured = |id: &str| s.settings.clients.get(id).and_then(|c| c.secret.as_deref());
    match presented {
        Some((id, secret)) => match configured(&id) {
            Some(want) if Sha256::digest(want.as_bytes()) == Sha256::digest(secret.as_bytes()) => {
                Ok(Some(id))
            }
            _ => {
                tracing::warn!(client = %id, "a client's authentication failed");
                Err("the client id or secret is not right")
            }
        },
        None if configured(&f.client_id).is_some() => {
            Err("this client is confidential: authenticate with its secret")
        }
        None => Ok(None),
    }
}

async fn token(
    State(s): State<Arc<AuthServer>>,
    h: HeaderMap,
    Form(f): Form<TokenForm>,
) -> Response {
    if let Some(r) = host_ok(&s, &h) {
        return r;
    }
    let bad = |m: &str| oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", m);
    let authenticated = match authenticate_client(&s, &h, &f) {
        Ok(a) => a,
        Err(m) => {
            let mut r = oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", m);
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"manifold\""),
            );
            return r;
        }
    };
    // The authenticated client, or (a public client) the one the form names.
    let client_id = authenticated.clone().unwrap_or_else(|| f.client_id.clone());
    let t = now();
    // Grants from an identity assertion get no refresh token: the client asks its provider.
    let mut refreshable = true;
    // …and name their scope only if the assertion named one.
    let mut echo_scope = true;
    // The member's refresh token at their identity provider, handed on to the next refresh
    // token of ours.
    let mut provider_token: Option<String> = None;
    let grant = match f.grant_type.as_str() {
        crate::id_jag::GRANT_TYPE => {
            let Some(client) = authenticated else {
                return oauth_error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    "the identity-assertion grant needs client authentication",
                );
            };
            let Some(assertion) = &f.assertion else {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "send assertion");
            };
            let accepted =
                match crate::id_jag::accept(&s, assertion, &client, f.resource.as_deref()).await {
                    Ok(a) => a,
                    Err(("temporarily_unavailable", m)) => {
                        return oauth_error(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "temporarily_unavailable",
                            &m,
                        );
                    }
                    Err((code, m)) => return oauth_error(StatusCode::BAD_REQUEST, code, &m),
                };
            let g = Grant {
                id: new_id(),
                user_id: accepted.user.id.clone(),
                client_id: client,
                resource: accepted.resource,
                scope: SCOPE.into(),
                created_at: t,
                revoked_at: None,
            };
            if let Err(e) = s.store.add_grant(&g).await {
                return store_failed(&e);
            }
            refreshable = false;
            echo_scope = accepted.scoped;
            g
        }
        "authorization_code" => {
            let (Some(code), Some(verifier)) = (&f.code, &f.code_verifier) else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "send code and code_verifier (PKCE is required)",
                );
            };
            let taken = match s.store.take_code(&hash_key(code), t).await {
                Ok(r) => r,
                Err(e) => return store_failed(&e),
            };
            match taken {
                Redeemed::Unknown => return bad("the code is not valid or has expired"),
                Redeemed::Again(g) => {
                    // A code presented twice may have been stolen: end what it gave.
                    let _ = s.store.revoke_grant(&g, t).await;
                    tracing::warn!(grant = %g, "an authorization code was presented again; its tokens are revoked");
                    return bad("the code was used already");
                }
                Redeemed::First(c, g) => {
                    let refuse = |m: &str| {
                        let store = s.store.clone();
                        let id = g.id.clone();
                        tokio::spawn(async move { store.revoke_grant(&id, now()).await });
                        bad(m)
                    };
                    if g.client_id != client_id {
                        return refuse("the code was issued to another client");
                    }
                    if f.redirect_uri.as_deref() != Some(c.redirect_uri.as_str()) {
                        return refuse("redirect_uri must be the one of the authorization request");
                    }
                    if f.resource.as_deref().is_some_and(|r| r != g.resource) {
                        return refuse("resource must be the one of the authorization request");
                    }
                    let valid_verifier = (43..=128).contains(&verifier.len())
                        && verifier
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
                    let computed = B64.encode(Sha256::digest(verifier.as_bytes()));
                    if !valid_verifier || computed != c.challenge {
                        return refuse("the code_verifier does not match the code_challenge");
                    }
                    provider_token = c
                        .provider_token
                        .and_then(|sealed| seal::open(code, Step::Code, &sealed));
                    g
                }
            }
        }
        "refresh_token" => {
            let Some(rt) = &f.refresh_token else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "send refresh_token",
                );
            };
            let taken = match s.store.take_refresh_token(&hash_key(rt), t).await {
                Ok(r) => r,
                Err(e) => return store_failed(&e),
            };
            match taken {
                Redeemed::Unknown => return bad("the refresh token is not valid or has expired"),
                Redeemed::Again(g) => {
                    let _ = s.store.revoke_grant(&g, t).await;
                    tracing::warn!(grant = %g, "a refresh token was used twice; the whole sign-in is revoked");
                    return bad(
                        "the refresh token was used already: the sign-in is revoked; sign in again",
                    );
                }
                Redeemed::First(sealed, g) => {
                    if g.client_id != client_id {
                        let _ = s.store.revoke_grant(&g.id, t).await;
                        return bad("the refresh token was issued to another client");
                    }
                    if f.resource.as_deref().is_some_and(|r| r != g.resource) {
                        return oauth_error(
                            StatusCode::BAD_REQUEST,
                            "invalid_target",
                            "resource must be the one the sign-in was for",
                        );
                    }
                    provider_token = sealed.and_then(|v| seal::open(rt, Step::Refresh, &v));
                    if let Some(pt) = provider_token.take() {
                        match ask_provider(&s, &g, pt).await {
                            Ok(next) => provider_token = Some(next),
                            Err(m) => {
                                let _ = s.store.revoke_grant(&g.id, t).await;
                                return bad(&m);
                            }
                        }
                    }
                    if let Err(m) = recent_enough(&s, &g.user_id, t).await {
                        let _ = s.store.revoke_grant(&g.id, t).await;
                        return bad(&m);
                    }
                    g
                }
            }
        }
        "" => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "send grant_type",
            );
        }
        _ => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "grant_type is authorization_code, refresh_token or (from a trusted identity provider) urn:ietf:params:oauth:grant-type:jwt-bearer",
            );
        }
    };
    match s.store.user(&grant.user_id).await {
        Ok(Some(u)) if !u.disabled => {}
        Ok(_) => return bad("the user is disabled"),
        Err(e) => return store_failed(&e),
    }
    let lifetime = s.settings.access_token_lifetime.as_secs() as i64;
    let access = match s.access_token(&grant, t) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "cannot sign an access token");
            return oauth_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "cannot sign the token",
            );
        }
    };
    let mut body = json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": lifetime,
    });
    if echo_scope {
        body["scope"] = json!(grant.scope);
    }
    if refreshable {
        let refresh = secret("mfr_");
        let expires = t + s.settings.refresh_token_lifetime.as_secs() as i64;
        let sealed = provider_token
            .as_deref()
            .map(|pt| seal::seal(&refresh, Step::Refresh, pt));
        if let Err(e) = s
            .store
            .add_refresh_token(&hash_key(&refresh), &grant.id, expires, sealed.as_deref())
            .await
        {
            return store_failed(&e);
        }
        body["refresh_token"] = json!(refresh);
    } else {
        body["issued_token_type"] = json!("urn:ietf:params:oauth:token-type:access_token");
    }
    if grant.client_id.starts_with("mfc_") {
        let _ = s.store.touch_client(&grant.client_id, t).await;
    }
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::PRAGMA, "no-cache"),
        ],
        Json(body),
    )
        .into_response()
}

/// A refresh of a member's sign-in asks their identity provider again, with the member's
/// refresh token there (`pt`): if it vouches for them, their name, e-mail and roles are
/// brought up to date (a change of roles applies at their next request, with any access token)
/// and the provider's next refresh token is the answer; if it no longer accepts the sign-in,
/// why (the caller revokes the grant). If it cannot be asked, the refresh goes on with `pt`,
/// within `reauthenticate_after` of the last time it vouched (`recent_enough`).
async fn ask_provider(s: &AuthServer, g: &Grant, pt: String) -> Result<String, String> {
    let user = match s.store.user(&g.user_id).await {
        Ok(Some(u)) => u,
        Ok(None) => return Err("the user is gone".into()),
        Err(e) => {
            tracing::error!(error = %e, "cannot read a user: the store failed");
            return Ok(pt);
        }
    };
    let Some((sso, (name, p))) = s
        .sso
        .as_ref()
        .and_then(|x| Some((x, x.of_issuer(&user.issuer)?)))
    else {
        // `recent_enough` says why.
        return Ok(pt);
    };
    match sso.ask_again(p, &pt, &user.subject).await {
        crate::sso::Asked::Vouched(member, next) => {
            let done = match member {
                Some(m) => s
                    .store
                    .sso_user(&m.stored(&p.spec.issuer))
                    .await
                    .map(|u| {
                        if u.roles != user.roles {
                            tracing::info!(user = %u.name, provider = name, roles = ?u.roles, was = ?user.roles, "the identity provider changed a member's roles");
                        }
                    }),
                None => s.store.vouched(&user.id).await,
            };
            if let Err(e) = done {
                tracing::error!(error = %e, "cannot record what an identity provider said: the store failed");
            }
            Ok(next)
        }
        crate::sso::Asked::Refused(why) => {
            tracing::info!(user = %user.name, provider = name, why, "the identity provider no longer accepts a member's sign-in: it is revoked");
            Err(format!(
                "sign in again through {}: it no longer accepts this sign-in ({why})",
                p.spec.label
            ))
        }
        crate::sso::Asked::Unreachable(why) => {
            tracing::warn!(user = %user.name, provider = name, why, "cannot ask an identity provider about a member at a refresh: it goes on within reauthenticate_after of the last answer");
            Ok(pt)
        }
    }
}

/// A member of an identity provider may have their sign-ins refreshed only for
/// `reauthenticate_after` past their last sign-in there: then the provider is asked again, so
/// that what it changed (groups, a disabled account) applies. Local users: always.
async fn recent_enough(s: &AuthServer, user_id: &str, now: i64) -> Result<(), String> {
    let user = match s.store.user(user_id).await {
        Ok(Some(u)) => u,
        Ok(None) => return Err("the user is gone".into()),
        Err(e) => {
            return Err(format!(
                "the gateway cannot check the sign-in right now: {e}"
            ));
        }
    };
    if user.issuer == manifold_store::LOCAL_ISSUER {
        return Ok(());
    }
    let provider = s
        .settings
        .providers
        .values()
        .find(|p| p.issuer == user.issuer)
        .ok_or_else(|| {
            format!(
                "{} is no longer an identity provider of this gateway",
                user.issuer
            )
        })?;
    let at = s
        .store
        .signed_in_at(user_id)
        .await
        .map_err(|e| format!("the gateway cannot check the sign-in right now: {e}"))?
        .unwrap_or(0);
    let bound = provider.reauthenticate_after.as_secs() as i64;
    if at + bound <= now {
        tracing::info!(user = %user.name, provider = %provider.label, "a sign-in is too old to refresh: the member signs in again");
        return Err(format!(
            "sign in again through {}: the last sign-in there is older than {}",
            provider.label,
            humane(bound)
        ));
    }
    Ok(())
}

fn humane(secs: i64) -> String {
    match secs {
        s if s % 3600 == 0 => format!("{} h", s / 3600),
        s if s % 60 == 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

fn store_failed(e: &manifold_store::StoreError) -> Response {
    tracing::error!(error = %e, "the store failed");
    oauth_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        "the gateway cannot reach its store; try again",
    )
}

#[derive(Deserialize)]
struct Registration {
    #[serde(default)]
    redirect_uris: Vec<String>,
    client_name: Option<String>,
    token_endpoint_auth_method: Option<String>,
    grant_types: Option<Vec<String>>,
    response_types: Option<Vec<String>>,
}

async fn register(
    State(s): State<Arc<AuthServer>>,
    peer: Option<axum::Extension<Peer>>,
    h: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(r) = host_ok(&s, &h) {
        return r;
    }
    let meta = |m: &str| oauth_error(StatusCode::BAD_REQUEST, "invalid_client_metadata", m);
    if !s.settings.dynamic_registration {
        return oauth_error(
            StatusCode::FORBIDDEN,
            "access_denied",
            "dynamic client registration is switched off (auth.dynamic_registration); ask the administrator to add the client to the config",
        );
    }
    let from = source(peer.as_ref().map(|e| &e.0));
    if !s.registrations.allow(&[&from]) {
        tracing::warn!(source = %from, "too many client registrations");
        return oauth_error(
            StatusCode::TOO_MANY_REQUESTS,
            "access_denied",
            "too many registrations from this address; try again later",
        );
    }
    if body.len() > 16 * 1024 {
        return meta("the registration is larger than 16 KiB");
    }
    let r: Registration = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return meta(&format!("the registration is not valid JSON metadata: {e}")),
    };
    if r.redirect_uris.is_empty() || r.redirect_uris.len() > 10 {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_redirect_uri",
            "send 1 to 10 redirect_uris",
        );
    }
    for u in &r.redirect_uris {
        if u.len() > 2000 {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_redirect_uri",
                "a redirect URI is longer than 2000 characters",
            );
        }
        if let Err(m) = valid_redirect_uri(u) {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_redirect_uri", &m);
        }
    }
    if r.token_endpoint_auth_method
        .as_deref()
        .is_some_and(|m| m != "none")
    {
        return meta(
            "only public clients are registered: token_endpoint_auth_method must be \"none\"",
        );
    }
    if r.grant_types.as_ref().is_some_and(|g| {
        g.iter()
            .any(|g| g != "authorization_code" && g != "refresh_token")
    }) {
        return meta("grant_types may be authorization_code and refresh_token");
    }
    if r.response_types
        .as_ref()
        .is_some_and(|g| g.iter().any(|g| g != "code"))
    {
        return meta("response_types may be code only");
    }
    let name: String = r
        .client_name
        .unwrap_or_else(|| "an unnamed application".into())
        .chars()
        .filter(|c| !c.is_control())
        .take(100)
        .collect();
    match s.store.client_counts(&from).await {
        Ok((total, _)) if total >= i64::from(s.settings.max_clients) => {
            tracing::warn!(
                total,
                "the registered-client limit is reached (auth.max_clients)"
            );
            return oauth_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "the gateway has as many registered clients as it keeps; try again later",
            );
        }
        Ok(_) => {}
        Err(e) => return store_failed(&e),
    }
    let t = now();
    let client = Client {
        client_id: format!("mfc_{}", new_id()),
        name: name.clone(),
        redirect_uris: r.redirect_uris.clone(),
        source: from.clone(),
        created_at: t,
        last_used_at: t,
    };
    if let Err(e) = s.store.add_client(&client).await {
        return store_failed(&e);
    }
    tracing::info!(client = %client.client_id, name = %name, source = %from, "client registered");
    (
        StatusCode::CREATED,
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({
            "client_id": client.client_id,
            "client_id_issued_at": t,
            "client_name": name,
            "redirect_uris": client.redirect_uris,
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
        })),
    )
        .into_response()
}

#[derive(Deserialize)]
struct RevokeForm {
    #[serde(default)]
    token: String,
}

/// RFC 7009: revoking a refresh token or an access token ends the whole grant. The answer is
/// 200 whether or not the token was known.
async fn revoke(
    State(s): State<Arc<AuthServer>>,
    h: HeaderMap,
    Form(f): Form<RevokeForm>,
) -> Response {
    if let Some(r) = host_ok(&s, &h) {
        return r;
    }
    if f.token.is_empty() {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "send token");
    }
    let t = now();
    let grant = if f.token.contains('.') {
        // An access token of any of this issuer's audiences.
        let claims = peek_claims(&f.token);
        match claims {
            Some(c) => s.verify(&f.token, &c.aud).await.ok().map(|c| c.sid),
            None => None,
        }
    } else {
        s.store
            .refresh_token_grant(&hash_key(&f.token))
            .await
            .ok()
            .flatten()
    };
    if let Some(g) = grant.filter(|g| !g.is_empty()) {
        if let Err(e) = s.store.revoke_grant(&g, t).await {
            return store_failed(&e);
        }
        tracing::info!(grant = %g, "grant revoked by its client");
    }
    ([(header::CACHE_CONTROL, "no-store")], StatusCode::OK).into_response()
}

/// The unverified claims of a JWT (only to learn which audience to verify it for).
fn peek_claims(token: &str) -> Option<AccessClaims> {
    let body = token.split('.').nth(1)?;
    serde_json::from_slice(&B64.decode(body).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use manifold_server::{AuthErrorKind, Authenticate};
    use manifold_store::{Location, NewUser};

    use super::*;
    use crate::StoreAuth;

    fn settings() -> AuthSettings {
        AuthSettings {
            required: true,
            issuer: Some("https://gw.example.com".into()),
            access_token_lifetime: Duration::from_secs(3600),
            refresh_token_lifetime: Duration::from_secs(86_400),
            dynamic_registration: true,
            registrations_per_hour: 20,
            max_clients: 100,
            unused_client_expiry: Duration::from_secs(86_400),
            logins_per_minute: 10,
            client_metadata_documents: true,
            client_metadata_private_hosts: Vec::new(),
            client_metadata_ca: None,
            clients: BTreeMap::new(),
            password_login: true,
            providers: BTreeMap::new(),
            admin_roles: vec!["admin".into()],
        }
    }

    fn request(token: Option<&str>) -> http::request::Parts {
        let mut r = http::Request::builder().uri("/mcp/main");
        if let Some(t) = token {
            r = r.header("authorization", format!("Bearer {t}"));
        }
        r.body(()).unwrap().into_parts().0
    }

    #[tokio::test]
    async fn the_resource_server_checks_scope_grant_and_user_at_every_request() {
        let dir = std::env::temp_dir().join(format!("manifold-rs-{}", new_id()));
        let store = Store::open(&Location::Sqlite(dir.clone())).await.unwrap();
        let server = AuthServer::start(store.clone(), &settings(), "127.0.0.1:1".parse().unwrap())
            .await
            .unwrap();
        let user = store
            .add_user(&NewUser {
                name: "ann",
                email: None,
                password_hash: None,
                roles: &[],
                groups: &[],
            })
            .await
            .unwrap();
        let t = now();
        let grant = Grant {
            id: new_id(),
            user_id: user.id.clone(),
            client_id: "c".into(),
            resource: server.resource("main"),
            scope: SCOPE.into(),
            created_at: t,
            revoked_at: None,
        };
        store.add_grant(&grant).await.unwrap();
        let token = |scope: &str| {
            server
                .ring
                .load()
                .issue(&AccessClaims {
                    iss: server.issuer.clone(),
                    sub: user.id.clone(),
                    aud: server.resource("main"),
                    exp: t + 600,
                    iat: t,
                    jti: new_id(),
                    client_id: "c".into(),
                    scope: scope.into(),
                    sid: grant.id.clone(),
                })
                .unwrap()
        };
        let auth = StoreAuth::with_oauth(store.clone(), server.clone());
        let metadata = "resource_metadata=\"https://gw.example.com/.well-known/oauth-protected-resource/mcp/main\", scope=\"mcp\"";

        let missing = auth.authenticate(&request(None)).await.unwrap_err();
        assert_eq!(missing.kind, AuthErrorKind::Missing);
        assert_eq!(missing.challenge.as_deref(), Some(metadata));

        let ok = auth
            .authenticate(&request(Some(&token("mcp"))))
            .await
            .unwrap();
        assert_eq!(ok.scopes, vec!["mcp".to_owned()]);

        let narrow = auth
            .authenticate(&request(Some(&token("other"))))
            .await
            .unwrap_err();
        assert_eq!(narrow.kind, AuthErrorKind::InsufficientScope, "{narrow}");
        assert!(
            narrow.message.contains("\"mcp\""),
            "names the scope: {narrow}"
        );
        assert_eq!(narrow.challenge.as_deref(), Some(metadata));

        store.set_disabled(&user.id, true).await.unwrap();
        let off = auth
            .authenticate(&request(Some(&token("mcp"))))
            .await
            .unwrap_err();
        assert_eq!(off.kind, AuthErrorKind::Invalid);
        assert!(off.message.contains("disabled"), "{off}");
        store.set_disabled(&user.id, false).await.unwrap();
        store.revoke_grant(&grant.id, t).await.unwrap();
        let revoked = auth
            .authenticate(&request(Some(&token("mcp"))))
            .await
            .unwrap_err();
        assert!(revoked.message.contains("revoked"), "{revoked}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn redirect_uris_match_exactly_but_for_a_loopback_port() {
        let r = "http://127.0.0.1:7777/cb";
        assert!(redirect_matches(r, r));
        assert!(redirect_matches(r, "http://127.0.0.1:5000/cb"));
        assert!(redirect_matches("http://[::1]/cb", "http://[::1]:5000/cb"));
        for bad in [
            "http://127.0.0.1:5000/cb/",
            "http://127.0.0.1:5000/cb?x",
            "http://localhost:7777/cb",
            "https://127.0.0.1:7777/cb",
        ] {
            assert!(!redirect_matches(r, bad), "{bad}");
        }
        let https = "https://app.example/cb";
        assert!(!redirect_matches(https, "https://app.example:444/cb"));
        assert!(!redirect_matches(
            "http://localhost/cb",
            "http://localhost:9/cb"
        ));
    }

    #[test]
    fn windows_limit_each_key() {
        let w = Window::new(Duration::from_secs(60), 2);
        assert!(w.allow(&["a", "b"]));
        assert!(w.allow(&["a"]));
        assert!(!w.allow(&["a"]), "a third within the window");
        assert!(w.allow(&["b"]), "b has its own count");
        assert!(!w.allow(&["c", "a"]), "any key over its limit refuses");
    }
}
