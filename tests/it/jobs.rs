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
    assert_eq!(s["submitted_state"], "SENT", "as Livy answers a submission: {s}");
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
    // Python's own shape, as Livy's Python job driver sends it: the traceback, then the error.
    assert!(error.starts_with("Traceback (most recent call last):"), "{error}");
    assert_eq!(error.matches("ValueError: no such table: sales_2031").count(), 1, "said once: {error}");
    assert!(error.contains("in fails"), "the traceback names the job's frame: {error}");

    assert_eq!(s["exits"], serde_json::json!(["FAILED", "FAILED"]), "{s}");
    assert_eq!(s["after_exits"], "SUCCEEDED", "SystemExit in a job ends the job, not the session: {s}");

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

/// Jobs written against the Livy API jar: a sum through the session's SparkContext, a failure,
/// one that sleeps until it is interrupted and one that ignores its first two interrupts.
const JVM_JOBS: [(&str, &str); 5] = [
    (
        "sparkgate/test/SumJob.java",
        r#"package sparkgate.test;

import java.util.ArrayList;
import java.util.List;
import org.apache.livy.Job;
import org.apache.livy.JobContext;

/** Sums 0..n-1 on the executors. No no-argument constructor: Kryo's fallback makes it. */
public class SumJob implements Job<Long> {
  private final int n;

  public SumJob(int n) {
    this.n = n;
  }

  @Override
  public Long call(JobContext jc) {
    List<Integer> items = new ArrayList<>();
    for (int i = 0; i < n; i++) {
      items.add(i);
    }
    return jc.sc().parallelize(items, 2).map(x -> (long) x).reduce(Long::sum);
  }
}
"#,
    ),
    (
        "sparkgate/test/FailJob.java",
        r#"package sparkgate.test;

import org.apache.livy.Job;
import org.apache.livy.JobContext;

public class FailJob implements Job<String> {
  @Override
  public String call(JobContext jc) {
    throw new IllegalStateException("no such table: sales_2031");
  }
}
"#,
    ),
    (
        "sparkgate/test/SleepJob.java",
        r#"package sparkgate.test;

import org.apache.livy.Job;
import org.apache.livy.JobContext;

public class SleepJob implements Job<String> {
  @Override
  public String call(JobContext jc) throws Exception {
    Thread.sleep(600_000);
    return "woke up";
  }
}
"#,
    ),
    (
        "sparkgate/test/StubbornJob.java",
        r#"package sparkgate.test;

import org.apache.livy.Job;
import org.apache.livy.JobContext;

/** Swallows interrupts: only the third one stops it. */
public class StubbornJob implements Job<String> {
  @Override
  public String call(JobContext jc) {
    int interrupts = 0;
    while (interrupts < 3) {
      try {
        Thread.sleep(600_000);
      } catch (InterruptedException e) {
        interrupts++;
      }
    }
    return "gave in";
  }
}
"#,
    ),
    (
        "sparkgate/test/KryoClient.java",
        r#"package sparkgate.test;

import com.esotericsoftware.kryo.Kryo;
import com.esotericsoftware.kryo.io.Input;
import com.esotericsoftware.kryo.io.Output;
import java.io.ByteArrayOutputStream;
import java.util.Base64;
import org.objenesis.strategy.StdInstantiatorStrategy;

/** Serializes jobs and reads results as Livy's Java client does (its Kryo set-up). */
public class KryoClient {
  static Kryo kryo() {
    Kryo kryo = new Kryo();
    kryo.setInstantiatorStrategy(new Kryo.DefaultInstantiatorStrategy(new StdInstantiatorStrategy()));
    kryo.setClassLoader(Thread.currentThread().getContextClassLoader());
    return kryo;
  }

  public static void main(String[] args) {
    if (args[0].equals("encode")) {
      Object job = switch (args[1]) {
        case "sum" -> new SumJob(Integer.parseInt(args[2]));
        case "fail" -> new FailJob();
        case "stubborn" -> new StubbornJob();
        default -> new SleepJob();
      };
      ByteArrayOutputStream bytes = new ByteArrayOutputStream();
      Output out = new Output(bytes);
      kryo().writeClassAndObject(out, job);
      out.flush();
      System.out.println(Base64.getEncoder().encodeToString(bytes.toByteArray()));
    } else {
      Object value = kryo().readClassAndObject(new Input(Base64.getDecoder().decode(args[1])));
      System.out.println(value.getClass().getName() + " " + value);
    }
  }
}
"#,
    ),
];

#[tokio::test]
async fn jvm_jobs_serialized_with_kryo_run_in_a_spark_session() {
    use crate::cluster::{javac_jar, run_tool, spark_home};
    let gw = gateway();
    let (status, body) = gw.post("/sessions", serde_json::json!({"kind": "spark", "name": "jvm-jobs"})).await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_u64().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let api_jar = repo_root().join("java/build/sparkgate-livy-api.jar");
    assert!(api_jar.exists(), "{} is missing: scripts/setup.sh builds it", api_jar.display());
    let jar = javac_jar(dir.path(), "livy-jobs.jar", &JVM_JOBS, std::slice::from_ref(&api_jar));
    let classpath = format!("{}:{}:{}/*", jar.display(), api_jar.display(), spark_home().join("jars").display());
    let kryo = |args: &[&str]| {
        let mut java = std::process::Command::new("java");
        java.args(["-cp", &classpath, "sparkgate.test.KryoClient"]).args(args);
        run_tool(java).trim().to_string()
    };
    gw.wait_state(id, &["idle"], Duration::from_secs(240)).await;
    let form = reqwest::multipart::Form::new()
        .part("jar", reqwest::multipart::Part::bytes(std::fs::read(&jar).unwrap()).file_name("livy-jobs.jar"));
    let r = gw.client().post(gw.url(&format!("/sessions/{id}/upload-jar"))).multipart(form).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());

    let submit = |job: String| async move {
        let (status, body) =
            gw.post(&format!("/sessions/{id}/submit-job"), serde_json::json!({"job": job, "jobType": "spark"})).await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_u64().unwrap()
    };
    let finished = |jid: u64| async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
        loop {
            let (status, job) = gw.get(&format!("/sessions/{id}/jobs/{jid}?wait=20s")).await;
            assert_eq!(status, 200, "{job}");
            if !matches!(job["state"].as_str(), Some("QUEUED" | "STARTED")) {
                return job;
            }
            assert!(tokio::time::Instant::now() < deadline, "job {jid} did not end: {job}");
        }
    };

    let sum = finished(submit(kryo(&["encode", "sum", "100"])).await).await;
    assert_eq!(sum["state"], "SUCCEEDED", "{sum}");
    assert_eq!(kryo(&["decode", sum["result"].as_str().unwrap()]), "java.lang.Long 4950");

    let failed = finished(submit(kryo(&["encode", "fail"])).await).await;
    assert_eq!((failed["state"].as_str(), failed["result"].as_str()), (Some("FAILED"), None), "{failed}");
    let error = failed["error"].as_str().unwrap();
    assert!(error.starts_with("java.lang.IllegalStateException: no such table: sales_2031"), "{error}");
    assert!(error.contains("sparkgate.test.FailJob.call"), "the stack names the job: {error}");

    // A job that sleeps is interrupted by a cancel.
    let sleeper = submit(kryo(&["encode", "sleep"])).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while gw.get(&format!("/sessions/{id}/jobs/{sleeper}")).await.1["state"] != "STARTED" {
        assert!(tokio::time::Instant::now() < deadline, "the sleeping job did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let started = tokio::time::Instant::now();
    let (status, body) = gw.post(&format!("/sessions/{id}/jobs/{sleeper}/cancel"), serde_json::json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(finished(sleeper).await["state"], "CANCELLED");
    assert!(started.elapsed() < Duration::from_secs(60));
    // The session still runs jobs after the cancel.
    let again = finished(submit(kryo(&["encode", "sum", "10"])).await).await;
    assert_eq!(kryo(&["decode", again["result"].as_str().unwrap()]), "java.lang.Long 45");

    // A job that ignores the cancel's interrupt runs on: it is not CANCELLED, and the job
    // behind it does not start, until it really stops (interrupted again each second).
    let stubborn = submit(kryo(&["encode", "stubborn"])).await;
    let behind = submit(kryo(&["encode", "sum", "10"])).await;
    while gw.get(&format!("/sessions/{id}/jobs/{stubborn}")).await.1["state"] != "STARTED" {
        assert!(tokio::time::Instant::now() < deadline + Duration::from_secs(240), "the stubborn job did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = gw.post(&format!("/sessions/{id}/jobs/{stubborn}/cancel"), serde_json::json!({})).await;
    assert_eq!(status, 200, "{body}");
    // Its third interrupt comes two seconds after the cancel at the earliest: a wait of 1.5 s
    // (which would end at once with the job's end) sees it still running.
    let (status, still) = gw.get(&format!("/sessions/{id}/jobs/{stubborn}?wait=1500ms")).await;
    assert_eq!((status, still["state"].as_str()), (200, Some("STARTED")), "{still}");
    assert_eq!(gw.get(&format!("/sessions/{id}/jobs/{behind}")).await.1["state"], "QUEUED");
    assert_eq!(finished(stubborn).await["state"], "CANCELLED");
    assert_eq!(finished(behind).await["state"], "SUCCEEDED");

    // A Python job has no place in a spark session.
    let (status, body) =
        gw.post(&format!("/sessions/{id}/submit-job"), serde_json::json!({"job": "AAAA", "jobType": "pyspark"})).await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = gw.delete(&format!("/sessions/{id}")).await;
    assert_eq!(status, 200);
}
