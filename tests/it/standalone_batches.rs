//! Batches on a real standalone cluster: a Python batch and a jar batch in client deploy mode,
//! jar batches in cluster deploy mode (the driver runs in a worker), and DELETE of a
//! cluster-mode driver killing it through the master.

use crate::cluster::{build_test_jar, SparkCluster};
use crate::support::TestGateway;
use serde_json::{json, Value};
use std::time::Duration;

async fn wait_batch(gw: &TestGateway, cluster: &SparkCluster, id: u64, states: &[&str]) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    loop {
        let (_, b) = gw.get(&format!("/batches/{id}")).await;
        if states.contains(&b["state"].as_str().unwrap_or("")) {
            return b;
        }
        if tokio::time::Instant::now() > deadline {
            let (_, log) = gw.get(&format!("/batches/{id}/log?size=-1")).await;
            panic!("batch {id} never reached {states:?}: {b}\n{log:#}\n{}", cluster.log_tails());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn log_text(gw: &TestGateway, id: u64) -> String {
    gw.get(&format!("/batches/{id}/log?size=-1")).await.1["log"].to_string()
}

#[tokio::test]
async fn batches_run_on_a_standalone_cluster_in_client_and_cluster_mode() {
    let cluster = SparkCluster::start(2);
    let jar_dir = tempfile::tempdir().unwrap();
    let jar = build_test_jar(jar_dir.path());
    let master = format!("spark.master=\"{}\"", cluster.master_url);
    let small = [
        "spark.conf.\"spark.driver.host\"=\"127.0.0.1\"",
        "spark.conf.\"spark.executor.memory\"=\"512m\"",
        "spark.conf.\"spark.driver.memory\"=\"512m\"",
        "spark.conf.\"spark.cores.max\"=\"1\"",
        "spark.conf.\"spark.ui.enabled\"=\"false\"",
    ];

    // Client deploy mode: the driver runs on this host, executors in the workers.
    let mut overrides = vec![master.as_str()];
    overrides.extend(small);
    let client = TestGateway::start(&overrides);
    let py = client.jobs_dir.join("count.py");
    std::fs::write(
        &py,
        "from pyspark.sql import SparkSession\ns = SparkSession.builder.getOrCreate()\n\
         print('APP', s.sparkContext.applicationId, 'SUM', s.sparkContext.parallelize(range(10), 2).sum())\ns.stop()\n",
    )
    .unwrap();
    let client_jar = client.jobs_dir.join("job.jar");
    std::fs::copy(&jar, &client_jar).unwrap();
    let (status, body) = client.post("/batches", json!({"file": py.display().to_string()})).await;
    assert_eq!(status, 201, "{body}");
    let py_id = body["id"].as_u64().unwrap();
    let (status, body) = client
        .post(
            "/batches",
            json!({"file": client_jar.display().to_string(), "className": "sparkgate.test.CountJob", "args": ["5"]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let jar_id = body["id"].as_u64().unwrap();
    // A jar batch that fails (the job exits with status 3).
    let (status, body) = client
        .post(
            "/batches",
            json!({"file": client_jar.display().to_string(), "className": "sparkgate.test.CountJob", "args": ["7", "3"]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let fail_id = body["id"].as_u64().unwrap();
    let done = wait_batch(&client, &cluster, py_id, &["success", "dead"]).await;
    assert_eq!(done["state"], "success", "{done}\n{}", log_text(&client, py_id).await);
    let log = log_text(&client, py_id).await;
    assert!(log.contains("SUM 45") && log.contains("APP app-"), "{log}");
    let done = wait_batch(&client, &cluster, jar_id, &["success", "dead"]).await;
    assert_eq!(done["state"], "success", "{done}");
    assert!(log_text(&client, jar_id).await.contains("COUNT=5"));
    let failed = wait_batch(&client, &cluster, fail_id, &["success", "dead"]).await;
    assert_eq!(failed["state"], "dead", "{failed}");
    let log = log_text(&client, fail_id).await;
    assert!(log.contains("COUNT=7") && log.contains("exited with status 3"), "the error is in the log: {log}");

    // Cluster deploy mode: spark-submit hands the driver to the master, which runs it in a worker.
    let ui = format!("spark.standalone_master_ui=\"{}\"", cluster.web_ui);
    let mut overrides = vec![master.as_str(), "spark.deploy_mode=\"cluster\"", ui.as_str()];
    overrides.extend(small);
    let remote = TestGateway::start(&overrides);
    let remote_jar = remote.jobs_dir.join("job.jar");
    std::fs::copy(&jar, &remote_jar).unwrap();
    let jar_path = remote_jar.display().to_string();
    let (status, body) =
        remote.post("/batches", json!({"file": jar_path, "className": "sparkgate.test.CountJob", "args": ["7"]})).await;
    assert_eq!(status, 201, "{body}");
    let ok_id = body["id"].as_u64().unwrap();
    let done = wait_batch(&remote, &cluster, ok_id, &["success", "dead"]).await;
    assert_eq!(done["state"], "success", "{done}\n{}", log_text(&remote, ok_id).await);
    assert!(log_text(&remote, ok_id).await.contains("driver-"), "the driver was submitted to the cluster");
    assert!(done["appId"].as_str().is_some_and(|a| a.starts_with("app-")), "from the master's status: {done}");

    // A long cluster-mode driver is killed through the master by DELETE.
    let (status, body) = remote
        .post("/batches", json!({"file": jar_path, "className": "sparkgate.test.CountJob", "args": ["sleep"]}))
        .await;
    assert_eq!(status, 201, "{body}");
    let sleep_id = body["id"].as_u64().unwrap();
    wait_batch(&remote, &cluster, sleep_id, &["running"]).await;
    // Wait until the master runs the driver, then delete.
    let driver = cluster.wait_status("a running driver", Duration::from_secs(120), |s| {
        s["activedrivers"].as_array().is_some_and(|d| d.iter().any(|x| x["state"] == "RUNNING"))
    })["activedrivers"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, body) = remote.delete(&format!("/batches/{sleep_id}")).await;
    assert_eq!((status, body), (200, json!({"msg": "deleted"})));
    cluster.wait_status("the driver killed", Duration::from_secs(60), |s| {
        s["completeddrivers"]
            .as_array()
            .is_some_and(|d| d.iter().any(|x| x["id"] == driver.as_str() && x["state"] == "KILLED"))
    });

    // Recovery on a standalone cluster (Livy refuses it there): the gateway binary is killed
    // with SIGKILL while a cluster-mode driver runs; after the restart the batch is still
    // running, and DELETE still kills the driver through the master.
    let mut gw = crate::recovery::Restartable::new(&overrides);
    gw.start();
    let jar_path = gw.jobs().join("job.jar");
    std::fs::copy(&jar, &jar_path).unwrap();
    let (status, body) = gw
        .post(
            "/batches",
            json!({"file": jar_path.display().to_string(), "className": "sparkgate.test.CountJob", "args": ["sleep"]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_u64().unwrap();
    gw.wait_for(&format!("/batches/{id}"), "state", &["running"], Duration::from_secs(240)).await;
    let running = |s: &Value| -> Option<String> {
        s["activedrivers"]
            .as_array()?
            .iter()
            .find(|x| x["state"] == "RUNNING")
            .and_then(|x| x["id"].as_str().map(str::to_string))
    };
    let status =
        cluster.wait_status("the recovered batch's driver", Duration::from_secs(120), |s| running(s).is_some());
    let driver = running(&status).unwrap();
    gw.kill9();
    gw.start();
    let (_, batch) = gw.get(&format!("/batches/{id}")).await;
    assert_eq!(batch["state"], "running", "{batch}");
    // Its spark-submit lost too while the gateway is down (as a host restart would): the
    // driver runs on in a worker, and the restarted gateway watches it through the master.
    gw.kill9();
    gw.kill_launch_processes(&format!("batches/{id}"));
    gw.start();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (_, batch) = gw.get(&format!("/batches/{id}")).await;
    assert_eq!(batch["state"], "running", "the master still runs it: {batch}");
    let (status, _) = gw.call(reqwest::Method::DELETE, &format!("/batches/{id}"), None, None).await;
    assert_eq!(status, 200);
    cluster.wait_status("the recovered batch's driver killed", Duration::from_secs(60), |s| {
        s["completeddrivers"]
            .as_array()
            .is_some_and(|d| d.iter().any(|x| x["id"] == driver.as_str() && x["state"] == "KILLED"))
    });
}
