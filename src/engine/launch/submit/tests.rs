use super::*;
use crate::engine::launch::{cluster_conf, AppKind};

fn strings(args: Vec<OsString>) -> Vec<String> {
    args.into_iter().map(|a| a.into_string().unwrap()).collect()
}

#[test]
fn argument_vector_from_request_and_config() {
    let mut config = SparkConfig::default();
    config.conf.insert("spark.ui.enabled".into(), "false".into());
    let spec = LaunchSpec {
        name: "etl".into(),
        app: "/data/driver.py".into(),
        args: vec!["--x".into(), "a b; rm -rf /".into()],
        submit: crate::engine::SubmitSpec {
            proxy_user: Some("bob".into()),
            queue: Some("prod".into()),
            driver_memory: Some("2g".into()),
            executor_cores: Some(3),
            num_executors: Some(4),
            jars: vec!["a.jar".into(), "https://repo/b.jar?X-Amz-Signature=s3cr3t".into()],
            py_files: vec!["m.py".into()],
            conf: [("spark.ui.enabled".to_string(), "true".to_string())].into(),
            ..Default::default()
        },
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
        app: "x.py".into(),
        submit: crate::engine::SubmitSpec {
            conf: [("spark.hadoop.fs.s3a.secret.key".to_string(), secret.to_string())].into(),
            ..Default::default()
        },
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
        cluster_conf: cluster_conf(&config, AppKind::Batch, 7),
        app: "hdfs:///apps/etl.jar".into(),
        class_name: Some("com.example.Etl".into()),
        submit: crate::engine::SubmitSpec {
            proxy_user: Some("alice".into()),
            queue: Some("prod".into()),
            ..Default::default()
        },
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
    let own =
        LaunchSpec { submit: crate::engine::SubmitSpec { proxy_user: None, ..spec.submit.clone() }, ..spec.clone() };
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
