//! A stdio connector's child process: its own process group, an allow-listed environment, a
//! stdout filter that lets only well-formed JSON lines through, and a capped stderr drain.

use std::{process::Stdio, time::Duration};

use manifold_config::{ConnectorId, ConnectorSpec, Secrets, StdioSpec};
use nix::{sys::signal::Signal, unistd::Pid};
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader, DuplexStream},
    process::{Child, ChildStdin, Command},
};

use crate::{UpstreamError, link::Link};

/// A running child: the pieces rmcp talks to, and the handle the supervisor waits on and kills.
pub struct Spawned {
    pub child: Child,
    pub pgid: Option<Pid>,
    /// rmcp's side of stdin; a writer task merges it with raw requests, line by line.
    pub stdin: DuplexStream,
    /// Filtered stdout: only complete, valid UTF-8 JSON object lines.
    pub stdout: DuplexStream,
}

pub fn spawn(
    connector: &ConnectorSpec,
    spec: &StdioSpec,
    lookup: &dyn Fn(&str) -> Option<String>,
    raw: std::sync::Arc<Link>,
    raw_lines: tokio::sync::mpsc::Receiver<Vec<u8>>,
) -> Result<Spawned, UpstreamError> {
    let id = &connector.id;
    let mut cmd = Command::new(&spec.command);
    cmd.args(&spec.args)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Its own group, so npx and shells can be killed with every grandchild.
        .process_group(0);
    for name in &spec.env_passthrough {
        if let Some(v) = lookup(name) {
            cmd.env(name, v);
        }
    }
    for (k, v) in &spec.env {
        cmd.env(k, v.expose());
    }
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(cwd);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| UpstreamError::Unavailable(format!("cannot start {:?}: {e}", spec.command)))?;
    let pgid = child.id().map(|p| Pid::from_raw(p as i32));
    tracing::info!(connector = %id, command = %spec.command, args = %spec.display_args(), pid = ?pgid, "spawned stdio connector");
    let stdin = child.stdin.take().expect("stdin was piped");
    let stdout = child.stdout.take().expect("stdout was piped");
    let stderr = child.stderr.take().expect("stderr was piped");
    let (rmcp_side, filter_side) = tokio::io::duplex(256 * 1024);
    tokio::spawn(filter_stdout(
        id.clone(),
        stdout,
        filter_side,
        spec.max_line_bytes,
        raw.clone(),
    ));
    let (rmcp_in, writer_side) = tokio::io::duplex(256 * 1024);
    tokio::spawn(write_stdin(stdin, writer_side, raw_lines));
    tokio::spawn(drain_stderr(
        id.clone(),
        stderr,
        spec.stderr_lines_per_minute,
        connector.secrets.clone(),
    ));
    Ok(Spawned {
        child,
        pgid,
        stdin: rmcp_in,
        stdout: rmcp_side,
    })
}

/// Write rmcp's messages and raw requests to the child, whole lines only, so the two never
/// interleave. Stdin closes when rmcp closes its side (session stopped).
async fn write_stdin(
    mut stdin: ChildStdin,
    from_rmcp: DuplexStream,
    mut raw: tokio::sync::mpsc::Receiver<Vec<u8>>,
) {
    let mut reader = BufReader::with_capacity(64 * 1024, from_rmcp);
    // Kept across select iterations: a partly read line stays in it (read_until appends).
    let mut line = Vec::with_capacity(8 * 1024);
    loop {
        tokio::select! {
            r = reader.read_until(b'\n', &mut line) => match r {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if stdin.write_all(&line).await.is_err() {
                        break;
                    }
                    line.clear();
                }
            },
            Some(mut msg) = raw.recv() => {
                msg.push(b'\n');
                if stdin.write_all(&msg).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = stdin.shutdown().await;
}

/// Copy stdout to rmcp line by line, dropping (and logging) anything that is not one complete
/// JSON object of valid UTF-8 within `max` bytes. Memory stays bounded by `max`.
async fn filter_stdout(
    id: ConnectorId,
    out: impl AsyncRead + Unpin,
    mut to_rmcp: DuplexStream,
    max: usize,
    raw: std::sync::Arc<Link>,
) {
    let mut reader = BufReader::with_capacity(64 * 1024, out);
    let mut line: Vec<u8> = Vec::with_capacity(8 * 1024);
    loop {
        line.clear();
        match read_capped_line(&mut reader, &mut line, max).await {
            Ok(LineOutcome::Eof) => break,
            Ok(LineOutcome::TooLong(n)) => {
                tracing::warn!(connector = %id, bytes = n, limit = max, "dropped an oversized stdout line");
                continue;
            }
            Ok(LineOutcome::Line) => {}
            Err(e) => {
                tracing::warn!(connector = %id, error = %e, "reading stdout failed");
                break;
            }
        }
        let trimmed = line.trim_ascii();
        if trimmed.is_empty() {
            continue;
        }
        let Ok(text) = std::str::from_utf8(trimmed) else {
            tracing::warn!(connector = %id, "dropped a stdout line that is not valid UTF-8");
            continue;
        };
        // Answers to link requests go to their callers, not to rmcp (intercept parses only
        // lines that mention a link id, and only valid JSON matches).
        if text.starts_with('{') && raw.intercept(text) {
            continue;
        }
        if !text.starts_with('{') || serde_json::from_str::<serde::de::IgnoredAny>(text).is_err() {
            tracing::warn!(connector = %id, line = %raw.secrets.scrub_preview(text, 120), "dropped a stdout line that is not a JSON-RPC object");
            continue;
        }
        if to_rmcp.write_all(trimmed).await.is_err() || to_rmcp.write_all(b"\n").await.is_err() {
            break;
        }
    }
    raw.close();
    let _ = to_rmcp.shutdown().await;
}

enum LineOutcome {
    Line,
    TooLong(usize),
    Eof,
}

async fn read_capped_line(
    r: &mut BufReader<impl AsyncRead + Unpin>,
    line: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<LineOutcome> {
    let mut discarded = 0usize;
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Ok(if discarded > 0 {
                LineOutcome::TooLong(discarded)
            } else if line.is_empty() {
                LineOutcome::Eof
            } else {
                LineOutcome::Line
            });
        }
        let (chunk, done) = match memchr(buf) {
            Some(i) => (&buf[..=i], true),
            None => (buf, false),
        };
        let n = chunk.len();
        if discarded > 0 || line.len() + n > max {
            discarded += line.len() + n;
            line.clear();
        } else {
            line.extend_from_slice(chunk);
        }
        r.consume(n);
        if done {
            return Ok(if discarded > 0 {
                LineOutcome::TooLong(discarded)
            } else {
                LineOutcome::Line
            });
        }
    }
}

fn memchr(buf: &[u8]) -> Option<usize> {
    buf.iter().position(|b| *b == b'\n')
}

/// Drain stderr continuously (a full pipe would block the child) into the log, at most
/// `per_minute` lines a minute; the rest are counted and reported.
async fn drain_stderr(
    id: ConnectorId,
    err: impl AsyncRead + Unpin,
    per_minute: u32,
    secrets: Secrets,
) {
    let mut reader = BufReader::new(err);
    let mut buf = Vec::with_capacity(1024);
    let mut window = tokio::time::Instant::now();
    let mut logged = 0u32;
    let mut suppressed = 0u64;
    loop {
        buf.clear();
        match read_capped_line(&mut reader, &mut buf, 8 * 1024).await {
            Ok(LineOutcome::Eof) | Err(_) => break,
            Ok(LineOutcome::TooLong(_)) => buf.extend_from_slice(b"<over-long stderr line>"),
            Ok(LineOutcome::Line) => {}
        }
        if window.elapsed() >= Duration::from_secs(60) {
            if suppressed > 0 {
                tracing::warn!(connector = %id, suppressed, "stderr lines were not logged (rate limit)");
            }
            window = tokio::time::Instant::now();
            logged = 0;
            suppressed = 0;
        }
        if logged >= per_minute {
            suppressed += 1;
            continue;
        }
        logged += 1;
        let text = String::from_utf8_lossy(buf.trim_ascii_end());
        tracing::info!(connector = %id, "stderr: {}", secrets.scrub_preview(&text, 120));
    }
}

/// Stop a child as the spec orders: stdin is already closed, then SIGTERM the group, then SIGKILL.
pub async fn terminate(mut child: Child, pgid: Option<Pid>, grace: Duration) {
    // stdin was closed when the rmcp session stopped.
    if tokio::time::timeout(grace / 2, child.wait()).await.is_err() {
        signal_group(pgid, Signal::SIGTERM);
        if tokio::time::timeout(grace / 2, child.wait()).await.is_err() {
            signal_group(pgid, Signal::SIGKILL);
            let _ = child.wait().await;
        }
    }
    // The leader may be gone while grandchildren (npx's node) remain in the group.
    signal_group(pgid, Signal::SIGKILL);
}

pub fn signal_group(pgid: Option<Pid>, signal: Signal) {
    if let Some(pgid) = pgid {
        let _ = nix::sys::signal::killpg(pgid, signal);
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::link::Out;

    /// Whatever a child writes to stdout, in whatever pieces, the reader never panics or
    /// hangs, and rmcp gets only complete JSON objects of valid UTF-8 within the line cap.
    #[test]
    fn fuzz_the_stdout_line_reader() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let target = manifold_fuzz::Target {
            name: "stdio",
            dictionary: &[
                b"\n",
                b"\r\n",
                b"{\"jsonrpc\":\"2.0\",\"id\":\"mf-1\",\"result\":{}}\n",
                b"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n",
                b"\"mf-",
                b"notifications/message",
                b"\xff\xfe",
                b"\x1b[31m",
                &[b'x'; 300],
            ],
            iterations: 20_000,
        };
        const MAX: usize = 256;
        let id = ConnectorId::parse("fz").unwrap();
        manifold_fuzz::run(&target, |bytes| {
            rt.block_on(async {
                let (tx, _rx) = tokio::sync::mpsc::channel(1024);
                let raw = Link::new(Out::Lines(tx), Secrets::default());
                // A small pipe, so the reader sees the bytes in pieces.
                let (mut child, stdout) = tokio::io::duplex(61);
                let (to_rmcp, mut rmcp) = tokio::io::duplex(64 * 1024);
                let input = bytes.to_vec();
                let writer = tokio::spawn(async move {
                    let _ = child.write_all(&input).await;
                });
                let reader = tokio::spawn(filter_stdout(id.clone(), stdout, to_rmcp, MAX, raw));
                let mut out = Vec::new();
                tokio::time::timeout(Duration::from_secs(5), rmcp.read_to_end(&mut out))
                    .await
                    .expect("the reader ends when stdout does")
                    .unwrap();
                writer.await.unwrap();
                reader.await.expect("the reader does not panic");
                let text = std::str::from_utf8(&out).expect("only UTF-8 reaches rmcp");
                for line in text.lines() {
                    assert!(
                        line.len() <= MAX,
                        "an over-long line passed: {}",
                        line.len()
                    );
                    let v: serde_json::Value =
                        serde_json::from_str(line).expect("only JSON reaches rmcp");
                    assert!(v.is_object(), "only objects reach rmcp: {line}");
                }
            });
        });
    }
}
