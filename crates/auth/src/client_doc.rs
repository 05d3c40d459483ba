//! Client ID metadata documents: a client whose `client_id` is an `https` URL publishes its
//! metadata (name, redirect URIs) as JSON at that URL, and the authorization server fetches it
//! instead of asking the client to register (the MCP authorization spec's preferred way).
//!
//! The fetch is a request the gateway makes to an address a stranger chose, so it is fenced
//! (server-side request forgery): the URL must be canonical `https` with a path; the host is
//! resolved once and every address it resolves to must be public (not private, loopback,
//! link-local, shared, reserved or multicast) unless the administrator listed the host in
//! `client_metadata_private_hosts`; the connection goes to that checked address and nowhere
//! else (no proxy, no redirects); the answer is capped in size and time; results, good or
//! bad, are cached, fetches per host are rate-limited and few run at once.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use manifold_config::{AuthSettings, valid_redirect_uri};
use reqwest::{Url, header};
use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::oauth::Window;

/// The largest document read (the draft suggests about 5 KB).
pub(crate) const MAX_BYTES: usize = 5 * 1024;
/// The whole fetch, resolution included.
pub(crate) const FETCH_TIME: Duration = Duration::from_secs(5);
const DEFAULT_TTL: Duration = Duration::from_secs(600);
const MIN_TTL: Duration = Duration::from_secs(60);
const MAX_TTL: Duration = Duration::from_secs(86_400);
/// How long a failed fetch is remembered (a broken client is not fetched again and again).
const FAILURE_TTL: Duration = Duration::from_secs(30);
const MAX_CACHED: usize = 1_000;
const FETCHES_AT_ONCE: usize = 8;

/// What the authorization server uses of a client's document.
#[derive(Debug)]
pub(crate) struct ClientDoc {
    pub name: String,
    pub redirect_uris: Vec<String>,
}

struct Cached {
    until: Instant,
    doc: Result<Arc<ClientDoc>, String>,
}

/// Fetches and caches metadata documents.
pub(crate) struct ClientDocs {
    private_hosts: Vec<String>,
    roots: Vec<reqwest::Certificate>,
    cache: Mutex<HashMap<String, Cached>>,
    per_host: Window,
    at_once: Semaphore,
}

/// Whether a client id is a URL (a metadata document) rather than a registered id.
pub(crate) fn is_url(id: &str) -> bool {
    id.starts_with("https://") || id.starts_with("http://")
}

impl ClientDocs {
    pub(crate) fn new(s: &AuthSettings) -> Result<Self, String> {
        let mut roots = Vec::new();
        if let Some(path) = &s.client_metadata_ca {
            let pem = std::fs::read(path).map_err(|e| {
                format!(
                    "auth.client_metadata_ca: cannot read {}: {e}",
                    path.display()
                )
            })?;
            roots = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                format!(
                    "auth.client_metadata_ca: {} holds no usable PEM certificate: {e}",
                    path.display()
                )
            })?;
            if roots.is_empty() {
                return Err(format!(
                    "auth.client_metadata_ca: {} holds no PEM certificate",
                    path.display()
                ));
            }
        }
        Ok(Self {
            private_hosts: s.client_metadata_private_hosts.clone(),
            roots,
            cache: Mutex::new(HashMap::new()),
            per_host: Window::new(Duration::from_secs(60), 30),
            at_once: Semaphore::new(FETCHES_AT_ONCE),
        })
    }

    /// The document at `url`, from the cache or fetched; the error says what is wrong, for
    /// the person who followed the client here and for the client's developer.
    pub(crate) async fn get(&self, url: &str) -> Result<Arc<ClientDoc>, String> {
        let parsed = check_url(url)?;
        if let Some(c) = self.cache.lock().expect("doc cache").get(url)
            && c.until > Instant::now()
        {
            return c.doc.clone();
        }
        let host = parsed.host_str().unwrap_or_default().to_owned();
        if !self.per_host.allow(&[&host]) {
            return Err(format!(
                "too many metadata documents fetched from {host} in the last minute: try again in a minute"
            ));
        }
        let _permit = self
            .at_once
            .acquire()
            .await
            .map_err(|_| "the gateway is shutting down".to_owned())?;
        let (doc, ttl) = match tokio::time::timeout(FETCH_TIME, self.fetch(&parsed)).await {
            Ok(Ok((doc, ttl))) => (Ok(Arc::new(doc)), ttl),
            Ok(Err(e)) => (Err(e), FAILURE_TTL),
            Err(_) => (
                Err(format!(
                    "the metadata document did not arrive within {} seconds",
                    FETCH_TIME.as_secs()
                )),
                FAILURE_TTL,
            ),
        };
        if let Err(e) = &doc {
            tracing::warn!(client_id = %url, error = %e, "a client's metadata document is refused");
        }
        let mut cache = self.cache.lock().expect("doc cache");
        if cache.len() >= MAX_CACHED {
            let now = Instant::now();
            cache.retain(|_, c| c.until > now);
            if cache.len() >= MAX_CACHED
                && let Some(oldest) = cache
                    .iter()
                    .min_by_key(|(_, c)| c.until)
                    .map(|(k, _)| k.clone())
            {
                cache.remove(&oldest);
            }
        }
        cache.insert(
            url.to_owned(),
            Cached {
                until: Instant::now() + ttl,
                doc: doc.clone(),
            },
        );
        doc
    }

    async fn fetch(&self, url: &Url) -> Result<(ClientDoc, Duration), String> {
        let host = url.host_str().unwrap_or_default();
        let bare = host.trim_matches(['[', ']']).to_ascii_lowercase();
        let trusted = self.private_hosts.contains(&bare);
        let port = url.port_or_known_default().unwrap_or(443);
        // Resolve once, check every address, connect to the checked one only.
        let addrs: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((bare.as_str(), port))
                .await
                .map_err(|e| format!("cannot resolve {host}: {e}"))?
                .collect(),
        };
        let Some(first) = addrs.first().copied() else {
            return Err(format!("{host} resolves to no address"));
        };
        for a in &addrs {
            if !allowed(a.ip(), trusted) {
                return Err(format!(
                    "{host} resolves to {}, a private or reserved address: the gateway fetches metadata documents from public addresses only (an administrator can list trusted internal hosts in auth.client_metadata_private_hosts)",
                    a.ip()
                ));
            }
        }
        manifold_upstream::install_crypto_provider();
        let mut b = reqwest::Client::builder()
            .https_only(true)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            // No timeouts of its own: the one deadline for the whole fetch (connecting
            // included) is the `FETCH_TIME` around it, so a slow document always gets the same
            // answer (two equal timers raced, and the loser's message varied).
            .user_agent(concat!("manifold/", env!("CARGO_PKG_VERSION")))
            .tls_certs_merge(self.roots.iter().cloned());
        if bare.parse::<IpAddr>().is_err() {
            b = b.resolve(&bare, first);
        }
        let http = b
            .build()
            .map_err(|e| format!("cannot make an HTTP client: {e}"))?;
        let mut r = http
            .get(url.clone())
            .header(header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| format!("cannot fetch it: {}", error_chain(&e)))?;
        let status = r.status();
        if status.is_redirection() {
            return Err(format!(
                "it answered {status} (a redirect): a metadata document is served at its client_id itself, redirects are not followed"
            ));
        }
        if status != reqwest::StatusCode::OK {
            return Err(format!("it answered {status}, not 200"));
        }
        if r.content_length().is_some_and(|n| n > MAX_BYTES as u64) {
            return Err(format!("it is larger than {MAX_BYTES} bytes"));
        }
        let ttl = ttl(r.headers());
        let mut body = Vec::new();
        while let Some(chunk) = r
            .chunk()
            .await
            .map_err(|e| format!("cannot read it: {}", error_chain(&e)))?
        {
            if body.len() + chunk.len() > MAX_BYTES {
                return Err(format!("it is larger than {MAX_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((parse(url.as_str(), &body)?, ttl))
    }
}

/// The URL, if it may be a client id: canonical, `https`, with a path, without user name,
/// fragment or dot segments.
pub(crate) fn check_url(id: &str) -> Result<Url, String> {
    let u = Url::parse(id).map_err(|e| format!("the client_id {id:?} is not a URL: {e}"))?;
    if u.scheme() != "https" {
        return Err(format!(
            "the client_id {id:?} must be an https URL to be a metadata document"
        ));
    }
    if !u.username().is_empty() || u.password().is_some() || u.fragment().is_some() {
        return Err(format!(
            "the client_id {id:?} must not hold a user name, password or fragment"
        ));
    }
    if u.path() == "/" || u.path().is_empty() {
        return Err(format!(
            "the client_id {id:?} needs a path (like https://app.example.com/oauth/client.json)"
        ));
    }
    // The parser normalises case, dot segments, default ports and odd IP spellings
    // (`https://2130706433/` is 127.0.0.1): the client id must already be in that form.
    if u.as_str() != id {
        return Err(format!(
            "the client_id {id:?} is not in canonical form (it would be {:?})",
            u.as_str()
        ));
    }
    Ok(u)
}

/// Whether the gateway may connect to `ip` for a metadata document. `trusted`: the host is
/// listed by the administrator, and only the unspecified address is refused.
pub(crate) fn allowed(ip: IpAddr, trusted: bool) -> bool {
    if ip.is_unspecified() || ip.is_multicast() {
        return false;
    }
    trusted || public(ip)
}

fn public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_unspecified()
                || a == 0
                || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
                || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
                || (a == 198 && (b == 18 || b == 19)) // benchmarking
                || a >= 224) // multicast and reserved
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0] == 0x64 && s[1] == 0xff9b) // NAT64: an IPv4 address behind it
                || (s[0] == 0x2002) // 6to4: likewise
                || s[..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible (deprecated)
        }
    }
}

/// How long to keep a fetched document: its `max-age`, within bounds.
fn ttl(h: &header::HeaderMap) -> Duration {
    let Some(cc) = h.get(header::CACHE_CONTROL).and_then(|v| v.to_str().ok()) else {
        return DEFAULT_TTL;
    };
    let mut ttl = DEFAULT_TTL;
    for d in cc.split(',').map(str::trim) {
        let d = d.to_ascii_lowercase();
        if d == "no-store" || d == "no-cache" {
            ttl = MIN_TTL;
        } else if let Some(s) = d.strip_prefix("max-age=")
            && let Ok(s) = s.parse::<u64>()
        {
            ttl = Duration::from_secs(s);
        }
    }
    ttl.clamp(MIN_TTL, MAX_TTL)
}

#[derive(Deserialize)]
struct RawDoc {
    client_id: String,
    client_name: Option<String>,
    #[serde(default)]
    redirect_uris: Vec<String>,
    token_endpoint_auth_method: Option<String>,
    client_secret: Option<serde_json::Value>,
    grant_types: Option<Vec<String>>,
    response_types: Option<Vec<String>>,
}

/// The document at `url`, checked.
pub(crate) fn parse(url: &str, body: &[u8]) -> Result<ClientDoc, String> {
    let d: RawDoc = serde_json::from_slice(body)
        .map_err(|e| format!("it is not a client metadata document (JSON): {e}"))?;
    if d.client_id != url {
        return Err(format!(
            "its client_id is {:?}, not the URL it is served at",
            d.client_id
        ));
    }
    if d.client_secret.is_some() {
        return Err("it holds a client_secret, which a public document must not".to_owned());
    }
    match d.token_endpoint_auth_method.as_deref() {
        None | Some("none") => {}
        Some(m) => {
            return Err(format!(
                "its token_endpoint_auth_method is {m:?}: this gateway accepts public clients (\"none\", with PKCE) only"
            ));
        }
    }
    if d.grant_types
        .as_ref()
        .is_some_and(|g| !g.iter().any(|g| g == "authorization_code"))
    {
        return Err("its grant_types do not include authorization_code".to_owned());
    }
    if d.response_types
        .as_ref()
        .is_some_and(|r| !r.iter().any(|r| r == "code"))
    {
        return Err("its response_types do not include code".to_owned());
    }
    if d.redirect_uris.is_empty() {
        return Err("it lists no redirect_uris".to_owned());
    }
    for u in &d.redirect_uris {
        valid_redirect_uri(u).map_err(|m| format!("redirect_uris: {m}"))?;
    }
    let host = Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_default();
    let name = d
        .client_name
        .map(|n| {
            n.trim()
                .chars()
                .filter(|c| !c.is_control())
                .take(200)
                .collect::<String>()
        })
        .filter(|n| !n.is_empty())
        .unwrap_or(host);
    Ok(ClientDoc {
        name,
        redirect_uris: d.redirect_uris,
    })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_unless_the_host_is_trusted() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "192.0.0.8",
            "198.18.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "fec0::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "2002:a00:1::",
            "::127.0.0.1",
        ] {
            let ip: IpAddr = a.parse().unwrap();
            assert!(!allowed(ip, false), "{a} must be refused");
        }
        for a in ["93.184.215.14", "1.1.1.1", "2606:4700:4700::1111"] {
            assert!(allowed(a.parse().unwrap(), false), "{a} is public");
        }
        assert!(allowed("127.0.0.1".parse().unwrap(), true));
        assert!(allowed("10.0.0.1".parse().unwrap(), true));
        assert!(!allowed("0.0.0.0".parse().unwrap(), true));
        assert!(!allowed("::".parse().unwrap(), true));
    }

    #[test]
    fn a_client_id_url_is_canonical_https_with_a_path() {
        assert!(check_url("https://app.example.com/client.json").is_ok());
        assert!(check_url("https://app.example.com:8443/oauth/client?v=1").is_ok());
        for bad in [
            "http://app.example.com/client.json",
            "https://app.example.com",
            "https://app.example.com/",
            "https://user@app.example.com/client.json",
            "https://app.example.com/client.json#x",
            "https://APP.example.com/client.json",
            "https://app.example.com/a/../client.json",
            "https://app.example.com:443/client.json",
            "https://2130706433/client.json",
            "https://0x7f.1/client.json",
            "ftp://app.example.com/client.json",
            "not a url",
        ] {
            assert!(check_url(bad).is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn a_document_names_itself_and_is_public() {
        let url = "https://app.example.com/client.json";
        let ok = parse(
            url,
            br#"{"client_id":"https://app.example.com/client.json","client_name":"App\u0007","redirect_uris":["http://127.0.0.1:3000/cb"]}"#,
        )
        .unwrap();
        assert_eq!(ok.name, "App");
        assert_eq!(ok.redirect_uris, ["http://127.0.0.1:3000/cb"]);
        let unnamed = parse(
            url,
            br#"{"client_id":"https://app.example.com/client.json","redirect_uris":["https://app.example.com/cb"]}"#,
        )
        .unwrap();
        assert_eq!(unnamed.name, "app.example.com");
        for (body, why) in [
            (
                r#"{"client_id":"https://evil.example.com/client.json","redirect_uris":["https://a.example.com/cb"]}"#,
                "client_id",
            ),
            (
                r#"{"client_id":"https://app.example.com/client.json","redirect_uris":[]}"#,
                "redirect_uris",
            ),
            (
                r#"{"client_id":"https://app.example.com/client.json","redirect_uris":["http://evil.example.com/cb"]}"#,
                "redirect_uris",
            ),
            (
                r#"{"client_id":"https://app.example.com/client.json","client_secret":"s","redirect_uris":["https://a.example.com/cb"]}"#,
                "client_secret",
            ),
            (
                r#"{"client_id":"https://app.example.com/client.json","token_endpoint_auth_method":"private_key_jwt","redirect_uris":["https://a.example.com/cb"]}"#,
                "public clients",
            ),
            (
                r#"{"client_id":"https://app.example.com/client.json","grant_types":["client_credentials"],"redirect_uris":["https://a.example.com/cb"]}"#,
                "grant_types",
            ),
            ("<html>", "JSON"),
        ] {
            let e = parse(url, body.as_bytes()).unwrap_err();
            assert!(e.contains(why), "{body}: {e}");
        }
    }

    #[test]
    fn cache_lifetimes_follow_max_age_within_bounds() {
        let h = |v: &str| {
            let mut m = header::HeaderMap::new();
            m.insert(header::CACHE_CONTROL, v.parse().unwrap());
            m
        };
        assert_eq!(ttl(&header::HeaderMap::new()), DEFAULT_TTL);
        assert_eq!(ttl(&h("public, max-age=3600")), Duration::from_secs(3600));
        assert_eq!(ttl(&h("max-age=1")), MIN_TTL);
        assert_eq!(ttl(&h("max-age=99999999")), MAX_TTL);
        assert_eq!(ttl(&h("no-store")), MIN_TTL);
    }
}
