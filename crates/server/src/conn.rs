//! Accepting client connections: a cap on how many are open at once (beyond it a connection
//! gets a short 503 and is closed, with a log line), and per connection a deadline for a
//! request's headers, an idle timeout, and the peer's address (`Peer`) for the routes that are
//! for the local machine only. Slow, idle and half-open clients cannot hold descriptors.

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{Router, body::Body};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// The TCP peer of a request (a request extension).
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

/// Where a request from `peer` comes from: `peer` itself, unless it is a trusted proxy
/// (`gateway.trusted_proxies`); then the rightmost address of `X-Forwarded-For` that is not a
/// trusted proxy (each proxy appends the address it saw, so what is left of it came from the
/// client and proves nothing). An entry that is not an address ends the walk at the hop to its
/// right; no usable entry leaves the proxy's own address.
pub fn client_address(
    peer: std::net::IpAddr,
    headers: &http::HeaderMap,
    settings: &manifold_config::GatewaySettings,
) -> std::net::IpAddr {
    let mut at = peer.to_canonical();
    if !settings.trusts(at) {
        return at;
    }
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    for hop in hops.iter().rev() {
        let Ok(ip) = hop.parse::<std::net::IpAddr>() else {
            break;
        };
        at = ip.to_canonical();
        if !settings.trusts(at) {
            break;
        }
    }
    at
}

/// The connection settings (`gateway.max_connections` and the timeouts).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Limits {
    pub fn from_config(g: &manifold_config::GatewaySettings) -> Self {
        Self {
            max_connections: g.max_connections.unwrap_or_else(default_max_connections),
            header_read_timeout: g.header_read_timeout,
            idle_timeout: g.idle_connection_timeout,
        }
    }
}

/// Three quarters of the open-file limit left after 64 for connectors, logs and the config
/// (at least 16, at most 10 000): the cap is reached before descriptors run out.
pub fn default_max_connections() -> usize {
    let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024);
    let soft = usize::try_from(soft).unwrap_or(usize::MAX);
    (soft.saturating_sub(64) / 4 * 3).clamp(16, 10_000)
}

/// The open connections, for the shutdown drain.
#[derive(Clone)]
pub(crate) struct Connections {
    open: Arc<Semaphore>,
    max: usize,
    /// Cancelled when the gateway stops: connections finish their request and close.
    pub closing: CancellationToken,
}

impl Connections {
    pub fn new(max: usize) -> Self {
        Self {
            open: Arc::new(Semaphore::new(max)),
            max,
            closing: CancellationToken::new(),
        }
    }

    pub fn count(&self) -> usize {
        self.max - self.open.available_permits()
    }

    /// Resolves when every connection has closed.
    pub async fn closed(&self) {
        let _all = self
            .open
            .acquire_many(u32::try_from(self.max).unwrap_or(u32::MAX))
            .await;
    }
}

/// Accept connections until `stop` is cancelled, serving each with `app`.
pub(crate) async fn accept(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    conns: Connections,
    stop: CancellationToken,
) {
    let mut refused = Refusals::default();
    let turning_away = Arc::new(Semaphore::new(64));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.cancelled() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors (or a connection reset before it was accepted): wait a
                // little rather than spin, and keep serving the connections already open.
                if matches!(
                    e.raw_os_error(),
                    Some(nix::libc::EMFILE | nix::libc::ENFILE)
                ) {
                    refused.note(format_args!(
                        "cannot accept a connection: out of file descriptors ({e}); raise `ulimit -n` or lower gateway.max_connections ({})",
                        conns.max
                    ));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                continue;
            }
        };
        let Ok(permit) = conns.open.clone().try_acquire_owned() else {
            refused.note(format_args!(
                "refused a connection from {peer}: {} connections are open, the limit (gateway.max_connections); raise it, or find the client holding them",
                conns.max
            ));
            // A few at a time: a flood beyond the cap is closed at once instead.
            if let Ok(slot) = turning_away.clone().try_acquire_owned() {
                tokio::spawn(async move {
                    turn_away(tcp).await;
                    drop(slot);
                });
            }
            continue;
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let app = app.clone();
        let closing = conns.closing.clone();
        tokio::spawn(async move {
            serve_connection(tcp, peer, app, limits, closing).await;
            drop(permit);
        });
    }
}

/// Log lines about refused connections, at most one per 10 s (with how many were refused).
#[derive(Default)]
pub(crate) struct Refusals {
    last: Option<Instant>,
    since: u64,
}

impl Refusals {
    pub fn note(&mut self, what: std::fmt::Arguments<'_>) {
        self.since += 1;
        if self
            .last
            .is_some_and(|t| t.elapsed() < Duration::from_secs(10))
        {
            return;
        }
        tracing::warn!(refused = self.since, "{what}");
        self.last = Some(Instant::now());
        self.since = 0;
    }
}

/// A connection over the cap: a 503 that says why, then closed, all within a second. The
/// request's head is read before the answer is written and the rest is drained after it:
/// closing with it unread would reset the connection and lose the answer.
async fn turn_away(mut tcp: TcpStream) {
    use tokio::io::AsyncReadExt;
    const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\nContent-Type: text/plain\r\nContent-Length: 62\r\n\r\nService Unavailable: too many open connections; retry shortly\n";
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        // Answer the request once its head has arrived (an answer sent before the client has
        // written its request reaches some clients as a broken connection), then drain what
        // else it sends, so closing does not reset the connection under the answer.
        let mut head = Vec::with_capacity(1024);
        let mut sink = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
            let n = tcp.read(&mut sink).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&sink[..n]);
        }
        tcp.write_all(BUSY).await?;
        tcp.shutdown().await?;
        while tcp.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// One connection: HTTP/1 with the app, closed when its headers are late, when it is idle, or
/// (after its current request) when the gateway stops.
async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: Limits,
    closing: CancellationToken,
) {
    let watch = Arc::new(Watch::new());
    let io = TokioIo::new(Watched {
        io: tcp,
        watch: watch.clone(),
    });
    let w = watch.clone();
    let service = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
        let active = w.request();
        req.extensions_mut().insert(Peer(peer));
        let app = app.clone();
        async move {
            let resp = app.oneshot(req).await?;
            Ok::<_, std::convert::Infallible>(resp.map(|body| Tracked {
                inner: body,
                _active: active,
            }))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    // One timer per connection, re-armed only when it fires: requests never touch it.
    let mut check = std::pin::pin!(tokio::time::sleep(limits.check_every()));
    let mut stopping = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "client connection ended with an error");
                }
                return;
            }
            _ = check.as_mut() => match watch.check(&limits) {
                Verdict::Close(why) => {
                    tracing::debug!(%peer, "closed a client connection: {why}");
                    return;
                }
                Verdict::Recheck(at) => check.as_mut().reset(at.into()),
            },
            _ = closing.cancelled(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

impl Limits {
    /// How often a connection is looked at when no deadline is nearer.
    fn check_every(&self) -> Duration {
        self.header_read_timeout.min(self.idle_timeout)
    }
}

/// What a look at a connection found.
enum Verdict {
    Close(String),
    Recheck(Instant),
}

/// What a connection is doing, as its reads, writes and requests tell. Times are milliseconds
/// since `start`.
struct Watch {
    start: Instant,
    /// Requests between arrival and the end of their response body.
    active: AtomicU32,
    /// The last read or write, or the end of the last response.
    last_io: AtomicU64,
    /// The first byte read while no request was active (a request's headers are arriving);
    /// `NONE` when there is none.
    first_byte: AtomicU64,
}

const NONE: u64 = u64::MAX;

impl Watch {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            active: AtomicU32::new(0),
            last_io: AtomicU64::new(0),
            first_byte: AtomicU64::new(NONE),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(NONE - 1)
    }

    fn at(&self, ms: u64) -> Instant {
        self.start + Duration::from_millis(ms)
    }

    fn read(&self) {
        let now = self.now();
        self.last_io.store(now, Ordering::Relaxed);
        if self.active.load(Ordering::Acquire) == 0 {
            let _ =
                self.first_byte
                    .compare_exchange(NONE, now, Ordering::AcqRel, Ordering::Relaxed);
        }
    }

    fn wrote(&self) {
        self.last_io.store(self.now(), Ordering::Relaxed);
    }

    /// A request arrived: no deadline while it is served.
    fn request(self: &Arc<Self>) -> Active {
        self.active.fetch_add(1, Ordering::AcqRel);
        self.first_byte.store(NONE, Ordering::Release);
        Active(self.clone())
    }

    /// Close the connection now (late headers, idle too long), or when to look again: at the
    /// deadline in force, but no later than `check_every` from now, so that a request that
    /// starts arriving meanwhile has its header deadline enforced.
    fn check(&self, limits: &Limits) -> Verdict {
        let now = Instant::now();
        let soon = now + limits.check_every();
        if self.active.load(Ordering::Acquire) > 0 {
            return Verdict::Recheck(soon);
        }
        match self.first_byte.load(Ordering::Acquire) {
            NONE => {
                let deadline = self.at(self.last_io.load(Ordering::Relaxed)) + limits.idle_timeout;
                if now >= deadline {
                    Verdict::Close(format!(
                        "idle for {:?} (gateway.idle_connection_timeout)",
                        limits.idle_timeout
                    ))
                } else {
                    Verdict::Recheck(deadline.min(soon))
                }
            }
            t => {
                let deadline = self.at(t) + limits.header_read_timeout;
                if now >= deadline {
                    Verdict::Close(format!(
                        "its request headers did not arrive within {:?} (gateway.header_read_timeout)",
                        limits.header_read_timeout
                    ))
                } else {
                    Verdict::Recheck(deadline)
                }
            }
        }
    }
}

/// A request being served; dropped with its response body.
struct Active(Arc<Watch>);

impl Drop for Active {
    fn drop(&mut self) {
        let w = &self.0;
        w.last_io.store(w.now(), Ordering::Relaxed);
        w.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request active until it is finished or dropped.
struct Tracked {
    inner: Body,
    _active: Active,
}

impl http_body::Body for Tracked {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The socket, noting each read and write in the connection's `Watch`.
struct Watched {
    io: TcpStream,
    watch: Arc<Watch>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.watch.read();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.watch.wrote();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.watch.wrote();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(trusted: &str) -> manifold_config::GatewaySettings {
        let text = format!("[gateway]\ntrusted_proxies = {trusted}\n");
        manifold_config::Config::parse(&text, std::path::Path::new("/m.toml"), &|_: &str| None)
            .expect("a valid config")
            .gateway
    }

    #[test]
    fn the_client_address_is_the_first_hop_no_trusted_proxy_vouches_for() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let xff = |v: &[&str]| {
            let mut h = http::HeaderMap::new();
            for x in v {
                h.append("x-forwarded-for", x.parse().unwrap());
            }
            h
        };
        let none = settings("[]");
        let proxies = settings(r#"["127.0.0.1", "10.0.0.0/8"]"#);
        // Without trusted proxies the header is ignored: anyone can write it.
        assert_eq!(
            client_address(ip("127.0.0.1"), &xff(&["1.2.3.4"]), &none),
            ip("127.0.0.1")
        );
        // From a trusted proxy: the address it saw.
        assert_eq!(
            client_address(ip("127.0.0.1"), &xff(&["1.2.3.4"]), &proxies),
            ip("1.2.3.4")
        );
        // A client's own X-Forwarded-For is left of what the proxies appended: not believed.
        let forged = xff(&["10.9.9.9, 203.0.113.7, 10.0.0.2"]);
        assert_eq!(
            client_address(ip("10.0.0.1"), &forged, &proxies),
            ip("203.0.113.7")
        );
        // Several headers are one list, in order.
        let split = xff(&["198.51.100.1", "10.0.0.3"]);
        assert_eq!(
            client_address(ip("10.0.0.1"), &split, &proxies),
            ip("198.51.100.1")
        );
        // Not from a trusted proxy: the peer, whatever it claims.
        assert_eq!(
            client_address(ip("192.0.2.1"), &xff(&["10.0.0.1"]), &proxies),
            ip("192.0.2.1")
        );
        // Garbage stops the walk at the last good hop; no header leaves the proxy.
        let bad = xff(&["unknown, 10.0.0.7"]);
        assert_eq!(
            client_address(ip("10.0.0.1"), &bad, &proxies),
            ip("10.0.0.7")
        );
        assert_eq!(
            client_address(ip("10.0.0.1"), &http::HeaderMap::new(), &proxies),
            ip("10.0.0.1")
        );
        // An IPv4 peer on an IPv6 socket is itself.
        assert_eq!(
            client_address(ip("::ffff:127.0.0.1"), &xff(&["::ffff:1.2.3.4"]), &proxies),
            ip("1.2.3.4")
        );
    }

    fn limits() -> Limits {
        Limits {
            max_connections: 4,
            header_read_timeout: Duration::from_millis(100),
            idle_timeout: Duration::from_millis(300),
        }
    }

    fn recheck_at(v: Verdict) -> Instant {
        match v {
            Verdict::Recheck(at) => at,
            Verdict::Close(why) => panic!("closed: {why}"),
        }
    }

    #[test]
    fn deadlines_follow_what_the_connection_does() {
        let w = Arc::new(Watch::new());
        let l = limits();
        // Fresh: looked at again within the header timeout (nearer than the idle deadline).
        let first = recheck_at(w.check(&l));
        assert!(first <= Instant::now() + l.header_read_timeout);
        // A first byte: the header deadline, measured from it.
        w.read();
        let header = recheck_at(w.check(&l));
        assert!(header <= w.at(w.now()) + l.header_read_timeout);
        // A request: no deadline while it is served; body bytes start none.
        let active = w.request();
        w.read();
        assert_eq!(w.first_byte.load(Ordering::Relaxed), NONE);
        std::thread::sleep(l.idle_timeout + Duration::from_millis(50));
        recheck_at(w.check(&l));
        drop(active);
        // Idle from the end of the response: not yet expired, then expired.
        recheck_at(w.check(&l));
        std::thread::sleep(l.idle_timeout + Duration::from_millis(50));
        assert!(
            matches!(w.check(&l), Verdict::Close(why) if why.contains("idle_connection_timeout"))
        );
        // Late headers.
        let w = Arc::new(Watch::new());
        w.read();
        std::thread::sleep(l.header_read_timeout + Duration::from_millis(50));
        assert!(matches!(w.check(&l), Verdict::Close(why) if why.contains("header_read_timeout")));
    }

    #[test]
    fn the_default_cap_leaves_descriptors_spare() {
        let n = default_max_connections();
        assert!((16..=10_000).contains(&n));
    }
}
