//! `IfName`: a validated Linux network interface name, used for taps and
//! bridges so nothing malformed reaches an ioctl or a netlink request.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::IdError;
use crate::error::quote;

/// Longest interface name the kernel accepts (`IFNAMSIZ` minus the NUL).
pub const IFNAME_MAX_BYTES: usize = 15;

/// A network interface name, checked at construction.
///
/// Accepted: 1 to [`IFNAME_MAX_BYTES`] bytes of ASCII letters, digits, `-`,
/// `_` and `.`, other than `.` and `..`. This is stricter than the kernel's
/// `dev_valid_name` on purpose: it also refuses `%` (which would make the
/// kernel pick a name from a template) and anything that needs quoting in a
/// shell or a QEMU option.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IfName(String);

impl IfName {
    /// Validates `name` as an interface name.
    ///
    /// # Errors
    ///
    /// [`IdError::InvalidName`] when the name breaks the rules above.
    pub fn new(name: &str) -> Result<Self, IdError> {
        let invalid = |reason| IdError::InvalidIfName { name: quote(name), reason };
        if name.is_empty() {
            return Err(invalid("empty"));
        }
        if name.len() > IFNAME_MAX_BYTES {
            return Err(invalid("longer than 15 bytes"));
        }
        if name == "." || name == ".." {
            return Err(invalid("reserved name"));
        }
        if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
            return Err(invalid("only ASCII letters, digits, '-', '_' and '.' are allowed"));
        }
        Ok(Self(name.to_owned()))
    }

    /// The name as a string slice.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for IfName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for IfName {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for IfName {
    type Error = IdError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(&s)
    }
}

impl From<IfName> for String {
    fn from(name: IfName) -> Self {
        name.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifteen_byte_name_is_accepted() {
        let name = IfName::new("vmtap-abcdefghi");

        assert_eq!(name.map(String::from).ok().as_deref(), Some("vmtap-abcdefghi"));
    }

    #[test]
    fn sixteen_byte_name_is_invalid_input() {
        let err = IfName::new("vmtap-abcdefghij").unwrap_err();

        assert_eq!(err.kind(), crate::error::ErrorKind::InvalidInput);
    }

    #[test]
    fn empty_name_is_refused() {
        assert!(IfName::new("").is_err());
    }

    #[test]
    fn dot_dot_is_refused() {
        assert!(IfName::new("..").is_err());
    }

    #[test]
    fn name_with_slash_is_refused() {
        assert!(IfName::new("a/b").is_err());
    }

    #[test]
    fn template_name_with_percent_is_refused() {
        assert!(IfName::new("tap%d").is_err());
    }

    #[test]
    fn name_with_space_is_refused() {
        assert!(IfName::new("tap 0").is_err());
    }

    #[test]
    fn deserialising_invalid_name_fails() {
        let parsed: Result<IfName, _> = serde_json::from_str("\"a:b\"");

        assert!(parsed.is_err());
    }
}
