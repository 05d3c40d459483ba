//! Enterprise-managed authorization (the MCP extension
//! `io.modelcontextprotocol/enterprise-managed-authorization`): a client that holds an identity
//! assertion (an ID-JAG, `typ: oauth-id-jag+jwt`) from the organisation's identity provider
//! exchanges it at `/oauth/token` with the RFC 7523 `jwt-bearer` grant for an access token to
//! one virtual server — no browser, no redirect.
//!
//! The assertion is accepted only from a provider configured with `id_jag = true`, and only
//! when all of these hold: the header's `typ` is exactly `oauth-id-jag+jwt` and its `alg` one
//! of the allow-list; the signature verifies with the provider's published key (an unknown
//! `kid` reads the keys again, at most every 30 s); `iss` is the provider's issuer; `aud` is
//! this authorization server's issuer (alone); `exp` is in the future (60 s of skew) and the
//! lifetime at most 10 minutes past `iat`; `client_id` is the client that authenticated (a
//! configured confidential client); `resource` is one of our virtual servers (and the request's
//! `resource`, if given); its `jti` has not been presented before. The claims are mapped to a
//! member by the provider's rules, as at sign-in. A `scope` claim, if any, must include `mcp`;
//! the answer names the scope only then. No refresh token is issued: the client asks its
//! provider for a new assertion, so the provider stays in charge of access.

use openidconnect::{JsonWebKey, core::CoreJwsSigningAlgorithm};
use serde_json::Value;

use crate::{
    AuthServer,
    sso::{self, ALGORITHMS},
};

/// The grant type of RFC 7523.
pub(crate) const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// The JWT type of an identity assertion.
const TYP: &str = "oauth-id-jag+jwt";
/// Clock skew allowed on `exp` and `iat`.
const SKEW: i64 = 60;
/// The longest lifetime accepted.
const LONGEST: i64 = 600;

/// What an accepted assertion gives: the member, the resource (a virtual server's URL) and
/// the scope.
pub(crate) struct Accepted {
    pub user: manifold_store::User,
    pub resource: String,
    /// Whether the assertion carried a `scope` (then the answer names the scope granted;
    /// without one the client keeps what the assertion carries).
    pub scoped: bool,
}

/// Check `assertion`, presented by the authenticated `client`, for `resource` (if the request
/// named one). The refusal is an OAuth `invalid_grant` description (or `invalid_target`).
pub(crate) async fn accept(
    s: &AuthServer,
    assertion: &str,
    client: &str,
    resource: Option<&str>,
) -> Result<Accepted, (&'static str, String)> {
    let bad = |m: String| ("invalid_grant", m);
    let sso = s
        .sso
        .as_ref()
        .filter(|x| x.accepts_assertions())
        .ok_or_else(|| bad("this gateway trusts no identity provider's assertions".into()))?;
    let mut parts = assertion.split('.');
    let (Some(h64), Some(p64), Some(sig64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("the assertion is not a signed JWT".into()));
    };
    let header =
        decode_json(h64).ok_or_else(|| bad("the assertion's header is not JSON".into()))?;
    if header.get("typ").and_then(Value::as_str) != Some(TYP) {
        return Err(bad(format!("the assertion's typ must be {TYP:?}")));
    }
    let alg: CoreJwsSigningAlgorithm = header
        .get("alg")
        .cloned()
        .and_then(|a| serde_json::from_value(a).ok())
        .filter(|a| ALGORITHMS.contains(a))
        .ok_or_else(|| {
            bad("the assertion's alg is not one accepted (RS*, PS*, ES256, ES384, EdDSA)".into())
        })?;
    let claims =
        decode_json(p64).ok_or_else(|| bad("the assertion's claims are not JSON".into()))?;
    let text = |k: &str| claims.get(k).and_then(Value::as_str);
    let issuer = text("iss").ok_or_else(|| bad("the assertion has no iss".into()))?;
    let provider = sso
        .asserting(issuer)
        .ok_or_else(|| bad(format!("assertions of {issuer:?} are not trusted here")))?;
    let signature =
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, sig64)
            .map_err(|_| bad("the assertion's signature is not base64url".into()))?;
    let message = format!("{h64}.{p64}");
    let kid = header.get("kid").and_then(Value::as_str);
    let mut refetched = false;
    loop {
        let m = sso
            .metadata(provider, refetched)
            .await
            .map_err(|e| bad(format!("cannot read the provider's keys: {e}")))?;
        let key = m.jwks().keys().iter().find(|k| {
            kid.is_none_or(|kid| k.key_id().is_some_and(|id| id.as_str() == kid))
                && k.verify_signature(&alg, message.as_bytes(), &signature)
                    .is_ok()
        });
        if key.is_some() {
            break;
        }
        if refetched
            || kid.is_some_and(|kid| {
                m.jwks()
                    .keys()
                    .iter()
                    .any(|k| k.key_id().is_some_and(|id| id.as_str() == kid))
            })
        {
            return Err(bad("the assertion's signature does not verify".into()));
        }
        // An unknown key: the provider may have rotated.
        refetched = true;
    }
    let now = manifold_store::now();
    let audience_ok = match claims.get("aud") {
        Some(Value::String(a)) => a == &s.issuer,
        Some(Value::Array(a)) => a.len() == 1 && a[0].as_str() == Some(s.issuer.as_str()),
        _ => false,
    };
    if !audience_ok {
        return Err(bad(format!("the assertion's aud must be {:?}", s.issuer)));
    }
    let exp = claims
        .get("exp")
        .and_then(Value::as_i64)
        .ok_or_else(|| bad("the assertion has no exp".into()))?;
    if exp + SKEW <= now {
        return Err(bad("the assertion has expired".into()));
    }
    let iat = claims.get("iat").and_then(Value::as_i64).unwrap_or(now);
    if iat > now + SKEW || exp - iat > LONGEST {
        return Err(bad(format!(
            "the assertion's lifetime must be at most {LONGEST} s, from an iat not in the future"
        )));
    }
    if text("client_id") != Some(client) {
        return Err(bad("the assertion was issued to another client".into()));
    }
    let target = text("resource").ok_or_else(|| bad("the assertion names no resource".into()))?;
    let served = target
        .strip_prefix(&format!("{}/mcp/", s.issuer))
        .is_some_and(|name| s.serves(name));
    if !served || resource.is_some_and(|r| r != target) {
        return Err((
            "invalid_target",
            format!(
                "the assertion's resource {target:?} is not a virtual server of this gateway (or not the one asked for)"
            ),
        ));
    }
    let scoped = match text("scope") {
        Some(scope) if !scope.split(' ').any(|s| s == crate::SCOPE) => {
            return Err((
                "invalid_scope",
                format!(
                    "the assertion does not grant the scope {:?} this gateway's tokens need",
                    crate::SCOPE
                ),
            ));
        }
        Some(_) => true,
        None => false,
    };
    let subject = text("sub")
        .ok_or_else(|| bad("the assertion has no sub".into()))?
        .to_owned();
    let jti = text("jti").ok_or_else(|| bad("the assertion has no jti".into()))?;
    match s.store.spend_assertion(issuer, jti, exp + SKEW).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(
                issuer,
                jti,
                client,
                "an identity assertion was presented again"
            );
            return Err(bad("the assertion was used already".into()));
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot record an identity assertion: the store failed");
            return Err((
                "temporarily_unavailable",
                "the gateway cannot reach its store; try again".into(),
            ));
        }
    }
    let member = sso::member_of(&provider.spec, &claims, subject);
    let user = s
        .store
        .sso_user(&member.stored(issuer))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "cannot record a member: the store failed");
            (
                "temporarily_unavailable",
                "the gateway cannot reach its store; try again".to_owned(),
            )
        })?;
    if user.disabled {
        return Err(bad("the user is disabled".into()));
    }
    tracing::info!(user = %user.name, issuer, client, resource = target, "an identity assertion was exchanged for an access token");
    Ok(Accepted {
        user,
        resource: target.to_owned(),
        scoped,
    })
}

fn decode_json(part: &str) -> Option<Value> {
    let bytes =
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, part).ok()?;
    serde_json::from_slice(&bytes).ok()
}
