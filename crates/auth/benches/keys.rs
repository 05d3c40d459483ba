//! What checking a caller costs per request: an API key and an access token through
//! `StoreAuth` over SQLite (the embedded default) and, when reachable, PostgreSQL — the first
//! time each is seen (a full check: ES256 signature, store read) and again (remembered); and an
//! ES256 access token verified by the key ring alone. Prints µs per check (wall and CPU of
//! this process).
//!
//!     cargo bench -p manifold-auth

use std::time::Instant;

use manifold_auth::{StoreAuth, new_key};
use manifold_server::Authenticate;
use manifold_store::{Location, NewApiKey, NewUser, Store};

const N: u32 = 20_000;
/// Credentials seen once each, for the first-sight rows.
const FRESH: usize = 2_000;

fn cpu_micros() -> f64 {
    let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
        .expect("getrusage");
    let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 * 1e6 + tv.tv_usec() as f64;
    t(u.user_time()) + t(u.system_time())
}

async fn measure(what: &str, store: Store) {
    let user = store
        .add_user(&NewUser {
            name: "bench",
            email: None,
            password_hash: None,
            roles: &[],
            groups: &[],
        })
        .await
        .expect("user");
    let mut keys = Vec::new();
    for _ in 0..=FRESH {
        let (key, hash) = new_key();
        store
            .add_api_key(&NewApiKey {
                user_id: &user.id,
                name: "bench",
                hash: &hash,
                servers: &["main".to_owned()],
                expires_at: None,
            })
            .await
            .expect("key");
        keys.push(key);
    }
    let key = keys.pop().expect("a key");
    // An access token of the authorization server for the same user.
    let settings = manifold_config::Config::parse(
        "[auth]\nissuer = \"https://gw.example\"\n",
        std::path::Path::new("bench.toml"),
        &|_: &str| None,
    )
    .expect("config")
    .auth;
    let oauth = manifold_auth::AuthServer::start(
        store.clone(),
        &settings,
        "127.0.0.1:1".parse().expect("address"),
    )
    .await
    .expect("authorization server");
    let now = manifold_store::now();
    let grant = manifold_store::Grant {
        id: manifold_store::new_id(),
        user_id: user.id.clone(),
        client_id: "bench".into(),
        resource: oauth.resource("main"),
        scope: manifold_auth::SCOPE.into(),
        created_at: now,
        revoked_at: None,
    };
    store.add_grant(&grant).await.expect("grant");
    let bearer = |token: &str| {
        http::Request::builder()
            .uri("/mcp/main")
            .header("authorization", format!("Bearer {token}"))
            .body(())
            .expect("request")
            .into_parts()
            .0
    };
    let token = oauth.access_token(&grant, now).expect("token");
    let with_token = bearer(&token);
    let fresh_tokens: Vec<_> = (0..FRESH)
        .map(|_| bearer(&oauth.access_token(&grant, now).expect("token")))
        .collect();
    let fresh_keys: Vec<_> = keys.iter().map(|k| bearer(k)).collect();
    let auth = StoreAuth::with_oauth(store, oauth);
    let (parts, ()) = http::Request::builder()
        .uri("/mcp/main")
        .header("authorization", format!("Bearer {key}"))
        .body(())
        .expect("request")
        .into_parts();
    let anonymous = http::Request::builder()
        .uri("/mcp/main")
        .body(())
        .expect("request")
        .into_parts()
        .0;
    for (label, fresh) in [
        ("API key, first sight (key read)", &fresh_keys),
        (
            "access token, first sight (ES256 + grant and user read)",
            &fresh_tokens,
        ),
    ] {
        let (wall, cpu) = (Instant::now(), cpu_micros());
        for p in fresh {
            auth.authenticate(p).await.expect("authenticated");
        }
        println!(
            "| {what} | {label} | {:.1} | {:.1} |",
            wall.elapsed().as_secs_f64() * 1e6 / fresh.len() as f64,
            (cpu_micros() - cpu) / fresh.len() as f64
        );
    }
    for _ in 0..1000 {
        auth.authenticate(&parts).await.expect("warm-up");
        auth.authenticate(&with_token).await.expect("warm-up");
    }
    for (label, p) in [
        ("API key, remembered", &parts),
        ("access token, remembered", &with_token),
        ("no token (sign-in optional)", &anonymous),
    ] {
        let (wall, cpu) = (Instant::now(), cpu_micros());
        for _ in 0..N {
            auth.authenticate(p).await.expect("authenticated");
        }
        println!(
            "| {what} | {label} | {:.1} | {:.1} |",
            wall.elapsed().as_secs_f64() * 1e6 / f64::from(N),
            (cpu_micros() - cpu) / f64::from(N)
        );
    }
}

fn tokens() {
    let ring = manifold_auth::KeyRing::new(vec![manifold_auth::SigningKey::generate().unwrap()], 0)
        .unwrap();
    let now = manifold_store::now();
    let claims = manifold_auth::AccessClaims {
        iss: "https://gw.example".into(),
        sub: "alice".into(),
        aud: "https://gw.example/mcp/main".into(),
        exp: now + 300,
        iat: now,
        jti: "j".into(),
        client_id: "c".into(),
        scope: String::new(),
        sid: String::new(),
    };
    let token = ring.issue(&claims).unwrap();
    let (wall, cpu) = (Instant::now(), cpu_micros());
    for _ in 0..N {
        ring.verify(&token, &claims.iss, &claims.aud, now)
            .expect("valid");
    }
    println!(
        "| none (signature) | access token, ES256 | {:.1} | {:.1} |",
        wall.elapsed().as_secs_f64() * 1e6 / f64::from(N),
        (cpu_micros() - cpu) / f64::from(N)
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        println!("| store | request | wall µs per check | CPU µs per check |");
        println!("|---|---|---:|---:|");
        let dir = std::env::temp_dir().join(format!("manifold-bench-{}", manifold_store::new_id()));
        let sqlite = Store::open(&Location::Sqlite(dir.clone()))
            .await
            .expect("sqlite");
        measure("SQLite", sqlite).await;
        let _ = std::fs::remove_dir_all(dir);
        tokens();
        match manifold_store::testing::fresh_postgres().await {
            Ok(url) => {
                let pg = Store::open(&Location::Postgres(url))
                    .await
                    .expect("postgres");
                measure("PostgreSQL (loopback)", pg).await;
            }
            Err(why) => println!("PostgreSQL skipped: {why}"),
        }
    });
}
