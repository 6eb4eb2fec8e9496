//! CD-ROM media: `attach_iso` and `eject_iso`, on a running VM through QMP (tray
//! opened with force, medium removed, new one inserted, tray closed) and recorded in
//! the definition so the next start sees the same drive.

use std::path::Path;

use super::views::VmInfo;
use super::{Ops, OpsError};
use crate::qemu::profile::CdromBus;
use crate::spec::{DiskFormat, DiskSpec, Media};

/// QEMU's id of the device of disk `i` (see `qemu::cmdline`).
pub(crate) fn qdev_id(i: usize) -> String {
    format!("disk{i}-dev")
}

impl Ops {
    /// Puts an ISO (inside the ISO directories; `vm.default_iso` when `None`) into the
    /// VM's CD-ROM drive. A stopped VM without a drive gets one; a running VM changes
    /// the medium at once.
    ///
    /// # Errors
    /// Path outside the ISO directories, no drive on a running VM, QMP failures.
    pub async fn attach_iso(&self, name: &str, iso: Option<&Path>) -> Result<VmInfo, OpsError> {
        let (mut vm, _lock) = self.load_locked(name).await?;
        let iso = iso.map(Path::to_path_buf).or_else(|| self.cfg.vm.default_iso.clone()).ok_or_else(|| {
            OpsError::invalid("iso", "no ISO given and vm.default_iso is not set; `list_isos` shows the ISOs")
        })?;
        let iso = self.confine("iso", &iso, &self.iso_dirs())?;
        let active = Self::observe(&vm).status.state.is_active();
        let slot = vm.spec.disks.iter().position(|d| d.media == Media::Cdrom);
        let i = match (slot, active) {
            (Some(i), _) => i,
            (None, true) => {
                return Err(OpsError::invalid(
                    "name",
                    format!(
                        "VM {name:?} has no CD-ROM drive and one cannot be added while it runs; stop it and attach again"
                    ),
                ));
            }
            (None, false) => {
                let profile = self.profiles.get(&vm.spec.os_variant)?;
                if profile.cdrom_bus == CdromBus::None {
                    return Err(OpsError::invalid(
                        "name",
                        format!("profile {:?} of VM {name:?} has no CD-ROM bus", profile.name),
                    ));
                }
                // What is there keeps its place; the drive takes a free port.
                crate::qemu::addresses::record(&mut vm.spec, profile).map_err(OpsError::addresses(name))?;
                vm.spec.disks.push(DiskSpec {
                    path: iso.clone(),
                    format: DiskFormat::Raw,
                    media: Media::Cdrom,
                    readonly: true,
                    owned: false,
                    ejected: true,
                    addr: None,
                });
                crate::qemu::addresses::record(&mut vm.spec, profile).map_err(OpsError::addresses(name))?;
                vm.spec.disks.len() - 1
            }
        };
        if active {
            let q = self.qmp(&vm).await?;
            let node = format!("cd{i}-{}", crate::state::now_ms());
            let path = iso.to_string_lossy();
            super::block::change_medium(&q, &qdev_id(i), &node, &path).await.map_err(|source| OpsError::Qmp {
                name: name.into(),
                what: "changing the CD-ROM medium failed",
                source,
            })?;
        }
        vm.spec.disks[i].path = iso;
        vm.spec.disks[i].ejected = false;
        Self::save_spec(&vm)?;
        tracing::info!(vm = %name, iso = %vm.spec.disks[i].path.display(), "ISO attached");
        self.info(name)
    }

    /// Empties the VM's CD-ROM drive (the drive stays, so an ISO can go in later).
    ///
    /// # Errors
    /// No drive, QMP failures.
    pub async fn eject_iso(&self, name: &str) -> Result<VmInfo, OpsError> {
        let (mut vm, _lock) = self.load_locked(name).await?;
        let i = vm
            .spec
            .disks
            .iter()
            .position(|d| d.media == Media::Cdrom)
            .ok_or_else(|| OpsError::invalid("name", format!("VM {name:?} has no CD-ROM drive")))?;
        if Self::observe(&vm).status.state.is_active() {
            let q = self.qmp(&vm).await?;
            super::block::eject(&q, &qdev_id(i)).await.map_err(|source| OpsError::Qmp {
                name: name.into(),
                what: "ejecting the CD-ROM failed",
                source,
            })?;
        }
        vm.spec.disks[i].ejected = true;
        Self::save_spec(&vm)?;
        tracing::info!(vm = %name, "ISO ejected");
        self.info(name)
    }
}
