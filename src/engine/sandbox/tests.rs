use super::*;
use crate::engine::launch::{self, LogBuffer};
use std::sync::Arc;

/// A fake system root: merged-/usr links, a few /etc files, and the secrets that must stay out.
fn fake_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    for dir in ["usr/bin", "usr/lib", "etc/ssl/certs", "etc/ssl/private", "etc/java-17-openjdk", "etc/security/keytabs"]
    {
        std::fs::create_dir_all(r.join(dir)).unwrap();
    }
    std::os::unix::fs::symlink("usr/bin", r.join("bin")).unwrap();
    std::os::unix::fs::symlink("usr/lib", r.join("lib")).unwrap();
    for file in ["etc/passwd", "etc/shadow", "etc/krb5.conf", "etc/krb5.keytab", "etc/resolv.conf"] {
        std::fs::write(r.join(file), "x").unwrap();
    }
    root
}

fn strings(args: &[OsString]) -> Vec<String> {
    args.iter().map(|a| a.to_str().unwrap().to_string()).collect()
}

#[test]
fn only_listed_system_files_are_shown() {
    let root = fake_root();
    let sandbox = Sandbox::from_parts("/usr/bin/bwrap".into(), "/usr/bin/setsid".into(), root.path(), Vec::new());
    let shown: Vec<&Path> = sandbox.read_only_paths().collect();
    for path in ["/usr", "/etc/passwd", "/etc/resolv.conf", "/etc/krb5.conf", "/etc/ssl/certs", "/etc/java-17-openjdk"]
    {
        assert!(shown.contains(&Path::new(path)), "{path} missing from {shown:?}");
    }
    for path in ["/etc/shadow", "/etc/ssl/private", "/etc/krb5.keytab", "/etc/security/keytabs", "/etc", "/etc/ssl"] {
        assert!(!shown.iter().any(|s| *s == Path::new(path)), "{path} must stay hidden: {shown:?}");
    }
    assert_eq!(
        sandbox.links,
        vec![(PathBuf::from("/bin"), PathBuf::from("usr/bin")), (PathBuf::from("/lib"), PathBuf::from("usr/lib"))]
    );
}

#[test]
fn paths_inside_another_and_duplicates_are_shown_once() {
    let root = tempfile::tempdir().unwrap();
    let shown = vec![
        (PathBuf::from("/nonexistent-sg/venv/lib/pyspark"), "the Spark home"),
        (PathBuf::from("/nonexistent-sg/venv"), "the Python installation"),
        (PathBuf::from("/nonexistent-sg/venv"), "the Python installation"),
        (PathBuf::from("/nonexistent-sg/jobs"), "spark.allowed_local_dirs"),
    ];
    let sandbox = Sandbox::from_parts("bwrap".into(), "setsid".into(), root.path(), shown);
    let paths: Vec<&Path> = sandbox.read_only_paths().collect();
    assert_eq!(paths, [Path::new("/nonexistent-sg/venv"), Path::new("/nonexistent-sg/jobs")]);
    // A path reached through a symbolic link is shown at both paths: the one configured (which
    // the launch's environment names) and the real one (which the venv's files name).
    let real = root.path().join("real-venv");
    std::fs::create_dir_all(&real).unwrap();
    let link = root.path().join("venv");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let sandbox = Sandbox::from_parts(
        "bwrap".into(),
        "setsid".into(),
        root.path(),
        vec![(link.clone(), "the Python installation")],
    );
    let paths: Vec<&Path> = sandbox.read_only_paths().collect();
    assert!(paths.contains(&link.as_path()) && paths.contains(&real.canonicalize().unwrap().as_path()), "{paths:?}");
}

#[test]
fn a_read_only_path_that_holds_the_gateways_files_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let private =
        vec![("server.data_dir", PathBuf::from("/srv/sg/data")), ("tls.key", PathBuf::from("/srv/tls/k.pem"))];
    let wide = Sandbox::from_parts(
        "bwrap".into(),
        "setsid".into(),
        root.path(),
        vec![("/srv".into(), "spark.allowed_local_dirs")],
    );
    let err = wide.refuse_exposure(&private).unwrap_err().to_string();
    assert!(err.contains("spark.allowed_local_dirs") && err.contains("server.data_dir"), "{err}");
    let tls = Sandbox::from_parts(
        "bwrap".into(),
        "setsid".into(),
        root.path(),
        vec![("/srv/tls".into(), "spark.sandbox_read_only_paths")],
    );
    let err = tls.refuse_exposure(&private).unwrap_err().to_string();
    assert!(err.contains("tls.key"), "{err}");
    let inside = Sandbox::from_parts(
        "bwrap".into(),
        "setsid".into(),
        root.path(),
        vec![("/srv/sg/data/sessions".into(), "spark.allowed_local_dirs")],
    );
    let err = inside.refuse_exposure(&private).unwrap_err().to_string();
    assert!(err.contains("server.data_dir"), "a part of the data directory shows every session: {err}");
    let narrow = Sandbox::from_parts(
        "bwrap".into(),
        "setsid".into(),
        root.path(),
        vec![("/srv/sg/jobs".into(), "spark.allowed_local_dirs")],
    );
    assert!(narrow.refuse_exposure(&private).is_ok());
}

#[test]
fn the_argument_vector_confines_a_launch_to_its_own_directory() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("usr")).unwrap();
    std::os::unix::fs::symlink("usr/bin", root.path().join("bin")).unwrap();
    std::fs::create_dir_all(root.path().join("etc")).unwrap();
    std::fs::write(root.path().join("etc/passwd"), "x").unwrap();
    let sandbox = Sandbox::from_parts(
        "/usr/bin/bwrap".into(),
        "/usr/bin/setsid".into(),
        root.path(),
        vec![
            ("/nonexistent-sg/spark".into(), "the Spark home"),
            ("/nonexistent-sg/jobs".into(), "spark.allowed_local_dirs"),
        ],
    );
    let c = Confinement {
        dir: "/data/sessions/3".into(),
        work: "/data/sessions/3/work".into(),
        writable: vec!["/data/sessions/3/repl-classes".into()],
        read_only: vec!["/etc/sg/launch.keytab".into()],
    };
    let vars = BTreeMap::from([("KRB5CCNAME".to_string(), "FILE:/data/krb5cc_launch".to_string())]);
    let argv = strings(&sandbox.argv(&c, &vars));
    assert_eq!(sandbox.program(), Path::new("/usr/bin/setsid"));
    let expected: Vec<&str> = vec![
        "/usr/bin/bwrap",
        "--unshare-user",
        "--unshare-pid",
        "--unshare-ipc",
        "--cap-drop",
        "ALL",
        "--size",
        "536870912",
        "--tmpfs",
        "/tmp",
        "--dev",
        "/dev",
        "--size",
        "268435456",
        "--tmpfs",
        "/dev/shm",
        "--proc",
        "/proc",
        "--symlink",
        "usr/bin",
        "/bin",
        "--ro-bind-try",
        "/usr",
        "/usr",
        "--ro-bind-try",
        "/etc/passwd",
        "/etc/passwd",
        "--ro-bind-try",
        "/nonexistent-sg/spark",
        "/nonexistent-sg/spark",
        "--ro-bind-try",
        "/nonexistent-sg/jobs",
        "/nonexistent-sg/jobs",
        "--ro-bind",
        "/data/sessions/3",
        "/data/sessions/3",
        "--bind",
        "/data/sessions/3/work",
        "/data/sessions/3/work",
        "--bind",
        "/data/sessions/3/repl-classes",
        "/data/sessions/3/repl-classes",
        "--ro-bind-try",
        "/etc/sg/launch.keytab",
        "/etc/sg/launch.keytab",
        "--ro-bind-try",
        "/data/krb5cc_launch",
        "/data/krb5cc_launch",
        "--remount-ro",
        "/dev",
        "--remount-ro",
        "/",
        "--chdir",
        "/data/sessions/3/work",
        "--",
    ];
    assert_eq!(argv, expected);
    // What must never be there: the network stays shared (drivers dial the gateway), and a
    // driver outlives a gateway crash so that it can be reconnected.
    assert!(!argv.iter().any(|a| a == "--unshare-net" || a == "--die-with-parent" || a == "--share-net"));
    let env = Sandbox::environment(&c);
    assert!(env.iter().all(|(_, v)| v == "/data/sessions/3/work"), "{env:?}");
    assert_eq!(env.map(|(k, _)| k), ["HOME", "TMPDIR", "SPARK_LOCAL_DIRS"]);
    // Ivy's cache follows HOME into work/, unless someone chose another.
    let mut spec = LaunchSpec::default();
    Sandbox::add_launch_conf(&c, &crate::config::SparkConfig::default(), &mut spec);
    assert_eq!(spec.cluster_conf["spark.jars.ivy"], "/data/sessions/3/work/.ivy2");
    let mut spec = LaunchSpec {
        submit: crate::engine::SubmitSpec {
            conf: [("spark.jars.ivy".into(), "/x".into())].into(),
            ..Default::default()
        },
        ..LaunchSpec::default()
    };
    Sandbox::add_launch_conf(&c, &crate::config::SparkConfig::default(), &mut spec);
    assert!(spec.cluster_conf.is_empty());
}

#[test]
fn credential_caches_are_shown_only_when_they_are_files() {
    assert_eq!(ccache_path("FILE:/data/krb5cc_launch"), Some("/data/krb5cc_launch".into()));
    assert_eq!(ccache_path("/tmp/krb5cc_0"), Some("/tmp/krb5cc_0".into()));
    assert_eq!(ccache_path("DIR::/run/user/0/krb5cc/tkt"), Some("/run/user/0/krb5cc/tkt".into()));
    assert_eq!(ccache_path("KEYRING:persistent:0"), None);
    assert_eq!(ccache_path("FILE:relative"), None);
}

#[test]
fn the_launch_keytab_is_shown_only_to_launches_that_log_in_with_it() {
    let config = crate::config::SparkConfig {
        launch_principal: Some("sparkgate/gw@EXAMPLE.COM".into()),
        launch_keytab: Some("/etc/security/keytabs/sparkgate.keytab".into()),
        ..crate::config::SparkConfig::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let own = Confinement::new(dir.path()).unwrap().with_launch_keytab(&config, &LaunchSpec::default());
    assert_eq!(own.read_only, [PathBuf::from("/etc/security/keytabs/sparkgate.keytab")]);
    let proxied = LaunchSpec {
        submit: crate::engine::SubmitSpec { proxy_user: Some("alice".into()), ..Default::default() },
        ..LaunchSpec::default()
    };
    let theirs = Confinement::new(dir.path()).unwrap().with_launch_keytab(&config, &proxied);
    assert!(theirs.read_only.is_empty(), "alice's code gets the ticket cache, never the keytab");
    assert_eq!(theirs.work, dir.path().canonicalize().unwrap().join("work"));
    assert!(theirs.work.is_dir());
}

fn bwrap() -> PathBuf {
    find_on_path("bwrap", &std::env::var("PATH").unwrap_or_default())
        .expect("bubblewrap is needed for the sandbox tests (scripts/setup.sh installs the Debian package)")
}

/// A fake spark-submit (a shell script in a Spark home the sandbox shows): it tries the
/// gateway's files, writes where it may, starts children (one in a session of its own, as
/// PySpark's daemon leaves the group), then waits. `exit N` as the third argument exits at once.
const FAKE_SPARK_SUBMIT: &str = r#"#!/bin/sh
dir=$1; data=$2
[ "$3" = exit ] && exit "$4"
cat "$data/secret.key" 2>/dev/null && echo LEAKED-SECRET
cat "$data/sessions/2/uploads/other.txt" 2>/dev/null && echo LEAKED-UPLOAD
echo forged > "$data/secret.key" 2>/dev/null
echo forged >> "$dir/session.log" 2>/dev/null && echo WROTE-OWN-LOG
ln -s "$data/secret.key" "$dir/batch.log" 2>/dev/null && echo LINKED
echo ok > out.txt
echo "HOME=$HOME PWD=$PWD TMPDIR=$TMPDIR PIDS=$(ls /proc | grep -c '^[0-9]')"
sleep 300 &
setsid sleep 301 &
echo READY
wait
"#;

#[tokio::test]
async fn a_sandboxed_launch_changes_only_its_own_work_directory_and_dies_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let own = data.join("sessions/1");
    std::fs::create_dir_all(data.join("sessions/2/uploads")).unwrap();
    std::fs::create_dir_all(&own).unwrap();
    std::fs::write(data.join("secret.key"), "the gateway's key").unwrap();
    std::fs::write(data.join("sessions/2/uploads/other.txt"), "another session's upload").unwrap();
    std::fs::write(own.join("session.log"), "written by the gateway\n").unwrap();
    let home = tmp.path().join("spark");
    std::fs::create_dir_all(home.join("bin")).unwrap();
    let submit = home.join("bin/spark-submit");
    std::fs::write(&submit, FAKE_SPARK_SUBMIT).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&submit, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut env = launch::SparkEnv::for_test(&home, &submit);
    let setsid = find_on_path("setsid", &std::env::var("PATH").unwrap_or_default()).unwrap();
    env.sandbox = Some(Sandbox::from_parts(bwrap(), setsid, Path::new("/"), vec![(home.clone(), "the Spark home")]));
    let confinement = Confinement::new(&own).unwrap();
    let args = |extra: &[&str]| -> Vec<OsString> {
        [own.canonicalize().unwrap().into_os_string(), data.canonicalize().unwrap().into_os_string()]
            .into_iter()
            .chain(extra.iter().map(OsString::from))
            .collect()
    };
    let ignore: Arc<dyn Fn(&str) + Send + Sync> = Arc::new(|_: &str| {});

    // The exit status of what runs inside is the launch's (batches succeed or die by it).
    let log = LogBuffer::new(100, None);
    let handle =
        launch::spawn(&env, &[], args(&["exit", "7"]), BTreeMap::new(), &confinement, log.clone(), ignore.clone())
            .unwrap();
    assert_eq!(handle.wait().await, 7, "{:?}", log.snapshot());

    let log = LogBuffer::new(100, None);
    let handle = launch::spawn(&env, &[], args(&[]), BTreeMap::new(), &confinement, log.clone(), ignore).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !log.snapshot().iter().any(|l| l == "READY") {
        assert!(tokio::time::Instant::now() < deadline, "never ready: {:?}", log.snapshot());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lines = log.snapshot();
    assert!(!lines.iter().any(|l| l.starts_with("LEAKED") || l == "WROTE-OWN-LOG" || l == "LINKED"), "{lines:?}");
    assert_eq!(std::fs::read_to_string(data.join("secret.key")).unwrap(), "the gateway's key");
    assert_eq!(std::fs::read_to_string(own.join("session.log")).unwrap(), "written by the gateway\n");
    assert!(std::fs::symlink_metadata(own.join("batch.log")).is_err(), "no link planted in the gateway's directory");
    assert_eq!(std::fs::read_to_string(confinement.work.join("out.txt")).unwrap(), "ok\n");
    let work = confinement.work.display().to_string();
    let info = lines.iter().find(|l| l.starts_with("HOME=")).unwrap();
    assert!(info.starts_with(&format!("HOME={work} PWD={work} TMPDIR={work} PIDS=")), "{info}");
    let pids: usize = info.rsplit('=').next().unwrap().parse().unwrap();
    assert!(pids <= 6, "the sandbox sees its own processes only: {info}");

    // One group: bwrap, the namespace's init, the script and its first sleep; the sleep that
    // left for a session of its own is found through its parent. None survives the kill.
    let group = group_members(handle.pgid);
    assert!(group.len() >= 4, "bwrap, init, the script and a sleep: {group:?}");
    let escaped = launch::descendants_of_group(handle.pgid);
    assert_eq!(escaped.len(), 1, "the setsid sleep: {escaped:?}");
    handle.kill_group(Duration::from_secs(2)).await;
    handle.wait().await;
    assert!(!launch::group_alive(handle.pgid));
    let alive: Vec<String> = group.iter().chain(&escaped).filter_map(|p| live_stat(*p)).collect();
    assert!(alive.is_empty(), "left behind: {alive:?} (group {})", handle.pgid);
}

/// Live (not zombie) processes of group `pgid`: (pid, stat line).
fn group_members(pgid: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            live_stat(*pid).is_some_and(|stat| {
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(2).map(|g| g == pgid.to_string()))
                    == Some(true)
            })
        })
        .collect()
}

/// The stat line of `pid` while it lives (a zombie is dead: the container's init may be slow
/// to reap orphans).
fn live_stat(pid: i32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat.rsplit_once(')')?.1.split_whitespace().next()?.to_string();
    (state != "Z" && state != "X").then_some(stat)
}

#[test]
fn the_launch_keytab_is_among_the_files_no_read_only_path_may_show() {
    // Else `allowed_local_dirs` holding it would let every sandbox read it, and `files` ship it.
    let mut config = crate::config::Config::default();
    config.spark.launch_keytab = Some("/etc/security/keytabs/sparkgate.keytab".into());
    let private = private_paths(&config);
    assert!(private.contains(&("spark.launch_keytab", PathBuf::from("/etc/security/keytabs/sparkgate.keytab"))));
}
