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
use text::Source;
use toml::Spanned;

/// Default listen address: loopback only, so a fresh install is not reachable from the network.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8730";
/// Longest tool or prompt name advertised to clients (several clients reject longer names).
pub const MAX_NAME_LEN: usize = 64;

/// One problem in a config file, formatted `file:line:col: message` with a hint where one
/// exists (`file: message` for a problem of the whole file).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{text}")]
pub struct ConfigError {
    /// Byte offset in the file, to list problems in file order; `None`: the whole file.
    offset: Option<usize>,
    text: String,
}

impl ConfigError {
    /// The message, as displayed.
    pub fn message(&self) -> &str {
        &self.text
    }
}

/// Every problem found in a config file (at least one), in file order; displayed one per line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors {
    path: PathBuf,
    errors: Vec<ConfigError>,
}

impl ConfigErrors {
    fn new(path: &Path, mut errors: Vec<ConfigError>) -> Self {
        debug_assert!(!errors.is_empty(), "a failed load has a reason");
        // Stable: problems at one place keep the order they were found in.
        errors.sort_by_key(|e| e.offset);
        Self {
            path: path.to_path_buf(),
            errors,
        }
    }

    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.errors.iter()
    }

    pub fn len(&self) -> usize {
        self.errors.len()
    }

    /// Always false: a failed load has at least one reason.
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// `3 errors in FILE`.
    pub fn summary(&self) -> String {
        let n = self.errors.len();
        let s = if n == 1 { "" } else { "s" };
        format!("{n} error{s} in {}", self.path.display())
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;
    fn into_iter(self) -> Self::IntoIter {
        self.errors.iter()
    }
}

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
    pub store: StoreLocation,
    pub auth: AuthSettings,
    pub connectors: BTreeMap<ConnectorId, ConnectorSpec>,
    pub servers: BTreeMap<String, VirtualServerSpec>,
    /// `[roles.NAME]`: what each role may reach. Empty: no role rules, everyone may use
    /// everything (the gateway's behaviour before roles).
    pub roles: BTreeMap<String, RoleSpec>,
    /// `[groups.NAME]`: the roles each group (a local user's, or a member's at their identity
    /// provider) gives its members, on top of their own.
    pub groups: BTreeMap<String, Vec<String>>,
    /// `[policy]`: the texts of Cedar conditions (inline, then each file), checked by the
    /// policy crate (`manifold check` reports their errors).
    pub policy: Vec<PolicyText>,
}

impl GatewaySettings {
    /// Whether `ip` is one of `trusted_proxies`.
    pub fn trusts(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted_proxies.iter().any(|n| n.contains(&ip))
    }
}

/// One text of Cedar policies: where it is (for messages), and what it says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyText {
    /// The file it is in: a `cedar_files` entry as resolved, or the config file.
    pub name: String,
    pub text: String,
    /// How many lines of the file come before the text's first line (inline text).
    pub line_offset: usize,
}

/// What one role grants (`[roles.NAME]`): the virtual servers it may connect to, and there
/// the items (by `connector/name` glob) it may use; `deny` wins over any role's `allow`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RoleSpec {
    /// Virtual server names, or `*` for all.
    pub servers: Vec<String>,
    /// `CONNECTOR/NAME` globs (`*` any run, `?` one character) over the connector's id and the
    /// upstream's own name of a tool or prompt, or a resource's URI.
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    /// `CONNECTOR/NAME` globs of tools the member confirms each call of (through elicitation)
    /// before it goes upstream; they do not allow anything by themselves.
    pub ask: Vec<String>,
}

/// Who may call: `[auth]`, the gateway's own OAuth authorization server and the resource
/// server on every virtual server.
#[derive(Clone, Debug, PartialEq)]
pub struct AuthSettings {
    /// Every MCP request needs a token (an access token or an API key).
    pub required: bool,
    /// The authorization server's issuer and the base of every virtual server's canonical URL
    /// (`{issuer}/mcp/{name}`); `None`: `http://` and the address the gateway listens on.
    pub issuer: Option<String>,
    pub access_token_lifetime: Duration,
    pub refresh_token_lifetime: Duration,
    pub dynamic_registration: bool,
    pub registrations_per_hour: u32,
    pub max_clients: u32,
    pub unused_client_expiry: Duration,
    pub logins_per_minute: u32,
    /// Accept an `https` URL as a client id and fetch the client's metadata document from it.
    pub client_metadata_documents: bool,
    /// Hosts (lower-case names or IP addresses) whose metadata documents may be fetched from
    /// private, loopback or link-local addresses; every other host must resolve to public ones.
    pub client_metadata_private_hosts: Vec<String>,
    /// Extra trusted roots (a PEM file) for fetching metadata documents.
    pub client_metadata_ca: Option<PathBuf>,
    /// Pre-registered clients by client id.
    pub clients: BTreeMap<String, ClientSpec>,
    /// Whether local users may sign in with a password.
    pub password_login: bool,
    /// Identity providers members may sign in through, by name (`[auth.providers.NAME]`).
    pub providers: BTreeMap<String, ProviderSpec>,
    /// The roles whose holders may use the administration endpoints (`/admin/…`).
    pub admin_roles: Vec<String>,
}

/// An OpenID Connect identity provider (`[auth.providers.NAME]`).
#[derive(Clone, PartialEq, Eq)]
pub struct ProviderSpec {
    /// What the sign-in page's button says.
    pub label: String,
    /// The exact issuer (discovery is at `{issuer}/.well-known/openid-configuration`).
    pub issuer: String,
    pub client_id: String,
    /// `None`: a public client (PKCE only).
    pub client_secret: Option<String>,
    /// Requested scopes; `openid` is always among them.
    pub scopes: Vec<String>,
    /// Where the groups are in the ID token (and userinfo) claims: a dotted path such as
    /// `groups` or `realm_access.roles`.
    pub groups_claim: String,
    pub name_claim: String,
    pub email_claim: String,
    /// Also read the userinfo endpoint (its claims add to the ID token's).
    pub userinfo: bool,
    /// Manifold roles for each group value.
    pub roles: BTreeMap<String, Vec<String>>,
    /// Roles every member signing in through this provider gets.
    pub default_roles: Vec<String>,
    /// Accept this provider's identity assertions (ID-JAG, enterprise-managed authorization)
    /// at the token endpoint.
    pub id_jag: bool,
    /// How long after a member's last sign-in through this provider their sign-ins may be
    /// refreshed; then they sign in there again (so the provider's changes apply).
    pub reauthenticate_after: Duration,
}

impl std::fmt::Debug for ProviderSpec {
    // The secret is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderSpec")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret.as_ref().map(|_| "…"))
            .field("scopes", &self.scopes)
            .field("groups_claim", &self.groups_claim)
            .field("roles", &self.roles)
            .finish_non_exhaustive()
    }
}

/// A client registered in the config (`[auth.clients.ID]`).
#[derive(Clone, PartialEq, Eq)]
pub struct ClientSpec {
    pub name: String,
    pub redirect_uris: Vec<String>,
    /// A confidential client's secret (for grants without a browser, such as identity
    /// assertions); `None`: a public client.
    pub secret: Option<String>,
}

impl std::fmt::Debug for ClientSpec {
    // The secret is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSpec")
            .field("name", &self.name)
            .field("redirect_uris", &self.redirect_uris)
            .field("secret", &self.secret.as_ref().map(|_| "…"))
            .finish()
    }
}

/// An issuer: an absolute `https` URL, or `http` on a loopback address; no query or fragment.
fn https_or_loopback(v: &str) -> Result<(), String> {
    let uri: http::Uri = v.parse().map_err(|_| format!("{v:?} is not a URL"))?;
    let Some(host) = uri
        .authority()
        .map(|a| a.host().trim_matches(['[', ']']).to_owned())
    else {
        return Err(format!("{v:?} is not an absolute URL"));
    };
    if uri.query().is_some() || v.contains('#') {
        return Err(format!("{v:?} must not have a query or fragment"));
    }
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") if loopback => Ok(()),
        _ => Err(format!(
            "{v:?} must be https (plain http only on a loopback address)"
        )),
    }
}

/// Whether `uri` may be a redirect URI: an absolute `https` URL, or `http` to a loopback
/// address (RFC 8252), without a fragment or userinfo.
pub fn valid_redirect_uri(uri: &str) -> Result<(), String> {
    let parsed: http::Uri = uri.parse().map_err(|_| format!("{uri:?} is not a URL"))?;
    let authority = parsed
        .authority()
        .ok_or_else(|| format!("{uri:?} is not an absolute URL"))?;
    if uri.contains('#') {
        return Err(format!(
            "{uri:?} has a fragment (not allowed in a redirect URI)"
        ));
    }
    if authority.as_str().contains('@') {
        return Err(format!(
            "{uri:?} holds a user name (not allowed in a redirect URI)"
        ));
    }
    let host = authority.host().trim_matches(['[', ']']);
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match parsed.scheme_str() {
        Some("https") => Ok(()),
        Some("http") if loopback => Ok(()),
        Some("http") => Err(format!(
            "{uri:?}: plain http is allowed only to a loopback address (127.0.0.1, [::1], localhost); use https"
        )),
        _ => Err(format!(
            "{uri:?}: a redirect URI is https, or http to a loopback address"
        )),
    }
}

/// Where the gateway keeps its users, keys and (later) tokens and audit: `[store]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreLocation {
    /// SQLite, `manifold.db` in this data directory (the embedded default).
    Sqlite(PathBuf),
    /// PostgreSQL at this URL (`postgres://…`; it may hold a password).
    Postgres(Secret),
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
    /// Reverse proxies whose `X-Forwarded-For` names the client: a request from one of them
    /// comes from the rightmost address in it that is not itself a trusted proxy.
    pub trusted_proxies: Vec<ipnet::IpNet>,
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
    /// MCP extensions the virtual server declares in its capabilities, from the rest of the
    /// configuration: enterprise-managed authorization when an identity provider's
    /// assertions are accepted (`id_jag`).
    pub extensions: Vec<String>,
    /// Whether the connectors' new and changed tools appear at once or wait for an
    /// administrator's approval (`tool_updates`).
    pub tool_updates: ToolUpdates,
}

/// `tool_updates` of a virtual server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ToolUpdates {
    /// New upstream tools, and changes to tools, appear at once.
    #[default]
    Auto,
    /// A tool appears only with a definition an administrator approved (`manifold tools`); a
    /// new tool, or an approved one whose definition changed, is held out of lists and calls.
    Review,
}

/// The extension a virtual server declares when identity assertions are accepted.
pub const ENTERPRISE_MANAGED_AUTHORIZATION: &str =
    "io.modelcontextprotocol/enterprise-managed-authorization";

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
    /// Every problem that can be found is reported, not only the first.
    pub fn load(path: &Path, env: &dyn Env) -> Result<Self, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            let src = Source::new(path, "");
            let error = src.file().err(format!("cannot read config file: {e}"));
            ConfigErrors::new(path, vec![error])
        })?;
        Self::parse(&text, path, env)
    }

    /// Validate config text; `path` is used for messages and to resolve relative paths.
    pub fn parse(text: &str, path: &Path, env: &dyn Env) -> Result<Self, ConfigErrors> {
        let src = Source::new(path, text);
        let (raw, errors) = RawConfig::read(&src).map_err(|e| ConfigErrors::new(path, vec![e]))?;
        let mut builder = Builder {
            src: &src,
            env,
            errors,
        };
        let config = builder.build(raw);
        if builder.errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors::new(path, builder.errors))
        }
    }

    /// What is valid but probably not meant: no virtual server (nothing would be served), a
    /// connector no server uses. Each names the file.
    pub fn warnings(&self) -> Vec<String> {
        let file = self.path.display();
        if self.servers.is_empty() {
            return vec![format!(
                "{file} defines no virtual server ([servers.NAME]); nothing would be served"
            )];
        }
        self.connectors
            .keys()
            .filter(|id| {
                !self
                    .servers
                    .values()
                    .any(|s| s.connectors.iter().any(|u| u.connector == **id))
            })
            .map(|id| {
                format!(
                    "{file}: connector {:?} is not used by any virtual server: add it to a server's `connectors`, or remove it",
                    id.as_str()
                )
            })
            .collect()
    }
}

/// Builds the typed config, collecting every problem: a bad value is reported and replaced by
/// its default, so the checks after it still run (the result is only used when none failed).
struct Builder<'a> {
    src: &'a Source<'a>,
    env: &'a dyn Env,
    errors: Vec<ConfigError>,
}

impl Builder<'_> {
    fn build(&mut self, raw: RawConfig) -> Config {
        let gateway = self.gateway(raw.gateway);
        let store = self.store(raw.store);
        let auth = self.auth(raw.auth, gateway.listen);
        // Every name defined, even where its table was bad: servers using it get no second error.
        let defined: Vec<String> = raw.connectors.keys().cloned().collect();
        let mut connectors = BTreeMap::new();
        for (name, rc) in raw.connectors {
            let at = self.src.table(&["connectors", &name]);
            let id = match ConnectorId::parse(&name) {
                Ok(id) => id,
                Err(m) => {
                    self.errors.push(at.err(format!("connector: {m}")));
                    continue;
                }
            };
            if let Some(spec) = rc.and_then(|rc| self.connector(&id, rc)) {
                connectors.insert(id, spec);
            }
        }
        let mut servers = BTreeMap::new();
        for (name, rs) in raw.servers {
            let at = self.src.table(&["servers", &name]);
            if let Err(m) = ConnectorId::parse(&name) {
                self.errors.push(at.err(format!("virtual server: {m}")));
            }
            let mut spec = self.server(&name, rs, &defined);
            if auth.providers.values().any(|p| p.id_jag) {
                spec.extensions
                    .push(ENTERPRISE_MANAGED_AUTHORIZATION.to_owned());
            }
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
        let roles = self.roles(raw.roles, &servers);
        let groups = self.groups(raw.groups, &roles);
        let policy = self.policy(raw.policy, &base);
        Config {
            path: self.src.path.to_path_buf(),
            gateway,
            store,
            auth,
            connectors,
            servers,
            roles,
            groups,
            policy,
        }
    }

    /// `[groups.NAME]`: roles that `[roles]` defines.
    fn groups(
        &mut self,
        raw: BTreeMap<String, raw::RawGroup>,
        roles: &BTreeMap<String, RoleSpec>,
    ) -> BTreeMap<String, Vec<String>> {
        let mut out = BTreeMap::new();
        for (name, g) in raw {
            let mut given = Vec::new();
            for r in &g.roles {
                let v = r.get_ref();
                if roles.contains_key(v) {
                    given.push(v.clone());
                } else {
                    let known: Vec<&str> = roles.keys().map(String::as_str).collect();
                    self.errors.push(self.src.at(r).err(format!(
                        "groups.{name}.roles: no role {v:?} in [roles] (there are: {})",
                        if known.is_empty() {
                            "none".to_owned()
                        } else {
                            known.join(", ")
                        }
                    )));
                }
            }
            out.insert(name, given);
        }
        out
    }

    /// `[policy]`: the inline text, then each file (relative to the config's directory).
    fn policy(&mut self, raw: raw::RawPolicy, base: &Path) -> Vec<PolicyText> {
        let mut out = Vec::new();
        if let Some(text) = raw.cedar {
            let span = text.span();
            let before = &self.src.text[..span.start.min(self.src.text.len())];
            let written = self.src.text.get(span).unwrap_or_default();
            // A multi-line string's first newline is not part of its value.
            let trimmed = TRIMMED_STARTS.iter().any(|s| written.starts_with(s));
            out.push(PolicyText {
                name: self.src.path.display().to_string(),
                text: text.into_inner(),
                line_offset: before.matches('\n').count() + usize::from(trimmed),
            });
        }
        for f in raw.cedar_files.unwrap_or_default() {
            let p = PathBuf::from(f.get_ref());
            let p = if p.is_relative() { base.join(p) } else { p };
            match std::fs::read_to_string(&p) {
                Ok(text) => out.push(PolicyText {
                    name: p.display().to_string(),
                    text,
                    line_offset: 0,
                }),
                Err(e) => self.errors.push(self.src.at(&f).err(format!(
                    "policy.cedar_files: cannot read {}: {e}",
                    p.display()
                ))),
            }
        }
        out
    }

    /// `[roles.NAME]`: servers that exist, rules of the form `CONNECTOR/NAME`.
    fn roles(
        &mut self,
        raw: BTreeMap<String, raw::RawRole>,
        servers: &BTreeMap<String, VirtualServerSpec>,
    ) -> BTreeMap<String, RoleSpec> {
        let mut out = BTreeMap::new();
        for (name, r) in raw {
            let key = format!("roles.{name}");
            let mut spec = RoleSpec::default();
            for s in &r.servers {
                let v = s.get_ref();
                if v == "*" || servers.contains_key(v) {
                    spec.servers.push(v.clone());
                } else {
                    let known: Vec<&str> = servers.keys().map(String::as_str).collect();
                    self.errors.push(self.src.at(s).err(format!(
                        "{key}.servers: no virtual server {v:?} (there are: {}; or \"*\" for all)",
                        known.join(", ")
                    )));
                }
            }
            for (list, rules, into) in [
                ("allow", &r.allow, &mut spec.allow),
                ("deny", &r.deny, &mut spec.deny),
                ("ask", &r.ask, &mut spec.ask),
            ] {
                for g in rules {
                    let v = g.get_ref();
                    match v.split_once('/') {
                        Some((c, n)) if !c.is_empty() && !n.is_empty() => into.push(v.clone()),
                        _ => self.errors.push(self.src.at(g).err(format!(
                            "{key}.{list}: {v:?} is not CONNECTOR/NAME (for example \"github/create_*\", \"*/read_*\" or \"*/*\")"
                        ))),
                    }
                }
            }
            out.insert(name, spec);
        }
        out
    }

    /// `[auth]`. A gateway reachable from other machines must require sign-in.
    fn auth(&mut self, a: raw::RawAuth, listen: SocketAddr) -> AuthSettings {
        let required = a.required.unwrap_or(false);
        if !required && !listen.ip().is_loopback() {
            self.errors.push(self.src.table(&["gateway"]).err(format!(
                "gateway.listen: {listen} is reachable from other machines, and without sign-in anyone there could call every tool: set [auth] required = true, or listen on 127.0.0.1"
            )));
        }
        let issuer = a.issuer.as_ref().and_then(|i| {
            let v = i.get_ref().trim_end_matches('/').to_owned();
            let mut bad = |m: &str| {
                self.errors.push(
                    self.src
                        .at(i)
                        .err(format!("auth.issuer: {:?} {m}", i.get_ref())),
                );
                None
            };
            let Ok(uri) = v.parse::<http::Uri>() else {
                return bad("is not a URL");
            };
            let Some(host) = uri
                .authority()
                .map(|a| a.host().trim_matches(['[', ']']).to_owned())
            else {
                return bad("is not an absolute URL like \"https://gateway.example.com\"");
            };
            if !matches!(uri.path(), "" | "/") {
                return bad(
                    "must be an origin like \"https://gateway.example.com\", without a path (the gateway serves /mcp/… and /oauth/… at its root)",
                );
            }
            if uri.query().is_some()
                || v.contains('#')
                || uri.authority().is_some_and(|a| a.as_str().contains('@'))
            {
                return bad("must not have a query, fragment or user name");
            }
            let loopback = host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            match uri.scheme_str() {
                Some("https") => Some(v),
                Some("http") if loopback => Some(v),
                _ => bad("must be https (plain http only on a loopback address)"),
            }
        });
        let mut clients = BTreeMap::new();
        for (id, c) in a.clients.unwrap_or_default() {
            let at = self.src.at(&c);
            let c = c.into_inner();
            if id.is_empty() || id.len() > 200 || id.chars().any(|ch| ch.is_control() || ch == ' ')
            {
                self.errors.push(at.err(format!(
                    "auth.clients.{id}: a client id is 1 to 200 characters, without spaces"
                )));
            }
            let secret = c.secret.as_ref().and_then(|s| {
                self.expand(s, &format!("auth.clients.{id}.secret"), &mut Vec::new())
            });
            if secret.as_ref().is_some_and(|s| s.len() < 16) {
                self.errors.push(at.err(format!(
                    "auth.clients.{id}.secret: at least 16 characters (make one with `openssl rand -base64 32`)"
                )));
            }
            if c.redirect_uris.is_empty() && secret.is_none() {
                self.errors.push(at.err(format!("auth.clients.{id}: needs redirect_uris (where the browser returns after sign-in)")));
            }
            let mut uris = Vec::new();
            for u in &c.redirect_uris {
                match valid_redirect_uri(u.get_ref()) {
                    Ok(()) => uris.push(u.get_ref().clone()),
                    Err(m) => self.errors.push(
                        self.src
                            .at(u)
                            .err(format!("auth.clients.{id}.redirect_uris: {m}")),
                    ),
                }
            }
            clients.insert(
                id.clone(),
                ClientSpec {
                    name: c.name.unwrap_or(id),
                    redirect_uris: uris,
                    secret,
                },
            );
        }
        let mut client_metadata_private_hosts = Vec::new();
        for h in a.client_metadata_private_hosts.unwrap_or_default() {
            let v = h.get_ref().trim().to_ascii_lowercase();
            let v = v.trim_matches(['[', ']']).to_owned();
            let ok = !v.is_empty()
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'));
            if ok {
                client_metadata_private_hosts.push(v);
            } else {
                self.errors.push(self.src.at(&h).err(format!(
                    "auth.client_metadata_private_hosts: {:?} is not a host name or IP address (no scheme, port or path)",
                    h.get_ref()
                )));
            }
        }
        let client_metadata_ca = a.client_metadata_ca.as_ref().and_then(|c| {
            let p = PathBuf::from(c.get_ref());
            let base = self.src.path.parent().unwrap_or(Path::new("."));
            let p = if p.is_relative() { base.join(p) } else { p };
            if p.is_file() {
                Some(p)
            } else {
                self.errors.push(self.src.at(c).err(format!(
                    "auth.client_metadata_ca: {} is not a readable file (a PEM file of CA certificates)",
                    p.display()
                )));
                None
            }
        });
        let mut providers = BTreeMap::new();
        for (name, p) in a.providers.unwrap_or_default() {
            let at = self.src.at(&p);
            let p = p.into_inner();
            let key = format!("auth.providers.{name}");
            if name.is_empty()
                || name.len() > 32
                || !name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
            {
                self.errors.push(at.err(format!(
                    "{key}: a provider's name is 1 to 32 of a-z, 0-9, - and _ (it appears in URLs)"
                )));
            }
            // Exactly as written: some providers' issuers end with a slash, and issuers are
            // compared as strings (discovery, ID tokens, RFC 9207).
            let issuer = self.expand(&p.issuer, &format!("{key}.issuer"), &mut Vec::new());
            if let Some(i) = &issuer
                && let Err(m) = https_or_loopback(i)
            {
                self.errors
                    .push(self.src.at(&p.issuer).err(format!("{key}.issuer: {m}")));
            }
            let client_id = self.expand(&p.client_id, &format!("{key}.client_id"), &mut Vec::new());
            if client_id.as_deref() == Some("") {
                self.errors.push(
                    self.src
                        .at(&p.client_id)
                        .err(format!("{key}.client_id: must not be empty")),
                );
            }
            let client_secret = p
                .client_secret
                .as_ref()
                .and_then(|s| self.expand(s, &format!("{key}.client_secret"), &mut Vec::new()));
            let mut scopes = p
                .scopes
                .unwrap_or_else(|| vec!["openid".into(), "profile".into(), "email".into()]);
            if !scopes.iter().any(|s| s == "openid") {
                scopes.insert(0, "openid".into());
            }
            let groups_claim = p
                .groups_claim
                .as_ref()
                .map_or_else(|| "groups".to_owned(), |g| g.get_ref().clone());
            if groups_claim.is_empty() || groups_claim.split('.').any(str::is_empty) {
                self.errors.push(self.src.table(&["auth", "providers", &name]).err(format!(
                    "{key}.groups_claim: {groups_claim:?} is not a claim path (names joined by dots, like \"realm_access.roles\")"
                )));
            }
            providers.insert(
                name.clone(),
                ProviderSpec {
                    label: p.label.unwrap_or_else(|| name.clone()),
                    issuer: issuer.unwrap_or_default(),
                    client_id: client_id.unwrap_or_default(),
                    client_secret,
                    scopes,
                    groups_claim,
                    name_claim: p.name_claim.unwrap_or_else(|| "name".into()),
                    email_claim: p.email_claim.unwrap_or_else(|| "email".into()),
                    userinfo: p.userinfo.unwrap_or(false),
                    roles: p.roles.unwrap_or_default(),
                    default_roles: p.default_roles.unwrap_or_default(),
                    id_jag: p.id_jag.unwrap_or(false),
                    reauthenticate_after: self.positive(
                        p.reauthenticate_after,
                        &format!("{key}.reauthenticate_after"),
                        Duration::from_secs(12 * 3600),
                    ),
                },
            );
        }
        let admin_roles = a.admin_roles.unwrap_or_else(|| vec!["admin".to_owned()]);
        if admin_roles.iter().any(|r| r.trim().is_empty()) {
            self.errors.push(
                self.src
                    .table(&["auth"])
                    .err("auth.admin_roles: a role name cannot be empty".to_owned()),
            );
        }
        let password_login = a.password_login.unwrap_or(true);
        if !password_login && providers.is_empty() {
            self.errors.push(self.src.table(&["auth"]).err(
                "auth.password_login = false leaves no way to sign in: configure [auth.providers.NAME], or allow passwords".to_owned(),
            ));
        }
        let access_token_lifetime = self.positive(
            a.access_token_lifetime,
            "auth.access_token_lifetime",
            Duration::from_secs(3600),
        );
        if access_token_lifetime > Duration::from_secs(86_400) {
            self.errors.push(self.src.table(&["auth"]).err("auth.access_token_lifetime: at most 24h (access tokens are not checked against revocation between requests of a signed-out client; keep them short)".to_owned()));
        }
        AuthSettings {
            required,
            issuer,
            access_token_lifetime: access_token_lifetime.min(Duration::from_secs(86_400)),
            refresh_token_lifetime: self.positive(
                a.refresh_token_lifetime,
                "auth.refresh_token_lifetime",
                Duration::from_secs(30 * 86_400),
            ),
            dynamic_registration: a.dynamic_registration.unwrap_or(true),
            registrations_per_hour: a.registrations_per_hour.unwrap_or(20),
            max_clients: a.max_clients.unwrap_or(10_000).max(1),
            unused_client_expiry: self.positive(
                a.unused_client_expiry,
                "auth.unused_client_expiry",
                Duration::from_secs(30 * 86_400),
            ),
            logins_per_minute: a.logins_per_minute.unwrap_or(10).max(1),
            client_metadata_documents: a.client_metadata_documents.unwrap_or(true),
            client_metadata_private_hosts,
            client_metadata_ca,
            clients,
            password_login,
            providers,
            admin_roles,
        }
    }

    /// `[store]`: PostgreSQL when `url` is set, else SQLite in `data_dir` (relative to the
    /// config file), by default `$XDG_DATA_HOME/manifold`, `~/.local/share/manifold`, or
    /// `manifold-data` beside the config file when there is no home.
    fn store(&mut self, s: raw::RawStore) -> StoreLocation {
        let fallback = || StoreLocation::Sqlite(PathBuf::from("manifold-data"));
        if let Some(url) = &s.url {
            if let Some(dir) = &s.data_dir {
                self.errors.push(
                    self.src.at(dir).err(
                        "store.data_dir: not used with store.url (PostgreSQL): remove one of them"
                            .to_owned(),
                    ),
                );
            }
            let Some(expanded) = self.expand(url, "store.url", &mut Vec::new()) else {
                return fallback();
            };
            if !(expanded.starts_with("postgres://") || expanded.starts_with("postgresql://")) {
                self.errors.push(self.src.at(url).err(
                    "store.url: must be a postgres:// URL (leave it out to use SQLite in store.data_dir)"
                        .to_owned(),
                ));
                return fallback();
            }
            return StoreLocation::Postgres(Secret::new(expanded));
        }
        if let Some(dir) = &s.data_dir {
            let Some(expanded) = self.expand(dir, "store.data_dir", &mut Vec::new()) else {
                return fallback();
            };
            let p = PathBuf::from(expanded);
            let base = self.src.path.parent().unwrap_or(Path::new("."));
            return StoreLocation::Sqlite(if p.is_relative() { base.join(p) } else { p });
        }
        let data_home = self
            .env
            .var("XDG_DATA_HOME")
            .filter(|d| Path::new(d).is_absolute())
            .map(PathBuf::from)
            .or_else(|| {
                self.env
                    .var("HOME")
                    .map(|h| Path::new(&h).join(".local/share"))
            });
        // Without a home (a service account, a container): beside the config file.
        let base = self.src.path.parent().unwrap_or(Path::new("."));
        StoreLocation::Sqlite(
            data_home.map_or_else(|| base.join("manifold-data"), |d| d.join("manifold")),
        )
    }

    fn gateway(&mut self, g: raw::RawGateway) -> GatewaySettings {
        let default_listen = DEFAULT_LISTEN
            .parse()
            .expect("the default listen address parses");
        let listen = match g.listen {
            Some(l) => l.get_ref().parse().unwrap_or_else(|_| {
                self.errors.push(self.src.at(&l).err(format!(
                    "gateway.listen: {:?} is not an address like \"127.0.0.1:8730\"",
                    l.get_ref()
                )));
                default_listen
            }),
            None => default_listen,
        };
        let allowed_hosts = g.allowed_hosts.unwrap_or_else(|| {
            vec![
                "localhost".into(),
                "127.0.0.1".into(),
                "[::1]".into(),
                "::1".into(),
            ]
        });
        GatewaySettings {
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
            ),
            max_body_bytes: g.max_body_bytes.unwrap_or(4 * 1024 * 1024) as usize,
            sse_keep_alive: self.duration_or(
                g.sse_keep_alive,
                "gateway.sse_keep_alive",
                Duration::from_secs(15),
            ),
            page_size: g.page_size.unwrap_or(1000).max(1) as usize,
            watch: g.watch.unwrap_or(true),
            shutdown_grace: self.duration_or(
                g.shutdown_grace,
                "gateway.shutdown_grace",
                Duration::from_secs(10),
            ),
            input_wait: self.duration_or(
                g.input_wait,
                "gateway.input_wait",
                Duration::from_secs(300),
            ),
            cache_ttl: self.duration_or(g.cache_ttl, "gateway.cache_ttl", Duration::from_secs(60)),
            public_detail: g.public_detail.unwrap_or(false),
            trusted_proxies: self.trusted_proxies(g.trusted_proxies.unwrap_or_default()),
            max_connections: g.max_connections.map(|n| n.max(1) as usize),
            header_read_timeout: self.positive(
                g.header_read_timeout,
                "gateway.header_read_timeout",
                Duration::from_secs(10),
            ),
            body_read_timeout: self.positive(
                g.body_read_timeout,
                "gateway.body_read_timeout",
                Duration::from_secs(30),
            ),
            idle_connection_timeout: self.positive(
                g.idle_connection_timeout,
                "gateway.idle_connection_timeout",
                Duration::from_secs(60),
            ),
            max_sessions: g.max_sessions.unwrap_or(10_000).max(1) as usize,
            max_sessions_per_client: g.max_sessions_per_client.unwrap_or(100).max(1) as usize,
            initialize_per_minute: g.initialize_per_minute.unwrap_or(120).max(1),
        }
    }

    /// `None` when the connector has errors that leave no transport to build (all reported).
    fn connector(&mut self, id: &ConnectorId, rc: RawConnector) -> Option<ConnectorSpec> {
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
                for (k, _) in http_only.iter().filter(|(_, set)| *set) {
                    self.errors
                        .push(at.err(key(&format!("{k:?} applies to kind = \"http\" only"))));
                }
                let command = match rc.command {
                    None => {
                        self.errors.push(
                            at.err(key("kind = \"stdio\" needs `command` (the program to run)")),
                        );
                        None
                    }
                    Some(c) if c.get_ref().trim().is_empty() => {
                        self.errors
                            .push(self.src.at(&c).err(key("`command` is empty")));
                        None
                    }
                    Some(c) => Some(c.into_inner()),
                };
                let mut env = BTreeMap::new();
                for (k, v) in rc.env.unwrap_or_default() {
                    let Some(value) = self.expand(&v, &key(&format!("env.{k}")), &mut secrets)
                    else {
                        continue;
                    };
                    // Long literal values look like tokens whatever their name.
                    if redact::secret_name(&k) || value.len() >= 16 {
                        secrets.push(value.clone());
                    }
                    env.insert(k, Secret(value));
                }
                let references = secrets.len();
                let mut args = Vec::new();
                for (i, a) in rc.args.unwrap_or_default().iter().enumerate() {
                    let value = self.expand(a, &key(&format!("args[{i}]")), &mut secrets);
                    args.push(value.unwrap_or_default());
                }
                let args_hold_secrets = secrets.len() > references || args_look_secret(&args);
                let start = self.choice(
                    rc.start.as_ref(),
                    &key("start"),
                    &[("eager", StartMode::Eager), ("lazy", StartMode::Lazy)],
                );
                command.map(|command| {
                    TransportSpec::Stdio(StdioSpec {
                        command,
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
                })
            }
            "http" => {
                for (k, _) in stdio_only.iter().filter(|(_, set)| *set) {
                    self.errors
                        .push(at.err(key(&format!("{k:?} applies to kind = \"stdio\" only"))));
                }
                let url = match &rc.url {
                    None => {
                        self.errors.push(at.err(key(
                            "kind = \"http\" needs `url` (the server's MCP endpoint)",
                        )));
                        None
                    }
                    Some(url) => self.expand(url, &key("url"), &mut secrets).filter(|value| {
                        let ok = value.starts_with("http://") || value.starts_with("https://");
                        if !ok {
                            self.errors.push(self.src.at(url).err(key(&format!(
                                "url {:?} must start with http:// or https://",
                                redact_url(url.get_ref())
                            ))));
                        }
                        ok
                    }),
                };
                if let Some(url) = &url {
                    secrets.extend(redact::url_secrets(url));
                }
                let mut headers = Vec::new();
                for (k, v) in rc.headers.unwrap_or_default() {
                    let Some(value) = self.expand(&v, &key(&format!("headers.{k}")), &mut secrets)
                    else {
                        continue;
                    };
                    // The whole value and its last word (the token of `Bearer …`).
                    if let Some(last) = value.split_whitespace().last() {
                        secrets.push(last.to_owned());
                    }
                    secrets.push(value.clone());
                    headers.push((k, Secret(value)));
                }
                let transport = self.choice(
                    rc.transport.as_ref(),
                    &key("transport"),
                    &[
                        ("auto", HttpTransport::Auto),
                        ("streamable", HttpTransport::Streamable),
                        ("sse", HttpTransport::Sse),
                    ],
                );
                let connect_timeout = self.duration_or(
                    rc.connect_timeout,
                    &key("connect_timeout"),
                    Duration::from_secs(10),
                );
                url.map(|url| {
                    TransportSpec::Http(HttpSpec {
                        shown_url: String::new(), // once every secret is known, below
                        url,
                        headers,
                        transport,
                        connect_timeout,
                    })
                })
            }
            other => {
                self.errors.push(self.src.at(&rc.kind).err(key(&format!(
                    "kind = {other:?} is not one of \"stdio\", \"http\""
                ))));
                None
            }
        };
        let sessions = self.choice(
            rc.sessions.as_ref(),
            &key("sessions"),
            &[
                ("shared", SessionMode::Shared),
                ("per_client", SessionMode::PerClient),
            ],
        );
        let era = self.choice(
            rc.era.as_ref(),
            &key("era"),
            &[
                ("auto", Era::Auto),
                ("legacy", Era::Legacy),
                ("modern", Era::Modern),
            ],
        );
        let mut restart = RestartPolicy::default();
        if let Some(r) = rc.restart {
            restart.initial_backoff = self.duration_or(
                r.initial_backoff,
                &key("restart.initial_backoff"),
                restart.initial_backoff,
            );
            restart.max_backoff = self.duration_or(
                r.max_backoff,
                &key("restart.max_backoff"),
                restart.max_backoff,
            );
            restart.window = self.duration_or(r.window, &key("restart.window"), restart.window);
            restart.open_for =
                self.duration_or(r.open_for, &key("restart.open_for"), restart.open_for);
            restart.max_failures = r.max_failures.unwrap_or(restart.max_failures).max(1);
        }
        let call_timeout = self.duration_or(
            rc.call_timeout,
            &key("call_timeout"),
            Duration::from_secs(120),
        );
        let mut spec = ConnectorSpec {
            id: id.clone(),
            transport: transport?,
            call_timeout,
            restart,
            sessions,
            max_sessions: rc.max_sessions.unwrap_or(100).max(1) as usize,
            era,
            secrets: Secrets::new(secrets),
        };
        if let TransportSpec::Http(h) = &mut spec.transport {
            h.shown_url = spec.secrets.scrub(&redact_url(&h.url)).into_owned();
        }
        Some(spec)
    }

    /// `defined`: every connector name in the file (valid or not).
    fn server(&mut self, name: &str, rs: RawServer, defined: &[String]) -> VirtualServerSpec {
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
                    self.errors.push(self.src.at(&s).err(key(&format!(
                        "separator {v:?} must be 1-4 characters from letters, digits, '_', '-', '.'"
                    ))));
                }
                v.clone()
            }
            None => "__".to_owned(),
        };
        if rs.connectors.is_empty() {
            self.errors.push(at.err(key(
                "`connectors` is empty: list the connectors this server bundles",
            )));
        }
        let defined_names: Vec<&str> = defined.iter().map(String::as_str).collect();
        let mut curation = rs.curation;
        let mut uses = Vec::new();
        let mut seen = Vec::new();
        for c in &rs.connectors {
            let cname = c.get_ref();
            // Taken whatever happens below, so it is not also reported as curation for a
            // connector missing from `connectors`.
            let cur = curation.remove(cname).unwrap_or_default();
            if !defined.contains(cname) {
                self.errors.push(self.src.at(c).err(key(&format!(
                    "unknown connector {cname:?}{}",
                    text::suggest(cname, &defined_names)
                ))));
                continue;
            }
            if seen.contains(cname) {
                self.errors.push(
                    self.src
                        .at(c)
                        .err(key(&format!("connector {cname:?} is listed twice"))),
                );
                continue;
            }
            seen.push(cname.clone());
            // An invalid name is reported with its `[connectors.NAME]` table.
            if let Ok(id) = ConnectorId::parse(cname) {
                uses.push(self.curation(name, id, cur));
            }
        }
        let listed: Vec<&str> = rs.connectors.iter().map(|c| c.get_ref().as_str()).collect();
        for extra in curation.keys() {
            let at = self.src.table(&["servers", name, "curation", extra]);
            let hint = match text::suggest(extra, &listed) {
                h if !h.is_empty() => h,
                _ if defined.contains(extra) => {
                    format!(" (add {extra:?} to `connectors` to use it in this server)")
                }
                h => h,
            };
            self.errors.push(at.err(key(&format!(
                "curation for {extra:?}, which is not in `connectors`{hint}"
            ))));
        }
        let tool_updates = self.choice(
            rs.tool_updates.as_ref(),
            &key("tool_updates"),
            &[("auto", ToolUpdates::Auto), ("review", ToolUpdates::Review)],
        );
        VirtualServerSpec {
            name: name.to_owned(),
            title: rs.title,
            instructions: rs.instructions,
            separator,
            connectors: uses,
            extensions: Vec::new(),
            tool_updates,
        }
    }

    fn curation(&mut self, server: &str, id: ConnectorId, cur: RawCuration) -> ConnectorUse {
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
            let rename = o.rename.map(|r| {
                let v = r.get_ref();
                if !valid_tool_name(v) {
                    self.errors.push(self.src.at(&r).err(key(&format!(
                        "rename {v:?} is not a valid tool name (1-{MAX_NAME_LEN} of A-Z a-z 0-9 _ - .)"
                    ))));
                }
                r.into_inner()
            });
            let pin_args = match o.pin_args.map(serde_json::to_value) {
                None => Default::default(),
                Some(Ok(serde_json::Value::Object(m))) => m,
                Some(_) => {
                    self.errors
                        .push(at.err(key("pin_args must be a table of argument values")));
                    Default::default()
                }
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
        ConnectorUse {
            connector: id,
            prefix: cur.prefix.unwrap_or(true),
            include: cur.include.unwrap_or_else(|| vec!["*".into()]),
            exclude: cur.exclude.unwrap_or_default(),
            tools,
        }
    }

    /// One of `options` by its name in the file; the first is the default. A name not among
    /// them is reported (and the default used).
    fn choice<T: Copy>(
        &mut self,
        v: Option<&Spanned<String>>,
        key: &str,
        options: &[(&str, T)],
    ) -> T {
        let default = options[0].1;
        let Some(v) = v else {
            return default;
        };
        if let Some((_, t)) = options.iter().find(|(name, _)| name == v.get_ref()) {
            return *t;
        }
        let listed: Vec<String> = options.iter().map(|(n, _)| format!("{n:?}")).collect();
        // `key` is `connector "a": sessions`: the message reads `… sessions = "x" is not …`.
        self.errors.push(self.src.at(v).err(format!(
            "{key} = {:?} is not one of {}",
            v.get_ref(),
            listed.join(", ")
        )));
        default
    }

    fn duration_or(
        &mut self,
        v: Option<Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Duration {
        let Some(s) = v else {
            return default;
        };
        parse_duration(s.get_ref()).unwrap_or_else(|| {
            self.errors.push(self.src.at(&s).err(format!(
                "{key}: {:?} is not a duration like \"500ms\", \"30s\", \"5m\" or \"1h\"",
                s.get_ref()
            )));
            default
        })
    }

    /// `gateway.trusted_proxies`: addresses (`10.0.0.5`) and networks (`10.0.0.0/8`).
    fn trusted_proxies(&mut self, raw: Vec<Spanned<String>>) -> Vec<ipnet::IpNet> {
        let mut out = Vec::new();
        for v in raw {
            let text = v.get_ref().trim();
            let parsed = text
                .parse::<ipnet::IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            match parsed {
                Ok(net) => out.push(net),
                Err(_) => self.errors.push(self.src.at(&v).err(format!(
                    "gateway.trusted_proxies: {text:?} is neither an address (10.0.0.5, ::1) nor a network (10.0.0.0/8)"
                ))),
            }
        }
        out
    }

    /// Like `duration_or`, refusing zero (a zero timeout would close every connection).
    fn positive(&mut self, v: Option<Spanned<String>>, key: &str, default: Duration) -> Duration {
        let at = v.as_ref().map(|s| self.src.at(s));
        let d = self.duration_or(v, key, default);
        match at {
            Some(at) if d.is_zero() => {
                self.errors.push(at.err(format!(
                    "{key}: must be longer than zero (e.g. \"{}s\")",
                    default.as_secs()
                )));
                default
            }
            _ => d,
        }
    }

    /// Expand `${NAME}`, `${NAME:-default}` and `${file:PATH}` references, noting the
    /// substituted values in `secrets`; `None` when a reference cannot be resolved (reported).
    fn expand(
        &mut self,
        v: &Spanned<String>,
        key: &str,
        secrets: &mut Vec<String>,
    ) -> Option<String> {
        text::expand(v.get_ref(), self.env, self.src.path, secrets)
            .map_err(|m| self.errors.push(self.src.at(v).err(format!("{key}: {m}"))))
            .ok()
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
        "d" => Some(Duration::from_secs(n * 86_400)),
        _ => None,
    }
}

/// How a TOML multi-line string begins when its first newline is not part of its value.
const TRIMMED_STARTS: [&str; 4] = ["\"\"\"\n", "'''\n", "\"\"\"\r\n", "'''\r\n"];
