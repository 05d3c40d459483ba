//! Answering on the wire: one JSON body when nothing but the result goes back, an event stream
//! when messages about the request (progress, logs, requests to the client) must reach the
//! client first; long-lived streams (a session's GET stream, `subscriptions/listen`) with
//! keep-alives; and `Relay`, the client side of a call whose messages go on its response.

#![allow(deprecated)]

use std::{sync::Arc, time::Duration};

use axum::{
    body::{Body, Bytes},
    http::{StatusCode, header},
    response::Response,
};
use manifold_upstream::{Ask, BoxFut, Downstream};
use rmcp::model::{
    ClientCapabilities, ErrorData, LoggingLevel, LoggingMessageNotificationParam,
    ProgressNotificationParam,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    jsonrpc,
    session::{Session, severity},
};

/// Where messages about one request go before its result: its response stream.
pub(crate) type Outbox = mpsc::Sender<String>;

/// Messages about one request buffered before the sender waits.
pub(crate) const OUTBOX: usize = 64;

/// The last message of a response and its HTTP status (when it goes as a JSON body).
pub(crate) struct Final {
    pub message: String,
    pub status: StatusCode,
}

/// Answer one request: with the final message as a JSON body when nothing else had to go
/// first, else as an event stream carrying those messages and, last, the final one. The work
/// is polled here while the answer can still be a plain body; once a message must go first, a
/// task takes it over and feeds the stream. A client that goes away drops the work (which
/// cancels its upstream call).
pub(crate) async fn respond(
    work: impl Future<Output = Final> + Send + 'static,
    mut rx: mpsc::Receiver<String>,
) -> Response {
    let mut work = Box::pin(work);
    tokio::select! {
        biased;
        f = &mut work => {
            // Messages sent during the request's last step (a log just before the result)
            // must still go first: then the answer is a short event stream.
            let mut events = Vec::new();
            while let Ok(m) = rx.try_recv() {
                events.push(Ok::<_, std::convert::Infallible>(sse_event(&m)));
            }
            if events.is_empty() {
                return json_response(f.status, f.message);
            }
            events.push(Ok(sse_event(&f.message)));
            sse_response(Body::from_stream(futures::stream::iter(events)))
        }
        Some(first) = rx.recv() => {
            let (body_tx, body_rx) = mpsc::channel::<Result<Bytes, std::convert::Infallible>>(OUTBOX);
            tokio::spawn(async move {
                if body_tx.send(Ok(sse_event(&first))).await.is_err() {
                    return;
                }
                loop {
                    tokio::select! {
                        biased;
                        Some(m) = rx.recv() => {
                            if body_tx.send(Ok(sse_event(&m))).await.is_err() {
                                return;
                            }
                        }
                        f = &mut work => {
                            while let Ok(m) = rx.try_recv() {
                                if body_tx.send(Ok(sse_event(&m))).await.is_err() {
                                    return;
                                }
                            }
                            let _ = body_tx.send(Ok(sse_event(&f.message))).await;
                            return;
                        }
                        _ = body_tx.closed() => return,
                    }
                }
            });
            sse_response(Body::from_stream(receiver_stream(body_rx)))
        }
    }
}

/// A long-lived event stream: `first`, then what arrives on `rx`, with keep-alive comments
/// every `keep_alive`, until `end` is cancelled or every sender is gone; `on_close` runs when
/// the stream ends, however it ends.
pub(crate) fn live(
    first: Vec<String>,
    rx: mpsc::Receiver<String>,
    keep_alive: Duration,
    end: CancellationToken,
    on_close: impl FnOnce() + Send + 'static,
) -> Response {
    struct OnClose<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for OnClose<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    struct St<F: FnOnce()> {
        first: std::vec::IntoIter<String>,
        rx: mpsc::Receiver<String>,
        tick: tokio::time::Interval,
        end: CancellationToken,
        _close: OnClose<F>,
    }
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + keep_alive, keep_alive);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let st = St {
        first: first.into_iter(),
        rx,
        tick,
        end,
        _close: OnClose(Some(on_close)),
    };
    let stream = futures::stream::unfold(st, |mut st| async move {
        if let Some(m) = st.first.next() {
            return Some((Ok::<_, std::convert::Infallible>(sse_event(&m)), st));
        }
        tokio::select! {
            biased;
            _ = st.end.cancelled() => None,
            m = st.rx.recv() => m.map(|m| (Ok(sse_event(&m)), st)),
            _ = st.tick.tick() => Some((Ok(Bytes::from_static(b":\n\n")), st)),
        }
    });
    sse_response(Body::from_stream(stream))
}

fn receiver_stream<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

pub(crate) fn json_response(status: StatusCode, body: String) -> Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .expect("a valid response")
}

fn sse_response(body: Body) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-accel-buffering", "no")
        .body(body)
        .expect("a valid response")
}

/// One SSE event; a message with line breaks (pretty-printed upstream JSON) spans several
/// `data:` lines, which the client joins back with the same line breaks.
pub(crate) fn sse_event(msg: &str) -> Bytes {
    let mut out = String::with_capacity(msg.len() + 24);
    out.push_str("event: message\n");
    for line in msg.split('\n') {
        out.push_str("data: ");
        out.push_str(line.strip_suffix('\r').unwrap_or(line));
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

/// The client side of a call whose messages go on its own response: progress and log
/// messages, and — for a legacy session — the upstream's requests to the client, relayed with
/// ids `mf-s-N` and answered by the client's POST in the same session.
pub(crate) struct Relay {
    pub outbox: Outbox,
    /// The legacy session, if the request has one (a 2026-07-28 request has none: its
    /// upstream's questions go through the MRTR bridge instead).
    pub session: Option<Arc<Session>>,
    pub capabilities: ClientCapabilities,
    /// A 2026-07-28 request's own log level (a legacy session's is read from the session).
    pub level: Option<LoggingLevel>,
    /// How long a relayed request waits for the client's answer.
    pub answer_wait: Duration,
}

impl Relay {
    async fn send(&self, msg: String) {
        if let Err(mpsc::error::SendError(msg)) = self.outbox.send(msg).await
            && let Some(s) = &self.session
        {
            // The call's response has ended: the session's own stream is the other way in.
            s.notify(msg);
        }
    }

    async fn ask(&self, ask: Ask) -> Result<serde_json::Value, ErrorData> {
        let Some(session) = &self.session else {
            return Err(ErrorData::invalid_request(
                format!(
                    "{} cannot reach a 2026-07-28 client outside a tools/call, prompts/get or resources/read",
                    ask.kind.method()
                ),
                None,
            ));
        };
        let (id, rx, n) = session.relay();
        let msg = jsonrpc::request(&id, ask.kind.method(), &ask.params);
        self.send(msg).await;
        let r = tokio::select! {
            r = rx => r.map_err(|_| ErrorData::internal_error("the client's session has ended", None)),
            _ = session.closed.cancelled() => Err(ErrorData::internal_error("the client's session has ended", None)),
            _ = tokio::time::sleep(self.answer_wait) => Err(ErrorData::internal_error(
                format!("the client did not answer {} within {:?}", ask.kind.method(), self.answer_wait),
                None,
            )),
        };
        session.forget_relay(n);
        let raw = r??;
        serde_json::from_str(raw.get()).map_err(|e| {
            ErrorData::invalid_params(
                format!(
                    "the client's answer to {} is not valid: {e}",
                    ask.kind.method()
                ),
                None,
            )
        })
    }
}

impl Downstream for Relay {
    fn capabilities(&self) -> Option<ClientCapabilities> {
        Some(self.capabilities.clone())
    }

    fn progress(&self, p: ProgressNotificationParam) -> BoxFut<'_, ()> {
        Box::pin(self.send(jsonrpc::notification("notifications/progress", p)))
    }

    fn log(&self, p: LoggingMessageNotificationParam) -> BoxFut<'_, ()> {
        let wanted = match &self.session {
            Some(s) => s.wants(p.level),
            None => self
                .level
                .is_some_and(|min| severity(p.level) >= severity(min)),
        };
        Box::pin(async move {
            if wanted {
                self.send(jsonrpc::notification("notifications/message", p))
                    .await;
            }
        })
    }

    fn ask(&self, ask: Ask) -> BoxFut<'_, Result<serde_json::Value, ErrorData>> {
        Box::pin(Relay::ask(self, ask))
    }
}
