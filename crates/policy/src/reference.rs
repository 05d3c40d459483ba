//! The role rules written as Cedar (a group's members holding its roles), and a property test that the gateway's one decision (the
//! indexed role rules, then the Cedar conditions) is exactly what Cedar itself decides for the
//! whole policy: each role a `permit` per allow rule (for the servers it grants) and a `forbid`
//! per deny rule, next to the administrator's conditions, over random worlds of roles,
//! conditions (on names, connectors, roles, the server, the client, the source address and the
//! arguments, some failing to evaluate), members and requests.
//!
//! Glob matching is the entity data here (an item is `in` each rule whose globs match it, by
//! `glob`), as Cedar's `like` has no one-character wildcard; everything else — which roles a
//! member holds, which servers a role grants, deny over allow, forbids over permits, an
//! evaluation error denying, lists showing what some call may do — is Cedar's.

use std::{
    collections::{HashMap, HashSet},
    str::FromStr,
};

use cedar_policy::{
    Authorizer, Context, Decision as CedarDecision, Entities, Entity, EntityUid, PolicySet,
    Request, RestrictedExpression,
};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom};

use crate::{
    Action, ActionKind, Conditions, Decision, Item, ItemKind, Policy, Principal, RolePolicy,
    RoleRules, Source, Verb, Via, glob, tests::member,
};

fn uid(s: &str) -> EntityUid {
    EntityUid::from_str(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// The roles as Cedar policies (an empty `[roles]` allows everything).
fn roles_as_cedar(roles: &[(String, RoleRules)]) -> String {
    if roles.is_empty() {
        return "permit (principal, action, resource);\n".into();
    }
    let mut out = String::new();
    for (name, r) in roles {
        let on_servers = if r.servers.iter().any(|s| s == "*") {
            String::new()
        } else {
            let list: Vec<String> = r.servers.iter().map(|s| quoted(s)).collect();
            format!(" when {{ [{}].contains(context.server) }}", list.join(", "))
        };
        for i in 0..r.allow.len() {
            out += &format!(
                "permit (principal in Role::{}, action, resource in Rule::{}){on_servers};\n",
                quoted(name),
                quoted(&format!("{name}/allow/{i}"))
            );
        }
        for i in 0..r.deny.len() {
            out += &format!(
                "forbid (principal in Role::{}, action, resource in Rule::{});\n",
                quoted(name),
                quoted(&format!("{name}/deny/{i}"))
            );
        }
    }
    out
}

struct Reference {
    roles: Vec<(String, RoleRules)>,
    /// The roles each group gives.
    groups: HashMap<String, Vec<String>>,
    /// Role policies and every condition; role policies and the conditions on no argument.
    for_calls: PolicySet,
    for_lists: PolicySet,
}

impl Reference {
    fn new(
        roles: Vec<(String, RoleRules)>,
        groups: HashMap<String, Vec<String>>,
        conditions: &[String],
    ) -> Self {
        let text = roles_as_cedar(&roles);
        let all = format!("{text}{}", conditions.join("\n"));
        let lists: Vec<&String> = conditions
            .iter()
            .filter(|c| !c.contains("context.arguments"))
            .collect();
        let lists = format!(
            "{text}{}",
            lists
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        );
        Self {
            roles,
            groups,
            for_calls: PolicySet::from_str(&all).unwrap_or_else(|e| panic!("{e}: {all}")),
            for_lists: PolicySet::from_str(&lists).unwrap(),
        }
    }

    /// Cedar's decision, with an evaluation error denying.
    fn allows(&self, who: &Principal, server: &str, via: Via, item: &Item<'_>, list: bool) -> bool {
        let s = |v: &str| RestrictedExpression::new_string(v.to_owned());
        let set = |vs: &[String]| RestrictedExpression::new_set(vs.iter().map(|v| s(v)));
        // A member's roles: their own and their groups'.
        let mut roles = who.roles.clone();
        if !who.is_anonymous() {
            for g in &who.groups {
                for r in self.groups.get(g).into_iter().flatten() {
                    if !roles.contains(r) {
                        roles.push(r.clone());
                    }
                }
            }
        }
        let held: Vec<String> = if who.is_anonymous() {
            vec!["anonymous".into()]
        } else {
            roles.clone()
        };
        let user = uid("User::\"u\"");
        let (issuer, subject) = match who.id() {
            crate::PrincipalId::User { issuer, subject } => (issuer.clone(), subject.clone()),
            crate::PrincipalId::Anonymous => (String::new(), String::new()),
        };
        let attrs = HashMap::from([
            ("roles".to_owned(), set(&roles)),
            ("groups".to_owned(), set(&who.groups)),
            ("scopes".to_owned(), set(&who.scopes)),
            ("issuer".to_owned(), s(&issuer)),
            ("subject".to_owned(), s(&subject)),
            (
                "anonymous".to_owned(),
                RestrictedExpression::new_bool(who.is_anonymous()),
            ),
        ]);
        let parents = held
            .iter()
            .map(|r| uid(&format!("Role::{}", quoted(r))))
            .collect();
        let mut entities = vec![Entity::new(user.clone(), attrs, parents).unwrap()];
        // The rules whose globs match the item: its parents.
        let mut rules = HashSet::new();
        for (name, r) in &self.roles {
            for (what, globs) in [("allow", &r.allow), ("deny", &r.deny)] {
                for (i, g) in globs.iter().enumerate() {
                    let (c, n) = g.split_once('/').unwrap();
                    if glob(c, item.connector) && glob(n, item.name) {
                        rules.insert(uid(&format!(
                            "Rule::{}",
                            quoted(&format!("{name}/{what}/{i}"))
                        )));
                    }
                }
            }
        }
        let (kind, verb) = match item.kind {
            ItemKind::Tool => ("Tool", "call"),
            ItemKind::Prompt => ("Prompt", "get"),
            ItemKind::Resource | ItemKind::ResourceTemplate => ("Resource", "read"),
        };
        let resource = uid(&format!(
            "{kind}::{}",
            quoted(&format!("{}/{}", item.connector, item.name))
        ));
        let attrs = HashMap::from([
            ("connector".to_owned(), s(item.connector)),
            ("name".to_owned(), s(item.name)),
        ]);
        entities.push(Entity::new(resource.clone(), attrs, rules).unwrap());
        let args = uid("Args::\"call\"");
        let tags = item.arguments.into_iter().flatten().map(|(k, v)| {
            let text = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), s(&text))
        });
        entities.push(Entity::new_with_tags(args.clone(), [], [], tags).unwrap());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let mut context = vec![
            ("server".to_owned(), s(server)),
            (
                "hour".to_owned(),
                RestrictedExpression::new_long((now / 3600) % 24),
            ),
            (
                "weekday".to_owned(),
                RestrictedExpression::new_long(((now / 86_400 + 3) % 7) + 1),
            ),
            ("client".to_owned(), s(who.client.as_deref().unwrap_or(""))),
            (
                "arguments".to_owned(),
                RestrictedExpression::new_entity_uid(args),
            ),
        ];
        if let Some(ip) = via.source {
            context.push((
                "source".to_owned(),
                RestrictedExpression::new_ip(ip.to_string()),
            ));
        }
        let request = Request::new(
            user,
            uid(&format!("Action::{}", quoted(verb))),
            resource,
            Context::from_pairs(context).unwrap(),
            None,
        )
        .unwrap();
        let entities = Entities::from_entities(entities, None).unwrap();
        let policies = if list {
            &self.for_lists
        } else {
            &self.for_calls
        };
        let answer = Authorizer::new().is_authorized(&request, policies, &entities);
        answer.decision() == CedarDecision::Allow && answer.diagnostics().errors().next().is_none()
    }
}

/// A random condition (a `forbid`), with its `@id`.
fn condition(n: usize, r: &mut StdRng) -> String {
    let names = ["read", "write", "delete_x", "t1", "x"];
    let pick = |from: &[&'static str], r: &mut StdRng| *from.choose(r).unwrap();
    let body = match r.random_range(0..9) {
        0 => format!(
            "forbid (principal, action, resource) when {{ resource.name like \"{}\" }};",
            pick(&["read*", "*_x", "t*", "*", "w*e"], r)
        ),
        1 => format!(
            "forbid (principal, action == Action::\"call\", resource) when {{ resource.connector == \"{}\" }} unless {{ context.arguments.hasTag(\"q\") && context.arguments.getTag(\"q\") like \"SELECT*\" }};",
            pick(&["gh", "db", "fs"], r)
        ),
        2 => format!(
            "forbid (principal, action, resource) when {{ principal.roles.contains(\"{}\") && resource.connector == \"{}\" }};",
            pick(&["a", "b", "c"], r),
            pick(&["gh", "db", "fs", "c1"], r)
        ),
        3 => format!(
            "forbid (principal, action, resource) when {{ context.server == \"{}\" && resource.name == \"{}\" }};",
            pick(&["s1", "s2"], r),
            pick(&names, r)
        ),
        4 => format!(
            "forbid (principal, action, resource) when {{ resource.name like \"{}\" }} unless {{ context has source && context.source.isInRange(ip(\"10.0.0.0/8\")) }};",
            pick(&["*", "read*", "x"], r)
        ),
        5 => format!(
            "forbid (principal, action, resource) when {{ context.client == \"{}\" && resource.connector == \"{}\" }};",
            pick(&["app", ""], r),
            pick(&["gh", "db"], r)
        ),
        6 => format!(
            "forbid (principal, action, resource) when {{ (principal.anonymous || principal.groups.contains(\"g2\")) && resource.name == \"{}\" }};",
            pick(&names, r)
        ),
        7 => format!(
            // Fails to evaluate (an overflow) whenever the name matches.
            "forbid (principal, action, resource) when {{ resource.name == \"{}\" && (context.weekday + 1) * 9223372036854775807 > 1 }};",
            pick(&names, r)
        ),
        _ => format!(
            "forbid (principal, action == Action::\"get\", resource) when {{ context.arguments.hasTag(\"q\") && context.arguments.getTag(\"q\") == \"{}\" }};",
            pick(&["DROP", "SELECT 1"], r)
        ),
    };
    format!("@id(\"c{n}\")\n{body}")
}

#[test]
fn the_gateways_decision_is_cedars_for_roles_and_random_conditions() {
    let connectors = ["gh", "db", "fs", "c1"];
    let names = ["read", "read_all", "write", "delete_x", "t1", "x"];
    let globs = ["*", "read*", "*_x", "t?", "write", "x", "r*d", "?"];
    let conn_globs = ["gh", "db", "*", "c?"];
    let arguments: Vec<serde_json::Map<String, serde_json::Value>> = [
        serde_json::json!({}),
        serde_json::json!({"q": "SELECT 1"}),
        serde_json::json!({"q": "DROP"}),
    ]
    .into_iter()
    .map(|v| v.as_object().cloned().unwrap())
    .collect();
    let vias = [
        Via::default(),
        Via {
            source: Some("10.1.2.3".parse().unwrap()),
        },
        Via {
            source: Some("192.168.0.9".parse().unwrap()),
        },
    ];
    let (mut decided, mut used, mut listed, mut refused, mut failed) = (0, 0, 0, 0, 0);
    for seed in 0..32u64 {
        let mut r = StdRng::seed_from_u64(seed);
        let rule = |r: &mut StdRng| {
            format!(
                "{}/{}",
                conn_globs.choose(r).unwrap(),
                globs.choose(r).unwrap()
            )
        };
        let mut roles = Vec::new();
        if r.random_bool(0.9) {
            for n in ["a", "b", "c", "anonymous"] {
                if !r.random_bool(0.75) {
                    continue;
                }
                let servers = (0..r.random_range(1..3))
                    .map(|_| (*["s1", "s2", "*"].choose(&mut r).unwrap()).to_owned())
                    .collect();
                let rules = RoleRules {
                    servers,
                    allow: (0..r.random_range(0..4)).map(|_| rule(&mut r)).collect(),
                    deny: (0..r.random_range(0..2)).map(|_| rule(&mut r)).collect(),
                    ask: (0..r.random_range(0..2)).map(|_| rule(&mut r)).collect(),
                };
                roles.push((n.to_owned(), rules));
            }
        }
        let conditions: Vec<String> = (0..r.random_range(0..5))
            .map(|n| condition(n, &mut r))
            .collect();
        let compiled = Conditions::compile(&[Source {
            name: "random.cedar".into(),
            text: conditions.join("\n"),
            line_offset: 0,
        }])
        .unwrap_or_else(|e| panic!("seed {seed}: {e:?}"));
        let mut groups = HashMap::new();
        for g in ["g1", "g2"] {
            let given: Vec<String> = (0..r.random_range(0..3))
                .map(|_| (*["a", "b", "c", "ghost"].choose(&mut r).unwrap()).to_owned())
                .collect();
            groups.insert(g.to_owned(), given);
        }
        let gateway = RolePolicy::new(std::iter::empty());
        gateway.replace_all(roles.iter().map(|(n, r)| (n, r)), compiled);
        gateway.replace_groups(groups.iter());
        let reference = Reference::new(roles.clone(), groups, &conditions);
        let mut members = vec![Principal::anonymous()];
        for _ in 0..3 {
            let held: Vec<&str> = (0..r.random_range(0..3))
                .map(|_| *["a", "b", "c", "ghost"].choose(&mut r).unwrap())
                .collect();
            let in_groups: Vec<String> = (0..r.random_range(0..3))
                .map(|_| (*["g1", "g2", "g3"].choose(&mut r).unwrap()).to_owned())
                .collect();
            let m = member(&held).with_groups(in_groups);
            members.push(if r.random_bool(0.5) {
                m.with_client("app")
            } else {
                m
            });
        }
        for who in &members {
            // Two of the servers, each from one of the addresses (the worlds vary them).
            let first = r.random_range(0..3);
            for server in [
                ["s1", "s2", "s3"][first],
                ["s1", "s2", "s3"][(first + 1) % 3],
            ] {
                {
                    let via = *vias.choose(&mut r).unwrap();
                    let list = |kind| Action {
                        via,
                        server,
                        kind: ActionKind::List(kind),
                    };
                    for kind in [ItemKind::Tool, ItemKind::Prompt] {
                        let view = gateway.decide(who, &list(kind));
                        for c in connectors {
                            for n in names {
                                let bare = Item {
                                    kind,
                                    connector: c,
                                    name: n,
                                    exposed: n,
                                    arguments: None,
                                };
                                let shown = match &view {
                                    Decision::Allow => true,
                                    Decision::Only(v) => v(&bare),
                                    _ => false,
                                };
                                let want = reference.allows(who, server, via, &bare, true);
                                assert_eq!(
                                    shown,
                                    want,
                                    "seed {seed}: listing {c}/{n} ({kind:?}) for {who:?} on {server} via {via:?}\nroles {roles:?}\n{}",
                                    conditions.join("\n")
                                );
                                listed += usize::from(shown);
                                for args in &arguments {
                                    let item = Item {
                                        arguments: Some(args),
                                        ..bare
                                    };
                                    let verb = match kind {
                                        ItemKind::Tool => Verb::Call,
                                        _ => Verb::Get,
                                    };
                                    let d = gateway.decide(
                                        who,
                                        &Action {
                                            via,
                                            server,
                                            kind: ActionKind::Use { verb, item },
                                        },
                                    );
                                    let allowed = matches!(d, Decision::Allow | Decision::Ask(_));
                                    let want = reference.allows(who, server, via, &item, false);
                                    assert_eq!(
                                        allowed,
                                        want,
                                        "seed {seed}: {verb:?} {c}/{n} {args:?} for {who:?} on {server} via {via:?} ({d:?})\nroles {roles:?}\n{}",
                                        conditions.join("\n")
                                    );
                                    // What may be used is listed; a refusal says so only of
                                    // a listed item.
                                    assert!(!allowed || shown, "seed {seed}: used, not listed");
                                    assert_eq!(
                                        matches!(d, Decision::Refuse(_)),
                                        shown && !allowed,
                                        "seed {seed}: {d:?}, listed {shown}"
                                    );
                                    let why = gateway.explain(who, server, via, Some(&item));
                                    assert_eq!(why.allowed, allowed, "seed {seed}: {why:?}");
                                    if let Decision::Deny(why) = &d {
                                        failed +=
                                            usize::from(why.contains("could not be evaluated"));
                                    }
                                    refused += usize::from(matches!(d, Decision::Refuse(_)));
                                    used += usize::from(allowed);
                                    decided += 1;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    // Not vacuous: the worlds allow, hide, refuse for arguments, and fail to evaluate.
    assert!(
        used * 20 > decided && used < decided && refused > 0 && failed > 0 && listed > 0,
        "{used} used, {refused} refused for their arguments, {failed} failed, of {decided}; {listed} listed"
    );
}
