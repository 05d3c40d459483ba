//! The store on both backends: users, API keys, migrations, WAL, concurrent opens.

use crate::{Backend, Location, NewApiKey, NewUser, Store, StoreError, testing};

/// Each test runs on both backends: SQLite in a fresh directory, PostgreSQL in a fresh schema.
/// Without PostgreSQL the second is skipped (said so), unless `MANIFOLD_REQUIRE_POSTGRES=1`.
async fn stores(test: &str) -> Vec<Store> {
    let dir = std::env::temp_dir().join(format!("manifold-store-{}", crate::new_id()));
    let mut out = vec![Store::open(&Location::Sqlite(dir)).await.unwrap()];
    match testing::fresh_postgres().await {
        Ok(url) => out.push(Store::open(&Location::Postgres(url)).await.unwrap()),
        Err(why) if testing::postgres_required() => {
            panic!("{test}: {why}")
        }
        Err(why) => eprintln!("SKIPPED {test} on PostgreSQL: {why}"),
    }
    out
}

fn user(name: &str) -> NewUser<'_> {
    NewUser {
        name,
        email: None,
        password_hash: Some("$argon2id$x"),
        roles: &[],
        groups: &[],
    }
}

#[tokio::test]
async fn users_are_added_found_listed_and_disabled() {
    for s in stores("users_are_added_found_listed_and_disabled").await {
        let b = s.backend();
        let roles = vec!["admin".to_owned(), "dev".to_owned()];
        let alice = s
            .add_user(&NewUser {
                name: "alice",
                email: Some("a@example.com"),
                password_hash: Some("$argon2id$h"),
                roles: &roles,
                groups: &["eng".to_owned()],
            })
            .await
            .unwrap();
        assert_eq!(alice.roles, roles, "{b:?}");
        assert_eq!(alice.groups, ["eng"], "{b:?}");
        assert_eq!(alice.subject, alice.id, "{b:?}");
        assert!(!alice.disabled);
        match s.add_user(&user("alice")).await {
            Err(StoreError::Conflict(m)) => assert!(m.contains("alice"), "{m}"),
            other => panic!("{b:?}: a second alice: {other:?}"),
        }
        s.add_user(&user("bob")).await.unwrap();
        let names: Vec<String> = s
            .users()
            .await
            .unwrap()
            .into_iter()
            .map(|u| u.name)
            .collect();
        assert_eq!(names, ["alice", "bob"], "{b:?}");
        s.set_disabled(&alice.id, true).await.unwrap();
        assert!(
            s.local_user("alice").await.unwrap().unwrap().disabled,
            "{b:?}"
        );
        s.set_password_hash(&alice.id, "$argon2id$new")
            .await
            .unwrap();
        assert_eq!(
            s.user(&alice.id)
                .await
                .unwrap()
                .unwrap()
                .password_hash
                .as_deref(),
            Some("$argon2id$new")
        );
        // Roles and groups replaced, each on its own or both; a withdrawal each time.
        let before = s.withdrawals_here();
        let ops = ["ops".to_owned()];
        s.set_roles_and_groups(&alice.id, Some(&ops), None)
            .await
            .unwrap();
        let a = s.user(&alice.id).await.unwrap().unwrap();
        assert_eq!(
            (a.roles, a.groups),
            (vec!["ops".to_owned()], vec!["eng".to_owned()]),
            "{b:?}"
        );
        s.set_roles_and_groups(&alice.id, None, Some(&["qa".to_owned(), "sre".to_owned()]))
            .await
            .unwrap();
        let a = s.local_user("alice").await.unwrap().unwrap();
        assert_eq!(a.groups, ["qa", "sre"], "{b:?}");
        s.set_roles_and_groups(&alice.id, Some(&[]), Some(&[]))
            .await
            .unwrap();
        let a = s.user(&alice.id).await.unwrap().unwrap();
        assert!(a.roles.is_empty() && a.groups.is_empty(), "{b:?}");
        assert_eq!(s.withdrawals_here(), before + 3, "{b:?}");
        assert!(matches!(
            s.set_roles_and_groups("nobody", Some(&ops), None).await,
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            s.set_disabled("nobody", true).await,
            Err(StoreError::NotFound(_))
        ));
        assert!(s.local_user("carol").await.unwrap().is_none());
    }
}

#[tokio::test]
async fn api_keys_are_found_by_hash_listed_and_revoked() {
    for s in stores("api_keys_are_found_by_hash_listed_and_revoked").await {
        let b = s.backend();
        let alice = s.add_user(&user("alice")).await.unwrap();
        let servers = vec!["demo".to_owned(), "team".to_owned()];
        let k = s
            .add_api_key(&NewApiKey {
                user_id: &alice.id,
                name: "ci",
                hash: "h1",
                servers: &servers,
                expires_at: Some(crate::now() + 3600),
            })
            .await
            .unwrap();
        assert_eq!(k.servers, servers, "{b:?}");
        assert!(k.live(crate::now()));
        assert!(!k.live(crate::now() + 7200), "expired later");
        let (found, owner) = s.api_key_by_hash("h1").await.unwrap().unwrap();
        assert_eq!(
            (found.id.as_str(), owner.name.as_str()),
            (k.id.as_str(), "alice")
        );
        assert!(s.api_key_by_hash("h2").await.unwrap().is_none(), "{b:?}");
        // The key's user comes with their groups.
        s.set_roles_and_groups(&alice.id, None, Some(&["eng".to_owned()]))
            .await
            .unwrap();
        let (_, owner) = s.api_key_by_hash("h1").await.unwrap().unwrap();
        assert_eq!(owner.groups, ["eng"], "{b:?}");
        s.touch_api_key(&k.id, 1000).await.unwrap();
        s.touch_api_key(&k.id, 1010).await.unwrap();
        let listed = s.api_keys(Some(&alice.id)).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(
            listed[0].last_used_at,
            Some(1000),
            "one write a minute: {b:?}"
        );
        s.revoke_api_key(&k.id).await.unwrap();
        let (revoked, _) = s.api_key_by_hash("h1").await.unwrap().unwrap();
        assert!(!revoked.live(crate::now()), "{b:?}");
        assert!(matches!(
            s.revoke_api_key("nope").await,
            Err(StoreError::NotFound(_))
        ));
        // A key needs an existing user.
        assert!(
            s.add_api_key(&NewApiKey {
                user_id: "nobody",
                name: "x",
                hash: "h3",
                servers: &servers,
                expires_at: None,
            })
            .await
            .is_err()
        );
    }
}

#[tokio::test]
async fn reopening_migrates_once_and_keeps_the_data() {
    let dir = std::env::temp_dir().join(format!("manifold-store-{}", crate::new_id()));
    let s = Store::open(&Location::Sqlite(dir.clone())).await.unwrap();
    assert_eq!(s.backend(), Backend::Sqlite);
    s.add_user(&user("alice")).await.unwrap();
    s.close().await;
    let s = Store::open(&Location::Sqlite(dir.clone())).await.unwrap();
    assert!(s.local_user("alice").await.unwrap().is_some());
    // WAL, as promised.
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&s.pool)
        .await
        .unwrap();
    assert_eq!(mode.to_lowercase(), "wal");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn gateways_starting_together_on_postgres_migrate_once_and_share_data() {
    let url = match testing::fresh_postgres().await {
        Ok(u) => u,
        Err(why) if testing::postgres_required() => {
            panic!("{why}")
        }
        Err(why) => return eprintln!("SKIPPED: {why}"),
    };
    let loc = Location::Postgres(url);
    // Four gateways starting at once on one database.
    let stores: Vec<Store> = futures::future::join_all((0..4).map(|_| Store::open(&loc)))
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    stores[0].add_user(&user("alice")).await.unwrap();
    for s in &stores {
        assert!(s.local_user("alice").await.unwrap().is_some());
    }
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM manifold_migrations")
        .fetch_one(&stores[3].pool)
        .await
        .unwrap();
    assert_eq!(
        n,
        crate::migrate::MIGRATIONS.len() as i64,
        "each migration once"
    );
}

#[tokio::test]
async fn every_withdrawal_moves_the_change_counter_and_nothing_else_does() {
    for s in stores("every_withdrawal_moves_the_change_counter_and_nothing_else_does").await {
        let b = s.backend();
        // The counter as a second gateway on the same store sees it.
        let other = Store::open(&match b {
            Backend::Sqlite => Location::Sqlite(
                std::path::Path::new(s.shown())
                    .parent()
                    .unwrap()
                    .to_path_buf(),
            ),
            Backend::Postgres => continue_with_postgres(&s).await,
        })
        .await
        .unwrap();
        let counters = || async {
            (
                s.withdrawals_here(),
                other.credential_changes().await.unwrap(),
            )
        };
        let (here, shared) = counters().await;
        assert_eq!(other.withdrawals_here(), 0, "{b:?}");
        let alice = s.add_user(&user("alice")).await.unwrap();
        let k = s
            .add_api_key(&NewApiKey {
                user_id: &alice.id,
                name: "ci",
                hash: "h1",
                servers: &["demo".to_owned()],
                expires_at: None,
            })
            .await
            .unwrap();
        let now = crate::now();
        let grant = crate::Grant {
            id: crate::new_id(),
            user_id: alice.id.clone(),
            client_id: "c".into(),
            resource: "https://gw.example/mcp/demo".into(),
            scope: "mcp".into(),
            created_at: now,
            revoked_at: None,
        };
        s.add_grant(&grant).await.unwrap();
        s.set_password_hash(&alice.id, "$argon2id$new")
            .await
            .unwrap();
        s.touch_api_key(&k.id, now).await.unwrap();
        assert_eq!(
            counters().await,
            (here, shared),
            "{b:?}: nothing withdrawn yet"
        );
        // A withdrawal that changes nothing does not move it either.
        s.revoke_user_grants("nobody", now).await.unwrap();
        assert!(s.set_disabled("nobody", true).await.is_err());
        assert_eq!(counters().await, (here, shared), "{b:?}");
        s.set_disabled(&alice.id, true).await.unwrap();
        assert_eq!(counters().await, (here + 1, shared + 1), "{b:?}: disabled");
        s.revoke_api_key(&k.id).await.unwrap();
        assert_eq!(
            counters().await,
            (here + 2, shared + 2),
            "{b:?}: key revoked"
        );
        s.revoke_grant(&grant.id, now).await.unwrap();
        assert_eq!(
            counters().await,
            (here + 3, shared + 3),
            "{b:?}: grant revoked"
        );
        s.revoke_grant(&grant.id, now).await.unwrap();
        assert_eq!(
            counters().await,
            (here + 3, shared + 3),
            "{b:?}: already revoked"
        );
        assert_eq!(
            other.withdrawals_here(),
            0,
            "{b:?}: a count of this process only"
        );
    }
}

/// A second store on the PostgreSQL schema of `s` (its URL is not kept: read the search path).
async fn continue_with_postgres(s: &Store) -> Location {
    let schema: String = sqlx::query_scalar("SELECT current_schema()::text")
        .fetch_one(&s.pool)
        .await
        .unwrap();
    let base = testing::postgres_url();
    let sep = if base.contains('?') { '&' } else { '?' };
    Location::Postgres(format!("{base}{sep}options=-c%20search_path%3D{schema}"))
}

#[tokio::test]
async fn running_gateways_say_how_far_they_have_seen_the_counter() {
    for s in stores("running_gateways_say_how_far_they_have_seen_the_counter").await {
        let b = s.backend();
        let now = crate::now();
        assert!(s.gateways_behind(1, now - 15).await.unwrap().is_empty());
        s.record_check("gw-a", 0, now).await.unwrap();
        s.record_check("gw-b", 0, now).await.unwrap();
        s.record_check("gw-stopped", 0, now - 60).await.unwrap();
        s.record_check("gw-long-gone", 0, now - 90_000)
            .await
            .unwrap();
        assert_eq!(
            s.gateways_behind(1, now - 15).await.unwrap(),
            ["gw-a", "gw-b"],
            "{b:?}: running and behind; stopped ones do not count"
        );
        // A later check replaces the earlier one.
        s.record_check("gw-a", 1, now).await.unwrap();
        assert_eq!(
            s.gateways_behind(1, now - 15).await.unwrap(),
            ["gw-b"],
            "{b:?}"
        );
        s.record_check("gw-b", 2, now).await.unwrap();
        assert!(
            s.gateways_behind(1, now - 15).await.unwrap().is_empty(),
            "{b:?}"
        );
        // Rows a day old are forgotten; a stopped gateway's are kept until then.
        let kept: Vec<String> =
            sqlx::query_scalar("SELECT gateway FROM credential_checks ORDER BY gateway")
                .fetch_all(&s.pool)
                .await
                .unwrap();
        assert_eq!(kept, ["gw-a", "gw-b", "gw-stopped"], "{b:?}");
    }
}

/// A member of one identity provider, as it describes them.
fn member<'a>(subject: &'a str, name: &'a str, roles: &'a [String]) -> crate::SsoMember<'a> {
    crate::SsoMember {
        issuer: "https://idp.example",
        subject,
        name,
        email: Some("ada@acme.example"),
        roles,
        groups: &[],
    }
}

#[tokio::test]
async fn members_of_an_identity_provider_are_kept_by_issuer_and_subject() {
    for s in stores("members_of_an_identity_provider_are_kept_by_issuer_and_subject").await {
        let b = s.backend();
        let dev = ["dev".to_owned()];
        let ada = s
            .sso_user(&member("sub-1", "ada@acme.example", &[]))
            .await
            .unwrap();
        assert_eq!(
            (ada.issuer.as_str(), ada.subject.as_str(), ada.name.as_str()),
            ("https://idp.example", "sub-1", "ada@acme.example"),
            "{b:?}"
        );
        assert!(ada.password_hash.is_none(), "no password: {b:?}");
        // A local user of the same name is another user.
        let local = s.add_user(&user("ada@acme.example")).await.unwrap();
        assert_ne!(local.id, ada.id);
        // The next sign-in updates roles (a withdrawal: cached principals hold roles) but
        // keeps the id, and never re-enables a disabled member.
        s.set_disabled(&ada.id, true).await.unwrap();
        let before = s.withdrawals_here();
        let roles = &dev[..];
        let again = s
            .sso_user(&member("sub-1", "ada@acme.example", roles))
            .await
            .unwrap();
        assert_eq!(again.id, ada.id, "{b:?}");
        assert!(
            s.signed_in_at(&ada.id)
                .await
                .unwrap()
                .is_some_and(|t| t >= crate::now() - 5)
        );
        assert_eq!(
            s.signed_in_at(&local.id).await.unwrap(),
            None,
            "{b:?}: a local user"
        );
        assert_eq!(again.roles, ["dev"], "{b:?}");
        assert!(again.disabled, "{b:?}");
        assert_eq!(s.withdrawals_here(), before + 1, "{b:?}: roles changed");
        s.sso_user(&member("sub-1", "ada@acme.example", roles))
            .await
            .unwrap();
        assert_eq!(s.withdrawals_here(), before + 1, "{b:?}: nothing changed");
        // Another member with the same handle gets their subject as their name.
        let other = s
            .sso_user(&member("sub-2", "ada@acme.example", &[]))
            .await
            .unwrap();
        assert_eq!(other.name, "sub-2", "{b:?}");
        assert_ne!(other.id, ada.id);
    }
}

#[tokio::test]
async fn an_identity_assertion_is_spent_once_per_issuer() {
    for s in stores("an_identity_assertion_is_spent_once_per_issuer").await {
        let b = s.backend();
        let later = crate::now() + 300;
        assert!(
            s.spend_assertion("https://a", "j1", later).await.unwrap(),
            "{b:?}"
        );
        assert!(
            !s.spend_assertion("https://a", "j1", later).await.unwrap(),
            "{b:?}: replay"
        );
        assert!(
            s.spend_assertion("https://b", "j1", later).await.unwrap(),
            "{b:?}: another issuer's"
        );
        let raced =
            futures::future::join_all((0..20).map(|_| s.spend_assertion("https://a", "j2", later)))
                .await;
        assert_eq!(
            raced.iter().filter(|r| matches!(r, Ok(true))).count(),
            1,
            "{b:?}"
        );
    }
}

#[tokio::test]
async fn a_sign_in_in_progress_is_spent_once() {
    for s in stores("a_sign_in_in_progress_is_spent_once").await {
        let b = s.backend();
        let req = crate::SsoRequest {
            provider: "okta".into(),
            browser_hash: "bh".into(),
            nonce: "n".into(),
            verifier: "v".into(),
            next: "client_id=c".into(),
            expires_at: crate::now() + 600,
        };
        s.add_sso_request("st", &req, 100).await.unwrap();
        assert_eq!(
            s.take_sso_request("st").await.unwrap(),
            Some(req.clone()),
            "{b:?}"
        );
        assert_eq!(
            s.take_sso_request("st").await.unwrap(),
            None,
            "{b:?}: spent"
        );
        assert_eq!(s.take_sso_request("other").await.unwrap(), None, "{b:?}");
        // Twenty callbacks at once: exactly one gets it.
        s.add_sso_request("race", &req, 100).await.unwrap();
        let got = futures::future::join_all((0..20).map(|_| s.take_sso_request("race"))).await;
        let won = got.into_iter().filter(|r| matches!(r, Ok(Some(_)))).count();
        assert_eq!(won, 1, "{b:?}");
        // Expired requests are cleaned up when the next one is added.
        let old = crate::SsoRequest {
            expires_at: crate::now() - 10,
            ..req.clone()
        };
        s.add_sso_request("old", &old, 100).await.unwrap();
        s.add_sso_request("new", &req, 100).await.unwrap();
        assert_eq!(s.take_sso_request("old").await.unwrap(), None, "{b:?}");
        // Bounded: with `most` waiting, the next is refused (and nothing is lost).
        s.add_sso_request("b1", &req, 2).await.unwrap();
        assert!(
            matches!(
                s.add_sso_request("b2", &req, 2).await,
                Err(StoreError::Conflict(_))
            ),
            "{b:?}"
        );
        assert!(s.take_sso_request("new").await.unwrap().is_some(), "{b:?}");
    }
}

#[tokio::test]
async fn a_sealed_provider_token_moves_from_session_to_code_to_refresh_token_once() {
    for s in
        stores("a_sealed_provider_token_moves_from_session_to_code_to_refresh_token_once").await
    {
        let b = s.backend();
        let u = s.add_user(&user("fay")).await.unwrap();
        let t = crate::now();
        s.add_sign_in("sh", &u.id, "csrf", (t, t + 600), Some("sealed-1"))
            .await
            .unwrap();
        s.add_sign_in("plain", &u.id, "csrf", (t, t + 600), None)
            .await
            .unwrap();
        let si = s.sign_in("sh", t).await.unwrap().unwrap();
        assert_eq!(si.provider_token.as_deref(), Some("sealed-1"), "{b:?}");
        let none = s.sign_in("plain", t).await.unwrap().unwrap();
        assert_eq!(none.provider_token, None, "{b:?}");
        // Twenty authorizations at once: exactly one takes it; then the session says so.
        let got = futures::future::join_all(
            (0..20).map(|_| s.take_sign_in_provider_token("sh", "sealed-1")),
        )
        .await;
        assert_eq!(
            got.into_iter().filter(|r| matches!(r, Ok(true))).count(),
            1,
            "{b:?}"
        );
        let si = s.sign_in("sh", t).await.unwrap().unwrap();
        assert_eq!(si.provider_token.as_deref(), Some(""), "{b:?}: taken");
        assert!(!s.take_sign_in_provider_token("plain", "").await.unwrap());

        let g = crate::Grant {
            id: crate::new_id(),
            user_id: u.id.clone(),
            client_id: "c".into(),
            resource: "r".into(),
            scope: "mcp".into(),
            created_at: t,
            revoked_at: None,
        };
        s.add_grant(&g).await.unwrap();
        let code = crate::Code {
            redirect_uri: "http://127.0.0.1/cb".into(),
            challenge: "ch".into(),
            provider_token: Some("sealed-2".into()),
        };
        s.add_code("ch1", &g.id, &code, t + 60).await.unwrap();
        match s.take_code("ch1", t).await.unwrap() {
            crate::Redeemed::First(c, _) => assert_eq!(c, code, "{b:?}"),
            other => panic!("{b:?}: {other:?}"),
        }
        // Spent: the code no longer keeps it.
        let kept: Option<String> =
            sqlx::query_scalar("SELECT provider_token FROM oauth_codes WHERE hash = 'ch1'")
                .fetch_one(&s.pool)
                .await
                .unwrap();
        assert_eq!(kept, None, "{b:?}");

        s.add_refresh_token("rh1", &g.id, t + 60, Some("sealed-3"))
            .await
            .unwrap();
        s.add_refresh_token("rh2", &g.id, t + 60, None)
            .await
            .unwrap();
        assert_eq!(
            s.take_refresh_token("rh1", t).await.unwrap(),
            crate::Redeemed::First(Some("sealed-3".into()), g.clone()),
            "{b:?}"
        );
        assert_eq!(
            s.take_refresh_token("rh2", t).await.unwrap(),
            crate::Redeemed::First(None, g.clone()),
            "{b:?}"
        );
        let kept: Option<String> = sqlx::query_scalar(
            "SELECT provider_token FROM oauth_refresh_tokens WHERE hash = 'rh1'",
        )
        .fetch_one(&s.pool)
        .await
        .unwrap();
        assert_eq!(kept, None, "{b:?}");
        assert_eq!(
            s.take_refresh_token("rh1", t).await.unwrap(),
            crate::Redeemed::Again(g.id.clone()),
            "{b:?}"
        );
    }
}

#[tokio::test]
async fn tool_definitions_are_held_once_and_one_approval_supersedes_the_last() {
    use crate::{ToolReview, ToolStatus};
    for s in stores("tool_definitions_are_held_once_and_one_approval_supersedes_the_last").await {
        let b = s.backend();
        let held = |tool: &str, fp: &str| ToolReview {
            server: "main".into(),
            connector: "fa".into(),
            tool: tool.into(),
            fingerprint: fp.into(),
            status: ToolStatus::Pending,
            definition: format!("{{\"name\":\"{tool}\"}}"),
            flags: vec!["zero-width characters in description".into(), "x".into()],
            first_seen: 100,
            decided_at: None,
            decided_by: None,
        };
        assert!(s.hold_tool(&held("echo", "f1")).await.unwrap(), "{b:?}");
        assert!(
            !s.hold_tool(&held("echo", "f1")).await.unwrap(),
            "{b:?}: a second gateway holding the same definition adds nothing"
        );
        assert!(s.hold_tool(&held("add", "a1")).await.unwrap());
        let c0 = s.tool_review_changes().await.unwrap();
        s.approve_tool(&held("echo", "f1"), "alice", 200)
            .await
            .unwrap();
        assert_eq!(
            s.approved_tools().await.unwrap(),
            [("main".into(), "fa".into(), "echo".into(), "f1".into())],
            "{b:?}"
        );
        // The upstream changes echo: the new definition is held; approving it supersedes f1.
        s.hold_tool(&held("echo", "f2")).await.unwrap();
        s.approve_tool(&held("echo", "f2"), "alice", 300)
            .await
            .unwrap();
        s.reject_tool(&held("add", "a1"), "bob", 301).await.unwrap();
        assert_eq!(s.tool_review_changes().await.unwrap(), c0 + 3, "{b:?}");
        let all = s.tool_reviews(Some("main")).await.unwrap();
        let status: Vec<(&str, &str, ToolStatus)> = all
            .iter()
            .map(|r| (r.tool.as_str(), r.fingerprint.as_str(), r.status))
            .collect();
        assert_eq!(
            status,
            [
                ("add", "a1", ToolStatus::Rejected),
                ("echo", "f1", ToolStatus::Superseded),
                ("echo", "f2", ToolStatus::Approved),
            ],
            "{b:?}"
        );
        assert_eq!(all[0].decided_by.as_deref(), Some("bob"));
        assert_eq!(all[0].flags, ["zero-width characters in description", "x"]);
        assert!(s.tool_reviews(Some("other")).await.unwrap().is_empty());
        assert_eq!(s.tool_reviews(None).await.unwrap().len(), 3);
        match s.approve_tool(&held("echo", "nope"), "alice", 400).await {
            Err(StoreError::NotFound(m)) => assert!(m.contains("nope"), "{m}"),
            other => panic!("{b:?}: {other:?}"),
        }
        assert_eq!(
            s.tool_review_changes().await.unwrap(),
            c0 + 3,
            "{b:?}: a failed decision moves nothing"
        );
    }
}
