//! A real Spark standalone cluster for tests: one Master and N Workers (1 core, 1g each) on
//! loopback, started from the venv's pyspark with `spark-class`, each in its own process group,
//! all their state (conf, logs, pids, work dirs) in one temporary directory. Dropping it kills
//! everything it started: daemons, the executors the workers launched, and the executors'
//! Python workers (`pyspark.daemon` moves itself into a new process group, so those are found by
//! the cluster directory in their environment instead).
//!
//! Also builds a tiny Java Spark job (`sparkgate.test.CountJob`) from source with the JDK, so
//! batch tests have a jar without downloading anything.

use serde_json::Value;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::time::Instant;

/// How long the Master, and then all Workers, may take to come up (JVM start on a loaded
/// 2-core machine is usually 3–7 s).
const START_LIMIT: Duration = Duration::from_secs(120);
/// How long dropping a cluster waits for its processes to disappear.
const STOP_LIMIT: Duration = Duration::from_secs(15);

/// A running standalone cluster; see the module documentation.
pub struct SparkCluster {
    /// `spark://127.0.0.1:<port>`, as the Master reports it.
    pub master_url: String,
    /// `http://127.0.0.1:<port>`: the Master's web UI (its JSON status is at `/json/`).
    pub web_ui: String,
    /// The cluster's directory: `conf/` (empty, so no stray spark-defaults apply), `logs/`
    /// (each daemon's output), `work/` (workers' work dir: `<app-id>/<executor-id>/stderr`).
    pub dir: PathBuf,
    /// Worker web UIs, `http://127.0.0.1:<port>`, in start order.
    pub worker_uis: Vec<String>,
    daemons: Vec<Daemon>,
    _tmp: tempfile::TempDir,
}

impl std::fmt::Debug for SparkCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SparkCluster")
            .field("master_url", &self.master_url)
            .field("web_ui", &self.web_ui)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// A Master or Worker JVM: `spark-class` execs java, so the child is the JVM and its pid is
/// the process group id.
struct Daemon {
    name: String,
    log: PathBuf,
    child: Child,
}

/// A live process that belongs to a cluster.
#[derive(Clone)]
pub struct ClusterProcess {
    pub pid: i32,
    pub pgid: i32,
    /// `/proc/<pid>/cwd` (executors run in `work/<app-id>/<executor-id>`).
    pub cwd: PathBuf,
    /// The command line, arguments joined by spaces.
    pub cmdline: String,
}

impl ClusterProcess {
    /// `Master`, `Worker`, `Executor` (CoarseGrainedExecutorBackend), `Python` (pyspark
    /// daemon/worker) or `other`.
    pub fn role(&self) -> &'static str {
        if self.cmdline.contains("org.apache.spark.deploy.master.Master") {
            "Master"
        } else if self.cmdline.contains("org.apache.spark.deploy.worker.Worker") {
            "Worker"
        } else if self.cmdline.contains("CoarseGrainedExecutorBackend") {
            "Executor"
        } else if self.cmdline.contains("pyspark.daemon") || self.cmdline.contains("pyspark.worker") {
            "Python"
        } else {
            "other"
        }
    }
}

// The command line holds a classpath and a dozen JVM options: print what identifies the process.
impl std::fmt::Debug for ClusterProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} (pgid {}, cwd {})", self.role(), self.pid, self.pgid, self.cwd.display())
    }
}

/// The pyspark package inside the repository's `.venv` (which holds the whole Spark
/// distribution: `bin/spark-class`, `bin/spark-submit`, `jars/`).
pub fn spark_home() -> PathBuf {
    let lib = crate::support::repo_root().join(".venv").join("lib");
    let found = std::fs::read_dir(&lib).ok().and_then(|entries| {
        entries
            .flatten()
            .map(|e| e.path().join("site-packages").join("pyspark"))
            .find(|p| p.join("bin").join("spark-class").exists())
    });
    found.unwrap_or_else(|| panic!("no pyspark under {} — run scripts/setup.sh", lib.display()))
}

/// The venv's Python (what drivers and executors run PySpark with).
pub fn venv_python() -> PathBuf {
    crate::support::repo_root().join(".venv").join("bin").join("python")
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port()
}

/// The environment for Spark programs started by tests: an allow-list plus loopback and the
/// given state directory, nothing else inherited (so a developer's SPARK_CONF_DIR or
/// HADOOP_CONF_DIR cannot change what the tests see). `dir/conf` is created empty.
pub fn spark_env(dir: &Path) -> Vec<(String, String)> {
    let conf = dir.join("conf");
    std::fs::create_dir_all(&conf).unwrap();
    let mut env = vec![
        ("SPARK_HOME".to_string(), spark_home().display().to_string()),
        ("PATH".to_string(), std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into())),
        ("HOME".to_string(), std::env::var("HOME").unwrap_or_else(|_| dir.display().to_string())),
        ("SPARK_LOCAL_IP".to_string(), "127.0.0.1".to_string()),
        ("SPARK_CONF_DIR".to_string(), conf.display().to_string()),
        ("SPARK_LOG_DIR".to_string(), dir.join("logs").display().to_string()),
        ("SPARK_PID_DIR".to_string(), dir.join("pids").display().to_string()),
        ("SPARK_WORKER_DIR".to_string(), dir.join("work").display().to_string()),
        ("PYSPARK_PYTHON".to_string(), venv_python().display().to_string()),
        // Master and Worker need little heap; the default is 1g each.
        ("SPARK_DAEMON_MEMORY".to_string(), "256m".to_string()),
    ];
    if let Ok(java_home) = std::env::var("JAVA_HOME") {
        env.push(("JAVA_HOME".to_string(), java_home));
    }
    env
}

impl SparkCluster {
    /// Starts a Master, waits until it is ALIVE, then starts `workers` Workers (1 core, 1g
    /// each) and waits until the Master lists them all ALIVE. Panics with the daemons' log
    /// tails if that takes longer than two minutes or a daemon exits.
    pub fn start(workers: usize) -> SparkCluster {
        let tmp = tempfile::Builder::new().prefix("sparkgate-cluster-").tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        for sub in ["logs", "pids", "work"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let ui_port = free_port();
        let mut cluster = SparkCluster {
            master_url: String::new(),
            web_ui: format!("http://127.0.0.1:{ui_port}"),
            dir,
            worker_uis: Vec::new(),
            daemons: Vec::new(),
            _tmp: tmp,
        };
        // From here on a panic drops `cluster`, which kills whatever was started.
        let port = free_port().to_string();
        let ui_port = ui_port.to_string();
        cluster.spawn(
            "master",
            "org.apache.spark.deploy.master.Master",
            &["--host", "127.0.0.1", "--port", &port, "--webui-port", &ui_port],
        );
        let status = cluster.wait_status("the Master to be ALIVE", START_LIMIT, |s| s["status"] == "ALIVE");
        // The Master's own word, in case Spark moved to another port.
        cluster.master_url = status["url"].as_str().unwrap_or_default().to_string();
        assert!(cluster.master_url.starts_with("spark://127.0.0.1:"), "master status: {status:#}");

        let work = cluster.dir.join("work").display().to_string();
        for n in 1..=workers {
            let (port, ui_port) = (free_port().to_string(), free_port().to_string());
            let master_url = cluster.master_url.clone();
            #[rustfmt::skip]
            let args = [
                "--host", "127.0.0.1", "--port", &port, "--webui-port", &ui_port,
                "--cores", "1", "--memory", "1g", "--work-dir", &work, &master_url,
            ];
            cluster.spawn(&format!("worker-{n}"), "org.apache.spark.deploy.worker.Worker", &args);
            cluster.worker_uis.push(format!("http://127.0.0.1:{ui_port}"));
        }
        cluster.wait_status(&format!("{workers} ALIVE workers"), START_LIMIT, |s| alive_workers(s) >= workers);
        cluster
    }

    fn spawn(&mut self, name: &str, class: &str, args: &[&str]) {
        let log = self.dir.join("logs").join(format!("{name}.out"));
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let spark_class = spark_home().join("bin").join("spark-class");
        let child = Command::new(&spark_class)
            .arg(class)
            .args(args)
            .env_clear()
            .envs(spark_env(&self.dir))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", spark_class.display()));
        self.daemons.push(Daemon { name: name.to_string(), log, child });
    }

    /// The Master's JSON status (`/json/`), or None if it does not answer (yet).
    pub fn try_status(&self) -> Option<Value> {
        let port = self.web_ui.rsplit(':').next()?.parse().ok()?;
        serde_json::from_str(&http_get(port, "/json/")?).ok()
    }

    /// The Master's JSON status; panics with the logs if it does not answer.
    pub fn status(&self) -> Value {
        self.try_status()
            .unwrap_or_else(|| panic!("the Master does not answer at {}\n{}", self.web_ui, self.log_tails()))
    }

    /// Polls the Master's status until `ready` holds and returns that status; panics with the
    /// last status and every log tail after `limit` or as soon as a daemon has exited.
    pub fn wait_status(&self, what: &str, limit: Duration, ready: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let status = self.try_status();
            if let Some(s) = status.as_ref().filter(|s| ready(s)) {
                return s.clone();
            }
            if let Some(name) = self.exited_daemon() {
                panic!("waiting for {what}: {name} exited\n{}", self.log_tails());
            }
            if Instant::now() > deadline {
                let last = status.map(|s| format!("{s:#}")).unwrap_or_else(|| "no answer".into());
                panic!("waiting for {what}: not within {limit:?}; last master status: {last}\n{}", self.log_tails());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The first daemon (Master or Worker) that is no longer running, if any.
    fn exited_daemon(&self) -> Option<String> {
        self.daemons.iter().find(|d| !process_alive(d.child.id() as i32)).map(|d| d.name.clone())
    }

    /// The last lines of every daemon's output and of every executor's stderr, for panic messages.
    pub fn log_tails(&self) -> String {
        let mut files: Vec<PathBuf> = self.daemons.iter().map(|d| d.log.clone()).collect();
        let work = self.dir.join("work");
        for app in std::fs::read_dir(&work).into_iter().flatten().flatten() {
            for executor in std::fs::read_dir(app.path()).into_iter().flatten().flatten() {
                files.push(executor.path().join("stderr"));
            }
        }
        let mut out = String::new();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(25)..].join("\n");
            out.push_str(&format!("--- {} (last 25 lines) ---\n{tail}\n", file.display()));
        }
        out
    }

    /// Live processes of this cluster: daemons, executors and their Python workers.
    pub fn processes(&self) -> Vec<ClusterProcess> {
        cluster_processes(&self.dir)
    }
}

/// Workers the Master lists as ALIVE.
pub fn alive_workers(status: &Value) -> usize {
    status["workers"].as_array().map_or(0, |w| w.iter().filter(|w| w["state"] == "ALIVE").count())
}

/// Live (non-zombie) processes that belong to the cluster whose directory is `dir`: its path
/// is in their command line (the conf dir is on every JVM's classpath), working directory or
/// environment (everything a daemon starts inherits SPARK_LOG_DIR). Works after the directory
/// is deleted, so a test can check that a dropped cluster left nothing behind.
pub fn cluster_processes(dir: &Path) -> Vec<ClusterProcess> {
    // With the separator, /tmp/x never matches /tmp/xy.
    let needle = format!("{}/", dir.display());
    let me = std::process::id() as i32;
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        if pid == me {
            continue;
        }
        let path = entry.path();
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else { continue };
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() < 3 || matches!(fields[0], "Z" | "X") {
            continue;
        }
        let cmdline = std::fs::read(path.join("cmdline")).unwrap_or_default();
        let environ = std::fs::read(path.join("environ")).unwrap_or_default();
        let cwd = std::fs::read_link(path.join("cwd")).unwrap_or_default();
        let ours = contains(&cmdline, needle.as_bytes())
            || contains(&environ, needle.as_bytes())
            || format!("{}/", cwd.display()).starts_with(&needle);
        if ours {
            found.push(ClusterProcess {
                pid,
                pgid: fields[2].parse().unwrap_or(0),
                cwd,
                cmdline: String::from_utf8_lossy(&cmdline).replace('\0', " ").trim_end().to_string(),
            });
        }
    }
    found
}

/// Whether `pid` exists and is not a zombie (a daemon that died but was not reaped yet).
fn process_alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, None | Some("Z" | "X"))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

impl Drop for SparkCluster {
    fn drop(&mut self) {
        use nix::sys::signal::{kill, killpg, Signal};
        use nix::unistd::{getpgid, Pid};
        // Each daemon's group holds the JVM and everything it launched (executors included).
        for daemon in &self.daemons {
            let _ = killpg(Pid::from_raw(daemon.child.id() as i32), Signal::SIGKILL);
        }
        for daemon in &mut self.daemons {
            let _ = daemon.child.wait();
        }
        // Python workers of executors live in groups of their own; they carry our directory.
        let own_group = getpgid(None).map(Pid::as_raw).unwrap_or(0);
        let deadline = Instant::now() + STOP_LIMIT;
        loop {
            let left = cluster_processes(&self.dir);
            if left.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                // No panic in drop (it may run while unwinding); the tests check with `ps`.
                eprintln!("SparkCluster: processes left after {STOP_LIMIT:?}: {left:?}");
                return;
            }
            for p in &left {
                if p.pgid > 1 && p.pgid != own_group {
                    let _ = killpg(Pid::from_raw(p.pgid), Signal::SIGKILL);
                } else {
                    let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A plain-HTTP GET to 127.0.0.1 (HTTP/1.0, so the body is neither chunked nor kept alive);
/// the body if the status is 200.
fn http_get(port: u16, path: &str) -> Option<String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    (head.split_whitespace().nth(1) == Some("200")).then(|| body.to_string())
}

/// The test job's source. `CountJob N [EXIT]` counts N elements in a parallelize, prints
/// `COUNT=N` and exits with EXIT; `CountJob sleep [SECONDS]` starts Spark, prints `SLEEPING`
/// and sleeps (an hour by default) so tests can kill it.
const COUNT_JOB: &str = r#"package sparkgate.test;

import java.util.ArrayList;
import java.util.List;
import org.apache.spark.api.java.JavaSparkContext;
import org.apache.spark.sql.SparkSession;

public final class CountJob {
    public static void main(String[] args) throws Exception {
        SparkSession spark = SparkSession.builder().appName("sparkgate-count-job").getOrCreate();
        JavaSparkContext sc = JavaSparkContext.fromSparkContext(spark.sparkContext());
        if (args.length > 0 && args[0].equals("sleep")) {
            long seconds = args.length > 1 ? Long.parseLong(args[1]) : 3600;
            System.out.println("SLEEPING");
            System.out.flush();
            Thread.sleep(seconds * 1000);
            spark.stop();
            return;
        }
        int n = args.length > 0 ? Integer.parseInt(args[0]) : 10;
        int exitCode = args.length > 1 ? Integer.parseInt(args[1]) : 0;
        List<Integer> items = new ArrayList<>();
        for (int i = 0; i < n; i++) {
            items.add(i);
        }
        long count = sc.parallelize(items, 2).count();
        System.out.println("COUNT=" + count);
        System.out.flush();
        spark.stop();
        if (exitCode != 0) {
            System.exit(exitCode);
        }
    }
}
"#;

/// Writes `sparkgate.test.CountJob` (see [`COUNT_JOB`]) into `dir`, compiles it with `javac`
/// against Spark's jars and packages it with `jar`; returns `dir/sparkgate-test-job.jar`.
pub fn build_test_jar(dir: &Path) -> PathBuf {
    javac_jar(dir, "sparkgate-test-job.jar", &[("sparkgate/test/CountJob.java", COUNT_JOB)], &[])
}

/// Writes `sources` (path under the source root, code) into `dir`, compiles them with `javac`
/// against Spark's jars and `classpath`, and packages them as `dir/<name>`.
pub fn javac_jar(dir: &Path, name: &str, sources: &[(&str, &str)], classpath: &[PathBuf]) -> PathBuf {
    let src = dir.join("src");
    let classes = dir.join(format!("classes-{name}"));
    std::fs::create_dir_all(&classes).unwrap();
    let mut files = Vec::new();
    for (path, code) in sources {
        let file = src.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, code).unwrap();
        files.push(file);
    }
    // javac expands the `dir/*` classpath wildcard itself; no shell is involved.
    let mut entries = vec![format!("{}/*", spark_home().join("jars").display())];
    entries.extend(classpath.iter().map(|p| p.display().to_string()));
    let mut javac = Command::new("javac");
    javac.args(["--release", "17", "-nowarn", "-cp", &entries.join(":"), "-d"]).arg(&classes).args(&files);
    run_tool(javac);
    let jar_path = dir.join(name);
    let mut jar = Command::new("jar");
    jar.arg("cf").arg(&jar_path).arg("-C").arg(&classes).arg(".");
    run_tool(jar);
    jar_path
}

/// Runs a JDK tool (or `java`) and returns its standard output; panics with its output when it
/// fails.
pub fn run_tool(mut cmd: Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (javac and jar come with openjdk-17-jdk-headless)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}:\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
