//! Roles: the configuration's simple rules (`[roles.NAME]`). A role grants virtual servers and,
//! there, items by `CONNECTOR/NAME` glob; a `deny` of any of the caller's roles wins over every
//! `allow`, and nothing is allowed that no role grants. Lists and uses are decided by the same
//! function, so what a caller can list is what they can use. An anonymous caller holds the role
//! `anonymous` (if defined). Without any role rules everything is allowed (the gateway before
//! roles). The rules can be replaced while the gateway runs (`replace`): the next decision uses
//! the new ones.

use std::{
    borrow::Cow,
    collections::{HashMap, HashSet},
    sync::Arc,
};

use arc_swap::{ArcSwap, ArcSwapOption};

use crate::{Action, ActionKind, Conditions, Decision, Item, Policy, Principal, Via, glob};

/// The role an anonymous caller holds.
pub const ANONYMOUS_ROLE: &str = "anonymous";

/// One role's rules, as the configuration gives them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoleRules {
    /// Virtual server names, or `*`.
    pub servers: Vec<String>,
    /// `CONNECTOR/NAME` globs.
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    /// `CONNECTOR/NAME` globs of tools whose calls the member must confirm first (if another
    /// rule allows them at all).
    pub ask: Vec<String>,
}

#[derive(Debug, Default)]
struct Role {
    servers: Vec<String>,
    allow: Rules,
    deny: Rules,
    ask: Rules,
    /// The rules as written, for explanations.
    written: RoleRules,
}

/// One role's allow (or deny) globs, indexed by connector: an item is matched by a hash lookup
/// and the name globs of its own connector, not by every rule (lists decide every item).
#[derive(Debug, Default)]
struct Rules {
    /// Rules whose connector is a plain name: that name → its name globs.
    by_connector: HashMap<String, Names>,
    /// Rules whose connector is itself a glob: (connector glob, name glob).
    wild: Vec<(String, String)>,
}

/// The name globs of one connector's rules: plain names in a set, patterns in a list.
#[derive(Debug, Default)]
struct Names {
    exact: HashSet<String>,
    globs: Vec<String>,
}

fn is_glob(s: &str) -> bool {
    s.contains(['*', '?'])
}

impl Rules {
    /// `CONNECTOR/NAME` globs (the configuration checked that each has a `/`).
    fn new(rules: &[String]) -> Self {
        let mut me = Self::default();
        for (c, n) in rules.iter().filter_map(|r| r.split_once('/')) {
            if is_glob(c) {
                me.wild.push((c.to_owned(), n.to_owned()));
                continue;
            }
            let names = me.by_connector.entry(c.to_owned()).or_default();
            if is_glob(n) {
                names.globs.push(n.to_owned());
            } else {
                names.exact.insert(n.to_owned());
            }
        }
        me
    }

    fn matches(&self, item: &Item<'_>) -> bool {
        if let Some(names) = self.by_connector.get(item.connector)
            && (names.exact.contains(item.name) || names.globs.iter().any(|g| glob(g, item.name)))
        {
            return true;
        }
        self.wild
            .iter()
            .any(|(c, n)| glob(c, item.connector) && glob(n, item.name))
    }
}

impl Role {
    fn grants(&self, server: &str) -> bool {
        self.servers.iter().any(|s| s == "*" || s == server)
    }
}

/// The policy of the configuration's roles.
pub struct RolePolicy {
    roles: ArcSwap<HashMap<String, Role>>,
    /// Cedar conditions that narrow what the roles allow, if any.
    conditions: ArcSwapOption<Conditions>,
    /// The roles each group gives its members (`[groups.NAME]`).
    groups: ArcSwap<HashMap<String, Vec<String>>>,
}

impl RolePolicy {
    pub fn new<'a>(roles: impl IntoIterator<Item = (&'a String, &'a RoleRules)>) -> Self {
        let me = Self {
            roles: ArcSwap::from_pointee(HashMap::new()),
            conditions: ArcSwapOption::empty(),
            groups: ArcSwap::from_pointee(HashMap::new()),
        };
        me.replace(roles);
        me
    }

    /// New roles for each group's members, for every decision from now on.
    pub fn replace_groups<'a>(
        &self,
        groups: impl IntoIterator<Item = (&'a String, &'a Vec<String>)>,
    ) {
        let map = groups
            .into_iter()
            .map(|(g, r)| (g.clone(), r.clone()))
            .collect();
        self.groups.store(Arc::new(map));
    }

    /// `who` with the roles their groups give them too (themselves when those add none): what
    /// the rules and the conditions see as their roles.
    fn effective<'a>(&self, who: &'a Principal) -> Cow<'a, Principal> {
        if who.groups.is_empty() || who.is_anonymous() {
            return Cow::Borrowed(who);
        }
        let groups = self.groups.load();
        let given = who
            .groups
            .iter()
            .filter_map(|g| groups.get(g))
            .flatten()
            .filter(|r| !who.roles.contains(r));
        let mut roles: Vec<String> = Vec::new();
        for r in given {
            if !roles.contains(r) {
                roles.push(r.clone());
            }
        }
        if roles.is_empty() {
            return Cow::Borrowed(who);
        }
        let mut all = who.clone();
        all.roles.extend(roles);
        Cow::Owned(all)
    }

    /// New rules, for every decision from now on.
    pub fn replace<'a>(&self, roles: impl IntoIterator<Item = (&'a String, &'a RoleRules)>) {
        let compiled = roles
            .into_iter()
            .map(|(name, r)| {
                let role = Role {
                    servers: r.servers.clone(),
                    allow: Rules::new(&r.allow),
                    deny: Rules::new(&r.deny),
                    ask: Rules::new(&r.ask),
                    written: r.clone(),
                };
                (name.clone(), role)
            })
            .collect();
        self.roles.store(Arc::new(compiled));
    }

    /// New roles and conditions together, for every decision from now on.
    pub fn replace_all<'a>(
        &self,
        roles: impl IntoIterator<Item = (&'a String, &'a RoleRules)>,
        conditions: Option<Conditions>,
    ) {
        self.conditions.store(conditions.map(Arc::new));
        self.replace(roles);
    }
}

/// Why a decision is what it is, for administrators (`manifold policy explain`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    pub allowed: bool,
    /// Allowed once the member confirms the call (a role's `ask` matches it).
    pub confirm: bool,
    /// What decided, a line each: the roles and the rules as the configuration writes them.
    pub because: Vec<String>,
}

impl RolePolicy {
    /// The decision on `who` connecting to `server` (`item` `None`) or using `item` there,
    /// and the rules that produced it. It agrees with `decide` (a test says so).
    ///
    /// With Cedar conditions, an item with `arguments` is explained as a call with them, and
    /// one without as an entry of a list (only the conditions that do not look at arguments).
    pub fn explain(
        &self,
        who: &Principal,
        server: &str,
        via: Via,
        item: Option<&Item<'_>>,
    ) -> Explanation {
        let mut given = Vec::new();
        if !who.is_anonymous() {
            let groups = self.groups.load();
            for g in &who.groups {
                match groups.get(g) {
                    Some(r) => given.push(format!("group {g:?} gives the roles {r:?}")),
                    None => given.push(format!("group {g:?} is not in [groups]: it gives no role")),
                }
            }
        }
        let who = &*self.effective(who);
        let mut why = self.explain_roles(who, server, item);
        if !given.is_empty() {
            let at = usize::from(
                why.because
                    .first()
                    .is_some_and(|b| b.starts_with("an anonymous")),
            );
            why.because.splice(at..at, given);
        }
        let conditions = self.conditions.load_full();
        if let (Some(c), Some(item), true) = (conditions.as_ref(), item, why.allowed) {
            let listing = item.arguments.is_none();
            match c.forbids(who, server, via, item, listing) {
                Some(forbidden) => {
                    why.allowed = false;
                    why.confirm = false;
                    why.because.push(format!("a Cedar condition takes it away: {forbidden}"));
                }
                None if listing => why.because.push(
                    "no Cedar condition hides it from lists; those on the arguments decide each call (give the arguments to see one)".to_owned(),
                ),
                None => why
                    .because
                    .push("no Cedar condition forbids this call".to_owned()),
            }
        }
        why
    }

    fn explain_roles(&self, who: &Principal, server: &str, item: Option<&Item<'_>>) -> Explanation {
        let roles = self.roles.load_full();
        let mut because = Vec::new();
        if roles.is_empty() {
            because.push("the configuration has no [roles]: roles allow everything".to_owned());
            return Explanation {
                allowed: true,
                confirm: false,
                because,
            };
        }
        let mine: Vec<&str> = if who.is_anonymous() {
            because.push(format!(
                "an anonymous caller holds the role {ANONYMOUS_ROLE:?}"
            ));
            vec![ANONYMOUS_ROLE]
        } else {
            who.roles.iter().map(String::as_str).collect()
        };
        if mine.is_empty() {
            because.push("holds no role".to_owned());
        }
        let mut held = Vec::new();
        for name in mine {
            match roles.get(name) {
                Some(r) => held.push((name, r)),
                None => because.push(format!(
                    "role {name:?} is not in [roles]: it grants nothing"
                )),
            }
        }
        let granting: Vec<&str> = held
            .iter()
            .filter(|(_, r)| r.grants(server))
            .map(|(n, _)| *n)
            .collect();
        if granting.is_empty() {
            because.push(format!("no role held grants the virtual server {server:?}"));
            return Explanation {
                allowed: false,
                confirm: false,
                because,
            };
        }
        for n in &granting {
            because.push(format!("role {n:?} grants the virtual server {server:?}"));
        }
        let Some(item) = item else {
            return Explanation {
                allowed: true,
                confirm: false,
                because,
            };
        };
        let written = |rules: &[String]| -> Vec<String> {
            rules
                .iter()
                .filter(|r| {
                    r.split_once('/')
                        .is_some_and(|(c, n)| glob(c, item.connector) && glob(n, item.name))
                })
                .cloned()
                .collect()
        };
        let mut allowed = false;
        for (n, r) in &held {
            let hits = written(&r.written.allow);
            if hits.is_empty() {
                continue;
            }
            if granting.contains(n) {
                allowed = true;
                because.push(format!("role {n:?} allows it: {hits:?}"));
            } else {
                because.push(format!(
                    "role {n:?} would allow it ({hits:?}) but does not grant {server:?}"
                ));
            }
        }
        if !allowed {
            because.push(format!(
                "no role held allows {}/{} on {server:?}",
                item.connector, item.name
            ));
        }
        for (n, r) in &held {
            let hits = written(&r.written.deny);
            if !hits.is_empty() {
                allowed = false;
                because.push(format!("role {n:?} denies it: {hits:?} (a deny wins)"));
            }
        }
        let mut confirm = false;
        if allowed && item.kind == crate::ItemKind::Tool {
            for (n, r) in &held {
                let hits = written(&r.written.ask);
                if !hits.is_empty() {
                    confirm = true;
                    because.push(format!(
                        "role {n:?} asks the member to confirm each call: {hits:?}"
                    ));
                }
            }
        }
        Explanation {
            allowed,
            confirm,
            because,
        }
    }
}

/// The caller's roles under one set of rules, on one virtual server.
struct Held {
    roles: Arc<HashMap<String, Role>>,
    /// The caller's roles that exist.
    names: Vec<String>,
    server: String,
}

impl Held {
    fn of(roles: Arc<HashMap<String, Role>>, who: &Principal, server: &str) -> Self {
        let mine: Vec<&str> = if who.is_anonymous() {
            vec![ANONYMOUS_ROLE]
        } else {
            who.roles.iter().map(String::as_str).collect()
        };
        let names = mine
            .into_iter()
            .filter(|r| roles.contains_key(*r))
            .map(str::to_owned)
            .collect();
        Self {
            roles,
            names,
            server: server.to_owned(),
        }
    }

    fn each(&self) -> impl Iterator<Item = &Role> {
        self.names.iter().filter_map(|n| self.roles.get(n))
    }

    /// Without roles (only conditions) every server and item is granted.
    fn connects(&self) -> bool {
        self.roles.is_empty() || self.each().any(|r| r.grants(&self.server))
    }

    fn allows(&self, item: &Item<'_>) -> bool {
        self.roles.is_empty()
            || self
                .each()
                .any(|r| r.grants(&self.server) && r.allow.matches(item))
                && !self.each().any(|r| r.deny.matches(item))
    }

    /// The first of the caller's roles whose `ask` matches `item`, if any.
    fn asks(&self, item: &Item<'_>) -> Option<&str> {
        self.names
            .iter()
            .find(|n| self.roles.get(*n).is_some_and(|r| r.ask.matches(item)))
            .map(String::as_str)
    }
}

impl Policy for RolePolicy {
    fn decide(&self, who: &Principal, action: &Action<'_>) -> Decision {
        let roles = self.roles.load_full();
        let conditions = self.conditions.load_full();
        if roles.is_empty() && conditions.is_none() {
            return Decision::Allow;
        }
        let who = &*self.effective(who);
        let held = Held::of(roles, who, action.server);
        if !held.connects() {
            return Decision::Deny(format!(
                "no role of {} grants the virtual server {:?}",
                who.id(),
                action.server
            ));
        }
        match action.kind {
            ActionKind::Connect => Decision::Allow,
            ActionKind::List(_) => {
                let held = Arc::new(held);
                let who = who.clone();
                let server = action.server.to_owned();
                let via = action.via;
                Decision::Only(Arc::new(move |item| {
                    held.allows(item)
                        && conditions
                            .as_ref()
                            .is_none_or(|c| c.forbids(&who, &server, via, item, true).is_none())
                }))
            }
            ActionKind::Use { item, .. } if !held.allows(&item) => Decision::Deny(format!(
                "no role of {} allows {}/{} (or one denies it)",
                who.id(),
                item.connector,
                item.name
            )),
            ActionKind::Use { item, verb } => {
                match conditions
                    .as_ref()
                    .and_then(|c| c.forbids(who, action.server, action.via, &item, false))
                {
                    Some(why) => {
                        let why =
                            format!("{}/{} for {}: {why}", item.connector, item.name, who.id());
                        // Refused for its arguments, though listed: the caller may know.
                        let listed = item.arguments.is_some()
                            && conditions.as_ref().is_some_and(|c| {
                                c.forbids(who, action.server, action.via, &item, true)
                                    .is_none()
                            });
                        if listed {
                            Decision::Refuse(why)
                        } else {
                            Decision::Deny(why)
                        }
                    }
                    None => match held.asks(&item) {
                        Some(role) if verb == crate::Verb::Call => Decision::Ask(format!(
                            "role {role:?} asks {} to confirm calls of {}/{}",
                            who.id(),
                            item.connector,
                            item.name
                        )),
                        _ => Decision::Allow,
                    },
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ItemKind, Verb};

    fn rules(servers: &[&str], allow: &[&str], deny: &[&str]) -> RoleRules {
        let v = |s: &[&str]| s.iter().map(|x| (*x).to_owned()).collect();
        RoleRules {
            servers: v(servers),
            allow: v(allow),
            deny: v(deny),
            ask: Vec::new(),
        }
    }

    fn item<'a>(connector: &'a str, name: &'a str) -> Item<'a> {
        Item {
            kind: ItemKind::Tool,
            connector,
            name,
            exposed: name,
            arguments: None,
        }
    }

    fn uses(p: &RolePolicy, who: &Principal, server: &str, it: Item<'_>) -> bool {
        let a = Action {
            via: Default::default(),
            server,
            kind: ActionKind::Use {
                verb: Verb::Call,
                item: it,
            },
        };
        matches!(p.decide(who, &a), Decision::Allow | Decision::Ask(_))
    }

    fn lists(p: &RolePolicy, who: &Principal, server: &str, it: Item<'_>) -> bool {
        let a = Action {
            via: Default::default(),
            server,
            kind: ActionKind::List(ItemKind::Tool),
        };
        match p.decide(who, &a) {
            Decision::Allow | Decision::Ask(_) => true,
            Decision::Only(view) => view(&it),
            Decision::Deny(_) | Decision::Refuse(_) => false,
        }
    }

    use crate::tests::member as user;

    #[test]
    fn an_ask_rule_makes_a_call_wait_for_the_member_and_never_allows_by_itself() {
        let mut dev = rules(&["main"], &["db/*"], &["db/drop_*"]);
        dev.ask = vec!["db/write_*".into(), "db/drop_*".into(), "gh/*".into()];
        let roles = [("dev".to_owned(), dev)];
        let p = RolePolicy::new(roles.iter().map(|(n, r)| (n, r)));
        let who = user(&["dev"]);
        let call = |it: Item<'_>| {
            p.decide(
                &who,
                &Action {
                    via: Default::default(),
                    server: "main",
                    kind: ActionKind::Use {
                        verb: Verb::Call,
                        item: it,
                    },
                },
            )
        };
        match call(item("db", "write_rows")) {
            Decision::Ask(why) => assert!(why.contains("\"dev\""), "{why}"),
            d => panic!("{d:?}"),
        }
        assert!(matches!(call(item("db", "read_rows")), Decision::Allow));
        assert!(
            matches!(call(item("db", "drop_table")), Decision::Deny(_)),
            "a deny wins over an ask"
        );
        assert!(
            matches!(call(item("gh", "create_issue")), Decision::Deny(_)),
            "an ask allows nothing that no rule allows"
        );
        assert!(
            lists(&p, &who, "main", item("db", "write_rows")),
            "a tool that asks is listed"
        );
        let prompt = Item {
            kind: ItemKind::Prompt,
            ..item("db", "write_rows")
        };
        let get = p.decide(
            &who,
            &Action {
                via: Default::default(),
                server: "main",
                kind: ActionKind::Use {
                    verb: Verb::Get,
                    item: prompt,
                },
            },
        );
        assert!(matches!(get, Decision::Allow), "only tool calls are asked");
        let why = p.explain(
            &who,
            "main",
            Via::default(),
            Some(&item("db", "write_rows")),
        );
        assert!(why.allowed && why.confirm, "{why:?}");
        assert!(
            why.because
                .iter()
                .any(|b| b.contains("confirm") && b.contains("db/write_*")),
            "{why:?}"
        );
        let why = p.explain(&who, "main", Via::default(), Some(&item("db", "read_rows")));
        assert!(why.allowed && !why.confirm, "{why:?}");
        let why = p.explain(
            &who,
            "main",
            Via::default(),
            Some(&item("db", "drop_table")),
        );
        assert!(!why.allowed && !why.confirm, "{why:?}");
    }

    #[test]
    fn roles_grant_servers_and_items_and_deny_wins() {
        let roles: Vec<(String, RoleRules)> = vec![
            ("dev".into(), rules(&["main"], &["gh/*", "db/read_*"], &[])),
            ("ops".into(), rules(&["*"], &["*/*"], &["gh/delete_*"])),
            ("anonymous".into(), rules(&["public"], &["time/*"], &[])),
        ];
        let p = RolePolicy::new(roles.iter().map(|(n, r)| (n, r)));
        let dev = user(&["dev"]);
        assert!(uses(&p, &dev, "main", item("gh", "create_issue")));
        assert!(uses(&p, &dev, "main", item("db", "read_rows")));
        assert!(
            !uses(&p, &dev, "main", item("db", "drop_table")),
            "not granted"
        );
        assert!(
            !uses(&p, &dev, "other", item("gh", "create_issue")),
            "another server"
        );
        let ops = user(&["ops"]);
        assert!(uses(&p, &ops, "other", item("db", "drop_table")));
        assert!(!uses(&p, &ops, "main", item("gh", "delete_repo")), "denied");
        let both = user(&["dev", "ops"]);
        assert!(
            !uses(&p, &both, "main", item("gh", "delete_repo")),
            "deny wins over dev's allow"
        );
        assert!(
            !uses(&p, &user(&["nobody"]), "main", item("gh", "x")),
            "an unknown role grants nothing"
        );
        let anon = Principal::anonymous();
        assert!(uses(&p, &anon, "public", item("time", "now")));
        assert!(!uses(&p, &anon, "main", item("gh", "x")));
        let connect = |who: &Principal, server| {
            matches!(
                p.decide(
                    who,
                    &Action {
                        via: Default::default(),
                        server,
                        kind: ActionKind::Connect
                    }
                ),
                Decision::Allow
            )
        };
        assert!(connect(&dev, "main") && !connect(&dev, "public"));
        for (who, server) in [(&dev, "main"), (&dev, "public"), (&anon, "public")] {
            assert_eq!(
                p.explain(who, server, Via::default(), None).allowed,
                connect(who, server)
            );
        }
        // The explanation names the rules that decided, as written.
        let why = p.explain(
            &both,
            "main",
            Via::default(),
            Some(&item("gh", "delete_repo")),
        );
        assert_eq!(
            why.because,
            [
                "role \"dev\" grants the virtual server \"main\"",
                "role \"ops\" grants the virtual server \"main\"",
                "role \"dev\" allows it: [\"gh/*\"]",
                "role \"ops\" allows it: [\"*/*\"]",
                "role \"ops\" denies it: [\"gh/delete_*\"] (a deny wins)",
            ]
        );
        assert!(!why.allowed);
        let why = p.explain(
            &user(&["dev", "ghost"]),
            "public",
            Via::default(),
            Some(&item("gh", "x")),
        );
        assert_eq!(
            why.because,
            [
                "role \"ghost\" is not in [roles]: it grants nothing",
                "no role held grants the virtual server \"public\"",
            ]
        );
        let why = p.explain(&anon, "public", Via::default(), Some(&item("gh", "x")));
        assert!(!why.allowed);
        assert_eq!(
            why.because.last().unwrap(),
            "no role held allows gh/x on \"public\""
        );
    }

    #[test]
    fn what_is_listed_is_what_may_be_used() {
        // Every combination of a small world: roles, users, servers and items.
        let roles: Vec<(String, RoleRules)> = vec![
            (
                "a".into(),
                rules(&["s1"], &["c1/*", "c2/t?"], &["c1/secret*"]),
            ),
            ("b".into(), rules(&["s1", "s2"], &["*/t1"], &[])),
            ("c".into(), rules(&["*"], &["c2/*"], &["*/t2"])),
        ];
        let p = RolePolicy::new(roles.iter().map(|(n, r)| (n, r)));
        let users = [
            user(&[]),
            user(&["a"]),
            user(&["b"]),
            user(&["a", "c"]),
            user(&["b", "c"]),
            Principal::anonymous(),
        ];
        let mut seen = 0;
        for who in &users {
            for server in ["s1", "s2", "s3"] {
                for c in ["c1", "c2", "c3"] {
                    for n in ["t1", "t2", "tx", "secret", "other"] {
                        assert_eq!(
                            lists(&p, who, server, item(c, n)),
                            uses(&p, who, server, item(c, n)),
                            "{who:?} {server} {c}/{n}"
                        );
                        let why = p.explain(who, server, Via::default(), Some(&item(c, n)));
                        assert_eq!(
                            why.allowed,
                            uses(&p, who, server, item(c, n)),
                            "explained as {why:?}: {who:?} {server} {c}/{n}"
                        );
                        seen += usize::from(uses(&p, who, server, item(c, n)));
                    }
                }
            }
        }
        assert!(seen > 10, "the world allows something: {seen}");
    }

    #[test]
    fn the_index_matches_as_every_rule_would() {
        let globs = [
            "gh/create_issue",
            "gh/*",
            "gh/read_?",
            "db/read_*",
            "*/t1",
            "c?/x*",
            "*/*",
            "db/",
            "/x",
            "gh/create_*_pr",
            "é*/ü?",
            "db/exact",
        ];
        let names = [
            "create_issue",
            "read_a",
            "read_ab",
            "read_rows",
            "t1",
            "x",
            "xy",
            "",
            "create_a_pr",
            "exact",
            "üb",
            "ü",
        ];
        let connectors = ["gh", "db", "c1", "cc", "", "é1", "other"];
        // Every subset of up to three rules (by a stride through them), against every item.
        for a in 0..globs.len() {
            for b in a..globs.len() {
                for c in b..globs.len() {
                    let set: Vec<String> = [a, b, c].iter().map(|i| globs[*i].to_owned()).collect();
                    let rules = Rules::new(&set);
                    for conn in connectors {
                        for name in names {
                            let it = item(conn, name);
                            let naive = set.iter().any(|r| {
                                let (rc, rn) = r.split_once('/').unwrap();
                                crate::glob(rc, conn) && crate::glob(rn, name)
                            });
                            assert_eq!(rules.matches(&it), naive, "{set:?} {conn}/{name}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn random_policies_list_exactly_what_they_allow() {
        use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom};
        let servers = ["s1", "s2", "s3"];
        let connectors = ["gh", "db", "fs", "c1"];
        let names = ["read", "read_all", "write", "delete_x", "t1", "t2", "x"];
        let globs = [
            "*", "read*", "*_x", "t?", "write", "x", "delete_*", "r*d", "?", "*a*",
        ];
        let conn_globs = ["gh", "db", "fs", "*", "c?", "g*"];
        let (mut allowed, mut decided, mut asked) = (0usize, 0usize, 0usize);
        for seed in 0..200u64 {
            let mut r = StdRng::seed_from_u64(seed);
            let pick = |n: usize, from: &[&str], r: &mut StdRng| -> Vec<String> {
                (0..r.random_range(0..=n))
                    .map(|_| (*from.choose(r).unwrap()).to_owned())
                    .collect()
            };
            let rule = |r: &mut StdRng| {
                format!(
                    "{}/{}",
                    conn_globs.choose(r).unwrap(),
                    globs.choose(r).unwrap()
                )
            };
            let role_names = ["a", "b", "c", "anonymous"];
            let mut roles: Vec<(String, RoleRules)> = Vec::new();
            for n in role_names {
                if !r.random_bool(0.8) {
                    continue;
                }
                let allow = (0..r.random_range(0..4)).map(|_| rule(&mut r)).collect();
                let deny = (0..r.random_range(0..2)).map(|_| rule(&mut r)).collect();
                let servers = pick(2, &["s1", "s2", "*"], &mut r);
                let ask = (0..r.random_range(0..2)).map(|_| rule(&mut r)).collect();
                let rules = RoleRules {
                    servers,
                    allow,
                    deny,
                    ask,
                };
                roles.push((n.to_owned(), rules));
            }
            let p = RolePolicy::new(roles.iter().map(|(n, r)| (n, r)));
            let mut members: Vec<Principal> = Vec::new();
            for _ in 0..4 {
                let held = pick(3, &["a", "b", "c", "ghost"], &mut r);
                members.push(user(&held.iter().map(String::as_str).collect::<Vec<_>>()));
            }
            members.push(Principal::anonymous());
            for who in &members {
                for server in servers {
                    for c in connectors {
                        for n in names {
                            let used = uses(&p, who, server, item(c, n));
                            assert_eq!(
                                lists(&p, who, server, item(c, n)),
                                used,
                                "seed {seed}: {roles:?} {who:?} {server} {c}/{n}"
                            );
                            let why = p.explain(who, server, Via::default(), Some(&item(c, n)));
                            assert_eq!(why.allowed, used, "seed {seed}: explained otherwise");
                            let call = Action {
                                via: Default::default(),
                                server,
                                kind: ActionKind::Use {
                                    verb: Verb::Call,
                                    item: item(c, n),
                                },
                            };
                            let asks = matches!(p.decide(who, &call), Decision::Ask(_));
                            assert_eq!(
                                why.confirm, asks,
                                "seed {seed}: confirmation explained otherwise"
                            );
                            asked += usize::from(asks);
                            allowed += usize::from(used);
                            decided += 1;
                        }
                    }
                }
            }
        }
        // The worlds allow some and refuse some, and ask for some: the property is not vacuous.
        assert!(
            allowed * 50 > decided && allowed < decided && asked > 0 && asked < allowed,
            "{allowed} allowed ({asked} asked) of {decided}"
        );
    }

    #[test]
    fn without_roles_everything_is_allowed() {
        let p = RolePolicy::new(std::iter::empty());
        assert!(uses(&p, &Principal::anonymous(), "main", item("gh", "x")));
        let a = Action {
            via: Default::default(),
            server: "main",
            kind: ActionKind::List(ItemKind::Tool),
        };
        assert!(
            matches!(p.decide(&Principal::anonymous(), &a), Decision::Allow),
            "no filtering at all"
        );
    }

    #[test]
    fn replaced_rules_apply_at_the_next_decision() {
        let first = [("dev".to_owned(), rules(&["main"], &["gh/*"], &[]))];
        let p = RolePolicy::new(first.iter().map(|(n, r)| (n, r)));
        let dev = user(&["dev"]);
        assert!(uses(&p, &dev, "main", item("gh", "x")));
        let second = [("dev".to_owned(), rules(&["main"], &["db/*"], &[]))];
        p.replace(second.iter().map(|(n, r)| (n, r)));
        assert!(!uses(&p, &dev, "main", item("gh", "x")));
        assert!(uses(&p, &dev, "main", item("db", "x")));
    }
}
