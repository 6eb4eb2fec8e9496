//! Reading what an image is: format, sizes, backing file, and the chain of
//! backing files below it.

use std::collections::HashSet;
use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::bytes_to_path;
use super::header::{Header, HeaderError};
use crate::storage::error::StorageError;
use crate::storage::{ImageFormat, ImageInfo};

/// Most images [`backing_chain`] follows, the top image included.
pub const MAX_CHAIN_LEN: usize = 16;

/// Inspects `path`, detecting its format: qcow2 if it starts with the qcow2
/// magic, raw otherwise.
///
/// Probing is only safe for images the guest cannot have written a fake
/// header into; for a raw disk, use [`inspect_as`] with the known format.
///
/// # Errors
/// `Open`/`Read` on I/O failure; `InvalidImage` for a malformed qcow2 header;
/// `UnsupportedFeature` for encryption, an external data file, unknown
/// incompatible feature bits, or a backing format other than qcow2/raw.
pub fn inspect(path: &Path) -> Result<ImageInfo, StorageError> {
    inspect_file(path, None)
}

/// Inspects `path` as `format`; a file declared qcow2 must carry the magic,
/// and a file declared raw is never parsed.
///
/// # Errors
/// As [`inspect`], and `InvalidImage` if a qcow2 file lacks the magic.
pub fn inspect_as(path: &Path, format: ImageFormat) -> Result<ImageInfo, StorageError> {
    inspect_file(path, Some(format))
}

/// Inspects `path` and every backing file below it, top first.
///
/// Relative backing names are resolved against the directory of the image
/// that names them; a declared backing format is trusted over probing.
///
/// # Errors
/// As [`inspect`] for any image in the chain; `BackingChainCycle` if an image
/// appears twice; `BackingChainTooDeep` past [`MAX_CHAIN_LEN`] images.
pub fn backing_chain(path: &Path) -> Result<Vec<ImageInfo>, StorageError> {
    let mut chain: Vec<ImageInfo> = Vec::new();
    let mut seen = HashSet::new();
    let mut next = Some((path.to_path_buf(), None));
    while let Some((image, format)) = next {
        if chain.len() == MAX_CHAIN_LEN {
            return Err(StorageError::BackingChainTooDeep { top: path.to_path_buf(), limit: MAX_CHAIN_LEN });
        }
        let canonical = fs::canonicalize(&image).map_err(|e| StorageError::open(&image, e))?;
        if !seen.insert(canonical) {
            return Err(StorageError::BackingChainCycle { top: path.to_path_buf(), repeated: image });
        }
        let info = inspect_file(&image, format)?;
        next = info.backing_file.as_ref().map(|name| (resolve_backing(&image, name), info.backing_format));
        chain.push(info);
    }
    Ok(chain)
}

/// A backing name as QEMU resolves it: absolute as is, relative to the
/// directory of the image naming it.
fn resolve_backing(image: &Path, name: &Path) -> PathBuf {
    match image.parent() {
        Some(dir) if name.is_relative() => dir.join(name),
        _ => name.to_path_buf(),
    }
}

fn inspect_file(path: &Path, declared: Option<ImageFormat>) -> Result<ImageInfo, StorageError> {
    let file = File::open(path).map_err(|e| StorageError::open(path, e))?;
    let meta = file.metadata().map_err(|e| StorageError::read(path, e))?;
    if meta.is_dir() {
        return Err(StorageError::InvalidImage {
            path: path.to_path_buf(),
            format: declared.map_or("disk", ImageFormat::as_str),
            reason: "it is a directory".into(),
        });
    }
    let actual_size_bytes = meta.blocks() * 512;
    let header = if declared == Some(ImageFormat::Raw) { None } else { read_header(path, &file)? };
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
            virtual_size_bytes: meta.len(),
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
    use crate::storage::qcow2::{CreateOptions, create_blank, create_overlay};
    use crate::storage::testutil::{qemu_img, qemu_img_info};
    use std::os::unix::fs::symlink;

    const GIB: u64 = 1 << 30;

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

    #[test]
    fn backing_chain_follows_relative_names() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.raw");
        let mid = dir.path().join("mid.qcow2");
        let top = dir.path().join("top.qcow2");
        qemu_img(&["create", "-f", "raw", s(&base), "1G"]);
        qemu_img(&["create", "-f", "qcow2", "-b", "base.raw", "-F", "raw", s(&mid)]);
        qemu_img(&["create", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", s(&top)]);

        let chain = backing_chain(&top).unwrap();

        let paths: Vec<_> = chain.iter().map(|i| i.path.clone()).collect();
        assert_eq!(paths, vec![top, mid, base]);
        let formats: Vec<_> = chain.iter().map(|i| i.format).collect();
        assert_eq!(formats, vec![ImageFormat::Qcow2, ImageFormat::Qcow2, ImageFormat::Raw]);
        assert_eq!(chain[2].virtual_size_bytes, GIB);
    }

    #[test]
    fn backing_chain_agrees_with_qemu_img_on_our_overlay() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.qcow2");
        let top = dir.path().join("top.qcow2");
        create_blank(&base, GIB, &CreateOptions::default()).unwrap();
        create_overlay(&top, &base, ImageFormat::Qcow2, None).unwrap();

        let chain = backing_chain(&top).unwrap();

        let qemu = qemu_img_info(&top);
        let ours: Vec<_> = chain.iter().map(from_ours).collect();
        let theirs: Vec<_> = qemu.as_array().unwrap().iter().map(from_qemu).collect();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn backing_chain_cycle_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.qcow2");
        let b = dir.path().join("b.qcow2");
        create_blank(&a, GIB, &CreateOptions::default()).unwrap();
        create_overlay(&b, &a, ImageFormat::Qcow2, None).unwrap();
        // Make a's backing file b, by swapping a for an overlay of b.
        let a2 = dir.path().join("a2.qcow2");
        create_overlay(&a2, &b, ImageFormat::Qcow2, None).unwrap();
        fs::rename(&a2, &a).unwrap();

        let err = backing_chain(&b).unwrap_err();

        assert!(matches!(err, StorageError::BackingChainCycle { .. }), "{err}");
    }

    #[test]
    fn backing_chain_through_symlink_cycle_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.qcow2");
        let link = dir.path().join("link.qcow2");
        symlink(&a, &link).unwrap();
        qemu_img(&["create", "-f", "qcow2", "-u", "-b", s(&link), "-F", "qcow2", s(&a), "1G"]);

        let err = backing_chain(&a).unwrap_err();

        assert!(matches!(err, StorageError::BackingChainCycle { .. }), "{err}");
    }

    #[test]
    fn backing_chain_longer_than_limit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<PathBuf> = (0..=MAX_CHAIN_LEN).map(|i| dir.path().join(format!("l{i}.qcow2"))).collect();
        create_blank(&names[0], GIB, &CreateOptions::default()).unwrap();
        names.windows(2).for_each(|pair| {
            create_overlay(&pair[1], &pair[0], ImageFormat::Qcow2, None).unwrap();
        });

        let err = backing_chain(&names[MAX_CHAIN_LEN]).unwrap_err();

        assert!(matches!(err, StorageError::BackingChainTooDeep { limit: MAX_CHAIN_LEN, .. }), "{err}");
    }

    #[test]
    fn backing_chain_at_limit_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<PathBuf> = (0..MAX_CHAIN_LEN).map(|i| dir.path().join(format!("l{i}.qcow2"))).collect();
        create_blank(&names[0], GIB, &CreateOptions::default()).unwrap();
        names.windows(2).for_each(|pair| {
            create_overlay(&pair[1], &pair[0], ImageFormat::Qcow2, None).unwrap();
        });

        let chain = backing_chain(&names[MAX_CHAIN_LEN - 1]).unwrap();

        assert_eq!(chain.len(), MAX_CHAIN_LEN);
    }
}
