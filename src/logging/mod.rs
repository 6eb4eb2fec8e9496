//! `tracing` set-up: human-readable logs on stderr (stdout may be a protocol), plus an
//! optional log file, text or JSON lines, rotated by size (see [`file`]). Colour only
//! goes to a terminal: MCP hosts, pipes, files and supervisors' logs get plain text.

mod file;

pub use file::RotatingFile;

use std::ffi::OsStr;
use std::io::IsTerminal;

use crate::config::LogSettings;

/// Whether stderr gets ANSI colour: only a terminal does, and not when `NO_COLOR` is
/// set to anything non-empty (<https://no-color.org>).
fn colour_allowed(is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    is_terminal && no_color.is_none_or(OsStr::is_empty)
}

/// Installs the global subscriber: `logging.level` (or `RUST_LOG`) for the file, and for
/// stderr too unless `quiet_stderr`, which limits stderr to warnings.
///
/// # Errors
/// The log file cannot be opened.
pub fn init(settings: &LogSettings, quiet_stderr: bool) -> std::io::Result<()> {
    use tracing_subscriber::prelude::*;
    // rmcp logs every session's handshake and notifications at info: noise unless asked for.
    let level =
        if settings.level.contains("rmcp") { settings.level.clone() } else { format!("{},rmcp=warn", settings.level) };
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&level))
    };
    let stderr_filter = if quiet_stderr && std::env::var_os("RUST_LOG").is_none() {
        tracing_subscriber::EnvFilter::new("warn")
    } else {
        filter()
    };
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(colour_allowed(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR").as_deref()))
        .with_target(false)
        .with_filter(stderr_filter);
    let file = match &settings.file {
        Some(path) => {
            let f = file::RotatingFile::open(path, settings.max_file_bytes, settings.keep_files)?;
            let layer = tracing_subscriber::fmt::layer().with_ansi(false).with_writer(std::sync::Mutex::new(f));
            Some(if settings.json {
                layer.json().with_filter(filter()).boxed()
            } else {
                layer.with_filter(filter()).boxed()
            })
        }
        None => None,
    };
    let _ = tracing_subscriber::registry().with(stderr).with(file).try_init();
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::colour_allowed;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        let cases = [
            colour_allowed(true, None),
            colour_allowed(false, None),
            colour_allowed(true, Some(OsStr::new("1"))),
            colour_allowed(true, Some(OsStr::new(""))),
        ];
        assert_eq!(cases, [true, false, false, true]);
    }
}
