//! Kubernetes: the driver pod's name, chosen by the gateway so that a stop can kill it.

use crate::config::SparkConfig;
use crate::engine::launch::{spark_defaults_value, AppKind, LaunchSpec, SparkEnv};

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
    let namespace = [&spec.submit.conf, &config.conf]
        .iter()
        .find_map(|conf| conf.get(KEY).cloned())
        .or_else(|| env.and_then(|env| spark_defaults_value(env, KEY)))
        .unwrap_or_else(|| "default".into());
    spec.cluster_conf.insert("spark.kubernetes.driver.pod.name".into(), pod.clone());
    Some(format!("{namespace}:{pod}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::launch::discovery::properties_value;
    use crate::engine::launch::{cluster_kill, ClusterKill};
    use std::path::Path;

    #[test]
    fn kubernetes_cluster_drivers_get_a_pod_name_the_gateway_can_kill() {
        let k8s = SparkConfig {
            master: "k8s://https://api:6443".into(),
            deploy_mode: "cluster".into(),
            ..SparkConfig::default()
        };
        let mut spec = LaunchSpec {
            submit: crate::engine::SubmitSpec {
                conf: [("spark.kubernetes.namespace".to_string(), "etl".to_string())].into(),
                ..Default::default()
            },
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
}
