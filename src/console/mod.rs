//! The serial console: its log (rotation, reading by absolute byte offset, pattern
//! search) and attaching a terminal to its socket. QEMU writes `serial.log` itself
//! (chardev `logfile=…,logappend=on`), whether or not anyone is attached.

pub mod attach;
pub mod log;
pub mod text;

/// Console failures.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("pattern {} is not a valid regular expression: {reason}", crate::error::quote(.pattern))]
    BadPattern { pattern: String, reason: String },
    #[error("pattern {} did not appear on the console within {secs} s; last lines: {tail}", crate::error::quote(.pattern))]
    NotSeen { pattern: String, secs: u64, tail: String },
    #[error("the VM stopped before pattern {} appeared on the console; last lines: {tail}", crate::error::quote(.pattern))]
    Stopped { pattern: String, tail: String },
    #[error("waiting for pattern {} was cancelled", crate::error::quote(.pattern))]
    Cancelled { pattern: String },
    #[error("cannot read the console log {path}")]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ConsoleError {
    /// The kind front ends present.
    #[must_use]
    pub fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            ConsoleError::BadPattern { .. } => ErrorKind::InvalidInput,
            ConsoleError::NotSeen { .. } | ConsoleError::Stopped { .. } | ConsoleError::Cancelled { .. } => {
                ErrorKind::Unavailable
            }
            ConsoleError::Read { .. } => ErrorKind::Internal,
        }
    }
}
