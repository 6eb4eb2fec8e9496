//! Validated names and values, checked once at construction so nothing malformed
//! reaches a path, an ioctl, a netlink request or a QEMU option: VM names (a directory
//! name, part of socket paths and the stem of ≤15-byte tap names `<name>-<nic>`),
//! interface names, MAC addresses and port-forward rules.

mod error;
mod forward;
mod ifname;
mod mac;

use std::fmt;
use std::str::FromStr;

use crate::error::quote;

pub use error::IdError;
pub use forward::{ForwardSelector, PortForward, Protocol};
pub use ifname::{IFNAME_MAX_BYTES, IfName};
pub use mac::{MAC_CANDIDATES_MAX, MacAddr, QEMU_OUI};

/// Longest VM name: `<name>-<digit>` must fit Linux's 15-byte interface names.
pub const VM_NAME_MAX_LEN: usize = 13;

/// Why a VM name was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("VM name is empty")]
    Empty,
    #[error(
        "VM name {} is {len} bytes long; the maximum is {VM_NAME_MAX_LEN} (tap interface names are limited to 15 bytes)",
        quote(.name)
    )]
    TooLong { name: String, len: usize },
    #[error("VM name {} starts with '.'; start it with a letter or digit", quote(.name))]
    LeadingDot { name: String },
    #[error("VM name {} starts with '-', which reads as an option; start it with a letter or digit", quote(.name))]
    LeadingDash { name: String },
    #[error("VM name {} contains {ch:?}; use letters, digits, '-', '_' and '.'", quote(.name))]
    BadChar { name: String, ch: char },
}

/// A VM name: 1..=13 bytes of ASCII letters, digits, `-`, `_`, `.`, not starting with
/// `.` or `-`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct VmName(String);

impl VmName {
    /// Validates `name`.
    ///
    /// # Errors
    /// [`NameError`] naming the rule that was broken.
    pub fn new(name: &str) -> Result<Self, NameError> {
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if let Some(ch) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))) {
            return Err(NameError::BadChar { name: name.into(), ch });
        }
        if name.len() > VM_NAME_MAX_LEN {
            return Err(NameError::TooLong { name: name.into(), len: name.len() });
        }
        if name.starts_with('.') {
            return Err(NameError::LeadingDot { name: name.into() });
        }
        if name.starts_with('-') {
            return Err(NameError::LeadingDash { name: name.into() });
        }
        Ok(Self(name.to_owned()))
    }

    /// The name as a string slice.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The tap interface name of NIC `index` (0..=9): `<name>-<index>`.
    #[must_use]
    pub fn tap_name(&self, index: u8) -> String {
        format!("{}-{}", self.0, index.min(9))
    }
}

impl fmt::Display for VmName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for VmName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl<'de> serde::Deserialize<'de> for VmName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        VmName::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_name_is_accepted() {
        assert_eq!(VmName::new("web-1.a_b").unwrap().as_str(), "web-1.a_b");
    }

    #[test]
    fn empty_name_is_refused() {
        assert_eq!(VmName::new(""), Err(NameError::Empty));
    }

    #[test]
    fn leading_dot_is_refused() {
        assert!(matches!(VmName::new(".hidden"), Err(NameError::LeadingDot { .. })));
    }

    #[test]
    fn leading_dash_is_refused() {
        assert_eq!(VmName::new("-rf"), Err(NameError::LeadingDash { name: "-rf".into() }));
    }

    #[test]
    fn slash_is_refused() {
        assert_eq!(VmName::new("a/b"), Err(NameError::BadChar { name: "a/b".into(), ch: '/' }));
    }

    #[test]
    fn dotdot_is_refused() {
        assert!(VmName::new("..").is_err());
    }

    #[test]
    fn fourteen_bytes_is_too_long() {
        assert!(matches!(VmName::new("abcdefghijklmn"), Err(NameError::TooLong { len: 14, .. })));
    }

    #[test]
    fn longest_name_gives_fifteen_byte_tap_name() {
        let n = VmName::new("abcdefghijklm").unwrap();
        assert_eq!(n.tap_name(9).len(), 15);
    }

    #[test]
    fn non_ascii_is_refused() {
        assert!(matches!(VmName::new("vmé"), Err(NameError::BadChar { ch: 'é', .. })));
    }

    #[test]
    fn a_huge_bad_name_is_not_echoed_whole() {
        let e = VmName::new(&"/".repeat(10 << 20)).unwrap_err().to_string();
        assert!(e.len() < 400, "{} bytes", e.len());
    }

    #[test]
    fn error_message_names_the_limit() {
        let e = VmName::new("abcdefghijklmnop").unwrap_err().to_string();
        assert!(e.contains("maximum is 13"), "{e}");
    }
}
