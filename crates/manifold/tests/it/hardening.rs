//! The findings of probing the gateway from outside (issue 9), each as the probe that found it:
//! secrets in URLs, headers and arguments; health and error routes under the Host/Origin policy;
//! connection and session caps; reloads under load; misleading errors.

#![allow(deprecated)] // resources/subscribe is legacy-only, which is what some probes speak

use std::time::Duration;

use serde_json::json;

use crate::support::*;

/// The secret values the probes plant; none may appear in anything the gateway shows.
const PASSWORD: &str = "url-PASSWORD-9f2";
const API_KEY: &str = "the-api-key-7c1";
const TOKEN: &str = "bearer-token-3d8";
const LITERAL_KEY: &str = "literal-x-api-key-51a";
const ARG_TOKEN: &str = "arg-token-0b6";

fn assert_no_secret(what: &str, text: &str) {
    for s in [PASSWORD, API_KEY, TOKEN, LITERAL_KEY, ARG_TOKEN] {
        assert!(!text.contains(s), "{what} shows the secret {s:?}:\n{text}");
    }
}

#[tokio::test]
async fn secrets_in_a_down_connectors_url_never_reach_clients_health_or_the_log() {
    let config = format!(
        "{}\n[connectors.down]\nkind = \"http\"\nurl = \"http://user:{PASSWORD}@127.0.0.1:1/mcp?api_key=${{KEY}}\"\nconnect_timeout = \"2s\"\nrestart = {{ initial_backoff = \"100ms\", max_backoff = \"200ms\" }}\n[servers.main]\nconnectors = [\"fa\", \"down\"]\n",
        faulty("fa", "").replace("\"--name\", \"fa\"]", "\"--name=fa-${ARG_TOKEN}\"]")
    );
    let gw = Gw::start_with_env(&config, &[("KEY", API_KEY), ("ARG_TOKEN", ARG_TOKEN)]);
    let health = gw
        .wait_health("the down connector failed at least once", |v| {
            v["connectors"]["fa"]["state"] == "up"
                && v["connectors"]["down"]["last_error"].is_string()
        })
        .await;
    let detail = health.to_string();
    assert_no_secret("/healthz/detail", &detail);
    assert!(
        detail.contains("127.0.0.1:1"),
        "the error still says where: {detail}"
    );

    let url = gw.url("main");
    let sid = session(&url).await;
    let probes = [
        json!({"jsonrpc":"2.0","id":2,"method":"resources/read","params":{"uri":"down+test://x"}}),
        json!({"jsonrpc":"2.0","id":3,"method":"resources/subscribe","params":{"uri":"down+test://x"}}),
        json!({"jsonrpc":"2.0","id":4,"method":"completion/complete","params":{
            "ref":{"type":"ref/resource","uri":"down+test://{x}"},
            "argument":{"name":"x","value":""}}}),
    ];
    for p in probes {
        let answer = rpc(&url, &sid, p.clone()).await;
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("connector \"down\" is"),
            "{} names the connector and its state: {answer}",
            p["method"]
        );
        assert_no_secret("an error to a client", &answer.to_string());
    }
    // The same read on the stateless path.
    let r = modern(
        &url,
        "resources/read",
        Some("down+test://x"),
        json!({"uri": "down+test://x"}),
        json!({}),
    )
    .send()
    .await
    .unwrap();
    let answer = message(&r.text().await.unwrap());
    assert!(answer["error"]["message"].is_string(), "{answer}");
    assert_no_secret("an error to a 2026-07-28 client", &answer.to_string());

    let log = gw.log();
    assert!(
        log.contains("spawned stdio connector") && log.contains("not shown: they hold secrets"),
        "the spawn is logged without its arguments:\n{log}"
    );
    assert_no_secret("the log", &log);
}

#[tokio::test]
async fn an_upstream_that_echoes_request_headers_in_errors_does_not_put_them_in_the_log() {
    let up = FaultyHttp::start_with_env("echo", &[("FAULTY_HTTP_ECHO_HEADERS_ON_ERROR", "1")]);
    let config = format!(
        "[connectors.ec]\nkind = \"http\"\nurl = \"{}\"\ntransport = \"streamable\"\nera = \"legacy\"\nheaders = {{ Authorization = \"Bearer ${{TOK}}\", X-Api-Key = \"{LITERAL_KEY}\" }}\n[servers.main]\nconnectors = [\"ec\"]\n",
        up.url
    );
    let gw = Gw::start_with_env(
        &config,
        &[("TOK", TOKEN), ("MANIFOLD_LOG", "debug,rmcp=debug")],
    );
    gw.wait_up().await;
    let c = connect(&gw.url("main"), TestClient::new("a")).await;
    let err = c
        .peer()
        .call_tool(call("ec__echo", json!({"message": "hi"})))
        .await
        .expect_err("the upstream answers HTTP 500");
    assert_no_secret("the call's error", &err.to_string());
    // The upstream did receive the credentials, and its page was logged, scrubbed.
    let log = eventually(
        "the rejected POST is logged",
        Duration::from_secs(10),
        || async {
            let log = gw.log();
            log.contains("upstream POST rejected").then_some(log)
        },
    )
    .await;
    let line = log
        .lines()
        .find(|l| l.contains("upstream POST rejected"))
        .expect("logged");
    assert!(
        line.contains("request headers were") && line.contains("***"),
        "the body is logged with the credentials replaced: {line}"
    );
    assert_no_secret("the log", &log);
    drop(c);
}
