//! The CLI as a user meets it: `check` (with and without `--probe`), `import`, and `serve`
//! failures, each with a clear message and a non-zero exit code.

use std::process::{Command, Output};

use crate::support::*;

fn manifold(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_manifold"))
        .args(args)
        .output()
        .expect("run manifold")
}

fn out(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn check_prints_what_would_be_served() {
    let dir = TempDir::new("check");
    let path = dir.path("m.toml");
    std::fs::write(&path, one_faulty("")).unwrap();
    let o = manifold(&["check", "--config", path.to_str().unwrap()]);
    assert!(o.status.success(), "{}", out(&o));
    let text = out(&o);
    assert!(
        text.contains("OK") && text.contains("/mcp/main") && text.contains("python3"),
        "{text}"
    );
    let o = manifold(&["check", "--config", path.to_str().unwrap(), "--probe"]);
    assert!(o.status.success(), "{}", out(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("fa") && text.contains("up: 16 tools, 1 prompts"),
        "{text}"
    );
}

#[test]
fn the_demo_config_is_valid() {
    let demo = repo().join("examples/demo.toml");
    let o = manifold(&["check", "--config", demo.to_str().unwrap()]);
    assert!(o.status.success(), "{}", out(&o));
    assert!(out(&o).contains("/mcp/demo"));
}

#[test]
fn check_fails_with_file_line_and_key() {
    let dir = TempDir::new("check-bad");
    let path = dir.path("m.toml");
    std::fs::write(
        &path,
        "[connectors.slack]\nkind = \"stdio\"\ncomand = \"x\"\n",
    )
    .unwrap();
    let o = manifold(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let text = out(&o);
    assert!(
        text.contains(&format!("{}:3:1: unknown field `comand`", path.display())),
        "{text}"
    );
    assert!(text.contains("did you mean \"command\""), "{text}");
    let o = manifold(&["check", "--config", "/nonexistent/m.toml"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(out(&o).contains("cannot read config file"), "{}", out(&o));
}

#[test]
fn probe_reports_a_connector_that_cannot_start() {
    let dir = TempDir::new("probe-bad");
    let path = dir.path("m.toml");
    std::fs::write(&path, "[connectors.ghost]\nkind = \"stdio\"\ncommand = \"/nonexistent/server\"\n[servers.main]\nconnectors = [\"ghost\"]\n").unwrap();
    let o = manifold(&[
        "check",
        "--config",
        path.to_str().unwrap(),
        "--probe",
        "--probe-timeout",
        "5s",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let text = out(&o);
    assert!(
        text.contains("cannot start \"/nonexistent/server\""),
        "{text}"
    );
}

#[test]
fn import_converts_claude_desktop_config_without_secrets() {
    let dir = TempDir::new("import");
    let json = dir.path("claude.json");
    std::fs::write(&json, r#"{"mcpServers": {"github": {"command": "npx", "args": ["-y", "gh-mcp"], "env": {"GITHUB_TOKEN": "ghp_secret"}}}}"#).unwrap();
    let o = manifold(&["import", json.to_str().unwrap()]);
    assert!(o.status.success(), "{}", out(&o));
    let toml = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(!toml.contains("ghp_secret"), "{toml}");
    assert!(
        toml.contains("GITHUB_TOKEN = \"${GITHUB_GITHUB_TOKEN}\""),
        "{toml}"
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("GITHUB_GITHUB_TOKEN"));
    // The output is a valid config once the variable exists.
    let cfg = dir.path("out.toml");
    std::fs::write(&cfg, toml).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_manifold"))
        .args(["check", "--config", cfg.to_str().unwrap()])
        .env("GITHUB_GITHUB_TOKEN", "x")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));
    std::fs::write(&json, "{\"servers\": {}}").unwrap();
    let o = manifold(&["import", json.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(out(&o).contains("no \"mcpServers\" object"), "{}", out(&o));
}

#[test]
fn serve_explains_a_busy_port() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = TempDir::new("busy");
    let path = dir.path("m.toml");
    std::fs::write(&path, "").unwrap();
    let o = manifold(&[
        "serve",
        "--config",
        path.to_str().unwrap(),
        "--listen",
        &addr,
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        out(&o).contains(&format!("cannot listen on {addr}")),
        "{}",
        out(&o)
    );
}
