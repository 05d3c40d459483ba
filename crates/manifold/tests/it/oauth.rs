//! Signing in: the gateway's authorization server and the resource server on every virtual
//! server, driven over HTTP as a client and a browser would (and as attackers would), on
//! SQLite and on PostgreSQL; and real clients (`mcp-remote`) signing in with a scripted browser.

use std::collections::HashMap;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::support::*;

pub(crate) const REDIRECT: &str = "http://127.0.0.1:7777/callback";

/// Two virtual servers with sign-in required, on `store` (empty: SQLite in the temp dir).
fn signed_in_config(store: &str, extra_auth: &str) -> String {
    format!(
        "{store}\n[auth]\nrequired = true\n{extra_auth}\n{}\n[servers.main]\nconnectors = [\"fa\"]\n\n[servers.other]\nconnectors = [\"fa\"]\n",
        faulty("fa", "")
    )
}

/// The first admin's password, from what the gateway printed at its first start.
fn admin_password(gw: &Gw) -> String {
    gw.head
        .split("password (shown once): ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no first-admin password in: {}", gw.head))
        .to_owned()
}

pub(crate) fn pkce() -> (String, String) {
    let bytes: [u8; 32] = rand::random();
    let verifier = B64.encode(bytes);
    let challenge = B64.encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

pub(crate) fn no_redirects() -> reqwest::Client {
    http_builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// A browser: no automatic redirects, cookies kept by name.
pub(crate) struct Browser {
    http: reqwest::Client,
    cookies: HashMap<String, String>,
}

impl Browser {
    pub(crate) fn new() -> Self {
        Self {
            http: no_redirects(),
            cookies: HashMap::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn keep(&mut self, r: &reqwest::Response) {
        for c in r.headers().get_all("set-cookie") {
            let c = c.to_str().unwrap();
            let kv = c.split(';').next().unwrap();
            let (k, v) = kv.split_once('=').unwrap();
            if v.is_empty() {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.to_owned(), v.to_owned());
            }
        }
    }

    pub(crate) async fn get(&mut self, url: &str) -> reqwest::Response {
        let r = self
            .http
            .get(url)
            .header("cookie", self.cookie_header())
            .send()
            .await
            .unwrap();
        self.keep(&r);
        r
    }

    pub(crate) async fn post_form(
        &mut self,
        url: &str,
        form: &[(String, String)],
    ) -> reqwest::Response {
        let body = form
            .iter()
            .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
            .collect::<Vec<_>>()
            .join("&");
        let r = self
            .http
            .post(url)
            .header("cookie", self.cookie_header())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        self.keep(&r);
        r
    }
}

pub(crate) fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

pub(crate) fn dec(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

/// The hidden fields of a page's form.
pub(crate) fn hidden(page: &str) -> Vec<(String, String)> {
    page.split("<input type=\"hidden\" name=\"")
        .skip(1)
        .map(|rest| {
            let (name, rest) = rest.split_once('"').unwrap();
            let value = rest
                .split_once("value=\"")
                .unwrap()
                .1
                .split_once('"')
                .unwrap()
                .0;
            (
                name.to_owned(),
                value
                    .replace("&amp;", "&")
                    .replace("&quot;", "\"")
                    .replace("&#39;", "'")
                    .replace("&lt;", "<")
                    .replace("&gt;", ">"),
            )
        })
        .collect()
}

/// The query parameters of a redirect's `Location`.
pub(crate) fn location(r: &reqwest::Response) -> (String, HashMap<String, String>) {
    let loc = r
        .headers()
        .get("location")
        .unwrap_or_else(|| panic!("a redirect, got {}", r.status()))
        .to_str()
        .unwrap()
        .to_owned();
    let (path, q) = loc.split_once('?').unwrap_or((&loc, ""));
    let params = q
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_owned(), dec(v))
        })
        .collect();
    (path.to_owned(), params)
}

pub(crate) async fn register(base: &str, redirects: &[&str]) -> (u16, Value) {
    let r = http()
        .post(format!("{base}/oauth/register"))
        .json(&json!({ "redirect_uris": redirects, "client_name": "Test <client>", "token_endpoint_auth_method": "none" }))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

pub(crate) fn authorize_url(
    base: &str,
    client: &str,
    redirect: &str,
    challenge: &str,
    resource: &str,
) -> String {
    format!(
        "{base}/oauth/authorize?response_type=code&client_id={}&redirect_uri={}&code_challenge={challenge}&code_challenge_method=S256&state=st4te&scope=mcp&resource={}",
        enc(client),
        enc(redirect),
        enc(resource)
    )
}

/// Follow an authorization URL in `b` as `user`, allowing on the consent page (which must name
/// the client `name`, as escaped HTML, and the redirect host): the final redirect.
async fn follow(
    b: &mut Browser,
    base: &str,
    url: &str,
    user: &str,
    password: &str,
    name: &str,
) -> reqwest::Response {
    let mut r = b.get(url).await;
    for _ in 0..3 {
        if r.status() == 303 {
            break;
        }
        assert_eq!(r.status(), 200);
        let page = r.text().await.unwrap();
        let mut form = hidden(&page);
        if page.contains("action=\"/oauth/login\"") {
            form.push(("username".into(), user.into()));
            form.push(("password".into(), password.into()));
            r = b.post_form(&format!("{base}/oauth/login"), &form).await;
            assert_eq!(r.status(), 303, "sign-in accepted");
            let next = r.headers()["location"].to_str().unwrap().to_owned();
            assert!(next.starts_with("/oauth/authorize?"), "{next}");
            r = b.get(&format!("{base}{next}")).await;
        } else if page.contains("action=\"/oauth/consent\"") {
            assert!(page.contains(name), "the client's name, escaped: {page}");
            assert!(
                page.contains("127.0.0.1:7777"),
                "the redirect host is shown: {page}"
            );
            form.push(("decision".into(), "allow".into()));
            r = b.post_form(&format!("{base}/oauth/consent"), &form).await;
        } else {
            panic!("an unexpected page: {page}");
        }
    }
    r
}

/// Sign in as `user` in `b` and allow `client`: the authorization code.
async fn sign_in(
    b: &mut Browser,
    base: &str,
    client: &str,
    user: &str,
    password: &str,
    challenge: &str,
    server: &str,
) -> String {
    // The issuer (and so the resource's URL) is the config's, which need not be `base`.
    let issuer = issuer_of(base).await;
    let url = authorize_url(
        base,
        client,
        REDIRECT,
        challenge,
        &format!("{issuer}/mcp/{server}"),
    );
    let r = follow(b, base, &url, user, password, "Test &lt;client&gt;").await;
    let (to, q) = location(&r);
    assert_eq!(to, REDIRECT);
    assert_eq!(q["state"], "st4te");
    assert_eq!(q["iss"], issuer, "RFC 9207 iss");
    q.get("code")
        .unwrap_or_else(|| panic!("a code: {q:?}"))
        .clone()
}

pub(crate) async fn get_json(url: impl reqwest::IntoUrl) -> Value {
    http().get(url).send().await.unwrap().json().await.unwrap()
}

async fn issuer_of(base: &str) -> String {
    let m: Value = get_json(format!("{base}/.well-known/oauth-authorization-server")).await;
    m["issuer"].as_str().unwrap().to_owned()
}

pub(crate) async fn token_request(
    base: &str,
    form: &[(&str, &str)],
) -> (u16, Value, reqwest::header::HeaderMap) {
    let body = form
        .iter()
        .map(|(k, v)| format!("{k}={}", enc(v)))
        .collect::<Vec<_>>()
        .join("&");
    let r = http()
        .post(format!("{base}/oauth/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    let h = r.headers().clone();
    (r.status().as_u16(), r.json().await.unwrap(), h)
}

pub(crate) async fn refresh_with(
    base: &str,
    client: &str,
    refresh: &str,
) -> (u16, Value, reqwest::header::HeaderMap) {
    token_request(
        base,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh),
            ("client_id", client),
        ],
    )
    .await
}

pub(crate) async fn redeem(base: &str, client: &str, code: &str, verifier: &str) -> (u16, Value) {
    let (s, v, _) = token_request(
        base,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("client_id", client),
            ("code_verifier", verifier),
        ],
    )
    .await;
    (s, v)
}

/// `initialize` with a bearer token: the status.
pub(crate) async fn init_with(url: &str, token: &str) -> u16 {
    post(url)
        .header("authorization", format!("Bearer {token}"))
        .body(INIT)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Register, sign in as `user`, redeem: (client id, access token, refresh token).
async fn tokens_for(
    base: &str,
    b: &mut Browser,
    user: &str,
    password: &str,
    server: &str,
) -> (String, String, String) {
    let (status, reg) = register(base, &[REDIRECT]).await;
    assert_eq!(status, 201, "{reg}");
    let client = reg["client_id"].as_str().unwrap().to_owned();
    let (verifier, challenge) = pkce();
    let code = sign_in(b, base, &client, user, password, &challenge, server).await;
    let (status, t) = redeem(base, &client, &code, &verifier).await;
    assert_eq!(status, 200, "{t}");
    (
        client,
        t["access_token"].as_str().unwrap().to_owned(),
        t["refresh_token"].as_str().unwrap().to_owned(),
    )
}

async fn stores() -> Vec<(&'static str, String)> {
    let mut out = vec![("SQLite", String::new())];
    match manifold_store::testing::fresh_postgres().await {
        Ok(url) => out.push(("PostgreSQL", format!("[store]\nurl = \"{url}\"\n"))),
        Err(why) if manifold_store::testing::postgres_required() => panic!("{why}"),
        Err(why) => eprintln!("SKIPPED the OAuth flow on PostgreSQL: {why}"),
    }
    out
}

#[tokio::test]
async fn a_client_signs_in_and_its_token_works_only_where_and_while_it_should() {
    for (backend, store) in stores().await {
        let gw = Gw::start(&signed_in_config(&store, ""));
        gw.wait_up().await;
        let base = gw.base.clone();
        let password = admin_password(&gw);

        // No token: 401 with where to sign in, in both eras.
        let r = post(&gw.url("main")).body(INIT).send().await.unwrap();
        assert_eq!(r.status(), 401, "{backend}");
        // Its body unread, the connection is not reused: the answer says so.
        assert_eq!(r.headers()["connection"], "close", "{backend}");
        let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
        let prm = format!("{base}/.well-known/oauth-protected-resource/mcp/main");
        assert_eq!(
            challenge,
            format!("Bearer resource_metadata=\"{prm}\", scope=\"mcp\"")
        );
        let r = modern(&gw.url("main"), "tools/list", None, json!({}), json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "the 2026-07-28 era too");
        assert_eq!(r.headers()["www-authenticate"].to_str().unwrap(), challenge);

        // Metadata: the resource's and the authorization server's, issuer from the config
        // (here the listening address), not from the Host header.
        let meta: Value = get_json(&prm).await;
        assert_eq!(meta["resource"], format!("{base}/mcp/main"));
        assert_eq!(meta["authorization_servers"], json!([base]));
        let port = base.rsplit(':').next().unwrap();
        let asm: Value = http()
            .get(format!("{base}/.well-known/oauth-authorization-server"))
            .header("host", format!("localhost:{port}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(asm["issuer"], base);
        assert_eq!(asm["code_challenge_methods_supported"], json!(["S256"]));
        assert!(
            !asm["scopes_supported"]
                .to_string()
                .contains("offline_access")
        );
        let oidc: Value = get_json(format!("{base}/.well-known/openid-configuration")).await;
        assert_eq!(oidc["token_endpoint"], asm["token_endpoint"]);
        let evil = http()
            .get(format!("{base}/.well-known/oauth-authorization-server"))
            .header("host", "evil.example")
            .send()
            .await
            .unwrap();
        assert_eq!(
            evil.status(),
            403,
            "the Host check applies to the authorization server"
        );

        // The first admin signs in; the token answers at its virtual server only.
        let mut b = Browser::new();
        let (client, access, refresh) = tokens_for(&base, &mut b, "admin", &password, "main").await;
        assert_eq!(init_with(&gw.url("main"), &access).await, 200, "{backend}");
        let r = post(&gw.url("other"))
            .header("authorization", format!("Bearer {access}"))
            .body(INIT)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "a token for main is refused at other");
        assert!(
            r.text()
                .await
                .unwrap()
                .contains("not for this virtual server")
        );
        let q = post(&format!("{}?access_token={access}", gw.url("main")))
            .body(INIT)
            .send()
            .await
            .unwrap();
        assert_eq!(q.status(), 401, "a token in the query string is refused");

        // Signed in already, with consent remembered: the next authorization needs no page.
        let (verifier, challenge) = pkce();
        let r = b
            .get(&authorize_url(
                &base,
                &client,
                REDIRECT,
                &challenge,
                &format!("{base}/mcp/main"),
            ))
            .await;
        assert_eq!(r.status(), 303, "no page the second time");
        let code = location(&r).1["code"].clone();
        assert_eq!(redeem(&base, &client, &code, &verifier).await.0, 200);

        // Refresh: a new pair each time; the old refresh token presented again revokes all.
        let (status, t2, headers) = refresh_with(&base, &client, &refresh).await;
        assert_eq!(status, 200, "{t2}");
        assert_eq!(headers["cache-control"], "no-store");
        let (access2, refresh2) = (
            t2["access_token"].as_str().unwrap().to_owned(),
            t2["refresh_token"].as_str().unwrap().to_owned(),
        );
        assert_ne!(refresh2, refresh);
        assert_eq!(init_with(&gw.url("main"), &access2).await, 200);
        let (status, again, _) = refresh_with(&base, &client, &refresh).await;
        assert_eq!(
            (status, again["error"].as_str()),
            (400, Some("invalid_grant"))
        );
        let (status, _, _) = refresh_with(&base, &client, &refresh2).await;
        assert_eq!(status, 400, "the whole family is revoked after a reuse");
        assert_eq!(
            init_with(&gw.url("main"), &access2).await,
            401,
            "its access tokens too"
        );
        assert_eq!(init_with(&gw.url("main"), &access).await, 401);
    }
}

#[tokio::test]
async fn codes_are_single_use_even_when_raced() {
    let gw = Gw::start(&signed_in_config("", ""));
    gw.wait_up().await;
    let base = gw.base.clone();
    let password = admin_password(&gw);
    let (_, reg) = register(&base, &[REDIRECT]).await;
    let client = reg["client_id"].as_str().unwrap().to_owned();
    let mut b = Browser::new();

    // Twenty redemptions of one code at once: exactly one token.
    let (verifier, challenge) = pkce();
    let code = sign_in(
        &mut b, &base, &client, "admin", &password, &challenge, "main",
    )
    .await;
    let tries = (0..20).map(|_| redeem(&base, &client, &code, &verifier));
    let results = futures::future::join_all(tries).await;
    let won: Vec<_> = results.iter().filter(|(s, _)| *s == 200).collect();
    assert_eq!(won.len(), 1, "{results:?}");
    assert!(
        results
            .iter()
            .filter(|(s, _)| *s != 200)
            .all(|(s, v)| *s == 400 && v["error"] == "invalid_grant")
    );
    // A code presented again revokes what it gave.
    let access = won[0].1["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        init_with(&gw.url("main"), &access).await,
        401,
        "the raced code's token is revoked"
    );

    // PKCE: a wrong verifier, and one sent to the wrong client, spend the code for nothing.
    let (verifier, challenge) = pkce();
    let code = sign_in(
        &mut b, &base, &client, "admin", &password, &challenge, "main",
    )
    .await;
    let (wrong, _) = pkce();
    let (s, v) = redeem(&base, &client, &code, &wrong).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (400, Some("invalid_grant")),
        "{v}"
    );
    assert_eq!(
        redeem(&base, &client, &code, &verifier).await.0,
        400,
        "spent by the failed try"
    );
    let (s, v, _) = token_request(
        &base,
        &[
            ("grant_type", "authorization_code"),
            ("code", "nonsense"),
            ("redirect_uri", REDIRECT),
            ("client_id", &client),
        ],
    )
    .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (400, Some("invalid_request")),
        "no verifier: {v}"
    );
    let (s, v, _) = token_request(&base, &[("grant_type", "password")]).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (400, Some("unsupported_grant_type"))
    );
}

#[tokio::test]
async fn authorization_requests_that_are_wrong_are_refused_without_an_open_redirect() {
    let gw = Gw::start(&signed_in_config("", ""));
    gw.wait_up().await;
    let base = gw.base.clone();
    let (_, reg) = register(&base, &[REDIRECT]).await;
    let client = reg["client_id"].as_str().unwrap().to_owned();
    let (_, challenge) = pkce();
    let resource = format!("{base}/mcp/main");
    let b = no_redirects();

    // A dozen near misses of the registered redirect URI: an error page, never a redirect.
    for near in [
        "http://127.0.0.1:7777/callback/",
        "http://127.0.0.1:7777/Callback",
        "http://127.0.0.1:7777/callback?x=1",
        "http://127.0.0.1:7777/callback#f",
        "http://localhost:7777/callback",
        "https://127.0.0.1:7777/callback",
        "http://127.0.0.2:7777/callback",
        "http://evil.example/callback",
        "http://127.0.0.1:7777@evil.example/callback",
        "http://user@127.0.0.1:7777/callback",
        "http://127.0.0.1:7777/callback/../callback",
        "http://127.0.0.1:7777/callbackx",
        "//evil.example/callback",
    ] {
        let r = b
            .get(authorize_url(&base, &client, near, &challenge, &resource))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{near}");
        assert!(
            r.headers().get("location").is_none(),
            "no redirect for {near}"
        );
    }
    // An unknown client: also a page.
    let r = b
        .get(authorize_url(
            &base,
            "mfc_nobody",
            REDIRECT,
            &challenge,
            &resource,
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.headers().get("location").is_none());
    // A loopback IP redirect may use another port (RFC 8252): it is the same client app.
    let other_port = b
        .get(authorize_url(
            &base,
            &client,
            "http://127.0.0.1:9999/callback",
            &challenge,
            &resource,
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(other_port.status(), 200, "the sign-in page");

    // With a good client and redirect URI, errors go back to the client with iss and state.
    let cases = [
        (
            format!(
                "{base}/oauth/authorize?response_type=code&client_id={client}&redirect_uri={}&state=s&resource={}",
                enc(REDIRECT),
                enc(&resource)
            ),
            "invalid_request",
            "no PKCE",
        ),
        (
            format!(
                "{base}/oauth/authorize?response_type=code&client_id={client}&redirect_uri={}&state=s&code_challenge={challenge}&code_challenge_method=plain&resource={}",
                enc(REDIRECT),
                enc(&resource)
            ),
            "invalid_request",
            "plain",
        ),
        (
            format!(
                "{base}/oauth/authorize?response_type=token&client_id={client}&redirect_uri={}&state=s&code_challenge={challenge}&code_challenge_method=S256&resource={}",
                enc(REDIRECT),
                enc(&resource)
            ),
            "unsupported_response_type",
            "implicit",
        ),
        (
            format!(
                "{base}/oauth/authorize?response_type=code&client_id={client}&redirect_uri={}&state=s&code_challenge={challenge}&code_challenge_method=S256",
                enc(REDIRECT)
            ),
            "invalid_target",
            "no resource",
        ),
        (
            authorize_url(
                &base,
                &client,
                REDIRECT,
                &challenge,
                &format!("{base}/mcp/nope"),
            ),
            "invalid_target",
            "an unknown virtual server",
        ),
        (
            authorize_url(
                &base,
                &client,
                REDIRECT,
                &challenge,
                "https://elsewhere.example/mcp/main",
            ),
            "invalid_target",
            "another origin",
        ),
    ];
    for (url, error, why) in cases {
        let r = b.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 303, "{why}");
        let (to, q) = location(&r);
        assert_eq!(to, REDIRECT, "{why}");
        assert_eq!(q["error"], error, "{why}");
        assert_eq!(q["iss"], base, "{why}");
        assert!(q["state"] == "s" || q["state"] == "st4te", "{why}");
    }
}

#[tokio::test]
async fn registration_sign_in_and_pages_resist_abuse() {
    let gw = Gw::start(&signed_in_config(
        "",
        "registrations_per_hour = 5\nlogins_per_minute = 4\n",
    ));
    gw.wait_up().await;
    let base = gw.base.clone();

    // Bad metadata is refused with what to fix.
    for (uris, error) in [
        (vec!["http://evil.example/cb"], "invalid_redirect_uri"),
        (vec!["javascript:alert(1)"], "invalid_redirect_uri"),
        (vec![], "invalid_redirect_uri"),
    ] {
        let (s, v) = register(&base, &uris).await;
        assert_eq!(
            (s, v["error"].as_str()),
            (400, Some(error)),
            "{uris:?}: {v}"
        );
    }
    let r = http()
        .post(format!("{base}/oauth/register"))
        .json(&json!({ "redirect_uris": [REDIRECT], "token_endpoint_auth_method": "client_secret_basic" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "only public clients");
    // Flooding: the per-source limit (5 an hour here, bad requests counted) answers 429.
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(register(&base, &[REDIRECT]).await.0);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assert_eq!(statuses.last(), Some(&429));

    // The sign-in page: never in a frame, never cached, no script.
    let (_, challenge) = pkce();
    let b = no_redirects();
    let client = "mfc_unknown";
    let r = b
        .get(authorize_url(
            &base,
            client,
            REDIRECT,
            &challenge,
            &format!("{base}/mcp/main"),
        ))
        .send()
        .await
        .unwrap();
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    assert_eq!(r.headers()["cache-control"], "no-store");

    // Password guessing is rate-limited per source and per user name.
    let mut br = Browser::new();
    let page = br
        .get(&format!("{base}/oauth/authorize?client_id=x"))
        .await
        .text()
        .await
        .unwrap();
    assert!(page.contains("not registered"), "{page}");
    let guess = |csrf: &str, i: usize| {
        vec![
            ("csrf".to_owned(), csrf.to_owned()),
            ("next".to_owned(), String::new()),
            ("username".to_owned(), "admin".to_owned()),
            ("password".to_owned(), format!("guess{i}")),
        ]
    };
    let mut statuses = Vec::new();
    for i in 0..2 {
        let form = guess("forged", i);
        // Without the CSRF cookie the form is refused before any password check.
        let r = br.post_form(&format!("{base}/oauth/login"), &form).await;
        let text = r.text().await.unwrap();
        assert!(text.contains("expired"), "{text}");
    }
    // With the cookie, guesses are checked, then limited.
    br.cookies.insert("mf_csrf".into(), "tok".into());
    for i in 0..6 {
        let form = guess("tok", i);
        let r = br.post_form(&format!("{base}/oauth/login"), &form).await;
        statuses.push(r.status().as_u16());
        br.cookies.insert("mf_csrf".into(), "tok".into());
    }
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 429, 429],
        "4 a minute, then 429"
    );
    // A form posted from another site is refused.
    let r = no_redirects()
        .post(format!("{base}/oauth/login"))
        .header("origin", "https://evil.example")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("username=admin&password=x&csrf=a&next=")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

#[tokio::test]
async fn a_token_is_its_users_alone_and_ends_with_them() {
    let gw = Gw::start(&signed_in_config("", ""));
    gw.wait_up().await;
    let base = gw.base.clone();
    let admin_pw = admin_password(&gw);
    gw.admin(
        &["users", "add", "bob", "--password-stdin"],
        "bobs-password-123\n",
        &[],
    );
    let (_, admin_token, _) =
        tokens_for(&base, &mut Browser::new(), "admin", &admin_pw, "main").await;
    let (_, bob_token, bob_refresh) = tokens_for(
        &base,
        &mut Browser::new(),
        "bob",
        "bobs-password-123",
        "main",
    )
    .await;

    // A legacy session belongs to whoever opened it.
    let sid = session_as(&gw.url("main"), &format!("Bearer {admin_token}")).await;
    let list = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;
    let mine = post_in(&gw.url("main"), &sid)
        .header("authorization", format!("Bearer {admin_token}"))
        .body(list)
        .send()
        .await
        .unwrap();
    assert_eq!(mine.status(), 200);
    let theirs = post_in(&gw.url("main"), &sid)
        .header("authorization", format!("Bearer {bob_token}"))
        .body(list)
        .send()
        .await
        .unwrap();
    assert_eq!(theirs.status(), 404, "another user's session is not found");

    // So does an MRTR round of a 2026-07-28 call: admin's `requestState`, presented with bob's
    // token, is refused (and tells bob nothing of admin); admin can still finish the call.
    let args = json!({"name": "fa__elicit", "arguments": {"message": "who are you?"}});
    let round = |token: &str, params: Value| {
        let r = modern(
            &gw.url("main"),
            "tools/call",
            Some("fa__elicit"),
            params,
            json!({"elicitation": {"form": {}}}),
        )
        .header("authorization", format!("Bearer {token}"));
        async move { message(&r.send().await.unwrap().text().await.unwrap()) }
    };
    let v = round(&admin_token, args.clone()).await;
    assert_eq!(v["result"]["resultType"], "input_required", "{v}");
    let key = v["result"]["inputRequests"]
        .as_object()
        .and_then(|m| m.keys().next().cloned())
        .unwrap_or_else(|| panic!("an input request: {v}"));
    let mut retry = args.clone();
    retry["requestState"] = v["result"]["requestState"].clone();
    retry["inputResponses"] = json!({key: {"action": "accept", "content": {"name": "Ada"}}});
    let v = round(&bob_token, retry.clone()).await;
    assert_eq!(
        v["error"]["code"], -32602,
        "another user's requestState: {v}"
    );
    assert!(!v.to_string().contains("admin"), "{v}");
    let v = round(&admin_token, retry).await;
    assert_eq!(
        v["result"]["content"][0]["text"], "elicited: accept {\"name\":\"Ada\"}",
        "{v}"
    );

    // Forged tokens: `alg: none`, a garbled signature, a token of another issuer's shape.
    let body = admin_token.split('.').nth(1).unwrap();
    let none = format!(
        "{}.{body}.",
        B64.encode(br#"{"alg":"none","typ":"at+jwt"}"#)
    );
    let mut garbled = admin_token.clone();
    garbled.replace_range(garbled.len() - 4.., "AAAA");
    for forged in [none, garbled, "a.b.c".to_owned()] {
        assert_eq!(init_with(&gw.url("main"), &forged).await, 401, "{forged}");
    }

    // Revocation (RFC 7009) of bob's refresh token ends his access token too.
    let r = http()
        .post(format!("{base}/oauth/revoke"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={bob_refresh}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Bob's token was remembered as verified since its first use; a revocation through this
    // gateway voids that at once.
    assert_eq!(init_with(&gw.url("main"), &bob_token).await, 401);
    // Unknown tokens are revoked "successfully" too (no oracle).
    let r = http()
        .post(format!("{base}/oauth/revoke"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("token=nonsense")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // A user disabled by the CLI (another process) is refused at the next request: the CLI
    // returns once the gateway has noticed.
    assert_eq!(init_with(&gw.url("main"), &admin_token).await, 200);
    gw.admin(&["users", "disable", "admin"], "", &[]);
    assert_eq!(init_with(&gw.url("main"), &admin_token).await, 401);

    // A reload cannot change the running authorization server: it says so.
    std::fs::write(
        gw.config_path(),
        signed_in_config("", "logins_per_minute = 3\n"),
    )
    .unwrap();
    eventually(
        "the [auth] warning",
        std::time::Duration::from_secs(10),
        || async {
            let log = gw.log();
            if log.contains("[auth] changed") && log.contains("restart the gateway") {
                Ok(())
            } else {
                Err(log)
            }
        },
    )
    .await;
}

#[tokio::test]
async fn a_reachable_address_without_sign_in_is_refused() {
    let dir = TempDir::new("open");
    let path = dir.path("manifold.toml");
    std::fs::write(&path, one_faulty("")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_manifold"))
        .args(["serve", "--config"])
        .arg(&path)
        .args(["--listen", "0.0.0.0:0"])
        .env("XDG_DATA_HOME", dir.path("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("[auth] required = true"), "{err}");
    // The same in the config: `check` says so.
    std::fs::write(&path, one_faulty("listen = \"0.0.0.0:8730\"")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_manifold"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("reachable from other machines"), "{err}");
}

/// mcp-remote (what Claude Desktop uses) signs in by itself: discovery, dynamic registration,
/// PKCE and `resource`, a scripted browser that signs in and allows access, then tools.
#[tokio::test]
async fn mcp_remote_signs_in_with_a_browser_and_calls_a_tool() {
    let Some(peers) = Peers::get("mcp_remote_signs_in_with_a_browser_and_calls_a_tool") else {
        return;
    };
    let gw = Gw::start(&signed_in_config("", ""));
    gw.wait_up().await;
    let password = admin_password(&gw);
    let tmp = TempDir::new("mcp-remote");
    // mcp-remote opens the browser with xdg-open, else `x-www-browser` from the PATH (this
    // machine has no desktop): both lead to the scripted browser.
    let bin = tmp.path("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let opener = bin.join("x-www-browser");
    std::fs::write(
        &opener,
        format!("#!/bin/sh\nexec {} \"$@\"\n", fixture("browser.sh")),
    )
    .unwrap();
    std::fs::set_permissions(&opener, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = tokio::process::Command::new(peers.node22())
        .arg(peers.npm_bin("mcp-inspector"))
        .arg("--cli")
        // The Inspector gives a stdio server only a few variables of its own: pass the rest.
        .args([
            "-e",
            &format!("MANIFOLD_BROWSER_LOG={}", tmp.path("browser.log").display()),
        ])
        .args(["-e", "MANIFOLD_TEST_USER=admin"])
        .args(["-e", &format!("MANIFOLD_TEST_PASSWORD={password}")])
        .args([
            "-e",
            &format!("MCP_REMOTE_CONFIG_DIR={}", tmp.path("mcp-auth").display()),
        ])
        // The sign-in runs in a real (headless) browser during the connection: on a loaded
        // machine that takes longer than the Inspector's own 15 s.
        .args(["--connect-timeout", "60000"])
        .arg(peers.node22())
        .arg(peers.npm_bin("mcp-remote"))
        .arg(gw.url("main"))
        .args([
            "--method",
            "tools/call",
            "--tool-name",
            "fa__echo",
            "--tool-arg",
            "message=signed-in",
        ])
        .env("PATH", path)
        .env("MCP_INSPECTOR_SECRET_STORE", "memory")
        .env("HOME", tmp.path("home"))
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(90), out)
        .await
        .expect("mcp-remote finishes within 90 s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let browser = std::fs::read_to_string(tmp.path("browser.log")).unwrap_or_default();
    assert!(
        stdout.contains("Echo: signed-in"),
        "stdout: {stdout}\nstderr: {}\nbrowser: {browser}\ngateway: {}",
        String::from_utf8_lossy(&out.stderr),
        gw.log()
    );
    assert!(
        gw.log().contains("client registered"),
        "mcp-remote registered itself"
    );
    assert!(gw.log().contains("signed in"), "through the sign-in page");
}

/// The Python SDK's OAuth client: discovery, dynamic registration, PKCE and `resource`, then
/// tools, in both eras.
/// Run `tests/clients/oauth_client.py` (the Python SDK's OAuth client) as `admin` against the
/// gateway's `main` server, calling `fa__echo`: its standard output, once it succeeded.
pub(crate) async fn python_client(
    peers: &Peers,
    gw: &Gw,
    password: &str,
    extra: &[&str],
) -> String {
    let out = tokio::process::Command::new(peers.python())
        .arg(repo().join("tests/clients/oauth_client.py"))
        .args([&gw.url("main"), "admin", password, "fa__echo"])
        .args(extra)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), out)
        .await
        .expect("the Python client finishes within 60 s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && stdout.contains("call: Echo: from python"),
        "{extra:?}: stdout: {stdout}\nstderr: {}\ngateway: {}",
        String::from_utf8_lossy(&out.stderr),
        gw.log()
    );
    assert!(stdout.contains("fa__echo"), "{stdout}");
    stdout
}

#[tokio::test]
async fn the_python_sdk_signs_in_and_calls_a_tool_in_both_eras() {
    let Some(peers) = Peers::get("the_python_sdk_signs_in_and_calls_a_tool_in_both_eras") else {
        return;
    };
    // Conditions on the OAuth client the member uses (`context.client`): an API key has none.
    let policy = r#"
[policy]
cedar = """
@id("no-add-through-apps")
forbid (principal, action, resource) when { resource.name == "add" && context.client != "" };
@id("slow-only-through-apps")
forbid (principal, action, resource) when { resource.name == "slow" && context.client == "" };
"""
"#;
    let gw = Gw::start(&format!("{}{policy}", signed_in_config("", "")));
    gw.wait_up().await;
    let password = admin_password(&gw);
    for era in ["legacy", "modern"] {
        let stdout = python_client(peers, &gw, &password, &["--era", era]).await;
        let tools = stdout
            .lines()
            .find_map(|l| l.strip_prefix("tools: "))
            .unwrap_or_else(|| panic!("{era}: no tools line: {stdout}"));
        assert!(tools.contains("fa__echo"), "{stdout}");
        assert!(
            tools.contains("fa__slow") && !tools.contains("fa__add"),
            "{era}: the conditions see the client: {stdout}"
        );
    }
}

/// Two gateways on one PostgreSQL database, with one issuer: a client registered at one signs
/// in there, and its tokens work at the other, whose refresh rotates them too.
#[tokio::test]
async fn two_gateways_on_one_postgres_share_clients_and_tokens() {
    let url = match manifold_store::testing::fresh_postgres().await {
        Ok(url) => url,
        Err(why) if manifold_store::testing::postgres_required() => panic!("{why}"),
        Err(why) => {
            return eprintln!(
                "SKIPPED two_gateways_on_one_postgres_share_clients_and_tokens: {why}"
            );
        }
    };
    let config = signed_in_config(
        &format!("[store]\nurl = \"{url}\"\n"),
        "issuer = \"http://127.0.0.1:1\"\n",
    );
    let a = Gw::start(&config);
    a.wait_up().await;
    let b = Gw::start(&config);
    b.wait_up().await;
    assert!(
        b.head.is_empty(),
        "the second finds the first admin: {}",
        b.head
    );
    let password = admin_password(&a);
    let (client, access, refresh) =
        tokens_for(&a.base, &mut Browser::new(), "admin", &password, "main").await;
    assert_eq!(
        init_with(&b.url("main"), &access).await,
        200,
        "a's token at b"
    );
    let (status, t, _) = refresh_with(&b.base, &client, &refresh).await;
    assert_eq!(status, 200, "b rotates a's refresh token: {t}");
    let access2 = t["access_token"].as_str().unwrap();
    assert_eq!(
        init_with(&a.url("main"), access2).await,
        200,
        "b's token at a"
    );
    // a's client signs in at b too.
    let (verifier, challenge) = pkce();
    let code = sign_in(
        &mut Browser::new(),
        &b.base,
        &client,
        "admin",
        &password,
        &challenge,
        "main",
    )
    .await;
    assert_eq!(redeem(&b.base, &client, &code, &verifier).await.0, 200);
}

/// The HTTPS host of `tests/fixtures/metadata_host.py`: its documents, and what it was asked.
struct MetadataHost {
    child: std::process::Child,
    dir: TempDir,
    port: u16,
    requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl MetadataHost {
    fn start(peers: &Peers) -> Self {
        use std::io::{BufRead, BufReader};
        let dir = TempDir::new("cimd");
        let mut child = std::process::Command::new(peers.python())
            .arg(fixture("metadata_host.py"))
            .arg(&dir.0)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start the metadata host");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().expect("a first line").unwrap();
        let port = first
            .strip_prefix("port ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let r = requests.clone();
        std::thread::spawn(move || {
            for l in lines.map_while(Result::ok) {
                r.lock().unwrap().push(l);
            }
        });
        Self {
            child,
            dir,
            port,
            requests,
        }
    }

    fn url(&self, name: &str) -> String {
        format!("https://127.0.0.1:{}/{name}", self.port)
    }

    /// Serve `doc` at `/name`.
    fn put(&self, name: &str, doc: &Value) {
        std::fs::write(self.dir.path("docs").join(name), doc.to_string()).unwrap();
    }

    /// How often `/name` was asked for.
    fn fetches(&self, name: &str) -> usize {
        let line = format!("GET /{name}");
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|l| **l == line)
            .count()
    }
}

impl Drop for MetadataHost {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client that is known by the URL of its metadata document (no registration): the Python
/// SDK signs in with one and calls a tool; the document is fetched once for the whole flow;
/// documents that lie, overreach, redirect, are too big or too slow are refused with the
/// reason and no redirect; and addresses that are private are never fetched.
#[tokio::test]
async fn client_metadata_documents_are_fetched_with_care() {
    let Some(peers) = Peers::get("client_metadata_documents_are_fetched_with_care") else {
        return;
    };
    let host = MetadataHost::start(peers);
    let python_redirect = "http://127.0.0.1:9/callback";
    let doc = |url: &str| {
        json!({
            "client_id": url,
            "client_name": "Doc <client>",
            "redirect_uris": [python_redirect, REDIRECT],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
        })
    };
    host.put("client.json", &doc(&host.url("client.json")));
    host.put("mismatch.json", &doc(&host.url("client.json")));
    let mut secret = doc(&host.url("secret.json"));
    secret["client_secret"] = json!("s3cret");
    host.put("secret.json", &secret);
    host.put("big.json", &doc(&host.url("big.json")));
    host.put("slow.json", &doc(&host.url("slow.json")));
    std::fs::write(host.dir.path("docs").join("notjson"), "<html>hello</html>").unwrap();
    // Only 127.0.0.1 is trusted on a private address, and only with the test CA.
    let gw = Gw::start(&signed_in_config(
        "",
        &format!(
            "client_metadata_private_hosts = [\"127.0.0.1\"]\nclient_metadata_ca = \"{}\"",
            host.dir.path("cert.pem").display()
        ),
    ));
    gw.wait_up().await;
    let base = gw.base.clone();
    let meta = get_json(format!("{base}/.well-known/oauth-authorization-server")).await;
    assert_eq!(meta["client_id_metadata_document_supported"], true);

    let password = admin_password(&gw);
    // The consent page says who the client is by the document's host.
    let (_, challenge) = pkce();
    let resource = format!("{base}/mcp/main");
    let mut b = Browser::new();
    let r = b
        .get(&authorize_url(
            &base,
            &host.url("client.json"),
            REDIRECT,
            &challenge,
            &resource,
        ))
        .await;
    assert_eq!(r.status(), 200);
    let page = r.text().await.unwrap();
    let form = hidden(&page);
    let r = b
        .post_form(
            &format!("{base}/oauth/login"),
            &[
                form,
                vec![
                    ("username".into(), "admin".into()),
                    ("password".into(), password.clone()),
                ],
            ]
            .concat(),
        )
        .await;
    let next = r.headers()["location"].to_str().unwrap().to_owned();
    let page = b.get(&format!("{base}{next}")).await.text().await.unwrap();
    assert!(
        page.contains("Doc &lt;client&gt;</b> (identified by <b>127.0.0.1</b>)"),
        "{page}"
    );

    // The real client, identified by its document.
    let stdout = python_client(
        peers,
        &gw,
        &password,
        &[
            "--era",
            "modern",
            "--client-metadata-url",
            &host.url("client.json"),
        ],
    )
    .await;
    assert!(
        stdout.contains(&format!("client_id: {}", host.url("client.json"))),
        "the SDK used the document, not registration: {stdout}"
    );
    assert_eq!(
        host.fetches("client.json"),
        1,
        "one fetch for both flows (authorize, sign-in, consent): {:?}",
        host.requests.lock().unwrap()
    );
    // A redirect URI the document does not list: no redirect.
    let r = no_redirects()
        .get(authorize_url(
            &base,
            &host.url("client.json"),
            "http://127.0.0.1:7777/other",
            &challenge,
            &resource,
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.headers().get("location").is_none());

    // Documents that are wrong: an error page with the reason, never a redirect.
    let refused = |client: String, why: &'static str| {
        let base = base.clone();
        let challenge = challenge.clone();
        let resource = resource.clone();
        async move {
            let r = no_redirects()
                .get(authorize_url(
                    &base, &client, REDIRECT, &challenge, &resource,
                ))
                .send()
                .await
                .unwrap();
            let status = r.status();
            let location = r.headers().get("location").cloned();
            let page = r.text().await.unwrap();
            assert_eq!(status, 400, "{client}: {page}");
            assert!(location.is_none(), "{client}: no redirect");
            assert!(page.contains(why), "{client}: {why:?} in {page}");
        }
    };
    let started = std::time::Instant::now();
    tokio::join!(
        refused(host.url("slow.json"), "did not arrive within 5 seconds"),
        async {
            refused(host.url("mismatch.json"), "not the URL it is served at").await;
            refused(host.url("secret.json"), "client_secret").await;
            refused(host.url("big.json"), "larger than 5120 bytes").await;
            refused(host.url("notjson"), "not a client metadata document").await;
            refused(host.url("redirect.json"), "redirects are not followed").await;
            refused(host.url("missing.json"), "404").await;
        }
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "the slow document is cut off"
    );
    // A refused document is remembered for a while, not fetched again at once.
    refused(host.url("mismatch.json"), "not the URL it is served at").await;
    assert_eq!(host.fetches("mismatch.json"), 1);
    assert_eq!(host.fetches("client.json"), 1, "redirects are not followed");

    // Addresses that are not public, and URLs that are not canonical https: never fetched.
    let p = host.port;
    for (client, why) in [
        (
            format!("https://localhost:{p}/ssrf1.json"),
            "a private or reserved address",
        ),
        (
            format!("https://[::1]:{p}/ssrf2.json"),
            "a private or reserved address",
        ),
        (
            format!("https://[::ffff:7f00:1]:{p}/ssrf3.json"),
            "a private or reserved address",
        ),
        (
            "https://169.254.169.254/latest/meta-data/iam".to_owned(),
            "a private or reserved address",
        ),
        (
            "https://10.0.0.1/client.json".to_owned(),
            "a private or reserved address",
        ),
        (
            "https://[fd00::1]/client.json".to_owned(),
            "a private or reserved address",
        ),
        (
            "https://0.0.0.0/client.json".to_owned(),
            "private or reserved",
        ),
        (
            format!("http://127.0.0.1:{p}/ssrf4.json"),
            "must be an https URL",
        ),
        (
            format!("https://2130706433:{p}/ssrf5.json"),
            "not in canonical form",
        ),
        (
            format!("https://127.0.0.1:{p}/a/../ssrf6.json"),
            "not in canonical form",
        ),
        (format!("https://127.0.0.1:{p}/"), "needs a path"),
        (
            format!("https://user@127.0.0.1:{p}/ssrf7.json"),
            "user name",
        ),
    ] {
        refused(client, why).await;
    }
    let asked = host.requests.lock().unwrap().clone();
    assert!(
        asked.iter().all(|l| !l.contains("ssrf")),
        "no private fetch happened: {asked:?}"
    );
}

/// With `client_metadata_documents = false`, a URL client id is refused, and the metadata
/// says so.
#[tokio::test]
async fn client_metadata_documents_can_be_switched_off() {
    let gw = Gw::start(&signed_in_config("", "client_metadata_documents = false"));
    gw.wait_up().await;
    let base = gw.base.clone();
    let meta = get_json(format!("{base}/.well-known/oauth-authorization-server")).await;
    assert_eq!(meta["client_id_metadata_document_supported"], false);
    let (_, challenge) = pkce();
    let r = no_redirects()
        .get(authorize_url(
            &base,
            "https://app.example.com/client.json",
            REDIRECT,
            &challenge,
            &format!("{base}/mcp/main"),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.headers().get("location").is_none());
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("does not accept client metadata documents")
    );
}

/// Clickjacking: in headless Chromium, the consent page renders at the top level but not in a
/// frame of another page on the same site (which gets the sign-in cookie, so the consent page
/// itself is what the browser refuses), while an ordinary page in the same frame renders.
#[tokio::test]
async fn the_consent_page_refuses_to_render_in_a_frame() {
    let Some(peers) = Peers::get("the_consent_page_refuses_to_render_in_a_frame") else {
        return;
    };
    let chromium = peers.var("MANIFOLD_CHROMIUM");
    if !std::path::Path::new(chromium).exists() {
        if std::env::var("MANIFOLD_REQUIRE_PEERS").as_deref() == Ok("1") {
            panic!(
                "{chromium} is missing: run scripts/setup-peers as root (apt-get install chromium)"
            );
        }
        eprintln!("SKIPPED the_consent_page_refuses_to_render_in_a_frame: no {chromium}");
        return;
    }
    let gw = Gw::start(&signed_in_config("", ""));
    gw.wait_up().await;
    let base = gw.base.clone();
    let (_, reg) = register(&base, &[REDIRECT]).await;
    let client = reg["client_id"].as_str().unwrap();
    let (_, challenge) = pkce();
    let url = authorize_url(
        &base,
        client,
        REDIRECT,
        &challenge,
        &format!("{base}/mcp/main"),
    );
    let out = tokio::process::Command::new(peers.node22())
        .arg(repo().join("tests/clients/frame_check.mjs"))
        .arg(chromium)
        .arg(format!(
            "{}/npm/node_modules/playwright-core",
            peers.var("MANIFOLD_PEERS")
        ))
        .args([url.as_str(), "admin", &admin_password(&gw)])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(90), out)
        .await
        .expect("the browser check finishes within 90 s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}\ngateway: {}",
        String::from_utf8_lossy(&out.stderr),
        gw.log()
    );
    let r: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(
        r["topLevel"], true,
        "the consent page renders on its own: {r}"
    );
    assert_eq!(
        r["servedIntoFrame"], true,
        "the frame was sent the consent page itself: {r}"
    );
    assert_eq!(
        r["framed"], false,
        "the browser refused to render it in a frame: {r}"
    );
    assert_eq!(
        r["controlFramed"], true,
        "an ordinary page does render in the frame: {r}"
    );
    assert!(
        r["console"].as_array().unwrap().iter().any(|m| m
            .as_str()
            .unwrap_or_default()
            .contains("frame-ancestors 'none'")),
        "Chromium names the policy that refused it: {r}"
    );
}

/// rmcp connects over `transport` in `era` (`legacy`: initialize; `modern`: discover
/// 2026-07-28), finds `fa__echo` and calls it.
pub(crate) async fn rmcp_lists_and_calls_echo<T, E, A>(transport: T, era: &str, gw: &Gw)
where
    T: rmcp::transport::IntoTransport<rmcp::RoleClient, E, A> + Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    use rmcp::{
        model::ProtocolVersion,
        service::{ClientLifecycleMode, ClientServiceExt as _},
    };
    let lifecycle = if era == "legacy" {
        ClientLifecycleMode::Initialize
    } else {
        ClientLifecycleMode::Discover {
            preferred_versions: vec![ProtocolVersion::V_2026_07_28],
        }
    };
    let c = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        ().serve_with_lifecycle(transport, lifecycle),
    )
    .await
    .expect("connects in time")
    .unwrap_or_else(|e| panic!("{era}: connect: {e}\n{}", gw.log()));
    let tools = c.list_all_tools().await.unwrap();
    assert!(
        tools.iter().any(|t| t.name == "fa__echo"),
        "{era}: {tools:?}"
    );
    let r = c
        .call_tool(call("fa__echo", json!({ "message": "from rmcp" })))
        .await
        .unwrap();
    assert_eq!(text(&r), "Echo: from rmcp", "{era}");
    let _ = c.cancel().await;
}

/// rmcp's OAuth client: discovery from the gateway's metadata, dynamic registration, PKCE
/// and `resource`, the callback with `state` and `iss` checked, then tools listed and one
/// called with its token, in both eras.
#[tokio::test]
async fn rmcp_signs_in_and_calls_a_tool_in_both_eras() {
    use rmcp::transport::{
        AuthClient, StreamableHttpClientTransport,
        auth::{AuthorizationRequest, OAuthState},
        streamable_http_client::StreamableHttpClientTransportConfig,
    };
    let gw = Gw::start(&signed_in_config("", ""));
    gw.wait_up().await;
    let password = admin_password(&gw);
    manifold_upstream::install_crypto_provider();
    for era in ["legacy", "modern"] {
        let mut state = OAuthState::new(gw.url("main"), None).await.unwrap();
        state
            .start_authorization(
                AuthorizationRequest::new(REDIRECT).with_client_name("Test <client> rmcp"),
            )
            .await
            .unwrap_or_else(|e| panic!("{era}: start: {e}\n{}", gw.log()));
        let url = state.get_authorization_url().await.unwrap();
        assert!(url.contains("code_challenge_method=S256"), "{url}");
        assert!(url.contains("resource="), "{url}");
        let mut b = Browser::new();
        let r = follow(
            &mut b,
            &gw.base,
            &url,
            "admin",
            &password,
            "Test &lt;client&gt; rmcp",
        )
        .await;
        let callback = r.headers()["location"].to_str().unwrap().to_owned();
        assert!(callback.starts_with(REDIRECT), "{callback}");
        state
            .handle_callback_url(&callback)
            .await
            .unwrap_or_else(|e| panic!("{era}: callback: {e}\n{}", gw.log()));
        let manager = state.into_authorization_manager().expect("authorized");
        let transport = StreamableHttpClientTransport::with_client(
            AuthClient::new(reqwest::Client::new(), manager),
            StreamableHttpClientTransportConfig::with_uri(gw.url("main")),
        );
        rmcp_lists_and_calls_echo(transport, era, &gw).await;
    }
}
