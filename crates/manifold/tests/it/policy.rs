//! Conditions on arguments and context (Cedar `[policy]`) with a real client in both eras: what
//! a caller is shown and may call, a call refused for its arguments, conditions on the source
//! address, a tool hidden by a condition called by its exact name, and a condition changed while
//! the gateway runs.

use std::time::Duration;

use crate::support::*;

const POLICY: &str = r#"
[roles.anonymous]
servers = ["main"]
allow = ["fa/*"]

[policy]
cedar = """
@id("polite-echo")
forbid (principal, action == Action::"call", resource)
  when { resource.connector == "fa" && resource.name == "echo" }
  unless { context.arguments.hasTag("message") && context.arguments.getTag("message") like "hello*" };

@id("no-add-for-strangers")
forbid (principal, action, resource)
  when { resource.name == "add" && principal.anonymous };

@id("huge-from-the-office")
forbid (principal, action, resource)
  when { resource.name == "huge" }
  unless { context has source && context.source.isInRange(ip("10.0.0.0/8")) };

@id("crash-from-this-machine")
forbid (principal, action, resource)
  when { resource.name == "crash" }
  unless { context has source && context.source.isLoopback() && context.client == "" };
"""
"#;

/// Roles and `[policy]` for a gateway whose anonymous callers may use all of `fa`, but for
/// what the Cedar text `cedar` forbids.
fn anonymous_may_use_fa(cedar: &str) -> String {
    format!(
        "\n[roles.anonymous]\nservers = [\"main\"]\nallow = [\"fa/*\"]\n\n[policy]\ncedar = \"\"\"\n{cedar}\n\"\"\"\n"
    )
}

/// `tests/clients/calls.py` (the official Python SDK) in `era`: its output lines.
async fn calls(peers: &Peers, url: &str, era: &str, tool: &str, args: &[&str]) -> Vec<String> {
    let mut all = vec![url, tool];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--era", era]);
    python_client(peers, "calls.py", &all).await
}

#[tokio::test]
async fn conditions_on_arguments_decide_each_call_in_both_eras() {
    let Some(peers) = Peers::get("conditions_on_arguments_decide_each_call_in_both_eras") else {
        return;
    };
    let cfg = format!("{}{POLICY}", one_faulty(""));
    let gw = Gw::start(&cfg);
    gw.wait_up().await;
    let url = gw.url("main");
    for era in ["legacy", "modern"] {
        let out = calls(
            peers,
            &url,
            era,
            "fa__echo",
            &[
                r#"{"message": "hello there"}"#,
                r#"{"message": "rm -rf /"}"#,
                "{}",
            ],
        )
        .await;
        let tools = &out[0];
        assert!(tools.contains("fa__echo"), "{era}: {out:?}");
        assert!(
            !tools.contains("fa__add"),
            "{era}: hidden by a condition: {out:?}"
        );
        // Conditions on the source address: the client calls from 127.0.0.1.
        let shown: Vec<&str> = tools.trim_start_matches("tools: ").split(',').collect();
        assert!(
            shown.contains(&"fa__crash") && !shown.contains(&"fa__huge"),
            "{era}: shown from loopback, hidden outside the office: {out:?}"
        );
        assert_eq!(out[1], "ok Echo: hello there", "{era}: {out:?}");
        assert!(
            out[2].starts_with("error -32602")
                && out[2].contains("was refused by policy for its arguments"),
            "{era}: refused for its arguments, saying so (the tool is listed): {out:?}"
        );
        assert!(
            out[3].starts_with("error -32602"),
            "{era}: no message: {out:?}"
        );
        // The hidden tool called by its exact name: as a tool that does not exist.
        let out = calls(peers, &url, era, "fa__add", &[r#"{"a": 1, "b": 2}"#]).await;
        assert!(
            out[1].starts_with("error -32602") && out[1].contains("unknown tool: fa__add"),
            "{era}: {out:?}"
        );
        let out = calls(peers, &url, era, "fa__huge", &[r#"{"bytes": 10}"#]).await;
        assert!(
            out[1].contains("unknown tool: fa__huge"),
            "{era}: not from the office: {out:?}"
        );
    }
    // The administrator drops the echo condition: the next call is allowed.
    let relaxed = cfg.replace("like \"hello*\"", "like \"*\"");
    std::fs::write(gw.config_path(), &relaxed).unwrap();
    eventually(
        "the relaxed condition applied",
        Duration::from_secs(15),
        || async {
            let out = calls(
                peers,
                &url,
                "legacy",
                "fa__echo",
                &[r#"{"message": "rm -rf /"}"#],
            )
            .await;
            if out[1] == "ok Echo: rm -rf /" {
                Ok(())
            } else {
                Err(format!("{out:?}"))
            }
        },
    )
    .await;
    // A condition that does not compile is refused at reload, and the running one stays.
    std::fs::write(
        gw.config_path(),
        relaxed.replace("principal.anonymous", "principal.anonymus"),
    )
    .unwrap();
    eventually(
        "the bad condition rejected",
        Duration::from_secs(15),
        || async {
            if gw.log().contains("error(s) in the Cedar policies") {
                Ok(())
            } else {
                Err(gw.log())
            }
        },
    )
    .await;
    assert!(gw.log().contains("anonymus"), "{}", gw.log());
    let out = calls(peers, &url, "modern", "fa__add", &[r#"{"a": 1, "b": 2}"#]).await;
    assert!(
        out[1].contains("unknown tool: fa__add"),
        "still hidden: {out:?}"
    );
}

/// A `.cedar` file beside the config is watched like the config: a change to it alone applies
/// at the next request.
#[tokio::test]
async fn a_changed_cedar_file_applies_at_the_next_request() {
    let cfg = one_faulty("");
    let gw = Gw::start(&cfg);
    gw.wait_up().await;
    let url = gw.url("main");
    let file = gw.config_path().with_file_name("p.cedar");
    let forbid = |name: &str| {
        format!("forbid (principal, action, resource) when {{ resource.name == \"{name}\" }};\n")
    };
    std::fs::write(&file, forbid("add")).unwrap();
    std::fs::write(
        gw.config_path(),
        format!("{cfg}\n[policy]\ncedar_files = [\"p.cedar\"]\n"),
    )
    .unwrap();
    let call = |tool: &'static str| {
        let url = url.clone();
        async move {
            let sid = session(&url).await;
            let args = if tool == "fa__add" {
                r#"{"a":1,"b":2}"#
            } else {
                r#"{"message":"m"}"#
            };
            let r = post_in(&url, &sid)
                .body(format!(r#"{{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{{"name":"{tool}","arguments":{args}}}}}"#))
                .send()
                .await
                .unwrap();
            message(&r.text().await.unwrap())
        }
    };
    eventually(
        "the file's condition applied",
        Duration::from_secs(15),
        || async {
            let v = call("fa__add").await;
            if v["error"]["message"] == "unknown tool: fa__add" {
                Ok(())
            } else {
                Err(v.to_string())
            }
        },
    )
    .await;
    assert!(call("fa__echo").await.get("result").is_some());
    // Only the file changes: echo is forbidden now, and add allowed again.
    std::fs::write(&file, forbid("echo")).unwrap();
    eventually(
        "the changed file applied",
        Duration::from_secs(15),
        || async {
            let v = call("fa__echo").await;
            if v["error"]["message"] == "unknown tool: fa__echo" {
                Ok(())
            } else {
                Err(v.to_string())
            }
        },
    )
    .await;
    assert!(call("fa__add").await.get("result").is_some());
}

const ASK: &str = r#"
[roles.anonymous]
servers = ["main"]
allow = ["fa/*"]
ask = ["fa/add"]
"#;

/// `tests/clients/confirm.py` (the official Python SDK) calling `fa__add` in `era`, answering
/// the confirmation with `answer`: its output lines.
async fn confirm(peers: &Peers, url: &str, era: &str, answer: &str) -> Vec<String> {
    let args = [
        url,
        "fa__add",
        r#"{"a": 2, "b": 40}"#,
        "--era",
        era,
        "--answer",
        answer,
    ];
    python_client(peers, "confirm.py", &args).await
}

/// How many audit events of `fa__add` calls record the confirmation `how`.
fn audited(gw: &Gw, how: &str) -> usize {
    gw.log()
        .lines()
        .filter(|l| {
            l.contains("manifold::audit")
                && l.contains("fa__add")
                && l.contains(&format!("confirmation=\"{how}\""))
        })
        .count()
}

/// An `ask` rule: the member confirms each call of the tool, shown its connector and
/// arguments, before it goes upstream; a decline, a cancel, an unticked box, no answer in time
/// and a client that cannot be asked are refused, and each is recorded; in both eras, with the
/// official Python SDK.
#[tokio::test]
async fn an_ask_rule_waits_for_the_member_to_confirm_the_call_in_both_eras() {
    let Some(peers) =
        Peers::get("an_ask_rule_waits_for_the_member_to_confirm_the_call_in_both_eras")
    else {
        return;
    };
    let cfg = format!("{}{ASK}", one_faulty("input_wait = \"2s\""));
    let gw = Gw::start_with_env(
        &cfg,
        &[("MANIFOLD_LOG", "info,rmcp=warn,manifold::audit=debug")],
    );
    gw.wait_up().await;
    let url = gw.url("main");
    let mut expected = std::collections::HashMap::<&str, usize>::new();
    for era in ["legacy", "modern"] {
        let out = confirm(peers, &url, era, "accept").await;
        assert_eq!(
            out.len(),
            2,
            "{era}: one question, then the result: {out:?}"
        );
        let asked = &out[0];
        assert!(
            asked.starts_with("asked ")
                && asked.contains("Tool: fa__add")
                && asked.contains("Connector: fa")
                && asked.contains("\"a\": 2")
                && asked.contains("\"b\": 40"),
            "{era}: the question shows the tool, its connector and the arguments: {out:?}"
        );
        assert_eq!(out[1], "ok 42", "{era}: confirmed, the call ran: {out:?}");
        *expected.entry("confirmed").or_default() += 1;
        for (answer, why) in [
            ("decline", "you declined it"),
            ("untick", "you declined it"),
            ("cancel", "you cancelled"),
            ("late:3", "no confirmation arrived in time"),
        ] {
            let out = confirm(peers, &url, era, answer).await;
            assert!(out[0].starts_with("asked "), "{era} {answer}: {out:?}");
            let last = out.last().unwrap();
            assert!(
                last.starts_with("error -32600")
                    && last.contains("was not run")
                    && last.contains(why),
                "{era} {answer}: refused, saying why: {out:?}"
            );
            let how = match answer {
                "decline" | "untick" => "declined",
                "cancel" => "cancelled",
                _ => "timed_out",
            };
            *expected.entry(how).or_default() += 1;
        }
        let out = confirm(peers, &url, era, "none").await;
        assert_eq!(out.len(), 1, "{era}: nobody is asked: {out:?}");
        assert!(
            out[0].starts_with("error -32600") && out[0].contains("does not support elicitation"),
            "{era}: a client without elicitation is refused with a clear message: {out:?}"
        );
        *expected.entry("unsupported").or_default() += 1;
    }
    // Each outcome is in the audit trail; the upstream ran only the confirmed calls.
    eventually(
        "every confirmation audited",
        Duration::from_secs(10),
        || async {
            let seen: Vec<(&str, usize, usize)> = expected
                .iter()
                .map(|(how, n)| (*how, *n, audited(&gw, how)))
                .collect();
            if seen.iter().all(|(_, want, got)| got == want) {
                Ok(())
            } else {
                Err(format!("{seen:?}\n{}", gw.log()))
            }
        },
    )
    .await;
    // A tool the rule does not name is not asked about.
    let out = calls(peers, &url, "modern", "fa__echo", &[r#"{"message": "m"}"#]).await;
    assert_eq!(out[1], "ok Echo: m", "{out:?}");
}

/// A role narrowed in the config while a member's session is open: the session is told its
/// tool list changed (rmcp's client sees `tools/list_changed`), lists without the tool, and a
/// call of it is refused at once, as an unknown tool.
#[tokio::test]
async fn a_policy_changed_mid_session_is_announced_and_applies_at_the_next_request() {
    let roles = "[roles.anonymous]\nservers = [\"main\"]\nallow = [\"fa/*\"]\n";
    let cfg = format!("{}{roles}", one_faulty(""));
    let gw = Gw::start(&cfg);
    gw.wait_up().await;
    let client = TestClient::new("member");
    let c = connect(&gw.url("main"), client.clone()).await;
    let tools = tool_names(&c).await;
    assert!(tools.contains(&"fa__echo".to_owned()), "{tools:?}");
    std::fs::write(gw.config_path(), format!("{cfg}deny = [\"fa/echo\"]\n")).unwrap();
    client
        .wait_event("tools/list_changed", |e| e == "tools_changed")
        .await;
    let tools = tool_names(&c).await;
    assert!(
        !tools.contains(&"fa__echo".to_owned()) && tools.contains(&"fa__add".to_owned()),
        "{tools:?}"
    );
    let e = c
        .peer()
        .call_tool(call("fa__echo", serde_json::json!({"message": "m"})))
        .await
        .expect_err("refused");
    assert!(e.to_string().contains("unknown tool: fa__echo"), "{e}");
    assert!(
        !client.events().iter().any(|e| e == "prompts_changed"),
        "only the list that changed is announced: {:?}",
        client.events()
    );
}

/// A notification is decided with the address the member's session calls from: a resource a
/// condition allows only from this machine still sends its updates to a session on loopback
/// (and would not if the address were unknown), and stops when the condition changes.
#[tokio::test]
async fn a_subscriptions_updates_are_decided_with_the_sessions_own_address() {
    let policy = anonymous_may_use_fa(
        r#"@id("static-from-this-machine")
forbid (principal, action, resource)
  when { resource.name == "fixture://static" }
  unless { context has source && context.source.isLoopback() };"#,
    );
    let cfg = format!("{}{policy}", one_faulty(""));
    let gw = Gw::start(&cfg);
    gw.wait_up().await;
    let url = gw.url("main");
    let sid = session(&url).await;
    let sub = rpc(
        &url,
        &sid,
        serde_json::json!({"jsonrpc": "2.0", "id": 2, "method": "resources/subscribe",
            "params": {"uri": "fa+fixture://static"}}),
    )
    .await;
    assert!(
        sub.get("result").is_some(),
        "subscribed from loopback: {sub}"
    );
    let mut stream = http()
        .get(&url)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &sid)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let touch = || {
        rpc(
            &url,
            &sid,
            serde_json::json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                "params": {"name": "fa__touch_resource", "arguments": {"uri": "fixture://static"}}}),
        )
    };
    async fn read(r: &mut reqwest::Response) -> String {
        let mut out = String::new();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
        while let Ok(Ok(Some(c))) = tokio::time::timeout_at(deadline, r.chunk()).await {
            out.push_str(&String::from_utf8_lossy(&c));
            if out.contains("notifications/resources/updated") {
                break;
            }
        }
        out
    }
    let t = touch().await;
    assert!(t.to_string().contains("touched fixture://static"), "{t}");
    let got = read(&mut stream).await;
    assert!(
        got.contains("notifications/resources/updated"),
        "delivered to the loopback session: {got}"
    );
    // Only from 10.0.0.0/8 now: the next update is not delivered.
    std::fs::write(
        gw.config_path(),
        cfg.replace(
            "context.source.isLoopback()",
            "context.source.isInRange(ip(\"10.0.0.0/8\"))",
        ),
    )
    .unwrap();
    eventually(
        "the condition reloaded",
        Duration::from_secs(15),
        || async {
            gw.log()
                .contains("role rules and conditions replaced")
                .then_some(())
        },
    )
    .await;
    touch().await;
    let got = read(&mut stream).await;
    assert!(
        !got.contains("notifications/resources/updated"),
        "no longer: {got}"
    );
}

/// Behind a trusted reverse proxy, `context.source` is the client the proxy saw
/// (`X-Forwarded-For`), not the proxy; without `trusted_proxies` the header is ignored, as
/// anyone can send it.
#[tokio::test]
async fn behind_a_trusted_proxy_the_source_is_the_client_it_forwards() {
    let policy = anonymous_may_use_fa(
        r#"@id("echo-from-the-office")
forbid (principal, action, resource)
  when { resource.name == "echo" }
  unless { context has source && context.source.isInRange(ip("10.0.0.0/8")) };"#,
    );
    let echo = serde_json::json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "fa__echo", "arguments": {"message": "hi"}}});
    let call = |url: String, sid: String, from: Option<&'static str>| {
        let echo = echo.clone();
        async move {
            let mut r = post_in(&url, &sid).body(echo.to_string());
            if let Some(f) = from {
                r = r.header("x-forwarded-for", f);
            }
            message(&r.send().await.unwrap().text().await.unwrap())
        }
    };
    for (trusted, office_allowed) in [("trusted_proxies = [\"127.0.0.1\"]", true), ("", false)] {
        let cfg = format!("{}{policy}", one_faulty(trusted));
        let gw = Gw::start(&cfg);
        gw.wait_up().await;
        let url = gw.url("main");
        let sid = session(&url).await;
        let from_office = call(url.clone(), sid.clone(), Some("10.1.2.3")).await;
        let forged = call(url.clone(), sid.clone(), Some("10.1.2.3, 192.0.2.9")).await;
        let direct = call(url.clone(), sid.clone(), None).await;
        assert_eq!(
            from_office["result"]["content"][0]["text"] == "Echo: hi",
            office_allowed,
            "{trusted:?}: {from_office}"
        );
        for (what, v) in [("a forged hop", &forged), ("no header", &direct)] {
            assert!(
                v["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("unknown tool")),
                "{trusted:?}, {what}: {v}"
            );
        }
    }
}
