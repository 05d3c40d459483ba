//! Single sign-on: members sign in to the authorization server through an OpenID Connect
//! identity provider (`[auth.providers.NAME]`) instead of a password.
//!
//! `GET /oauth/sso/NAME?<authorization request>` starts: a random `state` and `nonce`, a PKCE
//! verifier and a cookie that binds them to this browser are kept in the store (found by the
//! SHA-256 of the state, for 10 minutes, spendable once), and the browser goes to the
//! provider. `GET /oauth/sso/callback` ends: the state is spent (a replayed callback finds
//! nothing), the cookie must be the one that started it (login CSRF), the `iss` parameter must
//! be the provider's (RFC 9207; required when the provider says it sends it, so a response of
//! one provider cannot be passed off as another's), the code is redeemed with the verifier and
//! the ID token checked by `openidconnect` (signature by the provider's JWKS with an algorithm
//! allow-list, exact issuer and audience (no other audience), expiry with 60 s of skew, nonce;
//! `azp`, which the library leaves alone, is checked here). An unknown
//! `kid` reads the provider's metadata and keys again (such reads at most every 30 s). Then the member's
//! user is created or brought up to date (by issuer and subject; roles from the groups claim),
//! and the sign-in continues exactly as after a password: a new session, then consent.
//!
//! The provider's refresh token, if it issues one, goes with the sign-in, sealed (`seal`); each
//! refresh of ours asks the provider again with it (`Sso::ask_again`), so what the provider
//! changed (groups, a disabled account) applies at the application's next refresh.
//!
//! Provider metadata is read at first use and kept for an hour; requests to providers go
//! through our HTTP client (no redirects, 10 s, 1 MiB).

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
    routing::get,
};
use base64::Engine;
use manifold_config::ProviderSpec;
use manifold_store::{SsoMember, SsoRequest};
use openidconnect::{
    AdditionalProviderMetadata, AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl,
    Nonce, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, ProviderMetadata, RedirectUrl,
    Scope, TokenResponse,
    core::{
        CoreAuthDisplay, CoreAuthenticationFlow, CoreClaimName, CoreClaimType, CoreClient,
        CoreClientAuthMethod, CoreGrantType, CoreJsonWebKey, CoreJweContentEncryptionAlgorithm,
        CoreJweKeyManagementAlgorithm, CoreJwsSigningAlgorithm, CoreResponseMode, CoreResponseType,
        CoreSubjectIdentifierType,
    },
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{AuthServer, hash_key, oauth, pages};

/// How long a started sign-in waits for the provider's callback.
const REQUEST_LIFETIME: i64 = 600;
/// Provider metadata (and keys) are read again after this long.
const METADATA_TTL: Duration = Duration::from_secs(3600);
/// An unknown `kid` reads them again, but not more often than this.
const REFETCH_AT_MOST: Duration = Duration::from_secs(30);
/// A provider whose metadata could not be read is not asked again for this long.
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// The cookie that binds a started sign-in to its browser.
const BROWSER_COOKIE: &str = "mf_sso";
/// The most sign-ins waiting for their provider at once (anyone can start one; each is kept
/// for `REQUEST_LIFETIME`).
const MOST_WAITING: i64 = 10_000;
/// The largest response read from a provider.
const MOST_BYTES: usize = 1 << 20;

/// What a provider's discovery document says beyond the core: whether it sends `iss` with
/// its authorization responses (RFC 9207).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub(crate) struct IssParameter {
    #[serde(default)]
    authorization_response_iss_parameter_supported: bool,
}

impl AdditionalProviderMetadata for IssParameter {}

pub(crate) type Metadata = ProviderMetadata<
    IssParameter,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

/// ID-token signature algorithms accepted (never `none` or a shared-secret HMAC).
pub(crate) const ALGORITHMS: [CoreJwsSigningAlgorithm; 9] = [
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
    CoreJwsSigningAlgorithm::RsaSsaPssSha256,
    CoreJwsSigningAlgorithm::RsaSsaPssSha384,
    CoreJwsSigningAlgorithm::RsaSsaPssSha512,
    CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    CoreJwsSigningAlgorithm::EcdsaP384Sha384,
    CoreJwsSigningAlgorithm::EdDsa,
];

pub(crate) struct Sso {
    providers: BTreeMap<String, Provider>,
    http: reqwest::Client,
    /// `{issuer}/oauth/sso/callback`: the one redirect URI registered at every provider.
    callback: RedirectUrl,
}

pub(crate) struct Provider {
    pub spec: ProviderSpec,
    /// The metadata and when it was read.
    metadata: Mutex<Option<(Arc<Metadata>, Instant)>>,
    /// The last failure to read it, and when: not tried again for `RETRY_AFTER`, so that a
    /// provider that is down is not asked once per sign-in attempt.
    failed: Mutex<Option<(String, Instant)>>,
    /// When the keys were last read again for an unknown `kid` (at most every
    /// `REFETCH_AT_MOST`, so that made-up `kid`s cannot make us hammer the provider).
    refetched: Mutex<Option<Instant>>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct HttpError(String);

impl Sso {
    /// `None` without providers.
    pub(crate) fn new(
        providers: &BTreeMap<String, ProviderSpec>,
        issuer: &str,
    ) -> Result<Option<Self>, String> {
        if providers.is_empty() {
            return Ok(None);
        }
        let callback = RedirectUrl::new(format!("{issuer}/oauth/sso/callback"))
            .map_err(|e| format!("the sign-in callback URL: {e}"))?;
        manifold_upstream::install_crypto_provider();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("cannot build the identity providers' HTTP client: {e}"))?;
        let providers = providers
            .iter()
            .map(|(name, spec)| {
                let p = Provider {
                    spec: spec.clone(),
                    metadata: Mutex::new(None),
                    failed: Mutex::new(None),
                    refetched: Mutex::new(None),
                };
                (name.clone(), p)
            })
            .collect();
        Ok(Some(Self {
            providers,
            http,
            callback,
        }))
    }

    /// The provider whose identity assertions are accepted, by its issuer.
    pub(crate) fn asserting(&self, issuer: &str) -> Option<&Provider> {
        self.providers
            .values()
            .find(|p| p.spec.id_jag && p.spec.issuer == issuer)
    }

    /// Whether any provider's identity assertions are accepted.
    pub(crate) fn accepts_assertions(&self) -> bool {
        self.providers.values().any(|p| p.spec.id_jag)
    }

    /// (name, label) of every provider, for the sign-in page.
    pub(crate) fn choices(&self) -> Vec<(&str, &str)> {
        self.providers
            .iter()
            .map(|(n, p)| (n.as_str(), p.spec.label.as_str()))
            .collect()
    }

    pub(crate) fn router() -> Router<Arc<AuthServer>> {
        Router::new()
            .route("/oauth/sso/callback", get(callback))
            .route("/oauth/sso/{name}", get(start))
    }

    fn http(&self) -> Http {
        Http(self.http.clone())
    }
}

/// Our HTTP client, as `openidconnect` calls it.
struct Http(reqwest::Client);

impl<'c> openidconnect::AsyncHttpClient<'c> for Http {
    type Error = HttpError;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<openidconnect::HttpResponse, HttpError>> + Send + 'c>,
    >;

    fn call(&'c self, req: openidconnect::HttpRequest) -> Self::Future {
        Box::pin(send(self.0.clone(), req))
    }
}

/// One request to a provider.
async fn send(
    http: reqwest::Client,
    req: openidconnect::HttpRequest,
) -> Result<openidconnect::HttpResponse, HttpError> {
    let (parts, body) = req.into_parts();
    let mut r = http
        .request(parts.method, parts.uri.to_string())
        .headers(parts.headers)
        .body(body)
        .send()
        .await
        .map_err(|e| HttpError(format!("{}: {e}", parts.uri)))?;
    let mut out = http::Response::builder().status(r.status());
    for (k, v) in r.headers() {
        out = out.header(k, v);
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = r
        .chunk()
        .await
        .map_err(|e| HttpError(format!("{}: {e}", parts.uri)))?
    {
        bytes.extend_from_slice(&chunk);
        if bytes.len() > MOST_BYTES {
            return Err(HttpError(format!(
                "{}: the answer is larger than {MOST_BYTES} bytes",
                parts.uri
            )));
        }
    }
    out.body(bytes).map_err(|e| HttpError(e.to_string()))
}

impl Sso {
    /// The provider's metadata and keys: cached (for `METADATA_TTL`), or read. `stale`: the
    /// cached keys lack one a token names; they are read again unless that was done in the
    /// last `REFETCH_AT_MOST`.
    pub(crate) async fn metadata(
        &self,
        p: &Provider,
        stale: bool,
    ) -> Result<Arc<Metadata>, String> {
        let cached = p.metadata.lock().expect("metadata lock").clone();
        if let Some((m, at)) = &cached {
            if !stale && at.elapsed() < METADATA_TTL {
                return Ok(m.clone());
            }
            if stale {
                let mut last = p.refetched.lock().expect("refetch lock");
                if last.is_some_and(|l| l.elapsed() < REFETCH_AT_MOST) {
                    return Ok(m.clone());
                }
                *last = Some(Instant::now());
            }
        }
        if let Some((why, at)) = p.failed.lock().expect("failure lock").clone()
            && at.elapsed() < RETRY_AFTER
        {
            return Err(why);
        }
        let issuer = IssuerUrl::new(p.spec.issuer.clone()).map_err(|e| e.to_string())?;
        let read = Metadata::discover_async(issuer, &self.http()).await;
        let m = read.map_err(|e| {
            let mut m = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                m.push_str(&format!(": {s}"));
                source = s.source();
            }
            let why = format!("cannot read {}'s metadata: {m}", p.spec.issuer);
            *p.failed.lock().expect("failure lock") = Some((why.clone(), Instant::now()));
            why
        })?;
        let m = Arc::new(m);
        *p.metadata.lock().expect("metadata lock") = Some((m.clone(), Instant::now()));
        Ok(m)
    }

    fn client(
        &self,
        p: &Provider,
        m: &Metadata,
    ) -> CoreClient<
        openidconnect::EndpointSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointMaybeSet,
        openidconnect::EndpointMaybeSet,
    > {
        CoreClient::from_provider_metadata(
            m.clone(),
            ClientId::new(p.spec.client_id.clone()),
            p.spec.client_secret.clone().map(ClientSecret::new),
        )
        .set_redirect_uri(self.callback.clone())
    }
}

/// For `manifold check --probe`: each identity provider's metadata and keys, read as a
/// sign-in would (the issuer checked exactly): what was found, or why not.
pub async fn probe_providers(
    providers: &BTreeMap<String, ProviderSpec>,
) -> Vec<(String, Result<String, String>)> {
    let sso = match Sso::new(providers, "http://127.0.0.1") {
        Ok(Some(s)) => s,
        Ok(None) => return Vec::new(),
        Err(e) => return vec![("(all)".into(), Err(e))],
    };
    let mut out = Vec::new();
    for (name, p) in &sso.providers {
        let found = sso.metadata(p, false).await.map(|m| {
            format!(
                "{} signing key(s); {} the issuer with its answers{}",
                m.jwks().keys().len(),
                if m.additional_metadata()
                    .authorization_response_iss_parameter_supported
                {
                    "names"
                } else {
                    "does not name"
                },
                if p.spec.id_jag {
                    "; its identity assertions are accepted"
                } else {
                    ""
                }
            )
        });
        out.push((name.clone(), found));
    }
    out
}

fn refused(status: StatusCode, title: &str, message: &str) -> Response {
    pages::error(status, title, message)
}

/// `GET /oauth/sso/NAME?…`: off to the provider.
async fn start(
    State(s): State<Arc<AuthServer>>,
    Path(name): Path<String>,
    h: HeaderMap,
    uri: http::Uri,
) -> Response {
    if let Some(r) = oauth::host_ok(&s, &h) {
        return r;
    }
    let Some(sso) = s.sso.as_ref() else {
        return refused(
            StatusCode::NOT_FOUND,
            "Not found",
            "This gateway has no identity providers.",
        );
    };
    let Some(p) = sso.providers.get(&name) else {
        return refused(
            StatusCode::NOT_FOUND,
            "Unknown identity provider",
            &format!(
                "This gateway has no identity provider {name:?}: go back to the application and sign in again."
            ),
        );
    };
    let m = match sso.metadata(p, false).await {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(provider = %name, error = %e, "cannot reach an identity provider");
            return refused(
                StatusCode::BAD_GATEWAY,
                "The identity provider cannot be reached",
                &format!(
                    "{} does not answer as it should right now; try again in a minute.",
                    p.spec.label
                ),
            );
        }
    };
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, state, nonce) = {
        let client = sso.client(p, &m);
        let mut req = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .set_pkce_challenge(challenge);
        for scope in &p.spec.scopes {
            if scope != "openid" {
                req = req.add_scope(Scope::new(scope.clone()));
            }
        }
        req.url()
    };
    let browser = oauth::secret("");
    let request = SsoRequest {
        provider: name.clone(),
        browser_hash: hash_key(&browser),
        nonce: nonce.secret().clone(),
        verifier: verifier.secret().clone(),
        next: uri.query().unwrap_or_default().to_owned(),
        expires_at: manifold_store::now() + REQUEST_LIFETIME,
    };
    if let Err(e) = s
        .store
        .add_sso_request(&hash_key(state.secret()), &request, MOST_WAITING)
        .await
    {
        if let manifold_store::StoreError::Conflict(why) = &e {
            tracing::warn!(why, "too many sign-ins are waiting for identity providers");
            return refused(
                StatusCode::SERVICE_UNAVAILABLE,
                "Too many sign-ins at once",
                "Too many sign-ins are under way right now: try again in a minute.",
            );
        }
        tracing::error!(error = %e, "cannot record a sign-in: the store failed");
        return refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "Try again",
            "The gateway cannot sign you in right now.",
        );
    }
    let mut r = Redirect::to(url.as_str()).into_response();
    r.headers_mut().append(
        header::SET_COOKIE,
        oauth::set_cookie(&s, BROWSER_COOKIE, &browser, REQUEST_LIFETIME),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    r
}

#[derive(Deserialize)]
struct Callback {
    code: Option<String>,
    state: Option<String>,
    iss: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// `GET /oauth/sso/callback`: back from the provider.
async fn callback(
    State(s): State<Arc<AuthServer>>,
    h: HeaderMap,
    Query(q): Query<Callback>,
) -> Response {
    if let Some(r) = oauth::host_ok(&s, &h) {
        return r;
    }
    let again = "Go back to the application and sign in again.";
    let Some(sso) = s.sso.as_ref() else {
        return refused(
            StatusCode::NOT_FOUND,
            "Not found",
            "This gateway has no identity providers.",
        );
    };
    let Some(state) = q.state.as_deref().filter(|v| !v.is_empty()) else {
        return refused(
            StatusCode::BAD_REQUEST,
            "Sign-in failed",
            &format!("The identity provider's answer has no state. {again}"),
        );
    };
    let request = match s.store.take_sso_request(&hash_key(state)).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            tracing::warn!("an identity provider callback with an unknown or spent state");
            return refused(
                StatusCode::BAD_REQUEST,
                "Sign-in failed",
                &format!("This sign-in answer is unknown or was used already. {again}"),
            );
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot read a sign-in: the store failed");
            return refused(
                StatusCode::SERVICE_UNAVAILABLE,
                "Try again",
                "The gateway cannot sign you in right now.",
            );
        }
    };
    // Spent, whatever happens next: the browser's cookie goes too.
    let clear = oauth::set_cookie(&s, BROWSER_COOKIE, "", 0);
    let fail = |status: StatusCode, message: String| {
        let mut r = refused(status, "Sign-in failed", &message);
        r.headers_mut().append(header::SET_COOKIE, clear.clone());
        r
    };
    if request.expires_at <= manifold_store::now() {
        return fail(
            StatusCode::BAD_REQUEST,
            format!(
                "The sign-in took longer than {} minutes. {again}",
                REQUEST_LIFETIME / 60
            ),
        );
    }
    if oauth::cookie(&h, BROWSER_COOKIE).map(hash_key).as_deref()
        != Some(request.browser_hash.as_str())
    {
        tracing::warn!(provider = %request.provider, "an identity provider callback in a browser that did not start it");
        return fail(
            StatusCode::FORBIDDEN,
            format!("This sign-in was started in another browser (or its cookie is gone). {again}"),
        );
    }
    let Some(p) = sso.providers.get(&request.provider) else {
        return fail(
            StatusCode::BAD_REQUEST,
            format!(
                "The identity provider {:?} is no longer configured. {again}",
                request.provider
            ),
        );
    };
    let m = match sso.metadata(p, false).await {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(provider = %request.provider, error = %e, "cannot reach an identity provider");
            return fail(
                StatusCode::BAD_GATEWAY,
                format!(
                    "{} cannot be reached right now; try again in a minute.",
                    p.spec.label
                ),
            );
        }
    };
    // RFC 9207: an answer that names another issuer is another provider's (mix-up).
    match q.iss.as_deref() {
        Some(iss) if iss != p.spec.issuer => {
            tracing::warn!(provider = %request.provider, iss, "an identity provider callback naming another issuer");
            return fail(
                StatusCode::BAD_REQUEST,
                format!(
                    "The answer comes from {iss}, not from {} where this sign-in went. {again}",
                    p.spec.issuer
                ),
            );
        }
        None if m
            .additional_metadata()
            .authorization_response_iss_parameter_supported =>
        {
            return fail(
                StatusCode::BAD_REQUEST,
                format!("The answer does not say which identity provider sent it. {again}"),
            );
        }
        _ => {}
    }
    if let Some(e) = q.error.as_deref() {
        let why = q.error_description.as_deref().unwrap_or(e);
        tracing::info!(provider = %request.provider, error = e, "the identity provider refused a sign-in");
        return fail(
            StatusCode::FORBIDDEN,
            format!("{} refused the sign-in: {why}", p.spec.label),
        );
    }
    let Some(code) = q.code.filter(|c| !c.is_empty()) else {
        return fail(
            StatusCode::BAD_REQUEST,
            format!("The identity provider's answer has no code. {again}"),
        );
    };
    let SignedIn {
        member,
        refresh_token,
    } = match redeem(sso, p, m, code, &request).await {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(provider = %request.provider, error = %e, "an identity provider sign-in failed");
            return fail(
                StatusCode::BAD_REQUEST,
                format!("{}: {e}. {again}", p.spec.label),
            );
        }
    };
    let user = match s.store.sso_user(&member.stored(&p.spec.issuer)).await {
        Ok(u) => u,
        Err(e) => {
            tracing::error!(error = %e, "cannot record a member: the store failed");
            return fail(
                StatusCode::SERVICE_UNAVAILABLE,
                "The gateway cannot sign you in right now.".into(),
            );
        }
    };
    if user.disabled {
        tracing::info!(user = %user.name, provider = %request.provider, "sign-in of a disabled member refused");
        return fail(
            StatusCode::FORBIDDEN,
            "Your Manifold account is disabled: ask an administrator.".into(),
        );
    }
    tracing::info!(user = %user.name, provider = %request.provider, roles = ?user.roles, "signed in through an identity provider");
    let params = oauth::params_from(&request.next);
    let mut r = oauth::begin_session(&s, &h, &user, &params, refresh_token.as_deref()).await;
    r.headers_mut().append(header::SET_COOKIE, clear);
    r
}

/// Who the provider says signed in.
pub(crate) struct Member {
    pub subject: String,
    pub name: String,
    pub email: Option<String>,
    pub roles: Vec<String>,
    /// The groups claim's values.
    pub groups: Vec<String>,
}

impl Member {
    /// The member as the store keeps them.
    pub(crate) fn stored<'a>(&'a self, issuer: &'a str) -> SsoMember<'a> {
        SsoMember {
            issuer,
            subject: &self.subject,
            name: &self.name,
            email: self.email.as_deref(),
            roles: &self.roles,
            groups: &self.groups,
        }
    }
}

/// What a sign-in at the provider gave: the member, and the provider's refresh token if it
/// issued one (kept sealed, so that each refresh of ours asks the provider again).
pub(crate) struct SignedIn {
    pub member: Member,
    pub refresh_token: Option<String>,
}

/// Redeem the code, check the ID token, read userinfo if configured, map the claims.
async fn redeem(
    sso: &Sso,
    p: &Provider,
    m: Arc<Metadata>,
    code: String,
    request: &SsoRequest,
) -> Result<SignedIn, String> {
    let http = sso.http();
    let client = sso.client(p, &m);
    let exchange = client
        .exchange_code(AuthorizationCode::new(code))
        .map_err(|e| format!("no token endpoint: {e}"))?
        .set_pkce_verifier(PkceCodeVerifier::new(request.verifier.clone()))
        .request_async(&http);
    let tokens = exchange.await.map_err(|e| match &e {
        openidconnect::RequestTokenError::ServerResponse(r) => format!(
            "the code was refused ({}{})",
            r.error(),
            r.error_description()
                .map(|d| format!(": {d}"))
                .unwrap_or_default()
        ),
        other => format!("the code could not be redeemed: {other}"),
    })?;
    let id_token = tokens
        .id_token()
        .ok_or("the identity provider sent no ID token (is `openid` among the scopes?)")?;
    let nonce = Nonce::new(request.nonce.clone());
    let (m, mut claims) = verified(sso, p, m, id_token, &nonce).await?;
    let subject = claims
        .get("sub")
        .and_then(Value::as_str)
        .ok_or("the ID token has no subject")?
        .to_owned();
    if p.spec.userinfo {
        with_userinfo(
            sso,
            &m,
            tokens.access_token().secret(),
            &subject,
            &mut claims,
        )
        .await?;
    }
    Ok(SignedIn {
        member: member_of(&p.spec, &claims, subject),
        refresh_token: tokens.refresh_token().map(|t| t.secret().clone()),
    })
}

/// The claims of an ID token of the provider, checked (its keys read again once for an
/// unknown `kid`), and the metadata that checked them.
async fn verified(
    sso: &Sso,
    p: &Provider,
    mut m: Arc<Metadata>,
    id_token: &openidconnect::core::CoreIdToken,
    nonce: impl openidconnect::NonceVerifier + Clone,
) -> Result<(Arc<Metadata>, Value), String> {
    let mut refetched = false;
    loop {
        let client = sso.client(p, &m);
        let verifier = client
            .id_token_verifier()
            .set_allowed_algs(ALGORITHMS)
            // 60 s of clock skew on `exp`.
            .set_time_fn(|| chrono::Utc::now() - chrono::Duration::seconds(60));
        match id_token.claims(&verifier, nonce.clone()) {
            Ok(_) => break,
            Err(openidconnect::ClaimsVerificationError::SignatureVerification(
                openidconnect::SignatureVerificationError::NoMatchingKey,
            )) if !refetched => {
                // The provider may have rotated its keys.
                refetched = true;
                m = sso.metadata(p, true).await?;
            }
            Err(e) => return Err(format!("its ID token was refused: {e}")),
        }
    }
    // Verified: the payload can be read as it is, for the claims the standard set lacks.
    let claims = payload(&id_token.to_string())?;
    // `openidconnect` leaves `azp` alone (any extra audience is refused already): an ID token
    // issued to another party is not ours.
    if let Some(azp) = claims.get("azp")
        && azp.as_str() != Some(p.spec.client_id.as_str())
    {
        return Err(format!(
            "its ID token was refused: its authorized party (azp) is {azp}, not this gateway"
        ));
    }
    Ok((m, claims))
}

/// The provider's userinfo for `access_token`, added to `claims` (the ID token's claims win).
async fn with_userinfo(
    sso: &Sso,
    m: &Metadata,
    access_token: &str,
    subject: &str,
    claims: &mut Value,
) -> Result<(), String> {
    let url = m
        .userinfo_endpoint()
        .ok_or("`userinfo = true`, but the provider has no userinfo endpoint")?;
    let info: Value = sso
        .http
        .get(url.url().as_str())
        .bearer_auth(access_token)
        .header(header::ACCEPT, "application/json")
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| format!("cannot read userinfo: {e}"))?
        .json()
        .await
        .map_err(|e| format!("userinfo is not JSON: {e}"))?;
    if info.get("sub").and_then(Value::as_str) != Some(subject) {
        return Err("userinfo describes another subject than the ID token".into());
    }
    if let (Value::Object(c), Value::Object(i)) = (claims, info) {
        for (k, v) in i {
            c.entry(k).or_insert(v);
        }
    }
    Ok(())
}

/// What asking the provider again, with the member's refresh token there, found.
pub(crate) enum Asked {
    /// It still vouches for the member: who they are now (`None` when its answer says nothing
    /// of them: no ID token, and no userinfo configured), and the refresh token to use next.
    Vouched(Option<Member>, String),
    /// It no longer accepts this sign-in (the member was disabled or removed there, or the
    /// grant revoked): why.
    Refused(String),
    /// It could not be asked (down, or an unexpected answer): why.
    Unreachable(String),
}

impl Sso {
    /// The provider whose members have this issuer, and its name.
    pub(crate) fn of_issuer(&self, issuer: &str) -> Option<(&str, &Provider)> {
        self.providers
            .iter()
            .find(|(_, p)| p.spec.issuer == issuer)
            .map(|(n, p)| (n.as_str(), p))
    }

    /// Refresh the member `subject`'s sign-in at provider `p` with its `refresh_token`: is
    /// the member still theirs, and with which claims?
    pub(crate) async fn ask_again(
        &self,
        p: &Provider,
        refresh_token: &str,
        subject: &str,
    ) -> Asked {
        let m = match self.metadata(p, false).await {
            Ok(m) => m,
            Err(e) => return Asked::Unreachable(e),
        };
        let client = self.client(p, &m);
        let rt = openidconnect::RefreshToken::new(refresh_token.to_owned());
        let request = match client.exchange_refresh_token(&rt) {
            Ok(r) => r,
            Err(e) => return Asked::Unreachable(format!("no token endpoint: {e}")),
        };
        let tokens = match request.request_async(&self.http()).await {
            Ok(t) => t,
            Err(openidconnect::RequestTokenError::ServerResponse(r))
                if *r.error() == openidconnect::core::CoreErrorResponseType::InvalidGrant =>
            {
                return Asked::Refused(
                    r.error_description()
                        .cloned()
                        .unwrap_or_else(|| "invalid_grant".into()),
                );
            }
            Err(e) => return Asked::Unreachable(format!("its token endpoint: {e}")),
        };
        let next = tokens
            .refresh_token()
            .map_or_else(|| refresh_token.to_owned(), |t| t.secret().clone());
        let claims = match tokens.id_token() {
            // A refreshed ID token is of the same member (OpenID Connect Core 12.2); it
            // carries no nonce.
            Some(id) => match verified(self, p, m.clone(), id, |_: Option<&Nonce>| Ok(())).await {
                Ok((_, c)) => Some(c),
                Err(e) => return Asked::Refused(e),
            },
            None if p.spec.userinfo => Some(json!({"sub": subject})),
            None => None,
        };
        let Some(mut claims) = claims else {
            return Asked::Vouched(None, next);
        };
        if claims.get("sub").and_then(Value::as_str) != Some(subject) {
            return Asked::Refused("its refreshed ID token is of another subject".into());
        }
        if p.spec.userinfo
            && let Err(e) = with_userinfo(
                self,
                &m,
                tokens.access_token().secret(),
                subject,
                &mut claims,
            )
            .await
        {
            return Asked::Unreachable(e);
        }
        Asked::Vouched(Some(member_of(&p.spec, &claims, subject.to_owned())), next)
    }
}

/// Who the claims say the member is, by the provider's rules.
pub(crate) fn member_of(spec: &ProviderSpec, claims: &Value, subject: String) -> Member {
    let text = |path: &str| {
        claim(claims, path)
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let email = text(&spec.email_claim);
    let name = email
        .clone()
        .or_else(|| text("preferred_username"))
        .or_else(|| text(&spec.name_claim))
        .unwrap_or_else(|| subject.clone());
    let groups: Vec<String> = match claim(claims, &spec.groups_claim) {
        Some(Value::String(g)) => vec![g.clone()],
        Some(Value::Array(gs)) => gs
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    };
    Member {
        roles: roles_of(spec, &groups),
        groups,
        subject,
        name,
        email,
    }
}

/// The claims of a compact JWT whose signature was checked.
pub(crate) fn payload(jwt: &str) -> Result<Value, String> {
    let part = jwt.split('.').nth(1).ok_or("the ID token is not a JWT")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|_| "the ID token's payload is not base64url")?;
    serde_json::from_slice(&bytes).map_err(|_| "the ID token's payload is not JSON".into())
}

/// The claim at a dotted path (`realm_access.roles`); a claim whose own name holds dots is
/// found too.
fn claim<'a>(claims: &'a Value, path: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    path.split('.').try_fold(claims, |v, k| v.get(k))
}

/// The provider's default roles and those its rules give these groups, sorted, once each.
fn roles_of(spec: &ProviderSpec, groups: &[String]) -> Vec<String> {
    let mut roles: Vec<String> = spec.default_roles.clone();
    for g in groups {
        if let Some(rs) = spec.roles.get(g) {
            roles.extend(rs.iter().cloned());
        }
    }
    roles.sort();
    roles.dedup();
    roles
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec() -> ProviderSpec {
        ProviderSpec {
            label: "IdP".into(),
            issuer: "https://idp.example".into(),
            client_id: "c".into(),
            client_secret: None,
            scopes: vec!["openid".into()],
            groups_claim: "realm_access.roles".into(),
            name_claim: "name".into(),
            email_claim: "email".into(),
            userinfo: false,
            roles: BTreeMap::from([
                ("eng".into(), vec!["dev".into()]),
                ("admins".into(), vec!["admin".into(), "dev".into()]),
            ]),
            default_roles: vec!["member".into()],
            id_jag: false,
            reauthenticate_after: std::time::Duration::from_secs(3600),
        }
    }

    #[test]
    fn groups_map_to_roles_by_the_rules() {
        let s = spec();
        assert_eq!(roles_of(&s, &[]), ["member"]);
        assert_eq!(
            roles_of(&s, &["admins".into(), "eng".into(), "sales".into()]),
            ["admin", "dev", "member"]
        );
    }

    #[test]
    fn claims_are_found_by_dotted_paths() {
        let c = json!({"realm_access": {"roles": ["eng"]}, "https://acme.example/groups": ["x"], "email": "a@b"});
        assert_eq!(claim(&c, "realm_access.roles"), Some(&json!(["eng"])));
        assert_eq!(
            claim(&c, "https://acme.example/groups"),
            Some(&json!(["x"]))
        );
        assert_eq!(claim(&c, "email"), Some(&json!("a@b")));
        assert_eq!(claim(&c, "realm_access.nope"), None);
        assert_eq!(claim(&c, "email.x"), None);
    }

    #[test]
    fn a_payload_is_read_only_from_a_jwt() {
        let body = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"sub":"s"}"#);
        assert_eq!(payload(&format!("h.{body}.sig")).unwrap()["sub"], "s");
        assert!(payload("not-a-jwt").is_err());
        assert!(payload("h.!!!.s").is_err());
    }
}
