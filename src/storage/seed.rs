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

/// Reads `names` from the root of the FAT image `path` (a file kvm-mcp wrote, read
/// with caps: the image at most `max_image` bytes, each file at most `max_file`); a
/// name that is not there is `None`.
///
/// # Errors
/// The image is missing, too big or not FAT, or a file is too big.
pub fn read_fat_files(
    path: &Path,
    names: &[&str],
    max_image: u64,
    max_file: u64,
) -> std::io::Result<Vec<Option<Vec<u8>>>> {
    use std::io::Read as _;
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    if len > max_image {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{len} bytes; at most {max_image}")));
    }
    let mut image = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    (&mut f).take(max_image).read_to_end(&mut image)?;
    let fs = fatfs::FileSystem::new(Cursor::new(image), fatfs::FsOptions::new())?;
    let root = fs.root_dir();
    names
        .iter()
        .map(|n| match root.open_file(n) {
            Ok(file) => {
                let mut data = Vec::new();
                file.take(max_file + 1).read_to_end(&mut data)?;
                if data.len() as u64 > max_file {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{n} is larger than {max_file} bytes"),
                    ));
                }
                Ok(Some(data))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        })
        .collect()
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
    fn files_read_back_by_name_and_a_missing_one_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("seed.img");
        std::fs::write(&p, fat_image("cidata", &[("user-data", b"#cloud-config\n")]).unwrap()).unwrap();

        let got = read_fat_files(&p, &["user-data", "network-config"], 16 << 20, 1 << 20).unwrap();

        assert_eq!(got, vec![Some(b"#cloud-config\n".to_vec()), None]);
    }

    #[test]
    fn label_longer_than_eleven_bytes_is_refused() {
        assert!(fat_image("much-too-long", &[]).is_err());
    }
}
