//! SEP-2243 `Mcp-Param-*` headers of a 2026-07-28 `tools/call`: an argument whose schema
//! property carries an `x-mcp-header` annotation is repeated as a header, so that
//! intermediaries can route without parsing the body. The connector builds them for modern
//! upstreams (which refuse a call that lacks them); the gateway checks a client's against the
//! body of its call, the same way.

use base64::{Engine, prelude::BASE64_STANDARD};
use serde_json::{Map, Value};

const B64_PREFIX: &str = "=?base64?";
const B64_SUFFIX: &str = "?=";

/// The annotated arguments of `arguments` under `schema`: (`Mcp-Param-…` header name, the
/// argument's value as text). Absent, null and non-primitive arguments have none.
fn values(schema: &Map<String, Value>, arguments: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (path, header) in annotations(schema) {
        let value = path
            .iter()
            .try_fold(arguments, |v, k| v.get(k))
            .and_then(primitive);
        if let Some(v) = value {
            out.push((format!("Mcp-Param-{header}"), v));
        }
    }
    out
}

/// The headers for `arguments` under `schema` (the upstream tool's `inputSchema`), encoded.
pub(crate) fn param_headers(
    schema: &Map<String, Value>,
    arguments: &Value,
) -> Vec<(String, String)> {
    values(schema, arguments)
        .into_iter()
        .map(|(h, v)| (h, encode(&v)))
        .collect()
}

/// Every `Mcp-Param-…` header name `schema` annotates, for checking a call's headers.
pub fn param_header_names(schema: &Map<String, Value>) -> Vec<String> {
    annotations(schema)
        .into_iter()
        .map(|(_, h)| format!("Mcp-Param-{h}"))
        .collect()
}

/// Check a client's `Mcp-Param-*` headers against its call: every annotated argument present
/// in `arguments` has its header with the same value, and no header names an absent one.
/// `header` returns a header's only value (an error for duplicates or bad bytes).
pub fn check_param_headers<'h>(
    schema: &Map<String, Value>,
    arguments: &Value,
    header: impl Fn(&str) -> Result<Option<&'h str>, String>,
) -> Result<(), String> {
    let present = values(schema, arguments);
    for name in param_header_names(schema) {
        let got = header(&name)?;
        let want = present.iter().find(|(h, _)| *h == name).map(|(_, v)| v);
        match (got, want) {
            (None, None) => {}
            (Some(_), None) => {
                return Err(format!(
                    "{name} header given for an absent or null argument"
                ));
            }
            (None, Some(_)) => return Err(format!("missing {name} header")),
            (Some(raw), Some(want)) => {
                let got = decode_header_value(raw)
                    .ok_or_else(|| format!("{name} header is not valid base64"))?;
                if got != *want {
                    return Err(format!(
                        "{name} header {got:?} does not match the argument's value {want:?}"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Annotations sit on properties reached from the root through `properties` alone: (path of
/// property names, header name).
fn annotations(schema: &Map<String, Value>) -> Vec<(Vec<&str>, &str)> {
    let mut out = Vec::new();
    walk(schema, &mut Vec::new(), &mut out);
    out
}

fn walk<'a>(
    schema: &'a Map<String, Value>,
    path: &mut Vec<&'a str>,
    out: &mut Vec<(Vec<&'a str>, &'a str)>,
) {
    let Some(Value::Object(props)) = schema.get("properties") else {
        return;
    };
    for (name, sub) in props {
        let Value::Object(sub) = sub else { continue };
        path.push(name);
        if let Some(Value::String(header)) = sub.get("x-mcp-header")
            && !header.is_empty()
        {
            out.push((path.clone(), header));
        }
        walk(sub, path, out);
        path.pop();
    }
}

fn primitive(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A value that cannot travel as a bare header value (surrounding blanks, control or
/// non-ASCII characters, or one that looks like the wrapper) is sent as `=?base64?…?=`.
fn encode(value: &str) -> String {
    let b = value.as_bytes();
    let wrap = matches!(b.first(), Some(b' ' | b'\t'))
        || matches!(b.last(), Some(b' ' | b'\t'))
        || value
            .chars()
            .any(|c| (c as u32) < 0x20 || (c as u32) > 0x7e)
        || (value.starts_with(B64_PREFIX) && value.ends_with(B64_SUFFIX));
    if wrap {
        format!("{B64_PREFIX}{}{B64_SUFFIX}", BASE64_STANDARD.encode(value))
    } else {
        value.to_owned()
    }
}

/// A header value as text: `=?base64?…?=` unwrapped, anything else as is. `None` for a wrapper
/// around invalid base64 or UTF-8.
pub fn decode_header_value(value: &str) -> Option<String> {
    match value
        .strip_prefix(B64_PREFIX)
        .and_then(|v| v.strip_suffix(B64_SUFFIX))
    {
        Some(inner) => String::from_utf8(BASE64_STANDARD.decode(inner).ok()?).ok(),
        None => Some(value.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Map<String, Value> {
        let Value::Object(schema) = json!({"type": "object", "properties": {
            "region": {"type": "string", "x-mcp-header": "Region"},
            "n": {"type": "integer", "x-mcp-header": "N"},
            "plain": {"type": "string"},
            "nested": {"type": "object", "properties": {"id": {"type": "string", "x-mcp-header": "Id"}}}
        }}) else {
            unreachable!()
        };
        schema
    }

    #[test]
    fn annotated_arguments_become_headers() {
        let h = param_headers(
            &schema(),
            &json!({"region": "eu-west", "n": 3, "plain": "x", "nested": {"id": " padded"}}),
        );
        // In any order (the schema's, as the JSON map keeps it).
        let mut h = h;
        h.sort();
        assert_eq!(
            h,
            vec![
                (
                    "Mcp-Param-Id".to_owned(),
                    "=?base64?IHBhZGRlZA==?=".to_owned()
                ),
                ("Mcp-Param-N".to_owned(), "3".to_owned()),
                ("Mcp-Param-Region".to_owned(), "eu-west".to_owned()),
            ]
        );
        assert_eq!(encode("日本"), "=?base64?5pel5pys?=");
        assert_eq!(decode_header_value("=?base64?5pel5pys?=").unwrap(), "日本");
        assert!(decode_header_value("=?base64?!!?=").is_none());
        assert!(param_headers(&schema(), &json!({})).is_empty());
    }

    #[test]
    fn a_clients_headers_must_match_its_arguments() {
        let args = json!({"region": "eu-west", "nested": {"id": " padded"}});
        let ok = |name: &str| -> Result<Option<&'static str>, String> {
            Ok(match name {
                "Mcp-Param-Region" => Some("eu-west"),
                "Mcp-Param-Id" => Some("=?base64?IHBhZGRlZA==?="),
                _ => None,
            })
        };
        assert_eq!(check_param_headers(&schema(), &args, ok), Ok(()));
        let missing = |name: &str| -> Result<Option<&'static str>, String> {
            Ok((name == "Mcp-Param-Region").then_some("eu-west"))
        };
        let e = check_param_headers(&schema(), &args, missing).unwrap_err();
        assert!(e.contains("missing Mcp-Param-Id"), "{e}");
        let wrong = |name: &str| -> Result<Option<&'static str>, String> {
            Ok(match name {
                "Mcp-Param-Region" => Some("us-east"),
                "Mcp-Param-Id" => Some(" padded"),
                _ => None,
            })
        };
        let e = check_param_headers(&schema(), &args, wrong).unwrap_err();
        assert!(e.contains("does not match"), "{e}");
        let extra = |name: &str| -> Result<Option<&'static str>, String> {
            Ok(match name {
                "Mcp-Param-Region" => Some("eu-west"),
                "Mcp-Param-Id" => Some("=?base64?IHBhZGRlZA==?="),
                "Mcp-Param-N" => Some("3"),
                _ => None,
            })
        };
        let e = check_param_headers(&schema(), &args, extra).unwrap_err();
        assert!(e.contains("absent"), "{e}");
    }
}
