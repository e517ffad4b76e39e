use super::*;

/// The guard for drivers on this host, with the built-in remote schemes.
fn guard(allowed: &[PathBuf]) -> Guard<'_> {
    Guard { allowed, extra_remote_schemes: &[], place: DriverPlace::Gateway }
}

fn check(field: &str, value: &str, allowed: &[PathBuf]) -> Result<(), String> {
    guard(allowed).check(field, value)
}

fn check_in(field: &str, value: &str, allowed: &[PathBuf], place: DriverPlace) -> Result<(), String> {
    Guard { place, ..guard(allowed) }.check(field, value)
}

fn check_all(field: &str, values: &[String], allowed: &[PathBuf]) -> Result<(), String> {
    guard(allowed).check_all(field, values)
}

/// An allowed directory holding `job.py`; returns it with the file's path.
fn jobs_dir() -> (tempfile::TempDir, Vec<PathBuf>, String) {
    let dir = tempfile::tempdir().unwrap();
    let inside = dir.path().join("job.py");
    std::fs::write(&inside, "print(1)").unwrap();
    let allowed = vec![dir.path().to_path_buf()];
    (dir, allowed, inside.display().to_string())
}

#[test]
fn remote_uris_pass_and_local_paths_need_an_allowed_dir() {
    let (dir, allowed, inside) = jobs_dir();
    for ok in ["hdfs:///user/a/job.py", "s3a://b/x.jar", "https://repo/x.jar"] {
        assert!(check("file", ok, &[]).is_ok(), "{ok}");
    }
    assert!(check("file", &inside, &allowed).is_ok());
    assert!(check("jars", &format!("file://{inside}"), &allowed).is_ok());
    assert!(check("jars", &format!("local:{inside}"), &allowed).is_ok());
    for bad in ["/etc/krb5.keytab", "file:///etc/shadow", "local:/root/.ssh/id_rsa", "job.py", "./x.py"] {
        let err = check("pyFiles", bad, &allowed).unwrap_err();
        assert!(err.contains("pyFiles") && !err.contains(bad), "the value is never echoed: {err}");
    }
    let dotdot = format!("{}/../../etc/passwd", dir.path().display());
    assert!(check("files", &dotdot, &allowed).unwrap_err().contains(".."));
    assert!(check("files", &inside, &[]).is_err(), "nothing allowed by default");
}

#[test]
fn symlinks_cannot_escape() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("innocent.jar");
    std::os::unix::fs::symlink("/etc/hostname", &link).unwrap();
    let err = check("jars", link.to_str().unwrap(), &[dir.path().to_path_buf()]).unwrap_err();
    assert!(err.contains("symbolic link"), "{err}");
}

#[test]
fn lists_name_the_offending_entry() {
    let err = check_all("archives", &["hdfs:///a.zip".into(), "/secret.zip".into()], &[]).unwrap_err();
    assert!(err.contains("`archives[1]`") && !err.contains("/secret.zip"), "{err}");
}

#[test]
fn a_comma_cannot_smuggle_a_second_entry() {
    // spark-submit splits the joined list again: each of these would ship a second file.
    let (dir, allowed, inside) = jobs_dir();
    let missing = format!("{}/a,/etc/shadow", dir.path().display());
    for bad in ["hdfs:///x,/etc/security/keytabs/spnego.keytab", &missing, &format!("{inside},{inside}")] {
        let err = check("jars", bad, &allowed).unwrap_err();
        assert!(err.contains("`jars`") && !err.contains(bad) && err.contains("comma"), "{err}");
    }
    let err = check_all("files", &["hdfs:///a.txt".into(), "s3a://b/c,/etc/passwd".into()], &allowed).unwrap_err();
    assert!(err.contains("`files[1]`") && err.contains("comma"), "{err}");
    assert!(check_all("files", &["hdfs:///a.txt".into(), inside], &allowed).is_ok(), "separate entries pass");
}

#[test]
fn whitespace_and_control_characters_are_refused_in_any_entry() {
    let (_dir, allowed, inside) = jobs_dir();
    for bad in [
        format!("{inside} /etc/shadow"),
        format!("{inside}\n"),
        format!("\t{inside}"),
        "hdfs:///a b.jar".to_string(),
        "hdfs:///a.jar\u{0}".to_string(),
        "https://repo/x.jar\u{1b}[2J".to_string(),
    ] {
        let err = check("pyFiles", &bad, &allowed).unwrap_err();
        assert!(err.contains("`pyFiles`") && err.contains("whitespace or a control character"), "{err}");
        assert!(!err.contains(['\n', '\t', '\0', '\u{1b}']), "shown escaped: {err:?}");
    }
    let err = check("uri", "hdfs:///a\nb", &[]).unwrap_err();
    assert!(err.starts_with("field `uri`") && !err.contains("hdfs"), "the field is named, not the value: {err}");
    assert!(check("file", "  ", &allowed).unwrap_err().contains("empty"));
}

#[test]
fn local_paths_that_do_not_exist_are_refused() {
    // Without the file, the symbolic-link check cannot run.
    let (dir, allowed, _inside) = jobs_dir();
    let missing = dir.path().join("missing.py").display().to_string();
    for bad in [missing.clone(), format!("file://{missing}"), format!("FILE:{missing}")] {
        let err = check("file", &bad, &allowed).unwrap_err();
        assert!(err.contains("`file`") && !err.contains(&bad) && err.contains("does not exist"), "{err}");
    }
    // With drivers in the cluster, `local:` names a file on every node (a container image),
    // never read from this host: it need not exist here, but must still be under an allowed
    // directory. With drivers here (client mode) it is read here, so it must exist.
    let local = format!("local:{missing}");
    assert!(check("file", &local, &allowed).unwrap_err().contains("does not exist"));
    assert!(check_in("file", &local, &allowed, DriverPlace::Cluster).is_ok());
    assert!(check_in("file", "local:///opt/spark/work-dir/job.py", &allowed, DriverPlace::Cluster).is_err());
    let dangling_local = format!("local:{}", dir.path().join("later.jar").display());
    std::os::unix::fs::symlink("/etc/hostname-not-yet", dir.path().join("later.jar")).unwrap();
    assert!(check_in("jars", &dangling_local, &allowed, DriverPlace::Cluster).is_err(), "a dangling link");
    // Outside the allowed directories the answer does not reveal whether the file exists.
    let err = check("file", "/no/such/file.py", &allowed).unwrap_err();
    assert!(err.contains("allowed_local_dirs") && !err.contains("exist"), "{err}");
    let dangling = dir.path().join("dangling.jar");
    std::os::unix::fs::symlink(dir.path().join("gone.jar"), &dangling).unwrap();
    assert!(check("jars", dangling.to_str().unwrap(), &allowed).unwrap_err().contains("does not exist"));
}

#[test]
fn schemes_are_case_insensitive() {
    let (_dir, allowed, inside) = jobs_dir();
    for bad in ["FILE:///etc/passwd", "File:/etc/passwd", "Local:/etc/shadow", "LOCAL:///root/.ssh/id_rsa"] {
        let err = check("jars", bad, &allowed).unwrap_err();
        assert!(err.contains("local path") && !err.contains(bad), "{bad} must be local: {err}");
    }
    assert!(check("jars", &format!("FILE://{inside}"), &allowed).is_ok());
    assert!(check("jars", &format!("Local:{inside}"), &allowed).is_ok());
    assert!(check("jars", "HDFS:///x.jar", &[]).is_ok(), "other schemes stay remote");
}

#[test]
fn a_link_name_may_follow_a_local_path() {
    let (dir, allowed, inside) = jobs_dir();
    assert!(check("archives", &format!("{inside}#env"), &allowed).is_ok());
    assert!(check("archives", &format!("file://{inside}#env"), &allowed).is_ok());
    let missing = format!("{}/missing.zip#env", dir.path().display());
    assert!(check("archives", &missing, &allowed).unwrap_err().contains("does not exist"));
    // A file literally named `job.py#x` must not vouch for `job.py`, which Spark would read.
    let escape = dir.path().join("escape.jar");
    std::os::unix::fs::symlink("/etc/hostname", &escape).unwrap();
    std::fs::write(dir.path().join("escape.jar#x"), "").unwrap();
    let err = check("jars", &format!("{}#x", escape.display()), &allowed).unwrap_err();
    assert!(err.contains("symbolic link"), "{err}");
    for bad in [format!("{inside}#../../x"), format!("{inside}#"), format!("{inside}#a#b")] {
        assert!(check("archives", &bad, &allowed).unwrap_err().contains("#name"), "{bad}");
    }
    // With a character a URI cannot hold, Spark reads the whole text as a file name instead.
    std::fs::write(dir.path().join("a|b.zip"), "").unwrap();
    let odd = format!("{}/a|b.zip#env", dir.path().display());
    assert!(check("archives", &odd, &allowed).unwrap_err().contains("#name"), "{odd}");
}

#[test]
fn percent_escapes_and_queries_are_refused_in_local_uris() {
    // Spark decodes `%2F..` and drops `?...`: it would read a file other than the one checked.
    let (dir, allowed, _inside) = jobs_dir();
    std::fs::write(dir.path().join("..%2F..%2Fetc%2Fhostname"), "").unwrap();
    std::fs::create_dir(dir.path().join("x?")).unwrap();
    std::fs::write(dir.path().join("x?").join("y"), "").unwrap();
    std::os::unix::fs::symlink("/etc/hostname", dir.path().join("x")).unwrap();
    for bad in [
        format!("file://{}/..%2F..%2Fetc%2Fhostname", dir.path().display()),
        format!("file://{}/x?/y", dir.path().display()),
    ] {
        let err = check("files", &bad, &allowed).unwrap_err();
        assert!(err.contains("`%` or `?`") && !err.contains(&bad), "{err}");
    }
    assert!(check("files", "https://repo/a%20b.txt?raw=1", &[]).is_ok(), "remote URIs are not touched");
}

#[test]
fn only_an_allow_list_of_schemes_counts_as_remote() {
    // viewfs and har resolve through configuration to any file system, this host's included.
    let (dir, allowed, _inside) = jobs_dir();
    for bad in [
        "viewfs://x/k/acl.toml",
        "har:///jobs/a.har/acl.toml",
        "VIEWFS://cluster/x.jar",
        "ftp://host/x.jar",
        "jar:file:/etc/passwd!/x",
        "unknown+scheme://h/x",
    ] {
        let err = check("uri", bad, &allowed).unwrap_err();
        assert!(err.contains("remote schemes") && !err.contains(bad), "{bad}: {err}");
    }
    for ok in ["hdfs://nn:8020/a.jar", "ABFSS://c@acct.dfs.core.windows.net/x", "gs://b/x.py", "s3a://b/x"] {
        assert!(check("uri", ok, &[]).is_ok(), "{ok}");
    }
    // An operator may name more schemes remote; file and local can never be.
    let extra = vec!["myfs".to_string()];
    let g = Guard { extra_remote_schemes: &extra, ..guard(&allowed) };
    assert!(g.check("uri", "myfs://store/x.jar").is_ok());
    assert!(g.check("uri", "viewfs://x/y").is_err());
    let _ = dir;
}

#[test]
fn remote_uris_with_credentials_are_refused() {
    for bad in [
        "https://user:token@repo.example/a.jar",
        "https://token@repo.example/a.jar",
        "hdfs://alice@nn/x.py",
        "s3a://AKIA:secret@bucket/x",
        "wasbs://container:secret@acct.blob.core.windows.net/x",
    ] {
        let err = check("jars", bad, &[]).unwrap_err();
        assert!(err.contains("user-info"), "{bad}: {err}");
        assert!(!err.contains("token") && !err.contains("secret") && !err.contains("alice"), "{err}");
    }
    // An @ in a path or query is no user-info.
    assert!(check("jars", "https://repo.example/libs/@scope/a.jar", &[]).is_ok());
    assert!(check("jars", "https://repo.example/a.jar?by=me@x", &[]).is_ok());
}
