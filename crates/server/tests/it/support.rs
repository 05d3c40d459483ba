//! The gateway in this process (real HTTP on 127.0.0.1:0, real stdio upstream) with seams that
//! count their consultations, and raw HTTP helpers for both eras.

#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use manifold_audit::{AuditEvent, AuditSink};
use manifold_config::{Config, ConnectorSpec};
use manifold_policy::{Action, Decision, Policy, Principal};
use manifold_server::{AuthError, Authenticate, CredentialError, Credentials, Gateway, Seams};
use manifold_upstream::{BoxFut, Credential};
use serde_json::{Value, json};

pub fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
        .canonicalize()
        .expect("fixture")
        .display()
        .to_string()
}

/// A `[connectors.NAME]` running the faulty fixture over stdio.
pub fn faulty(name: &str) -> String {
    format!(
        "\n[connectors.{name}]\nkind = \"stdio\"\ncommand = \"python3\"\nargs = [\"{}\", \"--name\", \"{name}\"]\n",
        fixture("faulty_upstream.py")
    )
}

/// How many times each seam was consulted.
#[derive(Default)]
pub struct Counts {
    pub authenticate: AtomicUsize,
    pub policy: AtomicUsize,
    pub credentials: AtomicUsize,
    pub audit: AtomicUsize,
    pub events: Mutex<Vec<AuditEvent>>,
}

impl Counts {
    pub fn now(&self) -> [usize; 4] {
        [
            self.authenticate.load(Ordering::SeqCst),
            self.policy.load(Ordering::SeqCst),
            self.credentials.load(Ordering::SeqCst),
            self.audit.load(Ordering::SeqCst),
        ]
    }
}

/// Callers are whoever the `x-test-user` header names (anonymous without it), holding the
/// roles `x-test-roles` lists (comma-separated).
struct HeaderUser(Arc<Counts>);

impl Authenticate for HeaderUser {
    fn authenticate<'a>(
        &'a self,
        parts: &'a http::request::Parts,
    ) -> BoxFut<'a, Result<Principal, AuthError>> {
        self.0.authenticate.fetch_add(1, Ordering::SeqCst);
        let user = parts
            .headers
            .get("x-test-user")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let roles: Vec<String> = parts
            .headers
            .get("x-test-roles")
            .and_then(|v| v.to_str().ok())
            .map(|r| r.split(',').map(str::to_owned).collect())
            .unwrap_or_default();
        Box::pin(async move {
            Ok(match user {
                Some(u) => Principal::user("test", u, roles, vec![]),
                None => Principal::anonymous(),
            })
        })
    }
}

/// `DenyExposed` over names that tests change while the gateway runs; a caller holding the
/// role `no-echo` is refused `fa__echo` as well.
pub struct Switchable {
    pub deny: Mutex<Vec<String>>,
    counts: Arc<Counts>,
}

impl Policy for Switchable {
    fn decide(&self, who: &Principal, action: &Action<'_>) -> Decision {
        self.counts.policy.fetch_add(1, Ordering::SeqCst);
        let mut names = self.deny.lock().unwrap().clone();
        if who.roles.iter().any(|r| r == "no-echo") {
            names.push("fa__echo".into());
        }
        let deny = manifold_policy::DenyExposed(names);
        deny.decide(who, action)
    }
}

struct CountedCredentials(Arc<Counts>);

impl Credentials for CountedCredentials {
    fn credential(
        &self,
        _who: &Principal,
        _connector: &ConnectorSpec,
    ) -> Result<Credential, CredentialError> {
        self.0.credentials.fetch_add(1, Ordering::SeqCst);
        Ok(Credential::Configured)
    }
}

struct CountedAudit(Arc<Counts>);

impl AuditSink for CountedAudit {
    fn record(&self, event: AuditEvent) {
        self.0.audit.fetch_add(1, Ordering::SeqCst);
        self.0.events.lock().unwrap().push(event);
    }
}

/// A running gateway; stops when dropped.
pub struct Gw {
    pub gw: Arc<Gateway>,
    pub base: String,
    pub counts: Arc<Counts>,
    pub policy: Arc<Switchable>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Gw {
    /// Serve `config` with counting seams, denying the exposed names in `deny`.
    pub async fn start(config: &str, deny: &[&str]) -> Gw {
        let path = PathBuf::from("/nonexistent/manifold.toml");
        let config = Config::parse(config, &path, &|_: &str| None).expect("a valid config");
        let counts = Arc::new(Counts::default());
        let policy = Arc::new(Switchable {
            deny: Mutex::new(deny.iter().map(|s| s.to_string()).collect()),
            counts: counts.clone(),
        });
        let seams = Seams {
            authenticate: Arc::new(HeaderUser(counts.clone())),
            policy: policy.clone(),
            credentials: Arc::new(CountedCredentials(counts.clone())),
            audit: Arc::new(CountedAudit(counts.clone())),
            reviews: Arc::default(),
        };
        let env: manifold_upstream::EnvLookup = Arc::new(|k: &str| std::env::var(k).ok());
        let gw = Gateway::start_with(config, env, seams);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(manifold_server::serve(listener, gw.clone(), async {
            let _ = stopped.await;
        }));
        let g = Gw {
            gw,
            base,
            counts,
            policy,
            stop: Some(stop),
        };
        eventually("every connector up", || async {
            g.gw.connectors()
                .iter()
                .all(|c| c.health().state == manifold_upstream::HealthState::Up)
                .then_some(())
        })
        .await;
        g
    }

    pub fn url(&self, server: &str) -> String {
        format!("{}/mcp/{server}", self.base)
    }

    pub fn deny(&self, names: &[&str]) {
        *self.policy.deny.lock().unwrap() = names.iter().map(|s| s.to_string()).collect();
    }
}

impl Drop for Gw {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Poll `check` until it gives a value (at most 30 s, else panic naming `what`).
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub const LEGACY: &str = "2025-11-25";
pub const MODERN: &str = "2026-07-28";

/// A plain HTTP client. reqwest is built without a TLS crypto provider; the gateway's own
/// (ring) is installed first, as the binary does.
pub fn http() -> reqwest::Client {
    manifold_upstream::install_crypto_provider();
    reqwest::Client::new()
}

/// A POST with the headers every client sends.
pub fn post(url: &str) -> reqwest::RequestBuilder {
    http()
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
}

/// A POST within legacy session `sid`.
pub fn post_in(url: &str, sid: &str) -> reqwest::RequestBuilder {
    post(url)
        .header("mcp-session-id", sid)
        .header("mcp-protocol-version", LEGACY)
}

/// Open a legacy session (initialize + initialized) for `user` (None: anonymous).
pub async fn session(url: &str, user: Option<&str>) -> String {
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": LEGACY,
        "capabilities": {"sampling": {}, "elicitation": {"form": {}}},
        "clientInfo": {"name": "seam-test", "version": "1"}}});
    let mut r = post(url);
    if let Some(u) = user {
        r = r.header("x-test-user", u);
    }
    let r = r.body(init.to_string()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let sid = r.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    let _ = r.text().await;
    let mut r = post_in(url, &sid);
    if let Some(u) = user {
        r = r.header("x-test-user", u);
    }
    let r = r
        .body(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    sid
}

/// The JSON-RPC answer in a JSON or SSE body (the message with an id).
pub fn message(body: &str) -> Value {
    if let Ok(v) = serde_json::from_str(body) {
        return v;
    }
    body.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .find(|v| v.get("id").is_some() && v.get("method").is_none())
        .unwrap_or_else(|| panic!("no JSON-RPC answer in {body:?}"))
}

/// A request in legacy session `sid`: (HTTP status, content type, answer).
pub async fn legacy(url: &str, sid: &str, method: &str, params: Value) -> (u16, String, Value) {
    legacy_with(post_in(url, sid), method, params).await
}

pub async fn legacy_with(
    r: reqwest::RequestBuilder,
    method: &str,
    params: Value,
) -> (u16, String, Value) {
    let r = r
        .body(json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, ct, message(&r.text().await.unwrap()))
}

/// A 2026-07-28 request: the routing headers and `_meta` (capabilities `caps`).
pub fn modern_request(
    url: &str,
    method: &str,
    mut params: Value,
    caps: Value,
) -> reqwest::RequestBuilder {
    let name = match method {
        "tools/call" | "prompts/get" => params["name"].as_str().map(str::to_owned),
        "resources/read" => params["uri"].as_str().map(str::to_owned),
        _ => None,
    };
    // The request's own `_meta` (a progress token, a log level) stays; the protocol keys join it.
    let mut meta = params["_meta"].as_object().cloned().unwrap_or_default();
    meta.insert(
        "io.modelcontextprotocol/protocolVersion".into(),
        MODERN.into(),
    );
    meta.insert("io.modelcontextprotocol/clientCapabilities".into(), caps);
    meta.insert(
        "io.modelcontextprotocol/clientInfo".into(),
        json!({"name": "seam-test", "version": "1"}),
    );
    params["_meta"] = Value::Object(meta);
    let mut r = post(url)
        .header("mcp-protocol-version", MODERN)
        .header("mcp-method", method);
    if let Some(n) = name {
        r = r.header("mcp-name", n);
    }
    r.body(json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string())
}

pub async fn modern(url: &str, method: &str, params: Value) -> (u16, Value) {
    modern_with(modern_request(
        url,
        method,
        params,
        json!({"elicitation": {"form": {}}}),
    ))
    .await
}

pub async fn modern_with(r: reqwest::RequestBuilder) -> (u16, Value) {
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, message(&r.text().await.unwrap()))
}

/// The names (or URIs) of a list result.
pub fn names(v: &Value, key: &str, field: &str) -> Vec<String> {
    v["result"][key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} in {v}"))
        .iter()
        .map(|i| i[field].as_str().unwrap().to_owned())
        .collect()
}
