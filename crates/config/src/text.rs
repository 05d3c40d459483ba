//! Locating things in the config text for error messages, serde's messages reworded to name
//! the key, `${…}` expansion and "did you mean".

use std::{ops::Range, path::Path};

use toml::{
    Spanned,
    de::{DeTable, DeValue},
};

use crate::{ConfigError, Env, redact};

/// A position rendered as `file:line:col`, with its byte offset (errors are sorted by it).
pub struct Located {
    offset: Option<usize>,
    text: String,
}

impl Located {
    pub fn err(&self, msg: String) -> ConfigError {
        ConfigError {
            offset: self.offset,
            text: format!("{}: {msg}", self.text),
        }
    }
}

pub struct Source<'a> {
    pub path: &'a Path,
    pub text: &'a str,
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
        let text = match offset {
            Some(o) => {
                let (line, col) = self.position(o);
                format!("{}:{line}:{col}", self.path.display())
            }
            None => self.path.display().to_string(),
        };
        Located { offset, text }
    }

    /// The file as a whole (no line: the problem is not at one place).
    pub fn file(&self) -> Located {
        self.located(None)
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

    /// Render a TOML syntax error as `file:line:col: message`.
    pub fn toml_error(&self, e: &toml::de::Error) -> ConfigError {
        self.located(e.span().map(|s| s.start))
            .err(e.message().trim().to_owned())
    }

    /// Render a serde error from deserialising part of the file as `file:line:col: message`,
    /// naming the key it is about (found in `keys` by the error's span) and in the file's
    /// words: "connectors.time.args: expected a list of strings, found a string \"x\"".
    pub fn serde_error(&self, e: &toml::de::Error, keys: &KeyPaths) -> ConfigError {
        let at = self.located(e.span().map(|s| s.start));
        let msg = e.message().trim();
        if let Some(rest) = msg.strip_prefix("unknown field `") {
            let place = e
                .span()
                .and_then(|s| keys.key_at(&s).or_else(|| keys.value_at(&s)));
            // "unknown field `comand` in `connectors.slack`, expected one of …" + a suggestion.
            let hint = unknown_key_hint(msg);
            let msg = match (place, rest.split_once('`')) {
                (Some(Place::Key { table }), Some((bad, after))) if !table.is_empty() => {
                    format!("unknown field `{bad}` in `{table}`{after}")
                }
                _ => msg.to_owned(),
            };
            return at.err(format!("{msg}{hint}"));
        }
        let place = e
            .span()
            .and_then(|s| keys.value_at(&s).or_else(|| keys.key_at(&s)));
        let msg = reword(msg, place.as_ref());
        match place {
            Some(Place::Value { path }) => at.err(format!("{path}: {msg}")),
            Some(Place::Key { table }) if !table.is_empty() => at.err(format!("{table}: {msg}")),
            _ => at.err(msg),
        }
    }

    /// A top-level key that is not `gateway`, `store`, `connectors` or `servers`, worded like serde's.
    pub fn unknown_top_level_key(&self, key: &Spanned<impl AsRef<str>>) -> ConfigError {
        let msg = format!(
            "unknown field `{}`, expected one of `gateway`, `store`, `auth`, `connectors`, `servers`, `roles`, `groups`, `policy`",
            key.get_ref().as_ref()
        );
        let hint = unknown_key_hint(&msg);
        self.at(key).err(format!("{msg}{hint}"))
    }
}

/// The dotted path (`connectors.time.args[0]`) of every key and value in the file, by span.
pub struct KeyPaths(Vec<Entry>);

struct Entry {
    /// `None` for an array element.
    key: Option<Range<usize>>,
    value: Range<usize>,
    path: String,
    table: String,
}

/// What a span points at: a key (serde then complains about the table holding it) or a value.
enum Place {
    Key { table: String },
    Value { path: String },
}

impl KeyPaths {
    pub fn of(root: &DeTable<'_>) -> Self {
        let mut entries = Vec::new();
        walk_table(root, "", &mut entries);
        Self(entries)
    }

    /// The key at `span`: serde points at a key it does not know.
    fn key_at(&self, span: &Range<usize>) -> Option<Place> {
        let e = self.0.iter().find(|e| e.key.as_ref() == Some(span))?;
        Some(Place::Key {
            table: e.table.clone(),
        })
    }

    /// The value at `span`: serde points at a value of the wrong type, or at a table that lacks
    /// a key. An implicit table (`servers.s` of a lone `[servers.s.curation.x]`) has its key's
    /// span, and so do the implicit tables inside it: the outermost is the one a missing key
    /// belongs to.
    fn value_at(&self, span: &Range<usize>) -> Option<Place> {
        let e = self
            .0
            .iter()
            .filter(|e| e.value == *span)
            .min_by_key(|e| e.path.len())?;
        Some(Place::Value {
            path: e.path.clone(),
        })
    }
}

fn walk_table(table: &DeTable<'_>, path: &str, out: &mut Vec<Entry>) {
    for (k, v) in table {
        let name = quote_key(k.get_ref());
        let child = if path.is_empty() {
            name
        } else {
            format!("{path}.{name}")
        };
        out.push(Entry {
            key: Some(k.span()),
            value: v.span(),
            path: child.clone(),
            table: path.to_owned(),
        });
        walk_value(v.get_ref(), &child, out);
    }
}

fn walk_value(value: &DeValue<'_>, path: &str, out: &mut Vec<Entry>) {
    match value {
        DeValue::Table(t) => walk_table(t, path, out),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let child = format!("{path}[{i}]");
                out.push(Entry {
                    key: None,
                    value: item.span(),
                    path: child.clone(),
                    table: path.to_owned(),
                });
                walk_value(item.get_ref(), &child, out);
            }
        }
        _ => {}
    }
}

/// A key as written in a dotted path: bare when it can be, else quoted.
fn quote_key(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

/// serde's "invalid type: string \"x\", expected a sequence" in the file's words: "expected a
/// list of strings, found a string \"x\"". Other messages pass through.
fn reword(msg: &str, place: Option<&Place>) -> String {
    if let Some(field) = msg.strip_prefix("missing field ") {
        return format!("missing required key {field}");
    }
    let rest = msg
        .strip_prefix("invalid type: ")
        .or_else(|| msg.strip_prefix("invalid value: "));
    // The found part may quote a string holding ", expected ": the expected part never does.
    let Some((found, expected)) = rest.and_then(|r| r.rsplit_once(", expected ")) else {
        return msg.to_owned();
    };
    let path = match place {
        Some(Place::Value { path }) => path.as_str(),
        _ => "",
    };
    format!(
        "expected {}, found {}",
        expected_words(expected),
        found_words(found, path)
    )
}

fn expected_words(expected: &str) -> String {
    match expected {
        // Every list in the file is a list of strings (raw.rs; a test keeps it so).
        "a sequence" => "a list of strings".to_owned(),
        "a map" => "a table".to_owned(),
        "a boolean" => "true or false".to_owned(),
        "u32" => "a whole number from 0 to 4294967295".to_owned(),
        "u64" => "a whole number, 0 or more".to_owned(),
        s if s.starts_with("struct ") => "a table".to_owned(),
        s => s.to_owned(),
    }
}

/// serde's `Unexpected` as a phrase; a string is quoted unless it may be a secret (a value
/// under `env` or `headers`, or an argument like `--token=…`).
fn found_words(found: &str, path: &str) -> String {
    if let Some(s) = found.strip_prefix("string ") {
        let unquoted = s.trim_matches('"');
        let secret =
            path.split('.').any(|k| k == "env" || k == "headers") || redact::secret_arg(unquoted);
        return if secret {
            "a string (not shown: it may be a secret)".to_owned()
        } else {
            format!("a string {s}")
        };
    }
    let plain = |kind: &str, rest: &str| format!("{kind} {}", rest.trim_matches('`'));
    match found.split_once(' ') {
        Some(("integer", v)) => plain("an integer", v),
        Some(("floating", v)) => plain("a float", v.trim_start_matches("point ")),
        Some(("boolean", v)) => plain("a boolean", v),
        _ => match found {
            "sequence" => "a list".to_owned(),
            "map" => "a table".to_owned(),
            other => other.to_owned(),
        },
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
    for piece in pieces(input)? {
        let reference = match piece {
            Piece::Text(t) => {
                out.push_str(t);
                continue;
            }
            Piece::Dollar => {
                out.push('$');
                continue;
            }
            Piece::Reference(r) => r,
        };
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
        let (name, default) = split_reference(reference).ok_or_else(|| {
            format!(
                "${{{reference}}} is not a valid reference: use ${{NAME}}, ${{NAME:-default}} or ${{file:PATH}}"
            )
        })?;
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
    Ok(out)
}

/// A piece of a config string: text, an escaped `$$`, or the inside of a `${…}` reference.
pub(crate) enum Piece<'a> {
    Text(&'a str),
    Dollar,
    Reference(&'a str),
}

/// `input` cut at its references (the one tokenizer of `${…}`, for expansion and `import`); an
/// error for a reference without its closing brace.
pub(crate) fn pieces(input: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        if i > 0 {
            out.push(Piece::Text(&rest[..i]));
        }
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push(Piece::Dollar);
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body.find('}').ok_or_else(|| {
                format!("unterminated reference in {input:?}: add the closing '}}'")
            })?;
            out.push(Piece::Reference(&body[..end]));
            rest = &body[end + 1..];
        } else {
            out.push(Piece::Text("$"));
            rest = after;
        }
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    Ok(out)
}

/// A variable reference's name and default (`NAME`, `NAME:-default`), if the name is valid.
pub(crate) fn split_reference(reference: &str) -> Option<(&str, Option<&str>)> {
    let (name, default) = match reference.split_once(":-") {
        Some((n, d)) => (n, Some(d)),
        None => (reference, None),
    };
    (!name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .then_some((name, default))
}
