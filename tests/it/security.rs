//! The security stack end to end on a gateway with JWT only (no anonymous mode): an auth
//! matrix over every route, impersonation into a real Spark session (`sparkUser()`), the conf
//! deny list, quotas, CSRF modes, security headers and policy hot reload.

use crate::support::TestGateway;
use reqwest::Method;
use serde_json::{json, Value};
use std::sync::OnceLock;
use std::time::Duration;

const POLICY: &str = r#"
[superusers]
users = ["root"]

[create]
users = ["hue", "alice", "bob"]

[view]
users = ["viewer"]

[admin]
users = ["ops"]

[[impersonation]]
callers = { users = ["hue"] }
targets = { users = ["alice", "bob"] }
hosts = ["127.0.0.1", "::1"]

[quotas]
users.bob = { max_sessions = 0 }
"#;

fn gateway() -> &'static TestGateway {
    static GW: OnceLock<TestGateway> = OnceLock::new();
    GW.get_or_init(|| TestGateway::start_with_policy(&["auth.methods=[\"jwt\"]"], POLICY))
}

/// A session created by `hue` acting for `alice`: owner hue, effective user alice.
async fn impersonated_session() -> u64 {
    static ID: tokio::sync::OnceCell<u64> = tokio::sync::OnceCell::const_new();
    *ID.get_or_init(|| async {
        let gw = gateway();
        let hue = gw.token("hue", &[]);
        let (status, _, body) = gw
            .call(Method::POST, "/sessions", Some(&hue), Some(json!({"kind": "pyspark", "proxyUser": "alice"})))
            .await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["owner"], "hue");
        assert_eq!(body["proxyUser"], "alice");
        let id = body["id"].as_u64().unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
        loop {
            let (_, _, st) = gw.call(Method::GET, &format!("/sessions/{id}/state"), Some(&hue), None).await;
            if st["state"] == "idle" {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline && st["state"] != "dead", "{st}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        id
    })
    .await
}

#[tokio::test]
async fn the_spark_application_runs_as_the_effective_user() {
    let gw = gateway();
    let id = impersonated_session().await;
    let alice = gw.token("alice", &[]);
    let (status, _, st) = gw
        .call(
            Method::POST,
            &format!("/sessions/{id}/statements"),
            Some(&alice),
            Some(json!({"code": "sc.sparkUser()"})),
        )
        .await;
    assert_eq!(status, 201, "{st}");
    let sid = st["id"].as_u64().unwrap();
    let st = loop {
        let (_, _, st) = gw.call(Method::GET, &format!("/sessions/{id}/statements/{sid}"), Some(&alice), None).await;
        if st["state"] == "available" {
            break st;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(st["output"]["data"]["text/plain"], "'alice'", "{st}");
}

#[tokio::test]
async fn auth_matrix_over_every_route() {
    let gw = gateway();
    let id = impersonated_session().await;
    let tokens: Vec<(&str, Option<String>)> = vec![
        ("none", None),
        ("bad", Some("not.a.token".into())),
        ("forged", Some(forged_token())),
        ("other", Some(gw.token("bob", &[]))),
        ("owner", Some(gw.token("hue", &[]))),
        ("effective", Some(gw.token("alice", &[]))),
        ("viewer", Some(gw.token("viewer", &[]))),
        ("superuser", Some(gw.token("root", &[]))),
    ];
    // Expected status per caller, in the order above.
    let s = format!("/sessions/{id}");
    let hue = gw.token("hue", &[]);
    // Statements and jobs share one id sequence: a statement's id is asked, not assumed.
    let (status, _, statement) =
        gw.call(Method::POST, &format!("{s}/statements"), Some(&hue), Some(json!({"code": "1+1"}))).await;
    assert_eq!(status, 201, "{statement}");
    let sid = statement["id"].as_u64().unwrap();
    let job = json!({"job": "bm90IGEgcGlja2xl", "jobType": "pyspark"});
    let (status, _, submitted) = gw.call(Method::POST, &format!("{s}/submit-job"), Some(&hue), Some(job.clone())).await;
    assert_eq!(status, 201, "{submitted}");
    let job_id = submitted["id"].as_u64().unwrap();
    let routes: Vec<(Method, String, Option<Value>, [u16; 8])> = vec![
        (Method::GET, "/version".into(), None, [401, 401, 401, 200, 200, 200, 200, 200]),
        (Method::GET, "/sessions".into(), None, [401, 401, 401, 200, 200, 200, 200, 200]),
        (Method::GET, "/metrics".into(), None, [401, 401, 401, 403, 403, 403, 403, 200]),
        (Method::GET, s.clone(), None, [401, 401, 401, 404, 200, 200, 200, 200]),
        (Method::GET, format!("{s}/state"), None, [401, 401, 401, 404, 200, 200, 200, 200]),
        (Method::GET, format!("{s}/log"), None, [401, 401, 401, 404, 200, 200, 200, 200]),
        (Method::GET, format!("{s}/statements"), None, [401, 401, 401, 404, 200, 200, 200, 200]),
        (
            Method::POST,
            format!("{s}/statements"),
            Some(json!({"code": "1+1"})),
            [401, 401, 401, 404, 201, 201, 403, 201],
        ),
        (Method::GET, format!("{s}/statements/{sid}"), None, [401, 401, 401, 404, 200, 200, 200, 200]),
        (
            Method::POST,
            format!("{s}/statements/{sid}/cancel"),
            Some(json!({})),
            [401, 401, 401, 404, 200, 200, 403, 200],
        ),
        (
            Method::POST,
            format!("{s}/completion"),
            Some(json!({"code": "spark.ran", "kind": "pyspark", "cursor": 9})),
            [401, 401, 401, 404, 200, 200, 403, 200],
        ),
        (Method::POST, format!("{s}/connect"), Some(json!({})), [401, 401, 401, 404, 200, 200, 403, 200]),
        // Jobs need the modify right like statements (these bytes are no pickle: the job fails
        // in the driver, which is not what this matrix is about).
        (Method::POST, format!("{s}/submit-job"), Some(job.clone()), [401, 401, 401, 404, 201, 201, 403, 201]),
        (Method::POST, format!("{s}/run-job"), Some(job.clone()), [401, 401, 401, 404, 201, 201, 403, 201]),
        (Method::GET, format!("{s}/jobs/{job_id}"), None, [401, 401, 401, 404, 200, 200, 200, 200]),
        (Method::POST, format!("{s}/jobs/{job_id}/cancel"), Some(json!({})), [401, 401, 401, 404, 200, 200, 403, 200]),
        (
            Method::POST,
            "/sessions".into(),
            Some(json!({"kind": "pyspark", "conf": {"spark.master": "yarn"}})),
            [401, 401, 401, 403, 403, 403, 403, 201],
        ),
    ];
    for (method, path, body, expected) in &routes {
        for ((who, token), want) in tokens.iter().zip(expected) {
            if *who == "superuser" && path == "/sessions" && *method == Method::POST {
                continue; // a superuser may set any conf: that would launch a session; see below
            }
            let (status, headers, reply) = gw.call(method.clone(), path, token.as_deref(), body.clone()).await;
            assert_eq!(status, *want, "{method} {path} as {who}: {reply}");
            if status == 401 {
                let challenge = headers.get("www-authenticate").map(|v| v.to_str().unwrap().to_string());
                assert_eq!(challenge.as_deref(), Some("Bearer realm=\"sparkgate\""), "{method} {path} as {who}");
            }
            if status == 403 {
                assert!(reply["msg"].as_str().is_some_and(|m| !m.is_empty()), "403 names a reason: {reply}");
            }
        }
    }
    // Another user learns nothing: the session answers exactly like an id that does not exist,
    // by id and by name, and is not listed.
    let bob = gw.token("bob", &[]);
    let missing = gw.call(Method::GET, "/sessions/424242", Some(&bob), None).await;
    let hidden = gw.call(Method::GET, &s, Some(&bob), None).await;
    assert_eq!((hidden.0, hidden.2.clone()), (404, json!({"msg": format!("Session '{id}' not found.")})));
    assert_eq!((missing.0, missing.2), (404, json!({"msg": "Session '424242' not found."})));
    let (_, _, own) = gw.call(Method::GET, &s, Some(&gw.token("hue", &[])), None).await;
    let proxied = gw.url(&format!("{s}/sparkui/"));
    assert_eq!(own["appInfo"]["sparkUiUrl"], json!(proxied), "the owner sees the gateway's proxy: {own}");
    let (_, _, list) = gw.call(Method::GET, "/sessions", Some(&bob), None).await;
    assert!(!list["sessions"].as_array().unwrap().iter().any(|x| x["id"] == id), "{list}");
    let (_, _, list) = gw.call(Method::GET, "/sessions", Some(&gw.token("viewer", &[])), None).await;
    assert!(list["sessions"].as_array().unwrap().iter().any(|x| x["id"] == id), "{list}");
    // Client headers that claim an identity change nothing.
    let r = gw
        .client()
        .get(gw.url(&format!("{s}/log")))
        .bearer_auth(&bob)
        .header("X-Remote-User", "root")
        .header("Remote-User", "hue")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
}

/// A token signed by a key the gateway never saw.
fn forged_token() -> String {
    let dir = tempfile::tempdir().unwrap();
    let cfg = sparkgate::config::load(&sparkgate::config::Sources {
        file: None,
        env: vec![],
        overrides: vec![format!("server.data_dir=\"{}\"", dir.path().display())],
    })
    .unwrap();
    sparkgate::auth::jwt::mint_dev_token(&cfg, "root", &[], Duration::from_secs(600)).unwrap()
}

#[tokio::test]
async fn creation_is_refused_with_reasons() {
    let gw = gateway();
    let post = |who: &str, body: Value, query: &str| {
        let token = gw.token(who, &[]);
        let path = format!("/sessions{query}");
        async move { gw.call(Method::POST, &path, Some(&token), Some(body)).await }
    };
    let (status, _, body) = post("viewer", json!({"kind": "pyspark"}), "").await;
    assert_eq!(status, 403);
    assert!(body["msg"].as_str().unwrap().contains("create"), "{body}");
    let (status, _, body) =
        post("alice", json!({"conf": {"spark.driver.extraJavaOptions": "-javaagent:/x.jar"}}), "").await;
    assert_eq!(status, 403);
    assert!(body["msg"].as_str().unwrap().contains("spark.driver.extraJavaOptions"), "{body}");
    let (status, _, body) = post("hue", json!({"proxyUser": "root"}), "").await;
    assert_eq!(status, 403, "hue may not impersonate root: {body}");
    assert!(body["msg"].as_str().unwrap().contains("impersonate"), "{body}");
    let (status, _, body) = post("alice", json!({"proxyUser": "bob"}), "").await;
    assert_eq!(status, 403, "alice is no proxy user: {body}");
    let (status, _, body) = post("alice", json!({}), "?doAs=bob").await;
    assert_eq!(status, 403, "doAs is checked too: {body}");
    let (status, _, body) = post("bob", json!({"kind": "pyspark"}), "").await;
    assert_eq!(status, 403, "bob's quota is zero live sessions: waiting cannot help: {body}");
    assert!(body["msg"].as_str().unwrap().contains("quota"), "{body}");
    let (status, _, body) = post("hue", json!({"kind": "pyspark"}), "?doAs=bob").await;
    assert_eq!(status, 403, "doAs wins: the quota that applies is bob's: {body}");
}

#[tokio::test]
async fn do_as_acts_as_the_target() {
    let gw = gateway();
    let id = impersonated_session().await;
    let hue = gw.token("hue", &[]);
    // hue acting as bob has bob's rights only: not alice's session.
    let (status, _, _) = gw.call(Method::GET, &format!("/sessions/{id}/log?doAs=bob"), Some(&hue), None).await;
    assert_eq!(status, 404);
    let (status, _, _) = gw.call(Method::GET, &format!("/sessions/{id}/log?doAs=alice"), Some(&hue), None).await;
    assert_eq!(status, 200);
    let (status, _, body) = gw.call(Method::GET, "/sessions?doAs=root", Some(&hue), None).await;
    assert_eq!(status, 403, "{body}");
}

#[tokio::test]
async fn csrf_and_security_headers() {
    let gw = gateway();
    let alice = gw.token("alice", &[]);
    // A browser-like unsafe request without X-Requested-By is refused (mode auto)…
    let r = gw
        .client()
        .post(gw.url("/sessions/999/statements"))
        .bearer_auth(&alice)
        .header("Origin", "https://evil.example")
        .json(&json!({"code": "1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.text().await.unwrap().contains("X-Requested-By"));
    // …with the header it goes through to the handler (404: no such session).
    let r = gw
        .client()
        .post(gw.url("/sessions/999/statements"))
        .bearer_auth(&alice)
        .header("Origin", "https://evil.example")
        .header("X-Requested-By", "livy")
        .json(&json!({"code": "1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    // A programmatic client (no cookie, no browser headers) needs nothing extra.
    let (status, headers, _) =
        gw.call(Method::POST, "/sessions/999/statements", Some(&alice), Some(json!({"code": "1"}))).await;
    assert_eq!(status, 404);
    for (name, value) in [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("strict-transport-security", "max-age=31536000; includeSubDomains"),
        ("content-security-policy", "default-src 'none'; frame-ancestors 'none'"),
    ] {
        assert_eq!(headers.get(name).map(|v| v.to_str().unwrap()), Some(value), "{name}");
    }
    // Errors before authentication carry them too.
    let (_, headers, _) = gw.call(Method::GET, "/sessions", None, None).await;
    assert!(headers.contains_key("x-content-type-options"));
}

#[tokio::test]
async fn strict_csrf_mode_requires_the_header_from_every_client() {
    let gw = TestGateway::start_with_policy(&["auth.methods=[\"jwt\"]", "csrf.mode=\"strict\""], POLICY);
    let alice = gw.token("alice", &[]);
    let (status, _, body) =
        gw.call(Method::POST, "/sessions/1/statements", Some(&alice), Some(json!({"code": "1"}))).await;
    assert_eq!(status, 400, "{body}");
    let r = gw.client().get(gw.url("/sessions")).bearer_auth(&alice).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200, "safe methods are exempt");
}

#[tokio::test]
async fn policy_changes_apply_without_a_restart_and_bad_files_are_ignored() {
    let gw = TestGateway::start_with_policy(&["auth.methods=[\"jwt\"]"], "[gateway]\nusers = [\"dave\"]\n");
    let dave = gw.token("dave", &[]);
    let erin = gw.token("erin", &["ops"]);
    assert_eq!(gw.call(Method::GET, "/sessions", Some(&dave), None).await.0, 200);
    assert_eq!(gw.call(Method::GET, "/sessions", Some(&erin), None).await.0, 403);
    let path = gw.policy_dir.join("acl.toml");
    std::fs::write(&path, "[gateway]\nusers = [\"dave\"]\ngroups = [\"ops\"]\n").unwrap();
    wait_for_status(&gw, &erin, 200).await;
    std::fs::write(&path, "[gateway\nthis is not toml").unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(gw.call(Method::GET, "/sessions", Some(&erin), None).await.0, 200, "the old policy stays");
    std::fs::write(&path, "[gateway]\nusers = [\"dave\"]\n").unwrap();
    wait_for_status(&gw, &erin, 403).await;
}

async fn wait_for_status(gw: &TestGateway, token: &str, want: u16) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (status, _, _) = gw.call(Method::GET, "/sessions", Some(token), None).await;
        if status == want {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "still {status}, wanted {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn requests_and_security_events_are_audited_in_a_verifiable_chain() {
    let gw = gateway();
    let id = impersonated_session().await;
    let hue = gw.token("hue", &[]);
    let bob = gw.token("bob", &[]);
    assert_eq!(gw.call(Method::GET, "/sessions", None, None).await.0, 401);
    assert_eq!(gw.call(Method::GET, &format!("/sessions/{id}/log"), Some(&bob), None).await.0, 404);
    assert_eq!(gw.call(Method::GET, "/sessions?doAs=root", Some(&hue), None).await.0, 403);
    assert_eq!(gw.call(Method::GET, "/sessions?doAs=alice", Some(&hue), None).await.0, 200);
    let flushed = gw.audit.clone();
    tokio::task::spawn_blocking(move || flushed.flush()).await.unwrap().unwrap();
    let path = gw.audit.path().to_path_buf();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains(&hue) && !text.contains(&bob), "no token reaches the audit trail");
    let records: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let has = |pred: &dyn Fn(&Value) -> bool| records.iter().any(pred);
    assert!(has(&|r| r["status"] == 401 && r["decision"] == "deny" && r["action"] == "GET /sessions"), "a 401");
    // Answered 404, recorded as the refusal it is, with the real reason.
    assert!(has(&|r| r["status"] == 404
        && r["decision"] == "deny"
        && r["principal"] == "bob"
        && r["action"] == "GET /sessions/{id}/log"
        && r["reason"].as_str().is_some_and(|x| x.contains("not allowed to view session"))));
    assert!(has(&|r| r["action"] == "impersonation_denied"
        && r["principal"] == "hue"
        && r["effective_user"] == "root"));
    assert!(has(&|r| r["action"] == "impersonation_granted" && r["effective_user"] == "alice"));
    assert!(has(&|r| r["action"] == "session_launched" && r["resource"] == format!("session:{id}")));
    assert!(has(&|r| r["action"] == "driver_authenticated" && r["resource"] == format!("session:{id}")));
    assert!(has(&|r| r["kind"] == "request" && r["auth_method"] == "jwt" && r["latency_ms"].is_u64()));

    // The real command verifies the chain, and catches an edited record.
    let verify = |file: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_sparkgate"))
            .args(["audit", "verify"])
            .arg(file)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap()
    };
    let out = verify(&path);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let copy = gw.data_dir.join("tampered.log");
    let deny_line = text.lines().position(|l| l.contains("\"decision\":\"deny\"")).unwrap();
    let edited: Vec<String> =
        text.lines()
            .enumerate()
            .map(|(i, l)| {
                if i == deny_line {
                    l.replace("\"decision\":\"deny\"", "\"decision\":\"allow\"")
                } else {
                    l.to_string()
                }
            })
            .collect();
    std::fs::write(&copy, edited.join("\n") + "\n").unwrap();
    let out = verify(&copy);
    assert!(!out.status.success());
    let report = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(report.to_lowercase().contains("altered"), "{report}");
}

/// The value of the first exposition line that starts with `series` (0 when absent).
fn metric(text: &str, series: &str) -> f64 {
    text.lines().find(|l| l.starts_with(series)).and_then(|l| l.rsplit(' ').next()).map_or(0.0, |v| v.parse().unwrap())
}

#[tokio::test]
async fn metrics_are_for_admins_and_count_what_happened() {
    let gw = gateway();
    let _id = impersonated_session().await;
    let ops = gw.token("ops", &[]);
    let scrape = || async {
        let r = gw.client().get(gw.url("/metrics")).bearer_auth(&ops).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let content_type = r.headers()["content-type"].to_str().unwrap().to_string();
        assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
        r.text().await.unwrap()
    };
    let before = scrape().await;
    let refused = r#"sparkgate_http_requests_total{method="GET",route="/sessions",status="401"}"#;
    // An unauthenticated request is counted under its route, with its status.
    assert_eq!(gw.call(Method::GET, "/sessions", None, None).await.0, 401);
    let text = scrape().await;
    assert!(metric(&text, refused) >= metric(&before, refused) + 1.0, "{text}");
    // Unknown paths are one series, never their raw path.
    assert_eq!(gw.call(Method::GET, "/no/such/thing", Some(&ops), None).await.0, 404);
    let text = scrape().await;
    assert!(text.contains(r#"route="unmatched",status="404"}"#), "{text}");
    assert!(!text.contains("/no/such/thing"), "{text}");
    // Engine figures: the impersonated session is live; every state has a series.
    let live: f64 = ["idle", "busy", "starting"]
        .iter()
        .map(|s| metric(&text, &format!("sparkgate_sessions{{state=\"{s}\"}}")))
        .sum();
    assert!(live >= 1.0, "{text}");
    assert!(text.contains("sparkgate_sessions{state=\"recovering\"} 0"), "{text}");
    assert!(text.contains("sparkgate_batches{state=\"success\"}"), "{text}");
    assert!(text.contains("sparkgate_statements{state=\"available\"}"), "{text}");
    assert!(metric(&text, "sparkgate_drivers_connected") >= 1.0, "{text}");
    assert!(text.contains("sparkgate_rpc_auth_failures_total "), "{text}");
    assert!(text.contains(r#"sparkgate_security_events_total{event="session_launched""#), "{text}");
    assert!(text.contains("sparkgate_audit_lost_events_total 0"), "{text}");
    assert!(text.ends_with("# EOF\n"), "{text}");
    // No user name, token or session detail reaches the figures.
    for secret in ["alice", "hue", &ops] {
        assert!(!text.contains(secret), "{secret} in the metrics: {text}");
    }
}
