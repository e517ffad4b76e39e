//! Real Livy client libraries, unchanged, against a gateway with real authentication: pylivy
//! (`livy` on PyPI, installed into `.venv-clients` by scripts/test.sh) drives an impersonated
//! pyspark session (run, download and upload of data frames, errors) and a batch, as Hue-style
//! service users do.

use crate::support::{repo_root, TestGateway};
use serde_json::{json, Value};
use std::time::Duration;

const POLICY: &str = r#"
[create]
users = ["notebooks"]

[[impersonation]]
callers = { users = ["notebooks"] }
targets = { users = ["carol"] }
hosts = ["127.0.0.1", "::1"]
"#;

#[tokio::test]
async fn pylivy_drives_sessions_and_batches_unchanged() {
    let python = repo_root().join(".venv-clients/bin/python");
    assert!(
        python.exists(),
        "{} is missing: scripts/test.sh installs pylivy there (run it, or see its 'livy==' line)",
        python.display()
    );
    let gw = TestGateway::start_with_policy(&["auth.methods=[\"jwt\"]"], POLICY);
    let ca = gw.data_dir.join("ca-for-clients.pem");
    std::fs::write(&ca, &gw.ca_pem).unwrap();
    let job = gw.jobs_dir.join("double.py");
    std::fs::write(
        &job,
        "import sys\nfrom pyspark.sql import SparkSession\n\
         spark = SparkSession.builder.getOrCreate()\n\
         n = int(sys.argv[1])\n\
         print('DOUBLED', spark.sparkContext.parallelize([n]).map(lambda x: x * 2).first(), 'AS', spark.sparkContext.sparkUser())\n\
         spark.stop()\n",
    )
    .unwrap();
    let token = gw.token("notebooks", &[]);
    let script = repo_root().join("tests/clients/pylivy_client.py");
    let run = tokio::process::Command::new(&python)
        .arg(&script)
        .env("SPARKGATE_URL", &gw.base)
        .env("SPARKGATE_CA", &ca)
        .env("SPARKGATE_TOKEN", &token)
        .env("SPARKGATE_ACT_AS", "carol")
        .env("SPARKGATE_JOB", &job)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(600), run).await.expect("pylivy run timed out").unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pylivy failed ({}):\n{stdout}\n{stderr}", out.status);
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("no summary ({e}):\n{stdout}\n{stderr}"));

    assert_eq!(summary["state"], "idle", "{summary}");
    assert_eq!(summary["sum"], "45", "{summary}");
    assert_eq!(summary["spark_user"], "carol", "the session runs as the proxy user: {summary}");
    assert_eq!(summary["downloaded"], json!({"n": [0, 1, 2, 3], "square": [0, 1, 4, 9]}), "{summary}");
    assert_eq!(summary["uploaded_total"], "6", "{summary}");
    assert_eq!(summary["error"]["ename"], "ZeroDivisionError", "{summary}");
    assert_eq!(summary["after_error"], "still here", "{summary}");
    let listed = summary["listed"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{summary}");
    assert_eq!(listed[0]["proxy_user"], "carol", "{summary}");
    assert_eq!(listed[0]["kind"], "pyspark", "{summary}");
    assert_eq!(summary["after_close"], Value::Null, "leaving the `with` block deleted the session: {summary}");

    assert_eq!(summary["batch_state"], "success", "{summary}");
    let log: Vec<&str> = summary["batch_log"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(log.iter().any(|l| l.contains("DOUBLED 42 AS carol")), "{log:?}");
    let batch = summary["batch_id"].as_u64().unwrap();
    let (status, _, body) = gw.call(reqwest::Method::GET, &format!("/batches/{batch}"), Some(&token), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["proxyUser"], "carol", "{body}");
    assert_eq!(body["state"], "success", "{body}");
}
