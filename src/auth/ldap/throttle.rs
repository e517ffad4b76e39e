//! Failed LDAP logins, counted per user name and per client address: after
//! `auth.ldap.max_failures` failures within `auth.ldap.failure_window`, further attempts with
//! that name or from that address are refused (429, `Retry-After`) without asking the
//! directory, until the window that began with the first failure ends. A name is counted
//! whether or not such a user exists, so the refusal says nothing about the directory.

use crate::net::AddrKey;
use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;
use tokio::time::Instant;

/// Names and addresses tracked at most, each; beyond it the windows that ended are dropped,
/// then the oldest.
const MAX_TRACKED: usize = 100_000;

/// One name's or address's failures in the current window.
#[derive(Debug, Clone, Copy)]
struct Window {
    began: Instant,
    failures: u32,
}

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct Throttle {
    max_failures: u32,
    window: Duration,
    users: HashMap<String, Window>,
    addrs: HashMap<AddrKey, Window>,
}

impl Throttle {
    pub(crate) fn new(max_failures: u32, window: Duration) -> Self {
        Self { max_failures: max_failures.max(1), window, users: HashMap::new(), addrs: HashMap::new() }
    }

    /// `Err(retry after)` while `user` or `addr` has used up its failures.
    pub(crate) fn check(&self, user: &str, addr: Option<AddrKey>, now: Instant) -> Result<(), Duration> {
        let locked = |window: Option<&Window>| {
            window
                .filter(|w| w.failures >= self.max_failures)
                .map(|w| (w.began + self.window).saturating_duration_since(now))
                .filter(|left| !left.is_zero())
        };
        let by_user = locked(self.users.get(user));
        let by_addr = locked(addr.as_ref().and_then(|a| self.addrs.get(a)));
        match by_user.max(by_addr) {
            Some(left) => Err(left),
            None => Ok(()),
        }
    }

    /// Counts a failed login (`user`: the name tried, if it was a user name at all).
    pub(crate) fn fail(&mut self, user: Option<&str>, addr: Option<AddrKey>, now: Instant) {
        let window = self.window;
        if let Some(user) = user {
            count(&mut self.users, user.to_owned(), window, now);
        }
        if let Some(addr) = addr {
            count(&mut self.addrs, addr, window, now);
        }
    }

    /// A successful login clears the name's failures (not the address's: one good account
    /// must not reset the count of an address trying others).
    pub(crate) fn succeed(&mut self, user: &str) {
        self.users.remove(user);
    }
}

fn count<K: Hash + Eq>(map: &mut HashMap<K, Window>, key: K, window: Duration, now: Instant) {
    if map.len() >= MAX_TRACKED && !map.contains_key(&key) {
        map.retain(|_, w| now.saturating_duration_since(w.began) < window);
        if map.len() >= MAX_TRACKED {
            // Every window is live (a spray from many addresses): drop the oldest half.
            let mut began: Vec<Instant> = map.values().map(|w| w.began).collect();
            began.sort_unstable();
            let cut = began[began.len() / 2];
            map.retain(|_, w| w.began > cut);
        }
    }
    let entry = map.entry(key).or_insert(Window { began: now, failures: 0 });
    if now.saturating_duration_since(entry.began) >= window {
        *entry = Window { began: now, failures: 0 };
    }
    entry.failures = entry.failures.saturating_add(1);
}
