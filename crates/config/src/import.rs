//! `manifold import`: a Claude-Desktop-style `{"mcpServers": {…}}` file → `[connectors.*]` TOML.
//!
//! Secret values are never copied: each becomes a `${VAR}` reference, and the caller is told
//! which variables to export. Secret are the `env` values and headers whose name looks like a
//! credential ([`redact::secret_name`], the rule the loader scrubs by: `TOKEN`, `KEY`, `AUTH`,
//! …), values that look like a token whatever their name (no spaces, and a run of 16 or more
//! characters mixing letters and digits, or a URL with userinfo or a credential-named query
//! parameter), and those parts of a connector's `url`. Other values are copied, `$` escaped as
//! `$$`; values that already hold `${…}` references are kept (VS Code's `${env:NAME}` becomes
//! `${NAME}`).
//!
//! Variable names:
//! - an `env` value's variable is its own key (`GITHUB_TOKEN = "${GITHUB_TOKEN}"`): that is what
//!   users already export. When servers give the same key different values, every one of them
//!   prefixes it with its connector name in upper case, `-` as `_` (server `work`:
//!   `WORK_GITHUB_TOKEN`), never doubling a prefix the key already has (server `github` keeps
//!   `GITHUB_TOKEN`); a key that is not a valid variable name is prefixed the same way;
//! - a header's variable is `{CONNECTOR}_{HEADER}` (`REMOTE_X_API_KEY`), except that a
//!   `Scheme token` value (`Bearer sk-…`) keeps its scheme and references only the token,
//!   `{CONNECTOR}_TOKEN`;
//! - in a `url`: `{CONNECTOR}_PASSWORD` (or `_USERINFO`), `{CONNECTOR}_{QUERY_KEY}`,
//!   `{CONNECTOR}_URL_TOKEN` for a token-like path segment; scheme and host stay literal;
//! - a name still taken by another value gets `_2`, `_3`, ….
//!
//! Servers that cannot be served are skipped with a note rather than failing the import:
//! `"disabled": true`, WebSocket (`"type": "websocket"`, `ws://`, `wss://`), an unknown `type`.

#[cfg(test)]
#[path = "import_tests.rs"]
mod tests;

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::{ConnectorId, redact};

/// The converted TOML plus what the user must do about it.
#[derive(Debug)]
pub struct Imported {
    pub toml: String,
    /// Environment variables the TOML requires, in order of first use, each once.
    pub variables: Vec<String>,
    /// The connectors written, in the order of the TOML.
    pub names: Vec<String>,
    /// One line each (without a `note:` prefix): servers skipped, values that became references
    /// under a name the user could not guess, credentials left in `args`.
    pub notes: Vec<String>,
}

/// Convert a Claude Desktop config. Errors are the source file's: each names the server and
/// says how to fix it.
pub fn import_claude_desktop(json: &str) -> Result<Imported, String> {
    let doc: Value = serde_json::from_str(json).map_err(|e| {
        format!(
            "not valid JSON ({e}): pass a Claude Desktop config file (claude_desktop_config.json)"
        )
    })?;
    let servers = doc.get("mcpServers").and_then(Value::as_object).ok_or(
        "no \"mcpServers\" object at the top level: pass a Claude Desktop config file \
         (claude_desktop_config.json), which has {\"mcpServers\": {\"name\": {…}}}",
    )?;
    let mut notes = Vec::new();
    let mut skipped = Vec::new();
    let mut parsed: Vec<Server> = Vec::new();
    // By name, whatever order the JSON map keeps (serde_json's `preserve_order` may be on).
    let mut servers: Vec<(&String, &Value)> = servers.iter().collect();
    servers.sort_by(|a, b| a.0.cmp(b.0));
    for (name, entry) in servers {
        match Server::parse(name, entry)? {
            Entry::Import(server) => {
                if let Some(other) = parsed.iter().find(|s| s.id == server.id) {
                    return Err(format!(
                        "servers {:?} and {name:?} both become the connector {:?}: rename one \
                         of them in the source file",
                        other.name, server.id
                    ));
                }
                parsed.push(server);
            }
            Entry::Skip(why) => {
                skipped.push(format!("server {name:?}: {why}"));
                notes.push(format!("server {name:?}: {why}; skipped"));
            }
        }
    }

    let mut vars = Variables::default();
    let clashes = env_clashes(&parsed);
    // References the file already has are names the user chose: never reuse them for a value.
    for server in &parsed {
        for value in server.values() {
            if let Some((_, names)) = references(value) {
                vars.reserve(names);
            }
        }
    }
    let mut connectors = BTreeMap::new();
    for server in &parsed {
        let connector = server.render(&clashes, &mut vars, &mut notes);
        connectors.insert(server.id.as_str(), connector);
    }

    let body = toml::to_string(&File {
        connectors: &connectors,
    })
    .map_err(|e| format!("cannot render TOML: {e}"))?;
    let mut toml = String::from(
        "# Imported by `manifold import`. Secret values were not copied: export the\n# variables referenced as ${…} before `manifold serve`.\n",
    );
    for line in &skipped {
        toml.push_str(&format!("# Not imported: {line}\n"));
    }
    toml.push_str(&body);
    // Appended to a file (`>> my.toml`), the next table must start on a line of its own.
    if !toml.ends_with('\n') {
        toml.push('\n');
    }
    Ok(Imported {
        toml,
        variables: vars.order,
        names: connectors.keys().map(|id| id.to_string()).collect(),
        notes,
    })
}

/// One `mcpServers` entry, checked but not yet converted.
struct Server<'a> {
    /// As in the source file.
    name: &'a str,
    id: String,
    transport: Transport<'a>,
}

enum Transport<'a> {
    Stdio {
        command: &'a str,
        args: Vec<String>,
        cwd: Option<&'a str>,
        env: Vec<(&'a str, String)>,
    },
    Http {
        url: &'a str,
        sse: bool,
        headers: Vec<(&'a str, String)>,
    },
}

enum Entry<'a> {
    Import(Server<'a>),
    /// Why the server is not imported.
    Skip(String),
}

/// The TOML written: the fields of one connector in the order a person would write them.
#[derive(Serialize)]
struct File<'a> {
    connectors: &'a BTreeMap<&'a str, Connector>,
}

#[derive(Serialize)]
struct Connector {
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    command: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    args: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cwd: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    transport: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    env: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    headers: Option<BTreeMap<String, String>>,
}

/// The variables handed out: each name and the literal value it stands for (`None`: a name the
/// source file already references).
#[derive(Default)]
struct Variables {
    values: BTreeMap<String, Option<String>>,
    order: Vec<String>,
}

impl<'a> Server<'a> {
    fn parse(name: &'a str, entry: &'a Value) -> Result<Entry<'a>, String> {
        let err = |m: String| format!("server {name:?}: {m}");
        let Some(entry) = entry.as_object() else {
            return Err(err(format!(
                "expected an object with \"command\" (a local server) or \"url\" (a remote one), \
                 found {}",
                kind(entry)
            )));
        };
        if entry.get("disabled").and_then(Value::as_bool) == Some(true) {
            return Ok(Entry::Skip("disabled in the source file".into()));
        }
        let ty = optional_str(entry, "type").map_err(err)?;
        let command = optional_str(entry, "command").map_err(err)?;
        let url = match optional_str(entry, "url").map_err(err)? {
            Some(url) => Some(url),
            None => optional_str(entry, "serverUrl").map_err(err)?,
        };
        let websocket = url.is_some_and(|u| {
            let u = u.to_ascii_lowercase();
            u.starts_with("ws://") || u.starts_with("wss://")
        });
        let lowered = ty.map(str::to_ascii_lowercase);
        // `None`: a local server; else whether a remote one speaks the legacy SSE transport.
        let sse = match lowered.as_deref() {
            Some("stdio") => None,
            None if command.is_some() => None,
            Some("websocket" | "ws") => {
                return Ok(Entry::Skip("WebSocket transport is not supported".into()));
            }
            _ if websocket => {
                return Ok(Entry::Skip("WebSocket transport is not supported".into()));
            }
            None | Some("http" | "streamable-http" | "streamablehttp") => Some(false),
            Some("sse") => Some(true),
            Some(_) => {
                return Ok(Entry::Skip(format!(
                    "\"type\" {:?} is not one of \"stdio\", \"http\", \"streamable-http\", \"sse\"",
                    ty.unwrap_or_default()
                )));
            }
        };
        let id = sanitize(name);
        ConnectorId::parse(&id).map_err(|m| err(format!("{m}: rename it in the source file")))?;
        let transport = match sse {
            None => {
                let Some(command) = command else {
                    return Err(err(format!(
                        "\"type\": {:?} needs \"command\" (the program to run): add it",
                        ty.unwrap_or_default()
                    )));
                };
                Transport::Stdio {
                    command,
                    args: args(entry).map_err(err)?,
                    cwd: optional_str(entry, "cwd").map_err(err)?,
                    env: string_map(entry, "env", "NAME").map_err(err)?,
                }
            }
            Some(sse) => {
                let url = match (url, ty) {
                    (Some(url), _) => url,
                    (None, Some(ty)) => {
                        return Err(err(format!(
                            "\"type\": {ty:?} needs \"url\" (the server's {} endpoint): add it",
                            if sse { "SSE" } else { "MCP" }
                        )));
                    }
                    (None, None) => {
                        let m =
                            "has neither \"command\" nor \"url\": add one, or remove the server";
                        return Err(err(m.into()));
                    }
                };
                let lower = url.to_ascii_lowercase();
                if references(url).is_none()
                    && !(lower.starts_with("http://") || lower.starts_with("https://"))
                {
                    let m =
                        "\"url\" must start with http:// or https://: fix it in the source file";
                    return Err(err(m.into()));
                }
                Transport::Http {
                    url,
                    sse,
                    headers: string_map(entry, "headers", "Name").map_err(err)?,
                }
            }
        };
        Ok(Entry::Import(Server {
            name,
            id,
            transport,
        }))
    }

    /// Every string value that is copied or referenced.
    fn values(&self) -> Vec<&str> {
        match &self.transport {
            Transport::Stdio { args, env, .. } => args
                .iter()
                .map(String::as_str)
                .chain(env.iter().map(|(_, v)| v.as_str()))
                .collect(),
            Transport::Http { url, headers, .. } => std::iter::once(*url)
                .chain(headers.iter().map(|(_, v)| v.as_str()))
                .collect(),
        }
    }

    /// The connector, with secrets replaced by variables from `vars`.
    fn render(
        &self,
        clashes: &BTreeMap<&str, Vec<(&str, &str)>>,
        vars: &mut Variables,
        notes: &mut Vec<String>,
    ) -> Connector {
        let name = self.name;
        let prefix = self.id.to_ascii_uppercase().replace('-', "_");
        let mut connector = Connector {
            kind: "stdio",
            command: None,
            args: None,
            cwd: None,
            url: None,
            transport: None,
            env: None,
            headers: None,
        };
        match &self.transport {
            Transport::Stdio {
                command,
                args,
                cwd,
                env,
            } => {
                connector.command = Some((*command).to_owned());
                connector.cwd = cwd.map(str::to_owned);
                if let Some(i) = args.iter().position(|a| {
                    references(a).is_none() && (redact::secret_arg(a) || looks_like_token(a))
                }) {
                    notes.push(format!(
                        "server {name:?}: args[{i}] looks like it passes a credential, which was \
                         copied as is: move the value to an environment variable and write \
                         ${{NAME}} in its place"
                    ));
                }
                if !args.is_empty() {
                    connector.args = Some(args.iter().map(|a| literal(a, vars)).collect());
                }
                if env.is_empty() {
                    return connector;
                }
                let mut table = BTreeMap::new();
                for (key, value) in env {
                    if !is_secret(key, value) {
                        table.insert((*key).to_owned(), literal(value, vars));
                        continue;
                    }
                    // The servers giving this key another value, if any.
                    let others = clashes.get(key).map(|uses| {
                        let others: Vec<String> = uses
                            .iter()
                            .filter(|(_, v)| v != value)
                            .map(|(s, _)| format!("{s:?}"))
                            .collect();
                        others.join(", ")
                    });
                    let want = match &others {
                        None if valid_name(key) => (*key).to_owned(),
                        _ => prefixed(&prefix, key),
                    };
                    let var = vars.secret(want, value);
                    if var != *key {
                        let why = match others {
                            Some(others) => format!("{key} has another value in {others}"),
                            None if !valid_name(key) => {
                                format!("{key} is not a valid variable name")
                            }
                            None => format!("the name {key} is taken by another value"),
                        };
                        notes.push(format!(
                            "server {name:?}: env {key} now reads \"${{{var}}}\" ({why}): export \
                             {var} with the value from the source file"
                        ));
                    }
                    table.insert((*key).to_owned(), format!("${{{var}}}"));
                }
                connector.env = Some(table);
            }
            Transport::Http { url, sse, headers } => {
                connector.kind = "http";
                connector.transport = sse.then_some("sse");
                connector.url = Some(match references(url) {
                    Some(_) => literal(url, vars),
                    None => {
                        let (written, parts) = url_with_references(url, &prefix, vars);
                        if !parts.is_empty() {
                            notes.push(format!(
                                "server {name:?}: url now reads \"{written}\": export {} with \
                                 the {} from the source file's url",
                                parts.join(", "),
                                if parts.len() == 1 { "value" } else { "values" }
                            ));
                        }
                        written
                    }
                });
                if headers.is_empty() {
                    return connector;
                }
                let mut table = BTreeMap::new();
                for (header, value) in headers {
                    let written = match (is_secret(header, value), scheme_and_token(value)) {
                        (false, _) => literal(value, vars),
                        (true, Some((scheme, token))) => {
                            let var = vars.secret(prefixed(&prefix, "TOKEN"), token);
                            let written = format!("{scheme} ${{{var}}}");
                            notes.push(format!(
                                "server {name:?}: header {header} now reads \"{written}\": \
                                 export {var} with the token that followed \"{scheme} \" in the \
                                 source file"
                            ));
                            written
                        }
                        (true, None) => {
                            let var = vars.secret(prefixed(&prefix, header), value);
                            notes.push(format!(
                                "server {name:?}: header {header} now reads \"${{{var}}}\": \
                                 export {var} with the value from the source file"
                            ));
                            format!("${{{var}}}")
                        }
                    };
                    table.insert((*header).to_owned(), written);
                }
                connector.headers = Some(table);
            }
        }
        connector
    }
}

impl Variables {
    /// Names the source file references: required, and never given to a secret value.
    fn reserve(&mut self, names: Vec<String>) {
        for n in names {
            self.values.entry(n).or_insert(None);
        }
    }

    /// A variable for the literal secret `value`: `want`, unless that name stands for something
    /// else; the same value under the same wanted name shares one variable.
    fn secret(&mut self, want: String, value: &str) -> String {
        let mut name = want.clone();
        for n in 2.. {
            match self.values.get(&name) {
                None => {
                    self.values.insert(name.clone(), Some(value.to_owned()));
                    break;
                }
                Some(Some(v)) if v == value => break,
                Some(_) => name = format!("{want}_{n}"),
            }
        }
        self.used(&name);
        name
    }

    fn used(&mut self, name: &str) {
        if !self.order.iter().any(|n| n == name) {
            self.order.push(name.to_owned());
        }
    }
}

/// `env` keys that servers give different secret values: for each, every (server, value).
fn env_clashes<'a>(servers: &'a [Server<'a>]) -> BTreeMap<&'a str, Vec<(&'a str, &'a str)>> {
    let mut seen: BTreeMap<&str, Vec<(&str, &str)>> = BTreeMap::new();
    for server in servers {
        let Transport::Stdio { env, .. } = &server.transport else {
            continue;
        };
        for (key, value) in env {
            if is_secret(key, value) {
                seen.entry(key).or_default().push((server.name, value));
            }
        }
    }
    seen.retain(|_, uses| uses.iter().any(|(_, v)| *v != uses[0].1));
    seen
}

/// A value copied as is: kept when it holds `${…}` references (noting the variables they
/// require), else with `$` escaped so that the loader reads it back unchanged.
fn literal(value: &str, vars: &mut Variables) -> String {
    match references(value) {
        Some((text, names)) => {
            for n in &names {
                vars.used(n);
            }
            vars.reserve(names);
            text
        }
        None => value.replace('$', "$$"),
    }
}

/// `value` when it holds well-formed `${…}` references, rewritten for the loader (VS Code's
/// `${env:NAME}` becomes `${NAME}`), with the variables they require (not those with a
/// `:-default`, not `${file:…}`). `None` when it holds no reference or a malformed one.
fn references(value: &str) -> Option<(String, Vec<String>)> {
    if !value.contains("${") {
        return None;
    }
    let mut out = String::with_capacity(value.len());
    let mut names = Vec::new();
    for piece in crate::text::pieces(value).ok()? {
        let reference = match piece {
            crate::text::Piece::Text(t) => {
                out.push_str(t);
                continue;
            }
            crate::text::Piece::Dollar => {
                out.push_str("$$");
                continue;
            }
            crate::text::Piece::Reference(r) => r,
        };
        if reference.starts_with("file:") {
            out.push_str(&format!("${{{reference}}}"));
            continue;
        }
        let reference = reference.strip_prefix("env:").unwrap_or(reference);
        let (name, default) = crate::text::split_reference(reference)?;
        if default.is_none() && !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
        out.push_str(&format!("${{{reference}}}"));
    }
    Some((out, names))
}

/// Whether an `env` or header value is replaced by a variable: a literal whose name or value
/// looks like a credential.
fn is_secret(key: &str, value: &str) -> bool {
    references(value).is_none() && (redact::secret_name(key) || looks_like_token(value))
}

/// Whether a value looks like a credential whatever its name: no spaces, and a run of 16 or
/// more characters between separators mixing letters and digits (`ghp_…`, a hex key, each part
/// of a JWT), or a URL holding a credential (see [`url_holds_secret`]).
fn looks_like_token(value: &str) -> bool {
    !value.contains(char::is_whitespace)
        && (value.split(SEPARATORS).any(token_run) || url_holds_secret(value))
}

/// What splits a value into runs for [`token_run`]: URL, path, host and JWT punctuation.
const SEPARATORS: [char; 10] = ['/', '.', ':', '@', '?', '&', '=', '#', ',', ';'];

fn token_run(run: &str) -> bool {
    run.len() >= 16
        && run.contains(|c: char| c.is_ascii_alphabetic())
        && run.contains(|c: char| c.is_ascii_digit())
}

/// Whether a URL has userinfo (`user:pass@`), a query parameter named like a credential
/// (`?api_key=…`), or a token-like run (`/services/T0/B0/XXXX…`).
fn url_holds_secret(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let rest = rest.split('#').next().unwrap_or_default();
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let authority = &path[..path.find('/').unwrap_or(path.len())];
    authority.contains('@')
        || query.split('&').any(|pair| {
            let key = pair.split_once('=').map_or(pair, |(k, _)| k);
            !key.is_empty() && redact::secret_name(key)
        })
        || rest.split(SEPARATORS).any(token_run)
}

/// A literal `url` with its credentials replaced by variables, and those variables: the
/// userinfo's password (`{CONNECTOR}_PASSWORD`; the whole userinfo, `{CONNECTOR}_USERINFO`,
/// when it has none), query values named like credentials or looking like tokens
/// (`?api_key=` → `{CONNECTOR}_API_KEY`), and path segments that look like tokens
/// (`{CONNECTOR}_URL_TOKEN`). Scheme and host stay, so the loader still sees a URL.
fn url_with_references(url: &str, prefix: &str, vars: &mut Variables) -> (String, Vec<String>) {
    let escape = |s: &str| s.replace('$', "$$");
    let Some((scheme, rest)) = url.split_once("://") else {
        return (escape(url), Vec::new());
    };
    let mut parts = Vec::new();
    let mut reference = |want: &str, value: &str, parts: &mut Vec<String>| {
        let var = vars.secret(prefixed(prefix, want), value);
        parts.push(var.clone());
        format!("${{{var}}}")
    };
    let (rest, fragment) = match rest.find('#') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut out = format!("{}://", escape(scheme));
    let host = match authority.rsplit_once('@') {
        Some((info, host)) => {
            match info.split_once(':') {
                Some((user, pass)) => {
                    out.push_str(&escape(user));
                    out.push(':');
                    out.push_str(&reference("PASSWORD", pass, &mut parts));
                }
                None => out.push_str(&reference("USERINFO", info, &mut parts)),
            }
            out.push('@');
            host
        }
        None => authority,
    };
    out.push_str(&escape(host));
    let segments: Vec<String> = path
        .split('/')
        .map(|segment| match segment.split(SEPARATORS).any(token_run) {
            true => reference("URL_TOKEN", segment, &mut parts),
            false => escape(segment),
        })
        .collect();
    out.push_str(&segments.join("/"));
    if let Some(query) = query {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, v))
                    if !v.is_empty()
                        && (redact::secret_name(k) || v.split(SEPARATORS).any(token_run)) =>
                {
                    format!("{}={}", escape(k), reference(k, v, &mut parts))
                }
                _ => escape(pair),
            })
            .collect();
        out.push('?');
        out.push_str(&pairs.join("&"));
    }
    out.push_str(&escape(fragment));
    (out, parts)
}

/// `Bearer sk-…` → (`Bearer`, `sk-…`): a scheme word and one token.
fn scheme_and_token(value: &str) -> Option<(&str, &str)> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    let ok = !scheme.is_empty()
        && scheme.chars().all(|c| c.is_ascii_alphabetic())
        && !token.is_empty()
        && !token.contains(char::is_whitespace);
    ok.then_some((scheme, token))
}

/// `NAME` as a variable of the connector whose prefix is `prefix` (`GITHUB`): upper case,
/// other characters as `_`, with the prefix unless it already starts with it.
fn prefixed(prefix: &str, name: &str) -> String {
    let upper: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    if upper == prefix || upper.starts_with(&format!("{prefix}_")) {
        upper
    } else {
        format!("{prefix}_{upper}")
    }
}

/// What a `${NAME}` reference accepts and a shell can export.
fn valid_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Claude Desktop names are free-form; connector names are `[a-z][a-z0-9_-]*`.
fn sanitize(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    if !s.starts_with(|c: char| c.is_ascii_lowercase()) {
        s.insert_str(0, "mcp-");
    }
    s.truncate(32);
    s
}

/// An optional string field; another type is the source file's mistake.
fn optional_str<'a>(entry: &'a Map<String, Value>, field: &str) -> Result<Option<&'a str>, String> {
    match entry.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(format!(
            "{field:?} is {}, not a string: write it as a string",
            kind(other)
        )),
    }
}

/// `args`: an array of strings (numbers and booleans are taken as written).
fn args(entry: &Map<String, Value>) -> Result<Vec<String>, String> {
    match entry.get("args") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                scalar(v).ok_or_else(|| {
                    format!(
                        "args[{i}] is {}, not a string: quote it or remove it",
                        kind(v)
                    )
                })
            })
            .collect(),
        Some(other) => Err(format!(
            "\"args\" is {}, not an array: write it as [\"arg\", …]",
            kind(other)
        )),
    }
}

/// `env` or `headers`: an object of strings (numbers and booleans are taken as written).
fn string_map<'a>(
    entry: &'a Map<String, Value>,
    field: &str,
    example: &str,
) -> Result<Vec<(&'a str, String)>, String> {
    let Some(value) = entry.get(field) else {
        return Ok(Vec::new());
    };
    let Some(object) = value.as_object() else {
        return Err(format!(
            "{field:?} is {}, not an object: write it as {{{example:?}: \"value\"}}",
            kind(value)
        ));
    };
    // By name, whatever order the JSON map keeps (serde_json's `preserve_order` may be on).
    let mut pairs: Vec<(&'a String, &'a Value)> = object.iter().collect();
    pairs.sort_by(|a, b| a.0.cmp(b.0));
    pairs
        .into_iter()
        .map(|(k, v)| match scalar(v) {
            Some(s) => Ok((k.as_str(), s)),
            None => Err(format!(
                "{field}.{k} is {}, not a string: write the value as a string",
                kind(v)
            )),
        })
        .collect()
}

/// A string, or a number or boolean as written (`8080`, `true`).
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A JSON value's type, for messages.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
