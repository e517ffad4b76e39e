//! Ids that never repeat, and per-resource directories that are never reused.
//!
//! A session or batch id is handed out only after the counter that follows it is on disk
//! (written to a temporary file, synced, renamed over the old one, directory synced), so a
//! gateway that restarts — even after a crash — never gives a new user an id, and with it a
//! URL, a log file or an upload directory, that an earlier session had. The directories of
//! sessions and batches from an earlier run are moved aside into `quarantine/` at start-up
//! (nothing of theirs is served again); quarantined runs older than [`QUARANTINE_DAYS`] are
//! deleted then.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// How long the files of earlier runs are kept for the operator before start-up deletes them.
pub const QUARANTINE_DAYS: u64 = 30;

/// Why the id counters or the per-resource directories could not be prepared or advanced.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// Reading or writing a counter or directory failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A counter file holds something other than a number.
    #[error("{} does not hold an id counter; inspect it and remove it if it is damaged", path.display())]
    Damaged {
        /// The file.
        path: PathBuf,
    },
    /// Every id has been handed out.
    #[error("no ids are left for {0}")]
    Exhausted(&'static str),
}

impl From<crate::fs::FsError> for IdError {
    fn from(e: crate::fs::FsError) -> Self {
        Self::Io { path: e.path, source: e.source }
    }
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> IdError + '_ {
    move |source| IdError::Io { path: path.to_path_buf(), source }
}

/// A durable counter: the next id of one kind of resource.
#[derive(Debug)]
pub struct IdCounter {
    /// `None`: kept in memory only (unit tests).
    path: Option<PathBuf>,
    what: &'static str,
    next: Mutex<u32>,
}

impl IdCounter {
    /// The counter in `path`, never below `floor` (one past the highest id found on disk).
    pub fn open(path: &Path, what: &'static str, floor: u32) -> Result<Self, IdError> {
        let stored = match std::fs::read_to_string(path) {
            Ok(text) => text.trim().parse::<u32>().map_err(|_| IdError::Damaged { path: path.to_path_buf() })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(IdError::Io { path: path.to_path_buf(), source: e }),
        };
        let counter = Self { path: Some(path.to_path_buf()), what, next: Mutex::new(stored.max(floor)) };
        if stored < floor {
            counter.persist(stored.max(floor))?;
        }
        Ok(counter)
    }

    /// A counter that is not persisted (tests of the engine without a data directory).
    pub fn in_memory(what: &'static str) -> Self {
        Self { path: None, what, next: Mutex::new(0) }
    }

    /// The id [`IdCounter::next`] would hand out now.
    pub fn peek(&self) -> u32 {
        *self.next.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Raises the counter to at least `floor` (durably): ids another store handed out are
    /// never handed out here.
    pub fn raise_to(&self, floor: u32) -> Result<(), IdError> {
        let mut next = self.next.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if *next < floor {
            self.persist(floor)?;
            *next = floor;
        }
        Ok(())
    }

    /// The next id; it is returned only once the counter after it is durable.
    pub fn next(&self) -> Result<u32, IdError> {
        let mut next = self.next.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let id = *next;
        let after = id.checked_add(1).ok_or(IdError::Exhausted(self.what))?;
        self.persist(after)?;
        *next = after;
        Ok(id)
    }

    fn persist(&self, value: u32) -> Result<(), IdError> {
        match &self.path {
            Some(path) => crate::fs::write_file(path, format!("{value}\n").as_bytes(), 0o600).map_err(IdError::from),
            None => Ok(()),
        }
    }
}

/// Creates `dir` (0700) for a new session or batch: its parent may exist, `dir` itself must
/// not — a directory that is already there belongs to someone else, and nothing of it may be
/// reused.
pub fn create_fresh_dir(dir: &Path) -> Result<(), IdError> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(parent) = dir.parent() {
        crate::fs::create_private_dir(parent)?;
    }
    std::fs::DirBuilder::new().mode(0o700).create(dir).map_err(io_at(dir))
}

/// The id counters of a gateway, and its start-up housekeeping.
#[derive(Debug)]
pub struct Ids {
    /// Session ids.
    pub sessions: IdCounter,
    /// Batch ids.
    pub batches: IdCounter,
}

impl Ids {
    /// Opens the counters in `<data_dir>/state/` and moves the session and batch directories of
    /// earlier runs into `<data_dir>/quarantine/<unix time>/`: no id, directory or file of
    /// theirs is ever handed to a new session or batch. Counters start past every id found on
    /// disk, so a lost counter file cannot bring old ids back either.
    pub fn prepare(data_dir: &Path) -> Result<Self, IdError> {
        let ids = Self::open(data_dir)?;
        quarantine_unknown(data_dir, &|_, _| false)?;
        Ok(ids)
    }

    /// Opens the counters in `<data_dir>/state/`, past every id found on disk (also in
    /// `quarantine/`), and leaves the directories where they are (see [`quarantine_unknown`]).
    pub fn open(data_dir: &Path) -> Result<Self, IdError> {
        let state = data_dir.join("state");
        crate::fs::create_private_dir(&state)
            .map_err(|e| IdError::Io { path: state.clone(), source: std::io::Error::other(e.to_string()) })?;
        let quarantine = data_dir.join("quarantine");
        let highest = |kind: &str| -> Result<Option<u32>, IdError> {
            let mut highest = highest_id_in(&data_dir.join(kind))?;
            // Earlier quarantined runs count too: their ids are taken for good.
            for run in read_dir_or_empty(&quarantine)? {
                highest = highest.max(highest_id_in(&run.join(kind))?);
            }
            Ok(highest)
        };
        let floor = |h: Option<u32>| h.map_or(0, |h| h.saturating_add(1));
        let (sessions_floor, batches_floor) = (floor(highest("sessions")?), floor(highest("batches")?));
        Ok(Self {
            sessions: IdCounter::open(&state.join("next-session-id"), "sessions", sessions_floor)?,
            batches: IdCounter::open(&state.join("next-batch-id"), "batches", batches_floor)?,
        })
    }
}

/// Moves the session and batch directories of `data_dir` that `keep(kind, id)` does not keep
/// (`kind`: `sessions` or `batches`) into `<data_dir>/quarantine/<unix time>/`: no id,
/// directory or file of theirs is ever handed to a new session or batch; with recovery, those
/// the store has records of stay. Quarantined runs older than [`QUARANTINE_DAYS`] are deleted.
pub fn quarantine_unknown(data_dir: &Path, keep: &dyn Fn(&str, u32) -> bool) -> Result<(), IdError> {
    quarantine_earlier_runs(data_dir, &data_dir.join("quarantine"), keep)
}

/// The highest numeric entry name in `dir` (None when there is none or no `dir`).
fn highest_id_in(dir: &Path) -> Result<Option<u32>, IdError> {
    Ok(read_dir_or_empty(dir)?.iter().filter_map(|p| p.file_name()?.to_str()?.parse::<u32>().ok()).max())
}

fn read_dir_or_empty(dir: &Path) -> Result<Vec<PathBuf>, IdError> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries.map(|e| e.map(|e| e.path()).map_err(io_at(dir))).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(IdError::Io { path: dir.to_path_buf(), source: e }),
    }
}

fn quarantine_earlier_runs(
    data_dir: &Path,
    quarantine: &Path,
    keep: &dyn Fn(&str, u32) -> bool,
) -> Result<(), IdError> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut run: Option<PathBuf> = None;
    for kind in ["sessions", "batches"] {
        let dir = data_dir.join(kind);
        let entries = read_dir_or_empty(&dir)?;
        let kept =
            |p: &PathBuf| p.file_name().and_then(|n| n.to_str()?.parse::<u32>().ok()).is_some_and(|id| keep(kind, id));
        let moving: Vec<&PathBuf> = entries.iter().filter(|p| !kept(p)).collect();
        if moving.is_empty() {
            continue;
        }
        let target = match &run {
            Some(run) => run.clone(),
            None => {
                let fresh = (0..)
                    .map(|n| quarantine.join(if n == 0 { now.to_string() } else { format!("{now}-{n}") }))
                    .find(|p| !p.exists())
                    .unwrap_or_else(|| quarantine.join(now.to_string()));
                create_fresh_dir(&fresh)?;
                // The run's name is durable before anything is moved into it.
                crate::fs::sync_dir(quarantine)?;
                run = Some(fresh.clone());
                fresh
            }
        };
        let moved = target.join(kind);
        if moving.len() == entries.len() {
            crate::fs::rename(&dir, &moved)?;
        } else {
            crate::fs::create_private_dir(&moved)?;
            for entry in &moving {
                if let Some(name) = entry.file_name() {
                    crate::fs::rename(entry, &moved.join(name))?;
                }
            }
        }
        tracing::warn!(
            from = %dir.display(),
            to = %moved.display(),
            count = moving.len(),
            "sessions or batches of an earlier run that no record names were moved aside; none of their files will be served again"
        );
    }
    // Quarantined runs are named by their start time: drop the old ones.
    let limit = now.saturating_sub(QUARANTINE_DAYS * 24 * 3600);
    for old in read_dir_or_empty(quarantine)? {
        let started = old.file_name().and_then(|n| n.to_str()).and_then(|n| n.split('-').next()?.parse::<u64>().ok());
        if started.is_some_and(|t| t < limit) {
            if let Err(e) = std::fs::remove_dir_all(&old) {
                tracing::warn!(dir = %old.display(), error = %e, "could not delete an old quarantined run");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_continue_after_a_restart_and_never_go_back() {
        let dir = tempfile::tempdir().unwrap();
        let ids = Ids::prepare(dir.path()).unwrap();
        assert_eq!((ids.sessions.next().unwrap(), ids.sessions.next().unwrap()), (0, 1));
        assert_eq!(ids.batches.next().unwrap(), 0);
        drop(ids);
        // A restart: the counters were durable before the ids were handed out.
        let ids = Ids::prepare(dir.path()).unwrap();
        assert_eq!(ids.sessions.next().unwrap(), 2);
        assert_eq!(ids.batches.next().unwrap(), 1);
        // A lost counter file does not bring old ids back while their directories exist.
        std::fs::create_dir_all(dir.path().join("batches/7")).unwrap();
        std::fs::remove_file(dir.path().join("state/next-batch-id")).unwrap();
        let ids = Ids::prepare(dir.path()).unwrap();
        assert_eq!(ids.batches.next().unwrap(), 8);
        // ...nor once they are quarantined.
        std::fs::remove_file(dir.path().join("state/next-batch-id")).unwrap();
        let ids = Ids::prepare(dir.path()).unwrap();
        assert_eq!(ids.batches.next().unwrap(), 8);
    }

    #[test]
    fn directories_of_an_earlier_run_are_moved_aside_and_new_ones_are_created_exclusively() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("batches/0");
        std::fs::create_dir_all(&old).unwrap();
        std::fs::write(old.join("batch.log"), "alice's output\n").unwrap();
        std::fs::create_dir_all(dir.path().join("sessions/3/uploads")).unwrap();
        let _ids = Ids::prepare(dir.path()).unwrap();
        assert!(!dir.path().join("batches").exists() && !dir.path().join("sessions").exists());
        let runs: Vec<PathBuf> = read_dir_or_empty(&dir.path().join("quarantine")).unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(std::fs::read_to_string(runs[0].join("batches/0/batch.log")).unwrap(), "alice's output\n");
        assert!(runs[0].join("sessions/3/uploads").is_dir());
        // A fresh directory is created once; a second attempt is refused.
        let fresh = dir.path().join("batches/1");
        create_fresh_dir(&fresh).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777, 0o700);
        assert!(create_fresh_dir(&fresh).is_err(), "an existing directory is never reused");
    }

    #[test]
    fn directories_the_store_knows_stay_and_the_others_go() {
        let dir = tempfile::tempdir().unwrap();
        for path in ["sessions/1", "sessions/2", "batches/4", "batches/notanid"] {
            std::fs::create_dir_all(dir.path().join(path)).unwrap();
        }
        let ids = Ids::open(dir.path()).unwrap();
        assert_eq!((ids.sessions.peek(), ids.batches.peek()), (3, 5));
        quarantine_unknown(dir.path(), &|kind, id| (kind, id) == ("sessions", 2) || (kind, id) == ("batches", 4))
            .unwrap();
        assert!(dir.path().join("sessions/2").is_dir() && dir.path().join("batches/4").is_dir());
        assert!(!dir.path().join("sessions/1").exists() && !dir.path().join("batches/notanid").exists());
        let runs: Vec<PathBuf> = read_dir_or_empty(&dir.path().join("quarantine")).unwrap();
        assert!(runs[0].join("sessions/1").is_dir() && runs[0].join("batches/notanid").is_dir());
    }

    #[test]
    fn old_quarantined_runs_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let ancient = dir.path().join("quarantine/1000");
        std::fs::create_dir_all(ancient.join("sessions/5")).unwrap();
        let ids = Ids::prepare(dir.path()).unwrap();
        assert!(!ancient.exists());
        // Its ids were counted before it went.
        assert_eq!(ids.sessions.next().unwrap(), 6);
    }

    #[test]
    fn a_damaged_counter_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("state")).unwrap();
        std::fs::write(dir.path().join("state/next-session-id"), "garbage").unwrap();
        assert!(matches!(Ids::prepare(dir.path()), Err(IdError::Damaged { .. })));
    }
}
