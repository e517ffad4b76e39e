//! Livy's session and statement states, as enums whose transitions are checked: an illegal
//! move is an error, never a silent overwrite.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The state of an interactive session, with Livy's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// Created, spark-submit not yet run.
    NotStarted,
    /// spark-submit runs; the driver has not reported ready yet.
    Starting,
    /// Re-attaching to a driver after a gateway restart.
    Recovering,
    /// A batch application runs (batches only; interactive sessions show idle/busy).
    Running,
    /// Ready, nothing running.
    Idle,
    /// A statement is running.
    Busy,
    /// Being stopped.
    ShuttingDown,
    /// The driver could not start Spark (or failed beyond use).
    Error,
    /// The driver died or could not be reached.
    Dead,
    /// Stopped on request or by a timeout.
    Killed,
    /// Finished successfully (batches only).
    Success,
}

impl SessionState {
    /// Every state, in declaration order (metrics list them all, zero or not).
    pub const ALL: [Self; 11] = [
        Self::NotStarted,
        Self::Starting,
        Self::Recovering,
        Self::Running,
        Self::Idle,
        Self::Busy,
        Self::ShuttingDown,
        Self::Error,
        Self::Dead,
        Self::Killed,
        Self::Success,
    ];

    /// Livy's "finished" states: nothing will change any more.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Dead | Self::Killed | Self::Success)
    }

    /// States in which the session counts against the live-session cap.
    pub fn is_live(self) -> bool {
        !self.is_terminal()
    }

    /// States in which a statement may still be accepted (queued or run).
    pub fn accepts_statements(self) -> bool {
        matches!(self, Self::NotStarted | Self::Starting | Self::Recovering | Self::Idle | Self::Busy)
    }

    /// Whether a launch is still under way (counts against the concurrent-launch caps).
    pub fn is_launching(self) -> bool {
        matches!(self, Self::NotStarted | Self::Starting)
    }

    /// Whether `self → next` is a legal move. Staying in the same state is always legal.
    pub fn can_become(self, next: Self) -> bool {
        use SessionState::*;
        if self == next {
            return true;
        }
        match self {
            NotStarted => matches!(next, Starting | ShuttingDown | Dead | Killed),
            // A batch may finish before it was ever seen running.
            Starting | Recovering => {
                matches!(next, Idle | Busy | Running | Error | ShuttingDown | Dead | Killed | Success)
            }
            Running => matches!(next, ShuttingDown | Dead | Killed | Success),
            Idle => matches!(next, Busy | Error | ShuttingDown | Dead | Killed),
            Busy => matches!(next, Idle | Error | ShuttingDown | Dead | Killed),
            Error => matches!(next, ShuttingDown | Dead | Killed),
            ShuttingDown => matches!(next, Dead | Killed | Success),
            Dead | Killed | Success => false,
        }
    }

    /// Livy's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotStarted => "not_started",
            Self::Starting => "starting",
            Self::Recovering => "recovering",
            Self::Running => "running",
            Self::Idle => "idle",
            Self::Busy => "busy",
            Self::ShuttingDown => "shutting_down",
            Self::Error => "error",
            Self::Dead => "dead",
            Self::Killed => "killed",
            Self::Success => "success",
        }
    }
}

impl fmt::Display for SessionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state of a statement, with Livy's names (Livy has no `error` state: a failed statement
/// is `available` with an error output).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatementState {
    /// Queued.
    Waiting,
    /// Sent to the driver and running.
    Running,
    /// Finished; `output` holds the result (which may be an error).
    Available,
    /// Cancel requested while running.
    Cancelling,
    /// Cancelled.
    Cancelled,
}

impl StatementState {
    /// Every state, in declaration order.
    pub const ALL: [Self; 5] = [Self::Waiting, Self::Running, Self::Available, Self::Cancelling, Self::Cancelled];

    /// Whether `self → next` is legal. `cancelling → available` is allowed: a statement that
    /// finished before the cancel took effect keeps its real result.
    pub fn can_become(self, next: Self) -> bool {
        use StatementState::*;
        matches!(
            (self, next),
            (Waiting, Running)
                | (Waiting, Cancelled)
                | (Running, Available)
                | (Running, Cancelling)
                | (Running, Cancelled)
                | (Cancelling, Cancelled)
                | (Cancelling, Available)
        )
    }

    /// Finished: the output will not change.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Available | Self::Cancelled)
    }

    /// Livy's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Running => "running",
            Self::Available => "available",
            Self::Cancelling => "cancelling",
            Self::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for StatementState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_lifecycle_moves() {
        use SessionState::*;
        assert!(NotStarted.can_become(Starting));
        assert!(Starting.can_become(Idle));
        assert!(Idle.can_become(Busy));
        assert!(Busy.can_become(Idle));
        assert!(Busy.can_become(ShuttingDown));
        assert!(ShuttingDown.can_become(Killed));
        assert!(Starting.can_become(Dead));
        assert!(Idle.can_become(Idle));
    }

    #[test]
    fn session_illegal_moves() {
        use SessionState::*;
        for terminal in [Dead, Killed, Success] {
            for next in [Starting, Idle, Busy, ShuttingDown, Error] {
                assert!(!terminal.can_become(next), "{terminal} -> {next}");
            }
            assert!(terminal.is_terminal());
        }
        assert!(!Idle.can_become(Starting));
        assert!(!ShuttingDown.can_become(Idle));
        assert!(!Error.can_become(Idle));
    }

    #[test]
    fn statement_moves() {
        use StatementState::*;
        assert!(Waiting.can_become(Running));
        assert!(Waiting.can_become(Cancelled));
        assert!(Running.can_become(Cancelling));
        assert!(Cancelling.can_become(Cancelled));
        assert!(Cancelling.can_become(Available));
        assert!(!Available.can_become(Running));
        assert!(!Cancelled.can_become(Available));
        assert!(!Waiting.can_become(Available));
        assert!(!Available.can_become(Cancelled));
    }

    #[test]
    fn wire_names_match_livy() {
        assert_eq!(serde_json::to_string(&SessionState::ShuttingDown).unwrap(), "\"shutting_down\"");
        assert_eq!(serde_json::to_string(&SessionState::NotStarted).unwrap(), "\"not_started\"");
        assert_eq!(serde_json::to_string(&StatementState::Cancelling).unwrap(), "\"cancelling\"");
        assert_eq!(SessionState::Idle.as_str(), "idle");
    }
}
