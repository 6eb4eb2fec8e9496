//! A guest command whose output is shown while it runs. qemu-ga 7.2 hands a
//! `guest-exec` command's captured output over only once it has exited, so the command
//! runs under `/bin/sh` with its stdout and stderr sent to two files in the guest's
//! `/tmp`, which are read from where the last read stopped (`guest-file-read` on handles
//! kept open) at least once a second until the command exits (on the connection that
//! started it for its first seconds, then on one connection per look); then the files are
//! removed. Timeout and cancellation kill the command's whole process tree as
//! [`super::exec`] does. Needs a POSIX shell in the guest (not for Windows guests).

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::exec::{ExecStatus, HOLD, Started, kill, status};
use super::files::{CHUNK, ReadReply};
use super::{AgentClient, AgentError};

/// Longest pause between two looks at the command.
const MAX_POLL: Duration = Duration::from_millis(250);
/// How often the output files are read while the command runs.
const DRAIN_EVERY: Duration = Duration::from_millis(250);
/// How long the killed command gets to be reaped by the agent.
const KILL_GRACE: Duration = Duration::from_secs(10);
/// Sends the command's output to the files named by `$1` and `$2`, then runs it.
const WRAPPER: &str = "exec >\"$1\" 2>\"$2\" || exit 125; shift 2; exec \"$@\"";

/// Which of the command's outputs a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// A command to run with its output shown as it comes.
#[derive(Debug, Clone)]
pub struct StreamRequest {
    /// The program and its arguments (the program is looked up in the guest's PATH).
    pub argv: Vec<String>,
    /// `NAME=value` entries added to the command's environment.
    pub env: Vec<String>,
    /// Kill the command after this long.
    pub timeout: Duration,
}

/// How a streamed command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamResult {
    pub pid: i64,
    pub exit_code: Option<i64>,
    pub signal: Option<i64>,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    /// It outlived its timeout and was killed.
    pub timed_out: bool,
    pub duration_ms: u64,
}

/// One output file in the guest: its path, the agent's handle once it is open, and how
/// much was shown.
struct Tail {
    path: String,
    stream: Stream,
    handle: Option<i64>,
    shown: u64,
}

impl Tail {
    /// Shows one read's bytes; true when the file may hold more (a full chunk came).
    fn show(&mut self, r: &ReadReply, sink: &mut (dyn FnMut(Stream, &[u8]) + Send)) -> Result<bool, AgentError> {
        let bytes = r.bytes()?;
        if !bytes.is_empty() {
            self.shown += bytes.len() as u64;
            sink(self.stream, &bytes);
        }
        Ok(!r.eof && bytes.len() >= CHUNK)
    }

    /// Reads on alone from the open file until its end.
    async fn read_rest(
        &mut self,
        c: &mut AgentClient,
        sink: &mut (dyn FnMut(Stream, &[u8]) + Send),
    ) -> Result<(), AgentError> {
        let Some(handle) = self.handle else { return Ok(()) };
        loop {
            let r: ReadReply = c.call_as("guest-file-read", json!({ "handle": handle, "count": CHUNK })).await?;
            if !self.show(&r, sink)? {
                return Ok(());
            }
        }
    }
}

/// Decodes a `return` value of `command`.
fn decode<T: serde::de::DeserializeOwned>(command: &'static str, v: Value) -> Result<T, AgentError> {
    serde_json::from_value(v).map_err(|e| AgentError::BadReply { command, reason: e.to_string() })
}

/// Shows what was appended to both files since the last look, in two round trips when
/// each holds less than a chunk: the files not open yet are opened together (a file the
/// shell has not made yet is looked for again next time), then both are read together.
async fn drain(
    c: &mut AgentClient,
    tails: &mut [Tail; 2],
    sink: &mut (dyn FnMut(Stream, &[u8]) + Send),
) -> Result<(), AgentError> {
    let closed: Vec<usize> = (0..tails.len()).filter(|&i| tails[i].handle.is_none()).collect();
    if !closed.is_empty() {
        let opens = closed.iter().map(|&i| ("guest-file-open", json!({ "path": tails[i].path, "mode": "r" })));
        for (&i, r) in closed.iter().zip(c.call_many(opens.collect()).await?) {
            match r {
                Ok(h) => tails[i].handle = Some(decode("guest-file-open", h)?),
                Err(AgentError::Command { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    let open: Vec<(usize, i64)> = tails.iter().enumerate().filter_map(|(i, t)| Some((i, t.handle?))).collect();
    let reads = open.iter().map(|(_, h)| ("guest-file-read", json!({ "handle": h, "count": CHUNK })));
    for (&(i, _), r) in open.iter().zip(c.call_many(reads.collect()).await?) {
        let r: ReadReply = decode("guest-file-read", r?)?;
        if tails[i].show(&r, sink)? {
            tails[i].read_rest(c, sink).await?;
        }
    }
    Ok(())
}

/// One look: the command's status and, when `drain` or once it has exited, the new
/// output of both files; after the exit the files are closed and removed on the same
/// connection. The look uses the `held` connection when there is one, else a new one
/// that is dropped afterwards. A short command is mostly asked for its status, and the
/// calls that do not depend on each other go out together.
async fn look(
    sock: &Path,
    timeout: Duration,
    held: Option<&mut AgentClient>,
    pid: i64,
    tails: &mut [Tail; 2],
    sink: &mut (dyn FnMut(Stream, &[u8]) + Send),
    drain_now: bool,
) -> Result<ExecStatus, AgentError> {
    let mut own = None;
    let c = AgentClient::held_or_connect(held, &mut own, sock, timeout).await?;
    // The status first: output written before the exit is then all in the files.
    let st: ExecStatus = c.call_as("guest-exec-status", json!({ "pid": pid })).await?;
    if drain_now || st.exited {
        drain(c, tails, sink).await?;
    }
    if st.exited {
        remove(c, tails).await;
    }
    Ok(st)
}

/// Closes the files and removes them from the guest (`rm` is started, not waited for),
/// in one round trip.
async fn remove(c: &mut AgentClient, tails: &mut [Tail; 2]) {
    let mut calls: Vec<(&'static str, Value)> = tails
        .iter_mut()
        .filter_map(|t| t.handle.take())
        .map(|h| ("guest-file-close", json!({ "handle": h })))
        .collect();
    let rm = json!({ "path": "/bin/rm", "arg": ["-f", "--", &tails[0].path, &tails[1].path] });
    calls.push(("guest-exec", rm));
    match c.call_many(calls).await {
        Ok(replies) => {
            for e in replies.into_iter().filter_map(Result::err) {
                tracing::warn!(error = %e, "cannot close or remove the output files of a guest command");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot close or remove the output files of a guest command"),
    }
}

/// [`remove`] on a connection of its own, after a run that did not end with the
/// command's exit (timeout grace over, cancellation, an agent error).
async fn clean_up(sock: &Path, timeout: Duration, tails: &mut [Tail; 2]) {
    if let Ok(mut c) = AgentClient::connect(sock, timeout).await {
        remove(&mut c, tails).await;
    }
}

/// Runs `req` in the guest behind `sock`, handing its output to `sink` as it comes.
///
/// # Errors
/// Agent failures; [`AgentError::Cancelled`] when `cancel` fired (the command is
/// killed first).
pub async fn run(
    sock: &Path,
    agent_timeout: Duration,
    req: &StreamRequest,
    sink: &mut (dyn FnMut(Stream, &[u8]) + Send),
    cancel: &CancellationToken,
) -> Result<StreamResult, AgentError> {
    run_on(None, sock, agent_timeout, req, sink, cancel).await
}

/// [`run`], starting the command on `first` when given (a connection made before the
/// VM resumed; see [`AgentClient::attach`]).
///
/// # Errors
/// See [`run`].
pub async fn run_on(
    first: Option<AgentClient>,
    sock: &Path,
    agent_timeout: Duration,
    req: &StreamRequest,
    sink: &mut (dyn FnMut(Stream, &[u8]) + Send),
    cancel: &CancellationToken,
) -> Result<StreamResult, AgentError> {
    let started = Instant::now();
    let id = uuid::Uuid::new_v4().simple().to_string();
    let out = format!("/tmp/.kvm-mcp-{id}.out");
    let err = format!("/tmp/.kvm-mcp-{id}.err");
    let mut arg = vec!["-c".to_owned(), WRAPPER.to_owned(), "kvm-mcp-run".to_owned(), out.clone(), err.clone()];
    arg.extend(req.argv.iter().cloned());
    let mut args = json!({ "path": "/bin/sh", "arg": arg, "capture-output": true });
    if !req.env.is_empty() {
        args["env"] = json!(req.env);
    }
    // The connection that starts the command stays for the looks of its first
    // [`HOLD`] (see `exec`); a longer command lets go, so other callers get their turn.
    // The calls below that make a connection of their own (kill, clean-up) let go of
    // it first: the agent's socket serves one client at a time.
    let mut c = match first {
        Some(c) => c,
        None => AgentClient::connect(sock, agent_timeout).await?,
    };
    let pid = c.call_as::<Started>("guest-exec", args).await?.pid;
    let mut held = Some(c);
    let mut tails = [
        Tail { path: out, stream: Stream::Stdout, handle: None, shown: 0 },
        Tail { path: err, stream: Stream::Stderr, handle: None, shown: 0 },
    ];
    let mut poll = Duration::from_millis(10);
    let mut timed_out = false;
    let mut drained = Instant::now();
    let ended = loop {
        let drain = drained.elapsed() >= DRAIN_EVERY;
        if drain {
            drained = Instant::now();
        }
        if started.elapsed() >= HOLD {
            held = None;
        }
        let st = match look(sock, agent_timeout, held.as_mut(), pid, &mut tails, sink, drain).await {
            Ok(st) => st,
            Err(e) => {
                held = None;
                break Err(e);
            }
        };
        if st.exited {
            break Ok(st);
        }
        if timed_out {
            if started.elapsed() > req.timeout + KILL_GRACE {
                break Ok(st);
            }
        } else if started.elapsed() >= req.timeout {
            timed_out = true;
            held = None;
            kill(sock, agent_timeout, pid).await;
        }
        tokio::select! {
            () = tokio::time::sleep(poll) => {}
            () = cancel.cancelled() => {
                drop(held);
                kill(sock, agent_timeout, pid).await;
                let _ = status(sock, agent_timeout, pid).await;
                clean_up(sock, agent_timeout, &mut tails).await;
                return Err(AgentError::Cancelled { pid });
            }
        }
        // Quick looks while a short command may be about to end, then fewer.
        poll = (poll * 3 / 2).min(MAX_POLL);
    };
    drop(held);
    if !ended.as_ref().is_ok_and(|st| st.exited) {
        clean_up(sock, agent_timeout, &mut tails).await;
    }
    let st = ended?;
    // What the shell itself said before (or instead of) the redirection: a guest with
    // no writable /tmp, say.
    for (data, stream) in [(&st.err_data, Stream::Stderr), (&st.out_data, Stream::Stdout)] {
        if let Some(bytes) = data.as_deref().and_then(|d| B64.decode(d).ok()).filter(|b| !b.is_empty()) {
            sink(stream, &bytes);
        }
    }
    Ok(StreamResult {
        pid,
        exit_code: st.exitcode,
        signal: st.signal,
        stdout_bytes: tails[0].shown,
        stderr_bytes: tails[1].shown,
        timed_out,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    })
}
