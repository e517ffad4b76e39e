//! The bubblewrap sandbox that local and client-mode drivers run in (sessions and batches, with
//! their local executors, Python workers and anything they start): a private mount namespace
//! that shows the system, Spark, Python and Java read-only, the launch's own directory, and
//! nothing of the gateway's data directory, keys, policies, audit trail or other sessions.
//!
//! What a sandboxed driver sees (README, "Where user code runs", documents the same list):
//!
//! - read-only: `/usr` and the merged-/usr links (`/bin`, `/lib`, ...), the few `/etc` files
//!   Java, Python, DNS, TLS and Kerberos clients read ([`ETC_ENTRIES`]; not `/etc/ssl/private`,
//!   not `/etc/shadow`, no keytab), the Spark home, the Python installation (the venv and the
//!   base installation it points at), `JAVA_HOME`, `spark.allowed_local_dirs`,
//!   `HADOOP_CONF_DIR` / `YARN_CONF_DIR` / `SPARK_CONF_DIR` / `KRB5_CONFIG` when set, and
//!   `spark.sandbox_read_only_paths`;
//! - the launch's own directory (`<data_dir>/sessions/<id>` or `<data_dir>/batches/<id>`)
//!   read-only, with its `work/` directory (HOME, working directory, Spark and Python scratch)
//!   and a session's `repl-classes/` writable;
//! - the Kerberos credential cache the launch is given (`KRB5CCNAME`), and for a launch as the
//!   gateway's own principal the launch keytab, read-only: the driver logs in with them, as
//!   in Livy;
//! - a private `/tmp` and `/dev/shm` (small tmpfs), a minimal `/dev`, and a `/proc` of its own
//!   PID namespace (the gateway's `/proc/<pid>/root` would otherwise show every file).
//!
//! The network is shared (cluster managers reach drivers); a session's driver reaches the
//! gateway through a Unix socket in its own `work/` (see `crate::rpc::server`), not the shared
//! TCP RPC port.
//! No `--die-with-parent`: drivers outlive a gateway crash so that a restarted gateway can
//! reconnect them.
//!
//! Processes: each sandbox is a session and a process group of its own — its supervisor's (see
//! `launch::supervisor`), which runs `bwrap` in it, or, without one, `setsid bwrap ...` — without
//! a controlling terminal (so code inside cannot read or inject keystrokes into the terminal
//! the gateway was started from). The group holds `bwrap`, the init process of the
//! sandbox's PID namespace and, unless they leave it, everything inside; killing the group
//! kills that init process, and with it the kernel kills every process in the namespace, also
//! those that left the group (PySpark's daemon).

use super::launch::{LaunchSpec, SparkEnv};
use crate::config::Config;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;

/// Why the sandbox cannot be used; the gateway does not start without it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// `setsid` (util-linux) is not on the gateway's PATH.
    #[error(
        "spark.local_sandbox = \"bwrap\", but `setsid` (util-linux) is not on PATH: it starts each sandbox in a \
         session of its own"
    )]
    NoSetsid,
    /// `bwrap` is not on the gateway's PATH.
    #[error(
        "spark.local_sandbox = \"bwrap\", but bubblewrap is not installed (no `bwrap` on PATH): install the \
         Debian package `bubblewrap` (scripts/setup.sh does), or set spark.local_sandbox = \"dangerous_off\" to \
         run user code with every file the gateway's account can reach"
    )]
    NotInstalled,
    /// `bwrap` is there but could not build the sandbox on this host.
    #[error(
        "spark.local_sandbox = \"bwrap\", but bubblewrap could not run Python in the sandbox: {0}. It needs \
         bubblewrap 0.8 or newer and, for a gateway that is not root, unprivileged user namespaces; or set \
         spark.local_sandbox = \"dangerous_off\""
    )]
    Unusable(String),
    /// The Python installation could not be asked where it lives.
    #[error("spark.local_sandbox: cannot ask {python} where its installation lives: {why}")]
    Python {
        /// The Python of the Spark environment.
        python: PathBuf,
        /// What went wrong.
        why: String,
    },
    /// A directory the sandbox shows read-only holds the gateway's own files.
    #[error(
        "spark.local_sandbox: {source_name} would show {shown} to user code, and that overlaps {private} \
         ({path}); keep the gateway's files apart from the directories the sandbox shows"
    )]
    Exposes {
        /// Where the read-only directory comes from (a configuration key or an installation).
        source_name: &'static str,
        /// The read-only directory.
        shown: String,
        /// Which private file or directory it would show.
        private: &'static str,
        /// Its path.
        path: String,
    },
}

/// `/etc` entries a driver may need, shown read-only when they exist: user and host lookups,
/// DNS, time zone, the dynamic linker, the `java` alternatives and Java's configuration, public
/// CA certificates, Kerberos and GSSAPI client configuration, Python's site configuration.
/// Deliberately absent: `/etc/shadow`, `/etc/ssl/private`, keytabs, `/etc/sparkgate`, and
/// everything else.
pub const ETC_ENTRIES: &[&str] = &[
    "passwd",
    "group",
    "nsswitch.conf",
    "hosts",
    "host.conf",
    "hostname",
    "resolv.conf",
    "gai.conf",
    "services",
    "protocols",
    "networks",
    "localtime",
    "timezone",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "alternatives",
    "ssl/certs",
    "ssl/openssl.cnf",
    "ca-certificates",
    "pki/tls/certs",
    "pki/ca-trust",
    "krb5.conf",
    "krb5.conf.d",
    "gss",
    "mime.types",
    "os-release",
    "locale.alias",
];

/// `/etc` directories shown when their name starts with one of these (`java-17-openjdk`,
/// `python3.11`).
const ETC_PREFIXES: &[&str] = &["java-", "python3"];

/// Top-level system directories: bound read-only, or recreated as the links they are on a
/// merged-/usr system.
const SYSTEM_DIRS: &[&str] = &["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// Size caps of the private tmpfs mounts: memory, so small; Spark's and Python's scratch go to
/// the launch's `work/` directory on disk instead (`SPARK_LOCAL_DIRS`, `TMPDIR`).
const TMP_BYTES: u64 = 512 * 1024 * 1024;
const SHM_BYTES: u64 = 256 * 1024 * 1024;

/// The sandbox as found and checked at start-up: the `setsid` and `bwrap` programs and what
/// every launch sees read-only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    setsid: PathBuf,
    bwrap: PathBuf,
    /// `(link, target)` of merged-/usr links such as `/bin -> usr/bin`.
    links: Vec<(PathBuf, PathBuf)>,
    /// Read-only paths, each shown at its own path, with where it comes from.
    read_only: Vec<(PathBuf, &'static str)>,
}

/// What one launch sees besides the shared read-only list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confinement {
    /// The launch's directory (absolute), shown read-only: its driver configuration, Spark
    /// properties, driver program and uploads are the gateway's, and stay as it wrote them.
    pub dir: PathBuf,
    /// `<dir>/work`: writable; HOME, the working directory and the scratch space.
    pub work: PathBuf,
    /// More writable directories inside `dir` (a session's REPL class directory).
    pub writable: Vec<PathBuf>,
    /// Files outside `dir` this launch needs read-only (the launch keytab).
    pub read_only: Vec<PathBuf>,
}

impl Confinement {
    /// The confinement of a launch in `dir`: creates `<dir>/work` (0700).
    ///
    /// Why only `work/` is writable and not the whole directory: the gateway itself later
    /// reads and writes files in `dir` (a batch's log, a session's uploads). Were `dir`
    /// writable, user code could replace them with symbolic links to the gateway's keys or
    /// policies, and the gateway would follow them.
    pub fn new(dir: &Path) -> std::io::Result<Self> {
        let dir = std::path::absolute(dir)?;
        let work = dir.join("work");
        crate::fs::create_private_dir(&work).map_err(std::io::Error::other)?;
        let dir = dir.canonicalize()?;
        let work = dir.join("work");
        Ok(Self { dir, work, writable: Vec::new(), read_only: Vec::new() })
    }

    /// Also lets the driver write `path` (inside [`Confinement::dir`]).
    pub fn writable(mut self, path: &Path) -> Self {
        self.writable.push(path.canonicalize().unwrap_or_else(|_| path.to_path_buf()));
        self
    }

    /// Shows the launch keytab read-only when spark-submit gets `--keytab` (a launch as the
    /// gateway's own principal, see [`super::launch::launch_keytab`]): the driver logs in
    /// with it.
    pub fn with_launch_keytab(mut self, config: &crate::config::SparkConfig, spec: &LaunchSpec) -> Self {
        if let Some(keytab) = super::launch::launch_keytab(config, spec) {
            self.read_only.push(keytab.to_path_buf());
        }
        self
    }
}

impl Sandbox {
    /// Finds `bwrap`, works out what drivers may see, refuses a list that would show the
    /// gateway's own files, and checks that the sandbox really runs this Spark's Python.
    /// `None` when drivers are not sandboxed: `spark.local_sandbox = "dangerous_off"`, or
    /// cluster deploy mode (drivers run in the cluster's containers).
    pub async fn discover(config: &Config, env: &SparkEnv, timeout: Duration) -> Result<Option<Self>, SandboxError> {
        let spark = &config.spark;
        if spark.local_sandbox == "dangerous_off" || spark.deploy_mode == "cluster" {
            return Ok(None);
        }
        let vars = env.base_env(&spark.pass_env);
        let path_var = vars.get("PATH").map(String::as_str).unwrap_or("/usr/bin:/bin");
        let bwrap = find_on_path("bwrap", path_var).ok_or(SandboxError::NotInstalled)?;
        let setsid = find_on_path("setsid", path_var).ok_or(SandboxError::NoSetsid)?;
        let mut shown: Vec<(PathBuf, &'static str)> = Vec::new();
        shown.push((env.home.clone(), "the Spark home"));
        for prefix in python_prefixes(&env.python, timeout).await? {
            shown.push((prefix, "the Python installation"));
        }
        if let Some(java) = java_home(env, &vars) {
            shown.push((java, "JAVA_HOME"));
        }
        shown.extend(spark.allowed_local_dirs.iter().map(|d| (d.clone(), "spark.allowed_local_dirs")));
        for name in ["HADOOP_CONF_DIR", "YARN_CONF_DIR", "SPARK_CONF_DIR"] {
            if let Some(dir) = vars.get(name).filter(|d| !d.is_empty()) {
                shown.push((PathBuf::from(dir), "HADOOP_CONF_DIR, YARN_CONF_DIR or SPARK_CONF_DIR"));
            }
        }
        if let Some(files) = vars.get("KRB5_CONFIG") {
            shown.extend(files.split(':').filter(|f| !f.is_empty()).map(|f| (PathBuf::from(f), "KRB5_CONFIG")));
        }
        shown.extend(spark.sandbox_read_only_paths.iter().map(|p| (p.clone(), "spark.sandbox_read_only_paths")));
        let sandbox = Self::from_parts(bwrap, setsid, Path::new("/"), shown);
        sandbox.refuse_exposure(&private_paths(config))?;
        sandbox.check(&env.python, timeout).await?;
        Ok(Some(sandbox))
    }

    /// A sandbox run by `bwrap` (started through `setsid`) over the system directories and
    /// `/etc` entries found under
    /// `root` (`/` outside tests) and the read-only paths `shown`, each shown at the path given
    /// and, when that differs, at its real path too (a venv reached through a symbolic link);
    /// duplicates and paths inside another one are dropped.
    pub fn from_parts(bwrap: PathBuf, setsid: PathBuf, root: &Path, shown: Vec<(PathBuf, &'static str)>) -> Self {
        let mut links = Vec::new();
        let mut read_only: Vec<(PathBuf, &'static str)> = Vec::new();
        for name in SYSTEM_DIRS {
            let path = root.join(name);
            match std::fs::symlink_metadata(&path) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    if let Ok(target) = std::fs::read_link(&path) {
                        links.push((Path::new("/").join(name), target));
                    }
                }
                Ok(meta) if meta.is_dir() => read_only.push((Path::new("/").join(name), "the system")),
                _ => {}
            }
        }
        let etc = root.join("etc");
        let mut etc_names: Vec<String> = ETC_ENTRIES.iter().map(|e| e.to_string()).collect();
        if let Ok(entries) = std::fs::read_dir(&etc) {
            let mut extra: Vec<String> = entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| ETC_PREFIXES.iter().any(|p| n.starts_with(p)))
                .collect();
            extra.sort();
            etc_names.extend(extra);
        }
        for name in etc_names {
            if etc.join(&name).exists() {
                read_only.push((Path::new("/etc").join(name), "the system's /etc"));
            }
        }
        for (path, source) in shown {
            let Ok(path) = std::path::absolute(&path) else { continue };
            // A path missing now is still listed (bound only if it exists at launch).
            let real = path.canonicalize().unwrap_or_else(|_| path.clone());
            for candidate in [path, real] {
                if !read_only.iter().any(|(p, _)| *p == candidate) {
                    read_only.push((candidate, source));
                }
            }
        }
        // A path inside another one is shown by it already.
        let all: Vec<PathBuf> = read_only.iter().map(|(p, _)| p.clone()).collect();
        read_only.retain(|(p, _)| !all.iter().any(|other| other != p && p.starts_with(other)));
        Self { setsid, bwrap, links, read_only }
    }

    /// The program a confined launch runs: `setsid`, with [`Sandbox::argv`] as its arguments.
    pub fn program(&self) -> &Path {
        &self.setsid
    }

    /// The read-only paths every launch sees.
    pub fn read_only_paths(&self) -> impl Iterator<Item = &Path> {
        self.read_only.iter().map(|(p, _)| p.as_path())
    }

    /// Refuses a read-only list that contains one of the gateway's own files or directories,
    /// or a part of one (`<data_dir>/sessions` would show every session).
    fn refuse_exposure(&self, private: &[(&'static str, PathBuf)]) -> Result<(), SandboxError> {
        for (what, path) in private {
            let real = path.canonicalize().unwrap_or_else(|_| path.clone());
            for (shown, source_name) in &self.read_only {
                let real_shown = shown.canonicalize().unwrap_or_else(|_| shown.clone());
                let overlap = |a: &Path, b: &Path| a.starts_with(b) || b.starts_with(a);
                if overlap(&real, &real_shown) || overlap(path, shown) {
                    return Err(SandboxError::Exposes {
                        source_name,
                        shown: shown.display().to_string(),
                        private: what,
                        path: path.display().to_string(),
                    });
                }
            }
        }
        Ok(())
    }

    /// The namespaces and mounts every sandbox has, in mount order: private `/tmp` first (so
    /// that paths under it can be bound on top), then `/dev`, `/proc`, the system and the
    /// read-only list.
    fn base_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![self.bwrap.clone().into_os_string()];
        args.extend(
            [
                // Own user, PID and IPC namespaces: no capability (also when the gateway is root),
                // no view of other processes, no shared memory with them. (No --new-session: setsid
                // has made the session already, and the namespace's init must stay in the group.)
                "--unshare-user",
                "--unshare-pid",
                "--unshare-ipc",
                "--cap-drop",
                "ALL",
                "--size",
                &TMP_BYTES.to_string(),
                "--tmpfs",
                "/tmp",
                "--dev",
                "/dev",
                "--size",
                &SHM_BYTES.to_string(),
                "--tmpfs",
                "/dev/shm",
                "--proc",
                "/proc",
            ]
            .iter()
            .map(OsString::from),
        );
        for (link, target) in &self.links {
            args.extend([OsString::from("--symlink"), target.into(), link.into()]);
        }
        for (path, _) in &self.read_only {
            args.extend([OsString::from("--ro-bind-try"), path.into(), path.into()]);
        }
        args
    }

    /// The arguments of [`Sandbox::program`] (`bwrap` and its options, up to and including `--`)
    /// that run a launch confined to `c`, with
    /// the environment `vars` it is given: the credential cache that `KRB5CCNAME` names is
    /// shown read-only.
    pub fn argv(&self, c: &Confinement, vars: &BTreeMap<String, String>) -> Vec<OsString> {
        let mut args = self.base_args();
        let mut bind = |flag: &str, path: &Path| args.extend([flag.into(), path.into(), path.into()]);
        bind("--ro-bind", &c.dir);
        bind("--bind", &c.work);
        for dir in &c.writable {
            bind("--bind", dir);
        }
        for file in &c.read_only {
            bind("--ro-bind-try", file);
        }
        if let Some(ccache) = vars.get("KRB5CCNAME").and_then(|v| ccache_path(v)) {
            bind("--ro-bind-try", &ccache);
        }
        // Nothing may be created outside the mounts above: the root and /dev are memory.
        for mount in ["/dev", "/"] {
            args.extend(["--remount-ro".into(), mount.into()]);
        }
        args.extend(["--chdir".into(), c.work.clone().into_os_string(), "--".into()]);
        args
    }

    /// The environment a confined launch gets on top of its own: HOME and every scratch
    /// directory in `work/`, on disk (Spark spills and shuffles there) and removed with the
    /// session.
    pub fn environment(c: &Confinement) -> [(String, String); 3] {
        let work = c.work.display().to_string();
        [("HOME".into(), work.clone()), ("TMPDIR".into(), work.clone()), ("SPARK_LOCAL_DIRS".into(), work)]
    }

    /// Spark properties for a confined launch: Ivy's cache (`--packages`) in `work/`, since
    /// Java's home directory is the account's, which the sandbox does not show. Kept when the
    /// operator or the request set one.
    pub fn add_launch_conf(c: &Confinement, config: &crate::config::SparkConfig, spec: &mut LaunchSpec) {
        const IVY: &str = "spark.jars.ivy";
        if !spec.submit.conf.contains_key(IVY) && !config.conf.contains_key(IVY) {
            spec.cluster_conf.insert(IVY.into(), c.work.join(".ivy2").display().to_string());
        }
    }

    /// Runs `python -c "import pyspark"` in a sandbox like a launch's: proves that bwrap works
    /// here and that the Spark and Python installations are visible in it.
    async fn check(&self, python: &Path, timeout: Duration) -> Result<(), SandboxError> {
        let mut cmd = Command::new(&self.setsid);
        cmd.args(self.base_args())
            .args(["--remount-ro", "/dev", "--remount-ro", "/", "--"])
            .arg(python)
            .args(["-c", "import pyspark"])
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let out = match tokio::time::timeout(timeout, cmd.output()).await {
            Err(_) => return Err(SandboxError::Unusable(format!("the check did not finish within {timeout:?}"))),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => return Err(SandboxError::NotInstalled),
            Ok(Err(e)) => return Err(SandboxError::Unusable(format!("cannot run {}: {e}", self.setsid.display()))),
            Ok(Ok(out)) => out,
        };
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        Err(SandboxError::Unusable(format!("{} ({})", last[last.len().saturating_sub(3)..].join(" | "), out.status)))
    }
}

/// The gateway's own files and directories, which no read-only path may contain.
fn private_paths(config: &Config) -> Vec<(&'static str, PathBuf)> {
    let mut private =
        vec![("server.data_dir", config.server.data_dir.clone()), ("acl.policy_dir", config.acl.policy_dir.clone())];
    let optional = [
        ("audit.path", &config.audit.path),
        ("tls.key", &config.tls.key),
        ("auth.spnego.keytab", &config.auth.spnego.keytab),
        ("spark.launch_keytab", &config.spark.launch_keytab),
        ("acl.groups_file", &config.acl.groups_file),
    ];
    private.extend(optional.into_iter().filter_map(|(what, path)| path.clone().map(|p| (what, p))));
    private.into_iter().filter_map(|(what, path)| std::path::absolute(&path).ok().map(|p| (what, p))).collect()
}

/// The file (or directory) a `KRB5CCNAME` value names: `FILE:<path>`, `DIR:<path>` or a bare
/// absolute path. Other cache types (KEYRING, KCM, MEMORY) have no path to show.
fn ccache_path(value: &str) -> Option<PathBuf> {
    let path = value.strip_prefix("FILE:").or_else(|| value.strip_prefix("DIR:")).unwrap_or(value);
    let path = path.strip_prefix(':').unwrap_or(path);
    path.starts_with('/').then(|| PathBuf::from(path))
}

/// `name` in the directories of `path_var`, if one holds it.
fn find_on_path(name: &str, path_var: &str) -> Option<PathBuf> {
    path_var.split(':').filter(|d| !d.is_empty()).map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

/// `sys.prefix`, `sys.base_prefix` and the exec prefixes of `python`: a venv and the
/// installation it was made from (a pyenv under a home directory, say).
async fn python_prefixes(python: &Path, timeout: Duration) -> Result<Vec<PathBuf>, SandboxError> {
    let err = |why: String| SandboxError::Python { python: python.to_path_buf(), why };
    let mut cmd = Command::new(python);
    cmd.args([
        "-c",
        "import sys\nfor p in {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}: print(p)",
    ])
    .env_clear()
    .env("PATH", "/usr/local/bin:/usr/bin:/bin")
    .stdin(Stdio::null())
    .kill_on_drop(true);
    let out = tokio::time::timeout(timeout, cmd.output())
        .await
        .map_err(|_| err(format!("no answer within {timeout:?}")))?
        .map_err(|e| err(e.to_string()))?;
    if !out.status.success() {
        return Err(err(format!("it exited with {}", out.status)));
    }
    let mut prefixes: Vec<PathBuf> =
        String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with('/')).map(PathBuf::from).collect();
    prefixes.sort();
    Ok(prefixes)
}

/// The Java installation spark-submit will use: `spark.java_home`, else `JAVA_HOME`, else the
/// one `java` on PATH resolves to.
fn java_home(env: &SparkEnv, vars: &BTreeMap<String, String>) -> Option<PathBuf> {
    if let Some(home) = &env.java_home {
        return Some(home.clone());
    }
    if let Some(home) = vars.get("JAVA_HOME").filter(|h| !h.is_empty()) {
        return Some(PathBuf::from(home));
    }
    let java = find_on_path("java", vars.get("PATH")?)?.canonicalize().ok()?;
    Some(java.parent()?.parent()?.to_path_buf())
}

#[cfg(test)]
mod tests;
