//! Getting a new guest ready: Ignition configs for Fedora CoreOS, cloud-init NoCloud
//! seeds, UEFI firmware, and the install phase of ISO installs (CD-ROM first until
//! the installer reboots or powers off), and the new seed a copy of a VM gets. Builders
//! here are pure; `ops` writes files.

pub mod cloudconfig;
pub mod cloudinit;
pub mod ignition;
pub mod install;
pub mod keys;
pub mod reseed;

/// A provisioning field that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("{field}")]
    KeyFile {
        field: String,
        #[source]
        source: crate::storage::StorageError,
    },
}

impl ProvisionError {
    pub(crate) fn invalid(field: &str, reason: impl Into<String>) -> Self {
        Self::Invalid { field: field.into(), reason: reason.into() }
    }
}

/// RFC 1123 host name.
pub(crate) fn check_hostname(field: &str, h: &str) -> Result<(), ProvisionError> {
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if ok { Ok(()) } else { Err(ProvisionError::invalid(field, format!("{h:?} is not a valid host name"))) }
}

/// A Linux user name.
pub(crate) fn check_user(field: &str, u: &str) -> Result<(), ProvisionError> {
    let mut chars = u.chars();
    let ok = u.len() <= 32
        && chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(ProvisionError::invalid(field, format!("{u:?} is not a user name (lowercase letters, digits, _ and -)")))
    }
}
