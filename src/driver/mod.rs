//! The Python driver program that spark-submit runs for each interactive session. It is
//! embedded in the binary and written into each session's own directory just before its
//! launch, so the gateway and its driver always come from the same build, and no file that
//! outlives one session decides what every later session runs.

use std::path::{Path, PathBuf};

/// The driver's source (docs/driver-protocol.md is its contract).
pub const DRIVER_SOURCE: &str = include_str!("sparkgate_driver.py");

/// The driver program's file name in a session's directory.
pub const FILE_NAME: &str = "sparkgate_driver.py";

/// Writes the driver into the session directory `dir`, read-only for its owner (0400: it holds
/// no secret, and nothing should change it after this), and returns its absolute path.
///
/// Why per session rather than once at start-up: one shared file in the data directory would
/// be run by every later session, so whoever could change it once (code running as the
/// gateway's account) would run their code in everybody's sessions. Here each launch runs the
/// embedded source, freshly written, and the sandbox shows it read-only to the session.
pub fn write_for_session(dir: &Path) -> std::io::Result<PathBuf> {
    let path = dir.join(FILE_NAME);
    crate::fs::write_file(&path, DRIVER_SOURCE.as_bytes(), 0o400).map_err(std::io::Error::other)?;
    path.canonicalize()
}

/// The name of the job API jar in a session's directory.
pub const JOB_API_JAR: &str = "sparkgate-livy-api.jar";

/// Copies the job API jar (`spark.job_api_jar`) into a session's directory, read-only, where
/// its driver (sandboxed or not) reads it; returns the copy's path.
pub fn copy_job_api_jar(dir: &Path, jar: &Path) -> std::io::Result<PathBuf> {
    let bytes = std::fs::read(jar)?;
    let path = dir.join(JOB_API_JAR);
    crate::fs::write_file(&path, &bytes, 0o400).map_err(std::io::Error::other)?;
    path.canonicalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_session_gets_the_embedded_driver_read_only() {
        let dir = tempfile::tempdir().unwrap();
        // Whatever was there before (a file changed by someone) is replaced by the embedded source.
        std::fs::write(dir.path().join(FILE_NAME), "print('trojan')").unwrap();
        let path = write_for_session(dir.path()).unwrap();
        assert_eq!(path, dir.path().canonicalize().unwrap().join(FILE_NAME));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), DRIVER_SOURCE);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o400);
    }
}
