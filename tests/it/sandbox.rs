//! The sandbox of local-mode drivers, from real statements in real sessions (real bwrap, real
//! Spark): user code can neither read nor change the gateway's TLS key, JWT key, policies,
//! audit trail or another session's uploads, and Spark, pyspark, Scala, SQL, uploads and
//! add-file work as before. Also: root is refused unless allowed, and a sandbox that would show
//! the gateway's files stops the start-up.

use crate::support::{gateway, repo_root, shared_session, TestGateway};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn text(st: &Value) -> &str {
    st["output"]["data"]["text/plain"].as_str().unwrap_or_else(|| panic!("no text/plain in {st}"))
}

fn digest(path: &Path) -> Vec<u8> {
    Sha256::digest(std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).to_vec()
}

/// A `shared` session of its own (the attacker, and the place where things must still work).
async fn own_session(gw: &TestGateway, name: &str) -> u64 {
    let (status, body) = gw.post("/sessions", json!({"kind": "shared", "name": name})).await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_u64().unwrap();
    gw.wait_state(id, &["idle"], Duration::from_secs(240)).await;
    id
}

async fn upload(gw: &TestGateway, id: u64, route: &str, field: &str, name: &str, bytes: &[u8]) {
    let part = reqwest::multipart::Part::bytes(bytes.to_vec()).file_name(name.to_string());
    let form = reqwest::multipart::Form::new().part(field.to_string(), part);
    let r = gw.client().post(gw.url(&format!("/sessions/{id}/{route}"))).multipart(form).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
}

/// For each path: what reading it gave (`read <n> bytes` or the error), and what appending to
/// it gave (`appended` or the error). Run as a statement in the session under test.
const PROBE: &str = r#"
import json
def probe(paths):
    out = {}
    for p in paths:
        try:
            with open(p, 'rb') as f:
                r = 'read %d bytes' % len(f.read())
        except Exception as e:
            r = type(e).__name__
        try:
            with open(p, 'ab') as f:
                f.write(b'\n# written by user code\n')
            w = 'appended'
        except Exception as e:
            w = type(e).__name__
        out[p] = [r, w]
    return out
"#;

#[tokio::test]
async fn user_code_can_neither_read_nor_change_the_gateways_files_or_other_sessions() {
    let gw = gateway();
    let victim = shared_session().await;
    upload(gw, victim, "upload-file", "file", "victim-secret.txt", b"another user's data").await;
    let id = own_session(gw, "sandbox-attacker").await;
    let session_dir = gw.data_dir.join(format!("sessions/{id}"));

    let targets: Vec<(&str, PathBuf)> = vec![
        ("the TLS key", gw.data_dir.join("tls/server-key.pem")),
        ("the JWT signing key", gw.data_dir.join("jwt/dev-private.pem")),
        ("a policy file", gw.policy_dir.join("acl.toml")),
        ("the audit trail", gw.data_dir.join("audit/audit.log")),
        ("another session's upload", gw.data_dir.join(format!("sessions/{victim}/uploads/victim-secret.txt"))),
        ("another session's Spark properties", gw.data_dir.join(format!("sessions/{victim}/spark-launch.properties"))),
        ("its own driver program", session_dir.join("sparkgate_driver.py")),
        ("its own log", session_dir.join("session.log")),
    ];
    // The files are really there, so a failure inside the sandbox is the sandbox's doing.
    gw.audit.flush().unwrap();
    let before: Vec<Vec<u8>> = targets.iter().map(|(_, p)| digest(p)).collect();
    let mut paths: Vec<String> = targets.iter().map(|(_, p)| p.display().to_string()).collect();
    // The gateway's own files through its /proc entry: the sandbox has a PID namespace of its own.
    let through_proc = format!("/proc/{}/root{}", std::process::id(), targets[0].1.display());
    paths.push(through_proc.clone());
    let st = gw.run(id, "pyspark", &format!("{PROBE}\nprint(json.dumps(probe({})))", json!(paths))).await;
    let seen: Value = serde_json::from_str(text(&st)).unwrap_or_else(|e| panic!("{e}: {st}"));
    for (what, path) in &targets[..6] {
        let [read, write] = [&seen[path.display().to_string()][0], &seen[path.display().to_string()][1]];
        assert!(!read.as_str().unwrap().starts_with("read"), "user code read {what}: {seen:#}");
        assert_ne!(write, "appended", "user code changed {what}: {seen:#}");
    }
    // Its own driver program and log are readable (the driver runs the one), never writable.
    for (what, path) in &targets[6..] {
        let [read, write] = [&seen[path.display().to_string()][0], &seen[path.display().to_string()][1]];
        assert!(read.as_str().unwrap().starts_with("read"), "{what}: {seen:#}");
        assert!(write == "OSError" || write == "PermissionError", "{what} is read-only: {seen:#}");
    }
    assert!(!seen[&through_proc][0].as_str().unwrap().starts_with("read"), "{seen:#}");
    // And from outside: every file is as it was (the gateway itself appends to the audit trail
    // and the session's log, so those are searched for what user code would have appended).
    for ((what, path), before) in targets.iter().zip(&before) {
        if *what == "the audit trail" || *what == "its own log" {
            let text = std::fs::read_to_string(path).unwrap();
            assert!(!text.contains("# written by user code"), "user code appended to {what}");
        } else {
            assert_eq!(&digest(path), before, "{what} changed");
        }
    }

    // A new policy file (hot-reloaded: the writer would become superuser) cannot be planted.
    let planted = gw.policy_dir.join("zz-planted.toml");
    let code = format!(
        "try:\n    open({:?}, 'w').write('[superusers]\\nusers = [\"anonymous\"]\\n')\n    print('planted')\n\
         except Exception as e:\n    print(type(e).__name__)",
        planted.display().to_string()
    );
    let st = gw.run(id, "pyspark", &code).await;
    assert_ne!(text(&st), "planted");
    assert!(!planted.exists());
    // Nothing of the data directory but this session's own is there to list.
    let st = gw
        .run(
            id,
            "pyspark",
            &format!("import os\nprint(sorted(os.listdir({:?})))", gw.data_dir.join("sessions").display().to_string()),
        )
        .await;
    assert_eq!(text(&st), format!("['{id}']"));
    gw.delete(&format!("/sessions/{id}")).await;
}

#[tokio::test]
async fn spark_pyspark_scala_sql_uploads_and_added_files_work_in_the_sandbox() {
    let gw = gateway();
    let id = own_session(gw, "sandbox-works").await;
    let dir = gw.data_dir.join(format!("sessions/{id}"));

    // A Spark job with Python workers, which live in the driver's sandbox (its PID 1 is bwrap).
    let st = gw.run(id, "pyspark", "sc.parallelize(range(100), 4).map(lambda x: x * 2).sum()").await;
    assert_eq!(text(&st), "9900");
    let st = gw
        .run(
            id,
            "pyspark",
            "sc.parallelize([0], 1).map(lambda _: __import__('os').path.basename(open('/proc/1/cmdline').read().split('\\0')[0])).collect()",
        )
        .await;
    assert_eq!(text(&st), "['bwrap']", "executors run in the session's sandbox");
    // Local drivers share the host's loopback: each requires its own secret on its Spark ports,
    // so another session's code cannot fetch this one's blocks.
    let st = gw.run(id, "pyspark", "sc.getConf().get('spark.authenticate')").await;
    assert_eq!(text(&st), "'true'");
    // Scala, with a closure whose class the REPL writes to its (writable) class directory.
    let st = gw.run(id, "spark", "sc.parallelize(1 to 4, 2).map(x => x * 3).reduce(_ + _)").await;
    assert!(text(&st).contains("30"), "{st}");
    let st = gw.run(id, "sql", "select 1 + 1 as two").await;
    assert_eq!(st["output"]["data"]["application/json"]["data"], json!([[2]]), "{st}");
    // An uploaded module, imported on the driver and in a Spark job.
    upload(gw, id, "upload-pyfile", "file", "sandboxed_helpers.py", b"def quad(x):\n    return 4 * x\n").await;
    let st = gw
        .run(id, "pyspark", "import sandboxed_helpers\nsc.parallelize([1, 2], 2).map(sandboxed_helpers.quad).collect()")
        .await;
    assert_eq!(text(&st), "[4, 8]");
    // A file added from the allowed directory, read through SparkFiles.
    let data = gw.jobs_dir.join("sandbox-lookup.txt");
    std::fs::write(&data, "seen in the sandbox").unwrap();
    let (status, body) = gw.post(&format!("/sessions/{id}/add-file"), json!({"uri": data.display().to_string()})).await;
    assert_eq!(status, 200, "{body}");
    let st = gw
        .run(id, "pyspark", "from pyspark import SparkFiles\nopen(SparkFiles.get('sandbox-lookup.txt')).read()")
        .await;
    assert_eq!(text(&st), "'seen in the sandbox'");
    // HOME and the working directory are the session's work/ directory, where files land.
    let st = gw
        .run(id, "pyspark", "import os\nopen('note.txt', 'w').write('kept')\nprint(os.environ['HOME'] == os.getcwd())")
        .await;
    assert_eq!(text(&st), "True");
    assert_eq!(std::fs::read_to_string(dir.join("work/note.txt")).unwrap(), "kept");
    // The driver program is the session's own copy, read-only; no shared one exists.
    use std::os::unix::fs::PermissionsExt;
    let program = dir.join("sparkgate_driver.py");
    assert_eq!(std::fs::metadata(&program).unwrap().permissions().mode() & 0o777, 0o400);
    assert_eq!(std::fs::read_to_string(&program).unwrap(), sparkgate::driver::DRIVER_SOURCE);
    assert!(!gw.data_dir.join("driver").exists());
    let (status, _) = gw.delete(&format!("/sessions/{id}")).await;
    assert_eq!(status, 200);
}

/// The harness's overrides for a gateway started directly (not through TestGateway).
fn direct_config(dir: &Path, extra: &[String]) -> sparkgate::config::ValidatedConfig {
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    let mut overrides = vec![
        "server.bind=\"127.0.0.1:0\"".to_string(),
        format!("server.data_dir=\"{}\"", dir.join("data").display()),
        format!("acl.policy_dir=\"{}\"", dir.join("policies").display()),
        format!("spark.venv=\"{}\"", repo_root().join(".venv").display()),
        "auth.dangerous_allow_anonymous=true".into(),
    ];
    overrides.extend(extra.iter().cloned());
    sparkgate::config::load(&sparkgate::config::Sources { file: None, env: vec![], overrides }).unwrap()
}

#[tokio::test]
async fn the_gateway_refuses_root_unless_dangerously_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let no_spark = || sparkgate::StartOptions { discover_spark: false };
    let refused = sparkgate::Gateway::start(direct_config(dir.path(), &[]), no_spark()).await;
    if nix::unistd::geteuid().is_root() {
        let err = refused.unwrap_err().to_string();
        assert!(err.contains("refuses to run as root") && err.contains("server.dangerous_run_as_root"), "{err}");
        let allowed = ["server.dangerous_run_as_root=true".to_string()];
        let gw = sparkgate::Gateway::start(direct_config(dir.path(), &allowed), no_spark()).await.unwrap();
        gw.shutdown().await;
    } else {
        refused.unwrap().shutdown().await;
    }
}

#[tokio::test]
async fn a_sandbox_that_would_show_the_gateways_files_stops_the_start_up() {
    let dir = tempfile::tempdir().unwrap();
    // The allowed directory holds the data directory (the keys, the audit trail, sessions).
    let extra = [
        format!("spark.allowed_local_dirs=[\"{}\"]", dir.path().display()),
        format!("server.dangerous_run_as_root={}", nix::unistd::geteuid().is_root()),
    ];
    let err = sparkgate::Gateway::start(direct_config(dir.path(), &extra), sparkgate::StartOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("spark.allowed_local_dirs") && err.contains("server.data_dir"), "{err}");
}
