//! The merged catalog of one virtual server, built from its connectors' catalogs and the
//! curation rules whenever either changes (never per request).

use std::{collections::HashMap, sync::Arc};

use manifold_config::{ConnectorId, ConnectorUse, MAX_NAME_LEN, ToolUpdates, VirtualServerSpec};
use manifold_policy::glob;
use manifold_upstream::UpstreamCatalog;
use rmcp::model::{JsonObject, Prompt, Resource, ResourceTemplate, Tool};
use serde_json::value::RawValue;

use crate::review::{self, HeldTool, Reviews};

/// Where an exposed tool goes, and what the gateway changes on the way.
#[derive(Debug, Clone)]
pub struct ToolRoute {
    pub connector: ConnectorId,
    pub upstream_name: String,
    /// Removed from the client's arguments (hidden and pinned arguments).
    pub strip: Vec<String>,
    /// Injected into every call, overriding the client.
    pub pinned: JsonObject,
}

#[derive(Debug, Clone)]
pub struct PromptRoute {
    pub connector: ConnectorId,
    pub upstream_name: String,
}

/// Which connector an item comes from, and the upstream's own name or URI of it.
#[derive(Debug, Clone)]
pub struct Origin {
    pub connector: ConnectorId,
    pub name: String,
}

/// One virtual server's merged, curated lists, in a deterministic order, with routes back.
#[derive(Debug, Default)]
pub struct Catalog {
    pub tools: Vec<Tool>,
    /// `tools` as sent to clients, one JSON object each (same order): the upstream's own JSON
    /// with the gateway's changes, so fields rmcp does not model survive.
    pub tools_json: Vec<Box<RawValue>>,
    pub prompts: Vec<Prompt>,
    pub prompts_json: Vec<Box<RawValue>>,
    pub resources: Vec<Resource>,
    pub resources_json: Vec<Box<RawValue>>,
    pub resource_templates: Vec<ResourceTemplate>,
    pub resource_templates_json: Vec<Box<RawValue>>,
    /// Where each item of `tools`, `prompts`, `resources` and `resource_templates` comes from
    /// (same order): its connector and the upstream's name or URI, for per-caller views.
    pub tools_from: Vec<Origin>,
    pub prompts_from: Vec<Origin>,
    pub resources_from: Vec<Origin>,
    pub resource_templates_from: Vec<Origin>,
    pub tool_routes: HashMap<String, ToolRoute>,
    /// Exposed tool name → index in `tools`.
    pub tool_index: HashMap<String, usize>,
    /// Whether each tool's input schema (same order as `tools`) annotates an argument as an
    /// `Mcp-Param-*` header: most do not, and their calls skip that check.
    pub tool_param_headers: Vec<bool>,
    pub prompt_routes: HashMap<String, PromptRoute>,
    /// Exposed URI → connector, for unprefixed connectors' concrete resources.
    pub exact_resources: HashMap<String, ConnectorId>,
    /// (literal prefix of a template, connector) for unprefixed connectors, longest first.
    pub template_prefixes: Vec<(String, ConnectorId)>,
    /// Connectors whose URIs are exposed as `{connector}+{uri}`.
    pub prefixed: Vec<ConnectorId>,
    /// Unprefixed connectors, in configuration order.
    pub unprefixed: Vec<ConnectorId>,
    pub instructions: Option<String>,
    /// What the virtual server offers: the union of its connectors' capabilities, with every
    /// list announcing changes (the gateway announces them).
    pub capabilities: rmcp::model::ServerCapabilities,
    /// Problems found while merging (name collisions), for health and logs.
    pub conflicts: Vec<String>,
    /// Fingerprints of each list, to tell clients only about real changes.
    pub fingerprints: [u64; 3],
    /// Tools left out because their definition is not the approved one (under
    /// `tool_updates = "review"`).
    pub held: Vec<HeldTool>,
    /// A fingerprint of each item of `tools_json`, `prompts_json`, `resources_json` and
    /// `resource_templates_json` (in that order and theirs), to tell whether a caller's view
    /// of a list changed.
    pub item_prints: [Vec<u64>; 4],
    /// `view_print` of each whole list.
    pub list_prints: [u64; 4],
    /// The connectors' catalogs it was built from, in configuration order (to tell, by
    /// identity, whether a connector's lists changed since).
    pub from: Vec<Arc<UpstreamCatalog>>,
}

/// What changed between two catalogs, to send the right `list_changed` notifications.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Changes {
    pub tools: bool,
    pub prompts: bool,
    pub resources: bool,
}

impl Changes {
    pub fn any(&self) -> bool {
        self.tools || self.prompts || self.resources
    }
}

impl Catalog {
    pub fn changes_from(&self, old: &Catalog) -> Changes {
        Changes {
            tools: self.fingerprints[0] != old.fingerprints[0],
            prompts: self.fingerprints[1] != old.fingerprints[1],
            resources: self.fingerprints[2] != old.fingerprints[2],
        }
    }

    /// Merge `inputs` (one per connector, in configuration order) under `spec`'s rules (and,
    /// under review, only the tools whose definitions `reviews` approves).
    pub fn build(
        spec: &VirtualServerSpec,
        inputs: &[(&ConnectorUse, Arc<UpstreamCatalog>)],
        reviews: &Reviews,
    ) -> Catalog {
        let review = spec.tool_updates == ToolUpdates::Review;
        let mut cat = Catalog {
            from: inputs.iter().map(|(_, u)| u.clone()).collect(),
            ..Catalog::default()
        };
        let mut tools: Vec<(Tool, Box<RawValue>, Origin)> = Vec::new();
        let mut prompts: Vec<(Prompt, Box<RawValue>, Origin)> = Vec::new();
        let mut resources: Vec<(Resource, Box<RawValue>, Origin)> = Vec::new();
        let mut templates: Vec<(ResourceTemplate, Box<RawValue>, Origin)> = Vec::new();
        let mut instructions: Vec<String> = spec.instructions.iter().cloned().collect();
        cat.capabilities = merged_capabilities(
            inputs.iter().map(|(_, u)| u.capabilities.as_ref()),
            &spec.extensions,
        );
        for (usage, upstream) in inputs {
            let cid = &usage.connector;
            let from = |name: &str| Origin {
                connector: cid.clone(),
                name: name.to_owned(),
            };
            if usage.prefix {
                cat.prefixed.push(cid.clone());
            } else {
                cat.unprefixed.push(cid.clone());
            }
            if let Some(i) = upstream
                .instructions
                .as_deref()
                .filter(|i| !i.trim().is_empty())
            {
                instructions.push(format!("## {cid}\n{i}"));
            }
            for (i, tool) in upstream.tools.iter().enumerate() {
                let name = tool.name.as_ref();
                if !usage.include.iter().any(|g| glob(g, name))
                    || usage.exclude.iter().any(|g| glob(g, name))
                {
                    continue;
                }
                let mut json = as_sent(&upstream.tools_json, upstream.tools.len(), i, tool);
                if review {
                    let (definition, fingerprint) = review::definition(&json);
                    if reviews.approved(&spec.name, cid.as_str(), name).as_deref()
                        != Some(fingerprint.as_str())
                    {
                        cat.held.push(HeldTool {
                            server: spec.name.clone(),
                            connector: cid.to_string(),
                            tool: name.to_owned(),
                            flags: review::flags(&json, &definition),
                            fingerprint,
                            definition,
                        });
                        continue;
                    }
                }
                let o = usage.tools.get(name);
                let local = o.and_then(|o| o.rename.as_deref()).unwrap_or(name);
                let exposed = exposed_name(usage, &spec.separator, local);
                if cat.tool_routes.contains_key(&exposed) {
                    cat.conflicts.push(format!(
                        "tool {exposed:?} from connector \"{cid}\" is hidden: an earlier connector already exposes that name (prefix the connector or rename the tool)"
                    ));
                    continue;
                }
                let mut t = tool.clone();
                t.name = exposed.clone().into();
                let mut strip = Vec::new();
                let mut pinned = JsonObject::new();
                if let Some(o) = o {
                    if let Some(d) = &o.description {
                        t.description = Some(d.clone().into());
                    }
                    strip.extend(o.hide_args.iter().cloned());
                    for (k, v) in &o.pin_args {
                        strip.push(k.clone());
                        pinned.insert(k.clone(), v.clone());
                    }
                    if !strip.is_empty() {
                        t.input_schema = Arc::new(without_args(&t.input_schema, &strip));
                    }
                }
                json.insert("name".into(), exposed.clone().into());
                if let Some(d) = o.and_then(|o| o.description.as_ref()) {
                    json.insert("description".into(), d.clone().into());
                }
                if !strip.is_empty() {
                    json.insert(
                        "inputSchema".into(),
                        serde_json::Value::Object((*t.input_schema).clone()),
                    );
                }
                let json = raw(&json);
                cat.tool_routes.insert(
                    exposed,
                    ToolRoute {
                        connector: cid.clone(),
                        upstream_name: name.to_owned(),
                        strip,
                        pinned,
                    },
                );
                tools.push((t, json, from(name)));
            }
            for (i, prompt) in upstream.prompts.iter().enumerate() {
                let exposed = exposed_name(usage, &spec.separator, &prompt.name);
                if cat.prompt_routes.contains_key(&exposed) {
                    cat.conflicts.push(format!(
                        "prompt {exposed:?} from connector \"{cid}\" is hidden: an earlier connector already exposes that name"
                    ));
                    continue;
                }
                let mut p = prompt.clone();
                p.name = exposed.clone();
                let mut json = as_sent(&upstream.prompts_json, upstream.prompts.len(), i, prompt);
                json.insert("name".into(), exposed.clone().into());
                cat.prompt_routes.insert(
                    exposed,
                    PromptRoute {
                        connector: cid.clone(),
                        upstream_name: prompt.name.clone(),
                    },
                );
                prompts.push((p, raw(&json), from(&prompt.name)));
            }
            for (i, r) in upstream.resources.iter().enumerate() {
                let origin = from(&r.uri);
                let mut json = as_sent(&upstream.resources_json, upstream.resources.len(), i, r);
                let mut r = r.clone();
                if usage.prefix {
                    r.uri = format!("{cid}+{}", r.uri);
                } else if cat.exact_resources.contains_key(&r.uri) {
                    cat.conflicts.push(format!("resource {:?} from connector \"{cid}\" is hidden: an earlier connector has the same URI", r.uri));
                    continue;
                } else {
                    cat.exact_resources.insert(r.uri.clone(), cid.clone());
                }
                json.insert("uri".into(), r.uri.clone().into());
                resources.push((r, raw(&json), origin));
            }
            for (i, t) in upstream.resource_templates.iter().enumerate() {
                let mut json = as_sent(
                    &upstream.resource_templates_json,
                    upstream.resource_templates.len(),
                    i,
                    t,
                );
                let origin = from(&t.uri_template);
                let mut t = t.clone();
                if usage.prefix {
                    t.uri_template = format!("{cid}+{}", t.uri_template);
                } else {
                    let literal = t
                        .uri_template
                        .split('{')
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    cat.template_prefixes.push((literal, cid.clone()));
                }
                json.insert("uriTemplate".into(), t.uri_template.clone().into());
                templates.push((t, raw(&json), origin));
            }
        }
        // Longest literal prefix wins; ties keep configuration order (stable sort).
        cat.template_prefixes
            .sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        tools.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        (cat.tools, cat.tools_json, cat.tools_from) = unzip3(tools);
        cat.tool_index = cat
            .tools
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.to_string(), i))
            .collect();
        cat.tool_param_headers = cat
            .tools
            .iter()
            .map(|t| !manifold_upstream::param_header_names(&t.input_schema).is_empty())
            .collect();
        prompts.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        (cat.prompts, cat.prompts_json, cat.prompts_from) = unzip3(prompts);
        resources.sort_by(|a, b| a.0.uri.cmp(&b.0.uri));
        (cat.resources, cat.resources_json, cat.resources_from) = unzip3(resources);
        templates.sort_by(|a, b| a.0.uri_template.cmp(&b.0.uri_template));
        (
            cat.resource_templates,
            cat.resource_templates_json,
            cat.resource_templates_from,
        ) = unzip3(templates);
        cat.instructions = (!instructions.is_empty()).then(|| instructions.join("\n\n"));
        cat.item_prints = [
            &cat.tools_json,
            &cat.prompts_json,
            &cat.resources_json,
            &cat.resource_templates_json,
        ]
        .map(|items| items.iter().map(|j| fnv1a(j.get().as_bytes())).collect());
        cat.list_prints = [0, 1, 2, 3].map(|k| view_print(cat.item_prints[k].iter().copied()));
        cat.fingerprints = [
            fingerprint(&texts(&cat.tools_json)),
            fingerprint(&texts(&cat.prompts_json)),
            fingerprint(&(
                texts(&cat.resources_json),
                texts(&cat.resource_templates_json),
            )),
        ];
        cat
    }

    /// Which connector serves `uri` (as the client sees it), and the URI to send upstream.
    pub fn route_resource(&self, uri: &str) -> Option<(ConnectorId, String)> {
        if let Some((scheme, rest)) = uri.split_once('+')
            && let Some(cid) = self.prefixed.iter().find(|c| c.as_str() == scheme)
        {
            return Some((cid.clone(), rest.to_owned()));
        }
        if let Some(cid) = self.exact_resources.get(uri) {
            return Some((cid.clone(), uri.to_owned()));
        }
        if let Some((_, cid)) = self
            .template_prefixes
            .iter()
            .find(|(p, _)| !p.is_empty() && uri.starts_with(p.as_str()))
        {
            return Some((cid.clone(), uri.to_owned()));
        }
        // One unprefixed connector can own every other URI (e.g. dynamic resources).
        match self.unprefixed.as_slice() {
            [only] => Some((only.clone(), uri.to_owned())),
            _ => None,
        }
    }

    /// The URI a client sees for a connector's `uri` (for `resources/updated`).
    pub fn expose_uri(&self, connector: &ConnectorId, uri: &str) -> String {
        if self.prefixed.contains(connector) {
            format!("{connector}+{uri}")
        } else {
            uri.to_owned()
        }
    }
}

/// The union of the connectors' capabilities (`None`: a connector not reached yet, which may
/// offer anything, so everything is offered). Lists always announce changes: the gateway
/// re-reads its connectors and tells clients when the merged list changes.
fn merged_capabilities<'a>(
    upstreams: impl Iterator<Item = Option<&'a rmcp::model::ServerCapabilities>>,
    extensions: &[String],
) -> rmcp::model::ServerCapabilities {
    let (mut tools, mut prompts, mut resources, mut subscribe, mut completions, mut logging) =
        (false, false, false, false, false, false);
    for caps in upstreams {
        match caps {
            None => {
                (tools, prompts, resources, subscribe, completions, logging) =
                    (true, true, true, true, true, true);
            }
            Some(c) => {
                tools |= c.tools.is_some();
                prompts |= c.prompts.is_some();
                resources |= c.resources.is_some();
                subscribe |= c
                    .resources
                    .as_ref()
                    .is_some_and(|r| r.subscribe == Some(true));
                completions |= c.completions.is_some();
                #[allow(deprecated)] // logging is a legacy-era capability we route
                {
                    logging |= c.logging.is_some();
                }
            }
        }
    }
    let mut v = serde_json::Map::new();
    if tools {
        v.insert("tools".into(), serde_json::json!({ "listChanged": true }));
    }
    if prompts {
        v.insert("prompts".into(), serde_json::json!({ "listChanged": true }));
    }
    if resources {
        v.insert(
            "resources".into(),
            serde_json::json!({ "listChanged": true, "subscribe": subscribe }),
        );
    }
    if completions {
        v.insert("completions".into(), serde_json::json!({}));
    }
    if logging {
        v.insert("logging".into(), serde_json::json!({}));
    }
    // The gateway's own extensions (the upstreams' are theirs, not the virtual server's).
    if !extensions.is_empty() {
        let ext: serde_json::Map<String, serde_json::Value> = extensions
            .iter()
            .map(|e| (e.clone(), serde_json::json!({})))
            .collect();
        v.insert("extensions".into(), serde_json::Value::Object(ext));
    }
    serde_json::from_value(serde_json::Value::Object(v)).expect("valid server capabilities")
}

/// `{connector}{sep}{name}` (or `name` unprefixed), made a valid name of at most 64 characters.
pub fn exposed_name(usage: &ConnectorUse, separator: &str, local: &str) -> String {
    let full = if usage.prefix {
        format!("{}{separator}{local}", usage.connector)
    } else {
        local.to_owned()
    };
    shorten(&full)
}

/// Deterministic and stable: valid short names pass unchanged; otherwise characters outside
/// `A-Za-z0-9_-.` become `_`, and if anything changed or the name is too long, the name is cut
/// to leave room for `_` and 8 hex digits of a hash of the original, so distinct names stay
/// distinct across restarts and versions.
pub fn shorten(full: &str) -> String {
    if manifold_config::valid_tool_name(full) {
        return full.to_owned();
    }
    let clean: String = full
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_-.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let hash = format!("{:08x}", fnv1a(full.as_bytes()) as u32);
    let keep = MAX_NAME_LEN - 1 - hash.len();
    let mut cut: String = clean.chars().take(keep).collect();
    cut.push('_');
    cut.push_str(&hash);
    cut
}

/// FNV-1a, 64-bit: stable across Rust versions, unlike `DefaultHasher`.
/// The fingerprint of a view of a list: of the fingerprints of the items it shows, in order.
pub fn view_print(items: impl Iterator<Item = u64>) -> u64 {
    items.fold(0xcbf2_9ce4_8422_2325, |h, p| {
        (h ^ p).wrapping_mul(0x0100_0000_01b3).rotate_left(17)
    })
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Item `i` of a list as its upstream sent it; serialised from the typed item if the raw list
/// does not line up (a catalog built without raw JSON, as in unit tests).
fn as_sent<T: serde::Serialize>(
    raw: &[Arc<JsonObject>],
    typed_len: usize,
    i: usize,
    item: &T,
) -> JsonObject {
    match raw.get(i) {
        Some(j) if raw.len() == typed_len => (**j).clone(),
        _ => match serde_json::to_value(item) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => JsonObject::new(),
        },
    }
}

fn unzip3<A, B, C>(v: Vec<(A, B, C)>) -> (Vec<A>, Vec<B>, Vec<C>) {
    let mut out = (
        Vec::with_capacity(v.len()),
        Vec::with_capacity(v.len()),
        Vec::with_capacity(v.len()),
    );
    for (a, b, c) in v {
        out.0.push(a);
        out.1.push(b);
        out.2.push(c);
    }
    out
}

fn texts(v: &[Box<RawValue>]) -> Vec<&str> {
    v.iter().map(|j| j.get()).collect()
}

fn raw(json: &JsonObject) -> Box<RawValue> {
    serde_json::value::to_raw_value(json).expect("a JSON object serialises")
}

fn fingerprint<T: serde::Serialize>(v: &T) -> u64 {
    fnv1a(&serde_json::to_vec(v).unwrap_or_default())
}

/// The schema without the given properties (and without them in `required`).
fn without_args(schema: &JsonObject, args: &[String]) -> JsonObject {
    let mut s = schema.clone();
    if let Some(serde_json::Value::Object(props)) = s.get_mut("properties") {
        for a in args {
            props.remove(a);
        }
    }
    if let Some(serde_json::Value::Array(req)) = s.get_mut("required") {
        req.retain(|v| !v.as_str().is_some_and(|n| args.iter().any(|a| a == n)));
    }
    s
}
