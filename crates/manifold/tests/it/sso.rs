//! Single sign-on against a real OpenID Connect provider (npm `oidc-provider`, started here on
//! loopback with a scripted sign-in): members sign in through it during the MCP authorization
//! flow, their groups become roles, and every way the provider's answer can be wrong, replayed,
//! misdirected or forged is refused.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
};

use serde_json::{Value, json};

use crate::{
    oauth::{
        Browser, REDIRECT, authorize_url, enc, hidden, init_with, location, pkce, python_client,
        redeem, refresh_with, register, rmcp_lists_and_calls_echo,
    },
    support::*,
};

/// An `oidc-provider` on a free loopback port; killed (by PID) when dropped.
struct Idp {
    child: Child,
    issuer: String,
    /// What it writes to stderr.
    log: std::path::PathBuf,
}

impl Idp {
    /// With `accounts` (id → claims) and `scopes` (scope → the claims it releases).
    fn start(peers: &Peers, accounts: Value, scopes: Value) -> Idp {
        Idp::start_with(peers, accounts, scopes, json!({}))
    }

    /// The same, with more of its configuration (`tests/fixtures/idp.mjs`).
    fn start_with(peers: &Peers, accounts: Value, scopes: Value, more: Value) -> Idp {
        let mut config = json!({
            "clients": [{"client_id": "manifold", "redirect_uris": ["http://127.0.0.1:1/oauth/sso/callback"]}],
            "accounts": accounts,
            "scopes": scopes,
        });
        if let (Value::Object(c), Value::Object(m)) = (&mut config, more) {
            c.extend(m);
        }
        let log = std::env::temp_dir().join(format!("manifold-idp-{}.log", rand::random::<u64>()));
        let mut child = Command::new(peers.node22())
            .arg(repo().join("tests/fixtures/idp.mjs"))
            .arg(format!("{}/npm/node_modules", peers.var("MANIFOLD_PEERS")))
            .arg(config.to_string())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start the identity provider");
        let mut line = String::new();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        out.read_line(&mut line).unwrap();
        // Keep reading what it prints, so that it never writes to a closed pipe.
        std::thread::spawn(move || for _ in out.lines() {});
        let issuer = line
            .trim()
            .strip_prefix("listening ")
            .unwrap_or_else(|| {
                panic!(
                    "the identity provider did not start: {line:?}\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })
            .to_owned();
        Idp { child, issuer, log }
    }

    /// Make the next ID token it issues carry `change` (see `tests/fixtures/idp.mjs`).
    async fn tamper(&self, change: Value) {
        let r = http()
            .post(format!("{}/_test/tamper", self.issuer))
            .body(change.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }

    /// Replace what it says of `account` from now on.
    async fn set_claims(&self, account: &str, claims: Value) {
        let r = http()
            .post(format!("{}/_test/claims/{account}", self.issuer))
            .body(claims.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }

    /// Remove `account`: its refresh tokens are refused from now on, as a disabled member's.
    async fn disable(&self, account: &str) {
        let r = http()
            .post(format!("{}/_test/disable/{account}", self.issuer))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }

    /// How many refresh-token grants it answered.
    async fn refreshes(&self) -> u64 {
        let r = http()
            .get(format!("{}/_test/refreshes", self.issuer))
            .send()
            .await
            .unwrap();
        r.text().await.unwrap().parse().unwrap()
    }

    /// Who signs in next.
    async fn sign_in_as(&self, account: &str) {
        let r = http()
            .get(format!("{}/_test/as/{account}", self.issuer))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A provider `[auth.providers.NAME]` table.
fn provider(name: &str, issuer: &str, extra: &str) -> String {
    format!("[auth.providers.{name}]\nissuer = \"{issuer}\"\nclient_id = \"manifold\"\n{extra}\n")
}

fn config(auth_extra: &str, providers: &str) -> String {
    format!(
        "[auth]\nrequired = true\n{auth_extra}\n{providers}\n{}\n[servers.main]\nconnectors = [\"fa\"]\n",
        faulty("fa", "")
    )
}

/// Follow redirects in `b` from `url` (relative ones against the URL they came from) until a
/// page (200) or a redirect for which `stop` says so: that response and its URL.
async fn walk(
    b: &mut Browser,
    url: &str,
    stop: impl Fn(&str) -> bool,
) -> (reqwest::Response, String) {
    let mut url = url.to_owned();
    for _ in 0..20 {
        let r = b.get(&url).await;
        if !r.status().is_redirection() {
            return (r, url);
        }
        let loc = r.headers()["location"].to_str().unwrap().to_owned();
        let next = if loc.starts_with("http") {
            loc
        } else {
            let origin: String = url.splitn(4, '/').take(3).collect::<Vec<_>>().join("/");
            format!("{origin}{loc}")
        };
        if stop(&next) {
            return (r, next);
        }
        url = next;
    }
    panic!("more than 20 redirects from {url}");
}

/// The MCP authorization flow of a registered client, from the authorization URL to the
/// gateway's redirect to the client, through the provider: the code.
async fn sign_in_through(b: &mut Browser, gw: &Gw, start: &str) -> String {
    let (page, at) = walk(b, start, |_| false).await;
    let status = page.status();
    let page = page.text().await.unwrap();
    assert_eq!(status, 200, "at {at}: {page}\n{}", gw.log());
    assert!(
        page.contains("action=\"/oauth/consent\""),
        "the consent page: {page}"
    );
    let mut form = hidden(&page);
    form.push(("decision".into(), "allow".into()));
    let r = b
        .post_form(&format!("{}/oauth/consent", gw.base), &form)
        .await;
    let (to, params) = location(&r);
    assert_eq!(to, REDIRECT);
    params["code"].clone()
}

/// Register a client, sign in through the provider and redeem the code: the access token.
async fn token_through(
    b: &mut Browser,
    gw: &Gw,
    first_page: impl Fn(&str) -> Option<String>,
) -> String {
    tokens_through(b, gw, first_page).await.1["access_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The same: the client id and the whole token response.
async fn tokens_through(
    b: &mut Browser,
    gw: &Gw,
    first_page: impl Fn(&str) -> Option<String>,
) -> (String, Value) {
    let (_, reg) = register(&gw.base, &[REDIRECT]).await;
    let client = reg["client_id"].as_str().unwrap().to_owned();
    let (verifier, challenge) = pkce();
    let url = authorize_url(&gw.base, &client, REDIRECT, &challenge, &gw.url("main"));
    // The sign-in page, or straight on to a provider.
    let r = b.get(&url).await;
    let start = if r.status() == 200 {
        let page = r.text().await.unwrap();
        first_page(&page).unwrap_or_else(|| panic!("no way on from the sign-in page: {page}"))
    } else {
        let loc = r.headers()["location"].to_str().unwrap().to_owned();
        format!("{}{loc}", gw.base)
    };
    let code = sign_in_through(b, gw, &start).await;
    let (status, t) = redeem(&gw.base, &client, &code, &verifier).await;
    assert_eq!(status, 200, "{t}");
    (client, t)
}

/// The link of provider `name` on a sign-in page.
fn link_of(base: &str, name: &str) -> impl Fn(&str) -> Option<String> {
    let (base, needle) = (base.to_owned(), format!("href=\"/oauth/sso/{name}?"));
    move |page: &str| {
        let rest = page.split(&needle).nth(1)?;
        let q = rest.split('"').next()?.replace("&amp;", "&");
        Some(format!("{base}/oauth/sso/{name}?{q}"))
    }
}

async fn call_echo(gw: &Gw, token: &str) -> Value {
    call_as(gw, token, "fa__echo", json!({"message": "via sso"})).await
}

/// `tools/call` of `name` in a new legacy session of the holder of `token`: the answer.
async fn call_as(gw: &Gw, token: &str, name: &str, arguments: Value) -> Value {
    let sid = session_as(&gw.url("main"), &format!("Bearer {token}")).await;
    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": name, "arguments": arguments}});
    let r = post_in(&gw.url("main"), &sid)
        .header("authorization", format!("Bearer {token}"))
        .body(call.to_string())
        .send()
        .await
        .unwrap();
    message(&r.text().await.unwrap())
}

/// The gateway of `config` with `providers`, and two roles on `main`: `first` may use only
/// `fa/echo`, `admin` all of `fa`.
fn echo_or_all(first: &str, providers: &str) -> String {
    format!(
        "{}\n[roles.{first}]\nservers = [\"main\"]\nallow = [\"fa/echo\"]\n\n[roles.admin]\nservers = [\"main\"]\nallow = [\"fa/*\"]\n",
        config("", providers)
    )
}

#[tokio::test]
async fn members_sign_in_through_two_providers_and_their_groups_become_roles() {
    let Some(peers) =
        Peers::get("members_sign_in_through_two_providers_and_their_groups_become_roles")
    else {
        return;
    };
    // Two providers with their groups in different claims (the second nested, and read with
    // userinfo as well).
    let acme = Idp::start(
        peers,
        json!({"alice": {"email": "alice@acme.example", "name": "Alice", "groups": ["eng", "sales"]}}),
        json!({"email": ["email"], "profile": ["name"], "groups": ["groups"]}),
    );
    let corp = Idp::start(
        peers,
        json!({"bob": {"email": "bob@corp.example", "realm_access": {"roles": ["admins"]}}}),
        json!({"email": ["email"], "roles": ["realm_access"]}),
    );
    let providers = format!(
        "{}{}",
        provider(
            "acme",
            &acme.issuer,
            "label = \"Acme <SSO>\"\nscopes = [\"openid\", \"email\", \"profile\", \"groups\"]\nroles = { eng = [\"dev\"] }\ndefault_roles = [\"member\"]"
        ),
        provider(
            "corp",
            &corp.issuer,
            "scopes = [\"openid\", \"email\", \"roles\"]\ngroups_claim = \"realm_access.roles\"\nuserinfo = true\nroles = { admins = [\"admin\"] }"
        )
    );
    let gw = Gw::start(&config("", &providers));
    gw.wait_up().await;

    // The sign-in page offers both (labels escaped) and passwords.
    let mut b = Browser::new();
    let token_alice = token_through(&mut b, &gw, |page| {
        assert!(page.contains("Sign in with Acme &lt;SSO&gt;"), "{page}");
        assert!(page.contains("Sign in with corp"), "{page}");
        assert!(
            page.contains("action=\"/oauth/login\""),
            "passwords stay on: {page}"
        );
        link_of(&gw.base, "acme")(page)
    })
    .await;
    let v = call_echo(&gw, &token_alice).await;
    assert_eq!(v["result"]["content"][0]["text"], "Echo: via sso", "{v}");

    corp.sign_in_as("bob").await;
    let mut b2 = Browser::new();
    let token = token_through(&mut b2, &gw, link_of(&gw.base, "corp")).await;
    assert_eq!(init_with(&gw.url("main"), &token).await, 200);

    // Members are kept by (issuer, subject), with the roles their groups map to.
    let users = gw.admin(&["users", "list"], "", &[]);
    let line = |who: &str| {
        users
            .lines()
            .find(|l| l.starts_with(who))
            .unwrap_or_else(|| panic!("{who} in: {users}"))
            .to_owned()
    };
    assert!(
        line("alice@acme.example").contains("roles: dev,member"),
        "{users}"
    );
    assert!(
        line("alice@acme.example").contains("groups: eng,sales"),
        "the provider's groups are kept (for [groups] and Cedar's principal.groups): {users}"
    );
    assert!(line("bob@corp.example").contains("roles: admin"), "{users}");
    eventually(
        "the sign-ins logged",
        std::time::Duration::from_secs(10),
        || async {
            let log = gw.log();
            (log.matches("signed in through an identity provider")
                .count()
                >= 2)
                .then_some(())
        },
    )
    .await;

    // Signing in again is the same user, brought up to date, not a second one.
    let mut b3 = Browser::new();
    token_through(&mut b3, &gw, link_of(&gw.base, "acme")).await;
    let users = gw.admin(&["users", "list"], "", &[]);
    assert!(
        line("alice@acme.example").contains(&format!("(signs in through {})", acme.issuer)),
        "{users}"
    );
    assert_eq!(
        users.matches("alice@acme.example").count(),
        2,
        "name and e-mail, once: {users}"
    );

    // An administrator disables a member: their token is refused at once, and the provider
    // cannot sign them in again; enabled, they can.
    let said = gw.admin(&["users", "disable", "alice@acme.example"], "", &[]);
    assert!(said.contains("sign-ins revoked"), "{said}");
    assert_eq!(init_with(&gw.url("main"), &token_alice).await, 401);
    let mut b4 = Browser::new();
    let (_, reg) = register(&gw.base, &[REDIRECT]).await;
    let (_, challenge) = pkce();
    let url = authorize_url(
        &gw.base,
        reg["client_id"].as_str().unwrap(),
        REDIRECT,
        &challenge,
        &gw.url("main"),
    );
    let start = link_of(&gw.base, "acme")(&b4.get(&url).await.text().await.unwrap()).unwrap();
    let (r, _) = walk(&mut b4, &start, |_| false).await;
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("disabled"));
    gw.admin(&["users", "enable", "alice@acme.example"], "", &[]);
    let mut b5 = Browser::new();
    token_through(&mut b5, &gw, link_of(&gw.base, "acme")).await;
}

#[tokio::test]
async fn the_python_sdk_signs_in_through_a_provider_in_both_eras() {
    let Some(peers) = Peers::get("the_python_sdk_signs_in_through_a_provider_in_both_eras") else {
        return;
    };
    let acme = Idp::start(
        peers,
        json!({"dana": {"email": "dana@acme.example", "groups": ["eng"]}}),
        json!({"email": ["email"], "groups": ["groups"]}),
    );
    let gw = Gw::start(&config(
        "",
        &provider(
            "acme",
            &acme.issuer,
            "scopes = [\"openid\", \"email\", \"groups\"]\nroles = { eng = [\"dev\"] }",
        ),
    ));
    gw.wait_up().await;
    for era in ["legacy", "modern"] {
        // The SDK registers, is sent to the sign-in page, follows the provider's link, comes
        // back signed in as dana, allows, and lists and calls a tool (no password is used).
        python_client(peers, &gw, "unused", &["--era", era, "--provider", "acme"]).await;
    }
    let users = gw.admin(&["users", "list"], "", &[]);
    assert!(
        users.contains("dana@acme.example") && users.contains("roles: dev"),
        "{users}"
    );
}

#[tokio::test]
async fn the_providers_answers_are_checked() {
    let Some(peers) = Peers::get("the_providers_answers_are_checked") else {
        return;
    };
    let accounts = json!({"alice": {"email": "alice@acme.example"}});
    let scopes = json!({"email": ["email"]});
    let acme = Idp::start(peers, accounts.clone(), scopes.clone());
    let other = Idp::start(peers, accounts, scopes);
    // `wrong` names the first provider by another spelling of its address: its metadata
    // then states another issuer, which must be refused.
    let wrong_issuer = acme.issuer.replace("127.0.0.1", "localhost");
    let providers = format!(
        "{}{}{}",
        provider("acme", &acme.issuer, ""),
        provider("other", &other.issuer, ""),
        provider("wrong", &wrong_issuer, "")
    );
    let gw = Gw::start(&config("", &providers));
    gw.wait_up().await;
    let base = gw.base.clone();
    let (_, reg) = register(&base, &[REDIRECT]).await;
    let client = reg["client_id"].as_str().unwrap().to_owned();
    let (_, challenge) = pkce();
    let authz = authorize_url(&base, &client, REDIRECT, &challenge, &gw.url("main"));
    let query = authz.split_once('?').unwrap().1.to_owned();
    // A sign-in at `acme` in `b`, up to the provider's answer (not delivered): its URL.
    async fn answer_in(b: &mut Browser, base: &str, query: &str) -> String {
        let callback = format!("{base}/oauth/sso/callback");
        walk(b, &format!("{base}/oauth/sso/acme?{query}"), |u| {
            u.starts_with(&callback)
        })
        .await
        .1
    }
    // A sign-in at `acme` in `b`, sent off to the provider and not come back: its state.
    async fn started_in(b: &mut Browser, base: &str, query: &str) -> String {
        let r = b.get(&format!("{base}/oauth/sso/acme?{query}")).await;
        assert_eq!(r.status(), 303);
        location(&r).1["state"].clone()
    }

    // A whole sign-in up to the provider's answer, kept to be replayed.
    let mut b = Browser::new();
    let answer = answer_in(&mut b, &base, &query).await;
    assert!(
        answer.contains("code=") && answer.contains("iss="),
        "{answer}"
    );
    // Delivered in another browser: refused (login CSRF), and spent.
    let r = Browser::new().get(&answer).await;
    assert_eq!(r.status(), 403);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("started in another browser")
    );
    let r = b.get(&answer).await;
    assert_eq!(r.status(), 400, "spent by the refused attempt");
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("unknown or was used already")
    );

    // The genuine answer works once; the same answer again is refused.
    let mut b = Browser::new();
    let answer = answer_in(&mut b, &base, &query).await;
    let r = b.get(&answer).await;
    assert_eq!(r.status(), 303, "{}", gw.log());
    assert!(
        r.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("/oauth/authorize?")
    );
    let r = b.get(&answer).await;
    assert_eq!(r.status(), 400, "replayed");

    // An unknown state.
    let r = b
        .get(&format!(
            "{base}/oauth/sso/callback?code=x&state=forged&iss={}",
            enc(&acme.issuer)
        ))
        .await;
    assert_eq!(r.status(), 400);
    let r = b.get(&format!("{base}/oauth/sso/callback?code=x")).await;
    assert_eq!(r.status(), 400, "no state");

    // Answers to a sign-in sent to `acme` that are not acme's: in the name of `other`
    // (mix-up), without `iss` from a provider that says it sends one, with a made-up code.
    let mut b = Browser::new();
    for (code, iss, why) in [
        ("x", Some(other.issuer.as_str()), "not from"),
        ("x", None, "does not say which identity provider"),
        (
            "made-up",
            Some(acme.issuer.as_str()),
            "the code was refused",
        ),
    ] {
        let state = started_in(&mut b, &base, &query).await;
        let iss = iss.map(|i| format!("&iss={}", enc(i))).unwrap_or_default();
        let r = b
            .get(&format!(
                "{base}/oauth/sso/callback?code={code}&state={}{iss}",
                enc(&state)
            ))
            .await;
        assert_eq!(r.status(), 400, "{why}");
        let page = r.text().await.unwrap();
        assert!(page.contains(why), "{why:?} in {page}");
    }

    // ID tokens that are not right: for another nonce, audience or issuer, expired, issued to
    // another authorized party, or unsigned. A genuine one goes through afterwards.
    let past = manifold_store::now() - 3600;
    for (change, why) in [
        (json!({"claims": {"nonce": "another"}}), "nonce"),
        (json!({"claims": {"aud": "someone-else"}}), "audience"),
        (json!({"claims": {"iss": other.issuer}}), "issuer"),
        (
            json!({"claims": {"exp": past, "iat": past - 60}}),
            "expired",
        ),
        (json!({"claims": {"aud": ["manifold", "x"]}}), "audience"),
        (json!({"claims": {"azp": "x"}}), "authorized party"),
        (json!({"none": true}), "signature"),
    ] {
        acme.tamper(change.clone()).await;
        let mut b = Browser::new();
        let answer = answer_in(&mut b, &base, &query).await;
        let r = b.get(&answer).await;
        let status = r.status();
        let page = r.text().await.unwrap();
        assert_eq!(status, 400, "{change}: {page}");
        assert!(
            page.contains("ID token was refused") && page.to_lowercase().contains(why),
            "{change}: {why:?} in {page}"
        );
    }
    let mut b = Browser::new();
    let answer = answer_in(&mut b, &base, &query).await;
    assert_eq!(b.get(&answer).await.status(), 303, "untampered");

    // The provider rotates its keys: an ID token signed with the new key makes the gateway
    // read the keys again (once), and is accepted; one signed with a key never published,
    // right after, is refused without another read (at most one every 30 s).
    let reads = || async {
        http()
            .get(format!("{}/_test/jwks-reads", acme.issuer))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
            .parse::<u32>()
            .unwrap()
    };
    let before = reads().await;
    let r = http()
        .post(format!("{}/_test/rotate", acme.issuer))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    acme.tamper(json!({"key": "k2"})).await;
    let mut b = Browser::new();
    let answer = answer_in(&mut b, &base, &query).await;
    let r = b.get(&answer).await;
    assert_eq!(
        r.status(),
        303,
        "signed with the new key: {}",
        r.text().await.unwrap()
    );
    assert_eq!(reads().await, before + 1, "the keys were read again once");
    acme.tamper(json!({"key": "k3"})).await;
    let mut b = Browser::new();
    let answer = answer_in(&mut b, &base, &query).await;
    let r = b.get(&answer).await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("ID token was refused"));
    assert_eq!(reads().await, before + 1, "not read again within 30 s");

    // A provider whose metadata names another issuer is not used at all.
    let r = b.get(&format!("{base}/oauth/sso/wrong?{query}")).await;
    assert_eq!(r.status(), 502);
    eventually(
        "the issuer mismatch logged",
        std::time::Duration::from_secs(10),
        || async { gw.log().contains("unexpected issuer URI").then_some(()) },
    )
    .await;
    // `manifold check --probe` reads every provider as a sign-in would, and says which fails.
    let out = Command::new(env!("CARGO_BIN_EXE_manifold"))
        .args(["check", "--probe", "--config"])
        .arg(gw.config_path())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("identity providers:"), "{text}");
    let line = |name: &str| {
        // The probe's line comes after the list's.
        text.lines()
            .rev()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("{name} in: {text}"))
            .to_owned()
    };
    assert!(
        // (Two keys by now: it rotated above.)
        line("acme").contains("up: 2 signing key(s); names the issuer"),
        "{text}"
    );
    assert!(line("wrong").contains("unexpected issuer URI"), "{text}");
    // An unknown provider.
    assert_eq!(
        b.get(&format!("{base}/oauth/sso/nope?{query}"))
            .await
            .status(),
        404
    );

    // The provider's own ID token is not an access token of this gateway.
    let id_token = id_token_from(&acme).await;
    assert_eq!(init_with(&gw.url("main"), &id_token).await, 401);
}

/// An ID token of `idp` for the client `manifold`, obtained as a relying party would.
async fn id_token_from(idp: &Idp) -> String {
    let (verifier, challenge) = pkce();
    let redirect = "http://127.0.0.1:1/oauth/sso/callback";
    let mut b = Browser::new();
    let start = format!(
        "{}/auth?response_type=code&client_id=manifold&redirect_uri={}&scope=openid&code_challenge={challenge}&code_challenge_method=S256&state=s&nonce=n",
        idp.issuer,
        enc(redirect)
    );
    let (_, answer) = walk(&mut b, &start, |u| u.starts_with(redirect)).await;
    let code = answer
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("code="))
        .unwrap()
        .to_owned();
    let t: Value = http()
        .post(format!("{}/token", idp.issuer))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "grant_type=authorization_code&code={}&redirect_uri={}&client_id=manifold&code_verifier={verifier}",
            enc(&code),
            enc(redirect)
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    t["id_token"]
        .as_str()
        .unwrap_or_else(|| panic!("an ID token: {t}"))
        .to_owned()
}

#[tokio::test]
async fn with_passwords_off_the_only_provider_is_the_way_in() {
    let Some(peers) = Peers::get("with_passwords_off_the_only_provider_is_the_way_in") else {
        return;
    };
    let acme = Idp::start(
        peers,
        json!({"carol": {"email": "carol@acme.example"}}),
        json!({"email": ["email"]}),
    );
    let gw = Gw::start(&config(
        "password_login = false",
        &provider("acme", &acme.issuer, ""),
    ));
    gw.wait_up().await;
    // Straight to the provider: no sign-in page.
    let mut b = Browser::new();
    let token = token_through(&mut b, &gw, |page| panic!("a sign-in page: {page}")).await;
    assert_eq!(init_with(&gw.url("main"), &token).await, 200);
    // The password form is refused even when posted directly.
    let r = b
        .post_form(
            &format!("{}/oauth/login", gw.base),
            &[
                ("username".into(), "admin".into()),
                ("password".into(), "x".into()),
            ],
        )
        .await;
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("identity provider only"));

    // Signed in: the next authorization (of another application) goes by the provider for a
    // provider grant of its own, without a page there (its session stands), then asks for
    // consent. After signing out, it goes to the provider again.
    let (_, reg) = register(&gw.base, &[REDIRECT]).await;
    let (_, challenge) = pkce();
    let again = authorize_url(
        &gw.base,
        reg["client_id"].as_str().unwrap(),
        REDIRECT,
        &challenge,
        &gw.url("main"),
    );
    let first = b.get(&again).await;
    assert_eq!(first.status(), 303);
    assert_eq!(location(&first).0, "/oauth/sso/acme");
    let (page, at) = walk(&mut b, &again, |_| false).await;
    let page = page.text().await.unwrap();
    assert!(
        page.contains("action=\"/oauth/consent\""),
        "signed in: consent for a new client, at {at}: {page}"
    );
    let out = b.get(&format!("{}/oauth/logout", gw.base)).await;
    let page = out.text().await.unwrap();
    assert!(
        page.contains("Signed in as <b>carol@acme.example</b>"),
        "{page}"
    );
    let form = hidden(&page);
    let wrong = b
        .post_form(
            &format!("{}/oauth/logout", gw.base),
            &[("csrf".into(), "forged".into())],
        )
        .await;
    assert_eq!(wrong.status(), 403);
    let r = b
        .post_form(&format!("{}/oauth/logout", gw.base), &form)
        .await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("You are signed out"));
    let r = b.get(&again).await;
    assert_eq!(r.status(), 303);
    let (to, _) = location(&r);
    assert_eq!(to, "/oauth/sso/acme", "signed out: to the provider again");
    let r = b.get(&format!("{}/oauth/logout", gw.base)).await;
    assert!(r.text().await.unwrap().contains("not signed in"));
}

/// The secret of the confidential client `agent` of `trusting`'s gateways.
const SECRET: &str = "agent-secret-0123456789";

/// A gateway that accepts `idp`'s identity assertions (its provider `acme`, with `extra`),
/// presented by the client `agent`, and is up.
async fn trusting(idp: &Idp, extra: &str) -> Gw {
    let gw = Gw::start(&config(
        &format!("[auth.clients.agent]\nname = \"Agent\"\nsecret = \"{SECRET}\"\n"),
        &provider("acme", &idp.issuer, &format!("id_jag = true\n{extra}")),
    ));
    gw.wait_up().await;
    gw
}

/// An identity assertion signed by `idp` (with `key: "unpublished"`, by a key it never
/// published), of JWT type `typ`.
async fn assertion(idp: &Idp, claims: Value, typ: Option<&str>, key: Option<&str>) -> String {
    let r = http()
        .post(format!("{}/_test/id-jag", idp.issuer))
        .body(json!({"claims": claims, "typ": typ, "key": key}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

/// The token endpoint's answer to the identity-assertion grant, authenticated as `auth`
/// (`(client, secret)` by HTTP Basic).
async fn exchange(gw: &Gw, auth: Option<(&str, &str)>, assertion: &str) -> (u16, Value) {
    let mut r = http()
        .post(format!("{}/oauth/token", gw.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "grant_type={}&assertion={}",
            enc("urn:ietf:params:oauth:grant-type:jwt-bearer"),
            enc(assertion)
        ));
    if let Some((id, secret)) = auth {
        r = r.basic_auth(id, Some(secret));
    }
    let r = r.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn identity_assertions_are_exchanged_for_access_tokens_without_a_browser() {
    let Some(peers) =
        Peers::get("identity_assertions_are_exchanged_for_access_tokens_without_a_browser")
    else {
        return;
    };
    let idp = Idp::start(
        peers,
        json!({"erin": {"email": "erin@acme.example"}}),
        json!({"email": ["email"]}),
    );
    let gw = trusting(&idp, "roles = { eng = [\"dev\"] }").await;
    let now = manifold_store::now();
    let claims = |changes: Value| {
        let mut c = json!({
            "iss": idp.issuer, "sub": "erin", "aud": gw.base, "client_id": "agent",
            "resource": gw.url("main"), "jti": format!("j-{}", rand::random::<u64>()),
            "iat": now, "exp": now + 300, "email": "erin@acme.example", "groups": ["eng"],
        });
        for (k, v) in changes.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let agent = Some(("agent", SECRET));

    // The metadata says the grant is accepted, and clients may authenticate with a secret.
    let m: Value = http()
        .get(format!(
            "{}/.well-known/oauth-authorization-server",
            gw.base
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        m["grant_types_supported"]
            .to_string()
            .contains("jwt-bearer"),
        "{m}"
    );

    // A good assertion: an access token (no refresh token), that calls a tool.
    let good = assertion(&idp, claims(json!({})), None, None).await;
    let (status, t) = exchange(&gw, agent, &good).await;
    assert_eq!(status, 200, "{t}\n{}", gw.log());
    assert!(t.get("refresh_token").is_none(), "{t}");
    let token = t["access_token"].as_str().unwrap().to_owned();
    let v = call_echo(&gw, &token).await;
    assert_eq!(v["result"]["content"][0]["text"], "Echo: via sso", "{v}");
    // The member is kept, with the roles their groups give.
    let users = gw.admin(&["users", "list"], "", &[]);
    assert!(
        users.contains("erin@acme.example") && users.contains("roles: dev"),
        "{users}"
    );
    // The virtual server declares the extension, in both eras.
    let r = post(&gw.url("main"))
        .header("authorization", format!("Bearer {token}"))
        .body(INIT)
        .send()
        .await
        .unwrap();
    let init = message(&r.text().await.unwrap());
    assert!(
        init["result"]["capabilities"]["extensions"]
            .get("io.modelcontextprotocol/enterprise-managed-authorization")
            .is_some(),
        "{init}"
    );
    let r = modern(
        &gw.url("main"),
        "server/discover",
        None,
        json!({}),
        json!({}),
    )
    .header("authorization", format!("Bearer {token}"))
    .send()
    .await
    .unwrap();
    let discover = message(&r.text().await.unwrap());
    assert!(
        discover
            .to_string()
            .contains("enterprise-managed-authorization"),
        "{discover}"
    );

    // Every way an assertion or its presenter can be wrong.
    let replayed = good.clone();
    // (what, the assertion, the client's authentication, status, why).
    type Case<'a> = (&'a str, String, Option<(&'a str, &'a str)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        ("replayed", replayed, agent, 400, "used already"),
        (
            "untrusted issuer",
            assertion(
                &idp,
                claims(json!({"iss": "https://evil.example"})),
                None,
                None,
            )
            .await,
            agent,
            400,
            "not trusted",
        ),
        (
            "expired",
            assertion(
                &idp,
                claims(json!({"iat": now - 400, "exp": now - 120})),
                None,
                None,
            )
            .await,
            agent,
            400,
            "expired",
        ),
        (
            "for another audience",
            assertion(
                &idp,
                claims(json!({"aud": "https://other.example"})),
                None,
                None,
            )
            .await,
            agent,
            400,
            "aud must be",
        ),
        (
            "issued to another client",
            assertion(
                &idp,
                claims(json!({"client_id": "someone-else"})),
                None,
                None,
            )
            .await,
            agent,
            400,
            "another client",
        ),
        (
            "an ID token, not an ID-JAG",
            assertion(&idp, claims(json!({})), Some("JWT"), None).await,
            agent,
            400,
            "typ must be",
        ),
        (
            "signed by a key the provider never published",
            assertion(&idp, claims(json!({})), None, Some("unpublished")).await,
            agent,
            400,
            "does not verify",
        ),
        (
            "for a server this gateway does not have",
            assertion(
                &idp,
                claims(json!({"resource": format!("{}/mcp/nope", gw.base)})),
                None,
                None,
            )
            .await,
            agent,
            400,
            "invalid_target",
        ),
        (
            "a scope without mcp",
            assertion(&idp, claims(json!({"scope": "files.read"})), None, None).await,
            agent,
            400,
            "invalid_scope",
        ),
        (
            "a lifetime too long",
            assertion(&idp, claims(json!({"exp": now + 7200})), None, None).await,
            agent,
            400,
            "lifetime",
        ),
        (
            "no client authentication",
            assertion(&idp, claims(json!({})), None, None).await,
            None,
            401,
            "needs client authentication",
        ),
        (
            "a wrong secret",
            assertion(&idp, claims(json!({})), None, None).await,
            Some(("agent", "not-the-secret-at-all")),
            401,
            "not right",
        ),
    ];
    for (what, a, auth, status, why) in cases {
        let (got, body) = exchange(&gw, auth, &a).await;
        assert_eq!(got, status, "{what}: {body}");
        assert!(body.to_string().contains(why), "{what}: {why:?} in {body}");
    }
    // The secret may come in the form instead (client_secret_post), but not both ways.
    let fresh = assertion(&idp, claims(json!({})), None, None).await;
    let form = format!(
        "grant_type={}&assertion={}&client_id=agent&client_secret={SECRET}",
        enc("urn:ietf:params:oauth:grant-type:jwt-bearer"),
        enc(&fresh)
    );
    let post_form = |basic: bool| {
        let mut r = http()
            .post(format!("{}/oauth/token", gw.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.clone());
        if basic {
            r = r.basic_auth("agent", Some(SECRET));
        }
        r.send()
    };
    let r = post_form(true).await.unwrap();
    assert_eq!(r.status(), 401, "two ways at once");
    let r = post_form(false).await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    // The confidential client cannot use the token endpoint as a public one either.
    let r = http()
        .post(format!("{}/oauth/token", gw.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=refresh_token&refresh_token=x&client_id=agent")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("confidential"));
}

#[tokio::test]
async fn a_members_sign_ins_are_refreshed_only_while_their_provider_sign_in_is_recent() {
    let Some(peers) =
        Peers::get("a_members_sign_ins_are_refreshed_only_while_their_provider_sign_in_is_recent")
    else {
        return;
    };
    // A provider that issues no refresh tokens: the gateway cannot ask it again at a refresh.
    let acme = Idp::start_with(
        peers,
        json!({"fay": {"email": "fay@acme.example", "groups": ["admins"]}}),
        json!({"email": ["email"], "groups": ["groups"]}),
        json!({"refreshTokens": false}),
    );
    let gw = Gw::start(&config(
        "",
        &provider(
            "acme",
            &acme.issuer,
            "scopes = [\"openid\", \"email\", \"groups\"]\nroles = { admins = [\"admin\"] }\nreauthenticate_after = \"2s\"",
        ),
    ));
    gw.wait_up().await;
    let mut b = Browser::new();
    let (client, t) = tokens_through(&mut b, &gw, link_of(&gw.base, "acme")).await;
    let refresh = t["refresh_token"].as_str().unwrap().to_owned();
    // Fresh: refreshed as usual.
    let (status, t, _) = refresh_with(&gw.base, &client, &refresh).await;
    assert_eq!(status, 200, "{t}");
    let refresh = t["refresh_token"].as_str().unwrap().to_owned();
    // Meanwhile the provider takes fay out of `admins`.
    acme.set_claims("fay", json!({"email": "fay@acme.example", "groups": []}))
        .await;
    // Not synchronisation: waiting past reauthenticate_after (2 s) on purpose.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let (status, t, _) = refresh_with(&gw.base, &client, &refresh).await;
    assert_eq!(status, 400, "{t}");
    assert!(t.to_string().contains("sign in again through acme"), "{t}");
    let users = gw.admin(&["users", "list"], "", &[]);
    assert!(
        users.contains("roles: admin"),
        "until fay signs in again: {users}"
    );
    // She signs in again (the application sends her, in the same browser: the gateway's own
    // sign-in session is too old as well, so it is the provider again), and the provider's
    // change applies.
    let token = token_through(&mut b, &gw, link_of(&gw.base, "acme")).await;
    assert_eq!(init_with(&gw.url("main"), &token).await, 200);
    let users = gw.admin(&["users", "list"], "", &[]);
    let fay = users.lines().find(|l| l.starts_with("fay@")).unwrap();
    assert!(fay.contains("roles: -"), "{users}");
}

/// rmcp's enterprise-managed authorization client does the whole exchange as a client would:
/// the member's ID token for an ID-JAG at the provider (RFC 8693), the ID-JAG for an access
/// token at the gateway (its own checks of both answers included), then lists and calls a
/// tool with it, in both eras.
#[tokio::test]
async fn rmcp_exchanges_an_identity_assertion_and_calls_a_tool_in_both_eras() {
    use openidconnect::ClientSecret;
    use rmcp::transport::{
        StreamableHttpClientTransport,
        auth::{
            default_oauth_http_client,
            enterprise::{EmaAuthorizationServer, EmaClientAuthentication, EmaExchangeRequest},
        },
        streamable_http_client::StreamableHttpClientTransportConfig,
    };
    let Some(peers) =
        Peers::get("rmcp_exchanges_an_identity_assertion_and_calls_a_tool_in_both_eras")
    else {
        return;
    };
    let idp = Idp::start(
        peers,
        json!({"gus": {"email": "gus@acme.example"}}),
        json!({"email": ["email"]}),
    );
    let gw = trusting(&idp, "").await;
    manifold_upstream::install_crypto_provider();
    let http = default_oauth_http_client().unwrap();
    for era in ["legacy", "modern"] {
        let id_token = id_token_from(&idp).await;
        let resource = gw.url("main");
        let token = EmaExchangeRequest::new_with_id_token(
            EmaAuthorizationServer::new(
                idp.issuer.clone(),
                format!("{}/_test/exchange", idp.issuer),
                "manifold",
            ),
            EmaAuthorizationServer::new(
                gw.base.clone(),
                format!("{}/oauth/token", gw.base),
                "agent",
            )
            .with_client_authentication(EmaClientAuthentication::ClientSecretBasic(
                ClientSecret::new(SECRET.into()),
            )),
            &resource,
            &id_token,
        )
        // Once without asking for a scope (the gateway's answer then names none, as the
        // client requires), once asking for `mcp`.
        .with_scopes(if era == "legacy" { vec![] } else { vec!["mcp"] })
        .exchange(&http, &http)
        .await
        .unwrap_or_else(|e| panic!("{era}: the exchange: {e}\n{}", gw.log()));
        assert_eq!(token.scopes.contains("mcp"), era == "modern", "{era}");
        let transport = StreamableHttpClientTransport::with_client(
            reqwest::Client::new(),
            StreamableHttpClientTransportConfig::with_uri(resource.clone())
                .auth_header(token.access_token.secret().clone()),
        );
        rmcp_lists_and_calls_echo(transport, era, &gw).await;
    }
}

/// What a member sees and may call follows their provider's groups: the Python SDK signs in
/// as a member of `eng` (role `dev`: only `fa/echo`) and as one of `admins` (role `admin`: all of
/// `fa`), in both eras; a tool hidden from `dev` is refused when called by its exact name.
#[tokio::test]
async fn what_a_member_sees_and_calls_follows_their_providers_groups() {
    let Some(peers) = Peers::get("what_a_member_sees_and_calls_follows_their_providers_groups")
    else {
        return;
    };
    let acme = Idp::start(
        peers,
        json!({
            "alice": {"email": "alice@acme.example", "groups": ["eng"]},
            "bob": {"email": "bob@acme.example", "groups": ["admins"]},
        }),
        json!({"email": ["email"], "groups": ["groups"]}),
    );
    let cfg = echo_or_all(
        "dev",
        &provider(
            "acme",
            &acme.issuer,
            "scopes = [\"openid\", \"email\", \"groups\"]\nroles = { eng = [\"dev\"], admins = [\"admin\"] }",
        ),
    );
    let gw = Gw::start(&cfg);
    gw.wait_up().await;
    // Who signs in, in which era: the tools they are shown.
    let tools_of = |who: &'static str, era: &'static str| {
        let (acme, gw) = (&acme, &gw);
        async move {
            acme.sign_in_as(who).await;
            let out =
                python_client(peers, gw, "unused", &["--era", era, "--provider", "acme"]).await;
            out.lines()
                .find(|l| l.starts_with("tools:"))
                .unwrap_or_default()
                .to_owned()
        }
    };
    for era in ["legacy", "modern"] {
        let tools = tools_of("alice", era).await;
        assert!(
            tools.contains("'fa__echo'") && !tools.contains("fa__add"),
            "{era}: alice: {tools}"
        );
        let tools = tools_of("bob", era).await;
        assert!(
            tools.contains("'fa__echo'") && tools.contains("'fa__add'"),
            "{era}: bob: {tools}"
        );
    }
    // Alice calls the hidden tool by its exact name: refused.
    acme.sign_in_as("alice").await;
    let mut b = Browser::new();
    let token = token_through(&mut b, &gw, link_of(&gw.base, "acme")).await;
    let sid = session_as(&gw.url("main"), &format!("Bearer {token}")).await;
    let add = || async {
        let r = post_in(&gw.url("main"), &sid)
            .header("authorization", format!("Bearer {token}"))
            .body(r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"fa__add","arguments":{"a":1,"b":2}}}"#)
            .send()
            .await
            .unwrap();
        message(&r.text().await.unwrap())
    };
    let v = add().await;
    // Exactly as a tool that does not exist: nothing to enumerate.
    assert_eq!(v["error"]["code"], -32602, "{v}");
    assert_eq!(v["error"]["message"], "unknown tool: fa__add", "{v}");

    // The administrator widens `dev`: the next request of the same session sees it.
    std::fs::write(
        gw.config_path(),
        cfg.replace("allow = [\"fa/echo\"]", "allow = [\"fa/echo\", \"fa/add\"]"),
    )
    .unwrap();
    eventually(
        "the wider role applied",
        std::time::Duration::from_secs(15),
        || async {
            let v = add().await;
            if v.get("result").is_some() {
                Ok(())
            } else {
                Err(v.to_string())
            }
        },
    )
    .await;
}

/// With a provider that issues refresh tokens, each refresh of a member's sign-in asks it again:
/// a group removed there changes the member's roles at that refresh (for the access token they
/// already hold as well), a member disabled there loses the sign-in, and a provider that cannot
/// be reached does not stop the refresh. Each application's sign-in has a provider grant of its
/// own.
#[tokio::test]
async fn what_the_provider_changes_applies_at_the_next_refresh() {
    let Some(peers) = Peers::get("what_the_provider_changes_applies_at_the_next_refresh") else {
        return;
    };
    let acme = Idp::start(
        peers,
        json!({
            "fay": {"email": "fay@acme.example", "groups": ["admins"]},
            "gus": {"email": "gus@acme.example", "groups": ["admins"]},
        }),
        json!({"email": ["email"], "groups": ["groups"]}),
    );
    let cfg = echo_or_all(
        "member",
        &provider(
            "acme",
            &acme.issuer,
            "scopes = [\"openid\", \"email\", \"groups\"]\nroles = { admins = [\"admin\"] }\ndefault_roles = [\"member\"]",
        ),
    );
    let gw = Gw::start(&cfg);
    gw.wait_up().await;
    let add = |token: String| {
        let gw = &gw;
        async move { call_as(gw, &token, "fa__add", json!({"a": 1, "b": 2})).await }
    };
    let fay_roles = || {
        let users = gw.admin(&["users", "list"], "", &[]);
        let line = users
            .lines()
            .find(|l| l.starts_with("fay@"))
            .unwrap_or_default()
            .to_owned();
        assert!(!line.is_empty(), "{users}");
        line
    };

    let mut b = Browser::new();
    let (client, t) = tokens_through(&mut b, &gw, link_of(&gw.base, "acme")).await;
    let token = t["access_token"].as_str().unwrap().to_owned();
    let refresh = t["refresh_token"].as_str().unwrap().to_owned();
    assert!(
        add(token.clone()).await.get("result").is_some(),
        "an admin adds"
    );
    // A second application in the same browser: the gateway's sign-in session handed its
    // provider token to the first, so this one goes by the provider again (whose own session
    // stands: no page) and gets a provider grant of its own.
    let (_, reg) = register(&gw.base, &[REDIRECT]).await;
    let second = reg["client_id"].as_str().unwrap().to_owned();
    let (verifier, challenge) = pkce();
    let url = authorize_url(&gw.base, &second, REDIRECT, &challenge, &gw.url("main"));
    let r = b.get(&url).await;
    assert_eq!(r.status(), 303, "{:?}", r.headers());
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(loc.starts_with("/oauth/sso/acme?"), "{loc}");
    let code = sign_in_through(&mut b, &gw, &format!("{}{loc}", gw.base)).await;
    let (status, t2) = redeem(&gw.base, &second, &code, &verifier).await;
    assert_eq!(status, 200, "{t2}");
    let refresh2 = t2["refresh_token"].as_str().unwrap().to_owned();

    // The provider takes fay out of `admins`: her next refresh asks it, and her roles follow,
    // for the access token she already holds as well.
    acme.set_claims("fay", json!({"email": "fay@acme.example", "groups": []}))
        .await;
    assert!(
        fay_roles().contains("roles: admin,member"),
        "{}",
        fay_roles()
    );
    let asked = acme.refreshes().await;
    let (status, t, _) = refresh_with(&gw.base, &client, &refresh).await;
    assert_eq!(status, 200, "{t}\n{}", gw.log());
    assert_eq!(
        acme.refreshes().await,
        asked + 1,
        "the refresh asked the provider"
    );
    assert!(fay_roles().contains("roles: member"), "{}", fay_roles());
    assert!(!fay_roles().contains("admin"), "{}", fay_roles());
    let v = add(token.clone()).await;
    assert_eq!(v["error"]["message"], "unknown tool: fa__add", "{v}");
    let token = t["access_token"].as_str().unwrap().to_owned();
    let refresh = t["refresh_token"].as_str().unwrap().to_owned();
    // The second application's provider grant is its own: the first's rotation at the
    // provider did not spend it.
    let (status, t2, _) = refresh_with(&gw.base, &second, &refresh2).await;
    assert_eq!(status, 200, "{t2}");
    assert_eq!(acme.refreshes().await, asked + 2);

    // The provider disables fay: her next refresh is refused and that sign-in is revoked,
    // with its access token.
    acme.disable("fay").await;
    let (status, t, _) = refresh_with(&gw.base, &client, &refresh).await;
    assert_eq!(status, 400, "{t}");
    assert_eq!(t["error"], "invalid_grant", "{t}");
    assert!(
        t["error_description"]
            .as_str()
            .unwrap()
            .contains("sign in again through acme"),
        "{t}"
    );
    assert_eq!(init_with(&gw.url("main"), &token).await, 401);

    // A provider that cannot be reached does not stop a refresh (it goes on within
    // `reauthenticate_after` of the provider's last answer).
    acme.sign_in_as("gus").await;
    let mut b = Browser::new();
    let (client, t) = tokens_through(&mut b, &gw, link_of(&gw.base, "acme")).await;
    let refresh = t["refresh_token"].as_str().unwrap().to_owned();
    drop(acme);
    let (status, t, _) = refresh_with(&gw.base, &client, &refresh).await;
    assert_eq!(status, 200, "{t}");
    assert!(
        gw.log()
            .contains("cannot ask an identity provider about a member at a refresh"),
        "{}",
        gw.log()
    );
    // …and the provider token goes on with it: the next refresh asks again (and is refused
    // no more than this one, the provider being down still).
    let refresh = t["refresh_token"].as_str().unwrap().to_owned();
    let (status, t, _) = refresh_with(&gw.base, &client, &refresh).await;
    assert_eq!(status, 200, "{t}");
    assert_eq!(
        gw.log()
            .matches("cannot ask an identity provider about a member")
            .count(),
        2
    );
}
