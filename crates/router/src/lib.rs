//! A virtual server: its connectors, its merged catalog (rebuilt on change, swapped whole), and
//! the three steps of a request between the edge and the upstream: `route` (an exposed name or
//! URI to its connector and the upstream's name, with curation applied), then — once the policy
//! has turned the routed request into a `Permit` — `forward` with the credential the
//! credentials seam chose, or `page` for a list. Nothing reaches an upstream or a list page
//! without a permit.

// logging/setLevel is deprecated by MCP 2026-07-28 but legacy clients and upstreams use it.
#![allow(deprecated)]

mod catalog;
pub mod review;
#[cfg(test)]
mod tests;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use arc_swap::{ArcSwap, ArcSwapOption};
use manifold_config::{ConnectorId, SessionMode, VirtualServerSpec};
use manifold_policy::{Action, ActionKind, Item, ItemKind, Permit, Target, Verb};
use manifold_upstream::{Caller, Connector, Credential, Pool, UpstreamCatalog, UpstreamError};
use rmcp::model::JsonObject;
use serde_json::value::RawValue;

pub use catalog::{
    Catalog, Changes, Origin, PromptRoute, ToolRoute, exposed_name, shorten, view_print,
};
pub use review::{Approved, HeldTool, Reviews};

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
    /// The gateway could not serve the request (overloaded, the call was lost).
    #[error("{0}")]
    Gateway(String),
    /// A reload replaced the server while the request waited for its connectors; route it
    /// again on the replacement (the params are handed back).
    #[error("the virtual server was reloaded")]
    Superseded(Box<JsonObject>),
    #[error("connector {connector:?}: {error}")]
    Upstream {
        connector: ConnectorId,
        /// Boxed: a JSON-RPC error is large, and errors are rare.
        error: Box<UpstreamError>,
    },
}

/// How long a request waits for connectors that are still starting.
pub const SETTLE_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// The requests the router forwards to one connector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    CallTool,
    GetPrompt,
    ReadResource,
    Complete,
    Subscribe,
    Unsubscribe,
}

impl Method {
    pub fn of(method: &str) -> Option<Self> {
        Some(match method {
            "tools/call" => Method::CallTool,
            "prompts/get" => Method::GetPrompt,
            "resources/read" => Method::ReadResource,
            "completion/complete" => Method::Complete,
            "resources/subscribe" => Method::Subscribe,
            "resources/unsubscribe" => Method::Unsubscribe,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Method::CallTool => "tools/call",
            Method::GetPrompt => "prompts/get",
            Method::ReadResource => "resources/read",
            Method::Complete => "completion/complete",
            Method::Subscribe => "resources/subscribe",
            Method::Unsubscribe => "resources/unsubscribe",
        }
    }

    fn verb(self) -> Verb {
        match self {
            Method::CallTool => Verb::Call,
            Method::GetPrompt => Verb::Get,
            Method::ReadResource => Verb::Read,
            Method::Complete => Verb::Complete,
            Method::Subscribe | Method::Unsubscribe => Verb::Subscribe,
        }
    }
}

/// A client request routed to its connector: what the policy decides on, and what `forward`
/// sends once it is permitted.
#[derive(Debug)]
pub struct Routed {
    server: Arc<str>,
    pub method: Method,
    pub connector: ConnectorId,
    pub kind: ItemKind,
    /// The upstream's name of the tool or prompt, or the upstream URI.
    pub name: String,
    /// What the client named.
    pub exposed: String,
    /// The params as they go upstream (name or URI rewritten, hidden and pinned arguments
    /// applied).
    params: JsonObject,
}

impl Target for Routed {
    fn action(&self) -> Action<'_> {
        let arguments = match self.params.get("arguments") {
            Some(serde_json::Value::Object(a)) => Some(a),
            _ => None,
        };
        Action {
            via: Default::default(),
            server: &self.server,
            kind: ActionKind::Use {
                verb: self.method.verb(),
                item: Item {
                    kind: self.kind,
                    connector: self.connector.as_str(),
                    name: &self.name,
                    exposed: &self.exposed,
                    arguments,
                },
            },
        }
    }
}

/// A list request: one kind of item, one page.
#[derive(Debug)]
pub struct ListRequest {
    server: Arc<str>,
    pub kind: ItemKind,
    pub cursor: Option<String>,
}

impl Target for ListRequest {
    fn action(&self) -> Action<'_> {
        Action {
            via: Default::default(),
            server: &self.server,
            kind: ActionKind::List(self.kind),
        }
    }
}

/// A request about the virtual server itself (connect, discover, ping, log level, listen).
#[derive(Debug)]
pub struct ServerRequest {
    server: Arc<str>,
}

impl Target for ServerRequest {
    fn action(&self) -> Action<'_> {
        Action {
            via: Default::default(),
            server: &self.server,
            kind: ActionKind::Connect,
        }
    }
}

/// One virtual server at runtime. Rebuilt whole on reload; its catalog is swapped on change.
pub struct VirtualServer {
    pub spec: VirtualServerSpec,
    name: Arc<str>,
    connectors: Vec<Arc<Connector>>,
    /// Upstream sessions of `sessions = "per_client"` connectors.
    pool: Arc<Pool>,
    catalog: ArcSwap<Catalog>,
    /// Catalogs of clients that have their own upstream sessions of per-client connectors
    /// (built from those sessions' lists), with the upstream catalogs they were built from.
    client_catalogs: Mutex<HashMap<u64, ClientCatalog>>,
    page_size: usize,
    /// The catalog as it would be with the down connectors' last-known lists: a request for
    /// one of their tools or prompts gets an error naming the connector and its state rather
    /// than "unknown". `None` while every connector is live.
    last_known: ArcSwapOption<Catalog>,
    /// Cancelled when a reload replaces this server: requests waiting here for connectors to
    /// start go to the replacement instead.
    superseded: tokio_util::sync::CancellationToken,
    /// The approved tool definitions (the gateway's), for `tool_updates = "review"`.
    reviews: Arc<Reviews>,
}

struct ClientCatalog {
    /// The connectors' catalogs it was built from (kept, so they are compared by identity).
    inputs: Vec<Arc<UpstreamCatalog>>,
    catalog: Arc<Catalog>,
}

impl VirtualServer {
    /// `all` must hold every connector named in `spec`, in any order.
    pub fn new(
        spec: VirtualServerSpec,
        all: &[Arc<Connector>],
        pool: Arc<Pool>,
        page_size: usize,
        reviews: Arc<Reviews>,
    ) -> Self {
        let connectors = spec
            .connectors
            .iter()
            .filter_map(|u| all.iter().find(|c| c.id() == &u.connector).cloned())
            .collect();
        let vs = Self {
            name: spec.name.as_str().into(),
            spec,
            connectors,
            pool,
            catalog: ArcSwap::from_pointee(Catalog::default()),
            client_catalogs: Mutex::new(HashMap::new()),
            page_size,
            last_known: ArcSwapOption::empty(),
            superseded: tokio_util::sync::CancellationToken::new(),
            reviews,
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

    /// The catalog every client sees (built from the connectors' shared instances).
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.load_full()
    }

    /// Rebuild the merged catalog from the connectors' current catalogs; report what changed.
    pub fn rebuild(&self) -> Changes {
        let new = self.build(None);
        self.last_known.store(self.build_last_known().map(Arc::new));
        for c in &new.conflicts {
            tracing::warn!(server = %self.spec.name, "{c}");
        }
        let old = self.catalog.swap(Arc::new(new));
        self.catalog.load().changes_from(&old)
    }

    /// The approved tool definitions changed: rebuild every catalog; report what changed in
    /// the shared one (clients with catalogs of their own rebuild theirs at their next list).
    pub fn review_changed(&self) -> Changes {
        self.client_catalogs
            .lock()
            .expect("client catalogs lock")
            .clear();
        self.rebuild()
    }

    /// The merged catalog from each connector's instance for `client` (its own upstream
    /// session where it has one), or the shared instances'.
    fn build(&self, client: Option<u64>) -> Catalog {
        let inputs: Vec<_> = self
            .spec
            .connectors
            .iter()
            .filter_map(|u| {
                let shared = self.connectors.iter().find(|c| c.id() == &u.connector)?;
                Some((u, self.instance_catalog(shared, client)))
            })
            .collect();
        let cat = Catalog::build(&self.spec, &inputs, &self.reviews);
        if !cat.held.is_empty() {
            self.reviews.report(&cat.held);
        }
        cat
    }

    /// The catalog with each down connector's last-known lists, if any connector is down with
    /// lists it once offered.
    fn build_last_known(&self) -> Option<Catalog> {
        let mut any = false;
        let inputs: Vec<_> = self
            .spec
            .connectors
            .iter()
            .filter_map(|u| {
                let c = self.connectors.iter().find(|c| c.id() == &u.connector)?;
                Some((
                    u,
                    match c.last_known_catalog() {
                        Some(last) => {
                            any = true;
                            last
                        }
                        None => c.catalog(),
                    },
                ))
            })
            .collect();
        any.then(|| Catalog::build(&self.spec, &inputs, &self.reviews))
    }

    /// Whether a connector's lists (for `client`) changed since `cat` was built from them.
    fn stale(&self, cat: &Catalog, client: u64) -> bool {
        let now = self.spec.connectors.iter().filter_map(|u| {
            let shared = self.connectors.iter().find(|c| c.id() == &u.connector)?;
            Some(self.instance_catalog(shared, Some(client)))
        });
        cat.from.len() != self.spec.connectors.len()
            || now.zip(&cat.from).any(|(a, b)| !Arc::ptr_eq(&a, b))
    }

    /// A reload replaced this server.
    pub fn supersede(&self) {
        self.superseded.cancel();
    }

    pub fn is_superseded(&self) -> bool {
        self.superseded.is_cancelled()
    }

    /// The error for `exposed` (a tool or prompt name) that is not in the catalog: naming its
    /// connector and state if a down connector offered it, else `unknown`.
    fn missing(&self, exposed: String, tool: bool) -> RouteError {
        let owner = self.last_known.load().as_ref().and_then(|k| {
            if tool {
                k.tool_routes.get(&exposed).map(|r| r.connector.clone())
            } else {
                k.prompt_routes.get(&exposed).map(|r| r.connector.clone())
            }
        });
        let Some(id) = owner else {
            return if tool {
                RouteError::UnknownTool(exposed)
            } else {
                RouteError::UnknownPrompt(exposed)
            };
        };
        let h = self.connector(&id).health();
        let state = match &h.last_error {
            Some(e) => format!("is {}: {e}", h.state),
            None => format!("is {}", h.state),
        };
        RouteError::Upstream {
            error: Box::new(UpstreamError::Unavailable(format!(
                "{} {exposed:?} is served by connector {:?}, which {state}; retry when it is up",
                if tool { "tool" } else { "prompt" },
                id.as_str()
            ))),
            connector: id,
        }
    }

    fn instance_catalog(
        &self,
        shared: &Arc<Connector>,
        client: Option<u64>,
    ) -> Arc<UpstreamCatalog> {
        if let Some(client) = client
            && shared.spec().sessions == SessionMode::PerClient
            && let Some(own) = self.pool.existing(shared.id(), client)
        {
            let cat = own.catalog();
            // A session still starting has no lists yet: show the shared ones meanwhile.
            if cat.capabilities.is_some() {
                return cat;
            }
        }
        shared.catalog()
    }

    /// The catalog `client` sees: the shared one, unless it has upstream sessions of its own
    /// (`sessions = "per_client"`), whose own lists are merged instead.
    pub fn catalog_for(&self, client: u64) -> Arc<Catalog> {
        let shared = self.catalog();
        let per_client: Vec<&Arc<Connector>> = self
            .connectors
            .iter()
            .filter(|c| c.spec().sessions == SessionMode::PerClient)
            .collect();
        if per_client.is_empty()
            || per_client
                .iter()
                .all(|c| self.pool.existing(c.id(), client).is_none())
        {
            return shared;
        }
        let inputs: Vec<Arc<UpstreamCatalog>> = self
            .connectors
            .iter()
            .map(|c| self.instance_catalog(c, Some(client)))
            .collect();
        let same = |a: &[Arc<UpstreamCatalog>]| {
            a.len() == inputs.len() && a.iter().zip(&inputs).all(|(x, y)| Arc::ptr_eq(x, y))
        };
        let map = self.client_catalogs.lock().expect("client catalogs lock");
        if let Some(c) = map.get(&client)
            && same(&c.inputs)
        {
            return c.catalog.clone();
        }
        drop(map);
        let catalog = Arc::new(self.build(Some(client)));
        self.client_catalogs
            .lock()
            .expect("client catalogs lock")
            .insert(
                client,
                ClientCatalog {
                    inputs,
                    catalog: catalog.clone(),
                },
            );
        catalog
    }

    /// What changed in `client`'s own catalog since it last listed (its per-client upstream
    /// session announced a change).
    pub fn client_changes(&self, client: u64) -> Changes {
        let old = self
            .client_catalogs
            .lock()
            .expect("client catalogs lock")
            .get(&client)
            .map(|c| c.catalog.clone())
            .unwrap_or_else(|| self.catalog());
        self.catalog_for(client).changes_from(&old)
    }

    /// A client ended: forget its catalog.
    pub fn forget_client(&self, client: u64) {
        self.client_catalogs
            .lock()
            .expect("client catalogs lock")
            .remove(&client);
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
                    manifold_upstream::HealthState::Idle | manifold_upstream::HealthState::Starting
                )
            })
            .collect();
        if pending.is_empty() {
            return Changes::default();
        }
        tokio::select! {
            _ = futures::future::join_all(pending.iter().map(|c| c.wait_ready(max))) => {}
            _ = self.superseded.cancelled() => return Changes::default(),
        }
        self.rebuild()
    }

    /// A request about the server itself, for the policy.
    pub fn server_request(&self) -> ServerRequest {
        ServerRequest {
            server: self.name.clone(),
        }
    }

    /// A list request, for the policy.
    pub fn list_request(&self, kind: ItemKind, cursor: Option<String>) -> ListRequest {
        ListRequest {
            server: self.name.clone(),
            kind,
            cursor,
        }
    }

    /// One page of a permitted list as JSON text (`{<head>"<key>": [...], "nextCursor": ...}`),
    /// from the catalog `client` sees; `head` is empty or members ending with a comma. A
    /// filtered list is paged over the items the permit shows, so cursors stay consistent per
    /// caller. Cursors are opaque offsets. Also the fingerprint of the caller's whole view of
    /// the list (`view`).
    pub fn page(
        &self,
        permit: &Permit<ListRequest>,
        client: u64,
        head: &str,
    ) -> Result<(String, u64), RouteError> {
        let cat = self.catalog_for(client);
        let req = permit.target();
        let k = kind_index(req.kind);
        let (items, key) = match req.kind {
            ItemKind::Tool => (&cat.tools_json, "tools"),
            ItemKind::Prompt => (&cat.prompts_json, "prompts"),
            ItemKind::Resource => (&cat.resources_json, "resources"),
            ItemKind::ResourceTemplate => (&cat.resource_templates_json, "resourceTemplates"),
        };
        let (visible, print) = match shown(&cat, permit) {
            Some(shown) => {
                let print = view_print(shown.iter().map(|i| cat.item_prints[k][*i]));
                (shown.iter().map(|i| &*items[*i]).collect(), print)
            }
            None => (
                items.iter().map(|j| &**j).collect::<Vec<&RawValue>>(),
                cat.list_prints[k],
            ),
        };
        let start = match req.cursor.as_deref() {
            None | Some("") => 0,
            Some(c) => c
                .strip_prefix("mf1.")
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|n| *n <= visible.len())
                .ok_or_else(|| RouteError::InvalidCursor(c.to_owned()))?,
        };
        let end = (start + self.page_size).min(visible.len());
        let page = &visible[start..end];
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
        if end < visible.len() {
            out.push_str(",\"nextCursor\":\"mf1.");
            out.push_str(&end.to_string());
            out.push('"');
        }
        out.push('}');
        Ok((out, print))
    }

    /// The fingerprint of what `permit` shows of its list to `client` (equal for equal views):
    /// to tell whether a change of the catalog or the policy changed what a caller sees.
    pub fn view(&self, permit: &Permit<ListRequest>, client: u64) -> u64 {
        let cat = self.catalog_for(client);
        let k = kind_index(permit.target().kind);
        match shown(&cat, permit) {
            Some(shown) => view_print(shown.iter().map(|i| cat.item_prints[k][*i])),
            None => cat.list_prints[k],
        }
    }

    fn connector(&self, id: &ConnectorId) -> &Arc<Connector> {
        self.connectors
            .iter()
            .find(|c| c.id() == id)
            .expect("routes only name this server's connectors")
    }

    /// The connection that serves connector `id` for this credential and caller: the shared
    /// instance, or the client's own session of it.
    fn target(
        &self,
        id: &ConnectorId,
        credential: &Credential,
        caller: &Caller,
    ) -> Result<Arc<Connector>, RouteError> {
        let shared = self.connector(id);
        match (credential, shared.spec().sessions) {
            (Credential::Configured, SessionMode::Shared) => Ok(shared.clone()),
            (Credential::Configured, SessionMode::PerClient) => self
                .pool
                .get(shared.spec(), caller.client)
                .map_err(|error| RouteError::Upstream {
                    connector: id.clone(),
                    error: Box::new(error),
                }),
        }
    }

    /// The connector spec a routed request goes to (for the credentials seam).
    pub fn connector_spec(&self, id: &ConnectorId) -> &manifold_config::ConnectorSpec {
        self.connector(id).spec()
    }

    /// Route one request: find the connector that serves what `params` name (in the catalog
    /// `client` sees) and rewrite the params for it. An unknown or curated-away name is an
    /// error naming it; a tool not listed yet may belong to a connector still starting, so
    /// that case waits for them first.
    pub async fn route(
        &self,
        method: Method,
        mut params: JsonObject,
        client: u64,
    ) -> Result<Routed, RouteError> {
        let mut cat = self.catalog_for(client);
        let (connector, kind, name, exposed) = match method {
            Method::CallTool => {
                let exposed = string_param(&params, "name", "tools/call")?;
                if !cat.tool_routes.contains_key(&exposed) {
                    // Perhaps its connector has not started yet (lazy, or just booting).
                    self.settle(SETTLE_WAIT).await;
                    if self.is_superseded() {
                        // A reload replaced this server meanwhile: its replacement decides.
                        return Err(RouteError::Superseded(Box::new(params)));
                    }
                    cat = self.catalog_for(client);
                    // A connector that has just come up may have lists the catalog is not
                    // rebuilt from yet (its change event is on its way): route by them.
                    if !cat.tool_routes.contains_key(&exposed) && self.stale(&cat, client) {
                        cat = Arc::new(self.build(Some(client)));
                    }
                }
                let Some(route) = cat.tool_routes.get(&exposed) else {
                    return Err(self.missing(exposed, true));
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
                (
                    route.connector.clone(),
                    ItemKind::Tool,
                    route.upstream_name.clone(),
                    exposed,
                )
            }
            Method::GetPrompt => {
                let exposed = string_param(&params, "name", "prompts/get")?;
                let Some(route) = cat.prompt_routes.get(&exposed) else {
                    return Err(self.missing(exposed, false));
                };
                params.insert("name".into(), route.upstream_name.clone().into());
                (
                    route.connector.clone(),
                    ItemKind::Prompt,
                    route.upstream_name.clone(),
                    exposed,
                )
            }
            Method::ReadResource | Method::Subscribe | Method::Unsubscribe => {
                let exposed = string_param(&params, "uri", method.as_str())?;
                let Some((connector, uri)) = cat.route_resource(&exposed) else {
                    return Err(RouteError::UnknownResource(exposed));
                };
                params.insert("uri".into(), uri.clone().into());
                (connector, ItemKind::Resource, uri, exposed)
            }
            Method::Complete => {
                let Some(serde_json::Value::Object(r)) = params.get_mut("ref") else {
                    return Err(RouteError::InvalidParams(
                        "completion/complete needs a \"ref\" object".into(),
                    ));
                };
                match r.get("type").and_then(|t| t.as_str()) {
                    Some("ref/prompt") => {
                        let exposed = string_param(r, "name", "a ref/prompt reference")?;
                        let route = cat
                            .prompt_routes
                            .get(&exposed)
                            .ok_or_else(|| RouteError::UnknownPrompt(exposed.clone()))?;
                        r.insert("name".into(), route.upstream_name.clone().into());
                        (
                            route.connector.clone(),
                            ItemKind::Prompt,
                            route.upstream_name.clone(),
                            exposed,
                        )
                    }
                    Some("ref/resource") => {
                        let exposed = string_param(r, "uri", "a ref/resource reference")?;
                        let (c, uri) = cat
                            .route_resource(&exposed)
                            .ok_or_else(|| RouteError::UnknownResource(exposed.clone()))?;
                        r.insert("uri".into(), uri.clone().into());
                        (c, ItemKind::ResourceTemplate, uri, exposed)
                    }
                    _ => {
                        return Err(RouteError::InvalidParams(
                            "unsupported completion reference type (ref/prompt or ref/resource)"
                                .into(),
                        ));
                    }
                }
            }
        };
        Ok(Routed {
            server: self.name.clone(),
            method,
            connector,
            kind,
            name,
            exposed,
            params,
        })
    }

    /// Send a permitted request to its connector with `credential`; the upstream's result as
    /// JSON text, changed only where names and URIs are exposed differently. Subscriptions are
    /// answered `{}` once the upstream watches the resource.
    pub async fn forward(
        &self,
        permit: &Permit<Routed>,
        credential: &Credential,
        caller: &Caller,
    ) -> Result<Box<RawValue>, RouteError> {
        let routed = permit.target();
        let id = &routed.connector;
        let upstream_error = |error| RouteError::Upstream {
            connector: id.clone(),
            error: Box::new(error),
        };
        let conn = self.target(id, credential, caller)?;
        let raw = match routed.method {
            Method::Subscribe => {
                conn.watch(&routed.name, caller)
                    .await
                    .map_err(upstream_error)?;
                return Ok(empty());
            }
            Method::Unsubscribe => {
                conn.unwatch(&routed.name, caller)
                    .await
                    .map_err(upstream_error)?;
                return Ok(empty());
            }
            m => conn
                .forward(m.as_str(), &routed.params, caller)
                .await
                .map_err(upstream_error)?,
        };
        Ok(self.expose(routed, raw))
    }

    /// Resource URIs in a result (links, embedded resources, read contents) are exposed the
    /// way `resources/list` shows them, so the client can read them back through us.
    fn expose(&self, routed: &Routed, raw: Box<RawValue>) -> Box<RawValue> {
        let connector = &routed.connector;
        let cat = self.catalog();
        let prefixed = cat.prefixed.contains(connector);
        match routed.method {
            Method::CallTool | Method::GetPrompt if prefixed && raw.get().contains("\"uri\"") => {
                let Ok(mut v) = serde_json::from_str::<serde_json::Value>(raw.get()) else {
                    return raw;
                };
                let blocks: Vec<&mut serde_json::Value> = match (routed.method, &mut v) {
                    (Method::CallTool, v) => match v.get_mut("content") {
                        Some(serde_json::Value::Array(c)) => c.iter_mut().collect(),
                        _ => Vec::new(),
                    },
                    (_, v) => match v.get_mut("messages") {
                        Some(serde_json::Value::Array(m)) => {
                            m.iter_mut().filter_map(|m| m.get_mut("content")).collect()
                        }
                        _ => Vec::new(),
                    },
                };
                for block in blocks {
                    rewrite_block_uri_json(block, |u| cat.expose_uri(connector, u));
                }
                serde_json::value::to_raw_value(&v).expect("a result serialises")
            }
            Method::ReadResource => {
                let per_client =
                    self.connector(connector).spec().sessions == SessionMode::PerClient;
                if !prefixed && !per_client {
                    return raw;
                }
                let Ok(mut v) = serde_json::from_str::<serde_json::Value>(raw.get()) else {
                    return raw;
                };
                let mut changed = false;
                if let Some(serde_json::Value::Array(contents)) = v.get_mut("contents") {
                    for c in contents {
                        if let Some(serde_json::Value::String(u)) = c.get_mut("uri") {
                            let e = cat.expose_uri(connector, u);
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
                    serde_json::value::to_raw_value(&v).expect("a result serialises")
                } else {
                    raw
                }
            }
            _ => raw,
        }
    }

    /// Stop watching the resource a permitted subscription watched (its last watcher went
    /// away).
    pub async fn unwatch(
        &self,
        permit: &Permit<Routed>,
        credential: &Credential,
        caller: &Caller,
    ) -> Result<(), RouteError> {
        let routed = permit.target();
        self.target(&routed.connector, credential, caller)?
            .unwatch(&routed.name, caller)
            .await
            .map_err(|error| RouteError::Upstream {
                connector: routed.connector.clone(),
                error: Box::new(error),
            })
    }

    /// `logging/setLevel` goes to every running connector that supports logging.
    pub async fn set_level(
        &self,
        _permit: &Permit<ServerRequest>,
        level: rmcp::model::LoggingLevel,
        caller: &Caller,
    ) {
        for c in &self.connectors {
            c.set_log_level(level, caller).await;
        }
    }
}

/// The index of a kind of item in `Catalog::item_prints`.
pub fn kind_index(kind: ItemKind) -> usize {
    match kind {
        ItemKind::Tool => 0,
        ItemKind::Prompt => 1,
        ItemKind::Resource => 2,
        ItemKind::ResourceTemplate => 3,
    }
}

/// The indices of the items of its list a filtering permit shows (`None`: it shows all).
fn shown(cat: &Catalog, permit: &Permit<ListRequest>) -> Option<Vec<usize>> {
    if !permit.filters() {
        return None;
    }
    let kind = permit.target().kind;
    let from = match kind {
        ItemKind::Tool => &cat.tools_from,
        ItemKind::Prompt => &cat.prompts_from,
        ItemKind::Resource => &cat.resources_from,
        ItemKind::ResourceTemplate => &cat.resource_templates_from,
    };
    Some(
        from.iter()
            .enumerate()
            .filter(|(i, o)| {
                permit.shows(&Item {
                    kind,
                    connector: o.connector.as_str(),
                    name: &o.name,
                    exposed: exposed_of(cat, kind, *i),
                    arguments: None,
                })
            })
            .map(|(i, _)| i)
            .collect(),
    )
}

fn exposed_of(cat: &Catalog, kind: ItemKind, i: usize) -> &str {
    match kind {
        ItemKind::Tool => &cat.tools[i].name,
        ItemKind::Prompt => &cat.prompts[i].name,
        ItemKind::Resource => &cat.resources[i].uri,
        ItemKind::ResourceTemplate => &cat.resource_templates[i].uri_template,
    }
}

fn empty() -> Box<RawValue> {
    RawValue::from_string("{}".into()).expect("valid JSON")
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
