//! The engine: interactive sessions, their statements, their Spark drivers and timeouts.

pub mod app_id;
pub mod batch;
pub mod ids;
pub mod job;
pub mod kind;
pub mod launch;
pub mod limits;
pub mod manager;
pub mod names;
pub mod paths;
pub mod record;
pub mod recovery;
pub mod registry;
pub mod sandbox;
pub mod session;
pub mod spec;
pub mod start;
pub mod state;
pub mod warm;

pub use kind::{CodeKind, SessionKind};
pub use manager::{RpcEndpoint, SessionManager};
pub use session::{Session, SessionSnapshot, SessionSpec, Statement};
pub use spec::SubmitSpec;
pub use state::{SessionState, StatementState};

/// Livy's `Session '<id>' not found.` for an id; a name is not repeated (what a client sends is
/// never echoed: it could be anything).
fn not_found(kind: &str, key: &str) -> String {
    if is_id(key) {
        format!("{kind} '{key}' not found.")
    } else {
        format!("{kind} not found: no {} has this name.", kind.to_ascii_lowercase())
    }
}

/// Whether a path segment is a numeric id (anything else is a name).
pub fn is_id(key: &str) -> bool {
    !key.is_empty() && key.len() <= 10 && key.bytes().all(|b| b.is_ascii_digit())
}

/// What the engine refuses or fails at; `crate::error` maps each to an HTTP status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// No session with this id or name (or none the caller may see).
    #[error("{}", not_found("Session", .0))]
    SessionNotFound(String),
    /// No batch with this id or name (or none the caller may see).
    #[error("{}", not_found("Batch", .0))]
    BatchNotFound(String),
    /// No such statement in the session.
    #[error("Statement {statement} not found in session {session}.")]
    StatementNotFound {
        /// Session id.
        session: u32,
        /// Statement id.
        statement: u32,
    },
    /// No such job (of the programmatic API) in the session.
    #[error("Job {job} not found in session {session}.")]
    JobNotFound {
        /// Session id.
        session: u32,
        /// Job id.
        job: u32,
    },
    /// The name is taken (by a session or batch the caller may not even see: which one is not
    /// said).
    #[error("Duplicate {0} name: another {0} already has this name; choose another")]
    DuplicateName(&'static str),
    /// A field of the request is not acceptable.
    #[error("{0}")]
    InvalidRequest(String),
    /// The cap on live sessions (or batches) is reached.
    #[error("Rejected: too many {kind} ({limit} live {kind} is the limit); delete one or try again later")]
    TooManyLive {
        /// `sessions` or `batches`.
        kind: &'static str,
        /// The cap.
        limit: usize,
    },
    /// The cap on sessions (or batches) starting at once is reached.
    #[error("Rejected: too many {kind} are being started ({limit} at once is the limit); try again in a few seconds")]
    TooManyLaunches {
        /// `sessions` or `batches`.
        kind: &'static str,
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
    /// A per-user quota of 0: trying again cannot help.
    #[error("Rejected: {user} may have no {what} (the per-user quota is 0)")]
    QuotaZero {
        /// The user.
        user: String,
        /// `live sessions`, `sessions starting` ...
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
    /// Too many statements are waiting in the session.
    #[error(
        "Rejected: session {id} already has {limit} statements waiting (sessions.max_queued_statements); wait for \
         them to finish or cancel some"
    )]
    StatementsQueued {
        /// Session id.
        id: u32,
        /// The cap.
        limit: usize,
    },
    /// The statements that cannot be forgotten yet would hold too much code.
    #[error(
        "Rejected: the statements waiting or running in session {id} would hold more than {limit} bytes of code \
         (sessions.max_retained_bytes)"
    )]
    StatementsTooLarge {
        /// Session id.
        id: u32,
        /// The budget.
        limit: usize,
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
    /// A change could not be made durable (the store failed; the cause is logged).
    #[error("{0}")]
    StoreUnavailable(String),
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
