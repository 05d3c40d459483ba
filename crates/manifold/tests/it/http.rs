//! The HTTP surface with a raw client: Host/Origin checks, protocol-version validation, size
//! caps, sessions (ids, DELETE, unknown ids), unknown virtual servers, pagination and health.

use serde_json::{Value, json};

use crate::support::*;

#[tokio::test]
async fn host_origin_and_version_checks() {
    let gw = Gw::start(&one_faulty(""));
    gw.wait_up().await;
    let url = gw.url("main");
    let r = post(&url)
        .header("host", "evil.example")
        .body(INIT)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "DNS rebinding: foreign Host");
    let r = post(&url)
        .header("origin", "https://evil.example")
        .body(INIT)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "foreign Origin");
    let port = gw.base.rsplit(':').next().unwrap();
    let r = post(&url)
        .header("origin", format!("http://localhost:{port}"))
        .body(INIT)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "a page on this machine may connect");
    let sid = session(&url).await;
    let r = post(&url)
        .header("mcp-session-id", &sid)
        .header("mcp-protocol-version", "1999-01-01")
        .body(r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "unsupported MCP-Protocol-Version");
}

#[tokio::test]
async fn sessions_ids_delete_and_unknown_ids() {
    let gw = Gw::start(&one_faulty(""));
    gw.wait_up().await;
    let url = gw.url("main");
    let a = session(&url).await;
    let b = session(&url).await;
    assert_ne!(a, b);
    assert!(
        a.len() >= 32 && a.chars().all(|c| c.is_ascii_graphic()),
        "session ids are long, visible ASCII: {a}"
    );
    let v = rpc(
        &url,
        &a,
        json!({"jsonrpc": "2.0", "id": 7, "method": "tools/list"}),
    )
    .await;
    assert_eq!(v["id"], 7);
    assert!(
        v["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "fa__echo")
    );
    let r = post_in(&url, "not-a-session")
        .body(r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        404,
        "unknown session ids get 404 (re-initialize)"
    );
    let r = http()
        .delete(&url)
        .header("mcp-session-id", &a)
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .await
        .unwrap();
    assert!(
        matches!(r.status().as_u16(), 200 | 204),
        "DELETE ends the session with 200 or 204 (clients log anything else): {}",
        r.status()
    );
    let r = http()
        .delete(&url)
        .header("mcp-session-id", &a)
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "a DELETE of an unknown session");
    let r = post_in(&url, &a)
        .body(r#"{"jsonrpc":"2.0","id":3,"method":"tools/list"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "a deleted session is gone");
    // The other session is untouched.
    let v = rpc(
        &url,
        &b,
        json!({"jsonrpc": "2.0", "id": 8, "method": "ping"}),
    )
    .await;
    assert_eq!(v["id"], 8);
    // The GET stream opens as SSE.
    let r = http()
        .get(&url)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &b)
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
}

#[tokio::test]
async fn bad_input_is_refused_and_loses_nothing() {
    let gw = Gw::start(&one_faulty("max_body_bytes = 4096"));
    gw.wait_up().await;
    let url = gw.url("main");
    let sid = session(&url).await;
    let big = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "fa__echo", "arguments": {"message": "x".repeat(10_000)}}});
    let r = post_in(&url, &sid)
        .body(big.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413, "body over max_body_bytes");
    let deep = format!("{}{}", "[".repeat(3000), "]".repeat(3000));
    let r = post_in(&url, &sid).body(deep).send().await.unwrap();
    assert!(
        r.status().is_client_error(),
        "deeply nested JSON: {}",
        r.status()
    );
    let r = post_in(&url, &sid).body("{not json").send().await.unwrap();
    assert!(r.status().is_client_error(), "garbage: {}", r.status());
    // The session still works.
    let v = rpc(&url, &sid, json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "fa__echo", "arguments": {"message": "fine"}}})).await;
    assert_eq!(v["result"]["content"][0]["text"], "Echo: fine");
    // Unknown virtual servers get a 404 that lists the real ones.
    let r = post(&format!("{}/mcp/nope", gw.base))
        .body(INIT)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["available"], json!(["/mcp/main"]));
}

#[tokio::test]
async fn merged_lists_are_paginated() {
    let gw = Gw::start(&format!(
        "[gateway]\npage_size = 5\n{}{}\n[servers.main]\nconnectors = [\"fa\", \"fb\"]\n",
        faulty("fa", ""),
        faulty("fb", "")
    ));
    gw.wait_up().await;
    let url = gw.url("main");
    let sid = session(&url).await;
    let mut names = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let params = match &cursor {
            Some(c) => json!({"cursor": c}),
            None => json!({}),
        };
        let v = rpc(
            &url,
            &sid,
            json!({"jsonrpc": "2.0", "id": pages, "method": "tools/list", "params": params}),
        )
        .await;
        let tools = v["result"]["tools"].as_array().unwrap();
        assert!(tools.len() <= 5);
        names.extend(tools.iter().map(|t| t["name"].as_str().unwrap().to_owned()));
        pages += 1;
        match v["result"]["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(names, sorted, "pages are in order without repeats");
    assert!(
        names.len() >= 30 && pages >= 6,
        "{} tools in {pages} pages",
        names.len()
    );
    let v = rpc(&url, &sid, json!({"jsonrpc": "2.0", "id": 99, "method": "tools/list", "params": {"cursor": "garbage"}})).await;
    assert_eq!(v["error"]["code"], -32602, "invalid cursor: {v}");
}

#[tokio::test]
async fn health_endpoints_report_connectors_and_servers() {
    let gw = Gw::start(&one_faulty(""));
    let v = gw.wait_up().await;
    assert_eq!(v["status"], "ok");
    assert_eq!(v["connectors"]["fa"]["state"], "up");
    assert!(v["connectors"]["fa"]["tools"].as_u64().unwrap() >= 10);
    assert_eq!(v["servers"]["main"]["path"], "/mcp/main");
    let s: Value = http()
        .get(format!("{}/healthz", gw.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(s, json!({"status": "ok", "connectors": {"fa": "up"}}));
}

#[tokio::test]
async fn idle_sessions_expire() {
    let gw = Gw::start(&one_faulty("session_idle_timeout = \"1s\""));
    gw.wait_up().await;
    let url = gw.url("main");
    let sid = session(&url).await;
    // Not synchronisation: the session must stay idle past its timeout, which is the point.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let r = post_in(&url, &sid)
        .body(r#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        404,
        "an idle session is closed after session_idle_timeout"
    );
}

/// A virtual server offers the union of its connectors' capabilities, in `initialize` and
/// `server/discover` alike: a tools-only upstream makes a tools-only server; a connector not
/// reached yet (lazy, never started) may offer anything, so everything is offered.
#[tokio::test]
async fn capabilities_are_the_union_of_the_connectors() {
    let lazy = format!(
        "\n[connectors.lz]\nkind = \"stdio\"\ncommand = \"python3\"\nargs = [\"{}\"]\nstart = \"lazy\"\n",
        fixture("faulty_upstream.py")
    );
    let gw = Gw::start(&format!(
        "{}{}{lazy}\n[servers.tools]\nconnectors = [\"ta\"]\n[servers.both]\nconnectors = [\"ta\", \"fb\"]\n[servers.unknown]\nconnectors = [\"ta\", \"lz\"]\n",
        faulty("ta", "env = { FAULTY_TOOLS_ONLY = \"1\" }"),
        faulty("fb", ""),
    ));
    gw.wait_health("ta and fb up", |v| {
        v["connectors"]["ta"]["state"] == "up" && v["connectors"]["fb"]["state"] == "up"
    })
    .await;
    let initialize = |server: &str| {
        let url = gw.url(server);
        async move {
            let r = post(&url).body(INIT.to_owned()).send().await.unwrap();
            message(&r.text().await.unwrap())["result"]["capabilities"].clone()
        }
    };
    let discover = |server: &str| {
        let url = gw.url(server);
        async move {
            let r = modern(&url, "server/discover", None, json!({}), json!({}))
                .send()
                .await
                .unwrap();
            message(&r.text().await.unwrap())["result"]["capabilities"].clone()
        }
    };
    let keys = |v: &Value| -> Vec<String> {
        let mut k: Vec<String> = v
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        k.sort();
        k
    };
    let all = ["completions", "logging", "prompts", "resources", "tools"];
    // The catalog follows the connectors' first answers; give it a moment after "up".
    eventually(
        "server tools to offer only tools",
        std::time::Duration::from_secs(10),
        || async {
            let caps = initialize("tools").await;
            if keys(&caps) == ["tools"] {
                Ok(())
            } else {
                Err(format!("capabilities: {caps}"))
            }
        },
    )
    .await;
    let caps = discover("tools").await;
    assert_eq!(keys(&caps), ["tools"], "{caps}");
    assert_eq!(caps["tools"]["listChanged"], true, "{caps}");
    for server in ["both", "unknown"] {
        let caps = initialize(server).await;
        assert_eq!(keys(&caps), all, "{server}: {caps}");
        assert_eq!(caps["resources"]["subscribe"], true, "{server}: {caps}");
        assert_eq!(keys(&discover(server).await), all, "{server}");
    }
}
