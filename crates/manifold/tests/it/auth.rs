//! Who is calling: local users and API keys in the store (SQLite by default, PostgreSQL shared
//! by two gateways), accepted as bearer tokens; every way a key can be wrong is refused.

use std::time::Duration;

use crate::support::*;

/// Two virtual servers over one faulty connector, with audit lines in the log.
fn two_servers(store: &str) -> String {
    format!(
        "{store}\n{}\n[servers.main]\nconnectors = [\"fa\"]\n\n[servers.other]\nconnectors = [\"fa\"]\n",
        faulty("fa", "")
    )
}

const AUDIT_LOG: (&str, &str) = ("MANIFOLD_LOG", "info,rmcp=warn,manifold::audit=debug");

/// The key printed by `keys create`.
fn key_of(out: &str) -> String {
    out.split_whitespace()
        .find(|w| w.starts_with("mfk_"))
        .unwrap_or_else(|| panic!("no key in: {out}"))
        .to_owned()
}

fn id_of(out: &str) -> String {
    out.split_whitespace()
        .skip_while(|w| *w != "key")
        .nth(1)
        .unwrap_or_else(|| panic!("no id in: {out}"))
        .to_owned()
}

/// `initialize` at `url` with `auth` as the Authorization header (if any): status and body.
async fn init(url: &str, auth: Option<&str>) -> (u16, String, Option<String>) {
    let mut r = post(url).body(INIT);
    if let Some(a) = auth {
        r = r.header("authorization", a);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    let challenge = r
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, r.text().await.unwrap(), challenge)
}

async fn refused(url: &str, auth: Option<&str>, why: &str) {
    let (status, body, challenge) = init(url, auth).await;
    assert_eq!(status, 401, "{why}: {body}");
    assert!(body.contains(why), "the refusal says {why:?}: {body}");
    let c = challenge.unwrap_or_else(|| panic!("a WWW-Authenticate challenge: {body}"));
    assert!(c.starts_with("Bearer error=\"invalid_token\""), "{c}");
}

#[tokio::test]
async fn api_keys_identify_their_user_until_revoked_disabled_or_expired() {
    let gw = Gw::start_with_env(&two_servers(""), &[AUDIT_LOG]);
    gw.wait_up().await;
    let main = gw.url("main");
    let out = gw.admin(
        &["users", "add", "alice", "--password-stdin", "--role", "dev"],
        "a long enough password\n",
        &[],
    );
    assert!(out.contains("added user alice"), "{out}");
    assert!(!out.contains("a long enough password"), "{out}");
    let out = gw.admin(
        &["keys", "create", "--user", "alice", "--server", "main"],
        "",
        &[],
    );
    let key = key_of(&out);
    let bearer = format!("Bearer {key}");

    // The key is alice: her calls are audited as a local user, an anonymous one as anonymous.
    let (status, body, _) = init(&main, Some(&bearer)).await;
    assert_eq!(status, 200, "{body}");
    let (status, _, _) = init(&main, None).await;
    assert_eq!(
        status, 200,
        "no token: anonymous, until sign-in is required"
    );
    eventually("audited as alice", Duration::from_secs(10), || async {
        let log = gw.log();
        (log.contains("@manifold:local") && log.contains("principal=anonymous")).then_some(())
    })
    .await;

    // Every way a token can be wrong.
    refused(
        &gw.url("other"),
        Some(&bearer),
        "not valid for the virtual server \"other\"",
    )
    .await;
    refused(&main, Some("Bearer mfk_not-a-key"), "not known").await;
    refused(
        &main,
        Some("Bearer eyJhbGciOiJub25lIn0.e30."),
        "not an access token of this gateway",
    )
    .await;
    refused(
        &main,
        Some(&format!("Basic {key}")),
        "must be `Bearer <token>`",
    )
    .await;
    refused(
        &format!("{main}?access_token={key}"),
        None,
        "a token in the URL is refused",
    )
    .await;
    let (_, body, _) = init(&main, Some("Bearer mfk_not-a-key")).await;
    assert!(!body.contains(&key), "{body}");

    // Disabled, enabled again, then revoked, by the CLI (another process): each takes effect at
    // the next request, though the key was remembered as verified — the CLI returns once every
    // running gateway has noticed.
    let said = gw.admin(&["users", "disable", "alice"], "", &[]);
    assert!(
        said.contains("every running gateway refuses their keys and tokens from now on"),
        "{said}"
    );
    refused(&main, Some(&bearer), "user is disabled").await;
    gw.admin(&["users", "enable", "alice"], "", &[]);
    assert_eq!(init(&main, Some(&bearer)).await.0, 200);
    let listed = gw.admin(&["keys", "list"], "", &[]);
    assert!(
        listed.contains("alice") && listed.contains("live"),
        "{listed}"
    );
    assert!(
        !listed.contains(&key),
        "keys are never shown again: {listed}"
    );
    gw.admin(&["keys", "revoke", &id_of(&out)], "", &[]);
    refused(&main, Some(&bearer), "revoked").await;

    // An expired key.
    let out = gw.admin(
        &[
            "keys",
            "create",
            "--user",
            "alice",
            "--server",
            "*",
            "--expires",
            "1s",
        ],
        "",
        &[],
    );
    let short = format!("Bearer {}", key_of(&out));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    refused(&gw.url("other"), Some(&short), "expired").await;
}

#[tokio::test]
async fn a_session_belongs_to_the_key_that_opened_it() {
    let gw = Gw::start(&two_servers(""));
    gw.wait_up().await;
    let main = gw.url("main");
    let mut bearers = Vec::new();
    for name in ["alice", "bob"] {
        gw.admin(&["users", "add", name], "", &[]);
        let out = gw.admin(
            &["keys", "create", "--user", name, "--server", "main"],
            "",
            &[],
        );
        bearers.push(format!("Bearer {}", key_of(&out)));
    }
    let sid = session_as(&main, &bearers[0]).await;
    let list = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;
    let as_ = |who: &str| {
        post_in(&main, &sid)
            .header("authorization", who.to_owned())
            .body(list)
            .send()
    };
    assert_eq!(as_(&bearers[0]).await.unwrap().status(), 200);
    assert_eq!(
        as_(&bearers[1]).await.unwrap().status(),
        404,
        "bob may not use alice's session"
    );
    let anonymous = post_in(&main, &sid).body(list).send().await.unwrap();
    assert_eq!(anonymous.status(), 404, "nor may an anonymous caller");
}

#[tokio::test]
async fn users_and_keys_commands_refuse_bad_input_clearly() {
    let gw = Gw::start(&two_servers(""));
    let run = |args: &[&str], stdin: &str| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_manifold"));
        c.arg(args[0])
            .arg("--config")
            .arg(gw.config_path())
            .args(&args[1..])
            .env("XDG_DATA_HOME", gw.dir.path("data"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let o = child.wait_with_output().unwrap();
        (
            o.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        )
    };
    let out = gw.admin(&["users", "add", "alice"], "", &[]);
    assert!(out.contains("password (shown once): "), "{out}");
    for (args, stdin, want) in [
        (&["users", "add", "alice"][..], "", "exists already"),
        (
            &["users", "add", "bob", "--password-stdin"],
            "short\n",
            "too short",
        ),
        (&["users", "disable", "carol"], "", "no user \"carol\""),
        (
            &["keys", "create", "--user", "alice", "--server", "nope"],
            "",
            "no virtual server \"nope\"",
        ),
        (
            &[
                "keys",
                "create",
                "--user",
                "alice",
                "--server",
                "main",
                "--expires",
                "soon",
            ],
            "",
            "is not a duration",
        ),
        (
            &["keys", "create", "--user", "nobody", "--server", "main"],
            "",
            "no local user \"nobody\"",
        ),
        (&["keys", "revoke", "0000"], "", "no API key \"0000\""),
    ] {
        let (code, text) = run(args, stdin);
        assert_eq!(code, Some(1), "{args:?}: {text}");
        assert!(text.contains(want), "{args:?} says {want:?}: {text}");
    }
    let listed = gw.admin(&["users", "list"], "", &[]);
    assert!(
        listed.contains("alice") && !listed.contains("bob"),
        "{listed}"
    );
}

#[tokio::test]
async fn two_gateways_on_one_postgres_share_users_and_keys() {
    let url = match manifold_store::testing::fresh_postgres().await {
        Ok(u) => u,
        Err(why) if manifold_store::testing::postgres_required() => {
            panic!("PostgreSQL is required here: {why}")
        }
        Err(why) => {
            return eprintln!("SKIPPED two_gateways_on_one_postgres_share_users_and_keys: {why}");
        }
    };
    let cfg = two_servers("[store]\nurl = \"${MANIFOLD_PG}\"\n");
    let env = [("MANIFOLD_PG", url.as_str())];
    let a = Gw::start_with_env(&cfg, &env);
    let b = Gw::start_with_env(&cfg, &env);
    a.wait_up().await;
    b.wait_up().await;
    a.admin(&["users", "add", "alice"], "", &env);
    let out = b.admin(
        &["keys", "create", "--user", "alice", "--server", "main"],
        "",
        &env,
    );
    let bearer = format!("Bearer {}", key_of(&out));
    for gw in [&a, &b] {
        let (status, body, _) = init(&gw.url("main"), Some(&bearer)).await;
        assert_eq!(status, 200, "{body}");
    }
    // Both gateways remembered the key; the CLI waits until both have noticed.
    let said = a.admin(&["keys", "revoke", &id_of(&out)], "", &env);
    assert!(
        said.contains("every running gateway refuses it from now on"),
        "{said}"
    );
    for gw in [&a, &b] {
        refused(&gw.url("main"), Some(&bearer), "revoked").await;
    }
    // A gateway that has just stopped is waited for a few seconds, then named: the CLI does
    // not claim what it cannot know.
    let stopped = format!("pid {} (", b.child.id());
    drop(b);
    let out = a.admin(
        &["keys", "create", "--user", "alice", "--server", "main"],
        "",
        &env,
    );
    let said = a.admin(&["keys", "revoke", &id_of(&out)], "", &env);
    assert!(
        said.contains("by every running gateway but") && said.contains(&stopped),
        "{said}"
    );
    assert!(
        !said.contains(&format!("pid {} (", a.child.id())),
        "the running one noticed: {said}"
    );
    // The store's URL (with its password, if any) is never logged.
    assert!(!a.log().contains("search_path"), "{}", a.log());
}

#[tokio::test]
async fn a_clients_token_cookies_and_session_never_reach_an_upstream() {
    let up = FaultyHttp::start("up");
    let cfg = format!(
        "[connectors.up]\nkind = \"http\"\nurl = \"{}\"\n\n[servers.main]\nconnectors = [\"up\"]\n",
        up.url
    );
    let gw = Gw::start(&cfg);
    gw.wait_up().await;
    gw.admin(&["users", "add", "alice"], "", &[]);
    let out = gw.admin(
        &["keys", "create", "--user", "alice", "--server", "main"],
        "",
        &[],
    );
    let key = key_of(&out);
    let main = gw.url("main");
    let with = |r: reqwest::RequestBuilder| {
        r.header("authorization", format!("Bearer {key}"))
            .header("cookie", "session=client-cookie-value")
            .header("x-api-key", "client-header-value")
    };
    let r = with(post(&main)).body(INIT).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let sid = r.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    let call = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"up__echo","arguments":{"message":"hi"}}}"#;
    let r = with(post_in(&main, &sid)).body(call).send().await.unwrap();
    let body = r.text().await.unwrap();
    assert!(body.contains("hi"), "{body}");
    // A 2026-07-28 request too.
    let r = with(modern(
        &main,
        "tools/call",
        Some("up__echo"),
        serde_json::json!({"name": "up__echo", "arguments": {"message": "hi"}}),
        serde_json::json!({}),
    ))
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let seen = up.log();
    assert!(seen.contains("http request headers"), "{seen}");
    for secret in [
        key.as_str(),
        "client-cookie-value",
        "client-header-value",
        sid.as_str(),
    ] {
        assert!(
            !seen.contains(secret),
            "{secret} reached the upstream: {seen}"
        );
    }
}

/// `GET /admin/policy/explain`: an administrator's key (a key for every server of a user
/// holding an `auth.admin_roles` role) gets the decision and the rules that made it, under the
/// roles the gateway runs now (a reload included); anyone else is refused, and a bad question
/// gets a JSON error saying what is wrong.
#[tokio::test]
async fn an_administrator_asks_the_gateway_to_explain_a_decision() {
    let roles = "\n[roles.dev]\nservers = [\"main\"]\nallow = [\"fa/*\"]\ndeny = [\"fa/add\"]\n\n[roles.ops]\nservers = [\"*\"]\nallow = []\n";
    let cfg = format!(
        "[auth]\nrequired = true\nadmin_roles = [\"ops\"]\n{}{roles}",
        two_servers("")
    );
    let gw = Gw::start(&cfg);
    gw.wait_up().await;
    gw.admin(&["users", "add", "dana", "--role", "dev"], "", &[]);
    gw.admin(&["users", "add", "olga", "--role", "ops"], "", &[]);
    let key = |user: &str, server: &str| {
        key_of(&gw.admin(
            &["keys", "create", "--user", user, "--server", server],
            "",
            &[],
        ))
    };
    let (olga, olga_main, dana) = (key("olga", "*"), key("olga", "main"), key("dana", "*"));
    let ask = |key: Option<String>, query: &'static str| {
        let url = format!("{}/admin/policy/explain?{query}", gw.base);
        async move {
            let mut r = http().get(url);
            if let Some(k) = key {
                r = r.header("authorization", format!("Bearer {k}"));
            }
            let r = r.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<serde_json::Value>().await.unwrap())
        }
    };
    let q = "server=main&user=dana&tool=fa/add";
    let (status, v) = ask(Some(olga.clone()), q).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["allowed"], false, "{v}");
    assert_eq!(v["what"], "call the tool fa/add of \"main\"", "{v}");
    assert!(
        v["who"]
            .as_str()
            .unwrap()
            .starts_with("dana (a local user; roles: dev)"),
        "{v}"
    );
    let because = v["because"].to_string();
    assert!(because.contains("role \\\"dev\\\" denies it"), "{v}");

    // Refused: no key, a key for one server only, a key of a member who is no administrator.
    for (k, status, says) in [
        (None, 401, "send an administrator's API key"),
        (Some(olga_main), 403, "needs a key for every server"),
        (
            Some(dana),
            403,
            "holds none of the administrator roles (auth.admin_roles: ops)",
        ),
        (Some("mfk_not-a-key".to_owned()), 401, "not known"),
    ] {
        let (got, v) = ask(k, q).await;
        assert_eq!(got, status, "{v}");
        assert!(v["error"].as_str().unwrap().contains(says), "{v}");
    }
    // Bad questions.
    for (query, says) in [
        ("user=dana&tool=fa/add", "server"),
        ("server=main&user=nobody", "no user \"nobody\""),
        (
            "server=main&user=dana&tool=fa/add&prompt=fa/p",
            "name one tool, prompt or resource",
        ),
        ("server=main&user=dana&anonymous=true", "not both"),
        ("server=main&user=dana&tool=add", "CONNECTOR/NAME"),
        ("server=main&anonymous=maybe", "anonymous"),
    ] {
        let (status, v) = ask(Some(olga.clone()), query).await;
        assert_eq!(status, 400, "{query}: {v}");
        assert!(v["error"].as_str().unwrap().contains(says), "{query}: {v}");
    }
    // The roles the gateway runs now: a reload that lifts the deny is explained so at once.
    std::fs::write(
        gw.config_path(),
        cfg.replace("deny = [\"fa/add\"]", "deny = []"),
    )
    .unwrap();
    eventually(
        "the reloaded roles explained",
        Duration::from_secs(15),
        || async {
            let (_, v) = ask(Some(olga.clone()), q).await;
            if v["allowed"] == true {
                Ok(())
            } else {
                Err(v.to_string())
            }
        },
    )
    .await;
}

/// Groups give their members roles: a member's group changed by `users set`, and a group's
/// roles changed in the config, apply at the member's next request — in the session they have
/// open, which stays theirs.
#[tokio::test]
async fn groups_give_roles_and_changes_apply_in_the_open_session() {
    let roles = "\n[roles.dev]\nservers = [\"main\"]\nallow = [\"fa/echo\"]\n\n[roles.ops]\nservers = [\"main\"]\nallow = [\"fa/*\"]\n\n[groups.eng]\nroles = [\"ops\"]\n";
    let cfg = format!("[auth]\nrequired = true\n{}{roles}", two_servers(""));
    let gw = Gw::start(&cfg);
    gw.wait_up().await;
    gw.admin(&["users", "add", "gina", "--role", "dev"], "", &[]);
    let out = gw.admin(
        &["keys", "create", "--user", "gina", "--server", "main"],
        "",
        &[],
    );
    let bearer = format!("Bearer {}", key_of(&out));
    let main = gw.url("main");
    let sid = session_as(&main, &bearer).await;
    let tools = || async {
        let r = post_in(&main, &sid)
            .header("authorization", bearer.clone())
            .body(r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "the session is still gina's");
        let v = message(&r.text().await.unwrap());
        let names: Vec<String> = v["result"]["tools"]
            .as_array()
            .unwrap_or_else(|| panic!("{v}"))
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_owned())
            .collect();
        names
    };
    let first = tools().await;
    assert!(
        first.contains(&"fa__echo".to_owned()) && !first.contains(&"fa__add".to_owned()),
        "{first:?}"
    );
    // Into eng, which gives ops: the command returns once every gateway has noticed.
    let said = gw.admin(&["users", "set", "gina", "--group", "eng"], "", &[]);
    assert!(said.contains("groups: eng"), "{said}");
    let now = tools().await;
    assert!(now.contains(&"fa__add".to_owned()), "{now:?}");
    // The config takes ops away from eng: the next request after the reload.
    std::fs::write(
        gw.config_path(),
        cfg.replace(
            "[groups.eng]\nroles = [\"ops\"]",
            "[groups.eng]\nroles = []",
        ),
    )
    .unwrap();
    eventually(
        "the group's roles reloaded",
        Duration::from_secs(15),
        || async {
            let names = tools().await;
            (!names.contains(&"fa__add".to_owned())).then_some(())
        },
    )
    .await;
    assert!(tools().await.contains(&"fa__echo".to_owned()));
}
