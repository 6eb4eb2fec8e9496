//! Arguments and results of the storage tools: images and ISOs, CD-ROM media, clones,
//! disk growth and reset, snapshots. The doc comments are what the model reads.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ops::{CloneRequest, ImageEntry, IsoEntry, SnapshotEntry};

/// Arguments of `attach_iso`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachIsoArgs {
    pub name: String,
    /// ISO name or path (`list_isos`); default: the configured one.
    pub iso: Option<PathBuf>,
}

/// Arguments of `clone_vm`.
pub type CloneVmArgs = CloneRequest;

/// Arguments of `resize_disk`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResizeDiskArgs {
    pub name: String,
    /// New size in GiB; never below the current one.
    pub size_gib: u64,
    /// Index in the VM's disk list (`get_vm`); default 0.
    pub disk: Option<usize>,
}

/// Names one snapshot of one VM.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotArgs {
    pub name: String,
    /// Snapshot name, e.g. "before-upgrade".
    pub snapshot: String,
}

/// The disk images in the server's image directories.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ImageList {
    /// One entry per image, sorted by path.
    pub images: Vec<ImageEntry>,
}

/// The ISO files in the server's ISO directories.
#[derive(Debug, Serialize, JsonSchema)]
pub struct IsoList {
    /// One entry per ISO, sorted by path.
    pub isos: Vec<IsoEntry>,
}

/// The snapshots of one VM.
#[derive(Debug, Serialize, JsonSchema)]
pub struct SnapshotList {
    pub name: String,
    /// Its snapshots, oldest first.
    pub snapshots: Vec<SnapshotEntry>,
}

/// The snapshot `create_snapshot` made.
#[derive(Debug, Serialize, JsonSchema)]
pub struct SnapshotResult {
    pub name: String,
    /// The new snapshot.
    pub snapshot: SnapshotEntry,
}

/// What `delete_snapshot` removed.
#[derive(Debug, Serialize, JsonSchema)]
pub struct SnapshotDeleted {
    pub name: String,
    /// Name of the snapshot that no longer exists.
    pub deleted: String,
}
