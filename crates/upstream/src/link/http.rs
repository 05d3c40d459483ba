//! The Streamable HTTP half of a link: its own POSTs in the session rmcp's transport opened
//! (whose id and version `Recording` notes), each answered with JSON or an event stream; the
//! messages on such a stream that are not the answer are handed to rmcp (`Injecting`).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use futures::StreamExt;
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

use super::{Io, Link, Taken, preview};

/// Largest upstream answer a POST reads (the stdio line cap applies to stdio).
const MAX_HTTP_BODY: usize = 64 * 1024 * 1024;

pub(crate) struct HttpOut {
    pub client: reqwest::Client,
    /// Parsed once: parsing per request showed up in profiles.
    pub url: reqwest::Url,
    pub headers: HashMap<http::HeaderName, http::HeaderValue>,
    pub negotiated: Arc<Mutex<Negotiated>>,
    /// Messages that arrive on a POST's event stream but are not its answer (progress, sampling
    /// requests, logs) go to rmcp as if its own transport had received them.
    pub inject: mpsc::Sender<ServerJsonRpcMessage>,
}

/// What rmcp's Streamable HTTP transport negotiated: the session and protocol version.
#[derive(Default)]
pub(crate) struct Negotiated {
    session: Option<Arc<str>>,
    version: Option<http::HeaderValue>,
}

impl HttpOut {
    /// The exchange that carries `body` (request `id`, or a notification), for the caller to
    /// drive.
    pub(super) fn exchange(
        &self,
        link: &Arc<Link>,
        body: Vec<u8>,
        id: Option<u64>,
        route: Option<(&str, Option<String>)>,
        extra: Vec<(String, String)>,
    ) -> Io {
        let (session, version) = {
            let s = self.negotiated.lock().expect("negotiated lock");
            (s.session.clone(), s.version.clone())
        };
        let modern = link.is_modern();
        let mut req = self
            .client
            .post(self.url.clone())
            .header(http::header::ACCEPT, "application/json, text/event-stream")
            .header(http::header::CONTENT_TYPE, "application/json");
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        if let Some(s) = session {
            req = req.header("mcp-session-id", &*s);
        }
        if modern && let Some((method, name)) = route {
            req = req.header("mcp-method", method);
            if let Some(n) = name {
                req = req.header("mcp-name", n);
            }
        }
        for (k, v) in extra {
            req = req.header(k, v);
        }
        if modern {
            req = req.header("mcp-protocol-version", "2026-07-28");
        } else if let Some(v) = version {
            req = req.header("mcp-protocol-version", v);
        }
        let link = link.clone();
        let inject = self.inject.clone();
        Box::pin(async move {
            let outcome = post(&link, req.body(body), inject, id).await;
            link.unanswered(id, outcome);
        })
    }
}

/// One POST and its answer: a JSON body, or an event stream that carries the answer and
/// perhaps messages about it (handed to rmcp).
async fn post(
    link: &Link,
    req: reqwest::RequestBuilder,
    inject: mpsc::Sender<ServerJsonRpcMessage>,
    id: Option<u64>,
) -> Result<(), String> {
    let resp = req.send().await.map_err(|e| e.to_string())?;
    let status = resp.status();
    if status == reqwest::StatusCode::ACCEPTED {
        return Ok(());
    }
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        // A JSON-RPC error body for our id fails that request with the upstream's error.
        if !link.intercept(&text) {
            tracing::debug!(%status, body = %preview(&text), "upstream POST rejected");
        }
        return Err(format!("the upstream answered HTTP {status}"));
    }
    let is_sse = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if !is_sse {
        if resp
            .content_length()
            .is_some_and(|n| n as usize > MAX_HTTP_BODY)
        {
            return Err("the upstream answer is too large".into());
        }
        let body = resp.bytes().await.map_err(|e| e.to_string())?;
        let text = std::str::from_utf8(&body).map_err(|e| e.to_string())?;
        if !link.intercept(text) {
            return Err(format!("unexpected answer: {}", preview(text)));
        }
        return Ok(());
    }
    let mut events = sse_stream::SseStream::from_byte_stream(resp.bytes_stream());
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
                // A request on this exchange's stream is about this raw request: note that,
                // so it goes to this call's client even when several have calls in flight.
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
}

impl Recording {
    fn note(
        &self,
        session: &Option<Arc<str>>,
        headers: &HashMap<http::HeaderName, http::HeaderValue>,
    ) {
        let mut s = self.negotiated.lock().expect("negotiated lock");
        if session.is_some() {
            s.session = session.clone();
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
        self.inner
            .post_message(uri, message, session_id, auth_header, custom_headers)
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
        self.inner.post_message_with_response_limits(
            uri,
            message,
            session_id,
            auth_header,
            custom_headers,
            limits,
        )
    }

    fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        auth_header: Option<String>,
        custom_headers: HashMap<http::HeaderName, http::HeaderValue>,
    ) -> impl Future<Output = Result<(), StreamableHttpError<Self::Error>>> + Send + '_ {
        self.inner
            .delete_session(uri, session_id, auth_header, custom_headers)
    }

    fn get_stream(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<http::HeaderName, http::HeaderValue>,
    ) -> impl Future<
        Output = Result<
            futures::stream::BoxStream<'static, Result<sse_stream::Sse, sse_stream::Error>>,
            StreamableHttpError<Self::Error>,
        >,
    > + Send
    + '_ {
        self.inner
            .get_stream(uri, session_id, last_event_id, auth_header, custom_headers)
    }

    fn get_stream_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<http::HeaderName, http::HeaderValue>,
        max_sse_event_size: usize,
    ) -> impl Future<
        Output = Result<
            futures::stream::BoxStream<'static, Result<sse_stream::Sse, sse_stream::Error>>,
            StreamableHttpError<Self::Error>,
        >,
    > + Send
    + '_ {
        self.inner.get_stream_with_max_sse_event_size(
            uri,
            session_id,
            last_event_id,
            auth_header,
            custom_headers,
            max_sse_event_size,
        )
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
