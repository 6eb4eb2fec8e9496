//! Notifications a tool sends while it works: `notifications/message` (MCP logging,
//! filtered by the session's `logging/setLevel`) and `notifications/progress` for long
//! waits (for a call run as a task, its status message instead), plus the wrapper that
//! races an operation against the caller's cancellation.
// MCP logging is deprecated by SEP-2577 for the 2026 revision; the revisions this
// server speaks (2025-06-18, 2025-11-25) still define it.
#![allow(deprecated)]

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rmcp::model::{ProgressNotificationParam, ProgressToken};
use rmcp::service::RequestContext;
use rmcp::{Peer, RoleServer};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use super::log::Level;
use super::reply::{Reply, ToolResult, fail};
use super::server::KvmMcp;
use super::tasks::TaskProgress;
use crate::ops::{OpsError, Progress};

/// How often a long wait reports that it is still waiting.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// Sends numbered progress notifications for one request, if it asked for them; for a
/// call that runs as a task, sets the task's status message instead.
pub(super) struct Reporter {
    peer: Peer<RoleServer>,
    token: Option<ProgressToken>,
    task: Option<TaskProgress>,
    sent: u32,
}

impl Reporter {
    /// The reporter of the request `ctx`.
    pub(super) fn of(ctx: &RequestContext<RoleServer>) -> Self {
        let task = ctx.extensions.get::<TaskProgress>().cloned();
        Self { peer: ctx.peer.clone(), token: ctx.meta.get_progress_token(), task, sent: 0 }
    }

    /// Sends `message`; progress counts up by one each time, as the spec requires.
    pub(super) async fn send(&mut self, message: impl Into<String>) {
        if let Some(task) = &self.task {
            task.set(message);
            return;
        }
        let Some(token) = self.token.clone() else { return };
        self.sent += 1;
        let p = ProgressNotificationParam::new(token, f64::from(self.sent)).with_message(message);
        let _ = self.peer.notify_progress(p).await;
    }
}

/// Where an operation run by [`KvmMcp::run_long`] sends its progress (`&*forward`
/// is the operation's progress callback). Owned, so the operation's future needs no
/// borrow of it.
pub(super) type Forward = Arc<dyn Fn(Progress) + Send + Sync>;

/// A tool call that may take long: what it reports while it runs and what a
/// cancelled wait tells the caller.
pub(super) struct LongCall<'a> {
    /// The tool's name, for the cancellation message.
    pub tool: &'static str,
    /// The VM it acts on.
    pub vm: &'a str,
    /// The first progress message, if any.
    pub start: Option<String>,
    /// What the heartbeat says the call waits for.
    pub waiting_for: &'a str,
    /// What the VM may still be doing when the caller cancels the wait. `None` when
    /// the operation watches the cancellation itself and ends with its own error.
    pub if_cancelled: Option<&'a str>,
    /// Whether the call changes something and is logged to the session.
    pub log: bool,
}

impl KvmMcp {
    /// Runs `op` for a tool call: forwards its progress, sends a heartbeat while it
    /// waits, and stops waiting when the caller cancels. On success `summarise`
    /// gives the summary, sent as the last progress message (and logged, if the
    /// call changes something); the value and the summary are returned.
    pub(super) async fn run_long<T, F>(
        &self,
        ctx: &RequestContext<RoleServer>,
        call: LongCall<'_>,
        op: impl FnOnce(Forward) -> F,
        summarise: impl FnOnce(&T) -> String,
    ) -> Result<(T, String), String>
    where
        F: Future<Output = Result<T, OpsError>>,
    {
        let mut reporter = Reporter::of(ctx);
        if let Some(start) = call.start {
            reporter.send(start).await;
        }
        let (tx, rx) = mpsc::unbounded_channel::<Progress>();
        let forward: Forward = Arc::new(move |p: Progress| {
            let _ = tx.send(p);
        });
        let never = CancellationToken::new();
        let ct = if call.if_cancelled.is_some() { &ctx.ct } else { &never };
        let Some(done) = drive(&mut reporter, ct, call.waiting_for, rx, op(forward)).await else {
            let note = call.if_cancelled.unwrap_or_default();
            return Err(self.cancelled(ctx, call.tool, call.vm, note).await);
        };
        let value = done.map_err(fail)?;
        let summary = summarise(&value);
        reporter.send(summary.clone()).await;
        if call.log {
            self.log(ctx, Level::Info, call.vm, summary.clone()).await;
        }
        Ok((value, summary))
    }

    /// What a cancelled wait left behind, logged to the session and returned as text.
    pub(super) async fn cancelled(&self, ctx: &RequestContext<RoleServer>, tool: &str, vm: &str, note: &str) -> String {
        let msg = self.cancel_text(tool, vm, note);
        tracing::warn!(vm, "{msg}");
        self.log(ctx, Level::Warning, vm, msg.clone()).await;
        msg
    }

    /// What a cancelled call of `tool` on `vm` left behind: the VM's state now and `note`.
    pub(super) fn cancel_text(&self, tool: &str, vm: &str, note: &str) -> String {
        format!("{tool} cancelled: {}; {note}", self.vm_state(vm))
    }

    /// "VM "x" is running", or why its state cannot be read.
    pub(super) fn vm_state(&self, vm: &str) -> String {
        self.ops().info(vm).map_or_else(fail, |i| format!("VM {vm:?} is {}", i.state))
    }

    /// Logs `summary` for `vm` to the session and wraps `value` as the reply.
    pub(super) async fn logged<T>(
        &self,
        ctx: &RequestContext<RoleServer>,
        vm: &str,
        value: T,
        summary: String,
    ) -> ToolResult<T> {
        self.log(ctx, Level::Info, vm, summary.clone()).await;
        Ok(Reply::new(value, summary))
    }
}

/// Runs `op` until it finishes or `ct` is cancelled (`None`). Meanwhile forwards the
/// operation's own progress from `steps` and, every second of waiting, a heartbeat
/// saying what it waits for.
pub(super) async fn drive<T>(
    reporter: &mut Reporter,
    ct: &CancellationToken,
    waiting_for: &str,
    mut steps: mpsc::UnboundedReceiver<Progress>,
    op: impl Future<Output = T>,
) -> Option<T> {
    let started = Instant::now();
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
    tokio::pin!(op);
    loop {
        tokio::select! {
            biased;
            () = ct.cancelled() => return None,
            out = &mut op => {
                // Steps the operation reported just before it ended are still due.
                while let Ok(p) = steps.try_recv() {
                    reporter.send(p.message).await;
                }
                return Some(out);
            }
            Some(p) = steps.recv() => reporter.send(p.message).await,
            _ = beat.tick() => {
                let secs = started.elapsed().as_secs();
                reporter.send(format!("waiting for {waiting_for} ({secs} s)")).await;
            }
        }
    }
}
