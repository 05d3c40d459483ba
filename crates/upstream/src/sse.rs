//! The legacy HTTP+SSE transport (MCP 2024-11-05) for servers that still use it: a GET opens an
//! event stream whose first `endpoint` event names the URL that client messages are POSTed to.

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures::{StreamExt, channel::mpsc};
use manifold_config::{Secrets, redact_url};
use rmcp::{
    RoleClient,
    service::{RxJsonRpcMessage, TxJsonRpcMessage},
    transport::sink_stream::SinkStreamTransport,
};
use sse_stream::SseStream;

use crate::link::{Link, Out};

type Transport = SinkStreamTransport<
    mpsc::Sender<TxJsonRpcMessage<RoleClient>>,
    mpsc::Receiver<RxJsonRpcMessage<RoleClient>>,
>;

/// Largest accepted event; a bigger one ends the connection rather than exhausting memory.
const MAX_EVENT_BYTES: usize = 32 * 1024 * 1024;

pub async fn connect(
    client: reqwest::Client,
    url_with_secrets: &str,
    headers: HashMap<http::HeaderName, http::HeaderValue>,
    connect_timeout: Duration,
    secrets: Secrets,
) -> Result<(Transport, Arc<Link>), String> {
    // Messages show the URL without its credentials; reqwest's errors carry it whole.
    let shown = redact_url(url_with_secrets);
    let url = shown.as_str();
    let base =
        reqwest::Url::parse(url_with_secrets).map_err(|e| format!("invalid url {url:?}: {e}"))?;
    let mut req = client
        .get(base.clone())
        .header(http::header::ACCEPT, "text/event-stream");
    for (k, v) in &headers {
        req = req.header(k, v);
    }
    let resp = tokio::time::timeout(connect_timeout, req.send())
        .await
        .map_err(|_| format!("GET {url} (HTTP+SSE) timed out after {connect_timeout:?}"))?
        .map_err(|e| format!("GET {url} (HTTP+SSE) failed: {}", causes(e)))?;
    if !resp.status().is_success() {
        return Err(format!("GET {url} (HTTP+SSE) answered {}", resp.status()));
    }
    let mut events = SseStream::from_byte_stream(resp.bytes_stream());
    // The first event must be `endpoint`, naming where to POST (same origin only).
    let endpoint = loop {
        let next = tokio::time::timeout(connect_timeout, events.next())
            .await
            .map_err(|_| format!("{url} sent no `endpoint` event within {connect_timeout:?}"))?;
        match next {
            Some(Ok(ev)) if ev.event.as_deref() == Some("endpoint") => {
                let data = ev.data.unwrap_or_default();
                let ep = base
                    .join(data.trim())
                    .map_err(|e| format!("bad endpoint {:?}: {e}", secrets.scrub(&data)))?;
                if ep.origin() != base.origin() {
                    return Err(format!(
                        "endpoint {} is on another origin than {url}; refusing",
                        redact_url(ep.as_str())
                    ));
                }
                break ep;
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(format!("reading the event stream failed: {e}")),
            None => {
                return Err(format!(
                    "{url} closed the event stream before sending `endpoint`"
                ));
            }
        }
    };
    let (mut in_tx, in_rx) = mpsc::channel::<RxJsonRpcMessage<RoleClient>>(64);
    let (raw_tx, mut raw_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(1024);
    let raw = Link::new(Out::Lines(raw_tx), secrets);
    let link = raw.clone();
    tokio::spawn(async move {
        while let Some(ev) = events.next().await {
            let Ok(ev) = ev else { break };
            if !matches!(ev.event.as_deref(), None | Some("message")) {
                continue;
            }
            let data = ev.data.unwrap_or_default();
            if data.len() > MAX_EVENT_BYTES {
                tracing::warn!(bytes = data.len(), "dropped an oversized HTTP+SSE event");
                continue;
            }
            if link.intercept(&data) {
                continue;
            }
            match serde_json::from_str(&data) {
                Ok(msg) => {
                    if futures::SinkExt::send(&mut in_tx, msg).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "dropped an HTTP+SSE event that is not a JSON-RPC message")
                }
            }
        }
        link.close();
    });
    let (out_tx, mut out_rx) = mpsc::channel::<TxJsonRpcMessage<RoleClient>>(64);
    tokio::spawn(async move {
        loop {
            let body = tokio::select! {
                m = out_rx.next() => match m {
                    Some(m) => serde_json::to_vec(&m).expect("a message serialises"),
                    None => break,
                },
                Some(b) = raw_rx.recv() => b,
            };
            let mut req = client
                .post(endpoint.clone())
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(body);
            for (k, v) in &headers {
                req = req.header(k, v);
            }
            match req.send().await {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => tracing::warn!(status = %r.status(), "HTTP+SSE POST was rejected"),
                Err(e) => tracing::warn!(error = %causes(e), "HTTP+SSE POST failed"),
            }
        }
    });
    Ok((SinkStreamTransport::new(out_tx, in_rx), raw))
}

/// A reqwest error and its causes ("error sending request: tcp connect error: Connection
/// refused"), without the URL it carries.
fn causes(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut out = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
