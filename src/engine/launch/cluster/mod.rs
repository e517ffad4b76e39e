//! The cluster managers: the conf a launch gets for each (tags on YARN, labels on Kubernetes,
//! waiting for the driver in standalone cluster mode) and stopping an application whose driver
//! runs in the cluster. What is particular to one manager is in its own file.

mod k8s;
mod standalone;
mod yarn;

pub use k8s::name_k8s_driver_pod;
pub use standalone::{
    app_id_in_master_status, driver_state_in_master_status, find_driver_id, http_get_json, http_post_form,
};
pub use yarn::{tag_yarn_launch, yarn_app_by_tag};

use super::{AppKind, LogBuffer, SparkEnv};
use crate::config::SparkConfig;
use crate::engine::app_id::AppIdFormat;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
