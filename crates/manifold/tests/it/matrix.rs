//! The policy matrix: members × roles × virtual servers × methods, in both eras, with the
//! official Python SDK (`tests/clients/matrix.py`) over API keys. For every cell the gateway's
//! answer is what the administrator's `GET /admin/policy/explain` says of it: who may connect,
//! every item of all four lists (compared with an administrator's unfiltered view), and calls,
//! prompt gets, reads (a resource and a template's), completions and subscriptions, allowed
//! ones answered and refused ones answered as if the item did not exist.

use std::collections::BTreeSet;

use futures::future::join_all;
use serde_json::{Value, json};

use crate::support::*;

const ROLES: &str = r#"
[roles.admin]
servers = ["*"]
allow = ["*/*"]

[roles.dev]
servers = ["team"]
allow = ["fa/*", "ev/*"]
deny = ["fa/add", "*/fixture://item/*"]

[roles.viewer]
servers = ["team", "ops"]
allow = ["*/greet", "*/fixture://static", "*/echo"]

[roles.ops]
servers = ["ops"]
allow = ["fb/*"]
deny = ["fb/greet"]

[policy]
cedar = """
@id("viewers-say-hi")
forbid (principal, action == Action::"call", resource)
  when { resource.name == "echo" && principal.roles.contains("viewer") && !principal.roles.contains("ops") }
  unless { context.arguments.hasTag("message") && context.arguments.getTag("message") like "hi*" };
"""
"#;

/// What an exposed name or URI is: (explain's parameter, CONNECTOR/NAME).
fn upstream(kind: &str, exposed: &str) -> (&'static str, String) {
    let (param, sep) = match kind {
        "tools" => ("tool", "__"),
        "prompts" => ("prompt", "__"),
        _ => ("resource", "+"),
    };
    let (c, n) = exposed
        .split_once(sep)
        .unwrap_or_else(|| panic!("{exposed} is not prefixed"));
    (param, format!("{c}/{n}"))
}

struct Explainer<'a> {
    gw: &'a Gw,
    key: String,
}

impl Explainer<'_> {
    /// Whether `user` may do this on `server`: `item` (parameter, CONNECTOR/NAME) or connect.
    async fn allowed(
        &self,
        user: &str,
        server: &str,
        item: Option<(&str, &str)>,
        args: Option<&Value>,
    ) -> bool {
        let mut q = vec![("server", server.to_owned()), ("user", user.to_owned())];
        if let Some((param, what)) = item {
            q.push((param, what.to_owned()));
        }
        if let Some(a) = args {
            q.push(("args", a.to_string()));
        }
        let url =
            reqwest::Url::parse_with_params(&format!("{}/admin/policy/explain", self.gw.base), &q)
                .unwrap();
        let r = http()
            .get(url)
            .header("authorization", format!("Bearer {}", self.key))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{q:?}");
        let v: Value = r.json().await.unwrap();
        v["allowed"].as_bool().unwrap()
    }
}

async fn run(peers: &Peers, url: &str, key: &str, era: &str, probes: &Value) -> Value {
    let probes = probes.to_string();
    let out = python_client(peers, "matrix.py", &[url, key, &probes, "--era", era]).await;
    serde_json::from_str(out.last().expect("one line")).unwrap()
}

fn names(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("a list: {v}"))
        .iter()
        .map(|n| n.as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn members_see_and_use_exactly_what_their_roles_allow_in_every_method_and_era() {
    let Some(peers) =
        Peers::get("members_see_and_use_exactly_what_their_roles_allow_in_every_method_and_era")
    else {
        return;
    };
    let cfg = format!(
        "[auth]\nrequired = true\n{}{}\n[connectors.ev]\nkind = \"stdio\"\ncommand = \"node\"\nargs = [\"{}\", \"stdio\"]\n\n[servers.team]\nconnectors = [\"fa\", \"ev\"]\n\n[servers.ops]\nconnectors = [\"fa\", \"fb\"]\n{ROLES}",
        faulty("fa", ""),
        faulty("fb", ""),
        peers.npm_bin("mcp-server-everything"),
    );
    let gw = Gw::start(&cfg);
    gw.wait_up().await;
    let members = [
        ("root", "admin"),
        ("dana", "dev"),
        ("vic", "viewer"),
        ("olga", "ops"),
        ("nora", ""),
    ];
    let mut keys = std::collections::HashMap::new();
    for (user, role) in members {
        let mut add = vec!["users", "add", user];
        if !role.is_empty() {
            add.extend(["--role", role]);
        }
        if user == "olga" {
            add.extend(["--role", "viewer"]);
        }
        gw.admin(&add, "", &[]);
        let out = gw.admin(
            &["keys", "create", "--user", user, "--server", "*"],
            "",
            &[],
        );
        let key = out
            .split_whitespace()
            .find(|w| w.starts_with("mfk_"))
            .unwrap_or_else(|| panic!("no key in {out}"))
            .to_owned();
        keys.insert(user, key);
    }
    let explain = Explainer {
        gw: &gw,
        key: keys["root"].clone(),
    };
    let probes = json!({
        "tools": {
            "fa__echo": {"message": "hello"},
            "fa__add": {"a": 1, "b": 2},
            "fb__echo": {"message": "hi there"},
            "ev__echo": {"message": "hi"},
            "fa__no_such_tool": {}
        },
        "prompts": {"fa__greet": {"name": "alice"}, "fb__greet": {"name": "bob"}},
        "reads": ["fa+fixture://static", "fb+fixture://static", "fa+fixture://item/7"],
        "completions": ["fa__greet", "fb__greet"],
        "subscribe": ["fa+fixture://static", "fb+fixture://static"]
    });
    let mut cells = 0;
    for era in ["legacy", "modern"] {
        for server in ["team", "ops"] {
            let url = gw.url(server);
            // The administrator's view: everything the server has.
            let all = eventually(
                "the administrator to see every connector",
                std::time::Duration::from_secs(30),
                || async {
                    let v = run(peers, &url, &keys["root"], era, &json!({})).await;
                    let tools = names(&v["tools"]);
                    let want = if server == "team" { "ev__" } else { "fb__" };
                    if tools.iter().any(|t| t.starts_with(want)) {
                        Ok(v)
                    } else {
                        Err(format!("{v}"))
                    }
                },
            )
            .await;
            let answers = join_all(
                members[1..]
                    .iter()
                    .map(|(user, _)| run(peers, &url, &keys[user], era, &probes)),
            )
            .await;
            for ((user, _), got) in members[1..].iter().zip(answers) {
                let at = format!("{user} on {server} ({era})");
                let connects = explain.allowed(user, server, None, None).await;
                assert_eq!(got["connect"] == "ok", connects, "{at}: {got}");
                cells += 1;
                if !connects {
                    assert!(
                        got["connect"].as_str().unwrap().starts_with("error"),
                        "{at}: {got}"
                    );
                    continue;
                }
                for kind in ["tools", "prompts", "resources", "templates"] {
                    let mut want = BTreeSet::new();
                    for exposed in names(&all[kind]) {
                        let (param, item) = upstream(kind, &exposed);
                        if explain
                            .allowed(user, server, Some((param, &item)), None)
                            .await
                        {
                            want.insert(exposed);
                        }
                        cells += 1;
                    }
                    assert_eq!(names(&got[kind]), want, "{at}: {kind}");
                }
                let checks = [
                    ("calls", "tools", "tools"),
                    ("gets", "prompts", "prompts"),
                    ("completions", "completions", "prompts"),
                ];
                for (field, probe, kind) in checks {
                    for (exposed, outcome) in got[field].as_object().unwrap() {
                        let (param, item) = upstream(kind, exposed);
                        let args = (field != "completions").then(|| &probes[probe][exposed]);
                        let exists = names(&all[kind]).contains(exposed);
                        let allowed = exists
                            && explain
                                .allowed(user, server, Some((param, &item)), args)
                                .await;
                        let outcome = outcome.as_str().unwrap();
                        assert_eq!(
                            outcome == "ok",
                            allowed,
                            "{at}: {field} {exposed}: {outcome}"
                        );
                        cells += 1;
                    }
                }
                let resources = [("reads", "reads"), ("subscriptions", "subscribe")];
                for (field, _) in resources {
                    let Some(done) = got[field].as_object() else {
                        assert_eq!(field, "subscriptions", "{at}: {got}");
                        assert_eq!(era, "modern");
                        continue;
                    };
                    for (uri, outcome) in done {
                        let (param, item) = upstream("resources", uri);
                        // A resource of the server, or of one of its templates.
                        let exists = names(&all["resources"]).contains(uri)
                            || names(&all["templates"]).iter().any(|t| {
                                t.split_once('{')
                                    .is_some_and(|(head, _)| uri.starts_with(head))
                            });
                        let allowed = exists
                            && explain
                                .allowed(user, server, Some((param, &item)), None)
                                .await;
                        let outcome = outcome.as_str().unwrap();
                        assert_eq!(outcome == "ok", allowed, "{at}: {field} {uri}: {outcome}");
                        cells += 1;
                    }
                }
                // A refused tool is answered like one that does not exist (no enumeration),
                // unless it is listed and refused for its arguments, which it may be told.
                let unknown = got["calls"]["fa__no_such_tool"].as_str().unwrap();
                let add = got["calls"]["fa__add"].as_str().unwrap();
                if add != "ok" {
                    assert_eq!(
                        add.replace("fa__add", "X"),
                        unknown.replace("fa__no_such_tool", "X"),
                        "{at}"
                    );
                }
            }
        }
    }
    // Not vacuous: the cells a reader can check by eye.
    let spot = |user: &str, server: &str| {
        let key = keys[user].clone();
        let url = gw.url(server);
        let probes = probes.clone();
        async move { run(peers, &url, &key, "legacy", &probes).await }
    };
    let dana = spot("dana", "team").await;
    assert!(names(&dana["tools"]).contains("fa__echo"), "{dana}");
    assert!(!names(&dana["tools"]).contains("fa__add"), "{dana}");
    assert!(names(&dana["tools"]).iter().any(|t| t.starts_with("ev__")));
    assert_eq!(dana["calls"]["fa__echo"], "ok", "{dana}");
    assert_eq!(dana["reads"]["fa+fixture://static"], "ok", "{dana}");
    assert_ne!(dana["reads"]["fa+fixture://item/7"], "ok", "{dana}");
    let vic = spot("vic", "team").await;
    assert_eq!(names(&vic["prompts"]), BTreeSet::from(["fa__greet".into()]));
    assert!(
        vic["calls"]["fa__echo"]
            .as_str()
            .unwrap()
            .contains("refused by policy for its arguments"),
        "{vic}"
    );
    let olga = spot("olga", "ops").await;
    assert!(names(&olga["tools"]).contains("fb__echo"), "{olga}");
    assert!(!names(&olga["prompts"]).contains("fb__greet"), "{olga}");
    assert_eq!(olga["calls"]["fa__echo"], "ok", "{olga}");
    let nora = spot("nora", "team").await;
    assert!(
        nora["connect"].as_str().unwrap().starts_with("error"),
        "{nora}"
    );
    assert!(spot("dana", "ops").await["connect"] != "ok");
    assert!(cells > 200, "{cells} cells");
}
