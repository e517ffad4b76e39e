//! Session and batch names: unique per kind across all users (as in Livy), checked once for
//! both kinds, and a quota on refused duplicates, so that one user can neither probe which names
//! others use nor keep trying to squat them.

use super::EngineError;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Refused duplicate names a user may cause per [`CONFLICT_WINDOW`] unless the policy says
/// otherwise (`quotas.*.max_name_conflicts`).
pub const DEFAULT_MAX_NAME_CONFLICTS: usize = 10;

/// The window over which refused duplicates are counted.
pub const CONFLICT_WINDOW: Duration = Duration::from_secs(3600);

/// Longest name accepted, in characters.
pub const MAX_NAME_CHARS: usize = 128;

/// Checks a requested name: not empty, not all digits (names share the path with ids), no
/// `/`, no control characters, at most [`MAX_NAME_CHARS`]. The message names the field and the
/// problem, never the value.
pub fn validate(name: &str) -> Result<(), EngineError> {
    let problem = if name.trim().is_empty() {
        "must not be empty"
    } else if name.bytes().all(|b| b.is_ascii_digit()) {
        "must not be all digits: names share the path with numeric ids"
    } else if name.chars().count() > MAX_NAME_CHARS {
        "is too long (at most 128 characters)"
    } else if name.chars().any(|c| c.is_control() || c == '/') {
        "must not contain `/` or control characters"
    } else {
        return Ok(());
    };
    Err(EngineError::InvalidRequest(format!("field `name` {problem}")))
}

/// Refused duplicate names per user, over the last [`CONFLICT_WINDOW`].
#[derive(Debug, Default)]
pub struct NameConflicts(Mutex<HashMap<String, VecDeque<Instant>>>);

impl NameConflicts {
    /// Before a named create by `user`: refused (429) once the user caused `limit` refused
    /// duplicates within the window — whether or not this name is taken, so the answer
    /// tells nothing more about other users' names.
    pub fn check(&self, user: &str, limit: usize) -> Result<(), EngineError> {
        let mut table = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        let recent = table.entry(user.to_string()).or_default();
        while recent.front().is_some_and(|t| now.duration_since(*t) >= CONFLICT_WINDOW) {
            recent.pop_front();
        }
        let count = recent.len();
        if recent.is_empty() {
            table.remove(user);
        }
        if count >= limit {
            return Err(EngineError::UserQuota {
                user: user.to_string(),
                limit,
                what: "names refused as duplicates within the last hour",
            });
        }
        Ok(())
    }

    /// Counts one refused duplicate for `user`.
    pub fn record(&self, user: &str, limit: usize) {
        let mut table = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let recent = table.entry(user.to_string()).or_default();
        recent.push_back(Instant::now());
        // Only the last `limit` matter for the check: the table stays small.
        while recent.len() > limit.max(1) {
            recent.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_without_echoing_them() {
        assert!(validate("etl-nightly").is_ok());
        for bad in ["", "  ", "123", "a/b", "tab\there", &"x".repeat(129)] {
            let err = validate(bad).unwrap_err().to_string();
            assert!(err.starts_with("field `name`"), "{err}");
            assert!(bad.trim().is_empty() || !err.contains(bad), "the value is not echoed: {err}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn refused_duplicates_are_counted_per_user_over_an_hour() {
        let conflicts = NameConflicts::default();
        for _ in 0..3 {
            conflicts.check("bob", 3).unwrap();
            conflicts.record("bob", 3);
        }
        assert!(matches!(conflicts.check("bob", 3), Err(EngineError::UserQuota { limit: 3, .. })));
        conflicts.check("alice", 3).unwrap();
        tokio::time::advance(CONFLICT_WINDOW).await;
        conflicts.check("bob", 3).unwrap();
    }
}
