//! Livy's programmatic job API with real Spark: a client that does on the wire what Livy's
//! Python client does (tests/clients/livy_jobs_client.py: cloudpickle, base64, submit-job,
//! polling) runs Python jobs in the shared session — a result, a failure, a cancel, run-job,
//! the job context — and jobs interleave with statements in one FIFO. The refusals (rights,
//! job types, base64) are tested without Spark in src/api/tests.rs and in the security matrix.

use crate::support::{gateway, repo_root, shared_session};
use serde_json::Value;
use std::time::Duration;

#[tokio::test]
async fn python_jobs_run_as_livys_python_client_sends_them() {
    let python = repo_root().join(".venv-clients/bin/python");
    assert!(python.exists(), "{} is missing: scripts/test.sh installs cloudpickle there", python.display());
    let gw = gateway();
    let id = shared_session().await;
    let ca = gw.data_dir.join("ca-for-job-clients.pem");
    std::fs::write(&ca, &gw.ca_pem).unwrap();
    let run = tokio::process::Command::new(&python)
        .arg(repo_root().join("tests/clients/livy_jobs_client.py"))
        .env("SPARKGATE_URL", &gw.base)
        .env("SPARKGATE_CA", &ca)
        .env("SPARKGATE_SESSION", id.to_string())
        .output();
    let out = tokio::time::timeout(Duration::from_secs(600), run).await.expect("the job client timed out").unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the job client failed ({}):\n{stdout}\n{stderr}", out.status);
    let s: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("no summary ({e}):\n{stdout}\n{stderr}"));

    // Livy's JobStatus, exactly its four fields (its Java client refuses others).
    assert_eq!(s["submitted"], serde_json::json!(["error", "id", "result", "state"]), "{s}");
    assert_eq!(s["sum"]["state"], "SUCCEEDED", "{s}");
    assert_eq!(s["sum"]["value"], 4950, "{s}");
    assert_eq!(s["sum"]["error"], Value::Null, "{s}");

    let c = &s["contexts"];
    assert_eq!(c["state"], "SUCCEEDED", "{s}");
    assert_eq!((c["rows"].as_i64(), c["sql"].as_i64(), c["point_x"].as_i64()), (Some(10), Some(1), Some(2)), "{s}");
    assert_eq!((c["same_session"].as_bool(), c["tmp"].as_bool()), (Some(true), Some(true)), "{s}");

    let f = &s["failed"];
    assert_eq!((f["state"].as_str(), f["result"].as_str()), (Some("FAILED"), None), "{s}");
    let error = f["error"].as_str().unwrap();
    assert!(error.starts_with("ValueError: no such table: sales_2031"), "{error}");
    assert!(error.contains("in fails"), "the traceback names the job's frame: {error}");

    assert_eq!(s["cancelled"]["state"], "CANCELLED", "{s}");
    assert!(s["cancelled"]["seconds"].as_f64().unwrap() < 60.0, "{s}");

    // FIFO: the statement sleeping 1.5 s, then the job, then the next statement, in that order.
    let fifo = &s["fifo"];
    let ids: Vec<u64> = fifo["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert!(ids[0] < ids[1] && ids[1] < ids[2], "one id sequence: {s}");
    assert_eq!(fifo["states_at_submit"][1], "QUEUED", "the job waits behind the running statement: {s}");
    let times: Vec<f64> = fifo["times"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert!(times[0] <= times[1] && times[1] <= times[2], "ran out of order: {s}");
    assert_eq!((s["job_as_statement"].as_u64(), s["statement_as_job"].as_u64()), (Some(404), Some(404)), "{s}");
    let listed: Vec<u64> = s["listed_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert!(listed.contains(&ids[0]) && !listed.contains(&ids[1]), "jobs are not listed as statements: {s}");

    // The trail has each job's outcome, and never its bytes.
    let audit = gw.audit.clone();
    tokio::task::spawn_blocking(move || audit.flush()).await.unwrap().unwrap();
    let text = std::fs::read_to_string(gw.audit.path()).unwrap();
    let records: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let finished = |state: &str| {
        records.iter().any(|r| {
            r["action"] == "job_finished"
                && r["resource"].as_str().is_some_and(|x| x.starts_with(&format!("session:{id}/job:")))
                && r["reason"] == format!("pyspark job {state}")
        })
    };
    assert!(finished("SUCCEEDED") && finished("FAILED") && finished("CANCELLED"), "{text}");
    let submitted =
        records.iter().find(|r| r["action"] == "POST /sessions/{id}/submit-job" && r["status"] == 201).unwrap();
    assert!(submitted["reason"].as_str().unwrap().starts_with("pyspark job of "), "{submitted}");
    assert!(!text.contains("gAWV") && !text.contains("gASV"), "a pickle's base64 is in the audit trail");
}
