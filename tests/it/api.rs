//! The REST surface without waiting for Spark: Livy's shapes, and a clear JSON error for every
//! kind of bad input, while the gateway keeps serving.

use crate::support::{gateway, TestGateway};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn version_is_parseable_and_reports_dangerous_options() {
    let (status, body) = gateway().get("/version").await;
    assert_eq!(status, 200);
    let version = body["version"].as_str().unwrap();
    let numeric: Vec<u32> = version.split(['+', '-']).next().unwrap().split('.').map(|p| p.parse().unwrap()).collect();
    assert_eq!(numeric.len(), 3, "{version}");
    // The harness runs as root here and in CI, which it must allow explicitly (support.rs).
    let expected = if nix::unistd::geteuid().is_root() {
        json!(["auth.dangerous_allow_anonymous", "server.dangerous_run_as_root"])
    } else {
        json!(["auth.dangerous_allow_anonymous"])
    };
    assert_eq!(body["dangerous"], expected);
    assert!(body["sparkVersion"].as_str().unwrap().starts_with("4.0"), "{body}");
}

#[tokio::test]
async fn responses_carry_a_request_id() {
    let r = gateway().client().get(gateway().url("/sessions")).send().await.unwrap();
    assert!(r.headers().get("x-request-id").is_some());
}

#[tokio::test]
async fn unknown_routes_and_ids_are_404_json() {
    let gw = gateway();
    let (status, body) = gw.get("/nope").await;
    assert_eq!((status, body["msg"].as_str().is_some()), (404, true));
    let (status, body) = gw.get("/sessions/99999").await;
    assert_eq!(status, 404);
    assert_eq!(body, json!({"msg": "Session '99999' not found."}));
    let (status, _) = gw.get("/sessions/no-such-name/state").await;
    assert_eq!(status, 404);
    let (status, _) = gw.delete("/sessions/99999").await;
    assert_eq!(status, 404);
    let (status, _) = gw.post("/sessions/99999/statements", json!({"code": "1"})).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn malformed_create_requests_name_the_problem() {
    let gw = gateway();
    let cases: Vec<(reqwest::Body, &str)> = vec![
        ("{not json".into(), "invalid JSON"),
        (r#"{"kind": 5}"#.into(), "kind"),
        (r#"{"kind": "cobol"}"#.into(), "kind"),
        (r#"{"driverCores": "many"}"#.into(), "driverCores"),
        (r#"{"numExecutors": -1}"#.into(), "numExecutors"),
        (r#"{"knd": "pyspark"}"#.into(), "knd"),
        (r#"{"conf": {"spark.x": {"nested": 1}}}"#.into(), "conf.spark.x"),
        (r#"{"ttl": "forever"}"#.into(), "ttl"),
        (r#"{"idleTimeout": "10 parsecs"}"#.into(), "idleTimeout"),
        (r#"{"name": "12345"}"#.into(), "name"),
        (r#"[1, 2]"#.into(), "invalid"),
    ];
    for (body, needle) in cases {
        let (status, reply) = gw.post_raw("/sessions", body).await;
        assert_eq!(status, 400, "{needle}: {reply}");
        let msg = reply["msg"].as_str().unwrap();
        assert!(msg.contains(needle), "expected `{needle}` in {msg}");
    }
}

#[tokio::test]
async fn paging_is_checked() {
    let gw = gateway();
    for q in ["from=-1", "size=-5", "from=abc", "size=1e3"] {
        let (status, body) = gw.get(&format!("/sessions?{q}")).await;
        assert_eq!(status, 400, "{q}: {body}");
        assert!(body["msg"].as_str().unwrap().contains("query parameter"), "{body}");
    }
    let (status, body) = gw.get("/sessions?from=0&size=1").await;
    assert_eq!(status, 200);
    assert!(body["sessions"].as_array().unwrap().len() <= 1);
    assert!(body["total"].is_u64() && body["from"] == 0);
}

#[tokio::test]
async fn bodies_over_the_limit_are_413() {
    let gw = gateway();
    let big = format!(r#"{{"code": "{}"}}"#, "x".repeat(11 * 1024 * 1024));
    let (status, body) = gw.post_raw("/sessions/0/statements", big).await;
    assert_eq!(status, 413, "{body}");
    assert!(body["msg"].as_str().unwrap().contains("max_body_bytes"));
    // A body far larger than the socket buffers hold, sent whole before the answer is read
    // (as python-requests sends it, so Livy's and sparkmagic's clients): still the 413, not a
    // reset connection (the gateway reads and drops the rest before it closes).
    let addr = gw.base.trim_start_matches("https://").parse().unwrap();
    let mut tls = crate::tls::tls_connect(addr, &[std::str::from_utf8(&gw.ca_pem).unwrap()]).await;
    let huge = vec![b'x'; 48 * 1024 * 1024];
    let head = format!(
        "POST /sessions/0/statements HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        huge.len()
    );
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(&huge).await.expect("the gateway reset the connection while the body was sent");
    tls.flush().await.unwrap();
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("max_body_bytes"), "{answer}");
    // …and the gateway is still serving.
    assert_eq!(gw.get("/version").await.0, 200);
}

#[tokio::test]
async fn a_session_that_cannot_start_dies_with_its_reason_and_refuses_statements() {
    let gw = gateway();
    // An impossible driver memory makes spark-submit itself fail quickly.
    let (status, body) = gw.post("/sessions", json!({"kind": "pyspark", "driverMemory": "lots"})).await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_u64().unwrap();
    gw.wait_state(id, &["dead"], Duration::from_secs(60)).await;
    let (_, log) = gw.get(&format!("/sessions/{id}/log?size=-1")).await;
    let lines: Vec<&str> = log["log"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    assert!(lines.iter().any(|l| l.contains("exited unexpectedly")), "{lines:?}");
    let (status, body) = gw.post(&format!("/sessions/{id}/statements"), json!({"code": "1+1"})).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["msg"].as_str().unwrap().contains("dead"), "{body}");
    let (status, _) = gw.get(&format!("/sessions/{id}/statements/0")).await;
    assert_eq!(status, 404);
    let (status, body) = gw.delete(&format!("/sessions/{id}")).await;
    assert_eq!((status, body), (200, json!({"msg": "deleted"})));
    assert_eq!(gw.get(&format!("/sessions/{id}")).await.0, 404);
}

#[tokio::test]
async fn statement_requests_are_validated() {
    let gw = gateway();
    let id = crate::support::shared_session().await;
    let path = format!("/sessions/{id}/statements");
    let (status, body) = gw.post(&path, json!({"kind": "pyspark"})).await;
    assert_eq!(status, 400);
    assert!(body["msg"].as_str().unwrap().contains("code"), "{body}");
    let (status, body) = gw.post(&path, json!({"code": "1"})).await;
    assert_eq!(status, 400, "a shared session needs a statement kind");
    assert!(body["msg"].as_str().unwrap().contains("kind"), "{body}");
    let (status, body) = gw.post(&path, json!({"code": "1", "kind": "fortran"})).await;
    assert_eq!(status, 400);
    let msg = body["msg"].as_str().unwrap();
    assert!(msg.contains("`kind`") && !msg.contains("fortran"), "the field, not the value: {body}");
    let (status, body) = gw.post(&path, json!({"code": 1, "kind": "pyspark"})).await;
    assert_eq!(status, 400);
    assert!(body["msg"].as_str().unwrap().contains("code"), "{body}");
    let (status, _) = gw.get(&format!("{path}/123456")).await;
    assert_eq!(status, 404);
    let (status, _) = gw.get(&format!("{path}/abc")).await;
    assert_eq!(status, 400);
    let (status, _) = gw.post(&format!("{path}/123456/cancel"), json!({})).await;
    assert_eq!(status, 404);
    let (status, body) =
        gw.post(&format!("/sessions/{id}/completion"), json!({"code": "ab", "kind": "pyspark", "cursor": 9})).await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn caps_answer_429_with_a_reason() {
    // A gateway of its own with tight caps; its sessions are deleted while still starting.
    // Beyond the launch cap a session is accepted and waits `not_started`; beyond
    // max_sessions it is refused.
    let gw = TestGateway::start(&["sessions.max_concurrent_launches=1", "sessions.max_sessions=2"]);
    let (s1, b1) = gw.post("/sessions", json!({"kind": "pyspark"})).await;
    assert_eq!(s1, 201, "{b1}");
    let (s2, b2) = gw.post("/sessions", json!({"kind": "pyspark"})).await;
    assert_eq!(s2, 201, "{b2}");
    assert_eq!(b2["state"], "not_started", "{b2}");
    let (s3, b3) = gw.post("/sessions", json!({"kind": "pyspark"})).await;
    assert_eq!(s3, 429, "{b3}");
    assert!(b3["msg"].as_str().unwrap().contains("too many"), "{b3}");
    // Deleting a session while it is still starting works and frees the slot: the queued one
    // starts.
    let id = b1["id"].as_u64().unwrap();
    let pgid = gw.manager.get(&id.to_string()).unwrap().process().unwrap().pgid;
    assert_eq!(gw.delete(&format!("/sessions/{id}")).await.0, 200);
    assert!(crate::support::processes_in_group(pgid).is_empty());
    let queued = b2["id"].as_u64().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, state) = gw.get(&format!("/sessions/{queued}/state")).await;
        if state["state"] != "not_started" {
            assert!(["starting", "idle"].contains(&state["state"].as_str().unwrap()), "{state}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the queued session did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pgid = gw.manager.get(&queued.to_string()).unwrap().process().unwrap().pgid;
    assert_eq!(gw.delete(&format!("/sessions/{queued}")).await.0, 200);
    assert!(crate::support::processes_in_group(pgid).is_empty());
    let (s3, b3) = gw.post("/sessions", json!({"kind": "pyspark", "name": "one"})).await;
    assert_eq!(s3, 201, "{b3}");
    let (s4, b4) = gw.post("/sessions", json!({"kind": "pyspark", "name": "one"})).await;
    assert_eq!(s4, 400, "duplicate names are refused: {b4}");
    assert!(b4["msg"].as_str().unwrap().contains("Duplicate session name"));
    gw.delete(&format!("/sessions/{}", b3["id"])).await;
}

#[tokio::test]
async fn https_negotiates_h2_and_http1() {
    let gw = gateway();
    let r = gw.client().get(gw.url("/version")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    let http1 = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&gw.ca_pem).unwrap())
        .tls_built_in_root_certs(false)
        .http1_only()
        .build()
        .unwrap();
    let r = http1.get(gw.url("/version")).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.version()), (200, reqwest::Version::HTTP_11));
    // A client that does not trust the gateway's CA cannot talk to it.
    let untrusting = reqwest::Client::builder().tls_built_in_root_certs(false).build().unwrap();
    assert!(untrusting.get(gw.url("/version")).send().await.is_err());
}
