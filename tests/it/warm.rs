//! Warm drivers with real Spark: a request like one its user made recently gets a driver that
//! is already up, launched as that user; nobody else's request gets it, nobody sees it before.

use crate::support::TestGateway;
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;

const POLICY: &str = r#"
[create]
users = ["alice", "bob"]

[admin]
users = ["ops"]

[quotas]
users.alice = { max_sessions = 4, max_concurrent_launches = 2 }
users.bob = { max_sessions = 4, max_concurrent_launches = 2 }
"#;

async fn wait_until(what: &str, limit: Duration, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn run(gw: &TestGateway, token: &str, id: u64, code: &str) -> Value {
    let path = format!("/sessions/{id}/statements");
    let (status, _, st) = gw.call(Method::POST, &path, Some(token), Some(json!({"code": code}))).await;
    assert_eq!(status, 201, "{st}");
    let sid = st["id"].as_u64().unwrap();
    let (status, _, st) = gw.call(Method::GET, &format!("{path}/{sid}?wait=60s"), Some(token), None).await;
    assert_eq!(status, 200, "{st}");
    assert_eq!(st["state"], "available", "{st}");
    st["output"].clone()
}

#[tokio::test]
async fn a_request_like_a_recent_one_gets_a_warm_driver_launched_as_its_user_and_nobody_else_does() {
    let gw = TestGateway::start_with_policy(
        &["auth.methods=[\"jwt\"]", "sessions.warm.max_drivers=1", "sessions.warm.users.alice=1"],
        POLICY,
    );
    let (alice, bob, ops) = (gw.token("alice", &[]), gw.token("bob", &[]), gw.token("ops", &[]));
    let body = json!({"kind": "pyspark"});
    // The first request of the day starts cold, and teaches the pool alice's conf class.
    let (status, _, first) = gw.call(Method::POST, "/sessions", Some(&alice), Some(body.clone())).await;
    assert_eq!(status, 201, "{first}");
    let first_id = first["id"].as_u64().unwrap();
    let warm = || gw.manager.warm_drivers().into_iter().find(|s| s.state().as_str() == "idle");
    wait_until("a warm driver of alice's class is up", Duration::from_secs(300), || warm().is_some()).await;
    let warm_id = u64::from(warm().unwrap().id);
    // Nobody sees it, alice included, and the metrics count it.
    let (status, _, _) = gw.call(Method::GET, &format!("/sessions/{warm_id}"), Some(&alice), None).await;
    assert_eq!(status, 404);
    let (_, _, listed) = gw.call(Method::GET, "/sessions", Some(&alice), None).await;
    assert!(listed["sessions"].as_array().unwrap().iter().all(|s| s["id"].as_u64() != Some(warm_id)), "{listed}");
    let r = gw.client().get(gw.url("/metrics")).bearer_auth(&ops).send().await.unwrap();
    let metrics = r.text().await.unwrap();
    assert!(metrics.contains("sparkgate_warm_drivers{state=\"idle\"} 1"), "{metrics}");
    // Bob asks for the same body: not his class (the driver runs as alice), so not his driver.
    let (status, _, bobs) = gw.call(Method::POST, "/sessions", Some(&bob), Some(body.clone())).await;
    assert_eq!(status, 201, "{bobs}");
    assert_ne!(bobs["id"].as_u64(), Some(warm_id));
    assert_ne!(bobs["state"], "idle", "bob's session starts cold: {bobs}");
    let bobs_id = bobs["id"].as_u64().unwrap();
    // Alice asks again, with terms of her own: she gets it, ready.
    let asked = json!({"kind": "pyspark", "heartbeatTimeoutInSecond": 600, "ttl": "2h"});
    let (status, headers, claimed) = gw.call(Method::POST, "/sessions", Some(&alice), Some(asked)).await;
    assert_eq!(status, 201, "{claimed}");
    assert_eq!(claimed["id"].as_u64(), Some(warm_id));
    assert_eq!(claimed["state"], "idle", "{claimed}");
    assert_eq!(claimed["owner"], "alice");
    assert_eq!(claimed["proxyUser"], "alice");
    assert_eq!(headers["location"], format!("/sessions/{warm_id}"));
    // It is hers now: listed, found, and it runs her code as her.
    let (status, _, _) = gw.call(Method::GET, &format!("/sessions/{warm_id}"), Some(&alice), None).await;
    assert_eq!(status, 200);
    let (status, _, _) = gw.call(Method::GET, &format!("/sessions/{warm_id}"), Some(&bob), None).await;
    assert_eq!(status, 404, "bob cannot even learn that alice's session exists");
    let out = run(&gw, &alice, warm_id, "sc.sparkUser()").await;
    assert!(out["data"]["text/plain"].as_str().unwrap().contains("alice"), "{out}");
    let out = run(&gw, &alice, warm_id, "1 + 1").await;
    assert_eq!(out["data"]["text/plain"], "2");
    // Deleted, every process of every one of them is gone (the pool's refill included).
    let groups: Vec<i32> = gw
        .manager
        .list()
        .iter()
        .chain(gw.manager.warm_drivers().iter())
        .filter_map(|s| s.process().map(|p| p.pgid))
        .collect();
    for (id, token) in [(first_id, &alice), (warm_id, &alice), (bobs_id, &bob)] {
        let (status, _, _) = gw.call(Method::DELETE, &format!("/sessions/{id}"), Some(token), None).await;
        assert_eq!(status, 200);
    }
    gw.manager.shutdown_all().await;
    for pgid in groups {
        assert!(crate::support::processes_in_group(pgid).is_empty(), "process group {pgid} is gone");
    }
}
