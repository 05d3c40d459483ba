//! Conditions on arguments (Cedar `[policy]`) with a real client in both eras: what a caller is
//! shown and may call, a call refused for its arguments, a tool hidden by a condition called by
//! its exact name, and a condition changed while the gateway runs.

use std::time::Duration;

use crate::support::*;

const POLICY: &str = r#"
[roles.anonymous]
servers = ["main"]
allow = ["fa/*"]

[policy]
cedar = """
@id("polite-echo")
forbid (principal, action == Action::"call", resource)
  when { resource.connector == "fa" && resource.name == "echo" }
  unless { context.arguments.hasTag("message") && context.arguments.getTag("message") like "hello*" };

@id("no-add-for-strangers")
forbid (principal, action, resource)
  when { resource.name == "add" && principal.anonymous };
"""
"#;

/// `tests/clients/calls.py` (the official Python SDK) in `era`: its output lines.
async fn calls(peers: &Peers, url: &str, era: &str, tool: &str, args: &[&str]) -> Vec<String> {
    let out = tokio::process::Command::new(peers.python())
        .arg(repo().join("tests/clients/calls.py"))
        .args([url, tool])
        .args(args)
        .args(["--era", era])
        .kill_on_drop(true)
        .output()
        .await
        .expect("run calls.py");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{era}: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines().map(str::to_owned).collect()
}

#[tokio::test]
async fn conditions_on_arguments_decide_each_call_in_both_eras() {
    let Some(peers) = Peers::get("conditions_on_arguments_decide_each_call_in_both_eras") else {
        return;
    };
    let cfg = format!("{}{POLICY}", one_faulty(""));
    let gw = Gw::start(&cfg);
    gw.wait_up().await;
    let url = gw.url("main");
    for era in ["legacy", "modern"] {
        let out = calls(
            peers,
            &url,
            era,
            "fa__echo",
            &[
                r#"{"message": "hello there"}"#,
                r#"{"message": "rm -rf /"}"#,
                "{}",
            ],
        )
        .await;
        let tools = &out[0];
        assert!(tools.contains("fa__echo"), "{era}: {out:?}");
        assert!(
            !tools.contains("fa__add"),
            "{era}: hidden by a condition: {out:?}"
        );
        assert_eq!(out[1], "ok Echo: hello there", "{era}: {out:?}");
        assert!(
            out[2].starts_with("error -32602"),
            "{era}: refused for its arguments: {out:?}"
        );
        assert!(
            out[3].starts_with("error -32602"),
            "{era}: no message: {out:?}"
        );
        // The hidden tool called by its exact name: as a tool that does not exist.
        let out = calls(peers, &url, era, "fa__add", &[r#"{"a": 1, "b": 2}"#]).await;
        assert!(
            out[1].starts_with("error -32602") && out[1].contains("unknown tool: fa__add"),
            "{era}: {out:?}"
        );
    }
    // The administrator drops the echo condition: the next call is allowed.
    let relaxed = cfg.replace("like \"hello*\"", "like \"*\"");
    std::fs::write(gw.config_path(), &relaxed).unwrap();
    eventually(
        "the relaxed condition applied",
        Duration::from_secs(15),
        || async {
            let out = calls(
                peers,
                &url,
                "legacy",
                "fa__echo",
                &[r#"{"message": "rm -rf /"}"#],
            )
            .await;
            if out[1] == "ok Echo: rm -rf /" {
                Ok(())
            } else {
                Err(format!("{out:?}"))
            }
        },
    )
    .await;
    // A condition that does not compile is refused at reload, and the running one stays.
    std::fs::write(
        gw.config_path(),
        relaxed.replace("principal.anonymous", "principal.anonymus"),
    )
    .unwrap();
    eventually(
        "the bad condition rejected",
        Duration::from_secs(15),
        || async {
            if gw.log().contains("error(s) in the Cedar policies") {
                Ok(())
            } else {
                Err(gw.log())
            }
        },
    )
    .await;
    assert!(gw.log().contains("anonymus"), "{}", gw.log());
    let out = calls(peers, &url, "modern", "fa__add", &[r#"{"a": 1, "b": 2}"#]).await;
    assert!(
        out[1].contains("unknown tool: fa__add"),
        "still hidden: {out:?}"
    );
}

/// A `.cedar` file beside the config is watched like the config: a change to it alone applies
/// at the next request.
#[tokio::test]
async fn a_changed_cedar_file_applies_at_the_next_request() {
    let cfg = one_faulty("");
    let gw = Gw::start(&cfg);
    gw.wait_up().await;
    let url = gw.url("main");
    let file = gw.config_path().with_file_name("p.cedar");
    let forbid = |name: &str| {
        format!("forbid (principal, action, resource) when {{ resource.name == \"{name}\" }};\n")
    };
    std::fs::write(&file, forbid("add")).unwrap();
    std::fs::write(
        gw.config_path(),
        format!("{cfg}\n[policy]\ncedar_files = [\"p.cedar\"]\n"),
    )
    .unwrap();
    let call = |tool: &'static str| {
        let url = url.clone();
        async move {
            let sid = session(&url).await;
            let args = if tool == "fa__add" {
                r#"{"a":1,"b":2}"#
            } else {
                r#"{"message":"m"}"#
            };
            let r = post_in(&url, &sid)
                .body(format!(r#"{{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{{"name":"{tool}","arguments":{args}}}}}"#))
                .send()
                .await
                .unwrap();
            message(&r.text().await.unwrap())
        }
    };
    eventually(
        "the file's condition applied",
        Duration::from_secs(15),
        || async {
            let v = call("fa__add").await;
            if v["error"]["message"] == "unknown tool: fa__add" {
                Ok(())
            } else {
                Err(v.to_string())
            }
        },
    )
    .await;
    assert!(call("fa__echo").await.get("result").is_some());
    // Only the file changes: echo is forbidden now, and add allowed again.
    std::fs::write(&file, forbid("echo")).unwrap();
    eventually(
        "the changed file applied",
        Duration::from_secs(15),
        || async {
            let v = call("fa__echo").await;
            if v["error"]["message"] == "unknown tool: fa__echo" {
                Ok(())
            } else {
                Err(v.to_string())
            }
        },
    )
    .await;
    assert!(call("fa__add").await.get("result").is_some());
}
