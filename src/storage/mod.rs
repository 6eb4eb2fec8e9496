//! Disk images and other host files on the host: the one confinement rule for every
//! host path a caller names (`hostpath`), creating qcow2 images and overlays
//! in-process, inspecting images and resolving their backing chains under that rule,
//! growing them offline, and running blocking file work under a deadline.
//! Nothing here runs `qemu-img`; QEMU's tools are only the test oracle.
//! Every new file is written atomically (temporary file, fsync, rename
//! without replacing, directory fsync) after a free-space check.

mod atomic;
mod copy;
mod deadline;
pub mod error;
pub mod hostpath;
pub mod qcow2;
mod seed;
#[cfg(test)]
mod testutil;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

pub use atomic::remove_temp_siblings;
pub use copy::copy_image;
pub use deadline::{FILE_WORK_DEADLINE, with_deadline};
pub use error::{ErrorKind, StorageError};
pub use hostpath::{AllowedDirs, FileKind, HostFile, resolve_confined, resolve_confined_new};
pub use qcow2::{
    CreateOptions, MAX_CHAIN_LEN, SnapshotInfo, create_blank, create_overlay, inspect, inspect_as, inspect_host_file,
    resize_offline, resize_offline_as, resolve_chain, snapshots,
};
pub use seed::{fat_image, read_fat_files, write_fat_image};

/// On-disk format of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    /// QEMU copy-on-write v2/v3.
    Qcow2,
    /// A plain byte-for-byte disk.
    Raw,
}

impl ImageFormat {
    /// The name QEMU uses for the format (`-F`, `driver=`, the header's
    /// backing-format extension).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Qcow2 => "qcow2",
            Self::Raw => "raw",
        }
    }
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ImageFormat {
    type Err = UnknownFormat;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "qcow2" => Ok(Self::Qcow2),
            "raw" => Ok(Self::Raw),
            other => Err(UnknownFormat(other.to_string())),
        }
    }
}

/// A format name other than `qcow2` or `raw`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown image format {0:?} (expected qcow2 or raw)")]
pub struct UnknownFormat(pub String);

/// What [`inspect`] learns about one image.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ImageInfo {
    /// The image file, as opened (backing files: resolved against the
    /// directory of the image that names them).
    pub path: PathBuf,
    /// Detected (or, for backing files, declared) format.
    pub format: ImageFormat,
    /// Size of the disk the guest sees.
    pub virtual_size_bytes: u64,
    /// Backing file name exactly as stored in the header (may be relative).
    pub backing_file: Option<PathBuf>,
    /// Format declared by the backing-format header extension, if any.
    pub backing_format: Option<ImageFormat>,
    /// Host bytes allocated to the file (`st_blocks * 512`, the figure
    /// `qemu-img info` reports as actual-size).
    pub actual_size_bytes: u64,
}
