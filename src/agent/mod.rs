//! The guest agent (qemu-ga on the virtio-serial port `org.qemu.guest_agent.0`, the
//! VM's `qga.sock`): one client that syncs on every connection and puts a deadline on
//! every read (`client`), and the operations built on it — running commands with a
//! timeout and a kill (`exec`), or with their output shown as it comes (`stream`),
//! size-capped file transfer and guest facts (`files`).
//! Guest IP discovery (`ops::ip`) uses the client directly.

pub mod client;
pub mod exec;
pub mod files;
pub mod stream;

use std::path::PathBuf;

pub use client::AgentClient;

/// Guest agent failures.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("no guest agent answered in {secs} s on {path}; is qemu-ga installed and running in the guest?")]
    NoAgent { path: PathBuf, secs: u64 },
    #[error("cannot connect to the guest agent socket {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the guest agent did not answer {command} within {secs} s")]
    Timeout { command: &'static str, secs: u64 },
    #[error("the guest agent refused {command}: {message}")]
    Command { command: &'static str, message: String },
    #[error("the guest agent's reply to {command} makes no sense: {reason}")]
    BadReply { command: &'static str, reason: String },
    #[error("the guest agent on {path} closed the connection")]
    Closed { path: PathBuf },
    #[error("guest agent I/O on {path} failed")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} is {size} bytes, over the limit of {max} bytes (agent.file_max_bytes)")]
    TooLarge { what: String, size: u64, max: u64 },
    #[error("the guest command (pid {pid}) was cancelled and killed")]
    Cancelled { pid: i64 },
}

impl AgentError {
    /// The kind front ends present.
    #[must_use]
    pub fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            AgentError::NoAgent { .. }
            | AgentError::Connect { .. }
            | AgentError::Timeout { .. }
            | AgentError::Closed { .. }
            | AgentError::Cancelled { .. } => ErrorKind::Unavailable,
            AgentError::Command { .. } | AgentError::TooLarge { .. } => ErrorKind::InvalidInput,
            AgentError::BadReply { .. } | AgentError::Io { .. } => ErrorKind::Internal,
        }
    }
}
