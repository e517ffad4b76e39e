//! The embedded store: one SQLite database file (rusqlite, SQLite compiled in).
//!
//! WAL journal, `synchronous = FULL` (a change is on disk when its call returns), one
//! connection behind a mutex (one writer), the schema versioned by `PRAGMA user_version` with
//! migrations in order. The file is 0600 in a 0700 directory. A file that is not a sparkgate
//! database, or one written by a newer version, is refused with a message naming it — and is
//! never changed: an operator decides what to do with it.

use super::{Meta, Store, StoreError, Stored, Version, Write};
use crate::acl::ResourceKind;
use crate::engine::ids::IdCounter;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

/// The schema, one entry per version: applying entry `n` takes a database from version `n` to
/// `n + 1`. Never edit an entry once released; add one.
const MIGRATIONS: &[&str] = &[
    // 1: records of sessions and batches, the id counters.
    "PRAGMA application_id = 1397770068;
     CREATE TABLE counters (
         kind TEXT PRIMARY KEY,
         next INTEGER NOT NULL
     );
     CREATE TABLE records (
         kind TEXT NOT NULL,
         id INTEGER NOT NULL,
         version INTEGER NOT NULL,
         name TEXT,
         effective_user TEXT NOT NULL,
         bytes BLOB NOT NULL,
         PRIMARY KEY (kind, id)
     );
     CREATE UNIQUE INDEX records_by_name ON records (kind, name) WHERE name IS NOT NULL;",
    // 2: sessions' statements.
    "CREATE TABLE statements (
         session INTEGER NOT NULL,
         id INTEGER NOT NULL,
         version INTEGER NOT NULL,
         bytes BLOB NOT NULL,
         PRIMARY KEY (session, id)
     );",
    // 3: the gateway's own values (the audit chain's head).
    "CREATE TABLE meta (
         key TEXT PRIMARY KEY,
         bytes BLOB NOT NULL
     );",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Why the database could not be opened. Each message names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The file (or its directory) could not be created or opened.
    #[error("{}: {why}", path.display())]
    Io {
        /// The database file.
        path: PathBuf,
        /// What failed.
        why: String,
    },
    /// The file is not a usable SQLite database (garbage, truncated, damaged).
    #[error(
        "{}: not a usable sparkgate store ({why}); the gateway changed nothing — restore it from a backup, \
         or move it aside to start with an empty store",
        path.display()
    )]
    Damaged {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        why: String,
    },
    /// Written by a newer sparkgate, whose schema this one does not know.
    #[error(
        "{}: its schema version {found} is newer than this sparkgate's ({SCHEMA_VERSION}); run the newer version \
         or restore a backup",
        path.display()
    )]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// Its schema version.
        found: u32,
    },
}

/// The embedded store.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
    /// The durable file counters (sessions, batches), kept ahead of the database's.
    counters: Arc<(IdCounter, IdCounter)>,
}

fn kind_key(kind: ResourceKind) -> &'static str {
    kind.as_str()
}

fn failed(e: rusqlite::Error) -> StoreError {
    StoreError::Failed(format!("the store's database: {e}"))
}

/// Marks a database as a sparkgate store (`PRAGMA application_id`, "SPGT").
const APPLICATION_ID: i32 = 0x5350_4754;

/// Whether SQLite's error is about the file's content (as opposed to access, locks, the disk).
fn is_content_error(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode::{DatabaseCorrupt, NotADatabase};
    matches!(e.sqlite_error_code(), Some(DatabaseCorrupt | NotADatabase))
}

impl SqliteStore {
    /// Opens (or creates) the database at `path` and brings its schema up to date. Its id
    /// counters start at least where the durable file `counters` (sessions, batches) are, and
    /// keep those ahead of every id it hands out.
    ///
    /// An existing file is examined on a read-only connection first: one that is not a
    /// sparkgate store, is damaged or is newer is refused and left exactly as it was.
    pub fn open(path: &Path, counters: (IdCounter, IdCounter)) -> Result<Self, OpenError> {
        let io = |why: String| OpenError::Io { path: path.to_path_buf(), why };
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        crate::fs::create_private_dir(dir).map_err(|e| io(e.to_string()))?;
        let existing = std::fs::metadata(path).map(|m| m.len() > 0).unwrap_or(false);
        if existing {
            examine(path)?;
            owner_only(path).map_err(|e| io(e.to_string()))?;
        } else if !path.exists() {
            // Created 0600 here, before SQLite opens it (SQLite would use the umask).
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| io(e.to_string()))?;
            crate::fs::sync_dir(dir).map_err(|e| io(e.to_string()))?;
        }
        let classify = |e: rusqlite::Error| {
            if is_content_error(&e) {
                OpenError::Damaged { path: path.to_path_buf(), why: e.to_string() }
            } else {
                io(e.to_string())
            }
        };
        // Never created here: the file above is the one opened.
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn = Connection::open_with_flags(path, flags).map_err(classify)?;
        conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(classify)?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0)).map_err(classify)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(io(format!("the database would not use a write-ahead log (journal mode {mode})")));
        }
        conn.pragma_update(None, "synchronous", "FULL").map_err(classify)?;
        let found: u32 = conn.pragma_query_value(None, "user_version", |row| row.get(0)).map_err(classify)?;
        migrate(&mut conn, found).map_err(classify)?;
        let counters = Arc::new(counters);
        let tx = conn.transaction().map_err(classify)?;
        for (kind, floor) in [(ResourceKind::Session, counters.0.peek()), (ResourceKind::Batch, counters.1.peek())] {
            tx.execute(
                "INSERT INTO counters (kind, next) VALUES (?1, ?2)
                 ON CONFLICT (kind) DO UPDATE SET next = max(next, excluded.next)",
                params![kind_key(kind), floor],
            )
            .map_err(classify)?;
        }
        tx.commit().map_err(classify)?;
        Ok(Self { path: path.to_path_buf(), conn: Arc::new(Mutex::new(conn)), counters })
    }

    /// Deletes every record (not the counters): what an earlier run stored, at start-up, while
    /// the gateway does not yet take its sessions and batches back. Their files have been moved
    /// aside (see [`crate::engine::ids`]); their names become free. Returns how many there were.
    pub fn forget_earlier_run(&self) -> Result<usize, StoreError> {
        let conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        conn.execute("DELETE FROM statements", []).map_err(failed)?;
        let records = conn.execute("DELETE FROM records", []).map_err(failed)?;
        // Give the space back: SQLite keeps freed pages in the file (reused, never returned),
        // so an earlier run's large outputs would otherwise hold their disk for good.
        conn.execute_batch("VACUUM; PRAGMA wal_checkpoint(TRUNCATE);").map_err(failed)?;
        Ok(records)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `work` on the connection in a blocking thread (SQLite waits for the disk).
    async fn with<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || work(&mut conn.lock().unwrap_or_else(PoisonError::into_inner)))
            .await
            .map_err(|e| StoreError::Failed(format!("the store's worker stopped: {e}")))?
    }
}

/// Checks an existing database on a read-only connection, which can neither roll back a
/// journal nor checkpoint a log into the file: a refused file is left exactly as it was.
fn examine(path: &Path) -> Result<(), OpenError> {
    let damaged = |why: String| OpenError::Damaged { path: path.to_path_buf(), why };
    let classify = |e: rusqlite::Error| {
        if is_content_error(&e) {
            damaged(e.to_string())
        } else {
            OpenError::Io { path: path.to_path_buf(), why: e.to_string() }
        }
    };
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(classify)?;
    conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(classify)?;
    let version: u32 = conn.pragma_query_value(None, "user_version", |row| row.get(0)).map_err(classify)?;
    let application: i32 = conn.pragma_query_value(None, "application_id", |row| row.get(0)).map_err(classify)?;
    let objects: u32 = conn.query_row("SELECT count(*) FROM sqlite_master", [], |row| row.get(0)).map_err(classify)?;
    if application != APPLICATION_ID && (version > 0 || objects > 0) {
        return Err(damaged("it is another application's database".into()));
    }
    if version > SCHEMA_VERSION {
        return Err(OpenError::TooNew { path: path.to_path_buf(), found: version });
    }
    let check: String = conn.pragma_query_value(None, "quick_check", |row| row.get(0)).map_err(classify)?;
    if check != "ok" {
        return Err(damaged(check));
    }
    Ok(())
}

/// Makes the database and its log files owner-only (a restored backup takes the umask's mode).
fn owner_only(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let file = Path::new(&name);
        let Ok(meta) = std::fs::metadata(file) else { continue };
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(file = %file.display(), "the store was readable by others: made owner-only (0600)");
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(())
}

fn migrate(conn: &mut Connection, from: u32) -> rusqlite::Result<()> {
    for (version, sql) in MIGRATIONS.iter().enumerate().skip(from as usize) {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", version as u32 + 1)?;
        tx.commit()?;
    }
    Ok(())
}

fn current_version(
    tx: &rusqlite::Transaction<'_>,
    kind: ResourceKind,
    id: u32,
    expected: Version,
) -> Result<(), StoreError> {
    let found: Option<u64> = tx
        .query_row("SELECT version FROM records WHERE kind = ?1 AND id = ?2", params![kind_key(kind), id], |row| {
            row.get::<_, i64>(0).map(|v| v.max(0) as u64)
        })
        .optional()
        .map_err(failed)?;
    match found {
        None => Err(StoreError::Missing { kind: kind.as_str(), id }),
        Some(found) if found != expected => Err(StoreError::Conflict { kind: kind.as_str(), id, expected, found }),
        Some(_) => Ok(()),
    }
}

/// One write of [`Store::apply`] inside its transaction.
fn apply_one(tx: &rusqlite::Transaction<'_>, write: Write) -> Result<Version, StoreError> {
    match write {
        Write::Update { kind, id, expected, bytes } => {
            current_version(tx, kind, id, expected)?;
            tx.execute(
                "UPDATE records SET version = version + 1, bytes = ?3 WHERE kind = ?1 AND id = ?2",
                params![kind_key(kind), id, bytes],
            )
            .map_err(failed)?;
            Ok(expected + 1)
        }
        Write::PutStatement { session, statement, expected, bytes } => {
            let found: Option<u64> = tx
                .query_row(
                    "SELECT version FROM statements WHERE session = ?1 AND id = ?2",
                    [session, statement],
                    |row| row.get::<_, i64>(0).map(|v| v.max(0) as u64),
                )
                .optional()
                .map_err(failed)?;
            let kind = "statement";
            match (found, expected) {
                (None, None) => {
                    tx.execute(
                        "INSERT INTO statements (session, id, version, bytes) VALUES (?1, ?2, 1, ?3)",
                        params![session, statement, bytes],
                    )
                    .map_err(failed)?;
                    Ok(1)
                }
                (Some(_), None) => Err(StoreError::Exists { kind, id: statement }),
                (None, Some(_)) => Err(StoreError::Missing { kind, id: statement }),
                (Some(found), Some(expected)) if found != expected => {
                    Err(StoreError::Conflict { kind, id: statement, expected, found })
                }
                (Some(found), Some(_)) => {
                    tx.execute(
                        "UPDATE statements SET version = ?3, bytes = ?4 WHERE session = ?1 AND id = ?2",
                        params![session, statement, (found + 1) as i64, bytes],
                    )
                    .map_err(failed)?;
                    Ok(found + 1)
                }
            }
        }
        Write::DeleteStatement { session, statement } => {
            tx.execute("DELETE FROM statements WHERE session = ?1 AND id = ?2", [session, statement])
                .map_err(failed)?;
            Ok(0)
        }
    }
}

fn stored(row: &rusqlite::Row<'_>) -> rusqlite::Result<Stored> {
    Ok(Stored {
        id: row.get(0)?,
        version: row.get::<_, i64>(1)?.max(0) as u64,
        meta: Meta { name: row.get(2)?, effective_user: row.get(3)? },
        bytes: row.get(4)?,
    })
}

impl Store for SqliteStore {
    async fn next_id(&self, kind: ResourceKind) -> Result<u32, StoreError> {
        let counters = self.counters.clone();
        self.with(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(failed)?;
            let next: u32 = tx
                .query_row("SELECT next FROM counters WHERE kind = ?1", [kind_key(kind)], |row| row.get(0))
                .optional()
                .map_err(failed)?
                .unwrap_or(0);
            let after = next.checked_add(1).ok_or_else(|| StoreError::Failed(format!("no ids are left for {}", kind.plural())))?;
            tx.execute(
                "INSERT INTO counters (kind, next) VALUES (?1, ?2) ON CONFLICT (kind) DO UPDATE SET next = excluded.next",
                params![kind_key(kind), after],
            )
            .map_err(failed)?;
            tx.commit().map_err(failed)?;
            let file = match kind {
                ResourceKind::Session => &counters.0,
                ResourceKind::Batch => &counters.1,
            };
            // The file counter follows, before the id is handed out: a database that is lost or
            // moved aside cannot bring an id back (the files are the floor of the next one).
            file.raise_to(next.saturating_add(1)).map_err(|e| StoreError::Failed(e.to_string()))?;
            Ok(next)
        })
        .await
    }

    async fn create(&self, kind: ResourceKind, id: u32, meta: Meta, bytes: Vec<u8>) -> Result<Version, StoreError> {
        self.with(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(failed)?;
            let exists: bool = tx
                .query_row("SELECT 1 FROM records WHERE kind = ?1 AND id = ?2", params![kind_key(kind), id], |_| Ok(()))
                .optional()
                .map_err(failed)?
                .is_some();
            if exists {
                return Err(StoreError::Exists { kind: kind.as_str(), id });
            }
            if let Some(name) = &meta.name {
                let taken = tx
                    .query_row(
                        "SELECT 1 FROM records WHERE kind = ?1 AND name = ?2",
                        params![kind_key(kind), name],
                        |_| Ok(()),
                    )
                    .optional()
                    .map_err(failed)?
                    .is_some();
                if taken {
                    return Err(StoreError::NameTaken);
                }
            }
            tx.execute(
                "INSERT INTO records (kind, id, version, name, effective_user, bytes) VALUES (?1, ?2, 1, ?3, ?4, ?5)",
                params![kind_key(kind), id, meta.name, meta.effective_user, bytes],
            )
            .map_err(failed)?;
            tx.commit().map_err(failed)?;
            Ok(1)
        })
        .await
    }

    async fn update(
        &self,
        kind: ResourceKind,
        id: u32,
        expected: Version,
        bytes: Vec<u8>,
    ) -> Result<Version, StoreError> {
        self.apply(vec![Write::Update { kind, id, expected, bytes }]).await.map(|v| v[0])
    }

    async fn delete(&self, kind: ResourceKind, id: u32, expected: Version) -> Result<(), StoreError> {
        self.with(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(failed)?;
            current_version(&tx, kind, id, expected)?;
            tx.execute("DELETE FROM records WHERE kind = ?1 AND id = ?2", params![kind_key(kind), id])
                .map_err(failed)?;
            if kind == ResourceKind::Session {
                tx.execute("DELETE FROM statements WHERE session = ?1", [id]).map_err(failed)?;
            }
            tx.commit().map_err(failed)
        })
        .await
    }

    async fn get(&self, kind: ResourceKind, id: u32) -> Result<Option<Stored>, StoreError> {
        self.with(move |conn| {
            conn.query_row(
                "SELECT id, version, name, effective_user, bytes FROM records WHERE kind = ?1 AND id = ?2",
                params![kind_key(kind), id],
                stored,
            )
            .optional()
            .map_err(failed)
        })
        .await
    }

    async fn find_name(&self, kind: ResourceKind, name: &str) -> Result<Option<u32>, StoreError> {
        let name = name.to_string();
        self.with(move |conn| {
            conn.query_row(
                "SELECT id FROM records WHERE kind = ?1 AND name = ?2",
                params![kind_key(kind), name],
                |row| row.get(0),
            )
            .optional()
            .map_err(failed)
        })
        .await
    }

    async fn list(&self, kind: ResourceKind, after: Option<u32>, limit: usize) -> Result<Vec<Stored>, StoreError> {
        self.with(move |conn| {
            let mut statement = conn
                .prepare_cached(
                    "SELECT id, version, name, effective_user, bytes FROM records
                     WHERE kind = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
                )
                .map_err(failed)?;
            let after = after.map_or(-1, i64::from);
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = statement.query_map(params![kind_key(kind), after, limit], stored).map_err(failed)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(failed)
        })
        .await
    }

    async fn put_statement(
        &self,
        session: u32,
        statement: u32,
        expected: Option<Version>,
        bytes: Vec<u8>,
    ) -> Result<Version, StoreError> {
        self.apply(vec![Write::PutStatement { session, statement, expected, bytes }]).await.map(|v| v[0])
    }

    async fn list_statements(&self, session: u32, after: Option<u32>, limit: usize) -> Result<Vec<Stored>, StoreError> {
        self.with(move |conn| {
            let mut statement = conn
                .prepare_cached(
                    "SELECT id, version, NULL, '', bytes FROM statements WHERE session = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
                )
                .map_err(failed)?;
            let after = after.map_or(-1, i64::from);
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = statement.query_map(params![session, after, limit], stored).map_err(failed)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(failed)
        })
        .await
    }

    async fn delete_statement(&self, session: u32, statement: u32) -> Result<(), StoreError> {
        self.apply(vec![Write::DeleteStatement { session, statement }]).await.map(|_| ())
    }

    async fn put_value(&self, key: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        let key = key.to_string();
        self.with(move |conn| {
            conn.execute(
                "INSERT INTO meta (key, bytes) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET bytes = excluded.bytes",
                params![key, bytes],
            )
            .map_err(failed)?;
            Ok(())
        })
        .await
    }

    async fn value(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = key.to_string();
        self.with(move |conn| {
            conn.query_row("SELECT bytes FROM meta WHERE key = ?1", [key], |row| row.get(0)).optional().map_err(failed)
        })
        .await
    }

    async fn apply(&self, writes: Vec<Write>) -> Result<Vec<Version>, StoreError> {
        self.with(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(failed)?;
            let versions = writes.into_iter().map(|write| apply_one(&tx, write)).collect::<Result<Vec<_>, _>>()?;
            tx.commit().map_err(failed)?;
            Ok(versions)
        })
        .await
    }
}

#[cfg(test)]
mod tests;
