//! A minimal MCP client for load generation: one session over Streamable HTTP (JSON or SSE
//! replies, keep-alive HTTP/1.1 connections shared by all workers) or over a child's stdio pipes
//! (requests multiplexed by id). Replies are decoded only as far as the caller asks.

use std::{
    borrow::Cow,
    collections::HashMap,
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, anyhow, bail};
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    sync::{mpsc, oneshot},
};

use crate::procs::Proc;

/// The version the benchmark asks for; both fast-upstream and rmcp servers accept it.
const PROTOCOL_VERSION: &str = "2025-11-25";
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A JSON-RPC reply whose `result` is decoded as `R` (use a small struct to skip the rest).
#[derive(Deserialize)]
pub struct Reply<R> {
    pub result: Option<R>,
    pub error: Option<Value>,
}

impl<R> Reply<R> {
    pub fn into_result(self) -> anyhow::Result<R> {
        match (self.result, self.error) {
            (Some(r), _) => Ok(r),
            (None, Some(e)) => bail!("JSON-RPC error: {e}"),
            (None, None) => bail!("reply has neither result nor error"),
        }
    }
}

/// One MCP session, the unit every measured run uses.
pub enum Session {
    Http(HttpSession),
    Stdio(StdioSession),
}

impl Session {
    /// Send a request (`params` is JSON text) and decode the reply.
    pub async fn request<R: DeserializeOwned>(
        &self,
        method: &str,
        params: &str,
    ) -> anyhow::Result<Reply<R>> {
        match self {
            Session::Http(s) => s.request(method, params).await,
            Session::Stdio(s) => s.request(method, params).await,
        }
    }

    pub async fn close(self) {
        match self {
            Session::Http(s) => s.close().await,
            Session::Stdio(s) => drop(s),
        }
    }
}

/// The HTTP client all sessions share: HTTP/1.1 only, keep-alive, no proxy, Nagle off.
pub fn http_client() -> anyhow::Result<reqwest::Client> {
    http_client_as(None)
}

/// The same, sending `Authorization: Bearer <bearer>` on every request if given.
pub fn http_client_as(bearer: Option<&str>) -> anyhow::Result<reqwest::Client> {
    // reqwest is built without a crypto provider (see `manifold_upstream::install_crypto_provider`).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(b) = bearer {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {b}"))
            .context("the bearer token is not a valid header value")?;
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    reqwest::Client::builder()
        .default_headers(headers)
        .no_proxy()
        .http1_only()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(1024)
        .pool_idle_timeout(Duration::from_secs(300))
        .timeout(REQUEST_TIMEOUT)
        .build()
        .context("cannot build the HTTP client")
}

pub struct HttpSession {
    client: reqwest::Client,
    url: String,
    session_id: Option<String>,
    protocol: String,
    next_id: AtomicU64,
    /// 2026-07-28: no session; every request carries its own `_meta` and routing headers.
    modern: bool,
}

/// The per-request `_meta` of a 2026-07-28 client.
const MODERN_META: &str = r#""_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{},"io.modelcontextprotocol/clientInfo":{"name":"manifold-bench","version":"0"}}"#;

#[derive(Deserialize)]
struct InitResult {
    #[serde(rename = "protocolVersion")]
    protocol_version: String,
}

impl HttpSession {
    /// `initialize` then `notifications/initialized`, as a client does.
    pub async fn open(client: &reqwest::Client, url: &str) -> anyhow::Result<Self> {
        let mut s = Self {
            client: client.clone(),
            url: url.to_owned(),
            session_id: None,
            protocol: PROTOCOL_VERSION.to_owned(),
            next_id: AtomicU64::new(1),
            modern: false,
        };
        let params = format!(
            r#"{{"protocolVersion":"{PROTOCOL_VERSION}","capabilities":{{}},"clientInfo":{{"name":"manifold-bench","version":"{}"}}}}"#,
            env!("CARGO_PKG_VERSION")
        );
        let body = s.envelope(Some(0), "initialize", &params);
        let resp = s.post(body, None).await?;
        s.session_id = resp
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let init: InitResult = decode::<InitResult>(resp).await?.into_result()?;
        s.protocol = init.protocol_version;
        let body = s.envelope(None, "notifications/initialized", "{}");
        let resp = s.post(body, None).await?;
        if resp.status() != reqwest::StatusCode::ACCEPTED {
            bail!(
                "{url}: notifications/initialized answered {} instead of 202",
                resp.status()
            );
        }
        Ok(s)
    }

    /// A 2026-07-28 client: stateless, nothing to open.
    pub fn modern(client: &reqwest::Client, url: &str) -> Self {
        Self {
            client: client.clone(),
            url: url.to_owned(),
            session_id: None,
            protocol: "2026-07-28".to_owned(),
            next_id: AtomicU64::new(1),
            modern: true,
        }
    }

    pub async fn request<R: DeserializeOwned>(
        &self,
        method: &str,
        params: &str,
    ) -> anyhow::Result<Reply<R>> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if !self.modern {
            let resp = self
                .post(self.envelope(Some(id), method, params), None)
                .await?;
            return decode(resp).await;
        }
        // `_meta` goes first in the params object; `Mcp-Name` repeats the tool's name.
        let inner = params.trim().trim_start_matches('{');
        let params = if inner.trim() == "}" {
            format!("{{{MODERN_META}}}")
        } else {
            format!("{{{MODERN_META},{inner}")
        };
        #[derive(Deserialize)]
        struct Named {
            name: Option<String>,
        }
        let name = serde_json::from_str::<Named>(&params)
            .ok()
            .and_then(|n| n.name);
        let resp = self
            .post(
                self.envelope(Some(id), method, &params),
                Some((method, name.as_deref())),
            )
            .await?;
        decode(resp).await
    }

    /// End the session (DELETE), so that the server can free it.
    pub async fn close(self) {
        let Some(id) = &self.session_id else { return };
        let _ = self
            .client
            .delete(&self.url)
            .header("mcp-session-id", id)
            .header("mcp-protocol-version", &self.protocol)
            .send()
            .await;
    }

    fn envelope(&self, id: Option<u64>, method: &str, params: &str) -> String {
        match id {
            Some(id) => {
                format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"{method}","params":{params}}}"#)
            }
            None => format!(r#"{{"jsonrpc":"2.0","method":"{method}","params":{params}}}"#),
        }
    }

    /// POST `body`; `modern` is (method, name) for the 2026-07-28 routing headers.
    async fn post(
        &self,
        body: String,
        modern: Option<(&str, Option<&str>)>,
    ) -> anyhow::Result<reqwest::Response> {
        let mut req = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body);
        if let Some((method, name)) = modern {
            req = req
                .header("mcp-protocol-version", &self.protocol)
                .header("mcp-method", method);
            if let Some(n) = name {
                req = req.header("mcp-name", n);
            }
        }
        if let Some(id) = &self.session_id {
            req = req
                .header("mcp-session-id", id)
                .header("mcp-protocol-version", &self.protocol);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("POST {}", self.url))?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            bail!("POST {} answered {status}: {text}", self.url);
        }
        Ok(resp)
    }
}

/// Read the whole body and decode the JSON-RPC reply in it, from JSON or from an SSE stream.
async fn decode<R: DeserializeOwned>(resp: reqwest::Response) -> anyhow::Result<Reply<R>> {
    let sse = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/event-stream"));
    let body = resp.bytes().await.context("reading the response body")?;
    if !sse {
        return serde_json::from_slice(&body).context("the reply is not JSON-RPC");
    }
    let data = sse_reply(&body).ok_or_else(|| {
        anyhow!(
            "no JSON-RPC reply in the SSE stream: {:?}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        )
    })?;
    serde_json::from_slice(&data).context("the SSE reply is not JSON-RPC")
}

/// The data of the last non-empty SSE event: a request's stream ends with its response, after any
/// notifications; priming events carry no data. One-line data (the usual case) is not copied.
fn sse_reply(body: &[u8]) -> Option<Cow<'_, [u8]>> {
    let mut found = None;
    let mut event = SseData::None;
    for raw in body.split(|b| *b == b'\n') {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.is_empty() {
            if let Some(d) = std::mem::take(&mut event).finish() {
                found = Some(d);
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix(b"data:") {
            event.push(rest.strip_prefix(b" ").unwrap_or(rest));
        }
    }
    event.finish().or(found)
}

#[derive(Default)]
enum SseData<'a> {
    #[default]
    None,
    One(&'a [u8]),
    Many(Vec<u8>),
}

impl<'a> SseData<'a> {
    fn push(&mut self, line: &'a [u8]) {
        *self = match std::mem::take(self) {
            SseData::None => SseData::One(line),
            SseData::One(first) => SseData::Many([first, b"\n", line].concat()),
            SseData::Many(mut v) => {
                v.push(b'\n');
                v.extend_from_slice(line);
                SseData::Many(v)
            }
        };
    }

    /// The event's data if it holds a JSON object.
    fn finish(self) -> Option<Cow<'a, [u8]>> {
        let data = match self {
            SseData::None => return None,
            SseData::One(d) => Cow::Borrowed(d),
            SseData::Many(v) => Cow::Owned(v),
        };
        data.trim_ascii().starts_with(b"{").then_some(data)
    }
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Vec<u8>>>>>;

/// A session with a `fast-upstream stdio` child: a writer task batches requests onto its stdin,
/// a reader task hands each reply line to the waiting request by id.
pub struct StdioSession {
    tx: mpsc::Sender<Vec<u8>>,
    pending: Pending,
    next_id: AtomicU64,
    proc: Proc,
}

#[derive(Deserialize)]
struct IdOnly {
    id: Option<u64>,
}

impl StdioSession {
    pub async fn open(
        program: &std::path::Path,
        args: &[&str],
        log: std::path::PathBuf,
    ) -> anyhow::Result<Self> {
        let err = std::fs::File::create(&log)?;
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        let stdin = tokio::process::ChildStdin::from_std(child.stdin.take().context("stdin")?)?;
        let stdout = tokio::process::ChildStdout::from_std(child.stdout.take().context("stdout")?)?;
        let proc = Proc::adopt("fast-upstream stdio (direct)", child, log);
        let (tx, rx) = mpsc::channel::<Vec<u8>>(1024);
        let pending: Pending = Arc::default();
        tokio::spawn(write_loop(stdin, rx));
        tokio::spawn(read_loop(stdout, pending.clone()));
        let s = Self {
            tx,
            pending,
            next_id: AtomicU64::new(1),
            proc,
        };
        let params = format!(
            r#"{{"protocolVersion":"{PROTOCOL_VERSION}","capabilities":{{}},"clientInfo":{{"name":"manifold-bench","version":"{}"}}}}"#,
            env!("CARGO_PKG_VERSION")
        );
        s.request::<Value>("initialize", &params)
            .await?
            .into_result()?;
        s.tx.send(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#.to_vec())
            .await
            .map_err(|_| anyhow!("the stdio upstream closed its input"))?;
        Ok(s)
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub async fn request<R: DeserializeOwned>(
        &self,
        method: &str,
        params: &str,
    ) -> anyhow::Result<Reply<R>> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("pending lock").insert(id, tx);
        let line =
            format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"{method}","params":{params}}}"#);
        self.tx
            .send(line.into_bytes())
            .await
            .map_err(|_| anyhow!("the stdio upstream closed its input"))?;
        let bytes = tokio::time::timeout(REQUEST_TIMEOUT, rx)
            .await
            .map_err(|_| anyhow!("no stdio reply within {REQUEST_TIMEOUT:?}"))?
            .map_err(|_| anyhow!("the stdio upstream closed its output"))?;
        serde_json::from_slice(&bytes).context("the stdio reply is not JSON-RPC")
    }
}

async fn write_loop(mut stdin: tokio::process::ChildStdin, mut rx: mpsc::Receiver<Vec<u8>>) {
    let mut buf = Vec::with_capacity(64 * 1024);
    while let Some(first) = rx.recv().await {
        buf.clear();
        buf.extend_from_slice(&first);
        buf.push(b'\n');
        while let Ok(more) = rx.try_recv() {
            buf.extend_from_slice(&more);
            buf.push(b'\n');
        }
        if stdin.write_all(&buf).await.is_err() {
            return;
        }
    }
}

async fn read_loop(stdout: tokio::process::ChildStdout, pending: Pending) {
    let mut reader = BufReader::with_capacity(256 * 1024, stdout);
    loop {
        let mut line = Vec::new();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let Ok(IdOnly { id: Some(id) }) = serde_json::from_slice::<IdOnly>(&line) else {
            continue;
        };
        if let Some(tx) = pending.lock().expect("pending lock").remove(&id) {
            let _ = tx.send(line);
        }
    }
    // Fail every waiting request at once instead of letting it time out.
    pending.lock().expect("pending lock").clear();
}
