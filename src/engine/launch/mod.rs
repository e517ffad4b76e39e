//! Builds and runs `spark-submit`: an argument vector (never a shell string), an environment
//! from an allow-list, its own process group, output into a bounded tail and a log file.
//! Secrets never go on the command line.
//!
//! One file per concern: `discovery` finds Spark and reads its defaults, `kerberos` holds the
//! gateway's launch credentials, `submit` writes spark-submit's argument vector and owner-only
//! properties file, `log` keeps a process's output, `process` owns process groups (and what an
//! earlier run left behind), `cluster` speaks to the cluster managers (tags, labels, kills).
//! This file holds what a launch is described by and the entry that starts one, [`spawn`].

mod cluster;
mod discovery;
mod kerberos;
mod log;
mod process;
mod submit;
pub mod supervisor;

pub use cluster::{
    app_id_in_master_status, cluster_conf, cluster_kill, driver_state_in_master_status, find_driver_id, http_get_json,
    http_post_form, name_k8s_driver_pod, run_cluster_kill, tag_yarn_launch, yarn_app_by_tag, ClusterKill,
};
pub use discovery::{spark_defaults_value, SparkCheckError, SparkEnv};
pub use kerberos::{launch_keytab, launch_ticket_env, LaunchTicket};
pub use log::{clip_text, LogBuffer, MAX_LOG_LINE_BYTES, MAX_LOG_TAIL_BYTES};
pub use process::{
    descendants_of_group, group_alive, processes_of_group_tree, stop_orphans, ExitCode, ProcessHandle, ProcessIdentity,
};
pub use submit::{build_args, local_rpc_auth, properties_text, spark_properties, write_launch_files, PROPERTIES_FILE};

use super::spec::SubmitSpec;
use log::read_lines;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::process::Stdio;
use std::sync::Arc;
use tokio::process::Command;

/// What one launch asks for, from the request and the configuration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LaunchSpec {
    /// `--name`.
    pub name: String,
    /// `--class` (batches of a jar).
    pub class_name: Option<String>,
    /// What the request asked for: `--proxy-user`, `--queue`, resources, files and the
    /// request's Spark conf (applied over the configured defaults). Its `name` is not used:
    /// `name` above is what spark-submit is given.
    pub submit: SubmitSpec,
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

/// Starts spark-submit in its own process group, inside the sandbox confined to `confinement`
/// when the environment has one. Output lines go to `log`; `on_line` sees each line too (to
/// find the application id); `exited` is set when it ends.
///
/// With a supervisor (see [`supervisor`]) and a followed log, the supervisor leads the group
/// and writes the output into the log file, which is followed from here: nothing of the launch
/// depends on the gateway staying up. Sandboxed, the supervisor runs `bwrap` in its group.
/// Without (unit tests), the output comes through pipes; sandboxed, `setsid` makes the group (a
/// session without a terminal) and execs `bwrap`. Either way the group holds bwrap, the init
/// process of the sandbox's PID namespace and spark-submit with what it starts, and killing it
/// kills that init process, with which the kernel kills the whole namespace (see
/// [`super::sandbox`]).
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
    // The program and its arguments: spark-submit, or bwrap (after `setsid`) running it.
    let (mut program, mut argv): (OsString, Vec<OsString>) = match &env.sandbox {
        Some(sandbox) => {
            let mut argv = sandbox.argv(confinement, &vars);
            argv.push(env.spark_submit.clone().into_os_string());
            vars.extend(super::sandbox::Sandbox::environment(confinement));
            (sandbox.program().into(), argv)
        }
        None => (env.spark_submit.clone().into_os_string(), Vec::new()),
    };
    argv.extend(args);
    let supervised = env.supervisor.as_ref().zip(log.followed_file());
    if let Some((supervisor, log_file)) = supervised {
        if env.sandbox.is_some() && !argv.is_empty() {
            // The supervisor makes the session `setsid` would: bwrap runs in its group.
            program = argv.remove(0);
        }
        let task = supervisor::Supervise {
            log: log_file.to_path_buf(),
            max_log_bytes: log.max_file_bytes(),
            program,
            args: argv,
        };
        (program, argv) = (supervisor.clone().into_os_string(), task.to_args());
    }
    let mut cmd = Command::new(&program);
    if env.sandbox.is_none() && supervised.is_none() {
        cmd.process_group(0);
    }
    // (setsid, and the supervisor, make the group themselves: they must not lead one already.)
    cmd.args(&argv).env_clear().envs(vars).stdin(Stdio::null());
    if supervised.is_some() {
        // Nothing ties the launch to this process: it outlives a gateway that stops or dies.
        cmd.stdout(Stdio::null()).stderr(Stdio::null()).kill_on_drop(false);
    } else {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    }
    let mut child = cmd.spawn()?;
    let pgid = child.id().map(|p| p as i32).unwrap_or(0);
    let identity = ProcessIdentity::of(pgid);
    if let Some(out) = child.stdout.take() {
        tokio::spawn(read_lines(out, log.clone(), on_line.clone()));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(read_lines(err, log.clone(), on_line.clone()));
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
    let handle = ProcessHandle { pgid, identity, exited: rx };
    if supervised.is_some() {
        follow_output(&handle, log, on_line);
    }
    Ok(handle)
}

/// How often a followed log is read back while its process runs.
const FOLLOW_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// Reads `log`'s file back while `process` runs (and once after), handing each new line to
/// `on_line`.
pub fn follow_output(process: &ProcessHandle, log: Arc<LogBuffer>, on_line: Arc<dyn Fn(&str) + Send + Sync>) {
    let process = process.clone();
    tokio::spawn(async move {
        loop {
            let ended = process.has_exited();
            for line in log.take_fresh() {
                on_line(&line);
            }
            if ended {
                return;
            }
            tokio::time::sleep(FOLLOW_INTERVAL).await;
        }
    });
}

/// Whether a line shows that the driver's SparkContext is up (the application runs).
pub fn driver_started(line: &str) -> bool {
    line.contains("Successfully started service 'sparkDriver'") || line.contains("Submitted application:")
}

// Here rather than in one concern's file: discovery, kerberos and cluster/yarn all quote a
// failed command's last lines with it.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_driver_start_is_seen() {
        assert!(driver_started("INFO Utils: Successfully started service 'sparkDriver' on port 33245."));
        assert!(!driver_started("INFO Utils: Successfully started service 'SparkUI' on port 4040."));
    }
}
