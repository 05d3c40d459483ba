//! `manifold import`: a Claude-Desktop-style `{"mcpServers": {…}}` file → `[connectors.*]` TOML.
//!
//! Secret values (env and header values) are never copied: each becomes a `${VAR}` reference,
//! and the caller is told which variables to export.

use serde_json::Value;

use crate::ConnectorId;

/// The converted TOML plus the environment variables it references.
#[derive(Debug)]
pub struct Imported {
    pub toml: String,
    pub variables: Vec<String>,
    pub names: Vec<String>,
}

pub fn import_claude_desktop(json: &str) -> Result<Imported, String> {
    let doc: Value = serde_json::from_str(json).map_err(|e| format!("not valid JSON: {e}"))?;
    let servers = doc
        .get("mcpServers")
        .and_then(Value::as_object)
        .ok_or("no \"mcpServers\" object at the top level (expected the Claude Desktop format)")?;
    let mut connectors = toml::Table::new();
    let mut variables = Vec::new();
    let mut names = Vec::new();
    for (name, entry) in servers {
        let id = sanitize(name);
        ConnectorId::parse(&id).map_err(|m| format!("server {name:?}: {m}"))?;
        if connectors.contains_key(&id) {
            return Err(format!(
                "two servers map to the connector name {id:?}: rename one"
            ));
        }
        let entry = entry
            .as_object()
            .ok_or(format!("server {name:?}: expected an object"))?;
        let mut t = toml::Table::new();
        let var_prefix = id.to_uppercase().replace('-', "_");
        let mut secret_map = |key: &str, field: &str| -> Result<Option<toml::Table>, String> {
            let Some(obj) = entry.get(field) else {
                return Ok(None);
            };
            let obj = obj
                .as_object()
                .ok_or(format!("server {name:?}: {field:?} must be an object"))?;
            let mut out = toml::Table::new();
            for k in obj.keys() {
                let var = format!(
                    "{var_prefix}_{}",
                    k.to_uppercase()
                        .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
                );
                out.insert(k.clone(), toml::Value::String(format!("${{{var}}}")));
                variables.push(var);
            }
            let _ = key;
            Ok(Some(out))
        };
        if let Some(command) = entry.get("command") {
            let command = command
                .as_str()
                .ok_or(format!("server {name:?}: \"command\" must be a string"))?;
            t.insert("kind".into(), "stdio".into());
            t.insert("command".into(), command.into());
            if let Some(args) = entry.get("args") {
                let args = args
                    .as_array()
                    .and_then(|a| {
                        a.iter()
                            .map(|v| v.as_str().map(|s| toml::Value::String(s.into())))
                            .collect::<Option<Vec<_>>>()
                    })
                    .ok_or(format!(
                        "server {name:?}: \"args\" must be an array of strings"
                    ))?;
                t.insert("args".into(), toml::Value::Array(args));
            }
            if let Some(cwd) = entry.get("cwd").and_then(Value::as_str) {
                t.insert("cwd".into(), cwd.into());
            }
            if let Some(env) = secret_map("env", "env")? {
                t.insert("env".into(), toml::Value::Table(env));
            }
        } else if let Some(url) = entry.get("url").or_else(|| entry.get("serverUrl")) {
            let url = url
                .as_str()
                .ok_or(format!("server {name:?}: \"url\" must be a string"))?;
            t.insert("kind".into(), "http".into());
            t.insert("url".into(), url.into());
            if entry.get("type").and_then(Value::as_str) == Some("sse") {
                t.insert("transport".into(), "sse".into());
            }
            if let Some(h) = secret_map("headers", "headers")? {
                t.insert("headers".into(), toml::Value::Table(h));
            }
        } else {
            return Err(format!(
                "server {name:?}: has neither \"command\" nor \"url\""
            ));
        }
        names.push(id.clone());
        connectors.insert(id, toml::Value::Table(t));
    }
    let mut root = toml::Table::new();
    root.insert("connectors".into(), toml::Value::Table(connectors));
    let body = toml::to_string(&root).map_err(|e| format!("cannot render TOML: {e}"))?;
    let mut out = String::from(
        "# Imported by `manifold import`. Secret values were not copied: export the\n# variables referenced as ${…} before `manifold serve`.\n",
    );
    out.push_str(&body);
    Ok(Imported {
        toml: out,
        variables,
        names,
    })
}

/// Claude Desktop names are free-form; connector names are `[a-z][a-z0-9_-]*`.
fn sanitize(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    if !s.starts_with(|c: char| c.is_ascii_lowercase()) {
        s.insert_str(0, "mcp-");
    }
    s.truncate(32);
    s
}
