//! Advisory file locks. `VmLock` serialises mutations of one VM across every front end
//! (exclusive `flock` on `<vm>/lock`); the supervisor holds `supervisor.lock` for its
//! whole life, so "is a supervisor alive?" is a non-blocking lock attempt, immune to
//! stale pid files.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

/// A held exclusive lock; released on drop.
#[derive(Debug)]
pub struct FileLock {
    lock: Flock<File>,
    /// Remove the lock file on release unless the second path exists.
    cleanup: Option<(PathBuf, PathBuf)>,
}

fn open(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new().create(true).truncate(false).write(true).read(true).open(path)
}

/// Whether `path` still names the file `f` is open on.
fn still_linked(f: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (f.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

impl FileLock {
    /// Takes the lock without waiting; `Ok(None)` when someone else holds it.
    ///
    /// # Errors
    /// The lock file cannot be opened.
    pub fn try_acquire(path: &Path) -> std::io::Result<Option<Self>> {
        loop {
            let f = open(path)?;
            match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
                // The file may have been removed (see [`FileLock::remove`]) between our
                // open and our lock: a lock on it locks nothing, so open the path again.
                Ok(l) if still_linked(&l, path) => return Ok(Some(Self { lock: l, cleanup: None })),
                Ok(_) => {}
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Ok(None),
                Err((_, e)) => return Err(e.into()),
            }
        }
    }

    /// On release, removes the lock file at `path` (still held, so whoever waits on it
    /// sees it gone once it gets it, and locks a fresh one) unless `keep_if` exists: a
    /// VM's name lock outlives the VM only while its directory does.
    #[must_use]
    pub fn remove_unless(mut self, path: &Path, keep_if: &Path) -> Self {
        self.cleanup = Some((path.to_owned(), keep_if.to_owned()));
        self
    }

    /// Waits up to `timeout` for the lock; `Ok(None)` on timeout.
    ///
    /// # Errors
    /// The lock file cannot be opened.
    pub async fn acquire(path: &Path, timeout: Duration) -> std::io::Result<Option<Self>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = Self::try_acquire(path)? {
                return Ok(Some(l));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        if let Some((path, keep_if)) = &self.cleanup
            && !keep_if.exists()
            && still_linked(&self.lock, path)
            && let Err(e) = std::fs::remove_file(path)
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove a lock file");
        }
    }
}

/// True when some process holds the lock at `path` (and the file exists).
#[must_use]
pub fn is_held(path: &Path) -> bool {
    if !path.exists() {
        return false;
    }
    matches!(FileLock::try_acquire(path), Ok(None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_while_first_held() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("lock");
        let _a = FileLock::try_acquire(&p).unwrap().unwrap();
        assert!(FileLock::try_acquire(&p).unwrap().is_none());
    }

    #[test]
    fn a_removed_lock_file_is_never_a_second_holder() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("lock");
        let kept = d.path().join("vm");
        std::fs::create_dir(&kept).unwrap();
        drop(FileLock::try_acquire(&p).unwrap().unwrap().remove_unless(&p, &kept));
        assert!(p.exists(), "kept while the VM's directory exists");
        std::fs::remove_dir(&kept).unwrap();
        let a = FileLock::try_acquire(&p).unwrap().unwrap().remove_unless(&p, &kept);
        // A waiter that opened the file before it was removed.
        let stale = open(&p).unwrap();
        drop(a);
        assert!(!p.exists());
        let b = FileLock::try_acquire(&p).unwrap().unwrap();
        // The stale descriptor can lock the removed file, but try_acquire would not
        // count that: the path now names another file.
        let stale = Flock::lock(stale, FlockArg::LockExclusiveNonblock).unwrap();
        assert!(!still_linked(&stale, &p));
        assert!(FileLock::try_acquire(&p).unwrap().is_none(), "b still holds the new file");
        drop(b);
    }

    #[test]
    fn lock_is_free_after_drop() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("lock");
        drop(FileLock::try_acquire(&p).unwrap().unwrap());
        assert!(!is_held(&p));
    }
}
