//! The running gateway: its connectors and virtual servers (a `Runtime` swapped whole on
//! reload), its sessions, the MRTR bridge, the seams, and the health report.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use arc_swap::ArcSwap;
use manifold_config::{Config, ConnectorId};
use manifold_policy::{ItemKind, Principal};
use manifold_router::{Changes, VirtualServer};
use manifold_upstream::{Connector, EnvLookup, HealthState, UpstreamEvent};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::{Seams, drain, jsonrpc, mrtr, notify, session::Sessions};

/// Everything that a config reload replaces at once.
pub(crate) struct Runtime {
    pub config: Arc<Config>,
    /// `gateway.allowed_hosts` and `gateway.allowed_origins`, parsed.
    pub allowed: crate::origin::Allowed,
    pub connectors: BTreeMap<ConnectorId, Arc<Connector>>,
    pub servers: BTreeMap<String, Arc<VirtualServer>>,
}

pub struct Gateway {
    pub(crate) runtime: ArcSwap<Runtime>,
    /// Serialises reloads; never held across `.await`.
    apply_lock: Mutex<()>,
    pub(crate) sessions: Sessions,
    events: broadcast::Sender<UpstreamEvent>,
    env: EnvLookup,
    pub(crate) shutdown: CancellationToken,
    /// MCP requests whose response is still being produced (for the shutdown drain).
    pub(crate) inflight: drain::Inflight,
    /// Upstream sessions of `sessions = "per_client"` connectors, by client.
    pub(crate) pool: Arc<manifold_upstream::Pool>,
    /// Calls of 2026-07-28 clients parked between MRTR rounds.
    pub(crate) bridge: mrtr::Bridge,
    pub(crate) seams: Seams,
    /// `gateway.initialize_per_minute`, per client.
    pub(crate) initializes: crate::admission::RateLimit,
    /// Connectors a reload replaced or removed, finishing their calls before they stop.
    retiring: Mutex<Vec<Arc<Connector>>>,
    /// Log lines about turned-away `initialize` requests, at most one per 10 s.
    pub(crate) turned_away: Mutex<crate::conn::Refusals>,
}

impl Gateway {
    /// Start every eager connector and the event fan-out, with the default seams (anonymous
    /// callers, everything allowed, configured credentials, audit to the log). Needs a Tokio
    /// runtime.
    pub fn start(config: Config, env: EnvLookup) -> Arc<Self> {
        Self::start_with(config, env, Seams::default())
    }

    /// `start`, with the given seams.
    pub fn start_with(config: Config, env: EnvLookup, seams: Seams) -> Arc<Self> {
        let (events, _) = broadcast::channel(4096);
        let pool = Arc::new(manifold_upstream::Pool::new(env.clone(), events.clone()));
        let gw = Arc::new(Self {
            runtime: ArcSwap::from_pointee(Runtime {
                allowed: Default::default(),
                config: Arc::new(config.clone()),
                connectors: BTreeMap::new(),
                servers: BTreeMap::new(),
            }),
            apply_lock: Mutex::new(()),
            sessions: Sessions::default(),
            events,
            pool,
            env,
            shutdown: CancellationToken::new(),
            inflight: drain::Inflight::default(),
            bridge: mrtr::Bridge::default(),
            seams,
            initializes: crate::admission::RateLimit::new(),
            turned_away: Mutex::new(Default::default()),
            retiring: Mutex::new(Vec::new()),
        });
        tokio::spawn(notify::fan_out(Arc::downgrade(&gw), gw.events.subscribe()));
        tokio::spawn(notify::expire_idle(Arc::downgrade(&gw)));
        gw.apply_inner(config, true);
        gw
    }

    pub fn config(&self) -> Arc<Config> {
        self.runtime.load().config.clone()
    }

    pub fn virtual_server(&self, name: &str) -> Option<Arc<VirtualServer>> {
        self.runtime.load().servers.get(name).cloned()
    }

    pub fn connectors(&self) -> Vec<Arc<Connector>> {
        self.runtime.load().connectors.values().cloned().collect()
    }

    pub fn servers(&self) -> Vec<Arc<VirtualServer>> {
        self.runtime.load().servers.values().cloned().collect()
    }

    /// Live legacy sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.count()
    }

    /// Apply a new, already validated config: unchanged connectors keep running (and their
    /// sessions), changed ones restart, removed ones stop; clients whose lists changed are told.
    pub fn apply(self: &Arc<Self>, config: Config) {
        self.apply_inner(config, false);
    }

    fn apply_inner(self: &Arc<Self>, config: Config, first: bool) {
        let _guard = self.apply_lock.lock().expect("apply lock");
        let old = self.runtime.load_full();
        let mut connectors = BTreeMap::new();
        for (id, spec) in &config.connectors {
            match old.connectors.get(id) {
                Some(c) if c.spec() == spec => {
                    connectors.insert(id.clone(), c.clone());
                }
                prev => {
                    let c = Connector::start(spec.clone(), self.events.clone(), self.env.clone());
                    if let Some(p) = prev {
                        // The new one starts beside the old, which finishes its calls first.
                        tracing::info!(connector = %id, "connector changed; starting the new settings beside the old");
                        c.inherit_last_known(p);
                        self.retire(p);
                    } else if !first {
                        tracing::info!(connector = %id, "connector added");
                    }
                    connectors.insert(id.clone(), Arc::new(c));
                }
            }
        }
        for (id, c) in &old.connectors {
            if !connectors.contains_key(id) {
                tracing::info!(connector = %id, "connector removed; stopping it once its calls end");
                self.retire(c);
            }
        }
        let all: Vec<Arc<Connector>> = connectors.values().cloned().collect();
        // Per-client sessions of removed, reconfigured or now-shared connectors stop.
        self.pool.retain(|spec| {
            config
                .connectors
                .get(&spec.id)
                .is_some_and(|s| s.sessions == manifold_config::SessionMode::PerClient)
        });
        let mut servers = BTreeMap::new();
        let mut notify = Vec::new();
        for (name, spec) in &config.servers {
            let vs = Arc::new(VirtualServer::new(
                spec.clone(),
                &all,
                self.pool.clone(),
                config.gateway.page_size,
                self.seams.reviews.clone(),
            ));
            if let Some(prev) = old.servers.get(name) {
                let changes = vs.catalog().changes_from(&prev.catalog());
                if changes.any() {
                    notify.push((name.clone(), changes));
                }
            }
            servers.insert(name.clone(), vs);
        }
        for name in old
            .servers
            .keys()
            .filter(|n| !config.servers.contains_key(*n))
        {
            tracing::info!(server = %name, "virtual server removed");
        }
        let superseded: Vec<Arc<VirtualServer>> = old.servers.values().cloned().collect();
        self.runtime.store(Arc::new(Runtime {
            allowed: crate::origin::Allowed::new(
                &config.gateway.allowed_hosts,
                &config.gateway.allowed_origins,
            ),
            config: Arc::new(config),
            connectors,
            servers,
        }));
        // Requests waiting on the old servers for connectors to start move to the new ones.
        for vs in superseded {
            vs.supersede();
        }
        for (name, changes) in notify {
            self.notify_changes(&name, changes);
        }
    }

    /// The approved tool definitions changed (`Reviews::replace`): the servers under review
    /// rebuild their catalogs, and their clients are told what changed.
    pub fn review_changed(&self) {
        for vs in self.servers() {
            if vs.spec.tool_updates == manifold_config::ToolUpdates::Review {
                let changes = vs.review_changed();
                if changes.any() {
                    self.notify_changes(vs.name(), changes);
                }
            }
        }
    }

    /// Let `c` finish its calls, then stop it (and forget it once stopped).
    fn retire(&self, c: &Arc<Connector>) {
        c.retire();
        let mut retiring = self.retiring.lock().expect("retiring lock");
        retiring.retain(|r| !r.is_stopped());
        retiring.push(c.clone());
    }

    /// Tell `server`'s clients which of its lists changed: legacy sessions on their standalone
    /// streams, 2026-07-28 clients on their `subscriptions/listen` streams (each sends only
    /// what its client accepted).
    pub fn notify_changes(&self, server: &str, changes: Changes) {
        let kinds = [
            changes.tools,
            changes.prompts,
            changes.resources,
            changes.resources,
        ];
        self.notify_views(server, kinds, true, None);
    }

    /// The policy changed (roles, conditions): tell each client whose own view of a list it
    /// changed (among those that were shown it).
    pub fn policy_changed(&self) {
        for vs in self.servers() {
            self.notify_views(vs.name(), [true; 4], false, None);
        }
    }

    /// `who` made a request on `server` under other roles or scopes than their sessions and
    /// listen streams there hold: those now hold `who`, and each is told of the lists whose view
    /// changed for it.
    pub(crate) fn caller_changed(&self, server: &str, who: &Arc<Principal>) {
        if self.sessions.caller_seen(server, who, true) {
            self.notify_caller(server, who);
        }
    }

    /// Tell the clients of `who` on `server` of the lists whose view changed for them.
    pub(crate) fn notify_caller(&self, server: &str, who: &Arc<Principal>) {
        self.notify_views(server, [true; 4], false, Some(who));
    }

    /// Whether `who` may still hear of updates to the resource `uri` of `connector` (exposed
    /// as `exposed`) on `server`: decided when each update is delivered, so a policy change
    /// stops the updates of a subscription made before it.
    pub(crate) fn may_watch(
        &self,
        server: &str,
        who: &Principal,
        via: manifold_policy::Via,
        connector: &ConnectorId,
        uri: &str,
        exposed: &str,
    ) -> bool {
        let action = manifold_policy::Action {
            server,
            via,
            kind: manifold_policy::ActionKind::Use {
                verb: manifold_policy::Verb::Subscribe,
                item: manifold_policy::Item {
                    kind: ItemKind::Resource,
                    connector: connector.as_str(),
                    name: uri,
                    exposed,
                    arguments: None,
                },
            },
        };
        self.permits(who, &action)
    }

    /// Whether the policy lets `who` do `action` (outside a request: no permit is made).
    fn permits(&self, who: &Principal, action: &manifold_policy::Action<'_>) -> bool {
        use manifold_policy::Decision;
        matches!(
            self.seams.policy.decide(who, action),
            Decision::Allow | Decision::Only(_) | Decision::Ask(_)
        )
    }

    /// Whether `who` may still connect to `server` (and so hear its connectors' logs).
    pub(crate) fn may_connect(
        &self,
        server: &str,
        who: &Principal,
        via: manifold_policy::Via,
    ) -> bool {
        let action = manifold_policy::Action {
            server,
            via,
            kind: manifold_policy::ActionKind::Connect,
        };
        self.permits(who, &action)
    }

    /// What `who`, whose requests arrive `via`, is shown of each list of `vs`
    /// (`VirtualServer::view`; 0 where refused).
    pub(crate) fn views_of(
        &self,
        vs: &VirtualServer,
        who: &Arc<Principal>,
        via: manifold_policy::Via,
        client: u64,
    ) -> [u64; 4] {
        [
            ItemKind::Tool,
            ItemKind::Prompt,
            ItemKind::Resource,
            ItemKind::ResourceTemplate,
        ]
        .map(|kind| {
            match manifold_policy::authorize(
                self.seams.policy.as_ref(),
                who,
                via,
                vs.list_request(kind, None),
            ) {
                Ok(permit) => vs.view(&permit, client),
                Err(_) => 0,
            }
        })
    }

    /// Tell the sessions and listen streams of `server` about the lists of `kinds` (by
    /// `kind_index`) whose view changed for them; `unknown`: whether a view never recorded
    /// counts as changed. Views are computed once per principal and catalog.
    fn notify_views(
        &self,
        server: &str,
        kinds: [bool; 4],
        unknown: bool,
        only: Option<&Arc<Principal>>,
    ) {
        let Some(vs) = self.virtual_server(server) else {
            return;
        };
        let listeners = self.sessions.listeners_of(server);
        let sessions = self.sessions.of_server(server);
        if listeners.is_empty() && sessions.is_empty() {
            return;
        }
        type Key = (
            manifold_policy::PrincipalId,
            Vec<String>,
            Vec<String>,
            manifold_policy::Via,
            usize,
        );
        let mut seen: std::collections::HashMap<Key, [u64; 4]> = Default::default();
        let mut changed = |who: &Arc<Principal>,
                           via: manifold_policy::Via,
                           client: u64,
                           views: &crate::session::Views| {
            let cat = Arc::as_ptr(&vs.catalog_for(client)) as usize;
            let key = (
                who.id().clone(),
                who.roles.clone(),
                who.scopes.clone(),
                via,
                cat,
            );
            let prints = *seen
                .entry(key)
                .or_insert_with(|| self.views_of(&vs, who, via, client));
            let mut c = [false; 4];
            for k in 0..4 {
                c[k] = kinds[k] && views.update(k, prints[k], unknown);
            }
            Changes {
                tools: c[0],
                prompts: c[1],
                resources: c[2] || c[3],
            }
        };
        let theirs = |p: &Principal| only.is_none_or(|o| crate::session::same_caller(o, p));
        for l in listeners {
            let who = l.principal.load_full();
            if !theirs(&who) {
                continue;
            }
            let c = changed(&who, l.via, l.client, &l.views);
            l.list_changed(c.tools, c.prompts, c.resources);
        }
        let mut told = 0;
        for s in &sessions {
            let who = s.principal();
            if !theirs(&who) {
                continue;
            }
            let c = changed(&who, s.via(), s.client, &s.views);
            if c.any() {
                told += 1;
                notify_session(s, c);
            }
        }
        tracing::debug!(
            server,
            told,
            sessions = sessions.len(),
            "list changes told to the clients whose view changed"
        );
    }

    /// End a legacy session (DELETE, idle expiry, shutdown): its streams and relayed requests
    /// end, and so do its per-client upstream sessions.
    pub(crate) fn end_session(&self, key: &str) {
        if let Some(s) = self.sessions.remove(key) {
            self.pool.end_client(s.client);
            if let Some(vs) = self.virtual_server(&s.server) {
                vs.forget_client(s.client);
            }
        }
    }

    /// Stop accepting MCP traffic and stop every connector and per-client session, waiting (at
    /// most 10 s) until their process groups are gone.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        for key in self.sessions.all_keys() {
            self.end_session(&key);
        }
        let mut all: Vec<Arc<Connector>> =
            self.runtime.load().connectors.values().cloned().collect();
        all.extend(self.pool.shutdown());
        all.extend(std::mem::take(
            &mut *self.retiring.lock().expect("retiring lock"),
        ));
        for c in &all {
            c.shutdown();
        }
        let stopped = futures::future::join_all(all.iter().map(|c| c.stopped()));
        if tokio::time::timeout(std::time::Duration::from_secs(10), stopped)
            .await
            .is_err()
        {
            tracing::warn!("some connectors did not stop within 10s");
        }
    }

    /// JSON health: `status` is `ok` when every connector is up, else `degraded`.
    /// Readiness, for load balancers and orchestrators (`/readyz`): ready once every eager
    /// connector's first start has finished (it came up, or failed and is retrying) and, when
    /// there is any eager connector, while at least one of them is up. Lazy connectors do not
    /// count: they start on first use. Returns whether ready, and the body that says why.
    pub fn readiness(&self) -> (bool, serde_json::Value) {
        let rt = self.runtime.load();
        let mut waiting = Vec::new();
        let (mut eager, mut up) = (0, 0);
        for (id, c) in &rt.connectors {
            let lazy = matches!(&c.spec().transport,
                manifold_config::TransportSpec::Stdio(s) if s.start == manifold_config::StartMode::Lazy);
            if lazy {
                continue;
            }
            eager += 1;
            let h = c.health();
            up += usize::from(h.state == HealthState::Up);
            if !h.settled() {
                waiting.push(id.to_string());
            }
        }
        if !waiting.is_empty() {
            let body = serde_json::json!({ "status": "starting", "waiting_for": waiting });
            (false, body)
        } else if eager > 0 && up == 0 {
            let body = serde_json::json!({
                "status": "unavailable",
                "error": "no connector is up; see /healthz/detail",
            });
            (false, body)
        } else {
            (true, serde_json::json!({ "status": "ready" }))
        }
    }

    pub fn health(&self, detailed: bool) -> serde_json::Value {
        let rt = self.runtime.load();
        let mut all_up = true;
        let per_client = self.pool.counts();
        let mut connectors = serde_json::Map::new();
        for (id, c) in &rt.connectors {
            let h = c.health();
            // A lazy connector that nobody has used yet is healthy.
            all_up &= matches!(h.state, HealthState::Up | HealthState::Idle);
            let v = if detailed {
                let mut v = serde_json::to_value(&h).unwrap_or_default();
                if c.spec().sessions == manifold_config::SessionMode::PerClient {
                    v["per_client_sessions"] =
                        serde_json::json!(per_client.get(id).copied().unwrap_or(0));
                }
                v
            } else {
                serde_json::json!(h.state)
            };
            connectors.insert(id.to_string(), v);
        }
        let mut out = serde_json::json!({
            "status": if all_up { "ok" } else { "degraded" },
            "connectors": connectors,
        });
        if detailed {
            let servers: serde_json::Map<String, serde_json::Value> = rt
                .servers
                .iter()
                .map(|(n, vs)| {
                    let cat = vs.catalog();
                    (
                        n.clone(),
                        serde_json::json!({
                            "path": format!("/mcp/{n}"),
                            "connectors": vs.spec.connectors.iter().map(|u| u.connector.as_str()).collect::<Vec<_>>(),
                            "tools": cat.tools.len(),
                            "prompts": cat.prompts.len(),
                            "resources": cat.resources.len(),
                            "resource_templates": cat.resource_templates.len(),
                            "conflicts": cat.conflicts,
                            "sessions": self.sessions.count_of(n),
                        }),
                    )
                })
                .collect();
            out["servers"] = serde_json::Value::Object(servers);
        }
        out
    }
}

/// The `list_changed` notifications of `changes`, on a session's standalone stream.
pub(crate) fn notify_session(s: &crate::session::Session, changes: Changes) {
    for (changed, method) in [
        (changes.tools, "notifications/tools/list_changed"),
        (changes.prompts, "notifications/prompts/list_changed"),
        (changes.resources, "notifications/resources/list_changed"),
    ] {
        if changed {
            s.notify(jsonrpc::notification(method, serde_json::json!({})));
        }
    }
}
