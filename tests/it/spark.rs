//! Real Spark sessions (local mode): statements in every interpreter with Livy's exact shapes,
//! cancel that really stops work, delete and driver death leaving no process behind.
//!
//! Spark start-up costs a JVM and several seconds, so most tests share one `shared` session;
//! the tests that change a session's life (cancel, delete, kill -9) have their own.

use crate::support::{gateway, processes_in_group, shared_session, TestGateway, SHARED_NOTE};
use serde_json::{json, Value};
use std::time::Duration;

const START: Duration = Duration::from_secs(240);

fn text(st: &Value) -> &str {
    st["output"]["data"]["text/plain"].as_str().unwrap_or_else(|| panic!("no text/plain in {st}"))
}

#[tokio::test]
async fn pyspark_statements_have_livy_shapes() {
    let gw = gateway();
    let id = shared_session().await;
    let st = gw.run(id, "pyspark", "1+1").await;
    let keys: Vec<&str> = st.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["id", "code", "state", "output", "progress", "started", "completed"]);
    assert_eq!(st["state"], "available");
    assert_eq!(st["progress"], 1.0);
    assert_eq!(st["output"], json!({"status": "ok", "execution_count": st["id"], "data": {"text/plain": "2"}}));
    assert!(st["completed"].as_i64().unwrap() >= st["started"].as_i64().unwrap());

    let st = gw.run(id, "pyspark", "print('hello')\nprint('world')").await;
    assert_eq!(text(&st), "hello\nworld");

    let st = gw.run(id, "pyspark", "1/0").await;
    assert_eq!(st["state"], "available");
    let out = &st["output"];
    assert_eq!(out["status"], "error");
    assert_eq!(out["ename"], "ZeroDivisionError");
    assert_eq!(out["evalue"], "division by zero");
    assert!(out["traceback"].is_array());

    let st = gw.run(id, "pyspark", "spark.range(1000).selectExpr('sum(id) as s').collect()[0].s").await;
    assert_eq!(text(&st), "499500");

    gw.run(id, "pyspark", "j = {'a': [1, 2], 'b': None}\nt = [{'n': 1, 's': 'x'}, {'n': 2, 's': 'y'}]").await;
    let st = gw.run(id, "pyspark", "%json j").await;
    assert_eq!(st["output"]["data"]["application/json"], json!({"a": [1, 2], "b": null}), "{st}");
    let st = gw.run(id, "pyspark", "%table t").await;
    let table = &st["output"]["data"]["application/vnd.livy.table.v1+json"];
    assert_eq!(table["data"], json!([[1, "x"], [2, "y"]]), "{st}");
    let names: Vec<&str> = table["headers"].as_array().unwrap().iter().map(|h| h["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["n", "s"]);

    let st = gw.run(id, "pyspark", "%nosuchmagic x").await;
    assert_eq!(st["output"]["ename"], "UnknownMagic", "{st}");
}

#[tokio::test]
async fn scala_statements_run_in_the_repl_and_reach_executors() {
    let gw = gateway();
    let id = shared_session().await;
    let st = gw.run(id, "spark", "1+1").await;
    assert_eq!(st["output"]["status"], "ok", "{st}");
    assert!(text(&st).contains("Int = 2"), "{st}");
    let st = gw.run(id, "scala", "println(\"from scala\")").await;
    assert!(text(&st).contains("from scala"), "{st}");
    // A closure defined in the REPL runs in tasks: the REPL's classes reach the executors.
    let st = gw.run(id, "spark", "sc.parallelize(1 to 10).map(_ * 2).sum").await;
    assert!(text(&st).contains("110.0"), "{st}");
    let st = gw.run(id, "spark", "val broken: Int = \"text\"").await;
    assert_eq!(st["output"]["status"], "error", "{st}");
    assert_eq!(st["output"]["ename"], "Error");
}

#[tokio::test]
async fn sql_statements_return_schema_and_rows() {
    let gw = gateway();
    let id = shared_session().await;
    let st = gw.run(id, "sql", "select 1 as a, 'x' as b").await;
    let data = &st["output"]["data"]["application/json"];
    assert_eq!(data["data"], json!([[1, "x"]]), "{st}");
    assert_eq!(data["schema"]["type"], "struct");
    let fields: Vec<(&str, &str)> = data["schema"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["name"].as_str().unwrap(), f["type"].as_str().unwrap()))
        .collect();
    assert_eq!(fields, [("a", "integer"), ("b", "string")]);
    let st = gw.run(id, "sql", "select * from no_such_table").await;
    assert_eq!(st["output"]["status"], "error");
    assert_eq!(st["output"]["ename"], "Error");
}

#[tokio::test]
async fn a_waiting_get_answers_when_the_statement_ends_without_polling() {
    let gw = gateway();
    let id = shared_session().await;
    let (status, st) = gw
        .post(
            &format!("/sessions/{id}/statements"),
            json!({"kind": "pyspark", "code": "import time; time.sleep(2); 6 * 7"}),
        )
        .await;
    assert_eq!(status, 201, "{st}");
    // One request, held until the result is there (the shared session may be busy with another
    // test's statement first: the wait is long enough for both).
    let (status, done) = gw.get(&format!("/sessions/{id}/statements/{}?wait=50s", st["id"])).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["state"], "available", "{done}");
    assert_eq!(done["output"]["data"]["text/plain"], "42", "{done}");
    // A short wait that runs out shows the statement as it is.
    let (_, st) =
        gw.post(&format!("/sessions/{id}/statements"), json!({"kind": "pyspark", "code": "time.sleep(3); 1"})).await;
    let (status, running) = gw.get(&format!("/sessions/{id}/statements/{}?wait=500ms", st["id"])).await;
    assert_eq!(status, 200, "{running}");
    assert!(["waiting", "running"].contains(&running["state"].as_str().unwrap()), "{running}");
    gw.wait_statement(id, st["id"].as_u64().unwrap(), Duration::from_secs(120)).await;
}

#[tokio::test]
async fn a_statements_events_stream_its_progress_then_its_result_and_end() {
    let gw = gateway();
    let id = shared_session().await;
    let (status, st) = gw
        .post(
            &format!("/sessions/{id}/statements"),
            json!({"kind": "pyspark", "code": "import time; time.sleep(2); 'ev' * 2"}),
        )
        .await;
    assert_eq!(status, 201, "{st}");
    let r = gw.client().get(gw.url(&format!("/sessions/{id}/statements/{}/events", st["id"]))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    // The stream ends by itself once the statement has ended.
    let text = tokio::time::timeout(Duration::from_secs(120), r.text()).await.unwrap().unwrap();
    let first_progress = text.find("event: progress").expect(&text);
    let result = text.find("event: statement").expect(&text);
    assert!(first_progress < result, "{text}");
    let data = text[result..].lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
    let statement: Value = serde_json::from_str(data).unwrap();
    assert_eq!(
        (statement["state"].as_str(), statement["output"]["data"]["text/plain"].as_str()),
        (Some("available"), Some("'evev'"))
    );
    // An unknown statement is a 404 before any stream opens.
    let (status, _) = gw.get(&format!("/sessions/{id}/statements/999999/events")).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn sparkr_without_r_is_a_clear_error() {
    let gw = gateway();
    let id = shared_session().await;
    let st = gw.run(id, "sparkr", "1 + 1").await;
    assert_eq!(st["output"]["status"], "error", "{st}");
    assert!(st["output"]["evalue"].as_str().unwrap().contains("R"), "{st}");
}

#[tokio::test]
async fn completion_for_python_and_scala() {
    let id = shared_session().await;
    let candidates = complete(id, json!({"code": "spark.ran", "kind": "pyspark", "cursor": 9})).await;
    assert!(candidates.iter().any(|c| c.contains("range")), "{candidates:?}");
    // The first Scala completion may have to start the REPL.
    let candidates = complete(id, json!({"code": "sc.paralle", "kind": "spark", "cursor": 10})).await;
    assert!(candidates.iter().any(|c| c.contains("parallelize")), "{candidates:?}");
}

/// The candidates of a completion request; on failure, panics with the session's log.
async fn complete(id: u64, request: serde_json::Value) -> Vec<String> {
    let gw = gateway();
    // The first Scala completion starts the REPL: on a loaded 2-core machine that has taken
    // more than the client's usual minute. The gateway waits up to sessions.completion_timeout
    // (240 s in the tests); so does this request.
    let r = gw
        .client()
        .post(gw.url(&format!("/sessions/{id}/completion")))
        .timeout(Duration::from_secs(300))
        .json(&request)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: serde_json::Value = r.json().await.unwrap_or(serde_json::Value::Null);
    if status != 200 {
        let (_, log) = gw.get(&format!("/sessions/{id}/log?size=-1")).await;
        panic!("completion failed: {body}\nsession log: {log:#}");
    }
    body["candidates"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn spark_properties_reach_the_driver_and_stay_off_the_command_line() {
    let gw = gateway();
    let id = shared_session().await;
    // The request's conf and the operator's spark.conf, through the owner-only properties file.
    let st = gw.run(id, "pyspark", "print(spark.conf.get('spark.test.note'))").await;
    assert_eq!(text(&st), SHARED_NOTE);
    let st = gw.run(id, "pyspark", "print(spark.conf.get('spark.driver.memory'))").await;
    assert_eq!(text(&st), "768m");
    // No process of the session shows them in its argv (readable by every local user).
    let pgid = gw.manager.get(&id.to_string()).unwrap().process().unwrap().pgid;
    let pids = processes_in_group(pgid);
    assert!(!pids.is_empty());
    for pid in pids {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        assert!(!cmdline.contains("spark.test.note"), "{pid}: {cmdline}");
    }
}

#[tokio::test]
async fn session_info_matches_livy() {
    let gw = gateway();
    let id = shared_session().await;
    let (status, info) = gw.get(&format!("/sessions/{id}")).await;
    assert_eq!(status, 200);
    let keys: Vec<&str> = info.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "id",
            "name",
            "appId",
            "owner",
            "proxyUser",
            "state",
            "kind",
            "appInfo",
            "log",
            "ttl",
            "idleTimeout",
            "driverMemory",
            "driverCores",
            "executorMemory",
            "executorCores",
            "conf",
            "archives",
            "files",
            "heartbeatTimeoutInSecond",
            "jars",
            "numExecutors",
            "pyFiles",
            "queue"
        ]
    );
    assert_eq!(info["kind"], "shared");
    assert_eq!(info["owner"], "anonymous");
    assert_eq!(info["name"], "shared-test");
    assert_eq!(info["driverCores"], 0);
    assert!(info["appId"].as_str().unwrap().starts_with("local-"), "{info}");
    // The UI through the gateway's proxy, never the driver's own address.
    assert_eq!(info["appInfo"]["sparkUiUrl"], json!(gw.url(&format!("/sessions/{id}/sparkui/"))), "{info}");
    // By name too.
    let (status, by_name) = gw.get("/sessions/shared-test").await;
    assert_eq!((status, &by_name["id"]), (200, &info["id"]));
    let (_, list) = gw.get("/sessions").await;
    assert!(list["sessions"].as_array().unwrap().iter().any(|s| s["id"] == info["id"]));
    // The log pages with from/size/total.
    let (_, log) = gw.get(&format!("/sessions/{id}/log?from=0&size=3")).await;
    assert_eq!(log["from"], 0);
    assert!(log["total"].as_u64().unwrap() >= 3);
    assert_eq!(log["log"].as_array().unwrap().len(), 3);
    // Progress comes from Spark's status tracker while a multi-task job runs.
    let (_, st) = gw
        .post(
            &format!("/sessions/{id}/statements"),
            json!({"kind": "pyspark", "code": "sc.parallelize(range(8), 8).map(lambda x: __import__('time').sleep(0.7) or x).sum()"}),
        )
        .await;
    let sid = st["id"].as_u64().unwrap();
    let mut seen = Vec::new();
    let finished = loop {
        let (_, st) = gw.get(&format!("/sessions/{id}/statements/{sid}")).await;
        let p = st["progress"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&p), "{st}");
        if st["state"] == "available" {
            break st;
        }
        seen.push(p);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(text(&finished), "28");
    assert!(seen.iter().any(|p| *p > 0.0 && *p < 1.0), "no partial progress seen: {seen:?}");
    // Statements list, newest first with order=desc.
    gw.run(id, "pyspark", "'listed'").await;
    let (_, all) = gw.get(&format!("/sessions/{id}/statements?order=desc&size=1")).await;
    assert!(all["total_statements"].as_u64().unwrap() >= 1);
    assert_eq!(all["statements"].as_array().unwrap().len(), 1);
}

async fn wait_running(gw: &TestGateway, id: u64, sid: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let (_, st) = gw.get(&format!("/sessions/{id}/statements/{sid}")).await;
        if st["state"] == "running" {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "never ran: {st}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Cancels a running statement and returns how long it took to end `cancelled`.
async fn cancel_and_time(gw: &TestGateway, id: u64, code: &str) -> Duration {
    let (status, st) = gw.post(&format!("/sessions/{id}/statements"), json!({"code": code})).await;
    assert_eq!(status, 201);
    let sid = st["id"].as_u64().unwrap();
    wait_running(gw, id, sid).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // really inside the sleep / the job
    let started = tokio::time::Instant::now();
    let (status, body) = gw.post(&format!("/sessions/{id}/statements/{sid}/cancel"), json!({})).await;
    assert_eq!((status, body), (200, json!({"msg": "canceled"})));
    let st = gw.wait_statement(id, sid, Duration::from_secs(30)).await;
    let took = started.elapsed();
    assert_eq!(st["state"], "cancelled", "{st}");
    took
}

#[tokio::test]
async fn cancel_really_stops_work_then_delete_leaves_no_process() {
    let gw = gateway();
    let (status, body) = gw.post("/sessions", json!({"kind": "pyspark"})).await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_u64().unwrap();
    // A statement posted while the session is still starting is queued, not refused.
    let (status, early) = gw.post(&format!("/sessions/{id}/statements"), json!({"code": "6 * 7"})).await;
    assert_eq!(status, 201, "{early}");
    assert_eq!(early["state"], "waiting");
    assert_eq!(early["output"], Value::Null);
    let early = gw.wait_statement(id, early["id"].as_u64().unwrap(), START).await;
    assert_eq!(text(&early), "42");

    // Plain Python code (Livy cannot stop this).
    let took = cancel_and_time(gw, id, "import time\ntime.sleep(600)").await;
    assert!(took < Duration::from_secs(2), "cancel of time.sleep took {took:?}");
    gw.wait_state(id, &["idle"], Duration::from_secs(5)).await;
    // A long Spark job.
    let job = "sc.parallelize(range(100000), 2).map(lambda x: __import__('time').sleep(0.01) or x).count()";
    let took = cancel_and_time(gw, id, job).await;
    assert!(took < Duration::from_secs(2), "cancel of a Spark job took {took:?}");
    gw.wait_state(id, &["idle"], Duration::from_secs(5)).await;
    // The session is healthy afterwards, Spark included.
    let st = gw.run(id, "pyspark", "sc.parallelize(range(10)).sum()").await;
    assert_eq!(text(&st), "45");

    let pgid = gw.manager.get(&id.to_string()).unwrap().process().unwrap().pgid;
    assert!(processes_in_group(pgid).len() >= 2, "the JVM and the Python driver run in the session's group");
    // PySpark's worker daemon leaves the group (setpgid); it must go too.
    let escaped = sparkgate::engine::launch::descendants_of_group(pgid);
    let (status, body) = gw.delete(&format!("/sessions/{id}")).await;
    assert_eq!((status, body), (200, json!({"msg": "deleted"})));
    assert_eq!(processes_in_group(pgid), Vec::<i32>::new(), "no process of a deleted session survives");
    let survivors: Vec<&i32> =
        escaped.iter().filter(|p| std::path::Path::new(&format!("/proc/{p}")).exists()).collect();
    assert!(survivors.is_empty(), "descendants outside the group survived: {survivors:?} (of {escaped:?})");
    assert_eq!(gw.get(&format!("/sessions/{id}")).await.0, 404);
}

#[tokio::test]
async fn a_killed_driver_jvm_makes_the_session_dead_with_the_reason() {
    let gw = gateway();
    let (status, body) = gw.post("/sessions", json!({"kind": "pyspark", "name": "doomed"})).await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_u64().unwrap();
    gw.wait_state(id, &["idle"], START).await;
    let st = gw.run(id, "pyspark", "'alive'").await;
    assert_eq!(text(&st), "'alive'");
    let pgid = gw.manager.get(&id.to_string()).unwrap().process().unwrap().pgid;
    // spark-submit execs the JVM; in the sandbox it runs under bwrap, in the same group.
    let jvm = processes_in_group(pgid)
        .into_iter()
        .find(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "java"))
        .expect("the driver JVM in the session's group");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(jvm), nix::sys::signal::Signal::SIGKILL).unwrap();
    let killed_at = tokio::time::Instant::now();
    gw.wait_state(id, &["dead"], Duration::from_secs(10)).await;
    assert!(killed_at.elapsed() < Duration::from_secs(10));
    let (_, log) = gw.get(&format!("/sessions/{id}/log?size=-1")).await;
    let log = log["log"].to_string();
    assert!(log.contains("status 137"), "{log}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !processes_in_group(pgid).is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "left behind: {:?}", processes_in_group(pgid));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, _) = gw.post(&format!("/sessions/{id}/statements"), json!({"code": "1"})).await;
    assert_eq!(status, 409);
}

#[tokio::test]
async fn results_survive_a_dropped_driver_connection_and_idle_timeout_spares_busy_sessions() {
    let gw = gateway();
    let (status, body) = gw.post("/sessions", json!({"kind": "pyspark", "idleTimeout": "5s"})).await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_u64().unwrap();
    gw.wait_state(id, &["idle"], START).await;
    let pgid = gw.manager.get(&id.to_string()).unwrap().process().unwrap().pgid;

    // Busy for longer than the idle timeout, and the connection drops in the middle.
    let (status, st) =
        gw.post(&format!("/sessions/{id}/statements"), json!({"code": "import time\ntime.sleep(8)\n6 * 7"})).await;
    assert_eq!(status, 201);
    let sid = st["id"].as_u64().unwrap();
    wait_running(gw, id, sid).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let session = gw.manager.get(&id.to_string()).unwrap();
    assert!(session.drop_driver_connection());
    let st = gw.wait_statement(id, sid, Duration::from_secs(60)).await;
    assert_eq!(text(&st), "42", "the result was re-sent after the reconnect: {st}");
    assert!(session.driver_connected(), "the driver dialled back");

    // Now idle: stopped after the idle timeout, with the reason, and nothing left running.
    let state = gw.wait_state(id, &["killed", "dead"], Duration::from_secs(30)).await;
    assert_eq!(state, "killed");
    let (_, log) = gw.get(&format!("/sessions/{id}/log?size=-1")).await;
    assert!(log["log"].to_string().contains("idle"), "{log}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !processes_in_group(pgid).is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "left behind: {:?}", processes_in_group(pgid));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
