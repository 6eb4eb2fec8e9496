//! qcow2 images written and read in-process: blank images, overlays on a
//! backing file, inspection of images and backing chains, offline growth.
//!
//! Why our own writer and not qcow2-rs 0.1.6: that crate cannot write the
//! backing file name or the backing-format extension (its raw header type is
//! crate-private and has no setters), so overlays would still be patched by
//! hand; its `format_qcow2` does an unchecked `memset` past the buffer unless
//! the caller sizes it for the L1 table; and it pulls in 146 crates (nix 0.26
//! next to our nix 0.31, tokio-uring, clap, bincode). A new image's metadata
//! is one header cluster, one refcount-table entry, one refcount block and
//! a zeroed L1 table: about 150 lines here, laid out exactly as QEMU 7.2's
//! `qemu-img create` lays them out (docs/interop/qcow2.txt), and every image
//! the tests write is checked by `qemu-img check`.

mod chain;
mod header;
mod inspect;
mod refcount;
mod resize;
mod snapshots;

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

pub use chain::{MAX_CHAIN_LEN, resolve_chain};
pub use inspect::{inspect, inspect_as, inspect_host_file};
pub use resize::{resize_offline, resize_offline_as};
pub use snapshots::{SnapshotInfo, snapshots};

use self::header::{MAX_BACKING_NAME_BYTES, MAX_NEW_SIZE, NewImage};
use super::ImageFormat;
use super::atomic::{self, SpaceCheck};
use super::error::StorageError;

/// QEMU needs qcow2 virtual sizes in whole 512-byte sectors.
const SECTOR_BYTES: u64 = 512;

/// Options for [`create_blank`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CreateOptions {
    /// Set the lazy-refcounts compatible feature (QEMU then defers
    /// refcount updates; faster writes, `qemu-img check -r` after a crash).
    pub lazy_refcounts: bool,
}

/// Creates an empty qcow2 v3 image of `virtual_size_bytes` at `path`
/// (64 KiB clusters, 16-bit refcounts).
///
/// The size must be a multiple of 512 and at most 2 PiB (QEMU's L1 limit).
/// The file is written atomically and never replaces an existing one.
///
/// # Errors
/// `AlreadyExists` if `path` exists, `InvalidSize`, `InsufficientSpace`,
/// or an I/O error naming `path`.
pub fn create_blank(path: &Path, virtual_size_bytes: u64, opts: &CreateOptions) -> Result<(), StorageError> {
    check_new_size(path, virtual_size_bytes)?;
    let image = NewImage { size: virtual_size_bytes, backing: None, lazy_refcounts: opts.lazy_refcounts };
    write_new(path, &image, SpaceCheck::Before)
}

/// Creates a qcow2 v3 overlay at `path` whose backing file is `backing`.
///
/// `backing` must be an absolute path; it is stored as given, together with
/// the backing-format header extension. The overlay's virtual size is the
/// backing image's (rounded up to 512 bytes), or `virtual_size_bytes` if
/// given, which may only be larger (growing at creation).
///
/// # Errors
/// `InvalidBacking` if `backing` is relative, too long, missing or not of
/// `backing_format`; `InvalidSize` if the size is smaller than the backing
/// image's; otherwise as [`create_blank`].
pub fn create_overlay(
    path: &Path,
    backing: &Path,
    backing_format: ImageFormat,
    virtual_size_bytes: Option<u64>,
) -> Result<(), StorageError> {
    let invalid = |reason: String| StorageError::InvalidBacking {
        path: path.to_path_buf(),
        backing: backing.to_path_buf(),
        reason,
    };
    if !backing.is_absolute() {
        return Err(invalid("the backing path must be absolute".into()));
    }
    let name = backing.as_os_str().as_bytes();
    if name.len() > MAX_BACKING_NAME_BYTES {
        return Err(invalid(format!("the name is longer than {MAX_BACKING_NAME_BYTES} bytes")));
    }
    let base = inspect_as(backing, backing_format).map_err(|e| match e {
        StorageError::Open { source, .. } => invalid(format!("cannot open it: {source}")),
        other => other,
    })?;
    let base_size = base.virtual_size_bytes.next_multiple_of(SECTOR_BYTES);
    let size = match virtual_size_bytes {
        Some(size) if size < base_size => {
            return Err(StorageError::invalid_size(
                path,
                size,
                format!("smaller than the backing image ({base_size} bytes)"),
            ));
        }
        Some(size) => size,
        None => base_size,
    };
    check_new_size(path, size)?;
    let image = NewImage { size, backing: Some((name, backing_format)), lazy_refcounts: false };
    write_new(path, &image, SpaceCheck::Before)
}

fn check_new_size(path: &Path, size: u64) -> Result<(), StorageError> {
    if !size.is_multiple_of(SECTOR_BYTES) {
        return Err(StorageError::invalid_size(path, size, format!("not a multiple of {SECTOR_BYTES}")));
    }
    if size > MAX_NEW_SIZE {
        return Err(StorageError::invalid_size(
            path,
            size,
            format!("larger than the qcow2 maximum of {MAX_NEW_SIZE} bytes"),
        ));
    }
    Ok(())
}

fn write_new(path: &Path, image: &NewImage<'_>, check: SpaceCheck) -> Result<(), StorageError> {
    // The whole file length, though most of the L1 table stays a hole:
    // the guest's first writes will need that room anyway.
    let needed = image.layout().file_len;
    atomic::create_new(path, needed, check, |file: &mut File| image.write(file))
}

/// Backing names are bytes on disk; on Unix they map 1:1 to paths.
fn bytes_to_path(bytes: &[u8]) -> std::path::PathBuf {
    std::path::PathBuf::from(OsStr::from_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::testutil::{SmallTmpfs, assert_check_clean, dir_entries, qemu_img, qemu_img_info, qemu_io};
    use crate::storage::{ErrorKind, ImageInfo};
    use std::fs;

    const GIB: u64 = 1 << 30;

    #[test]
    fn blank_image_passes_qemu_img_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blank.qcow2");

        create_blank(&path, 10 * GIB, &CreateOptions::default()).unwrap();

        assert_check_clean(&path);
        let info = qemu_img_info(&path);
        assert_eq!(info[0]["format"], "qcow2");
        assert_eq!(info[0]["virtual-size"], 10 * GIB);
        assert_eq!(info[0]["cluster-size"], 65536);
        assert_eq!(info[0]["format-specific"]["data"]["compat"], "1.1");
        assert_eq!(info[0]["format-specific"]["data"]["refcount-bits"], 16);
        assert!(info[0].get("backing-filename").is_none());
    }

    #[test]
    fn blank_image_with_lazy_refcounts_passes_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lazy.qcow2");
        let opts = CreateOptions { lazy_refcounts: true };

        create_blank(&path, GIB, &opts).unwrap();

        assert_check_clean(&path);
        let info = qemu_img_info(&path);
        assert_eq!(info[0]["format-specific"]["data"]["lazy-refcounts"], true);
    }

    #[test]
    fn zero_size_and_huge_blank_images_pass_check() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.qcow2");
        let huge = dir.path().join("huge.qcow2");

        create_blank(&empty, 0, &CreateOptions::default()).unwrap();
        create_blank(&huge, 64 << 40, &CreateOptions::default()).unwrap();

        assert_check_clean(&empty);
        assert_check_clean(&huge);
        assert_eq!(qemu_img_info(&huge)[0]["virtual-size"], 64u64 << 40);
    }

    #[test]
    fn blank_image_is_writable_by_qemu_io() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rw.qcow2");
        create_blank(&path, GIB, &CreateOptions::default()).unwrap();

        qemu_io(&path, "write -P 0xab 1M 128k");

        assert_check_clean(&path);
        let out = qemu_io(&path, "read -P 0xab 1M 128k");
        assert!(out.contains("read 131072/131072 bytes"), "{out}");
    }

    #[test]
    fn overlay_records_backing_file_and_format() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.qcow2");
        let overlay = dir.path().join("overlay.qcow2");
        create_blank(&base, 2 * GIB, &CreateOptions::default()).unwrap();

        create_overlay(&overlay, &base, ImageFormat::Qcow2, None).unwrap();

        assert_check_clean(&overlay);
        let info = qemu_img_info(&overlay);
        assert_eq!(info[0]["virtual-size"], 2 * GIB);
        assert_eq!(info[0]["backing-filename"], base.to_str().unwrap());
        assert_eq!(info[0]["backing-filename-format"], "qcow2");
        assert_eq!(info[1]["filename"], base.to_str().unwrap());
    }

    #[test]
    fn overlay_grown_at_creation_has_requested_size() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.qcow2");
        let overlay = dir.path().join("overlay.qcow2");
        create_blank(&base, GIB, &CreateOptions::default()).unwrap();

        create_overlay(&overlay, &base, ImageFormat::Qcow2, Some(20 * GIB)).unwrap();

        assert_check_clean(&overlay);
        assert_eq!(qemu_img_info(&overlay)[0]["virtual-size"], 20 * GIB);
    }

    #[test]
    fn overlay_on_raw_base_records_raw_format() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.raw");
        let overlay = dir.path().join("overlay.qcow2");
        fs::File::create(&base).unwrap().set_len(GIB).unwrap();

        create_overlay(&overlay, &base, ImageFormat::Raw, None).unwrap();

        assert_check_clean(&overlay);
        let info = qemu_img_info(&overlay);
        assert_eq!(info[0]["backing-filename-format"], "raw");
        assert_eq!(info[1]["format"], "raw");
    }

    #[test]
    fn overlay_writes_land_in_overlay_and_leave_base_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.qcow2");
        let overlay = dir.path().join("overlay.qcow2");
        create_blank(&base, GIB, &CreateOptions::default()).unwrap();
        qemu_io(&base, "write -P 0x11 0 128k");
        let base_before = fs::read(&base).unwrap();
        create_overlay(&overlay, &base, ImageFormat::Qcow2, None).unwrap();

        qemu_io(&overlay, "write -P 0xab 0 64k");

        assert_check_clean(&overlay);
        assert_eq!(fs::read(&base).unwrap(), base_before);
        let map: serde_json::Value =
            serde_json::from_str(&qemu_img(&["map", "--output=json", overlay.to_str().unwrap()])).unwrap();
        assert_eq!(map[0]["start"], 0);
        assert_eq!(map[0]["length"], 65536);
        assert_eq!(map[0]["depth"], 0);
        assert_eq!(map[1]["start"], 65536);
        assert_eq!(map[1]["depth"], 1);
        let through = qemu_io(&overlay, "read -P 0x11 64k 64k");
        assert!(through.contains("read 65536/65536 bytes"), "{through}");
    }

    #[test]
    fn overlay_smaller_than_base_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.qcow2");
        let overlay = dir.path().join("overlay.qcow2");
        create_blank(&base, 2 * GIB, &CreateOptions::default()).unwrap();

        let err = create_overlay(&overlay, &base, ImageFormat::Qcow2, Some(GIB)).unwrap_err();

        assert!(matches!(err, StorageError::InvalidSize { .. }), "{err}");
        assert!(!overlay.exists());
    }

    #[test]
    fn overlay_with_relative_backing_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let overlay = dir.path().join("overlay.qcow2");

        let err = create_overlay(&overlay, Path::new("base.qcow2"), ImageFormat::Qcow2, None).unwrap_err();

        assert!(matches!(err, StorageError::InvalidBacking { .. }), "{err}");
    }

    #[test]
    fn overlay_on_missing_backing_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let overlay = dir.path().join("overlay.qcow2");

        let err = create_overlay(&overlay, &dir.path().join("nope.qcow2"), ImageFormat::Qcow2, None).unwrap_err();

        assert!(matches!(err, StorageError::InvalidBacking { .. }), "{err}");
        assert!(dir_entries(dir.path()).is_empty());
    }

    #[test]
    fn overlay_on_raw_file_declared_qcow2_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.raw");
        fs::write(&base, vec![0u8; 4096]).unwrap();

        let err = create_overlay(&dir.path().join("o"), &base, ImageFormat::Qcow2, None).unwrap_err();

        assert!(matches!(err, StorageError::InvalidImage { .. }), "{err}");
    }

    #[test]
    fn create_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.qcow2");
        fs::write(&path, b"precious").unwrap();

        let err = create_blank(&path, GIB, &CreateOptions::default()).unwrap_err();

        assert_eq!(err.kind(), ErrorKind::Conflict);
        assert_eq!(err.to_string(), format!("{} already exists", path.display()));
        assert_eq!(fs::read(&path).unwrap(), b"precious");
    }

    #[test]
    fn size_not_multiple_of_512_is_refused() {
        let dir = tempfile::tempdir().unwrap();

        let err = create_blank(&dir.path().join("d"), 1000, &CreateOptions::default()).unwrap_err();

        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }

    #[test]
    fn size_beyond_l1_limit_is_refused() {
        let dir = tempfile::tempdir().unwrap();

        let err = create_blank(&dir.path().join("d"), 4 << 50, &CreateOptions::default()).unwrap_err();

        assert!(matches!(err, StorageError::InvalidSize { .. }), "{err}");
    }

    #[test]
    fn image_whose_l1_exceeds_free_space_is_refused_cleanly() {
        // 1 PiB needs a 16 MiB L1 table: more than the 1 MiB tmpfs holds,
        // although the header itself is tiny.
        let fs = SmallTmpfs::mount();
        let path = fs.path().join("huge.qcow2");

        let err = create_blank(&path, 1 << 50, &CreateOptions::default()).unwrap_err();

        assert_eq!(err.kind(), ErrorKind::Unavailable);
        let msg = err.to_string();
        assert!(msg.contains(path.to_str().unwrap()), "{msg}");
        assert!(msg.contains("16973824 bytes needed"), "{msg}");
        assert!(dir_entries(fs.path()).is_empty());
    }

    #[test]
    fn blank_image_on_full_filesystem_is_refused_cleanly() {
        let fs = SmallTmpfs::mount();
        fs::write(fs.path().join("filler"), vec![1u8; 900 << 10]).unwrap();
        let path = fs.path().join("disk.qcow2");

        let err = create_blank(&path, GIB, &CreateOptions::default()).unwrap_err();

        assert!(matches!(err, StorageError::InsufficientSpace { .. }), "{err}");
        assert_eq!(dir_entries(fs.path()), vec!["filler".to_string()]);
    }

    #[test]
    fn blank_image_running_out_of_space_mid_write_leaves_nothing() {
        let fs = SmallTmpfs::mount();
        fs::write(fs.path().join("filler"), vec![1u8; 1 << 20]).unwrap();
        let path = fs.path().join("disk.qcow2");
        let image = NewImage { size: GIB, backing: None, lazy_refcounts: false };

        let err = write_new(&path, &image, SpaceCheck::Skip).unwrap_err();

        assert!(matches!(err, StorageError::Write { .. }), "{err}");
        assert_eq!(dir_entries(fs.path()), vec!["filler".to_string()]);
    }

    #[test]
    fn inspect_reads_back_our_overlay() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.qcow2");
        let overlay = dir.path().join("overlay.qcow2");
        create_blank(&base, GIB, &CreateOptions::default()).unwrap();
        create_overlay(&overlay, &base, ImageFormat::Qcow2, Some(2 * GIB)).unwrap();

        let info = inspect(&overlay).unwrap();

        assert_eq!(
            info,
            ImageInfo {
                path: overlay.clone(),
                format: ImageFormat::Qcow2,
                virtual_size_bytes: 2 * GIB,
                backing_file: Some(base.clone()),
                backing_format: Some(ImageFormat::Qcow2),
                actual_size_bytes: info.actual_size_bytes,
            }
        );
    }
}
