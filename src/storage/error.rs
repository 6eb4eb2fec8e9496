//! The storage module's error type. Each variant names the operation that
//! failed and carries the path it failed on; the underlying cause is kept in
//! `#[source]` and never repeated in the message, so a chain printed with
//! ": " reads as one sentence.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

pub use crate::error::ErrorKind;

/// Errors from image creation, inspection, resizing and path confinement.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The target of a create already exists; it is never overwritten.
    #[error("{} already exists", path.display())]
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
    },
    /// A QEMU process has the image open, so it may not be changed.
    #[error("{} is in use by a QEMU process", path.display())]
    InUse {
        /// The image.
        path: PathBuf,
    },
    /// Taking the image lock failed for a reason other than contention.
    #[error("cannot lock {}", path.display())]
    Lock {
        /// The image.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Opening a file failed.
    #[error("cannot open {}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Reading a file or its metadata failed.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Writing, syncing or renaming into place failed.
    #[error("cannot write {}", path.display())]
    Write {
        /// The file being written (the final name, not the temporary one).
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Querying the free space of the filesystem holding `path` failed.
    #[error("cannot query free space for {}", path.display())]
    FreeSpace {
        /// The directory queried.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The filesystem does not have room for the write.
    #[error(
        "not enough free space to write {}: {needed_bytes} bytes needed, {free_bytes} bytes free",
        path.display()
    )]
    InsufficientSpace {
        /// The file that would have been written.
        path: PathBuf,
        /// Bytes the write needs.
        needed_bytes: u64,
        /// Bytes available to unprivileged users on that filesystem.
        free_bytes: u64,
    },
    /// A requested virtual size is unusable.
    #[error("invalid size {size_bytes} bytes for {}: {reason}", path.display())]
    InvalidSize {
        /// The image.
        path: PathBuf,
        /// The requested size.
        size_bytes: u64,
        /// Why it is refused.
        reason: String,
    },
    /// The file is not a well-formed image of the expected format.
    #[error("{} is not a valid {format} image: {reason}", path.display())]
    InvalidImage {
        /// The image.
        path: PathBuf,
        /// The format it was read as.
        format: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The image uses a feature this module does not handle.
    #[error("{} uses an unsupported feature: {feature}", path.display())]
    UnsupportedFeature {
        /// The image.
        path: PathBuf,
        /// The feature, e.g. "encryption".
        feature: String,
    },
    /// A backing file argument is unusable.
    #[error("invalid backing file {} for {}: {reason}", backing.display(), path.display())]
    InvalidBacking {
        /// The overlay being created.
        path: PathBuf,
        /// The backing file given.
        backing: PathBuf,
        /// Why it is refused.
        reason: String,
    },
    /// Following backing files led back to an image already in the chain.
    #[error("backing chain of {} loops back to {}", top.display(), repeated.display())]
    BackingChainCycle {
        /// The image whose chain was followed.
        top: PathBuf,
        /// The image that appeared twice.
        repeated: PathBuf,
    },
    /// The backing chain is longer than allowed.
    #[error("backing chain of {} is longer than {limit} images", top.display())]
    BackingChainTooDeep {
        /// The image whose chain was followed.
        top: PathBuf,
        /// The maximum number of images in a chain.
        limit: usize,
    },
    /// Resolving a caller-given path failed (e.g. it does not exist).
    #[error("cannot resolve {input:?}")]
    ResolvePath {
        /// The path as the caller gave it.
        input: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A caller-given path resolves outside every allowed directory.
    #[error("{input:?} is outside the allowed directories ({})", DirList(allowed))]
    OutsideAllowedDirs {
        /// The path as the caller gave it.
        input: String,
        /// The allowed directories (canonical).
        allowed: Vec<PathBuf>,
    },
    /// A caller-given file name for a new file is unusable.
    #[error("invalid file name {input:?}: {reason}")]
    InvalidFileName {
        /// The name as the caller gave it.
        input: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// An allowed directory from the configuration cannot be resolved.
    #[error("allowed directory {} cannot be resolved", path.display())]
    AllowedDir {
        /// The configured directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// No allowed directories are configured.
    #[error("no allowed directories are configured")]
    NoAllowedDirs,
    /// A caller-given path names something other than a regular file (a FIFO, a
    /// device, a directory, ...), which is refused before anything reads it.
    #[error("{input:?} is {what}, not a regular file")]
    NotAFile {
        /// The path as the caller (or an image header) gave it.
        input: String,
        /// What it is, e.g. "a FIFO".
        what: &'static str,
    },
    /// The file was replaced while it was being opened.
    #[error("{input:?} changed while it was being opened; try again")]
    Changed {
        /// The path as given.
        input: String,
    },
    /// A file is larger than the cap for what it should hold.
    #[error("{} is larger than {limit_bytes} bytes", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The cap.
        limit_bytes: u64,
    },
    /// Something is wrong with the backing file `image` names.
    #[error("backing file of {}", image.display())]
    Backing {
        /// The image whose header names the backing file.
        image: PathBuf,
        /// What is wrong with it.
        #[source]
        source: Box<StorageError>,
    },
    /// An image names a backing file without its format; formats are never guessed.
    #[error(
        "{} names its backing file {backing:?} without a backing format, and kvm-mcp never guesses a format; \
         record it with `qemu-img rebase -u -F qcow2 -b {backing} {}` (or -F raw)",
        image.display(),
        image.display()
    )]
    NoBackingFormat {
        /// The image.
        image: PathBuf,
        /// Its backing file name as stored.
        backing: String,
    },
    /// Blocking file work did not finish within its deadline.
    #[error("{what} did not finish within {limit:?} (a file that does not answer?)")]
    Deadline {
        /// What was being done.
        what: &'static str,
        /// The deadline.
        limit: std::time::Duration,
    },
}

impl StorageError {
    /// The broad class of this error.
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::AlreadyExists { .. } | Self::InUse { .. } => ErrorKind::Conflict,
            Self::Open { source, .. } | Self::ResolvePath { source, .. } => io_kind(source),
            Self::Backing { source, .. } => match source.kind() {
                // A backing file that is missing is the image's fault, not the caller's.
                ErrorKind::NotFound => ErrorKind::InvalidInput,
                kind => kind,
            },
            Self::Deadline { .. } => ErrorKind::Unavailable,
            Self::Read { .. }
            | Self::Write { .. }
            | Self::Lock { .. }
            | Self::FreeSpace { .. }
            | Self::AllowedDir { .. }
            | Self::NoAllowedDirs => ErrorKind::Internal,
            Self::InsufficientSpace { .. } => ErrorKind::Unavailable,
            Self::InvalidSize { .. }
            | Self::InvalidImage { .. }
            | Self::UnsupportedFeature { .. }
            | Self::InvalidBacking { .. }
            | Self::BackingChainCycle { .. }
            | Self::BackingChainTooDeep { .. }
            | Self::OutsideAllowedDirs { .. }
            | Self::InvalidFileName { .. }
            | Self::NotAFile { .. }
            | Self::Changed { .. }
            | Self::TooLarge { .. }
            | Self::NoBackingFormat { .. } => ErrorKind::InvalidInput,
        }
    }

    pub(crate) fn open(path: &Path, source: io::Error) -> Self {
        Self::Open { path: path.to_path_buf(), source }
    }

    pub(crate) fn read(path: &Path, source: io::Error) -> Self {
        Self::Read { path: path.to_path_buf(), source }
    }

    pub(crate) fn write(path: &Path, source: io::Error) -> Self {
        Self::Write { path: path.to_path_buf(), source }
    }

    pub(crate) fn invalid_size(path: &Path, size_bytes: u64, reason: impl Into<String>) -> Self {
        Self::InvalidSize { path: path.to_path_buf(), size_bytes, reason: reason.into() }
    }

    pub(crate) fn unsupported(path: &Path, feature: impl Into<String>) -> Self {
        Self::UnsupportedFeature { path: path.to_path_buf(), feature: feature.into() }
    }
}

fn io_kind(source: &io::Error) -> ErrorKind {
    match source.kind() {
        io::ErrorKind::NotFound => ErrorKind::NotFound,
        io::ErrorKind::InvalidInput | io::ErrorKind::NotADirectory => ErrorKind::InvalidInput,
        _ => ErrorKind::Internal,
    }
}

/// Displays directories as a comma-separated list.
struct DirList<'a>(&'a [PathBuf]);

impl fmt::Display for DirList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, dir) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}", dir.display())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn already_exists_is_conflict() {
        let err = StorageError::AlreadyExists { path: PathBuf::from("/x/disk.qcow2") };

        assert_eq!(err.kind(), ErrorKind::Conflict);
    }

    #[test]
    fn open_of_missing_file_is_not_found() {
        let err = StorageError::open(Path::new("/x"), io::Error::from(io::ErrorKind::NotFound));

        assert_eq!(err.kind(), ErrorKind::NotFound);
    }

    #[test]
    fn message_does_not_repeat_source() {
        let err = StorageError::write(Path::new("/x/a"), io::Error::other("disk on fire"));

        assert_eq!(err.to_string(), "cannot write /x/a");
        assert_eq!(err.source().map(ToString::to_string).as_deref(), Some("disk on fire"));
    }

    #[test]
    fn outside_message_names_allowed_dirs() {
        let err = StorageError::OutsideAllowedDirs {
            input: "../etc/passwd".into(),
            allowed: vec![PathBuf::from("/var/lib/a"), PathBuf::from("/srv/b")],
        };

        assert_eq!(err.to_string(), "\"../etc/passwd\" is outside the allowed directories (/var/lib/a, /srv/b)");
    }
}
