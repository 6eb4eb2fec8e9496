//! Reading what an image is: format, sizes, backing file name and format. Files
//! are opened without blocking (see [`crate::storage::hostpath`]).

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::bytes_to_path;
use super::header::{Header, HeaderError};
use crate::storage::error::StorageError;
use crate::storage::hostpath::{HostFile, open_recorded};
use crate::storage::{ImageFormat, ImageInfo};

/// Inspects `path`, detecting its format: qcow2 if it starts with the qcow2
/// magic, raw otherwise. The file is opened without blocking and must be a
/// regular file (or block device).
///
/// Probing is only safe for images the guest cannot have written a fake
/// header into; for a disk whose format is recorded, use [`inspect_as`].
///
/// # Errors
/// `Open`/`Read` on I/O failure; `NotAFile` for a FIFO, device or directory;
/// `InvalidImage` for a malformed qcow2 header; `UnsupportedFeature` for
/// encryption, an external data file, unknown incompatible feature bits, or a
/// backing format other than qcow2/raw.
pub fn inspect(path: &Path) -> Result<ImageInfo, StorageError> {
    let (file, _, len) = open_recorded(path, false)?;
    inspect_open(path, &file, len, None)
}

/// Inspects `path` as `format`; a file declared qcow2 must carry the magic,
/// and a file declared raw is never parsed.
///
/// # Errors
/// As [`inspect`], and `InvalidImage` if a qcow2 file lacks the magic.
pub fn inspect_as(path: &Path, format: ImageFormat) -> Result<ImageInfo, StorageError> {
    let (file, _, len) = open_recorded(path, false)?;
    inspect_open(path, &file, len, Some(format))
}

/// Inspects an image a caller named, opened under the host path rule.
///
/// # Errors
/// As [`inspect_as`] (or [`inspect`] when `format` is `None`).
pub fn inspect_host_file(file: &HostFile, format: Option<ImageFormat>) -> Result<ImageInfo, StorageError> {
    inspect_open(file.path(), file.file(), file.len(), format)
}

fn inspect_open(path: &Path, file: &File, len: u64, declared: Option<ImageFormat>) -> Result<ImageInfo, StorageError> {
    let meta = file.metadata().map_err(|e| StorageError::read(path, e))?;
    let actual_size_bytes = meta.blocks() * 512;
    let header = if declared == Some(ImageFormat::Raw) { None } else { read_header(path, file)? };
    let info = match header {
        Some(h) => ImageInfo {
            path: path.to_path_buf(),
            format: ImageFormat::Qcow2,
            virtual_size_bytes: h.size,
            backing_file: h.backing_file.as_deref().map(bytes_to_path),
            backing_format: h.backing_format,
            actual_size_bytes,
        },
        None if declared == Some(ImageFormat::Qcow2) => {
            return Err(StorageError::InvalidImage {
                path: path.to_path_buf(),
                format: "qcow2",
                reason: "no qcow2 magic at the start of the file".into(),
            });
        }
        None => ImageInfo {
            path: path.to_path_buf(),
            format: ImageFormat::Raw,
            virtual_size_bytes: len,
            backing_file: None,
            backing_format: None,
            actual_size_bytes,
        },
    };
    Ok(info)
}

/// Reads a qcow2 header, mapping parse problems to `StorageError`.
pub(crate) fn read_header(path: &Path, file: &File) -> Result<Option<Header>, StorageError> {
    Header::read(file).map_err(|e| header_error(path, e))
}

pub(crate) fn header_error(path: &Path, e: HeaderError) -> StorageError {
    match e {
        HeaderError::Io(source) => StorageError::read(path, source),
        HeaderError::Invalid(reason) => {
            StorageError::InvalidImage { path: path.to_path_buf(), format: "qcow2", reason }
        }
        HeaderError::Unsupported(feature) => StorageError::unsupported(path, feature),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::ErrorKind;
    use crate::storage::testutil::{qemu_img, qemu_img_info};

    fn s(p: &Path) -> &str {
        p.to_str().unwrap()
    }

    /// The fields `inspect` reports, as `qemu-img info` reports them.
    fn from_qemu(info: &serde_json::Value) -> (String, u64, Option<String>, Option<String>, u64) {
        (
            info["format"].as_str().unwrap().to_string(),
            info["virtual-size"].as_u64().unwrap(),
            info["backing-filename"].as_str().map(str::to_string),
            info["backing-filename-format"].as_str().map(str::to_string),
            info["actual-size"].as_u64().unwrap(),
        )
    }

    fn from_ours(info: &ImageInfo) -> (String, u64, Option<String>, Option<String>, u64) {
        (
            info.format.to_string(),
            info.virtual_size_bytes,
            info.backing_file.as_ref().map(|p| p.display().to_string()),
            info.backing_format.map(|f| f.to_string()),
            info.actual_size_bytes,
        )
    }

    #[test]
    fn inspect_agrees_with_qemu_img_on_plain_qcow2() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.qcow2");
        qemu_img(&["create", "-f", "qcow2", s(&path), "3G"]);

        let ours = inspect(&path).unwrap();

        assert_eq!(from_ours(&ours), from_qemu(&qemu_img_info(&path)[0]));
    }

    #[test]
    fn inspect_agrees_with_qemu_img_on_qcow2_with_backing() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.qcow2");
        let top = dir.path().join("top.qcow2");
        qemu_img(&["create", "-f", "qcow2", s(&base), "1G"]);
        qemu_img(&["create", "-f", "qcow2", "-b", s(&base), "-F", "qcow2", s(&top), "5G"]);

        let ours = inspect(&top).unwrap();

        assert_eq!(from_ours(&ours), from_qemu(&qemu_img_info(&top)[0]));
    }

    #[test]
    fn inspect_agrees_with_qemu_img_on_raw() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.raw");
        qemu_img(&["create", "-f", "raw", s(&path), "100M"]);

        let ours = inspect(&path).unwrap();

        assert_eq!(from_ours(&ours), from_qemu(&qemu_img_info(&path)[0]));
    }

    #[test]
    fn inspect_as_raw_ignores_qcow2_magic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.qcow2");
        qemu_img(&["create", "-f", "qcow2", s(&path), "1G"]);

        let info = inspect_as(&path, ImageFormat::Raw).unwrap();

        assert_eq!(info.format, ImageFormat::Raw);
        assert_eq!(info.virtual_size_bytes, 196_624);
    }

    #[test]
    fn inspect_missing_file_is_not_found() {
        let dir = tempfile::tempdir().unwrap();

        let err = inspect(&dir.path().join("nope")).unwrap_err();

        assert_eq!(err.kind(), ErrorKind::NotFound);
    }

    #[test]
    fn inspect_encrypted_image_is_unsupported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("enc.qcow2");
        qemu_img(&[
            "create",
            "--object",
            "secret,id=sec0,data=123456",
            "-f",
            "qcow2",
            "-o",
            "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10",
            s(&path),
            "16M",
        ]);

        let err = inspect(&path).unwrap_err();

        assert!(
            matches!(err, StorageError::UnsupportedFeature { ref feature, .. } if feature == "encryption"),
            "{err}"
        );
    }

    #[test]
    fn inspect_image_with_external_data_file_is_unsupported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ext.qcow2");
        let data = dir.path().join("ext.data");
        let opt = format!("data_file={}", s(&data));
        qemu_img(&["create", "-f", "qcow2", "-o", &opt, s(&path), "16M"]);

        let err = inspect(&path).unwrap_err();

        assert!(
            matches!(err, StorageError::UnsupportedFeature { ref feature, .. } if feature == "external data file"),
            "{err}"
        );
    }
}
