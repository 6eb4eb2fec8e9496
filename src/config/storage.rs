//! `storage.*`: the directories caller-given image and ISO paths must resolve inside,
//! and where UEFI firmware (Debian's `ovmf`) is found. `vm.disk_path` is always an
//! image directory (new disks are written there) and is also searched for ISOs.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Where Debian's `ovmf` package puts its firmware.
pub const DEFAULT_OVMF_DIR: &str = "/usr/share/OVMF";

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawStorage {
    pub(super) image_dirs: Option<Vec<PathBuf>>,
    pub(super) iso_dirs: Option<Vec<PathBuf>>,
    pub(super) ovmf_dir: Option<PathBuf>,
}

/// `storage.*`, resolved.
#[derive(Debug, Clone, Serialize)]
pub struct StorageSettings {
    /// Extra directories holding master and other images (`storage.image_dirs`).
    pub image_dirs: Vec<PathBuf>,
    /// Directories holding installer ISOs (`storage.iso_dirs`).
    pub iso_dirs: Vec<PathBuf>,
    /// Directory with `OVMF_CODE_4M.fd` and `OVMF_VARS_4M.fd` (`storage.ovmf_dir`).
    pub ovmf_dir: PathBuf,
}

impl StorageSettings {
    /// Directories images may come from: `disk_path` first (relative names resolve
    /// there), then `storage.image_dirs`.
    #[must_use]
    pub fn image_dirs(&self, disk_path: &Path) -> Vec<PathBuf> {
        let mut v = vec![disk_path.to_path_buf()];
        v.extend(self.image_dirs.iter().filter(|d| d.as_path() != disk_path).cloned());
        v
    }

    /// Directories ISOs may come from: `storage.iso_dirs` first, then `disk_path`.
    #[must_use]
    pub fn iso_dirs(&self, disk_path: &Path) -> Vec<PathBuf> {
        let mut v = self.iso_dirs.clone();
        if !v.iter().any(|d| d == disk_path) {
            v.push(disk_path.to_path_buf());
        }
        v
    }
}

fn dir_list(key: &str, dirs: Vec<PathBuf>) -> Result<Vec<PathBuf>, ConfigError> {
    let mut out: Vec<PathBuf> = Vec::with_capacity(dirs.len());
    for (i, d) in dirs.into_iter().enumerate() {
        let k = format!("{key}[{i}]");
        if !d.is_absolute() {
            return Err(ConfigError::Invalid {
                key: k,
                reason: format!("{} is not an absolute path; give the full path starting with /", d.display()),
            });
        }
        if d.as_os_str().to_str().is_none() {
            return Err(ConfigError::Invalid { key: k, reason: "the path is not valid UTF-8".into() });
        }
        if d.parent().is_none() {
            return Err(ConfigError::Invalid {
                key: k,
                reason: "/ would allow every file on the host; name a directory that holds only images".into(),
            });
        }
        if out.contains(&d) {
            return Err(ConfigError::Invalid { key: k, reason: format!("{} is listed twice", d.display()) });
        }
        out.push(d);
    }
    Ok(out)
}

pub(super) fn resolve(raw: RawStorage) -> Result<StorageSettings, ConfigError> {
    let ovmf_dir = raw.ovmf_dir.unwrap_or_else(|| DEFAULT_OVMF_DIR.into());
    if !ovmf_dir.is_absolute() {
        return Err(ConfigError::Invalid {
            key: "storage.ovmf_dir".into(),
            reason: format!("{} is not an absolute path", ovmf_dir.display()),
        });
    }
    Ok(StorageSettings {
        image_dirs: dir_list("storage.image_dirs", raw.image_dirs.unwrap_or_default())?,
        iso_dirs: dir_list("storage.iso_dirs", raw.iso_dirs.unwrap_or_default())?,
        ovmf_dir,
    })
}
