//! The CLI as a user meets it: `check` (with and without `--probe`), `import`, and `serve`
//! failures, each with a clear message and a non-zero exit code.

use std::{
    process::{Command, Output},
    time::Duration,
};

use crate::support::*;

fn manifold(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_manifold"))
        .args(args)
        // Not the user's own data directory.
        .env(
            "XDG_DATA_HOME",
            std::env::temp_dir().join("manifold-cli-tests"),
        )
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
fn check_reports_every_error_at_once() {
    let dir = TempDir::new("check-errors");
    let path = dir.path("m.toml");
    std::fs::write(
        &path,
        r#"[connectors.time]
kind = "stdio"
command = "x"
args = "UTC"
[connectors.remote]
kind = "http"
url = "ftp://x"
[servers.main]
connectors = ["time", "remote", "tme"]
"#,
    )
    .unwrap();
    let o = manifold(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "", "nothing is OK");
    let p = path.display();
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        format!(
            r#"error: {p}:4:8: connectors.time.args: expected a list of strings, found a string "UTC"
error: {p}:7:7: connector "remote": url "ftp://x" must start with http:// or https://
error: {p}:9:33: virtual server "main": unknown connector "tme" (did you mean "time"?)
error: 3 errors in {p}
"#
        )
    );
}

#[test]
fn check_warns_when_nothing_would_be_served() {
    let dir = TempDir::new("check-empty");
    let path = dir.path("m.toml");
    let p = path.display();
    for text in ["", "[connectors.time]\nkind = \"stdio\"\ncommand = \"x\"\n"] {
        std::fs::write(&path, text).unwrap();
        let o = manifold(&["check", "--config", path.to_str().unwrap()]);
        assert!(o.status.success(), "{}", out(&o));
        assert_eq!(
            String::from_utf8_lossy(&o.stderr),
            format!(
                "warning: {p} defines no virtual server ([servers.NAME]); nothing would be served\n"
            ),
            "for {text:?}"
        );
    }
    std::fs::write(
        &path,
        "[connectors.time]\nkind = \"stdio\"\ncommand = \"x\"\n[connectors.spare]\nkind = \"stdio\"\ncommand = \"x\"\n[servers.main]\nconnectors = [\"time\"]\n",
    )
    .unwrap();
    let o = manifold(&["check", "--config", path.to_str().unwrap()]);
    assert!(o.status.success(), "{}", out(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        format!(
            "warning: {p}: connector \"spare\" is not used by any virtual server: add it to a server's `connectors`, or remove it\n"
        )
    );
}

#[tokio::test]
async fn serve_warns_when_nothing_would_be_served() {
    let gw = Gw::start("");
    let warning =
        "defines no virtual server ([servers.NAME]); nothing would be served (see docs/config.md)";
    eventually(
        "the warning to be logged",
        Duration::from_secs(10),
        || async {
            let log = gw.log();
            match log.lines().find(|l| l.contains(warning)) {
                Some(line) if line.contains("WARN") => Ok(()),
                _ => Err(format!("log:\n{log}")),
            }
        },
    )
    .await;
}

/// Every argument of every subcommand says what it is for in `--help`.
#[test]
fn every_argument_has_help_text() {
    for sub in ["serve", "check", "import"] {
        let o = manifold(&[sub, "--help"]);
        assert!(o.status.success(), "{}", out(&o));
        let help = String::from_utf8_lossy(&o.stdout).into_owned();
        let bare: Vec<&str> = help
            .lines()
            .filter(|l| l.starts_with("  "))
            .filter(|l| matches!(l.trim_start().chars().next(), Some('-' | '<')))
            // `  -c, --config <CONFIG>  The TOML config file…`: the help follows two spaces.
            .filter(|l| !l.trim().contains("  "))
            .collect();
        assert!(bare.is_empty(), "manifold {sub}: no help for {bare:?}");
    }
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
    std::fs::write(&json, r#"{"mcpServers": {"github": {"command": "npx", "args": ["-y", "gh-mcp"], "env": {"GITHUB_TOKEN": "ghp_secret", "TZ": "Europe/Paris"}}, "old": {"command": "old-mcp", "disabled": true}, "ws": {"type": "websocket", "url": "ws://127.0.0.1:9/"}}}"#).unwrap();
    let o = manifold(&["import", json.to_str().unwrap()]);
    assert!(o.status.success(), "{}", out(&o));
    let toml = String::from_utf8_lossy(&o.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!toml.contains("ghp_secret"), "{toml}");
    assert!(
        toml.contains("GITHUB_TOKEN = \"${GITHUB_TOKEN}\""),
        "{toml}"
    );
    assert!(toml.contains("TZ = \"Europe/Paris\""), "{toml}");
    assert!(
        !toml.contains("[connectors.old]") && !toml.contains("[connectors.ws]"),
        "{toml}"
    );
    assert!(stderr.contains("GITHUB_TOKEN"), "{stderr}");
    assert!(
        stderr.contains("\"old\"") && stderr.contains("WebSocket"),
        "{stderr}"
    );
    // The output is a valid config once the variable exists.
    let cfg = dir.path("out.toml");
    std::fs::write(&cfg, toml).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_manifold"))
        .args(["check", "--config", cfg.to_str().unwrap()])
        .env("GITHUB_TOKEN", "x")
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

/// `policy explain`: the decision and the roles and rules that made it, as the gateway would
/// decide (exit 0 allowed, 3 denied), and a clear error for every bad request (exit 1).
#[test]
fn policy_explain_says_what_decides_and_refuses_bad_requests() {
    let dir = TempDir::new("explain");
    let path = dir.path("m.toml");
    let config = format!(
        "[store]\ndata_dir = \"data\"\n{}\n[roles.dev]\nservers = [\"main\"]\nallow = [\"fa/*\"]\ndeny = [\"fa/add\"]\nask = [\"fa/slow\"]\n\n[roles.anonymous]\nservers = [\"main\"]\nallow = [\"fa/echo\"]\n\n[groups.eng]\nroles = [\"dev\"]\n\n[policy]\ncedar = \"\"\"\n@id(\"fetch-from-the-office\")\nforbid (principal, action, resource) when {{ resource.name == \"fetch\" }} unless {{ context has source && context.source.isInRange(ip(\"10.0.0.0/8\")) && context.client != \"bad-app\" }};\n\"\"\"\n",
        one_faulty("")
    );
    std::fs::write(&path, config).unwrap();
    let cfg = path.to_str().unwrap();
    let o = manifold(&[
        "users", "--config", cfg, "add", "dana", "--role", "dev", "--role", "ghost",
    ]);
    assert!(o.status.success(), "{}", out(&o));
    let explain = |rest: &[&str]| {
        let mut args = vec!["policy", "--config", cfg, "explain"];
        args.extend_from_slice(rest);
        manifold(&args)
    };

    let o = explain(&["--user", "dana", "--server", "main", "--tool", "fa/echo"]);
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    let text = out(&o);
    assert!(
        text.starts_with(
            "allowed: dana (a local user; roles: dev, ghost) may call the tool fa/echo of \"main\""
        ),
        "{text}"
    );
    assert!(
        text.contains("role \"dev\" allows it: [\"fa/*\"]"),
        "{text}"
    );
    assert!(text.contains("role \"ghost\" is not in [roles]"), "{text}");

    let o = explain(&["--user", "dana", "--server", "main", "--tool", "fa/slow"]);
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    let text = out(&o);
    assert!(
        text.starts_with("allowed once confirmed: dana")
            && text.contains("role \"dev\" asks the member to confirm each call: [\"fa/slow\"]"),
        "{text}"
    );

    let o = explain(&[
        "--user",
        "dana",
        "--server",
        "main",
        "--tool",
        "fa/add",
        "--args",
        r#"{"a": 1}"#,
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", out(&o));
    let text = out(&o);
    assert!(text.starts_with("denied: dana"), "{text}");
    assert!(
        text.contains("role \"dev\" denies it: [\"fa/add\"] (a deny wins)"),
        "{text}"
    );

    // Conditions on the source address and the OAuth client.
    let fetch = |more: &[&str]| {
        let mut a = vec!["--user", "dana", "--server", "main", "--tool", "fa/fetch"];
        a.extend_from_slice(more);
        explain(&a)
    };
    let o = fetch(&["--source", "10.2.3.4"]);
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    assert!(
        out(&o).contains("no Cedar condition hides it from lists"),
        "{}",
        out(&o)
    );
    for more in [
        &["--source", "192.168.0.4"][..],
        &[][..],
        &["--source", "10.2.3.4", "--client", "bad-app"][..],
    ] {
        let o = fetch(more);
        assert_eq!(o.status.code(), Some(3), "{more:?}: {}", out(&o));
        assert!(
            out(&o).contains("forbidden by fetch-from-the-office"),
            "{more:?}: {}",
            out(&o)
        );
    }
    let o = fetch(&["--source", "10.2.3.4", "--client", "good-app"]);
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));

    let o = explain(&["--anonymous", "--server", "main", "--tool", "fa/add"]);
    assert_eq!(o.status.code(), Some(3), "{}", out(&o));
    assert!(
        out(&o).contains("no role held allows fa/add"),
        "{}",
        out(&o)
    );
    let o = explain(&["--anonymous", "--server", "main"]);
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    assert!(out(&o).contains("may connect to \"main\""), "{}", out(&o));

    // Bad requests: each says what is wrong, with exit status 1.
    for (rest, says) in [
        (
            &["--user", "nobody", "--server", "main"][..],
            "no user \"nobody\"",
        ),
        (
            &["--user", "dana", "--server", "nope"][..],
            "no virtual server \"nope\"",
        ),
        (
            &["--user", "dana", "--server", "main", "--tool", "echo"][..],
            "as CONNECTOR/NAME",
        ),
        (
            &["--user", "dana", "--server", "main", "--tool", "gh/x"][..],
            "has no connector \"gh\": it has fa",
        ),
        (
            &[
                "--user", "dana", "--server", "main", "--tool", "fa/x", "--args", "[1]",
            ][..],
            "(--args) must be a JSON object",
        ),
        (
            &[
                "--user", "dana", "--server", "main", "--tool", "fa/x", "--args", "{",
            ][..],
            "(--args) are not JSON",
        ),
        (
            &["--user", "dana", "--server", "main", "--source", "10.1.1"][..],
            "(--source) \"10.1.1\" is not an IP address",
        ),
    ] {
        let o = explain(rest);
        assert_eq!(o.status.code(), Some(1), "{rest:?}: {}", out(&o));
        assert!(out(&o).contains(says), "{rest:?}: {}", out(&o));
    }
    let o = explain(&["--server", "main"]);
    assert_eq!(o.status.code(), Some(2), "clap's usage error: {}", out(&o));
    assert!(out(&o).contains("--user"), "{}", out(&o));

    // Groups: a member of eng holds dev through it; `users set` changes what they belong to.
    let users = |rest: &[&str]| {
        let mut args = vec!["users", "--config", cfg];
        args.extend_from_slice(rest);
        manifold(&args)
    };
    let o = users(&["add", "gina", "--group", "eng", "--group", "qa"]);
    assert!(o.status.success(), "{}", out(&o));
    let o = explain(&["--user", "gina", "--server", "main", "--tool", "fa/echo"]);
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    let text = out(&o);
    assert!(
        text.starts_with("allowed: gina (a local user; roles: -; groups: eng, qa)"),
        "{text}"
    );
    assert!(
        text.contains("group \"eng\" gives the roles [\"dev\"]")
            && text.contains("group \"qa\" is not in [groups]: it gives no role")
            && text.contains("role \"dev\" allows it"),
        "{text}"
    );
    let listed = out(&users(&["list"]));
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("gina") && l.contains("groups: eng,qa")),
        "{listed}"
    );
    let o = users(&["set", "gina", "--no-groups", "--role", "ghost"]);
    assert!(o.status.success(), "{}", out(&o));
    assert!(
        out(&o).contains("gina now holds roles: ghost; groups: -"),
        "{}",
        out(&o)
    );
    let o = explain(&["--user", "gina", "--server", "main", "--tool", "fa/echo"]);
    assert_eq!(o.status.code(), Some(3), "no group any more: {}", out(&o));
    let o = users(&["set", "gina", "--group", "eng"]);
    assert!(out(&o).contains("roles: ghost; groups: eng"), "{}", out(&o));
    for (rest, says) in [
        (&["set", "gina"][..], "say what to set"),
        (
            &["set", "nobody", "--role", "dev"][..],
            "no user \"nobody\"",
        ),
        (
            &["set", "gina", "--group", "two words"][..],
            "one word without spaces",
        ),
        (&["add", "hal", "--role", ""][..], "one word without spaces"),
    ] {
        let o = users(rest);
        assert_eq!(o.status.code(), Some(1), "{rest:?}: {}", out(&o));
        assert!(out(&o).contains(says), "{rest:?}: {}", out(&o));
    }
    let o = users(&["set", "gina", "--role", "dev", "--no-roles"]);
    assert_eq!(o.status.code(), Some(2), "clap refuses both: {}", out(&o));
    // A group that gives a role [roles] does not define is a config error, at its place.
    let bad = std::fs::read_to_string(&path).unwrap().replace(
        "roles = [\"dev\"]\n\n[policy]",
        "roles = [\"dve\"]\n\n[policy]",
    );
    std::fs::write(&path, bad).unwrap();
    let o = manifold(&["check", "--config", cfg]);
    assert!(!o.status.success());
    assert!(
        out(&o)
            .contains("groups.eng.roles: no role \"dve\" in [roles] (there are: anonymous, dev)"),
        "{}",
        out(&o)
    );
}

/// Cedar conditions are checked with the config: every problem with its file, line and column
/// (inline text by its line in the config file), and `check` fails; a good text is counted.
#[test]
fn check_reports_cedar_errors_where_they_are() {
    let dir = TempDir::new("cedar");
    let path = dir.path("m.toml");
    std::fs::write(
        dir.path("more.cedar"),
        "// two policies\nforbid (principal, action, resource)\n  when { resource.nmae == \"x\" };\n",
    )
    .unwrap();
    let bad = format!(
        "{}\n[policy]\ncedar_files = [\"more.cedar\"]\ncedar = \"\"\"\nforbid (principal, action, resource)\nwhen {{ true }}\nforbid (principal, action, resource);\n\"\"\"\n",
        one_faulty("")
    );
    std::fs::write(&path, &bad).unwrap();
    let o = manifold(&["check", "--config", path.to_str().unwrap()]);
    assert!(!o.status.success());
    let text = out(&o);
    let conf = path.display().to_string();
    // The inline text by its line in the config file.
    let line = bad
        .lines()
        .position(|l| l == "forbid (principal, action, resource);")
        .unwrap()
        + 1;
    assert!(
        text.contains(&format!("error: {conf}:{line}:8: unexpected token `(`")),
        "{text}"
    );
    let more = dir.path("more.cedar").display().to_string();
    assert!(text.contains(&format!("error: {more}:3:10: ")), "{text}");
    assert!(text.contains("attribute `nmae`"), "{text}");
    assert!(
        text.contains("4 error(s) in the Cedar policies"),
        "one for each kind of item: {text}"
    );
    // A file that is not there is a config error at its key.
    std::fs::write(&path, bad.replace("more.cedar", "gone.cedar")).unwrap();
    let o = manifold(&["check", "--config", path.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        out(&o).contains("policy.cedar_files: cannot read"),
        "{}",
        out(&o)
    );
    // Good policies: counted.
    let good = format!(
        "{}\n[policy]\ncedar = 'forbid (principal, action, resource) when {{ resource.name == \"add\" }};'\n",
        one_faulty("")
    );
    std::fs::write(&path, good).unwrap();
    let o = manifold(&["check", "--config", path.to_str().unwrap()]);
    assert!(o.status.success(), "{}", out(&o));
    assert!(
        out(&o).contains("policy: 0 role(s), 1 Cedar condition(s)"),
        "{}",
        out(&o)
    );
}
