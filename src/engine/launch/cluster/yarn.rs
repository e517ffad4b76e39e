//! YARN: the tag that finds a launch's application before spark-submit has printed its id, and
//! asking YARN for it.

use super::{cluster_command, run_within_a_minute, MAY_STILL_RUN};
use crate::config::SparkConfig;
use crate::engine::app_id::AppIdFormat;
use crate::engine::launch::{last_lines, LaunchSpec, LogBuffer, SparkEnv};

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
