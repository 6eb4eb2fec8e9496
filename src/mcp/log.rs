//! MCP logging (`notifications/message`): the levels a session filters by with
//! `logging/setLevel`, and sending one message. Used by the server (its log forwarding)
//! and by long calls (the `notify` module).
// MCP logging is deprecated by SEP-2577 for the 2026 revision; the revisions this
// server speaks still define it.
#![allow(deprecated)]

use rmcp::model::{LoggingLevel, LoggingMessageNotificationParam};
use rmcp::{Peer, RoleServer};

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
