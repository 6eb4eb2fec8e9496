//! The guest agent (qemu-ga on the virtio-serial port `org.qemu.guest_agent.0`): a
//! client that syncs on every connection (`client`) and the operations built on it —
//! running commands with a timeout and a kill (`exec`), size-capped file transfer and
//! guest facts (`files`).

pub mod client;
pub mod exec;
pub mod files;

pub use client::AgentClient;

/// Guest agent failures.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("no guest agent answered in {secs} s; is qemu-ga installed and running in the guest?")]
    NoAgent { secs: u64 },
    #[error("cannot connect to the guest agent socket {path}")]
    Connect {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the guest agent did not answer {command} within {secs} s")]
    Timeout { command: &'static str, secs: u64 },
    #[error("the guest agent refused {command}: {message}")]
    Command { command: &'static str, message: String },
    #[error("the guest agent's reply to {command} makes no sense: {reason}")]
    BadReply { command: &'static str, reason: String },
    #[error("the guest agent closed the connection")]
    Closed,
    #[error("guest agent I/O failed")]
    Io(#[source] std::io::Error),
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
            | AgentError::Closed
            | AgentError::Cancelled { .. } => ErrorKind::Unavailable,
            AgentError::Command { .. } | AgentError::TooLarge { .. } => ErrorKind::InvalidInput,
            AgentError::BadReply { .. } | AgentError::Io(_) => ErrorKind::Internal,
        }
    }
}
