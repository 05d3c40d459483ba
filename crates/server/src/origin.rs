//! DNS-rebinding and cross-origin protection: the `Host` and `Origin` allow-lists
//! (`gateway.allowed_hosts`, `gateway.allowed_origins`). Pure functions of the headers and
//! the lists, so they are tested with plain data.

use axum::http::{HeaderMap, header};

/// Why a request's `Host` or `Origin` was refused, for the answer and the log.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// No Host header, or one that is not a host name (400).
    BadHost,
    /// A Host that is not on the list (403): perhaps a DNS-rebinding attempt.
    Host(String),
    /// A present Origin that is not on the list (403): a page of another site.
    Origin(String),
}

/// Check `Host` against `hosts` (an entry without a port allows any port; an empty list
/// allows every host) and a present `Origin` against `origins` (absent: a non-browser client).
pub(crate) fn check(h: &HeaderMap, hosts: &[String], origins: &[String]) -> Result<(), Refused> {
    let host = h
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .ok_or(Refused::BadHost)?;
    let authority = http::uri::Authority::try_from(host).map_err(|_| Refused::BadHost)?;
    if !hosts.is_empty() && !host_allowed(&authority, hosts) {
        return Err(Refused::Host(host.to_owned()));
    }
    if let Some(origin) = h.get(header::ORIGIN) {
        let o = origin.to_str().unwrap_or("");
        if !origin_allowed(o, origins) {
            return Err(Refused::Origin(o.to_owned()));
        }
    }
    Ok(())
}

fn norm(s: &str) -> String {
    s.trim_matches(['[', ']']).to_ascii_lowercase()
}

fn host_allowed(host: &http::uri::Authority, allowed: &[String]) -> bool {
    let (name, port) = (norm(host.host()), host.port_u16());
    allowed
        .iter()
        .any(|a| match http::uri::Authority::try_from(a.trim()) {
            Ok(a) => norm(a.host()) == name && a.port_u16().is_none_or(|p| Some(p) == port),
            Err(_) => norm(a) == name,
        })
}

/// An origin `scheme://host[:port]` against entries of the same form, where `:*` allows any
/// port, a portless entry the scheme's default port, and `null` the opaque origin.
fn origin_allowed(origin: &str, allowed: &[String]) -> bool {
    if origin == "null" {
        return allowed.iter().any(|a| a == "null");
    }
    let Some((scheme, host, port)) = split_origin(origin) else {
        return false;
    };
    allowed.iter().any(|a| {
        let a = a.trim();
        let (a, any_port) = match a.strip_suffix(":*") {
            Some(a) => (a, true),
            None => (a, false),
        };
        let Some((s, h, p)) = split_origin(a) else {
            return false;
        };
        s == scheme && h == host && (any_port || p == port)
    })
}

/// (scheme, host, effective port) of `scheme://host[:port]` with nothing after the authority.
fn split_origin(o: &str) -> Option<(String, String, Option<u16>)> {
    let (scheme, rest) = o.split_once("://")?;
    if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
        return None;
    }
    let authority = http::uri::Authority::try_from(rest).ok()?;
    let scheme = scheme.to_ascii_lowercase();
    let port = authority.port_u16().or(match scheme.as_str() {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    });
    Some((scheme, norm(authority.host()), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(host: Option<&str>, origin: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(v) = host {
            h.insert(header::HOST, v.parse().unwrap());
        }
        if let Some(v) = origin {
            h.insert(header::ORIGIN, v.parse().unwrap());
        }
        h
    }

    fn list(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn hosts() {
        let hosts = list(&["localhost", "127.0.0.1", "[::1]", "gw.example:8443"]);
        let ok = |h: &str| check(&headers(Some(h), None), &hosts, &[]);
        assert_eq!(ok("localhost:8730"), Ok(()));
        assert_eq!(ok("LOCALHOST"), Ok(()));
        assert_eq!(ok("127.0.0.1:1"), Ok(()));
        assert_eq!(ok("[::1]:8730"), Ok(()));
        assert_eq!(ok("gw.example:8443"), Ok(()));
        assert_eq!(
            ok("gw.example:8444"),
            Err(Refused::Host("gw.example:8444".into()))
        );
        assert_eq!(
            ok("evil.example"),
            Err(Refused::Host("evil.example".into()))
        );
        assert_eq!(
            ok("localhost.evil.example"),
            Err(Refused::Host("localhost.evil.example".into()))
        );
        assert_eq!(ok("a b"), Err(Refused::BadHost));
        assert_eq!(
            check(&headers(None, None), &hosts, &[]),
            Err(Refused::BadHost)
        );
        assert_eq!(
            check(&headers(Some("anything"), None), &[], &[]),
            Ok(()),
            "an empty list allows all"
        );
    }

    #[test]
    fn origins() {
        let origins = list(&["http://localhost:*", "https://app.example", "null"]);
        let ok = |o: &str| check(&headers(Some("localhost"), Some(o)), &[], &origins);
        assert_eq!(ok("http://localhost:3000"), Ok(()));
        assert_eq!(ok("http://localhost"), Ok(()));
        assert_eq!(ok("https://app.example"), Ok(()));
        assert_eq!(ok("https://app.example:443"), Ok(()));
        assert_eq!(ok("null"), Ok(()));
        for bad in [
            "https://localhost:3000",
            "https://app.example:8443",
            "https://evil.example",
            "http://localhost.evil.example",
            "http://localhost:3000/path",
            "garbage",
        ] {
            assert_eq!(ok(bad), Err(Refused::Origin(bad.into())), "{bad}");
        }
        assert_eq!(
            check(
                &headers(Some("localhost"), Some("null")),
                &[],
                &list(&["http://localhost:*"])
            ),
            Err(Refused::Origin("null".into()))
        );
        assert_eq!(
            check(&headers(Some("localhost"), None), &[], &origins),
            Ok(()),
            "no Origin: not a browser"
        );
    }
}
