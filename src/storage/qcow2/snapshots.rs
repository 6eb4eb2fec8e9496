//! Reading the internal snapshot table of a qcow2 image (docs/interop/qcow2.txt,
//! "Snapshots"). Snapshots are made and applied by QEMU (`snapshot-save` and friends);
//! this only lists them, also for images no QEMU has open.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::header::{be32, be64};
use crate::storage::error::StorageError;

/// More entries than this is a damaged table, not a real image.
const MAX_SNAPSHOTS: u32 = 65_536;

/// One internal snapshot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SnapshotInfo {
    /// QEMU's numeric id, as a string.
    pub id: String,
    /// The tag it was saved under.
    pub name: String,
    /// Unix seconds when it was taken.
    pub date_sec: u64,
    /// Bytes of saved VM (RAM and device) state; 0 for a disk-only snapshot.
    pub vm_state_bytes: u64,
    /// Guest clock at the snapshot, in nanoseconds.
    pub vm_clock_ns: u64,
}

fn invalid(path: &Path, reason: impl Into<String>) -> StorageError {
    StorageError::InvalidImage { path: path.to_path_buf(), format: "qcow2", reason: reason.into() }
}

fn read(path: &Path, file: &File, offset: u64, len: usize) -> Result<Vec<u8>, StorageError> {
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset).map_err(|e| StorageError::read(path, e))?;
    Ok(buf)
}

/// The internal snapshots of the qcow2 image at `path`, in table order.
///
/// # Errors
/// `Open`/`Read`; `InvalidImage` for a file without the qcow2 magic or a damaged table.
pub fn snapshots(path: &Path) -> Result<Vec<SnapshotInfo>, StorageError> {
    let (file, _, _) = crate::storage::hostpath::open_recorded(path, false)?;
    let head = read(path, &file, 0, 72)?;
    if head[..4] != *b"QFI\xfb" {
        return Err(invalid(path, "no qcow2 magic at the start of the file"));
    }
    let count = be32(&head, 60);
    if count > MAX_SNAPSHOTS {
        return Err(invalid(path, format!("{count} snapshots is more than a real image holds")));
    }
    let mut at = be64(&head, 64);
    let mut out = Vec::new();
    for _ in 0..count {
        let fixed = read(path, &file, at, 40)?;
        let id_len = usize::from(u16::from_be_bytes([fixed[12], fixed[13]]));
        let name_len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
        let extra_len = be32(&fixed, 36) as usize;
        if extra_len > 1024 {
            return Err(invalid(path, "snapshot entry with oversized extra data"));
        }
        let rest = read(path, &file, at + 40, extra_len + id_len + name_len)?;
        let mut vm_state_bytes = u64::from(be32(&fixed, 32));
        if extra_len >= 8 {
            vm_state_bytes = vm_state_bytes.max(be64(&rest, 0));
        }
        let text = |a: usize, b: usize| String::from_utf8_lossy(&rest[a..b]).into_owned();
        out.push(SnapshotInfo {
            id: text(extra_len, extra_len + id_len),
            name: text(extra_len + id_len, extra_len + id_len + name_len),
            date_sec: u64::from(be32(&fixed, 16)),
            vm_state_bytes,
            vm_clock_ns: be64(&fixed, 24),
        });
        at += ((40 + extra_len + id_len + name_len) as u64).next_multiple_of(8);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::testutil::qemu_img;
    use crate::storage::{CreateOptions, create_blank};

    #[test]
    fn lists_snapshots_qemu_img_made() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.qcow2");
        create_blank(&p, 1 << 30, &CreateOptions::default()).unwrap();
        qemu_img(&["snapshot", "-c", "first", p.to_str().unwrap()]);
        qemu_img(&["snapshot", "-c", "second-one", p.to_str().unwrap()]);

        let names: Vec<String> = snapshots(&p).unwrap().into_iter().map(|s| s.name).collect();

        assert_eq!(names, ["first", "second-one"]);
    }

    #[test]
    fn image_without_snapshots_lists_none() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.qcow2");
        create_blank(&p, 1 << 20, &CreateOptions::default()).unwrap();

        assert_eq!(snapshots(&p).unwrap(), vec![]);
    }
}
