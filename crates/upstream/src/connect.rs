//! Opening one connection to a connector's upstream: a stdio child, Streamable HTTP, or the
//! legacy HTTP+SSE transport, each with its link (the gateway's own data path) beside rmcp's
//! session, in the era found for the connector.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use manifold_config::{HttpTransport, TransportSpec};
use rmcp::{
    RoleClient,
    service::RunningService,
    transport::{
        StreamableHttpClientTransport, streamable_http_client::StreamableHttpClientTransportConfig,
    },
};

use crate::{
    client_handler::UpstreamHandler,
    connector::Shared,
    link::{self, Link},
    sse, stdio,
};

/// A live connection plus what must be stopped with it.
pub(crate) struct Connection {
    pub running: RunningService<RoleClient, UpstreamHandler>,
    pub link: Arc<Link>,
    pub child: Option<(tokio::process::Child, Option<nix::unistd::Pid>)>,
}

impl Shared {
    /// Open a connection. If probing the era (`era = "auto"`, nothing known yet) fails, the
    /// next attempt uses `initialize` directly (some legacy servers trip up on the probe), and
    /// if that fails too, the one after probes again.
    pub(crate) async fn connect(self: &Arc<Self>) -> Result<Connection, String> {
        let lifecycle = self.lifecycle();
        let probing = matches!(lifecycle, rmcp::ClientLifecycleMode::Auto { .. });
        let result = self.connect_with(lifecycle).await;
        if result.is_err() && self.modern.lock().expect("era lock").is_none() {
            self.probe_failed
                .store(probing, std::sync::atomic::Ordering::Relaxed);
        }
        result
    }

    async fn connect_with(
        self: &Arc<Self>,
        lifecycle: rmcp::ClientLifecycleMode,
    ) -> Result<Connection, String> {
        let cell = Arc::new(std::sync::OnceLock::new());
        let handler = UpstreamHandler::new(Arc::downgrade(self), cell.clone());
        match &self.spec.transport {
            TransportSpec::Stdio(s) => {
                let env = self.env.clone();
                let (lines, lines_rx) = tokio::sync::mpsc::channel(1024);
                let link = Link::new(link::Out::Lines(lines), self.spec.secrets.clone());
                let _ = cell.set(link.clone());
                self.attach_logs(&link);
                let spawned = stdio::spawn(&self.spec, s, &|k| env(k), link.clone(), lines_rx)
                    .map_err(|e| e.to_string())?;
                let stdio::Spawned {
                    mut child,
                    pgid,
                    stdin,
                    stdout,
                } = spawned;
                *self.starting_group.lock().expect("group lock") = pgid;
                let init = rmcp::serve_client_with_lifecycle(handler, (stdout, stdin), lifecycle);
                let init_timeout = Duration::from_secs(60);
                tokio::select! {
                    r = tokio::time::timeout(init_timeout, init) => match r {
                        Ok(Ok(running)) => Ok(Connection { running, link, child: Some((child, pgid)) }),
                        Ok(Err(e)) => {
                            let status = child.try_wait().ok().flatten();
                            stdio::terminate(child, pgid, Duration::from_millis(500)).await;
                            Err(match status {
                                Some(st) => format!("process exited during initialize ({st})"),
                                None => format!("initialize failed: {e}"),
                            })
                        }
                        Err(_) => {
                            stdio::terminate(child, pgid, Duration::from_millis(500)).await;
                            Err(format!("no answer to initialize within {init_timeout:?}"))
                        }
                    },
                    st = child.wait() => {
                        stdio::signal_group(pgid, nix::sys::signal::Signal::SIGKILL);
                        Err(match st {
                            Ok(st) => format!("process exited during initialize ({st})"),
                            Err(e) => format!("process failed: {e}"),
                        })
                    }
                }
            }
            TransportSpec::Http(h) => {
                crate::install_crypto_provider();
                let client = reqwest::Client::builder()
                    .connect_timeout(h.connect_timeout)
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .map_err(|e| format!("cannot build HTTP client: {e}"))?;
                let mut headers = HashMap::new();
                for (k, v) in &h.headers {
                    let name = http::HeaderName::try_from(k.as_str())
                        .map_err(|_| format!("invalid header name {k:?}"))?;
                    let value = http::HeaderValue::try_from(v.expose())
                        .map_err(|_| format!("invalid value for header {k:?}"))?;
                    headers.insert(name, value);
                }
                // Credentials in the URL travel as Basic authentication (as browsers and
                // reqwest do), so no client, error or log downstream ever holds them.
                let (url, basic) = split_userinfo(&h.url);
                if let Some(basic) = basic {
                    headers.entry(http::header::AUTHORIZATION).or_insert(basic);
                }
                let budget = h.connect_timeout + Duration::from_secs(5);
                if h.transport != HttpTransport::Sse {
                    let config = StreamableHttpClientTransportConfig::with_uri(url.clone())
                        .custom_headers(headers.clone())
                        .max_concurrent_requests(1024);
                    let negotiated = Arc::new(Mutex::new(link::Negotiated::default()));
                    let recording = link::Recording {
                        inner: client.clone(),
                        negotiated: negotiated.clone(),
                        secrets: self.spec.secrets.clone(),
                    };
                    let (inject, injected) = tokio::sync::mpsc::channel(256);
                    let transport = link::Injecting {
                        inner: StreamableHttpClientTransport::with_client(recording, config),
                        injected,
                    };
                    let uri: http::Uri = url
                        .parse()
                        .map_err(|e| format!("invalid url {:?}: {e}", h.display_url()))?;
                    let link = Link::new(
                        link::Out::Http(Box::new(link::HttpOut {
                            sender: link::Sender::for_uri(&uri, client.clone(), h.connect_timeout),
                            headers: link::HttpOut::fixed_headers(&uri, &headers),
                            uri,
                            negotiated,
                            inject,
                        })),
                        self.spec.secrets.clone(),
                    );
                    let _ = cell.set(link.clone());
                    self.attach_logs(&link);
                    let attempt = tokio::time::timeout(
                        budget + Duration::from_secs(10),
                        rmcp::serve_client_with_lifecycle(handler, transport, lifecycle),
                    )
                    .await;
                    match attempt {
                        Ok(Ok(running)) => {
                            return Ok(Connection {
                                running,
                                link,
                                child: None,
                            });
                        }
                        Ok(Err(e)) if h.transport == HttpTransport::Streamable => {
                            return Err(format!("initialize failed: {e}"));
                        }
                        Err(_) if h.transport == HttpTransport::Streamable => {
                            return Err(format!(
                                "no answer to initialize from {} within {budget:?}",
                                h.display_url()
                            ));
                        }
                        Ok(Err(e)) => {
                            tracing::info!(connector = %self.spec.id, error = %self.spec.secrets.scrub(&e.to_string()), "streamable HTTP failed; trying the legacy HTTP+SSE transport")
                        }
                        Err(_) => {
                            tracing::info!(connector = %self.spec.id, "streamable HTTP timed out; trying the legacy HTTP+SSE transport")
                        }
                    }
                }
                let cell = Arc::new(std::sync::OnceLock::new());
                let handler = UpstreamHandler::new(Arc::downgrade(self), cell.clone());
                let (transport, link) = sse::connect(
                    client,
                    &url,
                    headers,
                    h.connect_timeout,
                    self.spec.secrets.clone(),
                )
                .await?;
                let _ = cell.set(link.clone());
                self.attach_logs(&link);
                match tokio::time::timeout(budget, rmcp::serve_client(handler, transport)).await {
                    Ok(Ok(running)) => Ok(Connection {
                        running,
                        link,
                        child: None,
                    }),
                    Ok(Err(e)) => Err(format!("initialize over HTTP+SSE failed: {e}")),
                    Err(_) => Err(format!(
                        "no answer to initialize over HTTP+SSE within {budget:?}"
                    )),
                }
            }
        }
    }

    /// How to open the next connection: the configured era, or the one found before.
    fn lifecycle(&self) -> rmcp::ClientLifecycleMode {
        let modern = || rmcp::ClientLifecycleMode::Discover {
            preferred_versions: vec![rmcp::model::ProtocolVersion::V_2026_07_28],
        };
        match (self.spec.era, *self.modern.lock().expect("era lock")) {
            (manifold_config::Era::Legacy, _) | (manifold_config::Era::Auto, Some(false)) => {
                rmcp::ClientLifecycleMode::Initialize
            }
            (manifold_config::Era::Modern, _) | (manifold_config::Era::Auto, Some(true)) => {
                modern()
            }
            (manifold_config::Era::Auto, None)
                if self.probe_failed.load(std::sync::atomic::Ordering::Relaxed) =>
            {
                rmcp::ClientLifecycleMode::Initialize
            }
            (manifold_config::Era::Auto, None) => rmcp::ClientLifecycleMode::Auto {
                preferred_versions: vec![rmcp::model::ProtocolVersion::V_2026_07_28],
                legacy_version: Some(rmcp::model::ProtocolVersion::LATEST_WITH_INITIALIZE),
            },
        }
    }

    /// Log messages of this connection go with the call they are about.
    fn attach_logs(self: &Arc<Self>, link: &Arc<Link>) {
        let weak = Arc::downgrade(self);
        let _ = link
            .log_target
            .set(Box::new(move || weak.upgrade()?.calls.log_target()));
    }
}

/// `url` without its userinfo, and that userinfo (percent-decoded) as a Basic `Authorization`
/// value.
fn split_userinfo(url: &str) -> (String, Option<http::HeaderValue>) {
    use base64::{Engine, prelude::BASE64_STANDARD};
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_owned(), None);
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return (url.to_owned(), None);
    };
    let (user, pass) = rest[..at].split_once(':').unwrap_or((&rest[..at], ""));
    let pair = format!("{}:{}", percent_decode(user), percent_decode(pass));
    let mut value = http::HeaderValue::try_from(format!("Basic {}", BASE64_STANDARD.encode(pair)))
        .expect("base64 is a valid header value");
    value.set_sensitive(true);
    (format!("{scheme}://{}", &rest[at + 1..]), Some(value))
}

/// `%XX` escapes decoded (invalid ones kept as written).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_becomes_basic_authentication() {
        let (url, basic) = split_userinfo("http://us%40er:p%3Ass@127.0.0.1:1/mcp?k=v");
        assert_eq!(url, "http://127.0.0.1:1/mcp?k=v");
        // base64("us@er:p:ss")
        assert_eq!(basic.unwrap(), "Basic dXNAZXI6cDpzcw==");
        let (url, basic) = split_userinfo("http://h/a@b");
        assert_eq!((url.as_str(), basic), ("http://h/a@b", None));
        assert_eq!(percent_decode("100%"), "100%");
    }
}
