//! Process identity. A pid counts as a VM's QEMU only if `/proc/<pid>` exists, its start
//! time and the boot id match what was recorded, it is not a zombie, and its cmdline
//! carries the VM's UUID. Signals go through a pidfd opened *before* those checks, so a
//! pid reused after the check can never receive them.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What identifies one process across restarts of the tools watching it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcIdentity {
    pub pid: i32,
    /// `/proc/<pid>/stat` field 22, in clock ticks since boot.
    pub starttime: u64,
    /// `/proc/sys/kernel/random/boot_id` when recorded.
    pub boot_id: String,
}

/// What a recorded identity says about the process now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// The same process, alive.
    Alive,
    /// Gone (or a zombie waiting to be reaped).
    Dead,
    /// The pid now belongs to another process.
    Reused,
}

/// The current boot id.
#[must_use]
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_owned()).unwrap_or_default()
}

/// `(state char, starttime)` from `/proc/<pid>/stat`.
fn stat(pid: i32) -> Option<(char, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and ')', so parse after the last ')'.
    let rest = &s[s.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // After ')' comes field 3 (state); starttime is field 22, i.e. 19 further on.
    let starttime = fields.nth(18)?.parse().ok()?;
    Some((state, starttime))
}

fn cmdline_has(pid: i32, needle: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|b| b.split(|&c| c == 0).any(|arg| arg.windows(needle.len()).any(|w| w == needle.as_bytes())))
}

impl ProcIdentity {
    /// Records the identity of a live process.
    #[must_use]
    pub fn capture(pid: i32) -> Option<Self> {
        let (_, starttime) = stat(pid)?;
        Some(Self { pid, starttime, boot_id: boot_id() })
    }

    /// Compares the recorded identity with `/proc` now; `marker` must appear in the
    /// process's cmdline (the VM's UUID).
    #[must_use]
    pub fn check(&self, marker: &str) -> Liveness {
        if self.boot_id != boot_id() {
            return Liveness::Dead;
        }
        match stat(self.pid) {
            None | Some(('Z' | 'X', _)) => Liveness::Dead,
            Some((_, st)) if st != self.starttime => Liveness::Reused,
            Some(_) if !cmdline_has(self.pid, marker) => Liveness::Reused,
            Some(_) => Liveness::Alive,
        }
    }

    /// Whether this very process (same boot, same start time) is alive, whatever its
    /// command line.
    #[must_use]
    pub fn is_alive(&self) -> bool {
        self.boot_id == boot_id()
            && matches!(stat(self.pid), Some((s, st)) if st == self.starttime && !matches!(s, 'Z' | 'X'))
    }

    /// Opens a pidfd and then verifies the identity, so the fd is known to refer to
    /// this very process. `None` when it is dead or the pid was reused.
    #[must_use]
    pub fn open_verified(&self, marker: &str) -> Option<PidFd> {
        let fd = PidFd::open(self.pid).ok()?;
        (self.check(marker) == Liveness::Alive).then_some(fd)
    }
}

/// A Linux pidfd: signals and exit notification for one exact process.
#[derive(Debug)]
pub struct PidFd {
    fd: OwnedFd,
    pid: i32,
}

impl PidFd {
    /// `pidfd_open(pid, 0)`.
    ///
    /// # Errors
    /// The process does not exist (ESRCH) or the kernel lacks pidfds.
    pub fn open(pid: i32) -> std::io::Result<Self> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let raw = i32::try_from(r).map_err(|_| std::io::Error::other("pidfd out of range"))?;
        // SAFETY: `raw` is a fresh fd owned by nobody else.
        Ok(Self { fd: unsafe { OwnedFd::from_raw_fd(raw) }, pid })
    }

    /// The pid this fd refers to.
    #[must_use]
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Sends `sig` to exactly this process.
    ///
    /// # Errors
    /// ESRCH when it has exited.
    pub fn signal(&self, sig: nix::sys::signal::Signal) -> std::io::Result<()> {
        // SAFETY: valid pidfd, a signal number, no siginfo, no flags.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                sig as libc::c_int,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
    }

    /// True once the process has exited (the pidfd polls readable).
    #[must_use]
    pub fn has_exited(&self) -> bool {
        let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd, zero timeout.
        let r = unsafe { libc::poll(&raw mut pfd, 1, 0) };
        r > 0
    }

    /// Waits until the process exits or `timeout` passes; true when it exited.
    pub async fn wait_exit(&self, timeout: Duration) -> bool {
        let Ok(dup) = self.fd.try_clone() else { return false };
        // SAFETY: `dup` is an fd we own and keep open for as long as `afd` lives.
        let Ok(afd) = (unsafe { tokio::io::unix::AsyncFd::register_with_interest(dup, tokio::io::Interest::READABLE) })
        else {
            return false;
        };
        tokio::time::timeout(timeout, afd.readable()).await.is_ok_and(|r| r.is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_with_own_marker() {
        let me = ProcIdentity::capture(std::process::id().cast_signed()).unwrap();
        let arg0 = std::env::args().next().unwrap();
        assert_eq!(me.check(&arg0), Liveness::Alive);
    }

    #[test]
    fn wrong_starttime_is_reused() {
        let mut me = ProcIdentity::capture(std::process::id().cast_signed()).unwrap();
        me.starttime += 1;
        assert_eq!(me.check(""), Liveness::Reused);
    }

    #[test]
    fn missing_marker_is_reused() {
        let me = ProcIdentity::capture(std::process::id().cast_signed()).unwrap();
        assert_eq!(me.check("no-such-uuid-0000"), Liveness::Reused);
    }

    #[test]
    fn other_boot_is_dead() {
        let mut me = ProcIdentity::capture(std::process::id().cast_signed()).unwrap();
        me.boot_id = "00000000-0000-0000-0000-000000000000".into();
        assert_eq!(me.check(""), Liveness::Dead);
    }
}
