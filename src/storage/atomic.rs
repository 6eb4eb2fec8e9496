//! Crash-safe creation of new files: the content goes into a temporary file
//! in the target's directory, is synced, and is renamed into place without
//! replacing anything; then the directory is synced. On any error the
//! temporary file is removed, so a failed create leaves nothing behind.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;
use nix::fcntl::{RenameFlags, renameat2};

use super::error::StorageError;

/// How many temporary names to try before giving up.
const TEMP_NAME_ATTEMPTS: u32 = 16;

/// Whether to compare the needed size against the filesystem's free space
/// before writing. Only tests turn it off, to reach the out-of-space
/// cleanup path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SpaceCheck {
    Before,
    #[cfg(test)]
    Skip,
}

/// Creates `path` with the content produced by `fill`, atomically.
///
/// `needed_bytes` is what `fill` will allocate; the filesystem must have that
/// much free (for unprivileged users) or the call fails before writing.
/// Refuses to replace an existing `path`.
pub(crate) fn create_new(
    path: &Path,
    needed_bytes: u64,
    check: SpaceCheck,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> Result<(), StorageError> {
    let (dir, name) = split(path)?;
    if fs::symlink_metadata(path).is_ok() {
        return Err(StorageError::AlreadyExists { path: path.to_path_buf() });
    }
    if check == SpaceCheck::Before {
        ensure_free_space(path, &dir, needed_bytes)?;
    }

    let dir_file = File::open(&dir).map_err(|e| StorageError::open(&dir, e))?;
    let (mut file, temp) = create_temp(&dir, &name).map_err(|e| StorageError::write(path, e))?;
    let mut guard = TempGuard { path: Some(temp) };
    fill(&mut file).map_err(|e| StorageError::write(path, e))?;
    file.sync_all().map_err(|e| StorageError::write(path, e))?;
    drop(file);

    let temp_name = guard
        .path
        .as_ref()
        .and_then(|p| p.file_name())
        .map(std::ffi::OsStr::to_os_string)
        .ok_or_else(|| StorageError::write(path, io::Error::other("temporary file vanished")))?;
    rename_no_replace(&dir_file, &temp_name, &dir, &name).map_err(|e| {
        if e.kind() == io::ErrorKind::AlreadyExists {
            StorageError::AlreadyExists { path: path.to_path_buf() }
        } else {
            StorageError::write(path, e)
        }
    })?;
    guard.path = None;

    if let Err(e) = dir_file.sync_all() {
        // The rename may not be durable; do not leave a file the caller was
        // told does not exist.
        let _ = fs::remove_file(path);
        return Err(StorageError::write(&dir, e));
    }
    Ok(())
}

/// Fails with `InsufficientSpace` when the filesystem holding `dir` has
/// fewer than `needed_bytes` free for unprivileged users.
pub(crate) fn ensure_free_space(path: &Path, dir: &Path, needed_bytes: u64) -> Result<(), StorageError> {
    let stat = nix::sys::statvfs::statvfs(dir)
        .map_err(|e| StorageError::FreeSpace { path: dir.to_path_buf(), source: io::Error::from(e) })?;
    let free_bytes = stat.blocks_available().saturating_mul(stat.fragment_size());
    if free_bytes < needed_bytes {
        return Err(StorageError::InsufficientSpace { path: path.to_path_buf(), needed_bytes, free_bytes });
    }
    Ok(())
}

/// The directory to create in and the file name, as given.
fn split(path: &Path) -> Result<(PathBuf, std::ffi::OsString), StorageError> {
    let name = path.file_name().ok_or_else(|| StorageError::InvalidFileName {
        input: path.display().to_string(),
        reason: "the path does not end in a file name",
    })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((dir, name.to_os_string()))
}

/// Removes the temporary files an interrupted write of `path` left beside it
/// (`.<name>.tmp-<pid>-<n>`, see [`create_temp`]); best effort.
pub fn remove_temp_siblings(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else { return };
    let prefix = format!(".{}.tmp-", name.to_string_lossy());
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix)
            && e.file_type().is_ok_and(|t| t.is_file())
            && let Err(err) = std::fs::remove_file(e.path())
        {
            tracing::warn!(error = %err, path = %e.path().display(), "cannot remove a temporary file");
        }
    }
}

fn create_temp(dir: &Path, name: &std::ffi::OsStr) -> io::Result<(File, PathBuf)> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut last_err = io::Error::from(io::ErrorKind::AlreadyExists);
    for _ in 0..TEMP_NAME_ATTEMPTS {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(".tmp-{}-{n}", std::process::id()));
        let temp = dir.join(temp_name);
        match OpenOptions::new().write(true).create_new(true).mode(0o644).open(&temp) {
            Ok(file) => return Ok((file, temp)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_err = e,
            Err(e) => return Err(e),
        }
    }
    Err(last_err)
}

/// Renames `from` to `to` (both names inside `dir`) unless `to` exists.
fn rename_no_replace(dir_file: &File, from: &std::ffi::OsStr, dir: &Path, to: &std::ffi::OsStr) -> io::Result<()> {
    match renameat2(dir_file, from, dir_file, to, RenameFlags::RENAME_NOREPLACE) {
        Ok(()) => Ok(()),
        // Filesystems without RENAME_NOREPLACE: link(2) also refuses to
        // replace, and the temporary name is then removed.
        Err(Errno::EINVAL | Errno::ENOSYS) => {
            fs::hard_link(dir.join(from), dir.join(to))?;
            fs::remove_file(dir.join(from))
        }
        Err(e) => Err(io::Error::from(e)),
    }
}

/// Removes the temporary file unless it was renamed into place.
struct TempGuard {
    path: Option<PathBuf>,
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(path) = self.path.take()
            && let Err(e) = fs::remove_file(&path)
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove temporary file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::testutil::{SmallTmpfs, dir_entries};
    use std::io::Write;

    #[test]
    fn create_new_writes_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");

        create_new(&path, 3, SpaceCheck::Before, |f| f.write_all(b"abc")).unwrap();

        assert_eq!(fs::read(&path).unwrap(), b"abc");
        assert_eq!(dir_entries(dir.path()), vec!["f".to_string()]);
    }

    #[test]
    fn create_new_refuses_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, b"old").unwrap();

        let err = create_new(&path, 3, SpaceCheck::Before, |f| f.write_all(b"new")).unwrap_err();

        assert!(matches!(err, StorageError::AlreadyExists { path: ref p } if *p == path));
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert_eq!(dir_entries(dir.path()), vec!["f".to_string()]);
    }

    #[test]
    fn create_new_failing_fill_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");

        let err = create_new(&path, 3, SpaceCheck::Before, |_| Err(io::Error::other("boom"))).unwrap_err();

        assert!(matches!(err, StorageError::Write { .. }));
        assert!(dir_entries(dir.path()).is_empty());
    }

    #[test]
    fn create_new_without_space_fails_before_writing() {
        let fs = SmallTmpfs::mount();
        let path = fs.path().join("f");

        let err = create_new(&path, 2 << 20, SpaceCheck::Before, |_| panic!("must not write")).unwrap_err();

        assert!(matches!(
            err,
            StorageError::InsufficientSpace { needed_bytes, free_bytes, .. }
                if needed_bytes == 2 << 20 && free_bytes <= 1 << 20
        ));
        assert!(dir_entries(fs.path()).is_empty());
    }

    #[test]
    fn create_new_running_out_of_space_leaves_nothing() {
        let fs = SmallTmpfs::mount();
        let path = fs.path().join("f");

        let err = create_new(&path, 0, SpaceCheck::Skip, |f| f.write_all(&vec![0xab; 2 << 20])).unwrap_err();

        assert!(matches!(err, StorageError::Write { .. }));
        assert!(dir_entries(fs.path()).is_empty());
    }
}
