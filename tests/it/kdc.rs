//! A real MIT Kerberos KDC for tests: a temporary realm (`SPARKGATE.TEST`) on 127.0.0.1 with its
//! own krb5.conf, kdc.conf and database in a temp dir — every tool runs with `KRB5_CONFIG` and
//! `KRB5_KDC_PROFILE` pointing there, so `/etc` is never read or written. `krb5kdc -n` runs in
//! the foreground and is killed when the `Kdc` is dropped. Needs the Debian packages krb5-kdc,
//! krb5-admin-server and krb5-user (`scripts/setup.sh`).

use rand::distributions::{Alphanumeric, DistString};
use std::ffi::OsString;
use std::io::Write;
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;
use tokio::time::Instant;

/// The test realm.
pub const REALM: &str = "SPARKGATE.TEST";

/// A running KDC with its realm.
pub struct Kdc {
    dir: tempfile::TempDir,
    /// The KDC's port (UDP and TCP) on 127.0.0.1.
    pub port: u16,
    /// The client configuration (`KRB5_CONFIG`).
    pub krb5_conf: PathBuf,
    /// The KDC configuration (`KRB5_KDC_PROFILE`).
    pub kdc_conf: PathBuf,
    child: Child,
}

impl Drop for Kdc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that is free for both TCP and UDP on 127.0.0.1 right now.
fn free_port() -> u16 {
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn random_secret() -> String {
    Alphanumeric.sample_string(&mut rand::thread_rng(), 24)
}

/// Runs a Kerberos tool with `env` only (plus PATH), feeding `stdin`; fails the test on error.
fn run(program: &str, args: &[&str], env: &[(String, OsString)], stdin: &str) -> Output {
    let out = run_status(program, args, env, stdin);
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn run_status(program: &str, args: &[&str], env: &[(String, OsString)], stdin: &str) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program} (run scripts/setup.sh): {e}"));
    // A program that fails early (kinit for an unknown principal) may exit before reading its
    // input: a broken pipe here is its answer, not a test failure.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    child.wait_with_output().unwrap()
}

impl Kdc {
    /// Creates the realm and its database, adds `HTTP/localhost` with a keytab
    /// ([`Kdc::http_keytab`]) and starts the KDC. Takes well under a second.
    pub fn start() -> Kdc {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let krb5_conf = d.join("krb5.conf");
        let kdc_conf = d.join("kdc.conf");
        let env = vec![
            ("KRB5_CONFIG".to_string(), OsString::from(&krb5_conf)),
            ("KRB5_KDC_PROFILE".to_string(), OsString::from(&kdc_conf)),
        ];
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_port();
            Self::write_configs(d, port);
            if !d.join("principal").exists() {
                // The master password only protects this throwaway database.
                run("kdb5_util", &["create", "-s", "-r", REALM, "-P", &random_secret()], &env, "");
                let keytab = d.join("http.keytab");
                Self::kadmin_env(
                    &env,
                    &format!("addprinc -randkey HTTP/localhost\nktadd -k {} HTTP/localhost\n", keytab.display()),
                );
            }
            let log = std::fs::File::create(d.join("krb5kdc.out")).unwrap();
            let mut child = Command::new("krb5kdc")
                .args(["-n", "-r", REALM])
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .envs(env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                // Deliberately in the test's process group: Ctrl-C on `cargo test` stops the
                // KDC too (Drop, which also stops it, does not run then).
                .spawn()
                .expect("cannot run krb5kdc (run scripts/setup.sh)");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Kdc { dir, port, krb5_conf, kdc_conf, child };
                }
                if let Some(status) = child.try_wait().unwrap() {
                    let out = std::fs::read_to_string(d.join("krb5kdc.out")).unwrap_or_default();
                    // Lost a race for the port: try another one.
                    assert!(attempt < 5, "krb5kdc exited with {status}: {out}");
                    break;
                }
                assert!(Instant::now() < deadline, "krb5kdc did not listen on {port}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    fn write_configs(d: &Path, port: u16) {
        let krb5 = format!(
            "[libdefaults]\n  default_realm = {REALM}\n  dns_lookup_kdc = false\n  dns_lookup_realm = false\n  \
             rdns = false\n  dns_canonicalize_hostname = false\n  udp_preference_limit = 1\n  \
             ticket_lifetime = 1h\n\n[realms]\n  {REALM} = {{\n    kdc = 127.0.0.1:{port}\n  }}\n\n\
             [domain_realm]\n  localhost = {REALM}\n"
        );
        let dd = d.display();
        let kdc = format!(
            "[kdcdefaults]\n  kdc_listen = 127.0.0.1:{port}\n  kdc_tcp_listen = 127.0.0.1:{port}\n\n[realms]\n  \
             {REALM} = {{\n    database_name = {dd}/principal\n    key_stash_file = {dd}/stash\n    \
             acl_file = {dd}/kadm5.acl\n    max_life = 1h\n    \
             supported_enctypes = aes256-cts-hmac-sha1-96:normal aes128-cts-hmac-sha1-96:normal\n  }}\n\n\
             [logging]\n  kdc = FILE:{dd}/kdc.log\n  admin_server = FILE:{dd}/kadmin.log\n  \
             default = FILE:{dd}/krb5lib.log\n"
        );
        std::fs::write(d.join("krb5.conf"), krb5).unwrap();
        std::fs::write(d.join("kdc.conf"), kdc).unwrap();
    }

    /// The variables every Kerberos tool of this realm needs.
    pub fn env(&self) -> Vec<(String, OsString)> {
        vec![
            ("KRB5_CONFIG".into(), OsString::from(&self.krb5_conf)),
            ("KRB5_KDC_PROFILE".into(), OsString::from(&self.kdc_conf)),
        ]
    }

    /// The temp dir holding the realm (tests may put their files there too).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The keytab of `HTTP/localhost@SPARKGATE.TEST`.
    pub fn http_keytab(&self) -> PathBuf {
        self.dir.path().join("http.keytab")
    }

    /// Runs kadmin.local commands, fed on stdin so passwords never reach argv.
    fn kadmin_env(env: &[(String, OsString)], commands: &str) {
        let out = run("kadmin.local", &["-r", REALM], env, &format!("{commands}quit\n"));
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(!text.contains("while "), "kadmin.local: {text}");
    }

    /// Adds the service principal `name@SPARKGATE.TEST` with a random key and returns the path of
    /// a keytab holding it.
    pub fn service_keytab(&self, name: &str) -> PathBuf {
        let keytab = self.dir.path().join(format!("{}.keytab", name.replace(['/', '@'], "_")));
        Self::kadmin_env(&self.env(), &format!("addprinc -randkey {name}\nktadd -k {} {name}\n", keytab.display()));
        keytab
    }

    /// Adds `name@SPARKGATE.TEST` with a random password, which it returns.
    pub fn add_user(&self, name: &str) -> String {
        let password = random_secret();
        Self::kadmin_env(&self.env(), &format!("addprinc -pw {password} {name}\n"));
        password
    }

    /// `kinit principal` with `password` on stdin into a fresh `FILE:` ccache in the realm's
    /// dir; `Err(kinit's message)` when the KDC refuses.
    pub fn kinit(&self, principal: &str, password: &str) -> Result<PathBuf, String> {
        let ccache = self.dir.path().join(format!("cc-{}-{}", principal.replace(['/', '@'], "_"), random_secret()));
        let mut env = self.env();
        env.push(("KRB5CCNAME".into(), OsString::from(format!("FILE:{}", ccache.display()))));
        let out = run_status("kinit", &[principal], &env, &format!("{password}\n"));
        if out.status.success() {
            Ok(ccache)
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}
