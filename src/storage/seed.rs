//! Small FAT images holding a few files: the cloud-init NoCloud seed (volume label
//! `cidata`). Built in memory with the `fatfs` crate, then written atomically.
//!
//! Why FAT through `fatfs` and not ISO 9660: cloud-init's file names (`meta-data`,
//! `user-data`, `network-config`) are not ISO 9660 names, so an ISO needs Joliet or
//! Rock Ridge records on top of the primary volume descriptor and path tables — a
//! writer of our own. FAT with long file names is what `fatfs` (pure Rust, three small
//! crates, no default features) already writes; every Linux guest reads it with the
//! `vfat` driver, and cloud-init looks for the label on any block device.

use std::io::{Cursor, Write as _};
use std::path::Path;

use super::atomic::{self, SpaceCheck};
use super::error::StorageError;

/// Smallest seed image (FAT12 needs a few hundred sectors; 1 MiB leaves room).
const MIN_IMAGE_BYTES: usize = 1 << 20;

/// Builds a FAT image with `label` (at most 11 bytes, ASCII) and `files` in its root.
///
/// # Errors
/// An I/O error from the FAT writer (a label or name it cannot store).
pub fn fat_image(label: &str, files: &[(&str, &[u8])]) -> std::io::Result<Vec<u8>> {
    let content: usize = files.iter().map(|(_, d)| d.len().next_multiple_of(4096)).sum();
    let size = (content * 2 + (256 << 10)).next_multiple_of(512).max(MIN_IMAGE_BYTES);
    let mut buf = vec![0u8; size];
    let mut label_bytes = [b' '; 11];
    if label.len() > 11 || !label.is_ascii() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "a FAT label is at most 11 ASCII bytes"));
    }
    label_bytes[..label.len()].copy_from_slice(label.as_bytes());
    fatfs::format_volume(Cursor::new(&mut buf[..]), fatfs::FormatVolumeOptions::new().volume_label(label_bytes))?;
    {
        let fs = fatfs::FileSystem::new(Cursor::new(&mut buf[..]), fatfs::FsOptions::new())?;
        {
            let root = fs.root_dir();
            for (name, data) in files {
                let mut f = root.create_file(name)?;
                f.truncate()?;
                f.write_all(data)?;
                f.flush()?;
            }
        }
        fs.unmount()?;
    }
    Ok(buf)
}

/// Writes a FAT image (see [`fat_image`]) to the new file `path`, atomically.
///
/// # Errors
/// `AlreadyExists`, `InsufficientSpace`, or `Write` naming `path`.
pub fn write_fat_image(path: &Path, label: &str, files: &[(&str, &[u8])]) -> Result<(), StorageError> {
    let image = fat_image(label, files).map_err(|e| StorageError::write(path, e))?;
    atomic::create_new(path, image.len() as u64, SpaceCheck::Before, |f| f.write_all(&image))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_and_label_read_back() {
        let img =
            fat_image("cidata", &[("meta-data", b"instance-id: x\n"), ("user-data", b"#cloud-config\n")]).unwrap();

        let fs = fatfs::FileSystem::new(Cursor::new(img), fatfs::FsOptions::new()).unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut fs.root_dir().open_file("meta-data").unwrap(), &mut text).unwrap();

        assert_eq!((fs.volume_label(), text.as_str()), ("cidata".to_owned(), "instance-id: x\n"));
    }

    #[test]
    fn label_longer_than_eleven_bytes_is_refused() {
        assert!(fat_image("much-too-long", &[]).is_err());
    }
}
