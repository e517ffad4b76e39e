//! Start-up: taking back the sessions and batches an earlier run of the gateway left (see
//! README, "Recovery"). The store's records are read before anything is launched, so that
//! the processes of live records are spared when what an earlier run left is stopped, and the
//! directories of every record are kept when the unknown ones are moved aside; once the
//! session and batch managers exist, each record is taken back ([`SessionManager::restore`],
//! [`BatchManager::restore`]). A record that cannot be decoded is logged, audited, left in the
//! store for an operator, and skipped — never silently dropped, and its id never reused.

use super::batch::BatchManager;
use super::manager::SessionManager;
use super::state::SessionState;
use crate::acl::ResourceKind;
use crate::audit::{AuditEvent, AuditLog};
use crate::audit_slots::Decision;
use crate::store::{AnyStore, Store, StoreError, Stored};
use std::collections::HashSet;
use std::sync::Arc;

/// Records read from the store at once.
const PAGE: usize = 500;

/// What the store holds of an earlier run.
#[derive(Debug, Default)]
pub struct Found {
    /// Sessions, each with its statements.
    pub sessions: Vec<(Stored, Vec<Stored>)>,
    /// Batches.
    pub batches: Vec<Stored>,
}

/// Every record of `kind`, page by page.
async fn all_of(store: &AnyStore, kind: ResourceKind) -> Result<Vec<Stored>, StoreError> {
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let page = store.list(kind, after, PAGE).await?;
        let Some(last) = page.last() else { return Ok(all) };
        after = Some(last.id);
        all.extend(page);
    }
}

/// Reads every record of `store`.
pub async fn read(store: &AnyStore) -> Result<Found, StoreError> {
    let mut found = Found::default();
    for session in all_of(store, ResourceKind::Session).await? {
        let mut statements = Vec::new();
        let mut after = None;
        loop {
            let page = store.list_statements(session.id, after, PAGE).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            statements.extend(page);
        }
        found.sessions.push((session, statements));
    }
    found.batches = all_of(store, ResourceKind::Batch).await?;
    Ok(found)
}

/// A record's state, if it can be read.
fn state_of(stored: &Stored) -> Option<SessionState> {
    #[derive(serde::Deserialize)]
    struct State {
        state: SessionState,
    }
    serde_json::from_slice::<State>(&stored.bytes).ok().map(|s| s.state)
}

impl Found {
    /// Whether the processes of `kind` `id` are to be spared at start-up: its record is live
    /// (and readable), so its launch is taken back.
    pub fn spares(&self, kind: ResourceKind, id: u32) -> bool {
        let live = |stored: &Stored| stored.id == id && state_of(stored).is_some_and(|s| !s.is_terminal());
        match kind {
            ResourceKind::Session => self.sessions.iter().any(|(s, _)| live(s)),
            ResourceKind::Batch => self.batches.iter().any(live),
        }
    }

    /// The ids of every record of `kind` (their directories are kept).
    pub fn ids(&self, kind: ResourceKind) -> HashSet<u32> {
        match kind {
            ResourceKind::Session => self.sessions.iter().map(|(s, _)| s.id).collect(),
            ResourceKind::Batch => self.batches.iter().map(|b| b.id).collect(),
        }
    }
}

/// What start-up took back.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Sessions and batches whose launches still ran and were taken back.
    pub resumed: usize,
    /// Finished ones, kept until their retention ends (with those that ended while the
    /// gateway was down).
    pub finished: usize,
    /// Records that could not be decoded (left in the store).
    pub unreadable: usize,
}

/// Takes back everything `found` holds.
pub async fn restore(
    found: Found,
    sessions: &Arc<SessionManager>,
    batches: &Arc<BatchManager>,
    audit: &AuditLog,
) -> Summary {
    let mut summary = Summary::default();
    let mut count = |live: bool| {
        if live {
            summary.resumed += 1;
        } else {
            summary.finished += 1;
        }
    };
    let mut unreadable = Vec::new();
    for (stored, statements) in &found.sessions {
        match sessions.restore(stored, statements).await {
            Ok(session) => count(!session.state().is_terminal()),
            Err(why) => unreadable.push((ResourceKind::Session, stored.id, why)),
        }
    }
    for stored in &found.batches {
        match batches.restore(stored).await {
            Ok(batch) => count(!batch.state().is_terminal()),
            Err(why) => unreadable.push((ResourceKind::Batch, stored.id, why)),
        }
    }
    for (kind, id, why) in &unreadable {
        // Nothing can manage its launch (no API reaches a record that is not taken back): it
        // stops, and its record stays for an operator.
        super::batch::stop_leftovers(sessions.config(), kind.plural(), *id);
        tracing::error!(
            kind = kind.as_str(),
            id,
            reason = %why,
            "a stored record cannot be decoded: what still ran of its launch was stopped; the record is left in the \
             store, untouched, and its id is never reused"
        );
        audit.record(
            AuditEvent::security("record_unreadable", Decision::Error)
                .resource(format!("{}:{id}", kind.as_str()))
                .reason(format!("its launch stopped, its record left in the store and skipped: {why}")),
        );
    }
    summary.unreadable = unreadable.len();
    summary
}
