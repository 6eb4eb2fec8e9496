//! What a QEMU start needs from the host, checked at every start just before the argv
//! is built ([`super::cmdline::build`] takes the result and touches nothing itself):
//! each disk's whole backing chain, resolved under the host path rule with the
//! format recorded in the spec (never re-probed: the host may have changed an
//! adopted image's header since create, a guest its raw disk's); the kernel and
//! initrd checked again; and, when `qemu.user` is set, the user QEMU drops to with
//! the option the installed QEMU understands.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use super::cmdline::{ChainNode, HostInputs, RunAs, RunAsSyntax};
use crate::config::Config;
use crate::layout::VmPaths;
use crate::spec::{Boot, DiskFormat, Media, VmSpec};
use crate::storage::{AllowedDirs, ImageFormat, StorageError};

/// Why a VM's files or user cannot be used for a start.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("disk {index} ({})", path.display())]
    Disk {
        index: usize,
        path: PathBuf,
        #[source]
        source: StorageError,
    },
    #[error("{field} {}", path.display())]
    BootFile {
        field: &'static str,
        path: PathBuf,
        #[source]
        source: StorageError,
    },
    #[error("qemu.user: no user named {user:?} on this host; create it or unset qemu.user")]
    NoSuchUser { user: String },
    #[error("qemu.user is set but the version of {} cannot be read", binary.display())]
    Version {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl PrepareError {
    /// The broad class of this error.
    #[must_use]
    pub fn kind(&self) -> crate::error::ErrorKind {
        match self {
            Self::Disk { source, .. } | Self::BootFile { source, .. } => source.kind(),
            Self::NoSuchUser { .. } => crate::error::ErrorKind::InvalidInput,
            Self::Version { .. } => crate::error::ErrorKind::Unavailable,
        }
    }
}

fn existing(dirs: Vec<PathBuf>) -> Vec<PathBuf> {
    dirs.into_iter().filter(|d| d.is_dir()).collect()
}

fn allowed(cfg: &Config, dirs: Vec<PathBuf>) -> Result<AllowedDirs, StorageError> {
    Ok(AllowedDirs::new(&existing(dirs))?.with_block_devices(cfg.storage.allow_block_devices))
}

/// Resolves and checks everything QEMU will open for `spec` (the spec of this run).
///
/// # Errors
/// [`PrepareError`] naming the disk or boot file and what is wrong with it.
pub async fn host_inputs(cfg: &Config, spec: &VmSpec, paths: &VmPaths) -> Result<HostInputs, PrepareError> {
    let chains = chains(cfg, spec, paths)?;
    boot_files(cfg, spec)?;
    let run_as = match &cfg.qemu.user {
        None => None,
        Some(user) => Some(run_as(cfg, user).await?),
    };
    Ok(HostInputs { chains, run_as, vnc: None })
}

fn chains(cfg: &Config, spec: &VmSpec, paths: &VmPaths) -> Result<Vec<Vec<ChainNode>>, PrepareError> {
    let disk_path = &cfg.vm.disk_path;
    spec.disks
        .iter()
        .enumerate()
        .map(|(index, d)| {
            if d.ejected {
                return Ok(vec![]);
            }
            let err = |source| PrepareError::Disk { index, path: d.path.clone(), source };
            // The VM's own seed disk lives in its state directory; CD-ROMs come from
            // the ISO directories; everything else from the image directories.
            let dirs = if d.path.starts_with(&paths.state) {
                vec![paths.state.clone()]
            } else if d.media == Media::Cdrom {
                cfg.storage.iso_dirs(disk_path)
            } else {
                cfg.storage.image_dirs(disk_path)
            };
            let format = match d.format {
                DiskFormat::Qcow2 => ImageFormat::Qcow2,
                DiskFormat::Raw => ImageFormat::Raw,
            };
            let chain =
                crate::storage::resolve_chain(&d.path, format, &allowed(cfg, dirs).map_err(err)?).map_err(err)?;
            Ok(chain
                .into_iter()
                .map(|i| {
                    let block_device = std::fs::metadata(&i.path).is_ok_and(|m| m.file_type().is_block_device());
                    ChainNode { path: i.path, format: i.format, block_device }
                })
                .collect())
        })
        .collect()
}

fn boot_files(cfg: &Config, spec: &VmSpec) -> Result<(), PrepareError> {
    let Boot::Kernel { kernel, initrd, .. } = &spec.boot else { return Ok(()) };
    let check = |field: &'static str, path: &Path| {
        let err = |source| PrepareError::BootFile { field, path: path.to_path_buf(), source };
        let dirs = allowed(cfg, cfg.storage.kernel_dirs(&cfg.vm.disk_path)).map_err(err)?;
        dirs.open(&path.to_string_lossy()).map(drop).map_err(err)
    };
    check("kernel", kernel)?;
    initrd.as_deref().map_or(Ok(()), |i| check("initrd", i))
}

async fn run_as(cfg: &Config, user: &str) -> Result<RunAs, PrepareError> {
    if nix::unistd::User::from_name(user).ok().flatten().is_none() {
        return Err(PrepareError::NoSuchUser { user: user.to_owned() });
    }
    let line = super::launcher::qemu_version(&cfg.qemu.binary)
        .await
        .map_err(|source| PrepareError::Version { binary: cfg.qemu.binary.clone(), source })?;
    let syntax = if version_at_least(&line, (9, 1)) { RunAsSyntax::RunWith } else { RunAsSyntax::Runas };
    Ok(RunAs { user: user.to_owned(), syntax })
}

/// Whether `qemu --version`'s first line (`QEMU emulator version 7.2.22 (…)`) names at
/// least `want`; an unreadable line counts as older.
fn version_at_least(line: &str, want: (u32, u32)) -> bool {
    let Some(v) = line.split_whitespace().find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit())) else {
        return false;
    };
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= want
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_7_2_is_older_than_9_1() {
        assert!(!version_at_least("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)", (9, 1)));
    }

    #[test]
    fn qemu_9_1_and_10_are_new_enough() {
        assert!(version_at_least("QEMU emulator version 9.1.0", (9, 1)));
        assert!(version_at_least("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-1)", (9, 1)));
    }

    #[test]
    fn unreadable_version_counts_as_older() {
        assert!(!version_at_least("", (9, 1)));
    }
}
