//! The MCP methods fast-upstream answers, shared by its HTTP and stdio front ends: one JSON-RPC
//! message in, at most one response out, with the large `tools/list` result serialised once.

use serde::Deserialize;
use serde_json::{Value, json};

/// Versions we accept in `initialize`; anything else is answered with the newest.
const VERSIONS: &[&str] = &["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];
const NEWEST: &str = "2025-11-25";

/// One parsed JSON-RPC message from the client.
#[derive(Deserialize)]
pub struct Message {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    params: Option<Value>,
}

impl Message {
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }

    pub fn is_initialize(&self) -> bool {
        self.method.as_deref() == Some("initialize")
    }

    /// Notifications and responses to our (never sent) requests get no answer.
    pub fn expects_response(&self) -> bool {
        self.id.is_some() && self.method.is_some()
    }
}

pub struct Server {
    /// The `result` of `tools/list` as JSON text: built once, since the list never changes.
    tools_list: String,
}

impl Server {
    /// A server with `echo` plus `extra` tools named `tool_0..tool_{extra-1}`.
    pub fn new(extra: usize) -> Self {
        let mut tools = vec![json!({
            "name": "echo",
            "description": "Echo the message back",
            "inputSchema": {
                "type": "object",
                "properties": { "message": { "type": "string" } },
                "required": ["message"]
            }
        })];
        tools.extend((0..extra).map(|i| {
            json!({
                "name": format!("tool_{i}"),
                "description": format!("Benchmark tool number {i}"),
                "inputSchema": {
                    "type": "object",
                    "properties": { "value": { "type": "integer", "description": "any number" } }
                }
            })
        }));
        Self {
            tools_list: json!({ "tools": tools }).to_string(),
        }
    }

    /// The response text for `msg`, or `None` when it needs none.
    pub fn respond(&self, msg: &Message) -> Option<String> {
        if !msg.expects_response() {
            return None;
        }
        let id = msg.id.as_ref().expect("checked by expects_response");
        let method = msg.method.as_deref().unwrap_or_default();
        let result = match method {
            "initialize" => Ok(self.initialize(msg.params.as_ref())),
            "ping" => Ok("{}".to_owned()),
            "tools/list" => Ok(self.tools_list.clone()),
            "tools/call" => call(msg.params.as_ref()),
            other => Err((-32601, format!("method not found: {other}"))),
        };
        Some(match result {
            Ok(r) => format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{r}}}"#),
            Err((code, message)) => error(id, code, &message),
        })
    }

    fn initialize(&self, params: Option<&Value>) -> String {
        let asked = params
            .and_then(|p| p.get("protocolVersion"))
            .and_then(Value::as_str)
            .filter(|v| VERSIONS.contains(v))
            .unwrap_or(NEWEST);
        json!({
            "protocolVersion": asked,
            "capabilities": { "tools": {} },
            "serverInfo": { "name": "fast-upstream", "version": env!("CARGO_PKG_VERSION") }
        })
        .to_string()
    }
}

/// A JSON-RPC error response (`id` may be `null` when the request could not be read).
pub fn error(id: &Value, code: i64, message: &str) -> String {
    json!({ "jsonrpc": "2.0", "id": id, "error": { "code": code, "message": message } }).to_string()
}

fn call(params: Option<&Value>) -> Result<String, (i64, String)> {
    let name = params
        .and_then(|p| p.get("name"))
        .and_then(Value::as_str)
        .ok_or((-32602, "tools/call needs params.name".to_owned()))?;
    let text = match name {
        "echo" => {
            let message = params
                .and_then(|p| p.pointer("/arguments/message"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            format!("Echo: {message}")
        }
        n if n
            .strip_prefix("tool_")
            .is_some_and(|i| i.parse::<u32>().is_ok()) =>
        {
            format!("{n} ok")
        }
        n => return Err((-32602, format!("unknown tool: {n}"))),
    };
    Ok(json!({ "content": [{ "type": "text", "text": text }] }).to_string())
}
