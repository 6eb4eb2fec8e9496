//! Full copies of images (full clones): written atomically after a free-space check,
//! so a failed copy leaves nothing behind.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::atomic::{self, SpaceCheck};
use super::error::StorageError;

/// Copies the image file `src` to the new file `dst` byte for byte (a qcow2 keeps its
/// backing file reference). Never replaces an existing `dst`.
///
/// # Errors
/// `AlreadyExists`, `InsufficientSpace` (the source's allocated size is needed), or an
/// I/O error naming the file.
pub fn copy_image(src: &Path, dst: &Path) -> Result<(), StorageError> {
    let (mut input, _, _) = super::hostpath::open_recorded(src, false)?;
    let meta = input.metadata().map_err(|e| StorageError::read(src, e))?;
    let needed = meta.blocks() * 512;
    atomic::create_new(dst, needed, SpaceCheck::Before, |out| std::io::copy(&mut input, out).map(|_| ()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::testutil::{assert_check_clean, qemu_io};
    use crate::storage::{CreateOptions, create_blank};

    #[test]
    fn copy_of_written_image_reads_back_and_checks_clean() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.qcow2");
        let b = dir.path().join("b.qcow2");
        create_blank(&a, 1 << 30, &CreateOptions::default()).unwrap();
        qemu_io(&a, "write -P 0x5a 0 64k");

        copy_image(&a, &b).unwrap();

        assert_check_clean(&b);
        assert!(qemu_io(&b, "read -P 0x5a 0 64k").contains("read 65536/65536 bytes"));
    }

    #[test]
    fn copy_onto_existing_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::write(&a, b"new").unwrap();
        std::fs::write(&b, b"old").unwrap();

        let err = copy_image(&a, &b).unwrap_err();

        assert!(matches!(err, StorageError::AlreadyExists { .. }), "{err}");
        assert_eq!(std::fs::read(&b).unwrap(), b"old");
    }
}
