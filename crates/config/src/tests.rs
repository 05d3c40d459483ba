//! Config validation tests: every bad input gets an error naming file, line and key.

use std::{collections::HashMap, path::Path, time::Duration};

use crate::{Config, ConnectorId, HttpTransport, Secret, StartMode, StoreLocation, TransportSpec};

fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let m: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k: &str| m.get(k).cloned()
}

fn parse(text: &str) -> Result<Config, String> {
    Config::parse(
        text,
        Path::new("/etc/m/manifold.toml"),
        &env(&[("TOKEN", "s3cret")]),
    )
    .map_err(|e| e.to_string())
}

/// Assert that `text` fails with exactly `expect` (one error per line, in file order).
fn check_err(text: &str, expect: &str) {
    match parse(text) {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => assert_eq!(e, expect),
    }
}

const GOOD: &str = r#"
[gateway]
listen = "127.0.0.1:9000"
allowed_origins = ["http://localhost:3000"]

[connectors.time]
kind = "stdio"
command = "mcp-server-time"
args = ["--local-timezone", "UTC"]
env = { API_KEY = "${TOKEN}", PLAIN = "x$$y" }
start = "lazy"
call_timeout = "5s"

[connectors.remote]
kind = "http"
url = "http://127.0.0.1:3001/mcp"
headers = { Authorization = "Bearer ${TOKEN}" }
transport = "sse"

[servers.demo]
connectors = ["time", "remote"]
separator = "."

[servers.demo.curation.remote]
prefix = false
exclude = ["debug_*"]
[servers.demo.curation.remote.tools.echo]
rename = "say"
pin_args = { message = "hi" }
hide_args = ["verbose"]
"#;

#[test]
fn good_config_is_typed() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.gateway.listen.to_string(), "127.0.0.1:9000");
    let time = &c.connectors[&ConnectorId::parse("time").unwrap()];
    assert_eq!(time.call_timeout, Duration::from_secs(5));
    let TransportSpec::Stdio(s) = &time.transport else {
        panic!("stdio")
    };
    assert_eq!(s.start, StartMode::Lazy);
    assert_eq!(s.env["API_KEY"].expose(), "s3cret");
    assert_eq!(s.env["PLAIN"].expose(), "x$y");
    assert!(
        !format!("{c:?}").contains("s3cret"),
        "secrets must not appear in Debug output"
    );
    let remote = &c.connectors[&ConnectorId::parse("remote").unwrap()];
    let TransportSpec::Http(h) = &remote.transport else {
        panic!("http")
    };
    assert_eq!(h.transport, HttpTransport::Sse);
    assert_eq!(h.headers[0].1.expose(), "Bearer s3cret");
    let demo = &c.servers["demo"];
    assert_eq!(demo.separator, ".");
    assert!(demo.connectors[0].prefix);
    let r = &demo.connectors[1];
    assert!(!r.prefix);
    assert_eq!(r.exclude, vec!["debug_*"]);
    assert_eq!(r.tools["echo"].rename.as_deref(), Some("say"));
    assert_eq!(r.tools["echo"].pin_args["message"], "hi");
}

#[test]
fn defaults_are_safe() {
    let c = parse("").unwrap();
    assert_eq!(c.gateway.listen.to_string(), "127.0.0.1:8730");
    assert!(c.gateway.allowed_hosts.contains(&"localhost".to_string()));
}

#[test]
fn unknown_key_names_line_and_suggests() {
    check_err(
        "[connectors.slack]\nkind = \"stdio\"\ncomand = \"x\"\n",
        "/etc/m/manifold.toml:3:1: unknown field `comand` in `connectors.slack`, expected one of `kind`, `command`, `args`, `env`, `env_passthrough`, `cwd`, `start`, `max_line_bytes`, `stderr_lines_per_minute`, `url`, `headers`, `transport`, `connect_timeout`, `call_timeout`, `sessions`, `max_sessions`, `era`, `restart` (did you mean \"command\"?)",
    );
}

#[test]
fn bad_inputs_have_clear_errors() {
    check_err(
        "[connectors.a]\nkind = \"stdio\"\ncommand = \"x\"\nsessions = \"per-user\"\n",
        "/etc/m/manifold.toml:4:12: connector \"a\": sessions = \"per-user\" is not one of \"shared\", \"per_client\"",
    );
    check_err(
        "[connectors.a]\nkind = \"stdio\"\n",
        "/etc/m/manifold.toml:1:1: connector \"a\": kind = \"stdio\" needs `command` (the program to run)",
    );
    check_err(
        "[connectors.a]\nkind = \"ftp\"\n",
        "/etc/m/manifold.toml:2:8: connector \"a\": kind = \"ftp\" is not one of \"stdio\", \"http\"",
    );
    check_err(
        "[connectors.a]\nkind = \"http\"\nurl = \"ftp://x\"\n",
        "/etc/m/manifold.toml:3:7: connector \"a\": url \"ftp://x\" must start with http:// or https://",
    );
    check_err(
        "[connectors.a]\nkind = \"http\"\nurl = \"http://x\"\ncommand = \"y\"\n",
        "/etc/m/manifold.toml:1:1: connector \"a\": \"command\" applies to kind = \"stdio\" only",
    );
    check_err(
        "[connectors.a]\nkind = \"stdio\"\ncommand = \"x\"\nenv = { K = \"${MISSING}\" }\n",
        "/etc/m/manifold.toml:4:13: connector \"a\": env.K: environment variable MISSING is not set: export it, or write ${MISSING:-default}",
    );
    check_err(
        "[connectors.a]\nkind = \"stdio\"\ncommand = \"x\"\ncall_timeout = \"soon\"\n",
        "/etc/m/manifold.toml:4:16: connector \"a\": call_timeout: \"soon\" is not a duration like \"500ms\", \"30s\", \"5m\" or \"1h\"",
    );
    check_err(
        "[connectors.Bad]\nkind = \"stdio\"\ncommand = \"x\"\n",
        "/etc/m/manifold.toml:1:1: connector: invalid name \"Bad\": use 1-32 characters, lowercase letters, digits, '-' or '_', starting with a letter",
    );
    check_err(
        "[connectors.time]\nkind = \"stdio\"\ncommand = \"x\"\n[servers.s]\nconnectors = [\"tme\"]\n",
        "/etc/m/manifold.toml:5:15: virtual server \"s\": unknown connector \"tme\" (did you mean \"time\"?)",
    );
    check_err(
        "[connectors.time]\nkind = \"stdio\"\ncommand = \"x\"\n[servers.s]\nconnectors = [\"time\"]\n[servers.s.curation.other]\nprefix = false\n",
        "/etc/m/manifold.toml:6:1: virtual server \"s\": curation for \"other\", which is not in `connectors`",
    );
    check_err(
        "[connectors.time]\nkind = \"stdio\"\ncommand = \"x\"\n[servers.s]\nconnectors = [\"time\"]\n[servers.s.curation.time.tools.t]\nrename = \"has space\"\n",
        "/etc/m/manifold.toml:7:10: virtual server \"s\": tool \"t\" of \"time\": rename \"has space\" is not a valid tool name (1-64 of A-Z a-z 0-9 _ - .)",
    );
    check_err(
        "[gateway]\nlisten = \"everywhere\"\n",
        "/etc/m/manifold.toml:2:10: gateway.listen: \"everywhere\" is not an address like \"127.0.0.1:8730\"",
    );
    check_err(
        "[gateway\n",
        "/etc/m/manifold.toml:1:9: unclosed table, expected `]`",
    );
}

/// One run reports every problem, from serde (each table is read on its own) and from
/// validation, in file order; a problem does not cause others (a server using a broken
/// connector gets no "unknown connector").
#[test]
fn every_error_is_reported_at_once() {
    check_err(
        r#"
[connectors.time]
kind = "stdio"
command = "mcp-server-time"
args = "--local-timezone=UTC"
[connectors.Fetch]
kind = "stdio"
command = "x"
[connectors.remote]
kind = "http"
url = "ftp://x"
call_timeout = "soon"
headers = { Authorization = "Bearer ${MISSING}" }
[connectors.nokind]
command = "x"
[connectors.ok]
kind = "stdio"
command = "x"
sessions = "per-user"
[servers.main]
connectors = ["time", "remote", "tme", "ok"]
separator = "::"
[servers.main.curation.rmote]
prefix = false
[servers.other]
conectors = ["ok"]
"#,
        r#"/etc/m/manifold.toml:5:8: connectors.time.args: expected a list of strings, found a string "--local-timezone=UTC"
/etc/m/manifold.toml:6:1: connector: invalid name "Fetch": use 1-32 characters, lowercase letters, digits, '-' or '_', starting with a letter
/etc/m/manifold.toml:11:7: connector "remote": url "ftp://x" must start with http:// or https://
/etc/m/manifold.toml:12:16: connector "remote": call_timeout: "soon" is not a duration like "500ms", "30s", "5m" or "1h"
/etc/m/manifold.toml:13:29: connector "remote": headers.Authorization: environment variable MISSING is not set: export it, or write ${MISSING:-default}
/etc/m/manifold.toml:14:1: connectors.nokind: missing required key `kind`
/etc/m/manifold.toml:19:12: connector "ok": sessions = "per-user" is not one of "shared", "per_client"
/etc/m/manifold.toml:21:33: virtual server "main": unknown connector "tme" (did you mean "time"?)
/etc/m/manifold.toml:22:13: virtual server "main": separator "::" must be 1-4 characters from letters, digits, '_', '-', '.'
/etc/m/manifold.toml:23:1: virtual server "main": curation for "rmote", which is not in `connectors` (did you mean "remote"?)
/etc/m/manifold.toml:26:1: unknown field `conectors` in `servers.other`, expected one of `connectors`, `separator`, `instructions`, `title`, `tool_updates`, `curation` (did you mean "connectors"?)"#,
    );
}

/// A value of the wrong type names its key path and says what was expected, in TOML's words.
#[test]
fn type_errors_name_the_key() {
    let cases = [
        (
            "[connectors.time]\nkind = \"stdio\"\ncommand = \"x\"\nargs = \"x\"\n",
            "/etc/m/manifold.toml:4:8: connectors.time.args: expected a list of strings, found a string \"x\"",
        ),
        (
            "[connectors.time]\nkind = \"stdio\"\ncommand = \"x\"\nargs = [\"a\", 1]\n",
            "/etc/m/manifold.toml:4:14: connectors.time.args[1]: expected a string, found an integer 1",
        ),
        (
            "[connectors.a]\nkind = 3\n",
            "/etc/m/manifold.toml:2:8: connectors.a.kind: expected a string, found an integer 3",
        ),
        (
            "[connectors.a]\nkind = \"stdio\"\ncommand = \"x\"\nmax_sessions = -1\n",
            "/etc/m/manifold.toml:4:16: connectors.a.max_sessions: expected a whole number from 0 to 4294967295, found an integer -1",
        ),
        (
            "[connectors.a]\nkind = \"stdio\"\ncommand = \"x\"\nenv = [\"A=1\"]\n",
            "/etc/m/manifold.toml:4:7: connectors.a.env: expected a table, found a list",
        ),
        (
            "[connectors.a]\nkind = \"stdio\"\ncommand = \"x\"\nrestart = 5\n",
            "/etc/m/manifold.toml:4:11: connectors.a.restart: expected a table, found an integer 5",
        ),
        (
            "[connectors.a]\nkind = \"stdio\"\ncommand = \"x\"\n[connectors.a.restart]\nwindw = \"1m\"\n",
            "/etc/m/manifold.toml:5:1: unknown field `windw` in `connectors.a.restart`, expected one of `initial_backoff`, `max_backoff`, `max_failures`, `window`, `open_for` (did you mean \"window\"?)",
        ),
        (
            "[gateway]\nwatch = \"yes\"\n",
            "/etc/m/manifold.toml:2:9: gateway.watch: expected true or false, found a string \"yes\"",
        ),
        (
            "connectors = 1\n",
            "/etc/m/manifold.toml:1:14: connectors: expected a table of `[connectors.NAME]` tables, found an integer",
        ),
        (
            "[connectors]\ntime = \"uvx mcp-server-time\"\n",
            "/etc/m/manifold.toml:2:8: connectors.time: expected a table, found a string \"uvx mcp-server-time\"",
        ),
        (
            "[servers.s]\nconnectors = \"time\"\n",
            "/etc/m/manifold.toml:2:14: servers.s.connectors: expected a list of strings, found a string \"time\"",
        ),
        (
            "[servers.s.curation.time]\nprefix = false\n",
            "/etc/m/manifold.toml:1:10: servers.s: missing required key `connectors`",
        ),
        (
            "[conectors.time]\nkind = \"stdio\"\n",
            "/etc/m/manifold.toml:1:2: unknown field `conectors`, expected one of `gateway`, `store`, `auth`, `connectors`, `servers`, `roles`, `groups`, `policy` (did you mean \"connectors\"?)",
        ),
    ];
    for (text, expect) in cases {
        check_err(text, expect);
    }
}

/// A string that may be a credential is not repeated in a type error.
#[test]
fn type_errors_do_not_repeat_secrets() {
    check_err(
        "[connectors.a]\nkind = \"http\"\nurl = \"http://x\"\nheaders = \"Bearer tok-123456\"\n",
        "/etc/m/manifold.toml:4:11: connectors.a.headers: expected a table, found a string (not shown: it may be a secret)",
    );
    check_err(
        "[connectors.a]\nkind = \"stdio\"\ncommand = \"x\"\nargs = \"--token=tok-123456\"\n",
        "/etc/m/manifold.toml:4:8: connectors.a.args: expected a list of strings, found a string (not shown: it may be a secret)",
    );
}

/// "expected a list of strings" is right because every list in the file is one.
#[test]
fn every_list_in_the_file_is_a_list_of_strings() {
    let raw = include_str!("raw.rs");
    let lists: Vec<&str> = raw
        .lines()
        .filter(|l| l.contains("Vec<"))
        .filter(|l| {
            // Fields only (`pub name: Type`), as in `every_config_key_is_documented`.
            l.trim()
                .strip_prefix("pub ")
                .and_then(|f| f.split_once(':'))
                .is_some_and(|(k, _)| !k.contains(' '))
        })
        .collect();
    assert!(lists.len() >= 5, "{lists:?}");
    for l in lists {
        assert!(
            l.contains("Vec<String>") || l.contains("Vec<Spanned<String>>"),
            "{l}: a list of something else: reword \"a sequence\" in text.rs"
        );
    }
}

/// Curation for a connector the server does not list suggests the one meant, or says to list it.
#[test]
fn curation_for_an_unlisted_connector_suggests_a_fix() {
    let connectors = "[connectors.time]\nkind = \"stdio\"\ncommand = \"x\"\n[connectors.fetch]\nkind = \"stdio\"\ncommand = \"x\"\n";
    check_err(
        &format!(
            "{connectors}[servers.s]\nconnectors = [\"time\"]\n[servers.s.curation.tmie]\nprefix = false\n"
        ),
        "/etc/m/manifold.toml:9:1: virtual server \"s\": curation for \"tmie\", which is not in `connectors` (did you mean \"time\"?)",
    );
    check_err(
        &format!(
            "{connectors}[servers.s]\nconnectors = [\"time\"]\n[servers.s.curation.fetch]\nprefix = false\n"
        ),
        "/etc/m/manifold.toml:9:1: virtual server \"s\": curation for \"fetch\", which is not in `connectors` (add \"fetch\" to `connectors` to use it in this server)",
    );
}

/// A file that serves nothing, or a connector no server uses, loads with a warning.
#[test]
fn warnings_for_what_would_not_be_served() {
    let c = parse("").unwrap();
    assert_eq!(
        c.warnings(),
        [
            "/etc/m/manifold.toml defines no virtual server ([servers.NAME]); nothing would be served"
        ]
    );
    let c = parse("[connectors.time]\nkind = \"stdio\"\ncommand = \"x\"\n").unwrap();
    assert_eq!(
        c.warnings(),
        [
            "/etc/m/manifold.toml defines no virtual server ([servers.NAME]); nothing would be served"
        ]
    );
    let c = parse(
        "[connectors.time]\nkind = \"stdio\"\ncommand = \"x\"\n[connectors.spare]\nkind = \"stdio\"\ncommand = \"x\"\n[servers.s]\nconnectors = [\"time\"]\n",
    )
    .unwrap();
    assert_eq!(
        c.warnings(),
        [
            "/etc/m/manifold.toml: connector \"spare\" is not used by any virtual server: add it to a server's `connectors`, or remove it"
        ]
    );
    assert!(parse(GOOD).unwrap().warnings().is_empty());
}

#[test]
fn secret_files_are_read_relative_to_the_config() {
    let dir = std::env::temp_dir().join(format!("manifold-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("token"), "from-file\n").unwrap();
    let text = "[connectors.a]\nkind = \"http\"\nurl = \"http://x\"\nheaders = { Authorization = \"Bearer ${file:token}\" }\n";
    let c = Config::parse(text, &dir.join("m.toml"), &env(&[])).unwrap();
    let TransportSpec::Http(h) = &c.connectors[&ConnectorId::parse("a").unwrap()].transport else {
        panic!()
    };
    assert_eq!(h.headers[0].1.expose(), "Bearer from-file");
    let missing =
        "[connectors.a]\nkind = \"http\"\nurl = \"http://x\"\nheaders = { A = \"${file:nope}\" }\n";
    let e = Config::parse(missing, &dir.join("m.toml"), &env(&[]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cannot read secret file") && e.contains("nope"),
        "{e}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// docs/config.md documents every key the parser accepts (a stale reference fails CI).
#[test]
fn every_config_key_is_documented() {
    let doc = include_str!("../../../docs/config.md");
    let raw = include_str!("raw.rs");
    let keys: Vec<&str> = raw
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub "))
        .filter_map(|l| l.split_once(':').map(|(k, _)| k))
        .filter(|k| !k.contains(' '))
        .collect();
    assert!(keys.len() > 30, "found only {keys:?}");
    let missing: Vec<&&str> = keys
        .iter()
        .filter(|k| !doc.contains(&format!("`{k}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "config keys missing from docs/config.md: {missing:?}"
    );
}

#[test]
fn secrets_are_collected_from_every_field() {
    let c = Config::parse(
        r#"
[connectors.remote]
kind = "http"
url = "http://user:PASSWORD@127.0.0.1:1/mcp?api_key=${KEY}"
headers = { Authorization = "Bearer tok-123456", X-Tenant = "acme" }

[connectors.local]
kind = "stdio"
command = "server"
args = ["--port", "9", "--token=${TOKEN}"]
env = { GITHUB_TOKEN = "ghp-literal", MODE = "production", LONG = "0123456789abcdefXYZ" }

[connectors.plain]
kind = "stdio"
command = "server"
args = ["--port", "9", "cost=$$5"]
"#,
        Path::new("/etc/m/manifold.toml"),
        &env(&[("TOKEN", "s3cret-token"), ("KEY", "the-api-key")]),
    )
    .expect("valid");
    let remote = &c.connectors[&ConnectorId::parse("remote").unwrap()];
    let TransportSpec::Http(h) = &remote.transport else {
        panic!("http")
    };
    assert_eq!(h.display_url(), "http://***@127.0.0.1:1/mcp?api_key=***");
    assert!(!format!("{remote:?}").contains("PASSWORD"));
    let shown = remote
        .secrets
        .scrub("PASSWORD the-api-key Bearer tok-123456, tok-123456 acme user Bearer");
    assert_eq!(shown, "*** *** ***, *** *** *** Bearer");

    let local = &c.connectors[&ConnectorId::parse("local").unwrap()];
    let TransportSpec::Stdio(s) = &local.transport else {
        panic!("stdio")
    };
    assert_eq!(s.args, ["--port", "9", "--token=s3cret-token"]);
    assert!(s.args_hold_secrets);
    assert_eq!(
        s.display_args(),
        "<3 arguments, not shown: they hold secrets>"
    );
    assert!(!format!("{local:?}").contains("s3cret-token"));
    assert_eq!(
        local
            .secrets
            .scrub("s3cret-token ghp-literal production 0123456789abcdefXYZ"),
        "*** *** production ***"
    );

    let plain = &c.connectors[&ConnectorId::parse("plain").unwrap()];
    let TransportSpec::Stdio(s) = &plain.transport else {
        panic!("stdio")
    };
    assert_eq!(s.args, ["--port", "9", "cost=$5"]);
    assert!(!s.args_hold_secrets);
    assert_eq!(s.display_args(), "--port 9 cost=$5");
}

#[test]
fn a_literal_credential_argument_hides_the_arguments() {
    let c =
        parse("[connectors.a]\nkind = \"stdio\"\ncommand = \"x\"\nargs = [\"--api-key\", \"k\"]\n")
            .expect("valid");
    let TransportSpec::Stdio(s) = &c.connectors[&ConnectorId::parse("a").unwrap()].transport else {
        panic!("stdio")
    };
    assert!(s.args_hold_secrets);
}

#[test]
fn a_bad_reference_in_args_names_the_argument() {
    check_err(
        "[connectors.a]\nkind = \"stdio\"\ncommand = \"x\"\nargs = [\"ok\", \"${NOPE}\"]\n",
        "/etc/m/manifold.toml:4:15: connector \"a\": args[1]: environment variable NOPE is not set: export it, or write ${NOPE:-default}",
    );
}

/// The loader never panics on any text; every refusal names the file (and, from the TOML
/// parser on, a line and column) and says what is wrong.
#[test]
fn fuzz_the_config_loader() {
    let target = manifold_fuzz::Target {
        name: "config",
        dictionary: &[
            b"[connectors.x]\n",
            b"[servers.x]\n",
            b"kind = \"stdio\"\n",
            b"kind = \"http\"\n",
            b"${",
            b"${TOKEN}",
            b"${NOPE:-d}",
            b"$$",
            b"\"30s\"",
            b"= 18446744073709551616",
            b"curation",
            b".tools.",
            b"\"\\u0000\"",
            b"\"http://u:p@h/?k=v\"",
        ],
        iterations: 10_000,
    };
    let path = Path::new("/nonexistent/manifold.toml");
    manifold_fuzz::run(&target, |bytes| {
        let Ok(text) = std::str::from_utf8(bytes) else {
            return;
        };
        match Config::parse(text, path, &env(&[("TOKEN", "s3cret-token")])) {
            Ok(c) => {
                // What loads, validates: every server's connectors exist.
                for s in c.servers.values() {
                    for u in &s.connectors {
                        assert!(c.connectors.contains_key(&u.connector));
                    }
                }
                // And shows no secret.
                assert!(!format!("{c:?}").contains("s3cret-token"), "{c:?}");
            }
            Err(errors) => {
                for e in &errors {
                    let e = e.message();
                    assert!(e.starts_with("/nonexistent/manifold.toml"), "{e}");
                    assert!(!e.contains("s3cret-token"), "an error shows a secret: {e}");
                }
            }
        }
    });
}

#[test]
fn a_reference_anywhere_in_the_url_is_not_shown() {
    let c =
        parse("[connectors.r]\nkind = \"http\"\nurl = \"http://h-${TOKEN}.test/mcp/${TOKEN}\"\n")
            .expect("valid");
    let TransportSpec::Http(h) = &c.connectors[&ConnectorId::parse("r").unwrap()].transport else {
        panic!("http")
    };
    assert_eq!(h.url, "http://h-s3cret.test/mcp/s3cret");
    assert_eq!(h.display_url(), "http://h-***.test/mcp/***");
}

#[test]
fn the_store_is_sqlite_in_a_data_dir_or_postgres() {
    let path = Path::new("/etc/manifold/m.toml");
    let env = |k: &str| match k {
        "HOME" => Some("/home/u".to_owned()),
        "PG" => Some("postgres://u:pw@db:5432/m".to_owned()),
        _ => None,
    };
    let load = |text: &str| Config::parse(text, path, &env);
    assert_eq!(
        load("").unwrap().store,
        StoreLocation::Sqlite("/home/u/.local/share/manifold".into())
    );
    let xdg = |k: &str| (k == "XDG_DATA_HOME").then(|| "/data".to_owned());
    assert_eq!(
        Config::parse("", path, &xdg).unwrap().store,
        StoreLocation::Sqlite("/data/manifold".into())
    );
    assert_eq!(
        load("[store]\ndata_dir = \"state\"\n").unwrap().store,
        StoreLocation::Sqlite("/etc/manifold/state".into())
    );
    let pg = load("[store]\nurl = \"${PG}\"\n").unwrap();
    assert_eq!(
        pg.store,
        StoreLocation::Postgres(Secret::new("postgres://u:pw@db:5432/m"))
    );
    assert!(!format!("{pg:?}").contains("pw"), "the URL is never shown");
    let e = load("[store]\nurl = \"mysql://x\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("m.toml:2:7: store.url: must be a postgres:// URL"),
        "{e}"
    );
    let e = load("[store]\nurl = \"postgres://x/y\"\ndata_dir = \"d\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("store.data_dir: not used with store.url"), "{e}");
    let e = load("[store]\ndir = \"d\"\n").unwrap_err().to_string();
    assert!(e.contains("unknown field `dir`"), "{e}");
}

#[test]
fn auth_settings_are_checked() {
    let c = parse(
        "[auth]\nrequired = true\nissuer = \"https://gw.example.com/\"\n[auth.clients.cli]\nredirect_uris = [\"http://127.0.0.1/cb\", \"https://app.example/cb\"]\n",
    )
    .unwrap();
    assert!(c.auth.required);
    assert_eq!(c.auth.issuer.as_deref(), Some("https://gw.example.com"));
    assert_eq!(c.auth.clients["cli"].name, "cli");
    assert_eq!(c.auth.access_token_lifetime, Duration::from_secs(3600));
    let e = parse(
        "[gateway]\nlisten = \"0.0.0.0:8730\"\n[auth]\nissuer = \"http://gw.example.com\"\naccess_token_lifetime = \"2d\"\n[auth.clients.web]\nredirect_uris = [\"http://app.example/cb\", \"https://app.example/cb#x\"]\n[auth.clients.none]\nredirect_uris = []\n",
    )
    .unwrap_err();
    for part in [
        "gateway.listen: 0.0.0.0:8730 is reachable from other machines",
        "set [auth] required = true",
        "auth.issuer: \"http://gw.example.com\" must be https",
        "auth.clients.web.redirect_uris: \"http://app.example/cb\": plain http is allowed only to a loopback address",
        "has a fragment",
        "auth.clients.none: needs redirect_uris",
        "auth.access_token_lifetime: at most 24h",
        "/etc/m/manifold.toml:",
    ] {
        assert!(e.contains(part), "{part:?} in:\n{e}");
    }
    let e = parse("[auth]\nissuer = \"https://gw.example.com/base\"\n").unwrap_err();
    assert!(e.contains("auth.issuer"), "{e}");
    assert!(c.auth.client_metadata_documents);
    assert!(c.auth.client_metadata_private_hosts.is_empty());
    let c = parse(
        "[auth]\nclient_metadata_documents = false\nclient_metadata_private_hosts = [\"Clients.Corp.Internal\", \"[::1]\", \"127.0.0.1\"]\n",
    )
    .unwrap();
    assert!(!c.auth.client_metadata_documents);
    assert_eq!(
        c.auth.client_metadata_private_hosts,
        ["clients.corp.internal", "::1", "127.0.0.1"]
    );
    let e = parse(
        "[auth]\nclient_metadata_private_hosts = [\"https://clients.corp/\"]\nclient_metadata_ca = \"no-such-ca.pem\"\n",
    )
    .unwrap_err();
    for part in [
        "auth.client_metadata_private_hosts: \"https://clients.corp/\" is not a host name",
        "auth.client_metadata_ca: /etc/m/no-such-ca.pem is not a readable file",
    ] {
        assert!(e.contains(part), "{part:?} in:\n{e}");
    }
}

#[test]
fn identity_providers_are_checked() {
    let c = parse(
        "[auth]\nrequired = true\npassword_login = false\n[auth.providers.okta]\nissuer = \"https://acme.okta.example/\"\nclient_id = \"0oa1\"\nscopes = [\"email\"]\ngroups_claim = \"realm_access.roles\"\nroles = { eng = [\"dev\"], admins = [\"admin\", \"dev\"] }\ndefault_roles = [\"member\"]\n[auth.providers.local-kc]\nissuer = \"http://127.0.0.1:8080/realms/acme\"\nclient_id = \"manifold\"\nlabel = \"Keycloak\"\n",
    )
    .unwrap();
    assert!(!c.auth.password_login);
    let okta = &c.auth.providers["okta"];
    assert_eq!(okta.issuer, "https://acme.okta.example/", "kept exactly");
    assert_eq!(okta.label, "okta");
    assert_eq!(okta.scopes, ["openid", "email"], "openid is always asked");
    assert_eq!(okta.groups_claim, "realm_access.roles");
    assert_eq!(okta.roles["admins"], ["admin", "dev"]);
    assert_eq!(okta.default_roles, ["member"]);
    assert_eq!(okta.client_secret, None);
    let kc = &c.auth.providers["local-kc"];
    assert_eq!(kc.label, "Keycloak");
    assert_eq!(kc.scopes, ["openid", "profile", "email"]);
    assert_eq!(
        (kc.groups_claim.as_str(), kc.name_claim.as_str()),
        ("groups", "name")
    );
    assert_eq!(c.auth.providers.len(), 2);
    let e = parse(
        "[auth]\npassword_login = false\n[auth.providers.Bad_Name]\nissuer = \"http://idp.example\"\nclient_id = \"\"\ngroups_claim = \"a..b\"\n[auth.providers.x]\nissuer = \"https://idp.example/?q=1\"\nclient_id = \"c\"\nclient_secret = \"${NO_SUCH_SECRET}\"\n",
    )
    .unwrap_err();
    for part in [
        "auth.providers.Bad_Name: a provider's name is 1 to 32 of a-z",
        "auth.providers.Bad_Name.issuer: \"http://idp.example\" must be https",
        "auth.providers.Bad_Name.client_id: must not be empty",
        "auth.providers.Bad_Name.groups_claim: \"a..b\" is not a claim path",
        "auth.providers.x.issuer: \"https://idp.example/?q=1\" must not have a query",
        "auth.providers.x.client_secret:",
        "NO_SUCH_SECRET",
    ] {
        assert!(e.contains(part), "{part:?} in:\n{e}");
    }
    assert!(!okta.id_jag);
    // A confidential client (for identity assertions) needs no redirect URI, but a real secret.
    let c = parse(
        "[auth.clients.agent]\nsecret = \"${TOKEN}-and-more-of-it\"\n[auth.providers.p]\nissuer = \"https://i.example\"\nclient_id = \"c\"\nid_jag = true\n",
    )
    .unwrap();
    assert_eq!(
        c.auth.clients["agent"].secret.as_deref(),
        Some("s3cret-and-more-of-it")
    );
    assert!(c.auth.providers["p"].id_jag);
    assert!(!format!("{:?}", c.auth.clients).contains("s3cret"));
    let e = parse("[auth.clients.agent]\nsecret = \"short\"\n").unwrap_err();
    assert!(
        e.contains("auth.clients.agent.secret: at least 16 characters"),
        "{e}"
    );
    let e = parse("[auth]\npassword_login = false\n").unwrap_err();
    assert!(e.contains("leaves no way to sign in"), "{e}");
    let e = parse("[auth.providers.p]\nissuer = \"https://i.example\"\n").unwrap_err();
    assert!(e.contains("client_id"), "{e}");
    // The secret never shows in a debug print.
    let c = parse(
        "[auth.providers.p]\nissuer = \"https://i.example\"\nclient_id = \"c\"\nclient_secret = \"s3cr3t-value\"\n",
    )
    .unwrap();
    assert_eq!(
        c.auth.providers["p"].client_secret.as_deref(),
        Some("s3cr3t-value")
    );
    assert!(!format!("{:?}", c.auth).contains("s3cr3t-value"));
}

#[test]
fn roles_are_checked() {
    let base = "[connectors.gh]\nkind = \"stdio\"\ncommand = \"x\"\n[servers.main]\nconnectors = [\"gh\"]\n";
    let c = parse(&format!(
        "{base}[roles.dev]\nservers = [\"main\"]\nallow = [\"gh/*\", \"*/read_*\"]\ndeny = [\"gh/delete_*\"]\n[roles.ops]\nservers = [\"*\"]\n"
    ))
    .unwrap();
    assert_eq!(c.roles["dev"].allow, ["gh/*", "*/read_*"]);
    assert_eq!(c.roles["dev"].deny, ["gh/delete_*"]);
    assert_eq!(c.roles["ops"].servers, ["*"]);
    assert!(c.roles["ops"].allow.is_empty());
    assert_eq!(
        c.servers["main"].tool_updates,
        crate::ToolUpdates::Auto,
        "tools appear at once unless the server reviews them"
    );
    let c = parse(&format!(
        "{base}tool_updates = \"review\"\n[roles.dev]\nservers = [\"main\"]\nask = [\"gh/merge_*\"]\n"
    ))
    .unwrap();
    assert_eq!(c.servers["main"].tool_updates, crate::ToolUpdates::Review);
    assert_eq!(c.roles["dev"].ask, ["gh/merge_*"]);
    let e = parse(&format!(
        "{base}tool_updates = \"manual\"\n[roles.dev]\nservers = [\"main\"]\nask = [\"merge\"]\n"
    ))
    .unwrap_err();
    assert!(
        e.contains(
            "virtual server \"main\": tool_updates = \"manual\" is not one of \"auto\", \"review\""
        ) && e.contains("roles.dev.ask: \"merge\" is not CONNECTOR/NAME"),
        "{e}"
    );
    let e = parse(&format!(
        "{base}[roles.dev]\nservers = [\"nope\"]\nallow = [\"gh\", \"/x\"]\ndeny = [\"gh/\"]\nextra = 1\n"
    ))
    .unwrap_err();
    assert!(e.contains("unknown field `extra`"), "{e}");
    let e = parse(&format!(
        "{base}[roles.dev]\nservers = [\"nope\"]\nallow = [\"gh\", \"/x\"]\ndeny = [\"gh/\"]\n"
    ))
    .unwrap_err();
    for part in [
        "roles.dev.servers: no virtual server \"nope\" (there are: main",
        "roles.dev.allow: \"gh\" is not CONNECTOR/NAME",
        "roles.dev.allow: \"/x\" is not CONNECTOR/NAME",
        "roles.dev.deny: \"gh/\" is not CONNECTOR/NAME",
        "/etc/m/manifold.toml:",
    ] {
        assert!(e.contains(part), "{part:?} in:\n{e}");
    }
}

#[test]
fn trusted_proxies_are_addresses_or_networks() {
    let dir = std::path::Path::new("/etc/m");
    let c = Config::parse(
        "[gateway]\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\", \"192.0.2.7\"]\n",
        &dir.join("m.toml"),
        &env(&[]),
    )
    .unwrap();
    let g = &c.gateway;
    assert!(g.trusts("10.1.2.3".parse().unwrap()));
    assert!(g.trusts("::1".parse().unwrap()));
    assert!(g.trusts("::ffff:192.0.2.7".parse().unwrap()));
    assert!(!g.trusts("192.0.2.8".parse().unwrap()));
    let e = Config::parse(
        "[gateway]\ntrusted_proxies = [\"10.0.0.0/33\", \"proxy.local\"]\n",
        &dir.join("m.toml"),
        &env(&[]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("m.toml:2:20: gateway.trusted_proxies: \"10.0.0.0/33\" is neither an address")
            && e.contains("\"proxy.local\""),
        "{e}"
    );
}
