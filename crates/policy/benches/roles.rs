//! What a role decision costs: 1,000 rules (20 roles of 45 allow and 5 deny globs), a member
//! holding two roles; one use decision, and a filtered list of 5,000 tools; and a call decided
//! by roles and three Cedar conditions. Prints µs / ms.
//!
//!     cargo bench -p manifold-policy

use std::time::Instant;

use manifold_policy::{
    Action, ActionKind, Decision, Item, ItemKind, Policy, Principal, RolePolicy, RoleRules, Verb,
};

fn tool<'a>(connector: &'a str, name: &'a str) -> Item<'a> {
    Item {
        kind: ItemKind::Tool,
        connector,
        name,
        exposed: name,
        arguments: None,
    }
}

fn main() {
    let roles: Vec<(String, RoleRules)> = (0..20)
        .map(|r| {
            let allow = (0..45)
                .map(|i| format!("conn{}/tool{}*", (r * 45 + i) % 50, r * 45 + i))
                .collect();
            let deny = (0..5).map(|i| format!("conn{i}/danger{r}*")).collect();
            let rules = RoleRules {
                servers: vec!["main".into()],
                allow,
                deny,
                ask: vec![],
            };
            (format!("r{r}"), rules)
        })
        .collect();
    let p = RolePolicy::new(roles.iter().map(|(n, r)| (n, r)));
    let who = Principal::user("issuer", "subject", vec!["r3".into(), "r7".into()], vec![]);
    let names: Vec<(String, String)> = (0..5000)
        .map(|n| (format!("conn{}", n % 50), format!("tool{}x", n % 900)))
        .collect();

    uses(&p, &who, &names, "use decision, 1,000 rules");
    // The member of manifold-bench's 1,000-rule row: all 20 roles, and two groups besides.
    let all: Vec<String> = (0..20).map(|r| format!("r{r}")).collect();
    let everyone = Principal::user("issuer", "subject", all, vec![])
        .with_groups(vec!["g1".into(), "g2".into()]);
    uses(
        &p,
        &everyone,
        &names,
        "use decision, 1,000 rules, a member holding all 20 roles",
    );

    let list = Action {
        via: Default::default(),
        server: "main",
        kind: ActionKind::List(ItemKind::Tool),
    };
    let reps = 50;
    let t = Instant::now();
    let mut shown = 0;
    for _ in 0..reps {
        let Decision::Only(view) = p.decide(&who, &list) else {
            panic!("a member's list is filtered");
        };
        shown += names.iter().filter(|(c, n)| view(&tool(c, n))).count();
    }
    println!(
        "| filtered list of 5,000 tools, 1,000 rules | {:.2} ms | ({} shown) |",
        t.elapsed().as_secs_f64() * 1e3 / f64::from(reps),
        shown / reps as usize
    );
    conditions();
}

/// `who` calling each of `names` in turn, 200,000 times: µs per decision.
fn uses(p: &RolePolicy, who: &Principal, names: &[(String, String)], row: &str) {
    let n = 200_000;
    let t = Instant::now();
    let mut allowed = 0;
    for i in 0..n {
        let (c, name) = &names[i % names.len()];
        let a = Action {
            via: Default::default(),
            server: "main",
            kind: ActionKind::Use {
                verb: Verb::Call,
                item: tool(c, name),
            },
        };
        allowed += usize::from(matches!(p.decide(who, &a), Decision::Allow));
    }
    println!(
        "| {row} | {:.2} µs | ({allowed} of {n} allowed) |",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
}

/// A call decided by the roles and three Cedar conditions (two on the arguments): µs per call.
fn conditions() {
    let text = r#"
@id("read-only-sql")
forbid (principal, action == Action::"call", resource)
  when { resource.connector == "conn1" }
  unless { context.arguments.hasTag("query") && context.arguments.getTag("query") like "SELECT *" };
@id("acme-repos-only")
forbid (principal, action == Action::"call", resource)
  when { resource.connector == "conn2" && principal.roles.contains("contractor") }
  unless { context.arguments.hasTag("repo") && context.arguments.getTag("repo") like "acme/*" };
@id("no-deletes")
forbid (principal, action, resource) when { resource.name like "delete_*" };
"#;
    let source = manifold_policy::Source {
        name: "bench.cedar".into(),
        text: text.into(),
        line_offset: 0,
    };
    let c = manifold_policy::Conditions::compile(&[source]).expect("the bench's policies compile");
    let rules = RoleRules {
        servers: vec!["main".into()],
        allow: vec!["*/*".into()],
        deny: vec![],
        ask: vec![],
    };
    let roles = [("dev".to_owned(), rules)];
    let p = RolePolicy::new(std::iter::empty());
    p.replace_all(roles.iter().map(|(n, r)| (n, r)), c);
    let who = Principal::user("issuer", "subject", vec!["dev".into()], vec![]);
    let args = serde_json::json!({"query": "SELECT * FROM t", "limit": 10});
    let args = args.as_object().unwrap();
    let n = 20_000;
    let t = Instant::now();
    let mut allowed = 0;
    for _ in 0..n {
        let a = Action {
            via: Default::default(),
            server: "main",
            kind: ActionKind::Use {
                verb: Verb::Call,
                item: Item {
                    kind: ItemKind::Tool,
                    connector: "conn1",
                    name: "query",
                    exposed: "query",
                    arguments: Some(args),
                },
            },
        };
        allowed += usize::from(matches!(p.decide(&who, &a), Decision::Allow));
    }
    println!(
        "| use decision, roles and 3 Cedar conditions | {:.2} µs | ({allowed} of {n} allowed) |",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
}
