//! A size-based rotating log file: `kvm_mcp.log` grows to a limit, then becomes
//! `kvm_mcp.log.1` (the older ones shift up to `.N`, the oldest is dropped) and a fresh
//! file starts. Written by hand: the rule is twenty lines and the crates that do it
//! bring time-based rotation and background threads we do not want.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// An append-only file that rotates itself before a write would pass `max_bytes`.
#[derive(Debug)]
pub struct RotatingFile {
    path: PathBuf,
    file: File,
    written: u64,
    max_bytes: u64,
    keep: u32,
}

fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

impl RotatingFile {
    /// Opens (or creates) `path` for appending, creating its directory.
    ///
    /// # Errors
    /// The directory or file cannot be created.
    pub fn open(path: &Path, max_bytes: u64, keep: u32) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).mode(crate::fsutil::LOG_MODE).open(path)?;
        let written = file.metadata()?.len();
        Ok(Self { path: path.to_owned(), file, written, max_bytes, keep })
    }

    fn rotate(&mut self) -> io::Result<()> {
        if self.keep == 0 {
            self.file.set_len(0)?;
        } else {
            for n in (1..self.keep).rev() {
                let from = rotated(&self.path, n);
                if from.exists() {
                    std::fs::rename(&from, rotated(&self.path, n + 1))?;
                }
            }
            std::fs::rename(&self.path, rotated(&self.path, 1))?;
            self.file = OpenOptions::new().create(true).append(true).mode(crate::fsutil::LOG_MODE).open(&self.path)?;
        }
        self.written = 0;
        Ok(())
    }
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let len = buf.len() as u64;
        if self.written > 0 && self.written.saturating_add(len) > self.max_bytes {
            self.rotate()?;
        }
        let n = self.file.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_lines(f: &mut RotatingFile, n: usize) {
        for i in 0..n {
            writeln!(f, "line {i:04}").unwrap();
        }
    }

    #[test]
    fn rotates_past_the_limit_and_keeps_n_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kvm_mcp.log");
        let mut f = RotatingFile::open(&path, 100, 2).unwrap();
        write_lines(&mut f, 50); // 10 bytes a line: five files' worth
        let names: Vec<bool> = ["kvm_mcp.log", "kvm_mcp.log.1", "kvm_mcp.log.2", "kvm_mcp.log.3"]
            .iter()
            .map(|n| dir.path().join(n).exists())
            .collect();
        assert_eq!(names, [true, true, true, false]);
    }

    #[test]
    fn no_file_passes_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kvm_mcp.log");
        let mut f = RotatingFile::open(&path, 100, 2).unwrap();
        write_lines(&mut f, 50);
        let sizes: Vec<u64> = ["kvm_mcp.log", "kvm_mcp.log.1", "kvm_mcp.log.2"]
            .iter()
            .map(|n| std::fs::metadata(dir.path().join(n)).unwrap().len())
            .collect();
        assert!(sizes.iter().all(|s| *s <= 100), "{sizes:?}");
    }

    #[test]
    fn reopening_continues_the_count() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kvm_mcp.log");
        write_lines(&mut RotatingFile::open(&path, 100, 1).unwrap(), 9);
        write_lines(&mut RotatingFile::open(&path, 100, 1).unwrap(), 2);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 10);
    }

    #[test]
    fn log_and_its_rotations_are_0640() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kvm_mcp.log");
        write_lines(&mut RotatingFile::open(&path, 100, 1).unwrap(), 15);
        let modes: Vec<u32> = ["kvm_mcp.log", "kvm_mcp.log.1"]
            .iter()
            .map(|n| std::fs::metadata(dir.path().join(n)).unwrap().permissions().mode() & 0o777)
            .collect();
        assert_eq!(modes, [0o640, 0o640]);
    }
}
