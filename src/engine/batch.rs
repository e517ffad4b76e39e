//! Batches: a user's application run by spark-submit, watched until it ends. Integer ids from
//! their own counter; states starting → running → success | dead | killed; never idle-timed
//! out; the full output kept in a log file that `/log` pages.

use super::app_id::AppIdFormat;
use super::launch::{self, LaunchSpec, LogBuffer, ProcessHandle, SparkEnv};
use super::limits;
use super::names;
use super::record::BatchRecord;
use super::registry::Registry;
use super::sandbox::Confinement;
use super::spec::SubmitSpec;
use super::start;
use super::state::SessionState;
use super::EngineError;
use crate::acl::policy::Quota;
use crate::audit::{AuditEvent, AuditLog};
use crate::audit_slots::Decision;
use crate::config::ValidatedConfig;
use crate::sparkui::AppUi;
use crate::store::{AnyStore, Stored};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;

/// A batch's log file, in its directory.
pub const BATCH_LOG: &str = "batch.log";

/// What a batch was created with.
#[derive(Debug, Clone, Default)]
pub struct BatchSpec {
    /// The authenticated creator.
    pub owner: String,
    /// The user it runs as (ACLs and quotas).
    pub effective_user: String,
    /// The application: a .py file or a jar.
    pub file: String,
    /// `--class` for a jar.
    pub class_name: Option<String>,
    /// Application arguments.
    pub args: Vec<String>,
    /// How it is submitted (name, `--proxy-user`, resources, conf).
    pub submit: SubmitSpec,
}

#[derive(Debug)]
struct BatchInner {
    state: SessionState,
    app_id: Option<String>,
    process: Option<ProcessHandle>,
    finished_at: Option<Instant>,
    /// `finished_at` as the record keeps it (ms since the epoch).
    finished_ms: Option<i64>,
    /// Where a cluster-mode driver runs, to kill it there: a standalone driver id, or on
    /// Kubernetes `<namespace>:<driver pod>`.
    driver_id: Option<String>,
    /// YARN cluster mode: this launch's unique application tag.
    yarn_tag: Option<String>,
}

impl BatchInner {
    fn new(state: SessionState) -> Self {
        Self {
            state,
            app_id: None,
            process: None,
            finished_at: None,
            finished_ms: None,
            driver_id: None,
            yarn_tag: None,
        }
    }
}

/// One batch.
#[derive(Debug)]
pub struct Batch {
    /// Id (separate counter from sessions).
    pub id: u32,
    /// What it was created with.
    pub spec: Arc<BatchSpec>,
    /// The last lines of output, mirrored to `log_path`.
    pub log: Arc<LogBuffer>,
    /// The whole output.
    pub log_path: PathBuf,
    /// Its Spark UI: the key the driver's UI checks, and which port it really listens on.
    pub ui: AppUi,
    /// The nonce its UI key is derived with (in the record; None: a random key, tests).
    ui_nonce: Option<[u8; crate::rpc::secret_key::NONCE_LEN]>,
    dir: PathBuf,
    inner: Mutex<BatchInner>,
    /// Told when what its record shows changed (None in unit tests).
    on_change: Option<super::registry::OnChange>,
}

/// A point-in-time copy for the API.
#[derive(Debug, Clone)]
pub struct BatchSnapshot {
    /// Id.
    pub id: u32,
    /// Spec.
    pub spec: Arc<BatchSpec>,
    /// State.
    pub state: SessionState,
    /// Application id.
    pub app_id: Option<String>,
    /// The gateway's path to the batch's Spark UI (`/batches/3/sparkui/`), while one is
    /// known and the batch runs.
    pub spark_ui_url: Option<String>,
}

/// One page of a batch's output (see [`Batch::log_window`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogWindow {
    /// The index of the first line returned.
    pub from: usize,
    /// How many lines the whole output has.
    pub total: usize,
    /// The lines `from..from + lines.len()`.
    pub lines: Vec<String>,
}

impl super::registry::Entry for Batch {
    const KIND: crate::acl::ResourceKind = crate::acl::ResourceKind::Batch;

    fn id(&self) -> u32 {
        self.id
    }

    fn name(&self) -> Option<&str> {
        self.spec.submit.name.as_deref()
    }

    fn effective_user(&self) -> &str {
        &self.spec.effective_user
    }

    fn state(&self) -> SessionState {
        Batch::state(self)
    }

    fn finished_at(&self) -> Option<Instant> {
        self.lock().finished_at
    }

    fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    fn record(&self) -> Vec<u8> {
        let spec = &self.spec;
        let inner = self.lock();
        super::record::encode(&BatchRecord {
            id: self.id,
            owner: spec.owner.clone(),
            effective_user: spec.effective_user.clone(),
            file: spec.file.clone(),
            class_name: spec.class_name.clone(),
            args: spec.args.clone(),
            submit: spec.submit.clone(),
            state: inner.state,
            app_id: inner.app_id.clone(),
            process: inner.process.as_ref().and_then(|p| p.identity.clone()),
            driver_id: inner.driver_id.clone(),
            yarn_tag: inner.yarn_tag.clone(),
            finished_at: inner.finished_ms,
            ui_nonce: self.ui_nonce.map(hex::encode),
        })
    }
}

impl Batch {
    fn lock(&self) -> MutexGuard<'_, BatchInner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Current state.
    pub fn state(&self) -> SessionState {
        self.lock().state
    }

    /// A copy for the API.
    pub fn snapshot(&self) -> BatchSnapshot {
        let inner = self.lock();
        BatchSnapshot {
            id: self.id,
            spec: self.spec.clone(),
            state: inner.state,
            app_id: inner.app_id.clone(),
            spark_ui_url: if inner.state.is_terminal() { None } else { self.ui.path() },
        }
    }

    /// The launched process.
    pub fn process(&self) -> Option<ProcessHandle> {
        self.lock().process.clone()
    }

    /// The lines `pick(total)` of the whole output, `total` being how many there are: from the
    /// log file, read twice — once to count the lines, once to collect the window — so only the
    /// lines returned are ever held in memory, however long the log (the in-memory tail if the
    /// file is unreadable). Bytes that are not UTF-8 are replaced with U+FFFD. Lines end at
    /// `\n` or `\r\n`, as [`str::lines`]. Blocking: from async code call it through
    /// `tokio::task::spawn_blocking`.
    pub fn log_window(&self, pick: impl Fn(usize) -> std::ops::Range<usize>) -> LogWindow {
        read_log_window(&self.log_path, &pick).unwrap_or_else(|_| {
            let lines = self.log.snapshot();
            let range = clamp(pick(lines.len()), lines.len());
            LogWindow { from: range.start, total: lines.len(), lines: lines.get(range).unwrap_or_default().to_vec() }
        })
    }

    /// See [`super::registry::Changing`].
    fn changing(&self) -> super::registry::Changing<'_> {
        super::registry::Changing(self.on_change.as_ref())
    }

    fn move_to(&self, next: SessionState, why: Option<&str>) {
        let _changed = self.changing();
        let mut inner = self.lock();
        if inner.state == next || !inner.state.can_become(next) {
            return;
        }
        if next.is_terminal() {
            inner.finished_at = Some(Instant::now());
            inner.finished_ms = Some(super::record::now_ms());
        }
        inner.state = next;
        if let Some(why) = why {
            self.log.push(format!("sparkgate: {why}"));
        }
    }

    /// Learns from one line of spark-submit's output (the user's program's, in local and
    /// client mode): whether it runs, its UI's port (checked before use), its application id
    /// in the master's `ids` format (the first wins) and, when `cluster_driver` (standalone
    /// cluster mode, where the output is the cluster client's), the driver id to kill.
    fn on_line(self: &Arc<Self>, line: &str, ids: AppIdFormat, cluster_driver: bool) {
        if launch::driver_started(line) {
            self.move_to(SessionState::Running, None);
        }
        if self.ui.offer_line(line) && self.lock().app_id.is_none() {
            // Local mode never prints its application id: ask the UI, which does know it
            // (once a port proves to be the application's; a printed one may not be).
            let batch = Arc::downgrade(self);
            tokio::spawn(async move {
                let Some(b) = batch.upgrade() else { return };
                // Output can arrive before the launch has recorded its process.
                let mut pgid = None;
                for _ in 0..100 {
                    pgid = b.process().map(|p| p.pgid);
                    if pgid.is_some() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let Some(pgid) = pgid else { return };
                if let Some(id) = crate::sparkui::proxy::fetch_app_id(&b.ui, pgid, ids).await {
                    let _changed = b.changing();
                    b.lock().app_id.get_or_insert(id);
                }
            });
        }
        if let Some(driver) = launch::find_driver_id(line).filter(|_| cluster_driver) {
            self.lock().driver_id.get_or_insert(driver);
            // The driver runs in the cluster: submitted means under way.
            self.move_to(SessionState::Running, None);
        }
        let Some(app) = ids.find_in_line(line) else { return };
        let _changed = self.changing();
        let mut inner = self.lock();
        if inner.app_id.is_none() {
            inner.app_id = Some(app);
            // The application exists: the batch runs.
            if inner.state == SessionState::Starting {
                inner.state = SessionState::Running;
            }
        }
    }

    fn exited(&self, code: i32) {
        let state = self.state();
        match state {
            SessionState::ShuttingDown => {
                self.move_to(SessionState::Killed, Some(&format!("killed (exit status {code})")))
            }
            _ if code == 0 => self.move_to(SessionState::Success, Some("spark-submit exited with status 0")),
            _ => self.move_to(SessionState::Dead, Some(&format!("spark-submit exited with status {code}"))),
        }
    }
}

/// Stops whatever of launch `kind` `id` (`sessions` or `batches`) still runs when its record
/// cannot take it back (no identity of its launch was stored).
pub(crate) fn stop_leftovers(config: &ValidatedConfig, kind: &str, id: u32) {
    let stopped = launch::stop_orphans(&config.config.server.data_dir, &|k, i| (k, i) != (kind, id));
    if stopped > 0 {
        tracing::warn!(kind, id, processes = stopped, "stopped what ran of a launch that could not be taken back");
    }
}

/// The application name a batch is launched with (unique: the master's status is searched by it).
fn launch_name(batch: &Batch) -> String {
    batch.spec.submit.name.clone().unwrap_or_else(|| format!("sparkgate-batch-{}", batch.id))
}

/// Owns every batch.
#[derive(Debug)]
pub struct BatchManager {
    config: Arc<ValidatedConfig>,
    spark: Option<Arc<SparkEnv>>,
    /// Ids, names, lookup, caps; the records in the store.
    registry: Registry<Batch>,
    /// Where security events go.
    audit: Arc<AuditLog>,
    /// What batches' Spark UI keys are derived from.
    key: crate::rpc::SecretKey,
}

impl BatchManager {
    /// A manager over `store`; `spark` None makes every launch fail visibly (tests without
    /// Spark).
    pub fn new(
        config: Arc<ValidatedConfig>,
        spark: Option<Arc<SparkEnv>>,
        store: Arc<AnyStore>,
        audit: Arc<AuditLog>,
        key: crate::rpc::SecretKey,
    ) -> Arc<Self> {
        let batches = &config.config.batches;
        let caps = limits::Caps {
            kind: "batches",
            live: batches.max_batches,
            launches: batches.max_concurrent_launches,
            queued: false,
        };
        let dirs = config.config.server.data_dir.join("batches");
        Arc::new(Self { registry: Registry::new(store, caps, dirs), config, spark, audit, key })
    }

    /// Batch `id`'s Spark UI, its key derived with `nonce` (the same after a restart).
    fn ui_of(&self, id: u32, nonce: &[u8; crate::rpc::secret_key::NONCE_LEN]) -> AppUi {
        AppUi::with_key(format!("/batches/{id}/sparkui"), self.key.derive_ui_key("batch", id, nonce))
    }

    /// A batch by id (all digits) or name.
    pub fn get(&self, key: &str) -> Result<Arc<Batch>, EngineError> {
        self.registry.get(key)
    }

    /// Every batch, by id.
    pub fn list(&self) -> Vec<Arc<Batch>> {
        self.registry.list()
    }

    /// Creates a batch and runs spark-submit; its record is stored before this returns.
    pub async fn create(self: &Arc<Self>, spec: BatchSpec, quota: Quota) -> Result<Arc<Batch>, EngineError> {
        if let Some(name) = &spec.submit.name {
            names::validate(name)?;
        }
        // Refused early (no disk touched) when the name is taken or a cap is reached; checked
        // again when the batch is registered, since another create may have come in between.
        self.registry.admit(spec.submit.name.as_deref(), &spec.effective_user, &quota)?;
        let (id, dir) = self.registry.reserve().await?;
        let log_path = dir.join(BATCH_LOG);
        let log = start::launch_log(self.spark.as_deref(), &self.config.config.sessions, &log_path)
            .map_err(|e| EngineError::Launch(format!("creating the log of batch {id}: {e}")))?;
        let ui_nonce = crate::rpc::SecretKey::nonce();
        let batch = Arc::new(Batch {
            id,
            spec: Arc::new(spec),
            log,
            log_path,
            ui: self.ui_of(id, &ui_nonce),
            ui_nonce: Some(ui_nonce),
            dir,
            inner: Mutex::new(BatchInner::new(SessionState::Starting)),
            on_change: Some(Registry::on_change(self, |m: &Self| &m.registry, id)),
        });
        self.registry.register(batch.clone(), &quota).await?;
        if let Err(e) = self.launch(&batch) {
            batch.move_to(SessionState::Dead, Some(&format!("could not start: {e}")));
        }
        Ok(batch)
    }

    fn launch(&self, batch: &Arc<Batch>) -> Result<(), EngineError> {
        let spark =
            self.spark.as_ref().ok_or_else(|| EngineError::Launch("Spark is not configured on this gateway".into()))?;
        let cfg = &self.config.config;
        let s = &batch.spec;
        let submit = LaunchSpec {
            name: launch_name(batch),
            class_name: s.class_name.clone(),
            submit: s.submit.clone(),
            cluster_conf: BTreeMap::new(),
            app: s.file.clone(),
            args: s.args.clone(),
        };
        // Sandboxed, the batch writes only to its work/ directory: its log stays the gateway's.
        let confinement = Confinement::new(&batch.dir)
            .map_err(|e| EngineError::Launch(format!("preparing the batch directory: {e}")))?;
        let prepared = start::prepare(
            spark,
            &cfg.spark,
            launch::AppKind::Batch,
            batch.id,
            &batch.dir,
            submit,
            confinement,
            &batch.ui,
            BTreeMap::new(),
        )?;
        {
            let mut inner = batch.lock();
            inner.driver_id = prepared.cluster_driver.clone();
            inner.yarn_tag = prepared.yarn_tag.clone();
        }
        let on_line = self.output_watcher(batch);
        let handle = prepared.spawn(spark, &cfg.spark, batch.log.clone(), on_line)?;
        tracing::info!(batch = batch.id, pgid = handle.pgid, owner = %s.owner, "batch launched");
        {
            let log = &self.audit;
            log.record(
                AuditEvent::security("batch_launched", Decision::Info)
                    .principal_name(s.owner.clone())
                    .effective_user(s.effective_user.clone())
                    .resource(format!("batch:{}", batch.id)),
            );
        }
        // A DELETE that came in while it was being started found no process to kill: it is
        // killed here, under the same lock that DELETE marks the batch with.
        let deleted = {
            // In the record: a restart takes the launch back by it.
            let _changed = batch.changing();
            let mut inner = batch.lock();
            inner.process = Some(handle.clone());
            matches!(inner.state, SessionState::ShuttingDown | SessionState::Killed)
        };
        if deleted {
            let handle = handle.clone();
            tokio::spawn(async move { handle.kill_group(Duration::from_secs(2)).await });
            return Ok(());
        }
        if let Some(ui) = cfg.spark.standalone_master_ui.clone() {
            // The master knows the application id of drivers that run in the cluster.
            let (weak, name, deadline) =
                (Arc::downgrade(batch), launch_name(batch), Instant::now() + self.config.durations.start_timeout);
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let Some(b) = weak.upgrade() else { return };
                    if b.lock().app_id.is_some() {
                        return;
                    }
                    let url = format!("{}/json/", ui.trim_end_matches('/'));
                    if let Some(id) =
                        launch::http_get_json(&url).await.and_then(|s| launch::app_id_in_master_status(&s, &name))
                    {
                        b.lock().app_id.get_or_insert(id);
                        return;
                    }
                    drop(b);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            });
        }
        Self::watch(batch, handle);
        Ok(())
    }

    /// The batch's output, line by line, to what learns from it (see [`Batch::on_line`]).
    fn output_watcher(&self, batch: &Arc<Batch>) -> Arc<dyn Fn(&str) + Send + Sync> {
        let spark = &self.config.config.spark;
        let weak = Arc::downgrade(batch);
        let ids = AppIdFormat::of_master(&spark.master);
        let cluster_driver = spark.master.starts_with("spark://") && spark.deploy_mode == "cluster";
        Arc::new(move |line: &str| {
            if let Some(b) = weak.upgrade() {
                b.on_line(line, ids, cluster_driver);
            }
        })
    }

    /// Waits for the batch's launch to end, then ends the batch by its exit status.
    fn watch(batch: &Arc<Batch>, handle: ProcessHandle) {
        let watched = batch.clone();
        tokio::spawn(async move {
            let code = handle.wait().await;
            watched.exited(code);
            handle.kill_group(Duration::from_secs(2)).await;
        });
    }

    /// Takes back batch `stored` from the store after a restart (see [`super::recovery`]):
    /// registered as it was; a live one with its launch adopted (by pid and start time, never a
    /// recycled pid) and watched as if launched now, or — when it ended while the gateway was
    /// down — ended by the exit status its supervisor recorded. One that was being deleted is
    /// deleted. What cannot be decoded is refused with the reason.
    pub async fn restore(self: &Arc<Self>, stored: &Stored) -> Result<Arc<Batch>, String> {
        let record: BatchRecord = super::record::decode(&stored.bytes)?;
        if record.id != stored.id {
            return Err(format!("it names id {}", record.id));
        }
        let ui_nonce = super::record::decode_nonce(record.ui_nonce.as_deref(), "UI nonce")?;
        let dir = self.config.config.server.data_dir.join("batches").join(record.id.to_string());
        let log_path = dir.join(BATCH_LOG);
        let log = super::manager::reopen_log(&self.config.config.sessions, &log_path);
        let mut inner = BatchInner::new(record.state);
        inner.app_id = record.app_id.clone();
        inner.driver_id = record.driver_id.clone();
        inner.yarn_tag = record.yarn_tag.clone();
        inner.finished_ms = record.finished_at;
        inner.finished_at = record.finished_at.map(super::record::instant_of);
        let batch = Arc::new(Batch {
            id: record.id,
            spec: Arc::new(BatchSpec {
                owner: record.owner.clone(),
                effective_user: record.effective_user.clone(),
                file: record.file.clone(),
                class_name: record.class_name.clone(),
                args: record.args.clone(),
                submit: record.submit.clone(),
            }),
            log,
            log_path: log_path.clone(),
            ui: match ui_nonce {
                Some(nonce) => self.ui_of(record.id, &nonce),
                None => AppUi::new(format!("/batches/{}/sparkui", record.id)),
            },
            ui_nonce,
            dir,
            inner: Mutex::new(inner),
            on_change: Some(Registry::on_change(self, |m: &Self| &m.registry, record.id)),
        });
        self.registry.restore(batch.clone(), stored.version, &stored.bytes, &[]).await;
        if record.state.is_terminal() {
            return Ok(batch);
        }
        let Some(handle) = record.process.clone().and_then(|p| ProcessHandle::adopt(p, &log_path)) else {
            // Ended, or never recorded (the gateway died just after starting it): whatever of
            // it may still run is stopped, as nothing can take it back.
            stop_leftovers(&self.config, "batches", record.id);
            if record.state == SessionState::ShuttingDown {
                batch.move_to(SessionState::Killed, Some("killed (it ended while the gateway was down)"));
                self.registry.forget(batch.id).await;
                return Ok(batch);
            }
            match launch::supervisor::recorded_status(&log_path) {
                Some(code) => {
                    batch.log.push("sparkgate: spark-submit ended while the gateway was down".to_string());
                    batch.exited(code);
                }
                // Cluster mode: the driver runs in the cluster, whatever became of spark-submit
                // here (a host restart takes the supervisor along).
                None if self.config.config.spark.deploy_mode == "cluster" => self.take_back_from_cluster(&batch).await,
                None => batch.move_to(
                    SessionState::Dead,
                    Some("spark-submit ended while the gateway was down, and no exit status was recorded"),
                ),
            }
            return Ok(batch);
        };
        batch.lock().process = Some(handle.clone());
        // Its UI as at its launch: proxied or not, and the ports its output named.
        let _ = crate::sparkui::launch_settings(
            &self.config.config.spark,
            self.spark.as_deref(),
            &batch.spec.submit.conf,
            &batch.ui,
        );
        for line in batch.log.snapshot() {
            batch.ui.offer_line(&line);
        }
        launch::follow_output(&handle, batch.log.clone(), self.output_watcher(&batch));
        Self::watch(&batch, handle);
        if record.state == SessionState::ShuttingDown {
            let manager = self.clone();
            let batch = batch.clone();
            tokio::spawn(async move {
                manager.delete(&batch, "a DELETE made before the gateway's restart").await;
            });
        }
        Ok(batch)
    }

    /// A cluster-mode batch whose spark-submit is gone and left no exit status: watched
    /// through the standalone master that runs its driver, when it is known; elsewhere (YARN,
    /// Kubernetes, no master UI) it cannot be watched, so it is stopped in the cluster — nothing
    /// runs unwatched — and ends `dead`, saying so.
    async fn take_back_from_cluster(self: &Arc<Self>, batch: &Arc<Batch>) {
        let cfg = &self.config.config.spark;
        let driver = batch.lock().driver_id.clone();
        if let (Some(ui), Some(driver), true) =
            (cfg.standalone_master_ui.clone(), driver, cfg.master.starts_with("spark://"))
        {
            batch.log.push(format!("sparkgate: spark-submit is gone; watching {driver} through the master"));
            self.watch_in_master(batch, ui, driver);
            return;
        }
        self.kill_everywhere(batch).await;
        batch.move_to(
            SessionState::Dead,
            Some(
                "spark-submit was lost while the gateway was down and the application cannot be watched from here: it \
                 was stopped in the cluster",
            ),
        );
    }

    /// Follows a standalone cluster-mode driver's state in the master's status until it ends.
    fn watch_in_master(&self, batch: &Arc<Batch>, ui: String, driver: String) {
        let weak = Arc::downgrade(batch);
        let url = format!("{}/json/", ui.trim_end_matches('/'));
        tokio::spawn(async move {
            // The master may be restarting too: it is asked for a while before the driver
            // counts as lost.
            let mut unknown = 0;
            loop {
                let Some(batch) = weak.upgrade() else { return };
                if batch.state().is_terminal() {
                    return;
                }
                let state =
                    launch::http_get_json(&url).await.and_then(|s| launch::driver_state_in_master_status(&s, &driver));
                match state.as_deref() {
                    Some("FINISHED") => {
                        batch.move_to(SessionState::Success, Some(&format!("the master reports {driver} FINISHED")));
                        return;
                    }
                    Some(end @ ("FAILED" | "ERROR" | "KILLED")) => {
                        batch.move_to(SessionState::Dead, Some(&format!("the master reports {driver} {end}")));
                        return;
                    }
                    Some(_) => unknown = 0,
                    None => {
                        unknown += 1;
                        if unknown >= 30 {
                            batch.move_to(
                                SessionState::Dead,
                                Some(&format!("the master did not report {driver} for a minute: it is lost")),
                            );
                            return;
                        }
                    }
                }
                drop(batch);
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        });
    }

    /// Stops a live batch's application in the cluster (standalone or Kubernetes: by the
    /// driver reported or the pod named; YARN: by the launch's tag).
    async fn kill_everywhere(&self, batch: &Batch) {
        let (driver_id, yarn_tag) = {
            let inner = batch.lock();
            (inner.driver_id.clone(), inner.yarn_tag.clone())
        };
        let spark_cfg = &self.config.config.spark;
        // Standalone and Kubernetes: the driver the cluster client reported, the pod the
        // gateway named. Never an application id from the output (see app_id.rs).
        if let Some(kill) = launch::cluster_kill(spark_cfg, driver_id.as_deref(), None) {
            self.kill_in_cluster(batch, kill, driver_id.as_deref()).await;
        }
        if let Some(process) = batch.process() {
            process.kill_group(self.config.durations.shutdown_grace).await;
            process.wait().await;
        }
        // YARN: with our spark-submit gone nothing more is submitted, so whatever YARN has
        // under this launch's tag is all there is to kill.
        if let (Some(tag), Some(spark)) = (yarn_tag, self.spark.as_ref()) {
            if let Some(id) =
                launch::yarn_app_by_tag(spark, spark_cfg, &tag, batch.spec.submit.proxy_user.as_deref(), &batch.log)
                    .await
            {
                let kill = launch::cluster_kill(spark_cfg, None, Some(&id));
                if let Some(kill) = kill {
                    self.kill_in_cluster(batch, kill, None).await;
                }
            }
        }
    }

    /// DELETE: kills the application's process group, then forgets the batch.
    pub async fn delete(&self, batch: &Arc<Batch>, by: &str) {
        let live = {
            let mut inner = batch.lock();
            let live = !inner.state.is_terminal();
            if live {
                inner.state = SessionState::ShuttingDown;
            }
            live
        };
        if live {
            batch.log.push(format!("sparkgate: killed by {by}"));
            self.kill_everywhere(batch).await;
        } else if let Some(process) = batch.process() {
            process.kill_group(self.config.durations.shutdown_grace).await;
            process.wait().await;
        }
        batch.move_to(SessionState::Killed, None);
        self.registry.forget(batch.id).await;
    }

    /// A driver running inside the cluster outlives our spark-submit: stop it there. A
    /// standalone driver through the master's web UI when `spark.standalone_master_ui` is set
    /// (the REST submission server that `spark-submit --kill` needs is off by default),
    /// otherwise with `spark-submit --kill`; a Kubernetes driver pod with `spark-submit --kill`;
    /// a YARN application with `yarn application -kill`. What the command said goes to the log.
    async fn kill_in_cluster(&self, batch: &Batch, kill: launch::ClusterKill, driver_id: Option<&str>) {
        let Some(spark) = self.spark.as_ref() else { return };
        let cfg = &self.config.config.spark;
        if let (Some(ui), Some(driver), true) =
            (&cfg.standalone_master_ui, driver_id, cfg.master.starts_with("spark://"))
        {
            let url = format!("{}/driver/kill/", ui.trim_end_matches('/'));
            let status = launch::http_post_form(&url, &format!("id={driver}&terminate=true")).await;
            batch.log.push(format!("sparkgate: asked the master ({url}) to kill {driver}: HTTP {status:?}"));
            if status.is_some_and(|s| s < 400) {
                return;
            }
        }
        launch::run_cluster_kill(spark, cfg, kill, batch.spec.submit.proxy_user.as_deref(), &batch.log).await;
    }

    /// Forgets finished batches after the retention time (batches are never idle-timed out),
    /// and beyond the retention caps the oldest finished before their time is up (see
    /// [`limits::excess_finished`]).
    pub async fn collect_finished(&self) {
        let sessions = &self.config.config.sessions;
        let retain = Some(self.config.durations.retain_finished);
        let done = self.registry.finished_to_forget(
            retain,
            sessions.max_finished_retained,
            sessions.max_finished_retained_per_user,
        );
        for id in done {
            self.registry.forget(id).await;
        }
    }

    /// Runs the collector until the manager is dropped.
    pub fn start_background(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let every = self.config.durations.check_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let Some(m) = weak.upgrade() else { return };
                m.collect_finished().await;
            }
        });
    }

    /// Writes every change not stored yet (a graceful stop with recovery).
    pub async fn store_changes(&self) {
        self.registry.write_changes().await;
    }

    /// Kills every batch (gateway shutdown).
    pub async fn shutdown_all(&self) {
        let all = self.list();
        futures_util::future::join_all(all.iter().map(|b| self.delete(b, "the gateway shutting down"))).await;
    }
}

/// Where [`read_log`] puts what it reads.
trait LogSink {
    /// The window is lines `from..` of `total`; called once, before any line.
    fn start(&mut self, from: usize, total: usize);
    /// The next line of the window; an error stops the reading.
    fn line(&mut self, line: &str) -> std::io::Result<()>;
}

impl LogSink for LogWindow {
    fn start(&mut self, from: usize, total: usize) {
        (self.from, self.total) = (from, total);
    }

    fn line(&mut self, line: &str) -> std::io::Result<()> {
        self.lines.push(line.to_string());
        Ok(())
    }
}

/// [`Batch::log_window`] on the file.
fn read_log_window(
    path: &std::path::Path,
    pick: &dyn Fn(usize) -> std::ops::Range<usize>,
) -> std::io::Result<LogWindow> {
    let mut window = LogWindow { from: 0, total: 0, lines: Vec::new() };
    read_log(path, pick, &mut window)?;
    Ok(window)
}

/// Reads lines `pick(total)` of the file at `path` in two passes — one counts the lines, the
/// second hands over the window one line at a time — so only one line is held at a time,
/// however long the log. The second pass reads no further than the bytes the first one
/// counted, so lines appended in between cannot shift the window.
fn read_log(
    path: &std::path::Path,
    pick: &dyn Fn(usize) -> std::ops::Range<usize>,
    sink: &mut dyn LogSink,
) -> std::io::Result<()> {
    use std::io::{BufRead, BufReader, Read, Seek};
    let mut file = std::fs::File::open(path)?;
    let (mut total, mut counted) = (0usize, 0u64);
    let mut reader = BufReader::new(&file);
    loop {
        // skip_until counts a last line without `\n` too, exactly as `str::lines` does.
        let n = reader.skip_until(b'\n')?;
        if n == 0 {
            break;
        }
        total += 1;
        counted += n as u64;
    }
    let range = clamp(pick(total), total);
    sink.start(range.start, total);
    file.rewind()?;
    let mut reader = BufReader::new(file.take(counted));
    for _ in 0..range.start {
        reader.skip_until(b'\n')?;
    }
    let mut buf = Vec::new();
    for _ in range {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            break;
        }
        sink.line(&line_text(&buf))?;
    }
    Ok(())
}

/// Writes Livy's `/log` document in chunks of about [`LogJson::CHUNK`] bytes.
struct LogJson<'a> {
    id: u32,
    buf: Option<Vec<u8>>,
    first: bool,
    /// `emit` refused a chunk: nobody reads any more.
    gone: bool,
    emit: &'a mut dyn FnMut(Vec<u8>) -> bool,
}

impl LogJson<'_> {
    const CHUNK: usize = 64 * 1024;
}

impl LogSink for LogJson<'_> {
    fn start(&mut self, from: usize, total: usize) {
        let id = self.id;
        self.buf = Some(format!("{{\"id\":{id},\"from\":{from},\"total\":{total},\"log\":[").into_bytes());
    }

    fn line(&mut self, line: &str) -> std::io::Result<()> {
        let Some(buf) = self.buf.as_mut() else { return Ok(()) };
        if !self.first {
            buf.push(b',');
        }
        self.first = false;
        // A string always serializes.
        let _ = serde_json::to_writer(&mut *buf, line);
        if buf.len() >= Self::CHUNK && !(self.emit)(std::mem::take(buf)) {
            self.gone = true;
            return Err(std::io::Error::other("the client went away"));
        }
        Ok(())
    }
}

/// Livy's `/log` answer for lines `pick(total)` of a batch's whole output, written as chunks of
/// about 64 KiB to `emit` (which returns false when nobody reads any more: the reading stops).
/// The document is what [`crate::api::dto::log_json`] makes of [`Batch::log_window`], but no
/// more than a chunk is ever held: `size=-1` on a log of gigabytes costs no memory.
/// Blocking: run it through `tokio::task::spawn_blocking`.
pub fn render_log_json(
    batch: &Batch,
    pick: &dyn Fn(usize) -> std::ops::Range<usize>,
    emit: &mut dyn FnMut(Vec<u8>) -> bool,
) {
    let mut json = LogJson { id: batch.id, buf: None, first: true, gone: false, emit };
    // A file that fails after the window was announced ends the list early; the document is
    // still closed, so the client gets valid JSON.
    let _ = read_log(&batch.log_path, pick, &mut json);
    if json.gone {
        return;
    }
    if json.buf.is_none() {
        // No readable file: the in-memory tail answers, as `log_window` does.
        let window = batch.log_window(pick);
        json.start(window.from, window.total);
        for line in &window.lines {
            if json.line(line).is_err() {
                return;
            }
        }
    }
    if let Some(mut buf) = json.buf.take() {
        buf.extend_from_slice(b"]}");
        (json.emit)(buf);
    }
}

/// One line as `str::lines` yields it: without its `\n` or `\r\n`; invalid UTF-8 replaced.
fn line_text(raw: &[u8]) -> String {
    let line = match raw.strip_suffix(b"\n") {
        Some(line) => line.strip_suffix(b"\r").unwrap_or(line),
        None => raw,
    };
    String::from_utf8_lossy(line).into_owned()
}

/// `range` inside `0..total` (a window never indexes past the end).
fn clamp(range: std::ops::Range<usize>, total: usize) -> std::ops::Range<usize> {
    let start = range.start.min(total);
    start..range.end.clamp(start, total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{dto, Paging};
    use serde_json::Value;
    use std::io::Write;
    use tempfile::TempDir;

    /// A batch whose log file holds `content` and whose in-memory tail holds `tail`.
    fn batch_with_log(dir: &TempDir, content: Option<&[u8]>, tail: &[&str]) -> Batch {
        let log_path = dir.path().join("batch.log");
        if let Some(content) = content {
            std::fs::write(&log_path, content).unwrap();
        }
        let log = LogBuffer::new(100, None);
        for line in tail {
            log.push(*line);
        }
        Batch {
            id: 7,
            spec: Arc::new(BatchSpec::default()),
            log,
            log_path,
            ui: AppUi::new("/batches/7/sparkui"),
            ui_nonce: None,
            dir: dir.path().to_path_buf(),
            inner: Mutex::new(BatchInner::new(SessionState::Running)),
            on_change: None,
        }
    }

    /// `/log` as it was answered before the file was streamed: the whole file in memory.
    fn whole_file_answer(batch: &Batch, paging: &Paging) -> Value {
        let lines = match std::fs::read_to_string(&batch.log_path) {
            Ok(text) => text.lines().map(str::to_string).collect(),
            Err(_) => batch.log.snapshot(),
        };
        dto::log_page(batch.id, lines, paging)
    }

    /// `/log` as the handler answers it now: streamed in chunks.
    fn streamed_answer(batch: &Batch, paging: &Paging) -> Value {
        let mut body = Vec::new();
        render_log_json(batch, &|total| dto::log_range(total, paging), &mut |chunk| {
            body.extend(chunk);
            true
        });
        serde_json::from_slice(&body).unwrap()
    }

    fn paging(from: Option<usize>, size: Option<Option<usize>>) -> Paging {
        Paging { from, size, ..Paging::default() }
    }

    #[test]
    fn streamed_log_pages_answer_exactly_as_the_whole_file_did() {
        let mut long = String::new();
        for i in 0..250 {
            // Blank lines, CRLF, a lone CR inside a line and non-ASCII text among plain lines.
            let line = match i % 7 {
                0 => String::new(),
                1 => format!("crlf {i}\r"),
                2 => format!("a\rb {i}"),
                3 => format!("ünïcødé {i} ✓"),
                _ => format!("line {i}"),
            };
            long.push_str(&line);
            long.push('\n');
        }
        let unterminated = format!("{long}last line without newline");
        let files: [(&str, &str); 6] = [
            ("long", &long),
            ("unterminated", &unterminated),
            ("empty", ""),
            ("one newline", "\n"),
            ("blank lines", "\n\n\r\n"),
            ("trailing cr", "a\nb\r"),
        ];
        let mut pagings = vec![paging(None, None), paging(None, Some(None)), paging(Some(0), Some(None))];
        for from in [None, Some(0), Some(1), Some(3), Some(150), Some(249), Some(250), Some(251), Some(10_000)] {
            for size in [Some(0), Some(1), Some(2), Some(100), Some(101), Some(500)] {
                pagings.push(paging(from, Some(size)));
            }
            pagings.push(paging(from, None));
            pagings.push(paging(from, Some(None)));
        }
        for (name, content) in files {
            let dir = TempDir::new().unwrap();
            let batch = batch_with_log(&dir, Some(content.as_bytes()), &["only in memory"]);
            for p in &pagings {
                assert_eq!(streamed_answer(&batch, p), whole_file_answer(&batch, p), "{name}: {p:?}");
            }
        }
        let dir = TempDir::new().unwrap();
        let batch = batch_with_log(&dir, Some(long.as_bytes()), &[]);
        let default = streamed_answer(&batch, &Paging::default());
        assert_eq!((default["from"].as_u64(), default["total"].as_u64()), (Some(150), Some(250)));
        assert_eq!(default["log"].as_array().unwrap().len(), 100);
        assert_eq!(streamed_answer(&batch, &paging(None, Some(None)))["log"].as_array().unwrap().len(), 250);
    }

    #[test]
    fn a_whole_log_is_streamed_in_bounded_chunks_and_stops_when_the_client_goes() {
        let dir = TempDir::new().unwrap();
        let line = "x".repeat(1000);
        let content = format!("{line}\n").repeat(2000); // 2 MB
        let batch = batch_with_log(&dir, Some(content.as_bytes()), &[]);
        let mut chunks = Vec::new();
        render_log_json(&batch, &|total| 0..total, &mut |chunk| {
            chunks.push(chunk.len());
            true
        });
        assert!(chunks.len() > 20, "{chunks:?}");
        assert!(chunks.iter().all(|n| *n < 70 * 1024), "no chunk holds much more than 64 KiB: {chunks:?}");
        // A reader that goes away ends the reading at once.
        let mut calls = 0;
        render_log_json(&batch, &|total| 0..total, &mut |_| {
            calls += 1;
            false
        });
        assert_eq!(calls, 1);
    }

    #[test]
    fn a_log_that_is_not_utf8_is_paged_lossily_not_replaced_by_the_tail() {
        let dir = TempDir::new().unwrap();
        let batch = batch_with_log(&dir, Some(b"ok\n\xff\xfebad\r\nlast\n"), &["only in memory"]);
        let page = batch.log_window(|total| 0..total);
        assert_eq!(
            page,
            LogWindow { from: 0, total: 3, lines: vec!["ok".into(), "\u{fffd}\u{fffd}bad".into(), "last".into()] }
        );
    }

    #[test]
    fn an_unreadable_log_file_falls_back_to_the_in_memory_tail() {
        let dir = TempDir::new().unwrap();
        let batch = batch_with_log(&dir, None, &["a", "b", "c"]);
        assert_eq!(batch.log_window(|_| 1..9), LogWindow { from: 1, total: 3, lines: vec!["b".into(), "c".into()] });
        let p = paging(Some(1), Some(Some(1)));
        assert_eq!(streamed_answer(&batch, &p), whole_file_answer(&batch, &p));
    }

    #[test]
    fn output_appended_between_the_two_passes_does_not_change_the_page() {
        let dir = TempDir::new().unwrap();
        let batch = batch_with_log(&dir, Some(b"l0\nl1\npart"), &[]);
        // The window is picked between the passes: grow the file right then, as the running
        // batch would, completing the half-written last line.
        let page = batch.log_window(|total| {
            let mut file = std::fs::OpenOptions::new().append(true).open(&batch.log_path).unwrap();
            file.write_all(b"ial\nmore\n").unwrap();
            0..total
        });
        assert_eq!(page, LogWindow { from: 0, total: 3, lines: vec!["l0".into(), "l1".into(), "part".into()] });
    }

    /// A gateway's batches on a cluster manager that cannot run on this machine (YARN,
    /// Kubernetes): FAKE `spark-submit` and `yarn` scripts stand in for them. The submitting
    /// spark-submit prints what the real one prints and then waits, as with
    /// waitAppCompletion; every `--kill` or `yarn` call records its arguments.
    struct FakeCluster {
        dir: TempDir,
        manager: Arc<BatchManager>,
    }

    impl FakeCluster {
        fn new(master: &str) -> Self {
            Self::with_submit_output(master, "echo 'INFO Client: Submitted application application_1700000000000_0042'")
        }

        /// `submit_output`: what the submitting spark-submit prints before it waits.
        fn with_submit_output(master: &str, submit_output: &str) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let calls = dir.path().join("calls");
            let script = |name: &str, body: &str| {
                let path = dir.path().join(name);
                std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
                path
            };
            let submit = script(
                "spark-submit",
                &format!(
                    "case \"$*\" in *--kill*) echo \"spark-submit $*\" >> {calls}; exit 0;; esac\n\
                     {submit_output}\n\
                     exec sleep 600",
                    calls = calls.display()
                ),
            );
            // `-list` answers as YARN does, with the application that carries the asked tag.
            let yarn = script(
                "yarn",
                &format!(
                    "echo \"yarn $*\" >> {calls}\n\
                     [ \"$2\" = -list ] && printf 'Total number of applications:1\\n\
                     application_1700000000000_0077\\tetl\\tSPARK\\talice\\tdefault\\tACCEPTED\\n'\n\
                     exit 0",
                    calls = calls.display()
                ),
            );
            let config = crate::config::load(&crate::config::Sources {
                file: None,
                env: vec![],
                overrides: vec![
                    format!("server.data_dir=\"{}\"", dir.path().join("data").display()),
                    format!("spark.master=\"{master}\""),
                    "spark.deploy_mode=\"cluster\"".into(),
                    "spark.conf.\"spark.kubernetes.namespace\"=\"etl\"".into(),
                    format!("spark.yarn_command=\"{}\"", yarn.display()),
                    "sessions.shutdown_grace=\"1s\"".into(),
                ],
            })
            .unwrap();
            let env = SparkEnv::for_test(dir.path(), &submit);
            let config = Arc::new(config);
            let audit =
                crate::audit::AuditLog::open(&config.config.server.data_dir.join("audit/audit.log"), 1 << 20).unwrap();
            let store = Arc::new(AnyStore::Memory(Box::new(crate::store::memory::MemoryStore::ephemeral())));
            let manager =
                BatchManager::new(config, Some(Arc::new(env)), store, audit, crate::rpc::SecretKey::generate());
            Self { dir, manager }
        }

        fn calls(&self) -> String {
            std::fs::read_to_string(self.dir.path().join("calls")).unwrap_or_default()
        }

        async fn submit(&self) -> Arc<Batch> {
            let spec = BatchSpec {
                owner: "alice".into(),
                effective_user: "alice".into(),
                file: "hdfs:///jobs/etl.py".into(),
                ..BatchSpec::default()
            };
            self.manager.create(spec, Quota::default()).await.unwrap()
        }

        async fn launch(&self) -> Arc<Batch> {
            let batch = self.submit().await;
            let deadline = Instant::now() + Duration::from_secs(30);
            while batch.snapshot().app_id.is_none() {
                assert!(Instant::now() < deadline, "no app id: {:?}", batch.log.snapshot());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            batch
        }
    }

    /// The unique tag this batch's launch added to `spark.yarn.tags`.
    fn launch_tag(batch: &Batch) -> String {
        let properties = std::fs::read_to_string(batch.dir.join("spark-launch.properties")).unwrap();
        let tags = properties.lines().find_map(|l| l.strip_prefix("spark.yarn.tags=")).unwrap().to_string();
        tags.split(',').find(|t| t.starts_with("sparkgate-launch-")).expect("a launch tag").to_string()
    }

    #[tokio::test]
    async fn deleting_a_yarn_cluster_batch_kills_the_application_in_yarn() {
        let cluster = FakeCluster::new("yarn");
        let batch = cluster.launch().await;
        let tag = launch_tag(&batch);
        cluster.manager.delete(&batch, "alice").await;
        // The printed id is not what is killed: the application that carries this launch's tag is.
        assert_eq!(
            cluster.calls(),
            format!(
                "yarn application -list -appStates ALL -appTags {tag}\n\
                 yarn application -kill application_1700000000000_0077\n"
            )
        );
        assert_eq!(batch.state(), SessionState::Killed);
        assert!(batch.log.snapshot().iter().any(|l| l.contains("stopping the application in the cluster")));
    }

    #[tokio::test]
    async fn a_yarn_batch_deleted_before_its_id_is_known_is_found_by_its_launch_tag() {
        let cluster = FakeCluster::with_submit_output("yarn", "echo 'INFO Client: Requesting a new application'");
        let batch = cluster.submit().await;
        // spark-submit is running, but has not printed the application id.
        let deadline = Instant::now() + Duration::from_secs(30);
        while batch.process().is_none() || !batch.log.snapshot().iter().any(|l| l.contains("Requesting")) {
            assert!(Instant::now() < deadline, "{:?}", batch.log.snapshot());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let tag = launch_tag(&batch);
        cluster.manager.delete(&batch, "alice").await;
        assert_eq!(
            cluster.calls(),
            format!(
                "yarn application -list -appStates ALL -appTags {tag}\n\
                 yarn application -kill application_1700000000000_0077\n"
            )
        );
        assert_eq!(batch.state(), SessionState::Killed);
    }

    #[tokio::test]
    async fn a_yarn_batch_whose_spark_submit_was_lost_while_the_gateway_was_down_is_stopped_in_the_cluster() {
        // (YARN cannot run here: a fake `yarn` records what it is asked.)
        let cluster = FakeCluster::new("yarn");
        let record = BatchRecord {
            id: 5,
            owner: "alice".into(),
            effective_user: "alice".into(),
            file: "hdfs:///jobs/etl.py".into(),
            class_name: None,
            args: Vec::new(),
            submit: SubmitSpec::default(),
            state: SessionState::Running,
            app_id: Some("application_1700000000000_0077".into()),
            // A supervisor of an earlier boot: gone, and it recorded no exit status.
            process: Some(launch::ProcessIdentity { pid: 1, start_time: 0, boot_id: "an earlier boot".into() }),
            driver_id: None,
            yarn_tag: Some("sparkgate-launch-5".into()),
            finished_at: None,
            ui_nonce: None,
        };
        std::fs::create_dir_all(cluster.manager.config.config.server.data_dir.join("batches/5")).unwrap();
        let stored =
            Stored { id: 5, version: 4, meta: Default::default(), bytes: super::super::record::encode(&record) };
        let batch = cluster.manager.restore(&stored).await.unwrap();
        assert_eq!(batch.state(), SessionState::Dead, "{:?}", batch.log.snapshot());
        assert!(
            batch.log.snapshot().iter().any(|l| l.contains("stopped in the cluster")),
            "{:?}",
            batch.log.snapshot()
        );
        assert_eq!(
            cluster.calls(),
            "yarn application -list -appStates ALL -appTags sparkgate-launch-5\n\
             yarn application -kill application_1700000000000_0077\n",
            "nothing runs unwatched"
        );
    }

    #[tokio::test]
    async fn deleting_a_kubernetes_cluster_batch_kills_its_named_driver_pod() {
        let cluster = FakeCluster::with_submit_output(
            "k8s://https://api.example.com:6443",
            "echo 'INFO LoggingPodStatusWatcherImpl: Deployed Spark application etl with application ID \
             spark-0123456789abcdef0123456789abcdef and submission ID etl:pod into Kubernetes'",
        );
        let batch = cluster.launch().await;
        let properties = std::fs::read_to_string(batch.dir.join("spark-launch.properties")).unwrap();
        let pod_line = properties.lines().find(|l| l.starts_with("spark.kubernetes.driver.pod.name=")).unwrap();
        let pod = pod_line.split_once('=').unwrap().1.to_string();
        assert!(pod.starts_with("sparkgate-batch-0-"), "{pod}");
        cluster.manager.delete(&batch, "alice").await;
        assert_eq!(
            cluster.calls(),
            format!("spark-submit --master k8s://https://api.example.com:6443 --kill etl:{pod}\n")
        );
    }

    #[test]
    fn client_mode_and_local_mode_need_no_cluster_kill() {
        let client = crate::config::SparkConfig { master: "yarn".into(), ..Default::default() };
        assert_eq!(launch::cluster_kill(&client, None, Some("application_1_2")), None);
        let local = crate::config::SparkConfig { deploy_mode: "cluster".into(), ..Default::default() };
        assert_eq!(launch::cluster_kill(&local, Some("x"), Some("y")), None);
        let yarn =
            crate::config::SparkConfig { master: "yarn".into(), deploy_mode: "cluster".into(), ..Default::default() };
        assert_eq!(launch::cluster_kill(&yarn, None, None), None, "not before the application id is known");
        assert_eq!(launch::cluster_kill(&yarn, None, Some("local-123")), None);
    }
}
