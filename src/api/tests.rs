//! The API through the whole middleware stack, without Spark: JWT callers, the real policy
//! engine, sessions and batches that are registered but never launch (no Spark: they end
//! `dead` at once, which is all these tests need of them).

use super::AppState;
use crate::config::{self, Sources, ValidatedConfig};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

/// A gateway's router over a policy, with its data in a temporary directory.
pub(crate) struct Harness {
    pub(crate) app: axum::Router,
    pub(crate) state: AppState,
    pub(crate) config: Arc<ValidatedConfig>,
    /// Keeps the data directory alive as long as the harness.
    pub(crate) dir: tempfile::TempDir,
}

impl Harness {
    pub(crate) fn new(policy: &str, overrides: &[&str]) -> Self {
        Self::in_dir(tempfile::tempdir().unwrap(), policy, overrides)
    }

    /// A gateway over an existing directory: what a restart sees.
    pub(crate) fn in_dir(dir: tempfile::TempDir, policy: &str, overrides: &[&str]) -> Self {
        let policy_dir = dir.path().join("policies");
        std::fs::create_dir_all(&policy_dir).unwrap();
        let _ = std::fs::remove_file(policy_dir.join("acl.toml"));
        std::fs::write(policy_dir.join("acl.toml"), policy).unwrap();
        let mut all = vec![
            format!("server.data_dir=\"{}\"", dir.path().join("data").display()),
            format!("acl.policy_dir=\"{}\"", policy_dir.display()),
            "auth.methods=[\"jwt\"]".to_string(),
        ];
        all.extend(overrides.iter().map(|s| s.to_string()));
        let config = Arc::new(config::load(&Sources { file: None, env: vec![], overrides: all }).unwrap());
        let data_dir = &config.config.server.data_dir;
        crate::fs::create_private_dir(data_dir).unwrap();
        let audit = crate::audit::AuditLog::open(&data_dir.join("audit").join("audit.log"), 1 << 20).unwrap();
        let ids = crate::engine::ids::Ids::prepare(data_dir).unwrap();
        let store = Arc::new(crate::store::open(&config.config, ids).unwrap());
        let sessions = crate::engine::manager::SessionRegistry::new(
            &config,
            store.clone(),
            audit.clone(),
            crate::rpc::SecretKey::load_or_create(&data_dir.join("keys").join("session-secrets.key")).unwrap(),
        );
        let manager = crate::engine::SessionManager::new(config.clone(), None, sessions, None);
        let batches = crate::engine::batch::BatchManager::new(
            config.clone(),
            None,
            store,
            audit.clone(),
            crate::rpc::SecretKey::generate(),
        );
        let acl = crate::acl::AccessManager::load(&policy_dir, None).unwrap();
        let state = AppState::new(super::Handles {
            manager,
            batches,
            config: config.clone(),
            acl,
            audit,
            metrics: Arc::new(crate::metrics::Metrics::new()),
            log_streams: Default::default(),
        });
        let chain = crate::auth::build_chain(&config).unwrap();
        let app = crate::http::stack::build(state.clone(), chain);
        Self { app, state, config, dir }
    }

    pub(crate) fn token(&self, user: &str) -> String {
        crate::auth::jwt::mint_dev_token(&self.config, user, &[], Duration::from_secs(600)).unwrap()
    }

    /// `method path` as `user` (None: no credentials) with an optional JSON body.
    pub(crate) async fn call(&self, user: Option<&str>, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(user) = user {
            request = request.header("authorization", format!("Bearer {}", self.token(user)));
        }
        let body = match body {
            Some(body) => {
                request = request.header("content-type", "application/json");
                Body::from(body.to_string())
            }
            None => Body::empty(),
        };
        let response = self.app.clone().oneshot(request.body(body).unwrap()).await.unwrap();
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// Stops this gateway (its managers and audit log go) and starts another on the same
    /// directory.
    pub(crate) fn restart(self, policy: &str, overrides: &[&str]) -> Self {
        let Self { app, state, config, dir } = self;
        drop((app, state, config));
        Self::in_dir(dir, policy, overrides)
    }

    /// The audit records written so far.
    pub(crate) async fn audit_records(&self) -> Vec<Value> {
        let audit = self.state.audit.clone();
        tokio::task::spawn_blocking(move || audit.flush()).await.unwrap().unwrap();
        let text = std::fs::read_to_string(self.state.audit.path()).unwrap();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }
}

const POLICY: &str = r#"
[create]
users = ["alice", "bob"]

[view]
users = ["auditor"]
"#;

#[tokio::test]
async fn a_session_or_batch_the_caller_may_not_view_answers_like_one_that_does_not_exist() {
    let h = Harness::new(POLICY, &[]);
    let (status, session) = h.call(Some("alice"), "POST", "/sessions", Some(json!({"name": "alice-etl"}))).await;
    assert_eq!(status, 201, "{session}");
    let id = session["id"].as_u64().unwrap();
    let (status, batch) = h
        .call(Some("alice"), "POST", "/batches", Some(json!({"file": "hdfs:///jobs/etl.py", "name": "nightly"})))
        .await;
    assert_eq!(status, 201, "{batch}");
    let bid = batch["id"].as_u64().unwrap();
    let unknown = 4242u64;
    for (prefix, id, name) in [("/sessions", id, "alice-etl"), ("/batches", bid, "nightly")] {
        let mut routes = vec![
            ("GET", format!("{prefix}/{{}}"), None),
            ("GET", format!("{prefix}/{{}}/state"), None),
            ("GET", format!("{prefix}/{{}}/log"), None),
            ("DELETE", format!("{prefix}/{{}}"), None),
        ];
        if prefix == "/sessions" {
            routes.extend([
                ("GET", format!("{prefix}/{{}}/statements"), None),
                ("POST", format!("{prefix}/{{}}/statements"), Some(json!({"code": "1"}))),
                ("GET", format!("{prefix}/{{}}/statements/0"), None),
                ("POST", format!("{prefix}/{{}}/statements/0/cancel"), None),
                ("POST", format!("{prefix}/{{}}/completion"), Some(json!({"code": "x"}))),
                ("POST", format!("{prefix}/{{}}/connect"), None),
                ("POST", format!("{prefix}/{{}}/stop"), None),
                ("POST", format!("{prefix}/{{}}/add-file"), Some(json!({"uri": "hdfs:///x"}))),
                ("POST", format!("{prefix}/{{}}/submit-job"), Some(json!({"job": "AAAA", "jobType": "pyspark"}))),
                ("POST", format!("{prefix}/{{}}/run-job"), Some(json!({"job": "AAAA", "jobType": "pyspark"}))),
                ("GET", format!("{prefix}/{{}}/jobs/0"), None),
                ("POST", format!("{prefix}/{{}}/jobs/0/cancel"), None),
            ]);
        }
        for (method, pattern, body) in routes {
            // bob sees exactly what he would see for an id or name that does not exist.
            for (key, missing) in [(id.to_string(), unknown.to_string()), (name.to_string(), "no-such-name".into())] {
                let hidden = h.call(Some("bob"), method, &pattern.replace("{}", &key), body.clone()).await;
                let absent = h.call(Some("bob"), method, &pattern.replace("{}", &missing), body.clone()).await;
                assert_eq!(hidden.0, 404, "{method} {pattern} with {key}: {hidden:?}");
                assert_eq!(
                    hidden.1.to_string().replace(&key, "KEY"),
                    absent.1.to_string().replace(&missing, "KEY"),
                    "{method} {pattern}: the same answer as for a missing one"
                );
            }
        }
        // A viewer may look but not change anything: that is a 403 with the reason.
        let (status, _) = h.call(Some("auditor"), "GET", &format!("{prefix}/{id}"), None).await;
        assert_eq!(status, 200);
        let (status, body) = h.call(Some("auditor"), "DELETE", &format!("{prefix}/{id}"), None).await;
        assert_eq!(status, 403, "{body}");
    }
    // The refusals are in the audit trail as the denials they are, naming the right kind.
    let records = h.audit_records().await;
    let denied = |action: &str, text: &str| {
        records.iter().any(|r| {
            r["action"] == action
                && r["status"] == 404
                && r["decision"] == "deny"
                && r["principal"] == "bob"
                && r["reason"].as_str().is_some_and(|x| x.contains(text))
        })
    };
    assert!(denied("GET /sessions/{id}", &format!("bob is not allowed to view session {id}")), "{records:#?}");
    assert!(denied("GET /batches/{id}/log", &format!("bob is not allowed to view batch {bid}")), "{records:#?}");
    // The owner still reaches both.
    assert_eq!(h.call(Some("alice"), "GET", &format!("/sessions/{id}"), None).await.0, 200);
    assert_eq!(h.call(Some("alice"), "GET", "/batches/nightly", None).await.0, 200);
}

#[tokio::test]
async fn decisions_name_the_resource_kind_and_never_rewrite_user_names() {
    let policy = "[create]\nusers = [\"session-admin\"]\n[view]\nusers = [\"session-viewer\"]\n";
    let h = Harness::new(policy, &[]);
    let (status, batch) =
        h.call(Some("session-admin"), "POST", "/batches", Some(json!({"file": "hdfs:///a.py"}))).await;
    assert_eq!(status, 201, "{batch}");
    let id = batch["id"].as_u64().unwrap();
    let (status, body) = h.call(Some("session-viewer"), "DELETE", &format!("/batches/{id}"), None).await;
    assert_eq!(status, 403);
    assert_eq!(body["msg"], format!("session-viewer is not allowed to modify batch {id}"));
    let (status, body) =
        h.call(Some("session-viewer"), "POST", "/batches", Some(json!({"file": "hdfs:///a.py"}))).await;
    assert_eq!(status, 403);
    assert_eq!(body["msg"], "session-viewer is not allowed to create batches");
    let (status, body) = h.call(Some("session-viewer"), "POST", "/sessions", Some(json!({}))).await;
    assert_eq!((status, body["msg"].as_str()), (403, Some("session-viewer is not allowed to create sessions")));
}

#[tokio::test]
async fn a_request_without_credentials_is_still_401_on_every_route() {
    let h = Harness::new(POLICY, &[]);
    assert_eq!(h.call(None, "GET", "/sessions/0", None).await.0, StatusCode::UNAUTHORIZED.as_u16());
    assert_eq!(h.call(None, "GET", "/batches/0/log", None).await.0, 401);
}

#[tokio::test]
async fn ids_never_repeat_across_a_restart_and_no_file_of_an_earlier_batch_is_served_again() {
    let h = Harness::new(POLICY, &[]);
    let (status, first) = h.call(Some("alice"), "POST", "/batches", Some(json!({"file": "hdfs:///alice.py"}))).await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["id"], 0);
    let (_, log) = h.call(Some("alice"), "GET", "/batches/0/log?size=-1", None).await;
    let alice_lines = log["log"].as_array().unwrap().clone();
    assert_eq!(alice_lines.len(), 1, "{log}");
    let (status, session) = h.call(Some("alice"), "POST", "/sessions", Some(json!({}))).await;
    assert_eq!((status, session["id"].as_u64()), (201, Some(0)));
    let h = h.restart(POLICY, &[]);
    // Bob's first batch after the restart is a new id, with a log of its own.
    let (status, second) = h.call(Some("bob"), "POST", "/batches", Some(json!({"file": "hdfs:///bob.py"}))).await;
    assert_eq!(status, 201, "{second}");
    let id = second["id"].as_u64().unwrap();
    assert!(id > 0, "ids continue: {second}");
    let (_, log) = h.call(Some("bob"), "GET", &format!("/batches/{id}/log?size=-1"), None).await;
    // (Without Spark each launch fails with one line of its own; two lines would be a reused file.)
    assert_eq!(log["log"], json!(alice_lines), "exactly one launch's lines: {log}");
    assert_eq!(h.call(Some("bob"), "GET", "/batches/0/log?size=-1", None).await.0, 404);
    let (status, session) = h.call(Some("bob"), "POST", "/sessions", Some(json!({}))).await;
    assert_eq!(status, 201, "{session}");
    assert!(session["id"].as_u64().unwrap() > 0, "{session}");
    // The earlier run's files are kept for the operator, away from every new session or batch.
    let quarantine = h.dir.path().join("data/quarantine");
    let runs: Vec<_> = std::fs::read_dir(&quarantine).unwrap().flatten().collect();
    assert_eq!(runs.len(), 1);
    assert!(runs[0].path().join("batches/0/batch.log").is_file());
    assert!(runs[0].path().join("sessions/0").is_dir());
}

#[tokio::test]
async fn names_stay_unique_without_telling_whose_they_are_and_probing_them_is_bounded() {
    let policy =
        "[create]\nusers = [\"alice\", \"bob\", \"carol\"]\n[quotas]\nusers.bob = { max_name_conflicts = 3 }\n";
    let h = Harness::new(policy, &[]);
    let (status, _) = h.call(Some("alice"), "POST", "/sessions", Some(json!({"name": "etl"}))).await;
    assert_eq!(status, 201);
    // Livy's unique names are kept; the refusal says neither whose nor which session it is.
    let (status, body) = h.call(Some("bob"), "POST", "/sessions", Some(json!({"name": "etl"}))).await;
    assert_eq!(status, 400);
    assert_eq!(body["msg"], "Duplicate session name: another session already has this name; choose another");
    // bob may cause 3 refused duplicates an hour; then every named create is refused, taken or not,
    // so the answer stops telling which names exist.
    for _ in 0..2 {
        assert_eq!(h.call(Some("bob"), "POST", "/sessions", Some(json!({"name": "etl"}))).await.0, 400);
    }
    let (status, body) = h.call(Some("bob"), "POST", "/sessions", Some(json!({"name": "etl"}))).await;
    assert_eq!(status, 429, "{body}");
    assert!(body["msg"].as_str().unwrap().contains("names refused as duplicates"), "{body}");
    assert_eq!(h.call(Some("bob"), "POST", "/sessions", Some(json!({"name": "free"}))).await.0, 429);
    assert_eq!(h.call(Some("bob"), "POST", "/sessions", Some(json!({}))).await.0, 201, "unnamed creates go on");
    // Others are not affected; the default quota applies to them.
    assert_eq!(h.call(Some("carol"), "POST", "/sessions", Some(json!({"name": "free"}))).await.0, 201);
    // Names are checked without being repeated back.
    let (status, body) =
        h.call(Some("carol"), "POST", "/batches", Some(json!({"file": "hdfs:///a.py", "name": "a/b"}))).await;
    assert_eq!(status, 400);
    assert!(!body["msg"].as_str().unwrap().contains("a/b"), "{body}");
}

#[tokio::test]
async fn users_set_only_allow_listed_conf_and_never_what_the_operator_fixed() {
    let policy = "[create]\nusers = [\"alice\"]\n[superusers]\nusers = [\"root\"]\n[conf]\nallow = [\"spark.hadoop.fs.s3a.endpoint\"]\n";
    let h = Harness::new(
        policy,
        &[
            "spark.conf.\"spark.executor.memory\"=\"4g\"",
            "spark.conf.\"spark.sql.shuffle.partitions\"=\"8\"",
            "spark.overridable_conf=[\"spark.sql.shuffle.partitions\"]",
        ],
    );
    let create = |user: &'static str, body: Value| {
        let h = &h;
        async move { h.call(Some(user), "POST", "/sessions", Some(body)).await }
    };
    // A mount table onto the gateway's disk, Ivy on the gateway host: not on the allow-list.
    let (status, body) = create(
        "alice",
        json!({"conf": {"spark.hadoop.fs.viewfs.mounttable.x.link./k": "file:///etc", "spark.jars.packages": "a:b:1"}}),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let msg = body["msg"].as_str().unwrap();
    assert!(msg.contains("spark.hadoop.fs.viewfs.mounttable.x.link./k") && msg.contains("allow"), "{msg}");
    assert!(!msg.contains("file:///etc"), "values are not echoed: {msg}");
    let (status, body) =
        create("alice", json!({"conf": {"spark.kubernetes.kerberos.krb5.path": "/etc/krb5.conf"}})).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["msg"].as_str().unwrap().contains("may not be set by users"), "{body}");
    // The operator's own values stay, in conf and through the resource fields alike...
    let (status, body) = create("alice", json!({"conf": {"spark.executor.memory": "64g"}})).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["msg"].as_str().unwrap().contains("fixed by the operator"), "{body}");
    let (status, body) = create("alice", json!({"executorMemory": "64g"})).await;
    assert_eq!(status, 403, "{body}");
    // ...unless marked overridable; allow-listed and operator-allowed keys pass.
    let (status, body) = create(
        "alice",
        json!({"conf": {"spark.sql.shuffle.partitions": "2", "spark.hadoop.fs.s3a.endpoint": "http://minio:9000",
                        "spark.sql.adaptive.enabled": true}, "driverMemory": "1g"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    // Livy's Python HttpClient names the gateway's URL in every session it creates (ignored),
    // and posts it to `/sessions/`.
    let livy_client = json!({"kind": "pyspark", "conf": {"livy.uri": "https://gw:8998"}});
    let (status, body) = h.call(Some("alice"), "POST", "/sessions/", Some(livy_client)).await;
    assert_eq!(status, 201, "{body}");
    assert!(!body.to_string().contains("livy.uri"), "{body}");
    // A superuser may set anything.
    let (status, body) =
        create("root", json!({"conf": {"spark.jars.packages": "a:b:1"}, "executorMemory": "8g"})).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = h
        .call(Some("alice"), "POST", "/batches", Some(json!({"file": "hdfs:///a.py", "conf": {"spark.x.y": "1"}})))
        .await;
    assert_eq!(status, 403, "batches are checked the same way: {body}");
}

#[tokio::test]
async fn jobs_are_refused_with_the_field_named_and_the_job_never_echoed_nor_recorded() {
    let h = Harness::new(POLICY, &[]);
    let (_, sql) = h.call(Some("alice"), "POST", "/sessions", Some(json!({"kind": "sql"}))).await;
    let (_, spark) = h.call(Some("alice"), "POST", "/sessions", Some(json!({"kind": "spark"}))).await;
    let (_, python) = h.call(Some("alice"), "POST", "/sessions", Some(json!({"kind": "pyspark"}))).await;
    let (sql, spark, python) =
        (sql["id"].as_u64().unwrap(), spark["id"].as_u64().unwrap(), python["id"].as_u64().unwrap());
    // Valid base64 of bytes that are nobody's business (and must not reach the trail).
    let secret_job = "c2VjcmV0LWpvYi1ieXRlcw==";
    let cases = [
        (python, json!({"jobType": "pyspark"}), "field `job` is required"),
        (python, json!({"job": "", "jobType": "pyspark"}), "field `job` is required"),
        (python, json!({"job": secret_job}), "field `jobType` is required"),
        (python, json!({"job": secret_job, "jobType": "cobol"}), "field `jobType`: unknown job type"),
        (python, json!({"job": "not base64 at all!", "jobType": "pyspark"}), "field `job` is not valid base64"),
        (python, json!({"job": secret_job, "jobType": "spark"}), "session of kind pyspark cannot run spark jobs"),
        (spark, json!({"job": secret_job, "jobType": "pyspark"}), "session of kind spark cannot run pyspark jobs"),
        (sql, json!({"job": secret_job, "jobType": "pyspark"}), "session of kind sql cannot run pyspark jobs"),
        (sql, json!({"job": secret_job, "jobType": "spark"}), "session of kind sql cannot run spark jobs"),
        (python, json!({"job": secret_job, "jobType": "pyspark", "extra": 1}), "unknown field `extra`"),
    ];
    for (id, body, why) in cases {
        for route in ["submit-job", "run-job"] {
            let (status, reply) =
                h.call(Some("alice"), "POST", &format!("/sessions/{id}/{route}"), Some(body.clone())).await;
            assert_eq!(status, 400, "{route} {body}: {reply}");
            let msg = reply["msg"].as_str().unwrap();
            assert!(msg.contains(why), "{route} {body}: {msg}");
            assert!(!msg.contains(secret_job), "{msg}");
        }
    }
    // A job for a session that cannot take work any more (these never launch: they are dead).
    let (status, reply) = h
        .call(
            Some("alice"),
            "POST",
            &format!("/sessions/{python}/submit-job"),
            Some(json!({"job": secret_job, "jobType": "pyspark"})),
        )
        .await;
    assert_eq!(status, 409, "{reply}");
    // Unknown jobs, and ids that are not ids.
    let (status, reply) = h.call(Some("alice"), "GET", &format!("/sessions/{python}/jobs/7"), None).await;
    assert_eq!((status, reply), (404, json!({"msg": format!("Job 7 not found in session {python}.")})));
    let (status, _) = h.call(Some("alice"), "GET", &format!("/sessions/{python}/jobs/x"), None).await;
    assert_eq!(status, 400);
    let (status, _) = h.call(Some("alice"), "POST", &format!("/sessions/{python}/jobs/7/cancel"), None).await;
    assert_eq!(status, 404);
    // A viewer may not submit or cancel; the refusals are audited without the bytes.
    let (status, reply) = h
        .call(
            Some("auditor"),
            "POST",
            &format!("/sessions/{python}/submit-job"),
            Some(json!({"job": secret_job, "jobType": "pyspark"})),
        )
        .await;
    assert_eq!(status, 403, "{reply}");
    let records = h.audit_records().await;
    assert!(records.iter().any(|r| r["action"] == "POST /sessions/{id}/submit-job"
        && r["principal"] == "auditor"
        && r["decision"] == "deny"));
    let leaks: Vec<&Value> = records.iter().filter(|r| r.to_string().contains(secret_job)).collect();
    assert!(leaks.is_empty(), "the audit trail holds a job's bytes: {leaks:#?}");
}

#[tokio::test]
async fn refusals_name_the_field_and_never_echo_what_was_sent() {
    let h = Harness::new(POLICY, &[]);
    let secret = "s3cr3t-AKIA-token";
    let bodies = [
        json!({"driverCores": secret}),
        json!({"numExecutors": format!("{secret}")}),
        json!({"kind": secret}),
        json!({"ttl": secret}),
        json!({"idleTimeout": secret}),
        json!({"name": format!("{secret}/x")}),
        json!({"jars": [format!("https://u:{secret}@repo/x.jar")]}),
        json!({"jars": [format!("viewfs://{secret}/x.jar")]}),
        json!({"pyFiles": [format!("/etc/{secret}.py")]}),
        json!({"files": [format!("hdfs:///a,{secret}")]}),
        json!({"conf": {format!("{secret}=x"): "1"}}),
        json!({"conf": {"spark.sql.x": {"nested": secret}}}),
        json!({"heartbeatTimeoutInSecond": secret}),
    ];
    for body in bodies {
        let (status, reply) = h.call(Some("alice"), "POST", "/sessions", Some(body.clone())).await;
        assert_eq!(status, 400, "{body} -> {reply}");
        let msg = reply["msg"].as_str().unwrap();
        assert!(!msg.contains(secret), "{body} echoed: {msg}");
        assert!(msg.contains("field") || msg.contains("invalid JSON"), "{msg}");
    }
    let (status, session) = h.call(Some("alice"), "POST", "/sessions", Some(json!({}))).await;
    assert_eq!(status, 201);
    let id = session["id"].as_u64().unwrap();
    for (method, path, body) in [
        ("GET", format!("/sessions/{id}/statements/{secret}"), None),
        ("GET", format!("/sessions?from={secret}"), None),
        ("GET", format!("/sessions?order={secret}"), None),
        ("GET", format!("/sessions/{id}/statements/0?wait={secret}"), None),
        ("POST", format!("/sessions/{id}/statements"), Some(json!({"code": "1", "kind": secret}))),
        ("POST", format!("/sessions/{secret}x/statements"), Some(json!({"code": "1"}))),
    ] {
        let (status, reply) = h.call(Some("alice"), method, &path, body).await;
        assert!(status == 400 || status == 404 || status == 409, "{path}: {status} {reply}");
        assert!(!reply.to_string().contains(secret), "{path} echoed: {reply}");
    }
    // Nor does the audit trail repeat it in a reason (the path a request named is recorded as
    // its resource: that is what was asked for).
    let records = h.audit_records().await;
    let leaks: Vec<&Value> =
        records.iter().filter(|r| r["reason"].as_str().is_some_and(|x| x.contains(secret))).collect();
    assert!(leaks.is_empty(), "the audit trail repeats a submitted value: {leaks:#?}");
}

#[tokio::test]
async fn a_flood_of_unauthenticated_refusals_is_counted_not_written_one_by_one() {
    let h = Harness::new(POLICY, &[]);
    for i in 0..200 {
        assert_eq!(h.call(None, "GET", "/sessions", None).await.0, 401);
        // Paths and methods a client can vary at will do not make each refusal a kind of its own.
        assert_eq!(h.call(None, "GET", &format!("/no/such/path/{i}"), None).await.0, 404);
    }
    // A principal's refusals stay one record each.
    for _ in 0..5 {
        assert_eq!(h.call(Some("auditor"), "POST", "/sessions", Some(json!({}))).await.0, 403);
    }
    let records = h.audit_records().await;
    let of = |action: &str| records.iter().filter(|r| r["action"] == action).collect::<Vec<_>>();
    let refused = of("GET /sessions");
    assert!(refused.len() <= 3, "{refused:#?}");
    let counted: u64 = refused.iter().map(|r| r["repeated"].as_u64().unwrap_or(1)).sum();
    assert_eq!(counted, 200, "every refusal is still counted: {refused:#?}");
    let unmatched = of("GET (unmatched)");
    assert!(unmatched.len() <= 3 && unmatched[0]["resource"] == "/no/such/path/0", "{unmatched:#?}");
    assert_eq!(unmatched.iter().map(|r| r["repeated"].as_u64().unwrap_or(1)).sum::<u64>(), 200);
    assert_eq!(of("POST /sessions").len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_cannot_hold_every_reader_of_whole_batch_logs() {
    let h = Harness::new(POLICY, &[]);
    let (status, batch) = h.call(Some("bob"), "POST", "/batches", Some(json!({"file": "hdfs:///a.py"}))).await;
    assert_eq!(status, 201, "{batch}");
    // A log far longer than what the stream buffers, so a reader that stops holds its thread.
    let log = h.dir.path().join(format!("data/batches/{}/batch.log", batch["id"]));
    std::fs::write(&log, format!("{}\n", "y".repeat(1000)).repeat(4000)).unwrap();
    let open = |user: &'static str| {
        let request = Request::get(format!("/batches/{}/log?size=-1", batch["id"]))
            .header("authorization", format!("Bearer {}", h.token(user)))
            .body(Body::empty())
            .unwrap();
        h.app.clone().oneshot(request)
    };
    let mut held = Vec::new();
    for _ in 0..super::streams::MAX_PER_USER {
        let response = open("bob").await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        held.push(response); // never read
    }
    let refused = open("bob").await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers()["retry-after"], "5", "a 429 says when to try again");
    // Nobody else is affected...
    let (status, _) = h.call(Some("alice"), "GET", "/sessions", None).await;
    assert_eq!(status, 200);
    // ...and a reader that goes away gives its slot back.
    drop(held);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let response = open("bob").await.unwrap();
        if response.status() == StatusCode::OK {
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(serde_json::from_slice::<Value>(&bytes).unwrap()["total"], 4000);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the slots never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_doas_or_proxy_user_that_is_no_user_name_is_refused_unechoed_and_a_real_one_is_decoded() {
    let policy = r#"
[create]
users = ["alice", "bob@EXAMPLE.COM"]

[[impersonation]]
callers = { users = ["alice"] }
targets = { users = ["bob@EXAMPLE.COM"] }
hosts = ["*"]
"#;
    let h = Harness::new(policy, &[]);
    // Names that are not user names: never handed to the policy, argv or a message.
    for bad in ["bob%00", "bob%0Aforged", "-bob", "b%20b", "%E2%80%AEbob", &"b".repeat(257)] {
        let (status, reply) = h.call(Some("alice"), "GET", &format!("/sessions?doAs={bad}"), None).await;
        assert_eq!(status, 400, "{bad}: {reply}");
        let msg = reply["msg"].as_str().unwrap();
        assert!(msg.starts_with("`doAs` is not a user name"), "{msg}");
        assert!(!msg.contains("bob") && !msg.contains("forged"), "{msg}");
    }
    for bad in ["bob\u{0}", "bob\nforged", "-bob", "b b"] {
        let (status, reply) =
            h.call(Some("alice"), "POST", "/batches", Some(json!({"file": "hdfs:///a.py", "proxyUser": bad}))).await;
        assert_eq!(status, 400, "{bad:?}: {reply}");
        let msg = reply["msg"].as_str().unwrap();
        assert!(msg.starts_with("field `proxyUser` is not a user name"), "{msg}");
        assert!(!msg.contains("bob") && !msg.contains("forged"), "{msg}");
    }
    let records = h.audit_records().await;
    assert!(!records.iter().any(|r| r.to_string().contains("forged")), "{records:#?}");
    // A percent-encoded name is decoded as Livy (a servlet container) decodes it.
    let (status, reply) = h.call(Some("alice"), "POST", "/sessions?doAs=bob%40EXAMPLE.COM", Some(json!({}))).await;
    assert_eq!(status, 201, "{reply}");
    assert_eq!(reply["proxyUser"], "bob@EXAMPLE.COM");
    let (status, reply) = h.call(Some("alice"), "GET", "/sessions?doAs=carol", None).await;
    assert_eq!((status, reply["msg"].as_str().unwrap()), (403, "alice is not allowed to impersonate carol"));
}

#[tokio::test]
async fn blank_resource_fields_are_refused_for_batches_as_for_sessions() {
    let h = Harness::new(POLICY, &[]);
    for field in ["driverMemory", "executorMemory", "queue", "proxyUser"] {
        for path in ["/sessions", "/batches"] {
            let mut body = json!({"file": "hdfs:///a.py"});
            if path == "/sessions" {
                body = json!({});
            }
            body[field] = json!("  ");
            let (status, reply) = h.call(Some("alice"), "POST", path, Some(body)).await;
            assert_eq!(
                (status, reply["msg"].as_str().unwrap()),
                (400, format!("field `{field}` must not be empty").as_str())
            );
        }
    }
}

#[tokio::test]
async fn a_created_session_and_batch_are_in_the_store_when_201_is_answered_and_no_secret_is() {
    let h = Harness::new(POLICY, &[]);
    let (status, session) =
        h.call(Some("alice"), "POST", "/sessions", Some(json!({"name": "etl", "conf": {"spark.sql.x": "1"}}))).await;
    assert_eq!(status, 201, "{session}");
    let id = session["id"].as_u64().unwrap() as u32;
    let (status, batch) = h.call(Some("bob"), "POST", "/batches", Some(json!({"file": "hdfs:///a.py"}))).await;
    assert_eq!(status, 201, "{batch}");
    // Read back from the database file by another connection, as after a crash.
    let db = crate::store::sqlite_path(&h.config.config);
    let conn = rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let rows: Vec<(String, u32, Option<String>, String, Vec<u8>)> = conn
        .prepare("SELECT kind, id, name, effective_user, bytes FROM records ORDER BY kind, id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!((rows[0].0.as_str(), rows[0].3.as_str()), ("batch", "bob"));
    assert_eq!((rows[1].0.as_str(), rows[1].1, rows[1].2.as_deref()), ("session", id, Some("etl")));
    let record: Value = serde_json::from_slice(&rows[1].4).unwrap();
    assert_eq!(
        (record["owner"].as_str(), record["submit"]["conf"]["spark.sql.x"].as_str()),
        (Some("alice"), Some("1"))
    );
    drop(conn);
    // The session's RPC secret is nowhere in the database's files (WAL included).
    let secret = h.state.manager.get(&id.to_string()).unwrap().secret.to_hex();
    for file in std::fs::read_dir(db.parent().unwrap()).unwrap() {
        let bytes = std::fs::read(file.unwrap().path()).unwrap();
        assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "a secret reached the store");
    }
    // What is stored is enough to derive the secret again, with the key that is not stored.
    let nonce: [u8; 16] = hex::decode(record["secretNonce"].as_str().unwrap()).unwrap().try_into().unwrap();
    let key_file = h.config.config.server.data_dir.join("keys").join("session-secrets.key");
    let key = crate::rpc::SecretKey::load_or_create(&key_file).unwrap();
    assert_eq!(key.derive(id, &nonce).to_hex(), secret);
    assert!(!key_file.starts_with(db.parent().unwrap()), "the key is not kept with the database");
    // Deleted, the record goes too.
    let (status, _) = h.call(Some("alice"), "DELETE", &format!("/sessions/{id}"), None).await;
    assert_eq!(status, 200);
    let conn = rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let left: u32 = conn.query_row("SELECT count(*) FROM records WHERE kind = 'session'", [], |r| r.get(0)).unwrap();
    assert_eq!(left, 0);
}

#[tokio::test]
async fn a_damaged_store_stops_the_gateway_with_the_file_named_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("state")).unwrap();
    let db = data.join("state").join("store.db");
    std::fs::write(&db, b"garbage, not a database".repeat(300)).unwrap();
    let before = std::fs::read(&db).unwrap();
    let cfg = config::load(&Sources {
        file: None,
        env: vec![],
        overrides: vec![format!("server.data_dir=\"{}\"", data.display())],
    })
    .unwrap();
    let ids = crate::engine::ids::Ids::prepare(&data).unwrap();
    let err = crate::store::open(&cfg.config, ids).unwrap_err();
    assert!(err.starts_with(&format!("{}: not a usable sparkgate store", db.display())), "{err}");
    assert_eq!(std::fs::read(&db).unwrap(), before);
}

#[tokio::test]
async fn a_create_whose_client_goes_away_midway_still_ends_whole() {
    let h = Harness::new(POLICY, &[]);
    let token = h.token("alice");
    let request = |path: &str, body: Value| {
        Request::builder()
            .method("POST")
            .uri(path)
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    // The client gives up while the record is being written (the handler's future is dropped).
    for (path, body) in [("/batches", json!({"file": "hdfs:///a.py", "name": "gone"})), ("/sessions", json!({}))] {
        let call = h.app.clone().oneshot(request(path, body));
        let _ = tokio::time::timeout(Duration::from_micros(1), call).await;
    }
    // Each create still ran to its end: stored, registered and launched (here: dead at once,
    // there is no Spark) — nothing is left `starting` with nothing behind it, holding a slot.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, batches) = h.call(Some("alice"), "GET", "/batches", None).await;
        let (_, sessions) = h.call(Some("alice"), "GET", "/sessions", None).await;
        let states: Vec<String> = [&batches["sessions"], &sessions["sessions"]]
            .iter()
            .flat_map(|list| list.as_array().cloned().unwrap_or_default())
            .map(|item| item["state"].as_str().unwrap_or("").to_string())
            .collect();
        if states.len() == 2 && states.iter().all(|s| s == "dead") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "a half-made create was left behind: {states:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
