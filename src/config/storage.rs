//! `storage.*`: the directories caller-given paths must resolve inside (images and
//! their backing files, ISOs, kernels and initrds, SSH public key files), whether
//! block devices count as images, and where UEFI firmware (Debian's `ovmf`) is
//! found. `vm.disk_path` is always an image directory (new disks are written there)
//! and is also searched for ISOs; kernels and initrds come from the image
//! directories unless `storage.kernel_dirs` is set.

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
    pub(super) kernel_dirs: Option<Vec<PathBuf>>,
    pub(super) key_dirs: Option<Vec<PathBuf>>,
    pub(super) allow_block_devices: Option<bool>,
    pub(super) ovmf_dir: Option<PathBuf>,
}

/// `storage.*`, resolved.
#[derive(Debug, Clone, Serialize)]
pub struct StorageSettings {
    /// Extra directories holding master and other images (`storage.image_dirs`).
    pub image_dirs: Vec<PathBuf>,
    /// Directories holding installer ISOs (`storage.iso_dirs`).
    pub iso_dirs: Vec<PathBuf>,
    /// Directories kernels and initrds for direct boot may come from
    /// (`storage.kernel_dirs`); `None`: the image directories.
    pub kernel_dirs: Option<Vec<PathBuf>>,
    /// Directories SSH public key files named by callers may come from
    /// (`storage.key_dirs`); empty: callers pass key text only.
    pub key_dirs: Vec<PathBuf>,
    /// Block devices count as images (`storage.allow_block_devices`); otherwise only
    /// regular files do.
    pub allow_block_devices: bool,
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

    /// Directories kernels and initrds may come from: `storage.kernel_dirs`, else the
    /// image directories.
    #[must_use]
    pub fn kernel_dirs(&self, disk_path: &Path) -> Vec<PathBuf> {
        self.kernel_dirs.clone().unwrap_or_else(|| self.image_dirs(disk_path))
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
        // Kernel interfaces and devices are never files a VM should be given.
        if ["/proc", "/sys", "/dev"].iter().any(|p| d.starts_with(p)) {
            return Err(ConfigError::Invalid {
                key: k,
                reason: format!(
                    "{} holds kernel interfaces or devices, not images; name another directory",
                    d.display()
                ),
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
        kernel_dirs: raw.kernel_dirs.map(|d| dir_list("storage.kernel_dirs", d)).transpose()?,
        key_dirs: dir_list("storage.key_dirs", raw.key_dirs.unwrap_or_default())?,
        allow_block_devices: raw.allow_block_devices.unwrap_or(false),
        ovmf_dir,
    })
}

/// A user name QEMU can be told to switch to: a POSIX portable name, which can never
/// carry a `,` or `=` into QEMU's option syntax.
pub(super) fn check_user_name(key: &str, name: String) -> Result<String, ConfigError> {
    let mut chars = name.chars();
    let ok = name.len() <= 32
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(name)
    } else {
        Err(ConfigError::Invalid {
            key: key.into(),
            reason: format!(
                "{:?} is not a user name (letters, digits, '.', '_' or '-', starting with a letter or '_')",
                name.chars().take(64).collect::<String>()
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Config, ConfigSource};

    fn load(text: &str) -> Result<Config, super::ConfigError> {
        Config::from_parts(ConfigSource::Defaults, Some(text), &|_| None)
    }

    #[test]
    fn kernel_dirs_default_to_image_dirs() {
        let c = load(r#"{"vm":{"disk_path":"/vm"},"storage":{"image_dirs":["/srv/img"]}}"#).unwrap();

        assert_eq!(c.storage.kernel_dirs(&c.vm.disk_path), c.storage.image_dirs(&c.vm.disk_path));
    }

    #[test]
    fn block_devices_and_key_dirs_are_off_by_default() {
        let c = load("{}").unwrap();

        assert_eq!((c.storage.allow_block_devices, c.storage.key_dirs.len()), (false, 0));
    }

    #[test]
    fn proc_as_key_dir_is_refused() {
        let e = load(r#"{"storage":{"key_dirs":["/proc/self/fd"]}}"#).unwrap_err().to_string();

        assert!(e.starts_with("storage.key_dirs[0]: /proc/self/fd holds kernel interfaces or devices"), "{e}");
    }

    #[test]
    fn dev_as_image_dir_is_refused() {
        let e = load(r#"{"storage":{"image_dirs":["/dev"]}}"#).unwrap_err().to_string();

        assert!(e.starts_with("storage.image_dirs[0]: /dev holds"), "{e}");
    }

    #[test]
    fn qemu_user_with_comma_is_refused() {
        let e = load(r#"{"qemu":{"user":"nobody,group=root"}}"#).unwrap_err().to_string();

        assert!(e.starts_with("qemu.user: \"nobody,group=root\" is not a user name"), "{e}");
    }

    #[test]
    fn qemu_user_is_kept() {
        let c = load(r#"{"qemu":{"user":"kvm-mcp"}}"#).unwrap();

        assert_eq!(c.qemu.user.as_deref(), Some("kvm-mcp"));
    }
}
