//! The audit trail: one hash-chained JSON line per request and per security-relevant event,
//! written by [`AuditLog`], checked by [`verify_files`], fed by the [`audit_requests`] middleware.
//!
//! An [`AuditEvent`] has only the typed fields below — there is no map, no "extra", no header
//! or body field — so credentials, cookies and request bodies have no way into the trail.
//! Every string is clipped to [`MAX_FIELD_BYTES`] so a client cannot bloat a record (a long
//! path, a long request id) and every record stays small enough to resume from quickly.

mod coalesce;
mod layer;
mod verify;
mod writer;

pub use layer::{audit_requests, expose_matched_path};
pub use verify::{verify_files, Problem, ProblemKind, VerifyReport};
pub use writer::{chain_files, AuditLog, AuditOptions, ChainHead, Recorded};

use crate::audit_slots::Decision;
use crate::identity::{AuthMethod, Principal};
use serde::Serialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Longest string kept in any field, in bytes; longer values are cut (on a character boundary)
/// and end with `…`.
pub const MAX_FIELD_BYTES: usize = 1024;

/// `prev` of the very first record of a chain.
pub const GENESIS_PREV: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Whether an event describes an HTTP request or something the gateway did or saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventKind {
    /// One HTTP request, recorded after its response.
    Request,
    /// A security-relevant engine event (session launched, driver authenticated, …).
    Security,
}

/// A decision name that is not one of `allow`, `deny`, `error`, `info`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown audit decision {0:?} (expected allow, deny, error or info)")]
pub struct UnknownDecision(pub String);

// Parsed here rather than beside the type in `audit_slots`: only the audit layer reads a
// decision from text (an [`Annotation`]), and the rejected name is clipped like any field.
impl std::str::FromStr for Decision {
    type Err = UnknownDecision;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "allow" => Ok(Self::Allow),
            "deny" => Ok(Self::Deny),
            "error" => Ok(Self::Error),
            "info" => Ok(Self::Info),
            other => Err(UnknownDecision(clip(other.to_string()))),
        }
    }
}

/// One audit event. Build it with [`AuditEvent::request`] or [`AuditEvent::security`] and the
/// setters; the fields are private so that every value passes through [`clip`].
///
/// Never pass a credential, a cookie or a body to any setter: the fields are for names,
/// addresses, identifiers and reasons, and nothing else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEvent {
    kind: EventKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    remote_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    principal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    auth_method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    effective_user: Option<String>,
    action: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    resource: Option<String>,
    decision: Decision,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    latency_ms: Option<u64>,
    /// Set only by the log itself on a counted summary: how many more events like the one
    /// written in full were counted instead of written ([`AuditLog::record_coalesced`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    repeated: Option<u64>,
    /// Set only by the log itself on an `audit_files_retired` record: every record before this
    /// seq is in files that retention deleted (`audit.max_files`, `audit.max_age`).
    #[serde(skip_serializing_if = "Option::is_none")]
    retired_before: Option<u64>,
}

impl AuditEvent {
    /// Whether this record may wait up to [`writer::READ_SYNC`] for its sync: a request that
    /// was allowed and changed nothing (GET, HEAD, OPTIONS; changes are synced before they are
    /// answered anyway). Every refusal, error and security event is synced as soon as the
    /// writer's queue runs dry.
    pub(crate) fn may_sync_later(&self) -> bool {
        self.kind == EventKind::Request
            && self.decision == Decision::Allow
            && ["GET ", "HEAD ", "OPTIONS "].iter().any(|m| self.action.starts_with(m))
    }

    fn new(kind: EventKind, action: String, decision: Decision) -> Self {
        Self {
            kind,
            request_id: None,
            remote_addr: None,
            principal: None,
            auth_method: None,
            effective_user: None,
            action: clip(action),
            resource: None,
            decision,
            reason: None,
            status: None,
            latency_ms: None,
            repeated: None,
            retired_before: None,
        }
    }

    /// An HTTP request; `action` is `"METHOD /matched/path"` (never a query string).
    pub fn request(action: impl Into<String>, decision: Decision) -> Self {
        Self::new(EventKind::Request, action.into(), decision)
    }

    /// A security event such as `session_launched`, `driver_authenticated`, `rpc_auth_failed`,
    /// `impersonation_granted`, `impersonation_denied`, `session_killed_by_timeout`,
    /// `policy_reloaded`.
    pub fn security(action: impl Into<String>, decision: Decision) -> Self {
        Self::new(EventKind::Security, action.into(), decision)
    }

    /// The request id (`x-request-id`).
    #[must_use]
    pub fn request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = Some(clip(id.into()));
        self
    }

    /// The client's (or driver's) address.
    #[must_use]
    pub fn remote_addr(mut self, addr: SocketAddr) -> Self {
        self.remote_addr = Some(addr.to_string());
        self
    }

    /// The authenticated principal and how it authenticated.
    #[must_use]
    pub fn principal(mut self, principal: &Principal) -> Self {
        self.principal = Some(clip(principal.name.clone()));
        self.auth_method = Some(principal.method.as_str().to_string());
        self
    }

    /// A principal known only by name (e.g. the owner of a session in an engine event).
    #[must_use]
    pub fn principal_name(mut self, name: impl Into<String>) -> Self {
        self.principal = Some(clip(name.into()));
        self
    }

    /// How the principal authenticated, when set apart from [`AuditEvent::principal`].
    #[must_use]
    pub fn auth_method(mut self, method: AuthMethod) -> Self {
        self.auth_method = Some(method.as_str().to_string());
        self
    }

    /// The user the request acts as (after impersonation).
    #[must_use]
    pub fn effective_user(mut self, user: impl Into<String>) -> Self {
        self.effective_user = Some(clip(user.into()));
        self
    }

    /// Replaces the action.
    #[must_use]
    pub fn action(mut self, action: impl Into<String>) -> Self {
        self.action = clip(action.into());
        self
    }

    /// What was acted on, e.g. `session:3`.
    #[must_use]
    pub fn resource(mut self, resource: impl Into<String>) -> Self {
        self.resource = Some(clip(resource.into()));
        self
    }

    /// Replaces the decision.
    #[must_use]
    pub fn decision(mut self, decision: Decision) -> Self {
        self.decision = decision;
        self
    }

    /// Why (a refusal's reason, a policy rule, a timeout). Never a credential.
    #[must_use]
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(clip(reason.into()));
        self
    }

    /// The HTTP status.
    #[must_use]
    pub fn status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    /// How long the request took.
    #[must_use]
    pub fn latency_ms(mut self, latency_ms: u64) -> Self {
        self.latency_ms = Some(latency_ms);
        self
    }
}

/// Why the audit trail could not be opened, written or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// An existing audit file does not end (or begin) with a valid record, so the chain cannot
    /// be continued without hiding the damage.
    #[error(
        "cannot continue the audit chain in {}: {detail}; inspect it with `sparkgate audit verify` and move it aside",
        path.display()
    )]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The configured path names no file.
    #[error("audit path {} does not name a file", path.display())]
    InvalidPath {
        /// The path.
        path: PathBuf,
    },
    /// A record could not be encoded as JSON.
    #[error("encoding an audit record: {0}")]
    Encode(String),
    /// The writer thread has stopped, so nothing more can be written.
    #[error("the audit writer has stopped")]
    WriterStopped,
}

/// Cuts `s` to at most [`MAX_FIELD_BYTES`] bytes on a character boundary, marking the cut.
fn clip(mut s: String) -> String {
    const MARK: &str = "…";
    if s.len() <= MAX_FIELD_BYTES {
        return s;
    }
    let mut end = MAX_FIELD_BYTES - MARK.len();
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push_str(MARK);
    s
}

/// Lowercase hex SHA-256 of `text`.
fn sha256_hex(text: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// The current time as RFC 3339 in UTC with milliseconds, e.g. `2025-01-31T12:00:00.123Z`.
/// Formatted by hand because `time`'s RFC 3339 formatter varies the number of fraction digits,
/// and a fixed width keeps the trail sortable as text.
fn now_rfc3339_ms() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

#[cfg(test)]
mod tests;
