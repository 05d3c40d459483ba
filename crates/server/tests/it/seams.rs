//! The seams on every path: with a test policy that denies some items, a denied item is absent
//! from every list and refused like an unknown one on every path — legacy session POSTs
//! answered with JSON or an event stream, browser requests, 2026-07-28 stateless requests and
//! MRTR retries — for tools, prompts, resources, templates and completions; and each seam is
//! consulted exactly once per request (authentication once per HTTP request, the policy and
//! the audit once per MCP request, the credentials once per request that goes upstream).

use std::sync::atomic::Ordering;

use serde_json::{Value, json};

use crate::support::*;

const DENIED: [&str; 4] = [
    "fa__echo",
    "fa__greet",
    "fa+fixture://static",
    "fa+fixture://item/*",
];

fn config() -> String {
    format!("{}\n[servers.main]\nconnectors = [\"fa\"]\n", faulty("fa"))
}

/// Run `f` and check how many times each seam was consulted meanwhile:
/// [authenticate, policy, credentials, audit].
async fn counted<T>(gw: &Gw, what: &str, want: [usize; 4], f: impl Future<Output = T>) -> T {
    let before = gw.counts.now();
    let out = f.await;
    let after = gw.counts.now();
    let got = [0, 1, 2, 3].map(|i| after[i] - before[i]);
    assert_eq!(
        got, want,
        "{what}: [authenticate, policy, credentials, audit] consulted {got:?} times"
    );
    out
}

const LIST: [usize; 4] = [1, 1, 0, 1];
const REFUSED: [usize; 4] = [1, 1, 0, 1];
const FORWARDED: [usize; 4] = [1, 1, 1, 1];

fn assert_unknown(v: &Value, what: &str) {
    assert_eq!(v["error"]["code"], -32602, "{what}: {v}");
    let m = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        m.starts_with("unknown tool:")
            || m.starts_with("unknown prompt:")
            || m.starts_with("resource not found:"),
        "{what}: a denied item looks unknown, not forbidden: {v}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_denied_item_is_absent_from_every_list_and_refused_on_every_path() {
    let gw = Gw::start(&config(), &DENIED).await;
    let url = gw.url("main");
    let sid = session(&url, None).await;
    let port = gw.base.rsplit(':').next().unwrap().to_owned();
    let origin = format!("http://localhost:{port}");

    // Lists, in a session and stateless, from a plain client and from a browser.
    let lists = [
        ("tools/list", "tools", "name", "fa__echo", "fa__add"),
        ("prompts/list", "prompts", "name", "fa__greet", ""),
        (
            "resources/list",
            "resources",
            "uri",
            "fa+fixture://static",
            "",
        ),
        (
            "resources/templates/list",
            "resourceTemplates",
            "uriTemplate",
            "fa+fixture://item/{id}",
            "",
        ),
    ];
    for (method, key, field, hidden, shown) in lists {
        for browser in [false, true] {
            let mut r = post_in(&url, &sid);
            if browser {
                r = r.header("origin", &origin);
            }
            let (_, _, v) = counted(&gw, method, LIST, legacy_with(r, method, json!({}))).await;
            let got = names(&v, key, field);
            assert!(
                !got.contains(&hidden.to_owned()),
                "{method} (browser {browser}) shows {hidden}: {got:?}"
            );
            if !shown.is_empty() {
                assert!(got.contains(&shown.to_owned()), "{method}: {got:?}");
            }
            let mut r = modern_request(&url, method, json!({}), json!({}));
            if browser {
                r = r.header("origin", &origin);
            }
            let (_, v) = counted(&gw, method, LIST, modern_with(r)).await;
            let got = names(&v, key, field);
            assert!(
                !got.contains(&hidden.to_owned()),
                "modern {method}: {got:?}"
            );
            assert_eq!(
                v["result"]["cacheScope"], "private",
                "a list filtered per caller: {v}"
            );
        }
    }

    // Uses of denied items, on every path: refused as if they did not exist, never forwarded.
    let uses = [
        (
            "tools/call",
            json!({"name": "fa__echo", "arguments": {"message": "x"}}),
        ),
        (
            "prompts/get",
            json!({"name": "fa__greet", "arguments": {"name": "ada"}}),
        ),
        ("resources/read", json!({"uri": "fa+fixture://static"})),
        ("resources/read", json!({"uri": "fa+fixture://item/7"})),
        (
            "completion/complete",
            json!({"ref": {"type": "ref/prompt", "name": "fa__greet"}, "argument": {"name": "name", "value": "a"}}),
        ),
        (
            "completion/complete",
            json!({"ref": {"type": "ref/resource", "uri": "fa+fixture://item/{id}"}, "argument": {"name": "id", "value": "1"}}),
        ),
    ];
    for (method, params) in &uses {
        let what = format!("legacy {method} {params}");
        let (_, _, v) = counted(
            &gw,
            &what,
            REFUSED,
            legacy(&url, &sid, method, params.clone()),
        )
        .await;
        assert_unknown(&v, &what);
        let what = format!("browser {method} {params}");
        let r = post_in(&url, &sid).header("origin", &origin);
        let (_, _, v) = counted(&gw, &what, REFUSED, legacy_with(r, method, params.clone())).await;
        assert_unknown(&v, &what);
        let what = format!("modern {method} {params}");
        let (status, v) = counted(&gw, &what, REFUSED, modern(&url, method, params.clone())).await;
        assert_eq!(status, 200, "{what}");
        assert_unknown(&v, &what);
    }
    // A call that would be answered with an event stream (it asks for progress).
    let streamed =
        json!({"name": "fa__echo", "arguments": {"message": "x"}, "_meta": {"progressToken": "p"}});
    let (_, _, v) = counted(
        &gw,
        "legacy call with progress",
        REFUSED,
        legacy(&url, &sid, "tools/call", streamed),
    )
    .await;
    assert_unknown(&v, "legacy call with progress");
    // Subscriptions (legacy sessions only).
    let (_, _, v) = counted(
        &gw,
        "subscribe",
        REFUSED,
        legacy(
            &url,
            &sid,
            "resources/subscribe",
            json!({"uri": "fa+fixture://static"}),
        ),
    )
    .await;
    assert_unknown(&v, "subscribe");
    // A denied tool reads exactly like one that does not exist.
    let (_, _, unknown) = legacy(&url, &sid, "tools/call", json!({"name": "fa__nope"})).await;
    let (_, _, denied) = legacy(&url, &sid, "tools/call", json!({"name": "fa__echo"})).await;
    assert_eq!(
        unknown["error"]["message"]
            .as_str()
            .unwrap()
            .replace("fa__nope", "X"),
        denied["error"]["message"]
            .as_str()
            .unwrap()
            .replace("fa__echo", "X"),
    );

    // The same paths forward allowed items, with the credentials seam consulted once.
    let (_, _, v) = counted(
        &gw,
        "legacy add",
        FORWARDED,
        legacy(
            &url,
            &sid,
            "tools/call",
            json!({"name": "fa__add", "arguments": {"a": 2, "b": 3}}),
        ),
    )
    .await;
    assert_eq!(v["result"]["content"][0]["text"], "5", "{v}");
    let slow = json!({"name": "fa__slow", "arguments": {"ms": 100, "steps": 3}, "_meta": {"progressToken": "p"}});
    let (_, ct, v) = counted(
        &gw,
        "legacy streamed call",
        FORWARDED,
        legacy(&url, &sid, "tools/call", slow),
    )
    .await;
    assert!(
        ct.starts_with("text/event-stream"),
        "progress first, so an event stream: {ct}"
    );
    assert_eq!(v["result"]["content"][0]["text"], "done", "{v}");
    let (_, v) = counted(
        &gw,
        "modern add",
        FORWARDED,
        modern(
            &url,
            "tools/call",
            json!({"name": "fa__add", "arguments": {"a": 1, "b": 1}}),
        ),
    )
    .await;
    assert_eq!(v["result"]["resultType"], "complete", "{v}");
    // A notification is authenticated, and decides nothing.
    let r = post_in(&url, &sid)
        .body(r#"{"jsonrpc":"2.0","method":"notifications/roots/list_changed"}"#);
    counted(&gw, "notification", [1, 0, 0, 0], async {
        r.send().await.unwrap()
    })
    .await;

    // Every refusal left an audit event naming what was denied and why.
    let events = gw.counts.events.lock().unwrap().clone();
    let denied: Vec<_> = events.iter().filter(|e| e.denied.is_some()).collect();
    assert!(
        denied.len() >= uses.len() * 3,
        "{} denied events",
        denied.len()
    );
    assert!(
        denied
            .iter()
            .all(|e| e.outcome != manifold_audit::Outcome::Ok)
    );
    assert!(
        denied.iter().any(|e| e
            .subject
            .as_ref()
            .is_some_and(|s| s.connector == "fa" && s.name == "echo")),
        "the event names the connector and the upstream's tool"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_mrtr_retry_is_decided_again() {
    let gw = Gw::start(&config(), &[]).await;
    let url = gw.url("main");
    let args = json!({"name": "fa__elicit", "arguments": {"message": "who?"}});
    let (_, v) = counted(
        &gw,
        "first round",
        FORWARDED,
        modern(&url, "tools/call", args.clone()),
    )
    .await;
    assert_eq!(v["result"]["resultType"], "input_required", "{v}");
    let mut retry = args.clone();
    retry["requestState"] = v["result"]["requestState"].clone();
    retry["inputResponses"] = json!({"r1": {"action": "accept", "content": {"name": "Ada"}}});
    // The tool is denied before the retry: the retry is refused, and the call stays parked.
    gw.deny(&["fa__elicit"]);
    let (_, v) = counted(
        &gw,
        "denied retry",
        REFUSED,
        modern(&url, "tools/call", retry.clone()),
    )
    .await;
    assert_unknown(&v, "denied retry");
    gw.deny(&[]);
    // An allowed retry resumes the parked call: decided and audited, not sent upstream again.
    let (_, v) = counted(
        &gw,
        "retry",
        [1, 1, 0, 1],
        modern(&url, "tools/call", retry),
    )
    .await;
    assert_eq!(
        v["result"]["content"][0]["text"], "elicited: accept {\"name\":\"Ada\"}",
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_and_request_states_belong_to_their_principal() {
    let gw = Gw::start(&config(), &[]).await;
    let url = gw.url("main");
    let sid = session(&url, Some("alice")).await;
    let alice = || post_in(&url, &sid).header("x-test-user", "alice");
    let bob = || post_in(&url, &sid).header("x-test-user", "bob");
    let (status, _, v) = legacy_with(alice(), "ping", json!({})).await;
    assert_eq!((status, &v["result"]), (200, &json!({})), "{v}");
    let r = bob()
        .body(json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        404,
        "another principal does not find alice's session"
    );
    let r = post_in(&url, &sid)
        .body(json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "nor does an anonymous caller");

    let args = json!({"name": "fa__elicit", "arguments": {"message": "m"}});
    let caps = json!({"elicitation": {"form": {}}});
    let (_, v) = modern_with(
        modern_request(&url, "tools/call", args.clone(), caps.clone())
            .header("x-test-user", "alice"),
    )
    .await;
    let mut retry = args;
    retry["requestState"] = v["result"]["requestState"].clone();
    retry["inputResponses"] = json!({"r1": {"action": "accept", "content": {"name": "x"}}});
    let (_, v) = modern_with(
        modern_request(&url, "tools/call", retry.clone(), caps.clone())
            .header("x-test-user", "bob"),
    )
    .await;
    assert_eq!(
        v["error"]["code"], -32602,
        "bob cannot resume alice's call: {v}"
    );
    let (_, v) =
        modern_with(modern_request(&url, "tools/call", retry, caps).header("x-test-user", "alice"))
            .await;
    assert_eq!(v["result"]["resultType"], "complete", "alice can: {v}");
    let audited = gw.counts.events.lock().unwrap().clone();
    assert!(
        audited.iter().any(|e| e.principal == "alice@test"),
        "events name the principal"
    );
    assert!(gw.counts.audit.load(Ordering::SeqCst) >= 5);
}
