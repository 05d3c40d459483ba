//! Conditions on arguments and context, written in Cedar: `forbid` policies that narrow what the
//! roles allow. Roles grant (the fast, indexed rules of `roles.rs`); a Cedar policy can only take
//! away, for a call with these arguments, for this member, at this hour. Each policy is checked
//! against the schema below when the configuration is read (`manifold check` prints every error
//! with its file, line and column), so a misspelt attribute is an error, not a rule that never
//! applies.
//!
//! Evaluation: a use is refused when a forbid applies, and when any policy cannot be evaluated
//! (an evaluation error denies: Cedar alone would skip the failing policy, which for a forbid
//! means allowing). A list shows an item unless a forbid that does not look at the arguments
//! applies to it: a forbid on arguments decides calls, so a tool is listed when some call of it
//! may be allowed, and a call with arguments a forbid refuses is refused as a hidden tool is.
//!
//! The schema (`SCHEMA`): the principal is a `User` (`roles`: their own and their groups',
//! `groups`, `scopes`, `issuer`, `subject`, `anonymous`); the resource a `Tool`, `Prompt` or `Resource` (`connector`, `name`: the
//! upstream's own name, or a resource's URI); the actions `call`, `get` and `read`; the context
//! holds `server`, `hour` (0–23, UTC), `weekday` (1 Monday … 7 Sunday), `client` (the OAuth
//! `client_id` the access token was issued to; `""` for an API key or an anonymous caller),
//! `source` (the request's source address, an `ipaddr`; absent where none is known, so a policy
//! tests `context has source` first) and `arguments`, an entity whose tags are the
//! call's arguments as text (a string as itself, anything else as its JSON):
//! `context.arguments.hasTag("query") && context.arguments.getTag("query") like "DROP*"`.

use std::str::FromStr;

use cedar_policy::{
    Authorizer, Context, Decision as CedarDecision, Effect, Entities, Entity, EntityId,
    EntityTypeName, EntityUid, PolicyId, PolicySet, Request, RestrictedExpression, Schema,
    ValidationMode, Validator,
};
use miette::Diagnostic;

use crate::{Item, ItemKind, Principal, Via};

/// What policies are checked against.
pub const SCHEMA: &str = r#"
entity User = {
  roles: Set<String>,
  groups: Set<String>,
  scopes: Set<String>,
  issuer: String,
  subject: String,
  anonymous: Bool,
};
entity Tool, Prompt, Resource = { connector: String, name: String };
entity Args tags String;
type Ctx = {
  server: String,
  hour: Long,
  weekday: Long,
  client: String,
  source?: ipaddr,
  arguments: Args,
};
action call appliesTo { principal: [User], resource: [Tool], context: Ctx };
action get appliesTo { principal: [User], resource: [Prompt], context: Ctx };
action read appliesTo { principal: [User], resource: [Resource], context: Ctx };
"#;

/// One text of policies: where it comes from (for messages), what it says, and how many lines
/// of its file come before it (text inline in the configuration).
pub struct Source {
    pub name: String,
    pub text: String,
    pub line_offset: usize,
}

/// Compiled conditions: every policy, those that decide lists too, and the schema.
pub struct Conditions {
    all: PolicySet,
    /// The forbids that do not look at the arguments.
    for_lists: PolicySet,
    types: Types,
    authorizer: Authorizer,
}

struct Types {
    user: EntityTypeName,
    args: EntityTypeName,
    tool: EntityTypeName,
    prompt: EntityTypeName,
    resource: EntityTypeName,
    call: EntityUid,
    get: EntityUid,
    read: EntityUid,
}

fn type_name(s: &str) -> EntityTypeName {
    EntityTypeName::from_str(s).expect("a type of the schema")
}

fn action(name: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(type_name("Action"), EntityId::new(name))
}

/// `offset` in `text` as 1-based (line, column).
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.bytes().filter(|b| *b == b'\n').count() + 1;
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[start..].chars().count() + 1)
}

/// `NAME:LINE:COL: message (help)` for each place a diagnostic names in `source`.
fn located(source: &Source, d: &dyn Diagnostic) -> String {
    let help = d.help().map(|h| format!(" ({h})")).unwrap_or_default();
    let first = d.labels().and_then(|mut l| l.next());
    match first {
        Some(l) => {
            let (line, col) = line_col(&source.text, l.offset());
            let line = line + source.line_offset;
            format!("{}:{line}:{col}: {d}{help}", source.name)
        }
        None => format!("{}: {d}{help}", source.name),
    }
}

impl Conditions {
    /// Parse and check `sources` (`None` when they hold no policy); every problem, located.
    pub fn compile(sources: &[Source]) -> Result<Option<Conditions>, Vec<String>> {
        let (schema, _) = Schema::from_cedarschema_str(SCHEMA).expect("the schema is valid");
        let mut errors = Vec::new();
        let mut all = PolicySet::new();
        let mut for_lists = PolicySet::new();
        // Which source each policy came from, for the validator's messages.
        let mut origin: Vec<(PolicyId, usize)> = Vec::new();
        for (i, source) in sources.iter().enumerate() {
            let parsed = match PolicySet::from_str(&source.text) {
                Ok(p) => p,
                Err(es) => {
                    errors.extend(es.iter().map(|e| located(source, e)));
                    continue;
                }
            };
            if parsed.templates().next().is_some() {
                errors.push(format!(
                    "{}: templates (`?principal`, `?resource`) are not used: write the policy for its principals",
                    source.name
                ));
            }
            for (n, p) in parsed.policies().enumerate() {
                let id = PolicyId::new(
                    p.annotation("id")
                        .map(str::to_owned)
                        .unwrap_or_else(|| format!("{}#{}", source.name, n + 1)),
                );
                if p.effect() == Effect::Permit {
                    errors.push(format!(
                        "{}: policy {} ({id}) is a permit: roles grant, and Cedar policies here only take away (write `forbid (…) when {{ … }}` or `unless {{ … }}`)",
                        source.name,
                        n + 1
                    ));
                    continue;
                }
                let p = p.new_id(id.clone());
                let on_arguments = p
                    .to_json()
                    .map(|j| j.to_string().contains("\"attr\":\"arguments\""))
                    .unwrap_or(true);
                if let Err(e) = all.add(p.clone()) {
                    errors.push(format!(
                        "{}: {e} (give each policy its own @id)",
                        source.name
                    ));
                    continue;
                }
                if !on_arguments {
                    for_lists
                        .add(p)
                        .expect("its id is new: it went into the whole set");
                }
                origin.push((id, i));
            }
        }
        let checked = Validator::new(schema.clone()).validate(&all, ValidationMode::Strict);
        for e in checked.validation_errors() {
            let source = origin
                .iter()
                .find(|(id, _)| id == e.policy_id())
                .map(|(_, i)| &sources[*i]);
            match source {
                Some(s) => errors.push(located(s, e)),
                None => errors.push(e.to_string()),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        if all.is_empty() {
            return Ok(None);
        }
        let types = Types {
            user: type_name("User"),
            args: type_name("Args"),
            tool: type_name("Tool"),
            prompt: type_name("Prompt"),
            resource: type_name("Resource"),
            call: action("call"),
            get: action("get"),
            read: action("read"),
        };
        Ok(Some(Conditions {
            all,
            for_lists,
            types,
            authorizer: Authorizer::new(),
        }))
    }

    /// How many policies there are.
    pub fn len(&self) -> usize {
        self.all.policies().count()
    }

    /// Never: compiling a text without policies gives `None`.
    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    /// Why `who`, whose request arrived `via`, may not use `item` on `server` (`listing`: may
    /// not see it in a list), if a forbid applies or a policy cannot be evaluated.
    pub fn forbids(
        &self,
        who: &Principal,
        server: &str,
        via: Via,
        item: &Item<'_>,
        listing: bool,
    ) -> Option<String> {
        let policies = if listing { &self.for_lists } else { &self.all };
        if policies.is_empty() {
            return None;
        }
        match self.evaluate(who, server, via, item, policies) {
            Ok(None) => None,
            Ok(Some(ids)) => Some(format!("forbidden by {ids}")),
            Err(e) => Some(format!("a condition could not be evaluated ({e}): denied")),
        }
    }

    /// `Some(policy ids)` when a forbid applies.
    fn evaluate(
        &self,
        who: &Principal,
        server: &str,
        via: Via,
        item: &Item<'_>,
        policies: &PolicySet,
    ) -> Result<Option<String>, String> {
        let t = &self.types;
        let (kind, verb) = match item.kind {
            ItemKind::Tool => (&t.tool, &t.call),
            ItemKind::Prompt => (&t.prompt, &t.get),
            ItemKind::Resource | ItemKind::ResourceTemplate => (&t.resource, &t.read),
        };
        let s = |v: &str| RestrictedExpression::new_string(v.to_owned());
        let set = |vs: &[String]| RestrictedExpression::new_set(vs.iter().map(|v| s(v)));
        let (issuer, subject) = match who.id() {
            crate::PrincipalId::User { issuer, subject } => (issuer.as_str(), subject.as_str()),
            crate::PrincipalId::Anonymous => ("", ""),
        };
        let user_uid =
            EntityUid::from_type_name_and_id(t.user.clone(), EntityId::new(who.id().to_string()));
        let user = Entity::new_with_tags(
            user_uid.clone(),
            [
                ("roles".to_owned(), set(&who.roles)),
                ("groups".to_owned(), set(&who.groups)),
                ("scopes".to_owned(), set(&who.scopes)),
                ("issuer".to_owned(), s(issuer)),
                ("subject".to_owned(), s(subject)),
                (
                    "anonymous".to_owned(),
                    RestrictedExpression::new_bool(who.is_anonymous()),
                ),
            ],
            [],
            [],
        )
        .map_err(|e| e.to_string())?;
        let item_uid = EntityUid::from_type_name_and_id(
            kind.clone(),
            EntityId::new(format!("{}/{}", item.connector, item.name)),
        );
        let resource = Entity::new_with_tags(
            item_uid.clone(),
            [
                ("connector".to_owned(), s(item.connector)),
                ("name".to_owned(), s(item.name)),
            ],
            [],
            [],
        )
        .map_err(|e| e.to_string())?;
        let args_uid = EntityUid::from_type_name_and_id(t.args.clone(), EntityId::new("call"));
        let tags = item.arguments.into_iter().flatten().map(|(k, v)| {
            let text = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), RestrictedExpression::new_string(text))
        });
        let args =
            Entity::new_with_tags(args_uid.clone(), [], [], tags).map_err(|e| e.to_string())?;
        // Built here to the schema's shape: not checked against it again on every request.
        let entities =
            Entities::from_entities([user, resource, args], None).map_err(|e| e.to_string())?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let (hour, weekday) = ((now / 3600) % 24, ((now / 86_400 + 3) % 7) + 1);
        let mut pairs = vec![
            ("server".to_owned(), s(server)),
            ("hour".to_owned(), RestrictedExpression::new_long(hour)),
            (
                "weekday".to_owned(),
                RestrictedExpression::new_long(weekday),
            ),
            ("client".to_owned(), s(who.client.as_deref().unwrap_or(""))),
            (
                "arguments".to_owned(),
                RestrictedExpression::new_entity_uid(args_uid),
            ),
        ];
        if let Some(ip) = via.source {
            // An IPv4 peer seen on an IPv6 socket is written as itself: `ip("10.0.0.0/8")`
            // ranges apply to it.
            let ip = match ip {
                std::net::IpAddr::V6(v6) => v6
                    .to_ipv4_mapped()
                    .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
                v4 => v4,
            };
            pairs.push((
                "source".to_owned(),
                RestrictedExpression::new_ip(ip.to_string()),
            ));
        }
        let context = Context::from_pairs(pairs).map_err(|e| e.to_string())?;
        let request = Request::new(user_uid, verb.clone(), item_uid, context, None)
            .map_err(|e| e.to_string())?;
        // Everything is permitted but what a forbid takes away: the base permit is implicit.
        let answer = self.authorizer.is_authorized(&request, policies, &entities);
        let d = answer.diagnostics();
        if let Some(e) = d.errors().next() {
            return Err(e.to_string());
        }
        let ids: Vec<String> = d.reason().map(ToString::to_string).collect();
        Ok(match answer.decision() {
            CedarDecision::Deny if !ids.is_empty() => Some(ids.join(", ")),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Action, ActionKind, Decision, Policy, RolePolicy, RoleRules, Verb, Via};

    fn source(text: &str) -> Vec<Source> {
        vec![Source {
            name: "policies.cedar".into(),
            text: text.into(),
            line_offset: 0,
        }]
    }

    fn errors(text: &str) -> Vec<String> {
        match Conditions::compile(&source(text)) {
            Err(e) => e,
            Ok(_) => panic!("accepted: {text}"),
        }
    }

    #[test]
    fn every_problem_is_reported_with_its_place() {
        let e = errors(
            "forbid (principal, action, resource)\nwhen { true }\nforbid (principal, action, resource);",
        );
        assert!(
            e[0].starts_with("policies.cedar:3:8: unexpected token `(`"),
            "{e:?}"
        );
        let e =
            errors("forbid (principal, action, resource)\n  when { principal.emial == \"x\" };");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("policies.cedar:2:10: "), "{e:?}");
        assert!(
            e[0].contains("emial") && e[0].contains("did you mean `email`")
                || e[0].contains("emial"),
            "{e:?}"
        );
        let e = errors("forbid (principal, action == Action::\"delete\", resource);");
        assert!(e[0].contains("Action::\"delete\""), "{e:?}");
        let e = errors(
            "forbid (principal, action, resource) when { context.arguments.getTag(\"q\") == \"x\" };",
        );
        assert!(e[0].contains("hasTag"), "an unguarded tag: {e:?}");
        let e = errors("permit (principal, action, resource);");
        assert!(e[0].contains("is a permit: roles grant"), "{e:?}");
        let e = errors(
            "@id(\"a\") forbid (principal, action, resource);\n@id(\"a\") forbid (principal, action, resource);",
        );
        assert!(e[0].contains("its own @id"), "{e:?}");
        assert!(
            Conditions::compile(&source("// nothing yet\n"))
                .unwrap()
                .is_none()
        );
    }

    const POLICIES: &str = r#"
@id("read-only-sql")
forbid (principal, action == Action::"call", resource)
  when { resource.connector == "db" }
  unless { context.arguments.hasTag("query") && context.arguments.getTag("query") like "SELECT *" };

@id("acme-repos-only")
forbid (principal, action == Action::"call", resource)
  when { resource.connector == "gh" && principal.roles.contains("contractor") }
  unless { context.arguments.hasTag("repo") && context.arguments.getTag("repo") like "acme/*" };

@id("no-deletes-for-contractors")
forbid (principal, action, resource)
  when { principal.roles.contains("contractor") && resource.name like "delete_*" };
"#;

    fn policy(text: &str) -> RolePolicy {
        let roles = [
            (
                "dev".to_owned(),
                RoleRules {
                    servers: vec!["main".into()],
                    allow: vec!["db/*".into(), "gh/*".into()],
                    deny: vec![],
                    ask: vec![],
                },
            ),
            (
                "contractor".to_owned(),
                RoleRules {
                    servers: vec!["main".into()],
                    allow: vec!["gh/*".into()],
                    deny: vec![],
                    ask: vec![],
                },
            ),
        ];
        let p = RolePolicy::new(std::iter::empty());
        let c = Conditions::compile(&source(text)).unwrap();
        p.replace_all(roles.iter().map(|(n, r)| (n, r)), c);
        p
    }

    use crate::tests::member as user;

    fn call(p: &RolePolicy, who: &Principal, c: &str, n: &str, args: serde_json::Value) -> bool {
        let args = args.as_object().cloned().unwrap_or_default();
        let item = Item {
            kind: ItemKind::Tool,
            connector: c,
            name: n,
            exposed: n,
            arguments: Some(&args),
        };
        let a = Action {
            via: Default::default(),
            server: "main",
            kind: ActionKind::Use {
                verb: Verb::Call,
                item,
            },
        };
        matches!(p.decide(who, &a), Decision::Allow)
    }

    fn listed(p: &RolePolicy, who: &Principal, c: &str, n: &str) -> bool {
        let a = Action {
            via: Default::default(),
            server: "main",
            kind: ActionKind::List(ItemKind::Tool),
        };
        let item = Item {
            kind: ItemKind::Tool,
            connector: c,
            name: n,
            exposed: n,
            arguments: None,
        };
        match p.decide(who, &a) {
            Decision::Allow => true,
            Decision::Only(view) => view(&item),
            Decision::Ask(_) | Decision::Deny(_) | Decision::Refuse(_) => false,
        }
    }

    #[test]
    fn conditions_on_arguments_narrow_calls_and_lists_show_what_some_call_may_do() {
        use serde_json::json;
        let p = policy(POLICIES);
        let dev = user(&["dev"]);
        let contractor = user(&["contractor"]);
        // A database tool only with a read-only query.
        assert!(call(
            &p,
            &dev,
            "db",
            "query",
            json!({"query": "SELECT * FROM t"})
        ));
        assert!(!call(
            &p,
            &dev,
            "db",
            "query",
            json!({"query": "DROP TABLE t"})
        ));
        assert!(
            !call(&p, &dev, "db", "query", json!({})),
            "no query: not read-only"
        );
        assert!(
            !call(&p, &dev, "db", "query", json!({"query": 5})),
            "a number is its JSON"
        );
        assert!(
            listed(&p, &dev, "db", "query"),
            "some call of it may be allowed"
        );
        // Refused for its arguments while listed: a refusal the caller may be told of.
        let args = json!({"query": "DROP TABLE t"})
            .as_object()
            .cloned()
            .unwrap();
        let drop = Action {
            via: Default::default(),
            server: "main",
            kind: ActionKind::Use {
                verb: Verb::Call,
                item: Item {
                    kind: ItemKind::Tool,
                    connector: "db",
                    name: "query",
                    exposed: "query",
                    arguments: Some(&args),
                },
            },
        };
        assert!(
            matches!(p.decide(&dev, &drop), Decision::Refuse(_)),
            "{:?}",
            p.decide(&dev, &drop)
        );
        // A repository tool only for acme/*, for contractors; anyone else anywhere.
        assert!(call(
            &p,
            &contractor,
            "gh",
            "create_issue",
            json!({"repo": "acme/web"})
        ));
        assert!(!call(
            &p,
            &contractor,
            "gh",
            "create_issue",
            json!({"repo": "evil/web"})
        ));
        assert!(call(
            &p,
            &dev,
            "gh",
            "create_issue",
            json!({"repo": "evil/web"})
        ));
        // A condition that does not look at arguments hides the tool from lists as well.
        assert!(!listed(&p, &contractor, "gh", "delete_repo"));
        assert!(!call(
            &p,
            &contractor,
            "gh",
            "delete_repo",
            json!({"repo": "acme/web"})
        ));
        assert!(listed(&p, &dev, "gh", "delete_repo"));
        // Conditions never widen the roles: the contractor has no db tools at all.
        assert!(!listed(&p, &contractor, "db", "query"));
        assert!(!call(
            &p,
            &contractor,
            "db",
            "query",
            json!({"query": "SELECT 1"})
        ));
        // The explanation names the policy.
        let args = json!({"repo": "evil/x"}).as_object().cloned().unwrap();
        let why = p.explain(
            &contractor,
            "main",
            Via::default(),
            Some(&Item {
                kind: ItemKind::Tool,
                connector: "gh",
                name: "create_issue",
                exposed: "create_issue",
                arguments: Some(&args),
            }),
        );
        assert!(!why.allowed);
        assert!(
            why.because
                .last()
                .unwrap()
                .contains("forbidden by acme-repos-only"),
            "{why:?}"
        );
    }

    #[test]
    fn conditions_on_the_client_application_and_the_source_address() {
        let p = policy(
            r#"
@id("office-only")
forbid (principal, action, resource)
  when { resource.connector == "db" }
  unless { context has source && context.source.isInRange(ip("10.0.0.0/8")) };

@id("claude-may-not-push")
forbid (principal, action == Action::"call", resource)
  when { resource.name == "push" && context.client == "https://claude.example/client" };
"#,
        );
        let dev = user(&["dev"]);
        let decide = |who: &Principal, c: &str, n: &str, source: Option<&str>| {
            let via = Via {
                source: source.map(|s| s.parse().unwrap()),
            };
            let a = Action {
                via,
                server: "main",
                kind: ActionKind::Use {
                    verb: Verb::Call,
                    item: Item {
                        kind: ItemKind::Tool,
                        connector: c,
                        name: n,
                        exposed: n,
                        arguments: None,
                    },
                },
            };
            matches!(p.decide(who, &a), Decision::Allow)
        };
        assert!(decide(&dev, "db", "query", Some("10.1.2.3")));
        assert!(!decide(&dev, "db", "query", Some("192.168.1.9")));
        assert!(
            decide(&dev, "db", "query", Some("::ffff:10.1.2.3")),
            "an IPv4 peer on an IPv6 socket is itself"
        );
        assert!(
            !decide(&dev, "db", "query", None),
            "an unknown source is not in the office"
        );
        assert!(decide(&dev, "gh", "query", Some("192.168.1.9")), "not db");
        let claude = user(&["dev"]).with_client("https://claude.example/client");
        assert!(!decide(&claude, "gh", "push", Some("10.0.0.1")));
        assert!(decide(&claude, "gh", "pull", Some("10.0.0.1")));
        assert!(
            decide(&dev, "gh", "push", Some("10.0.0.1")),
            "an API key has no client"
        );
        let cursor = user(&["dev"]).with_client("cursor");
        assert!(decide(&cursor, "gh", "push", None));
        // A list made where the source is known hides what the source may not use.
        let list = Action {
            via: Via {
                source: Some("192.168.1.9".parse().unwrap()),
            },
            server: "main",
            kind: ActionKind::List(ItemKind::Tool),
        };
        let Decision::Only(view) = p.decide(&dev, &list) else {
            panic!("a filtered list")
        };
        let item = |c| Item {
            kind: ItemKind::Tool,
            connector: c,
            name: "query",
            exposed: "query",
            arguments: None,
        };
        assert!(!view(&item("db")) && view(&item("gh")));
        // Explain takes the same facts.
        let why = p.explain(
            &dev,
            "main",
            Via {
                source: Some("10.9.9.9".parse().unwrap()),
            },
            Some(&item("db")),
        );
        assert!(why.allowed, "{why:?}");
        let why = p.explain(&dev, "main", Via::default(), Some(&item("db")));
        assert!(!why.allowed && why.because.last().unwrap().contains("office-only"));
    }

    #[test]
    fn a_condition_that_cannot_be_evaluated_denies() {
        // Valid (a Long), but it overflows whenever it is evaluated.
        let p = policy(
            "@id(\"overflow\") forbid (principal, action, resource) when { (context.weekday + 1) * 9223372036854775807 > 1 };",
        );
        let dev = user(&["dev"]);
        assert!(!call(&p, &dev, "gh", "x", serde_json::json!({})));
        assert!(!listed(&p, &dev, "gh", "x"), "nor listed");
        let a = Action {
            via: Default::default(),
            server: "main",
            kind: ActionKind::Use {
                verb: Verb::Call,
                item: Item {
                    kind: ItemKind::Tool,
                    connector: "gh",
                    name: "x",
                    exposed: "x",
                    arguments: None,
                },
            },
        };
        match p.decide(&dev, &a) {
            Decision::Deny(why) => assert!(why.contains("could not be evaluated"), "{why}"),
            _ => panic!("allowed"),
        }
    }
}
