//! The one recipe by which a session's driver and a batch are started, in one order for both:
//! the gateway's tags and labels, the Kubernetes driver pod's name, the YARN tag, the Spark
//! UI's filter, the local RPC secret, the sandbox's view and conf, the owner-only properties
//! file, the environment, then spark-submit. [`prepare`] does everything but start the process
//! and says what the caller must record (where the driver runs, the YARN tag) before
//! [`Prepared::spawn`] starts it — so a stop that comes at once can already find it.

use super::launch::{self, AppKind, LaunchSpec, LogBuffer, ProcessHandle, SparkEnv};
use super::sandbox::{Confinement, Sandbox};
use super::EngineError;
use crate::config::SparkConfig;
use crate::sparkui::AppUi;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;
use std::sync::Arc;

/// A new launch's log at `path` (which must not exist yet): followed when launches run under
/// the supervisor (it writes the output there), else written from the pipes.
pub fn launch_log(
    spark: Option<&SparkEnv>,
    sessions: &crate::config::SessionsConfig,
    path: &Path,
) -> std::io::Result<Arc<LogBuffer>> {
    if spark.is_some_and(|s| s.supervisor.is_some()) {
        LogBuffer::follow(sessions.log_tail_lines, path, sessions.max_log_file_bytes, true)
    } else {
        LogBuffer::create(sessions.log_tail_lines, path, sessions.max_log_file_bytes)
    }
}

/// A launch with its files written, not yet started.
#[derive(Debug)]
pub struct Prepared {
    /// Kubernetes cluster mode: the driver pod the gateway named (`<namespace>:<pod>`).
    pub cluster_driver: Option<String>,
    /// YARN: this launch's unique application tag.
    pub yarn_tag: Option<String>,
    args: Vec<OsString>,
    env: BTreeMap<String, String>,
    confinement: Confinement,
}

/// Prepares the launch of `spec` for application `kind` `id`, whose files live in `dir`
/// (read-only to it inside the sandbox, see `confinement`); `env` is what the caller adds to
/// spark-submit's environment.
#[allow(clippy::too_many_arguments)]
pub fn prepare(
    spark: &SparkEnv,
    config: &SparkConfig,
    kind: AppKind,
    id: u32,
    dir: &Path,
    mut spec: LaunchSpec,
    confinement: Confinement,
    ui: &AppUi,
    mut env: BTreeMap<String, String>,
) -> Result<Prepared, EngineError> {
    spec.cluster_conf.extend(launch::cluster_conf(config, kind, id));
    // Kubernetes: the driver pod gets a name of the gateway's, so a stop can kill it (our
    // spark-submit's death does not).
    let cluster_driver = launch::name_k8s_driver_pod(config, Some(spark), &mut spec, kind, id);
    // YARN: a tag of its own, so a stop finds the application without the driver's word.
    let yarn_tag = launch::tag_yarn_launch(config, &mut spec);
    // The Spark UI answers only the gateway's proxy (see crate::sparkui).
    let ui = crate::sparkui::launch_settings(config, Some(spark), &spec.submit.conf, ui);
    spec.cluster_conf.extend(ui.conf);
    spec.cluster_conf.extend(launch::local_rpc_auth(config));
    let confinement = confinement.with_launch_keytab(config, &spec);
    if spark.sandbox.is_some() {
        Sandbox::add_launch_conf(&confinement, config, &mut spec);
    }
    let args = launch::write_launch_files(config, &spec, dir).map_err(EngineError::Launch)?;
    env.extend(launch::launch_ticket_env(spark, &spec));
    env.extend(ui.env);
    Ok(Prepared { cluster_driver, yarn_tag, args, env, confinement })
}

impl Prepared {
    /// Starts spark-submit (see [`launch::spawn`]): output into `log`, each line to `on_line`.
    pub fn spawn(
        self,
        spark: &SparkEnv,
        config: &SparkConfig,
        log: Arc<LogBuffer>,
        on_line: Arc<dyn Fn(&str) + Send + Sync>,
    ) -> Result<ProcessHandle, EngineError> {
        launch::spawn(spark, &config.pass_env, self.args, self.env, &self.confinement, log, on_line)
            .map_err(|e| EngineError::Launch(format!("spawning {}: {e}", spark.spark_submit.display())))
    }
}
