//! The ready pipe between a front end and a supervisor it starts in the background
//! (`kvm-mcp supervise`, `kvm-mcp dhcp-supervise`): the supervisor writes one JSON line
//! on the pipe at fd 3 (`--ready-fd 3`) once its first start succeeded or failed, and
//! the starter waits for that line with a deadline. A failure keeps its kind across the
//! pipe, so a spec that does not fit its profile stays invalid input for the caller.

use std::io::Write as _;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use crate::error::ErrorKind;
use crate::qemu::launcher;

/// How a supervisor's first start went.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Report {
    pub ok: bool,
    /// What happened; `None` when the supervisor exited without reporting.
    pub message: Option<String>,
    /// The last lines of the supervised program's log, when it failed.
    pub log_tail: Vec<String>,
    /// What sort of failure it was (absent from older supervisors: unavailable).
    pub kind: Option<ErrorKind>,
}

/// Starts `exe options… --ready-fd 3 -- operand` through [`launcher::spawn_supervisor`]
/// (output on `log`) and waits up to `timeout` for its report: `None` when the time ran
/// out, a report that is not ok and has no message when it exited without one. The
/// operand (a VM or bridge name) comes after `--`, so it can never be read as an option.
///
/// # Errors
/// The pipe or the process could not be created.
pub async fn spawn_and_wait(
    exe: &Path,
    options: &[String],
    operand: &str,
    log: &Path,
    timeout: Duration,
) -> std::io::Result<Option<Report>> {
    let (rx, tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let args: Vec<String> =
        options.iter().cloned().chain(["--ready-fd".into(), "3".into(), "--".into(), operand.into()]).collect();
    // Dropping the child never kills it; tokio reaps it if it exits while we still run.
    drop(launcher::spawn_supervisor(exe, &args, log, &tx)?);
    drop(tx);
    wait(rx, timeout).await
}

/// Reads the report from the read end `rx` once every write end is closed.
async fn wait(rx: OwnedFd, timeout: Duration) -> std::io::Result<Option<Report>> {
    let mut rx = tokio::net::unix::pipe::Receiver::from_owned_fd(rx)?;
    let mut text = String::new();
    match tokio::time::timeout(timeout, rx.read_to_string(&mut text)).await {
        Err(_) => Ok(None),
        Ok(_) => Ok(Some(serde_json::from_str(text.trim()).unwrap_or_default())),
    }
}

/// The supervisor's end: sends the first start's report, once.
#[derive(Debug)]
pub struct Reporter(Option<std::fs::File>);

impl Reporter {
    /// Takes the pipe at `fd` (`None`: started by hand, nobody waits).
    ///
    /// # Safety
    /// `fd` must be an open descriptor that nothing else in this process owns.
    #[must_use]
    pub unsafe fn from_raw_fd(fd: Option<RawFd>) -> Self {
        // SAFETY: the caller guarantees `fd` is open and owned by no one else.
        Self(fd.map(|fd| std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) })))
    }

    /// Whether the report is still to be sent.
    #[must_use]
    pub fn pending(&self) -> bool {
        self.0.is_some()
    }

    /// Reports success and closes the pipe; later calls do nothing.
    pub fn ok(&mut self, message: &str) {
        self.send(&Report { ok: true, message: Some(message.into()), log_tail: Vec::new(), kind: None });
    }

    /// Reports a failure of `kind` and closes the pipe; later calls do nothing.
    pub fn fail(&mut self, kind: ErrorKind, message: &str, log_tail: &[String]) {
        self.send(&Report { ok: false, message: Some(message.into()), log_tail: log_tail.to_vec(), kind: Some(kind) });
    }

    fn send(&mut self, report: &Report) {
        if let Some(mut f) = self.0.take()
            && let Ok(line) = serde_json::to_string(report)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipe() -> (OwnedFd, Reporter) {
        let (rx, tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        (rx, Reporter(Some(std::fs::File::from(tx))))
    }

    #[tokio::test]
    async fn report_is_read_once_the_pipe_closes() {
        let (rx, mut reporter) = pipe();
        reporter.fail(ErrorKind::InvalidInput, "no QEMU", &["last line".into()]);
        reporter.ok("ignored");
        let r = wait(rx, Duration::from_secs(5)).await.unwrap().unwrap();
        assert_eq!(
            (r.ok, r.message.as_deref(), r.log_tail, r.kind),
            (false, Some("no QEMU"), vec!["last line".to_owned()], Some(ErrorKind::InvalidInput))
        );
    }

    #[tokio::test]
    async fn closing_without_a_report_is_a_silent_failure() {
        let (rx, reporter) = pipe();
        drop(reporter);
        let r = wait(rx, Duration::from_secs(5)).await.unwrap().unwrap();
        assert_eq!((r.ok, r.message), (false, None));
    }

    #[tokio::test]
    async fn open_pipe_times_out() {
        let (rx, _reporter) = pipe();
        assert!(wait(rx, Duration::from_millis(100)).await.unwrap().is_none());
    }
}
