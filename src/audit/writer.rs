//! [`AuditLog`]: appends hash-chained records from one writer thread, rotates files by size,
//! retires the oldest rotated files (by count or age) after recording that it does, counts
//! repeated security events instead of writing each ([`super::coalesce`]) and resumes the chain
//! where the previous run left it.
//!
//! Line format (one JSON object per line, keys in this order, absent optional fields omitted):
//!
//! ```text
//! {"seq":N,"time":"2025-01-31T12:00:00.123Z","prev":"<64 hex>",<event fields>,"hash":"<64 hex>"}
//! ```
//!
//! `hash` is the lowercase hex SHA-256 of the line's bytes up to but excluding `,"hash":` —
//! i.e. everything from the opening `{` to the end of the last event field. `prev` is the
//! `hash` of the record before it ([`GENESIS_PREV`] for seq 0). The bytes are hashed exactly
//! as written, so no JSON canonicalisation is involved.

// The writer is a plain thread outside any runtime, and repeat windows span its time and the
// recording threads' alike: one clock for both, std's (a test runtime may pause tokio's).
#![allow(clippy::disallowed_types)]

use super::coalesce::{Coalescer, RepeatKey, Verdict};
use super::verify::{check_line, LineRecord};
use super::{now_rfc3339_ms, sha256_hex, AuditError, AuditEvent, Decision, EventKind, GENESIS_PREV};
use serde::Serialize;
use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{JoinHandle, Thread};
use std::time::Instant;
use std::time::{Duration, SystemTime};

/// Events that may wait for the writer; beyond this they are counted as lost (see
/// [`AuditLog::record`]). About 2 MB of events at most.
const QUEUE_CAPACITY: usize = 4096;

/// The longest a record whose sender waits for it to be on disk
/// ([`AuditLog::record_durable`]) waits for the writer's sync while records keep coming.
const GROUP_COMMIT: Duration = Duration::from_millis(2);

/// The longest a record of an allowed read (see [`AuditEvent::may_sync_later`]) waits for its
/// sync: a flood of reads costs one sync a second, not one per lull.
pub(crate) const READ_SYNC: Duration = Duration::from_secs(1);

/// How long the writer, having just drained its queue, naps before it looks again. During a
/// nap only records that someone waits for (or that are synced as the queue runs dry) wake it:
/// under a flood of allowed reads the writer takes them in batches every few milliseconds
/// instead of being woken — a futex call and a context switch — once per request.
const NAP: Duration = Duration::from_millis(2);

/// How much of a file's end is read first when looking for its last record; records are
/// bounded by field clipping to well under this.
const TAIL_WINDOW: u64 = 64 * 1024;

/// Longest first line read when resuming (a record is far smaller; anything longer is damage).
const MAX_LINE_BYTES: u64 = 1024 * 1024;

/// Width of the sequence number in rotated file names (`u64::MAX` has 20 digits), so that
/// sorting the names as text sorts them by sequence.
const ROTATED_DIGITS: usize = 20;

/// How the trail is kept (the `[audit]` configuration).
#[derive(Debug, Clone)]
pub struct AuditOptions {
    /// Size at which the current file is rotated.
    pub max_file_bytes: u64,
    /// Rotated files kept; the oldest beyond are retired after a rotation. 0 keeps all.
    pub max_files: usize,
    /// Rotated files older than this are retired too. `None`: no age limit.
    pub max_age: Option<Duration>,
    /// The window of [`AuditLog::record_coalesced`].
    pub repeat_window: Duration,
}

impl AuditOptions {
    /// Rotation at `max_file_bytes`, every file kept, a 60 s repeat window.
    pub fn keep_all(max_file_bytes: u64) -> Self {
        Self { max_file_bytes, max_files: 0, max_age: None, repeat_window: Duration::from_secs(60) }
    }
}

/// What [`AuditLog::record_coalesced`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Recorded {
    /// Queued to be written in full (the first of its kind in its window).
    Written,
    /// Counted into its window's summary record.
    Counted,
}

/// The audit trail. Share it as `Arc<AuditLog>`.
///
/// Why a writer thread and a bounded queue rather than a mutex around the file: `record` runs
/// on tokio worker threads, and a write to a slow or hung disk (NFS, a device at its limit)
/// would stall every worker queued on the mutex — and with them the whole gateway, driver
/// heartbeats included. With the queue, `record` never waits. If the writer falls
/// [`QUEUE_CAPACITY`] events behind, further events are counted as lost and, as soon as the
/// writer can write again, an `audit_records_lost` record saying how many goes into the chain,
/// so a gap never passes silently. One writer assigns every `seq` and `prev`, so the chain's
/// order is simply the queue's order.
pub struct AuditLog {
    path: PathBuf,
    /// `None` only while dropping.
    queue: Option<SyncSender<Command>>,
    /// `None` only while dropping.
    thread: Option<JoinHandle<()>>,
    /// Wakes the writer from a nap for a record that must not wait.
    doorbell: Arc<Doorbell>,
    losses: Arc<Losses>,
    /// Security events recorded since the log was opened, by (event, decision), for metrics.
    /// The event names are the gateway's own constants, so the map stays small.
    security_counts: Mutex<BTreeMap<(String, &'static str), u64>>,
    /// Windows of repeated events; shared with the writer thread, which writes the summaries.
    coalescer: Arc<Mutex<Coalescer>>,
    /// The last record when the file was opened.
    opened_head: Option<ChainHead>,
    /// The last record synced to disk (the writer updates it).
    synced_head: Arc<Mutex<Option<ChainHead>>>,
}

/// The last record of the chain: its seq and hash. Kept in the store too (see
/// `crate::store`), so that a trail that lost its newest records is noticed at start-up.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChainHead {
    /// Its seq.
    pub seq: u64,
    /// Its hash.
    pub hash: String,
}

impl ChainHead {
    /// What `stored` (the head the store last kept) says of `trail` (the head the trail had
    /// when it was opened): a message when the trail is missing records the store saw written.
    pub fn missing_from(stored: Option<&ChainHead>, trail: Option<&ChainHead>) -> Option<String> {
        let stored = stored?;
        match trail {
            None => Some(format!("the trail is empty, but it had reached seq {}", stored.seq)),
            Some(trail) if trail.seq < stored.seq => {
                Some(format!("the trail ends at seq {}, but it had reached seq {}", trail.seq, stored.seq))
            }
            Some(trail) if trail.seq == stored.seq && trail.hash != stored.hash => {
                Some(format!("its record seq {} is not the one written", trail.seq))
            }
            Some(_) => None,
        }
    }
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").field("path", &self.path).field("lost_events", &self.lost_events()).finish()
    }
}

#[derive(Debug, Default)]
struct Losses {
    /// Lost since the last `audit_records_lost` record was written.
    unreported: AtomicU64,
    /// Lost since the log was opened.
    total: AtomicU64,
}

impl Losses {
    /// Counts one lost event; returns how many were unreported before it.
    fn lose(&self) -> u64 {
        self.total.fetch_add(1, Ordering::Relaxed);
        self.unreported.fetch_add(1, Ordering::Relaxed)
    }
}

/// Whether the writer is napping (see [`NAP`]), and how to wake it.
#[derive(Debug, Default)]
struct Doorbell {
    napping: AtomicBool,
    writer: std::sync::OnceLock<Thread>,
}

impl Doorbell {
    /// Called after a command was queued. The fences pair with [`Doorbell::nap`]'s: either the
    /// writer's last look at the queue saw the command, or this sees it napping and wakes it.
    fn ring(&self) {
        fence(Ordering::SeqCst);
        if self.napping.load(Ordering::Relaxed) {
            if let Some(writer) = self.writer.get() {
                writer.unpark();
            }
        }
    }

    /// The writer's nap: `look` at the queue once more after announcing the nap, and sleep
    /// only if it had nothing.
    fn nap<T>(&self, look: impl FnOnce() -> Option<T>) -> Option<T> {
        self.napping.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let found = look();
        if found.is_none() {
            std::thread::park_timeout(NAP);
        }
        self.napping.store(false, Ordering::Relaxed);
        found
    }
}

enum Command {
    /// `durable`: told once the record is on disk (true), or could not be (false).
    Record {
        time: String,
        event: Box<AuditEvent>,
        durable: Option<tokio::sync::oneshot::Sender<bool>>,
    },
    Flush(mpsc::Sender<Result<(), AuditError>>),
}

impl AuditLog {
    /// Opens (or creates: directory 0700, file 0600) the audit file at `path` and continues the
    /// chain from its last record — or, when it is missing or empty, from the newest rotated
    /// file next to it — so a restart never breaks the chain. Refuses to continue after a
    /// damaged last record rather than hide the damage behind new records.
    pub fn open(path: &Path, max_file_bytes: u64) -> Result<Arc<Self>, AuditError> {
        Self::open_with(path, &AuditOptions::keep_all(max_file_bytes))
    }

    /// [`AuditLog::open`] with retention and the repeat window: rotated files beyond
    /// `max_files` or older than `max_age` are retired at start-up and after each rotation.
    pub fn open_with(path: &Path, options: &AuditOptions) -> Result<Arc<Self>, AuditError> {
        let (writer, opened_head) = Writer::open(path, options)?;
        let synced_head = writer.synced_head.clone();
        let losses = Arc::new(Losses::default());
        let coalescer = Arc::new(Mutex::new(Coalescer::new(options.repeat_window)));
        let (queue, receiver) = mpsc::sync_channel(QUEUE_CAPACITY);
        let doorbell = Arc::new(Doorbell::default());
        let thread = std::thread::Builder::new()
            .name("sparkgate-audit".into())
            .spawn({
                let losses = losses.clone();
                let coalescer = coalescer.clone();
                let doorbell = doorbell.clone();
                move || writer.run(&receiver, &doorbell, &losses, &coalescer)
            })
            .map_err(io_at(path))?;
        let _ = doorbell.writer.set(thread.thread().clone());
        Ok(Arc::new(Self {
            path: path.to_path_buf(),
            queue: Some(queue),
            thread: Some(thread),
            doorbell,
            losses,
            security_counts: Mutex::default(),
            coalescer,
            opened_head,
            synced_head,
        }))
    }

    /// The last record of the trail when it was opened (None: it was empty).
    pub fn opened_head(&self) -> Option<&ChainHead> {
        self.opened_head.as_ref()
    }

    /// The last record known to be on disk.
    pub fn synced_head(&self) -> Option<ChainHead> {
        lock(&self.synced_head).clone()
    }

    /// Queues `event`; it gets its `time` now and its `seq` from the writer. Never blocks and
    /// never fails: when the queue is full the event is counted as lost and the loss is
    /// recorded in the chain later (see the type's documentation).
    pub fn record(&self, event: AuditEvent) {
        self.count(&event);
        self.enqueue(event);
    }

    /// Records a security event that a peer can make the gateway repeat at will (a failed
    /// driver handshake, a refused connection): the first of its kind within the repeat window
    /// is written in full, further ones are counted, and one record with the count
    /// (`"repeated": N`) follows when the window ends, at [`AuditLog::flush`] or at shutdown.
    /// The kind is the event's action and decision, `source` (an IPv6 address by its /64) and
    /// `class` — a fixed name for the kind of reason, never text a peer can vary. Metrics count
    /// every event. Request events stay one per request: use [`AuditLog::record`] for them.
    pub fn record_coalesced(&self, event: AuditEvent, source: Option<IpAddr>, class: &'static str) -> Recorded {
        self.count(&event);
        let key = RepeatKey::new(&event, source, class);
        match lock(&self.coalescer).offer(key, Instant::now()) {
            Verdict::Counted => Recorded::Counted,
            Verdict::Write => {
                self.enqueue(event);
                Recorded::Written
            }
        }
    }

    fn count(&self, event: &AuditEvent) {
        if event.kind == EventKind::Security {
            let key = (event.action.clone(), event.decision.as_str());
            *lock(&self.security_counts).entry(key).or_insert(0) += 1;
        }
    }

    /// Queues `event` like [`AuditLog::record`], and answers once it — and every record before
    /// it — is written and synced to disk: `true`, or `false` when it could not be (a write or
    /// sync error, or the queue was full and the event is counted as lost). Records waiting
    /// for this share their sync: the writer syncs when its queue runs dry, or at the latest
    /// [`GROUP_COMMIT`] after the oldest such record (group commit).
    pub fn record_durable(&self, event: AuditEvent) -> tokio::sync::oneshot::Receiver<bool> {
        self.count(&event);
        let (tell, told) = tokio::sync::oneshot::channel();
        self.enqueue_command(event, Some(tell));
        told
    }

    fn enqueue(&self, event: AuditEvent) {
        self.enqueue_command(event, None);
    }

    fn enqueue_command(&self, event: AuditEvent, durable: Option<tokio::sync::oneshot::Sender<bool>>) {
        // A record nobody waits for whose sync may wait does not wake a napping writer.
        let urgent = durable.is_some() || !event.may_sync_later();
        let command = Command::Record { time: now_rfc3339_ms(), event: Box::new(event), durable };
        let refused = match &self.queue {
            Some(queue) => match queue.try_send(command) {
                Ok(()) => {
                    if urgent {
                        self.doorbell.ring();
                    }
                    None
                }
                Err(TrySendError::Full(command) | TrySendError::Disconnected(command)) => Some(command),
            },
            None => Some(command),
        };
        let Some(Command::Record { durable, .. }) = refused else { return };
        if let Some(tell) = durable {
            let _ = tell.send(false);
        }
        if self.losses.lose() == 0 {
            // Logged once per burst; the total is in `lost_events` and the trail itself.
            tracing::error!(path = %self.path.display(), "audit events are being lost: the audit writer is not keeping up");
        }
    }

    /// Waits until every event recorded before this call is written and synced to disk, counted
    /// repeats included (as summary records). Blocking: from async code call it through `tokio::task::spawn_blocking`. Fails when the
    /// sync fails or the last write failed.
    pub fn flush(&self) -> Result<(), AuditError> {
        let queue = self.queue.as_ref().ok_or(AuditError::WriterStopped)?;
        let (reply, answer) = mpsc::channel();
        queue.send(Command::Flush(reply)).map_err(|_| AuditError::WriterStopped)?;
        self.doorbell.ring();
        answer.recv().map_err(|_| AuditError::WriterStopped)?
    }

    /// Counts `n` events as lost, as a full queue would (tests cannot fill it reliably).
    #[cfg(test)]
    pub(super) fn simulate_losses(&self, n: u64) {
        for _ in 0..n {
            self.losses.lose();
        }
    }

    /// The current audit file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Security events recorded since the log was opened: `((event, decision), count)`.
    pub fn security_event_counts(&self) -> Vec<((String, &'static str), u64)> {
        let counts = lock(&self.security_counts);
        counts.iter().map(|(key, n)| (key.clone(), *n)).collect()
    }

    /// Events lost since the log was opened (queue full or a failed write); for health and
    /// metrics. Each loss is also recorded in the chain once writing works.
    pub fn lost_events(&self) -> u64 {
        self.losses.total.load(Ordering::Relaxed)
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        // Closing the queue lets the writer drain it, write the counted repeats, sync and exit;
        // joining guarantees that every record is on disk and nobody else writes to the file
        // once the log is gone, so the same file can be opened again (a restart, a test).
        drop(self.queue.take());
        self.doorbell.ring();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The files of the chain that ends in `current`, oldest first: the rotated siblings
/// (`<name>.<20-digit seq>`) sorted by sequence, then `current` itself if it exists. Ready to
/// pass to [`super::verify_files`].
pub fn chain_files(current: &Path) -> Result<Vec<PathBuf>, AuditError> {
    let file_name = current.file_name().ok_or_else(|| AuditError::InvalidPath { path: current.to_path_buf() })?;
    let dir = match current.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let mut files: Vec<PathBuf> = rotated_files(dir, file_name)?.into_iter().map(|(_, path)| path).collect();
    // After a crash between the two steps of a rotation, `current` and the newest rotated file
    // are the same file; listing it twice would look like duplicated records.
    let duplicate = files.last().is_some_and(|last| same_file(last, current));
    if current.exists() && !duplicate {
        files.push(current.to_path_buf());
    }
    Ok(files)
}

/// Owned by the writer thread: the open file and where the chain stands.
struct Writer {
    path: PathBuf,
    dir: PathBuf,
    file_name: OsString,
    file: File,
    /// Bytes in `file` and in `unwritten`; everything up to here is whole records.
    len: u64,
    /// Records rendered (and chained) but not yet written: one `write` for all the records a
    /// drain of the queue produced, instead of one per record.
    unwritten: Unwritten,
    /// Seq of the first record in the current file (names it when it is rotated).
    first_seq: Option<u64>,
    next_seq: u64,
    /// Hash of the last record written (`GENESIS_PREV` before the first).
    prev: String,
    max_file_bytes: u64,
    /// Rotated files kept (0: all).
    max_files: usize,
    /// Rotated files older than this are retired.
    max_age: Option<Duration>,
    /// A rotation (or start-up) happened and retention has not run since.
    retire_due: bool,
    /// Whether the last write failed (errors are logged once per outage, not per event).
    write_failing: bool,
    /// Whether the last rotation failed.
    rotate_failing: bool,
    /// Whether the last background sync failed.
    sync_failing: bool,
    /// Shared with the [`AuditLog`]: the last record synced.
    synced_head: Arc<Mutex<Option<ChainHead>>>,
}

/// The most bytes of records kept unwritten before they are written anyway.
const MAX_UNWRITTEN_BYTES: usize = 64 * 1024;

/// Records rendered but not written yet (see [`Writer::write_out`]).
#[derive(Default)]
struct Unwritten {
    bytes: Vec<u8>,
    records: u64,
    /// Where the file and the chain stood before the first of them.
    start: Option<ChainStart>,
    /// Records lost to failed writes, not yet counted in [`Losses`].
    lost: u64,
    /// A write failed since the waiting senders were last told.
    failed: bool,
}

/// Where the file and the chain stood before some records (see [`Unwritten`]).
struct ChainStart {
    len: u64,
    first_seq: Option<u64>,
    next_seq: u64,
    prev: String,
}

impl Unwritten {
    fn push(&mut self, line: &[u8], len: u64, first_seq: Option<u64>, next_seq: u64, prev: &str) {
        self.start.get_or_insert_with(|| ChainStart { len, first_seq, next_seq, prev: prev.to_owned() });
        self.bytes.extend_from_slice(line);
        self.records += 1;
    }
}

impl Losses {
    /// Counts `n` lost events.
    fn lose_many(&self, n: u64) {
        self.total.fetch_add(n, Ordering::Relaxed);
        self.unreported.fetch_add(n, Ordering::Relaxed);
    }
}

impl Writer {
    /// Opens the trail's current file where its chain stands; also returns that head.
    fn open(path: &Path, options: &AuditOptions) -> Result<(Self, Option<ChainHead>), AuditError> {
        let file_name =
            path.file_name().ok_or_else(|| AuditError::InvalidPath { path: path.to_path_buf() })?.to_os_string();
        let dir = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        crate::fs::create_private_dir(&dir).map_err(|e| AuditError::Io { path: e.path, source: e.source })?;
        let file = open_private_append(path)?;
        let len = file.metadata().map_err(io_at(path))?.len();
        let (first_seq, last) = if len > 0 {
            (Some(read_first_record(path)?.seq), Some(read_last_record(path, len)?))
        } else {
            (None, newest_rotated_last_record(&dir, &file_name)?)
        };
        let opened_head = last.as_ref().map(|record| ChainHead { seq: record.seq, hash: record.hash.clone() });
        let (next_seq, prev) = match last {
            Some(record) => (record.seq.saturating_add(1), record.hash),
            None => (0, GENESIS_PREV.to_string()),
        };
        let synced_head = Arc::new(Mutex::new(opened_head.clone()));
        tracing::info!(path = %path.display(), next_seq, "audit trail open");

        let writer = Writer {
            path: path.to_path_buf(),
            dir,
            file_name,
            file,
            len,
            unwritten: Unwritten::default(),
            first_seq,
            next_seq,
            prev,
            max_file_bytes: options.max_file_bytes,
            max_files: options.max_files,
            max_age: options.max_age,
            // Start-up is a retirement point too: the limits may have been lowered.
            retire_due: true,
            write_failing: false,
            rotate_failing: false,
            sync_failing: false,
            synced_head,
        };
        Ok((writer, opened_head))
    }

    fn run(mut self, commands: &Receiver<Command>, doorbell: &Doorbell, losses: &Losses, coalescer: &Mutex<Coalescer>) {
        // Written but not yet synced. Syncing whenever the queue runs dry makes every burst
        // durable as soon as it ends, without an fsync per record while busy (the records that
        // queue up during one sync are written together and covered by the next).
        let mut unsynced = self.retire(losses);
        // Senders waiting for their record to be on disk: when it was queued, whether it was
        // written, who to tell.
        let mut waiting: Vec<(Instant, bool, tokio::sync::oneshot::Sender<bool>)> = Vec::new();
        // The oldest record written and not synced yet that may wait (an allowed read's).
        let mut reads_since: Option<Instant> = None;
        // Whether a command came since the last nap: a writer that is kept busy naps when its
        // queue runs dry, one that napped in vain waits to be woken.
        let mut busy = false;
        loop {
            let command = match commands.try_recv() {
                Ok(command) => Some(command),
                Err(TryRecvError::Empty) if busy => {
                    busy = false;
                    self.sync_at_lull(&mut unsynced, &mut reads_since, &mut waiting);
                    match doorbell.nap(|| match commands.try_recv() {
                        Err(TryRecvError::Empty) => None,
                        other => Some(other),
                    }) {
                        None => None,
                        Some(Ok(command)) => Some(command),
                        Some(Err(_)) => break,
                    }
                }
                Err(TryRecvError::Empty) => {
                    self.sync_at_lull(&mut unsynced, &mut reads_since, &mut waiting);
                    // Idle: wait for the next command, or until a window with counted repeats
                    // ends and its summary is due, or the reads' sync is.
                    let due = lock(coalescer).next_due();
                    let due = match (due, reads_since.map(|since| since + READ_SYNC)) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    match due {
                        None => match commands.recv() {
                            Ok(command) => Some(command),
                            Err(_) => break,
                        },
                        Some(due) => match commands.recv_timeout(due.saturating_duration_since(Instant::now())) {
                            Ok(command) => Some(command),
                            Err(RecvTimeoutError::Timeout) => None,
                            Err(RecvTimeoutError::Disconnected) => break,
                        },
                    }
                }
                Err(TryRecvError::Disconnected) => break,
            };
            busy |= command.is_some();
            self.count_write_losses(losses);
            unsynced |= self.report_losses(losses);
            // Summaries go before the command: they count events older than it, and one that
            // a new occurrence closed must precede that occurrence's full record.
            unsynced |= self.write_summaries(coalescer, losses, false);
            match command {
                None => {}
                Some(Command::Record { time, event, durable }) => {
                    let written = self.append(&time, &event, losses);
                    if written && durable.is_none() && event.may_sync_later() {
                        reads_since.get_or_insert_with(Instant::now);
                    } else if written {
                        unsynced = true;
                    } else {
                        losses.lose();
                    }
                    if let Some(tell) = durable {
                        waiting.push((Instant::now(), written, tell));
                    }
                }
                Some(Command::Flush(reply)) => {
                    self.write_summaries(coalescer, losses, true);
                    let _ = reply.send(self.sync());
                    unsynced = false;
                    reads_since = None;
                    self.tell(&mut waiting);
                }
            }
            // Busy: the queue may not run dry for a while; waiting senders get their sync
            // within the group-commit window all the same, reads' records within READ_SYNC.
            let reads_due = reads_since.is_some_and(|since| since.elapsed() >= READ_SYNC);
            if reads_due || waiting.first().is_some_and(|(since, _, _)| since.elapsed() >= GROUP_COMMIT) {
                self.sync_quietly();
                unsynced = false;
                reads_since = None;
                self.tell(&mut waiting);
            }
        }
        // Every `AuditLog` handle is gone: record what is still counted and any last losses,
        // and make it all durable.
        self.write_summaries(coalescer, losses, true);
        self.count_write_losses(losses);
        self.report_losses(losses);
        self.sync_quietly();
        self.count_write_losses(losses);
        self.tell(&mut waiting);
    }

    /// Counts the records that failed writes lost in [`Losses`] (to be reported in the chain).
    fn count_write_losses(&mut self, losses: &Losses) {
        let lost = std::mem::take(&mut self.unwritten.lost);
        if lost > 0 {
            losses.lose_many(lost);
        }
    }

    /// The queue ran dry: syncs what must be on disk now (anything written that is not an
    /// allowed read's, records someone waits for, reads older than [`READ_SYNC`]) and answers
    /// the waiting senders.
    fn sync_at_lull(
        &mut self,
        unsynced: &mut bool,
        reads_since: &mut Option<Instant>,
        waiting: &mut Vec<(Instant, bool, tokio::sync::oneshot::Sender<bool>)>,
    ) {
        // What is rendered reaches the file now, synced or not, so readers of the trail see it.
        self.write_out();
        let reads_due = reads_since.is_some_and(|since| since.elapsed() >= READ_SYNC);
        if *unsynced || !waiting.is_empty() || reads_due {
            self.sync_quietly();
            *unsynced = false;
            *reads_since = None;
        }
        self.tell(waiting);
    }

    /// Answers every waiting sender after a sync: on disk if its record was written and the
    /// sync worked.
    fn tell(&mut self, waiting: &mut Vec<(Instant, bool, tokio::sync::oneshot::Sender<bool>)>) {
        let failed = std::mem::take(&mut self.unwritten.failed);
        for (_, written, tell) in waiting.drain(..) {
            let _ = tell.send(written && !failed && !self.sync_failing);
        }
    }

    /// Writes the summaries of repeat windows that ended (or, with `all`, of every window that
    /// counted something); returns whether it wrote any. A summary that cannot be written is
    /// counted as a lost event, so it still shows in the chain.
    fn write_summaries(&mut self, coalescer: &Mutex<Coalescer>, losses: &Losses, all: bool) -> bool {
        let ready = {
            let mut coalescer = lock(coalescer);
            let now = Instant::now();
            if all {
                coalescer.summarise_all(now);
            } else if coalescer.next_due().is_some_and(|due| due <= now) {
                coalescer.sweep(now);
            }
            coalescer.take_ready()
        };
        let mut wrote = false;
        for event in ready {
            if self.append(&now_rfc3339_ms(), &event, losses) {
                wrote = true;
            } else {
                losses.lose();
            }
        }
        wrote
    }

    /// Writes an `audit_records_lost` record for losses not yet in the chain; returns whether
    /// it wrote one.
    fn report_losses(&mut self, losses: &Losses) -> bool {
        let lost = losses.unreported.swap(0, Ordering::Relaxed);
        if lost == 0 {
            return false;
        }
        let event = AuditEvent::security("audit_records_lost", Decision::Error).reason(format!(
            "{lost} audit event(s) could not be written (queue full or write error); the gateway log has details"
        ));
        // Written at once: if that fails, the count must stay unreported, not be lost with it.
        let appended = self.append_record(&now_rfc3339_ms(), &event);
        let written = appended && self.write_out();
        if !written {
            if appended {
                // The loss record itself is no event that went missing.
                self.unwritten.lost = self.unwritten.lost.saturating_sub(1);
            }
            losses.unreported.fetch_add(lost, Ordering::Relaxed);
        }
        written
    }

    /// Appends one record (see [`Writer::append_record`]), then retires old files if a rotation
    /// made that due.
    fn append(&mut self, time: &str, event: &AuditEvent, losses: &Losses) -> bool {
        let written = self.append_record(time, event);
        // Twice at most: the retirement record itself may fill the file and rotate it (only
        // with files a few records small); any later retirement waits for the next append.
        for _ in 0..2 {
            if !self.retire_due {
                break;
            }
            self.retire(losses);
        }
        written
    }

    /// Appends one record to those to write (see [`Writer::write_out`]), rotating first if it
    /// would overflow the file. Returns false when it could not even be rendered; a record
    /// that is not written does not advance the chain.
    fn append_record(&mut self, time: &str, event: &AuditEvent) -> bool {
        let render_here = |writer: &Self| match render(writer.next_seq, time, &writer.prev, event) {
            Ok(rendered) => Some(rendered),
            Err(e) => {
                tracing::error!(error = %e, action = %event.action, "an audit event could not be encoded");
                None
            }
        };
        let Some((mut line, mut hash)) = render_here(self) else { return false };
        let line_len = line.len() as u64;
        let seq = self.next_seq;
        if self.len > 0 && self.len.saturating_add(line_len) > self.max_file_bytes {
            match self.rotate() {
                Ok(()) => {
                    self.rotate_failing = false;
                    self.retire_due = true;
                }
                Err(e) => {
                    // Keep appending to the full file: an oversized file is better than lost
                    // records.
                    if !self.rotate_failing {
                        tracing::error!(error = %e, "rotating the audit file failed; it keeps growing");
                    }
                    self.rotate_failing = true;
                }
            }
            // A failed write of the records before this one took the chain back: chain it anew.
            if self.next_seq != seq {
                let Some(rendered) = render_here(self) else { return false };
                (line, hash) = rendered;
            }
        }
        let line_len = line.len() as u64;
        self.unwritten.push(line.as_bytes(), self.len, self.first_seq, self.next_seq, &self.prev);
        self.len += line_len;
        self.first_seq.get_or_insert(self.next_seq);
        self.next_seq = self.next_seq.saturating_add(1);
        self.prev = hash;
        if self.unwritten.bytes.len() >= MAX_UNWRITTEN_BYTES {
            // A failed write counts its records (this one too) as lost itself.
            self.write_out();
        }
        true
    }

    /// Writes the records rendered so far in one `write`. On failure none of them counts: the
    /// file is cut back to its last whole record, the chain goes back to where it stood before
    /// them (so the next record continues the chain on disk), they are counted as lost, and the
    /// senders waiting for any record are told it is not on disk. Returns whether it worked.
    fn write_out(&mut self) -> bool {
        let Some(start) = self.unwritten.start.take() else { return true };
        let records = std::mem::take(&mut self.unwritten.records);
        let result = self.file.write_all(&self.unwritten.bytes);
        self.unwritten.bytes.clear();
        match result {
            Ok(()) => {
                if self.write_failing {
                    tracing::warn!(path = %self.path.display(), "audit writes succeed again");
                }
                self.write_failing = false;
                true
            }
            Err(e) => {
                // Cut off whatever part reached the file so that the file still ends with a
                // whole record and the next one starts on its own line.
                let _ = self.file.set_len(start.len);
                (self.len, self.first_seq, self.next_seq, self.prev) =
                    (start.len, start.first_seq, start.next_seq, start.prev);
                if !self.write_failing {
                    tracing::error!(path = %self.path.display(), error = %e, "writing the audit trail failed");
                }
                self.write_failing = true;
                self.unwritten.lost += records;
                self.unwritten.failed = true;
                false
            }
        }
    }

    /// Writes what is rendered, then syncs the file.
    fn sync_data(&mut self) -> std::io::Result<()> {
        if !self.write_out() {
            return Err(std::io::Error::other("the last audit write failed"));
        }
        self.file.sync_data()
    }

    /// Moves the current file to `<name>.<seq of its first record>` and starts a fresh one.
    fn rotate(&mut self) -> Result<(), AuditError> {
        let first = self.first_seq.unwrap_or(self.next_seq);
        let rotated = rotated_path(&self.dir, &self.file_name, first);
        // What the old file holds must be durable before it gets its final name.
        self.sync_data().map_err(io_at(&self.path))?;
        // A hard link rather than a rename: it never replaces an existing file, and the current
        // name keeps existing throughout, so a crash at any step leaves a state `open` resumes.
        match std::fs::hard_link(&self.path, &rotated) {
            Ok(()) => {}
            // A previous rotation was interrupted after this step: the link is already there.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && same_file(&self.path, &rotated) => {}
            Err(e) => return Err(AuditError::Io { path: rotated, source: e }),
        }
        let mut fresh_name = OsString::from(".");
        fresh_name.push(&self.file_name);
        fresh_name.push(".new");
        let fresh_path = self.dir.join(fresh_name);
        let fresh = open_private_append(&fresh_path)?;
        // A leftover from an interrupted rotation holds nothing that is not also elsewhere.
        fresh.set_len(0).map_err(io_at(&fresh_path))?;
        std::fs::rename(&fresh_path, &self.path).map_err(io_at(&self.path))?;
        // Best effort: make the new names durable too. (Not `crate::fs::rename`: once the
        // rename is done, a failed sync must not make the rotation look undone.)
        let _ = crate::fs::sync_dir(&self.dir);
        self.file = fresh;
        self.len = 0;
        self.first_seq = None;
        tracing::info!(rotated = %rotated.display(), "audit file rotated");
        Ok(())
    }

    /// Retention: deletes the oldest rotated files beyond `max_files` and those older than
    /// `max_age`, always a prefix of the chain, so what remains is still one unbroken chain.
    /// First it writes (and syncs) an `audit_files_retired` record naming the first seq that
    /// is kept, so the retirement itself is in the chain and `verify` can tell a retired
    /// prefix from a removed one; if that record cannot be written, nothing is deleted and the
    /// next append tries again. Returns whether it wrote a record.
    fn retire(&mut self, losses: &Losses) -> bool {
        self.retire_due = false;
        if self.max_files == 0 && self.max_age.is_none() {
            return false;
        }
        let rotated = match rotated_files(&self.dir, &self.file_name) {
            Ok(rotated) => rotated,
            Err(e) => {
                tracing::error!(error = %e, "listing rotated audit files for retention failed; keeping them");
                return false;
            }
        };
        // After an interrupted rotation the newest rotated name is the current file itself.
        let rotated: Vec<(u64, PathBuf)> =
            rotated.into_iter().filter(|(_, path)| !same_file(path, &self.path)).collect();
        let by_count = if self.max_files > 0 { rotated.len().saturating_sub(self.max_files) } else { 0 };
        let by_age = match self.max_age.and_then(|age| SystemTime::now().checked_sub(age)) {
            Some(cutoff) => rotated.iter().take_while(|(_, path)| modified(path).is_some_and(|m| m < cutoff)).count(),
            None => 0,
        };
        let n = by_count.max(by_age);
        let (Some((first, _)), true) = (rotated.first(), n > 0) else { return false };
        let first = *first;
        // The first seq that stays: that of the oldest kept file, or of the current file (whose
        // first record may be the one written below).
        let kept = rotated.get(n).map_or(self.first_seq.unwrap_or(self.next_seq), |(seq, _)| *seq);
        let why = match (by_count >= by_age, self.max_files) {
            (true, max) if max > 0 => format!("audit.max_files = {max}"),
            _ => "older than audit.max_age".to_string(),
        };
        let mut event = AuditEvent::security("audit_files_retired", Decision::Info).reason(format!(
            "deleting {n} rotated audit file(s) holding seq {first} to {} ({why}); the chain continues at seq {kept}",
            kept.saturating_sub(1)
        ));
        event.retired_before = Some(kept);
        if !self.append_record(&now_rfc3339_ms(), &event) {
            losses.lose();
            self.retire_due = true;
            return false;
        }
        // The record that explains the gap must be durable before the gap exists.
        if let Err(e) = self.sync_data() {
            tracing::error!(error = %e, "syncing the audit trail before retiring files failed; keeping them");
            self.retire_due = true;
            return true;
        }
        for (_, path) in &rotated[..n] {
            match std::fs::remove_file(path) {
                Ok(()) => tracing::info!(retired = %path.display(), "audit file retired"),
                Err(e) => tracing::error!(path = %path.display(), error = %e, "retiring an audit file failed"),
            }
        }
        let _ = crate::fs::sync_dir(&self.dir);
        true
    }

    /// Syncs in the background of the queue: failures are logged once per outage.
    /// Notes that every record written so far is on disk.
    fn synced(&self) {
        if let Some(seq) = self.next_seq.checked_sub(1) {
            *lock(&self.synced_head) = Some(ChainHead { seq, hash: self.prev.clone() });
        }
    }

    fn sync_quietly(&mut self) {
        match self.sync_data() {
            Ok(()) => {
                self.sync_failing = false;
                self.synced();
            }
            Err(e) => {
                if !self.sync_failing {
                    tracing::error!(path = %self.path.display(), error = %e, "syncing the audit trail failed");
                }
                self.sync_failing = true;
            }
        }
    }

    fn sync(&mut self) -> Result<(), AuditError> {
        self.sync_data().map_err(io_at(&self.path))?;
        self.synced();
        if self.write_failing {
            return Err(AuditError::Io {
                path: self.path.clone(),
                source: std::io::Error::other("the last audit write failed"),
            });
        }
        Ok(())
    }
}

/// One record line (with its newline) and its hash.
pub(super) fn render(seq: u64, time: &str, prev: &str, event: &AuditEvent) -> Result<(String, String), AuditError> {
    #[derive(Serialize)]
    struct Body<'a> {
        seq: u64,
        time: &'a str,
        prev: &'a str,
        #[serde(flatten)]
        event: &'a AuditEvent,
    }
    let json =
        serde_json::to_string(&Body { seq, time, prev, event }).map_err(|e| AuditError::Encode(e.to_string()))?;
    let body = json.strip_suffix('}').ok_or_else(|| AuditError::Encode("not a JSON object".into()))?;
    let hash = sha256_hex(body);
    Ok((format!("{body},\"hash\":\"{hash}\"}}\n"), hash))
}

/// Locks a mutex whose data stays consistent even if a holder panicked (counters, windows).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// When the file was last written (for a rotated file: about when it was rotated).
fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> AuditError + '_ {
    move |source| AuditError::Io { path: path.to_path_buf(), source }
}

/// Opens for appending, creating as 0600; an existing file is tightened to 0600 as well.
fn open_private_append(path: &Path) -> Result<File, AuditError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = OpenOptions::new().append(true).create(true).mode(0o600).open(path).map_err(io_at(path))?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(io_at(path))?;
    Ok(file)
}

fn rotated_path(dir: &Path, file_name: &OsStr, first_seq: u64) -> PathBuf {
    let mut name = file_name.to_os_string();
    name.push(format!(".{first_seq:0ROTATED_DIGITS$}"));
    dir.join(name)
}

/// Rotated siblings of `file_name` in `dir` with their first seq, oldest first.
fn rotated_files(dir: &Path, file_name: &OsStr) -> Result<Vec<(u64, PathBuf)>, AuditError> {
    let prefix = format!("{}.", file_name.to_string_lossy());
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(AuditError::Io { path: dir.to_path_buf(), source: e }),
    };
    for entry in entries {
        let entry = entry.map_err(io_at(dir))?;
        let name = entry.file_name();
        let Some(digits) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else { continue };
        if digits.len() != ROTATED_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(seq) = digits.parse::<u64>() {
            found.push((seq, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

fn damaged(path: &Path, detail: impl Into<String>) -> AuditError {
    AuditError::Damaged { path: path.to_path_buf(), detail: detail.into() }
}

fn checked(path: &Path, which: &str, line: &[u8]) -> Result<LineRecord, AuditError> {
    check_line(line)
        .map_err(|problem| damaged(path, format!("its {which} record is {}: {}", problem.kind, problem.detail)))
}

fn read_first_record(path: &Path) -> Result<LineRecord, AuditError> {
    let file = File::open(path).map_err(io_at(path))?;
    let mut line = Vec::new();
    BufReader::new(file).take(MAX_LINE_BYTES).read_until(b'\n', &mut line).map_err(io_at(path))?;
    match line.strip_suffix(b"\n") {
        Some(line) => checked(path, "first", line),
        None => Err(damaged(path, "its first line is unterminated or too long")),
    }
}

/// The last record of a non-empty file of `len` bytes, read from the end.
fn read_last_record(path: &Path, len: u64) -> Result<LineRecord, AuditError> {
    let mut file = File::open(path).map_err(io_at(path))?;
    let mut window = TAIL_WINDOW;
    loop {
        let start = len.saturating_sub(window);
        file.seek(SeekFrom::Start(start)).map_err(io_at(path))?;
        let mut tail = Vec::new();
        (&mut file).take(len - start).read_to_end(&mut tail).map_err(io_at(path))?;
        let Some(body) = tail.strip_suffix(b"\n") else {
            return Err(damaged(path, "it ends in the middle of a record (an interrupted write?)"));
        };
        match body.iter().rposition(|&b| b == b'\n') {
            Some(newline) => return checked(path, "last", &body[newline + 1..]),
            None if start == 0 => return checked(path, "last", body),
            None => window = window.saturating_mul(2),
        }
    }
}

/// The last record of the newest non-empty rotated sibling, if any: the chain continues from
/// there when the current file is missing or empty (e.g. a crash right after a rotation).
fn newest_rotated_last_record(dir: &Path, file_name: &OsStr) -> Result<Option<LineRecord>, AuditError> {
    for (_, path) in rotated_files(dir, file_name)?.into_iter().rev() {
        let len = std::fs::metadata(&path).map_err(io_at(&path))?.len();
        if len > 0 {
            tracing::info!(from = %path.display(), "continuing the audit chain from the newest rotated file");
            return read_last_record(&path, len).map(Some);
        }
    }
    Ok(None)
}

#[cfg(test)]
mod write_failures {
    use super::*;

    fn event(n: u32) -> AuditEvent {
        AuditEvent::request(format!("GET /probe/{n}"), Decision::Allow)
    }

    /// A write that fails loses the records it held, and only them: the file keeps whole
    /// records, the chain goes on from the last record on disk, and the losses are counted.
    #[test]
    fn a_failed_write_takes_the_chain_back_to_what_is_on_disk_and_counts_its_records_lost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let (mut writer, _) = Writer::open(&path, &AuditOptions::keep_all(1 << 20)).unwrap();
        let losses = Losses::default();
        for n in 0..3 {
            assert!(writer.append(&now_rfc3339_ms(), &event(n), &losses));
        }
        assert!(writer.write_out());
        // The same file, opened for reading only: every write to it fails.
        let writable = std::mem::replace(&mut writer.file, File::open(&path).unwrap());
        for n in 3..5 {
            writer.append(&now_rfc3339_ms(), &event(n), &losses);
        }
        assert!(!writer.write_out());
        assert_eq!(writer.next_seq, 3, "the chain goes on from the last record on disk");
        writer.count_write_losses(&losses);
        assert_eq!(losses.total.load(Ordering::Relaxed), 2);
        writer.file = writable;
        assert!(writer.report_losses(&losses));
        writer.append(&now_rfc3339_ms(), &event(5), &losses);
        writer.sync_quietly();

        let report = super::super::verify::verify_files(std::slice::from_ref(&path)).unwrap();
        assert!(report.problem.is_none(), "{:?}", report.problem);
        assert_eq!((report.records, report.last_seq), (5, Some(4)));
        let trail = std::fs::read_to_string(&path).unwrap();
        assert!(trail.contains("/probe/2") && trail.contains("/probe/5") && !trail.contains("/probe/3"));
        assert!(trail.contains("2 audit event(s) could not be written"));
    }
}
