//! One interactive session: its state machine, its FIFO statement queue, and what happens when
//! its driver connects, reports, disconnects or its process exits. The gateway, not the
//! driver, is the source of truth for statements.

use super::app_id::AppIdFormat;
use super::kind::{CodeKind, SessionKind};
use super::launch::{clip_text, LogBuffer, ProcessHandle};
use super::record::{SessionRecord, StatementRecord};
use super::spec::SubmitSpec;
use super::state::{SessionState, StatementState};
use super::EngineError;
use crate::rpc::{DriverLink, FromDriver, SessionSecret, ToDriver, Transport};
use crate::sparkui::AppUi;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// What a session was created with; never changes.
#[derive(Debug, Clone, Default)]
pub struct SessionSpec {
    /// The authenticated user who created it.
    pub owner: String,
    /// The user the session acts as (owner, or the impersonated user): ACLs and quotas use it.
    pub effective_user: String,
    /// Session kind.
    pub kind: SessionKind,
    /// How its Spark application is submitted (name, `--proxy-user`, resources, conf).
    pub submit: SubmitSpec,
    /// `heartbeatTimeoutInSecond` (0 = off).
    pub heartbeat_timeout_secs: u32,
    /// `ttl` as given.
    pub ttl: Option<String>,
    /// `idleTimeout` as given.
    pub idle_timeout: Option<String>,
}

/// A statement's output, Livy's JSON object serialized once and shared: listing or showing
/// statements copies no output (the bytes go straight into the response), and what a session
/// keeps is known to the byte.
#[derive(Debug, Clone)]
pub struct Output(Arc<RawValue>);

impl Output {
    /// `value` as the output kept and shown.
    pub fn new(value: &Value) -> Self {
        // Serializing a Value cannot fail (its map keys are strings); `null` is the fallback.
        let raw = serde_json::value::to_raw_value(value).unwrap_or_else(|_| RawValue::NULL.to_owned());
        Self(Arc::from(raw))
    }

    /// Its size in bytes, as JSON.
    pub fn len(&self) -> usize {
        self.0.get().len()
    }

    /// Whether it is empty (never: the smallest JSON is `null`).
    pub fn is_empty(&self) -> bool {
        self.0.get().is_empty()
    }

    /// As a JSON value (a copy; for the few places that look inside).
    pub fn value(&self) -> Value {
        serde_json::from_str(self.0.get()).unwrap_or(Value::Null)
    }
}

impl PartialEq for Output {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}

/// An output's bytes, owned by its `Arc`: a response body can send them without a copy.
struct OutputBytes(Arc<RawValue>);

impl AsRef<[u8]> for OutputBytes {
    fn as_ref(&self) -> &[u8] {
        self.0.get().as_bytes()
    }
}

impl Statement {
    /// Livy's Statement JSON in pieces, the output's bytes shared rather than copied: a list of
    /// statements of many megabytes costs a reader only its small pieces.
    pub fn json_pieces(&self) -> Vec<bytes::Bytes> {
        #[derive(serde::Serialize)]
        struct Head<'a> {
            id: u32,
            code: &'a str,
            state: StatementState,
        }
        let mut head =
            serde_json::to_vec(&Head { id: self.id, code: &self.code, state: self.state }).unwrap_or_default();
        // `{"id":..,"code":..,"state":..}` → `{"id":..,"code":..,"state":..,"output":`
        head.pop();
        head.extend_from_slice(b",\"output\":");
        let output = match &self.output {
            Some(output) => bytes::Bytes::from_owner(OutputBytes(output.0.clone())),
            None => bytes::Bytes::from_static(b"null"),
        };
        let tail = format!(
            ",\"progress\":{},\"started\":{},\"completed\":{}}}",
            serde_json::to_string(&self.progress).unwrap_or_else(|_| "0.0".into()),
            self.started,
            self.completed
        );
        vec![bytes::Bytes::from(head), output, bytes::Bytes::from(tail)]
    }
}

impl serde::Serialize for Output {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

/// One statement, as the API shows it. Cloning it is cheap: the code and the output are shared.
/// Serializes as Livy's Statement, fields in Livy's order.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Statement {
    /// Id, from 0 per session.
    pub id: u32,
    /// The code.
    pub code: Arc<str>,
    /// The interpreter it runs in.
    #[serde(skip)]
    pub kind: CodeKind,
    /// Its state.
    pub state: StatementState,
    /// Livy's output object, once finished.
    pub output: Option<Output>,
    /// 0.0 ..= 1.0
    pub progress: f64,
    /// Epoch ms when it started running (0 = not yet).
    pub started: i64,
    /// Epoch ms when it finished (0 = not yet).
    pub completed: i64,
}

/// Told when one of a session's jobs ends, however it ends (a result, a cancel before it
/// started, the session's end): the job's outcome goes into the audit trail.
#[derive(Clone)]
pub(crate) struct JobEnded(pub(crate) Arc<dyn Fn(&Session, &Statement) + Send + Sync>);

impl std::fmt::Debug for JobEnded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JobEnded")
    }
}

/// The acknowledgement of a statement's result, to send once the result is stored.
#[derive(Debug)]
pub struct PendingAck {
    link: DriverLink,
    /// The statement.
    pub id: u32,
}

impl PendingAck {
    /// Tells the driver it may forget the result.
    pub fn send(self) {
        self.link.send(ToDriver::Ack { id: self.id });
    }
}

/// A point-in-time copy of a session for the API.
#[derive(Debug, Clone)]
pub struct SessionSnapshot {
    /// Id.
    pub id: u32,
    /// What it was created with.
    pub spec: Arc<SessionSpec>,
    /// Current state.
    pub state: SessionState,
    /// Spark application id.
    pub app_id: Option<String>,
    /// The gateway's path to the session's Spark UI (`/sessions/3/sparkui/`), while one is
    /// known and the session lives.
    pub spark_ui_url: Option<String>,
}

/// Timeouts that apply to one session.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    /// Idle timeout (None = off).
    pub idle_timeout: Option<Duration>,
    /// Lifetime (None = off).
    pub ttl: Option<Duration>,
    /// Heartbeat timeout (None = off).
    pub heartbeat_timeout: Option<Duration>,
    /// Statements kept.
    pub statement_retention: usize,
    /// Largest output kept (bytes of its JSON).
    pub max_output_bytes: usize,
    /// Statements waiting to run at once; more are refused.
    pub max_queued_statements: usize,
    /// Bytes of code and output all retained statements may hold together; the oldest
    /// finished statements are forgotten beyond it.
    pub max_retained_bytes: usize,
}

/// An interactive session.
#[derive(Debug)]
pub struct Session {
    /// Id.
    pub id: u32,
    /// What it was created with.
    spec: Arc<SessionSpec>,
    /// Its timeouts.
    limits: SessionLimits,
    /// The driver's secret (for the RPC handshake).
    pub(crate) secret: SessionSecret,
    /// The nonce `secret` was derived with from the gateway's key (see
    /// [`crate::rpc::SecretKey`]): in the record, so the secret can be derived again; None for
    /// a secret that was not derived (tests).
    pub(crate) secret_nonce: Option<[u8; crate::rpc::secret_key::NONCE_LEN]>,
    /// Told when what its record or its statements show changed (None in unit tests).
    pub(crate) on_change: Option<super::registry::OnChange>,
    /// Told when one of its jobs ends (None in unit tests).
    pub(crate) on_job_end: Option<JobEnded>,
    /// spark-submit output and gateway notes about this session.
    pub log: Arc<LogBuffer>,
    /// Where its files live.
    pub dir: PathBuf,
    /// When it was created.
    created: Instant,
    /// When it was created, as the record keeps it (ms since the epoch).
    created_ms: i64,
    /// Held while an upload is stored, so concurrent uploads cannot overrun the session's
    /// upload budget together.
    pub uploads: tokio::sync::Mutex<()>,
    /// Its Spark UI: the key the driver's UI checks, and which port it really listens on.
    pub ui: AppUi,
    /// Woken whenever what it shows changed (a statement's progress or end): long polls wait
    /// on it.
    changed: tokio::sync::Notify,
    /// A warm driver's terms once a request claimed it: they replace those it was started
    /// with (set once; see [`Session::claim`]).
    claimed: std::sync::OnceLock<Claimed>,
    inner: Mutex<Inner>,
}

/// What a claimed warm driver's session was created with instead (see [`Session::claim`]).
#[derive(Debug)]
struct Claimed {
    spec: Arc<SessionSpec>,
    limits: SessionLimits,
    created: Instant,
    created_ms: i64,
}

/// Whether a session is a warm driver (see [`super::warm`]): started ahead for a conf class
/// and shown to nobody until a request of its user claims it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Warm {
    /// An ordinary session (or a warm driver claimed).
    No,
    /// Waiting to be claimed.
    Ready,
    /// Being stopped by the pool: nobody may claim it any more.
    Evicted,
}

/// See [`Session::changing`].
struct Changed<'a> {
    _stored: super::registry::Changing<'a>,
    notify: &'a tokio::sync::Notify,
}

impl Drop for Changed<'_> {
    fn drop(&mut self) {
        self.notify.notify_waiters();
    }
}

#[derive(Debug)]
struct Inner {
    state: SessionState,
    app_id: Option<String>,
    /// The id format of the master it was launched on: only such ids are believed.
    app_ids: AppIdFormat,
    /// YARN cluster mode: this launch's unique application tag, to find (and kill) it there.
    yarn_tag: Option<String>,
    statements: BTreeMap<u32, Statement>,
    queue: VecDeque<u32>,
    running: Option<u32>,
    next_statement_id: u32,
    driver: Option<DriverLink>,
    disconnected_since: Option<Instant>,
    /// While shutting down: the state the stop ends in (`killed` on request, `dead` when the
    /// driver was lost or never came up), whichever of the exit and the stopper comes first.
    stopping_as: Option<SessionState>,
    /// Kubernetes cluster mode: the driver's `<namespace>:<pod>`, to kill it there.
    cluster_driver: Option<String>,
    last_activity: Instant,
    last_heartbeat: Instant,
    finished_at: Option<Instant>,
    /// When its launch began (it left the launch queue): what the start timeout counts from.
    launched_at: Option<Instant>,
    /// `finished_at` as the record keeps it (ms since the epoch).
    finished_ms: Option<i64>,
    process: Option<ProcessHandle>,
    next_request_id: u64,
    completions: HashMap<u64, oneshot::Sender<Vec<String>>>,
    file_adds: HashMap<u64, oneshot::Sender<Result<(), String>>>,
    warm: Warm,
}

/// Longest error text taken from a driver (a reason, an add-file failure): it is shown to
/// clients and logged.
const MAX_DRIVER_MESSAGE_BYTES: usize = 4096;

/// Most completion candidates passed on, and the longest one.
const MAX_COMPLETIONS: usize = 1000;
const MAX_COMPLETION_BYTES: usize = 1024;

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// The error output Livy clients understand, for statements the gateway itself ends.
pub fn error_output(execution_count: u32, ename: &str, evalue: &str) -> Value {
    json!({"status": "error", "execution_count": execution_count, "ename": ename, "evalue": evalue, "traceback": []})
}

/// A statement or a job, by id: they share one queue and one id sequence, and each is found
/// only as what it is.
#[derive(Debug, Clone, Copy)]
enum Entry {
    Statement(u32),
    Job(u32),
}

impl Entry {
    fn id(self) -> u32 {
        match self {
            Self::Statement(id) | Self::Job(id) => id,
        }
    }

    fn matches(self, statement: &Statement) -> bool {
        statement.kind.is_job() == matches!(self, Self::Job(_))
    }

    fn not_found(self, session: u32) -> EngineError {
        match self {
            Self::Statement(statement) => EngineError::StatementNotFound { session, statement },
            Self::Job(job) => EngineError::JobNotFound { session, job },
        }
    }
}

impl Session {
    /// `output`, or an error in its place when it is larger than the session keeps.
    fn bounded_output(&self, id: u32, kind: CodeKind, output: &Value) -> Output {
        let kept = Output::new(output);
        let max = self.limits().max_output_bytes;
        if kept.len() <= max {
            return kept;
        }
        let what = if kind.is_job() { "job" } else { "statement" };
        self.log.push(format!("sparkgate: the output of {what} {id} ({} bytes) was too large to keep", kept.len()));
        let why = if kind.is_job() {
            format!(
                "the job's result is {} bytes as sent (base64), more than this gateway keeps \
                 (sessions.max_output_bytes = {max}); return less, or write large results to storage",
                kept.len()
            )
        } else {
            format!(
                "the statement's output is {} bytes, more than this gateway keeps (sessions.max_output_bytes = {max}); \
                 write large results to storage, or bring back a sample (take(), limit())",
                kept.len()
            )
        };
        Output::new(&error_output(id, "OutputTooLarge", &why))
    }

    /// What it was created with (a claimed warm driver: what the claiming request asked).
    pub fn spec(&self) -> &Arc<SessionSpec> {
        self.claimed.get().map_or(&self.spec, |c| &c.spec)
    }

    /// Its timeouts.
    pub fn limits(&self) -> SessionLimits {
        self.claimed.get().map_or(self.limits, |c| c.limits)
    }

    /// When it was created (a claimed warm driver: when it was claimed).
    pub fn created(&self) -> Instant {
        self.claimed.get().map_or(self.created, |c| c.created)
    }

    /// When it was created, as the record keeps it (ms since the epoch).
    pub fn created_ms(&self) -> i64 {
        self.claimed.get().map_or(self.created_ms, |c| c.created_ms)
    }

    /// Whether it is a warm driver and what of.
    pub fn warm(&self) -> Warm {
        self.lock().warm
    }

    /// Makes a new session a warm driver, hidden until claimed (before it is registered).
    pub fn make_warm(&self) {
        self.lock().warm = Warm::Ready;
    }

    /// Hands a warm driver to the request that asked for its conf class: from now on it is that
    /// request's session, with its `spec`'s terms (timeouts, time to live, counted from now)
    /// and `limits`. False, and nothing changed, when it is no longer there to claim (claimed
    /// by another request, evicted, ended); the caller checked that `spec` is of its class.
    pub fn claim(&self, spec: SessionSpec, limits: SessionLimits) -> bool {
        let _changed = self.changing();
        let mut inner = self.lock();
        if inner.warm != Warm::Ready || inner.state.is_terminal() || inner.state == SessionState::ShuttingDown {
            return false;
        }
        let now = Instant::now();
        let claimed = Claimed { spec: Arc::new(spec), limits, created: now, created_ms: super::record::now_ms() };
        if self.claimed.set(claimed).is_err() {
            return false;
        }
        inner.warm = Warm::No;
        inner.last_activity = now;
        inner.last_heartbeat = now;
        true
    }

    /// Takes a warm driver out of the pool for good (it is to be stopped); false when it was
    /// claimed (or evicted) first.
    pub fn evict(&self) -> bool {
        let mut inner = self.lock();
        if inner.warm != Warm::Ready {
            return false;
        }
        inner.warm = Warm::Evicted;
        true
    }

    /// A new session in `not_started`.
    pub fn new(
        id: u32,
        spec: SessionSpec,
        limits: SessionLimits,
        secret: SessionSecret,
        log: Arc<LogBuffer>,
        dir: PathBuf,
    ) -> Self {
        let now = Instant::now();
        Self {
            id,
            spec: Arc::new(spec),
            limits,
            secret,
            secret_nonce: None,
            on_change: None,
            on_job_end: None,
            log,
            dir,
            created: now,
            created_ms: super::record::now_ms(),
            uploads: tokio::sync::Mutex::new(()),
            ui: AppUi::new(format!("/sessions/{id}/sparkui")),
            changed: tokio::sync::Notify::new(),
            claimed: std::sync::OnceLock::new(),
            inner: Mutex::new(Inner {
                state: SessionState::NotStarted,
                app_id: None,
                app_ids: AppIdFormat::Any,
                yarn_tag: None,
                statements: BTreeMap::new(),
                queue: VecDeque::new(),
                running: None,
                next_statement_id: 0,
                driver: None,
                disconnected_since: None,
                stopping_as: None,
                cluster_driver: None,
                last_activity: now,
                last_heartbeat: now,
                finished_at: None,
                launched_at: None,
                finished_ms: None,
                process: None,
                next_request_id: 1,
                completions: HashMap::new(),
                file_adds: HashMap::new(),
                warm: Warm::No,
            }),
        }
    }

    /// A session taken back from its record after a restart (see [`super::recovery`]): a live
    /// one `recovering` (waiting for its driver to dial back, as after a lost connection), a
    /// finished one as it ended. Its statements as stored: those waiting queued in order, one
    /// running waited for (executing is idempotent per id: the driver answers it again).
    #[allow(clippy::too_many_arguments)]
    pub fn restore(
        record: &SessionRecord,
        spec: SessionSpec,
        statements: Vec<StatementRecord>,
        limits: SessionLimits,
        secret: SessionSecret,
        log: Arc<LogBuffer>,
        dir: PathBuf,
    ) -> Self {
        let mut session = Self::new(record.id, spec, limits, secret, log, dir);
        session.created = super::record::instant_of(record.created_at);
        session.created_ms = record.created_at;
        {
            let inner = session.inner.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner);
            let live = !record.state.is_terminal();
            // Never launched (it waited for a launch slot): it waits again, as it was.
            let queued = record.state == SessionState::NotStarted && record.process.is_none();
            inner.state = if live && !queued { SessionState::Recovering } else { record.state };
            inner.app_id = record.app_id.clone();
            inner.yarn_tag = record.yarn_tag.clone();
            inner.cluster_driver = record.cluster_driver.clone();
            inner.finished_ms = record.finished_at;
            inner.finished_at = record.finished_at.map(super::record::instant_of);
            if record.warm {
                inner.warm = Warm::Ready;
            }
            if live {
                inner.disconnected_since = Some(Instant::now());
            }
            let mut next_id = record.next_statement_id;
            for s in statements {
                let kind = CodeKind::from_stored(&s.kind).unwrap_or(CodeKind::PySpark);
                next_id = next_id.max(s.id.saturating_add(1));
                match s.state {
                    StatementState::Waiting => inner.queue.push_back(s.id),
                    StatementState::Running | StatementState::Cancelling if inner.running.is_none() => {
                        inner.running = Some(s.id);
                    }
                    _ => {}
                }
                let statement = Statement {
                    id: s.id,
                    code: Arc::from(s.code),
                    kind,
                    state: s.state,
                    output: s.output.map(|o| Output(Arc::from(o))),
                    progress: s.progress,
                    started: s.started,
                    completed: s.completed,
                };
                inner.statements.insert(statement.id, statement);
            }
            inner.next_statement_id = next_id;
            if !live {
                // The gateway before the restart ended them (and recorded their ends) when the
                // session ended; its store had not caught up.
                let _ = Self::fail_pending_locked(inner, "the session had ended");
            }
        }
        session
    }

    /// Tells the registry, when dropped, that its record or statements changed, and wakes who
    /// waits for a statement: the first line of every method that changes what is stored, so
    /// it fires once the change is made (and the lock is released), on every path out.
    fn changing(&self) -> Changed<'_> {
        Changed { _stored: super::registry::Changing(self.on_change.as_ref()), notify: &self.changed }
    }

    /// Statement `sid` once what a client sees of it (its state, its progress) differs from
    /// `seen`, or None when `deadline` comes first (an event stream's next event).
    pub async fn next_statement_change(
        &self,
        sid: u32,
        seen: Option<(StatementState, f64)>,
        deadline: Instant,
    ) -> Result<Option<Statement>, EngineError> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let statement = self.entry(Entry::Statement(sid))?;
            if seen != Some((statement.state, statement.progress)) {
                return Ok(Some(statement));
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(None);
            }
        }
    }

    /// Statement `sid` once it has finished, or as it is when `wait` has passed (a long poll).
    pub async fn wait_statement(&self, sid: u32, wait: Duration) -> Result<Statement, EngineError> {
        self.wait_entry(Entry::Statement(sid), wait).await
    }

    /// Job `id` once it has finished, or as it is when `wait` has passed (a long poll).
    pub async fn wait_job(&self, id: u32, wait: Duration) -> Result<Statement, EngineError> {
        self.wait_entry(Entry::Job(id), wait).await
    }

    async fn wait_entry(&self, entry: Entry, wait: Duration) -> Result<Statement, EngineError> {
        let deadline = Instant::now() + wait;
        loop {
            // Registered before the look, so a change between the two is not missed.
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let statement = self.entry(entry)?;
            if statement.state.is_final() || Instant::now() >= deadline {
                return Ok(statement);
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock means a panic happened while holding it; the data is still usable
        // (every update is a small, self-contained assignment).
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Current state.
    pub fn state(&self) -> SessionState {
        self.lock().state
    }

    /// A copy for the API.
    pub fn snapshot(&self) -> SessionSnapshot {
        let inner = self.lock();
        SessionSnapshot {
            id: self.id,
            spec: self.spec().clone(),
            state: inner.state,
            app_id: inner.app_id.clone(),
            spark_ui_url: if inner.state.is_terminal() { None } else { self.ui.path() },
        }
    }

    /// Moves to `next` if that is a legal transition.
    pub fn transition(&self, next: SessionState) -> Result<(), EngineError> {
        let _changed = self.changing();
        let mut inner = self.lock();
        Self::transition_locked(&mut inner, self.id, next)
    }

    fn transition_locked(inner: &mut Inner, id: u32, next: SessionState) -> Result<(), EngineError> {
        if !inner.state.can_become(next) {
            return Err(EngineError::IllegalTransition { id, from: inner.state, to: next });
        }
        if next.is_terminal() && !inner.state.is_terminal() {
            inner.finished_at = Some(Instant::now());
            inner.finished_ms = Some(super::record::now_ms());
        }
        if next == SessionState::Starting && inner.state != SessionState::Starting {
            inner.launched_at = Some(Instant::now());
        }
        inner.state = next;
        Ok(())
    }

    /// Records the launched process.
    pub fn set_process(&self, process: ProcessHandle) {
        // In the record: a restart takes the launch back by it.
        let _changed = self.changing();
        self.lock().process = Some(process);
    }

    /// The launched process, if any.
    pub fn process(&self) -> Option<ProcessHandle> {
        self.lock().process.clone()
    }

    /// Records the id format of the master the session is launched on.
    pub fn set_app_id_format(&self, format: AppIdFormat) {
        self.lock().app_ids = format;
    }

    /// Learns from one line of spark-submit's output: the application id (first believable
    /// one wins, see [`AppIdFormat::find_in_line`]) and the UI's port (checked before use).
    pub fn note_output_line(&self, line: &str) {
        let _changed = self.changing();
        self.ui.offer_line(line);
        let mut inner = self.lock();
        if inner.app_id.is_none() {
            inner.app_id = inner.app_ids.find_in_line(line);
        }
    }

    /// Records the unique YARN tag of this launch (YARN cluster mode).
    pub fn set_yarn_tag(&self, tag: Option<String>) {
        self.lock().yarn_tag = tag;
    }

    /// The unique YARN tag of this launch, if any.
    pub fn yarn_tag(&self) -> Option<String> {
        self.lock().yarn_tag.clone()
    }

    /// A client touched `/sessions/{id}…` (heartbeat).
    pub fn heartbeat(&self) {
        self.lock().last_heartbeat = Instant::now();
    }

    /// Something counts as activity (statements, cancel, completion, a busy→idle change).
    pub fn record_activity(&self) {
        self.lock().last_activity = Instant::now();
    }

    // === statements ===

    /// Queues a statement; it runs when the driver is ready and the statements before it ended.
    /// Refused when [`SessionLimits::max_queued_statements`] are already waiting, or when the
    /// statements that cannot be forgotten yet (waiting, running) would hold more than
    /// [`SessionLimits::max_retained_bytes`].
    pub fn submit(&self, code: String, kind: CodeKind) -> Result<Statement, EngineError> {
        let _changed = self.changing();
        let mut inner = self.lock();
        if !inner.state.accepts_statements() {
            return Err(EngineError::NotAccepting { id: self.id, state: inner.state });
        }
        let waiting = inner.queue.len();
        if waiting >= self.limits().max_queued_statements {
            return Err(EngineError::StatementsQueued { id: self.id, limit: self.limits().max_queued_statements });
        }
        let pending: usize =
            inner.statements.values().filter(|s| !s.state.is_final()).map(|s| s.code.len()).sum::<usize>();
        if pending.saturating_add(code.len()) > self.limits().max_retained_bytes {
            return Err(EngineError::StatementsTooLarge { id: self.id, limit: self.limits().max_retained_bytes });
        }
        let id = inner.next_statement_id;
        inner.next_statement_id += 1;
        let statement = Statement {
            id,
            code: Arc::from(code),
            kind,
            state: StatementState::Waiting,
            output: None,
            progress: 0.0,
            started: 0,
            completed: 0,
        };
        inner.statements.insert(id, statement.clone());
        inner.queue.push_back(id);
        inner.last_activity = Instant::now();
        self.evict_locked(&mut inner);
        self.dispatch_locked(&mut inner);
        let current = inner.statements.get(&id).cloned().unwrap_or(statement);
        Ok(current)
    }

    /// Forgets the oldest finished statements beyond the retention limit, and beyond the
    /// bytes of code and output a session may hold.
    fn evict_locked(&self, inner: &mut Inner) {
        let size = |s: &Statement| s.code.len() + s.output.as_ref().map_or(0, Output::len);
        let mut held: usize = inner.statements.values().map(size).sum();
        while inner.statements.len() > self.limits().statement_retention || held > self.limits().max_retained_bytes {
            let oldest_final = inner.statements.iter().find(|(_, s)| s.state.is_final()).map(|(id, _)| *id);
            match oldest_final.and_then(|id| inner.statements.remove(&id)) {
                Some(gone) => held = held.saturating_sub(size(&gone)),
                None => break, // everything retained is still pending: keep it all
            }
        }
    }

    /// One statement (jobs are not statements: see [`Session::job`]).
    pub fn statement(&self, sid: u32) -> Result<Statement, EngineError> {
        self.entry(Entry::Statement(sid))
    }

    /// One job of the programmatic API: it shares the statements' queue and ids.
    pub fn job(&self, id: u32) -> Result<Statement, EngineError> {
        self.entry(Entry::Job(id))
    }

    fn entry(&self, entry: Entry) -> Result<Statement, EngineError> {
        self.lock()
            .statements
            .get(&entry.id())
            .filter(|s| entry.matches(s))
            .cloned()
            .ok_or_else(|| entry.not_found(self.id))
    }

    /// All retained statements (not jobs), oldest first.
    pub fn statements(&self) -> Vec<Statement> {
        self.lock().statements.values().filter(|s| !s.kind.is_job()).cloned().collect()
    }

    /// Records where a cluster-mode driver runs (Kubernetes `<namespace>:<pod>`).
    pub fn set_cluster_driver(&self, id: String) {
        self.lock().cluster_driver = Some(id);
    }

    /// Where a cluster-mode driver runs, if the gateway named it.
    pub fn cluster_driver(&self) -> Option<String> {
        self.lock().cluster_driver.clone()
    }

    /// Whether a statement is running in the driver now.
    pub fn statement_running(&self) -> bool {
        self.lock().running.is_some()
    }

    /// How many retained statements are in each state (without copying their outputs).
    pub fn statement_state_counts(&self) -> BTreeMap<StatementState, usize> {
        let mut counts = BTreeMap::new();
        for statement in self.lock().statements.values() {
            *counts.entry(statement.state).or_insert(0) += 1;
        }
        counts
    }

    /// Cancels a statement: a waiting one at once; a running one by asking the driver.
    pub fn cancel(&self, sid: u32) -> Result<(), EngineError> {
        self.cancel_entry(Entry::Statement(sid))
    }

    /// Cancels a job, as [`Session::cancel`] a statement.
    pub fn cancel_job(&self, id: u32) -> Result<(), EngineError> {
        self.cancel_entry(Entry::Job(id))
    }

    fn cancel_entry(&self, entry: Entry) -> Result<(), EngineError> {
        let sid = entry.id();
        let _changed = self.changing();
        let mut inner = self.lock();
        let state = inner
            .statements
            .get(&sid)
            .filter(|s| entry.matches(s))
            .map(|s| s.state)
            .ok_or_else(|| entry.not_found(self.id))?;
        inner.last_activity = Instant::now();
        match state {
            StatementState::Waiting => {
                inner.queue.retain(|q| *q != sid);
                if let Some(s) = inner.statements.get_mut(&sid) {
                    s.state = StatementState::Cancelled;
                    s.output = Some(Output::new(&error_output(
                        sid,
                        "Cancelled",
                        if s.kind.is_job() {
                            "the job was cancelled before it started"
                        } else {
                            "the statement was cancelled before it started"
                        },
                    )));
                    s.completed = now_ms();
                    self.jobs_ended(std::slice::from_ref(s));
                }
            }
            StatementState::Running | StatementState::Cancelling => {
                if let Some(s) = inner.statements.get_mut(&sid) {
                    s.state = StatementState::Cancelling;
                }
                if let Some(driver) = &inner.driver {
                    driver.send(ToDriver::Cancel { id: sid });
                }
            }
            StatementState::Available | StatementState::Cancelled => {}
        }
        Ok(())
    }

    /// Sends the next queued statement if the driver is free.
    fn dispatch_locked(&self, inner: &mut Inner) {
        if inner.running.is_some() || !matches!(inner.state, SessionState::Idle | SessionState::Busy) {
            return;
        }
        let Some(driver) = inner.driver.clone() else { return };
        while let Some(sid) = inner.queue.pop_front() {
            let Some(statement) = inner.statements.get_mut(&sid) else { continue };
            if statement.state != StatementState::Waiting {
                continue;
            }
            statement.state = StatementState::Running;
            statement.started = now_ms();
            let msg =
                ToDriver::Execute { id: sid, kind: statement.kind.as_str().into(), code: statement.code.to_string() };
            inner.running = Some(sid);
            inner.state = SessionState::Busy;
            driver.send(msg);
            return;
        }
        if inner.state == SessionState::Busy {
            inner.state = SessionState::Idle;
            inner.last_activity = Instant::now(); // busy → idle counts as activity (LIVY-633)
        }
    }

    /// Ends every pending statement because the session can no longer run them; returns the
    /// jobs among them, for [`Session::jobs_ended`].
    #[must_use]
    fn fail_pending_locked(inner: &mut Inner, reason: &str) -> Vec<Statement> {
        let now = now_ms();
        inner.queue.clear();
        inner.running = None;
        let mut jobs = Vec::new();
        for s in inner.statements.values_mut() {
            let pending = !matches!(s.state, StatementState::Available | StatementState::Cancelled);
            match s.state {
                StatementState::Waiting => {
                    s.state = StatementState::Cancelled;
                    s.output = Some(Output::new(&error_output(s.id, "SessionStopped", reason)));
                    s.completed = now;
                }
                StatementState::Running | StatementState::Cancelling => {
                    s.state = if s.state == StatementState::Cancelling {
                        StatementState::Cancelled
                    } else {
                        StatementState::Available
                    };
                    s.output = Some(Output::new(&error_output(s.id, "SessionStopped", reason)));
                    s.progress = 1.0;
                    s.completed = now;
                }
                StatementState::Available | StatementState::Cancelled => {}
            }
            if pending && s.kind.is_job() {
                jobs.push(s.clone());
            }
        }
        for (_, tx) in inner.completions.drain() {
            let _ = tx.send(Vec::new());
        }
        for (_, tx) in inner.file_adds.drain() {
            let _ = tx.send(Err(reason.to_string()));
        }
        jobs
    }

    /// Tells the hook that these jobs ended (their outcomes are in them).
    fn jobs_ended(&self, jobs: &[Statement]) {
        if let Some(hook) = &self.on_job_end {
            for job in jobs.iter().filter(|j| j.kind.is_job()) {
                (hook.0)(self, job);
            }
        }
    }

    // === the driver ===

    /// A driver authenticated for this session.
    pub fn attach(&self, link: DriverLink) {
        let _changed = self.changing();
        let mut inner = self.lock();
        if inner.state.is_terminal() || inner.state == SessionState::ShuttingDown {
            link.send(ToDriver::Shutdown);
            return;
        }
        inner.disconnected_since = None;
        if let Some(sid) = inner.running {
            // Executing is idempotent per id: a driver that already ran it re-sends the result.
            if let Some(s) = inner.statements.get(&sid) {
                link.send(ToDriver::Execute { id: sid, kind: s.kind.as_str().into(), code: s.code.to_string() });
                if s.state == StatementState::Cancelling {
                    link.send(ToDriver::Cancel { id: sid });
                }
            }
        }
        let transport = link.transport();
        inner.driver = Some(link);
        self.log.push(format!("sparkgate: driver connected to session {} over {transport}", self.id));
        self.dispatch_locked(&mut inner);
    }

    /// The driver connection `conn_id` closed.
    pub fn detach(&self, conn_id: u64) {
        let _changed = self.changing();
        let mut inner = self.lock();
        if inner.driver.as_ref().map(|d| d.conn_id) == Some(conn_id) {
            inner.driver = None;
            // Requests sent on this connection will not be answered (completion and add-file
            // are not re-sent after a reconnect): fail their waiters now instead of at their timeout.
            inner.completions.clear();
            inner.file_adds.clear();
            if !inner.state.is_terminal() && inner.state != SessionState::ShuttingDown {
                inner.disconnected_since = Some(Instant::now());
                self.log.push("sparkgate: driver connection lost; waiting for it to reconnect".to_string());
            }
        }
    }

    /// Closes the driver connection from the gateway's side (the driver redials and re-sends
    /// what it has not had acknowledged). Used to recover a wedged connection, and by tests.
    pub fn drop_driver_connection(&self) -> bool {
        let mut inner = self.lock();
        let Some(link) = inner.driver.take() else { return false };
        inner.disconnected_since = Some(Instant::now());
        drop(link); // the connection's writer sees its channel close and ends the connection
        true
    }

    /// Whether a driver is connected.
    pub fn driver_connected(&self) -> bool {
        self.lock().driver.is_some()
    }

    /// How the connected driver reached the gateway, if one is connected.
    pub fn driver_transport(&self) -> Option<Transport> {
        self.lock().driver.as_ref().map(DriverLink::transport)
    }

    /// Asks the driver to stop (no-op if none is connected). Returns whether it was asked.
    pub fn request_driver_shutdown(&self) -> bool {
        self.lock().driver.as_ref().is_some_and(|d| d.send(ToDriver::Shutdown))
    }

    /// Handles a message from the driver connection `conn_id`. A statement's result is to be
    /// acknowledged (the driver then forgets it) only once it is stored: that is returned, for
    /// the caller to send after the store has it.
    pub fn on_driver_message(&self, conn_id: u64, msg: FromDriver) -> Option<PendingAck> {
        let _changed = self.changing();
        let mut inner = self.lock();
        let driver = inner.driver.clone()?;
        if driver.conn_id != conn_id {
            return None; // a replaced connection's late message
        }
        let mut ack = None;
        match msg {
            FromDriver::State { state, message } => match state.as_str() {
                "idle"
                    if matches!(
                        inner.state,
                        SessionState::Starting | SessionState::Recovering | SessionState::NotStarted
                    ) =>
                {
                    let recovered = inner.state == SessionState::Recovering;
                    inner.state = SessionState::Idle;
                    inner.last_activity = Instant::now();
                    if recovered {
                        self.log.push(format!("sparkgate: session {} is back after the gateway's restart", self.id));
                    } else {
                        self.log.push(format!("sparkgate: session {} is ready", self.id));
                    }
                    if inner.running.is_some() {
                        // A statement sent before the restart still runs.
                        inner.state = SessionState::Busy;
                    }
                    self.dispatch_locked(&mut inner);
                }
                "error" => {
                    // The driver's words (user code can send anything): bounded like a log line.
                    let why = message.map_or_else(
                        || "the driver reported an error".into(),
                        |m| clip_text(&m, MAX_DRIVER_MESSAGE_BYTES),
                    );
                    self.log.push(format!("sparkgate: driver error: {why}"));
                    if Self::transition_locked(&mut inner, self.id, SessionState::Error).is_ok() {
                        let ended = Self::fail_pending_locked(&mut inner, &format!("the session failed: {why}"));
                        self.jobs_ended(&ended);
                    }
                }
                _ => {}
            },
            FromDriver::AppInfo { app_id, spark_ui_url } => {
                // User code shares the driver and can send this too: an id counts only in the
                // master's format, and only the first; a UI address is only a port to check.
                if inner.app_id.is_none() {
                    inner.app_id = app_id.filter(|id| inner.app_ids.accepts(id));
                }
                if let Some(url) = spark_ui_url {
                    self.ui.offer_url(&url);
                }
            }
            FromDriver::StatementUpdate { id, progress, .. } => {
                if let Some(s) = inner.statements.get_mut(&id) {
                    if matches!(s.state, StatementState::Running | StatementState::Cancelling) {
                        s.progress = progress.clamp(0.0, 1.0);
                    }
                }
            }
            FromDriver::StatementResult { id, state, output, completed } => {
                // Always acknowledged, even a duplicate, so the driver can forget it.
                ack = Some(PendingAck { link: driver.clone(), id });
                let next = if state == "cancelled" { StatementState::Cancelled } else { StatementState::Available };
                let mut ran_before_restart = false;
                if let Some(s) = inner.statements.get_mut(&id) {
                    if s.state == StatementState::Waiting {
                        // Sent to the driver just before the gateway's restart, which stored it
                        // as still waiting: it ran; its result counts, and it is not sent again.
                        s.state = StatementState::Running;
                        ran_before_restart = true;
                    }
                    if s.state.can_become(next) {
                        s.state = next;
                        s.output = Some(self.bounded_output(id, s.kind, &output));
                        s.progress = 1.0;
                        // The driver's time when plausible (not before the start, not ahead).
                        let now = now_ms();
                        s.completed = completed.filter(|at| *at >= s.started && *at <= now).unwrap_or(now);
                        // (A result seen before changes nothing and is not a second end.)
                        self.jobs_ended(std::slice::from_ref(s));
                    }
                }
                if ran_before_restart {
                    inner.queue.retain(|queued| *queued != id);
                }
                self.evict_locked(&mut inner);
                if inner.running == Some(id) {
                    inner.running = None;
                    self.dispatch_locked(&mut inner);
                }
            }
            FromDriver::Completion { request_id, candidates } => {
                if let Some(tx) = inner.completions.remove(&request_id) {
                    let bounded = candidates
                        .into_iter()
                        .filter(|c| c.len() <= MAX_COMPLETION_BYTES)
                        .take(MAX_COMPLETIONS)
                        .collect();
                    let _ = tx.send(bounded);
                }
            }
            FromDriver::AddFileResult { request_id, ok, error } => {
                if let Some(tx) = inner.file_adds.remove(&request_id) {
                    let error = error.map_or_else(|| "failed".into(), |e| clip_text(&e, MAX_DRIVER_MESSAGE_BYTES));
                    let _ = tx.send(if ok { Ok(()) } else { Err(error) });
                }
            }
            FromDriver::Hello { .. } | FromDriver::Proof { .. } | FromDriver::Pong => {}
        }
        ack
    }

    /// Asks the driver for completion candidates.
    pub async fn complete(
        &self,
        kind: CodeKind,
        code: String,
        cursor: usize,
        timeout: Duration,
    ) -> Result<Vec<String>, EngineError> {
        let (request_id, rx) = {
            let mut inner = self.lock();
            inner.last_activity = Instant::now();
            let driver = inner.driver.clone().ok_or_else(|| {
                EngineError::DriverUnavailable(format!(
                    "session {} has no connected driver (state {})",
                    self.id, inner.state
                ))
            })?;
            let request_id = inner.next_request_id;
            inner.next_request_id += 1;
            let (tx, rx) = oneshot::channel();
            inner.completions.insert(request_id, tx);
            driver.send(ToDriver::Complete { request_id, kind: kind.as_str().into(), code, cursor });
            (request_id, rx)
        };
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(candidates)) => Ok(candidates),
            Ok(Err(_)) => Err(EngineError::DriverUnavailable(format!(
                "the driver connection of session {} closed before it answered the completion request",
                self.id
            ))),
            Err(_) => {
                self.lock().completions.remove(&request_id);
                Err(EngineError::DriverTimeout(format!(
                    "session {} did not answer the completion request in time",
                    self.id
                )))
            }
        }
    }

    /// Asks the driver to add a jar, Python file or file (`what`: `jar`, `pyfile`, `file`) so
    /// later statements can use it.
    pub async fn add_file(&self, what: &str, uri: String, timeout: Duration) -> Result<(), EngineError> {
        let (request_id, rx) = {
            let mut inner = self.lock();
            if !matches!(inner.state, SessionState::Idle | SessionState::Busy) {
                return Err(EngineError::NotAccepting { id: self.id, state: inner.state });
            }
            inner.last_activity = Instant::now();
            let driver = inner.driver.clone().ok_or_else(|| {
                EngineError::DriverUnavailable(format!("session {} has no connected driver right now", self.id))
            })?;
            let request_id = inner.next_request_id;
            inner.next_request_id += 1;
            let (tx, rx) = oneshot::channel();
            inner.file_adds.insert(request_id, tx);
            driver.send(ToDriver::AddFile { request_id, what: what.to_string(), uri });
            (request_id, rx)
        };
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(why))) => Err(EngineError::InvalidRequest(format!("the driver could not add it: {why}"))),
            Ok(Err(_)) => Err(EngineError::DriverUnavailable(format!(
                "the driver connection of session {} closed before it confirmed the added file",
                self.id
            ))),
            Err(_) => {
                self.lock().file_adds.remove(&request_id);
                Err(EngineError::DriverTimeout(format!("session {} did not confirm the added file in time", self.id)))
            }
        }
    }

    // === lifecycle ===

    /// The launched process exited with `code`.
    pub fn process_exited(&self, code: i32) {
        let _changed = self.changing();
        let mut inner = self.lock();
        inner.driver = None;
        if inner.state.is_terminal() {
            return;
        }
        let (next, reason) = if inner.state == SessionState::ShuttingDown {
            (
                inner.stopping_as.unwrap_or(SessionState::Killed),
                format!("spark-submit exited with status {code} after shutdown was requested"),
            )
        } else {
            (SessionState::Dead, format!("spark-submit exited unexpectedly with status {code}{}", signal_hint(code)))
        };
        self.log.push(format!("sparkgate: {reason}"));
        let _ = Self::transition_locked(&mut inner, self.id, next);
        let ended = Self::fail_pending_locked(&mut inner, &format!("the session ended: {reason}"));
        self.jobs_ended(&ended);
    }

    /// Ends the session in a terminal state with a reason (after its process was stopped).
    pub fn finish(&self, next: SessionState, reason: &str) {
        let _changed = self.changing();
        let mut inner = self.lock();
        inner.driver = None;
        if inner.state.is_terminal() {
            return;
        }
        self.log.push(format!("sparkgate: {reason}"));
        let _ = Self::transition_locked(&mut inner, self.id, next);
        let ended = Self::fail_pending_locked(&mut inner, &format!("the session ended: {reason}"));
        self.jobs_ended(&ended);
    }

    /// Begins a stop that ends in `final_state`: moves to `shutting_down` unless already
    /// stopping or finished. Returns false if another stop is already under way or the session
    /// is finished.
    pub fn begin_shutdown(&self, final_state: SessionState) -> bool {
        let _changed = self.changing();
        let mut inner = self.lock();
        if inner.state.is_terminal() || inner.state == SessionState::ShuttingDown {
            return false;
        }
        inner.state = SessionState::ShuttingDown;
        inner.stopping_as = Some(final_state);
        inner.queue.clear();
        true
    }

    /// What the timeout checker needs to know, taken under one lock.
    pub(crate) fn timers(&self) -> Timers {
        let inner = self.lock();
        Timers {
            state: inner.state,
            last_activity: inner.last_activity,
            last_heartbeat: inner.last_heartbeat,
            disconnected_since: inner.disconnected_since,
            finished_at: inner.finished_at,
            launched_at: inner.launched_at,
            has_work: inner.running.is_some() || !inner.queue.is_empty(),
        }
    }
}

impl super::registry::Entry for Session {
    const KIND: crate::acl::ResourceKind = crate::acl::ResourceKind::Session;

    fn id(&self) -> u32 {
        self.id
    }

    fn name(&self) -> Option<&str> {
        self.spec().submit.name.as_deref()
    }

    fn effective_user(&self) -> &str {
        &self.spec().effective_user
    }

    fn state(&self) -> SessionState {
        Session::state(self)
    }

    fn counted(&self) -> bool {
        let inner = self.lock();
        inner.state.is_live() && inner.warm != Warm::Evicted
    }

    fn finished_at(&self) -> Option<Instant> {
        self.lock().finished_at
    }

    fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    fn children(&self) -> Vec<(u32, u64)> {
        use std::hash::{Hash, Hasher};
        // What can change in a statement (its code never does; a new output is a new
        // allocation): cheap to compute however large the output.
        let fingerprint = |s: &Statement| {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            (s.state as u8, s.progress.to_bits(), s.started, s.completed).hash(&mut hasher);
            s.output.as_ref().map(|o| Arc::as_ptr(&o.0) as *const u8 as usize).hash(&mut hasher);
            hasher.finish()
        };
        self.lock().statements.values().map(|s| (s.id, fingerprint(s))).collect()
    }

    fn child_record(&self, id: u32) -> Option<Vec<u8>> {
        let s = self.lock().statements.get(&id).cloned()?;
        let output = s.output.as_ref().map(|o| o.0.get().to_string()).and_then(|o| RawValue::from_string(o).ok());
        Some(super::record::encode(&StatementRecord {
            id: s.id,
            code: s.code.to_string(),
            state: s.state,
            output,
            progress: s.progress,
            started: s.started,
            completed: s.completed,
            kind: s.kind.as_str().to_string(),
        }))
    }

    fn record(&self) -> Vec<u8> {
        let spec = self.spec();
        let inner = self.lock();
        super::record::encode(&SessionRecord {
            id: self.id,
            kind: spec.kind.as_str().to_string(),
            owner: spec.owner.clone(),
            effective_user: spec.effective_user.clone(),
            submit: spec.submit.clone(),
            heartbeat_timeout_secs: spec.heartbeat_timeout_secs,
            ttl: spec.ttl.clone(),
            idle_timeout: spec.idle_timeout.clone(),
            secret_nonce: self.secret_nonce.map(hex::encode),
            state: inner.state,
            app_id: inner.app_id.clone(),
            next_statement_id: inner.next_statement_id,
            process: inner.process.as_ref().and_then(|p| p.identity.clone()),
            yarn_tag: inner.yarn_tag.clone(),
            cluster_driver: inner.cluster_driver.clone(),
            created_at: self.created_ms(),
            finished_at: inner.finished_ms,
            warm: inner.warm != Warm::No,
        })
    }
}

/// A session's clocks, for the timeout checker.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timers {
    pub(crate) state: SessionState,
    pub(crate) last_activity: Instant,
    pub(crate) last_heartbeat: Instant,
    pub(crate) disconnected_since: Option<Instant>,
    pub(crate) finished_at: Option<Instant>,
    pub(crate) launched_at: Option<Instant>,
    pub(crate) has_work: bool,
}

fn signal_hint(code: i32) -> &'static str {
    match code {
        137 => " (killed by SIGKILL: out of memory, or killed by an operator)",
        143 => " (terminated by SIGTERM)",
        _ => "",
    }
}

#[cfg(test)]
mod tests;
