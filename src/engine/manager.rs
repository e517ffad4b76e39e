//! The SessionManager: owns every interactive session, launches their drivers, enforces the
//! caps, runs the timeout checker and collects finished sessions.

use super::app_id::AppIdFormat;
use super::kind::SessionKind;
use super::launch::{self, LaunchSpec, SparkEnv};
use super::limits;
use super::names;
use super::record::{self, SessionRecord, StatementRecord};
use super::registry::Registry;
use super::sandbox::Confinement;
use super::session::{JobEnded, Session, SessionLimits, SessionSpec, Warm};
use super::start;
use super::state::SessionState;
use super::warm::{self, WarmDriver};
use super::EngineError;
use crate::acl::policy::Quota;
use crate::audit::{AuditEvent, AuditLog};
use crate::audit_slots::Decision;
use crate::config::{parse_duration, ValidatedConfig};
use crate::rpc::{
    DriverLink, DriverRegistry, FromDriver, LocalListenError, LocalListeners, Peer, SecretKey, SessionSecret,
};
use crate::sparkui::AppUi;
use crate::store::{AnyStore, Stored, Version};
use serde_json::json;
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Where drivers dial back to, and how they recognise the gateway.
#[derive(Debug, Clone)]
pub struct RpcEndpoint {
    /// Host drivers dial.
    pub host: String,
    /// Port drivers dial.
    pub port: u16,
    /// Name to check in the RPC certificate.
    pub server_name: String,
    /// PEM the driver trusts for the RPC certificate.
    pub ca_pem: String,
}

/// The log of a launch an earlier run started, to follow again (a missing or unreadable one
/// is made anew: what the launch writes from now on is kept).
pub(crate) fn reopen_log(sessions: &crate::config::SessionsConfig, path: &std::path::Path) -> Arc<launch::LogBuffer> {
    let (cap, max) = (sessions.log_tail_lines, sessions.max_log_file_bytes);
    launch::LogBuffer::follow(cap, path, max, false)
        .or_else(|_| launch::LogBuffer::follow(cap, path, max, true))
        .unwrap_or_else(|_| launch::LogBuffer::new(cap, None))
}

/// A session's log file, in its directory.
pub const SESSION_LOG: &str = "session.log";

/// The environment variable that names the driver's configuration file.
const CONF_FILE_VAR: &str = "SPARKGATE_DRIVER_CONF";

/// The environment variable that holds the driver's configuration itself (Kubernetes). Its
/// name contains `SECRET`, so Spark's default redaction hides it in the UI and event logs.
const CONF_INLINE_VAR: &str = "SPARKGATE_DRIVER_SECRET_CONF";

/// How the driver's configuration (with the RPC secret) reaches the driver — never on argv:
/// - client mode: the driver runs on this host and reads the 0600 file where it is;
/// - YARN cluster mode: spark-submit ships the file in the files list (`spark.files`), which
///   YARN stages in the application's private staging directory, and the driver's environment
///   names it there;
/// - Kubernetes cluster mode: the files list would upload it to `spark.kubernetes.file.upload.path`,
///   a directory that may be shared by many applications; instead the configuration itself goes
///   into the driver pod's environment (`spark.kubernetes.driverEnv.*`, in the owner-only
///   properties file on this host), readable only by those who may read the pod's spec — as the
///   driver itself is.
///
/// Returns the files list, the conf to add and spark-submit's extra environment.
fn driver_conf_delivery(
    spark: &crate::config::SparkConfig,
    user_files: &[String],
    conf_file: &std::path::Path,
    conf_json: &str,
    session_id: u32,
) -> (Vec<String>, BTreeMap<String, String>, BTreeMap<String, String>) {
    let mut conf = launch::cluster_conf(spark, launch::AppKind::Session, session_id);
    if spark.deploy_mode != "cluster" {
        let env = BTreeMap::from([(CONF_FILE_VAR.to_string(), conf_file.display().to_string())]);
        return (user_files.to_vec(), conf, env);
    }
    if spark.master.starts_with("k8s://") {
        conf.insert(format!("spark.kubernetes.driverEnv.{CONF_INLINE_VAR}"), conf_json.to_string());
        return (user_files.to_vec(), conf, BTreeMap::new());
    }
    let mut files = user_files.to_vec();
    files.push(conf_file.display().to_string());
    let name = conf_file.file_name().map_or_else(|| "driver-conf.json".into(), |n| n.to_string_lossy().into_owned());
    conf.insert(format!("spark.yarn.appMasterEnv.{CONF_FILE_VAR}"), name);
    (files, conf, BTreeMap::new())
}

/// The sessions of a gateway, as the RPC server sees them: who may connect (their secrets),
/// where drivers' messages go. Made before the RPC server starts and the [`SessionManager`]
/// is built with it, so neither needs the other set afterwards.
#[derive(Debug)]
pub struct SessionRegistry {
    /// Itself, for the tasks it starts.
    me: std::sync::Weak<SessionRegistry>,
    /// Ids, names, lookup, caps; the records in the store.
    entries: Registry<Session>,
    /// Where engine security events go.
    audit: Arc<AuditLog>,
    /// What sessions' RPC secrets are derived from.
    key: SecretKey,
    rpc_auth_failures: std::sync::atomic::AtomicU64,
}

impl SessionRegistry {
    /// Records each job's end in the trail: its id, type and outcome, never its bytes or its
    /// result.
    fn job_end_hook(&self) -> JobEnded {
        let audit = self.audit.clone();
        JobEnded(Arc::new(move |session: &Session, job: &super::session::Statement| {
            let status = super::job::JobStatus::of(job);
            audit.record(
                AuditEvent::security("job_finished", Decision::Info)
                    .principal_name(session.spec().owner.clone())
                    .effective_user(session.spec().effective_user.clone())
                    .resource(format!("session:{}/job:{}", session.id, job.id))
                    .reason(format!("{} job {}", super::job::job_type(job.kind), status.state)),
            );
        }))
    }

    /// The sessions over `store`, under `config`'s caps, their secrets derived from `key`.
    pub fn new(config: &ValidatedConfig, store: Arc<AnyStore>, audit: Arc<AuditLog>, key: SecretKey) -> Arc<Self> {
        let sessions = &config.config.sessions;
        let caps = limits::Caps {
            kind: "sessions",
            live: sessions.max_sessions,
            launches: sessions.max_concurrent_launches,
            queued: true,
        };
        let dirs = config.config.server.data_dir.join("sessions");
        Arc::new_cyclic(|me| Self {
            me: me.clone(),
            entries: Registry::new(store, caps, dirs),
            audit,
            key,
            rpc_auth_failures: std::sync::atomic::AtomicU64::new(0),
        })
    }
}

impl SessionRegistry {
    /// Session `id`'s Spark UI, its key derived with `nonce` (the same after a restart).
    fn ui_of(&self, id: u32, nonce: Option<&[u8; crate::rpc::secret_key::NONCE_LEN]>) -> AppUi {
        AppUi::with_key(format!("/sessions/{id}/sparkui"), nonce.and_then(|n| self.key.derive_ui_key("session", id, n)))
    }
}

/// How drivers reach the gateway: the RPC server's address and CA, and the listeners of
/// sessions' own sockets.
#[derive(Debug, Clone)]
pub struct DriverChannel {
    /// Where drivers dial and whom they trust.
    pub endpoint: RpcEndpoint,
    /// Opens each local or client-mode session's own RPC socket (None: every driver dials the
    /// TCP port).
    pub local: Option<LocalListeners>,
}

/// Owns every interactive session.
#[derive(Debug)]
pub struct SessionManager {
    config: Arc<ValidatedConfig>,
    spark: Option<Arc<SparkEnv>>,
    /// None: no RPC server (tests): launches fail visibly.
    channel: Option<DriverChannel>,
    sessions: Arc<SessionRegistry>,
    /// Sessions accepted beyond the launch caps, `not_started` until [`Self::pump_launches`]
    /// starts them, in the order they were accepted.
    launch_queue: std::sync::Mutex<LaunchQueue>,
    /// Woken by every session change: a launch that ends frees a slot.
    launch_wake: Arc<tokio::sync::Notify>,
    /// The conf classes users asked for, kept warm (see [`warm`]).
    warm: warm::Pools,
    /// A warm driver is being registered and launched (one at a time).
    warm_starting: std::sync::atomic::AtomicBool,
    /// The gateway is stopping every session: nothing is launched any more.
    closing: std::sync::atomic::AtomicBool,
    /// Each user's quota as the access policy says now (set once the policy is loaded).
    quotas: std::sync::OnceLock<QuotaSource>,
    /// Warm drivers coming up, paused (SIGSTOP) while a request's driver starts: by id,
    /// since when and for how long before (see [`SessionManager::pace_warm`]).
    paused: std::sync::Mutex<HashMap<u32, Paused>>,
}

/// A user's quota as the access policy says now.
pub struct QuotaSource(pub Box<dyn Fn(&str) -> Quota + Send + Sync>);

impl std::fmt::Debug for QuotaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QuotaSource")
    }
}

/// How long a warm driver's start has been paused.
#[derive(Debug, Default, Clone, Copy)]
struct Paused {
    since: Option<Instant>,
    before: Duration,
    /// When it last went on.
    resumed: Option<Instant>,
}

/// The longest a warm driver is paused at a time, and then at least left to run: well within
/// the driver channel's ping timeout and reconnect window, so a pause never costs a driver.
/// (Unit tests use a shorter one, to see it end.)
const MAX_PAUSE: Duration = Duration::from_secs(if cfg!(test) { 3 } else { 20 });

impl Paused {
    /// Paused in all, until `now`.
    fn total(&self, now: Instant) -> Duration {
        self.before + self.since.map_or(Duration::ZERO, |since| now.duration_since(since))
    }
}

fn lock_queue(queue: &std::sync::Mutex<LaunchQueue>) -> std::sync::MutexGuard<'_, LaunchQueue> {
    queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Users whose last turn is remembered, beyond those waiting now.
const MAX_TURNS_KEPT: usize = 4096;

/// The sessions waiting for a launch slot, and whose turn it was last.
#[derive(Debug, Default)]
struct LaunchQueue {
    /// In the order they were accepted.
    waiting: Vec<Queued>,
    /// Each user's last turn (a launch from the queue).
    served: HashMap<String, u64>,
    /// Turns handed out.
    turn: u64,
    /// The users of launches chosen and not yet `starting` (being launched outside the lock).
    choosing: Vec<String>,
}

/// Which waiting session starts next: among those whose user is under their own launch quota,
/// the user with the fewest sessions starting now, then the user served longest ago (never
/// first), then the earliest accepted. So each user's sessions start in the order they were
/// accepted, and users take turns: a hundred sessions from one notebook server do not hold
/// back a colleague's one.
fn next_launch(waiting: &[Queued], starting: &HashMap<&str, usize>, served: &HashMap<String, u64>) -> Option<usize> {
    let starting_of = |user: &str| starting.get(user).copied().unwrap_or(0);
    waiting
        .iter()
        .enumerate()
        .filter(|(_, q)| starting_of(&q.user) < q.user_launches)
        .min_by_key(|(at, q)| (starting_of(&q.user), served.get(&q.user).copied().unwrap_or(0), *at))
        .map(|(at, _)| at)
}

/// A session waiting for a launch slot.
#[derive(Debug, Clone)]
struct Queued {
    id: u32,
    user: String,
    /// How many of this user's sessions may be starting at once.
    user_launches: usize,
}

impl SessionManager {
    /// A manager of `sessions`. `spark` None means launching is impossible (sessions die at
    /// once with a clear reason), which is how router tests run without Spark; so does a
    /// `channel` of None.
    pub fn new(
        config: Arc<ValidatedConfig>,
        spark: Option<Arc<SparkEnv>>,
        sessions: Arc<SessionRegistry>,
        channel: Option<DriverChannel>,
    ) -> Arc<Self> {
        Arc::new(Self {
            config,
            spark,
            channel,
            sessions,
            launch_queue: std::sync::Mutex::new(LaunchQueue::default()),
            launch_wake: Arc::new(tokio::sync::Notify::new()),
            warm: warm::Pools::default(),
            warm_starting: std::sync::atomic::AtomicBool::new(false),
            closing: std::sync::atomic::AtomicBool::new(false),
            paused: std::sync::Mutex::new(HashMap::new()),
            quotas: std::sync::OnceLock::new(),
        })
    }

    /// Where warm launches read their user's quota (the live policy; without one, the quota of
    /// the user's last request).
    pub fn set_quota_source(&self, quotas: QuotaSource) {
        let _ = self.quotas.set(quotas);
    }

    /// `user`'s quota as the live policy says (None before a policy is set).
    fn quota_now(&self, user: &str) -> Option<Quota> {
        self.quotas.get().map(|quotas| (quotas.0)(user))
    }

    /// The hook a session calls when it changes: its record is written, and the launch queue
    /// looks whether a slot freed.
    fn change_hook(&self, id: u32) -> super::registry::OnChange {
        let wake = self.launch_wake.clone();
        Registry::on_change(&self.sessions, |r: &SessionRegistry| &r.entries, id).then(move || wake.notify_one())
    }

    /// Queues session `id`'s launch (the user may have `user_launches` starting at once).
    fn queue_launch(self: &Arc<Self>, id: u32, user: &str, user_launches: usize) {
        lock_queue(&self.launch_queue).waiting.push(Queued { id, user: user.to_string(), user_launches });
        self.pump_launches();
    }

    /// Starts queued sessions while the launch cap has room, in the order [`next_launch`]
    /// picks. A queued session that was deleted meanwhile leaves the queue. The choice is made
    /// under the queue's lock, the launch (files, a fork) outside it: a chosen launch counts
    /// against the caps until it is `starting`, so concurrent pumps never start too many.
    pub fn pump_launches(self: &Arc<Self>) {
        let cap = self.config.config.sessions.max_concurrent_launches;
        loop {
            if self.closing.load(std::sync::atomic::Ordering::Acquire) {
                return;
            }
            let (session, user) = {
                let mut queue = lock_queue(&self.launch_queue);
                if queue.waiting.is_empty() {
                    return;
                }
                let sessions = self.all();
                queue
                    .waiting
                    .retain(|q| sessions.iter().any(|s| s.id == q.id && s.state() == SessionState::NotStarted));
                let mut starting: HashMap<&str, usize> = HashMap::new();
                for user in &queue.choosing {
                    *starting.entry(user.as_str()).or_default() += 1;
                }
                for s in &sessions {
                    // Warm drivers never take a launch slot from a request.
                    if s.warm() != Warm::No {
                        continue;
                    }
                    // A launch taken back after a restart whose driver is not back yet is a JVM
                    // starting too.
                    let state = s.state();
                    if state == SessionState::Starting || (state == SessionState::Recovering && !s.driver_connected()) {
                        *starting.entry(s.spec().effective_user.as_str()).or_default() += 1;
                    }
                }
                if starting.values().sum::<usize>() >= cap {
                    return;
                }
                let Some(at) = next_launch(&queue.waiting, &starting, &queue.served) else { return };
                let queued = queue.waiting.remove(at);
                queue.turn += 1;
                let turn = queue.turn;
                queue.served.insert(queued.user.clone(), turn);
                if queue.served.len() > MAX_TURNS_KEPT {
                    // Bounded: the turns of users who wait for nothing now are forgotten.
                    let LaunchQueue { waiting, served, .. } = &mut *queue;
                    served.retain(|user, _| waiting.iter().any(|q| &q.user == user));
                }
                let Some(session) = sessions.into_iter().find(|s| s.id == queued.id) else { continue };
                queue.choosing.push(queued.user.clone());
                (session, queued.user)
            };
            let launched = self.launch(&session);
            {
                let mut queue = lock_queue(&self.launch_queue);
                if let Some(at) = queue.choosing.iter().position(|u| *u == user) {
                    queue.choosing.swap_remove(at);
                }
            }
            // A session deleted between the choice and its launch is left as the DELETE ended it.
            if let Err(e) = launched {
                if matches!(session.state(), SessionState::NotStarted | SessionState::Starting) {
                    session.log.push(format!("sparkgate: {e}"));
                    session.finish(SessionState::Dead, &format!("could not start: {e}"));
                }
            }
        }
    }

    fn audit(&self, event: AuditEvent) {
        self.sessions.audit.record(event);
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &ValidatedConfig {
        &self.config
    }

    /// Writes every change not stored yet (a graceful stop with recovery).
    pub async fn store_changes(&self) {
        self.sessions.entries.write_changes().await;
    }

    /// The Spark found at start-up.
    pub fn spark(&self) -> Option<&Arc<SparkEnv>> {
        self.spark.as_ref()
    }

    /// RPC connections that failed to authenticate so far.
    pub fn rpc_auth_failures(&self) -> u64 {
        self.sessions.rpc_auth_failures.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A session by id (all digits) or by name; never a warm driver nobody claimed.
    pub fn get(&self, key: &str) -> Result<Arc<Session>, EngineError> {
        let session = self.sessions.entries.get(key)?;
        if session.warm() != Warm::No {
            return Err(EngineError::SessionNotFound(key.to_string()));
        }
        Ok(session)
    }

    /// Every session, by id; not the warm drivers nobody claimed.
    pub fn list(&self) -> Vec<Arc<Session>> {
        self.all().into_iter().filter(|s| s.warm() == Warm::No).collect()
    }

    /// Every session and warm driver, by id.
    fn all(&self) -> Vec<Arc<Session>> {
        self.sessions.entries.list()
    }

    /// The warm drivers nobody claimed yet.
    pub fn warm_drivers(&self) -> Vec<Arc<Session>> {
        self.all().into_iter().filter(|s| s.warm() != Warm::No).collect()
    }

    /// Writes what changed in `session` (its record, its statements) to the store and says
    /// whether it is durable: a statement's `201` waits for this.
    pub async fn flush(&self, session: &Session) -> Result<(), EngineError> {
        self.sessions.entries.flush(session.id).await.map_err(|e| {
            tracing::error!(session = session.id, error = %e, "could not store a session's change");
            EngineError::StoreUnavailable(format!(
                "session {}: the change could not be stored (see the gateway log); try again",
                session.id
            ))
        })
    }

    /// The limits of a session created with `spec` (its own timeouts, the configured rest).
    fn limits_for(&self, spec: &SessionSpec) -> Result<SessionLimits, EngineError> {
        let cfg = &self.config;
        let per_session = |field: &str, value: &Option<String>, default: Option<Duration>| match value {
            None => Ok(default),
            Some(text) => parse_duration(text).map(|d| (!d.is_zero()).then_some(d)).map_err(|_| {
                EngineError::InvalidRequest(format!("field `{field}` must be a time such as 30s, 10m, 1h or 500ms"))
            }),
        };
        Ok(SessionLimits {
            idle_timeout: per_session("idleTimeout", &spec.idle_timeout, cfg.durations.idle_timeout)?,
            ttl: per_session("ttl", &spec.ttl, cfg.durations.ttl)?,
            heartbeat_timeout: (spec.heartbeat_timeout_secs > 0)
                .then(|| Duration::from_secs(u64::from(spec.heartbeat_timeout_secs))),
            statement_retention: cfg.config.sessions.statement_retention.max(1),
            max_output_bytes: cfg.config.sessions.max_output_bytes,
            max_queued_statements: cfg.config.sessions.max_queued_statements,
            max_retained_bytes: cfg.config.sessions.max_retained_bytes,
        })
    }

    /// Creates a session and starts its driver — or hands it a warm driver of its conf class
    /// that is already up. Caps are checked before anything is launched; a warm driver that
    /// stands in the way of a cap yields its place. `warm_size`: how many warm drivers of this
    /// class its user gets (see [`warm::size_for`]).
    pub async fn create(
        self: &Arc<Self>,
        spec: SessionSpec,
        quota: Quota,
        warm_size: usize,
    ) -> Result<Arc<Session>, EngineError> {
        let cfg = &self.config;
        if let Some(name) = &spec.submit.name {
            names::validate(name)?;
        }
        let limits = self.limits_for(&spec)?;
        if self.warm.note(&cfg.config.sessions.warm, &spec, quota, warm_size) {
            // Asked for now: the pool refills (in the background, after this launch).
            self.launch_wake.notify_one();
        }
        if let Some(session) = self.claim_warm(&spec, limits, &quota).await? {
            return Ok(session);
        }
        // Refused early (no disk touched) when the name is taken or a cap is reached; checked
        // again when the session is registered, since another create (or a warm launch) may
        // have come in between. A warm driver in the way yields its place, at either check.
        let registry = &self.sessions.entries;
        let user = spec.effective_user.clone();
        let admit = || registry.admit(spec.submit.name.as_deref(), &user, &quota);
        let mut attempts = 0;
        let session = loop {
            attempts += 1;
            if let Err(refused) = admit() {
                if !self.yield_warm(&refused, &user, &quota) {
                    return Err(refused);
                }
                admit()?;
            }
            let (id, dir) = registry.reserve().await?;
            let session = self.new_session(id, dir, spec.clone(), limits)?;
            match registry.register(session.clone(), &quota).await {
                Ok(()) => break session,
                Err(refused) if attempts < 2 && self.yield_warm(&refused, &user, &quota) => continue,
                Err(refused) => return Err(refused),
            }
        };
        let id = session.id;
        // Started now if the launch caps have room, else `not_started` in the queue.
        let cap = cfg.config.sessions.max_concurrent_launches;
        let user_launches = limits::per_user(quota.max_concurrent_launches, quota.explicit, cap);
        self.queue_launch(id, &session.spec().effective_user, user_launches);
        Ok(session)
    }

    /// Session `id` in `dir`, with its log, its secret (derived, not stored: the record keeps
    /// the nonce, the key stays in its own file) and its Spark UI; not registered yet.
    fn new_session(
        &self,
        id: u32,
        dir: std::path::PathBuf,
        spec: SessionSpec,
        limits: SessionLimits,
    ) -> Result<Arc<Session>, EngineError> {
        let log = start::launch_log(self.spark.as_deref(), &self.config.config.sessions, &dir.join(SESSION_LOG))
            .map_err(|e| EngineError::Launch(format!("creating the log of session {id}: {e}")))?;
        let nonce = SecretKey::nonce();
        let secret = self.sessions.key.derive(id, &nonce);
        let mut session = Session::new(id, spec, limits, secret, log, dir);
        session.ui = self.sessions.ui_of(id, Some(&nonce));
        session.secret_nonce = Some(nonce);
        session.on_change = Some(self.change_hook(id));
        session.on_job_end = Some(self.sessions.job_end_hook());
        Ok(Arc::new(session))
    }

    /// A warm driver of `spec`'s class, claimed for it (one whose driver is up first, then one
    /// still coming up), its claim stored before it is answered; None when there is none, or
    /// when the request would not be admitted under its user's `quota` now (the policy may have
    /// changed since the warm driver started: the request then takes the ordinary path, which
    /// refuses it).
    async fn claim_warm(
        &self,
        spec: &SessionSpec,
        limits: SessionLimits,
        quota: &Quota,
    ) -> Result<Option<Arc<Session>>, EngineError> {
        let Some(class) = warm::class_of(spec) else { return Ok(None) };
        let mut candidates: Vec<Arc<Session>> = self
            .all()
            .into_iter()
            .filter(|s| s.warm() == Warm::Ready && warm::class_of(s.spec()).as_deref() == Some(class.as_str()))
            .collect();
        candidates.sort_by_key(|s| (s.state() != SessionState::Idle, s.id));
        for session in candidates {
            if self.sessions.entries.admit_instead_of(session.id, &spec.effective_user, quota).is_err() {
                return Ok(None);
            }
            if !session.claim(spec.clone(), limits) {
                continue;
            }
            // Paused while requests' drivers started: it is a request's driver now.
            self.pace_warm(&self.all());
            session.log.push("sparkgate: this warm driver was handed to the session's request");
            tracing::info!(session = session.id, owner = %spec.owner, "warm driver claimed");
            self.audit(
                AuditEvent::security("warm_driver_claimed", Decision::Info)
                    .principal_name(spec.owner.clone())
                    .effective_user(spec.effective_user.clone())
                    .resource(format!("session:{}", session.id)),
            );
            self.flush(&session).await?;
            return Ok(Some(session));
        }
        Ok(None)
    }

    /// A create refused by `refused` (a cap on live sessions): one warm driver in the way —
    /// of `user` for their own quota, of anyone's for the global cap, the one whose class was
    /// asked for longest ago first, and only one without which the request is admitted under
    /// `quota` — is taken out of the pool at once (see [`Self::retire_warm`]) so the request
    /// can be admitted. Returns whether one was.
    fn yield_warm(self: &Arc<Self>, refused: &EngineError, user: &str, quota: &Quota) -> bool {
        let anyone = match refused {
            EngineError::TooManyLive { .. } => true,
            EngineError::UserQuota { what, .. } if what.starts_with("live") => false,
            _ => return false,
        };
        let mut warm: Vec<Arc<Session>> = self
            .warm_drivers()
            .into_iter()
            .filter(|s| s.state().is_live() && (anyone || s.spec().effective_user == user))
            .collect();
        let asked = |s: &Arc<Session>| warm::class_of(s.spec()).and_then(|c| self.warm.demand(&c)).map(|d| d.last);
        warm.sort_by_key(|s| (asked(s), s.id));
        // Only one whose place would admit the request: none is stopped for a refusal anyway.
        warm.into_iter().any(|s| {
            self.sessions.entries.admit_instead_of(s.id, user, quota).is_ok()
                && self.retire_warm(&s, "it yielded its place to a request")
        })
    }

    /// Stops warm driver `session` for good: out of the pool at once (it no longer counts
    /// against any cap), stopped like any session in the background (a driver that is up is
    /// asked to shut down, so it does not dial back; one still coming up is killed at once)
    /// and forgotten. False when it was claimed first.
    fn retire_warm(self: &Arc<Self>, session: &Arc<Session>, why: &str) -> bool {
        if !session.evict() {
            return false;
        }
        tracing::info!(session = session.id, reason = why, "stopping a warm driver");
        let spec = session.spec();
        self.audit(
            AuditEvent::security("warm_driver_stopped", Decision::Info)
                .principal_name(spec.owner.clone())
                .effective_user(spec.effective_user.clone())
                .resource(format!("session:{}", session.id))
                .reason(why.to_string()),
        );
        let (manager, session, reason) = (self.clone(), session.clone(), format!("warm driver stopped: {why}"));
        tokio::spawn(async move {
            if !session.driver_connected() {
                if let Some(process) = session.process() {
                    process.kill_group(Duration::from_secs(1)).await;
                }
            }
            manager.stop(&session, SessionState::Killed, &reason).await;
            manager.forget(session.id).await;
        });
        true
    }

    /// One step of the warm pools (see [`warm::plan`]): evicts the warm drivers of classes
    /// nobody asked for within `sessions.warm.idle_evict`, and starts one more where a class
    /// is short — only while no request waits for a launch slot and the slots have room, so a
    /// warm launch never delays a request's.
    pub fn pump_warm(self: &Arc<Self>) {
        let cfg = &self.config.config.sessions;
        if self.closing.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let all = self.all();
        // Warm drivers off and none left from before: nothing to pace, plan or evict (this runs
        // at every session change).
        if cfg.warm.max_drivers == 0 && all.iter().all(|s| s.warm() == Warm::No) {
            return;
        }
        self.pace_warm(&all);
        let warm: Vec<WarmDriver> = all
            .iter()
            .filter(|s| s.warm() == Warm::Ready && s.state().is_live())
            .filter_map(|s| {
                Some(WarmDriver {
                    id: s.id,
                    class: warm::class_of(s.spec())?,
                    state: s.state(),
                    connected: s.driver_connected(),
                })
            })
            .collect();
        let has_room = |d: &warm::Demand| {
            let user = &d.template.effective_user;
            let quota = self.quota_now(user).unwrap_or(d.quota);
            self.sessions.entries.admit(None, user, &quota).is_ok()
        };
        let plan = self.warm.plan(&cfg.warm, self.config.durations.warm_idle_evict, &warm, &has_room);
        for id in plan.evict {
            if let Some(s) = all.iter().find(|s| s.id == id) {
                self.retire_warm(s, "nobody asked for its conf class lately");
            }
        }
        let Some(class) = plan.launch else { return };
        {
            let queue = lock_queue(&self.launch_queue);
            if !queue.waiting.is_empty() || !queue.choosing.is_empty() {
                return;
            }
        }
        let starting = all
            .iter()
            .filter(|s| {
                let state = s.state();
                state == SessionState::Starting || (state == SessionState::Recovering && !s.driver_connected())
            })
            .count();
        if starting >= cfg.max_concurrent_launches {
            return;
        }
        let Some(demand) = self.warm.demand(&class) else { return };
        if self.warm_starting.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return;
        }
        let manager = self.clone();
        let quota = self.quota_now(&demand.template.effective_user).unwrap_or(demand.quota);
        tokio::spawn(async move {
            match manager.start_warm(demand.template, quota).await {
                Ok(()) => {}
                // No room after all (another request came first): tried again when there is.
                Err(
                    e @ (EngineError::UserQuota { .. }
                    | EngineError::TooManyLive { .. }
                    | EngineError::QuotaZero { .. }),
                ) => {
                    tracing::debug!(error = %e, "no room for a warm driver");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "a warm driver could not be started");
                    manager.warm.failed(&class);
                }
            }
            manager.warm_starting.store(false, std::sync::atomic::Ordering::Release);
        });
    }

    /// Keeps warm launches out of requests' way: while a request's driver is starting, every
    /// warm driver still coming up is paused (SIGSTOP to its process group), so the JVM a user
    /// waits for has the machine's cores; once none is starting they go on (SIGCONT), and after
    /// [`MAX_PAUSE`] they go on for as long again whatever starts. A claimed one goes on at once.
    /// A paused warm driver's start timeout does not count the pause. What left the group
    /// (see [`launch::descendants_of_group`]) is paused and continued with it.
    fn pace_warm(&self, all: &[Arc<Session>]) {
        use nix::sys::signal::Signal;
        let starting = |s: &Session| {
            let state = s.state();
            state == SessionState::Starting || (state == SessionState::Recovering && !s.driver_connected())
        };
        let request_starting = all.iter().any(|s| s.warm() == Warm::No && starting(s));
        let now = Instant::now();
        let mut paused = self.paused.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for s in all {
            let warm = s.warm() == Warm::Ready;
            let Some(process) = s.process() else { continue };
            let entry = paused.get(&s.id).copied().unwrap_or_default();
            let within = |at: Option<Instant>| at.is_some_and(|at| now.duration_since(at) < MAX_PAUSE);
            let pause = warm
                && request_starting
                && starting(s)
                && !self.closing.load(std::sync::atomic::Ordering::Acquire)
                && entry.since.is_none_or(|since| now.duration_since(since) < MAX_PAUSE)
                && !within(entry.resumed);
            match (pause, entry.since) {
                (true, None) => {
                    Self::signal_launch(&process, Signal::SIGSTOP);
                    paused.insert(s.id, Paused { since: Some(now), ..entry });
                }
                (false, Some(since)) => {
                    Self::signal_launch(&process, Signal::SIGCONT);
                    let before = entry.before + now.duration_since(since);
                    paused.insert(s.id, Paused { since: None, before, resumed: Some(now) });
                }
                _ => {}
            }
        }
        paused.retain(|id, p| {
            let kept = all.iter().any(|s| s.id == *id && s.warm() == Warm::Ready && s.state().is_live());
            if !kept && p.since.is_some() {
                if let Some(process) = all.iter().find(|s| s.id == *id).and_then(|s| s.process()) {
                    Self::signal_launch(&process, Signal::SIGCONT);
                }
            }
            kept
        });
    }

    /// Sends `signal` to a launch's process group and to what left it.
    fn signal_launch(process: &launch::ProcessHandle, signal: nix::sys::signal::Signal) {
        process.signal_group(signal);
        for pid in launch::descendants_of_group(process.pgid) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
        }
    }

    /// How long warm driver `id`'s start has been paused so far.
    fn paused_for(&self, id: u32, now: Instant) -> Duration {
        let paused = self.paused.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        paused.get(&id).map_or(Duration::ZERO, |p| p.total(now))
    }

    /// Registers and launches one warm driver of `template`'s class under its user's `quota`
    /// (never beyond it, never making room: a warm driver only takes what is free).
    async fn start_warm(self: &Arc<Self>, template: SessionSpec, quota: Quota) -> Result<(), EngineError> {
        let limits = self.limits_for(&template)?;
        let registry = &self.sessions.entries;
        registry.admit(None, &template.effective_user, &quota)?;
        let (id, dir) = registry.reserve().await?;
        let session = self.new_session(id, dir, template, limits)?;
        session.make_warm();
        registry.register(session.clone(), &quota).await?;
        session.log.push("sparkgate: a warm driver, started ahead for requests of this conf class");
        if let Err(e) = self.launch(&session) {
            session.log.push(format!("sparkgate: {e}"));
            session.finish(SessionState::Dead, &format!("could not start: {e}"));
            return Err(e);
        }
        Ok(())
    }

    fn launch(&self, session: &Arc<Session>) -> Result<(), EngineError> {
        let spark =
            self.spark.as_ref().ok_or_else(|| EngineError::Launch("Spark is not configured on this gateway".into()))?;
        let channel =
            self.channel.as_ref().ok_or_else(|| EngineError::Launch("the driver RPC server is not running".into()))?;
        let rpc = &channel.endpoint;
        let cfg = &self.config.config;
        let spec = session.spec();
        let repl_dir = session.dir.join("repl-classes");
        crate::fs::create_private_dir(&repl_dir).map_err(|e| EngineError::Launch(e.to_string()))?;
        // What a sandboxed driver may write: work/ (with the driver configuration, which the
        // driver deletes once read) and the REPL's classes.
        let confinement = Confinement::new(&session.dir)
            .map_err(|e| EngineError::Launch(format!("preparing the session directory: {e}")))?
            .writable(&repl_dir);
        let socket = self.driver_socket(session, &confinement.work)?;
        // The secret travels in an owner-only file named by an environment variable, never argv.
        let mut driver_conf = json!({
            "session_id": session.id,
            "rpc_host": rpc.host,
            "rpc_port": rpc.port,
            "rpc_server_name": rpc.server_name,
            "ca_pem": rpc.ca_pem,
            "secret": session.secret.to_hex(),
            "kind": spec.kind.as_str(),
            "sql_max_rows": cfg.sessions.sql_max_rows,
            "reconnect_window_secs": self.config.durations.reconnect_window.as_secs().max(1),
            "max_frame_bytes": cfg.rpc.max_frame_bytes,
            "repl_class_dir": repl_dir.canonicalize().unwrap_or(repl_dir.clone()),
            // The driver gives up a little before the gateway does, so the answer (even an
            // empty one) arrives within the request's timeout.
            "completion_wait_secs": self.config.durations.completion_timeout.as_secs().saturating_sub(2).max(1),
        });
        if let Some(socket) = &socket {
            driver_conf["rpc_unix_path"] = json!(socket.path().to_str());
        }
        if let Some(jar) = &cfg.spark.job_api_jar {
            let copy = crate::driver::copy_job_api_jar(&session.dir, jar)
                .map_err(|e| EngineError::Launch(format!("copying spark.job_api_jar ({}): {e}", jar.display())))?;
            driver_conf["job_api_jar"] = json!(copy.to_str());
        }
        let conf_path = confinement.work.join("driver-conf.json");
        crate::fs::write_file(&conf_path, driver_conf.to_string().as_bytes(), 0o600)
            .map_err(|e| EngineError::Launch(e.to_string()))?;
        let absolute_conf = conf_path.canonicalize().unwrap_or(conf_path);
        let (files, cluster_conf, env) =
            driver_conf_delivery(&cfg.spark, &spec.submit.files, &absolute_conf, &driver_conf.to_string(), session.id);
        // Written afresh for this launch, from the embedded source (see crate::driver).
        let driver_program = crate::driver::write_for_session(&session.dir)
            .map_err(|e| EngineError::Launch(format!("writing the driver program: {e}")))?;
        let submit = LaunchSpec {
            name: spec.submit.name.clone().unwrap_or_else(|| format!("sparkgate-session-{}", session.id)),
            class_name: None,
            submit: super::SubmitSpec { files, ..spec.submit.clone() },
            cluster_conf,
            app: driver_program.display().to_string(),
            args: Vec::new(),
        };
        let prepared = start::prepare(
            spark,
            &cfg.spark,
            launch::AppKind::Session,
            session.id,
            &session.dir,
            submit,
            confinement,
            &session.ui,
            env,
        )?;
        if let Some(pod) = prepared.cluster_driver.clone() {
            session.set_cluster_driver(pod);
        }
        session.set_yarn_tag(prepared.yarn_tag.clone());
        session.set_app_id_format(AppIdFormat::of_master(&cfg.spark.master));
        let on_line = Self::output_watcher(session);
        session.transition(SessionState::Starting)?;
        let handle = prepared.spawn(spark, &cfg.spark, session.log.clone(), on_line)?;
        tracing::info!(session = session.id, pgid = handle.pgid, owner = %spec.owner, "session launched");
        self.audit(
            AuditEvent::security("session_launched", Decision::Info)
                .principal_name(spec.owner.clone())
                .effective_user(spec.effective_user.clone())
                .resource(format!("session:{}", session.id))
                .reason(format!("spark-submit started (process group {})", handle.pgid)),
        );
        session.set_process(handle.clone());
        Self::watch(session, handle.clone(), socket);
        if matches!(session.state(), SessionState::ShuttingDown) || session.state().is_terminal() {
            // Deleted while it was being launched: the stop found no process yet. Stop this one.
            let grace = self.config.durations.shutdown_grace;
            tokio::spawn(async move { handle.kill_group(grace).await });
        }
        Ok(())
    }

    /// The session's output, line by line, to what learns from it (the application id, the
    /// UI's port).
    fn output_watcher(session: &Arc<Session>) -> Arc<dyn Fn(&str) + Send + Sync> {
        let weak = Arc::downgrade(session);
        Arc::new(move |line: &str| {
            if let Some(s) = weak.upgrade() {
                s.note_output_line(line);
            }
        })
    }

    /// Waits for the session's launch to end, then ends the session and frees what it held.
    fn watch(session: &Arc<Session>, handle: launch::ProcessHandle, socket: Option<crate::rpc::SessionSocket>) {
        let watched = session.clone();
        tokio::spawn(async move {
            let code = handle.wait().await;
            watched.process_exited(code);
            // Whatever the JVM left behind (the Python driver, its workers) goes too.
            handle.kill_group(Duration::from_secs(2)).await;
            // Nothing can use the session's uploads any more: they do not wait for the session
            // to be forgotten (sessions.retain_finished), taking disk outside any quota.
            let _ = std::fs::remove_dir_all(watched.dir.join("uploads"));
            // No driver is left to dial: stop listening, remove the socket.
            drop(socket);
        });
    }

    /// Takes back session `stored` (with its `statements`) from the store after a restart
    /// (see [`super::recovery`]): registered as it was, a live one `recovering` with its launch
    /// adopted and its socket open again, until its driver dials back. What cannot be decoded
    /// is refused with the reason (the caller logs it and leaves the record alone).
    pub async fn restore(self: &Arc<Self>, stored: &Stored, statements: &[Stored]) -> Result<Arc<Session>, String> {
        let record: SessionRecord = record::decode(&stored.bytes)?;
        if record.id != stored.id {
            return Err(format!("it names id {}", record.id));
        }
        let kind = SessionKind::parse(&record.kind).ok_or("its kind is unknown")?;
        let spec = SessionSpec {
            owner: record.owner.clone(),
            effective_user: record.effective_user.clone(),
            kind,
            submit: record.submit.clone(),
            heartbeat_timeout_secs: record.heartbeat_timeout_secs,
            ttl: record.ttl.clone(),
            idle_timeout: record.idle_timeout.clone(),
        };
        let limits = self.limits_for(&spec).map_err(|e| e.to_string())?;
        if record.warm && !record.state.is_terminal() {
            // Known before the pool can see it: it is kept, not evicted as a class nobody asked for.
            self.warm.keep(&spec);
        }
        let nonce = record::decode_nonce(record.secret_nonce.as_deref(), "secret nonce")?;
        let secret = match &nonce {
            Some(nonce) => self.sessions.key.derive(record.id, nonce),
            // Without a nonce no driver can ever prove itself: it will not come back.
            None => SessionSecret::generate(),
        };
        let mut kept = Vec::new();
        for statement in statements {
            match record::decode::<StatementRecord>(&statement.bytes) {
                Ok(s) if s.id == statement.id => kept.push(s),
                Ok(_) | Err(_) => tracing::error!(
                    session = record.id,
                    statement = statement.id,
                    "a stored statement cannot be decoded; it is left in the store and not shown"
                ),
            }
        }
        let dir = self.config.config.server.data_dir.join("sessions").join(record.id.to_string());
        let log = reopen_log(&self.config.config.sessions, &dir.join(SESSION_LOG));
        let mut session = Session::restore(&record, spec, kept, limits, secret, log, dir);
        session.ui = self.sessions.ui_of(record.id, nonce.as_ref());
        if !record.state.is_terminal() {
            // Whether the proxy serves it, decided as at its launch.
            let _ = crate::sparkui::launch_settings(
                &self.config.config.spark,
                self.spark.as_deref(),
                &session.spec().submit.conf,
                &session.ui,
            );
        }
        session.secret_nonce = nonce;
        session.on_change = Some(self.change_hook(record.id));
        session.on_job_end = Some(self.sessions.job_end_hook());
        session.set_app_id_format(AppIdFormat::of_master(&self.config.config.spark.master));
        let session = Arc::new(session);
        let children: Vec<(u32, Version)> = statements.iter().map(|s| (s.id, s.version)).collect();
        self.sessions.entries.restore(session.clone(), stored.version, &stored.bytes, &children).await;
        if !record.state.is_terminal() {
            self.take_back(&session, &record);
            if record.warm {
                // It may have been paused when the gateway stopped (see `pace_warm`).
                if let Some(process) = session.process() {
                    Self::signal_launch(&process, nix::sys::signal::Signal::SIGCONT);
                }
            }
        }
        Ok(session)
    }

    /// A live session's launch, taken back: its process group adopted (by pid and start time,
    /// never a recycled pid) and watched as if launched now, its socket open again; or, when it
    /// ended while the gateway was down, the session ended with how it ended.
    fn take_back(self: &Arc<Self>, session: &Arc<Session>, record: &SessionRecord) {
        let log_path = session.dir.join(SESSION_LOG);
        // Being stopped (a DELETE or a timeout) when the gateway stopped: it ends killed, as
        // the stop would have ended it (a DELETE that was not answered can be made again).
        let stopping = record.state == SessionState::ShuttingDown;
        if record.warm && record.state == SessionState::NotStarted && record.process.is_none() {
            // A warm driver whose launch never began: nobody waits for it.
            super::batch::stop_leftovers(&self.config, "sessions", session.id);
            session.finish(SessionState::Killed, "a warm driver the gateway had not started when it stopped");
            return;
        }
        if record.state == SessionState::NotStarted && record.process.is_none() {
            // Accepted and waiting for a launch slot: it waits again (restored in id order,
            // which is the order they were accepted in).
            // A launch begun just before the gateway stopped, whose record had not caught up,
            // is stopped first: a session never has two drivers.
            super::batch::stop_leftovers(&self.config, "sessions", session.id);
            session.log.push("sparkgate: the gateway restarted; the session waits for a launch slot again");
            // The user's launch quota was the policy's at create time and is not in the
            // record: one launch at a time per user is within any quota that queued it.
            self.queue_launch(session.id, &session.spec().effective_user, 1);
            return;
        }
        let Some(handle) = record.process.clone().and_then(|p| launch::ProcessHandle::adopt(p, &log_path)) else {
            super::batch::stop_leftovers(&self.config, "sessions", session.id);
            let status = match launch::supervisor::recorded_status(&log_path) {
                Some(code) => format!("spark-submit exit status {code}"),
                None => "no exit status was recorded".to_string(),
            };
            if stopping {
                session.finish(SessionState::Killed, &format!("stopped while the gateway was down ({status})"));
            } else if self.config.config.spark.deploy_mode == "cluster"
                && launch::supervisor::recorded_status(&log_path).is_none()
            {
                // The driver runs in the cluster, whatever became of spark-submit here (a host
                // restart takes the supervisor along): it may still dial back within the window.
                session.log.push(format!(
                    "sparkgate: the gateway restarted and this host's spark-submit is gone; waiting for the driver in \
                     the cluster to dial back (up to {}s)",
                    self.config.durations.reconnect_window.as_secs()
                ));
            } else {
                session.finish(SessionState::Dead, &format!("its driver ended while the gateway was down ({status})"));
            }
            return;
        };
        session.set_process(handle.clone());
        launch::follow_output(&handle, session.log.clone(), Self::output_watcher(session));
        let socket = if self.config.config.spark.deploy_mode == "cluster" {
            None
        } else {
            let work = session.dir.join("work");
            // What an earlier run's listener left (or what the driver's code put there).
            let _ = std::fs::remove_file(work.join("rpc.sock"));
            match self.driver_socket(session, &work) {
                Ok(socket) => socket,
                Err(e) => {
                    session.log.push(format!("sparkgate: {e}"));
                    None
                }
            }
        };
        session.log.push(format!(
            "sparkgate: the gateway restarted; waiting for the driver to dial back (up to {}s)",
            self.config.durations.reconnect_window.as_secs()
        ));
        Self::watch(session, handle, socket);
        if stopping {
            let manager = self.clone();
            let session = session.clone();
            tokio::spawn(async move {
                manager.stop(&session, SessionState::Killed, "it was being stopped when the gateway stopped").await;
            });
        }
    }

    /// In local and client deploy mode, the session's own RPC socket in its `work/` directory
    /// (`rpc.sock`), which the sandbox shows the driver at the same path and no other session
    /// sees: its driver never needs the shared TCP port, where any local process can hold the
    /// pending-handshake slots of loopback. None in cluster mode, and when the path is too long
    /// for a socket (the driver then dials the TCP port, with a warning).
    fn driver_socket(
        &self,
        session: &Session,
        work: &std::path::Path,
    ) -> Result<Option<crate::rpc::SessionSocket>, EngineError> {
        if self.config.config.spark.deploy_mode == "cluster" {
            return Ok(None);
        }
        let Some(listeners) = self.channel.as_ref().and_then(|c| c.local.as_ref()) else { return Ok(None) };
        let path = work.join("rpc.sock");
        if path.to_str().is_none() {
            // The driver's configuration is JSON: a path that is not UTF-8 cannot travel in it.
            tracing::warn!(
                session = session.id,
                "the session directory is not UTF-8: the driver dials the TCP RPC port"
            );
            return Ok(None);
        }
        match listeners.listen(&path, session.id) {
            Ok(socket) => Ok(Some(socket)),
            Err(e @ LocalListenError::PathTooLong { .. }) => {
                tracing::warn!(
                    session = session.id,
                    reason = %e,
                    "the driver dials the shared TCP RPC port instead of a socket of its own; a shorter \
                     server.data_dir avoids this"
                );
                session.log.push(format!("sparkgate: the driver uses the TCP RPC port ({e})"));
                Ok(None)
            }
            Err(e) => Err(EngineError::Launch(format!("opening the driver's RPC socket: {e}"))),
        }
    }

    /// Stops a session: asks the driver to shut down, waits the grace period, then kills the
    /// whole process group and waits until none of it is left. Ends in `final_state`.
    pub async fn stop(&self, session: &Arc<Session>, final_state: SessionState, reason: &str) {
        let grace = self.config.durations.shutdown_grace;
        if session.begin_shutdown(final_state) {
            session.log.push(format!("sparkgate: stopping: {reason}"));
            tracing::info!(session = session.id, reason, "stopping session");
            session.request_driver_shutdown();
        }
        let spark_cfg = &self.config.config.spark;
        let as_user = session.spec().submit.proxy_user.as_deref();
        // Cluster mode without a spark-submit here: a driver taken back after a restart.
        let only_in_cluster = spark_cfg.deploy_mode == "cluster" && session.process().is_none();
        if only_in_cluster && session.driver_connected() {
            // No spark-submit here to wait for (a cluster-mode driver taken back after a
            // restart): the driver's own exit ends the connection.
            let deadline = tokio::time::Instant::now() + grace;
            while session.driver_connected() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        if only_in_cluster {
            // Stopped in the cluster by what the gateway chose (the pod it named, the launch's
            // YARN tag), whether or not the driver is still there.
            let kill = launch::cluster_kill(spark_cfg, session.cluster_driver().as_deref(), None);
            if let (Some(kill), Some(spark)) = (kill, self.spark.as_ref()) {
                launch::run_cluster_kill(spark, spark_cfg, kill, as_user, &session.log).await;
            }
            if let (Some(tag), Some(spark)) = (session.yarn_tag(), self.spark.as_ref()) {
                if let Some(id) = launch::yarn_app_by_tag(spark, spark_cfg, &tag, as_user, &session.log).await {
                    if let Some(kill) = launch::cluster_kill(spark_cfg, None, Some(&id)) {
                        launch::run_cluster_kill(spark, spark_cfg, kill, as_user, &session.log).await;
                    }
                }
            }
        }
        if let Some(process) = session.process() {
            let timed_out = tokio::time::timeout(grace, process.wait()).await.is_err();
            if timed_out {
                session.log.push("sparkgate: the driver did not exit in time; killing its process group".to_string());
                // In cluster mode the driver is not in that group: stop it in the cluster (by
                // what the gateway chose, never by an id the driver reported).
                let kill = launch::cluster_kill(spark_cfg, session.cluster_driver().as_deref(), None);
                if let (Some(kill), Some(spark)) = (kill, self.spark.as_ref()) {
                    launch::run_cluster_kill(spark, spark_cfg, kill, as_user, &session.log).await;
                }
            }
            process.kill_group(Duration::from_secs(3)).await;
            process.wait().await;
            // YARN: with our spark-submit gone nothing more is submitted, so whatever carries
            // this launch's tag is the whole application.
            if let (true, Some(tag), Some(spark)) = (timed_out, session.yarn_tag(), self.spark.as_ref()) {
                if let Some(id) = launch::yarn_app_by_tag(spark, spark_cfg, &tag, as_user, &session.log).await {
                    if let Some(kill) = launch::cluster_kill(spark_cfg, None, Some(&id)) {
                        launch::run_cluster_kill(spark, spark_cfg, kill, as_user, &session.log).await;
                    }
                }
            }
        }
        session.finish(final_state, reason);
    }

    /// DELETE: stops the session and forgets it.
    pub async fn delete(&self, session: &Arc<Session>, by: &str) {
        self.stop(session, SessionState::Killed, &format!("deleted by {by}")).await;
        self.forget(session.id).await;
    }

    async fn forget(&self, id: u32) {
        self.sessions.entries.forget(id).await;
    }

    /// Stops every session (gateway shutdown).
    pub async fn shutdown_all(&self) {
        self.closing.store(true, std::sync::atomic::Ordering::Release);
        // A warm driver being registered now is stopped with the rest once it is.
        while self.warm_starting.load(std::sync::atomic::Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let sessions = self.all();
        let stops = sessions.iter().map(|s| self.stop(s, SessionState::Killed, "the gateway is shutting down"));
        futures_util::future::join_all(stops).await;
    }

    /// Runs the timeout checker and collector, and the launch queue, until the manager is
    /// dropped.
    pub fn start_background(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let wake = self.launch_wake.clone();
        tokio::spawn(async move {
            loop {
                // A session change, or at the latest every second.
                let _ = tokio::time::timeout(Duration::from_secs(1), wake.notified()).await;
                let Some(manager) = weak.upgrade() else { return };
                manager.pump_launches();
                manager.pump_warm();
            }
        });
        let weak = Arc::downgrade(self);
        let interval = self.config.durations.check_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(manager) = weak.upgrade() else { return };
                manager.check_timeouts().await;
                manager.forget_excess_finished().await;
            }
        });
    }

    /// Forgets the oldest finished sessions beyond `sessions.max_finished_retained` (and its
    /// per-user share), before their retention time is up (see [`limits::excess_finished`]).
    pub async fn forget_excess_finished(&self) {
        let sessions = &self.config.config.sessions;
        let excess = self.sessions.entries.finished_to_forget(
            None,
            sessions.max_finished_retained,
            sessions.max_finished_retained_per_user,
        );
        for id in excess {
            self.forget(id).await;
        }
    }

    /// One pass of the timeout checker.
    pub async fn check_timeouts(self: &Arc<Self>) {
        let now = Instant::now();
        let d = self.config.durations;
        for session in self.all() {
            let t = session.timers();
            let warm = session.warm();
            if warm != Warm::No && t.state.is_terminal() {
                // Nobody sees a warm driver that ended: it goes at once, and a class whose warm
                // driver failed is not started again until it is asked for.
                // (An evicted one is forgotten by its stop, once its processes are gone.)
                if warm == Warm::Ready {
                    tracing::warn!(session = session.id, "a warm driver ended before it was claimed (see its log)");
                    if let Some(class) = warm::class_of(session.spec()) {
                        self.warm.failed(&class);
                    }
                    self.forget(session.id).await;
                }
                continue;
            }
            if t.state.is_terminal() {
                if t.finished_at.is_some_and(|f| now.duration_since(f) >= d.retain_finished) {
                    self.forget(session.id).await;
                }
                continue;
            }
            if t.state == SessionState::ShuttingDown {
                continue;
            }
            let verdict: Option<(SessionState, String, bool)> = if t.state == SessionState::Error {
                // The driver could not start Spark (its reason is in the log): nothing will
                // run here, so free its processes and slot at once, as Livy does.
                Some((SessionState::Dead, "its driver failed (see the log for why)".into(), false))
            } else if let Some(hb) =
                session.limits().heartbeat_timeout.filter(|hb| now.duration_since(t.last_heartbeat) >= *hb)
            {
                Some((
                    SessionState::Killed,
                    format!("no client heartbeat for {}s (heartbeatTimeoutInSecond)", hb.as_secs()),
                    true,
                ))
            } else if session.limits().ttl.is_some_and(|ttl| now.duration_since(session.created()) >= ttl) {
                Some((SessionState::Killed, "its time to live (ttl) expired".into(), false))
            } else if t.state == SessionState::Starting
                && now
                    .duration_since(t.launched_at.unwrap_or(session.created()))
                    .saturating_sub(self.paused_for(session.id, now))
                    >= d.start_timeout
            {
                // Counted from its launch: the time it waited in the launch queue is not the
                // driver's. A queued (`not_started`) session waits for a slot; ttl and DELETE
                // still end it.
                Some((
                    SessionState::Dead,
                    format!("the driver did not become ready within {}s", d.start_timeout.as_secs()),
                    false,
                ))
            } else if t.disconnected_since.is_some_and(|since| now.duration_since(since) >= d.reconnect_window) {
                Some((
                    SessionState::Dead,
                    format!(
                        "the driver connection was lost and not re-established within {}s",
                        d.reconnect_window.as_secs()
                    ),
                    false,
                ))
            } else if t.state == SessionState::Idle
                && warm == Warm::No
                && !t.has_work
                && session.limits().idle_timeout.is_some_and(|idle| now.duration_since(t.last_activity) >= idle)
            {
                Some((SessionState::Killed, "it was idle longer than its idle timeout".into(), false))
            } else {
                None
            };
            if let Some((final_state, reason, forget)) = verdict {
                let action =
                    if final_state == SessionState::Dead { "session_dead" } else { "session_killed_by_timeout" };
                self.audit(
                    AuditEvent::security(action, Decision::Info)
                        .principal_name(session.spec().owner.clone())
                        .effective_user(session.spec().effective_user.clone())
                        .resource(format!("session:{}", session.id))
                        .reason(reason.clone()),
                );
                let manager = self.clone();
                tokio::spawn(async move {
                    manager.stop(&session, final_state, &reason).await;
                    if forget {
                        manager.forget(session.id).await;
                    }
                });
            }
        }
    }
}

#[cfg(test)]
impl SessionManager {
    /// Registers a session without launching anything (unit tests drive it by hand).
    pub(crate) fn insert_for_test(&self, session: Arc<Session>) {
        self.sessions.entries.insert_for_test(session);
    }
}

impl DriverRegistry for SessionRegistry {
    fn secret(&self, session_id: u32) -> Option<SessionSecret> {
        let session = self.entries.by_id(session_id)?;
        let state = session.state();
        (!state.is_terminal() && state != SessionState::ShuttingDown).then(|| session.secret.clone())
    }

    fn attach(&self, session_id: u32, link: DriverLink) {
        if let Some(session) = self.entries.by_id(session_id) {
            self.audit.record(
                AuditEvent::security("driver_authenticated", Decision::Allow)
                    .effective_user(session.spec().effective_user.clone())
                    .resource(format!("session:{session_id}")),
            );
            session.attach(link);
        }
    }

    fn deliver(&self, session_id: u32, conn_id: u64, msg: FromDriver) {
        let Some(session) = self.entries.by_id(session_id) else { return };
        let Some(ack) = session.on_driver_message(conn_id, msg) else { return };
        // A result is acknowledged (and forgotten by the driver) only once it is stored: a
        // gateway that dies before has it sent again by the driver after the restart.
        let Some(registry) = self.me.upgrade() else { return };
        tokio::spawn(async move {
            match registry.entries.flush(session_id).await {
                Ok(()) => ack.send(),
                Err(e) => tracing::warn!(
                    session = session_id,
                    statement = ack.id,
                    error = %e,
                    "a result could not be stored; the driver sends it again after a reconnect"
                ),
            }
        });
    }

    fn detach(&self, session_id: u32, conn_id: u64) {
        if let Some(session) = self.entries.by_id(session_id) {
            session.detach(conn_id);
        }
    }

    fn statement_running(&self, session_id: u32) -> bool {
        self.entries.by_id(session_id).is_some_and(|s| s.statement_running())
    }

    fn auth_failed(&self, peer: Peer, error: &crate::rpc::HandshakeError) {
        self.rpc_auth_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let session_id = error.session();
        let event = AuditEvent::security("rpc_auth_failed", Decision::Deny);
        let event = match peer {
            Peer::Tcp(addr) => {
                let event = event.remote_addr(addr).reason(error.to_string());
                match session_id {
                    Some(id) => event.resource(format!("session:{id}")),
                    None => event,
                }
            }
            // Only that session's own sandbox reaches its socket: the session is the source.
            Peer::Unix { session } => event
                .reason(format!("{error} (on the driver socket of session {session})"))
                .resource(format!("session:{session}")),
        };
        // Any peer can fail a handshake once per connect: repeats are counted, not written
        // (or logged) one by one.
        let recorded = self.audit.record_coalesced(event, peer.ip(), error.class());
        if recorded == crate::audit::Recorded::Counted {
            tracing::debug!(%peer, session_id, reason = %error, "driver RPC authentication failed (repeat, counted)");
        } else {
            tracing::warn!(%peer, session_id, reason = %error, "driver RPC authentication failed");
        }
    }

    fn connection_refused(&self, peer: Peer, why: crate::rpc::Refusal) {
        let event = AuditEvent::security("rpc_connection_refused", Decision::Deny).reason(why.to_string());
        let event = match peer {
            Peer::Tcp(addr) => event.remote_addr(addr),
            Peer::Unix { session } => event.resource(format!("session:{session}")),
        };
        let recorded = self.audit.record_coalesced(event, peer.ip(), why.class());
        if recorded == crate::audit::Recorded::Counted {
            tracing::debug!(%peer, reason = %why, "driver RPC connection refused (repeat, counted)");
        } else {
            tracing::warn!(%peer, reason = %why, "driver RPC connection refused");
        }
    }
}

#[cfg(test)]
mod tests;
