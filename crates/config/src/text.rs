//! Locating things in the config text for error messages, `${…}` expansion and "did you mean".

use std::path::Path;

use toml::Spanned;

use crate::{ConfigError, Env};

/// A position rendered as `file:line:col`.
pub struct Located(pub String);

pub struct Source<'a> {
    pub path: &'a Path,
    text: &'a str,
}

impl<'a> Source<'a> {
    pub fn new(path: &'a Path, text: &'a str) -> Self {
        Self { path, text }
    }

    fn position(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        (line, col)
    }

    fn located(&self, offset: Option<usize>) -> Located {
        match offset {
            Some(o) => {
                let (line, col) = self.position(o);
                Located(format!("{}:{line}:{col}", self.path.display()))
            }
            None => Located(self.path.display().to_string()),
        }
    }

    pub fn at<T>(&self, v: &Spanned<T>) -> Located {
        self.located(Some(v.span().start))
    }

    /// The header line of a table such as `[connectors.slack]` (quoted keys accepted), or the
    /// first line mentioning the last key for inline and dotted forms.
    pub fn table(&self, keys: &[&str]) -> Located {
        let mut offset = 0;
        for line in self.text.split_inclusive('\n') {
            let t = line.trim();
            if t.starts_with('[') && !t.starts_with("[[") {
                let inner = t.trim_start_matches('[').split(']').next().unwrap_or("");
                let parts: Vec<String> = inner
                    .split('.')
                    .map(|p| p.trim().trim_matches('"').trim_matches('\'').to_owned())
                    .collect();
                if parts.iter().map(String::as_str).eq(keys.iter().copied()) {
                    return self.located(Some(offset));
                }
            }
            offset += line.len();
        }
        let last = keys.last().copied().unwrap_or_default();
        self.located(self.text.find(last))
    }

    /// Render a TOML/serde error as `file:line:col: message`, with a suggestion for unknown keys.
    pub fn toml_error(&self, e: &toml::de::Error) -> ConfigError {
        let at = self.located(e.span().map(|s| s.start));
        let msg = e.message().trim().to_owned();
        let hint = unknown_key_hint(&msg);
        ConfigError(format!("{}: {msg}{hint}", at.0))
    }
}

/// serde says "unknown field `comand`, expected one of `kind`, `command`, …"; add the closest.
fn unknown_key_hint(msg: &str) -> String {
    let Some(rest) = msg.strip_prefix("unknown field `") else {
        return String::new();
    };
    let Some((bad, expected)) = rest.split_once('`') else {
        return String::new();
    };
    let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    suggest(bad, &candidates)
}

/// ` (did you mean "x"?)` when one candidate is close enough, else empty.
pub fn suggest(bad: &str, candidates: &[&str]) -> String {
    candidates
        .iter()
        .map(|c| (distance(bad, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min()
        .map(|(_, c)| format!(" (did you mean {c:?}?)"))
        .unwrap_or_default()
}

/// Levenshtein distance; config keys are short, so the quadratic table is fine.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Expand `${NAME}`, `${NAME:-default}` and `${file:PATH}` (relative to the config file).
/// `$$` is a literal `$`. Each substituted value is pushed to `substituted` (they are the
/// connector's secrets).
pub fn expand(
    input: &str,
    env: &dyn Env,
    config_path: &Path,
    substituted: &mut Vec<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
            continue;
        }
        let Some(body) = after.strip_prefix('{') else {
            out.push('$');
            rest = after;
            continue;
        };
        let Some(end) = body.find('}') else {
            return Err(format!(
                "unterminated reference in {input:?}: add the closing '}}'"
            ));
        };
        let reference = &body[..end];
        rest = &body[end + 1..];
        if let Some(file) = reference.strip_prefix("file:") {
            let p = Path::new(file);
            let p = if p.is_relative() {
                config_path.parent().unwrap_or(Path::new(".")).join(p)
            } else {
                p.to_path_buf()
            };
            let content = std::fs::read_to_string(&p)
                .map_err(|e| format!("cannot read secret file {}: {e}", p.display()))?;
            let value = content.trim_end_matches(['\n', '\r']);
            out.push_str(value);
            substituted.push(value.to_owned());
            continue;
        }
        let (name, default) = match reference.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (reference, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "${{{reference}}} is not a valid reference: use ${{NAME}}, ${{NAME:-default}} or ${{file:PATH}}"
            ));
        }
        match (env.var(name), default) {
            (Some(v), _) => {
                out.push_str(&v);
                substituted.push(v);
            }
            (None, Some(d)) => {
                out.push_str(d);
                substituted.push(d.to_owned());
            }
            (None, None) => {
                return Err(format!(
                    "environment variable {name} is not set: export it, or write ${{{name}:-default}}"
                ));
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}
