//! The one rule for every host path a caller names: disk images and every file of
//! their backing chains, master images, ISOs, kernels, initrds, SSH key files.
//!
//! A path resolves, through every symlink and `..`, inside the configured
//! directories; it is a regular file (a block device only where the configuration
//! allows it); it is opened without ever blocking: first with `O_PATH`, which opens
//! nothing for real, so a FIFO or a device is refused by its type before anything
//! reads it, then re-opened through `/proc/self/fd/N` with `O_NONBLOCK | O_NOCTTY`
//! (same inode, no second lookup); the descriptor's real path is checked again after
//! the open, which catches a symlink swapped in between check and open; and its
//! contents are read with a size cap. Files kvm-mcp recorded itself (a VM's disks)
//! are opened by [`open_recorded`]: the same non-blocking open and type check,
//! without the directory check.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use super::error::StorageError;

/// At most this many characters of a caller's value are quoted in an error.
pub const MAX_QUOTED_CHARS: usize = 200;

/// `s`, cut to [`MAX_QUOTED_CHARS`] characters (with a note of how much was cut), so
/// an error never echoes a huge value back.
#[must_use]
pub fn clip(s: &str) -> String {
    match s.char_indices().nth(MAX_QUOTED_CHARS) {
        Some((at, _)) => format!("{}… ({} more bytes)", &s[..at], s.len() - at),
        None => s.to_owned(),
    }
}

/// What an opened host file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file.
    Regular,
    /// A block device (only where `storage.allow_block_devices` is set).
    BlockDevice,
}

/// The directories a class of caller paths must resolve inside, canonical.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedDirs {
    dirs: Vec<PathBuf>,
    block_devices: bool,
}

/// A host file opened under the rule: its real path, the open descriptor (read-only,
/// non-blocking, close-on-exec) and its kind and size, as `fstat` saw them.
#[derive(Debug)]
pub struct HostFile {
    path: PathBuf,
    file: File,
    kind: FileKind,
    len: u64,
}

impl AllowedDirs {
    /// The canonical forms of `dirs`; relative caller paths resolve in the first.
    ///
    /// # Errors
    /// `NoAllowedDirs` for an empty list; `AllowedDir` for one that cannot be resolved.
    pub fn new(dirs: &[PathBuf]) -> Result<Self, StorageError> {
        Ok(Self { dirs: canonical_dirs(dirs)?, block_devices: false })
    }

    /// Whether block devices count as files here (`storage.allow_block_devices`).
    #[must_use]
    pub fn with_block_devices(mut self, allow: bool) -> Self {
        self.block_devices = allow;
        self
    }

    /// The directories, canonical.
    #[must_use]
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Whether the canonical path `real` lies inside one of the directories.
    #[must_use]
    pub fn contains(&self, real: &Path) -> bool {
        self.dirs.iter().any(|d| real.starts_with(d))
    }

    /// The canonical path `input` names, which must lie inside the directories. A
    /// bare name is looked up in each directory in turn; other relative paths
    /// resolve in the first. Nothing is opened.
    ///
    /// # Errors
    /// `OutsideAllowedDirs`, `ResolvePath` (missing inside them), `InvalidFileName`.
    pub fn resolve(&self, input: &str) -> Result<PathBuf, StorageError> {
        check_input(input)?;
        let named = if input.contains('/') {
            self.dirs[0].join(input)
        } else {
            self.dirs
                .iter()
                .map(|d| d.join(input))
                .find(|c| fs::symlink_metadata(c).is_ok())
                .unwrap_or_else(|| self.dirs[0].join(input))
        };
        self.canonical_inside(input, &named)
    }

    /// Resolves `input` as [`AllowedDirs::resolve`] does and opens it under the rule.
    ///
    /// # Errors
    /// As [`AllowedDirs::resolve`]; `NotAFile` for a FIFO, device, directory, socket
    /// (or a block device where they are not allowed); `Changed` when the file was
    /// swapped while being opened; `Open` for an I/O failure.
    pub fn open(&self, input: &str) -> Result<HostFile, StorageError> {
        let real = self.resolve(input)?;
        self.open_real(input, &real)
    }

    /// Opens `named` (a path as some image names it; `input` is how errors quote it)
    /// under the rule.
    ///
    /// # Errors
    /// As [`AllowedDirs::open`].
    pub fn open_named(&self, input: &str, named: &Path) -> Result<HostFile, StorageError> {
        check_input(input)?;
        let real = self.canonical_inside(input, named)?;
        self.open_real(input, &real)
    }

    fn canonical_inside(&self, input: &str, named: &Path) -> Result<PathBuf, StorageError> {
        match fs::canonicalize(named) {
            Ok(real) if self.contains(&real) => Ok(real),
            Ok(_) => Err(self.outside(input)),
            // Do not reveal whether a file outside the allowed directories exists:
            // a name that is outside even lexically is "outside".
            Err(_) if !self.contains(&lexical(named)) => Err(self.outside(input)),
            Err(source) => Err(StorageError::ResolvePath { input: clip(input), source }),
        }
    }

    fn outside(&self, input: &str) -> StorageError {
        StorageError::OutsideAllowedDirs { input: clip(input), allowed: self.dirs.clone() }
    }

    fn open_real(&self, input: &str, real: &Path) -> Result<HostFile, StorageError> {
        let (path, file, kind, len) = open_checked(input, real, false, self.block_devices, Some(self))?;
        Ok(HostFile { path, file, kind, len })
    }
}

impl HostFile {
    /// The real path of the opened file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open descriptor.
    #[must_use]
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Regular file or block device.
    #[must_use]
    pub fn kind(&self) -> FileKind {
        self.kind
    }

    /// Size in bytes (of the device, for a block device).
    #[must_use]
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The whole contents, refusing a file larger than `max_bytes` before reading
    /// any of it (and stopping at `max_bytes` should it grow meanwhile).
    ///
    /// # Errors
    /// `TooLarge`; `Read` for an I/O failure.
    pub fn read_capped(&self, max_bytes: u64) -> Result<Vec<u8>, StorageError> {
        let too_large = || StorageError::TooLarge { path: self.path.clone(), limit_bytes: max_bytes };
        if self.len > max_bytes {
            return Err(too_large());
        }
        let mut buf = Vec::with_capacity(usize::try_from(self.len).unwrap_or(0));
        (&self.file).take(max_bytes + 1).read_to_end(&mut buf).map_err(|e| StorageError::read(&self.path, e))?;
        if buf.len() as u64 > max_bytes {
            return Err(too_large());
        }
        Ok(buf)
    }

    /// The open descriptor, for callers that read it themselves.
    #[must_use]
    pub fn into_file(self) -> File {
        self.file
    }
}

/// Opens a file kvm-mcp recorded itself (a VM's disk, by its canonical path) for
/// reading, or reading and writing, without blocking: a FIFO, character device,
/// socket or directory swapped in since is refused by its type before it is opened.
/// Block devices are accepted (they were allowed when the disk was recorded).
///
/// # Errors
/// `NotAFile`, `Changed`, or `Open` naming the path.
pub fn open_recorded(path: &Path, write: bool) -> Result<(File, FileKind, u64), StorageError> {
    let input = path.to_string_lossy();
    let (_, file, kind, len) = open_checked(&input, path, write, true, None)?;
    Ok((file, kind, len))
}

/// `O_PATH` open, type check, real-path check, re-open through `/proc/self/fd`.
fn open_checked(
    input: &str,
    path: &Path,
    write: bool,
    block_devices: bool,
    allowed: Option<&AllowedDirs>,
) -> Result<(PathBuf, File, FileKind, u64), StorageError> {
    let open_err = |source: io::Error| StorageError::Open { path: path.to_path_buf(), source };
    // O_PATH opens nothing: no FIFO waits for a writer, no device driver runs. With
    // O_NOFOLLOW a last component swapped for a symlink is seen as the link itself.
    let pathfd: OwnedFd = nix::fcntl::open(path, OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| open_err(e.into()))?;
    let meta = File::from(pathfd.try_clone().map_err(open_err)?).metadata().map_err(open_err)?;
    let kind = kind_of(input, &meta, block_devices)?;
    let proc_link = PathBuf::from(format!("/proc/self/fd/{}", pathfd.as_raw_fd()));
    let real = fs::read_link(&proc_link).map_err(open_err)?;
    if let Some(allowed) = allowed
        && !allowed.contains(&real)
    {
        return Err(allowed.outside(input));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(&proc_link)
        .map_err(open_err)?;
    let now = file.metadata().map_err(open_err)?;
    if (now.dev(), now.ino()) != (meta.dev(), meta.ino()) {
        return Err(StorageError::Changed { input: clip(input) });
    }
    let len = match kind {
        FileKind::Regular => now.len(),
        FileKind::BlockDevice => (&file).seek(SeekFrom::End(0)).map_err(open_err)?,
    };
    Ok((real, file, kind, len))
}

fn kind_of(input: &str, meta: &fs::Metadata, block_devices: bool) -> Result<FileKind, StorageError> {
    let ft = meta.file_type();
    let what = if ft.is_file() {
        return Ok(FileKind::Regular);
    } else if ft.is_block_device() {
        if block_devices {
            return Ok(FileKind::BlockDevice);
        }
        "a block device (storage.allow_block_devices is off)"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_dir() {
        "a directory"
    } else if ft.is_symlink() {
        // Only when the last component was swapped for a link after resolving.
        "a symbolic link that appeared while it was being opened"
    } else {
        "not a regular file"
    };
    Err(StorageError::NotAFile { input: clip(input), what })
}

fn check_input(input: &str) -> Result<(), StorageError> {
    let reason = if input.is_empty() {
        "the path is empty"
    } else if input.contains('\0') {
        "the path contains a NUL byte"
    } else {
        return Ok(());
    };
    Err(StorageError::InvalidFileName { input: clip(input), reason })
}

/// Resolves an existing file named by a caller to its canonical path, which
/// must lie inside one of `allowed_dirs` (see [`AllowedDirs::resolve`]).
///
/// # Errors
/// `OutsideAllowedDirs` (naming the allowed directories) if the target lies
/// elsewhere; `ResolvePath` if it does not exist inside them; `AllowedDir` or
/// `NoAllowedDirs` for a bad configuration.
pub fn resolve_confined(input: &str, allowed_dirs: &[PathBuf]) -> Result<PathBuf, StorageError> {
    AllowedDirs::new(allowed_dirs)?.resolve(input)
}

/// Resolves a path for a file that does not exist yet: its parent directory
/// must resolve inside one of `allowed_dirs`, and its last component must be
/// a plain file name (not empty, not `.` or `..`, no NUL). A bare name goes
/// into the first allowed directory.
///
/// # Errors
/// `InvalidFileName` for a bad last component; otherwise as
/// [`resolve_confined`] for the parent.
pub fn resolve_confined_new(input: &str, allowed_dirs: &[PathBuf]) -> Result<PathBuf, StorageError> {
    let (parent, name) = match input.rfind('/') {
        Some(0) => ("/", &input[1..]),
        Some(i) => (&input[..i], &input[i + 1..]),
        None => ("", input),
    };
    check_file_name(input, name)?;
    let allowed = AllowedDirs::new(allowed_dirs)?;
    let dir = if parent.is_empty() {
        allowed.dirs[0].clone()
    } else {
        allowed.canonical_inside(parent, &allowed.dirs[0].join(parent))?
    };
    if !dir.is_dir() {
        return Err(StorageError::ResolvePath {
            input: clip(input),
            source: io::Error::from(io::ErrorKind::NotADirectory),
        });
    }
    Ok(dir.join(name))
}

fn check_file_name(input: &str, name: &str) -> Result<(), StorageError> {
    let reason = match name {
        "" => "the file name is empty",
        "." | ".." => "the file name may not be . or ..",
        n if n.contains('\0') => "the file name contains a NUL byte",
        _ => return Ok(()),
    };
    Err(StorageError::InvalidFileName { input: clip(input), reason })
}

fn canonical_dirs(allowed_dirs: &[PathBuf]) -> Result<Vec<PathBuf>, StorageError> {
    if allowed_dirs.is_empty() {
        return Err(StorageError::NoAllowedDirs);
    }
    allowed_dirs
        .iter()
        .map(|dir| fs::canonicalize(dir).map_err(|source| StorageError::AllowedDir { path: dir.clone(), source }))
        .collect()
}

/// `path` with `.` dropped and `..` applied to the preceding component,
/// without touching the filesystem.
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests;
