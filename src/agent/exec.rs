//! `guest_exec`: start a command with `guest-exec` (output captured), poll
//! `guest-exec-status`, and enforce a timeout and cancellation. The connection that
//! starts a command is kept for its looks during its first [`HOLD`], so a short command
//! ends on it: qemu-ga on virtio-serial looks for a new client only every 100 ms once
//! the last one has gone, so each new connection costs up to that. A longer command is
//! then looked at on short-lived connections, so other agent calls can get in between.
//!
//! qemu-ga 7.2 has no command to kill what `guest-exec` started, so on timeout or
//! cancellation a second `guest-exec` kills it: on Linux guests `/bin/sh` walks
//! `/proc/<pid>/task/*/children` (or every `/proc/*/stat` where that file is missing)
//! and SIGKILLs the whole tree, each process stopped before its children are killed so
//! it cannot carry on; on Windows guests
//! `taskkill /F /T /PID`. Killing needs those tools in the guest; when the kill cannot
//! run, the result says `killed: false`.

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{AgentClient, AgentError};
use crate::progress::{Progress, ProgressFn};

/// Longest pause between two status polls.
const MAX_POLL: Duration = Duration::from_millis(500);
/// How long the killed command gets to be reaped by the agent.
const KILL_GRACE: Duration = Duration::from_secs(10);
/// Kills a process tree on a Linux guest; `$1` is the pid. Each process is stopped
/// first (so it can neither go on with its script nor start more children), then its
/// children are killed, then it. Children come from `/proc/<pid>/task/*/children`, or
/// from scanning every `/proc/*/stat` for the parent pid on kernels without that file.
const LINUX_KILL: &str = "kids() { if [ -e /proc/$1/task/$1/children ]; then cat /proc/$1/task/*/children; \
else for s in /proc/[0-9]*/stat; do read -r p c st pp r < $s 2>/dev/null && [ \"$pp\" = \"$1\" ] && echo $p; done; fi; }; \
k() { kill -STOP $1 2>/dev/null; for c in $(kids $1); do k $c; done; kill -KILL $1 2>/dev/null; }; k \"$1\"";

/// A command to run in the guest.
#[derive(Debug, Clone)]
pub struct ExecRequest {
    /// Program (looked up in the guest's PATH when not absolute).
    pub path: String,
    pub args: Vec<String>,
    /// Bytes fed to the command's stdin.
    pub stdin: Option<Vec<u8>>,
    /// Kill the command after this long.
    pub timeout: Duration,
    /// Cap on each of stdout and stderr.
    pub output_max_bytes: usize,
}

/// How a guest command ended.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct ExecResult {
    /// The command's pid in the guest.
    pub pid: i64,
    /// Exit code, when it exited.
    pub exit_code: Option<i64>,
    /// Signal number, when a signal ended it.
    pub signal: Option<i64>,
    /// Standard output (UTF-8, invalid bytes replaced), at most the cap.
    pub stdout: String,
    pub stderr: String,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// It outlived its timeout.
    pub timed_out: bool,
    /// kvm-mcp killed it (after the timeout).
    pub killed: bool,
    pub duration_ms: u64,
}

/// `guest-exec`'s answer.
#[derive(Debug, Deserialize)]
pub(super) struct Started {
    pub(super) pid: i64,
}

/// `guest-exec-status`'s answer.
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub(super) struct ExecStatus {
    pub(super) exited: bool,
    #[serde(default)]
    pub(super) exitcode: Option<i64>,
    #[serde(default)]
    pub(super) signal: Option<i64>,
    #[serde(default)]
    pub(super) out_data: Option<String>,
    #[serde(default)]
    pub(super) err_data: Option<String>,
    #[serde(default)]
    out_truncated: bool,
    #[serde(default)]
    err_truncated: bool,
}

/// How long the connection that started a command is kept for its looks.
pub(super) const HOLD: Duration = Duration::from_secs(2);

pub(super) async fn status(sock: &Path, timeout: Duration, pid: i64) -> Result<ExecStatus, AgentError> {
    status_on(None, sock, timeout, pid).await
}

/// The command's status, asked on `held` when there is a connection, else on a new one.
pub(super) async fn status_on(
    held: Option<&mut AgentClient>,
    sock: &Path,
    timeout: Duration,
    pid: i64,
) -> Result<ExecStatus, AgentError> {
    let mut own = None;
    let c = AgentClient::held_or_connect(held, &mut own, sock, timeout).await?;
    c.call_as("guest-exec-status", json!({ "pid": pid })).await
}

fn decode(data: Option<&str>, max: usize, agent_truncated: bool) -> (String, bool) {
    let bytes = data.and_then(|d| B64.decode(d).ok()).unwrap_or_default();
    let over = bytes.len() > max;
    (String::from_utf8_lossy(&bytes[..bytes.len().min(max)]).into_owned(), over || agent_truncated)
}

/// Kills the process tree rooted at `pid`; returns whether the kill command ran.
pub(super) async fn kill(sock: &Path, timeout: Duration, pid: i64) -> bool {
    let Ok(mut c) = AgentClient::connect(sock, timeout).await else { return false };
    let windows = c
        .call("guest-get-osinfo", serde_json::Value::Null)
        .await
        .ok()
        .and_then(|v| v.get("id").and_then(|i| i.as_str()).map(|s| s == "mswindows"))
        .unwrap_or(false);
    let args = if windows {
        json!({ "path": "taskkill", "arg": ["/F", "/T", "/PID", pid.to_string()], "capture-output": true })
    } else {
        json!({ "path": "/bin/sh", "arg": ["-c", LINUX_KILL, "kvm-mcp-kill", pid.to_string()], "capture-output": true })
    };
    let ok = c.call_as::<Started>("guest-exec", args).await.is_ok();
    tracing::info!(pid, ok, "killed guest command after its timeout or cancellation");
    ok
}

/// Runs `req` in the guest behind `sock`.
///
/// # Errors
/// Agent failures; [`AgentError::Cancelled`] when `cancel` fired (the command is
/// killed first).
pub async fn run(
    sock: &Path,
    agent_timeout: Duration,
    req: &ExecRequest,
    progress: ProgressFn<'_>,
    cancel: &CancellationToken,
) -> Result<ExecResult, AgentError> {
    let started = Instant::now();
    let mut args = json!({ "path": req.path, "arg": req.args, "capture-output": true });
    if let Some(input) = &req.stdin {
        args["input-data"] = json!(B64.encode(input));
    }
    // Calls that make a connection of their own (kill) let go of the held one first:
    // the agent's socket serves one client at a time.
    let mut c = AgentClient::connect(sock, agent_timeout).await?;
    let pid = c.call_as::<Started>("guest-exec", args).await?.pid;
    let mut held = Some(c);
    let deadline = started + req.timeout;
    let mut poll = Duration::from_millis(20);
    let mut last_report = Instant::now();
    let mut timed_out = false;
    let mut killed = false;
    let st = loop {
        if started.elapsed() >= HOLD {
            held = None;
        }
        let st = status_on(held.as_mut(), sock, agent_timeout, pid).await?;
        if st.exited {
            break st;
        }
        if timed_out {
            if started.elapsed() > req.timeout + KILL_GRACE {
                break st;
            }
        } else if Instant::now() >= deadline {
            timed_out = true;
            held = None;
            killed = kill(sock, agent_timeout, pid).await;
            progress(Progress { step: 0, total: None, message: format!("timed out; killed pid {pid}") });
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            let secs = started.elapsed().as_secs();
            progress(Progress {
                step: u32::try_from(secs).unwrap_or(u32::MAX),
                total: u32::try_from(req.timeout.as_secs()).ok(),
                message: format!("guest command pid {pid} running for {secs} s"),
            });
        }
        tokio::select! {
            () = tokio::time::sleep(poll) => {}
            () = cancel.cancelled() => {
                drop(held);
                kill(sock, agent_timeout, pid).await;
                // Collect it, so the agent forgets the process.
                let _ = status(sock, agent_timeout, pid).await;
                return Err(AgentError::Cancelled { pid });
            }
        }
        poll = (poll * 2).min(MAX_POLL);
    };
    let max = req.output_max_bytes;
    let (stdout, stdout_truncated) = decode(st.out_data.as_deref(), max, st.out_truncated);
    let (stderr, stderr_truncated) = decode(st.err_data.as_deref(), max, st.err_truncated);
    Ok(ExecResult {
        pid,
        exit_code: st.exitcode,
        signal: st.signal,
        stdout,
        stderr,
        stdout_truncated,
        stderr_truncated,
        timed_out,
        killed,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_capped_and_flagged() {
        assert_eq!(decode(Some(&B64.encode("hello world")), 5, false), ("hello".into(), true));
    }

    #[test]
    fn agent_truncation_is_kept() {
        assert_eq!(decode(Some(&B64.encode("hi")), 5, true), ("hi".into(), true));
    }
}
