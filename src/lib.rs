//! sparkgate: a security-first, Livy-compatible REST gateway for Apache Spark.
//!
//! [`Gateway::start`] wires everything: TLS listener → middleware stack → API → engine, and
//! the driver RPC server the Spark drivers dial back to.

#![forbid(unsafe_code)]

pub mod acl;
pub mod api;
pub mod audit;
pub mod audit_slots;
pub mod auth;
pub mod config;
pub mod csrf;
pub mod driver;
pub mod engine;
pub mod error;
pub mod fs;
pub mod http;
pub mod identity;
pub mod impersonation;
pub mod metrics;
pub mod net;
pub mod rpc;
pub mod server;
pub mod sparkui;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod ui;

use config::ValidatedConfig;
use engine::launch::SparkEnv;
use engine::{RpcEndpoint, SessionManager};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use store::Store;
use tokio::sync::watch;

/// Why the gateway could not start; each message says what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// Spark is missing or broken.
    #[error("Spark check failed: {0}")]
    Spark(#[from] engine::launch::SparkCheckError),
    /// TLS material is missing or invalid.
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    /// No way to authenticate anyone.
    #[error("{0}")]
    NoAuthentication(String),
    /// The access policy could not be loaded.
    #[error("access policy: {0}")]
    Policy(String),
    /// An authenticator could not be set up.
    #[error("{0}")]
    Auth(#[from] auth::AuthSetupError),
    /// No Kerberos ticket could be obtained from `spark.launch_keytab`.
    #[error("spark.launch_principal: {0}")]
    LaunchTicket(String),
    /// The gateway runs as root without `server.dangerous_run_as_root`.
    #[error(
        "sparkgate refuses to run as root: in local and client mode user code runs as the gateway's account, so \
         it would run as root too. Run it as an unprivileged account (scripts/run.sh creates and uses the \
         `sparkgate` system account), or set server.dangerous_run_as_root = true on a development machine"
    )]
    RunAsRoot,
    /// The store of session and batch records cannot be opened (the message names the file).
    #[error("store: {0}")]
    Store(String),
    /// Recovery cannot work as configured.
    #[error("{0}")]
    Recovery(String),
    /// The key sessions' RPC secrets are derived from cannot be read or made.
    #[error("session secret key: {0}")]
    SecretKey(#[from] rpc::secret_key::KeyError),
    /// The sandbox for local and client-mode drivers is not usable.
    #[error("{0}")]
    Sandbox(#[from] engine::sandbox::SandboxError),
    /// A listener could not be bound, or the data directory not written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
}

/// Where the RPC server tries to listen, in order: when `rpc.bind` asks for any port (0), the
/// port an earlier run listened on first (its drivers dial it), then any port.
fn rpc_bind_order(configured: std::net::SocketAddr, remembered: Option<u16>) -> Vec<std::net::SocketAddr> {
    match remembered.filter(|p| *p != 0 && configured.port() == 0) {
        Some(port) => vec![std::net::SocketAddr::new(configured.ip(), port), configured],
        None => vec![configured],
    }
}

/// Refuses root (effective uid 0) unless `server.dangerous_run_as_root` allows it.
fn refuse_root(euid_is_root: bool, allowed: bool) -> Result<(), StartError> {
    if euid_is_root && !allowed {
        return Err(StartError::RunAsRoot);
    }
    Ok(())
}

/// Renews the launch ticket every hour, well inside any usual ticket lifetime; a failure is
/// logged and retried at the next tick (the previous ticket stays in the cache until it expires).
fn start_ticket_renewal(ticket: engine::launch::LaunchTicket, limit: std::time::Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
        tick.tick().await; // the first tick is now, and the ticket is fresh
        loop {
            tick.tick().await;
            if let Err(e) = ticket.renew(limit).await {
                tracing::error!(error = %e, "renewing the launch ticket failed");
            }
        }
    });
}

/// Checks the policy files for changes and reloads them; a bad file keeps the old policy.
fn start_policy_reloader(acl: Arc<acl::AccessManager>, audit: Arc<audit::AuditLog>, every: std::time::Duration) {
    let weak = Arc::downgrade(&acl);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(acl) = weak.upgrade() else { return };
            match acl.reload_if_changed() {
                None => {}
                Some(Ok(())) => {
                    tracing::info!("access policy reloaded");
                    audit.record(audit::AuditEvent::security("policy_reloaded", audit_slots::Decision::Info));
                }
                Some(Err(e)) => {
                    tracing::error!(error = %e, "access policy NOT reloaded; the previous policy stays in force");
                    audit.record(
                        audit::AuditEvent::security("policy_reloaded", audit_slots::Decision::Error)
                            .reason(format!("kept the previous policy: {e}")),
                    );
                }
            }
        }
    });
}

/// Keeps the audit chain's synced head in the store (checked at every second), so the next
/// start can tell whether the trail lost records (see [`audit::ChainHead::missing_from`]).
fn start_audit_head_keeper(audit: Arc<audit::AuditLog>, store: Arc<store::AnyStore>, stored: Option<audit::ChainHead>) {
    let weak = Arc::downgrade(&audit);
    drop(audit);
    tokio::spawn(async move {
        let mut kept = stored;
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(audit) = weak.upgrade() else { return };
            keep_audit_head(&audit, &store, &mut kept).await;
        }
    });
}

/// Writes the audit chain's synced head to the store if it moved on from `kept`.
async fn keep_audit_head(audit: &audit::AuditLog, store: &store::AnyStore, kept: &mut Option<audit::ChainHead>) {
    let head = audit.synced_head();
    let Some(current) = head.as_ref().filter(|h| Some(*h) != kept.as_ref()) else { return };
    match serde_json::to_vec(current) {
        Ok(bytes) => match store.put_value(store::AUDIT_HEAD, bytes).await {
            Ok(()) => *kept = head,
            Err(e) => tracing::warn!(error = %e, "could not keep the audit chain's head in the store"),
        },
        Err(e) => tracing::warn!(error = %e, "could not encode the audit chain's head"),
    }
}

/// Options for tests and tools; production uses the defaults.
#[derive(Debug, Clone)]
pub struct StartOptions {
    /// Find and check Spark (turn off only for tests that never launch a session).
    pub discover_spark: bool,
}

impl Default for StartOptions {
    fn default() -> Self {
        Self { discover_spark: true }
    }
}

/// A running gateway.
#[derive(Debug)]
pub struct Gateway {
    /// The HTTPS (or plain) address.
    pub addr: SocketAddr,
    /// The driver RPC address.
    pub rpc_addr: SocketAddr,
    /// The session engine.
    pub manager: Arc<SessionManager>,
    /// The batches.
    pub batches: Arc<engine::batch::BatchManager>,
    /// The development CA, when dev certificates are in use.
    pub dev_ca: Option<PathBuf>,
    /// The RPC server's CA (tests use it to speak to the RPC server as a driver would).
    pub rpc_ca_pem: String,
    /// The audit trail.
    pub audit: Arc<audit::AuditLog>,
    store: Arc<store::AnyStore>,
    shutdown: watch::Sender<bool>,
}

impl Gateway {
    /// Starts everything and returns once the listeners are bound.
    pub async fn start(config: ValidatedConfig, options: StartOptions) -> Result<Self, StartError> {
        let config = Arc::new(config);
        let cfg = &config.config;
        let io = |what: &str| {
            let what = what.to_string();
            move |source| StartError::Io { what, source }
        };
        for name in config.dangerous_options() {
            tracing::warn!(
                option = name,
                "DANGEROUS option enabled: this gateway is not secure; never use it outside local development"
            );
        }
        refuse_root(nix::unistd::geteuid().is_root(), cfg.server.dangerous_run_as_root)?;
        // Reported as before the helper left tls/ (`TLS: <dir>: <why>`).
        fs::create_private_dir(&cfg.server.data_dir).map_err(tls::TlsError::from)?;

        if cfg.auth.dangerous_allow_anonymous {
            tracing::warn!(
                "auth.dangerous_allow_anonymous: every loopback client without credentials is accepted as `anonymous`"
            );
        }
        let auth_chain = auth::build_chain(&config)?;
        if auth_chain.is_empty() {
            return Err(StartError::NoAuthentication(
                "no authentication method is configured, so nobody could use the gateway; \
                 for local development set auth.dangerous_allow_anonymous = true"
                    .into(),
            ));
        }

        let (transport, dev_ca) = if cfg.server.dangerous_plain_http {
            tracing::warn!(
                "server.dangerous_plain_http: serving plain HTTP; credentials and code travel in clear text"
            );
            (server::Transport::DangerousPlain, None)
        } else {
            let (cert, key, dev_ca) = match (&cfg.tls.cert, &cfg.tls.key) {
                (Some(cert), Some(key)) => (cert.clone(), key.clone(), None),
                _ => {
                    let paths = tls::DevCertPaths::in_dir(&cfg.server.data_dir);
                    if tls::ensure_dev_certs(&paths)? {
                        tracing::info!(ca = %paths.ca.display(), "generated development TLS certificates");
                    }
                    (paths.cert, paths.key, Some(paths.ca))
                }
            };
            // The certificate is reloaded when its files change: no restart, no dropped connection.
            let resolver = tls::reload::ReloadingResolver::new(&cert, &key)?;
            resolver.watch(config.durations.tls_reload_interval);
            let client_auth = match &cfg.auth.client_cert.ca {
                None => tls::ClientAuth::None,
                Some(ca) => tls::ClientAuth::Verify {
                    ca_pem: std::fs::read_to_string(ca).map_err(|source| StartError::Io {
                        what: format!("reading auth.client_cert.ca {}", ca.display()),
                        source,
                    })?,
                    required: cfg.auth.client_cert.required,
                },
            };
            (server::Transport::Tls(tls::https_config(resolver, &client_auth)?), dev_ca)
        };

        let spark = if options.discover_spark {
            let mut env = SparkEnv::discover(&cfg.spark, config.durations.spark_check_timeout).await?;
            tracing::info!(spark_home = %env.home.display(), version = %env.version, "Spark found");
            if let (Some(principal), Some(keytab)) = (&cfg.spark.launch_principal, &cfg.spark.launch_keytab) {
                let ticket = engine::launch::LaunchTicket::new(principal, keytab, &cfg.server.data_dir);
                ticket.renew(config.durations.spark_check_timeout).await.map_err(StartError::LaunchTicket)?;
                tracing::info!(principal = %principal, "launch ticket obtained from spark.launch_keytab");
                env.launch_ccache = Some(ticket.ccache_name());
                start_ticket_renewal(ticket, config.durations.spark_check_timeout);
            }
            env.sandbox = engine::sandbox::Sandbox::discover(cfg, &env, config.durations.spark_check_timeout).await?;
            match &env.sandbox {
                Some(sandbox) => tracing::info!(
                    read_only = ?sandbox.read_only_paths().collect::<Vec<_>>(),
                    "local and client-mode drivers run in a bubblewrap sandbox"
                ),
                None if cfg.spark.deploy_mode == "cluster" => {}
                None => tracing::warn!(
                    "spark.local_sandbox = \"dangerous_off\": user code runs as the gateway's account and can read and \
                     change its keys, policies, audit trail and other sessions"
                ),
            }
            Some(env)
        } else {
            None
        };
        let audit_path = cfg.audit.path.clone().unwrap_or_else(|| cfg.server.data_dir.join("audit").join("audit.log"));
        let audit_options = audit::AuditOptions {
            max_file_bytes: cfg.audit.max_file_bytes,
            max_files: cfg.audit.max_files,
            max_age: config.durations.audit_max_age,
            repeat_window: config.durations.audit_repeat_window,
        };
        let audit_log = audit::AuditLog::open_with(&audit_path, &audit_options)
            .map_err(|e| StartError::Io { what: "opening the audit log".into(), source: std::io::Error::other(e) })?;
        // Ids continue where the last run stopped, past every directory on disk.
        let ids = engine::ids::Ids::open(&cfg.server.data_dir).map_err(|e| StartError::Io {
            what: "preparing session and batch ids".into(),
            source: std::io::Error::other(e),
        })?;
        // It reads the database and syncs the disk: off the async workers.
        let store_config = cfg.clone();
        let store = tokio::task::spawn_blocking(move || store::open(&store_config, ids))
            .await
            .map_err(|e| StartError::Store(format!("opening the store stopped: {e}")))?
            .map_err(StartError::Store)?;
        let store = Arc::new(store);
        // The trail must not have lost records the store saw written (a truncated or replaced
        // audit file): said in the trail itself, whose chain goes on from its last record.
        let stored_head = store
            .value(store::AUDIT_HEAD)
            .await
            .ok()
            .flatten()
            .and_then(|bytes| serde_json::from_slice::<audit::ChainHead>(&bytes).ok());
        if let Some(problem) = audit::ChainHead::missing_from(stored_head.as_ref(), audit_log.opened_head()) {
            tracing::error!(trail = %audit_path.display(), problem, "the audit trail lost records since the last run");
            audit_log.record(
                audit::AuditEvent::security("audit_trail_truncated", audit_slots::Decision::Error)
                    .reason(format!("{problem}; the chain goes on from the trail's last record")),
            );
        }
        start_audit_head_keeper(audit_log.clone(), store.clone(), stored_head);
        // With recovery, what the earlier run's records say is taken back below; without, its
        // records were forgotten as the store opened.
        let recovers = cfg.recovers();
        if recovers && spark.as_ref().is_some_and(|s| s.supervisor.is_none()) {
            return Err(StartError::Recovery(
                "recovery.enabled needs launches to run under the supervisor, and this program is not the sparkgate                  binary: set spark.supervisor to its path (or recovery.enabled = false)"
                    .into(),
            ));
        }
        let found = if recovers {
            engine::recovery::read(&store).await.map_err(|e| StartError::Store(format!("reading the records: {e}")))?
        } else {
            engine::recovery::Found::default()
        };
        let kind_of = |dir: &str| if dir == "sessions" { acl::ResourceKind::Session } else { acl::ResourceKind::Batch };
        // What an earlier run left running (a crash, kill -9) and no record takes back is
        // stopped, before its files are moved aside and anything new is launched.
        let orphans = engine::launch::stop_orphans(&cfg.server.data_dir, &|dir, id| found.spares(kind_of(dir), id));
        if orphans > 0 {
            tracing::warn!(processes = orphans, "stopped the drivers and batches an earlier run left behind");
            audit_log.record(
                audit::AuditEvent::security("orphans_stopped", audit_slots::Decision::Info)
                    .reason(format!("{orphans} process(es) of an earlier run's sessions and batches were stopped")),
            );
        }
        let known = (found.ids(acl::ResourceKind::Session), found.ids(acl::ResourceKind::Batch));
        engine::ids::quarantine_unknown(&cfg.server.data_dir, &|dir, id| match kind_of(dir) {
            acl::ResourceKind::Session => known.0.contains(&id),
            acl::ResourceKind::Batch => known.1.contains(&id),
        })
        .map_err(|e| StartError::Io {
            what: "moving an earlier run's files aside".into(),
            source: std::io::Error::other(e),
        })?;
        let key = rpc::SecretKey::load_or_create(&cfg.server.data_dir.join("keys").join("session-secrets.key"))
            .map_err(StartError::SecretKey)?;
        let sessions = engine::manager::SessionRegistry::new(&config, store.clone(), audit_log.clone(), key.clone());

        // The RPC channel has its own private CA: drivers receive it in their 0600 configuration
        // file and trust nothing else. It is kept in the data directory, as is the port chosen
        // for `rpc.bind`'s port 0, so that a driver can dial back to a restarted gateway.
        let host = cfg.rpc.advertise_host.clone();
        let rpc_dir = cfg.server.data_dir.join("rpc");
        let (rpc_pki, made) = tls::rpc_identity(&rpc_dir, &[host.clone(), "localhost".into()])?;
        if made {
            tracing::info!(dir = %rpc_dir.display(), "made the driver RPC channel's TLS identity");
        }
        let rpc_tls = tls::server_config(&rpc_pki.server, &[])?;
        let settings = rpc::RpcSettings {
            max_frame_bytes: cfg.rpc.max_frame_bytes,
            handshake_timeout: config.durations.rpc_handshake_timeout,
            max_pending: cfg.rpc.max_pending_handshakes,
            max_pending_per_ip: cfg.rpc.max_pending_handshakes_per_ip,
            ping_interval: config.durations.ping_interval,
            max_queued: rpc::QueueLimits::for_frames(cfg.rpc.max_frame_bytes),
        };
        let port_file = rpc_dir.join("port");
        let remembered = std::fs::read_to_string(&port_file).ok().and_then(|p| p.trim().parse::<u16>().ok());
        let mut bound = Err(std::io::Error::other("no address to bind"));
        for addr in rpc_bind_order(cfg.rpc.bind, remembered) {
            bound = rpc::server::start(addr, rpc_tls.clone(), settings.clone(), sessions.clone()).await;
            if bound.is_ok() {
                break;
            }
        }
        let rpc_server = bound.map_err(io("binding the driver RPC listener"))?;
        if Some(rpc_server.local_addr.port()) != remembered {
            fs::write_file(&port_file, rpc_server.local_addr.port().to_string().as_bytes(), 0o600).map_err(|e| {
                StartError::Io { what: "keeping the RPC port".into(), source: std::io::Error::other(e) }
            })?;
        }
        let channel = engine::manager::DriverChannel {
            endpoint: RpcEndpoint {
                host: host.clone(),
                port: rpc_server.local_addr.port(),
                server_name: host,
                ca_pem: rpc_pki.ca_pem.clone(),
            },
            local: Some(rpc_server.local_listeners()),
        };
        let spark = spark.map(Arc::new);
        let manager = SessionManager::new(config.clone(), spark.clone(), sessions, Some(channel));
        manager.start_background();

        let listener = tokio::net::TcpListener::bind(cfg.server.bind).await.map_err(io("binding the HTTP listener"))?;
        let addr = listener.local_addr().map_err(io("reading the listener address"))?;
        let acl = acl::AccessManager::load(&cfg.acl.policy_dir, cfg.acl.groups_file.as_deref())
            .map_err(StartError::Policy)?;
        start_policy_reloader(acl.clone(), audit_log.clone(), config.durations.acl_reload_interval);
        let store_handle = store.clone();
        let batches = engine::batch::BatchManager::new(config.clone(), spark, store, audit_log.clone(), key);
        if recovers {
            let summary = engine::recovery::restore(found, &manager, &batches, &audit_log).await;
            tracing::info!(
                resumed = summary.resumed,
                finished = summary.finished,
                unreadable = summary.unreadable,
                "took back the sessions and batches of the earlier run"
            );
            if summary != engine::recovery::Summary::default() {
                audit_log.record(audit::AuditEvent::security("recovered", audit_slots::Decision::Info).reason(
                    format!(
                        "{} running and {} finished sessions and batches taken back; {} unreadable records skipped",
                        summary.resumed, summary.finished, summary.unreadable
                    ),
                ));
            }
        }
        batches.start_background();
        let policy = acl.clone();
        manager.set_quota_source(engine::manager::QuotaSource(Box::new(move |user| policy.quota(user))));
        let state = api::AppState::new(api::Handles {
            manager: manager.clone(),
            batches: batches.clone(),
            config: config.clone(),
            acl,
            audit: audit_log.clone(),
            metrics: Arc::new(metrics::Metrics::new()),
            log_streams: Default::default(),
        });
        let app = http::stack::build(state, auth_chain);
        let (shutdown, rx) = watch::channel(false);
        let (h1_max_buf, h2_max_header_list) = http::limits::hyper_ceilings(http::stack::head_limits(&config));
        let limits = server::ConnLimits {
            max: config.config.server.max_connections,
            per_ip: config.config.server.max_connections_per_ip,
            handshake_timeout: config.durations.tls_handshake_timeout,
            header_timeout: config.durations.header_timeout,
            h1_max_buf,
            h2_max_header_list,
        };
        tokio::spawn(server::serve(listener, app, transport, limits, audit_log.clone(), rx));
        tracing::info!(%addr, rpc = %rpc_server.local_addr, "sparkgate listening");
        Ok(Self {
            addr,
            rpc_addr: rpc_server.local_addr,
            manager,
            batches,
            dev_ca,
            rpc_ca_pem: rpc_pki.ca_pem,
            audit: audit_log,
            store: store_handle,
            shutdown,
        })
    }

    /// Stops accepting requests. With recovery, sessions and batches go on running, their
    /// records stored, for the next start to take back; without, every one is stopped (no
    /// driver outlives the gateway).
    pub async fn shutdown(&self) {
        let _ = self.shutdown.send(true);
        let recovers = self.manager.config().config.recovers();
        if recovers {
            self.manager.store_changes().await;
            self.batches.store_changes().await;
        } else {
            self.manager.shutdown_all().await;
            self.batches.shutdown_all().await;
        }
        self.audit.record(audit::AuditEvent::security("gateway_stopped", audit_slots::Decision::Info).reason(
            if recovers {
                "sessions and batches left running for the next start (recovery.enabled)"
            } else {
                "every session and batch was stopped (recovery.enabled = false)"
            },
        ));
        let audit = self.audit.clone();
        let _ = tokio::task::spawn_blocking(move || audit.flush()).await;
        keep_audit_head(&self.audit, &self.store, &mut None).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rpc_port_of_an_earlier_run_is_tried_first_only_when_any_port_would_do() {
        let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
        let fixed: std::net::SocketAddr = "127.0.0.1:7077".parse().unwrap();
        assert_eq!(rpc_bind_order(any, Some(41000)), ["127.0.0.1:41000".parse().unwrap(), any]);
        assert_eq!(rpc_bind_order(any, None), [any]);
        assert_eq!(rpc_bind_order(fixed, Some(41000)), [fixed], "a configured port is the operator's");
        assert_eq!(rpc_bind_order(any, Some(0)), [any]);
    }

    #[test]
    fn root_is_refused_unless_dangerously_allowed() {
        let err = refuse_root(true, false).unwrap_err().to_string();
        assert!(err.contains("refuses to run as root") && err.contains("server.dangerous_run_as_root"), "{err}");
        assert!(refuse_root(true, true).is_ok());
        assert!(refuse_root(false, false).is_ok());
    }
}
