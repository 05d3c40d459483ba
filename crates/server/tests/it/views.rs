//! `list_changed` follows each client's own view: a change of the catalog that a caller cannot
//! see is not announced to a caller who was shown the list, a policy change is announced to
//! exactly the callers whose view it changed, and so is a change of a caller's own roles.

use std::time::Duration;

use serde_json::json;

use crate::support::*;

fn config() -> String {
    format!("{}\n[servers.main]\nconnectors = [\"fa\"]\n", faulty("fa"))
}

/// A session's standalone stream, kept open for the whole test.
struct Stream(reqwest::Response);

impl Stream {
    async fn open(url: &str, sid: &str, user: &str) -> Self {
        let r = http()
            .get(url)
            .header("accept", "text/event-stream")
            .header("mcp-session-id", sid)
            .header("mcp-protocol-version", LEGACY)
            .header("x-test-user", user)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        Self(r)
    }

    /// What arrives within `wait`.
    async fn read(&mut self, wait: Duration) -> String {
        let mut out = String::new();
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(deadline, self.0.chunk()).await {
            out.push_str(&String::from_utf8_lossy(&chunk));
        }
        out
    }
}

async fn rpc(url: &str, sid: &str, user: &str, method: &str, params: serde_json::Value) -> String {
    let body = json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": params});
    let r = post_in(url, sid)
        .header("x-test-user", user)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    r.text().await.unwrap()
}

const CHANGED: &str = "notifications/tools/list_changed";

#[tokio::test]
async fn list_changes_reach_the_clients_whose_own_view_changed() {
    let gw = Gw::start(&config(), &["fa__added_tool"]).await;
    let url = gw.url("main");
    let (a, b) = (
        session(&url, Some("a")).await,
        session(&url, Some("b")).await,
    );
    // a is shown the tools; b never lists them.
    let listed = rpc(&url, &a, "a", "tools/list", json!({})).await;
    assert!(
        listed.contains("fa__echo") && !listed.contains("fa__added_tool"),
        "{listed}"
    );
    let wait = Duration::from_millis(800);
    let (mut ga, mut gb) = (
        Stream::open(&url, &a, "a").await,
        Stream::open(&url, &b, "b").await,
    );

    // The upstream adds a tool the policy hides: a's view is unchanged, so a is not told; b,
    // whose view the gateway does not know, is told (as before views were followed).
    let r = rpc(
        &url,
        &a,
        "a",
        "tools/call",
        json!({"name": "fa__change_tools", "arguments": {}}),
    )
    .await;
    assert!(r.contains("changed"), "{r}");
    eventually("the catalog to change", || async {
        gw.gw
            .virtual_server("main")
            .unwrap()
            .catalog()
            .tool_index
            .contains_key("fa__added_tool")
            .then_some(())
    })
    .await;
    let (sa, sb) = tokio::join!(ga.read(wait), gb.read(wait));
    assert!(!sa.contains(CHANGED), "a's view did not change: {sa}");
    assert!(sb.contains(CHANGED), "b is told: {sb}");

    // The policy now hides echo too: both views change, and both are told.
    gw.deny(&["fa__added_tool", "fa__echo"]);
    gw.gw.policy_changed();
    let (sa, sb) = tokio::join!(ga.read(wait), gb.read(wait));
    assert!(
        sa.contains(CHANGED) && sb.contains(CHANGED),
        "a: {sa}\nb: {sb}"
    );
    assert!(
        !sa.contains("notifications/prompts/list_changed"),
        "only the list that changed: {sa}"
    );

    // A policy change that changes no one's view is not announced.
    gw.deny(&["fa__echo", "fa__added_tool"]);
    gw.gw.policy_changed();
    let sa = ga.read(wait).await;
    assert!(!sa.contains(CHANGED), "{sa}");
    let listed = rpc(&url, &a, "a", "tools/list", json!({})).await;
    assert!(!listed.contains("fa__echo"), "{listed}");
}

/// A member whose roles change (in the store, at their provider) keeps their session: their
/// next request carries the new roles, the session goes on under them, and its stream is told
/// of the list that changed for them — not other members'. Someone else still cannot use it.
#[tokio::test]
async fn a_members_changed_roles_keep_their_session_and_tell_it_what_changed() {
    let gw = Gw::start(&config(), &[]).await;
    let url = gw.url("main");
    let (c, d) = (
        session(&url, Some("c")).await,
        session(&url, Some("d")).await,
    );
    for (sid, user) in [(&c, "c"), (&d, "d")] {
        let listed = rpc(&url, sid, user, "tools/list", json!({})).await;
        assert!(listed.contains("fa__echo"), "{listed}");
    }
    let wait = Duration::from_millis(800);
    let (mut gc, mut gd) = (
        Stream::open(&url, &c, "c").await,
        Stream::open(&url, &d, "d").await,
    );
    // c's next request holds the role that hides echo.
    let ping = json!({"jsonrpc": "2.0", "id": 8, "method": "ping"});
    let r = post_in(&url, &c)
        .header("x-test-user", "c")
        .header("x-test-roles", "no-echo")
        .body(ping.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the session is still c's");
    assert!(r.text().await.unwrap().contains("\"result\""));
    let (sc, sd) = tokio::join!(gc.read(wait), gd.read(wait));
    assert!(sc.contains(CHANGED), "c is told: {sc}");
    assert!(
        !sc.contains("notifications/prompts/list_changed"),
        "only tools changed for c: {sc}"
    );
    assert!(!sd.contains(CHANGED), "d's view did not change: {sd}");
    // A list change computed later (a policy change that changes nothing) uses c's new roles:
    // c is not told again.
    gw.gw.policy_changed();
    let sc = gc.read(wait).await;
    assert!(!sc.contains(CHANGED), "{sc}");
    // Someone else with c's session id finds no session.
    let r = post_in(&url, &c)
        .header("x-test-user", "d")
        .body(ping.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

/// The same for a 2026-07-28 client: its listen stream is told when a request of the member
/// arrives under roles that change their view, and only then.
#[tokio::test]
async fn a_listen_stream_follows_its_members_changed_roles() {
    let gw = Gw::start(&config(), &[]).await;
    let url = gw.url("main");
    let r = modern_request(
        &url,
        "subscriptions/listen",
        json!({"notifications": {"toolsListChanged": true, "promptsListChanged": true}}),
        json!({}),
    )
    .header("x-test-user", "e")
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let mut stream = Stream(r);
    let wait = Duration::from_millis(800);
    let opened = stream.read(wait).await;
    assert!(
        opened.contains("toolsListChanged"),
        "acknowledged: {opened}"
    );
    let list = |roles: &'static str| {
        let url = url.clone();
        async move {
            let mut r =
                modern_request(&url, "tools/list", json!({}), json!({})).header("x-test-user", "e");
            if !roles.is_empty() {
                r = r.header("x-test-roles", roles);
            }
            r.send().await.unwrap().text().await.unwrap()
        }
    };
    // The same roles: nothing to tell.
    assert!(list("").await.contains("fa__echo"));
    assert!(!stream.read(wait).await.contains(CHANGED));
    // Another member's changed roles are not e's.
    let other = modern_request(&url, "tools/list", json!({}), json!({}))
        .header("x-test-user", "f")
        .header("x-test-roles", "no-echo")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!other.contains("fa__echo"), "{other}");
    assert!(!stream.read(wait).await.contains(CHANGED));
    // e's next request under the role that hides echo: e's stream is told, tools only.
    let listed = list("no-echo").await;
    assert!(!listed.contains("fa__echo"), "{listed}");
    let told = stream.read(wait).await;
    assert!(told.contains(CHANGED), "{told}");
    assert!(
        !told.contains("notifications/prompts/list_changed"),
        "{told}"
    );
}

/// A resource subscription made while the member could read the resource stops delivering
/// updates once the policy refuses it to them: each update is decided when it is delivered.
#[tokio::test]
async fn updates_of_a_subscription_stop_when_the_policy_refuses_the_resource() {
    let gw = Gw::start(&config(), &[]).await;
    let url = gw.url("main");
    let s = session(&url, Some("g")).await;
    let sub = rpc(
        &url,
        &s,
        "g",
        "resources/subscribe",
        json!({"uri": "fa+fixture://static"}),
    )
    .await;
    assert!(sub.contains("\"result\""), "{sub}");
    let mut stream = Stream::open(&url, &s, "g").await;
    let wait = Duration::from_millis(800);
    let touch = || {
        rpc(
            &url,
            &s,
            "g",
            "tools/call",
            json!({"name": "fa__touch_resource", "arguments": {"uri": "fixture://static"}}),
        )
    };
    const UPDATED: &str = "notifications/resources/updated";
    assert!(touch().await.contains("touched fixture://static"));
    let got = stream.read(wait).await;
    assert!(
        got.contains(UPDATED) && got.contains("fa+fixture://static"),
        "{got}"
    );
    gw.deny(&["fa+fixture://static"]);
    let r = touch().await;
    assert!(r.contains("touched fixture://static"), "{r}");
    let got = stream.read(wait).await;
    assert!(!got.contains(UPDATED), "refused now: {got}");
    // Allowed again: delivered again (the subscription itself was kept).
    gw.deny(&[]);
    touch().await;
    assert!(stream.read(wait).await.contains(UPDATED));
}
