//! Guest agent operations: ping, exec, file read/write, guest facts, and the shutdown
//! `stop` falls back to when the guest ignores the ACPI power button.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::context::Vm;
use super::{Ops, OpsError, ProgressFn};
use crate::agent::exec::{ExecRequest, ExecResult};
use crate::agent::files::{FileData, GuestInfo};
use crate::agent::stream::{self, Stream, StreamRequest, StreamResult};
use crate::agent::{AgentClient, AgentError, exec, files};

/// Default time a guest command may run.
pub const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest time a guest command may be given.
pub const MAX_EXEC_TIMEOUT: Duration = Duration::from_secs(3600);
/// How long `stop` waits for the agent before giving up on it.
const SHUTDOWN_SYNC_TIMEOUT: Duration = Duration::from_secs(3);

/// What `guest_exec` runs.
#[derive(Debug, Clone, Default)]
pub struct GuestExecRequest {
    /// Program to run (searched in the guest's PATH when not absolute).
    pub command: String,
    pub args: Vec<String>,
    /// Fed to the command's standard input.
    pub stdin: Option<Vec<u8>>,
    /// Kill the command after this long (60 s when unset).
    pub timeout: Option<Duration>,
    /// Cap on each of stdout and stderr (`agent.exec_output_max_bytes` when unset or larger).
    pub output_max_bytes: Option<u64>,
}

fn agent_err(name: &str) -> impl FnOnce(AgentError) -> OpsError + '_ {
    move |source| OpsError::Agent { name: name.into(), source }
}

impl Ops {
    pub(super) fn agent_timeout(&self) -> Duration {
        Duration::from_secs(self.cfg.agent.timeout_s)
    }

    fn agent_vm(&self, name: &str) -> Result<Vm, OpsError> {
        let vm = self.active(name)?;
        let profile = self.profiles.get(&vm.spec.os_variant)?;
        if !profile.devices.guest_agent {
            return Err(OpsError::invalid(
                "name",
                format!("VM {name:?} has no guest agent channel (profile {:?})", profile.name),
            ));
        }
        Ok(vm)
    }

    /// Checks the guest agent answers; returns the round trip.
    ///
    /// # Errors
    /// "no guest agent answered in N s" and the like.
    pub async fn guest_ping(&self, name: &str) -> Result<Duration, OpsError> {
        let vm = self.agent_vm(name)?;
        files::ping(&vm.paths.qga_sock(), self.agent_timeout()).await.map_err(agent_err(name))
    }

    /// Runs a command in the guest and returns its exit code and (capped) output. A
    /// command that outlives its timeout is killed and reported with `timed_out`.
    ///
    /// # Errors
    /// Agent failures; cancellation (the command is killed first).
    pub async fn guest_exec(
        &self,
        name: &str,
        req: GuestExecRequest,
        progress: ProgressFn<'_>,
        cancel: &CancellationToken,
    ) -> Result<ExecResult, OpsError> {
        if req.command.trim().is_empty() {
            return Err(OpsError::invalid("command", "give the program to run, e.g. \"/bin/echo\""));
        }
        let vm = self.agent_vm(name)?;
        let max = req.output_max_bytes.unwrap_or(u64::MAX).min(self.cfg.agent.exec_output_max_bytes);
        let r = ExecRequest {
            path: req.command,
            args: req.args,
            stdin: req.stdin,
            timeout: req.timeout.unwrap_or(DEFAULT_EXEC_TIMEOUT).min(MAX_EXEC_TIMEOUT),
            output_max_bytes: usize::try_from(max).unwrap_or(usize::MAX),
        };
        exec::run(&vm.paths.qga_sock(), self.agent_timeout(), &r, progress, cancel).await.map_err(agent_err(name))
    }

    /// Runs a command in the guest, handing its stdout and stderr to `sink` as they
    /// come (at least once a second); nothing is capped or kept here.
    ///
    /// # Errors
    /// Agent failures; cancellation (the command is killed first).
    pub async fn guest_exec_streamed(
        &self,
        name: &str,
        req: &StreamRequest,
        sink: &mut (dyn FnMut(Stream, &[u8]) + Send),
        cancel: &CancellationToken,
    ) -> Result<StreamResult, OpsError> {
        self.guest_exec_streamed_on(None, name, req, sink, cancel).await
    }

    /// [`Ops::guest_exec_streamed`], starting the command on `first` when given (an
    /// agent connection made before the VM resumed, by a pool claim).
    pub(super) async fn guest_exec_streamed_on(
        &self,
        first: Option<AgentClient>,
        name: &str,
        req: &StreamRequest,
        sink: &mut (dyn FnMut(Stream, &[u8]) + Send),
        cancel: &CancellationToken,
    ) -> Result<StreamResult, OpsError> {
        if req.argv.first().is_none_or(|p| p.trim().is_empty()) {
            return Err(OpsError::invalid("command", "give the program to run, e.g. [\"uname\", \"-a\"]"));
        }
        let vm = self.agent_vm(name)?;
        stream::run_on(first, &vm.paths.qga_sock(), self.agent_timeout(), req, sink, cancel)
            .await
            .map_err(agent_err(name))
    }

    /// Waits until the guest agent answers (the guest has booted far enough to take
    /// commands), at most `limit`; fails early when QEMU stops meanwhile.
    ///
    /// # Errors
    /// [`OpsError::Timeout`]; [`OpsError::NotRunning`] when the VM went off.
    pub async fn wait_for_agent(
        &self,
        name: &str,
        limit: Duration,
        cancel: &CancellationToken,
    ) -> Result<(), OpsError> {
        let end = tokio::time::Instant::now() + limit;
        loop {
            let vm = self.agent_vm(name)?;
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(OpsError::Timeout {
                    name: name.into(),
                    what: "an answer of the guest agent",
                    secs: limit.as_secs(),
                });
            }
            // A short try: the agent of a booting guest answers nothing, and each try
            // syncs afresh, so a late start is seen within a second.
            let sock = vm.paths.qga_sock();
            let ping = files::ping(&sock, left.min(Duration::from_secs(1)));
            tokio::select! {
                r = ping => if r.is_ok() { return Ok(()) },
                () = cancel.cancelled() => return Err(OpsError::Cancelled { what: "waiting for the guest agent" }),
            }
            // A refused connection comes back at once: do not spin on it.
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
                () = cancel.cancelled() => return Err(OpsError::Cancelled { what: "waiting for the guest agent" }),
            }
        }
    }

    /// Reads a guest file (at most `max_bytes`, and never more than `agent.file_max_bytes`).
    ///
    /// # Errors
    /// The file is larger than the cap, missing, or the agent failed.
    pub async fn guest_file_read(&self, name: &str, path: &str, max_bytes: Option<u64>) -> Result<FileData, OpsError> {
        let vm = self.agent_vm(name)?;
        let max = max_bytes.unwrap_or(u64::MAX).min(self.cfg.agent.file_max_bytes);
        files::read(&vm.paths.qga_sock(), self.agent_timeout(), path, max).await.map_err(agent_err(name))
    }

    /// Writes a guest file (created or truncated, or appended to); returns bytes written.
    ///
    /// # Errors
    /// Data over `agent.file_max_bytes`, or the agent failed.
    pub async fn guest_file_write(&self, name: &str, path: &str, data: &[u8], append: bool) -> Result<u64, OpsError> {
        let vm = self.agent_vm(name)?;
        files::write(&vm.paths.qga_sock(), self.agent_timeout(), path, data, append, self.cfg.agent.file_max_bytes)
            .await
            .map_err(agent_err(name))
    }

    /// OS, hostname and network interfaces as the guest agent reports them.
    ///
    /// # Errors
    /// The agent cannot be reached.
    pub async fn guest_info(&self, name: &str) -> Result<GuestInfo, OpsError> {
        let vm = self.agent_vm(name)?;
        files::info(&vm.paths.qga_sock(), self.agent_timeout()).await.map_err(agent_err(name))
    }

    /// Asks the guest agent to power the guest off (`guest-shutdown`), for `stop`'s
    /// fallback when the guest ignores the power button.
    ///
    /// # Errors
    /// The agent did not answer or refused.
    pub(crate) async fn agent_shutdown(&self, vm: &Vm) -> Result<(), AgentError> {
        files::shutdown(&vm.paths.qga_sock(), SHUTDOWN_SYNC_TIMEOUT).await
    }
}
