//! The only place that spawns processes (clippy's `disallowed-methods` keeps
//! `Command::new` here). Supervisors start in their own session with stdio on a log
//! file, so no front end's exit, terminal or signal reaches them; QEMU starts as the
//! supervisor's child with pre-opened descriptors placed at fixed numbers and a
//! umask of 027, so the files it creates (the serial log) are not world-readable.
//! Log files are created 0640.

#![allow(clippy::disallowed_methods)]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::Stdio;

use crate::fsutil::LOG_MODE;

/// Lowest fd number used to park descriptors before they are moved into place.
const PARK_FD_BASE: RawFd = 64;
/// QEMU's umask: what it creates (serial log, sockets, screenshots) is for the
/// supervisor's user and group only.
const QEMU_UMASK: libc::mode_t = 0o027;

/// Opens a log for appending, created 0640; an older, looser log is tightened.
fn log_file(path: &Path) -> std::io::Result<std::fs::File> {
    let file = std::fs::OpenOptions::new().create(true).append(true).mode(LOG_MODE).open(path)?;
    let mode = file.metadata()?.permissions().mode() & 0o777;
    if mode & !LOG_MODE != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(mode & LOG_MODE))?;
    }
    Ok(file)
}

/// Duplicates every fd above [`PARK_FD_BASE`] (close-on-exec), so moving them to their
/// targets in the child can never overwrite one that is still to be moved.
fn park(fds: &[(&OwnedFd, RawFd)]) -> std::io::Result<Vec<(OwnedFd, RawFd)>> {
    fds.iter()
        .map(|(fd, target)| {
            // SAFETY: F_DUPFD_CLOEXEC on a valid fd returns a new fd or -1.
            let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, PARK_FD_BASE) };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: `r` is a fresh fd we own.
            Ok((unsafe { OwnedFd::from_raw_fd(r) }, *target))
        })
        .collect()
}

/// Installs `parked` at their target numbers in the child (after fork, before exec).
fn install(
    cmd: &mut tokio::process::Command,
    parked: &[(OwnedFd, RawFd)],
    new_session: bool,
    umask: Option<libc::mode_t>,
) {
    let moves: Vec<(RawFd, RawFd)> = parked.iter().map(|(fd, t)| (fd.as_raw_fd(), *t)).collect();
    // SAFETY: the closure only calls async-signal-safe functions (setsid, umask, dup2)
    // and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if new_session && libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(mask) = umask {
                libc::umask(mask);
            }
            for &(src, dst) in &moves {
                // dup2 clears FD_CLOEXEC on `dst`, so the target survives exec.
                if libc::dup2(src, dst) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Starts `exe supervise <name>` detached: own session, stdin from /dev/null, output to
/// `log`, the ready pipe at fd 3. Dropping the returned child never kills it (tokio
/// reaps it in the background if it exits first).
///
/// # Errors
/// The log cannot be opened or the spawn fails.
pub fn spawn_supervisor(
    exe: &Path,
    args: &[String],
    log: &Path,
    ready_fd: &OwnedFd,
) -> std::io::Result<tokio::process::Child> {
    let out = log_file(log)?;
    let err = out.try_clone()?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err).kill_on_drop(false);
    let parked = park(&[(ready_fd, 3)])?;
    install(&mut cmd, &parked, true, None);
    cmd.spawn()
}

/// Starts QEMU as a child of the caller with `fds` placed at their target numbers,
/// stdin from /dev/null and output appended to `log`.
///
/// # Errors
/// The log cannot be opened or the spawn fails (binary missing, ...).
pub fn spawn_qemu(
    binary: &Path,
    argv: &[String],
    fds: &[(&OwnedFd, RawFd)],
    log: &Path,
) -> std::io::Result<tokio::process::Child> {
    let out = log_file(log)?;
    let err = out.try_clone()?;
    let mut cmd = tokio::process::Command::new(binary);
    cmd.args(argv).stdin(Stdio::null()).stdout(out).stderr(err).kill_on_drop(false);
    let parked = park(fds)?;
    install(&mut cmd, &parked, false, Some(QEMU_UMASK));
    cmd.spawn()
}

/// Starts a helper daemon (dnsmasq) as a child of the caller that receives SIGTERM
/// when the caller dies, so a killed supervisor never leaves it behind. stdin from
/// /dev/null, output appended to `log`.
///
/// # Errors
/// The log cannot be opened or the spawn fails (binary missing, ...).
pub fn spawn_tied_child(binary: &Path, args: &[String], log: &Path) -> std::io::Result<tokio::process::Child> {
    let out = log_file(log)?;
    let err = out.try_clone()?;
    let mut cmd = tokio::process::Command::new(binary);
    cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err).kill_on_drop(false);
    // SAFETY: prctl is async-signal-safe and the closure allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// `qemu --version`'s first line, e.g. `QEMU emulator version 7.2.22 (Debian ...)`.
///
/// # Errors
/// The binary cannot be run.
pub async fn qemu_version(binary: &Path) -> std::io::Result<String> {
    let out = tokio::process::Command::new(binary).arg("--version").stdin(Stdio::null()).output().await?;
    Ok(String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or_default().to_owned())
}
