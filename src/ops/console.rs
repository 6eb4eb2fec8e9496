//! Serial console operations: read the log (last lines or from an offset), wait for a
//! pattern, and find the socket a terminal attaches to.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::context::Vm;
use super::{Ops, OpsError, Progress, ProgressFn};
use crate::console::ConsoleError;
use crate::console::log::{self, ConsoleLog, ConsoleMatch, Matcher};

/// Lines `get_console_log` returns when neither lines nor an offset is given.
pub const DEFAULT_LINES: usize = 50;
/// Most bytes one `get_console_log` call returns.
pub const MAX_LOG_BYTES: usize = 256 * 1024;
/// How often `wait_for_console` looks at the log.
const POLL: Duration = Duration::from_millis(200);
/// How often it reports progress.
const REPORT_EVERY: Duration = Duration::from_secs(2);
/// Longest wait accepted.
pub const MAX_WAIT: Duration = Duration::from_secs(3600);

/// Which part of the log to return.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConsoleQuery {
    /// The last N lines.
    pub lines: Option<usize>,
    /// Everything from this absolute byte offset (a previous `next_offset`).
    pub since_offset: Option<u64>,
    /// Cap on the bytes returned (at most [`MAX_LOG_BYTES`]).
    pub max_bytes: Option<usize>,
}

fn console_err(vm: &Vm) -> impl FnOnce(ConsoleError) -> OpsError + '_ {
    move |source| OpsError::Console { name: vm.spec.name.to_string(), source }
}

fn read_err(vm: &Vm) -> impl FnOnce(std::io::Error) -> OpsError + '_ {
    move |source| OpsError::Console {
        name: vm.spec.name.to_string(),
        source: ConsoleError::Read { path: vm.paths.serial_log(), source },
    }
}

fn tail_text(vm: &Vm) -> String {
    log::tail(&vm.paths, 5, 4096).map(|c| log::clean(&c.bytes)).unwrap_or_default().trim().replace('\n', " | ")
}

impl Ops {
    /// The serial console log of a VM, running or not: the last `lines` lines (50 by
    /// default), or everything from `since_offset`.
    ///
    /// # Errors
    /// [`OpsError::NotFound`]; the log cannot be read.
    pub fn get_console_log(&self, name: &str, q: ConsoleQuery) -> Result<ConsoleLog, OpsError> {
        let vm = self.load(name)?;
        let max = q.max_bytes.unwrap_or(MAX_LOG_BYTES).clamp(1, MAX_LOG_BYTES);
        let path = vm.paths.serial_log();
        match q.since_offset {
            Some(from) => {
                let c = log::read_from(&vm.paths, from, max).map_err(read_err(&vm))?;
                let cut = c.end() < log::end(&vm.paths);
                Ok(ConsoleLog::from_chunk(&c, c.skipped || cut, path))
            }
            None => {
                let lines = q.lines.unwrap_or(DEFAULT_LINES);
                let c = log::tail(&vm.paths, lines, max).map_err(read_err(&vm))?;
                let truncated =
                    c.start > log::base(&vm.paths) && c.bytes.iter().filter(|b| **b == b'\n').count() < lines;
                Ok(ConsoleLog::from_chunk(&c, truncated, path))
            }
        }
    }

    /// Waits until a line on the serial console matches `pattern` (a regular
    /// expression) and returns it. It looks from `since_offset`, by default from the
    /// start of the current run (of the whole current log when the VM is off), so a
    /// line printed before the call counts too.
    ///
    /// # Errors
    /// A bad pattern, the timeout, the VM stopping, or cancellation.
    pub async fn wait_for_console(
        &self,
        name: &str,
        pattern: &str,
        timeout: Duration,
        since_offset: Option<u64>,
        progress: ProgressFn<'_>,
        cancel: &CancellationToken,
    ) -> Result<ConsoleMatch, OpsError> {
        let vm = self.load(name)?;
        let bad = |reason: String| console_err(&vm)(ConsoleError::BadPattern { pattern: pattern.into(), reason });
        let re = log::compile_pattern(pattern).map_err(bad)?;
        let timeout = timeout.min(MAX_WAIT);
        let active = Self::observe(&vm).status.state.is_active();
        let from = since_offset
            .or_else(|| if active { log::run_start(&vm.paths) } else { None })
            .unwrap_or_else(|| log::base(&vm.paths));
        let mut m = Matcher::new(re, from);
        let mut pos = from;
        let started = Instant::now();
        let mut reported = Instant::now();
        loop {
            // Drain everything written so far before deciding anything.
            loop {
                let c = log::read_from(&vm.paths, pos, log::MAX_READ_BYTES).map_err(read_err(&vm))?;
                if c.bytes.is_empty() {
                    pos = c.end().max(pos);
                    break;
                }
                pos = c.end();
                if let Some((line, line_offset, next_offset)) = m.feed(&c) {
                    let waited_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                    return Ok(ConsoleMatch { line, line_offset, next_offset, waited_ms });
                }
            }
            if !Self::observe(&vm).status.state.is_active() {
                // One last look: QEMU may have written its final lines as it went.
                if log::end(&vm.paths) > pos {
                    continue;
                }
                return Err(console_err(&vm)(ConsoleError::Stopped { pattern: pattern.into(), tail: tail_text(&vm) }));
            }
            if started.elapsed() >= timeout {
                return Err(console_err(&vm)(ConsoleError::NotSeen {
                    pattern: pattern.into(),
                    secs: timeout.as_secs(),
                    tail: tail_text(&vm),
                }));
            }
            if reported.elapsed() >= REPORT_EVERY {
                reported = Instant::now();
                let secs = started.elapsed().as_secs();
                progress(Progress {
                    step: u32::try_from(secs).unwrap_or(u32::MAX),
                    total: u32::try_from(timeout.as_secs()).ok(),
                    message: format!("waiting for /{pattern}/ on the console ({secs} s of {} s)", timeout.as_secs()),
                });
            }
            tokio::select! {
                () = tokio::time::sleep(POLL) => {}
                () = cancel.cancelled() => {
                    return Err(console_err(&vm)(ConsoleError::Cancelled { pattern: pattern.into() }));
                }
            }
        }
    }

    /// The serial console socket of a running VM, for attaching a terminal.
    ///
    /// # Errors
    /// [`OpsError::NotRunning`] when the VM is off.
    pub fn console_socket(&self, name: &str) -> Result<PathBuf, OpsError> {
        Ok(self.active(name)?.paths.serial_sock())
    }
}
