//! Where session and batch records live: the one seam every store plugs into.
//!
//! The [`Store`] trait is written for a store shared by several gateway instances (ZooKeeper)
//! as much as for the embedded one: every change of a record is conditional on the version the
//! writer last saw (compare-and-set: two writers never silently overwrite each other), a name is
//! claimed in the same atomic step as its record is created (unique names without a lock held
//! across processes), ids come from an atomic counter, and listing is paged — nothing assumes
//! that one process holds every record in memory.
//!
//! Records are opaque bytes to a store (the engine encodes them); what a store must index is
//! passed beside them ([`Meta`]). Stores: [`sqlite::SqliteStore`] (the default, an embedded
//! database) and [`memory::MemoryStore`] (records in this process, counters durable on disk as
//! [`crate::engine::ids`] keeps them). No secret is ever given to a store.

pub mod memory;
pub mod sqlite;

#[cfg(test)]
mod tests;

use crate::acl::ResourceKind;
use std::future::Future;

/// A record's version: 1 when created, one more with every update. Compare-and-set writes name
/// the version they expect.
pub type Version = u64;

/// What a store indexes beside a record's bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    /// The unique name, claimed with the record and released when it is deleted.
    pub name: Option<String>,
    /// The user it acts as (listing by user, quotas).
    pub effective_user: String,
}

/// A record as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Its id.
    pub id: u32,
    /// Its version.
    pub version: Version,
    /// What the store indexes.
    pub meta: Meta,
    /// The engine's encoding of it.
    pub bytes: Vec<u8>,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Another record of this kind already has the name.
    #[error("the name is taken")]
    NameTaken,
    /// A record with this id exists already.
    #[error("{kind} {id} exists already")]
    Exists {
        /// Session or batch.
        kind: &'static str,
        /// The id.
        id: u32,
    },
    /// No record with this id.
    #[error("no {kind} {id} is stored")]
    Missing {
        /// Session or batch.
        kind: &'static str,
        /// The id.
        id: u32,
    },
    /// The record changed since the writer read it (its version is not the one expected).
    #[error("{kind} {id} was changed by another writer (version {found}, expected {expected})")]
    Conflict {
        /// Session or batch.
        kind: &'static str,
        /// The id.
        id: u32,
        /// The version the writer expected.
        expected: Version,
        /// The version stored.
        found: Version,
    },
    /// The store itself failed (I/O, the database, the connection).
    #[error("{0}")]
    Failed(String),
}

/// One change of [`Store::apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Replace record `id` if its version is still `expected` (as [`Store::update`]).
    Update {
        /// Session or batch.
        kind: ResourceKind,
        /// The record.
        id: u32,
        /// The version the writer last saw.
        expected: Version,
        /// Its new bytes.
        bytes: Vec<u8>,
    },
    /// Write a statement (as [`Store::put_statement`]).
    PutStatement {
        /// Its session.
        session: u32,
        /// The statement.
        statement: u32,
        /// None: create it; else the version the writer last saw.
        expected: Option<Version>,
        /// Its bytes.
        bytes: Vec<u8>,
    },
    /// Delete a statement (as [`Store::delete_statement`]).
    DeleteStatement {
        /// Its session.
        session: u32,
        /// The statement.
        statement: u32,
    },
}

/// The operations every store offers. Futures are `Send`: the engine awaits them from any task.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// The next id of `kind`; it is returned only once the counter after it is durable, so no
    /// id is ever handed out twice, across restarts and instances.
    fn next_id(&self, kind: ResourceKind) -> impl Future<Output = Result<u32, StoreError>> + Send;

    /// Creates record `id` (version 1), claiming `meta.name` in the same atomic step.
    fn create(
        &self,
        kind: ResourceKind,
        id: u32,
        meta: Meta,
        bytes: Vec<u8>,
    ) -> impl Future<Output = Result<Version, StoreError>> + Send;

    /// Replaces record `id` if its version is still `expected`; returns the new version.
    fn update(
        &self,
        kind: ResourceKind,
        id: u32,
        expected: Version,
        bytes: Vec<u8>,
    ) -> impl Future<Output = Result<Version, StoreError>> + Send;

    /// Deletes record `id` (and releases its name) if its version is still `expected`.
    fn delete(
        &self,
        kind: ResourceKind,
        id: u32,
        expected: Version,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Record `id`, if stored.
    fn get(&self, kind: ResourceKind, id: u32) -> impl Future<Output = Result<Option<Stored>, StoreError>> + Send;

    /// The id of the record named `name`, if any.
    fn find_name(&self, kind: ResourceKind, name: &str)
        -> impl Future<Output = Result<Option<u32>, StoreError>> + Send;

    /// Up to `limit` records with ids above `after` (all from the start when None), by id.
    fn list(
        &self,
        kind: ResourceKind,
        after: Option<u32>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Stored>, StoreError>> + Send;

    /// Writes statement `statement` of session `session`: created when `expected` is None
    /// (refused if it exists), else replaced if its version is still `expected`. Returns its
    /// new version. A session's statements go when its record is deleted.
    fn put_statement(
        &self,
        session: u32,
        statement: u32,
        expected: Option<Version>,
        bytes: Vec<u8>,
    ) -> impl Future<Output = Result<Version, StoreError>> + Send;

    /// Up to `limit` statements of `session` with ids above `after`, by id (their `meta` is
    /// empty).
    fn list_statements(
        &self,
        session: u32,
        after: Option<u32>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Stored>, StoreError>> + Send;

    /// Deletes statement `statement` of `session` (a statement beyond the session's retention).
    fn delete_statement(&self, session: u32, statement: u32) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Makes `writes` all or none (one transaction, one sync to disk); returns each write's
    /// new version (0 for a delete).
    fn apply(&self, writes: Vec<Write>) -> impl Future<Output = Result<Vec<Version>, StoreError>> + Send;

    /// Sets the gateway's own value `key` (the audit chain's head), replacing what was there.
    fn put_value(&self, key: &str, bytes: Vec<u8>) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The gateway's own value `key`, if set.
    fn value(&self, key: &str) -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send;
}

/// The key under which the audit chain's head is kept (see [`crate::audit::ChainHead`]).
pub const AUDIT_HEAD: &str = "audit_head";

/// The store a gateway runs with, chosen by configuration: the one place a store kind is
/// plugged in.
#[derive(Debug)]
pub enum AnyStore {
    /// Records in this process (boxed: it holds its tables inline, the database a handle).
    Memory(Box<memory::MemoryStore>),
    /// The embedded database.
    Sqlite(sqlite::SqliteStore),
}

/// Where the SQLite database is: `store.path`, or `<data_dir>/state/store.db`.
pub fn sqlite_path(config: &crate::config::Config) -> std::path::PathBuf {
    config.store.path.clone().unwrap_or_else(|| config.server.data_dir.join("state").join("store.db"))
}

/// Opens the configured store at start-up (it reads and may sync the disk: call it where
/// blocking is fine). Ids continue past every id `ids` (the durable file counters and the
/// directories on disk) know of; the SQLite store keeps those counters level with its own, so
/// neither switching kinds nor losing the database repeats an id. With recovery
/// ([`crate::config::Config::recovers`]) the records are kept for [`crate::engine::recovery`];
/// without, an earlier run's records are forgotten (their files are moved aside, nothing of
/// theirs is served again, their names are free).
pub fn open(config: &crate::config::Config, ids: crate::engine::ids::Ids) -> Result<AnyStore, String> {
    let db = sqlite_path(config);
    match config.store.kind {
        crate::config::StoreKind::Sqlite => {
            let store = sqlite::SqliteStore::open(&db, (ids.sessions, ids.batches)).map_err(|e| e.to_string())?;
            if !config.recovers() {
                let forgotten = store.forget_earlier_run().map_err(|e| format!("{}: {e}", db.display()))?;
                if forgotten > 0 {
                    tracing::warn!(records = forgotten, store = %db.display(), "forgot an earlier run's sessions and batches");
                }
            }
            Ok(AnyStore::Sqlite(store))
        }
        // The SQLite store keeps the file counters level with its own: nothing to carry over.
        crate::config::StoreKind::Memory => {
            Ok(AnyStore::Memory(Box::new(memory::MemoryStore::new(ids.sessions, ids.batches))))
        }
    }
}

impl Store for AnyStore {
    async fn next_id(&self, kind: ResourceKind) -> Result<u32, StoreError> {
        match self {
            Self::Memory(s) => s.next_id(kind).await,
            Self::Sqlite(s) => s.next_id(kind).await,
        }
    }

    async fn create(&self, kind: ResourceKind, id: u32, meta: Meta, bytes: Vec<u8>) -> Result<Version, StoreError> {
        match self {
            Self::Memory(s) => s.create(kind, id, meta, bytes).await,
            Self::Sqlite(s) => s.create(kind, id, meta, bytes).await,
        }
    }

    async fn update(
        &self,
        kind: ResourceKind,
        id: u32,
        expected: Version,
        bytes: Vec<u8>,
    ) -> Result<Version, StoreError> {
        match self {
            Self::Memory(s) => s.update(kind, id, expected, bytes).await,
            Self::Sqlite(s) => s.update(kind, id, expected, bytes).await,
        }
    }

    async fn delete(&self, kind: ResourceKind, id: u32, expected: Version) -> Result<(), StoreError> {
        match self {
            Self::Memory(s) => s.delete(kind, id, expected).await,
            Self::Sqlite(s) => s.delete(kind, id, expected).await,
        }
    }

    async fn get(&self, kind: ResourceKind, id: u32) -> Result<Option<Stored>, StoreError> {
        match self {
            Self::Memory(s) => s.get(kind, id).await,
            Self::Sqlite(s) => s.get(kind, id).await,
        }
    }

    async fn find_name(&self, kind: ResourceKind, name: &str) -> Result<Option<u32>, StoreError> {
        match self {
            Self::Memory(s) => s.find_name(kind, name).await,
            Self::Sqlite(s) => s.find_name(kind, name).await,
        }
    }

    async fn list(&self, kind: ResourceKind, after: Option<u32>, limit: usize) -> Result<Vec<Stored>, StoreError> {
        match self {
            Self::Memory(s) => s.list(kind, after, limit).await,
            Self::Sqlite(s) => s.list(kind, after, limit).await,
        }
    }

    async fn put_statement(
        &self,
        session: u32,
        statement: u32,
        expected: Option<Version>,
        bytes: Vec<u8>,
    ) -> Result<Version, StoreError> {
        match self {
            Self::Memory(s) => s.put_statement(session, statement, expected, bytes).await,
            Self::Sqlite(s) => s.put_statement(session, statement, expected, bytes).await,
        }
    }

    async fn list_statements(&self, session: u32, after: Option<u32>, limit: usize) -> Result<Vec<Stored>, StoreError> {
        match self {
            Self::Memory(s) => s.list_statements(session, after, limit).await,
            Self::Sqlite(s) => s.list_statements(session, after, limit).await,
        }
    }

    async fn delete_statement(&self, session: u32, statement: u32) -> Result<(), StoreError> {
        match self {
            Self::Memory(s) => s.delete_statement(session, statement).await,
            Self::Sqlite(s) => s.delete_statement(session, statement).await,
        }
    }

    async fn apply(&self, writes: Vec<Write>) -> Result<Vec<Version>, StoreError> {
        match self {
            Self::Memory(s) => s.apply(writes).await,
            Self::Sqlite(s) => s.apply(writes).await,
        }
    }

    async fn put_value(&self, key: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        match self {
            Self::Memory(s) => s.put_value(key, bytes).await,
            Self::Sqlite(s) => s.put_value(key, bytes).await,
        }
    }

    async fn value(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Self::Memory(s) => s.value(key).await,
            Self::Sqlite(s) => s.value(key).await,
        }
    }
}
