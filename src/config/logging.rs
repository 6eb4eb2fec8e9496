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

pub(super) fn resolve(raw: RawLogging) -> Result<LogSettings, ConfigError> {
    let level = raw.level.unwrap_or_else(|| "info".into());
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
