//! Files the gateway writes for itself: private directories (0700), files written whole with a
//! chosen mode (0600 for anything secret), and the fsyncs that make them durable — of the file,
//! and of the directory that holds its name. A new or renamed name is on disk only once its
//! directory is synced: without that, a crash right after a create or a rename can lose the name
//! even though the file's content was synced.

use std::io::Write;
use std::path::{Path, PathBuf};

/// A file-system step failed on `path`.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct FsError {
    /// The file or directory.
    pub path: PathBuf,
    /// Why.
    pub source: std::io::Error,
}

fn at(path: &Path) -> impl FnOnce(std::io::Error) -> FsError + '_ {
    move |source| FsError { path: path.to_path_buf(), source }
}

/// The directory that holds `path`'s name (`.` for a bare name).
fn parent_of(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// Makes the entries of `dir` durable (names created, renamed or removed in it).
pub(crate) fn sync_dir(dir: &Path) -> Result<(), FsError> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(at(dir))
}

/// Creates a directory (and missing parents) readable only by its owner, and syncs the
/// directory holding each one it created. An existing directory is left as it is: the path may
/// be a shared one such as `/var/log`, whose mode is not ours to change.
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), FsError> {
    use std::os::unix::fs::DirBuilderExt;
    // What this call creates, deepest first; an existing directory needs no sync.
    let missing: Vec<&Path> = dir.ancestors().take_while(|a| !a.as_os_str().is_empty() && !a.exists()).collect();
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(at(dir))?;
    for created in missing.iter().rev() {
        sync_dir(parent_of(created))?;
    }
    Ok(())
}

/// Replaces `path` with `bytes` so that a crash leaves the old content or the new, never a mix,
/// and the new content and name are on disk when this returns: temporary file (created with
/// `mode`, so the mode is set before any byte is written), fsync, rename, fsync of the directory.
pub fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = parent_of(path);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = dir.join(name);
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp).map_err(at(&tmp))?;
    file.write_all(bytes).map_err(at(&tmp))?;
    file.sync_all().map_err(at(&tmp))?;
    std::fs::rename(&tmp, path).map_err(at(path))?;
    sync_dir(dir)
}

/// Renames `from` to `to`, then syncs the directory that gained the name and the one that lost
/// it, so that after a crash the entry is under its new name and not under both or neither.
pub(crate) fn rename(from: &Path, to: &Path) -> Result<(), FsError> {
    std::fs::rename(from, to).map_err(at(from))?;
    let (old_dir, new_dir) = (parent_of(from), parent_of(to));
    sync_dir(new_dir)?;
    if old_dir != new_dir {
        sync_dir(old_dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn private_dirs_are_created_owner_only_and_existing_ones_left_alone() {
        let root = tempfile::tempdir().unwrap();
        let deep = root.path().join("a/b/c");
        create_private_dir(&deep).unwrap();
        for dir in ["a", "a/b", "a/b/c"] {
            assert_eq!(mode(&root.path().join(dir)), 0o700, "{dir}");
        }
        let shared = root.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
        create_private_dir(&shared).unwrap();
        assert_eq!(mode(&shared), 0o755, "not ours to change");
        // A file where a directory should be: refused, naming the path.
        let file = root.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let err = create_private_dir(&file.join("sub")).unwrap_err();
        assert!(err.to_string().starts_with(&file.join("sub").display().to_string()), "{err}");
    }

    #[test]
    fn files_are_replaced_whole_with_their_mode_and_no_temporary_left() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("secret.pem");
        write_file(&path, b"old", 0o600).unwrap();
        write_file(&path, b"new", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(mode(&path), 0o600);
        let names: Vec<_> = std::fs::read_dir(root.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["secret.pem"]);
        // Into a directory that is not there: refused, and nothing is written.
        let missing = root.path().join("missing/secret.pem");
        let err = write_file(&missing, b"x", 0o600).unwrap_err();
        assert!(err.path.starts_with(root.path().join("missing")), "{err}");
        assert!(!root.path().join("missing").exists());
    }

    #[test]
    fn renames_move_the_name_between_directories() {
        let root = tempfile::tempdir().unwrap();
        let (from, to) = (root.path().join("a/run"), root.path().join("b/run"));
        create_private_dir(&from).unwrap();
        create_private_dir(to.parent().unwrap()).unwrap();
        rename(&from, &to).unwrap();
        assert!(!from.exists() && to.is_dir());
        // What is not there cannot be moved: the error names it.
        let err = rename(&from, &root.path().join("b/again")).unwrap_err();
        assert_eq!(err.path, from);
        assert!(sync_dir(&root.path().join("nowhere")).is_err());
    }
}
