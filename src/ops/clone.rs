//! Operations on a stopped VM's disks: `clone_vm` (linked: an overlay on the source's
//! disk, the source then a template that refuses to start while clones exist; or a
//! full copy), `resize_disk` (grow only, live through QMP or offline) and
//! `reset_vm_disk` (a fresh overlay on the same base: the fastest clean slate).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::context::Vm;
use super::disks::{check_size_gib, image_format};
use super::views::VmInfo;
use super::{Ops, OpsError};
use crate::ids::VmName;
use crate::layout::VmPaths;
use crate::spec::{DiskFormat, DiskSpec, Media, VmSpec};
use crate::state::now_ms;
use crate::storage::{self, CreateOptions};

/// What `clone_vm` accepts (the MCP tool's arguments too).
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CloneRequest {
    /// Name of the stopped VM to clone.
    pub source: String,
    /// Name for the new VM: 1 to 13 characters of letters, digits, '-', '_' or '.',
    /// not starting with '.'.
    pub name: String,
    /// Copy the disks (slower, uses the full space; the source stays usable). Default
    /// false: a linked clone, whose disks are overlays on the source's, which then
    /// refuses to start while the clone exists.
    #[serde(default)]
    pub full: bool,
    /// Start the clone right after defining it. Default false.
    #[serde(default)]
    pub start: bool,
}

impl Ops {
    /// Refuses to start a template whose linked clones still exist; a template
    /// without clones becomes an ordinary VM again. Runs off the async runtime under
    /// a deadline.
    pub(crate) async fn check_startable(&self, vm: &Vm) -> Result<(), OpsError> {
        if !vm.spec.template {
            return Ok(());
        }
        let vm = vm.clone();
        self.file_work("name", "checking the template's clones", move |ops| ops.check_startable_blocking(&vm)).await
    }

    fn check_startable_blocking(&self, vm: &Vm) -> Result<(), OpsError> {
        let name = vm.spec.name.to_string();
        let mut clones: Vec<String> = vm
            .spec
            .disks
            .iter()
            .filter(|d| d.media == Media::Disk)
            .flat_map(|d| self.users_of(&d.path, &name))
            .collect();
        clones.sort();
        clones.dedup();
        if clones.is_empty() {
            let mut vm = vm.clone();
            vm.spec.template = false;
            return Self::save_spec(&vm);
        }
        Err(OpsError::InUse {
            what: format!("VM {name:?} is the template of linked clones: its disk"),
            users: clones,
            hint: "starting it would change their base image; delete the clones first, or run a full clone of it"
                .into(),
        })
    }

    /// Defines a new VM with the disks of a stopped one: overlays on them (linked, the
    /// default) or copies (`full`). CD-ROM media are shared; the cloud-init seed and
    /// Ignition config are not carried over (the guest already ran them); UEFI
    /// variables are copied. MAC addresses are new.
    ///
    /// # Errors
    /// Source running ([`OpsError::MustBeStopped`]), name taken, storage failures
    /// (nothing is left behind).
    pub async fn clone_vm(&self, req: CloneRequest) -> Result<VmInfo, OpsError> {
        let mut src = self.load(&req.source)?;
        let name = VmName::new(&req.name)?;
        let _src_lock = self.lock(&req.source, &src.paths).await?;
        Self::stopped(&src, "cloning")?;
        let paths = self.paths(&name);
        let _lock = self.lock(name.as_str(), &paths).await?;
        self.make_vm_dir(&name, &paths)?;
        let mut written: Vec<PathBuf> = Vec::new();
        let res = self
            .clone_files(&src, &name, &paths, req.full, &mut written)
            .and_then(|spec| Self::commit_definition(&paths, &spec));
        if let Err(e) = res {
            super::disks::remove_files(written);
            let _ = std::fs::remove_dir_all(&paths.state);
            return Err(e);
        }
        if !req.full && !src.spec.template {
            src.spec.template = true;
            Self::save_spec(&src)?;
        }
        tracing::info!(vm = %name, source = %req.source, full = req.full, "cloned");
        if req.start {
            return self.start(name.as_str()).await;
        }
        self.info(name.as_str())
    }

    fn clone_files(
        &self,
        src: &Vm,
        name: &VmName,
        paths: &VmPaths,
        full: bool,
        written: &mut Vec<PathBuf>,
    ) -> Result<VmSpec, OpsError> {
        let mut disks = Vec::new();
        let mut n = 0;
        let mut planned = Vec::new();
        for d in &src.spec.disks {
            if d.media == Media::Cdrom {
                disks.push(DiskSpec { owned: false, ..d.clone() });
                continue;
            }
            if d.path.starts_with(&src.paths.state) {
                continue; // the source's seed disk
            }
            // The source's chain must pass the host path rule before anything is
            // copied from it or built on it.
            let chain = self.chain_of(d)?;
            let path = self.new_disk_path(name, n)?;
            n += 1;
            planned.push(path.clone());
            crate::store::begin_create(paths, &planned).map_err(OpsError::io("cannot write", paths.creating()))?;
            let res = if full {
                storage::copy_image(&d.path, &path)
            } else {
                storage::create_overlay(&path, &chain[0].path, chain[0].format, None)
            };
            res.map_err(OpsError::storage("disk"))?;
            written.push(path.clone());
            let format = if full { d.format } else { DiskFormat::Qcow2 };
            disks.push(DiskSpec { path, format, owned: true, ..d.clone() });
        }
        let uefi = match &src.spec.uefi {
            Some(u) => {
                let vars = paths.uefi_vars();
                std::fs::copy(&u.vars, &vars).map_err(OpsError::io("cannot copy UEFI variables to", &vars))?;
                Some(crate::spec::UefiSpec { vars, ..u.clone() })
            }
            None => None,
        };
        let uuid = uuid::Uuid::new_v4();
        let mut nics = src.spec.nics.clone();
        let mut taken: std::collections::HashSet<crate::ids::MacAddr> =
            self.defined_specs().iter().flat_map(|s| s.nics.iter().map(|n| n.mac)).collect();
        for (i, nic) in nics.iter_mut().enumerate() {
            nic.mac = crate::ids::MacAddr::pick_unique(&uuid, u8::try_from(i).unwrap_or(u8::MAX), &taken)
                .map_err(|e| OpsError::Taken { what: "every candidate MAC".into(), by: e.to_string() })?;
            taken.insert(nic.mac);
        }
        Ok(VmSpec {
            name: name.clone(),
            uuid,
            created_at: now_ms() / 1000,
            disks,
            nics,
            template: false,
            ignition: None,
            uefi,
            ..src.spec.clone()
        })
    }

    fn disk_index(vm: &Vm, disk: Option<usize>) -> Result<usize, OpsError> {
        let i = match disk {
            Some(i) => i,
            None => vm.spec.disks.iter().position(|d| d.media == Media::Disk).unwrap_or(usize::MAX),
        };
        match vm.spec.disks.get(i) {
            Some(d) if d.media == Media::Disk => Ok(i),
            _ => Err(OpsError::invalid("disk", format!("VM {:?} has no disk number {i}", vm.spec.name.as_str()))),
        }
    }

    /// Grows disk `disk` (the first disk when `None`) to `size_gib`: through QMP
    /// `block_resize` while the VM runs (the guest sees the new size at once), in the
    /// file otherwise. Shrinking is refused.
    ///
    /// # Errors
    /// Smaller size, storage or QMP failures.
    pub async fn resize_disk(&self, name: &str, size_gib: u64, disk: Option<usize>) -> Result<VmInfo, OpsError> {
        let (vm, _lock) = self.load_locked(name).await?;
        let i = Self::disk_index(&vm, disk)?;
        let d = &vm.spec.disks[i];
        let bytes = check_size_gib("size_gib", size_gib)?;
        let now = storage::inspect_as(&d.path, image_format(d.format)).map_err(OpsError::storage("disk"))?;
        if bytes < now.virtual_size_bytes {
            return Err(OpsError::invalid(
                "size_gib",
                format!("{size_gib} GiB is smaller than the disk's {} bytes; disks only grow", now.virtual_size_bytes),
            ));
        }
        if Self::observe(&vm).status.state.is_active() {
            let q = self.qmp(&vm).await?;
            super::block::resize(&q, &format!("disk{i}"), bytes).await.map_err(|source| OpsError::Qmp {
                name: name.into(),
                what: "growing the disk failed",
                source,
            })?;
        } else {
            storage::resize_offline_as(&d.path, image_format(d.format), bytes).map_err(OpsError::storage("disk"))?;
        }
        tracing::info!(vm = %name, disk = i, size_gib, "disk grown");
        self.info(name)
    }

    /// Throws away what the VM wrote to its own disks: each overlay is replaced by a
    /// fresh one on the same base (same size); a blank disk of an ISO install becomes
    /// blank again and the install starts over. Internal snapshots go with it.
    ///
    /// # Errors
    /// VM running, a disk that is not kvm-mcp's own, a disk other VMs are built on.
    pub async fn reset_vm_disk(&self, name: &str) -> Result<VmInfo, OpsError> {
        let (vm, _lock) = self.load_locked(name).await?;
        Self::stopped(&vm, "resetting its disk")?;
        let disks: Vec<&DiskSpec> =
            vm.spec.disks.iter().filter(|d| d.media == Media::Disk && !d.path.starts_with(&vm.paths.state)).collect();
        if disks.is_empty() || disks.iter().any(|d| !d.owned || d.format != DiskFormat::Qcow2) {
            return Err(OpsError::invalid(
                "name",
                format!(
                    "VM {name:?} uses a disk kvm-mcp did not create; only its own overlays and blank disks can be reset"
                ),
            ));
        }
        let (owner, own): (String, Vec<DiskSpec>) = (name.to_owned(), disks.into_iter().cloned().collect());
        let chains = self
            .file_work("name", "checking the disks and who uses them", move |ops| {
                for d in &own {
                    let users = ops.users_of(&d.path, &owner);
                    if !users.is_empty() {
                        return Err(OpsError::InUse {
                            what: format!("disk {}", d.path.display()),
                            users,
                            hint: "resetting it would change their base image; delete them first".into(),
                        });
                    }
                }
                own.iter().map(|d| ops.chain_of(d)).collect::<Result<Vec<_>, _>>()
            })
            .await?;
        for chain in &chains {
            Self::recreate(chain)?;
        }
        let has_backing = chains.iter().any(|c| c.len() > 1);
        if vm.spec.disks.iter().any(|d| d.media == Media::Cdrom && !d.ejected) && !has_backing {
            std::fs::write(vm.paths.install_pending(), b"")
                .map_err(OpsError::io("cannot write", vm.paths.install_pending()))?;
        }
        tracing::info!(vm = %name, "disk reset");
        self.info(name)
    }

    /// The disk's whole chain under the host path rule, read as its recorded format.
    pub(crate) fn chain_of(&self, d: &DiskSpec) -> Result<Vec<storage::ImageInfo>, OpsError> {
        let allowed = self.allowed("disk", &self.image_dirs())?;
        storage::resolve_chain(&d.path, image_format(d.format), &allowed).map_err(OpsError::storage("disk"))
    }

    /// Writes a fresh image next to the chain's top and renames it over it: an
    /// overlay on the same (checked) base, or a blank image.
    fn recreate(chain: &[storage::ImageInfo]) -> Result<(), OpsError> {
        let info = &chain[0];
        let path = &info.path;
        let dir = path.parent().unwrap_or(Path::new("/"));
        let tmp = dir.join(format!(".{}.reset", path.file_name().unwrap_or_default().to_string_lossy()));
        let _ = std::fs::remove_file(&tmp);
        let res = match chain.get(1) {
            Some(base) => storage::create_overlay(&tmp, &base.path, base.format, Some(info.virtual_size_bytes)),
            None => storage::create_blank(&tmp, info.virtual_size_bytes, &CreateOptions::default()),
        };
        res.map_err(OpsError::storage("disk"))?;
        if let Err(e) = std::fs::rename(&tmp, path).and_then(|()| std::fs::File::open(dir)?.sync_all()) {
            let _ = std::fs::remove_file(&tmp);
            return Err(OpsError::io("cannot replace", path)(e));
        }
        Ok(())
    }
}
