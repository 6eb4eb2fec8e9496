//! Provisioning files of a new VM, all in its state directory (so `delete` removes
//! them): the cloud-init seed disk, the Ignition config, the UEFI variable store.
//! Everything is built and checked before the VM's directory exists; written after
//! its disks.

use std::path::PathBuf;

use super::{Ops, OpsError};
use crate::layout::VmPaths;
use crate::provision::{ProvisionError, cloudinit, ignition};
use crate::qemu::profile::{Firmware, Profile};
use crate::spec::{DiskFormat, DiskSpec, Media, NicSpec, UefiSpec, VmSpec};
use crate::storage;

/// What `create` writes for provisioning.
#[derive(Debug, Default)]
pub(crate) struct ProvisionPlan {
    /// The FAT seed image.
    seed: Option<Vec<u8>>,
    /// The Ignition JSON.
    ignition: Option<Vec<u8>>,
    /// Firmware code, the variable-store template, Secure Boot.
    uefi: Option<(PathBuf, PathBuf, bool)>,
}

impl From<ProvisionError> for OpsError {
    fn from(e: ProvisionError) -> Self {
        match e {
            ProvisionError::Invalid { field, reason } => OpsError::Invalid { field, reason },
            ProvisionError::KeyFile { field, source } => OpsError::Storage { field, source },
        }
    }
}

impl Ops {
    /// Builds the seed, the Ignition config and the firmware choice, writing nothing.
    pub(crate) fn plan_provisioning(
        &self,
        cloud_init: Option<&cloudinit::CloudInitRequest>,
        ignition_req: Option<&ignition::IgnitionRequest>,
        profile: &Profile,
        name: &str,
        uuid: &uuid::Uuid,
        nics: &[NicSpec],
    ) -> Result<ProvisionPlan, OpsError> {
        let mut plan = ProvisionPlan::default();
        let key_dirs: Vec<PathBuf> = self.cfg.storage.key_dirs.iter().filter(|d| d.is_dir()).cloned().collect();
        let key_dirs = (!key_dirs.is_empty())
            .then(|| storage::AllowedDirs::new(&key_dirs))
            .transpose()
            .map_err(OpsError::storage("storage.key_dirs"))?;
        let keys = crate::provision::keys::KeyDirs(key_dirs.as_ref());
        if let Some(ci) = cloud_init {
            let mac = nics.first().map(|n| n.mac.to_string());
            let seed = cloudinit::build(ci, &uuid.to_string(), name, mac.as_deref(), keys)?;
            let mut files: Vec<(&str, &[u8])> =
                vec![("meta-data", seed.meta_data.as_bytes()), ("user-data", seed.user_data.as_bytes())];
            if let Some(n) = &seed.network_config {
                files.push(("network-config", n.as_bytes()));
            }
            let image = storage::fat_image(cloudinit::SEED_LABEL, &files)
                .map_err(|e| OpsError::invalid("cloud_init", format!("cannot build the seed: {e}")))?;
            plan.seed = Some(image);
        }
        if ignition_req.is_some() || profile.ignition {
            let cfg = ignition::build(&self.cfg.vm.ignition, &ignition_req.cloned().unwrap_or_default(), keys)?;
            let mut text = serde_json::to_vec_pretty(&cfg).unwrap_or_default();
            text.push(b'\n');
            plan.ignition = Some(text);
        }
        let secure = match profile.firmware {
            Firmware::Bios => None,
            Firmware::Uefi => Some(false),
            Firmware::UefiSecure => Some(true),
        };
        if let Some(secure) = secure {
            let suffix = if secure { ".ms" } else { "" };
            let dir = &self.cfg.storage.ovmf_dir;
            let code = dir.join(format!("OVMF_CODE_4M{suffix}.fd"));
            let vars = dir.join(format!("OVMF_VARS_4M{suffix}.fd"));
            for f in [&code, &vars] {
                if !f.is_file() {
                    return Err(OpsError::invalid(
                        "os_variant",
                        format!(
                            "profile {:?} needs UEFI firmware{} but {} does not exist; install Debian's ovmf or set storage.ovmf_dir",
                            profile.name,
                            if secure { " with Secure Boot" } else { "" },
                            f.display()
                        ),
                    ));
                }
            }
            plan.uefi = Some((code, vars, secure));
        }
        Ok(plan)
    }

    /// Writes the planned files into the VM's state directory and records them in
    /// the spec. The caller removes the directory on failure.
    pub(crate) fn write_provisioning(plan: &ProvisionPlan, spec: &mut VmSpec, paths: &VmPaths) -> Result<(), OpsError> {
        if let Some(image) = &plan.seed {
            let p = paths.cidata();
            crate::fsutil::write_atomic(&p, image).map_err(OpsError::io("cannot write", &p))?;
            spec.disks.push(DiskSpec {
                path: p,
                format: DiskFormat::Raw,
                media: Media::Disk,
                readonly: true,
                owned: true,
                ejected: false,
                addr: None,
            });
        }
        if let Some(text) = &plan.ignition {
            let p = paths.ignition();
            crate::fsutil::write_atomic(&p, text).map_err(OpsError::io("cannot write", &p))?;
            spec.ignition = Some(p);
        }
        if let Some((code, template, secure_boot)) = &plan.uefi {
            let vars = paths.uefi_vars();
            std::fs::copy(template, &vars).map_err(OpsError::io("cannot copy UEFI variables to", &vars))?;
            spec.uefi = Some(UefiSpec { code: code.clone(), vars, secure_boot: *secure_boot });
        }
        Ok(())
    }
}
