//! Finding Spark at start-up: SPARK_HOME, spark-submit, the Python and Java to use, checked by
//! running `spark-submit --version`; the allow-listed environment every launch starts from; and
//! values from the `spark-defaults.conf` spark-submit reads.

use super::last_lines;
use crate::config::SparkConfig;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
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
    /// `--proxy-user` (see [`LaunchTicket`](super::LaunchTicket)); None without a launch principal.
    pub launch_ccache: Option<String>,
    /// The sandbox local and client-mode drivers run in; None when they are not sandboxed
    /// (cluster deploy mode, `spark.local_sandbox = "dangerous_off"`).
    pub sandbox: Option<crate::engine::sandbox::Sandbox>,
    /// The `sparkgate` program each launch runs under (`sparkgate supervise`, see
    /// [`super::supervisor`]); None runs spark-submit directly, its output through pipes, and
    /// a launch dies with the gateway (unit tests).
    pub supervisor: Option<PathBuf>,
}

/// The program launches run under: `spark.supervisor`, else this program when it is the
/// `sparkgate` binary (not when the gateway is a library inside another program, a test).
fn supervisor_program(config: &SparkConfig) -> Option<PathBuf> {
    if let Some(path) = &config.supervisor {
        return Some(std::path::absolute(path).unwrap_or_else(|_| path.clone()));
    }
    let exe = std::env::current_exe().ok()?;
    (exe.file_name()? == "sparkgate").then_some(exe)
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
            supervisor: None,
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
            supervisor: supervisor_program(config),
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

/// A key's value in the `spark-defaults.conf` spark-submit reads (`$SPARK_CONF_DIR`, else
/// `<SPARK_HOME>/conf`), if set there.
pub fn spark_defaults_value(env: &SparkEnv, key: &str) -> Option<String> {
    let dir = std::env::var_os("SPARK_CONF_DIR").map_or_else(|| env.home.join("conf"), PathBuf::from);
    let text = std::fs::read_to_string(dir.join("spark-defaults.conf")).ok()?;
    properties_value(&text, key)
}

/// A key's value in properties text as spark-defaults.conf writes it (`key value`, `key=value`
/// or `key: value`; `#` and `!` start comments), trimmed as Spark trims it.
pub(super) fn properties_value(text: &str, key: &str) -> Option<String> {
    text.lines().map(str::trim_start).filter(|l| !l.starts_with(['#', '!'])).find_map(|line| {
        let end = line.find(|c: char| c.is_whitespace() || c == '=' || c == ':')?;
        let rest = line[end..].trim_start();
        let rest = rest.strip_prefix(['=', ':']).unwrap_or(rest);
        (&line[..end] == key).then(|| rest.trim().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::launch::{launch_ticket_env, LaunchSpec};

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
            supervisor: None,
        };
        let vars = env.base_env(&[]);
        assert!(!vars.contains_key("KRB5CCNAME"), "the launch ticket goes only to proxied launches");
        let mine = LaunchSpec { name: "n".into(), app: "x.py".into(), ..LaunchSpec::default() };
        assert_eq!(launch_ticket_env(&env, &mine), None);
        let theirs = LaunchSpec {
            submit: crate::engine::SubmitSpec { proxy_user: Some("alice".into()), ..mine.submit.clone() },
            ..mine
        };
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
}
