//! The Spark UI behind the gateway, on real Spark (local mode): the driver's own UI answers
//! only requests signed with its session's key and listens on loopback only; the gateway's
//! proxy (`/sessions/{id}/sparkui/...`, `/batches/{id}/sparkui/...`) serves it to those who may
//! view the session, as a 404 to anyone else; and what a driver or its output says about its
//! application id and UI port is not believed on its word.
//!
//! One session and one batch in all (each costs a JVM).

use crate::support::TestGateway;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::sync::OnceLock;
use std::time::Duration;

const POLICY: &str = r#"
[create]
users = ["alice", "bob"]

[view]
users = ["viewer"]
"#;

fn gateway() -> &'static TestGateway {
    static GW: OnceLock<TestGateway> = OnceLock::new();
    GW.get_or_init(|| TestGateway::start_with_policy(&["auth.methods=[\"jwt\"]"], POLICY))
}

/// A client that shows redirects instead of following them.
fn no_redirects(gw: &TestGateway) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&gw.ca_pem).unwrap())
        .tls_built_in_root_certs(false)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// GET `path` as `token` (None: without credentials): status, headers, body text.
async fn fetch(gw: &TestGateway, path: &str, token: Option<&str>) -> (StatusCode, reqwest::header::HeaderMap, String) {
    let mut req = no_redirects(gw).get(gw.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    let (status, headers) = (r.status(), r.headers().clone());
    (status, headers, r.text().await.unwrap())
}

/// A pyspark session of alice's, idle.
async fn session() -> u64 {
    static ID: tokio::sync::OnceCell<u64> = tokio::sync::OnceCell::const_new();
    *ID.get_or_init(|| async {
        let gw = gateway();
        let alice = gw.token("alice", &[]);
        let (status, _, body) =
            gw.call(Method::POST, "/sessions", Some(&alice), Some(json!({"kind": "pyspark"}))).await;
        assert_eq!(status, 201, "{body}");
        let id = body["id"].as_u64().unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
        loop {
            let (_, _, st) = gw.call(Method::GET, &format!("/sessions/{id}"), Some(&alice), None).await;
            // Ready, and the proxied UI is known.
            if st["state"] == "idle" && st["appInfo"]["sparkUiUrl"].is_string() {
                break;
            }
            let (_, _, log) = gw.call(Method::GET, &format!("/sessions/{id}/log?size=-1"), Some(&alice), None).await;
            assert!(tokio::time::Instant::now() < deadline && st["state"] != "dead", "{st}\n{log:#}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        id
    })
    .await
}

/// The port in Spark's own "Successfully started service 'SparkUI' on port N." line.
fn ui_port_in(log: &Value) -> Option<u16> {
    log["log"].as_array()?.iter().filter_map(Value::as_str).find_map(|line| {
        let rest = line.split("started service 'SparkUI' on port ").nth(1)?;
        rest.trim().trim_end_matches('.').parse().ok()
    })
}

/// The local addresses of the listening TCP sockets on `port` (from /proc/net/tcp and tcp6).
fn listening_addresses(port: u16) -> Vec<std::net::IpAddr> {
    let mut found = Vec::new();
    for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        let Ok(text) = std::fs::read_to_string(file) else { continue };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state)) = (f.get(1), f.get(3)) else { continue };
            let Some((addr, p)) = local.split_once(':') else { continue };
            if *state != "0A" || u16::from_str_radix(p, 16).ok() != Some(port) {
                continue;
            }
            let words: Vec<u32> =
                (0..addr.len() / 8).map(|i| u32::from_str_radix(&addr[i * 8..i * 8 + 8], 16).unwrap()).collect();
            let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
            found.push(if v6 {
                std::net::IpAddr::from(<[u8; 16]>::try_from(bytes.as_slice()).unwrap())
            } else {
                std::net::IpAddr::from(<[u8; 4]>::try_from(bytes.as_slice()).unwrap())
            });
        }
    }
    found
}

fn is_loopback(addr: &std::net::IpAddr) -> bool {
    match addr {
        std::net::IpAddr::V4(a) => a.is_loopback(),
        std::net::IpAddr::V6(a) => a.is_loopback() || a.to_ipv4_mapped().is_some_and(|m| m.is_loopback()),
    }
}

#[tokio::test]
async fn the_drivers_own_ui_answers_only_signed_requests_and_only_on_loopback() {
    let gw = gateway();
    let id = session().await;
    let alice = gw.token("alice", &[]);
    let (_, _, log) = gw.call(Method::GET, &format!("/sessions/{id}/log?size=-1"), Some(&alice), None).await;
    let port = ui_port_in(&log).unwrap_or_else(|| panic!("no SparkUI port in {log:#}"));
    let plain = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    for path in ["/", "/jobs/", "/environment/", "/api/v1/applications", "/static/webui.css", "/metrics/json/"] {
        let direct = plain.get(format!("http://127.0.0.1:{port}{path}")).send().await.unwrap();
        assert_eq!(direct.status(), StatusCode::FORBIDDEN, "{path} without the session's signature");
        let forged = plain
            .get(format!("http://127.0.0.1:{port}{path}"))
            .bearer_auth("eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjQxMDI0NDQ4MDB9.c2lnbmVkIHdpdGggYW5vdGhlciBrZXk")
            .send()
            .await
            .unwrap();
        assert_eq!(forged.status(), StatusCode::FORBIDDEN, "{path} with a token of another key");
    }
    let addresses = listening_addresses(port);
    assert!(!addresses.is_empty(), "the UI listens on {port}");
    assert!(addresses.iter().all(is_loopback), "local mode binds the UI to loopback only: {addresses:?}");
}

#[tokio::test]
async fn viewers_read_the_ui_through_the_gateway_and_nobody_else_can() {
    let gw = gateway();
    let id = session().await;
    let alice = gw.token("alice", &[]);
    let base = format!("/sessions/{id}/sparkui");

    // The session shows the proxied UI to those who may view it, and to nobody else.
    let (_, _, info) = gw.call(Method::GET, &format!("/sessions/{id}"), Some(&alice), None).await;
    assert_eq!(info["appInfo"]["sparkUiUrl"], json!(gw.url(&format!("{base}/"))), "{info}");
    let app_id = info["appId"].as_str().unwrap().to_string();
    assert!(app_id.starts_with("local-"), "{info}");
    let bob = gw.token("bob", &[]);
    let (_, _, other) = gw.call(Method::GET, &format!("/sessions/{id}"), Some(&bob), None).await;
    assert_eq!(other["appInfo"]["sparkUiUrl"], Value::Null, "{other}");

    // The owner reads pages, static files and the REST API, with links under the proxy.
    let (status, headers, page) = fetch(gw, &format!("{base}/jobs/"), Some(&alice)).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(headers["content-type"].to_str().unwrap().starts_with("text/html"), "{headers:?}");
    assert!(page.contains(&format!("{base}/static/")), "links point under the proxy: {page}");
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("sandbox allow-scripts") && !csp.contains("allow-same-origin"), "{csp}");
    assert_eq!(headers["x-frame-options"], "DENY");
    let (status, _, css) = fetch(gw, &format!("{base}/static/webui.css"), Some(&alice)).await;
    assert_eq!(status, StatusCode::OK, "{css}");
    let (status, _, apps) = fetch(gw, &format!("{base}/api/v1/applications"), Some(&alice)).await;
    assert_eq!(status, StatusCode::OK, "{apps}");
    let apps: Value = serde_json::from_str(&apps).unwrap();
    assert_eq!(apps[0]["id"], json!(app_id), "{apps}");
    let head = no_redirects(gw).head(gw.url(&format!("{base}/jobs/"))).bearer_auth(&alice).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);

    // Redirects stay under the proxy: the bare path, and Spark's own `/` → `/jobs/`.
    let (status, headers, _) = fetch(gw, &base, Some(&alice)).await;
    assert!(status.is_redirection(), "{status}");
    assert_eq!(headers["location"], format!("{base}/").as_str());
    let (status, headers, _) = fetch(gw, &format!("{base}/"), Some(&alice)).await;
    assert!(status.is_redirection(), "{status}");
    assert_eq!(headers["location"], format!("{base}/jobs/").as_str());

    // The UI is read-only through the gateway, and only what Spark serves is asked for.
    let (status, _, body) = fetch(gw, &format!("{base}/jobs/job/kill/?id=0"), Some(&alice)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // (The client library already resolves `..` and `%2e%2e`; the unit tests send those raw.)
    for bad in ["/jobs;x=1/", "/static/%252e%252e/x", "/jobs/%2F/"] {
        let (status, _, body) = fetch(gw, &format!("{base}{bad}"), Some(&alice)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    let post = no_redirects(gw)
        .post(gw.url(&format!("{base}/jobs/")))
        .bearer_auth(&alice)
        .header("X-Requested-By", "test")
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);

    // A viewer may read it too.
    let (status, _, _) = fetch(gw, &format!("{base}/jobs/"), Some(&gw.token("viewer", &[]))).await;
    assert_eq!(status, StatusCode::OK);

    // Anyone else gets exactly what a session that does not exist gets.
    let (status, _, body) = fetch(gw, &format!("{base}/jobs/"), Some(&bob)).await;
    let (missing_status, _, missing) = fetch(gw, "/sessions/424242/sparkui/jobs/", Some(&bob)).await;
    assert_eq!((status, missing_status), (StatusCode::NOT_FOUND, StatusCode::NOT_FOUND), "{body}");
    assert_eq!(body.replace(&id.to_string(), "N"), missing.replace("424242", "N"));
    let (status, _, _) = fetch(gw, &base, Some(&bob)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "not even the redirect");
    let (status, headers, _) = fetch(gw, &format!("{base}/jobs/"), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(headers.contains_key("www-authenticate"));
}

#[tokio::test]
async fn a_forged_app_info_changes_nothing_viewers_see() {
    let gw = gateway();
    let id = session().await;
    let alice = gw.token("alice", &[]);
    let (_, _, before) = gw.call(Method::GET, &format!("/sessions/{id}"), Some(&alice), None).await;
    // A loopback service that is not the session's: the proxy must never connect to it.
    let bait = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bait_port = bait.local_addr().unwrap().port();
    // User code runs inside the driver and can send anything over its RPC connection.
    let code = format!(
        "import gc\n\
         d = next(o for o in gc.get_objects() if type(o).__name__ == 'Driver')\n\
         d.link.send({{'type': 'app_info', 'app_id': 'application_1700000000000_0666', \
         'spark_ui_url': 'javascript:alert(document.cookie)//'}})\n\
         d.link.send({{'type': 'app_info', 'app_id': '<img src=x onerror=alert(1)>', \
         'spark_ui_url': 'http://127.0.0.1:{bait_port}/'}})\n\
         'sent'"
    );
    let (status, _, st) =
        gw.call(Method::POST, &format!("/sessions/{id}/statements"), Some(&alice), Some(json!({"code": code}))).await;
    assert_eq!(status, 201, "{st}");
    let sid = st["id"].as_u64().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let st = loop {
        let (_, _, st) = gw.call(Method::GET, &format!("/sessions/{id}/statements/{sid}"), Some(&alice), None).await;
        if st["state"] == "available" {
            break st;
        }
        assert!(tokio::time::Instant::now() < deadline, "{st}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(st["output"]["data"]["text/plain"], "'sent'", "{st}");
    // Give the gateway time to receive the messages.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, _, after) = gw.call(Method::GET, &format!("/sessions/{id}"), Some(&alice), None).await;
    assert_eq!(after["appId"], before["appId"], "{after}");
    assert_eq!(after["appInfo"], before["appInfo"], "{after}");
    let (status, _, page) = fetch(gw, &format!("/sessions/{id}/sparkui/jobs/"), Some(&alice)).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("Spark Jobs"), "still the real UI: {page}");
    let accepted = tokio::time::timeout(Duration::from_millis(300), bait.accept()).await;
    assert!(accepted.is_err(), "the proxy connected to a port the driver named");
}

#[tokio::test]
async fn a_ui_port_printed_by_a_batch_is_used_only_if_the_batch_listens_on_it() {
    let gw = gateway();
    let alice = gw.token("alice", &[]);
    // A loopback service that is not the batch's; its port is printed the way Spark prints
    // its UI's, before the real UI starts.
    let bait = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bait_port = bait.local_addr().unwrap().port();
    let release = gw.jobs_dir.join("ui-batch.release");
    let file = gw.jobs_dir.join("ui_batch.py");
    std::fs::write(
        &file,
        format!(
            "import os, time\n\
             print(\"INFO Utils: Successfully started service 'SparkUI' on port {bait_port}.\", flush=True)\n\
             from pyspark.sql import SparkSession\n\
             spark = SparkSession.builder.getOrCreate()\n\
             spark.sparkContext.parallelize(range(4)).sum()\n\
             print('UI-BATCH-READY', flush=True)\n\
             deadline = time.time() + 180\n\
             while time.time() < deadline and not os.path.exists({release:?}):\n\
             \x20   time.sleep(0.2)\n\
             spark.stop()\n",
            release = release.display().to_string()
        ),
    )
    .unwrap();
    let (status, _, body) =
        gw.call(Method::POST, "/batches", Some(&alice), Some(json!({"file": file.display().to_string()}))).await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_u64().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    loop {
        let (_, _, log) = gw.call(Method::GET, &format!("/batches/{id}/log?size=-1"), Some(&alice), None).await;
        if log["log"].to_string().contains("UI-BATCH-READY") {
            break;
        }
        let (_, _, b) = gw.call(Method::GET, &format!("/batches/{id}"), Some(&alice), None).await;
        assert!(tokio::time::Instant::now() < deadline && b["state"] != "dead", "{b}\n{log:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, _, page) = fetch(gw, &format!("/batches/{id}/sparkui/jobs/"), Some(&alice)).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("Spark Jobs") && page.contains(&format!("/batches/{id}/sparkui/static/")), "{page}");
    let (_, _, info) = gw.call(Method::GET, &format!("/batches/{id}"), Some(&alice), None).await;
    assert_eq!(info["appInfo"]["sparkUiUrl"], json!(gw.url(&format!("/batches/{id}/sparkui/"))), "{info}");
    assert!(info["appId"].as_str().is_some_and(|a| a.starts_with("local-")), "{info}");
    let (status, _, _) = fetch(gw, &format!("/batches/{id}/sparkui/jobs/"), Some(&gw.token("bob", &[]))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let accepted = tokio::time::timeout(Duration::from_millis(300), bait.accept()).await;
    assert!(accepted.is_err(), "the proxy connected to a port the batch only printed");
    std::fs::write(&release, "").unwrap();
    let (status, _, _) = gw.call(Method::DELETE, &format!("/batches/{id}"), Some(&alice), None).await;
    assert_eq!(status, 200);
}
