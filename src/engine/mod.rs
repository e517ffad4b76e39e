//! The engine: interactive sessions, their statements, their Spark drivers and timeouts.

pub mod batch;
pub mod kind;
pub mod launcher;
pub mod manager;
pub mod paths;
pub mod sandbox;
pub mod session;
pub mod state;

pub use kind::{CodeKind, SessionKind};
pub use manager::{RpcEndpoint, SessionManager};
pub use session::{Session, SessionSnapshot, SessionSpec, Statement};
pub use state::{SessionState, StatementState};

/// What the engine refuses or fails at; `crate::error` maps each to an HTTP status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// No session with this id or name.
    #[error("Session '{0}' not found.")]
    SessionNotFound(String),
    /// No batch with this id or name.
    #[error("Batch '{0}' not found.")]
    BatchNotFound(String),
    /// No such statement in the session.
    #[error("Statement {statement} not found in session {session}.")]
    StatementNotFound {
        /// Session id.
        session: u32,
        /// Statement id.
        statement: u32,
    },
    /// The name is taken by a live session.
    #[error("Duplicate session name: {0}")]
    DuplicateName(String),
    /// A field of the request is not acceptable.
    #[error("{0}")]
    InvalidRequest(String),
    /// The live-session cap is reached.
    #[error("Rejected: too many sessions ({limit} live sessions is the limit); delete one or try again later")]
    TooManySessions {
        /// The cap.
        limit: usize,
    },
    /// The concurrent-launch cap is reached.
    #[error(
        "Rejected: too many sessions are being started ({limit} at once is the limit); try again in a few seconds"
    )]
    TooManyLaunches {
        /// The cap.
        limit: usize,
    },
    /// A per-user quota is reached.
    #[error("Rejected: {user} already has {limit} {what} (the per-user quota); delete one or try again later")]
    UserQuota {
        /// The user.
        user: String,
        /// The quota.
        limit: usize,
        /// `live sessions` or `sessions starting`.
        what: &'static str,
    },
    /// The session's state does not allow this.
    #[error("Session {id} is {state}: it does not accept statements")]
    NotAccepting {
        /// Session id.
        id: u32,
        /// Its state.
        state: SessionState,
    },
    /// A state change that the state machine forbids.
    #[error("Session {id} cannot go from {from} to {to}")]
    IllegalTransition {
        /// Session id.
        id: u32,
        /// Current state.
        from: SessionState,
        /// Requested state.
        to: SessionState,
    },
    /// The driver is not connected.
    #[error("{0}")]
    DriverUnavailable(String),
    /// The driver did not answer in time.
    #[error("{0}")]
    DriverTimeout(String),
    /// spark-submit could not be started.
    #[error("cannot launch Spark: {0}")]
    Launch(String),
    /// A file operation failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}
