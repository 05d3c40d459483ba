//! Real third-party peers: the official reference servers (npm server-everything over stdio and
//! Streamable HTTP, server-memory; PyPI mcp-server-time) bundled in one virtual server, driven by
//! real clients (rmcp, the Python SDK, the inspector CLI) and the MCP conformance suite.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::json;

use crate::support::*;

/// server-everything in Streamable HTTP mode on a free loopback port, killed on drop.
struct EverythingHttp {
    child: Child,
    url: String,
}

impl EverythingHttp {
    async fn start(p: &Peers) -> Self {
        Self::start_mode(p, "streamableHttp", "/mcp").await
    }

    /// `mode` is server-everything's transport (`streamableHttp` or the legacy `sse`).
    async fn start_mode(p: &Peers, mode: &str, path: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("node")
            .arg(p.npm_bin("mcp-server-everything"))
            .arg(mode)
            .env("PORT", port.to_string())
            // server-everything listens on every interface; the preload pins it to loopback.
            .env(
                "NODE_OPTIONS",
                format!("--require {}", p.var("MANIFOLD_LOOPBACK_PRELOAD")),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start server-everything over HTTP");
        eventually(
            "server-everything HTTP to listen",
            Duration::from_secs(30),
            || async { tokio::net::TcpStream::connect(("127.0.0.1", port)).await },
        )
        .await;
        Self {
            child,
            url: format!("http://127.0.0.1:{port}{path}"),
        }
    }
}

impl Drop for EverythingHttp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The bundle of the issue: everything (stdio + HTTP), memory and time in one virtual server.
fn bundle(p: &Peers, http_url: &str, dir: &TempDir) -> String {
    format!(
        r#"
[connectors.everything]
kind = "stdio"
command = "node"
args = ["{everything}", "stdio"]

[connectors.everything-http]
kind = "http"
url = "{http_url}"

[connectors.memory]
kind = "stdio"
command = "node"
args = ["{memory}"]
env = {{ MEMORY_FILE_PATH = "{memfile}" }}

[connectors.time]
kind = "stdio"
command = "{time}"
args = ["--local-timezone", "UTC"]

[servers.all]
connectors = ["everything", "everything-http", "memory", "time"]
"#,
        everything = p.npm_bin("mcp-server-everything"),
        memory = p.npm_bin("mcp-server-memory"),
        memfile = dir.path("memory.jsonl").display(),
        time = p.venv_bin("mcp-server-time"),
    )
}

async fn wait_tools(c: &Client, want: &[&str]) -> Vec<String> {
    eventually(
        &format!("tools {want:?} to all appear"),
        Duration::from_secs(30),
        || async {
            let names = tool_names(c).await;
            if want.iter().all(|w| names.iter().any(|n| n == w)) {
                Ok(names)
            } else {
                Err(format!("have {names:?}"))
            }
        },
    )
    .await
}

fn kinds(r: &rmcp::model::CallToolResult) -> Vec<String> {
    r.content
        .iter()
        .map(|c| {
            serde_json::to_value(c).unwrap()["type"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn reference_servers_bundled_through_rmcp_client() {
    let Some(p) = Peers::get("reference_servers_bundled_through_rmcp_client") else {
        return;
    };
    let http = EverythingHttp::start(p).await;
    let dir = TempDir::new("bundle");
    let gw = Gw::start(&bundle(p, &http.url, &dir));
    gw.wait_up().await;
    let client = TestClient::new("rmcp");
    let c = connect(&gw.url("all"), client.clone()).await;
    let names = wait_tools(
        &c,
        &[
            "everything__echo",
            "everything-http__echo",
            "memory__read_graph",
            "time__get_current_time",
        ],
    )
    .await;
    assert!(names.iter().all(|n| n.len() <= 64));
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "deterministic order");

    for prefix in ["everything", "everything-http"] {
        let r = c
            .peer()
            .call_tool(call(&format!("{prefix}__echo"), json!({"message": "hi"})))
            .await
            .unwrap();
        assert_eq!(text(&r), "Echo: hi");
        let r = c
            .peer()
            .call_tool(call(&format!("{prefix}__get-tiny-image"), json!({})))
            .await
            .unwrap();
        assert!(kinds(&r).contains(&"image".into()), "{:?}", kinds(&r));
        let r = c
            .peer()
            .call_tool(call(
                &format!("{prefix}__get-resource-reference"),
                json!({"resourceType": "Text", "resourceId": 1}),
            ))
            .await
            .unwrap();
        assert!(kinds(&r).contains(&"resource".into()), "{:?}", kinds(&r));
        let r = c
            .peer()
            .call_tool(call(
                &format!("{prefix}__get-resource-links"),
                json!({"count": 2}),
            ))
            .await
            .unwrap();
        assert!(
            kinds(&r).iter().filter(|k| *k == "resource_link").count() >= 2,
            "{:?}",
            kinds(&r)
        );
        // A link names the URI as this gateway exposes it, so it can be read back through us.
        let link = serde_json::to_value(&r.content)
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["type"] == "resource_link")
            .unwrap()["uri"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(link.starts_with(&format!("{prefix}+")), "{link}");
        let read: rmcp::model::ReadResourceRequestParams =
            serde_json::from_value(json!({"uri": link})).unwrap();
        c.peer()
            .read_resource(read)
            .await
            .expect("a resource link can be read through the gateway");
        let r = c
            .peer()
            .call_tool(call(
                &format!("{prefix}__get-structured-content"),
                json!({"location": "Chicago"}),
            ))
            .await
            .unwrap();
        assert!(r.structured_content.is_some());
    }

    let r = c
        .peer()
        .call_tool(call("time__get_current_time", json!({"timezone": "UTC"})))
        .await
        .unwrap();
    assert!(text(&r).contains("datetime"), "{}", text(&r));
    c.peer()
        .call_tool(call("memory__create_entities", json!({"entities": [{"name": "manifold", "entityType": "project", "observations": ["gateway"]}]})))
        .await
        .unwrap();
    let r = c
        .peer()
        .call_tool(call("memory__read_graph", json!({})))
        .await
        .unwrap();
    assert!(text(&r).contains("manifold"), "{}", text(&r));

    // Prompts, resources, templates and completion route to the owning connector.
    let prompts = prompt_names(&c).await;
    assert!(
        prompts.contains(&"everything__args-prompt".to_string()),
        "{prompts:?}"
    );
    let get: rmcp::model::GetPromptRequestParams = serde_json::from_value(
        json!({"name": "everything-http__args-prompt", "arguments": {"city": "Oslo"}}),
    )
    .unwrap();
    let got = c.peer().get_prompt(get).await.unwrap();
    assert!(serde_json::to_string(&got).unwrap().contains("Oslo"));
    let resources = c.peer().list_all_resources().await.unwrap();
    let first = resources
        .iter()
        .find(|r| r.uri.starts_with("everything+"))
        .expect("prefixed everything resources");
    let read: rmcp::model::ReadResourceRequestParams =
        serde_json::from_value(json!({"uri": first.uri})).unwrap();
    let got = c.peer().read_resource(read).await.unwrap();
    assert_eq!(
        serde_json::to_value(&got.contents[0]).unwrap()["uri"],
        first.uri.as_str()
    );
    let templates = c.peer().list_all_resource_templates().await.unwrap();
    assert!(
        templates
            .iter()
            .any(|t| t.uri_template.starts_with("everything-http+demo://")),
        "{templates:?}"
    );
    let comp: rmcp::model::CompleteRequestParams = serde_json::from_value(json!({
        "ref": {"type": "ref/prompt", "name": "everything__completable-prompt"},
        "argument": {"name": "department", "value": "E"}
    }))
    .unwrap();
    let done = c.peer().complete(comp).await.unwrap();
    assert!(!done.completion.values.is_empty(), "completion values");

    // Progress on a long-running tool arrives under the client's own token (rmcp assigns it).
    c.peer()
        .call_tool(call(
            "everything__trigger-long-running-operation",
            json!({"duration": 1, "steps": 3}),
        ))
        .await
        .unwrap();
    client
        .wait_event("third progress", |e| {
            e.starts_with("progress:") && e.ends_with(":3")
        })
        .await;
    let tokens: std::collections::HashSet<String> = client
        .events()
        .iter()
        .filter(|e| e.starts_with("progress:"))
        .map(|e| e.split(':').nth(1).unwrap().to_owned())
        .collect();
    assert_eq!(
        tokens.len(),
        1,
        "one token for one call: {:?}",
        client.events()
    );

    // Sampling and elicitation round trips (the tools appear once a capable client exists).
    let names = tool_names(&c).await;
    let sampling = names
        .iter()
        .find(|n| n.starts_with("everything__") && n.contains("sampling"))
        .expect("a sampling tool");
    let r = c
        .peer()
        .call_tool(call(sampling, json!({"prompt": "hello", "maxTokens": 10})))
        .await
        .unwrap();
    assert!(
        serde_json::to_string(&r)
            .unwrap()
            .contains("reply from rmcp"),
        "{r:?}"
    );
    let elicit = names
        .iter()
        .find(|n| n.starts_with("everything__") && n.contains("elicitation"))
        .expect("an elicitation tool");
    let r = c.peer().call_tool(call(elicit, json!({}))).await.unwrap();
    assert!(client.events().contains(&"elicitation".to_string()));
    assert_ne!(r.is_error, Some(true), "{r:?}");
}

/// `tests/clients/python_client.py` (the official Python SDK) in `era` against the bundle.
async fn python_sdk_client(name: &str, era: &str) {
    let Some(p) = Peers::get(name) else {
        return;
    };
    let dir = TempDir::new("py");
    let http = EverythingHttp::start(p).await;
    let gw = Gw::start(&bundle(p, &http.url, &dir));
    gw.wait_up().await;
    let out = tokio::process::Command::new(p.python())
        .arg(repo().join("tests/clients/python_client.py"))
        .arg(gw.url("all"))
        .args(["--era", era])
        .output()
        .await
        .expect("run the Python SDK client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("python client ({era}):\n{stdout}");
    assert!(
        out.status.success(),
        "python client ({era}) failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.lines().any(|l| l.ends_with(" passed, 0 failed")),
        "{stdout}"
    );
}

/// Two Python SDK clients, each with three concurrent calls of server-everything's sampling
/// tool over one shared stdio connection, in `era`: every question reaches the client whose call
/// asked it, and every call succeeds (without `sessions = "per_client"`).
async fn concurrent_sampling(name: &str, era: &str) {
    let Some(p) = Peers::get(name) else {
        return;
    };
    let gw = Gw::start(&format!(
        "[connectors.everything]\nkind = \"stdio\"\ncommand = \"node\"\nargs = [\"{}\", \"stdio\"]\nera = \"legacy\"\n[servers.all]\nconnectors = [\"everything\"]\n",
        p.npm_bin("mcp-server-everything")
    ));
    gw.wait_up().await;
    let out = tokio::process::Command::new(p.python())
        .arg(repo().join("tests/clients/concurrent_sampling.py"))
        .arg(gw.url("all"))
        .arg("everything__trigger-sampling-request")
        .args(["--era", era, "--clients", "2", "--calls", "3"])
        .output()
        .await
        .expect("run the Python SDK clients");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("6 passed, 0 failed"),
        "concurrent sampling ({era}):\n{stdout}\n{}\ngateway log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        gw.log()
    );
}

#[tokio::test]
async fn concurrent_sampling_of_legacy_clients_on_a_shared_stdio_upstream() {
    concurrent_sampling(
        "concurrent_sampling_of_legacy_clients_on_a_shared_stdio_upstream",
        "legacy",
    )
    .await;
}

#[tokio::test]
async fn concurrent_sampling_of_modern_clients_on_a_shared_stdio_upstream() {
    concurrent_sampling(
        "concurrent_sampling_of_modern_clients_on_a_shared_stdio_upstream",
        "modern",
    )
    .await;
}

#[tokio::test]
async fn python_sdk_client_in_legacy_mode() {
    python_sdk_client("python_sdk_client_in_legacy_mode", "legacy").await;
}

/// Modern (2026-07-28) client, legacy upstreams: every request crosses eras; sampling and
/// elicitation of server-everything go through the MRTR bridge.
#[tokio::test]
async fn python_sdk_client_in_modern_mode() {
    python_sdk_client("python_sdk_client_in_modern_mode", "modern").await;
}

#[tokio::test]
async fn inspector_cli_lists_and_calls() {
    let Some(p) = Peers::get("inspector_cli_lists_and_calls") else {
        return;
    };
    let dir = TempDir::new("insp");
    let http = EverythingHttp::start(p).await;
    let gw = Gw::start(&bundle(p, &http.url, &dir));
    gw.wait_up().await;
    let inspector = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(p.node22());
        cmd.arg(p.npm_bin("mcp-inspector"))
            .arg("--cli")
            .arg(gw.url("all"))
            .args(["--transport", "http"])
            .args(args)
            .args(["--format", "json"])
            .env("MCP_INSPECTOR_SECRET_STORE", "memory")
            .env("HOME", dir.0.display().to_string());
        cmd
    };
    let out = inspector(&["--method", "tools/list"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "inspector tools/list failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "everything__echo",
        "everything-http__get-sum",
        "memory__read_graph",
        "time__convert_time",
    ] {
        assert!(
            stdout.contains(want),
            "inspector does not see {want}: {stdout}"
        );
    }
    let out = inspector(&[
        "--method",
        "tools/call",
        "--tool-name",
        "everything-http__echo",
        "--tool-arg",
        "message=from inspector",
    ])
    .output()
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("Echo: from inspector"), "{stdout}");
    let out = inspector(&["--method", "tools/call", "--tool-name", "no_such_tool"])
        .output()
        .await
        .unwrap();
    assert!(
        !out.status.success(),
        "an unknown tool is an error for the inspector too"
    );
    // The same through the inspector in modern mode (2026-07-28, stateless requests, no
    // initialize), via a client config file.
    let cfg = dir.path("inspector.json");
    std::fs::write(
        &cfg,
        json!({"mcpServers": {"gw": {"type": "streamable-http", "url": gw.url("all"), "protocolEra": "modern"}}})
            .to_string(),
    )
    .unwrap();
    let modern = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(p.node22());
        cmd.arg(p.npm_bin("mcp-inspector"))
            .arg("--cli")
            .arg("--config")
            .arg(&cfg)
            .args(["--server", "gw"])
            .args(args)
            .args(["--format", "json"])
            .env("MCP_INSPECTOR_SECRET_STORE", "memory")
            .env("HOME", dir.0.display().to_string());
        cmd
    };
    let out = modern(&["--method", "tools/list"]).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "modern tools/list: {stdout}");
    assert!(stdout.contains("time__convert_time"), "{stdout}");
    let out = modern(&[
        "--method",
        "tools/call",
        "--tool-name",
        "everything__echo",
        "--tool-arg",
        "message=modern inspector",
    ])
    .output()
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "modern tools/call: {stdout}");
    assert!(stdout.contains("Echo: modern inspector"), "{stdout}");
}

/// The conformance suite with `--requirements` `reqs` against the gateway fronting the
/// fixture (unprefixed) through the connector TOML `connector`; failures must be exactly those
/// in `tests/conformance/{baseline}`.
async fn conformance(p: &Peers, reqs: &str, connector: &str, baseline: &str) {
    let config = format!(
        "[connectors.conformance]\n{connector}\n\n[servers.conformance]\nconnectors = [\"conformance\"]\n[servers.conformance.curation.conformance]\nprefix = false\n"
    );
    let gw = Gw::start(&config);
    gw.wait_up().await;
    let dir = TempDir::new("conf");
    let out = tokio::process::Command::new(p.node22())
        .arg(p.npm_bin("conformance"))
        .args([
            "server",
            "--url",
            &gw.url("conformance"),
            "--requirements",
            reqs,
        ])
        .arg("--expected-failures")
        .arg(repo().join("tests/conformance").join(baseline))
        .arg("-o")
        .arg(&dir.0)
        .output()
        .await
        .expect("run the conformance suite");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let total = stdout
        .lines()
        .find(|l| l.starts_with("Total:"))
        .unwrap_or("no total line");
    eprintln!("conformance {reqs}, {baseline}: {total}");
    assert!(
        out.status.success(),
        "conformance failures beyond tests/conformance/{baseline}:\n{stdout}\n{}\nfailed checks:\n{}\ngateway log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        failed_checks(&dir.0),
        gw.log()
    );
    assert!(stdout.contains("Baseline check passed"), "{stdout}");
}

/// The failed checks the conformance suite wrote under `dir` (`*/checks.json`), with their
/// details, for a failure report.
fn failed_checks(dir: &std::path::Path) -> String {
    let mut out = String::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path().join("checks.json")) else {
            continue;
        };
        let checks: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap_or_default();
        for c in checks.iter().filter(|c| c["status"] == "FAILURE") {
            out.push_str(&format!("{c}\n"));
        }
    }
    out
}

/// `--requirements 2025-11-25` (legacy clients), the fixture over stdio as an upstream of `era`.
async fn conformance_2025(name: &str, era: &str, baseline: &str) {
    let Some(p) = Peers::get(name) else {
        return;
    };
    let connector = format!(
        "kind = \"stdio\"\ncommand = \"{}\"\nargs = [\"{}\"]\nera = \"{era}\"",
        p.python(),
        fixture("conformance_upstream.py")
    );
    conformance(p, "2025-11-25", &connector, baseline).await;
}

/// `--requirements 2026-07-28`, the fixture over Streamable HTTP as an upstream of `era`.
async fn conformance_2026(name: &str, era: &str, baseline: &str) {
    let Some(p) = Peers::get(name) else {
        return;
    };
    let upstream = ConformanceHttp::start(p);
    let connector = format!(
        "kind = \"http\"\nurl = \"{}\"\nera = \"{era}\"",
        upstream.url
    );
    conformance(p, "2026-07-28", &connector, baseline).await;
    drop(upstream);
}

#[tokio::test]
async fn conformance_suite_2025_11_25_through_the_gateway() {
    conformance_2025(
        "conformance_suite_2025_11_25_through_the_gateway",
        "legacy",
        "expected-failures-2025-11-25.yaml",
    )
    .await;
}

/// Legacy clients, modern upstream (found by `era = "auto"` over stdio): the upstream's
/// `input_required` results become server→client requests on the legacy session.
#[tokio::test]
async fn conformance_suite_2025_11_25_modern_upstream() {
    conformance_2025(
        "conformance_suite_2025_11_25_modern_upstream",
        "auto",
        "expected-failures-2025-11-25-modern-upstream.yaml",
    )
    .await;
}

/// `tests/fixtures/conformance_upstream.py` serving Streamable HTTP on a free loopback port.
struct ConformanceHttp {
    child: std::process::Child,
    url: String,
}

impl ConformanceHttp {
    fn start(p: &Peers) -> Self {
        use std::io::BufRead;
        let mut child = Command::new(p.python())
            .arg(fixture("conformance_upstream.py"))
            .args(["--http", "0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the conformance fixture");
        let out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let url = out
            .lines()
            .map_while(Result::ok)
            .find_map(|l| l.strip_prefix("listening ").map(str::to_owned))
            .expect("the fixture's listen line");
        Self { child, url }
    }
}

impl Drop for ConformanceHttp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Modern clients, legacy upstream: every MRTR scenario goes through the gateway's bridge
/// (server→client requests become `input_required` rounds).
#[tokio::test]
async fn conformance_suite_2026_07_28_through_the_gateway() {
    conformance_2026(
        "conformance_suite_2026_07_28_through_the_gateway",
        "legacy",
        "expected-failures-2026-07-28.yaml",
    )
    .await;
}

/// Modern clients, modern upstream (found by `era = "auto"`): the upstream's own
/// `input_required` results are answered through the bridge, with the client's capabilities
/// forwarded in `_meta` and `Mcp-Param-*` headers built from the upstream's schemas.
#[tokio::test]
async fn conformance_suite_2026_07_28_modern_upstream() {
    conformance_2026(
        "conformance_suite_2026_07_28_modern_upstream",
        "auto",
        "expected-failures-2026-07-28-modern-upstream.yaml",
    )
    .await;
}

#[tokio::test]
async fn legacy_http_sse_upstream_explicit_and_by_fallback() {
    let Some(p) = Peers::get("legacy_http_sse_upstream_explicit_and_by_fallback") else {
        return;
    };
    let sse = EverythingHttp::start_mode(p, "sse", "/sse").await;
    let config = format!(
        "[connectors.old]\nkind = \"http\"\nurl = \"{0}\"\ntransport = \"sse\"\n\n[connectors.auto]\nkind = \"http\"\nurl = \"{0}\"\n\n[servers.main]\nconnectors = [\"old\", \"auto\"]\n",
        sse.url
    );
    let gw = Gw::start(&config);
    gw.wait_up().await;
    assert!(
        gw.log().contains("trying the legacy HTTP+SSE transport"),
        "auto mode fell back:\n{}",
        gw.log()
    );
    let c = connect(&gw.url("main"), TestClient::new("a")).await;
    for name in ["old__echo", "auto__echo"] {
        let r = c
            .peer()
            .call_tool(call(name, json!({"message": "sse"})))
            .await
            .unwrap();
        assert_eq!(text(&r), "Echo: sse");
    }
    let r = c
        .peer()
        .call_tool(call("old__get-sum", json!({"a": 2, "b": 3})))
        .await
        .unwrap();
    assert!(text(&r).contains('5'), "{}", text(&r));
}

/// How many `fixture_wait_for_cancel` calls connector `c` (the conformance fixture) saw
/// cancelled, once it reaches `want` (or the test fails after 10 s).
async fn wait_cancelled(client: &Client, c: &str, want: usize) {
    eventually(
        &format!("{c}: {want} upstream calls cancelled"),
        Duration::from_secs(10),
        || async {
            let r = client
                .peer()
                .call_tool(call(&format!("{c}__fixture_cancelled_count"), json!({})))
                .await
                .unwrap();
            let n = text(&r);
            if n == want.to_string() {
                Ok(())
            } else {
                Err(format!("{n} upstream calls cancelled, not {want}"))
            }
        },
    )
    .await;
}

/// Cancellation across eras to modern (2026-07-28) upstreams, the fixture over Streamable HTTP
/// and over stdio: a legacy client's `notifications/cancelled`, a legacy client going away and
/// a modern client closing its response each cancel the upstream call (by closing the
/// upstream exchange over HTTP, by `notifications/cancelled` over stdio).
#[tokio::test]
async fn cancellation_reaches_modern_upstreams() {
    let Some(p) = Peers::get("cancellation_reaches_modern_upstreams") else {
        return;
    };
    let upstream = ConformanceHttp::start(p);
    let gw = Gw::start(&format!(
        "[connectors.mh]\nkind = \"http\"\nurl = \"{}\"\nera = \"modern\"\n\n[connectors.ms]\nkind = \"stdio\"\ncommand = \"{}\"\nargs = [\"{}\"]\nera = \"modern\"\n\n[servers.main]\nconnectors = [\"mh\", \"ms\"]\n",
        upstream.url,
        p.python(),
        fixture("conformance_upstream.py")
    ));
    gw.wait_up().await;
    let url = gw.url("main");
    let client = connect(&url, TestClient::new("legacy")).await;
    let gives_up = |send: reqwest::RequestBuilder| async move {
        let _ = tokio::time::timeout(Duration::from_millis(600), async {
            let _ = send.send().await.unwrap().text().await;
        })
        .await;
    };
    for c in ["mh", "ms"] {
        let tool = format!("{c}__fixture_wait_for_cancel");
        wait_cancelled(&client, c, 0).await;
        // A legacy client cancels its call.
        let handle = client
            .peer()
            .send_cancellable_request(
                rmcp::model::ClientRequest::CallToolRequest(rmcp::model::Request::new(call(
                    &tool,
                    json!({}),
                ))),
                rmcp::service::PeerRequestOptions::no_options(),
            )
            .await
            .unwrap();
        // A grace period, not a wait for an event: the fixture gives no sign that a call has
        // started (no progress, no count of started calls), so the call is given the time to
        // reach the upstream before it is cancelled.
        tokio::time::sleep(Duration::from_millis(500)).await;
        handle.cancel(Some("test".into())).await.unwrap();
        wait_cancelled(&client, c, 1).await;
        // A legacy client goes away during its call.
        let sid = session(&url).await;
        let body = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": tool, "arguments": {}}});
        gives_up(post_in(&url, &sid).body(body.to_string())).await;
        wait_cancelled(&client, c, 2).await;
        // A modern client closes its response.
        gives_up(modern(
            &url,
            "tools/call",
            Some(&tool),
            json!({"name": tool, "arguments": {}}),
            json!({}),
        ))
        .await;
        wait_cancelled(&client, c, 3).await;
    }
    drop(upstream);
}

/// A legacy session's log level reaches a modern upstream (in each request's `_meta`) even
/// when rmcp handles `logging/setLevel` before the session's `notifications/initialized`
/// (here: not sent at all), which once lost the level under load.
#[tokio::test]
async fn a_log_level_set_before_initialized_reaches_a_modern_upstream() {
    let Some(p) = Peers::get("a_log_level_set_before_initialized_reaches_a_modern_upstream") else {
        return;
    };
    let gw = Gw::start(&format!(
        "[connectors.up]\nkind = \"stdio\"\ncommand = \"{}\"\nargs = [\"{}\"]\nera = \"modern\"\n\n[servers.main]\nconnectors = [\"up\"]\n",
        p.python(),
        fixture("conformance_upstream.py")
    ));
    gw.wait_up().await;
    let url = gw.url("main");
    let r = post(&url).body(INIT).send().await.unwrap();
    let sid = r.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    let _ = r.text().await;
    let v = rpc(
        &url,
        &sid,
        json!({"jsonrpc": "2.0", "id": 2, "method": "logging/setLevel", "params": {"level": "debug"}}),
    )
    .await;
    assert!(v.get("result").is_some(), "{v}");
    let body = post_in(&url, &sid)
        .body(
            json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                "params": {"name": "up__test_tool_with_logging", "arguments": {}}})
            .to_string(),
        )
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        body.matches("notifications/message").count(),
        3,
        "the tool's three log messages come before its result:\n{body}"
    );
}
