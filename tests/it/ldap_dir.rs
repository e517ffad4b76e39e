//! A real OpenLDAP directory for tests: Debian's `slapd` (2.5) in a temp dir on two fresh
//! loopback ports, `ldaps://` and `ldap://` (plain, or upgraded with StartTLS), with a CA and a
//! server certificate for `127.0.0.1` and `localhost` generated at run time, an mdb database and
//! the `memberof` overlay, loaded with the users, groups and service account of [`USERS`],
//! [`GROUPS`] and [`SERVICE_PASSWORD`].
//!
//! It stays out of `/etc`: slapd gets its generated `slapd.conf` with `-f` — with the few schema
//! definitions the entries need written inline instead of included from `/etc/ldap/schema` —
//! and `LDAPNOINIT`, so the libldap inside it skips `/etc/ldap/ldap.conf`. The client tools run
//! with `HOME`, `LDAPCONF`, `LDAPRC` and `LDAPTLS_*` pointing into the temp dir ([`Directory::env`]);
//! libldap still opens `/etc/ldap/ldap.conf` first (only `LDAPNOINIT` would stop it, and that
//! also disables the variables), but everything the tools depend on is set again by those, which
//! win, and URL, bind DN and simple bind are always given on the command line. Nothing is written
//! outside the temp dir.
//!
//! Run as root (as here and in CI), slapd drops to `nobody` and its primary group with `-u`/`-g`:
//! the temp dir is then made traversable (0711) and its `slapd/` dir (configuration, server key,
//! database) handed to that user; otherwise slapd runs as the current user. It runs in the
//! foreground (`-d stats`: errors and one line per operation, into `slapd.log` in the temp dir)
//! and is killed when the `Directory` is dropped — or, through a lifeline pipe ([`LIFELINE`]),
//! when the test process ends without dropping it (a `Directory` in a `static`), so no slapd
//! outlives the tests (its temp dir then stays, as other statics' do). Needs the Debian packages
//! slapd and ldap-utils (`scripts/setup.sh`).

use rand::distributions::{Alphanumeric, DistString};
use std::ffi::OsString;
use std::fs::{OpenOptions, Permissions};
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::time::Duration;
use tokio::time::Instant;

/// The directory's suffix.
pub const BASE_DN: &str = "dc=sparkgate,dc=test";
/// The password of the service account ([`Directory::service_dn`]).
pub const SERVICE_PASSWORD: &str = "gateway-secret";
/// The users (uid, password), `inetOrgPerson`s under `ou=people`.
pub const USERS: [(&str, &str); 3] = [("alice", "alice-secret"), ("bob", "bob-secret"), ("carol", "carol-secret")];
/// The groups (cn, member uids), `groupOfNames` under `ou=groups`; carol is in none.
pub const GROUPS: [(&str, &[&str]); 2] = [("analysts", &["alice"]), ("ops", &["bob", "alice"])];

const SLAPD: &str = "/usr/sbin/slapd";
const SLAPPASSWD: &str = "/usr/sbin/slappasswd";
const MODULE_PATH: &str = "/usr/lib/ldap";
/// Runs `"$@"` (slapd) in place of the shell, after leaving behind a watcher that holds the
/// shell's stdin, a pipe whose write end only the test process has: when that closes — the
/// test process ended, even without dropping the `Directory` (one kept in a `static`, say, or
/// a test binary killed) — the watcher kills slapd, if slapd is still its parent (when slapd
/// dies the watcher is reparented, so a pid reused meanwhile is never killed). `$$` is the shell's pid, which
/// exec makes slapd's. (The parent-death signal would not do: slapd's setuid clears it.)
const LIFELINE: &str = r#"exec 3<&0 </dev/null
(
  while read -r _; do :; done <&3
  read -r _ _ _ parent _ </proc/self/stat
  if [ "$parent" = "$$" ]; then kill -KILL "$$"; fi
) &
exec "$@" 3<&-
"#;
/// How long slapd may take to answer on both ports after it is started.
const READY_WITHIN: Duration = Duration::from_secs(20);

/// A running (or [stopped](Directory::stop)) slapd with its data.
pub struct Directory {
    dir: tempfile::TempDir,
    /// `ldaps://127.0.0.1:PORT` (TLS from the first byte).
    pub ldaps_url: String,
    /// `ldap://127.0.0.1:PORT`: plain LDAP, StartTLS allowed (not required).
    pub ldap_url: String,
    /// The port of [`Directory::ldaps_url`].
    pub ldaps_port: u16,
    /// The port of [`Directory::ldap_url`].
    pub ldap_port: u16,
    /// The test CA that signed the server certificate (PEM).
    pub ca_pem: PathBuf,
    /// `dc=sparkgate,dc=test`.
    pub base_dn: String,
    /// `ou=people,dc=sparkgate,dc=test`: the users of [`USERS`].
    pub people_dn: String,
    /// `ou=groups,dc=sparkgate,dc=test`: the groups of [`GROUPS`].
    pub groups_dn: String,
    /// `cn=gateway,ou=services,dc=sparkgate,dc=test`, which may search people and groups.
    pub service_dn: String,
    /// A file (0600) holding only [`SERVICE_PASSWORD`], without a newline.
    pub service_password_file: PathBuf,
    /// The rootdn (`cn=admin,dc=sparkgate,dc=test`), which has no entry, and its random password.
    admin_dn: String,
    admin_password: String,
    /// The user slapd drops to when the tests run as root.
    run_as: Option<RunAs>,
    /// slapd (exec'd by the lifeline shell, so the same process).
    child: Option<Child>,
    /// The write end of slapd's lifeline (see [`LIFELINE`]).
    lifeline: Option<ChildStdin>,
}

/// An unprivileged user and group for slapd.
#[derive(Clone)]
struct RunAs {
    user: nix::unistd::User,
    group: nix::unistd::Group,
}

impl Drop for Directory {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `nobody` and its primary group when the tests run as root (slapd must not), else `None`.
fn unprivileged() -> Option<RunAs> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let user = nix::unistd::User::from_name("nobody")
        .unwrap_or_else(|e| panic!("cannot look up the user nobody for slapd: {e}"))
        .unwrap_or_else(|| panic!("there is no user nobody to run slapd as"));
    let group = nix::unistd::Group::from_gid(user.gid)
        .unwrap_or_else(|e| panic!("cannot look up nobody's group {}: {e}", user.gid))
        .unwrap_or_else(|| panic!("nobody's primary group {} does not exist", user.gid));
    Some(RunAs { user, group })
}

fn random_secret() -> String {
    Alphanumeric.sample_string(&mut rand::thread_rng(), 24)
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap_or_else(|| panic!("not a UTF-8 path: {}", path.display()))
}

/// Sets `path`'s mode and, when given, hands it to slapd's user.
fn own(path: &Path, mode: u32, owner: Option<&RunAs>) {
    std::fs::set_permissions(path, Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("cannot chmod {mode:o} {}: {e}", path.display()));
    if let Some(o) = owner {
        std::os::unix::fs::chown(path, Some(o.user.uid.as_raw()), Some(o.group.gid.as_raw()))
            .unwrap_or_else(|e| panic!("cannot give {} to {}: {e}", path.display(), o.user.name));
    }
}

/// Creates `path` (which must not exist) with exactly `mode`, holding `contents`, owned by
/// `owner` when given.
fn write_file(path: &Path, contents: &[u8], mode: u32, owner: Option<&RunAs>) {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
    file.write_all(contents).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    // The mode given to open() went through the umask.
    own(path, mode, owner);
}

/// Runs `f` with a fresh 0600 file in `dir` holding only `password` (what the tools' `-y` and
/// slappasswd's `-T` read), so passwords never reach argv; the file is removed afterwards.
fn with_password_file<T>(dir: &Path, password: &str, f: impl FnOnce(&Path) -> T) -> T {
    let path = dir.join(format!("password-{}", random_secret()));
    write_file(&path, password.as_bytes(), 0o600, None);
    let result = f(&path);
    let _ = std::fs::remove_file(&path);
    result
}

/// `{SSHA}` hash of `password`, by slappasswd (which also gets `LDAPNOINIT`).
fn ssha(dir: &Path, password: &str) -> String {
    with_password_file(dir, password, |file| {
        let out = Command::new(SLAPPASSWD)
            .args(["-n", "-h", "{SSHA}", "-T", path_str(file)])
            .env_clear()
            .env("LDAPNOINIT", "1")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {SLAPPASSWD} (run scripts/setup.sh): {e}"));
        let hash = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(
            out.status.success() && hash.starts_with("{SSHA}"),
            "slappasswd failed ({}): {hash} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        hash
    })
}

/// Two distinct ports that were free a moment ago on 127.0.0.1.
fn two_free_ports() -> (u16, u16) {
    loop {
        let (a, b) = (crate::cluster::free_port(), crate::cluster::free_port());
        if a != b {
            return (a, b);
        }
    }
}

fn listening(port: u16) -> bool {
    TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)), Duration::from_secs(1)).is_ok()
}

impl Directory {
    /// Generates the PKI and configuration in a fresh temp dir, starts slapd on two fresh ports,
    /// waits until both answer, and loads the entries (as the rootdn, with `ldapmodify -a`, i.e.
    /// ldapadd, over ldaps://). Takes about a tenth of a second (75–150 ms here). Panics, with slapd's log, if slapd does not
    /// start.
    pub fn start() -> Directory {
        let tmp = tempfile::Builder::new()
            .prefix("sparkgate-ldap-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir for slapd: {e}"));
        let d = tmp.path().to_path_buf();
        let run_as = unprivileged();
        let slapd_dir = d.join("slapd");
        let db_dir = slapd_dir.join("db");
        std::fs::create_dir_all(&db_dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", db_dir.display()));
        if run_as.is_some() {
            // slapd (as nobody) must reach slapd/ and ca.pem, but not list or read the rest.
            own(&d, 0o711, None);
        }
        own(&slapd_dir, 0o700, run_as.as_ref());
        own(&db_dir, 0o700, run_as.as_ref());

        let pki = sparkgate::tls::generate_pki("sparkgate test LDAP CA", &["127.0.0.1".into(), "localhost".into()])
            .unwrap_or_else(|e| panic!("cannot generate the test LDAP certificates: {e}"));
        let ca_pem = d.join("ca.pem");
        write_file(&ca_pem, pki.ca_pem.as_bytes(), 0o644, None);
        let (cert, key) = (slapd_dir.join("server.pem"), slapd_dir.join("server-key.pem"));
        write_file(&cert, pki.server.cert_pem.as_bytes(), 0o644, run_as.as_ref());
        write_file(&key, pki.server.key_pem.expose().as_bytes(), 0o600, run_as.as_ref());

        let service_password_file = d.join("service.password");
        write_file(&service_password_file, SERVICE_PASSWORD.as_bytes(), 0o600, None);
        let admin_dn = format!("cn=admin,{BASE_DN}");
        let admin_password = random_secret();
        let conf = slapd_conf(&ca_pem, &cert, &key, &db_dir, &admin_dn, &ssha(&d, &admin_password));
        write_file(&slapd_dir.join("slapd.conf"), conf.as_bytes(), 0o600, run_as.as_ref());
        let client_conf = format!(
            "# The test directory's client tools (LDAPCONF); the LDAPTLS_* variables they get say the same.\n\
             TLS_CACERT {}\nTLS_REQCERT demand\nNETWORK_TIMEOUT 10\nTIMEOUT 20\nREFERRALS off\n",
            ca_pem.display()
        );
        write_file(&d.join("ldap.conf"), client_conf.as_bytes(), 0o644, None);

        let mut directory = Directory {
            dir: tmp,
            ldaps_url: String::new(),
            ldap_url: String::new(),
            ldaps_port: 0,
            ldap_port: 0,
            ca_pem,
            base_dn: BASE_DN.to_string(),
            people_dn: format!("ou=people,{BASE_DN}"),
            groups_dn: format!("ou=groups,{BASE_DN}"),
            service_dn: format!("cn=gateway,ou=services,{BASE_DN}"),
            service_password_file,
            admin_dn,
            admin_password,
            run_as,
            child: None,
            lifeline: None,
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (ldaps_port, ldap_port) = two_free_ports();
            directory.ldaps_port = ldaps_port;
            directory.ldap_port = ldap_port;
            directory.ldaps_url = format!("ldaps://127.0.0.1:{ldaps_port}");
            directory.ldap_url = format!("ldap://127.0.0.1:{ldap_port}");
            match directory.launch() {
                Ok(()) => break,
                // Lost a race for a port: try other ones.
                Err(log) => assert!(attempt < 5, "slapd could not get free ports 5 times; its log:\n{log}"),
            }
        }
        let entries = directory.entries_ldif();
        directory.apply(&entries);
        directory
    }

    /// Kills slapd (SIGKILL, like a crash; mdb keeps every committed write), keeping its
    /// database, configuration and ports for [`Directory::restart`]. Does nothing if stopped.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The watcher sees the end of the lifeline, finds slapd gone, and exits.
        self.lifeline = None;
    }

    /// Starts slapd again, stopping it first if it runs, on the same ports with the same data,
    /// and waits until it answers. Panics, with slapd's log, if a port has been taken meanwhile
    /// or slapd does not start.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(log) = self.launch() {
            panic!("slapd could not get its ports {} and {} back; its log:\n{log}", self.ldaps_port, self.ldap_port);
        }
    }

    /// Whether slapd is running (not stopped and not exited).
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// slapd's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The temp dir holding the directory (tests may put their files there too).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What slapd has logged so far (every start appends).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("slapd.log")).unwrap_or_default()
    }

    /// `uid=UID,ou=people,dc=sparkgate,dc=test`.
    pub fn user_dn(&self, uid: &str) -> String {
        format!("uid={uid},{}", self.people_dn)
    }

    /// `cn=CN,ou=groups,dc=sparkgate,dc=test`.
    pub fn group_dn(&self, cn: &str) -> String {
        format!("cn={cn},{}", self.groups_dn)
    }

    /// The environment of this directory's client tools (plus `PATH`, which the tools add): its
    /// own `HOME`, `LDAPCONF` and `LDAPRC` (a name found in neither `HOME` nor the working
    /// directory, both the temp dir), and its CA, required.
    pub fn env(&self) -> Vec<(String, OsString)> {
        let d = self.dir.path();
        vec![
            ("HOME".into(), d.into()),
            ("LDAPCONF".into(), d.join("ldap.conf").into()),
            ("LDAPRC".into(), "ldaprc".into()),
            ("LDAPTLS_CACERT".into(), self.ca_pem.clone().into()),
            ("LDAPTLS_REQCERT".into(), "demand".into()),
        ]
    }

    /// Runs an ldap-utils tool in the temp dir with [`Directory::env`] only, feeding `stdin`.
    fn tool(&self, program: &str, args: &[&str], stdin: &str) -> Output {
        let mut child = Command::new(program)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(self.env())
            .current_dir(self.dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {program} (run scripts/setup.sh): {e}"));
        if let Some(mut input) = child.stdin.take() {
            // A tool that fails early may exit before reading: a broken pipe is its answer.
            let _ = input.write_all(stdin.as_bytes());
        }
        child.wait_with_output().unwrap_or_else(|e| panic!("waiting for {program}: {e}"))
    }

    /// `ldapwhoami` with a simple bind as `dn` on `url` (StartTLS required if `starttls`):
    /// `Ok` with the identity slapd reports (`dn:...`), or `Err` with the tool's message.
    pub fn whoami(&self, url: &str, starttls: bool, dn: &str, password: &str) -> Result<String, String> {
        with_password_file(self.dir.path(), password, |file| {
            let mut args = vec!["-x", "-H", url, "-D", dn, "-y", path_str(file)];
            if starttls {
                args.push("-ZZ");
            }
            let out = self.tool("ldapwhoami", &args, "");
            if out.status.success() {
                Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
            } else {
                Err(format!("{} ({})", String::from_utf8_lossy(&out.stderr).trim(), out.status))
            }
        })
    }

    /// `ldapsearch` over ldaps:// bound as `dn`, subtree under `base`: `Ok` with the entries as
    /// unwrapped LDIF (`-LLL`; empty when none is visible), or `Err` with the tool's message.
    pub fn search(&self, dn: &str, password: &str, base: &str, filter: &str, attrs: &[&str]) -> Result<String, String> {
        with_password_file(self.dir.path(), password, |file| {
            let mut args = vec!["-LLL", "-o", "ldif_wrap=no", "-x", "-H", &self.ldaps_url];
            args.extend(["-D", dn, "-y", path_str(file), "-b", base, filter]);
            args.extend(attrs);
            let out = self.tool("ldapsearch", &args, "");
            if out.status.success() {
                Ok(String::from_utf8_lossy(&out.stdout).into_owned())
            } else {
                Err(format!("{} ({})", String::from_utf8_lossy(&out.stderr).trim(), out.status))
            }
        })
    }

    /// Applies `ldif` as the rootdn with `ldapmodify -a` over ldaps://: entries without a
    /// `changetype` are added, others (modify, delete, modrdn) applied; for tests that change
    /// users or groups. Panics if slapd refuses any of it.
    pub fn apply(&self, ldif: &str) {
        let out = with_password_file(self.dir.path(), &self.admin_password, |file| {
            self.tool(
                "ldapmodify",
                &["-a", "-x", "-H", &self.ldaps_url, "-D", &self.admin_dn, "-y", path_str(file)],
                ldif,
            )
        });
        assert!(
            out.status.success(),
            "ldapmodify failed ({}): {}\n{}\nslapd's log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    /// The base, the three OUs, the service account, the users and then the groups (so that
    /// the memberof overlay finds the members and gives them `memberOf`).
    fn entries_ldif(&self) -> String {
        let d = self.dir.path();
        let mut ldif = format!(
            "dn: {BASE_DN}\nobjectClass: dcObject\nobjectClass: organization\ndc: sparkgate\no: sparkgate tests\n\n"
        );
        for ou in ["people", "groups", "services"] {
            ldif += &format!("dn: ou={ou},{BASE_DN}\nobjectClass: organizationalUnit\nou: {ou}\n\n");
        }
        ldif += &format!(
            "dn: {}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\ncn: gateway\n\
             description: the gateway's service account\nuserPassword: {}\n\n",
            self.service_dn,
            ssha(d, SERVICE_PASSWORD)
        );
        for (uid, password) in USERS {
            let name = format!("{}{}", uid[..1].to_uppercase(), &uid[1..]);
            ldif += &format!(
                "dn: {}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {name}\nsn: {name}\nmail: {uid}@sparkgate.test\n\
                 userPassword: {}\n\n",
                self.user_dn(uid),
                ssha(d, password)
            );
        }
        for (cn, members) in GROUPS {
            ldif += &format!("dn: {}\nobjectClass: groupOfNames\ncn: {cn}\n", self.group_dn(cn));
            for uid in members {
                ldif += &format!("member: {}\n", self.user_dn(uid));
            }
            ldif += "\n";
        }
        ldif
    }

    /// Starts slapd on the current ports and waits until each listener answers an anonymous
    /// `ldapwhoami` as this directory (over ldaps://, and with StartTLS on ldap://, both checked
    /// against its CA). `Err(log)` if slapd exited because a port was taken; any other failure
    /// panics with slapd's log.
    fn launch(&mut self) -> Result<(), String> {
        let d = self.dir.path();
        let log_path = d.join("slapd.log");
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", log_path.display()));
        // Where this start's part of the log begins.
        let since = log.metadata().map(|m| m.len()).unwrap_or(0) as usize;
        let _ = writeln!(log, "--- test harness: starting slapd on {} and {}", self.ldaps_url, self.ldap_url);
        let log_err = log.try_clone().unwrap_or_else(|e| panic!("cannot duplicate the slapd log's handle: {e}"));
        let conf = d.join("slapd").join("slapd.conf");
        let urls = format!("{}/ {}/", self.ldaps_url, self.ldap_url);
        assert!(Path::new(SLAPD).exists(), "{SLAPD} is missing: run scripts/setup.sh");
        let mut command = Command::new("/bin/sh");
        command.args(["-c", LIFELINE, "slapd-lifeline", SLAPD, "-d", "stats", "-f", path_str(&conf), "-h", &urls]);
        if let Some(run_as) = &self.run_as {
            command.args(["-u", &run_as.user.name, "-g", &run_as.group.name]);
        }
        let mut child = command
            .env_clear()
            .env("LDAPNOINIT", "1")
            .current_dir(d)
            .stdin(Stdio::piped())
            .stdout(log)
            .stderr(log_err)
            // Deliberately in the test's process group: Ctrl-C on `cargo test` stops slapd too.
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run /bin/sh for {SLAPD}: {e}"));
        self.lifeline = child.stdin.take();
        self.child = Some(child);
        let deadline = Instant::now() + READY_WITHIN;
        let mut last_error = String::from("not listening yet");
        loop {
            let exited = match self.child.as_mut().map(Child::try_wait) {
                Some(Ok(None)) => None,
                Some(Ok(Some(status))) => Some(status.to_string()),
                Some(Err(e)) => Some(format!("an unknown status ({e})")),
                None => Some("an unknown status".into()),
            };
            if let Some(status) = exited {
                self.stop();
                let log = self.log();
                let this_start = log.get(since..).unwrap_or(&log);
                if this_start.contains("bind(") && this_start.contains("Address already in use") {
                    return Err(log);
                }
                panic!("slapd exited with {status} before it was ready; its log:\n{log}");
            }
            if listening(self.ldaps_port) && listening(self.ldap_port) {
                let ldaps = self.tool("ldapwhoami", &["-x", "-H", &self.ldaps_url], "");
                let starttls = self.tool("ldapwhoami", &["-x", "-ZZ", "-H", &self.ldap_url], "");
                if ldaps.status.success() && starttls.status.success() {
                    return Ok(());
                }
                last_error = format!(
                    "ldaps: {}; StartTLS: {}",
                    String::from_utf8_lossy(&ldaps.stderr).trim(),
                    String::from_utf8_lossy(&starttls.stderr).trim()
                );
            }
            if Instant::now() > deadline {
                self.stop();
                panic!(
                    "slapd did not answer on {} and {} within {READY_WITHIN:?} ({last_error}); its log:\n{}",
                    self.ldaps_url,
                    self.ldap_url,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The slapd.conf of one directory. `rootpw` is a `{SSHA}` hash.
fn slapd_conf(ca: &Path, cert: &Path, key: &Path, db: &Path, rootdn: &str, rootpw: &str) -> String {
    let (ca, cert, key, db) = (ca.display(), cert.display(), key.display(), db.display());
    // The service account may search (read) everything but passwords; users may bind (the bind
    // is checked as anonymous) and read their own entry, memberOf included. The rootdn, used
    // only to load and change entries, is above ACLs.
    let service = format!("cn=gateway,ou=services,{BASE_DN}");
    format!(
        r#"# Generated by tests/it/ldap_dir.rs for one test directory.

# The schema its entries need, from OpenLDAP's core.schema and inetorgperson.schema (RFC 4519,
# 4524, 2798), MAY lists cut to what is defined here, so that nothing is read from
# /etc/ldap/schema. cn, uid, userPassword, name, description, seeAlso and distinguishedName are
# built into slapd; memberOf comes with the memberof overlay.
attributetype ( 2.5.4.4 NAME ( 'sn' 'surname' ) SUP name )
attributetype ( 2.5.4.10 NAME ( 'o' 'organizationName' ) SUP name )
attributetype ( 2.5.4.11 NAME ( 'ou' 'organizationalUnitName' ) SUP name )
attributetype ( 2.5.4.31 NAME 'member' SUP distinguishedName )
attributetype ( 0.9.2342.19200300.100.1.25 NAME ( 'dc' 'domainComponent' )
  EQUALITY caseIgnoreIA5Match SUBSTR caseIgnoreIA5SubstringsMatch
  SYNTAX 1.3.6.1.4.1.1466.115.121.1.26 SINGLE-VALUE )
attributetype ( 0.9.2342.19200300.100.1.3 NAME ( 'mail' 'rfc822Mailbox' )
  EQUALITY caseIgnoreIA5Match SUBSTR caseIgnoreIA5SubstringsMatch
  SYNTAX 1.3.6.1.4.1.1466.115.121.1.26{{256}} )
objectclass ( 2.5.6.4 NAME 'organization' SUP top STRUCTURAL
  MUST o MAY ( userPassword $ seeAlso $ description ) )
objectclass ( 2.5.6.5 NAME 'organizationalUnit' SUP top STRUCTURAL
  MUST ou MAY ( userPassword $ seeAlso $ description ) )
objectclass ( 2.5.6.6 NAME 'person' SUP top STRUCTURAL
  MUST ( sn $ cn ) MAY ( userPassword $ seeAlso $ description ) )
objectclass ( 2.5.6.7 NAME 'organizationalPerson' SUP person STRUCTURAL MAY ou )
objectclass ( 2.16.840.1.113730.3.2.2 NAME 'inetOrgPerson' SUP organizationalPerson STRUCTURAL
  MAY ( uid $ mail $ o ) )
objectclass ( 2.5.6.8 NAME 'organizationalRole' SUP top STRUCTURAL
  MUST cn MAY ( seeAlso $ ou $ description ) )
objectclass ( 2.5.6.9 NAME 'groupOfNames' SUP top STRUCTURAL
  MUST ( member $ cn ) MAY ( seeAlso $ ou $ o $ description ) )
objectclass ( 0.9.2342.19200300.100.4.19 NAME 'simpleSecurityObject' SUP top AUXILIARY
  MUST userPassword )
objectclass ( 1.3.6.1.4.1.1466.344 NAME 'dcObject' SUP top AUXILIARY MUST dc )

modulepath {MODULE_PATH}
moduleload back_mdb
moduleload memberof

threads 4
TLSCACertificateFile {ca}
TLSCertificateFile {cert}
TLSCertificateKeyFile {key}

database mdb
suffix "{BASE_DN}"
rootdn "{rootdn}"
rootpw {rootpw}
directory {db}
maxsize 16777216
# A killed slapd loses nothing (the page cache keeps it); only a machine crash would.
dbnosync
index objectClass eq
index uid eq
index member eq

access to attrs=userPassword
  by anonymous auth
  by * none
access to dn.base="" by * read
access to dn.base="cn=Subschema" by * read
access to dn.subtree="ou=people,{BASE_DN}"
  by self read
  by dn.exact="{service}" read
  by * none
access to dn.subtree="{BASE_DN}"
  by dn.exact="{service}" read
  by * none

# Members of a groupOfNames get its DN in memberOf (kept up to date when groups change).
overlay memberof
memberof-group-oc groupOfNames
memberof-member-ad member
memberof-memberof-ad memberOf
memberof-refint TRUE
"#
    )
}

/// The `attr: value` lines of `ldif` for `attr` (exact case), in order.
fn values<'a>(ldif: &'a str, attr: &str) -> Vec<&'a str> {
    let prefix = format!("{attr}: ");
    ldif.lines().filter_map(|l| l.strip_prefix(prefix.as_str())).collect()
}

/// A TLS handshake with the ldaps:// port as `name`, trusting only the test CA, with rustls (as
/// the gateway connects); `Err` with rustls' reason.
fn rustls_handshake(dir: &Directory, name: &str) -> Result<(), String> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(&dir.ca_pem).unwrap();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let server_name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    let mut tls = rustls::ClientConnection::new(std::sync::Arc::new(config), server_name).unwrap();
    let mut tcp = TcpStream::connect((Ipv4Addr::LOCALHOST, dir.ldaps_port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    while tls.is_handshaking() {
        tls.complete_io(&mut tcp).map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[test]
fn users_bind_over_ldaps_with_their_password_only() {
    let started = Instant::now();
    let dir = Directory::start();
    eprintln!("ldap_dir: the directory started in {:?}", started.elapsed());
    for (uid, password) in USERS {
        let dn = dir.user_dn(uid);
        assert_eq!(dir.whoami(&dir.ldaps_url, false, &dn, password), Ok(format!("dn:{dn}")));
        let wrong = dir.whoami(&dir.ldaps_url, false, &dn, "not-the-password");
        assert!(wrong.as_ref().is_err_and(|e| e.contains("Invalid credentials (49)")), "{wrong:?}");
    }
    // Another user's password, an unknown user and an empty password (an unauthenticated
    // bind, which slapd refuses) do not work either.
    let alice = dir.user_dn("alice");
    assert!(dir.whoami(&dir.ldaps_url, false, &alice, "bob-secret").is_err());
    assert!(dir.whoami(&dir.ldaps_url, false, &dir.user_dn("mallory"), "alice-secret").is_err());
    assert!(dir.whoami(&dir.ldaps_url, false, &alice, "").is_err());
    // The certificate is valid for both names (checked with rustls, the gateway's TLS: libldap
    // checks a `localhost` URL against the machine's hostname instead), and only for them.
    assert_eq!(rustls_handshake(&dir, "127.0.0.1"), Ok(()));
    assert_eq!(rustls_handshake(&dir, "localhost"), Ok(()));
    let elsewhere = rustls_handshake(&dir, "ldap.example.com");
    assert!(elsewhere.as_ref().is_err_and(|e| e.contains("not valid for name")), "{elsewhere:?}");
    // The service account binds with the password in its file.
    let service_password = std::fs::read_to_string(&dir.service_password_file).unwrap();
    assert_eq!(service_password, SERVICE_PASSWORD);
    let mode = std::fs::metadata(&dir.service_password_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        dir.whoami(&dir.ldaps_url, false, &dir.service_dn, &service_password),
        Ok(format!("dn:{}", dir.service_dn))
    );
}

#[test]
fn the_plain_port_speaks_starttls_and_plain_ldap() {
    let dir = Directory::start();
    let bob = dir.user_dn("bob");
    assert_eq!(dir.whoami(&dir.ldap_url, true, &bob, "bob-secret"), Ok(format!("dn:{bob}")));
    let wrong = dir.whoami(&dir.ldap_url, true, &bob, "alice-secret");
    assert!(wrong.as_ref().is_err_and(|e| e.contains("Invalid credentials (49)")), "{wrong:?}");
    // Without StartTLS (allowed, for tests of what the gateway does with plain LDAP).
    assert_eq!(dir.whoami(&dir.ldap_url, false, &bob, "bob-secret"), Ok(format!("dn:{bob}")));
    // Each port speaks only its own protocol.
    assert!(dir.whoami(&dir.ldaps_url, true, &bob, "bob-secret").is_err());
    assert!(dir.whoami(&dir.ldap_url.replace("ldap:", "ldaps:"), false, &bob, "bob-secret").is_err());
}

#[test]
fn the_service_account_finds_users_and_their_groups() {
    let dir = Directory::start();
    let (analysts, ops) = (dir.group_dn("analysts"), dir.group_dn("ops"));
    let search = |filter: &str, base: &str| {
        dir.search(&dir.service_dn, SERVICE_PASSWORD, base, filter, &["uid", "cn", "memberOf"])
            .unwrap_or_else(|e| panic!("search {filter}: {e}"))
    };
    let alice = search("(uid=alice)", &dir.people_dn);
    assert_eq!(values(&alice, "dn"), [dir.user_dn("alice")]);
    assert_eq!(values(&alice, "uid"), ["alice"]);
    assert_eq!(values(&alice, "cn"), ["Alice"]);
    let mut groups = values(&alice, "memberOf");
    groups.sort_unstable();
    assert_eq!(groups, [analysts.as_str(), ops.as_str()]);
    assert_eq!(values(&search("(uid=bob)", &dir.people_dn), "memberOf"), [ops.as_str()]);
    assert!(values(&search("(uid=carol)", &dir.people_dn), "memberOf").is_empty());
    assert_eq!(values(&search("(objectClass=inetOrgPerson)", &dir.base_dn), "dn").len(), 3);
    // Groups by member, as a gateway without memberOf would look them up.
    let filter = format!("(&(objectClass=groupOfNames)(member={}))", dir.user_dn("alice"));
    let mut by_member =
        values(&search(&filter, &dir.groups_dn), "dn").into_iter().map(str::to_owned).collect::<Vec<_>>();
    by_member.sort_unstable();
    assert_eq!(by_member, [analysts.clone(), ops.clone()]);
    // Nobody reads a password hash.
    let hashes = dir.search(&dir.service_dn, SERVICE_PASSWORD, &dir.base_dn, "(objectClass=*)", &["userPassword"]);
    assert!(!hashes.unwrap().contains("userPassword"));

    // A user reads her own entry, memberOf included, but not another's; anonymous reads none.
    let own =
        dir.search(&dir.user_dn("alice"), "alice-secret", &dir.user_dn("alice"), "(objectClass=*)", &["memberOf"]);
    assert_eq!(values(&own.unwrap(), "memberOf").len(), 2);
    let other = dir.search(&dir.user_dn("alice"), "alice-secret", &dir.user_dn("bob"), "(objectClass=*)", &[]);
    assert!(other.as_ref().is_err_and(|e| e.contains("No such object (32)")), "{other:?}");
    let anonymous = dir.tool("ldapsearch", &["-LLL", "-x", "-H", &dir.ldaps_url, "-b", &dir.people_dn, "(uid=*)"], "");
    assert!(!String::from_utf8_lossy(&anonymous.stdout).contains("uid="), "anonymous saw people");

    // Group changes show in memberOf at once.
    dir.apply(&format!("dn: {ops}\nchangetype: modify\nadd: member\nmember: {}\n", dir.user_dn("carol")));
    assert_eq!(values(&search("(uid=carol)", &dir.people_dn), "memberOf"), [ops.as_str()]);
}

#[test]
fn a_stopped_directory_refuses_binds_until_it_restarts() {
    let mut dir = Directory::start();
    let (alice, url) = (dir.user_dn("alice"), dir.ldaps_url.clone());
    assert!(dir.whoami(&url, false, &alice, "alice-secret").is_ok());
    dir.stop();
    assert!(!dir.is_running());
    let down = dir.whoami(&url, false, &alice, "alice-secret");
    assert!(down.as_ref().is_err_and(|e| e.contains("Can't contact LDAP server")), "{down:?}");
    dir.stop(); // stopping twice is harmless
    let started = Instant::now();
    dir.restart();
    eprintln!("ldap_dir: the directory restarted in {:?}", started.elapsed());
    assert!(dir.is_running());
    assert_eq!(dir.ldaps_url, url, "restart kept the ports");
    // Started by root, slapd runs as nobody (real, effective, saved and filesystem uid).
    if let Some(run_as) = unprivileged() {
        let pid = dir.pid().unwrap();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let uids = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap();
        let nobody = run_as.user.uid.to_string();
        assert!(uids.split_whitespace().all(|u| u == nobody), "slapd's uids: {uids}");
    }
    assert_eq!(dir.whoami(&url, false, &alice, "alice-secret"), Ok(format!("dn:{alice}")));
    assert_eq!(dir.whoami(&dir.ldap_url, true, &alice, "alice-secret"), Ok(format!("dn:{alice}")));
    // The data survived (memberOf too), and a restart while running works as well.
    dir.restart();
    let found = dir.search(&dir.service_dn, SERVICE_PASSWORD, &dir.people_dn, "(uid=alice)", &["memberOf"]);
    assert_eq!(values(&found.unwrap(), "memberOf").len(), 2);
    assert_eq!(dir.log().matches("--- test harness: starting slapd").count(), 3);
}

#[test]
fn slapd_does_not_outlive_the_test_process() {
    let mut dir = Directory::start();
    let pid = dir.pid().unwrap();
    // What the end of the test process does to the lifeline, without the Drop that stop() is.
    dir.lifeline = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while dir.is_running() {
        assert!(Instant::now() < deadline, "slapd ({pid}) still runs without its lifeline");
        std::thread::sleep(Duration::from_millis(10));
    }
    let down = dir.whoami(&dir.ldaps_url, false, &dir.user_dn("alice"), "alice-secret");
    assert!(down.is_err(), "{down:?}");
    // The directory restarts as after stop().
    dir.restart();
    assert!(dir.whoami(&dir.ldaps_url, false, &dir.user_dn("alice"), "alice-secret").is_ok());
}
