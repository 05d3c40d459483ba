//! `manifold import` tests: what the user sees (the TOML, the variables to export, the notes),
//! and that what is printed loads as a config once those variables exist.

use std::path::Path;

use super::{Imported, import_claude_desktop};
use crate::{Config, ConnectorId, TransportSpec};

/// The fixed comment the TOML starts with.
const HEADER: &str = "# Imported by `manifold import`. Secret values were not copied: export the\n# variables referenced as ${…} before `manifold serve`.\n";

/// Import `json` and compare what the user sees: the TOML after the header comment, then the
/// variables to export and the notes. What was imported must also load (see [`load`]).
fn check(json: &str, expect: &str) {
    let out = import_claude_desktop(json).unwrap_or_else(|e| panic!("import failed: {e}"));
    let body = out
        .toml
        .strip_prefix(HEADER)
        .unwrap_or_else(|| panic!("no header comment:\n{}", out.toml));
    let mut shown = body.trim_end().to_owned();
    shown.push_str(&format!("\n-- variables: {}", out.variables.join(", ")));
    for note in &out.notes {
        shown.push_str(&format!("\nnote: {note}"));
    }
    assert_eq!(shown.trim(), expect.trim(), "\nwhat was shown:\n{shown}\n");
    if let Err(e) = load(&out) {
        panic!("the imported TOML does not load: {e}\n{}", out.toml);
    }
}

/// The printed TOML plus a virtual server over every imported connector, loaded with an
/// environment that sets each variable to `value-of-NAME`.
fn load(out: &Imported) -> Result<Config, String> {
    let mut text = out.toml.clone();
    if !out.names.is_empty() {
        let names: Vec<String> = out.names.iter().map(|n| format!("{n:?}")).collect();
        text.push_str(&format!(
            "\n[servers.main]\nconnectors = [{}]\n",
            names.join(", ")
        ));
    }
    let variables = out.variables.clone();
    let env = move |name: &str| {
        variables
            .iter()
            .any(|v| v == name)
            .then(|| format!("value-of-{name}"))
    };
    Config::parse(&text, Path::new("/etc/m/manifold.toml"), &env).map_err(|e| e.to_string())
}

fn import_err(json: &str) -> String {
    match import_claude_desktop(json) {
        Ok(out) => panic!("expected an error, got:\n{}", out.toml),
        Err(e) => e,
    }
}

#[test]
fn import_claude_desktop_format() {
    let json = r#"{"mcpServers": {
        "Time Server": {"command": "uvx", "args": ["mcp-server-time"], "env": {"API_KEY": "secret-value"}},
        "remote": {"url": "https://example.test/mcp", "headers": {"Authorization": "Bearer abc"}}
    }}"#;
    let out = import_claude_desktop(json).unwrap();
    assert!(
        !out.toml.contains("secret-value") && !out.toml.contains("abc"),
        "{}",
        out.toml
    );
    let mut variables = out.variables.clone();
    variables.sort();
    assert_eq!(variables, ["API_KEY", "REMOTE_TOKEN"]);
    let c = load(&out).unwrap();
    assert_eq!(c.connectors.len(), 2);
    let remote = &c.connectors[&ConnectorId::parse("remote").unwrap()];
    let TransportSpec::Http(h) = &remote.transport else {
        panic!("http")
    };
    assert_eq!(h.headers[0].1.expose(), "Bearer value-of-REMOTE_TOKEN");
    assert!(
        c.connectors
            .contains_key(&ConnectorId::parse("time-server").unwrap())
    );
    assert!(import_err("{}").contains("mcpServers"));
    assert!(import_err("{\"mcpServers\": {\"x\": {}}}").contains("neither"));
    assert!(import_err("nope").contains("not valid JSON"));
}

#[test]
fn disabled_servers_are_skipped_with_a_note() {
    check(
        r#"{"mcpServers": {
            "off": {"command": "old-server", "disabled": true},
            "on": {"command": "new-server", "disabled": false}
        }}"#,
        r#"
# Not imported: server "off": disabled in the source file
[connectors.on]
kind = "stdio"
command = "new-server"
-- variables: 
note: server "off": disabled in the source file; skipped
"#,
    );
}

#[test]
fn websocket_servers_are_skipped_with_a_note() {
    check(
        r#"{"mcpServers": {
            "a": {"type": "websocket", "url": "https://h.test/ws"},
            "b": {"url": "wss://h.test/mcp"},
            "c": {"url": "https://h.test/mcp"}
        }}"#,
        r#"
# Not imported: server "a": WebSocket transport is not supported
# Not imported: server "b": WebSocket transport is not supported
[connectors.c]
kind = "http"
url = "https://h.test/mcp"
-- variables: 
note: server "a": WebSocket transport is not supported; skipped
note: server "b": WebSocket transport is not supported; skipped
"#,
    );
}

#[test]
fn http_types_map_to_transports() {
    check(
        r#"{"mcpServers": {
            "a": {"type": "http", "url": "https://h.test/a"},
            "b": {"type": "streamable-http", "url": "https://h.test/b"},
            "c": {"type": "streamableHttp", "url": "https://h.test/c"},
            "d": {"type": "sse", "url": "https://h.test/d"},
            "e": {"type": "stdio", "command": "e"},
            "f": {"type": "grpc", "url": "https://h.test/f"}
        }}"#,
        r#"
# Not imported: server "f": "type" "grpc" is not one of "stdio", "http", "streamable-http", "sse"
[connectors.a]
kind = "http"
url = "https://h.test/a"

[connectors.b]
kind = "http"
url = "https://h.test/b"

[connectors.c]
kind = "http"
url = "https://h.test/c"

[connectors.d]
kind = "http"
url = "https://h.test/d"
transport = "sse"

[connectors.e]
kind = "stdio"
command = "e"
-- variables: 
note: server "f": "type" "grpc" is not one of "stdio", "http", "streamable-http", "sse"; skipped
"#,
    );
}

#[test]
fn only_secret_looking_env_values_become_references() {
    check(
        r#"{"mcpServers": {"s": {"command": "s", "env": {
            "TZ": "Europe/Paris",
            "LOG_LEVEL": "debug",
            "DATA_DIR": "/var/lib/s",
            "SLACK_BOT_TOKEN": "xoxb-1",
            "db_password": "hunter2",
            "SESSION_NAME": "x",
            "UPSTREAM": "a1b2c3d4e5f6a7b8c9d0",
            "JWT": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJlMTIzNDU2",
            "DATABASE_URL": "postgres://u:p@db/app",
            "HOME_URL": "https://example.test/v1/path",
            "ALREADY": "${MY_SECRET}",
            "DEFAULTED": "${LEVEL:-info}"
        }}}}"#,
        r#"
[connectors.s]
kind = "stdio"
command = "s"

[connectors.s.env]
ALREADY = "${MY_SECRET}"
DATABASE_URL = "${DATABASE_URL}"
DATA_DIR = "/var/lib/s"
DEFAULTED = "${LEVEL:-info}"
HOME_URL = "https://example.test/v1/path"
JWT = "${JWT}"
LOG_LEVEL = "debug"
SESSION_NAME = "${SESSION_NAME}"
SLACK_BOT_TOKEN = "${SLACK_BOT_TOKEN}"
TZ = "Europe/Paris"
UPSTREAM = "${UPSTREAM}"
db_password = "${db_password}"
-- variables: MY_SECRET, DATABASE_URL, JWT, SESSION_NAME, SLACK_BOT_TOKEN, UPSTREAM, db_password
"#,
    );
}

#[test]
fn headers_other_than_credentials_are_copied() {
    check(
        r#"{"mcpServers": {"api": {"url": "https://h.test/mcp", "headers": {
            "Accept": "application/json",
            "X-Api-Key": "k-1",
            "Cookie": "sid=1",
            "X-Tenant": "acme",
            "X-Trace": "0123456789abcdef0123"
        }}}}"#,
        r#"
[connectors.api]
kind = "http"
url = "https://h.test/mcp"

[connectors.api.headers]
Accept = "application/json"
Cookie = "${API_COOKIE}"
X-Api-Key = "${API_X_API_KEY}"
X-Tenant = "acme"
X-Trace = "${API_X_TRACE}"
-- variables: API_COOKIE, API_X_API_KEY, API_X_TRACE
note: server "api": header Cookie now reads "${API_COOKIE}": export API_COOKIE with the value from the source file
note: server "api": header X-Api-Key now reads "${API_X_API_KEY}": export API_X_API_KEY with the value from the source file
note: server "api": header X-Trace now reads "${API_X_TRACE}": export API_X_TRACE with the value from the source file
"#,
    );
}

#[test]
fn variables_are_the_env_keys_without_doubled_prefixes() {
    check(
        r#"{"mcpServers": {
            "github": {"command": "gh", "env": {"GITHUB_PERSONAL_ACCESS_TOKEN": "ghp_1"}},
            "slack": {"command": "sl", "env": {"SLACK_BOT_TOKEN": "xoxb-1", "my-token": "t"}}
        }}"#,
        r#"
[connectors.github]
kind = "stdio"
command = "gh"

[connectors.github.env]
GITHUB_PERSONAL_ACCESS_TOKEN = "${GITHUB_PERSONAL_ACCESS_TOKEN}"

[connectors.slack]
kind = "stdio"
command = "sl"

[connectors.slack.env]
SLACK_BOT_TOKEN = "${SLACK_BOT_TOKEN}"
my-token = "${SLACK_MY_TOKEN}"
-- variables: GITHUB_PERSONAL_ACCESS_TOKEN, SLACK_BOT_TOKEN, SLACK_MY_TOKEN
note: server "slack": env my-token now reads "${SLACK_MY_TOKEN}" (my-token is not a valid variable name): export SLACK_MY_TOKEN with the value from the source file
"#,
    );
}

#[test]
fn a_key_with_different_values_is_prefixed_in_every_server() {
    check(
        r#"{"mcpServers": {
            "github": {"command": "gh", "env": {"GITHUB_TOKEN": "ghp_personal", "API_KEY": "same"}},
            "work": {"command": "gh", "env": {"GITHUB_TOKEN": "ghp_work", "API_KEY": "same"}}
        }}"#,
        r#"
[connectors.github]
kind = "stdio"
command = "gh"

[connectors.github.env]
API_KEY = "${API_KEY}"
GITHUB_TOKEN = "${GITHUB_TOKEN}"

[connectors.work]
kind = "stdio"
command = "gh"

[connectors.work.env]
API_KEY = "${API_KEY}"
GITHUB_TOKEN = "${WORK_GITHUB_TOKEN}"
-- variables: API_KEY, GITHUB_TOKEN, WORK_GITHUB_TOKEN
note: server "work": env GITHUB_TOKEN now reads "${WORK_GITHUB_TOKEN}" (GITHUB_TOKEN has another value in "github"): export WORK_GITHUB_TOKEN with the value from the source file
"#,
    );
}

#[test]
fn a_bearer_header_keeps_its_scheme() {
    check(
        r#"{"mcpServers": {"remote": {"type": "http", "url": "https://h.test/mcp",
            "headers": {"Authorization": "Bearer sk-123", "Proxy-Authorization": "opaque"}}}}"#,
        r#"
[connectors.remote]
kind = "http"
url = "https://h.test/mcp"

[connectors.remote.headers]
Authorization = "Bearer ${REMOTE_TOKEN}"
Proxy-Authorization = "${REMOTE_PROXY_AUTHORIZATION}"
-- variables: REMOTE_TOKEN, REMOTE_PROXY_AUTHORIZATION
note: server "remote": header Authorization now reads "Bearer ${REMOTE_TOKEN}": export REMOTE_TOKEN with the token that followed "Bearer " in the source file
note: server "remote": header Proxy-Authorization now reads "${REMOTE_PROXY_AUTHORIZATION}": export REMOTE_PROXY_AUTHORIZATION with the value from the source file
"#,
    );
}

#[test]
fn a_name_clash_names_both_servers() {
    assert_eq!(
        import_err(
            r#"{"mcpServers": {"Time Server": {"command": "a"}, "time-server": {"command": "b"}}}"#
        ),
        "servers \"Time Server\" and \"time-server\" both become the connector \"time-server\": \
         rename one of them in the source file"
    );
}

#[test]
fn errors_say_what_to_do() {
    let cases = [
        (
            "{",
            "not valid JSON (EOF while parsing an object at line 1 column 1): \
             pass a Claude Desktop config file (claude_desktop_config.json)",
        ),
        (
            "[]",
            "no \"mcpServers\" object at the top level: pass a Claude Desktop config file \
             (claude_desktop_config.json), which has {\"mcpServers\": {\"name\": {…}}}",
        ),
        (
            r#"{"mcpServers": {"x": 1}}"#,
            "server \"x\": expected an object with \"command\" (a local server) or \"url\" \
             (a remote one), found a number",
        ),
        (
            r#"{"mcpServers": {"x": {"env": {}}}}"#,
            "server \"x\": has neither \"command\" nor \"url\": add one, or remove the server",
        ),
        (
            r#"{"mcpServers": {"x": {"command": "a", "args": ["-p", 8080, null]}}}"#,
            "server \"x\": args[2] is null, not a string: quote it or remove it",
        ),
        (
            r#"{"mcpServers": {"x": {"command": "a", "env": {"K": ["v"]}}}}"#,
            "server \"x\": env.K is an array, not a string: write the value as a string",
        ),
        (
            r#"{"mcpServers": {"x": {"command": "a", "env": ["K=v"]}}}"#,
            "server \"x\": \"env\" is an array, not an object: write it as {\"NAME\": \"value\"}",
        ),
        (
            r#"{"mcpServers": {"x": {"type": "sse", "command": "a"}}}"#,
            "server \"x\": \"type\": \"sse\" needs \"url\" (the server's SSE endpoint): add it",
        ),
        (
            r#"{"mcpServers": {"x": {"url": "localhost:3000/mcp?key=k"}}}"#,
            "server \"x\": \"url\" must start with http:// or https://: fix it in the source \
             file",
        ),
    ];
    for (json, expect) in cases {
        assert_eq!(import_err(json), expect, "for {json}");
    }
}

#[test]
fn numbers_in_args_and_env_are_written_as_strings() {
    check(
        r#"{"mcpServers": {"x": {"command": "a", "args": ["-p", 8080, true], "env": {"PORT": 9}}}}"#,
        r#"
[connectors.x]
kind = "stdio"
command = "a"
args = ["-p", "8080", "true"]

[connectors.x.env]
PORT = "9"
-- variables: 
"#,
    );
}

#[test]
fn dollars_are_escaped_and_references_kept() {
    check(
        r#"{"mcpServers": {
            "a": {"command": "a", "args": ["cost=$5", "${HOME}/x", "${env:WORKSPACE}"],
                  "env": {"PROMPT": "$ ", "BROKEN": "${unterminated"}},
            "b": {"url": "https://h.test/${TENANT}/mcp", "headers": {"Authorization": "Bearer ${B_TOKEN}"}}
        }}"#,
        r#"
[connectors.a]
kind = "stdio"
command = "a"
args = ["cost=$$5", "${HOME}/x", "${WORKSPACE}"]

[connectors.a.env]
BROKEN = "$${unterminated"
PROMPT = "$$ "

[connectors.b]
kind = "http"
url = "https://h.test/${TENANT}/mcp"

[connectors.b.headers]
Authorization = "Bearer ${B_TOKEN}"
-- variables: HOME, WORKSPACE, TENANT, B_TOKEN
"#,
    );
}

#[test]
fn credentials_in_a_url_become_references() {
    check(
        r#"{"mcpServers": {
            "a": {"url": "https://h.test/mcp?api_key=k1&format=json#top"},
            "b": {"url": "https://user:pw@h.test/mcp"},
            "c": {"url": "https://hooks.test/services/T0/a1b2c3d4e5f6a7b8c9d0/mcp?format=json"},
            "d": {"url": "https://tok@h.test:8443/mcp?cost=$1"}
        }}"#,
        r#"
[connectors.a]
kind = "http"
url = "https://h.test/mcp?api_key=${A_API_KEY}&format=json#top"

[connectors.b]
kind = "http"
url = "https://user:${B_PASSWORD}@h.test/mcp"

[connectors.c]
kind = "http"
url = "https://hooks.test/services/T0/${C_URL_TOKEN}/mcp?format=json"

[connectors.d]
kind = "http"
url = "https://${D_USERINFO}@h.test:8443/mcp?cost=$$1"
-- variables: A_API_KEY, B_PASSWORD, C_URL_TOKEN, D_USERINFO
note: server "a": url now reads "https://h.test/mcp?api_key=${A_API_KEY}&format=json#top": export A_API_KEY with the value from the source file's url
note: server "b": url now reads "https://user:${B_PASSWORD}@h.test/mcp": export B_PASSWORD with the value from the source file's url
note: server "c": url now reads "https://hooks.test/services/T0/${C_URL_TOKEN}/mcp?format=json": export C_URL_TOKEN with the value from the source file's url
note: server "d": url now reads "https://${D_USERINFO}@h.test:8443/mcp?cost=$$1": export D_USERINFO with the value from the source file's url
"#,
    );
}

#[test]
fn literal_credentials_in_args_are_pointed_out() {
    check(
        r#"{"mcpServers": {"x": {"command": "a", "args": ["--port", "1", "--api-key", "k"]}}}"#,
        r#"
[connectors.x]
kind = "stdio"
command = "a"
args = ["--port", "1", "--api-key", "k"]
-- variables: 
note: server "x": args[2] looks like it passes a credential, which was copied as is: move the value to an environment variable and write ${NAME} in its place
"#,
    );
}

/// Two servers, a shared secret, a header and a skipped server: the printed TOML plus
/// `[servers.main]` loads, and the connectors get the values of the exported variables.
#[test]
fn the_output_loads_as_a_config() {
    let out = import_claude_desktop(
        r#"{"mcpServers": {
            "github": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-github"],
                       "env": {"GITHUB_PERSONAL_ACCESS_TOKEN": "ghp_1", "TZ": "Europe/Paris"}},
            "remote": {"type": "streamable-http", "url": "https://h.test/mcp",
                       "headers": {"Authorization": "Bearer sk-123", "Accept": "application/json"}},
            "ws": {"url": "ws://h.test/"},
            "old": {"command": "x", "disabled": true}
        }}"#,
    )
    .unwrap();
    assert_eq!(out.names, ["github", "remote"]);
    assert!(
        out.toml.ends_with('\n'),
        "appendable to a file: {:?}",
        out.toml
    );
    let c = load(&out).unwrap();
    assert_eq!(c.servers["main"].connectors.len(), 2);
    let github = &c.connectors[&ConnectorId::parse("github").unwrap()];
    let TransportSpec::Stdio(s) = &github.transport else {
        panic!("stdio")
    };
    assert_eq!(
        s.env["GITHUB_PERSONAL_ACCESS_TOKEN"].expose(),
        "value-of-GITHUB_PERSONAL_ACCESS_TOKEN"
    );
    assert_eq!(s.env["TZ"].expose(), "Europe/Paris");
    let remote = &c.connectors[&ConnectorId::parse("remote").unwrap()];
    let TransportSpec::Http(h) = &remote.transport else {
        panic!("http")
    };
    let headers: Vec<(&str, &str)> = h
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.expose()))
        .collect();
    assert_eq!(
        headers,
        [
            ("Accept", "application/json"),
            ("Authorization", "Bearer value-of-REMOTE_TOKEN")
        ]
    );
}
