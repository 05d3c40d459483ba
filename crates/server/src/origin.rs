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

/// The allow-lists, parsed once per configuration (not per request).
#[derive(Debug, Default)]
pub(crate) struct Allowed {
    /// (host, port if the entry has one); empty: every host.
    hosts: Vec<(String, Option<u16>)>,
    /// (scheme, host, port; `None` for any port), and whether `null` is allowed.
    origins: Vec<(String, String, Option<Option<u16>>)>,
    null: bool,
}

impl Allowed {
    pub fn new(hosts: &[String], origins: &[String]) -> Self {
        let hosts = hosts
            .iter()
            .map(|a| match http::uri::Authority::try_from(a.trim()) {
                Ok(a) => (norm(a.host()), a.port_u16()),
                Err(_) => (norm(a), None),
            })
            .collect();
        let mut null = false;
        let origins = origins
            .iter()
            .filter_map(|a| {
                let a = a.trim();
                if a == "null" {
                    null = true;
                    return None;
                }
                let (a, any_port) = match a.strip_suffix(":*") {
                    Some(a) => (a, true),
                    None => (a, false),
                };
                let (s, h, p) = split_origin(a)?;
                Some((s, h, if any_port { None } else { Some(p) }))
            })
            .collect();
        Self {
            hosts,
            origins,
            null,
        }
    }

    /// Check `Host` (an entry without a port allows any port; an empty list allows every host)
    /// and a present `Origin` (absent: a non-browser client).
    pub fn check(&self, h: &HeaderMap) -> Result<(), Refused> {
        self.check_host(h)?;
        if let Some(origin) = h.get(header::ORIGIN) {
            let o = origin.to_str().unwrap_or("");
            if !self.origin_allowed(o) {
                return Err(Refused::Origin(o.to_owned()));
            }
        }
        Ok(())
    }

    /// The `Host` check alone (for routes that decide about `Origin` themselves).
    pub fn check_host(&self, h: &HeaderMap) -> Result<(), Refused> {
        let host = h
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .ok_or(Refused::BadHost)?;
        let (name, port) = host_and_port(host).ok_or(Refused::BadHost)?;
        let listed = |(n, p): &(String, Option<u16>)| {
            n.eq_ignore_ascii_case(name) && p.is_none_or(|p| Some(p) == port)
        };
        if !self.hosts.is_empty() && !self.hosts.iter().any(listed) {
            return Err(Refused::Host(host.to_owned()));
        }
        Ok(())
    }

    /// An origin `scheme://host[:port]` against entries of the same form, where `:*` allows
    /// any port, a portless entry the scheme's default port, and `null` the opaque origin.
    fn origin_allowed(&self, origin: &str) -> bool {
        if origin == "null" {
            return self.null;
        }
        let Some((scheme, host, port)) = split_origin(origin) else {
            return false;
        };
        self.origins
            .iter()
            .any(|(s, h, p)| *s == scheme && *h == host && p.is_none_or(|p| p == port))
    }
}

/// The name (IPv6 literals without their brackets) and port of a `Host` header, `uri-host
/// [ ":" port ]`; `None` if it is not one. Read in place: this runs on every request.
fn host_and_port(host: &str) -> Option<(&str, Option<u16>)> {
    let (name, port) = match host.strip_prefix('[') {
        Some(rest) => {
            let (name, after) = rest.split_once(']')?;
            let valid = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
            if !valid {
                return None;
            }
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':')?),
            };
            (name, port)
        }
        None => {
            let (name, port) = match host.split_once(':') {
                Some((n, p)) => (n, Some(p)),
                None => (host, None),
            };
            let valid = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(&b));
            if !valid {
                return None;
            }
            (name, port)
        }
    };
    let port = match port {
        None | Some("") => None,
        Some(p) if p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => Some(p.parse().ok()?),
        Some(_) => return None,
    };
    Some((name, port))
}

fn norm(s: &str) -> String {
    s.trim_matches(['[', ']']).to_ascii_lowercase()
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

    fn check(h: &HeaderMap, hosts: &[String], origins: &[String]) -> Result<(), Refused> {
        Allowed::new(hosts, origins).check(h)
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
        for bad in [
            "",
            ":8730",
            "user@localhost",
            "localhost:87a0",
            "localhost:99999",
            "localhost:1:2",
            "::1",
            "[::1",
            "[]:1",
            "[::1]8730",
            "[localhost]",
            "local/host",
        ] {
            assert_eq!(ok(bad), Err(Refused::BadHost), "{bad:?}");
        }
        assert_eq!(ok("localhost:"), Ok(()), "an empty port is no port");
        assert_eq!(ok("[::1]"), Ok(()));
        assert_eq!(ok("[::2]:8730"), Err(Refused::Host("[::2]:8730".into())));
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
