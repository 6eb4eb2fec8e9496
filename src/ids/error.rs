//! Errors of the value types in [`crate::ids`]: a name, MAC or forward rule that
//! failed validation. All are the caller's to fix.

use crate::error::ErrorKind;

/// A value that failed validation.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    /// An interface name failed validation.
    #[error("invalid interface name {name}: {reason}")]
    InvalidIfName {
        /// The rejected name, quoted.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// A MAC address failed to parse or validate.
    #[error("invalid MAC address {input}: {reason}")]
    InvalidMac {
        /// The rejected input, quoted.
        input: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// Every candidate MAC for a NIC was already in use.
    #[error("no free MAC address found for NIC {nic_index} after {attempts} candidates")]
    MacExhausted {
        /// Index of the NIC the MAC was for.
        nic_index: u8,
        /// How many candidates were tried.
        attempts: u32,
    },

    /// A port forward failed to parse or validate.
    #[error("invalid port forward {input}: {reason}")]
    InvalidPortForward {
        /// The rejected input, quoted.
        input: String,
        /// Why it was rejected.
        reason: &'static str,
    },
}

impl IdError {
    /// Classifies the error for front ends.
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::MacExhausted { .. } => ErrorKind::Conflict,
            _ => ErrorKind::InvalidInput,
        }
    }
}
