//! `LoginLimits`: how often a client may try to log in or create accounts, checked before any
//! password hashing — login attempts per client address and per username, account creations
//! per client address — as `governor` keyed GCRA limiters whose key maps are swept so memory
//! stays bounded; and `client_key`, the address a client is counted under.

use crate::config::SecurityConfig;
use crate::error::{Error, Result};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Checks between two sweeps of the key maps (dropping keys whose bucket is full again).
const SWEEP_EVERY: u64 = 1024;
/// Most keys one limiter keeps (about 100 bytes each). A sweep that leaves more starts that
/// limiter afresh: under a flood from more distinct addresses than this, memory stays bounded
/// at the price of forgetting counts (the hash queue still bounds the CPU spent).
const MAX_KEYS: usize = 100_000;

/// The key a client address is counted under: IPv4 addresses as they are (IPv4-mapped IPv6
/// too), IPv6 addresses by their /64 network, which one subscriber usually holds whole.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// A governor limiter with one GCRA bucket per key, kept in a concurrent map.
type KeyedLimiter<K, C> = RateLimiter<K, DashMapStateStore<K>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// One keyed limiter, replaceable as a whole when its map outgrows `max_keys`.
struct Keyed<K: Hash + Eq + Clone, C: Clock + Clone> {
    quota: Quota,
    clock: C,
    limiter: RwLock<KeyedLimiter<K, C>>,
}

impl<K: Hash + Eq + Clone, C: Clock + Clone> Keyed<K, C> {
    fn new(quota: Quota, clock: C) -> Self {
        let limiter = RwLock::new(RateLimiter::dashmap_with_clock(quota, clock.clone()));
        Keyed { quota, clock, limiter }
    }

    /// Takes one cell for `key`, or says how long until one is free.
    fn check(&self, key: &K) -> Result<(), Duration> {
        let limiter = self.limiter.read().unwrap_or_else(|p| p.into_inner());
        limiter.check_key(key).map(|_| ()).map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Drops the keys whose bucket is full again; starts afresh if more than `max_keys` stay.
    fn sweep(&self, max_keys: usize) {
        let mut limiter = self.limiter.write().unwrap_or_else(|p| p.into_inner());
        limiter.retain_recent();
        if limiter.len() > max_keys {
            tracing::warn!(keys = limiter.len(), "login limiter over its key bound; starting it afresh");
            *limiter = RateLimiter::dashmap_with_clock(self.quota, self.clock.clone());
        } else {
            limiter.shrink_to_fit();
        }
    }

    fn len(&self) -> usize {
        self.limiter.read().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// The login and registration limits of one node.
pub struct LoginLimits<C: Clock + Clone = DefaultClock> {
    login_ip: Keyed<IpAddr, C>,
    login_user: Keyed<String, C>,
    register_ip: Keyed<IpAddr, C>,
    checks: AtomicU64,
    sweep_every: u64,
    max_keys: usize,
}

fn nonzero(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

impl LoginLimits {
    /// `login_ip_per_min`, `login_user_per_min` and `register_ip_per_hour` from config: each a
    /// bucket of that many attempts that refills evenly over the minute (hour).
    pub fn new(security: &SecurityConfig) -> LoginLimits {
        LoginLimits::with_clock(security, DefaultClock::default())
    }
}

impl<C: Clock + Clone> LoginLimits<C> {
    pub fn with_clock(security: &SecurityConfig, clock: C) -> LoginLimits<C> {
        LoginLimits {
            login_ip: Keyed::new(Quota::per_minute(nonzero(security.login_ip_per_min)), clock.clone()),
            login_user: Keyed::new(Quota::per_minute(nonzero(security.login_user_per_min)), clock.clone()),
            register_ip: Keyed::new(Quota::per_hour(nonzero(security.register_ip_per_hour)), clock),
            checks: AtomicU64::new(0),
            sweep_every: SWEEP_EVERY,
            max_keys: MAX_KEYS,
        }
    }

    /// Counts a login attempt from `client` (and for `username`, when it is a valid one: an
    /// invalid name cannot log in and is not worth a key). `rate_limited` with the wait when
    /// either bucket is empty; the address is checked first, so one noisy address cannot
    /// drain a user's bucket faster than its own limit. Every attempt counts, good or bad.
    pub fn check_login(&self, client: IpAddr, username: Option<&str>) -> Result<()> {
        self.counted();
        self.login_ip.check(&client_key(client)).map_err(|wait| {
            Error::rate_limited("too many login attempts from this address; retry later", wait)
        })?;
        if let Some(name) = username {
            self.login_user.check(&name.to_ascii_lowercase()).map_err(|wait| {
                Error::rate_limited("too many login attempts for this username; retry later", wait)
            })?;
        }
        Ok(())
    }

    /// Counts an account creation attempt from `client`; `rate_limited` when its bucket is
    /// empty.
    pub fn check_register(&self, client: IpAddr) -> Result<()> {
        self.counted();
        self.register_ip.check(&client_key(client)).map_err(|wait| {
            Error::rate_limited("too many accounts created from this address; retry later", wait)
        })
    }

    /// Keys held, all limiters together.
    pub fn keys(&self) -> usize {
        self.login_ip.len() + self.login_user.len() + self.register_ip.len()
    }

    fn counted(&self) {
        let n = self.checks.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_multiple_of(self.sweep_every) {
            self.login_ip.sweep(self.max_keys);
            self.login_user.sweep(self.max_keys);
            self.register_ip.sweep(self.max_keys);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use governor::clock::FakeRelativeClock;

    fn limits(
        ip_per_min: u32,
        user_per_min: u32,
        register_per_hour: u32,
    ) -> (LoginLimits<FakeRelativeClock>, FakeRelativeClock) {
        let security = SecurityConfig {
            login_ip_per_min: ip_per_min,
            login_user_per_min: user_per_min,
            register_ip_per_hour: register_per_hour,
            ..SecurityConfig::default()
        };
        let clock = FakeRelativeClock::default();
        (LoginLimits::with_clock(&security, clock.clone()), clock)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn login_per_address_allows_the_burst_then_refills_evenly() {
        let (l, clock) = limits(3, 100, 100);
        for name in ["a1x", "a2x", "a3x"] {
            l.check_login(ip("10.0.0.1"), Some(name)).unwrap();
        }
        let e = l.check_login(ip("10.0.0.1"), Some("a4x")).unwrap_err();
        assert_eq!(e.code, ErrorCode::RateLimited);
        // One attempt per 20 s comes back.
        assert_eq!(e.retry_after_secs, Some(20));
        l.check_login(ip("10.0.0.2"), Some("a5x")).unwrap();
        clock.advance(Duration::from_secs(20));
        l.check_login(ip("10.0.0.1"), Some("a6x")).unwrap();
        assert!(l.check_login(ip("10.0.0.1"), Some("a7x")).is_err());
    }

    #[test]
    fn login_per_username_is_case_insensitive_and_across_addresses() {
        let (l, clock) = limits(100, 2, 100);
        l.check_login(ip("10.0.0.1"), Some("alice")).unwrap();
        l.check_login(ip("10.0.0.2"), Some("ALICE")).unwrap();
        let e = l.check_login(ip("10.0.0.3"), Some("Alice")).unwrap_err();
        assert_eq!((e.code, e.retry_after_secs), (ErrorCode::RateLimited, Some(30)));
        l.check_login(ip("10.0.0.3"), Some("bob")).unwrap();
        // An invalid name is counted for the address only.
        l.check_login(ip("10.0.0.3"), None).unwrap();
        clock.advance(Duration::from_secs(30));
        l.check_login(ip("10.0.0.3"), Some("alice")).unwrap();
    }

    #[test]
    fn registration_per_address_per_hour() {
        let (l, clock) = limits(100, 100, 2);
        l.check_register(ip("10.0.0.1")).unwrap();
        l.check_register(ip("10.0.0.1")).unwrap();
        let e = l.check_register(ip("10.0.0.1")).unwrap_err();
        assert_eq!((e.code, e.retry_after_secs), (ErrorCode::RateLimited, Some(1800)));
        // Login attempts are counted apart.
        l.check_login(ip("10.0.0.1"), Some("alice")).unwrap();
        clock.advance(Duration::from_secs(1800));
        l.check_register(ip("10.0.0.1")).unwrap();
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        let (l, _) = limits(1, 100, 100);
        l.check_login(ip("2001:db8:1:2::1"), None).unwrap();
        assert!(l.check_login(ip("2001:db8:1:2:ffff::9"), None).is_err());
        l.check_login(ip("2001:db8:1:3::1"), None).unwrap();
        assert_eq!(client_key(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(client_key(ip("192.0.2.7")), ip("192.0.2.7"));
    }

    #[test]
    fn sweeps_keep_the_key_maps_bounded() {
        let (mut l, clock) = limits(1, 1, 1);
        l.sweep_every = 10;
        l.max_keys = 1_000;
        for i in 0..5_000u32 {
            let addr = IpAddr::from(i.to_be_bytes());
            let _ = l.check_login(addr, Some(&format!("user{i}")));
            clock.advance(Duration::from_millis(1));
        }
        assert!(l.keys() <= 2 * (1_000 + 10), "{} keys", l.keys());
        // Once every bucket is full again, a sweep forgets them all.
        clock.advance(Duration::from_secs(600));
        for _ in 0..10 {
            let _ = l.check_register(ip("10.9.9.9"));
        }
        assert!(l.keys() <= 1, "{} keys", l.keys());
    }
}
