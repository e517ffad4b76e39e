//! Test harness: gateways started on 127.0.0.1:0 in their own runtime threads (so tests with
//! their own runtimes can share them), HTTPS clients trusting the generated dev CA, and
//! helpers to wait for Spark sessions.

use serde_json::Value;
use sparkgate::config::{self, Sources};
use sparkgate::engine::SessionManager;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// A gateway running in a background thread for the whole test run.
pub struct TestGateway {
    pub base: String,
    pub ca_pem: Vec<u8>,
    pub rpc_addr: std::net::SocketAddr,
    pub rpc_ca_pem: String,
    pub manager: Arc<SessionManager>,
    pub audit: Arc<sparkgate::audit::AuditLog>,
    pub batches: Arc<sparkgate::engine::batch::BatchManager>,
    pub data_dir: PathBuf,
    pub policy_dir: PathBuf,
    pub jobs_dir: PathBuf,
    pub config: sparkgate::config::ValidatedConfig,
    _dir: tempfile::TempDir,
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

impl TestGateway {
    /// Starts a gateway with real Spark and `overrides` (section.key=value) on top of the test
    /// defaults, in the development anonymous mode with a policy that lets `anonymous` work.
    pub fn start(overrides: &[&str]) -> TestGateway {
        let mut all = vec!["auth.dangerous_allow_anonymous=true"];
        all.extend_from_slice(overrides);
        Self::start_with_policy(&all, ANONYMOUS_POLICY)
    }

    /// Starts a gateway with the given policy file (policies/acl.toml) and overrides.
    pub fn start_with_policy(overrides: &[&str], policy: &str) -> TestGateway {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let policy_dir = dir.path().join("policies");
        std::fs::create_dir_all(&policy_dir).unwrap();
        std::fs::write(policy_dir.join("acl.toml"), policy).unwrap();
        // The only local directory users may name in file/jars/pyFiles/files/archives.
        let jobs_dir = dir.path().join("jobs");
        std::fs::create_dir_all(&jobs_dir).unwrap();
        let mut all = base_overrides(&data_dir, &policy_dir, &jobs_dir);
        all.extend(overrides.iter().map(|s| s.to_string()));
        let cfg = config::load(&Sources { file: None, env: vec![], overrides: all }).unwrap();
        let config = cfg.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let gw = sparkgate::Gateway::start(cfg, sparkgate::StartOptions::default()).await;
                let gw = match gw {
                    Ok(gw) => gw,
                    Err(e) => {
                        tx.send(Err(e.to_string())).unwrap();
                        return;
                    }
                };
                tx.send(Ok((
                    gw.addr,
                    gw.dev_ca.clone(),
                    gw.rpc_addr,
                    gw.rpc_ca_pem.clone(),
                    gw.manager.clone(),
                    gw.audit.clone(),
                    gw.batches.clone(),
                )))
                .unwrap();
                // Serve until the test process exits; then stop every session's processes.
                std::future::pending::<()>().await;
            });
        });
        let (addr, ca, rpc_addr, rpc_ca_pem, manager, audit, batches) = rx.recv().unwrap().expect("gateway start");
        TestGateway {
            base: format!("https://127.0.0.1:{}", addr.port()),
            ca_pem: ca.map(|c| std::fs::read(c).unwrap()).unwrap_or_default(),
            rpc_addr,
            rpc_ca_pem,
            manager,
            audit,
            batches,
            data_dir,
            policy_dir,
            jobs_dir,
            config,
            _dir: dir,
        }
    }

    /// A development JWT for `user` signed by this gateway's generated key.
    pub fn token(&self, user: &str, groups: &[&str]) -> String {
        let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        sparkgate::auth::jwt::mint_dev_token(&self.config, user, &groups, Duration::from_secs(3600)).unwrap()
    }

    /// A request with an optional bearer token; returns status, headers and JSON body.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        request(&self.client(), method, &self.url(path), token, body).await
    }

    pub fn client(&self) -> reqwest::Client {
        https_client(&self.ca_pem)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.client().get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self.client().post(self.url(path)).json(&body).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        let r = self
            .client()
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let r = self.client().delete(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Polls a session until its state is one of `states`, or panics with its log after `limit`.
    pub async fn wait_state(&self, id: u64, states: &[&str], limit: Duration) -> String {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let (code, body) = self.get(&format!("/sessions/{id}/state")).await;
            if code == 200 {
                let state = body["state"].as_str().unwrap().to_string();
                if states.contains(&state.as_str()) {
                    return state;
                }
            }
            if tokio::time::Instant::now() > deadline {
                let (_, log) = self.get(&format!("/sessions/{id}/log?size=-1")).await;
                panic!("session {id} did not reach {states:?} (last {code} {body}); log: {log:#}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Runs a statement and waits for its final form.
    pub async fn run(&self, session: u64, kind: &str, code: &str) -> Value {
        let (status, st) = self
            .post(&format!("/sessions/{session}/statements"), serde_json::json!({"kind": kind, "code": code}))
            .await;
        assert_eq!(status, 201, "{st}");
        self.wait_statement(session, st["id"].as_u64().unwrap(), Duration::from_secs(180)).await
    }

    pub async fn wait_statement(&self, session: u64, sid: u64, limit: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let (_, st) = self.get(&format!("/sessions/{session}/statements/{sid}")).await;
            if matches!(st["state"].as_str(), Some("available" | "cancelled")) {
                return st;
            }
            assert!(tokio::time::Instant::now() < deadline, "statement {session}/{sid} did not finish: {st}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// An HTTPS client that trusts only `ca_pem`.
pub fn https_client(ca_pem: &[u8]) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem).unwrap())
        .tls_built_in_root_certs(false)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// A request to `url` with an optional bearer token; returns status, headers and JSON body.
pub async fn request(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = client.request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.json().await.unwrap_or(Value::Null))
}

/// The configuration every test gateway starts from (section.key=value), over `data_dir`,
/// policies from `policy_dir` and local files allowed from `jobs_dir`.
pub fn base_overrides(
    data_dir: &std::path::Path,
    policy_dir: &std::path::Path,
    jobs_dir: &std::path::Path,
) -> Vec<String> {
    let venv = repo_root().join(".venv");
    let mut all: Vec<String> = vec![
        "server.bind=\"127.0.0.1:0\"".into(),
        format!("server.data_dir=\"{}\"", data_dir.display()),
        format!("acl.policy_dir=\"{}\"", policy_dir.display()),
        "acl.reload_interval=\"200ms\"".into(),
        format!("spark.allowed_local_dirs=[\"{}\"]", jobs_dir.display()),
        format!("spark.venv=\"{}\"", venv.display()),
        // Built by scripts/setup.sh (scripts/build-livy-api.sh).
        format!("spark.job_api_jar=\"{}\"", repo_root().join("java/build/sparkgate-livy-api.jar").display()),
        "spark.conf.\"spark.driver.memory\"=\"768m\"".into(),
        "spark.conf.\"spark.sql.shuffle.partitions\"=\"2\"".into(),
        "spark.conf.\"spark.ui.showConsoleProgress\"=\"false\"".into(),
        // Defaults, not rules: tests (and pylivy) set their own.
        "spark.overridable_conf=[\"spark.driver.memory\", \"spark.sql.shuffle.partitions\"]".into(),
        "sessions.check_interval=\"200ms\"".into(),
        "sessions.shutdown_grace=\"3s\"".into(),
        // A completion may have to start the Scala REPL; on a loaded 2-core CI machine that
        // has taken over 30 s (the default), and tests must not fail because a machine is slow.
        "sessions.completion_timeout=\"240s\"".into(),
        "rpc.handshake_timeout=\"3s\"".into(),
        // The gateway runs inside this test program, not as `sparkgate`: launches run under
        // the binary's supervisor.
        format!("spark.supervisor=\"{}\"", env!("CARGO_BIN_EXE_sparkgate")),
        // A test program that ends leaves its gateways' drivers redialling: not for long.
        "rpc.reconnect_window=\"60s\"".into(),
    ];
    // The tests run as root here and in CI; the gateway refuses root unless told.
    if nix::unistd::geteuid().is_root() {
        all.push("server.dangerous_run_as_root=true".into());
    }
    all
}

/// The policy of the anonymous test gateways: `anonymous` may create sessions (and, as their
/// owner, do everything with them), and, being every test at once, may use every slot.
pub const ANONYMOUS_POLICY: &str = "[create]\nusers = [\"anonymous\"]\n[conf]\nallow = [\"spark.test.note\"]\n\
                                    [quotas]\nusers.anonymous = { max_sessions = 1000, max_concurrent_launches = 1000 }\n";

/// The gateway most tests share.
pub fn gateway() -> &'static TestGateway {
    static GW: OnceLock<TestGateway> = OnceLock::new();
    // Small upload limits, so the tests of both stay quick: 2 MiB per upload, 3 MiB per session.
    GW.get_or_init(|| TestGateway::start(&["server.max_upload_bytes=2097152", "sessions.max_uploaded_bytes=3145728"]))
}

/// A Spark property of the shared session whose value would break a naive properties file or
/// command line.
pub const SHARED_NOTE: &str = "a=b: c\\d #x !y é 😀";

/// A `shared`-kind Spark session on the shared gateway, created once and reused by the tests
/// that only run statements in it.
pub async fn shared_session() -> u64 {
    static ID: tokio::sync::OnceCell<u64> = tokio::sync::OnceCell::const_new();
    *ID.get_or_init(|| async {
        let gw = gateway();
        let (status, body) = gw
            .post(
                "/sessions",
                serde_json::json!({"kind": "shared", "name": "shared-test", "conf": {"spark.test.note": SHARED_NOTE}}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let id = body["id"].as_u64().unwrap();
        gw.wait_state(id, &["idle"], Duration::from_secs(240)).await;
        id
    })
    .await
}

/// Pids of live (non-zombie) processes in process group `pgid`.
pub fn processes_in_group(pgid: i32) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() > 2 && f[0] != "Z" && f[2] == pgid.to_string() {
            pids.push(pid);
        }
    }
    pids
}
