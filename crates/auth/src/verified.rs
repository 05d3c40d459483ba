//! Credentials verified recently, so that a request with a token seen before costs one SHA-256
//! and one map lookup instead of a signature check and a store read.
//!
//! An entry is the principal a (virtual server, bearer token) pair was found to be, kept until
//! the credential expires (at most [`LONGEST`]) and only while nothing was withdrawn since it
//! was checked: every entry carries the two change counters it was checked under, and is
//! ignored once either moves —
//! - this process's own withdrawals (`Store::withdrawals_here`), which move the moment a
//!   revocation or a disabled user is committed here, so they apply at the next request;
//! - the store's shared counter (`Store::credential_changes`), read every [`POLL`] by a task,
//!   which moves when another process (the `manifold` CLI, another gateway on the same
//!   PostgreSQL) withdraws something: that applies within one poll (and the CLI waits for it,
//!   below). A failed read counts as a
//!   change, so an unreachable store never leaves stale entries in use. Having acted on a
//!   value, the task records it in the store (`Store::record_check`, and every [`HEARTBEAT`]
//!   that it is still running), so the CLI can wait until every running gateway has noticed
//!   its change before it says the change is made.
//!
//! Only successes are kept; a refused token is checked in full every time. Tokens themselves
//! are not kept, only their SHA-256 (with the server's name).

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use manifold_policy::Principal;
use manifold_store::Store;
use sha2::Digest;

/// How often the store's change counter is read: the bound on how long a credential withdrawn
/// by another process stays usable here.
pub const POLL: Duration = Duration::from_secs(1);

/// How often a gateway records that it is running (and what it has seen) when nothing changes.
pub const HEARTBEAT: Duration = Duration::from_secs(5);

/// The longest an entry is trusted without a full check, whatever its expiry.
pub const LONGEST: i64 = 600;

/// The most entries kept (about 200 bytes each); when full, expired and stale ones go, and if
/// that frees nothing, all of them.
const MOST: usize = 20_000;

pub(crate) struct Verified {
    store: Store,
    /// How this gateway is named in the store's record of checks: host, process, and a random
    /// part (one process may hold several).
    name: String,
    entries: Mutex<HashMap<[u8; 32], Entry>>,
    /// Moves whenever the poller sees the shared counter move (or fail to be read).
    shared: AtomicU64,
}

struct Entry {
    principal: Principal,
    /// The API key's id, for recording its use.
    key_id: Option<String>,
    /// Unix seconds after which the entry is not used.
    until: i64,
    checked_under: Stamp,
}

/// The two counters an entry was checked under.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Stamp {
    here: u64,
    shared: u64,
}

/// A cache key: which virtual server, and the token.
pub(crate) type Key = [u8; 32];

impl Verified {
    /// A cache over `store`, and its poller (which stops when the cache is dropped). Needs a
    /// tokio runtime.
    pub(crate) fn start(store: Store) -> Arc<Self> {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "a host".into());
        let me = Arc::new(Self {
            store,
            name: format!(
                "{host} pid {} ({})",
                std::process::id(),
                &manifold_store::new_id()[..6]
            ),
            entries: Mutex::new(HashMap::new()),
            shared: AtomicU64::new(0),
        });
        tokio::spawn(poll(Arc::downgrade(&me)));
        me
    }

    pub(crate) fn key(server: &str, token: &str) -> Key {
        let mut h = sha2::Sha256::new();
        h.update(server.as_bytes());
        h.update([0]);
        h.update(token.as_bytes());
        h.finalize().into()
    }

    /// Take this before reading a credential from the store; an entry inserted under it is
    /// void if anything was withdrawn meanwhile.
    pub(crate) fn stamp(&self) -> Stamp {
        Stamp {
            shared: self.shared.load(Ordering::Acquire),
            here: self.store.withdrawals_here(),
        }
    }

    /// The principal (and API key id) of a pair checked before, if that still stands.
    pub(crate) fn get(&self, key: &Key, now: i64) -> Option<(Principal, Option<String>)> {
        let stamp = self.stamp();
        let entries = self.entries.lock().expect("verified lock");
        let e = entries.get(key)?;
        (e.until > now && e.checked_under == stamp).then(|| (e.principal.clone(), e.key_id.clone()))
    }

    /// Remember a successful check made under `stamp`, valid until `expires` (Unix seconds).
    pub(crate) fn put(
        &self,
        key: Key,
        principal: &Principal,
        key_id: Option<&str>,
        expires: Option<i64>,
        stamp: Stamp,
        now: i64,
    ) {
        let until = expires.map_or(now + LONGEST, |t| t.min(now + LONGEST));
        let mut entries = self.entries.lock().expect("verified lock");
        if entries.len() >= MOST && !entries.contains_key(&key) {
            let current = self.stamp();
            entries.retain(|_, e| e.until > now && e.checked_under == current);
            if entries.len() >= MOST {
                entries.clear();
            }
        }
        entries.insert(
            key,
            Entry {
                principal: principal.clone(),
                key_id: key_id.map(str::to_owned),
                until,
                checked_under: stamp,
            },
        );
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().expect("verified lock").len()
    }
}

/// After a withdrawal: wait (a few polls at most) until every running gateway on `store` has
/// acted on it, i.e. refuses the withdrawn credential at its next request. The gateways that
/// had not by then (empty when all had); a gateway counts as running if it checked within
/// three heartbeats.
pub async fn until_gateways_notice(
    store: &Store,
) -> Result<Vec<String>, manifold_store::StoreError> {
    let serial = store.credential_changes().await?;
    let deadline = tokio::time::Instant::now() + POLL * 5;
    loop {
        let since = manifold_store::now() - 3 * HEARTBEAT.as_secs() as i64;
        let behind = store.gateways_behind(serial, since).await?;
        if behind.is_empty() || tokio::time::Instant::now() >= deadline {
            return Ok(behind);
        }
        tokio::time::sleep(POLL / 10).await;
    }
}

/// Read the store's change counter every `POLL`; move `shared` when it moved or could not be
/// read, and then record what was acted on. Ends when the cache is gone.
async fn poll(cache: Weak<Verified>) {
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<i64> = None;
    let mut recorded: Option<(i64, tokio::time::Instant)> = None;
    loop {
        tick.tick().await;
        let Some(cache) = cache.upgrade() else { return };
        let n = match cache.store.credential_changes().await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the store's credential change counter: verified credentials are checked again");
                cache.shared.fetch_add(1, Ordering::Release);
                continue;
            }
        };
        // The first read voids what was remembered before it too: a withdrawal may have
        // come between a check made at start and this read.
        if last.is_none_or(|l| l != n) {
            cache.shared.fetch_add(1, Ordering::Release);
        }
        last = Some(n);
        // Only after acting on it: the CLI takes this as "refused here from now on".
        if recorded.is_none_or(|(r, at)| r != n || at.elapsed() >= HEARTBEAT) {
            match cache
                .store
                .record_check(&cache.name, n, manifold_store::now())
                .await
            {
                Ok(()) => recorded = Some((n, tokio::time::Instant::now())),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot record this gateway's check of the credential change counter")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache whose task has read the store's counter once (that first read voids what came
    /// before it).
    async fn started(store: Store) -> Arc<Verified> {
        let v = Verified::start(store);
        for _ in 0..500 {
            if v.shared.load(Ordering::Acquire) > 0 {
                return v;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the cache never read the store's counter");
    }
    use manifold_store::{Location, NewUser};

    async fn store() -> (Store, std::path::PathBuf) {
        let dir =
            std::env::temp_dir().join(format!("manifold-verified-{}", manifold_store::new_id()));
        (
            Store::open(&Location::Sqlite(dir.clone())).await.unwrap(),
            dir,
        )
    }

    /// A user in the store; its id.
    async fn add_alice(store: &Store) -> String {
        let user = NewUser {
            name: "alice",
            email: None,
            password_hash: None,
            roles: &[],
            groups: &[],
        };
        store.add_user(&user).await.unwrap().id
    }

    /// Wait (a few polls at most) for the entry at `k` to stop being used.
    async fn voided_soon(v: &Verified, k: &Key, now: i64, after: &str) {
        let deadline = tokio::time::Instant::now() + POLL * 5;
        while v.get(k, now).is_some() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "still trusted {:?} after {after}",
                POLL * 5
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn alice() -> Principal {
        Principal::user("local", "alice", vec!["dev".into()], vec![])
    }

    #[tokio::test]
    async fn an_entry_is_kept_per_server_and_token_until_it_expires() {
        let (store, dir) = store().await;
        let v = started(store).await;
        let now = 1_000_000;
        let k = Verified::key("main", "tok");
        assert_ne!(
            k,
            Verified::key("other", "tok"),
            "the server is part of the key"
        );
        assert_ne!(
            Verified::key("a", "bc"),
            Verified::key("ab", "c"),
            "and is delimited"
        );
        assert!(v.get(&k, now).is_none());
        v.put(k, &alice(), Some("key1"), Some(now + 30), v.stamp(), now);
        let (p, id) = v.get(&k, now).expect("kept");
        assert_eq!((p, id.as_deref()), (alice(), Some("key1")));
        assert!(v.get(&Verified::key("other", "tok"), now).is_none());
        assert!(v.get(&k, now + 30).is_none(), "expired");
        // Without an expiry, or with a distant one, at most LONGEST.
        v.put(k, &alice(), None, None, v.stamp(), now);
        assert!(v.get(&k, now + LONGEST - 1).is_some());
        assert!(v.get(&k, now + LONGEST).is_none());
        v.put(k, &alice(), None, Some(now + 10 * LONGEST), v.stamp(), now);
        assert!(v.get(&k, now + LONGEST).is_none());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_withdrawal_here_voids_every_entry_at_once_even_one_checked_before_it() {
        let (store, dir) = store().await;
        let v = started(store.clone()).await;
        let now = manifold_store::now();
        let user = add_alice(&store).await;
        let k = Verified::key("main", "tok");
        let before = v.stamp();
        v.put(k, &alice(), None, None, before, now);
        assert!(v.get(&k, now).is_some());
        // A check that read the store before the withdrawal but is remembered after it.
        store.set_disabled(&user, true).await.unwrap();
        assert!(v.get(&k, now).is_none(), "void at the next request");
        v.put(k, &alice(), None, None, before, now);
        assert!(v.get(&k, now).is_none(), "a check from before stays void");
        v.put(k, &alice(), None, None, v.stamp(), now);
        assert!(v.get(&k, now).is_some(), "a check after it counts");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_withdrawal_by_another_process_voids_entries_within_a_poll() {
        let (store, dir) = store().await;
        let v = started(store.clone()).await;
        // Another process: its own pool and its own count of withdrawals.
        let other = Store::open(&Location::Sqlite(dir.clone())).await.unwrap();
        let user = add_alice(&other).await;
        // Let the poller read the counter once.
        tokio::time::sleep(POLL * 2).await;
        let now = manifold_store::now();
        let k = Verified::key("main", "tok");
        v.put(k, &alice(), None, None, v.stamp(), now);
        assert!(v.get(&k, now).is_some());
        other.set_disabled(&user, true).await.unwrap();
        assert_eq!(store.withdrawals_here(), 0, "not this process's");
        voided_soon(&v, &k, now, "another process withdrew").await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn what_was_remembered_before_the_first_read_of_the_counter_is_checked_again() {
        let (store, dir) = store().await;
        let now = manifold_store::now();
        let k = Verified::key("main", "tok");
        // The test's runtime has one thread: the polling task has not run before the await.
        let v = Verified::start(store.clone());
        v.put(k, &alice(), None, None, v.stamp(), now);
        assert!(v.get(&k, now).is_some());
        for _ in 0..500 {
            if v.shared.load(Ordering::Acquire) > 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(
            v.get(&k, now).is_none(),
            "a withdrawal may have come between that check and the first read"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn once_a_gateway_says_it_noticed_a_withdrawal_its_entries_are_void() {
        let (store, dir) = store().await;
        let v = started(store.clone()).await;
        let other = Store::open(&Location::Sqlite(dir.clone())).await.unwrap();
        let user = add_alice(&other).await;
        let now = manifold_store::now();
        let k = Verified::key("main", "tok");
        // Nothing withdrawn: every running gateway (this one) is up to date at once.
        assert!(until_gateways_notice(&other).await.unwrap().is_empty());
        v.put(k, &alice(), None, None, v.stamp(), now);
        other.set_disabled(&user, true).await.unwrap();
        assert!(until_gateways_notice(&other).await.unwrap().is_empty());
        assert!(v.get(&k, now).is_none(), "noticed means void");
        // A gateway that stopped a moment ago still counts as running (for three heartbeats):
        // it is waited for, up to the bound, and named.
        let name = v.name.clone();
        drop(v);
        tokio::time::sleep(POLL * 2).await;
        other.set_disabled(&user, false).await.unwrap();
        let started = tokio::time::Instant::now();
        let behind = until_gateways_notice(&other).await.unwrap();
        assert_eq!(behind, [name], "the stopped one has checked recently");
        assert!(
            started.elapsed() >= POLL * 5,
            "it was waited for, up to the bound"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_store_that_cannot_be_read_voids_entries() {
        let (store, dir) = store().await;
        let v = started(store.clone()).await;
        tokio::time::sleep(POLL * 2).await;
        let now = manifold_store::now();
        let k = Verified::key("main", "tok");
        v.put(k, &alice(), None, None, v.stamp(), now);
        store.close().await;
        voided_soon(&v, &k, now, "the store was closed").await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn it_is_bounded_and_goes_with_its_owner() {
        let (store, dir) = store().await;
        let v = started(store).await;
        let now = 1_000_000;
        for i in 0..MOST {
            v.put(
                Verified::key("s", &i.to_string()),
                &alice(),
                None,
                Some(now + 1 + (i % 2) as i64),
                v.stamp(),
                now,
            );
        }
        assert_eq!(v.len(), MOST);
        // Full: the expired half goes to make room.
        v.put(
            Verified::key("s", "new"),
            &alice(),
            None,
            None,
            v.stamp(),
            now + 1,
        );
        assert_eq!(v.len(), MOST / 2 + 1);
        let weak = Arc::downgrade(&v);
        drop(v);
        tokio::time::sleep(POLL * 2).await;
        assert!(
            weak.upgrade().is_none(),
            "the poller holds no strong reference"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
