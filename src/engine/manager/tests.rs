use super::*;
use crate::config::{self, Sources};
use crate::engine::kind::{CodeKind, SessionKind};
use crate::engine::launch::LogBuffer;
use crate::engine::session::SessionSpec;
use crate::engine::StatementState;
use crate::rpc::ToDriver;
use std::path::PathBuf;
use tokio::sync::mpsc;

/// A manager over a memory store, with drivers told to dial `host` (nothing listens there).
fn build(cfg: config::ValidatedConfig, spark: Option<SparkEnv>, host: &str) -> Arc<SessionManager> {
    let cfg = Arc::new(cfg);
    let audit = crate::audit::AuditLog::open(&cfg.config.server.data_dir.join("audit/audit.log"), 1 << 20).unwrap();
    let store = Arc::new(AnyStore::Memory(Box::new(crate::store::memory::MemoryStore::ephemeral())));
    let sessions = SessionRegistry::new(&cfg, store, audit, crate::rpc::SecretKey::generate());
    let endpoint = RpcEndpoint { host: host.into(), port: 1, server_name: host.into(), ca_pem: String::new() };
    SessionManager::new(cfg, spark.map(Arc::new), sessions, Some(DriverChannel { endpoint, local: None }))
}

/// The configuration over data directory `dir`, with `overrides`.
fn config_in(dir: &std::path::Path, overrides: &[&str]) -> config::ValidatedConfig {
    let mut all = vec![format!("server.data_dir=\"{}\"", dir.display())];
    all.extend(overrides.iter().map(|s| s.to_string()));
    config::load(&Sources { file: None, env: vec![], overrides: all }).unwrap()
}

fn manager(overrides: &[&str]) -> (Arc<SessionManager>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_in(dir.path(), overrides);
    (build(cfg, None, "127.0.0.1"), dir)
}

fn spec() -> SessionSpec {
    SessionSpec {
        owner: "alice".into(),
        effective_user: "alice".into(),
        kind: SessionKind::PySpark,
        submit: crate::engine::SubmitSpec::default(),
        heartbeat_timeout_secs: 0,
        ttl: None,
        idle_timeout: None,
    }
}

/// The record of session `id`, idle, as an earlier run left it (no launch recorded).
fn live_record(id: u32) -> SessionRecord {
    SessionRecord {
        id,
        kind: "pyspark".into(),
        owner: "alice".into(),
        effective_user: "alice".into(),
        submit: crate::engine::SubmitSpec::default(),
        heartbeat_timeout_secs: 0,
        ttl: None,
        idle_timeout: None,
        secret_nonce: Some("00".repeat(16)),
        state: SessionState::Idle,
        app_id: None,
        next_statement_id: 0,
        process: None,
        yarn_tag: None,
        cluster_driver: None,
        created_at: record::now_ms(),
        finished_at: None,
        warm: false,
    }
}

/// A session registered with the manager, with a fake driver link, already idle.
fn idle_session(
    m: &SessionManager,
    id: u32,
    limits: SessionLimits,
) -> (Arc<Session>, mpsc::UnboundedReceiver<ToDriver>) {
    let s =
        Arc::new(Session::new(id, spec(), limits, SessionSecret::generate(), LogBuffer::new(50, None), PathBuf::new()));
    s.transition(SessionState::Starting).unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    s.attach(DriverLink::for_test(1, tx));
    s.on_driver_message(1, FromDriver::State { state: "idle".into(), message: None });
    m.insert_for_test(s.clone());
    (s, rx)
}

/// Session 0, starting, not yet registered with a manager.
fn starting_session() -> Arc<Session> {
    let s = Arc::new(Session::new(
        0,
        spec(),
        limits(),
        SessionSecret::generate(),
        LogBuffer::new(50, None),
        PathBuf::new(),
    ));
    s.transition(SessionState::Starting).unwrap();
    s
}

fn limits() -> SessionLimits {
    SessionLimits {
        idle_timeout: None,
        ttl: None,
        heartbeat_timeout: None,
        statement_retention: 100,
        max_output_bytes: 1 << 20,
        max_queued_statements: 20,
        max_retained_bytes: 64 << 20,
    }
}

/// Lets the stop tasks spawned by the checker run.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_never_kills_a_busy_session() {
    let (m, _dir) = manager(&["sessions.shutdown_grace=\"1s\""]);
    let l = SessionLimits { idle_timeout: Some(Duration::from_secs(60)), ..limits() };
    let (busy, _rx1) = idle_session(&m, 0, l);
    let (idle, _rx2) = idle_session(&m, 1, l);
    busy.submit("import time; time.sleep(3600)".into(), CodeKind::PySpark).unwrap();
    assert_eq!(busy.state(), SessionState::Busy);
    tokio::time::advance(Duration::from_secs(61)).await;
    m.check_timeouts().await;
    settle().await;
    assert_eq!(idle.state(), SessionState::Killed);
    assert!(idle.log.snapshot().iter().any(|l| l.contains("idle")));
    assert_eq!(busy.state(), SessionState::Busy, "a busy session is not idle");
}

#[tokio::test(start_paused = true)]
async fn activity_postpones_the_idle_timeout() {
    let (m, _dir) = manager(&[]);
    let l = SessionLimits { idle_timeout: Some(Duration::from_secs(60)), ..limits() };
    let (s, _rx) = idle_session(&m, 0, l);
    tokio::time::advance(Duration::from_secs(40)).await;
    s.record_activity();
    tokio::time::advance(Duration::from_secs(40)).await;
    m.check_timeouts().await;
    settle().await;
    assert_eq!(s.state(), SessionState::Idle);
}

#[tokio::test(start_paused = true)]
async fn ttl_ends_even_a_busy_session() {
    let (m, _dir) = manager(&["sessions.shutdown_grace=\"1s\""]);
    let l = SessionLimits { ttl: Some(Duration::from_secs(30)), ..limits() };
    let (s, mut rx) = idle_session(&m, 0, l);
    s.submit("work".into(), CodeKind::PySpark).unwrap();
    tokio::time::advance(Duration::from_secs(31)).await;
    m.check_timeouts().await;
    settle().await;
    assert_eq!(s.state(), SessionState::Killed);
    // The driver was asked to shut down, and the running statement ended visibly.
    let mut saw_shutdown = false;
    while let Ok(msg) = rx.try_recv() {
        saw_shutdown |= msg == ToDriver::Shutdown;
    }
    assert!(saw_shutdown);
    assert_eq!(s.statement(0).unwrap().output.unwrap().value()["status"], "error");
}

#[tokio::test(start_paused = true)]
async fn heartbeat_timeout_deletes_the_session() {
    let (m, _dir) = manager(&[]);
    let l = SessionLimits { heartbeat_timeout: Some(Duration::from_secs(10)), ..limits() };
    let (s, _rx) = idle_session(&m, 0, l);
    tokio::time::advance(Duration::from_secs(6)).await;
    s.heartbeat();
    tokio::time::advance(Duration::from_secs(6)).await;
    m.check_timeouts().await;
    settle().await;
    assert_eq!(s.state(), SessionState::Idle, "a heartbeat came in time");
    tokio::time::advance(Duration::from_secs(11)).await;
    m.check_timeouts().await;
    settle().await;
    assert!(matches!(m.get("0"), Err(EngineError::SessionNotFound(_))));
}

#[tokio::test(start_paused = true)]
async fn a_lost_driver_that_does_not_return_makes_the_session_dead() {
    let (m, _dir) = manager(&["rpc.reconnect_window=\"20s\""]);
    let (s, _rx) = idle_session(&m, 0, limits());
    s.detach(1);
    tokio::time::advance(Duration::from_secs(10)).await;
    m.check_timeouts().await;
    settle().await;
    assert_eq!(s.state(), SessionState::Idle, "still inside the reconnect window");
    tokio::time::advance(Duration::from_secs(11)).await;
    m.check_timeouts().await;
    settle().await;
    assert_eq!(s.state(), SessionState::Dead);
    assert!(s.log.snapshot().iter().any(|l| l.contains("not re-established")));
}

#[tokio::test(start_paused = true)]
async fn a_session_whose_driver_failed_is_stopped_and_dead() {
    let (m, _dir) = manager(&["sessions.shutdown_grace=\"1s\""]);
    let s = starting_session();
    let (tx, mut rx) = mpsc::unbounded_channel();
    s.attach(DriverLink::for_test(1, tx));
    m.insert_for_test(s.clone());
    s.on_driver_message(1, FromDriver::State { state: "error".into(), message: Some("Spark failed: bad conf".into()) });
    assert_eq!(s.state(), SessionState::Error);
    m.check_timeouts().await;
    settle().await;
    assert_eq!(s.state(), SessionState::Dead, "an errored driver does not hold its slot and processes");
    assert!(s.log.snapshot().iter().any(|l| l.contains("bad conf")));
    let mut saw_shutdown = false;
    while let Ok(msg) = rx.try_recv() {
        saw_shutdown |= msg == ToDriver::Shutdown;
    }
    assert!(saw_shutdown, "the driver was told to shut down");
}

#[tokio::test(start_paused = true)]
async fn start_timeout_and_retention() {
    let (m, _dir) = manager(&["sessions.start_timeout=\"30s\"", "sessions.retain_finished=\"60s\""]);
    let s = starting_session();
    m.insert_for_test(s.clone());
    tokio::time::advance(Duration::from_secs(31)).await;
    m.check_timeouts().await;
    settle().await;
    assert_eq!(s.state(), SessionState::Dead);
    assert!(m.get("0").is_ok(), "finished sessions stay visible for a while");
    tokio::time::advance(Duration::from_secs(61)).await;
    m.check_timeouts().await;
    assert!(m.get("0").is_err(), "…and are collected after the retention time");
}

#[tokio::test]
async fn sessions_are_found_by_id_or_name_and_caps_are_enforced() {
    let (m, _dir) = manager(&["sessions.max_sessions=2", "sessions.max_concurrent_launches=5"]);
    let (a, _rxa) = idle_session(&m, 0, limits());
    let (_b, _rxb) = idle_session(&m, 1, limits());
    assert_eq!(m.get("0").unwrap().id, a.id);
    assert!(m.get("nobody").is_err());
    // alice may use every slot here: a quota written for her by name.
    let roomy = Quota { max_sessions: Some(10), explicit: true, ..Quota::default() };
    let err = m.create(spec(), roomy, 0).await.unwrap_err();
    assert!(matches!(err, EngineError::TooManyLive { limit: 2, .. }), "{err}");
    // Finished sessions do not count.
    a.finish(SessionState::Killed, "test");
    let created = m
        .create(
            SessionSpec {
                submit: crate::engine::SubmitSpec { name: Some("etl".into()), ..Default::default() },
                ..spec()
            },
            roomy,
            0,
        )
        .await
        .unwrap();
    // Without Spark the launch fails visibly: the session is dead with the reason in its log.
    assert_eq!(created.state(), SessionState::Dead);
    assert!(created.log.snapshot().iter().any(|l| l.contains("Spark is not configured")));
    assert_eq!(m.get("etl").unwrap().id, created.id);
    let dup = m
        .create(
            SessionSpec {
                submit: crate::engine::SubmitSpec { name: Some("etl".into()), ..Default::default() },
                ..spec()
            },
            roomy,
            0,
        )
        .await
        .unwrap_err();
    assert!(matches!(dup, EngineError::DuplicateName(_)));
    let bad = m.create(SessionSpec { ttl: Some("soon".into()), ..spec() }, roomy, 0).await.unwrap_err();
    assert!(bad.to_string().contains("ttl"));
    // With the default quota, alice alone may not take both slots.
    let err = m.create(spec(), Quota::default(), 0).await.unwrap_err();
    assert!(matches!(err, EngineError::UserQuota { limit: 1, .. }), "{err}");
}

#[tokio::test]
async fn per_user_quotas() {
    let (m, _dir) = manager(&[]);
    let (_a, _rx) = idle_session(&m, 0, limits()); // alice's live session
    let quota = Quota { max_sessions: Some(1), ..Quota::default() };
    let err = m.create(spec(), quota, 0).await.unwrap_err();
    assert!(matches!(&err, EngineError::UserQuota { user, limit: 1, .. } if user == "alice"), "{err}");
    // Another user is not affected by alice's quota.
    let bob = SessionSpec { owner: "bob".into(), effective_user: "bob".into(), ..spec() };
    assert!(m.create(bob, quota, 0).await.is_ok());
}

#[test]
fn the_driver_configuration_travels_with_files_in_cluster_mode_and_never_on_argv() {
    let conf_file = std::path::Path::new("/data/sessions/4/driver-conf.json");
    let json = r#"{"secret":"0123abcd"}"#;
    let client = crate::config::SparkConfig::default();
    let (files, conf, env) = driver_conf_delivery(&client, &["a.txt".into()], conf_file, json, 4);
    assert_eq!(files, vec!["a.txt".to_string()]);
    assert_eq!(env, BTreeMap::from([("SPARKGATE_DRIVER_CONF".to_string(), conf_file.display().to_string())]));
    assert!(conf.is_empty());
    let yarn =
        crate::config::SparkConfig { master: "yarn".into(), deploy_mode: "cluster".into(), ..Default::default() };
    let (files, conf, env) = driver_conf_delivery(&yarn, &[], conf_file, json, 4);
    assert_eq!(files, vec!["/data/sessions/4/driver-conf.json".to_string()]);
    assert!(env.is_empty());
    assert_eq!(conf["spark.yarn.appMasterEnv.SPARKGATE_DRIVER_CONF"], "driver-conf.json");
    assert!(conf.values().all(|v| !v.contains("0123abcd")), "YARN gets the file, not the secret");
    assert_eq!(conf["spark.yarn.tags"], "sparkgate,sparkgate-session-4");
    // The files list (in the owner-only properties file) names the file, never its contents.
    let spec = launch::LaunchSpec {
        name: "s".into(),
        cluster_conf: conf,
        app: "driver.py".into(),
        submit: crate::engine::SubmitSpec { files, ..Default::default() },
        ..Default::default()
    };
    let argv: Vec<String> =
        launch::build_args(&yarn, &spec, std::path::Path::new("/data/sessions/4/spark-launch.properties"))
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
    assert!(!argv.iter().any(|a| a.contains("driver-conf.json")), "{argv:?}");
    let props = launch::spark_properties(&yarn, &spec);
    assert_eq!(props["spark.files"], "/data/sessions/4/driver-conf.json");
    assert_eq!(props["spark.yarn.appMasterEnv.SPARKGATE_DRIVER_CONF"], "driver-conf.json");
}

#[test]
fn on_kubernetes_the_driver_configuration_is_never_uploaded_as_a_file() {
    // --files would put it in spark.kubernetes.file.upload.path, possibly shared.
    let conf_file = std::path::Path::new("/data/sessions/4/driver-conf.json");
    let json = r#"{"secret":"0123abcd"}"#;
    let k8s = crate::config::SparkConfig {
        master: "k8s://https://api:6443".into(),
        deploy_mode: "cluster".into(),
        ..Default::default()
    };
    let (files, conf, env) = driver_conf_delivery(&k8s, &["a.txt".into()], conf_file, json, 4);
    assert_eq!(files, vec!["a.txt".to_string()], "only the user's files are uploaded");
    assert!(env.is_empty());
    assert_eq!(conf["spark.kubernetes.driverEnv.SPARKGATE_DRIVER_SECRET_CONF"], json);
    // It travels in the owner-only properties file, not on argv.
    let spec = launch::LaunchSpec {
        name: "s".into(),
        cluster_conf: conf,
        app: "d.py".into(),
        submit: crate::engine::SubmitSpec { files, ..Default::default() },
        ..Default::default()
    };
    let argv: Vec<String> = launch::build_args(&k8s, &spec, std::path::Path::new("/p"))
        .into_iter()
        .map(|a| a.into_string().unwrap())
        .collect();
    assert!(!argv.iter().any(|a| a.contains("0123abcd") || a.contains("driver-conf.json")), "{argv:?}");
}

/// A FAKE command `name` in `dir`: a shell script running `body`.
fn fake_command(dir: &std::path::Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A YARN cluster-mode gateway whose cluster cannot run here: a FAKE `spark-submit` prints
/// what the real one prints and waits, a FAKE `yarn` records its calls and answers `-list`
/// with the application that carries the asked tag.
fn yarn_cluster_manager(dir: &std::path::Path) -> Arc<SessionManager> {
    let calls = dir.join("calls");
    let script = |name: &str, body: &str| fake_command(dir, name, body);
    let submit = script(
        "spark-submit",
        "echo 'INFO Client: Submitted application application_1700000000000_0042'\nexec sleep 600",
    );
    let yarn = script(
        "yarn",
        &format!(
            "echo \"yarn $*\" >> {calls}\n\
             [ \"$2\" = -list ] && printf 'Total number of applications:1\\n\
             application_1700000000000_0077\\tetl\\tSPARK\\talice\\tdefault\\tRUNNING\\n'\n\
             exit 0",
            calls = calls.display()
        ),
    );
    let cfg = config::load(&Sources {
        file: None,
        env: vec![],
        overrides: vec![
            format!("server.data_dir=\"{}\"", dir.join("data").display()),
            "spark.master=\"yarn\"".into(),
            "spark.deploy_mode=\"cluster\"".into(),
            format!("spark.yarn_command=\"{}\"", yarn.display()),
            "sessions.shutdown_grace=\"1s\"".into(),
        ],
    })
    .unwrap();
    let env = SparkEnv::for_test(dir, &submit);
    build(cfg, Some(env), "gateway.example.com")
}

#[tokio::test]
async fn a_yarn_cluster_session_is_killed_by_its_launch_tag_not_by_what_its_driver_reports() {
    let dir = tempfile::tempdir().unwrap();
    let m = yarn_cluster_manager(dir.path());
    let s = m.create(spec(), Quota::default(), 0).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !s.log.snapshot().iter().any(|l| l.contains("Submitted application")) {
        assert!(Instant::now() < deadline, "{:?}", s.log.snapshot());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The driver (user code runs in it) names another user's application.
    let (tx, _rx) = mpsc::unbounded_channel();
    s.attach(DriverLink::for_test(7, tx));
    s.on_driver_message(
        7,
        FromDriver::AppInfo { app_id: Some("application_1700000000000_0666".into()), spark_ui_url: None },
    );
    m.stop(&s, SessionState::Killed, "test").await;
    let properties = std::fs::read_to_string(s.dir.join("spark-launch.properties")).unwrap();
    let tags = properties.lines().find_map(|l| l.strip_prefix("spark.yarn.tags=")).unwrap_or_default().to_string();
    let tag = tags.split(',').find(|t| t.starts_with("sparkgate-launch-")).unwrap_or("(no launch tag)").to_string();
    let calls = std::fs::read_to_string(dir.path().join("calls")).unwrap_or_default();
    assert_eq!(
        calls,
        format!(
            "yarn application -list -appStates ALL -appTags {tag}\n\
             yarn application -kill application_1700000000000_0077\n"
        )
    );
}

#[tokio::test]
async fn finished_sessions_cannot_pile_up_before_their_retention_time() {
    let (m, _dir) = manager(&["sessions.max_finished_retained=5", "sessions.max_finished_retained_per_user=3"]);
    let roomy =
        Quota { max_sessions: Some(100), max_concurrent_launches: Some(100), explicit: true, ..Quota::default() };
    // Without Spark every session is dead at once: finished, still visible for retain_finished.
    let mut ids = Vec::new();
    for user in ["alice", "alice", "alice", "alice", "bob", "bob", "carol"] {
        let spec = SessionSpec { owner: user.into(), effective_user: user.into(), ..spec() };
        ids.push(m.create(spec, roomy, 0).await.unwrap().id);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    m.forget_excess_finished().await;
    let kept: Vec<u32> = m.list().iter().map(|s| s.id).collect();
    // Newest first: carol's, bob's two, alice's two newest fill the five; alice's two oldest go.
    assert_eq!(kept, ids[2..].to_vec());
    m.forget_excess_finished().await;
    assert_eq!(m.list().len(), 5, "stable once within the caps");
}

#[tokio::test]
async fn a_sessions_uploads_go_when_its_driver_does() {
    // A FAKE spark-submit that runs a moment and exits, standing in for a driver that ends.
    let dir = tempfile::tempdir().unwrap();
    let submit = fake_command(dir.path(), "spark-submit", "sleep 1\nexit 0");
    let cfg = config::load(&Sources {
        file: None,
        env: vec![],
        overrides: vec![format!("server.data_dir=\"{}\"", dir.path().join("data").display())],
    })
    .unwrap();
    let env = SparkEnv::for_test(dir.path(), &submit);
    let m = build(cfg, Some(env), "127.0.0.1");
    let s = m.create(spec(), Quota::default(), 0).await.unwrap();
    let uploads = s.dir.join("uploads");
    std::fs::create_dir_all(&uploads).unwrap();
    std::fs::write(uploads.join("big.bin"), vec![0u8; 1 << 20]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while uploads.exists() {
        assert!(Instant::now() < deadline, "the uploads of a session whose driver ended stayed on disk");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(s.state(), SessionState::Dead);
    assert!(s.dir.join("session.log").exists(), "its log stays visible until the session is forgotten");
}

#[tokio::test]
async fn what_a_session_and_its_statements_show_is_stored_and_a_statement_is_on_disk_when_flushed() {
    use crate::store::Store;
    let dir = tempfile::tempdir().unwrap();
    let cfg = Arc::new(config_in(dir.path(), &[]));
    let db = dir.path().join("state").join("store.db");
    use crate::engine::ids::IdCounter;
    let counters = (IdCounter::in_memory("sessions"), IdCounter::in_memory("batches"));
    let store = Arc::new(AnyStore::Sqlite(crate::store::sqlite::SqliteStore::open(&db, counters).unwrap()));
    let audit = crate::audit::AuditLog::open(&dir.path().join("audit/audit.log"), 1 << 20).unwrap();
    let sessions = SessionRegistry::new(&cfg, store.clone(), audit, crate::rpc::SecretKey::generate());
    let m = SessionManager::new(cfg, None, sessions.clone(), None);

    // A session registered as a create registers it, with a fake driver.
    let (id, session_dir) = sessions.entries.reserve().await.unwrap();
    let mut s = Session::new(id, spec(), limits(), SessionSecret::generate(), LogBuffer::new(50, None), session_dir);
    s.on_change = Some(Registry::on_change(&sessions, |r: &SessionRegistry| &r.entries, id));
    let s = Arc::new(s);
    sessions.entries.register(s.clone(), &Quota::default()).await.unwrap();
    s.transition(SessionState::Starting).unwrap();
    let (tx, _rx) = mpsc::unbounded_channel();
    s.attach(DriverLink::for_test(1, tx));
    s.on_driver_message(1, FromDriver::State { state: "idle".into(), message: None });

    // Flushed, a statement is in the store — read back by another connection, as after a crash.
    let statement = s.submit("6 * 7".into(), CodeKind::PySpark).unwrap();
    m.flush(&s).await.unwrap();
    let read = |sql: &str| -> Vec<serde_json::Value> {
        let conn = rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let mut query = conn.prepare(sql).unwrap();
        let rows = query.query_map([], |r| r.get::<_, Vec<u8>>(0)).unwrap();
        rows.map(|b| serde_json::from_slice(&b.unwrap()).unwrap()).collect()
    };
    let stored = read("SELECT bytes FROM statements ORDER BY id");
    assert_eq!(stored.len(), 1);
    assert_eq!((stored[0]["id"].as_u64(), stored[0]["code"].as_str()), (Some(u64::from(statement.id)), Some("6 * 7")));
    assert_eq!((stored[0]["state"].as_str(), stored[0]["kind"].as_str()), (Some("running"), Some("pyspark")));
    assert_eq!(read("SELECT bytes FROM records")[0]["state"], "busy");

    // What the driver reports is written without anyone asking: the result, the state.
    s.on_driver_message(
        1,
        FromDriver::StatementResult {
            id: statement.id,
            state: "available".into(),
            output: json!({"status": "ok", "execution_count": 0, "data": {"text/plain": "42"}}),
            completed: None,
        },
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let statements = read("SELECT bytes FROM statements ORDER BY id");
        let records = read("SELECT bytes FROM records");
        if statements[0]["state"] == "available" && records[0]["state"] == "idle" {
            assert_eq!(statements[0]["output"]["data"]["text/plain"], "42");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not stored: {statements:?} {records:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A message that changes nothing writes nothing (a large output is not encoded again).
    let version = || -> i64 {
        let conn = rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        conn.query_row("SELECT version FROM statements", [], |r| r.get(0)).unwrap()
    };
    let before = version();
    for _ in 0..5 {
        s.on_driver_message(1, FromDriver::Pong);
    }
    m.flush(&s).await.unwrap();
    assert_eq!(version(), before);
    // Forgotten, the session takes its statements with it.
    m.delete(&s, "alice").await;
    assert!(read("SELECT bytes FROM statements").is_empty());
    assert!(store.list(crate::acl::ResourceKind::Session, None, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_restarted_gateway_takes_back_a_live_session_with_its_statements_and_the_same_secret() {
    use crate::engine::launch::{ProcessHandle, ProcessIdentity};
    let dir = tempfile::tempdir().unwrap();
    let cfg = Arc::new(config_in(dir.path(), &[]));
    let db = dir.path().join("state").join("store.db");
    let key_file = dir.path().join("keys").join("session-secrets.key");
    let open = || {
        use crate::engine::ids::IdCounter;
        let counters = (IdCounter::in_memory("sessions"), IdCounter::in_memory("batches"));
        Arc::new(AnyStore::Sqlite(crate::store::sqlite::SqliteStore::open(&db, counters).unwrap()))
    };
    let audit = crate::audit::AuditLog::open(&dir.path().join("audit/audit.log"), 1 << 20).unwrap();
    // A gateway over the store: its sessions' registry and manager, the key read from its file.
    let gateway = |store: &Arc<AnyStore>| {
        let key = crate::rpc::SecretKey::load_or_create(&key_file).unwrap();
        let sessions = SessionRegistry::new(&cfg, store.clone(), audit.clone(), key);
        (sessions.clone(), SessionManager::new(cfg.clone(), None, sessions, None))
    };
    let store = open();
    let (sessions, m) = gateway(&store);

    // A running launch (a process standing in for the supervisor) and a session as create makes it.
    let mut stand_in = std::process::Command::new("sleep");
    std::os::unix::process::CommandExt::process_group(&mut stand_in, 0);
    let mut stand_in = stand_in.arg("60").spawn().unwrap();
    let identity = ProcessIdentity::of(stand_in.id() as i32).unwrap();
    let (id, session_dir) = sessions.entries.reserve().await.unwrap();
    let nonce = crate::rpc::SecretKey::nonce();
    let secret = sessions.key.derive(id, &nonce);
    let log = LogBuffer::follow(50, &session_dir.join(SESSION_LOG), 1 << 20, true).unwrap();
    let mut s = Session::new(id, spec(), limits(), secret.clone(), log, session_dir);
    s.secret_nonce = Some(nonce);
    s.on_change = Some(Registry::on_change(&sessions, |r: &SessionRegistry| &r.entries, id));
    let s = Arc::new(s);
    sessions.entries.register(s.clone(), &Quota::default()).await.unwrap();
    s.set_process(ProcessHandle::adopt(identity.clone(), &s.dir.join(SESSION_LOG)).unwrap());
    s.transition(SessionState::Starting).unwrap();
    let (tx, _rx) = mpsc::unbounded_channel();
    s.attach(DriverLink::for_test(1, tx));
    s.on_driver_message(1, FromDriver::State { state: "idle".into(), message: None });
    let done = s.submit("1 + 1".into(), CodeKind::PySpark).unwrap();
    let ack = s.on_driver_message(
        1,
        FromDriver::StatementResult {
            id: done.id,
            state: "available".into(),
            output: json!({"status": "ok", "execution_count": 0, "data": {"text/plain": "2"}}),
            completed: None,
        },
    );
    assert!(ack.is_some());
    let running = s.submit("6 * 7".into(), CodeKind::PySpark).unwrap();
    let waiting = s.submit("spark.range(3).count()".into(), CodeKind::PySpark).unwrap();
    m.flush(&s).await.unwrap();
    assert_eq!(s.statement(running.id).unwrap().state, StatementState::Running);

    // The database never holds the secret, in any form.
    for file in std::fs::read_dir(db.parent().unwrap()).unwrap().flatten() {
        let bytes = std::fs::read(file.path()).unwrap();
        let raw = hex::decode(secret.to_hex()).unwrap();
        assert!(!bytes.windows(raw.len()).any(|w| w == raw), "{:?} holds the secret", file.path());
        assert!(!String::from_utf8_lossy(&bytes).contains(&secret.to_hex()), "{:?}", file.path());
    }

    // A new gateway over the same files.
    let store = open();
    let found = crate::engine::recovery::read(&store).await.unwrap();
    assert!(found.spares(crate::acl::ResourceKind::Session, id), "its launch is spared at start-up");
    let (_, m2) = gateway(&store);
    let batches = crate::engine::batch::BatchManager::new(
        cfg.clone(),
        None,
        store.clone(),
        audit.clone(),
        crate::rpc::SecretKey::generate(),
    );
    let summary = crate::engine::recovery::restore(found, &m2, &batches, &audit).await;
    assert_eq!(summary, crate::engine::recovery::Summary { resumed: 1, finished: 0, unreadable: 0 });
    let back = m2.get(&id.to_string()).unwrap();
    assert_eq!(back.state(), SessionState::Recovering);
    assert_eq!(back.secret.to_hex(), secret.to_hex(), "the driver's secret is derived again");
    assert_eq!(back.statements(), s.statements(), "every statement as it was");
    assert_eq!(back.process().unwrap().pgid, identity.pid, "the launch is adopted");

    // The driver dials back: the running statement is asked for again, the waiting one runs next.
    let (tx, mut rx) = mpsc::unbounded_channel();
    back.attach(DriverLink::for_test(7, tx));
    assert!(matches!(rx.try_recv().unwrap(), ToDriver::Execute { id, .. } if id == running.id));
    back.on_driver_message(7, FromDriver::State { state: "idle".into(), message: None });
    assert_eq!(back.state(), SessionState::Busy, "a statement from before the restart still runs");
    back.on_driver_message(
        7,
        FromDriver::StatementResult {
            id: running.id,
            state: "available".into(),
            output: json!({"status": "ok", "execution_count": 1, "data": {"text/plain": "42"}}),
            completed: None,
        },
    )
    .unwrap()
    .send();
    assert!(matches!(rx.try_recv().unwrap(), ToDriver::Execute { id, .. } if id == waiting.id));
    assert!(matches!(rx.try_recv().unwrap(), ToDriver::Ack { id } if id == running.id));
    assert_eq!(back.submit("3".into(), CodeKind::PySpark).unwrap().id, waiting.id + 1, "ids continue");

    // Its launch ends while nobody watches but the adopted handle: the session ends dead.
    stand_in.kill().unwrap();
    stand_in.wait().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while back.state() != SessionState::Dead {
        assert!(tokio::time::Instant::now() < deadline, "{}", back.state());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_live_session_whose_launch_ended_meanwhile_comes_back_dead_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Arc::new(config_in(dir.path(), &[]));
    let session_dir = dir.path().join("sessions/4");
    std::fs::create_dir_all(&session_dir).unwrap();
    std::fs::write(session_dir.join(SESSION_LOG), "earlier output\n").unwrap();
    std::fs::write(session_dir.join("exit-status"), "137\n").unwrap();
    let record = SessionRecord {
        process: Some(crate::engine::launch::ProcessIdentity { pid: 1, start_time: 0, boot_id: "gone".into() }),
        ..live_record(4)
    };
    let stored = Stored { id: 4, version: 3, meta: Default::default(), bytes: record::encode(&record) };
    let m = build((*cfg).clone(), None, "127.0.0.1");
    let session = m.restore(&stored, &[]).await.unwrap();
    assert_eq!(session.state(), SessionState::Dead);
    let log = session.log.snapshot().join("\n");
    assert!(log.starts_with("earlier output"), "{log}");
    assert!(log.contains("ended while the gateway was down (spark-submit exit status 137)"), "{log}");
    // One that was being stopped (a DELETE, a timeout) ends killed, as the stop would have.
    let stopping = SessionRecord { id: 5, state: SessionState::ShuttingDown, ..record.clone() };
    std::fs::create_dir_all(dir.path().join("sessions/5")).unwrap();
    let stored5 = Stored { id: 5, version: 3, meta: Default::default(), bytes: record::encode(&stopping) };
    let session = m.restore(&stored5, &[]).await.unwrap();
    assert_eq!(session.state(), SessionState::Killed, "{:?}", session.log.snapshot());
    // A damaged record is refused with a reason that quotes nothing of it.
    let damaged = Stored { bytes: b"{\"id\":4,\"owner\":\"x".to_vec(), ..stored };
    let err = m.restore(&damaged, &[]).await.unwrap_err();
    assert!(err.contains("cut short"), "{err}");
}

#[tokio::test]
async fn a_recovered_session_whose_driver_does_not_dial_back_in_time_ends_dead_and_its_launch_is_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_in(dir.path(), &["rpc.reconnect_window=\"1s\"", "sessions.shutdown_grace=\"1s\""]);
    let mut stand_in = std::process::Command::new("sleep");
    std::os::unix::process::CommandExt::process_group(&mut stand_in, 0);
    let mut stand_in = stand_in.arg("60").spawn().unwrap();
    let record = SessionRecord {
        process: Some(crate::engine::launch::ProcessIdentity::of(stand_in.id() as i32).unwrap()),
        ..live_record(9)
    };
    std::fs::create_dir_all(dir.path().join("sessions/9")).unwrap();
    let stored = Stored { id: 9, version: 1, meta: Default::default(), bytes: record::encode(&record) };
    let m = build(cfg, None, "127.0.0.1");
    let session = m.restore(&stored, &[]).await.unwrap();
    assert_eq!(session.state(), SessionState::Recovering);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    m.check_timeouts().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while session.state() != SessionState::Dead {
        assert!(tokio::time::Instant::now() < deadline, "{}", session.state());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = session.log.snapshot().join("\n");
    assert!(log.contains("not re-established within 1s"), "{log}");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(stand_in.wait().unwrap().signal(), Some(15), "its launch is stopped");
}

#[tokio::test]
async fn an_unreadable_record_is_skipped_and_what_ran_of_its_launch_is_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Arc::new(config_in(dir.path(), &[]));
    let batch_dir = dir.path().join("batches/1");
    std::fs::create_dir_all(&batch_dir).unwrap();
    // A launch of batch 1 (its command line names the launch's properties file).
    let mut launch = std::process::Command::new("sh");
    std::os::unix::process::CommandExt::process_group(&mut launch, 0);
    let mut launch =
        launch.args(["-c", "sleep 600 & wait"]).arg(batch_dir.join("spark-launch.properties")).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // Its state reads, the rest does not (an owner that is not a string).
    let damaged = br#"{"id":1,"owner":5,"state":"running"}"#.to_vec();
    let found = crate::engine::recovery::Found {
        sessions: Vec::new(),
        batches: vec![Stored { id: 1, version: 2, meta: Default::default(), bytes: damaged }],
    };
    assert!(found.spares(crate::acl::ResourceKind::Batch, 1), "spared until it is found unreadable");
    let audit = crate::audit::AuditLog::open(&dir.path().join("audit/audit.log"), 1 << 20).unwrap();
    let m = build((*cfg).clone(), None, "127.0.0.1");
    let store = Arc::new(AnyStore::Memory(Box::new(crate::store::memory::MemoryStore::ephemeral())));
    let batches = crate::engine::batch::BatchManager::new(
        cfg.clone(),
        None,
        store,
        audit.clone(),
        crate::rpc::SecretKey::generate(),
    );
    let summary = crate::engine::recovery::restore(found, &m, &batches, &audit).await;
    assert_eq!(summary.unreadable, 1);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(launch.wait().unwrap().signal(), Some(9), "nothing could manage it: it is stopped");
    assert!(batches.get("1").is_err());
    audit.flush().unwrap();
    let trail = std::fs::read_to_string(dir.path().join("audit/audit.log")).unwrap();
    assert!(trail.contains("record_unreadable") && trail.contains("batch:1"), "{trail}");
}

fn queued(id: u32, user: &str, user_launches: usize) -> Queued {
    Queued { id, user: user.into(), user_launches }
}

/// Drains `waiting` as the launch queue would with one launch slot that frees at once.
fn launch_order(mut waiting: Vec<Queued>) -> Vec<u32> {
    let (mut served, mut turn, mut order) = (HashMap::new(), 0, Vec::new());
    while let Some(at) = next_launch(&waiting, &HashMap::new(), &served) {
        let q = waiting.remove(at);
        turn += 1;
        served.insert(q.user.clone(), turn);
        order.push(q.id);
    }
    order
}

#[test]
fn queued_launches_are_fifo_per_user_and_take_turns_across_users() {
    // alice queued three before bob's and carol's one each: they do not wait behind all of hers.
    let waiting = vec![
        queued(1, "alice", 2),
        queued(2, "alice", 2),
        queued(3, "alice", 2),
        queued(4, "bob", 2),
        queued(5, "alice", 2),
        queued(6, "carol", 2),
    ];
    assert_eq!(launch_order(waiting), vec![1, 4, 6, 2, 3, 5]);
    assert_eq!(launch_order(vec![queued(7, "bob", 1), queued(8, "bob", 1)]), vec![7, 8], "one user: FIFO");
}

#[test]
fn a_user_at_their_launch_quota_waits_and_others_go_first() {
    let waiting = vec![queued(1, "alice", 1), queued(2, "bob", 3), queued(3, "bob", 3)];
    let starting = HashMap::from([("alice", 1)]);
    let served = HashMap::new();
    assert_eq!(next_launch(&waiting, &starting, &served), Some(1), "alice has one starting: bob's first");
    let starting = HashMap::from([("alice", 1), ("bob", 1)]);
    assert_eq!(next_launch(&waiting, &starting, &served), Some(1), "bob is under his quota of 3");
    let starting = HashMap::from([("alice", 1), ("bob", 3)]);
    assert_eq!(next_launch(&waiting, &starting, &served), None, "both at their quota");
    // Fewer starting wins over the turn order.
    let starting = HashMap::from([("bob", 2)]);
    let served = HashMap::from([("alice".to_string(), 9)]);
    assert_eq!(next_launch(&[queued(1, "alice", 1), queued(2, "bob", 3)], &starting, &served), Some(0));
}

#[tokio::test]
async fn sessions_beyond_the_launch_cap_wait_not_started_and_start_in_turn() {
    // A FAKE spark-submit that never brings up a driver: its session stays `starting`.
    let dir = tempfile::tempdir().unwrap();
    let submit = fake_command(dir.path(), "spark-submit", "exec sleep 60");
    let cfg = config_in(dir.path(), &["sessions.max_concurrent_launches=1", "sessions.max_sessions=3"]);
    let m = build(cfg, Some(SparkEnv::for_test(dir.path(), &submit)), "127.0.0.1");
    m.start_background();
    let quota = Quota { max_sessions: Some(3), max_concurrent_launches: Some(1), explicit: true, ..Quota::default() };
    let first = m.create(as_user("alice"), quota, 0).await.unwrap();
    let second = m.create(as_user("alice"), quota, 0).await.unwrap();
    let bobs = m.create(as_user("bob"), quota, 0).await.unwrap();
    assert_eq!(first.state(), SessionState::Starting);
    assert_eq!((second.state(), bobs.state()), (SessionState::NotStarted, SessionState::NotStarted));
    // Statements wait in a queued session as in a starting one.
    second.submit("1+1".into(), CodeKind::PySpark).unwrap();
    // Beyond max_sessions it is refused, not queued.
    let refused = m.create(as_user("carol"), quota, 0).await.unwrap_err();
    assert!(matches!(refused, EngineError::TooManyLive { limit: 3, .. }), "{refused}");
    // The launch ends: bob's turn comes before alice's second (she was served last).
    m.delete(&first, "alice").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while bobs.state() != SessionState::Starting {
        assert!(
            Instant::now() < deadline,
            "bob's session did not start when the slot freed: {:?} {:?} {:?} {:?}",
            first.state(),
            second.state(),
            bobs.state(),
            bobs.log.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(second.state(), SessionState::NotStarted);
    // A queued session can be deleted; the next launch then skips it.
    m.delete(&second, "alice").await;
    assert_eq!(second.state(), SessionState::Killed);
    assert!(second.process().is_none(), "never launched");
    m.delete(&bobs, "bob").await;
    for s in [&first, &bobs] {
        let pgid = s.process().unwrap().pgid;
        assert!(!std::path::Path::new(&format!("/proc/{pgid}")).exists(), "the launch of {} is gone", s.id);
    }
}

#[tokio::test]
async fn a_session_queued_when_the_gateway_stopped_waits_again_and_starts() {
    let dir = tempfile::tempdir().unwrap();
    let submit = fake_command(dir.path(), "spark-submit", "exec sleep 60");
    let cfg = config_in(dir.path(), &[]);
    std::fs::create_dir_all(dir.path().join("data/sessions/6")).unwrap();
    let record = SessionRecord { id: 6, state: SessionState::NotStarted, process: None, ..live_record(6) };
    let stored = Stored { id: 6, version: 1, meta: Default::default(), bytes: record::encode(&record) };
    let m = build(cfg, Some(SparkEnv::for_test(dir.path(), &submit)), "127.0.0.1");
    let session = m.restore(&stored, &[]).await.unwrap();
    assert_eq!(session.state(), SessionState::Starting, "{:?}", session.log.snapshot());
    assert!(session.log.snapshot().join("\n").contains("waits for a launch slot again"));
    let pgid = session.process().unwrap().pgid;
    m.delete(&session, "alice").await;
    assert!(!std::path::Path::new(&format!("/proc/{pgid}")).exists());
}

/// The test spec, created by and acting as `user`.
fn as_user(user: &str) -> SessionSpec {
    SessionSpec { owner: user.into(), effective_user: user.into(), ..spec() }
}

/// Brings session `s` up as if its driver connected and reported idle (the receiver keeps
/// the fake link open).
fn bring_up(s: &Session, conn: u64) -> mpsc::UnboundedReceiver<ToDriver> {
    let (tx, rx) = mpsc::unbounded_channel();
    s.attach(DriverLink::for_test(conn, tx));
    s.on_driver_message(conn, FromDriver::State { state: "idle".into(), message: None });
    rx
}

/// Waits (bounded) until `check` holds.
async fn until(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A manager whose FAKE spark-submit never brings up a driver (tests bring drivers up by
/// hand), with warm drivers on, its background tasks running.
fn warm_manager(dir: &std::path::Path, overrides: &[&str]) -> Arc<SessionManager> {
    let submit = fake_command(dir, "spark-submit", "exec sleep 600");
    let mut all = vec!["sessions.shutdown_grace=\"1s\"", "sessions.check_interval=\"100ms\""];
    all.extend(overrides);
    let m = build(config_in(dir, &all), Some(SparkEnv::for_test(dir, &submit)), "127.0.0.1");
    m.start_background();
    m
}

#[tokio::test]
async fn warm_drivers_are_started_for_the_class_asked_for_hidden_and_handed_only_to_that_class() {
    let dir = tempfile::tempdir().unwrap();
    let m = warm_manager(
        dir.path(),
        &["sessions.warm.max_drivers=1", "sessions.max_concurrent_launches=1", "sessions.max_sessions=8"],
    );
    let quota = Quota::default();
    let first = m.create(as_user("alice"), quota, 1).await.unwrap();
    assert_eq!(first.state(), SessionState::Starting);
    // While a request's launch is coming up no warm one starts (the cap is 1).
    settle().await;
    assert!(m.warm_drivers().is_empty());
    let _first_link = bring_up(&first, 1);
    until("a warm driver of alice's class starts", || m.warm_drivers().len() == 1).await;
    let warm = m.warm_drivers().remove(0);
    assert_eq!(warm.state(), SessionState::Starting);
    assert_eq!(warm.spec().submit, first.spec().submit, "launched exactly as her session");
    // Nobody sees it: not listed, not found by id.
    assert!(m.list().iter().all(|s| s.id != warm.id));
    assert!(matches!(m.get(&warm.id.to_string()), Err(EngineError::SessionNotFound(_))));
    // A warm launch never takes a request's slot: bob's session starts at once.
    let bobs = m.create(as_user("bob"), quota, 0).await.unwrap();
    assert_eq!(bobs.state(), SessionState::Starting);
    let _warm_link = bring_up(&warm, 2);
    // Another user with the same body, and alice with a name, are not of its class.
    let bobs_again = m.create(as_user("bob"), quota, 0).await.unwrap();
    assert_ne!(bobs_again.id, warm.id);
    let named = SessionSpec {
        submit: crate::engine::SubmitSpec { name: Some("report".into()), ..Default::default() },
        ..as_user("alice")
    };
    assert_ne!(m.create(named, quota, 1).await.unwrap().id, warm.id);
    assert_eq!(warm.warm(), Warm::Ready);
    // Alice's next request of the class gets it, idle, with its own terms from now on.
    let asked = SessionSpec { ttl: Some("2h".into()), heartbeat_timeout_secs: 30, ..as_user("alice") };
    let claimed = m.create(asked, quota, 1).await.unwrap();
    assert_eq!(claimed.id, warm.id);
    assert_eq!(claimed.state(), SessionState::Idle);
    assert_eq!(claimed.spec().ttl.as_deref(), Some("2h"));
    assert_eq!(claimed.limits().ttl, Some(Duration::from_secs(7200)));
    assert_eq!(claimed.limits().heartbeat_timeout, Some(Duration::from_secs(30)));
    assert!(claimed.created() > first.created());
    assert_eq!(m.get(&claimed.id.to_string()).unwrap().id, claimed.id);
    assert!(m.list().iter().any(|s| s.id == claimed.id));
    use crate::engine::registry::Entry;
    let stored: SessionRecord = record::decode(&claimed.record()).unwrap();
    assert!(!stored.warm && stored.ttl.as_deref() == Some("2h"), "the claim is what is stored");
    // It cannot be claimed twice.
    assert!(!claimed.claim(as_user("alice"), limits()));
    // The pool refills in the background, once no request waits for a launch slot.
    assert!(m.warm_drivers().is_empty());
    for s in m.list().into_iter().filter(|s| s.spec().owner == "bob" || s.spec().submit.name.is_some()) {
        m.delete(&s, "test").await;
    }
    until("the pool refills", || m.warm_drivers().iter().any(|s| s.id != warm.id)).await;
    m.shutdown_all().await;
}

#[tokio::test]
async fn a_warm_driver_yields_its_place_to_a_request_and_a_class_nobody_asks_for_is_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let m = warm_manager(
        dir.path(),
        &["sessions.warm.max_drivers=1", "sessions.max_sessions=2", "sessions.warm.idle_evict=\"3s\""],
    );
    let quota = Quota { max_sessions: Some(2), explicit: true, ..Quota::default() };
    let first = m.create(as_user("alice"), quota, 1).await.unwrap();
    let _link = bring_up(&first, 1);
    until("a warm driver starts", || m.warm_drivers().len() == 1).await;
    let warm = m.warm_drivers().remove(0);
    let pgid = warm.process().unwrap().pgid;
    // The two places are taken (alice's session and the warm driver): carol still gets one.
    let carols = m.create(as_user("carol"), quota, 0).await.unwrap();
    assert_eq!(carols.state(), SessionState::Starting);
    assert_eq!(warm.warm(), Warm::Evicted, "out of the pool at once, stopped in the background");
    until("the warm driver's processes are gone and it is forgotten", || {
        !std::path::Path::new(&format!("/proc/{pgid}")).exists() && m.sessions.entries.by_id(warm.id).is_none()
    })
    .await;
    // A full gateway has no room for a warm driver: none starts (none would be evicted).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(m.warm_drivers().is_empty());
    // With room again and alice asking again it refills; three seconds after her last request
    // it is stopped, and not started again.
    m.delete(&carols, "carol").await;
    m.delete(&first, "alice").await;
    let again = m.create(as_user("alice"), quota, 1).await.unwrap();
    let _again_link = bring_up(&again, 2);
    until("the pool refills", || m.warm_drivers().iter().any(|s| s.state() == SessionState::Starting)).await;
    let refilled = m.warm_drivers().remove(0);
    until("the idle class is evicted", || m.sessions.entries.by_id(refilled.id).is_none()).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(m.warm_drivers().is_empty(), "not asked for: not refilled");
    m.shutdown_all().await;
}

#[tokio::test]
async fn a_warm_driver_counts_against_its_users_quota_and_yields_to_their_own_request() {
    let dir = tempfile::tempdir().unwrap();
    let m = warm_manager(dir.path(), &["sessions.warm.max_drivers=4"]);
    let quota = Quota { max_sessions: Some(2), explicit: true, ..Quota::default() };
    let alice = SessionSpec { owner: "alice".into(), effective_user: "alice".into(), ..spec() };
    let first = m.create(alice.clone(), quota, 2).await.unwrap();
    let _link = bring_up(&first, 1);
    until("one warm driver starts", || m.warm_drivers().len() == 1).await;
    let warm = m.warm_drivers().remove(0);
    let _warm_link = bring_up(&warm, 2);
    // Her quota of 2 is taken (her session and her warm driver): no second warm one.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(m.warm_drivers().len(), 1);
    // A request of another class of hers is admitted: the warm driver yields.
    let other = SessionSpec { kind: SessionKind::Sql, ..alice.clone() };
    let sql = m.create(other, quota, 0).await.unwrap();
    assert_ne!(sql.id, warm.id);
    assert_eq!(warm.warm(), Warm::Evicted);
    until("the yielded warm driver is stopped and forgotten", || m.sessions.entries.by_id(warm.id).is_none()).await;
    // Beyond her quota without a warm driver in the way: refused as before.
    let refused = m.create(alice.clone(), quota, 0).await.unwrap_err();
    assert!(matches!(refused, EngineError::UserQuota { .. }), "{refused}");
    // Her quota lowered while a warm driver of hers is up: a request of its class does not
    // get it (it would be over the new quota), and the driver is not stopped for nothing.
    m.delete(&sql, "alice").await;
    let _first_link = bring_up(&first, 3);
    until("a warm driver starts again", || m.warm_drivers().iter().any(|s| s.warm() == Warm::Ready)).await;
    let again = m.warm_drivers().into_iter().find(|s| s.warm() == Warm::Ready).unwrap();
    let lowered = Quota { max_sessions: Some(1), explicit: true, ..Quota::default() };
    let refused = m.create(alice, lowered, 0).await.unwrap_err();
    assert!(matches!(refused, EngineError::UserQuota { .. }), "{refused}");
    assert_eq!(again.warm(), Warm::Ready, "not claimed, not stopped");
    m.shutdown_all().await;
}

#[tokio::test]
async fn a_warm_driver_taken_back_after_a_restart_stays_hidden_and_one_never_launched_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let m = warm_manager(dir.path(), &["sessions.warm.max_drivers=2"]);
    for id in [6, 7] {
        std::fs::create_dir_all(dir.path().join(format!("data/sessions/{id}"))).unwrap();
    }
    let queued = SessionRecord { state: SessionState::NotStarted, warm: true, ..live_record(6) };
    let stored = Stored { id: 6, version: 1, meta: Default::default(), bytes: record::encode(&queued) };
    let never = m.restore(&stored, &[]).await.unwrap();
    assert_eq!(never.state(), SessionState::Killed, "not queued as a request would be");
    assert!(never.process().is_none());
    let live = SessionRecord { warm: true, ..live_record(7) };
    let stored = Stored { id: 7, version: 1, meta: Default::default(), bytes: record::encode(&live) };
    let back = m.restore(&stored, &[]).await.unwrap();
    assert_eq!(back.warm(), Warm::Ready);
    assert!(m.list().is_empty(), "neither is anyone's session");
    assert!(matches!(m.get("7"), Err(EngineError::SessionNotFound(_))));
    until("the warm drivers that cannot come back are forgotten", || m.all().is_empty()).await;
    m.shutdown_all().await;
}

/// Whether process `pid` is stopped (SIGSTOP).
fn stopped(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
}

#[tokio::test]
async fn a_warm_driver_coming_up_pauses_while_a_requests_driver_starts_and_goes_on_when_claimed() {
    let dir = tempfile::tempdir().unwrap();
    let m = warm_manager(dir.path(), &["sessions.warm.max_drivers=1", "sessions.max_concurrent_launches=4"]);
    let quota = Quota::default();
    let first = m.create(as_user("alice"), quota, 1).await.unwrap();
    let _link = bring_up(&first, 1);
    until("a warm driver starts", || m.warm_drivers().len() == 1).await;
    let warm = m.warm_drivers().remove(0);
    let pgid = warm.process().unwrap().pgid;
    assert!(!stopped(pgid));
    // Bob's driver starts: the warm one waits.
    let bobs = m.create(as_user("bob"), quota, 0).await.unwrap();
    until("the warm driver is paused", || stopped(pgid)).await;
    // Bob's is up: the warm one goes on.
    let _bobs_link = bring_up(&bobs, 2);
    until("the warm driver goes on", || !stopped(pgid)).await;
    // Paused again for carol's, but never longer than MAX_PAUSE at a time: it goes on while
    // hers is still starting, and is left to run as long again.
    let carols = m.create(as_user("carol"), quota, 0).await.unwrap();
    until("the warm driver is paused again", || stopped(pgid)).await;
    let paused_at = Instant::now();
    until("the warm driver goes on after the longest pause", || !stopped(pgid)).await;
    assert!(paused_at.elapsed() >= MAX_PAUSE - Duration::from_millis(500));
    assert_eq!(carols.state(), SessionState::Starting);
    tokio::time::sleep(MAX_PAUSE / 2).await;
    assert!(!stopped(pgid), "not paused again at once");
    // Dave's starts after that: paused again, then claimed by alice while paused: hers goes
    // on at once.
    let _carols_link = bring_up(&carols, 3);
    until("the warm driver runs", || !stopped(pgid)).await;
    tokio::time::sleep(MAX_PAUSE).await;
    let _daves = m.create(as_user("dave"), quota, 0).await.unwrap();
    until("the warm driver is paused for dave's", || stopped(pgid)).await;
    let claimed = m.create(as_user("alice"), quota, 1).await.unwrap();
    assert_eq!(claimed.id, warm.id);
    assert!(!stopped(pgid), "a claimed driver is a request's: it runs");
    m.shutdown_all().await;
    assert!(!std::path::Path::new(&format!("/proc/{pgid}")).exists());
}
