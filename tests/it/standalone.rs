//! Sessions on a real Spark standalone cluster (a Master and two Workers on loopback, started
//! by the test, client deploy mode): executors run in the workers, Python and REPL-defined
//! Scala closures reach them, the application id is the cluster's, and nothing is left running
//! after the session is deleted and the cluster dropped. Also checks the test job jar that
//! batch tests submit.

use crate::cluster::{build_test_jar, cluster_processes, spark_env, spark_home, ClusterProcess, SparkCluster};
use crate::support::{processes_in_group, TestGateway};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::time::Instant;

/// A driver JVM, Python and two executors on a loaded 2-core machine.
const START: Duration = Duration::from_secs(240);

fn text(st: &Value) -> &str {
    st["output"]["data"]["text/plain"].as_str().unwrap_or_else(|| panic!("no text/plain in {st}"))
}

fn with_role<'a>(processes: &'a [ClusterProcess], role: &str) -> Vec<&'a ClusterProcess> {
    processes.iter().filter(|p| p.role() == role).collect()
}

/// Waits for `idle`; on failure the panic carries the session's log and the cluster's logs.
async fn wait_idle(gw: &TestGateway, cluster: &SparkCluster, id: u64) {
    let deadline = tokio::time::Instant::now() + START;
    loop {
        let (_, body) = gw.get(&format!("/sessions/{id}/state")).await;
        match body["state"].as_str() {
            Some("idle") => return,
            Some("starting" | "not_started") if tokio::time::Instant::now() < deadline => {}
            _ => {
                let (_, log) = gw.get(&format!("/sessions/{id}/log?size=-1")).await;
                panic!("session {id} is not idle ({body}); session log: {log:#}\n{}", cluster.log_tails());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// Executors register with the driver asynchronously after it starts; wait inside the driver
// (one statement, its own deadline) rather than polling from here.
const COUNT_EXECUTORS: &str = "import time
deadline = time.time() + 120
while sc._jsc.sc().getExecutorMemoryStatus().size() - 1 < 2 and time.time() < deadline:
    time.sleep(0.1)
sc._jsc.sc().getExecutorMemoryStatus().size() - 1";

// Where the Python tasks ran: executors' working directories.
const TASK_CWDS: &str = "sorted(set(sc.parallelize(range(4), 4).map(lambda _: __import__('os').getcwd()).collect()))";

#[tokio::test]
async fn standalone_cluster_runs_session_executors_in_the_workers_and_leaves_nothing_behind() {
    let t0 = Instant::now();
    // Both starts block this thread while they poll; nothing else runs on this test's runtime.
    let cluster = SparkCluster::start(2);
    let cluster_up = t0.elapsed();
    let master = format!("spark.master=\"{}\"", cluster.master_url);
    let gw = TestGateway::start(&[
        &master,
        // The workers listen on loopback; so does the driver. (This host's name resolves to
        // 127.0.0.1, for which Spark would otherwise pick some non-loopback interface.)
        "spark.conf.\"spark.driver.host\"=\"127.0.0.1\"",
        "spark.conf.\"spark.executor.memory\"=\"512m\"",
        "spark.conf.\"spark.cores.max\"=\"2\"",
    ]);
    let (status, body) = gw.post("/sessions", json!({"kind": "pyspark", "name": "on-standalone"})).await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_u64().unwrap();
    wait_idle(&gw, &cluster, id).await;
    let session_idle = t0.elapsed();

    // Both workers' executors registered with the driver.
    let st = gw.run(id, "pyspark", COUNT_EXECUTORS).await;
    assert_eq!(st["output"]["data"]["text/plain"], "2", "{st}\n{}", cluster.log_tails());

    // The application is the cluster's (`app-…`, not `local-…`) and the Master runs it.
    let app_id = {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, info) = gw.get(&format!("/sessions/{id}")).await;
            if let Some(app_id) = info["appId"].as_str() {
                break app_id.to_string();
            }
            assert!(Instant::now() < deadline, "no appId: {info}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    assert!(app_id.starts_with("app-"), "{app_id}");
    let status = cluster.status();
    let app = status["activeapps"].as_array().unwrap().iter().find(|a| a["id"] == app_id.as_str());
    let app = app.unwrap_or_else(|| panic!("{app_id} is not an active application of the Master: {status:#}"));
    assert_eq!(app["cores"], 2, "{app:#}");

    // The executors are processes of the workers (in their process groups), running in the
    // application's work directories.
    let processes = cluster.processes();
    let workers: Vec<i32> = with_role(&processes, "Worker").iter().map(|p| p.pid).collect();
    let executors = with_role(&processes, "Executor");
    assert_eq!(workers.len(), 2, "{processes:?}");
    assert_eq!(executors.len(), 2, "{processes:?}");
    let app_dir = cluster.dir.join("work").join(&app_id);
    for executor in &executors {
        assert!(workers.contains(&executor.pgid), "executor not started by a worker: {processes:?}");
        assert!(executor.cwd.starts_with(&app_dir), "{executor:?}");
    }

    // Python closures run in the executors' Python workers.
    let st = gw.run(id, "pyspark", "sc.parallelize(range(100), 4).map(lambda x: x * 2).sum()").await;
    assert_eq!(text(&st), "9900", "{st}");
    let st = gw.run(id, "pyspark", TASK_CWDS).await;
    let cwds: Vec<String> =
        serde_json::from_str(&text(&st).replace('\'', "\"")).unwrap_or_else(|e| panic!("{e}: {st}"));
    assert!(!cwds.is_empty() && cwds.iter().all(|c| Path::new(c).starts_with(&app_dir)), "{cwds:?}");
    // A closure defined in the Scala REPL runs there too: its classes reach the remote
    // executors over the driver's class server.
    let st = gw.run(id, "spark", "sc.parallelize(1 to 10).map(_ * 2).sum").await;
    assert_eq!(st["output"]["status"], "ok", "{st}\n{}", cluster.log_tails());
    assert!(text(&st).contains("110.0"), "{st}");
    let jobs_done = t0.elapsed();

    // Deleting the session ends its driver's process group; the Master then frees the
    // application's executors.
    let pgid = gw.manager.get(&id.to_string()).unwrap().process().unwrap().pgid;
    assert!(!processes_in_group(pgid).is_empty());
    let (status, body) = gw.delete(&format!("/sessions/{id}")).await;
    assert_eq!((status, body), (200, json!({"msg": "deleted"})));
    assert_eq!(processes_in_group(pgid), Vec::<i32>::new(), "no process of the deleted session survives");
    cluster.wait_status("the application to complete", Duration::from_secs(60), |s| {
        s["activeapps"].as_array().is_some_and(Vec::is_empty)
            && s["completedapps"].as_array().is_some_and(|a| a.iter().any(|a| a["id"] == app_id.as_str()))
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left: Vec<ClusterProcess> =
            cluster.processes().into_iter().filter(|p| matches!(p.role(), "Executor" | "Python")).collect();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "executors left after delete: {left:?}\n{}", cluster.log_tails());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Dropping the cluster leaves no Master, Worker or executor behind.
    let processes = cluster.processes();
    assert_eq!((with_role(&processes, "Master").len(), with_role(&processes, "Worker").len()), (1, 2), "{processes:?}");
    let dir = cluster.dir.clone();
    let dropped_at = Instant::now();
    drop(cluster);
    let left = cluster_processes(&dir);
    assert!(left.is_empty(), "left after drop: {left:?}");
    eprintln!(
        "standalone: cluster up {cluster_up:?}, session idle {session_idle:?}, jobs done {jobs_done:?}, \
         drop took {:?}, total {:?}",
        dropped_at.elapsed(),
        t0.elapsed()
    );
}

/// spark-submit in local mode with the test environment, in its own process group.
fn spark_submit(dir: &Path, jar: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(spark_home().join("bin").join("spark-submit"));
    cmd.args(["--master", "local[1]", "--conf", "spark.ui.enabled=false", "--class", "sparkgate.test.CountJob"])
        .arg(jar)
        .args(args)
        .env_clear()
        .envs(spark_env(dir))
        .stdin(Stdio::null())
        .process_group(0);
    cmd
}

fn kill_group(pgid: i32) {
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), nix::sys::signal::Signal::SIGKILL);
}

#[test]
fn standalone_test_jar_counts_exits_with_the_code_asked_and_sleeps_until_killed() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let jar = build_test_jar(dir.path());
    let built = t0.elapsed();
    // The three runs are independent JVMs: run them at once.
    std::thread::scope(|s| {
        s.spawn(|| {
            let out = spark_submit(dir.path(), &jar, &["5"]).output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{}: {stdout}{}", out.status, String::from_utf8_lossy(&out.stderr));
            assert!(stdout.lines().any(|l| l == "COUNT=5"), "{stdout}");
        });
        s.spawn(|| {
            let out = spark_submit(dir.path(), &jar, &["7", "3"]).output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert_eq!(out.status.code(), Some(3), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
            assert!(stdout.lines().any(|l| l == "COUNT=7"), "{stdout}");
        });
        s.spawn(|| {
            let stderr_path = dir.path().join("sleep.err");
            let stderr = std::fs::File::create(&stderr_path).unwrap();
            let mut child =
                spark_submit(dir.path(), &jar, &["sleep"]).stdout(Stdio::piped()).stderr(stderr).spawn().unwrap();
            let pgid = child.id() as i32;
            // Read stdout on a thread so the wait for SLEEPING has a deadline.
            let (tx, rx) = std::sync::mpsc::channel();
            let stdout = child.stdout.take().unwrap();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut seen = Vec::new();
            while !seen.iter().any(|l| l == "SLEEPING") {
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(line) => seen.push(line),
                    Err(e) => {
                        kill_group(pgid);
                        let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                        panic!("no SLEEPING ({e}); stdout: {seen:?}\nstderr: {stderr}");
                    }
                }
            }
            kill_group(pgid);
            let status = child.wait().unwrap();
            assert!(!status.success());
            assert_eq!(processes_in_group(pgid), Vec::<i32>::new());
        });
    });
    eprintln!("test jar: built in {built:?}, three runs done at {:?}", t0.elapsed());
}
