//! Caps and per-user quotas on sessions and batches, checked the same way for both: how many
//! may be live, and how many may be starting (each start is a JVM), in all and per user.
//!
//! A per-user quota that the policy does not set explicitly for that user (`[quotas] default`,
//! or nothing) is always below the global cap, so one user alone can never take every slot and
//! block everyone else's launches; a quota the operator wrote for a user by name is honoured.

use super::EngineError;
use crate::acl::policy::Quota;

/// The global caps of one kind of resource.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    /// `sessions` or `batches`, for messages.
    pub kind: &'static str,
    /// Live at once.
    pub live: usize,
    /// Starting at once.
    pub launches: usize,
    /// Whether a create beyond the launch caps is accepted and its launch queued (sessions:
    /// `not_started` until a slot frees, see `SessionManager::pump_launches`) rather than
    /// refused.
    pub queued: bool,
}

/// What is live and starting now, in all and for the requesting user.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    /// Live, in all.
    pub live: usize,
    /// Starting, in all.
    pub launching: usize,
    /// Live, the user's.
    pub mine_live: usize,
    /// Starting, the user's.
    pub mine_launching: usize,
}

impl Counts {
    /// Counts `(live, starting, the user's)` entries.
    pub fn of(entries: impl IntoIterator<Item = (bool, bool, bool)>) -> Self {
        let mut counts = Self::default();
        for (live, launching, mine) in entries {
            if !live {
                continue;
            }
            counts.live += 1;
            counts.launching += usize::from(launching);
            counts.mine_live += usize::from(mine);
            counts.mine_launching += usize::from(mine && launching);
        }
        counts
    }
}

/// The per-user limit for a global `cap`: an explicit per-user quota as written; otherwise the
/// default quota (or half the cap when none is set), at most `cap - 1` while the cap leaves room
/// for someone else.
pub fn per_user(set: Option<usize>, explicit: bool, cap: usize) -> usize {
    match set {
        Some(n) if explicit => n,
        Some(n) if cap <= 1 => n.min(cap),
        _ if cap <= 1 => cap,
        Some(n) => n.min(cap - 1),
        None => (cap / 2).max(1),
    }
}

/// A per-user quota reached: for a quota of 0 a refusal that says waiting cannot help.
fn over_quota(user: &str, limit: usize, what: &'static str) -> EngineError {
    if limit == 0 {
        EngineError::QuotaZero { user: user.to_string(), what }
    } else {
        EngineError::UserQuota { user: user.to_string(), limit, what }
    }
}

/// Whether one more may be created now. With queued launches only the caps and quotas on live
/// entries refuse; the launch caps decide when it starts.
pub fn admit(counts: Counts, caps: Caps, quota: &Quota, user: &str) -> Result<(), EngineError> {
    if counts.live >= caps.live {
        return Err(EngineError::TooManyLive { kind: caps.kind, limit: caps.live });
    }
    let live = per_user(quota.max_sessions, quota.explicit, caps.live);
    if counts.mine_live >= live {
        let what = if caps.kind == "batches" { "live batches" } else { "live sessions" };
        return Err(over_quota(user, live, what));
    }
    if caps.queued {
        // A user who may start none would wait for ever: refused now, as before.
        if per_user(quota.max_concurrent_launches, quota.explicit, caps.launches) == 0 {
            let what = if caps.kind == "batches" { "batches starting" } else { "sessions starting" };
            return Err(over_quota(user, 0, what));
        }
        return Ok(());
    }
    if counts.launching >= caps.launches {
        return Err(EngineError::TooManyLaunches { kind: caps.kind, limit: caps.launches });
    }
    let launches = per_user(quota.max_concurrent_launches, quota.explicit, caps.launches);
    if counts.mine_launching >= launches {
        let what = if caps.kind == "batches" { "batches starting" } else { "sessions starting" };
        return Err(over_quota(user, launches, what));
    }
    Ok(())
}

/// Which finished sessions (or batches) to forget now beyond the retention time: `finished`
/// are `(effective user, id)` oldest first; the newest `total` stay, at most `per_user` of one
/// user's. A finished session still holds its statements' outputs and its log tail, and the
/// caps on live ones do not count it: without this, starting and stopping sessions in a loop
/// would pile them up for `sessions.retain_finished`.
pub fn excess_finished(finished: &[(&str, u32)], total: usize, per_user: usize) -> Vec<u32> {
    let mut kept = 0usize;
    let mut per: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let mut excess = Vec::new();
    for (user, id) in finished.iter().rev() {
        let mine = per.entry(user).or_insert(0);
        if kept < total && *mine < per_user {
            kept += 1;
            *mine += 1;
        } else {
            excess.push(*id);
        }
    }
    excess
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_newest_finished_are_kept_within_both_caps() {
        let finished = [("bob", 1), ("alice", 2), ("bob", 3), ("bob", 4), ("bob", 5), ("carol", 6)];
        let mut gone = super::excess_finished(&finished, 4, 2);
        gone.sort();
        // Kept, newest first: carol 6, bob 5, bob 4, alice 2 (bob's 3 is beyond his two).
        assert_eq!(gone, vec![1, 3]);
        assert!(super::excess_finished(&finished, 100, 100).is_empty());
    }

    use super::*;

    #[test]
    fn a_default_quota_never_reaches_the_global_cap() {
        assert_eq!(per_user(None, false, 4), 2);
        assert_eq!(per_user(Some(4), false, 4), 3, "the default quota stays below the cap");
        assert_eq!(per_user(Some(9), false, 4), 3);
        assert_eq!(per_user(Some(1), false, 4), 1);
        assert_eq!(per_user(Some(4), true, 4), 4, "a quota written for the user is the operator's choice");
        assert_eq!(per_user(None, false, 1), 1, "a cap of one is everyone's");
        assert_eq!(per_user(Some(0), false, 1), 0, "a default quota of 0 holds under a cap of one");
    }

    #[test]
    fn one_user_cannot_take_every_launch_slot() {
        let caps = Caps { kind: "batches", live: 32, launches: 4, queued: false };
        let quota = Quota { max_concurrent_launches: Some(4), ..Quota::default() };
        let mine = |n: usize| Counts { live: n, launching: n, mine_live: n, mine_launching: n };
        assert!(admit(mine(2), caps, &quota, "alice").is_ok());
        let err = admit(mine(3), caps, &quota, "alice").unwrap_err();
        assert!(matches!(err, EngineError::UserQuota { limit: 3, .. }), "{err}");
        // Someone else still gets the last slot.
        let others = Counts { live: 3, launching: 3, mine_live: 0, mine_launching: 0 };
        assert!(admit(others, caps, &quota, "bob").is_ok());
        let full = Counts { live: 4, launching: 4, ..Counts::default() };
        assert!(matches!(admit(full, caps, &quota, "bob"), Err(EngineError::TooManyLaunches { limit: 4, .. })));
        let counts = Counts::of([(true, true, true), (true, false, false), (false, false, true)]);
        assert_eq!((counts.live, counts.launching, counts.mine_live, counts.mine_launching), (2, 1, 1, 1));
    }

    #[test]
    fn queued_launches_are_refused_only_by_the_live_caps() {
        let caps = Caps { kind: "sessions", live: 8, launches: 2, queued: true };
        let quota = Quota { max_sessions: Some(5), explicit: true, ..Quota::default() };
        let starting = Counts { live: 4, launching: 4, mine_live: 4, mine_launching: 4 };
        assert!(admit(starting, caps, &quota, "alice").is_ok(), "beyond the launch cap: queued");
        let mine = Counts { live: 5, launching: 5, mine_live: 5, mine_launching: 5 };
        assert!(matches!(admit(mine, caps, &quota, "alice"), Err(EngineError::UserQuota { limit: 5, .. })));
        let full = Counts { live: 8, launching: 8, ..Counts::default() };
        assert!(matches!(admit(full, caps, &quota, "bob"), Err(EngineError::TooManyLive { limit: 8, .. })));
        let none = Quota { max_concurrent_launches: Some(0), explicit: true, ..Quota::default() };
        let idle = Counts::default();
        assert!(matches!(admit(idle, caps, &none, "dave"), Err(EngineError::QuotaZero { .. })));
        // A default (not per-user) launch quota of 0 under a launch cap of one holds too.
        let one = Caps { launches: 1, ..caps };
        let default_none = Quota { max_concurrent_launches: Some(0), ..Quota::default() };
        assert!(matches!(admit(idle, one, &default_none, "erin"), Err(EngineError::QuotaZero { .. })));
    }
}
