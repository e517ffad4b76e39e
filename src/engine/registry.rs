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
use crate::store::{AnyStore, Meta, Store, StoreError, Version};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::time::Instant;

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
    /// When it finished, if it has.
    fn finished_at(&self) -> Option<Instant>;
    /// Its own directory (removed when it is forgotten).
    fn dir(&self) -> &Path;
    /// Its record, as the store keeps it (never a secret).
    fn record(&self) -> Vec<u8>;
}

#[derive(Debug)]
struct Live<R> {
    by_id: BTreeMap<u32, (Arc<R>, Version)>,
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
}

impl<R: Entry> Registry<R> {
    /// A registry over `store`, under `caps`, making directories in `dirs`.
    pub fn new(store: Arc<AnyStore>, caps: Caps, dirs: PathBuf) -> Self {
        Self { store, live: Mutex::default(), name_conflicts: NameConflicts::default(), caps, dirs }
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
        id.and_then(|id| live.by_id.get(&id).map(|(entry, _)| entry.clone())).ok_or_else(|| Self::not_found(key))
    }

    /// The entry with this id.
    pub fn by_id(&self, id: u32) -> Option<Arc<R>> {
        self.lock().by_id.get(&id).map(|(entry, _)| entry.clone())
    }

    /// Every entry, by id.
    pub fn list(&self) -> Vec<Arc<R>> {
        self.lock().by_id.values().map(|(entry, _)| entry.clone()).collect()
    }

    /// Whether `user` may create an entry named `name` now: the name free (refused duplicates
    /// count against the user's quota), the caps and quotas not reached. Checked before
    /// anything is written, and again when the entry is registered.
    pub fn admit(&self, name: Option<&str>, user: &str, quota: &Quota) -> Result<(), EngineError> {
        self.admit_in(&self.lock(), name, user, quota)
    }

    fn admit_in(&self, live: &Live<R>, name: Option<&str>, user: &str, quota: &Quota) -> Result<(), EngineError> {
        if let Some(name) = name {
            let limit = quota.max_name_conflicts.unwrap_or(names::DEFAULT_MAX_NAME_CONFLICTS);
            self.name_conflicts.check(user, limit)?;
            if live.by_name.contains_key(name) {
                self.name_conflicts.record(user, limit);
                return Err(EngineError::DuplicateName(R::KIND.as_str()));
            }
        }
        let counts = limits::Counts::of(live.by_id.values().map(|(entry, _)| {
            let state = entry.state();
            (state.is_live(), state.is_launching(), entry.effective_user() == user)
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
        let version = match self.store.create(R::KIND, id, meta, entry.record()).await {
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
            let admitted = self.admit_in(&live, entry.name(), entry.effective_user(), quota);
            if admitted.is_ok() {
                if let Some(name) = entry.name() {
                    live.by_name.insert(name.to_string(), id);
                }
                live.by_id.insert(id, (entry.clone(), version));
            }
            admitted
        };
        if let Err(refused) = admitted {
            self.delete_record(id, version).await;
            let _ = std::fs::remove_dir_all(entry.dir());
            return Err(refused);
        }
        Ok(())
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

    fn unregister(&self, id: u32) -> Option<(Arc<R>, Version)> {
        let mut live = self.lock();
        let removed = live.by_id.remove(&id);
        if let Some(name) = removed.as_ref().and_then(|(entry, _)| entry.name()) {
            live.by_name.remove(name);
        }
        removed
    }

    /// Forgets entry `id`: out of the registry and the store, its directory removed.
    pub async fn forget(&self, id: u32) {
        let Some((entry, version)) = self.unregister(id) else { return };
        self.delete_record(id, version).await;
        let _ = std::fs::remove_dir_all(entry.dir());
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
        live.by_id.insert(entry.id(), (entry, 0));
    }
}
