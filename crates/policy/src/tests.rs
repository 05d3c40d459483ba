//! The policy seam with plain data: one decision per request, permits bound to what they allow,
//! list views that agree with use decisions.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use crate::*;

/// A local user holding `roles` (for the tests of every module).
pub(crate) fn member(roles: &[&str]) -> Principal {
    Principal::user(
        "local",
        "u",
        roles.iter().map(|r| (*r).to_owned()).collect(),
        vec![],
    )
}

#[derive(Debug)]
struct Call<'a>(Item<'a>);

impl Target for Call<'_> {
    fn action(&self) -> Action<'_> {
        Action {
            via: Default::default(),
            server: "s",
            kind: ActionKind::Use {
                verb: Verb::Call,
                item: self.0,
            },
        }
    }
}

#[derive(Debug)]
struct ListTools;

impl Target for ListTools {
    fn action(&self) -> Action<'_> {
        Action {
            via: Default::default(),
            server: "s",
            kind: ActionKind::List(ItemKind::Tool),
        }
    }
}

fn tool(exposed: &str) -> Item<'_> {
    Item {
        kind: ItemKind::Tool,
        connector: "c",
        name: exposed,
        exposed,
        arguments: None,
    }
}

/// Counts its consultations, deciding like `DenyExposed`.
struct Counting(DenyExposed, AtomicUsize);

impl Policy for Counting {
    fn decide(&self, who: &Principal, action: &Action<'_>) -> Decision {
        self.1.fetch_add(1, Ordering::SeqCst);
        self.0.decide(who, action)
    }
}

#[test]
fn allow_all_permits_and_shows_everything() {
    let who = Arc::new(Principal::anonymous());
    let p = authorize(&AllowAll, &who, Via::default(), Call(tool("a__x"))).unwrap();
    assert_eq!(p.target().0.exposed, "a__x");
    assert!(p.principal().is_anonymous());
    let l = authorize(&AllowAll, &who, Via::default(), ListTools).unwrap();
    assert!(!l.filters());
    assert!(l.shows(&tool("anything")));
}

#[test]
fn a_denied_use_gives_the_request_back_with_the_reason() {
    let who = Arc::new(Principal::anonymous());
    let policy = DenyExposed(vec!["a__secret*".into()]);
    let d = authorize(&policy, &who, Via::default(), Call(tool("a__secret_tool"))).unwrap_err();
    assert_eq!(d.target.0.exposed, "a__secret_tool");
    assert!(d.reason.contains("a__secret_tool"), "{}", d.reason);
    assert!(authorize(&policy, &who, Via::default(), Call(tool("a__open"))).is_ok());
}

#[test]
fn a_list_is_one_decision_whose_view_agrees_with_use() {
    let who = Arc::new(Principal::anonymous());
    let policy = Counting(DenyExposed(vec!["*__hidden".into()]), AtomicUsize::new(0));
    let list = authorize(&policy, &who, Via::default(), ListTools).unwrap();
    assert_eq!(
        policy.1.load(Ordering::SeqCst),
        1,
        "one consultation per list"
    );
    for name in ["a__hidden", "a__shown", "b__hidden", "hidden"] {
        let shown = list.shows(&tool(name));
        let usable = authorize(&policy, &who, Via::default(), Call(tool(name))).is_ok();
        assert_eq!(shown, usable, "{name}: listed = callable");
    }
    assert!(list.filters());
    assert!(!list.shows(&tool("a__hidden")));
    assert!(list.shows(&tool("hidden")));
}

#[test]
fn principals_are_identified_by_issuer_and_subject() {
    let a = Principal::user("https://idp", "42", vec!["dev".into()], vec![]);
    let b = Principal::user("https://other-idp", "42", vec!["dev".into()], vec![]);
    assert_ne!(
        a.id(),
        b.id(),
        "the same subject at another issuer is someone else"
    );
    assert_eq!(a.id().to_string(), "42@https://idp");
    assert_eq!(Principal::anonymous().id().to_string(), "anonymous");
    assert!(!a.is_anonymous());
}

#[test]
fn globs() {
    for (p, n, want) in [
        ("*", "", true),
        ("e*", "echo", true),
        ("*o", "echo", true),
        ("e?ho", "echo", true),
        ("a*b*c", "aXbYc", true),
        ("a*b", "ab_", false),
        ("echo", "echos", false),
        // Beyond ASCII, `?` is one character (not one byte).
        ("caf?", "café", true),
        ("caf??", "café", false),
        ("*é", "café", true),
        ("file:///tmp/*", "file:///tmp/ünï.txt", true),
        ("*/read_*", "db/read_rows", true),
    ] {
        assert_eq!(glob(p, n), want, "{p} {n}");
    }
}
