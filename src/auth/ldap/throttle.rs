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

/// A login under way: counted as a failure from the moment it begins (so attempts sent at once
/// cannot slip past the limit while the directory answers), given back if it was not one.
#[derive(Debug)]
#[must_use = "an attempt is given back, or stays counted as a failure"]
pub(crate) struct Attempt {
    user: Option<(String, Instant)>,
    addr: Option<(AddrKey, Instant)>,
}

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct Throttle {
    max_user_failures: u32,
    max_addr_failures: u32,
    window: Duration,
    users: HashMap<String, Window>,
    addrs: HashMap<AddrKey, Window>,
}

impl Throttle {
    pub(crate) fn new(max_user_failures: u32, max_addr_failures: u32, window: Duration) -> Self {
        Self {
            max_user_failures: max_user_failures.max(1),
            max_addr_failures: max_addr_failures.max(1),
            window,
            users: HashMap::new(),
            addrs: HashMap::new(),
        }
    }

    /// Begins a login as `user` (None: not a user name at all) from `addr`: `Err(retry after)`
    /// while the name or the address has used up its failures, else the attempt, already
    /// counted as a failure.
    pub(crate) fn attempt(
        &mut self,
        user: Option<&str>,
        addr: Option<AddrKey>,
        now: Instant,
    ) -> Result<Attempt, Duration> {
        let left = |window: Option<&Window>, max: u32| {
            window
                .filter(|w| w.failures >= max && now.saturating_duration_since(w.began) < self.window)
                .map(|w| (w.began + self.window).saturating_duration_since(now))
        };
        let by_user = left(user.and_then(|u| self.users.get(u)), self.max_user_failures);
        let by_addr = left(addr.as_ref().and_then(|a| self.addrs.get(a)), self.max_addr_failures);
        if let Some(retry) = by_user.max(by_addr) {
            return Err(retry);
        }
        let window = self.window;
        let user = user.map(|u| (u.to_owned(), count(&mut self.users, u.to_owned(), window, now)));
        let addr = addr.map(|a| (a, count(&mut self.addrs, a, window, now)));
        Ok(Attempt { user, addr })
    }

    /// The attempt was not a failure (the directory could not judge it): uncounted.
    pub(crate) fn give_back(&mut self, attempt: Attempt) {
        if let Some((user, began)) = attempt.user {
            uncount(&mut self.users, &user, began);
        }
        if let Some((addr, began)) = attempt.addr {
            uncount(&mut self.addrs, &addr, began);
        }
    }

    /// The login succeeded: the name's failures are cleared; the address's count loses only
    /// this attempt (one good account must not reset the count of an address trying others).
    pub(crate) fn succeed(&mut self, attempt: Attempt) {
        if let Some((user, _)) = &attempt.user {
            self.users.remove(user);
        }
        self.give_back(Attempt { user: None, ..attempt });
    }
}

/// Counts one failure of `key`; returns when its window began.
fn count<K: Hash + Eq>(map: &mut HashMap<K, Window>, key: K, window: Duration, now: Instant) -> Instant {
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
    entry.began
}

/// Takes back one failure of `key` counted in the window that began at `began` (a later
/// window never loses counts to an older attempt).
fn uncount<K: Hash + Eq>(map: &mut HashMap<K, Window>, key: &K, began: Instant) {
    if let Some(w) = map.get_mut(key) {
        if w.began == began {
            w.failures = w.failures.saturating_sub(1);
        }
    }
}
