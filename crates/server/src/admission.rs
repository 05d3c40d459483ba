//! Who may open a session: a cap on live sessions in total and per client, and a rate limit on
//! `initialize` per client. A client is its principal once callers authenticate; an anonymous
//! caller is its source address.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use manifold_policy::{Principal, PrincipalId};

/// Whose sessions count together.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Owner {
    Principal(PrincipalId),
    Address(IpAddr),
    /// An anonymous caller whose address is unknown (not over TCP).
    Unknown,
}

impl Owner {
    pub fn of(principal: &Principal, peer: Option<IpAddr>) -> Self {
        if !principal.is_anonymous() {
            return Owner::Principal(principal.id().clone());
        }
        match peer {
            Some(ip) => Owner::Address(canonical(ip)),
            None => Owner::Unknown,
        }
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Owner::Principal(p) => write!(f, "{p}"),
            Owner::Address(ip) => write!(f, "address {ip}"),
            Owner::Unknown => f.write_str("an unknown address"),
        }
    }
}

/// An IPv4 address seen as `::ffff:a.b.c.d` is the same client as `a.b.c.d`.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Why an `initialize` was turned away.
#[derive(Debug, PartialEq)]
pub(crate) enum Refusal {
    /// `gateway.max_sessions` live sessions.
    Full(usize),
    /// This client has `gateway.max_sessions_per_client` live sessions.
    OwnerFull(usize),
    /// This client exceeded `gateway.initialize_per_minute`; retry after this long.
    TooFast(Duration),
}

impl Refusal {
    pub fn message(&self, owner: &Owner) -> String {
        match self {
            Refusal::Full(n) => format!(
                "the gateway has {n} live sessions, its limit (gateway.max_sessions): end unused sessions (DELETE) or retry later"
            ),
            Refusal::OwnerFull(n) => format!(
                "{owner} has {n} live sessions, the limit per client (gateway.max_sessions_per_client): end unused sessions (DELETE) before opening more"
            ),
            Refusal::TooFast(after) => format!(
                "too many initialize requests from {owner} (gateway.initialize_per_minute): retry in {}s",
                after.as_secs().max(1)
            ),
        }
    }
}

/// `initialize` requests per client per minute, as a token bucket: a burst of `per_minute`,
/// then one every `60 s / per_minute`.
pub(crate) struct RateLimit {
    buckets: Mutex<HashMap<Owner, Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Buckets kept before full ones (clients idle for a minute) are forgotten.
const KEPT_BUCKETS: usize = 4096;

impl RateLimit {
    pub fn new() -> Self {
        Self {
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Take one `initialize` for `owner`, or say how long until one is allowed.
    pub fn take(&self, owner: &Owner, per_minute: u32, now: Instant) -> Result<(), Duration> {
        let cap = f64::from(per_minute);
        let per_sec = cap / 60.0;
        let mut buckets = self.buckets.lock().expect("rate lock");
        if buckets.len() >= KEPT_BUCKETS {
            buckets.retain(|_, b| b.refilled(now, cap, per_sec) < cap);
        }
        let b = buckets.entry(owner.clone()).or_insert(Bucket {
            tokens: cap,
            at: now,
        });
        b.tokens = b.refilled(now, cap, per_sec);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / per_sec))
        }
    }
}

impl Bucket {
    fn refilled(&self, now: Instant, cap: f64, per_sec: f64) -> f64 {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        (self.tokens + dt * per_sec).min(cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Owner {
        Owner::of(&Principal::anonymous(), Some(s.parse().unwrap()))
    }

    #[test]
    fn owners_are_principals_once_authenticated_else_addresses() {
        assert_eq!(addr("::ffff:10.0.0.1"), addr("10.0.0.1"));
        assert_ne!(addr("10.0.0.1"), addr("10.0.0.2"));
        let alice = Principal::user("https://idp", "alice", vec![], vec![]);
        assert_eq!(
            Owner::of(&alice, Some("10.0.0.1".parse().unwrap())),
            Owner::of(&alice, Some("10.0.0.2".parse().unwrap()))
        );
        assert_eq!(Owner::of(&Principal::anonymous(), None), Owner::Unknown);
    }

    #[test]
    fn the_rate_limit_allows_a_burst_then_refills_evenly() {
        let r = RateLimit::new();
        let (a, b) = (addr("10.0.0.1"), addr("10.0.0.2"));
        let t0 = Instant::now();
        for _ in 0..60 {
            assert!(r.take(&a, 60, t0).is_ok());
        }
        let wait = r.take(&a, 60, t0).expect_err("the burst is spent");
        assert!(
            wait <= Duration::from_secs(1) && wait > Duration::ZERO,
            "{wait:?}"
        );
        // Another client is not affected.
        assert!(r.take(&b, 60, t0).is_ok());
        // One per second comes back.
        assert!(r.take(&a, 60, t0 + Duration::from_millis(1001)).is_ok());
        assert!(r.take(&a, 60, t0 + Duration::from_millis(1002)).is_err());
    }
}
