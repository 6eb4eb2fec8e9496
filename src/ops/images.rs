//! `list_images` and `list_isos`: what the configured directories hold and which VMs
//! use each file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{Ops, OpsError};
use crate::spec::Media;
use crate::storage::{self, ImageFormat};

/// One image in an image directory.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct ImageEntry {
    pub path: PathBuf,
    pub format: ImageFormat,
    pub virtual_size_bytes: u64,
    /// Host bytes allocated.
    pub actual_size_bytes: u64,
    /// Backing file as stored in the header.
    pub backing_file: Option<PathBuf>,
    /// VMs that read it: as their disk or somewhere in their disk's backing chain.
    pub used_by: Vec<String>,
}

/// One ISO in an ISO directory.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct IsoEntry {
    pub path: PathBuf,
    pub size_bytes: u64,
    /// VMs with it in a CD-ROM drive.
    pub used_by: Vec<String>,
}

fn has_ext(p: &Path, exts: &[&str]) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| exts.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// Regular, non-hidden files directly in `dirs` that stay inside them once resolved.
fn files_in(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in dirs {
        let Ok(canon_dir) = std::fs::canonicalize(dir) else { continue };
        let Ok(rd) = std::fs::read_dir(dir) else { continue };
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let Ok(real) = std::fs::canonicalize(e.path()) else { continue };
            if real.starts_with(&canon_dir) && real.is_file() && !out.contains(&real) {
                out.push(real);
            }
        }
    }
    out.sort();
    out
}

impl Ops {
    /// Which VMs read which files (canonical paths).
    fn usage(&self, cdrom: bool) -> BTreeMap<PathBuf, Vec<String>> {
        let mut map: BTreeMap<PathBuf, Vec<String>> = BTreeMap::new();
        for vm in self.other_vms("") {
            let files = if cdrom {
                vm.spec
                    .disks
                    .iter()
                    .filter(|d| d.media == Media::Cdrom && !d.ejected)
                    .filter_map(|d| std::fs::canonicalize(&d.path).ok())
                    .collect()
            } else {
                self.images_of(&vm)
            };
            for f in files {
                map.entry(f).or_default().push(vm.spec.name.to_string());
            }
        }
        map
    }

    /// Images (qcow2 files, and `.img`/`.raw` files) in `vm.disk_path` and
    /// `storage.image_dirs`. The inspection runs off the async runtime under a
    /// deadline; files are opened without blocking and FIFOs or devices are skipped.
    ///
    /// # Errors
    /// The inspection did not finish within [`crate::storage::FILE_WORK_DEADLINE`].
    pub async fn list_images(&self) -> Result<Vec<ImageEntry>, OpsError> {
        self.file_work("images", "inspecting the image directories", |ops| Ok(ops.list_images_blocking())).await
    }

    fn list_images_blocking(&self) -> Vec<ImageEntry> {
        let usage = self.usage(false);
        files_in(&self.image_dirs())
            .into_iter()
            .filter(|p| !has_ext(p, &["iso", "fd", "json"]))
            .filter_map(|p| storage::inspect(&p).ok())
            .filter(|i| i.format == ImageFormat::Qcow2 || has_ext(&i.path, &["img", "raw"]))
            .map(|i| ImageEntry {
                used_by: usage.get(&i.path).cloned().unwrap_or_default(),
                path: i.path,
                format: i.format,
                virtual_size_bytes: i.virtual_size_bytes,
                actual_size_bytes: i.actual_size_bytes,
                backing_file: i.backing_file,
            })
            .collect()
    }

    /// `.iso` files in `storage.iso_dirs` and `vm.disk_path`.
    ///
    /// # Errors
    /// None today; the signature leaves room for unreadable directories.
    pub fn list_isos(&self) -> Result<Vec<IsoEntry>, OpsError> {
        let usage = self.usage(true);
        Ok(files_in(&self.iso_dirs())
            .into_iter()
            .filter(|p| has_ext(p, &["iso"]))
            .map(|p| IsoEntry {
                size_bytes: std::fs::metadata(&p).map_or(0, |m| m.len()),
                used_by: usage.get(&p).cloned().unwrap_or_default(),
                path: p,
            })
            .collect())
    }
}
