//! Progress of a long operation (a boot, a stop, a snapshot, a guest command): each
//! step is handed to a callback that front ends forward (MCP
//! `notifications/progress`, task status) or ignore.

use serde::Serialize;

/// One step of a long operation, for progress notifications.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    /// Steps done so far.
    pub step: u32,
    /// Total steps when known.
    pub total: Option<u32>,
    /// What is happening now.
    pub message: String,
}

/// Receives progress; front ends forward it (MCP `notifications/progress`) or ignore it.
pub type ProgressFn<'a> = &'a (dyn Fn(Progress) + Send + Sync);

/// A progress sink that drops everything.
pub fn no_progress(_: Progress) {}
