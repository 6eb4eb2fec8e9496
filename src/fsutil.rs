//! Small file-system helpers: atomic writes (temp file, fsync, rename, fsync the
//! directory) so a crash never leaves a half-written state file, and appending lines.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Mode of every log kvm-mcp creates (`qemu.log`, `supervisor.log`, `events.jsonl`,
/// serial log rotations, the server's log): the owner writes, its group reads.
pub const LOG_MODE: u32 = 0o640;

/// Writes `data` to `path` atomically and durably (the file and the rename are
/// fsynced): for definitions that must survive a power loss.
///
/// # Errors
/// Any I/O error; the temporary file is removed on failure.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    write_replace(path, data, true)
}

/// Writes `data` to `path` atomically for readers (temp file + rename) without waiting
/// for the disk. For status records rewritten on every transition: a power loss kills
/// the VMs they describe anyway, and readers re-derive liveness from `/proc` and the
/// boot id. Each fsync costs ~12 ms here, which would dominate `start` and `stop`.
///
/// # Errors
/// Any I/O error; the temporary file is removed on failure.
pub fn write_volatile(path: &Path, data: &[u8]) -> std::io::Result<()> {
    write_replace(path, data, false)
}

fn write_replace(path: &Path, data: &[u8], durable: bool) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        if durable {
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        if durable {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// Serialises `value` as pretty JSON and writes it atomically and durably.
///
/// # Errors
/// See [`write_atomic`].
pub fn write_json_atomic<T: serde::Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    write_atomic(path, &json(value)?)
}

/// Serialises `value` as pretty JSON and writes it with [`write_volatile`].
///
/// # Errors
/// See [`write_volatile`].
pub fn write_json_volatile<T: serde::Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    write_volatile(path, &json(value)?)
}

fn json<T: serde::Serialize>(value: &T) -> std::io::Result<Vec<u8>> {
    let mut data = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    data.push(b'\n');
    Ok(data)
}

/// Appends one line (a single `write`, so concurrent appenders do not interleave);
/// a new file is created with [`LOG_MODE`].
///
/// # Errors
/// Any I/O error.
pub fn append_line(path: &Path, line: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).mode(LOG_MODE).open(path)?;
    let mut buf = String::with_capacity(line.len() + 1);
    buf.push_str(line);
    buf.push('\n');
    f.write_all(buf.as_bytes())
}

/// The last `n` lines of a text file (reads at most the last 64 KiB).
#[must_use]
pub fn tail_lines(path: &Path, n: usize) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else { return Vec::new() };
    let len = f.metadata().map_or(0, |m| m.len());
    let start = len.saturating_sub(64 * 1024);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return Vec::new();
    }
    let mut buf = Vec::new();
    if f.read_to_end(&mut buf).is_err() {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].iter().map(|s| (*s).to_owned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        let names: Vec<_> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!((std::fs::read_to_string(&p).unwrap(), names.len()), ("two".into(), 1));
    }

    #[test]
    fn tail_returns_last_lines() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("log");
        std::fs::write(&p, "a\nb\n\nc\nd\n").unwrap();
        assert_eq!(tail_lines(&p, 2), ["c", "d"]);
    }
}
