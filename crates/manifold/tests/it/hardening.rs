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

/// A raw GET of `path` with `headers` (`Host` included by reqwest unless given).
async fn get_with(gw: &Gw, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut r = http().get(format!("{}{path}", gw.base));
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let resp = r.send().await.expect("the gateway answers");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

#[tokio::test]
async fn every_route_applies_the_host_and_origin_policy_and_detail_is_local_only() {
    let gw = Gw::start(&one_faulty(""));
    gw.wait_up().await;
    let evil_host = [("host", "evil.example")];
    let evil_origin = [("origin", "http://evil.example")];
    for path in ["/healthz", "/healthz/detail", "/mcp/nope", "/elsewhere"] {
        for bad in [&evil_host[..], &evil_origin[..]] {
            let (status, body) = get_with(&gw, path, bad).await;
            assert_eq!(status, 403, "{path} with {bad:?}: {body}");
            assert!(!body.contains("/mcp/main"), "{path} lists nothing: {body}");
        }
    }
    // From this machine: the detail and the list of servers.
    let (status, body) = get_with(&gw, "/healthz/detail", &[]).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"fa\""), "{body}");
    let (status, body) = get_with(&gw, "/mcp/nope", &[]).await;
    assert_eq!(status, 404);
    assert!(body.contains("/mcp/main"), "{body}");
    let (status, body) = get_with(&gw, "/elsewhere", &[]).await;
    assert_eq!(status, 404);
    assert!(body.contains("no route /elsewhere"), "{body}");
    // Relayed by a proxy (on this machine, so the peer is loopback): not local.
    let relayed = [("x-forwarded-for", "198.51.100.7")];
    let (status, body) = get_with(&gw, "/healthz/detail", &relayed).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("gateway.public_detail"),
        "says what to do: {body}"
    );
    let (status, body) = get_with(&gw, "/mcp/nope", &relayed).await;
    assert_eq!(status, 404);
    assert!(!body.contains("/mcp/main"), "{body}");
    // The summary stays public.
    let (status, body) = get_with(&gw, "/healthz", &relayed).await;
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("last_error"), "{body}");
}

#[tokio::test]
async fn public_detail_serves_detail_to_every_caller() {
    let gw = Gw::start(&one_faulty("public_detail = true"));
    gw.wait_up().await;
    let relayed = [("forwarded", "for=198.51.100.7")];
    let (status, body) = get_with(&gw, "/healthz/detail", &relayed).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = get_with(&gw, "/mcp/nope", &relayed).await;
    assert_eq!((status, body.contains("/mcp/main")), (404, true), "{body}");
}

/// The gateway's address, for raw TCP.
fn addr(gw: &Gw) -> String {
    gw.base.trim_start_matches("http://").to_owned()
}

/// Read until the peer closes (Ok(what was read)) or `wait` passes (Err).
async fn read_until_closed(
    s: &mut tokio::net::TcpStream,
    wait: Duration,
) -> Result<String, String> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let r = tokio::time::timeout(wait, async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&got).into_owned();
    match r {
        Ok(()) => Ok(text),
        Err(_) => Err(format!("still open after {wait:?}; read {text:?}")),
    }
}

const TIMEOUTS: &str = "header_read_timeout = \"500ms\"\nbody_read_timeout = \"500ms\"\nidle_connection_timeout = \"1s\"";

#[tokio::test]
async fn idle_partial_header_trickling_and_half_sent_body_connections_are_closed() {
    use tokio::io::AsyncWriteExt;
    let gw = Gw::start(&one_faulty(TIMEOUTS));
    gw.wait_up().await;
    let wait = Duration::from_secs(10);
    let connect = || tokio::net::TcpStream::connect(addr(&gw));

    // Connected, nothing sent.
    let mut idle = connect().await.unwrap();
    read_until_closed(&mut idle, wait)
        .await
        .expect("an idle connection is closed");

    // Half a request head, then silence.
    let mut partial = connect().await.unwrap();
    partial
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .unwrap();
    read_until_closed(&mut partial, wait)
        .await
        .expect("a connection whose headers stop is closed");

    // Headers trickled a byte every 100 ms: never complete within the deadline.
    let mut trickle = connect().await.unwrap();
    let head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut closed_early = false;
    for b in head.iter() {
        if trickle.write_all(&[*b]).await.is_err() {
            closed_early = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rest = read_until_closed(&mut trickle, wait).await;
    assert!(
        closed_early || rest.as_deref().is_ok_and(|r| !r.contains("200 OK")),
        "a trickled request is cut off, not answered: {rest:?}"
    );

    // A body that stops halfway: 408, then closed.
    let mut half = connect().await.unwrap();
    half.write_all(b"POST /mcp/main HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: 100\r\n\r\n{\"jsonrpc\":")
        .await
        .unwrap();
    let answer = read_until_closed(&mut half, wait)
        .await
        .expect("a half-sent body ends the connection");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("gateway.body_read_timeout"), "{answer}");

    // A keep-alive connection after its response: closed once idle.
    let mut kept = connect().await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut kept, wait)
        .await
        .expect("an idle keep-alive connection is closed");
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "answered first: {answer}"
    );
}

#[tokio::test]
async fn a_slow_call_outlives_the_idle_timeout() {
    let gw = Gw::start(&one_faulty(TIMEOUTS));
    gw.wait_up().await;
    let c = connect(&gw.url("main"), TestClient::new("a")).await;
    // No progress, no bytes for 2.5 s on the call's connection: a request in progress is not
    // idle.
    let r = c
        .peer()
        .call_tool(call("fa__slow", json!({"ms": 2500, "steps": 0})))
        .await
        .expect("the call completes");
    assert_eq!(text(&r), "done");
}

#[tokio::test]
async fn connections_beyond_the_cap_get_a_clear_503_and_a_log_line() {
    use tokio::io::AsyncWriteExt;
    let gw = Gw::start(&one_faulty("max_connections = 8"));
    gw.wait_up().await;
    // Hold every slot with idle connections (each proven accepted by an answer). The health
    // polls of `wait_up` may still hold a slot for a moment after their clients went away: a
    // slot refused then is tried again.
    let mut held = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while held.len() < 8 {
        let mut s = tokio::net::TcpStream::connect(addr(&gw)).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = tokio::io::AsyncReadExt::read(&mut s, &mut buf)
            .await
            .unwrap();
        if buf[..n].starts_with(b"HTTP/1.1 200") {
            held.push(s);
            continue;
        }
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 503") && tokio::time::Instant::now() < deadline,
            "slot {} of 8: {}",
            held.len() + 1,
            String::from_utf8_lossy(&buf[..n])
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = match http().get(format!("{}/healthz", gw.base)).send().await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => panic!("the ninth connection gets an answer, not an error: {e}"),
    };
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("too many open connections"), "{body}");
    let log = eventually("the refusal is logged", Duration::from_secs(10), || async {
        let log = gw.log();
        log.contains("gateway.max_connections").then_some(log)
    })
    .await;
    assert!(log.contains("refused a connection"), "{log}");
    // A slot freed is a slot served.
    held.pop();
    eventually(
        "a freed slot serves again",
        Duration::from_secs(10),
        || async {
            match http().get(format!("{}/healthz", gw.base)).send().await {
                Ok(r) if r.status() == 200 => Ok(()),
                Ok(r) => Err(format!("status {}", r.status())),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await;
}

/// An `initialize` from source address `from` (any 127/8 address is this machine): the HTTP
/// status, the session id if one was opened, and the body.
async fn initialize_from(gw: &Gw, from: &str) -> (u16, Option<String>, String, Option<String>) {
    let client = http_builder()
        .local_address(from.parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let r = client
        .post(gw.url("main"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(INIT)
        .send()
        .await
        .expect("the gateway answers");
    let status = r.status().as_u16();
    let header = |k: &str| {
        r.headers()
            .get(k)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (sid, retry) = (header("mcp-session-id"), header("retry-after"));
    (status, sid, r.text().await.unwrap_or_default(), retry)
}

#[tokio::test]
async fn sessions_are_capped_per_client_and_in_total_with_clear_errors() {
    let gw = Gw::start(&one_faulty(
        "max_sessions = 4\nmax_sessions_per_client = 3\ninitialize_per_minute = 1000",
    ));
    gw.wait_up().await;
    let mut mine = Vec::new();
    for _ in 0..3 {
        let (status, sid, body, _) = initialize_from(&gw, "127.0.0.1").await;
        assert_eq!(status, 200, "{body}");
        mine.push(sid.expect("a session"));
    }
    let (status, sid, body, retry) = initialize_from(&gw, "127.0.0.1").await;
    assert_eq!((status, sid), (429, None), "{body}");
    assert!(retry.is_some(), "Retry-After is set");
    let e = message(&body);
    assert!(
        e["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("gateway.max_sessions_per_client")),
        "{e}"
    );
    // Another client has room until the gateway is full.
    let (status, _, body, _) = initialize_from(&gw, "127.0.0.2").await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body, _) = initialize_from(&gw, "127.0.0.3").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("gateway.max_sessions"), "{body}");
    // Ending a session frees its place.
    let r = http()
        .delete(gw.url("main"))
        .header("mcp-session-id", mine.pop().unwrap())
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (status, _, body, _) = initialize_from(&gw, "127.0.0.1").await;
    assert_eq!(status, 200, "{body}");
    // The sessions that were refused left nothing behind.
    let health = gw.wait_health("the session count", |_| true).await;
    assert_eq!(health["servers"]["main"]["sessions"], 4, "{health}");
    assert!(gw.log().contains("refused a new session"), "{}", gw.log());
}

#[tokio::test]
async fn initialize_is_rate_limited_per_client() {
    let gw = Gw::start(&one_faulty("initialize_per_minute = 5"));
    gw.wait_up().await;
    for _ in 0..5 {
        let (status, _, body, _) = initialize_from(&gw, "127.0.0.1").await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, _, body, retry) = initialize_from(&gw, "127.0.0.1").await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("gateway.initialize_per_minute"), "{body}");
    let retry: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!((1..=12).contains(&retry), "one token per 12 s: {retry}");
    let (status, _, body, _) = initialize_from(&gw, "127.0.0.2").await;
    assert_eq!(status, 200, "another client is not limited: {body}");
}

#[tokio::test]
async fn a_flood_of_initialize_from_one_client_is_bounded_by_the_defaults() {
    let gw = Gw::start(&one_faulty(""));
    gw.wait_up().await;
    let mut opened = 0;
    let mut refused = 0;
    for _ in 0..150 {
        match initialize_from(&gw, "127.0.0.1").await {
            (200, Some(_), _, _) => opened += 1,
            (429, None, _, _) => refused += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!(
        (opened, refused),
        (100, 50),
        "max_sessions_per_client = 100"
    );
}

/// A faulty stdio connector `name` that takes `delay` seconds to start, with `extra` keys.
fn slow_starting(name: &str, delay: f32, extra: &str) -> String {
    format!(
        "\n[connectors.{name}]\nkind = \"stdio\"\ncommand = \"sh\"\nargs = [\"-c\", \"sleep {delay}; exec python3 {} --name {name}\"]\n{extra}\n",
        fixture("faulty_upstream.py")
    )
}

/// Write `config` and wait until the gateway has applied it (its `n`th reload).
async fn reload(gw: &Gw, config: &str, n: usize) {
    std::fs::write(gw.config_path(), config).unwrap();
    eventually(&format!("reload {n}"), Duration::from_secs(10), || async {
        let log = gw.log();
        (log.matches("reloading config").count() >= n).then_some(())
    })
    .await;
}

#[tokio::test]
async fn calls_waiting_through_two_reloads_go_to_the_newest_start() {
    let config = |timeout: u32| {
        format!(
            "{}\n[servers.main]\nconnectors = [\"sl\"]\n",
            slow_starting("sl", 1.5, &format!("call_timeout = \"{timeout}s\""))
        )
    };
    let gw = Gw::start(&config(30));
    let url = gw.url("main");
    let sid = session(&url).await;
    // Three calls wait for the connector, which is still starting.
    let calls: Vec<_> = (0..3)
        .map(|i| {
            let (url, sid) = (url.clone(), sid.clone());
            tokio::spawn(async move {
                let body = json!({"jsonrpc":"2.0","id":10 + i,"method":"tools/call",
                    "params":{"name":"sl__echo","arguments":{"message":format!("m{i}")}}});
                rpc(&url, &sid, body).await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    reload(&gw, &config(31), 1).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    reload(&gw, &config(32), 2).await;
    // Each waits for the newest start; without that they waited 20 s and failed.
    for (i, c) in calls.into_iter().enumerate() {
        let answer = tokio::time::timeout(Duration::from_secs(15), c)
            .await
            .expect("the call is answered once the newest start is up")
            .unwrap();
        assert_eq!(
            answer["result"]["content"][0]["text"],
            format!("Echo: m{i}"),
            "{answer}\nlog:\n{}",
            gw.log()
        );
    }
}

#[tokio::test]
async fn a_reload_that_changes_a_connector_lets_its_calls_in_flight_finish() {
    let config = |timeout: u32| {
        format!(
            "{}\n[servers.main]\nconnectors = [\"fa\"]\n",
            faulty("fa", &format!("call_timeout = \"{timeout}s\""))
        )
    };
    let gw = Gw::start(&config(30));
    gw.wait_up().await;
    let c = connect(&gw.url("main"), TestClient::new("a")).await;
    // Calls of 0.2-1 s run all the time, on the connector whose settings change under them.
    let stop = tokio_util::sync::CancellationToken::new();
    let load: Vec<_> = (0..4)
        .map(|w| {
            let (peer, stop) = (c.peer().clone(), stop.clone());
            tokio::spawn(async move {
                let mut done = 0u32;
                while !stop.is_cancelled() {
                    let ms = 200 + 200 * w;
                    let r = peer
                        .call_tool(call("fa__slow", json!({"ms": ms, "steps": 0})))
                        .await
                        .map_err(|e| format!("a call failed during a reload: {e}"))?;
                    if text(&r) != "done" {
                        return Err(format!("unexpected result {r:?}"));
                    }
                    done += 1;
                }
                Ok::<_, String>(done)
            })
        })
        .collect();
    for n in 1..=4u32 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        reload(&gw, &config(30 + n), n as usize).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    let mut total = 0;
    for l in load {
        total += l
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{e}\nlog:\n{}", gw.log()));
    }
    assert!(total >= 8, "calls ran throughout: {total}");
    let log = gw.log();
    assert!(
        log.contains("starting the new settings beside the old"),
        "{log}"
    );
}

#[tokio::test]
async fn a_call_for_a_down_connectors_tool_names_the_connector_and_its_state() {
    // One failure opens the circuit for a minute: the connector stays down after its crash.
    let config = format!(
        "[connectors.fa]\nkind = \"stdio\"\ncommand = \"python3\"\nargs = [\"{}\", \"--name\", \"fa\"]\nrestart = {{ max_failures = 1, open_for = \"60s\" }}\n{}\n[servers.main]\nconnectors = [\"fa\", \"fb\"]\n",
        fixture("faulty_upstream.py"),
        faulty("fb", "")
    );
    let gw = Gw::start(&config);
    gw.wait_up().await;
    let c = connect(&gw.url("main"), TestClient::new("a")).await;
    let _ = c.peer().call_tool(call("fa__crash", json!({}))).await;
    gw.wait_health("fa is down", |v| v["connectors"]["fa"]["state"] == "down")
        .await;
    let err = c
        .peer()
        .call_tool(call("fa__echo", json!({"message": "x"})))
        .await
        .expect_err("fa is down");
    let msg = err.to_string();
    assert!(
        msg.contains("connector \"fa\"")
            && msg.contains("is down")
            && !msg.contains("unknown tool"),
        "{msg}"
    );
    // A name that never existed is still unknown.
    let err = c
        .peer()
        .call_tool(call("fa__nope", json!({})))
        .await
        .expect_err("unknown");
    assert!(err.to_string().contains("unknown tool"), "{err}");
    // The same for a prompt.
    let err = c
        .peer()
        .get_prompt(
            serde_json::from_value(json!({"name": "fa__greet", "arguments": {"name": "x"}}))
                .unwrap(),
        )
        .await
        .expect_err("fa is down");
    assert!(err.to_string().contains("connector \"fa\""), "{err}");
}

#[tokio::test]
async fn a_half_open_circuit_makes_one_trial_start() {
    // The fixture crashes on start; the circuit opens after 2 failures, for 1 s.
    let marker = format!("manifold-trial-{}", std::process::id());
    let config = format!(
        "[connectors.fa]\nkind = \"stdio\"\ncommand = \"sh\"\nargs = [\"-c\", \"echo start {marker} >&2; exec python3 {} --name fa\"]\nenv = {{ FAULTY_CRASH_ON_START = \"1\" }}\nrestart = {{ initial_backoff = \"50ms\", max_failures = 2, window = \"60s\", open_for = \"1s\" }}\n[servers.main]\nconnectors = [\"fa\"]\n",
        fixture("faulty_upstream.py")
    );
    let gw = Gw::start(&config);
    let starts = || gw.log().matches(&format!("stderr: start {marker}")).count();
    // Two failures open the circuit; then one trial per opening.
    eventually(
        "the circuit to open twice",
        Duration::from_secs(20),
        || async {
            let log = gw.log();
            (log.matches("the trial start after the circuit opened failed")
                .count()
                >= 2)
                .then_some(())
        },
    )
    .await;
    let log = gw.log();
    let opened = log.matches("circuit open after 2 failures").count();
    let trials = log
        .matches("the trial start after the circuit opened failed")
        .count();
    assert_eq!(opened, 1, "{log}");
    // 2 starts before the circuit opened, then exactly one per trial.
    assert_eq!(starts(), 2 + trials, "{log}");
}

#[tokio::test]
async fn a_legacy_connector_offers_only_legacy_versions() {
    let gw = Gw::start(&format!(
        "{}\n[servers.main]\nconnectors = [\"fa\"]\n",
        faulty(
            "fa",
            "era = \"legacy\"\nenv = { FAULTY_DEBUG = \"1\", FAULTY_ECHO_VERSION = \"1\" }"
        )
    ));
    gw.wait_up().await;
    let log = gw.log();
    let offered: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split("initialize offered ").nth(1))
        .collect();
    assert!(!offered.is_empty(), "{log}");
    assert!(
        offered.iter().all(|v| v.starts_with("2025-")),
        "{offered:?}"
    );
    assert!(log.contains("era=\"legacy\""), "{log}");
    assert!(!log.contains("server/discover"), "{log}");
    let c = connect(&gw.url("main"), TestClient::new("a")).await;
    let r = c
        .peer()
        .call_tool(call("fa__echo", json!({"message": "hi"})))
        .await
        .unwrap();
    assert_eq!(text(&r), "Echo: hi");
}

#[tokio::test]
async fn log_lines_to_a_pipe_carry_no_colour_codes() {
    let gw = Gw::start(&one_faulty(""));
    gw.wait_up().await;
    let log = gw.log();
    assert!(log.contains("connector health changed"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escapes in a piped log:\n{log:?}"
    );
}

/// Envelopes the spec refuses, and the JSON-RPC error code each must get.
const BAD_ENVELOPES: &[(&str, i64)] = &[
    (r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#, -32600),
    (r#"{"id":1,"method":"ping"}"#, -32600),
    (r#"{"jsonrpc":2.0,"id":1,"method":"ping"}"#, -32600),
    (r#"{"jsonrpc":"2.0","id":{"a":1},"method":"ping"}"#, -32600),
    (r#"{"jsonrpc":"2.0","id":[1],"method":"ping"}"#, -32600),
    (r#"{"jsonrpc":"2.0","id":true,"method":"ping"}"#, -32600),
    (r#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#, -32600),
    (r#"{"jsonrpc":"2.0","id":1e400,"method":"ping"}"#, -32600),
    (r#"{"jsonrpc":"2.0","id":1,"method":7}"#, -32600),
    (r#"{not json"#, -32700),
    ("", -32700),
];

async fn refused(what: &str, r: reqwest::RequestBuilder, body: &str, code: i64) {
    let resp = r.body(body.to_owned()).send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    assert_eq!(status, 400, "{what}: {body} -> {text}");
    let v: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{what}: {body}: the refusal is JSON-RPC ({e}): {text}"));
    assert_eq!(v["error"]["code"], code, "{what}: {body} -> {v}");
    assert_eq!(v["jsonrpc"], "2.0", "{v}");
    assert!(
        !text.contains("1e400"),
        "{what}: an invalid id is not echoed: {text}"
    );
}

#[tokio::test]
async fn one_json_rpc_validation_on_every_path() {
    let gw = Gw::start(&one_faulty(""));
    gw.wait_up().await;
    let url = gw.url("main");
    let sid = session(&url).await;
    for (body, code) in BAD_ENVELOPES {
        refused("a session, no Origin", post_in(&url, &sid), body, *code).await;
        refused(
            "a session, an allowed Origin",
            post_in(&url, &sid).header("origin", "http://localhost:3000"),
            body,
            *code,
        )
        .await;
        refused("no session", post(&url), body, *code).await;
        refused(
            "2026-07-28",
            post(&url)
                .header("mcp-protocol-version", MODERN_VERSION)
                .header("mcp-method", "ping"),
            body,
            *code,
        )
        .await;
    }
    // The session was negotiated at 2025-11-25: another version in the header is refused.
    let r = post(&url)
        .header("mcp-session-id", &sid)
        .header("mcp-protocol-version", "2024-11-05")
        .body(r#"{"jsonrpc":"2.0","id":5,"method":"ping"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v = message(&r.text().await.unwrap());
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("2025-11-25")),
        "{v}"
    );
    // The session is intact after all of that.
    let ok = rpc(&url, &sid, json!({"jsonrpc":"2.0","id":6,"method":"ping"})).await;
    assert_eq!(ok["result"], json!({}), "{ok}");
    // DELETE of an unknown session: 404.
    let r = http()
        .delete(&url)
        .header("mcp-session-id", "0123456789abcdef0123456789abcdef")
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}
