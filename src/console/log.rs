//! The serial log on disk: `serial.log` (QEMU appends to it), `serial.log.1` … `.N`
//! (rotated copies, newest first) and `serial.log.base`, the absolute offset of
//! `serial.log`'s first byte. Offsets handed to callers are absolute, so they stay
//! valid across rotations: a reader resumes where it stopped even if the log was
//! rotated in between (as long as the bytes are still in `serial.log.1`).
//!
//! QEMU keeps the log open for its whole run (with `O_APPEND`) and cannot be told to
//! reopen it, so rotation moves bytes out of the open file. The block-aligned part
//! of the log is copied to `serial.log.1` and then cut out of `serial.log` with
//! `fallocate(FALLOC_FL_COLLAPSE_RANGE)`: the kernel shifts the rest down under the
//! inode lock, so whatever QEMU appends meanwhile lands after it and nothing is
//! lost. The last partial block stays in `serial.log`. Where the file system cannot
//! collapse ranges (tmpfs, or a log smaller than a block) the rest is copied too and
//! the file truncated; only bytes QEMU writes between that last copy and the
//! truncation are lost (logrotate's `copytruncate` trade-off, with a window of
//! microseconds).

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::ConsoleSettings;
use crate::layout::VmPaths;

/// How often the supervisor checks whether the running VM's log needs rotating.
pub const ROTATE_CHECK: std::time::Duration = std::time::Duration::from_secs(10);

/// Most bytes one read returns.
pub const MAX_READ_BYTES: usize = 1024 * 1024;

fn sibling(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// `serial.log.N`.
#[must_use]
pub fn rotated(paths: &VmPaths, n: u32) -> PathBuf {
    sibling(&paths.serial_log(), &format!(".{n}"))
}

fn base_file(paths: &VmPaths) -> PathBuf {
    sibling(&paths.serial_log(), ".base")
}

/// Where the current QEMU run's console output starts (written at each spawn).
fn run_start_file(paths: &VmPaths) -> PathBuf {
    paths.run.join("serial.start")
}

fn len(p: &Path) -> u64 {
    std::fs::metadata(p).map_or(0, |m| m.len())
}

/// Absolute offset of `serial.log`'s first byte.
#[must_use]
pub fn base(paths: &VmPaths) -> u64 {
    std::fs::read_to_string(base_file(paths)).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

/// Absolute offset just past the last byte written so far.
#[must_use]
pub fn end(paths: &VmPaths) -> u64 {
    base(paths) + len(&paths.serial_log())
}

/// Absolute offset where the running QEMU's output begins, if recorded.
#[must_use]
pub fn run_start(paths: &VmPaths) -> Option<u64> {
    std::fs::read_to_string(run_start_file(paths)).ok().and_then(|s| s.trim().parse().ok())
}

/// Called by the supervisor before each QEMU spawn: rotates an oversized log and
/// records where this run's output will start.
///
/// # Errors
/// The log or the marker cannot be written.
pub fn begin_run(paths: &VmPaths, settings: &ConsoleSettings) -> std::io::Result<()> {
    rotate_if_needed(paths, settings)?;
    // A run-directory record of this run only: no flush needed.
    crate::fsutil::write_volatile(&run_start_file(paths), end(paths).to_string().as_bytes())
}

/// Rotates `serial.log` when it is larger than the configured maximum. Returns whether
/// it rotated.
///
/// # Errors
/// Any I/O error; the log is left as it was where possible.
pub fn rotate_if_needed(paths: &VmPaths, settings: &ConsoleSettings) -> std::io::Result<bool> {
    let log = paths.serial_log();
    let size = len(&log);
    if size <= settings.log_max_bytes {
        return Ok(false);
    }
    let mut file = std::fs::OpenOptions::new().read(true).write(true).open(&log)?;
    let block = nix::sys::statvfs::fstatvfs(&file).map_or(0, |s| s.block_size());
    // The collapsed range may not reach the end of the file.
    let cut = (size - 1).checked_div(block).map_or(0, |n| n * block);
    let keep = settings.log_keep > 0;
    let mut copy = None;
    if keep {
        let _ = std::fs::remove_file(rotated(paths, settings.log_keep));
        for n in (1..settings.log_keep).rev() {
            let from = rotated(paths, n);
            if from.exists() {
                std::fs::rename(&from, rotated(paths, n + 1))?;
            }
        }
        // The copy is in place before anything leaves the log.
        let tmp = sibling(&log, ".rotating");
        let mut out = {
            use std::os::unix::fs::OpenOptionsExt as _;
            let mode = crate::fsutil::LOG_MODE;
            std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?
        };
        std::io::copy(&mut (&file).take(cut), &mut out)?;
        std::fs::rename(&tmp, rotated(paths, 1))?;
        copy = Some(out);
    }
    let moved = if cut > 0 && collapse(&file, cut)? {
        cut
    } else {
        // No collapsing here: move everything and truncate.
        file.seek(SeekFrom::Start(cut))?;
        let rest = match copy.as_mut() {
            Some(out) => std::io::copy(&mut file, out)?,
            None => len(&log) - cut,
        };
        file.set_len(0)?;
        cut + rest
    };
    crate::fsutil::write_atomic(&base_file(paths), (base(paths) + moved).to_string().as_bytes())?;
    tracing::debug!(log = %log.display(), bytes = moved, "rotated the serial log");
    Ok(true)
}

/// Cuts the first `len` bytes (a multiple of the block size) out of `file`. `false`
/// when the file system cannot.
fn collapse(file: &std::fs::File, len: u64) -> std::io::Result<bool> {
    use nix::fcntl::{FallocateFlags, fallocate};
    let len = i64::try_from(len).map_err(std::io::Error::other)?;
    match fallocate(file, FallocateFlags::FALLOC_FL_COLLAPSE_RANGE, 0, len) {
        Ok(()) => Ok(true),
        Err(nix::errno::Errno::EOPNOTSUPP | nix::errno::Errno::EINVAL) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// A stretch of raw console bytes at an absolute offset.
#[derive(Debug, Clone, Default)]
pub struct Chunk {
    /// Absolute offset of the first byte.
    pub start: u64,
    pub bytes: Vec<u8>,
    /// The caller asked for an offset that was rotated away; reading resumed later.
    pub skipped: bool,
}

impl Chunk {
    /// Absolute offset just past the last byte.
    #[must_use]
    pub fn end(&self) -> u64 {
        self.start + self.bytes.len() as u64
    }
}

fn read_at(p: &Path, at: u64, max: usize) -> std::io::Result<Vec<u8>> {
    let mut f = match std::fs::File::open(p) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    f.seek(SeekFrom::Start(at))?;
    let mut buf = Vec::new();
    f.take(max as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Reads up to `max` bytes from absolute offset `from`, out of `serial.log.1` when the
/// offset was rotated away but is still there.
///
/// # Errors
/// The log cannot be read.
pub fn read_from(paths: &VmPaths, from: u64, max: usize) -> std::io::Result<Chunk> {
    let max = max.min(MAX_READ_BYTES);
    let base = base(paths);
    if from >= base {
        let bytes = read_at(&paths.serial_log(), from - base, max)?;
        return Ok(Chunk { start: from, bytes, skipped: false });
    }
    let prev = rotated(paths, 1);
    let prev_start = base.saturating_sub(len(&prev));
    if from >= prev_start && prev_start < base {
        let bytes = read_at(&prev, from - prev_start, max)?;
        return Ok(Chunk { start: from, bytes, skipped: false });
    }
    let start = if prev_start < base { prev_start } else { base };
    let mut c = read_from(paths, start, max)?;
    c.skipped = true;
    Ok(c)
}

/// The last `lines` lines (looking back at most `max` bytes).
///
/// # Errors
/// The log cannot be read.
pub fn tail(paths: &VmPaths, lines: usize, max: usize) -> std::io::Result<Chunk> {
    let end = end(paths);
    let max = max.min(MAX_READ_BYTES);
    let from = end.saturating_sub(max as u64).max(base(paths));
    let mut c = read_from(paths, from, max)?;
    // Keep whole lines: the last `lines` newline-terminated lines plus any partial tail.
    let body_end = if c.bytes.last() == Some(&b'\n') { c.bytes.len() - 1 } else { c.bytes.len() };
    let cut = c.bytes[..body_end]
        .iter()
        .enumerate()
        .rev()
        .filter(|(_, b)| **b == b'\n')
        .nth(lines.saturating_sub(1))
        .map_or(0, |(i, _)| i + 1);
    let cut = if lines == 0 { c.bytes.len() } else { cut };
    c.bytes.drain(..cut);
    c.start += cut as u64;
    Ok(c)
}

pub use super::text::clean;

/// What `get_console_log` returns.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct ConsoleLog {
    /// The console text, escape sequences and carriage returns removed.
    pub text: String,
    /// Absolute byte offset of the first byte returned.
    pub start_offset: u64,
    /// Absolute offset after the last byte returned; pass it as `since_offset` to
    /// continue from here.
    pub next_offset: u64,
    /// Part of the asked-for range was rotated away (or cut at the size limit).
    pub truncated: bool,
    /// Where the log lives on the host.
    pub path: PathBuf,
}

impl ConsoleLog {
    /// Builds the answer from a chunk.
    #[must_use]
    pub fn from_chunk(c: &Chunk, truncated: bool, path: PathBuf) -> Self {
        Self { text: clean(&c.bytes), start_offset: c.start, next_offset: c.end(), truncated, path }
    }
}

/// A regex match on the console.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct ConsoleMatch {
    /// The whole line that matched, cleaned.
    pub line: String,
    /// Absolute offset where that line starts.
    pub line_offset: u64,
    /// Absolute offset after the line; pass it as `since_offset` to wait for what follows.
    pub next_offset: u64,
    /// Milliseconds spent waiting.
    pub waited_ms: u64,
}

/// Longest console pattern accepted.
pub const MAX_PATTERN_CHARS: usize = 1024;
/// Memory a compiled pattern may use (program and lazy DFA each), so no pattern can
/// make the matcher grow without bound.
const MAX_PATTERN_PROGRAM_BYTES: usize = 1 << 20;
/// Deepest nesting of groups and repetitions in a pattern: the parser recurses per
/// level, and the regex crate's default (250) overflowed a 2 MiB thread stack in a debug
/// build (the console fuzzer's corpus, replayed by the tests).
const MAX_PATTERN_NESTING: u32 = 32;

/// Compiles a caller's console pattern (a regular expression) under the limits: at
/// most [`MAX_PATTERN_CHARS`] characters, at most [`MAX_PATTERN_NESTING`] levels deep,
/// and bounded program and DFA sizes.
///
/// # Errors
/// Why the pattern is refused, for [`crate::console::ConsoleError::BadPattern`].
pub fn compile_pattern(pattern: &str) -> Result<regex::Regex, String> {
    if pattern.chars().count() > MAX_PATTERN_CHARS {
        return Err(format!("it is longer than {MAX_PATTERN_CHARS} characters; match a shorter part of the line"));
    }
    regex::RegexBuilder::new(pattern)
        .size_limit(MAX_PATTERN_PROGRAM_BYTES)
        .dfa_size_limit(MAX_PATTERN_PROGRAM_BYTES)
        .nest_limit(MAX_PATTERN_NESTING)
        .build()
        .map_err(|e| e.to_string())
}

/// Most bytes of an unfinished line the matcher keeps: of a longer one, only the last
/// this many are searched (a guest printing no newline must not grow it forever).
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// Incremental line matcher over console bytes.
#[derive(Debug)]
pub struct Matcher {
    re: regex::Regex,
    /// Bytes of the line under way and its absolute start.
    line: Vec<u8>,
    line_start: u64,
}

impl Matcher {
    /// Starts matching at absolute offset `at`.
    #[must_use]
    pub fn new(re: regex::Regex, at: u64) -> Self {
        Self { re, line: Vec::new(), line_start: at }
    }

    /// Feeds the next chunk; returns the first match, looking at complete lines and at
    /// the unfinished last line (prompts such as `login: ` end without a newline).
    pub fn feed(&mut self, c: &Chunk) -> Option<(String, u64, u64)> {
        if c.start != self.line_start + self.line.len() as u64 {
            // Bytes were rotated away in between: start over at the chunk.
            self.line.clear();
            self.line_start = c.start;
        }
        let mut rest = &c.bytes[..];
        while let Some(i) = rest.iter().position(|b| *b == b'\n') {
            self.line.extend_from_slice(&rest[..=i]);
            rest = &rest[i + 1..];
            let text = clean(&self.line);
            let (start, next) = (self.line_start, self.line_start + self.line.len() as u64);
            if self.re.is_match(text.trim_end_matches('\n')) {
                return Some((text.trim_end().to_owned(), start, next));
            }
            self.line_start = next;
            self.line.clear();
        }
        self.line.extend_from_slice(rest);
        if self.line.len() > MAX_LINE_BYTES {
            let cut = self.line.len() - MAX_LINE_BYTES;
            self.line.drain(..cut);
            self.line_start += cut as u64;
        }
        let text = clean(&self.line);
        if !self.line.is_empty() && self.re.is_match(&text) {
            let found = (text.trim_end().to_owned(), self.line_start, self.line_start + self.line.len() as u64);
            self.line_start += self.line.len() as u64;
            self.line.clear();
            return Some(found);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::VmName;

    #[test]
    fn deeply_nested_patterns_are_refused_on_a_worker_sized_stack() {
        let nested = |n: usize| format!("{}a{}", "(".repeat(n), ")*".repeat(n));
        // Each level here is a group and a repetition (two toward the limit). On a 2 MiB
        // stack (a tokio worker's): the refusal must not need deep recursion either.
        let result = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || (super::compile_pattern(&nested(200)), super::compile_pattern(&nested(10))))
            .unwrap()
            .join()
            .expect("no stack overflow");
        assert!(result.0.unwrap_err().contains("nest"));
        assert!(result.1.is_ok());
    }

    fn setup() -> (tempfile::TempDir, VmPaths) {
        let d = tempfile::tempdir().unwrap();
        let p = VmPaths::new(d.path(), &d.path().join("run"), &VmName::new("c").unwrap());
        std::fs::create_dir_all(&p.state).unwrap();
        std::fs::create_dir_all(&p.run).unwrap();
        (d, p)
    }

    fn settings(max: u64, keep: u32) -> ConsoleSettings {
        ConsoleSettings { log_max_bytes: max, log_keep: keep }
    }

    #[test]
    fn offsets_survive_rotation() {
        let (_d, p) = setup();
        std::fs::write(p.serial_log(), "one\ntwo\n").unwrap();
        rotate_if_needed(&p, &settings(4, 2)).unwrap();
        std::fs::write(p.serial_log(), "three\n").unwrap();
        let old = read_from(&p, 4, 100).unwrap();
        let new = read_from(&p, 8, 100).unwrap();
        assert_eq!((old.bytes, new.bytes, end(&p)), (b"two\n".to_vec(), b"three\n".to_vec(), 14));
    }

    /// Every rotated byte, oldest first, then the live log.
    fn everything(p: &VmPaths, keep: u32) -> Vec<u8> {
        let mut all = Vec::new();
        for n in (1..=keep).rev() {
            all.extend(std::fs::read(rotated(p, n)).unwrap_or_default());
        }
        all.extend(std::fs::read(p.serial_log()).unwrap());
        all
    }

    #[test]
    fn rotation_while_qemu_appends_loses_nothing() {
        use std::io::Write;
        // On the project's own file system (tmpfs cannot collapse ranges).
        let d = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let p = VmPaths::new(d.path(), &d.path().join("run"), &VmName::new("c").unwrap());
        std::fs::create_dir_all(&p.state).unwrap();
        let mut log = std::fs::OpenOptions::new().create(true).append(true).open(p.serial_log()).unwrap();
        let done = std::sync::atomic::AtomicBool::new(false);
        let keep = 200;
        let (lines, rotations) = std::thread::scope(|s| {
            let writer = s.spawn(|| {
                let mut n = 0u32;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    log.write_all(format!("line {n:08}\n").as_bytes()).unwrap();
                }
                n
            });
            let mut rotations = 0;
            while rotations < 100 {
                if rotate_if_needed(&p, &settings(8192, keep)).unwrap() {
                    rotations += 1;
                }
            }
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            (writer.join().unwrap(), rotations)
        });
        let all = everything(&p, keep);
        let want: Vec<u8> = (1..=lines).flat_map(|n| format!("line {n:08}\n").into_bytes()).collect();
        assert_eq!((rotations, all.len(), base(&p) + len(&p.serial_log())), (100, want.len(), want.len() as u64));
        assert!(all == want, "a rotation lost or repeated console bytes");
    }

    #[test]
    fn small_log_is_moved_whole() {
        let (_d, p) = setup();
        std::fs::write(p.serial_log(), "0123456789\n").unwrap();
        assert!(rotate_if_needed(&p, &settings(4, 1)).unwrap());
        assert_eq!((everything(&p, 1), len(&p.serial_log()), base(&p)), (b"0123456789\n".to_vec(), 0, 11));
    }

    #[test]
    fn rotation_keeps_at_most_keep_files() {
        let (_d, p) = setup();
        for i in 0..4 {
            std::fs::write(p.serial_log(), format!("line {i} of the console\n")).unwrap();
            rotate_if_needed(&p, &settings(4, 2)).unwrap();
        }
        let present: Vec<bool> = (1..=3).map(|n| rotated(&p, n).exists()).collect();
        assert_eq!(present, [true, true, false]);
    }

    #[test]
    fn offset_rotated_away_is_flagged() {
        let (_d, p) = setup();
        for _ in 0..3 {
            std::fs::write(p.serial_log(), "0123456789\n").unwrap();
            rotate_if_needed(&p, &settings(4, 1)).unwrap();
        }
        let c = read_from(&p, 0, 100).unwrap();
        assert_eq!((c.start, c.skipped), (22, true));
    }

    #[test]
    fn tail_returns_last_lines_and_their_offset() {
        let (_d, p) = setup();
        std::fs::write(p.serial_log(), "a\nbb\nccc\n").unwrap();
        let c = tail(&p, 2, 1000).unwrap();
        assert_eq!((c.bytes, c.start), (b"bb\nccc\n".to_vec(), 2));
    }

    #[test]
    fn matcher_finds_a_line_split_across_chunks() {
        let mut m = Matcher::new(regex::Regex::new("READY").unwrap(), 100);
        let a = Chunk { start: 100, bytes: b"boot\nFIXTURE-RE".to_vec(), skipped: false };
        let b = Chunk { start: 115, bytes: b"ADY uptime=3\nmore".to_vec(), skipped: false };
        assert_eq!((m.feed(&a), m.feed(&b)), (None, Some(("FIXTURE-READY uptime=3".into(), 105, 128))));
    }

    /// A guest printing without newlines used to grow the unfinished line without
    /// bound while a caller waited (and re-cleaned all of it at every read).
    #[test]
    fn matcher_keeps_a_bounded_tail_of_an_endless_line() {
        let mut m = Matcher::new(regex::Regex::new("END").unwrap(), 0);
        let mb = 1 << 20;
        for i in 0..8u64 {
            let c = Chunk { start: i * mb, bytes: vec![b'x'; 1 << 20], skipped: false };
            assert_eq!(m.feed(&c), None);
        }
        assert_eq!(m.line.len(), MAX_LINE_BYTES);

        let c = Chunk { start: 8 * mb, bytes: b"END".to_vec(), skipped: false };
        let found = m.feed(&c).unwrap();

        assert_eq!((found.1, found.2), (8 * mb + 3 - MAX_LINE_BYTES as u64, 8 * mb + 3));
    }

    #[test]
    fn matcher_sees_an_unterminated_prompt() {
        let mut m = Matcher::new(regex::Regex::new("login: $").unwrap(), 0);
        let c = Chunk { start: 0, bytes: b"Debian\r\nhost login: ".to_vec(), skipped: false };
        assert_eq!(m.feed(&c).map(|f| f.1), Some(8));
    }
}
