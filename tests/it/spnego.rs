//! SPNEGO end to end, all real: an MIT KDC (`kdc.rs`), the `sparkgate` binary started as a
//! subprocess with `auth.methods = ["spnego"]`, and curl as the GSSAPI client (`--negotiate`).
//! One KDC and one gateway are shared by the tests running at the same time and stopped when
//! the last of them finishes.

use crate::kdc::{Kdc, REALM};
use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// An authenticated route. It answers 200 for any authenticated user today; if an access
/// policy later restricts it, point this at a route every authenticated user may read.
const PROBE: &str = "/sessions";

/// The gateway binary running as a child process; killed on drop.
struct GatewayProc {
    child: Child,
    port: u16,
    ca: PathBuf,
    log: PathBuf,
}

impl Drop for GatewayProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The environment the gateway gets: only what it needs, never the test process's own.
fn gateway_env(kdc: &Kdc, dir: &Path, ktname: Option<&Path>) -> Vec<(String, OsString)> {
    let mut env = vec![
        ("KRB5_CONFIG".to_string(), OsString::from(&kdc.krb5_conf)),
        // A replay cache of its own, so runs never share /var/tmp state.
        ("KRB5RCACHEDIR".to_string(), OsString::from(dir)),
        ("SPARKGATE_LOG".to_string(), OsString::from("info")),
    ];
    if let Some(kt) = ktname {
        env.push(("KRB5_KTNAME".to_string(), OsString::from(format!("FILE:{}", kt.display()))));
    }
    for name in ["PATH", "HOME", "JAVA_HOME", "LANG"] {
        if let Some(v) = std::env::var_os(name) {
            env.push((name.to_string(), v));
        }
    }
    env
}

/// How a test gateway differs from the default one.
#[derive(Clone, Copy)]
struct Options<'a> {
    rules: &'a str,
    cookie_ttl: &'a str,
    /// `auth.spnego.principal`; None accepts any principal in the keytab.
    principal: Option<&'a str>,
    /// The access policy (policies/acl.toml).
    policy: &'a str,
    /// More keys of the `[spark]` section.
    spark_extra: &'a str,
}

/// alice maps to `alice`; `svc-<x>/admin` maps to `<x>`; bob has a valid ticket but no rule
/// maps him.
const DEFAULT: Options<'static> = Options {
    rules: "  { match = '(alice)@SPARKGATE\\.TEST', user = '$1' },\n  \
            { match = 'svc-([a-z]+)/admin@SPARKGATE\\.TEST', user = '${1}' },",
    cookie_ttl: "10m",
    principal: Some("HTTP/localhost@SPARKGATE.TEST"),
    policy: "[gateway]\nusers = [\"alice\", \"etl\"]\n",
    spark_extra: "",
};

/// Writes the configuration file (and the access policy) into `dir`.
fn write_config(dir: &Path, keytab: &Path, o: Options<'_>) -> PathBuf {
    let venv = crate::support::repo_root().join(".venv");
    // The default policy lets the mapped users use the gateway (GET /sessions).
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(policies.join("acl.toml"), o.policy).unwrap();
    // The tests run as root here and in CI; the gateway refuses root unless told.
    let root = nix::unistd::geteuid().is_root();
    let text = format!(
        "[server]\nbind = \"127.0.0.1:0\"\ndata_dir = \"{data}\"\ndangerous_run_as_root = {root}\n\n\
         [auth]\nmethods = [\"spnego\"]\n\n\
         [auth.spnego]\nkeytab = \"{kt}\"\n{principal}cookie_ttl = \"{ttl}\"\n\
         rules = [\n{rules}\n]\n\n\
         [acl]\npolicy_dir = \"{policies}\"\n\n\
         [spark]\nvenv = \"{venv}\"\n{spark_extra}",
        data = dir.join("data").display(),
        policies = policies.display(),
        kt = keytab.display(),
        principal = o.principal.map(|p| format!("principal = \"{p}\"\n")).unwrap_or_default(),
        ttl = o.cookie_ttl,
        rules = o.rules,
        venv = venv.display(),
        spark_extra = o.spark_extra,
    );
    let path = dir.join("sparkgate.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn gateway_command(config: &Path, env: &[(String, OsString)], log: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sparkgate"));
    cmd.args(["--config".as_ref(), config.as_os_str(), "serve".as_ref()])
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap());
    cmd
}

impl GatewayProc {
    /// Starts the binary with its files in `dir` (which must be its own).
    fn start(kdc: &Kdc, dir: &Path, options: Options<'_>) -> GatewayProc {
        let keytab = kdc.http_keytab();
        let config = write_config(dir, &keytab, options);
        let log = dir.join("gateway.log");
        let mut child = gateway_command(&config, &gateway_env(kdc, dir, Some(&keytab)), &log).spawn().unwrap();
        // The gateway prints its address once both listeners are bound (dev CA written).
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on https://127.0.0.1:").nth(1) {
                    let _ = tx.send(rest.trim().parse::<u16>().ok());
                }
            }
        });
        let port = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(Some(port)) => port,
            _ => {
                let _ = child.kill();
                panic!("gateway did not start: {}", std::fs::read_to_string(&log).unwrap_or_default());
            }
        };
        let ca = dir.join("data").join("tls").join("dev-ca.pem");
        assert!(ca.exists(), "no dev CA at {}", ca.display());
        GatewayProc { child, port, ca, log }
    }
}

/// Everything the tests share.
struct World {
    gw: GatewayProc,
    kdc: Kdc,
    alice: PathBuf,
    bob: PathBuf,
    dir: tempfile::TempDir,
}

fn world() -> Arc<World> {
    static WORLD: Mutex<Weak<World>> = Mutex::new(Weak::new());
    let mut slot = WORLD.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(w) = slot.upgrade() {
        return w;
    }
    let kdc = Kdc::start();
    let alice_password = kdc.add_user("alice");
    let bob_password = kdc.add_user("bob");
    let alice = kdc.kinit("alice", &alice_password).unwrap();
    let bob = kdc.kinit("bob", &bob_password).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gw = GatewayProc::start(&kdc, dir.path(), DEFAULT);
    let w = Arc::new(World { gw, kdc, alice, bob, dir });
    *slot = Arc::downgrade(&w);
    w
}

/// One curl run: the final response's status, headers (lower-case names) and body, and curl's
/// verbose trace.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    trace: String,
}

impl Resp {
    fn header(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str()).collect()
    }
}

impl World {
    /// curl against the gateway as `https://localhost:<port><path>` (the service principal is
    /// HTTP/localhost), with `ccache` as the only Kerberos credentials (none: an empty one).
    fn curl(&self, ccache: Option<&Path>, args: &[&str], path: &str) -> Resp {
        self.curl_to(&self.gw, ccache, args, path)
    }

    /// [`World::curl`] against another gateway.
    fn curl_to(&self, gw: &GatewayProc, ccache: Option<&Path>, args: &[&str], path: &str) -> Resp {
        let n = rand::random::<u64>();
        let hdr = self.dir.path().join(format!("h-{n}"));
        let body = self.dir.path().join(format!("b-{n}"));
        let cc = ccache.map(Path::to_path_buf).unwrap_or_else(|| self.dir.path().join("no-such-ccache"));
        let out = Command::new("curl")
            .arg("-q") // no ~/.curlrc
            .args(["-sS", "-v", "--cacert"])
            .arg(&gw.ca)
            .arg("-D")
            .arg(&hdr)
            .arg("-o")
            .arg(&body)
            .args(["-w", "%{http_code}"])
            .args(args)
            .arg(format!("https://localhost:{}{path}", gw.port))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("KRB5_CONFIG", &self.kdc.krb5_conf)
            .env("KRB5CCNAME", format!("FILE:{}", cc.display()))
            .output()
            .unwrap();
        let trace = String::from_utf8_lossy(&out.stderr).into_owned();
        let status = String::from_utf8_lossy(&out.stdout).trim().parse::<u16>().unwrap_or_else(|_| {
            panic!("curl failed: {trace}\ngateway log: {}", std::fs::read_to_string(&gw.log).unwrap_or_default())
        });
        let raw = std::fs::read_to_string(&hdr).unwrap_or_default();
        // -D holds every response of the exchange (401 then 200); keep the last one.
        let last = raw.split("\r\n\r\n").filter(|b| !b.trim().is_empty()).last().unwrap_or("");
        let headers = last
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let body = std::fs::read_to_string(&body).unwrap_or_default();
        Resp { status, headers, body, trace }
    }

    /// alice's SPNEGO handshake; returns the response.
    fn alice_negotiates(&self, extra: &[&str]) -> Resp {
        let mut args = vec!["--negotiate", "-u", ":"];
        args.extend_from_slice(extra);
        let r = self.curl(Some(&self.alice), &args, PROBE);
        assert_eq!(r.status, 200, "{r:#?}\ngateway log: {}", self.gateway_log());
        r
    }

    fn gateway_log(&self) -> String {
        std::fs::read_to_string(&self.gw.log).unwrap_or_default()
    }
}

fn cookie_value(r: &Resp) -> String {
    let set = r.header("set-cookie");
    assert_eq!(set.len(), 1, "{r:#?}");
    let (pair, _) = set[0].split_once(';').unwrap();
    pair.strip_prefix("sparkgate_auth=").unwrap().to_string()
}

#[test]
fn spnego_alice_is_authenticated_with_mutual_auth_and_a_cookie() {
    let w = world();
    let jar = w.dir.path().join(format!("jar-{}", rand::random::<u64>()));
    let jar = jar.to_str().unwrap();
    let r = w.alice_negotiates(&["-c", jar]);
    // Mutual authentication: the server's AP-REP comes back in WWW-Authenticate on the 200.
    let mutual = r.header("www-authenticate");
    assert_eq!(mutual.len(), 1, "{r:#?}");
    let token = mutual[0].strip_prefix("Negotiate ").expect("a Negotiate token");
    assert!(token.len() > 20, "{token}");
    let set = r.header("set-cookie");
    assert_eq!(set.len(), 1, "{r:#?}");
    let cookie = set[0];
    assert!(cookie.starts_with("sparkgate_auth="), "{cookie}");
    for attr in ["; Path=/", "; HttpOnly", "; Secure", "; SameSite=Strict", "; Max-Age=600"] {
        assert!(cookie.contains(attr), "{cookie} lacks {attr}");
    }
    assert!(r.body.contains("sessions"), "{}", r.body);

    // The cookie alone (from curl's jar, no Kerberos ticket at all) works on the next call.
    let r = w.curl(None, &["-b", jar], PROBE);
    assert_eq!(r.status, 200, "{r:#?}");
    assert!(r.header("set-cookie").is_empty(), "the cookie is not re-issued: {r:#?}");
    // Its deny twin: the same call without the jar is refused.
    let r = w.curl(None, &[], PROBE);
    assert_eq!(r.status, 401, "{r:#?}");
}

#[test]
fn spnego_tampered_cookie_is_refused() {
    let w = world();
    let value = cookie_value(&w.alice_negotiates(&[]));
    let r = w.curl(None, &["-b", &format!("sparkgate_auth={value}")], PROBE);
    assert_eq!(r.status, 200, "the untouched cookie works: {r:#?}");

    let (payload, mac) = value.split_once('.').unwrap();
    // Another user in the payload, alice's MAC kept.
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let forged = b64.encode(br#"{"u":"admin","g":["admins"],"e":99999999999}"#);
    // One character of the MAC changed.
    let mut flipped = mac.to_string();
    let last = if flipped.ends_with('A') { "B" } else { "A" };
    flipped.replace_range(flipped.len() - 1.., last);
    for bad in
        [format!("{forged}.{mac}"), format!("{payload}.{flipped}"), format!("{payload}x.{mac}"), "garbage".into()]
    {
        let r = w.curl(None, &["-b", &format!("sparkgate_auth={bad}")], PROBE);
        assert_eq!(r.status, 401, "{bad}: {r:#?}");
        assert_eq!(r.header("www-authenticate"), vec!["Negotiate"], "{r:#?}");
        assert!(r.body.contains("sparkgate_auth"), "{}", r.body);
    }
}

#[test]
fn spnego_no_credentials_is_401_with_negotiate_challenge() {
    let w = world();
    let r = w.curl(None, &[], PROBE);
    assert_eq!(r.status, 401, "{r:#?}");
    assert_eq!(r.header("www-authenticate"), vec!["Negotiate"], "{r:#?}");
    assert!(r.header("set-cookie").is_empty());
    // Another scheme is not SPNEGO's business: still just the challenge.
    let r = w.curl(None, &["-H", "Authorization: Bearer abc.def.ghi"], PROBE);
    assert_eq!(r.status, 401, "{r:#?}");
    assert_eq!(r.header("www-authenticate"), vec!["Negotiate"], "{r:#?}");
    // curl --negotiate without a ticket cannot produce a token.
    let r = w.curl(None, &["--negotiate", "-u", ":"], PROBE);
    assert_eq!(r.status, 401, "{r:#?}");
}

#[test]
fn spnego_garbage_tokens_are_refused() {
    let w = world();
    for header in [
        "Authorization: Negotiate Z2FyYmFnZQ==",  // base64, not a GSSAPI token
        "Authorization: Negotiate !!!not-base64", // not base64
        "Authorization: Negotiate",               // no token
        // A syntactically valid SPNEGO NegTokenInit header with a truncated body.
        "Authorization: Negotiate YIIBmwYGKwYBBQUCoIIBjzCCAYugMDAuBgkqhkiC9xIBAgIGCSqGSIb3EgECAgYKKwYBBAGCNwICHgYKKwYBBAGCNwICCg==",
    ] {
        let r = w.curl(None, &["-H", header], PROBE);
        assert_eq!(r.status, 401, "{header}: {r:#?}");
        assert_eq!(r.header("www-authenticate"), vec!["Negotiate"], "{r:#?}");
        assert!(r.header("set-cookie").is_empty());
    }
}

#[test]
fn spnego_unmapped_principal_is_refused() {
    let w = world();
    // bob has a valid ticket and a valid service ticket, but no rule maps him.
    let r = w.curl(Some(&w.bob), &["--negotiate", "-u", ":"], PROBE);
    assert_eq!(r.status, 401, "{r:#?}");
    assert!(r.body.contains(&format!("bob@{REALM}")) && r.body.contains("not mapped"), "{}", r.body);
    assert!(r.header("set-cookie").is_empty(), "{r:#?}");
    // Allow twin: the mapped principal svc-etl/admin is user `etl`... and alice is `alice`.
    let password = w.kdc.add_user("svc-etl/admin");
    let cc = w.kdc.kinit("svc-etl/admin", &password).unwrap();
    let r = w.curl(Some(&cc), &["--negotiate", "-u", ":"], PROBE);
    assert_eq!(r.status, 200, "{r:#?}\n{}", w.gateway_log());
    assert!(r.header("set-cookie")[0].contains("sparkgate_auth="), "{r:#?}");
}

#[test]
fn spnego_unknown_principals_get_no_ticket_and_no_access() {
    let w = world();
    // Unknown to the KDC.
    let err = w.kdc.kinit("mallory", "whatever").unwrap_err();
    assert!(err.contains("not found in Kerberos database"), "{err}");
    // Another realm, which this client cannot even reach.
    let err = w.kdc.kinit("eve@OTHER.TEST", "whatever").unwrap_err();
    assert!(!err.is_empty());
    // A wrong password does not help either.
    let err = w.kdc.kinit("alice", "wrong-password").unwrap_err();
    assert!(err.contains("incorrect") || err.contains("Preauthentication failed"), "{err}");
    // Without a ticket there is no token, so no access.
    let r = w.curl(None, &["--negotiate", "-u", ":"], PROBE);
    assert_eq!(r.status, 401, "{r:#?}");
}

#[test]
fn spnego_replayed_token_is_refused() {
    let w = world();
    // A real client's token, captured from curl's trace of a successful handshake.
    let r = w.alice_negotiates(&[]);
    let token = r
        .trace
        .lines()
        .filter_map(|l| l.strip_prefix("> "))
        .filter_map(|l| l.split_once(':'))
        .find(|(name, value)| name.eq_ignore_ascii_case("authorization") && value.trim().starts_with("Negotiate "))
        .map(|(_, value)| value.trim().to_string())
        .unwrap_or_else(|| panic!("no Authorization header in curl's trace: {}", r.trace));
    // The very same AP-REQ again: MIT's replay cache refuses it.
    let r = w.curl(None, &["-H", &format!("Authorization: {token}")], PROBE);
    assert_eq!(r.status, 401, "{r:#?}");
    assert!(r.body.contains("replay"), "{}", r.body);
    assert!(r.header("set-cookie").is_empty(), "{r:#?}");
    assert_eq!(r.header("www-authenticate"), vec!["Negotiate"], "{r:#?}");
}

/// The cookie key belongs to one gateway process: another process (a restart, a second
/// instance) refuses the cookie, while SPNEGO itself works there.
#[test]
fn spnego_cookie_does_not_travel_to_another_gateway_process() {
    let w = world();
    let value = cookie_value(&w.alice_negotiates(&[]));
    let dir = tempfile::tempdir().unwrap();
    let other = GatewayProc::start(&w.kdc, dir.path(), DEFAULT);
    let r = w.curl_to(&other, None, &["-b", &format!("sparkgate_auth={value}")], PROBE);
    assert_eq!(r.status, 401, "{r:#?}");
    assert!(r.body.contains("another gateway process"), "{}", r.body);
    let r = w.curl_to(&other, Some(&w.alice), &["--negotiate", "-u", ":"], PROBE);
    assert_eq!(r.status, 200, "{r:#?}");
    let fresh = cookie_value(&r);
    let r = w.curl_to(&other, None, &["-b", &format!("sparkgate_auth={fresh}")], PROBE);
    assert_eq!(r.status, 200, "{r:#?}");
}

/// `cookie_ttl = "0"`: SPNEGO on every request, no cookie issued or accepted. Also covers an
/// acceptor without `auth.spnego.principal` (any key in the keytab).
#[test]
fn spnego_without_cookie_ttl_issues_no_cookie() {
    let w = world();
    let value = cookie_value(&w.alice_negotiates(&[]));
    let dir = tempfile::tempdir().unwrap();
    let gw = GatewayProc::start(&w.kdc, dir.path(), Options { cookie_ttl: "0", principal: None, ..DEFAULT });
    let r = w.curl_to(&gw, Some(&w.alice), &["--negotiate", "-u", ":"], PROBE);
    assert_eq!(r.status, 200, "{r:#?}");
    assert!(r.header("www-authenticate")[0].starts_with("Negotiate "), "{r:#?}");
    assert!(r.header("set-cookie").is_empty(), "{r:#?}");
    // A cookie (even a genuine one from another gateway) is not a credential here.
    let r = w.curl_to(&gw, None, &["-b", &format!("sparkgate_auth={value}")], PROBE);
    assert_eq!(r.status, 401, "{r:#?}");
    assert_eq!(r.body, r#"{"msg":"authentication required"}"#);
}

/// Start-up refuses a configuration it cannot serve safely, with a message naming the fix.
#[test]
fn spnego_start_up_errors_are_clear() {
    let kdc = Kdc::start();
    let dir = tempfile::tempdir().unwrap();
    let keytab = kdc.http_keytab();
    let run = |config: &Path, ktname: Option<&Path>| {
        let log = dir.path().join(format!("start-{}.log", rand::random::<u64>()));
        let mut child = gateway_command(config, &gateway_env(&kdc, dir.path(), ktname), &log).spawn().unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success());
        std::fs::read_to_string(&log).unwrap()
    };
    let config = write_config(dir.path(), &keytab, DEFAULT);
    // KRB5_KTNAME unset.
    let err = run(&config, None);
    assert!(err.contains("KRB5_KTNAME=FILE:") && err.contains("not set"), "{err}");
    // KRB5_KTNAME naming another keytab.
    let other = dir.path().join("other.keytab");
    std::fs::copy(&keytab, &other).unwrap();
    let err = run(&config, Some(&other));
    assert!(err.contains("KRB5_KTNAME") && err.contains("other.keytab"), "{err}");
    // A rule that is not a regular expression.
    let config =
        write_config(dir.path(), &keytab, Options { rules: "  { match = '(alice', user = '$1' },", ..DEFAULT });
    let err = run(&config, Some(&keytab));
    assert!(err.contains("auth.spnego.rules[0]") && err.contains("invalid regular expression"), "{err}");
    // A service principal the keytab has no key for.
    let config =
        write_config(dir.path(), &keytab, Options { principal: Some("HTTP/elsewhere@SPARKGATE.TEST"), ..DEFAULT });
    let err = run(&config, Some(&keytab));
    assert!(err.contains("cannot acquire Kerberos acceptor credentials") && err.contains("HTTP/elsewhere"), "{err}");
    // A keytab that does not exist.
    let missing = dir.path().join("missing.keytab");
    let config = write_config(dir.path(), &missing, DEFAULT);
    let err = run(&config, Some(&missing));
    assert!(err.contains("cannot read auth.spnego.keytab"), "{err}");
}

/// The JSON body of a response.
fn json_of(r: &Resp) -> serde_json::Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {r:#?}"))
}

#[test]
fn spnego_proxied_sessions_launch_with_the_gateways_kerberos_ticket() {
    let w = world();
    let principal = format!("sparkgate/localhost@{REALM}");
    let keytab = w.kdc.service_keytab("sparkgate/localhost");
    let dir = tempfile::tempdir().unwrap();
    // Local mode: the drivers share the gateway's ticket, which a test (one trusted team) allows.
    let spark_extra = format!(
        "launch_principal = \"{principal}\"\nlaunch_keytab = \"{}\"\ndangerous_share_launch_credentials = true\n",
        keytab.display()
    );
    let policy = "[create]\nusers = [\"alice\"]\n\n[[impersonation]]\ncallers = { users = [\"alice\"] }\n\
                  targets = { users = [\"carol\"] }\nhosts = [\"*\"]\n";
    let gw = GatewayProc::start(&w.kdc, dir.path(), Options { policy, spark_extra: &spark_extra, ..DEFAULT });
    let log = || std::fs::read_to_string(&gw.log).unwrap_or_default();

    // At start-up the gateway got its own ticket from the keytab, into an owner-only cache.
    let ccache = dir.path().join("data").join("krb5cc_launch");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&ccache).unwrap().permissions().mode() & 0o077, 0, "{}", log());
    let klist = Command::new("klist")
        .arg("-c")
        .arg(format!("FILE:{}", ccache.display()))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("KRB5_CONFIG", &w.kdc.krb5_conf)
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&klist.stdout);
    assert!(listed.contains(&format!("Default principal: {principal}")), "{listed}");

    // alice asks for a session as carol: spark-submit gets --proxy-user and the ticket, not
    // --principal (it refuses the two together), and the application runs as carol.
    let negotiate = ["--negotiate", "-u", ":", "-H", "Content-Type: application/json"];
    let post = |path: &str, body: &str| {
        let mut args = negotiate.to_vec();
        args.extend(["-X", "POST", "-d", body]);
        w.curl_to(&gw, Some(&w.alice), &args, path)
    };
    let r = post("/sessions", r#"{"kind": "pyspark", "proxyUser": "carol"}"#);
    assert_eq!(r.status, 201, "{r:#?}\n{}", log());
    let id = json_of(&r)["id"].as_u64().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        let r = w.curl_to(&gw, Some(&w.alice), &negotiate, &format!("/sessions/{id}"));
        let info = json_of(&r);
        match info["state"].as_str() {
            Some("idle") => break,
            Some("dead" | "error" | "killed") => panic!("the session failed: {info:#}\n{}", log()),
            _ => {}
        }
        assert!(tokio::time::Instant::now() < deadline, "not idle in time: {info:#}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let r = post(&format!("/sessions/{id}/statements"), r#"{"code": "print(sc.sparkUser())"}"#);
    assert_eq!(r.status, 201, "{r:#?}");
    let sid = json_of(&r)["id"].as_u64().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let statement = loop {
        let st = json_of(&w.curl_to(&gw, Some(&w.alice), &negotiate, &format!("/sessions/{id}/statements/{sid}")));
        if st["state"] == "available" {
            break st;
        }
        assert!(tokio::time::Instant::now() < deadline, "statement not done: {st:#}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(statement["output"]["data"]["text/plain"], "carol", "{statement:#}");
    let mut args = negotiate.to_vec();
    args.extend(["-X", "DELETE"]);
    assert_eq!(w.curl_to(&gw, Some(&w.alice), &args, &format!("/sessions/{id}")).status, 200);
}
