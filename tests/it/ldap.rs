//! LDAP login end to end, all real: an OpenLDAP directory (`ldap_dir.rs`: Debian's slapd on
//! loopback with its own CA), gateways with `auth.methods = ["ldap"]`, HTTP Basic from reqwest
//! and — as sparkmagic's `Basic_Access` authenticator sends it — from Python `requests`
//! driving a real Spark session.

use crate::ldap_dir::{Directory, USERS};
use crate::support::{repo_root, TestGateway};
use reqwest::header::{HeaderMap, COOKIE, RETRY_AFTER, SET_COOKIE, WWW_AUTHENTICATE};
use serde_json::Value;
use std::sync::OnceLock;

/// Directory groups grant the rights: `ops` (bob, alice) may use the gateway, `analysts`
/// (alice) may create sessions; carol is in no group.
const POLICY: &str = "[gateway]\ngroups = [\"ops\"]\n[create]\ngroups = [\"analysts\"]\n";

fn password(user: &str) -> &'static str {
    USERS.iter().find(|(u, _)| *u == user).map(|(_, p)| *p).unwrap()
}

/// `[auth.ldap]` overrides for `directory`; `extra` on top.
fn ldap_overrides(directory: &Directory, extra: &[&str]) -> Vec<String> {
    let mut all = vec![
        "auth.methods=[\"ldap\"]".to_string(),
        format!("auth.ldap.ca=\"{}\"", directory.ca_pem.display()),
        "auth.ldap.timeout=\"3s\"".into(),
        "auth.ldap.connect_timeout=\"3s\"".into(),
    ];
    all.extend(extra.iter().map(|s| s.to_string()));
    all
}

/// The directory and gateway most tests share: LDAPS, bind DNs from a pattern, groups from
/// `memberOf`. Every test comes from 127.0.0.1, so the per-address throttle is high here; the
/// throttle has its own gateway.
struct Shared {
    directory: Directory,
    gw: TestGateway,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let directory = Directory::start();
        let overrides = ldap_overrides(
            &directory,
            &[
                &format!("auth.ldap.url=\"{}\"", directory.ldaps_url),
                &format!("auth.ldap.user_dn_pattern=\"uid={{user}},{}\"", directory.people_dn),
                "auth.ldap.max_failures=1000",
            ],
        );
        let overrides: Vec<&str> = overrides.iter().map(String::as_str).collect();
        let gw = TestGateway::start_with_policy(&overrides, POLICY);
        Shared { directory, gw }
    })
}

async fn get_as(gw: &TestGateway, path: &str, user: &str, password: &str) -> (u16, HeaderMap, Value) {
    let r = gw.client().get(gw.url(path)).basic_auth(user, Some(password)).send().await.unwrap();
    let (status, headers) = (r.status().as_u16(), r.headers().clone());
    (status, headers, r.json().await.unwrap_or(Value::Null))
}

async fn get_with_cookie(gw: &TestGateway, path: &str, cookie: &str) -> (u16, Value) {
    let r = gw.client().get(gw.url(path)).header(COOKIE, cookie).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// The audit records of requests, flushed first.
fn audit(gw: &TestGateway) -> Vec<Value> {
    gw.audit.flush().unwrap();
    std::fs::read_to_string(gw.audit.path())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["kind"] == "request")
        .collect()
}

#[tokio::test]
async fn a_basic_login_binds_as_the_user_and_its_cookie_carries_the_next_requests() {
    let Shared { gw, .. } = shared();
    let (status, headers, body) = get_as(gw, "/sessions", "alice", password("alice")).await;
    assert_eq!(status, 200, "{body}");
    let set = headers.get(SET_COOKIE).expect("a login cookie").to_str().unwrap().to_string();
    for attribute in ["HttpOnly", "Secure", "SameSite=Strict"] {
        assert!(set.contains(attribute), "{set}");
    }
    let cookie = set.split(';').next().unwrap().to_string();
    assert!(cookie.starts_with("sparkgate_auth="), "{cookie}");
    // The cookie alone is enough: the directory is not asked again.
    let (status, body) = get_with_cookie(gw, "/sessions", &cookie).await;
    assert_eq!(status, 200, "{body}");
    // A tampered cookie is refused.
    let (status, _) = get_with_cookie(gw, "/sessions", &format!("{cookie}x")).await;
    assert_eq!(status, 401);
    // The directory matches names without regard to case: still alice, no second user.
    let (status, _, body) = get_as(gw, "/sessions", "ALICE", password("alice")).await;
    assert_eq!(status, 200, "{body}");
    let records = audit(gw);
    assert!(!records.iter().any(|r| r["principal"] == "ALICE"), "a second user named ALICE");
    let methods: Vec<&str> = records
        .iter()
        .filter(|r| r["principal"] == "alice" && r["decision"] == "allow")
        .filter_map(|r| r["auth_method"].as_str())
        .collect();
    assert!(methods.contains(&"ldap") && methods.contains(&"ldap-cookie"), "{methods:?}");
}

#[tokio::test]
async fn wrong_password_and_unknown_user_get_the_same_answer_and_both_are_audited_without_the_password() {
    let Shared { gw, .. } = shared();
    let secret = "Wrong-Password-4711";
    let (wrong, wrong_headers, wrong_body) = get_as(gw, "/sessions", "alice", secret).await;
    let (unknown, unknown_headers, unknown_body) = get_as(gw, "/sessions", "mallory", secret).await;
    assert_eq!((wrong, unknown), (401, 401));
    assert_eq!(wrong_body, unknown_body);
    assert_eq!(wrong_body["msg"], "wrong user name or password");
    for headers in [&wrong_headers, &unknown_headers] {
        let challenge = headers.get(WWW_AUTHENTICATE).unwrap().to_str().unwrap();
        assert!(challenge.starts_with("Basic realm="), "{challenge}");
        assert!(headers.get(SET_COOKIE).is_none());
    }
    // An empty password would be an LDAP "unauthenticated bind", which succeeds for any DN.
    let (empty, _, empty_body) = get_as(gw, "/sessions", "alice", "").await;
    assert_eq!(empty, 401, "{empty_body}");
    // Two Authorization headers: which one a proxy in front judged is unknowable.
    let two = gw
        .client()
        .get(gw.url("/sessions"))
        .basic_auth("mallory", Some(secret))
        .header("Authorization", "Basic YWxpY2U6YWxpY2Utc2VjcmV0")
        .send()
        .await
        .unwrap();
    assert_eq!(two.status(), 400);
    // A user name no gateway user could have is refused the same way, before the directory.
    let (odd, _, odd_body) = get_as(gw, "/sessions", "*)(uid=*", secret).await;
    assert_eq!((odd, &odd_body), (401, &wrong_body));

    let records = audit(gw);
    for user in ["alice", "mallory"] {
        assert!(
            records.iter().any(|r| r["principal"] == user
                && r["decision"] == "deny"
                && r["status"] == 401
                && r["reason"] == "wrong user name or password"),
            "no failed login of {user} in the trail"
        );
    }
    let trail = std::fs::read_to_string(gw.audit.path()).unwrap();
    assert!(!trail.contains(secret) && !trail.contains(password("alice")));
}

#[tokio::test]
async fn directory_groups_grant_policy_rights() {
    let Shared { gw, .. } = shared();
    // bob is in `ops`, which may use the gateway; carol is in no group.
    let (status, _, body) = get_as(gw, "/sessions", "bob", password("bob")).await;
    assert_eq!(status, 200, "{body}");
    // Typed in another case, carol is still carol (the principal is the entry's uid): no
    // second user who could escape her quotas.
    let (status, _, body) = get_as(gw, "/sessions", "Carol", password("carol")).await;
    assert_eq!(status, 403, "{body}");
    let records = audit(gw);
    assert!(records.iter().any(|r| r["principal"] == "carol" && r["status"] == 403 && r["auth_method"] == "ldap"));
    assert!(!records.iter().any(|r| r["principal"] == "Carol"));
}

/// StartTLS, search-then-bind with the service account, groups by a group search; a small
/// throttle. The directory goes down and comes back; then the throttle locks.
#[tokio::test]
async fn a_directory_that_is_down_is_a_503_and_failed_logins_lock_out_with_retry_after() {
    let mut directory = Directory::start();
    let overrides = ldap_overrides(
        &directory,
        &[
            &format!("auth.ldap.url=\"{}\"", directory.ldap_url),
            "auth.ldap.start_tls=true",
            &format!("auth.ldap.user_search_base=\"{}\"", directory.people_dn),
            &format!("auth.ldap.bind_dn=\"{}\"", directory.service_dn),
            &format!("auth.ldap.bind_password_file=\"{}\"", directory.service_password_file.display()),
            &format!("auth.ldap.group_search_base=\"{}\"", directory.groups_dn),
            "auth.ldap.max_failures=3",
            "auth.ldap.max_address_failures=5",
            "auth.ldap.failure_window=\"10m\"",
        ],
    );
    let overrides: Vec<&str> = overrides.iter().map(String::as_str).collect();
    let gw = TestGateway::start_with_policy(&overrides, POLICY);

    // Only the `ops` group (found by the group search) lets alice use the gateway. (carol
    // does not log in before the lockout below: her login would be remembered, and
    // remembered credentials pass a lock.)
    let (status, _, body) = get_as(&gw, "/sessions", "alice", password("alice")).await;
    assert_eq!(status, 200, "{body}");

    directory.stop();
    let (status, headers, body) = get_as(&gw, "/sessions", "bob", password("bob")).await;
    assert_eq!(status, 503, "{body}");
    assert!(body["msg"].as_str().unwrap().contains("login directory is not available"), "{body}");
    assert!(headers.get(WWW_AUTHENTICATE).is_none());
    // A flood of logins during the outage: each answered 503, but not one audit record each
    // (counted per address, route and status like other refusals of unknown callers).
    for _ in 0..20 {
        let (status, _, _) = get_as(&gw, "/sessions", "mallory", "x").await;
        assert_eq!(status, 503);
    }
    let written = audit(&gw).iter().filter(|r| r["status"] == 503).count();
    assert!(written <= 2, "{written} records for 21 refusals");
    // alice's login is remembered (auth.ldap.remember): she goes on working.
    let (status, _, body) = get_as(&gw, "/sessions", "alice", password("alice")).await;
    assert_eq!(status, 200, "{body}");
    // The gateway goes on serving; once the directory is back, so do logins.
    let (status, _) = gw.get("/version").await;
    assert_eq!(status, 401);
    // Once the directory is back, logins work again (after at most the 2 s the gateway waits
    // before it tries a directory that could not be reached).
    directory.restart();
    let back = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (status, _, body) = get_as(&gw, "/sessions", "bob", password("bob")).await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(tokio::time::Instant::now() < back, "logins did not come back: {body}");
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }

    // Three failures lock carol's name, in any case it is typed.
    for user in ["carol", "Carol", "CAROL"] {
        let (status, _, _) = get_as(&gw, "/sessions", user, "not-her-password").await;
        assert_eq!(status, 401);
    }
    let (status, headers, body) = get_as(&gw, "/sessions", "carol", password("carol")).await;
    assert_eq!(status, 429, "{body}");
    let retry: u64 = headers.get(RETRY_AFTER).unwrap().to_str().unwrap().parse().unwrap();
    assert!(retry > 0 && retry <= 600, "{retry}");
    assert!(!body.to_string().contains("carol"), "{body}");
    // Two more failures, whatever the names, lock this address (five in all)...
    for user in ["mallory", "trudy"] {
        let (status, _, _) = get_as(&gw, "/sessions", user, "guess").await;
        assert_eq!(status, 401);
    }
    let (status, _, _) = get_as(&gw, "/sessions", "alice", "also-wrong").await;
    assert_eq!(status, 429, "the address is locked for every name");
    // ...but credentials that bound a moment ago (bob's, remembered) still work.
    let (status, _, body) = get_as(&gw, "/sessions", "bob", password("bob")).await;
    assert_eq!(status, 200, "{body}");
    let records = audit(&gw);
    let failures = records.iter().filter(|r| r["principal"] == "carol" && r["status"] == 401).count();
    assert_eq!(failures, 3);
}

/// What sparkmagic's `Basic_Access` authenticator does on the wire: a `requests.Session` with
/// `HTTPBasicAuth` and sparkmagic's `X-Requested-By` header, here creating a pyspark session,
/// running a statement and deleting the session.
#[tokio::test]
async fn sparkmagic_style_basic_auth_drives_a_session_end_to_end() {
    let Shared { gw, .. } = shared();
    let python = repo_root().join(".venv-clients/bin/python");
    assert!(python.exists(), "{} is missing: scripts/test.sh installs it", python.display());
    let ca = gw.data_dir.join("ca-for-basic-clients.pem");
    std::fs::write(&ca, &gw.ca_pem).unwrap();
    let script = r#"
import json, sys, time, requests
from requests.auth import HTTPBasicAuth
base, ca, user, password = sys.argv[1:5]
s = requests.Session()
s.auth = HTTPBasicAuth(user, password)
s.verify = ca
s.headers.update({"Content-Type": "application/json", "X-Requested-By": "sparkmagic"})
def until(path, done, limit=300):
    end = time.time() + limit
    while time.time() < end:
        r = s.get(base + path); r.raise_for_status(); body = r.json()
        if done(body): return body
        time.sleep(0.2)
    raise SystemExit("timed out on " + path)
r = s.post(base + "/sessions", data=json.dumps({"kind": "pyspark"})); r.raise_for_status()
session = r.json()
sid = session["id"]
until(f"/sessions/{sid}", lambda b: b["state"] == "idle")
r = s.post(base + f"/sessions/{sid}/statements", data=json.dumps({"code": "spark.range(5).count()"}))
r.raise_for_status()
st = r.json()["id"]
out = until(f"/sessions/{sid}/statements/{st}", lambda b: b["state"] == "available")["output"]
info = s.get(base + f"/sessions/{sid}").json()
s.delete(base + f"/sessions/{sid}").raise_for_status()
print(json.dumps({"output": out, "owner": info["owner"], "proxyUser": info["proxyUser"]}))
"#;
    let out = tokio::process::Command::new(&python)
        .args(["-c", script, &gw.base, ca.to_str().unwrap(), "alice", password("alice")])
        // requests lets REQUESTS_CA_BUNDLE and CURL_CA_BUNDLE override a session's `verify`.
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let result: Value = serde_json::from_slice(out.stdout.trim_ascii()).unwrap();
    assert_eq!(result["output"]["status"], "ok", "{result}");
    assert_eq!(result["output"]["data"]["text/plain"], "5", "{result}");
    assert_eq!((result["owner"].as_str(), result["proxyUser"].as_str()), (Some("alice"), Some("alice")), "{result}");
}
