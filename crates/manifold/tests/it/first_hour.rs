//! What a newcomer meets in the first hour: where the endpoints are (`/`, `/mcp`), readiness
//! (`/readyz`), health times in RFC 3339, a confirmed SIGHUP, a 403 that names the key to set,
//! and a modern upstream without `subscriptions/listen` reported once.

use std::time::Duration;

use serde_json::Value;

use crate::support::*;

/// A stdio connector that never answers `initialize` (so it stays starting for a while).
fn silent(name: &str) -> String {
    format!("\n[connectors.{name}]\nkind = \"stdio\"\ncommand = \"sleep\"\nargs = [\"60\"]\n")
}

async fn readyz(gw: &Gw) -> (u16, Value) {
    let r = http()
        .get(format!("{}/readyz", gw.base))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

#[tokio::test]
async fn readiness_waits_for_every_first_start_and_one_connector_up() {
    // Up, and a connector that is still on its first start: not ready, naming it.
    let cfg = format!(
        "{}{}\n[servers.main]\nconnectors = [\"fa\", \"slow\"]\n",
        faulty("fa", ""),
        silent("slow")
    );
    let gw = Gw::start(&cfg);
    gw.wait_health("fa up", |v| v["connectors"]["fa"]["state"] == "up")
        .await;
    let (status, body) = readyz(&gw).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "starting", "{body}");
    assert_eq!(body["waiting_for"], serde_json::json!(["slow"]), "{body}");

    // Up, and one that failed its first start (and keeps retrying): ready.
    let cfg = format!(
        "{}{}\n[servers.main]\nconnectors = [\"fa\", \"broken\"]\n",
        faulty("fa", ""),
        faulty("broken", "env = { FAULTY_CRASH_ON_START = \"1\" }")
    );
    let gw = Gw::start(&cfg);
    let url = format!("{}/readyz", gw.base);
    eventually(
        "ready with one connector up",
        Duration::from_secs(30),
        || {
            let url = url.clone();
            async move {
                let r = http().get(&url).send().await.map_err(|e| e.to_string())?;
                let status = r.status();
                let body = r.text().await.map_err(|e| e.to_string())?;
                if status == 200 && body.contains("ready") {
                    Ok(())
                } else {
                    Err(format!("{status} {body}"))
                }
            }
        },
    )
    .await;

    // Nothing up at all: unavailable, not "starting" for ever.
    let cfg = format!(
        "{}\n[servers.main]\nconnectors = [\"broken\"]\n",
        faulty("broken", "env = { FAULTY_CRASH_ON_START = \"1\" }")
    );
    let gw = Gw::start(&cfg);
    gw.wait_health("broken failed", |v| {
        v["connectors"]["broken"]["restarts"].as_u64() > Some(0)
    })
    .await;
    let (status, body) = readyz(&gw).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "unavailable", "{body}");

    // Like every route, under the Host policy.
    let r = http()
        .get(format!("{}/readyz", gw.base))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("add it to gateway.allowed_hosts"),
        "the 403 says what to set: {text}"
    );
}

#[tokio::test]
async fn lazy_connectors_do_not_hold_readiness() {
    let cfg = format!(
        "{}{}\n[servers.main]\nconnectors = [\"fa\", \"later\"]\n",
        faulty("fa", ""),
        faulty("later", "start = \"lazy\"")
    );
    let gw = Gw::start(&cfg);
    gw.wait_health("fa up, later idle", |v| {
        v["connectors"]["fa"]["state"] == "up" && v["connectors"]["later"]["state"] == "idle"
    })
    .await;
    let (status, body) = readyz(&gw).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn the_root_and_mcp_say_where_the_virtual_servers_are() {
    let gw = Gw::start(&format!(
        "{}\n[servers.main]\ntitle = \"Main tools\"\nconnectors = [\"fa\"]\n",
        faulty("fa", "")
    ));
    gw.wait_up().await;
    let endpoint = gw.url("main");
    for path in ["/", "/mcp", "/mcp/"] {
        let r = http()
            .get(format!("{}{path}", gw.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "GET {path}");
        let text = r.text().await.unwrap();
        assert!(
            text.contains(&endpoint) && text.contains("Main tools"),
            "GET {path} names the endpoint: {text}"
        );
    }
    // An MCP client posting to the wrong URL gets a JSON-RPC error it can show.
    let r = post(&format!("{}/mcp", gw.base))
        .body(INIT)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["jsonrpc"], "2.0", "{v}");
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("not an MCP endpoint") && msg.contains(&endpoint),
        "{v}"
    );
    // A caller who may not see the list of servers gets the shape, not the names.
    let r = http()
        .get(format!("{}/mcp", gw.base))
        .header("x-forwarded-for", "203.0.113.9")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("/mcp/NAME") && !text.contains("/mcp/main"),
        "{text}"
    );
}

#[tokio::test]
async fn health_times_are_rfc3339_and_sighup_is_confirmed() {
    let gw = Gw::start(&one_faulty(""));
    let h = gw.wait_up().await;
    let c = &h["connectors"]["fa"];
    let since = c["since"].as_str().unwrap_or_else(|| panic!("since: {c}"));
    let shape = since.len() == 20
        && since.ends_with('Z')
        && since.as_bytes()[4] == b'-'
        && since.as_bytes()[10] == b'T'
        && since[..4].parse::<u32>().is_ok_and(|y| y >= 2024);
    assert!(shape, "since is RFC 3339 in UTC: {since}");
    assert_eq!(c["reached"], true, "{c}");

    let pid = nix::unistd::Pid::from_raw(gw.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    eventually("the SIGHUP answered", Duration::from_secs(10), || async {
        gw.log()
            .contains("SIGHUP: the config is unchanged")
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_modern_upstream_without_listen_is_reported_once() {
    let Some(p) = Peers::get("a_modern_upstream_without_listen_is_reported_once") else {
        return;
    };
    // mcp-server-time speaks 2026-07-28 but offers no subscriptions/listen.
    let gw = Gw::start(&format!(
        "[connectors.time]\nkind = \"stdio\"\ncommand = \"{}\"\n\n[servers.main]\nconnectors = [\"time\"]\n",
        p.venv_bin("mcp-server-time")
    ));
    gw.wait_up().await;
    eventually("the listen report", Duration::from_secs(20), || async {
        gw.log()
            .contains("does not offer subscriptions/listen")
            .then_some(())
    })
    .await;
    let log = gw.log();
    assert!(
        !log.contains("subscriptions/listen to the upstream failed"),
        "no warning (it used to repeat every 10 s): {log}"
    );
    assert_eq!(
        log.matches("does not offer subscriptions/listen").count(),
        1,
        "{log}"
    );
}
