//! The Python driver program that spark-submit runs for each interactive session. It is
//! embedded in the binary and written to the data directory at start-up, so the gateway and
//! its driver always come from the same build.

use std::path::{Path, PathBuf};

/// The driver's source (docs/driver-protocol.md is its contract).
pub const DRIVER_SOURCE: &str = include_str!("sparkgate_driver.py");

/// Writes the driver into `<data_dir>/driver/` (mode 0644: it holds no secret) and returns
/// its absolute path.
pub fn install(data_dir: &Path) -> std::io::Result<PathBuf> {
    let dir = data_dir.join("driver");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("sparkgate_driver.py");
    crate::tls::write_file(&path, DRIVER_SOURCE.as_bytes(), 0o644).map_err(std::io::Error::other)?;
    path.canonicalize()
}
