//! Notifications a tool sends while it works: `notifications/message` (MCP logging,
//! filtered by the session's `logging/setLevel`) and `notifications/progress` for long
//! waits, plus the wrapper that races an operation against the caller's cancellation.
// MCP logging is deprecated by SEP-2577 for the 2026 revision; the revisions this
// server speaks (2025-06-18, 2025-11-25) still define it.
#![allow(deprecated)]

use std::future::Future;
use std::time::{Duration, Instant};

use rmcp::model::{LoggingLevel, LoggingMessageNotificationParam, ProgressNotificationParam, ProgressToken};
use rmcp::{Peer, RoleServer};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::ops::Progress;

/// How often a long wait reports that it is still waiting.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// MCP log levels in order (RFC 5424 severities, least severe first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Debug,
    Info,
    Notice,
    Warning,
    Error,
    Critical,
    Alert,
    Emergency,
}

impl Level {
    /// What a session gets before it calls `logging/setLevel`.
    pub const DEFAULT: Level = Level::Info;

    /// Position in severity order.
    #[must_use]
    pub fn rank(self) -> u8 {
        self as u8
    }

    pub(super) fn from_mcp(l: LoggingLevel) -> Self {
        match l {
            LoggingLevel::Debug => Level::Debug,
            LoggingLevel::Info => Level::Info,
            LoggingLevel::Notice => Level::Notice,
            LoggingLevel::Warning => Level::Warning,
            LoggingLevel::Error => Level::Error,
            LoggingLevel::Critical => Level::Critical,
            LoggingLevel::Alert => Level::Alert,
            LoggingLevel::Emergency => Level::Emergency,
        }
    }

    fn to_mcp(self) -> LoggingLevel {
        match self {
            Level::Debug => LoggingLevel::Debug,
            Level::Info => LoggingLevel::Info,
            Level::Notice => LoggingLevel::Notice,
            Level::Warning => LoggingLevel::Warning,
            Level::Error => LoggingLevel::Error,
            Level::Critical => LoggingLevel::Critical,
            Level::Alert => LoggingLevel::Alert,
            Level::Emergency => LoggingLevel::Emergency,
        }
    }
}

/// Sends one log message (`{"vm": …, "message": …}`); a closed peer is ignored.
pub(super) async fn send_log(peer: &Peer<RoleServer>, level: Level, vm: &str, message: String) {
    let data = serde_json::json!({ "vm": vm, "message": message });
    let param = LoggingMessageNotificationParam::new(level.to_mcp(), data).with_logger("kvm-mcp");
    let _ = peer.notify_logging_message(param).await;
}

/// Sends numbered progress notifications for one request, if it asked for them.
pub(super) struct Reporter {
    peer: Peer<RoleServer>,
    token: Option<ProgressToken>,
    sent: u32,
}

impl Reporter {
    pub(super) fn new(peer: Peer<RoleServer>, token: Option<ProgressToken>) -> Self {
        Self { peer, token, sent: 0 }
    }

    /// Sends `message`; progress counts up by one each time, as the spec requires.
    pub(super) async fn send(&mut self, message: impl Into<String>) {
        let Some(token) = self.token.clone() else { return };
        self.sent += 1;
        let p = ProgressNotificationParam::new(token, f64::from(self.sent)).with_message(message);
        let _ = self.peer.notify_progress(p).await;
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
            out = &mut op => return Some(out),
            Some(p) = steps.recv() => reporter.send(p.message).await,
            _ = beat.tick() => {
                let secs = started.elapsed().as_secs();
                reporter.send(format!("waiting for {waiting_for} ({secs} s)")).await;
            }
        }
    }
}
