//! The gateway's own Kerberos credentials for launches: the ticket `kinit` gets from the launch
//! keytab (for launches with `--proxy-user`) and the keytab spark-submit gets itself (for
//! launches as the gateway's principal).

use super::{last_lines, LaunchSpec, SparkEnv};
use crate::config::SparkConfig;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;

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

/// The keytab spark-submit gets with `--keytab`: the launch keytab, for a launch as the
/// gateway's own principal (no `--proxy-user`).
pub fn launch_keytab<'a>(config: &'a SparkConfig, spec: &LaunchSpec) -> Option<&'a Path> {
    match (&config.launch_principal, &config.launch_keytab, &spec.submit.proxy_user) {
        (Some(_), Some(keytab), None) => Some(keytab.as_path()),
        _ => None,
    }
}

/// `KRB5CCNAME` for a launch with `--proxy-user` when the gateway has a launch ticket.
pub fn launch_ticket_env(env: &SparkEnv, spec: &LaunchSpec) -> Option<(String, String)> {
    spec.submit.proxy_user.as_ref()?;
    env.launch_ccache.clone().map(|cc| ("KRB5CCNAME".to_string(), cc))
}
