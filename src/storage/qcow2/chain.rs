//! A disk's whole backing chain, resolved under the host path rule
//! ([`crate::storage::hostpath`]) by our own qcow2 reader: every backing file name
//! is resolved as QEMU resolves it (relative to the directory of the image that
//! names it), must lie inside the allowed directories and be a regular file, and is
//! read as the format the naming image's backing-format extension declares, never
//! probed. Depth is capped and loops are refused. QEMU is then handed exactly this
//! chain (`qemu::cmdline`), so it opens no file that was not checked here.

use std::collections::HashSet;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::inspect::inspect_host_file;
use crate::storage::error::StorageError;
use crate::storage::hostpath::AllowedDirs;
use crate::storage::{ImageFormat, ImageInfo};

/// Most images a backing chain may hold, the top image included.
pub const MAX_CHAIN_LEN: usize = 16;

/// Resolves the whole backing chain of the image `top` (a canonical path, read as
/// `format`), top first, every file checked under the host path rule against
/// `allowed`.
///
/// A raw image has no chain below it (its contents are never parsed). For qcow2,
/// each backing file name is resolved as QEMU resolves it (absolute as is, relative
/// to the directory of the image naming it) and read as the format the naming
/// image's backing-format extension declares.
///
/// # Errors
/// As [`AllowedDirs::open`] for `top`; for a backing file the same errors wrapped in
/// `Backing` (naming the image whose header names it); `NoBackingFormat` for an
/// image that names a backing file but not its format; `InvalidBacking` for a name
/// QEMU would read as a protocol (`nbd:`, `json:`, ...); `BackingChainCycle` if an
/// image appears twice; `BackingChainTooDeep` past [`MAX_CHAIN_LEN`] images.
pub fn resolve_chain(top: &Path, format: ImageFormat, allowed: &AllowedDirs) -> Result<Vec<ImageInfo>, StorageError> {
    let mut chain: Vec<ImageInfo> = Vec::new();
    let mut seen = HashSet::new();
    // (name as quoted in errors, path as named, format, image naming it)
    let mut next: Option<(String, PathBuf, ImageFormat, Option<PathBuf>)> =
        Some((top.to_string_lossy().into_owned(), top.to_path_buf(), format, None));
    while let Some((input, named, format, parent)) = next.take() {
        let in_parent = |e: StorageError| match &parent {
            Some(image) => StorageError::Backing { image: image.clone(), source: Box::new(e) },
            None => e,
        };
        if chain.len() == MAX_CHAIN_LEN {
            return Err(StorageError::BackingChainTooDeep { top: top.to_path_buf(), limit: MAX_CHAIN_LEN });
        }
        let file = allowed.open_named(&input, &named).map_err(in_parent)?;
        let meta = file.file().metadata().map_err(|e| StorageError::read(file.path(), e))?;
        if !seen.insert((meta.dev(), meta.ino())) {
            return Err(StorageError::BackingChainCycle {
                top: top.to_path_buf(),
                repeated: file.path().to_path_buf(),
            });
        }
        let info = inspect_host_file(&file, Some(format)).map_err(in_parent)?;
        if let Some(name) = &info.backing_file {
            let shown = name.to_string_lossy().into_owned();
            let Some(backing_format) = info.backing_format else {
                return Err(StorageError::NoBackingFormat { image: info.path.clone(), backing: shown });
            };
            if has_protocol(name) {
                return Err(StorageError::InvalidBacking {
                    path: info.path.clone(),
                    backing: name.clone(),
                    reason: "QEMU would read the name as a protocol (nbd:, json:, ...), not as a file".into(),
                });
            }
            next = Some((shown, resolve_backing(&named, name), backing_format, Some(info.path.clone())));
        }
        chain.push(info);
    }
    Ok(chain)
}

/// QEMU's `path_has_protocol`: a `:` before the first `/`.
fn has_protocol(name: &Path) -> bool {
    let bytes = name.as_os_str().as_bytes();
    let slash = bytes.iter().position(|&b| b == b'/').unwrap_or(bytes.len());
    bytes[..slash].contains(&b':')
}

/// A backing name as QEMU resolves it: absolute as is, relative to the
/// directory of the image naming it (as that image was named, not its target).
fn resolve_backing(image: &Path, name: &Path) -> PathBuf {
    match image.parent() {
        Some(dir) if name.is_relative() => dir.join(name),
        _ => name.to_path_buf(),
    }
}

#[cfg(test)]
mod tests;
