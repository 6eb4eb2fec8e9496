//! `logging.*`: the tracing filter, an optional log file (JSON lines or text) and how it
//! is rotated.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ConfigError, in_range, invalid};

/// Default `logging.max_file_bytes`: 10 MB, as in the original kvm-mcp.
pub const DEFAULT_LOG_MAX_BYTES: u64 = 10 * 1000 * 1000;
/// Default `logging.keep_files`.
pub const DEFAULT_LOG_KEEP_FILES: u32 = 5;

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLogging {
    pub(super) level: Option<String>,
    pub(super) file: Option<PathBuf>,
    pub(super) json: Option<bool>,
    pub(super) max_file_bytes: Option<u64>,
    pub(super) keep_files: Option<u32>,
}

/// `logging.*`.
#[derive(Debug, Clone, Serialize)]
pub struct LogSettings {
    /// A `tracing` filter such as `info` or `kvm_mcp=debug`.
    pub level: String,
    /// Log file; none means stderr only.
    pub file: Option<PathBuf>,
    /// JSON lines instead of text in the file.
    pub json: bool,
    /// The file is rotated when it would grow past this many bytes.
    pub max_file_bytes: u64,
    /// Rotated files kept (`<file>.1` … `<file>.N`).
    pub keep_files: u32,
}

/// The longest `logging.level` accepted.
const MAX_FILTER_LEN: usize = 256;

/// A filter is targets and levels only (`info`, `kvm_mcp=debug,rmcp=warn`): span and
/// field filters (`[span{field=value}]`) compile their values as regular expressions
/// into a DFA, and a hostile one took minutes to build.
fn check_filter(level: &str) -> Result<(), ConfigError> {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '=' | ',' | '-' | '.');
    if level.len() > MAX_FILTER_LEN || !level.chars().all(ok) {
        return Err(invalid(
            "logging.level",
            format!(
                "{} is not a filter of targets and levels; give a level such as \"info\" or \"debug\", or \
                 targets with levels such as \"kvm_mcp=debug,rmcp=warn\" (at most {MAX_FILTER_LEN} characters; \
                 span and field filters are not accepted)",
                crate::error::quote(level)
            ),
        ));
    }
    Ok(())
}

pub(super) fn resolve(raw: RawLogging) -> Result<LogSettings, ConfigError> {
    let level = raw.level.unwrap_or_else(|| "info".into());
    check_filter(&level)?;
    tracing_subscriber::EnvFilter::try_new(&level).map_err(|e| {
        invalid("logging.level", format!("{level:?} is not a valid filter ({e}); try \"info\" or \"debug\""))
    })?;
    let keep = in_range("logging.keep_files", u64::from(raw.keep_files.unwrap_or(DEFAULT_LOG_KEEP_FILES)), 0, 100, "")?;
    Ok(LogSettings {
        level,
        file: raw.file,
        json: raw.json.unwrap_or(false),
        max_file_bytes: in_range(
            "logging.max_file_bytes",
            raw.max_file_bytes.unwrap_or(DEFAULT_LOG_MAX_BYTES),
            4096,
            u64::MAX,
            " bytes",
        )?,
        keep_files: u32::try_from(keep).unwrap_or(DEFAULT_LOG_KEEP_FILES),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_targets_and_levels_are_filters() {
        for good in ["info", "debug", "kvm_mcp=debug,rmcp=warn", "kvm_mcp::ops=trace", "warn,h2=off"] {
            assert!(super::check_filter(good).is_ok(), "{good}");
        }
        // The fuzzer's find: a span filter whose field value compiles into a huge DFA.
        let hostile = format!("x[{{\"a{}\"}}]=info", ".".repeat(40));
        for bad in [hostile.as_str(), "[span]=debug", "a{b=c}", "info\u{0}", &"a".repeat(300)] {
            let e = super::check_filter(bad).unwrap_err().to_string();
            assert!(e.contains("logging.level") && e.len() < 700, "{bad}: {e}");
        }
    }
}
