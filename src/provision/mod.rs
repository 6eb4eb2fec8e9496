//! Getting a new guest ready: Ignition configs for Fedora CoreOS, cloud-init NoCloud
//! seeds, UEFI firmware, and the install phase of ISO installs (CD-ROM first until
//! the installer reboots or powers off). Builders here are pure; `ops` writes files.

pub mod cloudinit;
pub mod ignition;
pub mod install;

use std::path::PathBuf;

/// A provisioning field that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("{field}: cannot read {}", path.display())]
    ReadKey {
        field: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
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

/// True for an OpenSSH public key line (as opposed to a file path).
fn is_key_literal(s: &str) -> bool {
    ["ssh-", "ecdsa-sha2-", "sk-ssh-", "sk-ecdsa-"].iter().any(|p| s.trim_start().starts_with(p))
}

/// The keys `value` stands for: itself when it is a key, else the key lines of the
/// file it names (`~/` is the home directory).
pub(crate) fn ssh_keys(field: &str, value: &str) -> Result<Vec<String>, ProvisionError> {
    if is_key_literal(value) {
        if value.contains('\n') {
            return Err(ProvisionError::invalid(field, "one key per entry; pass several entries for several keys"));
        }
        return Ok(vec![value.trim().to_owned()]);
    }
    let path = match value.strip_prefix("~/") {
        Some(rest) => std::env::var_os("HOME").map_or_else(|| PathBuf::from(value), |h| PathBuf::from(h).join(rest)),
        None => PathBuf::from(value),
    };
    let text = std::fs::read_to_string(&path).map_err(|source| ProvisionError::ReadKey {
        field: field.into(),
        path: path.clone(),
        source,
    })?;
    let keys: Vec<String> = text.lines().map(str::trim).filter(|l| is_key_literal(l)).map(String::from).collect();
    if keys.is_empty() {
        return Err(ProvisionError::invalid(field, format!("{} holds no SSH public key", path.display())));
    }
    Ok(keys)
}
