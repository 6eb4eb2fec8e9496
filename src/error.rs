//! The crate's top-level error and its `kind()`, which front ends use to pick an HTTP
//! status, shape an MCP tool error or choose a CLI exit code without downcasting.

use std::fmt;

/// What sort of failure an error is, independent of where it happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The named thing does not exist.
    NotFound,
    /// The request clashes with the current state (name taken, VM running, ...).
    Conflict,
    /// The caller passed something malformed or impossible.
    InvalidInput,
    /// A resource the operation needs is missing or not answering.
    Unavailable,
    /// A bug or an unexpected host failure.
    Internal,
}

impl ErrorKind {
    /// Process exit code used by the CLI for this kind.
    #[must_use]
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorKind::InvalidInput => 2,
            ErrorKind::NotFound => 3,
            ErrorKind::Conflict => 4,
            ErrorKind::Unavailable => 5,
            ErrorKind::Internal => 1,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::NotFound => "not found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::InvalidInput => "invalid input",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Internal => "internal error",
        })
    }
}

/// Joins an error and its sources with ": ", the way every front end prints errors.
#[must_use]
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.ends_with(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}

/// At most this many characters of a caller's bad value are quoted back in an error.
pub const QUOTE_MAX_CHARS: usize = 200;

/// `value` quoted for an error message (`"abc"`), cut to [`QUOTE_MAX_CHARS`] characters
/// with its full length noted, so a 10 MB bad argument never comes back whole.
#[must_use]
pub fn quote(value: &str) -> String {
    match value.char_indices().nth(QUOTE_MAX_CHARS) {
        None => format!("{value:?}"),
        Some((cut, _)) => format!("{:?}… ({} bytes in all)", &value[..cut], value.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_value_is_quoted_whole() {
        assert_eq!(quote("a\"b"), r#""a\"b""#);
    }

    #[test]
    fn long_value_is_cut_and_measured() {
        let q = quote(&"é".repeat(5000));

        assert_eq!(
            (q.chars().filter(|c| *c == 'é').count(), q.ends_with("… (10000 bytes in all)")),
            (QUOTE_MAX_CHARS, true)
        );
    }
}
