//! Fault tests against the misbehaving fixture upstream (`tests/fixtures/faulty_upstream.py`,
//! standard-library Python only): crashes, hangs, garbage, floods, huge results, tool-list
//! changes, id reuse across clients, and attribution of server→client requests.

#![allow(deprecated)] // resources/subscribe is legacy-only, which is what these tests speak

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::*;

fn two_faulty(extra_a: &str) -> String {
    format!(
        "{}{}\n[servers.main]\nconnectors = [\"fa\", \"fb\"]\n",
        faulty("fa", extra_a),
        faulty("fb", "")
    )
}

#[tokio::test]
async fn crash_mid_call_fails_fast_and_the_connector_comes_back() {
    let gw = Gw::start(&two_faulty(""));
    gw.wait_up().await;
    let c = connect(&gw.url("main"), TestClient::new("a")).await;
    assert!(tool_names(&c).await.contains(&"fa__crash".to_string()));
    let t0 = Instant::now();
    let err = c
        .peer()
        .call_tool(call("fa__crash", json!({})))
        .await
        .expect_err("a crash is an error");
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "failed after {:?}",
        t0.elapsed()
    );
    let msg = err.to_string();
    assert!(msg.contains("fa"), "the error names the connector: {msg}");
    // The other connector never noticed.
    let r = c
        .peer()
        .call_tool(call("fb__echo", json!({"message": "still here"})))
        .await
        .unwrap();
    assert_eq!(text(&r), "Echo: still here");
    // fa restarts (backoff 100ms) and its tools return.
    gw.wait_health("fa restarted", |v| {
        v["connectors"]["fa"]["state"] == "up"
            && v["connectors"]["fa"]["restarts"].as_u64() >= Some(1)
    })
    .await;
    let r = eventually("fa to answer again", Duration::from_secs(20), || async {
        c.peer()
            .call_tool(call("fa__echo", json!({"message": "back"})))
            .await
    })
    .await;
    assert_eq!(text(&r), "Echo: back");
}

#[tokio::test]
async fn a_call_to_a_dead_connector_fails_at_once_naming_it() {
    let config = format!(
        "{}{}\n[servers.main]\nconnectors = [\"fa\", \"fb\"]\n",
        faulty("fa", "env = { FAULTY_CRASH_ON_START = \"1\" }\nrestart = { initial_backoff = \"100ms\", max_failures = 2, window = \"60s\", open_for = \"60s\" }")
            .replace("restart = { initial_backoff = \"100ms\", max_backoff = \"1s\" }\n", ""),
        faulty("fb", "")
    );
    let gw = Gw::start(&config);
    let h = gw
        .wait_health("fa circuit open", |v| {
            v["connectors"]["fa"]["state"] == "down" && v["connectors"]["fb"]["state"] == "up"
        })
        .await;
    let err = h["connectors"]["fa"]["last_error"].as_str().unwrap();
    assert!(err.contains("circuit open"), "{err}");
    let summary: serde_json::Value = http()
        .get(format!("{}/healthz", gw.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(summary["status"], "degraded");
    assert_eq!(summary["connectors"]["fa"], "down");
    let c = connect(&gw.url("main"), TestClient::new("a")).await;
    let names = tool_names(&c).await;
    assert!(
        names.iter().all(|n| !n.starts_with("fa__")),
        "a dead connector's tools drop out: {names:?}"
    );
    assert!(names.contains(&"fb__echo".to_string()));
    let t0 = Instant::now();
    let err = c
        .peer()
        .call_tool(call("fa__echo", json!({"message": "x"})))
        .await
        .expect_err("unknown now");
    assert!(t0.elapsed() < Duration::from_secs(1));
    assert!(err.to_string().contains("fa__echo"), "{err}");
}

#[tokio::test]
async fn a_hung_call_times_out_while_other_calls_proceed() {
    let gw = Gw::start(&two_faulty("call_timeout = \"1500ms\""));
    gw.wait_up().await;
    let c = connect(&gw.url("main"), TestClient::new("a")).await;
    let peer = c.peer().clone();
    let hung = tokio::spawn(async move { peer.call_tool(call("fa__hang", json!({}))).await });
    // The same upstream still answers other calls while one hangs.
    for i in 0..5 {
        let r = c
            .peer()
            .call_tool(call("fa__echo", json!({"message": i.to_string()})))
            .await
            .unwrap();
        assert_eq!(text(&r), format!("Echo: {i}"));
    }
    let err = hung.await.unwrap().expect_err("hang must time out");
    assert!(err.to_string().contains("did not answer within"), "{err}");
}

#[tokio::test]
async fn garbage_floods_and_huge_output_are_survived() {
    let gw = Gw::start(&two_faulty(
        "max_line_bytes = 1048576\nstderr_lines_per_minute = 50",
    ));
    gw.wait_up().await;
    let c = connect(&gw.url("main"), TestClient::new("a")).await;
    let r = c
        .peer()
        .call_tool(call("fa__garbage", json!({})))
        .await
        .unwrap();
    assert_eq!(text(&r), "after garbage");
    let r = c
        .peer()
        .call_tool(call("fa__huge_line", json!({"bytes": 3_000_000})))
        .await
        .unwrap();
    assert!(!text(&r).is_empty());
    let r = c
        .peer()
        .call_tool(call("fa__flood_stderr", json!({"lines": 3000})))
        .await
        .unwrap();
    assert_eq!(text(&r), "flooded");
    // A 10 MB result on a connector whose line cap allows it.
    let r = c
        .peer()
        .call_tool(call("fb__huge", json!({"bytes": 10_000_000})))
        .await
        .unwrap();
    assert_eq!(text(&r).len(), 10_000_000);
    // Still healthy, still answering.
    let r = c
        .peer()
        .call_tool(call("fa__echo", json!({"message": "ok"})))
        .await
        .unwrap();
    assert_eq!(text(&r), "Echo: ok");
    let log = gw.log();
    assert!(
        log.contains("dropped a stdout line that is not a JSON-RPC object"),
        "garbage is logged"
    );
    assert!(log.contains("dropped a stdout line that is not valid UTF-8"));
    assert!(log.contains("dropped an oversized stdout line"));
    assert!(
        log.contains("rate limit") || log.matches("stderr:").count() <= 60,
        "stderr is capped"
    );
    let h: serde_json::Value = http()
        .get(format!("{}/healthz", gw.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h["status"], "ok", "{h}");
}

#[tokio::test]
async fn tool_list_changes_reach_the_client() {
    let gw = Gw::start(&two_faulty(""));
    gw.wait_up().await;
    let client = TestClient::new("a");
    let c = connect(&gw.url("main"), client.clone()).await;
    assert!(!tool_names(&c).await.contains(&"fa__added_tool".to_string()));
    c.peer()
        .call_tool(call("fa__change_tools", json!({})))
        .await
        .unwrap();
    client
        .wait_event("tools/list_changed", |e| e == "tools_changed")
        .await;
    eventually("added_tool to appear", Duration::from_secs(10), || async {
        let names = tool_names(&c).await;
        if names.contains(&"fa__added_tool".to_string()) {
            Ok(())
        } else {
            Err(format!("tools: {names:?}"))
        }
    })
    .await;
    let r = c
        .peer()
        .call_tool(call("fa__added_tool", json!({"message": "new"})))
        .await
        .unwrap();
    assert!(text(&r).contains("new"), "{}", text(&r));
}

#[tokio::test]
async fn two_clients_with_the_same_ids_get_only_their_own_answers() {
    let gw = Gw::start(&two_faulty(""));
    gw.wait_up().await;
    // rmcp numbers requests from 0 in every client, so both send identical ids.
    let (ca, cb) = (TestClient::new("a"), TestClient::new("b"));
    let a = connect(&gw.url("main"), ca.clone()).await;
    let b = connect(&gw.url("main"), cb.clone()).await;
    let run = |c: &Client, tag: &'static str| {
        let peer = c.peer().clone();
        async move {
            for i in 0..40 {
                let msg = format!("{tag}-{i}");
                let r = peer
                    .call_tool(call("fa__echo", json!({"message": msg})))
                    .await
                    .unwrap();
                assert_eq!(text(&r), format!("Echo: {msg}"));
            }
        }
    };
    tokio::join!(run(&a, "a"), run(&b, "b"));
    // Progress goes only to the client whose call produced it.
    let pa = a.peer().clone();
    let pb = b.peer().clone();
    let slow = |p: rmcp::Peer<rmcp::RoleClient>| async move {
        let mut params = call("fa__slow", json!({"ms": 300, "steps": 3}));
        params.meta = Some(serde_json::from_value(json!({"progressToken": "tok"})).unwrap());
        p.call_tool(params).await.unwrap()
    };
    let (ra, rb) = tokio::join!(slow(pa), slow(pb));
    assert_eq!(text(&ra), "done");
    assert_eq!(text(&rb), "done");
    // rmcp delivers notifications on their own tasks, so the last may trail the result a little.
    for c in [&ca, &cb] {
        c.wait_event("third progress notification", |e| {
            e.starts_with("progress:") && e.ends_with(":3")
        })
        .await;
        assert_eq!(
            c.events()
                .iter()
                .filter(|e| e.starts_with("progress:"))
                .count(),
            3,
            "{:?}",
            c.events()
        );
    }
}

#[tokio::test]
async fn sampling_elicitation_and_roots_are_relayed_to_the_caller() {
    let gw = Gw::start(&two_faulty(""));
    gw.wait_up().await;
    let client = TestClient::new("alice");
    let c = connect(&gw.url("main"), client.clone()).await;
    let r = c
        .peer()
        .call_tool(call("fa__sample", json!({"prompt": "hi"})))
        .await
        .unwrap();
    assert_eq!(text(&r), "sampled: reply from alice");
    let r = c
        .peer()
        .call_tool(call("fa__elicit", json!({"message": "who?"})))
        .await
        .unwrap();
    assert_eq!(text(&r), "elicited: accept {\"name\":\"alice\"}");
    let r = c
        .peer()
        .call_tool(call("fa__roots", json!({})))
        .await
        .unwrap();
    assert!(text(&r).contains("file:///alice"), "{}", text(&r));
    // A client without the capability gets a clear error relayed, not a hang.
    let mut bare = TestClient::new("bare");
    bare.capable = false;
    let c2 = connect(&gw.url("main"), bare).await;
    let t0 = Instant::now();
    let r = c2
        .peer()
        .call_tool(call("fa__sample", json!({"prompt": "hi"})))
        .await
        .unwrap();
    assert!(t0.elapsed() < Duration::from_secs(3));
    assert_eq!(r.is_error, Some(true));
    assert!(text(&r).contains("sampling"), "{}", text(&r));
}

#[tokio::test]
async fn concurrent_sampling_on_a_shared_upstream_is_never_misdelivered() {
    let gw = Gw::start(&two_faulty(FAULTY_DEBUG));
    gw.wait_up().await;
    let (ca, cb) = (TestClient::new("a"), TestClient::new("b"));
    let a = connect(&gw.url("main"), ca.clone()).await;
    let b = connect(&gw.url("main"), cb.clone()).await;
    // Keep a call of each client in flight, then let both trigger sampling.
    let (pa, pb) = (a.peer().clone(), b.peer().clone());
    let ha = tokio::spawn(async move {
        pa.call_tool(call("fa__slow", json!({"ms": 1500, "steps": 1})))
            .await
    });
    let hb = tokio::spawn(async move {
        pb.call_tool(call("fa__slow", json!({"ms": 1500, "steps": 1})))
            .await
    });
    eventually(
        "both slow calls to reach fa",
        Duration::from_secs(10),
        || async {
            let n = upstream_requests(&gw.log(), "tools/call");
            if n >= 2 {
                Ok(())
            } else {
                Err(format!("{n} tools/call requests reached fa"))
            }
        },
    )
    .await;
    let (sa, sb) = tokio::join!(
        a.peer()
            .call_tool(call("fa__sample", json!({"prompt": "from a"}))),
        b.peer()
            .call_tool(call("fa__sample", json!({"prompt": "from b"})))
    );
    for (r, own, other) in [(sa.unwrap(), "a", "b"), (sb.unwrap(), "b", "a")] {
        let t = text(&r);
        assert!(
            !t.contains(&format!("reply from {other}")),
            "client {own} got {other}'s sampling answer: {t}"
        );
        // Both are answered, each by its own client: calls that may ask take turns.
        assert_eq!(t, format!("sampled: reply from {own}"), "{r:?}");
    }
    // Neither client was asked a question that belongs to the other.
    assert!(
        ca.events().iter().all(|e| !e.contains("from b")),
        "{:?}",
        ca.events()
    );
    assert!(
        cb.events().iter().all(|e| !e.contains("from a")),
        "{:?}",
        cb.events()
    );
    ha.await.unwrap().unwrap();
    hb.await.unwrap().unwrap();
}

#[tokio::test]
async fn cancellation_reaches_the_upstream_and_the_session_survives() {
    let gw = Gw::start(&two_faulty(FAULTY_DEBUG));
    gw.wait_up().await;
    let client = TestClient::new("a");
    let c = connect(&gw.url("main"), client.clone()).await;
    let params = call("fa__slow", json!({"ms": 10_000, "steps": 100}));
    let handle = c
        .peer()
        .send_cancellable_request(
            rmcp::model::ClientRequest::CallToolRequest(rmcp::model::Request::new(params)),
            rmcp::service::PeerRequestOptions::no_options(),
        )
        .await
        .unwrap();
    eventually(
        "the slow call to reach fa",
        Duration::from_secs(10),
        || async { (upstream_requests(&gw.log(), "tools/call") >= 1).then_some(()) },
    )
    .await;
    let t0 = Instant::now();
    handle.cancel(Some("test".into())).await.unwrap();
    assert!(t0.elapsed() < Duration::from_secs(2));
    let r = c
        .peer()
        .call_tool(call("fa__echo", json!({"message": "after"})))
        .await
        .unwrap();
    assert_eq!(text(&r), "Echo: after");
}

#[tokio::test]
async fn meta_and_pinned_arguments_pass_through() {
    let config = format!(
        "{}\n[servers.main]\nconnectors = [\"fa\"]\n[servers.main.curation.fa]\nexclude = [\"crash*\"]\n[servers.main.curation.fa.tools.echo]\nrename = \"say\"\ndescription = \"Says it\"\npin_args = {{ message = \"pinned\" }}\n",
        faulty("fa", "")
    );
    let gw = Gw::start(&config);
    gw.wait_up().await;
    let c = connect(&gw.url("main"), TestClient::new("a")).await;
    let tools = c.peer().list_all_tools().await.unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    assert!(
        !names.contains(&"fa__crash") && !names.contains(&"fa__echo"),
        "{names:?}"
    );
    let say = tools
        .iter()
        .find(|t| t.name == "fa__say")
        .expect("renamed tool");
    assert_eq!(say.description.as_deref(), Some("Says it"));
    assert!(
        say.input_schema
            .get("properties")
            .and_then(|p| p.get("message"))
            .is_none(),
        "pinned args are not advertised"
    );
    let mut params = call("fa__say", json!({"message": "client value"}));
    params.meta = Some(
        serde_json::from_value(json!({"trace": "t-1", "io.example/custom": {"k": [1, 2]}}))
            .unwrap(),
    );
    let r = c.peer().call_tool(params).await.unwrap();
    assert_eq!(text(&r), "Echo: pinned");
    let seen = &r.meta.as_ref().expect("result _meta survives")["seen_meta"];
    assert_eq!(
        seen["trace"], "t-1",
        "request _meta reaches the upstream: {seen}"
    );
    assert_eq!(seen["io.example/custom"], json!({"k": [1, 2]}));
    let err = c
        .peer()
        .call_tool(call("fa__crash", json!({})))
        .await
        .expect_err("excluded tools cannot be called");
    assert!(err.to_string().contains("unknown tool"), "{err}");
}

#[tokio::test]
async fn resources_prompts_completion_and_subscriptions_route_by_connector() {
    let gw = Gw::start(&two_faulty(""));
    gw.wait_up().await;
    let client = TestClient::new("a");
    let c = connect(&gw.url("main"), client.clone()).await;
    let res = c.peer().list_all_resources().await.unwrap();
    let uris: Vec<&str> = res.iter().map(|r| r.uri.as_str()).collect();
    assert_eq!(uris, ["fa+fixture://static", "fb+fixture://static"]);
    let read: rmcp::model::ReadResourceRequestParams =
        serde_json::from_value(json!({"uri": "fb+fixture://item/42"})).unwrap();
    let r = c.peer().read_resource(read).await.unwrap();
    let v = serde_json::to_value(&r.contents[0]).unwrap();
    assert_eq!(v["uri"], "fb+fixture://item/42");
    assert_eq!(v["text"], "item 42");
    let prompts = prompt_names(&c).await;
    assert_eq!(prompts, ["fa__greet", "fb__greet"]);
    let get: rmcp::model::GetPromptRequestParams =
        serde_json::from_value(json!({"name": "fb__greet", "arguments": {"name": "zoe"}})).unwrap();
    let p = c.peer().get_prompt(get).await.unwrap();
    assert!(serde_json::to_string(&p).unwrap().contains("zoe"));
    let comp: rmcp::model::CompleteRequestParams = serde_json::from_value(json!({
        "ref": {"type": "ref/prompt", "name": "fa__greet"}, "argument": {"name": "name", "value": "a"}
    }))
    .unwrap();
    let r = c.peer().complete(comp).await.unwrap();
    assert_eq!(r.completion.values, ["alice"]);
    let sub: rmcp::model::SubscribeRequestParams =
        serde_json::from_value(json!({"uri": "fa+fixture://static"})).unwrap();
    c.peer().subscribe(sub).await.unwrap();
    c.peer()
        .call_tool(call(
            "fa__touch_resource",
            json!({"uri": "fixture://static"}),
        ))
        .await
        .unwrap();
    client
        .wait_event("resources/updated", |e| e == "updated:fa+fixture://static")
        .await;
    let bad: rmcp::model::ReadResourceRequestParams =
        serde_json::from_value(json!({"uri": "nobody+x://y"})).unwrap();
    let err = c
        .peer()
        .read_resource(bad)
        .await
        .expect_err("unknown resource");
    assert!(err.to_string().contains("resource not found"), "{err}");
}

#[tokio::test]
async fn stdio_children_are_killed_as_a_process_group() {
    let marker = format!("manifold-pg-test-{}", std::process::id());
    // `sh -c "...; true"` forks, so python is a grandchild of the gateway, like npx's node.
    let config = format!(
        "[connectors.wrapped]\nkind = \"stdio\"\ncommand = \"sh\"\nargs = [\"-c\", \"python3 {} --name {marker}; true\"]\n[servers.main]\nconnectors = [\"wrapped\"]\n",
        fixture("faulty_upstream.py")
    );
    let mut gw = Gw::start(&config);
    gw.wait_up().await;
    let running = || {
        std::process::Command::new("pgrep")
            .args(["-f", &marker])
            .output()
            .map(|o| !o.stdout.is_empty())
            .unwrap_or(false)
    };
    assert!(running(), "the grandchild runs");
    let status = gw.terminate();
    assert!(status.success(), "graceful exit: {status:?}");
    eventually(
        &format!("grandchild {marker} to end with the gateway"),
        Duration::from_secs(5),
        || async { (!running()).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn sigterm_drains_in_flight_calls_then_exits_promptly() {
    let gw = Gw::start(&format!(
        "{}\n[servers.main]\nconnectors = [\"fa\"]\n",
        faulty("fa", FAULTY_DEBUG)
    ));
    gw.wait_up().await;
    let c = connect(&gw.url("main"), TestClient::new("a")).await;
    let peer = c.peer().clone();
    let call = tokio::spawn(async move {
        peer.call_tool(call("fa__slow", json!({"ms": 1500, "steps": 3})))
            .await
    });
    eventually(
        "the slow call to reach fa",
        Duration::from_secs(10),
        || async { (upstream_requests(&gw.log(), "tools/call") >= 1).then_some(()) },
    )
    .await;
    let pid = gw.child.id();
    let t0 = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let r = call
        .await
        .unwrap()
        .expect("the in-flight call completes during the drain");
    assert_eq!(text(&r), "done");
    // The client still holds its session stream open; the gateway must not wait for it.
    let mut gw = gw;
    let status = tokio::task::spawn_blocking(move || {
        let s = gw.terminate();
        (s, gw)
    })
    .await
    .unwrap()
    .0;
    assert!(status.success(), "{status:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(8),
        "shutdown took {:?}",
        t0.elapsed()
    );
}

#[tokio::test]
async fn children_get_only_the_allow_listed_environment() {
    // The wrapper prints its environment to stderr (which lands in the gateway log), then runs
    // the fixture.
    let config = format!(
        "[connectors.envdump]\nkind = \"stdio\"\ncommand = \"sh\"\nargs = [\"-c\", \"env | sed 's/^/ENVDUMP /' >&2; exec python3 {}\"]\nenv = {{ EXPLICIT = \"set-by-config\" }}\n[servers.main]\nconnectors = [\"envdump\"]\n",
        fixture("faulty_upstream.py")
    );
    // SAFETY of the canary: the test process's environment is inherited by the gateway only.
    let gw = Gw::start_with_env(&config, &[("MANIFOLD_TEST_CANARY", "canary-secret-value")]);
    gw.wait_up().await;
    let log = gw.log();
    assert!(log.contains("ENVDUMP EXPLICIT=set-by-config"), "{log}");
    assert!(
        log.contains("ENVDUMP PATH="),
        "PATH is passed through by default"
    );
    assert!(
        !log.contains("canary-secret-value"),
        "the gateway's own environment leaked to a child"
    );
}

#[tokio::test]
async fn lazy_connectors_start_on_first_use() {
    let config = format!(
        "{}\n[servers.main]\nconnectors = [\"lazy\"]\n",
        faulty("lazy", "start = \"lazy\"")
    );
    let gw = Gw::start(&config);
    // Not synchronisation: nothing is expected to happen; this gives an (eager, wrong) start
    // the time to show in the health.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let h: serde_json::Value = http()
        .get(format!("{}/healthz", gw.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        h["connectors"]["lazy"], "idle",
        "not started before anyone uses it"
    );
    assert_eq!(h["status"], "ok", "an unused lazy connector is healthy");
    let c = connect(&gw.url("main"), TestClient::new("a")).await;
    let r = c
        .peer()
        .call_tool(call("lazy__echo", json!({"message": "woke"})))
        .await
        .unwrap();
    assert_eq!(text(&r), "Echo: woke");
    assert!(tool_names(&c).await.contains(&"lazy__echo".to_string()));
}

#[tokio::test]
async fn upstream_log_messages_reach_the_client() {
    let gw = Gw::start(&one_faulty(""));
    gw.wait_up().await;
    let client = TestClient::new("a");
    let c = connect(&gw.url("main"), client.clone()).await;
    c.peer()
        .call_tool(call(
            "fa__log",
            json!({"level": "warning", "message": "from upstream"}),
        ))
        .await
        .unwrap();
    client
        .wait_event("log message", |e| e.contains("from upstream"))
        .await;
}

#[tokio::test]
async fn per_client_sessions_make_concurrent_sampling_unambiguous() {
    let marker = format!("manifold-per-client-{}", std::process::id());
    let config = format!(
        "[connectors.pc]\nkind = \"stdio\"\ncommand = \"python3\"\nargs = [\"{}\", \"--name\", \"{marker}\"]\n{FAULTY_DEBUG}\nsessions = \"per_client\"\nmax_sessions = 2\n[servers.main]\nconnectors = [\"pc\"]\n",
        fixture("faulty_upstream.py")
    );
    let gw = Gw::start(&config);
    gw.wait_up().await;
    let processes = || {
        let o = std::process::Command::new("pgrep")
            .args(["-f", &marker])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).lines().count()
    };
    let (ca, cb) = (TestClient::new("a"), TestClient::new("b"));
    let a = connect(&gw.url("main"), ca.clone()).await;
    let b = connect(&gw.url("main"), cb.clone()).await;
    // Both clients keep a call in flight and ask for sampling at the same time.
    let (pa, pb) = (a.peer().clone(), b.peer().clone());
    let ha = tokio::spawn(async move {
        pa.call_tool(call("pc__slow", json!({"ms": 1000, "steps": 1})))
            .await
    });
    let hb = tokio::spawn(async move {
        pb.call_tool(call("pc__slow", json!({"ms": 1000, "steps": 1})))
            .await
    });
    eventually(
        "both slow calls to reach their sessions",
        Duration::from_secs(10),
        || async {
            let n = upstream_requests(&gw.log(), "tools/call");
            if n >= 2 {
                Ok(())
            } else {
                Err(format!("{n} tools/call requests reached pc"))
            }
        },
    )
    .await;
    let (sa, sb) = tokio::join!(
        a.peer()
            .call_tool(call("pc__sample", json!({"prompt": "from a"}))),
        b.peer()
            .call_tool(call("pc__sample", json!({"prompt": "from b"})))
    );
    assert_eq!(text(&sa.unwrap()), "sampled: reply from a");
    assert_eq!(text(&sb.unwrap()), "sampled: reply from b");
    ha.await.unwrap().unwrap();
    hb.await.unwrap().unwrap();
    // One shared instance (for the catalog) plus one per client session.
    assert_eq!(processes(), 3);
    // A third client is over max_sessions and is told so.
    let c = connect(&gw.url("main"), TestClient::new("c")).await;
    let err = c
        .peer()
        .call_tool(call("pc__echo", json!({"message": "x"})))
        .await
        .expect_err("over the cap");
    assert!(err.to_string().contains("max_sessions"), "{err}");
    // Ending a client session stops its upstream session.
    drop(c);
    a.cancel().await.unwrap();
    eventually(
        "the ended session's upstream to stop",
        Duration::from_secs(10),
        || async {
            match processes() {
                2 => Ok(()),
                n => Err(format!("{n} processes")),
            }
        },
    )
    .await;
}

/// A per-client upstream session's list change reaches its own client, whose lists then come
/// from its own session; another client's do not change.
#[tokio::test]
async fn list_changes_of_a_per_client_session_reach_their_client() {
    let gw = Gw::start(&format!(
        "{}\n[servers.main]\nconnectors = [\"pc\"]\n",
        faulty("pc", "sessions = \"per_client\"")
    ));
    gw.wait_up().await;
    let (ca, cb) = (TestClient::new("a"), TestClient::new("b"));
    let a = connect(&gw.url("main"), ca.clone()).await;
    let b = connect(&gw.url("main"), cb.clone()).await;
    for c in [&a, &b] {
        let r = c
            .peer()
            .call_tool(call("pc__echo", json!({"message": "start my session"})))
            .await
            .unwrap();
        assert_eq!(text(&r), "Echo: start my session");
    }
    let r = a
        .peer()
        .call_tool(call("pc__change_tools", json!({})))
        .await
        .unwrap();
    assert_ne!(r.is_error, Some(true), "{r:?}");
    ca.wait_event("a's tools list_changed", |e| e == "tools_changed")
        .await;
    assert!(
        tool_names(&a).await.contains(&"pc__added_tool".to_owned()),
        "a lists its own session's tools"
    );
    let r = a
        .peer()
        .call_tool(call("pc__added_tool", json!({"message": "mine"})))
        .await
        .unwrap();
    assert_ne!(r.is_error, Some(true), "a can call it: {r:?}");
    assert!(!tool_names(&b).await.contains(&"pc__added_tool".to_owned()));
    assert!(
        !cb.events().iter().any(|e| e == "tools_changed"),
        "b's view did not change: {:?}",
        cb.events()
    );
}

/// A legacy upstream forgets its subscriptions when it restarts; the connector renews the
/// watched ones on the new session, so clients keep getting `resources/updated`.
#[tokio::test]
async fn resource_subscriptions_survive_an_upstream_restart() {
    let gw = Gw::start(&one_faulty(""));
    gw.wait_up().await;
    let client = TestClient::new("a");
    let c = connect(&gw.url("main"), client.clone()).await;
    let sub: rmcp::model::SubscribeRequestParams =
        serde_json::from_value(json!({"uri": "fa+fixture://static"})).unwrap();
    c.peer().subscribe(sub).await.unwrap();
    let touch = || async {
        text(
            &c.peer()
                .call_tool(call(
                    "fa__touch_resource",
                    json!({"uri": "fixture://static"}),
                ))
                .await
                .unwrap(),
        )
    };
    assert_eq!(touch().await, "touched fixture://static");
    client
        .wait_event("resources/updated", |e| e == "updated:fa+fixture://static")
        .await;
    let _ = c.peer().call_tool(call("fa__crash", json!({}))).await;
    gw.wait_health("fa restarted", |v| {
        v["connectors"]["fa"]["state"] == "up"
            && v["connectors"]["fa"]["restarts"].as_u64() >= Some(1)
    })
    .await;
    // The renewal runs beside the restart; give it a moment.
    eventually(
        "the restarted upstream to be subscribed again",
        Duration::from_secs(10),
        || async {
            match touch().await {
                t if t == "touched fixture://static" => Ok(()),
                t => Err(t),
            }
        },
    )
    .await;
    let updates = || {
        client
            .events()
            .iter()
            .filter(|e| *e == "updated:fa+fixture://static")
            .count()
    };
    eventually(
        "an update after the restart",
        Duration::from_secs(10),
        || async { (updates() >= 2).then_some(()) },
    )
    .await;
}

/// With `sessions = "per_client"` each client's subscription lives in its own upstream
/// session: an update there reaches that client, and only that client.
#[tokio::test]
async fn per_client_subscriptions_deliver_to_their_own_client() {
    let gw = Gw::start(&format!(
        "{}\n[servers.main]\nconnectors = [\"pc\"]\n",
        faulty("pc", "sessions = \"per_client\"")
    ));
    gw.wait_up().await;
    let (ca, cb) = (TestClient::new("a"), TestClient::new("b"));
    let a = connect(&gw.url("main"), ca.clone()).await;
    let b = connect(&gw.url("main"), cb.clone()).await;
    for c in [&a, &b] {
        let sub: rmcp::model::SubscribeRequestParams =
            serde_json::from_value(json!({"uri": "pc+fixture://static"})).unwrap();
        c.peer().subscribe(sub).await.unwrap();
    }
    // a's upstream session changes the resource; b's does not.
    let r = a
        .peer()
        .call_tool(call(
            "pc__touch_resource",
            json!({"uri": "fixture://static"}),
        ))
        .await
        .unwrap();
    assert_eq!(text(&r), "touched fixture://static");
    ca.wait_event("resources/updated", |e| e == "updated:pc+fixture://static")
        .await;
    // b hears nothing of a's upstream session (give a stray event the time to arrive).
    let r = b
        .peer()
        .call_tool(call("pc__echo", json!({"message": "sync"})))
        .await
        .unwrap();
    assert_eq!(text(&r), "Echo: sync");
    // Not synchronisation: nothing is expected to arrive; a stray event would within this.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !cb.events().iter().any(|e| e.starts_with("updated:")),
        "{:?}",
        cb.events()
    );
    // And b's own update reaches b.
    b.peer()
        .call_tool(call(
            "pc__touch_resource",
            json!({"uri": "fixture://static"}),
        ))
        .await
        .unwrap();
    cb.wait_event("resources/updated", |e| e == "updated:pc+fixture://static")
        .await;
}
