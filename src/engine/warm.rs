//! Warm drivers: sessions started ahead of time for the requests users keep making, so that
//! `POST /sessions` gets a driver that is already up instead of waiting ~6 s for a JVM.
//!
//! A warm driver is an ordinary session in every way that matters for safety — launched by
//! the same code with the same `--proxy-user`, sandbox, files and secret handling, counted
//! against its user's quota and the global caps, stored and taken back after a restart — that
//! nobody can see (it is in no listing and no lookup finds it) until a request *of its conf
//! class* claims it. The conf class is everything its driver was started with: the
//! authenticated owner, the effective user, the session kind and every submit field as the
//! gateway checked it (resources, `conf` after the policy's rules, files, queue,
//! `--proxy-user`). A request differs from another in class if any of those differ; only its
//! name, `heartbeatTimeoutInSecond`, `ttl` and `idleTimeout` do not count (they are gateway
//! terms, set at the claim). A named request is never served warm: a name is the Spark
//! application's name and is claimed in the store when the session is created.
//!
//! Which classes are kept warm is learned: each request of a user the configuration names
//! (`sessions.warm.users`, `.groups`, or `.others` for everyone) notes its class; the pool
//! then keeps that many drivers of the class ready until nobody asked for it for
//! `sessions.warm.idle_evict`. This module decides; the [`super::SessionManager`] launches and
//! stops.

use super::session::SessionSpec;
use super::state::SessionState;
use crate::acl::policy::Quota;
use crate::config::WarmConfig;
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// The conf class of `spec`, as a key: None for a request that can never be served warm.
pub fn class_of(spec: &SessionSpec) -> Option<String> {
    if spec.submit.name.is_some() {
        return None;
    }
    serde_json::to_string(&(&spec.owner, &spec.effective_user, spec.kind.as_str(), &spec.submit)).ok()
}

/// What a warm driver of `spec`'s class is started with: the class, without a request's own
/// terms.
pub fn template(spec: &SessionSpec) -> SessionSpec {
    SessionSpec { heartbeat_timeout_secs: 0, ttl: None, idle_timeout: None, ..spec.clone() }
}

/// How many warm drivers of each of its classes `user` (in `groups`) gets: their own entry if
/// the configuration has one (0 opts a user out), else the largest of their groups' entries,
/// else `others`. 0 while warm drivers are off.
pub fn size_for(config: &WarmConfig, user: &str, groups: &[String]) -> usize {
    if config.max_drivers == 0 {
        return 0;
    }
    if let Some(size) = config.users.get(user) {
        return *size;
    }
    groups.iter().filter_map(|g| config.groups.get(g).copied()).max().unwrap_or(config.others)
}

/// A class someone asked for.
#[derive(Debug, Clone)]
pub struct Demand {
    /// What its warm drivers are started with.
    pub template: SessionSpec,
    /// The user's quota when they last asked (a warm driver is registered under it).
    pub quota: Quota,
    /// Warm drivers to keep ready.
    pub size: usize,
    /// When it was last asked for.
    pub last: Instant,
    /// A warm launch of it failed (its driver did not come up) since it was last asked for:
    /// none is tried again until then.
    pub failed: bool,
}

/// A warm driver as the planner sees it.
#[derive(Debug, Clone)]
pub struct WarmDriver {
    /// Its session.
    pub id: u32,
    /// Its class.
    pub class: String,
    /// Its state.
    pub state: SessionState,
    /// Whether its driver is up (connected).
    pub connected: bool,
}

impl WarmDriver {
    /// Whether it is still coming up (a JVM starting).
    pub fn starting(&self) -> bool {
        matches!(self.state, SessionState::NotStarted | SessionState::Starting)
            || (self.state == SessionState::Recovering && !self.connected)
    }
}

/// What the pool should do now.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Warm drivers to stop: their class was not asked for within `idle_evict`.
    pub evict: Vec<u32>,
    /// A class to start one warm driver of.
    pub launch: Option<String>,
}

/// The classes asked for, most recent first when bounded.
#[derive(Debug, Default)]
pub struct Pools {
    demand: Mutex<HashMap<String, Demand>>,
}

/// Classes remembered at most: beyond it the one asked for longest ago is forgotten.
fn max_classes(config: &WarmConfig) -> usize {
    config.max_drivers.saturating_mul(4).max(64)
}

impl Pools {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Demand>> {
        self.demand.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Notes that `spec`'s class was asked for now, by a user who gets `size` warm drivers of
    /// it under `quota`. Returns whether the pool has something new to do.
    pub fn note(&self, config: &WarmConfig, spec: &SessionSpec, quota: Quota, size: usize) -> bool {
        let Some(class) = class_of(spec) else { return false };
        if size == 0 {
            return false;
        }
        let mut demand = self.lock();
        let now = Instant::now();
        demand.insert(class, Demand { template: template(spec), quota, size, last: now, failed: false });
        let max = max_classes(config);
        while demand.len() > max {
            let Some(oldest) = demand.iter().min_by_key(|(_, d)| d.last).map(|(c, _)| c.clone()) else { break };
            demand.remove(&oldest);
        }
        true
    }

    /// Keeps the class of `spec`, a warm driver taken back after a restart, for
    /// `idle_evict` from now (unless it is known already): it can be claimed, but none is
    /// started for it until someone asks for it (the user's quota and size are not stored).
    pub fn keep(&self, spec: &SessionSpec) {
        let Some(class) = class_of(spec) else { return };
        self.lock().entry(class).or_insert_with(|| Demand {
            template: template(spec),
            quota: Quota::default(),
            size: 0,
            last: Instant::now(),
            failed: false,
        });
    }

    /// Notes that a warm launch of `class` failed: it is not tried again until it is asked for.
    pub fn failed(&self, class: &str) {
        if let Some(d) = self.lock().get_mut(class) {
            d.failed = true;
        }
    }

    /// Class `class` as asked for.
    pub fn demand(&self, class: &str) -> Option<Demand> {
        self.lock().get(class).cloned()
    }

    /// What to do given the warm drivers now (`warm`: those not yet claimed, live);
    /// `has_room`: whether a class's user has room for one more under their quota and the caps.
    pub fn plan(
        &self,
        config: &WarmConfig,
        idle_evict: Duration,
        warm: &[WarmDriver],
        has_room: &dyn Fn(&Demand) -> bool,
    ) -> Plan {
        plan(&self.lock(), config, idle_evict, warm, has_room, Instant::now())
    }
}

/// See [`Pools::plan`]. Evicts the warm drivers of classes not asked for within `idle_evict`.
/// Starts one driver at a time (never a second while one is coming up), within
/// `max_drivers`: of the classes whose user has room, the one furthest below its size, the one
/// asked for most recently first.
pub fn plan(
    demand: &HashMap<String, Demand>,
    config: &WarmConfig,
    idle_evict: Duration,
    warm: &[WarmDriver],
    has_room: &dyn Fn(&Demand) -> bool,
    now: Instant,
) -> Plan {
    let fresh = |class: &str| demand.get(class).filter(|d| now.duration_since(d.last) < idle_evict);
    let evict: Vec<u32> = warm.iter().filter(|w| fresh(&w.class).is_none()).map(|w| w.id).collect();
    let kept = warm.len() - evict.len();
    let coming_up = warm.iter().any(WarmDriver::starting);
    let launch = if coming_up || kept >= config.max_drivers {
        None
    } else {
        demand
            .iter()
            .filter(|(class, d)| !d.failed && fresh(class).is_some() && has_room(d))
            .filter_map(|(class, d)| {
                let have = warm.iter().filter(|w| &w.class == class).count();
                (have < d.size).then_some((have, d.last, class))
            })
            .min_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)).then(a.2.cmp(b.2)))
            .map(|(_, _, class)| class.clone())
    };
    Plan { evict, launch }
}

#[cfg(test)]
mod tests;
