//! Recovery with the real binary: a `sparkgate` process killed with SIGKILL (or stopped with
//! SIGTERM) and started again on the same data directory loses no session, statement or batch,
//! and leaves no process behind.

use crate::support::{base_overrides, https_client, repo_root, request};
use serde_json::{json, Value};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::Duration;

const POLICY: &str = "[create]\nusers = [\"anonymous\", \"alice\", \"bob\"]\n[admin]\nusers = [\"ops\"]\n\
                      [quotas]\nusers.alice = { max_concurrent_launches = 10 }\n";

/// One data directory, and the gateway process running on it now.
pub struct Restartable {
    dir: tempfile::TempDir,
    overrides: Vec<String>,
    child: Option<std::process::Child>,
    base: String,
    ca_pem: Vec<u8>,
    starts: usize,
    /// The token `get` and `post` send (None: anonymous).
    user: Option<String>,
}

impl Restartable {
    pub fn new(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (data, policies, jobs) = (dir.path().join("data"), dir.path().join("policies"), dir.path().join("jobs"));
        std::fs::create_dir_all(&policies).unwrap();
        std::fs::create_dir_all(&jobs).unwrap();
        std::fs::write(policies.join("acl.toml"), POLICY).unwrap();
        let mut overrides = base_overrides(&data, &policies, &jobs);
        overrides.push("auth.dangerous_allow_anonymous=true".into());
        overrides.push("auth.methods=[\"jwt\"]".into());
        overrides.extend(extra.iter().map(|s| s.to_string()));
        Self { dir, overrides, child: None, base: String::new(), ca_pem: Vec::new(), starts: 0, user: None }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn jobs(&self) -> PathBuf {
        self.dir.path().join("jobs")
    }

    /// Starts the binary and waits until it listens.
    pub fn start(&mut self) {
        assert!(self.child.is_none());
        self.starts += 1;
        let log = std::fs::File::create(self.dir.path().join(format!("gateway-{}.log", self.starts))).unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sparkgate"));
        for o in &self.overrides {
            cmd.arg("--set").arg(o);
        }
        cmd.arg("serve").current_dir(repo_root()).stdout(std::process::Stdio::piped()).stderr(log);
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let mut copy = std::fs::File::create(self.dir.path().join(format!("gateway-{}.out", self.starts))).unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                use std::io::Write;
                let _ = writeln!(copy, "{line}");
                let _ = tx.send(line);
            }
        });
        let mut base = None;
        while base.is_none() {
            let line = rx.recv_timeout(Duration::from_secs(120)).unwrap_or_else(|_| {
                let log = std::fs::read_to_string(self.dir.path().join(format!("gateway-{}.log", self.starts)));
                panic!("the gateway did not start: {log:?}")
            });
            base = line.strip_prefix("sparkgate listening on ").map(str::to_string);
        }
        self.base = base.unwrap();
        self.ca_pem = std::fs::read(self.data().join("tls/dev-ca.pem")).unwrap();
        self.child = Some(child);
    }

    /// SIGKILLs every process of the launch in `relative` (`batches/3`) of the data directory.
    /// The supervisor first: it records nothing, as when a host restart takes it.
    pub fn kill_launch_processes(&self, relative: &str) {
        let mut pids = processes_naming(&self.data().join(relative));
        let supervises = |pid: &i32| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("supervise"))
        };
        pids.sort_by_key(|pid| !supervises(pid));
        for pid in pids {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }

    pub fn kill9(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }

    fn terminate(&mut self) {
        let mut child = self.child.take().unwrap();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM)
            .unwrap();
        let status = child.wait().unwrap();
        assert!(status.success(), "{status:?}");
    }

    fn token(&self, user: &str) -> String {
        let cfg = sparkgate::config::load(&sparkgate::config::Sources {
            file: None,
            env: vec![],
            overrides: self.overrides.clone(),
        })
        .unwrap();
        sparkgate::auth::jwt::mint_dev_token(&cfg, user, &[], Duration::from_secs(3600)).unwrap()
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let (status, _, body) =
            request(&https_client(&self.ca_pem), method, &format!("{}{path}", self.base), token, body).await;
        (status, body)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, self.user.as_deref(), None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, self.user.as_deref(), Some(body)).await
    }

    /// Polls `path` until `field` is one of `states`.
    pub async fn wait_for(&self, path: &str, field: &str, states: &[&str], limit: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let (code, body) = self.get(path).await;
            if code == 200 && body[field].as_str().is_some_and(|s| states.contains(&s)) {
                return body;
            }
            if tokio::time::Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.path().join(format!("gateway-{}.log", self.starts)));
                let out = std::fs::read_to_string(self.dir.path().join(format!("gateway-{}.out", self.starts)));
                panic!("{path} did not reach {states:?}: {code} {body}\ngateway log: {log:?}\n{out:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until batch `id`'s log has a line `marker` (a program that prints as it starts).
    async fn wait_log(&self, id: u64, marker: &str, token: Option<&str>) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let (_, log) = self.call(reqwest::Method::GET, &format!("/batches/{id}/log?size=-1"), token, None).await;
            if log["log"].as_array().is_some_and(|l| l.iter().any(|line| line == marker)) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "batch {id} never printed {marker}: {log}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A page of the Spark UI proxy: status and text (polled until 200 or `limit`: the UI's
    /// port is learned, and checked, a moment after the driver connects).
    async fn ui_page(&self, path: &str, limit: Duration) -> (u16, String) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let r = https_client(&self.ca_pem).get(format!("{}{path}", self.base)).send().await.unwrap();
            let status = r.status().as_u16();
            let text = r.text().await.unwrap_or_default();
            if status == 200 || tokio::time::Instant::now() > deadline {
                return (status, text);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn session_log(&self, id: u64) -> String {
        let (_, log) = self.get(&format!("/sessions/{id}/log?size=-1")).await;
        log["log"]
            .as_array()
            .map(|l| l.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }
}

impl Drop for Restartable {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for pid in processes_naming(&self.data()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            all.extend(walk(&path));
        } else {
            all.push(path);
        }
    }
    all
}

/// Live processes whose command line names a file under `dir` (drivers, supervisors, batches).
fn processes_naming(dir: &Path) -> Vec<i32> {
    let needle = dir.display().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        if stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            found.push(pid);
        }
    }
    found
}

/// Waits (bounded) until no process names `dir`; returns those left.
async fn none_left(dir: &Path) -> Vec<i32> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = processes_naming(dir);
        if left.is_empty() || tokio::time::Instant::now() > deadline {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn text_of(statement: &Value) -> String {
    statement["output"]["data"]["text/plain"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn a_session_loses_nothing_when_the_gateway_is_killed_and_restarted() {
    let mut gw = Restartable::new(&[]);
    gw.start();
    let (status, body) = gw.post("/sessions", json!({"kind": "pyspark"})).await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_u64().unwrap();
    let session = format!("/sessions/{id}");
    gw.wait_for(&session, "state", &["idle"], Duration::from_secs(240)).await;
    let (_, first) = gw.post(&format!("{session}/statements"), json!({"code": "x = 6\nx"})).await;
    let first = gw
        .wait_for(&format!("{session}/statements/{}", first["id"]), "state", &["available"], Duration::from_secs(120))
        .await;
    assert_eq!(text_of(&first), "6");

    let ui = format!("{session}/sparkui/jobs/");
    let (status, page) = gw.ui_page(&ui, Duration::from_secs(60)).await;
    assert!(status == 200 && page.contains("Spark Jobs"), "{status} {page}");

    // Round 1: killed while a statement runs and another waits.
    let (_, slow) = gw.post(&format!("{session}/statements"), json!({"code": "import time; time.sleep(8); 6*7"})).await;
    let (status, queued) = gw.post(&format!("{session}/statements"), json!({"code": "x * 7"})).await;
    assert_eq!(status, 201, "{queued}");
    gw.wait_for(&format!("{session}/statements/{}", slow["id"]), "state", &["running"], Duration::from_secs(60)).await;
    gw.kill9();
    gw.start();
    let (status, body) = gw.get(&session).await;
    assert_eq!(status, 200, "{body}");
    assert!(["recovering", "idle", "busy"].contains(&body["state"].as_str().unwrap()), "{body}");
    let slow = gw
        .wait_for(&format!("{session}/statements/{}", slow["id"]), "state", &["available"], Duration::from_secs(120))
        .await;
    assert_eq!(text_of(&slow), "42", "{slow}");
    let queued = gw
        .wait_for(&format!("{session}/statements/{}", queued["id"]), "state", &["available"], Duration::from_secs(120))
        .await;
    assert_eq!(text_of(&queued), "42", "the statement queued before the kill ran after it: {queued}");
    let (_, again) = gw.get(&format!("{session}/statements/{}", first["id"])).await;
    assert_eq!(again, first, "earlier statements are kept as they were");
    // The restarted gateway signs what the running UI accepts (its key is derived, not kept).
    let (status, page) = gw.ui_page(&ui, Duration::from_secs(60)).await;
    assert!(status == 200 && page.contains("Spark Jobs"), "the Spark UI after the restart: {status} {page}");

    // Rounds 2 and 3: killed mid-statement again, then while idle; ids go on.
    let (_, round2) =
        gw.post(&format!("{session}/statements"), json!({"code": "time.sleep(4); 'round' + str(2)"})).await;
    gw.wait_for(&format!("{session}/statements/{}", round2["id"]), "state", &["running"], Duration::from_secs(60))
        .await;
    gw.kill9();
    gw.start();
    let round2 = gw
        .wait_for(&format!("{session}/statements/{}", round2["id"]), "state", &["available"], Duration::from_secs(120))
        .await;
    assert_eq!(text_of(&round2), "'round2'", "{round2}");
    gw.wait_for(&session, "state", &["idle"], Duration::from_secs(60)).await;
    gw.kill9();
    gw.start();
    let (status, next) = gw.post(&format!("{session}/statements"), json!({"code": "x + 1"})).await;
    assert_eq!(status, 201, "{next}");
    assert_eq!(next["id"].as_u64(), Some(round2["id"].as_u64().unwrap() + 1), "statement ids continue");
    let next = gw
        .wait_for(&format!("{session}/statements/{}", next["id"]), "state", &["available"], Duration::from_secs(120))
        .await;
    assert_eq!(text_of(&next), "7");
    let (_, all) = gw.get(&format!("{session}/statements")).await;
    assert_eq!(all["total_statements"].as_u64(), Some(5), "{all}");

    // The store holds no session secret: the one the driver proves is derived, not kept.
    let key = sparkgate::rpc::SecretKey::load_or_create(&gw.data().join("keys/session-secrets.key")).unwrap();
    let db = gw.data().join("state/store.db");
    let conn = rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let record: Vec<u8> = conn
        .query_row("SELECT bytes FROM records WHERE id = ?1 AND kind = 'session'", [id as i64], |r| r.get(0))
        .unwrap();
    drop(conn);
    let record: Value = serde_json::from_slice(&record).unwrap();
    let nonce: [u8; sparkgate::rpc::secret_key::NONCE_LEN] =
        hex::decode(record["secretNonce"].as_str().unwrap()).unwrap().try_into().unwrap();
    let secret = key.derive(id as u32, &nonce).to_hex();
    for file in walk(&gw.data().join("state")) {
        let bytes = std::fs::read(&file).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains(&secret), "{} holds the session's secret", file.display());
        let raw = hex::decode(&secret).unwrap();
        assert!(!bytes.windows(raw.len()).any(|w| w == raw), "{} holds the raw secret", file.display());
    }

    // A driver killed while the gateway is down: the session ends dead, saying why.
    gw.kill9();
    let session_dir = gw.data().join(format!("sessions/{id}"));
    for pid in processes_naming(&session_dir) {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        // The supervisor stays to record how spark-submit ended, as after an OOM kill.
        if !String::from_utf8_lossy(&cmdline).contains("supervise") {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
    gw.start();
    gw.wait_for(&session, "state", &["dead"], Duration::from_secs(60)).await;
    let log = gw.session_log(id).await;
    assert!(log.contains("ended while the gateway was down") || log.contains("exited unexpectedly"), "{log}");
    let left = none_left(&session_dir).await;
    assert!(left.is_empty(), "processes left: {left:?}");
    let (status, _) = gw.call(reqwest::Method::DELETE, &session, None, None).await;
    assert_eq!(status, 200);
    gw.kill9();
    assert!(none_left(&gw.data()).await.is_empty());
}

/// Writes a Python batch program into the jobs directory.
fn job(gw: &Restartable, name: &str, code: &str) -> String {
    let path = gw.jobs().join(name);
    std::fs::write(&path, code).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn batches_run_on_across_a_kill_and_a_stop_and_their_logs_stay_their_own() {
    let mut gw = Restartable::new(&[]);
    gw.start();
    let (alice, bob) = (gw.token("alice"), gw.token("bob"));
    gw.user = Some(alice.clone());
    let ok = job(&gw, "ok.py", "import time\nprint('alice-output', flush=True)\ntime.sleep(12)\nprint('alice-done')\n");
    let fails =
        job(&gw, "fails.py", "import sys, time\nprint('fails-started', flush=True)\ntime.sleep(4)\nsys.exit(3)\n");
    let long = job(&gw, "long.py", "import time\nprint('long-started', flush=True)\ntime.sleep(600)\n");
    let mut ids = Vec::new();
    for file in [&ok, &fails, &long] {
        let (status, body) =
            gw.call(reqwest::Method::POST, "/batches", Some(&alice), Some(json!({"file": file}))).await;
        assert_eq!(status, 201, "{body}");
        ids.push(body["id"].as_u64().unwrap());
    }
    for (id, marker) in ids.iter().zip(["alice-output", "fails-started", "long-started"]) {
        gw.wait_log(*id, marker, Some(&alice)).await;
    }
    gw.kill9();
    // Meanwhile one batch fails: its supervisor records how.
    tokio::time::sleep(Duration::from_secs(6)).await;
    gw.start();
    let done =
        gw.wait_for(&format!("/batches/{}", ids[0]), "state", &["success", "dead"], Duration::from_secs(120)).await;
    assert_eq!(done["state"], "success", "{done}");
    let failed =
        gw.wait_for(&format!("/batches/{}", ids[1]), "state", &["success", "dead"], Duration::from_secs(60)).await;
    assert_eq!(failed["state"], "dead", "{failed}");
    let (_, log) = gw.get(&format!("/batches/{}/log?size=-1", ids[1])).await;
    let log = log.to_string();
    assert!(log.contains("exited with 3") && log.contains("ended while the gateway was down"), "{log}");

    // A graceful stop with recovery leaves a batch running; deleted after the restart, it is
    // killed and nothing of it is left.
    gw.terminate();
    let long_dir = gw.data().join(format!("batches/{}", ids[2]));
    assert!(!processes_naming(&long_dir).is_empty(), "SIGTERM with recovery leaves the batch running");
    gw.start();
    let (_, running) = gw.get(&format!("/batches/{}", ids[2])).await;
    assert!(["starting", "running"].contains(&running["state"].as_str().unwrap()), "{running}");
    let (status, _) = gw.call(reqwest::Method::DELETE, &format!("/batches/{}", ids[2]), Some(&alice), None).await;
    assert_eq!(status, 200);
    let left = none_left(&long_dir).await;
    assert!(left.is_empty(), "processes left: {left:?}");

    // Another user after the restart: ids go on, and each log holds only its own output.
    let bobs = job(&gw, "bob.py", "print('bob-output')\n");
    let (status, body) = gw.call(reqwest::Method::POST, "/batches", Some(&bob), Some(json!({"file": bobs}))).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["id"].as_u64(), Some(ids[2] + 1), "batch ids continue: {body}");
    let bob_id = body["id"].as_u64().unwrap();
    gw.user = Some(bob.clone());
    let done =
        gw.wait_for(&format!("/batches/{bob_id}"), "state", &["success", "dead"], Duration::from_secs(120)).await;
    assert_eq!(done["state"], "success", "{done}");
    let (_, alices) =
        gw.call(reqwest::Method::GET, &format!("/batches/{}/log?size=-1", ids[0]), Some(&alice), None).await;
    let (_, bobs) = gw.call(reqwest::Method::GET, &format!("/batches/{bob_id}/log?size=-1"), Some(&bob), None).await;
    let (alices, bobs) = (alices.to_string(), bobs.to_string());
    assert!(
        alices.contains("alice-output") && alices.contains("alice-done") && !alices.contains("bob-output"),
        "{alices}"
    );
    assert!(bobs.contains("bob-output") && !bobs.contains("alice-output"), "{bobs}");
    let (status, _) = gw.call(reqwest::Method::GET, &format!("/batches/{}/log", ids[0]), Some(&bob), None).await;
    assert_eq!(status, 404, "bob does not see alice's batch after the restart either");
    gw.kill9();
    assert!(none_left(&gw.data()).await.is_empty());
}

#[tokio::test]
async fn without_recovery_a_stop_stops_everything_and_a_start_forgets_it() {
    let mut gw = Restartable::new(&["recovery.enabled=false"]);
    gw.start();
    let long = job(&gw, "long.py", "import time\nprint('started', flush=True)\ntime.sleep(600)\n");
    let (status, body) = gw.post("/batches", json!({"file": long})).await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_u64().unwrap();
    gw.wait_log(id, "started", None).await;
    gw.terminate();
    assert!(none_left(&gw.data()).await.is_empty(), "a stop without recovery stops the batch");
    gw.start();
    let (status, _) = gw.get(&format!("/batches/{id}")).await;
    assert_eq!(status, 404, "its record is forgotten");
    let (status, body) = gw.post("/batches", json!({"file": long})).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["id"].as_u64(), Some(id + 1), "ids still never repeat: {body}");
    gw.kill9();
    // Killed, then started again without recovery: what the killed run left is stopped.
    gw.start();
    assert!(none_left(&gw.data().join("batches")).await.is_empty(), "an earlier run's batch is stopped at start-up");

    // The store keeps the audit chain's head: a trail that lost its newest records says so.
    tokio::time::sleep(Duration::from_millis(2500)).await; // the head is kept every second
    gw.kill9();
    let trail = gw.data().join("audit/audit.log");
    let text = std::fs::read_to_string(&trail).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    std::fs::write(&trail, lines[..lines.len() - 2].join("\n") + "\n").unwrap();
    gw.start();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&trail).unwrap();
        if let Some(line) = text.lines().find(|l| l.contains("audit_trail_truncated")) {
            let expected = format!("the trail ends at seq {}", lines.len() - 3);
            assert!(line.contains(&expected) && line.contains("error"), "{line}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no audit_trail_truncated in {text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    gw.kill9();
}

/// The warm drivers `/metrics` counts in `state`.
async fn warm_drivers(gw: &Restartable, state: &str) -> usize {
    let url = format!("{}/metrics", gw.base);
    let r = https_client(&gw.ca_pem).get(url).bearer_auth(gw.token("ops")).send().await.unwrap();
    let text = r.text().await.unwrap();
    let prefix = format!("sparkgate_warm_drivers{{state=\"{state}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|n| n.trim().parse().ok()).unwrap_or(0)
}

async fn wait_warm(gw: &Restartable, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while warm_drivers(gw, "idle").await != 1 {
        if tokio::time::Instant::now() > deadline {
            let log = std::fs::read_to_string(gw.dir.path().join(format!("gateway-{}.log", gw.starts)));
            let logs: Vec<String> = walk(&gw.data().join("sessions"))
                .into_iter()
                .filter(|p| p.ends_with("session.log"))
                .map(|p| format!("{}:\n{}", p.display(), std::fs::read_to_string(&p).unwrap_or_default()))
                .collect();
            panic!("no warm driver came up\ngateway log: {log:?}\n{}", logs.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_warm_driver_outlives_a_kill_of_the_gateway_and_is_handed_out_after_the_restart() {
    let mut gw = Restartable::new(&["sessions.warm.max_drivers=1", "sessions.warm.others=1"]);
    gw.start();
    let (status, body) = gw.post("/sessions", json!({"kind": "pyspark"})).await;
    assert_eq!(status, 201, "{body}");
    let cold = format!("/sessions/{}", body["id"]);
    gw.wait_for(&cold, "state", &["idle"], Duration::from_secs(240)).await;
    wait_warm(&gw, Duration::from_secs(240)).await;
    // Killed with the user's own session live too: both are taken back (the warm driver is
    // not mistaken for one nobody asked for while the other is being restored).
    gw.kill9();
    gw.start();
    // Taken back, hidden as before, and up again once its driver dialled back.
    wait_warm(&gw, Duration::from_secs(120)).await;
    gw.wait_for(&cold, "state", &["idle"], Duration::from_secs(120)).await;
    let (_, listed) = gw.get("/sessions").await;
    assert_eq!(listed["total"], 1, "only the user's own session: {listed}");
    let (status, claimed) = gw.post("/sessions", json!({"kind": "pyspark"})).await;
    assert_eq!(status, 201, "{claimed}");
    assert_eq!(claimed["state"], "idle", "{claimed}");
    let session = format!("/sessions/{}", claimed["id"]);
    let (_, st) = gw.post(&format!("{session}/statements"), json!({"code": "1 + 1"})).await;
    let st = gw
        .wait_for(&format!("{session}/statements/{}", st["id"]), "state", &["available"], Duration::from_secs(60))
        .await;
    assert_eq!(text_of(&st), "2");
    for path in [&session, &cold] {
        let (status, _) = gw.call(reqwest::Method::DELETE, path, None, None).await;
        assert_eq!(status, 200);
    }
    // No driver was refused on the way (a warm driver stopped or taken back dials in with its
    // own secret or not at all).
    let trail = std::fs::read_to_string(gw.data().join("audit/audit.log")).unwrap_or_default();
    assert!(!trail.contains("rpc_auth_failed"), "a driver was refused: {trail}");
}
