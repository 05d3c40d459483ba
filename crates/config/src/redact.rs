//! Keeping a connector's secrets out of what the gateway shows: URLs without their userinfo and
//! query values, and the connector's own secret values replaced in any text about it (errors,
//! an upstream's error bodies, a process's stderr).

use std::{borrow::Cow, fmt, sync::Arc};

/// What a redacted part reads as.
pub const REDACTED: &str = "***";

/// Shortest value that is scrubbed by value: shorter ones are not credentials, and replacing
/// them would garble every message.
const MIN_SECRET_LEN: usize = 4;

/// `url` with its userinfo and every query value replaced by `***`:
/// `http://user:PASS@host/mcp?api_key=KEY&x` reads `http://***@host/mcp?api_key=***&x=***`.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let (scheme, rest) = url.split_at(scheme_end + 3);
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, rest) = rest.split_at(authority_end);
    let mut out = String::with_capacity(url.len());
    out.push_str(scheme);
    match authority.rfind('@') {
        Some(at) => {
            out.push_str(REDACTED);
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    let (before_fragment, fragment) = match rest.find('#') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match before_fragment.split_once('?') {
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            for (i, pair) in query.split('&').enumerate() {
                if i > 0 {
                    out.push('&');
                }
                let key = pair.split_once('=').map_or(pair, |(k, _)| k);
                if !pair.is_empty() {
                    out.push_str(key);
                    out.push('=');
                    out.push_str(REDACTED);
                }
            }
        }
        None => out.push_str(before_fragment),
    }
    out.push_str(fragment);
    out
}

/// `text` with every `http://` and `https://` URL in it redacted as by [`redact_url`]. A URL
/// ends at whitespace, a quote, or a closing bracket.
pub fn redact_urls_in(text: &str) -> Cow<'_, str> {
    if !text.contains("://") {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = find_url(rest) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| c.is_whitespace() || "\"'`<>()[]{}".contains(c))
            .unwrap_or(tail.len());
        out.push_str(&redact_url(&tail[..end]));
        rest = &tail[end..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

fn find_url(text: &str) -> Option<usize> {
    let lower = text.to_ascii_lowercase();
    match (lower.find("http://"), lower.find("https://")) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A connector's secret values: those substituted from `${…}` references anywhere in its
/// settings, its header values (and their last word, the token of `Bearer …`), the userinfo
/// and query values of its URL, and its `env` values that look like credentials. Cheap to clone;
/// `Debug` shows only how many there are.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secrets(Arc<[String]>);

impl Secrets {
    /// The values worth scrubbing (at least four characters), longest first so that a value
    /// containing another is replaced whole.
    pub fn new(values: impl IntoIterator<Item = String>) -> Self {
        let mut v: Vec<String> = values
            .into_iter()
            .filter(|s| s.len() >= MIN_SECRET_LEN)
            .collect();
        v.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        v.dedup();
        Self(v.into())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `text` with URLs redacted and every secret value replaced by `***`.
    pub fn scrub<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = redact_urls_in(text);
        for s in self.0.iter() {
            if out.contains(s.as_str()) {
                out = Cow::Owned(out.replace(s.as_str(), REDACTED));
            }
        }
        out
    }

    /// Like [`Secrets::scrub`], for text from outside (an error body, a stderr line): also cut
    /// to `max` characters, with `…` when cut, and with control characters escaped (`\n`), so
    /// an upstream cannot forge log lines. Cutting happens after scrubbing, so a secret
    /// straddling the cut is never shown in part.
    pub fn scrub_preview(&self, text: &str, max: usize) -> String {
        let scrubbed = self.scrub(text);
        let mut p = String::with_capacity(max.min(scrubbed.len()) + 4);
        for (i, c) in scrubbed.chars().enumerate() {
            if i == max {
                p.push('…');
                break;
            }
            // One log line stays one line: a control character is shown escaped.
            if c.is_control() {
                p.extend(c.escape_default());
            } else {
                p.push(c);
            }
        }
        p
    }
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secrets({} values)", self.0.len())
    }
}

/// Whether an `env` key names a credential (`GITHUB_TOKEN`, `API_KEY`, `DB_PASSWORD`, …).
pub(crate) fn secret_name(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    [
        "TOKEN",
        "KEY",
        "SECRET",
        "PASS",
        "AUTH",
        "CREDENTIAL",
        "COOKIE",
        "SESSION",
        "PRIVATE",
    ]
    .iter()
    .any(|w| n.contains(w))
}

/// Whether a command-line argument looks like it carries a credential (`--token=…`,
/// `--api-key`, `password=…`).
pub(crate) fn secret_arg(arg: &str) -> bool {
    let a = arg.to_ascii_lowercase();
    [
        "token",
        "key",
        "secret",
        "passw",
        "auth",
        "credential",
        "bearer",
        "cookie",
    ]
    .iter()
    .any(|w| a.contains(w))
}

/// The values of a URL's userinfo (user and password) and query parameters.
pub(crate) fn url_secrets(url: &str) -> Vec<String> {
    let mut out = Vec::new();
    let Some((_, rest)) = url.split_once("://") else {
        return out;
    };
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    if let Some(at) = authority.rfind('@') {
        let info = &authority[..at];
        match info.split_once(':') {
            Some((user, pass)) => {
                out.push(user.to_owned());
                out.push(pass.to_owned());
            }
            None => out.push(info.to_owned()),
        }
    }
    let query = rest
        .split_once('?')
        .map(|(_, q)| q.split('#').next().unwrap_or(""));
    for pair in query.unwrap_or("").split('&') {
        let value = pair.split_once('=').map_or(pair, |(_, v)| v);
        if !value.is_empty() {
            out.push(value.to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_userinfo_and_query_values() {
        assert_eq!(
            redact_url("http://user:PASS@127.0.0.1:1/mcp?api_key=KEY&flag#frag"),
            "http://***@127.0.0.1:1/mcp?api_key=***&flag=***#frag"
        );
        assert_eq!(
            redact_url("https://example.test/mcp"),
            "https://example.test/mcp"
        );
        assert_eq!(redact_url("http://tok@h?"), "http://***@h?");
        // An '@' in the path is not userinfo.
        assert_eq!(redact_url("http://h/a@b"), "http://h/a@b");
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[test]
    fn urls_inside_text_are_redacted() {
        let text = "error sending request for url (http://u:PASS@h:1/mcp?k=KEY): refused; \
                    GET HTTPS://x:y@z/ failed";
        assert_eq!(
            redact_urls_in(text),
            "error sending request for url (http://***@h:1/mcp?k=***): refused; \
             GET HTTPS://***@z/ failed"
        );
        assert!(matches!(redact_urls_in("no urls"), Cow::Borrowed(_)));
    }

    #[test]
    fn scrub_replaces_values_longest_first_and_skips_short_ones() {
        let s = Secrets::new(["tok".into(), "abcd".into(), "abcdef".into()]);
        assert_eq!(s.len(), 2);
        assert_eq!(s.scrub("x abcdef y abcd z tok"), "x *** y *** z tok");
        assert_eq!(
            s.scrub_preview(&format!("{}abcdef", "a".repeat(10)), 12),
            "aaaaaaaaaa**…"
        );
        assert_eq!(s.scrub_preview("a\nb\x1b[31m", 10), "a\\nb\\u{1b}[31m");
        assert_eq!(format!("{s:?}"), "Secrets(2 values)");
    }

    #[test]
    fn url_secret_values() {
        assert_eq!(
            url_secrets("http://user:PASS@h/p?api_key=KEY&x=&y"),
            ["user", "PASS", "KEY", "y"]
        );
        assert!(url_secrets("http://h/p").is_empty());
    }

    #[test]
    fn secret_names_and_args() {
        assert!(secret_name("GITHUB_TOKEN") && secret_name("api_key") && !secret_name("PATH"));
        assert!(secret_arg("--token=x") && secret_arg("--api-key") && !secret_arg("--port"));
    }
}
