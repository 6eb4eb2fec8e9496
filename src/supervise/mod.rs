//! The background processes that own running things, each started by re-executing the
//! kvm-mcp binary in its own session so it outlives every front end: the per-VM
//! supervisor ([`vm`], `kvm-mcp supervise <name>`), the per-bridge DHCP supervisor
//! ([`dhcp`], `kvm-mcp dhcp-supervise <bridge>`), the ready pipe they report their first
//! start on ([`ready`]), the launch of one QEMU run as a typed plan ([`launch`]), and
//! the pure decisions a supervisor takes when its child ends ([`policy`]).
//!
//! What both supervisors share lives here once: the singleton lock, preparing their
//! directory, back-off between restarts, and writing their status file.

pub mod dhcp;
pub mod launch;
pub mod policy;
pub mod ready;
pub mod vm;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::lock::FileLock;

/// First restart delay of either supervisor; doubles per restart.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest restart delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// A supervisor's own failures (before it runs anything).
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("cannot prepare {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Creates `dir` and takes the supervisor lock at `lock`: `Ok(None)` when another
/// supervisor holds it (there is one already).
///
/// # Errors
/// The directory or the lock file cannot be created, with the real I/O error.
pub fn take_singleton(dir: &Path, lock: &Path) -> Result<Option<FileLock>, PrepareError> {
    std::fs::create_dir_all(dir).map_err(|source| PrepareError::Io { path: dir.to_owned(), source })?;
    FileLock::try_acquire(lock).map_err(|source| PrepareError::Io { path: lock.to_owned(), source })
}

/// Nice value of a warm pool's owner, and so of the supervisors and QEMUs it starts:
/// a refill boot yields the CPUs to the VMs in use. A claim sets the claimed VM back
/// to 0.
pub const POOL_NICE: i32 = 10;

/// Sets the nice value of every thread of process `pid` (Linux keeps one per thread;
/// threads made later inherit their maker's). Only a privileged process may lower it.
///
/// # Errors
/// The process is gone, or the last refusal (`EACCES` without `CAP_SYS_NICE`).
pub fn renice(pid: i32, nice: i32) -> std::io::Result<()> {
    let mut res = Ok(());
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let Ok(tid) = entry?.file_name().to_string_lossy().parse::<libc::id_t>() else { continue };
        // SAFETY: setpriority takes plain integers and touches no memory of ours.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) } != 0 {
            res = Err(std::io::Error::last_os_error());
        }
    }
    res
}

/// Doubling delays between restarts, capped.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: BACKOFF_BASE }
    }
}

impl Backoff {
    /// The delay before restart number `restarts` (0-based), without state.
    #[must_use]
    pub fn delay_for(restarts: u32) -> Duration {
        BACKOFF_BASE.saturating_mul(1 << restarts.min(5)).min(BACKOFF_MAX)
    }

    /// The next delay; the one after it doubles.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        d
    }

    /// Back to the first delay (after a run that lasted).
    pub fn reset(&mut self) {
        self.next = BACKOFF_BASE;
    }
}

/// Writes a supervisor's status record; a failure is logged and returned, so the
/// caller decides whether it may go on without a record.
///
/// # Errors
/// The record could not be written.
pub fn flush_status<T: serde::Serialize>(path: &Path, status: &T) -> std::io::Result<()> {
    crate::store::write_record_volatile(path, status).inspect_err(|e| {
        tracing::warn!(error = %e, path = %path.display(), "cannot write status record");
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::default();
        let seen: Vec<u64> = (0..7).map(|_| b.next_delay().as_secs()).collect();
        b.reset();

        assert_eq!((seen, b.next_delay().as_secs()), (vec![1, 2, 4, 8, 16, 30, 30], 1));
    }

    #[test]
    fn delay_for_matches_the_stateful_backoff() {
        let mut b = Backoff::default();
        let stateful: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        let stateless: Vec<Duration> = (0..8).map(Backoff::delay_for).collect();

        assert_eq!(stateful, stateless);
    }
}
