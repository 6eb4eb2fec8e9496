//! Advisory file locks. `VmLock` serialises mutations of one VM across every front end
//! (exclusive `flock` on `<vm>/lock`); the supervisor holds `supervisor.lock` for its
//! whole life, so "is a supervisor alive?" is a non-blocking lock attempt, immune to
//! stale pid files.

use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

/// A held exclusive lock; released on drop.
#[derive(Debug)]
pub struct FileLock {
    _lock: Flock<File>,
}

fn open(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new().create(true).truncate(false).write(true).read(true).open(path)
}

impl FileLock {
    /// Takes the lock without waiting; `Ok(None)` when someone else holds it.
    ///
    /// # Errors
    /// The lock file cannot be opened.
    pub fn try_acquire(path: &Path) -> std::io::Result<Option<Self>> {
        let f = open(path)?;
        match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(l) => Ok(Some(Self { _lock: l })),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, e)) => Err(e.into()),
        }
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
    fn lock_is_free_after_drop() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("lock");
        drop(FileLock::try_acquire(&p).unwrap().unwrap());
        assert!(!is_held(&p));
    }
}
