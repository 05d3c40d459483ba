//! Modern (2026-07-28, stateless) clients against legacy upstreams: MRTR bridging of
//! server→client requests into `input_required` rounds, and the ways a `requestState` or a
//! request can be wrong (tampered, replayed, expired, for another request, header mismatch,
//! missing capability, unsupported version).

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;

async fn call_modern(url: &str, tool: &str, params: Value, caps: Value) -> (u16, Value) {
    let r = modern(url, "tools/call", Some(tool), params, caps)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, message(&r.text().await.unwrap()))
}

fn elicit_caps() -> Value {
    json!({"elicitation": {"form": {}}, "sampling": {}})
}

#[tokio::test]
async fn elicitation_and_sampling_become_input_required_rounds() {
    let gw = Gw::start(&one_faulty(""));
    gw.wait_up().await;
    let url = gw.url("main");

    // Round 1: the legacy upstream's elicitation/create comes back as an input request.
    let args = json!({"name": "fa__elicit", "arguments": {"message": "who are you?"}});
    let (status, v) = call_modern(&url, "fa__elicit", args.clone(), elicit_caps()).await;
    assert_eq!(status, 200);
    let r = &v["result"];
    assert_eq!(r["resultType"], "input_required", "{v}");
    let (key, req) = r["inputRequests"]
        .as_object()
        .unwrap()
        .iter()
        .next()
        .unwrap();
    assert_eq!(req["method"], "elicitation/create", "{v}");
    assert_eq!(req["params"]["message"], "who are you?", "{v}");
    let state = r["requestState"].as_str().unwrap().to_owned();

    // Round 2: the answer resumes the same upstream call, which completes.
    let mut retry = args.clone();
    retry["requestState"] = json!(state);
    retry["inputResponses"] = json!({key: {"action": "accept", "content": {"name": "Ada"}}});
    let (_, v) = call_modern(&url, "fa__elicit", retry.clone(), elicit_caps()).await;
    assert_eq!(v["result"]["resultType"], "complete", "{v}");
    assert_eq!(
        v["result"]["content"][0]["text"], "elicited: accept {\"name\":\"Ada\"}",
        "{v}"
    );

    // The same state again: the round was used up.
    let (_, v) = call_modern(&url, "fa__elicit", retry, elicit_caps()).await;
    assert_eq!(v["error"]["code"], -32602, "replayed: {v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already used"),
        "{v}"
    );

    // Sampling works the same way.
    let args = json!({"name": "fa__sample", "arguments": {"prompt": "hi"}});
    let (_, v) = call_modern(&url, "fa__sample", args.clone(), elicit_caps()).await;
    let (key, req) = v["result"]["inputRequests"]
        .as_object()
        .unwrap()
        .iter()
        .next()
        .unwrap();
    assert_eq!(req["method"], "sampling/createMessage", "{v}");
    let mut retry = args;
    retry["requestState"] = v["result"]["requestState"].clone();
    retry["inputResponses"] = json!({key: {"role": "assistant", "model": "m", "content": {"type": "text", "text": "hello back"}}});
    let (_, v) = call_modern(&url, "fa__sample", retry, elicit_caps()).await;
    assert_eq!(
        v["result"]["content"][0]["text"], "sampled: hello back",
        "{v}"
    );
}

#[tokio::test]
async fn bad_request_states_are_refused() {
    let gw = Gw::start(&one_faulty("input_wait = \"1s\""));
    gw.wait_up().await;
    let url = gw.url("main");
    let args = json!({"name": "fa__elicit", "arguments": {"message": "m"}});
    let first = |args: Value| {
        let url = url.clone();
        async move {
            let (_, v) = call_modern(&url, "fa__elicit", args, elicit_caps()).await;
            v["result"]["requestState"]
                .as_str()
                .unwrap_or_else(|| panic!("input_required: {v}"))
                .to_owned()
        }
    };
    let answer = json!({"r1": {"action": "accept", "content": {"name": "x"}}});
    let retry = |state: &str, args: &Value| {
        let mut a = args.clone();
        a["requestState"] = json!(state);
        a["inputResponses"] = answer.clone();
        a
    };

    // Tampered: one character of the state changed.
    let state = first(args.clone()).await;
    let mut bytes = state.clone().into_bytes();
    let i = bytes.len() - 5;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(bytes).unwrap();
    let (_, v) = call_modern(&url, "fa__elicit", retry(&tampered, &args), elicit_caps()).await;
    assert_eq!(v["error"]["code"], -32602, "tampered: {v}");
    // Forged from scratch.
    let (_, v) = call_modern(
        &url,
        "fa__elicit",
        retry("rs1.bm9wZQ.bm9wZQ", &args),
        elicit_caps(),
    )
    .await;
    assert_eq!(v["error"]["code"], -32602, "forged: {v}");
    // Another request's state (different arguments).
    let other = json!({"name": "fa__elicit", "arguments": {"message": "something else"}});
    let (_, v) = call_modern(&url, "fa__elicit", retry(&state, &other), elicit_caps()).await;
    assert_eq!(v["error"]["code"], -32602, "other request: {v}");
    // (Another principal's retry is refused too: the seam tests in crates/server prove it.)
    // The genuine state still works after those attempts.
    let (_, v) = call_modern(&url, "fa__elicit", retry(&state, &args), elicit_caps()).await;
    assert_eq!(v["result"]["resultType"], "complete", "{v}");

    // Expired: past gateway.input_wait the state (and the parked call) are gone.
    let state = first(args.clone()).await;
    // Not synchronisation: waiting past input_wait (1 s) on purpose, for the state to expire.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let (_, v) = call_modern(&url, "fa__elicit", retry(&state, &args), elicit_caps()).await;
    assert_eq!(v["error"]["code"], -32602, "expired: {v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("expired"),
        "{v}"
    );
}

#[tokio::test]
async fn headers_versions_and_capabilities_are_checked() {
    let gw = Gw::start(&one_faulty(""));
    gw.wait_up().await;
    let url = gw.url("main");
    // Mcp-Name must match the (namespaced) tool name in the body.
    let r = modern(
        &url,
        "tools/call",
        Some("fa__add"),
        json!({"name": "fa__echo", "arguments": {"message": "x"}}),
        json!({}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 400, "header/body mismatch");
    let v = message(&r.text().await.unwrap());
    assert_eq!(v["error"]["code"], -32020, "{v}");
    // An unsupported protocol version is refused with the supported ones.
    let r = http()
        .post(&url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2099-01-01")
        .header("mcp-method", "tools/list")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2099-01-01"}}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "unsupported version");
    let v = message(&r.text().await.unwrap());
    assert_eq!(v["error"]["code"], -32022, "{v}");
    assert!(
        v["error"]["data"]["supported"]
            .as_array()
            .is_some_and(|s| s.contains(&json!(MODERN_VERSION))),
        "the answer names the supported versions: {v}"
    );
    // The upstream asks for elicitation but the client did not declare it: -32021, HTTP 400,
    // naming the capability, and the upstream call is abandoned.
    let (status, v) = call_modern(
        &url,
        "fa__elicit",
        json!({"name": "fa__elicit", "arguments": {"message": "m"}}),
        json!({}),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], -32021, "{v}");
    assert!(
        v["error"]["data"].to_string().contains("elicitation"),
        "{v}"
    );
    // A plain call works, with resultType.
    let (_, v) = call_modern(
        &url,
        "fa__echo",
        json!({"name": "fa__echo", "arguments": {"message": "plain"}}),
        json!({}),
    )
    .await;
    assert_eq!(v["result"]["resultType"], "complete", "{v}");
    assert_eq!(v["result"]["content"][0]["text"], "Echo: plain", "{v}");
    // Stateless calls take the gateway's own data path too: unknown fields survive both ways.
    let (_, v) = call_modern(
        &url,
        "fa__echo",
        json!({"name": "fa__echo", "arguments": {"message": "x"}, "x-client": 1}),
        json!({}),
    )
    .await;
    assert_eq!(v["result"]["x-extra"], "kept", "{v}");
    assert_eq!(
        v["result"]["_meta"]["seen_extra"],
        json!({"x-client": 1}),
        "{v}"
    );
    assert_eq!(v["result"]["resultType"], "complete", "{v}");
}

/// A legacy server that never answers `server/discover` costs one probe (rmcp's 10 s) on the
/// connector's first start with `era = "auto"`; restarts reuse the answer. `era = "legacy"`
/// never probes.
#[tokio::test]
async fn a_silent_legacy_server_is_probed_once() {
    let silent = "env = { FAULTY_SILENT_UNKNOWN = \"1\" }";
    let probes = |gw: &Gw| {
        gw.log()
            .matches("ignored unknown request server/discover")
            .count()
    };

    let gw = Gw::start(&format!(
        "{}\n[servers.main]\nconnectors = [\"fa\"]\n",
        faulty("fa", silent)
    ));
    gw.wait_up().await;
    let c = connect(&gw.url("main"), TestClient::new("a")).await;
    c.peer()
        .call_tool(call("fa__crash", json!({})))
        .await
        .expect_err("the process died");
    gw.wait_health("fa restarted", |h| h["connectors"]["fa"]["restarts"] == 1)
        .await;
    gw.wait_up().await;
    let r = c
        .peer()
        .call_tool(call("fa__echo", json!({"message": "back"})))
        .await
        .unwrap();
    assert_eq!(text(&r), "Echo: back");
    assert_eq!(
        probes(&gw),
        1,
        "probed once, not on the restart:\n{}",
        gw.log()
    );

    let gw = Gw::start(&format!(
        "{}era = \"legacy\"\n[servers.main]\nconnectors = [\"fa\"]\n",
        faulty("fa", silent)
    ));
    gw.wait_up().await;
    assert_eq!(
        probes(&gw),
        0,
        "era = \"legacy\" never probes:\n{}",
        gw.log()
    );
}

/// A modern request's own `logLevel` becomes the legacy upstream's `logging/setLevel`, and the
/// log messages of the call reach the client on the call's response stream.
#[tokio::test]
async fn a_request_log_level_reaches_a_legacy_upstream() {
    let gw = Gw::start(&one_faulty(""));
    gw.wait_up().await;
    let url = gw.url("main");
    let logged = |level: &'static str| {
        let url = url.clone();
        async move {
            let mut params = json!({"name": "fa__log", "arguments": {"level": "warning", "message": "from upstream"}});
            params["_meta"] = json!({
                "io.modelcontextprotocol/protocolVersion": MODERN_VERSION,
                "io.modelcontextprotocol/clientCapabilities": {},
                "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"},
                "io.modelcontextprotocol/logLevel": level,
            });
            let r = http()
                .post(&url)
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .header("mcp-protocol-version", MODERN_VERSION)
                .header("mcp-method", "tools/call")
                .header("mcp-name", "fa__log")
                .body(
                    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params})
                        .to_string(),
                )
                .send()
                .await
                .unwrap();
            r.text().await.unwrap()
        }
    };
    let body = logged("info").await;
    assert!(
        body.contains("notifications/message") && body.contains("from upstream"),
        "{body}"
    );
    assert!(body.contains("logged"), "{body}");
    let body = logged("error").await;
    assert!(
        !body.contains("from upstream"),
        "a warning is below error: {body}"
    );
    assert!(body.contains("logged"), "{body}");
}

/// When the era probe itself fails (here the server answers `server/discover` with the wrong
/// id, as a slow-starting server's late answer looks), the next attempt uses `initialize`
/// directly, and the era found then is kept.
#[tokio::test]
async fn a_failed_era_probe_falls_back_to_initialize() {
    let gw = Gw::start(&format!(
        "{}\n[servers.main]\nconnectors = [\"fa\"]\n",
        faulty("fa", "env = { FAULTY_WRONG_ID_UNKNOWN = \"1\" }")
    ));
    gw.wait_up().await;
    let c = connect(&gw.url("main"), TestClient::new("a")).await;
    let r = c
        .peer()
        .call_tool(call("fa__echo", json!({"message": "up"})))
        .await
        .unwrap();
    assert_eq!(text(&r), "Echo: up");
    let probes = gw
        .log()
        .matches("misanswered unknown request server/discover")
        .count();
    assert_eq!(
        probes,
        1,
        "one failed probe, then initialize:\n{}",
        gw.log()
    );
    // (Field names in the log may carry terminal styling, so the line is matched in parts.)
    let log = gw.log();
    let era = log
        .lines()
        .find(|l| l.contains("upstream protocol era"))
        .unwrap_or_else(|| panic!("the era found is logged:\n{log}"));
    assert!(era.contains("\"legacy\""), "{era}");
}

/// Closing a modern request's response (the client goes away) cancels the call upstream, on
/// the gateway's own data path and through rmcp's (a progress token sends it there).
#[tokio::test]
async fn closing_the_response_cancels_the_upstream_call() {
    let gw = Gw::start(&format!(
        "{}\n[servers.main]\nconnectors = [\"fa\"]\n",
        faulty("fa", "env = { FAULTY_DEBUG = \"1\" }")
    ));
    gw.wait_up().await;
    let url = gw.url("main");
    for (i, with_progress) in [false, true].into_iter().enumerate() {
        let mut params = json!({"name": "fa__slow", "arguments": {"ms": 20_000, "steps": 200}});
        params["_meta"] = json!({
            "io.modelcontextprotocol/protocolVersion": MODERN_VERSION,
            "io.modelcontextprotocol/clientCapabilities": {},
            "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"},
        });
        if with_progress {
            params["_meta"]["progressToken"] = json!("p");
        }
        let send = http()
            .post(&url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", MODERN_VERSION)
            .header("mcp-method", "tools/call")
            .header("mcp-name", "fa__slow")
            .body(
                json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params})
                    .to_string(),
            )
            .send();
        // The client gives up after a moment, dropping the connection.
        let _ = tokio::time::timeout(Duration::from_millis(600), async {
            let r = send.await.unwrap();
            let _ = r.text().await;
        })
        .await;
        let want = i + 1;
        eventually(
            &format!("the upstream call to be cancelled (progress: {with_progress})"),
            Duration::from_secs(10),
            || async {
                let log = gw.log();
                if log.matches("slow: cancelled at step").count() >= want {
                    Ok(())
                } else {
                    Err(format!("log:\n{log}"))
                }
            },
        )
        .await;
    }
}

/// The 2026-07-28 caching hints: `server/discover` and every merged list are fresh for
/// `gateway.cache_ttl` and public, on the gateway's own path and on rmcp's (a browser's
/// request with an `Origin` goes there); `resources/read` keeps the upstream's hints, is
/// private and stale at once when the upstream gives none, and always private from a
/// per-client connector. Lists on the own path keep the upstream's unknown fields.
#[tokio::test]
async fn discover_lists_and_reads_carry_caching_hints() {
    let gw = Gw::start(&format!(
        "[gateway]\ncache_ttl = \"90s\"\n{}{}{}\n[servers.main]\nconnectors = [\"fa\", \"fb\", \"fc\"]\n",
        faulty("fa", "env = { FAULTY_READ_HINTS = \"1\" }"),
        faulty(
            "fb",
            "env = { FAULTY_READ_HINTS = \"1\" }\nsessions = \"per_client\""
        ),
        faulty("fc", ""),
    ));
    gw.wait_up().await;
    let url = gw.url("main");
    let send = |r: reqwest::RequestBuilder| async move {
        let r = r.send().await.unwrap();
        assert_eq!(r.status(), 200);
        message(&r.text().await.unwrap())
    };
    for (method, key) in [
        ("tools/list", "tools"),
        ("prompts/list", "prompts"),
        ("resources/list", "resources"),
        ("resources/templates/list", "resourceTemplates"),
    ] {
        for browser in [false, true] {
            let mut r = modern(&url, method, None, json!({}), json!({}));
            if browser {
                r = r.header("origin", "http://localhost:9");
            }
            let v = send(r).await;
            let res = &v["result"];
            assert_eq!(res["resultType"], "complete", "{method} {v}");
            assert_eq!(res["ttlMs"], 90_000, "{method} (browser: {browser}) {v}");
            assert_eq!(res["cacheScope"], "public", "{method} {v}");
            let items = res[key].as_array().unwrap_or_else(|| panic!("{v}"));
            assert_eq!(items.len() % 3, 0, "three connectors' items: {v}");
            assert!(!items.is_empty(), "{v}");
            if !browser {
                // rmcp's typed model drops unknown fields; the own path keeps them.
                assert!(items.iter().any(|i| i.get("x-vendor").is_some()), "{v}");
            }
        }
    }
    // A cursor is honoured on the own path, and a bad one is a clear error.
    let v = send(modern(
        &url,
        "tools/list",
        None,
        json!({"cursor": "nope"}),
        json!({}),
    ))
    .await;
    assert_eq!(v["error"]["code"], -32602, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("cursor"),
        "{v}"
    );
    // A list whose body disagrees with its Mcp-Method header is refused (rmcp's check).
    let r = http()
        .post(&url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", MODERN_VERSION)
        .header("mcp-method", "prompts/list")
        .body(
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": {
                "io.modelcontextprotocol/protocolVersion": MODERN_VERSION,
                "io.modelcontextprotocol/clientCapabilities": {},
            }}})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "header/body mismatch on a list");

    let v = send(modern(&url, "server/discover", None, json!({}), json!({}))).await;
    assert_eq!(v["result"]["ttlMs"], 90_000, "{v}");
    assert_eq!(v["result"]["cacheScope"], "public", "{v}");
    assert!(
        v["result"]["supportedVersions"]
            .as_array()
            .is_some_and(|s| s.contains(&json!(MODERN_VERSION))),
        "{v}"
    );

    for (uri, ttl, scope) in [
        ("fa+fixture://static", 5000, "public"),
        ("fb+fixture://static", 5000, "private"),
        ("fc+fixture://static", 0, "private"),
    ] {
        let v = send(modern(
            &url,
            "resources/read",
            Some(uri),
            json!({"uri": uri}),
            json!({}),
        ))
        .await;
        let res = &v["result"];
        assert_eq!(res["contents"][0]["text"], "static content", "{uri} {v}");
        assert_eq!(res["contents"][0]["uri"], uri, "{v}");
        assert_eq!(res["ttlMs"], ttl, "{uri} {v}");
        assert_eq!(res["cacheScope"], scope, "{uri} {v}");
        assert_eq!(res["resultType"], "complete", "{uri} {v}");
        // Reads take the gateway's own data path: unknown fields survive.
        assert_eq!(res["contents"][0]["x-extra"], "content", "{uri} {v}");
    }
    // So do prompts.
    let v = send(modern(
        &url,
        "prompts/get",
        Some("fc__greet"),
        json!({"name": "fc__greet", "arguments": {"name": "ada"}}),
        json!({}),
    ))
    .await;
    assert_eq!(v["result"]["resultType"], "complete", "{v}");
    assert_eq!(v["result"]["x-extra"], "prompt-result", "{v}");
    assert!(v["result"]["messages"].to_string().contains("ada"), "{v}");
    // The same read through rmcp (a browser's request) gets the same hints.
    let v = send(
        modern(
            &url,
            "resources/read",
            Some("fc+fixture://static"),
            json!({"uri": "fc+fixture://static"}),
            json!({}),
        )
        .header("origin", "http://localhost:9"),
    )
    .await;
    assert_eq!(v["result"]["ttlMs"], 0, "{v}");
    assert_eq!(v["result"]["cacheScope"], "private", "{v}");
}
