//! Livy's batch API on real Spark (local mode): success with arguments, failure with the error
//! in the log, kill leaving no process, the full log paged, and local paths guarded.

use crate::support::{gateway, processes_in_group, TestGateway};
use serde_json::{json, Value};
use std::time::Duration;

async fn wait_batch(gw: &TestGateway, id: u64, states: &[&str]) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    loop {
        let (_, b) = gw.get(&format!("/batches/{id}")).await;
        if states.contains(&b["state"].as_str().unwrap_or("")) {
            return b;
        }
        if tokio::time::Instant::now() > deadline {
            let (_, log) = gw.get(&format!("/batches/{id}/log?size=-1")).await;
            panic!("batch {id} never reached {states:?}: {b}\n{log:#}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn write_job(gw: &TestGateway, name: &str, code: &str) -> String {
    let path = gw.jobs_dir.join(name);
    std::fs::write(&path, code).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn a_python_batch_runs_to_success_with_its_arguments() {
    let gw = gateway();
    let file = write_job(
        gw,
        "sum.py",
        "import sys\nfrom pyspark.sql import SparkSession\nspark = SparkSession.builder.getOrCreate()\n\
         n = int(sys.argv[1])\nprint('SUM=%d TAG=%s' % (spark.sparkContext.parallelize(range(n)).sum(), sys.argv[2]))\n\
         spark.stop()\n",
    );
    let (status, body) = gw.post("/batches", json!({"file": file, "args": ["100", "a b"], "name": "sum-batch"})).await;
    assert_eq!(status, 201, "{body}");
    let keys: Vec<&str> = body.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["id", "name", "owner", "proxyUser", "state", "appId", "appInfo", "log"]);
    assert_eq!(body["state"], "starting");
    let id = body["id"].as_u64().unwrap();
    let done = wait_batch(gw, id, &["success", "dead"]).await;
    assert_eq!(done["state"], "success", "{done}");
    assert!(done["appId"].as_str().unwrap().starts_with("local-"), "{done}");
    let (_, log) = gw.get(&format!("/batches/{id}/log?size=-1")).await;
    let text = log["log"].to_string();
    assert!(text.contains("SUM=4950 TAG=a b"), "the arguments arrived intact: {text}");
    // The log pages the whole output with from/size/total.
    let total = log["total"].as_u64().unwrap();
    let (_, page) = gw.get(&format!("/batches/{id}/log?from=1&size=2")).await;
    assert_eq!(
        (page["from"].as_u64(), page["total"].as_u64(), page["log"].as_array().unwrap().len()),
        (Some(1), Some(total), 2)
    );
    let (_, by_name) = gw.get("/batches/sum-batch/state").await;
    assert_eq!(by_name, json!({"id": id, "state": "success"}));
    let (_, list) = gw.get("/batches").await;
    assert!(list["sessions"].as_array().unwrap().iter().any(|b| b["id"] == id), "{list}");
}

#[tokio::test]
async fn a_failing_batch_is_dead_with_the_error_in_its_log() {
    let gw = gateway();
    let file = write_job(gw, "fail.py", "raise SystemExit('the job failed on purpose')\n");
    let (status, body) = gw.post("/batches", json!({"file": file})).await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_u64().unwrap();
    let done = wait_batch(gw, id, &["success", "dead"]).await;
    assert_eq!(done["state"], "dead");
    let (_, log) = gw.get(&format!("/batches/{id}/log?size=-1")).await;
    assert!(log["log"].to_string().contains("the job failed on purpose"), "{log}");
}

#[tokio::test]
async fn delete_kills_a_running_batch_and_leaves_no_process() {
    let gw = gateway();
    let file = write_job(
        gw,
        "forever.py",
        "import time\nfrom pyspark.sql import SparkSession\nspark = SparkSession.builder.getOrCreate()\n\
         print('STARTED', flush=True)\ntime.sleep(3600)\n",
    );
    let (status, body) = gw.post("/batches", json!({"file": file})).await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_u64().unwrap();
    wait_batch(gw, id, &["running"]).await;
    let batch = gw.batches.get(&id.to_string()).unwrap().process().unwrap().pgid;
    let (status, body) = gw.delete(&format!("/batches/{id}")).await;
    assert_eq!((status, body), (200, json!({"msg": "deleted"})));
    assert_eq!(processes_in_group(batch), Vec::<i32>::new());
    assert_eq!(gw.get(&format!("/batches/{id}")).await.0, 404);
}

#[tokio::test]
async fn batch_requests_are_validated_and_local_paths_guarded() {
    let gw = gateway();
    let (status, body) = gw.post("/batches", json!({"className": "x"})).await;
    assert_eq!(status, 400);
    assert!(body["msg"].as_str().unwrap().contains("file"), "{body}");
    let (status, body) = gw.post("/batches", json!({"file": "x.py", "bogus": 1})).await;
    assert_eq!(status, 400, "{body}");
    let inside = gw.jobs_dir.join("ok.py").display().to_string();
    let forbidden = [
        json!({"file": "/etc/passwd"}),
        json!({"file": format!("{}/../../etc/passwd", gw.jobs_dir.display())}),
        json!({"file": inside.clone(), "pyFiles": ["/root/.ssh/id_rsa"]}),
        json!({"file": inside.clone(), "jars": ["file:///etc/krb5.keytab"]}),
        json!({"file": inside.clone(), "files": ["relative/path.txt"]}),
        json!({"file": inside.clone(), "archives": ["local:/etc/shadow"]}),
    ];
    for body in forbidden {
        let (status, reply) = gw.post("/batches", body.clone()).await;
        assert_eq!(status, 400, "{body} -> {reply}");
        assert!(reply["msg"].as_str().unwrap().contains("local path"), "{reply}");
    }
    let (status, reply) = gw.post("/sessions", json!({"kind": "pyspark", "jars": ["/etc/krb5.keytab"]})).await;
    assert_eq!(status, 400, "sessions are guarded too: {reply}");
    let (status, _) = gw.get("/batches/424242").await;
    assert_eq!(status, 404);
    let (status, reply) = gw.post("/batches", json!({"file": inside, "conf": {"spark.master": "yarn"}})).await;
    assert_eq!(status, 403, "{reply}");
}
