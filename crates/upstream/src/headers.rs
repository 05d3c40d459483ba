//! SEP-2243 `Mcp-Param-*` headers for a `tools/call` to a 2026-07-28 upstream over HTTP: an
//! argument whose schema property carries an `x-mcp-header` annotation is repeated as a header,
//! so that intermediaries can route without parsing the body. The upstream checks them against
//! the body and refuses a call that lacks them.

use base64::{Engine, prelude::BASE64_STANDARD};
use serde_json::{Map, Value};

/// The headers for `arguments` under `schema` (the upstream tool's `inputSchema`).
pub(crate) fn param_headers(
    schema: &Map<String, Value>,
    arguments: &Value,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    walk(schema, arguments, &mut out);
    out
}

/// Annotations sit on properties reached from the root through `properties` alone.
fn walk(schema: &Map<String, Value>, value: &Value, out: &mut Vec<(String, String)>) {
    let Some(Value::Object(props)) = schema.get("properties") else {
        return;
    };
    for (name, sub) in props {
        let (Value::Object(sub), Some(v)) = (sub, value.get(name)) else {
            continue;
        };
        if let Some(Value::String(header)) = sub.get("x-mcp-header")
            && !header.is_empty()
            && let Some(text) = primitive(v)
        {
            out.push((format!("Mcp-Param-{header}"), encode(&text)));
        }
        walk(sub, v, out);
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

const B64_PREFIX: &str = "=?base64?";
const B64_SUFFIX: &str = "?=";

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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn annotated_arguments_become_headers() {
        let schema = json!({"type": "object", "properties": {
            "region": {"type": "string", "x-mcp-header": "Region"},
            "n": {"type": "integer", "x-mcp-header": "N"},
            "plain": {"type": "string"},
            "nested": {"type": "object", "properties": {"id": {"type": "string", "x-mcp-header": "Id"}}}
        }});
        let Value::Object(schema) = schema else {
            unreachable!()
        };
        let h = param_headers(
            &schema,
            &json!({"region": "eu-west", "n": 3, "plain": "x", "nested": {"id": " padded"}}),
        );
        assert_eq!(
            h,
            vec![
                ("Mcp-Param-N".to_owned(), "3".to_owned()),
                (
                    "Mcp-Param-Id".to_owned(),
                    "=?base64?IHBhZGRlZA==?=".to_owned()
                ),
                ("Mcp-Param-Region".to_owned(), "eu-west".to_owned()),
            ]
        );
        assert_eq!(encode("日本"), "=?base64?5pel5pys?=");
        assert!(param_headers(&schema, &json!({})).is_empty());
    }
}
