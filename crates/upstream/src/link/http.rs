//! The Streamable HTTP half of a link: its own POSTs in the session rmcp's transport opened
//! (whose id and version `Recording` notes), each answered with JSON or an event stream; the
//! messages on such a stream that are not the answer are handed to rmcp (`Injecting`).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyDataStream, BodyExt, Full, Limited};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use rmcp::{
    model::{ClientJsonRpcMessage, ServerJsonRpcMessage},
    transport::{
        Transport,
        streamable_http_client::{
            StreamableHttpClient, StreamableHttpError, StreamableHttpPostResponse,
            StreamableHttpResponseLimits,
        },
    },
};
use tokio::sync::mpsc;

use super::{Io, Link, Taken};

/// Largest upstream answer a POST reads (the stdio line cap applies to stdio).
const MAX_HTTP_BODY: usize = 64 * 1024 * 1024;

/// How the link's POSTs are sent: straight on hyper's pooled HTTP/1 client for `http://`
/// upstreams (the gateway's hot path: no per-request URL parsing or client layers), through
/// reqwest (TLS) for `https://` ones.
pub(crate) enum Sender {
    Plain(Client<HttpConnector, Full<Bytes>>),
    Tls(reqwest::Client),
}

impl Sender {
    /// The sender for `uri`, with the connector's connect timeout; `tls` is the reqwest client
    /// used for `https://` (and by rmcp's own transport).
    pub fn for_uri(uri: &http::Uri, tls: reqwest::Client, connect_timeout: Duration) -> Self {
        if uri.scheme_str() == Some("https") {
            return Sender::Tls(tls);
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        connector.enforce_http(true);
        // `Host` is one of the fixed headers (`HttpOut::fixed_headers`), not rebuilt per call.
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .set_host(false)
            .build(connector);
        Sender::Plain(client)
    }
}

pub(crate) struct HttpOut {
    pub sender: Sender,
    /// Parsed once: parsing per request showed up in profiles.
    pub uri: http::Uri,
    /// Every POST's fixed headers (Accept, Content-Type, the connector's own), built once.
    pub headers: http::HeaderMap,
    pub negotiated: Arc<Mutex<Negotiated>>,
    /// Messages that arrive on a POST's event stream but are not its answer (progress, sampling
    /// requests, logs) go to rmcp as if its own transport had received them.
    pub inject: mpsc::Sender<ServerJsonRpcMessage>,
}

/// What rmcp's Streamable HTTP transport negotiated: the session and protocol version, as
/// header values.
#[derive(Default)]
pub(crate) struct Negotiated {
    session: Option<http::HeaderValue>,
    version: Option<http::HeaderValue>,
}

/// `Host` for `uri`: its host, and its port unless that is the scheme's default.
fn host_header(uri: &http::Uri) -> Option<http::HeaderValue> {
    let host = uri.host()?;
    let default = match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    };
    let value = match uri.port_u16() {
        Some(port) if port != default => format!("{host}:{port}"),
        _ => host.to_owned(),
    };
    http::HeaderValue::from_str(&value).ok()
}

const SESSION_ID: http::HeaderName = http::HeaderName::from_static("mcp-session-id");
const PROTOCOL_VERSION: http::HeaderName = http::HeaderName::from_static("mcp-protocol-version");
const MCP_METHOD: http::HeaderName = http::HeaderName::from_static("mcp-method");
const MCP_NAME: http::HeaderName = http::HeaderName::from_static("mcp-name");

impl HttpOut {
    /// The fixed headers of every POST to `uri`: the connector's own, then the transport's
    /// (for `http://`, `Host` unless the connector sets its own; reqwest sets it for `https://`).
    pub fn fixed_headers(
        uri: &http::Uri,
        own: &HashMap<http::HeaderName, http::HeaderValue>,
    ) -> http::HeaderMap {
        let mut h = http::HeaderMap::with_capacity(own.len() + 3);
        for (k, v) in own {
            h.insert(k.clone(), v.clone());
        }
        if let Some(host) = host_header(uri).filter(|_| uri.scheme_str() != Some("https")) {
            h.entry(http::header::HOST).or_insert(host);
        }
        h.insert(
            http::header::ACCEPT,
            http::HeaderValue::from_static("application/json, text/event-stream"),
        );
        h.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        h
    }

    /// The exchange that carries `body` (request `id`, or a notification), for the caller to
    /// drive.
    pub(super) fn exchange(
        &self,
        link: &Arc<Link>,
        body: Vec<u8>,
        id: Option<u64>,
        route: Option<(&str, Option<&str>)>,
        extra: Vec<(String, String)>,
    ) -> Io {
        let (session, version) = {
            let s = self.negotiated.lock().expect("negotiated lock");
            (s.session.clone(), s.version.clone())
        };
        let modern = link.is_modern();
        let mut headers = self.headers.clone();
        if let Some(s) = session {
            headers.insert(SESSION_ID, s);
        }
        let mut add = |k: http::HeaderName, v: &str| match http::HeaderValue::try_from(v) {
            Ok(v) => {
                headers.insert(k, v);
            }
            Err(_) => tracing::debug!(header = %k, "left out a header value that is not valid"),
        };
        if modern && let Some((method, name)) = route {
            add(MCP_METHOD, method);
            if let Some(n) = name {
                add(MCP_NAME, n);
            }
        }
        for (k, v) in &extra {
            match http::HeaderName::try_from(k.as_str()) {
                Ok(k) => add(k, v),
                Err(_) => tracing::debug!(header = %k, "left out a header name that is not valid"),
            }
        }
        if modern {
            headers.insert(
                PROTOCOL_VERSION,
                http::HeaderValue::from_static("2026-07-28"),
            );
        } else if let Some(v) = version {
            headers.insert(PROTOCOL_VERSION, v);
        }
        let mut req = http::Request::new(Bytes::from(body));
        *req.method_mut() = http::Method::POST;
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = headers;
        let send = match &self.sender {
            Sender::Plain(c) => Sending::Plain(c.request(req.map(Full::new))),
            Sender::Tls(c) => Sending::Tls(c.clone(), Box::new(req)),
        };
        let link = link.clone();
        let inject = self.inject.clone();
        Box::pin(async move {
            let outcome = match send {
                Sending::Plain(f) => match f.await {
                    Ok(resp) => post(&link, resp, inject, id).await,
                    Err(e) => Err(e.to_string()),
                },
                Sending::Tls(client, req) => {
                    match reqwest::Request::try_from((*req).map(reqwest::Body::from)) {
                        Ok(req) => match client.execute(req).await {
                            Ok(resp) => post(&link, http::Response::from(resp), inject, id).await,
                            Err(e) => Err(e.to_string()),
                        },
                        Err(e) => Err(e.to_string()),
                    }
                }
            };
            link.unanswered(id, outcome);
        })
    }
}

enum Sending {
    Plain(hyper_util::client::legacy::ResponseFuture),
    Tls(reqwest::Client, Box<http::Request<Bytes>>),
}

/// One POST's answer: a JSON body, or an event stream that carries the answer and perhaps
/// messages about it (handed to rmcp).
async fn post<B>(
    link: &Link,
    resp: http::Response<B>,
    inject: mpsc::Sender<ServerJsonRpcMessage>,
    id: Option<u64>,
) -> Result<(), String>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display + Send + Sync + std::error::Error + 'static,
{
    let status = resp.status();
    if status == http::StatusCode::ACCEPTED {
        return Ok(());
    }
    let is_sse = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let body = resp.into_body();
    if !status.is_success() || !is_sse {
        let bytes = Limited::new(body, MAX_HTTP_BODY)
            .collect()
            .await
            .map_err(|e| format!("reading the upstream's answer failed: {e}"))?
            .to_bytes();
        let text = String::from_utf8_lossy(&bytes);
        if !status.is_success() {
            // A JSON-RPC error body for our id fails that request with the upstream's error.
            if !link.intercept(&text) {
                tracing::debug!(%status, body = %link.secrets.scrub_preview(&text, 400), "upstream POST rejected");
            }
            return Err(format!("the upstream answered HTTP {status}"));
        }
        if !link.intercept(&text) {
            return Err(format!(
                "unexpected answer: {}",
                link.secrets.scrub_preview(&text, 200)
            ));
        }
        return Ok(());
    }
    let mut events = sse_stream::SseStream::from_byte_stream(BodyDataStream::new(body));
    let mut bad = 0u32;
    while let Some(ev) = events.next().await {
        // A malformed event (invalid UTF-8, say) is dropped like a garbage stdout line;
        // a stream that yields nothing else is given up.
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) if bad < 64 => {
                bad += 1;
                tracing::warn!(error = %e, "dropped a malformed upstream event");
                continue;
            }
            Err(e) => return Err(e.to_string()),
        };
        let Some(data) = ev.data else { continue };
        if data.len() > MAX_HTTP_BODY {
            return Err("an upstream event is too large".into());
        }
        match link.take(&data) {
            Taken::Answer => return Ok(()),
            Taken::Event => continue,
            Taken::No => {}
        }
        match serde_json::from_str::<ServerJsonRpcMessage>(&data) {
            Ok(msg) => {
                // A request on this exchange's stream is about this request: note that, so it
                // goes to this call's client even when several have calls in flight.
                if let (ServerJsonRpcMessage::Request(r), Some(id)) = (&msg, id)
                    && matches!(
                        r.request,
                        rmcp::model::ServerRequest::CreateMessageRequest(_)
                            | rmcp::model::ServerRequest::ElicitRequest(_)
                            | rmcp::model::ServerRequest::ListRootsRequest(_)
                    )
                {
                    link.note_origin(r.id.clone(), id);
                }
                if inject.send(msg).await.is_err() {
                    return Err("the connection closed".into());
                }
            }
            Err(e) => tracing::debug!(error = %e, "dropped an undecodable upstream event"),
        }
    }
    Ok(())
}

/// The reqwest client rmcp's Streamable HTTP transport uses, noting the session id and
/// protocol version it negotiates, so the link's requests can join that session.
#[derive(Clone)]
pub(crate) struct Recording {
    pub inner: reqwest::Client,
    pub negotiated: Arc<Mutex<Negotiated>>,
    /// rmcp logs its transport's errors: they leave here without the URL (reqwest's carry
    /// it, query and all) and with the upstream's text scrubbed.
    pub secrets: manifold_config::Secrets,
}

impl Recording {
    fn clean(&self, e: StreamableHttpError<reqwest::Error>) -> StreamableHttpError<reqwest::Error> {
        match e {
            StreamableHttpError::Client(e) => StreamableHttpError::Client(e.without_url()),
            StreamableHttpError::UnexpectedServerResponse(text) => {
                StreamableHttpError::UnexpectedServerResponse(
                    self.secrets.scrub_preview(&text, 400).into(),
                )
            }
            other => other,
        }
    }
}

impl Recording {
    fn note(
        &self,
        session: &Option<Arc<str>>,
        headers: &HashMap<http::HeaderName, http::HeaderValue>,
    ) {
        let mut s = self.negotiated.lock().expect("negotiated lock");
        if let Some(id) = session
            && let Ok(v) = http::HeaderValue::from_str(id)
        {
            s.session = Some(v);
        }
        if let Some(v) = headers.get("mcp-protocol-version") {
            s.version = Some(v.clone());
        }
    }
}

impl StreamableHttpClient for Recording {
    type Error = reqwest::Error;

    fn post_message(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<http::HeaderName, http::HeaderValue>,
    ) -> impl Future<Output = Result<StreamableHttpPostResponse, StreamableHttpError<Self::Error>>>
    + Send
    + '_ {
        self.note(&session_id, &custom_headers);
        async move {
            self.inner
                .post_message(uri, message, session_id, auth_header, custom_headers)
                .await
                .map_err(|e| self.clean(e))
        }
    }

    fn post_message_with_response_limits(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<http::HeaderName, http::HeaderValue>,
        limits: StreamableHttpResponseLimits,
    ) -> impl Future<Output = Result<StreamableHttpPostResponse, StreamableHttpError<Self::Error>>>
    + Send
    + '_ {
        self.note(&session_id, &custom_headers);
        async move {
            self.inner
                .post_message_with_response_limits(
                    uri,
                    message,
                    session_id,
                    auth_header,
                    custom_headers,
                    limits,
                )
                .await
                .map_err(|e| self.clean(e))
        }
    }

    async fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        auth_header: Option<String>,
        custom_headers: HashMap<http::HeaderName, http::HeaderValue>,
    ) -> Result<(), StreamableHttpError<Self::Error>> {
        self.inner
            .delete_session(uri, session_id, auth_header, custom_headers)
            .await
            .map_err(|e| self.clean(e))
    }

    async fn get_stream(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<http::HeaderName, http::HeaderValue>,
    ) -> Result<
        futures::stream::BoxStream<'static, Result<sse_stream::Sse, sse_stream::Error>>,
        StreamableHttpError<Self::Error>,
    > {
        self.inner
            .get_stream(uri, session_id, last_event_id, auth_header, custom_headers)
            .await
            .map_err(|e| self.clean(e))
    }

    async fn get_stream_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<http::HeaderName, http::HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<
        futures::stream::BoxStream<'static, Result<sse_stream::Sse, sse_stream::Error>>,
        StreamableHttpError<Self::Error>,
    > {
        self.inner
            .get_stream_with_max_sse_event_size(
                uri,
                session_id,
                last_event_id,
                auth_header,
                custom_headers,
                max_sse_event_size,
            )
            .await
            .map_err(|e| self.clean(e))
    }
}

/// rmcp's transport plus the messages raw POSTs hand over (see `HttpOut::inject`).
pub(crate) struct Injecting<T> {
    pub inner: T,
    pub injected: mpsc::Receiver<ServerJsonRpcMessage>,
}

impl<T> Transport<rmcp::RoleClient> for Injecting<T>
where
    T: Transport<rmcp::RoleClient>,
{
    type Error = T::Error;

    fn send(
        &mut self,
        item: ClientJsonRpcMessage,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        self.inner.send(item)
    }

    async fn receive(&mut self) -> Option<ServerJsonRpcMessage> {
        tokio::select! {
            m = self.inner.receive() => m,
            Some(m) = self.injected.recv() => Some(m),
        }
    }

    fn close(&mut self) -> impl Future<Output = Result<(), Self::Error>> + Send {
        self.inner.close()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body_util::StreamBody;

    use super::*;
    use crate::link::Out;

    #[test]
    fn the_host_header_is_built_once_as_hyper_would_and_a_connectors_own_wins() {
        let host = |url: &str, own: &[(&str, &str)]| {
            let own = own
                .iter()
                .map(|(k, v)| (k.parse().unwrap(), v.parse().unwrap()))
                .collect();
            HttpOut::fixed_headers(&url.parse().unwrap(), &own)
                .get(http::header::HOST)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        assert_eq!(
            host("http://127.0.0.1:9100/mcp", &[]).as_deref(),
            Some("127.0.0.1:9100")
        );
        assert_eq!(
            host("http://up.example/mcp", &[]).as_deref(),
            Some("up.example")
        );
        assert_eq!(
            host("http://up.example:80/mcp", &[]).as_deref(),
            Some("up.example")
        );
        assert_eq!(
            host("http://[::1]:8080/mcp", &[]).as_deref(),
            Some("[::1]:8080")
        );
        assert_eq!(
            host("http://127.0.0.1:9100/mcp", &[("host", "virtual.example")]).as_deref(),
            Some("virtual.example")
        );
        assert_eq!(host("https://up.example/mcp", &[]), None, "reqwest sets it");
    }

    /// Whatever an upstream's event stream holds, split wherever, reading it never panics or
    /// hangs, and everything handed to rmcp is a JSON-RPC message.
    #[test]
    fn fuzz_the_event_stream_reader() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let target = manifold_fuzz::Target {
            name: "sse",
            dictionary: &[
                b"data: ",
                b"event: message\n",
                b"id: 7\n",
                b"retry: 5\n",
                b": comment\n",
                b"\n\n",
                b"\r\n",
                b"\r",
                b"{\"jsonrpc\":\"2.0\",\"id\":\"mf-1\",\"result\":{}}",
                b"\"mf-",
                b"\xff",
            ],
            iterations: 20_000,
        };
        manifold_fuzz::run(&target, |bytes| {
            rt.block_on(async {
                let (tx, _rx) = mpsc::channel(1024);
                let link = Link::new(Out::Lines(tx), manifold_config::Secrets::default());
                let (inject, mut injected) = mpsc::channel(4096);
                // Pieces of 1 to 17 bytes, by the input's own bytes.
                let mut chunks = Vec::new();
                let mut rest = bytes;
                while !rest.is_empty() {
                    let n = (usize::from(rest[0]) % 17 + 1).min(rest.len());
                    chunks.push(Ok::<_, Infallible>(http_body::Frame::data(
                        Bytes::copy_from_slice(&rest[..n]),
                    )));
                    rest = &rest[n..];
                }
                let body = StreamBody::new(futures::stream::iter(chunks));
                let resp = http::Response::builder()
                    .status(200)
                    .header(http::header::CONTENT_TYPE, "text/event-stream")
                    .body(body)
                    .unwrap();
                let r = tokio::time::timeout(
                    Duration::from_secs(5),
                    post(&link, resp, inject, Some(1)),
                )
                .await
                .expect("a finite stream is read to its end");
                // An answer for id 1 (which nobody awaits here) or the end: both are fine; an
                // error must say what went wrong.
                if let Err(e) = r {
                    assert!(!e.is_empty());
                }
                while let Ok(msg) = injected.try_recv() {
                    // A typed message: it serialises back as JSON-RPC.
                    let text = serde_json::to_string(&msg).unwrap();
                    assert!(text.contains("\"jsonrpc\":\"2.0\""), "{text}");
                }
            });
        });
    }
}
