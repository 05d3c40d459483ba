//! Hot reload: file changes and SIGHUP apply without a restart and without dropping unaffected
//! sessions; an invalid file is rejected and the old config keeps serving; reload under load.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::*;

fn config(servers: &str, extra_connectors: &str, watch: bool) -> String {
    format!(
        "[gateway]\nwatch = {watch}\n{}{extra_connectors}\n{servers}",
        faulty("fa", "")
    )
}

async fn wait_for_tool(c: &Client, name: &str, present: bool) {
    eventually(
        &format!("tool {name} to become present={present}"),
        Duration::from_secs(20),
        || async {
            let names = tool_names(c).await;
            if names.iter().any(|n| n == name) == present {
                Ok(())
            } else {
                Err(format!("tools: {names:?}"))
            }
        },
    )
    .await;
}

#[tokio::test]
async fn file_changes_apply_without_dropping_sessions() {
    let gw = Gw::start(&config("[servers.main]\nconnectors = [\"fa\"]\n", "", true));
    gw.wait_up().await;
    let client = TestClient::new("a");
    let c = connect(&gw.url("main"), client.clone()).await;
    assert!(tool_names(&c).await.contains(&"fa__echo".to_string()));

    // Add a connector and curate: the live session is told, and sees the new list.
    let next = config(
        "[servers.main]\nconnectors = [\"fa\", \"fb\"]\n[servers.main.curation.fa.tools.echo]\nrename = \"say\"\n",
        &faulty("fb", ""),
        true,
    );
    std::fs::write(gw.config_path(), next).unwrap();
    client
        .wait_event("tools/list_changed after reload", |e| e == "tools_changed")
        .await;
    wait_for_tool(&c, "fb__echo", true).await;
    wait_for_tool(&c, "fa__say", true).await;
    let r = c
        .peer()
        .call_tool(call("fa__say", json!({"message": "renamed"})))
        .await
        .unwrap();
    assert_eq!(text(&r), "Echo: renamed");

    // An invalid file is rejected; the running config keeps serving this same session.
    std::fs::write(
        gw.config_path(),
        "[connectors.broken]\nkind = \"stdio\"\ncomand = \"x\"\n",
    )
    .unwrap();
    eventually(
        "the bad config to be reported",
        Duration::from_secs(10),
        || async {
            // The summary and each problem are separate lines: wait for both.
            let log = gw.log();
            if log.contains("config reload rejected")
                && log.contains("manifold.toml:3:1: unknown field `comand`")
            {
                Ok(())
            } else {
                Err(format!("the log names file, line and key; log:\n{log}"))
            }
        },
    )
    .await;
    let r = c
        .peer()
        .call_tool(call("fb__echo", json!({"message": "still"})))
        .await
        .unwrap();
    assert_eq!(text(&r), "Echo: still");

    // Removing a connector removes its tools.
    std::fs::write(
        gw.config_path(),
        config("[servers.main]\nconnectors = [\"fa\"]\n", "", true),
    )
    .unwrap();
    wait_for_tool(&c, "fb__echo", false).await;
    let r = c
        .peer()
        .call_tool(call("fa__echo", json!({"message": "same session"})))
        .await
        .unwrap();
    assert_eq!(text(&r), "Echo: same session");
}

#[tokio::test]
async fn sighup_reloads_when_watching_is_off() {
    let gw = Gw::start(&config(
        "[servers.main]\nconnectors = [\"fa\"]\n",
        "",
        false,
    ));
    gw.wait_up().await;
    let c = connect(&gw.url("main"), TestClient::new("a")).await;
    std::fs::write(
        gw.config_path(),
        config("[servers.main]\nconnectors = [\"fa\"]\n[servers.main.curation.fa]\nexclude = [\"echo\"]\n", "", false),
    )
    .unwrap();
    // Not synchronisation: nothing should happen here; this waits longer than a watcher (were
    // one wrongly running) would take to apply the change (it settles for 150 ms).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        tool_names(&c).await.contains(&"fa__echo".to_string()),
        "no reload without the signal"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(gw.child.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    wait_for_tool(&c, "fa__echo", false).await;
}

#[tokio::test]
async fn reload_under_load_loses_no_call() {
    let gw = Gw::start(&config(
        "[servers.main]\nconnectors = [\"fa\", \"fb\"]\n",
        &faulty("fb", ""),
        true,
    ));
    gw.wait_up().await;
    let c = connect(&gw.url("main"), TestClient::new("a")).await;
    let peer = c.peer().clone();
    let load = tokio::spawn(async move {
        let mut n = 0;
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(4) {
            let r = peer
                .call_tool(call("fa__echo", json!({"message": n.to_string()})))
                .await
                .expect("no call fails during reloads");
            assert_eq!(text(&r), format!("Echo: {n}"));
            n += 1;
        }
        n
    });
    // Change fb (restarting it) and the curation of fa, repeatedly, while fa serves calls.
    for i in 0..6 {
        let fb = faulty("fb", &format!("call_timeout = \"{}s\"", 10 + i));
        let servers = format!(
            "[servers.main]\nconnectors = [\"fa\", \"fb\"]\n[servers.main.curation.fa.tools.add]\ndescription = \"v{i}\"\n"
        );
        std::fs::write(gw.config_path(), config(&servers, &fb, true)).unwrap();
        // Each change is applied before the next is written, so none is merged into the next.
        let reloads = |log: &str| log.matches("reloading config").count();
        eventually(
            &format!("reload {} of 6", i + 1),
            Duration::from_secs(10),
            || async {
                let log = gw.log();
                if reloads(&log) > i {
                    Ok(())
                } else {
                    Err(format!("log:\n{log}"))
                }
            },
        )
        .await;
    }
    let calls = load.await.unwrap();
    assert!(calls > 20, "only {calls} calls completed");
    let log = gw.log();
    assert!(
        log.matches("reloading config").count() >= 3,
        "reloads happened:\n{log}"
    );
    assert!(log.contains("connector changed; starting the new settings beside the old"));
}
