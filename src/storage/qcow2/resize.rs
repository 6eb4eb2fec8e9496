//! Growing an image that no VM has open.
//!
//! This cannot be a copy-and-rename without copying the whole disk, so the
//! qcow2 path updates in place in QEMU's crash-safe order: new clusters (a
//! larger L1 table and any refcount blocks it needs) are written after the
//! end of the image and synced; their refcounts are then recorded and
//! synced; only then does one write inside the first sector switch the
//! header to the new size and table; the old L1 clusters are freed last.
//! A crash at any point leaves either the old or the new image, at worst
//! with leaked clusters that `qemu-img check -r leaks` reclaims.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, fcntl};

use super::header::{Header, INCOMPAT_CORRUPT, INCOMPAT_DIRTY, MAX_L1_BYTES, OFFSET_SIZE, put32, put64};
use super::inspect::{header_error, read_header};
use super::refcount::{Refcounts, read_at};
use crate::storage::ImageFormat;
use crate::storage::atomic::ensure_free_space;
use crate::storage::error::StorageError;
use crate::storage::hostpath::{FileKind, open_recorded};

/// Grows the image at `path` to `new_size_bytes`; the format is detected
/// as in [`super::inspect`]. Raw files are extended (sparsely). For qcow2
/// the header size is updated and, when the L1 table is too small, a
/// larger one is allocated. Shrinking is refused; the same size is a no-op.
///
/// The image must not be in use: the call takes the byte-range locks QEMU
/// uses for its images and fails with `InUse` if a QEMU process (a VM,
/// `qemu-img`, `qemu-nbd`) has the file open; while it runs, QEMU cannot
/// open the image either.
///
/// # Errors
/// `InUse` if QEMU has the image open; `InvalidSize` for shrinking, a qcow2 size not a multiple of 512, or one
/// past QEMU's 32 MiB L1 limit; `UnsupportedFeature` for a dirty or corrupt
/// image, persistent bitmaps, or a full refcount table; `InsufficientSpace`;
/// I/O errors naming `path`.
pub fn resize_offline(path: &Path, new_size_bytes: u64) -> Result<(), StorageError> {
    resize(path, None, new_size_bytes)
}

/// Like [`resize_offline`], for an image whose format is recorded: a raw disk is
/// grown as raw even if its guest wrote a qcow2 header into it, and a disk recorded
/// as qcow2 must carry the magic.
///
/// # Errors
/// As [`resize_offline`]; `InvalidImage` for a qcow2 disk without the magic.
pub fn resize_offline_as(path: &Path, format: ImageFormat, new_size_bytes: u64) -> Result<(), StorageError> {
    resize(path, Some(format), new_size_bytes)
}

fn resize(path: &Path, format: Option<ImageFormat>, new_size_bytes: u64) -> Result<(), StorageError> {
    let (file, kind, _) = open_recorded(path, true)?;
    if kind != FileKind::Regular {
        return Err(StorageError::unsupported(path, "resizing a block device"));
    }
    lock_against_qemu(path, &file)?;
    let header = if format == Some(ImageFormat::Raw) { None } else { read_header(path, &file)? };
    match (header, format) {
        (Some(header), _) => resize_qcow2(path, &file, &header, new_size_bytes),
        (None, Some(ImageFormat::Qcow2)) => Err(StorageError::InvalidImage {
            path: path.to_path_buf(),
            format: "qcow2",
            reason: "no qcow2 magic at the start of the file".into(),
        }),
        (None, _) => resize_raw(path, &file, new_size_bytes),
    }
}

/// QEMU's image locking (`raw_apply_lock_bytes` in block/file-posix.c)
/// takes OFD locks on byte 100 + n for each permission n it holds and on
/// 200 + n for each it will not share; every QEMU user of an image holds at
/// least one of them. An exclusive OFD lock over all of them therefore
/// fails while QEMU has the image open, and keeps QEMU out until our file
/// is closed.
const QEMU_LOCK_START: i64 = 100;
/// qcow2 table entries hold offsets below 2^56.
const MAX_OFFSET: u64 = 1 << 56;
const QEMU_LOCK_LEN: i64 = 200;

fn lock_against_qemu(path: &Path, file: &File) -> Result<(), StorageError> {
    let lock = libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: QEMU_LOCK_START,
        l_len: QEMU_LOCK_LEN,
        l_pid: 0,
    };
    match fcntl(file, FcntlArg::F_OFD_SETLK(&lock)) {
        Ok(_) => Ok(()),
        Err(Errno::EAGAIN | Errno::EACCES) => Err(StorageError::InUse { path: path.to_path_buf() }),
        Err(e) => Err(StorageError::Lock { path: path.to_path_buf(), source: std::io::Error::from(e) }),
    }
}

fn resize_raw(path: &Path, file: &File, new_size: u64) -> Result<(), StorageError> {
    let len = file.metadata().map_err(|e| StorageError::read(path, e))?.len();
    check_growth(path, len, new_size)?;
    file.set_len(new_size).and_then(|()| file.sync_all()).map_err(|e| StorageError::write(path, e))
}

fn check_growth(path: &Path, current: u64, new_size: u64) -> Result<(), StorageError> {
    if new_size < current {
        return Err(StorageError::invalid_size(
            path,
            new_size,
            format!("shrinking from {current} bytes is not supported"),
        ));
    }
    Ok(())
}

fn resize_qcow2(path: &Path, file: &File, header: &Header, new_size: u64) -> Result<(), StorageError> {
    check_writable(path, header)?;
    check_growth(path, header.size, new_size)?;
    if !new_size.is_multiple_of(512) {
        return Err(StorageError::invalid_size(path, new_size, "not a multiple of 512"));
    }
    if new_size == header.size {
        return Ok(());
    }
    let l1_entries = new_size.div_ceil(header.bytes_per_l1_entry());
    if l1_entries * 8 > MAX_L1_BYTES {
        return Err(StorageError::invalid_size(
            path,
            new_size,
            format!("needs an L1 table above QEMU's limit of {MAX_L1_BYTES} bytes"),
        ));
    }
    let w = |e| StorageError::write(path, e);
    if l1_entries <= u64::from(header.l1_size) {
        let mut size = [0u8; 8];
        put64(&mut size, 0, new_size);
        return file.write_all_at(&size, OFFSET_SIZE).and_then(|()| file.sync_data()).map_err(w);
    }
    grow_l1(path, file, header, new_size, l1_entries)
}

fn check_writable(path: &Path, header: &Header) -> Result<(), StorageError> {
    let feature = if header.incompatible_features & INCOMPAT_DIRTY != 0 {
        "the dirty flag (run `qemu-img check -r all` first)".to_string()
    } else if header.incompatible_features & INCOMPAT_CORRUPT != 0 {
        "the corrupt flag (run `qemu-img check -r all` first)".to_string()
    } else if header.has_bitmaps || header.autoclear_features != 0 {
        "persistent bitmaps or autoclear features".to_string()
    } else {
        return Ok(());
    };
    Err(StorageError::unsupported(path, feature))
}

fn grow_l1(path: &Path, file: &File, header: &Header, new_size: u64, l1_entries: u64) -> Result<(), StorageError> {
    let cs = header.cluster_size();
    let file_len = file.metadata().map_err(|e| StorageError::read(path, e))?.len();
    header.check_tables(file_len).map_err(|e| header_error(path, e))?;
    let mut refs = Refcounts::read(path, file, header)?;

    // New clusters go after both the file end and the last used cluster.
    let start = file_len.div_ceil(cs).max(refs.end_cluster(path, file)?);
    let l1_clusters = (l1_entries * 8).div_ceil(cs);
    // The new refcount blocks sit after the L1 table and may themselves
    // need covering: iterate until the count settles.
    let mut new_blocks = Vec::new();
    loop {
        let needed = refs.missing_blocks(start, start + l1_clusters + new_blocks.len() as u64);
        if needed.len() == new_blocks.len() {
            break;
        }
        new_blocks = needed;
    }
    if new_blocks.iter().any(|&i| usize::try_from(i).map_or(true, |i| i >= refs.table_len())) {
        return Err(StorageError::unsupported(path, "a full refcount table (growing it is not implemented)"));
    }
    let total = l1_clusters + new_blocks.len() as u64;
    // Refcounts may claim clusters up to 2^64 bytes and beyond; the new ones must
    // still be addressable, or their offsets would wrap around onto the metadata.
    if (start + total).checked_mul(cs).is_none_or(|end| end > MAX_OFFSET) {
        return Err(StorageError::InvalidImage {
            path: path.to_path_buf(),
            format: "qcow2",
            reason: "its refcounts claim clusters past the largest offset qcow2 can address".into(),
        });
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    ensure_free_space(path, dir, total * cs)?;

    let w = |e| StorageError::write(path, e);
    // 1. The new L1 table: the old entries, then zeros.
    let old_l1 = read_at(path, file, header.l1_table_offset, u64::from(header.l1_size) * 8)?;
    let mut l1 = vec![0u8; usize::try_from(l1_entries * 8).unwrap_or(0)];
    l1[..old_l1.len()].copy_from_slice(&old_l1);
    file.write_all_at(&l1, start * cs).map_err(w)?;
    // 2. Refcount blocks: new ones (after the L1 table), and existing ones
    //    covering the new clusters.
    let mut placed = Vec::new();
    for (k, &i) in new_blocks.iter().enumerate() {
        let index = usize::try_from(i).unwrap_or(usize::MAX);
        let offset = (start + l1_clusters + k as u64) * cs;
        refs.add_block(index, offset);
        placed.push((index, offset));
    }
    for c in start..start + total {
        refs.set(path, file, c, 1)?;
    }
    refs.write_blocks(file).map_err(w)?;
    file.sync_data().map_err(w)?;
    // 3. Hook the new refcount blocks into the table.
    for &(index, offset) in &placed {
        let mut entry = [0u8; 8];
        put64(&mut entry, 0, offset);
        file.write_all_at(&entry, header.refcount_table_offset + index as u64 * 8).map_err(w)?;
    }
    file.sync_data().map_err(w)?;
    // 4. Commit: size, crypt_method (0), l1_size, l1_table_offset in one
    //    write inside the first sector.
    let mut commit = [0u8; 24];
    put64(&mut commit, 0, new_size);
    put32(&mut commit, 12, u32::try_from(l1_entries).unwrap_or(u32::MAX));
    put64(&mut commit, 16, start * cs);
    file.write_all_at(&commit, OFFSET_SIZE).map_err(w)?;
    file.sync_data().map_err(w)?;
    // 5. Free the old L1 clusters; a crash before this only leaks them.
    if header.l1_size > 0 {
        refs.forget_blocks();
        let first = header.l1_table_offset / cs;
        let count = (u64::from(header.l1_size) * 8).div_ceil(cs);
        for c in first..first + count {
            refs.set(path, file, c, 0)?;
        }
        refs.write_blocks(file).map_err(w)?;
        file.sync_data().map_err(w)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::ErrorKind;
    use crate::storage::qcow2::header::be64;
    use crate::storage::qcow2::{CreateOptions, create_blank};
    use crate::storage::testutil::{QemuHolding, SmallTmpfs, assert_check_clean, qemu_img, qemu_img_info, qemu_io};
    use std::fs;

    const GIB: u64 = 1 << 30;

    fn s(p: &Path) -> &str {
        p.to_str().unwrap()
    }

    fn blank(dir: &Path, size: u64) -> std::path::PathBuf {
        let path = dir.join("disk.qcow2");
        create_blank(&path, size, &CreateOptions::default()).unwrap();
        path
    }

    fn l1_offset(path: &Path) -> u64 {
        be64(&fs::read(path).unwrap()[..48], 40)
    }

    /// Refcounts claiming a cluster 2^64 bytes in: the new L1 table's offset
    /// wrapped around (onto the refcount table here) in release builds, which left
    /// the header pointing at it, and overflowed in debug builds.
    #[test]
    fn clusters_claimed_past_the_offset_limit_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("far.qcow2");
        let cs: u64 = 1 << 21;
        let mut head = vec![0u8; 112];
        head[..4].copy_from_slice(b"QFI\xfb");
        put32(&mut head, 4, 3);
        put32(&mut head, 20, 21); // 2 MiB clusters
        put64(&mut head, 48, cs); // the refcount table: cluster 1 ...
        put32(&mut head, 56, 3); // ... to 3
        put32(&mut head, 96, 0); // 1-bit refcounts
        put32(&mut head, 100, 112);
        let file = File::create(&path).unwrap();
        file.set_len(5 * cs).unwrap();
        file.write_all_at(&head, 0).unwrap();
        // Table entry 2^19, a refcount block at cluster 4 whose first cluster,
        // 2^19 * 2^24 clusters (2^64 bytes) in, is in use.
        file.write_all_at(&(4 * cs).to_be_bytes(), cs + (1 << 19) * 8).unwrap();
        file.write_all_at(&[1], 4 * cs).unwrap();
        let before = fs::read(&path).unwrap();

        let err = resize_offline(&path, GIB).unwrap_err();

        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
        assert!(err.to_string().contains("largest offset"), "{err}");
        assert!(fs::read(&path).unwrap() == before, "the image changed");
    }

    #[test]
    fn growth_within_l1_capacity_only_changes_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = blank(dir.path(), 700 << 20);
        let l1_before = l1_offset(&path);

        resize_offline(&path, GIB).unwrap();

        assert_check_clean(&path);
        assert_eq!(qemu_img_info(&path)[0]["virtual-size"], GIB);
        assert_eq!(l1_offset(&path), l1_before);
    }

    #[test]
    fn growth_past_l1_capacity_keeps_data_and_passes_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = blank(dir.path(), GIB);
        qemu_io(&path, "write -P 0x5a 512M 64k");

        resize_offline(&path, 100 * GIB).unwrap();

        assert_check_clean(&path);
        assert_eq!(qemu_img_info(&path)[0]["virtual-size"], 100 * GIB);
        qemu_io(&path, "read -P 0x5a 512M 64k");
        qemu_io(&path, "write -P 0x77 99G 64k");
        assert_check_clean(&path);
    }

    #[test]
    fn growth_of_qemu_made_image_to_multi_cluster_l1_passes_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.qcow2");
        qemu_img(&["create", "-f", "qcow2", s(&path), "2G"]);
        qemu_io(&path, "write -P 0x33 1G 1M");

        resize_offline(&path, 10 << 40).unwrap();

        assert_check_clean(&path);
        assert_eq!(qemu_img_info(&path)[0]["virtual-size"], 10u64 << 40);
        qemu_io(&path, "read -P 0x33 1G 1M");
    }

    #[test]
    fn growth_needing_a_new_refcount_block_passes_check() {
        // One 16-bit refcount block covers 2 GiB of file; pad the file to
        // 4 GiB so the new L1 table lands where no block exists yet.
        let dir = tempfile::tempdir().unwrap();
        let path = blank(dir.path(), GIB);
        fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(4 * GIB).unwrap();

        resize_offline(&path, 8 * GIB).unwrap();

        assert_check_clean(&path);
        assert_eq!(l1_offset(&path), 4 * GIB);
        qemu_io(&path, "write -P 0x44 7G 64k");
        assert_check_clean(&path);
    }

    #[test]
    fn growth_of_v2_image_passes_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v2.qcow2");
        qemu_img(&["create", "-f", "qcow2", "-o", "compat=0.10", s(&path), "1G"]);

        resize_offline(&path, 3 * GIB).unwrap();

        assert_check_clean(&path);
        assert_eq!(qemu_img_info(&path)[0]["virtual-size"], 3 * GIB);
    }

    #[test]
    fn growth_of_extended_l2_image_passes_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.qcow2");
        qemu_img(&["create", "-f", "qcow2", "-o", "extended_l2=on", s(&path), "1G"]);
        qemu_io(&path, "write -P 0x21 900M 64k");

        resize_offline(&path, 2 * GIB).unwrap();

        assert_check_clean(&path);
        assert_eq!(qemu_img_info(&path)[0]["virtual-size"], 2 * GIB);
        qemu_io(&path, "write -P 0x22 1900M 64k");
        qemu_io(&path, "read -P 0x21 900M 64k");
        assert_check_clean(&path);
    }

    #[test]
    fn same_size_is_a_no_op() {
        let dir = tempfile::tempdir().unwrap();
        let path = blank(dir.path(), GIB);
        let before = fs::read(&path).unwrap();

        resize_offline(&path, GIB).unwrap();

        assert_eq!(fs::read(&path).unwrap(), before);
    }

    #[test]
    fn shrinking_qcow2_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = blank(dir.path(), 2 * GIB);

        let err = resize_offline(&path, GIB).unwrap_err();

        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert_eq!(qemu_img_info(&path)[0]["virtual-size"], 2 * GIB);
    }

    #[test]
    fn growth_beyond_qemu_l1_limit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = blank(dir.path(), GIB);

        let err = resize_offline(&path, 4 << 50).unwrap_err();

        assert!(matches!(err, StorageError::InvalidSize { .. }), "{err}");
    }

    #[test]
    fn dirty_image_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = blank(dir.path(), GIB);
        let file = fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&INCOMPAT_DIRTY.to_be_bytes(), 72).unwrap();

        let err = resize_offline(&path, 2 * GIB).unwrap_err();

        assert!(matches!(err, StorageError::UnsupportedFeature { .. }), "{err}");
    }

    #[test]
    fn image_with_persistent_bitmap_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = blank(dir.path(), GIB);
        qemu_img(&["bitmap", "--add", s(&path), "b0"]);

        let err = resize_offline(&path, 2 * GIB).unwrap_err();

        assert!(matches!(err, StorageError::UnsupportedFeature { .. }), "{err}");
        assert_eq!(qemu_img_info(&path)[0]["virtual-size"], GIB);
    }

    #[test]
    fn growth_without_space_for_l1_leaves_image_unchanged() {
        let fs = SmallTmpfs::mount();
        let path = blank(fs.path(), GIB);
        let before = fs::read(&path).unwrap();

        let err = resize_offline(&path, 1 << 50).unwrap_err();

        assert!(matches!(err, StorageError::InsufficientSpace { .. }), "{err}");
        assert_eq!(fs::read(&path).unwrap(), before);
    }

    #[test]
    fn image_open_in_qemu_is_refused_as_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let path = blank(dir.path(), GIB);
        let _qemu = QemuHolding::start(&path);

        let err = resize_offline(&path, 2 * GIB).unwrap_err();

        assert!(matches!(err, StorageError::InUse { .. }), "{err}");
        assert_eq!(err.kind(), ErrorKind::Conflict);
    }

    #[test]
    fn raw_image_grows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.raw");
        qemu_img(&["create", "-f", "raw", s(&path), "1G"]);

        resize_offline(&path, 3 * GIB).unwrap();

        assert_eq!(qemu_img_info(&path)[0]["virtual-size"], 3 * GIB);
    }

    #[test]
    fn shrinking_raw_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.raw");
        qemu_img(&["create", "-f", "raw", s(&path), "1G"]);

        let err = resize_offline(&path, GIB / 2).unwrap_err();

        assert!(matches!(err, StorageError::InvalidSize { .. }), "{err}");
        assert_eq!(fs::metadata(&path).unwrap().len(), GIB);
    }
}
