//! A virtual server: its connectors, its merged catalog (rebuilt on change, swapped whole), and
//! routing of each client request to the owning connector with curation applied.

// logging/setLevel is deprecated by MCP 2026-07-28 but legacy clients and upstreams use it.
#![allow(deprecated)]

mod catalog;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use arc_swap::ArcSwap;
use config::{ConnectorId, VirtualServerSpec};
use rmcp::model::{
    CallToolRequestParams, CallToolResult, CompleteRequestParams, CompleteResult,
    GetPromptRequestParams, GetPromptResult, JsonObject, ReadResourceRequestParams,
    ReadResourceResult,
};
use upstream::{Caller, Connector, Pool, RawValue, UpstreamError};

pub use catalog::{Catalog, Changes, PromptRoute, ToolRoute, exposed_name, glob, shorten};

/// Why a client request could not be served. Mapped to JSON-RPC at the edge (server crate).
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("unknown tool: {0}")]
    UnknownTool(String),
    #[error("unknown prompt: {0}")]
    UnknownPrompt(String),
    #[error("unknown resource: {0}")]
    UnknownResource(String),
    #[error("invalid cursor: {0:?}")]
    InvalidCursor(String),
    #[error("{0}")]
    InvalidParams(String),
    /// An upstream result that does not decode (on rmcp's typed path).
    #[error("{0}")]
    BadResult(String),
    #[error("connector {connector:?}: {error}")]
    Upstream {
        connector: ConnectorId,
        error: UpstreamError,
    },
}

/// How long a request waits for connectors that are still starting.
pub const SETTLE_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// One virtual server at runtime. Rebuilt whole on reload; its catalog is swapped on change.
pub struct VirtualServer {
    pub spec: VirtualServerSpec,
    connectors: Vec<Arc<Connector>>,
    /// Upstream sessions of `sessions = "per_client"` connectors.
    pool: Arc<Pool>,
    catalog: ArcSwap<Catalog>,
    page_size: usize,
}

impl VirtualServer {
    /// `connectors` must hold every connector named in `spec`, in any order.
    pub fn new(
        spec: VirtualServerSpec,
        all: &[Arc<Connector>],
        pool: Arc<Pool>,
        page_size: usize,
    ) -> Self {
        let connectors = spec
            .connectors
            .iter()
            .filter_map(|u| all.iter().find(|c| c.id() == &u.connector).cloned())
            .collect();
        let vs = Self {
            spec,
            connectors,
            pool,
            catalog: ArcSwap::from_pointee(Catalog::default()),
            page_size,
        };
        vs.rebuild();
        vs
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn connectors(&self) -> &[Arc<Connector>] {
        &self.connectors
    }

    pub fn uses(&self, id: &ConnectorId) -> bool {
        self.connectors.iter().any(|c| c.id() == id)
    }

    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.load_full()
    }

    /// Rebuild the merged catalog from the connectors' current catalogs; report what changed.
    pub fn rebuild(&self) -> Changes {
        let inputs: Vec<_> = self
            .spec
            .connectors
            .iter()
            .filter_map(|u| {
                self.connectors
                    .iter()
                    .find(|c| c.id() == &u.connector)
                    .map(|c| (u, c.catalog()))
            })
            .collect();
        let new = Catalog::build(&self.spec, &inputs);
        for c in &new.conflicts {
            tracing::warn!(server = %self.spec.name, "{c}");
        }
        let old = self.catalog.swap(Arc::new(new));
        self.catalog.load().changes_from(&old)
    }

    /// Start lazy connectors (a client is about to use this server).
    pub fn demand(&self) {
        for c in &self.connectors {
            c.demand();
        }
    }

    /// Start lazy connectors and wait (up to `max`) for those not yet started, so a client's
    /// first list or call sees them. Returns what changed in the catalog meanwhile.
    pub async fn settle(&self, max: std::time::Duration) -> Changes {
        let pending: Vec<_> = self
            .connectors
            .iter()
            .filter(|c| {
                matches!(
                    c.health().state,
                    upstream::HealthState::Idle | upstream::HealthState::Starting
                )
            })
            .collect();
        if pending.is_empty() {
            return Changes::default();
        }
        futures::future::join_all(pending.iter().map(|c| c.wait_ready(max))).await;
        self.rebuild()
    }

    /// One page of `items` and the cursor of the next. Cursors are opaque offsets.
    pub fn page<'a, T>(
        &self,
        items: &'a [T],
        cursor: Option<&str>,
    ) -> Result<(&'a [T], Option<String>), RouteError> {
        let start = match cursor {
            None | Some("") => 0,
            Some(c) => c
                .strip_prefix("mf1.")
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|n| *n <= items.len())
                .ok_or_else(|| RouteError::InvalidCursor(c.to_owned()))?,
        };
        let end = (start + self.page_size).min(items.len());
        let next = (end < items.len()).then(|| format!("mf1.{end}"));
        Ok((&items[start..end], next))
    }

    fn connector(&self, id: &ConnectorId) -> &Arc<Connector> {
        self.connectors
            .iter()
            .find(|c| c.id() == id)
            .expect("routes only name this server's connectors")
    }

    /// The connector (or this client's own session of it) that serves `id`.
    fn target(&self, id: &ConnectorId, caller: &Caller) -> Result<Arc<Connector>, RouteError> {
        let shared = self.connector(id);
        match shared.spec().sessions {
            config::SessionMode::Shared => Ok(shared.clone()),
            config::SessionMode::PerClient => {
                self.pool
                    .get(shared.spec(), caller.session)
                    .map_err(|error| RouteError::Upstream {
                        connector: id.clone(),
                        error,
                    })
            }
        }
    }

    async fn forward_raw(
        &self,
        id: &ConnectorId,
        method: &str,
        params: JsonObject,
        caller: &Caller,
    ) -> Result<Box<RawValue>, RouteError> {
        self.target(id, caller)?
            .raw_request(method, params, caller)
            .await
            .map_err(|error| RouteError::Upstream {
                connector: id.clone(),
                error,
            })
    }

    /// `tools/call` through rmcp's typed model (the raw path, decoded at the end).
    pub async fn call_tool(
        &self,
        params: CallToolRequestParams,
        caller: &Caller,
    ) -> Result<CallToolResult, RouteError> {
        let serde_json::Value::Object(params) =
            serde_json::to_value(&params).map_err(|e| RouteError::InvalidParams(e.to_string()))?
        else {
            return Err(RouteError::InvalidParams("params must be an object".into()));
        };
        let raw = self.call_tool_raw(params, caller).await?;
        serde_json::from_str(raw.get()).map_err(|e| {
            RouteError::InvalidParams(format!(
                "the upstream's tools/call result is not valid: {e}"
            ))
        })
    }

    /// `tools/call` on the raw data path: `params` is the client's params object; the result
    /// is the upstream's JSON, changed only where URIs must be exposed.
    pub async fn call_tool_raw(
        &self,
        mut params: JsonObject,
        caller: &Caller,
    ) -> Result<Box<RawValue>, RouteError> {
        let name = string_param(&params, "name", "tools/call")?;
        let mut cat = self.catalog();
        if !cat.tool_routes.contains_key(&name) {
            // Perhaps its connector has not started yet (lazy, or just booting).
            self.settle(SETTLE_WAIT).await;
            cat = self.catalog();
        }
        let Some(route) = cat.tool_routes.get(&name) else {
            return Err(RouteError::UnknownTool(name));
        };
        params.insert("name".into(), route.upstream_name.clone().into());
        if !route.strip.is_empty() || !route.pinned.is_empty() {
            let args = params
                .entry("arguments")
                .or_insert_with(|| serde_json::Value::Object(JsonObject::new()));
            let serde_json::Value::Object(args) = args else {
                return Err(RouteError::InvalidParams(
                    "\"arguments\" must be an object".into(),
                ));
            };
            for k in &route.strip {
                args.remove(k);
            }
            for (k, v) in &route.pinned {
                args.insert(k.clone(), v.clone());
            }
        }
        let connector = route.connector.clone();
        drop(cat);
        let raw = self
            .forward_raw(&connector, "tools/call", params, caller)
            .await?;
        // Resource links and embedded resources name upstream URIs; expose them the way
        // resources/list does, so the client can read them back through us.
        let cat = self.catalog();
        if cat.prefixed.contains(&connector)
            && raw.get().contains("\"uri\"")
            && let Ok(mut v) = serde_json::from_str::<serde_json::Value>(raw.get())
            && let Some(serde_json::Value::Array(content)) = v.get_mut("content")
        {
            for block in content {
                rewrite_block_uri_json(block, |u| cat.expose_uri(&connector, u));
            }
            return Ok(serde_json::value::to_raw_value(&v).expect("a result serialises"));
        }
        Ok(raw)
    }

    /// One page of a list as JSON text (`{<head>"<key>": [...], "nextCursor": ...}`), from the
    /// catalog's serialised items; `head` is empty or members ending with a comma.
    pub fn page_json(
        &self,
        items: &[Box<RawValue>],
        key: &str,
        cursor: Option<&str>,
        head: &str,
    ) -> Result<String, RouteError> {
        let (page, next) = self.page(items, cursor)?;
        let len: usize = page.iter().map(|t| t.get().len() + 1).sum();
        let mut out = String::with_capacity(len + head.len() + 64);
        out.push('{');
        out.push_str(head);
        out.push('"');
        out.push_str(key);
        out.push_str("\":[");
        for (i, t) in page.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(t.get());
        }
        out.push(']');
        if let Some(n) = next {
            out.push_str(",\"nextCursor\":");
            out.push_str(&serde_json::to_string(&n).expect("a cursor serialises"));
        }
        out.push('}');
        Ok(out)
    }

    pub async fn get_prompt(
        &self,
        params: GetPromptRequestParams,
        caller: &Caller,
    ) -> Result<GetPromptResult, RouteError> {
        typed(
            &self.get_prompt_raw(to_object(&params)?, caller).await?,
            "prompts/get",
        )
    }

    /// `prompts/get` on the raw data path.
    pub async fn get_prompt_raw(
        &self,
        mut params: JsonObject,
        caller: &Caller,
    ) -> Result<Box<RawValue>, RouteError> {
        let name = string_param(&params, "name", "prompts/get")?;
        let cat = self.catalog();
        let Some(route) = cat.prompt_routes.get(&name) else {
            return Err(RouteError::UnknownPrompt(name));
        };
        params.insert("name".into(), route.upstream_name.clone().into());
        let connector = route.connector.clone();
        drop(cat);
        let raw = self
            .forward_raw(&connector, "prompts/get", params, caller)
            .await?;
        let cat = self.catalog();
        if cat.prefixed.contains(&connector)
            && raw.get().contains("\"uri\"")
            && let Ok(mut v) = serde_json::from_str::<serde_json::Value>(raw.get())
            && let Some(serde_json::Value::Array(messages)) = v.get_mut("messages")
        {
            for m in messages {
                if let Some(block) = m.get_mut("content") {
                    rewrite_block_uri_json(block, |u| cat.expose_uri(&connector, u));
                }
            }
            return Ok(serde_json::value::to_raw_value(&v).expect("a result serialises"));
        }
        Ok(raw)
    }

    pub async fn read_resource(
        &self,
        params: ReadResourceRequestParams,
        caller: &Caller,
    ) -> Result<ReadResourceResult, RouteError> {
        typed(
            &self.read_resource_raw(to_object(&params)?, caller).await?,
            "resources/read",
        )
    }

    /// `resources/read` on the raw data path.
    pub async fn read_resource_raw(
        &self,
        mut params: JsonObject,
        caller: &Caller,
    ) -> Result<Box<RawValue>, RouteError> {
        let exposed = string_param(&params, "uri", "resources/read")?;
        let cat = self.catalog();
        let Some((connector, uri)) = cat.route_resource(&exposed) else {
            return Err(RouteError::UnknownResource(exposed));
        };
        params.insert("uri".into(), uri.into());
        drop(cat);
        let raw = self
            .forward_raw(&connector, "resources/read", params, caller)
            .await?;
        // Contents name their URI; show the client the URI it asked for.
        let per_client =
            self.connector(&connector).spec().sessions == config::SessionMode::PerClient;
        let cat = self.catalog();
        if let Ok(mut v) = serde_json::from_str::<serde_json::Value>(raw.get()) {
            let mut changed = false;
            if let Some(serde_json::Value::Array(contents)) = v.get_mut("contents") {
                for c in contents {
                    if let Some(serde_json::Value::String(u)) = c.get_mut("uri") {
                        let e = cat.expose_uri(&connector, u);
                        if e != *u {
                            *u = e;
                            changed = true;
                        }
                    }
                }
            }
            // A per-client connector reads with each person's own upstream session (their
            // grant), so its contents are never shareable, whatever the upstream says.
            if per_client
                && let Some(scope) = v.get_mut("cacheScope")
                && scope != "private"
            {
                *scope = "private".into();
                changed = true;
            }
            if changed {
                return Ok(serde_json::value::to_raw_value(&v).expect("a result serialises"));
            }
        }
        Ok(raw)
    }

    /// Route a subscription; returns the connector and upstream URI it was forwarded to.
    pub async fn subscribe(
        &self,
        uri: &str,
        caller: &Caller,
    ) -> Result<(ConnectorId, String), RouteError> {
        let cat = self.catalog();
        let (connector, upstream_uri) = cat
            .route_resource(uri)
            .ok_or_else(|| RouteError::UnknownResource(uri.to_owned()))?;
        drop(cat);
        self.target(&connector, caller)?
            .watch(&upstream_uri, caller)
            .await
            .map_err(|error| RouteError::Upstream {
                connector: connector.clone(),
                error,
            })?;
        Ok((connector, upstream_uri))
    }

    pub async fn unsubscribe(&self, uri: &str, caller: &Caller) -> Result<(), RouteError> {
        let cat = self.catalog();
        let (connector, upstream_uri) = cat
            .route_resource(uri)
            .ok_or_else(|| RouteError::UnknownResource(uri.to_owned()))?;
        drop(cat);
        self.target(&connector, caller)?
            .unwatch(&upstream_uri, caller)
            .await
            .map_err(|error| RouteError::Upstream { connector, error })
    }

    pub async fn complete(
        &self,
        params: CompleteRequestParams,
        caller: &Caller,
    ) -> Result<CompleteResult, RouteError> {
        typed(
            &self.complete_raw(to_object(&params)?, caller).await?,
            "completion/complete",
        )
    }

    /// `completion/complete` on the raw data path: the reference is routed (prompt name or
    /// resource URI) and rewritten to the upstream's.
    pub async fn complete_raw(
        &self,
        mut params: JsonObject,
        caller: &Caller,
    ) -> Result<Box<RawValue>, RouteError> {
        let cat = self.catalog();
        let Some(serde_json::Value::Object(r)) = params.get_mut("ref") else {
            return Err(RouteError::InvalidParams(
                "completion/complete needs a \"ref\" object".into(),
            ));
        };
        let connector = match r.get("type").and_then(|t| t.as_str()) {
            Some("ref/prompt") => {
                let name = string_param(r, "name", "a ref/prompt reference")?;
                let route = cat
                    .prompt_routes
                    .get(&name)
                    .ok_or(RouteError::UnknownPrompt(name))?;
                r.insert("name".into(), route.upstream_name.clone().into());
                route.connector.clone()
            }
            Some("ref/resource") => {
                let uri = string_param(r, "uri", "a ref/resource reference")?;
                let (c, upstream_uri) = cat
                    .route_resource(&uri)
                    .ok_or(RouteError::UnknownResource(uri))?;
                r.insert("uri".into(), upstream_uri.into());
                c
            }
            _ => {
                return Err(RouteError::InvalidParams(
                    "unsupported completion reference type (ref/prompt or ref/resource)".into(),
                ));
            }
        };
        drop(cat);
        self.forward_raw(&connector, "completion/complete", params, caller)
            .await
    }

    /// `logging/setLevel` goes to every running connector that supports logging.
    pub async fn set_level(&self, level: rmcp::model::LoggingLevel, caller: &Caller) {
        for c in &self.connectors {
            c.set_log_level(level, caller).await;
        }
    }
}

fn to_object<T: serde::Serialize>(params: &T) -> Result<JsonObject, RouteError> {
    match serde_json::to_value(params) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        _ => Err(RouteError::InvalidParams("params must be an object".into())),
    }
}

/// Decode a raw result for rmcp's typed path.
fn typed<T: serde::de::DeserializeOwned>(raw: &RawValue, method: &str) -> Result<T, RouteError> {
    serde_json::from_str(raw.get()).map_err(|e| {
        RouteError::BadResult(format!("the upstream's {method} result is not valid: {e}"))
    })
}

fn string_param(params: &JsonObject, key: &str, what: &str) -> Result<String, RouteError> {
    match params.get(key) {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        _ => Err(RouteError::InvalidParams(format!(
            "{what} needs a string \"{key}\""
        ))),
    }
}

fn rewrite_block_uri_json(block: &mut serde_json::Value, f: impl Fn(&str) -> String) {
    let slot = match block.get("type").and_then(|t| t.as_str()) {
        Some("resource_link") => block.get_mut("uri"),
        Some("resource") => block.get_mut("resource").and_then(|r| r.get_mut("uri")),
        _ => None,
    };
    if let Some(serde_json::Value::String(u)) = slot {
        *u = f(u);
    }
}
