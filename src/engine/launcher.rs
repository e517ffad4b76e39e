//! Builds and runs `spark-submit`: an argument vector (never a shell string), an environment
//! from an allow-list, its own process group, output into a bounded tail and a log file.
//! Secrets never go on the command line.

use super::app_id::AppIdFormat;
use crate::config::SparkConfig;
use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::Command;

/// Where Spark is, as found and checked at start-up.
#[derive(Debug, Clone)]
pub struct SparkEnv {
    /// SPARK_HOME.
    pub home: PathBuf,
    /// `<home>/bin/spark-submit`.
    pub spark_submit: PathBuf,
    /// The Python drivers and workers run with.
    pub python: PathBuf,
    /// JAVA_HOME to pass, if configured.
    pub java_home: Option<PathBuf>,
    /// What `spark-submit --version` reported.
    pub version: String,
    /// `KRB5CCNAME` of the gateway's own ticket from `spark.launch_keytab`, for launches with
    /// `--proxy-user` (see [`LaunchTicket`]); None without a launch principal.
    pub launch_ccache: Option<String>,
    /// The sandbox local and client-mode drivers run in; None when they are not sandboxed
    /// (cluster deploy mode, `spark.local_sandbox = "dangerous_off"`).
    pub sandbox: Option<super::sandbox::Sandbox>,
}

/// The gateway's Kerberos ticket for `spark.launch_principal`, obtained with `kinit` from
/// `spark.launch_keytab` into an owner-only credential cache in the data directory.
///
/// Why: spark-submit refuses `--principal` together with `--proxy-user`. A launch for another
/// user therefore runs with `--proxy-user` and this ticket in `KRB5CCNAME`, from which Spark
/// obtains that user's delegation tokens (Hadoop's proxy-user model, as Livy does it). A launch
/// as the gateway itself keeps `--principal`/`--keytab`, so Spark can renew its own tokens.
#[derive(Debug, Clone)]
pub struct LaunchTicket {
    principal: String,
    keytab: PathBuf,
    ccache: PathBuf,
}

impl LaunchTicket {
    /// The ticket for `principal` from `keytab`, cached in `data_dir/krb5cc_launch`.
    pub fn new(principal: &str, keytab: &Path, data_dir: &Path) -> Self {
        Self { principal: principal.to_string(), keytab: keytab.to_path_buf(), ccache: data_dir.join("krb5cc_launch") }
    }

    /// The `KRB5CCNAME` value for launches.
    pub fn ccache_name(&self) -> String {
        format!("FILE:{}", self.ccache.display())
    }

    /// Runs `kinit -k -t keytab -c ccache principal` (no password, nothing secret on argv).
    pub async fn renew(&self, limit: Duration) -> Result<(), String> {
        let mut cmd = Command::new("kinit");
        cmd.arg("-k")
            .arg("-t")
            .arg(&self.keytab)
            .arg("-c")
            .arg(self.ccache_name())
            .arg(&self.principal)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let out = match tokio::time::timeout(limit, cmd.output()).await {
            Err(_) => return Err(format!("kinit for {} took longer than {limit:?}", self.principal)),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err("kinit not found: install the Kerberos client tools (Debian: krb5-user)".into());
            }
            Ok(Err(e)) => return Err(format!("running kinit: {e}")),
            Ok(Ok(out)) => out,
        };
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "kinit -k -t {} {} failed: {}",
                self.keytab.display(),
                self.principal,
                last_lines(&String::from_utf8_lossy(&out.stderr), 3)
            ))
        }
    }
}

/// Why Spark could not be found or checked.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SparkCheckError(pub String);

/// Variables passed to spark-submit from the gateway's own environment when set.
const PASS_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "TZ",
    "TMPDIR",
    "JAVA_HOME",
    "HADOOP_CONF_DIR",
    "YARN_CONF_DIR",
    "SPARK_CONF_DIR",
    "KRB5_CONFIG",
    "KRB5CCNAME",
];

#[cfg(test)]
impl SparkEnv {
    /// A Spark installation at `home` whose spark-submit is `spark_submit` (tests with fakes).
    pub(crate) fn for_test(home: &Path, spark_submit: &Path) -> Self {
        Self {
            home: home.to_path_buf(),
            spark_submit: spark_submit.to_path_buf(),
            python: "/usr/bin/python3".into(),
            java_home: None,
            version: "test".into(),
            launch_ccache: None,
            sandbox: None,
        }
    }
}

impl SparkEnv {
    /// Finds Spark: `spark.home`, else the pyspark package in `spark.venv`, and checks it by
    /// running `spark-submit --version`. Every message says what to do.
    pub async fn discover(config: &SparkConfig, timeout: Duration) -> Result<Self, SparkCheckError> {
        // Absolute (not resolved: a venv's python is a link to the base one), because drivers
        // may run elsewhere than the gateway's working directory (in the sandbox, in work/).
        let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        let python = absolute(&match &config.python {
            Some(p) => p.clone(),
            None => config.venv.join("bin").join("python"),
        });
        if !python.exists() {
            return Err(SparkCheckError(format!(
                "Python not found at {} — run scripts/setup.sh to create the virtual environment with pyspark, \
                 or set spark.python / spark.venv",
                python.display()
            )));
        }
        let home = match &config.home {
            Some(h) => absolute(h),
            None => {
                let out = Command::new(&python)
                    .args(["-c", "import os, pyspark; print(os.path.dirname(pyspark.__file__))"])
                    .kill_on_drop(true)
                    .output()
                    .await
                    .map_err(|e| SparkCheckError(format!("cannot run {}: {e}", python.display())))?;
                if !out.status.success() {
                    return Err(SparkCheckError(format!(
                        "pyspark is not installed for {} — run scripts/setup.sh, or set spark.home to a Spark \
                         distribution",
                        python.display()
                    )));
                }
                PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
            }
        };
        let spark_submit = home.join("bin").join("spark-submit");
        if !spark_submit.exists() {
            return Err(SparkCheckError(format!(
                "spark-submit not found at {} — is spark.home ({}) a Spark distribution?",
                spark_submit.display(),
                home.display()
            )));
        }
        let mut env = Self {
            home,
            spark_submit,
            python,
            java_home: config.java_home.as_deref().map(absolute),
            version: String::new(),
            launch_ccache: None,
            sandbox: None,
        };
        let mut cmd = Command::new(&env.spark_submit);
        cmd.arg("--version").env_clear().envs(env.base_env(&config.pass_env)).kill_on_drop(true);
        let out = tokio::time::timeout(timeout, cmd.output())
            .await
            .map_err(|_| SparkCheckError(format!("`spark-submit --version` did not finish within {timeout:?}")))?
            .map_err(|e| SparkCheckError(format!("cannot run {}: {e}", env.spark_submit.display())))?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if !out.status.success() {
            let hint = if text.contains("JAVA_HOME") || text.to_lowercase().contains("java") {
                " (is Java 17 installed? scripts/setup.sh installs it)"
            } else {
                ""
            };
            return Err(SparkCheckError(format!(
                "`spark-submit --version` failed with {}{hint}: {}",
                out.status,
                last_lines(&text, 5)
            )));
        }
        env.version = text.split_whitespace().skip_while(|w| *w != "version").nth(1).unwrap_or("unknown").to_string();
        Ok(env)
    }

    /// The environment every spark-submit gets: the allow-list from the gateway's own
    /// environment, plus SPARK_HOME and the Python to use. Nothing else is inherited.
    pub fn base_env(&self, extra: &[String]) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        for name in PASS_ENV.iter().copied().chain(extra.iter().map(String::as_str)) {
            if let Ok(value) = std::env::var(name) {
                env.insert(name.to_string(), value);
            }
        }
        env.entry("PATH".into()).or_insert_with(|| "/usr/local/bin:/usr/bin:/bin".into());
        if let Some(java_home) = &self.java_home {
            env.insert("JAVA_HOME".into(), java_home.display().to_string());
        }
        env.insert("SPARK_HOME".into(), self.home.display().to_string());
        env.insert("PYSPARK_PYTHON".into(), self.python.display().to_string());
        env.insert("PYSPARK_DRIVER_PYTHON".into(), self.python.display().to_string());
        env.insert("PYTHONUNBUFFERED".into(), "1".into());
        env
    }
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// What one launch asks for, from the request and the configuration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LaunchSpec {
    /// `--name`.
    pub name: String,
    /// `--class` (batches of a jar).
    pub class_name: Option<String>,
    /// `--proxy-user`: the effective user when it differs from the gateway's own.
    pub proxy_user: Option<String>,
    /// `--queue`.
    pub queue: Option<String>,
    /// `spark.driver.memory`.
    pub driver_memory: Option<String>,
    /// `spark.driver.cores`.
    pub driver_cores: Option<u32>,
    /// `spark.executor.memory`.
    pub executor_memory: Option<String>,
    /// `spark.executor.cores`.
    pub executor_cores: Option<u32>,
    /// `spark.executor.instances`.
    pub num_executors: Option<u32>,
    /// `spark.jars` (`--jars`).
    pub jars: Vec<String>,
    /// `--py-files`.
    pub py_files: Vec<String>,
    /// `spark.files` (`--files`).
    pub files: Vec<String>,
    /// `--archives`.
    pub archives: Vec<String>,
    /// The request's Spark conf (applied over the configured defaults).
    pub conf: BTreeMap<String, String>,
    /// Conf the gateway adds last (tags, labels; see [`cluster_conf`]).
    pub cluster_conf: BTreeMap<String, String>,
    /// The application (the driver program, or a batch's file).
    pub app: String,
    /// Its arguments.
    pub args: Vec<String>,
}

/// What a launch is, for the tags that let the gateway find (and kill) its applications.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppKind {
    /// An interactive session.
    Session,
    /// A batch.
    Batch,
}

/// Conf the gateway adds for the cluster manager: application tags on YARN, labels on
/// Kubernetes, waiting for the driver in standalone cluster mode.
pub fn cluster_conf(config: &SparkConfig, kind: AppKind, id: u32) -> BTreeMap<String, String> {
    let kind_name = match kind {
        AppKind::Session => "session",
        AppKind::Batch => "batch",
    };
    let tag = format!("sparkgate-{kind_name}-{id}");
    let mut conf = BTreeMap::new();
    let master = config.master.as_str();
    let cluster_mode = config.deploy_mode == "cluster";
    if master.starts_with("yarn") {
        let mut tags = vec!["sparkgate".to_string(), tag];
        tags.extend(config.application_tags.iter().cloned());
        conf.insert("spark.yarn.tags".into(), tags.join(","));
        // One attempt: a failed driver must not be restarted behind the gateway's back.
        conf.insert("spark.yarn.maxAppAttempts".into(), "1".into());
        // spark-submit stays until the application ends, so its exit status is the outcome.
        conf.insert("spark.yarn.submit.waitAppCompletion".into(), "true".into());
    } else if master.starts_with("k8s://") {
        for role in ["driver", "executor"] {
            conf.insert(format!("spark.kubernetes.{role}.label.sparkgate-app"), tag.clone());
            for (i, extra) in config.application_tags.iter().enumerate() {
                conf.insert(format!("spark.kubernetes.{role}.label.sparkgate-tag-{i}"), extra.clone());
            }
        }
        conf.insert("spark.kubernetes.submission.waitAppCompletion".into(), "true".into());
    } else if master.starts_with("spark://") && cluster_mode {
        conf.insert("spark.standalone.submit.waitAppCompletion".into(), "true".into());
    }
    conf
}

/// With a local master, every application requires a secret of its own on its Spark RPC and
/// block-transfer ports (`spark.authenticate`): the drivers of all users share this host's
/// loopback, and without it one session's code could connect to another's driver and fetch its
/// cached blocks and broadcasts. The secret travels in the owner-only properties file (and the
/// UI redacts it by name). Elsewhere nothing is added: on a cluster the executors, and so the
/// secret's distribution, are the cluster manager's (YARN and Kubernetes generate one when the
/// operator sets `spark.authenticate`).
pub fn local_rpc_auth(config: &SparkConfig) -> BTreeMap<String, String> {
    let master = config.master.as_str();
    if !(master == "local" || master.starts_with("local[")) {
        return BTreeMap::new();
    }
    let mut secret = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut secret);
    BTreeMap::from([
        ("spark.authenticate".to_string(), "true".to_string()),
        ("spark.authenticate.secret".to_string(), hex::encode(secret)),
    ])
}

/// How to stop an application whose driver runs inside the cluster, where killing our
/// spark-submit does not reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterKill {
    /// `spark-submit` with these arguments: `--master <m> --kill <id>`, where the id is a
    /// standalone driver id or, on Kubernetes, `<namespace>:<driver pod>`.
    SparkSubmit(Vec<String>),
    /// The `yarn` command with these arguments: `application -kill <application id>`.
    Yarn(Vec<String>),
}

/// The cluster-side kill of a cluster-mode application, once its driver id (standalone: from
/// the cluster client's own output; Kubernetes: the pod the gateway named) or, on YARN, the
/// application that carries the launch's own tag (see [`yarn_app_by_tag`]) is known; None in
/// client mode or local mode.
///
/// Never pass an application id the driver reported or printed: user code runs in the driver
/// and could name someone else's application.
pub fn cluster_kill(
    config: &SparkConfig,
    driver_id: Option<&str>,
    tagged_yarn_app: Option<&str>,
) -> Option<ClusterKill> {
    if config.deploy_mode != "cluster" {
        return None;
    }
    let master = config.master.as_str();
    if master.starts_with("spark://") || master.starts_with("k8s://") {
        let id = driver_id?;
        Some(ClusterKill::SparkSubmit(vec!["--master".into(), master.into(), "--kill".into(), id.into()]))
    } else if master.starts_with("yarn") {
        let id = tagged_yarn_app.filter(|a| AppIdFormat::Yarn.accepts(a))?;
        Some(ClusterKill::Yarn(vec!["application".into(), "-kill".into(), id.into()]))
    } else {
        None
    }
}

/// Kubernetes cluster mode: names the driver pod of this launch (unique across gateway
/// restarts) in `spec.cluster_conf`, so that a stop can kill it there, and returns the
/// `<namespace>:<pod>` that `spark-submit --kill` takes. None elsewhere.
pub fn name_k8s_driver_pod(
    config: &SparkConfig,
    env: Option<&SparkEnv>,
    spec: &mut LaunchSpec,
    kind: AppKind,
    id: u32,
) -> Option<String> {
    if !(config.master.starts_with("k8s://") && config.deploy_mode == "cluster") {
        return None;
    }
    let kind = match kind {
        AppKind::Session => "session",
        AppKind::Batch => "batch",
    };
    let pod = format!("sparkgate-{kind}-{id}-{:08x}", rand::random::<u32>());
    // Where Spark will put the pod: the request's conf, the operator's, spark-defaults.conf,
    // or Spark's own default.
    const KEY: &str = "spark.kubernetes.namespace";
    let namespace = [&spec.conf, &config.conf]
        .iter()
        .find_map(|conf| conf.get(KEY).cloned())
        .or_else(|| env.and_then(|env| spark_defaults_value(env, KEY)))
        .unwrap_or_else(|| "default".into());
    spec.cluster_conf.insert("spark.kubernetes.driver.pod.name".into(), pod.clone());
    Some(format!("{namespace}:{pod}"))
}

/// A key's value in the `spark-defaults.conf` spark-submit reads (`$SPARK_CONF_DIR`, else
/// `<SPARK_HOME>/conf`), if set there.
pub fn spark_defaults_value(env: &SparkEnv, key: &str) -> Option<String> {
    let dir = std::env::var_os("SPARK_CONF_DIR").map_or_else(|| env.home.join("conf"), PathBuf::from);
    let text = std::fs::read_to_string(dir.join("spark-defaults.conf")).ok()?;
    properties_value(&text, key)
}

/// A key's value in properties text as spark-defaults.conf writes it (`key value`, `key=value`
/// or `key: value`; `#` and `!` start comments), trimmed as Spark trims it.
fn properties_value(text: &str, key: &str) -> Option<String> {
    text.lines().map(str::trim_start).filter(|l| !l.starts_with(['#', '!'])).find_map(|line| {
        let end = line.find(|c: char| c.is_whitespace() || c == '=' || c == ':')?;
        let rest = line[end..].trim_start();
        let rest = rest.strip_prefix(['=', ':']).unwrap_or(rest);
        (&line[..end] == key).then(|| rest.trim().to_string())
    })
}

/// YARN cluster mode: a tag unique to this launch, added to `spark.yarn.tags` in
/// `spec.cluster_conf`, so that the application can be found (and killed) even before
/// spark-submit has printed its id. None elsewhere.
pub fn tag_yarn_launch(config: &SparkConfig, spec: &mut LaunchSpec) -> Option<String> {
    if !(config.master.starts_with("yarn") && config.deploy_mode == "cluster") {
        return None;
    }
    let tag = format!("sparkgate-launch-{:016x}", rand::random::<u64>());
    let tags = spec.cluster_conf.entry("spark.yarn.tags".into()).or_default();
    if !tags.is_empty() {
        tags.push(',');
    }
    tags.push_str(&tag);
    Some(tag)
}

/// A command against the cluster on behalf of `as_user` (the application's proxy user, if
/// any): the allow-listed environment, the gateway's Kerberos ticket as the launch had it, and
/// `HADOOP_PROXY_USER`, so YARN's ACLs see the application's owner rather than the gateway.
fn cluster_command(env: &SparkEnv, config: &SparkConfig, program: &Path, as_user: Option<&str>) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear().envs(env.base_env(&config.pass_env)).stdin(Stdio::null()).kill_on_drop(true);
    if let Some(ccache) = &env.launch_ccache {
        cmd.env("KRB5CCNAME", ccache);
    }
    if let Some(user) = as_user {
        cmd.env("HADOOP_PROXY_USER", user);
    }
    cmd
}

/// The output of a cluster command that must finish within a minute, or why it did not.
async fn run_within_a_minute(mut cmd: Command, program: &Path) -> Result<std::process::Output, String> {
    match tokio::time::timeout(Duration::from_secs(60), cmd.output()).await {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(e)) => Err(format!("could not run {}: {e}", program.display())),
        Err(_) => Err(format!("{} did not finish within 60s", program.display())),
    }
}

const MAY_STILL_RUN: &str = "the application may still run in the cluster";

/// Asks YARN (`yarn application -list -appStates ALL -appTags <tag>`) for the application that
/// carries `tag`; its id, if YARN knows one. A failed query is logged. Only a row's first
/// column is an id: the application's name, which its user chose, comes after it.
pub async fn yarn_app_by_tag(
    env: &SparkEnv,
    config: &SparkConfig,
    tag: &str,
    as_user: Option<&str>,
    log: &LogBuffer,
) -> Option<String> {
    let program = config.yarn_command.as_path();
    let mut cmd = cluster_command(env, config, program, as_user);
    cmd.args(["application", "-list", "-appStates", "ALL", "-appTags", tag]);
    match run_within_a_minute(cmd, program).await {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).lines().find_map(|row| {
            let first = row.split_whitespace().next()?;
            AppIdFormat::Yarn.accepts(first).then(|| first.to_string())
        }),
        Ok(out) => {
            log.push(format!(
                "sparkgate: asking YARN for the application tagged {tag} failed ({}): {}; {MAY_STILL_RUN}",
                out.status,
                last_lines(&String::from_utf8_lossy(&out.stderr), 3)
            ));
            None
        }
        Err(why) => {
            log.push(format!("sparkgate: {why}; {MAY_STILL_RUN}"));
            None
        }
    }
}

/// Runs a cluster-side kill (see [`cluster_kill`]) on behalf of `as_user`, writing what it runs
/// and what the command says into `log`; a failure says the application may still run.
pub async fn run_cluster_kill(
    env: &SparkEnv,
    config: &SparkConfig,
    kill: ClusterKill,
    as_user: Option<&str>,
    log: &LogBuffer,
) {
    let (program, args) = match kill {
        ClusterKill::SparkSubmit(args) => (env.spark_submit.clone(), args),
        ClusterKill::Yarn(args) => (config.yarn_command.clone(), args),
    };
    let mut cmd = cluster_command(env, config, &program, as_user);
    cmd.args(&args);
    log.push(format!("sparkgate: stopping the application in the cluster: {} {}", program.display(), args.join(" ")));
    match run_within_a_minute(cmd, &program).await {
        Ok(out) => {
            for line in String::from_utf8_lossy(&out.stdout).lines().chain(String::from_utf8_lossy(&out.stderr).lines())
            {
                log.push(line.to_string());
            }
            if !out.status.success() {
                log.push(format!("sparkgate: {} exited with {}: {MAY_STILL_RUN}", program.display(), out.status));
            }
        }
        Err(why) => log.push(format!("sparkgate: {why}; {MAY_STILL_RUN}")),
    }
}

/// The spark-submit argument vector (without the program itself).
///
/// Spark properties are not on it: they may hold secrets (`spark.hadoop.fs.s3a.secret.key`)
/// and argv is readable by every local user (`/proc/*/cmdline`). They go into the owner-only
/// `properties_file` (see [`write_launch_files`]); `--load-spark-defaults` keeps
/// `conf/spark-defaults.conf` in force beneath them, as it would be without the file.
pub fn build_args(config: &SparkConfig, spec: &LaunchSpec, properties_file: &Path) -> Vec<OsString> {
    let mut args: Vec<String> = vec![
        "--master".into(),
        config.master.clone(),
        "--deploy-mode".into(),
        config.deploy_mode.clone(),
        "--name".into(),
        spec.name.clone(),
    ];
    if let Some(class) = &spec.class_name {
        args.extend(["--class".into(), class.clone()]);
    }
    if let Some(user) = &spec.proxy_user {
        args.extend(["--proxy-user".into(), user.clone()]);
    }
    if let Some(queue) = &spec.queue {
        args.extend(["--queue".into(), queue.clone()]);
    }
    if let (Some(principal), Some(keytab)) = (&config.launch_principal, launch_keytab(config, spec)) {
        // A path and a principal name, not secrets: the keytab's contents never leave the file.
        // (With --proxy-user, which spark-submit refuses to combine with --principal, the
        // gateway's ticket travels in KRB5CCNAME instead: see LaunchTicket.)
        args.extend(["--principal".into(), principal.clone(), "--keytab".into(), keytab.display().to_string()]);
    }
    // The file lists go into the properties file too (see spark_properties): their URLs may
    // carry credentials in a query string (a presigned URL), and argv is readable by all.
    args.extend(["--properties-file".into(), properties_file.display().to_string(), "--load-spark-defaults".into()]);
    args.push(spec.app.clone());
    args.extend(spec.args.iter().cloned());
    args.into_iter().map(OsString::from).collect()
}

/// The keytab spark-submit gets with `--keytab`: the launch keytab, for a launch as the
/// gateway's own principal (no `--proxy-user`).
pub fn launch_keytab<'a>(config: &'a SparkConfig, spec: &LaunchSpec) -> Option<&'a Path> {
    match (&config.launch_principal, &config.launch_keytab, &spec.proxy_user) {
        (Some(_), Some(keytab), None) => Some(keytab.as_path()),
        _ => None,
    }
}

/// Every Spark property of a launch: the operator's `spark.conf`, the request's `conf`, the
/// cluster bookkeeping (tags, labels) and the resource fields, later ones winning.
pub fn spark_properties(config: &SparkConfig, spec: &LaunchSpec) -> BTreeMap<String, String> {
    let mut conf = config.conf.clone();
    conf.extend(spec.conf.iter().map(|(k, v)| (k.clone(), v.clone())));
    conf.extend(spec.cluster_conf.iter().map(|(k, v)| (k.clone(), v.clone())));
    let resources = [
        ("spark.driver.memory", spec.driver_memory.clone()),
        ("spark.driver.cores", spec.driver_cores.map(|n| n.to_string())),
        ("spark.executor.memory", spec.executor_memory.clone()),
        ("spark.executor.cores", spec.executor_cores.map(|n| n.to_string())),
        ("spark.executor.instances", spec.num_executors.map(|n| n.to_string())),
    ];
    for (key, value) in resources {
        if let Some(value) = value {
            conf.insert(key.to_string(), value);
        }
    }
    // What --jars, --py-files, --files and --archives would say: spark-submit reads these
    // properties when the flags are absent (a request's lists replace the operator's, as the
    // flags did).
    let lists = [
        ("spark.jars", &spec.jars),
        ("spark.submit.pyFiles", &spec.py_files),
        ("spark.files", &spec.files),
        ("spark.archives", &spec.archives),
    ];
    for (key, list) in lists {
        if !list.is_empty() {
            conf.insert(key.to_string(), list.join(","));
        }
    }
    conf
}

/// `properties` in Java's properties-file format. Everything but plain ASCII letters, digits
/// and a few safe punctuation marks is written as `\uXXXX`, so no key or value can break out
/// of its line or change the parse (`=`, `:`, `#`, `\`, newlines, non-ASCII).
pub fn properties_text(properties: &BTreeMap<String, String>) -> String {
    fn escape(text: &str, out: &mut String) {
        let mut units = [0u16; 2];
        for c in text.chars() {
            if c.is_ascii_alphanumeric() || "._-/,+@%()[]{};".contains(c) {
                out.push(c);
            } else {
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    let mut out = String::from("# Written by sparkgate for one spark-submit (owner-only).\n");
    for (key, value) in properties {
        escape(key, &mut out);
        out.push('=');
        escape(value, &mut out);
        out.push('\n');
    }
    out
}

/// `KRB5CCNAME` for a launch with `--proxy-user` when the gateway has a launch ticket.
pub fn launch_ticket_env(env: &SparkEnv, spec: &LaunchSpec) -> Option<(String, String)> {
    spec.proxy_user.as_ref()?;
    env.launch_ccache.clone().map(|cc| ("KRB5CCNAME".to_string(), cc))
}

/// Writes a launch's Spark properties into `dir` (0600) and returns the spark-submit argv.
pub fn write_launch_files(config: &SparkConfig, spec: &LaunchSpec, dir: &Path) -> Result<Vec<OsString>, String> {
    let path = dir.join("spark-launch.properties");
    crate::tls::write_file(&path, properties_text(&spark_properties(config, spec)).as_bytes(), 0o600)
        .map_err(|e| e.to_string())?;
    let path = path.canonicalize().unwrap_or(path);
    Ok(build_args(config, spec, &path))
}

/// Longest log line kept, in bytes; longer text is cut (output lines of a process are split
/// at this size instead, see [`read_lines`]).
pub const MAX_LOG_LINE_BYTES: usize = 64 * 1024;

/// `text` cut to at most `max` bytes on a character boundary, the cut marked with `…`.
pub fn clip_text(text: &str, max: usize) -> String {
    const MARK: &str = "…";
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max.saturating_sub(MARK.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MARK}", &text[..end])
}

/// Most bytes of lines a [`LogBuffer`] keeps in memory, whatever its line cap (1000 lines of
/// 64 KiB would be 64 MiB).
pub const MAX_LOG_TAIL_BYTES: usize = 4 * 1024 * 1024;

/// A bounded tail of a process's output, mirrored to a log file of bounded size.
#[derive(Debug)]
pub struct LogBuffer {
    inner: Mutex<LogInner>,
}

#[derive(Debug)]
struct LogInner {
    lines: VecDeque<String>,
    /// Bytes of `lines`.
    bytes: usize,
    cap: usize,
    file: Option<std::fs::File>,
    /// Bytes written to `file`, and how many it may take.
    file_bytes: u64,
    max_file_bytes: u64,
}

impl LogInner {
    fn new(cap: usize, file: Option<std::fs::File>, max_file_bytes: u64) -> Self {
        Self { lines: VecDeque::new(), bytes: 0, cap: cap.max(1), file, file_bytes: 0, max_file_bytes }
    }

    /// Writes a line to the file while it has room; the line that fills it says so, and the
    /// file takes nothing more (the in-memory tail goes on).
    fn write(&mut self, line: &str) {
        let Some(file) = self.file.as_mut() else { return };
        let size = line.len() as u64 + 1;
        if self.file_bytes.saturating_add(size) <= self.max_file_bytes {
            self.file_bytes += size;
            let _ = writeln!(file, "{line}");
            return;
        }
        let _ = writeln!(
            file,
            "sparkgate: this log reached its size limit ({} bytes, sessions.max_log_file_bytes); later output is not kept",
            self.max_file_bytes
        );
        self.file = None;
    }
}

impl LogBuffer {
    /// A buffer keeping `cap` lines, mirrored to `file` up to `max_file_bytes`; the file must
    /// not exist yet: a new session or batch never appends to a log an earlier one left behind.
    pub fn create(cap: usize, file: &Path, max_file_bytes: u64) -> std::io::Result<Arc<Self>> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(file)?;
        Ok(Arc::new(Self { inner: Mutex::new(LogInner::new(cap, Some(file), max_file_bytes)) }))
    }

    /// A buffer keeping `cap` lines, appending to `file` if given (without a size limit).
    pub fn new(cap: usize, file: Option<&Path>) -> Arc<Self> {
        let file = file.and_then(|p| {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(p).ok()
        });
        Arc::new(Self { inner: Mutex::new(LogInner::new(cap, file, u64::MAX)) })
    }

    /// Appends a line — or several, if the text holds line breaks: one entry never spans
    /// lines, so no text can forge a line of its own in the log file. Each is cut at
    /// [`MAX_LOG_LINE_BYTES`]; the tail keeps at most its line cap and [`MAX_LOG_TAIL_BYTES`].
    pub fn push(&self, line: impl Into<String>) {
        let line = line.into();
        let Ok(mut inner) = self.inner.lock() else { return };
        for piece in line.split('\n') {
            let piece = clip_text(piece.trim_end_matches('\r'), MAX_LOG_LINE_BYTES);
            inner.write(&piece);
            inner.bytes += piece.len();
            inner.lines.push_back(piece);
            while inner.lines.len() > inner.cap || (inner.bytes > MAX_LOG_TAIL_BYTES && inner.lines.len() > 1) {
                let Some(gone) = inner.lines.pop_front() else { break };
                inner.bytes -= gone.len();
            }
        }
    }

    /// A copy of the retained lines.
    pub fn snapshot(&self) -> Vec<String> {
        self.window(|total| 0..total).2
    }

    /// The retained lines `pick(total)` (`total` being how many are retained), copied under
    /// the lock: only the lines asked for. Returns where the window starts, `total` and the lines.
    pub fn window(&self, pick: impl Fn(usize) -> std::ops::Range<usize>) -> (usize, usize, Vec<String>) {
        let Ok(inner) = self.inner.lock() else { return (0, 0, Vec::new()) };
        let total = inner.lines.len();
        let range = pick(total);
        let start = range.start.min(total);
        let end = range.end.clamp(start, total);
        (start, total, inner.lines.range(start..end).cloned().collect())
    }

    /// The last `n` retained lines.
    pub fn tail(&self, n: usize) -> Vec<String> {
        self.window(|total| total.saturating_sub(n)..total).2
    }
}

/// A launched spark-submit: its process group and a way to learn when it exits.
#[derive(Debug, Clone)]
pub struct ProcessHandle {
    /// The process group id (= spark-submit's pid).
    pub pgid: i32,
    exited: tokio::sync::watch::Receiver<Option<i32>>,
}

/// How spark-submit ended: its exit code, or 128+signal.
pub type ExitCode = i32;

impl ProcessHandle {
    /// Waits until the process has exited (returns immediately if it has).
    pub async fn wait(&self) -> ExitCode {
        let mut rx = self.exited.clone();
        loop {
            if let Some(code) = *rx.borrow_and_update() {
                return code;
            }
            if rx.changed().await.is_err() {
                return -1;
            }
        }
    }

    /// Whether the process has exited.
    pub fn has_exited(&self) -> bool {
        self.exited.borrow().is_some()
    }

    /// Sends `signal` to the whole process group (the JVM, the Python driver, anything they
    /// started). Errors (e.g. the group is already gone) are ignored.
    pub fn signal_group(&self, signal: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(self.pgid), signal);
    }

    /// Whether any process of the group is still alive.
    pub fn group_alive(&self) -> bool {
        group_alive(self.pgid)
    }

    /// Stops the group and everything it started: SIGTERM, then SIGKILL after `grace`, then
    /// waits (bounded) until none of it is left. Descendants that left the group (PySpark's
    /// worker daemon calls setpgid) are found through their parents and stopped too.
    pub async fn kill_group(&self, grace: Duration) {
        use nix::sys::signal::{kill, Signal};
        let escaped: Vec<i32> = descendants_of_group(self.pgid);
        let signal_all = |signal: Signal| {
            self.signal_group(signal);
            for pid in &escaped {
                let _ = kill(nix::unistd::Pid::from_raw(*pid), signal);
            }
        };
        let alive = || self.group_alive() || escaped.iter().any(|p| pid_alive(*p));
        signal_all(Signal::SIGTERM);
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline && alive() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        signal_all(Signal::SIGKILL);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while tokio::time::Instant::now() < deadline && alive() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `(pid, state, ppid, pgrp)` of every process, from /proc.
fn process_table() -> Vec<(i32, String, i32, i32)> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            let rest = stat.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((pid, f.first()?.to_string(), f.get(1)?.parse().ok()?, f.get(2)?.parse().ok()?))
        })
        .collect()
}

/// Every live process of process group `pgid` and every live descendant of one, whether or not
/// it is still in the group (PySpark's worker daemon leaves it).
pub fn processes_of_group_tree(pgid: i32) -> Vec<i32> {
    let mut all: Vec<i32> =
        process_table().iter().filter(|(_, state, _, g)| *g == pgid && state != "Z").map(|(p, ..)| *p).collect();
    all.extend(descendants_of_group(pgid));
    all
}

/// Stops every process left behind by sessions and batches of an earlier run of the gateway on
/// `data_dir` (found by their command lines, which name files in `<data_dir>/sessions/<id>/` or
/// `<data_dir>/batches/<id>/`), with their process groups and descendants. Until the gateway can
/// take them back after a restart, they could only go on using CPU, memory and ports — a batch,
/// which has no channel to lose, for ever — and a driver whose user code disabled its own
/// shutdown as well. Returns how many processes were found. Call it before anything is launched.
pub fn stop_orphans(data_dir: &Path) -> usize {
    use nix::sys::signal::{kill, killpg, Signal};
    let Ok(root) = std::path::absolute(data_dir) else { return 0 };
    let prefixes = [root.join("sessions"), root.join("batches")].map(|p| format!("{}/", p.display()));
    let own = std::process::id() as i32;
    let mut found: Vec<(i32, i32)> = Vec::new();
    for (pid, _, _, pgid) in process_table() {
        if pid == own {
            continue;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let named = cmdline.split(|b| *b == 0).any(|arg| {
            let arg = String::from_utf8_lossy(arg);
            prefixes.iter().any(|p| {
                arg.strip_prefix(p.as_str()).is_some_and(|rest| {
                    rest.split('/').next().is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
                })
            })
        });
        if named {
            found.push((pid, pgid));
        }
    }
    for (pid, pgid) in &found {
        let escaped = descendants_of_group(*pgid);
        if *pgid > 1 && *pgid != own {
            let _ = killpg(nix::unistd::Pid::from_raw(*pgid), Signal::SIGKILL);
        }
        for p in escaped.iter().chain(std::iter::once(pid)) {
            let _ = kill(nix::unistd::Pid::from_raw(*p), Signal::SIGKILL);
        }
    }
    found.len()
}

/// Live processes descended from process group `pgid` that are no longer in it.
pub fn descendants_of_group(pgid: i32) -> Vec<i32> {
    let table = process_table();
    let mut family: std::collections::HashSet<i32> =
        table.iter().filter(|(_, state, _, g)| *g == pgid && state != "Z").map(|(p, ..)| *p).collect();
    let members = family.clone();
    loop {
        let before = family.len();
        for (pid, state, ppid, _) in &table {
            if state != "Z" && family.contains(ppid) {
                family.insert(*pid);
            }
        }
        if family.len() == before {
            break;
        }
    }
    family.into_iter().filter(|p| !members.contains(p)).collect()
}

fn pid_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, r)| r.split_whitespace().next().unwrap_or("Z").to_string()))
        .is_some_and(|state| state != "Z" && state != "X")
}

/// Whether any non-zombie process is in process group `pgid` (read from /proc, because
/// `kill(-pgid, 0)` also succeeds for zombies nobody has reaped yet).
pub fn group_alive(pgid: i32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), None).is_ok();
    };
    entries.flatten().any(|entry| {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { return false };
        // Fields after the parenthesised command: state ppid pgrp ...
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return false };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        fields.len() > 2 && fields[0] != "Z" && fields[0] != "X" && fields[2] == pgid.to_string()
    })
}

/// Starts spark-submit in its own process group, inside the sandbox confined to `confinement`
/// when the environment has one. Output lines go to `log`; `on_line` sees each line too (to
/// find the application id); `exited` is set when it ends.
///
/// Sandboxed, `setsid` makes the group (a session without a terminal) and execs `bwrap`; the
/// group holds bwrap, the init process of the sandbox's PID namespace and spark-submit with
/// what it starts, and killing it kills that init process, with which the kernel kills the
/// whole namespace (see [`super::sandbox`]).
pub fn spawn(
    env: &SparkEnv,
    pass_env: &[String],
    args: Vec<OsString>,
    extra_env: BTreeMap<String, String>,
    confinement: &super::sandbox::Confinement,
    log: Arc<LogBuffer>,
    on_line: Arc<dyn Fn(&str) + Send + Sync>,
) -> std::io::Result<ProcessHandle> {
    let mut vars = env.base_env(pass_env);
    vars.extend(extra_env);
    let mut cmd = match &env.sandbox {
        Some(sandbox) => {
            let mut cmd = Command::new(sandbox.program());
            cmd.args(sandbox.argv(confinement, &vars)).arg(&env.spark_submit);
            vars.extend(super::sandbox::Sandbox::environment(confinement));
            // setsid makes the group itself; it must not lead one already, or it would fork.
            cmd
        }
        None => {
            let mut cmd = Command::new(&env.spark_submit);
            cmd.process_group(0);
            cmd
        }
    };
    cmd.args(&args)
        .env_clear()
        .envs(vars)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let pgid = child.id().map(|p| p as i32).unwrap_or(0);
    if let Some(out) = child.stdout.take() {
        tokio::spawn(read_lines(out, log.clone(), on_line.clone()));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(read_lines(err, log.clone(), on_line));
    }
    let (tx, rx) = tokio::sync::watch::channel(None);
    tokio::spawn(async move {
        let code = match child.wait().await {
            Ok(status) => {
                use std::os::unix::process::ExitStatusExt;
                status.code().or_else(|| status.signal().map(|s| 128 + s)).unwrap_or(-1)
            }
            Err(_) => -1,
        };
        let _ = tx.send(Some(code));
    });
    Ok(ProcessHandle { pgid, exited: rx })
}

/// Longest line kept whole; a longer one (a program printing megabytes without a newline) is
/// cut into pieces of this size instead of growing one buffer without bound.
const MAX_LINE_BYTES: u64 = MAX_LOG_LINE_BYTES as u64;

/// Reads a process's output line by line into `log`. Bytes that are not UTF-8 are replaced
/// (one bad byte must not end the capture, and with it app-id and state detection).
async fn read_lines(stream: impl AsyncRead + Unpin, log: Arc<LogBuffer>, on_line: Arc<dyn Fn(&str) + Send + Sync>) {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match (&mut reader).take(MAX_LINE_BYTES).read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&buf);
                let line = text.trim_end_matches(['\n', '\r']);
                on_line(line);
                log.push(line.to_string());
            }
        }
    }
}

/// Whether a line shows that the driver's SparkContext is up (the application runs).
pub fn driver_started(line: &str) -> bool {
    line.contains("Successfully started service 'sparkDriver'") || line.contains("Submitted application:")
}

/// One HTTP/1.0 exchange over plain TCP with a standalone master's web UI (the operator's
/// `spark.standalone_master_ui`): the status code and the body, or `None` if it failed or took
/// longer than `limit`. (Drivers' Spark UIs are reached only through `crate::sparkui`.)
async fn http_exchange(
    url: &str,
    limit: Duration,
    request: impl FnOnce(&str, &str) -> String,
) -> Option<(u16, String)> {
    use tokio::io::AsyncWriteExt;
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = rest.split_once('/').map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
    let request = request(authority, &path);
    let attempt = async {
        let mut tcp = tokio::net::TcpStream::connect(authority).await.ok()?;
        tcp.write_all(request.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        tcp.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf);
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body);
        Some((status, body.to_string()))
    };
    tokio::time::timeout(limit, attempt).await.ok().flatten()
}

/// GETs a page; its body if the answer was 200.
async fn http_get(url: &str, accept: &str) -> Option<String> {
    let request =
        |authority: &str, path: &str| format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\nAccept: {accept}\r\n\r\n");
    match http_exchange(url, Duration::from_secs(3), request).await? {
        (200, body) => Some(body),
        _ => None,
    }
}

/// GETs a JSON document.
pub async fn http_get_json(url: &str) -> Option<serde_json::Value> {
    serde_json::from_str(http_get(url, "application/json").await?.trim()).ok()
}

/// POSTs a form; returns the status code.
pub async fn http_post_form(url: &str, form: &str) -> Option<u16> {
    let request = |authority: &str, path: &str| {
        format!(
            "POST {path} HTTP/1.0\r\nHost: {authority}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
            form.len()
        )
    };
    Some(http_exchange(url, Duration::from_secs(10), request).await?.0)
}

/// Finds the id of the application named `name` in a standalone master's `/json/` document.
pub fn app_id_in_master_status(status: &serde_json::Value, name: &str) -> Option<String> {
    ["activeapps", "completedapps"].iter().find_map(|list| {
        status.get(list)?.as_array()?.iter().find_map(|app| {
            (app.get("name")?.as_str()? == name).then(|| app.get("id")?.as_str().map(str::to_string)).flatten()
        })
    })
}

/// Finds a standalone cluster-mode driver id (`driver-20240101120000-0001`) in the line that
/// reports the submission: the master's "Driver successfully submitted as …" or the REST
/// client's "Submission successfully created as …" (the last occurrence, so no text before it
/// can supply the id).
pub fn find_driver_id(line: &str) -> Option<String> {
    ["submitted as ", "created as "].iter().find_map(|marker| {
        let (_, after) = line.rsplit_once(marker)?;
        let word =
            after.split(|c: char| c.is_whitespace() || matches!(c, '\'' | '"' | ',' | '.' | '(' | ')')).next()?;
        let ok = word.strip_prefix("driver-").is_some_and(|rest| {
            (10..=40).contains(&rest.len()) && rest.chars().all(|c| c.is_ascii_digit() || c == '-')
        });
        ok.then(|| word.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: Vec<OsString>) -> Vec<String> {
        args.into_iter().map(|a| a.into_string().unwrap()).collect()
    }

    #[test]
    fn argument_vector_from_request_and_config() {
        let mut config = SparkConfig::default();
        config.conf.insert("spark.ui.enabled".into(), "false".into());
        let spec = LaunchSpec {
            name: "etl".into(),
            proxy_user: Some("bob".into()),
            queue: Some("prod".into()),
            driver_memory: Some("2g".into()),
            executor_cores: Some(3),
            num_executors: Some(4),
            jars: vec!["a.jar".into(), "https://repo/b.jar?X-Amz-Signature=s3cr3t".into()],
            py_files: vec!["m.py".into()],
            conf: [("spark.ui.enabled".to_string(), "true".to_string())].into(),
            app: "/data/driver.py".into(),
            args: vec!["--x".into(), "a b; rm -rf /".into()],
            ..LaunchSpec::default()
        };
        let args = strings(build_args(&config, &spec, Path::new(PROPS)));
        assert_eq!(
            args,
            vec![
                "--master",
                "local[*]",
                "--deploy-mode",
                "client",
                "--name",
                "etl",
                "--proxy-user",
                "bob",
                "--queue",
                "prod",
                "--properties-file",
                PROPS,
                "--load-spark-defaults",
                "/data/driver.py",
                "--x",
                "a b; rm -rf /",
            ]
        );
        let props = spark_properties(&config, &spec);
        let props: Vec<(&str, &str)> = props.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            props,
            vec![
                ("spark.driver.memory", "2g"),
                ("spark.executor.cores", "3"),
                ("spark.executor.instances", "4"),
                // File lists too: a URL's query string may hold a credential.
                ("spark.jars", "a.jar,https://repo/b.jar?X-Amz-Signature=s3cr3t"),
                ("spark.submit.pyFiles", "m.py"),
                ("spark.ui.enabled", "true"),
            ]
        );
        assert!(!args.iter().any(|a| a.contains("s3cr3t")), "{args:?}");
    }

    const PROPS: &str = "/data/sessions/1/spark-launch.properties";

    #[test]
    fn spark_properties_never_reach_argv_and_survive_any_text() {
        let secret = "AKIA/sec=ret:#!\\ line\nnext é😀";
        let spec = LaunchSpec {
            name: "n".into(),
            conf: [("spark.hadoop.fs.s3a.secret.key".to_string(), secret.to_string())].into(),
            app: "x.py".into(),
            ..LaunchSpec::default()
        };
        let args = strings(build_args(&SparkConfig::default(), &spec, Path::new(PROPS)));
        assert!(!args.iter().any(|a| a.contains("AKIA") || a.contains("s3a")), "{args:?}");
        let text = properties_text(&spark_properties(&SparkConfig::default(), &spec));
        let line = text.lines().find(|l| l.starts_with("spark.hadoop.fs.s3a.secret.key=")).unwrap();
        assert_eq!(
            line,
            "spark.hadoop.fs.s3a.secret.key=AKIA/sec\\u003dret\\u003a\\u0023\\u0021\\u005c\\u0020line\\u000anext\\u0020\\u00e9\\ud83d\\ude00"
        );
        assert_eq!(text.lines().count(), 2, "one comment and one property line: {text}");
        let dir = tempfile::tempdir().unwrap();
        let argv = strings(write_launch_files(&SparkConfig::default(), &spec, dir.path()).unwrap());
        let file = dir.path().join("spark-launch.properties");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(argv.contains(&file.canonicalize().unwrap().display().to_string()), "{argv:?}");
    }

    #[test]
    fn yarn_launches_carry_tags_one_attempt_and_never_both_proxy_user_and_principal() {
        let config = SparkConfig {
            master: "yarn".into(),
            deploy_mode: "cluster".into(),
            application_tags: vec!["team-a".into()],
            launch_principal: Some("sparkgate/gw.example.com@EXAMPLE.COM".into()),
            launch_keytab: Some("/etc/security/keytabs/sparkgate.keytab".into()),
            ..SparkConfig::default()
        };
        let spec = LaunchSpec {
            name: "etl".into(),
            proxy_user: Some("alice".into()),
            queue: Some("prod".into()),
            cluster_conf: cluster_conf(&config, AppKind::Batch, 7),
            app: "hdfs:///apps/etl.jar".into(),
            class_name: Some("com.example.Etl".into()),
            ..LaunchSpec::default()
        };
        let args = strings(build_args(&config, &spec, Path::new(PROPS)));
        assert_eq!(
            args,
            vec![
                "--master",
                "yarn",
                "--deploy-mode",
                "cluster",
                "--name",
                "etl",
                "--class",
                "com.example.Etl",
                "--proxy-user",
                "alice",
                "--queue",
                "prod",
                "--properties-file",
                PROPS,
                "--load-spark-defaults",
                "hdfs:///apps/etl.jar",
            ]
        );
        // spark-submit refuses --principal with --proxy-user: the gateway's ticket goes in
        // KRB5CCNAME instead (launch_ticket_env). Its own launches keep the keytab.
        let own = LaunchSpec { proxy_user: None, ..spec.clone() };
        let own_args = strings(build_args(&config, &own, Path::new(PROPS)));
        assert!(
            own_args.windows(4).any(|w| w
                == [
                    "--principal",
                    "sparkgate/gw.example.com@EXAMPLE.COM",
                    "--keytab",
                    "/etc/security/keytabs/sparkgate.keytab"
                ]),
            "{own_args:?}"
        );
        let props = spark_properties(&config, &spec);
        assert_eq!(props["spark.yarn.maxAppAttempts"], "1");
        assert_eq!(props["spark.yarn.submit.waitAppCompletion"], "true");
        assert_eq!(props["spark.yarn.tags"], "sparkgate,sparkgate-batch-7,team-a");
    }

    #[test]
    fn kubernetes_and_standalone_cluster_conf() {
        let k8s = SparkConfig {
            master: "k8s://https://api:6443".into(),
            deploy_mode: "cluster".into(),
            ..SparkConfig::default()
        };
        let conf = cluster_conf(&k8s, AppKind::Session, 3);
        assert_eq!(conf["spark.kubernetes.driver.label.sparkgate-app"], "sparkgate-session-3");
        assert_eq!(conf["spark.kubernetes.executor.label.sparkgate-app"], "sparkgate-session-3");
        assert_eq!(conf["spark.kubernetes.submission.waitAppCompletion"], "true");
        let standalone =
            SparkConfig { master: "spark://m:7077".into(), deploy_mode: "cluster".into(), ..SparkConfig::default() };
        assert_eq!(cluster_conf(&standalone, AppKind::Batch, 1)["spark.standalone.submit.waitAppCompletion"], "true");
        assert!(cluster_conf(&SparkConfig::default(), AppKind::Batch, 1).is_empty(), "local mode needs nothing");
        assert_eq!(
            find_driver_id("Driver successfully submitted as driver-20261123204501-0003"),
            Some("driver-20261123204501-0003".into())
        );
        assert_eq!(find_driver_id("driver-side code"), None);
        assert_eq!(
            find_driver_id("INFO RestSubmissionClient: Submission successfully created as driver-20261123204501-0004."),
            Some("driver-20261123204501-0004".into())
        );
        // Output that merely mentions a driver id (a batch's own print, in client mode) is not it.
        assert_eq!(find_driver_id("my job talks about driver-20261123204501-0003"), None);
        let status = serde_json::json!({"activeapps": [{"id": "app-1-0001", "name": "other"}],
                                        "completedapps": [{"id": "app-1-0000", "name": "sparkgate-batch-4"}]});
        assert_eq!(app_id_in_master_status(&status, "sparkgate-batch-4"), Some("app-1-0000".into()));
        assert_eq!(app_id_in_master_status(&status, "nope"), None);
    }

    #[test]
    fn local_applications_each_require_a_secret_of_their_own_on_their_ports() {
        let local = local_rpc_auth(&SparkConfig::default());
        assert_eq!(local["spark.authenticate"], "true");
        let secret = &local["spark.authenticate.secret"];
        assert!(secret.len() == 64 && secret.bytes().all(|b| b.is_ascii_hexdigit()), "{secret}");
        assert_ne!(secret, &local_rpc_auth(&SparkConfig::default())["spark.authenticate.secret"], "one per launch");
        let spec =
            LaunchSpec { name: "n".into(), cluster_conf: local.clone(), app: "x.py".into(), ..LaunchSpec::default() };
        let argv = strings(build_args(&SparkConfig::default(), &spec, Path::new(PROPS)));
        assert!(!argv.iter().any(|a| a.contains(secret.as_str())), "never on argv: {argv:?}");
        for master in ["spark://m:7077", "yarn", "k8s://https://api:6443", "local-cluster[2,1,512]"] {
            assert!(local_rpc_auth(&SparkConfig { master: master.into(), ..SparkConfig::default() }).is_empty());
        }
    }

    #[test]
    fn no_proxy_user_flag_without_an_effective_user() {
        let spec = LaunchSpec { name: "n".into(), app: "x.py".into(), ..LaunchSpec::default() };
        let args = strings(build_args(&SparkConfig::default(), &spec, Path::new(PROPS)));
        assert!(!args.contains(&"--proxy-user".to_string()));
        assert!(!args.contains(&"--jars".to_string()));
        assert_eq!(args.last().unwrap(), "x.py");
    }

    #[test]
    fn environment_is_an_allow_list() {
        let env = SparkEnv {
            home: "/spark".into(),
            spark_submit: "/spark/bin/spark-submit".into(),
            python: "/venv/bin/python".into(),
            java_home: Some("/jdk".into()),
            version: "4.0.1".into(),
            launch_ccache: Some("FILE:/data/krb5cc_launch".into()),
            sandbox: None,
        };
        let vars = env.base_env(&[]);
        assert!(!vars.contains_key("KRB5CCNAME"), "the launch ticket goes only to proxied launches");
        let mine = LaunchSpec { name: "n".into(), app: "x.py".into(), ..LaunchSpec::default() };
        assert_eq!(launch_ticket_env(&env, &mine), None);
        let theirs = LaunchSpec { proxy_user: Some("alice".into()), ..mine };
        assert_eq!(
            launch_ticket_env(&env, &theirs),
            Some(("KRB5CCNAME".to_string(), "FILE:/data/krb5cc_launch".to_string()))
        );
        assert_eq!(vars["SPARK_HOME"], "/spark");
        assert_eq!(vars["PYSPARK_PYTHON"], "/venv/bin/python");
        assert_eq!(vars["JAVA_HOME"], "/jdk");
        for key in vars.keys() {
            assert!(
                PASS_ENV.contains(&key.as_str())
                    || ["SPARK_HOME", "PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON", "PYTHONUNBUFFERED"]
                        .contains(&key.as_str()),
                "unexpected variable {key}"
            );
        }
    }

    #[test]
    fn the_driver_start_is_seen() {
        assert!(driver_started("INFO Utils: Successfully started service 'sparkDriver' on port 33245."));
        assert!(!driver_started("INFO Utils: Successfully started service 'SparkUI' on port 4040."));
    }

    #[test]
    fn kubernetes_cluster_drivers_get_a_pod_name_the_gateway_can_kill() {
        let k8s = SparkConfig {
            master: "k8s://https://api:6443".into(),
            deploy_mode: "cluster".into(),
            ..SparkConfig::default()
        };
        let mut spec = LaunchSpec {
            conf: [("spark.kubernetes.namespace".to_string(), "etl".to_string())].into(),
            ..LaunchSpec::default()
        };
        let id = name_k8s_driver_pod(&k8s, None, &mut spec, AppKind::Session, 3).unwrap();
        let pod = spec.cluster_conf["spark.kubernetes.driver.pod.name"].clone();
        assert_eq!(id, format!("etl:{pod}"));
        assert!(pod.starts_with("sparkgate-session-3-") && pod.len() == "sparkgate-session-3-".len() + 8, "{pod}");
        let other = name_k8s_driver_pod(&k8s, None, &mut LaunchSpec::default(), AppKind::Session, 3).unwrap();
        assert!(other.starts_with("default:sparkgate-session-3-") && other != id, "unique, Spark's default: {other}");
        // A namespace set only in spark-defaults.conf is where Spark puts the pod.
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(home.path().join("conf")).unwrap();
        std::fs::write(
            home.path().join("conf/spark-defaults.conf"),
            "# site settings\nspark.master  k8s://https://api:6443\nspark.kubernetes.namespace   analytics \n",
        )
        .unwrap();
        let env = SparkEnv::for_test(home.path(), Path::new("/x"));
        if std::env::var_os("SPARK_CONF_DIR").is_none() {
            let from_defaults =
                name_k8s_driver_pod(&k8s, Some(&env), &mut LaunchSpec::default(), AppKind::Batch, 1).unwrap();
            assert!(from_defaults.starts_with("analytics:sparkgate-batch-1-"), "{from_defaults}");
        }
        assert_eq!(properties_value("a=1\nkey: v w \n", "key"), Some("v w".into()));
        assert_eq!(properties_value("keyx 1\n#key 2\n", "key"), None);
        let client = SparkConfig { deploy_mode: "client".into(), ..k8s };
        assert_eq!(name_k8s_driver_pod(&client, None, &mut LaunchSpec::default(), AppKind::Batch, 1), None);
        assert_eq!(
            cluster_kill(&SparkConfig { deploy_mode: "cluster".into(), ..client }, Some(&id), None),
            Some(ClusterKill::SparkSubmit(
                ["--master", "k8s://https://api:6443", "--kill", id.as_str()].map(String::from).to_vec()
            ))
        );
    }

    #[tokio::test]
    async fn a_failed_cluster_kill_says_the_application_may_still_run() {
        // YARN cannot run here: a FAKE yarn command that fails as the real one does.
        let dir = tempfile::tempdir().unwrap();
        let yarn = dir.path().join("yarn");
        let script = "#!/bin/sh\necho \"ticket: $KRB5CCNAME as $HADOOP_PROXY_USER\"\n\
                      echo \"Application with id '$3' doesn't exist in RM.\" >&2\nexit 255\n";
        std::fs::write(&yarn, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&yarn, std::fs::Permissions::from_mode(0o755)).unwrap();
        let config = SparkConfig { yarn_command: yarn, ..SparkConfig::default() };
        let env = SparkEnv {
            launch_ccache: Some("FILE:/data/krb5cc_launch".into()),
            ..SparkEnv::for_test(dir.path(), Path::new("/nonexistent/spark-submit"))
        };
        let log = LogBuffer::new(20, None);
        let kill = ClusterKill::Yarn(["application", "-kill", "application_1_0001"].map(String::from).to_vec());
        run_cluster_kill(&env, &config, kill, Some("carol"), &log).await;
        let lines = log.snapshot().join("\n");
        assert!(lines.contains("application -kill application_1_0001"), "{lines}");
        assert!(lines.contains("doesn't exist in RM"), "{lines}");
        assert!(
            lines.contains("ticket: FILE:/data/krb5cc_launch as carol"),
            "the kill runs with the gateway's ticket, for the application's owner: {lines}"
        );
        assert!(lines.contains("may still run in the cluster"), "{lines}");
        // A command that cannot even start says so too.
        let kill = ClusterKill::SparkSubmit(vec!["--kill".into(), "x".into()]);
        run_cluster_kill(&env, &config, kill, None, &log).await;
        assert!(log.snapshot().last().unwrap().contains("could not run /nonexistent/spark-submit"));
    }

    #[tokio::test]
    async fn output_capture_survives_bad_bytes_and_endless_lines() {
        let log = LogBuffer::new(100, None);
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let on_line: Arc<dyn Fn(&str) + Send + Sync> = {
            let seen = seen.clone();
            Arc::new(move |l: &str| seen.lock().unwrap().push(l.len()))
        };
        let mut input: Vec<u8> = b"before \xff\xfe bad bytes\r\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 150 * 1024));
        input.extend(b"\nINFO Submitted application: after\n");
        read_lines(&input[..], log.clone(), on_line).await;
        let lines = log.snapshot();
        assert_eq!(lines[0], "before \u{fffd}\u{fffd} bad bytes");
        assert!(lines.iter().all(|l| l.len() <= 64 * 1024), "no line grows past the cap");
        assert_eq!(lines.iter().filter(|l| l.starts_with('x')).map(String::len).sum::<usize>(), 150 * 1024);
        assert_eq!(lines.last().unwrap(), "INFO Submitted application: after", "capture goes on after both");
        assert_eq!(seen.lock().unwrap().len(), lines.len());
    }

    #[tokio::test]
    async fn plain_http_exchanges_with_the_standalone_master() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let mut requests = Vec::new();
            for answer in [
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n {\"a\": 1}\n",
                "HTTP/1.1 404 Not Found\r\n\r\n{\"a\": 2}",
                "HTTP/1.1 302 Found\r\nLocation: /\r\n\r\n",
            ] {
                let (mut tcp, _) = listener.accept().await.unwrap();
                let mut buf = vec![0u8; 4096];
                let n = tcp.read(&mut buf).await.unwrap();
                requests.push(String::from_utf8_lossy(&buf[..n]).to_string());
                tcp.write_all(answer.as_bytes()).await.unwrap();
            }
            requests
        });
        let base = format!("http://127.0.0.1:{port}");
        assert_eq!(http_get_json(&format!("{base}/json/")).await, Some(serde_json::json!({"a": 1})));
        assert_eq!(http_get_json(&format!("{base}/json/")).await, None, "only a 200 counts");
        assert_eq!(http_post_form(&format!("{base}/driver/kill/"), "id=d-1&terminate=true").await, Some(302));
        let requests = server.await.unwrap();
        assert!(requests[0].starts_with("GET /json/ HTTP/1.0\r\n"), "{requests:?}");
        assert!(requests[2].starts_with("POST /driver/kill/ HTTP/1.0\r\n"), "{requests:?}");
        assert!(requests[2].ends_with("\r\n\r\nid=d-1&terminate=true"), "{requests:?}");
    }

    #[tokio::test]
    async fn a_relative_venv_is_found_and_made_absolute() {
        // The tests run in the package root, where scripts/setup.sh puts .venv; the drivers
        // run in their own directory, so every path spark-submit gets must be absolute.
        let config = SparkConfig { venv: ".venv".into(), ..SparkConfig::default() };
        let env = SparkEnv::discover(&config, Duration::from_secs(120)).await.unwrap();
        assert!(env.python.is_absolute() && env.python.ends_with(".venv/bin/python"), "{env:?}");
        assert!(env.home.is_absolute() && env.spark_submit.is_absolute(), "{env:?}");
    }

    #[tokio::test]
    async fn a_missing_spark_is_reported_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let config = SparkConfig { venv: dir.path().join("no-venv"), ..SparkConfig::default() };
        let err = SparkEnv::discover(&config, Duration::from_secs(5)).await.unwrap_err().to_string();
        assert!(err.contains("scripts/setup.sh"), "{err}");
        // A Python without pyspark.
        let config = SparkConfig { python: Some("/bin/true".into()), ..SparkConfig::default() };
        let err = SparkEnv::discover(&config, Duration::from_secs(5)).await.unwrap_err().to_string();
        assert!(err.contains("spark-submit not found"), "{err}");
        let config =
            SparkConfig { home: Some(dir.path().into()), python: Some("/bin/true".into()), ..SparkConfig::default() };
        let err = SparkEnv::discover(&config, Duration::from_secs(5)).await.unwrap_err().to_string();
        assert!(err.contains("is spark.home"), "{err}");
    }

    #[test]
    fn log_lines_are_bounded_and_never_span_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let log = LogBuffer::new(10, Some(&path));
        log.push(format!("sparkgate: driver error: {}", "é".repeat(100_000)));
        log.push("first\nINFO forged line\r\nthird");
        let lines = log.snapshot();
        assert!(lines[0].len() <= MAX_LOG_LINE_BYTES && lines[0].ends_with('…'), "{}", lines[0].len());
        assert_eq!(&lines[1..], ["first", "INFO forged line", "third"]);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 4, "the file holds the same entries, one per line");
        assert_eq!(clip_text("abc", 3), "abc");
        assert_eq!(clip_text("abcdef", 5), "ab…");
    }

    #[test]
    fn a_log_is_bounded_in_bytes_in_memory_and_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("batch.log");
        let log = LogBuffer::create(1000, &path, 1 << 20).unwrap();
        let line = "x".repeat(60_000);
        for _ in 0..200 {
            log.push(line.clone()); // 12 MB of output
        }
        let kept = log.snapshot();
        assert!(kept.iter().map(String::len).sum::<usize>() <= MAX_LOG_TAIL_BYTES, "{}", kept.len());
        assert_eq!(kept.len(), MAX_LOG_TAIL_BYTES / 60_000, "the newest lines are kept");
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(size <= (1 << 20) + 200, "the file stops at its limit: {size}");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.lines().last().unwrap().contains("size limit"), "and says so");
        // A page is copied, not the whole tail.
        let (from, total, page) = log.window(|total| total - 2..total + 5);
        assert_eq!((from, total, page.len()), (kept.len() - 2, kept.len(), 2));
        assert!(LogBuffer::create(10, &path, 1 << 20).is_err(), "an existing log is never reopened");
    }

    #[test]
    fn log_buffer_is_bounded_and_mirrored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let log = LogBuffer::new(3, Some(&path));
        for i in 0..5 {
            log.push(format!("line {i}"));
        }
        assert_eq!(log.snapshot(), vec!["line 2", "line 3", "line 4"]);
        assert_eq!(log.tail(2), vec!["line 3", "line 4"]);
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 5);
    }

    #[tokio::test]
    async fn processes_an_earlier_run_left_behind_are_stopped_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let spawn = |arg: std::path::PathBuf, own_group: bool| {
            let mut cmd = std::process::Command::new("sh");
            // `$0` is the path: it shows in /proc/<pid>/cmdline as a driver's files would.
            cmd.args(["-c", "sleep 600 & wait"]).arg(arg);
            if own_group {
                use std::os::unix::process::CommandExt;
                cmd.process_group(0);
            }
            cmd.spawn().unwrap()
        };
        let mut orphan = spawn(data.join("sessions/3/spark-launch.properties"), true);
        let mut batch = spawn(data.join("batches/12/batch.log"), true);
        let mut bystander = spawn(dir.path().join("elsewhere/sessions/3/x"), true);
        let mut other_files = spawn(data.join("state/next-session-id"), true);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(stop_orphans(&data), 2);
        for child in [&mut orphan, &mut batch] {
            let status = child.wait().unwrap();
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(status.signal(), Some(9));
        }
        assert!(!group_alive(orphan.id() as i32) && !group_alive(batch.id() as i32), "their children go too");
        for child in [&mut bystander, &mut other_files] {
            assert!(child.try_wait().unwrap().is_none(), "unrelated processes live on");
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(bystander.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(other_files.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }

    #[tokio::test]
    async fn process_group_is_killed_whole() {
        // A shell that starts a grandchild in the same group stands in for spark-submit's JVM
        // and its Python driver.
        // The second grandchild leaves the group, as PySpark's worker daemon does.
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "sleep 300 & setsid sleep 301 & sleep 300"]).process_group(0).kill_on_drop(true);
        let mut child = cmd.spawn().unwrap();
        let pgid = child.id().unwrap() as i32;
        let (tx, rx) = tokio::sync::watch::channel(None);
        tokio::spawn(async move {
            let _ = child.wait().await;
            let _ = tx.send(Some(0));
        });
        let handle = ProcessHandle { pgid, exited: rx };
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(handle.group_alive());
        let escaped = descendants_of_group(pgid);
        assert_eq!(escaped.len(), 1, "the setsid child is found through its parent");
        handle.kill_group(Duration::from_secs(2)).await;
        assert!(!handle.group_alive());
        assert!(!pid_alive(escaped[0]), "the escaped descendant is stopped too");
        handle.wait().await;
        assert!(handle.has_exited());
    }
}
