//! The gateway's own data path (`tools/list`, `tools/call` of legacy sessions, forwarded as JSON
//! text): unknown fields and `_meta` survive both ways, over stdio and Streamable HTTP
//! upstreams; progress, sampling and cancellation work on it; busy sessions do not expire.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;

/// `fa` (stdio) and `fb` (Streamable HTTP) faulty fixtures in virtual server `main`.
fn stdio_and_http(fb: &FaultyHttp, gateway: &str) -> String {
    format!(
        "[gateway]\n{gateway}\n{}\n[connectors.fb]\nkind = \"http\"\nurl = \"{}\"\n\n[servers.main]\nconnectors = [\"fa\", \"fb\"]\n",
        faulty("fa", ""),
        fb.url
    )
}

#[tokio::test]
async fn unknown_fields_and_meta_survive_both_ways() {
    let fb = FaultyHttp::start("fb");
    let gw = Gw::start(&stdio_and_http(&fb, ""));
    gw.wait_up().await;
    let url = gw.url("main");
    let sid = session(&url).await;
    let list = rpc(
        &url,
        &sid,
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
    )
    .await;
    for c in ["fa", "fb"] {
        let echo = list["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == format!("{c}__echo"))
            .unwrap_or_else(|| panic!("{c}__echo listed: {list}"));
        assert_eq!(
            echo["x-vendor"],
            json!({"tier": "gold"}),
            "{c}: a tool's unknown field reaches the client"
        );
        assert_eq!(echo["annotations"]["readOnlyHint"], true);

        let r = post_in(&url, &sid)
            .body(
                json!({"jsonrpc": "2.0", "id": "call-1", "method": "tools/call", "params": {
                    "name": format!("{c}__echo"),
                    "arguments": {"message": "hi"},
                    "x-client": {"n": 7},
                    "_meta": {"trace": "abc", "io.modelcontextprotocol/clientCapabilities": {}}
                }})
                .to_string(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()["content-type"],
            "application/json",
            "{c}: a call with nothing to stream is answered with a JSON body"
        );
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["id"], "call-1", "{v}");
        let res = &v["result"];
        assert_eq!(res["content"][0]["text"], "Echo: hi", "{v}");
        assert_eq!(res["x-extra"], "kept", "{c}: unknown result field: {v}");
        assert_eq!(
            res["content"][0]["x-block"], 1,
            "{c}: unknown content field: {v}"
        );
        assert_eq!(
            res["_meta"]["seen_extra"],
            json!({"x-client": {"n": 7}}),
            "{c}: unknown params field reaches the upstream: {v}"
        );
        assert_eq!(
            res["_meta"]["seen_meta"],
            json!({"trace": "abc"}),
            "{c}: custom _meta passes, the client's own-hop keys do not: {v}"
        );
    }
    // Every merged list and every forwarded result keeps fields rmcp does not model.
    let find = |v: &Value, key: &str, field: &str, want: &str| -> Value {
        v["result"][key]
            .as_array()
            .unwrap_or_else(|| panic!("{key} in {v}"))
            .iter()
            .find(|i| i[field] == want)
            .unwrap_or_else(|| panic!("{want} in {v}"))
            .clone()
    };
    for (c, static_uri, template) in [
        ("fa", "fa+fixture://static", "fa+fixture://item/{id}"),
        ("fb", "fb+fixture://static", "fb+fixture://item/{id}"),
    ] {
        let v = rpc(
            &url,
            &sid,
            json!({"jsonrpc": "2.0", "id": 1, "method": "prompts/list"}),
        )
        .await;
        assert_eq!(
            find(&v, "prompts", "name", &format!("{c}__greet"))["x-vendor"],
            "prompt"
        );
        let v = rpc(
            &url,
            &sid,
            json!({"jsonrpc": "2.0", "id": 1, "method": "resources/list"}),
        )
        .await;
        assert_eq!(
            find(&v, "resources", "uri", static_uri)["x-vendor"],
            "resource"
        );
        let v = rpc(
            &url,
            &sid,
            json!({"jsonrpc": "2.0", "id": 1, "method": "resources/templates/list"}),
        )
        .await;
        assert_eq!(
            find(&v, "resourceTemplates", "uriTemplate", template)["x-vendor"],
            "template"
        );
        let v = rpc(&url, &sid, json!({"jsonrpc": "2.0", "id": 1, "method": "prompts/get", "params": {"name": format!("{c}__greet"), "arguments": {"name": "bob"}}})).await;
        assert_eq!(v["result"]["x-extra"], "prompt-result", "{v}");
        assert_eq!(
            v["result"]["messages"][0]["content"]["text"], "Hello, bob!",
            "{v}"
        );
        let v = rpc(&url, &sid, json!({"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {"uri": static_uri}})).await;
        assert_eq!(v["result"]["contents"][0]["x-extra"], "content", "{v}");
        assert_eq!(
            v["result"]["contents"][0]["uri"], static_uri,
            "the URI the client asked for: {v}"
        );
        let v = rpc(&url, &sid, json!({"jsonrpc": "2.0", "id": 1, "method": "completion/complete", "params": {
            "ref": {"type": "ref/resource", "uri": template}, "argument": {"name": "id", "value": "2"}}})).await;
        assert_eq!(v["result"]["completion"]["values"], json!(["2"]), "{v}");
        assert_eq!(v["result"]["x-extra"], "completion", "{v}");
    }
    // Bad params get JSON-RPC errors and the session keeps working.
    let v = rpc(&url, &sid, json!({"jsonrpc": "2.0", "id": 6, "method": "completion/complete", "params": {"ref": {"type": "ref/other"}}})).await;
    assert_eq!(v["error"]["code"], -32602, "{v}");
    let v = rpc(&url, &sid, json!({"jsonrpc": "2.0", "id": 7, "method": "resources/read", "params": {"uri": "nope://x"}})).await;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not found"),
        "{v}"
    );
    let v = rpc(
        &url,
        &sid,
        json!({"jsonrpc": "2.0", "id": 8, "method": "prompts/get", "params": {"name": 5}}),
    )
    .await;
    assert_eq!(v["error"]["code"], -32602, "{v}");
    let v = rpc(
        &url,
        &sid,
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"arguments": {}}}),
    )
    .await;
    assert_eq!(v["error"]["code"], -32602, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("name"),
        "{v}"
    );
    let v = rpc(
        &url,
        &sid,
        json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "fa__nope"}}),
    )
    .await;
    assert_eq!(v["error"]["code"], -32602, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown tool"),
        "{v}"
    );
    let v = rpc(
        &url,
        &sid,
        json!({"jsonrpc": "2.0", "id": 4, "method": "tools/list", "params": {"cursor": "bogus"}}),
    )
    .await;
    assert_eq!(v["error"]["code"], -32602, "{v}");
    let v = rpc(
        &url,
        &sid,
        json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "fb__echo", "arguments": {"message": "still"}}}),
    )
    .await;
    assert_eq!(v["result"]["content"][0]["text"], "Echo: still", "{v}");
}

/// Read an SSE response until `stop` matches a message; returns the messages in order.
async fn read_events(
    r: &mut reqwest::Response,
    buf: &mut String,
    stop: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            let data: Vec<&str> = event
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .collect();
            if data.is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(&data.join("\n")).unwrap();
            let done = stop(&v);
            out.push(v);
            if done {
                return out;
            }
        }
        let chunk = tokio::time::timeout(Duration::from_secs(20), r.chunk())
            .await
            .expect("an event within 20 s")
            .unwrap()
            .unwrap_or_else(|| panic!("stream ended; got {out:?}"));
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

const INIT_SAMPLING: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{"sampling":{}},"clientInfo":{"name":"raw","version":"1"}}}"#;

async fn sampling_session(url: &str) -> String {
    session_with(url, INIT_SAMPLING).await
}

#[tokio::test]
async fn progress_and_sampling_stream_on_the_calls_own_response() {
    let fb = FaultyHttp::start("fb");
    let gw = Gw::start(&stdio_and_http(&fb, ""));
    gw.wait_up().await;
    let url = gw.url("main");
    let sid = sampling_session(&url).await;
    let other = sampling_session(&url).await;
    for c in ["fa", "fb"] {
        // Progress: the answer turns into an event stream, progress first, result last.
        let mut r = post_in(&url, &sid)
            .body(
                json!({"jsonrpc": "2.0", "id": 10, "method": "tools/call", "params": {
                "name": format!("{c}__slow"), "arguments": {"ms": 200, "steps": 3},
                "_meta": {"progressToken": "p-1"}}})
                .to_string(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["content-type"], "text/event-stream");
        let mut buf = String::new();
        let msgs = read_events(&mut r, &mut buf, |v| v.get("id").is_some()).await;
        let progress: Vec<&Value> = msgs
            .iter()
            .filter(|m| m["method"] == "notifications/progress")
            .collect();
        assert_eq!(progress.len(), 3, "{c}: {msgs:?}");
        assert!(
            progress
                .iter()
                .all(|p| p["params"]["progressToken"] == "p-1"),
            "{c}: the client's own token: {msgs:?}"
        );
        let last = msgs.last().unwrap();
        assert_eq!(last["id"], 10);
        assert_eq!(
            last["result"]["content"][0]["text"], "done",
            "{c}: {msgs:?}"
        );

        // A log message sent just before the answer still precedes it, on the call's stream.
        let mut r = post_in(&url, &sid)
            .body(
                json!({"jsonrpc": "2.0", "id": 12, "method": "tools/call", "params": {
                "name": format!("{c}__log"), "arguments": {"level": "warning", "message": "note"}}})
                .to_string(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["content-type"], "text/event-stream", "{c}");
        let mut buf = String::new();
        let msgs = read_events(&mut r, &mut buf, |v| v.get("id").is_some()).await;
        assert_eq!(msgs.len(), 2, "{c}: {msgs:?}");
        assert_eq!(msgs[0]["method"], "notifications/message", "{c}: {msgs:?}");
        assert_eq!(msgs[0]["params"]["data"], "note", "{c}: {msgs:?}");
        assert_eq!(
            msgs[1]["result"]["content"][0]["text"], "logged",
            "{c}: {msgs:?}"
        );

        // Sampling: the request arrives on the call's stream; only this session may answer.
        let mut r = post_in(&url, &sid)
            .body(
                json!({"jsonrpc": "2.0", "id": 11, "method": "tools/call", "params": {
                "name": format!("{c}__sample"), "arguments": {"prompt": "hi"}}})
                .to_string(),
            )
            .send()
            .await
            .unwrap();
        let mut buf = String::new();
        let msgs = read_events(&mut r, &mut buf, |v| v.get("method").is_some()).await;
        let req = msgs.last().unwrap();
        assert_eq!(req["method"], "sampling/createMessage", "{c}: {msgs:?}");
        let answer = json!({"jsonrpc": "2.0", "id": req["id"], "result": {
            "role": "assistant", "model": "m", "content": {"type": "text", "text": "from raw"}}})
        .to_string();
        let wrong = post_in(&url, &other)
            .body(answer.clone())
            .send()
            .await
            .unwrap();
        let wrong_body = wrong.text().await.unwrap();
        let r2 = post_in(&url, &sid).body(answer).send().await.unwrap();
        assert_eq!(r2.status(), 202);
        let msgs = read_events(&mut r, &mut buf, |v| v.get("id") == Some(&json!(11))).await;
        let result = msgs.last().unwrap();
        assert_eq!(
            result["result"]["content"][0]["text"], "sampled: from raw",
            "{c}: the answer of the calling session, not of {other} ({wrong_body}): {msgs:?}"
        );
    }
}

#[tokio::test]
async fn typed_clients_get_progress_sampling_and_cancellation_via_an_http_upstream() {
    let fb = FaultyHttp::start("fb");
    let gw = Gw::start(&stdio_and_http(&fb, ""));
    gw.wait_up().await;
    let client = TestClient::new("alice");
    let c = connect(&gw.url("main"), client.clone()).await;
    let r = c
        .peer()
        .call_tool(call("fb__sample", json!({"prompt": "hi"})))
        .await
        .unwrap();
    assert_eq!(text(&r), "sampled: reply from alice");
    let mut params = call("fb__slow", json!({"ms": 300, "steps": 3}));
    params.meta = Some(serde_json::from_value(json!({"progressToken": "tok"})).unwrap());
    let r = c.peer().call_tool(params).await.unwrap();
    assert_eq!(text(&r), "done");
    client
        .wait_event("third progress notification", |e| {
            e.starts_with("progress:") && e.ends_with(":3")
        })
        .await;
    // A cancelled call ends at once and the connector keeps serving.
    let calls = || upstream_requests(&fb.log(), "tools/call");
    let before = calls();
    let handle = c
        .peer()
        .send_cancellable_request(
            rmcp::model::ClientRequest::CallToolRequest(rmcp::model::Request::new(call(
                "fb__hang",
                json!({}),
            ))),
            rmcp::service::PeerRequestOptions::no_options(),
        )
        .await
        .unwrap();
    eventually(
        "fb__hang to reach the upstream",
        Duration::from_secs(10),
        || async { (calls() > before).then_some(()) },
    )
    .await;
    handle
        .cancel(Some("test".into()))
        .await
        .expect("cancellation is sent");
    let r = c
        .peer()
        .call_tool(call("fb__echo", json!({"message": "after"})))
        .await
        .unwrap();
    assert_eq!(text(&r), "Echo: after");
}

#[tokio::test]
async fn a_session_busy_on_the_data_path_does_not_expire() {
    let gw = Gw::start(&one_faulty("session_idle_timeout = \"1s\""));
    gw.wait_up().await;
    let url = gw.url("main");
    let sid = session(&url).await;
    for i in 0..12 {
        let v = rpc(&url, &sid, json!({"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": "fa__echo", "arguments": {"message": "busy"}}})).await;
        assert_eq!(v["result"]["content"][0]["text"], "Echo: busy", "{v}");
        // Not synchronisation: spreads the calls over 3 s, past the 1 s idle timeout.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Three seconds of tools/call only (never seen by rmcp's session): still alive.
    let v = rpc(
        &url,
        &sid,
        json!({"jsonrpc": "2.0", "id": 99, "method": "ping"}),
    )
    .await;
    assert_eq!(v["result"], json!({}), "{v}");
}

#[tokio::test]
async fn a_misbehaving_http_upstream_fails_fast_and_isolated() {
    let fb = FaultyHttp::start("fb");
    let gw = Gw::start(&stdio_and_http(&fb, ""));
    gw.wait_up().await;
    let url = gw.url("main");
    let sid = session(&url).await;
    let call = |name: &str, args: Value| json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": args}});
    // Junk events on the call's stream are dropped; the answer still arrives.
    let v = rpc(&url, &sid, call("fb__garbage", json!({}))).await;
    assert_eq!(v["result"]["content"][0]["text"], "after garbage", "{v}");
    // A 10 MB result passes through whole.
    let v = rpc(&url, &sid, call("fb__huge", json!({"bytes": 10_000_000}))).await;
    assert_eq!(
        v["result"]["content"][0]["text"].as_str().map(str::len),
        Some(10_000_000)
    );
    // The upstream process dies mid-call: the call fails at once, naming nothing it should not,
    // and the stdio connector keeps serving.
    let t0 = std::time::Instant::now();
    let v = rpc(&url, &sid, call("fb__crash", json!({}))).await;
    assert!(v.get("error").is_some(), "{v}");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "failed fast: {:?}",
        t0.elapsed()
    );
    let v = rpc(&url, &sid, call("fa__echo", json!({"message": "alive"}))).await;
    assert_eq!(v["result"]["content"][0]["text"], "Echo: alive", "{v}");
    drop(fb);
}
