//! Guards the gateway's own disk: a file a request names (`file`, `jars`, `pyFiles`, `files`,
//! `archives`, `add-*` URIs) that lives on this host — or could resolve to it — is accepted only
//! under the configured allowed directories, so nobody can ship the gateway's keytabs or keys
//! into a Spark job. Only an allow-list of schemes counts as remote.

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

/// URI schemes that name storage off this host, accepted without a local-path check. Every
/// other scheme is treated as local, and refused unless it is a plain `file:`/`local:` path
/// under `spark.allowed_local_dirs`: what a URI can resolve to decides, not its name — a
/// `viewfs://` or `har://` URI can be mounted onto any local directory by configuration.
/// Operators add their own with `spark.extra_remote_schemes`.
pub const BUILTIN_REMOTE_SCHEMES: &[&str] = &[
    "hdfs", "webhdfs", "swebhdfs", "s3a", "s3", "s3n", "abfs", "abfss", "wasb", "wasbs", "adl", "gs", "oss", "cosn",
    "http", "https",
];

/// Schemes whose URIs name a container before `@` (`abfss://container@account.dfs...`).
const AZURE_SCHEMES: &[&str] = &["abfs", "abfss", "wasb", "wasbs"];

/// Schemes that always name this host's files and so can never be made remote.
pub const LOCAL_SCHEMES: &[&str] = &["file", "local"];

/// Checks the files a request names: `file`, `jars`, `pyFiles`, `files`, `archives` and the
/// `add-*` URIs.
#[derive(Debug, Clone, Copy)]
pub struct Guard<'a> {
    /// `spark.allowed_local_dirs`.
    pub allowed: &'a [PathBuf],
    /// `spark.extra_remote_schemes` (beside [`BUILTIN_REMOTE_SCHEMES`]).
    pub extra_remote_schemes: &'a [String],
    /// Where drivers run.
    pub place: DriverPlace,
}

impl<'a> Guard<'a> {
    /// The guard the configuration describes.
    pub fn new(config: &'a crate::config::SparkConfig) -> Self {
        Self {
            allowed: &config.allowed_local_dirs,
            extra_remote_schemes: &config.extra_remote_schemes,
            place: DriverPlace::from_deploy_mode(&config.deploy_mode),
        }
    }

    /// Checks every entry of a list field; the error names the field and the entry's index.
    pub fn check_all(&self, field: &str, values: &[String]) -> Result<(), String> {
        values.iter().enumerate().try_for_each(|(i, v)| self.check(&format!("{field}[{i}]"), v))
    }

    /// Checks one value. It must be a single entry: no comma, whitespace or control character.
    /// A URI with a remote scheme then passes unless it carries user-info (credentials there
    /// would reach the command line and logs). Anything else is local: a bare path or a `file:`
    /// or `local:` URI, absolute, free of `..`, `%` and `?`, inside an allowed directory, and
    /// existing there, also after following symlinks; a plain `#name` (Spark's link name) may
    /// follow the path. Messages name the field and the problem, never the value.
    pub fn check(&self, field: &str, value: &str) -> Result<(), String> {
        let refuse = |why: &str| Err(format!("field `{field}`: {why}"));
        if value.trim().is_empty() {
            return refuse("empty path");
        }
        if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return refuse("contains whitespace or a control character, which is not accepted in a file name or URI");
        }
        // spark-submit receives each list joined with "," and splits it again, so a comma would
        // smuggle a second entry (say `hdfs:///x,/etc/krb5.keytab`) past the checks below.
        if value.contains(',') {
            return refuse("contains a comma; Spark splits file lists on commas, so give each file as its own entry");
        }
        let (uri_path, node_local) = match scheme_of(value) {
            None => (value, false),
            Some((scheme, rest)) if LOCAL_SCHEMES.iter().any(|s| scheme.eq_ignore_ascii_case(s)) => {
                (rest.strip_prefix("//").unwrap_or(rest), scheme.eq_ignore_ascii_case("local"))
            }
            Some((scheme, rest)) if self.is_remote(scheme) => {
                let authority = rest.strip_prefix("//").map(|r| r.split(['/', '?', '#']).next().unwrap_or(""));
                let user_info = authority.and_then(|a| a.rsplit_once('@')).map(|(info, _)| info);
                // Azure's `container@account` is an address, not a credential; a `:password` is one.
                let container = AZURE_SCHEMES.iter().any(|s| scheme.eq_ignore_ascii_case(s));
                if user_info.is_some_and(|info| !container || info.contains(':')) {
                    return refuse(
                        "a URI must not carry a user name or password (user-info): it would be visible on the \
                         gateway host's command lines and in logs; use the file system's own credential \
                         configuration instead",
                    );
                }
                return Ok(());
            }
            Some(_) => return refuse(
                "this URI scheme is not one of the remote schemes this gateway accepts (spark.extra_remote_schemes \
                     adds to hdfs, s3a, abfs(s), gs, http(s), ...); files on the gateway host must be plain paths \
                     under spark.allowed_local_dirs",
            ),
        };
        self.check_local(field, uri_path, node_local)
    }

    fn is_remote(&self, scheme: &str) -> bool {
        BUILTIN_REMOTE_SCHEMES.iter().any(|s| scheme.eq_ignore_ascii_case(s))
            || self.extra_remote_schemes.iter().any(|s| scheme.eq_ignore_ascii_case(s))
    }

    fn check_local(&self, field: &str, uri_path: &str, node_local: bool) -> Result<(), String> {
        let refuse = |why: &str| Err(format!("field `{field}`: local path {why}"));
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
            self.allowed.iter().any(|dir| {
                let dir = dir.canonicalize().unwrap_or_else(|_| dir.clone());
                p.starts_with(&dir)
            })
        };
        // Checked before existence, so the answer never tells whether a file outside exists.
        if !inside(local) {
            return refuse("is not under one of spark.allowed_local_dirs, so it cannot be used");
        }
        // A path that does not exist cannot be checked for symbolic links, so it is refused;
        // except, with drivers in the cluster, `local:`, which names a file already on every
        // node (in the container image, say) that Spark never reads from this host. A dangling
        // symbolic link is refused everywhere: it could be pointed anywhere later.
        let dangling = local.symlink_metadata().is_ok();
        let real = match local.canonicalize() {
            Ok(real) => real,
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && node_local
                    && self.place == DriverPlace::Cluster
                    && !dangling =>
            {
                return Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return refuse("does not exist on the gateway host"),
            Err(_) => return refuse("cannot be read by the gateway"),
        };
        // A symlink inside an allowed directory must not lead out of it.
        if !inside(&real) {
            return refuse("leads (through a symbolic link) outside spark.allowed_local_dirs");
        }
        Ok(())
    }
}

/// A URI's scheme (RFC 3986: a letter, then letters, digits, `+`, `-`, `.`; more than one
/// character, so `C:` stays a path) and the rest after the `:`; None for a bare path.
fn scheme_of(value: &str) -> Option<(&str, &str)> {
    value.split_once(':').filter(|(scheme, _)| {
        scheme.len() > 1
            && scheme.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    })
}

#[cfg(test)]
mod tests;
