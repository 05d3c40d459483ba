//! Manifold configuration: the TOML file plus referenced secrets, parsed then validated into typed
//! per-component settings. Loading reads files and the environment only; it never binds a port or
//! spawns a process.

mod import;
mod raw;
mod redact;
#[cfg(test)]
mod tests;
mod text;

use std::{
    collections::BTreeMap,
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

pub use import::import_claude_desktop;
use raw::{RawConfig, RawConnector, RawCuration, RawServer};
pub use redact::{REDACTED, Secrets, redact_url, redact_urls_in};
use text::{Located, Source};
use toml::Spanned;

/// Default listen address: loopback only, so a fresh install is not reachable from the network.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8730";
/// Longest tool or prompt name advertised to clients (several clients reject longer names).
pub const MAX_NAME_LEN: usize = 64;

/// A configuration error, already formatted with `file:line:col` and a hint where one exists.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Where environment variables come from; the binary passes `std::env::var`, tests pass a map.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

impl<F: Fn(&str) -> Option<String>> Env for F {
    fn var(&self, name: &str) -> Option<String> {
        self(name)
    }
}

/// A value that must never be printed: `Debug` shows `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A connector name: lowercase ASCII letters, digits, `-` and `_`, at most 32 characters.
/// The restricted alphabet keeps `{connector}+{uri}` a valid URI scheme and names short.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnectorId(String);

impl ConnectorId {
    pub fn parse(name: &str) -> Result<Self, String> {
        let ok = !name.is_empty()
            && name.len() <= 32
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if ok {
            Ok(Self(name.to_owned()))
        } else {
            Err(format!(
                "invalid name {name:?}: use 1-32 characters, lowercase letters, digits, '-' or '_', starting with a letter"
            ))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ConnectorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

/// The whole validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub path: PathBuf,
    pub gateway: GatewaySettings,
    pub connectors: BTreeMap<ConnectorId, ConnectorSpec>,
    pub servers: BTreeMap<String, VirtualServerSpec>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct GatewaySettings {
    pub listen: SocketAddr,
    /// Accepted `Host` header values (host or host:port); DNS-rebinding protection.
    pub allowed_hosts: Vec<String>,
    /// Accepted `Origin` header values; requests with another Origin get 403.
    pub allowed_origins: Vec<String>,
    pub session_idle_timeout: Duration,
    pub max_body_bytes: usize,
    pub sse_keep_alive: Duration,
    pub page_size: usize,
    pub watch: bool,
    /// On SIGTERM: how long in-flight requests may take before streams are closed.
    pub shutdown_grace: Duration,
    /// How long a modern client's call waits, parked, for the retry that answers its
    /// `input_required` round (and how long its `requestState` is valid).
    pub input_wait: Duration,
    /// How long 2026-07-28 clients may treat `server/discover` and the merged lists as fresh
    /// (`ttlMs`); changes are still announced on `subscriptions/listen`.
    pub cache_ttl: Duration,
    /// Serve `/healthz/detail` and the list of virtual servers to callers that are not on
    /// loopback (until callers authenticate, they are for the machine's own operators).
    pub public_detail: bool,
    /// The most open client connections; `None`: derived from the open-file limit.
    pub max_connections: Option<usize>,
    /// A request's headers must have arrived this long after its first byte.
    pub header_read_timeout: Duration,
    /// A request's body must have arrived this long after its headers.
    pub body_read_timeout: Duration,
    /// A connection with no request in progress and no traffic for this long is closed.
    pub idle_connection_timeout: Duration,
    /// The most live client sessions (legacy era), in total.
    pub max_sessions: usize,
    /// The most live client sessions of one client: one source address until callers are
    /// authenticated, one principal after.
    pub max_sessions_per_client: usize,
    /// `initialize` requests one client may make per minute (a burst of as many, then
    /// refilled evenly).
    pub initialize_per_minute: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ConnectorSpec {
    pub id: ConnectorId,
    pub transport: TransportSpec,
    pub call_timeout: Duration,
    pub restart: RestartPolicy,
    pub sessions: SessionMode,
    /// With `SessionMode::PerClient`: the most upstream sessions at once.
    pub max_sessions: usize,
    /// Which protocol era to speak to the upstream.
    pub era: Era,
    /// Values that must not appear in anything shown about this connector; see [`Secrets`].
    pub secrets: Secrets,
}

/// The protocol era a connector's upstream speaks.
#[derive(Clone, Debug, PartialEq, Eq, Copy)]
pub enum Era {
    /// Probe with `server/discover` on the first connection, fall back to `initialize`, and keep
    /// what was found for the connector's later connections.
    Auto,
    /// 2025-11-25 and earlier: `initialize`, sessions.
    Legacy,
    /// 2026-07-28: `server/discover`, stateless requests.
    Modern,
}

/// Who shares an upstream session.
#[derive(Clone, Debug, PartialEq, Eq, Copy)]
pub enum SessionMode {
    /// One upstream session for every client (one process for a stdio connector).
    Shared,
    /// One upstream session per client session, started on its first call and stopped when the
    /// client session ends. Server→client requests are then always attributable.
    PerClient,
}

#[derive(Clone, Debug, PartialEq)]
pub enum TransportSpec {
    Stdio(StdioSpec),
    Http(HttpSpec),
}

#[derive(Clone, Debug, PartialEq, Eq, Copy)]
pub enum StartMode {
    /// Start when the gateway starts (or the connector is added by a reload).
    Eager,
    /// Start on first use by a client of a virtual server that includes it.
    Lazy,
}

#[derive(Clone, PartialEq)]
pub struct StdioSpec {
    pub command: String,
    /// With `${…}` references expanded.
    pub args: Vec<String>,
    /// Some argument came from a `${…}` reference or looks like a credential (`--token=…`):
    /// the arguments are then never logged or printed.
    pub args_hold_secrets: bool,
    /// Variables set explicitly (values may come from `${ENV}` or `${file:…}` references).
    pub env: BTreeMap<String, Secret>,
    /// Names copied from the gateway's environment when present; nothing else is inherited.
    pub env_passthrough: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub start: StartMode,
    pub max_line_bytes: usize,
    pub stderr_lines_per_minute: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Copy)]
pub enum HttpTransport {
    /// Streamable HTTP first, then the legacy HTTP+SSE transport (2024-11-05).
    Auto,
    Streamable,
    Sse,
}

#[derive(Clone, PartialEq)]
pub struct HttpSpec {
    /// As configured, with references expanded: may hold credentials. Show `display_url()`.
    pub url: String,
    pub headers: Vec<(String, Secret)>,
    pub transport: HttpTransport,
    pub connect_timeout: Duration,
    /// `url` as it may be shown: userinfo and query values redacted, and any value that came
    /// from a reference (a secret in the host or path) replaced.
    shown_url: String,
}

impl HttpSpec {
    /// The URL as it may be shown.
    pub fn display_url(&self) -> String {
        self.shown_url.clone()
    }
}

impl fmt::Debug for HttpSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpSpec")
            .field("url", &self.display_url())
            .field("headers", &self.headers)
            .field("transport", &self.transport)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl StdioSpec {
    /// The arguments as they may be shown: hidden when they hold secrets.
    pub fn display_args(&self) -> String {
        if self.args_hold_secrets {
            format!(
                "<{} arguments, not shown: they hold secrets>",
                self.args.len()
            )
        } else {
            self.args.join(" ")
        }
    }
}

impl fmt::Debug for StdioSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StdioSpec")
            .field("command", &self.command)
            .field("args", &self.display_args())
            .field("env", &self.env)
            .field("env_passthrough", &self.env_passthrough)
            .field("cwd", &self.cwd)
            .field("start", &self.start)
            .field("max_line_bytes", &self.max_line_bytes)
            .field("stderr_lines_per_minute", &self.stderr_lines_per_minute)
            .finish()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct RestartPolicy {
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Failures within `window` that open the circuit.
    pub max_failures: u32,
    pub window: Duration,
    /// How long an open circuit waits before one trial start.
    pub open_for: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(30),
            max_failures: 5,
            window: Duration::from_secs(60),
            open_for: Duration::from_secs(60),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct VirtualServerSpec {
    pub name: String,
    pub title: Option<String>,
    pub instructions: Option<String>,
    pub separator: String,
    /// In configuration order; order decides precedence on name collisions.
    pub connectors: Vec<ConnectorUse>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ConnectorUse {
    pub connector: ConnectorId,
    pub prefix: bool,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    /// Keyed by the upstream tool name.
    pub tools: BTreeMap<String, ToolOverride>,
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct ToolOverride {
    pub rename: Option<String>,
    pub description: Option<String>,
    pub hide_args: Vec<String>,
    pub pin_args: serde_json::Map<String, serde_json::Value>,
}

impl Config {
    /// Read and validate a config file. Secrets are resolved from `env` and referenced files.
    pub fn load(path: &Path, env: &dyn Env) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError(format!("{}: cannot read config file: {e}", path.display()))
        })?;
        Self::parse(&text, path, env)
    }

    /// Validate config text; `path` is used for messages and to resolve relative paths.
    pub fn parse(text: &str, path: &Path, env: &dyn Env) -> Result<Self, ConfigError> {
        let src = Source::new(path, text);
        let raw: RawConfig = toml::from_str(text).map_err(|e| src.toml_error(&e))?;
        Builder { src: &src, env }.build(raw)
    }
}

struct Builder<'a> {
    src: &'a Source<'a>,
    env: &'a dyn Env,
}

impl Builder<'_> {
    fn build(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let gateway = self.gateway(raw.gateway)?;
        let mut connectors = BTreeMap::new();
        for (name, rc) in raw.connectors {
            let at = self.src.table(&["connectors", &name]);
            let id = ConnectorId::parse(&name).map_err(|m| at.err(format!("connector: {m}")))?;
            let spec = self.connector(&id, rc)?;
            connectors.insert(id, spec);
        }
        let mut servers = BTreeMap::new();
        for (name, rs) in raw.servers {
            let at = self.src.table(&["servers", &name]);
            ConnectorId::parse(&name).map_err(|m| at.err(format!("virtual server: {m}")))?;
            let spec = self.server(&name, rs, &connectors)?;
            servers.insert(name, spec);
        }
        let base = self
            .src
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        for spec in connectors.values_mut() {
            if let TransportSpec::Stdio(s) = &mut spec.transport
                && let Some(cwd) = &s.cwd
                && cwd.is_relative()
            {
                s.cwd = Some(base.join(cwd));
            }
        }
        Ok(Config {
            path: self.src.path.to_path_buf(),
            gateway,
            connectors,
            servers,
        })
    }

    fn gateway(&self, g: raw::RawGateway) -> Result<GatewaySettings, ConfigError> {
        let listen = match g.listen {
            Some(l) => l.get_ref().parse().map_err(|_| {
                self.src.at(&l).err(format!(
                    "gateway.listen: {:?} is not an address like \"127.0.0.1:8730\"",
                    l.get_ref()
                ))
            })?,
            None => DEFAULT_LISTEN
                .parse()
                .expect("the default listen address parses"),
        };
        let allowed_hosts = g.allowed_hosts.unwrap_or_else(|| {
            vec![
                "localhost".into(),
                "127.0.0.1".into(),
                "[::1]".into(),
                "::1".into(),
            ]
        });
        Ok(GatewaySettings {
            listen,
            allowed_hosts,
            allowed_origins: g.allowed_origins.unwrap_or_else(|| {
                // Pages served from this machine; a rebinding page has a foreign Origin.
                vec![
                    "http://localhost:*".into(),
                    "http://127.0.0.1:*".into(),
                    "http://[::1]:*".into(),
                ]
            }),
            session_idle_timeout: self.duration_or(
                g.session_idle_timeout,
                "gateway.session_idle_timeout",
                Duration::from_secs(30 * 60),
            )?,
            max_body_bytes: g.max_body_bytes.unwrap_or(4 * 1024 * 1024) as usize,
            sse_keep_alive: self.duration_or(
                g.sse_keep_alive,
                "gateway.sse_keep_alive",
                Duration::from_secs(15),
            )?,
            page_size: g.page_size.unwrap_or(1000).max(1) as usize,
            watch: g.watch.unwrap_or(true),
            shutdown_grace: self.duration_or(
                g.shutdown_grace,
                "gateway.shutdown_grace",
                Duration::from_secs(10),
            )?,
            input_wait: self.duration_or(
                g.input_wait,
                "gateway.input_wait",
                Duration::from_secs(300),
            )?,
            cache_ttl: self.duration_or(
                g.cache_ttl,
                "gateway.cache_ttl",
                Duration::from_secs(60),
            )?,
            public_detail: g.public_detail.unwrap_or(false),
            max_connections: g.max_connections.map(|n| n.max(1) as usize),
            header_read_timeout: self.positive(
                g.header_read_timeout,
                "gateway.header_read_timeout",
                Duration::from_secs(10),
            )?,
            body_read_timeout: self.positive(
                g.body_read_timeout,
                "gateway.body_read_timeout",
                Duration::from_secs(30),
            )?,
            idle_connection_timeout: self.positive(
                g.idle_connection_timeout,
                "gateway.idle_connection_timeout",
                Duration::from_secs(60),
            )?,
            max_sessions: g.max_sessions.unwrap_or(10_000).max(1) as usize,
            max_sessions_per_client: g.max_sessions_per_client.unwrap_or(100).max(1) as usize,
            initialize_per_minute: g.initialize_per_minute.unwrap_or(120).max(1),
        })
    }

    fn connector(&self, id: &ConnectorId, rc: RawConnector) -> Result<ConnectorSpec, ConfigError> {
        let at = self.src.table(&["connectors", id.as_str()]);
        let key = |k: &str| format!("connector {:?}: {k}", id.as_str());
        let stdio_only = [
            ("command", rc.command.is_some()),
            ("args", rc.args.is_some()),
            ("env", rc.env.is_some()),
            ("env_passthrough", rc.env_passthrough.is_some()),
            ("cwd", rc.cwd.is_some()),
            ("start", rc.start.is_some()),
            ("max_line_bytes", rc.max_line_bytes.is_some()),
            (
                "stderr_lines_per_minute",
                rc.stderr_lines_per_minute.is_some(),
            ),
        ];
        let http_only = [
            ("url", rc.url.is_some()),
            ("headers", rc.headers.is_some()),
            ("transport", rc.transport.is_some()),
            ("connect_timeout", rc.connect_timeout.is_some()),
        ];
        // Every value substituted from a reference, and others that are secrets by nature.
        let mut secrets = Vec::new();
        let transport = match rc.kind.get_ref().as_str() {
            "stdio" => {
                if let Some((k, _)) = http_only.iter().find(|(_, set)| *set) {
                    return Err(at.err(key(&format!("{k:?} applies to kind = \"http\" only"))));
                }
                let Some(command) = rc.command else {
                    return Err(
                        at.err(key("kind = \"stdio\" needs `command` (the program to run)"))
                    );
                };
                if command.get_ref().trim().is_empty() {
                    return Err(self.src.at(&command).err(key("`command` is empty")));
                }
                let mut env = BTreeMap::new();
                for (k, v) in rc.env.unwrap_or_default() {
                    let value = self.expand(&v, &key(&format!("env.{k}")), &mut secrets)?;
                    // Long literal values look like tokens whatever their name.
                    if redact::secret_name(&k) || value.len() >= 16 {
                        secrets.push(value.clone());
                    }
                    env.insert(k, Secret(value));
                }
                let references = secrets.len();
                let mut args = Vec::new();
                for (i, a) in rc.args.unwrap_or_default().iter().enumerate() {
                    args.push(self.expand(a, &key(&format!("args[{i}]")), &mut secrets)?);
                }
                let args_hold_secrets = secrets.len() > references || args_look_secret(&args);
                let start = match rc.start.as_ref().map(|s| s.get_ref().as_str()) {
                    None | Some("eager") => StartMode::Eager,
                    Some("lazy") => StartMode::Lazy,
                    Some(other) => {
                        let s = rc.start.as_ref().expect("matched Some");
                        return Err(self.src.at(s).err(key(&format!(
                            "start = {other:?} is not one of \"eager\", \"lazy\""
                        ))));
                    }
                };
                TransportSpec::Stdio(StdioSpec {
                    command: command.into_inner(),
                    args,
                    args_hold_secrets,
                    env,
                    env_passthrough: rc.env_passthrough.unwrap_or_else(|| {
                        vec!["PATH".into(), "HOME".into(), "LANG".into(), "TMPDIR".into()]
                    }),
                    cwd: rc.cwd.map(PathBuf::from),
                    start,
                    max_line_bytes: rc.max_line_bytes.unwrap_or(16 * 1024 * 1024) as usize,
                    stderr_lines_per_minute: rc.stderr_lines_per_minute.unwrap_or(600),
                })
            }
            "http" => {
                if let Some((k, _)) = stdio_only.iter().find(|(_, set)| *set) {
                    return Err(at.err(key(&format!("{k:?} applies to kind = \"stdio\" only"))));
                }
                let Some(url) = rc.url else {
                    return Err(at.err(key(
                        "kind = \"http\" needs `url` (the server's MCP endpoint)",
                    )));
                };
                let value = self.expand(&url, &key("url"), &mut secrets)?;
                secrets.extend(redact::url_secrets(&value));
                if !(value.starts_with("http://") || value.starts_with("https://")) {
                    return Err(self.src.at(&url).err(key(&format!(
                        "url {:?} must start with http:// or https://",
                        redact_url(url.get_ref())
                    ))));
                }
                let mut headers = Vec::new();
                for (k, v) in rc.headers.unwrap_or_default() {
                    let value = self.expand(&v, &key(&format!("headers.{k}")), &mut secrets)?;
                    // The whole value and its last word (the token of `Bearer …`).
                    if let Some(last) = value.split_whitespace().last() {
                        secrets.push(last.to_owned());
                    }
                    secrets.push(value.clone());
                    headers.push((k, Secret(value)));
                }
                let transport = match rc.transport.as_ref().map(|s| s.get_ref().as_str()) {
                    None | Some("auto") => HttpTransport::Auto,
                    Some("streamable") => HttpTransport::Streamable,
                    Some("sse") => HttpTransport::Sse,
                    Some(other) => {
                        let s = rc.transport.as_ref().expect("matched Some");
                        return Err(self.src.at(s).err(key(&format!(
                            "transport = {other:?} is not one of \"auto\", \"streamable\", \"sse\""
                        ))));
                    }
                };
                TransportSpec::Http(HttpSpec {
                    shown_url: String::new(), // once every secret is known, below
                    url: value,
                    headers,
                    transport,
                    connect_timeout: self.duration_or(
                        rc.connect_timeout,
                        &key("connect_timeout"),
                        Duration::from_secs(10),
                    )?,
                })
            }
            other => {
                return Err(self.src.at(&rc.kind).err(key(&format!(
                    "kind = {other:?} is not one of \"stdio\", \"http\""
                ))));
            }
        };
        let sessions = match rc.sessions.as_ref().map(|s| s.get_ref().as_str()) {
            None | Some("shared") => SessionMode::Shared,
            Some("per_client") => SessionMode::PerClient,
            Some(other) => {
                let s = rc.sessions.as_ref().expect("matched Some");
                return Err(self.src.at(s).err(key(&format!(
                    "sessions = {other:?} is not one of \"shared\", \"per_client\""
                ))));
            }
        };
        let era = match rc.era.as_ref().map(|s| s.get_ref().as_str()) {
            None | Some("auto") => Era::Auto,
            Some("legacy") => Era::Legacy,
            Some("modern") => Era::Modern,
            Some(other) => {
                let s = rc.era.as_ref().expect("matched Some");
                return Err(self.src.at(s).err(key(&format!(
                    "era = {other:?} is not one of \"auto\", \"legacy\", \"modern\""
                ))));
            }
        };
        let mut restart = RestartPolicy::default();
        if let Some(r) = rc.restart {
            restart.initial_backoff = self.duration_or(
                r.initial_backoff,
                &key("restart.initial_backoff"),
                restart.initial_backoff,
            )?;
            restart.max_backoff = self.duration_or(
                r.max_backoff,
                &key("restart.max_backoff"),
                restart.max_backoff,
            )?;
            restart.window = self.duration_or(r.window, &key("restart.window"), restart.window)?;
            restart.open_for =
                self.duration_or(r.open_for, &key("restart.open_for"), restart.open_for)?;
            restart.max_failures = r.max_failures.unwrap_or(restart.max_failures).max(1);
        }
        Ok(ConnectorSpec {
            id: id.clone(),
            transport,
            call_timeout: self.duration_or(
                rc.call_timeout,
                &key("call_timeout"),
                Duration::from_secs(120),
            )?,
            restart,
            sessions,
            max_sessions: rc.max_sessions.unwrap_or(100).max(1) as usize,
            era,
            secrets: Secrets::new(secrets),
        })
        .map(|mut spec: ConnectorSpec| {
            if let TransportSpec::Http(h) = &mut spec.transport {
                h.shown_url = spec.secrets.scrub(&redact_url(&h.url)).into_owned();
            }
            spec
        })
    }

    fn server(
        &self,
        name: &str,
        rs: RawServer,
        connectors: &BTreeMap<ConnectorId, ConnectorSpec>,
    ) -> Result<VirtualServerSpec, ConfigError> {
        let at = self.src.table(&["servers", name]);
        let key = |k: &str| format!("virtual server {name:?}: {k}");
        let separator = match rs.separator {
            Some(s) => {
                let v = s.get_ref();
                if v.is_empty()
                    || v.len() > 4
                    || !v
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
                {
                    return Err(self.src.at(&s).err(key(&format!(
                        "separator {v:?} must be 1-4 characters from letters, digits, '_', '-', '.'"
                    ))));
                }
                v.clone()
            }
            None => "__".to_owned(),
        };
        if rs.connectors.is_empty() {
            return Err(at.err(key(
                "`connectors` is empty: list the connectors this server bundles",
            )));
        }
        let mut curation = rs.curation;
        let mut uses = Vec::new();
        let mut seen = Vec::new();
        for c in &rs.connectors {
            let cname = c.get_ref();
            let Some(id) = connectors.keys().find(|k| k.as_str() == cname) else {
                let known: Vec<&str> = connectors.keys().map(ConnectorId::as_str).collect();
                return Err(self.src.at(c).err(key(&format!(
                    "unknown connector {cname:?}{}",
                    text::suggest(cname, &known)
                ))));
            };
            if seen.contains(cname) {
                return Err(self
                    .src
                    .at(c)
                    .err(key(&format!("connector {cname:?} is listed twice"))));
            }
            seen.push(cname.clone());
            let cur = curation.remove(cname).unwrap_or_default();
            uses.push(self.curation(name, id.clone(), cur)?);
        }
        if let Some(extra) = curation.keys().next() {
            let at = self.src.table(&["servers", name, "curation", extra]);
            return Err(at.err(key(&format!(
                "curation for {extra:?}, which is not in `connectors`"
            ))));
        }
        Ok(VirtualServerSpec {
            name: name.to_owned(),
            title: rs.title,
            instructions: rs.instructions,
            separator,
            connectors: uses,
        })
    }

    fn curation(
        &self,
        server: &str,
        id: ConnectorId,
        cur: RawCuration,
    ) -> Result<ConnectorUse, ConfigError> {
        let mut tools = BTreeMap::new();
        for (tool, o) in cur.tools {
            let at = self
                .src
                .table(&["servers", server, "curation", id.as_str(), "tools", &tool]);
            let key = |k: &str| {
                format!(
                    "virtual server {server:?}: tool {tool:?} of {:?}: {k}",
                    id.as_str()
                )
            };
            let rename = match o.rename {
                Some(r) => {
                    let v = r.get_ref();
                    if !valid_tool_name(v) {
                        return Err(self.src.at(&r).err(key(&format!(
                            "rename {v:?} is not a valid tool name (1-{MAX_NAME_LEN} of A-Z a-z 0-9 _ - .)"
                        ))));
                    }
                    Some(v.clone())
                }
                None => None,
            };
            let pin_args = match o.pin_args {
                Some(t) => match serde_json::to_value(t) {
                    Ok(serde_json::Value::Object(m)) => m,
                    _ => return Err(at.err(key("pin_args must be a table of argument values"))),
                },
                None => Default::default(),
            };
            tools.insert(
                tool.clone(),
                ToolOverride {
                    rename,
                    description: o.description,
                    hide_args: o.hide_args.unwrap_or_default(),
                    pin_args,
                },
            );
        }
        Ok(ConnectorUse {
            connector: id,
            prefix: cur.prefix.unwrap_or(true),
            include: cur.include.unwrap_or_else(|| vec!["*".into()]),
            exclude: cur.exclude.unwrap_or_default(),
            tools,
        })
    }

    fn duration_or(
        &self,
        v: Option<Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match v {
            None => Ok(default),
            Some(s) => parse_duration(s.get_ref()).ok_or_else(|| {
                self.src.at(&s).err(format!(
                    "{key}: {:?} is not a duration like \"500ms\", \"30s\", \"5m\" or \"1h\"",
                    s.get_ref()
                ))
            }),
        }
    }

    /// Like `duration_or`, refusing zero (a zero timeout would close every connection).
    fn positive(
        &self,
        v: Option<Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        let at = v.as_ref().map(|s| self.src.at(s));
        let d = self.duration_or(v, key, default)?;
        match at {
            Some(at) if d.is_zero() => Err(at.err(format!(
                "{key}: must be longer than zero (e.g. \"{}s\")",
                default.as_secs()
            ))),
            _ => Ok(d),
        }
    }

    /// Expand `${NAME}`, `${NAME:-default}` and `${file:PATH}` references, noting the
    /// substituted values in `secrets`.
    fn expand(
        &self,
        v: &Spanned<String>,
        key: &str,
        secrets: &mut Vec<String>,
    ) -> Result<String, ConfigError> {
        text::expand(v.get_ref(), self.env, self.src.path, secrets)
            .map_err(|m| self.src.at(v).err(format!("{key}: {m}")))
    }
}

/// Whether any argument looks like a credential (`--token=…`, `--api-key`, …).
fn args_look_secret(args: &[String]) -> bool {
    args.iter().any(|a| redact::secret_arg(a))
}

/// `1..=64` characters of `A-Z a-z 0-9 _ - .`; what MCP clients accept as a tool name.
pub fn valid_tool_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
}

/// Parse `250ms`, `30s`, `5m`, `2h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    match unit.trim() {
        "ms" => Some(Duration::from_millis(n)),
        "" | "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n * 60)),
        "h" => Some(Duration::from_secs(n * 3600)),
        _ => None,
    }
}

impl Located {
    fn err(&self, msg: String) -> ConfigError {
        ConfigError(format!("{}: {msg}", self.0))
    }
}
