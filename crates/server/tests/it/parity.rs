//! One request sequence through every adapter — a legacy session's POSTs (plain and from a
//! browser) and 2026-07-28 stateless requests (plain and from a browser) — gives the same
//! answers, apart from what the eras themselves differ in (`resultType` and the caching hints
//! of 2026-07-28 results).

use serde_json::{Value, json};

use crate::support::*;

/// The requests, with whatever makes them interesting: unknown fields, bad params, unknown
/// names, pagination, a resource template, completion.
fn sequence() -> Vec<(&'static str, Value)> {
    vec![
        ("tools/list", json!({})),
        ("prompts/list", json!({})),
        ("resources/list", json!({})),
        ("resources/templates/list", json!({})),
        ("tools/list", json!({"cursor": "mf1.2"})),
        ("tools/list", json!({"cursor": "garbage"})),
        (
            "tools/call",
            json!({"name": "fa__echo", "arguments": {"message": "hi"}, "x-extra": 1}),
        ),
        (
            "tools/call",
            json!({"name": "fa__add", "arguments": {"a": 1, "b": 2}}),
        ),
        ("tools/call", json!({"name": "fa__nope", "arguments": {}})),
        ("tools/call", json!({"arguments": {}})),
        ("tools/call", json!({"name": "fa__echo", "arguments": 7})),
        (
            "prompts/get",
            json!({"name": "fa__greet", "arguments": {"name": "ada"}}),
        ),
        ("prompts/get", json!({"name": "fa__nope"})),
        ("resources/read", json!({"uri": "fa+fixture://static"})),
        ("resources/read", json!({"uri": "fa+fixture://item/42"})),
        ("resources/read", json!({"uri": "nope://x"})),
        (
            "completion/complete",
            json!({"ref": {"type": "ref/prompt", "name": "fa__greet"}, "argument": {"name": "name", "value": "a"}}),
        ),
        (
            "completion/complete",
            json!({"ref": {"type": "ref/nothing"}, "argument": {"name": "n", "value": ""}}),
        ),
        ("no/such/method", json!({})),
    ]
}

/// An answer without what only one era has.
fn comparable(mut v: Value) -> Value {
    v.as_object_mut().unwrap().remove("id");
    if let Some(r) = v.get_mut("result").and_then(|r| r.as_object_mut()) {
        for k in ["resultType", "ttlMs", "cacheScope"] {
            r.remove(k);
        }
        if let Some(m) = r.get_mut("_meta").and_then(|m| m.as_object_mut()) {
            // The fixture echoes what it was sent; the gateway's per-hop keys differ by era.
            m.remove("seen_meta");
        }
    }
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn every_adapter_answers_the_same() {
    let gw = Gw::start(
        &format!(
            "[gateway]\npage_size = 3\n{}\n[servers.main]\nconnectors = [\"fa\"]\n",
            faulty("fa")
        ),
        &[],
    )
    .await;
    let url = gw.url("main");
    let sid = session(&url, None).await;
    let port = gw.base.rsplit(':').next().unwrap().to_owned();
    let origin = format!("http://localhost:{port}");
    for (method, params) in sequence() {
        let (_, _, legacy_plain) = legacy(&url, &sid, method, params.clone()).await;
        let (_, _, legacy_browser) = legacy_with(
            post_in(&url, &sid).header("origin", &origin),
            method,
            params.clone(),
        )
        .await;
        let (_, modern_plain) = modern(&url, method, params.clone()).await;
        let (_, modern_browser) = modern_with(
            modern_request(&url, method, params.clone(), json!({"elicitation": {}}))
                .header("origin", &origin),
        )
        .await;
        if let Some(extra) = params.get("x-extra") {
            assert_eq!(
                legacy_plain["result"]["_meta"]["seen_extra"]["x-extra"], *extra,
                "unknown request fields reach the upstream: {legacy_plain}"
            );
        }
        let want = comparable(legacy_plain.clone());
        for (adapter, got) in [
            ("legacy, browser", legacy_browser),
            ("2026-07-28", modern_plain.clone()),
            ("2026-07-28, browser", modern_browser),
        ] {
            assert_eq!(
                comparable(got.clone()),
                want,
                "{method} {params}: {adapter} answered differently\n{adapter}: {got}\nlegacy: {legacy_plain}"
            );
        }
        if modern_plain.get("result").is_some() {
            assert_eq!(
                modern_plain["result"]["resultType"], "complete",
                "{method}: {modern_plain}"
            );
        }
    }
}
