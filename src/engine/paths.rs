//! Guards the gateway's own disk: a file a request names (`file`, `jars`, `pyFiles`, `files`,
//! `archives`, `add-*` URIs) that lives on this host is accepted only under the configured
//! allowed directories, so nobody can ship the gateway's keytabs or keys into a Spark job.

use std::path::{Component, Path, PathBuf};

/// Checks every entry of a request field; the error names the field and the value.
pub fn check_all(field: &str, values: &[String], allowed: &[PathBuf]) -> Result<(), String> {
    values.iter().try_for_each(|v| check(field, v, allowed))
}

/// Checks one value. Remote URIs pass; local ones (`file:`, `local:` or a bare path) must be
/// absolute, free of `..`, and inside an allowed directory, also after following symlinks.
pub fn check(field: &str, value: &str, allowed: &[PathBuf]) -> Result<(), String> {
    let Some(local) = local_path(value) else { return Ok(()) };
    let refuse = |why: &str| Err(format!("field `{field}`: local path `{value}` {why}"));
    if value.trim().is_empty() {
        return Err(format!("field `{field}`: empty path"));
    }
    if !local.is_absolute() {
        return refuse("must be absolute");
    }
    if local.components().any(|c| matches!(c, Component::ParentDir)) {
        return refuse("must not contain `..`");
    }
    let inside = |p: &Path| {
        allowed.iter().any(|dir| {
            let dir = dir.canonicalize().unwrap_or_else(|_| dir.clone());
            p.starts_with(&dir)
        })
    };
    if !inside(&local) {
        return refuse("is not under one of spark.allowed_local_dirs, so it cannot be used");
    }
    // A symlink inside an allowed directory must not lead out of it.
    if let Ok(real) = local.canonicalize() {
        if !inside(&real) {
            return refuse("leads (through a symbolic link) outside spark.allowed_local_dirs");
        }
    }
    Ok(())
}

/// The path on this host a value names, or None for a remote URI.
fn local_path(value: &str) -> Option<PathBuf> {
    let v = value.trim();
    for scheme in ["file://", "file:", "local://", "local:"] {
        if let Some(rest) = v.strip_prefix(scheme) {
            return Some(PathBuf::from(rest));
        }
    }
    // `scheme:...` with a scheme of letters, digits, + - . is a URI for another filesystem.
    if let Some((scheme, _)) = v.split_once(':') {
        let looks_like_scheme = scheme.len() > 1
            && scheme.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        if looks_like_scheme {
            return None;
        }
    }
    Some(PathBuf::from(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_uris_pass_and_local_paths_need_an_allowed_dir() {
        let dir = tempfile::tempdir().unwrap();
        let allowed = vec![dir.path().to_path_buf()];
        let inside = dir.path().join("job.py");
        std::fs::write(&inside, "print(1)").unwrap();
        for ok in ["hdfs:///user/a/job.py", "s3a://b/x.jar", "https://repo/x.jar"] {
            assert!(check("file", ok, &[]).is_ok(), "{ok}");
        }
        assert!(check("file", inside.to_str().unwrap(), &allowed).is_ok());
        assert!(check("jars", &format!("file://{}", inside.display()), &allowed).is_ok());
        assert!(check("jars", &format!("local:{}", inside.display()), &allowed).is_ok());
        for bad in ["/etc/krb5.keytab", "file:///etc/shadow", "local:/root/.ssh/id_rsa", "job.py", "./x.py"] {
            let err = check("pyFiles", bad, &allowed).unwrap_err();
            assert!(err.contains("pyFiles") && err.contains(bad), "{err}");
        }
        let dotdot = format!("{}/../../etc/passwd", dir.path().display());
        assert!(check("files", &dotdot, &allowed).unwrap_err().contains(".."));
        assert!(check("files", inside.to_str().unwrap(), &[]).is_err(), "nothing allowed by default");
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
        assert!(err.contains("/secret.zip"));
    }
}
