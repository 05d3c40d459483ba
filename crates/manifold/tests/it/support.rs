//! Test harness: runs the real `manifold` binary on a free loopback port with a temporary
//! config, finds the pinned third-party peers, and provides an rmcp test client that answers
//! sampling, elicitation and roots and records every notification it receives; `eventually`
//! waits for something to happen; raw HTTP helpers speak to the gateway without an MCP client.

#![allow(deprecated, dead_code)]

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use rmcp::{
    ClientHandler, RoleClient,
    model::{
        CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig,
        CreateMessageRequestParams, CreateMessageResult, ElicitRequestParams, ElicitResult,
        ErrorData, ListRootsResult, LoggingMessageNotificationParam, ProgressNotificationParam,
        ResourceUpdatedNotificationParam,
    },
    service::{NotificationContext, RequestContext, RunningService},
    transport::StreamableHttpClientTransport,
};
use serde_json::{Value, json};

/// The repository root (tests reference fixtures by path).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

pub fn fixture(name: &str) -> String {
    repo()
        .join("tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

/// How often `eventually` checks again.
const POLL: Duration = Duration::from_millis(50);

/// Wait for something to have happened: run `check` every 50 ms until it reports success,
/// and return what it found. Panics once `timeout` has passed (checked between attempts),
/// with "timed out after {timeout} waiting for {what}" and what the last attempt saw.
///
/// `check` returns `Some(v)` or `Ok(v)` when the thing has happened; `None`, or `Err(seen)`
/// with what it found instead (any `Display`: shown on a timeout), while it has not.
pub async fn eventually<A, F, Fut>(what: &str, timeout: Duration, mut check: F) -> A::Value
where
    A: Attempt,
    F: FnMut() -> Fut,
    Fut: Future<Output = A>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let seen = match check().await.settle() {
            Ok(v) => return v,
            Err(seen) => seen,
        };
        if tokio::time::Instant::now() >= deadline {
            match seen {
                Some(seen) => panic!("timed out after {timeout:?} waiting for {what}; {seen}"),
                None => panic!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// What an `eventually` check returns: `Option` (no detail when not yet) or `Result` (the
/// error says what was seen instead).
pub trait Attempt {
    type Value;
    /// The value once settled, or what was seen instead (if the check says).
    fn settle(self) -> Result<Self::Value, Option<String>>;
}

impl<T> Attempt for Option<T> {
    type Value = T;
    fn settle(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

impl<T, E: std::fmt::Display> Attempt for Result<T, E> {
    type Value = T;
    fn settle(self) -> Result<T, Option<String>> {
        self.map_err(|e| Some(e.to_string()))
    }
}

/// How many `method` requests a faulty fixture run with `FAULTY_DEBUG=1` has received, from its
/// debug log (`[faulty] request ID METHOD`): in the gateway's log for a stdio connector (the
/// child's stderr lands there), or `FaultyHttp::log`.
pub fn upstream_requests(log: &str, method: &str) -> usize {
    log.lines()
        .filter(|l| {
            l.split_once("[faulty] request ")
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                == Some(method)
        })
        .count()
}

/// The `env` line that makes a faulty fixture connector log its debug lines (see
/// `upstream_requests`).
pub const FAULTY_DEBUG: &str = "env = { FAULTY_DEBUG = \"1\" }";

/// Pinned third-party peers installed by `scripts/setup-peers` (read from its env.sh).
pub struct Peers {
    vars: HashMap<String, String>,
}

impl Peers {
    /// The peers, or `None` after printing why the calling test skipped. Under
    /// `MANIFOLD_REQUIRE_PEERS=1` (as `scripts/test` sets) a missing peer fails the test.
    pub fn get(test: &str) -> Option<&'static Peers> {
        static PEERS: OnceLock<Option<Peers>> = OnceLock::new();
        let peers = PEERS.get_or_init(|| {
            let env_sh = std::env::var("MANIFOLD_PEERS_ENV")
                .map(PathBuf::from)
                .unwrap_or_else(|_| {
                    let cache = std::env::var("MANIFOLD_CACHE")
                        .map(PathBuf::from)
                        .unwrap_or_else(|_| {
                            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                                .join(".cache/manifold")
                        });
                    cache.join("peers/env.sh")
                });
            let text = std::fs::read_to_string(env_sh).ok()?;
            let vars = text
                .lines()
                .filter_map(|l| l.trim().strip_prefix("export "))
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| {
                    (
                        k.to_owned(),
                        v.trim_matches(|c| c == '"' || c == '\'').to_owned(),
                    )
                })
                .collect();
            Some(Peers { vars })
        });
        if peers.is_none() {
            if std::env::var("MANIFOLD_REQUIRE_PEERS").as_deref() == Ok("1") {
                panic!("{test}: test peers are missing: run scripts/setup-peers");
            }
            eprintln!(
                "SKIPPED {test}: test peers are not installed (run scripts/setup-peers, or scripts/test)"
            );
        }
        peers.as_ref()
    }

    pub fn var(&self, k: &str) -> &str {
        self.vars
            .get(k)
            .unwrap_or_else(|| panic!("env.sh lacks {k}"))
    }
    pub fn npm_bin(&self, name: &str) -> String {
        format!("{}/{name}", self.var("MANIFOLD_NPM_BIN"))
    }
    pub fn node22(&self) -> &str {
        self.var("MANIFOLD_NODE22")
    }
    pub fn python(&self) -> &str {
        self.var("MANIFOLD_PYTHON")
    }
    pub fn venv_bin(&self, name: &str) -> String {
        format!("{}/bin/{name}", self.var("MANIFOLD_VENV"))
    }
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("manifold-it-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        Self(p)
    }
    pub fn path(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `manifold serve`, killed (SIGTERM, then SIGKILL) when dropped.
pub struct Gw {
    pub child: Child,
    pub base: String,
    pub dir: TempDir,
    pub log: Arc<Mutex<String>>,
    /// Standard output before the listen line.
    pub head: String,
}

impl Gw {
    /// Start the gateway on a free port with `config` (TOML) written to a temp file.
    pub fn start(config: &str) -> Gw {
        Self::start_with_env(config, &[])
    }

    /// Like `start`, with extra environment variables for the gateway process.
    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Gw {
        let dir = TempDir::new("gw");
        let path = dir.path("manifold.toml");
        std::fs::write(&path, config).expect("write config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_manifold"))
            .args(["serve", "--config"])
            .arg(&path)
            .args(["--listen", "127.0.0.1:0"])
            .env("MANIFOLD_LOG", "info,rmcp=warn")
            // Each gateway its own store (SQLite in its temp dir), unless the config says.
            .env("XDG_DATA_HOME", dir.path("data"))
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn manifold");
        let stdout = child.stdout.take().expect("stdout");
        // What the gateway prints before it listens (the first admin's password, say).
        let mut head = String::new();
        let mut reader = BufReader::new(stdout);
        let base = loop {
            let mut line = String::new();
            let n = reader.read_line(&mut line).expect("read listen line");
            if let Some(b) = line.trim().strip_prefix("manifold listening on ") {
                break b.to_owned();
            }
            assert!(
                n > 0 && head.len() < 10_000,
                "no listen line; stdout: {head}"
            );
            head.push_str(&line);
        };
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        let l = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var("MANIFOLD_TEST_LOG").is_ok() {
                    eprintln!("[gw] {line}");
                }
                let mut g = l.lock().unwrap();
                if g.len() < 4_000_000 {
                    g.push_str(&line);
                    g.push('\n');
                }
            }
        });
        Gw {
            child,
            base,
            dir,
            log,
            head,
        }
    }

    /// Run `manifold ARGS` (`users`, `keys`, …) on this gateway's config and store, with
    /// `stdin` as standard input; its output, or a panic with it on failure.
    pub fn admin(&self, args: &[&str], stdin: &str, env: &[(&str, &str)]) -> String {
        let (ok, text) = self.admin_status(args, stdin, env);
        assert!(ok, "manifold {args:?} failed: {text}");
        text
    }

    /// `admin`, for a command that may fail: whether it succeeded, and its output.
    pub fn admin_status(&self, args: &[&str], stdin: &str, env: &[(&str, &str)]) -> (bool, String) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_manifold"))
            .args(&args[..1.min(args.len())])
            .arg("--config")
            .arg(self.config_path())
            .args(&args[1.min(args.len())..])
            .env("XDG_DATA_HOME", self.dir.path("data"))
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn manifold");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("write stdin");
        let o = child.wait_with_output().expect("manifold exits");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        (o.status.success(), text)
    }

    pub fn url(&self, server: &str) -> String {
        format!("{}/mcp/{server}", self.base)
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path("manifold.toml")
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Wait until `/healthz/detail` satisfies `pred`, or panic with the last body and the log.
    pub async fn wait_health(
        &self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let url = format!("{}/healthz/detail", self.base);
        let (url, pred) = (&url, &pred);
        eventually(what, Duration::from_secs(90), move || async move {
            let v = match http().get(url).send().await {
                Ok(r) => r.json::<serde_json::Value>().await,
                Err(e) => Err(e),
            };
            match v {
                Ok(v) if pred(&v) => Ok(v),
                Ok(v) => Err(format!("last health: {v:#}\nlog:\n{}", self.log())),
                Err(e) => Err(format!("health request failed: {e}\nlog:\n{}", self.log())),
            }
        })
        .await
    }

    /// Wait until every connector is up.
    pub async fn wait_up(&self) -> serde_json::Value {
        self.wait_health("all connectors up", |v| {
            v["connectors"]
                .as_object()
                .is_some_and(|m| m.values().all(|c| c["state"] == "up"))
        })
        .await
    }

    /// SIGTERM, then SIGKILL if the gateway has not exited after a 15 s grace period. (Not
    /// `eventually`: this runs in `Drop`, synchronously, and a slow exit is not a failure here.)
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return self.child.wait().expect("wait");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Gw {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}

/// An rmcp client that records what it is sent and answers server→client requests.
#[derive(Clone)]
pub struct TestClient {
    pub tag: String,
    pub events: Arc<Mutex<Vec<String>>>,
    pub capable: bool,
}

impl TestClient {
    pub fn new(tag: &str) -> Self {
        Self {
            tag: tag.into(),
            events: Default::default(),
            capable: true,
        }
    }
    pub fn events(&self) -> Vec<String> {
        self.events.lock().unwrap().clone()
    }
    fn push(&self, e: String) {
        self.events.lock().unwrap().push(e);
    }
    /// Wait until an event satisfies `pred`, and return it.
    pub async fn wait_event(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let pred = &pred;
        eventually(
            &format!("client {} to see {what}", self.tag),
            Duration::from_secs(30),
            move || async move {
                let events = self.events();
                match events.iter().find(|e| pred(e)) {
                    Some(e) => Ok(e.clone()),
                    None => Err(format!("events: {events:?}")),
                }
            },
        )
        .await
    }
}

impl ClientHandler for TestClient {
    fn get_info(&self) -> ClientConfig {
        let caps = if self.capable {
            serde_json::json!({ "sampling": {}, "elicitation": { "form": {} }, "roots": { "listChanged": true } })
        } else {
            serde_json::json!({})
        };
        let mut c = ClientConfig::default();
        c.capabilities = serde_json::from_value::<ClientCapabilities>(caps).unwrap();
        c.client_info.name = format!("manifold-test-{}", self.tag);
        c
    }

    async fn create_message(
        &self,
        p: CreateMessageRequestParams,
        _cx: RequestContext<RoleClient>,
    ) -> Result<CreateMessageResult, ErrorData> {
        self.push(format!(
            "sampling:{}",
            serde_json::to_string(&p.messages).unwrap_or_default()
        ));
        Ok(serde_json::from_value(serde_json::json!({
            "role": "assistant",
            "content": { "type": "text", "text": format!("reply from {}", self.tag) },
            "model": "test-model",
            "stopReason": "endTurn"
        }))
        .unwrap())
    }

    async fn create_elicitation(
        &self,
        _p: ElicitRequestParams,
        _cx: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        self.push("elicitation".into());
        Ok(serde_json::from_value(
            serde_json::json!({ "action": "accept", "content": { "name": self.tag } }),
        )
        .unwrap())
    }

    async fn list_roots(
        &self,
        _cx: RequestContext<RoleClient>,
    ) -> Result<ListRootsResult, ErrorData> {
        self.push("roots".into());
        Ok(serde_json::from_value(serde_json::json!({ "roots": [{ "uri": format!("file:///{}", self.tag), "name": "root" }] })).unwrap())
    }

    async fn on_progress(
        &self,
        p: ProgressNotificationParam,
        _cx: NotificationContext<RoleClient>,
    ) {
        self.push(format!(
            "progress:{}:{}",
            serde_json::to_string(&p.progress_token).unwrap_or_default(),
            p.progress
        ));
    }

    async fn on_logging_message(
        &self,
        p: LoggingMessageNotificationParam,
        _cx: NotificationContext<RoleClient>,
    ) {
        self.push(format!("log:{}", p.data));
    }

    async fn on_resource_updated(
        &self,
        p: ResourceUpdatedNotificationParam,
        _cx: NotificationContext<RoleClient>,
    ) {
        self.push(format!("updated:{}", p.uri));
    }

    async fn on_tool_list_changed(&self, _cx: NotificationContext<RoleClient>) {
        self.push("tools_changed".into());
    }
    async fn on_prompt_list_changed(&self, _cx: NotificationContext<RoleClient>) {
        self.push("prompts_changed".into());
    }
    async fn on_resource_list_changed(&self, _cx: NotificationContext<RoleClient>) {
        self.push("resources_changed".into());
    }
}

pub type Client = RunningService<RoleClient, TestClient>;

pub async fn connect(url: &str, handler: TestClient) -> Client {
    manifold_upstream::install_crypto_provider();
    let transport = StreamableHttpClientTransport::from_uri(url.to_owned());
    tokio::time::timeout(
        Duration::from_secs(30),
        rmcp::serve_client(handler, transport),
    )
    .await
    .expect("initialize in time")
    .expect("initialize")
}

pub fn call(name: &str, args: serde_json::Value) -> CallToolRequestParams {
    serde_json::from_value(serde_json::json!({ "name": name, "arguments": args })).unwrap()
}

/// The text of the first text content block.
pub fn text(r: &CallToolResult) -> String {
    r.content
        .iter()
        .find_map(|c| c.as_text().map(|t| t.text.clone()))
        .unwrap_or_default()
}

pub async fn prompt_names(c: &Client) -> Vec<String> {
    c.peer()
        .list_all_prompts()
        .await
        .expect("prompts/list")
        .into_iter()
        .map(|p| p.name)
        .collect()
}

pub async fn tool_names(c: &Client) -> Vec<String> {
    c.peer()
        .list_all_tools()
        .await
        .expect("tools/list")
        .into_iter()
        .map(|t| t.name.into_owned())
        .collect()
}

/// A `[connectors.NAME]` block running the faulty fixture over stdio; `extra` adds keys.
pub fn faulty(name: &str, extra: &str) -> String {
    format!(
        "\n[connectors.{name}]\nkind = \"stdio\"\ncommand = \"python3\"\nargs = [\"{}\", \"--name\", \"{name}\"]\nrestart = {{ initial_backoff = \"100ms\", max_backoff = \"1s\" }}\n{extra}\n",
        fixture("faulty_upstream.py")
    )
}

/// A config with `gateway` (TOML keys for `[gateway]`, may be empty) and one faulty connector
/// `fa` served as virtual server `main`: the common setup of the single-connector tests.
pub fn one_faulty(gateway: &str) -> String {
    format!(
        "[gateway]\n{gateway}\n{}\n[servers.main]\nconnectors = [\"fa\"]\n",
        faulty("fa", "")
    )
}

/// The faulty fixture serving Streamable HTTP on a free loopback port, with `FAULTY_DEBUG=1`
/// (its stderr is kept in `log`, see `upstream_requests`); killed when dropped.
pub struct FaultyHttp {
    child: Child,
    pub url: String,
    log: Arc<Mutex<String>>,
}

impl FaultyHttp {
    pub fn start(name: &str) -> Self {
        Self::start_with_env(name, &[])
    }

    /// Like `start`, with extra environment variables (the fixture's `FAULTY_…` switches).
    pub fn start_with_env(name: &str, env: &[(&str, &str)]) -> Self {
        let mut child = Command::new("python3")
            .arg(fixture("faulty_upstream.py"))
            .args(["--name", name, "--http", "0"])
            .env("FAULTY_DEBUG", "1")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the faulty fixture");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read the listen line");
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        let l = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut g = l.lock().unwrap();
                if g.len() < 4_000_000 {
                    g.push_str(&line);
                    g.push('\n');
                }
            }
        });
        Self {
            child,
            url: format!("http://{addr}/mcp"),
            log,
        }
    }

    /// The fixture's stderr so far (its debug log).
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for FaultyHttp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// Raw HTTP: requests built by hand, for what an MCP client library would not send or hides.

/// An `initialize` request at protocol 2025-11-25 without client capabilities.
pub const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#;

/// A plain HTTP client. reqwest is built without a TLS crypto provider; the gateway's own
/// (ring) is installed first, as the binary does.
pub fn http() -> reqwest::Client {
    http_builder().build().expect("an HTTP client")
}

/// A client builder, with the crypto provider installed.
pub fn http_builder() -> reqwest::ClientBuilder {
    manifold_upstream::install_crypto_provider();
    reqwest::Client::builder()
}

/// A JSON POST that accepts JSON or SSE.
pub fn post(url: &str) -> reqwest::RequestBuilder {
    http()
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
}

/// A POST within session `sid` at protocol 2025-11-25.
pub fn post_in(url: &str, sid: &str) -> reqwest::RequestBuilder {
    post(url)
        .header("mcp-session-id", sid)
        .header("mcp-protocol-version", "2025-11-25")
}

/// Initialize a session; returns its id.
pub async fn session(url: &str) -> String {
    session_with(url, INIT).await
}

/// Initialize a session with the `initialize` request `init`; returns its id.
pub async fn session_with(url: &str, init: &str) -> String {
    let r = post(url).body(init.to_owned()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let sid = r.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    let _ = r.text().await;
    let r = post_in(url, &sid)
        .body(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    sid
}

/// The JSON-RPC message in a JSON or single-event SSE response body.
pub fn message(body: &str) -> Value {
    if let Ok(v) = serde_json::from_str(body) {
        return v;
    }
    body.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .find(|v| v.get("id").is_some())
        .unwrap_or_else(|| panic!("no JSON-RPC message in {body:?}"))
}

/// Send `body` within session `sid`; returns the JSON-RPC answer.
pub async fn rpc(url: &str, sid: &str, body: Value) -> Value {
    let r = post_in(url, sid)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    message(&r.text().await.unwrap())
}

/// The stateless (2026-07-28) protocol version.
/// A legacy session at `url`, opened (`initialize`, which must answer 200) with this
/// `Authorization` header: its id.
pub async fn session_as(url: &str, authorization: &str) -> String {
    let r = post(url)
        .header("authorization", authorization)
        .body(INIT)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "initialize at {url}");
    r.headers()["mcp-session-id"].to_str().unwrap().to_owned()
}

pub const MODERN_VERSION: &str = "2026-07-28";

/// A stateless request: the 2026-07-28 headers and `_meta`, with `caps` as the client's
/// capabilities. `name` goes in `Mcp-Name` (None: omitted).
pub fn modern(
    url: &str,
    method: &str,
    name: Option<&str>,
    mut params: Value,
    caps: Value,
) -> reqwest::RequestBuilder {
    params["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": MODERN_VERSION,
        "io.modelcontextprotocol/clientCapabilities": caps,
        "io.modelcontextprotocol/clientInfo": {"name": "modern-test", "version": "1"},
    });
    let mut r = http()
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", MODERN_VERSION)
        .header("mcp-method", method);
    if let Some(n) = name {
        r = r.header("mcp-name", n);
    }
    r.body(json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string())
}

/// A Python SDK client script of `tests/clients` run with `args`: its output lines.
pub async fn python_client(peers: &Peers, script: &str, args: &[&str]) -> Vec<String> {
    let out = tokio::process::Command::new(peers.python())
        .arg(repo().join("tests/clients").join(script))
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap_or_else(|e| panic!("run {script}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script} {args:?}: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines().map(str::to_owned).collect()
}
