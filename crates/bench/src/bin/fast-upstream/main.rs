//! `fast-upstream`: a minimal, fast MCP server for benchmarks, on axum and serde_json without an
//! MCP SDK, so that the upstream's own cost stays small next to the gateway's. Streamable HTTP
//! (JSON responses, sessions via `Mcp-Session-Id`) or newline-delimited JSON-RPC on stdio.

mod mcp;

use std::{
    collections::HashSet,
    io::{BufRead, BufReader, BufWriter, Write},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
    serve::ListenerExt,
};
use clap::{Parser, Subcommand};

use mcp::{Message, Server};

const SESSION_HEADER: &str = "mcp-session-id";

#[derive(Parser)]
#[command(
    name = "fast-upstream",
    about = "A minimal, fast MCP server for benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
    /// Expose this many tools `tool_0..tool_{N-1}` besides `echo`.
    #[arg(long, global = true, default_value_t = 0)]
    tools: usize,
}

#[derive(Subcommand)]
enum Mode {
    /// Streamable HTTP at http://127.0.0.1:PORT/mcp; prints `listening URL` on stdout.
    Http {
        /// 0 picks a free port.
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Tokio worker threads (1 runs on the main thread).
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// Newline-delimited JSON-RPC on standard input and output; exits at end of input.
    Stdio,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let server = Server::new(cli.tools);
    match cli.mode {
        Mode::Http { port, threads } => {
            let rt = if threads <= 1 {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?
            } else {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(threads)
                    .enable_all()
                    .build()?
            };
            rt.block_on(http(server, port))
        }
        Mode::Stdio => stdio(&server),
    }
}

struct HttpState {
    server: Server,
    sessions: Mutex<HashSet<String>>,
    next_session: AtomicU64,
}

async fn http(server: Server, port: u16) -> anyhow::Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let state = Arc::new(HttpState {
        server,
        sessions: Mutex::new(HashSet::new()),
        next_session: AtomicU64::new(0),
    });
    let app = Router::new()
        .route("/mcp", post(post_mcp).delete(delete_mcp).get(get_mcp))
        .with_state(state);
    println!("listening http://{}/mcp", listener.local_addr()?);
    std::io::stdout().flush()?;
    // Replies are one write each, but a benchmark peer must never wait on Nagle's algorithm.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await?;
    Ok(())
}

async fn post_mcp(State(st): State<Arc<HttpState>>, headers: HeaderMap, body: Bytes) -> Response {
    let msg = match Message::parse(&body) {
        Ok(m) => m,
        Err(e) => {
            let text = mcp::error(
                &serde_json::Value::Null,
                -32700,
                &format!("parse error: {e}"),
            );
            return json_response(StatusCode::BAD_REQUEST, text);
        }
    };
    if msg.is_initialize() {
        let Some(text) = st.server.respond(&msg) else {
            return StatusCode::ACCEPTED.into_response();
        };
        let id = new_session_id(&st.next_session);
        st.sessions
            .lock()
            .expect("sessions lock")
            .insert(id.clone());
        let mut resp = json_response(StatusCode::OK, text);
        resp.headers_mut().insert(
            SESSION_HEADER,
            HeaderValue::from_str(&id).expect("hex is a valid header value"),
        );
        return resp;
    }
    if let Err(rejection) = session_check(&st, &headers) {
        return rejection.into_response();
    }
    match st.server.respond(&msg) {
        Some(text) => json_response(StatusCode::OK, text),
        None => StatusCode::ACCEPTED.into_response(),
    }
}

async fn delete_mcp(State(st): State<Arc<HttpState>>, headers: HeaderMap) -> Response {
    if let Err(rejection) = session_check(&st, &headers) {
        return rejection.into_response();
    }
    let id = headers
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    st.sessions.lock().expect("sessions lock").remove(id);
    StatusCode::OK.into_response()
}

/// No server-initiated stream: clients treat 405 as "this server does not push".
async fn get_mcp() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(header::ALLOW, "POST, DELETE")],
    )
        .into_response()
}

/// The request's session must exist: 400 without the header, 404 for an unknown or ended one.
fn session_check(st: &HttpState, headers: &HeaderMap) -> Result<(), (StatusCode, &'static str)> {
    let Some(id) = headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok()) else {
        return Err((StatusCode::BAD_REQUEST, "missing Mcp-Session-Id"));
    };
    if st.sessions.lock().expect("sessions lock").contains(id) {
        Ok(())
    } else {
        Err((StatusCode::NOT_FOUND, "unknown session"))
    }
}

fn json_response(status: StatusCode, text: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], text).into_response()
}

/// Unique per process and unguessable enough for a benchmark: a counter mixed with the clock.
fn new_session_id(counter: &AtomicU64) -> String {
    let n = counter.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    format!("{nanos:016x}{n:08x}")
}

/// Answer line by line; flush only when no more input is buffered, so bursts are batched.
fn stdio(server: &Server) -> anyhow::Result<()> {
    let mut input = BufReader::with_capacity(256 * 1024, std::io::stdin().lock());
    let mut output = BufWriter::with_capacity(256 * 1024, std::io::stdout().lock());
    let mut line = Vec::with_capacity(4096);
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        let text = line.trim_ascii();
        if text.is_empty() {
            continue;
        }
        let reply = match Message::parse(text) {
            Ok(msg) => server.respond(&msg),
            Err(e) => Some(mcp::error(
                &serde_json::Value::Null,
                -32700,
                &format!("parse error: {e}"),
            )),
        };
        if let Some(reply) = reply {
            output.write_all(reply.as_bytes())?;
            output.write_all(b"\n")?;
        }
        if input.buffer().is_empty() {
            output.flush()?;
        }
    }
    output.flush()?;
    Ok(())
}
