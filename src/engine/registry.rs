//! One registry for sessions and batches: ids from the store's counter, unique names, lookup
//! by id or name, listing, the caps and quotas on what may be created, and forgetting finished
//! entries. Each entry's record is written to the [`Store`] before it is acknowledged; the
//! live objects (with their processes and channels) are kept here for the entries this gateway
//! runs.

use super::limits::{self, Caps};
use super::names::{self, NameConflicts};
use super::state::SessionState;
use super::EngineError;
use crate::acl::policy::Quota;
use crate::acl::ResourceKind;
use crate::store::{AnyStore, Meta, Store, StoreError, Version, Write};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::time::Instant;

/// Called by an entry when something its record shows changed (see [`Registry::on_change`]).
#[derive(Clone)]
pub struct OnChange(Arc<dyn Fn() + Send + Sync>);

impl OnChange {
    /// Tells the registry.
    pub fn call(&self) {
        (self.0)();
    }

    /// This hook, then `also`.
    pub fn then(self, also: impl Fn() + Send + Sync + 'static) -> Self {
        Self(Arc::new(move || {
            (self.0)();
            also();
        }))
    }
}

/// Calls its hook when dropped: the first line of a method that changes what is stored, so
/// it fires once the change is made (and any lock released), on every path out.
#[derive(Debug)]
pub struct Changing<'a>(pub Option<&'a OnChange>);

impl Drop for Changing<'_> {
    fn drop(&mut self) {
        if let Some(on_change) = self.0 {
            on_change.call();
        }
    }
}

impl std::fmt::Debug for OnChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnChange")
    }
}

/// What the registry needs of a session or a batch.
pub trait Entry: Send + Sync + 'static {
    /// Session or batch.
    const KIND: ResourceKind;
    /// Its id.
    fn id(&self) -> u32;
    /// Its unique name, if it has one.
    fn name(&self) -> Option<&str>;
    /// The user it acts as (quotas).
    fn effective_user(&self) -> &str;
    /// Its state now.
    fn state(&self) -> SessionState;
    /// Whether it counts against the caps and quotas now (live, unless it is on its way out
    /// without anyone's work in it: an evicted warm driver).
    fn counted(&self) -> bool {
        self.state().is_live()
    }
    /// When it finished, if it has.
    fn finished_at(&self) -> Option<Instant>;
    /// Its own directory (removed when it is forgotten).
    fn dir(&self) -> &Path;
    /// Its record, as the store keeps it (never a secret).
    fn record(&self) -> Vec<u8>;
    /// Its children (a session's statements) by id, each with a fingerprint that changes
    /// whenever its record would: only those whose fingerprint changed are encoded and
    /// written (a large output is not encoded again for every ping). What is no longer
    /// listed is deleted from the store.
    fn children(&self) -> Vec<(u32, u64)> {
        Vec::new()
    }
    /// Child `id`'s record, as the store keeps it.
    fn child_record(&self, _id: u32) -> Option<Vec<u8>> {
        None
    }
}

/// What was last written of an entry: its version and a digest of its bytes, and its
/// children's versions and fingerprints.
#[derive(Debug, Default)]
struct Written {
    version: Version,
    digest: u64,
    children: HashMap<u32, (Version, u64)>,
}

fn digest(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

/// Entries whose records changed and are not written yet; one writer at a time.
#[derive(Debug, Default)]
struct Changes {
    dirty: Mutex<std::collections::BTreeSet<u32>>,
    /// Held while records are written: writes of one entry never overtake each other.
    writer: tokio::sync::Mutex<HashMap<u32, Written>>,
    /// Whether a writer task is on its way (changes marked meanwhile go with it).
    scheduled: std::sync::atomic::AtomicBool,
}

#[derive(Debug)]
struct Live<R> {
    by_id: BTreeMap<u32, Arc<R>>,
    by_name: HashMap<String, u32>,
}

impl<R> Default for Live<R> {
    fn default() -> Self {
        Self { by_id: BTreeMap::new(), by_name: HashMap::new() }
    }
}

/// The sessions (or batches) of a gateway.
#[derive(Debug)]
pub struct Registry<R> {
    store: Arc<AnyStore>,
    live: Mutex<Live<R>>,
    /// Refused duplicate names per user (a quota against probing and squatting).
    name_conflicts: NameConflicts,
    caps: Caps,
    /// Where the entries' directories are made (`<data_dir>/sessions` or `/batches`).
    dirs: PathBuf,
    changes: Changes,
}

impl<R: Entry> Registry<R> {
    /// A registry over `store`, under `caps`, making directories in `dirs`.
    pub fn new(store: Arc<AnyStore>, caps: Caps, dirs: PathBuf) -> Self {
        Self {
            store,
            live: Mutex::default(),
            name_conflicts: NameConflicts::default(),
            caps,
            dirs,
            changes: Changes::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Live<R>> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn not_found(key: &str) -> EngineError {
        match R::KIND {
            ResourceKind::Session => EngineError::SessionNotFound(key.to_string()),
            ResourceKind::Batch => EngineError::BatchNotFound(key.to_string()),
        }
    }

    /// The entry `key` names: an id (all digits) or a name.
    pub fn get(&self, key: &str) -> Result<Arc<R>, EngineError> {
        let live = self.lock();
        let id = if !key.is_empty() && key.bytes().all(|b| b.is_ascii_digit()) {
            key.parse::<u32>().ok()
        } else {
            live.by_name.get(key).copied()
        };
        id.and_then(|id| live.by_id.get(&id).cloned()).ok_or_else(|| Self::not_found(key))
    }

    /// The entry with this id.
    pub fn by_id(&self, id: u32) -> Option<Arc<R>> {
        self.lock().by_id.get(&id).cloned()
    }

    /// Every entry, by id.
    pub fn list(&self) -> Vec<Arc<R>> {
        self.lock().by_id.values().cloned().collect()
    }

    /// Whether `user` may create an entry named `name` now: the name free (refused duplicates
    /// count against the user's quota), the caps and quotas not reached. Checked before
    /// anything is written, and again when the entry is registered.
    pub fn admit(&self, name: Option<&str>, user: &str, quota: &Quota) -> Result<(), EngineError> {
        self.admit_in(&self.lock(), name, user, quota, None)
    }

    /// Whether `user` would be admitted under `quota` now were entry `except` not there (a
    /// warm driver about to become the request's own session).
    pub fn admit_instead_of(&self, except: u32, user: &str, quota: &Quota) -> Result<(), EngineError> {
        self.admit_in(&self.lock(), None, user, quota, Some(except))
    }

    fn admit_in(
        &self,
        live: &Live<R>,
        name: Option<&str>,
        user: &str,
        quota: &Quota,
        except: Option<u32>,
    ) -> Result<(), EngineError> {
        if let Some(name) = name {
            let limit = quota.max_name_conflicts.unwrap_or(names::DEFAULT_MAX_NAME_CONFLICTS);
            self.name_conflicts.check(user, limit)?;
            if live.by_name.contains_key(name) {
                self.name_conflicts.record(user, limit);
                return Err(EngineError::DuplicateName(R::KIND.as_str()));
            }
        }
        let counts = limits::Counts::of(live.by_id.values().filter(|entry| Some(entry.id()) != except).map(|entry| {
            let state = entry.state();
            (entry.counted(), state.is_launching(), entry.effective_user() == user)
        }));
        limits::admit(counts, self.caps, quota, user)
    }

    /// A new id from the store's counter (durable before it is returned; awaited outside the
    /// registry lock, which every lookup takes) and its directory, created exclusively: never
    /// a directory or file an earlier entry left.
    pub async fn reserve(&self) -> Result<(u32, PathBuf), EngineError> {
        let id = self.store.next_id(R::KIND).await.map_err(|e| EngineError::Launch(e.to_string()))?;
        let dir = self.dirs.join(id.to_string());
        super::ids::create_fresh_dir(&dir).map_err(|e| EngineError::Launch(e.to_string()))?;
        Ok((id, dir))
    }

    /// Registers `entry` (made in a directory from [`Registry::reserve`]): its record is
    /// written to the store first, claiming its name there, and only then, if it is still
    /// admitted, does it become visible here — nothing can find, delete or count an entry
    /// whose record is not durable. Refused, its record and directory are removed.
    pub async fn register(&self, entry: Arc<R>, quota: &Quota) -> Result<(), EngineError> {
        let id = entry.id();
        let kind = R::KIND.as_str();
        let meta = Meta { name: entry.name().map(str::to_string), effective_user: entry.effective_user().to_string() };
        let record = entry.record();
        let record_digest = digest(&record);
        // Held from before the record exists: no change of it can be written ahead of it.
        let mut written = self.changes.writer.lock().await;
        let version = match self.store.create(R::KIND, id, meta, record).await {
            Ok(version) => version,
            Err(e) => {
                let _ = std::fs::remove_dir_all(entry.dir());
                return Err(match e {
                    StoreError::NameTaken => {
                        // Taken since the early check (another create, perhaps on another
                        // gateway): a refused duplicate like any other.
                        let limit = quota.max_name_conflicts.unwrap_or(names::DEFAULT_MAX_NAME_CONFLICTS);
                        self.name_conflicts.record(entry.effective_user(), limit);
                        EngineError::DuplicateName(kind)
                    }
                    other => EngineError::Launch(format!("storing {kind} {id}: {other}")),
                });
            }
        };
        let admitted = {
            let mut live = self.lock();
            let admitted = self.admit_in(&live, entry.name(), entry.effective_user(), quota, None);
            if admitted.is_ok() {
                if let Some(name) = entry.name() {
                    live.by_name.insert(name.to_string(), id);
                }
                live.by_id.insert(id, entry.clone());
            }
            admitted
        };
        if let Err(refused) = admitted {
            self.delete_record(id, version).await;
            let _ = std::fs::remove_dir_all(entry.dir());
            return Err(refused);
        }
        written.insert(id, Written { version, digest: record_digest, children: HashMap::new() });
        Ok(())
    }

    /// Takes back `entry`, rebuilt from its record (stored at `version`, as `stored`) and its
    /// children's (`children`: id and version) after a restart: visible at once, and written
    /// again only where it comes to differ from what is stored.
    pub async fn restore(&self, entry: Arc<R>, version: Version, stored: &[u8], children: &[(u32, Version)]) {
        let id = entry.id();
        let fingerprints: HashMap<u32, u64> = entry.children().into_iter().collect();
        let children = children
            .iter()
            // One the entry no longer has goes at its next write.
            .map(|(child, version)| (*child, (*version, fingerprints.get(child).copied().unwrap_or(0))))
            .collect();
        let mut written = self.changes.writer.lock().await;
        written.insert(id, Written { version, digest: digest(stored), children });
        let mut live = self.lock();
        if let Some(name) = entry.name() {
            live.by_name.insert(name.to_string(), id);
        }
        live.by_id.insert(id, entry);
    }

    /// Deletes record `id`, last written at `version` by this gateway; should another write
    /// have come in between, at the version stored (this gateway owns the entry).
    async fn delete_record(&self, id: u32, version: Version) {
        let result = match self.store.delete(R::KIND, id, version).await {
            Err(StoreError::Conflict { found, .. }) => self.store.delete(R::KIND, id, found).await,
            Err(StoreError::Missing { .. }) => Ok(()),
            other => other,
        };
        if let Err(e) = result {
            tracing::warn!(kind = R::KIND.as_str(), id, error = %e, "could not delete the stored record");
        }
    }

    fn unregister(&self, id: u32) -> Option<Arc<R>> {
        let mut live = self.lock();
        let removed = live.by_id.remove(&id);
        if let Some(name) = removed.as_ref().and_then(|entry| entry.name()) {
            live.by_name.remove(name);
        }
        removed
    }

    /// Forgets entry `id`: out of the registry and the store (with its children), its
    /// directory removed.
    pub async fn forget(&self, id: u32) {
        let Some(entry) = self.unregister(id) else { return };
        let mut written = self.changes.writer.lock().await;
        let version = written.remove(&id).map_or(1, |w| w.version);
        self.delete_record(id, version).await;
        drop(written);
        let _ = std::fs::remove_dir_all(entry.dir());
    }

    /// The hook entry `id` calls when it changed: marks it and, unless one is on its way,
    /// starts a writer. Holds the registry weakly (`owner` keeps it).
    pub fn on_change<O: Send + Sync + 'static>(owner: &Arc<O>, registry: fn(&O) -> &Self, id: u32) -> OnChange {
        let weak = Arc::downgrade(owner);
        OnChange(Arc::new(move || {
            let Some(owner) = weak.upgrade() else { return };
            if registry(&owner).mark_changed(id) {
                tokio::spawn(async move { registry(&owner).write_changes().await });
            }
        }))
    }

    /// Notes that entry `id` changed; returns whether the caller should start a writer
    /// ([`Registry::write_changes`]): false when one is already on its way.
    pub fn mark_changed(&self, id: u32) -> bool {
        self.changes.dirty.lock().unwrap_or_else(PoisonError::into_inner).insert(id);
        !self.changes.scheduled.swap(true, std::sync::atomic::Ordering::AcqRel)
    }

    /// Writes every changed entry's record and children (those whose bytes differ from what
    /// was last written), until none is left. A failed write is logged and tried again at the
    /// next change.
    pub async fn write_changes(&self) {
        loop {
            self.changes.scheduled.store(false, std::sync::atomic::Ordering::Release);
            let dirty = std::mem::take(&mut *self.changes.dirty.lock().unwrap_or_else(PoisonError::into_inner));
            if dirty.is_empty() {
                return;
            }
            for id in dirty {
                if let Err(e) = self.write_one(id).await {
                    tracing::warn!(kind = R::KIND.as_str(), id, error = %e, "could not store a change");
                }
            }
        }
    }

    /// Writes entry `id`'s changes now and says whether they are durable (a statement's `201`
    /// waits for this).
    pub async fn flush(&self, id: u32) -> Result<(), StoreError> {
        self.write_one(id).await
    }

    async fn write_one(&self, id: u32) -> Result<(), StoreError> {
        let mut written = self.changes.writer.lock().await;
        // Forgotten meanwhile (or never registered): nothing to write.
        let Some(entry) = self.by_id(id) else { return Ok(()) };
        let Some(last) = written.get_mut(&id) else { return Ok(()) };
        // Everything that changed, in one transaction (one sync to disk).
        let mut writes = Vec::new();
        let mut after: Vec<(Option<u32>, u64)> = Vec::new();
        let record = entry.record();
        let record_digest = digest(&record);
        if record_digest != last.digest {
            writes.push(Write::Update { kind: R::KIND, id, expected: last.version, bytes: record });
            after.push((None, record_digest));
        }
        let children = entry.children();
        let listed: std::collections::HashSet<u32> = children.iter().map(|(child, _)| *child).collect();
        for (child, fingerprint) in children {
            let before = last.children.get(&child).copied();
            if before.is_some_and(|(_, f)| f == fingerprint) {
                continue;
            }
            let Some(bytes) = entry.child_record(child) else { continue };
            writes.push(Write::PutStatement { session: id, statement: child, expected: before.map(|(v, _)| v), bytes });
            after.push((Some(child), fingerprint));
        }
        let gone: Vec<u32> = last.children.keys().filter(|child| !listed.contains(child)).copied().collect();
        for child in &gone {
            writes.push(Write::DeleteStatement { session: id, statement: *child });
        }
        if writes.is_empty() {
            return Ok(());
        }
        let versions = self.store.apply(writes).await?;
        for ((child, digest), version) in after.into_iter().zip(versions) {
            match child {
                None => (last.version, last.digest) = (version, digest),
                Some(child) => {
                    last.children.insert(child, (version, digest));
                }
            }
        }
        for child in gone {
            last.children.remove(&child);
        }
        Ok(())
    }

    /// The finished entries to forget now: those finished `retain` ago or longer, and beyond
    /// that the oldest beyond `max` in all or `max_per_user` of one user (see
    /// [`limits::excess_finished`]).
    pub fn finished_to_forget(&self, retain: Option<std::time::Duration>, max: usize, max_per_user: usize) -> Vec<u32> {
        let now = Instant::now();
        let mut finished: Vec<(Instant, Arc<R>)> =
            self.list().into_iter().filter_map(|e| e.finished_at().map(|f| (f, e))).collect();
        finished.sort_by_key(|(at, e)| (*at, e.id()));
        let (expired, kept): (Vec<_>, Vec<_>) =
            finished.iter().partition(|(at, _)| retain.is_some_and(|r| now.duration_since(*at) >= r));
        let entries: Vec<(&str, u32)> = kept.iter().map(|(_, e)| (e.effective_user(), e.id())).collect();
        expired.iter().map(|(_, e)| e.id()).chain(limits::excess_finished(&entries, max, max_per_user)).collect()
    }

    /// Registers `entry` without the store or any check (unit tests drive it by hand).
    #[cfg(test)]
    pub(crate) fn insert_for_test(&self, entry: Arc<R>) {
        let mut live = self.lock();
        if let Some(name) = entry.name() {
            live.by_name.insert(name.to_string(), entry.id());
        }
        live.by_id.insert(entry.id(), entry);
    }
}
