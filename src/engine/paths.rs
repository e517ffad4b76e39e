//! Guards the gateway's own disk: a file a request names (`file`, `jars`, `pyFiles`, `files`,
//! `archives`, `add-*` URIs) that lives on this host is accepted only under the configured
//! allowed directories, so nobody can ship the gateway's keytabs or keys into a Spark job.

use std::path::{Component, Path, PathBuf};

/// Where the drivers run (`spark.deploy_mode`): it decides whether a `local:` file, which
/// names a file on every node, is read from this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverPlace {
    /// `client` (and local mode): the driver reads `local:` files on this host.
    Gateway,
    /// `cluster`: `local:` files are on the cluster's nodes (in a container image, say).
    Cluster,
}

impl DriverPlace {
    /// From `spark.deploy_mode`.
    pub fn from_deploy_mode(mode: &str) -> Self {
        if mode == "cluster" {
            Self::Cluster
        } else {
            Self::Gateway
        }
    }
}

/// Checks every entry of a request field; the error names the field and the value.
pub fn check_all(field: &str, values: &[String], allowed: &[PathBuf]) -> Result<(), String> {
    check_all_in(field, values, allowed, DriverPlace::Gateway)
}

/// [`check_all`] for drivers that run at `place`.
pub fn check_all_in(field: &str, values: &[String], allowed: &[PathBuf], place: DriverPlace) -> Result<(), String> {
    values.iter().try_for_each(|v| check_in(field, v, allowed, place))
}

/// Checks one value. It must be a single entry: no comma, whitespace or control character.
/// Remote URIs then pass; local ones (`file:`, `local:` in any case, or a bare path) must be
/// absolute, free of `..`, `%` and `?`, inside an allowed directory, and exist there, also
/// after following symlinks. A plain `#name` (Spark's link name) may follow the path.
pub fn check(field: &str, value: &str, allowed: &[PathBuf]) -> Result<(), String> {
    check_in(field, value, allowed, DriverPlace::Gateway)
}

/// [`check`] for drivers that run at `place`: with drivers in the cluster, a `local:` file
/// need not exist on this host.
pub fn check_in(field: &str, value: &str, allowed: &[PathBuf], place: DriverPlace) -> Result<(), String> {
    if value.trim().is_empty() {
        return Err(format!("field `{field}`: empty path"));
    }
    // Shown escaped: a newline in the message must not forge a line in a log.
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "field `{field}`: `{}` contains whitespace or a control character, which is not accepted in a file \
             name or URI",
            value.escape_debug()
        ));
    }
    // spark-submit receives each list joined with "," and splits it again, so a comma would
    // smuggle a second entry (say `hdfs:///x,/etc/krb5.keytab`) past the checks below.
    if value.contains(',') {
        return Err(format!(
            "field `{field}`: `{value}` contains a comma; Spark splits file lists on commas, so give each file as \
             its own entry"
        ));
    }
    let Some((uri_path, node_local)) = local_path(value) else { return Ok(()) };
    let refuse = |why: &str| Err(format!("field `{field}`: local path `{value}` {why}"));
    let (path_part, fragment) = uri_path.split_once('#').map_or((uri_path, None), |(p, f)| (p, Some(f)));
    // Spark decodes `%XX` and drops a `?query` from URIs, so it would read another file than
    // the one checked here.
    if path_part.contains(['%', '?']) {
        return refuse("must not contain `%` or `?`: give the plain path");
    }
    // Spark reads the path before `#` and uses the fragment only as a link name
    // (`env.tar.gz#env`), but only when the whole parses as a URI; otherwise it reads the
    // whole text as a file name. Plain characters on both sides keep the two readings apart.
    if let Some(name) = fragment {
        let plain_name = !matches!(name, "" | "." | "..")
            && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        let plain_path = path_part.chars().all(|c| c.is_ascii_alphanumeric() || "/-._~!$&'()*+;=:@".contains(c));
        if !plain_name || !plain_path {
            return refuse(
                "may carry a `#name` only after a path of plain URI characters, and the name must be letters, \
                 digits, `.`, `_` or `-`",
            );
        }
    }
    let local = Path::new(path_part);
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
    // Checked before existence, so the answer never tells whether a file outside exists.
    if !inside(local) {
        return refuse("is not under one of spark.allowed_local_dirs, so it cannot be used");
    }
    // A path that does not exist cannot be checked for symbolic links, so it is refused;
    // except, with drivers in the cluster, `local:`, which names a file already on every node
    // (in the container image, say) that Spark never reads from this host. A dangling
    // symbolic link is refused everywhere: it could be pointed anywhere later.
    let dangling = local.symlink_metadata().is_ok();
    let real = match local.canonicalize() {
        Ok(real) => real,
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound && node_local && place == DriverPlace::Cluster && !dangling =>
        {
            return Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return refuse("does not exist on the gateway host"),
        Err(e) => return refuse(&format!("cannot be read by the gateway ({e})")),
    };
    // A symlink inside an allowed directory must not lead out of it.
    if !inside(&real) {
        return refuse("leads (through a symbolic link) outside spark.allowed_local_dirs");
    }
    Ok(())
}

/// The path on this host a value names (with any `#fragment`) and whether it is a `local:`
/// URI (a file on every node), or None for a remote URI.
fn local_path(value: &str) -> Option<(&str, bool)> {
    // `scheme:...` with a scheme of letters, digits, + - . is a URI; schemes are
    // case-insensitive (RFC 3986), so `FILE:` and `Local:` are local too.
    let scheme = value.split_once(':').filter(|(scheme, _)| {
        scheme.len() > 1
            && scheme.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    });
    match scheme {
        None => Some((value, false)),
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("file") || scheme.eq_ignore_ascii_case("local") => {
            Some((rest.strip_prefix("//").unwrap_or(rest), scheme.eq_ignore_ascii_case("local")))
        }
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests;
