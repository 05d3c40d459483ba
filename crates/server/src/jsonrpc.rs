//! JSON-RPC on the wire: the one validation of an incoming message (the spec's, on every path),
//! the messages the gateway writes, and the one mapping from failures to JSON-RPC errors and
//! HTTP statuses.

use std::borrow::Cow;

use axum::http::StatusCode;
use manifold_router::RouteError;
use manifold_upstream::UpstreamError;
use rmcp::model::ErrorData;
use serde_json::value::RawValue;

/// One incoming message, borrowed from the request body.
pub(crate) enum Incoming<'a> {
    Request {
        id: &'a RawValue,
        method: Cow<'a, str>,
        params: Option<&'a RawValue>,
    },
    Notification {
        method: Cow<'a, str>,
        params: Option<&'a RawValue>,
    },
    /// The client's answer to a request the gateway relayed to it.
    Response {
        id: &'a RawValue,
        result: Result<&'a RawValue, ErrorData>,
    },
}

/// A message refused before any method ran: the error and the id to answer with (`null` when
/// none could be read).
#[derive(Debug)]
pub(crate) struct Refusal {
    pub id: Option<Box<RawValue>>,
    pub error: ErrorData,
}

impl Refusal {
    fn new(id: Option<&RawValue>, error: ErrorData) -> Self {
        Self {
            id: id.map(ToOwned::to_owned),
            error,
        }
    }

    /// The HTTP answer: 400 with the JSON-RPC error.
    pub fn message(&self) -> String {
        let null = RawValue::NULL;
        error_message(self.id.as_deref().unwrap_or(null), &self.error)
    }
}

/// Parse and validate one JSON-RPC 2.0 message: an object with `"jsonrpc": "2.0"`; an id that
/// is a string or an integer (never null, fractional, boolean or structured); a string method;
/// params, if any, an object; a response with exactly one of `result` and `error`.
pub(crate) fn parse(body: &[u8]) -> Result<Incoming<'_>, Refusal> {
    #[derive(serde::Deserialize)]
    struct Envelope<'a> {
        #[serde(borrow)]
        jsonrpc: Option<&'a RawValue>,
        // Present, even as null (which a plain Option would hide).
        #[serde(borrow, default, deserialize_with = "present")]
        id: Option<&'a RawValue>,
        #[serde(borrow)]
        method: Option<&'a RawValue>,
        #[serde(borrow)]
        params: Option<&'a RawValue>,
        #[serde(borrow)]
        result: Option<&'a RawValue>,
        #[serde(borrow)]
        error: Option<&'a RawValue>,
    }
    let invalid = |id: Option<&RawValue>, why: &str| {
        Refusal::new(id, ErrorData::invalid_request(why.to_owned(), None))
    };
    let text = std::str::from_utf8(body)
        .map_err(|_| Refusal::new(None, parse_error("the body is not valid UTF-8")))?;
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        return Err(invalid(
            None,
            "JSON-RPC batches are not supported: send one message per request",
        ));
    }
    if !trimmed.starts_with('{') {
        // Not an object: is it JSON at all?
        return Err(match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Ok(_) => invalid(None, "a JSON-RPC message must be an object"),
            Err(e) => Refusal::new(None, parse_error(&format!("the body is not JSON: {e}"))),
        });
    }
    let env: Envelope = serde_json::from_str(text).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            Refusal::new(None, parse_error(&format!("the body is not JSON: {e}")))
        } else {
            invalid(None, &format!("not a JSON-RPC message: {e}"))
        }
    })?;
    let id = match env.id {
        Some(id) if id.get() == "null" => None,
        other => other,
    };
    if let Some(id) = id
        && !valid_id(id.get())
    {
        return Err(invalid(
            None,
            "a JSON-RPC id must be a string or an integer",
        ));
    }
    if env.jsonrpc.map(RawValue::get) != Some("\"2.0\"") {
        return Err(invalid(id, "\"jsonrpc\" must be \"2.0\""));
    }
    if let Some(p) = env.params
        && !p.get().trim_start().starts_with('{')
    {
        return Err(Refusal::new(
            id,
            ErrorData::invalid_params("params must be an object", None),
        ));
    }
    match (env.method, id, env.result, env.error) {
        (Some(m), id, None, None) => {
            let method: Cow<str> = serde_json::from_str(m.get())
                .map_err(|_| invalid(id, "\"method\" must be a string"))?;
            Ok(match id {
                Some(id) => Incoming::Request {
                    id,
                    method,
                    params: env.params,
                },
                None if env.id.is_some() => {
                    return Err(invalid(None, "a request's id must not be null"));
                }
                None => Incoming::Notification {
                    method,
                    params: env.params,
                },
            })
        }
        (None, Some(id), Some(r), None) => Ok(Incoming::Response { id, result: Ok(r) }),
        (None, Some(id), None, Some(e)) => {
            let e: ErrorData = serde_json::from_str(e.get())
                .map_err(|_| invalid(Some(id), "\"error\" must be a JSON-RPC error object"))?;
            Ok(Incoming::Response { id, result: Err(e) })
        }
        (None, _, None, None) => Err(invalid(id, "a JSON-RPC message needs a \"method\"")),
        _ => Err(invalid(
            id,
            "a JSON-RPC message has a method, or exactly one of \"result\" and \"error\"",
        )),
    }
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue as serde::Deserialize>::deserialize(d).map(Some)
}

/// A string, or an integer without fraction or exponent that fits 64 bits.
fn valid_id(text: &str) -> bool {
    if text.starts_with('"') {
        return true;
    }
    let digits = text.strip_prefix('-').unwrap_or(text);
    !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (text.parse::<i64>().is_ok() || text.parse::<u64>().is_ok())
}

fn parse_error(why: &str) -> ErrorData {
    ErrorData::new(rmcp::model::ErrorCode::PARSE_ERROR, why.to_owned(), None)
}

pub(crate) fn result_message(id: &RawValue, result: &str) -> String {
    let mut out = String::with_capacity(result.len() + id.get().len() + 32);
    out.push_str("{\"jsonrpc\":\"2.0\",\"id\":");
    out.push_str(id.get());
    out.push_str(",\"result\":");
    out.push_str(result);
    out.push('}');
    out
}

pub(crate) fn error_message(id: &RawValue, e: &ErrorData) -> String {
    let e = serde_json::to_string(e).expect("an error serialises");
    format!("{{\"jsonrpc\":\"2.0\",\"id\":{},\"error\":{e}}}", id.get())
}

pub(crate) fn notification(method: &str, params: impl serde::Serialize) -> String {
    serde_json::json!({ "jsonrpc": "2.0", "method": method, "params": params }).to_string()
}

pub(crate) fn request(id: &str, method: &str, params: &serde_json::Value) -> String {
    serde_json::json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params })
        .to_string()
}

/// The one mapping from routing and upstream failures to JSON-RPC errors. A connector that is
/// down is named, so users know which one; upstream JSON-RPC errors pass through unchanged.
pub fn to_error(e: RouteError) -> ErrorData {
    match e {
        RouteError::UnknownTool(n) => ErrorData::invalid_params(format!("unknown tool: {n}"), None),
        RouteError::UnknownPrompt(n) => {
            ErrorData::invalid_params(format!("unknown prompt: {n}"), None)
        }
        RouteError::UnknownResource(u) => ErrorData::invalid_params(
            format!("resource not found: {u}"),
            Some(serde_json::json!({ "uri": u })),
        ),
        RouteError::InvalidCursor(c) => ErrorData::invalid_params(
            format!("invalid cursor {c:?}: list again without a cursor"),
            None,
        ),
        RouteError::InvalidParams(m) => ErrorData::invalid_params(m, None),
        RouteError::Gateway(m) => ErrorData::internal_error(m, None),
        RouteError::Superseded(_) => ErrorData::internal_error(
            "the gateway's configuration was reloaded during the request; send it again",
            None,
        ),
        RouteError::Upstream { connector, error } => match *error {
            UpstreamError::Protocol(data) => data,
            UpstreamError::Unavailable(m) => ErrorData::internal_error(
                format!("{m}; the other connectors keep working"),
                Some(serde_json::json!({ "connector": connector.as_str() })),
            ),
            UpstreamError::Timeout(d) => ErrorData::internal_error(
                format!(
                    "connector {:?} did not answer within {d:?}",
                    connector.as_str()
                ),
                Some(serde_json::json!({ "connector": connector.as_str() })),
            ),
            UpstreamError::Cancelled => ErrorData::internal_error("request cancelled", None),
            UpstreamError::BadResult(m) => ErrorData::internal_error(
                format!("connector {:?}: {m}", connector.as_str()),
                Some(serde_json::json!({ "connector": connector.as_str() })),
            ),
        },
    }
}

/// Whose fault an error answer was, for the audit trail.
pub(crate) fn fault_of(e: &ErrorData, upstream: bool) -> manifold_audit::Fault {
    use rmcp::model::ErrorCode;
    if upstream {
        return manifold_audit::Fault::Upstream;
    }
    match e.code {
        ErrorCode::INTERNAL_ERROR => manifold_audit::Fault::Gateway,
        _ => manifold_audit::Fault::Client,
    }
}

/// The HTTP status of an error answer to a 2026-07-28 request: the request-level errors
/// (-32020 header mismatch, -32021 missing capability, -32022 unsupported version) are 400,
/// an unknown method 404; everything else is a JSON-RPC answer (200). Legacy answers are 200.
pub(crate) fn modern_status(e: &ErrorData) -> StatusCode {
    match e.code.0 {
        -32022..=-32020 => StatusCode::BAD_REQUEST,
        -32601 => StatusCode::NOT_FOUND,
        _ => StatusCode::OK,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(body: &str) -> (i32, Option<String>) {
        match parse(body.as_bytes()) {
            Ok(_) => panic!("{body} was accepted"),
            Err(r) => (r.error.code.0, r.id.map(|i| i.get().to_owned())),
        }
    }

    #[test]
    fn requests_notifications_and_responses() {
        let Ok(Incoming::Request { id, method, params }) =
            parse(br#"{"jsonrpc":"2.0","id":"a","method":"tools/list","params":{"x":1}}"#)
        else {
            panic!()
        };
        assert_eq!(
            (id.get(), &*method, params.unwrap().get()),
            ("\"a\"", "tools/list", "{\"x\":1}")
        );
        assert!(matches!(
            parse(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#),
            Ok(Incoming::Notification { .. })
        ));
        assert!(matches!(
            parse(br#"{"jsonrpc":"2.0","id":7,"result":{}}"#),
            Ok(Incoming::Response { result: Ok(_), .. })
        ));
        assert!(matches!(
            parse(br#"{"jsonrpc":"2.0","id":7,"error":{"code":-1,"message":"no"}}"#),
            Ok(Incoming::Response { result: Err(_), .. })
        ));
        assert!(parse(br#"{"jsonrpc":"2.0","id":-9223372036854775808,"method":"ping"}"#).is_ok());
        assert!(parse(br#"{"jsonrpc":"2.0","id":18446744073709551615,"method":"ping"}"#).is_ok());
    }

    #[test]
    fn everything_else_is_refused_with_the_right_code() {
        assert_eq!(refused("{not json").0, -32700);
        assert_eq!(refused("\u{0}").0, -32700);
        assert_eq!(refused("").0, -32700);
        assert_eq!(refused("[]").0, -32600,);
        assert_eq!(refused("42").0, -32600);
        assert_eq!(
            refused(r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#),
            (-32600, Some("1".into()))
        );
        assert_eq!(refused(r#"{"id":1,"method":"ping"}"#).0, -32600);
        assert_eq!(refused(r#"{"jsonrpc":2,"id":1,"method":"ping"}"#).0, -32600);
        for id in [
            "{}",
            "[1]",
            "true",
            "1.5",
            "1e400",
            "1e2",
            "99999999999999999999",
        ] {
            let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"ping"}}"#);
            assert_eq!(refused(&body), (-32600, None), "id {id}");
        }
        assert_eq!(
            refused(r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#).0,
            -32600
        );
        assert_eq!(refused(r#"{"jsonrpc":"2.0","id":1,"method":5}"#).0, -32600);
        assert_eq!(
            refused(r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":[1]}"#),
            (-32602, Some("1".into()))
        );
        assert_eq!(
            refused(r#"{"jsonrpc":"2.0","id":1,"result":{},"error":{"code":1,"message":"x"}}"#).0,
            -32600
        );
        assert_eq!(refused(r#"{"jsonrpc":"2.0","id":1}"#).0, -32600);
        assert_eq!(
            refused(r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}"#).0,
            -32600
        );
    }

    #[test]
    fn errors_map_to_json_rpc_and_http() {
        let e = to_error(RouteError::UnknownTool("x".into()));
        assert_eq!((e.code.0, e.message.as_ref()), (-32602, "unknown tool: x"));
        let c = manifold_config::ConnectorId::parse("fa").unwrap();
        let e = to_error(RouteError::Upstream {
            connector: c.clone(),
            error: Box::new(UpstreamError::Unavailable(
                "connector \"fa\" is down".into(),
            )),
        });
        assert_eq!(e.code.0, -32603);
        assert!(
            e.message.contains("other connectors keep working"),
            "{}",
            e.message
        );
        assert_eq!(e.data.unwrap()["connector"], "fa");
        let passed = ErrorData::new(rmcp::model::ErrorCode(-32001), "upstream's own", None);
        let e = to_error(RouteError::Upstream {
            connector: c,
            error: Box::new(UpstreamError::Protocol(passed.clone())),
        });
        assert_eq!(e, passed, "upstream errors pass through unchanged");
        assert_eq!(
            modern_status(&ErrorData::invalid_params("x", None)),
            StatusCode::OK
        );
        assert_eq!(
            modern_status(&ErrorData::method_not_found::<rmcp::model::PingRequestMethod>()),
            StatusCode::NOT_FOUND
        );
        let e = ErrorData::new(rmcp::model::ErrorCode(-32020), "mismatch", None);
        assert_eq!(modern_status(&e), StatusCode::BAD_REQUEST);
    }

    /// The envelope never panics; what it accepts is a well-formed message, and what it refuses
    /// gets a JSON-RPC error (parse error or invalid request/params) with a valid id or null.
    #[test]
    fn fuzz_the_envelope() {
        let target = manifold_fuzz::Target {
            name: "jsonrpc",
            dictionary: &[
                b"\"jsonrpc\":\"2.0\"",
                b"\"id\":",
                b"\"method\":",
                b"\"params\":",
                b"\"result\":",
                b"\"error\":",
                b"null",
                b"1e400",
                b"-0",
                b"18446744073709551616",
                b"\"\\u0000\"",
                b"\"\\ud800\"",
                b"{}",
                b"[]",
                b"\"mf-1\"",
            ],
            iterations: 50_000,
        };
        manifold_fuzz::run(&target, |bytes| match parse(bytes) {
            Ok(Incoming::Request { id, params, .. }) => {
                assert!(valid_id(id.get()), "accepted id {}", id.get());
                if let Some(p) = params {
                    assert!(p.get().trim_start().starts_with('{'));
                }
            }
            Ok(Incoming::Notification { params, .. }) => {
                if let Some(p) = params {
                    assert!(p.get().trim_start().starts_with('{'));
                }
            }
            Ok(Incoming::Response { id, .. }) => {
                assert!(valid_id(id.get()), "accepted id {}", id.get());
            }
            Err(refusal) => {
                let v: serde_json::Value =
                    serde_json::from_str(&refusal.message()).expect("a refusal is JSON");
                assert_eq!(v["jsonrpc"], "2.0");
                let code = v["error"]["code"].as_i64().expect("an error code");
                assert!([-32700, -32600, -32602].contains(&code), "code {code}");
                let id = &v["id"];
                assert!(
                    id.is_null() || id.is_string() || id.is_i64() || id.is_u64(),
                    "answered with id {id}"
                );
            }
        });
    }
}
